//! A flood of hostile commands and spool entries while real captures flow:
//! garbage, forged and mis-signed commands (wrong key, wrong role, wrong
//! audience, expired, not yet valid, unknown, replayed, oversized, QoS 0),
//! several of which would purge or revoke the consented subject if they took
//! effect (then its captures would show as lost); malformed spool pairs,
//! lone files, directories and links. The daemon's VmRSS is sampled every
//! 50 ms; its peak is reported and must stay under 512 MiB.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use facegate_testkit::signer::Signer;
use facegate_testkit::SITE;
use rumqttc::QoS;
use serde_json::json;

use crate::account::Row;
use crate::check::{self, finish, Revocations};
use crate::writer::{Subject, Writer};
use crate::World;

/// Peak VmRSS above which the phase fails.
const RSS_LIMIT_KIB: u64 = 512 * 1024;

/// Runs the phase.
pub fn run(world: &mut World, row: &mut Row) {
    let mut d = check::terminal(world, |b| {
        b.configure(|c| c.spool_grace(Duration::from_secs(2)))
    });
    d.spawn();
    check::grant(&d, "S-h1", 0);
    let pid = d.pid().expect("daemon running");
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(check::rss_kib(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let writer = Writer::start(
        d.spool.clone(),
        "h",
        world.profile.write_every,
        world.rng.u64(..),
        world.images.clone(),
    );
    writer.set_subjects(vec![
        Subject::consented("S-h1"),
        Subject::unconsented("S-hx"),
    ]);
    let rogue = Signer::new("rogue");
    let impostor = Signer::new(&d.fleet_signer.kid);
    let now = facegate::clock::now();
    let (_, replayed) = d.fleet_signer.command("status", json!({}), SITE, 3600, now);
    let revoke = json!({ "subject": "S-h1" });
    let commands = world.profile.hostile_commands;
    let entries = world.profile.hostile_entries;
    let every = (commands / entries.max(1)).max(1);
    let mut spool_n = 0u32;
    let replies_before = world.fleet.ledger().replies.len();
    for i in 0..commands {
        let now = facegate::clock::now();
        let (payload, qos): (Vec<u8>, QoS) = match world.rng.u8(..11) {
            0 => (random_bytes(&mut world.rng, 1, 3000), QoS::AtLeastOnce),
            1 => {
                let seg = |rng: &mut fastrand::Rng| {
                    (0..rng.usize(1..200))
                        .map(|_| rng.alphanumeric())
                        .collect::<String>()
                };
                let r = &mut world.rng;
                (
                    format!("{}.{}.{}", seg(r), seg(r), seg(r)).into_bytes(),
                    QoS::AtLeastOnce,
                )
            }
            2 => (
                rogue
                    .command("consent.revoke", revoke.clone(), SITE, 600, now)
                    .1
                    .into_bytes(),
                QoS::AtLeastOnce,
            ),
            3 => (
                impostor
                    .command("capture.purge", json!({"all": true}), SITE, 600, now)
                    .1
                    .into_bytes(),
                QoS::AtLeastOnce,
            ),
            4 => (
                d.fleet_signer
                    .command("consent.revoke", revoke.clone(), "other-site", 600, now)
                    .1
                    .into_bytes(),
                QoS::AtLeastOnce,
            ),
            5 => (
                d.fleet_signer
                    .command("consent.revoke", revoke.clone(), SITE, 600, now - 4000)
                    .1
                    .into_bytes(),
                QoS::AtLeastOnce,
            ),
            // Not yet valid (a take-away from the future is applied by
            // design, so this one asks for something else).
            6 => (
                d.fleet_signer
                    .command("status", json!({}), SITE, 600, now + 4000)
                    .1
                    .into_bytes(),
                QoS::AtLeastOnce,
            ),
            7 => (replayed.clone().into_bytes(), QoS::AtLeastOnce),
            // A consent key may sign a revocation but not a purge: wrong role.
            8 => (
                d.consent_signer
                    .command("capture.purge", json!({"all": true}), SITE, 600, now)
                    .1
                    .into_bytes(),
                QoS::AtLeastOnce,
            ),
            // A valid revocation at QoS 0: ignored, never applied.
            9 => (
                d.fleet_signer
                    .command("consent.revoke", revoke.clone(), SITE, 600, now)
                    .1
                    .into_bytes(),
                QoS::AtMostOnce,
            ),
            _ => {
                if world.rng.u8(..20) == 0 {
                    (vec![b'A'; 200 * 1024], QoS::AtLeastOnce)
                } else {
                    let claims = json!({
                        "jti": format!("h-{i}"), "iat": now, "exp": now + 600,
                        "aud": SITE, "cmd": "format.disk", "args": {}
                    });
                    let jws =
                        facegate::jws::sign(&claims, &d.fleet_signer.kid, &d.fleet_signer.pkcs8)
                            .expect("sign claims");
                    (jws.into_bytes(), QoS::AtLeastOnce)
                }
            }
        };
        world.fleet.publish(&world.rt, payload, qos);
        if i % every == 0 && spool_n < entries {
            hostile_entry(world, &d, spool_n);
            spool_n += 1;
        }
    }
    // Until the daemon has read everything: every command read is answered
    // (refusals too), so the replies stop coming.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (usize::MAX, Instant::now());
    while Instant::now() < deadline {
        let n = world.fleet.ledger().replies.len();
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let replies = world.fleet.ledger().replies.len() - replies_before;
    let c = d.counters();
    let consents = d.active_consents();
    if consents != 1 {
        row.failures.push(format!(
            "hostile: {consents} active consents after the flood, not 1"
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    let written = writer.finish();
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    row.peak_rss_kib = peak.load(Ordering::SeqCst);
    if row.peak_rss_kib > RSS_LIMIT_KIB {
        row.failures.push(format!(
            "hostile: peak VmRSS {} KiB over {RSS_LIMIT_KIB} KiB",
            row.peak_rss_kib
        ));
    }
    row.notes.push(format!(
        "{commands} hostile commands ({replies} answered; counters so far {} refused, {} ignored: refusals beyond the audit budget are counted when their window closes), {spool_n} hostile spool entries",
        c.commands_refused, c.commands_ignored
    ));
    finish(world, &mut d, &written, &Revocations::default(), row);
}

fn random_bytes(rng: &mut fastrand::Rng, min: usize, max: usize) -> Vec<u8> {
    (0..rng.usize(min..max)).map(|_| rng.u8(..)).collect()
}

/// One malformed spool entry named `x{n}…`.
fn hostile_entry(world: &mut World, d: &facegate_testkit::daemon::Daemon, n: u32) {
    let spool = &d.spool;
    let dir = spool.dir().to_path_buf();
    let name = format!("x{n:05}");
    let sidecar = facegate_testkit::spool::sidecar(Some("S-h1"));
    let image = &world.images[n as usize % world.images.len()];
    let r = match world.rng.u8(..9) {
        0 => spool
            .pair_with_sidecar(
                &name,
                "jpg",
                &random_bytes(&mut world.rng, 0, 5000),
                &sidecar,
            )
            .map(|_| ()),
        1 => spool
            .pair_with_sidecar(&name, "jpg", &image[..image.len() / 2], &sidecar)
            .map(|_| ()),
        2 => spool
            .pair_with_sidecar(&name, "jpg", image, b"{not json")
            .map(|_| ()),
        3 => spool
            .pair_with_sidecar(
                &name,
                "jpg",
                image,
                br#"{"subject":"bad subject!","captured_at":"2026-01-01T00:00:00Z","camera":"c"}"#,
            )
            .map(|_| ()),
        4 => spool
            .pair_with_sidecar(&name, "png", image, &sidecar)
            .map(|_| ()),
        5 => std::fs::write(dir.join(format!("{name}.jpg")), image),
        6 => std::fs::create_dir_all(dir.join(&name).join("inner")),
        7 => std::os::unix::fs::symlink("/etc/passwd", dir.join(format!("{name}.jpg"))),
        _ => spool
            .pair_with_sidecar(&name, "jpg", image, &vec![b' '; 1 << 20])
            .map(|_| ()),
    };
    if let Err(e) = r {
        eprintln!("hostile spool entry {name}: {e}");
    }
}
