//! What an inbound message may cost (pure): which messages on the command
//! topics are not taken as commands at all, and how many refusals get an
//! audit row and a log line each (docs/PROTOCOL.md, "Command ingress").
//!
//! * **Ignored messages.** A message delivered with the retain flag is a
//!   stale retained message: the broker hands it out again at every
//!   subscription, and the device subscribes on every connection, so acting
//!   on it would replay it forever. (A command the fleet publishes with
//!   retain set still reaches an already subscribed device with the flag
//!   cleared, MQTT 3.1.1 §3.3.1.3, and is taken as a command.) A QoS 0
//!   message has no acknowledgement, so a command could not be kept until
//!   its effect commits (SPEC: commands are QoS 1). Neither is applied nor
//!   answered; the first of each kind per daemon run gets a log line and an
//!   audit row, the rest are only counted.
//! * **Refusals.** Every refused command is answered, but only the first
//!   [`RECORDED_PER_WINDOW`] refusals of a [`Class`] in a [`WINDOW_S`]
//!   window get a log line and an audit row each; the rest are counted, and
//!   one [`Summary`] (one row, one line) covers them when the window ends.
//!   The two classes have their own budget, so a flood of forged payloads
//!   cannot hide the refusal of a validly signed command.
//!
//! No I/O: the uplink asks, writes through the store and logs.

use std::collections::BTreeMap;

use crate::protocol::ErrorCode;

/// Length of a refusal window, in seconds.
pub const WINDOW_S: i64 = 60;
/// Refusals per [`Class`] and window that get a log line and an audit row each.
pub const RECORDED_PER_WINDOW: u32 = 10;

/// Why a message on a command topic is not taken as a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ignored {
    /// Delivered with the retain flag: a retained message handed out again
    /// because of a (new) subscription.
    Retained,
    /// Delivered at QoS 0.
    AtMostOnce,
}

impl Ignored {
    /// Its name in audit rows and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::Retained => "retained",
            Ignored::AtMostOnce => "qos0",
        }
    }

    fn index(self) -> usize {
        match self {
            Ignored::Retained => 0,
            Ignored::AtMostOnce => 1,
        }
    }
}

/// Whether a message delivered at QoS 0 (`qos0`) or with the retain flag
/// (`retain`) is ignored, and why (retained first: a retained QoS 0 message
/// is both).
pub fn ignored(qos0: bool, retain: bool) -> Option<Ignored> {
    if retain {
        Some(Ignored::Retained)
    } else if qos0 {
        Some(Ignored::AtMostOnce)
    } else {
        None
    }
}

/// Who can cause a refusal, each with its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Refused before a signature of a trusted key verified (`too_large`,
    /// `malformed`, `unknown_key`, `bad_signature`): anyone who may publish
    /// on the command topics.
    Unauthenticated,
    /// Refused after the signature verified (wrong role, time, audience,
    /// replay, arguments, the effect's own checks): signed by a trusted key,
    /// though possibly an old command sent again.
    Signed,
}

impl Class {
    /// The class of a refusal with `code`. `malformed` is counted as
    /// unauthenticated, although a signed command can be malformed too (a
    /// required claim missing): it cannot be told apart by its code.
    pub fn of(code: &ErrorCode) -> Class {
        match code {
            ErrorCode::TooLarge
            | ErrorCode::Malformed
            | ErrorCode::UnknownKey
            | ErrorCode::BadSignature => Class::Unauthenticated,
            _ => Class::Signed,
        }
    }

    fn index(self) -> usize {
        match self {
            Class::Unauthenticated => 0,
            Class::Signed => 1,
        }
    }
}

/// What to do with one refusal or ignored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it and audit it on its own.
    Record,
    /// Only count it (it is part of a later [`Summary`]).
    Count,
}

/// What was counted without a row of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Start of the first window it covers (unix seconds).
    pub from: i64,
    /// When it was taken.
    pub to: i64,
    /// Refusals without a row of their own, by error code.
    pub refused: BTreeMap<String, u64>,
    /// Ignored messages without a row of their own, by kind.
    pub ignored: BTreeMap<&'static str, u64>,
}

impl Summary {
    /// Refusals it counts.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    /// Ignored messages it counts.
    pub fn ignored_total(&self) -> u64 {
        self.ignored.values().sum()
    }

    fn is_empty(&self) -> bool {
        self.refused.is_empty() && self.ignored.is_empty()
    }
}

/// The rate limiter of inbound messages: see the module docs.
#[derive(Debug, Default)]
pub struct Ingress {
    /// Start of the current window; `None` before the first event.
    window: Option<i64>,
    /// Refusals recorded in the current window, per [`Class`].
    recorded: [u32; 2],
    /// Kinds of [`Ignored`] already recorded this run.
    ignored_seen: [bool; 2],
    /// Counted since the last summary.
    pending: Summary,
}

impl Ingress {
    /// Nothing seen yet.
    pub fn new() -> Ingress {
        Ingress::default()
    }

    /// One refused command with `code` at `now`.
    pub fn refused(&mut self, code: &ErrorCode, now: i64) -> Verdict {
        self.roll(now);
        let n = &mut self.recorded[Class::of(code).index()];
        if *n < RECORDED_PER_WINDOW {
            *n += 1;
            return Verdict::Record;
        }
        *self
            .pending
            .refused
            .entry(code.as_str().to_string())
            .or_default() += 1;
        Verdict::Count
    }

    /// One ignored message of `kind` at `now`: recorded the first time in
    /// this run, counted afterwards.
    pub fn ignored(&mut self, kind: Ignored, now: i64) -> Verdict {
        self.roll(now);
        let seen = &mut self.ignored_seen[kind.index()];
        if !*seen {
            *seen = true;
            return Verdict::Record;
        }
        *self.pending.ignored.entry(kind.as_str()).or_default() += 1;
        Verdict::Count
    }

