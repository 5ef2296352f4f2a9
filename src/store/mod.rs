//! Persistent state: the only module that speaks SQL.
//!
//! One SQLite database `<state_dir>/facegate.db` (WAL, synchronous=FULL,
//! secure_delete=ON, foreign keys) holds consents, revocation tombstones,
//! per-subject wrapped data keys, the encrypted outbox, counters, the audit
//! chain and the command replay set. Every public method that changes state is
//! one transaction: its effect, its audit row(s) and its counter updates commit
//! together or not at all. Every delete zeroes what it frees (`secure_delete`).
//! Purges end with `PRAGMA wal_checkpoint(TRUNCATE)` so no older page version
//! survives in the WAL file; after deletes of uploaded captures, housekeeping
//! does the same ([`Store::truncate_wal_after_deletes`]).
//!
//! Subjects are stored by pseudonym (HMAC of the id under a device key). The
//! plain subject id is kept only where it is needed: in consent rows (the token
//! names it anyway) and, encrypted under the subject's data key, inside each
//! capture's metadata for the upload envelope. Audit rows name a subject by
//! a second reference, salted with a random per-subject salt that revocation
//! destroys (so the subject's earlier rows become unlinkable); drops of
//! captures without consent name no subject at all. Audit rows older than
//! the audit retention period are deleted behind a sealed chain checkpoint.
//!
//! The store is synchronous; the daemon owns one [`Store`] behind a mutex and
//! calls it from `spawn_blocking`, plus its [`Store::second_connection`],
//! behind a mutex of its own, for the deletes after PUBACK only.

mod audit_log;
mod clock_mark;
mod consent_log;
mod consents;
mod counters;
mod drops;
mod outbox;
mod parts;
mod purge;
mod quarantine;
mod replay;
mod reserve;
mod schema;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod vacuum;

pub use consent_log::HeadApplied;
pub use drops::{DropSummary, IntakeRecords, Rejection};
pub use outbox::Pending;
pub use parts::Acked;
pub use quarantine::{OutboxEntry, OutboxState, Refusal};
pub use reserve::RESERVE_FILE_NAME;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::audit::{AuditEntry, VerifyReport};
use crate::config::{Identity, OutboxConfig, TrustedKey};
use crate::crypto::{CryptoError, DerivedKeys, DeviceKey};
use crate::gate::{Consent, Decision, DropReason, SignatureMemo};
use crate::ids::{CaptureId, Jti, SubjectId};

/// File name of the database inside the state directory.
pub const DB_FILE_NAME: &str = "facegate.db";

/// Prepared statements kept per connection (rusqlite's default is 16). The
/// store prepares about 50 distinct cached statements, and the hand-over,
/// the deletes after PUBACK and a status between them use more than 16.
const STATEMENT_CACHE: usize = 64;

/// Names of the persistent counters (reported in the status message).
pub mod counter {
    /// Captures accepted into the outbox.
    pub const ACCEPTED: &str = "accepted";
    /// Captures dropped because the subject had no valid consent.
    pub const DROPPED_NO_CONSENT: &str = "dropped_no_consent";
    /// Spool pairs rejected as bad input.
    pub const REJECTED_BAD_INPUT: &str = "rejected_bad_input";
    /// Captures acknowledged by the broker.
    pub const UPLOADED: &str = "uploaded";
    /// Captures purged (revocation, expiry, command, retention, quota).
    pub const PURGED: &str = "purged";
    /// Consented captures refused because the outbox quota was reached.
    pub const REJECTED_QUOTA: &str = "rejected_quota";
    /// Uploads cut off by a lost connection and sent again.
    pub const UPLOAD_RETRIES: &str = "upload_retries";
    /// Fleet commands refused by verification (bad signature, expired, ...).
    pub const COMMANDS_REFUSED: &str = "commands_refused";
    /// Messages on the command topics ignored (retained, QoS 0).
    pub const COMMANDS_IGNORED: &str = "commands_ignored";
    /// Connections the broker accepted (CONNACK), ever: tells a fresh
    /// install from a reconnect. Not in the status message.
    pub const BROKER_CONNECTIONS: &str = "broker_connections";
    /// Reconnects on which the broker had no stored session for the device
    /// (status `uplink.session_lost`).
    pub const SESSION_LOST: &str = "session_lost";
}

/// Errors from the store. Messages name the operation and, where it helps, the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An SQLite call failed.
    #[error("database error while {op}: {source}")]
    Sqlite {
        /// What the store was doing.
        op: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The file system is full (or the database hit its size limit); nothing
    /// from the failed operation was written.
    #[error("disk full while writing {path} ({op})")]
    DiskFull {
        /// The database file.
        path: PathBuf,
        /// What the store was doing.
        op: &'static str,
    },
    /// Creating or checking the database file failed.
    #[error("database file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Key material could not be used.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The database was written with a different storage key.
    #[error("{path} was created with a different storage key")]
    WrongKey {
        /// The database file.
        path: PathBuf,
    },
    /// A consent issued at or before the subject's latest revocation.
    #[error(
        "consent {consent_id} was issued at or before the subject's revocation ({revoked_before})"
    )]
    Revoked {
        /// The refused consent's id.
        consent_id: String,
        /// The subject's tombstone (unix seconds).
        revoked_before: i64,
    },
    /// A consent id (`jti`) this signing key already used for another
    /// consent (another subject or another token): consent ids are unique
    /// per key, so the new token is refused and the stored one kept.
    #[error("consent id {consent_id:?} of key {kid:?} is already used by another consent")]
    ConsentIdReused {
        /// The refused consent's id.
        consent_id: String,
        /// Its signing key.
        kid: String,
    },
    /// A command id that was already applied.
    #[error("command {jti} was already applied")]
    Replayed {
        /// The command's `jti`.
        jti: String,
    },
    /// Stored data is not what the store wrote.
    #[error("corrupt database content: {what}")]
    Corrupt {
        /// What was wrong.
        what: String,
    },
    /// The database was written by a newer facegate.
    #[error("{path} has schema version {found}, this facegate knows up to {known}")]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Version found in the file.
        found: u32,
        /// Highest version this build knows.
        known: u32,
    },
}

