//! Disk space: what the daemon knows about the file system holding its
//! state directory, shared between intake, the uplink and the status.
//!
//! - [`Pressure`]: flags set by the tasks that met a full disk (intake paused,
//!   deletes after PUBACK failing), read by the hand-over and the status.
//! - [`free_bytes`]: `statvfs(2)` of a directory.
//! - [`intake_room`]: the pure rule deciding whether intake may commit a batch
//!   without touching the space reserve (`[storage] reserve_bytes`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Room intake keeps free on top of a batch's own bytes: the WAL frames, index
/// and audit pages of the transaction and the checkpoint that copies them into
/// the database file.
pub const INTAKE_MARGIN: u64 = 1024 * 1024;

/// Why intake may or may not commit a batch now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Enough free space outside the reserve.
    Enough,
    /// Committing would eat into the reserve (or the disk is full): the pairs
    /// stay in the spool until space comes back.
    DiskFull,
}

/// Whether a batch of `batch_bytes` (plain image bytes; the stored size is
/// about the same) may be committed when the file system has `free` bytes
/// available, `reserve_bytes` must stay free for revocations, purges and
/// deletes, and `reserve_held` of them are already held by the reserve file
/// (and so not part of `free`). A batch needs twice its size (WAL and
/// database pages) plus [`INTAKE_MARGIN`].
pub fn intake_room(free: u64, reserve_bytes: u64, reserve_held: u64, batch_bytes: u64) -> Room {
    let missing = reserve_bytes.saturating_sub(reserve_held);
    let need = batch_bytes
        .saturating_mul(2)
        .saturating_add(INTAKE_MARGIN)
        .saturating_add(missing);
    if free >= need {
        Room::Enough
    } else {
        Room::DiskFull
    }
}

/// How many of a batch's captures (`sizes`, in order) may be committed: the
/// longest prefix [`intake_room`] has room for.
pub fn fitting(
    free: u64,
    reserve_bytes: u64,
    reserve_held: u64,
    sizes: impl IntoIterator<Item = u64>,
) -> usize {
    let mut batch = 0u64;
    let mut fit = 0;
    for size in sizes {
        batch = batch.saturating_add(size);
        if intake_room(free, reserve_bytes, reserve_held, batch) == Room::DiskFull {
            break;
        }
        fit += 1;
    }
    fit
}

/// What the outbox quota may hold given the file system: the configured
/// `quota_bytes`, but never more than what is queued (`used`) plus what the
/// file system still has outside the reserve (`free`, less the part of the
/// reserve not held by the reserve file).
pub fn effective_quota(
    quota_bytes: u64,
    used: u64,
    free: u64,
    reserve_bytes: u64,
    reserve_held: u64,
) -> u64 {
    let missing = reserve_bytes.saturating_sub(reserve_held);
    let room = free.saturating_sub(missing).saturating_sub(INTAKE_MARGIN);
    quota_bytes.min(used.saturating_add(room))
}

/// Disk-full state reported by the tasks that met it.
#[derive(Debug, Default)]
pub struct Pressure {
    /// Intake holds pairs back: committing them would touch the reserve.
    intake_paused: AtomicBool,
    /// Deleting acknowledged uploads fails: the hand-over waits.
    deletes_failing: AtomicBool,
}

impl Pressure {
    /// Records whether intake holds pairs back for lack of space; true if
    /// this changed it.
    pub fn set_intake_paused(&self, paused: bool) -> bool {
        self.intake_paused.swap(paused, Ordering::Relaxed) != paused
    }

    /// Whether intake holds pairs back for lack of space.
    pub fn intake_paused(&self) -> bool {
        self.intake_paused.load(Ordering::Relaxed)
    }

    /// Records whether deletes after PUBACK fail; true if this changed it.
    pub fn set_deletes_failing(&self, failing: bool) -> bool {
        self.deletes_failing.swap(failing, Ordering::Relaxed) != failing
    }

    /// Whether deletes after PUBACK fail (nothing new is handed over then).
    pub fn deletes_failing(&self) -> bool {
        self.deletes_failing.load(Ordering::Relaxed)
    }
}

fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
}

/// Bytes available to unprivileged users on the file system holding `path`.
#[allow(unsafe_code)] // statvfs(2), see SAFETY below
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let c = c_path(path)?;
    // SAFETY: statvfs is a plain C struct; all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    #[test]
    fn intake_needs_twice_the_batch_plus_margin_outside_the_reserve() {
        // Reserve held by its file: only the batch and the margin count.
        assert_eq!(intake_room(3 * MB, 8 * MB, 8 * MB, MB), Room::Enough);
        assert_eq!(intake_room(3 * MB - 1, 8 * MB, 8 * MB, MB), Room::DiskFull);
        // Reserve released (used by a revocation): it must come back first.
        assert_eq!(intake_room(10 * MB, 8 * MB, 0, MB), Room::DiskFull);
        assert_eq!(intake_room(11 * MB, 8 * MB, 0, MB), Room::Enough);
        // Partly held.
        assert_eq!(intake_room(7 * MB, 8 * MB, 4 * MB, MB), Room::Enough);
        assert_eq!(intake_room(7 * MB - 1, 8 * MB, 4 * MB, MB), Room::DiskFull);
        // No reserve configured; a full disk.
        assert_eq!(intake_room(MB + 2, 0, 0, 1), Room::Enough);
        assert_eq!(intake_room(0, 0, 0, 0), Room::DiskFull);
        // No overflow.
        assert_eq!(
            intake_room(u64::MAX - 1, u64::MAX, 0, u64::MAX),
            Room::DiskFull
        );
        assert_eq!(intake_room(u64::MAX, 0, 0, 1), Room::Enough);
    }

    #[test]
    fn a_batch_is_committed_as_far_as_there_is_room() {
        let sizes = [MB, MB, MB, MB];
        // 1 MiB margin + 2 × the prefix.
        assert_eq!(fitting(9 * MB, 0, 0, sizes), 4);
        assert_eq!(fitting(9 * MB - 1, 0, 0, sizes), 3);
        assert_eq!(fitting(3 * MB, 0, 0, sizes), 1);
        assert_eq!(fitting(3 * MB - 1, 0, 0, sizes), 0);
        // The part of the reserve not held counts against it.
        assert_eq!(fitting(11 * MB, 8 * MB, 6 * MB, sizes), 4);
        assert_eq!(fitting(11 * MB, 8 * MB, 0, sizes), 1);
        assert_eq!(fitting(u64::MAX - 1, 0, 0, [u64::MAX, 1]), 0);
        assert_eq!(fitting(MB, 0, 0, []), 0);
    }

    #[test]
    fn the_quota_is_capped_by_the_space_left_outside_the_reserve() {
        // Plenty of space: the configured quota.
        assert_eq!(
            effective_quota(100 * MB, 0, 1000 * MB, 8 * MB, 8 * MB),
            100 * MB
        );
        // Little space: what is queued plus what is left, less the margin.
        assert_eq!(
            effective_quota(100 * MB, 20 * MB, 11 * MB, 8 * MB, 8 * MB),
            30 * MB
        );
        // The reserve released: its bytes are not for the outbox.
        assert_eq!(
            effective_quota(100 * MB, 20 * MB, 11 * MB, 8 * MB, 0),
            22 * MB
        );
        // Full disk: never below what is queued, never above it either.
        assert_eq!(effective_quota(100 * MB, 20 * MB, 0, 8 * MB, 0), 20 * MB);
        assert_eq!(
            effective_quota(u64::MAX, u64::MAX, u64::MAX, 0, 0),
            u64::MAX
        );
    }

    #[test]
    fn pressure_flags_report_changes() {
        let p = Pressure::default();
        assert!(!p.intake_paused() && !p.deletes_failing());
        assert!(p.set_intake_paused(true));
        assert!(!p.set_intake_paused(true));
        assert!(p.intake_paused());
        assert!(p.set_deletes_failing(true));
        assert!(p.set_deletes_failing(false));
        assert!(!p.deletes_failing());
    }

    #[test]
    fn free_bytes_of_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_ok());
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
