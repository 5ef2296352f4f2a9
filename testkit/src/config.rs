//! The one place that writes facegate's TOML config: a typed builder for every
//! config a test, benchmark or the demo needs, rendered by the `toml` crate.
//!
//! Only the keys set are written, so the rest take the product's defaults. The
//! layout is stable (top-level keys, then `[mqtt]`, `[[trust]]`, `[capture]`,
//! `[outbox]`, `[log]`), which the config tests rely on when they edit the text
//! to make it invalid.
//!
//! ```ignore
//! let toml = ConfigBuilder::new()
//!     .state_dir(dir.join("state"))
//!     .spool_dir(dir.join("spool"))
//!     .broker("localhost", broker.port)
//!     .tls(&creds)
//!     .consent_key(&signer)
//!     .render();
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use facegate::config::CaptureConfig;
use serde::{Serialize, Serializer};

use crate::broker::ClientCreds;
use crate::signer::Signer;
use crate::{DEVICE, SITE};

/// A facegate config, built key by key. Keys left `None` are not written (the
/// TOML writer skips them), so the product's defaults apply.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigBuilder {
    site_id: String,
    device_id: String,
    state_dir: Option<PathBuf>,
    spool_dir: Option<PathBuf>,
    mqtt: Mqtt,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    trust: Vec<Trust>,
    capture: Option<Capture>,
    outbox: Option<Outbox>,
    log: Option<Log>,
    audit: Option<Audit>,
    commands: Option<Commands>,
    storage: Option<Storage>,
    consent: Option<Consent>,
    clock: Option<Clock>,
}

/// `[clock]`.
#[derive(Debug, Clone, Default, Serialize)]
struct Clock {
    #[serde(serialize_with = "human_duration")]
    jump_threshold: Option<Duration>,
    ntp: Option<String>,
}

/// `[consent]`.
#[derive(Debug, Clone, Default, Serialize)]
struct Consent {
    log: Option<String>,
    #[serde(serialize_with = "human_duration")]
    head_max_age: Option<Duration>,
}

/// `[storage]`.
#[derive(Debug, Clone, Default, Serialize)]
struct Storage {
    key_source: Option<String>,
    reserve_bytes: Option<u64>,
}

/// `[mqtt]`.
#[derive(Debug, Clone, Serialize)]
struct Mqtt {
    host: String,
    port: Option<u16>,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    pkcs11_module: Option<PathBuf>,
    #[serde(serialize_with = "human_duration")]
    keep_alive: Option<Duration>,
    inflight: Option<u16>,
    #[serde(serialize_with = "human_duration")]
    reconnect_min: Option<Duration>,
    #[serde(serialize_with = "human_duration")]
    reconnect_max: Option<Duration>,
    max_packet_size: Option<u64>,
    max_attempts: Option<u32>,
    protocol: Option<String>,
    #[serde(serialize_with = "human_duration")]
    session_expiry: Option<Duration>,
    #[serde(serialize_with = "human_duration")]
    stop_grace: Option<Duration>,
    #[serde(serialize_with = "human_duration")]
    status_interval: Option<Duration>,
}

/// What a trusted key may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Consent tokens.
    Consent,
    /// Fleet commands.
    Fleet,
}

/// One `[[trust]]` entry.
#[derive(Debug, Clone, Serialize)]
struct Trust {
    kid: String,
    role: Role,
    public_key: String,
}

/// `[capture]`.
#[derive(Debug, Clone, Default, Serialize)]
struct Capture {
    #[serde(serialize_with = "human_duration")]
    spool_grace: Option<Duration>,
    #[serde(serialize_with = "human_duration")]
    poll_interval: Option<Duration>,
    max_file_bytes: Option<u64>,
    max_batch_bytes: Option<u64>,
}

/// `[commands]`.
#[derive(Debug, Clone, Default, Serialize)]
struct Commands {
    max_bytes: Option<u64>,
}

/// `[outbox]`.
#[derive(Debug, Clone, Default, Serialize)]
struct Outbox {
    quota_bytes: Option<u64>,
}

/// `[audit]`.
#[derive(Debug, Clone, Default, Serialize)]
struct Audit {
    #[serde(serialize_with = "human_duration")]
    retention: Option<Duration>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, Serialize)]
struct Log {
    level: Option<String>,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder::new()
    }
}

impl ConfigBuilder {
    /// Site `lobby`, device `term-01`, broker `localhost` on the default port, TLS
    /// files `ca.pem`, `device.pem` and `device.key` relative to the config file,
    /// no trusted keys, every other key left to its default.
    pub fn new() -> ConfigBuilder {
        ConfigBuilder {
            site_id: SITE.into(),
            device_id: DEVICE.into(),
            state_dir: None,
            spool_dir: None,
            mqtt: Mqtt {
                host: "localhost".into(),
                port: None,
                ca_file: "ca.pem".into(),
                cert_file: "device.pem".into(),
                key_file: "device.key".into(),
                pkcs11_module: None,
                keep_alive: None,
                inflight: None,
                reconnect_min: None,
                reconnect_max: None,
                max_packet_size: None,
                max_attempts: None,
                protocol: None,
                session_expiry: None,
                stop_grace: None,
                status_interval: None,
            },
            trust: Vec::new(),
            capture: None,
            outbox: None,
            log: None,
            audit: None,
            commands: None,
            storage: None,
            consent: None,
            clock: None,
        }
    }