/// Attaches an operation name to rusqlite errors.
pub(crate) trait SqlCtx<T> {
    /// Converts the error into [`StoreError::Sqlite`] naming `op`.
    fn op(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T> SqlCtx<T> for rusqlite::Result<T> {
    fn op(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite { op, source })
    }
}

/// Outcome of [`Store::add_consent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddConsent {
    /// The consent was stored.
    Added,
    /// This very token (same key, id and content) was already stored; nothing changed.
    AlreadyKnown,
}

/// Outcome of [`Store::revoke`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Revocation {
    /// Consents of the subject issued at or before the revocation, now deleted.
    pub consents_removed: u64,
    /// Capture ids purged (all of the subject's captures).
    pub purged: Vec<CaptureId>,
    /// The subject's tombstone after this revocation (the max of old and new).
    pub revoked_before: i64,
    /// Consents of the subject still stored: issued after the tombstone.
    pub consents_remaining: u64,
}

/// A signed fleet command whose effect is being committed. In the effect's
/// own transaction the store remembers its `jti` (replay set), audits
/// `command.applied` and keeps the reply `reply` makes from the effect's
/// outcome, so a broker redelivery after a crash finds either all of them or
/// none (ARCHITECTURE.md, "Commands take effect once").
pub struct CommandStamp<'a, T> {
    /// The command's `jti`.
    pub jti: &'a Jti,
    /// The command name (`consent.revoke`, ...), for the audit row.
    pub cmd: &'a str,
    /// The command's `exp`; the jti is remembered until a day after it.
    pub expires_at: i64,
    /// The command's site consent-log `seq`, if it carries one: recorded as
    /// applied in the same transaction (SPEC "Site consent log").
    pub seq: Option<crate::ids::Seq>,
    /// The reply to keep for the command (JSON text, no subject id), made
    /// from the effect's outcome inside the transaction. Called once, with
    /// the outcome, or with the refusal when the refusal itself is
    /// remembered (a consent issued before the subject's revocation).
    pub reply: &'a mut dyn FnMut(Result<&T, &StoreError>) -> String,
}

impl<T> CommandStamp<'_, T> {
    /// The same stamp, borrowed again (to run a transaction once more).
    pub(crate) fn again(&mut self) -> CommandStamp<'_, T> {
        CommandStamp {
            jti: self.jti,
            cmd: self.cmd,
            expires_at: self.expires_at,
            seq: self.seq,
            reply: &mut *self.reply,
        }
    }
}

impl<T> std::fmt::Debug for CommandStamp<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandStamp")
            .field("jti", &self.jti)
            .field("cmd", &self.cmd)
            .field("expires_at", &self.expires_at)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Why captures are being purged (recorded in the audit detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeReason {
    /// The subject's consent was revoked.
    Revoked,
    /// The subject's last upload consent expired.
    ConsentExpired,
    /// A signed `capture.purge` command.
    Command,
    /// A local request through the control socket.
    Local,
    /// Outbox quota reached with the drop-oldest policy.
    OutboxFull,
    /// Older than the retention period.
    Retention,
    /// The stored capture could not be decrypted.
    Undecryptable,
    /// No stored consent of the subject allows uploading any more, for a
    /// reason other than expiry (e.g. its signing key was removed from the
    /// trusted keys). Found at hand-over or by the housekeeping sweep.
    ConsentInvalid,
}

/// Why the consent rule's refusal purges a subject's queued captures:
/// [`PurgeReason::ConsentExpired`] when expiry is the cause, otherwise
/// [`PurgeReason::ConsentInvalid`].
impl From<DropReason> for PurgeReason {
    fn from(reason: DropReason) -> Self {
        match reason {
            DropReason::Expired => PurgeReason::ConsentExpired,
            DropReason::NoSubject
            | DropReason::NoConsent
            | DropReason::KeyNotTrusted
            | DropReason::Revoked
            | DropReason::WrongAudience
            | DropReason::MissingScope => PurgeReason::ConsentInvalid,
        }
    }
}

impl PurgeReason {
    /// The reason code written to the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeReason::Revoked => "revoked",
            PurgeReason::ConsentExpired => "consent_expired",
            PurgeReason::Command => "command",
            PurgeReason::Local => "local",
            PurgeReason::OutboxFull => "outbox_full",
            PurgeReason::Retention => "retention",
            PurgeReason::Undecryptable => "undecryptable",
            PurgeReason::ConsentInvalid => "consent_invalid",
        }
    }
}

