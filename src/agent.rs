//! The agent: applies consent and purge operations, whoever asks for them
//! (a site admin over the control socket, a fleet command over MQTT), and builds
//! the status object. It knows neither the control protocol nor the fleet
//! commands: [`crate::control`] and [`crate::cmd`] call its typed operations.
//! Verification happens before this layer; every effect is one store
//! transaction that also writes its audit entry and, on behalf of a command
//! ([`Via`]), keeps the command's `jti` and reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::audit::{AuditEntry, VerifyReport};
use crate::config::Config;
use crate::consent::{self, ConsentError};
use crate::consent_log::{self, Head, HeadError};
use crate::db::{Db, DbError};
use crate::gate::Consent;
use crate::ids::{CaptureId, Jti, Seq, SubjectId};
use crate::protocol::{
    self, AlreadyApplied, ClockStatus, CommandName, ConsentLogStatus, ConsentStatus, Counters,
    ErrorCode, Granted, IntakeState, OutboxStatus, PartNo, Piece, Receipt, Reply, ReplyResult,
    State, Status, StorageStatus, UplinkStatus,
};
use crate::reload;
use crate::shelf::{Gone, Shelf};
use crate::space::Pressure;
use crate::store::{
    counter, AddConsent, CommandStamp, HeadApplied, PurgeReason, Store, StoreError,
};
pub use crate::store::{OutboxEntry, OutboxState};
use crate::tally::Tally;
use crate::timekeeper::Timekeeper;

/// The product version reported in status messages.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Which captures of a purge to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeTarget {
    /// Every queued capture of one subject.
    Subject(SubjectId),
    /// Every queued capture.
    All,
}

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The consent token failed verification.
    #[error("consent refused: {0}")]
    Consent(#[from] ConsentError),
    /// The store failed (disk full, I/O) or refused (revoked, replayed).
    #[error(transparent)]
    Db(#[from] DbError),
    /// The request itself is unusable.
    #[error("{0}")]
    BadRequest(String),
}

impl ApplyError {
    /// Stable code for replies and `ctl` output.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApplyError::Consent(e) => e.code(),
            ApplyError::Db(DbError::Store(e)) => store_error_code(e),
            ApplyError::Db(DbError::Task(_)) => ErrorCode::Internal,
            ApplyError::BadRequest(_) => ErrorCode::BadArgs,
        }
    }
}

/// The code of a store failure or refusal.
fn store_error_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::Revoked { .. } => ErrorCode::Revoked,
        StoreError::ConsentIdReused { .. } => ErrorCode::JtiReused,
        StoreError::Replayed { .. } => ErrorCode::Replayed,
        _ => ErrorCode::Internal,
    }
}

/// Uploads handed to MQTT whose PUBACK has not been recorded yet: whole
/// captures and parts of captures. The uplink fills it and empties it once
/// the acknowledgement is in the store (or the connection is lost); purge
/// receipts list the purged captures that are in it (SPEC invariant 4).
/// Between the PUBACK and the delete an upload is still in it, marked
/// acknowledged: it is not handed over again, but it no longer counts as
/// awaiting its PUBACK ([`InFlight::awaiting`], status `uplink.in_flight`).
#[derive(Debug, Default)]
pub struct InFlight {
    /// Capture id → its pieces in flight (`None`: the whole capture) and
    /// whether the broker acknowledged each.
    ids: Mutex<HashMap<CaptureId, HashMap<Option<PartNo>, Stage>>>,
}

/// Where an upload in [`InFlight`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Handed to MQTT, its PUBACK not received.
    Awaiting,
    /// Its PUBACK arrived: the delete not recorded yet (or, for an MQTT 5
    /// refusal, the refusal not counted yet).
    Acknowledged,
}

impl InFlight {
    /// Records that `piece` was handed to MQTT.
    pub fn insert(&self, piece: &Piece) {
        self.lock()
            .entry(piece.capture_id.clone())
            .or_default()
            .insert(piece.part, Stage::Awaiting);
    }

    /// Records that the broker's PUBACK for `piece` arrived (it stays in
    /// flight until the delete, or the refusal, is recorded,
    /// [`InFlight::remove`]). False if it was not in flight.
    pub fn acknowledged(&self, piece: &Piece) -> bool {
        let mut map = self.lock();
        match map
            .get_mut(&piece.capture_id)
            .and_then(|set| set.get_mut(&piece.part))
        {
            Some(stage) => {
                *stage = Stage::Acknowledged;
                true
            }
            None => false,
        }
    }

