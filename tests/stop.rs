//! A clean stop (SIGTERM) against a real Mosquitto behind a relay that holds
//! PUBACKs back: the uplink hands nothing more over, waits up to
//! `mqtt.stop_grace` for the uploads in flight to be acknowledged and their
//! deletes recorded, then says offline and disconnects. What the broker
//! acknowledged is not sent again after the restart; what it did not stays
//! queued. Status `uplink.in_flight` counts uploads awaiting a PUBACK only.

use std::collections::HashMap;
use std::time::Duration;

use facegate_testkit::broker::Broker;
use facegate_testkit::daemon::Daemon;
use facegate_testkit::mqtt::Session;
use facegate_testkit::relay::Relay;
use facegate_testkit::synth;
use facegate_testkit::util::wait_until;
use facegate_testkit::DEVICE;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const CAPTURES: &str = "facegate/lobby/term-01/captures";
const WINDOW: u16 = 4;

async fn fleet(broker: &Broker) -> Session {
    let mut s = Session::spawn(broker.options("fleet"));
    s.wait_connected(T).await.expect("fleet connects");
    s.subscribe("facegate/#", T).await;
    s
}

/// Receives upload envelopes into `seen` (capture id → copies) until
/// `done(seen)` or `wait` passed.
async fn receive(
    fleet: &mut Session,
    seen: &mut HashMap<String, usize>,
    wait: Duration,
    done: impl Fn(&HashMap<String, usize>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + wait;
    while !done(seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(p) = fleet.recv_on(CAPTURES, left).await else {
            break;
        };
        let env: Value = serde_json::from_slice(&p.payload).expect("envelope is JSON");
        let id = env["capture_id"].as_str().expect("capture_id").to_string();
        *seen.entry(id).or_default() += 1;
    }
}

/// A daemon behind `relay` with a window of [`WINDOW`] and `grace`.
fn daemon(broker: &Broker, relay: &Relay, grace: Duration) -> Daemon {
    Daemon::builder()
        .mqtt("localhost", relay.port, &broker.issue_client(DEVICE))
        .configure(|c| c.fast_reconnect().inflight(WINDOW).stop_grace(grace))
        .start()
}

/// The uploads status `uplink.in_flight` reports.
fn in_flight(d: &Daemon) -> u64 {
    d.status().uplink.expect("uplink status").in_flight
}

/// Queues `n` captures of `subject` while the broker's PUBACKs are held:
/// the window fills and stays full.
async fn fill_the_window(
    d: &Daemon,
    fleet: &mut Session,
    subject: &str,
    n: usize,
) -> HashMap<String, usize> {
    for i in 0..n {
        let image = synth::face_jpeg(96, 72, i as u64, 70);
        d.drop_pair(&format!("{subject}-{i:02}"), "jpg", &image, Some(subject));
    }
    let mut seen = HashMap::new();
    let window = usize::from(WINDOW);
    receive(fleet, &mut seen, T, |s| s.len() >= window).await;
    assert_eq!(seen.len(), window, "the window's uploads reach the broker");
    wait_until(T, || d.outbox_len() == n as u64, || d.log());
    wait_until(T, || in_flight(d) == u64::from(WINDOW), || d.log());
    seen
}

/// SIGTERM while PUBACKs are held back: the daemon waits; released within
/// `mqtt.stop_grace`, they are recorded and the captures deleted before it
/// exits, so the restarted daemon sends only what was never handed over and
/// the back-end gets every capture exactly once. (Before, the stop
/// disconnected at once: the PUBACKs were lost and the restart sent the
/// window's captures a second time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_the_pubacks_in_flight_so_nothing_is_sent_twice() {
    let broker = Broker::start();
    let relay = Relay::start(broker.port).await;
    let mut fleet = fleet(&broker).await;
    let mut d = daemon(&broker, &relay, Duration::from_secs(20));
    d.grant("S-s");
    d.wait_uplink_connected(T);
    relay.hold_replies(true);
    let n = 10;
    let mut seen = fill_the_window(&d, &mut fleet, "S-s", n).await;

    d.signal("TERM");
    wait_until(
        T,
        || {
            d.log()
                .contains("stopping: waiting for the uploads in flight to be acknowledged")
        },
        || d.log(),
    );
    relay.hold_replies(false);
    assert!(d.stop().success(), "{}", d.log());
    let log = d.log();
    assert!(
        log.contains("stopping: every upload in flight was acknowledged"),
        "{log}"
    );
    assert!(!log.contains("stop_grace ended"), "{log}");

    // Restarted with the broker's replies held (no CONNACK: nothing is
    // sent yet): the acknowledged captures are gone from the outbox, only
    // the ones never handed over are left to send.
    relay.hold_replies(true);
    d.spawn();
    assert_eq!(d.counters().uploaded, u64::from(WINDOW), "{}", d.log());
    assert_eq!(d.outbox_len(), (n - usize::from(WINDOW)) as u64);
    relay.hold_replies(false);
    receive(&mut fleet, &mut seen, T, |s| s.len() >= n).await;
    wait_until(T, || d.outbox_len() == 0, || d.log());
    // A moment for any copy sent twice to arrive.
    receive(&mut fleet, &mut seen, Duration::from_secs(1), |_| false).await;
    assert_eq!(seen.len(), n, "{}", d.log());
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "sent again: {twice:?}\n{}", d.log());
    assert_eq!(d.counters().upload_retries, 0);
}

