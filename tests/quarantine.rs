//! No head-of-line blocking (SPEC "Broker limits and large captures"):
//! against a real Mosquitto with a packet limit, the real binary and real
//! images, a capture the broker keeps refusing is quarantined after
//! `mqtt.max_attempts` and the captures behind it flow; `ctl outbox retry`
//! delivers it once the cause is fixed; a revocation purges quarantined
//! captures; and a network drop with a full window quarantines nothing.
//!
//! Checked against the code before quarantine existed: there the refused
//! capture was sent again on every connection, forever, taking the queue
//! behind it down with it, so `a_capture_the_broker_keeps_refusing_…` times
//! out waiting for the small captures; the other two fail because the
//! status has no `outbox.quarantined`, `ctl outbox` does not exist and
//! `mqtt.max_attempts` is an unknown key. With a naive rule that counts a
//! refusal against every capture in flight when a connection drops,
//! `a_network_drop_with_a_full_window_quarantines_nothing` fails (all 16
//! are quarantined at once with `max_attempts = 1`).

use std::time::Duration;

use facegate::sanitize::sanitize;
use facegate_testkit::broker::{Broker, BrokerOptions};
use facegate_testkit::config::capture_limits;
use facegate_testkit::daemon::Daemon;
use facegate_testkit::mqtt::{Session, Uploads};
use facegate_testkit::relay::Relay;
use facegate_testkit::synth;
use facegate_testkit::util::wait_until;
use facegate_testkit::DEVICE;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);
const CAPTURES: &str = "facegate/lobby/term-01/captures";
/// AWS IoT Core's packet limit, set on the broker.
const LIMIT: usize = 131_072;
/// What the device is (wrongly) configured with: above the broker's limit.
const TOO_LARGE: u64 = 1024 * 1024;

fn strict_broker() -> Broker {
    Broker::start_with(BrokerOptions {
        max_packet_size: LIMIT,
        ..BrokerOptions::default()
    })
}

/// A ~300 KB JPEG: whole, its envelope is three times the broker's limit.
fn big_jpeg(seed: u64) -> Vec<u8> {
    synth::face_jpeg(1440, 1080, seed, 90)
}

async fn fleet(broker: &Broker) -> Session {
    let mut s = Session::spawn_reconnecting(broker.options("fleet"));
    s.wait_connected(T).await.expect("fleet connects");
    s.subscribe("facegate/#", T).await;
    s
}

/// `outbox` of `ctl status --json`, read as JSON (so the field is checked
/// by name, as a fleet reads it).
fn outbox_status(d: &Daemon) -> Value {
    d.ctl_json(&["status", "--json"])["outbox"].clone()
}

fn quarantined(d: &Daemon) -> u64 {
    outbox_status(d)["quarantined"].as_u64().unwrap_or(0)
}

fn outbox_list(d: &Daemon) -> Vec<Value> {
    d.ctl_json(&["outbox", "list", "--json"])
        .as_array()
        .expect("ctl outbox list --json prints an array")
        .clone()
}

/// A 300 KB capture sent whole to a broker whose limit is below the
/// device's `max_packet_size`: the broker closes the connection each time.
/// It is quarantined after `max_attempts` (5) refusals while the five small
/// captures queued behind it all arrive; it is audited, counted in status
/// and listed; it is not retried on its own; after the cause is fixed (the
/// device restarted with the broker's limit) `ctl outbox retry ID`
/// delivers it, in parts, as the exact sanitized image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_the_broker_keeps_refusing_is_quarantined_and_the_rest_flow() {
    let broker = strict_broker();
    let mut fleet = fleet(&broker).await;
    let mut d = Daemon::builder()
        .broker(&broker)
        .configure(|c| {
            c.max_packet_size(TOO_LARGE)
                .keep_alive(Duration::from_secs(5))
                .fast_reconnect()
        })
        .start();
    d.grant("S-big");
    d.grant("S-small");
    d.wait_uplink_connected(T);
    let big = big_jpeg(7);
    d.drop_pair("big", "jpg", &big, Some("S-big"));
    d.wait_spool_empty(T);
    for i in 0..5 {
        let small = synth::face_jpeg(160, 120, i, 80);
        d.drop_pair(&format!("small{i}"), "jpg", &small, Some("S-small"));
    }
    let mut up = Uploads::new();
    assert!(
        up.collect(&mut fleet, CAPTURES, 5, T).await,
        "only {} of the 5 small captures arrived; the device connected {} times\n{}",
        up.captures.len(),
        broker.connections_of(DEVICE),
        d.log()
    );
    assert!(up.captures.values().all(|e| e.subject == "S-small"));
    wait_until(T, || quarantined(&d) == 1, || d.log());
    let outbox = outbox_status(&d);
    assert_eq!(
        (outbox["captures"].as_u64(), outbox["quarantined"].as_u64()),
        (Some(1), Some(1)),
        "{outbox}"
    );
    // Listed, with its refusals and no subject.
    let list = outbox_list(&d);
    assert_eq!(list.len(), 1, "{list:?}");
    let entry = &list[0];
    assert_eq!(entry["state"], "quarantined", "{entry}");
    assert_eq!(entry["attempts"], 5, "{entry}");
    assert!(entry.get("subject").is_none(), "{entry}");
    let id = entry["capture_id"]
        .as_str()
        .expect("capture id")
        .to_string();
    // Audited with its id, the attempts and the reason; the subject only by
    // its salted reference.
    let rows = d.audited("capture.quarantined");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["detail"]["capture_id"], id.as_str());
    assert_eq!(rows[0]["detail"]["attempts"], 5);
    assert!(rows[0]["detail"]["reason"].is_string());
    assert!(!rows[0].to_string().contains("S-big"), "{}", rows[0]);
    // Not retried on its own: no more reconnects.
    let connections = broker.connections_of(DEVICE);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        broker.connections_of(DEVICE),
        connections,
        "the device kept reconnecting\n{}",
        d.log()
    );
    // Fix the cause, restart: still quarantined (durable), until retried.
    d.stop();
    let text = std::fs::read_to_string(&d.config).unwrap();
    let fixed = text.replace(
        &format!("max_packet_size = {TOO_LARGE}"),
        &format!("max_packet_size = {LIMIT}"),
    );
    assert_ne!(text, fixed, "max_packet_size not found in\n{text}");
    std::fs::write(&d.config, fixed).unwrap();
    d.spawn();
    d.wait_uplink_connected(T);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(quarantined(&d), 1);
    let retried = d.ctl_json(&["outbox", "retry", &id]);
    assert_eq!(retried["retried"], serde_json::json!([id]), "{retried}");
    assert_eq!(d.audited("capture.retried").len(), 1);
    assert!(
        up.collect(&mut fleet, CAPTURES, 6, T).await,
        "the retried capture did not arrive\n{}",
        d.log()
    );
    let want = sanitize(&big, &capture_limits()).unwrap().bytes.to_vec();
    assert!(up.captures[&id].image == want, "not the sanitized image");
    wait_until(T, || outbox_status(&d)["captures"] == 0, || d.log());
    assert_eq!(quarantined(&d), 0);
}

