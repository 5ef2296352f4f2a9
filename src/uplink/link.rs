//! What the uplink's two tasks share: the bookkeeping ([`UplinkState`]) and
//! the request side of the current connection, behind one lock.
//!
//! Every connection gets a fresh rumqttc client/event-loop pair (of the
//! configured MQTT version, `super::mqtt`). The
//! client is installed here when the broker accepts the connection and taken
//! out, under the same lock that records hand-overs, when it fails; the
//! network task then drops the event loop and with it everything rumqttc
//! still held for that connection (its replay queue, buffered events, a
//! pending packet-id collision, requests not yet read from the channel). So a
//! publish is either handed to the live connection and recorded in the FIFO,
//! or not handed at all; nothing from an old connection reaches a new one.

use std::sync::{Mutex, MutexGuard};

use super::ingress::Ingress;
use super::mqtt::{self, AckId, Client};
use super::state::{Abandoned, Handed, UplinkState};
use crate::protocol::Piece;

/// Identifies one broker connection (counts up from 1), so a command is
/// acknowledged on the connection it arrived on and nowhere else.
pub type ConnectionNo = u64;

/// Shared between the network task and the logic task.
pub struct Link {
    inner: Mutex<Inner>,
    /// The configured packet limit (`[mqtt] max_packet_size`).
    max_packet: usize,
    /// The rate limiter of inbound messages: the network task counts ignored
    /// messages there, the logic task refusals (its own lock: it is never
    /// held together with `inner`).
    ingress: Mutex<Ingress>,
}

#[derive(Default)]
struct Inner {
    /// Handed-over publishes and the pkid map.
    state: UplinkState,
    /// The live connection's request side; `Some` exactly while
    /// `state.connected()`.
    client: Option<Client>,
    /// The live (or last) connection's number.
    number: ConnectionNo,
    /// The largest PUBLISH packet handed to the live connection: the
    /// configured limit, lowered by the broker's MQTT 5 Maximum Packet Size.
    limit: usize,
    /// The live (or last) connection speaks MQTT 5.
    v5: bool,
    /// A DISCONNECT was queued to reconnect, not to stop.
    reconnecting: bool,
}