    /// `device_id` (`term-01` by default; give the daemon a certificate for
    /// the same name).
    pub fn device_id(mut self, id: &str) -> Self {
        self.device_id = id.into();
        self
    }

    /// `state_dir`.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// `spool_dir`.
    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool_dir = Some(dir.into());
        self
    }

    /// `mqtt.host` (the port stays the default 8883).
    pub fn host(mut self, host: &str) -> Self {
        self.mqtt.host = host.into();
        self
    }

    /// `mqtt.host` and `mqtt.port`.
    pub fn broker(mut self, host: &str, port: u16) -> Self {
        self.mqtt.host = host.into();
        self.mqtt.port = Some(port);
        self
    }

    /// `mqtt.ca_file`, `mqtt.cert_file` and `mqtt.key_file` (relative paths are
    /// relative to the config file).
    pub fn tls_files(
        mut self,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.mqtt.ca_file = ca.into();
        self.mqtt.cert_file = cert.into();
        self.mqtt.key_file = key.into();
        self
    }

    /// A device key in a PKCS#11 token: `mqtt.key_file` = `uri`,
    /// `mqtt.pkcs11_module` = `module`.
    pub fn pkcs11_key(mut self, uri: &str, module: impl Into<PathBuf>) -> Self {
        self.mqtt.key_file = uri.into();
        self.mqtt.pkcs11_module = Some(module.into());
        self
    }

    /// The TLS files of `creds`.
    pub fn tls(self, creds: &ClientCreds) -> Self {
        self.tls_files(&creds.ca, &creds.cert, &creds.key)
    }

    /// `mqtt.keep_alive`.
    pub fn keep_alive(mut self, every: Duration) -> Self {
        self.mqtt.keep_alive = Some(every);
        self
    }

    /// `mqtt.inflight`.
    pub fn inflight(mut self, window: u16) -> Self {
        self.mqtt.inflight = Some(window);
        self
    }

    /// `mqtt.reconnect_min` and `mqtt.reconnect_max`.
    pub fn reconnect(mut self, min: Duration, max: Duration) -> Self {
        self.mqtt.reconnect_min = Some(min);
        self.mqtt.reconnect_max = Some(max);
        self
    }

    /// `mqtt.max_attempts`.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.mqtt.max_attempts = Some(n);
        self
    }

    /// `mqtt.protocol`: `"3.1.1"` or `"5"`.
    pub fn protocol(mut self, version: &str) -> Self {
        self.mqtt.protocol = Some(version.into());
        self
    }

    /// `mqtt.session_expiry` (MQTT 5 only).
    pub fn session_expiry(mut self, expiry: Duration) -> Self {
        self.mqtt.session_expiry = Some(expiry);
        self
    }

    /// `mqtt.status_interval`.
    pub fn status_interval(mut self, every: Duration) -> Self {
        self.mqtt.status_interval = Some(every);
        self
    }

    /// `mqtt.stop_grace`.
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.mqtt.stop_grace = Some(grace);
        self
    }

    /// `mqtt.max_packet_size`, in bytes.
    pub fn max_packet_size(mut self, bytes: u64) -> Self {
        self.mqtt.max_packet_size = Some(bytes);
        self
    }

    /// Reconnects 100 ms to 1 s apart, so nobody waits on the default backoff.
    pub fn fast_reconnect(self) -> Self {
        self.reconnect(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// A `[[trust]]` entry with an inline base64url public key.
    pub fn trust(mut self, kid: &str, role: Role, public_key: &str) -> Self {
        self.trust.push(Trust {
            kid: kid.into(),
            role,
            public_key: public_key.into(),
        });
        self
    }

    /// Trusts `signer` for consent tokens.
    pub fn consent_key(self, signer: &Signer) -> Self {
        self.trust(&signer.kid, Role::Consent, &signer.public_b64)
    }

    /// Trusts `signer` for fleet commands.
    pub fn fleet_key(self, signer: &Signer) -> Self {
        self.trust(&signer.kid, Role::Fleet, &signer.public_b64)
    }

    /// `capture.spool_grace`.
    pub fn spool_grace(mut self, grace: Duration) -> Self {
        self.capture
            .get_or_insert_with(Capture::default)
            .spool_grace = Some(grace);
        self
    }

    /// `capture.poll_interval`.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.capture
            .get_or_insert_with(Capture::default)
            .poll_interval = Some(every);
        self
    }

    /// `capture.max_batch_bytes`.
    pub fn max_batch_bytes(mut self, bytes: u64) -> Self {
        self.capture
            .get_or_insert_with(Capture::default)
            .max_batch_bytes = Some(bytes);
        self
    }

    /// `capture.max_file_bytes`.
    pub fn max_file_bytes(mut self, bytes: u64) -> Self {
        self.capture
            .get_or_insert_with(Capture::default)
            .max_file_bytes = Some(bytes);
        self
    }

    /// `storage.key_source` (`"file"` or `"credential"`).
    pub fn key_source(mut self, source: &str) -> Self {
        self.storage.get_or_insert_with(Storage::default).key_source = Some(source.into());
        self
    }

    /// `storage.reserve_bytes`.
    pub fn reserve_bytes(mut self, bytes: u64) -> Self {
        self.storage
            .get_or_insert_with(Storage::default)
            .reserve_bytes = Some(bytes);
        self
    }

    /// `commands.max_bytes`.
    pub fn command_max_bytes(mut self, bytes: u64) -> Self {
        self.commands
            .get_or_insert_with(Commands::default)
            .max_bytes = Some(bytes);
        self
    }

    /// `outbox.quota_bytes`.
    pub fn quota_bytes(mut self, bytes: u64) -> Self {
        self.outbox.get_or_insert_with(Outbox::default).quota_bytes = Some(bytes);
        self
    }

    /// `audit.retention`.
    pub fn audit_retention(mut self, retention: Duration) -> Self {
        self.audit.get_or_insert_with(Audit::default).retention = Some(retention);
        self
    }

    /// `consent.log` (`"required"` or `"off"`).
    pub fn consent_log(mut self, mode: &str) -> Self {
        self.consent.get_or_insert_with(Consent::default).log = Some(mode.into());
        self
    }

    /// `consent.head_max_age`.
    pub fn head_max_age(mut self, age: Duration) -> Self {
        self.consent
            .get_or_insert_with(Consent::default)
            .head_max_age = Some(age);
        self
    }

    /// `clock.ntp` (`"consult"` or `"ignore"`).
    pub fn clock_ntp(mut self, ntp: &str) -> Self {
        self.clock.get_or_insert_with(Clock::default).ntp = Some(ntp.into());
        self
    }

    /// `clock.jump_threshold`.
    pub fn jump_threshold(mut self, threshold: Duration) -> Self {
        self.clock.get_or_insert_with(Clock::default).jump_threshold = Some(threshold);
        self
    }

    /// `log.level`.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log.get_or_insert_with(Log::default).level = Some(level.into());
        self
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| panic!("rendering the config: {e}"))
    }

    /// Writes the TOML text to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.render())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// The config as the daemon sees it (no environment overrides, files not
    /// checked), relative paths resolved against `base`; panics if it is invalid.
    pub fn load(&self, base: &Path) -> facegate::config::Config {
        let text = self.render();
        facegate::config::from_toml_str(&text, base)
            .unwrap_or_else(|e| panic!("invalid config ({e}):\n{text}"))
    }
}

