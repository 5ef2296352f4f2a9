//! The core flow through the real binary: spool → sanitize → consent gate →
//! encrypted outbox, driven by files and `facegate ctl` like in the field.

use std::time::Duration;

use facegate::crypto::DeviceKey;
use facegate::store::Store;
use facegate_testkit::daemon::Daemon;
use facegate_testkit::synth;
use facegate_testkit::util::{contains, file_contains, wait_until};

const T: Duration = Duration::from_secs(20);

fn open_store(d: &Daemon) -> Store {
    let key = DeviceKey::load_or_create(&d.state.join("storage.key")).unwrap();
    Store::open(&d.state, key).unwrap()
}

#[test]
fn consented_captures_are_queued_and_others_dropped() {
    let d = Daemon::start();
    d.grant("S-yes");
    let jpeg = synth::face_jpeg(320, 240, 1, 85);
    d.drop_pair("a", "jpg", &jpeg, Some("S-yes"));
    d.drop_pair("b", "jpg", &jpeg, Some("S-no"));
    d.drop_pair("c", "jpg", &jpeg, None);
    d.drop_pair("d", "png", &synth::face_png(64, 64, 2), Some("S-yes"));
    d.wait_spool_empty(T);

    // `ctl status --json` prints the SPEC status object.
    let raw = d.ctl_json(&["status", "--json"]);
    assert_eq!(raw["v"], 1);
    assert_eq!(raw["state"], "online");
    assert_eq!(raw["outbox"]["captures"], 2, "{raw}");
    assert_eq!(raw["counters"]["accepted"], 2, "{raw}");
    assert_eq!(raw["counters"]["dropped_no_consent"], 2, "{raw}");
    assert_eq!(raw["consent"]["active"], 1);
    let st = d.status();
    assert_eq!(st.outbox.unwrap().captures, 2);
    assert_eq!(st.counters.unwrap().accepted, 2);

    let mut store = open_store(&d);
    let queued = store.pending(10, &[]).unwrap();
    assert_eq!(queued.len(), 2);
    assert!(queued.iter().all(|c| c.subject == "S-yes"));
    let types: Vec<&str> = queued.iter().map(|c| c.content_type.as_str()).collect();
    assert!(
        types.contains(&"image/jpeg") && types.contains(&"image/png"),
        "{types:?}"
    );
}

#[test]
fn bad_input_is_rejected_with_a_reason_and_the_daemon_keeps_going() {
    let d = Daemon::start();
    d.grant("S-1");
    let jpeg = synth::face_jpeg(320, 240, 3, 85);
    d.drop_pair("truncated", "jpg", &jpeg[..jpeg.len() / 2], Some("S-1"));
    d.drop_pair(
        "garbage",
        "jpg",
        b"this is not an image at all",
        Some("S-1"),
    );
    d.drop_pair("wrongext", "png", &jpeg, Some("S-1"));
    d.spool
        .pair_with_sidecar("badjson", "jpg", &jpeg, b"{not json")
        .unwrap();
    d.drop_pair("good", "jpg", &jpeg, Some("S-1"));
    d.wait_spool_empty(T);
    let c = d.counters();
    assert_eq!(c.rejected_bad_input, 4, "{c:?}");
    assert_eq!(c.accepted, 1);
    // Each rejection is logged with a reason and the pair's tag (never its
    // name), and the audit row carries the same tag.
    let log = d.log();
    let mut logged: Vec<String> = log
        .lines()
        .filter(|l| l.contains("rejected spool pair"))
        .map(|l| field(l, "pair"))
        .collect();
    for name in ["truncated", "garbage", "wrongext", "badjson"] {
        for shown in [format!("={name}"), format!("{name}.")] {
            assert!(!log.contains(&shown), "log names pair {name}:\n{log}");
        }
    }
    assert!(
        log.contains("not valid JSON") || log.contains("sidecar is not valid"),
        "{log}"
    );
    let tail = d.ctl_json(&["audit", "tail", "-n", "50", "--json"]);
    let mut audited: Vec<String> = tail
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "capture.rejected")
        .map(|e| e["detail"]["pair"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(audited.len(), 4, "{tail}");
    logged.sort();
    audited.sort();
    assert_eq!(logged, audited, "log and audit show the same tags");
}

/// A hostile JPEG that makes the JPEG decoder panic (a fuzzing finding,
/// tests/fixtures/fuzz/sanitize/jpeg-decoder-panic.jpg) is rejected like any
/// broken file; the daemon neither dies nor loops on it, and the capture
/// behind it is accepted (ARCHITECTURE I16).
#[test]
fn a_file_that_panics_the_decoder_is_rejected_and_the_daemon_keeps_going() {
    let mut d = Daemon::start();
    d.grant("S-1");
    let hostile = include_bytes!("fixtures/fuzz/sanitize/jpeg-decoder-panic.jpg");
    d.drop_pair("hostile", "jpg", hostile, Some("S-1"));
    d.wait_spool_empty(T);
    d.drop_pair(
        "good",
        "jpg",
        &synth::face_jpeg(320, 240, 4, 85),
        Some("S-1"),
    );
    d.wait_spool_empty(T);
    let c = d.counters();
    assert_eq!(c.rejected_bad_input, 1, "{c:?}");
    assert_eq!(c.accepted, 1, "{c:?}");
    // Still the first process, and it stops cleanly.
    let status = d.stop();
    assert!(status.success(), "{status}:\n{}", d.log());
    let log = d.log();
    if std::arch::is_x86_feature_detected!("avx2") {
        assert!(
            log.contains("the JPEG decoder failed on this image"),
            "{log}"
        );
    }
    // The decoder's panic is no crash report: not printed by the default
    // hook, only noted at debug level.
    assert!(
        !log.contains("thread '"),
        "a panic was reported as a crash:\n{log}"
    );
}

/// The value of `name=` in a text log line.
fn field(line: &str, name: &str) -> String {
    let start = line
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name}= in {line}"))
        + name.len()
        + 1;
    line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_string()
}

