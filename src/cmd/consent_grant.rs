//! `consent.grant {"token": "<consent JWS>"}`: verify a consent token and
//! store it. Signed by a `fleet` key; the token inside is verified on its own
//! (signed by a `consent` key, addressed to this device, in time). The result
//! is [`Granted`].

use serde::{Deserialize, Serialize};

use super::{describe_other, Applied, Args};
use crate::agent::{Agent, ApplyError, Via};
use crate::command::CommandError;
use crate::config::Role;
use crate::consent::MAX_TOKEN_BYTES;
use crate::ids::SubjectId;
use crate::protocol::{CommandName, Granted, ReplyResult};

/// `consent.grant` with its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentGrant {
    /// The consent JWS, verified when the command is applied.
    pub token: String,
}

impl ConsentGrant {
    /// A grant adds a consent: one issued ahead of this device's clock waits
    /// (`not_yet_valid`), like any command that is not a take-away.
    pub(super) const EARLY_OK: bool = false;

    pub(super) fn parse(args: &Args) -> Result<ConsentGrant, CommandError> {
        let usage = || {
            format!(
                "{} needs a token string of 1..={MAX_TOKEN_BYTES} bytes",
                CommandName::ConsentGrant
            )
        };
        let grant: ConsentGrant = args.parse(|_| usage())?;
        if grant.token.is_empty() || grant.token.len() > MAX_TOKEN_BYTES {
            return Err(CommandError::BadArgs(usage()));
        }
        Ok(grant)
    }

    pub(super) fn may_sign(role: Role) -> bool {
        role == Role::Fleet
    }

    /// The token's subject, read without verifying it: only to put the
    /// subject back into a kept reply of this (verified) command.
    pub(super) fn subject(&self) -> Option<SubjectId> {
        let claims = crate::jws::peek_claims(&self.token)?;
        SubjectId::new(claims.get("sub")?.as_str()?).ok()
    }

    pub(super) async fn apply(
        self,
        agent: &Agent,
        via: Via,
        now: i64,
    ) -> Result<Applied, ApplyError> {
        let granted = agent.grant(self.token, now, Some(via)).await?;
        Ok(Applied::result(granted))
    }

    pub(super) fn describe(result: &ReplyResult) -> String {
        match result {
            ReplyResult::Granted(Granted {
                consent_id,
                subject,
                expires_at,
                ..
            }) => format!(
                "consent {consent_id} for {} until {}",
                subject.as_ref().map(SubjectId::as_str).unwrap_or("?"),
                crate::clock::rfc3339(*expires_at)
            ),
            other => describe_other(other),
        }
    }
}
