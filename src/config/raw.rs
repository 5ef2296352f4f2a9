//! Phase one: the configuration exactly as written, before any checking.
//!
//! The TOML file and the `FACEGATE_*` environment are merged by the `config`
//! crate, then deserialized into [`RawConfig`] with the exact key path of any
//! structural problem (unknown key, table where a string belongs).
//!
//! Environment values stay text (no `try_parsing`): a device id `0042` must
//! not become the number 42. Numeric keys accept both TOML integers and
//! decimal text instead (see [`RawNumber`]), so `FACEGATE_MQTT__PORT=1883` works.

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::error::ConfigError;
use super::ENV_PREFIX;

/// Top-level keys as written. `None` means "not given": a default applies,
/// or [`ConfigError::Missing`] for required keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a TOML document")]
pub struct RawConfig {
    /// `site_id` (required).
    pub site_id: Option<String>,
    /// `device_id` (required).
    pub device_id: Option<String>,
    /// `state_dir` (default `/var/lib/facegate`).
    pub state_dir: Option<String>,
    /// `spool_dir` (default `/run/facegate/spool`).
    pub spool_dir: Option<String>,
    /// `[mqtt]` (required: host and the three TLS files have no default).
    #[serde(default)]
    pub mqtt: RawMqtt,
    /// `[[trust]]` entries, in file order.
    #[serde(default)]
    pub trust: Vec<RawTrust>,
    /// `[capture]`.
    #[serde(default)]
    pub capture: RawCapture,
    /// `[outbox]`.
    #[serde(default)]
    pub outbox: RawOutbox,
    /// `[commands]`.
    #[serde(default)]
    pub commands: RawCommands,
    /// `[consent]`.
    #[serde(default)]
    pub consent: RawConsent,
    /// `[log]`.
    #[serde(default)]
    pub log: RawLog,
    /// `[control]`.
    #[serde(default)]
    pub control: RawControl,
    /// `[audit]`.
    #[serde(default)]
    pub audit: RawAudit,
    /// `[storage]`.
    #[serde(default)]
    pub storage: RawStorage,
    /// `[clock]`.
    #[serde(default)]
    pub clock: RawClock,
}

/// `[clock]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [clock] table")]
pub struct RawClock {
    /// Largest wall-clock step that is not a jump, humantime text (default `10m`).
    pub jump_threshold: Option<String>,
    /// Whether the kernel's NTP status confirms a jump: `consult` or `ignore`
    /// (default `consult`).
    pub ntp: Option<String>,
}

/// `[mqtt]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [mqtt] table")]
pub struct RawMqtt {
    /// Broker host name (required).
    pub host: Option<String>,
    /// Broker TLS port.
    pub port: Option<RawNumber>,
    /// CA bundle path (required).
    pub ca_file: Option<String>,
    /// Client certificate path (required).
    pub cert_file: Option<String>,
    /// Client private key (required): a file path or a `pkcs11:` URI.
    pub key_file: Option<String>,
    /// PKCS#11 provider library, for a `pkcs11:` key (no default).
    pub pkcs11_module: Option<String>,
    /// Topic prefix.
    pub prefix: Option<String>,
    /// Keep-alive, humantime text.
    pub keep_alive: Option<String>,
    /// Unacknowledged uploads at most.
    pub inflight: Option<RawNumber>,
    /// First reconnect delay, humantime text.
    pub reconnect_min: Option<String>,
    /// Reconnect delay cap, humantime text.
    pub reconnect_max: Option<String>,
    /// Status republish interval, humantime text.
    pub status_interval: Option<String>,
    /// Largest MQTT packet the device sends, bytes or a size such as
    /// "128KiB" (default 128 KiB).
    pub max_packet_size: Option<RawNumber>,
    /// Refusals before a capture is quarantined (default 5).
    pub max_attempts: Option<RawNumber>,
    /// MQTT version: "3.1.1" (default) or "5" (a bare `5` is taken too).
    pub protocol: Option<RawNumber>,
    /// MQTT 5 session expiry, humantime text (default "7d").
    pub session_expiry: Option<String>,
    /// How long a clean stop waits for uploads in flight, humantime text
    /// (default "5s").
    pub stop_grace: Option<String>,
    /// Broker product whose limits `doctor` checks (no default).
    pub profile: Option<String>,
}

