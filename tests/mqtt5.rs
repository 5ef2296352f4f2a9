//! The uplink under MQTT 5 (`mqtt.protocol = "5"`, SPEC "Broker limits and
//! large captures"), against a real Mosquitto 2 over mutual TLS, the real
//! binary and real images: uploads, commands, status and last will work as
//! under 3.1.1; a PUBACK with an error reason code is a refusal that counts
//! towards quarantine, never a delivery, and the connection stays up; the
//! broker's Maximum Packet Size lowers the device's packet limit; the
//! session outlives a daemon restart (Session Expiry Interval) and its loss
//! is counted; and a command larger than the device's announced Maximum
//! Packet Size is dropped by the broker instead of ending the connection.
//!
//! Against the code before MQTT 5: `mqtt.protocol` was an unknown key, so
//! every test fails at start-up. With rumqttc's v5 client used naively:
//! an error-code PUBACK arrives as a plain `PubAck` and deleted the capture
//! (`an_acl_refusal_…` fails: the outbox empties, nothing is quarantined);
//! without a Session Expiry Interval the
//! session ends at the DISCONNECT (`the_session_outlives_…` gets no reply);
//! without reading CONNACK's Maximum Packet Size the 1 MiB packets end the
//! connection (`the_brokers_maximum_packet_size_…` sees reconnects); and
//! with rumqttc's default 10 KiB inbound limit, or no limit announced,
//! `an_oversized_command_…` sees the connection end. (The PUBACK code, the
//! session expiry, the broker's limit and the announced limit were checked
//! that way: with each undone, its test fails.)
//! Mosquitto 2.0's `message_size_limit` shows a broker quirk: its PUBACK
//! 0x95 cannot be decoded, and the 3.1.1-style rule still quarantines.

use std::time::Duration;

use facegate::clock;
use facegate::protocol::parts::publish_packet_size;
use facegate::sanitize::sanitize;
use facegate_testkit::broker::{Broker, BrokerAcl, BrokerOptions};
use facegate_testkit::config::{capture_limits, ConfigBuilder};
use facegate_testkit::daemon::Daemon;
use facegate_testkit::mqtt::{Session, Uploads};
use facegate_testkit::synth;
use facegate_testkit::util::wait_until;
use facegate_testkit::{DEVICE, SITE};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);
const CAPTURES: &str = "facegate/lobby/term-01/captures";
const CMD: &str = "facegate/lobby/term-01/cmd";
const REPLY: &str = "facegate/lobby/term-01/reply";
const STATUS: &str = "facegate/lobby/term-01/status";

/// A daemon speaking MQTT 5 to `broker`, with a short keep-alive, fast
/// reconnects and `more` config.
fn daemon_v5(broker: &Broker, more: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Daemon {
    Daemon::builder()
        .broker(broker)
        .configure(|c| {
            more(
                c.protocol("5")
                    .keep_alive(Duration::from_secs(5))
                    .fast_reconnect(),
            )
        })
        .start()
}

/// A fleet back-end (MQTT 3.1.1: topics, envelope and commands are the
/// same whatever the device speaks) that survives broker restarts.
async fn fleet(broker: &Broker) -> Session {
    let mut s = Session::spawn_reconnecting(broker.options("fleet"));
    s.wait_connected(T).await.expect("fleet connects");
    s.subscribe("facegate/#", T).await;
    s
}

async fn send_cmd(fleet: &mut Session, jws: &str) -> Value {
    fleet.publish(CMD, jws).await;
    let p = fleet.recv_on(REPLY, T).await.expect("a reply");
    serde_json::from_slice(&p.payload).expect("reply is JSON")
}

/// Sends a signed `status` command; its reply's `result`.
async fn status_by_command(d: &Daemon, fleet: &mut Session) -> Value {
    let jws = d
        .fleet_signer
        .command(
            "status",
            json!({}),
            &format!("{SITE}/{DEVICE}"),
            600,
            clock::now(),
        )
        .1;
    let reply = send_cmd(fleet, &jws).await;
    assert_eq!(reply["ok"], true, "{reply}");
    reply["result"].clone()
}

fn status_json(d: &Daemon) -> Value {
    d.ctl_json(&["status", "--json"])
}

fn quarantined(d: &Daemon) -> u64 {
    status_json(d)["outbox"]["quarantined"]
        .as_u64()
        .unwrap_or(0)
}

fn outbox_list(d: &Daemon) -> Vec<Value> {
    d.ctl_json(&["outbox", "list", "--json"])
        .as_array()
        .expect("ctl outbox list --json prints an array")
        .clone()
}

fn small_jpeg(seed: u64) -> Vec<u8> {
    synth::face_jpeg(160, 120, seed, 80)
}

/// The broker's log lines of the device's connections.
fn device_connections(broker: &Broker) -> Vec<String> {
    let tag = format!(" as {DEVICE} ");
    broker
        .log()
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains(&tag))
        .map(String::from)
        .collect()
}

