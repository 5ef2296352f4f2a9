//! The `commands` table: ids of applied fleet commands, kept until a day after
//! their expiry so a replayed command is refused.

use rusqlite::{params, OptionalExtension};

use super::{CommandStamp, SqlCtx, Store, StoreError, Writer};
use crate::ids::Jti;

/// How long after its `exp` a command id is still remembered.
const KEEP_AFTER_EXPIRY_S: i64 = 24 * 60 * 60;

/// True if `jti` was applied.
pub(super) fn seen(store: &mut Store, jti: &Jti) -> Result<bool, StoreError> {
    store
        .conn
        .query_row(
            "SELECT 1 FROM commands WHERE jti = ?1",
            [jti.as_str()],
            |_| Ok(()),
        )
        .optional()
        .op("looking up a command id")
        .map(|r| r.is_some())
}

/// Stores `jti` with the reply kept for it inside `w`;
/// [`StoreError::Replayed`] if it is already there.
pub(super) fn remember(
    w: &mut Writer,
    jti: &Jti,
    expires_at: i64,
    reply: &str,
    now: i64,
) -> Result<(), StoreError> {
    let inserted =
        w.tx.execute(
            "INSERT INTO commands (jti, expires_at, seen_at, reply) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(jti) DO NOTHING",
            params![jti.as_str(), expires_at, now, reply],
        )
        .op("remembering a command id and its reply")?;
    if inserted == 0 {
        return Err(StoreError::Replayed {
            jti: jti.to_string(),
        });
    }
    Ok(())
}

/// Remembers a command without an effect of its own, with its reply (and
/// audits it), in its own transaction.
pub(super) fn remember_tx(
    store: &mut Store,
    cmd: CommandStamp<'_, ()>,
    now: i64,
) -> Result<(), StoreError> {
    let mut w = store.writer()?;
    w.applied(Some(cmd), &(), now)?;
    w.commit()
}

/// The reply kept for the applied command `jti`, if any.
pub(super) fn reply(store: &mut Store, jti: &Jti) -> Result<Option<String>, StoreError> {
    store
        .conn
        .query_row(
            "SELECT reply FROM commands WHERE jti = ?1",
            [jti.as_str()],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()
        .op("reading a command reply")
        .map(Option::flatten)
}

/// Deletes ids whose expiry is more than a day past.
pub(super) fn forget(store: &mut Store, now: i64) -> Result<u64, StoreError> {
    let n = store
        .conn
        .execute(
            "DELETE FROM commands WHERE expires_at <= ?1",
            [now.saturating_sub(KEEP_AFTER_EXPIRY_S)],
        )
        .op("forgetting old command ids")?;
    Ok(n as u64)
}