/// Cameras may put subject ids in spool names: none may reach the daemon's
/// log, the audit log (`ctl audit tail`, text and JSON) or the database files,
/// whatever happens to the entry: accepted, dropped, rejected, stray, a
/// directory, a link.
#[test]
fn spool_names_never_reach_the_log_or_the_audit_log() {
    // Not hex digits alone: "4711" also turns up by chance in the audit
    // chain's hashes.
    let marker = "S-4711";
    let mut d = Daemon::builder()
        .configure(|c| c.spool_grace(Duration::from_secs(1)).log_level("debug"))
        .start();
    d.grant("S-1");
    let jpeg = synth::face_jpeg(320, 240, 5, 85);
    let spool = d.spool.dir().to_path_buf();
    d.drop_pair("S-4711-accepted", "jpg", &jpeg, Some("S-1"));
    d.drop_pair("S-4711-dropped", "jpg", &jpeg, Some("S-2"));
    d.drop_pair("S-4711-garbage", "jpg", b"not an image", Some("S-1"));
    d.drop_pair("S-4711-wrongext", "png", &jpeg, Some("S-1"));
    d.spool
        .pair_with_sidecar("S-4711-badjson", "jpg", &jpeg, b"{not json")
        .unwrap();
    std::fs::write(spool.join("S-4711-lone.jpg"), &jpeg).unwrap();
    std::fs::write(spool.join("S-4711.tmp"), b"x").unwrap();
    std::fs::create_dir(spool.join("S-4711-dir")).unwrap();
    std::os::unix::fs::symlink("/nonexistent", spool.join("S-4711-link.jpg")).unwrap();
    d.wait_spool_empty(T);
    let c = d.counters();
    assert_eq!((c.accepted, c.dropped_no_consent), (1, 1), "{c:?}");
    assert_eq!(c.rejected_bad_input, 3 + 4, "{c:?}");

    let log = d.log();
    assert!(log.contains("removed stray spool entry"), "{log}");
    assert!(
        !log.contains(marker),
        "a spool name reached the log:\n{log}"
    );
    let json = d.ctl(&["audit", "tail", "-n", "100", "--json"]);
    assert!(json.contains("spool.orphan_removed"), "{json}");
    assert!(
        !json.contains(marker),
        "a spool name reached the audit log:\n{json}"
    );
    let text = d.ctl(&["audit", "tail", "-n", "100"]);
    assert!(!text.contains(marker), "{text}");
    d.stop();
    for f in ["facegate.db", "facegate.db-wal"] {
        assert!(
            !file_contains(&d.state.join(f), marker.as_bytes()),
            "a spool name is in {f}"
        );
    }
}

