//! Wall-clock jumps (ARCHITECTURE I15) against the real daemon, its wall
//! clock moved while it runs by libfaketime (`testkit::faketime`; the
//! boot-time and monotonic clocks stay real). A jump beyond
//! `[clock] jump_threshold` that nothing confirms holds every irreversible
//! time-based action: consents are not swept, queued captures not purged
//! for retention, command ids not forgotten, young spool files not removed.
//! `[clock] ntp = "ignore"` here: the host's NTP status must not confirm
//! the test's jumps.

use std::time::Duration;

use facegate::clock;
use facegate_testkit::broker::Broker;
use facegate_testkit::daemon::{Daemon, DaemonBuilder};
use facegate_testkit::faketime::FakeClock;
use facegate_testkit::mqtt::Session;
use facegate_testkit::spool::{sidecar, write_atomic};
use facegate_testkit::synth;
use facegate_testkit::util::wait_until;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);
const DAY: i64 = 86_400;
/// Two housekeeping passes (every 5 s) and a little.
const TWO_PASSES: Duration = Duration::from_secs(11);
const CMD: &str = "facegate/lobby/term-01/cmd";
const REPLY: &str = "facegate/lobby/term-01/reply";

/// A daemon whose wall clock the returned [`FakeClock`] moves.
fn faked(builder: DaemonBuilder) -> (Daemon, FakeClock) {
    let mut d = builder.configure(|c| c.clock_ntp("ignore")).build();
    let clock = FakeClock::new(d.dir.path());
    d.run_env = clock.env();
    d.spawn();
    (d, clock)
}

fn clock_status(d: &Daemon) -> Value {
    d.ctl_json(&["status", "--json"])["clock"].clone()
}

/// Waits until the status `clock.state` is `state`; returns the object.
fn wait_clock(d: &Daemon, state: &str) -> Value {
    wait_until(
        T,
        || clock_status(d)["state"] == state,
        || format!("clock {} not {state}\n{}", clock_status(d), d.log()),
    );
    clock_status(d)
}

fn consents(d: &Daemon) -> usize {
    d.ctl_json(&["consent", "list", "--json"])
        .as_array()
        .map_or(0, Vec::len)
}

/// +31 days for a while: no consent is deleted while the clock is suspect,
/// and a capture whose consent looks expired waits in the spool; the
/// status, the log and the audit log say so; once the clock is back,
/// everything works and nothing was lost. (Before: every consent deleted,
/// the capture dropped.)
#[test]
fn a_month_ahead_deletes_no_consent_and_nothing_is_lost_when_the_clock_returns() {
    let (d, clock) = faked(Daemon::builder());
    d.grant("S-1");
    assert_eq!(consents(&d), 1);
    assert_eq!(wait_clock(&d, "ok")["held"], json!([]));

    clock.set_offset(31 * DAY);
    let c = wait_clock(&d, "jumped");
    let jump = c["jump_s"].as_i64().unwrap();
    assert!((31 * DAY - 60..=31 * DAY + 60).contains(&jump), "{c}");
    assert!(
        clock::parse_rfc3339(c["since"].as_str().unwrap()).is_some(),
        "{c}"
    );
    for held in [
        "consent_sweep",
        "outbox_retention",
        "replay_forget",
        "audit_retention",
    ] {
        assert!(c["held"].as_array().unwrap().contains(&json!(held)), "{c}");
    }
    // A capture of the consenting subject: its consent looks expired by the
    // jumped clock; it waits in the spool, neither taken nor dropped.
    d.drop_pair("c0", "jpg", &synth::face_jpeg(320, 240, 0, 85), Some("S-1"));
    std::thread::sleep(TWO_PASSES);
    assert_eq!(consents(&d), 1, "a consent was deleted\n{}", d.log());
    assert_eq!(d.spool_len(), 2, "{}", d.log());
    assert_eq!(d.counters().dropped_no_consent, 0);
    let text = d.ctl(&["status"]);
    assert!(text.contains("JUMPED"), "{text}");
    assert!(d.log().contains("the wall clock jumped"), "{}", d.log());
    let jumped = d.audited("clock.jumped");
    assert_eq!(jumped.len(), 1, "said once: {jumped:?}");

    clock.set_offset(0);
    assert_eq!(wait_clock(&d, "ok")["held"], json!([]));
    std::thread::sleep(TWO_PASSES);
    assert_eq!(consents(&d), 1, "{}", d.log());
    assert_eq!(d.active_consents(), 1);
    d.drop_pair("c1", "jpg", &synth::face_jpeg(320, 240, 1, 85), Some("S-1"));
    d.wait_spool_empty(T);
    assert_eq!(d.counters().accepted, 2, "{}", d.log());
    assert_eq!(d.counters().dropped_no_consent, 0);
    let trusted = d.audited("clock.trusted");
    assert_eq!(trusted.len(), 1, "{trusted:?}");
    assert_eq!(trusted[0]["detail"]["by"], "returned");
    d.assert_audit_verifies();
}

