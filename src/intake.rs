//! Spool intake: takes complete pairs from the spool, validates and sanitizes
//! them, asks the consent gate, and commits accepted captures to the encrypted
//! outbox in one transaction per batch. Runs on its own thread: it is all file
//! I/O, image decoding and SQLite, none of which should block the async runtime.
//!
//! Intake wakes when a sidecar (the commit marker) is renamed or written
//! into the spool (inotify, [`Wake`]), so a capture is taken as soon as it
//! is complete; a scan every `capture.poll_interval` is the safety net for
//! what events miss (a queue overflow, a spool where inotify cannot watch).
//! A batch holds at most [`MAX_BATCH`] pairs and `capture.max_batch_bytes`
//! of image files.
//!
//! Order of effects for one batch (crash safety, SPEC invariants 2 and 5;
//! ARCHITECTURE I2 consent before storage, I5 accepted means durable):
//! 1. read + sanitize every pair (in parallel, nothing written);
//! 2. gate each capture with the consent rule (`Store::decide`, see
//!    [`crate::gate`]); a dropped pair is removed from the spool and only
//!    then counted, in memory ([`crate::tally`]);
//! 3. commit the accepted ones, the rejected pairs' records and the drop
//!    counts in one transaction (synchronous=FULL);
//! 4. only then remove the accepted and rejected spool files.
//!
//! Steps 2 and 3 run under one store lock with one `now`, so the gate's
//! answer still holds at the insert and the store does not check it again.
//!
//! A crash before 3 leaves the accepted and rejected pairs in the spool, to
//! be processed again; a crash between 3 and 4 re-reads them, and because
//! the capture id is derived from the pair's content the second insert is
//! recognised as a duplicate (a rejection by its mark). A dropped pair
//! leaves the spool before its count is written, so a crash loses the
//! count of the drops not yet written (at most [`crate::tally::FLUSH_EVERY`]
//! of them) and never counts one twice; it loses no capture and no consent
//! decision.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ring::digest;
use serde_json::json;

use crate::agent::Agent;
use crate::clock;
use crate::config::Config;
use crate::config::OutboxConfig;
use crate::gate::{self, Decision, DropReason};
use crate::ids::{CaptureId, SubjectId};
use crate::sanitize::{self, CleanImage};
use crate::shutdown::Shutdown;
use crate::space;
use crate::spool::{self, Pair, Sidecar};
use crate::store::{
    counter, Capture, DropSummary, Inserted, IntakeRecords, Rejection, Store, StoreError,
};
use crate::tally::Dropped;

/// Pairs taken per batch: bounds memory (each image is held once, decoded once)
/// and the length of one transaction. `capture.max_batch_bytes` bounds it
/// in bytes as well.
pub const MAX_BATCH: usize = 64;
/// Wait after a failed commit (disk full, I/O) before trying the same pairs again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// Longest single wait, so a stop is noticed promptly whatever the scan
/// interval.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// Scan interval when inotify cannot watch the spool (the old polling).
const POLL_WITHOUT_EVENTS: Duration = Duration::from_millis(100);

/// What happened to one batch, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    /// Captures committed to the outbox.
    pub accepted: usize,
    /// Seen before a crash: already in the outbox (same capture id), or a
    /// rejection already recorded (same pair).
    pub duplicates: usize,
    /// Refused by the consent gate; never written, counted in memory.
    pub dropped: usize,
    /// Not a valid capture (bad image, bad sidecar, …).
    pub rejected: usize,
    /// Refused because the outbox is full (policy reject_new).
    pub over_quota: usize,
    /// Stray spool files removed.
    pub orphans: usize,
    /// Consented pairs left in the spool: the disk has no room for them
    /// outside the space reserve (`crate::space`).
    pub held_back: usize,
    /// Pairs left in the spool whose consent looks expired on a wall clock
    /// that jumped (ARCHITECTURE I15): not dropped until the clock is trusted.
    pub clock_held: usize,
}

/// A pair that passed validation and sanitization, not yet gated.
struct Prepared {
    /// The spool files, removed after commit.
    pair: Pair,
    /// Parsed commit marker.
    sidecar: Sidecar,
    /// The sanitized image.
    image: CleanImage,
}

/// A validated pair, or the pair with a one-line reason it was rejected.
type Outcome = Result<Prepared, (Pair, String)>;

/// What intake waits for between batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// Nothing waits in the spool: until a sidecar arrives, or this long
    /// at most (the safety-net scan, or drop counts falling due).
    Idle(Duration),
    /// After a failure, or with pairs held back: this long, whatever
    /// arrives (the same pairs would only be held again).
    Retry(Duration),
}

