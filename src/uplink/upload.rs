//! The outbox side of the uplink: hands queued captures to MQTT as
//! [`super::handover`] decides, whole or in parts ([`crate::protocol::parts`]),
//! deletes them when the broker acknowledged all of them, and records
//! uploads a lost connection cut off.
//!
//! Memory: a whole capture is decrypted when it is chosen for a hand-over,
//! after the store lock is released, and waits on the shelf
//! ([`crate::shelf`], at most one window of captures) until the window has
//! room for it. A capture sent in parts is decrypted once and kept
//! ([`Uploader`]) until every part is acknowledged or it is purged, so its
//! parts do not cost a decryption each. Several are kept at once, so that
//! their parts fill the window, but no more image bytes than the window
//! carries (`window × mqtt.max_packet_size`; always at least one capture,
//! [`room_for_parts`]). Captures in parts beyond that wait (their ids are
//! remembered so they are not decrypted again meanwhile) while whole
//! captures keep flowing past them. At most one window of whole captures
//! (`mqtt.inflight`) plus the room of one hand-over, and the captures in
//! parts, are held decrypted by this module at a time.
//!
//! Which parts of a capture in parts are acknowledged is kept in memory
//! ([`super::progress`]), started from the store when the capture is started
//! in parts and again after each reconnect: a hand-over asks the store only
//! whether the capture is still queued. The [`deleter`] writes each batch of
//! acknowledged uploads (parts, whole captures, captures whose last part
//! came) in one transaction.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::json;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::deletes::{DeleteRetry, Next};
use super::handover::{self, Pieces, Queued};
use super::link::Link;
use super::progress::{Ack, Progress};
use super::state::Handed;
use super::suspect;
use crate::agent::Agent;
use crate::clock;
use crate::config::Config;
use crate::gate::DropReason;
use crate::ids::CaptureId;
use crate::protocol::parts::{self, Split};
use crate::protocol::{Envelope, PartNo, Piece, WIRE_VERSION};
use crate::shelf::{Gone, Prepared, Shelf};
use crate::store::{
    Acked, Capture, OutboxCapture, Pending, PurgeReason, Refusal, Store, StoreError,
};

/// A capture being sent in parts, decrypted once.
struct InParts {
    capture: OutboxCapture,
    /// How many parts it is split into under the current packet limit.
    parts: u32,
}

/// How many queued captures a hand-over looks past (captures in parts that
/// cannot start yet) to find ones that can go now.
const LOOKAHEAD: usize = 64;

/// What the upload side keeps between hand-overs.
#[derive(Default)]
pub struct Uploader {
    inner: Mutex<UploaderInner>,
}

#[derive(Default)]
struct UploaderInner {
    /// The captures being sent in parts, in queue order.
    current: Vec<InParts>,
    /// Captures that need parts too, waiting until one of `current` is done.
    waiting: HashSet<CaptureId>,
    /// Which parts of each of `current` are acknowledged.
    progress: Progress,
}

impl UploaderInner {
    /// Image bytes kept decrypted for parts.
    fn kept_bytes(&self) -> usize {
        self.current.iter().map(|c| c.capture.image.len()).sum()
    }

    /// Lets go of (wipes) the captures in parts that `gone` picks, with
    /// their progress; whether any was let go of.
    fn let_go(&mut self, gone: impl Fn(&Capture) -> bool) -> bool {
        let before = self.current.len();
        let progress = &mut self.progress;
        self.current.retain(|c| {
            let keep = !gone(&c.capture.capture);
            if !keep {
                progress.forget(&c.capture.capture_id);
            }
            keep
        });
        self.current.len() < before
    }
}

/// Whether one more capture of `image_len` bytes may be started in parts
/// while `kept` captures of `kept_bytes` are: as long as everything kept
/// fits in what the window carries (`budget`: `window × max_packet_size`),
/// and always when nothing is kept (a capture larger than the budget goes
/// alone).
pub fn room_for_parts(kept: usize, kept_bytes: usize, image_len: usize, budget: usize) -> bool {
    kept == 0 || kept_bytes.saturating_add(image_len) <= budget
}

impl Uploader {
    /// Nothing in progress.
    pub fn new() -> Uploader {
        Uploader::default()
    }

    /// Whether any capture is kept decrypted for its parts.
    pub fn has_current(&self) -> bool {
        !self.lock().current.is_empty()
    }

    /// The broker acknowledged `piece` (whole capture or part): what it
    /// means for its capture.
    pub fn on_acked(&self, piece: &Piece) -> Ack {
        self.lock().progress.on_acked(piece)
    }

    /// These captures in parts were deleted (every part acknowledged and
    /// written): let go of them.
    pub fn on_deleted(&self, ids: &[CaptureId]) {
        if ids.is_empty() {
            return;
        }
        let mut up = self.lock();
        up.current.retain(|c| !ids.contains(&c.capture.capture_id));
        for id in ids {
            up.progress.forget(id);
        }
        up.waiting.clear();
    }

    /// Lets go of (wipes) the captures in parts that are `gone`: called by
    /// revocations and purges under the store lock, so none stays readable
    /// once their receipt exists (SPEC invariant 4, crate::shelf).
    pub fn forget(&self, gone: &Gone<'_>) {
        let mut up = self.lock();
        if up.let_go(|c| gone.covers(&c.capture_id, &c.subject)) {
            up.waiting.clear();
        }
    }

    /// Registers this uploader as the shelf's parts holder, so revocations
    /// and purges have it let go of its captures ([`Uploader::forget`]).
    pub fn hold_parts_for(self: &Arc<Self>, shelf: &Shelf) {
        let parts = Arc::downgrade(self);
        shelf.set_parts_holder(Box::new(move |gone| {
            if let Some(up) = parts.upgrade() {
                up.forget(gone);
            }
        }));
    }

    /// A new connection: let go of every capture in parts; the next
    /// hand-over reads them again, with their progress from the store
    /// (parts acknowledged but not yet written are still in flight, so the
    /// capture waits until they are).
    pub fn reset(&self) {
        let mut up = self.lock();
        up.current.clear();
        up.waiting.clear();
        up.progress.clear();
    }

