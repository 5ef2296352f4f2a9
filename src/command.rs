//! Signed fleet commands (SPEC invariant 6): what is common to every command.
//! Verification is a pure function of the payload, trusted keys, identity,
//! policy, `now` and the replay set; signing is for the fleet tool. What each
//! command accepts, who may sign it and what it does is its own file in
//! [`crate::cmd`], reached through the [`CommandSet`] trait.
//!
//! Checks run in this order, so an unsigned or forged payload never reaches the
//! replay set or any effect: size → parse → key → signature → role → time →
//! audience → replay → cmd/args.
//!
//! Time rules (all in whole seconds, `skew` = `[commands] clock_skew`):
//! - `exp <= iat` → `malformed`;
//! - `exp - iat > max_lifetime` → `lifetime_too_long`;
//! - `iat > now + skew` → `not_yet_valid`, unless the command only takes
//!   data away ([`CommandSet::early_ok`]: `consent.revoke`, `capture.purge`):
//!   a device whose clock lags must still stop and delete, so for those a
//!   future `iat` is no reason to refuse (signature, role, audience, lifetime,
//!   expiry and replay are checked all the same);
//! - `now >= exp + skew` → `expired`.
//!
//! The replay set must therefore remember a `jti` until at least its `exp + skew`.
//! `consent.grant` carries a consent token that this module does NOT verify: the
//! caller runs [`crate::consent::verify_consent`] on it as the command's effect.

use serde::Serialize;
use serde_json::Value;

use crate::config::{CommandConfig, Identity, Role, TrustedKey};
use crate::ids::{Jti, Seq};
use crate::jws::{self, JwsError};
use crate::protocol::{CommandName, ErrorCode, Reply};

/// The commands a device knows, as the verification sees them: which key
/// roles may sign each, and how its `args` claim becomes a typed command.
/// Implemented by [`crate::cmd::Command`], one file per command.
pub trait CommandSet: Sized {
    /// Whether a key of `role` may sign the command `name`.
    fn may_sign(name: CommandName, role: Role) -> bool;

    /// Whether the command `name` is applied even when its `iat` is ahead of
    /// this device's clock by more than the skew. True only for commands
    /// that take data away (revocations, purges): refusing them would fail
    /// open on a device whose clock lags.
    fn early_ok(name: CommandName) -> bool;

    /// The command `name` with its `args` claim (`None` when the claim is
    /// absent, which counts as `{}`); [`CommandError::BadArgs`] when they do
    /// not fit.
    fn parse(name: CommandName, args: Option<&Value>) -> Result<Self, CommandError>;
}

/// A command that passed every check and may take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCommand<C> {
    /// Command id: echoed in the reply, recorded in the replay set.
    pub jti: Jti,
    /// Which command it is.
    pub name: CommandName,
    /// `iat`: a revocation covers consents issued at or before it.
    pub issued_at: i64,
    /// `exp`: the replay set must keep `jti` until `exp + skew`.
    pub expires_at: i64,
    /// The signing key, for the audit log.
    pub kid: String,
    /// The site consent-log position (`seq` claim), on a `consent.grant` or
    /// `consent.revoke` addressed to the whole site.
    pub seq: Option<Seq>,
    /// What to do, with validated arguments.
    pub command: C,
}

/// Why a command was refused. [`CommandError::code`] is the reply's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The signature does not verify under the named trusted key.
    #[error("signature does not verify under the key named by kid")]
    BadSignature,
    /// The header `kid` is not a trusted key.
    #[error("kid {0:?} is not a trusted key")]
    UnknownKey(String),
    /// The key's role may not sign this command.
    #[error("key {kid:?} may not sign {cmd:?}")]
    WrongRole {
        /// The signing key.
        kid: String,
        /// The command it tried to sign.
        cmd: String,
    },
    /// `now >= exp + skew`.
    #[error("command expired at {exp} (now {now}, skew {skew} s)")]
    Expired {
        /// The command's `exp`.
        exp: i64,
        /// Tolerated clock skew.
        skew: i64,
        /// Time of the check.
        now: i64,
    },
    /// `iat > now + skew`.
    #[error("command issued at {iat}, in the future (now {now})")]
    NotYetValid {
        /// The command's `iat`.
        iat: i64,
        /// Time of the check.
        now: i64,
    },
    /// `exp - iat` exceeds `[commands] max_lifetime`.
    #[error("command lifetime {lifetime} s exceeds the allowed {max} s")]
    LifetimeTooLong {
        /// `exp - iat`.
        lifetime: i64,
        /// The configured maximum.
        max: i64,
    },
    /// `aud` names neither this site nor this device.
    #[error("command addressed to {0:?}, not to this site or device")]
    WrongAudience(Vec<String>),
    /// This `jti` was already executed.
    #[error("command {0:?} was already executed")]
    Replayed(String),
    /// Not a well-formed command JWS, or a required claim is missing or mistyped.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// `cmd` is not one this device knows.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// The payload exceeds `[commands] max_bytes`.
    #[error("command is {size} bytes, at most {max} accepted")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// `args` do not fit the command.
    #[error("bad arguments: {0}")]
    BadArgs(String),
    /// The fleet tool's key cannot sign.
    #[error("cannot sign command: {0}")]
    Signing(String),
}