/// A subject whose queued captures [`Store::sweep_consents`] purged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    /// The subject's storage pseudonym (hex), as [`Store::subject_ref`] gives it.
    pub subject_ref: String,
    /// [`PurgeReason::ConsentExpired`] or [`PurgeReason::ConsentInvalid`].
    pub reason: PurgeReason,
    /// The purged captures.
    pub purged: Vec<CaptureId>,
}

/// A consented, sanitized capture: what intake hands to
/// [`Store::insert_captures`] and what the outbox gives back.
/// `Debug` omits the image bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Capture {
    /// UUID, stable across upload retries.
    pub capture_id: CaptureId,
    /// Subject id (plain); stored only encrypted.
    pub subject: SubjectId,
    /// The consent that allowed the capture at intake (the gate's decision).
    pub consent_id: String,
    /// When the camera took it (unix seconds).
    pub captured_at: i64,
    /// Camera name from the spool marker.
    pub camera: String,
    /// `image/jpeg` or `image/png`.
    pub content_type: String,
    /// SHA-256 of `image`, for the envelope.
    pub sha256: [u8; 32],
    /// Sanitized image bytes (plaintext in memory only), wiped when dropped.
    pub image: Zeroizing<Vec<u8>>,
}

/// A queued capture, decrypted, as the uplink needs it: the capture plus when
/// it entered the outbox. Derefs to [`Capture`] for its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxCapture {
    /// The capture as it was accepted.
    pub capture: Capture,
    /// When it entered the outbox (unix seconds); drives retention and age.
    pub queued_at: i64,
}

impl std::ops::Deref for OutboxCapture {
    type Target = Capture;

    fn deref(&self) -> &Capture {
        &self.capture
    }
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("capture_id", &self.capture_id)
            .field("consent_id", &self.consent_id)
            .field("captured_at", &self.captured_at)
            .field("camera", &self.camera)
            .field("content_type", &self.content_type)
            .field("image_len", &self.image.len())
            .finish_non_exhaustive()
    }
}

/// Per-capture outcome of [`Store::insert_captures`], in batch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Stored encrypted in the outbox.
    Accepted,
    /// Refused: the outbox quota is reached (reject-new policy, or the capture
    /// alone is larger than the quota). Audited and counted.
    QuotaRejected,
    /// A capture with this id is already queued; nothing changed.
    Duplicate,
}

/// Outbox size for the status message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct OutboxStats {
    /// Captures in the outbox (quarantined ones included).
    pub captures: u64,
    /// Of them, quarantined: refused by the broker `mqtt.max_attempts`
    /// times, not retried on their own.
    pub quarantined: u64,
    /// Encrypted bytes queued (what the quota limits).
    pub bytes: u64,
    /// Age in seconds of the oldest queued capture (0 when empty).
    pub oldest_age_s: u64,
}

/// How often a busy WAL checkpoint is tried before it is left to the next one.
const CHECKPOINT_TRIES: u32 = 3;

/// The device's persistent state. `Send`: share it behind a mutex.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    keys: Arc<DerivedKeys>,
    /// Remembered signature checks of stored consents (consent rule term 1),
    /// so [`Store::decide`] and [`Store::sweep_consents`] do not verify the
    /// same token again and again under unchanged trusted keys.
    signatures: SignatureMemo,
    /// Remembered answers of the consent rule per subject ([`Store::decide`]).
    decisions: consents::DecisionMemo,
    /// Rows were deleted (uploaded captures) since the WAL was last
    /// truncated: the WAL may still hold their pages as they were before the
    /// delete. True at open (a WAL left by a crash may hold anything).
    /// Shared with the [`Store::second_connection`] of this store, which
    /// sets it for its deletes.
    wal_has_deleted: Arc<AtomicBool>,
    /// Held by the second connection for each of its write transactions and
    /// by this one while it truncates the WAL or gives pages back, so that
    /// no delete of the other connection lands between a checkpoint and
    /// what relies on it (ARCHITECTURE I4).
    pair: Arc<Mutex<()>>,
    /// The space reserve next to the database ([`reserve`]).
    reserve: reserve::Reserve,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// A write transaction plus what writing needs: keys and the audit head.
pub(crate) struct Writer<'a> {
    pub(crate) tx: Transaction<'a>,
    pub(crate) keys: &'a DerivedKeys,
    head: Option<Option<(i64, [u8; 32])>>,
}

