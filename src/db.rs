//! The single owner of the [`Store`]: one SQLite connection behind a mutex.
//!
//! Async code never touches the connection directly; it sends a closure to a
//! blocking thread with [`Db::run`], so no connection is held across an
//! `.await`. Threads that are already blocking (intake) use [`Db::lock`].
//!
//! A second connection to the same database ([`Store::second_connection`])
//! is kept for the deletes after PUBACK ([`Db::run_acks`]): they commit and
//! fsync without holding the store lock that the hand-over, intake and
//! revocations take.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::{Store, StoreError};

/// Shared handle to the one store; cheap to clone.
#[derive(Clone)]
pub struct Db {
    /// The store; the mutex serialises every transaction, which is what makes
    /// "re-check consent, then hand to MQTT" atomic with respect to a revocation.
    inner: Arc<Mutex<Store>>,
    /// The second connection, for acknowledged uploads only.
    acks: Arc<Mutex<Store>>,
}

/// Why a [`Db::run`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The store refused or failed the operation.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task running the store closure panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
}

impl Db {
    /// Takes ownership of an opened store and opens its second connection.
    pub fn new(store: Store) -> Result<Self, StoreError> {
        let acks = store.second_connection()?;
        Ok(Db {
            inner: Arc::new(Mutex::new(store)),
            acks: Arc::new(Mutex::new(acks)),
        })
    }

    /// Locks the store on the current (blocking) thread.
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock aborts in release builds; in tests the
        // store itself is still consistent (SQLite rolled back), so carry on.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` with the store on a blocking thread and returns its result;
    /// a store error and a failed task both come back as one [`DbError`].
    pub async fn run<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        match tokio::task::spawn_blocking(move || f(&mut db.lock())).await {
            Ok(result) => Ok(result?),
            Err(e) => Err(DbError::Task(e.to_string())),
        }
    }

    /// [`Db::run`] on the second connection, without the store lock: only
    /// for recording acknowledged uploads ([`Store::ack_uploads`]), so their
    /// fsync does not hold up the hand-over. SQLite serialises its write
    /// transactions with the main connection's.
    pub async fn run_acks<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let acks = self.acks.clone();
        let run = move || f(&mut acks.lock().unwrap_or_else(|p| p.into_inner()));
        match tokio::task::spawn_blocking(run).await {
            Ok(result) => Ok(result?),
            Err(e) => Err(DbError::Task(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DeviceKey;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), DeviceKey::from_bytes([7u8; 32])).unwrap();
        (dir, Db::new(store).unwrap())
    }

    #[tokio::test]
    async fn run_passes_the_value_through() {
        let (_dir, db) = db();
        db.run(|s| s.bump("accepted", 3)).await.unwrap();
        let counters = db.run(|s| s.counters()).await.unwrap();
        assert_eq!(counters.get("accepted"), Some(&3));
    }

    #[tokio::test]
    async fn run_passes_the_store_error_through() {
        let (_dir, db) = db();
        let err = db
            .run(|_| -> Result<(), StoreError> { Err(StoreError::Replayed { jti: "j-1".into() }) })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DbError::Store(StoreError::Replayed { jti }) if jti == "j-1"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "command j-1 was already applied");
    }

    #[tokio::test]
    async fn a_panicking_store_call_is_a_task_error_and_the_store_stays_usable() {
        let (_dir, db) = db();
        let err = db
            .run(|_| -> Result<(), StoreError> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(matches!(err, DbError::Task(_)), "{err:?}");
        assert!(db.run(|s| s.counters()).await.is_ok());
    }
}
