//! Command ingress against a real Mosquitto and the real binary: what an
//! inbound message may cost (docs/PROTOCOL.md, "Command ingress"). Messages
//! delivered retained or at QoS 0 are not commands; refusals are answered
//! one by one but audited and logged within a rate limit; a command over
//! `[commands] max_bytes` is read and answered `too_large`.
//!
//! Each test fails on the code before the ingress rules: there a retained or
//! QoS 0 grant was applied (consents stored, replies sent), every refusal
//! wrote its own audit row and warning, and the incoming packet limit was the
//! capture-sized outgoing one, so a command between the capture limit and the
//! new incoming limit ended the connection instead of being answered.

use std::collections::HashMap;
use std::time::Duration;

use facegate::clock;
use facegate_testkit::broker::Broker;
use facegate_testkit::daemon::Daemon;
use facegate_testkit::mqtt::Session;
use facegate_testkit::signer::Signer;
use facegate_testkit::synth;
use facegate_testkit::util::wait_until;
use facegate_testkit::{DEVICE, SITE};
use rumqttc::QoS;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);
const CAPTURES: &str = "facegate/lobby/term-01/captures";
const CMD: &str = "facegate/lobby/term-01/cmd";
const SITE_CMD: &str = "facegate/lobby/cmd";
const REPLY: &str = "facegate/lobby/term-01/reply";
/// `uplink::ingress::RECORDED_PER_WINDOW`: refusals per class and window
/// that get an audit row and a log line each.
const RECORDED_PER_WINDOW: usize = 10;

/// A daemon on `broker`, built but not started.
fn daemon(broker: &Broker) -> Daemon {
    Daemon::builder()
        .broker(broker)
        .configure(|c| c.keep_alive(Duration::from_secs(5)).fast_reconnect())
        .build()
}

async fn fleet(broker: &Broker) -> Session {
    let mut s = Session::spawn(broker.options("fleet"));
    s.wait_connected(T).await.expect("fleet connects");
    s.subscribe(REPLY, T).await;
    s
}

/// A signed `consent.grant` of a fresh consent for `subject`: (jti, JWS).
fn grant(d: &Daemon, subject: &str) -> (String, String) {
    let token = d.consent_signer.consent(subject, 3600);
    let (jti, jws) = d.fleet_signer.command(
        "consent.grant",
        json!({ "token": token }),
        SITE,
        600,
        clock::now(),
    );
    (jti.as_str().to_string(), jws)
}

/// Sends a `status` command and waits for its reply: the daemon handles
/// inbound messages in order, so everything the broker delivered to it
/// before has been handled. Returns the other replies seen on the way, by jti.
async fn sync(fleet: &mut Session, d: &Daemon) -> HashMap<String, Value> {
    let (jti, jws) = d.fleet_signer.command(
        "status",
        json!({}),
        &format!("{SITE}/{DEVICE}"),
        600,
        clock::now(),
    );
    fleet.publish(CMD, jws).await;
    let mut others = HashMap::new();
    loop {
        let p = fleet
            .recv_on(REPLY, T)
            .await
            .unwrap_or_else(|| panic!("no reply to the status command\n{}", d.log()));
        let reply: Value = serde_json::from_slice(&p.payload).expect("reply is JSON");
        let id = reply["jti"].as_str().unwrap_or("").to_string();
        if id == jti.as_str() {
            assert_eq!(reply["ok"], true, "{reply}");
            return others;
        }
        others.insert(id, reply);
    }
}

/// A persistent counter, read from the database of a stopped daemon (the
/// counts the rate limiter kept in memory are written at the latest on a
/// clean stop).
fn stored_counter(d: &Daemon, name: &str) -> u64 {
    let conn = rusqlite::Connection::open(d.state.join("facegate.db")).expect("open the database");
    conn.query_row(
        "SELECT COALESCE((SELECT value FROM counters WHERE name = ?1), 0)",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| v as u64)
    .expect("read a counter")
}

fn log_lines(d: &Daemon, needle: &str) -> usize {
    d.log().lines().filter(|l| l.contains(needle)).count()
}

/// Waits for a capture of `subject` on the captures topic.
async fn upload_arrives(fleet: &mut Session, d: &Daemon, subject: &str, seed: u64) {
    d.drop_pair(
        &format!("ingress-{seed}"),
        "jpg",
        &synth::face_jpeg(160, 120, seed, 80),
        Some(subject),
    );
    loop {
        let p = fleet
            .recv_on(CAPTURES, T)
            .await
            .unwrap_or_else(|| panic!("no upload of {subject}\n{}", d.log()));
        let env: Value = serde_json::from_slice(&p.payload).expect("envelope is JSON");
        if env["subject"] == subject {
            return;
        }
    }
}

