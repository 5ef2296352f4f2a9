//! Loading and validating real config files in temporary directories:
//! defaults, the shipped example, environment overrides, and one test per
//! class of error, each checking that the message names the key.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use facegate::config::{
    self, from_toml_str, load_with_env, Config, ConfigError, LogFormat, Role, WhenFull,
};
use facegate_testkit::config::{self as testkit_config, ConfigBuilder};

const CONSENT_KEY: [u8; 32] = [1; 32];
const FLEET_KEY: [u8; 32] = [2; 32];

/// A temp directory holding the broker TLS files and the config file.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Self {
        let site = Site {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::write(site.path("ca.pem"), "ca").unwrap();
        fs::write(site.path("device.pem"), "cert").unwrap();
        fs::write(site.path("device.key"), "key").unwrap();
        fs::set_permissions(site.path("device.key"), fs::Permissions::from_mode(0o600)).unwrap();
        site
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The smallest valid config: required keys only, TLS files by relative path.
    fn minimal(&self) -> String {
        ConfigBuilder::new()
            .host("broker.example.net")
            .trust(
                "consent-2026",
                testkit_config::Role::Consent,
                &URL_SAFE_NO_PAD.encode(CONSENT_KEY),
            )
            .render()
    }

    fn load_env(&self, toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let file = self.path("facegate.toml");
        fs::write(&file, toml).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_with_env(&file, &env)
    }

    fn load(&self, toml: &str) -> Result<Config, ConfigError> {
        self.load_env(toml, &[])
    }

    /// The error message for `toml`, which must fail.
    fn error(&self, toml: &str) -> String {
        self.error_env(toml, &[])
    }

    fn error_env(&self, toml: &str, env: &[(&str, &str)]) -> String {
        match self.load_env(toml, env) {
            Ok(_) => panic!("config unexpectedly valid:\n{toml}\nenv {env:?}"),
            Err(e) => e.to_string(),
        }
    }
}

/// `toml` with `line` inserted as the last top-level key (before `[mqtt]`).
fn with_top(toml: &str, line: &str) -> String {
    toml.replacen("[mqtt]", &format!("{line}\n\n[mqtt]"), 1)
}

/// `toml` with a `[section]` table holding `body` appended.
fn with_table(toml: &str, section: &str, body: &str) -> String {
    format!("{toml}\n[{section}]\n{body}\n")
}

fn starts(msg: &str, prefix: &str) {
    assert!(
        msg.starts_with(prefix),
        "message {msg:?} should start with {prefix:?}"
    );
}

#[test]
fn minimal_config_gets_every_default() {
    let site = Site::new();
    let c = site.load(&site.minimal()).unwrap();
    let dir = site.dir.path();
    assert_eq!(c.identity.site_id, "lobby");
    assert_eq!(c.identity.device_id, "term-01");
    assert_eq!(c.state_dir, Path::new("/var/lib/facegate"));
    assert_eq!(c.spool_dir, Path::new("/run/facegate/spool"));
    assert_eq!(c.mqtt.host, "broker.example.net");
    assert_eq!(c.mqtt.port, 8883);
    assert_eq!(c.mqtt.ca_file, dir.join("ca.pem"));
    assert_eq!(c.mqtt.cert_file, dir.join("device.pem"));
    assert_eq!(c.mqtt.key.file(), Some(dir.join("device.key").as_path()));
    assert_eq!(c.mqtt.prefix, "facegate");
    assert_eq!(c.mqtt.keep_alive, Duration::from_secs(30));
    assert_eq!(c.mqtt.inflight, 16);
    assert_eq!(c.mqtt.reconnect_min, Duration::from_secs(1));
    assert_eq!(c.mqtt.reconnect_max, Duration::from_secs(60));
    assert_eq!(c.mqtt.status_interval, Duration::from_secs(60));
    assert_eq!(c.mqtt.max_packet_size, 128 * 1024);
    assert_eq!(c.mqtt.max_attempts, 5);
    assert_eq!(c.trust.len(), 1);
    assert_eq!(c.trust[0].kid, "consent-2026");
    assert_eq!(c.trust[0].role, Role::Consent);
    assert_eq!(c.trust[0].public_key, CONSENT_KEY);
    assert_eq!(c.trusted("consent-2026"), Some(&c.trust[0]));
    assert_eq!(c.trusted("other"), None);
    assert_eq!(c.capture.max_file_bytes, 8 * 1024 * 1024);
    assert_eq!(c.capture.max_width, 4096);
    assert_eq!(c.capture.max_height, 4096);
    assert_eq!(c.capture.max_alloc_bytes, 64 * 1024 * 1024);
    assert_eq!(c.capture.spool_grace, Duration::from_secs(60));
    assert_eq!(c.capture.poll_interval, Duration::from_secs(2));
    assert_eq!(c.capture.max_batch_bytes, 8 * 1024 * 1024);
    assert_eq!(c.outbox.retention, Duration::from_secs(7 * 86_400));
    assert_eq!(c.outbox.quota_bytes, 512 * 1024 * 1024);
    assert_eq!(c.outbox.when_full, WhenFull::RejectNew);
    assert_eq!(c.commands.max_lifetime, Duration::from_secs(86_400));
    assert_eq!(c.commands.clock_skew, Duration::from_secs(60));
    assert_eq!(c.commands.max_bytes, 65_536);
    assert_eq!(c.consent.max_lifetime, Duration::from_secs(365 * 86_400));
    assert_eq!(c.consent.log, facegate::config::ConsentLogMode::Off);
    assert_eq!(c.consent.head_max_age, Duration::from_secs(86_400));
    assert_eq!(c.audit.retention, Duration::from_secs(90 * 86_400));
    assert_eq!(c.storage.reserve_bytes, 16 * 1024 * 1024);
    assert_eq!(c.clock.jump_threshold, Duration::from_secs(600));
    assert!(c.clock.ntp);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.storage.key_source, facegate::config::KeySource::File);
    assert_eq!(
        c.control.socket,
        Path::new("/var/lib/facegate/control.sock")
    );
}

