//! The hand-over decision (ARCHITECTURE I7, "Consent at hand-over"), pure:
//! given the captures the outbox offers, the consent rule's verdict for each
//! of their subjects and the room left in the window, which captures go to
//! MQTT now (quoting which consent) and which subjects are purged instead.
//! A capture too large for one packet goes as parts: each part is one
//! upload, takes one slot of the window, and is handed over only under a
//! verdict taken in the same critical section, so consent is checked again
//! before every part (a revocation between two parts stops the rest).
//!
//! The caller (`super::upload`) takes the store lock, reads the queued
//! captures (those not already in flight), asks the rule once per subject
//! ([`subjects`]), and applies the [`Plan`] before releasing the lock, so a
//! revocation is either fully before the hand-over or fully after it. Whole
//! captures are handed in a second critical section, after their envelopes
//! are encoded with no lock held: it asks the rule again and plans again
//! with [`plan`], so what it hands is decided under the lock it hands in.
//!
//! ```text
//! queued ──subjects()──▶ Store::decide per subject ──▶ plan() ──▶ purge / publish
//! ```

use std::collections::{HashMap, HashSet};

use crate::gate::{Decision, DropReason};
use crate::ids::{CaptureId, SubjectId};
use crate::protocol::PartNo;

/// One queued capture, as far as the decision is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued<'a> {
    /// Its id (stable across retries).
    pub capture_id: &'a CaptureId,
    /// The subject it shows.
    pub subject: &'a SubjectId,
    /// What of it is still to be handed over.
    pub pieces: Pieces<'a>,
}

/// What of a queued capture is still to be handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pieces<'a> {
    /// The whole capture, in one envelope.
    Whole,
    /// These parts (indexes, in order) of `of`: the ones neither
    /// acknowledged nor in flight. May be empty (every remaining part is in
    /// flight): the subject is still judged, so a refusal purges it.
    Parts {
        /// How many parts the capture has.
        of: u32,
        /// The parts to hand over, in order.
        todo: &'a [u32],
    },
}

/// Hand this capture, or this part of it, over now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Position of the capture in the `queued` slice given to [`plan`].
    pub index: usize,
    /// The consent the envelope quotes: the one that allows it now.
    pub consent_id: String,
    /// Which part; `None` for a whole capture.
    pub part: Option<PartNo>,
}

/// The subject's consent ended since intake: purge its queued captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    /// Whose captures go.
    pub subject: SubjectId,
    /// Why the rule refused it.
    pub reason: DropReason,
}

/// What to do with one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Subjects to purge, each once, in the order first seen. Applied before
    /// any upload and regardless of whether the uploads go through.
    pub purge: Vec<Purge>,
    /// Captures to hand over, in queue order. If one cannot be handed over
    /// (the connection went), the rest of the batch waits for the next one.
    pub upload: Vec<Upload>,
}

/// How many windows of uploads may await their PUBACK or their delete's
/// commit at once (see [`room`]).
pub const UNRECORDED_WINDOWS: usize = 4;

/// How many uploads may be handed over now: the window's free slots
/// (`free_slots`: the window less the uploads awaiting their PUBACK), as
/// long as the uploads awaiting their PUBACK and those acknowledged but not
/// yet recorded (`unrecorded`: their delete is not committed) stay within
/// [`UNRECORDED_WINDOWS`] windows. The deletes after PUBACK commit apart
/// from the hand-over (a second store connection, its own fsync), so the
/// window keeps the connection busy while they commit; the second bound
/// keeps a slow disk from letting acknowledged, unrecorded uploads pile up:
/// each is sent again after a crash (never lost, I9/I12, but the back-end
/// gets it twice, with the same `capture_id`), so a crash sends at most
/// four windows again. Two windows held the uploads back at about 10,000
/// captures/s, where a delete's commit (and fsync) lags its PUBACK by a
/// window or more (BENCHMARKS K, ninth round).
///
/// Every free slot is used at once: the window is not held back to batch
/// refills. A rule that waited for a quarter of the window to be free
/// (sharing a hand-over's fixed cost) measured no gain (BENCHMARKS K,
/// seventh round) and could leave up to a quarter of the window idle for as
/// long as PUBACKs were late, or for good on a link that stopped
/// acknowledging. Batches still form on their own: a hand-over takes
/// whatever room the PUBACKs freed while the previous one ran.
pub fn room(free_slots: usize, unrecorded: usize, window: usize) -> usize {
    let awaiting = window.saturating_sub(free_slots);
    free_slots.min(
        window
            .saturating_mul(UNRECORDED_WINDOWS)
            .saturating_sub(awaiting.saturating_add(unrecorded)),
    )
}

