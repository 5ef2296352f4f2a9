//! A full disk, on a real small file system (a tmpfs of a few MiB holding
//! the state directory, filled to the last byte by a filler file): deletes
//! after PUBACK that fail pause the uploads instead of sending the captures
//! again; everything resumes once space comes back.
//!
//! Mounting needs root (or CAP_SYS_ADMIN); elsewhere each test prints why it
//! is skipped.

use std::collections::HashMap;
use std::time::Duration;

use facegate::protocol::{IntakeState, StorageStatus};
use facegate_testkit::broker::Broker;
use facegate_testkit::daemon::Daemon;
use facegate_testkit::mqtt::Session;
use facegate_testkit::smallfs::SmallFs;
use facegate_testkit::synth;
use facegate_testkit::util::wait_until;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);
const CAPTURES: &str = "facegate/lobby/term-01/captures";
const CMD: &str = "facegate/lobby/term-01/cmd";
const REPLY: &str = "facegate/lobby/term-01/reply";
const MIB: u64 = 1024 * 1024;

async fn fleet(broker: &Broker) -> Session {
    let mut s = Session::spawn(broker.options("fleet"));
    s.wait_connected(T).await.expect("fleet connects");
    s.subscribe("facegate/#", T).await;
    s
}

/// Every upload envelope that arrives within `wait`, by capture id.
async fn collect_for(fleet: &mut Session, wait: Duration, seen: &mut HashMap<String, usize>) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        let Some(p) = fleet.recv_on(CAPTURES, left).await else {
            return;
        };
        let env: Value = serde_json::from_slice(&p.payload).expect("envelope is JSON");
        let id = env["capture_id"].as_str().expect("capture_id").to_string();
        *seen.entry(id).or_default() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_after_puback_pauses_uploads_instead_of_sending_again() {
    let Some(fs) = SmallFs::mount_or_skip(24 * MIB) else {
        return;
    };
    let mut broker = Broker::start();
    let d = Daemon::builder()
        .broker(&broker)
        .state_in(fs.path().join("state"))
        .spool_on_tmpfs()
        .configure(|c| {
            c.keep_alive(Duration::from_secs(5))
                .fast_reconnect()
                .reserve_bytes(0)
        })
        .start();
    d.grant("S-1");
    d.grant("S-2");
    d.wait_uplink_connected(T);
    // The fleet's persistent session exists before the broker goes away, so
    // what the device sends after the restart waits for it.
    drop(fleet(&broker).await);
    broker.stop();
    for i in 0..12 {
        d.drop_pair(
            &format!("c{i:02}"),
            "jpg",
            &synth::face_jpeg(640, 480, i, 90),
            Some("S-1"),
        );
    }
    d.drop_pair("x", "jpg", &synth::face_jpeg(320, 240, 99, 85), Some("S-2"));
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 13);
    // A revocation truncates the WAL: whatever is written next needs new
    // space on the file system.
    d.ctl(&["consent", "revoke", "S-2"]);
    assert_eq!(d.outbox_len(), 12);

    let filler = fs.fill();
    broker.restart();
    let mut fleet = fleet(&broker).await;
    // With the disk full every delete after PUBACK fails. Before, each
    // failure released the captures and they were sent again at once, over
    // and over; now they stay in flight and nothing is sent again.
    let mut seen = HashMap::new();
    collect_for(&mut fleet, Duration::from_secs(8), &mut seen).await;
    assert!(!seen.is_empty(), "uploads went out\n{}", d.log());
    for (id, n) in &seen {
        assert_eq!(*n, 1, "capture {id} delivered {n} times on a full disk");
    }
    assert!(
        d.log().contains("cannot delete acknowledged uploads"),
        "{}",
        d.log()
    );
    let storage = d.status().storage.expect("storage status");
    assert!(storage.deletes_failing, "{storage:?}");
    assert_eq!(d.outbox_len(), 12, "nothing could be deleted");
    // Held back, but acknowledged: `in_flight` counts only uploads awaiting
    // their PUBACK, `storage.deletes_failing` says why nothing moves.
    assert_eq!(d.status().uplink.expect("uplink").in_flight, 0);

    let db = fs.path().join("state").join("facegate.db");
    let db_len = || std::fs::metadata(&db).expect("database file").len();
    let full = db_len();

    // Space back: the deletes go through, the rest is sent, nothing twice.
    filler.free();
    wait_until(T, || d.outbox_len() == 0, || d.log());
    collect_for(&mut fleet, Duration::from_secs(2), &mut seen).await;
    assert_eq!(seen.len(), 12, "{seen:?}");
    for (id, n) in &seen {
        assert_eq!(*n, 1, "capture {id} delivered {n} times");
    }
    assert_eq!(d.counters().uploaded, 12);
    assert!(d.log().contains("uploads resume"), "{}", d.log());
    assert!(!d.status().storage.expect("storage status").deletes_failing);
    // The database gives the space of the deleted captures back.
    wait_until(
        T,
        || db_len() < full / 2,
        || format!("database {} bytes, was {full}\n{}", db_len(), d.log()),
    );
}

