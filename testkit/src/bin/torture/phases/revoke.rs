//! SIGKILL during revocations: a subject is granted, its captures flow, the
//! fleet revokes it with a signed `consent.revoke` while they flow, and half
//! the time the daemon is killed right after the command went out. Nothing
//! of the subject may reach the fleet after the receipt unless the receipt
//! lists it as in flight.

use std::time::Duration;

use crate::account::Row;
use crate::check::{self, finish, kill_and_restart, Revocations};
use crate::writer::{Subject, Writer};
use crate::World;

/// Runs the phase.
pub fn run(world: &mut World, row: &mut Row) {
    let mut d = check::terminal(world, |b| b);
    d.spawn();
    check::grant(&d, "S-rkeep", 0);
    let writer = Writer::start(
        d.spool.clone(),
        "r",
        world.profile.write_every,
        world.rng.u64(..),
        world.images.clone(),
    );
    let base = vec![Subject::consented("S-rkeep"), Subject::unconsented("S-rx")];
    writer.set_subjects(base.clone());
    let mut revocations = Revocations::default();
    for i in 0..world.profile.revocations {
        let subject = format!("S-r{i:03}");
        check::grant(&d, &subject, 0);
        let mut now_subjects = base.clone();
        // Weighted: most captures are of the subject about to be revoked.
        for _ in 0..3 {
            now_subjects.push(Subject::consented(&subject));
        }
        writer.set_subjects(now_subjects);
        check::pause(world, 300, 1200);
        let jti = check::revoke(world, &d, &subject, 0, &mut revocations);
        if world.rng.bool() {
            check::pause(world, 0, 300);
            kill_and_restart(&mut d, row);
        }
        if !check::wait_reply(world, &jti, Duration::from_secs(30)) {
            row.failures
                .push(format!("revocation: no receipt for {subject} within 30 s"));
        }
        // Captures of the revoked subject keep coming for a moment: dropped.
        check::pause(world, 200, 600);
        writer.set_subjects(base.clone());
    }
    std::thread::sleep(Duration::from_millis(500));
    let written = writer.finish();
    finish(world, &mut d, &written, &revocations, row);
}