/// A directory in the spool (with files, a subdirectory and links pointing
/// outside) is removed with its contents after the grace period, reported in
/// the log and the audit log by its tag; nothing outside the spool is touched.
#[test]
fn spool_directories_and_links_are_removed_and_reported() {
    let d = Daemon::builder()
        .configure(|c| c.spool_grace(Duration::from_secs(1)))
        .start();
    let outside = tempfile::tempdir().unwrap();
    let keep = outside.path().join("keep.jpg");
    std::fs::write(&keep, b"not the spool's").unwrap();
    let spool = d.spool.dir().to_path_buf();
    let sub = spool.join("S-4711-batch");
    std::fs::create_dir_all(sub.join("inner")).unwrap();
    std::fs::write(sub.join("a.jpg"), b"x").unwrap();
    std::fs::write(sub.join("inner").join("a.json"), b"{}").unwrap();
    std::os::unix::fs::symlink(outside.path(), sub.join("to-outside")).unwrap();
    std::os::unix::fs::symlink(&keep, sub.join("inner").join("to-file.jpg")).unwrap();
    std::os::unix::fs::symlink(outside.path(), spool.join("S-4711-dirlink")).unwrap();
    d.wait_spool_empty(T);

    assert_eq!(std::fs::read(&keep).unwrap(), b"not the spool's");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    let log = d.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("removed stray spool entry"))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    let dir_line = lines
        .iter()
        .find(|l| l.contains("a directory"))
        .unwrap_or_else(|| panic!("directory not reported:\n{log}"));
    let tail = d.ctl_json(&["audit", "tail", "-n", "50", "--json"]);
    let removed: Vec<&serde_json::Value> = tail
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "spool.orphan_removed")
        .collect();
    assert_eq!(removed.len(), 2, "{tail}");
    let dir_row = removed
        .iter()
        .find(|e| e["detail"]["reason"] == "directory")
        .unwrap_or_else(|| panic!("{tail}"));
    assert_eq!(dir_row["detail"]["entry"], field(dir_line, "entry"));
    assert!(removed
        .iter()
        .any(|e| e["detail"]["reason"] == "not_regular_file"));
    // "S-4711", not "4711": the audit chain's hashes may hold those digits.
    assert!(!log.contains("S-4711") && !tail.to_string().contains("S-4711"));
}

#[test]
fn metadata_is_stripped_and_no_plaintext_reaches_the_database() {
    let mut d = Daemon::start();
    d.grant("S-meta");
    let marker = "GPS-MARKER-7f3a9c";
    let jpeg = synth::with_exif_gps(&synth::face_jpeg(640, 480, 4, 85), marker);
    assert!(contains(&jpeg, marker.as_bytes()));
    d.drop_pair("exif", "jpg", &jpeg, Some("S-meta"));
    d.wait_spool_empty(T);
    d.stop();

    let mut store = open_store(&d);
    let queued = store.pending(10, &[]).unwrap();
    assert_eq!(queued.len(), 1);
    let img = &queued[0].image;
    assert!(
        !contains(img, marker.as_bytes()),
        "marker survived sanitization"
    );
    assert!(!contains(img, b"Exif\0\0"), "EXIF segment survived");
    assert!(!contains(img, b"http://ns.adobe.com/xap"), "XMP survived");
    let decoded = image::load_from_memory(img).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (640, 480));
    drop(store);

    // The sanitized image bytes are nowhere in the database files in plaintext.
    let probe = &img[img.len() / 2..img.len() / 2 + 64];
    for f in ["facegate.db", "facegate.db-wal"] {
        assert!(
            !file_contains(&d.state.join(f), probe),
            "plaintext image bytes found in {f}"
        );
        assert!(
            !file_contains(&d.state.join(f), marker.as_bytes()),
            "marker found in {f}"
        );
    }
}

