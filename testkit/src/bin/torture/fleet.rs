//! The fleet side: one subscriber on `facegate/#` that outlives broker
//! restarts and writes down every upload (by the camera tag that names its
//! capture) and every reply, numbered in arrival order; and one publisher for
//! commands, signed or hostile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use facegate::protocol::Envelope;
use facegate_testkit::broker::Broker;
use facegate_testkit::mqtt::Session;
use rumqttc::{AsyncClient, Event, Incoming, QoS};
use serde_json::Value;
use tokio::runtime::Runtime;

/// Upload topic of the harness terminal.
pub const CAPTURES: &str = "facegate/lobby/term-01/captures";
/// Command topic of the harness terminal.
pub const CMD: &str = "facegate/lobby/term-01/cmd";
/// Reply topic of the harness terminal.
pub const REPLY: &str = "facegate/lobby/term-01/reply";

/// One upload message as the fleet received it.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Position among everything the subscriber received.
    pub seq: u64,
    /// The envelope's `capture_id`.
    pub capture_id: String,
    /// The envelope's subject.
    pub subject: String,
}

/// Everything the subscriber received.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Messages received so far (uploads, replies, others).
    pub seq: u64,
    /// Upload messages by camera tag.
    pub uploads: HashMap<String, Vec<Arrival>>,
    /// Replies with their position.
    pub replies: Vec<(u64, Value)>,
    /// CONNACKs the subscriber got (1 + reconnects).
    pub connects: u64,
    /// Upload messages that were not envelopes.
    pub malformed: u64,
}

/// The subscriber and the command publisher.
pub struct Fleet {
    ledger: Arc<Mutex<Ledger>>,
    publisher: AsyncClient,
}

impl Fleet {
    /// Connects `fleet` (subscriber) and `fleet-2` (publisher) to `broker`,
    /// both with persistent sessions that reconnect after errors; returns
    /// once the subscription is in place.
    pub fn start(rt: &Runtime, broker: &Broker) -> Fleet {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        rt.block_on(async {
            let sub = Session::spawn_reconnecting(broker.options("fleet"));
            let client = sub.client.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let task_ledger = ledger.clone();
            let mut publisher = Session::spawn_reconnecting(broker.options("fleet-2"));
            publisher
                .wait_connected(Duration::from_secs(30))
                .await
                .expect("fleet-2 connects");
            let pub_client = publisher.client.clone();
            // The publisher's events are only drained; the task owns the session.
            tokio::spawn(async move {
                while publisher.next(Duration::from_secs(3600)).await.is_some() {}
            });
            tokio::spawn(subscribe_loop(sub, client, task_ledger, tx));
            tokio::time::timeout(Duration::from_secs(30), rx)
                .await
                .expect("fleet subscribes within 30 s")
                .expect("subscriber running");
            Fleet {
                ledger,
                publisher: pub_client,
            }
        })
    }

    /// The ledger, locked.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `payload` on the terminal's command topic at `qos`.
    pub fn publish(&self, rt: &Runtime, payload: Vec<u8>, qos: QoS) {
        rt.block_on(async {
            self.publisher
                .publish(CMD, qos, false, payload)
                .await
                .unwrap_or_else(|e| panic!("publish a command: {e}"))
        })
    }

    /// CONNACKs the subscriber got so far.
    pub fn connects(&self) -> u64 {
        self.ledger().connects
    }
}

async fn subscribe_loop(
    mut session: Session,
    client: AsyncClient,
    ledger: Arc<Mutex<Ledger>>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    loop {
        let Some(event) = session.next(Duration::from_secs(3600)).await else {
            return;
        };
        let Ok(event) = event else { continue };
        match event {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                ledger.lock().unwrap_or_else(|e| e.into_inner()).connects += 1;
                if !ack.session_present {
                    let _ = client.subscribe("facegate/#", QoS::AtLeastOnce).await;
                }
            }
            Event::Incoming(Incoming::SubAck(_)) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
            Event::Incoming(Incoming::Publish(p)) => {
                let mut l = ledger.lock().unwrap_or_else(|e| e.into_inner());
                l.seq += 1;
                let seq = l.seq;
                if p.topic == CAPTURES {
                    match Envelope::from_bytes(&p.payload) {
                        Ok(env) => l.uploads.entry(env.camera).or_default().push(Arrival {
                            seq,
                            capture_id: env.capture_id,
                            subject: env.subject,
                        }),
                        Err(_) => l.malformed += 1,
                    }
                } else if p.topic == REPLY {
                    if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                        l.replies.push((seq, v));
                    }
                }
            }
            _ => {}
        }
    }
}
