//! Fleet commands, one file per command (SPEC "Tokens and commands"), in the
//! manner of mini-redis's `cmd/`.
//!
//! Each file owns, for its command: the typed arguments (the `args` claim as
//! a serde struct; unknown names are refused), which key roles may sign it,
//! how it is applied through the [`Agent`], and a one-line description of its
//! result for the fleet tool. This module holds the [`Command`] enum over
//! them, its dispatch keyed by [`CommandName`], and [`apply_command`]: the way
//! from an MQTT payload to the published reply.
//!
//! What every command shares (JWS and claims verification, the replay check,
//! signing) is in [`crate::command`]. The agent knows nothing of commands: a
//! command reaches it as calls of its typed operations, carrying a [`Via`]
//! so the store keeps the command's `jti` and reply with the effect.
//!
//! Adding a command: ARCHITECTURE.md, "Recipes".

mod capture_purge;
mod consent_grant;
mod consent_revoke;
mod status;

use serde::de::{DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::agent::{Agent, ApplyError, Via};
use crate::command::{self, CommandError, CommandSet, Rejected};
use crate::config::Role;
use crate::ids::{Jti, SubjectId};
use crate::protocol::{CommandName, ErrorCode, Receipt, Reply, ReplyResult};

pub use capture_purge::CapturePurge;
pub use consent_grant::ConsentGrant;
pub use consent_revoke::ConsentRevoke;
pub use status::Status;

/// A command with validated arguments. Serializes as its `args` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Command {
    /// `consent.grant`: verify and store a consent token.
    ConsentGrant(ConsentGrant),
    /// `consent.revoke`: void a subject's consents, purge its captures.
    ConsentRevoke(ConsentRevoke),
    /// `capture.purge`: purge captures, keep consents.
    CapturePurge(CapturePurge),
    /// `status`: publish status now.
    Status(Status),
}

impl CommandSet for Command {
    fn may_sign(name: CommandName, role: Role) -> bool {
        match name {
            CommandName::ConsentGrant => ConsentGrant::may_sign(role),
            CommandName::ConsentRevoke => ConsentRevoke::may_sign(role),
            CommandName::CapturePurge => CapturePurge::may_sign(role),
            CommandName::Status => Status::may_sign(role),
        }
    }

    fn early_ok(name: CommandName) -> bool {
        match name {
            CommandName::ConsentGrant => ConsentGrant::EARLY_OK,
            CommandName::ConsentRevoke => ConsentRevoke::EARLY_OK,
            CommandName::CapturePurge => CapturePurge::EARLY_OK,
            CommandName::Status => Status::EARLY_OK,
        }
    }

    fn parse(name: CommandName, args: Option<&Value>) -> Result<Command, CommandError> {
        let args = Args::new(name, args)?;
        Ok(match name {
            CommandName::ConsentGrant => Command::ConsentGrant(ConsentGrant::parse(&args)?),
            CommandName::ConsentRevoke => Command::ConsentRevoke(ConsentRevoke::parse(&args)?),
            CommandName::CapturePurge => Command::CapturePurge(CapturePurge::parse(&args)?),
            CommandName::Status => Command::Status(Status::parse(&args)?),
        })
    }
}

impl Command {
    /// Which command this is.
    pub fn name(&self) -> CommandName {
        match self {
            Command::ConsentGrant(_) => CommandName::ConsentGrant,
            Command::ConsentRevoke(_) => CommandName::ConsentRevoke,
            Command::CapturePurge(_) => CommandName::CapturePurge,
            Command::Status(_) => CommandName::Status,
        }
    }

    /// The command `cmd` with the `args` object, as the fleet tool is given
    /// them: `unknown_command` or `bad_args` up front, before anything is signed.
    pub fn from_parts(cmd: &str, args: &Value) -> Result<Command, CommandError> {
        let name =
            CommandName::parse(cmd).ok_or_else(|| CommandError::UnknownCommand(cmd.to_string()))?;
        <Command as CommandSet>::parse(name, Some(args))
    }

