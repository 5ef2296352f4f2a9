//! Phase two: [`RawConfig::validate`] turns the raw values into a [`Config`],
//! applying defaults and naming the exact key of the first problem found.
//! Also the checks on files named by the config (broker TLS files).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{io_reason, ConfigError};
use super::keys;
use super::raw::{
    RawAudit, RawCapture, RawCommands, RawConsent, RawLog, RawMqtt, RawNumber, RawOutbox, RawTrust,
};
use super::{
    AuditConfig, CaptureConfig, ClockConfig, CommandConfig, Config, ConsentConfig, ConsentLogMode,
    ControlConfig, Identity, KeySource, LogConfig, LogFormat, MqttConfig, MqttProtocol,
    OutboxConfig, RawConfig, Role, StorageConfig, TrustedKey, WhenFull,
};
use crate::keyref::{KeyRef, KeyRefError};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Default `[storage] reserve_bytes`: a revocation on a full disk writes
/// (zeroes) every page it frees into the WAL, so the reserve must hold a
/// subject's queued captures plus a window of deletes: 16 MiB covers ~300
/// captures of 50 kB, at a cost of 16 MiB of a device's disk.
pub const DEFAULT_RESERVE_BYTES: u64 = 16 * MIB;
const GIB: u64 = 1024 * MIB;

/// Longest path a unix socket address can hold (`sun_path` is 108 bytes with NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Largest `public_key_file` read; a key file is a few hundred bytes at most.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

impl RawConfig {
    /// Checks every value, applies defaults and resolves relative paths
    /// against `base_dir` (the config file's directory). Does not touch the
    /// broker TLS files; see [`Config::check_files`].
    pub fn validate(self, base_dir: &Path) -> Result<Config, ConfigError> {
        let identity = Identity {
            site_id: identifier("site_id", self.site_id)?,
            device_id: device_id(self.device_id)?,
        };
        let state_dir = path(
            "state_dir",
            self.state_dir.or(Some("/var/lib/facegate".into())),
            base_dir,
        )?;
        let spool_dir = path(
            "spool_dir",
            self.spool_dir.or(Some("/run/facegate/spool".into())),
            base_dir,
        )?;
        if spool_dir.starts_with(&state_dir) || state_dir.starts_with(&spool_dir) {
            return Err(ConfigError::invalid(
                "spool_dir",
                format!(
                    "{} overlaps state_dir {}; the spool is cleaned of stray files, so it must be a separate directory",
                    spool_dir.display(),
                    state_dir.display()
                ),
            ));
        }
        let mqtt = mqtt(self.mqtt, base_dir)?;
        let trust = trust(self.trust, base_dir)?;
        let capture = capture(self.capture)?;
        let outbox = outbox(self.outbox)?;
        let commands = commands(self.commands)?;
        let consent = consent(self.consent)?;
        let log = log(self.log)?;
        let audit = audit(self.audit)?;
        let clock = ClockConfig {
            jump_threshold: duration(
                "clock.jump_threshold",
                self.clock.jump_threshold,
                "10m",
                secs(60),
                secs(30 * 86_400),
            )?,
            ntp: choice(
                "clock.ntp",
                self.clock.ntp,
                "consult",
                &[("consult", true), ("ignore", false)],
            )?,
        };
        let storage = StorageConfig {
            key_source: choice(
                "storage.key_source",
                self.storage.key_source,
                "file",
                &[
                    ("file", KeySource::File),
                    ("credential", KeySource::Credential),
                ],
            )?,
            reserve_bytes: number(
                "storage.reserve_bytes",
                self.storage.reserve_bytes,
                DEFAULT_RESERVE_BYTES,
                0,
                4 * 1024 * MIB,
                Unit::Bytes,
            )?,
        };
        let socket = match self.control.socket {
            Some(s) => path("control.socket", Some(s), base_dir)?,
            None => state_dir.join("control.sock"),
        };
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ConfigError::invalid(
                "control.socket",
                format!(
                    "{} is {} bytes long; a unix socket path may have at most {MAX_SOCKET_PATH}",
                    socket.display(),
                    socket.as_os_str().len()
                ),
            ));
        }
        Ok(Config {
            identity,
            state_dir,
            spool_dir,
            mqtt,
            trust,
            capture,
            outbox,
            commands,
            consent,
            log,
            control: ControlConfig { socket },
            audit,
            storage,
            clock,
        })
    }
}

