//! `facegate run`: opens the store, starts intake, housekeeping, the uplink and
//! the control socket, and stops them when the [`Shutdown`] fires.
//!
//! The daemon does its local work (intake, gate, outbox, control) whether or not
//! a broker is reachable.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use serde_json::json;

use crate::agent::Agent;
use crate::audit;
use crate::clock::{self, watch::Change};
use crate::config::Config;
use crate::control::{self, ControlError};
use crate::crypto::{self, CryptoError};
use crate::db::Db;
use crate::intake;
use crate::notify;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};
use crate::timekeeper;
use crate::uplink;

/// File name of the device storage key inside the state directory.
pub const STORAGE_KEY_FILE: &str = "storage.key";
/// How often the consent rule is applied to the outbox, retention is enforced
/// and the WAL is truncated after uploads.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);

/// Why the daemon could not start (it never fails once running: errors there
/// are logged and retried).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A directory could not be created or has unsafe permissions.
    #[error("{path}: {message}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The device storage key could not be loaded or created.
    #[error("{0}")]
    Key(#[from] CryptoError),
    /// The database could not be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The control socket could not be bound.
    #[error("{0}")]
    Control(#[from] ControlError),
}

/// Longest a clean shutdown waits for each task before giving up on it
/// (nothing is lost either way: unacknowledged captures stay in the outbox).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs the daemon until `shutdown` fires.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), DaemonError> {
    run_with_reload(config, shutdown, None).await
}

