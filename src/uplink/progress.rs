//! How far each capture being sent in parts has got, in memory, as a pure
//! state machine (no I/O, no clock).
//!
//! The store stays the durable record (`capture_parts`): a capture is
//! started in parts with the parts the store holds as acknowledged (those of
//! its current split), and a restart or a reconnect starts again from the
//! store (ARCHITECTURE I12: parts not acknowledged are sent again with the
//! same ids). In between, each part PUBACK is added here as the deleter
//! takes it (before it is written; it stays in the agent's in-flight set
//! until it is), so a hand-over needs no query to know which parts are left.

use std::collections::{BTreeSet, HashMap};

use crate::ids::CaptureId;
use crate::protocol::{PartNo, Piece};

/// What one acknowledged upload means for its capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// A whole capture: delete it.
    Whole,
    /// A part; other parts of its capture are still to be acknowledged.
    Partial,
    /// The last part of its capture: write and delete it.
    Complete,
    /// A part of a capture not followed here (let go of, purged, or split
    /// differently since): the store decides.
    Unknown,
}

/// The parts acknowledged (written or not) of each capture in parts, of
/// the split it is sent with.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Progress {
    captures: HashMap<CaptureId, Split>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Split {
    of: u32,
    acked: BTreeSet<u32>,
}

impl Progress {
    /// Nothing followed.
    pub fn new() -> Progress {
        Progress::default()
    }

    /// Starts following `capture_id`, split into `of` parts, with the parts
    /// the store holds as acknowledged (`recorded`, of any split: only
    /// those of this split count).
    pub fn start(&mut self, capture_id: &CaptureId, of: u32, recorded: &[PartNo]) {
        let acked = recorded
            .iter()
            .filter(|p| p.of == of && p.index < of)
            .map(|p| p.index)
            .collect();
        self.captures
            .insert(capture_id.clone(), Split { of, acked });
    }

    /// Whether `capture_id` is followed, split into `of`.
    pub fn follows(&self, capture_id: &CaptureId, of: u32) -> bool {
        self.captures.get(capture_id).is_some_and(|s| s.of == of)
    }

    /// The parts of `capture_id` neither acknowledged nor in `in_flight`, in
    /// order; `None` if it is not followed.
    pub fn todo(&self, capture_id: &CaptureId, in_flight: &[u32]) -> Option<Vec<u32>> {
        let s = self.captures.get(capture_id)?;
        Some(
            (0..s.of)
                .filter(|i| !s.acked.contains(i) && !in_flight.contains(i))
                .collect(),
        )
    }

    /// The broker acknowledged `piece`.
    pub fn on_acked(&mut self, piece: &Piece) -> Ack {
        let Some(part) = piece.part else {
            return Ack::Whole;
        };
        match self.captures.get_mut(&piece.capture_id) {
            Some(s) if s.of == part.of && part.index < s.of => {
                s.acked.insert(part.index);
                if s.acked.len() as u32 == s.of {
                    Ack::Complete
                } else {
                    Ack::Partial
                }
            }
            _ => Ack::Unknown,
        }
    }

    /// Stops following `capture_id` (deleted, purged or let go of).
    pub fn forget(&mut self, capture_id: &CaptureId) {
        self.captures.remove(capture_id);
    }

    /// Stops following everything (a reconnect: the store is read again).
    pub fn clear(&mut self) {
        self.captures.clear();
    }

    /// How many captures are followed.
    pub fn len(&self) -> usize {
        self.captures.len()
    }

    /// Whether nothing is followed.
    pub fn is_empty(&self) -> bool {
        self.captures.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(id: &str, index: u32, of: u32) -> Piece {
        Piece::part(id.into(), index, of)
    }

    fn no(index: u32, of: u32) -> PartNo {
        PartNo { index, of }
    }

    #[test]
    fn starts_from_the_parts_the_store_holds_for_the_same_split() {
        let mut p = Progress::new();
        let id = CaptureId::from("a");
        p.start(&id, 4, &[no(0, 4), no(2, 4), no(1, 3), no(9, 4)]);
        assert!(p.follows(&id, 4));
        assert!(!p.follows(&id, 3));
        assert_eq!(p.todo(&id, &[]), Some(vec![1, 3]));
        assert_eq!(p.todo(&id, &[3]), Some(vec![1]), "in flight");
        assert_eq!(p.todo(&"b".into(), &[]), None, "not followed");
    }

    #[test]
    fn each_ack_counts_once_and_the_last_part_completes() {
        let mut p = Progress::new();
        p.start(&"a".into(), 3, &[no(1, 3)]);
        assert_eq!(p.on_acked(&part("a", 0, 3)), Ack::Partial);
        assert_eq!(p.on_acked(&part("a", 0, 3)), Ack::Partial, "a duplicate");
        assert_eq!(p.todo(&"a".into(), &[]), Some(vec![2]));
        assert_eq!(p.on_acked(&part("a", 2, 3)), Ack::Complete);
        assert_eq!(p.todo(&"a".into(), &[]), Some(vec![]));
        assert_eq!(p.on_acked(&Piece::whole("w".into())), Ack::Whole);
    }

    #[test]
    fn a_part_of_another_split_or_capture_is_not_counted() {
        // E.g. a PUBACK of a part sent before a reconnect under which the
        // broker announced another packet limit.
        let mut p = Progress::new();
        p.start(&"a".into(), 2, &[]);
        assert_eq!(p.on_acked(&part("a", 0, 3)), Ack::Unknown);
        assert_eq!(p.on_acked(&part("a", 5, 2)), Ack::Unknown, "out of range");
        assert_eq!(p.on_acked(&part("b", 0, 2)), Ack::Unknown);
        assert_eq!(p.todo(&"a".into(), &[]), Some(vec![0, 1]));
        assert_eq!(p.on_acked(&part("a", 1, 2)), Ack::Partial);
    }

    #[test]
    fn a_purge_or_a_reconnect_lets_go_and_the_store_is_read_again() {
        let mut p = Progress::new();
        p.start(&"a".into(), 2, &[]);
        p.start(&"b".into(), 2, &[]);
        assert_eq!(p.on_acked(&part("a", 0, 2)), Ack::Partial);
        // Revoked: forgotten; a late PUBACK is left to the store.
        p.forget(&"a".into());
        assert_eq!(p.len(), 1);
        assert_eq!(p.on_acked(&part("a", 1, 2)), Ack::Unknown);
        // A reconnect: nothing is followed until started again from the
        // store, which holds what was written.
        p.clear();
        assert!(p.is_empty());
        assert_eq!(p.on_acked(&part("b", 0, 2)), Ack::Unknown);
        p.start(&"b".into(), 2, &[no(0, 2)]);
        assert_eq!(p.todo(&"b".into(), &[]), Some(vec![1]));
    }
}
