//! Command names, error codes and the reply a device publishes for every
//! command it receives (SPEC "Tokens and commands").

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{fields, Status};
use crate::ids::{CaptureId, Jti, Seq, SubjectId};

/// The commands a device understands (the `cmd` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommandName {
    /// `consent.grant`: verify and store a consent token.
    ConsentGrant,
    /// `consent.revoke`: void a subject's consents, purge its captures.
    ConsentRevoke,
    /// `capture.purge`: purge captures, keep consents.
    CapturePurge,
    /// `status`: publish status now.
    Status,
}

impl CommandName {
    /// Every command, in SPEC order.
    pub const ALL: [CommandName; 4] = [
        CommandName::ConsentGrant,
        CommandName::ConsentRevoke,
        CommandName::CapturePurge,
        CommandName::Status,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandName::ConsentGrant => "consent.grant",
            CommandName::ConsentRevoke => "consent.revoke",
            CommandName::CapturePurge => "capture.purge",
            CommandName::Status => "status",
        }
    }

    /// The command called `name`, if the device knows it.
    pub fn parse(name: &str) -> Option<CommandName> {
        CommandName::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl std::fmt::Display for CommandName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CommandName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CommandName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        CommandName::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown command {name:?}")))
    }
}

/// Why a command or request was refused: the `error.code` of a reply (and of a
/// control-socket response). Codes a newer device may send are kept as
/// [`ErrorCode::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The signature does not verify.
    BadSignature,
    /// `kid` is not a trusted key.
    UnknownKey,
    /// The key's role may not sign this.
    WrongRole,
    /// Past `exp` (commands: past `exp` + skew).
    Expired,
    /// `iat` (or `nbf`) lies in the future beyond the allowed skew.
    NotYetValid,
    /// Addressed to another site or device.
    WrongAudience,
    /// This `jti` was already applied.
    Replayed,
    /// Not a well-formed token or command.
    Malformed,
    /// `cmd` is not a command the device knows.
    UnknownCommand,
    /// `exp - iat` exceeds the configured window.
    LifetimeTooLong,
    /// The payload exceeds the configured size.
    TooLarge,
    /// `args` do not fit the command.
    BadArgs,
    /// A consent token without the upload scope.
    MissingScope,
    /// A consent issued at or before the subject's revocation.
    Revoked,
    /// A subject id outside `[A-Za-z0-9._:-]{1,128}`.
    BadSubject,
    /// A consent id (`jti`) its signing key already used for another consent.
    JtiReused,
    /// The device failed (disk full, I/O): nothing was applied.
    Internal,
    /// A local request that cannot be carried out as asked (`fleet` tool).
    InvalidRequest,
    /// The given private key cannot sign (`fleet` tool).
    SigningFailed,
    /// A code this build does not know.
    Other(String),
}

impl ErrorCode {
    /// Every code this build sends.
    pub const KNOWN: [ErrorCode; 19] = [
        ErrorCode::BadSignature,
        ErrorCode::UnknownKey,
        ErrorCode::WrongRole,
        ErrorCode::Expired,
        ErrorCode::NotYetValid,
        ErrorCode::WrongAudience,
        ErrorCode::Replayed,
        ErrorCode::Malformed,
        ErrorCode::UnknownCommand,
        ErrorCode::LifetimeTooLong,
        ErrorCode::TooLarge,
        ErrorCode::BadArgs,
        ErrorCode::MissingScope,
        ErrorCode::Revoked,
        ErrorCode::BadSubject,
        ErrorCode::JtiReused,
        ErrorCode::Internal,
        ErrorCode::InvalidRequest,
        ErrorCode::SigningFailed,
    ];

    /// The code on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::UnknownKey => "unknown_key",
            ErrorCode::WrongRole => "wrong_role",
            ErrorCode::Expired => "expired",
            ErrorCode::NotYetValid => "not_yet_valid",
            ErrorCode::WrongAudience => "wrong_audience",
            ErrorCode::Replayed => "replayed",
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::LifetimeTooLong => "lifetime_too_long",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::BadArgs => "bad_args",
            ErrorCode::MissingScope => "missing_scope",
            ErrorCode::Revoked => "revoked",
            ErrorCode::BadSubject => "bad_subject",
            ErrorCode::JtiReused => "jti_reused",
            ErrorCode::Internal => "internal",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::SigningFailed => "signing_failed",
            ErrorCode::Other(code) => code,
        }
    }

    /// The code called `code`.
    pub fn parse(code: &str) -> ErrorCode {
        ErrorCode::KNOWN
            .into_iter()
            .find(|c| c.as_str() == code)
            .unwrap_or_else(|| ErrorCode::Other(code.to_string()))
    }
}

impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ErrorCode::parse(&String::deserialize(d)?))
    }
}