impl Link {
    /// A link with no connection yet, handing over no PUBLISH packet larger
    /// than `max_packet` bytes.
    pub fn new(max_packet: usize) -> Link {
        Link {
            inner: Mutex::default(),
            max_packet,
            ingress: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rate limiter of inbound messages (see [`super::ingress`]).
    pub fn ingress(&self) -> MutexGuard<'_, Ingress> {
        self.ingress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The broker accepted a connection made with `client`'s event loop;
    /// publishes may be handed over from now on, none larger than the
    /// configured limit or the broker's Maximum Packet Size (`broker_max`,
    /// MQTT 5 CONNACK), whichever is smaller.
    pub fn on_connected(&self, client: Client, broker_max: Option<u32>) -> ConnectionNo {
        let mut inner = self.lock();
        inner.state.on_connected();
        inner.v5 = matches!(client, Client::V5(_));
        inner.client = Some(client);
        inner.limit = effective_limit(self.max_packet, broker_max);
        inner.number += 1;
        inner.number
    }

    /// The packet limit of the live (or last) connection; the configured
    /// one before the first.
    pub fn max_packet(&self) -> usize {
        let inner = self.lock();
        if inner.number == 0 {
            self.max_packet
        } else {
            inner.limit
        }
    }

    /// The limit to split captures under (`crate::protocol::parts` counts
    /// 3.1.1 packets) so that each PUBLISH fits [`Link::max_packet`] in the
    /// connection's MQTT version ([`mqtt::split_limit`]).
    pub fn split_limit(&self) -> usize {
        let v5 = self.lock().v5;
        mqtt::split_limit(self.max_packet(), v5)
    }

    /// The connection failed or closed: nothing more is handed to it, and
    /// what was handed but not acknowledged is abandoned (the outbox sends it
    /// again after the next connect).
    pub fn on_disconnected(&self) -> Abandoned {
        let mut inner = self.lock();
        inner.client = None;
        inner.reconnecting = false;
        inner.state.on_disconnected()
    }

    /// True while a connection is up.
    pub fn connected(&self) -> bool {
        self.lock().state.connected()
    }

    /// How many more captures the window of `window` takes now.
    pub fn free_slots(&self, window: usize) -> usize {
        self.lock().state.free_slots(window)
    }

    /// rumqttc put the oldest handed publish on the wire as `pkid`; false if
    /// nothing was handed (a bookkeeping bug, logged by the caller).
    pub fn on_outgoing_publish(&self, pkid: u16) -> bool {
        self.lock().state.on_outgoing_publish(pkid)
    }

    /// The broker acknowledged `pkid`; the upload (whole capture or part) it
    /// acknowledges, if any. `acked` sees that upload under the lock, in the
    /// same step that frees its window slot (the caller marks it in
    /// `Agent::inflight`, so status `uplink.in_flight` never counts more
    /// uploads than the window holds).
    pub fn on_puback(&self, pkid: u16, acked: impl FnOnce(&Piece)) -> Option<Piece> {
        let mut inner = self.lock();
        let piece = inner.state.on_puback(pkid);
        if let Some(piece) = &piece {
            acked(piece);
        }
        piece
    }

    /// Hands one QoS 1 publish to the live connection and records it, under
    /// one lock. False (nothing handed) when disconnected, when rumqttc's
    /// queue is full, or when the packet would be larger than the packet
    /// limit of the connection (logged: no packet the device sends exceeds
    /// it, and rumqttc or the broker would end the connection over it).
    pub fn hand(&self, topic: &str, payload: Vec<u8>, retain: bool, what: Handed) -> bool {
        let mut inner = self.lock();
        let Some(client) = &inner.client else {
            return false;
        };
        let size = mqtt::publish_packet_size(inner.v5, topic.len(), payload.len());
        if size > inner.limit {
            tracing::error!(
                topic,
                size,
                max_packet_size = inner.limit,
                "message not sent: larger than mqtt.max_packet_size (or the broker's Maximum Packet Size)"
            );
            return false;
        }
        match client.try_publish(topic, retain, payload) {
            Ok(()) => {
                inner.state.on_handed(what);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, topic, "could not hand publish to MQTT");
                false
            }
        }
    }

    /// Subscribes the live connection to `topic` at QoS 1.
    pub fn subscribe(&self, topic: &str) -> bool {
        let inner = self.lock();
        let Some(client) = &inner.client else {
            return false;
        };
        match client.try_subscribe(topic) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, topic, "cannot subscribe");
                false
            }
        }
    }

    /// Acknowledges an inbound publish that arrived on connection `on`. If
    /// that connection is gone, nothing is sent: the broker redelivers the
    /// message on the next one (persistent session).
    pub fn ack(&self, on: ConnectionNo, ack: AckId) -> bool {
        let inner = self.lock();
        let client = match &inner.client {
            Some(client) if inner.number == on => client,
            _ => {
                tracing::debug!(
                    "connection gone before the acknowledgement; the broker redelivers"
                );
                return false;
            }
        };
        match client.try_ack(ack) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot acknowledge to the broker; it will redeliver");
                false
            }
        }
    }

    /// Queues a DISCONNECT after everything handed so far. False when there
    /// is no connection to close.
    pub fn disconnect(&self) -> bool {
        let mut inner = self.lock();
        inner.reconnecting = false;
        inner.client.as_ref().is_some_and(|c| c.try_disconnect())
    }

    /// Queues a DISCONNECT after everything handed so far, after which the
    /// network task connects again (with backoff) instead of stopping: the
    /// broker then delivers again what was not acknowledged. False when there
    /// is no connection to close.
    pub fn reconnect(&self) -> bool {
        let mut inner = self.lock();
        let queued = inner.client.as_ref().is_some_and(|c| c.try_disconnect());
        inner.reconnecting = queued;
        queued
    }

    /// Our DISCONNECT went out: whether it was for [`Link::reconnect`] (and
    /// not the end). Clears the request.
    pub fn take_reconnect(&self) -> bool {
        std::mem::take(&mut self.lock().reconnecting)
    }
}

