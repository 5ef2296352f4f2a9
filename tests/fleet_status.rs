//! `facegate fleet status` against a real Mosquitto with mutual TLS: two
//! devices of one site, one online with captures waiting in its outbox and
//! one gone (its last will), read from the retained status topics.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use facegate_testkit::broker::{Broker, ClientCreds};
use facegate_testkit::daemon::Daemon;
use facegate_testkit::synth;
use facegate_testkit::SITE;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn fleet_status(broker: &Broker, tls: &ClientCreds, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_facegate"));
    cmd.args(["fleet", "status", "--site", SITE])
        .args(tls.fleet_args(broker))
        .args(extra);
    cmd
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn device_daemon(broker: &Broker, device: &str) -> Daemon {
    let creds = broker.issue_client(device);
    Daemon::builder()
        .mqtt("localhost", broker.port, &creds)
        .configure(|c| {
            c.device_id(device)
                .keep_alive(Duration::from_secs(5))
                .fast_reconnect()
                .status_interval(Duration::from_secs(1))
                // No head of the site's consent log will come: uploads wait,
                // so the outbox keeps what intake accepted.
                .consent_log("required")
                // The clock column then reads "ok" whatever this host's NTP says.
                .clock_ntp("ignore")
        })
        .start()
}

#[test]
fn lists_an_online_and_an_offline_device_with_their_outbox() {
    let broker = Broker::start();
    let online = device_daemon(&broker, "term-01");
    let mut gone = device_daemon(&broker, "term-02");
    online.wait_uplink_connected(T);
    gone.wait_uplink_connected(T);
    online.grant("S-1");
    for i in 0..3 {
        online.drop_pair(
            &format!("c{i}"),
            "jpg",
            &synth::face_jpeg(320, 240, i, 90),
            Some("S-1"),
        );
    }
    online.wait_spool_empty(T);
    assert_eq!(online.outbox_len(), 3);
    // kill -9: the broker publishes term-02's last will.
    gone.kill9();

    let tls = broker.issue_client("fleet");
    let deadline = Instant::now() + T;
    let rows = loop {
        let out = fleet_status(&broker, &tls, &["--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows = json_lines(&String::from_utf8_lossy(&out.stdout));
        let ready =
            rows.len() == 2 && rows[0]["outbox"]["captures"] == 3 && rows[1]["health"] == "offline";
        if ready || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["device"], "term-01");
    assert_eq!(rows[0]["health"], "online", "{rows:?}");
    assert!(
        rows[0]["last_seen_age_s"].as_u64().unwrap() < 30,
        "{rows:?}"
    );
    // The same outbox as the device's own status says.
    let local = online.ctl_json(&["status", "--json"]);
    assert_eq!(rows[0]["outbox"]["captures"], 3, "{rows:?}");
    assert_eq!(
        rows[0]["outbox"]["bytes"], local["outbox"]["bytes"],
        "{rows:?} / {local}"
    );
    assert_eq!(rows[0]["counters"]["accepted"], 3);
    assert_eq!(rows[0]["consent_log"]["in_sync"], false);
    assert_eq!(rows[1]["device"], "term-02");
    assert_eq!(rows[1]["health"], "offline");
    assert_eq!(rows[1]["last_seen"], Value::Null);

    // The table, in words.
    let out = fleet_status(&broker, &tls, &[]).output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("DEVICE"), "{table}");
    let first: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(first[..2], ["term-01", "online"], "{table}");
    assert_eq!(first[4], "3", "outbox column: {table}");
    assert_eq!(first[7..9], ["no", "head"], "consent log column: {table}");
    assert_eq!(first[9], "ok", "clock column: {table}");
    assert!(
        lines[2].starts_with("term-02") && lines[2].contains("OFFLINE"),
        "{table}"
    );
    assert_eq!(
        lines[3],
        "site lobby: 2 devices, 1 online, 0 silent, 1 offline"
    );
}

#[test]
fn watch_follows_a_device_going_offline_and_stops_on_sigterm() {
    let broker = Broker::start();
    let mut d = device_daemon(&broker, "term-01");
    d.wait_uplink_connected(T);
    let tls = broker.issue_client("fleet");
    let mut watch = fleet_status(&broker, &tls, &["--watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next_health = || -> String {
        let line = lines.next().expect("a line").expect("readable");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["device"], "term-01", "{v}");
        v["health"].as_str().unwrap().to_string()
    };
    assert_eq!(next_health(), "online");
    d.kill9();
    let deadline = Instant::now() + T;
    while next_health() != "offline" {
        assert!(Instant::now() < deadline, "no offline status seen");
    }
    let pid = watch.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = watch.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn no_status_readable_says_where_it_looked() {
    let broker = Broker::start();
    let d = device_daemon(&broker, "term-01");
    d.wait_uplink_connected(T);
    // A device certificate may not read the site's statuses: Mosquitto grants
    // the subscription and delivers nothing, so the tool says what to check.
    let tls = broker.issue_client("term-03");
    let out = fleet_status(&broker, &tls, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{err}");
    assert!(text.contains("site lobby: 0 devices"), "{text}");
    assert!(
        err.contains("no status on facegate/lobby/+/status") && err.contains("ACL"),
        "{err}"
    );
}
