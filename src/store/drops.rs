//! What intake records besides accepted captures, in the same transaction
//! as them (one fsync per batch, none of their own):
//!
//! * a pair rejected as bad input is counted (`rejected_bad_input`) and
//!   audited (`capture.rejected`) with a mark of the pair, and a pair whose
//!   mark is there is not counted again. Intake removes the pair from the
//!   spool only after that commit, so a crash in between brings the same
//!   pair back; without the mark it would count twice.
//! * drops of captures without consent, counted in memory by intake and
//!   written here as one summary: the `dropped_no_consent` counter and one
//!   `capture.dropped` audit row (counts by reason and camera, no subject,
//!   no file name). Those pairs left the spool before the summary is
//!   written, so a drop is never counted twice; a crash before it loses the
//!   counts of the last few seconds (ARCHITECTURE I5).
//!
//! The mark is HMAC-SHA256 under the device's pseudonym key of a label and
//! the pair's content digest (computed by intake: the pair's name, the
//! reason and the bytes of its files): the table says nothing about a
//! subject or an image to someone without the storage key. A pair comes
//! back only after a crash of the daemon (the spool is on tmpfs), so a mark
//! is needed for moments; marks older than [`KEEP_S`] are deleted in the
//! same transaction.

use rusqlite::params;
use serde_json::Value;

use super::{counter, SqlCtx, StoreError, Writer};
use crate::audit::kind;

/// How long a mark is kept, in seconds (a week).
pub const KEEP_S: i64 = 7 * 86_400;
/// Domain separation of marks from other uses of the pseudonym key.
const REJECTED_LABEL: &str = "facegate rejected pair v1:";

/// A spool pair rejected as bad input, to be recorded with its batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// A digest of the pair as it lies in the spool (the same pair read
    /// again after a crash gives the same digest).
    pub pair: [u8; 32],
    /// The audit detail (no subject; never plain ids).
    pub detail: Value,
}

/// Drops counted in memory since the last summary.
#[derive(Debug, Clone, PartialEq)]
pub struct DropSummary {
    /// How many captures were dropped.
    pub count: u64,
    /// The audit detail of the summary row (counts only, no subject).
    pub detail: Value,
}

/// What intake records with a batch besides its captures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntakeRecords {
    /// Pairs rejected as bad input.
    pub rejections: Vec<Rejection>,
    /// Drops counted since the last summary, if any.
    pub dropped: Option<DropSummary>,
}

impl IntakeRecords {
    /// Nothing to record.
    pub fn is_empty(&self) -> bool {
        self.rejections.is_empty() && self.dropped.is_none()
    }
}

/// Records `records` inside `w`: for each rejection, true when it is new
/// (marked, audited, counted), false when its pair was recorded before.
pub(super) fn record(
    w: &mut Writer,
    records: &IntakeRecords,
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    let mut out = Vec::with_capacity(records.rejections.len());
    if !records.rejections.is_empty() {
        w.tx.prepare_cached("DELETE FROM dropped_pairs WHERE at < ?1")
            .and_then(|mut s| s.execute(params![now.saturating_sub(KEEP_S)]))
            .op("forgetting old rejection marks")?;
    }
    for r in &records.rejections {
        let mark = w
            .keys
            .pseudonyms
            .pseudonym(&format!("{REJECTED_LABEL}{}", hex::encode(r.pair)));
        let new =
            w.tx.prepare_cached("INSERT OR IGNORE INTO dropped_pairs (mark, at) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![&mark[..], now]))
                .op("marking a rejected pair")?;
        if new == 0 {
            out.push(false);
            continue;
        }
        w.audit(now, kind::CAPTURE_REJECTED, None, r.detail.clone())?;
        w.bump(counter::REJECTED_BAD_INPUT, 1)?;
        out.push(true);
    }
    if let Some(d) = &records.dropped {
        if d.count > 0 {
            w.audit(now, kind::CAPTURE_DROPPED, None, d.detail.clone())?;
            w.bump(counter::DROPPED_NO_CONSENT, d.count)?;
        }
    }
    Ok(out)
}
