//! `facegate doctor`: a site admin's health check of one terminal, printed as
//! a pass / warn / fail table. It exits non-zero (see [`DoctorReport::ok`]) on
//! any failure; warnings do not fail it.
//!
//! Each check is a small function returning a [`Check`]. This module holds the
//! report and runs the checks; [`local`] has the checks that need no network
//! (files, certificates, clock, disk, spool), whose date, clock and disk rules
//! are pure functions of their inputs and `now` (unix seconds), tested
//! table-driven; [`broker`] has the TLS connection, ACL and confinement probes;
//! [`profile`] compares the configuration with the documented limits of the
//! broker named by `[mqtt] profile` (pure, no network).

pub mod broker;
pub mod local;
pub mod profile;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::clock;
use crate::config::{self, Config};

pub use broker::{check_broker, BROKER_TIMEOUT};
pub use local::{
    cert_dates_outcome, clock_outcome, disk_outcome, spool_fs_outcome, DISK_FAIL_BYTES,
    DISK_WARN_BYTES, EARLIEST_PLAUSIBLE_TIME, EXPIRY_WARNING_SECS, RAMFS_MAGIC, TMPFS_MAGIC,
};

/// Check names, as printed (and as tests look them up).
pub mod names {
    /// The config file loads and validates.
    pub const CONFIG: &str = "config";
    /// The state directory exists and is private.
    pub const STATE_DIR: &str = "state directory";
    /// The device storage key file.
    pub const STORAGE_KEY: &str = "storage key";
    /// The TLS private key: a file's permissions, or a token key that opens
    /// and cannot be exported.
    pub const TLS_KEY: &str = "TLS key permissions";
    /// CA, certificate and key load and belong together.
    pub const TLS_FILES: &str = "TLS files";
    /// The device certificate's validity dates.
    pub const CERT_DATES: &str = "certificate dates";
    /// The device certificate is signed by the configured CA.
    pub const CERT_CHAIN: &str = "certificate chain";
    /// The device certificate names this device.
    pub const CERT_IDENTITY: &str = "certificate identity";
    /// The device certificate is a TLS client certificate and not a CA.
    pub const CERT_USAGE: &str = "certificate usage";
    /// The system clock is plausible.
    pub const CLOCK: &str = "clock";
    /// The system clock is kept synchronised (NTP), within the command skew.
    pub const CLOCK_SYNC: &str = "clock sync";
    /// The spool is on tmpfs.
    pub const SPOOL_TMPFS: &str = "spool on tmpfs";
    /// Free disk space in the state directory.
    pub const DISK: &str = "disk space";
    /// `mqtt.max_packet_size` against the broker profile's message limit.
    pub const PROFILE_PACKET_SIZE: &str = "profile packet size";
    /// What the profile's broker may deliver against the inbound packet limit.
    pub const PROFILE_INBOUND_SIZE: &str = "profile inbound size";
    /// `mqtt.inflight` against the profile's in-flight limit.
    pub const PROFILE_INFLIGHT: &str = "profile in-flight";
    /// `mqtt.keep_alive` against the profile's keep-alive range.
    pub const PROFILE_KEEP_ALIVE: &str = "profile keep-alive";
    /// The client id (`device_id`) against the profile's rules.
    pub const PROFILE_CLIENT_ID: &str = "profile client id";
    /// The device's topics against the profile's layout, depth and length.
    pub const PROFILE_TOPICS: &str = "profile topics";
    /// The MQTT version against what the profile's broker speaks.
    pub const PROFILE_PROTOCOL: &str = "profile protocol";
    /// How long the profile's broker keeps the device's session.
    pub const PROFILE_SESSION: &str = "profile session";
    /// Mutual-TLS connection to the broker (CONNACK).
    pub const BROKER: &str = "broker connection";
    /// The broker's ACL lets the device read its commands and publish replies.
    pub const BROKER_ACL: &str = "broker ACL";
    /// The broker confines the certificate: no other site's or device's
    /// topics, and the client id is tied to the certificate.
    pub const BROKER_CONFINEMENT: &str = "broker confinement";
}

/// The keys the report says the place of (`keys:` at its head).
pub mod places {
    /// The TLS client key, the device's identity to the broker.
    pub const DEVICE_KEY: &str = "device key (TLS)";
    /// The storage key, which unwraps the subjects' data keys.
    pub const STORAGE_KEY: &str = "storage key";
}

/// Where one of the device's keys lives: `file /etc/facegate/device.key`,
/// `PKCS#11 token facegate, slot 3, object device, not extractable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPlace {
    /// Which key (one of [`places`]).
    pub key: &'static str,
    /// Where it lives, in words.
    pub place: String,
}

/// How one check came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// All good.
    Pass,
    /// Works now, but needs attention (the reason says what).
    Warn(String),
    /// Broken: the daemon cannot work properly (the reason says why).
    Fail(String),
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked (one of [`names`]).
    pub name: &'static str,
    /// How it came out.
    pub outcome: Outcome,
}