/// Camera-sized capture limits, the product's defaults: 8 MiB files, 4096×4096
/// pixels, 64 MiB for decoding, 60 s spool grace, a 2 s safety-net scan, 8 MiB
/// batches.
pub fn capture_limits() -> CaptureConfig {
    CaptureConfig {
        max_file_bytes: 8 * 1024 * 1024,
        max_width: 4096,
        max_height: 4096,
        max_alloc_bytes: 64 * 1024 * 1024,
        decode_memory_bytes: 64 * 1024 * 1024,
        spool_grace: Duration::from_secs(60),
        poll_interval: Duration::from_secs(2),
        max_batch_bytes: 8 * 1024 * 1024,
    }
}

/// A duration as the config writes it: `100ms`, `5s`, `1m`.
fn human_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_layout_is_stable() {
        let text = ConfigBuilder::new()
            .host("broker.example.net")
            .trust("consent-1", Role::Consent, "AAAA")
            .render();
        assert_eq!(
            text,
            "site_id = \"lobby\"\n\
             device_id = \"term-01\"\n\
             \n\
             [mqtt]\n\
             host = \"broker.example.net\"\n\
             ca_file = \"ca.pem\"\n\
             cert_file = \"device.pem\"\n\
             key_file = \"device.key\"\n\
             \n\
             [[trust]]\n\
             kid = \"consent-1\"\n\
             role = \"consent\"\n\
             public_key = \"AAAA\"\n"
        );
    }

    #[test]
    fn capture_limits_are_the_defaults() {
        let config = ConfigBuilder::new()
            .consent_key(&Signer::new("k"))
            .load(Path::new("/"));
        assert_eq!(config.capture, capture_limits());
    }

    #[test]
    fn set_keys_are_written_in_their_tables() {
        let text = ConfigBuilder::new()
            .state_dir("/s")
            .broker("localhost", 1234)
            .keep_alive(Duration::from_secs(5))
            .reconnect(Duration::from_millis(100), Duration::from_secs(1))
            .spool_grace(Duration::from_secs(60))
            .quota_bytes(4096)
            .log_level("debug")
            .render();
        for line in [
            "state_dir = \"/s\"\n",
            "port = 1234\n",
            "keep_alive = \"5s\"\n",
            "reconnect_min = \"100ms\"\n",
            "reconnect_max = \"1s\"\n",
            "[capture]\nspool_grace = \"1m\"\n",
            "[outbox]\nquota_bytes = 4096\n",
            "[log]\nlevel = \"debug\"\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
    }
}