fn storage(d: &Daemon) -> StorageStatus {
    d.status().storage.expect("storage status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_a_full_disk_uses_the_reserve_and_intake_waits_for_space() {
    let Some(fs) = SmallFs::mount_or_skip(24 * MIB) else {
        return;
    };
    let reserve = 4 * MIB;
    let mut broker = Broker::start();
    let d = Daemon::builder()
        .broker(&broker)
        .state_in(fs.path().join("state"))
        .spool_on_tmpfs()
        .configure(|c| {
            c.keep_alive(Duration::from_secs(5))
                .fast_reconnect()
                .reserve_bytes(reserve)
        })
        .start();
    d.grant("S-1");
    d.grant("S-2");
    d.wait_uplink_connected(T);
    drop(fleet(&broker).await);
    broker.stop();
    let reserve_file = fs.path().join("state").join("facegate.reserve");
    assert_eq!(std::fs::metadata(&reserve_file).unwrap().len(), reserve);
    for i in 0..6 {
        let image = synth::face_jpeg(320, 240, i, 85);
        d.drop_pair(&format!("a{i}"), "jpg", &image, Some("S-1"));
    }
    for i in 0..3 {
        let image = synth::face_jpeg(320, 240, 10 + i, 85);
        d.drop_pair(&format!("b{i}"), "jpg", &image, Some("S-2"));
    }
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 9);
    let s = storage(&d);
    assert_eq!((s.reserve_bytes, s.reserve_held), (reserve, reserve));
    assert_eq!(s.intake, IntakeState::Running);

    let filler = fs.fill();
    // Intake holds a new capture back: the spool keeps it, status says why.
    d.drop_pair(
        "b9",
        "jpg",
        &synth::face_jpeg(320, 240, 19, 85),
        Some("S-2"),
    );
    wait_until(
        T,
        || storage(&d).intake == IntakeState::PausedDiskFull,
        || d.log(),
    );
    assert!(d.spool_len() > 0, "the pair stays in the spool");
    assert_eq!(d.outbox_len(), 9);
    assert!(d.log().contains("intake paused"), "{}", d.log());

    // A revocation on the full disk succeeds with its receipt: the reserve
    // gives the room.
    let receipt = d.ctl_json(&["consent", "revoke", "S-1"]);
    assert_eq!(receipt["purged"], 6, "{receipt}");
    assert_eq!(d.outbox_len(), 3);
    assert!(
        d.log().contains("releasing the space reserve"),
        "{}",
        d.log()
    );
    assert!(storage(&d).reserve_held < reserve);

    // Space back: intake resumes, the reserve is written again, uploads go
    // out, and nothing of the revoked subject.
    filler.free();
    d.wait_spool_empty(T);
    wait_until(
        T,
        || {
            let s = storage(&d);
            s.reserve_held == reserve && s.intake == IntakeState::Running
        },
        || format!("{:?}\n{}", storage(&d), d.log()),
    );
    broker.restart();
    let mut fleet = fleet(&broker).await;
    wait_until(T, || d.outbox_len() == 0, || d.log());
    let mut seen = HashMap::new();
    collect_subjects(&mut fleet, Duration::from_secs(2), &mut seen).await;
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.values().all(|s| s == "S-2"), "{seen:?}");
}

/// The subject of every upload envelope that arrives within `wait`, by capture id.
async fn collect_subjects(fleet: &mut Session, wait: Duration, seen: &mut HashMap<String, String>) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        let Some(p) = fleet.recv_on(CAPTURES, left).await else {
            return;
        };
        let env: Value = serde_json::from_slice(&p.payload).expect("envelope is JSON");
        let id = env["capture_id"].as_str().expect("capture_id").to_string();
        let subject = env["subject"].as_str().expect("subject").to_string();
        seen.insert(id, subject);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_revocation_reaches_a_device_restarted_on_a_full_disk() {
    let Some(fs) = SmallFs::mount_or_skip(24 * MIB) else {
        return;
    };
    let mut broker = Broker::start();
    let mut d = Daemon::builder()
        .broker(&broker)
        .state_in(fs.path().join("state"))
        .spool_on_tmpfs()
        .configure(|c| {
            c.keep_alive(Duration::from_secs(5))
                .fast_reconnect()
                .reserve_bytes(4 * MIB)
        })
        .start();
    d.grant("S-1");
    d.grant("S-2");
    d.wait_uplink_connected(T);
    broker.stop();
    for i in 0..4 {
        let image = synth::face_jpeg(320, 240, i, 85);
        d.drop_pair(&format!("a{i}"), "jpg", &image, Some("S-1"));
        let image = synth::face_jpeg(320, 240, 10 + i, 85);
        d.drop_pair(&format!("b{i}"), "jpg", &image, Some("S-2"));
    }
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 8);
    d.stop();

    // The disk fills while the device is down; the fleet revokes S-1 meanwhile.
    let filler = fs.fill();
    broker.restart();
    let mut fleet = fleet(&broker).await;
    let jws = d
        .fleet_signer
        .command(
            "consent.revoke",
            json!({ "subject": "S-1" }),
            facegate_testkit::SITE,
            600,
            facegate::clock::now(),
        )
        .1;
    fleet.publish(CMD, jws).await;
    fleet.wait_puback(T).await.expect("broker took the command");

    // The device starts on the full disk and applies it: the reply is kept
    // with the effect, in the transaction the reserve made room for.
    d.spawn();
    let reply: Value =
        serde_json::from_slice(&fleet.recv_on(REPLY, T).await.expect("reply").payload).unwrap();
    assert_eq!(reply["ok"], true, "{reply}\n{}", d.log());
    assert_eq!(reply["result"]["purged"], 4, "{reply}");
    assert_eq!(d.outbox_len(), 4);

    filler.free();
    wait_until(T, || d.outbox_len() == 0, || d.log());
    let mut seen = HashMap::new();
    collect_subjects(&mut fleet, Duration::from_secs(2), &mut seen).await;
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.values().all(|s| s == "S-2"), "{seen:?}");
}