/// Runs intake until shutdown. Called on a dedicated thread. At a clean
/// stop the drop counts still in memory are written.
pub fn run(agent: Arc<Agent>, shutdown: Shutdown) {
    let spool_dir = agent.config().spool_dir.clone();
    let wake = match Wake::watch(&spool_dir) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(spool = %spool_dir.display(), error = %e, "cannot watch the spool (inotify); scanning it every 100ms instead");
            None
        }
    };
    run_paced(&agent, &shutdown, |pause| match pause {
        Pause::Idle(d) => match &wake {
            Some(w) => w.wait(d, &shutdown),
            None => nap(d.min(POLL_WITHOUT_EVENTS), &shutdown),
        },
        Pause::Retry(d) => nap(d, &shutdown),
    });
    match flush_drops(&agent, true) {
        Ok(()) => {}
        Err(e) => {
            tracing::error!(error = %e, "cannot write the drop counts at stop; the counts of the last seconds are lost")
        }
    }
    tracing::info!("intake stopped");
}

/// Sleeps `d`, in steps that notice a stop.
fn nap(d: Duration, shutdown: &Shutdown) {
    let until = Instant::now() + d;
    while !shutdown.is_fired() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(STOP_CHECK));
    }
}

/// The intake loop, waiting with `wait` between scans. The configuration is
/// read again for every batch and every wait, so what a reload applies
/// (`[capture]` limits, `poll_interval`) takes effect at the next scan.
fn run_paced(agent: &Agent, shutdown: &Shutdown, mut wait: impl FnMut(Pause)) {
    tracing::info!(spool = %agent.config().spool_dir.display(), "intake running");
    while !shutdown.is_fired() {
        match process_once(agent, SystemTime::now()) {
            Ok(report) if report == BatchReport::default() => {
                // Nothing waits in the spool: nothing is held back either.
                pause(agent, false);
                wait(Pause::Idle(idle_wait(agent)))
            }
            Ok(report)
                if (report.held_back > 0 || report.clock_held > 0) && report.accepted == 0 =>
            {
                wait(Pause::Retry(RETRY_AFTER_FAILURE))
            }
            Ok(report) => tracing::debug!(?report, "intake batch"),
            Err(IntakeError::Store(StoreError::DiskFull { .. })) => {
                // Even the audit row of a rejected pair does not fit.
                pause(agent, true);
                wait(Pause::Retry(RETRY_AFTER_FAILURE));
            }
            Err(e) => {
                tracing::error!(error = %e, "intake batch failed; the pairs stay in the spool and will be retried");
                wait(Pause::Retry(RETRY_AFTER_FAILURE));
            }
        }
        if let Err(e) = flush_drops(agent, false) {
            tracing::warn!(error = %e, "cannot write the drop counts; kept in memory, tried again");
        }
    }
}

/// How long an idle intake waits at most: the scan interval, or less when
/// drop counts fall due sooner.
fn idle_wait(agent: &Agent) -> Duration {
    let every = agent.config().capture.poll_interval;
    match agent.tally().snapshot().since {
        Some(since) => {
            every.min((since + crate::tally::FLUSH_EVERY).saturating_duration_since(Instant::now()))
        }
        None => every,
    }
}

/// Writes the drop counts held in memory (`force`: whatever their age; else
/// only once due, [`crate::tally::FLUSH_EVERY`]) in one transaction: the
/// counter and one `capture.dropped` summary row.
pub fn flush_drops(agent: &Agent, force: bool) -> Result<(), IntakeError> {
    let pending = agent.tally().snapshot();
    if pending.count == 0 || !(force || pending.due(Instant::now())) {
        return Ok(());
    }
    let cfg = agent.config();
    sync_spool(&cfg.spool_dir);
    let mut store = agent.db().lock();
    let records = IntakeRecords {
        rejections: Vec::new(),
        dropped: Some(summary(&pending)),
    };
    store.insert_captures_with(Vec::new(), &records, &cfg.outbox, clock::now())?;
    // Still under the store lock: the status sees each drop exactly once.
    agent.tally().settle(&pending);
    Ok(())
}

/// The store's record of drops counted in memory.
fn summary(d: &Dropped) -> DropSummary {
    DropSummary {
        count: d.count,
        detail: json!({ "count": d.count, "reasons": d.reasons, "cameras": d.cameras }),
    }
}

/// Makes the removals of dropped pairs durable before their counts are
/// written, so a power loss cannot bring back a pair already counted. A
/// no-op on tmpfs (the default spool); a failure is only logged (the worst
/// case is a drop counted twice after a power loss).
fn sync_spool(dir: &Path) {
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(spool = %dir.display(), error = %e, "cannot sync the spool directory");
    }
}