impl Store {
    /// Opens (creating if needed, mode 0600) `<state_dir>/facegate.db`, applies
    /// pragmas and migrations, and checks that `key` is the key it was created with.
    ///
    /// On a full disk opening can fail (SQLite cannot size its WAL index):
    /// then the space reserve ([`reserve`]) is released and it is tried once
    /// more, so a device restarted on a full disk still starts, applies
    /// revocations and uploads.
    pub fn open(state_dir: &Path, key: DeviceKey) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE_NAME);
        prepare_db_file(&path)?;
        let keys = Arc::new(key.derive());
        drop(key);
        let conn = Connection::open(&path).op("opening the database")?;
        let mut store = Store {
            conn,
            reserve: reserve::Reserve::new(state_dir.join(RESERVE_FILE_NAME)),
            path,
            keys,
            signatures: SignatureMemo::default(),
            decisions: consents::DecisionMemo::default(),
            wal_has_deleted: Arc::new(AtomicBool::new(true)),
            pair: Arc::new(Mutex::new(())),
        };
        let r = schema::init(&mut store).and_then(|()| consents::watch_changes(&store.conn));
        match store.finish(r) {
            Ok(()) => Ok(store),
            Err(e @ (StoreError::Sqlite { .. } | StoreError::DiskFull { .. }))
                if store.reserve_held() > 0 =>
            {
                tracing::warn!(error = %e, "cannot open the database, perhaps for a full disk: releasing the space reserve and trying again");
                store.release_reserve();
                store.conn = Connection::open(&store.path).op("opening the database")?;
                let r =
                    schema::init(&mut store).and_then(|()| consents::watch_changes(&store.conn));
                store.finish(r)?;
                Ok(store)
            }
            Err(e) => Err(e),
        }
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A second connection to the same database, with the same keys and
    /// pragmas, for the deletes after PUBACK ([`Store::ack_uploads`]): they
    /// commit (and fsync) without holding the lock of the hand-over, intake
    /// and revocations, which use this one. SQLite serialises the two
    /// connections' write transactions (`BEGIN IMMEDIATE`, busy timeout).
    /// The WAL truncation after its deletes is this store's
    /// ([`Store::truncate_wal_after_deletes`]); a truncation or a page
    /// give-back here waits for a delete in progress there and the other way
    /// round (ARCHITECTURE I4). Use it for nothing but acknowledgements.
    pub fn second_connection(&self) -> Result<Store, StoreError> {
        let conn = Connection::open(&self.path).op("opening a second connection")?;
        // `temp_store=MEMORY`: the statement journal of a batch's delete
        // (`outbox::DELETE_CAPTURES_SQL`: a trigger and foreign-key actions
        // fire, so SQLite journals each page the statement changes) stays in
        // memory instead of spilling to a temporary file past 64 KiB, which
        // would write it to flash for nothing. It holds each page at most
        // once, for at most `outbox::DELETE_STATEMENT_ROWS` captures: a few
        // hundred KiB.
        conn.execute_batch(
            "PRAGMA synchronous=FULL; PRAGMA secure_delete=ON; PRAGMA foreign_keys=ON;
             PRAGMA temp_store=MEMORY;",
        )
        .op("setting pragmas")?;
        conn.busy_timeout(Duration::from_secs(5))
            .op("setting busy timeout")?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        consents::refuse_changes(&conn)?;
        let reserve = self.path.with_file_name(RESERVE_FILE_NAME);
        Ok(Store {
            conn,
            path: self.path.clone(),
            keys: self.keys.clone(),
            signatures: SignatureMemo::default(),
            decisions: consents::DecisionMemo::default(),
            wal_has_deleted: self.wal_has_deleted.clone(),
            pair: self.pair.clone(),
            reserve: reserve::Reserve::new(reserve),
        })
    }

    /// Whether rows were deleted since the WAL was last truncated.
    pub(crate) fn wal_dirty(&self) -> bool {
        self.wal_has_deleted.load(Ordering::SeqCst)
    }

    /// Rows were deleted (or are about to be): the WAL needs truncating.
    pub(crate) fn set_wal_dirty(&self, dirty: bool) {
        self.wal_has_deleted.store(dirty, Ordering::SeqCst);
    }

    /// Hex storage pseudonym of a subject (tombstones, data keys, captures;
    /// [`Swept::subject_ref`]). Audit rows use [`Store::audit_ref`] instead.
    pub fn subject_ref(&self, subject: &SubjectId) -> String {
        hex::encode(self.keys.pseudonyms.pseudonym(subject.as_str()))
    }

    /// Hex reference under which audit rows written now name `subject`
    /// (salted per subject); `None` if no row names it since its last
    /// revocation. Read-only.
    pub fn audit_ref(&mut self, subject: &SubjectId) -> Result<Option<String>, StoreError> {
        let pseudonym = self.keys.pseudonyms.pseudonym(subject.as_str());
        let r = audit_log::stored_salt(&self.conn, &pseudonym)
            .map(|salt| salt.map(|s| hex::encode(self.keys.pseudonyms.audit_ref(&s, &pseudonym))));
        self.finish(r)
    }

    // ---- consents -------------------------------------------------------

    /// Stores a verified consent. Refuses (and audits `consent.refused`) one
    /// issued at or before the subject's tombstone with [`StoreError::Revoked`].
    /// With `cmd`, the command and its reply are kept in the same transaction
    /// (also when the consent is refused as revoked).
    pub fn add_consent(
        &mut self,
        consent: &Consent,
        now: i64,
        cmd: Option<CommandStamp<'_, AddConsent>>,
    ) -> Result<AddConsent, StoreError> {
        let r = consents::add(self, consent, now, cmd);
        self.finish(r)
    }

    /// Consents stored for `subject`, oldest first.
    pub fn consents_for(&mut self, subject: &SubjectId) -> Result<Vec<Consent>, StoreError> {
        let r = consents::for_subject(self, subject);
        self.finish(r)
    }

    /// Every stored consent, oldest first.
    pub fn list_consents(&mut self) -> Result<Vec<Consent>, StoreError> {
        let r = consents::list(self);
        self.finish(r)
    }

    /// The subject's revocation tombstone: consents issued at or before it are void.
    pub fn revoked_before(&mut self, subject: &SubjectId) -> Result<Option<i64>, StoreError> {
        let r = consents::revoked_before(self, subject);
        self.finish(r)
    }

    /// The consent rule ([`crate::gate`]) for a capture of `subject` at `now`,
    /// on the subject's stored consents and tombstone. Read-only: a caller
    /// that acts on the answer does so under the same lock (see
    /// [`crate::db::Db`]), so nothing changes in between. The answer is
    /// remembered while no consent or tombstone is written, under the same
    /// trusted keys and identity, for the `now`s where it holds
    /// (`consents::DecisionMemo`): the same answer, without reading and
    /// judging the subject's consents at every hand-over.
    pub fn decide(
        &mut self,
        subject: &SubjectId,
        trust: &[TrustedKey],
        me: &Identity,
        now: i64,
    ) -> Result<Decision, StoreError> {
        let r = consents::decide(self, subject, trust, me, now);
        self.finish(r)
    }

    /// Number of stored consents not yet expired at `now`.
    pub fn active_consent_count(&mut self, now: i64) -> Result<u64, StoreError> {
        let r = consents::active_count(self, now);
        self.finish(r)
    }

    /// Audits a consent refused before reaching the store (bad signature, ...).
    pub fn audit_consent_refused(
        &mut self,
        subject: Option<&SubjectId>,
        reason_code: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let detail = serde_json::json!({ "reason": reason_code });
        self.record(
            crate::audit::kind::CONSENT_REFUSED,
            subject,
            detail,
            None,
            now,
        )
    }

    /// Revokes `subject`: raises its tombstone to `before`, deletes its consents
    /// issued at or before `before`, purges all its captures and destroys its
    /// data key; then checkpoints the WAL. With `cmd`, the command and its
    /// reply are kept in the same transaction.
    pub fn revoke(
        &mut self,
        subject: &SubjectId,
        before: i64,
        now: i64,
        mut cmd: Option<CommandStamp<'_, Revocation>>,
    ) -> Result<Revocation, StoreError> {
        self.with_reserve(|s| {
            let cmd = cmd.as_mut().map(CommandStamp::again);
            let r = consents::revoke(s, subject, before, now, cmd);
            s.finish(r)
        })
    }

    /// Housekeeping with the consent rule ([`crate::gate`]), in one
    /// transaction: purges the queued captures and data key of every subject
    /// whose stored consents no longer allow uploading at `now` under `trust`
    /// (audited with reason `consent_expired` when expiry is the cause,
    /// `consent_invalid` otherwise, e.g. for a removed or replaced trust key),
    /// and deletes the consents expired at `now` (`expires_at <= now`,
    /// audited). Returns the purged subjects. ARCHITECTURE I8.
    pub fn sweep_consents(
        &mut self,
        trust: &[TrustedKey],
        me: &Identity,
        now: i64,
    ) -> Result<Vec<Swept>, StoreError> {
        self.with_reserve(|s| {
            let r = consents::sweep(s, trust, me, now);
            s.finish(r)
        })
    }

    // ---- outbox ---------------------------------------------------------

    /// Stores a batch of captures in ONE transaction (group commit). Each is
    /// encrypted under its subject's data key and subjected to the quota policy.
    ///
    /// Consent is the caller's check, not re-done here: every capture must
    /// have been accepted by [`Store::decide`] on this store under the same
    /// lock as this call, with the same `now`. Nothing can change the answer
    /// in between (revocations, expiry sweeps and grants all need the lock,
    /// and the rule is a pure function of what the store holds, the trusted
    /// keys and `now`), so a second check inside the transaction could never
    /// refuse. Intake does exactly this (ARCHITECTURE I2, A5).
    pub fn insert_captures(
        &mut self,
        batch: Vec<Capture>,
        policy: &OutboxConfig,
        now: i64,
    ) -> Result<Vec<Inserted>, StoreError> {
        let r = outbox::insert(self, batch, &IntakeRecords::default(), policy, now);
        self.finish(r.map(|(inserted, _)| inserted))
    }

    /// [`Store::insert_captures`] with what intake records besides its
    /// captures in the same transaction, so they cost no fsync of their
    /// own: pairs rejected as bad input (audited `capture.rejected` and
    /// counted once per pair, like a capture id: a pair recorded before, a
    /// crash having come between this commit and the spool removal, is not
    /// recorded again) and the summary of drops counted in memory
    /// (`dropped_no_consent`, one `capture.dropped` row). Also with no
    /// captures at all. Returns the captures' outcomes and, per rejection,
    /// whether it was new.
    pub fn insert_captures_with(
        &mut self,
        batch: Vec<Capture>,
        records: &IntakeRecords,
        policy: &OutboxConfig,
        now: i64,
    ) -> Result<(Vec<Inserted>, Vec<bool>), StoreError> {
        let r = outbox::insert(self, batch, records, policy, now);
        self.finish(r)
    }

    /// Up to `limit` queued captures, oldest first, decrypted, skipping `exclude`.
    /// Rows that fail to decrypt are purged (audited) and skipped.
    pub fn pending(
        &mut self,
        limit: usize,
        exclude: &[CaptureId],
    ) -> Result<Vec<OutboxCapture>, StoreError> {
        let read = self.pending_where(limit, exclude, 0, &mut |_| true)?;
        let (mut out, mut broken) = (Vec::with_capacity(read.len()), Vec::new());
        for p in read {
            let id = p.capture_id().clone();
            match p.into_opened() {
                Ok(c) => out.push(c),
                Err(_) => broken.push(id),
            }
        }
        self.purge_undecryptable(&broken)?;
        Ok(out)
    }

    /// The queued captures [`Store::pending`] would read, of those `read`
    /// accepts, with their images still sealed ([`Pending`]; the uplink
    /// opens them outside the store lock). `read` is asked, in queue order,
    /// with each candidate's stored size (sealed metadata and image, the
    /// `bytes` of [`OutboxStats`]); those it refuses are not read at all (nor
    /// decrypted). At most `lookahead` refused captures are looked past: the
    /// query reads `limit + exclude.len() + lookahead` keys. Rows whose key
    /// or metadata fail to decrypt are purged (audited) and skipped.
    pub fn pending_where(
        &mut self,
        limit: usize,
        exclude: &[CaptureId],
        lookahead: usize,
        read: &mut dyn FnMut(u64) -> bool,
    ) -> Result<Vec<Pending>, StoreError> {
        let r = outbox::pending(self, limit, exclude, lookahead, read);
        self.finish(r)
    }

    /// Purges the captures of `ids` that are still queued because their
    /// image did not decrypt ([`Pending::open`] failed), audited
    /// `capture.purged` with reason `undecryptable`. Returns how many.
    pub fn purge_undecryptable(&mut self, ids: &[CaptureId]) -> Result<usize, StoreError> {
        self.with_reserve(|s| {
            let r = outbox::purge_undecryptable_ids(s, ids);
            s.finish(r)
        })
    }

    /// Deletes an uploaded capture (broker PUBACK), zeroing its freed pages,
    /// and its subject's data key if it was the subject's last capture. False
    /// if it was not queued (e.g. purged meanwhile). The WAL keeps the older
    /// page versions until [`Store::truncate_wal_after_deletes`].
    pub fn ack(&mut self, capture_id: &CaptureId, now: i64) -> Result<bool, StoreError> {
        self.ack_many(std::slice::from_ref(capture_id), now)
            .map(|n| n == 1)
    }

    /// Deletes several uploaded captures in one transaction (a burst of
    /// PUBACKs), as [`Store::ack`] does; returns how many were still queued.
    pub fn ack_many(&mut self, capture_ids: &[CaptureId], now: i64) -> Result<usize, StoreError> {
        self.with_reserve(|s| {
            let r = outbox::ack(s, capture_ids, now);
            s.finish(r)
        })
    }

    /// Truncates the WAL (`PRAGMA wal_checkpoint(TRUNCATE)`) if uploaded
    /// captures were deleted since it was last truncated (or since open), so
    /// the page versions from before the delete, with their ciphertext, leave
    /// `facegate.db-wal`; the database file itself only ever holds the zeroed
    /// pages (ARCHITECTURE I4). Housekeeping calls it every few seconds; a
    /// purge truncates at once. True if it truncated. A checkpoint that could
    /// not complete is logged and tried again on the next call.
    pub fn truncate_wal_after_deletes(&mut self) -> Result<bool, StoreError> {
        if !self.wal_dirty() {
            return Ok(false);
        }
        self.checkpoint()?;
        Ok(true)
    }

    /// Purges every capture of `subject` and destroys its data key; keeps
    /// consents. Checkpoints the WAL. With `cmd`, the command and its reply
    /// are kept in the same transaction.
    pub fn purge_subject(
        &mut self,
        subject: &SubjectId,
        now: i64,
        reason: PurgeReason,
        mut cmd: Option<CommandStamp<'_, Vec<CaptureId>>>,
    ) -> Result<Vec<CaptureId>, StoreError> {
        self.with_reserve(|s| {
            let cmd = cmd.as_mut().map(CommandStamp::again);
            let r = purge::purge_subject(s, subject, now, reason, cmd);
            s.finish(r)
        })
    }

    /// Purges every capture and data key; keeps consents. Checkpoints the WAL.
    /// With `cmd`, the command and its reply are kept in the same transaction.
    pub fn purge_all(
        &mut self,
        now: i64,
        reason: PurgeReason,
        mut cmd: Option<CommandStamp<'_, Vec<CaptureId>>>,
    ) -> Result<Vec<CaptureId>, StoreError> {
        self.with_reserve(|s| {
            let cmd = cmd.as_mut().map(CommandStamp::again);
            let r = purge::purge_all(s, now, reason, cmd);
            s.finish(r)
        })
    }

    /// Purges captures queued more than `retention` before `now` (audited as
    /// `capture.expired`).
    pub fn enforce_retention(
        &mut self,
        now: i64,
        retention: Duration,
    ) -> Result<Vec<CaptureId>, StoreError> {
        self.with_reserve(|s| {
            let r = purge::enforce_retention(s, now, retention);
            s.finish(r)
        })
    }

    /// Outbox size and age.
    pub fn outbox_stats(&mut self, now: i64) -> Result<OutboxStats, StoreError> {
        let r = outbox::stats(self, now);
        self.finish(r)
    }

    // ---- counters and audit ---------------------------------------------

    /// Adds `n` to a counter (creating it at 0).
    pub fn bump(&mut self, name: &str, n: u64) -> Result<(), StoreError> {
        let r = counters::bump_tx(self, name, n);
        self.finish(r)
    }

    /// Appends an audit row and optionally bumps a counter, in one transaction.
    /// `subject` is turned into its pseudonym; never put plain ids in `detail`.
    pub fn record(
        &mut self,
        kind: &str,
        subject: Option<&SubjectId>,
        detail: Value,
        counter: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        let r = counters::record(self, kind, subject, detail, counter, now);
        self.finish(r)
    }

    /// At most one audit row (no subject; never put plain ids in `detail`)
    /// and bumps of several counters by `n`, in one transaction.
    pub fn record_counts(
        &mut self,
        audit: Option<(&str, Value)>,
        bumps: &[(&str, u64)],
        now: i64,
    ) -> Result<(), StoreError> {
        let r = counters::record_counts(self, audit, bumps, now);
        self.finish(r)
    }

    /// All counters.
    pub fn counters(&mut self) -> Result<BTreeMap<String, u64>, StoreError> {
        let r = counters::all(self);
        self.finish(r)
    }

    /// Verifies the whole audit chain.
    pub fn audit_verify(&mut self) -> Result<VerifyReport, StoreError> {
        let r = audit_log::verify(self);
        self.finish(r)
    }

    /// Audit retention: deletes the oldest audit rows written more than
    /// `retention` before `now` (at most 10 000 per call), keeping a sealed
    /// checkpoint so [`Store::audit_verify`] still proves the rest, and audits
    /// `audit.pruned`; then checkpoints the WAL. Refuses (and deletes nothing)
    /// when the rows to delete do not verify. Returns how many were deleted.
    pub fn prune_audit(&mut self, now: i64, retention: Duration) -> Result<u64, StoreError> {
        let keep = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        let cutoff = now.saturating_sub(keep);
        let r = (|| {
            let mut w = self.writer()?;
            let deleted = audit_log::prune(&mut w, now, cutoff)?;
            if deleted > 0 {
                w.commit()?;
                self.checkpoint()?;
            }
            Ok(deleted)
        })();
        self.finish(r)
    }

    /// The newest `n` audit rows, newest last.
    pub fn audit_tail(&mut self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let r = audit_log::tail(self, n);
        self.finish(r)
    }

    // ---- command replay -------------------------------------------------

    /// True if a command with this `jti` was already applied.
    pub fn command_seen(&mut self, jti: &Jti) -> Result<bool, StoreError> {
        let r = replay::seen(self, jti);
        self.finish(r)
    }

    /// Remembers a command that has no store effect of its own (e.g. `status`)
    /// with its reply, auditing `command.applied`, in one transaction.
    /// [`StoreError::Replayed`] if already seen.
    pub fn remember_command(
        &mut self,
        cmd: CommandStamp<'_, ()>,
        now: i64,
    ) -> Result<(), StoreError> {
        let r = replay::remember_tx(self, cmd, now);
        self.finish(r)
    }

    /// The reply kept for an applied command.
    pub fn command_reply(&mut self, jti: &Jti) -> Result<Option<String>, StoreError> {
        let r = replay::reply(self, jti);
        self.finish(r)
    }

    /// Forgets commands whose `exp` is more than a day in the past.
    pub fn forget_commands(&mut self, now: i64) -> Result<u64, StoreError> {
        let r = replay::forget(self, now);
        self.finish(r)
    }

    // ---- clock ----------------------------------------------------------

    /// The persisted high-water mark of the wall clock (ARCHITECTURE I15).
    pub fn clock_mark(&mut self) -> Result<Option<crate::clock::watch::Mark>, StoreError> {
        let r = clock_mark::load(self);
        self.finish(r)
    }

    /// Persists the high-water mark of the wall clock.
    pub fn save_clock_mark(&mut self, mark: &crate::clock::watch::Mark) -> Result<(), StoreError> {
        let r = clock_mark::save(self, mark);
        self.finish(r)
    }

    // ---- internals --------------------------------------------------------

    /// Starts an IMMEDIATE write transaction. `secure_delete` is on for the
    /// whole connection (set at open, never turned off): every delete zeroes
    /// the content it frees (ARCHITECTURE I4).
    pub(crate) fn writer(&mut self) -> Result<Writer<'_>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .op("starting a transaction")?;
        Ok(Writer {
            tx,
            keys: &self.keys,
            head: None,
        })
    }

    /// Copies the WAL into the database and truncates it, so no old page
    /// version (with purged content) survives in `facegate.db-wal`. Runs after
    /// a purge has committed, so a failure is logged rather than returned (the
    /// purge itself stands; the next checkpoint finishes the job).
    pub(crate) fn checkpoint(&mut self) -> Result<(), StoreError> {
        let pair = self.pair.clone();
        let _pair = pair.lock().unwrap_or_else(|p| p.into_inner());
        self.checkpoint_paired()
    }

    /// [`Store::checkpoint`] with the paired connection already held off
    /// ([`Store::pair_lock`]). A checkpoint the busy timeout could not
    /// complete (a reader of the old frames) is tried again a few times
    /// before it is left to the next call.
    pub(crate) fn checkpoint_paired(&mut self) -> Result<(), StoreError> {
        self.set_wal_dirty(false);
        for attempt in 1..=CHECKPOINT_TRIES {
            match self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                }) {
                Ok(0) => return Ok(()),
                Ok(_) if attempt < CHECKPOINT_TRIES => {
                    std::thread::sleep(Duration::from_millis(10 * attempt as u64));
                }
                Ok(_) => {
                    self.set_wal_dirty(true);
                    tracing::warn!(db = %self.path.display(), "WAL checkpoint could not complete: database busy")
                }
                Err(e) => {
                    self.set_wal_dirty(true);
                    tracing::error!(db = %self.path.display(), error = %e, "WAL checkpoint failed");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Maps SQLITE_FULL to [`StoreError::DiskFull`] naming the database file,
    /// and an SQLite I/O error too when the file system holding the database
    /// has no room left: SQLite reports a full disk as an I/O error where it
    /// grows its shared-memory index (`-shm`) or maps it, e.g. at the first
    /// open of a database another build left (no space reserve yet).
    fn finish<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        r.map_err(|e| match e {
            StoreError::Sqlite { op, source } if is_disk_full(&source, &self.path) => {
                StoreError::DiskFull {
                    path: self.path.clone(),
                    op,
                }
            }
            other => other,
        })
    }

    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// Below this much free space an SQLite I/O error is taken for a full disk:
/// less than a few pages, the WAL index and a journal header.
const FULL_BELOW_BYTES: u64 = 64 * 1024;

/// Whether `e` says the disk holding `db` is full: SQLITE_FULL, or an I/O
/// error while that file system has less than [`FULL_BELOW_BYTES`] free.
fn is_disk_full(e: &rusqlite::Error, db: &Path) -> bool {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => true,
        Some(rusqlite::ErrorCode::SystemIoFailure) => {
            let dir = db.parent().unwrap_or(db);
            crate::space::free_bytes(dir).is_ok_and(|free| free < FULL_BELOW_BYTES)
        }
        _ => false,
    }
}

