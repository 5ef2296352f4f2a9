//! Inbound fleet commands (ARCHITECTURE I10, "Commands take effect once, and
//! only when verified"): the agent verifies and applies each one, the broker
//! gets its PUBACK only after the effect is committed, then the reply goes out.
//! A command whose effect failed (`internal`: disk full, store error) gets no
//! PUBACK at all: the device reconnects, and the broker delivers it again from
//! the persistent session, until it commits.

use std::sync::Arc;

use serde_json::json;

use super::ingress::{Ignored, Verdict};
use super::link::{ConnectionNo, Link};
use super::mqtt::Message;
use super::state::Handed;
use super::status::publish_status;
use crate::agent::Agent;
use crate::audit::kind;
use crate::clock;
use crate::cmd::Refusal;
use crate::protocol::Topics;
use crate::store::counter;

/// A message that arrived on one of our subscriptions, and on which connection.
#[derive(Debug)]
pub struct Inbound {
    /// The broker connection it arrived on; it is acknowledged on that one only.
    pub connection: ConnectionNo,
    /// The message.
    pub publish: Message,
    /// When the network task received it (for the timings logged at debug).
    pub received: std::time::Instant,
}

/// Verifies and applies one inbound command, acknowledges it to the broker
/// once its effect is committed, and publishes the reply.
pub async fn handle_command(
    agent: &Arc<Agent>,
    link: &Arc<Link>,
    topics: &Topics,
    inbound: Inbound,
) {
    let Inbound {
        connection,
        publish,
        received,
    } = inbound;
    let started = std::time::Instant::now();
    if !topics.is_command(&publish.topic) {
        tracing::warn!(topic = %publish.topic, "message on an unexpected topic ignored");
        link.ack(connection, publish.ack);
        return;
    }
    let now = clock::now();
    let outcome = crate::cmd::apply_command(agent, &publish.payload, publish.dup, now).await;
    let applied = std::time::Instant::now();
    if outcome.settled {
        // The effect (if any) is committed, or the refusal is final: now the
        // broker may forget the command.
        link.ack(connection, publish.ack);
    }
    if let Some(refusal) = &outcome.refused {
        note_refusal(agent, link, refusal, now).await;
    }
    if outcome.publish_status {
        publish_status(agent, link, topics).await;
    }
    link.hand(
        &topics.reply,
        outcome.reply.to_bytes(),
        false,
        Handed::Other,
    );
    let ms = |from: std::time::Instant, to: std::time::Instant| {
        to.saturating_duration_since(from).as_secs_f64() * 1e3
    };
    let replied = std::time::Instant::now();
    tracing::debug!(
        waited_ms = ms(received, started),
        apply_ms = ms(started, applied),
        status_ms = ms(applied, replied),
        "command answered"
    );
    if !outcome.settled {
        // Unacknowledged, the command waits in the broker's session; a new
        // connection (after the reply is on the wire) gets it delivered again.
        link.reconnect();
    }
    agent.outbox_changed().notify_one();
}

/// Logs and audits one refused command within the rate limit
/// ([`super::ingress`]): the first ones of a window each get a line and (if
/// nothing audited them yet) a `command.refused` row; the rest are counted
/// into the window's summary.
async fn note_refusal(agent: &Agent, link: &Link, r: &Refusal, now: i64) {
    let verdict = link.ingress().refused(&r.code, now);
    if verdict == Verdict::Record {
        let jti = r.jti.as_ref().map(|j| j.as_str().to_string());
        tracing::warn!(code = %r.code, jti = ?jti, cmd = ?r.cmd, error = %r.message, "fleet command refused");
        let audit = r.unaudited.then(|| {
            (
                kind::COMMAND_REFUSED,
                json!({ "jti": jti, "cmd": r.cmd, "code": r.code.as_str() }),
            )
        });
        let written = agent
            .db()
            .run(move |s| s.record_counts(audit, &[(counter::COMMANDS_REFUSED, 1)], now))
            .await;
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot audit a refused fleet command");
        }
    }
    flush_ingress(agent, link, now, false).await;
}

/// Logs and audits the first message of `kind` ignored in this run; later
/// ones are only counted ([`super::ingress`]).
pub async fn note_ignored(agent: &Agent, kind: Ignored, topic: String, now: i64) {
    tracing::warn!(
        kind = kind.as_str(),
        %topic,
        "message on a command topic ignored, not applied and not answered (commands are \
         QoS 1 and not retained; a retained one would come back at every subscription); \
         further ones in this run are only counted (status counters.commands_ignored)"
    );
    let detail = json!({ "kind": kind.as_str(), "topic": topic });
    let written = agent
        .db()
        .run(move |s| {
            s.record_counts(
                Some((kind::COMMAND_IGNORED, detail)),
                &[(counter::COMMANDS_IGNORED, 1)],
                now,
            )
        })
        .await;
    if let Err(e) = written {
        tracing::error!(error = %e, "cannot audit an ignored command message");
    }
}

/// Writes what the rate limiter counted without a row of its own: once its
/// window has ended, or everything (`all`, at shutdown). One transaction:
/// a `command.refused_summary` row (when refusals were counted) and the
/// counters; one log line.
pub async fn flush_ingress(agent: &Agent, link: &Link, now: i64, all: bool) {
    let summary = {
        let mut ingress = link.ingress();
        if all {
            ingress.take(now)
        } else {
            ingress.due(now)
        }
    };
    let Some(summary) = summary else {
        return;
    };
    let (refused, ignored) = (summary.refused_total(), summary.ignored_total());
    if refused > 0 {
        tracing::warn!(
            refused,
            codes = ?summary.refused,
            since = %clock::rfc3339(summary.from),
            "fleet commands refused beyond the log limit (each was answered; not logged or audited one by one)"
        );
    }
    let audit = (refused > 0).then(|| {
        (
            kind::COMMANDS_REFUSED_SUMMARY,
            json!({ "from": summary.from, "to": summary.to, "refused": summary.refused }),
        )
    });
    let written = agent
        .db()
        .run(move |s| {
            s.record_counts(
                audit,
                &[
                    (counter::COMMANDS_REFUSED, refused),
                    (counter::COMMANDS_IGNORED, ignored),
                ],
                now,
            )
        })
        .await;
    if let Err(e) = written {
        tracing::error!(error = %e, refused, ignored, "cannot record refused and ignored command counts");
    }
}
