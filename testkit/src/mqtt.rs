//! An MQTT client whose event loop runs in a task: the fleet back-end, a device,
//! or the bare-rumqttc baseline of a benchmark. Every event is stamped with the
//! instant the event loop returned it, so benchmarks time what the client saw.
//!
//! ```ignore
//! let mut fleet = Session::spawn(broker.options("fleet"));
//! fleet.wait_connected(T).await.expect("fleet connects");
//! fleet.subscribe("facegate/#", T).await;
//! let upload = fleet.recv_on("facegate/lobby/term-01/captures", T).await;
//! ```

use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnAck, ConnectionError, Event, EventLoop, Incoming, MqttOptions, NetworkOptions,
    Publish, QoS, SubAck,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One event as the event loop returned it, with when.
type Stamped = (Instant, Result<Event, ConnectionError>);

/// How a [`Session`]'s event loop behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionOptions {
    /// Keep polling after a connection error (rumqttc reconnects, 200 ms apart),
    /// for a client that must outlive a broker restart. Off: the loop stops at the
    /// first error, so a test sees exactly one connection attempt.
    pub reconnect: bool,
    /// Set TCP_NODELAY on the client's socket.
    pub tcp_nodelay: bool,
}

/// An MQTT client with its event loop in a task; events arrive on a channel.
pub struct Session {
    /// The request side: publish, subscribe, disconnect.
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Stamped>,
    task: JoinHandle<()>,
    reconnect: bool,
}

impl Session {
    /// Starts polling a fresh client; the loop ends at the first connection error
    /// (which is delivered).
    pub fn spawn(options: MqttOptions) -> Session {
        Session::spawn_with(options, SessionOptions::default())
    }

    /// Starts polling a fresh client that keeps reconnecting after errors.
    pub fn spawn_reconnecting(options: MqttOptions) -> Session {
        Session::spawn_with(
            options,
            SessionOptions {
                reconnect: true,
                ..SessionOptions::default()
            },
        )
    }

    /// Starts polling a fresh client set up as `how` says.
    pub fn spawn_with(options: MqttOptions, how: SessionOptions) -> Session {
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        if how.tcp_nodelay {
            let mut net = NetworkOptions::new();
            net.set_tcp_nodelay(true);
            eventloop.set_network_options(net);
        }
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(poll(eventloop, tx, how.reconnect));
        Session {
            client,
            events,
            task,
            reconnect: how.reconnect,
        }
    }

    /// Next event, or `None` after `timeout` or once the loop has ended.
    pub async fn next(&mut self, timeout: Duration) -> Option<Result<Event, ConnectionError>> {
        let (_, event) = self.next_stamped(timeout).await?;
        Some(event)
    }