impl CommandError {
    /// Stable machine-readable code used in replies.
    pub fn code(&self) -> ErrorCode {
        match self {
            CommandError::BadSignature => ErrorCode::BadSignature,
            CommandError::UnknownKey(_) => ErrorCode::UnknownKey,
            CommandError::WrongRole { .. } => ErrorCode::WrongRole,
            CommandError::Expired { .. } => ErrorCode::Expired,
            CommandError::NotYetValid { .. } => ErrorCode::NotYetValid,
            CommandError::LifetimeTooLong { .. } => ErrorCode::LifetimeTooLong,
            CommandError::WrongAudience(_) => ErrorCode::WrongAudience,
            CommandError::Replayed(_) => ErrorCode::Replayed,
            CommandError::Malformed(_) => ErrorCode::Malformed,
            CommandError::UnknownCommand(_) => ErrorCode::UnknownCommand,
            CommandError::TooLarge { .. } => ErrorCode::TooLarge,
            CommandError::BadArgs(_) => ErrorCode::BadArgs,
            CommandError::Signing(_) => ErrorCode::SigningFailed,
        }
    }
}

impl From<JwsError> for CommandError {
    fn from(e: JwsError) -> Self {
        match e {
            JwsError::Malformed(m) => CommandError::Malformed(m),
            JwsError::UnknownKey(k) => CommandError::UnknownKey(k),
            JwsError::BadSignature => CommandError::BadSignature,
            JwsError::BadSigningKey(m) => CommandError::Signing(m),
        }
    }
}

/// A refused command, with whatever `jti`/`cmd` could be read for the reply.
/// These may come from an unverified payload: echo them, never act on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The payload's `jti`, if it could be read.
    pub jti: Option<Jti>,
    /// The payload's `cmd`, if it could be read.
    pub cmd: Option<String>,
    /// Why it was refused.
    pub error: CommandError,
}

impl Rejected {
    /// The reply for this rejection.
    pub fn reply(&self) -> Reply {
        Reply::err(
            self.jti.as_ref(),
            self.cmd.as_deref(),
            self.error.code(),
            self.error.to_string(),
        )
    }
}

/// Verifies a command payload as received from MQTT. `seen(jti)` tells
/// whether that command id was already executed; it is only called for
/// commands that are validly signed, of the right role, in time and addressed
/// to this device.
pub fn verify_command<C: CommandSet>(
    payload: &[u8],
    trust: &[TrustedKey],
    me: &Identity,
    policy: &CommandConfig,
    now: i64,
    seen: &dyn Fn(&Jti) -> bool,
) -> Result<VerifiedCommand<C>, Rejected> {
    let reject = |jti: Option<Jti>, cmd: Option<String>, error| Rejected { jti, cmd, error };
    if payload.len() > policy.max_bytes {
        let error = CommandError::TooLarge {
            size: payload.len(),
            max: policy.max_bytes,
        };
        return Err(reject(None, None, error));
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        let error = CommandError::Malformed("payload is not UTF-8".into());
        return Err(reject(None, None, error));
    };
    // Unverified, for the reply only.
    let peeked = jws::peek_claims(text);
    let peek = |name: &str| {
        peeked
            .as_ref()
            .and_then(|c| c.get(name))
            .and_then(Value::as_str)
            .filter(|s| jws::valid_id(s))
            .map(str::to_string)
    };
    let (jti, cmd) = (peek("jti").map(Jti::from), peek("cmd"));
    let fail = |error| reject(jti.clone(), cmd.clone(), error);

    let verified = jws::verify(text, trust).map_err(|e| fail(e.into()))?;
    check_claims(verified, me, policy, now, seen).map_err(fail)
}