/// `{code, message}` of a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// One line for a human.
    pub message: String,
}

/// The purge receipt: the result of `consent.revoke` and `capture.purge`
/// (SPEC invariant 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The subject purged; `null` for a purge of everything (and in replies
    /// kept on the device, which never keep a subject id).
    pub subject: Option<SubjectId>,
    /// How many captures were destroyed.
    pub purged: u64,
    /// Purged captures that had already been handed to MQTT: the back-end
    /// deletes its copies of these.
    pub in_flight: Vec<CaptureId>,
    /// When the purge committed (unix seconds; RFC 3339 on the wire).
    #[serde(with = "fields::rfc3339")]
    pub purged_at: i64,
    /// `true` for a purge of every capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// For a revocation: how many of the subject's consents are still
    /// stored after it (issued after the revocation; 0 after a local
    /// revoke). Absent for a purge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consents_remaining: Option<u64>,
}

/// The result of `consent.grant` (and `ctl consent add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    /// The consent's `jti`.
    pub consent_id: Jti,
    /// Its subject (`null` in replies kept on the device).
    pub subject: Option<SubjectId>,
    /// Its `exp` (unix seconds; RFC 3339 on the wire).
    #[serde(with = "fields::rfc3339")]
    pub expires_at: i64,
    /// False when the device already held this consent.
    pub new: bool,
}

/// The answer to a site consent-log entry (`consent.grant` or
/// `consent.revoke` with a `seq`) whose `seq` this device had applied
/// before: acknowledged, no second effect (SPEC "Site consent log").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlreadyApplied {
    /// The entry's `seq`.
    pub seq: Seq,
    /// Always true.
    pub already_applied: bool,
}

/// What a successful command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReplyResult {
    /// `consent.revoke`, `capture.purge`.
    Receipt(Receipt),
    /// `consent.grant`.
    Granted(Granted),
    /// `status`.
    Status(Box<Status>),
    /// A consent-log entry applied before (no second effect).
    AlreadyApplied(AlreadyApplied),
    /// A result this build does not know (a newer device's command), kept
    /// as it came so a reader can still show it.
    Other(serde_json::Value),
}

impl From<Receipt> for ReplyResult {
    fn from(r: Receipt) -> Self {
        ReplyResult::Receipt(r)
    }
}

impl From<Granted> for ReplyResult {
    fn from(g: Granted) -> Self {
        ReplyResult::Granted(g)
    }
}

impl From<AlreadyApplied> for ReplyResult {
    fn from(a: AlreadyApplied) -> Self {
        ReplyResult::AlreadyApplied(a)
    }
}

impl From<Status> for ReplyResult {
    fn from(s: Status) -> Self {
        ReplyResult::Status(Box::new(s))
    }
}

impl ReplyResult {
    /// The subject the result is about, where it names one.
    pub fn subject(&self) -> Option<&SubjectId> {
        match self {
            ReplyResult::Receipt(r) => r.subject.as_ref(),
            ReplyResult::Granted(g) => g.subject.as_ref(),
            ReplyResult::Status(_) | ReplyResult::AlreadyApplied(_) | ReplyResult::Other(_) => None,
        }
    }

    /// Sets the subject of a result that names one; others are unchanged.
    fn set_subject(&mut self, subject: Option<SubjectId>) {
        match self {
            ReplyResult::Receipt(r) => r.subject = subject,
            ReplyResult::Granted(g) => g.subject = subject,
            ReplyResult::Status(_) | ReplyResult::AlreadyApplied(_) | ReplyResult::Other(_) => {}
        }
    }
}

