//! The real `facegate` binary on a throwaway terminal (state, spool, config, TLS
//! files, signing keys), driven the way camera software, site admins and
//! operators do: files in the spool, `facegate ctl` or the control socket,
//! signals.
//!
//! ```ignore
//! let broker = Broker::start();
//! let d = Daemon::builder()
//!     .broker(&broker)
//!     .configure(|c| c.keep_alive(Duration::from_secs(5)))
//!     .start();
//! d.grant("S-1");
//! d.drop_pair("c1", "jpg", &synth::face_jpeg(320, 240, 1, 85), Some("S-1"));
//! d.wait_spool_empty(T);
//! ```
//!
//! The binary is the one Cargo built next to the running test, benchmark or
//! example ([`facegate_binary`]). The daemon's environment has no `FACEGATE_*`
//! variables: the daemon would read them as config overrides.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use facegate::clock;
use facegate::control::{self, Request};
use facegate::protocol::{Counters, Status};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tempfile::TempDir;

use crate::broker::{Broker, ClientCreds};
use crate::config::ConfigBuilder;
use crate::pki::Ca;
use crate::signer::Signer;
use crate::spool::SpoolWriter;
use crate::{bench, util, DEVICE};

/// `kid` of the consent-signing key every harness daemon trusts.
pub const CONSENT_KID: &str = "consent-test";
/// `kid` of the fleet-command key every harness daemon trusts.
pub const FLEET_KID: &str = "fleet-test";
/// How long the daemon may take to answer on its control socket, or to stop.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// The `facegate` binary Cargo built next to the running executable: integration
/// tests and benchmarks live in `target/<profile>/deps/`, examples in
/// `target/<profile>/examples/`, the binary in `target/<profile>/`. Cargo builds
/// it before integration tests and benchmarks; `scripts/demo` builds it for the demo.
/// `TESTKIT_FACEGATE`, when set, names another one (the torture suite's long
/// run drives the release build from a debug build of the suite).
pub fn facegate_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TESTKIT_FACEGATE") {
        let binary = PathBuf::from(path);
        assert!(
            binary.is_file(),
            "TESTKIT_FACEGATE={} is not a file",
            binary.display()
        );
        return binary;
    }
    let exe = std::env::current_exe().expect("path of the running executable");
    let mut dir = exe
        .parent()
        .expect("executable in a directory")
        .to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    let binary = dir.join("facegate");
    assert!(
        binary.is_file(),
        "{} does not exist: build it first (cargo build --bin facegate)",
        binary.display()
    );
    binary
}

/// Where the daemon's broker is.
enum Uplink {
    /// Placeholder TLS files and a port nothing listens on: the uplink cannot
    /// even build its TLS config and keeps retrying.
    Placeholder,
    /// A valid CA and device certificate, but a port nothing listens on: the
    /// uplink keeps trying to connect.
    Unreachable,
    /// Set on the config by the caller.
    Given,
}

/// How to set up a [`Daemon`]: [`Daemon::builder`].
pub struct DaemonBuilder {
    config: ConfigBuilder,
    uplink: Uplink,
    /// Directory under which the terminal's directory is made (default: the temp dir).
    parent: Option<PathBuf>,
    /// Put the spool on tmpfs (`/dev/shm`) when there is one.
    spool_on_tmpfs: bool,
    /// `state_dir` elsewhere than in the terminal's directory.
    state_in: Option<PathBuf>,
}

impl DaemonBuilder {
    /// Points the daemon at `broker` with a fresh device certificate for `term-01`.
    pub fn broker(self, broker: &Broker) -> Self {
        let creds = broker.issue_client(DEVICE);
        self.mqtt("localhost", broker.port, &creds)
    }

    /// Points the daemon at `host:port` with the TLS files of `creds`.
    pub fn mqtt(mut self, host: &str, port: u16, creds: &ClientCreds) -> Self {
        self.config = self.config.broker(host, port).tls(creds);
        self.uplink = Uplink::Given;
        self
    }

