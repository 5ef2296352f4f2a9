//! Configuration in two phases: raw serde values from TOML + `FACEGATE_*`
//! environment ([`RawConfig`]), then validated, typed objects ([`Config`]).
//!
//! Only validated objects leave this module, so the rest of the daemon never
//! re-checks a path, a key or a duration.
//!
//! Entry points:
//! - [`load`]: the file plus the process environment, then [`Config::check_files`]
//!   (what `facegate run` and `facegate check-config` use);
//! - [`load_with_env`]: the same with an explicit environment (tests);
//! - [`load_unchecked`]: [`load`] without the broker-file checks (provisioning,
//!   which creates the device key, and the doctor, which checks files itself);
//! - [`from_text`]: what those run once the file is read (text, environment,
//!   validation; no broker-file checks), also the config fuzz target's entry;
//! - [`from_toml_str`]: a TOML string only, no environment and no broker-file
//!   checks (for tests of other modules).
//!
//! Submodules: [`raw`] (serde shapes and merging file + environment),
//! `validate` (raw to typed), `keys` (Ed25519 public key decoding),
//! [`error`] (the [`ConfigError`] enum).

pub mod error;
mod keys;
pub mod raw;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::keyref::KeyRef;

pub use error::ConfigError;
pub use raw::RawConfig;
pub use validate::{is_identifier, RESERVED_DEVICE_IDS};

/// Where `facegate` looks for its config file when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/facegate/facegate.toml";

/// Prefix of environment variables that override config keys
/// (`FACEGATE_MQTT__HOST` overrides `mqtt.host`).
pub const ENV_PREFIX: &str = "FACEGATE_";

/// Loads `path`, applies `FACEGATE_*` overrides from the process environment,
/// validates, and checks the broker TLS files ([`Config::check_files`]).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let env = raw::process_env()?;
    load_with_env(path, &env)
}

/// Like [`load`], but the environment is `env` (name, value) instead of the
/// process environment; names without the `FACEGATE_` prefix are ignored.
pub fn load_with_env(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let config = load_unchecked_with_env(path, env)?;
    config.check_files()?;
    Ok(config)
}

/// Like [`load`], but without [`Config::check_files`]: for `facegate ctl`
/// (site admins need the socket path, not the device's TLS key) and for
/// `facegate provision` / `doctor`, which run before (or check themselves
/// whether) the broker TLS files exist.
pub fn load_unchecked(path: &Path) -> Result<Config, ConfigError> {
    let env = raw::process_env()?;
    load_unchecked_with_env(path, &env)
}

/// [`load_unchecked`] with an explicit environment (tests).
pub fn load_unchecked_with_env(
    path: &Path,
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_text(&text, path, &base_dir_of(path), env)
}

/// The config file's `text` (read from `origin`, which messages name) with
/// the `FACEGATE_*` entries of `env` applied, validated; relative paths are
/// resolved against `base_dir`. What every loader above runs once it has
/// read the file, and the entry point of the config fuzz target (`fuzz/`).
/// Reads no file but the trust keys given by `public_key_file`; the broker
/// TLS files are not checked ([`Config::check_files`]).
pub fn from_text(
    text: &str,
    origin: &Path,
    base_dir: &Path,
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    let checked = RawConfig::merge(text, origin, env).and_then(|raw| raw.validate(base_dir));
    raw::blame_env(checked, env)
}

/// Parses and validates a TOML document without any environment overrides.
/// Relative paths are resolved against `base_dir`. The broker TLS files are
/// not checked (call [`Config::check_files`] for that), so tests may use
/// placeholder paths; trust keys given by `public_key_file` are still read.
pub fn from_toml_str(toml: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    from_text(toml, Path::new("<inline config>"), base_dir, &[])
}

/// Directory against which relative paths in the file at `path` are resolved:
/// the file's own directory, made absolute so a later `chdir` cannot move it.
fn base_dir_of(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::path::absolute(&dir).unwrap_or(dir)
}

/// Who this device is. Used for topic names and for token/command audiences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Site the terminal belongs to (`[A-Za-z0-9_-]{1,64}`).
    pub site_id: String,
    /// This terminal (`[A-Za-z0-9_-]{1,64}`); also the MQTT client id.
    pub device_id: String,
}

/// What a trusted key may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Consent tokens and revocations.
    Consent,
    /// Fleet commands.
    Fleet,
}

/// One `[[trust]]` entry: an Ed25519 public key the device believes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// Key id matched against the JWS header `kid`.
    pub kid: String,
    /// What this key may sign; a key of the wrong role is refused.
    pub role: Role,
    /// Raw 32-byte Ed25519 public key.
    pub public_key: [u8; 32],
}