/// Quarantined captures are still purged by a revocation, with the rest of
/// the subject's captures, and the receipt does not list them as in flight
/// (nothing of them reached the broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_purges_quarantined_captures() {
    let broker = strict_broker();
    let mut fleet = fleet(&broker).await;
    let d = Daemon::builder()
        .broker(&broker)
        .configure(|c| {
            c.max_packet_size(TOO_LARGE)
                .max_attempts(2)
                .keep_alive(Duration::from_secs(5))
                .fast_reconnect()
        })
        .start();
    d.grant("S-big");
    d.grant("S-other");
    d.wait_uplink_connected(T);
    d.drop_pair("big1", "jpg", &big_jpeg(7), Some("S-big"));
    d.drop_pair("big2", "jpg", &big_jpeg(8), Some("S-big"));
    wait_until(T, || quarantined(&d) == 2, || d.log());
    let list = outbox_list(&d);
    assert!(
        list.iter()
            .all(|e| e["state"] == "quarantined" && e["attempts"] == 2),
        "{list:?}"
    );
    // The others flow.
    d.drop_pair(
        "other",
        "jpg",
        &synth::face_jpeg(160, 120, 1, 80),
        Some("S-other"),
    );
    let mut up = Uploads::new();
    assert!(up.collect(&mut fleet, CAPTURES, 1, T).await, "{}", d.log());
    let receipt = d.ctl_json(&["consent", "revoke", "S-big"]);
    assert_eq!(receipt["purged"], 2, "{receipt}");
    assert_eq!(receipt["in_flight"], serde_json::json!([]), "{receipt}");
    assert!(outbox_list(&d).is_empty());
    let outbox = outbox_status(&d);
    assert_eq!(
        (outbox["captures"].as_u64(), outbox["quarantined"].as_u64()),
        (Some(0), Some(0)),
        "{outbox}"
    );
}

/// A network drop with 16 captures in flight (their PUBACKs held back, then
/// every connection cut) counts against none of them, even with
/// `max_attempts = 1`: after the reconnect one goes alone, is acknowledged,
/// the window opens again and every capture arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_drop_with_a_full_window_quarantines_nothing() {
    let broker = Broker::start();
    let relay = Relay::start(broker.port).await;
    let mut fleet = fleet(&broker).await;
    let d = Daemon::builder()
        .mqtt("localhost", relay.port, &broker.issue_client(DEVICE))
        .configure(|c| c.inflight(16).max_attempts(1).fast_reconnect())
        .start();
    d.grant("S-1");
    d.wait_uplink_connected(T);
    relay.hold_replies(true);
    for i in 0..20 {
        let small = synth::face_jpeg(160, 120, i, 80);
        d.drop_pair(&format!("c{i}"), "jpg", &small, Some("S-1"));
    }
    // 16 reach the broker; their PUBACKs wait in the relay.
    let mut up = Uploads::new();
    assert!(
        up.collect(&mut fleet, CAPTURES, 16, T).await,
        "{} in flight\n{}",
        up.captures.len(),
        d.log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.captures.len(), 16, "more than the window went out");
    relay.cut();
    relay.hold_replies(false);
    assert!(
        up.collect(&mut fleet, CAPTURES, 20, T).await,
        "{} of 20 arrived\n{}",
        up.captures.len(),
        d.log()
    );
    wait_until(T, || outbox_status(&d)["captures"] == 0, || d.log());
    assert_eq!(quarantined(&d), 0);
    assert!(d.audited("capture.quarantined").is_empty());
    assert!(relay.accepted() >= 2, "no reconnect");
    assert!(
        d.log().contains("sending one at a time"),
        "no probe after the drop\n{}",
        d.log()
    );
}
