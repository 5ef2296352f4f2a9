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
use std::time::Duration;

use base64::Engine;
use facegate_testkit::broker::{Broker, BrokerOptions};
use facegate_testkit::config::Role;
use facegate_testkit::daemon::Daemon;
use facegate_testkit::faketime::FakeClock;
use facegate_testkit::mqtt::Session;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_written_by_the_first_release_uploads_everything_it_held() {
    let broker = Broker::start_with(BrokerOptions {
        valid_from: Some(WRITTEN_AT - 86_400),
        ..Default::default()
    });
    let now = facegate::clock::now();
    let creds = broker.issue_client_valid(DEVICE, WRITTEN_AT - 86_400, now + 86_400);
    let mut d = Daemon::builder()
        .mqtt("localhost", broker.port, &creds)
        .configure(|c| {
            c.trust(CONSENT_KID, Role::Consent, CONSENT_PUBLIC_KEY)
                .clock_ntp("ignore")
                .keep_alive(Duration::from_secs(5))
                .fast_reconnect()
        })
        .build();
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

    let mut fleet = Session::spawn(broker.options("fleet"));
    fleet.wait_connected(T).await.expect("fleet connects");
    fleet.subscribe(CAPTURES, T).await;
    d.spawn();

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

    // Each capture once, of the subjects and consents the fixture holds,
    // with the camera's metadata and an image whose digest is the one
    // stored in 0.1.0.
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
    let verify = d.try_ctl(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(d.audited("capture.uploaded").len(), 5);
    d.stop();
}
