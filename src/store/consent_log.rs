//! The site consent log's device side (SPEC "Site consent log"): the set of
//! applied seqs, as runs of consecutive seqs (`consent_log_applied`, one row
//! per run), and the highest head seen (`consent_log_head`, one row, with
//! the broker connection it arrived on). A seq is recorded inside the
//! transaction of its entry's effect ([`super::Writer::applied`]); the sync
//! decision on them is `crate::consent_log::sync`.

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::json;

use super::{counter, SqlCtx, Store, StoreError};
use crate::audit::kind;
use crate::config::{ConsentConfig, ConsentLogMode};
use crate::consent_log::{self, Head, SyncInput};
use crate::ids::Seq;
use crate::protocol::ConsentLogStatus;

/// Records `seq` as applied inside `tx`; false when it already was.
pub(super) fn mark_applied(tx: &Transaction, seq: Seq) -> Result<bool, StoreError> {
    let s = seq.get() as i64;
    let prev: Option<(i64, i64)> = tx
        .prepare_cached(
            "SELECT lo, hi FROM consent_log_applied WHERE lo <= ?1 ORDER BY lo DESC LIMIT 1",
        )
        .and_then(|mut st| st.query_row([s], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .op("reading the consent-log applied set")?;
    if prev.is_some_and(|(_, hi)| hi >= s) {
        return Ok(false);
    }
    let next: Option<i64> = tx
        .prepare_cached("SELECT hi FROM consent_log_applied WHERE lo = ?1")
        .and_then(|mut st| st.query_row([s + 1], |r| r.get(0)).optional())
        .op("reading the consent-log applied set")?;
    let joins_prev = prev.filter(|&(_, hi)| hi == s - 1).map(|(lo, _)| lo);
    let sql = |sql: &str, p: &[&dyn rusqlite::ToSql]| {
        tx.prepare_cached(sql)
            .and_then(|mut st| st.execute(p))
            .op("updating the consent-log applied set")
    };
    match (joins_prev, next) {
        (Some(lo), Some(hi)) => {
            sql("DELETE FROM consent_log_applied WHERE lo = ?1", &[&(s + 1)])?;
            sql(
                "UPDATE consent_log_applied SET hi = ?2 WHERE lo = ?1",
                &[&lo, &hi],
            )?;
        }
        (Some(lo), None) => {
            sql(
                "UPDATE consent_log_applied SET hi = ?2 WHERE lo = ?1",
                &[&lo, &s],
            )?;
        }
        (None, Some(hi)) => {
            sql("DELETE FROM consent_log_applied WHERE lo = ?1", &[&(s + 1)])?;
            sql(
                "INSERT INTO consent_log_applied (lo, hi) VALUES (?1, ?2)",
                &[&s, &hi],
            )?;
        }
        (None, None) => {
            sql(
                "INSERT INTO consent_log_applied (lo, hi) VALUES (?1, ?1)",
                &[&s],
            )?;
        }
    }
    Ok(true)
}

/// True if `seq` is in the applied set.
fn is_applied(store: &Store, seq: Seq) -> Result<bool, StoreError> {
    store
        .conn
        .prepare_cached(
            "SELECT hi FROM consent_log_applied WHERE lo <= ?1 ORDER BY lo DESC LIMIT 1",
        )
        .and_then(|mut st| {
            st.query_row([seq.get() as i64], |r| r.get::<_, i64>(0))
                .optional()
        })
        .op("reading the consent-log applied set")
        .map(|hi| hi.is_some_and(|hi| hi >= seq.get() as i64))
}

/// The stored head and the connection it arrived on.
fn head(conn: &rusqlite::Connection) -> Result<Option<(Head, u64)>, StoreError> {
    conn.prepare_cached("SELECT seq, base, iat, exp, connection FROM consent_log_head WHERE id = 1")
        .and_then(|mut st| {
            st.query_row([], |r| {
                Ok((
                    Head {
                        seq: Seq::new(r.get::<_, i64>(0)?.max(0) as u64),
                        base: Seq::new(r.get::<_, i64>(1)?.max(0) as u64),
                        iat: r.get(2)?,
                        exp: r.get(3)?,
                    },
                    r.get::<_, i64>(4)?.max(0) as u64,
                ))
            })
            .optional()
        })
        .op("reading the consent-log head")
}

/// The `broker_connections` counter: the number of the current connection.
fn connection_no(conn: &rusqlite::Connection) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT value FROM counters WHERE name = ?1")
        .and_then(|mut st| {
            st.query_row([counter::BROKER_CONNECTIONS], |r| r.get::<_, i64>(0))
                .optional()
        })
        .op("reading the connection counter")
        .map(|v| v.unwrap_or(0).max(0) as u64)
}

/// The applied runs that reach `base` or beyond and start at `top` or
/// below, in order, at most `limit` of them. Runs are maximal, so a gap lies
/// between any two: `MAX_MISSING_RANGES + 2` runs are enough for the sync
/// decision to be exact (more only add gaps past the reported ones).
fn ranges_from(
    conn: &rusqlite::Connection,
    base: u64,
    top: u64,
    limit: usize,
) -> Result<Vec<(u64, u64)>, StoreError> {
    let mut st = conn
        .prepare_cached(
            "SELECT lo, hi FROM consent_log_applied WHERE hi >= ?1 AND lo <= ?2
             ORDER BY lo LIMIT ?3",
        )
        .op("reading the consent-log applied set")?;
    let top = i64::try_from(top).unwrap_or(i64::MAX);
    let rows = st
        .query_map(params![base as i64, top, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        })
        .op("reading the consent-log applied set")?;
    rows.collect::<Result<Vec<_>, _>>()
        .op("reading the consent-log applied set")
}

/// What a head did to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadApplied {
    /// Stored: it is the current connection's head now.
    Accepted,
    /// A lower `seq` than the head already seen (or the same, older): ignored.
    Ignored,
}

