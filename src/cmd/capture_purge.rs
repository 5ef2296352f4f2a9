//! `capture.purge {"subject": "…"}` or `{"all": true}`: purge one subject's
//! captures, or every capture, and keep the consents. Signed by a `fleet` key.
//! The result is the purge [`Receipt`](crate::protocol::Receipt).

use serde::{Deserialize, Serialize};

use super::{describe_receipt, present, subject_problem, Applied, Args};
use crate::agent::{Agent, ApplyError, PurgeTarget, Via};
use crate::command::CommandError;
use crate::config::Role;
use crate::ids::SubjectId;
use crate::protocol::{CommandName, ReplyResult};

/// `capture.purge` with its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PurgeArgs", into = "PurgeArgs")]
pub struct CapturePurge {
    /// One subject's captures, or all.
    pub target: PurgeTarget,
}

/// The arguments as sent: exactly one of the two.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeArgs {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    subject: Option<SubjectId>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    all: Option<bool>,
}

impl TryFrom<PurgeArgs> for CapturePurge {
    type Error = String;

    fn try_from(args: PurgeArgs) -> Result<Self, Self::Error> {
        let target = match (args.subject, args.all) {
            (Some(subject), None) => PurgeTarget::Subject(subject),
            (None, Some(true)) => PurgeTarget::All,
            _ => return Err(usage()),
        };
        Ok(CapturePurge { target })
    }
}

impl From<CapturePurge> for PurgeArgs {
    fn from(c: CapturePurge) -> Self {
        match c.target {
            PurgeTarget::Subject(subject) => PurgeArgs {
                subject: Some(subject),
                all: None,
            },
            PurgeTarget::All => PurgeArgs {
                subject: None,
                all: Some(true),
            },
        }
    }
}

fn usage() -> String {
    format!(
        "{} needs either {{\"subject\": \"…\"}} or {{\"all\": true}}",
        CommandName::CapturePurge
    )
}

impl CapturePurge {
    /// A purge is applied even when its `iat` is ahead of this device's clock:
    /// it only destroys data.
    pub(super) const EARLY_OK: bool = true;

    pub(super) fn parse(args: &Args) -> Result<CapturePurge, CommandError> {
        args.parse(|sent| {
            if sent.contains_key("subject") && !sent.contains_key("all") {
                subject_problem(CommandName::CapturePurge, sent)
            } else {
                usage()
            }
        })
    }

    pub(super) fn may_sign(role: Role) -> bool {
        role == Role::Fleet
    }

    pub(super) fn subject(&self) -> Option<SubjectId> {
        match &self.target {
            PurgeTarget::Subject(s) => Some(s.clone()),
            PurgeTarget::All => None,
        }
    }

    pub(super) async fn apply(
        self,
        agent: &Agent,
        via: Via,
        now: i64,
    ) -> Result<Applied, ApplyError> {
        let receipt = agent.purge(self.target, now, Some(via)).await?;
        Ok(Applied::result(receipt))
    }

    pub(super) fn describe(result: &ReplyResult) -> String {
        describe_receipt(result)
    }
}
