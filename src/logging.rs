//! Installs the process-wide `tracing` subscriber: text or JSON lines on
//! stderr (journald and container runtimes collect stderr), filtered by
//! `[log] level`, or by `RUST_LOG` when that is set and not empty.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

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
type Reloader = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;
static RELOAD: OnceLock<Reloader> = OnceLock::new();

/// Installs the global subscriber. Calling it again (tests, or a second
/// init in one process) is harmless: the first subscriber stays.
pub fn init(cfg: &LogConfig) -> Result<(), LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter_for(cfg, rust_log.as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // The only failure of try_init is "a global subscriber is already set":
    // keep that one (and its reload handle).
    match cfg.format {
        LogFormat::Text => {
            let b = builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter_reloading();
            let handle = b.reload_handle();
            if b.try_init().is_ok() {
                let _ = RELOAD.set(Box::new(move |f| {
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            }
        }
        LogFormat::Json => {
            let b = builder.json().with_filter_reloading();
            let handle = b.reload_handle();
            if b.try_init().is_ok() {
                let _ = RELOAD.set(Box::new(move |f| {
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            }
        }
    }
    Ok(())
}

/// Applies a new `log.level` to the running subscriber (SIGHUP reload).
/// `RUST_LOG`, when set, still wins. The format cannot change without a restart.
pub fn set_level(cfg: &LogConfig) -> Result<(), LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter_for(cfg, rust_log.as_deref())?;
    if let Some(reload) = RELOAD.get() {
        reload(filter).map_err(|reason| LoggingError::BadFilter {
            origin: "log.level",
            value: cfg.level.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// The filter to use: `RUST_LOG` if given and not blank, else `cfg.level`.
pub fn filter_for(cfg: &LogConfig, rust_log: Option<&str>) -> Result<EnvFilter, LoggingError> {
    let (origin, value) = match rust_log {
        Some(v) if !v.trim().is_empty() => ("RUST_LOG", v),
        _ => ("log.level", cfg.level.as_str()),
    };
    EnvFilter::builder()
        .parse(value)
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
