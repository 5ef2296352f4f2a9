//! Test harness: a private Mosquitto 2 broker with mutual TLS, plus MQTT client helpers.
//!
//! [`Broker::start`] makes a throwaway CA, a server certificate for `localhost` and
//! `127.0.0.1`, writes `mosquitto.conf` and an ACL into a temporary directory, starts
//! Mosquitto on a free port of 127.0.0.1 and waits until it accepts connections.
//! Clients authenticate with certificates from [`Broker::issue_client`]; the certificate
//! common name becomes the MQTT user name (`use_identity_as_username`), which the ACL
//! uses:
//!
//! - a device `D` may publish `facegate/+/D/{captures,reply,status}` and read
//!   `facegate/+/D/cmd` and `facegate/+/cmd`;
//! - the user `fleet` may read `facegate/#` and publish `facegate/+/cmd` and
//!   `facegate/+/+/cmd`.
//!
//! Persistence is on (saved every second and on [`Broker::stop`]), so persistent
//! sessions and retained messages survive [`Broker::restart`]. Dropping the broker
//! kills the process. Any system Mosquitto on 1883 is left alone.
//!
//! ```ignore
//! let broker = Broker::start();
//! let mut fleet = Session::spawn(broker.options("fleet"));
//! fleet.wait_connected(T).await.unwrap();
//! fleet.client.subscribe("facegate/#", QoS::AtLeastOnce).await.unwrap();
//! fleet.wait_suback(T).await;
//! ```

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use facegate::clock;
use facegate::pki::Ca;
use facegate::uplink::tls;
use rumqttc::{
    AsyncClient, ConnAck, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Publish, SubAck,
};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Keep-alive used by test clients: short, so dead connections are noticed quickly.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Largest MQTT packet the broker and the test clients accept (16 MiB).
pub const MAX_PACKET: usize = 16 * 1024 * 1024;
/// How long to wait for the broker to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How to set up the broker.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Names (DNS or IP) in the broker's server certificate; change them to test
    /// server-name verification.
    pub server_names: Vec<String>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
        }
    }
}

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

/// A running (or stopped) private Mosquitto.
pub struct Broker {
    /// TCP port of the TLS listener on 127.0.0.1.
    pub port: u16,
    /// Directory with config, certificates, ACL, log and persistence; removed on drop.
    pub dir: TempDir,
    /// The CA that signed the server certificate and signs client certificates.
    pub ca: Ca,
    /// The broker's CA certificate file, the `ca_file` of clients.
    pub ca_file: PathBuf,
    /// The Mosquitto process while it runs.
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker with the default options (server certificate for localhost).
    pub fn start() -> Broker {
        Broker::start_with(BrokerOptions::default())
    }

    /// Starts a broker; panics (with the Mosquitto log) if it does not come up.
    pub fn start_with(opts: BrokerOptions) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("facegate test CA").expect("CA");
        let ca_file = ca.write_cert(dir.path(), "ca").expect("write CA");
        let now = clock::now();
        let names: Vec<&str> = opts.server_names.iter().map(String::as_str).collect();
        let server = ca
            .issue_server(&names, now - 3600, now + 86_400)
            .expect("server certificate");
        server
            .write(dir.path(), "server")
            .expect("write server cert");
        fs::create_dir_all(dir.path().join("clients")).expect("clients dir");
        fs::create_dir_all(dir.path().join("data")).expect("data dir");
        write_acl(&dir.path().join("acl"));

