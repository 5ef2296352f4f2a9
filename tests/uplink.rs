//! The MQTT half against a real Mosquitto with mutual TLS: uploads, PUBACK
//! bookkeeping, reconnects, crashes, signed commands, status and last will.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use facegate::clock;
use facegate_testkit::broker::{Broker, BrokerOptions, ClientCreds};
use facegate_testkit::config::ConfigBuilder;
use facegate_testkit::daemon::Daemon;
use facegate_testkit::mqtt::Session;
use facegate_testkit::pki::Ca;
use facegate_testkit::relay::Relay;
use facegate_testkit::signer::Signer;
use facegate_testkit::synth;
use facegate_testkit::util::{output_with_stdin, wait_until};
use facegate_testkit::{DEVICE, SITE};
use ring::digest;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);
const CAPTURES: &str = "facegate/lobby/term-01/captures";
const CMD: &str = "facegate/lobby/term-01/cmd";
const REPLY: &str = "facegate/lobby/term-01/reply";
const STATUS: &str = "facegate/lobby/term-01/status";

fn daemon_for(broker: &Broker) -> Daemon {
    daemon_with(broker, |c| c)
}

/// A daemon on `broker` with a short keep-alive, fast reconnects and `more` config.
fn daemon_with(broker: &Broker, more: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Daemon {
    Daemon::builder()
        .broker(broker)
        .configure(|c| more(c.keep_alive(Duration::from_secs(5)).fast_reconnect()))
        .start()
}

async fn fleet(broker: &Broker) -> Session {
    let mut s = Session::spawn(broker.options("fleet"));
    s.wait_connected(T).await.expect("fleet connects");
    s.subscribe("facegate/#", T).await;
    s
}

/// Collects upload envelopes until `n` distinct capture ids arrived (or `wait` passed).
async fn collect(
    fleet: &mut Session,
    n: usize,
    wait: Duration,
    seen: &mut HashMap<String, Vec<Value>>,
) {
    let deadline = tokio::time::Instant::now() + wait;
    while seen.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let Some(p) = fleet.recv_on(CAPTURES, left).await else {
            break;
        };
        let env: Value = serde_json::from_slice(&p.payload).expect("envelope is JSON");
        let id = env["capture_id"].as_str().expect("capture_id").to_string();
        seen.entry(id).or_default().push(env);
    }
}

