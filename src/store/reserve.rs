//! The space reserve (`[storage] reserve_bytes`): a file of zeros next to
//! the database, `<state_dir>/facegate.reserve` (mode 0600), that holds disk
//! space for the writes that must commit on a full disk: revocations,
//! purges and deletes after PUBACK. When one of them fails with SQLITE_FULL
//! the store deletes the file and runs it again ([`Store::with_reserve`]);
//! housekeeping writes it again once the space is back
//! ([`Store::keep_reserve`]). Intake never uses the reserve: it stops before
//! (`crate::space::intake_room`). No SQL here.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::{Store, StoreError};

/// File name of the reserve inside the state directory.
pub const RESERVE_FILE_NAME: &str = "facegate.reserve";

/// Bytes written per call while filling the reserve.
const CHUNK: usize = 256 * 1024;
/// Free space the reserve never takes when it is written again.
pub const SLACK: u64 = crate::space::INTAKE_MARGIN;

/// Where the reserve is and how much of it exists.
#[derive(Debug)]
pub(super) struct Reserve {
    path: PathBuf,
    /// Bytes the reserve file should hold (`[storage] reserve_bytes`).
    want: u64,
    /// Bytes it holds now (its length; every byte written, none sparse).
    held: u64,
}

impl Reserve {
    pub(super) fn new(path: PathBuf) -> Reserve {
        let held = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Reserve {
            path,
            want: 0,
            held,
        }
    }
}

impl Store {
    /// Sets the reserve's size and writes the file up to it (or shrinks it),
    /// as far as the disk allows while leaving [`SLACK`] free for the other
    /// writes (a reserve written to the last byte would make every other
    /// write fail and be released again at once); returns the bytes it
    /// holds. Cheap when it is complete: housekeeping calls it every few
    /// seconds, so the reserve comes back within seconds of space coming
    /// back.
    pub fn keep_reserve(&mut self, want: u64) -> Result<u64, StoreError> {
        self.reserve.want = want;
        let r = &mut self.reserve;
        let io = |source| StoreError::Io {
            path: r.path.clone(),
            source,
        };
        if r.held == want && (want == 0 || r.path.exists()) {
            return Ok(r.held);
        }
        if want == 0 {
            match fs::remove_file(&r.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
            r.held = 0;
            return Ok(0);
        }
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(&r.path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len > want {
            file.set_len(want).map_err(io)?;
            r.held = want;
            return Ok(want);
        }
        // As much as fits with the slack left free.
        let target = match r.path.parent().map(crate::space::free_bytes) {
            Some(Ok(free)) => want.min(len.saturating_add(free.saturating_sub(SLACK))),
            _ => want,
        };
        if target <= len {
            r.held = len;
            return Ok(len);
        }
        file.seek(SeekFrom::Start(len)).map_err(io)?;
        let zeros = vec![0u8; CHUNK];
        let mut held = len;
        while held < target {
            let n = usize::try_from(target - held).unwrap_or(CHUNK).min(CHUNK);
            match file.write(&zeros[..n]) {
                Ok(0) => break,
                Ok(k) => held += k as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(io(e)),
            }
        }
        // A short write may have extended the file past what was written.
        if file.set_len(held).is_err() {
            held = file.metadata().map(|m| m.len()).unwrap_or(held);
        }
        let _ = file.sync_all();
        let was = r.held;
        r.held = held;
        if held == want && was < want {
            tracing::info!(reserve_bytes = want, "disk space reserve in place");
        } else if held < want {
            tracing::debug!(
                held,
                want,
                "disk space reserve incomplete: the disk is full"
            );
        }
        Ok(held)
    }

    /// Bytes the reserve file holds now.
    pub fn reserve_held(&self) -> u64 {
        self.reserve.held
    }

    /// Runs `op` (a revocation, purge or delete after PUBACK); if it fails
    /// because the disk is full and the reserve holds space, deletes the
    /// reserve file and runs `op` once more: these writes must commit on a
    /// full disk. Housekeeping writes the reserve again once there is space.
    pub(super) fn with_reserve<T>(
        &mut self,
        mut op: impl FnMut(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match op(self) {
            Err(StoreError::DiskFull { op: what, .. }) if self.reserve.held > 0 => {
                tracing::warn!(
                    operation = what,
                    reserve_bytes = self.reserve.held,
                    "disk full: releasing the space reserve for this write"
                );
                self.release_reserve();
                op(self)
            }
            other => other,
        }
    }

    /// Deletes the reserve file: its space is free for the next write.
    pub(super) fn release_reserve(&mut self) {
        match fs::remove_file(&self.reserve.path) {
            Ok(()) => self.reserve.held = 0,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.reserve.held = 0,
            Err(e) => {
                tracing::error!(file = %self.reserve.path.display(), error = %e, "cannot release the space reserve")
            }
        }
    }
}
