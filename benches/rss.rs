//! Target C: resident memory of the real daemon with 100,000 queued captures,
//! next to the same daemon with an empty outbox (`cargo bench --bench rss`).
//!
//! For each case a state directory is prepared through the library
//! (`daemon::open`, then the `Store` in 1000-capture transactions; 1000 subjects
//! with a real signed consent each; 2 KiB per capture), then the benchmark
//! build of `facegate run` is started on it with valid TLS files but a broker
//! port nothing listens on (the uplink keeps retrying). Once its control socket
//! answers `status`, VmRSS/VmHWM are read from `/proc/<pid>/status`: at once,
//! after 6 s (one housekeeping pass over the outbox), and after 20 more
//! `status` requests. Then SIGTERM.

use std::time::{Duration, Instant};

use facegate_testkit::bench;

const QUEUED: usize = 100_000;
const SUBJECTS: usize = 1000;
const IMAGE_BYTES: usize = 2048;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let empty = rt.block_on(measure(0));
    let full = rt.block_on(measure(QUEUED));
    println!(
        "RESULT C empty outbox:   VmRSS max {:>6.1} MiB, VmHWM {:>6.1} MiB",
        mib(empty.0),
        mib(empty.1)
    );
    println!(
        "RESULT C {QUEUED} queued: VmRSS max {:>6.1} MiB, VmHWM {:>6.1} MiB",
        mib(full.0),
        mib(full.1)
    );
    println!(
        "RESULT C difference (HWM): {:+.1} MiB; target < 50 MB with 100k queued: {}",
        mib(full.1) - mib(empty.1),
        if full.1 * 1024 < 50_000_000 {
            "PASS"
        } else {
            "FAIL"
        }
    );
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Runs the daemon on a state dir holding `queued` captures; returns the largest
/// VmRSS seen and the final VmHWM (KiB).
async fn measure(queued: usize) -> (u64, u64) {
    let mut d = bench::daemon()
        .unreachable_broker()
        .configure(|c| {
            c.keep_alive(Duration::from_secs(5))
                .reconnect(Duration::from_millis(200), Duration::from_secs(1))
        })
        .build();
    let cfg = d.load_config();
    let start = Instant::now();
    let image: Vec<u8> = (0..IMAGE_BYTES).map(|i| (i % 251) as u8).collect();
    bench::fill_outbox(&cfg, &d.consent_signer, SUBJECTS, queued, &[image], 1000);
    println!(
        "[{queued} queued] filled the state dir in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    d.spawn();
    let first = d.status_async().await;
    let (outbox, uplink) = (first.outbox.expect("outbox"), first.uplink.expect("uplink"));
    println!(
        "[{queued} queued] status answered after {:.2} s: outbox {}, uplink {}",
        started.elapsed().as_secs_f64(),
        serde_json::to_string(&outbox).unwrap_or_default(),
        serde_json::to_string(&uplink).unwrap_or_default()
    );
    assert_eq!(outbox.captures, queued as u64);
    let pid = d.pid().expect("daemon running");
    let mut max_rss = 0;
    let mut read = |when: &str| {
        let (rss, hwm) = bench::rss_kib(pid);
        max_rss = max_rss.max(rss);
        println!(
            "[{queued} queued] {when:<30} VmRSS {:>6.1} MiB  VmHWM {:>6.1} MiB",
            mib(rss),
            mib(hwm)
        );
        hwm
    };
    read("status answered");
    std::thread::sleep(Duration::from_secs(6));
    read("after 6 s (housekeeping ran)");
    let t = Instant::now();
    for _ in 0..20 {
        d.status_async().await;
    }
    println!(
        "[{queued} queued] status took {:.1} ms per request",
        t.elapsed().as_secs_f64() * 1e3 / 20.0
    );
    let hwm = read("after 20 status requests");
    d.stop();
    (max_rss, hwm)
}
