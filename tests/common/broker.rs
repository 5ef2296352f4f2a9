//! Test harness: a private Mosquitto 2 broker with mutual TLS, plus MQTT client helpers.
//!
//! [`Broker`] is [`facegate::devbroker::DevBroker`] (throwaway CA, server certificate
//! for `localhost` and `127.0.0.1`, ACL, free port, persistence) with panicking
//! methods, so tests read as plain steps. Field access (`port`, `dir`, `ca`,
//! `ca_file`) goes through to the `DevBroker`.
//!
//! ```ignore
//! let broker = Broker::start();
//! let mut fleet = Session::spawn(broker.options("fleet"));
//! fleet.wait_connected(T).await.unwrap();
//! fleet.client.subscribe("facegate/#", QoS::AtLeastOnce).await.unwrap();
//! fleet.wait_suback(T).await;
//! ```

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use facegate::devbroker::{self, DevBroker, DevBrokerOptions};
use facegate::uplink::tls;
use rumqttc::{
    AsyncClient, ConnAck, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Publish, SubAck,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Keep-alive used by test clients: short, so dead connections are noticed quickly.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Largest MQTT packet the broker and the test clients accept (16 MiB).
pub const MAX_PACKET: usize = devbroker::MAX_PACKET;

/// How to set up the broker.
pub type BrokerOptions = DevBrokerOptions;

/// The files a client needs for mutual TLS with this broker.
#[derive(Debug, Clone)]
pub struct ClientCreds {
    /// CA certificate the client trusts (the broker's CA unless a test changes it).
    pub ca: PathBuf,
    /// Client certificate (CN = MQTT user name).
    pub cert: PathBuf,
    /// Client private key (mode 0600).
    pub key: PathBuf,
}

impl ClientCreds {
    /// The rustls configuration for these files, via the product code.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        tls::client_config(&self.ca, &self.cert, &self.key).expect("client TLS config")
    }
}

impl From<devbroker::ClientCreds> for ClientCreds {
    fn from(c: devbroker::ClientCreds) -> Self {
        ClientCreds {
            ca: c.ca,
            cert: c.cert,
            key: c.key,
        }
    }
}

/// A running (or stopped) private Mosquitto; panics where [`DevBroker`] returns errors.
pub struct Broker {
    inner: DevBroker,
}

impl Deref for Broker {
    type Target = DevBroker;
    fn deref(&self) -> &DevBroker {
        &self.inner
    }
}

impl Broker {
    /// Starts a broker with the default options (server certificate for localhost).
    pub fn start() -> Broker {
        Broker::start_with(BrokerOptions::default())
    }

    /// Starts a broker; panics (with the Mosquitto log) if it does not come up.
    pub fn start_with(opts: BrokerOptions) -> Broker {
        let inner = DevBroker::start(opts).unwrap_or_else(|e| panic!("{e}"));
        Broker { inner }
    }

    /// Issues a client certificate `cn` valid from an hour ago for a day.
    pub fn issue_client(&self, cn: &str) -> ClientCreds {
        self.inner
            .issue_client(cn)
            .expect("client certificate")
            .into()
    }

    /// Issues a client certificate `cn` with explicit validity (unix seconds); a
    /// `not_after` in the past gives an expired certificate.
    pub fn issue_client_valid(&self, cn: &str, not_before: i64, not_after: i64) -> ClientCreds {
        self.inner
            .issue_client_valid(cn, not_before, not_after)
            .expect("client certificate")
            .into()
    }

    /// MQTT options for client `cn` (client id = `cn`, host `localhost`, persistent
    /// session, 5 s keep-alive) with a fresh certificate; rewrites `clients/{cn}.*`
    /// (configurations already loaded from them are unaffected).
    pub fn options(&self, cn: &str) -> MqttOptions {
        let creds = self.issue_client(cn);
        self.options_for(cn, "localhost", &creds)
    }