/// The packet limit of a connection: the configured one, lowered by the
/// broker's Maximum Packet Size when it sent one (MQTT 5 CONNACK; SPEC
/// "Broker limits and large captures").
pub fn effective_limit(configured: usize, broker_max: Option<u32>) -> usize {
    match broker_max {
        Some(b) => configured.min(usize::try_from(b).unwrap_or(usize::MAX)),
        None => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parts::publish_packet_size;

    /// A client whose event loop is never polled: requests stay in its
    /// channel, which is all these tests need.
    fn client() -> (Client, rumqttc::EventLoop) {
        let opts = rumqttc::MqttOptions::new("t", "localhost", 1883);
        let (c, el) = rumqttc::AsyncClient::new(opts, 8);
        (Client::V4(c), el)
    }

    fn client_v5() -> (Client, rumqttc::v5::EventLoop) {
        let opts = rumqttc::v5::MqttOptions::new("t", "localhost", 1883);
        let (c, el) = rumqttc::v5::AsyncClient::new(opts, 8);
        (Client::V5(c), el)
    }

    fn publish(pkid: u16) -> AckId {
        AckId::new(1, pkid)
    }

    const MAX: usize = 1024;

    #[test]
    fn nothing_is_handed_without_a_connection() {
        let link = Link::new(MAX);
        assert!(!link.connected());
        assert!(!link.hand("t", vec![1], false, Handed::Other));
        assert!(!link.subscribe("t"));
        assert!(!link.disconnect());
        assert!(!link.reconnect());
        assert!(!link.take_reconnect());
        assert!(!link.ack(0, publish(1)));
        assert_eq!(link.free_slots(4), 0);
    }

    #[test]
    fn hand_overs_are_recorded_for_the_live_connection_only() {
        let link = Link::new(MAX);
        let (c, _el) = client();
        assert_eq!(link.on_connected(c, None), 1);
        let a = Piece::whole("a".into());
        assert!(link.hand("t", vec![1], false, Handed::Upload(a.clone())));
        assert!(link.hand("t", vec![2], true, Handed::Other));
        assert_eq!(link.free_slots(4), 3);
        assert!(link.on_outgoing_publish(1));
        let gone = link.on_disconnected();
        assert_eq!(gone.uploads, vec![a]);
        assert_eq!(gone.others, 1);
        let b = Handed::Upload(Piece::whole("b".into()));
        assert!(!link.hand("t", vec![3], false, b));
        assert_eq!(
            link.on_puback(1, |_| panic!("nothing to acknowledge")),
            None
        );
        let (c, _el2) = client();
        assert_eq!(link.on_connected(c, None), 2);
        assert_eq!(link.free_slots(4), 4);
    }

    #[test]
    fn no_packet_above_the_limit_is_handed_over() {
        let link = Link::new(MAX);
        let (c, _el) = client();
        link.on_connected(c, None);
        let topic = "facegate/lobby/term-01/captures";
        let fits = MAX - publish_packet_size(topic.len(), 0) + 2;
        // The largest payload that fits, found by the exact packet size.
        let fits = (0..=fits)
            .rev()
            .find(|n| publish_packet_size(topic.len(), *n) <= MAX)
            .unwrap();
        let what = || Handed::Upload(Piece::whole("a".into()));
        assert!(!link.hand(topic, vec![0; fits + 1], false, what()));
        assert_eq!(link.free_slots(4), 4, "nothing recorded");
        assert!(link.hand(topic, vec![0; fits], false, what()));
        assert_eq!(link.free_slots(4), 3);
    }

    #[test]
    fn a_command_is_acknowledged_only_on_its_own_connection() {
        let link = Link::new(MAX);
        let (c, _el) = client();
        let first = link.on_connected(c, None);
        assert!(link.ack(first, publish(7)));
        link.on_disconnected();
        assert!(!link.ack(first, publish(7)), "no connection");
        let (c, _el2) = client();
        let second = link.on_connected(c, None);
        assert!(!link.ack(first, publish(7)), "a newer connection");
        assert!(link.ack(second, publish(7)));
    }

    #[test]
    fn a_reconnect_is_told_apart_from_a_stop() {
        let link = Link::new(MAX);
        let (c, _el) = client();
        link.on_connected(c, None);
        assert!(link.reconnect());
        assert!(link.take_reconnect());
        assert!(!link.take_reconnect(), "taken once");
        assert!(link.reconnect());
        assert!(link.disconnect(), "a stop after a reconnect request");
        assert!(!link.take_reconnect(), "the stop wins");
    }

    #[test]
    fn the_broker_maximum_packet_size_lowers_the_limit_for_its_connection_only() {
        assert_eq!(effective_limit(MAX, None), MAX);
        assert_eq!(effective_limit(MAX, Some(512)), 512);
        assert_eq!(effective_limit(MAX, Some(4096)), MAX, "never raised");
        let link = Link::new(MAX);
        assert_eq!(link.max_packet(), MAX, "before the first connection");
        let (c, _el) = client_v5();
        link.on_connected(c, Some(512));
        assert_eq!(link.max_packet(), 512);
        let topic = "t";
        let fits = (0..MAX)
            .rev()
            .find(|n| mqtt::publish_packet_size(true, topic.len(), *n) <= 512)
            .unwrap();
        assert!(!link.hand(topic, vec![0; fits + 1], false, Handed::Other));
        assert!(link.hand(topic, vec![0; fits], false, Handed::Other));
        link.on_disconnected();
        let (c, _el2) = client_v5();
        link.on_connected(c, None);
        assert_eq!(link.max_packet(), MAX, "the next broker sets none");
        assert!(link.hand(topic, vec![0; fits + 1], false, Handed::Other));
    }

    /// An MQTT 5 PUBLISH is a byte longer (its property length): the limit
    /// is checked on the packet as it goes out, and captures are split
    /// with room for it.
    #[test]
    fn under_mqtt5_the_property_length_is_counted() {
        let topic = "facegate/lobby/term-01/captures";
        let v4_fits = (0..MAX)
            .rev()
            .find(|n| publish_packet_size(topic.len(), *n) <= MAX)
            .unwrap();
        let link = Link::new(MAX);
        let (c, _el) = client_v5();
        link.on_connected(c, None);
        assert!(!link.hand(topic, vec![0; v4_fits], false, Handed::Other));
        assert!(link.hand(topic, vec![0; v4_fits - 1], false, Handed::Other));
        assert_eq!(link.split_limit(), MAX - 2);
        let link = Link::new(MAX);
        let (c, _el) = client();
        link.on_connected(c, None);
        assert_eq!(link.split_limit(), MAX);
        assert!(link.hand(topic, vec![0; v4_fits], false, Handed::Other));
    }
}
