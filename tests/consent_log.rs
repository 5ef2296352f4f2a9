//! The site consent log (SPEC "Site consent log: no revocation is lost"),
//! with the real binary and a real Mosquitto over mutual TLS: a terminal
//! whose broker dropped part of its queued commands (a small
//! `max_queued_messages`, a session lost with a restart) knows it from the
//! signed head, uploads nothing while it misses entries, and catches up
//! when they are sent again; stale, replayed and forged heads and entries
//! change nothing; an entry applied just before a crash is not applied twice.

use std::time::Duration;

use facegate::clock;
use facegate::protocol::{ConsentLogStatus, Envelope};
use facegate_testkit::broker::{Broker, BrokerOptions};
use facegate_testkit::daemon::Daemon;
use facegate_testkit::mqtt::Session;
use facegate_testkit::relay::Relay;
use facegate_testkit::signer::Signer;
use facegate_testkit::synth;
use facegate_testkit::util::wait_until;
use facegate_testkit::{DEVICE, SITE};
use rumqttc::{Event, Packet, QoS};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);
const SITE_CMD: &str = "facegate/lobby/cmd";
const DEVICE_CMD: &str = "facegate/lobby/term-01/cmd";
const HEAD: &str = "facegate/lobby/consent/head";
const CAPTURES: &str = "facegate/lobby/+/captures";
const REPLIES: &str = "facegate/lobby/+/reply";

/// The back-end's side: sends entries and heads, collects replies and uploads.
struct Fleet {
    s: Session,
    /// Subjects of every upload received, in order.
    uploaded: Vec<String>,
    /// Every reply received.
    replies: Vec<Value>,
}

impl Fleet {
    async fn connect(broker: &Broker) -> Fleet {
        let mut s = Session::spawn(broker.options("fleet"));
        s.wait_connected(T).await.expect("fleet connects");
        s.subscribe(CAPTURES, T).await;
        s.subscribe(REPLIES, T).await;
        Fleet {
            s,
            uploaded: Vec::new(),
            replies: Vec::new(),
        }
    }

    /// Publishes `head` retained on the head topic.
    async fn head(&self, head: &str) {
        self.s
            .client
            .publish(HEAD, QoS::AtLeastOnce, true, head.as_bytes().to_vec())
            .await
            .expect("publish the head");
    }

    async fn send(&self, topic: &str, jws: &str) {
        self.s.publish(topic, jws).await;
    }

    /// Receives for `d` (or until `done` holds), sorting uploads and replies.
    async fn pump_until(&mut self, d: Duration, done: impl Fn(&Fleet) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if done(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let Some(ev) = self.s.next(left).await else {
                return done(self);
            };
            if let Ok(Event::Incoming(Packet::Publish(p))) = ev {
                if p.topic.ends_with("/captures") {
                    let e: Envelope = serde_json::from_slice(&p.payload).expect("envelope");
                    self.uploaded.push(e.subject);
                } else if p.topic.ends_with("/reply") {
                    self.replies
                        .push(serde_json::from_slice(&p.payload).expect("reply JSON"));
                }
            }
        }
    }

    /// Receives for `d`.
    async fn pump(&mut self, d: Duration) {
        self.pump_until(d, |_| false).await;
    }

    /// Waits for the reply to `jti`.
    async fn reply(&mut self, jti: &str) -> Value {
        let found = |f: &Fleet| f.replies.iter().any(|r| r["jti"] == jti);
        assert!(
            self.pump_until(T, found).await,
            "no reply to {jti}: {:?}",
            self.replies
        );
        self.replies
            .iter()
            .find(|r| r["jti"] == jti)
            .cloned()
            .unwrap_or_default()
    }

    fn uploads_of(&self, subject: &str) -> usize {
        self.uploaded.iter().filter(|s| *s == subject).count()
    }
}

