//! Connection pragmas, schema migrations (tracked in `PRAGMA user_version`)
//! and the storage-key check value.

use rusqlite::OptionalExtension;

use super::{SqlCtx, Store, StoreError};

/// Migration steps; step `i` takes the schema from version `i` to `i + 1`.
/// Append only: never edit a released step.
const MIGRATIONS: &[&str] = &[
    V1,
    V2,
    V3,
    AUDIT_PRIVACY,
    CAPTURE_PARTS,
    QUARANTINE,
    QUARANTINE_INDEX,
    CONSENT_LOG,
    ATTEMPTS_INDEX,
    DROPPED_PAIRS,
    CLOCK_MARK,
    CAPTURE_KEYS,
    OUTBOX_KEYS_INDEX,
];

const V1: &str = r#"
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE consents (
    id          TEXT PRIMARY KEY,
    subject     TEXT NOT NULL,
    subject_ref BLOB NOT NULL,
    issuer      TEXT NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    audience    TEXT NOT NULL,   -- JSON array
    scopes      TEXT NOT NULL,   -- space separated
    kid         TEXT NOT NULL,
    token       TEXT NOT NULL,
    added_at    INTEGER NOT NULL
);
CREATE INDEX consents_by_subject ON consents(subject_ref);
CREATE INDEX consents_by_expiry ON consents(expires_at);

