//! Target D3: stop-and-wait latency with an in-flight window of 1, measured from
//! the outside: a capture completed in the spool → its envelope at a subscriber,
//! against a bare rumqttc publisher → the same subscriber, interleaved in the
//! same run (`cargo bench --bench uplink_latency`; needs `mosquitto`).
//!
//! One private Mosquitto with mutual TLS serves both sides; one subscriber (the
//! `fleet` certificate) reads `facegate/lobby/+/captures` and stamps each
//! PUBLISH with the instant its event loop returned it.
//!
//! * Agent: the benchmark build of `facegate run` with `mqtt.inflight = 1`,
//!   `mqtt.keep_alive = "5s"` and the default `capture.poll_interval` (2 s:
//!   intake wakes on the sidecar's rename, inotify). A 640×480 synthetic JPEG
//!   pair is written into the spool (tmpfs) with consent granted first; a sample
//!   runs from the rename of its sidecar (the marker that completes the pair) to
//!   the arrival of its envelope, told apart by the sidecar's `camera`. That
//!   covers intake (scan, sanitize, gate, encrypt, commit), hand-over and the
//!   broker.
//! * Baseline: a bare rumqttc client (`term-02`, window 1) publishes an envelope
//!   of the same size (built by the agent's own `envelope()`); a sample runs
//!   from the `publish` call to the arrival, told apart by `capture_id`.
//!
//! The two alternate every 50 ms (each side 10 captures/s) for
//! `FACEGATE_BENCH_CAPTURES` samples per side (default 300) in
//! `FACEGATE_BENCH_ROUNDS` rounds (default 3), so keep-alive pings fall
//! between and during uploads and both sides see the same machine load.
//! Prints p50/p99 per round, their ranges, and the whole run.
//!
//! Disk stalls: a probe thread writes 4 KiB into a file beside the daemon's
//! database and `fdatasync`s it every 100 ms for the whole run, on the same
//! file system. Each round prints the probe's fsync p50/p99/max; a round in
//! which one probe fsync took `STALL` or more is a disk-stall round, and the
//! agent's p99 is printed over the other rounds and over those apart.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use facegate_testkit::bench;
use facegate_testkit::mqtt::{Session, SessionOptions};
use facegate_testkit::spool::sidecar_from;
use serde_json::Value;

const EVERY: Duration = Duration::from_millis(50);
const SUBJECT: &str = "S-lat";
const WAIT: Duration = Duration::from_secs(30);
/// How often the probe fsyncs, and from which fsync time a round counts as
/// one with a disk stall.
const PROBE_EVERY: Duration = Duration::from_millis(100);
const STALL: Duration = Duration::from_millis(20);

fn main() {
    let rounds = bench::rounds(3);
    let per_side = bench::captures(300).div_ceil(rounds) * rounds;
    bench::runtime().block_on(run(per_side, rounds));
}

/// Which side a sample belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Baseline,
    Agent,
}