fn log_daemon(broker: &Broker) -> Daemon {
    Daemon::builder()
        .broker(broker)
        .configure(|c| {
            c.consent_log("required")
                .keep_alive(Duration::from_secs(5))
                .fast_reconnect()
        })
        .start()
}

fn log_status(d: &Daemon) -> ConsentLogStatus {
    let st = d.status();
    st.consent_log
        .clone()
        .unwrap_or_else(|| panic!("no consent_log in the status: {st:?}"))
}

fn wait_log(d: &Daemon, what: &str, cond: impl Fn(&ConsentLogStatus) -> bool) {
    wait_until(
        T,
        || cond(&log_status(d)),
        || format!("{what}: {:?}\n{}", log_status(d), d.log()),
    );
}

/// Drops a capture of `subject` (distinct pixels per `seed`).
fn capture(d: &Daemon, name: &str, subject: &str, seed: u64) {
    d.drop_pair(
        name,
        "jpg",
        &synth::face_jpeg(160, 120, seed, 80),
        Some(subject),
    );
}

/// The site's log as the back-end keeps it: entry `seq` is `cmd`/`args`.
fn entry(signer: &Signer, seq: u64, cmd: &str, args: Value) -> (String, String) {
    let (jti, jws) = signer.entry(cmd, args, seq, clock::now());
    (jti.to_string(), jws)
}

fn grant_args(d: &Daemon, subject: &str) -> Value {
    json!({ "token": d.consent_signer.consent(subject, 3600) })
}

/// `facegate fleet <args>` as the back-end `fleet-2` (its own client
/// certificate: the test's session is `fleet`), signing with the daemon's
/// trusted fleet key; the log file lives next to the daemon's files.
struct Tool {
    broker: String,
    creds: facegate_testkit::broker::ClientCreds,
    key: std::path::PathBuf,
    kid: String,
    log: std::path::PathBuf,
}

impl Tool {
    fn new(broker: &Broker, d: &Daemon) -> Tool {
        let key = d.dir.path().join("fleet-signing.pem");
        facegate::keys::write_private_key(&key, &d.fleet_signer.pkcs8).expect("write the key");
        Tool {
            broker: format!("localhost:{}", broker.port),
            creds: broker.issue_client("fleet-2"),
            key,
            kid: d.fleet_signer.kid.clone(),
            log: d.dir.path().join("lobby.consent.log"),
        }
    }

    /// Runs `facegate fleet <sub…> <broker, TLS, signer, site, log> <extra…>`.
    fn run(&self, sub: &[&str], extra: &[&str]) -> (bool, String, String) {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_facegate"));
        cmd.arg("fleet").args(sub);
        cmd.args(["--broker", &self.broker, "--site", SITE, "--kid", &self.kid]);
        for (flag, path) in [
            ("--ca", &self.creds.ca),
            ("--cert", &self.creds.cert),
            ("--tls-key", &self.creds.key),
            ("--key", &self.key),
            ("--log", &self.log),
        ] {
            cmd.arg(flag).arg(path);
        }
        cmd.args(extra);
        let out = cmd.output().expect("run facegate fleet");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `fleet send --log` of `cmd` with `args` to the whole site.
    fn send(&self, cmd: &str, args: &Value) -> String {
        let args = args.to_string();
        let (_, out, err) = self.run(
            &["send"],
            &["--cmd", cmd, "--args", &args, "--timeout", "1s"],
        );
        assert!(err.contains("appended to"), "{out}{err}");
        out
    }
}

/// The headline case: the broker keeps 2 queued messages per offline
/// client; the site log (`fleet send --log`) gets 5 entries while the
/// terminal is off, alice's revocation (3) among those dropped; the head
/// says 5. Back online, the terminal shows the gap, uploads nothing
/// (alice's captures least of all); `fleet log sync` fills the gap, alice is
/// purged with a receipt, and bob's captures then upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_the_broker_dropped_holds_uploads_until_fleet_log_sync() {
    let broker = Broker::start_with(BrokerOptions {
        max_queued_messages: Some(2),
        ..BrokerOptions::default()
    });
    let mut fleet = Fleet::connect(&broker).await;
    let mut d = log_daemon(&broker);
    let tool = Tool::new(&broker, &d);
    d.grant("alice");
    d.grant("bob");
    d.wait_uplink_connected(T);
    // An empty log: in sync (and subscribed, so the session has it all).
    let (ok, out, err) = tool.run(&["log", "head"], &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("seq 0, base 1"), "{out}");
    wait_log(&d, "in sync with the empty log", |s| s.in_sync);
    assert_eq!(d.stop().code(), Some(0));

