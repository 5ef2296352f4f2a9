//! `facegate fleet send`: the fleet managers' side of the command channel.
//! Signs a command, publishes it over mutual TLS to one device or a whole site,
//! and collects the replies that carry its `jti`. [`acl`] writes the broker
//! ACL that confines each device certificate to its own topics.

pub mod acl;
pub mod capture_store;
pub mod inbox;
pub mod log;
pub mod overview;
pub mod receive;

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};

use crate::cmd::Command;
use crate::command::CommandError;
use crate::ids::{Jti, Seq};
use crate::keyref::KeyRef;
use crate::protocol::{Reply, SiteTopics};
use crate::uplink::tls::{self, TlsError};

/// Everything needed to send one command.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// Broker host name (verified against its certificate).
    pub host: String,
    /// Broker TLS port.
    pub port: u16,
    /// CA that signed the broker certificate.
    pub ca_file: PathBuf,
    /// The fleet's client certificate (its CN is the broker user, e.g. `fleet`).
    pub cert_file: PathBuf,
    /// The fleet's TLS private key: a file or a key in a PKCS#11 token.
    pub key: KeyRef,
    /// Topic prefix (`facegate`).
    pub prefix: String,
    /// Target site.
    pub site: String,
    /// Target device; `None` addresses every device of the site.
    pub device: Option<String>,
    /// The command with its arguments.
    pub command: Command,
    /// How long the signed command stays valid, in seconds.
    pub lifetime_s: i64,
    /// Ed25519 signing key (PKCS#8 DER) of a trusted `fleet` (or `consent`) key.
    pub signing_key: Vec<u8>,
    /// Its key id.
    pub kid: String,
    /// How long to wait for replies.
    pub timeout: Duration,
}

/// One reply received for the command.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReply {
    /// The device that answered (from the reply topic).
    pub device: String,
    /// Its reply.
    pub reply: Reply,
}

/// What `send` achieved.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// The signed command's `jti`.
    pub jti: Jti,
    /// Replies in arrival order.
    pub replies: Vec<DeviceReply>,
}

