//! The doctor's broker checks: the connection the daemon makes, the device's
//! rights (ACL), and that the broker confines the certificate to them.
//!
//! **Whose session.** The shipped broker layout makes the certificate CN the
//! client id (`use_username_as_clientid`), so every connection made with the
//! device's certificate *is* the device's session, whatever id it asks for.
//! The probes therefore connect as the device itself (client id = device id)
//! and never wipe that session: clean session off (MQTT 5: clean start off,
//! session never expiring, as a 3.1.1 persistent session), and manual
//! acknowledgements that are never sent, so a command the broker queued for
//! the device and hands to the probe stays queued and is delivered again to
//! the daemon. Since a second connection of the device takes the first one
//! over, the probes do not run while the daemon runs (its control socket
//! answers): then the connection check reads the daemon's own status and the
//! two ACL checks are warnings saying why they did not run. A socket that is
//! there but cannot be used (permissions) gives the same warnings: the probes
//! run only when nothing listens on it.
//!
//! **What can be seen.** An MQTT 3.1.1 broker acknowledges a denied publish
//! like an allowed one (and drops it), and Mosquitto 2 grants every
//! subscription, also a denied one, under 3.1.1 and 5 alike (SUBACK QoS 1;
//! it filters on delivery; tests/doctor.rs shows it). So the ACL probes run
//! over MQTT 5, whose PUBACK says "not authorized":
//!
//! - ACL (the device's rights): subscribing to its command topic and one QoS 1
//!   publish of `{"v":1,"doctor":true}` (no `jti`: not a command reply) on its
//!   reply topic must be granted.
//! - Confinement: the same publish on the reply topic of this device name at
//!   another site and of another device of this site must be refused; a
//!   subscription to `{prefix}/#` must deliver nothing but the device's own
//!   command topics (the probe's own reply coming back through it, or any
//!   other device's retained status, shows a read grant); and a second
//!   connection asking for client id `<device_id>-doctor` must take the
//!   first one over (the broker ties the client id to the certificate), else
//!   another device's certificate could take over this device's session. The
//!   extra session it made on such a broker is removed again.
//!
//! What it cannot see: a read grant on a topic nobody publishes to while it
//! listens (another site's command topic, for instance: the device cannot
//! publish there, and Mosquitto grants the subscription anyway). A broker
//! without MQTT 5 gets warnings (not verified), not failures.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as V5Code, Packet, PubAckReason, SubscribeReasonCode as V5Sub,
};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::{AsyncClient as V5Client, EventLoop as V5Events, MqttOptions as V5Options};
use rumqttc::{AsyncClient, Event, Incoming};
use serde::Serialize;

use super::{names, Check};
use crate::config::Config;
use crate::control::{self, ControlError, Request};
use crate::protocol::{Status, Topics, WIRE_VERSION};
use crate::uplink::tls;

/// The probe published on reply topics: `{"v":1,"doctor":true}`.
#[derive(Serialize)]
struct Probe {
    /// Always [`WIRE_VERSION`].
    v: u8,
    /// Marks the message as the doctor's (it has no `jti`).
    doctor: bool,
}

/// How long the broker probe waits for each answer (CONNACK, SUBACK, PUBACK).
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the probe listens for messages it must not get, after its last
/// publish, and how long it waits for a takeover of its first connection.
const LISTEN: Duration = Duration::from_millis(700);
/// How long the daemon's control socket may take to answer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(3);
/// MQTT 5 session expiry "never", what a 3.1.1 persistent session has.
const NEVER_EXPIRES: u32 = u32::MAX;

