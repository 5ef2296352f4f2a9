//! The daemon's heap policy, so that memory taken for a burst of large
//! captures goes back to the system once the burst is over (issue: 64 valid
//! 8 MB captures left half a gigabyte held afterwards).
//!
//! glibc's allocator serves requests above a threshold with their own
//! mapping, unmapped when freed; but it raises that threshold to the size of
//! each such block freed (up to 32 MiB), after which image-sized buffers
//! come from the heap arenas and stay there when freed. [`map_large_buffers`]
//! fixes the threshold (which also turns that raising off), and
//! [`give_back`], called by housekeeping, returns the free memory at the top
//! of every arena and the free whole pages inside them (`malloc_trim`).
//! Elsewhere than glibc both do nothing.
//!
//! An arena keeps up to [`TRIM_THRESHOLD`] of free memory at its top
//! instead of returning it at every `free`: the upload path frees and takes
//! again envelopes and decrypted images (64 KB and 48 KB each with 48 KB
//! captures) at every hand-over, and with glibc's default (128 KiB) they
//! went back to the system and were faulted in and zeroed by the kernel
//! again on the next one (16 % of the daemon's CPU while uploading;
//! BENCHMARKS K, ninth round). `malloc_trim` returns the top of the main
//! arena and the free pages inside every arena, but not the top of the
//! other arenas (one per thread up to glibc's limit), which each keep up to
//! this much for good: 8 MiB left 33.5 MB held a minute after a burst of
//! large captures (BENCHMARKS M, against 32 MB allowed), 2 MiB keeps the
//! upload's gain.

/// Blocks at least this large get their own mapping: image files, decoded
/// pixels and envelopes of large captures; the small allocations of the
/// capture path (a 48 KB capture's buffers included) stay in the arenas.
pub const MMAP_THRESHOLD: usize = 256 * 1024;

/// Free memory an arena keeps at its top (`M_TRIM_THRESHOLD`): room for the
/// buffers of a few hand-overs.
pub const TRIM_THRESHOLD: usize = 2 * 1024 * 1024;

/// Fixes the allocator's mapping threshold at [`MMAP_THRESHOLD`] and its
/// trim threshold at [`TRIM_THRESHOLD`]. Called once when the daemon
/// starts, before its threads.
#[allow(unsafe_code)] // mallopt(3), see SAFETY below
pub fn map_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes two integers and changes an allocator
        // parameter; no memory is passed. A refusal (0) leaves the default.
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) };
        if set == 0 {
            tracing::debug!("allocator mapping threshold not changed");
        }
        // SAFETY: as above.
        let set = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) };
        if set == 0 {
            tracing::debug!("allocator trim threshold not changed");
        }
    }
}

/// Returns the allocator's free memory to the system. Cheap when there is
/// little to return; called every housekeeping pass.
#[allow(unsafe_code)] // malloc_trim(3), see SAFETY below
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes the padding to keep (0) and only
        // releases memory the allocator holds as free.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