    fn lock(&self) -> MutexGuard<'_, UploaderInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Hands as many queued uploads (whole captures or parts) to MQTT as the
/// window allows. Each one is re-checked against the consent gate under the
/// store lock, in the same critical section as the hand-over: a revocation
/// (which takes the same lock) is either fully before it (the capture is
/// gone) or fully after it (the capture is listed as in flight in the
/// receipt). For a capture in parts this holds for every part. A whole
/// capture's envelope is encoded ahead, with no store lock held, and waits
/// on the shelf; the critical section that hands it decides again
/// ([`hand_shelved`]). ARCHITECTURE I7.
pub async fn fill_window(
    agent: &Arc<Agent>,
    link: &Arc<Link>,
    uploader: &Arc<Uploader>,
    topic: &str,
    window: usize,
) {
    if agent.pressure().deletes_failing() {
        // Acknowledged uploads cannot be deleted (disk full): hand nothing
        // new over until they are (see [`deleter`]).
        return;
    }
    // With a full window and a full shelf there is nothing to hand over or
    // prepare, but a capture kept decrypted for its parts is still looked
    // at: purged meanwhile, it is let go of now rather than when the window
    // frees up.
    if room_now(agent, link, window) == 0
        && agent.shelf().len() >= window
        && !uploader.has_current()
    {
        return;
    }
    let (agent, link, uploader, topic) = (
        agent.clone(),
        link.clone(),
        uploader.clone(),
        topic.to_string(),
    );
    // One blocking task for the whole hand-over: each hop between the
    // runtime and a blocking thread is a wake-up, paid per hand-over.
    let run = move || hand_over_whole(&agent, &link, &uploader, &topic, window);
    match tokio::task::spawn_blocking(run).await {
        Ok(Ok(handed)) if handed > 0 => {
            tracing::debug!(n = handed, "uploads handed to MQTT");
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot read the outbox"),
        Err(e) => tracing::error!(error = %e, "the hand-over task failed"),
    }
}

/// How many uploads the window takes now ([`handover::room`]).
fn room_now(agent: &Agent, link: &Link, window: usize) -> usize {
    handover::room(
        link.free_slots(window),
        agent.inflight().unrecorded(),
        window,
    )
}

/// A hand-over from start to end, on a blocking thread, in two critical
/// sections under the store lock with the encoding between them:
///
/// 1. hand over what the shelf holds ready, as far as the window's room
///    goes ([`hand_shelved`]); then hand the parts the room takes and choose
///    whole captures ([`hand_over`]): as many as fill the shelf up to one
///    window, so captures are ready before the window has room for them.
///    They go on the shelf before the lock is let go;
/// 2. with the store lock released (the shelf's held, so a purge waits for
///    it), decrypt the chosen images and encode their envelopes;
/// 3. hand over from the shelf what the room takes now: the PUBACKs that
///    came in since step 1 freed slots ([`hand_shelved`] again).
///
/// Returns how many uploads were handed. What is left on the shelf waits
/// for the next hand-over; a revocation or purge wipes its subject's
/// (crate::shelf).
fn hand_over_whole(
    agent: &Agent,
    link: &Link,
    uploader: &Uploader,
    topic: &str,
    window: usize,
) -> Result<usize, StoreError> {
    let shelf = agent.shelf();
    let (mut handed, spent) = {
        let mut store = agent.db().lock();
        let free = room_now(agent, link, window);
        let (ready, spent) = hand_shelved(&mut store, agent, link, topic, free)?;
        let free = free.saturating_sub(ready);
        // Fill the shelf up to a window, and choose at least what the room
        // takes now.
        let choose = window.saturating_sub(shelf.len()).max(free);
        let (parts, chosen) = hand_over(
            &mut store, agent, link, uploader, topic, free, choose, window,
        )?;
        shelf.lock().extend(chosen);
        (ready + parts, spent)
    };
    // Wiped with no lock held.
    drop(spent);
    let cfg = agent.config();
    for p in shelf.lock().iter_mut().filter(|p| !p.tried) {
        p.encode(cfg.clone());
    }
    let spent = {
        let mut store = agent.db().lock();
        let free = room_now(agent, link, window);
        let (more, spent) = hand_shelved(&mut store, agent, link, topic, free)?;
        handed += more;
        spent
    };
    drop(spent);
    Ok(handed)
}

impl Prepared {
    /// Decrypts the image and encodes the envelope; if the image does not
    /// decrypt, it stays sealed and nothing is encoded.
    fn encode(&mut self, cfg: Arc<Config>) {
        self.tried = true;
        if self.capture.open().is_err() {
            return;
        }
        let payload = envelope(&cfg, self.capture.fields(), &self.consent_id);
        self.payload = Zeroizing::new(payload);
        self.cfg = Some(cfg);
    }

    /// The envelope to hand over quoting `consent_id` under `cfg`: the one
    /// encoded beforehand if it quotes the same consent under the same
    /// configuration, else encoded now.
    fn payload_for(&mut self, cfg: &Arc<Config>, consent_id: &str) -> Vec<u8> {
        let same_cfg = self.cfg.as_ref().is_some_and(|c| Arc::ptr_eq(c, cfg));
        if same_cfg && self.consent_id == consent_id && !self.payload.is_empty() {
            std::mem::take(&mut *self.payload)
        } else {
            envelope(cfg, self.capture.fields(), consent_id)
        }
    }
}

/// Hands encoded whole captures from the shelf to MQTT, at most `free`,
/// under the store lock (the caller's) from start to end, as [`hand_over`]
/// does: a capture no longer queued (a revocation or purge took the lock
/// since it was chosen) is not sent; one whose image did not decrypt is
/// purged (audited, reason `undecryptable`); for the first `free` others,
/// in queue order, the consent rule decides again with this `now`
/// ([`decide`]), and a capture goes only under the consent it allows now
/// (encoded again if that is not the one quoted, or if the configuration
/// was reloaded). So the decision and the hand to rumqttc are still one
/// critical section (SPEC invariants 1 and 4, ARCHITECTURE I7); what
/// happened since the capture was chosen only decides whether its encoding
/// is used. The rest stays on the shelf, but for captures of a subject the
/// rule refused (purged here). Returns how many were handed, and the items
/// spent, to be dropped (their images wiped) once the lock is released.
fn hand_shelved(
    store: &mut Store,
    agent: &Agent,
    link: &Link,
    topic: &str,
    free: usize,
) -> Result<(usize, Vec<Prepared>), StoreError> {
    let mut shelf = agent.shelf().lock();
    if shelf.is_empty() {
        return Ok((0, Vec::new()));
    }
    let cfg = agent.config();
    let now = clock::now();
    if store.consent_log_holds(&cfg.consent, now)? {
        // Out of sync with the site consent log: nothing goes, and nothing
        // is held decrypted while it lasts.
        return Ok((0, std::mem::take(&mut *shelf)));
    }
    if free == 0 {
        return Ok((0, Vec::new()));
    }
    let mut candidates = Vec::with_capacity(free);
    let mut kept = Vec::new();
    let mut spent = Vec::new();
    let mut broken = Vec::new();
    // Asked in one query for every encoded item; only the first `free`
    // still queued are looked at.
    let tried: Vec<CaptureId> = shelf
        .iter()
        .filter(|p| p.tried)
        .map(|p| p.capture.capture_id().clone())
        .collect();
    let queued = store.still_queued(&tried)?;
    for p in std::mem::take(&mut *shelf) {
        if candidates.len() >= free || !p.tried {
            kept.push(p);
        } else if !queued.contains(p.capture.capture_id()) {
            spent.push(p);
        } else if p.capture.is_open() {
            candidates.push(p);
        } else {
            broken.push(p.capture.capture_id().clone());
            spent.push(p);
        }
    }
    store.purge_undecryptable(&broken)?;
    let queued: Vec<Queued<'_>> = candidates
        .iter()
        .map(|p| Queued {
            capture_id: p.capture.capture_id(),
            subject: p.subject(),
            pieces: Pieces::Whole,
        })
        .collect();
    let plan = decide(store, agent, &queued, queued.len(), now)?;
    let mut handed = vec![false; candidates.len()];
    for upload in &plan.upload {
        let p = &mut candidates[upload.index];
        let payload = p.payload_for(&cfg, &upload.consent_id);
        let piece = Piece::whole(p.capture.capture_id().clone());
        agent.inflight().insert(&piece);
        if !link.hand(topic, payload, false, Handed::Upload(piece.clone())) {
            agent.inflight().remove(&piece);
            break;
        }
        handed[upload.index] = true;
    }
    let purged = |p: &Prepared| plan.purge.iter().any(|x| &x.subject == p.subject());
    let n = handed.iter().filter(|h| **h).count();
    // Back on the shelf in queue order (the candidates came first): all but
    // what was handed and what the rule refused.
    let rest = candidates
        .into_iter()
        .zip(handed)
        .chain(kept.into_iter().map(|p| (p, false)));
    for (p, was_handed) in rest {
        if was_handed || purged(&p) {
            spent.push(p);
        } else {
            shelf.push(p);
        }
    }
    Ok((n, spent))
}

/// The consent rule (crate::gate) on what the store holds now, one decision
/// per subject of `queued`, and the plan it gives (`handover::plan`, `free`
/// uploads at most); the subjects it refuses are purged here. The caller
/// holds the store lock throughout, so nothing changes in between. While the
/// wall clock is suspect, expiry deletes nothing (ARCHITECTURE I15): those
/// captures wait, neither sent nor purged.
fn decide(
    store: &mut Store,
    agent: &Agent,
    queued: &[Queued<'_>],
    free: usize,
    now: i64,
) -> Result<handover::Plan, StoreError> {
    let cfg = agent.config();
    let mut decisions = HashMap::new();
    for subject in handover::subjects(queued) {
        let decision = store.decide(&subject, &cfg.trust, &cfg.identity, now)?;
        decisions.insert(subject, decision);
    }
    let mut plan = handover::plan(queued, &decisions, free);
    if agent.clock().suspect().is_some() {
        plan.purge.retain(|p| p.reason != DropReason::Expired);
    }
    for purge in &plan.purge {
        // Consent ended since intake (expiry, key withdrawn): never send, and
        // do not keep what may no longer be kept.
        tracing::info!(
            reason = purge.reason.code(),
            "consent gone; purging the subject's queued captures instead of uploading"
        );
        let why = PurgeReason::from(purge.reason);
        store.purge_subject(&purge.subject, now, why, None)?;
    }
    Ok(plan)
}

/// Where a queued entry of one hand-over comes from.
#[derive(Clone, Copy)]
enum Source {
    /// This capture in parts kept by the [`Uploader`].
    Current(usize),
    /// This capture of the batch read from the outbox.
    Batch(usize),
}

/// The parts of a capture split into `of` that are neither acknowledged (of
/// that split) nor in flight, in order.
fn todo(of: u32, acked: &[PartNo], in_flight: &[u32]) -> Vec<u32> {
    (0..of)
        .filter(|i| !in_flight.contains(i))
        .filter(|i| !acked.iter().any(|p| p.of == of && p.index == *i))
        .collect()
}

/// One hand-over, under the store lock from start to end: see where the
/// captures in parts stand, read the queued captures neither in flight nor
/// on the shelf, ask the consent rule once per subject, and apply the plan
/// for up to `choose` uploads: purge refused subjects, hand the parts it
/// allows to MQTT (at most `free`, the window's room), and return how many
/// were handed and the whole captures it allows, to be put on the shelf,
/// encoded outside the lock and handed by [`hand_shelved`].
#[allow(clippy::too_many_arguments)]
fn hand_over(
    store: &mut Store,
    agent: &Agent,
    link: &Link,
    uploader: &Uploader,
    topic: &str,
    free: usize,
    choose: usize,
    window: usize,
) -> Result<(usize, Vec<Prepared>), StoreError> {
    let cfg = agent.config();
    let now = clock::now();
    // The connection's limit: `[mqtt] max_packet_size`, lowered by the
    // broker's MQTT 5 Maximum Packet Size (and room for MQTT 5's header).
    let max = link.split_limit();
    let budget = window.saturating_mul(max);
    let mut up = uploader.lock();
    // Split under another limit (a broker that announces a different one
    // since): split again; parts acknowledged of the old split do not count.
    let before = up.current.len();
    let mut resplit = Vec::new();
    up.current.retain(|cur| {
        let c = &cur.capture.capture;
        let same = parts::split(&header(&cfg, c, ""), c.image.len(), topic.len(), max).ok()
            == Some(Split::Parts(cur.parts));
        if !same {
            resplit.push(c.capture_id.clone());
        }
        same
    });
    if up.current.len() < before {
        up.waiting.clear();
    }
    for id in &resplit {
        up.progress.forget(id);
    }
    // The captures in parts: still queued, and which parts are left (in
    // memory: the store is asked only whether the capture is still queued).
    let mut kept = Vec::with_capacity(up.current.len());
    let mut current_todos = Vec::with_capacity(up.current.len());
    let mut done = Vec::new();
    let mut gone = 0;
    for cur in std::mem::take(&mut up.current) {
        let id = cur.capture.capture_id.clone();
        if !store.is_queued(&id)? {
            gone += 1; // uploaded, purged or quarantined
            up.progress.forget(&id);
            continue;
        }
        if !up.progress.follows(&id, cur.parts) {
            let acked = store.part_progress(&id)?.unwrap_or_default();
            up.progress.start(&id, cur.parts, &acked);
        }
        let in_flight = agent.inflight().parts_of(&id, cur.parts);
        let todo = up
            .progress
            .todo(&id, &in_flight)
            .unwrap_or_else(|| todo(cur.parts, &[], &in_flight));
        if todo.is_empty() && in_flight.is_empty() {
            // Every part acknowledged, the delete not done (a crash in
            // between): finish it. ARCHITECTURE I12.
            done.push(id);
            continue;
        }
        current_todos.push(todo);
        kept.push(cur);
    }
    if !done.is_empty() {
        store.complete_parts(&done, now)?;
        for id in &done {
            up.progress.forget(id);
        }
    }
    let finished_some = gone > 0 || !done.is_empty();
    up.current = kept;
    if finished_some {
        // Room for the captures that waited: look at them again.
        up.waiting.clear();
    }
    // Site consent log (SPEC): while it is required and the device is out
    // of sync, nothing is handed over; captures wait, encrypted.
    if store.consent_log_holds(&cfg.consent, now)? {
        return Ok((0, Vec::new()));
    }
    // The rest of the queue: not in flight, not a capture in parts, not the
    // captures waiting for room.
    let busy: usize = current_todos.iter().map(Vec::len).sum();
    let room = choose.saturating_sub(busy);
    let mut batch = Vec::new();
    if room > 0 {
        let mut exclude = agent.inflight().snapshot();
        exclude.extend(agent.shelf().ids());
        exclude.extend(up.current.iter().map(|c| c.capture.capture_id.clone()));
        exclude.extend(up.waiting.iter().cloned());
        // Read only what can go now: captures that surely go whole, and as
        // many that may need parts as the budget takes (a capture's stored
        // size is at least its image's). None is read and decrypted only to
        // wait, and no more than LOOKAHEAD are looked past.
        let whole_up_to = parts::surely_whole_up_to(topic.len(), max) as u64;
        let (mut n, mut bytes) = (up.current.len(), up.kept_bytes());
        let mut read = |size: u64| {
            if size <= whole_up_to {
                return true;
            }
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            let fits = room_for_parts(n, bytes, size, budget);
            if fits {
                n += 1;
                bytes = bytes.saturating_add(size);
            }
            fits
        };
        batch = store.pending_where(room, &exclude, LOOKAHEAD, &mut read)?;
    }
    // Whole or in parts; captures in parts only while they fit the budget.
    let mut sources = Vec::new();
    let mut todos: Vec<Option<(u32, Vec<u32>)>> = Vec::new();
    for (k, (cur, todo)) in up.current.iter().zip(current_todos).enumerate() {
        sources.push(Source::Current(k));
        todos.push(Some((cur.parts, todo)));
    }
    let (mut kept_n, mut kept_bytes) = (up.current.len(), up.kept_bytes());
    let mut started = Vec::new();
    let mut broken = Vec::new();
    for (i, c) in batch.iter_mut().enumerate() {
        let len = c.image_len();
        match parts::split(&header(&cfg, c.fields(), ""), len, topic.len(), max) {
            Ok(Split::Whole) => {
                // Decrypted after the lock is released (`hand_over_whole`).
                sources.push(Source::Batch(i));
                todos.push(None);
            }
            Ok(Split::Parts(n)) if room_for_parts(kept_n, kept_bytes, len, budget) => {
                // Kept decrypted while its parts go: decrypted now.
                if c.open().is_err() {
                    broken.push(c.capture_id().clone());
                    continue;
                }
                let acked = store.part_progress(c.capture_id())?.unwrap_or_default();
                kept_n += 1;
                kept_bytes = kept_bytes.saturating_add(len);
                started.push((i, n, acked.clone()));
                sources.push(Source::Batch(i));
                todos.push(Some((n, todo(n, &acked, &[]))));
            }
            Ok(Split::Parts(_)) => {
                up.waiting.insert(c.capture_id().clone());
            }
            Err(e) => {
                tracing::error!(error = %e, "capture cannot be sent under mqtt.max_packet_size; it stays queued");
                up.waiting.insert(c.capture_id().clone());
            }
        }
    }
    store.purge_undecryptable(&broken)?;
    let captures: Vec<&Capture> = sources
        .iter()
        .filter_map(|src| match src {
            Source::Current(k) => up.current.get(*k).map(|c| &c.capture.capture),
            Source::Batch(i) => batch.get(*i).map(Pending::fields),
        })
        .collect();
    let queued: Vec<Queued<'_>> = captures
        .iter()
        .zip(&todos)
        .map(|(c, todo)| Queued {
            capture_id: &c.capture_id,
            subject: &c.subject,
            pieces: match todo {
                None => Pieces::Whole,
                Some((of, todo)) => Pieces::Parts { of: *of, todo },
            },
        })
        .collect();
    let plan = decide(store, agent, &queued, choose, now)?;
    // Parts are handed now, as far as the room goes (their capture is kept
    // decrypted, each part's envelope is small); whole captures go on the
    // shelf, are encoded after the lock is released and handed under it
    // again (`hand_shelved`).
    let mut handed = 0;
    let mut whole = Vec::new();
    for upload in &plan.upload {
        let c = captures[upload.index];
        let Some(part) = upload.part else {
            if let Source::Batch(i) = sources[upload.index] {
                whole.push((i, upload.consent_id.clone()));
            }
            continue;
        };
        if handed >= free {
            // No room for it now: the next hand-over sends it.
            continue;
        }
        let piece = Piece {
            capture_id: c.capture_id.clone(),
            part: Some(part),
        };
        let payload = part_envelope(&cfg, c, &upload.consent_id, part);
        agent.inflight().insert(&piece);
        if !link.hand(topic, payload, false, Handed::Upload(piece.clone())) {
            agent.inflight().remove(&piece);
            break;
        }
        handed += 1;
    }
    // What is purged is not kept in memory; a capture started in parts is.
    let purged = |c: &Capture| plan.purge.iter().any(|p| p.subject == c.subject);
    let mut freed = up.let_go(purged);
    let mut batch: Vec<Option<Pending>> = batch.into_iter().map(Some).collect();
    let mut new = Vec::with_capacity(started.len());
    for (i, n, acked) in started {
        // Opened above, before it was started.
        let Some(Ok(c)) = batch
            .get_mut(i)
            .and_then(Option::take)
            .map(Pending::into_opened)
        else {
            continue;
        };
        if purged(&c) {
            freed = true;
        } else {
            up.progress.start(&c.capture_id, n, &acked);
            new.push(InParts {
                capture: c,
                parts: n,
            });
        }
    }
    up.current.extend(new);
    if freed || up.current.is_empty() {
        // Room again, or nothing to wait for: the next hand-over looks at
        // them again.
        up.waiting.clear();
    }
    let chosen = whole
        .into_iter()
        .filter_map(|(i, consent_id)| {
            let c = batch.get_mut(i).and_then(Option::take)?;
            Some(Prepared::new(c, consent_id))
        })
        .collect();
    Ok((handed, chosen))
}

/// A capture's envelope fields (SPEC "Upload envelope") quoting
/// `consent_id`, with no image bytes and no part numbers.
fn header(cfg: &Config, c: &Capture, consent_id: &str) -> Envelope {
    Envelope {
        v: WIRE_VERSION,
        capture_id: c.capture_id.to_string(),
        site: cfg.identity.site_id.clone(),
        device: cfg.identity.device_id.clone(),
        subject: c.subject.as_str().to_string(),
        consent_id: consent_id.to_string(),
        captured_at: c.captured_at,
        camera: c.camera.clone(),
        content_type: c.content_type.clone(),
        sha256: c.sha256,
        image: Default::default(),
        part: None,
        parts: None,
    }
}

/// The bytes of a capture's upload envelope (SPEC "Upload envelope"), quoting
/// `consent_id`: the consent that allows the upload now. The image is
/// base64-encoded straight from the decrypted capture into the returned
/// buffer (no intermediate copy of it); the bytes go to rumqttc, which owns
/// them from then on (they are not wiped: rumqttc, rustls and the kernel copy
/// them on the way out and free them without wiping).
pub fn envelope(cfg: &Config, c: &Capture, consent_id: &str) -> Vec<u8> {
    header(cfg, c, consent_id).to_bytes_with(&c.image)
}

/// The bytes of one part's envelope (SPEC "Broker limits and large
/// captures"): every field of the whole envelope (`sha256` of the whole
/// image), `part` and `parts`, and the part's slice of the image, encoded
/// like the whole image in [`envelope`].
pub fn part_envelope(cfg: &Config, c: &Capture, consent_id: &str, part: PartNo) -> Vec<u8> {
    let range = parts::slice(c.image.len(), part.of, part.index);
    let envelope = Envelope {
        part: Some(part.index),
        parts: Some(part.of),
        ..header(cfg, c, consent_id)
    };
    envelope.to_bytes_with(&c.image[range])
}

/// Counts one refusal against `capture_id` (the only capture in flight when
/// the broker closed the connection, `super::suspect`, or one an MQTT 5
/// PUBACK refused), durably, with `why`, and quarantines it once `[mqtt]
/// max_attempts` are counted (audited `capture.quarantined`; ARCHITECTURE
/// I13). The outbox changed: quarantined, it no longer takes its place at
/// the head of the queue.
pub async fn record_refusal(agent: &Arc<Agent>, capture_id: &CaptureId, why: &str) {
    let max = agent.config().mqtt.max_attempts;
    let id = capture_id.clone();
    let (why, why_log) = (why.to_string(), why);
    let now = clock::now();
    let r = agent
        .db()
        .run(move |s| s.count_refusal(&id, |n| suspect::quarantines(n, max), &why, now))
        .await;
    match r {
        Ok(Refusal::NotQueued) => {}
        Ok(Refusal::Counted(attempts)) => tracing::warn!(
            %capture_id,
            attempts,
            max_attempts = max,
            reason = why_log,
            "upload refused by the broker; counted as a refusal"
        ),
        Ok(Refusal::Quarantined(attempts)) => {
            tracing::error!(
                %capture_id,
                attempts,
                "capture quarantined: the broker refused it {attempts} times; the others go on (facegate ctl outbox list / retry)"
            );
            agent.outbox_changed().notify_one();
        }
        Err(e) => tracing::error!(error = %e, "cannot count a refusal"),
    }
}

/// Counts and audits uploads cut off by a lost connection (they stay queued
/// and are sent again after the reconnect).
pub async fn record_interrupted(agent: &Arc<Agent>, reason: &str, n: usize) {
    let detail = json!({ "requeued": n, "reason": reason });
    let now = clock::now();
    let r = agent
        .db()
        .run(move |s| {
            s.record("upload.interrupted", None, detail, None, now)?;
            s.bump("upload_retries", n as u64)
        })
        .await;
    if r.is_err() {
        tracing::error!("cannot record interrupted uploads");
    }
}

/// Deletes acknowledged captures from the outbox, off the upload path: the
/// logic task only queues acknowledged uploads here, so the window refills
/// while the (fsync'd) delete runs. Each batch is everything queued so far,
/// in one transaction: whole captures are deleted; parts are recorded, and
/// a capture is deleted once every part is (ARCHITECTURE I12). Each part
/// also counts in the uploader's in-memory progress ([`Uploader::on_acked`])
/// as it arrives. An upload stays in [`Agent::inflight`] until this is
/// done, so it is never handed over twice.
///
/// A delete that fails (a full disk) keeps the uploads in flight, pauses
/// the hand-over ([`crate::space::Pressure::deletes_failing`], checked by
/// [`fill_window`]) and is tried again with backoff ([`DeleteRetry`]),
/// together with whatever was acknowledged meanwhile, until it commits: no
/// capture is sent again because its delete failed. When the channel closes
/// (shutdown) a failing delete is tried once more; if it still fails the
/// uploads stay queued and are sent again after the restart.
pub async fn deleter(
    agent: Arc<Agent>,
    uploader: Arc<Uploader>,
    mut acked: mpsc::UnboundedReceiver<Piece>,
) {
    let mut retry = DeleteRetry::default();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut open = true;
    let take = |pieces: &mut Vec<Piece>, piece: Piece| {
        uploader.on_acked(&piece);
        pieces.push(piece);
    };
    loop {
        if pieces.is_empty() {
            match acked.recv().await {
                Some(first) => take(&mut pieces, first),
                None => return,
            }
        }
        while let Ok(more) = acked.try_recv() {
            take(&mut pieces, more);
        }
        let r = delete_acked(&agent, &pieces).await;
        let deleted = r.is_ok();
        match retry.on_result(deleted, jitter()) {
            Next::Done { recovered } => {
                if let Ok(acked) = &r {
                    uploader.on_deleted(&acked.completed);
                }
                for piece in pieces.drain(..) {
                    agent.inflight().remove(&piece);
                }
                if recovered {
                    agent.pressure().set_deletes_failing(false);
                    tracing::info!("acknowledged uploads deleted again; uploads resume");
                }
                agent.outbox_changed().notify_one();
            }
            Next::Retry { after, first } => {
                agent.pressure().set_deletes_failing(true);
                let error = r.err().map(|e| e.to_string()).unwrap_or_default();
                if !open {
                    tracing::error!(%error, uploads = pieces.len(), "cannot delete acknowledged uploads at shutdown; they stay queued and are sent again after the restart");
                    for piece in pieces.drain(..) {
                        agent.inflight().remove(&piece);
                    }
                    return;
                }
                if first {
                    tracing::error!(%error, uploads = pieces.len(), "cannot delete acknowledged uploads; they stay in flight and uploads pause until the delete succeeds");
                } else {
                    tracing::debug!(%error, retry_in_ms = after.as_millis() as u64, "deleting acknowledged uploads failed again");
                }
                // Wait, taking what is acknowledged meanwhile; a closed
                // channel (shutdown) ends the wait at once.
                let sleep = tokio::time::sleep(after);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        more = acked.recv() => match more {
                            Some(piece) => take(&mut pieces, piece),
                            None => {
                                open = false;
                                break;
                            }
                        },
                    }
                }
            }
        }
    }
}

/// A uniformly drawn `u32` for the retry's jitter (0 on the theoretical
/// failure: the wait is then half a step).
fn jitter() -> u32 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_le_bytes(b)
}