impl Store {
    /// True if the consent-log entry `seq` was applied before.
    pub fn consent_seq_applied(&mut self, seq: Seq) -> Result<bool, StoreError> {
        let r = is_applied(self, seq);
        self.finish(r)
    }

    /// Records `seq` as applied without an effect of its own (an entry
    /// whose effect was refused for good), in its own transaction.
    pub fn mark_consent_seq(&mut self, seq: Seq, now: i64) -> Result<bool, StoreError> {
        let r = (|| {
            let mut w = self.writer()?;
            let new = mark_applied(&w.tx, seq)?;
            if new {
                w.audit(
                    now,
                    kind::CONSENT_LOG_ENTRY_REFUSED,
                    None,
                    json!({ "seq": seq }),
                )?;
            }
            w.commit()?;
            Ok(new)
        })();
        self.finish(r)
    }

    /// Takes a verified head, on the current broker connection, unless it is
    /// older than the one held ([`consent_log::replaces`]). A head that
    /// moves `seq` or `base` is audited.
    pub fn accept_consent_head(&mut self, new: &Head, now: i64) -> Result<HeadApplied, StoreError> {
        let r = (|| {
            let mut w = self.writer()?;
            let current = head(&w.tx)?;
            if !consent_log::replaces(current.as_ref().map(|(h, _)| h), new) {
                return Ok(HeadApplied::Ignored);
            }
            let connection = connection_no(&w.tx)?;
            w.tx.prepare_cached(
                "INSERT INTO consent_log_head (id, seq, base, iat, exp, connection, received_at)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, base = excluded.base,
                   iat = excluded.iat, exp = excluded.exp, connection = excluded.connection,
                   received_at = excluded.received_at",
            )
            .and_then(|mut st| {
                st.execute(params![
                    new.seq.get() as i64,
                    new.base.get() as i64,
                    new.iat,
                    new.exp,
                    connection as i64,
                    now
                ])
            })
            .op("storing the consent-log head")?;
            let moved = current.is_none_or(|(h, _)| h.seq != new.seq || h.base != new.base);
            if moved {
                let detail = json!({ "seq": new.seq, "base": new.base, "iat": new.iat });
                w.audit(now, kind::CONSENT_LOG_HEAD, None, detail)?;
            }
            w.commit()?;
            Ok(HeadApplied::Accepted)
        })();
        self.finish(r)
    }