/// The fully validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Site and device names.
    pub identity: Identity,
    /// SQLite database, device storage key, control socket (unless moved).
    pub state_dir: PathBuf,
    /// Intake directory written by camera software; meant to be on tmpfs.
    pub spool_dir: PathBuf,
    /// Broker connection (used by the uplink).
    pub mqtt: MqttConfig,
    /// Keys allowed to sign consents and commands.
    pub trust: Vec<TrustedKey>,
    /// Limits applied to every capture taken from the spool.
    pub capture: CaptureConfig,
    /// Retention and quota of the encrypted outbox.
    pub outbox: OutboxConfig,
    /// Acceptance window for signed fleet commands.
    pub commands: CommandConfig,
    /// What a consent token may claim.
    pub consent: ConsentConfig,
    /// Log level and format.
    pub log: LogConfig,
    /// Local control socket for `facegate ctl`.
    pub control: ControlConfig,
    /// How long the audit log keeps its rows.
    pub audit: AuditConfig,
    /// Where the device storage key comes from.
    pub storage: StorageConfig,
    /// How wall-clock jumps are told apart (ARCHITECTURE I15).
    pub clock: ClockConfig,
}

/// `[clock]`: wall-clock jumps. A step of the wall clock larger than
/// `jump_threshold` against the time that passed (`CLOCK_BOOTTIME`) holds
/// every irreversible time-based action (consent expiry sweep, outbox and
/// audit retention, forgetting command ids, spool orphan removal) until the
/// clock comes back or the new time is confirmed (ARCHITECTURE I15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockConfig {
    /// Largest step that is not a jump (default 10 min, 1 min to 30 days).
    pub jump_threshold: Duration,
    /// Whether the kernel's NTP status (`adjtimex`: synchronised) confirms a
    /// jump (`ntp = "consult"`, default) or only a signed `iat` does
    /// (`"ignore"`).
    pub ntp: bool,
}

/// `[mqtt]`: the broker and how the uplink talks to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// Broker host name; also the TLS server name that is verified.
    pub host: String,
    /// Broker TLS port (default 8883).
    pub port: u16,
    /// CA bundle (PEM) that must have signed the broker certificate.
    pub ca_file: PathBuf,
    /// This device's client certificate chain (PEM).
    pub cert_file: PathBuf,
    /// This device's private key (`mqtt.key_file`): a PEM file (PKCS#8 or
    /// SEC1/RSA; must not be group/world readable), or a key in a PKCS#11
    /// token named by a `pkcs11:` URI with its provider library
    /// (`mqtt.pkcs11_module`).
    pub key: KeyRef,
    /// Topic prefix (default `facegate`).
    pub prefix: String,
    /// MQTT keep-alive interval (default 30 s).
    pub keep_alive: Duration,
    /// Captures handed to MQTT but not yet acknowledged, at most (default 16).
    pub inflight: u16,
    /// First reconnect delay (default 1 s); doubles with jitter up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Reconnect delay cap (default 60 s).
    pub reconnect_max: Duration,
    /// How often the retained status is republished (default 60 s).
    pub status_interval: Duration,
    /// Largest MQTT packet the device sends, whole PUBLISH packet counted
    /// (default 128 KiB, [`MIN_MAX_PACKET_SIZE`] to [`MAX_MAX_PACKET_SIZE`]).
    /// A capture whose envelope would not fit goes out in parts.
    pub max_packet_size: usize,
    /// Refusals by the broker after which a capture is quarantined (default
    /// 5, 1 to [`MAX_MAX_ATTEMPTS`]); see `uplink::suspect` for what counts.
    pub max_attempts: u32,
    /// The MQTT version the uplink speaks (`mqtt.protocol`, default 3.1.1).
    pub protocol: MqttProtocol,
    /// How long the broker keeps the device's session after a disconnect,
    /// sent as the MQTT 5 Session Expiry Interval (`mqtt.session_expiry`,
    /// default 7 days, [`MIN_SESSION_EXPIRY_S`] to [`MAX_SESSION_EXPIRY_S`]
    /// whole seconds; the maximum means "never"). Only used under MQTT 5:
    /// under 3.1.1 the broker's own setting decides.
    pub session_expiry: Duration,
    /// How long a clean stop (SIGTERM) waits for the uploads in flight to be
    /// acknowledged before it disconnects (`mqtt.stop_grace`, default 5 s,
    /// 0 to [`MAX_STOP_GRACE_S`] seconds; 0: do not wait). What is still
    /// unacknowledged then stays queued and is sent again after the restart.
    pub stop_grace: Duration,
    /// The broker product this terminal talks to (`mqtt.profile`, optional):
    /// `facegate doctor` checks the settings against its documented limits.
    /// Changes nothing in how the uplink behaves.
    pub profile: Option<BrokerProfile>,
}

