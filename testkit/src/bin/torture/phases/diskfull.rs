//! A full disk: the state directory on a small tmpfs is filled to the last
//! byte while captures keep coming (intake holds them in the spool, deletes
//! after PUBACK fail), the daemon is killed once while the disk is full,
//! then the space comes back. Recovery time: from the space coming back to
//! the spool and the outbox empty. Needs root (mount); skipped otherwise.

use std::time::{Duration, Instant};

use facegate_testkit::smallfs::SmallFs;

use crate::account::Row;
use crate::check::{self, finish, kill_and_restart, Revocations};
use crate::writer::{Subject, Writer};
use crate::World;

const MIB: u64 = 1024 * 1024;

/// Runs the phase.
pub fn run(world: &mut World, row: &mut Row) {
    let fs = match SmallFs::mount(24 * MIB) {
        Ok(fs) => fs,
        Err(e) => {
            row.notes.push(format!(
                "SKIPPED: a small file system cannot be mounted: {e}"
            ));
            return;
        }
    };
    let state = fs.path().join("state");
    let mut d = check::terminal(world, |b| {
        b.state_in(&state)
            .spool_on_tmpfs()
            .configure(|c| c.reserve_bytes(256 * 1024))
    });
    d.spawn();
    check::grant(&d, "S-d1", 0);
    check::grant(&d, "S-d2", 0);
    let writer = Writer::start(
        d.spool.clone(),
        "d",
        world.profile.write_every,
        world.rng.u64(..),
        world.images.clone(),
    );
    writer.set_subjects(vec![
        Subject::consented("S-d1"),
        Subject::consented("S-d2"),
        Subject::unconsented("S-dx"),
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let filler = fs.fill();
    let full = world.profile.disk_full;
    std::thread::sleep(full / 2);
    kill_and_restart(&mut d, row);
    std::thread::sleep(full / 2);
    let held = d.spool.len();
    let before: Vec<String> = writer
        .snapshot()
        .into_iter()
        .filter(|w| w.consented)
        .map(|w| w.tag)
        .collect();
    let freed = Instant::now();
    filler.free();
    let deadline = freed + Duration::from_secs(120);
    let all_seen = || {
        let l = world.fleet.ledger();
        before.iter().all(|t| l.uploads.contains_key(t))
    };
    while Instant::now() < deadline && !all_seen() {
        std::thread::sleep(Duration::from_millis(50));
    }
    row.recovery_s = Some(freed.elapsed().as_secs_f64());
    row.notes.push(format!(
        "{held} spool entries held when the space came back; recovery: until every consented capture written before then reached the fleet"
    ));
    std::thread::sleep(Duration::from_millis(500));
    let written = writer.finish();
    finish(world, &mut d, &written, &Revocations::default(), row);
    drop(d);
    drop(fs);
}