/// The shipped example, with its /etc/facegate paths moved into a temp dir.
fn example_in(site: &Site) -> String {
    let text = include_str!("../config/facegate.example.toml");
    let dir = site.dir.path().display().to_string();
    text.replace("/etc/facegate/", &format!("{dir}/"))
}

#[test]
fn example_config_loads_and_validates() {
    let site = Site::new();
    let c = site.load(&example_in(&site)).unwrap();
    assert_eq!(c.identity.site_id, "lobby");
    assert_eq!(c.identity.device_id, "term-01");
    assert_eq!(c.mqtt.key.file(), Some(site.path("device.key").as_path()));
    assert_eq!(c.trust.len(), 2);
    assert_eq!(c.trust[0].role, Role::Consent);
    assert_eq!(c.trust[1].role, Role::Fleet);
    assert_eq!(c.trust[1].kid, "fleet-2026");
    // The example spells out the defaults: it must equal a minimal config
    // with the same identity, paths and keys.
    let mut minimal = site.minimal();
    minimal = minimal.replace("ca.pem", &site.path("ca.pem").display().to_string());
    minimal = minimal.replace(
        "\"device.pem",
        &format!("\"{}", site.path("device.pem").display()),
    );
    minimal = minimal.replace(
        "\"device.key",
        &format!("\"{}", site.path("device.key").display()),
    );
    let mut defaults = site.load(&minimal).unwrap();
    defaults.trust = c.trust.clone();
    assert_eq!(c, defaults);
}

#[test]
fn example_config_documents_every_key() {
    let site = Site::new();
    let example = example_in(&site);
    // Ask the loader for the valid keys of each table via an unknown key.
    for (section, probe) in [
        ("", with_top(&site.minimal(), "zzz = 1")),
        ("mqtt", site.minimal().replace("[mqtt]", "[mqtt]\nzzz = 1")),
        (
            "trust",
            site.minimal().replace("[[trust]]", "[[trust]]\nzzz = 1"),
        ),
        ("capture", with_table(&site.minimal(), "capture", "zzz = 1")),
        ("outbox", with_table(&site.minimal(), "outbox", "zzz = 1")),
        (
            "commands",
            with_table(&site.minimal(), "commands", "zzz = 1"),
        ),
        ("consent", with_table(&site.minimal(), "consent", "zzz = 1")),
        ("log", with_table(&site.minimal(), "log", "zzz = 1")),
        ("control", with_table(&site.minimal(), "control", "zzz = 1")),
        ("audit", with_table(&site.minimal(), "audit", "zzz = 1")),
        ("storage", with_table(&site.minimal(), "storage", "zzz = 1")),
        ("clock", with_table(&site.minimal(), "clock", "zzz = 1")),
    ] {
        let known = match site.load(&probe) {
            Err(ConfigError::UnknownKey { known, .. }) => known,
            other => panic!("{section}: expected an unknown-key error, got {other:?}"),
        };
        assert!(!known.is_empty(), "{section}");
        for key in known {
            let is_table = [
                "mqtt", "trust", "capture", "outbox", "commands", "consent", "log", "control",
                "audit", "storage", "clock",
            ]
            .contains(&key.as_str());
            let documented = if is_table {
                example.contains(&format!("[{key}]"))
            } else {
                example.lines().any(|l| {
                    let l = l.trim_start_matches("# ");
                    l.starts_with(&format!("{key} = "))
                })
            };
            assert!(documented, "example lacks {section}.{key}");
        }
    }
}

#[test]
fn environment_overrides_nested_and_top_level_keys() {
    let site = Site::new();
    let c = site
        .load_env(
            &site.minimal(),
            &[
                ("FACEGATE_MQTT__HOST", "other.example.net"),
                ("FACEGATE_MQTT__PORT", "1883"),
                ("FACEGATE_SITE_ID", "garage"),
                ("FACEGATE_DEVICE_ID", "0042"),
                ("FACEGATE_CAPTURE__MAX_WIDTH", "1024"),
                ("FACEGATE_CAPTURE__MAX_FILE_BYTES", "2MiB"),
                ("FACEGATE_OUTBOX__RETENTION", "3d"),
                ("FACEGATE_LOG__FORMAT", "json"),
                ("RUST_LOG", "debug"),
                ("HOME", "/root"),
            ],
        )
        .unwrap();
    assert_eq!(c.mqtt.host, "other.example.net");
    assert_eq!(c.mqtt.port, 1883);
    assert_eq!(c.identity.site_id, "garage");
    // Stays text: no number parsing of environment values.
    assert_eq!(c.identity.device_id, "0042");
    assert_eq!(c.capture.max_width, 1024);
    assert_eq!(c.capture.max_file_bytes, 2 * 1024 * 1024);
    assert_eq!(c.outbox.retention, Duration::from_secs(3 * 86_400));
    assert_eq!(c.log.format, LogFormat::Json);
    // Untouched keys keep their file or default values.
    assert_eq!(c.mqtt.ca_file, site.path("ca.pem"));
    assert_eq!(c.capture.max_height, 4096);
}