fn mqtt(raw: RawMqtt, base_dir: &Path) -> Result<MqttConfig, ConfigError> {
    let host = required("mqtt.host", raw.host)?;
    if rustls::pki_types::ServerName::try_from(host.as_str()).is_err() {
        return Err(ConfigError::invalid(
            "mqtt.host",
            format!(
                "{host:?} is not a DNS name or IP address (give the bare host, no scheme or port)"
            ),
        ));
    }
    let reconnect_min = duration(
        "mqtt.reconnect_min",
        raw.reconnect_min,
        "1s",
        ms(100),
        secs(3600),
    )?;
    let reconnect_max = duration(
        "mqtt.reconnect_max",
        raw.reconnect_max,
        "60s",
        secs(1),
        secs(86_400),
    )?;
    if reconnect_max < reconnect_min {
        return Err(ConfigError::invalid(
            "mqtt.reconnect_max",
            format!(
                "{} is less than mqtt.reconnect_min ({})",
                humantime::format_duration(reconnect_max),
                humantime::format_duration(reconnect_min)
            ),
        ));
    }
    let keep_alive = duration(
        "mqtt.keep_alive",
        raw.keep_alive,
        "30s",
        secs(1),
        secs(65_535),
    )?;
    if keep_alive.subsec_nanos() != 0 {
        return Err(ConfigError::invalid(
            "mqtt.keep_alive",
            "must be a whole number of seconds",
        ));
    }
    let session_expiry = duration(
        "mqtt.session_expiry",
        raw.session_expiry,
        "7d",
        secs(crate::config::MIN_SESSION_EXPIRY_S),
        secs(crate::config::MAX_SESSION_EXPIRY_S),
    )?;
    if session_expiry.subsec_nanos() != 0 {
        return Err(ConfigError::invalid(
            "mqtt.session_expiry",
            "must be a whole number of seconds",
        ));
    }
    Ok(MqttConfig {
        host,
        port: number("mqtt.port", raw.port, 8883, 1, 65_535, Unit::Plain)? as u16,
        ca_file: path("mqtt.ca_file", raw.ca_file, base_dir)?,
        cert_file: path("mqtt.cert_file", raw.cert_file, base_dir)?,
        key: device_key(raw.key_file, raw.pkcs11_module, base_dir)?,
        prefix: identifier("mqtt.prefix", raw.prefix.or(Some("facegate".into())))?,
        keep_alive,
        inflight: number("mqtt.inflight", raw.inflight, 16, 1, 1024, Unit::Plain)? as u16,
        reconnect_min,
        reconnect_max,
        status_interval: duration(
            "mqtt.status_interval",
            raw.status_interval,
            "60s",
            secs(1),
            secs(86_400),
        )?,
        max_packet_size: number(
            "mqtt.max_packet_size",
            raw.max_packet_size,
            crate::config::DEFAULT_MAX_PACKET_SIZE as u64,
            crate::config::MIN_MAX_PACKET_SIZE as u64,
            crate::config::MAX_MAX_PACKET_SIZE as u64,
            Unit::Bytes,
        )? as usize,
        max_attempts: number(
            "mqtt.max_attempts",
            raw.max_attempts,
            crate::config::DEFAULT_MAX_ATTEMPTS.into(),
            1,
            crate::config::MAX_MAX_ATTEMPTS.into(),
            Unit::Plain,
        )? as u32,
        protocol: choice(
            "mqtt.protocol",
            raw.protocol.map(|p| match p {
                RawNumber::Int(n) => n.to_string(),
                RawNumber::Text(t) => t,
            }),
            "3.1.1",
            &[("3.1.1", MqttProtocol::V311), ("5", MqttProtocol::V5)],
        )?,
        session_expiry,
        stop_grace: duration(
            "mqtt.stop_grace",
            raw.stop_grace,
            "5s",
            secs(0),
            secs(crate::config::MAX_STOP_GRACE_S),
        )?,
        profile: match raw.profile {
            None => None,
            Some(name) => Some(choice(
                "mqtt.profile",
                Some(name),
                "",
                &super::BrokerProfile::ALL,
            )?),
        },
    })
}

