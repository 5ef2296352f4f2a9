//! The outbox side of the uplink: hands queued captures to MQTT as
//! [`super::handover`] decides, deletes them when the broker acknowledges
//! them, and records uploads a lost connection cut off.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use tokio::sync::mpsc;
use zeroize::Zeroize;

use super::handover::{self, Queued};
use super::link::Link;
use super::state::Handed;
use crate::agent::Agent;
use crate::clock;
use crate::config::Config;
use crate::ids::CaptureId;
use crate::protocol::{Envelope, WIRE_VERSION};
use crate::store::{Capture, PurgeReason, Store, StoreError};

/// Hands as many queued captures to MQTT as the window allows. Each one is
/// re-checked against the consent gate under the store lock, in the same
/// critical section as the hand-over: a revocation (which takes the same lock)
/// is either fully before it (the capture is gone) or fully after it (the
/// capture is listed as in flight in the receipt). ARCHITECTURE I7.
pub async fn fill_window(agent: &Arc<Agent>, link: &Arc<Link>, topic: &str) {
    let window = agent.config().mqtt.inflight as usize;
    let free = link.free_slots(window);
    if free == 0 {
        return;
    }
    let (agent2, link2, topic) = (agent.clone(), link.clone(), topic.to_string());
    let result = agent
        .db()
        .run(move |store| hand_over(store, &agent2, &link2, &topic, free))
        .await;
    match result {
        Ok(0) => {}
        Ok(n) => tracing::debug!(n, "captures handed to MQTT"),
        Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
    }
}

/// One hand-over, under the store lock from start to end: read the queued
/// captures not in flight, ask the consent rule once per subject, and apply
/// the plan (purge refused subjects, hand the rest to MQTT).
fn hand_over(
    store: &mut Store,
    agent: &Agent,
    link: &Link,
    topic: &str,
    free: usize,
) -> Result<usize, StoreError> {
    let cfg = agent.config();
    let now = clock::now();
    let exclude = agent.inflight().snapshot();
    let batch = store.pending(free, &exclude)?;
    let queued: Vec<Queued<'_>> = batch
        .iter()
        .map(|c| Queued {
            capture_id: &c.capture_id,
            subject: &c.subject,
        })
        .collect();
    // The consent rule (crate::gate) on what the store holds now, one
    // decision per subject and batch: the store lock is held throughout, so
    // nothing can change it in between.
    let mut decisions = HashMap::new();
    for subject in handover::subjects(&queued) {
        let decision = store.decide(&subject, &cfg.trust, &cfg.identity, now)?;
        decisions.insert(subject, decision);
    }
    let plan = handover::plan(&queued, &decisions, free);
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
    let mut handed = 0;
    for upload in &plan.upload {
        let capture = &batch[upload.index];
        let payload = envelope(&cfg, capture, &upload.consent_id);
        agent.inflight().insert(&capture.capture_id);
        if !link.hand(
            topic,
            payload,
            false,
            Handed::Capture(capture.capture_id.clone()),
        ) {
            agent.inflight().remove(&capture.capture_id);
            break;
        }
        handed += 1;
    }
    Ok(handed)
}

/// The bytes of a capture's upload envelope (SPEC "Upload envelope"), quoting
/// `consent_id`: the consent that allows the upload now. The copy of the
/// image the envelope is built from is wiped here; the returned bytes go to
/// rumqttc, which owns them from then on (they are not wiped: rumqttc, rustls
/// and the kernel copy them on the way out and free them without wiping).
pub fn envelope(cfg: &Config, c: &Capture, consent_id: &str) -> Vec<u8> {
    let mut envelope = Envelope {
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
        image: c.image.to_vec(),
        part: None,
        parts: None,
    };
    let bytes = envelope.to_bytes();
    envelope.image.zeroize();
    bytes
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
/// logic task only queues ids here, so the window refills while the (fsync'd)
/// delete runs. Each batch is everything queued so far, in one transaction.
/// An id stays in [`Agent::inflight`] until its row is gone, so it is never
/// handed over twice.
pub async fn deleter(agent: Arc<Agent>, mut acked: mpsc::UnboundedReceiver<CaptureId>) {
    while let Some(first) = acked.recv().await {
        let mut ids = vec![first];
        while let Ok(more) = acked.try_recv() {
            ids.push(more);
        }
        let now = clock::now();
        let batch = ids.clone();
        match agent.db().run(move |s| s.ack_many(&batch, now)).await {
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot delete acknowledged captures; they will be sent again")
            }
        }
        for id in &ids {
            agent.inflight().remove(id);
        }
        agent.outbox_changed().notify_one();
    }
}