/// Like [`run`], and applies every configuration received on `reloads`
/// (main sends one per SIGHUP, already validated; an invalid file never gets here).
pub async fn run_with_reload(
    config: Config,
    shutdown: Shutdown,
    reloads: Option<mpsc::UnboundedReceiver<Config>>,
) -> Result<(), DaemonError> {
    let agent = Arc::new(open(config)?);
    let cfg = agent.config();

    let listener = control::bind(&cfg.control.socket).await?;
    let control_task = tokio::spawn(control::serve(
        listener,
        cfg.control.socket.clone(),
        agent.clone(),
        shutdown.clone(),
    ));
    let intake_thread = {
        let (agent, shutdown) = (agent.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("intake".into())
            .spawn(move || intake::run(agent, shutdown))
            .map_err(|e| DaemonError::Dir {
                path: cfg.spool_dir.clone(),
                message: format!("cannot start intake: {e}"),
            })?
    };
    let housekeeping_task = tokio::spawn(housekeeping(agent.clone(), shutdown.clone()));
    let uplink_task = tokio::spawn(uplink::run(agent.clone(), shutdown.clone()));
    if let Some(reloads) = reloads {
        tokio::spawn(apply_reloads(agent.clone(), reloads));
    }
    // The store is open and intake runs: tell systemd (Type=notify), and feed
    // its watchdog while the store answers.
    if let Err(e) = notify::ready() {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    if let Some(every) = notify::watchdog_interval() {
        tokio::spawn(watchdog(agent.clone(), every, shutdown.clone()));
    }
    tracing::info!(
        site = %cfg.identity.site_id,
        device = %cfg.identity.device_id,
        state = %cfg.state_dir.display(),
        "facegate running"
    );

    let mut shutdown = shutdown;
    let reason = shutdown.wait().await;
    tracing::info!(?reason, "shutting down");
    let _ = notify::stopping();
    // Intake finishes the batch it is in (commit, then spool removal) and stops;
    // the uplink waits (up to `mqtt.stop_grace`) for the uploads in flight to
    // be acknowledged, says "offline" and disconnects; what is still
    // unacknowledged stays queued.
    let intake = tokio::task::spawn_blocking(move || intake_thread.join());
    // The uplink first waits up to `mqtt.stop_grace` for uploads in flight.
    let uplink_grace = STOP_GRACE + agent.config().mqtt.stop_grace;
    for (name, grace, task) in [
        (
            "intake",
            STOP_GRACE,
            tokio::spawn(async move { drop(intake.await) }),
        ),
        (
            "uplink",
            uplink_grace,
            tokio::spawn(async move { drop(uplink_task.await) }),
        ),
        (
            "housekeeping",
            STOP_GRACE,
            tokio::spawn(async move { drop(housekeeping_task.await) }),
        ),
        (
            "control",
            STOP_GRACE,
            tokio::spawn(async move { drop(control_task.await) }),
        ),
    ] {
        if tokio::time::timeout(grace, task).await.is_err() {
            tracing::warn!(task = name, "did not stop in time; leaving it");
        }
    }
    tracing::info!("facegate stopped");
    Ok(())
}

/// Prepares directories, the storage key and the store: everything `run` needs
/// before it starts tasks.
pub fn open(config: Config) -> Result<Agent, DaemonError> {
    ensure_dir(&config.state_dir, 0o700)?;
    ensure_dir(&config.spool_dir, 0o770)?;
    if let Some(parent) = config.control.socket.parent() {
        ensure_dir(parent, 0o750)?;
    }
    let key = crypto::load_storage_key(config.storage.key_source, &config.state_dir)?;
    let mut store = Store::open(&config.state_dir, key)?;
    // On a full disk the reserve stays short; housekeeping completes it.
    if let Err(e) = store.keep_reserve(config.storage.reserve_bytes) {
        tracing::warn!(error = %e, "cannot write the disk space reserve");
    }
    Ok(Agent::new(Arc::new(config), Db::new(store)?))
}

/// Creates `path` with `mode` if missing; refuses an existing directory that others can write.
fn ensure_dir(path: &Path, mode: u32) -> Result<(), DaemonError> {
    let err = |message: String| DaemonError::Dir {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => Err(err("exists and is not a directory".into())),
        Ok(meta) if meta.permissions().mode() & 0o002 != 0 => Err(err(
            "is world-writable; refusing to keep consent data or captures there".into(),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| err(format!("cannot create: {e}"))),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Applies SIGHUP reloads as they come.
async fn apply_reloads(agent: Arc<Agent>, mut reloads: mpsc::UnboundedReceiver<Config>) {
    while let Some(new) = reloads.recv().await {
        let plan = agent.reload(new);
        if plan.applied.is_empty() && plan.restart_needed.is_empty() {
            tracing::info!("configuration reloaded: nothing changed");
        } else {
            tracing::info!(applied = ?plan.applied, "configuration reloaded");
        }
        if !plan.restart_needed.is_empty() {
            tracing::warn!(
                keys = ?plan.restart_needed,
                "these changes need a restart (systemctl restart facegate); the running values are kept"
            );
        }
    }
}

/// Feeds the systemd watchdog while the store answers.
async fn watchdog(agent: Arc<Agent>, every: Duration, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let now = clock::now();
        match agent.db().run(move |s| s.outbox_stats(now)).await {
            Ok(_) => {
                let _ = notify::watchdog();
            }
            Err(e) => tracing::error!(error = %e, "store unhealthy; not feeding the watchdog"),
        }
    }
}

/// Observes the wall clock (ARCHITECTURE I15): a jump, its end or its
/// confirmation is logged and audited once; the high-water mark is
/// persisted now and then and at every change.
async fn watch_clock(agent: &Agent, cfg: &Config, now: i64) {
    let observed = agent.clock().observe(cfg);
    let threshold = humantime::format_duration(cfg.clock.jump_threshold).to_string();
    let audit = match observed.change {
        Change::None => None,
        Change::Jumped { jump_s } => {
            tracing::warn!(
                jump_s,
                %threshold,
                held = ?timekeeper::HELD,
                "the wall clock jumped; consent expiry, retention, forgetting command ids and spool orphan removal are held until it comes back or NTP or a signed command confirms the new time (status clock)"
            );
            Some((
                audit::kind::CLOCK_JUMPED,
                json!({ "jump_s": jump_s, "threshold": threshold, "held": timekeeper::HELD }),
            ))
        }
        Change::Returned => {
            tracing::info!("the wall clock is back to the expected time; held actions resume");
            Some((audit::kind::CLOCK_TRUSTED, json!({ "by": "returned" })))
        }
        Change::Confirmed { jump_s, by } => {
            tracing::info!(
                jump_s,
                by,
                "the new wall-clock time is confirmed; held actions resume"
            );
            Some((
                audit::kind::CLOCK_TRUSTED,
                json!({ "by": by, "jump_s": jump_s }),
            ))
        }
    };
    let save = observed.save;
    let result = agent
        .db()
        .run(move |s| {
            if let Some(mark) = &save {
                s.save_clock_mark(mark)?;
            }
            if let Some((kind, detail)) = audit {
                s.record(kind, None, detail, None, now)?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot record the clock mark");
    }
}

/// Applies the consent rule to every queued subject (purging the captures of
/// those it refuses: expiry, a removed or replaced trust key, ...), deletes
/// expired consents, enforces retention of the outbox and of the audit log,
/// and truncates the WAL after uploads; with or without a broker
/// (ARCHITECTURE I4, I8). While the wall clock is suspect the expiry sweep,
/// both retentions and forgetting command ids wait (I15).
/// Whether housekeeping gives the database's free pages back now.
/// Uploads delete the oldest captures, so during a drain the free pages sit
/// at the start of the file and the captures still queued at its end:
/// giving pages back then moves every live page past the first free one
/// (the newest captures) into the holes, through the WAL and a checkpoint,
/// and the more is queued the more is moved, under the store lock the
/// hand-over needs. So while the uplink is connected and captures wait to
/// be sent (`connected`, `sendable`: queued and not quarantined), the freed
/// pages are left for later: the next captures reuse them, and once the
/// outbox has drained they are at the end of the file and are cut off
/// without moving anything. Space comes first on a short disk
/// (`short_of_space`: intake paused or deletes failing for a full disk).
fn give_back_now(connected: bool, sendable: u64, short_of_space: bool) -> bool {
    !connected || sendable == 0 || short_of_space
}

async fn housekeeping(agent: Arc<Agent>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tick.tick() => {}
        }
        let cfg = agent.config();
        let now = clock::now();
        // The irreversible time-based actions run only on a trusted clock
        // (ARCHITECTURE I15): `safe` is `None` while a jump is held.
        watch_clock(&agent, &cfg, now).await;
        let safe = agent.clock().safe_now();
        let result = agent
            .db()
            .run(move |s| {
                let (mut purged, mut old) = (Vec::new(), 0);
                if let Some(now) = safe {
                    let swept = s.sweep_consents(&cfg.trust, &cfg.identity, now)?;
                    purged = swept.into_iter().flat_map(|s| s.purged).collect();
                    let aged = s.enforce_retention(now, cfg.outbox.retention)?;
                    old = aged.len();
                    purged.extend(aged);
                    s.forget_commands(now)?;
                }
                // Uploaded captures deleted since the last pass: their
                // pre-delete pages leave the WAL (ARCHITECTURE I4).
                s.truncate_wal_after_deletes()?;
                // The space reserve, written again once a full disk has
                // room (it was released for a revocation, purge or delete).
                s.keep_reserve(cfg.storage.reserve_bytes)?;
                Ok((purged, old))
            })
            .await;
        match result {
            Ok((purged, _)) if purged.is_empty() => {}
            Ok((purged, old)) => {
                // Nothing purged stays decrypted in the uplink, even
                // while the window has no room to look at it.
                agent.shelf().forget(&crate::shelf::Gone::Captures(&purged));
                let no_consent = purged.len() - old;
                tracing::info!(no_consent, old, "housekeeping purged captures")
            }
            Err(e) => tracing::error!(error = %e, "housekeeping failed"),
        }
        // Freed pages back to the file system (after the WAL truncation
        // above, so they hold zeros; ARCHITECTURE I4), unless uploads are
        // streaming ([`give_back_now`]). On a full disk this may fail until
        // space comes back: the next pass tries again.
        // Memory of a burst of large captures back to the system (heap).
        crate::heap::give_back();
        let short_of_space = agent.pressure().intake_paused() || agent.pressure().deletes_failing();
        let connected = agent.connected();
        let now = clock::now();
        let given = agent
            .db()
            .run(move |s| {
                let stats = s.outbox_stats(now)?;
                let sendable = stats.captures.saturating_sub(stats.quarantined);
                if give_back_now(connected, sendable, short_of_space) {
                    s.vacuum_free_pages()
                } else {
                    Ok(0)
                }
            })
            .await;
        match given {
            Ok(0) => {}
            Ok(pages) => tracing::debug!(pages, "database gave free pages back"),
            Err(e) => tracing::debug!(error = %e, "database could not give free pages back yet"),
        }
        // On its own: a chain that does not verify stops only this part.
        let Some(now) = safe else { continue };
        let retention = agent.config().audit.retention;
        match agent.db().run(move |s| s.prune_audit(now, retention)).await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "audit retention deleted old rows"),
            Err(e) => tracing::error!(error = %e, "audit retention failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::give_back_now;

    #[test]
    fn free_pages_wait_while_uploads_stream_unless_space_is_short() {
        // (connected, sendable captures queued, short of space) -> give back now
        let table = [
            ((false, 0, false), true),
            ((false, 6000, false), true),
            ((true, 0, false), true),
            ((true, 1, false), false),
            ((true, 6000, false), false),
            ((true, 6000, true), true),
            ((false, 6000, true), true),
            ((true, 0, true), true),
        ];
        for ((connected, sendable, short), want) in table {
            assert_eq!(
                give_back_now(connected, sendable, short),
                want,
                "{connected} {sendable} {short}"
            );
        }
    }
}