    /// MQTT options for client id `client_id` connecting to `host` with `creds`.
    pub fn options_for(&self, client_id: &str, host: &str, creds: &ClientCreds) -> MqttOptions {
        tls::mqtt_options(
            client_id,
            host,
            self.port,
            KEEP_ALIVE,
            MAX_PACKET,
            creds.tls(),
        )
        .expect("MQTT options")
    }

    /// A raw rumqttc client for `cn` (the caller polls the event loop).
    pub fn client(&self, cn: &str) -> (AsyncClient, EventLoop) {
        AsyncClient::new(self.options(cn), 64)
    }

    /// Stops the broker gracefully (SIGTERM), so it saves its persistence file.
    pub fn stop(&mut self) {
        self.inner.stop();
    }

    /// Kills the broker (SIGKILL): state changed in the last second may be lost.
    pub fn kill(&mut self) {
        self.inner.kill();
    }

    /// Stops (gracefully) if running, then starts again on the same port with the
    /// same directory, certificates and persistence.
    pub fn restart(&mut self) {
        if let Err(e) = self.inner.restart() {
            panic!("{e}");
        }
    }

    /// Whether the Mosquitto process is running.
    pub fn is_running(&mut self) -> bool {
        self.inner.is_running()
    }
}

/// An MQTT client whose event loop runs in a task; events arrive on a channel.
/// The loop stops at the first connection error (which is delivered), so a test
/// sees exactly one connection attempt per [`Session::spawn`].
pub struct Session {
    /// Send requests (publish, subscribe, disconnect) here.
    pub client: AsyncClient,
    /// Events from the event loop, ending with the error that stopped it, if any.
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    /// The task polling the event loop; aborting it drops the connection without
    /// an MQTT DISCONNECT (the broker then publishes the last will).
    task: JoinHandle<()>,
}

impl Session {
    /// Starts polling a new client with `options`.
    pub fn spawn(options: MqttOptions) -> Session {
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let stop = event.is_err();
                if tx.send(event).is_err() || stop {
                    break;
                }
            }
        });
        Session {
            client,
            events,
            task,
        }
    }

    /// Next event, or `None` after `timeout` or once the loop has ended.
    pub async fn next(&mut self, timeout: Duration) -> Option<Result<Event, ConnectionError>> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for the CONNACK, or returns the error that ended the connection attempt.
    pub async fn wait_connected(&mut self, timeout: Duration) -> Result<ConnAck, ConnectionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Ok(Event::Incoming(Incoming::ConnAck(ack)))) => return Ok(ack),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => return Err(ConnectionError::NetworkTimeout),
            }
        }
    }

    /// Waits for the next SUBACK; panics on timeout or connection error.
    pub async fn wait_suback(&mut self, timeout: Duration) -> SubAck {
        self.wait_for(timeout, "SUBACK", |p| match p {
            Incoming::SubAck(ack) => Some(ack),
            _ => None,
        })
        .await
        .expect("SUBACK")
    }

    /// Waits for the next PUBACK; panics on connection error, `None` on timeout.
    pub async fn wait_puback(&mut self, timeout: Duration) -> Option<u16> {
        self.wait_for(timeout, "PUBACK", |p| match p {
            Incoming::PubAck(ack) => Some(ack.pkid),
            _ => None,
        })
        .await
    }

    /// Next incoming PUBLISH within `timeout`, or `None`.
    pub async fn recv_publish(&mut self, timeout: Duration) -> Option<Publish> {
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

    async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pick: impl FnMut(Incoming) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Ok(Event::Incoming(packet))) => {
                    if let Some(found) = pick(packet) {
                        return Some(found);
                    }
                }
                Some(Ok(Event::Outgoing(_))) => {}
                Some(Err(e)) => panic!("connection failed while waiting for {what}: {e}"),
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

/// Polls a fresh client until its first connection attempt fails, and returns the
/// error; panics if it connects instead.
pub async fn connect_error(options: MqttOptions, timeout: Duration) -> ConnectionError {
    let mut session = Session::spawn(options);
    match session.wait_connected(timeout).await {
        Ok(ack) => panic!("expected the connection to fail, got {ack:?}"),
        Err(e) => e,
    }
}
