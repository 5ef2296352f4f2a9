//! The dev broker: a throwaway local Mosquitto 2 with mutual TLS, for the demo,
//! benchmarks and integration tests. Never for production: the CA key lives in memory
//! and every file lives in a temporary directory that is removed with the broker.
//!
//! [`Broker::start`] makes a fresh CA, a server certificate for the configured names
//! (default `localhost` and `127.0.0.1`), writes `mosquitto.conf` and an ACL into a
//! temporary directory, starts Mosquitto on a free port of 127.0.0.1 and waits until
//! it accepts connections. Clients authenticate with certificates from
//! [`Broker::issue_client`]; the certificate common name becomes the MQTT user name
//! (`use_identity_as_username`) and the client id (`use_username_as_clientid`:
//! whatever id a client asks for, a certificate is always the session named by its
//! CN). The ACL is the shipped layout, written by the product's own generator
//! ([`facegate::fleet::acl::generate`], what `facegate fleet acl` prints) for the
//! inventory in [`BrokerOptions::acl`] (by default the devices `term-01`..`term-03`
//! of site `lobby`, devices `a-01`, `a-02` of site `site-a` and `b-01` of
//! `site-b`, and the fleet users `fleet`, `fleet-2` and `fleet-3`):
//!
//! - a device `D` of site `S` may publish `facegate/S/D/{captures,reply,status}`
//!   and read `facegate/S/D/cmd`, `facegate/S/cmd` and `facegate/S/consent/head`;
//! - a fleet user may read `facegate/#` and publish commands and consent heads.
//!
//! Since the CN is the client id, two connections with one certificate take
//! each other's session over: a test that needs two fleet connections at once
//! uses `fleet` and `fleet-2`.
//!
//! Persistence is on, saved every second (`persistence true`,
//! `autosave_interval 1`, the time-based setting of docs/OPERATIONS.md "Broker
//! durability") and on [`Broker::stop`], so persistent sessions, their queued
//! messages and retained messages survive [`Broker::restart`], and
//! [`Broker::kill`] loses at most the last second. Not `autosave_on_changes`:
//! with Mosquitto 2.0.11 it broke deliveries under a burst of QoS 1 messages
//! (`tests/ingress.rs`, the flood of forged commands: replies stalled). Dropping
//! the broker kills the process. Any system Mosquitto on 1883 is left alone.
//!
//! Like the rest of the testkit, the methods panic with the Mosquitto log when
//! something goes wrong; [`Broker::try_start`] returns the error instead, for a
//! caller that explains a missing Mosquitto itself.
//!
//! ```ignore
//! let broker = Broker::start();
//! let mut fleet = Session::spawn(broker.options("fleet"));
//! fleet.wait_connected(T).await.unwrap();
//! fleet.subscribe("facegate/#", T).await;
//! ```

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use facegate::clock;
use facegate::fleet::acl::{self, FleetUser};
use facegate::uplink::tls;
use rumqttc::MqttOptions;
use tempfile::TempDir;

use crate::pki::{Ca, PkiError, CA_VALIDITY_SECS};
use crate::util;

/// Largest MQTT packet the broker and the helper clients accept (16 MiB).
pub const MAX_PACKET: usize = 16 * 1024 * 1024;
/// Keep-alive of the helper clients: short, so dead connections are noticed quickly.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How long to wait for the broker to accept connections after starting it.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports to try when another program grabs the probed one first.
const PORT_ATTEMPTS: usize = 5;
/// How many lines of the Mosquitto log an error message carries.
const LOG_TAIL_LINES: usize = 30;
/// What to tell someone without a Mosquitto binary.
const INSTALL_HINT: &str = "install the mosquitto package (scripts/ensure-mosquitto)";