    /// Signs the command for `aud` (a site, or `site/device`), valid for
    /// `lifetime_s` from `now`: `(jti, compact JWS)`.
    pub fn sign(
        &self,
        aud: &str,
        lifetime_s: i64,
        kid: &str,
        pkcs8: &[u8],
        now: i64,
    ) -> Result<(Jti, String), CommandError> {
        command::sign_command(self.name(), self, aud, lifetime_s, kid, pkcs8, now)
    }

    /// Signs the command for `aud` as `stamp` says (its `iat`, `exp` and
    /// site consent-log `seq`): `(jti, compact JWS)`.
    pub fn sign_as(
        &self,
        aud: &str,
        stamp: command::Stamp,
        kid: &str,
        pkcs8: &[u8],
    ) -> Result<(Jti, String), CommandError> {
        command::sign_command_as(self.name(), self, aud, stamp, kid, pkcs8)
    }

    /// The subject the command is about, if it names one: the subject of
    /// the reply it gets (put back into a kept reply, which has none).
    pub fn subject(&self) -> Option<SubjectId> {
        match self {
            Command::ConsentGrant(c) => c.subject(),
            Command::ConsentRevoke(c) => c.subject(),
            Command::CapturePurge(c) => c.subject(),
            Command::Status(c) => c.subject(),
        }
    }

    /// Applies the command through the agent's operations on behalf of `via`.
    async fn apply(self, agent: &Agent, via: Via, now: i64) -> Result<Applied, ApplyError> {
        match self {
            Command::ConsentGrant(c) => c.apply(agent, via, now).await,
            Command::ConsentRevoke(c) => c.apply(agent, via, now).await,
            Command::CapturePurge(c) => c.apply(agent, via, now).await,
            Command::Status(c) => c.apply(agent, via, now).await,
        }
    }

    /// One line about the successful result of a `name` command.
    pub fn describe(name: CommandName, result: &ReplyResult) -> String {
        match name {
            CommandName::ConsentGrant => ConsentGrant::describe(result),
            CommandName::ConsentRevoke => ConsentRevoke::describe(result),
            CommandName::CapturePurge => CapturePurge::describe(result),
            CommandName::Status => Status::describe(result),
        }
    }
}

/// What applying a command produced.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The reply's `result`.
    result: ReplyResult,
    /// Publish a status message after the reply's PUBACK.
    publish_status: bool,
}

impl Applied {
    /// A result and nothing more to do.
    fn result(result: impl Into<ReplyResult>) -> Applied {
        Applied {
            result: result.into(),
            publish_status: false,
        }
    }
}

/// What applying one inbound fleet command produced.
#[derive(Debug)]
pub struct Outcome {
    /// The reply to publish on the reply topic.
    pub reply: Reply,
    /// The command asked for a status message now.
    pub publish_status: bool,
    /// The command is settled: its effect committed, or it was refused for
    /// good (bad signature, expired, replayed, bad arguments, …). False when
    /// its effect failed (`internal`: disk full, store error): the broker must
    /// not get a PUBACK, so that it delivers the command again.
    pub settled: bool,
    /// The command was refused for good: for the caller's log and audit,
    /// which it rate-limits (`uplink::ingress`). `None` when it took effect,
    /// failed (`internal`, logged here) or was a broker redelivery.
    pub refused: Option<Refusal>,
}

/// A command refused for good, as far as it could be read (its `jti` and
/// `cmd` may come from an unverified payload: echo them, never act on them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The payload's `jti`, if it could be read.
    pub jti: Option<Jti>,
    /// The payload's `cmd`, if it could be read.
    pub cmd: Option<String>,
    /// Why.
    pub code: ErrorCode,
    /// Why, for humans.
    pub message: String,
    /// Nothing audited it yet: the caller writes its `command.refused` row
    /// (refused by verification, or a grant whose consent token is refused
    /// by verification). False when the store refused the effect (`revoked`,
    /// `jti_reused`): it audited the refusal and kept the command.
    pub unaudited: bool,
}