    // Offline: captures wait in the spool, the site's log grows by five.
    for i in 0..2 {
        capture(&d, &format!("alice-{i}"), "alice", 10 + i);
        capture(&d, &format!("bob-{i}"), "bob", 20 + i);
    }
    tool.send("consent.grant", &grant_args(&d, "carol"));
    tool.send("consent.grant", &grant_args(&d, "dave"));
    tool.send("consent.revoke", &json!({ "subject": "alice" }));
    tool.send("consent.grant", &grant_args(&d, "erin"));
    tool.send("consent.revoke", &json!({ "subject": "zed" }));

    // The broker kept the first of its queue (entry 1 and the head it
    // published then); the retained head says 5.
    d.spawn();
    wait_log(&d, "the head of 5 arrives", |s| s.head == 5);
    wait_log(&d, "the queued entry is applied", |s| s.applied >= 1);
    let st = log_status(&d);
    assert!(!st.in_sync, "{st:?}");
    assert!(
        st.missing.iter().any(|[a, b]| *a <= 3 && 3 <= *b),
        "the broker kept alice's revocation: {st:?}"
    );
    let text = d.ctl(&["status"]);
    assert!(text.contains("out of sync: missing"), "{text}");
    fleet.pump(Duration::from_secs(2)).await;
    assert!(
        fleet.uploaded.is_empty(),
        "uploaded while out of sync: {:?}",
        fleet.uploaded
    );
    assert_eq!(d.outbox_len(), 4, "{}", d.log());

    // The back-end sends what the status says is missing.
    let (ok, out, err) = tool.run(&["log", "sync"], &[]);
    assert!(ok, "{out}{err}\n{}", d.log());
    assert!(
        out.contains(
            "term-01: resent 3 -> term-01: ok consent.revoke: purged 2 capture(s) of alice"
        ),
        "{out}"
    );
    assert!(
        fleet.pump_until(T, |f| f.uploads_of("bob") == 2).await,
        "bob's captures were not uploaded: {:?}\n{}",
        fleet.uploaded,
        d.log()
    );
    assert_eq!(fleet.uploads_of("alice"), 0, "{:?}", fleet.uploaded);
    let receipt = fleet
        .replies
        .iter()
        .find(|r| r["cmd"] == "consent.revoke" && r["result"]["subject"] == "alice")
        .cloned()
        .unwrap_or_default();
    assert_eq!(receipt["result"]["purged"], 2, "{:?}", fleet.replies);
    let st = log_status(&d);
    assert!(st.in_sync && st.missing.is_empty(), "{st:?}");
    assert_eq!(st.applied, 5);

    // Nothing left to send.
    let (ok, out, _) = tool.run(&["log", "sync"], &[]);
    assert!(
        ok && out.contains("every device of lobby has every entry"),
        "{out}"
    );
}