/// One `[[trust]]` entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[trust]] table")]
pub struct RawTrust {
    /// Key id (required).
    pub kid: Option<String>,
    /// `consent` or `fleet` (required).
    pub role: Option<String>,
    /// Inline base64url key; exactly one of this and `public_key_file`.
    pub public_key: Option<String>,
    /// File holding the key (base64url text or PEM SPKI).
    pub public_key_file: Option<String>,
}

/// `[capture]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [capture] table")]
pub struct RawCapture {
    /// Largest image file, bytes.
    pub max_file_bytes: Option<RawNumber>,
    /// Largest width, pixels.
    pub max_width: Option<RawNumber>,
    /// Largest height, pixels.
    pub max_height: Option<RawNumber>,
    /// Largest decoder allocation, bytes.
    pub max_alloc_bytes: Option<RawNumber>,
    /// Memory all decodes may hold at once, bytes.
    pub decode_memory_bytes: Option<RawNumber>,
    /// Age after which a lone spool file is removed, humantime text.
    pub spool_grace: Option<String>,
    /// Safety-net spool scan interval (intake wakes on inotify events), humantime text.
    pub poll_interval: Option<String>,
    /// Most image bytes read into one intake batch (default 32 MiB).
    pub max_batch_bytes: Option<RawNumber>,
}

/// `[outbox]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [outbox] table")]
pub struct RawOutbox {
    /// Longest a capture waits unsent, humantime text.
    pub retention: Option<String>,
    /// Total encrypted bytes kept.
    pub quota_bytes: Option<RawNumber>,
    /// `reject_new` or `drop_oldest`.
    pub when_full: Option<String>,
}

/// `[commands]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [commands] table")]
pub struct RawCommands {
    /// Longest `exp - iat`, humantime text.
    pub max_lifetime: Option<String>,
    /// Tolerated clock difference, humantime text.
    pub clock_skew: Option<String>,
    /// Largest command payload, bytes.
    pub max_bytes: Option<RawNumber>,
}

/// `[consent]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [consent] table")]
pub struct RawConsent {
    /// Longest consent token `exp - iat`, humantime text (default `365d`).
    pub max_lifetime: Option<String>,
    /// Site consent log: `required` or `off` (default `off`).
    pub log: Option<String>,
    /// Oldest consent-log head (`iat`) still counted, humantime text (default `24h`).
    pub head_max_age: Option<String>,
}

/// `[log]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [log] table")]
pub struct RawLog {
    /// `tracing` filter directive.
    pub level: Option<String>,
    /// `text` or `json`.
    pub format: Option<String>,
}

/// `[audit]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [audit] table")]
pub struct RawAudit {
    /// How long audit rows are kept, humantime text (default `90d`).
    pub retention: Option<String>,
}

/// `[storage]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [storage] table")]
pub struct RawStorage {
    /// Where the storage key comes from: `file` (default,
    /// `<state_dir>/storage.key`) or `credential` (the systemd credential
    /// `facegate-storage-key`).
    pub key_source: Option<String>,
    /// Disk space kept free for revocations, purges and deletes (bytes or
    /// a size such as "16MiB"; default 16 MiB; 0 turns it off).
    pub reserve_bytes: Option<RawNumber>,
}

/// `[control]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [control] table")]
pub struct RawControl {
    /// Control socket path.
    pub socket: Option<String>,
}

/// A number as given: a TOML integer, or text (always the case for values
/// from the environment, and allowed in the file, e.g. `"8MiB"`). Phase two
/// parses and range-checks it, naming the key on failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawNumber {
    /// A TOML integer (may be negative: rejected in phase two).
    Int(i128),
    /// Text to be parsed in phase two.
    Text(String),
}

