//! A real small file system for disk-full tests: a tmpfs of a given size
//! mounted on a throwaway directory (needs root or CAP_SYS_ADMIN), unmounted
//! when dropped. [`SmallFs::fill`] fills it to the last byte with a filler
//! file, [`Filler::free`] gives the space back.
//!
//! ```ignore
//! let Some(fs) = SmallFs::mount_or_skip(16 << 20) else { return };
//! let d = Daemon::builder().state_in(fs.path().join("state")).start();
//! let filler = fs.fill();
//! // ... the disk is full ...
//! filler.free();
//! ```
//!
//! tmpfs has no blocks reserved for root, so a daemon running as root sees
//! the same full disk a service user would.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A mounted tmpfs of a fixed size; unmounted on drop.
pub struct SmallFs {
    dir: TempDir,
    fillers: std::cell::Cell<u32>,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` bytes (mode 0700) on a fresh directory.
    pub fn mount(size: u64) -> Result<SmallFs, String> {
        let dir = tempfile::Builder::new()
            .prefix("facegate-smallfs-")
            .tempdir()
            .map_err(|e| format!("mount point: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallFs {
            dir,
            fillers: std::cell::Cell::new(0),
        })
    }

    /// [`mount`](Self::mount), or `None` after printing why the test is
    /// skipped (not root, no mount(8), a container without CAP_SYS_ADMIN).
    pub fn mount_or_skip(size: u64) -> Option<SmallFs> {
        match SmallFs::mount(size) {
            Ok(fs) => Some(fs),
            Err(e) => {
                eprintln!("SKIPPED: a small file system cannot be mounted here: {e}");
                None
            }
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes available on it now.
    pub fn free_bytes(&self) -> u64 {
        facegate::space::free_bytes(self.path()).expect("statvfs of the small file system")
    }

    /// Fills it to the last byte with a new filler file.
    pub fn fill(&self) -> Filler {
        self.fill_leaving(0)
    }

    /// Fills it with a new filler file until at most `leave` bytes are free.
    pub fn fill_leaving(&self, leave: u64) -> Filler {
        let n = self.fillers.get();
        self.fillers.set(n + 1);
        let path = self.path().join(format!("filler-{n}"));
        let mut file: File = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .expect("filler file");
        let chunk = vec![0xA5u8; 64 * 1024];
        loop {
            let free = self.free_bytes();
            if free <= leave {
                break;
            }
            let want = usize::try_from(free - leave)
                .unwrap_or(usize::MAX)
                .min(chunk.len());
            match file.write(&chunk[..want]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("writing the filler: {e}"),
            }
        }
        Filler { path }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // A daemon still holding files open keeps a plain umount busy; a lazy
        // one detaches the mount now and frees it once they are closed.
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// A file taking space on a [`SmallFs`]; the space stays taken until
/// [`Filler::free`] (or drop).
pub struct Filler {
    path: PathBuf,
}

impl Filler {
    /// Removes the filler: the space is free again.
    pub fn free(self) {}
}

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
