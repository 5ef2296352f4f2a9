//! A device upgraded in the field: its state directory, written by an
//! earlier release, opened by this build. The fixture
//! (`tests/fixtures/upgrade/0.1.0/`, see its README) is the database and
//! storage key that facegate 0.1.0 as first released wrote: schema version 2,
//! captures sealed under their subject's key (before per-capture keys), two
//! consents, five queued captures. This build must migrate the schema, seal
//! each capture again under its own key, keep the audit chain verifiable and
//! upload every capture it held, once, with its image and metadata intact.
//!
//! The daemon runs with its wall clock set back (libfaketime) to an hour
//! after the fixture was written, so that the consents (180 days) and the
//! outbox retention (7 days) hold whenever the test runs; the broker's
//! certificates are valid from before that time.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use facegate_testkit::broker::{Broker, BrokerOptions};
use facegate_testkit::config::Role;
use facegate_testkit::daemon::Daemon;
use facegate_testkit::faketime::FakeClock;
use facegate_testkit::mqtt::Session;
use facegate_testkit::smallfs::SmallFs;
use facegate_testkit::util::wait_until;
use facegate_testkit::{DEVICE, SITE};
use ring::digest;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const CAPTURES: &str = "facegate/lobby/term-01/captures";
/// Where the fixture is.
const FIXTURE: &str = "tests/fixtures/upgrade/0.1.0";
/// 2026-12-01T14:05:00Z: when the fixture was written.
const WRITTEN_AT: i64 = 1_796_133_900;
/// The key that signed the fixture's consents (its `[[trust]]` entry).
const CONSENT_KID: &str = "consent-upgrade";
const CONSENT_PUBLIC_KEY: &str = "KZJu4bHTtRsbu95g8dyLmMJcXcDqjoFQSyanCqFFiOo";

/// Copies the fixture's files into `state` with the modes the daemon
/// requires (git does not keep 0600).
fn install_fixture(state: &Path) {
    fs::create_dir_all(state).expect("state dir");
    fs::set_permissions(state, fs::Permissions::from_mode(0o700)).expect("state dir mode");
    for name in ["facegate.db", "storage.key"] {
        let to = state.join(name);
        fs::copy(Path::new(FIXTURE).join(name), &to).expect("fixture file");
        fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).expect("0600");
    }
}

/// A broker whose certificates hold at the fixture's time, and a daemon on
/// it over the fixture (its state in `state_in` if given), its clock an hour
/// after the fixture was written; not started.
fn upgraded(state_in: Option<&Path>) -> (Broker, Daemon, FakeClock) {
    let broker = Broker::start_with(BrokerOptions {
        valid_from: Some(WRITTEN_AT - 86_400),
        ..Default::default()
    });
    let now = facegate::clock::now();
    let creds = broker.issue_client_valid(DEVICE, WRITTEN_AT - 86_400, now + 86_400);
    let mut builder = Daemon::builder()
        .mqtt("localhost", broker.port, &creds)
        .configure(|c| {
            c.trust(CONSENT_KID, Role::Consent, CONSENT_PUBLIC_KEY)
                .clock_ntp("ignore")
                .keep_alive(Duration::from_secs(5))
                .fast_reconnect()
        });
    if let Some(state) = state_in {
        builder = builder.state_in(state);
    }
    let mut d = builder.build();
    install_fixture(&d.state);
    // What the fixture is: 0.1.0's schema, five queued captures.
    let db = rusqlite::Connection::open(d.state.join("facegate.db")).expect("fixture opens");
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("schema version");
    let queued: i64 = db
        .query_row("SELECT count(*) FROM captures", [], |r| r.get(0))
        .expect("captures");
    drop(db);
    assert_eq!((version, queued), (2, 5), "the fixture is 0.1.0's");
    let clock = FakeClock::new(d.dir.path());
    clock.set_offset(WRITTEN_AT + 3_600 - now);
    d.run_env = clock.env();
    (broker, d, clock)
}

/// A session subscribed to the device's captures.
async fn subscriber(broker: &Broker) -> Session {
    let mut fleet = Session::spawn(broker.options("fleet"));
    fleet.wait_connected(T).await.expect("fleet connects");
    fleet.subscribe(CAPTURES, T).await;
    fleet
}

