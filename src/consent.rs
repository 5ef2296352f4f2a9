//! Consent tokens: verification of the JWS on arrival (pure, a function of the
//! token, the trusted keys, this device's identity and `now`) and signing
//! consent tokens for the fleet tool. What makes a stored consent usable is
//! the consent rule in [`crate::gate`]; arrival applies the part of it that a
//! token can be judged on alone.

use serde_json::{json, Value};

use crate::clock;
use crate::config::{Config, Identity, Role, TrustedKey};
use crate::gate::{self, BrokenTerm};
use crate::ids::SubjectId;
use crate::jws::{self, JwsError};
use crate::protocol::ErrorCode;

/// The stored consent and the upload scope belong to the consent rule in
/// [`crate::gate`]; re-exported here next to the token format.
pub use crate::gate::{Consent, UPLOAD_SCOPE};

/// Longest consent token accepted, in bytes (a real one is well under 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The longest `[consent] max_lifetime` a device can be configured with
/// (3650 days): the fleet tool never signs a longer consent.
pub const MAX_LIFETIME_LIMIT_S: i64 = 3650 * 86_400;

/// What a device accepts in a consent token's times (from `[commands]
/// clock_skew` and `[consent] max_lifetime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLimits {
    /// Seconds `iat`/`nbf` may lie ahead of `now`.
    pub clock_skew: i64,
    /// Longest `exp - iat`, seconds.
    pub max_lifetime: i64,
}

impl TokenLimits {
    /// The limits of a device's configuration.
    pub fn of(config: &Config) -> Self {
        TokenLimits {
            clock_skew: config.commands.clock_skew.as_secs() as i64,
            max_lifetime: config.consent.max_lifetime.as_secs() as i64,
        }
    }
}

/// Why a consent token was refused. [`ConsentError::code`] gives the reply/audit code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    /// Not a well-formed token, or a required claim is missing or of the wrong type.
    #[error("malformed consent token: {0}")]
    Malformed(String),
    /// The header `kid` is not a trusted key.
    #[error("consent token signed by unknown key {0:?}")]
    UnknownKey(String),
    /// The signature does not verify under the named trusted key.
    #[error("consent token signature does not verify")]
    BadSignature,
    /// Signed by a trusted key whose role is not `consent`.
    #[error("key {0:?} is not a consent key")]
    WrongRole(String),
    /// `now >= exp`.
    #[error("consent expired at {exp} (now {now})")]
    Expired {
        /// The token's `exp`.
        exp: i64,
        /// The time of the check.
        now: i64,
    },
    /// `iat` (or `nbf`) lies more than the allowed skew in the future.
    #[error("consent not valid before {at} (now {now})")]
    NotYetValid {
        /// The offending `iat` or `nbf`.
        at: i64,
        /// The time of the check.
        now: i64,
    },
    /// `exp - iat` exceeds `[consent] max_lifetime`.
    #[error("consent lifetime {lifetime} s exceeds the allowed {max} s ([consent] max_lifetime)")]
    LifetimeTooLong {
        /// The token's `exp - iat`.
        lifetime: i64,
        /// The configured maximum.
        max: i64,
    },
    /// `aud` names neither this site nor this device.
    #[error("consent addressed to {0:?}, not to this site or device")]
    WrongAudience(Vec<String>),
    /// `scope` lacks `capture:upload`.
    #[error("consent scope lacks {UPLOAD_SCOPE}")]
    MissingScope,
    /// Issued at or before the subject's latest revocation.
    #[error("consent issued at {issued_at}, at or before the revocation at {revoked_before}")]
    Revoked {
        /// The consent's `iat`.
        issued_at: i64,
        /// The revocation time it falls under.
        revoked_before: i64,
    },
    /// `sub` is not `[A-Za-z0-9._:-]{1,128}`.
    #[error("consent subject {0:?} is not [A-Za-z0-9._:-]{{1,128}}")]
    BadSubject(String),
    /// A signing request that cannot produce a valid token.
    #[error("invalid consent request: {0}")]
    InvalidRequest(String),
    /// The signing key is unusable.
    #[error("cannot sign consent: {0}")]
    Signing(String),
}

