//! Issue 14's flash and CPU figures for intake, from the outside: the
//! benchmark build of `facegate run` (no broker: the outbox keeps what it
//! accepts), state on the disk, spool on tmpfs
//! (`cargo bench --bench intake_io`).
//!
//! * Disk writes per capture: `write_bytes` of `/proc/PID/io` (what the
//!   process made the kernel write to storage, WAL, checkpoints and all)
//!   over 1,000 unconsented captures written into the spool at
//!   `FACEGATE_BENCH_RATE` per second (default 20), read after the spool is
//!   empty and the drop counts are due (intake's 5 s flush) plus a second;
//!   then the same for 200 consented captures. The idle daemon's own
//!   writes over as long a window (measured first, in the same run) are
//!   shown and taken away.
//! * Intake rate and CPU per capture: `FACEGATE_BENCH_CAPTURES` (default
//!   6,000) pairs, 90 % of subjects without consent, put in the spool of a
//!   stopped daemon, which is then started; from its start to the empty
//!   spool, the daemon's CPU time (user + system, `/proc/PID/stat`) and the
//!   wall time. Baseline in the same run: the same with every subject
//!   consented. The two alternate for `FACEGATE_BENCH_ROUNDS` rounds
//!   (default 3).
//!
//! `FACEGATE_BENCH_WRITES=0` leaves out the disk-write phase (only the rate
//! and CPU runs; `scripts/arm-bench` runs it so under qemu-user).
//!
//! Images: the testkit's 640×480 q85 synthetic JPEGs (~48 KB).

use std::time::{Duration, Instant};

use facegate_testkit::bench;
use facegate_testkit::daemon::Daemon;

const WAIT: Duration = Duration::from_secs(600);
const DROPS: usize = 1000;
const ACCEPTS: usize = 200;

fn main() {
    let rounds = bench::rounds(3);
    let n = bench::captures(6000);
    let rate = bench::env_count("FACEGATE_BENCH_RATE", 20);
    let with_writes = bench::env_count("FACEGATE_BENCH_WRITES", 1) != 0;
    let images = bench::camera_jpegs();
    let mean = images.iter().map(Vec::len).sum::<usize>() / images.len();
    println!("intake_io: images ~{mean} B; {rounds} rounds; writes at {rate}/s; rate/CPU over {n} captures");
    let (mut drop_b, mut accept_b) = (Vec::new(), Vec::new());
    let (mut mixed_cpu, mut mixed_rate, mut all_cpu, mut all_rate) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        if with_writes {
            let load = bench::loadavg();
            let w = writes(&images, rate);
            println!(
                "RESULT W round {round}: {:.0} B written per dropped capture ({:.0} B raw), {:.0} B per accepted ({:.0} B raw); idle {:.0} B/s; load {load}",
                w.per_drop, w.per_drop_raw, w.per_accept, w.per_accept_raw, w.idle_per_s
            );
            drop_b.push(w.per_drop);
            accept_b.push(w.per_accept);
        }
        for (label, unconsented, cpu, rate) in [
            ("90% unconsented", 9, &mut mixed_cpu, &mut mixed_rate),
            ("all consented  ", 0, &mut all_cpu, &mut all_rate),
        ] {
            let load = bench::loadavg();
            let r = intake_run(&images, n, unconsented);
            println!(
                "RESULT R round {round} {label}: {:.0} captures/s, {:.0} µs CPU per capture ({:.2} s CPU, {:.2} s wall); load {load}",
                r.rate, r.cpu_us, r.cpu_s, r.wall_s
            );
            cpu.push(r.cpu_us);
            rate.push(r.rate);
        }
    }
    if with_writes {
        println!(
            "RESULT W per dropped capture: {} B (idle writes taken away)",
            range(&drop_b)
        );
        println!(
            "RESULT W per accepted capture: {} B (idle writes taken away)",
            range(&accept_b)
        );
    }
    println!(
        "RESULT R 90% unconsented: {} captures/s, {} µs CPU per capture",
        range(&mixed_rate),
        range(&mixed_cpu)
    );
    println!(
        "RESULT R all consented (baseline): {} captures/s, {} µs CPU per capture",
        range(&all_rate),
        range(&all_cpu)
    );
    println!("load now {}", bench::loadavg());
}

