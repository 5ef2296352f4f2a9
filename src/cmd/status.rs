//! `status {}`: answer with the status object now and publish it on the
//! retained status topic. Signed by a `fleet` key. The result is the
//! [`Status`](crate::protocol::Status).

use serde::{Deserialize, Serialize};

use super::{describe_other, Applied, Args};
use crate::agent::{Agent, ApplyError, Via};
use crate::command::CommandError;
use crate::config::Role;
use crate::ids::SubjectId;
use crate::protocol::{self, ReplyResult};

/// `status`: it takes no arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {}

impl Status {
    /// Nothing to take away: a `status` issued ahead of this device's clock is
    /// refused `not_yet_valid`.
    pub(super) const EARLY_OK: bool = false;

    pub(super) fn parse(args: &Args) -> Result<Status, CommandError> {
        args.parse(|_| "status takes no arguments".to_string())
    }

    pub(super) fn may_sign(role: Role) -> bool {
        role == Role::Fleet
    }

    pub(super) fn subject(&self) -> Option<SubjectId> {
        None
    }

    pub(super) async fn apply(
        self,
        agent: &Agent,
        via: Via,
        now: i64,
    ) -> Result<Applied, ApplyError> {
        let status = agent.answer_status(via, now).await?;
        Ok(Applied {
            publish_status: true,
            ..Applied::result(status)
        })
    }

    pub(super) fn describe(result: &ReplyResult) -> String {
        match result {
            ReplyResult::Status(s) => {
                let count = |n: Option<u64>| n.map_or("?".to_string(), |n| n.to_string());
                let protocol::Status {
                    outbox, consent, ..
                } = s.as_ref();
                format!(
                    "outbox {} capture(s), {} active consent(s)",
                    count(outbox.map(|o| o.captures)),
                    count(consent.map(|c| c.active))
                )
            }
            other => describe_other(other),
        }
    }
}