/// Found by the `config` fuzz target: the `config` crate reads `a[N]` in a
/// key as an array index and grows the array to N, so one variable such as
/// `FACEGATE_MQTT__HOST[99999999999]` stopped the loader (capacity overflow,
/// or gigabytes of memory). A name that is not plain is refused, by name.
#[test]
fn an_environment_name_with_an_index_is_refused_not_expanded() {
    let site = Site::new();
    for var in [
        "FACEGATE_MQTT__HOST[99999999999]",
        "FACEGATE_LOG__LEVEL[-7]",
        "FACEGATE_MQTT.HOST",
        "FACEGATE_",
    ] {
        let msg = site.error_env(&site.minimal(), &[(var, "x")]);
        assert!(
            msg.starts_with(&format!("environment variable {var}: not a config key")),
            "{var}: {msg}"
        );
    }
    // The inputs the fuzz target found, as it feeds them: TOML text, NUL,
    // then NAME=VALUE lines, each NAME with the prefix.
    for input in [
        &include_bytes!("fixtures/fuzz/config/env-index-capacity-overflow")[..],
        &include_bytes!("fixtures/fuzz/config/env-index-out-of-memory")[..],
    ] {
        let at = input.iter().position(|&b| b == 0).unwrap();
        let text = String::from_utf8_lossy(&input[..at]).to_string();
        let env: Vec<(String, String)> = String::from_utf8_lossy(&input[at + 1..])
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (format!("FACEGATE_{k}"), v.to_string()))
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let msg = site.error_env(&text, &env);
        assert!(msg.contains("not a config key"), "{msg}");
    }
}

#[test]
fn environment_can_supply_required_keys() {
    let site = Site::new();
    let toml = site
        .minimal()
        .replace("host = \"broker.example.net\"\n", "");
    starts(&site.error(&toml), "mqtt.host: missing");
    let c = site
        .load_env(&toml, &[("FACEGATE_MQTT__HOST", "10.0.0.1")])
        .unwrap();
    assert_eq!(c.mqtt.host, "10.0.0.1");
}

#[test]
fn numbers_and_sizes_may_be_written_as_text() {
    let site = Site::new();
    let toml = with_table(
        &site.minimal(),
        "capture",
        "max_file_bytes = \"4 MiB\"\nmax_width = \"640\"\nmax_alloc_bytes = 1048576",
    );
    let c = site.load(&toml).unwrap();
    assert_eq!(c.capture.max_file_bytes, 4 * 1024 * 1024);
    assert_eq!(c.capture.max_width, 640);
    assert_eq!(c.capture.max_alloc_bytes, 1024 * 1024);
}

/// The memory all decodes may hold at once is at least one image's limit;
/// unset, it follows a raised `max_alloc_bytes`.
#[test]
fn decode_memory_covers_one_image() {
    let site = Site::new();
    let load = |body: &str| site.load(&with_table(&site.minimal(), "capture", body));
    let c = site.load(&site.minimal()).unwrap();
    assert_eq!(c.capture.decode_memory_bytes, 64 * 1024 * 1024);
    let c = load("max_alloc_bytes = \"256MiB\"").unwrap();
    assert_eq!(c.capture.decode_memory_bytes, 256 * 1024 * 1024);
    let c = load("decode_memory_bytes = \"128MiB\"").unwrap();
    assert_eq!(c.capture.decode_memory_bytes, 128 * 1024 * 1024);
    starts(
        &site.error(&with_table(
            &site.minimal(),
            "capture",
            "max_alloc_bytes = \"64MiB\"\ndecode_memory_bytes = \"32MiB\"",
        )),
        "capture.decode_memory_bytes: 33554432 bytes is less than capture.max_alloc_bytes (67108864 bytes)",
    );
}