/// The wait is bounded: PUBACKs still held when `mqtt.stop_grace` ends
/// leave their captures queued (said in the log), and the restarted daemon
/// sends them again. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_no_longer_than_the_grace_and_keeps_what_was_not_acknowledged() {
    let broker = Broker::start();
    let relay = Relay::start(broker.port).await;
    let mut fleet = fleet(&broker).await;
    let mut d = daemon(&broker, &relay, Duration::from_secs(1));
    d.grant("S-g");
    d.wait_uplink_connected(T);
    relay.hold_replies(true);
    let n = usize::from(WINDOW);
    let mut seen = fill_the_window(&d, &mut fleet, "S-g", n).await;

    assert!(d.stop().success(), "{}", d.log());
    let log = d.log();
    assert!(
        log.contains(
            "stopping: mqtt.stop_grace ended before every upload in flight was acknowledged"
        ),
        "{log}"
    );
    // Restarted with the replies still held (no CONNACK yet).
    d.spawn();
    assert_eq!(d.outbox_len(), n as u64, "kept for the next start");
    relay.hold_replies(false);
    receive(&mut fleet, &mut seen, T, |s| s.values().all(|c| *c >= 2)).await;
    wait_until(T, || d.outbox_len() == 0, || d.log());
    assert_eq!(seen.len(), n);
    assert!(seen.values().all(|c| *c == 2), "{seen:?}");
}

/// Status `uplink.in_flight` never exceeds the window, also while deletes
/// of acknowledged captures are still being recorded: it counts uploads
/// awaiting their PUBACK, not acknowledged ones waiting for the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_in_the_status_is_bounded_by_the_window() {
    let broker = Broker::start();
    let relay = Relay::start(broker.port).await;
    let mut fleet = fleet(&broker).await;
    let d = daemon(&broker, &relay, Duration::from_secs(5));
    d.grant("S-w");
    d.wait_uplink_connected(T);
    relay.hold_replies(true);
    let n = 40;
    let mut seen = fill_the_window(&d, &mut fleet, "S-w", n).await;
    relay.hold_replies(false);
    let mut most = 0;
    wait_until(
        T,
        || {
            let st = d.status();
            most = most.max(st.uplink.map_or(0, |u| u.in_flight));
            st.outbox.is_some_and(|o| o.captures == 0)
        },
        || d.log(),
    );
    assert!(
        most <= u64::from(WINDOW),
        "in_flight {most} with a window of {WINDOW}"
    );
    assert_eq!(in_flight(&d), 0);
    receive(&mut fleet, &mut seen, T, |s| s.len() >= n).await;
    assert_eq!(seen.len(), n);
}

/// A connection that drops again and again for the same reason gives one
/// warning, not one per reconnect: the repeats are counted for the summary
/// line a minute later (`logging::repeat`). (Before, every reconnect logged
/// it again: 541 lines in 45 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_again_and_again_is_logged_once() {
    let broker = Broker::start();
    let relay = Relay::start(broker.port).await;
    let d = daemon(&broker, &relay, Duration::from_secs(5));
    d.wait_uplink_connected(T);
    let cuts = 6;
    for n in 1..=cuts {
        relay.cut();
        wait_until(
            T,
            || relay.accepted() > n && d.uplink_connected(),
            || d.log(),
        );
    }
    let log = d.log();
    let connects = log.matches("connected to broker").count();
    assert_eq!(connects, cuts + 1, "{log}");
    // One line per distinct reason (a cut may read as a reset or as the
    // end of the stream), not one per reconnect.
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("broker connection lost"))
        .filter_map(|l| l.split_once("reason=").map(|(_, reason)| reason))
        .collect();
    let reasons: std::collections::HashSet<&str> = lines.iter().copied().collect();
    assert_eq!(lines.len(), reasons.len(), "a reason logged twice\n{log}");
    assert!(
        !lines.is_empty() && lines.len() < cuts,
        "{} lines for {cuts} drops\n{log}",
        lines.len()
    );
}