/// Why the broker could not be set up or started.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No Mosquitto binary in PATH nor at the Debian location.
    #[error("mosquitto not found in PATH nor at {fallback}: {INSTALL_HINT}")]
    MosquittoMissing {
        /// The last place looked at.
        fallback: PathBuf,
    },
    /// The temporary directory could not be created.
    #[error("cannot create a temporary directory for the broker: {0}")]
    TempDir(#[source] io::Error),
    /// A file of the broker (config, ACL, log) could not be written or created.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The CA or a certificate could not be made or written.
    #[error("broker PKI: {0}")]
    Pki(#[from] PkiError),
    /// No free TCP port could be found on 127.0.0.1.
    #[error("cannot find a free port on 127.0.0.1: {0}")]
    Port(#[source] io::Error),
    /// The Mosquitto process could not be spawned.
    #[error("cannot run {binary}: {source} ({INSTALL_HINT})")]
    Spawn {
        /// The binary that was run.
        binary: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// Mosquitto exited or did not listen in time; carries the tail of its log.
    #[error("mosquitto did not start on port {port}: {reason}\n{log_tail}")]
    Start {
        /// The port it was asked to listen on.
        port: u16,
        /// What went wrong (exited, timed out).
        reason: String,
        /// The last lines of `mosquitto.log` and of its stderr.
        log_tail: String,
    },
}

/// How to set up the broker.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Names (DNS or IP) in the broker's server certificate; change them to test
    /// server-name verification.
    pub server_names: Vec<String>,
    /// Mosquitto's `max_packet_size`: a client that sends a larger packet is
    /// disconnected (default [`MAX_PACKET`]; 131072 is AWS IoT Core's limit).
    pub max_packet_size: usize,
    /// Mosquitto's `message_size_limit` (0, the default: none): a PUBLISH
    /// with a larger payload is not accepted; an MQTT 5 client gets an
    /// error-code PUBACK for it, a 3.1.1 client a plain PUBACK.
    pub message_size_limit: usize,
    /// The ACL file.
    pub acl: BrokerAcl,
    /// `use_username_as_clientid` (the shipped setting, on by default): the
    /// certificate CN is the client id. Off only to show what it prevents.
    pub client_id_from_certificate: bool,
    /// Mosquitto's `max_queued_messages` (its default, 1000, when `None`):
    /// QoS 1 messages queued per offline client beyond it are dropped.
    pub max_queued_messages: Option<usize>,
    /// When the CA and the server certificate start being valid (unix
    /// seconds; an hour ago when `None`): earlier for a client whose clock
    /// is set back (a database written on an earlier date, libfaketime).
    pub valid_from: Option<i64>,
}

/// The broker's ACL.
#[derive(Debug, Clone)]
pub enum BrokerAcl {
    /// The shipped layout, from the product's generator for this inventory.
    Shipped {
        /// `(site, device)` pairs.
        devices: Vec<(String, String)>,
        /// Fleet users with rights over every site.
        fleet: Vec<String>,
    },
    /// This text as it is (for example a permissive ACL a test shows is caught).
    Custom(String),
}

impl BrokerAcl {
    /// The default inventory (see the module docs).
    pub fn shipped() -> BrokerAcl {
        let devices = [
            ("lobby", "term-01"),
            ("lobby", "term-02"),
            ("lobby", "term-03"),
            ("site-a", "a-01"),
            ("site-a", "a-02"),
            ("site-b", "b-01"),
        ];
        BrokerAcl::Shipped {
            devices: devices
                .iter()
                .map(|(s, d)| (s.to_string(), d.to_string()))
                .collect(),
            fleet: ["fleet", "fleet-2", "fleet-3"].map(String::from).to_vec(),
        }
    }

    /// The pattern ACL the project documented before the generated layout:
    /// device rights keyed by the user name only, so any site matches. Tests
    /// show the attacks it allows and that `doctor` catches it.
    pub fn old_pattern() -> BrokerAcl {
        BrokerAcl::Custom(
            "\
user fleet
topic read facegate/#
topic write facegate/+/cmd
topic write facegate/+/+/cmd

pattern write facegate/+/%u/captures
pattern write facegate/+/%u/reply
pattern write facegate/+/%u/status
pattern read facegate/+/%u/cmd
pattern read facegate/+/cmd
"
            .into(),
        )
    }

    /// The ACL file's text.
    pub fn text(&self) -> String {
        match self {
            BrokerAcl::Custom(text) => text.clone(),
            BrokerAcl::Shipped { devices, fleet } => {
                let inventory: String = devices
                    .iter()
                    .map(|(site, device)| format!("{site} {device}\n"))
                    .collect();
                let users: Vec<FleetUser> = fleet
                    .iter()
                    .map(|f| FleetUser::parse(f).unwrap_or_else(|e| panic!("{e}")))
                    .collect();
                acl::generate(&inventory, "facegate", &users).unwrap_or_else(|e| panic!("{e}"))
            }
        }
    }
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            acl: BrokerAcl::shipped(),
            client_id_from_certificate: true,
            max_packet_size: MAX_PACKET,
            message_size_limit: 0,
            max_queued_messages: None,
            valid_from: None,
        }
    }
}

/// The files a client needs for mutual TLS with a broker.
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
    /// The broker options of `facegate fleet …` for these files on `broker`:
    /// `--broker localhost:PORT --ca … --cert … --tls-key …`.
    pub fn fleet_args(&self, broker: &Broker) -> Vec<std::ffi::OsString> {
        vec![
            "--broker".into(),
            format!("localhost:{}", broker.port).into(),
            "--ca".into(),
            self.ca.clone().into(),
            "--cert".into(),
            self.cert.clone().into(),
            "--tls-key".into(),
            self.key.clone().into(),
        ]
    }

    /// The rustls configuration for these files, built by the product code.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        tls::client_config(&self.ca, &self.cert, &self.key)
            .unwrap_or_else(|e| panic!("client TLS config from {}: {e}", self.cert.display()))
    }
}

