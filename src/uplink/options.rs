//! The uplink's MQTT connection settings, from the config: identity and
//! mutual TLS (built by [`super::tls`]), persistent session, packet size
//! limits, rumqttc's flow control and request queue, and the last will; in
//! the configured MQTT version (`[mqtt] protocol`, [`super::mqtt`]).

use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, NetworkOptions, QoS};

use super::mqtt::{Client, Events, Options};
use super::tls;
use crate::config::{Config, MqttProtocol};
use crate::protocol::{Status, Topics};

/// Largest MQTT packet we send, whole PUBLISH packet counted: `[mqtt]
/// max_packet_size`. Captures that would not fit go out in parts
/// (`super::upload`), and `super::link::Link::hand` refuses anything larger,
/// so rumqttc's own check (which would end the connection) never trips.
pub fn max_packet_size(config: &Config) -> usize {
    config.mqtt.max_packet_size
}

/// Smallest limit for packets we accept, whatever `[commands] max_bytes` says.
pub const MIN_INCOMING_PACKET: usize = 1024 * 1024;

/// Largest MQTT packet we accept (its remaining length: topic and payload):
/// `max(1 MiB, 4 × [commands] max_bytes)`. Only commands come in, so this,
/// not the capture-sized outgoing limit, bounds what one inbound message can
/// cost in memory (rumqttc checks the length in the fixed header before it
/// reads the rest). The room above `max_bytes` is deliberate: a command
/// somewhat too large is still read and answered `too_large`, instead of
/// being a packet rumqttc refuses, which ends the connection (and the broker
/// delivers the same message again on the next one). The limit is taken
/// when the uplink starts; a larger `max_bytes` from a reload applies to it
/// after a restart.
pub fn max_incoming_packet_size(config: &Config) -> usize {
    config
        .commands
        .max_bytes
        .saturating_mul(4)
        .max(MIN_INCOMING_PACKET)
}

/// The options every connection of this device is made with, in the
/// configured MQTT version: client id = device id, a persistent session,
/// manual acknowledgements (a command is acknowledged once its effect is
/// committed), both packet limits set explicitly, and the offline last will.
pub fn mqtt_options(config: &Config, topics: &Topics) -> Result<Options, tls::TlsError> {
    let v4 = v4_options(config, topics)?;
    Ok(match config.mqtt.protocol {
        MqttProtocol::V311 => Options::V4(Box::new(v4)),
        MqttProtocol::V5 => Options::V5(Box::new(v5_options(config, topics, &v4))),
    })
}

fn v4_options(config: &Config, topics: &Topics) -> Result<MqttOptions, tls::TlsError> {
    let m = &config.mqtt;
    let tls_config = tls::client_config_for(&m.ca_file, &m.cert_file, &m.key)?;
    let max = max_packet_size(config);
    let mut opts = tls::mqtt_options(
        &config.identity.device_id,
        &m.host,
        m.port,
        m.keep_alive,
        max,
        tls_config,
    )?;
    // Commands in, captures out: each limit on its own.
    opts.set_max_packet_size(max_incoming_packet_size(config), max);
    opts.set_manual_acks(true);
    // rumqttc's own flow control only needs room for our window plus status and replies.
    opts.set_inflight(m.inflight.saturating_add(16));
    opts.set_last_will(LastWill::new(
        &topics.status,
        Status::offline().to_bytes(),
        QoS::AtLeastOnce,
        true,
    ));
    Ok(opts)
}

/// The same settings for rumqttc's MQTT 5 client (identity, transport and
/// keep-alive taken from the 3.1.1 options, already validated), plus what
/// MQTT 5 adds: clean start off with the Session Expiry Interval
/// `[mqtt] session_expiry`, and the device's own Maximum Packet Size (the
/// inbound limit) announced in CONNECT, so the broker drops a larger
/// message for it instead of the connection ending over it. rumqttc's
/// default inbound limit (10 KiB) is thereby replaced; its outbound limit is
/// the broker's CONNACK Maximum Packet Size, and `super::link::Link::hand`
/// keeps every packet within the smaller of that and `[mqtt]
/// max_packet_size`. No Topic Alias Maximum is announced (none is used).
fn v5_options(config: &Config, topics: &Topics, v4: &MqttOptions) -> rumqttc::v5::MqttOptions {
    use rumqttc::v5::mqttbytes::v5::LastWill as V5Will;
    use rumqttc::v5::mqttbytes::QoS as V5QoS;
    let m = &config.mqtt;
    let (host, port) = v4.broker_address();
    let mut opts = rumqttc::v5::MqttOptions::new(v4.client_id(), host, port);
    opts.set_keep_alive(v4.keep_alive())
        .set_transport(v4.transport())
        .set_clean_start(false)
        .set_session_expiry_interval(Some(session_expiry_interval(m.session_expiry)))
        .set_max_packet_size(Some(
            u32::try_from(max_incoming_packet_size(config)).unwrap_or(u32::MAX),
        ))
        .set_manual_acks(true)
        .set_outgoing_inflight_upper_limit(m.inflight.saturating_add(16))
        .set_last_will(V5Will::new(
            &topics.status,
            Status::offline().to_bytes(),
            V5QoS::AtLeastOnce,
            true,
            None,
        ));
    opts
}

