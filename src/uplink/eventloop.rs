//! The uplink's two tasks and their loops; the decisions live in the pure
//! modules next to this one, the effects in `upload`, `commands` and `status`.
//!
//! * The **network task** makes one rumqttc client/event-loop pair per
//!   connection attempt and polls it: it installs the client in the [`Link`]
//!   on CONNACK, records outgoing publishes and PUBACKs there, passes inbound
//!   messages on, and on a connection error takes the client out of the link
//!   and drops the pair (rumqttc's in-memory replay queue goes with it: the
//!   outbox is the source of truth) before backing off ([`Backoff`]).
//! * The **logic task** hands captures over (`upload`: consent re-checked
//!   under the store lock, SPEC invariant 1), has acknowledged rows deleted,
//!   applies commands (`commands`), and publishes status and replies.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::backoff::Backoff;
use super::commands::{flush_ingress, handle_command, note_ignored, Inbound};
use super::consent_head::{handle_head, LogWatch};
use super::ingress::{self, Ignored, Verdict};
use super::link::Link;
use super::mqtt::{self, Client, Delivery, Events, NetError, NetEvent, Options};
use super::options::{connection, mqtt_options};
use super::state::{self, Abandoned};
use super::status::{publish_offline, publish_status};
use super::suspect::{Ended, Suspect};
use super::upload::{deleter, fill_window, record_interrupted, record_refusal, Uploader};
use crate::agent::Agent;
use crate::clock;
use crate::config::Config;
use crate::logging::repeat;
use crate::protocol::{Piece, SiteTopics, Topics};
use crate::shutdown::Shutdown;
use crate::store::counter;
use serde_json::json;

/// How often the outbox is looked at even without a wake-up.
const REFILL_EVERY: Duration = Duration::from_millis(500);
/// How long a clean shutdown waits for the offline status and DISCONNECT to go out.
const DISCONNECT_GRACE: Duration = Duration::from_secs(3);
/// The warning of a lost broker connection (rate-limited: `logging::repeat`).
const CONNECTION_LOST: &str = "broker connection lost; retrying with backoff";
/// How often a stop that waits for uploads in flight looks at them.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// How often counted refusals and ignored messages are looked at (written
/// once their window has ended, `ingress::WINDOW_S`).
const INGRESS_FLUSH_EVERY: Duration = Duration::from_secs(5);

/// What the network task tells the logic task.
#[derive(Debug)]
enum Net {
    /// CONNACK received.
    Connected { session_present: bool },
    /// The connection failed or dropped (`how`); `uploads` (whole captures
    /// and parts) were abandoned in flight, `on_wire` of them on the wire.
    Disconnected {
        reason: String,
        how: Ended,
        uploads: Vec<Piece>,
        on_wire: Vec<Piece>,
    },
    /// The broker acknowledged this upload (a whole capture or a part).
    Acked(Piece),
    /// The broker refused this upload: an MQTT 5 PUBACK with the error
    /// reason code `code`. It stays queued; the refusal counts.
    Refused { piece: Piece, code: u8 },
    /// A message on one of our command topics.
    Command(Inbound),
    /// A message on the site consent-log head topic (retained).
    Head(Inbound),
    /// The first message of `kind` in this run that is not taken as a
    /// command (the rest are only counted in the link's `Ingress`).
    Ignored { kind: Ignored, topic: String },
}

