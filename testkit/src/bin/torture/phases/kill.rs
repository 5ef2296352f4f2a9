//! SIGKILL loop during intake and upload: the writer keeps writing captures
//! of consented, unconsented and anonymous subjects while the daemon is
//! killed at random moments and started again.

use std::time::Duration;

use crate::account::Row;
use crate::check::{self, finish, kill_and_restart, Revocations};
use crate::writer::{Subject, Writer};
use crate::World;

/// Runs the phase.
pub fn run(world: &mut World, row: &mut Row) {
    let mut d = check::terminal(world, |b| b);
    d.spawn();
    for s in ["S-k1", "S-k2", "S-k3"] {
        check::grant(&d, s, 0);
    }
    let writer = Writer::start(
        d.spool.clone(),
        "k",
        world.profile.write_every,
        world.rng.u64(..),
        world.images.clone(),
    );
    writer.set_subjects(vec![
        Subject::consented("S-k1"),
        Subject::consented("S-k2"),
        Subject::consented("S-k3"),
        Subject::unconsented("S-kx"),
        Subject::anonymous(),
    ]);
    for i in 0..world.profile.kills {
        // Mostly soon after the start (recovery, resend), sometimes later
        // (steady intake and upload).
        if world.rng.u8(..4) == 0 {
            check::pause(world, 400, 1500);
        } else {
            check::pause(world, 0, 400);
        }
        kill_and_restart(&mut d, row);
        if (i + 1) % 50 == 0 {
            println!(
                "   {} kills, {} written, {} uploaded so far",
                i + 1,
                writer.count(),
                world.fleet.ledger().uploads.len()
            );
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let written = writer.finish();
    finish(world, &mut d, &written, &Revocations::default(), row);
}
