//! MQTT helpers for the uplink benchmarks (D1–D3): a private Mosquitto with
//! mutual TLS (`facegate::devbroker`), the agent's broker files, the upload
//! envelope the agent would send, and a bare rumqttc client that serves as the
//! baseline publisher and as the fleet back-end.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use facegate::config::Config;
use facegate::devbroker::{DevBroker, DevBrokerOptions};
use facegate::store::{Capture, OutboxCapture};
use facegate::uplink::eventloop::envelope;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS};
use tokio::sync::mpsc;

use crate::support::{self, MqttFiles};

/// Keep-alive of the bare clients (the agent's is set in its config).
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Whether `FACEGATE_BENCH_NODELAY=1` asks for TCP_NODELAY on the broker's and
/// the bare clients' sockets (the agent's own socket is left as the product sets it).
pub fn nodelay() -> bool {
    std::env::var("FACEGATE_BENCH_NODELAY").is_ok_and(|v| v == "1")
}

/// Starts a throwaway Mosquitto (needs `mosquitto` installed); with
/// [`nodelay`], restarts it with `set_tcp_nodelay true`.
pub fn start_broker() -> DevBroker {
    let mut broker = DevBroker::start(DevBrokerOptions::default()).expect("start mosquitto");
    if nodelay() {
        let conf = broker.dir.path().join("mosquitto.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read mosquitto.conf");
        text.insert_str(0, "set_tcp_nodelay true\n");
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        broker.restart().expect("restart mosquitto");
        println!("broker and bare clients: TCP_NODELAY on");
    }
    broker
}

/// Topic prefix of this device's topics.
pub fn topic(kind: &str) -> String {
    format!("facegate/{}/{}/{kind}", support::SITE, support::DEVICE)
}

/// A device certificate for the agent, issued by the broker's CA.
pub fn agent_files(broker: &DevBroker) -> MqttFiles {
    let creds = broker
        .issue_client(support::DEVICE)
        .expect("device certificate");
    MqttFiles {
        host: "localhost".into(),
        port: broker.port,
        ca: creds.ca,
        cert: creds.cert,
        key: creds.key,
    }
}

/// The exact upload envelope the agent builds for `image` (same size on the wire).
pub fn envelope_for(cfg: &Config, image: &[u8]) -> Vec<u8> {
    let digest = ring::digest::digest(&ring::digest::SHA256, image);
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(digest.as_ref());
    let capture = OutboxCapture {
        capture: Capture {
            capture_id: uuid::Uuid::new_v4().to_string().into(),
            subject: facegate::ids::SubjectId::new("S-0000").expect("subject id"),
            consent_id: uuid::Uuid::new_v4().to_string(),
            captured_at: facegate::clock::now(),
            camera: "cam-1".into(),
            content_type: "image/jpeg".into(),
            sha256,
            image: image.to_vec(),
        },
        queued_at: facegate::clock::now(),
    };
    envelope(cfg, &capture, &capture.consent_id.clone())
}

/// A bare rumqttc client (own certificate `cn`, persistent session, 5 s
/// keep-alive) with in-flight window `window`. Its event loop runs in a task
/// that timestamps every event as it is polled, like the agent's network task.
pub struct BarePublisher {
    /// Request side.
    pub client: AsyncClient,
    /// Topic it may publish on (`facegate/lobby/{cn}/captures`).
    pub topic: String,
    /// Events with the instant the event loop returned them.
    events: mpsc::UnboundedReceiver<(Instant, Event)>,
    /// The polling task.
    task: tokio::task::JoinHandle<()>,
}

impl BarePublisher {
    /// Connects and waits for the CONNACK.
    pub async fn connect(broker: &DevBroker, cn: &str, window: u16) -> BarePublisher {
        let creds = broker.issue_client(cn).expect("client certificate");
        let mut opts = broker
            .mqtt_options(cn, &creds, KEEP_ALIVE)
            .expect("MQTT options");
        opts.set_inflight(window);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        if nodelay() {
            let mut net = rumqttc::NetworkOptions::new();
            net.set_tcp_nodelay(true);
            eventloop.set_network_options(net);
        }
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(poll(eventloop, tx));
        let mut p = BarePublisher {
            client,
            topic: format!("facegate/{}/{cn}/captures", support::SITE),
            events,
            task,
        };
        loop {
            if let (_, Event::Incoming(Packet::ConnAck(_))) = p.next().await {
                return p;
            }
        }
    }

    /// The next event (panics if the connection ended or after 30 s without one).
    pub async fn next(&mut self) -> (Instant, Event) {
        tokio::time::timeout(Duration::from_secs(30), self.events.recv())
            .await
            .expect("bare publisher: no event within 30 s")
            .expect("bare publisher: connection ended")
    }

    /// Waits for the next PUBACK; returns when it was polled.
    pub async fn next_puback(&mut self) -> Instant {
        loop {
            if let (at, Event::Incoming(Packet::PubAck(_))) = self.next().await {
                return at;
            }
        }
    }

    /// The next PUBLISH on `topic` (others are skipped; panics after 30 s).
    pub async fn recv_on(&mut self, topic: &str) -> Publish {
        loop {
            if let (_, Event::Incoming(Packet::Publish(p))) = self.next().await {
                if p.topic == topic {
                    return p;
                }
            }
        }
    }

    /// Subscribes to `topic` (QoS 1) and waits for the SUBACK.
    pub async fn subscribe(&mut self, topic: &str) {
        self.client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            if let (_, Event::Incoming(Packet::SubAck(_))) = self.next().await {
                return;
            }
        }
    }
}

impl Drop for BarePublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn poll(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<(Instant, Event)>) {
    loop {
        match eventloop.poll().await {
            Ok(ev) => {
                if tx.send((Instant::now(), ev)).is_err() {
                    return;
                }
            }
            Err(e) => {
                eprintln!("bare publisher: connection error: {e}");
                return;
            }
        }
    }
}

/// QoS 1 publish of `payload` on the publisher's topic (waits only for room in
/// rumqttc's request channel).
pub async fn publish(p: &BarePublisher, payload: Vec<u8>) {
    p.client
        .publish(p.topic.clone(), QoS::AtLeastOnce, false, payload)
        .await
        .expect("bare publish");
}
