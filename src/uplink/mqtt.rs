//! The two MQTT versions (`[mqtt] protocol`) behind one face: rumqttc's
//! 3.1.1 client or its MQTT 5 client (`rumqttc::v5`), one request side
//! ([`Client`]), one event loop ([`Events`]) and one event type
//! ([`NetEvent`]). Everything else in the uplink (the bookkeeping, the
//! hand-over, parts, the suspect rule and quarantine) sees only these.
//!
//! What MQTT 5 adds, decided here as pure functions of the packet:
//! - a PUBACK carries a reason code: only 0x00 (success) and 0x10 (no
//!   matching subscribers) are a delivery; any other code is a refusal of
//!   that upload, never a success ([`delivery`]; SPEC "Broker limits and
//!   large captures", ARCHITECTURE I13). rumqttc hands an error-code PUBACK
//!   over as a plain `PubAck`, so the code is read here for every one;
//! - CONNACK may carry the broker's Maximum Packet Size, which lowers the
//!   device's packet limit for that connection;
//! - a DISCONNECT from the broker carries a reason code, logged with its
//!   meaning ([`disconnect_meaning`]); whether it may be a refusal of what
//!   was in flight or is the broker's own business (shutting down, session
//!   taken over) decides how `super::suspect` sees the ending
//!   ([`disconnect_ending`]).
//!
//! Topic aliases are not used in either direction: the device sends none,
//! and its CONNECT announces no Topic Alias Maximum (0), so the broker may
//! send none either; nothing about them outlives a connection.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as V5ConnectCode, Packet as V5Packet, PubAckReason,
    SubscribeReasonCode as V5SubCode,
};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{ConnectionError, Event, Outgoing, Packet, QoS, StateError};

use super::suspect::Ended;
use super::tls;

/// The size of a QoS 1 PUBLISH packet with a `topic_len`-byte topic and a
/// `payload_len`-byte payload, whole (what brokers and rumqttc compare with
/// their limits). An MQTT 5 PUBLISH carries a property length after the
/// packet id: one byte (0, the device sends no properties), as if the
/// payload were one byte longer.
pub fn publish_packet_size(v5: bool, topic_len: usize, payload_len: usize) -> usize {
    crate::protocol::parts::publish_packet_size(topic_len, payload_len + usize::from(v5))
}

/// The limit captures are split under (`crate::protocol::parts`, which
/// counts 3.1.1 packets) so that every PUBLISH is at most `limit` bytes in
/// the connection's version: under MQTT 5 two bytes less, for the property
/// length and a remaining-length prefix it may lengthen by one byte.
pub fn split_limit(limit: usize, v5: bool) -> usize {
    if v5 {
        limit.saturating_sub(2)
    } else {
        limit
    }
}

/// The options of every connection of the device, in its MQTT version.
#[derive(Clone)]
pub enum Options {
    /// MQTT 3.1.1.
    V4(Box<rumqttc::MqttOptions>),
    /// MQTT 5.
    V5(Box<rumqttc::v5::MqttOptions>),
}