#[test]
fn durations_parse_and_respect_bounds() {
    let site = Site::new();
    let ok = |section: &str, body: &str| {
        site.load(&with_table(&site.minimal(), section, body))
            .unwrap()
    };
    let err = |section: &str, body: &str| site.error(&with_table(&site.minimal(), section, body));

    assert_eq!(
        ok("capture", "poll_interval = \"10ms\"")
            .capture
            .poll_interval,
        Duration::from_millis(10)
    );
    assert_eq!(
        ok("capture", "poll_interval = \"5m\"")
            .capture
            .poll_interval,
        Duration::from_secs(300)
    );
    starts(
        &err("capture", "poll_interval = \"9ms\""),
        "capture.poll_interval: must be between 10ms and 5m, got 9ms",
    );
    starts(
        &err("capture", "poll_interval = \"6m\""),
        "capture.poll_interval: must be between 10ms and 5m",
    );
    assert_eq!(
        ok("capture", "max_batch_bytes = \"4MiB\"")
            .capture
            .max_batch_bytes,
        4 * 1024 * 1024
    );
    starts(
        &err("capture", "max_batch_bytes = 1000"),
        "capture.max_batch_bytes: must be between",
    );
    assert_eq!(
        ok("outbox", "retention = \"36h\"").outbox.retention,
        Duration::from_secs(36 * 3600)
    );
    assert_eq!(
        ok("commands", "clock_skew = \"0s\"").commands.clock_skew,
        Duration::ZERO
    );
    starts(
        &err("commands", "max_lifetime = \"90d\""),
        "commands.max_lifetime: must be between",
    );
    assert_eq!(
        ok("audit", "retention = \"30d\"").audit.retention,
        Duration::from_secs(30 * 86_400)
    );
    starts(
        &err("audit", "retention = \"1h\""),
        "audit.retention: must be between 1day and 10years, got 1h",
    );
    starts(
        &err("audit", "retention = \"20y\""),
        "audit.retention: must be between",
    );
    assert_eq!(
        ok("consent", "max_lifetime = \"30d\"").consent.max_lifetime,
        Duration::from_secs(30 * 86_400)
    );
    starts(
        &err("consent", "max_lifetime = \"3651d\""),
        "consent.max_lifetime: must be between 1h and ",
    );
    starts(
        &err("consent", "max_lifetime = \"59m\""),
        "consent.max_lifetime: must be between 1h",
    );
    assert_eq!(
        ok("consent", "log = \"required\"").consent.log,
        facegate::config::ConsentLogMode::Required
    );
    starts(
        &err("consent", "log = \"on\""),
        "consent.log: expected \"off\" or \"required\", got \"on\"",
    );
    assert_eq!(
        ok("consent", "head_max_age = \"1h\"").consent.head_max_age,
        Duration::from_secs(3600)
    );
    starts(
        &err("consent", "head_max_age = \"500ms\""),
        "consent.head_max_age: must be between 1s",
    );
    starts(
        &err("consent", "head_max_age = \"31d\""),
        "consent.head_max_age: must be between",
    );
    assert_eq!(
        ok("clock", "jump_threshold = \"1h\"").clock.jump_threshold,
        Duration::from_secs(3600)
    );
    starts(
        &err("clock", "jump_threshold = \"59s\""),
        "clock.jump_threshold: must be between 1m",
    );
    starts(
        &err("clock", "jump_threshold = \"31d\""),
        "clock.jump_threshold: must be between",
    );
    assert!(!ok("clock", "ntp = \"ignore\"").clock.ntp);
    starts(
        &err("clock", "ntp = \"off\""),
        "clock.ntp: expected \"consult\" or \"ignore\", got \"off\"",
    );
    starts(
        &err("outbox", "retention = 7"),
        "outbox.retention: invalid type: integer `7`, expected a string",
    );
    starts(&err("mqtt2", ""), "mqtt2: unknown key");

    let c = site
        .load(&site.minimal().replace(
            "[mqtt]",
            "[mqtt]\nreconnect_min = \"5s\"\nreconnect_max = \"5s\"",
        ))
        .unwrap();
    assert_eq!(
        (c.mqtt.reconnect_min, c.mqtt.reconnect_max),
        (Duration::from_secs(5), Duration::from_secs(5))
    );
    let msg = site.error(&site.minimal().replace(
        "[mqtt]",
        "[mqtt]\nreconnect_min = \"10s\"\nreconnect_max = \"5s\"",
    ));
    starts(
        &msg,
        "mqtt.reconnect_max: 5s is less than mqtt.reconnect_min (10s)",
    );
    let msg = site.error(
        &site
            .minimal()
            .replace("[mqtt]", "[mqtt]\nkeep_alive = \"1500ms\""),
    );
    starts(&msg, "mqtt.keep_alive: must be a whole number of seconds");
}

// ---- one test per error class ---------------------------------------------

#[test]
fn unknown_key_in_a_table_is_named_with_its_path() {
    let site = Site::new();
    let msg = site.error(&site.minimal().replace("host =", "hostt ="));
    starts(
        &msg,
        "mqtt.hostt: unknown key (expected one of: host, port,",
    );
    let msg = site.error(&with_top(&site.minimal(), "colour = \"blue\""));
    starts(&msg, "colour: unknown key");
    let msg = site.error(&with_table(&site.minimal(), "capture", "max_widht = 5"));
    starts(&msg, "capture.max_widht: unknown key");
}

#[test]
fn top_level_key_after_a_table_gets_a_hint() {
    let site = Site::new();
    let m = site.minimal().replace("device_id = \"term-01\"\n", "");
    let toml = m.replace("[mqtt]\n", "[mqtt]\ndevice_id = \"term-01\"\n");
    assert_eq!(
        site.error(&toml),
        "mqtt.device_id: unknown key (top-level keys must come before the first [table])"
    );
}

#[test]
fn unknown_key_in_second_trust_entry_names_the_index() {
    let site = Site::new();
    let toml = format!(
        "{}\n[[trust]]\nkid = \"fleet\"\nrole = \"fleet\"\npublic_key = \"{}\"\nexpires = 3\n",
        site.minimal(),
        URL_SAFE_NO_PAD.encode(FLEET_KEY)
    );
    starts(&site.error(&toml), "trust[1].expires: unknown key");
}

#[test]
fn unknown_table_is_an_error() {
    let site = Site::new();
    starts(
        &site.error(&with_table(&site.minimal(), "uplink", "x = 1")),
        "uplink: unknown key",
    );
}

#[test]
fn unknown_environment_override_is_named() {
    let site = Site::new();
    let msg = site.error_env(&site.minimal(), &[("FACEGATE_BOGUS", "1")]);
    starts(&msg, "bogus: unknown key");
    assert!(
        msg.ends_with("(set by environment variable FACEGATE_BOGUS)"),
        "{msg}"
    );
    let msg = site.error_env(&site.minimal(), &[("FACEGATE_MQTT__HOSTT", "x")]);
    starts(&msg, "mqtt.hostt: unknown key");
    assert!(msg.contains("FACEGATE_MQTT__HOSTT"), "{msg}");
}

#[test]
fn trust_entries_cannot_be_patched_from_the_environment() {
    let site = Site::new();
    let msg = site.error_env(&site.minimal(), &[("FACEGATE_TRUST__0__KID", "x")]);
    starts(&msg, "trust: invalid type");
    assert!(msg.contains("FACEGATE_TRUST__0__KID"), "{msg}");
}