/// `mqtt.key_file` (a path or a `pkcs11:` URI) with `mqtt.pkcs11_module`.
fn device_key(
    key_file: Option<String>,
    module: Option<String>,
    base_dir: &Path,
) -> Result<KeyRef, ConfigError> {
    let value = required("mqtt.key_file", key_file)?;
    if value.trim().is_empty() {
        return Err(ConfigError::invalid("mqtt.key_file", "must not be empty"));
    }
    let module = match module {
        Some(m) if m.trim().is_empty() => {
            return Err(ConfigError::invalid(
                "mqtt.pkcs11_module",
                "must not be empty",
            ))
        }
        Some(m) => Some(base_dir.join(m)),
        None => None,
    };
    let key = KeyRef::parse(&value, base_dir, module).map_err(|e| match e {
        KeyRefError::NoModule | KeyRefError::ModuleWithoutUri => {
            ConfigError::invalid("mqtt.pkcs11_module", e.to_string())
        }
        e => ConfigError::invalid("mqtt.key_file", e.to_string()),
    })?;
    if !cfg!(feature = "pkcs11") && key.pkcs11().is_some() {
        return Err(ConfigError::invalid(
            "mqtt.key_file",
            "a pkcs11: key needs a facegate built with PKCS#11 support (cargo feature \"pkcs11\")",
        ));
    }
    Ok(key)
}

fn trust(entries: Vec<RawTrust>, base_dir: &Path) -> Result<Vec<TrustedKey>, ConfigError> {
    let mut keys: Vec<TrustedKey> = Vec::with_capacity(entries.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let at = |field: &str| format!("trust[{i}].{field}");
        let kid = required(&at("kid"), entry.kid)?;
        if !(1..=128).contains(&kid.len())
            || !kid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
        {
            return Err(ConfigError::invalid(
                at("kid"),
                format!("{kid:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"),
            ));
        }
        if let Some(first) = seen.insert(kid.clone(), i) {
            return Err(ConfigError::invalid(
                at("kid"),
                format!("duplicate key id {kid:?} (already used by trust[{first}])"),
            ));
        }
        let role = choice(
            &at("role"),
            Some(required(&at("role"), entry.role)?),
            "",
            &[("consent", Role::Consent), ("fleet", Role::Fleet)],
        )?;
        let public_key = match (entry.public_key, entry.public_key_file) {
            (Some(text), None) => keys::from_base64url(&text).ok_or_else(|| {
                ConfigError::invalid(at("public_key"), "not a 32-byte base64url Ed25519 key")
            })?,
            (None, Some(file)) => key_from_file(
                &at("public_key_file"),
                &path(&at("public_key_file"), Some(file), base_dir)?,
            )?,
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    at("public_key"),
                    "give either public_key or public_key_file, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    at("public_key"),
                    "missing (give public_key or public_key_file)",
                ))
            }
        };
        keys.push(TrustedKey {
            kid,
            role,
            public_key,
        });
    }
    if !keys.iter().any(|k| k.role == Role::Consent) {
        return Err(ConfigError::invalid(
            "trust",
            "no key with role \"consent\": no consent token could ever be verified",
        ));
    }
    Ok(keys)
}

fn key_from_file(key: &str, file: &Path) -> Result<[u8; 32], ConfigError> {
    let fail = |reason: String| ConfigError::File {
        key: key.to_string(),
        path: file.to_path_buf(),
        reason,
    };
    let meta = fs::metadata(file).map_err(|e| fail(io_reason(&e)))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(fail(format!(
            "{} bytes is too large for a public key file",
            meta.len()
        )));
    }
    let text = fs::read_to_string(file).map_err(|e| fail(io_reason(&e)))?;
    keys::from_file_text(&text).ok_or_else(|| {
        fail("neither a 32-byte base64url Ed25519 key nor a PEM Ed25519 PUBLIC KEY".into())
    })
}