/// The broker checks, in order: connection, ACL, confinement.
pub async fn check_broker(cfg: &Config, timeout: Duration) -> Vec<Check> {
    if let Some(checks) = daemon_running(cfg).await {
        return checks;
    }
    let m = &cfg.mqtt;
    let target = format!("{}:{}", m.host, m.port);
    let not_checked = |why: &str| {
        vec![
            Check::fail(names::BROKER_ACL, format!("not checked: {why}")),
            Check::fail(names::BROKER_CONFINEMENT, format!("not checked: {why}")),
        ]
    };
    let tls = match tls::client_config_for(&m.ca_file, &m.cert_file, &m.key) {
        Ok(t) => t,
        Err(e) => {
            let mut checks = vec![Check::fail(
                names::BROKER,
                format!("cannot build the TLS configuration: {e}"),
            )];
            checks.extend(not_checked("no broker connection"));
            return checks;
        }
    };
    match connect_v4(cfg, tls.clone(), timeout).await {
        Ok(()) => {}
        Err(e) => {
            let mut checks = vec![Check::fail(names::BROKER, format!("{target}: {e}"))];
            checks.extend(not_checked("no broker connection"));
            return checks;
        }
    }
    let mut checks = vec![Check::pass(names::BROKER)];
    match probe_v5(cfg, tls, timeout).await {
        Ok(problems) if problems.is_empty() => {
            checks.push(Check::pass(names::BROKER_ACL));
            checks.push(Check::pass(names::BROKER_CONFINEMENT));
        }
        Ok(problems) => {
            checks.push(Check::pass(names::BROKER_ACL));
            checks.push(Check::fail(
                names::BROKER_CONFINEMENT,
                format!(
                    "{} (generate the ACL with `facegate fleet acl` and set use_username_as_clientid true)",
                    problems.join("; ")
                ),
            ));
        }
        Err(AclProbe::Refused(msg)) => {
            checks.push(Check::fail(names::BROKER_ACL, msg));
            checks.push(Check::fail(
                names::BROKER_CONFINEMENT,
                "not checked: the device's own rights are missing",
            ));
        }
        Err(AclProbe::NoV5(msg)) => {
            let why = format!("not verified: the broker refused an MQTT 5 connection ({msg})");
            checks.push(Check::warn(names::BROKER_ACL, why.clone()));
            checks.push(Check::warn(names::BROKER_CONFINEMENT, why));
        }
    }
    checks
}

/// When the daemon answers on its control socket (or may be running: the
/// socket is there but cannot be used): the broker checks as far as they can
/// be made without taking its session over. `None` when no daemon listens.
async fn daemon_running(cfg: &Config) -> Option<Vec<Check>> {
    let socket = &cfg.control.socket;
    let asked = control::request::<Status>(socket, &Request::Status);
    let answer = match tokio::time::timeout(CONTROL_TIMEOUT, asked).await {
        Ok(Ok(response)) => response.into_result().map_err(|e| e.message),
        Ok(Err(ControlError::Connect { source, .. }))
            if matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return None
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "control socket {}: no answer within {}s",
            socket.display(),
            CONTROL_TIMEOUT.as_secs()
        )),
    };
    let (connection, why) = match answer {
        Ok(status) => (
            match status.uplink {
                Some(u) if u.connected => Check::pass(names::BROKER),
                _ => Check::warn(
                    names::BROKER,
                    "the running daemon is not connected to the broker now (see `facegate ctl status` and its log)",
                ),
            },
            "not probed while the daemon runs: the broker makes the certificate CN the client id, so a probe would take the daemon's session over; stop the daemon and run doctor again to probe".to_string(),
        ),
        Err(e) => {
            let why = format!(
                "not probed: cannot tell whether the daemon runs ({e}), and a probe would take its session over; run doctor as a user allowed on the control socket, or with the daemon stopped"
            );
            (Check::warn(names::BROKER, why.clone()), why)
        }
    };
    Some(vec![
        connection,
        Check::warn(names::BROKER_ACL, why.clone()),
        Check::warn(names::BROKER_CONFINEMENT, why),
    ])
}

