//! Drops and rejections counted once: the gate's drop of a spool pair is
//! counted (`dropped_no_consent`) and audited (`capture.dropped`) in one
//! transaction with a mark of the pair, and a pair whose mark is there is
//! not counted again; a pair rejected as bad input (`rejected_bad_input`,
//! `capture.rejected`) likewise, under a mark of its own kind. Intake
//! removes the pair from the spool only after that commit, so a crash in
//! between brings the same pair back; without the mark it would count twice.
//!
//! The mark is HMAC-SHA256 under the device's pseudonym key of a label and
//! the pair's content digest (computed by intake: the pair's name, sidecar
//! fields and image digest): the table says nothing about a subject or an
//! image to someone without the storage key. A pair comes back only after a
//! crash of the daemon (the spool is on tmpfs), so a mark is needed for
//! moments; marks older than [`KEEP_S`] are deleted in the same transaction.

use rusqlite::params;
use serde_json::Value;

use super::{counter, SqlCtx, Store, StoreError};

/// How long a mark is kept, in seconds (a week).
pub const KEEP_S: i64 = 7 * 86_400;
/// Domain separation of marks from other uses of the pseudonym key (and of
/// a drop's mark from a rejection's).
const LABEL: &str = "facegate dropped pair v1:";
/// The same for a pair rejected as bad input.
const REJECTED_LABEL: &str = "facegate rejected pair v1:";

/// What a mark records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Marked {
    /// The consent gate dropped the pair (`dropped_no_consent`).
    Dropped,
    /// The pair is not a valid capture (`rejected_bad_input`).
    Rejected,
}

impl Marked {
    fn label(self) -> &'static str {
        match self {
            Marked::Dropped => LABEL,
            Marked::Rejected => REJECTED_LABEL,
        }
    }

    fn counter(self) -> &'static str {
        match self {
            Marked::Dropped => counter::DROPPED_NO_CONSENT,
            Marked::Rejected => counter::REJECTED_BAD_INPUT,
        }
    }
}

/// Records the drop or rejection (`what`) of the pair with content digest
/// `pair`: a mark, the audit row `kind` with `detail` (no subject) and the
/// counter, in one transaction. False, and nothing written, when it was
/// recorded before.
pub(super) fn record(
    store: &mut Store,
    what: Marked,
    pair: &[u8; 32],
    kind: &str,
    detail: Value,
    now: i64,
) -> Result<bool, StoreError> {
    let mut w = store.writer()?;
    let mark = w
        .keys
        .pseudonyms
        .pseudonym(&format!("{}{}", what.label(), hex::encode(pair)));
    w.tx.prepare_cached("DELETE FROM dropped_pairs WHERE at < ?1")
        .and_then(|mut s| s.execute(params![now.saturating_sub(KEEP_S)]))
        .op("forgetting old drop marks")?;
    let new =
        w.tx.prepare_cached("INSERT OR IGNORE INTO dropped_pairs (mark, at) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![&mark[..], now]))
            .op("marking a dropped pair")?;
    if new == 0 {
        return Ok(false);
    }
    w.audit(now, kind, None, detail)?;
    w.bump(what.counter(), 1)?;
    w.commit()?;
    Ok(true)
}
