//! Repeated log lines, rate-limited with a count (pure rule, one registry).
//!
//! A condition that repeats (the broker connection dropping on every
//! reconnect, the store refusing every delete) is logged the first time;
//! after that at most one line per [`WINDOW_S`] window says how often it
//! happened since the last line ("… ×541 in the last minute"). The rule is
//! [`Repeat::occur`] (and [`Repeat::due`] for a window that ended with
//! nothing after it), a pure function of the past and `now`; [`admit`] and
//! [`due`] keep one [`Repeat`] per message and detail (the reason of a lost
//! connection: a new reason is logged at once) for the whole process, so
//! every call site of a message shares it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

/// Length of a window, in seconds: at most one line per message per window.
pub const WINDOW_S: i64 = 60;

/// What a line about an occurrence says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// The first occurrence since the last line's window ended: the line
    /// as it is.
    Once,
    /// This occurrence and the ones not logged since the last line: `n`
    /// in all.
    Repeated(u64),
}

/// The suffix of the line: nothing for [`Times::Once`], " ×N in the last
/// minute" otherwise.
impl fmt::Display for Times {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Times::Once => Ok(()),
            Times::Repeated(n) => write!(f, " ×{n} in the last minute"),
        }
    }
}

/// One message's state: when its last line was written and how many
/// occurrences were not logged since.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repeat {
    /// When the last line was written (unix seconds); `None` before the
    /// first, or after a window that ended with nothing to report.
    since: Option<i64>,
    /// Occurrences since then without a line of their own.
    quiet: u64,
}

impl Repeat {
    /// Nothing seen yet.
    pub fn new() -> Repeat {
        Repeat::default()
    }

    /// Whether the window of the last line is still open at `now` (a clock
    /// that went back ends it).
    fn open(&self, now: i64) -> bool {
        self.since
            .is_some_and(|since| now >= since && now < since.saturating_add(WINDOW_S))
    }

    /// One occurrence at `now`: the line to write, or `None` (counted for
    /// the next line).
    pub fn occur(&mut self, now: i64) -> Option<Times> {
        if self.open(now) {
            self.quiet = self.quiet.saturating_add(1);
            return None;
        }
        let times = match self.quiet {
            0 => Times::Once,
            n => Times::Repeated(n.saturating_add(1)),
        };
        *self = Repeat {
            since: Some(now),
            quiet: 0,
        };
        Some(times)
    }

    /// Looked at without an occurrence (on a timer): once the window ended,
    /// how many occurrences went unlogged in it (a summary line is due), or
    /// `None`. A window that ended with nothing unlogged is forgotten, so
    /// the next occurrence is logged at once.
    pub fn due(&mut self, now: i64) -> Option<u64> {
        if self.since.is_none() || self.open(now) {
            return None;
        }
        let n = self.quiet;
        if n == 0 {
            *self = Repeat::new();
            return None;
        }
        *self = Repeat {
            since: Some(now),
            quiet: 0,
        };
        Some(n)
    }
}