impl ConsentError {
    /// Stable machine-readable code (SPEC reply codes where they exist).
    pub fn code(&self) -> ErrorCode {
        match self {
            ConsentError::Malformed(_) => ErrorCode::Malformed,
            ConsentError::UnknownKey(_) => ErrorCode::UnknownKey,
            ConsentError::BadSignature => ErrorCode::BadSignature,
            ConsentError::WrongRole(_) => ErrorCode::WrongRole,
            ConsentError::Expired { .. } => ErrorCode::Expired,
            ConsentError::NotYetValid { .. } => ErrorCode::NotYetValid,
            ConsentError::LifetimeTooLong { .. } => ErrorCode::LifetimeTooLong,
            ConsentError::WrongAudience(_) => ErrorCode::WrongAudience,
            ConsentError::MissingScope => ErrorCode::MissingScope,
            ConsentError::Revoked { .. } => ErrorCode::Revoked,
            ConsentError::BadSubject(_) => ErrorCode::BadSubject,
            ConsentError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            ConsentError::Signing(_) => ErrorCode::SigningFailed,
        }
    }
}

impl From<JwsError> for ConsentError {
    fn from(e: JwsError) -> Self {
        match e {
            JwsError::Malformed(m) => ConsentError::Malformed(m),
            JwsError::UnknownKey(k) => ConsentError::UnknownKey(k),
            JwsError::BadSignature => ConsentError::BadSignature,
            JwsError::BadSigningKey(m) => ConsentError::Signing(m),
        }
    }
}

/// Verifies a consent token for this device at time `now`.
///
/// Checks, in order: token form and signature, key role `consent`, claim types
/// (every claim missing or mistyped → `malformed`; `exp` must be after `iat`;
/// `iat`, `exp` and `nbf` must lie in 2000-01-01..=9999-12-31, see
/// [`clock::is_sane_claim_time`], else `malformed`), `exp - iat` at most
/// `limits.max_lifetime` → `lifetime_too_long`, subject syntax, `iat` or `nbf` later than `now + skew` → not_yet_valid;
/// then the consent rule's terms that a token can be judged on alone
/// ([`gate::check_terms`]: audience, scope, `now >= exp` → expired, no skew on
/// expiry). Revocation is not known here: the store refuses a consent issued
/// at or before the subject's revocation ([`gate::is_revoked`]) when adding it.
pub fn verify_consent(
    token: &str,
    trust: &[TrustedKey],
    me: &Identity,
    now: i64,
    limits: TokenLimits,
) -> Result<Consent, ConsentError> {
    let token = token.trim_ascii();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(ConsentError::Malformed(format!(
            "token is {} bytes, at most {MAX_TOKEN_BYTES} accepted",
            token.len()
        )));
    }
    let verified = jws::verify(token, trust)?;
    if verified.role != Role::Consent {
        return Err(ConsentError::WrongRole(verified.kid));
    }
    let c = &verified.claims;
    let issuer = jws::str_claim(c, "iss").map_err(ConsentError::Malformed)?;
    let subject = jws::str_claim(c, "sub").map_err(ConsentError::Malformed)?;
    let id = jws::str_claim(c, "jti").map_err(ConsentError::Malformed)?;
    if !jws::valid_id(id) {
        return Err(ConsentError::Malformed(
            "claim jti must be 1..=128 printable characters".into(),
        ));
    }
    let issued_at = jws::int_claim(c, "iat").map_err(ConsentError::Malformed)?;
    let expires_at = jws::int_claim(c, "exp").map_err(ConsentError::Malformed)?;
    let not_before = jws::opt_int_claim(c, "nbf").map_err(ConsentError::Malformed)?;
    if expires_at <= issued_at {
        return Err(ConsentError::Malformed(format!(
            "claim exp ({expires_at}) is not after iat ({issued_at})"
        )));
    }
    check_claim_times(issued_at, expires_at, not_before)?;
    let lifetime = expires_at - issued_at;
    if lifetime > limits.max_lifetime {
        return Err(ConsentError::LifetimeTooLong {
            lifetime,
            max: limits.max_lifetime,
        });
    }
    let audience = jws::audience(c).map_err(ConsentError::Malformed)?;
    let scopes: Vec<String> = jws::str_claim(c, "scope")
        .map_err(ConsentError::Malformed)?
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();

    let subject = SubjectId::new(subject).map_err(|e| ConsentError::BadSubject(e.0))?;
    let skew = limits.clock_skew.max(0);
    for at in std::iter::once(issued_at).chain(not_before) {
        if at > now.saturating_add(skew) {
            return Err(ConsentError::NotYetValid { at, now });
        }
    }
    let consent = Consent {
        id: id.to_string(),
        subject,
        issuer: issuer.to_string(),
        issued_at,
        expires_at,
        audience,
        scopes,
        kid: verified.kid,
        token: token.to_string(),
    };
    match gate::check_terms(&consent, me, now) {
        Ok(()) => Ok(consent),
        Err(BrokenTerm::WrongAudience) => Err(ConsentError::WrongAudience(consent.audience)),
        Err(BrokenTerm::MissingScope) => Err(ConsentError::MissingScope),
        Err(BrokenTerm::Expired) => Err(ConsentError::Expired {
            exp: expires_at,
            now,
        }),
    }
}

