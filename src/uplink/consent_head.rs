//! The site consent log on the uplink (SPEC "Site consent log"): heads
//! arriving on `{prefix}/{site}/consent/head` (retained, subscribed on every
//! connection) go to the agent, which verifies and stores them; a refused
//! head changes nothing and is logged and audited within the ingress rate
//! limit. [`LogWatch`] republishes the status whenever `in_sync` or
//! `missing` changes. Whether uploads wait is decided in the hand-over
//! (`upload::hand_over`, `Store::consent_log_holds`).

use std::sync::Arc;

use serde_json::json;

use super::commands::{flush_ingress, Inbound};
use super::ingress::Verdict;
use super::link::Link;
use super::status::publish_status;
use crate::agent::Agent;
use crate::audit::kind;
use crate::clock;
use crate::protocol::Topics;
use crate::store::HeadApplied;

/// Takes one message from the head topic: verified and stored by the agent,
/// then acknowledged (QoS 1).
pub async fn handle_head(agent: &Arc<Agent>, link: &Arc<Link>, inbound: Inbound) {
    let Inbound {
        connection,
        publish,
        ..
    } = inbound;
    let now = clock::now();
    match agent.consent_head(&publish.payload, now).await {
        Ok(Ok((head, HeadApplied::Accepted))) => {
            tracing::debug!(seq = %head.seq, base = %head.base, iat = head.iat, "consent-log head");
        }
        Ok(Ok((head, HeadApplied::Ignored))) => {
            tracing::info!(seq = %head.seq, "consent-log head older than the one held; ignored");
        }
        Ok(Err(refused)) => {
            let code = refused.code();
            if link.ingress().refused(&code, now) == Verdict::Record {
                tracing::warn!(code = %code, error = %refused, "consent-log head refused");
                let detail = json!({ "code": code.as_str(), "topic": publish.topic });
                let written = agent
                    .db()
                    .run(move |s| {
                        s.record_counts(Some((kind::CONSENT_LOG_HEAD_REFUSED, detail)), &[], now)
                    })
                    .await;
                if let Err(e) = written {
                    tracing::error!(error = %e, "cannot audit a refused consent-log head");
                }
            }
            flush_ingress(agent, link, now, false).await;
        }
        Err(e) => {
            // Not acknowledged: the broker delivers it again (a new
            // subscription gets the retained head anyway).
            tracing::error!(error = %e, "cannot store the consent-log head");
            return;
        }
    }
    if !publish.qos0() {
        link.ack(connection, publish.ack);
    }
}

/// The last published `in_sync` and `missing`: the status goes out again
/// when either changes (SPEC).
#[derive(Debug, Default)]
pub struct LogWatch {
    published: Option<(bool, Vec<[u64; 2]>)>,
}

impl LogWatch {
    /// Nothing published yet.
    pub fn new() -> LogWatch {
        LogWatch::default()
    }

    /// Forgets what was published (a new connection publishes its status
    /// anyway).
    pub fn reset(&mut self) {
        self.published = None;
    }

    /// Publishes the status if `in_sync` or `missing` changed since the
    /// last time (only while connected).
    pub async fn check(&mut self, agent: &Arc<Agent>, link: &Arc<Link>, topics: &Topics) {
        if !link.connected() {
            return;
        }
        let now = clock::now();
        let log = match agent.consent_log(now).await {
            Ok(log) => log,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the consent-log state");
                return;
            }
        };
        let seen = (log.in_sync, log.missing.clone());
        if self.published.as_ref() == Some(&seen) {
            return;
        }
        if self.published.is_some() {
            if log.in_sync {
                tracing::info!(head = log.head, "in sync with the site consent log");
            } else {
                tracing::warn!(head = log.head, missing = ?log.missing, head_age_s = log.head_age_s,
                    "out of sync with the site consent log");
            }
        }
        self.published = Some(seen);
        publish_status(agent, link, topics).await;
    }
}
