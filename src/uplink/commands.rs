//! Inbound fleet commands (ARCHITECTURE I10, "Commands take effect once, and
//! only when verified"): the agent verifies and applies each one, the broker
//! gets its PUBACK only after the effect is committed, then the reply goes out.
//! A command whose effect failed (`internal`: disk full, store error) gets no
//! PUBACK at all: the device reconnects, and the broker delivers it again from
//! the persistent session, until it commits.

use std::sync::Arc;

use rumqttc::Publish;

use super::link::{ConnectionNo, Link};
use super::state::Handed;
use super::status::publish_status;
use crate::agent::Agent;
use crate::clock;
use crate::protocol::Topics;

/// A message that arrived on one of our subscriptions, and on which connection.
#[derive(Debug)]
pub struct Inbound {
    /// The broker connection it arrived on; it is acknowledged on that one only.
    pub connection: ConnectionNo,
    /// The message.
    pub publish: Publish,
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
    } = inbound;
    if !topics.is_command(&publish.topic) {
        tracing::warn!(topic = %publish.topic, "message on an unexpected topic ignored");
        link.ack(connection, &publish);
        return;
    }
    let outcome =
        crate::cmd::apply_command(agent, &publish.payload, publish.dup, clock::now()).await;
    if outcome.settled {
        // The effect (if any) is committed, or the refusal is final: now the
        // broker may forget the command.
        link.ack(connection, &publish);
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
    if !outcome.settled {
        // Unacknowledged, the command waits in the broker's session; a new
        // connection (after the reply is on the wire) gets it delivered again.
        link.reconnect();
    }
    agent.outbox_changed().notify_one();
}
