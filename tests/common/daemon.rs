//! Runs the real `facegate` binary on a throwaway state and spool directory and
//! drives it the way camera software and site admins do: files in the spool,
//! `facegate ctl` on the control socket.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use facegate::{clock, consent, keys};
use tempfile::TempDir;

/// Site and device every test daemon uses.
pub const SITE: &str = "lobby";
pub const DEVICE: &str = "term-01";
/// `kid` of the consent-signing key every test daemon trusts.
pub const CONSENT_KID: &str = "consent-test";
/// `kid` of the fleet-command key every test daemon trusts.
pub const FLEET_KID: &str = "fleet-test";

/// A test signing key (PKCS#8 DER) with its `kid`.
pub struct Signer {
    pub kid: String,
    pub pkcs8: Vec<u8>,
    pub public_b64: String,
}

impl Signer {
    pub fn new(kid: &str) -> Signer {
        let (pkcs8, public) = keys::generate().expect("generate key");
        Signer {
            kid: kid.into(),
            pkcs8,
            public_b64: keys::public_key_b64(&public),
        }
    }

    /// A consent token for `subject` on this site, valid for `lifetime_s` from now.
    pub fn consent(&self, subject: &str, lifetime_s: i64) -> String {
        self.consent_at(subject, lifetime_s, clock::now())
    }

    pub fn consent_at(&self, subject: &str, lifetime_s: i64, now: i64) -> String {
        let req = consent::ConsentRequest {
            issuer: "test".into(),
            subject: subject.into(),
            audience: vec![SITE.into()],
            scopes: vec![consent::UPLOAD_SCOPE.into()],
            lifetime_s,
            jti: None,
        };
        consent::sign_consent(&req, &self.kid, &self.pkcs8, now).expect("sign consent")
    }
}

/// What the daemon's config points at for MQTT.
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Options for [`Daemon::start`].
#[derive(Default)]
pub struct DaemonOptions {
    /// Extra TOML appended to the generated config (sections with limits etc.).
    pub extra_toml: String,
    /// Broker to use; `None` writes placeholder files and an unreachable port.
    pub mqtt: Option<MqttTarget>,
    /// Extra keys inside the `[mqtt]` section (reconnect timing, keep-alive).
    pub mqtt_extra: String,
}

/// A running `facegate run` process and its directories.
pub struct Daemon {
    pub dir: TempDir,
    pub state: PathBuf,
    pub spool: PathBuf,
    pub config: PathBuf,
    pub consent_signer: Signer,
    pub fleet_signer: Signer,
    child: Option<Child>,
}

impl Daemon {
    pub fn start(opts: DaemonOptions) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let spool = dir.path().join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        let consent_signer = Signer::new(CONSENT_KID);
        let fleet_signer = Signer::new(FLEET_KID);
        let mqtt = match opts.mqtt {
            Some(m) => m,
            None => placeholder_mqtt(dir.path()),
        };
        let config = dir.path().join("facegate.toml");
        let toml = format!(
            r#"site_id = "{SITE}"
device_id = "{DEVICE}"
state_dir = "{state}"
spool_dir = "{spool}"

[mqtt]
host = "{host}"
port = {port}
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
{mqtt_extra}
[[trust]]
kid = "{ckid}"
role = "consent"
public_key = "{cpub}"

[[trust]]
kid = "{fkid}"
role = "fleet"
public_key = "{fpub}"

[log]
level = "debug"

{extra}
"#,
            state = state.display(),
            spool = spool.display(),
            host = mqtt.host,
            port = mqtt.port,
            ca = mqtt.ca.display(),
            cert = mqtt.cert.display(),
            key = mqtt.key.display(),
            ckid = consent_signer.kid,
            cpub = consent_signer.public_b64,
            fkid = fleet_signer.kid,
            fpub = fleet_signer.public_b64,
            extra = opts.extra_toml,
            mqtt_extra = opts.mqtt_extra,
        );
        std::fs::write(&config, toml).unwrap();
        let mut d = Daemon {
            dir,
            state,
            spool,
            config,
            consent_signer,
            fleet_signer,
            child: None,
        };
        d.spawn();
        d
    }

    /// Starts the process (again) and waits until its control socket answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_facegate"))
            .args(["run", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn facegate run");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.try_ctl(&["status", "--json"]).status.success() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
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
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon not running");
        let pid = c.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not stop on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (`HUP`, `TERM`, …) to the running daemon.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().expect("daemon running").to_string();
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} {pid}");
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Runs `facegate ctl <args> --config <ours>`.
    pub fn try_ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_facegate"))
            .arg("ctl")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run facegate ctl")
    }

    /// Like [`try_ctl`] but asserts success and returns stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.try_ctl(args);
        assert!(
            out.status.success(),
            "facegate ctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `ctl <args> --json` parsed.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ctl(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ctl {args:?} printed non-JSON ({e}): {out}"))
    }

    pub fn status(&self) -> serde_json::Value {
        self.ctl_json(&["status", "--json"])
    }

    /// Grants a fresh consent for `subject` through `ctl consent add`.
    pub fn grant(&self, subject: &str) -> String {
        let token = self.consent_signer.consent(subject, 3600);
        self.ctl(&["consent", "add", &token]);
        token
    }

    /// Writes a capture pair the way camera software must: image then sidecar,
    /// each under a temporary name and renamed into place.
    pub fn drop_pair(&self, name: &str, ext: &str, image: &[u8], subject: Option<&str>) {
        let sidecar = serde_json::json!({
            "subject": subject,
            "captured_at": clock::rfc3339(clock::now()),
            "camera": "cam-1",
        });
        drop_pair_raw(
            &self.spool,
            name,
            ext,
            image,
            sidecar.to_string().as_bytes(),
        );
    }

    /// Number of entries in the spool directory.
    pub fn spool_len(&self) -> usize {
        std::fs::read_dir(&self.spool)
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Waits until the spool is empty.
    pub fn wait_spool_empty(&self, timeout: Duration) {
        wait_until(
            timeout,
            || self.spool_len() == 0,
            || format!("spool still has {} files\n{}", self.spool_len(), self.log()),
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Writes one spool pair atomically (temp name + rename for each file).
pub fn drop_pair_raw(spool: &Path, name: &str, ext: &str, image: &[u8], sidecar: &[u8]) {
    write_atomic(&spool.join(format!("{name}.{ext}")), image);
    write_atomic(&spool.join(format!("{name}.json")), sidecar);
}

pub fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `cond` every 20 ms until true or panics with `why()` after `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {}", why());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True if `needle` occurs anywhere in the file at `path` (missing file: false).
pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    match std::fs::read(path) {
        Ok(hay) => !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle),
        Err(_) => false,
    }
}

/// Placeholder MQTT files and a port nothing listens on, for tests that do not
/// need a broker (the daemon must work while the broker is unreachable).
fn placeholder_mqtt(dir: &Path) -> MqttTarget {
    use std::os::unix::fs::OpenOptionsExt;
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let ca = tls.join("ca.pem");
    let cert = tls.join("device.pem");
    let key = tls.join("device.key");
    std::fs::write(&ca, "placeholder\n").unwrap();
    std::fs::write(&cert, "placeholder\n").unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)
        .unwrap()
        .write_all(b"placeholder\n")
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    MqttTarget {
        host: "localhost".into(),
        port,
        ca,
        cert,
        key,
    }
}