impl Check {
    fn pass(name: &'static str) -> Check {
        Check {
            name,
            outcome: Outcome::Pass,
        }
    }
    fn warn(name: &'static str, msg: impl Into<String>) -> Check {
        Check {
            name,
            outcome: Outcome::Warn(msg.into()),
        }
    }
    fn fail(name: &'static str, msg: impl Into<String>) -> Check {
        Check {
            name,
            outcome: Outcome::Fail(msg.into()),
        }
    }
}

/// Every check that ran, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoctorReport {
    /// The config file that was checked.
    pub config_path: PathBuf,
    /// Where each key lives (empty when the config does not load).
    pub keys: Vec<KeyPlace>,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl DoctorReport {
    /// True when no check failed (warnings allowed): the exit status.
    pub fn ok(&self) -> bool {
        !self
            .checks
            .iter()
            .any(|c| matches!(c.outcome, Outcome::Fail(_)))
    }

    /// Where `key` (one of [`places`]) lives, if the report says.
    pub fn key_place(&self, key: &str) -> Option<&str> {
        self.keys
            .iter()
            .find(|k| k.key == key)
            .map(|k| k.place.as_str())
    }

    /// The check called `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        print!("{self}");
    }
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "facegate doctor: {}", self.config_path.display())?;
        if !self.keys.is_empty() {
            writeln!(f, "keys:")?;
            for k in &self.keys {
                writeln!(f, "      {:<22} {}", k.key, k.place)?;
            }
        }
        for check in &self.checks {
            let (tag, msg) = match &check.outcome {
                Outcome::Pass => ("PASS", ""),
                Outcome::Warn(m) => ("WARN", m.as_str()),
                Outcome::Fail(m) => ("FAIL", m.as_str()),
            };
            writeln!(f, "{tag}  {:<22} {msg}", check.name)?;
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Fail(_)))
            .count();
        if failed == 0 {
            writeln!(f, "all checks passed")
        } else {
            writeln!(f, "{failed} check(s) failed")
        }
    }
}

/// Runs every check for the config at `cfg_path`. Builds its own small tokio
/// runtime for the broker probe: call it outside any runtime, or use
/// [`run_checks_async`] from async code.
pub fn run_checks(cfg_path: &Path) -> DoctorReport {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run_checks_async(cfg_path)),
        Err(e) => {
            let mut report = local_checks(cfg_path, clock::now());
            report.checks.push(Check::fail(
                names::BROKER,
                format!("cannot start a runtime: {e}"),
            ));
            report
        }
    }
}

/// [`run_checks`] for callers already inside a tokio runtime.
pub async fn run_checks_async(cfg_path: &Path) -> DoctorReport {
    let mut report = local_checks(cfg_path, clock::now());
    if let Some(cfg) = loaded(cfg_path) {
        report
            .checks
            .extend(broker::check_broker(&cfg, BROKER_TIMEOUT).await);
    }
    report
}

/// The checks that need no network, at time `now`.
pub fn local_checks(cfg_path: &Path, now: i64) -> DoctorReport {
    let mut checks = Vec::new();
    let cfg = match config::load_unchecked(cfg_path) {
        Ok(cfg) => {
            checks.push(Check::pass(names::CONFIG));
            cfg
        }
        Err(e) => {
            checks.push(Check::fail(names::CONFIG, e.to_string()));
            return DoctorReport {
                config_path: cfg_path.to_path_buf(),
                keys: Vec::new(),
                checks,
            };
        }
    };
    checks.extend(local::checks(&cfg, now));
    checks.extend(profile_checks(&cfg));
    DoctorReport {
        config_path: cfg_path.to_path_buf(),
        keys: local::key_places(&cfg),
        checks,
    }
}

/// The broker-profile checks (`[mqtt] profile`), one line per rule of
/// [`profile`]; none when no profile is configured.
pub fn profile_checks(cfg: &Config) -> Vec<Check> {
    let Some(p) = cfg.mqtt.profile else {
        return Vec::new();
    };
    let inbound = crate::uplink::options::max_incoming_packet_size(cfg);
    profile::to_checks(p, &profile::check(p, cfg, inbound))
}

fn loaded(cfg_path: &Path) -> Option<Config> {
    config::load_unchecked(cfg_path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_counts_failures() {
        let report = DoctorReport {
            config_path: PathBuf::from("x.toml"),
            keys: vec![KeyPlace {
                key: places::DEVICE_KEY,
                place: "file /etc/facegate/device.key".into(),
            }],
            checks: vec![Check::pass(names::CONFIG), Check::warn(names::DISK, "low")],
        };
        assert!(report.ok());
        assert!(report.to_string().contains("all checks passed"));
        assert!(report
            .to_string()
            .contains("device key (TLS)       file /etc/facegate/device.key"));
        assert_eq!(
            report.key_place(places::DEVICE_KEY),
            Some("file /etc/facegate/device.key")
        );
        let mut failing = report.clone();
        failing.checks.push(Check::fail(names::CLOCK, "bad"));
        assert!(!failing.ok());
        assert!(failing.to_string().contains("FAIL  clock"));
        assert!(failing.to_string().contains("1 check(s) failed"));
    }
}