/// The request side of one connection.
#[derive(Clone)]
pub enum Client {
    /// MQTT 3.1.1.
    V4(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(rumqttc::v5::AsyncClient),
}

/// The event loop of one connection.
pub enum Events {
    /// MQTT 3.1.1.
    V4(Box<rumqttc::EventLoop>),
    /// MQTT 5.
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What the uplink acknowledges an inbound message by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckId {
    /// The message's QoS (0, 1 or 2); QoS 0 is never acknowledged.
    qos: u8,
    /// Its packet id.
    pkid: u16,
}

/// An inbound PUBLISH, whatever the version.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its topic (aliases are not in use, so always the full name).
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// Sent again by the broker (DUP flag).
    pub dup: bool,
    /// Delivered as retained.
    pub retain: bool,
    /// How it is acknowledged.
    pub ack: AckId,
}

impl AckId {
    /// The acknowledgement of packet `pkid` delivered at QoS `qos`.
    pub fn new(qos: u8, pkid: u16) -> AckId {
        AckId { qos, pkid }
    }
}

impl Message {
    /// Delivered at QoS 0 (nothing to acknowledge).
    pub fn qos0(&self) -> bool {
        self.ack.qos == 0
    }
}

/// What the event loop reports, translated.
#[derive(Debug)]
pub enum NetEvent {
    /// The broker accepted the connection. `max_packet`: its Maximum Packet
    /// Size (MQTT 5 only; `None` when it sets none).
    ConnAck {
        /// The broker kept a session for the device.
        session_present: bool,
        /// The broker's Maximum Packet Size.
        max_packet: Option<u32>,
        /// The Session Expiry Interval the broker applies instead of the
        /// one asked for (MQTT 5: sent only when it differs).
        session_expiry: Option<u32>,
    },
    /// The oldest handed publish went on the wire as this packet id.
    OutgoingPublish(u16),
    /// A PUBACK with its reason code (always 0x00 under 3.1.1).
    PubAck {
        /// The packet id it acknowledges.
        pkid: u16,
        /// Its reason code.
        code: u8,
    },
    /// A message arrived.
    Publish(Message),
    /// A SUBACK.
    SubAck {
        /// The broker refused a subscription in it.
        refused: bool,
    },
    /// Our own DISCONNECT has been written.
    OutgoingDisconnect,
    /// Anything the uplink does not act on (pings, our PUBACKs, …).
    Other,
}

/// Why a connection attempt failed or a connection ended.
#[derive(Debug)]
pub enum NetError {
    /// Under MQTT 3.1.1.
    V4(ConnectionError),
    /// Under MQTT 5.
    V5(rumqttc::v5::ConnectionError),
}

/// A PUBACK reason code's verdict on the upload it acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered: the upload may leave the outbox.
    Delivered,
    /// Refused with this code: it stays queued and the refusal counts
    /// towards quarantine.
    Refused(u8),
}

/// The verdict of a PUBACK with reason code `code` (SPEC: success 0x00 and
/// "no matching subscribers" 0x10 only).
pub fn delivery(code: u8) -> Delivery {
    match code {
        0x00 | 0x10 => Delivery::Delivered,
        other => Delivery::Refused(other),
    }
}

/// The MQTT 5 reason code of a PUBACK (rumqttc decodes it into an enum).
pub fn puback_code(reason: PubAckReason) -> u8 {
    match reason {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => 0x97,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}

/// What a PUBACK reason code means, for logs and the audit trail.
pub fn puback_meaning(code: u8) -> &'static str {
    match code {
        0x00 => "success",
        0x10 => "no matching subscribers",
        0x80 => "unspecified error",
        0x83 => "implementation specific error",
        0x87 => "not authorized (check the broker ACL for the captures topic)",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x97 => "quota exceeded",
        0x99 => "payload format invalid",
        _ => "unknown reason code",
    }
}

/// What a DISCONNECT reason code from the broker means, for the log.
pub fn disconnect_meaning(code: u8) -> &'static str {
    match code {
        0x00 => "normal disconnection",
        0x04 => "disconnect with will message",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x87 => "not authorized",
        0x89 => "server busy",
        0x8B => "server shutting down",
        0x8D => "keep alive timeout",
        0x8E => "session taken over (another connection with this client id)",
        0x8F => "topic filter invalid",
        0x90 => "topic name invalid",
        0x93 => "receive maximum exceeded",
        0x94 => "topic alias invalid",
        0x95 => "packet too large (check mqtt.max_packet_size against the broker's limit)",
        0x96 => "message rate too high",
        0x97 => "quota exceeded",
        0x98 => "administrative action",
        0x99 => "payload format invalid",
        0x9A => "retain not supported",
        0x9B => "QoS not supported",
        0x9C => "use another server",
        0x9D => "server moved",
        0x9E => "shared subscriptions not supported",
        0x9F => "connection rate exceeded",
        0xA0 => "maximum connect time",
        0xA1 => "subscription identifiers not supported",
        0xA2 => "wildcard subscriptions not supported",
        _ => "unknown reason code",
    }
}

/// How `super::suspect` sees a connection the broker ended with a
/// DISCONNECT of reason `code`: a reason about what the device sent (packet
/// too large, not authorized, …) may be a refusal of what was in flight
/// ([`Ended::Lost`]); the broker's own business (shutting down, busy, the
/// session taken over, another server, an administrative action, a time
/// limit) never is ([`Ended::Stalled`]: probe mode, nothing counted).
pub fn disconnect_ending(code: u8) -> Ended {
    match code {
        0x89 | 0x8B | 0x8D | 0x8E | 0x98 | 0x9C | 0x9D | 0x9F | 0xA0 => Ended::Stalled,
        _ => Ended::Lost,
    }
}