impl<'de> Deserialize<'de> for RawNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberVisitor;

        impl Visitor<'_> for NumberVisitor {
            type Value = RawNumber;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawNumber, E> {
                Ok(RawNumber::Int(v.into()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawNumber, E> {
                Ok(RawNumber::Int(v.into()))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawNumber, E> {
                Ok(RawNumber::Text(v.to_owned()))
            }
        }

        deserializer.deserialize_any(NumberVisitor)
    }
}

impl RawConfig {
    /// Merges the TOML `text` (from `origin`, used in messages) with the
    /// `FACEGATE_*` entries of `env`, environment winning, and deserializes
    /// the result. Fails on TOML syntax, unknown keys and wrongly shaped values.
    pub fn merge(text: &str, origin: &Path, env: &[(String, String)]) -> Result<Self, ConfigError> {
        // The `config` crate reads `a[N]` in a key as an index and grows an
        // array to N: a name like FACEGATE_X[99999999999] would exhaust
        // memory (found by the `config` fuzz target). Only plain names pass.
        if let Some((name, _)) = env
            .iter()
            .find(|(name, _)| env_key_path(name).is_some() && !plain_env_name(name))
        {
            return Err(ConfigError::EnvBadName { var: name.clone() });
        }
        let overrides: config::Map<String, String> = env
            .iter()
            .filter(|(name, _)| env_key_path(name).is_some())
            .cloned()
            .collect();
        let merged = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
                    .prefix_separator("_")
                    .separator("__")
                    .source(Some(overrides)),
            )
            .build()
            .map_err(|e| merge_error(e, origin))?;
        // Go through a plain JSON tree: its deserializer reports clean serde
        // messages, which `serde_path_to_error` then pins to a key path.
        let tree: serde_json::Value = merged
            .try_deserialize()
            .map_err(|e| merge_error(e, origin))?;
        serde_path_to_error::deserialize(tree).map_err(shape_error)
    }
}

/// Whether the part of `var` after the prefix is a plain name: not empty,
/// letters, digits and `_` only.
fn plain_env_name(var: &str) -> bool {
    let rest = var.get(ENV_PREFIX.len()..).unwrap_or("");
    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The config key path an environment variable overrides, if it is one of
/// ours: `FACEGATE_MQTT__HOST` → `mqtt.host`. Mirrors the `config` crate.
pub fn env_key_path(var: &str) -> Option<String> {
    let lower = var.to_lowercase();
    let rest = lower.strip_prefix(&ENV_PREFIX.to_lowercase())?;
    Some(rest.replace("__", "."))
}

/// The `FACEGATE_*` variables of this process. Other variables are skipped
/// unread, so a non-UTF-8 value elsewhere in the environment is no problem.
pub(crate) fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().map(str::to_owned) else {
            continue;
        };
        if env_key_path(&name).is_none() {
            continue;
        }
        match value.into_string() {
            Ok(value) => vars.push((name, value)),
            Err(_) => return Err(ConfigError::EnvNotUnicode { var: name }),
        }
    }
    Ok(vars)
}

/// If the failing key was set by an environment variable, says so: an
/// operator otherwise searches the file for a typo that is not there.
pub(crate) fn blame_env<T>(
    result: Result<T, ConfigError>,
    env: &[(String, String)],
) -> Result<T, ConfigError> {
    result.map_err(|error| {
        let Some(key) = error.key() else {
            return error;
        };
        // The variable set this key, or something below it (FACEGATE_TRUST__0__KID
        // turns the `trust` list into a table).
        let nested = format!("{key}.");
        let culprit = env.iter().find(|(name, _)| {
            env_key_path(name).is_some_and(|k| k == key || k.starts_with(&nested))
        });
        match culprit {
            Some((var, _)) => ConfigError::FromEnv {
                var: var.clone(),
                error: Box::new(error),
            },
            None => error,
        }
    })
}

