//! The audit log's hash chain (pure): how each entry's MAC is computed and how
//! a sequence of entries is verified.
//!
//! Entry `n` carries `prev` = MAC of entry `n-1` (all zeros for entry 1) and
//! `mac` = HMAC-SHA256(audit key, prev, seq, ts, kind, subject_ref, canonical
//! detail). Editing a row breaks its MAC; deleting or reordering rows breaks
//! the `seq` sequence or the `prev` link. Truncating the newest rows cannot be
//! detected from the chain alone.
//!
//! Retention: the oldest rows are deleted after the audit retention period.
//! Pruning through entry `N` leaves a [`Checkpoint`]: `N`, its `ts` and its
//! `mac`, sealed with the audit key. Verification then starts from the
//! checkpoint instead of the genesis link, so the remaining rows are proven
//! exactly as before; an edited checkpoint fails its seal, a removed one
//! leaves the chain starting at `N + 1` without a link to it, and rows
//! deleted after it break `seq`.
//!
//! Details never contain image bytes, keys, or plain subject ids: subjects
//! appear only as `subject_ref`, a keyed pseudonym salted per subject (see
//! `crypto::PseudonymKey::audit_ref`) whose salt is destroyed on revocation.
//! Drops of captures without consent carry no subject reference at all.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::AuditKey;

/// The audit kinds written by facegate.
pub mod kind {
    /// A consent token was stored.
    pub const CONSENT_ADDED: &str = "consent.added";
    /// A consent token was refused (bad signature, revoked, ...).
    pub const CONSENT_REFUSED: &str = "consent.refused";
    /// A subject's consents were revoked.
    pub const CONSENT_REVOKED: &str = "consent.revoked";
    /// A consent reached its `exp` and was deleted.
    pub const CONSENT_EXPIRED: &str = "consent.expired";
    /// A capture was accepted into the outbox.
    pub const CAPTURE_ACCEPTED: &str = "capture.accepted";
    /// A capture was dropped because its subject had no valid consent.
    pub const CAPTURE_DROPPED: &str = "capture.dropped";
    /// A capture was rejected (bad input, quota).
    pub const CAPTURE_REJECTED: &str = "capture.rejected";
    /// Captures were purged (revocation, command, local request, quota, corrupt).
    pub const CAPTURE_PURGED: &str = "capture.purged";
    /// Captures were purged because they exceeded the retention period.
    pub const CAPTURE_EXPIRED: &str = "capture.expired";
    /// A capture the broker kept refusing was quarantined (not retried on
    /// its own).
    pub const CAPTURE_QUARANTINED: &str = "capture.quarantined";
    /// Quarantined captures were put back in the queue (`ctl outbox retry`).
    pub const CAPTURE_RETRIED: &str = "capture.retried";
    /// A capture was acknowledged by the broker and deleted.
    pub const CAPTURE_UPLOADED: &str = "capture.uploaded";
    /// A signed fleet command took effect.
    pub const COMMAND_APPLIED: &str = "command.applied";
    /// A fleet command was refused.
    pub const COMMAND_REFUSED: &str = "command.refused";
    /// Fleet commands refused beyond the rate limit of individual rows,
    /// counted by code over a window (`uplink::ingress`).
    pub const COMMANDS_REFUSED_SUMMARY: &str = "command.refused_summary";
    /// The first message of a kind (retained, QoS 0) on a command topic
    /// ignored in this run; the rest are only counted.
    pub const COMMAND_IGNORED: &str = "command.ignored";
    /// A consent-log head moved the site log forward (new `seq` or `base`).
    pub const CONSENT_LOG_HEAD: &str = "consent_log.head";
    /// A consent-log head was refused (bad signature, wrong role, other
    /// site, …); within the ingress rate limit.
    pub const CONSENT_LOG_HEAD_REFUSED: &str = "consent_log.head_refused";
    /// A consent-log entry whose effect was refused for good (its consent
    /// token expired, say) was counted as applied.
    pub const CONSENT_LOG_ENTRY_REFUSED: &str = "consent_log.entry_refused";
    /// A lone spool file older than the grace period was removed.
    pub const SPOOL_ORPHAN_REMOVED: &str = "spool.orphan_removed";
    /// The wall clock jumped and the jump is not confirmed: irreversible
    /// time-based actions are held (ARCHITECTURE I15).
    pub const CLOCK_JUMPED: &str = "clock.jumped";
    /// A held clock jump ended (the clock came back, or NTP or a signed
    /// `iat` confirmed the new time): held actions resume.
    pub const CLOCK_TRUSTED: &str = "clock.trusted";
    /// Audit rows older than the audit retention period were deleted (a
    /// checkpoint keeps the chain verifiable).
    pub const AUDIT_PRUNED: &str = "audit.pruned";
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain, starting at 1, without gaps.
    pub seq: i64,
    /// When it happened (unix seconds).
    pub ts: i64,
    /// What happened (one of [`kind`]).
    pub kind: String,
    /// Hex pseudonym of the subject concerned, if any (never the plain id).
    pub subject_ref: Option<String>,
    /// Event details (ids, counts, reason codes).
    pub detail: Value,
    /// MAC of the previous entry (zeros for the first), linking the chain.
    #[serde(with = "hex32")]
    pub prev: [u8; 32],
    /// This entry's MAC over all fields above.
    #[serde(with = "hex32")]
    pub mac: [u8; 32],
}

