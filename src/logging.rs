//! Installs the process-wide `tracing` subscriber: text or JSON lines on
//! stderr (journald and container runtimes collect stderr), filtered by
//! `[log] level`, or by `RUST_LOG` when that is set and not empty.

pub mod repeat;

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, Registry};

use crate::config::{LogConfig, LogFormat};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter directive (from `log.level` or `RUST_LOG`) does not parse.
    #[error("{origin}: bad log filter {value:?}: {reason}")]
    BadFilter {
        /// Where the directive came from: `log.level` or `RUST_LOG`.
        origin: &'static str,
        /// The directive as given.
        value: String,
        /// The parser's explanation.
        reason: String,
    },
}

/// Swaps the live filter (installed by [`init`]); used by [`set_level`].
static RELOAD: OnceLock<reload::Handle<Targets, Registry>> = OnceLock::new();

/// Installs the global subscriber. Calling it again (tests, or a second
/// init in one process) is harmless: the first subscriber stays.
pub fn init(cfg: &LogConfig) -> Result<(), LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter_for(cfg, rust_log.as_deref())?;
    // A target filter (`info`, `facegate=debug,rumqttc=warn`), reloadable on
    // SIGHUP, in front of the text or JSON formatter.
    let (filter, handle) = reload::Layer::new(filter);
    let lines = fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    // The only failure of try_init is "a global subscriber is already set":
    // keep that one (and its reload handle).
    let installed = match cfg.format {
        LogFormat::Text => registry
            .with(lines.with_ansi(std::io::stderr().is_terminal()))
            .try_init()
            .is_ok(),
        LogFormat::Json => registry.with(lines.json()).try_init().is_ok(),
    };
    if installed {
        let _ = RELOAD.set(handle);
    }
    Ok(())
}

/// Applies a new `log.level` to the running subscriber (SIGHUP reload).
/// `RUST_LOG`, when set, still wins. The format cannot change without a restart.
pub fn set_level(cfg: &LogConfig) -> Result<(), LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter_for(cfg, rust_log.as_deref())?;
    if let Some(reload) = RELOAD.get() {
        reload.reload(filter).map_err(|e| LoggingError::BadFilter {
            origin: "log.level",
            value: cfg.level.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// The filter to use: `RUST_LOG` if given and not blank, else `cfg.level`.
/// Both are target directives: a level (`info`), `target=level` pairs, or
/// both (`facegate=debug,warn`); span and field filters are not supported.
pub fn filter_for(cfg: &LogConfig, rust_log: Option<&str>) -> Result<Targets, LoggingError> {
    let (origin, value) = match rust_log {
        Some(v) if !v.trim().is_empty() => ("RUST_LOG", v),
        _ => ("log.level", cfg.level.as_str()),
    };
    value
        .parse::<Targets>()
        .map_err(|e| LoggingError::BadFilter {
            origin,
            value: value.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(level: &str, format: LogFormat) -> LogConfig {
        LogConfig {
            level: level.into(),
            format,
        }
    }

    #[test]
    fn config_level_is_used_without_rust_log() {
        let f = filter_for(&cfg("warn", LogFormat::Text), None).unwrap();
        assert_eq!(f.to_string(), "warn");
        let f = filter_for(&cfg("warn", LogFormat::Text), Some("  ")).unwrap();
        assert_eq!(f.to_string(), "warn");
    }

    #[test]
    fn rust_log_overrides_config_level() {
        let f = filter_for(&cfg("warn", LogFormat::Text), Some("facegate=debug")).unwrap();
        assert_eq!(f.to_string(), "facegate=debug");
    }

    #[test]
    fn bad_filters_name_their_origin() {
        let err = filter_for(&cfg("info", LogFormat::Text), Some("facegate=loud"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("RUST_LOG: bad log filter \"facegate=loud\""),
            "{err}"
        );
        let err = filter_for(&cfg("x=[", LogFormat::Json), None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("log.level: bad log filter"), "{err}");
    }

    #[test]
    fn init_twice_is_harmless() {
        init(&cfg("info", LogFormat::Json)).unwrap();
        init(&cfg("debug", LogFormat::Text)).unwrap();
        tracing::info!("logging initialised twice without error");
    }
}