struct Writes {
    per_drop: f64,
    per_drop_raw: f64,
    per_accept: f64,
    per_accept_raw: f64,
    idle_per_s: f64,
}

/// Writes `count` pairs at `rate` per second, of `subject`.
fn feed(d: &Daemon, images: &[Vec<u8>], tag: &str, count: usize, rate: usize, subject: &str) {
    let every = Duration::from_secs(1) / rate.max(1) as u32;
    let start = Instant::now();
    for i in 0..count {
        let name = format!("{tag}-{i:05}");
        d.drop_pair(&name, "jpg", &images[i % images.len()], Some(subject));
        let next = start + every * (i as u32 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

fn writes(images: &[Vec<u8>], rate: usize) -> Writes {
    let mut d = bench::daemon().start();
    d.grant("S-yes");
    let pid = d.pid().expect("daemon running");
    std::thread::sleep(Duration::from_secs(2));
    let settle = Duration::from_secs(6);

    // Idle, as long as the drop window takes.
    let window = Duration::from_secs_f64(DROPS as f64 / rate as f64) + settle;
    let w0 = bench::write_bytes(pid);
    std::thread::sleep(window);
    let idle = (bench::write_bytes(pid) - w0) as f64;
    let idle_per_s = idle / window.as_secs_f64();

    let w0 = bench::write_bytes(pid);
    let t0 = Instant::now();
    feed(&d, images, "no", DROPS, rate, "S-none");
    d.wait_spool_empty(WAIT);
    std::thread::sleep(settle);
    let dropped = (bench::write_bytes(pid) - w0) as f64;
    let dropped_s = t0.elapsed().as_secs_f64();

    let w0 = bench::write_bytes(pid);
    let t0 = Instant::now();
    feed(&d, images, "yes", ACCEPTS, rate, "S-yes");
    d.wait_spool_empty(WAIT);
    std::thread::sleep(Duration::from_secs(1));
    let accepted = (bench::write_bytes(pid) - w0) as f64;
    let accepted_s = t0.elapsed().as_secs_f64();
    let c = d.counters();
    d.stop();
    assert_eq!(
        (c.dropped_no_consent, c.accepted),
        (DROPS as u64, ACCEPTS as u64),
        "{c:?}"
    );
    Writes {
        per_drop: (dropped - idle_per_s * dropped_s).max(0.0) / DROPS as f64,
        per_drop_raw: dropped / DROPS as f64,
        per_accept: (accepted - idle_per_s * accepted_s).max(0.0) / ACCEPTS as f64,
        per_accept_raw: accepted / ACCEPTS as f64,
        idle_per_s,
    }
}

struct Run {
    rate: f64,
    cpu_us: f64,
    cpu_s: f64,
    wall_s: f64,
}

/// `n` pairs, `unconsented` in ten without consent, taken by a daemon
/// started on the full spool.
fn intake_run(images: &[Vec<u8>], n: usize, unconsented: usize) -> Run {
    let mut d = bench::daemon()
        .configure(|c| c.quota_bytes(4 * 1024 * 1024 * 1024))
        .start();
    d.grant("S-yes");
    d.stop();
    for i in 0..n {
        let subject = if i % 10 < unconsented {
            "S-none"
        } else {
            "S-yes"
        };
        d.spool
            .pair(
                &format!("c-{i:05}"),
                "jpg",
                &images[i % images.len()],
                Some(subject),
            )
            .expect("spool pair");
    }
    let t0 = Instant::now();
    d.spawn();
    let pid = d.pid().expect("daemon running");
    let deadline = t0 + WAIT;
    while !d.spool.is_empty() {
        assert!(Instant::now() < deadline, "spool not empty after {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = bench::cpu_seconds(pid);
    let c = d.counters();
    d.stop();
    let dropped = (n / 10 * unconsented + (n % 10).min(unconsented)) as u64;
    assert_eq!(
        (c.dropped_no_consent, c.accepted),
        (dropped, n as u64 - dropped),
        "{c:?}"
    );
    Run {
        rate: n as f64 / wall_s,
        cpu_us: cpu_s / n as f64 * 1e6,
        cpu_s,
        wall_s,
    }
}

/// `a..b (mean m)`.
fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    format!("{lo:.0}..{hi:.0} (mean {mean:.0})")
}
