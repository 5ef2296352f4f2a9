//! Applying fleet commands in process (no broker): exactly-once effects, and a
//! broker redelivery answered with the reply that was already published.

use facegate::cmd::apply_command;
use facegate::protocol::{ErrorCode, ReplyResult};
use facegate::{clock, daemon};
use facegate_testkit::config::ConfigBuilder;
use facegate_testkit::signer::Signer;
use serde_json::json;

struct Fixture {
    _dir: tempfile::TempDir,
    agent: facegate::agent::Agent,
    fleet: Signer,
    consent: Signer,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Signer::new("fleet-1");
    let consent = Signer::new("consent-1");
    let cfg = ConfigBuilder::new()
        .state_dir(dir.path().join("state"))
        .spool_dir(dir.path().join("spool"))
        .consent_key(&consent)
        .fleet_key(&fleet)
        .load(dir.path());
    let agent = daemon::open(cfg).unwrap();
    Fixture {
        _dir: dir,
        agent,
        fleet,
        consent,
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
    let first = apply_command(&f.agent, jws.as_bytes(), false, now)
        .await
        .reply;
    assert!(first.ok, "{first:?}");
    assert_eq!(first.jti, Some(jti));
    let receipt = first.receipt().expect("a receipt");
    assert_eq!(receipt.subject.as_ref().unwrap().as_str(), "S-KEPT-7d1e");

    // The broker resends it (DUP) because our PUBACK never left: same reply, no new effect.
    let again = apply_command(&f.agent, jws.as_bytes(), true, now)
        .await
        .reply;
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
    let replay = apply_command(&f.agent, jws.as_bytes(), false, now)
        .await
        .reply;
    assert!(!replay.ok);
    assert_eq!(replay.error.unwrap().code, ErrorCode::Replayed);
}

#[tokio::test]
async fn a_redelivered_grant_gets_the_tokens_subject_back() {
    let f = fixture();
    let now = clock::now();
    let token = f.consent.consent_at("S-GRANT-1", 3600, now);
    let (_, jws) = f.fleet.command(
        "consent.grant",
        json!({ "token": token }),
        "lobby",
        600,
        now,
    );
    let first = apply_command(&f.agent, jws.as_bytes(), false, now)
        .await
        .reply;
    let Some(ReplyResult::Granted(granted)) = &first.result else {
        panic!("not granted: {first:?}");
    };
    assert_eq!(granted.subject.as_ref().unwrap().as_str(), "S-GRANT-1");
    assert!(granted.new);
    let again = apply_command(&f.agent, jws.as_bytes(), true, now)
        .await
        .reply;
    assert_eq!(again, first);
    let status = f.agent.status(now).await.unwrap();
    assert_eq!(status.consent.unwrap().active, 1, "granted once");
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
        let r = apply_command(&f.agent, jws.as_bytes(), dup, now)
            .await
            .reply;
        assert_eq!(r.error.unwrap().code, ErrorCode::WrongAudience);
    }
}
