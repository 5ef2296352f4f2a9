//! A wall clock the test moves while the daemon runs: libfaketime preloaded
//! into `facegate run` only (not into `ctl` or the test), reading its offset
//! from a file on every call, with the boot-time and monotonic clocks left
//! real (`FAKETIME_DONT_FAKE_MONOTONIC=1`). `scripts/ensure-faketime`
//! installs the library.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where Debian and Ubuntu put the library.
const CANDIDATES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
];

/// The preload library; panics naming the install script when it is missing.
pub fn library() -> PathBuf {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("libfaketime is missing: run scripts/ensure-faketime"))
}

/// The offset file and the environment that makes a process read it.
#[derive(Debug)]
pub struct FakeClock {
    file: PathBuf,
    library: PathBuf,
}

impl FakeClock {
    /// A clock at the real time, its offset file in `dir`.
    pub fn new(dir: &Path) -> FakeClock {
        let clock = FakeClock {
            file: dir.join("faketime.offset"),
            library: library(),
        };
        clock.set_offset(0);
        clock
    }

    /// Moves the faked wall clock to the real time plus `secs` (negative:
    /// behind), at once, for every process started with [`Self::env`].
    pub fn set_offset(&self, secs: i64) {
        // Written whole in one go: a reader sees the old or the new offset.
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{secs:+}\n")).expect("faketime offset file");
        std::fs::rename(&tmp, &self.file).expect("faketime offset file");
    }

    /// The environment of a process whose wall clock this is.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        [
            ("LD_PRELOAD", self.library.as_os_str()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.as_os_str()),
        ]
        .into_iter()
        .map(|(k, v)| (OsString::from(k), v.to_os_string()))
        .chain(
            [
                ("FAKETIME_NO_CACHE", "1"),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )
        .collect()
    }
}
