//! The uplink's MQTT connection settings, from the config: identity and
//! mutual TLS (built by [`super::tls`]), persistent session, packet size
//! limits, rumqttc's flow control and request queue, and the last will.

use rumqttc::{AsyncClient, EventLoop, LastWill, MqttOptions, NetworkOptions, QoS};

use super::tls;
use crate::config::Config;
use crate::protocol::{Status, Topics};

/// Largest MQTT packet we send or accept: the biggest allowed capture, base64
/// encoded inside its envelope, plus room for the envelope and topic.
pub fn max_packet_size(config: &Config) -> usize {
    let image = config.capture.max_file_bytes as usize;
    (image.div_ceil(3) * 4 + 4096).max(config.commands.max_bytes + 4096)
}

/// The options every connection of this device is made with: client id =
/// device id, clean session off, manual acknowledgements (a command is
/// acknowledged once its effect is committed), and the offline last will.
pub fn mqtt_options(config: &Config, topics: &Topics) -> Result<MqttOptions, tls::TlsError> {
    let m = &config.mqtt;
    let tls_config = tls::client_config(&m.ca_file, &m.cert_file, &m.key_file)?;
    let max = max_packet_size(config);
    let mut opts = tls::mqtt_options(
        &config.identity.device_id,
        &m.host,
        m.port,
        m.keep_alive,
        max,
        tls_config,
    )?;
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

/// A fresh client and event loop for one connection attempt. Nothing is
/// carried over from an earlier connection: the outbox, not rumqttc's memory,
/// decides what is sent again.
pub fn connection(config: &Config, options: &MqttOptions) -> (AsyncClient, EventLoop) {
    // Room for a full window plus replies, status and acknowledgements.
    let (client, mut eventloop) =
        AsyncClient::new(options.clone(), config.mqtt.inflight as usize + 64);
    // Small packets (PUBACKs, commands, replies) go out at once instead of
    // waiting for Nagle's algorithm: it cuts command-to-reply latency in half.
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(10);
    eventloop.set_network_options(network);
    (client, eventloop)
}