/// Why a command could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The command could not be signed (unknown command, bad args, bad key).
    #[error("cannot sign the command: {0}")]
    Sign(#[from] CommandError),
    /// The TLS files are unusable.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The broker could not be reached or refused us.
    #[error("broker {host}:{port}: {reason}")]
    Connect {
        /// The broker's host name.
        host: String,
        /// Its port.
        port: u16,
        /// Why the connection failed.
        reason: String,
    },
    /// The broker did not confirm the subscription or the publish in time.
    #[error("broker {host}:{port}: no {what} within {timeout:?}")]
    Timeout {
        /// The broker's host name.
        host: String,
        /// Its port.
        port: u16,
        /// What did not arrive (SUBACK, PUBACK).
        what: &'static str,
        /// How long we waited.
        timeout: Duration,
    },
    /// The broker refused our subscription to the reply topic (ACL).
    #[error("broker refused the subscription to {0} (check the fleet certificate's ACL)")]
    Refused(String),
    /// The site consent log file cannot be used.
    #[error(transparent)]
    Log(#[from] log::LogError),
}

/// Signs and publishes the command, then waits for replies: for one device
/// until its reply arrives, for a site until `timeout`.
pub async fn send(req: &SendRequest, now: i64) -> Result<SendOutcome, FleetError> {
    let (jti, jws) = req.command.sign(
        &req.audience(),
        req.lifetime_s,
        &req.kid,
        &req.signing_key,
        now,
    )?;
    send_signed(req, jti, jws).await
}

impl SendRequest {
    /// The command's `aud`: the site, or `site/device`.
    pub fn audience(&self) -> String {
        match &self.device {
            Some(d) => format!("{}/{d}", self.site),
            None => self.site.clone(),
        }
    }

    /// The broker connection it uses.
    pub fn broker(&self) -> BrokerConn {
        BrokerConn {
            host: self.host.clone(),
            port: self.port,
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key: self.key.clone(),
            prefix: self.prefix.clone(),
        }
    }
}

/// Publishes the command `jws` (already signed, with `jti`) as `req` says
/// and waits for replies, as [`send`] does.
pub async fn send_signed(
    req: &SendRequest,
    jti: Jti,
    jws: String,
) -> Result<SendOutcome, FleetError> {
    let site = SiteTopics::new(&req.prefix, &req.site);
    let (cmd_topic, reply_filter) = match &req.device {
        Some(d) => {
            let device = site.device(d);
            (device.device_cmd, device.reply)
        }
        None => (site.cmd.clone(), site.replies.clone()),
    };

    let (client, mut eventloop) = connect(&req.broker(), "fleet-send", 16)?;

    let deadline = tokio::time::Instant::now() + req.timeout;
    let connect_err = |reason: String| FleetError::Connect {
        host: req.host.clone(),
        port: req.port,
        reason,
    };
    let timeout = |what| FleetError::Timeout {
        host: req.host.clone(),
        port: req.port,
        what,
        timeout: req.timeout,
    };

    // Subscribe first, so no reply can be missed, then publish.
    let _ = client
        .subscribe(reply_filter.clone(), QoS::AtLeastOnce)
        .await;
    let mut published = false;
    let mut replies = Vec::new();
    loop {
        let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) if !published => return Err(timeout("acknowledgement of the command")),
            Err(_) => break,
            Ok(Err(e)) => return Err(connect_err(tls::explain(&e))),
            Ok(Ok(ev)) => ev,
        };
        match event {
            Event::Incoming(Packet::SubAck(ack)) => {
                if refused(&ack) {
                    return Err(FleetError::Refused(reply_filter));
                }
                let _ = client
                    .publish(
                        cmd_topic.clone(),
                        QoS::AtLeastOnce,
                        false,
                        jws.clone().into_bytes(),
                    )
                    .await;
            }
            Event::Incoming(Packet::PubAck(_)) => published = true,
            Event::Incoming(Packet::Publish(p)) => {
                let Ok(reply) = Reply::from_bytes(&p.payload) else {
                    continue;
                };
                if reply.jti.as_ref() != Some(&jti) {
                    continue;
                }
                let device = site.device_of(&p.topic).unwrap_or("?").to_string();
                replies.push(DeviceReply { device, reply });
                if req.device.is_some() {
                    break;
                }
            }
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
    Ok(SendOutcome { jti, replies })
}

/// A broker connection of the fleet tool.
#[derive(Debug, Clone)]
pub struct BrokerConn {
    /// Broker host name (verified against its certificate).
    pub host: String,
    /// Broker TLS port.
    pub port: u16,
    /// CA that signed the broker certificate.
    pub ca_file: PathBuf,
    /// The fleet's client certificate.
    pub cert_file: PathBuf,
    /// The fleet's TLS private key.
    pub key: KeyRef,
    /// Topic prefix (`facegate`).
    pub prefix: String,
}

/// Whether a SUBACK refuses any of the subscriptions (an ACL that denies it).
pub(crate) fn refused(ack: &rumqttc::SubAck) -> bool {
    ack.return_codes
        .iter()
        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
}

impl BrokerConn {
    /// The error for a connection that failed or broke.
    fn lost(&self, e: &rumqttc::ConnectionError) -> FleetError {
        FleetError::Connect {
            host: self.host.clone(),
            port: self.port,
            reason: tls::explain(e),
        }
    }
}

/// One message received: `(topic, payload)`.
pub type Received = (String, Vec<u8>);

/// One message to publish (QoS 1).
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Retained.
    pub retain: bool,
}

/// One connection: subscribes to `filters`, then publishes `out` and waits
/// for every PUBACK, then keeps receiving until `done` says so (given every
/// message received so far) or `wait` has passed since the start. Returns
/// `(topic, payload)` of every message received.
pub async fn exchange(
    conn: &BrokerConn,
    filters: &[String],
    out: &[Outgoing],
    wait: Duration,
    done: &dyn Fn(&[Received]) -> bool,
) -> Result<Vec<Received>, FleetError> {
    let (client, mut eventloop) = connect(conn, "fleet-log", 64)?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut subacks = 0;
    let mut pubacks = 0;
    let mut published = false;
    let mut got = Vec::new();
    for f in filters {
        let _ = client.subscribe(f.clone(), QoS::AtLeastOnce).await;
    }
    loop {
        if !published && subacks == filters.len() {
            for o in out {
                let _ = client
                    .publish(
                        o.topic.clone(),
                        QoS::AtLeastOnce,
                        o.retain,
                        o.payload.clone(),
                    )
                    .await;
            }
            published = true;
        }
        if published && pubacks >= out.len() && done(&got) {
            break;
        }
        let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) if pubacks < out.len() => {
                return Err(FleetError::Timeout {
                    host: conn.host.clone(),
                    port: conn.port,
                    what: "acknowledgement of the publish",
                    timeout: wait,
                })
            }
            Err(_) => break,
            Ok(Err(e)) => return Err(conn.lost(&e)),
            Ok(Ok(ev)) => ev,
        };
        match event {
            Event::Incoming(Packet::SubAck(ack)) => {
                if refused(&ack) {
                    return Err(FleetError::Refused(filters.join(", ")));
                }
                subacks += 1;
            }
            Event::Incoming(Packet::PubAck(_)) => pubacks += 1,
            Event::Incoming(Packet::Publish(p)) => got.push((p.topic, p.payload.to_vec())),
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
    Ok(got)
}