/// Errors that stop a batch from being committed (the pairs stay in the spool).
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The spool directory itself could not be read.
    #[error("{0}")]
    Spool(#[from] spool::SpoolError),
    /// The outbox could not be written.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// The spool directory could not be watched.
    #[error("cannot watch the spool directory: {0}")]
    Watch(#[from] ::notify::Error),
}

/// Wakes intake when a sidecar arrives in the spool: inotify's
/// `IN_MOVED_TO` (the camera's rename, SPEC) or `IN_CLOSE_WRITE` (a
/// sidecar written in place) of a `*.json`, or a queue overflow (then a
/// scan finds what the lost events named).
pub struct Wake {
    /// Keeps the watch alive.
    _watcher: ::notify::INotifyWatcher,
    /// The watcher's events.
    events: mpsc::Receiver<::notify::Result<::notify::Event>>,
}

impl Wake {
    /// Watches `dir` (not recursively).
    pub fn watch(dir: &Path) -> Result<Wake, IntakeError> {
        use ::notify::Watcher;
        let (tx, events) = mpsc::channel();
        let mut watcher = ::notify::INotifyWatcher::new(tx, ::notify::Config::default())?;
        watcher.watch(dir, ::notify::RecursiveMode::NonRecursive)?;
        Ok(Wake {
            _watcher: watcher,
            events,
        })
    }

    /// Waits until a sidecar arrives, `max` has passed or a stop is asked.
    /// Events already queued behind the first one are taken with it, so a
    /// burst makes one scan.
    pub fn wait(&self, max: Duration, shutdown: &Shutdown) {
        let until = Instant::now() + max;
        while !shutdown.is_fired() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.events.recv_timeout(left.min(STOP_CHECK)) {
                Ok(event) if wakes(&event) => {
                    while self.events.try_recv().is_ok() {}
                    return;
                }
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The watcher is gone: fall back to the scan interval.
                    nap(left, shutdown);
                    return;
                }
            }
        }
    }
}

/// Whether an event may mean a new complete pair: a `*.json` renamed in or
/// closed after writing, or anything asking for a rescan (overflow, error).
fn wakes(event: &::notify::Result<::notify::Event>) -> bool {
    use ::notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    let event = match event {
        Ok(e) => e,
        Err(_) => return true,
    };
    if event.need_rescan() {
        return true;
    }
    let relevant = matches!(
        event.kind,
        EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    );
    relevant && event.paths.iter().any(|p| is_sidecar(p))
}

fn is_sidecar(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
}

/// The pairs of one batch: in the order scanned, as long as their image
/// files add up to `max_bytes` (the first one always goes).
fn within_bytes(ready: Vec<Pair>, max_bytes: u64) -> Vec<Pair> {
    let mut total = 0u64;
    let mut out = Vec::with_capacity(ready.len());
    for pair in ready {
        total = total.saturating_add(pair.bytes);
        if !out.is_empty() && total > max_bytes {
            break;
        }
        out.push(pair);
    }
    out
}

