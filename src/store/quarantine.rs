//! Quarantine (SPEC "Broker limits and large captures"): refusals counted
//! against a capture, durably (so a restart or kill -9 does not reset them),
//! the capture quarantined once the uplink's rule says so (`uplink::suspect`
//! decides; this module only records), the outbox as a local admin sees it
//! (`ctl outbox list`), and putting quarantined captures back in the queue
//! (`ctl outbox retry`).
//!
//! A quarantined capture keeps its row, ciphertext and data key: it is not
//! handed over (`outbox::pending` skips it) but every purge path (revocation,
//! expiry, retention, quota, `capture.purge`) deletes it like any other.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use serde_json::json;

use super::purge::{capture_ref, CaptureRef, REF_COLUMNS};
use super::{SqlCtx, Store, StoreError};
use crate::audit::kind;
use crate::ids::CaptureId;

/// What counting one refusal against a capture did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The capture is no longer queued (uploaded, purged) or already
    /// quarantined: nothing counted.
    NotQueued,
    /// Counted; this many refusals now stand against it.
    Counted(u32),
    /// Counted, and the capture is now quarantined after this many.
    Quarantined(u32),
}

/// Where a capture of the outbox stands, for `ctl outbox list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting for its hand-over.
    Queued,
    /// Handed to MQTT, not yet acknowledged (set by the agent, which knows
    /// what is in flight; the store lists such a capture as queued).
    InFlight,
    /// Refused by the broker `mqtt.max_attempts` times; waits for
    /// `ctl outbox retry`.
    Quarantined,
}

/// One capture of the outbox as a local admin sees it: no subject, no
/// image, nothing decrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxEntry {
    /// The capture's id (the envelope's `capture_id`).
    pub capture_id: String,
    /// Queued or quarantined.
    pub state: OutboxState,
    /// Encrypted bytes it takes.
    pub bytes: u64,
    /// Seconds since it was queued.
    pub age_s: u64,
    /// Refusals counted against it since its last acknowledged part or retry.
    pub attempts: u32,
    /// Parts the broker acknowledged (0 for a capture sent whole).
    pub parts_acked: u32,
}

impl Store {
    /// Counts one refusal against `capture_id` and, if `quarantine(count)`
    /// says so (the uplink's rule), quarantines it, audited
    /// `capture.quarantined` with its id, the count and `reason` (no subject
    /// id: the row names the subject by its salted reference). One
    /// transaction.
    pub fn count_refusal(
        &mut self,
        capture_id: &CaptureId,
        quarantine: impl Fn(u32) -> bool,
        reason: &str,
        now: i64,
    ) -> Result<Refusal, StoreError> {
        let r = (|| {
            let mut w = self.writer()?;
            let found: Option<(CaptureRef, i64)> =
                w.tx.prepare_cached(&format!(
                    "SELECT {REF_COLUMNS}, attempts FROM captures
                     WHERE capture_id = ?1 AND quarantined_at IS NULL"
                ))
                .and_then(|mut s| {
                    s.query_row([capture_id.as_str()], |r| Ok((capture_ref(r)?, r.get(3)?)))
                        .optional()
                })
                .op("looking up a refused capture")?;
            let Some((r, attempts)) = found else {
                return Ok(Refusal::NotQueued);
            };
            let attempts = u32::try_from(attempts.max(0))
                .unwrap_or(u32::MAX)
                .saturating_add(1);
            let quarantined = quarantine(attempts);
            w.tx.prepare_cached(
                "UPDATE captures SET attempts = ?2,
                        quarantined_at = CASE WHEN ?3 THEN ?4 ELSE NULL END
                 WHERE seq = ?1",
            )
            .and_then(|mut s| s.execute(params![r.seq, attempts, quarantined, now]))
            .op("counting a refusal")?;
            if quarantined {
                let detail =
                    json!({ "capture_id": r.capture_id, "attempts": attempts, "reason": reason });
                w.audit(now, kind::CAPTURE_QUARANTINED, Some(&r.subject_ref), detail)?;
            }
            w.commit()?;
            Ok(if quarantined {
                Refusal::Quarantined(attempts)
            } else {
                Refusal::Counted(attempts)
            })
        })();
        self.finish(r)
    }

    /// Every capture of the outbox, oldest first.
    pub fn outbox_list(&mut self, now: i64) -> Result<Vec<OutboxEntry>, StoreError> {
        let r = self
            .conn
            .prepare_cached(
                "SELECT c.capture_id, c.quarantined_at IS NOT NULL, c.bytes, c.queued_at,
                        c.attempts,
                        (SELECT COUNT(*) FROM capture_parts p WHERE p.capture_seq = c.seq
                           AND p.parts = (SELECT MAX(parts) FROM capture_parts q
                                          WHERE q.capture_seq = c.seq))
                 FROM captures c ORDER BY c.seq",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    let quarantined: bool = r.get(1)?;
                    Ok(OutboxEntry {
                        capture_id: r.get(0)?,
                        state: if quarantined {
                            OutboxState::Quarantined
                        } else {
                            OutboxState::Queued
                        },
                        bytes: r.get::<_, i64>(2)?.max(0) as u64,
                        age_s: now.saturating_sub(r.get(3)?).max(0) as u64,
                        attempts: r.get::<_, i64>(4)?.clamp(0, i64::from(u32::MAX)) as u32,
                        parts_acked: r.get::<_, i64>(5)?.clamp(0, i64::from(u32::MAX)) as u32,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .op("listing the outbox");
        self.finish(r)
    }

    /// Puts quarantined captures back in the queue with no refusals counted:
    /// `capture_id`, or every quarantined capture with `None`. Each is
    /// audited `capture.retried`. Returns the ids put back (empty when
    /// none matched: the caller says so).
    pub fn retry_quarantined(
        &mut self,
        capture_id: Option<&CaptureId>,
        now: i64,
    ) -> Result<Vec<CaptureId>, StoreError> {
        let r = (|| {
            let mut w = self.writer()?;
            let rows: Vec<CaptureRef> =
                w.tx.prepare_cached(&format!(
                    "SELECT {REF_COLUMNS} FROM captures
                     WHERE quarantined_at IS NOT NULL AND (?1 IS NULL OR capture_id = ?1)
                     ORDER BY seq"
                ))
                .and_then(|mut s| {
                    s.query_map([capture_id.map(|c| c.as_str())], capture_ref)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .op("selecting quarantined captures")?;
            for r in &rows {
                w.tx.prepare_cached(
                    "UPDATE captures SET attempts = 0, quarantined_at = NULL WHERE seq = ?1",
                )
                .and_then(|mut s| s.execute([r.seq]))
                .op("putting a capture back in the queue")?;
                let detail = json!({ "capture_id": r.capture_id });
                w.audit(now, kind::CAPTURE_RETRIED, Some(&r.subject_ref), detail)?;
            }
            w.commit()?;
            Ok(rows.into_iter().map(|r| r.capture_id).collect())
        })();
        self.finish(r)
    }
}
