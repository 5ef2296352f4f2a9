//! Operating the daemon: SIGHUP reloads (valid, invalid, restart-only changes)
//! and SIGTERM draining.

use std::time::Duration;

use facegate_testkit::daemon::{Daemon, CONSENT_KID};
use facegate_testkit::signer::Signer;
use facegate_testkit::synth;
use facegate_testkit::util::wait_until;

const T: Duration = Duration::from_secs(20);

fn rejected(d: &Daemon) -> u64 {
    d.counters().rejected_bad_input
}

#[test]
fn sighup_applies_live_settings_and_reports_the_rest() {
    let d = Daemon::start();
    d.grant("S-1");
    d.drop_pair(
        "before",
        "jpg",
        &synth::face_jpeg(320, 240, 1, 80),
        Some("S-1"),
    );
    d.wait_spool_empty(T);
    assert_eq!(d.counters().accepted, 1);

    // Narrower capture limits apply live; a device id change needs a restart.
    let original = std::fs::read_to_string(&d.config).unwrap();
    let changed = original.replace("device_id = \"term-01\"", "device_id = \"term-77\"")
        + "\n[capture]\nmax_width = 200\nmax_height = 200\n";
    std::fs::write(&d.config, changed).unwrap();
    d.signal("HUP");
    wait_until(T, || d.log().contains("configuration reloaded"), || d.log());
    assert!(
        d.log().contains("need a restart"),
        "restart-only change not reported:\n{}",
        d.log()
    );
    d.drop_pair(
        "after",
        "jpg",
        &synth::face_jpeg(320, 240, 2, 80),
        Some("S-1"),
    );
    d.wait_spool_empty(T);
    assert_eq!(rejected(&d), 1, "the new max_width did not apply");
    // Logged with the reason and the pair's tag (spool names are never shown).
    assert!(
        d.log().contains("more than the limit of 200x200"),
        "{}",
        d.log()
    );
    // The device id is still the running one.
    let c = d.counters();
    assert_eq!(c.accepted, 1, "{c:?}");
}

#[test]
fn sighup_with_an_invalid_config_keeps_the_running_one() {
    let d = Daemon::start();
    d.grant("S-2");
    let original = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        original.clone() + "\n[capture]\nmax_widht = 10\n",
    )
    .unwrap();
    d.signal("HUP");
    wait_until(T, || d.log().contains("reload refused"), || d.log());
    assert!(
        d.log().contains("capture.max_widht"),
        "the refusal names the key:\n{}",
        d.log()
    );
    // (`ctl` reads the same file to find the socket: put it back, without a reload.)
    std::fs::write(&d.config, original).unwrap();
    // Still running, still with the old limits.
    d.drop_pair("ok", "jpg", &synth::face_jpeg(320, 240, 3, 80), Some("S-2"));
    d.wait_spool_empty(T);
    assert_eq!(d.counters().accepted, 1);
}

/// Withdrawing a consent key by SIGHUP voids what it signed: the next
/// housekeeping run purges the queued captures of its subjects, with no
/// broker reachable (the uplink never gets to re-check them).
#[test]
fn sighup_removing_a_consent_key_purges_queued_captures_without_a_broker() {
    let d = Daemon::start();
    d.grant("S-key");
    for i in 0..2 {
        d.drop_pair(
            &format!("k{i}"),
            "jpg",
            &synth::face_jpeg(320, 240, 10 + i, 80),
            Some("S-key"),
        );
    }
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 2);

    // The consent key is rotated out: its kid and public key are gone, a new
    // consent key takes its place.
    let next = Signer::new("consent-next");
    let original = std::fs::read_to_string(&d.config).unwrap();
    let rotated = original
        .replace(
            &format!("kid = \"{CONSENT_KID}\""),
            &format!("kid = \"{}\"", next.kid),
        )
        .replace(&d.consent_signer.public_b64, &next.public_b64);
    assert_ne!(rotated, original);
    std::fs::write(&d.config, rotated).unwrap();
    d.signal("HUP");
    wait_until(
        T,
        || d.outbox_len() == 0,
        || format!("{:?}\n{}", d.status(), d.log()),
    );
    let c = d.counters();
    assert_eq!(c.purged, 2, "{c:?}");
    assert_eq!(c.uploaded, 0, "{c:?}");
    let purged = d.audited("capture.purged");
    assert_eq!(purged.len(), 1, "{purged:?}");
    assert_eq!(
        purged[0]["detail"]["reason"], "consent_invalid",
        "{purged:?}"
    );
    assert_eq!(purged[0]["detail"]["count"], 2, "{purged:?}");
}

#[test]
fn sigterm_drains_and_loses_nothing() {
    let mut d = Daemon::start();
    d.grant("S-3");
    let n = 60;
    for i in 0..n {
        d.drop_pair(
            &format!("t{i:02}"),
            "jpg",
            &synth::face_jpeg(320, 240, i, 80),
            Some("S-3"),
        );
    }
    let started = std::time::Instant::now();
    let st = d.stop();
    assert!(st.success(), "exit status {st}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        started.elapsed()
    );
    // Everything is either committed or still in the spool; a restart finishes it.
    d.spawn();
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), n);
}