/// One scan of the spool and one batch through the pipeline.
pub fn process_once(agent: &Agent, wall: SystemTime) -> Result<BatchReport, IntakeError> {
    let cfg = agent.config();
    // Every incomplete entry is listed (grace zero); whether one is old
    // enough to go is decided below by how long this process has seen it.
    let scan = spool::scan(&cfg.spool_dir, wall, Duration::ZERO, MAX_BATCH)?;
    let mut report = BatchReport::default();
    let now = clock::now();

    // An entry is old enough to go when the time the device has seen it,
    // by the monotonic clock, reaches the grace period (not by its mtime
    // against the wall clock), and never for age while the wall clock is
    // suspect: a wall-clock step must not make a file that is still being
    // written look old (ARCHITECTURE I15).
    let held = agent.clock().suspect().is_some();
    let aged: Vec<&std::path::Path> = scan
        .orphans
        .iter()
        .filter(|o| o.reason.by_age())
        .map(|o| o.path.as_path())
        .collect();
    let ages = agent.clock().seen_for(&aged);
    let young = |o: &spool::Orphan| {
        o.reason.by_age()
            && (held
                || aged
                    .iter()
                    .zip(&ages)
                    .any(|(p, age)| *p == o.path.as_path() && *age < cfg.capture.spool_grace))
    };
    let orphans: Vec<&spool::Orphan> = scan.orphans.iter().filter(|o| !young(o)).collect();
    if !orphans.is_empty() {
        let mut store = agent.db().lock();
        for orphan in orphans {
            // Spool names are shown by their tag only (cameras may put subject ids in them).
            let tag = orphan.tag();
            if let Err(e) = spool::remove_orphan(orphan) {
                tracing::warn!(entry = %tag, error = %e, "cannot remove stray spool entry");
                continue;
            }
            tracing::warn!(entry = %tag, reason = %orphan.reason, "removed stray spool entry");
            store.record(
                "spool.orphan_removed",
                None,
                json!({ "entry": tag, "reason": orphan.reason.code() }),
                orphan
                    .reason
                    .is_bad_input()
                    .then_some(counter::REJECTED_BAD_INPUT),
                now,
            )?;
            report.orphans += 1;
        }
    }
    if scan.ready.is_empty() {
        return Ok(report);
    }
    let ready = within_bytes(scan.ready, cfg.capture.max_batch_bytes);

    // 1. Read and sanitize, in parallel; nothing is written yet.
    let results = prepare_all(ready, &cfg);

    // 2 + 3. Gate and commit under one lock, so no revocation slips in between.
    let mut store = agent.db().lock();
    let mut decided: HashMap<SubjectId, Decision> = HashMap::new();
    let mut accepted: Vec<(Pair, Capture)> = Vec::new();
    let mut rejected: Vec<(Pair, String)> = Vec::new();
    let mut rejections: Vec<Rejection> = Vec::new();
    let mut dropped: Vec<(Pair, DropReason, String)> = Vec::new();
    for result in results {
        let prepared = match result {
            Ok(p) => p,
            Err((pair, reason)) => {
                // Recorded once per pair, also when a crash before the
                // spool removal brings the pair back.
                let digest = rejected_digest(&cfg, &pair, &reason);
                let detail = json!({ "pair": pair.name.tag(), "reason": reason });
                rejections.push(Rejection {
                    pair: digest,
                    detail,
                });
                rejected.push((pair, reason));
                continue;
            }
        };
        let subject = prepared.sidecar.subject.clone();
        let decision = match &subject {
            None => gate::decide(None, &[], None, &cfg.trust, &cfg.identity, now),
            Some(s) => match decided.get(s) {
                Some(d) => d.clone(),
                None => {
                    let d = store.decide(s, &cfg.trust, &cfg.identity, now)?;
                    decided.insert(s.clone(), d.clone());
                    d
                }
            },
        };
        match decision {
            Decision::Accept {
                subject,
                consent_id,
            } => {
                let capture = new_capture(
                    &cfg,
                    subject,
                    prepared.sidecar,
                    prepared.image,
                    consent_id,
                    &prepared.pair,
                );
                accepted.push((prepared.pair, capture));
            }
            Decision::Drop(DropReason::Expired) if held => {
                // The consent looks expired only by a wall clock that
                // jumped: the pair waits in the spool (ARCHITECTURE I15).
                report.clock_held += 1;
            }
            Decision::Drop(reason) => {
                dropped.push((prepared.pair, reason, prepared.sidecar.camera));
            }
        }
    }
    // Dropped pairs go now: they never reach persistent storage. Each is
    // counted (in memory) once its files are gone, so a pair that comes
    // back (a failed removal, a crash) was never counted. No per-person
    // trace of someone who did not consent: no subject reference, no file
    // name (ARCHITECTURE I3).
    for (pair, reason, camera) in dropped {
        match spool::remove_pair(&pair) {
            Ok(()) => {
                tracing::info!(reason = reason.code(), "dropped capture without consent");
                agent.tally().add_drop(reason.code(), &camera);
                report.dropped += 1;
            }
            Err(e) => {
                tracing::warn!(pair = %pair.name, error = %e, "cannot remove a dropped spool pair; it is dropped again at the next scan")
            }
        }
    }

    let (mut pairs, mut captures): (Vec<Pair>, Vec<Capture>) = accepted.into_iter().unzip();
    let mut policy = cfg.outbox.clone();
    if !captures.is_empty() {
        // Only as many as there is room for outside the space reserve; the
        // rest stay in the spool (the camera sees it fill up) until space
        // comes back.
        let (fit, room_policy) = room_for(agent, &mut store, &captures, now)?;
        report.held_back = pairs.len() - fit;
        pairs.truncate(fit);
        captures.truncate(fit);
        policy = room_policy;
    }
    // The drops counted so far go with this transaction when there is one
    // anyway (their pairs are gone already).
    let pending = agent.tally().snapshot();
    let folded = !(captures.is_empty() && rejections.is_empty()) && pending.count > 0;
    let records = IntakeRecords {
        rejections,
        dropped: folded.then(|| summary(&pending)),
    };
    if captures.is_empty() && records.is_empty() {
        return Ok(report);
    }
    if folded {
        sync_spool(&cfg.spool_dir);
    }
    // If this fails (disk full), the accepted and rejected pairs stay in
    // the spool for a retry. Same lock and `now` as the gate above: its
    // decisions still hold.
    let (outcomes, new_rejections) =
        match store.insert_captures_with(captures, &records, &policy, now) {
            Err(StoreError::DiskFull { .. }) => {
                pause(agent, true);
                report.held_back += pairs.len();
                return Ok(report);
            }
            r => r?,
        };
    if folded {
        agent.tally().settle(&pending);
    }
    drop(store);
    for ((pair, reason), new) in rejected.iter().zip(new_rejections) {
        if new {
            tracing::warn!(pair = %pair.name, %reason, "rejected spool pair");
            report.rejected += 1;
        } else {
            tracing::warn!(pair = %pair.name, %reason, "rejected spool pair (recorded before a restart)");
            report.duplicates += 1;
        }
    }
    for outcome in &outcomes {
        match outcome {
            Inserted::Accepted => report.accepted += 1,
            Inserted::Duplicate => report.duplicates += 1,
            Inserted::QuotaRejected => report.over_quota += 1,
        }
    }
    let rejected_pairs: Vec<Pair> = rejected.into_iter().map(|(p, _)| p).collect();
    remove_pairs(&rejected_pairs);
    remove_pairs(&pairs);
    if !outcomes.is_empty() {
        agent.outbox_changed().notify_one();
    }
    Ok(report)
}

