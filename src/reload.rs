//! SIGHUP: which parts of a new configuration apply to a running daemon.
//!
//! A pure function of the old and the new validated configuration. Trusted keys,
//! capture limits, outbox policy, command window and log level apply at once;
//! identity, directories, broker settings and the control socket are wired into
//! open files and connections, so a change there is reported as needing a
//! restart and the running value is kept (never silently ignored).

use crate::config::Config;

/// The outcome of a reload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Sections that changed and now apply.
    pub applied: Vec<&'static str>,
    /// Keys that changed but only take effect after a restart (old value kept).
    pub restart_needed: Vec<&'static str>,
}

/// Merges `new` into `old`: live sections from `new`, the rest from `old`.
pub fn plan(old: &Config, new: Config) -> (Config, Plan) {
    let mut p = Plan::default();
    let mut merged = old.clone();

    macro_rules! live {
        ($field:ident, $name:literal) => {
            if old.$field != new.$field {
                p.applied.push($name);
                merged.$field = new.$field.clone();
            }
        };
    }
    macro_rules! fixed {
        ($field:ident, $name:literal) => {
            if old.$field != new.$field {
                p.restart_needed.push($name);
            }
        };
    }
    live!(trust, "trust");
    live!(capture, "capture");
    live!(outbox, "outbox");
    live!(commands, "commands");
    if old.log.level != new.log.level {
        p.applied.push("log.level");
        merged.log.level = new.log.level.clone();
    }
    if old.log.format != new.log.format {
        p.restart_needed.push("log.format");
    }
    if old.identity.site_id != new.identity.site_id {
        p.restart_needed.push("site_id");
    }
    if old.identity.device_id != new.identity.device_id {
        p.restart_needed.push("device_id");
    }
    fixed!(state_dir, "state_dir");
    fixed!(spool_dir, "spool_dir");
    fixed!(mqtt, "mqtt");
    fixed!(control, "control");
    (merged, p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(extra: &str) -> Config {
        let toml = format!(
            r#"site_id = "lobby"
device_id = "term-01"
state_dir = "/var/lib/facegate"
spool_dir = "/run/facegate/spool"
[mqtt]
host = "broker.example.net"
ca_file = "ca.pem"
cert_file = "device.pem"
key_file = "device.key"
[[trust]]
kid = "consent-2026"
role = "consent"
public_key = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
{extra}"#
        );
        crate::config::from_toml_str(&toml, Path::new("/etc/facegate")).expect("valid test config")
    }

    #[test]
    fn nothing_changed_nothing_reported() {
        let (merged, p) = plan(&cfg(""), cfg(""));
        assert_eq!(p, Plan::default());
        assert_eq!(merged, cfg(""));
    }

    #[test]
    fn live_sections_apply() {
        let new = cfg(
            "[capture]\nmax_width = 1024\n[outbox]\nretention = \"1d\"\n[log]\nlevel = \"debug\"\n",
        );
        let (merged, p) = plan(&cfg(""), new);
        assert_eq!(p.applied, vec!["capture", "outbox", "log.level"]);
        assert!(p.restart_needed.is_empty());
        assert_eq!(merged.capture.max_width, 1024);
        assert_eq!(merged.outbox.retention.as_secs(), 86_400);
        assert_eq!(merged.log.level, "debug");
    }

    #[test]
    fn trusted_keys_apply() {
        let new = cfg("[[trust]]\nkid = \"fleet-1\"\nrole = \"fleet\"\npublic_key = \"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"\n");
        let (merged, p) = plan(&cfg(""), new);
        assert_eq!(p.applied, vec!["trust"]);
        assert_eq!(merged.trust.len(), 2);
    }

    #[test]
    fn wiring_changes_need_a_restart_and_keep_the_old_value() {
        let old = cfg("");
        let mut new = cfg("[log]\nformat = \"json\"\n");
        new.identity.device_id = "term-02".into();
        new.mqtt.port = 1884;
        let (merged, p) = plan(&old, new);
        assert_eq!(p.restart_needed, vec!["log.format", "device_id", "mqtt"]);
        assert!(p.applied.is_empty());
        assert_eq!(merged.identity.device_id, "term-01");
        assert_eq!(merged.mqtt.port, 8883);
    }
}