/// `[mqtt] profile`: a broker product whose documented limits `facegate
/// doctor` checks the configuration against (`doctor::profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerProfile {
    /// `"aws-iot"`: AWS IoT Core.
    AwsIot,
    /// `"azure-iot-hub"`: Azure IoT Hub.
    AzureIotHub,
    /// `"emqx"`: EMQX with its default settings.
    Emqx,
    /// `"hivemq"`: HiveMQ with its default settings.
    Hivemq,
    /// `"mosquitto"`: Eclipse Mosquitto with its default settings.
    Mosquitto,
}

impl BrokerProfile {
    /// Every profile with its config name, in the order error messages list them.
    pub const ALL: [(&'static str, BrokerProfile); 5] = [
        ("aws-iot", BrokerProfile::AwsIot),
        ("azure-iot-hub", BrokerProfile::AzureIotHub),
        ("emqx", BrokerProfile::Emqx),
        ("hivemq", BrokerProfile::Hivemq),
        ("mosquitto", BrokerProfile::Mosquitto),
    ];

    /// The name written in the config (`"aws-iot"`).
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("", |(name, _)| name)
    }
}

/// `[mqtt] protocol`: the MQTT version of the uplink (SPEC "Broker limits and
/// large captures").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttProtocol {
    /// MQTT 3.1.1 (the default).
    V311,
    /// MQTT 5: session expiry, PUBACK reason codes, the broker's Maximum
    /// Packet Size and the device's own announced to the broker.
    V5,
}

/// Shortest `[mqtt] session_expiry`: a session that ends with the connection
/// would lose the commands (revocations) queued while the device is away.
pub const MIN_SESSION_EXPIRY_S: u64 = 60;
/// Longest `[mqtt] session_expiry`: the MQTT 5 Session Expiry Interval is a
/// 32-bit number of seconds, and its maximum means the session never expires.
pub const MAX_SESSION_EXPIRY_S: u64 = u32::MAX as u64;

/// Longest `[mqtt] stop_grace`, in seconds: with the DISCONNECT and the
/// other tasks' stop it fits the shipped unit's `TimeoutStopSec=30s`.
pub const MAX_STOP_GRACE_S: u64 = 20;

/// Default `[mqtt] max_attempts` (SPEC "Broker limits and large captures").
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Largest `[mqtt] max_attempts`.
pub const MAX_MAX_ATTEMPTS: u32 = 1000;

/// Default `[mqtt] max_packet_size`: 128 KiB, the strictest common cloud
/// broker limit (AWS IoT Core).
pub const DEFAULT_MAX_PACKET_SIZE: usize = 128 * 1024;
/// Smallest `[mqtt] max_packet_size`: room for a part envelope with the
/// longest ids and topic plus a useful slice of image, and for status.
pub const MIN_MAX_PACKET_SIZE: usize = 4 * 1024;
/// Largest `[mqtt] max_packet_size`: MQTT's own limit (a remaining length of
/// at most 268,435,455 bytes, plus the fixed header).
pub const MAX_MAX_PACKET_SIZE: usize = 268_435_455 + 5;

/// What to do with a new consented capture when the outbox quota is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse the new capture (it is removed from the spool, counted and audited);
    /// everything already accepted stays. The default.
    RejectNew,
    /// Purge the oldest queued captures until the new one fits.
    DropOldest,
}

/// `[capture]`: limits applied to each spool pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Largest image file accepted, in bytes (default 8 MiB).
    pub max_file_bytes: u64,
    /// Largest image width in pixels (default 4096).
    pub max_width: u32,
    /// Largest image height in pixels (default 4096).
    pub max_height: u32,
    /// Largest decoder allocation in bytes (default 64 MiB); stops decompression bombs.
    pub max_alloc_bytes: u64,
    /// Most memory all image decodes may hold at once (default 64 MiB, at
    /// least `max_alloc_bytes`): a decode that would go over it waits, so
    /// small images decode on every core and large ones one after another.
    pub decode_memory_bytes: u64,
    /// A lone image or stray file older than this is removed (default 60 s).
    pub spool_grace: Duration,
    /// How often the spool is scanned as a safety net (default 2 s, 10 ms
    /// to 5 min). Intake wakes on the sidecar's rename (inotify) without
    /// waiting for it; the scan catches what events miss (a queue
    /// overflow, no inotify at all).
    pub poll_interval: Duration,
    /// Most image bytes (file sizes) read into one intake batch, besides
    /// the count limit (default 8 MiB, 1 MiB to 4 GiB); a single larger
    /// pair still goes through alone.
    pub max_batch_bytes: u64,
}

