//! Applying fleet commands in process (no broker): exactly-once effects, and a
//! broker redelivery answered with the reply that was already published.

use facegate::{clock, command, config, daemon, keys};
use serde_json::json;

struct Fixture {
    _dir: tempfile::TempDir,
    agent: facegate::agent::Agent,
    fleet_key: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (fleet_key, fleet_pub) = keys::generate().unwrap();
    let (_, consent_pub) = keys::generate().unwrap();
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
kid = "consent-1"
role = "consent"
public_key = "{c}"
[[trust]]
kid = "fleet-1"
role = "fleet"
public_key = "{f}"
"#,
        d = dir.path().display(),
        c = keys::public_key_b64(&consent_pub),
        f = keys::public_key_b64(&fleet_pub),
    );
    let cfg = config::from_toml_str(&toml, dir.path()).unwrap();
    let agent = daemon::open(cfg).unwrap();
    Fixture {
        _dir: dir,
        agent,
        fleet_key,
    }
}

#[tokio::test]
async fn a_redelivered_command_gets_its_original_reply_and_a_replay_is_refused() {
    let f = fixture();
    let now = clock::now();
    let (jti, jws) = command::sign_command(
        "capture.purge",
        json!({ "subject": "S-KEPT-7d1e" }),
        "lobby/term-01",
        600,
        "fleet-1",
        &f.fleet_key,
        now,
    )
    .unwrap();
    let first = f
        .agent
        .apply_command(jws.as_bytes(), false, now)
        .await
        .reply;
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["jti"], jti.as_str());

    // The broker resends it (DUP) because our PUBACK never left: same reply, no new effect.
    let again = f.agent.apply_command(jws.as_bytes(), true, now).await.reply;
    assert_eq!(again, first);

    // The kept reply does not hold the subject id (no trace outlives a revocation).
    for file in ["facegate.db", "facegate.db-wal"] {
        let raw = std::fs::read(f._dir.path().join("state").join(file)).unwrap_or_default();
        assert!(
            !raw.windows(11).any(|w| w == b"S-KEPT-7d1e"),
            "subject id kept in {file}"
        );
    }

    // Anyone publishing the same command again is refused.
    let replay = f
        .agent
        .apply_command(jws.as_bytes(), false, now)
        .await
        .reply;
    assert_eq!(replay["ok"], false);
    assert_eq!(replay["error"]["code"], "replayed");
}

#[tokio::test]
async fn a_refused_command_is_not_remembered() {
    let f = fixture();
    let now = clock::now();
    let (_, jws) = command::sign_command(
        "capture.purge",
        json!({ "subject": "S-1" }),
        "other-site",
        600,
        "fleet-1",
        &f.fleet_key,
        now,
    )
    .unwrap();
    for dup in [false, true] {
        let r = f.agent.apply_command(jws.as_bytes(), dup, now).await.reply;
        assert_eq!(r["error"]["code"], "wrong_audience", "{r}");
    }
}