fn capture(raw: RawCapture) -> Result<CaptureConfig, ConfigError> {
    let max_alloc_bytes = number(
        "capture.max_alloc_bytes",
        raw.max_alloc_bytes,
        64 * MIB,
        1,
        16 * GIB,
        Unit::Bytes,
    )?;
    // Unset, it follows a raised max_alloc_bytes.
    let follows = raw.decode_memory_bytes.is_none();
    let decode_memory_bytes = number(
        "capture.decode_memory_bytes",
        raw.decode_memory_bytes,
        64 * MIB,
        1,
        64 * GIB,
        Unit::Bytes,
    )?;
    let decode_memory_bytes = if follows {
        decode_memory_bytes.max(max_alloc_bytes)
    } else {
        decode_memory_bytes
    };
    if decode_memory_bytes < max_alloc_bytes {
        return Err(ConfigError::invalid(
            "capture.decode_memory_bytes",
            format!(
                "{decode_memory_bytes} bytes is less than capture.max_alloc_bytes ({max_alloc_bytes} bytes): one image could never decode"
            ),
        ));
    }
    Ok(CaptureConfig {
        max_file_bytes: number(
            "capture.max_file_bytes",
            raw.max_file_bytes,
            8 * MIB,
            1,
            GIB,
            Unit::Bytes,
        )?,
        max_width: number(
            "capture.max_width",
            raw.max_width,
            4096,
            1,
            65_535,
            Unit::Plain,
        )? as u32,
        max_height: number(
            "capture.max_height",
            raw.max_height,
            4096,
            1,
            65_535,
            Unit::Plain,
        )? as u32,
        max_alloc_bytes,
        decode_memory_bytes,
        spool_grace: duration(
            "capture.spool_grace",
            raw.spool_grace,
            "60s",
            secs(1),
            secs(86_400),
        )?,
        poll_interval: duration(
            "capture.poll_interval",
            raw.poll_interval,
            "2s",
            ms(10),
            secs(300),
        )?,
        max_batch_bytes: number(
            "capture.max_batch_bytes",
            raw.max_batch_bytes,
            8 * MIB,
            MIB,
            4 * GIB,
            Unit::Bytes,
        )?,
    })
}

fn outbox(raw: RawOutbox) -> Result<OutboxConfig, ConfigError> {
    Ok(OutboxConfig {
        retention: duration(
            "outbox.retention",
            raw.retention,
            "7d",
            secs(60),
            secs(366 * 86_400),
        )?,
        quota_bytes: number(
            "outbox.quota_bytes",
            raw.quota_bytes,
            512 * MIB,
            MIB,
            u64::MAX,
            Unit::Bytes,
        )?,
        when_full: choice(
            "outbox.when_full",
            raw.when_full,
            "reject_new",
            &[
                ("reject_new", WhenFull::RejectNew),
                ("drop_oldest", WhenFull::DropOldest),
            ],
        )?,
    })
}

fn audit(raw: RawAudit) -> Result<AuditConfig, ConfigError> {
    Ok(AuditConfig {
        retention: duration(
            "audit.retention",
            raw.retention,
            "90d",
            secs(86_400),
            secs(315_576_000), // 10 years of 365.25 days
        )?,
    })
}

fn commands(raw: RawCommands) -> Result<CommandConfig, ConfigError> {
    Ok(CommandConfig {
        max_lifetime: duration(
            "commands.max_lifetime",
            raw.max_lifetime,
            "24h",
            secs(60),
            secs(30 * 86_400),
        )?,
        clock_skew: duration(
            "commands.clock_skew",
            raw.clock_skew,
            "60s",
            Duration::ZERO,
            secs(3600),
        )?,
        max_bytes: number(
            "commands.max_bytes",
            raw.max_bytes,
            64 * KIB,
            KIB,
            16 * MIB,
            Unit::Bytes,
        )? as usize,
    })
}

