//! Target M: the daemon's memory under a burst of large or hostile captures
//! (`cargo bench --bench memory`; needs `mosquitto`).
//!
//! Two cases, each on a fresh terminal connected to a private Mosquitto with
//! mutual TLS (captures go up in parts of 128 KiB, the default), each repeated
//! `FACEGATE_BENCH_ROUNDS` times (default 3), alternating:
//!
//! * **large**: 64 valid consented JPEGs of about 6.8 MB each (4096x4096,
//!   the largest the default limits take) written into the spool at once;
//!   the case ends when the spool is empty and the outbox drained.
//! * **bombs**: 64 progressive 4096x4096 JPEGs of about 1.5 MB each (a
//!   decoder keeps every coefficient of a progressive file: about 144 MiB for
//!   one of these) written at once; the case ends when all 64 are rejected.
//!
//! The baseline is the same process before the burst: its VmRSS once the
//! uplink is connected. During the burst `/proc/PID/status` is read every
//! 10 ms (largest VmRSS) and VmHWM is read at the end (the true peak); a
//! minute after the end VmRSS is read again (memory given back).
//! Goals: peak ≤ 128 MB, RSS a minute after ≤ 32 MB.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use facegate_testkit::bench;
use facegate_testkit::daemon::Daemon;
use facegate_testkit::synth;

const BURST: usize = 64;
const SUBJECT: &str = "S-mem";
const LIMIT: Duration = Duration::from_secs(600);
const AFTER: Duration = Duration::from_secs(60);
const MB: f64 = 1_000_000.0;

#[derive(Clone, Copy, Debug)]
enum Case {
    Large,
    Bombs,
}

struct Figures {
    idle_kib: u64,
    max_rss_kib: u64,
    hwm_kib: u64,
    after_kib: u64,
    seconds: f64,
}

fn main() {
    let rounds = bench::rounds(3);
    let large: Vec<Vec<u8>> = (0..4).map(large_jpeg).collect();
    let bomb = synth::progressive_jpeg(4096, 4096, 11, 75);
    println!(
        "inputs: large JPEG {} .. {} B (4096x4096), progressive bomb {} B (4096x4096); load {}",
        large.iter().map(Vec::len).min().unwrap_or(0),
        large.iter().map(Vec::len).max().unwrap_or(0),
        bomb.len(),
        bench::loadavg()
    );
    let rt = bench::runtime();
    let broker = bench::start_broker();
    let mut results: Vec<(Case, Figures)> = Vec::new();
    for round in 1..=rounds {
        for case in [Case::Large, Case::Bombs] {
            let inputs: Vec<&[u8]> = match case {
                Case::Large => large.iter().map(Vec::as_slice).collect(),
                Case::Bombs => vec![bomb.as_slice()],
            };
            let f = rt.block_on(measure(&broker, case, &inputs));
            println!(
                "round {round} {case:?}: idle {:.1} MB, burst max VmRSS {:.1} MB, VmHWM {:.1} MB, \
                 {:.1} s, VmRSS {} s after {:.1} MB; load {}",
                mb(f.idle_kib),
                mb(f.max_rss_kib),
                mb(f.hwm_kib),
                f.seconds,
                AFTER.as_secs(),
                mb(f.after_kib),
                bench::loadavg()
            );
            results.push((case, f));
        }
    }
    for case in [Case::Large, Case::Bombs] {
        let of = |get: fn(&Figures) -> u64| -> (f64, f64) {
            let v: Vec<f64> = results
                .iter()
                .filter(|(c, _)| std::mem::discriminant(c) == std::mem::discriminant(&case))
                .map(|(_, f)| mb(get(f)))
                .collect();
            (
                v.iter().copied().fold(f64::INFINITY, f64::min),
                v.iter().copied().fold(0.0, f64::max),
            )
        };
        let idle = of(|f| f.idle_kib);
        let peak = of(|f| f.hwm_kib);
        let after = of(|f| f.after_kib);
        println!(
            "RESULT M {case:?}: idle {:.1}-{:.1} MB; peak (VmHWM) {:.1}-{:.1} MB (goal <= 128 MB: {}); \
             {}s after {:.1}-{:.1} MB (goal <= 32 MB: {})",
            idle.0,
            idle.1,
            peak.0,
            peak.1,
            pass(peak.1 <= 128.0),
            AFTER.as_secs(),
            after.0,
            after.1,
            pass(after.1 <= 32.0)
        );
    }
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / MB
}

/// A valid 4096x4096 synthetic face at the highest quality (97 down) whose file
/// stays under the 8 MiB limit (6.8 MB at 97 for these faces).
fn large_jpeg(seed: u64) -> Vec<u8> {
    let mut quality = 97;
    loop {
        let jpeg = synth::face_jpeg(4096, 4096, seed, quality);
        if jpeg.len() <= 8 * 1024 * 1024 || quality <= 50 {
            return jpeg;
        }
        quality -= 1;
    }
}

async fn measure(
    broker: &facegate_testkit::broker::Broker,
    case: Case,
    inputs: &[&[u8]],
) -> Figures {
    let mut d = bench::daemon()
        .broker(broker)
        .configure(|c| c.fast_reconnect())
        .build();
    d.spawn();
    d.grant(SUBJECT);
    wait_connected(&d).await;
    let pid = d.pid().expect("daemon running");
    let idle_kib = bench::rss_kib(pid).0;

    let stop = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, max_rss) = (stop.clone(), max_rss.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(kib) = text
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        max_rss.fetch_max(kib, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let start = Instant::now();
    for n in 0..BURST {
        d.drop_pair(
            &format!("burst-{n:03}"),
            "jpg",
            inputs[n % inputs.len()],
            Some(SUBJECT),
        );
    }
    loop {
        let st = d.status_async().await;
        let outbox = st.outbox.map_or(u64::MAX, |o| o.captures);
        let counters = st.counters.expect("counters");
        let done = d.spool_len() == 0
            && match case {
                Case::Large => counters.accepted >= BURST as u64 && outbox == 0,
                Case::Bombs => counters.rejected_bad_input >= BURST as u64,
            };
        if done {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "{case:?}: not done after {LIMIT:?}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let hwm_kib = bench::rss_kib(pid).1;
    tokio::time::sleep(AFTER).await;
    let after_kib = bench::rss_kib(pid).0;
    d.stop();
    Figures {
        idle_kib,
        max_rss_kib: max_rss.load(Ordering::Relaxed),
        hwm_kib,
        after_kib,
        seconds,
    }
}

async fn wait_connected(d: &Daemon) {
    let start = Instant::now();
    loop {
        let st = d.status_async().await;
        if st.uplink.is_some_and(|u| u.connected) {
            return;
        }
        assert!(start.elapsed() < LIMIT, "never online\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