/// The distinct subjects of `queued`, in the order first seen: the ones to
/// ask the consent rule about, once each per batch.
pub fn subjects(queued: &[Queued<'_>]) -> Vec<SubjectId> {
    let mut seen = HashSet::new();
    queued
        .iter()
        .filter(|q| seen.insert(q.subject))
        .map(|q| q.subject.clone())
        .collect()
}

/// Decides a batch. `decisions` holds the rule's verdict per subject, taken
/// under the store lock with one `now`; `free` is how many more uploads
/// (whole captures or parts) the window takes.
///
/// - A capture, or a part of one, is uploaded only if its subject's decision
///   is `Accept`, under that decision's consent id, and only while the
///   window has room; each part takes one slot. Uploads follow queue order,
///   the parts of a capture in their order.
/// - A subject whose decision is `Drop` is purged (once) and none of its
///   captures is uploaded.
/// - A capture whose subject has no decision is neither uploaded nor purged:
///   without a verdict nothing leaves the device.
pub fn plan(queued: &[Queued<'_>], decisions: &HashMap<SubjectId, Decision>, free: usize) -> Plan {
    let mut plan = Plan::default();
    let mut purged = HashSet::new();
    for (index, q) in queued.iter().enumerate() {
        match decisions.get(q.subject) {
            Some(Decision::Accept { consent_id, .. }) => {
                let parts: Vec<Option<PartNo>> = match q.pieces {
                    Pieces::Whole => vec![None],
                    Pieces::Parts { of, todo } => todo
                        .iter()
                        .map(|&index| Some(PartNo { index, of }))
                        .collect(),
                };
                for part in parts {
                    if plan.upload.len() >= free {
                        break;
                    }
                    plan.upload.push(Upload {
                        index,
                        consent_id: consent_id.clone(),
                        part,
                    });
                }
            }
            Some(Decision::Drop(reason)) if purged.insert(q.subject) => {
                plan.purge.push(Purge {
                    subject: q.subject.clone(),
                    reason: *reason,
                });
            }
            // No room left, a subject already purged, or no verdict.
            _ => {}
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captures `(capture id, subject)`, what of each is to be sent (`None`:
    /// whole; `Some((of, todo))`: parts) and a decision table.
    struct Batch {
        ids: Vec<(CaptureId, SubjectId)>,
        pieces: Vec<Option<(u32, Vec<u32>)>>,
        decisions: HashMap<SubjectId, Decision>,
    }

    impl Batch {
        fn new(captures: &[(&str, &str)]) -> Batch {
            Batch {
                ids: captures
                    .iter()
                    .map(|(c, s)| (CaptureId::from(*c), SubjectId::new(*s).unwrap()))
                    .collect(),
                pieces: vec![None; captures.len()],
                decisions: HashMap::new(),
            }
        }

        /// Capture `i` goes in `of` parts, of which `todo` are to be sent.
        fn parts(mut self, i: usize, of: u32, todo: &[u32]) -> Batch {
            self.pieces[i] = Some((of, todo.to_vec()));
            self
        }

        fn accept(mut self, subject: &str, consent: &str) -> Batch {
            let subject = SubjectId::new(subject).unwrap();
            self.decisions.insert(
                subject.clone(),
                Decision::Accept {
                    subject,
                    consent_id: consent.into(),
                },
            );
            self
        }

        fn drop(mut self, subject: &str, reason: DropReason) -> Batch {
            self.decisions
                .insert(SubjectId::new(subject).unwrap(), Decision::Drop(reason));
            self
        }

        fn queued(&self) -> Vec<Queued<'_>> {
            self.ids
                .iter()
                .zip(&self.pieces)
                .map(|((capture_id, subject), pieces)| Queued {
                    capture_id,
                    subject,
                    pieces: match pieces {
                        None => Pieces::Whole,
                        Some((of, todo)) => Pieces::Parts { of: *of, todo },
                    },
                })
                .collect()
        }

        /// The uploads as `(capture id, part index or -1 for whole)`.
        fn pieces(&self, free: usize) -> Vec<(String, i64)> {
            self.plan(free)
                .upload
                .into_iter()
                .map(|u| {
                    let part = u.part.map_or(-1, |p| i64::from(p.index));
                    (self.ids[u.index].0.to_string(), part)
                })
                .collect()
        }

        fn plan(&self, free: usize) -> Plan {
            plan(&self.queued(), &self.decisions, free)
        }

        /// The uploads as `(capture id, consent id)`.
        fn uploads(&self, free: usize) -> Vec<(String, String)> {
            self.plan(free)
                .upload
                .into_iter()
                .map(|u| (self.ids[u.index].0.to_string(), u.consent_id))
                .collect()
        }
    }

    fn up(capture: &str, consent: &str) -> (String, String) {
        (capture.into(), consent.into())
    }

    fn purge(subject: &str, reason: DropReason) -> Purge {
        Purge {
            subject: SubjectId::new(subject).unwrap(),
            reason,
        }
    }

    const ALL_DROPS: [DropReason; 7] = [
        DropReason::NoSubject,
        DropReason::NoConsent,
        DropReason::KeyNotTrusted,
        DropReason::Revoked,
        DropReason::WrongAudience,
        DropReason::MissingScope,
        DropReason::Expired,
    ];

    #[test]
    fn room_is_bounded_by_the_free_slots_and_by_the_unrecorded_acks() {
        // (free slots, unrecorded, window) -> room
        let table = [
            ((16, 0, 16), 16),
            ((16, 3, 16), 16),
            ((16, 16, 16), 16), // deletes committing: the window keeps going
            ((16, 48, 16), 16),
            ((16, 51, 16), 13), // nothing awaits a PUBACK: no batching
            ((16, 64, 16), 0),
            ((16, 80, 16), 0),
            ((4, 3, 16), 4),
            ((4, 48, 16), 4),
            ((4, 49, 16), 3), // 12 awaiting + 49 unrecorded leave 3 of 64
            ((3, 0, 16), 3),  // every free slot is used, however few
            ((1, 0, 16), 1),
            ((8, 52, 16), 4),
            ((0, 0, 16), 0),
            ((1, 0, 1), 1),
            ((1, 3, 1), 1),
            ((1, 4, 1), 0),
            ((0, 1, 1), 0),
            ((0, 0, 1), 0),
            ((2, 0, 3), 2),
            ((0, 0, 0), 0),
        ];
        for ((free, unrecorded, window), want) in table {
            assert_eq!(
                room(free, unrecorded, window),
                want,
                "{free} {unrecorded} {window}"
            );
        }
    }

    #[test]
    fn room_never_lets_more_than_four_windows_go_unrecorded() {
        let bound = |window: usize| UNRECORDED_WINDOWS * window;
        for window in 0..=20 {
            for free in 0..=window {
                for unrecorded in 0..=bound(window) + window + 1 {
                    let r = room(free, unrecorded, window);
                    let awaiting = window - free;
                    assert!(r <= free, "{free} {unrecorded} {window}");
                    assert!(
                        r == 0 || awaiting + unrecorded + r <= bound(window),
                        "{free} {unrecorded} {window}"
                    );
                    // A free slot under the bound is always used: no slot
                    // stays idle waiting for a PUBACK that may not come.
                    if free > 0 && awaiting + unrecorded < bound(window) {
                        assert!(r > 0, "{free} {unrecorded} {window}");
                    }
                }
            }
        }
    }

    #[test]
    fn subjects_are_asked_about_once_each_in_queue_order() {
        let b = Batch::new(&[
            ("c1", "B"),
            ("c2", "A"),
            ("c3", "B"),
            ("c4", "C"),
            ("c5", "A"),
        ]);
        let names: Vec<String> = subjects(&b.queued())
            .into_iter()
            .map(|s| s.as_str().to_string())
            .collect();
        assert_eq!(names, ["B", "A", "C"]);
        assert!(subjects(&[]).is_empty());
    }

    #[test]
    fn consented_captures_go_in_queue_order_under_their_subjects_consent() {
        let b = Batch::new(&[("c1", "A"), ("c2", "B"), ("c3", "A")])
            .accept("A", "consent-a")
            .accept("B", "consent-b");
        assert_eq!(
            b.uploads(16),
            [
                up("c1", "consent-a"),
                up("c2", "consent-b"),
                up("c3", "consent-a")
            ]
        );
        assert!(b.plan(16).purge.is_empty());
    }

    #[test]
    fn the_window_caps_the_uploads() {
        let b = Batch::new(&[("c1", "A"), ("c2", "A"), ("c3", "A")]).accept("A", "k");
        for free in 0..=4 {
            let got = b.uploads(free);
            assert_eq!(got.len(), free.min(3), "free {free}");
            let want: Vec<_> = ["c1", "c2", "c3"]
                .iter()
                .take(free)
                .map(|c| up(c, "k"))
                .collect();
            assert_eq!(got, want, "the oldest go first (free {free})");
        }
    }

    #[test]
    fn every_refusal_purges_the_subject_once_and_uploads_none_of_it() {
        for reason in ALL_DROPS {
            let b = Batch::new(&[("c1", "A"), ("c2", "A"), ("c3", "A")]).drop("A", reason);
            for free in [0, 1, 16] {
                assert_eq!(
                    b.plan(free),
                    Plan {
                        purge: vec![purge("A", reason)],
                        upload: vec![],
                    },
                    "{reason:?}, free {free}"
                );
            }
        }
    }

    #[test]
    fn a_refused_subject_does_not_take_room_in_the_window() {
        let b = Batch::new(&[("c1", "A"), ("c2", "B"), ("c3", "A"), ("c4", "B")])
            .drop("A", DropReason::Expired)
            .accept("B", "kb");
        let p = b.plan(2);
        assert_eq!(p.purge, [purge("A", DropReason::Expired)]);
        assert_eq!(b.uploads(2), [up("c2", "kb"), up("c4", "kb")]);
        // Purges do not depend on the room left.
        assert_eq!(b.plan(0).purge, [purge("A", DropReason::Expired)]);
        assert!(b.plan(0).upload.is_empty());
    }

    #[test]
    fn purges_are_in_first_seen_order_with_their_own_reasons() {
        let b = Batch::new(&[("c1", "B"), ("c2", "A"), ("c3", "C"), ("c4", "B")])
            .drop("A", DropReason::Revoked)
            .drop("B", DropReason::KeyNotTrusted)
            .accept("C", "kc");
        let p = b.plan(8);
        assert_eq!(
            p.purge,
            [
                purge("B", DropReason::KeyNotTrusted),
                purge("A", DropReason::Revoked)
            ]
        );
        assert_eq!(b.uploads(8), [up("c3", "kc")]);
    }

    #[test]
    fn without_a_decision_nothing_happens_to_a_subject() {
        let b = Batch::new(&[("c1", "A"), ("c2", "B")]).accept("B", "kb");
        assert_eq!(b.uploads(8), [up("c2", "kb")]);
        assert!(b.plan(8).purge.is_empty());
        assert_eq!(Batch::new(&[("c1", "A")]).plan(8), Plan::default());
    }

    #[test]
    fn an_empty_batch_plans_nothing() {
        let b = Batch::new(&[]).accept("A", "k");
        assert_eq!(b.plan(8), Plan::default());
    }

    #[test]
    fn indexes_point_at_the_captures_they_name() {
        let b = Batch::new(&[("c1", "A"), ("c2", "B"), ("c3", "A"), ("c4", "C")])
            .accept("A", "ka")
            .drop("B", DropReason::NoConsent)
            .accept("C", "kc");
        let q = b.queued();
        for u in b.plan(8).upload {
            let subject = q[u.index].subject;
            assert_eq!(
                u.consent_id,
                format!("k{}", subject.as_str().to_lowercase())
            );
        }
        assert_eq!(
            b.plan(8).upload.iter().map(|u| u.index).collect::<Vec<_>>(),
            [0, 2, 3]
        );
    }

    #[test]
    fn parts_take_one_slot_each_in_order_under_the_current_consent() {
        let b = Batch::new(&[("big", "A"), ("small", "B")])
            .parts(0, 4, &[1, 2, 3])
            .accept("A", "ka")
            .accept("B", "kb");
        let p = |c: &str, i: i64| (c.to_string(), i);
        assert_eq!(
            b.pieces(8),
            [p("big", 1), p("big", 2), p("big", 3), p("small", -1)]
        );
        assert_eq!(b.pieces(2), [p("big", 1), p("big", 2)]);
        assert_eq!(b.pieces(0), []);
        for u in b.plan(8).upload {
            if let Some(part) = u.part {
                assert_eq!(part.of, 4);
                assert_eq!(u.consent_id, "ka");
            }
        }
    }

    #[test]
    fn a_refusal_between_parts_purges_and_sends_no_further_part() {
        for todo in [&[][..], &[2, 3][..]] {
            let b = Batch::new(&[("big", "A"), ("small", "B")])
                .parts(0, 4, todo)
                .drop("A", DropReason::Revoked)
                .accept("B", "kb");
            assert_eq!(b.plan(8).purge, [purge("A", DropReason::Revoked)]);
            assert_eq!(b.pieces(8), [("small".to_string(), -1)]);
        }
    }

    #[test]
    fn a_capture_whose_parts_are_all_in_flight_takes_no_room() {
        let b = Batch::new(&[("big", "A"), ("small", "A")])
            .parts(0, 3, &[])
            .accept("A", "k");
        assert_eq!(b.pieces(1), [("small".to_string(), -1)]);
    }

    /// Every assignment of verdicts (none / accept / two kinds of refusal) to
    /// three subjects, over every batch of four captures drawn from them and
    /// every window from empty to larger than the batch: the plan obeys the
    /// rules stated on [`plan`] (the reasons themselves are covered above).
    #[test]
    fn exhaustive_over_verdicts_batches_and_windows() {
        let names = ["A", "B", "C"];
        let verdict = |name: &str, kind: usize| -> Option<Decision> {
            match kind {
                0 => None,
                1 => Some(Decision::Accept {
                    subject: SubjectId::new(name).unwrap(),
                    consent_id: format!("k-{name}"),
                }),
                2 => Some(Decision::Drop(DropReason::Expired)),
                _ => Some(Decision::Drop(DropReason::KeyNotTrusted)),
            }
        };
        let mut cases = 0;
        for kinds in 0..4usize.pow(3) {
            let decisions: HashMap<SubjectId, Decision> = names
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let d = verdict(name, kinds / 4usize.pow(i as u32) % 4)?;
                    Some((SubjectId::new(*name).unwrap(), d))
                })
                .collect();
            for shape in 0..3usize.pow(4) {
                let ids: Vec<(CaptureId, SubjectId)> = (0..4)
                    .map(|i| {
                        let s = shape / 3usize.pow(i) % 3;
                        (
                            CaptureId::from(format!("c{i}")),
                            SubjectId::new(names[s]).unwrap(),
                        )
                    })
                    .collect();
                let queued: Vec<Queued<'_>> = ids
                    .iter()
                    .map(|(capture_id, subject)| Queued {
                        capture_id,
                        subject,
                        pieces: Pieces::Whole,
                    })
                    .collect();
                for free in 0..=5 {
                    check(&queued, &decisions, free, plan(&queued, &decisions, free));
                    cases += 1;
                }
                // The same batch with the first and third captures in parts,
                // some parts to send or none.
                for (first, third) in [(&[0u32, 1, 2][..], &[][..]), (&[2][..], &[0, 1][..])] {
                    let mut q = queued.clone();
                    q[0].pieces = Pieces::Parts { of: 3, todo: first };
                    q[2].pieces = Pieces::Parts { of: 2, todo: third };
                    for free in 0..=7 {
                        check(&q, &decisions, free, plan(&q, &decisions, free));
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 64 * 81 * (6 + 16));
    }

    /// The rules of [`plan`], restated as properties of one result.
    fn check(q: &[Queued<'_>], d: &HashMap<SubjectId, Decision>, free: usize, p: Plan) {
        let accepted: Vec<usize> = (0..q.len())
            .filter(|i| matches!(d.get(q[*i].subject), Some(Decision::Accept { .. })))
            .collect();
        // Uploads: exactly the first `free` pieces of the accepted captures
        // (a whole capture is one piece, a capture in parts its parts still
        // to send), in queue order, each quoting its own subject's consent.
        let want: Vec<(usize, Option<PartNo>)> = accepted
            .iter()
            .flat_map(|&i| match q[i].pieces {
                Pieces::Whole => vec![(i, None)],
                Pieces::Parts { of, todo } => todo
                    .iter()
                    .map(|&index| (i, Some(PartNo { index, of })))
                    .collect(),
            })
            .take(free)
            .collect();
        assert_eq!(
            p.upload
                .iter()
                .map(|u| (u.index, u.part))
                .collect::<Vec<_>>(),
            want
        );
        for u in &p.upload {
            let Some(Decision::Accept { consent_id, .. }) = d.get(q[u.index].subject) else {
                panic!("uploaded without an accept");
            };
            assert_eq!(&u.consent_id, consent_id);
        }
        // Purges: each refused subject present in the batch, once, first-seen
        // order, with the rule's reason; nobody else.
        let mut want = Vec::new();
        for s in subjects(q) {
            if let Some(Decision::Drop(r)) = d.get(&s) {
                want.push(Purge {
                    subject: s,
                    reason: *r,
                });
            }
        }
        assert_eq!(p.purge, want);
        // Nothing purged is uploaded.
        for u in &p.upload {
            assert!(p.purge.iter().all(|x| &x.subject != q[u.index].subject));
        }
    }
}
