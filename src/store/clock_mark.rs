//! The `clock_mark` table: the persisted high-water mark of the wall clock
//! (`crate::clock::watch::Mark`, ARCHITECTURE I15).

use rusqlite::{params, OptionalExtension};

use super::{SqlCtx, Store, StoreError};
use crate::clock::watch::Mark;

/// The stored mark, if any.
pub(super) fn load(store: &mut Store) -> Result<Option<Mark>, StoreError> {
    store
        .conn
        .query_row(
            "SELECT wall, boot, mono, high FROM clock_mark WHERE id = 1",
            [],
            |r| {
                Ok(Mark {
                    wall: r.get(0)?,
                    boot: r.get(1)?,
                    mono: r.get(2)?,
                    high: r.get(3)?,
                })
            },
        )
        .optional()
        .op("reading the clock mark")
}

/// Stores `mark` (replacing the previous one).
pub(super) fn save(store: &mut Store, mark: &Mark) -> Result<(), StoreError> {
    let w = store.writer()?;
    w.tx.prepare_cached(
        "INSERT INTO clock_mark (id, wall, boot, mono, high) VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT(id) DO UPDATE SET wall = excluded.wall, boot = excluded.boot,
             mono = excluded.mono, high = excluded.high",
    )
    .and_then(|mut s| s.execute(params![mark.wall, mark.boot, mark.mono, mark.high]))
    .op("storing the clock mark")?;
    w.commit()
}