impl Client {
    /// Queues a QoS 1 publish (no topic alias, no properties).
    pub fn try_publish(&self, topic: &str, retain: bool, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, QoS::AtLeastOnce, retain, payload)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_publish(topic, V5QoS::AtLeastOnce, retain, payload)
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues a QoS 1 subscription.
    pub fn try_subscribe(&self, topic: &str) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe(topic, QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(topic, V5QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues the acknowledgement of an inbound message (nothing for QoS 0).
    pub fn try_ack(&self, ack: AckId) -> Result<(), String> {
        match self {
            Client::V4(c) => {
                let qos = match ack.qos {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => QoS::ExactlyOnce,
                };
                let mut p = rumqttc::Publish::new("", qos, Vec::new());
                p.pkid = ack.pkid;
                c.try_ack(&p).map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let qos = match ack.qos {
                    0 => V5QoS::AtMostOnce,
                    1 => V5QoS::AtLeastOnce,
                    _ => V5QoS::ExactlyOnce,
                };
                let mut p = rumqttc::v5::mqttbytes::v5::Publish::new("", qos, Vec::new(), None);
                p.pkid = ack.pkid;
                c.try_ack(&p).map_err(|e| e.to_string())
            }
        }
    }

    /// Queues a DISCONNECT (normal disconnection: no last will).
    pub fn try_disconnect(&self) -> bool {
        match self {
            Client::V4(c) => c.try_disconnect().is_ok(),
            Client::V5(c) => c.try_disconnect().is_ok(),
        }
    }
}

impl Events {
    /// The next event of the connection, translated; connects first.
    pub async fn poll(&mut self) -> Result<NetEvent, NetError> {
        match self {
            Events::V4(e) => e.poll().await.map(v4_event).map_err(NetError::V4),
            Events::V5(e) => e.poll().await.map(v5_event).map_err(NetError::V5),
        }
    }
}

fn v4_event(event: Event) -> NetEvent {
    match event {
        Event::Incoming(Packet::ConnAck(ack)) => NetEvent::ConnAck {
            session_present: ack.session_present,
            max_packet: None,
            session_expiry: None,
        },
        Event::Incoming(Packet::PubAck(ack)) => NetEvent::PubAck {
            pkid: ack.pkid,
            code: 0x00,
        },
        Event::Incoming(Packet::Publish(p)) => NetEvent::Publish(Message {
            topic: p.topic,
            payload: p.payload,
            dup: p.dup,
            retain: p.retain,
            ack: AckId {
                qos: p.qos as u8,
                pkid: p.pkid,
            },
        }),
        Event::Incoming(Packet::SubAck(ack)) => NetEvent::SubAck {
            refused: ack
                .return_codes
                .iter()
                .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)),
        },
        Event::Outgoing(o) => outgoing(o),
        Event::Incoming(_) => NetEvent::Other,
    }
}

fn v5_event(event: rumqttc::v5::Event) -> NetEvent {
    use rumqttc::v5::Event as E;
    match event {
        E::Incoming(V5Packet::ConnAck(ack)) => {
            let props = ack.properties.as_ref();
            NetEvent::ConnAck {
                session_present: ack.session_present,
                max_packet: props.and_then(|p| p.max_packet_size),
                session_expiry: props.and_then(|p| p.session_expiry_interval),
            }
        }
        E::Incoming(V5Packet::PubAck(ack)) => NetEvent::PubAck {
            pkid: ack.pkid,
            code: puback_code(ack.reason),
        },
        E::Incoming(V5Packet::Publish(p)) => NetEvent::Publish(Message {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload,
            dup: p.dup,
            retain: p.retain,
            ack: AckId {
                qos: p.qos as u8,
                pkid: p.pkid,
            },
        }),
        E::Incoming(V5Packet::SubAck(ack)) => NetEvent::SubAck {
            refused: ack
                .return_codes
                .iter()
                .any(|c| !matches!(c, V5SubCode::Success(_))),
        },
        E::Outgoing(o) => outgoing(o),
        E::Incoming(_) => NetEvent::Other,
    }
}

