//! The doctor's broker checks.
//!
//! The broker probe connects with the device's own certificate but the client
//! id `<device_id>-doctor` and a clean session, so the running daemon's
//! persistent session (client id = device id) is neither kicked nor changed.
//! It first makes the MQTT 3.1.1 connection the daemon makes (CONNACK).
//! Then it checks the ACL over MQTT 5, because a 3.1.1 broker grants denied
//! subscriptions and acknowledges denied publishes alike, while MQTT 5 SUBACK
//! and PUBACK carry "not authorized". The broker derives the user name, and
//! thus the ACL, from the certificate, so the probe has the device's rights:
//! it subscribes to the device's command topic and publishes one QoS 1
//! message `{"v":1,"doctor":true}` (no `jti`: not a command reply) on the
//! device's reply topic. Back-ends should ignore reply messages without `jti`.
//! A refused SUBACK or PUBACK fails the check. (Mosquitto grants every
//! subscription and filters on delivery, so there only the publish verdict
//! is informative.) A broker without MQTT 5 gets a warning (ACL not
//! verified), not a failure.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming};
use serde::Serialize;

use super::{names, Check};
use crate::config::Config;
use crate::protocol::{Topics, WIRE_VERSION};
use crate::uplink::tls;

/// The probe published on the device's reply topic: `{"v":1,"doctor":true}`.
#[derive(Serialize)]
struct Probe {
    /// Always [`WIRE_VERSION`].
    v: u8,
    /// Marks the message as the doctor's (it has no `jti`).
    doctor: bool,
}

/// How long the broker probe waits for each answer (CONNACK, SUBACK, PUBACK).
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the broker as the device (client id `<device_id>-doctor`,
/// clean session): the MQTT 3.1.1 connection the daemon uses, then the ACL
/// probe over MQTT 5; two checks.
pub async fn check_broker(cfg: &Config, timeout: Duration) -> Vec<Check> {
    let m = &cfg.mqtt;
    let target = format!("{}:{}", m.host, m.port);
    let not_checked = || Check::fail(names::BROKER_ACL, "not checked: no broker connection");
    let tls = match tls::client_config(&m.ca_file, &m.cert_file, &m.key_file) {
        Ok(t) => t,
        Err(e) => {
            return vec![
                Check::fail(
                    names::BROKER,
                    format!("cannot build the TLS configuration: {e}"),
                ),
                not_checked(),
            ]
        }
    };
    let client_id = format!("{}-doctor", cfg.identity.device_id);
    let connected = match connect_v4(&client_id, cfg, tls.clone(), timeout).await {
        Ok(()) => Check::pass(names::BROKER),
        Err(e) => {
            return vec![
                Check::fail(names::BROKER, format!("{target}: {e}")),
                not_checked(),
            ]
        }
    };
    let acl = match probe_acl_v5(&client_id, cfg, tls, timeout).await {
        Ok(()) => Check::pass(names::BROKER_ACL),
        Err(AclProbe::Refused(msg)) => Check::fail(names::BROKER_ACL, msg),
        Err(AclProbe::NoV5(msg)) => Check::warn(
            names::BROKER_ACL,
            format!("not verified: the broker refused an MQTT 5 connection ({msg})"),
        ),
    };
    vec![connected, acl]
}

/// One MQTT 3.1.1 connection with the daemon's TLS settings, up to CONNACK.
async fn connect_v4(
    client_id: &str,
    cfg: &Config,
    tls: std::sync::Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(), String> {
    let m = &cfg.mqtt;
    let mut options = tls::mqtt_options(client_id, &m.host, m.port, m.keep_alive, 1 << 20, tls)
        .map_err(|e| e.to_string())?;
    // Leave nothing behind on the broker.
    options.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(options, 10);
    let deadline = tokio::time::Instant::now() + timeout;
    let result = loop {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Err(_) => break Err(format!("no CONNACK within {}s", timeout.as_secs())),
            Ok(Err(e)) => break Err(tls::explain(&e)),
            Ok(Ok(Event::Incoming(Incoming::ConnAck(ack)))) => {
                break match ack.code {
                    rumqttc::ConnectReturnCode::Success => Ok(()),
                    code => Err(format!("broker refused the session: {code:?}")),
                }
            }
            Ok(Ok(_)) => {}
        }
    };
    if result.is_ok() {
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(500), events.poll()).await;
    }
    result
}