/// One MQTT 3.1.1 connection with the daemon's TLS settings and session (the
/// device's, resumed, nothing acknowledged), up to CONNACK.
async fn connect_v4(
    cfg: &Config,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(), String> {
    let m = &cfg.mqtt;
    let mut options = tls::mqtt_options(
        &cfg.identity.device_id,
        &m.host,
        m.port,
        m.keep_alive,
        1 << 20,
        tls,
    )
    .map_err(|e| e.to_string())?;
    // The device's persistent session: never wiped, and what the broker hands
    // over stays unacknowledged (it goes to the daemon again).
    options.set_clean_session(false).set_manual_acks(true);
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

/// One MQTT 5 connection of the probe and the topics of what it received.
struct V5Conn {
    client: V5Client,
    events: V5Events,
    received: Vec<String>,
    timeout: Duration,
}

impl V5Conn {
    /// Connects with `client_id`, as a session that never expires (or, with
    /// `clean`, a fresh one that ends with the connection), acknowledging
    /// nothing; returns the connection or why it failed.
    async fn open(
        cfg: &Config,
        client_id: &str,
        clean: bool,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<V5Conn, String> {
        let m = &cfg.mqtt;
        let mut options = V5Options::new(client_id, &m.host, m.port);
        options
            .set_keep_alive(Duration::from_secs(m.keep_alive.as_secs().max(5)))
            .set_clean_start(clean)
            .set_session_expiry_interval(if clean { None } else { Some(NEVER_EXPIRES) })
            .set_manual_acks(true)
            .set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        let (client, events) = V5Client::new(options, 10);
        let mut conn = V5Conn {
            client,
            events,
            received: Vec::new(),
            timeout,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(Packet::ConnAck(ack)) = conn.next(deadline).await? {
                return match ack.code {
                    V5Code::Success => Ok(conn),
                    code => Err(format!("{code:?}")),
                };
            }
        }
    }

    /// The next incoming packet (`None` for an outgoing one), or why the
    /// connection ended or `deadline` passed. Publishes are noted.
    async fn next(&mut self, deadline: tokio::time::Instant) -> Result<Option<Packet>, String> {
        match tokio::time::timeout_at(deadline, self.events.poll()).await {
            Err(_) => Err(format!("no answer within {}s", self.timeout.as_secs())),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(rumqttc::v5::Event::Incoming(p))) => {
                if let Packet::Publish(publish) = &p {
                    self.received
                        .push(String::from_utf8_lossy(&publish.topic).into_owned());
                }
                Ok(Some(p))
            }
            Ok(Ok(rumqttc::v5::Event::Outgoing(_))) => Ok(None),
        }
    }

    /// Subscribes to `filter` and returns the SUBACK's reason code.
    async fn subscribe(&mut self, filter: &str, qos: V5QoS) -> Result<V5Sub, String> {
        self.client
            .subscribe(filter, qos)
            .await
            .map_err(|e| format!("cannot subscribe to {filter}: {e}"))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match self.next(deadline).await {
                Err(e) => return Err(format!("no SUBACK for {filter}: {e}")),
                Ok(Some(Packet::SubAck(ack))) => {
                    return ack
                        .return_codes
                        .first()
                        .copied()
                        .ok_or_else(|| format!("an empty SUBACK for {filter}"))
                }
                Ok(_) => {}
            }
        }
    }

    /// Publishes the probe on `topic` at QoS 1 and returns the PUBACK's reason.
    async fn publish_probe(&mut self, topic: &str) -> Result<PubAckReason, String> {
        let probe = serde_json::to_vec(&Probe {
            v: WIRE_VERSION,
            doctor: true,
        })
        .unwrap_or_default();
        self.client
            .publish(topic, V5QoS::AtLeastOnce, false, probe)
            .await
            .map_err(|e| format!("cannot publish on {topic}: {e}"))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match self.next(deadline).await {
                Err(e) => return Err(format!("no PUBACK for {topic}: {e}")),
                Ok(Some(Packet::PubAck(ack))) => return Ok(ack.reason),
                Ok(_) => {}
            }
        }
    }

    /// Polls for `wait`, noting publishes; false if the connection ended.
    async fn listen(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.next(deadline).await {
                Ok(Some(Packet::Disconnect(_))) => return false,
                Ok(_) => {}
                Err(_) if tokio::time::Instant::now() >= deadline => return true,
                Err(_) => return false,
            }
        }
    }

    /// Ends the connection with a DISCONNECT (the session stays as it was set up).
    async fn close(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(500), self.events.poll()).await;
    }
}