impl Outcome {
    /// A reply that settles the command.
    fn reply(reply: Reply) -> Outcome {
        Outcome {
            reply,
            publish_status: false,
            settled: true,
            refused: None,
        }
    }

    /// A reply about an effect that did not commit: the command stays
    /// with the broker.
    fn unsettled(reply: Reply) -> Outcome {
        Outcome {
            reply,
            publish_status: false,
            settled: false,
            refused: None,
        }
    }

    /// The final refusal `reply`.
    fn refused(reply: Reply, refusal: Refusal) -> Outcome {
        Outcome {
            refused: Some(refusal),
            ..Outcome::reply(reply)
        }
    }
}

/// Verifies one fleet command (signature, role, time, audience, replay) and
/// applies it through the agent. The effect, the command's `jti` and its
/// reply commit in one store transaction, and the broker gets its PUBACK
/// only after that, so a command takes effect exactly once: if the daemon
/// dies between the commit and the PUBACK, the broker redelivers the command
/// and it is answered `replayed`, unless it is the broker's redelivery
/// (`redelivered`: MQTT DUP flag): then the reply kept with the effect is
/// published again, its subject put back from the command, so the fleet still
/// gets its receipt. Refused commands are not kept; a refusal is returned in
/// [`Outcome::refused`] for the caller to log and audit. A command whose
/// effect failed (`internal`) is not [`Outcome::settled`]: it gets no PUBACK
/// and comes back from the broker.
pub async fn apply_command(agent: &Agent, payload: &[u8], redelivered: bool, now: i64) -> Outcome {
    let cfg = agent.config();
    let skew = cfg.commands.clock_skew.as_secs() as i64;
    let bytes = payload.to_vec();
    // Expiry is judged at the highest wall time ever trusted when the clock
    // is behind it: a command forgotten by the replay set (a day after its
    // `exp`, by a trusted clock) cannot verify again on a clock that went
    // back (ARCHITECTURE I15).
    let verify_at = agent.clock().high_water().map_or(now, |high| now.max(high));
    let verified = agent
        .db()
        .run(move |s| {
            let store = std::cell::RefCell::new(s);
            // A store error counts as "seen", so nothing takes effect, and
            // is reported as such, so the command is not settled.
            let failed = std::cell::RefCell::new(None);
            let seen = |jti: &Jti| match store.borrow_mut().command_seen(jti) {
                Ok(seen) => seen,
                Err(e) => {
                    *failed.borrow_mut() = Some(e);
                    true
                }
            };
            let verified = command::verify_command::<Command>(
                &bytes,
                &cfg.trust,
                &cfg.identity,
                &cfg.commands,
                verify_at,
                &seen,
            );
            match failed.into_inner() {
                Some(e) => Err(e),
                None => Ok(verified),
            }
        })
        .await;
    let cmd = match verified {
        Err(e) => {
            tracing::warn!(error = %e, "cannot check a fleet command; the broker delivers it again");
            return Outcome::unsettled(Reply::err(None, None, ErrorCode::Internal, e.to_string()));
        }
        // A broker redelivery, or a consent-log entry sent again as it was
        // (same jti): answered with the reply kept from its application.
        Ok(Err(rejected))
            if rejected.error.code() == ErrorCode::Replayed
                && (redelivered || carries_seq(payload)) =>
        {
            if let Some(reply) = kept_reply(agent, &rejected, payload).await {
                tracing::info!(jti = ?rejected.jti, "command redelivered by the broker; its reply is sent again");
                return Outcome::reply(reply);
            }
            return Outcome::reply(rejected.reply());
        }
        Ok(Err(rejected)) => {
            // Logged and audited by the caller, within its rate limit.
            let refusal = Refusal {
                jti: rejected.jti.clone(),
                cmd: rejected.cmd.clone(),
                code: rejected.error.code(),
                message: rejected.error.to_string(),
                unaudited: true,
            };
            return Outcome::refused(rejected.reply(), refusal);
        }
        Ok(Ok(cmd)) => {
            // A verified signed time: may confirm a clock jump (I15).
            agent.clock().signed_time(cmd.issued_at, now);
            cmd
        }
    };
    if cmd.issued_at > now.saturating_add(skew) {
        // Only a take-away gets here (`early_ok`), or a command issued
        // before the highest trusted time while the clock is behind it.
        tracing::warn!(jti = %cmd.jti, cmd = %cmd.name, iat = cmd.issued_at, now,
            "command issued ahead of this device's clock: applied; check the clock (facegate doctor)");
    }
    let via = Via {
        jti: cmd.jti,
        cmd: cmd.name,
        issued_at: cmd.issued_at,
        expires_at: cmd.expires_at,
        seq: cmd.seq,
    };
    if let Some(seq) = cmd.seq {
        // SPEC "Site consent log": an entry applied before (sent again with
        // a new jti) is acknowledged and answered ok, without a second effect.
        match agent.consent_seq_applied(seq).await {
            Ok(false) => {}
            Ok(true) => {
                return match agent.answer_applied_before(via.clone(), seq, now).await {
                    Ok(answer) => Outcome::reply(via.ok(answer.into())),
                    Err(e) => {
                        tracing::error!(jti = %via.jti, %seq, error = %e,
                            "cannot answer a consent-log entry; the broker delivers it again");
                        Outcome::unsettled(via.refused(ErrorCode::Internal, e.to_string()))
                    }
                };
            }
            Err(e) => {
                tracing::error!(jti = %via.jti, %seq, error = %e,
                    "cannot read the consent-log applied set; the broker delivers the entry again");
                return Outcome::unsettled(via.refused(ErrorCode::Internal, e.to_string()));
            }
        }
    }
    match cmd.command.apply(agent, via.clone(), now).await {
        Ok(applied) => Outcome {
            reply: via.ok(applied.result),
            publish_status: applied.publish_status,
            settled: true,
            refused: None,
        },
        Err(e) if e.code() == ErrorCode::Internal => {
            tracing::error!(jti = %via.jti, cmd = %via.cmd, error = %e,
                "fleet command failed; not acknowledged, the broker delivers it again");
            Outcome::unsettled(via.refused(e.code(), e.to_string()))
        }
        Err(e) => {
            if let (Some(seq), ApplyError::Consent(_)) = (via.seq, &e) {
                // The entry's consent token is refused for good (expired,
                // say): sending it again changes nothing, so it counts as
                // applied and does not hold the site consent log.
                if let Err(err) = agent.settle_consent_seq(seq, now).await {
                    tracing::error!(%seq, error = %err, "cannot record a refused consent-log entry");
                }
            }
            let refusal = Refusal {
                jti: Some(via.jti.clone()),
                cmd: Some(via.cmd.as_str().to_string()),
                code: e.code(),
                message: e.to_string(),
                // A consent refused by verification is left to the caller
                // (`Agent::grant`); the store's own refusals (`revoked`,
                // `jti_reused`) are audited and the command kept.
                unaudited: matches!(e, ApplyError::Consent(_)),
            };
            Outcome::refused(via.refused(e.code(), e.to_string()), refusal)
        }
    }
}