/// A retained command is a stale one when the broker hands it out because of
/// a subscription (retain flag set): not applied, not answered, audited once.
/// The same command published with retain set to an already subscribed
/// device arrives with the flag cleared (MQTT 3.1.1 §3.3.1.3) and is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_commands_apply_live_but_not_when_handed_out_again_on_subscribe() {
    let mut broker = Broker::start();
    let mut d = daemon(&broker);
    let mut fleet = fleet(&broker).await;

    // Retained before the device ever subscribed: it gets them with the
    // retain flag when it subscribes.
    let (stale_device, jws) = grant(&d, "S-stale");
    fleet
        .client
        .publish(CMD, QoS::AtLeastOnce, true, jws)
        .await
        .unwrap();
    let (stale_site, jws) = grant(&d, "S-site");
    fleet
        .client
        .publish(SITE_CMD, QoS::AtLeastOnce, true, jws)
        .await
        .unwrap();
    for _ in 0..2 {
        fleet.wait_puback(T).await.expect("broker took the command");
    }
    d.spawn();
    d.wait_uplink_connected(T);
    let replies = sync(&mut fleet, &d).await;
    assert!(
        !replies.contains_key(&stale_device) && !replies.contains_key(&stale_site),
        "ignored commands are not answered: {replies:?}"
    );
    assert_eq!(d.active_consents(), 0, "stale retained grants were applied");

    // Published retained to a subscribed device: a live command.
    let (live, jws) = grant(&d, "S-live");
    fleet
        .client
        .publish(CMD, QoS::AtLeastOnce, true, jws)
        .await
        .unwrap();
    let replies = sync(&mut fleet, &d).await;
    assert_eq!(replies[&live]["ok"], true, "{replies:?}");
    assert_eq!(d.active_consents(), 1);

    // A new connection subscribes again and is handed both retained
    // commands again, flag set: neither is applied nor answered (before,
    // the live one came back as `replayed` at every connection).
    broker.restart();
    wait_until(
        T,
        || d.log().matches("connected to broker").count() >= 2,
        || d.log(),
    );
    let mut fleet = fleet_again(&broker).await;
    let replies = sync(&mut fleet, &d).await;
    assert!(replies.is_empty(), "{replies:?}");
    assert_eq!(d.active_consents(), 1);

    let ignored = d.audited("command.ignored");
    assert_eq!(
        ignored.len(),
        1,
        "audited once per kind and run: {ignored:?}"
    );
    assert_eq!(ignored[0]["detail"]["kind"], "retained", "{ignored:?}");
    assert_eq!(log_lines(&d, "message on a command topic ignored"), 1);
    d.assert_audit_verifies();
    d.stop();
    assert!(
        stored_counter(&d, "commands_ignored") >= 4,
        "two retained commands on each of two connections are counted"
    );
}

/// The fleet's persistent session after a broker restart.
async fn fleet_again(broker: &Broker) -> Session {
    let mut s = Session::spawn(broker.options("fleet"));
    s.wait_connected(T).await.expect("fleet reconnects");
    s
}

/// QoS 0 commands have no acknowledgement to hold back until the effect is
/// committed: not applied, not answered, audited once for a burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_commands_are_ignored_and_audited_once() {
    let broker = Broker::start();
    let mut d = daemon(&broker);
    d.spawn();
    let mut fleet = fleet(&broker).await;
    d.wait_uplink_connected(T);
    sync(&mut fleet, &d).await;

    let mut sent = Vec::new();
    for i in 0..5 {
        let (jti, jws) = grant(&d, &format!("S-q{i}"));
        fleet
            .client
            .publish(CMD, QoS::AtMostOnce, false, jws)
            .await
            .unwrap();
        sent.push(jti);
    }
    let replies = sync(&mut fleet, &d).await;
    for jti in &sent {
        assert!(
            !replies.contains_key(jti),
            "QoS 0 command answered: {replies:?}"
        );
    }
    assert_eq!(d.active_consents(), 0, "QoS 0 grants were applied");
    let ignored = d.audited("command.ignored");
    assert_eq!(ignored.len(), 1, "{ignored:?}");
    assert_eq!(ignored[0]["detail"]["kind"], "qos0", "{ignored:?}");
    assert_eq!(log_lines(&d, "message on a command topic ignored"), 1);

    // The same command at QoS 1 is applied.
    let (jti, jws) = grant(&d, "S-q1");
    fleet.publish(CMD, jws).await;
    let replies = sync(&mut fleet, &d).await;
    assert_eq!(replies[&jti]["ok"], true, "{replies:?}");
    d.assert_audit_verifies();
    d.stop();
    assert_eq!(stored_counter(&d, "commands_ignored"), 5);
}