/// The reply to one command, published on the device's reply topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Always [`super::WIRE_VERSION`].
    pub v: u8,
    /// The command's `jti`; `null` when it could not be read.
    pub jti: Option<Jti>,
    /// The command's `cmd` as sent; `null` when it could not be read.
    pub cmd: Option<String>,
    /// True when the command took effect.
    pub ok: bool,
    /// Present when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ReplyResult>,
    /// Present when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Reply {
    /// A command that took effect.
    pub fn ok(jti: &Jti, cmd: CommandName, result: ReplyResult) -> Reply {
        Reply {
            v: super::WIRE_VERSION,
            jti: Some(jti.clone()),
            cmd: Some(cmd.as_str().to_string()),
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// A refused command; `jti` and `cmd` as far as they could be read.
    pub fn err(
        jti: Option<&Jti>,
        cmd: Option<&str>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Reply {
        Reply {
            v: super::WIRE_VERSION,
            jti: jti.cloned(),
            cmd: cmd.map(str::to_string),
            ok: false,
            result: None,
            error: Some(ErrorBody {
                code,
                message: message.into(),
            }),
        }
    }

    /// The command this replies to, when it is one the device knows.
    pub fn command(&self) -> Option<CommandName> {
        self.cmd.as_deref().and_then(CommandName::parse)
    }

    /// The purge receipt, when the reply carries one.
    pub fn receipt(&self) -> Option<&Receipt> {
        match &self.result {
            Some(ReplyResult::Receipt(r)) => Some(r),
            _ => None,
        }
    }

    /// The reply as the device keeps it for a broker redelivery: the same,
    /// with the subject id left out (`null`), so no subject id outlives a
    /// revocation in the command log.
    pub fn without_subject(&self) -> Reply {
        self.with_subject(None)
    }

    /// The reply with `subject` as the subject of its result (where the
    /// result names one): how a kept reply gets its subject back from the
    /// command it answers.
    pub fn with_subject(&self, subject: Option<SubjectId>) -> Reply {
        let mut reply = self.clone();
        if let Some(result) = &mut reply.result {
            result.set_subject(subject);
        }
        reply
    }

    /// The JSON bytes published on the reply topic.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a reply as a back-end receives it.
    pub fn from_bytes(payload: &[u8]) -> Result<Reply, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn command_names_round_trip() {
        for c in CommandName::ALL {
            assert_eq!(CommandName::parse(c.as_str()), Some(c));
            let text = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<CommandName>(&text).unwrap(), c);
        }
        assert_eq!(CommandName::parse("reboot"), None);
    }

    #[test]
    fn error_codes_are_distinct_and_round_trip() {
        let codes: std::collections::BTreeSet<_> =
            ErrorCode::KNOWN.iter().map(ErrorCode::as_str).collect();
        assert_eq!(codes.len(), ErrorCode::KNOWN.len());
        for c in ErrorCode::KNOWN {
            assert_eq!(ErrorCode::parse(c.as_str()), c);
        }
        assert_eq!(
            ErrorCode::parse("quota_exceeded"),
            ErrorCode::Other("quota_exceeded".into())
        );
    }

    #[test]
    fn a_refusal_has_the_spec_shape_with_null_ids() {
        let r = Reply::err(None, None, ErrorCode::Malformed, "not a JWS");
        let v: Value = serde_json::from_slice(&r.to_bytes()).unwrap();
        assert_eq!(
            v,
            json!({"v":1,"jti":null,"cmd":null,"ok":false,
                   "error":{"code":"malformed","message":"not a JWS"}})
        );
        assert_eq!(Reply::from_bytes(&r.to_bytes()).unwrap(), r);
    }

    #[test]
    fn a_receipt_reply_has_the_spec_shape() {
        let r = Reply::ok(
            &Jti::from("j-1"),
            CommandName::ConsentRevoke,
            ReplyResult::Receipt(Receipt {
                subject: Some(SubjectId::new("S-1").unwrap()),
                purged: 2,
                in_flight: vec!["c-9".into()],
                purged_at: 1_795_858_382,
                all: None,
                consents_remaining: None,
            }),
        );
        let v: Value = serde_json::from_slice(&r.to_bytes()).unwrap();
        assert_eq!(
            v,
            json!({"v":1,"jti":"j-1","cmd":"consent.revoke","ok":true,
                   "result":{"subject":"S-1","purged":2,"in_flight":["c-9"],
                             "purged_at":"2026-11-28T09:33:02Z"}})
        );
        let back = Reply::from_bytes(&r.to_bytes()).unwrap();
        assert_eq!(back.receipt().unwrap().in_flight, ["c-9"]);
        assert_eq!(back.command(), Some(CommandName::ConsentRevoke));
    }

    #[test]
    fn results_are_told_apart_when_read_back() {
        let granted = Reply::ok(
            &Jti::from("j-2"),
            CommandName::ConsentGrant,
            ReplyResult::Granted(Granted {
                consent_id: "c-1".into(),
                subject: None,
                expires_at: 1_795_858_382,
                new: true,
            }),
        );
        let back = Reply::from_bytes(&granted.to_bytes()).unwrap();
        assert!(matches!(back.result, Some(ReplyResult::Granted(_))));
        let all = Reply::ok(
            &Jti::from("j-3"),
            CommandName::CapturePurge,
            ReplyResult::Receipt(Receipt {
                subject: None,
                purged: 0,
                in_flight: vec![],
                purged_at: 0,
                all: Some(true),
                consents_remaining: None,
            }),
        );
        let v: Value = serde_json::from_slice(&all.to_bytes()).unwrap();
        assert_eq!(v["result"]["all"], true);
        assert_eq!(v["result"]["subject"], Value::Null);
        let status = Reply::ok(
            &Jti::from("j-4"),
            CommandName::Status,
            ReplyResult::Status(Box::new(Status::offline())),
        );
        let back = Reply::from_bytes(&status.to_bytes()).unwrap();
        assert!(matches!(back.result, Some(ReplyResult::Status(_))));
        let again = Reply::ok(
            &Jti::from("j-6"),
            CommandName::ConsentRevoke,
            ReplyResult::AlreadyApplied(AlreadyApplied {
                seq: Seq::new(3),
                already_applied: true,
            }),
        );
        let back = Reply::from_bytes(&again.to_bytes()).unwrap();
        assert!(matches!(back.result, Some(ReplyResult::AlreadyApplied(_))));
        let newer = Reply::from_bytes(
            br#"{"v":1,"jti":"j-5","cmd":"camera.restart","ok":true,"result":{"restarted":2}}"#,
        )
        .unwrap();
        assert_eq!(newer.command(), None);
        assert_eq!(
            newer.result,
            Some(ReplyResult::Other(json!({"restarted": 2})))
        );
    }

    #[test]
    fn a_kept_reply_has_no_subject_and_gets_it_back() {
        let subject = SubjectId::new("S-7").unwrap();
        let receipt = Reply::ok(
            &Jti::from("j-1"),
            CommandName::ConsentRevoke,
            ReplyResult::Receipt(Receipt {
                subject: Some(subject.clone()),
                purged: 1,
                in_flight: vec![],
                purged_at: 0,
                all: None,
                consents_remaining: None,
            }),
        );
        let kept = receipt.without_subject();
        assert_eq!(kept.result.as_ref().unwrap().subject(), None);
        assert!(!String::from_utf8(kept.to_bytes()).unwrap().contains("S-7"));
        assert_eq!(kept.with_subject(Some(subject.clone())), receipt);

        let granted = Reply::ok(
            &Jti::from("j-2"),
            CommandName::ConsentGrant,
            ReplyResult::Granted(Granted {
                consent_id: "c-1".into(),
                subject: Some(subject.clone()),
                expires_at: 0,
                new: true,
            }),
        );
        assert_eq!(
            granted.without_subject().with_subject(Some(subject)),
            granted
        );

        // Results without a subject and refusals are kept as they are.
        let status = Reply::ok(
            &Jti::from("j-3"),
            CommandName::Status,
            ReplyResult::Status(Box::new(Status::offline())),
        );
        assert_eq!(status.without_subject(), status);
        let refused = Reply::err(None, None, ErrorCode::Replayed, "seen");
        assert_eq!(refused.without_subject(), refused);
    }

    /// Found by the `wire` fuzz target (fuzz/, RELIABILITY.md "Fuzzing"): a
    /// reply whose result repeats member names is no known result (serde
    /// refuses duplicate fields), so it is read as `Other` with the last
    /// value of each member; written out again it has no duplicates and
    /// reads as `Granted`. No panic and nothing lost; stable from the
    /// second round on.
    #[test]
    fn a_result_with_duplicate_members_is_read_as_other() {
        // The fuzz input: a selector byte, then the reply.
        let input = include_bytes!("../../tests/fixtures/fuzz/wire/reply-duplicate-members");
        let reply = Reply::from_bytes(&input[1..]).unwrap();
        assert!(matches!(reply.result, Some(ReplyResult::Other(_))));
        assert_eq!(reply.jti, None);
        let once = Reply::from_bytes(&reply.to_bytes()).unwrap();
        let Some(ReplyResult::Granted(granted)) = &once.result else {
            panic!("read again as {:?}", once.result);
        };
        assert_eq!(granted.consent_id.as_str(), "c-1");
        assert_eq!(Reply::from_bytes(&once.to_bytes()).unwrap(), once);
    }

    /// Found by the `wire` fuzz target: a number in an unknown result
    /// (`Other`) with more digits than an f64 holds. serde_json's default
    /// float reader is not correctly rounded, so each write-and-read moved it
    /// to a neighbouring value; with its `float_roundtrip` feature a number
    /// read once stays the same value however often it is passed on.
    #[test]
    fn a_number_in_an_unknown_result_survives_being_passed_on() {
        let input = include_bytes!("../../tests/fixtures/fuzz/wire/reply-float-drift");
        let reply = Reply::from_bytes(&input[1..]).unwrap();
        let Some(ReplyResult::Other(result)) = &reply.result else {
            panic!("read as {:?}", reply.result);
        };
        // Rust's own float parser rounds correctly: the nearest f64.
        let nearest: f64 = "0.7437598529758901093868e85".parse().unwrap();
        assert_eq!(result["gain"].as_f64(), Some(nearest));
        let mut hop = reply.clone();
        for _ in 0..3 {
            hop = Reply::from_bytes(&hop.to_bytes()).unwrap();
            assert_eq!(hop, reply);
        }
    }
}
