//! Deleting captures: by subject, all, by retention, and the shared helper that
//! audits, counts and destroys data keys of subjects left without captures
//! (ARCHITECTURE I4: purge is destruction).

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::{params, Row};
use serde_json::json;

use super::{counter, CommandStamp, PurgeReason, SqlCtx, Store, StoreError, Writer};
use crate::audit::kind;
use crate::ids::{CaptureId, SubjectId};

/// The clear-text columns of a capture row needed to delete and audit it.
pub(super) struct CaptureRef {
    /// Row id (queue order).
    pub(super) seq: i64,
    /// The capture's UUID.
    pub(super) capture_id: CaptureId,
    /// The subject's pseudonym.
    pub(super) subject_ref: [u8; 32],
}

/// Column list matching [`capture_ref`].
pub(super) const REF_COLUMNS: &str = "seq, capture_id, subject_ref";

/// Reads a [`CaptureRef`] from `seq, capture_id, subject_ref`.
pub(super) fn capture_ref(r: &Row) -> rusqlite::Result<CaptureRef> {
    let sref: Vec<u8> = r.get(2)?;
    Ok(CaptureRef {
        seq: r.get(0)?,
        capture_id: CaptureId::new(r.get::<_, String>(1)?),
        subject_ref: sref.try_into().unwrap_or([0u8; 32]),
    })
}

/// Capture refs matching `sql_where`, in `order` (which must be served by an
/// index for large outboxes).
fn select_refs(
    w: &Writer,
    sql_where: &str,
    order: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<CaptureRef>, StoreError> {
    let sql = format!("SELECT {REF_COLUMNS} FROM captures {sql_where} ORDER BY {order}");
    w.tx.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(args, capture_ref)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .op("selecting captures to purge")
}

/// Deletes `rows`, writes one audit row (`audit_kind`) per subject, bumps
/// `purged`, and destroys the data key of every subject left without
/// captures. Returns the pseudonyms whose keys were destroyed.
pub(super) fn delete_rows(
    w: &mut Writer,
    rows: &[CaptureRef],
    audit_kind: &str,
    reason: PurgeReason,
    now: i64,
) -> Result<Vec<[u8; 32]>, StoreError> {
    let mut by_subject: BTreeMap<[u8; 32], Vec<&str>> = BTreeMap::new();
    {
        let mut del =
            w.tx.prepare_cached("DELETE FROM captures WHERE seq = ?1")
                .op("purging captures")?;
        for r in rows {
            del.execute([r.seq]).op("purging captures")?;
            by_subject
                .entry(r.subject_ref)
                .or_default()
                .push(r.capture_id.as_str());
        }
    }
    let mut destroyed = Vec::new();
    for (sref, ids) in by_subject {
        let detail = json!({ "reason": reason.as_str(), "count": ids.len(), "capture_ids": ids });
        w.audit(now, audit_kind, Some(&sref), detail)?;
        if destroy_key_if_unused(w, &sref)? {
            destroyed.push(sref);
        }
    }
    if !rows.is_empty() {
        w.bump(counter::PURGED, rows.len() as u64)?;
    }
    Ok(destroyed)
}

/// Deletes the subject's wrapped data key if it has no captures left.
pub(super) fn destroy_key_if_unused(w: &Writer, sref: &[u8; 32]) -> Result<bool, StoreError> {
    let n =
        w.tx.prepare_cached(
            "DELETE FROM data_keys WHERE subject_ref = ?1
             AND NOT EXISTS (SELECT 1 FROM captures WHERE subject_ref = ?1)",
        )
        .and_then(|mut s| s.execute(params![&sref[..]]))
        .op("destroying a data key")?;
    Ok(n > 0)
}

/// Purges every capture of one subject inside `w` and destroys its data key.
/// Always writes a `capture.purged` row (count 0 included), so explicit
/// requests leave evidence.
pub(super) fn purge_subject_in(
    w: &mut Writer,
    sref: &[u8; 32],
    now: i64,
    reason: PurgeReason,
) -> Result<Vec<CaptureId>, StoreError> {
    let rows = select_refs(w, "WHERE subject_ref = ?1", "seq", params![&sref[..]])?;
    if rows.is_empty() {
        let detail = json!({ "reason": reason.as_str(), "count": 0, "capture_ids": [] });
        w.audit(now, kind::CAPTURE_PURGED, Some(sref), detail)?;
    } else {
        delete_rows(w, &rows, kind::CAPTURE_PURGED, reason, now)?;
    }
    destroy_key_if_unused(w, sref)?;
    Ok(rows.into_iter().map(|r| r.capture_id).collect())
}

pub(super) fn purge_subject(
    store: &mut Store,
    subject: &SubjectId,
    now: i64,
    reason: PurgeReason,
    cmd: Option<CommandStamp<'_, Vec<CaptureId>>>,
) -> Result<Vec<CaptureId>, StoreError> {
    let mut w = store.writer()?;
    let sref = w.pseudonym(subject);
    let purged = purge_subject_in(&mut w, &sref, now, reason)?;
    w.applied(cmd, &purged, now)?;
    w.commit()?;
    store.checkpoint()?;
    Ok(purged)
}

pub(super) fn purge_all(
    store: &mut Store,
    now: i64,
    reason: PurgeReason,
    cmd: Option<CommandStamp<'_, Vec<CaptureId>>>,
) -> Result<Vec<CaptureId>, StoreError> {
    let mut w = store.writer()?;
    let rows = select_refs(&w, "", "seq", [])?;
    if rows.is_empty() {
        let detail = json!({ "reason": reason.as_str(), "count": 0, "all": true });
        w.audit(now, kind::CAPTURE_PURGED, None, detail)?;
    } else {
        delete_rows(&mut w, &rows, kind::CAPTURE_PURGED, reason, now)?;
    }
    w.tx.execute("DELETE FROM data_keys", [])
        .op("destroying data keys")?;
    let purged: Vec<CaptureId> = rows.into_iter().map(|r| r.capture_id).collect();
    w.applied(cmd, &purged, now)?;
    w.commit()?;
    store.checkpoint()?;
    Ok(purged)
}

pub(super) fn enforce_retention(
    store: &mut Store,
    now: i64,
    retention: Duration,
) -> Result<Vec<CaptureId>, StoreError> {
    let keep = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let cutoff = now.saturating_sub(keep);
    let mut w = store.writer()?;
    let rows = select_refs(&w, "WHERE queued_at < ?1", "queued_at, seq", [cutoff])?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    delete_rows(
        &mut w,
        &rows,
        kind::CAPTURE_EXPIRED,
        PurgeReason::Retention,
        now,
    )?;
    w.commit()?;
    store.checkpoint()?;
    Ok(rows.into_iter().map(|r| r.capture_id).collect())
}
