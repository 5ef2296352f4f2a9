//! Helpers shared by the benchmark mains (`benches/*.rs`, `harness = false`):
//! signing keys, a complete facegate config, spool pairs, percentiles and
//! `/proc` memory readings. Included with `mod support;` from each bench.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use facegate::config::{self, Config};
use facegate::{clock, consent, keys};

/// Site and device of every benchmark agent.
pub const SITE: &str = "lobby";
pub const DEVICE: &str = "term-01";

/// A signing key (PKCS#8 DER) with its `kid` and base64url public key.
pub struct Signer {
    /// Key id named in the JWS header and in the agent's `[[trust]]`.
    pub kid: String,
    /// Private key for signing tokens and commands.
    pub pkcs8: Vec<u8>,
    /// Public key as it goes into the config.
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

    /// A consent token for `subject` on this site, valid for a day from now.
    pub fn consent(&self, subject: &str) -> String {
        let req = consent::ConsentRequest {
            issuer: "bench".into(),
            subject: subject.into(),
            audience: vec![SITE.into()],
            scopes: vec![consent::UPLOAD_SCOPE.into()],
            lifetime_s: 86_400,
            jti: None,
        };
        consent::sign_consent(&req, &self.kid, &self.pkcs8, clock::now()).expect("sign consent")
    }
}

/// The consent and fleet keys an agent trusts.
pub struct Trust {
    pub consent: Signer,
    pub fleet: Signer,
}

impl Trust {
    pub fn new() -> Trust {
        Trust {
            consent: Signer::new("consent-bench"),
            fleet: Signer::new("fleet-bench"),
        }
    }
}