/// +8 days with captures queued and no broker: retention purges nothing
/// while the clock is suspect, nor after it came back. (Before: purged
/// unsent.)
#[test]
fn eight_days_ahead_purges_no_queued_capture() {
    let (d, clock) = faked(Daemon::builder());
    d.grant("S-1");
    for i in 0..3 {
        d.drop_pair(
            &format!("c{i}"),
            "jpg",
            &synth::face_jpeg(320, 240, i, 85),
            Some("S-1"),
        );
    }
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 3, "{}", d.log());

    clock.set_offset(8 * DAY);
    wait_clock(&d, "jumped");
    std::thread::sleep(TWO_PASSES);
    assert_eq!(d.outbox_len(), 3, "captures purged\n{}", d.log());
    assert_eq!(d.counters().purged, 0);

    clock.set_offset(0);
    wait_clock(&d, "ok");
    std::thread::sleep(TWO_PASSES);
    assert_eq!(d.outbox_len(), 3, "{}", d.log());
    assert_eq!(d.counters().purged, 0);
}

/// A lone image whose sidecar is still to come is not removed when the
/// wall clock steps past its grace period: not by a step below the jump
/// threshold (+2 min: it has not been seen for the grace period), not by a
/// jump (+1 day: held). Its sidecar arrives and the pair is taken. (Before:
/// removed as a stray file.)
#[test]
fn a_young_spool_image_survives_a_clock_step() {
    let (d, clock) = faked(Daemon::builder());
    d.grant("S-1");
    let image = d.spool.dir().join("c1.jpg");
    write_atomic(&image, &synth::face_jpeg(320, 240, 1, 85)).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    clock.set_offset(120);
    std::thread::sleep(Duration::from_secs(3));
    assert!(image.exists(), "removed after a 2 min step\n{}", d.log());

    clock.set_offset(DAY);
    wait_clock(&d, "jumped");
    std::thread::sleep(Duration::from_secs(3));
    assert!(image.exists(), "removed after a jump\n{}", d.log());

    clock.set_offset(0);
    wait_clock(&d, "ok");
    write_atomic(&d.spool.dir().join("c1.json"), &sidecar(Some("S-1"))).unwrap();
    d.wait_spool_empty(T);
    assert_eq!(d.counters().accepted, 1, "{}", d.log());
    assert_eq!(d.counters().rejected_bad_input, 0);
}

async fn fleet(broker: &Broker) -> Session {
    let mut s = Session::spawn(broker.options("fleet"));
    s.wait_connected(T).await.expect("fleet connects");
    s.subscribe("facegate/#", T).await;
    s
}

async fn send_cmd(fleet: &mut Session, jws: &str) -> Value {
    fleet.publish(CMD, jws).await;
    let p = fleet.recv_on(REPLY, T).await.expect("a reply");
    serde_json::from_slice(&p.payload).expect("reply is JSON")
}

/// +2 days, then back: the command id applied before the jump is not
/// forgotten, so the same signed command (same `jti`) is refused
/// `replayed` after the clock returned. (Before: applied twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_days_ahead_and_back_does_not_apply_a_command_twice() {
    let broker = Broker::start();
    let mut fleet = fleet(&broker).await;
    let (d, clock) = faked(Daemon::builder().broker(&broker));
    d.wait_uplink_connected(T);
    let (_, jws) = d
        .fleet_signer
        .command("status", json!({}), "lobby/term-01", 600, clock::now());
    let first = send_cmd(&mut fleet, &jws).await;
    assert!(first["error"].is_null(), "{first}");

    clock.set_offset(2 * DAY);
    wait_clock(&d, "jumped");
    tokio::time::sleep(TWO_PASSES).await;
    clock.set_offset(0);
    wait_clock(&d, "ok");
    tokio::time::sleep(TWO_PASSES).await;

    let again = send_cmd(&mut fleet, &jws).await;
    assert_eq!(again["error"]["code"], "replayed", "{again}\n{}", d.log());
}