/// Waits for the fixture's five captures and checks each: once, of the
/// subjects and consents the fixture holds, with the camera's metadata and
/// an image whose digest is the one stored in 0.1.0.
async fn five_intact(fleet: &mut Session, d: &Daemon) {
    let mut seen: HashMap<String, Vec<Value>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + T;
    while seen.len() < 5 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(p) = fleet.recv_on(CAPTURES, left).await else {
            panic!("{} of 5 captures arrived\n{}", seen.len(), d.log());
        };
        let env: Value = serde_json::from_slice(&p.payload).expect("envelope is JSON");
        let id = env["capture_id"].as_str().expect("capture_id").to_string();
        seen.entry(id).or_default().push(env);
    }
    wait_until(T, || d.outbox_len() == 0, || d.log());
    let mut by_subject: HashMap<String, usize> = HashMap::new();
    let mut images = Vec::new();
    for envs in seen.values() {
        assert_eq!(envs.len(), 1, "a capture arrived more than once");
        let env = &envs[0];
        let subject = env["subject"].as_str().expect("subject").to_string();
        assert_eq!(env["site"], SITE);
        assert_eq!(env["device"], DEVICE);
        assert_eq!(env["camera"], "door-1");
        assert_eq!(env["content_type"], "image/jpeg");
        assert_eq!(env["consent_id"], format!("consent-{subject}"));
        let at = env["captured_at"].as_str().expect("captured_at");
        assert!(at.starts_with("2026-12-01T14:0"), "{at}");
        let image = base64::engine::general_purpose::STANDARD
            .decode(env["image"].as_str().expect("image"))
            .expect("base64");
        let sha = hex::encode(digest::digest(&digest::SHA256, &image));
        assert_eq!(
            env["sha256"],
            sha.as_str(),
            "the stored digest of the image"
        );
        let decoded = image::load_from_memory(&image).expect("a real image");
        assert_eq!((decoded.width(), decoded.height()), (640, 480));
        images.push(sha);
        *by_subject.entry(subject).or_default() += 1;
    }
    assert_eq!(
        by_subject,
        HashMap::from([("S-1".into(), 3), ("S-2".into(), 2)])
    );
    images.sort();
    images.dedup();
    assert_eq!(images.len(), 5, "five different images");
    let c = d.counters();
    assert_eq!((c.accepted, c.uploaded, c.purged), (5, 5, 0), "{c:?}");
    // The chain 0.1.0 began, continued by this build, still verifies.
    d.assert_audit_verifies();
    assert_eq!(d.audited("capture.uploaded").len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_written_by_the_first_release_uploads_everything_it_held() {
    let (broker, mut d, _clock) = upgraded(None);
    let mut fleet = subscriber(&broker).await;
    d.spawn();
    five_intact(&mut fleet, &d).await;
    d.stop();
}

/// The same upgrade on a disk with no byte free: 0.1.0 kept no space
/// reserve, so this build's first start finds none to release and SQLite
/// cannot make its shared-memory index. The daemon stops at once with an
/// error that says the disk is full and which database (systemd starts it
/// again); nothing 0.1.0 held is lost, and once space comes back the next
/// start migrates and uploads everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_on_a_full_disk_says_so_and_uploads_everything_once_space_is_back() {
    let Some(fs) = SmallFs::mount_or_skip(4 << 20) else {
        return;
    };
    let (broker, mut d, _clock) = upgraded(Some(&fs.path().join("state")));
    let filler = fs.fill();
    let mut child = d
        .command()
        .envs(d.run_env.iter().map(|(k, v)| (k, v)))
        .args(["run", "--config"])
        .arg(&d.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("facegate run");
    let deadline = std::time::Instant::now() + T;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("facegate run kept running on a full disk without its database");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(!status.success(), "{stderr}");
    let db = d.state.join("facegate.db");
    assert!(
        stderr.contains("disk full") && stderr.contains(&db.display().to_string()),
        "the error names the full disk and the database: {stderr}"
    );

    filler.free();
    let mut fleet = subscriber(&broker).await;
    d.spawn();
    five_intact(&mut fleet, &d).await;
    d.stop();
}