/// Uploads, a signed command and its reply, the retained status and the
/// last will, with the device connected as an MQTT 5 client with a
/// persistent session (Mosquitto logs `p5, c0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_commands_status_and_last_will_work_under_mqtt5() {
    let broker = Broker::start();
    let mut fleet = fleet(&broker).await;
    let mut d = daemon_v5(&broker, |c| c);
    d.wait_uplink_connected(T);
    let lines = device_connections(&broker);
    assert_eq!(lines.len(), 1, "{}", broker.log());
    assert!(
        lines[0].contains("(p5, c0,"),
        "not an MQTT 5 connection with a kept session: {}",
        lines[0]
    );
    d.grant("S-1");
    for i in 0..3 {
        d.drop_pair(&format!("c{i}"), "jpg", &small_jpeg(i), Some("S-1"));
    }
    let mut up = Uploads::new();
    assert!(
        up.collect(&mut fleet, CAPTURES, 3, T).await,
        "only {} of 3 captures arrived\n{}",
        up.captures.len(),
        d.log()
    );
    assert!(up.captures.values().all(|e| e.subject == "S-1"));
    wait_until(T, || d.outbox_len() == 0, || d.log());
    let result = status_by_command(&d, &mut fleet).await;
    assert_eq!(result["uplink"]["session_lost"], 0, "{result}");

    // A subscriber arriving later sees the retained status.
    let mut late = Session::spawn(broker.options("fleet-2"));
    late.wait_connected(T).await.expect("connects");
    late.subscribe(STATUS, T).await;
    let p = late.recv_on(STATUS, T).await.expect("retained status");
    assert!(p.retain);
    let st: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(st["state"], "online", "{st}");
    d.kill9();
    let will = late.recv_on(STATUS, T).await.expect("the last will");
    let will: Value = serde_json::from_slice(&will.payload).unwrap();
    assert_eq!(will, json!({"v": 1, "state": "offline"}));
    assert_eq!(device_connections(&broker).len(), 1, "{}", broker.log());
}

/// The broker refuses every capture of this device with PUBACK 0x87 (not
/// authorized: its ACL denies the captures topic; a 3.1.1 client would get
/// a plain PUBACK and lose them silently). Each refusal counts: after
/// `max_attempts` both captures are quarantined, still queued and never
/// deleted, on the one connection; commands and status go on meanwhile;
/// once the ACL is fixed, `ctl outbox retry --all` delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_refusal_is_never_taken_for_a_delivery() {
    let deny_captures = BrokerAcl::Custom(
        "\
user fleet
topic readwrite facegate/#

user term-01
topic write facegate/lobby/term-01/reply
topic write facegate/lobby/term-01/status
topic read facegate/lobby/term-01/cmd
topic read facegate/lobby/cmd
topic read facegate/lobby/consent/head
"
        .into(),
    );
    let mut broker = Broker::start_with(BrokerOptions {
        acl: deny_captures,
        ..BrokerOptions::default()
    });
    let mut fleet = fleet(&broker).await;
    let d = daemon_v5(&broker, |c| c.max_attempts(2));
    d.wait_uplink_connected(T);
    d.grant("S-1");
    for i in 0..2 {
        d.drop_pair(&format!("c{i}"), "jpg", &small_jpeg(i), Some("S-1"));
    }
    wait_until(T, || quarantined(&d) == 2, || d.log());
    let list = outbox_list(&d);
    assert_eq!(list.len(), 2, "{list:?}");
    for entry in &list {
        assert_eq!(entry["state"], "quarantined", "{entry}");
        assert_eq!(entry["attempts"], 2, "{entry}");
    }
    let rows = d.audited("capture.quarantined");
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        let reason = row["detail"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("PUBACK 0x87"), "{row}");
    }
    // Refused in the PUBACK: no connection was closed over it.
    assert_eq!(broker.connections_of(DEVICE), 1, "{}", broker.log());
    assert!(!d.log().contains("broker connection lost"), "{}", d.log());
    // Commands and status flow on the same connection.
    let result = status_by_command(&d, &mut fleet).await;
    assert_eq!(result["outbox"]["quarantined"], 2, "{result}");

    // The cause fixed, a retry delivers both.
    broker.set_acl(&BrokerAcl::shipped());
    broker.restart();
    wait_until(
        T,
        || d.log().matches("connected to broker").count() >= 2,
        || d.log(),
    );
    d.wait_uplink_connected(T);
    let retried = d.ctl_json(&["outbox", "retry", "--all"]);
    assert_eq!(
        retried["retried"].as_array().map(Vec::len),
        Some(2),
        "{retried}"
    );
    let mut up = Uploads::new();
    assert!(
        up.collect(&mut fleet, CAPTURES, 2, T).await,
        "the retried captures did not arrive\n{}",
        d.log()
    );
    wait_until(T, || d.outbox_len() == 0, || d.log());
    assert_eq!(quarantined(&d), 0);
}