/// Everything after the signature: role, time, audience, replay, cmd/args.
fn check_claims<C: CommandSet>(
    verified: jws::Verified,
    me: &Identity,
    policy: &CommandConfig,
    now: i64,
    seen: &dyn Fn(&Jti) -> bool,
) -> Result<VerifiedCommand<C>, CommandError> {
    let c = &verified.claims;
    let cmd_name = jws::str_claim(c, "cmd").map_err(CommandError::Malformed)?;
    let jti = jws::str_claim(c, "jti").map_err(CommandError::Malformed)?;
    if !jws::valid_id(jti) {
        return Err(CommandError::Malformed(
            "claim jti must be 1..=128 printable characters".into(),
        ));
    }
    let jti = Jti::from(jti);
    let iat = jws::int_claim(c, "iat").map_err(CommandError::Malformed)?;
    let exp = jws::int_claim(c, "exp").map_err(CommandError::Malformed)?;

    // An unknown command needs a fleet key like most; it is refused as
    // unknown only after the replay check, like a bad `args`.
    let name = CommandName::parse(cmd_name);
    let role_ok = match name {
        Some(name) => C::may_sign(name, verified.role),
        None => verified.role == Role::Fleet,
    };
    if !role_ok {
        return Err(CommandError::WrongRole {
            kid: verified.kid,
            cmd: cmd_name.to_string(),
        });
    }

    let skew = secs(policy.clock_skew);
    let max = secs(policy.max_lifetime);
    if exp <= iat {
        return Err(CommandError::Malformed(format!(
            "claim exp ({exp}) is not after iat ({iat})"
        )));
    }
    let lifetime = exp.saturating_sub(iat);
    if lifetime > max {
        return Err(CommandError::LifetimeTooLong { lifetime, max });
    }
    let early_ok = name.is_some_and(C::early_ok);
    if iat > now.saturating_add(skew) && !early_ok {
        return Err(CommandError::NotYetValid { iat, now });
    }
    if now >= exp.saturating_add(skew) {
        return Err(CommandError::Expired { exp, skew, now });
    }

    let aud = jws::audience(c).map_err(CommandError::Malformed)?;
    if !jws::audience_matches(&aud, me) {
        return Err(CommandError::WrongAudience(aud));
    }
    if seen(&jti) {
        return Err(CommandError::Replayed(jti.to_string()));
    }
    let name = name.ok_or_else(|| CommandError::UnknownCommand(cmd_name.to_string()))?;
    let seq = log_seq(c, name, &aud, me)?;
    let command = C::parse(name, c.get("args"))?;
    Ok(VerifiedCommand {
        jti,
        name,
        issued_at: iat,
        expires_at: exp,
        kid: verified.kid,
        seq,
        command,
    })
}

/// The optional `seq` claim (SPEC "Site consent log"): a positive integer,
/// only on `consent.grant` / `consent.revoke` addressed to this site (`aud`
/// = the site id, or this device of it when an entry is sent again to one
/// device; no other site or device).
fn log_seq(
    c: &Value,
    name: CommandName,
    aud: &[String],
    me: &Identity,
) -> Result<Option<Seq>, CommandError> {
    let Some(n) = jws::opt_int_claim(c, "seq").map_err(CommandError::Malformed)? else {
        return Ok(None);
    };
    if n < 1 {
        return Err(CommandError::Malformed(format!(
            "claim seq must be a positive integer, got {n}"
        )));
    }
    if !matches!(name, CommandName::ConsentGrant | CommandName::ConsentRevoke) {
        return Err(CommandError::Malformed(format!(
            "claim seq is only for consent.grant and consent.revoke, not {name}"
        )));
    }
    // Sent to the whole site; an entry sent again to one device of it (a
    // back-end filling that device's gap) may name the device.
    let device = format!("{}/{}", me.site_id, me.device_id);
    if !aud.iter().all(|a| *a == me.site_id || *a == device) {
        return Err(CommandError::Malformed(
            "claim seq is only for commands addressed to this site (aud = the site id)".into(),
        ));
    }
    Ok(u64::try_from(n).ok().map(Seq::new))
}

/// Whole seconds of a config duration as i64.
fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The claims of a command the fleet tool signs.
#[derive(Serialize)]
struct Claims<'a, A: Serialize> {
    jti: &'a Jti,
    iat: i64,
    exp: i64,
    aud: &'a str,
    cmd: CommandName,
    args: &'a A,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<Seq>,
}

/// When a signed command is valid and where it sits in the site consent log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// `iat`.
    pub iat: i64,
    /// `exp` (after `iat`).
    pub exp: i64,
    /// The site consent-log `seq`, if any.
    pub seq: Option<Seq>,
}

/// Signs the command `name` with its typed `args` for the fleet tool:
/// `iat = now`, `exp = now + lifetime_s`, a random UUID `jti`.
/// Returns `(jti, jws)`.
pub fn sign_command<A: Serialize>(
    name: CommandName,
    args: &A,
    aud: &str,
    lifetime_s: i64,
    kid: &str,
    pkcs8: &[u8],
    now: i64,
) -> Result<(Jti, String), CommandError> {
    let exp = match now.checked_add(lifetime_s) {
        Some(exp) if lifetime_s > 0 => exp,
        _ => return Err(CommandError::Malformed("lifetime must be positive".into())),
    };
    let stamp = Stamp {
        iat: now,
        exp,
        seq: None,
    };
    sign_command_as(name, args, aud, stamp, kid, pkcs8)
}

