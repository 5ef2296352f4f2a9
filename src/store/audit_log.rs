//! The `audit` table: appending chained rows and reading them back for
//! verification and `ctl audit tail`.

use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::{SqlCtx, Store, StoreError};
use crate::audit::{verify_chain, AuditEntry, VerifyReport};

/// Stand-in for a stored `prev`/`mac` that is not 32 bytes long: it never
/// matches a real MAC or the all-zero genesis link, so verification fails there.
const MALFORMED: [u8; 32] = [0xFF; 32];

/// `(seq, mac)` of the newest row, if any.
pub(super) fn head(tx: &Transaction) -> Result<Option<(i64, [u8; 32])>, StoreError> {
    tx.prepare_cached("SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1")
        .and_then(|mut s| {
            s.query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
                .optional()
        })
        .op("reading the audit head")
        .map(|h| h.map(|(seq, mac)| (seq, to_32(&mac))))
}

/// Inserts a row built by [`crate::audit::next_entry`].
pub(super) fn append(tx: &Transaction, e: &AuditEntry) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO audit (seq, ts, kind, subject_ref, detail, prev, mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            e.seq,
            e.ts,
            e.kind,
            e.subject_ref,
            crate::audit::canonical_json(&e.detail),
            &e.prev[..],
            &e.mac[..],
        ])
    })
    .op("appending to the audit log")?;
    Ok(())
}

fn to_32(bytes: &[u8]) -> [u8; 32] {
    bytes.try_into().unwrap_or(MALFORMED)
}

fn entry(r: &Row) -> rusqlite::Result<AuditEntry> {
    let raw: String = r.get(4)?;
    // A detail that is not JSON verifies as a string, i.e. fails the MAC.
    let detail = serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw));
    Ok(AuditEntry {
        seq: r.get(0)?,
        ts: r.get(1)?,
        kind: r.get(2)?,
        subject_ref: r.get(3)?,
        detail,
        prev: to_32(&r.get::<_, Vec<u8>>(5)?),
        mac: to_32(&r.get::<_, Vec<u8>>(6)?),
    })
}

const COLUMNS: &str = "seq, ts, kind, subject_ref, detail, prev, mac";

/// Streams the whole table through [`verify_chain`].
pub(super) fn verify(store: &mut Store) -> Result<VerifyReport, StoreError> {
    let mut stmt = store
        .conn
        .prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))
        .op("reading the audit log")?;
    let mut rows = stmt.query([]).op("reading the audit log")?;
    let mut failure: Option<rusqlite::Error> = None;
    let entries = std::iter::from_fn(
        || match rows.next().and_then(|r| r.map(entry).transpose()) {
            Ok(e) => e,
            Err(err) => {
                failure = Some(err);
                None
            }
        },
    );
    let report = verify_chain(entries, &store.keys.audit);
    match failure {
        Some(source) => Err(StoreError::Sqlite {
            op: "reading the audit log",
            source,
        }),
        None => Ok(report),
    }
}

/// The newest `n` rows, newest last.
pub(super) fn tail(store: &mut Store, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
    let mut stmt = store
        .conn
        .prepare(&format!(
            "SELECT {COLUMNS} FROM audit ORDER BY seq DESC LIMIT ?1"
        ))
        .op("reading the audit log")?;
    let mut out = stmt
        .query_map([n as i64], entry)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .op("reading the audit log")?;
    out.reverse();
    Ok(out)
}