#[test]
fn non_numeric_number_names_key_and_value() {
    let site = Site::new();
    let msg = site.error(&with_table(
        &site.minimal(),
        "capture",
        "max_width = \"wide\"",
    ));
    assert_eq!(
        msg,
        "capture.max_width: expected a positive integer, got \"wide\""
    );
    let msg = site.error_env(&site.minimal(), &[("FACEGATE_CAPTURE__MAX_WIDTH", "wide")]);
    assert_eq!(
        msg,
        "capture.max_width: expected a positive integer, got \"wide\" (set by environment variable FACEGATE_CAPTURE__MAX_WIDTH)"
    );
    let msg = site.error(&with_table(&site.minimal(), "capture", "max_width = 1.5"));
    starts(
        &msg,
        "capture.max_width: invalid type: floating point `1.5`",
    );
    let msg = site.error(&with_table(&site.minimal(), "capture", "max_width = -1"));
    assert_eq!(
        msg,
        "capture.max_width: expected a positive integer, got -1"
    );
    let msg = site.error(&with_table(
        &site.minimal(),
        "outbox",
        "quota_bytes = \"lots\"",
    ));
    starts(
        &msg,
        "outbox.quota_bytes: expected a positive integer or a size such as \"8MiB\", got \"lots\"",
    );
    let reserve = |v: &str| {
        site.load(&with_table(
            &site.minimal(),
            "storage",
            &format!("reserve_bytes = {v}"),
        ))
    };
    assert_eq!(
        reserve("\"1MiB\"").unwrap().storage.reserve_bytes,
        1024 * 1024
    );
    assert_eq!(
        reserve("0").unwrap().storage.reserve_bytes,
        0,
        "0 turns it off"
    );
    starts(
        &reserve("\"5GiB\"").unwrap_err().to_string(),
        "storage.reserve_bytes:",
    );
    starts(
        &reserve("\"some\"").unwrap_err().to_string(),
        "storage.reserve_bytes: expected a positive integer or a size",
    );
}

#[test]
fn numbers_out_of_range_are_refused() {
    let site = Site::new();
    let m = |body: &str| site.error(&site.minimal().replace("[mqtt]", &format!("[mqtt]\n{body}")));
    assert_eq!(
        m("inflight = 0"),
        "mqtt.inflight: must be between 1 and 1024, got 0"
    );
    assert_eq!(
        m("inflight = 1025"),
        "mqtt.inflight: must be between 1 and 1024, got 1025"
    );
    assert_eq!(
        m("port = 70000"),
        "mqtt.port: must be between 1 and 65535, got 70000"
    );
    assert_eq!(
        site.load(&site.minimal().replace("[mqtt]", "[mqtt]\ninflight = 1024"))
            .unwrap()
            .mqtt
            .inflight,
        1024
    );
    let msg = site.error(&with_table(&site.minimal(), "capture", "max_height = 0"));
    assert_eq!(
        msg,
        "capture.max_height: must be between 1 and 65535, got 0"
    );
}

#[test]
fn max_packet_size_takes_sizes_within_its_range() {
    let site = Site::new();
    let m = |body: &str| site.minimal().replace("[mqtt]", &format!("[mqtt]\n{body}"));
    for (text, want) in [
        ("4096", 4096),
        ("\"128KiB\"", 131_072),
        ("\"256 KiB\"", 262_144),
        ("\"1MiB\"", 1_048_576),
        ("268435460", 268_435_460),
    ] {
        let c = site.load(&m(&format!("max_packet_size = {text}"))).unwrap();
        assert_eq!(c.mqtt.max_packet_size, want, "{text}");
    }
    assert_eq!(
        site.error(&m("max_packet_size = 4095")),
        "mqtt.max_packet_size: must be between 4096 and 268435460, got 4095"
    );
    assert_eq!(
        site.error(&m("max_packet_size = \"1GiB\"")),
        "mqtt.max_packet_size: must be between 4096 and 268435460, got 1073741824"
    );
    starts(
        &site.error(&m("max_packet_size = \"big\"")),
        "mqtt.max_packet_size: expected a positive integer or a size",
    );
    let c = site
        .load_env(
            &site.minimal(),
            &[("FACEGATE_MQTT__MAX_PACKET_SIZE", "256KiB")],
        )
        .unwrap();
    assert_eq!(c.mqtt.max_packet_size, 262_144);
}

#[test]
fn max_attempts_is_checked_against_its_range() {
    let site = Site::new();
    let m = |body: &str| site.minimal().replace("[mqtt]", &format!("[mqtt]\n{body}"));
    for n in [1, 5, 1000] {
        let c = site.load(&m(&format!("max_attempts = {n}"))).unwrap();
        assert_eq!(c.mqtt.max_attempts, n);
    }
    assert_eq!(
        site.error(&m("max_attempts = 0")),
        "mqtt.max_attempts: must be between 1 and 1000, got 0"
    );
    assert_eq!(
        site.error(&m("max_attempts = 1001")),
        "mqtt.max_attempts: must be between 1 and 1000, got 1001"
    );
    let c = site
        .load_env(&site.minimal(), &[("FACEGATE_MQTT__MAX_ATTEMPTS", "3")])
        .unwrap();
    assert_eq!(c.mqtt.max_attempts, 3);
}

#[test]
fn bad_inline_public_key_names_the_entry() {
    let site = Site::new();
    let bad = format!(
        "{}\n[[trust]]\nkid = \"fleet\"\nrole = \"fleet\"\npublic_key = \"{}\"\n",
        site.minimal(),
        URL_SAFE_NO_PAD.encode([9u8; 31])
    );
    assert_eq!(
        site.error(&bad),
        "trust[1].public_key: not a 32-byte base64url Ed25519 key"
    );
    // Standard base64 with '+' or '/' is not base64url.
    let std_b64 = STANDARD.encode([0xfb; 32]);
    assert!(std_b64.contains('+') || std_b64.contains('/'));
    let msg = site.error(
        &site
            .minimal()
            .replace(&URL_SAFE_NO_PAD.encode(CONSENT_KEY), &std_b64),
    );
    starts(
        &msg,
        "trust[0].public_key: not a 32-byte base64url Ed25519 key",
    );
}