/// A head older than `head_max_age` counts as none: nothing uploads until a
/// fresh head arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_head_holds_uploads_until_a_fresh_one_arrives() {
    let broker = Broker::start();
    let mut fleet = Fleet::connect(&broker).await;
    let d = Daemon::builder()
        .broker(&broker)
        .configure(|c| {
            c.consent_log("required")
                .head_max_age(Duration::from_secs(60))
        })
        .start();
    d.grant("bob");
    d.wait_uplink_connected(T);
    let signer = &d.fleet_signer;
    fleet
        .head(&signer.head_for(SITE, 0, 1, clock::now() - 120))
        .await;
    wait_log(&d, "the stale head arrives", |s| s.head_age_s >= 120);
    assert!(!log_status(&d).in_sync);
    let text = d.ctl(&["status"]);
    assert!(text.contains("older than head_max_age"), "{text}");

    capture(&d, "bob-0", "bob", 1);
    d.wait_spool_empty(T);
    fleet.pump(Duration::from_secs(2)).await;
    assert!(fleet.uploaded.is_empty(), "{:?}", fleet.uploaded);
    assert_eq!(d.outbox_len(), 1);

    fleet.head(&signer.head(0, 1)).await;
    assert!(
        fleet.pump_until(T, |f| f.uploads_of("bob") == 1).await,
        "nothing uploaded after a fresh head\n{}",
        d.log()
    );
    assert!(log_status(&d).in_sync);
}