    /// Whether uploads wait (`[consent] log = "required"` and out of sync);
    /// asked by the hand-over under the store lock.
    pub fn consent_log_holds(&mut self, cfg: &ConsentConfig, now: i64) -> Result<bool, StoreError> {
        if cfg.log == ConsentLogMode::Off {
            return Ok(false);
        }
        let max_age = i64::try_from(cfg.head_max_age.as_secs()).unwrap_or(i64::MAX);
        let status = self.consent_log_status(max_age, now)?;
        Ok(consent_log::holds_uploads(cfg.log, &status))
    }

    /// Where the device stands in its site's consent log at `now`.
    pub fn consent_log_status(
        &mut self,
        head_max_age_s: i64,
        now: i64,
    ) -> Result<ConsentLogStatus, StoreError> {
        let r = (|| {
            let stored = head(&self.conn)?;
            let connection = connection_no(&self.conn)?;
            let base = stored.map(|(h, _)| h.base.get()).unwrap_or(1);
            let top = stored.map(|(h, _)| h.seq.get()).unwrap_or(0);
            let limit = consent_log::MAX_MISSING_RANGES + 2;
            let applied = ranges_from(&self.conn, base, top, limit)?;
            Ok(consent_log::sync(&SyncInput {
                head: stored.as_ref().map(|(h, _)| h),
                head_fresh: stored.is_some_and(|(_, c)| c == connection && connection > 0),
                applied: &applied,
                head_max_age_s,
                now,
            }))
        })();
        self.finish(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DeviceKey;

    const NOW: i64 = 1_800_000_000;

    fn store(dir: &std::path::Path) -> Store {
        Store::open(dir, DeviceKey::from_bytes([7u8; 32])).unwrap()
    }

    fn mark(s: &mut Store, seq: u64) -> bool {
        let w = s.writer().unwrap();
        let new = mark_applied(&w.tx, Seq::new(seq)).unwrap();
        w.commit().unwrap();
        new
    }

    fn runs(s: &Store) -> Vec<(u64, u64)> {
        ranges_from(&s.conn, 0, u64::MAX, usize::MAX >> 1).unwrap()
    }

    #[test]
    fn applied_seqs_are_kept_as_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path());
        assert!(mark(&mut s, 3));
        assert!(mark(&mut s, 1));
        assert_eq!(runs(&s), vec![(1, 1), (3, 3)]);
        assert!(mark(&mut s, 2), "joins both neighbours");
        assert_eq!(runs(&s), vec![(1, 3)]);
        assert!(!mark(&mut s, 2), "already applied");
        assert!(!mark(&mut s, 1));
        assert!(mark(&mut s, 5));
        assert!(mark(&mut s, 4), "joins the run before");
        assert_eq!(runs(&s), vec![(1, 5)]);
        assert!(mark(&mut s, 9));
        assert!(mark(&mut s, 8), "joins the run after");
        assert_eq!(runs(&s), vec![(1, 5), (8, 9)]);
        for seq in [1, 5, 8, 9] {
            assert!(s.consent_seq_applied(Seq::new(seq)).unwrap(), "{seq}");
        }
        for seq in [6, 7, 10, 100] {
            assert!(!s.consent_seq_applied(Seq::new(seq)).unwrap(), "{seq}");
        }
        // In order, 100,000 entries are one row.
        let w = s.writer().unwrap();
        for seq in 10..=100_000 {
            mark_applied(&w.tx, Seq::new(seq)).unwrap();
        }
        w.commit().unwrap();
        assert_eq!(runs(&s), vec![(1, 5), (8, 100_000)]);
    }