#[test]
fn padded_inline_public_key_is_accepted() {
    let site = Site::new();
    let unpadded = URL_SAFE_NO_PAD.encode(CONSENT_KEY);
    let c = site
        .load(&site.minimal().replace(&unpadded, &format!("{unpadded}=")))
        .unwrap();
    assert_eq!(c.trust[0].public_key, CONSENT_KEY);
}

#[test]
fn bad_duration_names_key_and_value() {
    let site = Site::new();
    let msg = site.error(&with_table(
        &site.minimal(),
        "outbox",
        "retention = \"7 dayz\"",
    ));
    starts(&msg, "outbox.retention: bad duration \"7 dayz\"");
}

#[test]
fn missing_tls_file_names_key_and_path() {
    let site = Site::new();
    fs::remove_file(site.path("ca.pem")).unwrap();
    let msg = site.error(&site.minimal());
    assert_eq!(
        msg,
        format!(
            "mqtt.ca_file: {}: No such file or directory",
            site.path("ca.pem").display()
        )
    );
}

#[test]
fn tls_file_that_is_a_directory_is_refused() {
    let site = Site::new();
    fs::remove_file(site.path("device.pem")).unwrap();
    fs::create_dir(site.path("device.pem")).unwrap();
    let msg = site.error(&site.minimal());
    assert_eq!(
        msg,
        format!(
            "mqtt.cert_file: {}: not a regular file",
            site.path("device.pem").display()
        )
    );
}

#[test]
fn group_readable_private_key_is_refused() {
    let site = Site::new();
    for mode in [0o640, 0o604, 0o660, 0o602] {
        fs::set_permissions(site.path("device.key"), fs::Permissions::from_mode(mode)).unwrap();
        let msg = site.error(&site.minimal());
        starts(
            &msg,
            &format!(
                "mqtt.key_file: {}: mode 0{mode:o}",
                site.path("device.key").display()
            ),
        );
    }
    fs::set_permissions(site.path("device.key"), fs::Permissions::from_mode(0o400)).unwrap();
    site.load(&site.minimal()).unwrap();
}

#[cfg(feature = "pkcs11")]
#[test]
fn a_pkcs11_key_is_a_uri_with_a_module_and_its_errors_name_the_key() {
    let site = Site::new();
    let m = site.minimal();
    let with_key = |value: &str, module: Option<&str>| {
        let mut text = m.replace(
            "key_file = \"device.key\"",
            &format!("key_file = {value:?}"),
        );
        if let Some(module) = module {
            text = text.replace("[mqtt]\n", &format!("[mqtt]\npkcs11_module = {module:?}\n"));
        }
        text
    };
    let uri = "pkcs11:token=facegate;object=device?pin-source=file:/etc/facegate/pin";
    let c = site
        .load(&with_key(uri, Some("/usr/lib/softhsm/libsofthsm2.so")))
        .unwrap();
    let key = c.mqtt.key.pkcs11().expect("a token key");
    assert_eq!(key.uri.token.as_deref(), Some("facegate"));
    assert_eq!(key.uri.object.as_deref(), Some("device"));
    assert_eq!(key.module, PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    // The token is opened by the daemon, not by the config check.
    fs::remove_file(site.path("device.key")).unwrap();
    site.load(&with_key(uri, Some("/nonexistent/lib.so")))
        .unwrap();

    let lib = Some("/usr/lib/p11.so");
    let cases = [
        (
            with_key(uri, None),
            "mqtt.pkcs11_module: no PKCS#11 provider library",
        ),
        (
            with_key("device.key", lib),
            "mqtt.pkcs11_module: a PKCS#11 module is set but the key is a file",
        ),
        (
            with_key("pkcs11:token=facegate;object=device;pin-value=1234", lib),
            "mqtt.key_file: PKCS#11 URI pin-value: a PIN must not be written",
        ),
        (
            with_key("pkcs11:token=facegate", lib),
            "mqtt.key_file: PKCS#11 URI object: missing",
        ),
        (
            with_key("pkcs11:token=facegate;object=device;serial=1", lib),
            "mqtt.key_file: PKCS#11 URI serial: not supported",
        ),
        (
            with_key("pkcs11:token=facegate;object=%zz", lib),
            "mqtt.key_file: PKCS#11 URI object: bad percent-encoding",
        ),
        (
            with_key(uri, Some("")),
            "mqtt.pkcs11_module: must not be empty",
        ),
    ];
    for (toml, prefix) in cases {
        starts(&site.error(&toml), prefix);
    }
    assert!(!site
        .error(&with_key("pkcs11:token=t;object=o;pin-value=987654", lib))
        .contains("987654"));
}

#[test]
fn missing_required_keys_are_named() {
    let site = Site::new();
    let m = site.minimal();
    assert_eq!(
        site.error(&m.replace("site_id = \"lobby\"\n", "")),
        "site_id: missing"
    );
    assert_eq!(
        site.error(&m.replace("device_id = \"term-01\"\n", "")),
        "device_id: missing"
    );
    assert_eq!(
        site.error(&m.replace("key_file = \"device.key\"\n", "")),
        "mqtt.key_file: missing"
    );
    assert_eq!(
        site.error(&m.replace("kid = \"consent-2026\"\n", "")),
        "trust[0].kid: missing"
    );
    assert_eq!(
        site.error(&m.replace("role = \"consent\"\n", "")),
        "trust[0].role: missing"
    );
    let start = m.find("[mqtt]").unwrap();
    let end = m.find("[[trust]]").unwrap();
    let no_mqtt = format!("{}{}", &m[..start], &m[end..]);
    assert_eq!(site.error(&no_mqtt), "mqtt.host: missing");
}

#[test]
fn unreadable_config_file_names_the_file() {
    let site = Site::new();
    let missing = site.path("nope.toml");
    let msg = load_with_env(&missing, &[]).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "{}: cannot read config file: No such file or directory",
            missing.display()
        )
    );
    let msg = config::load(&missing).unwrap_err().to_string();
    starts(&msg, &missing.display().to_string());
}