/// Why the ACL probe did not pass.
enum AclProbe {
    /// The broker answered, and refused (or did not acknowledge) the device's rights.
    Refused(String),
    /// The broker did not accept MQTT 5, so reason codes are unavailable.
    NoV5(String),
}

/// Subscribes to the device's command topic and publishes one QoS 1 message
/// on its reply topic over MQTT 5, whose SUBACK and PUBACK carry the broker's
/// authorization verdict (MQTT 3.1.1 acknowledges denied requests as granted).
async fn probe_acl_v5(
    client_id: &str,
    cfg: &Config,
    tls: std::sync::Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(), AclProbe> {
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode as V5Sub};
    use rumqttc::v5::mqttbytes::QoS as V5QoS;
    use rumqttc::v5::{AsyncClient as V5Client, MqttOptions as V5Options};

    let m = &cfg.mqtt;
    let topics = Topics::new(&m.prefix, &cfg.identity.site_id, &cfg.identity.device_id);
    let (cmd, reply) = (topics.device_cmd, topics.reply);
    let mut options = V5Options::new(client_id, &m.host, m.port);
    options
        .set_keep_alive(Duration::from_secs(m.keep_alive.as_secs().max(5)))
        .set_clean_start(true)
        .set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    let (client, mut events) = V5Client::new(options, 10);
    let deadline = tokio::time::Instant::now() + timeout;
    // CONNACK
    loop {
        match next_v5(&mut events, deadline, timeout)
            .await
            .map_err(AclProbe::NoV5)?
        {
            Some(Packet::ConnAck(ack)) => {
                if ack.code != rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success {
                    return Err(AclProbe::NoV5(format!("{:?}", ack.code)));
                }
                break;
            }
            _ => continue,
        }
    }
    let refused = |e: String| AclProbe::Refused(e);

    client
        .subscribe(&cmd, V5QoS::AtLeastOnce)
        .await
        .map_err(|e| refused(format!("cannot subscribe: {e}")))?;
    loop {
        match next_v5(&mut events, deadline, timeout).await.map_err(|e| refused(format!("no SUBACK for {cmd}: {e}")))? {
            Some(Packet::SubAck(ack)) => match ack.return_codes.as_slice() {
                [V5Sub::Success(_)] => break,
                other => {
                    return Err(refused(format!(
                        "broker refused the subscription to {cmd} ({other:?}): check its ACL for this certificate's CN"
                    )))
                }
            },
            _ => continue,
        }
    }

    client
        .publish(
            &reply,
            V5QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&Probe {
                v: WIRE_VERSION,
                doctor: true,
            })
            .unwrap_or_default(),
        )
        .await
        .map_err(|e| refused(format!("cannot publish: {e}")))?;
    loop {
        match next_v5(&mut events, deadline, timeout).await.map_err(|e| refused(format!("no PUBACK for {reply}: {e}")))? {
            Some(Packet::PubAck(ack)) => match ack.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => break,
                other => {
                    return Err(refused(format!(
                        "broker refused the publish to {reply} ({other:?}): check its ACL for this certificate's CN"
                    )))
                }
            },
            _ => continue,
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), events.poll()).await;
    Ok(())
}

/// The next MQTT 5 event: an incoming packet, `None` for an outgoing one, or
/// why the connection ended or `deadline` passed.
async fn next_v5(
    events: &mut rumqttc::v5::EventLoop,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Option<rumqttc::v5::Incoming>, String> {
    match tokio::time::timeout_at(deadline, events.poll()).await {
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(rumqttc::v5::Event::Incoming(p))) => Ok(Some(p)),
        Ok(Ok(rumqttc::v5::Event::Outgoing(_))) => Ok(None),
    }
}