    /// Records that `piece` was acknowledged and its delete recorded, or abandoned.
    pub fn remove(&self, piece: &Piece) -> bool {
        let mut map = self.lock();
        let Some(set) = map.get_mut(&piece.capture_id) else {
            return false;
        };
        let removed = set.remove(&piece.part).is_some();
        if set.is_empty() {
            map.remove(&piece.capture_id);
        }
        removed
    }

    /// Which of `ids` have something in flight (acknowledged or not), in
    /// the given order.
    pub fn among(&self, ids: &[CaptureId]) -> Vec<CaptureId> {
        let map = self.lock();
        ids.iter()
            .filter(|id| map.contains_key(*id))
            .cloned()
            .collect()
    }

    /// Every capture with something in flight.
    pub fn snapshot(&self) -> Vec<CaptureId> {
        self.lock().keys().cloned().collect()
    }

    /// The parts of `capture_id` split into `of` that are in flight
    /// (acknowledged or not).
    pub fn parts_of(&self, capture_id: &CaptureId, of: u32) -> Vec<u32> {
        let map = self.lock();
        let mut parts: Vec<u32> = map
            .get(capture_id)
            .into_iter()
            .flat_map(|set| set.keys())
            .flatten()
            .filter(|p| p.of == of)
            .map(|p| p.index)
            .collect();
        parts.sort_unstable();
        parts
    }

    /// How many captures have something in flight.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// How many uploads (whole captures or parts: one PUBLISH each) await
    /// their PUBACK; at most the window (`mqtt.inflight`). Status
    /// `uplink.in_flight`.
    pub fn awaiting(&self) -> usize {
        self.lock()
            .values()
            .flat_map(|set| set.values())
            .filter(|s| **s == Stage::Awaiting)
            .count()
    }

    /// How many uploads are acknowledged by the broker and not yet recorded
    /// (their delete, or part record, not committed).
    pub fn unrecorded(&self) -> usize {
        self.lock()
            .values()
            .flat_map(|set| set.values())
            .filter(|s| **s == Stage::Acknowledged)
            .count()
    }

    /// True when nothing is in flight: every upload handed over is
    /// acknowledged and its delete recorded, or abandoned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<CaptureId, HashMap<Option<PartNo>, Stage>>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Shared state of the running daemon.
pub struct Agent {
    /// Validated configuration: identity, trusted keys, limits. Replaced as a
    /// whole on SIGHUP ([`Agent::reload`]); readers take a snapshot.
    config: RwLock<Arc<Config>>,
    /// The one store.
    db: Db,
    /// Captures handed to MQTT and not yet acknowledged.
    inflight: Arc<InFlight>,
    /// Whole captures the uplink decrypted and encoded ahead of the window;
    /// a revocation or purge wipes its subject's under the store lock.
    shelf: Arc<Shelf>,
    /// Whether the uplink currently holds a broker connection (for status).
    connected: AtomicBool,
    /// Wakes the uplink when the outbox gained captures or the window freed up.
    outbox_changed: Notify,
    /// Disk-full state: intake paused, deletes failing.
    pressure: Pressure,
    /// Whether the wall clock is trusted for irreversible actions (I15).
    clock: Timekeeper,
    /// Drops counted by intake and not yet written (added to the status).
    tally: Arc<Tally>,
}

/// The verified fleet command on whose behalf an operation runs. The store
/// records its `jti` and the reply it gets in the effect's own transaction
/// (ARCHITECTURE.md, "Commands take effect once"), so a replay is refused and
/// a broker redelivery gets the same reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// The command's `jti`.
    pub jti: Jti,
    /// Which command.
    pub cmd: CommandName,
    /// The command's `iat`: a revocation covers consents issued at or before it.
    pub issued_at: i64,
    /// The command's `exp`: how long the `jti` must be remembered.
    pub expires_at: i64,
    /// The command's site consent-log `seq`: recorded as applied with the
    /// effect.
    pub seq: Option<Seq>,
}

impl Via {
    /// The reply of the command when it took effect with `result`.
    pub fn ok(&self, result: ReplyResult) -> Reply {
        Reply::ok(&self.jti, self.cmd, result)
    }

    /// The reply of the command when it was refused or failed.
    pub fn refused(&self, code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::err(Some(&self.jti), Some(self.cmd.as_str()), code, message)
    }

    fn stamp<'a, T>(
        &'a self,
        reply: &'a mut dyn FnMut(Result<&T, &StoreError>) -> String,
    ) -> CommandStamp<'a, T> {
        CommandStamp {
            jti: &self.jti,
            cmd: self.cmd.as_str(),
            expires_at: self.expires_at,
            seq: self.seq,
            reply,
        }
    }
}