/// The reply kept for an applied command, if any, with its subject put back
/// from the command itself (`payload` passed signature verification before
/// it could be found `replayed`).
async fn kept_reply(agent: &Agent, rejected: &Rejected, payload: &[u8]) -> Option<Reply> {
    let kept = agent.kept_reply(rejected.jti.clone()?).await.ok()??;
    let claims = std::str::from_utf8(payload)
        .ok()
        .and_then(crate::jws::peek_claims)?;
    let name = claims
        .get("cmd")
        .and_then(Value::as_str)
        .and_then(CommandName::parse)?;
    let command = <Command as CommandSet>::parse(name, claims.get("args")).ok()?;
    Some(kept.with_subject(command.subject()))
}

/// Whether a (verified) payload carries a consent-log `seq` claim.
fn carries_seq(payload: &[u8]) -> bool {
    std::str::from_utf8(payload)
        .ok()
        .and_then(crate::jws::peek_claims)
        .is_some_and(|c| c.get("seq").is_some())
}

/// The `args` claim of one command, on its way to the command's typed
/// struct: an object (absent counts as `{}`).
pub(crate) struct Args {
    name: CommandName,
    map: Map<String, Value>,
}

impl Args {
    fn new(name: CommandName, args: Option<&Value>) -> Result<Args, CommandError> {
        let map = match args {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(CommandError::BadArgs("args must be an object".into())),
        };
        Ok(Args { name, map })
    }

