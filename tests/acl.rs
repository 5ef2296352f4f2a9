//! The shipped broker layout against a real Mosquitto 2 over mutual TLS: the
//! ACL written by `facegate fleet acl` (through the testkit broker, which
//! generates it with the product's function) plus `use_username_as_clientid`.
//! A device certificate can neither read another site's commands, nor forge
//! another device's status or reply, nor take over another device's session.
//!
//! Each attack is also run against the layout docs/PROTOCOL.md documented
//! before (pattern lines with `%u`, client id chosen by the client), where it
//! succeeds: so each test fails if the broker falls back to that layout
//! (checked by pointing the shipped half of every test at the old broker: all
//! three failed).

use std::time::Duration;

use facegate_testkit::broker::{Broker, BrokerAcl, BrokerOptions};
use facegate_testkit::daemon::{facegate_binary, Daemon};
use facegate_testkit::mqtt::Session;
use facegate_testkit::{DEVICE, SITE};
use rumqttc::{QoS, SubscribeReasonCode};
use serde_json::{json, Value};

/// Generous bound for things that should happen at once.
const T: Duration = Duration::from_secs(10);
/// How long to wait for something that must not arrive, once a later marker came.
const QUIET: Duration = Duration::from_millis(500);

/// A broker with the old layout: the pattern ACL, client ids as the clients ask.
fn old_layout() -> Broker {
    Broker::start_with(BrokerOptions {
        acl: BrokerAcl::old_pattern(),
        client_id_from_certificate: false,
        ..BrokerOptions::default()
    })
}

async fn connected(broker: &Broker, cn: &str) -> Session {
    let mut s = Session::spawn(broker.options(cn));
    s.wait_connected(T)
        .await
        .unwrap_or_else(|e| panic!("{cn} connects: {e}"));
    s
}

async fn publish(s: &mut Session, topic: &str, payload: &str, retain: bool) {
    s.client
        .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
        .await
        .unwrap();
    assert!(s.wait_puback(T).await.is_some(), "no PUBACK for {topic}");
}

/// Every message `s` receives until `marker` arrived and `QUIET` passed, as
/// `(topic, payload)`.
async fn until_marker(s: &mut Session, marker: &str) -> Vec<(String, String)> {
    let mut got = Vec::new();
    let mut seen_marker = false;
    loop {
        let wait = if seen_marker { QUIET } else { T };
        let Some(p) = s.recv_publish(wait).await else {
            break;
        };
        let payload = String::from_utf8_lossy(&p.payload).into_owned();
        seen_marker |= payload == marker;
        got.push((p.topic.to_string(), payload));
    }
    assert!(seen_marker, "the marker {marker:?} never arrived: {got:?}");
    got
}

/// Device `a-01` of `site-a` subscribes to `site-b`'s command topics (and to
/// everything); the fleet sends a site-wide and a device command to `site-b`,
/// then a command to `site-a` as a marker. What reached `a-01`.
async fn other_sites_commands_seen(broker: &Broker) -> Vec<(String, String)> {
    let mut fleet = connected(broker, "fleet").await;
    let mut dev = connected(broker, "a-01").await;
    for filter in ["facegate/site-b/cmd", "facegate/+/cmd", "facegate/#"] {
        dev.subscribe(filter, T).await;
    }
    publish(&mut fleet, "facegate/site-b/cmd", "revoke S-b1", false).await;
    publish(&mut fleet, "facegate/site-b/b-01/cmd", "revoke S-b2", false).await;
    publish(&mut fleet, "facegate/site-a/cmd", "marker", false).await;
    until_marker(&mut dev, "marker").await
}

#[tokio::test]
async fn a_device_cannot_read_another_sites_commands() {
    // Shipped layout: only its own site's command (the marker) reaches a-01.
    let broker = Broker::start();
    let got = other_sites_commands_seen(&broker).await;
    assert!(
        got.iter().all(|(_, payload)| payload == "marker"),
        "a-01 read another site's commands: {got:?}"
    );

    // Old layout: `pattern read facegate/+/cmd` hands it site-b's command.
    let old = old_layout();
    let got = other_sites_commands_seen(&old).await;
    assert!(
        got.iter()
            .any(|(t, p)| t == "facegate/site-b/cmd" && p == "revoke S-b1"),
        "the old layout was expected to leak: {got:?}"
    );
}