#[test]
fn revoke_purges_every_trace_of_the_subject() {
    let d = Daemon::start();
    let subject = "S-REVOKE-MARKER-51c2";
    d.grant(subject);
    d.grant("S-keep");
    for i in 0..5 {
        d.drop_pair(
            &format!("r{i}"),
            "jpg",
            &synth::face_jpeg(320, 240, 10 + i, 85),
            Some(subject),
        );
    }
    d.drop_pair(
        "k",
        "jpg",
        &synth::face_jpeg(320, 240, 99, 85),
        Some("S-keep"),
    );
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 6);

    let receipt = d.ctl_json(&["consent", "revoke", subject]);
    assert_eq!(receipt["subject"], subject);
    assert_eq!(receipt["purged"], 5, "{receipt}");
    assert!(receipt["in_flight"].as_array().unwrap().is_empty());
    assert!(receipt["purged_at"].as_str().is_some());

    let st = d.status();
    assert_eq!(st.outbox.unwrap().captures, 1);
    assert_eq!(st.counters.unwrap().purged, 5);
    for f in ["facegate.db", "facegate.db-wal", "facegate.db-shm"] {
        assert!(
            !file_contains(&d.state.join(f), subject.as_bytes()),
            "subject id still in {f}"
        );
    }
    assert_eq!(d.spool_len(), 0);

    // A capture arriving after the revocation is dropped; an old token is refused.
    d.drop_pair(
        "late",
        "jpg",
        &synth::face_jpeg(320, 240, 7, 85),
        Some(subject),
    );
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 1);
    let old = d
        .consent_signer
        .consent_at(subject, 3600, facegate::clock::now() - 10);
    let out = d.try_ctl(&["consent", "add", &old]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn purge_keeps_consents() {
    let d = Daemon::start();
    d.grant("S-p");
    d.drop_pair("p1", "jpg", &synth::face_jpeg(160, 120, 1, 80), Some("S-p"));
    d.wait_spool_empty(T);
    let receipt = d.ctl_json(&["purge", "S-p"]);
    assert_eq!(receipt["purged"], 1);
    d.drop_pair("p2", "jpg", &synth::face_jpeg(160, 120, 2, 80), Some("S-p"));
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 1, "consent must survive a purge");
    let all = d.ctl_json(&["purge", "--all"]);
    assert_eq!(all["purged"], 1);
    assert_eq!(d.outbox_len(), 0);
}

#[test]
fn audit_tampering_is_detected() {
    let mut d = Daemon::start();
    d.grant("S-a");
    d.drop_pair("x", "jpg", &synth::face_jpeg(160, 120, 1, 80), Some("S-a"));
    d.drop_pair(
        "y",
        "jpg",
        &synth::face_jpeg(160, 120, 2, 80),
        Some("S-other"),
    );
    d.wait_spool_empty(T);
    let ok = d.try_ctl(&["audit", "verify"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    d.stop();

    let conn = rusqlite::Connection::open(d.state.join("facegate.db")).unwrap();
    let changed = conn
        .execute(
            "UPDATE audit SET detail = '{\"reason\":\"nothing to see\"}' WHERE seq = 2",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);

    d.spawn();
    let bad = d.try_ctl(&["audit", "verify"]);
    assert!(
        !bad.status.success(),
        "tampering went unnoticed: {}",
        String::from_utf8_lossy(&bad.stdout)
    );
}

#[test]
fn kill9_during_a_burst_loses_no_accepted_capture() {
    let mut d = Daemon::start();
    d.grant("S-burst");
    let n = 120;
    let images: Vec<Vec<u8>> = (0..8)
        .map(|i| synth::face_jpeg(320, 240, 100 + i, 85))
        .collect();
    for i in 0..n {
        d.drop_pair(
            &format!("b{i:03}"),
            "jpg",
            &images[i % images.len()],
            Some("S-burst"),
        );
        if i == n / 3 {
            // Let intake get going, then pull the plug mid-stream.
            wait_until(T, || d.counters().accepted > 0, || d.log());
        }
    }
    d.kill9();
    let spool_left = d.spool_len();
    d.spawn();
    // A kill between the two unlinks of a handled pair leaves a lone sidecar:
    // removed at once (not after the grace period), and not blamed on the camera.
    d.wait_spool_empty(T);
    let st = d.status();
    assert_eq!(d.counters().rejected_bad_input, 0, "{st:?}");
    assert_eq!(
        st.outbox.unwrap().captures,
        n as u64,
        "spool had {spool_left} files at the kill; {st:?}"
    );
    let mut store = open_store(&d);
    let ids: std::collections::HashSet<facegate::ids::CaptureId> = store
        .pending(1000, &[])
        .unwrap()
        .into_iter()
        .map(|c| c.capture.capture_id)
        .collect();
    assert_eq!(ids.len(), n, "duplicate or missing capture ids");
}

#[test]
fn sigterm_stops_cleanly() {
    let mut d = Daemon::start();
    let st = d.stop();
    assert!(st.success(), "exit status {st}");
    assert!(
        !d.state.join("control.sock").exists(),
        "control socket left behind"
    );
}

#[test]
fn expired_consent_is_swept_and_its_captures_purged() {
    let d = Daemon::start();
    let token = d.consent_signer.consent("S-short", 3);
    d.ctl(&["consent", "add", &token]);
    d.grant("S-long");
    d.drop_pair(
        "s1",
        "jpg",
        &synth::face_jpeg(160, 120, 1, 80),
        Some("S-short"),
    );
    d.drop_pair(
        "l1",
        "jpg",
        &synth::face_jpeg(160, 120, 2, 80),
        Some("S-long"),
    );
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 2);
    // Housekeeping runs every few seconds: the expired consent goes, and with
    // it the capture that nothing authorizes any more.
    wait_until(T, || d.outbox_len() == 1, || d.log());
    assert_eq!(d.active_consents(), 1);
    let tail = d.ctl_json(&["audit", "tail", "-n", "50", "--json"]);
    let kinds: Vec<&str> = tail
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"consent.expired"), "{kinds:?}");
    assert!(kinds.contains(&"capture.purged"), "{kinds:?}");
}