fn consent(raw: RawConsent) -> Result<ConsentConfig, ConfigError> {
    Ok(ConsentConfig {
        max_lifetime: duration(
            "consent.max_lifetime",
            raw.max_lifetime,
            "365d",
            secs(3600),
            secs(3650 * 86_400),
        )?,
        log: choice(
            "consent.log",
            raw.log,
            "off",
            &[
                ("off", ConsentLogMode::Off),
                ("required", ConsentLogMode::Required),
            ],
        )?,
        head_max_age: duration(
            "consent.head_max_age",
            raw.head_max_age,
            "24h",
            secs(1),
            secs(30 * 86_400),
        )?,
    })
}

fn log(raw: RawLog) -> Result<LogConfig, ConfigError> {
    let level = raw.level.unwrap_or_else(|| "info".into());
    if level.trim().is_empty() {
        return Err(ConfigError::invalid("log.level", "must not be empty"));
    }
    if let Err(e) = level.parse::<tracing_subscriber::filter::Targets>() {
        return Err(ConfigError::invalid(
            "log.level",
            format!("bad filter {level:?}: {e}"),
        ));
    }
    Ok(LogConfig {
        level,
        format: choice(
            "log.format",
            raw.format,
            "text",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )?,
    })
}

/// Checks that `file` is an existing regular file this process can open.
pub(crate) fn check_readable(key: &str, file: &Path) -> Result<(), ConfigError> {
    let fail = |reason: String| ConfigError::File {
        key: key.to_string(),
        path: file.to_path_buf(),
        reason,
    };
    let meta = fs::metadata(file).map_err(|e| fail(io_reason(&e)))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    fs::File::open(file).map_err(|e| fail(io_reason(&e)))?;
    Ok(())
}

/// Checks that a private key file grants nothing to group or others.
pub(crate) fn check_private(key: &str, file: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |reason: String| ConfigError::File {
        key: key.to_string(),
        path: file.to_path_buf(),
        reason,
    };
    let mode = fs::metadata(file)
        .map_err(|e| fail(io_reason(&e)))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(fail(format!(
            "mode {mode:04o} lets group or others access the private key (chmod 600 it)"
        )));
    }
    Ok(())
}

fn required<T>(key: &str, value: Option<T>) -> Result<T, ConfigError> {
    value.ok_or_else(|| ConfigError::Missing {
        key: key.to_string(),
    })
}

/// Whether `value` is an identifier: `[A-Za-z0-9_-]{1,64}` (site and device
/// ids, topic prefix: no `/`, `+`, `#`).
pub fn is_identifier(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Required `[A-Za-z0-9_-]{1,64}` name (ids, topic prefix: no `/`, `+`, `#`).
fn identifier(key: &str, value: Option<String>) -> Result<String, ConfigError> {
    let value = required(key, value)?;
    if is_identifier(&value) {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{value:?} must be 1 to 64 characters of A-Z a-z 0-9 _ -"),
        ))
    }
}

/// Device ids the broker ACL gives more than a device's own topics (the
/// certificate CN is the MQTT user name): a device named like one of them
/// would be provisioned, and could be signed, with the back-end's rights.
/// Compared ignoring case, so no look-alike passes either.
pub const RESERVED_DEVICE_IDS: &[&str] = &["fleet"];

/// `device_id`: an identifier that is not a reserved broker identity.
fn device_id(value: Option<String>) -> Result<String, ConfigError> {
    let value = identifier("device_id", value)?;
    if let Some(name) = RESERVED_DEVICE_IDS
        .iter()
        .find(|r| r.eq_ignore_ascii_case(&value))
    {
        return Err(ConfigError::invalid(
            "device_id",
            format!(
                "{value:?} is reserved: the broker ACL gives the user {name:?} rights over every device's topics; choose another name"
            ),
        ));
    }
    Ok(value)
}

/// Required non-empty path; relative paths are taken from `base_dir`.
fn path(key: &str, value: Option<String>, base_dir: &Path) -> Result<PathBuf, ConfigError> {
    let value = required(key, value)?;
    if value.trim().is_empty() {
        return Err(ConfigError::invalid(key, "must not be empty"));
    }
    Ok(base_dir.join(value))
}

