//! The agent: applies consent and purge operations, whoever asks for them
//! (a site admin over the control socket, a fleet command over MQTT), and builds
//! the status object. Verification happens before this layer; every effect is one
//! store transaction that also writes its audit entry.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::audit::kind;
use crate::clock;
use crate::command::{self, Command};
use crate::config::Config;
use crate::consent::{self, ConsentError};
use crate::db::{Db, DbError};
use crate::ids::{CaptureId, Jti, SubjectId};
use crate::reload;
use crate::store::{AddConsent, CommandStamp, PurgeReason, StoreError};

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
    pub fn code(&self) -> &'static str {
        match self {
            ApplyError::Consent(e) => e.code(),
            ApplyError::Db(DbError::Store(StoreError::Revoked { .. })) => "revoked",
            ApplyError::Db(DbError::Store(StoreError::Replayed { .. })) => "replayed",
            ApplyError::Db(_) => "internal",
            ApplyError::BadRequest(_) => "bad_args",
        }
    }
}

/// Captures handed to MQTT whose PUBACK has not arrived yet. The uplink fills
/// it; purge receipts list the purged ones that are in it (SPEC invariant 4).
#[derive(Debug, Default)]
pub struct InFlight {
    /// Capture ids currently handed to MQTT.
    ids: Mutex<HashSet<CaptureId>>,
}

impl InFlight {
    /// Records that `id` was handed to MQTT.
    pub fn insert(&self, id: &CaptureId) {
        self.lock().insert(id.clone());
    }

    /// Records that `id` was acknowledged or abandoned.
    pub fn remove(&self, id: &CaptureId) -> bool {
        self.lock().remove(id)
    }

    /// Which of `ids` are in flight, in the given order.
    pub fn among(&self, ids: &[CaptureId]) -> Vec<CaptureId> {
        let set = self.lock();
        ids.iter().filter(|id| set.contains(*id)).cloned().collect()
    }

    /// A snapshot of every in-flight id.
    pub fn snapshot(&self) -> Vec<CaptureId> {
        self.lock().iter().cloned().collect()
    }

    /// How many captures are in flight.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<CaptureId>> {
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
    /// Whether the uplink currently holds a broker connection (for status).
    connected: AtomicBool,
    /// Wakes the uplink when the outbox gained captures or the window freed up.
    outbox_changed: Notify,
}

/// The fleet command on whose behalf an effect is applied: the store records
/// its `jti` in the same transaction as the effect, so a replay is refused.
#[derive(Debug, Clone)]
pub struct Via {
    /// The command's `jti`.
    pub jti: Jti,
    /// The command name, for the audit entry.
    pub cmd: String,
    /// The command's `exp`: how long the `jti` must be remembered.
    pub expires_at: i64,
}

impl Via {
    fn stamp(&self) -> CommandStamp<'_> {
        CommandStamp {
            jti: &self.jti,
            cmd: &self.cmd,
            expires_at: self.expires_at,
        }
    }
}

/// What applying one inbound fleet command produced.
#[derive(Debug)]
pub struct CommandOutcome {
    /// The SPEC reply object to publish on the reply topic.
    pub reply: Value,
    /// The command asked for a status message now.
    pub publish_status: bool,
}

impl Agent {
    /// An agent over an opened store.
    pub fn new(config: Arc<Config>, db: Db) -> Self {
        Agent {
            config: RwLock::new(config),
            db,
            inflight: Arc::new(InFlight::default()),
            connected: AtomicBool::new(false),
            outbox_changed: Notify::new(),
        }
    }

