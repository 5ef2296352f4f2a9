//! Revocation does not fail open, with the real binary (and a real Mosquitto
//! where the broker is part of it): a revocation issued ahead of the device's
//! clock is applied, one whose effect failed is not acknowledged and comes
//! back until it commits, and a local revoke leaves no consent behind.

use std::time::Duration;

use facegate::clock;
use facegate_testkit::broker::Broker;
use facegate_testkit::daemon::Daemon;
use facegate_testkit::mqtt::Session;
use facegate_testkit::synth;
use facegate_testkit::{DEVICE, SITE};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);
const CMD: &str = "facegate/lobby/term-01/cmd";
const REPLY: &str = "facegate/lobby/term-01/reply";

fn daemon_for(broker: &Broker) -> Daemon {
    Daemon::builder()
        .broker(broker)
        .configure(|c| c.keep_alive(Duration::from_secs(5)).fast_reconnect())
        .start()
}

async fn fleet(broker: &Broker) -> Session {
    let mut s = Session::spawn(broker.options("fleet"));
    s.wait_connected(T).await.expect("fleet connects");
    s.subscribe(REPLY, T).await;
    s
}

async fn next_reply(fleet: &mut Session, timeout: Duration) -> Option<Value> {
    let p = fleet.recv_on(REPLY, timeout).await?;
    Some(serde_json::from_slice(&p.payload).expect("reply is JSON"))
}

async fn send_cmd(fleet: &mut Session, jws: &str) -> Value {
    fleet.publish(CMD, jws).await;
    next_reply(fleet, T).await.expect("a reply")
}

/// The subjects of the stored consents, from `ctl consent list --json`.
fn consent_subjects(d: &Daemon) -> Vec<String> {
    let list = d.ctl_json(&["consent", "list", "--json"]);
    list.as_array()
        .unwrap_or_else(|| panic!("consent list is an array: {list}"))
        .iter()
        .map(|c| c["subject"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Drops one capture of `subject` and waits until intake took it.
fn capture(d: &Daemon, name: &str, subject: &str) {
    d.drop_pair(
        name,
        "jpg",
        &synth::face_jpeg(160, 120, 3, 80),
        Some(subject),
    );
    d.wait_spool_empty(T);
}

/// The fleet's clock runs 3 minutes ahead of the device's (beyond the 60 s
/// skew): its revocation and purge are applied all the same, and the
/// revocation keeps SPEC's rule (it covers consents issued up to its `iat`);
/// other commands issued that far ahead are still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_issued_ahead_of_the_device_clock_is_applied() {
    let broker = Broker::start();
    let mut fleet = fleet(&broker).await;
    let d = daemon_for(&broker);
    d.grant("S-ahead");
    d.grant("S-kept");
    d.wait_uplink_connected(T);
    let ahead = clock::now() + 180;
    let signer = &d.fleet_signer;

    let (jti, revoke) = signer.command(
        "consent.revoke",
        json!({ "subject": "S-ahead" }),
        SITE,
        600,
        ahead,
    );
    let reply = send_cmd(&mut fleet, &revoke).await;
    assert_eq!(reply["ok"], true, "{reply}\n{}", d.log());
    assert_eq!(reply["jti"], jti.to_string());
    assert_eq!(reply["result"]["subject"], "S-ahead");
    assert_eq!(reply["result"]["consents_remaining"], 0, "{reply}");
    assert_eq!(consent_subjects(&d), ["S-kept"]);

    // Issued (on the signer's clock) before the revocation: refused.
    let older = d.consent_signer.consent_at("S-ahead", 3600, clock::now());
    let out = d.try_ctl(&["consent", "add", &older]);
    assert!(
        !out.status.success(),
        "a consent older than the revocation was stored"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("revoked"), "{err}");
    capture(&d, "late", "S-ahead");
    assert_eq!(
        d.outbox_len(),
        0,
        "a capture of the revoked subject was kept"
    );
    assert_eq!(d.counters().dropped_no_consent, 1);

    // A purge issued ahead is applied too.
    capture(&d, "kept", "S-kept");
    let (_, purge) = signer.command(
        "capture.purge",
        json!({ "subject": "S-kept" }),
        &format!("{SITE}/{DEVICE}"),
        600,
        ahead,
    );
    let reply = send_cmd(&mut fleet, &purge).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["subject"], "S-kept");
    assert_eq!(d.outbox_len(), 0);

    // Other commands still wait for the device's clock.
    let (_, status) = signer.command("status", json!({}), SITE, 600, ahead);
    let reply = send_cmd(&mut fleet, &status).await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "not_yet_valid");
    let token = d.consent_signer.consent("S-new", 3600);
    let (_, grant) = signer.command("consent.grant", json!({ "token": token }), SITE, 600, ahead);
    let reply = send_cmd(&mut fleet, &grant).await;
    assert_eq!(reply["error"]["code"], "not_yet_valid", "{reply}");
    // The signature, expiry and replay are still checked for a revocation ahead.
    let reply = send_cmd(&mut fleet, &revoke).await;
    assert_eq!(reply["error"]["code"], "replayed", "{reply}");
    let (_, expired) = signer.command(
        "consent.revoke",
        json!({ "subject": "S-kept" }),
        SITE,
        60,
        clock::now() - 3600,
    );
    let reply = send_cmd(&mut fleet, &expired).await;
    assert_eq!(reply["error"]["code"], "expired", "{reply}");
    assert_eq!(consent_subjects(&d), ["S-kept"]);
}

