//! Per-capture accounting of a phase: what was written against what the
//! fleet received, and the phase's row of the table.

use std::collections::{HashMap, HashSet};

use crate::fleet::Ledger;
use crate::writer::Written;

/// A revocation as the fleet saw it answered.
#[derive(Debug, Default, Clone)]
pub struct Revocation {
    /// Position of the first reply carrying its receipt (`None`: never answered).
    pub answered_at: Option<u64>,
    /// Capture ids the receipts list as in flight (they may still arrive).
    pub in_flight: HashSet<String>,
}

/// The figures of one phase.
#[derive(Debug, Default, Clone)]
pub struct Row {
    /// Phase name.
    pub phase: String,
    /// Seconds the phase took.
    pub wall_s: f64,
    /// SIGKILLs of the daemon.
    pub kills: u64,
    /// Broker restarts (kill -9 or graceful).
    pub broker_restarts: u64,
    /// Capture pairs written.
    pub written: u64,
    /// Of them, of a subject holding a consent when written.
    pub consented: u64,
    /// The daemon's `accepted` counter at the end.
    pub accepted: u64,
    /// The daemon's `dropped_no_consent` counter at the end.
    pub dropped: u64,
    /// The daemon's `rejected_bad_input` counter at the end.
    pub rejected: u64,
    /// The daemon's `purged` counter at the end.
    pub purged: u64,
    /// Distinct captures (tags) the fleet received.
    pub uploaded: u64,
    /// Upload messages beyond the first per capture (same capture id: allowed).
    pub duplicates: u64,
    /// Captures received under more than one capture id (violation).
    pub dup_identity: u64,
    /// Consented, never revoked, never received (violation).
    pub lost: u64,
    /// Received though written without consent (violation).
    pub unconsented_uploaded: u64,
    /// Subjects revoked.
    pub revocations: u64,
    /// Revocations never answered (violation).
    pub unanswered: u64,
    /// Received after the receipt and not listed in flight (violation).
    pub after_revocation: u64,
    /// Received after the receipt, listed in flight (allowed).
    pub late_in_flight: u64,
    /// `PRAGMA integrity_check` runs / failures.
    pub integrity_checks: u64,
    /// Failed integrity checks (violation).
    pub integrity_failed: u64,
    /// `ctl audit verify` at the end: passed (None: not run).
    pub audit_ok: Option<bool>,
    /// Peak VmRSS of the daemon sampled, KiB.
    pub peak_rss_kib: u64,
    /// Seconds from the disk space coming back to everything delivered.
    pub recovery_s: Option<f64>,
    /// Leftovers in the spool that are not pairs (orphans the daemon keeps
    /// for now) are reported, not a violation: the clock phase, where an
    /// orphan from before a backward jump has an mtime in the future.
    pub leftovers_reported: bool,
    /// Why the phase could not run, or what broke it.
    pub notes: Vec<String>,
    /// Violations found besides the counters above (e.g. a panic).
    pub failures: Vec<String>,
}

impl Row {
    /// A row for `phase`.
    pub fn new(phase: &str) -> Row {
        Row {
            phase: phase.into(),
            ..Row::default()
        }
    }

    /// Every violation this row shows.
    pub fn violations(&self) -> Vec<String> {
        let mut v = self.failures.clone();
        for (n, what) in [
            (self.lost, "lost"),
            (self.dup_identity, "captures under two ids"),
            (self.unconsented_uploaded, "uploaded without consent"),
            (self.after_revocation, "uploaded after revocation"),
            (self.unanswered, "revocations unanswered"),
            (self.integrity_failed, "integrity check failures"),
        ] {
            if n > 0 {
                v.push(format!("{}: {n} {what}", self.phase));
            }
        }
        if self.audit_ok == Some(false) {
            v.push(format!("{}: audit verify failed", self.phase));
        }
        v
    }

    /// Fills the capture figures from what was written, the revocations and
    /// the ledger.
    pub fn account(
        &mut self,
        written: &[Written],
        revoked: &HashMap<String, Revocation>,
        ledger: &Ledger,
    ) {
        self.written += written.len() as u64;
        self.revocations += revoked.len() as u64;
        self.unanswered += revoked.values().filter(|r| r.answered_at.is_none()).count() as u64;
        for w in written {
            if w.consented {
                self.consented += 1;
            }
            let revocation = w.subject.as_ref().and_then(|s| revoked.get(s));
            let arrivals = ledger.uploads.get(&w.tag).map(Vec::as_slice).unwrap_or(&[]);
            if arrivals.is_empty() {
                if w.consented && revocation.is_none() {
                    self.lost += 1;
                }
                continue;
            }
            self.uploaded += 1;
            self.duplicates += arrivals.len() as u64 - 1;
            let ids: HashSet<&str> = arrivals.iter().map(|a| a.capture_id.as_str()).collect();
            if ids.len() > 1 {
                self.dup_identity += 1;
            }
            if !w.consented && revocation.is_none() {
                self.unconsented_uploaded += 1;
            }
            if let Some(r) = revocation {
                let cutoff = r.answered_at.unwrap_or(u64::MAX);
                for a in arrivals.iter().filter(|a| a.seq > cutoff) {
                    if r.in_flight.contains(&a.capture_id) {
                        self.late_in_flight += 1;
                    } else {
                        self.after_revocation += 1;
                    }
                }
            }
        }
    }