/// A stored consent as `ctl consent list` shows it (without the raw token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentSummary {
    /// The consent's `jti`.
    pub consent_id: Jti,
    /// Its subject.
    pub subject: SubjectId,
    /// Who issued it (`iss`).
    pub issuer: String,
    /// The trusted key that signed it.
    pub kid: String,
    /// Its scopes, space-separated.
    pub scope: String,
    /// Its audience (sites and/or `site/device`).
    pub aud: Vec<String>,
    /// `iat` (unix seconds; RFC 3339 in JSON).
    #[serde(with = "protocol::fields::rfc3339")]
    pub issued_at: i64,
    /// `exp` (unix seconds; RFC 3339 in JSON).
    #[serde(with = "protocol::fields::rfc3339")]
    pub expires_at: i64,
    /// False once `exp` has passed (housekeeping deletes it soon).
    pub active: bool,
}

impl ConsentSummary {
    fn of(c: &Consent, now: i64) -> ConsentSummary {
        ConsentSummary {
            consent_id: Jti::from(c.id.as_str()),
            subject: c.subject.clone(),
            issuer: c.issuer.clone(),
            kid: c.kid.clone(),
            scope: c.scopes.join(" "),
            aud: c.audience.clone(),
            issued_at: c.issued_at,
            expires_at: c.expires_at,
            active: now < c.expires_at,
        }
    }
}

