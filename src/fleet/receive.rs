//! `facegate fleet receive`: the reference receiver (SPEC "Fleet side").
//! Subscribes to a site's captures and replies on a persistent session with
//! QoS 1, gives each message to the [`Inbox`], and acknowledges it only once
//! the inbox has made what it did durable; survives broker restarts (the
//! broker hands back what was not acknowledged). The captures go to the
//! store `--out` names ([`Captures`]: a directory, or an object store); the
//! receiver's own state stays in a local directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::watch;

use super::capture_store::{CaptureStore, Captures};
use super::inbox::{Inbox, InboxError, Taken};
use super::{BrokerConn, FleetError};
use crate::protocol::{Envelope, Reply, ReplyResult, SiteTopics};
use crate::uplink::tls;

/// What `fleet receive` needs.
#[derive(Debug, Clone)]
pub struct ReceiveRequest {
    /// The broker connection.
    pub conn: BrokerConn,
    /// The site.
    pub site: String,
    /// Where captures go: a directory path, `file:///abs/path` or
    /// `s3://bucket/prefix` ([`Captures::open`]).
    pub out: String,
    /// The receiver's state directory (ids taken, parts, receipts,
    /// `deletions.log`); `None`: the output directory, when it is local.
    pub state: Option<PathBuf>,
    /// MQTT client id of the persistent session (the broker ties it to the
    /// certificate with `use_username_as_clientid`).
    pub client_id: String,
    /// Largest packet accepted (a whole capture of the largest device limit).
    pub max_packet_size: usize,
    /// How often progress goes to stderr.
    pub progress_every: Duration,
    /// Wait before connecting again after a lost connection.
    pub retry: Duration,
    /// Shared subscription group: several receivers (each with its own
    /// certificate) on one state directory and one store split the site's
    /// messages, each capture stored once.
    pub share: Option<String>,
}

/// Why the receiver stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The inbox cannot store: the message stays unacknowledged on the
    /// broker, which hands it over again when the receiver comes back.
    #[error("cannot store: {0} (the message is not acknowledged: the broker keeps it)")]
    Inbox(#[from] InboxError),
    /// The broker connection could not be set up.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// `--out` names an object store and no `--state` was given.
    #[error("--out {0} is not a local directory: give the receiver's state directory with --state DIR (a local disk)")]
    NoState(String),
}