impl Writer<'_> {
    /// Appends one audit row (chained to the previous one), inside the
    /// effect's own transaction (ARCHITECTURE I6). `subject` is the
    /// subject's storage pseudonym; the row holds its salted audit reference.
    pub(crate) fn audit(
        &mut self,
        ts: i64,
        kind: &str,
        subject: Option<&[u8; 32]>,
        detail: Value,
    ) -> Result<(), StoreError> {
        let head = match self.head {
            Some(h) => h,
            None => audit_log::head(&self.tx)?,
        };
        let subject_ref = match subject {
            Some(p) => Some(hex::encode(audit_log::subject_ref(
                &self.tx, self.keys, p, ts,
            )?)),
            None => None,
        };
        let entry = crate::audit::next_entry(&self.keys.audit, head, ts, kind, subject_ref, detail);
        audit_log::append(&self.tx, &entry)?;
        self.head = Some(Some((entry.seq, entry.mac)));
        Ok(())
    }

    /// Adds `n` to a counter.
    pub(crate) fn bump(&self, name: &str, n: u64) -> Result<(), StoreError> {
        counters::bump(&self.tx, name, n)
    }

    /// The subject's pseudonym.
    pub(crate) fn pseudonym(&self, subject: &SubjectId) -> [u8; 32] {
        self.keys.pseudonyms.pseudonym(subject.as_str())
    }

    /// Destroys the subject's audit salt: the audit rows naming it so far can
    /// no longer be linked to it (revocation).
    pub(crate) fn forget_audit_subject(&self, pseudonym: &[u8; 32]) -> Result<(), StoreError> {
        audit_log::forget_subject(&self.tx, pseudonym)
    }

    /// For a command's effect: stores its jti with the reply made from
    /// `outcome`, and audits `command.applied`. Nothing without `cmd`.
    pub(crate) fn applied<T>(
        &mut self,
        cmd: Option<CommandStamp<'_, T>>,
        outcome: &T,
        now: i64,
    ) -> Result<(), StoreError> {
        if let Some(cmd) = cmd {
            let reply = (cmd.reply)(Ok(outcome));
            replay::remember(self, cmd.jti, cmd.expires_at, &reply, now)?;
            if let Some(seq) = cmd.seq {
                consent_log::mark_applied(&self.tx, seq)?;
            }
            let detail = match cmd.seq {
                Some(seq) => serde_json::json!({ "jti": cmd.jti, "cmd": cmd.cmd, "seq": seq }),
                None => serde_json::json!({ "jti": cmd.jti, "cmd": cmd.cmd }),
            };
            self.audit(now, crate::audit::kind::COMMAND_APPLIED, None, detail)?;
        }
        Ok(())
    }

    /// Commits.
    pub(crate) fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().op("committing")
    }
}

/// Creates the database file with mode 0600 if missing; tightens the mode of
/// an existing database (and its WAL/SHM) that group or others could read.
fn prepare_db_file(path: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        let meta = match fs::metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::Io { path: p, source: e }),
        };
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %p.display(), "database file was accessible by group/others; setting mode 0600");
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).map_err(|source| {
                StoreError::Io {
                    path: p.clone(),
                    source,
                }
            })?;
        }
    }
    Ok(())
}
