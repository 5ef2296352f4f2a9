//! What the device leaves behind, against the real binary: of captures once
//! they are uploaded (with a real Mosquitto over mutual TLS), no capture key
//! and no data key in any file of the state directory (what may remain of
//! their ciphertext is under keys that exist nowhere: ARCHITECTURE I4); of
//! the running daemon, nothing another process of its user can dump or read.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use facegate_testkit::broker::Broker;
use facegate_testkit::daemon::{facegate_binary, Daemon};
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

/// Byte strings read from the database.
type Blobs = Vec<Vec<u8>>;

/// The sealed blobs of every queued capture, their wrapped keys and the
/// wrapped data keys, read from the database file as anyone with the disk
/// could.
fn stored_secrets(state: &Path) -> (Blobs, Blobs, Blobs) {
    let conn =
        Connection::open_with_flags(state.join("facegate.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the database read-only");
    // One blob per row: the columns of the row, concatenated.
    let blobs = |sql: &str| -> Blobs {
        conn.prepare(sql)
            .and_then(|mut s| {
                s.query_map([], |r| {
                    let mut all = Vec::new();
                    for i in 0..r.as_ref().column_count() {
                        all.extend(r.get::<_, Vec<u8>>(i)?);
                    }
                    Ok(all)
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    let captures = blobs("SELECT image, meta FROM captures ORDER BY seq");
    let keys = blobs("SELECT wrapped FROM data_keys");
    let capture_keys = blobs("SELECT wrapped FROM capture_keys ORDER BY capture_seq");
    (captures, capture_keys, keys)
}

/// Fails when the PUBACK delete leaves a key row unzeroed (`secure_delete`
/// off for the key delete in `outbox::ack_in`) or when nothing truncates the
/// WAL after uploads (it keeps the pages from before the delete): with
/// either one the scan below never comes out clean.
#[test]
fn uploaded_captures_leave_no_capture_key_or_data_key_on_disk() {
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
    let (captures, capture_keys, keys) = stored_secrets(&d.state);
    assert_eq!((captures.len(), capture_keys.len(), keys.len()), (2, 2, 1));
    let mut secrets: Vec<(&str, &[u8])> = capture_keys
        .iter()
        .map(|k| ("wrapped capture key", k.as_slice()))
        .collect();
    secrets.push(("wrapped data key", keys[0].as_slice()));
    // Control: the scan finds what is there.
    let ciphertext: Vec<(&str, &[u8])> = captures
        .iter()
        .map(|c| ("capture ciphertext", c.as_slice()))
        .collect();
    for (name, bytes) in secrets.iter().chain(&ciphertext) {
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

/// A child process killed (and reaped) when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `id -u nobody` / `id -g nobody`.
fn nobody() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "nobody"])
            .output()
            .expect("run id");
        assert!(out.status.success(), "no user nobody: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// `command` run as `uid:gid` without supplementary groups (setpriv).
fn as_user(uid: u32, gid: u32, program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FACEGATE_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        for entry in std::fs::read_dir(path).expect("read directory") {
            chown_tree(&entry.expect("directory entry").path(), uid, gid);
        }
    }
}

/// Owner of `/proc/PID/status`, and the real uid the file reports.
fn proc_owner_and_uid(pid: u32) -> (u32, u32) {
    let path = format!("/proc/{pid}/status");
    let owner = std::fs::metadata(&path).expect("proc status").uid();
    let status = std::fs::read_to_string(&path).expect("proc status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("Uid line");
    (owner, uid)
}

/// The kernel hands the `/proc/PID` files of a non-dumpable process to root;
/// a dumpable one's belong to its own user. So the daemon runs as `nobody`
/// here (the tests run as root, as CI does), and its files must be root's.
/// Fails on the old code (no `PR_SET_DUMPABLE`): they were nobody's, as the
/// control process's are.
#[test]
fn the_daemon_cannot_be_dumped_or_traced_by_its_own_user() {
    // SAFETY: geteuid(2) has no preconditions.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        println!("skipped: needs root to start the daemon as another user (euid {euid})");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipped: setpriv (util-linux) is not installed");
        return;
    }
    let (uid, gid) = nobody();
    let d = Daemon::builder().build();
    // A copy of the binary that `nobody` can read and run wherever the
    // build lives (an unreadable binary would be non-dumpable by itself).
    let binary = d.dir.path().join("facegate");
    std::fs::copy(facegate_binary(), &binary).expect("copy the binary");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_tree(d.dir.path(), uid, gid);
    let readable = as_user(uid, gid, Path::new("test"))
        .arg("-r")
        .arg(&binary)
        .status()
        .expect("run test -r");
    assert!(
        readable.success(),
        "nobody cannot read {}",
        binary.display()
    );

    // Control: a process of the same user that did nothing about it.
    let control = Reaped(
        as_user(uid, gid, Path::new("sleep"))
            .arg("60")
            .spawn()
            .expect("spawn sleep"),
    );
    let log_path = d.dir.path().join("nobody.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let daemon = Reaped(
        as_user(uid, gid, &binary)
            .args(["run", "--config"])
            .arg(&d.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn the daemon"),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + T;
    while !d.try_ctl(&["status", "--json"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "daemon did not come up:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(
        proc_owner_and_uid(control.0.id()),
        (uid, uid),
        "control: a dumpable process's /proc files are its user's"
    );
    assert_eq!(
        proc_owner_and_uid(daemon.0.id()),
        (0, uid),
        "the daemon (running as uid {uid}) is dumpable: its /proc files are its user's\n{}",
        log()
    );
}
