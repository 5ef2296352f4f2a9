//! Finding the capture the broker keeps refusing (SPEC "Broker limits and
//! large captures": no head-of-line blocking; ARCHITECTURE I13), pure: a function of what was
//! in flight when a connection ended and what was acknowledged since.
//!
//! Under MQTT 3.1.1 a broker refuses a PUBLISH (a packet above its limit, a
//! topic its ACL denies with a disconnect) by closing the connection. That
//! looks like any network failure, and with a window of 16 the connection
//! takes 16 captures down with it. So:
//!
//! 1. A connection that ends with **several captures** in flight counts
//!    against none of them, and the next connections run in **probe mode**:
//!    a window of one piece (one whole capture or one part), in queue order.
//! 2. A connection that ends with **exactly one capture** in flight (one or
//!    more of its parts: a capture in parts counts as one capture), at least
//!    one piece of it on the wire, counts **one refusal** against that
//!    capture, and probe mode goes on (or starts).
//! 3. The first acknowledged piece ends probe mode: the configured window
//!    applies again. An acknowledged part also clears the refusals counted
//!    against its capture (the store does that, `Store::ack_parts`); an
//!    acknowledged whole capture is deleted with its count.
//! 4. A capture with `mqtt.max_attempts` refusals counted is quarantined
//!    ([`quarantines`]): not handed over again until `ctl outbox retry`.
//!
//! What never counts: a connection that ends with nothing in flight; a
//! failure before CONNACK (TCP, TLS, refused CONNECT: nothing was handed
//! over on it); a connection that went silent (keep-alive ping unanswered,
//! network or flush timeout: the network, not a refusing broker, which
//! closes at once); our own DISCONNECT (a reconnect to have a command
//! redelivered, the shutdown); a capture handed to the MQTT client that was
//! not yet on the wire.
//!
//! Limits, documented in docs/OPERATIONS.md: a network failure that closes
//! the connection (rather than leaving it silent) or a broker restart while
//! probe mode has exactly one capture on the wire counts
//! against it like a refusal; `max_attempts` (5 by default) such failures in
//! a row, with nothing of that capture acknowledged in between, are needed
//! to quarantine it, and `ctl outbox retry` undoes it. Refusals are counted
//! durably (the outbox row), so restarts do not reset them.
//!
//! An explicit refusal (an MQTT 5 PUBACK with an error reason code,
//! `super::mqtt::delivery`) names its capture itself: the caller counts it
//! through the same store path and [`quarantines`] rule without probing.
//! Under MQTT 5 a DISCONNECT whose reason is the broker's own business
//! (`super::mqtt::disconnect_ending`) ends the connection as
//! [`Ended::Stalled`]: probe mode, nothing counted.

use std::collections::BTreeSet;

use crate::ids::CaptureId;
use crate::protocol::Piece;

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It failed or the broker closed it (or it never got to CONNACK).
    Lost,
    /// It went silent: the broker did not answer a keep-alive ping, or a
    /// read or write timed out. A network failure, never a refusal (a
    /// refusing broker closes the connection at once).
    Stalled,
    /// We closed it ourselves (DISCONNECT to reconnect, or to stop).
    Ours,
}

/// The probe-mode state of the uplink; starts with the configured window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Suspect {
    probing: bool,
}

impl Suspect {
    /// Not probing.
    pub fn new() -> Suspect {
        Suspect::default()
    }

    /// True while hand-overs go one piece at a time.
    pub fn probing(&self) -> bool {
        self.probing
    }

    /// The window to use now: 1 in probe mode, else `configured`.
    pub fn window(&self, configured: usize) -> usize {
        if self.probing {
            configured.min(1)
        } else {
            configured
        }
    }

