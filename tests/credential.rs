//! The storage key as a sealed systemd credential (`storage.key_source =
//! "credential"`), with the real binary, a real broker and the real
//! `systemd-creds`:
//! - `facegate provision --seal --with-key host` seals a fresh key into a
//!   credential file, idempotently, and the plaintext key is on no disk;
//! - the daemon, given the decrypted credential in `$CREDENTIALS_DIRECTORY`,
//!   accepts captures and uploads them; a copy of the state directory without
//!   the credential opens nothing (with a key file, without the credential, or
//!   with another credential), while the original with its credential still
//!   uploads what was queued;
//! - a missing credentials directory, a missing or wrong-size credential, a
//!   key file next to a credential source, and `--seal` misuse are refused
//!   with errors that say what to do.
//!
//! systemd's `LoadCredentialEncrypted=` step is simulated: `systemd-creds
//! decrypt` writes the credential into a private directory (on tmpfs when
//! there is one, as systemd's is on ramfs) and the daemon gets that directory
//! as `$CREDENTIALS_DIRECTORY`, which is all systemd hands a service. The host
//! key is a file in the test's directory (`SYSTEMD_CREDENTIAL_SECRET`), so
//! the machine's `/var/lib/systemd/credential.secret` is neither made nor
//! used. Sealing needs root and systemd 250 or later: without them the
//! sealing test prints why it is skipped; the refusals need neither.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use facegate::credential;
use facegate_testkit::broker::Broker;
use facegate_testkit::daemon::Daemon;
use facegate_testkit::mqtt::{Session, Uploads};
use facegate_testkit::synth;
use facegate_testkit::util::wait_until;

const T: Duration = Duration::from_secs(30);
const CAPTURES: &str = "facegate/lobby/term-01/captures";
const NAME: &str = "facegate-storage-key";

