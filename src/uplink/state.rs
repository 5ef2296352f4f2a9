//! The uplink's bookkeeping, as a pure state machine (no I/O, no clock).
//!
//! rumqttc assigns packet ids itself and `publish()` does not return them. It
//! does process requests strictly in the order they were handed over, and it
//! reports each one as `Outgoing::Publish(pkid)` when it goes on the wire. So
//! the state keeps a FIFO of what was handed over, pops it on each outgoing
//! publish to learn the pkid, and maps the broker's `PUBACK(pkid)` back to the
//! capture whose outbox row may now be deleted.
//!
//! On a disconnect the network task drops that connection's rumqttc client and
//! event loop (with its in-memory replay queue; the next connection gets a
//! fresh pair, so its pkids and events start clean) and this state forgets
//! everything in flight: the SQLite outbox is the source of truth, and
//! unacknowledged captures are re-checked against the consent gate and handed
//! over again after the reconnect (same `capture_id`). ARCHITECTURE I9.

use std::collections::{HashMap, VecDeque};

use crate::ids::CaptureId;

/// What a publish handed to rumqttc was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handed {
    /// An upload of the capture with this id.
    Capture(CaptureId),
    /// A status or reply message; nothing to do on its PUBACK.
    Other,
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
    /// Captures that were handed over but not acknowledged; they stay in the
    /// outbox and are handed over again after the reconnect.
    pub captures: Vec<CaptureId>,
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
        for h in self
            .handed
            .drain(..)
            .chain(self.awaiting.drain().map(|(_, h)| h))
        {
            match h {
                Handed::Capture(id) => out.captures.push(id),
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

    /// The broker acknowledged `pkid`; returns the capture it completes, if any.
    pub fn on_puback(&mut self, pkid: u16) -> Option<CaptureId> {
        match self.awaiting.remove(&pkid) {
            Some(Handed::Capture(id)) => Some(id),
            _ => None,
        }
    }

    /// Captures handed over or on the wire, not yet acknowledged.
    pub fn captures_in_flight(&self) -> usize {
        self.handed
            .iter()
            .chain(self.awaiting.values())
            .filter(|h| matches!(h, Handed::Capture(_)))
            .count()
    }

    /// How many more captures may be handed over with a window of `window`.
    pub fn free_slots(&self, window: usize) -> usize {
        if !self.connected {
            return 0;
        }
        window.saturating_sub(self.captures_in_flight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(id: &str) -> Handed {
        Handed::Capture(id.into())
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
        assert_eq!(s.on_puback(3), Some("b".into()));
        assert_eq!(s.on_puback(2), None);
        assert_eq!(s.on_puback(1), Some("a".into()));
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
        assert_eq!(s.on_puback(1), Some("a".into()));
        s.on_handed(cap("b"));
        s.on_outgoing_publish(1);
        assert_eq!(s.on_puback(1), Some("b".into()));
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
        gone.captures.sort();
        assert_eq!(
            gone,
            Abandoned {
                captures: vec!["queued".into(), "wire".into()],
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
    fn window_counts_only_captures() {
        let mut s = UplinkState::new();
        s.on_connected();
        for i in 0..3 {
            s.on_handed(cap(&i.to_string()));
        }
        s.on_handed(Handed::Other);
        assert_eq!(s.captures_in_flight(), 3);
        assert_eq!(s.free_slots(3), 0);
        assert_eq!(s.free_slots(2), 0);
    }
}
