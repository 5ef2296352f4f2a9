//! Captures sent in parts: which parts the broker acknowledged (durably, so
//! a restart sends only the missing ones), and the capture's deletion once
//! every part is acknowledged (ARCHITECTURE I12). The rows live in
//! `capture_parts` and go with their capture (`ON DELETE CASCADE`), whatever
//! deletes it: upload, purge, retention, quota.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};

use super::{outbox, SqlCtx, Store, StoreError, Writer};
use crate::ids::{CaptureId, SubjectId};
use crate::protocol::PartNo;

/// What [`Store::ack_uploads`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Acked {
    /// Captures deleted (whole ones and completed ones in parts).
    pub deleted: usize,
    /// Captures in parts deleted because their last part was recorded.
    pub completed: Vec<CaptureId>,
}

impl Store {
    /// The acknowledged parts of a queued capture, of every split it was
    /// sent with (`PartNo::of` tells them apart), in order; `None` when the
    /// capture is not queued (uploaded, purged or quarantined).
    pub fn part_progress(
        &mut self,
        capture_id: &CaptureId,
    ) -> Result<Option<Vec<PartNo>>, StoreError> {
        let r = (|| {
            let seq: Option<i64> = self
                .conn
                .prepare_cached(&format!(
                    "SELECT seq FROM captures WHERE capture_id = ?1 AND {}",
                    outbox::NOT_QUARANTINED
                ))
                .and_then(|mut s| s.query_row([capture_id.as_str()], |r| r.get(0)).optional())
                .op("looking up a capture")?;
            let Some(seq) = seq else {
                return Ok(None);
            };
            let parts = self
                .conn
                .prepare_cached(
                    "SELECT parts, part FROM capture_parts WHERE capture_seq = ?1
                     ORDER BY parts, part",
                )
                .and_then(|mut s| {
                    s.query_map([seq], |r| {
                        Ok(PartNo {
                            of: r.get(0)?,
                            index: r.get(1)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .op("reading acknowledged parts")?;
            Ok(Some(parts))
        })();
        self.finish(r)
    }

    /// Whether `capture_id` is still queued (not uploaded, purged or
    /// quarantined): one lookup on keys, no image read.
    pub fn is_queued(&mut self, capture_id: &CaptureId) -> Result<bool, StoreError> {
        let r = self
            .conn
            .prepare_cached(&format!(
                "SELECT 1 FROM captures WHERE capture_id = ?1 AND {}",
                outbox::NOT_QUARANTINED
            ))
            .and_then(|mut s| s.exists([capture_id.as_str()]))
            .op("looking up a capture");
        self.finish(r)
    }

    /// Which of `ids` are still queued (and not quarantined): what
    /// [`Store::is_queued`] answers for each, in one query.
    pub fn still_queued(
        &mut self,
        ids: &[CaptureId],
    ) -> Result<std::collections::HashSet<CaptureId>, StoreError> {
        if ids.is_empty() {
            return Ok(std::collections::HashSet::new());
        }
        let r = outbox::id_list(ids)
            .and_then(|list| {
                let mut s = self.conn.prepare_cached(&outbox::still_queued_sql())?;
                let found = s
                    .query_map([list], |r| Ok(CaptureId::new(r.get::<_, String>(0)?)))?
                    .collect::<rusqlite::Result<_>>();
                found
            })
            .op("looking up captures");
        self.finish(r)
    }

    /// Records parts the broker acknowledged, and deletes every capture of
    /// which all parts of one split are now acknowledged, through the same
    /// path as a whole capture's PUBACK (`ack_many`: audited
    /// `capture.uploaded`, counted, data key destroyed with the last
    /// capture), in one transaction. A part of a capture no longer queued is
    /// ignored. Returns the captures deleted.
    pub fn ack_parts(
        &mut self,
        parts: &[(CaptureId, PartNo)],
        now: i64,
    ) -> Result<Vec<CaptureId>, StoreError> {
        Ok(self.ack_uploads(&[], parts, now)?.completed)
    }

    /// Everything the broker acknowledged since the last call, in one
    /// (fsync'd) transaction: deletes the whole captures `wholes`, records
    /// the acknowledged `parts` and deletes every capture of which all parts
    /// of one split are now recorded (ARCHITECTURE I12: only then). Captures
    /// no longer queued are ignored.
    pub fn ack_uploads(
        &mut self,
        wholes: &[CaptureId],
        parts: &[(CaptureId, PartNo)],
        now: i64,
    ) -> Result<Acked, StoreError> {
        if wholes.is_empty() && parts.is_empty() {
            return Ok(Acked::default());
        }
        let pair = self.pair.clone();
        let _pair = pair.lock().unwrap_or_else(|p| p.into_inner());
        self.with_reserve(|s| {
            let dirty = s.wal_has_deleted.clone();
            let r = (|| {
                let mut w = s.writer()?;
                let completed = record_parts(&mut w, parts, now)?;
                let ids: Vec<CaptureId> = wholes.iter().chain(&completed).cloned().collect();
                let deleted = outbox::ack_in(&mut w, &ids, now)?;
                if deleted > 0 {
                    // The WAL will hold the pages as they were before the
                    // delete: marked before the commit, so a truncation
                    // never misses it.
                    dirty.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                w.commit()?;
                Ok(Acked { deleted, completed })
            })();
            s.finish(r)
        })
    }

    /// Deletes captures whose parts are all acknowledged, as uploaded
    /// (ARCHITECTURE I12: only then). Only call it for such captures.
    pub fn complete_parts(&mut self, ids: &[CaptureId], now: i64) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.with_reserve(|s| {
            let r = outbox::ack(s, ids, now);
            s.finish(r)
        })
    }

    /// Queued captures of `subject` (of every subject with `None`) of which
    /// the broker already acknowledged at least one part: the back-end holds
    /// some of their bytes, so a purge receipt lists them as in flight.
    pub fn partly_sent(
        &mut self,
        subject: Option<&SubjectId>,
    ) -> Result<Vec<CaptureId>, StoreError> {
        let sref = subject.map(|s| self.keys.pseudonyms.pseudonym(s.as_str()).to_vec());
        let r = self
            .conn
            .prepare_cached(PARTLY_SENT_SQL)
            .and_then(|mut s| {
                s.query_map([sref], |r| Ok(CaptureId::new(r.get::<_, String>(0)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .op("reading captures sent in part");
        self.finish(r)
    }
}

/// Captures with acknowledged parts, of one subject (`?1`) or all (`?1`
/// NULL). `CROSS JOIN` makes SQLite start from `capture_parts` (a few rows:
/// the parts of captures partly sent) and look each capture up by its key;
/// left to choose, it walked all of `captures` and looked each one up in
/// `capture_parts`, ~90 ms with 32,000 captures queued, under the store lock
/// of every revocation.
pub(super) const PARTLY_SENT_SQL: &str = "SELECT DISTINCT c.capture_id FROM capture_parts p
 CROSS JOIN captures c ON c.seq = p.capture_seq
 WHERE ?1 IS NULL OR c.subject_ref = ?1";

/// Records acknowledged parts inside the transaction `w`; returns the
/// captures of which every part of one split is now acknowledged.
fn record_parts(
    w: &mut Writer<'_>,
    parts: &[(CaptureId, PartNo)],
    now: i64,
) -> Result<Vec<CaptureId>, StoreError> {
    let mut touched: BTreeMap<(CaptureId, u32), ()> = BTreeMap::new();
    {
        let mut insert =
            w.tx.prepare_cached(
                "INSERT OR IGNORE INTO capture_parts (capture_seq, parts, part, acked_at)
                         SELECT seq, ?2, ?3, ?4 FROM captures WHERE capture_id = ?1",
            )
            .op("recording an acknowledged part")?;
        // An acknowledged part shows the broker takes this capture's
        // packets: refusals counted against it start again from 0.
        let mut reset =
            w.tx.prepare_cached(
                "UPDATE captures SET attempts = 0 WHERE capture_id = ?1
                 AND seq IN (SELECT seq FROM captures WHERE attempts > 0)",
            )
            .op("resetting refusals")?;
        for (id, part) in parts {
            insert
                .execute(params![id.as_str(), part.of, part.index, now])
                .op("recording an acknowledged part")?;
            reset.execute([id.as_str()]).op("resetting refusals")?;
            touched.insert((id.clone(), part.of), ());
        }
    }
    let mut complete = Vec::new();
    {
        let mut count =
            w.tx.prepare_cached(
                "SELECT COUNT(*) FROM capture_parts p JOIN captures c ON c.seq = p.capture_seq
                         WHERE c.capture_id = ?1 AND p.parts = ?2",
            )
            .op("counting acknowledged parts")?;
        for (id, of) in touched.keys() {
            let n: i64 = count
                .query_row(params![id.as_str(), of], |r| r.get(0))
                .op("counting acknowledged parts")?;
            if n >= i64::from(*of) && !complete.contains(id) {
                complete.push(id.clone());
            }
        }
    }
    Ok(complete)
}
