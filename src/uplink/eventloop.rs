//! The uplink's I/O: drives rumqttc, feeds [`UplinkState`], uploads the outbox,
//! and hands inbound commands to the agent.
//!
//! Two tasks share one `Mutex<UplinkState>`:
//! * the **network task** owns rumqttc's `EventLoop`: it polls it, records
//!   outgoing publishes and PUBACKs in the state, and on a connection error
//!   throws away rumqttc's in-memory replay queue (the outbox is the source of
//!   truth) before backing off and reconnecting;
//! * the **logic task** hands captures over (after re-checking consent under
//!   the store lock: SPEC invariant 1), deletes acknowledged rows, applies
//!   commands, and publishes status and replies.
//!
//! Handing a publish over and recording it happen under the state lock, and a
//! disconnect drains rumqttc's request channel under the same lock, so the
//! FIFO in the state always matches what rumqttc will put on the wire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
};
use serde_json::json;
use tokio::sync::mpsc;

use super::state::{Handed, UplinkState};
use super::tls;
use crate::agent::Agent;
use crate::clock;
use crate::config::Config;
use crate::gate::Decision;
use crate::ids::{CaptureId, SubjectId};
use crate::shutdown::Shutdown;
use crate::store::{OutboxCapture, PurgeReason, Store, StoreError};

/// After a (re)connect, wait this long before uploading so that commands the
/// broker queued while we were away (a revocation!) are applied first.
const SETTLE_AFTER_CONNECT: Duration = Duration::from_millis(500);
/// How often the outbox is looked at even without a wake-up.
const REFILL_EVERY: Duration = Duration::from_millis(500);
/// How long a clean shutdown waits for the offline status and DISCONNECT to go out.
const DISCONNECT_GRACE: Duration = Duration::from_secs(3);
/// Status published while offline-will is retained at the broker.
pub const OFFLINE_STATUS: &str = r#"{"v":1,"state":"offline"}"#;

/// The topics of this device (SPEC "Identity and topics").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Upload envelopes, QoS 1.
    pub captures: String,
    /// Commands for this device.
    pub device_cmd: String,
    /// Commands for every device of the site.
    pub site_cmd: String,
    /// Command replies.
    pub reply: String,
    /// Retained status and last will.
    pub status: String,
}

impl Topics {
    /// Topics for `config`'s prefix, site and device.
    pub fn new(config: &Config) -> Topics {
        let p = &config.mqtt.prefix;
        let site = &config.identity.site_id;
        let dev = &config.identity.device_id;
        Topics {
            captures: format!("{p}/{site}/{dev}/captures"),
            device_cmd: format!("{p}/{site}/{dev}/cmd"),
            site_cmd: format!("{p}/{site}/cmd"),
            reply: format!("{p}/{site}/{dev}/reply"),
            status: format!("{p}/{site}/{dev}/status"),
        }
    }
}

/// What the network task tells the logic task.
#[derive(Debug)]
enum Net {
    /// CONNACK received.
    Connected { session_present: bool },
    /// The connection failed or dropped; `captures` were abandoned in flight.
    Disconnected {
        reason: String,
        captures: Vec<CaptureId>,
    },
    /// The broker acknowledged this capture's upload.
    Acked(CaptureId),
    /// A message on one of our command topics.
    Command(Publish),
}

/// Shared between the two tasks.
struct Link {
    /// Handed-over publishes and the pkid map.
    state: Mutex<UplinkState>,
    /// rumqttc's request side.
    client: AsyncClient,
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, UplinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands one publish to rumqttc and records it, if connected.
    fn hand(&self, topic: &str, payload: Vec<u8>, retain: bool, what: Handed) -> bool {
        let mut st = self.lock();
        if !st.connected() {
            return false;
        }
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => {
                st.on_handed(what);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, topic, "could not hand publish to MQTT");
                false
            }
        }
    }
}

/// Largest MQTT packet we send or accept: the biggest allowed capture, base64
/// encoded inside its envelope, plus room for the envelope and topic.
pub fn max_packet_size(config: &Config) -> usize {
    let image = config.capture.max_file_bytes as usize;
    (image.div_ceil(3) * 4 + 4096).max(config.commands.max_bytes + 4096)
}

