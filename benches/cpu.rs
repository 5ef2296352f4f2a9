//! CPU per uploaded capture under MQTT 3.1.1 and MQTT 5, in the same run
//! (`cargo bench --bench cpu`; needs `mosquitto`, see scripts/ensure-mosquitto).
//!
//! One private Mosquitto with mutual TLS (the testkit's dev broker) serves
//! every run. Each run is a fresh terminal whose encrypted outbox is filled
//! through the library with N captures (640×480 synthetic JPEGs, ~48 KB, the
//! same as D1), then the benchmark build of `facegate run` drains it with
//! window 16. The daemon's CPU time (user + system, `/proc/PID/stat`) is read
//! when the first status says the uplink is connected and when the outbox is
//! empty; the difference divided by N is the CPU per uploaded capture: the
//! read, decryption, consent re-check and envelope of each capture, TLS, MQTT,
//! and the delete after its PUBACK.
//!
//! The two protocols alternate (3.1.1, 5, 3.1.1, …) for `FACEGATE_BENCH_ROUNDS`
//! rounds (default 3), so background load on a shared machine hits both alike.
//! `FACEGATE_BENCH_CAPTURES` (default 6000) sets N.

use std::time::Duration;

use facegate_testkit::bench;
use facegate_testkit::broker::Broker;

const WINDOW: u16 = 16;

fn main() {
    let n = bench::captures(6000);
    let rounds = bench::rounds(3);
    bench::runtime().block_on(run(n, rounds));
}

async fn run(n: usize, rounds: usize) {
    let broker = bench::start_broker();
    let images = bench::camera_jpegs();
    let mean_len = images.iter().map(Vec::len).sum::<usize>() / images.len();
    println!("cpu: {n} captures per run, images ~{mean_len} B, window {WINDOW}, {rounds} rounds");
    let (mut v311, mut v5) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (name, results) in [("3.1.1", &mut v311), ("5", &mut v5)] {
            let load = bench::loadavg();
            let d = one_run(&broker, n, &images, name).await;
            let per = d.cpu_s / n as f64 * 1e6;
            println!(
                "RESULT CPU round {round} MQTT {name:5}: {per:.0} µs CPU per capture ({:.2} s CPU, {:.0} captures/s); load {load}",
                d.cpu_s, d.rate
            );
            results.push(per);
        }
    }
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        (lo, hi, v.iter().sum::<f64>() / v.len() as f64)
    };
    let (alo, ahi, amean) = range(&v311);
    let (blo, bhi, bmean) = range(&v5);
    println!("RESULT CPU MQTT 3.1.1: {alo:.0}..{ahi:.0} µs per capture (mean {amean:.0})");
    println!("RESULT CPU MQTT 5:     {blo:.0}..{bhi:.0} µs per capture (mean {bmean:.0})");
    println!(
        "RESULT CPU ratio 5 / 3.1.1 = {:.2}; load now {}",
        bmean / amean,
        bench::loadavg()
    );
}

async fn one_run(broker: &Broker, n: usize, images: &[Vec<u8>], protocol: &str) -> bench::Drained {
    let mut d = bench::daemon()
        .broker(broker)
        .configure(|c| {
            c.inflight(WINDOW)
                .fast_reconnect()
                .quota_bytes(4 * 1024 * 1024 * 1024)
                .protocol(protocol)
        })
        .build();
    bench::forget_session(broker, facegate_testkit::DEVICE).await;
    let cfg = d.load_config();
    bench::fill_outbox(&cfg, &d.consent_signer, 20, n, images, 500);
    bench::drain_measured(&mut d, n, Duration::from_secs(300)).await
}