/// The broker restarts without persistence while a revocation waits in the
/// terminal's session: the session and the retained head are gone. Until the
/// back-end publishes its head again the terminal has none and uploads
/// nothing; with it, the gap shows, and nothing of the revoked subject is
/// ever uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_does_not_lose_a_revocation() {
    let mut broker = Broker::start();
    let mut d = log_daemon(&broker);
    d.grant("alice");
    d.grant("bob");
    d.wait_uplink_connected(T);
    {
        let fleet = Fleet::connect(&broker).await;
        let (_, one) = entry(&d.fleet_signer, 1, "consent.grant", grant_args(&d, "carol"));
        fleet.send(SITE_CMD, &one).await;
        fleet.head(&d.fleet_signer.head(1, 1)).await;
        wait_log(&d, "in sync at 1", |s| s.in_sync && s.applied == 1);
        assert_eq!(d.stop().code(), Some(0));
        capture(&d, "alice-0", "alice", 1);
        capture(&d, "bob-0", "bob", 2);
        let (_, two) = entry(
            &d.fleet_signer,
            2,
            "consent.revoke",
            json!({ "subject": "alice" }),
        );
        fleet.send(SITE_CMD, &two).await;
        fleet.head(&d.fleet_signer.head(2, 1)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    broker.restart_without_persistence();
    let mut fleet = Fleet::connect(&broker).await;
    d.spawn();
    d.wait_uplink_connected(T);
    d.wait_spool_empty(T);
    fleet.pump(Duration::from_secs(2)).await;
    let st = log_status(&d);
    assert!(!st.in_sync, "no head on this connection: {st:?}");
    assert!(fleet.uploaded.is_empty(), "{:?}", fleet.uploaded);
    assert_eq!(d.status().uplink.map(|u| u.session_lost), Some(1));

    // The back-end's timer publishes the head again: the gap shows.
    fleet.head(&d.fleet_signer.head(2, 1)).await;
    wait_log(&d, "the gap shows", |s| s.missing == vec![[2, 2]]);
    fleet.pump(Duration::from_secs(1)).await;
    assert!(fleet.uploaded.is_empty(), "{:?}", fleet.uploaded);

    let (jti, two) = entry(
        &d.fleet_signer,
        2,
        "consent.revoke",
        json!({ "subject": "alice" }),
    );
    fleet.send(SITE_CMD, &two).await;
    let receipt = fleet.reply(&jti).await;
    assert_eq!(receipt["result"]["purged"], 1, "{receipt}");
    assert!(
        fleet.pump_until(T, |f| f.uploads_of("bob") == 1).await,
        "{}",
        d.log()
    );
    assert_eq!(fleet.uploads_of("alice"), 0);
}

/// A terminal joining a site whose log was compacted to `base` = 40 needs
/// only the entries 40–45.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_terminal_needs_only_the_entries_from_base() {
    let broker = Broker::start();
    let mut fleet = Fleet::connect(&broker).await;
    let d = log_daemon(&broker);
    d.wait_uplink_connected(T);
    fleet.head(&d.fleet_signer.head(45, 40)).await;
    wait_log(&d, "missing 40-45", |s| s.missing == vec![[40, 45]]);
    assert_eq!(log_status(&d).applied, 39);
    for seq in 40..=45 {
        let subject = format!("s-{seq}");
        let (jti, jws) = entry(
            &d.fleet_signer,
            seq,
            "consent.grant",
            grant_args(&d, &subject),
        );
        fleet.send(SITE_CMD, &jws).await;
        let reply = fleet.reply(&jti).await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    wait_log(&d, "in sync at 45", |s| s.in_sync);
    let st = log_status(&d);
    assert_eq!((st.applied, st.head), (45, 45));
    assert!(st.missing.is_empty());
}

/// Entries sent again apply once; heads and entries that are forged,
/// signed by the wrong role, for another site or older are refused with
/// the SPEC codes and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_forged_heads_and_entries_change_nothing() {
    let broker = Broker::start();
    let mut fleet = Fleet::connect(&broker).await;
    let d = log_daemon(&broker);
    d.wait_uplink_connected(T);
    let signer = &d.fleet_signer;
    let (j1, e1) = entry(signer, 1, "consent.grant", grant_args(&d, "carol"));
    fleet.send(SITE_CMD, &e1).await;
    assert_eq!(fleet.reply(&j1).await["ok"], true);
    let (j2, e2) = entry(signer, 2, "consent.revoke", json!({ "subject": "carol" }));
    fleet.send(SITE_CMD, &e2).await;
    assert_eq!(fleet.reply(&j2).await["ok"], true);
    fleet.head(&signer.head(2, 1)).await;
    wait_log(&d, "in sync at 2", |s| s.in_sync && s.applied == 2);
    let before = log_status(&d);
    let applied_rows = d.audited("command.applied").len();

    // The same entry again (same jti): the reply kept from its application.
    fleet.replies.clear();
    fleet.send(SITE_CMD, &e1).await;
    let again = fleet.reply(&j1).await;
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(again["result"]["new"], true, "the kept reply: {again}");
    // Entry 1 with a new jti: ok, no second effect. Re-granting carol would
    // be refused (revoked by 2); it is not even looked at.
    let (j1b, e1b) = entry(signer, 1, "consent.grant", grant_args(&d, "carol"));
    fleet.send(SITE_CMD, &e1b).await;
    let again = fleet.reply(&j1b).await;
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(
        again["result"],
        json!({ "seq": 1, "already_applied": true })
    );
    assert_eq!(d.active_consents(), 0);

    // Entries: wrong key, wrong role, other site, seq on a status command.
    let stranger = Signer::new(&signer.kid);
    let (jf, forged) = stranger.entry(
        "consent.revoke",
        json!({ "subject": "bob" }),
        3,
        clock::now(),
    );
    let (jr, by_consent_key) =
        d.consent_signer
            .entry("consent.grant", grant_args(&d, "bob"), 3, clock::now());
    let (jw, other_site) = {
        let cmd =
            facegate::cmd::Command::from_parts("consent.revoke", &json!({ "subject": "bob" }))
                .expect("command");
        let stamp = facegate::command::Stamp {
            iat: clock::now(),
            exp: clock::now() + 600,
            seq: Some(facegate::ids::Seq::new(3)),
        };
        cmd.sign_as("hall", stamp, &signer.kid, &signer.pkcs8)
            .expect("sign")
    };
    // `seq` on a command other than a grant or a revocation.
    let (jd, device_seq) = {
        let cmd = facegate::cmd::Command::from_parts("status", &json!({})).expect("command");
        let stamp = facegate::command::Stamp {
            iat: clock::now(),
            exp: clock::now() + 600,
            seq: Some(facegate::ids::Seq::new(3)),
        };
        cmd.sign_as(
            &format!("{SITE}/{DEVICE}"),
            stamp,
            &signer.kid,
            &signer.pkcs8,
        )
        .expect("sign")
    };
    for (jti, jws, topic, code) in [
        (jf.to_string(), forged, SITE_CMD, "bad_signature"),
        (jr.to_string(), by_consent_key, SITE_CMD, "wrong_role"),
        (jw.to_string(), other_site, SITE_CMD, "wrong_audience"),
        (jd.to_string(), device_seq, DEVICE_CMD, "malformed"),
    ] {
        fleet.send(topic, &jws).await;
        let reply = fleet.reply(&jti).await;
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
    }

    // Heads: wrong key, unknown key, wrong role, other site, lower seq.
    let unknown = Signer::new("nobody");
    for (head, code) in [
        (stranger.head(9, 1), Some("bad_signature")),
        (unknown.head(9, 1), Some("unknown_key")),
        (d.consent_signer.head(9, 1), Some("wrong_role")),
        (
            signer.head_for("hall", 9, 1, clock::now()),
            Some("wrong_audience"),
        ),
        (signer.head(1, 1), None),
    ] {
        fleet.head(&head).await;
        fleet.pump(Duration::from_millis(300)).await;
        if let Some(code) = code {
            wait_until(
                T,
                || {
                    d.audited("consent_log.head_refused")
                        .iter()
                        .any(|r| r["detail"]["code"] == code)
                },
                || format!("no refusal {code} audited\n{}", d.log()),
            );
        }
    }
    let after = log_status(&d);
    assert_eq!(after.head, before.head);
    assert_eq!(after.applied, before.applied);
    assert!(after.in_sync, "{after:?}");
    // Only the entry sent again with a new jti was remembered (no effect).
    assert_eq!(
        d.audited("command.applied").len(),
        applied_rows + 1,
        "{}",
        d.log()
    );
}