CREATE TABLE tombstones (
    subject_ref    BLOB PRIMARY KEY,
    revoked_before INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE data_keys (
    subject_ref BLOB PRIMARY KEY,
    wrapped     BLOB NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE captures (
    seq         INTEGER PRIMARY KEY,          -- queue order
    capture_id  TEXT NOT NULL UNIQUE,
    subject_ref BLOB NOT NULL REFERENCES data_keys(subject_ref),
    queued_at   INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,             -- len(meta) + len(image)
    meta        BLOB NOT NULL,                -- sealed JSON (subject, consent, ...)
    image       BLOB NOT NULL                 -- sealed image
);
CREATE INDEX captures_by_subject ON captures(subject_ref);
CREATE INDEX captures_by_queued ON captures(queued_at);

CREATE TABLE outbox_totals (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    captures INTEGER NOT NULL,
    bytes    INTEGER NOT NULL
);
INSERT INTO outbox_totals (id, captures, bytes) VALUES (1, 0, 0);
CREATE TRIGGER captures_count_insert AFTER INSERT ON captures BEGIN
    UPDATE outbox_totals SET captures = captures + 1, bytes = bytes + NEW.bytes WHERE id = 1;
END;
CREATE TRIGGER captures_count_delete AFTER DELETE ON captures BEGIN
    UPDATE outbox_totals SET captures = captures - 1, bytes = bytes - OLD.bytes WHERE id = 1;
END;

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO counters (name, value) VALUES
    ('accepted', 0), ('dropped_no_consent', 0), ('rejected_bad_input', 0),
    ('uploaded', 0), ('purged', 0), ('rejected_quota', 0);

CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY,
    ts          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    subject_ref TEXT,
    detail      TEXT NOT NULL,
    prev        BLOB NOT NULL,
    mac         BLOB NOT NULL
);

CREATE TABLE commands (
    jti        TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// The reply published for an applied command, so a redelivery by the broker
/// (after a crash between commit and PUBACK) is answered with the same reply.
const V2: &str = r#"
ALTER TABLE commands ADD COLUMN reply TEXT;
"#;

/// A consent id (`jti`) is unique per signing key, not globally: consents are
/// keyed by (kid, id). SQLite cannot change a primary key in place, so the
/// table is rebuilt; every stored consent is kept.
const V3: &str = r#"
CREATE TABLE consents_v3 (
    id          TEXT NOT NULL,
    subject     TEXT NOT NULL,
    subject_ref BLOB NOT NULL,
    issuer      TEXT NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    audience    TEXT NOT NULL,   -- JSON array
    scopes      TEXT NOT NULL,   -- space separated
    kid         TEXT NOT NULL,
    token       TEXT NOT NULL,
    added_at    INTEGER NOT NULL,
    PRIMARY KEY (kid, id)
);
INSERT INTO consents_v3 (id, subject, subject_ref, issuer, issued_at, expires_at,
                         audience, scopes, kid, token, added_at)
    SELECT id, subject, subject_ref, issuer, issued_at, expires_at,
           audience, scopes, kid, token, added_at
    FROM consents;
DROP TABLE consents;
ALTER TABLE consents_v3 RENAME TO consents;
CREATE INDEX consents_by_subject ON consents(subject_ref);
CREATE INDEX consents_by_expiry ON consents(expires_at);
"#;

/// Audit privacy and retention. Self-contained (creates only its own tables
/// and touches no other step's), so it may take any place in the list.
/// - `audit_salts`: each subject's random audit salt, keyed by its storage
///   pseudonym. Audit rows name a subject by a reference salted with it;
///   revocation deletes the salt, which makes the subject's earlier rows
///   unlinkable to it (`crypto::PseudonymKey::audit_ref`).
/// - `audit_checkpoint`: at most one row, the sealed link of the last audit
///   entry deleted by retention; verification starts there.
const AUDIT_PRIVACY: &str = r#"
CREATE TABLE audit_salts (
    subject_ref BLOB PRIMARY KEY,
    salt        BLOB NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE audit_checkpoint (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    ts   INTEGER NOT NULL,
    mac  BLOB NOT NULL,
    seal BLOB NOT NULL
);
"#;

/// Captures sent in parts: one row per part the broker acknowledged, so a
/// restart sends only the parts still missing. Keyed by the capture's row and
/// the number of parts it was split into (a changed packet limit splits it
/// anew; rows of another split are ignored). Deleted with the capture
/// (`ON DELETE CASCADE`, the same transaction and zeroing as the delete).
/// Self-contained like `AUDIT_PRIVACY`.
const CAPTURE_PARTS: &str = r#"
CREATE TABLE capture_parts (
    capture_seq INTEGER NOT NULL REFERENCES captures(seq) ON DELETE CASCADE,
    parts       INTEGER NOT NULL,
    part        INTEGER NOT NULL,
    acked_at    INTEGER NOT NULL,
    PRIMARY KEY (capture_seq, parts, part)
) WITHOUT ROWID;
"#;

/// Quarantine (SPEC "Broker limits and large captures"): per capture, the
/// broker refusals counted against it (`uplink::suspect` decides what
/// counts; reset by an acknowledged part and by `ctl outbox retry`) and when
/// it was quarantined (NULL: queued). A quarantined capture is not handed
/// over; every purge path still deletes it. Existing captures start queued
/// with no refusals.
const QUARANTINE: &str = r#"
ALTER TABLE captures ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE captures ADD COLUMN quarantined_at INTEGER;
"#;

/// The quarantine columns were added after the sealed image, so reading them
/// from a row means walking the image's overflow pages: counting the
/// quarantined captures for every status (after every revocation) read the
/// whole outbox, ~0.4 s with 32,000 captures of 48 KB. A partial index holds
/// only the quarantined captures (normally none) and answers the count, the
/// list and `retry --all` without touching a row.
const QUARANTINE_INDEX: &str = r#"
CREATE INDEX captures_quarantined ON captures(quarantined_at) WHERE quarantined_at IS NOT NULL;
"#;

/// Step 8: the site consent log. The applied set as runs of consecutive
/// seqs (one row per run, so 100,000 applied entries in order are one row),
/// and the highest head seen, with the broker connection it arrived on
/// (the `broker_connections` counter at the time): only a head of the
/// current connection counts.
const CONSENT_LOG: &str = r#"
CREATE TABLE IF NOT EXISTS consent_log_applied (
    lo INTEGER PRIMARY KEY,       -- first seq of a run of applied entries
    hi INTEGER NOT NULL           -- last seq of the run (inclusive)
);

CREATE TABLE IF NOT EXISTS consent_log_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         INTEGER NOT NULL,
    base        INTEGER NOT NULL,
    iat         INTEGER NOT NULL,
    exp         INTEGER NOT NULL,
    connection  INTEGER NOT NULL,
    received_at INTEGER NOT NULL
);
"#;

/// Refusals counted against a capture sit after the sealed image too (see
/// `QUARANTINE_INDEX`): acknowledging a part resets them, and asking whether
/// there is anything to reset must not walk the image's overflow pages for
/// every part. A partial index holds only captures with refusals counted.
const ATTEMPTS_INDEX: &str = r#"
CREATE INDEX captures_attempted ON captures(attempts) WHERE attempts > 0;
"#;

/// Spool pairs the consent gate dropped, so that a drop is counted and
/// audited once even when a crash comes between that commit and the spool
/// removal (`Store::record_drop`): `mark` is a keyed digest of the pair's
/// content (no subject, no file name can be read from it), `at` when it was
/// recorded; marks older than a week are deleted. (`IF NOT EXISTS`: tests
/// that take a database back to an older version leave later tables.)
const DROPPED_PAIRS: &str = r#"
CREATE TABLE IF NOT EXISTS dropped_pairs (
    mark BLOB PRIMARY KEY,
    at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dropped_pairs_by_age ON dropped_pairs(at);
"#;

/// Step 11: the clock's high-water mark (ARCHITECTURE I15): the last wall
/// time that was trusted, the boot it was read in and `CLOCK_BOOTTIME` at
/// that moment, and the highest wall time ever trusted. One row.
const CLOCK_MARK: &str = r#"
CREATE TABLE IF NOT EXISTS clock_mark (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    wall  INTEGER NOT NULL,
    boot  TEXT NOT NULL,
    mono  INTEGER NOT NULL,
    high  INTEGER NOT NULL
);
"#;

/// Step 12: each capture's own key (ARCHITECTURE I4), wrapped under its
/// subject's data key; a capture's `meta` and `image` are sealed under it.
/// A small row in a table of its own, so deleting it zeroes the one copy of
/// the key in a page the delete writes anyway, and the sealed blobs of an
/// uploaded capture need not be zeroed page by page. Deleted with its
/// capture (`ON DELETE CASCADE`). Captures stored before this step get their
/// key at the next open (`outbox::rekey_legacy`).
const CAPTURE_KEYS: &str = r#"
CREATE TABLE IF NOT EXISTS capture_keys (
    capture_seq INTEGER PRIMARY KEY REFERENCES captures(seq) ON DELETE CASCADE,
    wrapped     BLOB NOT NULL
);
"#;

/// Step 13: the hand-over chooses what to send on each queued capture's
/// `seq`, `capture_id` and `bytes` alone (`outbox::pending`), in queue
/// order, past the captures in flight. In the table every capture's row
/// carries its sealed image, so each one scanned costs a page of its own,
/// read again from the file after every commit of the other connection (the
/// deletes after PUBACK); this covering index holds the three columns of
/// a hundred captures in a page or two.
const OUTBOX_KEYS_INDEX: &str = r#"
CREATE INDEX IF NOT EXISTS captures_keys ON captures(seq, capture_id, bytes);
"#;

/// Highest schema version this build knows.
pub(crate) fn known_version() -> u32 {
    MIGRATIONS.len() as u32
}

/// The migration steps, for tests that rebuild an older schema.
#[cfg(test)]
pub(super) fn steps() -> &'static [&'static str] {
    MIGRATIONS
}

/// Pragmas, migrations and key check for a freshly opened connection.
pub(super) fn init(store: &mut Store) -> Result<(), StoreError> {
    let conn = &store.conn;
    // Before anything is written: a new database is incremental from the start.
    super::vacuum::prepare_new(conn)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .op("enabling WAL")?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            what: format!("journal_mode is {mode}, expected wal"),
        });
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA secure_delete=ON; PRAGMA foreign_keys=ON;")
        .op("setting pragmas")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .op("setting busy timeout")?;
    conn.set_prepared_statement_cache_capacity(super::STATEMENT_CACHE);
    migrate(store)?;
    check_key(store)?;
    super::outbox::rekey_legacy(store)?;
    // A database from before incremental vacuum: converted once, if it can be.
    let free = super::vacuum::free_space(&store.path);
    // Not fatal: the database works as before, only without shrinking.
    if let Err(e) = super::vacuum::convert(store, free) {
        tracing::warn!(error = %e, "cannot convert the database to incremental vacuum; tried again at the next start");
    }
    Ok(())
}

fn migrate(store: &mut Store) -> Result<(), StoreError> {
    let found: u32 = store
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .op("reading the schema version")?;
    if found > known_version() {
        return Err(StoreError::NewerSchema {
            path: store.path.clone(),
            found,
            known: known_version(),
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = store.conn.transaction().op("starting a migration")?;
        tx.execute_batch(step).op("migrating the schema")?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)
            .op("recording the schema version")?;
        tx.commit().op("committing a migration")?;
    }
    Ok(())
}

fn check_key(store: &mut Store) -> Result<(), StoreError> {
    let expected = store.keys.check.to_vec();
    let stored: Option<Vec<u8>> = store
        .conn
        .query_row("SELECT value FROM meta WHERE name = 'key_check'", [], |r| {
            r.get(0)
        })
        .optional()
        .op("reading the key check")?;
    match stored {
        Some(v) if v == expected => Ok(()),
        Some(_) => Err(StoreError::WrongKey {
            path: store.path.clone(),
        }),
        None => {
            store
                .conn
                .execute(
                    "INSERT INTO meta (name, value) VALUES ('key_check', ?1)",
                    [expected],
                )
                .op("storing the key check")?;
            Ok(())
        }
    }
}
