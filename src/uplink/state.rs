//! The uplink's bookkeeping, as a pure state machine (no I/O, no clock).
//!
//! rumqttc assigns packet ids itself and `publish()` does not return them. It
//! does process requests strictly in the order they were handed over, and it
//! reports each one as `Outgoing::Publish(pkid)` when it goes on the wire. So
//! the state keeps a FIFO of what was handed over, pops it on each outgoing
//! publish to learn the pkid, and maps the broker's `PUBACK(pkid)` back to the
//! capture (or part of a capture) it carried: the outbox row is deleted once
//! the whole capture, every part of it, is acknowledged.
//!
//! On a disconnect the network task drops that connection's rumqttc client and
//! event loop (with its in-memory replay queue; the next connection gets a
//! fresh pair, so its pkids and events start clean) and this state forgets
//! everything in flight: the SQLite outbox is the source of truth, and
//! unacknowledged captures are re-checked against the consent gate and handed
//! over again after the reconnect (same `capture_id`). ARCHITECTURE I9.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::protocol::Piece;

/// What a publish handed to rumqttc was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handed {
    /// An upload: a whole capture or one part of one.
    Upload(Piece),
    /// A status or reply message; nothing to do on its PUBACK.
    Other,
}

/// Whether a CONNACK means the broker lost the device's session (SPEC
/// "Broker limits and large captures"): it reports no stored session
/// although this state directory has been connected before (with a
/// persistent session: clean session off, or a session expiry under MQTT 5),
/// so commands queued for the device while it was away may be gone. The very
/// first connection of a fresh install has no session to lose.
pub fn session_lost(session_present: bool, connected_before: bool) -> bool {
    connected_before && !session_present
}

/// After a (re)connect the broker first delivers what it queued for the
/// device while it was away, a revocation among them: uploads wait this
/// long so that those are applied first.
pub const SETTLE_AFTER_CONNECT: Duration = Duration::from_millis(500);

/// How long uploads wait after a CONNACK ([`SETTLE_AFTER_CONNECT`]), or not
/// at all when the broker reports no stored session: then it holds nothing
/// queued for the device (MQTT: messages are queued only in a session), so
/// there is nothing to apply first. A session lost by the broker is
/// reported apart ([`session_lost`]); what a lost revocation means is the
/// site consent log's concern, which holds uploads until the device is in
/// sync, wait or not.
pub fn settle_after_connect(session_present: bool) -> Duration {
    if session_present {
        SETTLE_AFTER_CONNECT
    } else {
        Duration::ZERO
    }
}

/// The in-flight window and the pkid map.
#[derive(Debug, Default)]
pub struct UplinkState {
    /// True between a CONNACK and the next connection error.
    connected: bool,
    /// Handed to rumqttc, waiting for their `Outgoing::Publish(pkid)`.
    handed: VecDeque<Handed>,
    /// On the wire, waiting for a PUBACK: pkid → what it carries.
    awaiting: HashMap<u16, Handed>,
}

/// What a disconnect abandoned.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Abandoned {
    /// Uploads (whole captures and parts) that were handed over but not
    /// acknowledged; they stay in the outbox and are handed over again after
    /// the reconnect, parts with the same `part` and `parts`.
    pub uploads: Vec<Piece>,
    /// Of `uploads`, those rumqttc had put on the wire (the broker may have
    /// read them): what `super::suspect` may count a refusal against.
    pub on_wire: Vec<Piece>,
    /// Non-capture publishes lost with the connection.
    pub others: usize,
}

impl UplinkState {
    /// A fresh, disconnected state.
    pub fn new() -> Self {
        Self::default()
    }

    /// True while connected: publishes may be handed over.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// The broker accepted the connection.
    pub fn on_connected(&mut self) {
        self.connected = true;
    }

    /// The connection is gone; everything handed over is abandoned.
    pub fn on_disconnected(&mut self) -> Abandoned {
        self.connected = false;
        let mut out = Abandoned::default();
        let wire = self.awaiting.drain().map(|(_, h)| (true, h));
        for (on_wire, h) in self.handed.drain(..).map(|h| (false, h)).chain(wire) {
            match h {
                Handed::Upload(piece) => {
                    if on_wire {
                        out.on_wire.push(piece.clone());
                    }
                    out.uploads.push(piece);
                }
                Handed::Other => out.others += 1,
            }
        }
        out
    }