fn check_envelope(env: &Value, subject: &str) {
    assert_eq!(env["v"], 1);
    assert_eq!(env["site"], SITE);
    assert_eq!(env["device"], DEVICE);
    assert_eq!(env["subject"], subject);
    assert_eq!(env["camera"], "cam-1");
    assert_eq!(env["content_type"], "image/jpeg");
    assert!(env["consent_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(clock::parse_rfc3339(env["captured_at"].as_str().unwrap()).is_some());
    uuid::Uuid::parse_str(env["capture_id"].as_str().unwrap()).expect("capture_id is a UUID");
    let image = base64::engine::general_purpose::STANDARD
        .decode(env["image"].as_str().unwrap())
        .unwrap();
    let sha = hex::encode(digest::digest(&digest::SHA256, &image));
    assert_eq!(
        env["sha256"],
        sha.as_str(),
        "sha256 must match the image bytes"
    );
    image::load_from_memory(&image).expect("a real image");
}

fn sign(d: &Daemon, cmd: &str, args: Value, aud: &str, lifetime: i64, now: i64) -> String {
    d.fleet_signer.command(cmd, args, aud, lifetime, now).1
}

/// Signs arbitrary command claims (for commands `sign_command` refuses to make).
fn sign_raw(d: &Daemon, mut claims: Value, now: i64) -> String {
    claims["jti"] = json!(uuid::Uuid::new_v4().to_string());
    claims["iat"] = json!(now);
    claims["exp"] = json!(now + 600);
    facegate::jws::sign(&claims, &d.fleet_signer.kid, &d.fleet_signer.pkcs8).unwrap()
}

async fn send_cmd(fleet: &mut Session, jws: &str) -> Value {
    fleet.publish(CMD, jws).await;
    let p = fleet.recv_on(REPLY, T).await.expect("a reply");
    serde_json::from_slice(&p.payload).expect("reply is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consented_captures_arrive_once_with_a_correct_envelope() {
    let broker = Broker::start();
    let mut fleet = fleet(&broker).await;
    let d = daemon_for(&broker);
    d.grant("S-1");
    for i in 0..5 {
        d.drop_pair(
            &format!("c{i}"),
            "jpg",
            &synth::face_jpeg(320, 240, i, 85),
            Some("S-1"),
        );
    }
    d.drop_pair(
        "n1",
        "jpg",
        &synth::face_jpeg(320, 240, 50, 85),
        Some("S-2"),
    );
    d.drop_pair("n2", "jpg", &synth::face_jpeg(320, 240, 51, 85), None);
    let mut seen = HashMap::new();
    collect(&mut fleet, 5, T, &mut seen).await;
    // Anything more (a duplicate, an unconsented capture) would show up now.
    collect(&mut fleet, 6, Duration::from_secs(2), &mut seen).await;
    assert_eq!(seen.len(), 5, "{:?}", seen.keys());
    for envs in seen.values() {
        assert_eq!(envs.len(), 1, "capture delivered more than once");
        check_envelope(&envs[0], "S-1");
    }
    wait_until(T, || d.outbox_len() == 0, || d.log());
    let c = d.counters();
    assert_eq!(c.uploaded, 5, "{c:?}");
    assert_eq!(c.dropped_no_consent, 2, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_sent_while_offline_wins_over_queued_captures() {
    let mut broker = Broker::start();
    let mut d = daemon_for(&broker);
    d.grant("S-a");
    d.grant("S-b");
    // Make sure the device's persistent session (with its subscriptions) exists.
    d.wait_uplink_connected(T);
    broker.stop();
    for i in 0..3 {
        d.drop_pair(
            &format!("a{i}"),
            "jpg",
            &synth::face_jpeg(160, 120, i, 80),
            Some("S-a"),
        );
        d.drop_pair(
            &format!("b{i}"),
            "jpg",
            &synth::face_jpeg(160, 120, 10 + i, 80),
            Some("S-b"),
        );
    }
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 6);
    d.stop();

    // Broker back, device still offline: the fleet revokes S-a.
    broker.restart();
    let mut fleet = fleet(&broker).await;
    let jws = sign(
        &d,
        "consent.revoke",
        json!({ "subject": "S-a" }),
        SITE,
        600,
        clock::now(),
    );
    fleet.publish(CMD, jws).await;
    fleet.wait_puback(T).await.expect("broker took the command");

    d.spawn();
    let reply =
        serde_json::from_slice::<Value>(&fleet.recv_on(REPLY, T).await.expect("reply").payload)
            .unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["cmd"], "consent.revoke");
    assert_eq!(reply["result"]["subject"], "S-a");
    assert_eq!(reply["result"]["purged"], 3, "{reply}");
    let mut seen = HashMap::new();
    collect(&mut fleet, 3, T, &mut seen).await;
    collect(&mut fleet, 4, Duration::from_secs(2), &mut seen).await;
    assert_eq!(seen.len(), 3);
    for envs in seen.values() {
        assert_eq!(
            envs[0]["subject"], "S-b",
            "a revoked subject's capture was uploaded"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let mut broker = Broker::start();
    let mut fleet = fleet(&broker).await;
    let d = daemon_with(&broker, |c| c.spool_grace(Duration::from_secs(60)));
    d.grant("S-s");
    let n = 500;
    let images: Vec<Vec<u8>> = (0..10).map(|i| synth::face_jpeg(96, 72, i, 70)).collect();
    for i in 0..n {
        d.drop_pair(&format!("s{i:03}"), "jpg", &images[i % 10], Some("S-s"));
    }
    let mut seen = HashMap::new();
    collect(&mut fleet, 100, T, &mut seen).await;
    broker.restart();
    // What the old fleet connection had already received (and acknowledged)
    // before the broker went away is still in its event queue: read it first.
    while let Some(Ok(event)) = fleet.next(Duration::from_millis(500)).await {
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
            if p.topic == CAPTURES {
                let env: Value = serde_json::from_slice(&p.payload).unwrap();
                let id = env["capture_id"].as_str().unwrap().to_string();
                seen.entry(id).or_default().push(env);
            }
        }
    }
    // The fleet's session is persistent: it reconnects and gets what it missed.
    let mut fleet = Session::spawn(broker.options("fleet"));
    fleet.wait_connected(T).await.unwrap();
    collect(&mut fleet, n, Duration::from_secs(90), &mut seen).await;
    assert_eq!(
        seen.len(),
        n,
        "missing captures after a broker restart\n{:?}\n{}\n{}",
        d.status(),
        broker.log(),
        d.log()
    );
    wait_until(T, || d.outbox_len() == 0, || d.log());
}

/// A connection dropped with uploads in flight, while the broker keeps the
/// session (a flaky network): the broker has the captures, but none of its
/// PUBACKs reached the daemon. Nothing is deleted without its PUBACK; after
/// the reconnect (`session_present`) every capture is sent again from the
/// outbox, exactly once more, with the same `capture_id` and envelope. A
/// replay by the MQTT client of its old connection's queue would show up as a
/// third copy, or as an outgoing publish nobody handed over (whose PUBACK
/// would then delete the wrong capture).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resends_from_the_outbox_into_the_resumed_session() {
    let broker = Broker::start();
    let relay = Relay::start(broker.port).await;
    let mut fleet = fleet(&broker).await;
    let d = Daemon::builder()
        .mqtt("localhost", relay.port, &broker.issue_client(DEVICE))
        .configure(|c| c.fast_reconnect())
        .start();
    d.grant("S-r");
    d.wait_uplink_connected(T);
    relay.hold_replies(true);
    let n = 10; // fewer than the window (16): all go out without a PUBACK
    for i in 0..n {
        let image = synth::face_jpeg(96, 72, i as u64, 70);
        d.drop_pair(&format!("r{i:02}"), "jpg", &image, Some("S-r"));
    }
    let mut seen: HashMap<String, Vec<Value>> = HashMap::new();
    collect(&mut fleet, n, T, &mut seen).await;
    assert_eq!(
        seen.len(),
        n,
        "uploads did not reach the broker\n{}",
        d.log()
    );
    assert_eq!(d.outbox_len(), n as u64, "deleted without a PUBACK");
    relay.cut();
    relay.hold_replies(false);
    // Every capture a second time, then a moment for any third copy.
    let deadline = tokio::time::Instant::now() + T;
    while seen.values().any(|copies| copies.len() < 2) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(p) = fleet.recv_on(CAPTURES, left).await else {
            break;
        };
        let env: Value = serde_json::from_slice(&p.payload).unwrap();
        let id = env["capture_id"].as_str().unwrap().to_string();
        seen.entry(id).or_default().push(env);
    }
    wait_until(T, || d.outbox_len() == 0, || d.log());
    while let Some(p) = fleet.recv_on(CAPTURES, Duration::from_secs(1)).await {
        let env: Value = serde_json::from_slice(&p.payload).unwrap();
        let id = env["capture_id"].as_str().unwrap().to_string();
        seen.entry(id).or_default().push(env);
    }
    let log = d.log();
    assert_eq!(seen.len(), n, "a capture under a new id\n{log}");
    for (id, copies) in &seen {
        assert_eq!(
            copies.len(),
            2,
            "{id} arrived {} times\n{log}",
            copies.len()
        );
        assert_eq!(copies[0], copies[1], "{id} changed between sends");
    }
    assert!(relay.accepted() >= 2, "the daemon did not reconnect");
    assert!(
        log.contains("session_present=true"),
        "the reconnect did not resume the session\n{log}"
    );
    assert!(
        log.contains(&format!("requeued={n}")),
        "the uploads in flight were not requeued\n{log}"
    );
    assert!(
        !log.contains("not handed over"),
        "the MQTT client replayed a publish of the old connection\n{log}"
    );
    assert_eq!(d.counters().upload_retries, n as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_killed_during_upload_loses_nothing() {
    let broker = Broker::start();
    let mut fleet = fleet(&broker).await;
    let mut d = daemon_for(&broker);
    d.grant("S-k");
    let n = 200;
    for i in 0..n {
        d.drop_pair(
            &format!("k{i:03}"),
            "jpg",
            &synth::face_jpeg(96, 72, i as u64, 70),
            Some("S-k"),
        );
    }
    let mut seen = HashMap::new();
    collect(&mut fleet, 20, T, &mut seen).await;
    d.kill9();
    d.spawn();
    collect(&mut fleet, n, Duration::from_secs(60), &mut seen).await;
    assert_eq!(seen.len(), n, "captures lost across kill -9\n{}", d.log());
    wait_until(T, || d.outbox_len() == 0, || d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_never_connects_and_keeps_captures() {
    let broker = Broker::start();
    let other_ca = Ca::new("someone else").unwrap();
    let creds = broker.issue_client(DEVICE);
    let dir = tempfile::tempdir().unwrap();
    let wrong_ca = other_ca.write_cert(dir.path(), "other-ca").unwrap();
    let now = clock::now();
    let expired = broker.issue_client_valid(DEVICE, now - 7200, now - 3600);
    // A broker whose certificate names another host.
    let misnamed = Broker::start_with(BrokerOptions {
        server_names: vec!["broker.example.net".into()],
        ..BrokerOptions::default()
    });
    let misnamed_creds = misnamed.issue_client(DEVICE);
    let cases: Vec<(&str, u16, ClientCreds, &str)> = vec![
        (
            "wrong CA",
            broker.port,
            ClientCreds {
                ca: wrong_ca,
                ..creds
            },
            "mqtt.ca_file",
        ),
        ("name mismatch", misnamed.port, misnamed_creds, "name"),
        (
            "expired client certificate",
            broker.port,
            expired,
            "client certificate",
        ),
    ];
    for (what, port, creds, says) in cases {
        let d = Daemon::builder()
            .mqtt("localhost", port, &creds)
            .configure(ConfigBuilder::fast_reconnect)
            .start();
        d.grant("S-t");
        d.drop_pair("t", "jpg", &synth::face_jpeg(96, 72, 1, 70), Some("S-t"));
        d.wait_spool_empty(T);
        wait_until(
            T,
            || d.log().contains("broker connection lost"),
            || format!("{what}: {}", d.log()),
        );
        let log = d.log();
        assert!(
            log.contains(says),
            "{what}: the log should explain the cause ({says}):\n{log}"
        );
        std::thread::sleep(Duration::from_secs(1));
        let st = d.status();
        assert!(!st.uplink.unwrap().connected, "{what}");
        assert_eq!(
            st.outbox.unwrap().captures,
            1,
            "{what}: the capture must stay queued"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_bad_commands_are_refused_without_effect() {
    let broker = Broker::start();
    let mut fleet = fleet(&broker).await;
    let d = daemon_for(&broker);
    d.grant("S-c");
    d.wait_uplink_connected(T);
    let now = clock::now();
    let revoke = json!({ "subject": "S-c" });

    let stranger = Signer::new(&d.fleet_signer.kid);
    let forged = stranger
        .command("consent.revoke", revoke.clone(), SITE, 600, now)
        .1;
    let purge_all = json!({"all": true});
    let unknown_kid = Signer::new("nobody")
        .command("capture.purge", purge_all.clone(), SITE, 600, now)
        .1;
    let wrong_role = d
        .consent_signer
        .command("capture.purge", purge_all, SITE, 600, now)
        .1;
    let cases = vec![
        ("bad_signature", forged),
        ("unknown_key", unknown_kid),
        ("wrong_role", wrong_role),
        (
            "wrong_audience",
            sign(&d, "consent.revoke", revoke.clone(), "other-site", 600, now),
        ),
        (
            "wrong_audience",
            sign(
                &d,
                "consent.revoke",
                revoke.clone(),
                "lobby/term-99",
                600,
                now,
            ),
        ),
        (
            "expired",
            sign(&d, "consent.revoke", revoke.clone(), SITE, 600, now - 4000),
        ),
        ("malformed", "this is not a JWS".to_string()),
        (
            "unknown_command",
            sign_raw(
                &d,
                json!({"cmd": "format.disk", "args": {}, "aud": SITE}),
                now,
            ),
        ),
    ];
    for (code, jws) in cases {
        let reply = send_cmd(&mut fleet, &jws).await;
        assert_eq!(reply["v"], 1);
        assert_eq!(reply["ok"], false, "{code}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
        assert!(reply["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert_eq!(
            d.active_consents(),
            1,
            "{code}: the refused command had an effect"
        );
    }

    // A valid status command works once; its replay is refused.
    let status = sign(
        &d,
        "status",
        json!({}),
        &format!("{SITE}/{DEVICE}"),
        600,
        now,
    );
    let ok = send_cmd(&mut fleet, &status).await;
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["cmd"], "status");
    let again = send_cmd(&mut fleet, &status).await;
    assert_eq!(again["ok"], false);
    assert_eq!(again["error"]["code"], "replayed");
    assert_eq!(again["jti"], ok["jti"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_retained_and_the_last_will_says_offline() {
    let broker = Broker::start();
    let mut d = daemon_for(&broker);
    d.wait_uplink_connected(T);
    // A subscriber arriving later still sees the retained status.
    let mut fleet = fleet(&broker).await;
    let p = fleet.recv_on(STATUS, T).await.expect("retained status");
    assert!(p.retain);
    let st: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(st["v"], 1);
    assert_eq!(st["state"], "online");
    for key in ["version", "ts", "outbox", "consent", "counters"] {
        assert!(st.get(key).is_some(), "status lacks {key}: {st}");
    }
    d.kill9();
    let will = fleet
        .recv_on(STATUS, Duration::from_secs(20))
        .await
        .expect("last will");
    let will: Value = serde_json::from_slice(&will.payload).unwrap();
    assert_eq!(will, json!({"v": 1, "state": "offline"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_tool_sends_commands_and_prints_replies() {
    let broker = Broker::start();
    let d = daemon_for(&broker);
    d.grant("S-f");
    d.wait_uplink_connected(T);
    let fleet_tls = broker.issue_client("fleet");
    let key = d.dir.path().join("fleet-signing.pem");
    facegate::keys::write_private_key(&key, &d.fleet_signer.pkcs8).unwrap();
    let command = |extra: &[&str]| {
        let broker_addr = format!("localhost:{}", broker.port);
        let mut args: Vec<String> = [
            "fleet",
            "send",
            "--broker",
            &broker_addr,
            "--site",
            SITE,
            "--kid",
            &d.fleet_signer.kid,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (flag, path) in [
            ("--ca", &fleet_tls.ca),
            ("--cert", &fleet_tls.cert),
            ("--tls-key", &fleet_tls.key),
            ("--key", &key),
        ] {
            args.push(flag.into());
            args.push(path.display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_facegate"));
        cmd.args(&args);
        cmd
    };
    let run = |extra: &[&str]| command(extra).output().unwrap();

    // One device, readable output.
    let out = run(&["--device", DEVICE, "--cmd", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("term-01: ok status"), "{text}");

    // The whole site, JSON lines; the revocation takes effect. The subject
    // id comes from stdin (`--args -`), not the process list.
    let out = output_with_stdin(
        &mut command(&[
            "--cmd",
            "consent.revoke",
            "--args",
            "-",
            "--timeout",
            "3s",
            "--json",
        ]),
        br#"{"subject":"S-f"}
"#,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["ok"], true);
    assert_eq!(lines[0]["result"]["subject"], "S-f");
    assert_eq!(d.active_consents(), 0);

    // A refused command exits non-zero and says why.
    let out = run(&[
        "--device",
        DEVICE,
        "--cmd",
        "capture.purge",
        "--args",
        r#"{"subject":"bad subject!"}"#,
    ]);
    assert!(!out.status.success());
}

/// A capture whose sealed image no longer decrypts (damaged on disk while
/// the daemon was stopped) is purged at its hand-over, audited
/// `undecryptable` and counted, and never published; the captures beside
/// it are uploaded as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_whose_image_does_not_decrypt_is_purged_not_published() {
    let mut broker = Broker::start();
    let mut d = daemon_for(&broker);
    d.grant("S-u");
    d.wait_uplink_connected(T);
    broker.stop();
    for i in 0..3 {
        d.drop_pair(
            &format!("u{i}"),
            "jpg",
            &synth::face_jpeg(160, 120, 20 + i, 80),
            Some("S-u"),
        );
    }
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 3);
    d.stop();
    let damaged: String = {
        let conn = rusqlite::Connection::open(d.state.join("facegate.db")).unwrap();
        let id = conn
            .query_row(
                "SELECT capture_id FROM captures ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        // The metadata still opens (the subject is known), the image not.
        let n = conn
            .execute(
                "UPDATE captures SET image = zeroblob(length(image)) WHERE capture_id = ?1",
                [&id],
            )
            .unwrap();
        assert_eq!(n, 1);
        id
    };

    broker.restart();
    let mut fleet = fleet(&broker).await;
    d.spawn();
    let mut seen = HashMap::new();
    collect(&mut fleet, 2, T, &mut seen).await;
    wait_until(T, || d.outbox_len() == 0, || d.log());
    collect(&mut fleet, 3, Duration::from_secs(2), &mut seen).await;
    assert_eq!(seen.len(), 2, "{:?}", seen.keys());
    assert!(
        !seen.contains_key(&damaged),
        "the damaged capture was published"
    );
    for envs in seen.values() {
        check_envelope(&envs[0], "S-u");
    }
    let purged = d.audited("capture.purged");
    assert_eq!(purged.len(), 1, "{purged:?}");
    assert_eq!(purged[0]["detail"]["reason"], "undecryptable", "{purged:?}");
    assert!(
        d.log()
            .contains("purging outbox captures that cannot be decrypted"),
        "{}",
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_lists_captures_already_in_flight() {
    let mut broker = Broker::start();
    let d = daemon_for(&broker);
    d.grant("S-i");
    d.wait_uplink_connected(T);
    // The fleet's persistent session subscribes before the broker goes away,
    // so what the device sends right after the restart waits for it.
    drop(fleet(&broker).await);
    // Queue 40 captures while the broker is away, then let them stream.
    broker.stop();
    for i in 0..40 {
        d.drop_pair(
            &format!("i{i:02}"),
            "jpg",
            &synth::face_jpeg(640, 480, i, 90),
            Some("S-i"),
        );
    }
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 40);
    broker.restart();
    let mut fleet = fleet(&broker).await;
    let mut seen = HashMap::new();
    collect(&mut fleet, 1, T, &mut seen).await;
    let jws = sign(
        &d,
        "capture.purge",
        json!({ "subject": "S-i" }),
        SITE,
        600,
        clock::now(),
    );
    fleet.publish(CMD, jws).await;
    // Captures keep arriving while we wait for the reply: count them too.
    let reply = loop {
        let p = fleet.recv_publish(T).await.expect("the reply");
        if p.topic == CAPTURES {
            let env: Value = serde_json::from_slice(&p.payload).unwrap();
            seen.entry(env["capture_id"].as_str().unwrap().to_string())
                .or_default()
                .push(env);
        } else if p.topic == REPLY {
            break serde_json::from_slice::<Value>(&p.payload).unwrap();
        }
    };
    assert_eq!(reply["ok"], true, "{reply}");
    let r = &reply["result"];
    let purged = r["purged"].as_u64().unwrap();
    let in_flight: Vec<String> = r["in_flight"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    collect(&mut fleet, 1000, Duration::from_secs(2), &mut seen).await;
    // Every capture was either delivered before the purge, or purged; the
    // purged ones that had already been handed to MQTT are listed in the
    // receipt (they may still arrive; the back-end deletes them by capture_id).
    let late = in_flight.iter().filter(|id| seen.contains_key(*id)).count() as u64;
    assert_eq!(
        seen.len() as u64 + purged - late,
        40,
        "{r} seen {:?}",
        seen.keys()
    );
    assert!(purged > 0, "the purge came too late to test anything: {r}");
    wait_until(T, || d.outbox_len() == 0, || d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_says_offline_and_disconnects_promptly() {
    let broker = Broker::start();
    let mut d = daemon_for(&broker);
    d.wait_uplink_connected(T);
    let mut fleet = fleet(&broker).await;
    let online = fleet.recv_on(STATUS, T).await.expect("retained status");
    assert_eq!(
        serde_json::from_slice::<Value>(&online.payload).unwrap()["state"],
        "online"
    );
    let started = std::time::Instant::now();
    assert!(d.stop().success());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        started.elapsed()
    );
    let offline = fleet.recv_on(STATUS, T).await.expect("offline status");
    assert_eq!(
        serde_json::from_slice::<Value>(&offline.payload).unwrap(),
        json!({"v": 1, "state": "offline"})
    );
}

/// Sends a signed `status` command and returns its reply's `uplink` object.
async fn uplink_by_command(d: &Daemon, fleet: &mut Session) -> Value {
    let aud = format!("{SITE}/{DEVICE}");
    let jws = sign(d, "status", json!({}), &aud, 600, clock::now());
    let reply = send_cmd(fleet, &jws).await;
    assert_eq!(reply["ok"], true, "{reply}");
    reply["result"]["uplink"].clone()
}

/// SPEC "Broker limits and large captures": a reconnect on which the broker
/// kept no session for the device is counted (`uplink.session_lost`) and
/// logged, the device subscribes again, and commands and uploads go on. A
/// fresh install's first connection and a restart that kept the session are
/// not counted. (Before `uplink.session_lost` existed this failed: the status
/// had no such field and the log said nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lost_by_the_broker_is_counted_and_the_device_subscribes_again() {
    const WARNING: &str = "the broker kept no session for this device";
    let mut broker = Broker::start();
    let d = daemon_for(&broker);
    d.grant("S-1");
    d.wait_uplink_connected(T);
    // The first connection of a fresh install: no session, nothing lost.
    let lost = |d: &Daemon| d.ctl_json(&["status", "--json"])["uplink"]["session_lost"].clone();
    assert_eq!(lost(&d), 0, "{}", d.log());

    // A restart that keeps the broker's persistence keeps the session.
    broker.restart();
    let mut before_loss = fleet(&broker).await;
    assert_eq!(
        uplink_by_command(&d, &mut before_loss).await["session_lost"],
        0
    );
    let connects = |d: &Daemon| d.log().matches("connected to broker").count();
    assert!(
        connects(&d) >= 2,
        "the device did not reconnect\n{}",
        d.log()
    );
    assert!(!d.log().contains(WARNING), "{}", d.log());
    drop(before_loss);

    // Without persistence the broker forgets the session and subscriptions.
    let before = connects(&d);
    broker.restart_without_persistence();
    wait_until(T, || connects(&d) > before, || d.log());
    let mut fleet = fleet(&broker).await;
    // The retained status went with the persistence: the next one is the
    // device's own, published after it subscribed again on this connection.
    let st = loop {
        let p = fleet
            .recv_on(STATUS, T)
            .await
            .expect("a status after the reconnect");
        let st: Value = serde_json::from_slice(&p.payload).unwrap();
        if st["state"] == "online" {
            break st;
        }
    };
    assert_eq!(st["uplink"]["session_lost"], 1, "{st}");
    // Commands reach the device: it subscribed again.
    assert_eq!(uplink_by_command(&d, &mut fleet).await["session_lost"], 1);
    assert_eq!(lost(&d), 1);
    assert!(
        d.ctl(&["status"]).contains("session lost 1"),
        "{}",
        d.ctl(&["status"])
    );
    let log = d.log();
    let warning = log
        .lines()
        .find(|l| l.contains(WARNING))
        .unwrap_or_else(|| panic!("no warning about the lost session\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert_eq!(log.matches(WARNING).count(), 1, "{log}");

    // Uploads go on.
    d.drop_pair(
        "after",
        "jpg",
        &synth::face_jpeg(160, 120, 7, 80),
        Some("S-1"),
    );
    let mut seen = HashMap::new();
    collect(&mut fleet, 1, T, &mut seen).await;
    assert_eq!(seen.len(), 1, "no upload after the session was lost");
    for envs in seen.values() {
        check_envelope(&envs[0], "S-1");
    }
    wait_until(T, || d.outbox_len() == 0, || d.log());
}
