//! What every phase does around its faults: a terminal on the broker, a kill
//! with an integrity check of the database it leaves, and the end of a phase
//! (drain, accounting, `audit verify`, clean stop, integrity check).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use facegate_testkit::daemon::{Daemon, DaemonBuilder};
use rusqlite::{Connection, OpenFlags};

use crate::account::{Revocation, Row};
use crate::writer::Written;
use crate::World;

/// The revocations a phase sent: subjects, and command `jti` → subject.
#[derive(Debug, Default)]
pub struct Revocations {
    /// Revoked subjects and what the fleet saw of their receipts.
    pub subjects: HashMap<String, Revocation>,
    /// Each revocation command's `jti` and its subject.
    pub jtis: HashMap<String, String>,
}

/// How long the end of a phase waits for the spool, the outbox, the fleet.
const DRAIN: Duration = Duration::from_secs(120);

/// A terminal on the world's broker with a short keep-alive and fast
/// reconnects, not started; `more` adds to it.
pub fn terminal(world: &World, more: impl FnOnce(DaemonBuilder) -> DaemonBuilder) -> Daemon {
    more(Daemon::builder().broker(&world.broker).configure(|c| {
        c.keep_alive(Duration::from_secs(5))
            .fast_reconnect()
            .log_level("info")
    }))
    .build()
}

/// `PRAGMA integrity_check` on the daemon's database, read-only (it leaves
/// the WAL as a crash left it). `Err` with what SQLite said.
pub fn integrity(d: &Daemon) -> Result<(), String> {
    let path = d.state.join("facegate.db");
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| format!("integrity_check: {e}"))?;
    if rows == ["ok"] {
        Ok(())
    } else {
        Err(rows.join("; "))
    }
}

/// Records an integrity check in `row`.
pub fn record_integrity(d: &Daemon, row: &mut Row) {
    row.integrity_checks += 1;
    if let Err(e) = integrity(d) {
        row.integrity_failed += 1;
        row.failures
            .push(format!("{}: integrity check: {e}", row.phase));
    }
}

/// SIGKILL, integrity check of what it left, start again.
pub fn kill_and_restart(d: &mut Daemon, row: &mut Row) {
    d.kill9();
    row.kills += 1;
    record_integrity(d, row);
    d.spawn();
}

/// Waits until the spool and outbox are empty and every consented capture
/// of a subject not revoked arrived (or [`DRAIN`] passed), then a moment for
/// late copies; accounts the phase; `ctl audit verify`; stops the daemon
/// (SIGTERM, must exit 0) and checks the database.
pub fn finish(
    world: &World,
    d: &mut Daemon,
    written: &[Written],
    revocations: &Revocations,
    row: &mut Row,
) {
    let revoked = &revocations.subjects;
    let deadline = Instant::now() + DRAIN;
    let pending = |d: &Daemon| {
        if row.leftovers_reported {
            sidecars(d)
        } else {
            d.spool.len()
        }
    };
    while Instant::now() < deadline && pending(d) > 0 {
        std::thread::sleep(Duration::from_millis(100));
    }
    if pending(d) > 0 {
        row.failures.push(format!(
            "{}: spool not empty after {DRAIN:?}: {} entries",
            row.phase,
            d.spool.len()
        ));
    } else if !d.spool.is_empty() {
        row.notes.push(format!(
            "{} orphan(s) left in the spool at the end (not pairs; removed once older than the grace period by the daemon's clock)",
            d.spool.len()
        ));
    }
    while Instant::now() < deadline && d.outbox_len() > 0 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let expected: Vec<&str> = written
        .iter()
        .filter(|w| w.consented && !w.subject.as_ref().is_some_and(|s| revoked.contains_key(s)))
        .map(|w| w.tag.as_str())
        .collect();
    while Instant::now() < deadline {
        let missing = {
            let l = world.fleet.ledger();
            expected
                .iter()
                .filter(|t| !l.uploads.contains_key(**t))
                .count()
        };
        if missing == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Late copies (and anything a revocation should have stopped) have a
    // moment to show up.
    std::thread::sleep(Duration::from_secs(2));
    let outbox = d.outbox_len();
    if outbox > 0 {
        row.notes
            .push(format!("{outbox} captures still in the outbox at the end"));
    }
    let c = d.counters();
    row.accepted = c.accepted;
    row.dropped = c.dropped_no_consent;
    row.rejected = c.rejected_bad_input;
    row.purged = c.purged;
    let mut revoked = revoked.clone();
    {
        let ledger = world.fleet.ledger();
        Row::receipts(&ledger, &revocations.jtis, &mut revoked);
        row.account(written, &revoked, &ledger);
    }
    let verify = d.try_ctl(&["audit", "verify"]);
    row.audit_ok = Some(verify.status.success());
    if !verify.status.success() {
        row.failures.push(format!(
            "{}: audit verify: {}{}",
            row.phase,
            String::from_utf8_lossy(&verify.stdout).trim(),
            String::from_utf8_lossy(&verify.stderr).trim()
        ));
    }
    let status = d.stop();
    if !status.success() {
        row.failures
            .push(format!("{}: clean stop exited {status}", row.phase));
    }
    record_integrity(d, row);
    if let Some(dir) = &world.logs {
        let path = dir.join(format!("{}.log", row.phase));
        if let Err(e) = std::fs::write(&path, d.log()) {
            row.notes.push(format!("{}: {e}", path.display()));
        }
    }
}

/// Sidecars (complete pairs, or sidecars about to be removed) in the spool.
fn sidecars(d: &Daemon) -> usize {
    std::fs::read_dir(d.spool.dir()).map_or(0, |dir| {
        dir.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count()
    })
}

/// VmRSS of `pid` in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A random pause between `min` and `max` milliseconds.
pub fn pause(world: &mut World, min: u64, max: u64) {
    std::thread::sleep(Duration::from_millis(world.rng.u64(min..=max)));
}

/// Grants `subject` a consent issued two days before `now + offset` and valid
/// for 30 days: it holds across every clock jump of the clock phase.
pub fn grant(d: &Daemon, subject: &str, offset: i64) {
    let iat = facegate::clock::now() + offset - 2 * 86_400;
    let token = d.consent_signer.consent_at(subject, 30 * 86_400, iat);
    d.ctl(&["consent", "add", &token]);
}

/// Signs `consent.revoke` of `subject` with the fleet key, issued at
/// `now + offset`, publishes it, and notes it in `jtis` and `revoked`.
pub fn revoke(
    world: &World,
    d: &Daemon,
    subject: &str,
    offset: i64,
    revocations: &mut Revocations,
) -> String {
    let (jti, jws) = d.fleet_signer.command(
        "consent.revoke",
        serde_json::json!({ "subject": subject }),
        facegate_testkit::SITE,
        600,
        facegate::clock::now() + offset,
    );
    revocations
        .jtis
        .insert(jti.to_string(), subject.to_string());
    revocations.subjects.entry(subject.to_string()).or_default();
    world
        .fleet
        .publish(&world.rt, jws.into_bytes(), rumqttc::QoS::AtLeastOnce);
    jti.to_string()
}

/// Waits up to `timeout` for an `ok` reply to command `jti`.
pub fn wait_reply(world: &World, jti: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if world
            .fleet
            .ledger()
            .replies
            .iter()
            .any(|(_, r)| r["jti"] == jti && r["ok"] == true)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