fn outgoing(o: Outgoing) -> NetEvent {
    match o {
        Outgoing::Publish(pkid) => NetEvent::OutgoingPublish(pkid),
        Outgoing::Disconnect => NetEvent::OutgoingDisconnect,
        _ => NetEvent::Other,
    }
}

impl NetError {
    /// How the connection ended, for `super::suspect`: silent (keep-alive
    /// ping unanswered, a read or write timed out) is the network; a
    /// DISCONNECT from the broker as [`disconnect_ending`] says; anything
    /// else may be the broker closing it.
    pub fn ending(&self) -> Ended {
        use rumqttc::v5::{ConnectionError as C5, StateError as S5};
        match self {
            NetError::V4(
                ConnectionError::MqttState(StateError::AwaitPingResp)
                | ConnectionError::NetworkTimeout
                | ConnectionError::FlushTimeout,
            ) => Ended::Stalled,
            // A packet-id collision rumqttc gave up on: its v5 client frees
            // a colliding packet id only on a successful PUBACK, so an
            // error-code PUBACK for that id leaves the next publish waiting
            // until rumqttc ends the connection. Not a refusal of anything.
            NetError::V5(
                C5::MqttState(S5::AwaitPingResp | S5::CollisionTimeout) | C5::Timeout(_),
            ) => Ended::Stalled,
            NetError::V5(C5::MqttState(S5::ServerDisconnect { reason_code, .. })) => {
                disconnect_ending(*reason_code as u8)
            }
            _ => Ended::Lost,
        }
    }

    /// One line telling an operator why, with the raw error in parentheses.
    pub fn explain(&self) -> String {
        use rumqttc::v5::{ConnectionError as C5, StateError as S5};
        match self {
            NetError::V4(e) => tls::explain(e),
            NetError::V5(e @ C5::MqttState(S5::ServerDisconnect { reason_code, .. })) => {
                let code = *reason_code as u8;
                format!(
                    "broker closed the connection with DISCONNECT 0x{code:02X}: {} ({e})",
                    disconnect_meaning(code)
                )
            }
            NetError::V5(e @ C5::ConnectionRefused(code)) => format!(
                "broker refused the MQTT session: {} ({e})",
                connack_meaning(*code)
            ),
            NetError::V5(e @ C5::MqttState(S5::IncomingPacketTooLarge { .. })) => format!(
                "the broker sent a packet larger than the device's announced Maximum Packet Size ({e})"
            ),
            NetError::V5(e @ C5::MqttState(S5::OutgoingPacketTooLarge { .. })) => format!(
                "a packet larger than the broker's Maximum Packet Size was about to be sent ({e})"
            ),
            // A reason code outside what the packet may carry (Mosquitto
            // answers a PUBLISH above its `message_size_limit` with a PUBACK
            // 0x95): rumqttc cannot decode it and ends the connection, which
            // `super::suspect` then treats like a 3.1.1 broker closing it.
            NetError::V5(
                e @ C5::MqttState(S5::Deserialization(
                    rumqttc::v5::mqttbytes::Error::InvalidConnectReturnCode(code),
                )),
            ) => format!(
                "the broker sent reason code 0x{code:02X} ({}) where MQTT 5 does not allow it (Mosquitto does so in a PUBACK for a message above its message_size_limit); the connection ended over it ({e})",
                disconnect_meaning(*code)
            ),
            NetError::V5(e @ C5::Timeout(_)) => {
                format!("broker did not answer in time (timeout) ({e})")
            }
            NetError::V5(e) => tls::explain_chain(e),
        }
    }
}

