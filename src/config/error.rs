//! [`ConfigError`]: every way a configuration can be refused, each naming the
//! file or the exact key (`mqtt.host`, `trust[1].public_key`) and the problem.

use std::io;
use std::path::PathBuf;

/// A configuration problem. The `Display` form is one line, starting with the
/// config file path (file-level problems) or the key path (everything else),
/// so `facegate check-config` can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("{}: cannot read config file: {}", path.display(), io_reason(source))]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why reading failed.
        source: io::Error,
    },

    /// The config file is not valid TOML.
    #[error("{}: TOML syntax error {detail}", path.display())]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// Where and what, e.g. `at line 3, column 7: expected `=``.
        detail: String,
    },

    /// A key that facegate does not know (a typo, or a key from another version).
    #[error("{key}: unknown key{}", hint.map(|h| format!(" ({h})")).unwrap_or_else(|| known_hint(known)))]
    UnknownKey {
        /// Full key path, e.g. `mqtt.hostt`.
        key: String,
        /// The keys that are valid at that place.
        known: Vec<String>,
        /// A likelier explanation than a typo, shown instead of `known`.
        hint: Option<&'static str>,
    },

    /// A required key is absent.
    #[error("{key}: missing")]
    Missing {
        /// Full key path, e.g. `site_id`.
        key: String,
    },

    /// A key has a value of the wrong type, format or range.
    #[error("{key}: {problem}")]
    Invalid {
        /// Full key path, e.g. `capture.max_width`.
        key: String,
        /// What is wrong, naming the bad value where that is safe.
        problem: String,
    },

    /// A file named by a key is missing, unreadable or unsafe.
    #[error("{key}: {}: {reason}", path.display())]
    File {
        /// Key that names the file, e.g. `mqtt.ca_file`.
        key: String,
        /// The file, after resolving relative paths.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The problem comes from an environment override, not from the file.
    #[error("{error} (set by environment variable {var})")]
    FromEnv {
        /// The `FACEGATE_*` variable that set the offending key.
        var: String,
        /// The problem itself.
        error: Box<ConfigError>,
    },

    /// A `FACEGATE_*` variable whose value is not UTF-8.
    #[error("environment variable {var}: value is not valid UTF-8")]
    EnvNotUnicode {
        /// The variable name.
        var: String,
    },

    /// A `FACEGATE_*` variable whose name is no config key: only letters,
    /// digits and `_` may follow the prefix (sections joined by `__`).
    #[error("environment variable {var}: not a config key: after FACEGATE_ a name holds only letters, digits and _ (sections joined by __, as in FACEGATE_MQTT__HOST)")]
    EnvBadName {
        /// The variable name.
        var: String,
    },

    /// Any other failure of the layered-config machinery while merging.
    #[error("{}: {message}", origin.display())]
    Merge {
        /// The config file being merged.
        origin: PathBuf,
        /// The underlying message.
        message: String,
    },
}

impl ConfigError {
    /// The key path this error is about, if it is about a key.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::UnknownKey { key, .. }
            | Self::Missing { key }
            | Self::Invalid { key, .. }
            | Self::File { key, .. } => Some(key),
            Self::FromEnv { error, .. } => error.key(),
            Self::Read { .. }
            | Self::Syntax { .. }
            | Self::EnvNotUnicode { .. }
            | Self::EnvBadName { .. }
            | Self::Merge { .. } => None,
        }
    }

    /// Shorthand for [`ConfigError::Invalid`].
    pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// An I/O error as an operator wants to read it: `No such file or directory`,
/// without Rust's ` (os error 2)` suffix.
pub(crate) fn io_reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(i) if err.raw_os_error().is_some() => text[..i].to_string(),
        _ => text,
    }
}

fn known_hint(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (expected one of: {})", known.join(", "))
    }
}