/// One of a fixed set of words; `default` applies when absent.
fn choice<T: Copy>(
    key: &str,
    value: Option<String>,
    default: &str,
    options: &[(&str, T)],
) -> Result<T, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_string());
    match options.iter().find(|(name, _)| *name == value) {
        Some((_, v)) => Ok(*v),
        None => {
            let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
            Err(ConfigError::invalid(
                key,
                format!("expected {}, got {value:?}", names.join(" or ")),
            ))
        }
    }
}

/// How a number may be written as text.
#[derive(Clone, Copy)]
enum Unit {
    /// Decimal digits only.
    Plain,
    /// Decimal digits, optionally followed by B, kB, MB, GB, KiB, MiB or GiB.
    Bytes,
}

/// A number in `min..=max`, `default` when absent.
fn number(
    key: &str,
    value: Option<RawNumber>,
    default: u64,
    min: u64,
    max: u64,
    unit: Unit,
) -> Result<u64, ConfigError> {
    let parsed = match value {
        None => return Ok(default),
        Some(RawNumber::Int(n)) => u64::try_from(n).ok(),
        Some(RawNumber::Text(ref text)) => match unit {
            Unit::Plain => text.trim().parse::<u64>().ok(),
            Unit::Bytes => parse_bytes(text),
        },
    };
    let Some(n) = parsed else {
        let shown = match value {
            Some(RawNumber::Int(n)) => n.to_string(),
            Some(RawNumber::Text(t)) => format!("{t:?}"),
            None => String::new(),
        };
        let expected = match unit {
            Unit::Plain => "a positive integer",
            Unit::Bytes => "a positive integer or a size such as \"8MiB\"",
        };
        return Err(ConfigError::invalid(
            key,
            format!("expected {expected}, got {shown}"),
        ));
    };
    if n < min || n > max {
        let range = if max == u64::MAX {
            format!("must be at least {min}")
        } else {
            format!("must be between {min} and {max}")
        };
        return Err(ConfigError::invalid(key, format!("{range}, got {n}")));
    }
    Ok(n)
}

/// `"8388608"`, `"8MiB"`, `"8 MiB"`, `"500kB"` → bytes (units case-insensitive).
fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "kib" => KIB,
        "mib" => MIB,
        "gib" => GIB,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// A humantime duration (`"100ms"`, `"30s"`, `"7d"`) in `min..=max`.