/// How many of `captures` (a prefix) the disk has room for outside the
/// space reserve ([`space::intake_room`]; none: intake pauses, status says
/// so), and the outbox policy to commit them under: the quota is the
/// configured one capped by the space the file system has left
/// ([`space::effective_quota`]).
fn room_for(
    agent: &Agent,
    store: &mut Store,
    captures: &[Capture],
    now: i64,
) -> Result<(usize, OutboxConfig), IntakeError> {
    let cfg = agent.config();
    let free = match space::free_bytes(&cfg.state_dir) {
        Ok(free) => free,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the free space of state_dir; committing anyway");
            pause(agent, false);
            return Ok((captures.len(), cfg.outbox.clone()));
        }
    };
    let (reserve, held) = (cfg.storage.reserve_bytes, store.reserve_held());
    let sizes = captures.iter().map(|c| c.image.len() as u64);
    let fit = space::fitting(free, reserve, held, sizes);
    pause(agent, fit == 0);
    let used = store.outbox_stats(now)?.bytes;
    let mut policy = cfg.outbox.clone();
    policy.quota_bytes = space::effective_quota(policy.quota_bytes, used, free, reserve, held);
    Ok((fit, policy))
}

/// Records whether intake holds pairs back for lack of space, with a log
/// line when that changes.
fn pause(agent: &Agent, paused: bool) {
    if agent.pressure().set_intake_paused(paused) {
        if paused {
            tracing::warn!("disk full: intake paused, captures stay in the spool until space comes back (status storage.intake)");
        } else {
            tracing::info!("disk space back: intake resumes");
        }
    }
}