impl Agent {
    /// An agent over an opened store.
    pub fn new(config: Arc<Config>, db: Db) -> Self {
        // The clock's high-water mark as the last run left it (ARCHITECTURE
        // I15); unreadable, the first reading is trusted.
        let mark = match db.lock().clock_mark() {
            Ok(mark) => mark,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the clock mark; starting from the current time");
                None
            }
        };
        Agent {
            clock: Timekeeper::new(mark),
            config: RwLock::new(config),
            db,
            inflight: Arc::new(InFlight::default()),
            shelf: Arc::default(),
            connected: AtomicBool::new(false),
            outbox_changed: Notify::new(),
            pressure: Pressure::default(),
            tally: Arc::default(),
        }
    }

    /// Drops counted by intake and not yet written to the store.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Disk-full state shared by intake, the uplink and the status.
    pub fn pressure(&self) -> &Pressure {
        &self.pressure
    }

    /// The wall clock watched for jumps (ARCHITECTURE I15).
    pub fn clock(&self) -> &Timekeeper {
        &self.clock
    }

    /// The store.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Captures handed to MQTT and not yet acknowledged (the uplink keeps it).
    pub fn inflight(&self) -> &InFlight {
        &self.inflight
    }

    /// Whole captures prepared for upload ahead of the window, and the hook
    /// to the captures kept decrypted for their parts (the uplink fills
    /// both; revocations and purges wipe them).
    pub fn shelf(&self) -> &Shelf {
        &self.shelf
    }

    /// Records whether the uplink holds a broker connection (reported in status).
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// Whether the uplink holds a broker connection.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Notified when the outbox gained captures or the upload window may have
    /// room again: the uplink waits on it, everyone else `notify_one`s it.
    pub fn outbox_changed(&self) -> &Notify {
        &self.outbox_changed
    }

    /// A snapshot of the current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies a new, already validated configuration: the live parts now, the
    /// rest reported as needing a restart (see [`reload::plan`]).
    pub fn reload(&self, new: Config) -> reload::Plan {
        let mut slot = self.config.write().unwrap_or_else(|p| p.into_inner());
        let (merged, plan) = reload::plan(&slot, new);
        if plan.applied.contains(&"log.level") {
            if let Err(e) = crate::logging::set_level(&merged.log) {
                tracing::error!(error = %e, "log level not changed");
            }
        }
        *slot = Arc::new(merged);
        drop(slot);
        self.outbox_changed.notify_one();
        plan
    }

    /// The reply kept for the applied command `jti`, as it was kept (without
    /// subject id), if any.
    pub async fn kept_reply(&self, jti: Jti) -> Result<Option<Reply>, ApplyError> {
        let kept = self.db.run(move |s| s.command_reply(&jti)).await?;
        Ok(kept.and_then(|text| Reply::from_bytes(text.as_bytes()).ok()))
    }

    /// Verifies a consent token and stores it. A token refused by
    /// verification is audited (`consent.refused`) only for a local request:
    /// on behalf of a command (`via`) the caller audits the refusal, within
    /// its rate limit (`uplink::ingress`), because such a command is not
    /// remembered and can be sent again and again.
    pub async fn grant(
        &self,
        token: String,
        now: i64,
        via: Option<Via>,
    ) -> Result<Granted, ApplyError> {
        let cfg = self.config();
        let limits = consent::TokenLimits::of(&cfg);
        // On a clock behind the highest wall time ever trusted, the token is
        // judged at that time (ARCHITECTURE I15): a consent issued now is
        // not refused as "in the future", and expiry is judged no earlier.
        let at = self.clock.high_water().map_or(now, |high| now.max(high));
        let consent =
            match consent::verify_consent(token.trim(), &cfg.trust, &cfg.identity, at, limits) {
                Ok(c) => c,
                Err(e) => {
                    if via.is_none() {
                        let code = e.code();
                        self.db
                            .run(move |s| s.audit_consent_refused(None, code.as_str(), now))
                            .await?;
                    }
                    return Err(e.into());
                }
            };
        let granted = self
            .db
            .run(move |st| {
                let result = |added: &AddConsent| Granted {
                    consent_id: Jti::from(consent.id.as_str()),
                    subject: Some(consent.subject.clone()),
                    expires_at: consent.expires_at,
                    new: matches!(added, AddConsent::Added),
                };
                effect(via.as_ref(), result, |stamp| {
                    st.add_consent(&consent, now, stamp)
                })
            })
            .await?;
        self.outbox_changed.notify_one();
        Ok(granted)
    }

    /// A local revocation (`ctl consent revoke`, no signature): invalidates
    /// every consent of `subject` this device holds or could accept now. A
    /// consent is accepted with an `iat` up to `[commands] clock_skew` ahead
    /// of the device clock, so the tombstone is `now + skew`: it removes the
    /// consents stored from a signer whose clock runs ahead, and refuses them
    /// when they come again. The receipt says how many remain (none unless
    /// the device clock was set back since they were stored).
    pub async fn revoke_now(&self, subject: SubjectId, now: i64) -> Result<Receipt, ApplyError> {
        let skew = i64::try_from(self.config().commands.clock_skew.as_secs()).unwrap_or(0);
        self.revoke(subject, now.saturating_add(skew), now, None)
            .await
    }

    /// Invalidates every consent of `subject` issued at or before `before` and
    /// purges all of its captures; returns the purge receipt.
    pub async fn revoke(
        &self,
        subject: SubjectId,
        before: i64,
        now: i64,
        via: Option<Via>,
    ) -> Result<Receipt, ApplyError> {
        let (inflight, shelf) = (self.inflight.clone(), self.shelf.clone());
        let receipt = self
            .db
            .run(move |st| {
                // In flight: taken under the store lock, atomically with the
                // purge; captures partly sent (some parts acknowledged) too.
                let partly = st.partly_sent(Some(&subject))?;
                let result = |r: &crate::store::Revocation| Receipt {
                    consents_remaining: Some(r.consents_remaining),
                    ..receipt(
                        Some(&subject),
                        &r.purged,
                        in_flight(&inflight, &partly, &r.purged),
                        now,
                    )
                };
                let receipt = effect(via.as_ref(), result, |stamp| {
                    st.revoke(&subject, before, now, stamp)
                });
                // Still under the store lock: none of the subject's captures
                // stays readable in the uplink (prepared, or kept for its
                // parts) once the receipt exists (SPEC invariant 4,
                // crate::shelf).
                shelf.forget(&Gone::Subject(&subject));
                receipt
            })
            .await?;
        // The uplink lets go of a purged capture it kept for its parts.
        self.outbox_changed.notify_one();
        Ok(receipt)
    }

    /// Purges captures (consents stay); returns the purge receipt.
    pub async fn purge(
        &self,
        target: PurgeTarget,
        now: i64,
        via: Option<Via>,
    ) -> Result<Receipt, ApplyError> {
        let reason = if via.is_some() {
            PurgeReason::Command
        } else {
            PurgeReason::Local
        };
        let (inflight, shelf) = (self.inflight.clone(), self.shelf.clone());
        let receipt = self
            .db
            .run(move |st| {
                let subject = match &target {
                    PurgeTarget::Subject(s) => Some(s),
                    PurgeTarget::All => None,
                };
                // In flight: taken under the store lock, atomically with the
                // purge; captures partly sent (some parts acknowledged) too.
                let partly = st.partly_sent(subject)?;
                let result = |ids: &Vec<CaptureId>| {
                    receipt(subject, ids, in_flight(&inflight, &partly, ids), now)
                };
                let receipt = effect(via.as_ref(), result, |stamp| match &target {
                    PurgeTarget::Subject(s) => st.purge_subject(s, now, reason, stamp),
                    PurgeTarget::All => st.purge_all(now, reason, stamp),
                });
                // As for a revocation: nothing purged stays readable in the
                // uplink.
                shelf.forget(&subject.map_or(Gone::All, Gone::Subject));
                receipt
            })
            .await?;
        // The uplink lets go of a purged capture it kept for its parts.
        self.outbox_changed.notify_one();
        Ok(receipt)
    }

    /// Every stored consent, without the raw tokens.
    pub async fn list_consents(&self, now: i64) -> Result<Vec<ConsentSummary>, ApplyError> {
        let list = self.db.run(|s| s.list_consents()).await?;
        Ok(list.iter().map(|c| ConsentSummary::of(c, now)).collect())
    }

    /// What the status says about the disk, before the store is asked.
    fn disk(&self) -> Disk {
        let cfg = self.config();
        Disk {
            free: crate::space::free_bytes(&cfg.state_dir).ok(),
            reserve_bytes: cfg.storage.reserve_bytes,
            quota_bytes: cfg.outbox.quota_bytes,
            intake_paused: self.pressure.intake_paused(),
            deletes_failing: self.pressure.deletes_failing(),
        }
    }

    /// The SPEC status object.
    pub async fn status(&self, now: i64) -> Result<Status, ApplyError> {
        let (connected, inflight) = (self.connected(), self.inflight.clone());
        let max_age = self.head_max_age_s();
        let disk = self.disk();
        let clock = self.clock.status();
        let tally = self.tally.clone();
        let status = self
            .db
            .run(move |st| {
                status_of(
                    st,
                    now,
                    connected,
                    inflight.awaiting(),
                    max_age,
                    disk,
                    clock,
                    &tally,
                )
            })
            .await?;
        Ok(status)
    }

    /// `[consent] head_max_age` in whole seconds.
    fn head_max_age_s(&self) -> i64 {
        i64::try_from(self.config().consent.head_max_age.as_secs()).unwrap_or(i64::MAX)
    }

    /// Where the device stands in its site's consent log (the status
    /// `consent_log` object).
    pub async fn consent_log(&self, now: i64) -> Result<ConsentLogStatus, ApplyError> {
        let max_age = self.head_max_age_s();
        let status = self
            .db
            .run(move |st| st.consent_log_status(max_age, now))
            .await?;
        Ok(status)
    }

    /// A message on the site's consent-log head topic: verified (a `fleet`
    /// key, this site, in time) and stored as this connection's head unless
    /// it is older than the head already seen. A refused head changes
    /// nothing. Wakes the uplink: uploads may resume.
    pub async fn consent_head(
        &self,
        payload: &[u8],
        now: i64,
    ) -> Result<Result<(Head, HeadApplied), HeadError>, ApplyError> {
        let cfg = self.config();
        let skew = i64::try_from(cfg.commands.clock_skew.as_secs()).unwrap_or(0);
        let head = match consent_log::verify_head(payload, &cfg.trust, &cfg.identity, skew, now) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        // A verified signed time: may confirm a clock jump (I15).
        self.clock.signed_time(head.iat, now);
        let applied = self
            .db
            .run(move |st| st.accept_consent_head(&head, now))
            .await?;
        self.outbox_changed.notify_one();
        Ok(Ok((head, applied)))
    }

    /// Whether the consent-log entry `seq` was applied before.
    pub async fn consent_seq_applied(&self, seq: Seq) -> Result<bool, ApplyError> {
        Ok(self.db.run(move |st| st.consent_seq_applied(seq)).await?)
    }

    /// Counts a consent-log entry whose effect was refused for good (its
    /// consent token expired, say) as applied: sending it again would not
    /// change anything, so it must not hold the log.
    pub async fn settle_consent_seq(&self, seq: Seq, now: i64) -> Result<(), ApplyError> {
        self.db.run(move |st| st.mark_consent_seq(seq, now)).await?;
        Ok(())
    }

    /// The answer to a consent-log entry whose `seq` was applied before:
    /// no second effect; the command (its new `jti`) is remembered with
    /// this answer as its reply.
    pub async fn answer_applied_before(
        &self,
        via: Via,
        seq: Seq,
        now: i64,
    ) -> Result<AlreadyApplied, ApplyError> {
        let answer = AlreadyApplied {
            seq,
            already_applied: true,
        };
        let answer = self
            .db
            .run(move |st| {
                effect(
                    Some(&via),
                    |_: &()| answer,
                    |stamp| match stamp {
                        Some(stamp) => st.remember_command(stamp, now),
                        None => Ok(()),
                    },
                )
            })
            .await?;
        Ok(answer)
    }

    /// The status object as the answer to a `status` command: the command is
    /// remembered with this status as its reply, in one transaction.
    pub async fn answer_status(&self, via: Via, now: i64) -> Result<Status, ApplyError> {
        let (connected, inflight) = (self.connected(), self.inflight.clone());
        let max_age = self.head_max_age_s();
        let disk = self.disk();
        let clock = self.clock.status();
        let tally = self.tally.clone();
        let status = self
            .db
            .run(move |st| {
                let status = status_of(
                    st,
                    now,
                    connected,
                    inflight.awaiting(),
                    max_age,
                    disk,
                    clock,
                    &tally,
                )?;
                effect(
                    Some(&via),
                    |_: &()| status.clone(),
                    |stamp| match stamp {
                        Some(stamp) => st.remember_command(stamp, now),
                        None => Ok(()),
                    },
                )
            })
            .await?;
        Ok(status)
    }

    /// Checks the audit hash chain; the report says whether it is intact.
    pub async fn audit_verify(&self) -> Result<VerifyReport, ApplyError> {
        Ok(self.db.run(|s| s.audit_verify()).await?)
    }

    /// The newest `n` audit entries.
    pub async fn audit_tail(&self, n: usize) -> Result<Vec<AuditEntry>, ApplyError> {
        Ok(self.db.run(move |s| s.audit_tail(n)).await?)
    }

    /// Every capture of the outbox, oldest first: queued (or in flight) and
    /// quarantined, without subject or image.
    pub async fn outbox_list(&self, now: i64) -> Result<Vec<OutboxEntry>, ApplyError> {
        let mut list = self.db.run(move |s| s.outbox_list(now)).await?;
        let sending = self.inflight.snapshot();
        for e in &mut list {
            if e.state == OutboxState::Queued && sending.iter().any(|c| c.as_str() == e.capture_id)
            {
                e.state = OutboxState::InFlight;
            }
        }
        Ok(list)
    }

    /// Puts quarantined captures back in the queue with their refusals reset
    /// (audited `capture.retried`): `capture_id`, or all with `None`. A named
    /// capture that is not quarantined is refused by name.
    pub async fn retry_quarantined(
        &self,
        capture_id: Option<CaptureId>,
        now: i64,
    ) -> Result<Retried, ApplyError> {
        let target = capture_id.clone();
        let retried = self
            .db
            .run(move |s| s.retry_quarantined(target.as_ref(), now))
            .await?;
        if let (Some(id), true) = (capture_id, retried.is_empty()) {
            return Err(ApplyError::BadRequest(format!(
                "capture {id} is not quarantined (see `facegate ctl outbox list`)"
            )));
        }
        if !retried.is_empty() {
            tracing::info!(
                count = retried.len(),
                "quarantined captures put back in the queue"
            );
            self.outbox_changed.notify_one();
        }
        Ok(Retried { retried })
    }
}