/// Why sealing cannot be tested here, if it cannot.
fn cannot_seal() -> Option<String> {
    let euid = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1);
    if euid != 0 {
        return Some("systemd-creds encrypt/decrypt need root".into());
    }
    let out = match Command::new("systemd-creds").arg("--version").output() {
        Ok(out) => out,
        Err(e) => return Some(format!("systemd-creds is not installed ({e})")),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u32>().ok());
    match version {
        Some(v) if v >= 250 => None,
        _ => Some(format!(
            "systemd 250 or later needed, found {:?}",
            text.lines().next()
        )),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `facegate ARGS --config <d's config>` with the host key of the test.
fn facegate(d: &Daemon, secret: &Path, args: &[&str]) -> Output {
    d.command()
        .args(args)
        .arg("--config")
        .arg(&d.config)
        .env("SYSTEMD_CREDENTIAL_SECRET", secret)
        .output()
        .expect("run facegate")
}

/// The credential's plaintext, as systemd would decrypt it for the service.
fn decrypt(sealed: &Path, secret: &Path) -> Vec<u8> {
    let out = Command::new("systemd-creds")
        .args(["decrypt", &format!("--name={NAME}")])
        .arg(sealed)
        .arg("-")
        .env("SYSTEMD_CREDENTIAL_SECRET", secret)
        .output()
        .expect("run systemd-creds decrypt");
    assert!(out.status.success(), "decrypt: {}", text(&out));
    out.stdout
}

/// A private credentials directory holding `key` as `facegate-storage-key`
/// (mode 0400, the directory 0700), on tmpfs when there is one: what systemd
/// makes for a unit with `LoadCredentialEncrypted=`.
fn credentials_dir(key: &[u8]) -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new().prefix("creds-").tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("creds-").tempdir()
    }
    .expect("credentials directory");
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(dir.path().join(NAME))
        .and_then(|mut f| f.write_all(key))
        .expect("credential file");
    dir
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let bytes = fs::read(&path).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// `facegate run` with `config`, expected to stop at once; its output.
fn run_refused(d: &Daemon, config: &Path, credentials: Option<&Path>) -> String {
    let mut cmd = d.command();
    cmd.args(["run", "--config"]).arg(config);
    cmd.env_remove("CREDENTIALS_DIRECTORY");
    if let Some(dir) = credentials {
        cmd.env("CREDENTIALS_DIRECTORY", dir);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn facegate run");
    let deadline = Instant::now() + T;
    loop {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            assert!(
                !out.status.success(),
                "facegate run succeeded:\n{}",
                text(&out)
            );
            return text(&out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("facegate run did not refuse to start:\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn fleet(broker: &Broker) -> Session {
    let mut s = Session::spawn(broker.options("fleet"));
    s.wait_connected(T).await.expect("fleet connects");
    s.subscribe(CAPTURES, T).await;
    s
}

/// Capture ids received on the captures topic (parts joined, whole `sha256`
/// checked by the testkit's back-end) until `n` arrived or `wait` passed.
async fn collect(fleet: &mut Session, n: usize, wait: Duration) -> HashSet<String> {
    let mut up = Uploads::new();
    up.collect(fleet, CAPTURES, n, wait).await;
    up.captures.into_keys().collect()
}

fn line_of<'a>(report: &'a str, what: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no {what:?} line in:\n{report}"))
}

/// The config file of `d` with its state directory moved to `state`.
fn config_with_state(d: &Daemon, state: &Path, key_source: &str, name: &str) -> PathBuf {
    let original = fs::read_to_string(&d.config).unwrap();
    let old_state = d.state.display().to_string();
    assert!(original.contains(&old_state), "{original}");
    assert!(
        original.contains("key_source = \"credential\""),
        "{original}"
    );
    let moved = original
        .replace(&old_state, &state.display().to_string())
        .replace(
            "key_source = \"credential\"",
            &format!("key_source = \"{key_source}\""),
        );
    let path = d.dir.path().join(name);
    fs::write(&path, moved).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_key_never_touches_the_disk_and_a_copied_state_dir_opens_nothing() {
    if let Some(why) = cannot_seal() {
        println!("SKIPPED a_sealed_key_never_touches_the_disk_and_a_copied_state_dir_opens_nothing: {why}");
        return;
    }
    let mut broker = Broker::start();
    let mut d = Daemon::builder()
        .broker(&broker)
        .configure(|c| c.key_source("credential").fast_reconnect())
        .build();
    let secret = d.dir.path().join("host/credential.secret");
    fs::create_dir_all(secret.parent().unwrap()).unwrap();
    let sealed = d.dir.path().join("credstore.encrypted").join(NAME);
    let seal_args = [
        "provision",
        "--seal",
        "--seal-to",
        sealed.to_str().unwrap(),
        "--with-key",
        "host",
    ];

    // Sealed, then kept as is.
    let first = facegate(&d, &secret, &seal_args);
    assert!(first.status.success(), "{}", text(&first));
    let report = text(&first);
    let line = line_of(&report, "sealed storage key");
    assert!(
        line.contains("created") && line.contains(sealed.to_str().unwrap()),
        "{report}"
    );
    let sealed_bytes = fs::read(&sealed).unwrap();
    assert_eq!(credential::sealed_with(&sealed_bytes), Some("host"));
    let again = facegate(&d, &secret, &seal_args);
    assert!(again.status.success(), "{}", text(&again));
    assert!(line_of(&text(&again), "sealed storage key").contains("exists, kept"));
    assert_eq!(
        fs::read(&sealed).unwrap(),
        sealed_bytes,
        "kept, not resealed"
    );
    assert!(!d.state.join("storage.key").exists(), "no key file is made");

    // systemd's part: decrypt into the service's private credentials directory.
    let key = decrypt(&sealed, &secret);
    assert_eq!(key.len(), 32, "a 32-byte key");
    let creds = credentials_dir(&key);
    d.credentials_dir = Some(creds.path().to_path_buf());

    // doctor: inside the service (the credentials directory set) the key
    // passes and its place is named; outside it, a warning, not a failure.
    let doctor = text(&facegate(&d, &secret, &["doctor"]));
    assert!(
        line_of(&doctor, "      storage key").contains(&format!(
            "systemd credential {NAME} (loaded: {})",
            creds.path().join(NAME).display()
        )),
        "{doctor}"
    );
    line_of(&doctor, "PASS  storage key");
    let mut outside = d.command();
    outside.env_remove("CREDENTIALS_DIRECTORY");
    let doctor = text(
        &outside
            .args(["doctor", "--config"])
            .arg(&d.config)
            .output()
            .unwrap(),
    );
    assert!(
        line_of(&doctor, "WARN  storage key").contains("CREDENTIALS_DIRECTORY is not set"),
        "{doctor}"
    );

    // The daemon reads it, accepts and uploads.
    let mut fleet = fleet(&broker).await;
    d.spawn();
    d.wait_uplink_connected(T);
    d.grant("S-1");
    d.drop_pair("c1", "jpg", &synth::face_jpeg(320, 240, 1, 85), Some("S-1"));
    assert_eq!(collect(&mut fleet, 1, T).await.len(), 1, "{}", d.log());
    wait_until(T, || d.outbox_len() == 0, || d.log());
    // Without the broker a second capture waits, encrypted, in the outbox.
    broker.stop();
    d.drop_pair("c2", "jpg", &synth::face_jpeg(320, 240, 2, 85), Some("S-1"));
    wait_until(T, || d.outbox_len() == 1, || d.log());
    d.stop();
    assert!(
        !d.state.join("storage.key").exists(),
        "the daemon made no key file"
    );

    // The plaintext key is in no file of the terminal: not the state
    // directory (database, WAL), the sealed credential, the config or the log.
    assert_eq!(files_containing(d.dir.path(), &key), Vec::<PathBuf>::new());

    // A copy of the state directory without the credential opens nothing.
    let copy = d.dir.path().join("copied-state");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&d.state)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(cp.success());
    let as_file = config_with_state(&d, &copy, "file", "copy-file.toml");
    let out = run_refused(&d, &as_file, None);
    assert!(
        out.contains("created with a different storage key"),
        "{out}"
    );
    let as_credential = config_with_state(&d, &copy, "credential", "copy-cred.toml");
    fs::remove_file(copy.join("storage.key")).unwrap();
    let out = run_refused(&d, &as_credential, None);
    assert!(out.contains("CREDENTIALS_DIRECTORY is not set"), "{out}");
    let other = credentials_dir(&[0x5a; 32]);
    let out = run_refused(&d, &as_credential, Some(other.path()));
    assert!(
        out.contains("created with a different storage key"),
        "{out}"
    );
    assert!(
        fs::metadata(copy.join(facegate::store::DB_FILE_NAME))
            .unwrap()
            .len()
            > 0,
        "the copy still holds the database, ciphertext and all"
    );

    // The original, with its credential, still holds the queued capture and uploads it.
    broker.restart();
    drop(fleet);
    let mut fleet = self::fleet(&broker).await;
    d.spawn();
    assert_eq!(d.outbox_len(), 1, "{}", d.log());
    d.wait_uplink_connected(T);
    assert_eq!(collect(&mut fleet, 1, T).await.len(), 1, "{}", d.log());
    wait_until(T, || d.outbox_len() == 0, || d.log());
    d.stop();
}

#[test]
fn a_missing_or_wrong_credential_is_refused_by_name_and_nothing_is_created() {
    let d = Daemon::builder()
        .unreachable_broker()
        .configure(|c| c.key_source("credential"))
        .build();
    fs::create_dir_all(&d.state).unwrap();

    // Outside a service: no credentials directory.
    let out = run_refused(&d, &d.config, None);
    assert!(
        out.contains("CREDENTIALS_DIRECTORY is not set")
            && out.contains("LoadCredentialEncrypted="),
        "{out}"
    );
    // A credentials directory without the credential.
    let empty = tempfile::tempdir().unwrap();
    let out = run_refused(&d, &d.config, Some(empty.path()));
    assert!(
        out.contains(&empty.path().join(NAME).display().to_string())
            && out.contains("provision --seal"),
        "{out}"
    );
    // The wrong size.
    let short = credentials_dir(&[7u8; 16]);
    let out = run_refused(&d, &d.config, Some(short.path()));
    assert!(out.contains("is 16 bytes long, expected 32"), "{out}");
    assert!(
        !d.state.join("storage.key").exists(),
        "no key file was made"
    );

    // A key file next to a credential source: ambiguous, refused.
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(d.state.join("storage.key"))
        .and_then(|mut f| f.write_all(&[1u8; 32]))
        .unwrap();
    let good = credentials_dir(&[9u8; 32]);
    let out = run_refused(&d, &d.config, Some(good.path()));
    assert!(out.contains("storage.key exists too"), "{out}");
    let mut doctor = d.command();
    doctor.env("CREDENTIALS_DIRECTORY", good.path());
    let doctor = text(
        &doctor
            .args(["doctor", "--config"])
            .arg(&d.config)
            .output()
            .unwrap(),
    );
    assert!(
        line_of(&doctor, "FAIL  storage key").contains("exists too"),
        "{doctor}"
    );

    // provision with a credential source does not migrate a plaintext key.
    let secret = d.dir.path().join("credential.secret");
    let sealed = d.dir.path().join("sealed");
    let out = facegate(
        &d,
        &secret,
        &["provision", "--seal", "--seal-to", sealed.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("a plaintext storage key exists")
            && text(&out).contains("systemd-creds encrypt"),
        "{}",
        text(&out)
    );
    assert!(!sealed.exists());
    assert_eq!(
        fs::read(d.state.join("storage.key")).unwrap(),
        [1u8; 32],
        "kept"
    );
    fs::remove_file(d.state.join("storage.key")).unwrap();

    // provision without --seal makes no key file and says where the sealed key belongs.
    let out = facegate(&d, &secret, &["provision"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    assert!(
        line_of(&report, "sealed storage key").ends_with(credential::DEFAULT_SEALED_PATH),
        "{report}"
    );
    assert!(!d.state.join("storage.key").exists(), "{report}");

    // Without systemd-creds: the command is named.
    let out = d
        .command()
        .args(["provision", "--seal", "--seal-to"])
        .arg(&sealed)
        .arg("--config")
        .arg(&d.config)
        .env("PATH", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("systemd-creds encrypt --name=facegate-storage-key"),
        "{}",
        text(&out)
    );
    assert!(!sealed.exists());

    // --seal needs the credential source.
    let file_config = d.dir.path().join("file.toml");
    fs::write(
        &file_config,
        fs::read_to_string(&d.config)
            .unwrap()
            .replace("key_source = \"credential\"", "key_source = \"file\""),
    )
    .unwrap();
    let out = d
        .command()
        .args(["provision", "--seal", "--config"])
        .arg(&file_config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("key_source = \"credential\""),
        "{}",
        text(&out)
    );
}
