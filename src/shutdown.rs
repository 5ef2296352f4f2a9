//! Typed shutdown, passed in from the edge: `main` turns SIGTERM/SIGINT into
//! [`Trigger::fire`]; tests fire it themselves. Every long-running task holds a
//! [`Shutdown`] and stops at its next safe point once it fires.

use tokio::sync::watch;

/// Why the daemon is stopping (logged, and decides nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// SIGTERM or SIGINT from the service manager or a terminal.
    Signal,
    /// A test or an embedding program asked for it.
    Requested,
}

/// The firing side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// Carries `None` until shutdown, then the reason.
    tx: watch::Sender<Option<Reason>>,
}

/// The listening side; cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Observes the trigger's value.
    rx: watch::Receiver<Option<Reason>>,
}

/// A connected trigger and listener.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(None);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    /// Asks every holder of a [`Shutdown`] to stop. Firing twice keeps the first reason.
    pub fn fire(&self, reason: Reason) {
        self.tx.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

impl Shutdown {
    /// The reason, once fired.
    pub fn reason(&self) -> Option<Reason> {
        *self.rx.borrow()
    }

    /// True once fired; for loops that poll between units of work.
    pub fn is_fired(&self) -> bool {
        self.reason().is_some()
    }

    /// Waits until fired (returns at once if it already was, or if every trigger is gone).
    pub async fn wait(&mut self) -> Reason {
        loop {
            if let Some(r) = *self.rx.borrow_and_update() {
                return r;
            }
            if self.rx.changed().await.is_err() {
                return Reason::Requested;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_once_and_wakes_waiters() {
        let (trigger, shutdown) = channel();
        let mut a = shutdown.clone();
        assert!(!shutdown.is_fired());
        let waiter = tokio::spawn(async move { a.wait().await });
        trigger.fire(Reason::Signal);
        trigger.fire(Reason::Requested);
        assert_eq!(waiter.await.unwrap(), Reason::Signal);
        assert_eq!(shutdown.reason(), Some(Reason::Signal));
    }

    #[tokio::test]
    async fn dropped_trigger_releases_waiters() {
        let (trigger, mut shutdown) = channel();
        drop(trigger);
        assert_eq!(shutdown.wait().await, Reason::Requested);
    }
}