/// Publishes the signed head retained on the site's head topic.
pub async fn publish_head(
    conn: &BrokerConn,
    site: &str,
    head_jws: &str,
    timeout: Duration,
) -> Result<(), FleetError> {
    let topic = SiteTopics::new(&conn.prefix, site).consent_head;
    let out = [Outgoing {
        topic,
        payload: head_jws.as_bytes().to_vec(),
        retain: true,
    }];
    exchange(conn, &[], &out, timeout, &|_| true).await?;
    Ok(())
}

/// Every device's retained status on `site` (read for `wait`): device id
/// and status, the last one of each device.
pub async fn site_statuses(
    conn: &BrokerConn,
    site: &str,
    wait: Duration,
) -> Result<Vec<(String, crate::protocol::Status)>, FleetError> {
    let topics = SiteTopics::new(&conn.prefix, site);
    let got = exchange(
        conn,
        std::slice::from_ref(&topics.statuses),
        &[],
        wait,
        &|_| false,
    )
    .await?;
    let mut by_device = std::collections::BTreeMap::new();
    for (topic, payload) in got {
        let (Some(device), Ok(status)) = (
            topics.device_of(&topic),
            crate::protocol::Status::from_bytes(&payload),
        ) else {
            continue;
        };
        by_device.insert(device.to_string(), status);
    }
    Ok(by_device.into_iter().collect())
}