/// Reads and sanitizes every pair, using all cores.
fn prepare_all(pairs: Vec<Pair>, cfg: &Config) -> Vec<Outcome> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(pairs.len().max(1));
    if workers <= 1 || pairs.len() < 2 {
        return pairs.into_iter().map(|p| prepare(p, cfg)).collect();
    }
    let mut slots: Vec<Vec<(usize, Pair)>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, p) in pairs.into_iter().enumerate() {
        slots[i % workers].push((i, p));
    }
    let mut out: Vec<(usize, Outcome)> = std::thread::scope(|scope| {
        let handles: Vec<_> = slots
            .into_iter()
            .map(|slot| {
                scope.spawn(move || {
                    slot.into_iter()
                        .map(|(i, p)| (i, prepare(p, cfg)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Validates one pair; on failure returns the pair with a one-line reason.
fn prepare(pair: Pair, cfg: &Config) -> Outcome {
    let sidecar = match spool::read_sidecar(&pair.sidecar) {
        Ok(s) => s,
        Err(e) => return Err((pair, e.to_string())),
    };
    let raw = match spool::read_image(&pair.image, cfg.capture.max_file_bytes) {
        Ok(r) => r,
        Err(e) => return Err((pair, e.to_string())),
    };
    let image = match sanitize::sanitize(&raw, &cfg.capture) {
        Ok(i) => i,
        Err(e) => {
            let reason = format!("image: {e}");
            return Err((pair, reason));
        }
    };
    if pair.declared != image.content_type {
        let reason = format!(
            "image: content is {} but the file name says {}",
            image.content_type, pair.declared
        );
        return Err((pair, reason));
    }
    Ok(Prepared {
        pair,
        sidecar,
        image,
    })
}

/// A digest of a rejected pair as it lies in the spool: its name, the
/// reason, and the bytes of its sidecar and image (each read up to
/// `capture.max_file_bytes`; an unreadable file adds only its error kind).
/// The same pair read again after a crash gives the same digest
/// (`Store::insert_captures_with` records its rejection once).
fn rejected_digest(cfg: &Config, pair: &Pair, reason: &str) -> [u8; 32] {
    use std::io::Read;
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [
        cfg.identity.site_id.as_bytes(),
        cfg.identity.device_id.as_bytes(),
        pair.name.as_str().as_bytes(),
        reason.as_bytes(),
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let limit = cfg.capture.max_file_bytes;
    for path in [&pair.sidecar, &pair.image] {
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f.take(limit),
            Err(e) => {
                ctx.update(format!("unreadable:{:?}", e.kind()).as_bytes());
                continue;
            }
        };
        let mut buf = [0u8; 8192];
        let mut total = 0u64;
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    ctx.update(&buf[..n]);
                    total += n as u64;
                }
                Err(e) => {
                    ctx.update(format!("unreadable:{:?}", e.kind()).as_bytes());
                    break;
                }
            }
        }
        ctx.update(&total.to_be_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Builds the outbox record of an accepted capture of `subject`. The capture
/// id is derived from the pair's content, so re-reading the same pair after a
/// crash yields the same id (no duplicate).
fn new_capture(
    cfg: &Config,
    subject: SubjectId,
    sidecar: Sidecar,
    image: CleanImage,
    consent_id: String,
    pair: &Pair,
) -> Capture {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [
        cfg.identity.site_id.as_bytes(),
        cfg.identity.device_id.as_bytes(),
        pair.name.as_str().as_bytes(),
        subject.as_str().as_bytes(),
        sidecar.camera.as_bytes(),
        &sidecar.captured_at.to_be_bytes(),
        &image.sha256,
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ctx.finish().as_ref());
    let capture_id = CaptureId::derive(sidecar.captured_at, &digest);
    Capture {
        capture_id,
        subject,
        consent_id,
        captured_at: sidecar.captured_at,
        camera: sidecar.camera,
        content_type: image.content_type.mime().to_string(),
        sha256: image.sha256,
        image: image.bytes,
    }
}

fn remove_pairs(pairs: &[Pair]) {
    for pair in pairs {
        if let Err(e) = spool::remove_pair(pair) {
            tracing::warn!(pair = %pair.name, error = %e, "cannot remove spool pair");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::testing;
    use crate::shutdown::{self, Reason};

    /// A small real PNG.
    fn png() -> Vec<u8> {
        let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// A drop leaves the spool at once and is counted in memory, written
    /// with the next batch transaction or once due (or at a stop). A crash
    /// before the removal (the pair back, the memory gone) counts it once;
    /// after the removal it may lose the count, never count it twice.
    #[test]
    fn a_drop_is_counted_in_memory_and_written_once() {
        let (dir, agent) = testing::agent("");
        let spool = agent.config().spool_dir.clone();
        std::fs::create_dir_all(&spool).unwrap();
        let png = png();
        let put = |name: &str, subject: &str| {
            std::fs::write(spool.join(format!("{name}.png")), &png).unwrap();
            let sidecar = format!(
                r#"{{"subject":"{subject}","captured_at":"2026-11-30T10:00:00Z","camera":"cam-1"}}"#
            );
            std::fs::write(spool.join(format!("{name}.json")), sidecar).unwrap();
        };
        let stored = |agent: &Agent| {
            let mut store = agent.db().lock();
            let dropped = store
                .counters()
                .unwrap()
                .get(counter::DROPPED_NO_CONSENT)
                .copied()
                .unwrap_or(0);
            let rows = store.audit_tail(100).unwrap();
            let audited: Vec<_> = rows
                .iter()
                .filter(|e| e.kind == "capture.dropped")
                .map(|e| e.detail.clone())
                .collect();
            (dropped, audited)
        };
        put("p1", "S-none");
        put("p2", "S-other");
        let r = process_once(&agent, SystemTime::now()).unwrap();
        assert_eq!((r.dropped, r.duplicates), (2, 0));
        assert!(!spool.join("p1.png").exists(), "removed at once");
        assert_eq!(agent.tally().pending(), 2);
        assert_eq!(stored(&agent).0, 0, "no write of their own");
        // Not due yet: nothing written.
        flush_drops(&agent, false).unwrap();
        assert_eq!(stored(&agent).0, 0);
        flush_drops(&agent, true).unwrap();
        let (n, rows) = stored(&agent);
        assert_eq!((n, agent.tally().pending()), (2, 0));
        assert_eq!(rows.len(), 1, "one summary row");
        assert_eq!(rows[0]["count"], 2);
        assert_eq!(rows[0]["reasons"]["no_consent"], 2);
        assert_eq!(rows[0]["cameras"]["cam-1"], 2);
        assert!(!rows[0].to_string().contains("S-none"), "no subject");

        // The crash before the removal: the pair is still in the spool and
        // the memory is gone (a new process on the same store).
        put("p3", "S-none");
        drop(agent);
        let cfg = testing::config(dir.path(), "");
        let agent = crate::daemon::open(cfg).unwrap();
        let r = process_once(&agent, SystemTime::now()).unwrap();
        assert_eq!(r.dropped, 1);
        flush_drops(&agent, true).unwrap();
        assert_eq!(stored(&agent).0, 3, "counted once");
        assert!(agent.db().lock().audit_verify().unwrap().ok);
    }

    /// Drop counts ride along with the next batch that commits anyway (a
    /// rejection here), in its transaction.
    #[test]
    fn drop_counts_are_written_with_the_next_batch() {
        let (_dir, agent) = testing::agent("");
        let spool = agent.config().spool_dir.clone();
        std::fs::create_dir_all(&spool).unwrap();
        let sidecar =
            r#"{"subject":"S-none","captured_at":"2026-11-30T10:00:00Z","camera":"cam-1"}"#;
        std::fs::write(spool.join("d1.png"), png()).unwrap();
        std::fs::write(spool.join("d1.json"), sidecar).unwrap();
        let r = process_once(&agent, SystemTime::now()).unwrap();
        assert_eq!(r.dropped, 1);
        std::fs::write(spool.join("r1.png"), b"not an image").unwrap();
        std::fs::write(spool.join("r1.json"), sidecar).unwrap();
        let r = process_once(&agent, SystemTime::now()).unwrap();
        assert_eq!(r.rejected, 1);
        assert_eq!(agent.tally().pending(), 0);
        let counters = agent.db().lock().counters().unwrap();
        assert_eq!(counters[counter::DROPPED_NO_CONSENT], 1);
        assert_eq!(counters[counter::REJECTED_BAD_INPUT], 1);
    }

    /// A batch takes pairs up to `capture.max_batch_bytes` of image files
    /// (at least one); the rest wait for the next.
    #[test]
    fn a_batch_is_bounded_in_bytes() {
        let pair = |name: &str, bytes: u64| Pair {
            name: name.into(),
            image: format!("{name}.png").into(),
            sidecar: format!("{name}.json").into(),
            declared: sanitize::ContentType::Png,
            bytes,
        };
        let names = |v: Vec<Pair>| {
            v.into_iter()
                .map(|p| p.name.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        let ready = || vec![pair("a", 40), pair("b", 40), pair("c", 40)];
        assert_eq!(names(within_bytes(ready(), 100)), ["a", "b"]);
        assert_eq!(names(within_bytes(ready(), 120)), ["a", "b", "c"]);
        assert_eq!(names(within_bytes(ready(), 10)), ["a"], "one always goes");
    }

    /// A rejection (bad input) commits before its pair leaves the spool. A
    /// crash in between brings the same pair back: it is rejected again but
    /// not counted or audited again. (Before, it counted twice.)
    #[test]
    fn a_rejection_is_counted_once_when_a_crash_comes_before_the_spool_removal() {
        let (_dir, agent) = testing::agent("");
        let spool = agent.config().spool_dir.clone();
        std::fs::create_dir_all(&spool).unwrap();
        let sidecar = br#"{"subject":"S-1","captured_at":"2026-11-30T10:00:00Z","camera":"cam-1"}"#;
        let put = |name: &str, image: &[u8], sidecar: &[u8]| {
            std::fs::write(spool.join(format!("{name}.png")), image).unwrap();
            std::fs::write(spool.join(format!("{name}.json")), sidecar).unwrap();
        };
        let counted = || {
            let mut store = agent.db().lock();
            let rejected = store.counters().unwrap()[counter::REJECTED_BAD_INPUT];
            let rows = store.audit_tail(100).unwrap();
            let audited = rows.iter().filter(|e| e.kind == "capture.rejected").count();
            (rejected, audited)
        };
        put("r1", b"not an image", sidecar);
        put("r2", &png(), b"{not json");
        let r = process_once(&agent, SystemTime::now()).unwrap();
        assert_eq!((r.rejected, r.duplicates), (2, 0));
        assert_eq!(counted(), (2, 2));
        assert!(!spool.join("r1.png").exists(), "removed after the commit");
        // The crash: committed, but the files are back as if never removed.
        put("r1", b"not an image", sidecar);
        put("r2", &png(), b"{not json");
        let r = process_once(&agent, SystemTime::now()).unwrap();
        assert_eq!((r.rejected, r.duplicates), (0, 2));
        assert_eq!(counted(), (2, 2), "counted once");
        assert!(!spool.join("r1.png").exists());
        // Another pair, or the same name with other bytes, is another rejection.
        put("r3", b"not an image", sidecar);
        put("r1", b"not an image either", sidecar);
        let r = process_once(&agent, SystemTime::now()).unwrap();
        assert_eq!((r.rejected, r.duplicates), (2, 0));
        assert_eq!(counted(), (4, 4));
    }

    /// On a wall clock that jumped 31 days ahead (not confirmed), a pair
    /// whose consent looks expired only by that clock stays in the spool:
    /// not dropped, not counted (ARCHITECTURE I15). (Before: dropped.)
    #[test]
    fn a_pair_whose_consent_looks_expired_on_a_jumped_clock_waits_in_the_spool() {
        use crate::clock::watch::{Change, Mark};
        use crate::consent::{self, ConsentRequest, TokenLimits};
        let (key, public) = crate::keys::generate().unwrap();
        let extra = format!(
            "[[trust]]\nkid = \"consent-1\"\nrole = \"consent\"\npublic_key = \"{}\"\n[clock]\nntp = \"ignore\"\n",
            crate::keys::public_key_b64(&public)
        );
        let dir = tempfile::tempdir().unwrap();
        let cfg = testing::config(dir.path(), &extra);
        let trusted = clock::now() - 31 * 86_400;
        {
            let agent = crate::daemon::open(cfg.clone()).unwrap();
            let mut store = agent.db().lock();
            // In this boot, the device last trusted a time 31 days back.
            let r = crate::timekeeper::read_clocks();
            let mark = Mark {
                wall: trusted,
                boot: r.boot,
                mono: r.mono,
                high: trusted,
            };
            store.save_clock_mark(&mark).unwrap();
            // A week-long consent valid then.
            let req = ConsentRequest::lobby_upload("S-1", 7 * 86_400);
            let token = consent::sign_consent(&req, "consent-1", &key, trusted).unwrap();
            let limits = TokenLimits::of(&cfg);
            let c = consent::verify_consent(&token, &cfg.trust, &cfg.identity, trusted, limits)
                .unwrap();
            store.add_consent(&c, trusted, None).unwrap();
        }
        let agent = crate::daemon::open(cfg).unwrap();
        let observed = agent.clock().observe(&agent.config());
        assert!(
            matches!(observed.change, Change::Jumped { .. }),
            "{observed:?}"
        );
        let spool = agent.config().spool_dir.clone();
        std::fs::create_dir_all(&spool).unwrap();
        std::fs::write(spool.join("p1.png"), png()).unwrap();
        let sidecar = r#"{"subject":"S-1","captured_at":"2026-11-30T10:00:00Z","camera":"cam-1"}"#;
        std::fs::write(spool.join("p1.json"), sidecar).unwrap();
        let r = process_once(&agent, SystemTime::now()).unwrap();
        assert_eq!((r.clock_held, r.dropped, r.accepted), (1, 0, 0), "{r:?}");
        assert!(spool.join("p1.png").exists() && spool.join("p1.json").exists());
        let counters = agent.db().lock().counters().unwrap();
        assert_eq!(counters[counter::DROPPED_NO_CONSENT], 0);
    }

    #[test]
    fn an_idle_intake_waits_the_poll_interval_of_the_current_config() {
        let (dir, agent) = testing::agent("[capture]\npoll_interval = \"150ms\"\n");
        let faster = testing::config(dir.path(), "[capture]\npoll_interval = \"20ms\"\n");
        let (trigger, shutdown) = shutdown::channel();
        let mut waits = Vec::new();
        run_paced(&agent, &shutdown, |wait| {
            waits.push(wait);
            if waits.len() == 1 {
                // A SIGHUP while intake is idle.
                let plan = agent.reload(faster.clone());
                assert_eq!(plan.applied, ["capture"]);
            } else {
                trigger.fire(Reason::Requested);
            }
        });
        assert_eq!(
            waits,
            [
                Pause::Idle(Duration::from_millis(150)),
                Pause::Idle(Duration::from_millis(20))
            ]
        );
    }
}