fn mqtt_options(config: &Config, topics: &Topics) -> Result<MqttOptions, tls::TlsError> {
    let m = &config.mqtt;
    let tls_config = tls::client_config(&m.ca_file, &m.cert_file, &m.key_file)?;
    let max = max_packet_size(config);
    let mut opts = tls::mqtt_options(
        &config.identity.device_id,
        &m.host,
        m.port,
        m.keep_alive,
        max,
        tls_config,
    )?;
    opts.set_manual_acks(true);
    // rumqttc's own flow control only needs room for our window plus status and replies.
    opts.set_inflight(m.inflight.saturating_add(16));
    opts.set_last_will(LastWill::new(
        &topics.status,
        OFFLINE_STATUS,
        QoS::AtLeastOnce,
        true,
    ));
    Ok(opts)
}

/// Runs the uplink until shutdown. Never gives up: TLS or broker trouble is
/// logged with its cause and retried with backoff, while intake goes on.
pub async fn run(agent: Arc<Agent>, mut shutdown: Shutdown) {
    let config = agent.config();
    let topics = Topics::new(&config);
    let opts = loop {
        match mqtt_options(&config, &topics) {
            Ok(o) => break o,
            Err(e) => {
                tracing::error!(error = %e, "uplink cannot start; captures stay queued");
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(config.mqtt.reconnect_max) => {}
                }
            }
        }
    };
    let (client, mut eventloop) = AsyncClient::new(opts, config.mqtt.inflight as usize + 64);
    // Small packets (PUBACKs, commands, replies) go out at once instead of
    // waiting for Nagle's algorithm: it cuts command-to-reply latency in half.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(10);
    eventloop.set_network_options(network);
    let link = Arc::new(Link {
        state: Mutex::new(UplinkState::new()),
        client,
    });
    let (net_tx, net_rx) = mpsc::unbounded_channel();
    let stop = Arc::new(tokio::sync::Notify::new());
    let network = tokio::spawn(network_task(
        eventloop,
        link.clone(),
        net_tx,
        config.clone(),
        stop.clone(),
    ));
    let disconnecting = logic_task(agent, link.clone(), topics, net_rx, shutdown).await;
    if disconnecting {
        // Let the offline status and DISCONNECT reach the broker: the network
        // task ends once the DISCONNECT is on the wire.
        let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
            while !network.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
    stop.notify_one();
    let _ = network.await;
}

