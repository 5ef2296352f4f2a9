//! The `audit` table: appending chained rows, the per-subject salts of their
//! subject references, retention with a checkpoint, and reading rows back
//! for verification and `ctl audit tail`.

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use serde_json::json;

use super::{SqlCtx, Store, StoreError, Writer};
use crate::audit::{kind, verify_chain_from, AuditEntry, Checkpoint, VerifyReport};
use crate::crypto::{AuditSalt, DerivedKeys};

/// Most rows one retention pass deletes, so the store lock is not held long;
/// the next housekeeping pass goes on.
pub(super) const PRUNE_BATCH: i64 = 10_000;

/// Stand-in for a stored `prev`/`mac` that is not 32 bytes long: it never
/// matches a real MAC or the all-zero genesis link, so verification fails there.
const MALFORMED: [u8; 32] = [0xFF; 32];

/// `(seq, mac)` of the newest row; with no rows, the retention checkpoint's
/// link; `None` for an empty chain.
pub(super) fn head(tx: &Transaction) -> Result<Option<(i64, [u8; 32])>, StoreError> {
    let newest = tx
        .prepare_cached("SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1")
        .and_then(|mut s| {
            s.query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
                .optional()
        })
        .op("reading the audit head")?;
    match newest {
        Some((seq, mac)) => Ok(Some((seq, to_32(&mac)))),
        None => Ok(checkpoint(tx)?.map(|c| c.link())),
    }
}

/// The retention checkpoint, if the chain was ever pruned.
fn checkpoint(conn: &Connection) -> Result<Option<Checkpoint>, StoreError> {
    conn.prepare_cached("SELECT seq, ts, mac, seal FROM audit_checkpoint WHERE id = 1")
        .and_then(|mut s| {
            s.query_row([], |r| {
                Ok(Checkpoint {
                    seq: r.get(0)?,
                    ts: r.get(1)?,
                    mac: to_32(&r.get::<_, Vec<u8>>(2)?),
                    seal: to_32(&r.get::<_, Vec<u8>>(3)?),
                })
            })
            .optional()
        })
        .op("reading the audit checkpoint")
}

/// The reference audit rows use for the subject with storage pseudonym
/// `pseudonym`: keyed and salted with the subject's audit salt, created
/// (random) on first use. ARCHITECTURE I3.
pub(super) fn subject_ref(
    tx: &Transaction,
    keys: &DerivedKeys,
    pseudonym: &[u8; 32],
    now: i64,
) -> Result<[u8; 32], StoreError> {
    let salt = match stored_salt(tx, pseudonym)? {
        Some(salt) => salt,
        None => {
            let salt = AuditSalt::generate()?;
            tx.prepare_cached(
                "INSERT INTO audit_salts (subject_ref, salt, created_at) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![&pseudonym[..], &salt.as_bytes()[..], now]))
            .op("storing an audit salt")?;
            salt
        }
    };
    Ok(keys.pseudonyms.audit_ref(&salt, pseudonym))
}

/// The subject's current audit salt, if it has one.
pub(super) fn stored_salt(
    conn: &Connection,
    pseudonym: &[u8; 32],
) -> Result<Option<AuditSalt>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT salt FROM audit_salts WHERE subject_ref = ?1")
        .and_then(|mut s| s.query_row([&pseudonym[..]], |r| r.get(0)).optional())
        .op("reading an audit salt")?;
    match bytes {
        None => Ok(None),
        Some(b) => AuditSalt::from_slice(&b)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt {
                what: "an audit salt is not 32 bytes long".into(),
            }),
    }
}

/// Destroys the subject's audit salt (zeroed with `secure_delete`): its audit
/// rows so far can no longer be linked to it; later rows get a new salt.
pub(super) fn forget_subject(tx: &Transaction, pseudonym: &[u8; 32]) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM audit_salts WHERE subject_ref = ?1")
        .and_then(|mut s| s.execute([&pseudonym[..]]))
        .op("destroying an audit salt")?;
    Ok(())
}

/// Deletes the oldest rows written before `cutoff` (at most [`PRUNE_BATCH`]),
/// leaving a sealed checkpoint at the last one deleted and an `audit.pruned`
/// row (at `now`), in `w`'s transaction. Only the unbroken run of old rows at the start
/// of the chain goes, so a row with a wrong (e.g. unset) clock never takes
/// newer rows with it. The deleted rows are verified first: a chain that
/// does not verify is kept whole as evidence and the pass fails.
/// Returns how many rows were deleted.
pub(super) fn prune(w: &mut Writer, now: i64, cutoff: i64) -> Result<u64, StoreError> {
    let first: Option<i64> =
        w.tx.query_row("SELECT min(seq) FROM audit", [], |r| r.get(0))
            .op("reading the audit log")?;
    let Some(first) = first else {
        return Ok(0);
    };
    let first_recent: Option<i64> =
        w.tx.query_row(
            "SELECT seq FROM audit WHERE ts >= ?1 ORDER BY seq LIMIT 1",
            [cutoff],
            |r| r.get(0),
        )
        .optional()
        .op("reading the audit log")?;
    let last_old = match first_recent {
        Some(seq) => seq - 1,
        None => {
            w.tx.query_row("SELECT max(seq) FROM audit", [], |r| r.get(0))
                .op("reading the audit log")?
        }
    };
    let through = last_old.min(first.saturating_add(PRUNE_BATCH - 1));
    if through < first {
        return Ok(0);
    }
    let doomed: Vec<AuditEntry> =
        w.tx.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM audit WHERE seq <= ?1 ORDER BY seq"
        ))
        .and_then(|mut s| {
            s.query_map([through], entry)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .op("reading the audit log")?;
    let start = checkpoint(&w.tx)?;
    let report = verify_chain_from(doomed.iter().cloned(), &w.keys.audit, start.as_ref());
    let Some(last) = doomed.last().filter(|_| report.ok) else {
        return Err(StoreError::Corrupt {
            what: format!(
                "the audit chain does not verify ({:?}); no row is deleted by retention until it is examined",
                report.first_bad
            ),
        });
    };
    let cp = Checkpoint::after(&w.keys.audit, last);
    let deleted =
        w.tx.execute("DELETE FROM audit WHERE seq <= ?1", [through])
            .op("deleting old audit rows")? as u64;
    w.tx.execute(
        "INSERT INTO audit_checkpoint (id, seq, ts, mac, seal) VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT(id) DO UPDATE SET
             seq = excluded.seq, ts = excluded.ts, mac = excluded.mac, seal = excluded.seal",
        params![cp.seq, cp.ts, &cp.mac[..], &cp.seal[..]],
    )
    .op("storing the audit checkpoint")?;
    let detail = json!({ "rows": deleted, "through_seq": through, "before": cutoff });
    w.audit(now, kind::AUDIT_PRUNED, None, detail)?;
    Ok(deleted)
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

/// Streams the whole table through [`verify_chain_from`], starting at the
/// retention checkpoint if there is one.
pub(super) fn verify(store: &mut Store) -> Result<VerifyReport, StoreError> {
    let start = checkpoint(&store.conn)?;
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
    let report = verify_chain_from(entries, &store.keys.audit, start.as_ref());
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