/// Runs the uplink until shutdown. Never gives up: TLS or broker trouble is
/// logged with its cause and retried with backoff, while intake goes on.
pub async fn run(agent: Arc<Agent>, mut shutdown: Shutdown) {
    let config = agent.config();
    let topics = Topics::new(
        &config.mqtt.prefix,
        &config.identity.site_id,
        &config.identity.device_id,
    );
    let options = loop {
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
    let link = Arc::new(Link::new(config.mqtt.max_packet_size));
    let (net_tx, net_rx) = mpsc::unbounded_channel();
    let stop = Arc::new(Notify::new());
    let network = tokio::spawn(network_task(
        options,
        link.clone(),
        net_tx,
        agent.clone(),
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

/// Connects, polls and reconnects; see the module docs.
async fn network_task(
    options: Options,
    link: Arc<Link>,
    tx: mpsc::UnboundedSender<Net>,
    agent: Arc<Agent>,
    config: Arc<Config>,
    stop: Arc<Notify>,
) {
    let mut backoff = Backoff::new(config.mqtt.reconnect_min, config.mqtt.reconnect_max);
    let head_topic = SiteTopics::new(&config.mqtt.prefix, &config.identity.site_id).consent_head;
    loop {
        let served = serve(
            connection(&config, &options),
            &link,
            &tx,
            &agent,
            &mut backoff,
            &stop,
            &head_topic,
        );
        let (error, how, abandoned) = match served.await {
            Served::Stopped => return,
            Served::Failed { error, abandoned } => (error.explain(), error.ending(), abandoned),
            Served::Reconnect { abandoned } => (
                "reconnecting so that the broker delivers again a command whose effect failed"
                    .to_string(),
                Ended::Ours,
                abandoned,
            ),
        };
        // The pair is gone, and with it everything rumqttc held for that
        // connection. What it carried unacknowledged is handed over again
        // after the next CONNACK.
        let _ = tx.send(Net::Disconnected {
            reason: error,
            how,
            uploads: abandoned.uploads,
            on_wire: abandoned.on_wire,
        });
        let delay = backoff.next(random_u32());
        tokio::select! {
            _ = stop.notified() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// How one connection ended.
enum Served {
    /// Shutdown: asked to stop, or our own DISCONNECT went out.
    Stopped,
    /// The attempt failed or the connection dropped; `abandoned` was in
    /// flight on it.
    Failed {
        error: NetError,
        abandoned: Abandoned,
    },
    /// Our DISCONNECT for [`Link::reconnect`] went out; `abandoned` was in
    /// flight on the connection.
    Reconnect { abandoned: Abandoned },
}

/// Polls one connection's event loop from the first attempt to its end. The
/// client moves into the link on CONNACK; until then nothing can be handed
/// over. Both are dropped when this returns.
async fn serve(
    (client, mut eventloop): (Client, Events),
    link: &Link,
    tx: &mpsc::UnboundedSender<Net>,
    agent: &Agent,
    backoff: &mut Backoff,
    stop: &Notify,
    head_topic: &str,
) -> Served {
    let mut client = Some(client);
    let mut number = 0;
    loop {
        let event = tokio::select! {
            _ = stop.notified() => return Served::Stopped,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(NetEvent::ConnAck {
                session_present,
                max_packet,
                session_expiry,
            }) => {
                if let Some(seconds) = session_expiry {
                    tracing::warn!(
                        broker_session_expiry_s = seconds,
                        "the broker keeps this device's session for a different time than mqtt.session_expiry asks: commands queued for a device offline longer are lost (status uplink.session_lost counts it)"
                    );
                }
                if let Some(client) = client.take() {
                    number = link.on_connected(client, max_packet);
                }
                if let Some(broker) = max_packet {
                    tracing::info!(
                        broker_max_packet_size = broker,
                        max_packet_size = link.max_packet(),
                        "broker announced its Maximum Packet Size; no packet sent on this connection is larger than the smaller limit"
                    );
                }
                backoff.reset();
                let _ = tx.send(Net::Connected { session_present });
            }
            Ok(NetEvent::OutgoingPublish(pkid)) => {
                if !link.on_outgoing_publish(pkid) {
                    tracing::warn!(pkid, "outgoing publish that was not handed over");
                }
            }
            Ok(NetEvent::PubAck { pkid, code }) => {
                // MQTT 5: rumqttc reports a PUBACK with an error reason code
                // like any other; only its code tells a refusal apart. Either
                // way the upload no longer awaits its PUBACK: marked so as
                // its window slot frees up (status `uplink.in_flight`).
                let piece = link.on_puback(pkid, |piece| {
                    agent.inflight().acknowledged(piece);
                });
                match (piece, mqtt::delivery(code)) {
                    (Some(piece), Delivery::Delivered) => {
                        let _ = tx.send(Net::Acked(piece));
                    }
                    (Some(piece), Delivery::Refused(code)) => {
                        let _ = tx.send(Net::Refused { piece, code });
                    }
                    (None, Delivery::Refused(code)) => tracing::warn!(
                        pkid,
                        code = format!("0x{code:02X}"),
                        meaning = mqtt::puback_meaning(code),
                        "broker refused a status or reply message (check its ACL)"
                    ),
                    (None, Delivery::Delivered) => {}
                }
            }
            // The consent-log head is retained by design: not a command.
            Ok(NetEvent::Publish(publish)) if publish.topic == head_topic => {
                let _ = tx.send(Net::Head(Inbound {
                    connection: number,
                    publish,
                    received: std::time::Instant::now(),
                }));
            }
            Ok(NetEvent::Publish(publish)) => {
                let qos0 = publish.qos0();
                match ingress::ignored(qos0, publish.retain) {
                    None => {
                        let _ = tx.send(Net::Command(Inbound {
                            connection: number,
                            publish,
                            received: std::time::Instant::now(),
                        }));
                    }
                    // Not a command: dropped here, so that a flood of them
                    // (QoS 0 has no flow control) never queues up in memory.
                    // Acknowledged (QoS 1) so the broker forgets it; not
                    // applied and not answered.
                    Some(kind) => {
                        if !qos0 {
                            link.ack(number, publish.ack);
                        }
                        if link.ingress().ignored(kind, clock::now()) == Verdict::Record {
                            let _ = tx.send(Net::Ignored {
                                kind,
                                topic: publish.topic,
                            });
                        }
                    }
                }
            }
            Ok(NetEvent::SubAck { refused }) => {
                if refused {
                    tracing::error!("broker refused a command subscription (check the broker ACL)");
                }
            }
            // Our own DISCONNECT (after everything handed before it) has
            // been written: to reconnect, or the clean shutdown (the offline
            // status included).
            Ok(NetEvent::OutgoingDisconnect) => {
                if link.take_reconnect() {
                    let abandoned = link.on_disconnected();
                    return Served::Reconnect { abandoned };
                }
                return Served::Stopped;
            }
            Ok(NetEvent::Other) => {}
            Err(error) => {
                // The link lets go of the client under its lock, while the
                // event loop still exists: nothing more is handed over.
                let abandoned = link.on_disconnected();
                return Served::Failed { error, abandoned };
            }
        }
    }
}

/// A uniformly drawn `u32` for the backoff's jitter.
fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // On the (theoretical) failure the jitter is 0: the delay is half a step.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_le_bytes(b)
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
    let mut ingress_tick = tokio::time::interval(INGRESS_FLUSH_EVERY);
    let mut upload_from = far_future();
    let uploader = Arc::new(Uploader::new());
    // Revocations and purges have the uplink let go of the captures it
    // keeps decrypted for their parts, under the store lock (crate::shelf).
    uploader.hold_parts_for(agent.shelf());
    // Probe mode after a dropped connection (uplink::suspect).
    let mut suspect = Suspect::new();
    let (acked_tx, acked_rx) = mpsc::unbounded_channel();
    let deletes = tokio::spawn(deleter(agent.clone(), uploader.clone(), acked_rx));
    // The status goes out again when the consent-log sync changes.
    let mut log_watch = LogWatch::new();
    loop {
        // Whether the consent-log state may have changed since the last
        // look: not on a PUBACK or an outbox change (the hot path of the
        // uploads), but on what a command, a head or the time can change
        // (the refill tick looks at least twice a second).
        let mut log_may_change = true;
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = agent.outbox_changed().notified() => log_may_change = false,
            // Wake exactly when the post-connect settle time ends.
            _ = tokio::time::sleep_until(upload_from), if tokio::time::Instant::now() < upload_from => {}
            _ = refill.tick() => {}
            _ = ingress_tick.tick() => {
                flush_ingress(&agent, &link, clock::now(), false).await;
                repeat::log_due(clock::now());
            }
            _ = status_tick.tick() => {
                if link.connected() {
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
                log_may_change = inbox.iter().any(|m| !matches!(m, Net::Acked(_) | Net::Refused { .. }));
                for msg in inbox {
                    match msg {
                        Net::Acked(piece) => {
                            if suspect.probing() {
                                tracing::info!("upload acknowledged; leaving probe mode");
                            }
                            suspect.on_acked();
                            let _ = acked_tx.send(piece);
                        }
                        Net::Refused { piece, code } => {
                            // Counted before the upload may be handed over
                            // again (it leaves the in-flight set after).
                            let why = format!(
                                "the broker refused it: PUBACK 0x{code:02X} ({})",
                                mqtt::puback_meaning(code)
                            );
                            record_refusal(&agent, &piece.capture_id, &why).await;
                            agent.inflight().remove(&piece);
                            agent.outbox_changed().notify_one();
                        }
                        Net::Connected { session_present } => {
                            tracing::info!(session_present, "connected to broker");
                            record_connected(&agent, session_present).await;
                            // Captures in parts start again from the store.
                            uploader.reset();
                            agent.set_connected(true);
                            for topic in [&topics.device_cmd, &topics.site_cmd, &topics.consent_head] {
                                link.subscribe(topic);
                            }
                            publish_status(&agent, &link, &topics).await;
                            log_watch.reset();
                            upload_from = tokio::time::Instant::now() + state::settle_after_connect(session_present);
                        }
                        Net::Disconnected { reason, how, uploads, on_wire } => {
                            agent.set_connected(false);
                            // Nothing prepared is held while offline.
                            agent.shelf().forget(&crate::shelf::Gone::All);
                            for piece in &uploads {
                                agent.inflight().remove(piece);
                            }
                            let was_probing = suspect.probing();
                            let culprit = suspect.on_ended(how, &uploads, &on_wire);
                            if suspect.probing() && !was_probing {
                                tracing::info!(in_flight = uploads.len(), "connection lost with uploads in flight; sending one at a time until one is acknowledged");
                            }
                            if let Some(capture_id) = culprit {
                                let why = format!("the broker closed the connection while only this capture was in flight: {reason}");
                                record_refusal(&agent, &capture_id, &why).await;
                            }
                            if !uploads.is_empty() {
                                record_interrupted(&agent, &reason, uploads.len()).await;
                            }
                            if let Some(times) = repeat::admit(CONNECTION_LOST, &reason, clock::now()) {
                                tracing::warn!(%reason, requeued = uploads.len(), "{CONNECTION_LOST}{times}");
                            }
                            upload_from = far_future();
                        }
                        Net::Command(inbound) => handle_command(&agent, &link, &topics, inbound).await,
                        Net::Head(inbound) => handle_head(&agent, &link, inbound).await,
                        Net::Ignored { kind, topic } => note_ignored(&agent, kind, topic, clock::now()).await,
                    }
                }
            }
        }
        if log_may_change {
            log_watch.check(&agent, &link, &topics).await;
        }
        if tokio::time::Instant::now() >= upload_from {
            let window = suspect.window(usize::from(config.mqtt.inflight));
            fill_window(&agent, &link, &uploader, &topics.captures, window).await;
        }
    }
    // Nothing more is handed over; what is in flight gets `mqtt.stop_grace`
    // to be acknowledged and its delete recorded.
    drain(&agent, &link, &mut net, &acked_tx, config.mqtt.stop_grace).await;
    // Deletes already queued finish (so acknowledged captures are not sent again).
    drop(acked_tx);
    let _ = deletes.await;
    // What the ingress limiter counted is written, window ended or not.
    flush_ingress(&agent, &link, clock::now(), true).await;
    // Clean shutdown: say we are going, then disconnect. Returns whether a
    // DISCONNECT is on its way.
    if !link.connected() {
        return false;
    }
    publish_offline(&link, &topics);
    link.disconnect()
}

/// The first part of a clean stop: nothing more is handed over, and the
/// uploads in flight get up to `grace` to be acknowledged and their deletes
/// recorded, so that a restart does not send them again (a PUBACK the
/// broker sends after our DISCONNECT is lost, and the upload with it).
/// Refusals still count; a lost connection ends the wait (what it
/// abandoned stays queued). Commands arriving meanwhile are neither applied
/// nor acknowledged: the broker delivers them again after the restart.
async fn drain(
    agent: &Arc<Agent>,
    link: &Link,
    net: &mut mpsc::UnboundedReceiver<Net>,
    acked: &mpsc::UnboundedSender<Piece>,
    grace: Duration,
) {
    let waiting = agent.inflight().len();
    if grace.is_zero() || waiting == 0 || !link.connected() {
        return;
    }
    tracing::info!(
        uploads = agent.inflight().awaiting(),
        captures = waiting,
        stop_grace = %humantime::format_duration(grace),
        "stopping: waiting for the uploads in flight to be acknowledged"
    );
    let deadline = tokio::time::Instant::now() + grace;
    while !agent.inflight().is_empty() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    uploads = agent.inflight().awaiting(),
                    "stopping: mqtt.stop_grace ended before every upload in flight was acknowledged; they stay queued and are sent again after the restart"
                );
                return;
            }
            _ = tokio::time::sleep(DRAIN_POLL) => {}
            msg = net.recv() => match msg {
                None => return,
                Some(Net::Acked(piece)) => {
                    let _ = acked.send(piece);
                }
                Some(Net::Refused { piece, code }) => {
                    let why = format!(
                        "the broker refused it: PUBACK 0x{code:02X} ({})",
                        mqtt::puback_meaning(code)
                    );
                    record_refusal(agent, &piece.capture_id, &why).await;
                    agent.inflight().remove(&piece);
                }
                Some(Net::Disconnected { reason, uploads, .. }) => {
                    agent.set_connected(false);
                    for piece in &uploads {
                        agent.inflight().remove(piece);
                    }
                    if !uploads.is_empty() {
                        record_interrupted(agent, &reason, uploads.len()).await;
                    }
                    tracing::warn!(%reason, requeued = uploads.len(), "stopping: broker connection lost while waiting for acknowledgements");
                    return;
                }
                // Not applied and not acknowledged: delivered again later.
                Some(Net::Command(_)) | Some(Net::Head(_)) | Some(Net::Connected { .. }) => {}
                Some(Net::Ignored { kind, topic }) => {
                    note_ignored(agent, kind, topic, clock::now()).await;
                }
            },
        }
    }
    tracing::info!("stopping: every upload in flight was acknowledged");
}

/// Counts the connection and, when the broker kept no session for a device
/// that had connected before ([`state::session_lost`]), says so: a WARN line,
/// an audit row and the `session_lost` counter (status `uplink.session_lost`).
/// The subscriptions are made again on every connection anyway.
async fn record_connected(agent: &Arc<Agent>, session_present: bool) {
    let now = clock::now();
    let r = agent
        .db()
        .run(move |s| {
            let before = s.counters()?;
            let connected_before = before
                .get(counter::BROKER_CONNECTIONS)
                .copied()
                .unwrap_or(0)
                > 0;
            let lost = state::session_lost(session_present, connected_before);
            let audit = lost.then(|| ("uplink.session_lost", json!({})));
            s.record_counts(
                audit,
                &[
                    (counter::BROKER_CONNECTIONS, 1),
                    (counter::SESSION_LOST, u64::from(lost)),
                ],
                now,
            )?;
            Ok(lost)
        })
        .await;
    match r {
        Ok(true) => tracing::warn!(
            "the broker kept no session for this device: commands queued while it was offline may have been lost (status uplink.session_lost; check the broker's persistence and session expiry)"
        ),
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "cannot record the broker connection"),
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600)
}
