//! `consent.revoke {"subject": "…"}`: invalidate every consent of the subject
//! issued at or before the command's `iat` and purge all of its captures. A
//! `consent` key may sign it as well as a `fleet` key. The result is the
//! purge [`Receipt`](crate::protocol::Receipt).

use serde::{Deserialize, Serialize};

use super::{describe_receipt, subject_problem, Applied, Args};
use crate::agent::{Agent, ApplyError, Via};
use crate::command::CommandError;
use crate::config::Role;
use crate::ids::SubjectId;
use crate::protocol::{CommandName, ReplyResult};

/// `consent.revoke` with its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRevoke {
    /// Whose consents end.
    pub subject: SubjectId,
}

impl ConsentRevoke {
    /// A revocation is applied even when its `iat` is ahead of this device's
    /// clock: a lagging clock must not keep a withdrawn consent alive. Its
    /// tombstone is still its `iat` (SPEC: it covers consents issued at or
    /// before it), so consents issued up to then on the signer's clock are refused.
    pub(super) const EARLY_OK: bool = true;

    pub(super) fn parse(args: &Args) -> Result<ConsentRevoke, CommandError> {
        args.parse(|sent| subject_problem(CommandName::ConsentRevoke, sent))
    }

    pub(super) fn may_sign(role: Role) -> bool {
        matches!(role, Role::Consent | Role::Fleet)
    }

    pub(super) fn subject(&self) -> Option<SubjectId> {
        Some(self.subject.clone())
    }

    pub(super) async fn apply(
        self,
        agent: &Agent,
        via: Via,
        now: i64,
    ) -> Result<Applied, ApplyError> {
        // A revocation covers consents issued at or before the command.
        let before = via.issued_at;
        let receipt = agent.revoke(self.subject, before, now, Some(via)).await?;
        Ok(Applied::result(receipt))
    }

    pub(super) fn describe(result: &ReplyResult) -> String {
        describe_receipt(result)
    }
}
