//! What the device leaves behind of captures once they are uploaded, against
//! the real binary and a real Mosquitto with mutual TLS: no ciphertext and no
//! data key in any file of the state directory.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use facegate_testkit::broker::Broker;
use facegate_testkit::daemon::Daemon;
use facegate_testkit::synth;
use facegate_testkit::util::wait_until;
use rusqlite::{Connection, OpenFlags};

const T: Duration = Duration::from_secs(30);
/// Shortest run of bytes that counts as a copy.
const WINDOW: usize = 32;

/// Where (file, offset) any `WINDOW`-byte run of one of `secrets` occurs in a
/// regular file of `dir`; the first one found.
fn find_in_dir(dir: &Path, secrets: &[(&str, &[u8])]) -> Option<String> {
    let windows: HashSet<&[u8]> = secrets
        .iter()
        .flat_map(|(_, bytes)| bytes.windows(WINDOW))
        .collect();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("state directory")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            continue; // the control socket
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue; // removed meanwhile (the WAL after a checkpoint)
        };
        if let Some(at) = bytes.windows(WINDOW).position(|w| windows.contains(w)) {
            let what = secrets
                .iter()
                .find(|(_, s)| s.windows(WINDOW).any(|w| w == &bytes[at..at + WINDOW]))
                .map_or("?", |(name, _)| name);
            return Some(format!("{what} at offset {at} of {}", path.display()));
        }
    }
    None
}

/// The sealed blobs of every queued capture and the wrapped data keys, read
/// from the database file as anyone with the disk could.
fn stored_secrets(state: &Path) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let conn =
        Connection::open_with_flags(state.join("facegate.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the database read-only");
    let captures = conn
        .prepare("SELECT meta, image FROM captures ORDER BY seq")
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok([r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(0)?].concat())
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .expect("read the outbox");
    let keys = conn
        .prepare("SELECT wrapped FROM data_keys")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, Vec<u8>>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .expect("read the data keys");
    (captures, keys)
}

/// Fails on the old code: the PUBACK delete ran with `secure_delete` off
/// (`store.writer_zeroing(false)` in `outbox::ack`), so the checkpointed
/// database kept the ciphertext in its free pages, and nothing truncated the
/// WAL after uploads, so it kept the pages from before the delete (with
/// either one alone the scan below never comes out clean).
#[test]
fn uploaded_captures_leave_no_ciphertext_or_data_key_on_disk() {
    let mut broker = Broker::start();
    let d = Daemon::builder()
        .broker(&broker)
        .configure(|c| c.keep_alive(Duration::from_secs(5)).fast_reconnect())
        .start();
    d.grant("S-w");
    d.wait_uplink_connected(T);
    // Broker down: the captures wait in the outbox, where the test reads
    // their ciphertext.
    broker.stop();
    for i in 0..2 {
        d.drop_pair(
            &format!("w{i}"),
            "jpg",
            &synth::face_jpeg(320, 240, 40 + i, 85),
            Some("S-w"),
        );
    }
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 2);
    let (captures, keys) = stored_secrets(&d.state);
    assert_eq!((captures.len(), keys.len()), (2, 1));
    let mut secrets: Vec<(&str, &[u8])> = captures
        .iter()
        .map(|c| ("capture ciphertext", c.as_slice()))
        .collect();
    secrets.push(("wrapped data key", keys[0].as_slice()));
    // Control: the scan finds what is there.
    for (name, bytes) in &secrets {
        assert!(
            find_in_dir(&d.state, &[(name, bytes)]).is_some(),
            "{name} not found before the upload"
        );
    }

    broker.restart();
    wait_until(
        T,
        || d.outbox_len() == 0 && d.counters().uploaded == 2,
        || format!("captures not uploaded\n{}", d.log()),
    );
    // Housekeeping truncates the WAL within a few seconds of the deletes.
    let deadline = std::time::Instant::now() + T;
    while let Some(found) = find_in_dir(&d.state, &secrets) {
        assert!(
            std::time::Instant::now() < deadline,
            "still on disk {}s after the upload: {found}\n{}",
            T.as_secs(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
