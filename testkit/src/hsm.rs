//! SoftHSM2 tokens for the PKCS#11 tests: a private token directory per test
//! process (`SOFTHSM2_CONF` points to its config, set once for the process and
//! inherited by every `facegate` it starts), and a fresh token per test, made
//! with `softhsm2-util --init-token --free` (scripts/ensure-softhsm installs it).
//!
//! A PKCS#11 library is initialised once per process and SoftHSM reads its
//! token directory then: a token made later is invisible to a test process
//! that already uses the library. So the first [`Token::fresh`] makes all
//! [`POOL`] tokens of the process at once, before anything can load the
//! library, and each call hands out the next one (labels `facegate-0`, …).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tempfile::TempDir;

/// The user PIN of every test token.
pub const USER_PIN: &str = "246810";
/// The security officer PIN of every test token.
pub const SO_PIN: &str = "13579111";

/// Tokens made for one test process; [`Token::fresh`] panics beyond.
pub const POOL: usize = 8;

/// The process's SoftHSM directory: config, token directory, PIN files.
struct Shared {
    /// Kept for the life of the process (removed when it ends normally).
    _dir: TempDir,
    tokens: Vec<Token>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("facegate-softhsm-")
            .tempdir()
            .expect("SoftHSM directory");
        let tokens = dir.path().join("tokens");
        fs::create_dir_all(&tokens).expect("token directory");
        let conf = dir.path().join("softhsm2.conf");
        fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("SoftHSM config");
        // Set before any library is loaded in this process; children inherit it.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let tokens = (0..POOL)
            .map(|i| init_token(dir.path(), &format!("facegate-{i}")))
            .collect();
        Shared { _dir: dir, tokens }
    })
}

/// Initialises token `label` in the first free slot, with a PIN file in `dir`.
fn init_token(dir: &Path, label: &str) -> Token {
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            USER_PIN,
            "--so-pin",
            SO_PIN,
        ])
        .output()
        .unwrap_or_else(|e| panic!("softhsm2-util (run scripts/ensure-softhsm): {e}"));
    assert!(
        out.status.success(),
        "softhsm2-util --init-token {label}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let pin_file = dir.join(format!("{label}.pin"));
    write_private(&pin_file, USER_PIN);
    Token {
        label: label.to_string(),
        module: module(),
        pin_file,
    }
}

/// The SoftHSM2 provider library, or a panic saying how to install it.
pub fn module() -> PathBuf {
    let mut candidates = vec![
        PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        PathBuf::from("/usr/local/lib/softhsm/libsofthsm2.so"),
    ];
    if let Ok(entries) = fs::read_dir("/usr/lib") {
        for e in entries.flatten() {
            candidates.push(e.path().join("softhsm/libsofthsm2.so"));
        }
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("libsofthsm2.so not found: run scripts/ensure-softhsm"))
}

/// A fresh, initialised SoftHSM token of this process.
#[derive(Debug, Clone)]
pub struct Token {
    /// Its label (unique within the process).
    pub label: String,
    /// The provider library.
    pub module: PathBuf,
    /// A file holding [`USER_PIN`], mode 0600.
    pub pin_file: PathBuf,
}

impl Token {
    /// A fresh, empty token of this process's pool (user PIN [`USER_PIN`]).
    pub fn fresh() -> Token {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let i = NEXT.fetch_add(1, Ordering::SeqCst);
        shared().tokens.get(i).cloned().unwrap_or_else(|| {
            panic!("more than {POOL} SoftHSM tokens in one test process: raise hsm::POOL")
        })
    }

    /// The URI of key `object` in this token, with the PIN file as `pin-source`.
    pub fn uri(&self, object: &str) -> String {
        self.uri_with_pin(object, &self.pin_file)
    }

    /// The URI of key `object` in this token, with `pin_file` as `pin-source`.
    pub fn uri_with_pin(&self, object: &str, pin_file: &Path) -> String {
        format!(
            "pkcs11:token={};object={object}?pin-source=file:{}",
            self.label,
            pin_file.display()
        )
    }
}

/// Writes `text` to `path` with mode 0600.
pub fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