/// Mosquitto 2.0 refuses a PUBLISH above its `message_size_limit` with a
/// PUBACK whose reason code is 0x95, which MQTT 5 does not allow in a
/// PUBACK: rumqttc cannot decode it and the connection ends. The suspect
/// rule (as under 3.1.1) counts that against the one capture in flight: the
/// large capture is quarantined after `max_attempts`, the small ones behind
/// it arrive, and the reason names the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_over_the_brokers_message_size_limit_is_quarantined_and_the_rest_flow() {
    const PAYLOAD_LIMIT: usize = 24 * 1024;
    let broker = Broker::start_with(BrokerOptions {
        message_size_limit: PAYLOAD_LIMIT,
        ..BrokerOptions::default()
    });
    let mut fleet = fleet(&broker).await;
    let d = daemon_v5(&broker, |c| c.max_attempts(3));
    d.wait_uplink_connected(T);
    d.grant("S-big");
    d.grant("S-small");
    // About 60 KB: whole under the device's 128 KiB packet limit, above the
    // broker's payload limit.
    let big = synth::face_jpeg(640, 480, 3, 90);
    assert!(big.len() > PAYLOAD_LIMIT, "{}", big.len());
    d.drop_pair("big", "jpg", &big, Some("S-big"));
    d.wait_spool_empty(T);
    for i in 0..3 {
        d.drop_pair(&format!("s{i}"), "jpg", &small_jpeg(i), Some("S-small"));
    }
    let mut up = Uploads::new();
    assert!(
        up.collect(&mut fleet, CAPTURES, 3, T).await,
        "only {} of the 3 small captures arrived\n{}",
        up.captures.len(),
        d.log()
    );
    assert!(up.captures.values().all(|e| e.subject == "S-small"));
    wait_until(T, || quarantined(&d) == 1, || d.log());
    // The back-end may see a capture before the device has its PUBACK and
    // has deleted it: wait for the deletes.
    wait_until(T, || d.outbox_len() == 1, || d.log());
    let list = outbox_list(&d);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["attempts"], 3, "{list:?}");
    let rows = d.audited("capture.quarantined");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let reason = rows[0]["detail"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("0x95") && reason.contains("message_size_limit"),
        "{}",
        rows[0]
    );
}

