//! The retained status on the device's status topic: published on every
//! connect, on a timer, when a command asks for it, and as `offline` on a
//! clean stop (the broker publishes the same as the last will otherwise).

use std::sync::Arc;

use super::link::Link;
use super::state::Handed;
use crate::agent::Agent;
use crate::clock;
use crate::protocol::{Status, Topics};

/// Publishes the retained status.
pub async fn publish_status(agent: &Arc<Agent>, link: &Arc<Link>, topics: &Topics) {
    match agent.status(clock::now()).await {
        Ok(status) => {
            link.hand(&topics.status, status.to_bytes(), true, Handed::Other);
        }
        Err(e) => tracing::error!(error = %e, "cannot build status"),
    }
}

/// Publishes the retained `offline` status (the last will's message) before a
/// clean disconnect.
pub fn publish_offline(link: &Link, topics: &Topics) -> bool {
    link.hand(
        &topics.status,
        Status::offline().to_bytes(),
        true,
        Handed::Other,
    )
}