/// A MAC as 64 hex digits.
mod hex32 {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(&text)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| de::Error::custom("a MAC must be 64 hex digits"))
    }
}

/// Result of [`verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// How many entries were examined.
    pub rows: u64,
    /// True when every entry verified.
    pub ok: bool,
    /// The first entry that failed (its `seq`, or the expected seq for a gap),
    /// and why.
    pub first_bad: Option<(i64, String)>,
    /// Entries up to this `seq` were deleted by retention; verification
    /// started from the checkpoint that seals their last link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_through: Option<i64>,
}

/// Where the chain starts after the oldest entries were pruned: the last
/// pruned entry's `seq`, `ts` and `mac`, and a seal over them under the
/// audit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// `seq` of the last pruned entry; the first kept one is `seq + 1`.
    pub seq: i64,
    /// `ts` of the last pruned entry.
    pub ts: i64,
    /// `mac` of the last pruned entry: the first kept one's `prev`.
    pub mac: [u8; 32],
    /// [`checkpoint_seal`] of the fields above.
    pub seal: [u8; 32],
}

impl Checkpoint {
    /// The checkpoint after pruning every entry up to and including `last`.
    pub fn after(key: &AuditKey, last: &AuditEntry) -> Checkpoint {
        Checkpoint {
            seq: last.seq,
            ts: last.ts,
            mac: last.mac,
            seal: checkpoint_seal(key, last.seq, last.ts, &last.mac),
        }
    }

    /// `(seq, mac)`: the link the next entry chains to.
    pub fn link(&self) -> (i64, [u8; 32]) {
        (self.seq, self.mac)
    }
}

/// The seal of a [`Checkpoint`]: HMAC under the audit key, in a domain of its
/// own so that no entry MAC can pass for it.
pub fn checkpoint_seal(key: &AuditKey, seq: i64, ts: i64, mac: &[u8; 32]) -> [u8; 32] {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(b"facegate/audit-checkpoint/v1");
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&ts.to_be_bytes());
    buf.extend_from_slice(mac);
    key.mac(&buf)
}

/// Deterministic JSON text of `value`: object keys sorted, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn push_field(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// MAC of one entry. Every variable-length field is length-prefixed so no two
/// different entries share an encoding.
pub fn chain_mac(
    key: &AuditKey,
    prev: &[u8; 32],
    seq: i64,
    ts: i64,
    kind: &str,
    subject_ref: Option<&str>,
    detail_canonical: &str,
) -> [u8; 32] {
    let mut buf = Vec::with_capacity(128 + detail_canonical.len());
    buf.extend_from_slice(b"facegate/audit/v1");
    buf.extend_from_slice(prev);
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&ts.to_be_bytes());
    push_field(&mut buf, kind.as_bytes());
    match subject_ref {
        Some(s) => {
            buf.push(1);
            push_field(&mut buf, s.as_bytes());
        }
        None => buf.push(0),
    }
    push_field(&mut buf, detail_canonical.as_bytes());
    key.mac(&buf)
}