/// `[outbox]`: how long and how much is kept while the broker is away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Captures older than this are purged unsent (default 7 days).
    pub retention: Duration,
    /// Total encrypted bytes the outbox may hold (default 512 MiB).
    pub quota_bytes: u64,
    /// Policy when a new capture would exceed `quota_bytes`.
    pub when_full: WhenFull,
}

/// `[audit]`: the audit log's retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Audit rows older than this are deleted by housekeeping, behind a
    /// sealed chain checkpoint so `ctl audit verify` still proves the rest
    /// (default 90 days, 1 day to 10 years).
    pub retention: Duration,
}

/// `[commands]`: acceptance window for signed fleet commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandConfig {
    /// Longest allowed `exp - iat` (default 24 h).
    pub max_lifetime: Duration,
    /// Clock difference tolerated on `iat`/`exp` (default 60 s).
    pub clock_skew: Duration,
    /// Largest command payload accepted, in bytes (default 64 KiB).
    pub max_bytes: usize,
}

/// `[consent]`: limits on consent tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentConfig {
    /// Longest allowed `exp - iat` of a consent token (default 365 days,
    /// between 1 hour and 3650 days); a longer token is refused
    /// `lifetime_too_long`.
    pub max_lifetime: Duration,
    /// `log`: whether uploads wait until the device has seen every consent
    /// decision of its site (SPEC "Site consent log"; default off).
    pub log: ConsentLogMode,
    /// `head_max_age`: a consent-log head whose `iat` is older than this
    /// counts as no head (default 24 h, between 1 second and 30 days).
    pub head_max_age: Duration,
}

/// `[consent] log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentLogMode {
    /// Uploads do not depend on the site consent log (default).
    Off,
    /// Nothing is uploaded while the device is out of sync with the log.
    Required,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human readable lines (default).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `facegate=debug` (default `info`).
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Where the device storage key (`[storage] key_source`) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// `<state_dir>/storage.key`, created by the daemon or `provision` if
    /// missing (default).
    File,
    /// The systemd credential `facegate-storage-key`, read from
    /// `$CREDENTIALS_DIRECTORY` (the unit loads it with
    /// `LoadCredentialEncrypted=`); never created by the daemon.
    Credential,
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Where the storage key comes from (default [`KeySource::File`]);
    /// restart-only.
    pub key_source: KeySource,
    /// Disk space kept free next to the database for revocations, purges
    /// and deletes after PUBACK (default 16 MiB, 0 turns it off); intake
    /// stops before it is touched (`crate::space`). Restart-only.
    pub reserve_bytes: u64,
}

/// `[control]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Unix socket for `facegate ctl` (default `<state_dir>/control.sock`), mode 0660.
    pub socket: PathBuf,
}

impl Config {
    /// The trusted key named `kid`, if any.
    pub fn trusted(&self, kid: &str) -> Option<&TrustedKey> {
        self.trust.iter().find(|k| k.kid == kid)
    }

    /// Checks that the broker TLS files exist and are readable regular files,
    /// and that `mqtt.key_file` is not accessible by group or others. A
    /// PKCS#11 key is not looked at here: its library, token, PIN and object
    /// are opened by the uplink, which logs what is wrong and retries while
    /// the daemon keeps working (`facegate doctor` checks them).
    /// [`load`] calls this; [`from_toml_str`] does not.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        validate::check_readable("mqtt.ca_file", &self.mqtt.ca_file)?;
        validate::check_readable("mqtt.cert_file", &self.mqtt.cert_file)?;
        match &self.mqtt.key {
            KeyRef::File(key_file) => {
                validate::check_readable("mqtt.key_file", key_file)?;
                validate::check_private("mqtt.key_file", key_file)
            }
            KeyRef::Pkcs11(_) => Ok(()),
        }
    }
}

/// Configurations for unit tests of the modules that take one.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    /// The smallest valid configuration with its directories under `dir`,
    /// followed by `extra` TOML (sections only).
    pub fn config(dir: &Path, extra: &str) -> super::Config {
        let toml = format!(
            r#"site_id = "lobby"
device_id = "term-01"
state_dir = "{d}/state"
spool_dir = "{d}/spool"
[mqtt]
host = "localhost"
ca_file = "ca.pem"
cert_file = "device.pem"
key_file = "device.key"
[[trust]]
kid = "consent-2026"
role = "consent"
public_key = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
{extra}"#,
            d = dir.display()
        );
        super::from_toml_str(&toml, dir).expect("valid test config")
    }
}