async fn run(per_side: usize, rounds: usize) {
    let broker = bench::start_broker();
    let images = bench::camera_jpegs();
    let mut d = bench::daemon()
        .broker(&broker)
        .configure(|c| {
            c.inflight(1)
                .keep_alive(Duration::from_secs(5))
                .fast_reconnect()
        })
        .build();
    let cfg = d.load_config();
    let payloads: Vec<Vec<u8>> = (0..per_side)
        .map(|n| bench::envelope_for(&cfg, &images[n % images.len()]))
        .collect();
    let ids: Vec<String> = payloads
        .iter()
        .map(|p| envelope_field(p, "capture_id"))
        .collect();

    let mut subscriber = Session::spawn_with(
        broker.options("fleet"),
        SessionOptions {
            reconnect: false,
            tcp_nodelay: bench::nodelay(),
        },
    );
    subscriber
        .wait_connected(WAIT)
        .await
        .expect("subscriber connects");
    subscriber
        .subscribe(&bench::site_topics().captures, WAIT)
        .await;
    let publisher = bench::bare_client(&broker, "term-02", 1).await;
    let baseline_topic = bench::site_topics().device("term-02").captures;

    d.spawn();
    d.grant(SUBJECT);
    d.wait_uplink_connected(WAIT);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probe = FsyncProbe::start(d.state.join("fsync-probe"));

    // Sent: (side, key) -> (round, start). Arrived: (side, key) -> first arrival.
    let mut sent: HashMap<(Side, String), (usize, Instant)> = HashMap::new();
    let mut arrived: HashMap<(Side, String), Instant> = HashMap::new();
    let start = tokio::time::Instant::now();
    // When each round began (the probe's samples are assigned by time).
    let mut round_starts: Vec<Instant> = Vec::new();
    for n in 0..per_side {
        let round = n * rounds / per_side;
        if round_starts.len() == round {
            round_starts.push(Instant::now());
        }
        let camera = format!("lat-{n:05}");
        let image = &images[n % images.len()];
        let sidecar = sidecar_from(Some(SUBJECT), &camera);
        let t0 = d
            .spool
            .pair_with_sidecar(&camera, "jpg", image, &sidecar)
            .expect("spool pair");
        sent.insert((Side::Agent, camera), (round, t0));
        tokio::time::sleep_until(start + EVERY * (2 * n + 1) as u32).await;

        let t0 = Instant::now();
        publisher
            .publish(&baseline_topic, payloads[n].clone())
            .await;
        sent.insert((Side::Baseline, ids[n].clone()), (round, t0));
        drain(&mut subscriber, &mut arrived, Duration::ZERO).await;
        tokio::time::sleep_until(start + EVERY * (2 * n + 2) as u32).await;
    }
    let all_arrived = |arrived: &HashMap<_, _>| sent.keys().all(|k| arrived.contains_key(k));
    let deadline = Instant::now() + WAIT;
    while !all_arrived(&arrived) && Instant::now() < deadline {
        drain(&mut subscriber, &mut arrived, Duration::from_millis(100)).await;
    }
    let fsyncs = probe.stop();
    let st = d.status();
    d.stop();
    let lost = d.log().matches("broker connection lost").count();
    assert!(all_arrived(&arrived), "not every capture arrived ({st:?})");

    // Per side and round: the samples.
    let mut samples: HashMap<(Side, usize), Vec<Duration>> = HashMap::new();
    for (key, (round, t0)) in &sent {
        let latency = arrived[key].saturating_duration_since(*t0);
        samples.entry((key.0, *round)).or_default().push(latency);
    }
    println!(
        "latency: {per_side} captures each side in {rounds} interleaved rounds, one every {} ms per side, \
         envelope {} B, keep-alive 5 s, window 1; agent disconnects: {lost}; load {}",
        (EVERY * 2).as_millis(),
        payloads[0].len(),
        bench::loadavg()
    );
    let mut p99s = Vec::new();
    for (side, label) in [
        (
            Side::Baseline,
            "baseline bare rumqttc publish -> subscriber",
        ),
        (Side::Agent, "agent spool pair complete -> subscriber"),
    ] {
        let (mut p50, mut p99, mut all) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let s = samples.get_mut(&(side, round)).expect("samples of a round");
            s.sort();
            p50.push(ms(bench::percentile(s, 0.50)));
            p99.push(ms(bench::percentile(s, 0.99)));
            all.extend_from_slice(s);
        }
        let (text, whole_p99) = bench::summary(&mut all);
        println!(
            "RESULT D3 {label}: p50 {} ms, p99 {} ms over {rounds} rounds; all: {text}",
            range(&p50),
            range(&p99)
        );
        p99s.push(whole_p99);
    }
    println!(
        "RESULT D3 agent p99 / baseline p99 = {:.2} (whole run)",
        p99s[1].as_secs_f64() / p99s[0].as_secs_f64()
    );

    // The probe's fsync times per round, and the agent apart in stall rounds.
    let round_of = |at: Instant| round_starts.iter().rposition(|s| *s <= at);
    let (mut calm, mut stalled) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut times: Vec<Duration> = fsyncs
            .iter()
            .filter(|(at, _)| round_of(*at) == Some(round))
            .map(|(_, took)| *took)
            .collect();
        times.sort();
        let max = times.last().copied().unwrap_or_default();
        let agent = samples
            .get(&(Side::Agent, round))
            .cloned()
            .unwrap_or_default();
        let stall = max >= STALL;
        println!(
            "RESULT D3 round {} fsync probe: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} fsyncs; agent p99 {:.2} ms{}",
            round + 1,
            ms(pct(&times, 0.50)),
            ms(pct(&times, 0.99)),
            ms(max),
            times.len(),
            ms(pct(&agent, 0.99)),
            if stall { " (disk-stall round)" } else { "" }
        );
        if stall {
            stalled.extend(agent);
        } else {
            calm.extend(agent);
        }
    }
    for (label, mut v) in [
        ("rounds without a disk stall", calm),
        ("disk-stall rounds", stalled),
    ] {
        if v.is_empty() {
            println!("RESULT D3 agent over {label}: none");
            continue;
        }
        v.sort();
        println!(
            "RESULT D3 agent over {label}: p50 {:.2} ms, p99 {:.2} ms over {} captures",
            ms(pct(&v, 0.50)),
            ms(pct(&v, 0.99)),
            v.len()
        );
    }
}

/// [`bench::percentile`] of sorted samples, zero when there are none.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        Duration::ZERO
    } else {
        bench::percentile(sorted, p)
    }
}

/// A thread that writes 4 KiB and `fdatasync`s every [`PROBE_EVERY`] beside
/// the database, recording when each fsync started and how long it took.
struct FsyncProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, Duration)>>,
}

impl FsyncProbe {
    fn start(path: PathBuf) -> FsyncProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut file = std::fs::File::create(&path).expect("fsync probe file");
            let block = [0x5au8; 4096];
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let at = Instant::now();
                file.write_all(&block).expect("fsync probe write");
                file.sync_data().expect("fsync probe fdatasync");
                seen.push((at, at.elapsed()));
                std::thread::sleep(PROBE_EVERY);
            }
            let _ = std::fs::remove_file(&path);
            seen
        });
        FsyncProbe { stop, thread }
    }

    fn stop(self) -> Vec<(Instant, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("fsync probe thread")
    }
}

/// Records the PUBLISHes that arrive within `wait` (at least those already there).
async fn drain(
    subscriber: &mut Session,
    arrived: &mut HashMap<(Side, String), Instant>,
    wait: Duration,
) {
    while let Some((at, p)) = subscriber.recv_publish_stamped(wait).await {
        let (side, field) = if p.topic == bench::topics().captures {
            (Side::Agent, "camera")
        } else {
            (Side::Baseline, "capture_id")
        };
        arrived
            .entry((side, envelope_field(&p.payload, field)))
            .or_insert(at);
    }
}

/// A text field of an upload envelope.
fn envelope_field(envelope: &[u8], field: &str) -> String {
    let env: Value = serde_json::from_slice(envelope).expect("envelope is JSON");
    env[field]
        .as_str()
        .unwrap_or_else(|| panic!("envelope without {field}"))
        .to_string()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `a–b` with two decimals: the smallest and largest of `values`.
fn range(values: &[f64]) -> String {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.2}–{hi:.2}")
}