/// Polls rumqttc; see the module docs.
async fn network_task(
    mut eventloop: EventLoop,
    link: Arc<Link>,
    tx: mpsc::UnboundedSender<Net>,
    config: Arc<Config>,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut backoff = Backoff::new(config.mqtt.reconnect_min, config.mqtt.reconnect_max);
    loop {
        let event = tokio::select! {
            _ = stop.notified() => return,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                link.lock().on_connected();
                backoff.reset();
                let _ = tx.send(Net::Connected {
                    session_present: ack.session_present,
                });
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if !link.lock().on_outgoing_publish(pkid) {
                    tracing::warn!(pkid, "outgoing publish that was not handed over");
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(id) = link.lock().on_puback(ack.pkid) {
                    let _ = tx.send(Net::Acked(id));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let _ = tx.send(Net::Command(p));
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    tracing::error!("broker refused a command subscription (check the broker ACL)");
                }
            }
            // Our own clean shutdown: the DISCONNECT (after everything handed
            // before it, the offline status included) has been written.
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                let reason = tls::explain(&e);
                let captures = {
                    let mut st = link.lock();
                    let abandoned = st.on_disconnected();
                    // rumqttc already moved its in-flight publishes and queued
                    // requests into `pending`; drain again under our lock so
                    // nothing handed over concurrently survives, then drop them
                    // all: the outbox resends what was not acknowledged.
                    eventloop.clean();
                    eventloop.pending.clear();
                    // Events rumqttc buffered from the dead connection (an
                    // outgoing publish, a PUBACK) must not be read as news on
                    // the next one; nor may a stalled collision block it.
                    eventloop.state.events.clear();
                    eventloop.state.collision = None;
                    abandoned.captures
                };
                let _ = tx.send(Net::Disconnected { reason, captures });
                if matches!(e, rumqttc::ConnectionError::RequestsDone) {
                    return;
                }
                let delay = backoff.next();
                tokio::select! {
                    _ = stop.notified() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Exponential backoff with jitter, capped.
struct Backoff {
    /// First delay.
    min: Duration,
    /// Cap.
    max: Duration,
    /// The next delay before jitter.
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    fn next(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        // Full jitter on the upper half: between base/2 and base.
        let mut b = [0u8; 4];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        let frac = u32::from_le_bytes(b) as f64 / u32::MAX as f64;
        base.mul_f64(0.5 + 0.5 * frac)
    }
}

async fn logic_task(
    agent: Arc<Agent>,
    link: Arc<Link>,
    topics: Topics,
    mut net: mpsc::UnboundedReceiver<Net>,
    mut shutdown: Shutdown,
) -> bool {
    let config = agent.config();
    let mut status_tick = tokio::time::interval(config.mqtt.status_interval);
    let mut refill = tokio::time::interval(REFILL_EVERY);
    let mut upload_from = far_future();
    let mut last_error = String::new();
    let (acked_tx, acked_rx) = mpsc::unbounded_channel();
    let deletes = tokio::spawn(deleter(agent.clone(), acked_rx));
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = agent.outbox_changed().notified() => {}
            // Wake exactly when the post-connect settle time ends.
            _ = tokio::time::sleep_until(upload_from), if tokio::time::Instant::now() < upload_from => {}
            _ = refill.tick() => {}
            _ = status_tick.tick() => {
                if link.lock().connected() {
                    publish_status(&agent, &link, &topics).await;
                }
            }
            msg = net.recv() => {
                let Some(first) = msg else { break };
                // Take everything already waiting, then refill the window once.
                let mut inbox = vec![first];
                while let Ok(more) = net.try_recv() {
                    inbox.push(more);
                }
                for msg in inbox {
                    match msg {
                        Net::Acked(id) => {
                            let _ = acked_tx.send(id);
                        }
                        Net::Connected { session_present } => {
                            tracing::info!(session_present, "connected to broker");
                            last_error.clear();
                            agent.set_connected(true);
                            for topic in [&topics.device_cmd, &topics.site_cmd] {
                                if let Err(e) = link.client.try_subscribe(topic.as_str(), QoS::AtLeastOnce) {
                                    tracing::error!(error = %e, topic = %topic, "cannot subscribe");
                                }
                            }
                            publish_status(&agent, &link, &topics).await;
                            upload_from = tokio::time::Instant::now() + SETTLE_AFTER_CONNECT;
                        }
                        Net::Disconnected { reason, captures } => {
                            agent.set_connected(false);
                            for id in &captures {
                                agent.inflight().remove(id);
                            }
                            if !captures.is_empty() {
                                record_interrupted(&agent, &reason, captures.len()).await;
                            }
                            if reason != last_error {
                                tracing::warn!(%reason, requeued = captures.len(), "broker connection lost; retrying with backoff");
                                last_error = reason;
                            }
                            upload_from = far_future();
                        }
                        Net::Command(p) => handle_command(&agent, &link, &topics, p).await,
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= upload_from {
            fill_window(&agent, &link, &topics).await;
        }
    }
    // Deletes already queued finish (so acknowledged captures are not sent again).
    drop(acked_tx);
    let _ = deletes.await;
    // Clean shutdown: say we are going, then disconnect. Returns whether a
    // DISCONNECT is on its way.
    if !link.lock().connected() {
        return false;
    }
    link.hand(
        &topics.status,
        OFFLINE_STATUS.as_bytes().to_vec(),
        true,
        Handed::Other,
    );
    link.client.try_disconnect().is_ok()
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// Hands as many queued captures to MQTT as the window allows. Each one is
/// re-checked against the consent gate under the store lock, in the same
/// critical section as the hand-over: a revocation (which takes the same lock)
/// is either fully before it (the capture is gone) or fully after it (the
/// capture is listed as in flight in the receipt).
async fn fill_window(agent: &Arc<Agent>, link: &Arc<Link>, topics: &Topics) {
    let window = agent.config().mqtt.inflight as usize;
    let free = link.lock().free_slots(window);
    if free == 0 {
        return;
    }
    let (agent2, link2, topic) = (agent.clone(), link.clone(), topics.captures.clone());
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
    let mut handed = 0;
    // One decision per subject and batch: the store lock is held throughout,
    // so nothing can change it in between.
    let mut decided: HashMap<SubjectId, Decision> = HashMap::new();
    for capture in batch {
        let decision = match decided.get(&capture.subject) {
            Some(d) => d.clone(),
            None => {
                // The consent rule (crate::gate), on what the store holds now.
                let d = store.decide(&capture.subject, &cfg.trust, &cfg.identity, now)?;
                decided.insert(capture.subject.clone(), d.clone());
                if let Decision::Drop(reason) = &d {
                    // Consent ended since intake (expiry, key withdrawn): never
                    // send, and do not keep what may no longer be kept.
                    tracing::info!(
                        reason = reason.code(),
                        "consent gone; purging the subject's queued captures instead of uploading"
                    );
                    let why = PurgeReason::from(*reason);
                    store.purge_subject(&capture.subject, now, why, None)?;
                }
                d
            }
        };
        match decision {
            Decision::Accept { consent_id, .. } => {
                let payload = envelope(&cfg, &capture, &consent_id);
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
            Decision::Drop(_) => {}
        }
    }
    Ok(handed)
}

/// The SPEC upload envelope.
pub fn envelope(cfg: &Config, c: &OutboxCapture, consent_id: &str) -> Vec<u8> {
    use base64::Engine;
    let body = json!({
        "v": 1,
        "capture_id": c.capture_id,
        "site": cfg.identity.site_id,
        "device": cfg.identity.device_id,
        "subject": c.subject,
        "consent_id": consent_id,
        "captured_at": clock::rfc3339(c.captured_at),
        "camera": c.camera,
        "content_type": c.content_type,
        "sha256": hex::encode(c.sha256),
        "image": base64::engine::general_purpose::STANDARD.encode(&c.image),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Counts and audits uploads cut off by a lost connection (they stay queued
/// and are sent again after the reconnect).
async fn record_interrupted(agent: &Arc<Agent>, reason: &str, n: usize) {
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
async fn deleter(agent: Arc<Agent>, mut acked: mpsc::UnboundedReceiver<CaptureId>) {
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

/// Publishes the retained status.
async fn publish_status(agent: &Arc<Agent>, link: &Arc<Link>, topics: &Topics) {
    match agent.status(clock::now()).await {
        Ok(v) => {
            link.hand(
                &topics.status,
                serde_json::to_vec(&v).unwrap_or_default(),
                true,
                Handed::Other,
            );
        }
        Err(e) => tracing::error!(error = %e, "cannot build status"),
    }
}

/// Verifies and applies one inbound command, acknowledges it to the broker
/// once its effect is committed, and publishes the reply.
async fn handle_command(agent: &Arc<Agent>, link: &Arc<Link>, topics: &Topics, publish: Publish) {
    if publish.topic != topics.device_cmd && publish.topic != topics.site_cmd {
        tracing::warn!(topic = %publish.topic, "message on an unexpected topic ignored");
        ack(link, &publish);
        return;
    }
    let outcome =
        crate::cmd::apply_command(agent, &publish.payload, publish.dup, clock::now()).await;
    // The effect (if any) is committed: now the broker may forget the command.
    ack(link, &publish);
    if outcome.publish_status {
        publish_status(agent, link, topics).await;
    }
    link.hand(
        &topics.reply,
        outcome.reply.to_bytes(),
        false,
        Handed::Other,
    );
    agent.outbox_changed().notify_one();
}

fn ack(link: &Link, publish: &Publish) {
    if let Err(e) = link.client.try_ack(publish) {
        tracing::warn!(error = %e, "cannot acknowledge command to the broker; it will be redelivered");
    }
}