/// A jump confirmed by a signed command whose `iat` agrees with the new
/// time: the clock is trusted again and the held actions run (the consent
/// that expired under the new time is swept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_command_at_the_new_time_confirms_a_jump() {
    let broker = Broker::start();
    let mut fleet = fleet(&broker).await;
    let (d, clock) = faked(Daemon::builder().broker(&broker));
    d.wait_uplink_connected(T);
    d.grant("S-1");

    clock.set_offset(31 * DAY);
    wait_clock(&d, "jumped");
    tokio::time::sleep(TWO_PASSES).await;
    assert_eq!(consents(&d), 1, "{}", d.log());

    let (_, jws) = d.fleet_signer.command(
        "status",
        json!({}),
        "lobby/term-01",
        600,
        clock::now() + 31 * DAY,
    );
    let reply = send_cmd(&mut fleet, &jws).await;
    assert!(reply["error"].is_null(), "{reply}");
    wait_clock(&d, "ok");
    wait_until(
        T,
        || consents(&d) == 0,
        || format!("the expired consent was not swept\n{}", d.log()),
    );
    let trusted = d.audited("clock.trusted");
    assert_eq!(trusted.len(), 1, "{trusted:?}");
    assert_eq!(trusted[0]["detail"]["by"], "signed_iat");
    clock.set_offset(0);
}

/// `[clock] jump_threshold` applies on SIGHUP: a 20 min step is a jump
/// under the default 10 min and not one under 1 h.
#[test]
fn the_jump_threshold_applies_on_reload() {
    let (d, clock) = faked(Daemon::builder());
    clock.set_offset(20 * 60);
    let c = wait_clock(&d, "jumped");
    assert!(
        (20 * 60 - 30..=20 * 60 + 30).contains(&c["jump_s"].as_i64().unwrap()),
        "{c}"
    );
    let text = std::fs::read_to_string(&d.config).unwrap();
    let text = text.replace(
        "ntp = \"ignore\"",
        "ntp = \"ignore\"\njump_threshold = \"1h\"",
    );
    std::fs::write(&d.config, text).unwrap();
    d.signal("HUP");
    wait_clock(&d, "ok");
    let trusted = d.audited("clock.trusted");
    assert_eq!(trusted.len(), 1, "{trusted:?}");
    assert_eq!(trusted[0]["detail"]["by"], "returned");
}

/// +3 hours with captures queued and the broker back (its certificate,
/// valid for a day, still valid then): the hand-over finds their one-hour consent expired by the
/// jumped clock and neither sends nor purges them; once the clock is back
/// they are uploaded. (Before: purged.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hours_ahead_the_hand_over_purges_nothing() {
    let mut broker = Broker::start();
    let (d, clock) = faked(Daemon::builder().broker(&broker));
    d.wait_uplink_connected(T);
    d.grant("S-1");
    broker.stop();
    wait_until(T, || !d.uplink_connected(), || d.log());
    for i in 0..2 {
        d.drop_pair(
            &format!("c{i}"),
            "jpg",
            &synth::face_jpeg(320, 240, i, 85),
            Some("S-1"),
        );
    }
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 2, "{}", d.log());

    clock.set_offset(3 * 3600);
    wait_clock(&d, "jumped");
    broker.restart();
    d.wait_uplink_connected(T);
    tokio::time::sleep(TWO_PASSES).await;
    assert_eq!(d.outbox_len(), 2, "purged at hand-over\n{}", d.log());
    assert_eq!(d.counters().purged, 0);
    assert_eq!(d.counters().uploaded, 0);

    clock.set_offset(0);
    wait_clock(&d, "ok");
    wait_until(T, || d.outbox_len() == 0, || d.log());
    assert_eq!(d.counters().uploaded, 2, "{}", d.log());
    assert_eq!(d.counters().purged, 0);
}