/// Every device's retained status on `site`, for `fleet status`: the last
/// one of each device. Returns once the broker has confirmed the
/// subscription and sent nothing for `quiet` (retained messages come right
/// after the SUBACK), or when `wait` has passed.
pub async fn read_statuses(
    conn: &BrokerConn,
    site: &str,
    quiet: Duration,
    wait: Duration,
) -> Result<Vec<(String, crate::protocol::Status)>, FleetError> {
    let topics = SiteTopics::new(&conn.prefix, site);
    let (client, mut eventloop) = connect(conn, "fleet-status", 16)?;
    let deadline = tokio::time::Instant::now() + wait;
    let _ = client
        .subscribe(topics.statuses.clone(), QoS::AtLeastOnce)
        .await;
    let mut subscribed = false;
    let mut by_device = std::collections::BTreeMap::new();
    loop {
        let until = if subscribed {
            deadline.min(tokio::time::Instant::now() + quiet)
        } else {
            deadline
        };
        let event = match tokio::time::timeout_at(until, eventloop.poll()).await {
            Err(_) if subscribed => break,
            Err(_) => {
                return Err(FleetError::Timeout {
                    host: conn.host.clone(),
                    port: conn.port,
                    what: "SUBACK",
                    timeout: wait,
                })
            }
            Ok(Err(e)) => return Err(conn.lost(&e)),
            Ok(Ok(ev)) => ev,
        };
        match event {
            Event::Incoming(Packet::SubAck(ack)) => {
                if refused(&ack) {
                    return Err(FleetError::Refused(topics.statuses));
                }
                subscribed = true;
            }
            Event::Incoming(Packet::Publish(p)) => {
                if let (Some(device), Ok(status)) = (
                    topics.device_of(&p.topic),
                    crate::protocol::Status::from_bytes(&p.payload),
                ) {
                    by_device.insert(device.to_string(), status);
                }
            }
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
    Ok(by_device.into_iter().collect())
}

/// What [`watch_statuses`] reports.
#[derive(Debug, Clone)]
pub enum Watched {
    /// Subscribed (again, after a reconnect): retained statuses follow.
    Subscribed,
    /// A device published a status (or the broker its last will).
    Status(String, Box<crate::protocol::Status>),
    /// The connection failed; the watch reconnects after `retry`.
    Lost {
        /// Why.
        reason: String,
        /// When it tries again.
        retry: Duration,
    },
}

/// `fleet status --watch`: follows every device's status on `site` and sends
/// what happens to `tx` until `tx` is closed; reconnects (every `retry`) when
/// the broker goes away, so it survives broker restarts.
pub async fn watch_statuses(
    conn: &BrokerConn,
    site: &str,
    retry: Duration,
    tx: tokio::sync::mpsc::Sender<Watched>,
) -> Result<(), FleetError> {
    let topics = SiteTopics::new(&conn.prefix, site);
    loop {
        let (client, mut eventloop) = connect(conn, "fleet-status", 16)?;
        let _ = client
            .subscribe(topics.statuses.clone(), QoS::AtLeastOnce)
            .await;
        let reason = loop {
            let event = match eventloop.poll().await {
                Ok(ev) => ev,
                Err(e) => break tls::explain(&e),
            };
            let watched = match event {
                Event::Incoming(Packet::SubAck(ack)) => {
                    if refused(&ack) {
                        return Err(FleetError::Refused(topics.statuses));
                    }
                    Watched::Subscribed
                }
                Event::Incoming(Packet::Publish(p)) => {
                    match (
                        topics.device_of(&p.topic),
                        crate::protocol::Status::from_bytes(&p.payload),
                    ) {
                        (Some(device), Ok(status)) => {
                            Watched::Status(device.to_string(), Box::new(status))
                        }
                        _ => continue,
                    }
                }
                _ => continue,
            };
            if tx.send(watched).await.is_err() {
                let _ = client.disconnect().await;
                return Ok(());
            }
        };
        if tx.send(Watched::Lost { reason, retry }).await.is_err() {
            return Ok(());
        }
        tokio::time::sleep(retry).await;
    }
}

/// What `fleet log sync` did for one device.
#[derive(Debug, Clone)]
pub struct Resent {
    /// The device.
    pub device: String,
    /// The entry.
    pub seq: Seq,
    /// Signed again at `now` (its own time was over).
    pub re_timed: bool,
    /// Its reply, if one came.
    pub reply: Option<Reply>,
}

/// `fleet log sync`: reads every device's retained status on `site`, and
/// sends each device the entries its `consent_log.missing` names (those the
/// log still holds), signed again with the same `seq` and a new `jti`, on
/// the device's own command topic; collects the replies. Returns what was
/// sent, and the devices' missing seqs the log does not hold (below its
/// base or above its head).
#[allow(clippy::too_many_arguments)]
pub async fn sync_log(
    conn: &BrokerConn,
    site: &str,
    log: &log::SiteLog,
    kid: &str,
    pkcs8: &[u8],
    lifetime_s: i64,
    wait: Duration,
    now: i64,
) -> Result<(Vec<Resent>, Vec<(String, u64)>), FleetError> {
    let statuses = site_statuses(conn, site, Duration::from_secs(2).min(wait)).await?;
    let topics = SiteTopics::new(&conn.prefix, site);
    let mut out = Vec::new();
    let mut sent = Vec::new();
    let mut not_held = Vec::new();
    for (device, status) in statuses {
        let Some(cl) = status.consent_log else {
            continue;
        };
        for [a, b] in cl.missing {
            for seq in a..=b.min(a.saturating_add(10_000)) {
                match log.resign(seq, site, lifetime_s, kid, pkcs8, now) {
                    None => not_held.push((device.clone(), seq)),
                    Some(Err(e)) => return Err(FleetError::Log(e)),
                    Some(Ok(r)) => {
                        out.push(Outgoing {
                            topic: topics.device(&device).device_cmd,
                            payload: r.jws.into_bytes(),
                            retain: false,
                        });
                        sent.push((
                            r.jti,
                            Resent {
                                device: device.clone(),
                                seq: Seq::new(seq),
                                re_timed: !r.original_time,
                                reply: None,
                            },
                        ));
                    }
                }
            }
        }
    }
    if out.is_empty() {
        return Ok((Vec::new(), not_held));
    }
    let jtis: Vec<Jti> = sent.iter().map(|(j, _)| j.clone()).collect();
    let all_replied = |got: &[Received]| {
        let replied: Vec<Jti> = got
            .iter()
            .filter_map(|(_, p)| Reply::from_bytes(p).ok()?.jti)
            .collect();
        jtis.iter().all(|j| replied.contains(j))
    };
    let got = exchange(
        conn,
        std::slice::from_ref(&topics.replies),
        &out,
        wait,
        &all_replied,
    )
    .await?;
    for (_, payload) in got {
        let Ok(reply) = Reply::from_bytes(&payload) else {
            continue;
        };
        if let Some((_, r)) = sent.iter_mut().find(|(j, _)| Some(j) == reply.jti.as_ref()) {
            r.reply = Some(reply);
        }
    }
    Ok((sent.into_iter().map(|(_, r)| r).collect(), not_held))
}

/// One readable line for a reply.
pub fn describe(answer: &DeviceReply) -> String {
    let reply = &answer.reply;
    let cmd = reply.cmd.as_deref().unwrap_or("?");
    if reply.ok {
        let detail = match (&reply.result, reply.command()) {
            (Some(result), Some(name)) => Command::describe(name, result),
            (Some(result), None) => serde_json::to_string(result).unwrap_or_default(),
            (None, _) => "no result".to_string(),
        };
        format!("{}: ok {cmd}: {detail}", answer.device)
    } else {
        let (code, message) = match &reply.error {
            Some(e) => (e.code.as_str(), e.message.as_str()),
            None => ("?", ""),
        };
        format!("{}: refused {cmd}: {code} ({message})", answer.device)
    }
}

/// A clean-session MQTT client of the fleet tool on `conn` (mutual TLS, the
/// key wherever it lives), named `ROLE-<random>`, with a request channel of
/// `cap`.
fn connect(
    conn: &BrokerConn,
    role: &str,
    cap: usize,
) -> Result<(AsyncClient, rumqttc::EventLoop), FleetError> {
    let tls_config = tls::client_config_for(&conn.ca_file, &conn.cert_file, &conn.key)?;
    let client_id = format!(
        "{role}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut opts = tls::mqtt_options(
        &client_id,
        &conn.host,
        conn.port,
        Duration::from_secs(30),
        1 << 20,
        tls_config,
    )?;
    opts.set_clean_session(true);
    Ok(AsyncClient::new(opts, cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(device: &str, json: &str) -> DeviceReply {
        DeviceReply {
            device: device.into(),
            reply: Reply::from_bytes(json.as_bytes()).unwrap(),
        }
    }

    #[test]
    fn replies_read_well() {
        let ok = reply(
            "term-01",
            r#"{"v":1,"jti":"j","cmd":"consent.revoke","ok":true,
               "result":{"subject":"S-1","purged":3,"in_flight":["a"],"purged_at":"2026-01-01T00:00:00Z"}}"#,
        );
        assert_eq!(
            describe(&ok),
            "term-01: ok consent.revoke: purged 3 capture(s) of S-1, in flight 1"
        );
        let all = reply(
            "term-01",
            r#"{"v":1,"jti":"j","cmd":"capture.purge","ok":true,
               "result":{"subject":null,"purged":0,"in_flight":[],"purged_at":"2026-01-01T00:00:00Z","all":true}}"#,
        );
        assert_eq!(
            describe(&all),
            "term-01: ok capture.purge: purged 0 capture(s), in flight 0"
        );
        let granted = reply(
            "term-01",
            r#"{"v":1,"jti":"j","cmd":"consent.grant","ok":true,
               "result":{"consent_id":"c-1","subject":"S-1","expires_at":"2026-01-01T00:00:00Z","new":true}}"#,
        );
        assert_eq!(
            describe(&granted),
            "term-01: ok consent.grant: consent c-1 for S-1 until 2026-01-01T00:00:00Z"
        );
        let status = reply(
            "term-03",
            r#"{"v":1,"jti":"j","cmd":"status","ok":true,
               "result":{"v":1,"state":"online","outbox":{"captures":4,"bytes":9,"oldest_age_s":1},
                         "consent":{"active":2}}}"#,
        );
        assert_eq!(
            describe(&status),
            "term-03: ok status: outbox 4 capture(s), 2 active consent(s)"
        );
        let err = reply(
            "term-02",
            r#"{"v":1,"jti":"j","cmd":"status","ok":false,"error":{"code":"replayed","message":"seen before"}}"#,
        );
        assert_eq!(
            describe(&err),
            "term-02: refused status: replayed (seen before)"
        );
        let newer = reply(
            "term-04",
            r#"{"v":1,"jti":"j","cmd":"camera.restart","ok":true,"result":{"restarted":2}}"#,
        );
        assert_eq!(
            describe(&newer),
            r#"term-04: ok camera.restart: {"restarted":2}"#
        );
    }
}