/// One attempt at deleting (whole captures) and recording (parts) `pieces`,
/// in one transaction.
async fn delete_acked(agent: &Arc<Agent>, pieces: &[Piece]) -> Result<Acked, crate::db::DbError> {
    let now = clock::now();
    let wholes: Vec<CaptureId> = pieces
        .iter()
        .filter(|p| p.part.is_none())
        .map(|p| p.capture_id.clone())
        .collect();
    let parts: Vec<(CaptureId, PartNo)> = pieces
        .iter()
        .filter_map(|p| Some((p.capture_id.clone(), p.part?)))
        .collect();
    // On the second connection: the fsync does not hold the store lock
    // the hand-over takes.
    agent
        .db()
        .run_acks(move |s| s.ack_uploads(&wholes, &parts, now))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parts::publish_packet_size;
    use crate::protocol::Reassembler;

    fn capture(len: usize) -> Capture {
        let image: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        Capture {
            consent_id: "at-intake".into(),
            ..crate::store::testing::capture("cfa369e6-2f2a-8a83-84c8-e32086f564bb", "S-1", &image)
        }
    }

    #[test]
    fn the_parts_a_capture_is_sent_as_fit_and_make_the_capture() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::testing::config(dir.path(), "");
        let topic = "facegate/lobby/term-01/captures";
        for len in [1_000, 97_000, 300_000, 2_000_000] {
            let c = capture(len);
            let max = cfg.mqtt.max_packet_size;
            let split = parts::split(&header(&cfg, &c, ""), len, topic.len(), max).unwrap();
            let messages: Vec<Vec<u8>> = match split {
                Split::Whole => vec![envelope(&cfg, &c, "k-now")],
                Split::Parts(n) => (0..n)
                    .map(|index| part_envelope(&cfg, &c, "k-now", PartNo { index, of: n }))
                    .collect(),
            };
            let mut r = Reassembler::new();
            let mut whole = None;
            for m in &messages {
                assert!(publish_packet_size(topic.len(), m.len()) <= max, "{len}");
                let env = Envelope::from_bytes(m).unwrap();
                assert_eq!(env.consent_id, "k-now", "the consent of the hand-over");
                assert_eq!(env.sha256, c.sha256, "the digest of the whole image");
                whole = r.add(env).unwrap().or(whole);
            }
            assert_eq!(whole.expect("complete").image, *c.image, "{len}");
            assert_eq!(messages.len() > 1, len > 97_000, "{len}");
        }
    }

    #[test]
    fn captures_in_parts_are_kept_while_the_window_carries_them() {
        let budget = 16 * 131_072; // window 16 of 128 KiB
                                   // Nothing kept: always one, even larger than the budget.
        assert!(room_for_parts(0, 0, 10 * budget, budget));
        // Up to the budget, not beyond.
        assert!(room_for_parts(5, 5 * 319_000, 319_000, budget));
        assert!(!room_for_parts(6, 6 * 319_000, 319_000, budget));
        assert!(room_for_parts(1, budget - 10, 10, budget));
        assert!(!room_for_parts(1, budget - 10, 11, budget));
        // Probe mode (window 1): one capture at a time.
        assert!(!room_for_parts(1, 200_000, 200_000, 131_072));
        // No overflow on absurd sizes.
        assert!(!room_for_parts(1, usize::MAX, 1, budget));
    }

    #[test]
    fn todo_leaves_out_acknowledged_parts_of_the_same_split_and_parts_in_flight() {
        let p = |index, of| PartNo { index, of };
        assert_eq!(todo(4, &[], &[]), [0, 1, 2, 3]);
        assert_eq!(todo(4, &[p(0, 4), p(2, 4)], &[1]), [3]);
        assert_eq!(
            todo(4, &[p(0, 5), p(1, 3)], &[]),
            [0, 1, 2, 3],
            "other splits"
        );
        assert!(todo(2, &[p(0, 2)], &[1]).is_empty());
    }

    /// An agent trusting a consent key, holding a consent of `S-1` and one
    /// queued capture of `S-1`; a link connected to a client whose event
    /// loop is never polled (what is handed stays in its channel).
    async fn agent_with_a_queued_capture() -> (
        tempfile::TempDir,
        Arc<Agent>,
        Arc<Link>,
        rumqttc::EventLoop,
        String,
    ) {
        agent_with_a_queued_capture_of(1_000).await
    }

    /// [`agent_with_a_queued_capture`] with a capture of `len` bytes.
    async fn agent_with_a_queued_capture_of(
        len: usize,
    ) -> (
        tempfile::TempDir,
        Arc<Agent>,
        Arc<Link>,
        rumqttc::EventLoop,
        String,
    ) {
        let (key, public) = crate::keys::generate().unwrap();
        let trust = format!(
            "[[trust]]\nkid = \"consent-1\"\nrole = \"consent\"\npublic_key = \"{}\"\n",
            crate::keys::public_key_b64(&public)
        );
        let (dir, agent) = crate::agent::testing::agent(&trust);
        let agent = Arc::new(agent);
        let now = clock::now();
        let req = crate::consent::ConsentRequest::lobby_upload("S-1", 3600);
        let token = crate::consent::sign_consent(&req, "consent-1", &key, now).unwrap();
        let granted = agent.grant(token, now, None).await.unwrap();
        let policy = agent.config().outbox.clone();
        agent
            .db()
            .run(move |s| s.insert_captures(vec![capture(len)], &policy, now))
            .await
            .unwrap();
        let link = Arc::new(Link::new(agent.config().mqtt.max_packet_size));
        let opts = rumqttc::MqttOptions::new("t", "localhost", 1883);
        let (client, el) = rumqttc::AsyncClient::new(opts, 8);
        link.on_connected(super::super::mqtt::Client::V4(client), None);
        (dir, agent, link, el, granted.consent_id.to_string())
    }

    /// The first section of a hand-over, under the store lock: what it
    /// hands (parts); what it chose (whole captures) goes on the shelf.
    fn first_half(agent: &Agent, link: &Link) -> usize {
        let uploader = Uploader::new();
        let mut store = agent.db().lock();
        let (handed, chosen) =
            hand_over(&mut store, agent, link, &uploader, "t", 16, 16, 16).unwrap();
        agent.shelf().lock().extend(chosen);
        handed
    }

    /// The step between the sections: the shelf's captures decrypted and
    /// encoded, no store lock held.
    fn encode_shelf(agent: &Agent) {
        for p in agent.shelf().lock().iter_mut().filter(|p| !p.tried) {
            p.encode(agent.config());
        }
    }

    /// The encoding step and the second section: hands what the shelf
    /// holds, `free` at most.
    fn second_half_with(agent: &Agent, link: &Link, free: usize) -> usize {
        encode_shelf(agent);
        let mut store = agent.db().lock();
        hand_shelved(&mut store, agent, link, "t", free).unwrap().0
    }

    fn second_half(agent: &Agent, link: &Link) -> usize {
        second_half_with(agent, link, 16)
    }

    /// With nothing in between, a whole capture chosen under the lock is
    /// handed under it again, quoting the consent that allows it.
    #[tokio::test]
    async fn a_chosen_capture_is_handed_after_its_envelope_is_encoded() {
        let (_dir, agent, link, _el, consent_id) = agent_with_a_queued_capture().await;
        assert_eq!(first_half(&agent, &link), 0);
        assert_eq!(agent.shelf().len(), 1);
        assert_eq!(agent.shelf().lock()[0].consent_id, consent_id);
        // Not in flight before the second half: a revocation now would not
        // list it (it has not been handed over).
        assert_eq!(agent.inflight().len(), 0);
        assert_eq!(link.free_slots(16), 16);
        assert_eq!(second_half(&agent, &link), 1);
        assert_eq!(agent.inflight().snapshot(), vec![capture(1).capture_id]);
        assert_eq!(link.free_slots(16), 15);
        assert!(agent.shelf().is_empty(), "handed: off the shelf");
    }

    /// A prepared capture stays on the shelf, encoded, while the window has
    /// no room, and goes once it has.
    #[tokio::test]
    async fn a_prepared_capture_waits_on_the_shelf_until_the_window_has_room() {
        let (_dir, agent, link, _el, _) = agent_with_a_queued_capture().await;
        first_half(&agent, &link);
        assert_eq!(second_half_with(&agent, &link, 0), 0);
        assert_eq!(agent.shelf().len(), 1);
        assert!(!agent.shelf().lock()[0].payload.is_empty(), "encoded ahead");
        assert_eq!(agent.inflight().len(), 0);
        assert_eq!(second_half_with(&agent, &link, 1), 1);
        assert!(agent.shelf().is_empty());
        assert_eq!(agent.inflight().len(), 1);
    }

    /// A whole hand-over chooses beyond the window's room, up to a window:
    /// with the window full, the next queued capture is decrypted, encoded
    /// and put on the shelf, not handed; the next hand-over with room hands
    /// it first.
    #[tokio::test]
    async fn a_hand_over_prepares_the_next_captures_while_the_window_is_full() {
        let (_dir, agent, link, _el, _) = agent_with_a_queued_capture().await;
        let policy = agent.config().outbox.clone();
        let more: Vec<Capture> = [
            "5c1f0d3e-0000-4000-8000-000000000002",
            "5c1f0d3e-0000-4000-8000-000000000003",
        ]
        .into_iter()
        .map(|id| Capture {
            capture_id: id.into(),
            ..capture(1_000)
        })
        .collect();
        let now = clock::now();
        agent
            .db()
            .run(move |s| s.insert_captures(more, &policy, now))
            .await
            .unwrap();
        let uploader = Uploader::new();
        // A window of 2: two go, the third is prepared.
        assert_eq!(
            hand_over_whole(&agent, &link, &uploader, "t", 2).unwrap(),
            2
        );
        assert_eq!(agent.inflight().len(), 2);
        assert_eq!(link.free_slots(2), 0);
        assert_eq!(
            hand_over_whole(&agent, &link, &uploader, "t", 2).unwrap(),
            0
        );
        assert_eq!(agent.shelf().len(), 1);
        let prepared = agent.shelf().ids()[0].clone();
        assert!(!agent.inflight().snapshot().contains(&prepared));
        assert!(!agent.shelf().lock()[0].payload.is_empty(), "encoded ahead");
        // Nothing chosen twice: a full window and the shelf hold all three.
        assert_eq!(
            hand_over_whole(&agent, &link, &uploader, "t", 2).unwrap(),
            0
        );
        assert_eq!(agent.shelf().len(), 1);
    }

    /// Damages every queued capture's sealed image (its metadata still
    /// opens).
    fn break_images(agent: &Agent) {
        let store = agent.db().lock();
        let sql = "UPDATE captures SET image = zeroblob(length(image))";
        store.conn().execute(sql, []).unwrap();
    }

    /// The queued capture is gone, and the last audit row says it was
    /// purged as undecryptable.
    fn assert_purged_as_undecryptable(agent: &Agent) {
        let mut store = agent.db().lock();
        assert!(!store.is_queued(&capture(1).capture_id).unwrap());
        let audit = store.audit_tail(10).unwrap();
        let last = audit.last().unwrap();
        assert_eq!(last.kind, crate::audit::kind::CAPTURE_PURGED);
        assert_eq!(last.detail["reason"], "undecryptable");
    }

    /// A whole capture is read under the lock with its image sealed; the
    /// image is decrypted in the encoding step, with no lock held.
    #[tokio::test]
    async fn a_whole_capture_is_decrypted_outside_the_store_lock() {
        let (_dir, agent, link, _el, _) = agent_with_a_queued_capture().await;
        first_half(&agent, &link);
        {
            let shelf = agent.shelf().lock();
            assert_eq!(shelf.len(), 1);
            assert!(!shelf[0].capture.is_open());
            assert!(shelf[0].capture.fields().image.is_empty());
            assert_eq!(shelf[0].capture.image_len(), 1_000);
        }
        encode_shelf(&agent);
        let shelf = agent.shelf().lock();
        assert!(shelf[0].capture.is_open());
        assert_eq!(shelf[0].capture.fields().image, capture(1_000).image);
    }

    /// A capture whose image does not decrypt (its metadata does) is
    /// chosen, fails in the encoding step, and is purged by the second
    /// half, audited as undecryptable, not handed over.
    #[tokio::test]
    async fn a_capture_whose_image_does_not_decrypt_is_purged_not_handed() {
        let (_dir, agent, link, _el, _) = agent_with_a_queued_capture().await;
        break_images(&agent);
        first_half(&agent, &link);
        assert_eq!(agent.shelf().len(), 1, "the metadata opens: chosen");
        assert_eq!(second_half(&agent, &link), 0);
        assert!(agent.shelf().is_empty());
        assert_eq!(agent.inflight().len(), 0);
        assert_eq!(link.free_slots(16), 16);
        assert_purged_as_undecryptable(&agent);
    }

    /// A capture sent in parts is decrypted under the lock (it is kept
    /// decrypted while its parts go); if its image does not decrypt, it is
    /// purged there, and no part is handed over.
    #[tokio::test]
    async fn a_capture_in_parts_whose_image_does_not_decrypt_is_purged_at_once() {
        let len = 3 * 131_072;
        let (_dir, agent, link, _el, _) = agent_with_a_queued_capture_of(len).await;
        assert!(link.split_limit() < len, "sent in parts");
        let handed = first_half(&agent, &link);
        assert_eq!((handed > 1, agent.shelf().len()), (true, 0), "parts handed");
        let (_dir, agent, link, _el, _) = agent_with_a_queued_capture_of(len).await;
        break_images(&agent);
        let handed = first_half(&agent, &link);
        assert_eq!((handed, agent.shelf().len()), (0, 0));
        assert_eq!(agent.inflight().len(), 0);
        assert_purged_as_undecryptable(&agent);
    }

    /// A revocation that takes the store lock between choosing and handing
    /// is fully before the hand-over: the capture is purged, the receipt
    /// does not list it as in flight, its encoded envelope is wiped from the
    /// shelf before the receipt exists and is not handed over (SPEC
    /// invariant 4, ARCHITECTURE I7).
    #[tokio::test]
    async fn a_revocation_between_choosing_and_handing_stops_the_capture() {
        let (_dir, agent, link, _el, _) = agent_with_a_queued_capture().await;
        first_half(&agent, &link);
        encode_shelf(&agent);
        assert_eq!(agent.shelf().len(), 1);
        let subject = crate::ids::SubjectId::new("S-1").unwrap();
        let receipt = agent.revoke_now(subject, clock::now()).await.unwrap();
        assert_eq!(receipt.purged, 1);
        assert!(receipt.in_flight.is_empty());
        assert!(agent.shelf().is_empty(), "wiped with the purge");
        assert_eq!(second_half(&agent, &link), 0);
        assert_eq!(agent.inflight().len(), 0);
        assert_eq!(link.free_slots(16), 16);
    }

    /// A revocation of another subject leaves the shelf's captures alone.
    #[tokio::test]
    async fn a_revocation_wipes_only_its_subjects_prepared_captures() {
        let (_dir, agent, link, _el, _) = agent_with_a_queued_capture().await;
        first_half(&agent, &link);
        encode_shelf(&agent);
        let other = crate::ids::SubjectId::new("S-2").unwrap();
        agent.revoke_now(other, clock::now()).await.unwrap();
        assert_eq!(agent.shelf().len(), 1);
        assert_eq!(second_half(&agent, &link), 1);
    }

    /// A capture sent in parts is kept decrypted between hand-overs; a
    /// revocation has the uploader let go of it under the store lock, before
    /// the receipt exists, not at the next hand-over (SPEC invariant 4).
    #[tokio::test]
    async fn a_revocation_wipes_a_capture_kept_for_its_parts() {
        let len = 3 * 131_072;
        let (_dir, agent, link, _el, _) = agent_with_a_queued_capture_of(len).await;
        let uploader = Arc::new(Uploader::new());
        uploader.hold_parts_for(agent.shelf());
        let handed = {
            let mut store = agent.db().lock();
            hand_over(&mut store, &agent, &link, &uploader, "t", 1, 1, 16)
                .unwrap()
                .0
        };
        assert_eq!(handed, 1, "one part now, the capture kept for the rest");
        assert!(uploader.has_current());
        let other = crate::ids::SubjectId::new("S-2").unwrap();
        agent.revoke_now(other, clock::now()).await.unwrap();
        assert!(uploader.has_current(), "another subject's revocation");
        let subject = crate::ids::SubjectId::new("S-1").unwrap();
        agent.revoke_now(subject, clock::now()).await.unwrap();
        assert!(!uploader.has_current(), "let go of with the revocation");
    }

    /// A purge (`capture.purge`, consents kept) between choosing and
    /// handing: the consent still allows the subject, but the capture is
    /// gone, wiped from the shelf with the purge, so its envelope is not
    /// handed over. A purge of all wipes the whole shelf.
    #[tokio::test]
    async fn a_purge_between_choosing_and_handing_stops_the_capture() {
        let (_dir, agent, link, _el, _) = agent_with_a_queued_capture().await;
        first_half(&agent, &link);
        encode_shelf(&agent);
        let subject = crate::ids::SubjectId::new("S-1").unwrap();
        let target = crate::agent::PurgeTarget::Subject(subject);
        let receipt = agent.purge(target, clock::now(), None).await.unwrap();
        assert_eq!(receipt.purged, 1);
        assert!(receipt.in_flight.is_empty());
        assert!(agent.shelf().is_empty(), "wiped with the purge");
        assert_eq!(second_half(&agent, &link), 0);
        assert_eq!(agent.inflight().len(), 0);

        let (_dir, agent, link, _el, _) = agent_with_a_queued_capture().await;
        first_half(&agent, &link);
        let target = crate::agent::PurgeTarget::All;
        agent.purge(target, clock::now(), None).await.unwrap();
        assert!(agent.shelf().is_empty(), "a purge of all wipes all");
    }

    /// A consent that ends between choosing and handing (its trust key
    /// removed by a reload) is judged again when the capture is handed: the
    /// capture is purged and wiped from the shelf, not handed over, though
    /// its envelope was encoded.
    #[tokio::test]
    async fn a_consent_that_ends_between_choosing_and_handing_stops_the_capture() {
        let (_dir, agent, link, _el, _) = agent_with_a_queued_capture().await;
        first_half(&agent, &link);
        encode_shelf(&agent);
        let mut cfg = (*agent.config()).clone();
        cfg.trust.clear();
        let plan = agent.reload(cfg);
        assert!(plan.applied.contains(&"trust"), "{:?}", plan.applied);
        assert_eq!(second_half(&agent, &link), 0);
        assert_eq!(agent.inflight().len(), 0);
        assert!(agent.shelf().is_empty());
        let id = capture(1).capture_id;
        assert!(!agent.db().lock().is_queued(&id).unwrap());
    }

    /// The envelope encoded in advance is used only if it quotes the consent
    /// that allows the capture at the hand-over, under the same
    /// configuration; otherwise it is encoded again.
    #[test]
    fn an_envelope_encoded_in_advance_is_used_only_for_the_same_consent_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Arc::new(crate::config::testing::config(dir.path(), ""));
        let mut c = Prepared::new(Pending::opened(capture(1_000)), "k-1".into());
        c.encode(cfg.clone());
        let ahead = c.payload.to_vec();
        assert_eq!(c.payload_for(&cfg, "k-1"), ahead);
        let mut c = Prepared::new(Pending::opened(capture(1_000)), "k-1".into());
        c.encode(cfg.clone());
        assert_eq!(
            c.payload_for(&cfg, "k-2"),
            envelope(&cfg, &capture(1_000), "k-2")
        );
        let mut other = (*cfg).clone();
        other.identity.device_id = "term-02".into();
        let other = Arc::new(other);
        let mut c = Prepared::new(Pending::opened(capture(1_000)), "k-1".into());
        c.encode(cfg.clone());
        assert_eq!(
            c.payload_for(&other, "k-1"),
            envelope(&other, &capture(1_000), "k-1")
        );
        assert_ne!(envelope(&other, &capture(1_000), "k-1"), ahead);
    }
}