/// Signs the command `name` with its typed `args`, valid as `stamp` says,
/// with a random UUID `jti`. Returns `(jti, jws)`.
pub fn sign_command_as<A: Serialize>(
    name: CommandName,
    args: &A,
    aud: &str,
    stamp: Stamp,
    kid: &str,
    pkcs8: &[u8],
) -> Result<(Jti, String), CommandError> {
    if aud.is_empty() {
        return Err(CommandError::Malformed("audience is empty".into()));
    }
    if stamp.exp <= stamp.iat {
        return Err(CommandError::Malformed("lifetime must be positive".into()));
    }
    let jti = Jti::from(uuid::Uuid::new_v4().to_string());
    let claims = Claims {
        jti: &jti,
        iat: stamp.iat,
        exp: stamp.exp,
        aud,
        cmd: name,
        args,
        seq: stamp.seq,
    };
    let token = jws::sign(&claims, kid, pkcs8)?;
    Ok((jti, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::PurgeTarget;
    use crate::cmd::{self, CapturePurge, Command, ConsentGrant, ConsentRevoke};
    use crate::ids::SubjectId;
    use crate::jws::testkit::*;
    use serde_json::json;
    use std::cell::Cell;
    use std::time::Duration;

    const NOW: i64 = 1_800_000_000;
    const SKEW: i64 = 60;
    const DAY: i64 = 86_400;

    fn policy() -> CommandConfig {
        CommandConfig {
            max_lifetime: Duration::from_secs(DAY as u64),
            clock_skew: Duration::from_secs(SKEW as u64),
            max_bytes: 4096,
        }
    }

    struct Keys {
        fleet: Vec<u8>,
        consent: Vec<u8>,
        stranger: Vec<u8>,
        trust: Vec<TrustedKey>,
    }

    fn keys() -> Keys {
        let (fleet, fpk) = keypair();
        let (consent, cpk) = keypair();
        let (stranger, _) = keypair();
        Keys {
            fleet,
            consent,
            stranger,
            trust: vec![
                trusted("fleet-1", Role::Fleet, fpk),
                trusted("consent-1", Role::Consent, cpk),
            ],
        }
    }

    /// A valid `status` command at NOW; tests change one claim.
    fn claims() -> Value {
        json!({"jti": "cmd-1", "iat": NOW - 10, "exp": NOW + 300, "aud": "lobby",
               "cmd": "status", "args": {}})
    }

    fn with(f: impl FnOnce(&mut Value)) -> Value {
        let mut c = claims();
        f(&mut c);
        c
    }

    fn signed(c: &Value, kid: &str, key: &[u8]) -> Vec<u8> {
        jws::sign(c, kid, key).unwrap().into_bytes()
    }

    fn run(k: &Keys, payload: &[u8], now: i64) -> Result<VerifiedCommand<Command>, Rejected> {
        verify_command(payload, &k.trust, &me(), &policy(), now, &|j| *j == "old")
    }

    fn sid(s: &str) -> SubjectId {
        SubjectId::new(s).unwrap()
    }

    #[test]
    fn accepts_each_command() {
        let k = keys();
        let cases: Vec<(Value, Command)> = vec![
            (
                json!({"cmd": "status", "args": {}}),
                Command::Status(cmd::Status {}),
            ),
            (json!({"cmd": "status"}), Command::Status(cmd::Status {})),
            (
                json!({"cmd": "consent.grant", "args": {"token": "a.b.c"}}),
                Command::ConsentGrant(ConsentGrant {
                    token: "a.b.c".into(),
                }),
            ),
            (
                json!({"cmd": "consent.revoke", "args": {"subject": "S-1"}}),
                Command::ConsentRevoke(ConsentRevoke {
                    subject: sid("S-1"),
                }),
            ),
            (
                json!({"cmd": "capture.purge", "args": {"subject": "S-1"}}),
                Command::CapturePurge(CapturePurge {
                    target: PurgeTarget::Subject(sid("S-1")),
                }),
            ),
            (
                json!({"cmd": "capture.purge", "args": {"all": true}}),
                Command::CapturePurge(CapturePurge {
                    target: PurgeTarget::All,
                }),
            ),
        ];
        for (patch, want) in cases {
            let c = with(|c| {
                let obj = c.as_object_mut().unwrap();
                obj.remove("args");
                for (key, v) in patch.as_object().unwrap() {
                    obj.insert(key.clone(), v.clone());
                }
            });
            let v = run(&k, &signed(&c, "fleet-1", &k.fleet), NOW).unwrap();
            assert_eq!(v.command, want);
            assert_eq!(v.jti, "cmd-1");
            assert_eq!(v.name.as_str(), c["cmd"].as_str().unwrap());
            assert_eq!(v.command.name(), v.name);
            assert_eq!((v.issued_at, v.expires_at), (NOW - 10, NOW + 300));
            assert_eq!(v.kid, "fleet-1");
        }
        // A consent key may sign a revocation.
        let revoke = with(|c| {
            c["cmd"] = json!("consent.revoke");
            c["args"] = json!({"subject": "S-1"});
        });
        assert!(run(&k, &signed(&revoke, "consent-1", &k.consent), NOW).is_ok());
    }

    /// A command issued ahead of the device clock (beyond the skew): only
    /// revocations and purges are applied, everything else still checked.
    #[test]
    fn take_aways_issued_in_the_future_are_applied() {
        let k = keys();
        let far = NOW + 3 * 3600;
        let future = |cmd: &str, args: Value| {
            with(|c| {
                c["cmd"] = json!(cmd);
                c["args"] = args;
                c["iat"] = json!(far);
                c["exp"] = json!(far + 300);
            })
        };
        let subject = json!({"subject": "S-1"});
        let revoke = future("consent.revoke", subject.clone());
        let v = run(&k, &signed(&revoke, "fleet-1", &k.fleet), NOW).unwrap();
        assert_eq!(v.issued_at, far, "the revocation keeps its iat");
        assert!(run(&k, &signed(&revoke, "consent-1", &k.consent), NOW).is_ok());
        let purge = future("capture.purge", subject.clone());
        assert!(run(&k, &signed(&purge, "fleet-1", &k.fleet), NOW).is_ok());
        let purge_all = future("capture.purge", json!({"all": true}));
        assert!(run(&k, &signed(&purge_all, "fleet-1", &k.fleet), NOW).is_ok());

        let code = |c: &Value, kid: &str, key: &[u8], now: i64| {
            run(&k, &signed(c, kid, key), now)
                .unwrap_err()
                .error
                .code()
                .as_str()
                .to_string()
        };
        let grant = future("consent.grant", json!({"token": "a.b.c"}));
        assert_eq!(code(&grant, "fleet-1", &k.fleet, NOW), "not_yet_valid");
        assert_eq!(
            code(&future("status", json!({})), "fleet-1", &k.fleet, NOW),
            "not_yet_valid"
        );
        let unknown = future("format.disk", json!({}));
        assert_eq!(code(&unknown, "fleet-1", &k.fleet, NOW), "not_yet_valid");
        // The other checks still hold for a future revocation.
        assert_eq!(code(&revoke, "fleet-1", &k.stranger, NOW), "bad_signature");
        let purge_by_consent_key = signed(&purge, "consent-1", &k.consent);
        assert_eq!(
            run(&k, &purge_by_consent_key, NOW)
                .unwrap_err()
                .error
                .code()
                .as_str()
                .to_string(),
            "wrong_role"
        );
        let long = with(|c| {
            c["cmd"] = json!("consent.revoke");
            c["args"] = subject.clone();
            c["iat"] = json!(far);
            c["exp"] = json!(far + DAY + 1);
        });
        assert_eq!(code(&long, "fleet-1", &k.fleet, NOW), "lifetime_too_long");
        let elsewhere = with(|c| {
            c["cmd"] = json!("consent.revoke");
            c["args"] = subject.clone();
            c["iat"] = json!(far);
            c["exp"] = json!(far + 300);
            c["aud"] = json!("hall");
        });
        assert_eq!(code(&elsewhere, "fleet-1", &k.fleet, NOW), "wrong_audience");
        assert_eq!(
            code(&revoke, "fleet-1", &k.fleet, far + 300 + SKEW),
            "expired"
        );
        let replayed = with(|c| {
            c["cmd"] = json!("consent.revoke");
            c["args"] = subject.clone();
            c["jti"] = json!("old");
            c["iat"] = json!(far);
            c["exp"] = json!(far + 300);
        });
        assert_eq!(code(&replayed, "fleet-1", &k.fleet, NOW), "replayed");
    }

    /// `seq` (SPEC "Site consent log"): read on site-wide grants and
    /// revocations, refused `malformed` anywhere else or when not a
    /// positive integer.
    #[test]
    fn the_consent_log_seq_claim() {
        let k = keys();
        let entry = |cmd: &str, args: Value, aud: Value, seq: Value| {
            with(|c| {
                c["cmd"] = json!(cmd);
                c["args"] = args;
                c["aud"] = aud;
                c["seq"] = seq;
            })
        };
        let revoke = || json!({"subject": "S-1"});
        let grant = || json!({"token": "a.b.c"});
        let ok: Vec<(Value, u64)> = vec![
            (
                entry("consent.revoke", revoke(), json!("lobby"), json!(3)),
                3,
            ),
            (entry("consent.grant", grant(), json!("lobby"), json!(1)), 1),
            (
                entry("consent.grant", grant(), json!(["lobby"]), json!(7)),
                7,
            ),
            (
                entry("consent.revoke", revoke(), json!("lobby/term-01"), json!(4)),
                4,
            ),
            (
                entry(
                    "consent.revoke",
                    revoke(),
                    json!(["lobby", "lobby/term-01"]),
                    json!(5),
                ),
                5,
            ),
        ];
        for (c, seq) in ok {
            let v = run(&k, &signed(&c, "fleet-1", &k.fleet), NOW).unwrap();
            assert_eq!(v.seq, Some(Seq::new(seq)), "{c}");
        }
        let by_consent_key = entry("consent.revoke", revoke(), json!("lobby"), json!(2));
        let v = run(&k, &signed(&by_consent_key, "consent-1", &k.consent), NOW).unwrap();
        assert_eq!(v.seq, Some(Seq::new(2)));
        assert_eq!(
            run(&k, &signed(&claims(), "fleet-1", &k.fleet), NOW)
                .unwrap()
                .seq,
            None
        );
        let bad: Vec<(&str, Value)> = vec![
            (
                "zero",
                entry("consent.revoke", revoke(), json!("lobby"), json!(0)),
            ),
            (
                "negative",
                entry("consent.revoke", revoke(), json!("lobby"), json!(-1)),
            ),
            (
                "text",
                entry("consent.revoke", revoke(), json!("lobby"), json!("3")),
            ),
            (
                "float",
                entry("consent.revoke", revoke(), json!("lobby"), json!(1.5)),
            ),
            (
                "status",
                entry("status", json!({}), json!("lobby"), json!(1)),
            ),
            (
                "purge",
                entry("capture.purge", revoke(), json!("lobby"), json!(1)),
            ),
            (
                "another site too",
                entry(
                    "consent.revoke",
                    revoke(),
                    json!(["lobby", "hall"]),
                    json!(1),
                ),
            ),
            (
                "another device too",
                entry(
                    "consent.revoke",
                    revoke(),
                    json!(["lobby", "lobby/term-02"]),
                    json!(1),
                ),
            ),
        ];
        for (name, c) in bad {
            let e = run(&k, &signed(&c, "fleet-1", &k.fleet), NOW).unwrap_err();
            assert_eq!(
                e.error.code().as_str(),
                "malformed",
                "{name}: {:?}",
                e.error
            );
        }
        // Another site's entry is wrong_audience before anything else.
        let other = entry("consent.revoke", revoke(), json!("hall"), json!(1));
        let e = run(&k, &signed(&other, "fleet-1", &k.fleet), NOW).unwrap_err();
        assert_eq!(e.error.code().as_str(), "wrong_audience");
    }

    #[test]
    fn boundaries_accepted() {
        let k = keys();
        let cases: Vec<(&str, Value, i64)> = vec![
            (
                "one second before exp + skew",
                claims(),
                NOW + 300 + SKEW - 1,
            ),
            ("after exp, within skew", claims(), NOW + 300),
            (
                "iat exactly now + skew",
                with(|c| {
                    c["iat"] = json!(NOW + SKEW);
                    c["exp"] = json!(NOW + SKEW + 10);
                }),
                NOW,
            ),
            (
                "lifetime exactly max",
                with(|c| c["exp"] = json!(NOW - 10 + DAY)),
                NOW,
            ),
            (
                "aud device",
                with(|c| c["aud"] = json!("lobby/term-01")),
                NOW,
            ),
            (
                "aud array",
                with(|c| c["aud"] = json!(["hall", "lobby/term-01"])),
                NOW,
            ),
        ];
        for (name, c, now) in cases {
            if let Err(r) = run(&k, &signed(&c, "fleet-1", &k.fleet), now) {
                panic!("{name}: {:?}", r.error);
            }
        }
    }

    /// (name, payload, now, expected code, jti echoed in the reply).
    type Case = (
        &'static str,
        Vec<u8>,
        i64,
        &'static str,
        Option<&'static str>,
    );

    #[test]
    fn rejection_table() {
        let k = keys();
        let good = String::from_utf8(signed(&claims(), "fleet-1", &k.fleet)).unwrap();
        let p: Vec<&str> = good.split('.').collect();
        let tampered = format!(
            "{}.{}.{}",
            p[0],
            b64(with(|c| c["cmd"] = json!("capture.purge"))
                .to_string()
                .as_bytes()),
            p[2]
        );
        let none = format!("{}.{}.", b64(br#"{"alg":"none","kid":"fleet-1"}"#), p[1]);
        let hs256 = {
            let input = format!("{}.{}", b64(br#"{"alg":"HS256","kid":"fleet-1"}"#), p[1]);
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k.trust[0].public_key);
            format!(
                "{input}.{}",
                b64(ring::hmac::sign(&key, input.as_bytes()).as_ref())
            )
        };
        let s = |c: Value| signed(&c, "fleet-1", &k.fleet);
        let cmd = |name: &str, args: Value| {
            s(with(|c| {
                c["cmd"] = json!(name);
                c["args"] = args;
            }))
        };
        let mut big = s(claims());
        big.resize(4097, b' ');
        let cases: Vec<Case> = vec![
            ("too large", big, NOW, "too_large", None),
            ("empty", vec![], NOW, "malformed", None),
            (
                "not utf-8",
                vec![0xff, 0xfe, b'.', b'a'],
                NOW,
                "malformed",
                None,
            ),
            (
                "not a jws",
                b"{\"cmd\":\"status\"}".to_vec(),
                NOW,
                "malformed",
                None,
            ),
            (
                "bad base64",
                b"a*b.c$d.e!f".to_vec(),
                NOW,
                "malformed",
                None,
            ),
            (
                "alg none (empty signature segment: not read)",
                none.into_bytes(),
                NOW,
                "malformed",
                None,
            ),
            ("HS256", hs256.into_bytes(), NOW, "malformed", Some("cmd-1")),
            (
                "tampered",
                tampered.into_bytes(),
                NOW,
                "bad_signature",
                Some("cmd-1"),
            ),
            (
                "stranger key, trusted kid",
                signed(&claims(), "fleet-1", &k.stranger),
                NOW,
                "bad_signature",
                Some("cmd-1"),
            ),
            (
                "unknown kid",
                signed(&claims(), "who", &k.fleet),
                NOW,
                "unknown_key",
                Some("cmd-1"),
            ),
            (
                "consent key signs status",
                signed(&claims(), "consent-1", &k.consent),
                NOW,
                "wrong_role",
                Some("cmd-1"),
            ),
            (
                "consent key signs purge",
                {
                    let c = with(|c| {
                        c["cmd"] = json!("capture.purge");
                        c["args"] = json!({"all": true});
                    });
                    signed(&c, "consent-1", &k.consent)
                },
                NOW,
                "wrong_role",
                Some("cmd-1"),
            ),
            (
                "exactly at exp + skew",
                s(claims()),
                NOW + 300 + SKEW,
                "expired",
                Some("cmd-1"),
            ),
            (
                "iat beyond skew",
                s(with(|c| {
                    c["iat"] = json!(NOW + SKEW + 1);
                    c["exp"] = json!(NOW + 999);
                })),
                NOW,
                "not_yet_valid",
                Some("cmd-1"),
            ),
            (
                "lifetime max + 1",
                s(with(|c| c["exp"] = json!(NOW - 10 + DAY + 1))),
                NOW,
                "lifetime_too_long",
                Some("cmd-1"),
            ),
            (
                "exp = iat",
                s(with(|c| c["exp"] = json!(NOW - 10))),
                NOW,
                "malformed",
                Some("cmd-1"),
            ),
            (
                "other site",
                s(with(|c| c["aud"] = json!("hall"))),
                NOW,
                "wrong_audience",
                Some("cmd-1"),
            ),
            (
                "other device",
                s(with(|c| c["aud"] = json!("lobby/term-02"))),
                NOW,
                "wrong_audience",
                Some("cmd-1"),
            ),
            (
                "other devices array",
                s(with(|c| c["aud"] = json!(["lobby/term-02", "hall"]))),
                NOW,
                "wrong_audience",
                Some("cmd-1"),
            ),
            (
                "no aud",
                s(with(|c| {
                    c.as_object_mut().unwrap().remove("aud");
                })),
                NOW,
                "malformed",
                Some("cmd-1"),
            ),
            (
                "replayed",
                s(with(|c| c["jti"] = json!("old"))),
                NOW,
                "replayed",
                Some("old"),
            ),
            (
                "no jti",
                s(with(|c| {
                    c.as_object_mut().unwrap().remove("jti");
                })),
                NOW,
                "malformed",
                None,
            ),
            (
                "empty jti",
                s(with(|c| c["jti"] = json!(""))),
                NOW,
                "malformed",
                None,
            ),
            (
                "no exp",
                s(with(|c| {
                    c.as_object_mut().unwrap().remove("exp");
                })),
                NOW,
                "malformed",
                Some("cmd-1"),
            ),
            (
                "float iat",
                s(with(|c| c["iat"] = json!(1.5))),
                NOW,
                "malformed",
                Some("cmd-1"),
            ),
            (
                "no cmd",
                s(with(|c| {
                    c.as_object_mut().unwrap().remove("cmd");
                })),
                NOW,
                "malformed",
                Some("cmd-1"),
            ),
            (
                "unknown command",
                cmd("reboot", json!({})),
                NOW,
                "unknown_command",
                Some("cmd-1"),
            ),
            (
                "args not object",
                cmd("status", json!([])),
                NOW,
                "bad_args",
                Some("cmd-1"),
            ),
            (
                "status with args",
                cmd("status", json!({"x": 1})),
                NOW,
                "bad_args",
                Some("cmd-1"),
            ),
            (
                "grant without token",
                cmd("consent.grant", json!({})),
                NOW,
                "bad_args",
                Some("cmd-1"),
            ),
            (
                "grant numeric token",
                cmd("consent.grant", json!({"token": 5})),
                NOW,
                "bad_args",
                Some("cmd-1"),
            ),
            (
                "revoke bad subject",
                cmd("consent.revoke", json!({"subject": "a/b"})),
                NOW,
                "bad_args",
                Some("cmd-1"),
            ),
            (
                "revoke no subject",
                cmd("consent.revoke", json!({})),
                NOW,
                "bad_args",
                Some("cmd-1"),
            ),
            (
                "revoke extra arg",
                cmd("consent.revoke", json!({"subject": "S", "all": true})),
                NOW,
                "bad_args",
                Some("cmd-1"),
            ),
            (
                "purge all false",
                cmd("capture.purge", json!({"all": false})),
                NOW,
                "bad_args",
                Some("cmd-1"),
            ),
            (
                "purge both",
                cmd("capture.purge", json!({"all": true, "subject": "S"})),
                NOW,
                "bad_args",
                Some("cmd-1"),
            ),
            (
                "purge nothing",
                cmd("capture.purge", json!({})),
                NOW,
                "bad_args",
                Some("cmd-1"),
            ),
        ];
        for (name, payload, now, code, jti) in cases {
            let err = run(&k, &payload, now).expect_err(name);
            assert_eq!(err.error.code(), code, "{name}: {:?}", err.error);
            assert_eq!(err.jti.as_ref().map(Jti::as_str), jti, "{name}");
            let reply = err.reply();
            assert!(!reply.ok);
            assert_eq!(reply.jti, err.jti);
            assert_eq!(reply.error.unwrap().code, code);
        }
    }

    #[test]
    fn replay_set_consulted_only_for_authentic_in_time_commands() {
        let k = keys();
        let called = Cell::new(false);
        let seen = |_: &Jti| {
            called.set(true);
            false
        };
        let rejected: Vec<(Vec<u8>, i64)> = vec![
            (signed(&claims(), "fleet-1", &k.stranger), NOW),
            (signed(&claims(), "who", &k.fleet), NOW),
            (signed(&claims(), "consent-1", &k.consent), NOW),
            (signed(&claims(), "fleet-1", &k.fleet), NOW + 99_999),
            (
                signed(&with(|c| c["aud"] = json!("hall")), "fleet-1", &k.fleet),
                NOW,
            ),
        ];
        for (payload, now) in rejected {
            assert!(
                verify_command::<Command>(&payload, &k.trust, &me(), &policy(), now, &seen)
                    .is_err()
            );
            assert!(!called.get());
        }
        let payload = signed(&claims(), "fleet-1", &k.fleet);
        assert!(
            verify_command::<Command>(&payload, &k.trust, &me(), &policy(), NOW, &seen).is_ok()
        );
        assert!(called.get());
    }

    #[test]
    fn hand_built_command_verifies() {
        // Standard JOSE: base64url(header).base64url(claims).base64url(Ed25519 sig), no jsonwebtoken.
        let k = keys();
        let token = hand_token(
            r#"{"alg":"EdDSA","typ":"JWT","kid":"fleet-1"}"#,
            &claims().to_string(),
            &k.fleet,
        );
        let v = run(&k, token.as_bytes(), NOW).unwrap();
        assert_eq!(v.command, Command::Status(cmd::Status {}));
    }

    #[test]
    fn sign_command_round_trip_and_checks() {
        let k = keys();
        let purge = CapturePurge {
            target: PurgeTarget::Subject(sid("S-1")),
        };
        let (jti, token) = sign_command(
            CommandName::CapturePurge,
            &purge,
            "lobby/term-01",
            600,
            "fleet-1",
            &k.fleet,
            NOW,
        )
        .unwrap();
        let v = run(&k, token.as_bytes(), NOW).unwrap();
        assert_eq!(v.jti, jti);
        assert_eq!(v.expires_at, NOW + 600);
        assert_eq!(v.command, Command::CapturePurge(purge));
        let claims = jws::peek_claims(&token).unwrap();
        assert_eq!(claims["cmd"], "capture.purge");
        assert_eq!(claims["args"], json!({"subject": "S-1"}));

        let sign = |aud: &str, life: i64, key: &[u8]| {
            sign_command(
                CommandName::Status,
                &cmd::Status {},
                aud,
                life,
                "fleet-1",
                key,
                NOW,
            )
            .unwrap_err()
            .code()
        };
        assert_eq!(sign("", 60, &k.fleet), "malformed");
        assert_eq!(sign("lobby", 0, &k.fleet), "malformed");
        assert_eq!(sign("lobby", 60, b"junk"), "signing_failed");
    }
}
