//! The single owner of the [`Store`]: one SQLite connection behind a mutex.
//!
//! Async code never touches the connection directly; it sends a closure to a
//! blocking thread with [`Db::call`], so no connection is held across an
//! `.await`. Threads that are already blocking (intake) use [`Db::lock`].

use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::Store;

/// Shared handle to the one store; cheap to clone.
#[derive(Clone)]
pub struct Db {
    /// The store; the mutex serialises every transaction, which is what makes
    /// "re-check consent, then hand to MQTT" atomic with respect to a revocation.
    inner: Arc<Mutex<Store>>,
}

/// The blocking task running a store closure panicked or was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("store task failed: {0}")]
pub struct DbTaskError(String);

impl Db {
    /// Takes ownership of an opened store.
    pub fn new(store: Store) -> Self {
        Db {
            inner: Arc::new(Mutex::new(store)),
        }
    }

    /// Locks the store on the current (blocking) thread.
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock aborts in release builds; in tests the
        // store itself is still consistent (SQLite rolled back), so carry on.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` with the store on a blocking thread.
    pub async fn call<R, F>(&self, f: F) -> Result<R, DbTaskError>
    where
        F: FnOnce(&mut Store) -> R + Send + 'static,
        R: Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || f(&mut db.lock()))
            .await
            .map_err(|e| DbTaskError(e.to_string()))
    }
}
