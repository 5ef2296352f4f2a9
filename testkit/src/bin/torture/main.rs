//! The torture suite (`scripts/torture`): the real daemon against a real
//! Mosquitto, under faults, with every capture accounted for.
//!
//! Phases (each with its own terminal, on one broker and one fleet
//! subscriber): SIGKILL loop during intake and upload; SIGKILL during
//! revocations; broker kill -9 / restart churn; a full disk (state directory
//! on a small tmpfs); clock jumps (libfaketime); a flood of hostile commands
//! and spool entries with the daemon's memory sampled. Every capture pair
//! carries a tag of its own as its name and `camera`, which the upload
//! envelope carries, so the fleet's ledger says for each capture whether it
//! arrived, how often and under which ids.
//!
//! Violations (exit status 1): a consented capture never delivered (lost), a
//! capture delivered under two ids, a capture without consent delivered, a
//! revoked subject's capture delivered after the receipt and not listed in
//! it as in flight, an unanswered revocation, a failed `PRAGMA
//! integrity_check` or `ctl audit verify`, a daemon that does not come back.
//!
//! `torture [--short|--long] [--seed N] [--only PHASE,...] [--logs DIR]`; the facegate
//! binary is the one built next to this one (`cargo build [--release] --bins`).

mod account;
mod check;
mod fleet;
mod phases;
mod writer;

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use facegate_testkit::bench;
use facegate_testkit::broker::Broker;
use facegate_testkit::synth;

use crate::account::Row;
use crate::fleet::Fleet;

/// How much of everything a run does.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Name printed with the table.
    pub name: &'static str,
    /// SIGKILLs in the kill phase.
    pub kills: u32,
    /// Subjects granted, then revoked, in the revocation phase.
    pub revocations: u32,
    /// Broker restarts in the broker phase.
    pub broker_restarts: u32,
    /// How long the disk stays full.
    pub disk_full: Duration,
    /// Hostile commands in the flood.
    pub hostile_commands: u32,
    /// Hostile spool entries in the flood.
    pub hostile_entries: u32,
    /// Clock offsets (seconds from real time) the daemon jumps between, in order.
    pub clock_offsets: Vec<i64>,
    /// Pause between two capture pairs of the writer.
    pub write_every: Duration,
}

impl Profile {
    /// About two minutes on two cores: what CI runs.
    fn short() -> Profile {
        Profile {
            name: "short",
            kills: 25,
            revocations: 5,
            broker_restarts: 8,
            disk_full: Duration::from_secs(4),
            hostile_commands: 1500,
            hostile_entries: 150,
            clock_offsets: vec![6 * 3600, 2 * 3600, 12 * 3600, -1800, 0],
            write_every: Duration::from_millis(25),
        }
    }

    /// The long run of RELIABILITY.md: at least 500 SIGKILLs and 50 broker restarts.
    fn long() -> Profile {
        let jumps = [6 * 3600, 2 * 3600, 12 * 3600, -1800, 0, 9 * 3600, -2400];
        Profile {
            name: "long",
            kills: 500,
            revocations: 60,
            broker_restarts: 60,
            disk_full: Duration::from_secs(15),
            hostile_commands: 20_000,
            hostile_entries: 2000,
            clock_offsets: jumps.iter().chain(jumps.iter()).copied().collect(),
            write_every: Duration::from_millis(20),
        }
    }
}

/// What every phase shares.
pub struct World {
    /// The runtime of the MQTT clients.
    pub rt: tokio::runtime::Runtime,
    /// The dev broker.
    pub broker: Broker,
    /// The fleet subscriber and command publisher.
    pub fleet: Fleet,
    /// Distinct synthetic captures the writer picks from.
    pub images: Arc<Vec<Vec<u8>>>,
    /// The run's profile.
    pub profile: Profile,
    /// Seeded random choices.
    pub rng: fastrand::Rng,
    /// Where each phase's daemon log is copied (`--logs DIR`).
    pub logs: Option<std::path::PathBuf>,
}

type Phase = fn(&mut World, &mut Row);

const PHASES: [(&str, Phase); 6] = [
    ("sigkill", phases::kill::run),
    ("revocation", phases::revoke::run),
    ("broker", phases::churn::run),
    ("diskfull", phases::diskfull::run),
    ("clock", phases::clock::run),
    ("hostile", phases::hostile::run),
];