/// Device `a-01` publishes a retained status and a reply as `a-01` of
/// `site-b`, and a retained status as `a-02` of its own site, then its own
/// status as a marker. The forged messages the fleet received, live or
/// retained (a later subscription).
async fn forgeries_delivered(broker: &Broker) -> Vec<(String, String)> {
    let mut fleet = connected(broker, "fleet").await;
    fleet.subscribe("facegate/#", T).await;
    let mut dev = connected(broker, "a-01").await;
    let forged = r#"{"v":1,"state":"online","forged":true}"#;
    publish(&mut dev, "facegate/site-b/a-01/status", forged, true).await;
    publish(&mut dev, "facegate/site-b/a-01/reply", forged, false).await;
    publish(&mut dev, "facegate/site-a/a-02/status", forged, true).await;
    publish(&mut dev, "facegate/site-a/a-01/status", "marker", false).await;
    let mut got = until_marker(&mut fleet, "marker").await;
    // A back-end that subscribes later gets what was retained.
    for filter in ["facegate/site-b/+/status", "facegate/site-a/a-02/status"] {
        fleet.subscribe(filter, T).await;
    }
    while let Some(p) = fleet.recv_publish(QUIET).await {
        got.push((
            p.topic.to_string(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        ));
    }
    got.retain(|(_, payload)| payload == forged);
    got
}

#[tokio::test]
async fn a_device_cannot_forge_another_devices_status_or_reply() {
    let broker = Broker::start();
    let forged = forgeries_delivered(&broker).await;
    assert!(forged.is_empty(), "forged messages delivered: {forged:?}");

    // Old layout: `pattern write facegate/+/%u/…` accepts a-01 of any site.
    let old = old_layout();
    let forged = forgeries_delivered(&old).await;
    let topics: Vec<&str> = forged.iter().map(|(t, _)| t.as_str()).collect();
    assert!(
        topics.contains(&"facegate/site-b/a-01/status")
            && topics.contains(&"facegate/site-b/a-01/reply"),
        "the old layout was expected to accept the forgeries: {forged:?}"
    );
}

/// The real daemon (`term-01` of `lobby`) holds a consent and stops; a signed
/// revocation is queued for it in its persistent session. Then the
/// certificate of `term-02` connects asking for client id `term-01` with a
/// clean session, and goes. Whether the restarted daemon still gets the
/// revocation (its reply, within `wait`) and applies it.
async fn queued_revocation_survives_a_takeover(broker: &Broker, wait: Duration) -> bool {
    let mut d = Daemon::builder()
        .broker(broker)
        .configure(|c| c.keep_alive(Duration::from_secs(5)).fast_reconnect())
        .start();
    d.grant("S-1");
    d.wait_uplink_connected(T);
    d.stop();

    let reply_topic = format!("facegate/{SITE}/{DEVICE}/reply");
    let mut fleet = connected(broker, "fleet").await;
    fleet.subscribe(&reply_topic, T).await;
    let (jti, revoke) = d.fleet_signer.command(
        "consent.revoke",
        json!({"subject": "S-1"}),
        &format!("{SITE}/{DEVICE}"),
        600,
        facegate::clock::now(),
    );
    let cmd_topic = format!("facegate/{SITE}/{DEVICE}/cmd");
    publish(&mut fleet, &cmd_topic, &revoke, false).await;

    // The attack: another device's certificate, the victim's client id, a clean session.
    let creds = broker.issue_client("term-02");
    let mut options = broker.options_for(DEVICE, "localhost", &creds);
    options.set_clean_session(true);
    let mut attacker = Session::spawn(options);
    attacker.wait_connected(T).await.expect("attacker connects");
    attacker.client.disconnect().await.unwrap();
    while attacker.next(Duration::from_millis(500)).await.is_some() {}

    d.spawn();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(p) = fleet.recv_on(&reply_topic, left).await else {
            return false;
        };
        let reply: Value = serde_json::from_slice(&p.payload).unwrap();
        if reply["jti"] == jti.as_str() {
            assert_eq!(reply["ok"], true, "{reply}");
            assert_eq!(d.active_consents(), 0, "the revocation was applied");
            return true;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_certificate_cannot_take_over_a_devices_session() {
    // Shipped layout: term-02's certificate is always the session `term-02`,
    // so term-01's session, and the revocation queued in it, are untouched.
    let broker = Broker::start();
    assert!(
        queued_revocation_survives_a_takeover(&broker, T).await,
        "the queued revocation was lost"
    );

    // The shipped ACL without `use_username_as_clientid`: the clean session
    // that term-02's certificate opened under `term-01` wiped the revocation.
    let unbound = Broker::start_with(BrokerOptions {
        client_id_from_certificate: false,
        ..BrokerOptions::default()
    });
    assert!(
        !queued_revocation_survives_a_takeover(&unbound, Duration::from_secs(5)).await,
        "without use_username_as_clientid the revocation was expected to be lost"
    );

    // Old layout: the same.
    let old = old_layout();
    assert!(
        !queued_revocation_survives_a_takeover(&old, Duration::from_secs(5)).await,
        "the old layout was expected to lose the revocation"
    );
}

/// What `facegate doctor` builds on: Mosquitto answers a subscription the ACL
/// denies with a SUBACK that grants it (QoS 1, not 0x80) under MQTT 3.1.1, and
/// filters on delivery; so a granted SUBACK proves nothing, only what is
/// delivered does.
#[tokio::test]
async fn mosquitto_grants_a_denied_subscription_and_filters_on_delivery() {
    let broker = Broker::start();
    let mut fleet = connected(&broker, "fleet").await;
    let mut dev = connected(&broker, "a-01").await;
    let ack = dev.subscribe("facegate/site-b/cmd", T).await;
    assert_eq!(
        ack.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    dev.subscribe("facegate/site-a/cmd", T).await;
    publish(&mut fleet, "facegate/site-b/cmd", "denied", false).await;
    publish(&mut fleet, "facegate/site-a/cmd", "marker", false).await;
    let got = until_marker(&mut dev, "marker").await;
    assert_eq!(got.len(), 1, "{got:?}");
}

/// `facegate fleet acl` prints what the library generates (the testkit broker's
/// ACL comes from the same function) and refuses a bad inventory naming the
/// file and the line.
#[test]
fn the_fleet_acl_command_prints_the_layout_and_names_bad_lines() {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(facegate_binary())
            .args(["fleet", "acl"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let inventory = "# site device\nlobby term-01\nhall term-07 # new\n";
    let out = run(
        &[
            "--inventory",
            "-",
            "--prefix",
            "fg",
            "--fleet",
            "fleet",
            "--fleet",
            "rx=hall",
        ],
        inventory,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let users = ["fleet", "rx=hall"].map(|f| facegate::fleet::acl::FleetUser::parse(f).unwrap());
    let expected = facegate::fleet::acl::generate(inventory, "fg", &users).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    assert!(expected.contains("user term-07\ntopic write fg/hall/term-07/captures\n"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inventory");
    std::fs::write(&file, "lobby term-01\nhall Term-01\n").unwrap();
    let out = run(&["--inventory", file.to_str().unwrap()], "");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("{}: inventory line 2", file.display()))
            && err.contains("already listed on line 1"),
        "{err}"
    );
    let out = run(&["--inventory", "-"], "lobby fleet\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("stdin: inventory line 1")
            && err.contains("reserved"),
        "{err}"
    );

    let help = Command::new(facegate_binary())
        .args(["fleet", "acl", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("use_username_as_clientid true"), "{help}");
}