    /// Valid TLS files from a throwaway CA, but no broker on the port.
    pub fn unreachable_broker(mut self) -> Self {
        self.uplink = Uplink::Unreachable;
        self
    }

    /// Further config keys; the harness sets site, device, directories, trusted
    /// keys and (unless given) the MQTT files.
    pub fn configure(mut self, f: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Self {
        self.config = f(self.config);
        self
    }

    /// Makes the terminal's directory under `parent` instead of the temp dir.
    pub fn under(mut self, parent: impl Into<PathBuf>) -> Self {
        self.parent = Some(parent.into());
        self
    }

    /// Puts the spool on tmpfs (`/dev/shm`) when there is one, as on a terminal.
    pub fn spool_on_tmpfs(mut self) -> Self {
        self.spool_on_tmpfs = true;
        self
    }

    /// Puts `state_dir` (the database) at `path`, e.g. on a
    /// [`crate::smallfs::SmallFs`]; the rest stays in the terminal's directory.
    pub fn state_in(mut self, path: impl Into<PathBuf>) -> Self {
        self.state_in = Some(path.into());
        self
    }

    /// Makes the directories, keys and config file; the daemon is not started.
    pub fn build(self) -> Daemon {
        let dir = match &self.parent {
            Some(parent) => tempfile::Builder::new()
                .prefix("facegate-")
                .tempdir_in(parent),
            None => tempfile::Builder::new().prefix("facegate-").tempdir(),
        }
        .expect("terminal directory");
        let state = self
            .state_in
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let (spool, spool_dir) = if self.spool_on_tmpfs {
            let tmp = bench::spool_tempdir();
            (tmp.path().to_path_buf(), Some(tmp))
        } else {
            let spool = dir.path().join("spool");
            fs::create_dir_all(&spool).expect("spool directory");
            (spool, None)
        };
        let consent_signer = Signer::new(CONSENT_KID);
        let fleet_signer = Signer::new(FLEET_KID);
        let mut config = self
            .config
            .state_dir(&state)
            .spool_dir(&spool)
            .consent_key(&consent_signer)
            .fleet_key(&fleet_signer);
        config = match self.uplink {
            Uplink::Placeholder => config
                .broker("localhost", util::free_port())
                .tls(&placeholder_tls(dir.path())),
            Uplink::Unreachable => config
                .broker("127.0.0.1", util::free_port())
                .tls(&throwaway_tls(dir.path())),
            Uplink::Given => config,
        };
        let config_path = dir.path().join("facegate.toml");
        config.write(&config_path);
        let socket = config.load(dir.path()).control.socket;
        Daemon {
            log_path: dir.path().join("daemon.log"),
            dir,
            state,
            spool: SpoolWriter::new(spool),
            config: config_path,
            socket,
            consent_signer,
            fleet_signer,
            _spool_dir: spool_dir,
            credentials_dir: None,
            run_env: Vec::new(),
            child: None,
        }
    }

    /// [`build`](Self::build), then start the daemon and wait until it answers.
    pub fn start(self) -> Daemon {
        let mut d = self.build();
        d.spawn();
        d
    }
}

/// A `facegate run` process (or one to be started) and its terminal.
pub struct Daemon {
    /// The terminal's directory: config, log, state (and spool unless on tmpfs).
    pub dir: TempDir,
    /// `state_dir`.
    pub state: PathBuf,
    /// The spool, for writing capture pairs.
    pub spool: SpoolWriter,
    /// The config file (tests may rewrite it before a reload).
    pub config: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// Signs consent tokens the daemon trusts.
    pub consent_signer: Signer,
    /// Signs fleet commands the daemon trusts.
    pub fleet_signer: Signer,
    /// `$CREDENTIALS_DIRECTORY` for the daemon (what systemd sets for a unit
    /// with `LoadCredential*=`); unset when `None`.
    pub credentials_dir: Option<PathBuf>,
    /// Further environment of `facegate run` only (not of `ctl`), e.g. a
    /// [`crate::faketime::FakeClock`]'s.
    pub run_env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    log_path: PathBuf,
    _spool_dir: Option<TempDir>,
    child: Option<Child>,
}

impl Daemon {
    /// A daemon on a fresh terminal in the temp dir, log level `debug`, no broker.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            config: ConfigBuilder::new().log_level("debug"),
            uplink: Uplink::Placeholder,
            parent: None,
            spool_on_tmpfs: false,
            state_in: None,
        }
    }

    /// `Daemon::builder().start()`: running, without a broker.
    pub fn start() -> Daemon {
        Daemon::builder().start()
    }

    /// Starts the process (again) and waits until its control socket answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("daemon log file");
        let child = self
            .command()
            .envs(self.run_env.iter().map(|(k, v)| (k, v)))
            .args(["run", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("daemon log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn facegate run: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            if self.try_ctl(&["status", "--json"]).status.success() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("facegate run exited early ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        let mut c = self.child.take().expect("daemon running");
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            if let Some(status) = c.try_wait().expect("wait for the daemon") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("daemon did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`) to the running daemon.
    #[allow(unsafe_code)] // kill(2), see SAFETY below
    pub fn signal(&self, name: &str) {
        let sig = match name {
            "HUP" => libc::SIGHUP,
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            other => panic!("no signal named {other}"),
        };
        let pid = self.pid().expect("daemon running");
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill -{name} {pid}");
    }

    /// Runs `facegate ctl <args> --config <ours>`.
    pub fn try_ctl(&self, args: &[&str]) -> Output {
        self.command()
            .arg("ctl")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run facegate ctl")
    }

    /// Like [`try_ctl`](Self::try_ctl), with `input` on the command's stdin
    /// (for arguments given as `-`).
    pub fn try_ctl_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut cmd = self.command();
        cmd.arg("ctl").args(args).arg("--config").arg(&self.config);
        util::output_with_stdin(&mut cmd, input.as_bytes())
    }

    /// Like [`try_ctl`](Self::try_ctl) but asserts success and returns stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.try_ctl(args);
        assert!(
            out.status.success(),
            "facegate ctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).expect("ctl prints UTF-8")
    }

    /// `ctl <args>` (which must include `--json`) parsed.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let out = self.ctl(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ctl {args:?} printed non-JSON ({e}): {out}"))
    }

    /// The audit log's last 10,000 entries (`ctl audit tail --json`), oldest
    /// first.
    pub fn audit_tail(&self) -> Vec<Value> {
        match self.ctl_json(&["audit", "tail", "-n", "10000", "--json"]) {
            Value::Array(rows) => rows,
            other => panic!("ctl audit tail --json printed no array: {other}"),
        }
    }

    /// The entries of [`Self::audit_tail`] of one `kind`, oldest first.
    pub fn audited(&self, kind: &str) -> Vec<Value> {
        self.audit_tail()
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    /// `ctl status --json`, read as the status object.
    pub fn status(&self) -> Status {
        let out = self.ctl(&["status", "--json"]);
        Status::from_bytes(out.as_bytes())
            .unwrap_or_else(|e| panic!("ctl status printed no status ({e}): {out}"))
    }

    /// Panics, with its output, unless `ctl audit verify` says the audit
    /// chain verifies.
    pub fn assert_audit_verifies(&self) {
        let out = self.try_ctl(&["audit", "verify"]);
        assert!(
            out.status.success(),
            "audit verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The persistent counters, from the status.
    pub fn counters(&self) -> Counters {
        let st = self.status();
        st.counters
            .unwrap_or_else(|| panic!("no counters in {st:?}"))
    }

    /// Captures in the outbox, from the status.
    pub fn outbox_len(&self) -> u64 {
        let st = self.status();
        st.outbox
            .unwrap_or_else(|| panic!("no outbox in {st:?}"))
            .captures
    }

    /// Stored consents not yet expired, from the status.
    pub fn active_consents(&self) -> u64 {
        let st = self.status();
        st.consent
            .unwrap_or_else(|| panic!("no consent section in {st:?}"))
            .active
    }

    /// Whether the status says the uplink holds a broker connection.
    pub fn uplink_connected(&self) -> bool {
        self.status().uplink.is_some_and(|u| u.connected)
    }

    /// Waits until the status says the uplink is connected to the broker.
    pub fn wait_uplink_connected(&self, timeout: Duration) {
        util::wait_until(
            timeout,
            || self.uplink_connected(),
            || format!("the uplink did not connect\n{}", self.log()),
        );
    }

    /// Grants a fresh one-hour consent for `subject` through `ctl consent add`;
    /// returns the token.
    pub fn grant(&self, subject: &str) -> String {
        let token = self.consent_signer.consent(subject, 3600);
        self.ctl(&["consent", "add", &token]);
        token
    }

    /// One request on the control socket; its result, read as `T` (the
    /// type the request answers with), or the refusal as text. For async
    /// callers that must not block (benchmarks, the demo).
    pub async fn request<T: DeserializeOwned>(&self, req: &Request) -> Result<T, String> {
        let resp = control::request::<T>(&self.socket, req)
            .await
            .map_err(|e| e.to_string())?;
        resp.into_result()
            .map_err(|e| format!("{} ({})", e.message, e.code))
    }

    /// The status from the control socket, without blocking; panics if it does not answer.
    pub async fn status_async(&self) -> Status {
        self.request(&Request::Status)
            .await
            .unwrap_or_else(|e| panic!("status: {e}\n{}", self.log()))
    }

    /// Writes a capture pair into the spool (see [`SpoolWriter::pair`]).
    pub fn drop_pair(&self, name: &str, ext: &str, image: &[u8], subject: Option<&str>) {
        self.spool
            .pair(name, ext, image, subject)
            .unwrap_or_else(|e| panic!("spool pair {name}: {e}"));
    }

    /// Number of entries in the spool directory.
    pub fn spool_len(&self) -> usize {
        self.spool.len()
    }

    /// Waits until the spool is empty.
    pub fn wait_spool_empty(&self, timeout: Duration) {
        util::wait_until(
            timeout,
            || self.spool.is_empty(),
            || format!("spool still has {} files\n{}", self.spool_len(), self.log()),
        );
    }

    /// The config as the daemon reads it.
    pub fn load_config(&self) -> facegate::config::Config {
        facegate::config::load_unchecked_with_env(&self.config, &[])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The binary, with no `FACEGATE_*` variables in its environment, and
    /// `CREDENTIALS_DIRECTORY` only as [`Self::credentials_dir`] says.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(facegate_binary());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("FACEGATE_") {
                cmd.env_remove(name);
            }
        }
        cmd.env_remove("CREDENTIALS_DIRECTORY");
        if let Some(dir) = &self.credentials_dir {
            cmd.env("CREDENTIALS_DIRECTORY", dir);
        }
        cmd
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Placeholder TLS files under `dir/tls` (the key with mode 0600, as the daemon
/// demands), for a daemon that must work while the broker is unreachable.
fn placeholder_tls(dir: &Path) -> ClientCreds {
    let tls = dir.join("tls");
    fs::create_dir_all(&tls).expect("tls directory");
    let creds = ClientCreds {
        ca: tls.join("ca.pem"),
        cert: tls.join("device.pem"),
        key: tls.join("device.key"),
    };
    for (path, mode) in [
        (&creds.ca, 0o644),
        (&creds.cert, 0o644),
        (&creds.key, 0o600),
    ] {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(b"placeholder\n"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    creds
}

/// A throwaway CA, and a `term-01` certificate and key from it, under `dir/tls`.
fn throwaway_tls(dir: &Path) -> ClientCreds {
    let tls = dir.join("tls");
    fs::create_dir_all(&tls).expect("tls directory");
    let ca = Ca::new("throwaway CA").expect("CA");
    let now = clock::now();
    let (cert, key) = ca
        .issue_client(DEVICE, now - 3600, now + 86_400)
        .and_then(|issued| issued.write(&tls, "device"))
        .expect("device certificate");
    ClientCreds {
        ca: ca.write_cert(&tls, "ca").expect("CA certificate"),
        cert,
        key,
    }
}