fn main() {
    let mut profile = Profile::short();
    let mut seed: u64 = 1;
    let mut only: Option<Vec<String>> = None;
    let mut logs = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--short" => profile = Profile::short(),
            "--long" => profile = Profile::long(),
            "--seed" => {
                seed = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage("--seed takes a number"))
            }
            "--only" => {
                only = Some(
                    args.next()
                        .unwrap_or_else(|| usage("--only takes phase names"))
                        .split(',')
                        .map(String::from)
                        .collect(),
                )
            }
            "--logs" => {
                let dir = std::path::PathBuf::from(
                    args.next()
                        .unwrap_or_else(|| usage("--logs takes a directory")),
                );
                std::fs::create_dir_all(&dir)
                    .unwrap_or_else(|e| usage(&format!("{}: {e}", dir.display())));
                logs = Some(dir);
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let started = Instant::now();
    println!(
        "torture: profile {} seed {seed}, facegate {}, load {}",
        profile.name,
        facegate_testkit::daemon::facegate_binary().display(),
        bench::loadavg()
    );
    let rt = bench::runtime();
    let broker = Broker::start();
    let fleet = Fleet::start(&rt, &broker);
    let images = Arc::new(
        (0..12)
            .map(|i| synth::face_jpeg(160, 120, 7000 + i, 80))
            .collect::<Vec<_>>(),
    );
    let mut world = World {
        rt,
        broker,
        fleet,
        images,
        profile,
        rng: fastrand::Rng::with_seed(seed),
        logs,
    };
    let mut rows = Vec::new();
    for (name, phase) in PHASES {
        if only.as_ref().is_some_and(|o| !o.iter().any(|p| p == name)) {
            continue;
        }
        let mut row = Row::new(name);
        let t0 = Instant::now();
        println!("== phase {name}");
        let _ = std::io::stdout().flush();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| phase(&mut world, &mut row)));
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            let first: String = msg.lines().next().unwrap_or("").chars().take(300).collect();
            row.failures.push(format!("{name}: aborted: {first}"));
        }
        row.wall_s = t0.elapsed().as_secs_f64();
        println!(
            "   {name}: {:.1} s, kills {}, broker restarts {}, written {}, uploaded {}, lost {}, after revocation {}",
            row.wall_s, row.kills, row.broker_restarts, row.written, row.uploaded, row.lost, row.after_revocation
        );
        rows.push(row);
    }
    let wall = started.elapsed();
    println!();
    print!("{}", table(&rows));
    println!();
    println!(
        "profile {}, seed {seed}, wall {:.0} s, load {}",
        world.profile.name,
        wall.as_secs_f64(),
        bench::loadavg()
    );
    let violations: Vec<String> = rows.iter().flat_map(Row::violations).collect();
    if violations.is_empty() {
        println!("PASS: no violation");
    } else {
        println!("FAIL: {} violation(s)", violations.len());
        for v in &violations {
            println!("  - {v}");
        }
        std::process::exit(1);
    }
}

fn usage(why: &str) -> ! {
    if !why.is_empty() {
        eprintln!("torture: {why}");
    }
    eprintln!("usage: torture [--short|--long] [--seed N] [--only PHASE[,PHASE...]] [--logs DIR]");
    eprintln!("phases: {}", PHASES.map(|(n, _)| n).join(", "));
    std::process::exit(2);
}

/// The rows as a Markdown table: one column per phase and a total.
fn table(rows: &[Row]) -> String {
    type Cell = fn(&Row) -> String;
    let num = |v: u64| v.to_string();
    let lines: Vec<(&str, Cell, bool)> = vec![
        ("wall time (s)", |r| format!("{:.0}", r.wall_s), false),
        ("daemon SIGKILLs", |r| r.kills.to_string(), true),
        ("broker restarts", |r| r.broker_restarts.to_string(), true),
        ("captures written", |r| r.written.to_string(), true),
        ("  of consented subjects", |r| r.consented.to_string(), true),
        (
            "accepted (daemon counter)",
            |r| r.accepted.to_string(),
            true,
        ),
        (
            "dropped, no consent (counter)",
            |r| r.dropped.to_string(),
            true,
        ),
        (
            "rejected, bad input (counter)",
            |r| r.rejected.to_string(),
            true,
        ),
        ("purged (counter)", |r| r.purged.to_string(), true),
        (
            "uploaded (distinct captures)",
            |r| r.uploaded.to_string(),
            true,
        ),
        (
            "duplicate deliveries (same id)",
            |r| r.duplicates.to_string(),
            true,
        ),
        (
            "captures under two ids",
            |r| r.dup_identity.to_string(),
            true,
        ),
        ("**lost**", |r| r.lost.to_string(), true),
        (
            "uploaded without consent",
            |r| r.unconsented_uploaded.to_string(),
            true,
        ),
        ("revocations", |r| r.revocations.to_string(), true),
        (
            "**uploaded after revocation**",
            |r| r.after_revocation.to_string(),
            true,
        ),
        (
            "late, listed in flight (allowed)",
            |r| r.late_in_flight.to_string(),
            true,
        ),
        (
            "integrity checks (failed)",
            |r| format!("{} ({})", r.integrity_checks, r.integrity_failed),
            false,
        ),
        (
            "audit verify",
            |r| match r.audit_ok {
                Some(true) => "ok".into(),
                Some(false) => "FAILED".into(),
                None => "-".into(),
            },
            false,
        ),
        (
            "peak VmRSS (MiB)",
            |r| {
                if r.peak_rss_kib == 0 {
                    "-".into()
                } else {
                    format!("{:.1}", r.peak_rss_kib as f64 / 1024.0)
                }
            },
            false,
        ),
        (
            "disk-full recovery (s)",
            |r| r.recovery_s.map_or("-".into(), |s| format!("{s:.1}")),
            false,
        ),
    ];
    let mut out = String::from("| |");
    for r in rows {
        out.push_str(&format!(" {} |", r.phase));
    }
    out.push_str(" total |\n|---|");
    for _ in rows {
        out.push_str("---:|");
    }
    out.push_str("---:|\n");
    for (label, cell, summed) in lines {
        out.push_str(&format!("| {label} |"));
        let mut total = 0u64;
        for r in rows {
            let c = cell(r);
            total += c.parse::<u64>().unwrap_or(0);
            out.push_str(&format!(" {c} |"));
        }
        if summed {
            out.push_str(&format!(" {} |\n", num(total)));
        } else if label == "integrity checks (failed)" {
            let (n, f) = rows.iter().fold((0, 0), |(n, f), r| {
                (n + r.integrity_checks, f + r.integrity_failed)
            });
            out.push_str(&format!(" {n} ({f}) |\n"));
        } else {
            out.push_str(" |\n");
        }
    }
    let notes: Vec<String> = rows
        .iter()
        .flat_map(|r| r.notes.iter().map(move |n| format!("{}: {n}", r.phase)))
        .collect();
    for n in notes {
        out.push_str(&format!("\n- {n}"));
    }
    if out.ends_with(|c| c != '\n') {
        out.push('\n');
    }
    out
}