#[test]
fn toml_syntax_error_names_file_and_line() {
    let site = Site::new();
    let toml = site
        .minimal()
        .replace("device_id = \"term-01\"", "device_id = term-01");
    let msg = site.error(&toml);
    starts(
        &msg,
        &format!(
            "{}: TOML syntax error at line 2,",
            site.path("facegate.toml").display()
        ),
    );
    assert!(!msg.contains('\n'), "one line: {msg:?}");
    // A key given twice is a TOML error too, reported at the second one.
    let msg = site.error(&with_top(&site.minimal(), "site_id = \"dup\""));
    starts(
        &msg,
        &format!(
            "{}: TOML syntax error at line 4,",
            site.path("facegate.toml").display()
        ),
    );
}

#[test]
fn duplicate_kid_is_refused() {
    let site = Site::new();
    let toml = format!(
        "{}\n[[trust]]\nkid = \"consent-2026\"\nrole = \"fleet\"\npublic_key = \"{}\"\n",
        site.minimal(),
        URL_SAFE_NO_PAD.encode(FLEET_KEY)
    );
    assert_eq!(
        site.error(&toml),
        "trust[1].kid: duplicate key id \"consent-2026\" (already used by trust[0])"
    );
}

#[test]
fn bad_role_is_refused() {
    let site = Site::new();
    let msg = site.error(
        &site
            .minimal()
            .replace("role = \"consent\"", "role = \"admin\""),
    );
    assert_eq!(
        msg,
        "trust[0].role: expected \"consent\" or \"fleet\", got \"admin\""
    );
}

#[test]
fn a_consent_key_is_required() {
    let site = Site::new();
    let msg = site.error(
        &site
            .minimal()
            .replace("role = \"consent\"", "role = \"fleet\""),
    );
    starts(&msg, "trust: no key with role \"consent\"");
}

#[test]
fn trust_key_from_file_base64url_and_pem() {
    let site = Site::new();
    fs::create_dir(site.path("keys")).unwrap();
    fs::write(
        site.path("keys/consent.pub"),
        format!("{}\n", URL_SAFE_NO_PAD.encode(CONSENT_KEY)),
    )
    .unwrap();
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(&FLEET_KEY);
    fs::write(
        site.path("keys/fleet.pem"),
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(der)
        ),
    )
    .unwrap();
    let inline = format!("public_key = \"{}\"", URL_SAFE_NO_PAD.encode(CONSENT_KEY));
    let toml = format!(
        "{}\n[[trust]]\nkid = \"fleet-2026\"\nrole = \"fleet\"\npublic_key_file = \"{}\"\n",
        site.minimal()
            .replace(&inline, "public_key_file = \"keys/consent.pub\""),
        site.path("keys/fleet.pem").display()
    );
    let c = site.load(&toml).unwrap();
    assert_eq!(c.trust[0].public_key, CONSENT_KEY);
    assert_eq!(c.trust[1].public_key, FLEET_KEY);
    assert_eq!(c.trusted("fleet-2026").unwrap().role, Role::Fleet);

    // Missing and malformed key files name the entry and the resolved path.
    let gone = toml.replace("keys/consent.pub", "keys/missing.pub");
    assert_eq!(
        site.error(&gone),
        format!(
            "trust[0].public_key_file: {}: No such file or directory",
            site.path("keys/missing.pub").display()
        )
    );
    fs::write(site.path("keys/consent.pub"), "hello").unwrap();
    starts(
        &site.error(&toml),
        &format!(
            "trust[0].public_key_file: {}: neither a 32-byte base64url",
            site.path("keys/consent.pub").display()
        ),
    );
}

#[test]
fn trust_key_inline_and_file_together_or_neither_is_refused() {
    let site = Site::new();
    let inline = format!("public_key = \"{}\"", URL_SAFE_NO_PAD.encode(CONSENT_KEY));
    let both = site
        .minimal()
        .replace(&inline, &format!("{inline}\npublic_key_file = \"k.pub\""));
    assert_eq!(
        site.error(&both),
        "trust[0].public_key: give either public_key or public_key_file, not both"
    );
    let neither = site.minimal().replace(&inline, "");
    assert_eq!(
        site.error(&neither),
        "trust[0].public_key: missing (give public_key or public_key_file)"
    );
}