/// A running (or stopped) private Mosquitto and its files.
pub struct Broker {
    /// TCP port of the TLS listener on 127.0.0.1; stays the same across restarts.
    pub port: u16,
    /// Directory with config, certificates, ACL, log and persistence; removed on drop.
    pub dir: TempDir,
    /// The CA that signed the server certificate and signs client certificates.
    pub ca: Ca,
    /// The broker's CA certificate file, the `ca_file` of clients.
    pub ca_file: PathBuf,
    /// The Mosquitto binary used to (re)start the broker.
    binary: PathBuf,
    /// The Mosquitto process while it runs.
    child: Option<Child>,
}

impl Broker {
    /// The Mosquitto process id while it runs (for its CPU time in `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts a broker with the default options (server certificate for localhost).
    pub fn start() -> Broker {
        Broker::start_with(BrokerOptions::default())
    }

    /// Starts a broker; panics (with the Mosquitto log) if it does not come up.
    pub fn start_with(opts: BrokerOptions) -> Broker {
        Broker::try_start(opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Makes the PKI and config, starts Mosquitto on a free port and waits until it
    /// listens. Fails with the log tail if it does not come up.
    pub fn try_start(opts: BrokerOptions) -> Result<Broker, BrokerError> {
        let binary = mosquitto_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("facegate-broker-")
            .tempdir()
            .map_err(BrokerError::TempDir)?;
        let now = clock::now();
        let from = opts.valid_from.unwrap_or(now - 3600);
        let ca = Ca::with_validity("facegate dev CA", from, now + CA_VALIDITY_SECS)?;
        let ca_file = ca.write_cert(dir.path(), "ca")?;
        let names: Vec<&str> = opts.server_names.iter().map(String::as_str).collect();
        ca.issue_server(&names, from, now + 86_400)?
            .write(dir.path(), "server")?;
        for sub in ["clients", "data"] {
            let path = dir.path().join(sub);
            fs::create_dir_all(&path).map_err(|source| BrokerError::Write { path, source })?;
        }
        write_acl(&dir.path().join("acl"), &opts.acl.text())?;

        let mut broker = Broker {
            port: 0,
            dir,
            ca,
            ca_file,
            binary,
            child: None,
        };
        let mut last = None;
        for _attempt in 0..PORT_ATTEMPTS {
            broker.port = util::try_free_port().map_err(BrokerError::Port)?;
            write_config(
                broker.dir.path(),
                broker.port,
                opts.max_packet_size,
                opts.message_size_limit,
                opts.client_id_from_certificate,
                opts.max_queued_messages,
            )?;
            match broker.spawn_and_wait() {
                Ok(()) => return Ok(broker),
                // Someone took the port between our probe and Mosquitto's bind: retry.
                Err(BrokerError::Start { log_tail, .. })
                    if log_tail.contains("Address already in use") =>
                {
                    last = Some(log_tail)
                }
                Err(e) => return Err(e),
            }
        }
        Err(BrokerError::Start {
            port: broker.port,
            reason: format!("every one of {PORT_ATTEMPTS} free ports was taken"),
            log_tail: last.unwrap_or_default(),
        })
    }

    /// Issues a client certificate `cn` valid from an hour ago for a day, written to
    /// `clients/{cn}.pem` and `clients/{cn}.key` (an earlier one of that name is replaced).
    pub fn issue_client(&self, cn: &str) -> ClientCreds {
        let now = clock::now();
        self.issue_client_valid(cn, now - 3600, now + 86_400)
    }

    /// Issues a client certificate `cn` with explicit validity (unix seconds); a
    /// `not_after` in the past gives an expired certificate.
    pub fn issue_client_valid(&self, cn: &str, not_before: i64, not_after: i64) -> ClientCreds {
        let written = self
            .ca
            .issue_client(cn, not_before, not_after)
            .and_then(|issued| issued.write(&self.dir.path().join("clients"), cn));
        let (cert, key) = written.unwrap_or_else(|e| panic!("client certificate {cn:?}: {e}"));
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
        .unwrap_or_else(|e| panic!("MQTT options for {client_id}: {e}"))
    }

    /// How often a client connected as `client_id`, from the log ("New client
    /// connected … as ID"): a reconnect loop shows up here.
    pub fn connections_of(&self, client_id: &str) -> usize {
        let tag = format!(" as {client_id} ");
        self.log()
            .lines()
            .filter(|l| l.contains("New client connected") && l.contains(&tag))
            .count()
    }

    /// The Mosquitto log so far (empty if there is none yet).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Stops the broker gracefully (SIGTERM), so it saves its persistence file;
    /// kills it if it has not exited after 10 s. Does nothing when not running.
    #[allow(unsafe_code)] // kill(2), see SAFETY below
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the broker (SIGKILL): what changed since the last save (at most
    /// a second ago) is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (gracefully) if running, then starts again on the same port with the
    /// same directory, certificates and persistence; panics with the log if it
    /// does not come up.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn_and_wait() {
            panic!("{e}");
        }
    }

    /// Replaces the ACL file; it applies from the next (re)start.
    pub fn set_acl(&self, acl: &BrokerAcl) {
        write_acl(&self.dir.path().join("acl"), &acl.text()).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops (gracefully) if running, deletes the persistence file, then starts
    /// again on the same port with the same directory and certificates: a
    /// broker that lost every session, subscription, queued and retained
    /// message (as one restarted without persistence, or one whose session
    /// expiry passed). Panics with the log if it does not come up.
    pub fn restart_without_persistence(&mut self) {
        self.stop();
        let data = self.dir.path().join("data");
        let entries =
            fs::read_dir(&data).unwrap_or_else(|e| panic!("reading {}: {e}", data.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            fs::remove_file(&path).unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
        }
        if let Err(e) = self.spawn_and_wait() {
            panic!("{e}");
        }
    }

    /// Whether the Mosquitto process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Starts Mosquitto with the config in `dir` and waits until it listens.
    fn spawn_and_wait(&mut self) -> Result<(), BrokerError> {
        let dir = self.dir.path();
        // Count the "running" lines before spawning: a quick Mosquitto may log
        // its own before we look, and would then never seem to have started.
        let running_lines = |log: &str| log.matches(" running").count();
        let started_before = running_lines(&self.log());
        let stderr_path = dir.join("mosquitto.stderr");
        let stderr = fs::File::create(&stderr_path).map_err(|source| BrokerError::Write {
            path: stderr_path,
            source,
        })?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => BrokerError::MosquittoMissing {
                    fallback: self.binary.clone(),
                },
                _ => BrokerError::Spawn {
                    binary: self.binary.clone(),
                    source,
                },
            })?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !self.is_running() {
                self.child = None;
                return Err(self.start_error("mosquitto exited"));
            }
            // Our own instance announces itself in the log once its listener is open;
            // the TCP probe confirms it (the port is not someone else's).
            let announced = running_lines(&self.log()) > started_before;
            if announced && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(self.start_error("timed out waiting for the listener"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// A start failure with the last lines of the log and of stderr.
    fn start_error(&self, reason: &str) -> BrokerError {
        let stderr =
            fs::read_to_string(self.dir.path().join("mosquitto.stderr")).unwrap_or_default();
        BrokerError::Start {
            port: self.port,
            reason: reason.to_string(),
            log_tail: format!(
                "--- mosquitto.log (tail) ---\n{}\n--- stderr (tail) ---\n{}",
                tail(&self.log(), LOG_TAIL_LINES),
                tail(&stderr, LOG_TAIL_LINES)
            ),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `mosquitto` from PATH, else the Debian location; an error if neither exists.
fn mosquitto_binary() -> Result<PathBuf, BrokerError> {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("mosquitto");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let fallback = PathBuf::from("/usr/sbin/mosquitto");
    if fallback.is_file() {
        Ok(fallback)
    } else {
        Err(BrokerError::MosquittoMissing { fallback })
    }
}

fn write_config(
    dir: &Path,
    port: u16,
    max_packet: usize,
    message_size_limit: usize,
    client_id_from_cn: bool,
    max_queued: Option<usize>,
) -> Result<(), BrokerError> {
    let p = |name: &str| dir.join(name).display().to_string();
    let mut conf = format!(
        "# Private throwaway broker: mutual TLS, identity from the client certificate CN.\n\
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
         tls_version tlsv1.2\n\
         set_tcp_nodelay true\n",
        acl = p("acl"),
        data = p("data"),
        max = max_packet,
        log = p("mosquitto.log"),
        ca = p("ca.pem"),
        cert = p("server.pem"),
        key = p("server.key"),
    );
    if client_id_from_cn {
        conf.push_str("use_username_as_clientid true\n");
    }
    if message_size_limit > 0 {
        conf.push_str(&format!("message_size_limit {message_size_limit}\n"));
    }
    if let Some(n) = max_queued {
        conf.push_str(&format!("max_queued_messages {n}\n"));
    }
    let path = dir.join("mosquitto.conf");
    fs::write(&path, conf).map_err(|source| BrokerError::Write { path, source })
}

fn write_acl(path: &Path, acl: &str) -> Result<(), BrokerError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| BrokerError::Write {
        path: path.to_path_buf(),
        source,
    };
    fs::write(path, acl).map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn missing_binary_error_says_how_to_install() {
        let e = BrokerError::MosquittoMissing {
            fallback: "/usr/sbin/mosquitto".into(),
        };
        assert!(e.to_string().contains(INSTALL_HINT), "{e}");
    }
}