/// Runs until `stop` turns true; returns the inbox's counts.
pub async fn receive(
    req: &ReceiveRequest,
    mut stop: watch::Receiver<bool>,
) -> Result<super::inbox::InboxCounts, ReceiveError> {
    let captures = Captures::open(&req.out).map_err(InboxError::from)?;
    let state = match (req.state.clone(), Captures::local_dir(&req.out)) {
        (Some(dir), _) | (None, Some(dir)) => dir,
        (None, None) => return Err(ReceiveError::NoState(req.out.clone())),
    };
    let mut inbox = Inbox::open(captures, &state).await?;
    eprintln!(
        "captures to {}, state in {}",
        inbox.store().describe(),
        state.display()
    );
    let topics = SiteTopics::new(&req.conn.prefix, &req.site);
    let tls_config = tls::client_config_for(&req.conn.ca_file, &req.conn.cert_file, &req.conn.key)
        .map_err(FleetError::from)?;
    let mut opts = tls::mqtt_options(
        &req.client_id,
        &req.conn.host,
        req.conn.port,
        Duration::from_secs(30),
        req.max_packet_size,
        tls_config,
    )
    .map_err(FleetError::from)?;
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    // The event loop runs in a task of its own, and acknowledgements never
    // wait: they go through the client's request queue, which only a
    // polling event loop drains, while a broker handing over a backlog keeps
    // the event loop busy returning messages. A full queue keeps them here
    // (`unsent`) until there is room.
    let (tx, mut events) = tokio::sync::mpsc::channel(256);
    let retry = req.retry;
    let poller = tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await;
            let failed = event.is_err();
            if tx.send(event).await.is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(retry).await;
            }
        }
    });
    let mut last_progress = Instant::now();
    let mut connected = false;
    let mut unsent: std::collections::VecDeque<rumqttc::Publish> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let result = loop {
        while let Some(p) = unsent.pop_front() {
            if let Err(rumqttc::ClientError::TryRequest(_)) = client.try_ack(&p) {
                unsent.push_front(p);
                break;
            }
        }
        let event = tokio::select! {
            _ = stop.changed() => break Ok(()),
            _ = tick.tick() => continue,
            ev = events.recv() => match ev {
                Some(ev) => ev,
                None => break Ok(()),
            },
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected = true;
                eprintln!(
                    "connected to {}:{} (session {})",
                    req.conn.host,
                    req.conn.port,
                    if ack.session_present { "kept" } else { "new" }
                );
                // Subscribed on every connection: a broker without
                // persistence forgets the session.
                for filter in [&topics.captures, &topics.replies] {
                    let filter = match &req.share {
                        Some(group) => format!("$share/{group}/{filter}"),
                        None => filter.clone(),
                    };
                    let _ = client.subscribe(filter, QoS::AtLeastOnce).await;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if super::refused(&ack) {
                    break Err(FleetError::Refused(format!(
                        "{}, {}",
                        topics.captures, topics.replies
                    ))
                    .into());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Err(e) = take(&mut inbox, &topics, &req.site, &p).await {
                    break Err(e);
                }
                // Only now: what the message asked for is durable. The
                // acknowledgement needs the packet id only.
                let mut ack = p;
                ack.payload = Default::default();
                if !unsent.is_empty() || client.try_ack(&ack).is_err() {
                    unsent.push_back(ack);
                }
            }
            Ok(_) => {}
            Err(e) => {
                // Packet ids of the lost connection mean nothing on the
                // next: the broker sends what was not acknowledged again.
                unsent.clear();
                if connected {
                    eprintln!(
                        "connection lost: {}; again in {}s",
                        tls::explain(&e),
                        req.retry.as_secs()
                    );
                }
                connected = false;
            }
        }
        if last_progress.elapsed() >= req.progress_every {
            last_progress = Instant::now();
            progress(&inbox);
        }
    };
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    poller.abort();
    progress(&inbox);
    result.map(|()| inbox.counts)
}

/// Gives one received message to the inbox (an upload, or a reply that may
/// carry a purge receipt) and says on stderr what was not simply stored.
async fn take<S: CaptureStore>(
    inbox: &mut Inbox<S>,
    topics: &SiteTopics,
    site: &str,
    p: &rumqttc::Publish,
) -> Result<(), ReceiveError> {
    let now = crate::clock::now();
    let device = topics.device_of(&p.topic).unwrap_or("?").to_string();
    if p.topic.ends_with("/captures") {
        match Envelope::from_bytes(&p.payload) {
            Ok(env) => {
                let id = env.capture_id.clone();
                match inbox.take(env, now).await? {
                    Taken::Refused { reason } => {
                        eprintln!("{device}: capture {id} refused: {reason}")
                    }
                    Taken::BadName { field } => {
                        eprintln!("{device}: capture refused: its {field} cannot name a file")
                    }
                    Taken::DeletedOnArrival => eprintln!(
                        "{device}: capture {id} deleted on arrival (its subject was revoked)"
                    ),
                    _ => {}
                }
            }
            Err(e) => {
                inbox.counts.refused += 1;
                eprintln!("{device}: not an upload envelope ({e}); dropped");
            }
        }
    } else if let Ok(reply) = Reply::from_bytes(&p.payload) {
        if let (true, Some(ReplyResult::Receipt(receipt))) = (reply.ok, &reply.result) {
            let deleted = inbox.apply_receipt(site, &device, receipt, now).await?;
            eprintln!(
                "{device}: receipt for {}: deleted {deleted} stored capture(s), {} in flight remembered",
                receipt
                    .subject
                    .as_ref()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|| "every subject".into()),
                receipt.in_flight.len()
            );
        }
    }
    Ok(())
}

fn progress<S: CaptureStore>(inbox: &Inbox<S>) {
    let c = inbox.counts;
    eprintln!(
        "stored {} (in the store {}), duplicates {}, refused {}, deleted {}, deleted on arrival {}, incomplete {}",
        c.stored,
        inbox.stored(),
        c.duplicates,
        c.refused,
        c.deleted,
        c.deleted_on_arrival,
        inbox.incomplete()
    );
}
