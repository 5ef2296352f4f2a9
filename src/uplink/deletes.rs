//! What to do after deleting acknowledged uploads from the outbox, as a pure
//! state machine. A delete that fails (typically a full disk) must not send
//! the captures again: they stay in flight (so the hand-over skips them), the
//! hand-over of anything new waits ([`DeleteRetry::failing`]), and the delete
//! is tried again after a backoff ([`Backoff`], jitter passed in) until it
//! commits. Then everything resumes at once.

use std::time::Duration;

use super::backoff::Backoff;

/// First wait after a failed delete.
pub const RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest wait between two attempts: space coming back is noticed within
/// this long.
pub const RETRY_MAX: Duration = Duration::from_secs(4);

/// The next step after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Deleted: the pieces leave the in-flight set. `recovered`: deletes had
    /// been failing until now (hand-over resumes).
    Done {
        /// Deletes were failing before this one.
        recovered: bool,
    },
    /// Not deleted: keep the pieces in flight, pause the hand-over, and try
    /// again after this long. `first`: the first failure of a streak (worth
    /// an error line; the rest are repeats).
    Retry {
        /// How long to wait.
        after: Duration,
        /// First failure since the last success.
        first: bool,
    },
}

/// Failed-delete backoff and the hand-over pause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRetry {
    backoff: Backoff,
    failing: bool,
}

impl Default for DeleteRetry {
    fn default() -> Self {
        DeleteRetry::new(RETRY_MIN, RETRY_MAX)
    }
}

impl DeleteRetry {
    /// Retries between `min` and `max` apart.
    pub fn new(min: Duration, max: Duration) -> DeleteRetry {
        DeleteRetry {
            backoff: Backoff::new(min, max),
            failing: false,
        }
    }

    /// The outcome of one delete attempt; `random` draws the jitter.
    pub fn on_result(&mut self, deleted: bool, random: u32) -> Next {
        if deleted {
            let recovered = self.failing;
            self.failing = false;
            self.backoff.reset();
            Next::Done { recovered }
        } else {
            let first = !self.failing;
            self.failing = true;
            Next::Retry {
                after: self.backoff.next(random),
                first,
            }
        }
    }

    /// Whether deletes are failing: nothing new is handed over meanwhile.
    pub fn failing(&self) -> bool {
        self.failing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn failures_back_off_pause_and_a_success_resumes() {
        let mut r = DeleteRetry::new(250 * MS, 1000 * MS);
        assert!(!r.failing());
        assert_eq!(r.on_result(true, u32::MAX), Next::Done { recovered: false });
        let waits: Vec<Next> = (0..5).map(|_| r.on_result(false, u32::MAX)).collect();
        assert_eq!(
            waits,
            [
                Next::Retry {
                    after: 250 * MS,
                    first: true
                },
                Next::Retry {
                    after: 500 * MS,
                    first: false
                },
                Next::Retry {
                    after: 1000 * MS,
                    first: false
                },
                Next::Retry {
                    after: 1000 * MS,
                    first: false
                },
                Next::Retry {
                    after: 1000 * MS,
                    first: false
                },
            ]
        );
        assert!(r.failing(), "hand-over paused while deletes fail");
        assert_eq!(r.on_result(true, 0), Next::Done { recovered: true });
        assert!(!r.failing());
        // The next streak starts from the minimum again.
        assert_eq!(
            r.on_result(false, u32::MAX),
            Next::Retry {
                after: 250 * MS,
                first: true
            }
        );
    }

    #[test]
    fn the_wait_never_exceeds_the_cap_and_is_never_zero() {
        let mut r = DeleteRetry::default();
        for random in [0, 1, u32::MAX / 3, u32::MAX] {
            for _ in 0..20 {
                let Next::Retry { after, .. } = r.on_result(false, random) else {
                    panic!("a failure retries");
                };
                assert!(after <= RETRY_MAX && after >= RETRY_MIN / 2, "{after:?}");
            }
        }
    }
}
