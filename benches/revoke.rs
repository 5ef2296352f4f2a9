//! Target D2: signed `consent.revoke` command → purge receipt latency with
//! 10,000 captures queued (`cargo bench --bench revoke`; needs `mosquitto`).
//!
//! A state directory gets 32,000 captures (640×480 synthetic JPEGs, ~48 KB)
//! over 1600 consented subjects (20 each) through the library.
//!
//! * Store only: 60 subjects are revoked directly through `Store::revoke`
//!   (no daemon, no network), timing each: the cost of the purge itself
//!   (secure delete of the rows, key destruction, audit, WAL checkpoint).
//! * End to end: the benchmark build of `facegate run` starts on the state
//!   directory against a private Mosquitto with mutual TLS. As soon as it is
//!   connected, a fleet client sends 60 `consent.revoke` commands one after the
//!   other (each for another subject that has captures, signed with the trusted
//!   fleet key, 50 ms apart) and times each from its PUBLISH to the arrival of
//!   the reply with the same `jti`. The agent keeps uploading meanwhile (window
//!   16), so revocations compete with uploads for the store as they would in
//!   the field; the queue is large enough that more than 10,000 captures stay
//!   queued throughout (printed at the first and the last revocation).
//!
//! `FACEGATE_BENCH_TIMINGS=1` also prints the agent's own timing of each
//! command (debug log `command answered`: waiting in the uplink, applying).

use std::time::{Duration, Instant};

use facegate::clock;
use facegate::protocol::Reply;
use facegate_testkit::{bench, SITE};
use serde_json::json;

const QUEUED: usize = 32_000;
const SUBJECTS: usize = 1600;
const REVOCATIONS: usize = 60;
/// Longest wait for a connection, a reply or a status.
const WAIT: Duration = Duration::from_secs(30);

fn main() {
    bench::runtime().block_on(run());
}

async fn run() {
    let broker = bench::start_broker();
    let images = bench::camera_jpegs();
    // `FACEGATE_BENCH_TIMINGS=1`: the agent logs at debug, and its per-command
    // timings (`command answered`) are printed at the end.
    let timings = std::env::var_os("FACEGATE_BENCH_TIMINGS").is_some();
    let level = if timings { "debug" } else { "info" };
    let mut d = bench::daemon()
        .broker(&broker)
        .configure(|c| {
            c.fast_reconnect()
                .quota_bytes(4 * 1024 * 1024 * 1024)
                .log_level(level)
        })
        .build();
    let cfg = d.load_config();
    let t = Instant::now();
    let subjects = bench::fill_outbox(&cfg, &d.consent_signer, SUBJECTS, QUEUED, &images, 500);
    println!(
        "revoke: filled {QUEUED} captures over {SUBJECTS} subjects in {:.1} s (not timed)",
        t.elapsed().as_secs_f64()
    );

    // Store only, on subjects the MQTT phase does not touch.
    let store_samples = {
        let agent = facegate::daemon::open(cfg.clone()).expect("open agent");
        let mut store = agent.db().lock();
        let mut samples = Vec::new();
        for subject in subjects.iter().rev().take(REVOCATIONS) {
            let now = clock::now();
            let t = Instant::now();
            let r = store.revoke(subject, now, now, None).expect("revoke");
            samples.push(t.elapsed());
            assert_eq!(r.purged.len(), QUEUED / SUBJECTS);
        }
        samples
    };

    // The fleet back-end: a bare client with the `fleet` certificate.
    let mut fleet = bench::bare_client(&broker, "fleet", 16).await;
    let topics = bench::topics();
    let reply_topic = topics.reply.clone();
    fleet.subscribe(&reply_topic, WAIT).await;

    d.spawn();
    d.wait_uplink_connected(WAIT);
    let before = d.outbox_len();

    let cmd_topic = topics.device_cmd.clone();
    let mut samples = Vec::with_capacity(REVOCATIONS);
    let mut purged_total = 0;
    let mut in_flight_total = 0;
    for subject in subjects.iter().take(REVOCATIONS) {
        let (jti, jws) = d.fleet_signer.command(
            "consent.revoke",
            json!({ "subject": subject }),
            SITE,
            600,
            clock::now(),
        );
        let t0 = Instant::now();
        fleet.publish(&cmd_topic, jws).await;
        let reply = loop {
            let p = fleet.recv_on(&reply_topic, WAIT).await.expect("a reply");
            let r = Reply::from_bytes(&p.payload).expect("a reply");
            if r.jti.as_ref() == Some(&jti) {
                break r;
            }
        };
        samples.push(t0.elapsed());
        let receipt = reply.receipt().unwrap_or_else(|| panic!("{reply:?}"));
        purged_total += receipt.purged;
        in_flight_total += receipt.in_flight.len();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = d.outbox_len();
    let counters = d.counters();
    d.stop();
    println!(
        "revoke: outbox {before} at the first revocation, {after} after the last; \
         {purged_total} purged, {in_flight_total} listed in flight, {} uploaded meanwhile",
        counters.uploaded
    );
    if timings {
        for line in d.log().lines().filter(|l| l.contains("command answered")) {
            println!("revoke: agent {line}");
        }
    }
    let (text, _) = bench::summary(&mut store_samples.clone());
    println!("RESULT D2 Store::revoke alone (20 of {QUEUED} captures each): {text}");
    let (text, p99) = bench::summary(&mut samples);
    println!("RESULT D2 consent.revoke publish -> reply: {text}");
    println!(
        "RESULT D2 target p99 < 100 ms: {}",
        if p99 < Duration::from_millis(100) {
            "PASS"
        } else {
            "FAIL"
        }
    );
}