/// `[mqtt] session_expiry` as the MQTT 5 Session Expiry Interval: whole
/// seconds, at most `u32::MAX` (never expires; the config enforces it).
pub fn session_expiry_interval(expiry: Duration) -> u32 {
    u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX)
}

/// A fresh client and event loop for one connection attempt. Nothing is
/// carried over from an earlier connection: the outbox, not rumqttc's memory,
/// decides what is sent again.
pub fn connection(config: &Config, options: &Options) -> (Client, Events) {
    // Room for a full window plus replies, status and acknowledgements.
    let cap = config.mqtt.inflight as usize + 64;
    // Small packets (PUBACKs, commands, replies) go out at once instead of
    // waiting for Nagle's algorithm: it cuts command-to-reply latency in half.
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(10);
    match options {
        Options::V4(o) => {
            let (client, mut eventloop) = rumqttc::AsyncClient::new((**o).clone(), cap);
            eventloop.set_network_options(network);
            (Client::V4(client), Events::V4(Box::new(eventloop)))
        }
        Options::V5(o) => {
            let mut o = (**o).clone();
            o.set_network_options(network);
            // The CONNECT/CONNACK exchange has its own timeout under MQTT 5.
            o.set_connection_timeout(10);
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, cap);
            (Client::V5(client), Events::V5(Box::new(eventloop)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_packets_are_bounded_by_the_command_limit_not_the_capture_limit() {
        let dir = tempfile::tempdir().expect("temporary directory");
        // (commands.max_bytes, incoming limit)
        let cases = [
            ("", MIN_INCOMING_PACKET),
            ("[commands]\nmax_bytes = 1024\n", MIN_INCOMING_PACKET),
            ("[commands]\nmax_bytes = 1048576\n", 4 * 1024 * 1024),
            ("[commands]\nmax_bytes = 16777216\n", 64 * 1024 * 1024),
        ];
        for (extra, want) in cases {
            let config = crate::config::testing::config(dir.path(), extra);
            assert_eq!(max_incoming_packet_size(&config), want, "{extra}");
            assert!(
                max_incoming_packet_size(&config) >= 4 * config.commands.max_bytes,
                "a command over max_bytes is still read and answered too_large"
            );
        }
    }

    #[test]
    fn outbound_packets_are_bounded_by_the_configured_limit_not_the_capture_size() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let defaults = crate::config::testing::config(dir.path(), "");
        assert_eq!(max_packet_size(&defaults), 128 * 1024);
        let big =
            crate::config::testing::config(dir.path(), "[capture]\nmax_file_bytes = \"32MiB\"\n");
        assert_eq!(
            max_packet_size(&big),
            128 * 1024,
            "the capture limit does not raise it"
        );
        let mut set = crate::config::testing::config(dir.path(), "");
        set.mqtt.max_packet_size = 4096;
        assert_eq!(max_packet_size(&set), 4096);
    }

    /// What MQTT 5 adds to the CONNECT, and rumqttc's sharp edges set
    /// explicitly: a persistent session with the configured expiry, the
    /// inbound limit announced (not rumqttc's 10 KiB default), no topic
    /// aliases, manual acknowledgements, the retained offline last will.
    #[test]
    fn mqtt5_connect_keeps_the_session_and_announces_the_inbound_limit() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = crate::config::testing::config(dir.path(), "");
        config.mqtt.protocol = MqttProtocol::V5;
        config.mqtt.session_expiry = Duration::from_secs(3600);
        let topics = Topics::new("facegate", "lobby", "term-01");
        let v4 = MqttOptions::new("term-01", "broker.example", 8883);
        let o = v5_options(&config, &topics, &v4);
        assert_eq!(o.client_id(), "term-01");
        assert_eq!(o.broker_address(), ("broker.example".to_string(), 8883));
        assert!(!o.clean_start(), "a persistent session");
        assert_eq!(o.session_expiry_interval(), Some(3600));
        assert_eq!(
            o.max_packet_size(),
            Some(max_incoming_packet_size(&config) as u32),
            "the inbound limit is announced"
        );
        assert_eq!(o.topic_alias_max(), None, "no topic aliases");
        assert!(o.manual_acks());
        let will = o.last_will().expect("a last will");
        assert_eq!(&will.topic[..], topics.status.as_bytes());
        assert!(will.retain);
        assert_eq!(&will.message[..], &Status::offline().to_bytes()[..]);
    }

    #[test]
    fn the_session_expiry_is_whole_seconds_up_to_never() {
        assert_eq!(
            session_expiry_interval(Duration::from_secs(604_800)),
            604_800
        );
        assert_eq!(
            session_expiry_interval(Duration::from_secs(u64::from(u32::MAX))),
            u32::MAX
        );
        assert_eq!(
            session_expiry_interval(Duration::from_secs(u64::from(u32::MAX) + 1)),
            u32::MAX
        );
    }
}
