//! The wall clock watched for jumps (ARCHITECTURE I15): reads the clocks
//! (wall, `CLOCK_BOOTTIME`, the boot id) and the kernel's NTP status
//! (`adjtimex`), keeps the pure [`Watch`] and the latest signed time seen,
//! and tells housekeeping and intake whether the irreversible time-based
//! actions may run ([`Timekeeper::safe_now`]). The rule is in
//! [`crate::clock::watch`]; this is its I/O.
//!
//! Setting the time by hand (`date -s`, `settimeofday`) marks the kernel
//! clock unsynchronised (`STA_UNSYNC`) until an NTP daemon synchronises it
//! again, so a hand-made jump is not confirmed by NTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::clock::{
    self,
    watch::{Change, Evidence, Mark, Policy, Reading, Suspect, Sync, Watch},
};
use crate::config::Config;
use crate::protocol::{ClockState, ClockStatus};

/// The irreversible actions a suspect clock holds, as the status names them.
pub const HELD: [&str; 5] = [
    "consent_sweep",
    "outbox_retention",
    "replay_forget",
    "audit_retention",
    "spool_orphans",
];

/// Where the kernel names the current boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// The mark is written at least this often (in observations) while the clock
/// is trusted, and at every change.
const SAVE_EVERY: u64 = 12;

/// The watch, shared by housekeeping (which observes), intake, the command
/// and head paths (which bring signed times) and the status.
#[derive(Debug, Default)]
pub struct Timekeeper {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    watch: Watch,
    evidence: Option<Evidence>,
    sync: Option<Sync>,
    observations: u64,
    /// When each spool entry waiting for its grace period was first seen.
    first_seen: HashMap<PathBuf, Instant>,
}

/// One observation's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// What changed (to log and audit once).
    pub change: Change,
    /// The mark to persist now, if any.
    pub save: Option<Mark>,
}

impl Timekeeper {
    /// A timekeeper starting from the persisted mark.
    pub fn new(mark: Option<Mark>) -> Timekeeper {
        Timekeeper {
            inner: Mutex::new(Inner {
                watch: Watch::new(mark),
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the clocks and the NTP status and applies the rule.
    pub fn observe(&self, cfg: &Config) -> Observed {
        let reading = read_clocks();
        let sync = if cfg.clock.ntp {
            ntp_sync()
        } else {
            Sync::Unknown
        };
        let policy = Policy {
            threshold_s: secs(cfg.clock.jump_threshold),
            skew_s: secs(cfg.commands.clock_skew),
        };
        let mut inner = self.lock();
        let evidence = inner.evidence;
        let change = inner.watch.observe(&reading, sync, evidence, &policy);
        if !matches!(change, Change::None) {
            inner.evidence = None;
        }
        inner.sync = Some(sync);
        inner.observations += 1;
        let due = inner.observations % SAVE_EVERY == 1 || !matches!(change, Change::None);
        let save = if due {
            inner.watch.mark().cloned()
        } else {
            None
        };
        Observed { change, save }
    }

    /// A verified signed time (a command's or a consent-log head's `iat`)
    /// that arrived at wall time `wall`: it may confirm a jump.
    pub fn signed_time(&self, iat: i64, wall: i64) {
        self.lock().evidence = Some(Evidence { iat, wall });
    }

    /// The time irreversible actions may use, `None` while the clock is
    /// suspect (they are held).
    pub fn safe_now(&self) -> Option<i64> {
        self.lock().watch.safe_now()
    }

    /// How long each of `paths` has been seen, by the monotonic clock
    /// (which no wall-clock step moves): the first call naming a path starts
    /// its count; paths not named in a call are forgotten. Spool entries
    /// are removed for age only when this too reaches the grace period.
    pub fn seen_for(&self, paths: &[&Path]) -> Vec<Duration> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.first_seen.retain(|p, _| paths.contains(&p.as_path()));
        paths
            .iter()
            .map(|p| {
                let first = *inner.first_seen.entry(p.to_path_buf()).or_insert(now);
                now.saturating_duration_since(first)
            })
            .collect()
    }

    /// The highest wall time ever trusted (`None` before the first reading).
    pub fn high_water(&self) -> Option<i64> {
        self.lock().watch.mark().map(|m| m.high)
    }

    /// The jump being held, if any.
    pub fn suspect(&self) -> Option<Suspect> {
        self.lock().watch.suspect()
    }

    /// The status `clock` object.
    pub fn status(&self) -> ClockStatus {
        let inner = self.lock();
        match inner.watch.suspect() {
            Some(s) => ClockStatus {
                state: ClockState::Jumped,
                jump_s: s.jump_s,
                since: Some(s.since),
                held: HELD.iter().map(|h| h.to_string()).collect(),
            },
            None => ClockStatus {
                state: if inner.sync == Some(Sync::Unsynced) {
                    ClockState::Unsynced
                } else {
                    ClockState::Ok
                },
                jump_s: 0,
                since: None,
                held: Vec::new(),
            },
        }
    }
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Wall time, the boot id and `CLOCK_BOOTTIME` (which keeps counting in
/// suspend and is never stepped).
pub fn read_clocks() -> Reading {
    let boot = std::fs::read_to_string(BOOT_ID)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Reading {
        wall: clock::now(),
        boot,
        mono: boottime_s(),
    }
}

/// Seconds of `CLOCK_BOOTTIME`.
#[allow(unsafe_code)] // clock_gettime(2), see SAFETY below
fn boottime_s() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc == 0 {
        // `time_t` is 32 bits on armv7 (glibc without _TIME_BITS=64).
        #[allow(clippy::useless_conversion)]
        i64::from(ts.tv_sec)
    } else {
        0
    }
}

/// The kernel's NTP status: `adjtimex` with no modes only reads it (no
/// privilege needed). Unsynchronised when `STA_UNSYNC` is set or the call
/// returns `TIME_ERROR`.
#[allow(unsafe_code)] // adjtimex(2), see SAFETY below
pub fn ntp_sync() -> Sync {
    // SAFETY: an all-zero timex is valid input; modes = 0 only reads.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `tx` is a valid, writable timex.
    let rc = unsafe { libc::adjtimex(&mut tx) };
    if rc < 0 {
        Sync::Unknown
    } else if rc == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0 {
        Sync::Unsynced
    } else {
        Sync::Synced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clocks_can_be_read() {
        let r = read_clocks();
        assert!(r.mono > 0);
        assert_eq!(r.boot.len(), 36, "{r:?}");
        // Whatever the host says, reading it works.
        let _ = ntp_sync();
    }

    #[test]
    fn spool_entries_age_from_when_they_were_first_seen() {
        let t = Timekeeper::new(None);
        let (a, b) = (Path::new("/spool/a.jpg"), Path::new("/spool/b.jpg"));
        assert_eq!(t.seen_for(&[a]), vec![Duration::ZERO]);
        std::thread::sleep(Duration::from_millis(20));
        let ages = t.seen_for(&[a, b]);
        assert!(ages[0] >= Duration::from_millis(20), "{ages:?}");
        assert_eq!(ages[1], Duration::ZERO);
        // Not named: forgotten, and counted from zero when seen again.
        t.seen_for(&[b]);
        assert_eq!(t.seen_for(&[a, b])[0], Duration::ZERO);
    }
}
