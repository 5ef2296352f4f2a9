//! Broker churn: the broker is killed (SIGKILL, three times in four) or
//! stopped, and started again on the same port with its persistence, while
//! captures flow; now and then the daemon is killed too while the broker is
//! down. The fleet's session is persistent and reconnects.
//!
//! Mosquitto saves its persistence every second, so a SIGKILL loses what it
//! queued for an offline client in the last second: each kill waits until the
//! fleet is connected again and what was queued for it had time to go out.

use std::time::{Duration, Instant};

use crate::account::Row;
use crate::check::{self, finish, kill_and_restart, Revocations};
use crate::writer::{Subject, Writer};
use crate::World;

/// Runs the phase.
pub fn run(world: &mut World, row: &mut Row) {
    let mut d = check::terminal(world, |b| b);
    d.spawn();
    check::grant(&d, "S-b1", 0);
    check::grant(&d, "S-b2", 0);
    let writer = Writer::start(
        d.spool.clone(),
        "b",
        world.profile.write_every,
        world.rng.u64(..),
        world.images.clone(),
    );
    writer.set_subjects(vec![
        Subject::consented("S-b1"),
        Subject::consented("S-b2"),
        Subject::unconsented("S-bx"),
    ]);
    for _ in 0..world.profile.broker_restarts {
        check::pause(world, 300, 1500);
        let connects = world.fleet.connects();
        if world.rng.u8(..4) == 0 {
            world.broker.stop();
        } else {
            world.broker.kill();
        }
        if world.rng.u8(..5) == 0 {
            check::pause(world, 0, 500);
            kill_and_restart(&mut d, row);
        } else {
            check::pause(world, 0, 800);
        }
        world.broker.restart();
        row.broker_restarts += 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        while world.fleet.connects() == connects && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if world.fleet.connects() == connects {
            row.failures
                .push("broker: the fleet did not reconnect within 30 s".into());
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let written = writer.finish();
    finish(world, &mut d, &written, &Revocations::default(), row);
}