    /// The decision reads a bounded number of runs and is still exact.
    #[test]
    fn many_gaps_are_read_no_further_than_needed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path());
        s.record_counts(None, &[(counter::BROKER_CONNECTIONS, 1)], NOW)
            .unwrap();
        let w = s.writer().unwrap();
        for seq in (2..=400).step_by(2) {
            mark_applied(&w.tx, Seq::new(seq)).unwrap();
        }
        w.commit().unwrap();
        let head = |seq: u64, base: u64| Head {
            seq: Seq::new(seq),
            base: Seq::new(base),
            iat: NOW,
            exp: NOW + 60,
        };
        s.accept_consent_head(&head(400, 1), NOW).unwrap();
        let all = runs(&s);
        let full = consent_log::sync(&SyncInput {
            head: Some(&head(400, 1)),
            head_fresh: true,
            applied: &all,
            head_max_age_s: 60,
            now: NOW,
        });
        assert_eq!(s.consent_log_status(60, NOW).unwrap(), full);
        assert_eq!(full.missing.len(), consent_log::MAX_MISSING_RANGES);
        // Near the end: base 391, head 400; every gap counted.
        s.accept_consent_head(&head(401, 391), NOW).unwrap();
        let st = s.consent_log_status(60, NOW).unwrap();
        assert_eq!(
            st.missing,
            vec![
                [391, 391],
                [393, 393],
                [395, 395],
                [397, 397],
                [399, 399],
                [401, 401]
            ]
        );
        assert_eq!(st.applied, 390);
    }

    #[test]
    fn heads_are_kept_per_connection_and_lower_ones_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path());
        let head = |seq: u64, iat: i64| Head {
            seq: Seq::new(seq),
            base: Seq::new(1),
            iat,
            exp: iat + 3600,
        };
        let st = s.consent_log_status(3600, NOW).unwrap();
        assert!(!st.in_sync);
        assert_eq!(st.head, 0);
        // Before any broker connection, a head cannot be of "this" one.
        assert_eq!(
            s.accept_consent_head(&head(2, NOW), NOW).unwrap(),
            HeadApplied::Accepted
        );
        assert!(!s.consent_log_status(3600, NOW).unwrap().in_sync);
        s.record_counts(None, &[(counter::BROKER_CONNECTIONS, 1)], NOW)
            .unwrap();
        s.accept_consent_head(&head(2, NOW), NOW).unwrap();
        mark(&mut s, 1);
        let st = s.consent_log_status(3600, NOW).unwrap();
        assert_eq!((st.in_sync, st.missing.clone()), (false, vec![[2, 2]]));
        mark(&mut s, 2);
        assert!(s.consent_log_status(3600, NOW).unwrap().in_sync);
        assert_eq!(
            s.accept_consent_head(&head(1, NOW + 5), NOW).unwrap(),
            HeadApplied::Ignored
        );
        assert_eq!(s.consent_log_status(3600, NOW).unwrap().head, 2);
        // A new connection: the head of the old one does not count.
        s.record_counts(None, &[(counter::BROKER_CONNECTIONS, 1)], NOW)
            .unwrap();
        assert!(!s.consent_log_status(3600, NOW).unwrap().in_sync);
        s.accept_consent_head(&head(2, NOW + 10), NOW + 10).unwrap();
        assert!(s.consent_log_status(3600, NOW + 10).unwrap().in_sync);
        // Too old.
        assert!(!s.consent_log_status(3600, NOW + 10 + 3601).unwrap().in_sync);
        let cfg = crate::config::ConsentConfig {
            max_lifetime: std::time::Duration::from_secs(86_400),
            log: ConsentLogMode::Required,
            head_max_age: std::time::Duration::from_secs(3600),
        };
        assert!(!s.consent_log_holds(&cfg, NOW + 10).unwrap());
        assert!(s.consent_log_holds(&cfg, NOW + 10 + 3601).unwrap());
        let off = crate::config::ConsentConfig {
            log: ConsentLogMode::Off,
            ..cfg
        };
        assert!(!s.consent_log_holds(&off, NOW + 10 + 3601).unwrap());
    }
}