    /// Next event with the instant it was polled, or `None` (timeout, loop ended).
    pub async fn next_stamped(&mut self, timeout: Duration) -> Option<Stamped> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for the CONNACK, or returns the error that ended the connection
    /// attempt (a reconnecting session skips errors and keeps waiting).
    pub async fn wait_connected(&mut self, timeout: Duration) -> Result<ConnAck, ConnectionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Ok(Event::Incoming(Incoming::ConnAck(ack)))) => return Ok(ack),
                Some(Ok(_)) => continue,
                Some(Err(_)) if self.reconnect => continue,
                Some(Err(e)) => return Err(e),
                None => return Err(ConnectionError::NetworkTimeout),
            }
        }
    }

    /// Subscribes to `filter` at QoS 1 and waits for the SUBACK; panics on
    /// timeout or connection error.
    pub async fn subscribe(&mut self, filter: &str, timeout: Duration) -> SubAck {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap_or_else(|e| panic!("subscribe to {filter}: {e}"));
        self.wait_suback(timeout).await
    }

    /// Publishes `payload` on `topic` at QoS 1 (not retained); waits only for room
    /// in rumqttc's request channel.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap_or_else(|e| panic!("publish on {topic}: {e}"));
    }

    /// Waits for the next SUBACK; panics on timeout or connection error.
    pub async fn wait_suback(&mut self, timeout: Duration) -> SubAck {
        self.wait_for(timeout, "SUBACK", |p| match p {
            Incoming::SubAck(ack) => Some(ack),
            _ => None,
        })
        .await
        .map(|(_, ack)| ack)
        .expect("SUBACK")
    }

    /// Waits for the next PUBACK; panics on connection error, `None` on timeout.
    pub async fn wait_puback(&mut self, timeout: Duration) -> Option<u16> {
        self.wait_puback_stamped(timeout)
            .await
            .map(|(_, pkid)| pkid)
    }

    /// The next PUBACK with the instant it was polled, or `None` on timeout.
    pub async fn wait_puback_stamped(&mut self, timeout: Duration) -> Option<(Instant, u16)> {
        self.wait_for(timeout, "PUBACK", |p| match p {
            Incoming::PubAck(ack) => Some(ack.pkid),
            _ => None,
        })
        .await
    }

    /// Next incoming PUBLISH within `timeout`, or `None`.
    pub async fn recv_publish(&mut self, timeout: Duration) -> Option<Publish> {
        self.recv_publish_stamped(timeout).await.map(|(_, p)| p)
    }

    /// Next incoming PUBLISH with the instant it was polled, or `None`.
    pub async fn recv_publish_stamped(&mut self, timeout: Duration) -> Option<(Instant, Publish)> {
        self.wait_for(timeout, "PUBLISH", |p| match p {
            Incoming::Publish(publish) => Some(publish),
            _ => None,
        })
        .await
    }

    /// Next PUBLISH on `topic` within `timeout` (others are skipped), or `None`.
    pub async fn recv_on(&mut self, topic: &str, timeout: Duration) -> Option<Publish> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let publish = self.recv_publish(left).await?;
            if publish.topic == topic {
                return Some(publish);
            }
        }
    }

    /// Drops the connection without an MQTT DISCONNECT, as a crash would.
    pub fn kill(self) {
        self.task.abort();
    }

    /// The first incoming packet `pick` accepts, with when it was polled; panics on
    /// a connection error unless the session reconnects.
    async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pick: impl FnMut(Incoming) -> Option<T>,
    ) -> Option<(Instant, T)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_stamped(left).await {
                Some((at, Ok(Event::Incoming(packet)))) => {
                    if let Some(found) = pick(packet) {
                        return Some((at, found));
                    }
                }
                Some((_, Ok(Event::Outgoing(_)))) => {}
                Some((_, Err(_))) if self.reconnect => {}
                Some((_, Err(e))) => panic!("connection failed while waiting for {what}: {e}"),
                None => return None,
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls until the receiver is gone; stops at the first error unless `reconnect`.
async fn poll(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Stamped>, reconnect: bool) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if tx.send((Instant::now(), event)).is_err() || (failed && !reconnect) {
            return;
        }
        if failed {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Polls a fresh client until its first connection attempt fails, and returns the
/// error; panics if it connects instead.
pub async fn connect_error(options: MqttOptions, timeout: Duration) -> ConnectionError {
    let mut session = Session::spawn(options);
    match session.wait_connected(timeout).await {
        Ok(ack) => panic!("expected the connection to fail, got {ack:?}"),
        Err(e) => e,
    }
}

/// Upload envelopes as a back-end receives them: every message kept as it
/// came (`messages`), parts joined by the product's
/// [`facegate::protocol::Reassembler`] (which checks the whole `sha256`),
/// and each capture kept once, whole, by `capture_id` (`captures`).
#[derive(Debug, Default)]
pub struct Uploads {
    /// Every upload message received, in arrival order.
    pub messages: Vec<facegate::protocol::Envelope>,
    /// Each capture once, whole, by `capture_id`.
    pub captures: std::collections::HashMap<String, facegate::protocol::Envelope>,
    /// Capture ids in the order they were completed.
    pub order: Vec<String>,
    reassembler: facegate::protocol::Reassembler,
}

impl Uploads {
    /// Nothing received yet.
    pub fn new() -> Uploads {
        Uploads::default()
    }

    /// Takes one message of a captures topic; returns the capture it
    /// completes, if any. Panics on a message that is not an envelope or
    /// whose parts do not make the image its `sha256` names.
    pub fn take(&mut self, payload: &[u8]) -> Option<facegate::protocol::Envelope> {
        let env = facegate::protocol::Envelope::from_bytes(payload)
            .unwrap_or_else(|e| panic!("not an upload envelope: {e}"));
        self.messages.push(env.clone());
        let whole = self
            .reassembler
            .add(env)
            .unwrap_or_else(|e| panic!("upload refused by the reassembler: {e}"))?;
        self.order.push(whole.capture_id.clone());
        self.captures
            .insert(whole.capture_id.clone(), whole.clone());
        Some(whole)
    }

    /// Receives on `topic` until `n` distinct captures are complete or
    /// `wait` has passed; returns whether `n` were reached.
    pub async fn collect(
        &mut self,
        session: &mut Session,
        topic: &str,
        n: usize,
        wait: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while self.captures.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let Some(p) = session.recv_on(topic, left).await else {
                return false;
            };
            self.take(&p.payload);
        }
        true
    }

    /// The messages received for `capture_id` as (part, parts), in arrival order.
    pub fn parts_of(&self, capture_id: &str) -> Vec<(Option<u32>, Option<u32>)> {
        self.messages
            .iter()
            .filter(|e| e.capture_id == capture_id)
            .map(|e| (e.part, e.parts))
            .collect()
    }
}
