//! `facegate fleet send`: the fleet managers' side of the command channel.
//! Signs a command, publishes it over mutual TLS to one device or a whole site,
//! and collects the replies that carry its `jti`.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::Value;

use crate::command::{self, CommandError};
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
    /// The fleet's TLS private key.
    pub key_file: PathBuf,
    /// Topic prefix (`facegate`).
    pub prefix: String,
    /// Target site.
    pub site: String,
    /// Target device; `None` addresses every device of the site.
    pub device: Option<String>,
    /// Command name (`consent.revoke`, …).
    pub cmd: String,
    /// Command arguments (a JSON object).
    pub args: Value,
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
pub struct Reply {
    /// The device that answered (from the reply topic).
    pub device: String,
    /// The SPEC reply object.
    pub body: Value,
}

/// What `send` achieved.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// The signed command's `jti`.
    pub jti: String,
    /// Replies in arrival order.
    pub replies: Vec<Reply>,
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
        host: String,
        port: u16,
        reason: String,
    },
    /// The broker did not confirm the subscription or the publish in time.
    #[error("broker {host}:{port}: no {what} within {timeout:?}")]
    Timeout {
        host: String,
        port: u16,
        what: &'static str,
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
    let (jti, jws) = command::sign_command(
        &req.cmd,
        req.args.clone(),
        &aud,
        req.lifetime_s,
        &req.kid,
        &req.signing_key,
        now,
    )?;
    let (cmd_topic, reply_filter) = match &req.device {
        Some(d) => (
            format!("{}/{}/{d}/cmd", req.prefix, req.site),
            format!("{}/{}/{d}/reply", req.prefix, req.site),
        ),
        None => (
            format!("{}/{}/cmd", req.prefix, req.site),
            format!("{}/{}/+/reply", req.prefix, req.site),
        ),
    };

    let tls_config = tls::client_config(&req.ca_file, &req.cert_file, &req.key_file)?;
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
                let Ok(body) = serde_json::from_slice::<Value>(&p.payload) else {
                    continue;
                };
                if body["jti"] != jti.as_str() {
                    continue;
                }
                let device = p.topic.rsplit('/').nth(1).unwrap_or("?").to_string();
                replies.push(Reply { device, body });
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
pub fn describe(reply: &Reply) -> String {
    let b = &reply.body;
    let cmd = b["cmd"].as_str().unwrap_or("?");
    if b["ok"] == true {
        let r = &b["result"];
        let detail = match cmd {
            "consent.revoke" | "capture.purge" => format!(
                "purged {} capture(s){}, in flight {}",
                r["purged"],
                r["subject"]
                    .as_str()
                    .map(|s| format!(" of {s}"))
                    .unwrap_or_default(),
                r["in_flight"].as_array().map(|a| a.len()).unwrap_or(0)
            ),
            "consent.grant" => format!(
                "consent {} for {} until {}",
                r["consent_id"].as_str().unwrap_or("?"),
                r["subject"].as_str().unwrap_or("?"),
                r["expires_at"].as_str().unwrap_or("?")
            ),
            "status" => format!(
                "outbox {} capture(s), {} active consent(s)",
                r["outbox"]["captures"], r["consent"]["active"]
            ),
            _ => r.to_string(),
        };
        format!("{}: ok {cmd}: {detail}", reply.device)
    } else {
        format!(
            "{}: refused {cmd}: {} ({})",
            reply.device,
            b["error"]["code"].as_str().unwrap_or("?"),
            b["error"]["message"].as_str().unwrap_or("")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_read_well() {
        let ok = Reply {
            device: "term-01".into(),
            body: json!({"v":1,"jti":"j","cmd":"consent.revoke","ok":true,
                "result":{"subject":"S-1","purged":3,"in_flight":["a"],"purged_at":"2026-01-01T00:00:00Z"}}),
        };
        assert_eq!(
            describe(&ok),
            "term-01: ok consent.revoke: purged 3 capture(s) of S-1, in flight 1"
        );
        let err = Reply {
            device: "term-02".into(),
            body: json!({"v":1,"jti":"j","cmd":"status","ok":false,"error":{"code":"replayed","message":"seen before"}}),
        };
        assert_eq!(
            describe(&err),
            "term-02: refused status: replayed (seen before)"
        );
    }
}
