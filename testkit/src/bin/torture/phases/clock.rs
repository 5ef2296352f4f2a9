//! Clock jumps: the daemon runs under libfaketime with its wall clock read
//! from an offset file (`FAKETIME_TIMESTAMP_FILE`, re-read every second;
//! the monotonic clock is not faked), which jumps forward and backward by
//! hours while captures flow; a revocation is signed at the daemon's time of
//! the moment, and the daemon is killed now and then. Consents are issued
//! two days back and last 30 days, certificates a day: every jump stays
//! inside their validity, so nothing may be lost or dropped because of it.
//! The camera shares the terminal's clock: the writer stamps its files'
//! modification times and `captured_at` with the same offset, and a jump
//! falls between two pairs (a pair half-written at a forward jump has an
//! image that looks older than the grace period: see RELIABILITY.md).
//! Judged besides lost, uploaded-after-revocation and duplicates: both
//! consents still active at the end and no spool entry removed as a stray
//! (the daemon holds irreversible actions while its clock is suspect and
//! ages leftovers on the monotonic clock). Skipped when libfaketime is
//! missing.

use std::path::Path;
use std::time::Duration;

use crate::account::Row;
use crate::check::{self, finish, kill_and_restart, Revocations};
use crate::writer::{Subject, Writer};
use crate::World;

/// Where Debian and Ubuntu install libfaketime.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Runs the phase.
pub fn run(world: &mut World, row: &mut Row) {
    if !Path::new(LIBFAKETIME).is_file() {
        row.notes.push(format!(
            "SKIPPED: {LIBFAKETIME} is missing (scripts/ensure-faketime installs it)"
        ));
        return;
    }
    let mut d = check::terminal(world, |b| b);
    let offset_file = d.dir.path().join("faketime");
    let set_offset =
        |s: i64| std::fs::write(&offset_file, format!("{s:+}\n")).expect("write the faketime file");
    set_offset(0);
    d.run_env = vec![
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            offset_file.clone().into_os_string(),
        ),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    d.spawn();
    for s in ["S-c1", "S-c2", "S-crev"] {
        check::grant(&d, s, 0);
    }
    let writer = Writer::start(
        d.spool.clone(),
        "c",
        world.profile.write_every,
        world.rng.u64(..),
        world.images.clone(),
    );
    writer.set_subjects(vec![
        Subject::consented("S-c1"),
        Subject::consented("S-c2"),
        Subject::consented("S-crev"),
        Subject::unconsented("S-cx"),
    ]);
    let mut revocations = Revocations::default();
    let offsets = world.profile.clock_offsets.clone();
    let revoke_at = offsets.len() / 2;
    let mut shown = Vec::new();
    for (i, &offset) in offsets.iter().enumerate() {
        check::pause(world, 1000, 2500);
        // The camera writes nothing until the daemon has read the new
        // offset (libfaketime reads the file once a second).
        writer.jump(offset, || {
            set_offset(offset);
            std::thread::sleep(Duration::from_millis(1200));
        });
        shown.push(format!("{:+}min", offset / 60));
        if i == revoke_at {
            let jti = check::revoke(world, &d, "S-crev", offset, &mut revocations);
            if !check::wait_reply(world, &jti, Duration::from_secs(30)) {
                row.failures
                    .push("clock: no receipt for the revocation within 30 s".into());
            }
        }
        if world.rng.u8(..3) == 0 {
            kill_and_restart(&mut d, row);
        }
    }
    check::pause(world, 1000, 2000);
    let written = writer.finish();
    let consents = d.active_consents();
    row.leftovers_reported = true;
    finish(world, &mut d, &written, &revocations, row);
    let strays = d
        .log()
        .lines()
        .filter(|l| l.contains("removed stray spool entry"))
        .count();
    row.notes.push(format!(
        "offsets {}; active consents at the end {consents} of 2; purged counter {} (the revoked subject's captures); stray spool entries removed {strays}",
        shown.join(" → "),
        row.purged
    ));
    // The daemon holds irreversible time-based actions while its clock is
    // suspect (ARCHITECTURE I15): no consent may go because of a jump, and
    // spool leftovers are aged on the monotonic clock, so no file the
    // camera is writing is removed.
    if consents != 2 {
        row.failures.push(format!(
            "clock: {consents} active consents at the end, not 2: a jump removed a consent"
        ));
    }
    if strays > 0 {
        row.failures.push(format!(
            "clock: {strays} spool entries removed as strays during the jumps"
        ));
    }
}