/// The store cannot commit the revocation (another process holds the
/// database's write lock, as a full or failing disk would refuse it): the
/// reply says `internal`, the command is not acknowledged, and the broker
/// delivers it again until the effect commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_whose_effect_failed_is_delivered_again_until_it_commits() {
    let broker = Broker::start();
    let mut fleet = fleet(&broker).await;
    let d = daemon_for(&broker);
    d.grant("S-fail");
    d.wait_uplink_connected(T);

    let lock = rusqlite::Connection::open(d.state.join("facegate.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (jti, revoke) = d.fleet_signer.command(
        "consent.revoke",
        json!({ "subject": "S-fail" }),
        SITE,
        600,
        clock::now(),
    );
    fleet.publish(CMD, revoke).await;
    let failed = next_reply(&mut fleet, T).await.expect("a reply");
    assert_eq!(failed["jti"], jti.to_string());
    assert_eq!(failed["ok"], false, "{failed}");
    assert_eq!(failed["error"]["code"], "internal", "{failed}");

    // The fault clears; the broker still holds the command and delivers it again.
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    let deadline = tokio::time::Instant::now() + T;
    let applied = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(reply) = next_reply(&mut fleet, left).await else {
            panic!("the revocation was not delivered again\n{}", d.log());
        };
        assert_eq!(reply["jti"], jti.to_string(), "{reply}");
        if reply["ok"] == true {
            break reply;
        }
        assert_eq!(reply["error"]["code"], "internal", "{reply}");
    };
    assert_eq!(applied["result"]["subject"], "S-fail", "{applied}");
    assert!(
        consent_subjects(&d).is_empty(),
        "the revocation took no effect"
    );

    // Now it is settled: no further delivery.
    let more = next_reply(&mut fleet, Duration::from_secs(3)).await;
    assert!(
        more.is_none(),
        "delivered again after it committed: {more:?}"
    );
}

/// A consent issued slightly ahead of the device clock (within the accepted
/// skew) is removed by a local revoke, and it cannot come back.
#[test]
fn a_local_revoke_removes_a_consent_issued_ahead_of_the_clock() {
    let d = Daemon::start();
    let ahead = d
        .consent_signer
        .consent_at("S-soon", 3600, clock::now() + 30);
    d.ctl(&["consent", "add", &ahead]);
    d.grant("S-other");
    capture(&d, "before", "S-soon");
    assert_eq!(d.outbox_len(), 1, "the consent ahead was accepted");

    let receipt: Value = serde_json::from_str(&d.ctl(&["consent", "revoke", "S-soon"])).unwrap();
    assert_eq!(receipt["subject"], "S-soon", "{receipt}");
    assert_eq!(receipt["purged"], 1, "{receipt}");
    assert_eq!(consent_subjects(&d), ["S-other"]);
    capture(&d, "after", "S-soon");
    assert_eq!(
        d.outbox_len(),
        0,
        "a capture of the revoked subject was kept"
    );
    assert_eq!(d.counters().dropped_no_consent, 1);
    assert_eq!(receipt["consents_remaining"], 0, "{receipt}");
    // The tombstone covers the skew: the same token is refused.
    let again = d.try_ctl(&["consent", "add", &ahead]);
    assert!(
        !again.status.success(),
        "the revoked consent was stored again"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("revoked"));
}
