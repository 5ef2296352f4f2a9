//! Giving freed space back to the file system: the database uses
//! `auto_vacuum = INCREMENTAL`, and housekeeping moves the free pages to the
//! end of the file and cuts them off ([`Store::vacuum_free_pages`]), so the
//! file shrinks after uploads and purges instead of keeping its largest size.
//!
//! ARCHITECTURE I4 (every delete zeroes what it frees) still holds for the
//! space given back: `secure_delete` zeroes a page when it is freed, and the
//! WAL is checkpointed (those zeroed pages written into the database file)
//! before the pages at the end are cut off, so the blocks the file system
//! gets back hold zeros or copies of live pages, never deleted content.
//!
//! New databases are created incremental. A database made before is
//! converted once at open with `VACUUM` (see [`convert`]): that needs free
//! space of about the database's size (its pages go through the WAL) and
//! memory of the same size (the temporary copy is kept in memory, never in a
//! temporary file); without them it stays as it is, with a warning, and is
//! converted at a later start.

use std::path::Path;

use super::{SqlCtx, Store, StoreError};

/// `PRAGMA auto_vacuum` value of INCREMENTAL.
const INCREMENTAL: i64 = 2;
/// Pages moved and cut off per step; a checkpoint follows each, so the WAL
/// never needs more than this much space (4 MiB with 4 KiB pages).
const STEP_PAGES: i64 = 1024;
/// Steps per call (housekeeping calls it every few seconds).
const MAX_STEPS: usize = 64;
/// Fewest free pages worth giving back (256 KiB with 4 KiB pages).
const MIN_FREE_PAGES: i64 = 64;

/// Whether `free` of `pages` pages are worth giving back now: at least
/// [`MIN_FREE_PAGES`] and a quarter of the file. Below that, the next
/// captures reuse them anyway; giving them back only to grow the file again
/// would write every page twice while uploads stream.
pub(super) fn worth_it(free: i64, pages: i64) -> bool {
    free >= MIN_FREE_PAGES && free.saturating_mul(4) >= pages
}

/// Largest database converted at open (its copy is held in memory).
pub(super) const MAX_CONVERT_BYTES: u64 = 256 * 1024 * 1024;

fn pragma_i64(conn: &rusqlite::Connection, name: &str) -> Result<i64, StoreError> {
    conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .op("reading a pragma")
}

/// For a database being created (no page yet): incremental from the start.
/// Must run before anything else writes to it.
pub(super) fn prepare_new(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    if pragma_i64(conn, "page_count")? == 0 {
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
            .op("enabling incremental vacuum")?;
    }
    Ok(())
}

/// Converts a database created before incremental vacuum, once: sets the
/// pragma and rebuilds it with `VACUUM` (temporary copy in memory), if it is
/// at most [`MAX_CONVERT_BYTES`] and the file system has room for it twice
/// (`free`: available bytes; `None` when unknown). Otherwise it stays as it
/// is and a warning says why. Returns whether the database is incremental.
pub(super) fn convert(store: &mut Store, free: Option<u64>) -> Result<bool, StoreError> {
    let conn = &store.conn;
    if pragma_i64(conn, "auto_vacuum")? == INCREMENTAL {
        return Ok(true);
    }
    let size = db_bytes(conn)?;
    if size > MAX_CONVERT_BYTES || free.is_none_or(|f| f < size.saturating_mul(2)) {
        tracing::warn!(
            db = %store.path.display(),
            db_bytes = size,
            free_bytes = free,
            "the database cannot give freed space back yet (auto_vacuum off): converting it needs free disk space and memory of twice its size (at most 256 MiB); tried again at the next start"
        );
        return Ok(false);
    }
    tracing::info!(
        db_bytes = size,
        "converting the database to incremental vacuum (once)"
    );
    conn.execute_batch(
        "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA temp_store = MEMORY; VACUUM; PRAGMA temp_store = DEFAULT;",
    )
    .op("converting the database to incremental vacuum")?;
    // The rebuilt pages leave the WAL now.
    store.checkpoint()?;
    Ok(pragma_i64(&store.conn, "auto_vacuum")? == INCREMENTAL)
}

/// The database's size in bytes (pages × page size).
fn db_bytes(conn: &rusqlite::Connection) -> Result<u64, StoreError> {
    let pages = pragma_i64(conn, "page_count")?;
    let size = pragma_i64(conn, "page_size")?;
    Ok(u64::try_from(pages.saturating_mul(size)).unwrap_or(0))
}

/// Free space of the directory holding `path`.
pub(super) fn free_space(path: &Path) -> Option<u64> {
    path.parent()
        .and_then(|dir| crate::space::free_bytes(dir).ok())
}

impl Store {
    /// Gives the database's free pages back to the file system: checkpoints
    /// the WAL (so every page zeroed by a delete is in the database file),
    /// then moves free pages to the end and cuts them off, a step at a time
    /// with a checkpoint after each. Returns how many pages were given back.
    /// Nothing on a database that is not incremental yet ([`convert`]).
    pub fn vacuum_free_pages(&mut self) -> Result<u64, StoreError> {
        // No delete of the paired connection between a checkpoint and the
        // step that relies on it (ARCHITECTURE I4).
        let pair = self.pair.clone();
        let r = (|| {
            if pragma_i64(&self.conn, "auto_vacuum")? != INCREMENTAL {
                return Ok(0);
            }
            let mut freed = 0u64;
            let pages = pragma_i64(&self.conn, "page_count")?;
            if !worth_it(pragma_i64(&self.conn, "freelist_count")?, pages) {
                return Ok(0);
            }
            let _pair = pair.lock().unwrap_or_else(|p| p.into_inner());
            for _ in 0..MAX_STEPS {
                let free = pragma_i64(&self.conn, "freelist_count")?;
                if free == 0 {
                    break;
                }
                // Zeroed pages first into the database file (I4): a page cut
                // off before its zeroed version was written there would give
                // its old content back to the file system.
                self.checkpoint_paired()?;
                if self.wal_dirty() {
                    break; // the checkpoint could not complete; next time
                }
                // Each step of the statement gives one page back (and
                // returns a row): run it to the end.
                self.conn
                    .prepare(&format!("PRAGMA incremental_vacuum({STEP_PAGES})"))
                    .and_then(|mut st| {
                        let mut rows = st.query([])?;
                        while rows.next()?.is_some() {}
                        Ok(())
                    })
                    .op("giving free pages back")?;
                freed += u64::try_from(free.min(STEP_PAGES)).unwrap_or(0);
                self.checkpoint_paired()?;
            }
            Ok(freed)
        })();
        self.finish(r)
    }

    /// Database size and free pages, in bytes: `(size, free)`.
    pub fn db_size(&mut self) -> Result<(u64, u64), StoreError> {
        let r = (|| {
            let size = db_bytes(&self.conn)?;
            let page = pragma_i64(&self.conn, "page_size")?;
            let free = pragma_i64(&self.conn, "freelist_count")?;
            Ok((size, u64::try_from(free.saturating_mul(page)).unwrap_or(0)))
        })();
        self.finish(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_pages_are_given_back_when_there_are_many_of_them() {
        assert!(!worth_it(0, 0));
        assert!(!worth_it(63, 64), "too few to bother");
        assert!(worth_it(64, 256));
        assert!(!worth_it(64, 257), "less than a quarter: reused soon");
        assert!(worth_it(99_000, 100_000));
        assert!(worth_it(i64::MAX, i64::MAX));
    }
}