/// `kill -9` after an entry's effect committed and before its PUBACK reached
/// the broker: after the restart the broker delivers it again, it is not
/// applied twice (the kept reply goes out) and the gap accounting is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_applied_before_a_crash_is_not_applied_twice() {
    let broker = Broker::start();
    let relay = Relay::start(broker.port).await;
    let mut fleet = Fleet::connect(&broker).await;
    let mut d = Daemon::builder()
        .mqtt("localhost", relay.port, &broker.issue_client(DEVICE))
        .configure(|c| {
            c.consent_log("required")
                .keep_alive(Duration::from_secs(5))
                .fast_reconnect()
        })
        .start();
    d.grant("alice");
    d.wait_uplink_connected(T);
    fleet.head(&d.fleet_signer.head(1, 1)).await;
    wait_log(&d, "head 1", |s| s.head == 1);

    // The device's PUBACK (and reply) stay in the relay.
    relay.hold_requests(true);
    let (jti, revoke) = entry(
        &d.fleet_signer,
        1,
        "consent.revoke",
        json!({ "subject": "alice" }),
    );
    fleet.send(SITE_CMD, &revoke).await;
    wait_log(&d, "entry 1 applied", |s| s.applied == 1);
    d.kill9();
    relay.cut();
    relay.hold_requests(false);

    d.spawn();
    let reply = fleet.reply(&jti).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(
        reply["result"]["subject"], "alice",
        "the kept receipt: {reply}"
    );
    wait_log(&d, "in sync at 1", |s| s.in_sync);
    let st = log_status(&d);
    assert_eq!((st.applied, st.head), (1, 1));
    let applied: Vec<Value> = d
        .audited("command.applied")
        .into_iter()
        .filter(|r| r["detail"]["jti"] == jti)
        .collect();
    assert_eq!(applied.len(), 1, "{applied:?}");
    let revoked = d.audited("consent.revoked");
    assert!(revoked.len() <= 1, "{revoked:?}");
}