/// Intake wakes on the sidecar's rename (inotify): with a safety-net scan
/// of five minutes, a capture written after the first scan is still taken
/// at once (the test gives it 20 s, a fifteenth of the scan interval).
#[test]
fn a_capture_is_taken_without_waiting_for_the_scan() {
    let d = Daemon::builder()
        .configure(|c| c.poll_interval(Duration::from_secs(300)))
        .start();
    d.grant("S-yes");
    // Intake has made its first scan: the daemon answered, and the log says
    // intake runs (its first scan came before its first wait).
    wait_until(T, || d.log().contains("intake running"), || d.log());
    std::thread::sleep(Duration::from_millis(200));
    let jpeg = synth::face_jpeg(320, 240, 11, 85);
    d.drop_pair("late-yes", "jpg", &jpeg, Some("S-yes"));
    d.drop_pair("late-no", "jpg", &jpeg, Some("S-no"));
    d.wait_spool_empty(T);
    let c = d.counters();
    assert_eq!((c.accepted, c.dropped_no_consent), (1, 1), "{c:?}");
    // Not the fallback polling of a spool inotify cannot watch.
    assert!(!d.log().contains("cannot watch the spool"), "{}", d.log());
}

/// Drop counts are kept in memory between writes; the status shows them at
/// once, and a clean stop writes them: they are in the store after the
/// stop, with one `capture.dropped` summary row naming no subject.
#[test]
fn drop_counts_survive_a_clean_stop() {
    let mut d = Daemon::start();
    let jpeg = synth::face_jpeg(320, 240, 12, 85);
    for i in 0..3 {
        d.drop_pair(&format!("n{i}"), "jpg", &jpeg, Some("S-nobody"));
    }
    d.wait_spool_empty(T);
    wait_until(
        T,
        || d.counters().dropped_no_consent == 3,
        || format!("{:?}", d.counters()),
    );
    let st = d.stop();
    assert!(st.success(), "exit status {st}");

    let mut store = open_store(&d);
    let counters = store.counters().unwrap();
    assert_eq!(counters.get("dropped_no_consent"), Some(&3), "{counters:?}");
    let rows: Vec<_> = store
        .audit_tail(100)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "capture.dropped")
        .collect();
    let total: u64 = rows
        .iter()
        .map(|e| e.detail["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 3, "{rows:?}");
    assert!(rows
        .iter()
        .all(|e| e.subject_ref.is_none() && !e.detail.to_string().contains("S-nobody")));
    drop(store);

    d.spawn();
    assert_eq!(d.counters().dropped_no_consent, 3);
}
