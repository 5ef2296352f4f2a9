//! The `counters` table (accepted, dropped, uploaded, purged, ...) and the
//! generic "audit row + counter" record used by the intake for drops and
//! rejections.

use std::collections::BTreeMap;

use rusqlite::{params, Transaction};
use serde_json::Value;

use super::{SqlCtx, Store, StoreError};
use crate::ids::SubjectId;

/// Adds `n` to counter `name` inside `tx`.
pub(super) fn bump(tx: &Transaction, name: &str, n: u64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO counters (name, value) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
    )
    .and_then(|mut s| s.execute(params![name, n as i64]))
    .op("updating a counter")?;
    Ok(())
}

/// [`bump`] in its own transaction.
pub(super) fn bump_tx(store: &mut Store, name: &str, n: u64) -> Result<(), StoreError> {
    let w = store.writer()?;
    bump(&w.tx, name, n)?;
    w.commit()
}

/// One audit row plus an optional counter bump, atomically.
pub(super) fn record(
    store: &mut Store,
    kind: &str,
    subject: Option<&SubjectId>,
    detail: Value,
    counter: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let mut w = store.writer()?;
    let sref = subject.map(|s| w.pseudonym(s));
    w.audit(now, kind, sref.as_ref(), detail)?;
    if let Some(name) = counter {
        w.bump(name, 1)?;
    }
    w.commit()
}

/// At most one audit row (no subject) and several counter bumps (zeros
/// skipped), in one transaction: a summary of many events for one fsync.
pub(super) fn record_counts(
    store: &mut Store,
    audit: Option<(&str, Value)>,
    bumps: &[(&str, u64)],
    now: i64,
) -> Result<(), StoreError> {
    let mut w = store.writer()?;
    if let Some((kind, detail)) = audit {
        w.audit(now, kind, None, detail)?;
    }
    for (name, n) in bumps.iter().filter(|(_, n)| *n > 0) {
        w.bump(name, *n)?;
    }
    w.commit()
}

/// Every counter by name.
pub(super) fn all(store: &mut Store) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut stmt = store
        .conn
        .prepare("SELECT name, value FROM counters")
        .op("reading counters")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .op("reading counters")?;
    Ok(rows
        .into_iter()
        .map(|(k, v)| (k, u64::try_from(v).unwrap_or(0)))
        .collect())
}
