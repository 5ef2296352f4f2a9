//! `facegate fleet send`: the fleet managers' side of the command channel.
//! Signs a command, publishes it over mutual TLS to one device or a whole site,
//! and collects the replies that carry its `jti`. [`acl`] writes the broker
//! ACL that confines each device certificate to its own topics.

pub mod acl;

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};

use crate::cmd::Command;
use crate::command::CommandError;
use crate::ids::Jti;
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
}

/// Signs and publishes the command, then waits for replies: for one device
/// until its reply arrives, for a site until `timeout`.
pub async fn send(req: &SendRequest, now: i64) -> Result<SendOutcome, FleetError> {
    let aud = match &req.device {
        Some(d) => format!("{}/{d}", req.site),
        None => req.site.clone(),
    };
    let (jti, jws) = req
        .command
        .sign(&aud, req.lifetime_s, &req.kid, &req.signing_key, now)?;
    let site = SiteTopics::new(&req.prefix, &req.site);
    let (cmd_topic, reply_filter) = match &req.device {
        Some(d) => {
            let device = site.device(d);
            (device.device_cmd, device.reply)
        }
        None => (site.cmd.clone(), site.replies.clone()),
    };

    let tls_config = tls::client_config_for(&req.ca_file, &req.cert_file, &req.key)?;
    let client_id = format!(
        "fleet-send-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut opts = tls::mqtt_options(
        &client_id,
        &req.host,
        req.port,
        Duration::from_secs(30),
        1 << 20,
        tls_config,
    )?;
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);

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
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
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