/// A rate-limited message: its text and the detail that tells its
/// occurrences apart (the reason of a lost connection: a new reason is
/// logged at once, the same one again is counted).
type Key = (&'static str, String);

/// The process-wide state of each rate-limited message and detail.
fn registry() -> std::sync::MutexGuard<'static, HashMap<Key, Repeat>> {
    static REGISTRY: OnceLock<Mutex<HashMap<Key, Repeat>>> = OnceLock::new();
    REGISTRY
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// One occurrence of `message` with `detail` at `now` (unix seconds):
/// `Some` when a line is to be written (its suffix is the [`Times`]),
/// `None` when it is only counted.
pub fn admit(message: &'static str, detail: &str, now: i64) -> Option<Times> {
    registry()
        .entry((message, detail.to_string()))
        .or_default()
        .occur(now)
}

/// The messages (with their detail) whose window ended at `now` with
/// occurrences not logged, and how many each: the caller writes one summary
/// line for each (see [`Repeat::due`]). Messages with nothing left to
/// report are forgotten.
pub fn due(now: i64) -> Vec<(&'static str, String, u64)> {
    let mut reg = registry();
    let mut out: Vec<(&'static str, String, u64)> = reg
        .iter_mut()
        .filter_map(|((message, detail), r)| r.due(now).map(|n| (*message, detail.clone(), n)))
        .collect();
    reg.retain(|_, r| *r != Repeat::new());
    out.sort_unstable();
    out
}

/// Writes a summary line (WARN) for every message [`due`] at `now`.
pub fn log_due(now: i64) {
    for (message, detail, n) in due(now) {
        tracing::warn!(%detail, repeated = n, "{message}{}", Times::Repeated(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;

    #[test]
    fn the_first_occurrence_is_logged_and_the_rest_of_the_window_counted() {
        let mut r = Repeat::new();
        assert_eq!(r.occur(T0), Some(Times::Once));
        for s in 0..WINDOW_S {
            assert_eq!(r.occur(T0 + s), None, "second {s}");
        }
        // The window ends: the next occurrence says how many since the line.
        assert_eq!(
            r.occur(T0 + WINDOW_S),
            Some(Times::Repeated(WINDOW_S as u64 + 1))
        );
        assert_eq!(r.occur(T0 + WINDOW_S + 1), None);
        assert_eq!(r.occur(T0 + 2 * WINDOW_S), Some(Times::Repeated(2)));
    }

    #[test]
    fn a_flood_gives_one_line_per_window() {
        let mut r = Repeat::new();
        let mut lines = Vec::new();
        // 541 occurrences in 45 s, then 10 per second for four more minutes.
        for i in 0..541 {
            if let Some(t) = r.occur(T0 + i * 45 / 541) {
                lines.push(t);
            }
        }
        assert_eq!(lines, [Times::Once]);
        for s in 45..(45 + 240) {
            for _ in 0..10 {
                if let Some(t) = r.occur(T0 + s) {
                    lines.push(t);
                }
            }
        }
        // 45..285 s: lines at 60, 120, 180, 240 s.
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(lines[1], Times::Repeated(540 + 15 * 10 + 1));
        assert_eq!(lines[2], Times::Repeated(60 * 10));
    }

    #[test]
    fn a_single_occurrence_after_a_quiet_window_is_logged_as_it_is() {
        let mut r = Repeat::new();
        assert_eq!(r.occur(T0), Some(Times::Once));
        assert_eq!(r.occur(T0 + WINDOW_S), Some(Times::Once));
        assert_eq!(r.occur(T0 + 10 * WINDOW_S), Some(Times::Once));
    }

    #[test]
    fn what_was_counted_is_reported_once_the_window_ends_even_without_a_new_occurrence() {
        let mut r = Repeat::new();
        assert_eq!(r.due(T0), None, "nothing seen");
        assert_eq!(r.occur(T0), Some(Times::Once));
        assert_eq!(r.due(T0 + WINDOW_S), None, "nothing unlogged");
        // Forgotten: the next one is logged at once.
        assert_eq!(r.occur(T0 + WINDOW_S + 5), Some(Times::Once));
        let start = T0 + WINDOW_S + 5;
        assert_eq!(r.occur(start + 1), None);
        assert_eq!(r.occur(start + 2), None);
        assert_eq!(r.due(start + WINDOW_S - 1), None, "window still open");
        assert_eq!(r.due(start + WINDOW_S), Some(2));
        assert_eq!(r.due(start + WINDOW_S + 1), None, "reported once");
        // The summary opened a window: occurrences in it are counted.
        assert_eq!(r.occur(start + WINDOW_S + 2), None);
        assert_eq!(r.occur(start + 2 * WINDOW_S), Some(Times::Repeated(2)));
    }

    #[test]
    fn a_clock_that_goes_back_ends_the_window() {
        let mut r = Repeat::new();
        assert_eq!(r.occur(T0), Some(Times::Once));
        assert_eq!(r.occur(T0 + 1), None);
        assert_eq!(r.occur(T0 - 3600), Some(Times::Repeated(2)));
        // No overflow at the end of time.
        assert_eq!(r.occur(i64::MAX), Some(Times::Once));
        assert!(r.due(i64::MAX).is_none());
    }

    #[test]
    fn the_suffix_says_how_often() {
        assert_eq!(Times::Once.to_string(), "");
        assert_eq!(Times::Repeated(541).to_string(), " ×541 in the last minute");
    }

    #[test]
    fn the_registry_keeps_one_state_per_message_and_detail() {
        let a = "repeat test message a";
        let b = "repeat test message b";
        assert_eq!(admit(a, "x", T0), Some(Times::Once));
        assert_eq!(admit(a, "x", T0 + 1), None);
        assert_eq!(admit(a, "y", T0 + 1), Some(Times::Once), "another detail");
        assert_eq!(admit(b, "x", T0 + 1), Some(Times::Once), "another message");
        let due = due(T0 + WINDOW_S + 1);
        assert!(due.contains(&(a, "x".to_string(), 1)), "{due:?}");
        assert!(!due.iter().any(|(m, d, _)| *m == b || d == "y"), "{due:?}");
        // Reported, then forgotten once a window passes with nothing.
        assert!(registry().contains_key(&(a, "x".to_string())));
        assert!(
            !registry().contains_key(&(a, "y".to_string())),
            "nothing to report"
        );
        assert!(super::due(T0 + 3 * WINDOW_S)
            .iter()
            .all(|(m, _, _)| *m != a));
        assert!(!registry().contains_key(&(a, "x".to_string())));
        assert_eq!(admit(a, "x", T0 + 3 * WINDOW_S), Some(Times::Once));
    }
}
