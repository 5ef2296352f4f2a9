//! How long to wait before the next connection attempt, as a pure state
//! machine: exponential from `min`, doubling after each failure up to `max`,
//! back to `min` once a connection is accepted. The jitter is drawn by the
//! caller and passed in, so every delay is a function of the inputs.

use std::time::Duration;

/// Exponential reconnect backoff with jitter, capped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// First delay, and the delay after a reset.
    min: Duration,
    /// Cap (never below `min`).
    max: Duration,
    /// The next delay before jitter.
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `min` and capped at `max` (a `max` below `min`
    /// is taken as `min`).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            current: min,
        }
    }

    /// A connection was accepted: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// The delay before the next attempt, and the backoff doubled (up to the
    /// cap) for the one after. `random` is a uniformly drawn `u32`: the delay
    /// lies between half the current step (`random` = 0) and the full step
    /// (`random` = `u32::MAX`), so devices that lost the broker together do
    /// not all come back in the same instant.
    pub fn next(&mut self, random: u32) -> Duration {
        let step = self.current;
        self.current = step.checked_mul(2).map_or(self.max, |d| d.min(self.max));
        jittered(step, random)
    }

    /// The step the next delay is drawn from (before jitter).
    pub fn step(&self) -> Duration {
        self.current
    }
}

/// Between `step / 2` (`random` = 0) and `step` (`random` = `u32::MAX`),
/// linearly, in whole nanoseconds.
fn jittered(step: Duration, random: u32) -> Duration {
    let nanos = step.as_nanos();
    let half = nanos / 2;
    let upper = nanos - half;
    let extra = upper * u128::from(random) / u128::from(u32::MAX);
    let total = half + extra;
    // `total` never exceeds `step`, so the seconds fit in a u64.
    let secs = u64::try_from(total / 1_000_000_000).unwrap_or(u64::MAX);
    Duration::new(secs, (total % 1_000_000_000) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn steps(b: &mut Backoff, n: usize) -> Vec<Duration> {
        (0..n).map(|_| b.next(u32::MAX)).collect()
    }

    #[test]
    fn doubles_from_min_up_to_the_cap_and_stays_there() {
        let mut b = Backoff::new(S, 10 * S);
        assert_eq!(
            steps(&mut b, 7),
            [S, 2 * S, 4 * S, 8 * S, 10 * S, 10 * S, 10 * S]
        );
        assert_eq!(b.step(), 10 * S);
    }

    #[test]
    fn a_reset_starts_over_from_min() {
        let mut b = Backoff::new(S, 60 * S);
        steps(&mut b, 4);
        assert_eq!(b.step(), 16 * S);
        b.reset();
        assert_eq!(b.step(), S);
        assert_eq!(steps(&mut b, 2), [S, 2 * S]);
        // A reset at the start changes nothing.
        let mut fresh = Backoff::new(S, 60 * S);
        fresh.reset();
        assert_eq!(fresh, Backoff::new(S, 60 * S));
    }

    #[test]
    fn jitter_spans_the_upper_half_of_the_step() {
        for (random, want) in [
            (0, Duration::from_millis(500)),
            (u32::MAX / 2, Duration::from_millis(750)),
            (u32::MAX, S),
        ] {
            let mut b = Backoff::new(S, 60 * S);
            let got = b.next(random);
            assert!(
                got.abs_diff(want) <= Duration::from_nanos(1),
                "random {random}: {got:?}, want {want:?}"
            );
        }
        // Monotone in the draw, always within [step/2, step].
        let mut last = Duration::ZERO;
        for random in (0..=u32::MAX).step_by(1 << 24).chain([u32::MAX]) {
            let got = Backoff::new(3 * S, 60 * S).next(random);
            assert!(got >= last && got >= 3 * S / 2 && got <= 3 * S, "{got:?}");
            last = got;
        }
    }

    #[test]
    fn jitter_does_not_change_the_progression() {
        let mut low = Backoff::new(S, 8 * S);
        let mut high = Backoff::new(S, 8 * S);
        for _ in 0..6 {
            low.next(0);
            high.next(u32::MAX);
            assert_eq!(low.step(), high.step());
        }
    }

    #[test]
    fn the_cap_is_exact_even_when_doubling_overshoots() {
        let mut b = Backoff::new(Duration::from_millis(300), S);
        assert_eq!(
            steps(&mut b, 4),
            [Duration::from_millis(300), Duration::from_millis(600), S, S]
        );
    }

    #[test]
    fn degenerate_bounds_are_safe() {
        // max below min: min is the cap.
        let mut b = Backoff::new(5 * S, S);
        assert_eq!(steps(&mut b, 3), [5 * S, 5 * S, 5 * S]);
        // min equal to max: constant.
        let mut b = Backoff::new(2 * S, 2 * S);
        assert_eq!(steps(&mut b, 3), [2 * S, 2 * S, 2 * S]);
        // Doubling a huge step does not overflow.
        let mut b = Backoff::new(Duration::MAX / 2 + S, Duration::MAX);
        b.next(0);
        assert_eq!(b.step(), Duration::MAX);
        assert_eq!(b.next(u32::MAX), Duration::MAX);
        // A zero step stays zero.
        assert_eq!(
            Backoff::new(Duration::ZERO, S).next(u32::MAX),
            Duration::ZERO
        );
    }
}