/// 300 forged commands: each is answered, but only a few get an audit row
/// and a log line of their own, the rest one summary; the chain verifies,
/// and the device still applies a valid command and keeps uploading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_commands_costs_a_bounded_number_of_rows_and_lines() {
    const FLOOD: usize = 300;
    let broker = Broker::start();
    let mut d = daemon(&broker);
    d.spawn();
    let mut fleet = fleet(&broker).await;
    fleet.subscribe(CAPTURES, T).await;
    d.wait_uplink_connected(T);
    sync(&mut fleet, &d).await;

    let stranger = Signer::new(&d.fleet_signer.kid);
    let mut forged = HashMap::new();
    for i in 0..FLOOD {
        let (jti, jws) = stranger.command(
            "capture.purge",
            json!({ "all": true }),
            SITE,
            600,
            clock::now(),
        );
        forged.insert(jti.as_str().to_string(), i);
        fleet.publish(CMD, jws).await;
    }
    let replies = sync(&mut fleet, &d).await;
    let answered: Vec<&Value> = replies
        .iter()
        .filter(|(jti, _)| forged.contains_key(*jti))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(answered.len(), FLOOD, "every refused command is answered");
    assert!(answered
        .iter()
        .all(|r| r["ok"] == false && r["error"]["code"] == "bad_signature"));

    // At most two windows' budget (the flood may straddle a window's end).
    let refused = d.audited("command.refused");
    assert!(
        !refused.is_empty() && refused.len() <= 2 * RECORDED_PER_WINDOW,
        "{} command.refused rows for {FLOOD} refusals",
        refused.len()
    );
    let lines = log_lines(&d, "fleet command refused");
    assert!(
        lines <= 2 * RECORDED_PER_WINDOW,
        "{lines} log lines for {FLOOD} refusals"
    );
    d.assert_audit_verifies();

    // Still a working device.
    let (jti, jws) = grant(&d, "S-after2");
    fleet.publish(CMD, jws).await;
    let replies = sync(&mut fleet, &d).await;
    assert_eq!(replies[&jti]["ok"], true, "{replies:?}");
    upload_arrives(&mut fleet, &d, "S-after2", 7).await;

    // A clean stop writes the summary of the rest.
    d.stop();
    assert_eq!(stored_counter(&d, "commands_refused"), FLOOD as u64);
    d.spawn();
    let summaries = d.audited("command.refused_summary");
    let summed: u64 = summaries
        .iter()
        .map(|r| {
            r["detail"]["refused"]["bad_signature"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(
        summed as usize + d.audited("command.refused").len(),
        FLOOD,
        "every refusal has a row or is in a summary: {summaries:?}"
    );
    assert!(summaries.len() <= 3, "{summaries:?}");
    d.assert_audit_verifies();
    d.stop();
}

/// A command somewhat over `[commands] max_bytes` is read and answered
/// `too_large`, and the connection goes on (uploads continue), even when the
/// captures are small: the incoming limit comes from `max_bytes` (at least
/// 1 MiB), not from the capture limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_over_max_bytes_is_answered_too_large_and_uploads_go_on() {
    let broker = Broker::start();
    let mut d = Daemon::builder()
        .broker(&broker)
        .configure(|c| {
            c.keep_alive(Duration::from_secs(5))
                .fast_reconnect()
                .max_file_bytes(64 * 1024)
                .command_max_bytes(4096)
        })
        .build();
    d.spawn();
    let mut fleet = fleet(&broker).await;
    fleet.subscribe(CAPTURES, T).await;
    d.wait_uplink_connected(T);
    d.grant("S-big");
    upload_arrives(&mut fleet, &d, "S-big", 1).await;

    // 300 KiB: over max_bytes (4 KiB) and over the capture-sized packet
    // limit (about 90 KiB), under the incoming limit (1 MiB).
    let big = format!("{}.e30.sig", "a".repeat(300 * 1024));
    fleet.publish(CMD, big).await;
    let p = fleet
        .recv_on(REPLY, T)
        .await
        .unwrap_or_else(|| panic!("no reply to the large command\n{}", d.log()));
    let reply: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "too_large", "{reply}");

    upload_arrives(&mut fleet, &d, "S-big", 2).await;
    assert_eq!(
        d.log().matches("broker connection lost").count(),
        0,
        "the connection survived\n{}",
        d.log()
    );
    d.stop();
}