    /// What was counted, once its window has ended (`None` before, or when
    /// nothing was counted).
    pub fn due(&mut self, now: i64) -> Option<Summary> {
        match self.window {
            Some(start) if now >= start && now < start.saturating_add(WINDOW_S) => None,
            _ => self.take(now),
        }
    }

    /// Everything counted so far, window or not (at shutdown).
    pub fn take(&mut self, now: i64) -> Option<Summary> {
        if self.pending.is_empty() {
            return None;
        }
        let mut summary = std::mem::take(&mut self.pending);
        summary.to = now;
        self.pending.from = now;
        Some(summary)
    }

    /// Starts a new window when the current one has ended (or the clock went
    /// back). Counts of the old window stay pending until [`Ingress::due`].
    fn roll(&mut self, now: i64) {
        if let Some(start) = self.window {
            if now >= start && now < start.saturating_add(WINDOW_S) {
                return;
            }
        }
        if self.pending.is_empty() {
            self.pending.from = now;
        }
        self.window = Some(now);
        self.recorded = [0; 2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;

    #[test]
    fn retained_and_qos0_messages_are_not_commands() {
        let cases = [
            // (qos0, retain, expected)
            (false, false, None),
            (false, true, Some(Ignored::Retained)),
            (true, false, Some(Ignored::AtMostOnce)),
            (true, true, Some(Ignored::Retained)),
        ];
        for (qos0, retain, want) in cases {
            assert_eq!(ignored(qos0, retain), want, "qos0={qos0} retain={retain}");
        }
    }

    #[test]
    fn refusals_are_classed_by_whether_a_signature_verified() {
        for code in ErrorCode::KNOWN {
            let want = matches!(
                code,
                ErrorCode::TooLarge
                    | ErrorCode::Malformed
                    | ErrorCode::UnknownKey
                    | ErrorCode::BadSignature
            );
            assert_eq!(Class::of(&code) == Class::Unauthenticated, want, "{code:?}");
        }
    }

    #[test]
    fn a_flood_gets_a_few_rows_then_one_summary_per_window() {
        let mut g = Ingress::new();
        let mut recorded = 0;
        for i in 0..300 {
            if g.refused(&ErrorCode::BadSignature, T0 + i / 100) == Verdict::Record {
                recorded += 1;
            }
            assert_eq!(g.due(T0 + i / 100), None, "nothing due inside the window");
        }
        assert_eq!(recorded, RECORDED_PER_WINDOW);
        let s = g.due(T0 + WINDOW_S).expect("due when the window ends");
        assert_eq!(s.from, T0);
        assert_eq!(s.to, T0 + WINDOW_S);
        assert_eq!(s.refused_total(), 300 - u64::from(RECORDED_PER_WINDOW));
        assert_eq!(s.refused.get("bad_signature"), Some(&290));
        assert_eq!(g.due(T0 + WINDOW_S + 1), None, "taken once");
        // A new window has its own budget.
        assert_eq!(
            g.refused(&ErrorCode::BadSignature, T0 + WINDOW_S + 1),
            Verdict::Record
        );
    }

    #[test]
    fn a_forged_flood_does_not_use_up_the_budget_of_signed_refusals() {
        let mut g = Ingress::new();
        for _ in 0..100 {
            g.refused(&ErrorCode::UnknownKey, T0);
        }
        for code in [ErrorCode::Expired, ErrorCode::Replayed] {
            assert_eq!(g.refused(&code, T0), Verdict::Record, "{code:?}");
        }
        for _ in 2..RECORDED_PER_WINDOW {
            assert_eq!(g.refused(&ErrorCode::WrongAudience, T0), Verdict::Record);
        }
        assert_eq!(g.refused(&ErrorCode::WrongAudience, T0), Verdict::Count);
        let s = g.take(T0 + 1).expect("counted");
        assert_eq!(s.refused.get("unknown_key"), Some(&90));
        assert_eq!(s.refused.get("wrong_audience"), Some(&1));
    }

    #[test]
    fn ignored_messages_are_recorded_once_per_kind_and_run() {
        let mut g = Ingress::new();
        for kind in [Ignored::Retained, Ignored::AtMostOnce] {
            assert_eq!(g.ignored(kind, T0), Verdict::Record);
            for _ in 0..4 {
                assert_eq!(g.ignored(kind, T0), Verdict::Count);
            }
        }
        let s = g.due(T0 + WINDOW_S).expect("counted");
        assert_eq!(s.ignored.get("retained"), Some(&4));
        assert_eq!(s.ignored.get("qos0"), Some(&4));
        assert_eq!(s.refused_total(), 0);
        // Still once per run: a later window does not record them again.
        assert_eq!(
            g.ignored(Ignored::Retained, T0 + 10 * WINDOW_S),
            Verdict::Count
        );
    }

    #[test]
    fn a_clock_set_back_ends_the_window() {
        let mut g = Ingress::new();
        for _ in 0..=RECORDED_PER_WINDOW {
            g.refused(&ErrorCode::Malformed, T0);
        }
        assert!(
            g.due(T0 - 5).is_some(),
            "the counted refusal is not kept back"
        );
        assert_eq!(g.refused(&ErrorCode::Malformed, T0 - 5), Verdict::Record);
    }

    #[test]
    fn nothing_is_due_when_nothing_was_counted() {
        let mut g = Ingress::new();
        assert_eq!(g.due(T0), None);
        g.refused(&ErrorCode::Expired, T0);
        assert_eq!(
            g.due(T0 + WINDOW_S),
            None,
            "recorded ones are not summed up"
        );
        assert_eq!(g.take(T0 + WINDOW_S), None);
    }
}