/// A revocation received out of order takes effect at once: it does not
/// wait for the gap before it to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_out_of_order_takes_effect_at_once() {
    let broker = Broker::start();
    let mut fleet = Fleet::connect(&broker).await;
    let d = log_daemon(&broker);
    d.grant("alice");
    d.wait_uplink_connected(T);
    capture(&d, "alice-0", "alice", 1);
    d.wait_spool_empty(T);
    fleet.head(&d.fleet_signer.head(3, 1)).await;
    wait_log(&d, "missing 1-3", |s| s.missing == vec![[1, 3]]);
    let (jti, three) = entry(
        &d.fleet_signer,
        3,
        "consent.revoke",
        json!({ "subject": "alice" }),
    );
    fleet.send(SITE_CMD, &three).await;
    let receipt = fleet.reply(&jti).await;
    assert_eq!(receipt["ok"], true, "{receipt}");
    assert_eq!(receipt["result"]["purged"], 1, "{receipt}");
    assert_eq!(d.outbox_len(), 0);
    assert_eq!(d.active_consents(), 0);
    let st = log_status(&d);
    assert_eq!(st.missing, vec![[1, 2]]);
    assert_eq!(st.applied, 0);
    assert!(fleet.uploaded.is_empty());
}

/// `fleet log compact` raises the base past the entries whose consents have
/// all expired, and no further than the first one still needed.
#[test]
fn fleet_log_compact_raises_the_base_past_expired_entries() {
    use facegate::fleet::log::{append, read, Record};
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("lobby.log");
    let now = clock::now();
    for (seq, until) in [(1, now - 10), (2, now - 5), (3, now + 3600), (4, now - 1)] {
        let record = Record::Entry {
            seq: facegate::ids::Seq::new(seq),
            jws: "a.b.c".into(),
            needed_until: until,
        };
        append(&path, &record).expect("append");
    }
    let compact = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_facegate"))
            .args(["fleet", "log", "compact", "--log"])
            .arg(&path)
            .output()
            .expect("run facegate fleet log compact");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(compact().contains("base raised from 1 to 3"));
    assert_eq!(read(&path).expect("read").base(), 3);
    assert!(compact().contains("base stays 3"));
    let head = read(&path).expect("read").head(now, 60);
    assert_eq!((head.seq.get(), head.base.get()), (4, 3));
}

/// `[consent] log` applies on SIGHUP: turned to "required" on a terminal
/// whose back-end publishes no head, the next capture waits; the head
/// releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiring_the_log_by_sighup_holds_the_next_upload() {
    let broker = Broker::start();
    let mut fleet = Fleet::connect(&broker).await;
    let d = Daemon::builder()
        .broker(&broker)
        .configure(|c| c.keep_alive(Duration::from_secs(5)))
        .start();
    d.grant("bob");
    d.wait_uplink_connected(T);
    capture(&d, "bob-0", "bob", 1);
    assert!(
        fleet.pump_until(T, |f| f.uploads_of("bob") == 1).await,
        "{}",
        d.log()
    );

    let original = std::fs::read_to_string(&d.config).expect("read the config");
    std::fs::write(&d.config, original + "\n[consent]\nlog = \"required\"\n")
        .expect("write the config");
    d.signal("HUP");
    wait_until(T, || d.log().contains("configuration reloaded"), || d.log());
    capture(&d, "bob-1", "bob", 2);
    d.wait_spool_empty(T);
    fleet.pump(Duration::from_secs(2)).await;
    assert_eq!(fleet.uploads_of("bob"), 1, "uploaded without a head");
    assert_eq!(d.outbox_len(), 1);

    fleet.head(&d.fleet_signer.head(0, 1)).await;
    assert!(
        fleet.pump_until(T, |f| f.uploads_of("bob") == 2).await,
        "{}",
        d.log()
    );
}