/// Refuses an `iat`, `exp` or `nbf` outside the years 2000..=9999 as
/// `malformed`: such a time is no date a consent can mean, and RFC 3339
/// cannot show it.
fn check_claim_times(iat: i64, exp: i64, nbf: Option<i64>) -> Result<(), ConsentError> {
    for (name, at) in [("iat", Some(iat)), ("exp", Some(exp)), ("nbf", nbf)] {
        if let Some(at) = at.filter(|at| !clock::is_sane_claim_time(*at)) {
            return Err(ConsentError::Malformed(format!(
                "claim {name} ({at}) lies outside 2000-01-01T00:00:00Z..=9999-12-31T23:59:59Z"
            )));
        }
    }
    Ok(())
}

/// What the fleet tool signs into a consent token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRequest {
    /// `iss`: who collected the consent (an HR system, a kiosk, …).
    pub issuer: String,
    /// `sub`: the subject id, `[A-Za-z0-9._:-]{1,128}`.
    pub subject: String,
    /// `aud`: site ids and/or `site/device`; one entry is written as a string.
    pub audience: Vec<String>,
    /// `scope` entries, e.g. [`UPLOAD_SCOPE`]; joined with spaces.
    pub scopes: Vec<String>,
    /// `exp - iat` in seconds; must be positive and at most
    /// [`MAX_LIFETIME_LIMIT_S`] (the fleet tool's `--max-lifetime` checks the
    /// devices' own limit before).
    pub lifetime_s: i64,
    /// `jti`; a random UUID when `None`.
    pub jti: Option<String>,
}

#[cfg(test)]
impl ConsentRequest {
    /// A request for uploads of `subject` at the site `lobby`, issued by
    /// `hr`, valid `lifetime_s`: the consent most unit tests grant.
    pub(crate) fn lobby_upload(subject: &str, lifetime_s: i64) -> ConsentRequest {
        ConsentRequest {
            issuer: "hr".into(),
            subject: subject.into(),
            audience: vec!["lobby".into()],
            scopes: vec![UPLOAD_SCOPE.into()],
            lifetime_s,
            jti: None,
        }
    }
}