/// The device's rights (`Err`) and its confinement (the problems found) over
/// MQTT 5, whose SUBACK and PUBACK carry the broker's verdict.
async fn probe_v5(
    cfg: &Config,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Vec<String>, AclProbe> {
    let m = &cfg.mqtt;
    let (site, device) = (&cfg.identity.site_id, &cfg.identity.device_id);
    let own = Topics::new(&m.prefix, site, device);
    let refused = AclProbe::Refused;
    let mut conn = V5Conn::open(cfg, device, false, tls.clone(), timeout)
        .await
        .map_err(AclProbe::NoV5)?;

    // The device's own rights.
    match conn.subscribe(&own.device_cmd, V5QoS::AtLeastOnce).await.map_err(refused)? {
        V5Sub::Success(_) => {}
        other => {
            return Err(refused(format!(
                "broker refused the subscription to {} ({other:?}): check its ACL for this certificate's CN",
                own.device_cmd
            )))
        }
    }
    let wide = format!("{}/#", m.prefix);
    // Granted or not, what matters is what it delivers (Mosquitto grants it).
    conn.subscribe(&wide, V5QoS::AtMostOnce)
        .await
        .map_err(refused)?;
    match conn.publish_probe(&own.reply).await.map_err(refused)? {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {}
        other => {
            return Err(refused(format!(
            "broker refused the publish to {} ({other:?}): check its ACL for this certificate's CN",
            own.reply
        )))
        }
    }

    // Confinement: another site's and another device's topics.
    let mut problems = Vec::new();
    let other_site = other_name(site, "doctor-probe");
    let other_device = other_name(device, "doctor-probe");
    for (topic, whose) in [
        (
            Topics::new(&m.prefix, &other_site, device).reply,
            "a device of another site",
        ),
        (
            Topics::new(&m.prefix, site, &other_device).reply,
            "another device of this site",
        ),
    ] {
        match conn.publish_probe(&topic).await.map_err(refused)? {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => problems.push(format!(
                "the broker accepted a publish on {topic}: this certificate can write as {whose}"
            )),
            _ => {}
        }
    }
    conn.listen(LISTEN).await;
    let readable = [
        own.device_cmd.as_str(),
        own.site_cmd.as_str(),
        own.consent_head.as_str(),
    ];
    let mut leaked: Vec<String> = conn
        .received
        .iter()
        .filter(|t| !readable.contains(&t.as_str()))
        .cloned()
        .collect();
    leaked.sort();
    leaked.dedup();
    if !leaked.is_empty() {
        problems.push(format!(
            "a subscription to {wide} delivered {}: this certificate can read beyond its own command topics",
            leaked.join(", ")
        ));
    }
    let _ = conn.client.unsubscribe(&wide).await;
    conn.listen(Duration::from_millis(200)).await;

    // The client id: a second connection under another id must take the first over.
    let other_id = format!("{device}-doctor");
    let second = V5Conn::open(cfg, &other_id, false, tls.clone(), timeout)
        .await
        .map_err(|e| refused(format!("second connection: {e}")))?;
    let first_alive = conn.listen(LISTEN).await;
    second.close().await;
    if first_alive {
        conn.close().await;
        problems.push(format!(
            "the broker let this certificate connect as client id {other_id:?} next to {device:?}: another device's certificate could take over this device's session (use_username_as_clientid is off)"
        ));
        // Remove the session `<device>-doctor` made on this broker.
        if let Ok(clean) = V5Conn::open(cfg, &other_id, true, tls, timeout).await {
            clean.close().await;
        }
    }
    Ok(problems)
}

/// A name like `base` that differs from `own`.
fn other_name(own: &str, base: &str) -> String {
    if own == base {
        format!("{base}-2")
    } else {
        base.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_names_differ_from_ours() {
        assert_eq!(other_name("lobby", "doctor-probe"), "doctor-probe");
        assert_eq!(other_name("doctor-probe", "doctor-probe"), "doctor-probe-2");
    }
}