fn connack_meaning(code: V5ConnectCode) -> &'static str {
    match code {
        V5ConnectCode::Success => "success",
        V5ConnectCode::UnsupportedProtocolVersion | V5ConnectCode::RefusedProtocolVersion => {
            "the broker does not speak MQTT 5 (set mqtt.protocol = \"3.1.1\")"
        }
        V5ConnectCode::ClientIdentifierNotValid | V5ConnectCode::BadClientId => {
            "client id rejected"
        }
        V5ConnectCode::BadUserNamePassword | V5ConnectCode::NotAuthorized => {
            "not authorized (check the broker's ACL and certificate mapping)"
        }
        V5ConnectCode::ServerUnavailable
        | V5ConnectCode::ServiceUnavailable
        | V5ConnectCode::ServerBusy => "broker unavailable or busy",
        V5ConnectCode::Banned => "this client is banned",
        V5ConnectCode::UseAnotherServer | V5ConnectCode::ServerMoved => {
            "use another server (check mqtt.host)"
        }
        V5ConnectCode::PacketTooLarge => "packet too large",
        V5ConnectCode::QuotaExceeded | V5ConnectCode::ConnectionRateExceeded => {
            "quota or connection rate exceeded"
        }
        _ => "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;

    #[test]
    fn only_success_and_no_matching_subscribers_are_a_delivery() {
        for code in 0..=u8::MAX {
            let want = if code == 0x00 || code == 0x10 {
                Delivery::Delivered
            } else {
                Delivery::Refused(code)
            };
            assert_eq!(delivery(code), want, "0x{code:02X}");
        }
    }

    #[test]
    fn every_puback_reason_rumqttc_decodes_has_its_wire_code() {
        let all = [
            (PubAckReason::Success, 0x00, Delivery::Delivered),
            (
                PubAckReason::NoMatchingSubscribers,
                0x10,
                Delivery::Delivered,
            ),
            (
                PubAckReason::UnspecifiedError,
                0x80,
                Delivery::Refused(0x80),
            ),
            (
                PubAckReason::ImplementationSpecificError,
                0x83,
                Delivery::Refused(0x83),
            ),
            (PubAckReason::NotAuthorized, 0x87, Delivery::Refused(0x87)),
            (
                PubAckReason::TopicNameInvalid,
                0x90,
                Delivery::Refused(0x90),
            ),
            (
                PubAckReason::PacketIdentifierInUse,
                0x91,
                Delivery::Refused(0x91),
            ),
            (PubAckReason::QuotaExceeded, 0x97, Delivery::Refused(0x97)),
            (
                PubAckReason::PayloadFormatInvalid,
                0x99,
                Delivery::Refused(0x99),
            ),
        ];
        for (reason, code, verdict) in all {
            assert_eq!(puback_code(reason), code, "{reason:?}");
            assert_eq!(delivery(puback_code(reason)), verdict, "{reason:?}");
            assert_ne!(puback_meaning(code), "unknown reason code", "{reason:?}");
        }
    }

    #[test]
    fn an_error_puback_from_the_wire_is_read_with_its_code() {
        use rumqttc::v5::mqttbytes::v5::PubAck;
        // A PUBACK 0x87 (not authorized) as a broker sends it: rumqttc
        // reports it as a plain PubAck; the code is what tells it apart.
        let mut ack = PubAck::new(7, None);
        ack.reason = PubAckReason::NotAuthorized;
        let event = v5_event(rumqttc::v5::Event::Incoming(V5Packet::PubAck(ack)));
        match event {
            NetEvent::PubAck { pkid: 7, code } => {
                assert_eq!(delivery(code), Delivery::Refused(0x87))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_disconnect_reason_has_a_meaning_and_an_ending() {
        use std::convert::TryFrom;
        let mut known = 0;
        for code in 0..=u8::MAX {
            if DisconnectReasonCode::try_from(code).is_err() {
                continue;
            }
            known += 1;
            assert_ne!(
                disconnect_meaning(code),
                "unknown reason code",
                "0x{code:02X}"
            );
        }
        assert!(known > 25);
        // May be about what the device sent: counted like a closed connection.
        for code in [0x80, 0x81, 0x82, 0x87, 0x90, 0x95, 0x97, 0x99] {
            assert_eq!(disconnect_ending(code), Ended::Lost, "0x{code:02X}");
        }
        // The broker's own business: never a refusal.
        for code in [0x89, 0x8B, 0x8D, 0x8E, 0x98, 0x9C, 0x9D, 0x9F, 0xA0] {
            assert_eq!(disconnect_ending(code), Ended::Stalled, "0x{code:02X}");
        }
    }

    #[test]
    fn rumqttc_giving_up_on_a_packet_id_collision_is_never_a_refusal() {
        let e = NetError::V5(rumqttc::v5::ConnectionError::MqttState(
            rumqttc::v5::StateError::CollisionTimeout,
        ));
        assert_eq!(e.ending(), Ended::Stalled);
    }

    #[test]
    fn a_server_disconnect_is_explained_with_its_reason() {
        let e = NetError::V5(rumqttc::v5::ConnectionError::MqttState(
            rumqttc::v5::StateError::ServerDisconnect {
                reason_code: DisconnectReasonCode::PacketTooLarge,
                reason_string: None,
            },
        ));
        let text = e.explain();
        assert!(
            text.contains("0x95") && text.contains("packet too large"),
            "{text}"
        );
        assert_eq!(e.ending(), Ended::Lost);
        let e = NetError::V5(rumqttc::v5::ConnectionError::MqttState(
            rumqttc::v5::StateError::ServerDisconnect {
                reason_code: DisconnectReasonCode::SessionTakenOver,
                reason_string: None,
            },
        ));
        assert!(e.explain().contains("session taken over"));
        assert_eq!(e.ending(), Ended::Stalled);
        // A PUBACK 0x95 (Mosquitto's message_size_limit) that rumqttc cannot
        // decode: named, and may be the refusal of what was in flight.
        let e = NetError::V5(rumqttc::v5::ConnectionError::MqttState(
            rumqttc::v5::StateError::Deserialization(
                rumqttc::v5::mqttbytes::Error::InvalidConnectReturnCode(0x95),
            ),
        ));
        let text = e.explain();
        assert!(
            text.contains("0x95") && text.contains("message_size_limit"),
            "{text}"
        );
        assert_eq!(e.ending(), Ended::Lost);
    }

    #[test]
    fn packets_split_under_the_split_limit_fit_the_limit_in_either_version() {
        use crate::protocol::parts::max_payload;
        let topic = "facegate/lobby/term-01/captures".len();
        // Around every remaining-length boundary (128, 16384, 2097152).
        let mut limits: Vec<usize> = (100..200).chain(16_300..16_500).collect();
        limits.extend(2_097_100..2_097_300);
        limits.extend([4096, 65_536, 131_072, 1 << 20]);
        for limit in limits {
            for v5 in [false, true] {
                let Some(payload) = max_payload(topic, split_limit(limit, v5)) else {
                    continue;
                };
                let size = publish_packet_size(v5, topic, payload);
                assert!(size <= limit, "v5 {v5}: {size} > {limit}");
                assert!(
                    limit - size <= 4,
                    "v5 {v5}: {size} wastes room under {limit}"
                );
            }
        }
        // The property length: exactly one byte more than 3.1.1, or two
        // where the remaining length's prefix grows.
        assert_eq!(
            publish_packet_size(true, 10, 100),
            publish_packet_size(false, 10, 100) + 1
        );
        let rl_127 = 127 - 2 - 10 - 2;
        assert_eq!(publish_packet_size(false, 10, rl_127), 1 + 1 + 127);
        assert_eq!(publish_packet_size(true, 10, rl_127), 1 + 2 + 128);
    }

    #[test]
    fn a_connack_brings_the_brokers_limits() {
        use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnAckProperties};
        let props = ConnAckProperties {
            session_expiry_interval: Some(3600),
            receive_max: Some(20),
            max_qos: None,
            retain_available: None,
            max_packet_size: Some(131_072),
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        };
        let ack = ConnAck {
            session_present: true,
            code: V5ConnectCode::Success,
            properties: Some(props),
        };
        match v5_event(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(ack))) {
            NetEvent::ConnAck {
                session_present: true,
                max_packet: Some(131_072),
                session_expiry: Some(3600),
            } => {}
            other => panic!("{other:?}"),
        }
        let bare = ConnAck {
            session_present: false,
            code: V5ConnectCode::Success,
            properties: None,
        };
        match v5_event(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(bare))) {
            NetEvent::ConnAck {
                session_present: false,
                max_packet: None,
                session_expiry: None,
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inbound_messages_keep_what_acknowledging_them_needs() {
        let mut p = rumqttc::v5::mqttbytes::v5::Publish::new(
            "facegate/lobby/term-01/cmd",
            V5QoS::AtLeastOnce,
            b"x".to_vec(),
            None,
        );
        p.pkid = 9;
        p.dup = true;
        let NetEvent::Publish(m) = v5_event(rumqttc::v5::Event::Incoming(V5Packet::Publish(p)))
        else {
            panic!("not a publish")
        };
        assert_eq!(m.topic, "facegate/lobby/term-01/cmd");
        assert!(m.dup && !m.retain && !m.qos0());
        assert_eq!(m.ack, AckId { qos: 1, pkid: 9 });
    }
}