/// Builds the next entry after `prev` (`None` for the first entry).
pub fn next_entry(
    key: &AuditKey,
    prev: Option<(i64, [u8; 32])>,
    ts: i64,
    kind: &str,
    subject_ref: Option<String>,
    detail: Value,
) -> AuditEntry {
    let (seq, prev) = match prev {
        Some((seq, mac)) => (seq + 1, mac),
        None => (1, [0u8; 32]),
    };
    let mac = chain_mac(
        key,
        &prev,
        seq,
        ts,
        kind,
        subject_ref.as_deref(),
        &canonical_json(&detail),
    );
    AuditEntry {
        seq,
        ts,
        kind: kind.to_string(),
        subject_ref,
        detail,
        prev,
        mac,
    }
}

/// Verifies entries given oldest first, from the genesis link. Stops at the
/// first bad entry.
pub fn verify_chain(entries: impl Iterator<Item = AuditEntry>, key: &AuditKey) -> VerifyReport {
    verify_chain_from(entries, key, None)
}

/// Verifies entries given oldest first, starting from `start` (the chain's
/// checkpoint after pruning) or from the genesis link. Stops at the first bad
/// entry; a checkpoint whose seal fails is reported at its `seq`.
pub fn verify_chain_from(
    entries: impl Iterator<Item = AuditEntry>,
    key: &AuditKey,
    start: Option<&Checkpoint>,
) -> VerifyReport {
    let pruned_through = start.map(|c| c.seq);
    let mut rows = 0u64;
    let (mut expected_seq, mut expected_prev) = match start {
        None => (1i64, [0u8; 32]),
        Some(c) if checkpoint_seal(key, c.seq, c.ts, &c.mac) != c.seal || c.seq < 1 => {
            return VerifyReport {
                rows,
                ok: false,
                first_bad: Some((
                    c.seq,
                    "checkpoint seal mismatch: retention checkpoint edited".into(),
                )),
                pruned_through,
            };
        }
        Some(c) => (c.seq + 1, c.mac),
    };
    for e in entries {
        rows += 1;
        let bad = |reason: String| VerifyReport {
            rows,
            ok: false,
            first_bad: Some((e.seq, reason)),
            pruned_through,
        };
        if e.seq != expected_seq {
            let why = if e.seq > expected_seq {
                format!("expected seq {expected_seq}: rows deleted")
            } else {
                format!("expected seq {expected_seq}: rows reordered or duplicated")
            };
            return bad(why);
        }
        if e.prev != expected_prev {
            return bad(
                "prev does not match the previous entry's mac: rows deleted or reordered".into(),
            );
        }
        let mac = chain_mac(
            key,
            &e.prev,
            e.seq,
            e.ts,
            &e.kind,
            e.subject_ref.as_deref(),
            &canonical_json(&e.detail),
        );
        if mac != e.mac {
            return bad("mac mismatch: entry edited".into());
        }
        expected_seq = e.seq + 1;
        expected_prev = e.mac;
    }
    VerifyReport {
        rows,
        ok: true,
        first_bad: None,
        pruned_through,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> AuditKey {
        AuditKey::from_bytes(&[3u8; 32])
    }

    fn chain(n: usize) -> Vec<AuditEntry> {
        let k = key();
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(|e| (e.seq, e.mac));
            out.push(next_entry(
                &k,
                prev,
                1000 + i as i64,
                kind::CAPTURE_ACCEPTED,
                Some(format!("{i:02x}")),
                json!({"capture_id": format!("c{i}"), "n": i}),
            ));
        }
        out
    }

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let v = json!({"b": 1, "a": {"d": [1, {"z": 0, "y": "x"}], "c": null}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"d":[1,{"y":"x","z":0}]},"b":1}"#
        );
    }

    #[test]
    fn intact_chain_verifies() {
        let r = verify_chain(chain(5).into_iter(), &key());
        assert_eq!(
            r,
            VerifyReport {
                rows: 5,
                ok: true,
                first_bad: None,
                pruned_through: None,
            }
        );
        let r = verify_chain(std::iter::empty(), &key());
        assert!(r.ok && r.rows == 0);
    }

    #[test]
    fn detects_each_tampering() {
        type Tamper = fn(&mut Vec<AuditEntry>);
        let cases: Vec<(&str, Tamper, i64)> = vec![
            (
                "edited detail",
                |c| c[2].detail = json!({"capture_id": "c9", "n": 2}),
                3,
            ),
            ("edited ts", |c| c[2].ts += 1, 3),
            (
                "edited kind",
                |c| c[2].kind = kind::CAPTURE_UPLOADED.into(),
                3,
            ),
            ("edited subject", |c| c[2].subject_ref = None, 3),
            ("edited mac", |c| c[4].mac[0] ^= 1, 5),
            (
                "deleted middle",
                |c| {
                    c.remove(2);
                },
                4,
            ),
            (
                "deleted first",
                |c| {
                    c.remove(0);
                },
                2,
            ),
            ("swapped", |c| c.swap(1, 2), 3),
            (
                "renumbered after delete",
                |c| {
                    c.remove(2);
                    for e in c.iter_mut().skip(2) {
                        e.seq -= 1;
                    }
                },
                3,
            ),
            (
                "wrong key forged row",
                |c| {
                    let other = AuditKey::from_bytes(&[4u8; 32]);
                    let prev = (c[1].seq, c[1].mac);
                    c[2] = next_entry(&other, Some(prev), 1, "x", None, json!({}));
                },
                3,
            ),
        ];
        for (name, tamper, seq) in cases {
            let mut c = chain(5);
            tamper(&mut c);
            let r = verify_chain(c.into_iter(), &key());
            assert!(!r.ok, "{name}");
            assert_eq!(
                r.first_bad.as_ref().map(|b| b.0),
                Some(seq),
                "{name}: {r:?}"
            );
        }
    }

    #[test]
    fn a_pruned_chain_verifies_from_its_checkpoint() {
        let k = key();
        let mut c = chain(6);
        let cp = Checkpoint::after(&k, &c[2]);
        let kept: Vec<AuditEntry> = c.split_off(3);
        let r = verify_chain_from(kept.clone().into_iter(), &k, Some(&cp));
        assert_eq!(
            r,
            VerifyReport {
                rows: 3,
                ok: true,
                first_bad: None,
                pruned_through: Some(3),
            }
        );
        // Everything pruned: the checkpoint alone verifies.
        let all = Checkpoint::after(&k, &kept[2]);
        assert!(verify_chain_from(std::iter::empty(), &k, Some(&all)).ok);
        // Without the checkpoint the kept rows do not verify.
        let r = verify_chain(kept.into_iter(), &k);
        assert_eq!(r.first_bad.map(|b| b.0), Some(4));
    }

    #[test]
    fn detects_tampering_after_pruning() {
        type Tamper = fn(&mut Checkpoint, &mut Vec<AuditEntry>);
        // (case, tamper, first bad seq); rows 4..=6 kept after a checkpoint at 3.
        let cases: Vec<(&str, Tamper, i64)> = vec![
            ("edited kept row", |_, c| c[1].ts += 1, 5),
            (
                "deleted oldest kept row",
                |_, c| {
                    c.remove(0);
                },
                5,
            ),
            ("checkpoint seq moved on", |cp, _| cp.seq += 1, 4),
            ("checkpoint seq moved back", |cp, _| cp.seq -= 1, 2),
            ("checkpoint mac edited", |cp, _| cp.mac[0] ^= 1, 3),
            ("checkpoint ts edited", |cp, _| cp.ts += 1, 3),
            (
                "checkpoint resealed with another key",
                |cp, _| {
                    let other = AuditKey::from_bytes(&[4u8; 32]);
                    cp.seq += 1;
                    cp.seal = checkpoint_seal(&other, cp.seq, cp.ts, &cp.mac);
                },
                4,
            ),
            (
                "entry mac passed off as a seal",
                |cp, c| cp.seal = c[0].prev,
                3,
            ),
        ];
        let k = key();
        for (name, tamper, seq) in cases {
            let mut c = chain(6);
            let mut cp = Checkpoint::after(&k, &c[2]);
            let mut kept = c.split_off(3);
            tamper(&mut cp, &mut kept);
            let r = verify_chain_from(kept.into_iter(), &k, Some(&cp));
            assert!(!r.ok, "{name}");
            assert_eq!(
                r.first_bad.as_ref().map(|b| b.0),
                Some(seq),
                "{name}: {r:?}"
            );
        }
    }

    #[test]
    fn mac_fields_are_unambiguous() {
        let k = key();
        let z = [0u8; 32];
        let a = chain_mac(&k, &z, 1, 1, "ab", Some("c"), "{}");
        let b = chain_mac(&k, &z, 1, 1, "a", Some("bc"), "{}");
        let c = chain_mac(&k, &z, 1, 1, "ab", None, "{}");
        assert_ne!(a, b);
        assert_ne!(a, c);
    }
}
