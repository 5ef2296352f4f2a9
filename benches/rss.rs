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

mod support;

use std::time::{Duration, Instant};

use support::DaemonProc;

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
    let dir = support::disk_tempdir();
    let spool = support::spool_tempdir();
    let trust = support::Trust::new();
    let mqtt = support::tls_without_broker(dir.path());
    let state = dir.path().join("state");
    let toml = support::config_toml(
        &state,
        spool.path(),
        &mqtt,
        &trust,
        "keep_alive = \"5s\"\nreconnect_min = \"200ms\"\nreconnect_max = \"1s\"",
        "",
    );
    let cfg = support::parse(&toml, dir.path());
    let config_path = dir.path().join("facegate.toml");
    std::fs::write(&config_path, &toml).expect("write config");
    let start = Instant::now();
    let image: Vec<u8> = (0..IMAGE_BYTES).map(|i| (i % 251) as u8).collect();
    support::fill_outbox(&cfg, &trust, SUBJECTS, queued, &[image], 1000);
    println!(
        "[{queued} queued] filled the state dir in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let mut d = DaemonProc::start(
        &config_path,
        &cfg.control.socket,
        &dir.path().join("daemon.log"),
        &[],
    )
    .await;
    let first = d.status().await;
    println!(
        "[{queued} queued] status answered after {:.2} s: outbox {}, uplink {}",
        started.elapsed().as_secs_f64(),
        first["outbox"],
        first["uplink"]
    );
    assert_eq!(first["outbox"]["captures"].as_u64(), Some(queued as u64));
    let pid = d.pid();
    let mut max_rss = 0;
    let mut read = |when: &str| {
        let (rss, hwm) = support::rss_kib(pid);
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
        d.status().await;
    }
    println!(
        "[{queued} queued] status took {:.1} ms per request",
        t.elapsed().as_secs_f64() * 1e3 / 20.0
    );
    let hwm = read("after 20 status requests");
    d.stop();
    (max_rss, hwm)
}
