//! Target F: upload throughput of ~300 KB captures sent in parts against the
//! same captures sent whole, in the same run (`cargo bench --bench parts`;
//! needs `mosquitto`, see scripts/ensure-mosquitto).
//!
//! One private Mosquitto with mutual TLS (the testkit's dev broker, no packet
//! limit of its own, no subscriber on the capture topics) serves every run.
//! Each run is a fresh terminal whose encrypted outbox is filled through the
//! library with N captures (1440×1080 synthetic JPEGs, about 300 KB, four
//! distinct images), then the benchmark build of `facegate run` starts on it
//! with window `mqtt.inflight = 16`; timed from the first status saying the
//! uplink is connected to the first status with an empty outbox.
//!
//! * Parts: `mqtt.max_packet_size = 128 KiB` (the default, AWS IoT Core's
//!   limit): each capture goes out as 4 parts of about 100 KB.
//! * Whole: `mqtt.max_packet_size = 1 MiB`: each capture is one message.
//!
//! The two alternate (whole, parts, whole, parts, …) for `FACEGATE_BENCH_ROUNDS`
//! rounds (default 3), so background load on a shared machine hits both alike;
//! every run is printed with the load average, then the range of each and the
//! ratio of the means. Goal: parts ≥ 0.9 × whole. Each run also prints the
//! daemon's CPU time per capture (less sensitive to the machine's load).
//!
//! `FACEGATE_BENCH_CAPTURES` (default 6000) sets N; `FACEGATE_BENCH_DIR` puts
//! the state directories on a given disk.

use std::time::{Duration, Instant};

use facegate_testkit::bench;
use facegate_testkit::broker::Broker;
use facegate_testkit::synth;

const WINDOW: u16 = 16;
/// Room for every capture of a run in the outbox (N × ~300 KB, encrypted).
const QUOTA: u64 = 16 * 1024 * 1024 * 1024;
/// AWS IoT Core's limit and facegate's default: captures go out in parts.
const PARTS_LIMIT: u64 = 128 * 1024;
/// Large enough for a whole ~300 KB capture in one envelope (base64 + fields).
const WHOLE_LIMIT: u64 = 1024 * 1024;

fn main() {
    let n = bench::captures(6000);
    let rounds = bench::rounds(3);
    bench::runtime().block_on(run(n, rounds));
}

async fn run(n: usize, rounds: usize) {
    let broker = bench::start_broker();
    let images: Vec<Vec<u8>> = (0..4)
        .map(|seed| synth::face_jpeg(1440, 1080, seed, 90))
        .collect();
    let mean_len = images.iter().map(Vec::len).sum::<usize>() / images.len();
    println!("parts: {n} captures per run, images ~{mean_len} B, window {WINDOW}, {rounds} rounds");

    let (mut whole, mut parts) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (name, limit, results) in [
            ("whole", WHOLE_LIMIT, &mut whole),
            ("parts", PARTS_LIMIT, &mut parts),
        ] {
            let load = bench::loadavg();
            let drained = one_run(&broker, n, &images, limit).await;
            let rate = drained.rate;
            println!(
                "RESULT F round {round} {name:5}: {rate:.1} captures/s ({:.1} MB/s of images), {:.0} µs CPU per capture; load {load}",
                rate * mean_len as f64 / 1e6,
                drained.cpu_s / n as f64 * 1e6
            );
            results.push(rate);
        }
    }
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        (lo, hi, mean)
    };
    let (wlo, whi, wmean) = range(&whole);
    let (plo, phi, pmean) = range(&parts);
    println!("RESULT F whole: {wlo:.1}..{whi:.1} captures/s (mean {wmean:.1})");
    println!("RESULT F parts: {plo:.1}..{phi:.1} captures/s (mean {pmean:.1})");
    let ratio = pmean / wmean;
    println!(
        "RESULT F ratio parts/whole = {ratio:.2} (runs {:.2}..{:.2}); target >= 0.9: {}; load now {}",
        plo / whi,
        phi / wlo,
        if ratio >= 0.9 { "PASS" } else { "FAIL" },
        bench::loadavg()
    );
}

/// Captures/s of one fresh terminal draining `n` queued captures with
/// `mqtt.max_packet_size = limit`.
async fn one_run(broker: &Broker, n: usize, images: &[Vec<u8>], limit: u64) -> bench::Drained {
    let mut d = bench::daemon()
        .broker(broker)
        .configure(|c| {
            c.inflight(WINDOW)
                .fast_reconnect()
                .quota_bytes(QUOTA)
                .max_packet_size(limit)
        })
        .build();
    bench::forget_session(broker, facegate_testkit::DEVICE).await;
    let cfg = d.load_config();
    let t = Instant::now();
    bench::fill_outbox(&cfg, &d.consent_signer, 20, n, images, 100);
    println!(
        "filled the outbox in {:.1} s (not timed)",
        t.elapsed().as_secs_f64()
    );
    let limit_s = Duration::from_secs(120.max(n as u64 / 10));
    bench::drain_measured(&mut d, n, limit_s).await
}