fn duration(
    key: &str,
    value: Option<String>,
    default: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_string());
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| ConfigError::invalid(key, format!("bad duration {text:?}: {e}")))?;
    if d < min || d > max {
        return Err(ConfigError::invalid(
            key,
            format!(
                "must be between {} and {}, got {}",
                humantime::format_duration(min),
                humantime::format_duration(max),
                humantime::format_duration(d)
            ),
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("8388608", Some(8 * MIB)),
            ("8MiB", Some(8 * MIB)),
            ("8 MiB", Some(8 * MIB)),
            ("8mib", Some(8 * MIB)),
            ("64KiB", Some(64 * KIB)),
            ("1GiB", Some(GIB)),
            ("500kB", Some(500_000)),
            ("2MB", Some(2_000_000)),
            ("3GB", Some(3_000_000_000)),
            ("12B", Some(12)),
            (" 7 ", Some(7)),
            ("", None),
            ("MiB", None),
            ("8 MiBs", None),
            ("-1", None),
            ("1.5MiB", None),
            ("wide", None),
            ("99999999999999999999GiB", None),
            ("18446744073709551615GiB", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_bytes(text), *want, "{text:?}");
        }
    }

    #[test]
    fn numbers_from_int_and_text() {
        let n = |v| number("k", Some(v), 5, 1, 100, Unit::Plain);
        assert_eq!(n(RawNumber::Int(1)).unwrap(), 1);
        assert_eq!(n(RawNumber::Int(100)).unwrap(), 100);
        assert_eq!(n(RawNumber::Text("42".into())).unwrap(), 42);
        assert_eq!(number("k", None, 5, 1, 100, Unit::Plain).unwrap(), 5);
        let err = |v| n(v).unwrap_err().to_string();
        assert_eq!(
            err(RawNumber::Int(0)),
            "k: must be between 1 and 100, got 0"
        );
        assert_eq!(
            err(RawNumber::Int(101)),
            "k: must be between 1 and 100, got 101"
        );
        assert_eq!(
            err(RawNumber::Int(-3)),
            "k: expected a positive integer, got -3"
        );
        assert_eq!(
            err(RawNumber::Text("wide".into())),
            "k: expected a positive integer, got \"wide\""
        );
        assert_eq!(
            err(RawNumber::Text("8MiB".into())),
            "k: expected a positive integer, got \"8MiB\""
        );
    }

    #[test]
    fn durations_and_bounds() {
        let d = |v: &str| duration("k", Some(v.into()), "1s", ms(10), ms(200));
        assert_eq!(d("10ms").unwrap(), ms(10));
        assert_eq!(d("200ms").unwrap(), ms(200));
        assert_eq!(
            duration("k", None, "100ms", ms(10), ms(200)).unwrap(),
            ms(100)
        );
        assert_eq!(
            d("9ms").unwrap_err().to_string(),
            "k: must be between 10ms and 200ms, got 9ms"
        );
        assert_eq!(
            d("201ms").unwrap_err().to_string(),
            "k: must be between 10ms and 200ms, got 201ms"
        );
        assert!(d("7 dayz")
            .unwrap_err()
            .to_string()
            .starts_with("k: bad duration \"7 dayz\""));
        assert!(d("")
            .unwrap_err()
            .to_string()
            .starts_with("k: bad duration \"\""));
    }

    #[test]
    fn identifiers() {
        for ok in ["a", "lobby", "term-01", "A_b-9", &"x".repeat(64)] {
            assert_eq!(identifier("k", Some(ok.to_string())).unwrap(), ok);
        }
        for bad in ["", "a/b", "a+b", "a#", "a b", "é", &"x".repeat(65)] {
            let err = identifier("k", Some(bad.to_string()))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("k: "), "{err}");
        }
        assert_eq!(identifier("k", None).unwrap_err().to_string(), "k: missing");
    }

    #[test]
    fn reserved_device_ids() {
        for bad in ["fleet", "FLEET", "Fleet"] {
            let err = device_id(Some(bad.to_string())).unwrap_err().to_string();
            assert!(err.starts_with("device_id: "), "{err}");
            assert!(err.contains("reserved"), "{err}");
        }
        for ok in ["fleet-1", "fleets", "term-01"] {
            assert_eq!(device_id(Some(ok.to_string())).unwrap(), ok);
        }
    }

    /// `[mqtt] stop_grace`: 5 s by default, 0 (do not wait) to 20 s.
    #[test]
    fn mqtt_stop_grace() {
        let dir = tempfile::tempdir().unwrap();
        let load = |extra: &str| {
            let toml = format!(
                "site_id = \"lobby\"\ndevice_id = \"term-01\"\n[mqtt]\nhost = \"localhost\"\n\
                 ca_file = \"ca.pem\"\ncert_file = \"device.pem\"\nkey_file = \"device.key\"\n{extra}\n\
                 [[trust]]\nkid = \"consent-2026\"\nrole = \"consent\"\n\
                 public_key = \"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"\n"
            );
            crate::config::from_toml_str(&toml, dir.path()).map_err(|e| e.to_string())
        };
        assert_eq!(load("").unwrap().mqtt.stop_grace, secs(5));
        assert_eq!(
            load("stop_grace = \"0s\"").unwrap().mqtt.stop_grace,
            secs(0)
        );
        assert_eq!(
            load("stop_grace = \"20s\"").unwrap().mqtt.stop_grace,
            secs(20)
        );
        assert_eq!(
            load("stop_grace = \"21s\"").unwrap_err(),
            "mqtt.stop_grace: must be between 0s and 20s, got 21s"
        );
        let err = load("stop_grace = \"later\"").unwrap_err();
        assert!(err.starts_with("mqtt.stop_grace: bad duration"), "{err}");
    }

    /// `[mqtt] protocol` and `session_expiry`: defaults, accepted values,
    /// and a clear error (key and reason) for everything else.
    #[test]
    fn mqtt_protocol_and_session_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let load = |extra: &str| {
            let toml = format!(
                "site_id = \"lobby\"\ndevice_id = \"term-01\"\n[mqtt]\nhost = \"localhost\"\n\
                 ca_file = \"ca.pem\"\ncert_file = \"device.pem\"\nkey_file = \"device.key\"\n{extra}\n\
                 [[trust]]\nkid = \"consent-2026\"\nrole = \"consent\"\n\
                 public_key = \"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"\n"
            );
            crate::config::from_toml_str(&toml, dir.path()).map_err(|e| e.to_string())
        };
        let c = load("").unwrap();
        assert_eq!(c.mqtt.protocol, MqttProtocol::V311);
        assert_eq!(c.mqtt.session_expiry, secs(7 * 86_400));
        let c = load("protocol = \"5\"\nsession_expiry = \"1h\"").unwrap();
        assert_eq!(c.mqtt.protocol, MqttProtocol::V5);
        assert_eq!(c.mqtt.session_expiry, secs(3600));
        assert_eq!(
            load("protocol = \"3.1.1\"").unwrap().mqtt.protocol,
            MqttProtocol::V311
        );
        assert_eq!(
            load("protocol = 5").unwrap().mqtt.protocol,
            MqttProtocol::V5
        );
        assert_eq!(
            load("protocol = 4").unwrap_err(),
            "mqtt.protocol: expected \"3.1.1\" or \"5\", got \"4\""
        );
        let max = load("session_expiry = \"4294967295s\"").unwrap();
        assert_eq!(max.mqtt.session_expiry, secs(u64::from(u32::MAX)));
        assert_eq!(
            load("protocol = \"5.0\"").unwrap_err(),
            "mqtt.protocol: expected \"3.1.1\" or \"5\", got \"5.0\""
        );
        let err = load("session_expiry = \"4294967296s\"").unwrap_err();
        assert!(
            err.starts_with("mqtt.session_expiry: must be between 1m and "),
            "{err}"
        );
        let err = load("session_expiry = \"59s\"").unwrap_err();
        assert!(
            err.starts_with("mqtt.session_expiry: must be between 1m and "),
            "{err}"
        );
        assert_eq!(
            load("session_expiry = \"90500ms\"").unwrap_err(),
            "mqtt.session_expiry: must be a whole number of seconds"
        );
        let err = load("session_expiry = \"soon\"").unwrap_err();
        assert!(
            err.starts_with("mqtt.session_expiry: bad duration"),
            "{err}"
        );
    }

    #[test]
    fn broker_profiles() {
        use crate::config::BrokerProfile;
        let dir = tempfile::tempdir().unwrap();
        let with = |extra: &str| {
            let toml = format!(
                "site_id = \"lobby\"\ndevice_id = \"term-01\"\nstate_dir = \"{d}/state\"\nspool_dir = \"{d}/spool\"\n[mqtt]\nhost = \"localhost\"\nca_file = \"ca.pem\"\ncert_file = \"device.pem\"\nkey_file = \"device.key\"\n{extra}\n[[trust]]\nkid = \"consent-2026\"\nrole = \"consent\"\npublic_key = \"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"\n",
                d = dir.path().display()
            );
            crate::config::from_toml_str(&toml, dir.path())
        };
        assert_eq!(with("").unwrap().mqtt.profile, None);
        for (name, profile) in BrokerProfile::ALL {
            let cfg = with(&format!("profile = {name:?}")).unwrap();
            assert_eq!(cfg.mqtt.profile, Some(profile));
            assert_eq!(profile.name(), name);
        }
        for bad in ["aws", "AWS-IOT", "", "rabbitmq"] {
            let err = with(&format!("profile = {bad:?}")).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "mqtt.profile: expected \"aws-iot\" or \"azure-iot-hub\" or \"emqx\" or \"hivemq\" or \"mosquitto\", got {bad:?}"
                )
            );
        }
    }
}