    /// The store.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Captures handed to MQTT and not yet acknowledged (the uplink keeps it).
    pub fn inflight(&self) -> &InFlight {
        &self.inflight
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

    /// Verifies one fleet command (signature, role, audience, time, replay) and
    /// applies it. The effect and the command's `jti` commit in one store
    /// transaction, and the broker gets its PUBACK only after that, so a
    /// command takes effect exactly once: if the daemon dies between the commit
    /// and the PUBACK, the broker redelivers the command and it is answered
    /// `replayed`, unless it is the broker's redelivery (`redelivered`: MQTT
    /// DUP flag) of a command whose reply was kept: then that same reply is
    /// published again, so the fleet still gets its receipt.
    pub async fn apply_command(
        &self,
        payload: &[u8],
        redelivered: bool,
        now: i64,
    ) -> CommandOutcome {
        let cfg = self.config();
        let bytes = payload.to_vec();
        let verified = self
            .db
            .run(move |s| {
                let store = std::cell::RefCell::new(s);
                // A store error counts as "seen": refusing is the safe side.
                let seen = |jti: &str| {
                    store
                        .borrow_mut()
                        .command_seen(&Jti::from(jti))
                        .unwrap_or(true)
                };
                Ok(command::verify_command(
                    &bytes,
                    &cfg.trust,
                    &cfg.identity,
                    &cfg.commands,
                    now,
                    &seen,
                ))
            })
            .await;
        let cmd = match verified {
            Err(e) => {
                let reply = command::reply_err(None, None, "internal", &e.to_string());
                return CommandOutcome {
                    reply,
                    publish_status: false,
                };
            }
            Ok(Err(rejected)) if redelivered && rejected.error.code() == "replayed" => {
                if let Some(reply) = self.kept_reply(rejected.jti.clone(), payload).await {
                    tracing::info!(jti = ?rejected.jti, "command redelivered by the broker; its reply is sent again");
                    return CommandOutcome {
                        reply,
                        publish_status: false,
                    };
                }
                return CommandOutcome {
                    reply: rejected.reply(),
                    publish_status: false,
                };
            }
            Ok(Err(rejected)) => {
                tracing::warn!(code = rejected.error.code(), error = %rejected.error, "fleet command refused");
                let detail = json!({ "jti": rejected.jti, "cmd": rejected.cmd, "code": rejected.error.code() });
                let _ = self
                    .db
                    .run(move |s| s.record(kind::COMMAND_REFUSED, None, detail, None, now))
                    .await;
                return CommandOutcome {
                    reply: rejected.reply(),
                    publish_status: false,
                };
            }
            Ok(Ok(cmd)) => cmd,
        };
        let stamp = Via {
            jti: Jti::from(cmd.jti.as_str()),
            cmd: cmd.cmd_name.clone(),
            expires_at: cmd.expires_at,
        };
        let via = Some(stamp.clone());
        let stamp_jti = stamp.jti.clone();
        let mut publish_status = false;
        let result = match cmd.command.clone() {
            Command::ConsentGrant { token } => self.grant(token, now, via).await,
            Command::ConsentRevoke { subject } => {
                async {
                    let subject = subject_id(subject)?;
                    self.revoke(subject, cmd.issued_at, now, via).await
                }
                .await
            }
            Command::Purge(command::PurgeTarget::Subject(s)) => {
                async {
                    let target = PurgeTarget::Subject(subject_id(s)?);
                    self.purge(target, now, via).await
                }
                .await
            }
            Command::Purge(command::PurgeTarget::All) => {
                self.purge(PurgeTarget::All, now, via).await
            }
            Command::Status => {
                publish_status = true;
                let v = stamp;
                match self
                    .db
                    .run(move |s| s.remember_command(&v.stamp(), now))
                    .await
                {
                    Ok(()) => self.status(now).await,
                    Err(e) => Err(e.into()),
                }
            }
        };
        let reply = match result {
            Ok(v) => command::reply_ok(&cmd.jti, &cmd.cmd_name, v),
            Err(e) => {
                tracing::warn!(jti = %cmd.jti, cmd = %cmd.cmd_name, error = %e, "fleet command failed");
                publish_status = false;
                command::reply_err(
                    Some(&cmd.jti),
                    Some(&cmd.cmd_name),
                    e.code(),
                    &e.to_string(),
                )
            }
        };
        let (jti, text) = (stamp_jti, without_subject(&reply).to_string());
        if let Err(e) = self
            .db
            .run(move |s| s.save_command_reply(&jti, &text))
            .await
        {
            tracing::warn!(error = %e, "cannot keep the command reply");
        }
        CommandOutcome {
            reply,
            publish_status,
        }
    }

    /// The reply kept for an applied command, if any, with its subject put
    /// back from the command itself (`payload` passed signature verification
    /// before it could be found `replayed`).
    async fn kept_reply(&self, jti: Option<String>, payload: &[u8]) -> Option<Value> {
        let jti = Jti::from(jti?);
        let kept = self.db.run(move |s| s.command_reply(&jti)).await.ok()??;
        let mut reply: Value = serde_json::from_str(&kept).ok()?;
        if let Some(result) = reply.get_mut("result").and_then(Value::as_object_mut) {
            if result.contains_key("subject") {
                let claims = std::str::from_utf8(payload)
                    .ok()
                    .and_then(crate::jws::peek_claims);
                result.insert("subject".into(), command_subject(claims.as_ref()));
            }
        }
        Some(reply)
    }

    /// Verifies a consent token and stores it.
    pub async fn grant(
        &self,
        token: String,
        now: i64,
        via: Option<Via>,
    ) -> Result<Value, ApplyError> {
        let cfg = self.config();
        let skew = cfg.commands.clock_skew.as_secs() as i64;
        let consent =
            match consent::verify_consent(token.trim(), &cfg.trust, &cfg.identity, now, skew) {
                Ok(c) => c,
                Err(e) => {
                    let code = e.code();
                    self.db
                        .run(move |s| s.audit_consent_refused(None, code, now))
                        .await?;
                    return Err(e.into());
                }
            };
        let c = consent.clone();
        let added = self
            .db
            .run(move |s| s.add_consent(&c, now, via.as_ref().map(Via::stamp).as_ref()))
            .await?;
        self.outbox_changed.notify_one();
        Ok(json!({
            "consent_id": consent.id,
            "subject": consent.subject,
            "expires_at": clock::rfc3339(consent.expires_at),
            "new": matches!(added, AddConsent::Added),
        }))
    }

    /// Invalidates every consent of `subject` issued at or before `before` and
    /// purges all of its captures; returns the purge receipt.
    pub async fn revoke(
        &self,
        subject: SubjectId,
        before: i64,
        now: i64,
        via: Option<Via>,
    ) -> Result<Value, ApplyError> {
        let (s, inflight) = (subject.clone(), self.inflight.clone());
        let (purged, in_flight) = self
            .db
            .run(move |st| {
                let outcome = st.revoke(&s, before, now, via.as_ref().map(Via::stamp).as_ref())?;
                // Taken under the store lock, atomically with the purge.
                let in_flight = inflight.among(&outcome.purged);
                Ok((outcome.purged, in_flight))
            })
            .await?;
        Ok(receipt(Some(&subject), &purged, in_flight, now))
    }

    /// Purges captures (consents stay); returns the purge receipt.
    pub async fn purge(
        &self,
        target: PurgeTarget,
        now: i64,
        via: Option<Via>,
    ) -> Result<Value, ApplyError> {
        let reason = if via.is_some() {
            PurgeReason::Command
        } else {
            PurgeReason::Local
        };
        let subject = match &target {
            PurgeTarget::Subject(s) => Some(s.clone()),
            PurgeTarget::All => None,
        };
        let inflight = self.inflight.clone();
        let (purged, in_flight) = self
            .db
            .run(move |st| {
                let stamp = via.as_ref().map(Via::stamp);
                let ids = match &target {
                    PurgeTarget::Subject(s) => st.purge_subject(s, now, reason, stamp.as_ref())?,
                    PurgeTarget::All => st.purge_all(now, reason, stamp.as_ref())?,
                };
                // Taken under the store lock, atomically with the purge.
                let in_flight = inflight.among(&ids);
                Ok((ids, in_flight))
            })
            .await?;
        Ok(receipt(subject.as_ref(), &purged, in_flight, now))
    }

    /// Every stored consent, without the raw tokens.
    pub async fn list_consents(&self, now: i64) -> Result<Value, ApplyError> {
        let list = self.db.run(|s| s.list_consents()).await?;
        let items: Vec<Value> = list
            .iter()
            .map(|c| {
                json!({
                    "consent_id": c.id,
                    "subject": c.subject,
                    "issuer": c.issuer,
                    "kid": c.kid,
                    "scope": c.scopes.join(" "),
                    "aud": c.audience,
                    "issued_at": clock::rfc3339(c.issued_at),
                    "expires_at": clock::rfc3339(c.expires_at),
                    "active": now < c.expires_at,
                })
            })
            .collect();
        Ok(Value::Array(items))
    }

    /// The SPEC status object.
    pub async fn status(&self, now: i64) -> Result<Value, ApplyError> {
        let (stats, active, counters) = self
            .db
            .run(move |s| {
                Ok((
                    s.outbox_stats(now)?,
                    s.active_consent_count(now)?,
                    s.counters()?,
                ))
            })
            .await?;
        let counter = |k: &str| counters.get(k).copied().unwrap_or(0);
        Ok(json!({
            "v": 1,
            "state": "online",
            "version": VERSION,
            "ts": clock::rfc3339(now),
            "outbox": {
                "captures": stats.captures,
                "bytes": stats.bytes,
                "oldest_age_s": stats.oldest_age_s,
            },
            "consent": { "active": active },
            "counters": {
                "accepted": counter("accepted"),
                "dropped_no_consent": counter("dropped_no_consent"),
                "rejected_bad_input": counter("rejected_bad_input"),
                "uploaded": counter("uploaded"),
                "purged": counter("purged"),
                "rejected_quota": counter("rejected_quota"),
                "upload_retries": counter("upload_retries"),
            },
            "uplink": {
                "connected": self.connected(),
                "in_flight": self.inflight.len(),
            },
        }))
    }

    /// Checks the audit hash chain; the report says whether it is intact.
    pub async fn audit_verify(&self) -> Result<Value, ApplyError> {
        let report = self.db.run(|s| s.audit_verify()).await?;
        Ok(serde_json::to_value(&report).unwrap_or(Value::Null))
    }

    /// The newest `n` audit entries.
    pub async fn audit_tail(&self, n: usize) -> Result<Value, ApplyError> {
        let rows = self.db.run(move |s| s.audit_tail(n)).await?;
        Ok(serde_json::to_value(&rows).unwrap_or(Value::Null))
    }
}

/// The SPEC purge receipt. `in_flight` lists purged captures that had
/// already been handed to MQTT (the back-end deletes them on its side).
fn receipt(
    subject: Option<&SubjectId>,
    purged: &[CaptureId],
    in_flight: Vec<CaptureId>,
    now: i64,
) -> Value {
    let mut r = json!({
        "subject": subject,
        "purged": purged.len(),
        "in_flight": in_flight,
        "purged_at": clock::rfc3339(now),
    });
    if subject.is_none() {
        r["all"] = json!(true);
    }
    r
}

/// A reply as kept in the store: the subject id is left out (`null`), so no
/// subject id outlives a revocation in the command log; it is put back from
/// the command on redelivery ([`command_subject`]).
fn without_subject(reply: &Value) -> Value {
    let mut kept = reply.clone();
    if let Some(result) = kept.get_mut("result").and_then(Value::as_object_mut) {
        if result.get("subject").is_some_and(Value::is_string) {
            result.insert("subject".into(), Value::Null);
        }
    }
    kept
}

/// The subject a command is about: `args.subject`, or the `sub` of the token
/// a `consent.grant` carries; `null` for commands about everyone.
fn command_subject(claims: Option<&serde_json::Map<String, Value>>) -> Value {
    let Some(args) = claims.and_then(|c| c.get("args")) else {
        return Value::Null;
    };
    if let Some(subject) = args.get("subject").filter(|s| s.is_string()) {
        return subject.clone();
    }
    args.get("token")
        .and_then(Value::as_str)
        .and_then(crate::jws::peek_claims)
        .and_then(|t| t.get("sub").cloned())
        .unwrap_or(Value::Null)
}

/// A subject id from a request; a bad one is refused as `bad_args`.
pub fn subject_id(s: String) -> Result<SubjectId, ApplyError> {
    SubjectId::new(s).map_err(|e| ApplyError::BadRequest(e.to_string()))
}

/// A daemon's agent over a fresh state directory, for unit tests of the
/// modules that drive it.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    use super::Agent;

    /// The smallest valid configuration with its directories under `dir`,
    /// followed by `extra` TOML (sections only).
    pub fn config(dir: &Path, extra: &str) -> crate::config::Config {
        let toml = format!(
            r#"site_id = "lobby"
device_id = "term-01"
state_dir = "{d}/state"
spool_dir = "{d}/spool"
[mqtt]
host = "localhost"
ca_file = "ca.pem"
cert_file = "device.pem"
key_file = "device.key"
[[trust]]
kid = "consent-2026"
role = "consent"
public_key = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
{extra}"#,
            d = dir.display()
        );
        crate::config::from_toml_str(&toml, dir).expect("valid test config")
    }

    /// An agent as `facegate run` opens it, over a temporary directory.
    pub fn agent(extra: &str) -> (tempfile::TempDir, Agent) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let agent = crate::daemon::open(config(dir.path(), extra)).expect("open the agent");
        (dir, agent)
    }
}