/// The broker's limit (64 KiB) is below the device's configured one
/// (1 MiB): under MQTT 5 CONNACK says so, and the device sends a 300 KB
/// capture in parts that each fit, on one connection; they reassemble to
/// the sanitized image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brokers_maximum_packet_size_lowers_the_devices_limit() {
    const LIMIT: usize = 64 * 1024;
    let broker = Broker::start_with(BrokerOptions {
        max_packet_size: LIMIT,
        ..BrokerOptions::default()
    });
    let mut fleet = fleet(&broker).await;
    let d = daemon_v5(&broker, |c| c.max_packet_size(1024 * 1024));
    d.wait_uplink_connected(T);
    d.grant("S-big");
    let big = synth::face_jpeg(1440, 1080, 7, 90);
    d.drop_pair("big", "jpg", &big, Some("S-big"));
    let mut up = Uploads::new();
    let deadline = tokio::time::Instant::now() + T;
    while up.captures.is_empty() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(p) = fleet.recv_on(CAPTURES, left).await else {
            panic!(
                "the capture did not arrive; the device connected {} times\n{}",
                broker.connections_of(DEVICE),
                d.log()
            );
        };
        // As the device sent it: an MQTT 5 PUBLISH has one byte more (its
        // empty property length) than the 3.1.1 one the back-end receives.
        let size = publish_packet_size(CAPTURES.len(), p.payload.len() + 1);
        assert!(
            size <= LIMIT,
            "a {size}-byte packet above the broker's {LIMIT}"
        );
        up.take(&p.payload);
    }
    let whole = up.captures.values().next().expect("one capture");
    let parts = up.parts_of(&whole.capture_id);
    assert!(parts.len() >= 5, "{parts:?}");
    let want = sanitize(&big, &capture_limits()).unwrap().bytes.to_vec();
    assert!(whole.image == want, "not the sanitized image");
    wait_until(T, || d.outbox_len() == 0, || d.log());
    assert_eq!(broker.connections_of(DEVICE), 1, "{}", broker.log());
    assert!(
        d.log().contains("Maximum Packet Size"),
        "the lowered limit is not logged\n{}",
        d.log()
    );
}

/// A 2 MiB message on the device's command topic, above the Maximum Packet
/// Size the device announced (its inbound limit, 1 MiB here): the broker
/// drops it for the device instead of sending it, so the connection stays
/// up, and the next command and uploads work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_command_does_not_disconnect_the_device() {
    let broker = Broker::start();
    let mut fleet = fleet(&broker).await;
    let d = daemon_v5(&broker, |c| c.command_max_bytes(1024));
    d.wait_uplink_connected(T);
    d.grant("S-1");
    fleet.publish(CMD, vec![b'x'; 2 * 1024 * 1024]).await;
    let result = status_by_command(&d, &mut fleet).await;
    assert_eq!(result["uplink"]["session_lost"], 0, "{result}");
    d.drop_pair("after", "jpg", &small_jpeg(1), Some("S-1"));
    let mut up = Uploads::new();
    assert!(
        up.collect(&mut fleet, CAPTURES, 1, T).await,
        "no upload after the oversized command\n{}",
        d.log()
    );
    // Another command after the upload: still the same connection.
    status_by_command(&d, &mut fleet).await;
    assert_eq!(broker.connections_of(DEVICE), 1, "{}", broker.log());
    assert!(!d.log().contains("broker connection lost"), "{}", d.log());
}

/// The Session Expiry Interval keeps the session while the daemon is
/// stopped: a command sent meanwhile is delivered after the restart and
/// answered, and no session is counted lost. A broker that loses its
/// persistence loses the session: that is counted (`uplink.session_lost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_outlives_a_daemon_restart_and_its_loss_is_counted() {
    let mut broker = Broker::start();
    let mut fleet = fleet(&broker).await;
    let mut d = daemon_v5(&broker, |c| c.session_expiry(Duration::from_secs(3600)));
    d.wait_uplink_connected(T);
    let lost = |d: &Daemon| status_json(d)["uplink"]["session_lost"].clone();
    assert_eq!(lost(&d), 0);
    d.stop();
    let jws = d
        .fleet_signer
        .command(
            "status",
            json!({}),
            &format!("{SITE}/{DEVICE}"),
            600,
            clock::now(),
        )
        .1;
    fleet.publish(CMD, jws).await;
    d.spawn();
    let p = fleet
        .recv_on(REPLY, T)
        .await
        .unwrap_or_else(|| panic!("the command sent while stopped was lost\n{}", d.log()));
    let reply: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["uplink"]["session_lost"], 0, "{reply}");
    assert_eq!(lost(&d), 0);

    let connects = |d: &Daemon| d.log().matches("connected to broker").count();
    let before = connects(&d);
    broker.restart_without_persistence();
    wait_until(T, || connects(&d) > before, || d.log());
    wait_until(T, || lost(&d) == 1, || d.log());
    // Subscribed again: commands still reach it (the back-end's session
    // went too: it subscribes again on a new one).
    drop(fleet);
    let mut fleet = self::fleet(&broker).await;
    let result = status_by_command(&d, &mut fleet).await;
    assert_eq!(result["uplink"]["session_lost"], 1, "{result}");
}