    /// The arguments as `T`. A name that is not one of `T`'s fields is
    /// refused (so a typo never widens an effect); when they do not make a
    /// `T`, `problem` says why, looking at what was sent.
    fn parse<T: DeserializeOwned>(
        &self,
        problem: impl FnOnce(&Map<String, Value>) -> String,
    ) -> Result<T, CommandError> {
        let fields = field_names::<T>();
        if let Some(k) = self.map.keys().find(|k| !fields.contains(&k.as_str())) {
            return Err(CommandError::BadArgs(format!(
                "unexpected argument {k:?} for {}",
                self.name
            )));
        }
        T::deserialize(Value::Object(self.map.clone()))
            .map_err(|_| CommandError::BadArgs(problem(&self.map)))
    }
}

/// Why a `subject` argument is not usable, for commands that need one.
fn subject_problem(name: CommandName, args: &Map<String, Value>) -> String {
    if args.contains_key("subject") {
        format!("subject must match {}", SubjectId::PATTERN)
    } else {
        format!("{name} needs a subject")
    }
}

/// For `#[serde(deserialize_with)]` on an optional argument: absent is
/// `None` (with `#[serde(default)]`), but a given value must be a valid `T`
/// (`null` included: it is not "absent").
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The one-line description of a purge receipt.
fn describe_receipt(result: &ReplyResult) -> String {
    match result {
        ReplyResult::Receipt(Receipt {
            subject,
            purged,
            in_flight,
            consents_remaining,
            ..
        }) => format!(
            "purged {purged} capture(s){}, in flight {}{}",
            subject
                .as_ref()
                .map(|s| format!(" of {}", s.as_str()))
                .unwrap_or_default(),
            in_flight.len(),
            match consents_remaining {
                Some(n) if *n > 0 => format!(", {n} newer consent(s) remain"),
                _ => String::new(),
            }
        ),
        other => describe_other(other),
    }
}

/// A result of an unexpected shape, as JSON.
fn describe_other(result: &ReplyResult) -> String {
    serde_json::to_string(result).unwrap_or_default()
}

/// The field names `T`'s serde derive accepts, read from the derive itself
/// (it hands them to `deserialize_struct`), so a command's struct is the one
/// list of its argument names. Empty for types that are not structs.
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    /// A deserializer that only records the field list it is asked for.
    struct Probe;

    #[derive(Debug)]
    enum Found {
        Fields(&'static [&'static str]),
        Nothing,
    }

    impl std::fmt::Display for Found {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field probe")
        }
    }

    impl std::error::Error for Found {}

    impl serde::de::Error for Found {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Found::Nothing
        }
    }

    impl<'de> Deserializer<'de> for Probe {
        type Error = Found;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(Found::Nothing)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Found> {
            Err(Found::Fields(fields))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    match T::deserialize(Probe) {
        Err(Found::Fields(fields)) => fields,
        _ => &[],
    }
}

#[cfg(test)]
mod tests;