/// Signs a consent token with `iat = now`, `exp = now + lifetime_s`.
pub fn sign_consent(
    req: &ConsentRequest,
    kid: &str,
    pkcs8: &[u8],
    now: i64,
) -> Result<String, ConsentError> {
    let invalid = |m: &str| Err(ConsentError::InvalidRequest(m.to_string()));
    if !SubjectId::is_valid(&req.subject) {
        return Err(ConsentError::BadSubject(req.subject.clone()));
    }
    if req.issuer.is_empty() {
        return invalid("issuer is empty");
    }
    if req.lifetime_s <= 0 {
        return invalid("lifetime must be positive");
    }
    if req.lifetime_s > MAX_LIFETIME_LIMIT_S {
        return invalid("lifetime exceeds 3650 days, the most any device accepts");
    }
    let Some(exp) = now.checked_add(req.lifetime_s) else {
        return invalid("lifetime too large");
    };
    if check_claim_times(now, exp, None).is_err() {
        return invalid("iat or exp lies outside the years 2000..=9999 (check the clock)");
    }
    if req.audience.is_empty() || req.audience.iter().any(|a| a.is_empty()) {
        return invalid("audience needs at least one non-empty site or site/device");
    }
    if req.scopes.is_empty() || req.scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
        return invalid("scopes must be non-empty words without spaces");
    }
    let jti = req
        .jti
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if !jws::valid_id(&jti) {
        return invalid("jti must be 1..=128 printable characters");
    }
    let aud = match req.audience.as_slice() {
        [one] => Value::String(one.clone()),
        many => json!(many),
    };
    let claims = json!({
        "iss": req.issuer,
        "sub": req.subject,
        "jti": jti,
        "iat": now,
        "exp": exp,
        "aud": aud,
        "scope": req.scopes.join(" "),
    });
    Ok(jws::sign(&claims, kid, pkcs8)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jws::testkit::*;

    const NOW: i64 = 1_800_000_000;
    const SKEW: i64 = 60;
    const MAX_LIFETIME: i64 = 365 * 86_400;
    const LIMITS: TokenLimits = TokenLimits {
        clock_skew: SKEW,
        max_lifetime: MAX_LIFETIME,
    };

    struct Keys {
        consent: Vec<u8>,
        fleet: Vec<u8>,
        stranger: Vec<u8>,
        trust: Vec<TrustedKey>,
    }

    fn keys() -> Keys {
        let (consent, cpk) = keypair();
        let (fleet, fpk) = keypair();
        let (stranger, _) = keypair();
        Keys {
            consent,
            fleet,
            stranger,
            trust: vec![
                trusted("consent-1", Role::Consent, cpk),
                trusted("fleet-1", Role::Fleet, fpk),
            ],
        }
    }

    /// A valid claims set; tests mutate one field at a time.
    fn claims() -> Value {
        json!({
            "iss": "hr", "sub": "S-123", "jti": "c-1",
            "iat": NOW - 100, "exp": NOW + 3600,
            "aud": "lobby", "scope": "capture:upload other",
        })
    }

    fn with(f: impl FnOnce(&mut Value)) -> Value {
        let mut c = claims();
        f(&mut c);
        c
    }

    fn tok(c: &Value, kid: &str, key: &[u8]) -> String {
        jws::sign(c, kid, key).unwrap()
    }

    #[test]
    fn accepts_valid_token() {
        let k = keys();
        let t = tok(&claims(), "consent-1", &k.consent);
        let c = verify_consent(&format!("{t}\n"), &k.trust, &me(), NOW, LIMITS).unwrap();
        assert_eq!(
            c,
            Consent {
                id: "c-1".into(),
                subject: SubjectId::new("S-123").unwrap(),
                issuer: "hr".into(),
                issued_at: NOW - 100,
                expires_at: NOW + 3600,
                audience: vec!["lobby".into()],
                scopes: vec!["capture:upload".into(), "other".into()],
                kid: "consent-1".into(),
                token: t,
            }
        );
    }

    #[test]
    fn acceptance_table() {
        let k = keys();
        // (name, claims, now) that must be accepted.
        let ok: Vec<(&str, Value, i64)> = vec![
            ("one second before exp", claims(), NOW + 3599),
            (
                "iat exactly now + skew",
                with(|c| c["iat"] = json!(NOW + SKEW)),
                NOW,
            ),
            (
                "nbf exactly now + skew",
                with(|c| c["nbf"] = json!(NOW + SKEW)),
                NOW,
            ),
            (
                "aud device string",
                with(|c| c["aud"] = json!("lobby/term-01")),
                NOW,
            ),
            (
                "aud array with site",
                with(|c| c["aud"] = json!(["x", "lobby"])),
                NOW,
            ),
            (
                "aud array with device",
                with(|c| c["aud"] = json!(["lobby/term-02", "lobby/term-01"])),
                NOW,
            ),
            (
                "scope only upload",
                with(|c| c["scope"] = json!("capture:upload")),
                NOW,
            ),
            (
                "subject charset",
                with(|c| c["sub"] = json!("a.b_c:d-E9")),
                NOW,
            ),
            (
                "lifetime exactly max",
                with(|c| c["exp"] = json!(NOW - 100 + MAX_LIFETIME)),
                NOW,
            ),
        ];
        for (name, c, now) in ok {
            let t = tok(&c, "consent-1", &k.consent);
            if let Err(e) = verify_consent(&t, &k.trust, &me(), now, LIMITS) {
                panic!("{name}: {e}");
            }
        }
    }

    #[test]
    fn rejection_table() {
        let k = keys();
        let good = tok(&claims(), "consent-1", &k.consent);
        let p: Vec<&str> = good.split('.').collect();
        let tampered = format!(
            "{}.{}.{}",
            p[0],
            b64(with(|c| c["sub"] = json!("S-999")).to_string().as_bytes()),
            p[2]
        );
        let none = format!("{}.{}.", b64(br#"{"alg":"none","kid":"consent-1"}"#), p[1]);
        let signed = |c: Value| tok(&c, "consent-1", &k.consent);
        let cases: Vec<(&str, String, i64, &str)> = vec![
            ("garbage", "xyz".into(), NOW, "malformed"),
            ("alg none", none, NOW, "malformed"),
            ("tampered payload", tampered, NOW, "bad_signature"),
            (
                "stranger key, trusted kid",
                tok(&claims(), "consent-1", &k.stranger),
                NOW,
                "bad_signature",
            ),
            (
                "unknown kid",
                tok(&claims(), "nobody", &k.consent),
                NOW,
                "unknown_key",
            ),
            (
                "fleet key",
                tok(&claims(), "fleet-1", &k.fleet),
                NOW,
                "wrong_role",
            ),
            ("exactly at exp", good.clone(), NOW + 3600, "expired"),
            ("after exp", good.clone(), NOW + 99_999, "expired"),
            (
                "iat beyond skew",
                signed(with(|c| c["iat"] = json!(NOW + SKEW + 1))),
                NOW,
                "not_yet_valid",
            ),
            (
                "nbf beyond skew",
                signed(with(|c| c["nbf"] = json!(NOW + SKEW + 1))),
                NOW,
                "not_yet_valid",
            ),
            (
                "aud other site",
                signed(with(|c| c["aud"] = json!("hall"))),
                NOW,
                "wrong_audience",
            ),
            (
                "aud other device",
                signed(with(|c| c["aud"] = json!("lobby/term-02"))),
                NOW,
                "wrong_audience",
            ),
            (
                "aud device of other site",
                signed(with(|c| c["aud"] = json!(["hall/term-01"]))),
                NOW,
                "wrong_audience",
            ),
            (
                "no upload scope",
                signed(with(|c| c["scope"] = json!("capture:view"))),
                NOW,
                "missing_scope",
            ),
            (
                "scope prefix only",
                signed(with(|c| c["scope"] = json!("capture:uploads"))),
                NOW,
                "missing_scope",
            ),
            (
                "bad subject chars",
                signed(with(|c| c["sub"] = json!("S 1"))),
                NOW,
                "bad_subject",
            ),
            (
                "empty subject",
                signed(with(|c| c["sub"] = json!(""))),
                NOW,
                "bad_subject",
            ),
            (
                "long subject",
                signed(with(|c| c["sub"] = json!("s".repeat(129)))),
                NOW,
                "bad_subject",
            ),
            (
                "no jti",
                signed(with(|c| {
                    c.as_object_mut().unwrap().remove("jti");
                })),
                NOW,
                "malformed",
            ),
            (
                "empty jti",
                signed(with(|c| c["jti"] = json!(""))),
                NOW,
                "malformed",
            ),
            (
                "long jti",
                signed(with(|c| c["jti"] = json!("j".repeat(129)))),
                NOW,
                "malformed",
            ),
            (
                "no exp",
                signed(with(|c| {
                    c.as_object_mut().unwrap().remove("exp");
                })),
                NOW,
                "malformed",
            ),
            (
                "no iat",
                signed(with(|c| {
                    c.as_object_mut().unwrap().remove("iat");
                })),
                NOW,
                "malformed",
            ),
            (
                "no iss",
                signed(with(|c| {
                    c.as_object_mut().unwrap().remove("iss");
                })),
                NOW,
                "malformed",
            ),
            (
                "no aud",
                signed(with(|c| {
                    c.as_object_mut().unwrap().remove("aud");
                })),
                NOW,
                "malformed",
            ),
            (
                "no scope",
                signed(with(|c| {
                    c.as_object_mut().unwrap().remove("scope");
                })),
                NOW,
                "malformed",
            ),
            (
                "float exp",
                signed(with(|c| c["exp"] = json!(1.9e9))),
                NOW,
                "malformed",
            ),
            (
                "string exp",
                signed(with(|c| c["exp"] = json!("1900000000"))),
                NOW,
                "malformed",
            ),
            (
                "exp before iat",
                signed(with(|c| c["exp"] = json!(NOW - 200))),
                NOW,
                "malformed",
            ),
            (
                "aud number",
                signed(with(|c| c["aud"] = json!(5))),
                NOW,
                "malformed",
            ),
            (
                "aud empty array",
                signed(with(|c| c["aud"] = json!([]))),
                NOW,
                "malformed",
            ),
            ("huge", "a".repeat(MAX_TOKEN_BYTES + 1), NOW, "malformed"),
            (
                "lifetime max + 1",
                signed(with(|c| c["exp"] = json!(NOW - 100 + MAX_LIFETIME + 1))),
                NOW,
                "lifetime_too_long",
            ),
            (
                "exp 2^62",
                signed(with(|c| c["exp"] = json!(1_i64 << 62))),
                NOW,
                "malformed",
            ),
            (
                "exp after 9999-12-31",
                signed(with(|c| c["exp"] = json!(clock::LATEST_CLAIM_TIME + 1))),
                NOW,
                "malformed",
            ),
            (
                "iat before 2000 (and a short lifetime)",
                signed(with(|c| {
                    c["iat"] = json!(clock::EARLIEST_CLAIM_TIME - 1);
                    c["exp"] = json!(clock::EARLIEST_CLAIM_TIME + 10);
                })),
                NOW,
                "malformed",
            ),
            (
                "negative iat",
                signed(with(|c| c["iat"] = json!(-5))),
                NOW,
                "malformed",
            ),
            (
                "nbf 2^62",
                signed(with(|c| c["nbf"] = json!(1_i64 << 62))),
                NOW,
                "malformed",
            ),
        ];
        for (name, token, now, code) in cases {
            match verify_consent(&token, &k.trust, &me(), now, LIMITS) {
                Ok(_) => panic!("{name}: accepted"),
                Err(e) => assert_eq!(e.code(), code, "{name}: {e}"),
            }
        }
    }

    #[test]
    fn sign_consent_round_trip_and_checks() {
        let k = keys();
        let req = ConsentRequest {
            issuer: "hr".into(),
            subject: "S-1".into(),
            audience: vec!["lobby".into(), "hall/term-9".into()],
            scopes: vec![UPLOAD_SCOPE.into()],
            lifetime_s: 3600,
            jti: None,
        };
        let t = sign_consent(&req, "consent-1", &k.consent, NOW).unwrap();
        let c = verify_consent(&t, &k.trust, &me(), NOW, LIMITS).unwrap();
        assert_eq!(c.issued_at, NOW);
        assert_eq!(c.expires_at, NOW + 3600);
        assert_eq!(c.audience, req.audience);
        assert!(uuid::Uuid::parse_str(&c.id).is_ok());

        let single = ConsentRequest {
            audience: vec!["lobby".into()],
            jti: Some("fixed".into()),
            ..req.clone()
        };
        let t = sign_consent(&single, "consent-1", &k.consent, NOW).unwrap();
        let claims = jws::peek_claims(&t).unwrap();
        assert_eq!(claims["aud"], "lobby");
        assert_eq!(claims["jti"], "fixed");

        let bad: Vec<(ConsentRequest, &str)> = vec![
            (
                ConsentRequest {
                    subject: "a b".into(),
                    ..req.clone()
                },
                "bad_subject",
            ),
            (
                ConsentRequest {
                    lifetime_s: 0,
                    ..req.clone()
                },
                "invalid_request",
            ),
            (
                ConsentRequest {
                    audience: vec![],
                    ..req.clone()
                },
                "invalid_request",
            ),
            (
                ConsentRequest {
                    scopes: vec!["a b".into()],
                    ..req.clone()
                },
                "invalid_request",
            ),
            (
                ConsentRequest {
                    issuer: String::new(),
                    ..req.clone()
                },
                "invalid_request",
            ),
            (
                ConsentRequest {
                    jti: Some(String::new()),
                    ..req.clone()
                },
                "invalid_request",
            ),
            (
                ConsentRequest {
                    lifetime_s: 1 << 62,
                    ..req.clone()
                },
                "invalid_request",
            ),
            (
                ConsentRequest {
                    lifetime_s: MAX_LIFETIME_LIMIT_S + 1,
                    ..req.clone()
                },
                "invalid_request",
            ),
        ];
        for (r, code) in bad {
            assert_eq!(
                sign_consent(&r, "consent-1", &k.consent, NOW)
                    .unwrap_err()
                    .code(),
                code,
                "{r:?}"
            );
        }
        assert_eq!(
            sign_consent(&req, "consent-1", b"junk", NOW)
                .unwrap_err()
                .code(),
            "signing_failed"
        );
    }
}