/// What `ctl outbox retry` put back in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retried {
    /// The captures no longer quarantined.
    pub retried: Vec<CaptureId>,
}

/// Runs one store effect and makes the operation's result from its outcome.
/// On behalf of a command (`via`) the result is made inside the effect's
/// transaction, where the store keeps the reply made of it (without subject
/// id) with the effect and the command's `jti`: the kept reply and the
/// published one are the same, and neither exists without the effect. Without
/// `via`, the result is made right after the effect, under the same store lock.
fn effect<T, R>(
    via: Option<&Via>,
    result: impl Fn(&T) -> R,
    run: impl FnOnce(Option<CommandStamp<'_, T>>) -> Result<T, StoreError>,
) -> Result<R, StoreError>
where
    R: Clone + Into<ReplyResult>,
{
    let Some(via) = via else {
        let outcome = run(None)?;
        return Ok(result(&outcome));
    };
    let mut made = None;
    let mut keep = |outcome: Result<&T, &StoreError>| {
        let reply = match outcome {
            Ok(outcome) => {
                let r = result(outcome);
                made = Some(r.clone());
                via.ok(r.into())
            }
            Err(e) => via.refused(store_error_code(e), e.to_string()),
        };
        kept_text(&reply)
    };
    let outcome = run(Some(via.stamp(&mut keep)))?;
    Ok(match made {
        Some(r) => r,
        None => result(&outcome),
    })
}

/// A reply as the store keeps it: the subject id left out (`null`), so no
/// subject id outlives a revocation in the command log; it is put back from
/// the command on redelivery.
fn kept_text(reply: &Reply) -> String {
    String::from_utf8(reply.without_subject().to_bytes()).unwrap_or_default()
}

/// The status object from the store, at `now`.
/// The disk figures of a status taken outside the store.
#[derive(Debug, Clone, Copy)]
struct Disk {
    /// Free bytes of the state directory's file system (`None`: unknown).
    free: Option<u64>,
    reserve_bytes: u64,
    quota_bytes: u64,
    intake_paused: bool,
    deletes_failing: bool,
}

#[allow(clippy::too_many_arguments)] // the parts of one status, each read elsewhere
fn status_of(
    st: &mut Store,
    now: i64,
    connected: bool,
    in_flight: usize,
    head_max_age_s: i64,
    disk: Disk,
    clock: ClockStatus,
    tally: &Tally,
) -> Result<Status, StoreError> {
    let consent_log = st.consent_log_status(head_max_age_s, now)?;
    let stats = st.outbox_stats(now)?;
    let held = st.reserve_held();
    let storage = StorageStatus {
        free_bytes: disk.free.unwrap_or(0),
        reserve_bytes: disk.reserve_bytes,
        reserve_held: held,
        quota_bytes: match disk.free {
            Some(free) => crate::space::effective_quota(
                disk.quota_bytes,
                stats.bytes,
                free,
                disk.reserve_bytes,
                held,
            ),
            None => disk.quota_bytes,
        },
        intake: if disk.intake_paused {
            IntakeState::PausedDiskFull
        } else {
            IntakeState::Running
        },
        deletes_failing: disk.deletes_failing,
    };
    let active = st.active_consent_count(now)?;
    let counters = st.counters()?;
    let count = |k: &str| counters.get(k).copied().unwrap_or(0);
    Ok(Status {
        v: protocol::WIRE_VERSION,
        state: State::Online,
        version: Some(VERSION.to_string()),
        ts: Some(now),
        outbox: Some(OutboxStatus {
            captures: stats.captures,
            bytes: stats.bytes,
            oldest_age_s: stats.oldest_age_s,
            quarantined: stats.quarantined,
        }),
        consent: Some(ConsentStatus { active }),
        counters: Some(Counters {
            accepted: count(counter::ACCEPTED),
            // Under the store lock: a drop is either written or pending here.
            dropped_no_consent: count(counter::DROPPED_NO_CONSENT) + tally.pending(),
            rejected_bad_input: count(counter::REJECTED_BAD_INPUT),
            uploaded: count(counter::UPLOADED),
            purged: count(counter::PURGED),
            rejected_quota: count(counter::REJECTED_QUOTA),
            upload_retries: count(counter::UPLOAD_RETRIES),
            commands_refused: count(counter::COMMANDS_REFUSED),
            commands_ignored: count(counter::COMMANDS_IGNORED),
        }),
        uplink: Some(UplinkStatus {
            connected,
            in_flight: in_flight as u64,
            session_lost: count(counter::SESSION_LOST),
        }),
        consent_log: Some(consent_log),
        storage: Some(storage),
        clock: Some(clock),
    })
}

/// The purged captures the back-end may hold (some or all of): those with
/// an upload in flight, and those of which some parts were acknowledged.
fn in_flight(inflight: &InFlight, partly: &[CaptureId], purged: &[CaptureId]) -> Vec<CaptureId> {
    let sending = inflight.among(purged);
    purged
        .iter()
        .filter(|id| sending.contains(id) || partly.contains(id))
        .cloned()
        .collect()
}

/// The SPEC purge receipt. `in_flight` lists purged captures that had
/// already been handed to MQTT (the back-end deletes them on its side).
fn receipt(
    subject: Option<&SubjectId>,
    purged: &[CaptureId],
    in_flight: Vec<CaptureId>,
    now: i64,
) -> Receipt {
    Receipt {
        subject: subject.cloned(),
        purged: purged.len() as u64,
        in_flight,
        purged_at: now,
        all: subject.is_none().then_some(true),
        consents_remaining: None,
    }
}

/// A subject id from a request; a bad one is refused as `bad_args`.
pub fn subject_id(s: String) -> Result<SubjectId, ApplyError> {
    SubjectId::new(s).map_err(|e| ApplyError::BadRequest(e.to_string()))
}

/// A daemon's agent over a fresh state directory, for unit tests of the
/// modules that drive it.
#[cfg(test)]
pub(crate) mod testing {
    use super::Agent;

    pub use crate::config::testing::config;

    /// An agent as `facegate run` opens it, over a temporary directory.
    pub fn agent(extra: &str) -> (tempfile::TempDir, Agent) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let agent = crate::daemon::open(config(dir.path(), extra)).expect("open the agent");
        (dir, agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Capture;

    fn capture(id: &str, subject: &str) -> Capture {
        crate::store::testing::capture(id, subject, &[0xff, 0xd8, 0xff, 0xd9])
    }

    /// A purge receipt's `in_flight` names what the back-end may hold: a
    /// capture with an upload in flight (whole or a part), and one of which
    /// some parts were already acknowledged even when nothing of it is in
    /// flight now (e.g. after a restart); not one of which nothing went out.
    #[tokio::test]
    async fn receipts_list_captures_in_flight_or_partly_sent() {
        let (_dir, agent) = testing::agent("");
        let now = crate::clock::now();
        let policy = agent.config().outbox.clone();
        agent
            .db()
            .run(move |s| {
                let batch = ["sent", "flying", "part", "queued"]
                    .iter()
                    .map(|id| capture(id, "S-1"))
                    .collect();
                s.insert_captures(batch, &policy, now)?;
                s.ack_parts(&[("sent".into(), PartNo { index: 0, of: 3 })], now)
            })
            .await
            .unwrap();
        agent.inflight().insert(&Piece::whole("flying".into()));
        agent.inflight().insert(&Piece::part("part".into(), 1, 2));
        let subject = SubjectId::new("S-1").unwrap();
        let r = agent
            .purge(PurgeTarget::Subject(subject.clone()), now, None)
            .await
            .unwrap();
        assert_eq!(r.purged, 4);
        let mut got = r.in_flight.clone();
        got.sort();
        let want: Vec<CaptureId> = vec!["flying".into(), "part".into(), "sent".into()];
        assert_eq!(got, want);
    }

    #[test]
    fn in_flight_counts_captures_and_keeps_each_part() {
        let f = InFlight::default();
        let id = CaptureId::from("big");
        f.insert(&Piece::part(id.clone(), 0, 3));
        f.insert(&Piece::part(id.clone(), 2, 3));
        f.insert(&Piece::part(id.clone(), 1, 4));
        f.insert(&Piece::whole("small".into()));
        assert_eq!(f.len(), 2, "captures, not pieces");
        assert_eq!(f.parts_of(&id, 3), [0, 2]);
        assert_eq!(f.parts_of(&id, 4), [1]);
        assert!(f.remove(&Piece::part(id.clone(), 0, 3)));
        assert!(!f.remove(&Piece::part(id.clone(), 0, 3)));
        assert_eq!(f.among(std::slice::from_ref(&id)), vec![id.clone()]);
        f.remove(&Piece::part(id.clone(), 2, 3));
        f.remove(&Piece::part(id.clone(), 1, 4));
        assert!(f.among(std::slice::from_ref(&id)).is_empty());
        assert_eq!(f.snapshot(), [CaptureId::from("small")]);
    }

    /// Status `uplink.in_flight` counts uploads awaiting their PUBACK: an
    /// acknowledged one whose delete is not recorded yet is still in flight
    /// (not handed over again, listed in purge receipts) but no longer
    /// counts. (Before, acknowledged captures waiting for the delete counted
    /// too, and the value could exceed the window.)
    #[test]
    fn only_uploads_awaiting_their_puback_count_as_awaiting() {
        let f = InFlight::default();
        let big = CaptureId::from("big");
        assert_eq!(f.awaiting(), 0);
        f.insert(&Piece::whole("a".into()));
        f.insert(&Piece::whole("b".into()));
        f.insert(&Piece::part(big.clone(), 0, 2));
        f.insert(&Piece::part(big.clone(), 1, 2));
        assert_eq!((f.awaiting(), f.len()), (4, 3), "pieces awaiting, captures");
        assert!(f.acknowledged(&Piece::whole("a".into())));
        assert!(f.acknowledged(&Piece::part(big.clone(), 1, 2)));
        assert!(!f.acknowledged(&Piece::whole("never".into())));
        assert!(
            !f.acknowledged(&Piece::part(big.clone(), 1, 3)),
            "another split"
        );
        assert_eq!(f.awaiting(), 2);
        assert_eq!(f.len(), 3, "still in flight until the delete");
        assert_eq!(f.parts_of(&big, 2), [0, 1], "not handed over again");
        assert_eq!(f.among(&["a".into()]), [CaptureId::from("a")]);
        // Acknowledged twice (a broker redelivery of the PUBACK): no change.
        assert!(f.acknowledged(&Piece::whole("a".into())));
        assert_eq!(f.awaiting(), 2);
        // The delete recorded.
        assert!(f.remove(&Piece::whole("a".into())));
        assert_eq!((f.awaiting(), f.len()), (2, 2));
        // Handed over again after a disconnect: awaiting again.
        f.insert(&Piece::part(big.clone(), 1, 2));
        assert_eq!(f.awaiting(), 3);
        for p in [
            Piece::whole("b".into()),
            Piece::part(big.clone(), 0, 2),
            Piece::part(big.clone(), 1, 2),
        ] {
            assert!(f.remove(&p));
        }
        assert!(f.is_empty());
        assert_eq!(f.awaiting(), 0);
    }
}