/// Where the agent's MQTT section points.
pub struct MqttFiles {
    pub host: String,
    pub port: u16,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A complete config file text. `mqtt_extra` goes inside `[mqtt]`, `extra` at the end.
pub fn config_toml(
    state: &Path,
    spool: &Path,
    mqtt: &MqttFiles,
    trust: &Trust,
    mqtt_extra: &str,
    extra: &str,
) -> String {
    format!(
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

{extra}
"#,
        state = state.display(),
        spool = spool.display(),
        host = mqtt.host,
        port = mqtt.port,
        ca = mqtt.ca.display(),
        cert = mqtt.cert.display(),
        key = mqtt.key.display(),
        ckid = trust.consent.kid,
        cpub = trust.consent.public_b64,
        fkid = trust.fleet.kid,
        fpub = trust.fleet.public_b64,
    )
}

/// Parses a config text the way the daemon does (no environment overrides).
pub fn parse(toml: &str, base: &Path) -> Config {
    config::from_toml_str(toml, base).expect("valid bench config")
}

/// Placeholder TLS paths and a port nothing listens on (no broker needed).
pub fn no_broker(dir: &Path) -> MqttFiles {
    MqttFiles {
        host: "localhost".into(),
        port: free_port(),
        ca: dir.join("absent-ca.pem"),
        cert: dir.join("absent-device.pem"),
        key: dir.join("absent-device.key"),
    }
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Directory for state (SQLite on the real disk): `FACEGATE_BENCH_DIR` or the temp dir.
pub fn disk_tempdir() -> tempfile::TempDir {
    match std::env::var_os("FACEGATE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("tempdir in FACEGATE_BENCH_DIR"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

/// Directory for the spool: tmpfs (`/dev/shm`) when present, as on a terminal.
pub fn spool_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

/// Writes a pair like camera software must: image then sidecar, each under a
/// temporary name, synced, and renamed into place.
pub fn write_pair(spool: &Path, name: &str, jpeg: &[u8], subject: &str) {
    let sidecar = serde_json::json!({
        "subject": subject,
        "captured_at": clock::rfc3339(clock::now()),
        "camera": "cam-1",
    });
    write_atomic(&spool.join(format!("{name}.jpg")), jpeg);
    write_atomic(
        &spool.join(format!("{name}.json")),
        sidecar.to_string().as_bytes(),
    );
}

fn write_atomic(path: &Path, bytes: &[u8]) {
    let name = path.file_name().expect("file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).expect("create spool temp file");
    f.write_all(bytes).expect("write spool file");
    f.sync_all().expect("sync spool file");
    std::fs::rename(&tmp, path).expect("rename spool file");
}

/// Number of entries in a directory.
pub fn dir_len(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// The `p` quantile (0..=1) of sorted samples (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `p50=… p99=… max=…` of a sample set, in ms, and the p99 for comparisons.
pub fn summary(samples: &mut [Duration]) -> (String, Duration) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p99 = percentile(samples, 0.99);
    let text = format!(
        "n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        ms(percentile(samples, 0.50)),
        ms(percentile(samples, 0.90)),
        ms(p99),
        ms(samples[samples.len() - 1]),
    );
    (text, p99)
}

/// `(VmRSS, VmHWM)` in KiB from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Opens the state directory like the daemon does (directories, storage key),
/// stores a real signed consent for each of `subjects` subjects (`S-0000`, …)
/// and `queued` captures spread round-robin over them, `batch` per transaction.
/// Image bytes cycle through `images`. Returns the subject names.
pub fn fill_outbox(
    cfg: &Config,
    trust: &Trust,
    subjects: usize,
    queued: usize,
    images: &[Vec<u8>],
    batch_size: usize,
) -> Vec<facegate::ids::SubjectId> {
    use facegate::store::Capture;
    let agent = facegate::daemon::open(cfg.clone()).expect("open agent");
    let mut store = agent.db.lock();
    let now = clock::now();
    let mut names = Vec::with_capacity(subjects);
    let mut consent_ids = Vec::with_capacity(subjects);
    for s in 0..subjects {
        let name = format!("S-{s:04}");
        let token = trust.consent.consent(&name);
        let c = consent::verify_consent(&token, &cfg.trust, &cfg.identity, now, 60)
            .expect("verify consent");
        store.add_consent(&c, now, None).expect("add consent");
        consent_ids.push(c.id.clone());
        names.push(c.subject.clone());
    }
    let mut batch = Vec::with_capacity(batch_size);
    for i in 0..queued {
        let s = i % subjects;
        let image = images[i % images.len()].clone();
        let digest = ring::digest::digest(&ring::digest::SHA256, &image);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        batch.push(Capture {
            capture_id: uuid::Uuid::new_v4().to_string().into(),
            subject: names[s].clone(),
            consent_id: consent_ids[s].clone(),
            captured_at: now,
            camera: "cam-1".into(),
            content_type: "image/jpeg".into(),
            sha256,
            image,
        });
        if batch.len() == batch_size || i + 1 == queued {
            store
                .insert_captures(std::mem::take(&mut batch), &cfg.outbox, now)
                .expect("insert captures");
        }
    }
    names
}

/// A running `facegate run` (the benchmark build of the binary).
pub struct DaemonProc {
    /// The child process.
    pub child: std::process::Child,
    /// Its control socket.
    pub socket: PathBuf,
    /// Its stderr/stdout log file.
    pub log: PathBuf,
}

impl DaemonProc {
    /// Starts `facegate run --config <config>` with extra environment and waits
    /// until its control socket answers `status`.
    pub async fn start(
        config: &Path,
        socket: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> DaemonProc {
        let out = std::fs::File::create(log).expect("daemon log file");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_facegate"));
        // The daemon reads FACEGATE_* as config overrides: keep the bench's own out.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("FACEGATE_") {
                cmd.env_remove(name);
            }
        }
        let child = cmd
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .expect("spawn facegate run");
        let mut d = DaemonProc {
            child,
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if d.try_status().await.is_some() {
                return d;
            }
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("facegate run exited early ({st}):\n{}", d.log_text());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "daemon did not answer status"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One control request; `None` if the socket does not answer.
    pub async fn request(
        &self,
        req: &facegate::control::Request,
    ) -> Option<facegate::control::Response> {
        facegate::control::request(&self.socket, req).await.ok()
    }

    /// The status object, or `None` if the socket does not answer.
    pub async fn try_status(&self) -> Option<serde_json::Value> {
        self.request(&facegate::control::Request::Status)
            .await
            .and_then(|r| r.result)
    }

    pub async fn status(&self) -> serde_json::Value {
        self.try_status().await.expect("status")
    }

    /// Captures in the outbox, from status.
    pub async fn outbox_len(&self) -> u64 {
        self.status().await["outbox"]["captures"]
            .as_u64()
            .expect("outbox.captures")
    }

    /// Grants consent through the control socket (like `ctl consent add`).
    pub async fn grant(&self, token: &str) {
        let r = self
            .request(&facegate::control::Request::ConsentAdd {
                token: token.into(),
            })
            .await
            .expect("consent add");
        assert!(r.ok, "consent add refused: {:?}", r.error);
    }

    /// SIGTERM, then wait (SIGKILL after 20 s).
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA, a device certificate and key under `dir/tls`, and a port nothing listens on.
pub fn tls_without_broker(dir: &Path) -> MqttFiles {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).expect("tls dir");
    let ca = facegate::pki::Ca::new("bench CA").expect("CA");
    let ca_file = ca.write_cert(&tls, "ca").expect("write CA");
    let now = clock::now();
    let (cert, key) = ca
        .issue_client(DEVICE, now - 3600, now + 86_400)
        .expect("client cert")
        .write(&tls, "device")
        .expect("write client cert");
    MqttFiles {
        host: "127.0.0.1".into(),
        port: free_port(),
        ca: ca_file,
        cert,
        key,
    }
}