    /// A publish was handed to rumqttc.
    pub fn on_handed(&mut self, what: Handed) {
        self.handed.push_back(what);
    }

    /// rumqttc put the oldest handed publish on the wire with `pkid`.
    /// Returns false if nothing was expected (a bookkeeping bug, logged by the caller).
    pub fn on_outgoing_publish(&mut self, pkid: u16) -> bool {
        match self.handed.pop_front() {
            Some(h) => {
                self.awaiting.insert(pkid, h);
                true
            }
            None => false,
        }
    }

    /// The broker acknowledged `pkid`; returns the upload (whole capture or
    /// part) it acknowledges, if any.
    pub fn on_puback(&mut self, pkid: u16) -> Option<Piece> {
        match self.awaiting.remove(&pkid) {
            Some(Handed::Upload(piece)) => Some(piece),
            _ => None,
        }
    }

    /// Uploads (whole captures and parts: one PUBLISH each) handed over or
    /// on the wire, not yet acknowledged.
    pub fn uploads_in_flight(&self) -> usize {
        self.handed
            .iter()
            .chain(self.awaiting.values())
            .filter(|h| matches!(h, Handed::Upload(_)))
            .count()
    }

    /// How many more uploads (whole captures or parts) may be handed over
    /// with a window of `window`: the window counts PUBLISHes awaiting their
    /// PUBACK, so each part takes one slot.
    pub fn free_slots(&self, window: usize) -> usize {
        if !self.connected {
            return 0;
        }
        window.saturating_sub(self.uploads_in_flight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_lost_only_on_a_reconnect_without_one() {
        // A fresh install: nothing to lose, whatever the broker says.
        assert!(!session_lost(false, false));
        assert!(!session_lost(true, false));
        // A reconnect (also after a restart of the process): the broker must
        // still hold the session.
        assert!(!session_lost(true, true));
        assert!(session_lost(false, true));
    }

    #[test]
    fn uploads_wait_after_a_connect_only_for_a_session_the_broker_kept() {
        assert_eq!(settle_after_connect(true), SETTLE_AFTER_CONNECT);
        assert!(SETTLE_AFTER_CONNECT >= Duration::from_millis(500));
        assert_eq!(settle_after_connect(false), Duration::ZERO);
    }

    fn cap(id: &str) -> Handed {
        Handed::Upload(Piece::whole(id.into()))
    }

    fn part(id: &str, index: u32, of: u32) -> Handed {
        Handed::Upload(Piece::part(id.into(), index, of))
    }

    fn whole(id: &str) -> Option<Piece> {
        Some(Piece::whole(id.into()))
    }

    #[test]
    fn nothing_may_be_handed_while_disconnected() {
        let s = UplinkState::new();
        assert!(!s.connected());
        assert_eq!(s.free_slots(16), 0);
    }

    #[test]
    fn pubacks_map_back_to_captures_in_handing_order() {
        let mut s = UplinkState::new();
        s.on_connected();
        s.on_handed(cap("a"));
        s.on_handed(Handed::Other);
        s.on_handed(cap("b"));
        assert_eq!(s.free_slots(4), 2);
        assert!(s.on_outgoing_publish(1));
        assert!(s.on_outgoing_publish(2));
        assert!(s.on_outgoing_publish(3));
        // Acks may come in any order.
        assert_eq!(s.on_puback(3), whole("b"));
        assert_eq!(s.on_puback(2), None);
        assert_eq!(s.on_puback(1), whole("a"));
        assert_eq!(
            s.on_puback(1),
            None,
            "a second PUBACK for a pkid completes nothing"
        );
        assert_eq!(s.free_slots(4), 4);
    }

    #[test]
    fn reused_pkids_refer_to_the_latest_publish() {
        let mut s = UplinkState::new();
        s.on_connected();
        s.on_handed(cap("a"));
        s.on_outgoing_publish(1);
        assert_eq!(s.on_puback(1), whole("a"));
        s.on_handed(cap("b"));
        s.on_outgoing_publish(1);
        assert_eq!(s.on_puback(1), whole("b"));
    }

    #[test]
    fn unexpected_outgoing_publish_is_reported() {
        let mut s = UplinkState::new();
        s.on_connected();
        assert!(!s.on_outgoing_publish(7));
        assert_eq!(s.on_puback(7), None);
    }

    #[test]
    fn disconnect_abandons_everything_and_closes_the_window() {
        let mut s = UplinkState::new();
        s.on_connected();
        s.on_handed(cap("wire"));
        s.on_outgoing_publish(1);
        s.on_handed(cap("queued"));
        s.on_handed(Handed::Other);
        let mut gone = s.on_disconnected();
        gone.uploads.sort();
        assert_eq!(
            gone,
            Abandoned {
                uploads: vec![Piece::whole("queued".into()), Piece::whole("wire".into())],
                on_wire: vec![Piece::whole("wire".into())],
                others: 1
            }
        );
        assert_eq!(s.free_slots(8), 0);
        assert_eq!(
            s.on_puback(1),
            None,
            "an ack from the old connection completes nothing"
        );
        s.on_connected();
        assert_eq!(s.free_slots(8), 8);
    }

    #[test]
    fn window_counts_only_uploads() {
        let mut s = UplinkState::new();
        s.on_connected();
        for i in 0..3 {
            s.on_handed(cap(&i.to_string()));
        }
        s.on_handed(Handed::Other);
        assert_eq!(s.uploads_in_flight(), 3);
        assert_eq!(s.free_slots(3), 0);
        assert_eq!(s.free_slots(2), 0);
    }

    #[test]
    fn each_part_takes_a_slot_and_is_acknowledged_on_its_own() {
        let mut s = UplinkState::new();
        s.on_connected();
        s.on_handed(part("big", 0, 3));
        s.on_handed(part("big", 1, 3));
        s.on_handed(cap("small"));
        assert_eq!(s.free_slots(4), 1, "two parts and a whole capture");
        for pkid in 1..=3 {
            assert!(s.on_outgoing_publish(pkid));
        }
        assert_eq!(s.on_puback(2), Some(Piece::part("big".into(), 1, 3)));
        assert_eq!(s.free_slots(4), 2);
        s.on_handed(part("big", 2, 3));
        let mut gone = s.on_disconnected();
        gone.uploads.sort();
        assert_eq!(
            gone.uploads,
            [
                Piece::part("big".into(), 0, 3),
                Piece::part("big".into(), 2, 3),
                Piece::whole("small".into()),
            ],
            "the unacknowledged parts, with their numbers, and nothing acknowledged"
        );
    }

    /// Every interleaving of handing, putting on the wire, acknowledging and
    /// disconnecting over a few pieces: each piece handed is, at the end,
    /// acknowledged exactly once or abandoned exactly once, and the window
    /// always counts what is neither.
    #[test]
    fn exhaustive_every_piece_is_acknowledged_or_abandoned_once() {
        let pieces = [part("p", 0, 2), part("p", 1, 2), cap("w"), Handed::Other];
        // Each step: 0 hand next, 1 wire, 2 ack oldest on the wire, 3 disconnect+reconnect.
        for script in 0..4usize.pow(7) {
            let mut s = UplinkState::new();
            s.on_connected();
            let (mut next, mut pkid, mut wire) = (0, 0u16, Vec::new());
            let (mut acked, mut abandoned) = (Vec::new(), Vec::new());
            let mut handed_pieces = Vec::new();
            for step in 0..7 {
                match script / 4usize.pow(step) % 4 {
                    0 if next < pieces.len() => {
                        s.on_handed(pieces[next].clone());
                        if let Handed::Upload(p) = &pieces[next] {
                            handed_pieces.push(p.clone());
                        }
                        next += 1;
                    }
                    1 => {
                        pkid += 1;
                        if s.on_outgoing_publish(pkid) {
                            wire.push(pkid);
                        }
                    }
                    2 if !wire.is_empty() => {
                        if let Some(p) = s.on_puback(wire.remove(0)) {
                            acked.push(p);
                        }
                    }
                    3 => {
                        abandoned.extend(s.on_disconnected().uploads);
                        wire.clear();
                        s.on_connected();
                    }
                    _ => {}
                }
                let open = handed_pieces.len() - acked.len() - abandoned.len();
                assert_eq!(s.uploads_in_flight(), open, "script {script}");
                assert_eq!(s.free_slots(8), 8 - open);
            }
            abandoned.extend(s.on_disconnected().uploads);
            let mut all: Vec<Piece> = acked.into_iter().chain(abandoned).collect();
            all.sort();
            handed_pieces.sort();
            assert_eq!(all, handed_pieces, "script {script}");
        }
    }
}