    /// Merges a phase's revocation receipts from the ledger's replies:
    /// `jtis` maps each revocation command's `jti` to its subject.
    pub fn receipts(
        ledger: &Ledger,
        jtis: &HashMap<String, String>,
        revoked: &mut HashMap<String, Revocation>,
    ) {
        for (seq, reply) in &ledger.replies {
            let Some(subject) = reply["jti"].as_str().and_then(|j| jtis.get(j)) else {
                continue;
            };
            if reply["ok"] != true {
                continue;
            }
            let r = revoked.entry(subject.clone()).or_default();
            r.answered_at = Some(r.answered_at.map_or(*seq, |a| a.min(*seq)));
            if let Some(ids) = reply["result"]["in_flight"].as_array() {
                r.in_flight
                    .extend(ids.iter().filter_map(|i| i.as_str().map(String::from)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Arrival;
    use serde_json::json;

    fn written(tag: &str, subject: &str, consented: bool) -> Written {
        Written {
            tag: tag.into(),
            subject: Some(subject.into()),
            consented,
        }
    }

    fn arrive(l: &mut Ledger, tag: &str, id: &str, subject: &str) {
        l.seq += 1;
        let seq = l.seq;
        l.uploads.entry(tag.into()).or_default().push(Arrival {
            seq,
            capture_id: id.into(),
            subject: subject.into(),
        });
    }

    #[test]
    fn lost_duplicates_and_unconsented_uploads_are_counted_per_capture() {
        let w = [
            written("a", "S-1", true),
            written("b", "S-1", true),
            written("c", "S-1", true),
            written("d", "S-x", false),
            written("e", "S-x", false),
        ];
        let mut l = Ledger::default();
        arrive(&mut l, "a", "id-a", "S-1");
        arrive(&mut l, "a", "id-a", "S-1");
        arrive(&mut l, "b", "id-b", "S-1");
        arrive(&mut l, "b", "id-b2", "S-1");
        arrive(&mut l, "d", "id-d", "S-x");
        let mut row = Row::new("t");
        row.account(&w, &HashMap::new(), &l);
        assert_eq!(row.written, 5);
        assert_eq!(row.consented, 3);
        assert_eq!(row.uploaded, 3);
        assert_eq!(row.duplicates, 2);
        assert_eq!(row.dup_identity, 1);
        assert_eq!(row.lost, 1, "c never arrived");
        assert_eq!(row.unconsented_uploaded, 1, "d arrived without consent");
        assert_eq!(row.violations().len(), 3);
    }

    #[test]
    fn after_the_receipt_only_captures_listed_in_flight_may_arrive() {
        let w = [
            written("a", "S-r", true),
            written("b", "S-r", true),
            written("c", "S-r", true),
            written("d", "S-r", true),
        ];
        let mut l = Ledger::default();
        arrive(&mut l, "a", "id-a", "S-r");
        l.seq += 1;
        l.replies.push((
            l.seq,
            json!({"jti": "j1", "ok": true, "result": {"in_flight": ["id-b"]}}),
        ));
        arrive(&mut l, "b", "id-b", "S-r");
        arrive(&mut l, "c", "id-c", "S-r");
        let jtis = HashMap::from([("j1".to_string(), "S-r".to_string())]);
        let mut revoked = HashMap::from([("S-r".to_string(), Revocation::default())]);
        Row::receipts(&l, &jtis, &mut revoked);
        let mut row = Row::new("t");
        row.account(&w, &revoked, &l);
        assert_eq!(row.after_revocation, 1, "c came after the receipt");
        assert_eq!(row.late_in_flight, 1, "b is listed in flight");
        assert_eq!(row.lost, 0, "d is the revoked subject's: purged, not lost");
        assert_eq!(row.unanswered, 0);
    }

    #[test]
    fn a_revocation_without_receipt_is_a_violation() {
        let mut revoked = HashMap::from([("S-r".to_string(), Revocation::default())]);
        Row::receipts(&Ledger::default(), &HashMap::new(), &mut revoked);
        let mut row = Row::new("t");
        row.account(&[], &revoked, &Ledger::default());
        assert_eq!(row.unanswered, 1);
        assert!(!row.violations().is_empty());
    }
}
