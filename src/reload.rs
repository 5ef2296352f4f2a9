//! SIGHUP: which parts of a new configuration apply to a running daemon.
//!
//! A pure function of the old and the new validated configuration. Trusted keys,
//! capture limits, outbox policy, command window, consent limits, audit
//! retention and log level apply at once; identity, directories, broker
//! settings and the control socket are wired into open files and connections,
//! so a change there is reported as needing a restart and the running value is
//! kept (never silently ignored).

use crate::config::{Config, Identity, LogConfig};

/// The outcome of a reload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Sections that changed and now apply.
    pub applied: Vec<&'static str>,
    /// Keys that changed but only take effect after a restart (old value kept).
    pub restart_needed: Vec<&'static str>,
}

impl Plan {
    /// A key that applies live: the new value, noted if it changed.
    fn live<T: PartialEq>(&mut self, name: &'static str, old: &T, new: T) -> T {
        if *old != new {
            self.applied.push(name);
        }
        new
    }

    /// A key wired into open files or connections: the old value, and a
    /// restart noted if the new one differs.
    fn fixed<T: PartialEq + Clone>(&mut self, name: &'static str, old: &T, new: T) -> T {
        if *old != new {
            self.restart_needed.push(name);
        }
        old.clone()
    }
}

/// Merges `new` into `old`: live keys from `new`, the rest from `old`.
///
/// Every field of `new` is named (no `..`), and so is every field of the
/// merged value: a new config field does not compile here until it is
/// classified as live or restart-only.
pub fn plan(old: &Config, new: Config) -> (Config, Plan) {
    let Config {
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
        control,
        audit,
        storage,
        clock,
    } = new;
    let Identity { site_id, device_id } = identity;
    let LogConfig { level, format } = log;
    let mut p = Plan::default();
    // Fields are evaluated in the order written: that is the order of the report.
    let merged = Config {
        trust: p.live("trust", &old.trust, trust),
        capture: p.live("capture", &old.capture, capture),
        outbox: p.live("outbox", &old.outbox, outbox),
        commands: p.live("commands", &old.commands, commands),
        consent: p.live("consent", &old.consent, consent),
        audit: p.live("audit", &old.audit, audit),
        clock: p.live("clock", &old.clock, clock),
        log: LogConfig {
            level: p.live("log.level", &old.log.level, level),
            format: p.fixed("log.format", &old.log.format, format),
        },
        identity: Identity {
            site_id: p.fixed("site_id", &old.identity.site_id, site_id),
            device_id: p.fixed("device_id", &old.identity.device_id, device_id),
        },
        state_dir: p.fixed("state_dir", &old.state_dir, state_dir),
        spool_dir: p.fixed("spool_dir", &old.spool_dir, spool_dir),
        mqtt: p.fixed("mqtt", &old.mqtt, mqtt),
        control: p.fixed("control", &old.control, control),
        storage: p.fixed("storage", &old.storage, storage),
    };
    (merged, p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(extra: &str) -> Config {
        crate::config::testing::config(Path::new("/var/lib/facegate"), extra)
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

    /// Every field of `c` changed. A struct literal without `..`: a new config
    /// field must be added here (and to the table below) before this compiles.
    fn every_field_changed(c: &Config) -> Config {
        use crate::config::{LogFormat, WhenFull};
        let mut trust = c.trust.clone();
        trust[0].kid = "consent-2027".into();
        Config {
            identity: Identity {
                site_id: "hall".into(),
                device_id: "term-02".into(),
            },
            state_dir: "/srv/facegate".into(),
            spool_dir: "/dev/shm/facegate".into(),
            mqtt: crate::config::MqttConfig {
                port: c.mqtt.port + 1,
                ..c.mqtt.clone()
            },
            trust,
            capture: crate::config::CaptureConfig {
                poll_interval: c.capture.poll_interval * 2,
                ..c.capture.clone()
            },
            outbox: crate::config::OutboxConfig {
                when_full: match c.outbox.when_full {
                    WhenFull::RejectNew => WhenFull::DropOldest,
                    WhenFull::DropOldest => WhenFull::RejectNew,
                },
                ..c.outbox.clone()
            },
            commands: crate::config::CommandConfig {
                max_bytes: c.commands.max_bytes + 1,
                ..c.commands.clone()
            },
            consent: crate::config::ConsentConfig {
                max_lifetime: c.consent.max_lifetime * 2,
                ..c.consent.clone()
            },
            log: LogConfig {
                level: "debug".into(),
                format: match c.log.format {
                    LogFormat::Text => LogFormat::Json,
                    LogFormat::Json => LogFormat::Text,
                },
            },
            control: crate::config::ControlConfig {
                socket: "/run/facegate/other.sock".into(),
            },
            audit: crate::config::AuditConfig {
                retention: c.audit.retention * 2,
            },
            storage: crate::config::StorageConfig {
                key_source: match c.storage.key_source {
                    crate::config::KeySource::File => crate::config::KeySource::Credential,
                    crate::config::KeySource::Credential => crate::config::KeySource::File,
                },
                reserve_bytes: c.storage.reserve_bytes + 1,
            },
            clock: crate::config::ClockConfig {
                jump_threshold: c.clock.jump_threshold * 2,
                ntp: !c.clock.ntp,
            },
        }
    }

    #[test]
    fn each_live_key_applies_and_each_restart_key_is_reported() {
        type Pick = fn(&mut Config, &Config);
        // (reported name, live?, copy that one key from `changed` into a config)
        let keys: [(&str, bool, Pick); 16] = [
            ("trust", true, |c, n| c.trust = n.trust.clone()),
            ("capture", true, |c, n| c.capture = n.capture.clone()),
            ("outbox", true, |c, n| c.outbox = n.outbox.clone()),
            ("commands", true, |c, n| c.commands = n.commands.clone()),
            ("consent", true, |c, n| c.consent = n.consent.clone()),
            ("audit", true, |c, n| c.audit = n.audit.clone()),
            ("clock", true, |c, n| c.clock = n.clock.clone()),
            ("log.level", true, |c, n| c.log.level = n.log.level.clone()),
            ("log.format", false, |c, n| c.log.format = n.log.format),
            ("site_id", false, |c, n| {
                c.identity.site_id = n.identity.site_id.clone()
            }),
            ("device_id", false, |c, n| {
                c.identity.device_id = n.identity.device_id.clone()
            }),
            ("state_dir", false, |c, n| c.state_dir = n.state_dir.clone()),
            ("spool_dir", false, |c, n| c.spool_dir = n.spool_dir.clone()),
            ("mqtt", false, |c, n| c.mqtt = n.mqtt.clone()),
            ("control", false, |c, n| c.control = n.control.clone()),
            ("storage", false, |c, n| c.storage = n.storage.clone()),
        ];
        let old = cfg("");
        let changed = every_field_changed(&old);
        for (name, live, pick) in keys {
            let mut new = old.clone();
            pick(&mut new, &changed);
            assert_ne!(new, old, "{name}: the test changes nothing");
            let (merged, p) = plan(&old, new.clone());
            if live {
                assert_eq!(p.applied, vec![name], "{name}");
                assert!(p.restart_needed.is_empty(), "{name}: {p:?}");
                assert_eq!(merged, new, "{name}: the new value applies");
            } else {
                assert_eq!(p.restart_needed, vec![name], "{name}");
                assert!(p.applied.is_empty(), "{name}: {p:?}");
                assert_eq!(merged, old, "{name}: the running value is kept");
            }
        }

        // Everything at once: every key is reported exactly once, in the table's order.
        let (merged, p) = plan(&old, changed.clone());
        let reported: Vec<&str> = p.applied.iter().chain(&p.restart_needed).copied().collect();
        let live: Vec<&str> = keys.iter().filter(|k| k.1).map(|k| k.0).collect();
        let fixed: Vec<&str> = keys.iter().filter(|k| !k.1).map(|k| k.0).collect();
        assert_eq!(p.applied, live);
        assert_eq!(p.restart_needed, fixed);
        assert_eq!(reported.len(), keys.len());
        let mut expected = old.clone();
        for (_, live, pick) in keys {
            if live {
                pick(&mut expected, &changed);
            }
        }
        assert_eq!(merged, expected);
    }
}
