//! Applying fleet commands in process (no broker): exactly-once effects, and a
//! broker redelivery answered with the reply that was already published.

use facegate::{clock, daemon};
use facegate_testkit::config::ConfigBuilder;
use facegate_testkit::signer::Signer;
use serde_json::json;

struct Fixture {
    _dir: tempfile::TempDir,
    agent: facegate::agent::Agent,
    fleet: Signer,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Signer::new("fleet-1");
    let cfg = ConfigBuilder::new()
        .state_dir(dir.path().join("state"))
        .spool_dir(dir.path().join("spool"))
        .consent_key(&Signer::new("consent-1"))
        .fleet_key(&fleet)
        .load(dir.path());
    let agent = daemon::open(cfg).unwrap();
    Fixture {
        _dir: dir,
        agent,
        fleet,
    }
}

#[tokio::test]
async fn a_redelivered_command_gets_its_original_reply_and_a_replay_is_refused() {
    let f = fixture();
    let now = clock::now();
    let (jti, jws) = f.fleet.command(
        "capture.purge",
        json!({ "subject": "S-KEPT-7d1e" }),
        "lobby/term-01",
        600,
        now,
    );
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
    let (_, jws) = f.fleet.command(
        "capture.purge",
        json!({ "subject": "S-1" }),
        "other-site",
        600,
        now,
    );
    for dup in [false, true] {
        let r = f.agent.apply_command(jws.as_bytes(), dup, now).await.reply;
        assert_eq!(r["error"]["code"], "wrong_audience", "{r}");
    }
}