    /// A connection ended. `in_flight`: the uploads handed over on it and not
    /// acknowledged; `on_wire`: those of them rumqttc had put on the wire.
    /// Returns the capture to count one refusal against, if any (rules 1, 2).
    pub fn on_ended(
        &mut self,
        how: Ended,
        in_flight: &[Piece],
        on_wire: &[Piece],
    ) -> Option<CaptureId> {
        if how == Ended::Ours || in_flight.is_empty() {
            return None;
        }
        self.probing = true;
        if how == Ended::Stalled {
            return None;
        }
        let captures: BTreeSet<&CaptureId> = in_flight.iter().map(|p| &p.capture_id).collect();
        let only = match captures.into_iter().collect::<Vec<_>>()[..] {
            [only] => only,
            _ => return None,
        };
        on_wire
            .iter()
            .any(|p| &p.capture_id == only)
            .then(|| only.clone())
    }

    /// The broker acknowledged an upload: the window opens again (rule 3).
    pub fn on_acked(&mut self) {
        self.probing = false;
    }
}

/// Whether a capture with `refusals` counted against it is quarantined
/// under `[mqtt] max_attempts` = `max_attempts` (rule 4).
pub fn quarantines(refusals: u32, max_attempts: u32) -> bool {
    refusals >= max_attempts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(id: &str) -> Piece {
        Piece::whole(id.into())
    }

    fn part(id: &str, i: u32, of: u32) -> Piece {
        Piece::part(id.into(), i, of)
    }

    fn cid(id: &str) -> Option<CaptureId> {
        Some(CaptureId::from(id))
    }

    #[test]
    fn the_window_is_one_piece_only_while_probing() {
        let mut s = Suspect::new();
        assert!(!s.probing());
        assert_eq!(s.window(16), 16);
        s.on_ended(Ended::Lost, &[whole("a"), whole("b")], &[whole("a")]);
        assert!(s.probing());
        for (configured, want) in [(0, 0), (1, 1), (16, 1), (1024, 1)] {
            assert_eq!(s.window(configured), want);
        }
        s.on_acked();
        assert!(!s.probing());
        assert_eq!(s.window(16), 16);
    }

    /// Every ending: (probing before, how, in flight, on the wire) →
    /// (counted against, probing after).
    #[test]
    fn table_of_endings() {
        let a0 = part("a", 0, 3);
        let a1 = part("a", 1, 3);
        let b = whole("b");
        let c = whole("c");
        #[rustfmt::skip]
        type Row = (bool, Ended, Vec<Piece>, Vec<Piece>, Option<CaptureId>, bool);
        let rows: Vec<Row> = vec![
            // Nothing in flight: nobody is counted, the mode stays.
            (false, Ended::Lost, vec![], vec![], None, false),
            (true, Ended::Lost, vec![], vec![], None, true),
            // Our own DISCONNECT: nobody, the mode stays.
            (
                false,
                Ended::Ours,
                vec![b.clone()],
                vec![b.clone()],
                None,
                false,
            ),
            (
                true,
                Ended::Ours,
                vec![b.clone()],
                vec![b.clone()],
                None,
                true,
            ),
            // Several captures in flight: nobody, probe mode.
            (
                false,
                Ended::Lost,
                vec![b.clone(), c.clone()],
                vec![b.clone(), c.clone()],
                None,
                true,
            ),
            (
                true,
                Ended::Lost,
                vec![b.clone(), c.clone()],
                vec![b.clone()],
                None,
                true,
            ),
            (
                false,
                Ended::Lost,
                vec![a0.clone(), b.clone()],
                vec![a0.clone()],
                None,
                true,
            ),
            // Exactly one capture, on the wire: counted, probe mode.
            (
                false,
                Ended::Lost,
                vec![b.clone()],
                vec![b.clone()],
                cid("b"),
                true,
            ),
            (
                true,
                Ended::Lost,
                vec![b.clone()],
                vec![b.clone()],
                cid("b"),
                true,
            ),
            // Parts of one capture are one capture.
            (
                true,
                Ended::Lost,
                vec![a0.clone()],
                vec![a0.clone()],
                cid("a"),
                true,
            ),
            (
                false,
                Ended::Lost,
                vec![a0.clone(), a1.clone()],
                vec![a1.clone()],
                cid("a"),
                true,
            ),
            // The connection went silent: a network failure, nobody; probe mode.
            (
                false,
                Ended::Stalled,
                vec![b.clone()],
                vec![b.clone()],
                None,
                true,
            ),
            (
                true,
                Ended::Stalled,
                vec![a0.clone()],
                vec![a0.clone()],
                None,
                true,
            ),
            (
                false,
                Ended::Stalled,
                vec![b.clone(), c.clone()],
                vec![b.clone()],
                None,
                true,
            ),
            (true, Ended::Stalled, vec![], vec![], None, true),
            // One capture handed over but not yet on the wire: nobody.
            (true, Ended::Lost, vec![b.clone()], vec![], None, true),
            (
                false,
                Ended::Lost,
                vec![a0.clone(), a1.clone()],
                vec![],
                None,
                true,
            ),
        ];
        for (i, (probing, how, in_flight, wire, want, after)) in rows.into_iter().enumerate() {
            let mut s = Suspect { probing };
            assert_eq!(s.on_ended(how, &in_flight, &wire), want, "row {i}");
            assert_eq!(s.probing(), after, "row {i}");
        }
    }

    #[test]
    fn quarantine_takes_max_attempts_refusals() {
        for max in [1u32, 2, 5, 1000] {
            for n in 0..=max + 1 {
                assert_eq!(quarantines(n, max), n >= max, "{n} of {max}");
            }
        }
        assert!(!quarantines(4, 5));
        assert!(quarantines(5, 5));
    }

    /// A model of the uplink over a queue of captures, one of which the
    /// broker refuses (it closes the connection whenever that capture is on
    /// the wire); every other capture is acknowledged. Whatever the window,
    /// the refused one reaches quarantine after exactly `max` counted
    /// refusals, every other capture is delivered, and no other capture
    /// ever has a refusal counted against it.
    #[test]
    fn a_refused_capture_is_found_wherever_it_is_in_the_queue() {
        let max = 5;
        for n in 1..=6usize {
            for bad in 0..n {
                for window in [1usize, 2, 3, 16] {
                    let mut queue: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
                    let bad_id = format!("c{bad}");
                    let mut counts = std::collections::HashMap::<String, u32>::new();
                    let mut delivered = Vec::new();
                    let mut s = Suspect::new();
                    for _connection in 0..100 {
                        if queue.is_empty() {
                            break;
                        }
                        let w = s.window(window);
                        let sent: Vec<String> = queue.iter().take(w).cloned().collect();
                        if let Some(pos) = sent.iter().position(|c| *c == bad_id) {
                            // Those before it are acknowledged, then the broker
                            // closes the connection.
                            for c in &sent[..pos] {
                                s.on_acked();
                                delivered.push(c.clone());
                                queue.retain(|q| q != c);
                            }
                            let in_flight: Vec<Piece> =
                                sent[pos..].iter().map(|c| whole(c)).collect();
                            if let Some(c) = s.on_ended(Ended::Lost, &in_flight, &in_flight) {
                                let k = counts.entry(c.to_string()).or_default();
                                *k += 1;
                                if quarantines(*k, max) {
                                    queue.retain(|q| q.as_str() != c.as_str());
                                }
                            }
                        } else {
                            for c in &sent {
                                s.on_acked();
                                delivered.push(c.clone());
                                queue.retain(|q| q != c);
                            }
                        }
                    }
                    let case = format!("n {n}, bad {bad}, window {window}");
                    assert!(queue.is_empty(), "{case}: {queue:?} left");
                    assert_eq!(counts.len(), 1, "{case}: {counts:?}");
                    assert_eq!(counts.get(&bad_id), Some(&max), "{case}");
                    assert_eq!(delivered.len(), n - 1, "{case}");
                }
            }
        }
    }

    /// A network that drops every connection while 16 captures are in
    /// flight, any number of times, counts against nobody; the probe that
    /// follows gets its capture acknowledged and the window opens again.
    #[test]
    fn drops_with_many_in_flight_count_against_nobody() {
        let mut s = Suspect::new();
        let pieces: Vec<Piece> = (0..16).map(|i| whole(&format!("c{i}"))).collect();
        for _ in 0..10 {
            assert_eq!(s.on_ended(Ended::Lost, &pieces, &pieces), None);
            assert_eq!(s.window(16), 1);
        }
        s.on_acked();
        assert_eq!(s.window(16), 16);
    }
}