        let mut broker = Broker {
            port: 0,
            dir,
            ca,
            ca_file,
            child: None,
        };
        let mut last_log = String::new();
        for _attempt in 0..5 {
            broker.port = free_port();
            write_config(broker.dir.path(), broker.port);
            match broker.spawn_and_wait() {
                Ok(()) => return broker,
                // Someone took the port between our probe and Mosquitto's bind: retry.
                Err(log) if log.contains("Address already in use") => last_log = log,
                Err(log) => panic!("mosquitto did not start on port {}:\n{log}", broker.port),
            }
        }
        panic!("mosquitto found no free port:\n{last_log}");
    }

    /// Issues a client certificate `cn` valid from an hour ago for a day.
    pub fn issue_client(&self, cn: &str) -> ClientCreds {
        let now = clock::now();
        self.issue_client_valid(cn, now - 3600, now + 86_400)
    }

    /// Issues a client certificate `cn` with explicit validity (unix seconds); a
    /// `not_after` in the past gives an expired certificate.
    pub fn issue_client_valid(&self, cn: &str, not_before: i64, not_after: i64) -> ClientCreds {
        let issued = self
            .ca
            .issue_client(cn, not_before, not_after)
            .expect("client certificate");
        let (cert, key) = issued
            .write(&self.dir.path().join("clients"), cn)
            .expect("write client cert");
        ClientCreds {
            ca: self.ca_file.clone(),
            cert,
            key,
        }
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

    /// The Mosquitto log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Stops the broker gracefully (SIGTERM), so it saves its persistence file.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills the broker (SIGKILL): state changed in the last second may be lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (gracefully) if running, then starts again on the same port with the
    /// same directory, certificates and persistence.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.spawn_and_wait() {
            panic!("mosquitto did not restart on port {}:\n{log}", self.port);
        }
    }

    /// Whether the Mosquitto process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Starts Mosquitto with the config in `dir` and waits until it listens.
    /// On failure returns the log (and stderr) content.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let stderr = fs::File::create(dir.join("mosquitto.stderr")).expect("stderr file");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run mosquitto (see scripts/ensure-mosquitto): {e}"));
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        let running_lines = |log: &str| log.matches(" running").count();
        let started_before = running_lines(&self.log());
        loop {
            if !self.is_running() {
                self.child = None;
                return Err(self.failure_report("mosquitto exited"));
            }
            // Our own instance announces itself in the log once its listener is open;
            // the TCP probe confirms it (the port is not someone else's).
            let announced = running_lines(&self.log()) > started_before;
            if announced && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(self.failure_report("timed out waiting for the listener"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn failure_report(&self, what: &str) -> String {
        let stderr =
            fs::read_to_string(self.dir.path().join("mosquitto.stderr")).unwrap_or_default();
        format!(
            "{what}\n--- mosquitto.log ---\n{}\n--- stderr ---\n{stderr}",
            self.log()
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// `mosquitto` from PATH, else the Debian location.
fn mosquitto_binary() -> PathBuf {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("mosquitto");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("/usr/sbin/mosquitto")
}

fn write_config(dir: &Path, port: u16) {
    let p = |name: &str| dir.join(name).display().to_string();
    let conf = format!(
        "# Private test broker: mutual TLS, identity from the client certificate CN.\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         acl_file {acl}\n\
         persistence true\n\
         persistence_location {data}/\n\
         autosave_interval 1\n\
         max_packet_size {max}\n\
         user root\n\
         log_dest file {log}\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         log_type subscribe\n\
         connection_messages true\n\
         log_timestamp true\n\
         \n\
         listener {port} 127.0.0.1\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         tls_version tlsv1.2\n",
        acl = p("acl"),
        data = p("data"),
        max = MAX_PACKET,
        log = p("mosquitto.log"),
        ca = p("ca.pem"),
        cert = p("server.pem"),
        key = p("server.key"),
    );
    fs::write(dir.join("mosquitto.conf"), conf).expect("write mosquitto.conf");
}

fn write_acl(path: &Path) {
    let acl = "\
# The fleet back-end reads everything and sends commands.
user fleet
topic read facegate/#
topic write facegate/+/cmd
topic write facegate/+/+/cmd

# Every device (user name = certificate CN) owns its own topics only.
pattern write facegate/+/%u/captures
pattern write facegate/+/%u/reply
pattern write facegate/+/%u/status
pattern read facegate/+/%u/cmd
pattern read facegate/+/cmd
";
    fs::write(path, acl).expect("write acl");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod acl");
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