/// Maps a `config` crate failure: TOML syntax becomes a one-line
/// [`ConfigError::Syntax`] with line and column; anything else is kept whole.
fn merge_error(err: config::ConfigError, origin: &Path) -> ConfigError {
    match err {
        config::ConfigError::FileParse { cause, .. } => ConfigError::Syntax {
            path: origin.to_path_buf(),
            detail: one_line_toml_error(&cause.to_string()),
        },
        other => ConfigError::Merge {
            origin: origin.to_path_buf(),
            message: other.to_string(),
        },
    }
}

/// Turns the multi-line TOML error (header, source snippet with carets,
/// message) into `at line L, column C: message`.
fn one_line_toml_error(text: &str) -> String {
    let mut lines = text.lines();
    let head = lines.next().unwrap_or_default();
    let place = head.trim().trim_start_matches("TOML parse error").trim();
    let message: Vec<&str> = lines
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_snippet_line(l))
        .collect();
    match (place.is_empty(), message.is_empty()) {
        (_, true) => head.trim().to_string(),
        (true, false) => message.join("; "),
        (false, false) => format!("{place}: {}", message.join("; ")),
    }
}

/// A line of the source excerpt in a TOML error: `|`, `3 | a = =`, `|     ^`.
fn is_snippet_line(line: &str) -> bool {
    let digits_stripped = line
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start();
    digits_stripped.starts_with('|')
}

/// Keys of [`RawConfig`] that are plain values (tables excluded).
const TOP_LEVEL_KEYS: [&str; 4] = ["site_id", "device_id", "state_dir", "spool_dir"];

/// Maps a deserialization failure to the key it is about.
fn shape_error(err: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let path = err.path().to_string();
    let message = err.inner().to_string();
    if let Some((field, known)) = parse_unknown_field(&message) {
        let nested = path != ".";
        // `device_id` written after `[mqtt]` lands in the mqtt table: TOML's
        // most common trap, worth saying plainly.
        let hint = (nested && TOP_LEVEL_KEYS.contains(&field.as_str()))
            .then_some("top-level keys must come before the first [table]");
        let key = if !nested {
            field
        } else if path.ends_with(&format!(".{field}")) || path == field {
            path
        } else {
            format!("{path}.{field}")
        };
        return ConfigError::UnknownKey { key, known, hint };
    }
    let key = if path == "." {
        "(top level)".to_string()
    } else {
        path
    };
    ConfigError::invalid(key, message)
}

/// Reads serde's ``unknown field `x`, expected one of `a`, `b` `` message
/// (or ``expected `a` `` / `there are no fields`) into the field and the
/// known names.
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    let field = rest[..end].to_string();
    let known = rest[end + 1..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field, known))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_map_to_key_paths() {
        assert_eq!(
            env_key_path("FACEGATE_MQTT__HOST").as_deref(),
            Some("mqtt.host")
        );
        assert_eq!(env_key_path("FACEGATE_SITE_ID").as_deref(), Some("site_id"));
        assert_eq!(
            env_key_path("FACEGATE_CAPTURE__MAX_WIDTH").as_deref(),
            Some("capture.max_width")
        );
        assert_eq!(env_key_path("RUST_LOG"), None);
        assert_eq!(env_key_path("FACEGATEX"), None);
    }

    #[test]
    fn unknown_field_message_is_parsed() {
        let (field, known) =
            parse_unknown_field("unknown field `hostt`, expected one of `host`, `port`").unwrap();
        assert_eq!(field, "hostt");
        assert_eq!(known, vec!["host", "port"]);
        let (field, known) = parse_unknown_field("unknown field `x`, expected `socket`").unwrap();
        assert_eq!((field.as_str(), known), ("x", vec!["socket".to_string()]));
        let (_, known) = parse_unknown_field("unknown field `x`, there are no fields").unwrap();
        assert!(known.is_empty());
        assert!(parse_unknown_field("invalid type: integer `1`, expected a string").is_none());
    }

    #[test]
    fn toml_errors_become_one_line() {
        let text = "TOML parse error at line 2, column 8\n  |\n2 | host = \n  |        ^\nstring values must be quoted, expected literal string\n";
        assert_eq!(
            one_line_toml_error(text),
            "at line 2, column 8: string values must be quoted, expected literal string"
        );
    }
}