#[test]
fn bad_names_and_choices_are_refused() {
    let site = Site::new();
    let m = site.minimal();
    starts(
        &site.error(&m.replace("\"lobby\"", "\"lob/by\"")),
        "site_id: \"lob/by\" must be 1 to 64 characters",
    );
    starts(
        &site.error(&m.replace("\"term-01\"", "\"\"")),
        "device_id: \"\" must be 1 to 64 characters",
    );
    // The broker ACL gives the user `fleet` read access to every device's
    // topics: a device must not be able to carry that name.
    starts(
        &site.error(&m.replace("\"term-01\"", "\"fleet\"")),
        "device_id: \"fleet\" is reserved",
    );
    starts(
        &site.error_env(&m, &[("FACEGATE_DEVICE_ID", "Fleet")]),
        "device_id: \"Fleet\" is reserved",
    );
    starts(
        &site.error(&m.replace("[mqtt]", "[mqtt]\nprefix = \"a/b\"")),
        "mqtt.prefix: ",
    );
    starts(
        &site.error(&m.replace("[mqtt]", "[mqtt]\nprefix = \"a+\"")),
        "mqtt.prefix: ",
    );
    starts(
        &site.error(&m.replace("[mqtt]", "[mqtt]\nprefix = \"#\"")),
        "mqtt.prefix: ",
    );
    starts(
        &site.error(&m.replace("broker.example.net", "mqtts://broker.example.net")),
        "mqtt.host: ",
    );
    starts(
        &site.error(&with_top(&m, "site_id = 5").replacen("site_id = \"lobby\"\n", "", 1)),
        "site_id: invalid type: integer `5`",
    );
    assert_eq!(
        site.error(&with_table(&m, "outbox", "when_full = \"panic\"")),
        "outbox.when_full: expected \"reject_new\" or \"drop_oldest\", got \"panic\""
    );
    assert_eq!(
        site.load(&with_table(&m, "outbox", "when_full = \"drop_oldest\""))
            .unwrap()
            .outbox
            .when_full,
        WhenFull::DropOldest
    );
    assert_eq!(
        site.error(&with_table(&m, "storage", "key_source = \"tpm\"")),
        "storage.key_source: expected \"file\" or \"credential\", got \"tpm\""
    );
    assert_eq!(
        site.load(&with_table(&m, "storage", "key_source = \"credential\""))
            .unwrap()
            .storage
            .key_source,
        facegate::config::KeySource::Credential
    );
    starts(
        &site.error(&with_table(&m, "storage", "key_file = \"x\"")),
        "storage.key_file: unknown key (expected one of: key_source, reserve_bytes)",
    );
    assert_eq!(
        site.error(&with_table(&m, "log", "format = \"xml\"")),
        "log.format: expected \"text\" or \"json\", got \"xml\""
    );
    starts(
        &site.error(&with_table(&m, "log", "level = \"facegate=loud\"")),
        "log.level: bad filter \"facegate=loud\"",
    );
    assert_eq!(
        site.load(&with_table(&m, "log", "level = \"facegate=debug,warn\""))
            .unwrap()
            .log
            .level,
        "facegate=debug,warn"
    );
    starts(
        &site.error(&format!("mqtt = \"x\"\n{}", m.replace("[mqtt]", "[mqtt2]"))),
        "mqtt: invalid type: string \"x\", expected the [mqtt] table",
    );
}

#[test]
fn spool_must_not_overlap_state() {
    let site = Site::new();
    let m = site.minimal();
    for (state, spool) in [
        ("/srv/fg", "/srv/fg"),
        ("/srv/fg", "/srv/fg/spool"),
        ("/srv/fg/state", "/srv/fg"),
    ] {
        let toml = with_top(
            &m,
            &format!("state_dir = \"{state}\"\nspool_dir = \"{spool}\""),
        );
        starts(&site.error(&toml), "spool_dir: ");
    }
    let toml = with_top(&m, "state_dir = \"/srv/fg\"\nspool_dir = \"/srv/fg-spool\"");
    let c = site.load(&toml).unwrap();
    assert_eq!(c.spool_dir, Path::new("/srv/fg-spool"));
}

#[test]
fn control_socket_defaults_into_state_dir_and_has_a_length_limit() {
    let site = Site::new();
    let c = site
        .load(&with_top(&site.minimal(), "state_dir = \"/srv/fg\""))
        .unwrap();
    assert_eq!(c.control.socket, Path::new("/srv/fg/control.sock"));
    let c = site
        .load(&with_table(
            &site.minimal(),
            "control",
            "socket = \"/run/fg/ctl.sock\"",
        ))
        .unwrap();
    assert_eq!(c.control.socket, Path::new("/run/fg/ctl.sock"));
    let long = format!("/{}", "d".repeat(100));
    let msg = site.error(&with_top(
        &site.minimal(),
        &format!("state_dir = \"{long}\""),
    ));
    starts(&msg, "control.socket: ");
}

#[test]
fn from_toml_str_skips_tls_file_checks_and_resolves_paths() {
    let site = Site::new();
    let c = from_toml_str(&site.minimal(), Path::new("/nowhere")).unwrap();
    assert_eq!(c.mqtt.ca_file, Path::new("/nowhere/ca.pem"));
    assert!(c.check_files().is_err());
    let msg = from_toml_str(&site.minimal().replace("host =", "hostt ="), Path::new("/"))
        .unwrap_err()
        .to_string();
    starts(&msg, "mqtt.hostt: unknown key");
    let msg = from_toml_str("site_id = ", Path::new("/"))
        .unwrap_err()
        .to_string();
    starts(&msg, "<inline config>: TOML syntax error at line 1");
}

#[test]
fn error_key_accessor_reports_the_key() {
    let site = Site::new();
    let err = site
        .load_env(&site.minimal(), &[("FACEGATE_BOGUS", "1")])
        .unwrap_err();
    assert_eq!(err.key(), Some("bogus"));
    let err = site
        .load(&site.minimal().replace("site_id = \"lobby\"\n", ""))
        .unwrap_err();
    assert_eq!(err.key(), Some("site_id"));
    let err = load_with_env(&site.path("nope.toml"), &[]).unwrap_err();
    assert_eq!(err.key(), None);
}
