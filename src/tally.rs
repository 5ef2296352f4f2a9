//! Drops of captures without consent, counted in memory between two
//! writes to the store (ARCHITECTURE I5): a drop costs no write of its own
//! on the terminal's flash. Intake adds to it and writes it with its next
//! batch transaction, or on its own every [`FLUSH_EVERY`] and at a clean
//! stop; the status adds what is not written yet to the stored counter.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long drop counts wait in memory at most before intake writes them
/// on their own (when no batch transaction took them sooner). What a crash
/// (not a clean stop) may lose is the counts of about this long.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// At most this many cameras are named in one summary; the rest are
/// counted under [`OTHER_CAMERAS`] (a camera name comes from the sidecar).
const MAX_CAMERAS: usize = 16;
/// The summary key for cameras beyond [`MAX_CAMERAS`].
pub const OTHER_CAMERAS: &str = "(other)";

/// Drops counted and not yet written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// How many.
    pub count: u64,
    /// By the gate's reason code.
    pub reasons: BTreeMap<String, u64>,
    /// By camera.
    pub cameras: BTreeMap<String, u64>,
    /// When the oldest of them was counted.
    #[serde(skip)]
    pub since: Option<Instant>,
}

impl Dropped {
    /// Counts one drop for `reason` from `camera`, seen at `at`.
    pub fn add(&mut self, reason: &str, camera: &str, at: Instant) {
        self.count += 1;
        *self.reasons.entry(reason.to_owned()).or_default() += 1;
        let camera = if self.cameras.contains_key(camera) || self.cameras.len() < MAX_CAMERAS {
            camera
        } else {
            OTHER_CAMERAS
        };
        *self.cameras.entry(camera.to_owned()).or_default() += 1;
        self.since.get_or_insert(at);
    }

    /// Whether these counts are due to be written on their own at `now`
    /// (held for [`FLUSH_EVERY`]).
    pub fn due(&self, now: Instant) -> bool {
        self.since
            .is_some_and(|since| now.saturating_duration_since(since) >= FLUSH_EVERY)
    }

    /// Takes away `written` (a snapshot of these counts that the store now
    /// holds); what was counted since stays.
    fn settle(&mut self, written: &Dropped) {
        self.count = self.count.saturating_sub(written.count);
        for (map, done) in [
            (&mut self.reasons, &written.reasons),
            (&mut self.cameras, &written.cameras),
        ] {
            for (k, n) in done {
                if let Some(v) = map.get_mut(k) {
                    *v = v.saturating_sub(*n);
                    if *v == 0 {
                        map.remove(k);
                    }
                }
            }
        }
        if self.count == 0 {
            *self = Dropped::default();
        }
    }
}

/// The shared tally: intake adds and settles, the status reads.
#[derive(Debug, Default)]
pub struct Tally {
    /// Drops not yet written.
    dropped: Mutex<Dropped>,
}

impl Tally {
    fn with<T>(&self, f: impl FnOnce(&mut Dropped) -> T) -> T {
        // A poisoned lock still holds plain counts: use them.
        let mut guard = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Counts one drop.
    pub fn add_drop(&self, reason: &str, camera: &str) {
        self.with(|d| d.add(reason, camera, Instant::now()))
    }

    /// What is counted and not yet written.
    pub fn snapshot(&self) -> Dropped {
        self.with(|d| d.clone())
    }

    /// Drops counted and not yet written (for the status).
    pub fn pending(&self) -> u64 {
        self.with(|d| d.count)
    }

    /// The store committed `written` (a [`Tally::snapshot`]). Call it with
    /// the store lock still held, so a status (read under that lock) never
    /// sees a drop twice or not at all.
    pub fn settle(&self, written: &Dropped) {
        self.with(|d| d.settle(written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_settled_by_what_was_written_and_keep_the_rest() {
        let t0 = Instant::now();
        let mut d = Dropped::default();
        d.add("no_consent", "cam-1", t0);
        d.add("revoked", "cam-2", t0);
        let written = d.clone();
        d.add("no_consent", "cam-1", t0 + Duration::from_secs(1));
        d.settle(&written);
        assert_eq!(d.count, 1);
        assert_eq!(d.reasons.get("no_consent"), Some(&1));
        assert_eq!(d.reasons.get("revoked"), None);
        assert_eq!(d.cameras.get("cam-2"), None);
        d.settle(&d.clone());
        assert_eq!(d, Dropped::default());
    }

    #[test]
    fn counts_are_due_after_the_flush_period_of_the_oldest() {
        let t0 = Instant::now();
        let mut d = Dropped::default();
        assert!(!d.due(t0 + FLUSH_EVERY * 10), "nothing counted");
        d.add("no_consent", "cam-1", t0);
        d.add("no_consent", "cam-1", t0 + FLUSH_EVERY);
        assert!(!d.due(t0 + FLUSH_EVERY / 2));
        assert!(d.due(t0 + FLUSH_EVERY));
    }

    #[test]
    fn cameras_beyond_the_limit_are_counted_together() {
        let t0 = Instant::now();
        let mut d = Dropped::default();
        for i in 0..MAX_CAMERAS + 3 {
            d.add("no_consent", &format!("cam-{i}"), t0);
        }
        d.add("no_consent", "cam-0", t0);
        assert_eq!(d.cameras.len(), MAX_CAMERAS + 1);
        assert_eq!(d.cameras.get(OTHER_CAMERAS), Some(&3));
        assert_eq!(d.cameras.get("cam-0"), Some(&2));
        assert_eq!(d.cameras.values().sum::<u64>(), d.count);
    }
}
