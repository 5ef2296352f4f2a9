//! JWS compact serialization (RFC 7515) with EdDSA / Ed25519 (RFC 8037): the one
//! place where signatures are checked and made.
//!
//! [`verify`] parses the compact form strictly (three base64url segments, JSON
//! objects without duplicate members, `alg` exactly `EdDSA`, a `kid`, no `crit`),
//! looks the `kid` up in the trusted keys and checks the signature. It returns the
//! claims untouched: what they mean (times, audience, scope) is decided by
//! [`crate::consent`] and [`crate::command`], as pure functions of `now`.
//!
//! The small claim readers at the bottom ([`str_claim`], [`int_claim`],
//! [`audience`], [`audience_matches`]) are shared by both of those modules so
//! consents and commands read `aud`, `iat` and `exp` the same way.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::{Identity, Role, TrustedKey};

/// The only `alg` header value accepted or produced.
pub const ALG: &str = "EdDSA";

/// Length of an Ed25519 signature in bytes.
const ED25519_SIG_LEN: usize = 64;

/// Longest `kid` accepted in a header.
const MAX_KID_LEN: usize = 128;

/// A token whose signature checked out against a trusted key.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Header `kid`: which trusted key signed it (recorded with consents, audited).
    pub kid: String,
    /// Role of that key, so callers can refuse e.g. a fleet key signing a consent.
    pub role: Role,
    /// The claims object, not yet interpreted (times and audience are the caller's job).
    pub claims: Value,
}

/// Why a token could not be verified or signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    /// Not a well-formed EdDSA JWS compact token; the reason says which part.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header `kid` names no `[[trust]]` entry.
    #[error("unknown key: kid {0:?} is not a trusted key")]
    UnknownKey(String),
    /// The signature does not verify under the trusted key named by `kid`.
    #[error("bad signature: the token is not signed by the trusted key it names")]
    BadSignature,
    /// The private key given for signing is unusable (not Ed25519 PKCS#8).
    #[error("cannot sign: {0}")]
    BadSigningKey(String),
}

/// Verifies a compact JWS against the trusted keys and returns its claims.
///
/// Leading/trailing ASCII whitespace is ignored (it is outside the signed parts).
pub fn verify(token: &str, trust: &[TrustedKey]) -> Result<Verified, JwsError> {
    let token = token.trim_ascii();
    let parts = split_compact(token)?;
    let header = decode_object(parts[0], "header")?;
    let kid = check_header(&header)?;
    let key = trust
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| JwsError::UnknownKey(kid.clone()))?;

    let signature = URL_SAFE_NO_PAD
        .decode(parts[2])
        .map_err(|e| JwsError::Malformed(format!("signature is not base64url: {e}")))?;
    if signature.len() != ED25519_SIG_LEN {
        return Err(JwsError::Malformed(format!(
            "signature is {} bytes, Ed25519 needs {}",
            signature.len(),
            ED25519_SIG_LEN
        )));
    }
    // The signing input is the first two segments exactly as received. The
    // algorithm is fixed here (Ed25519), never taken from the header.
    let signing_input = &token[..parts[0].len() + 1 + parts[1].len()];
    UnparsedPublicKey::new(&ED25519, &key.public_key)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| JwsError::BadSignature)?;

    let claims = decode_object(parts[1], "claims")?;
    Ok(Verified {
        kid,
        role: key.role,
        claims: Value::Object(claims),
    })
}

/// Signs `claims` (serialized as a JSON object) with the Ed25519 PKCS#8 key,
/// header `{"typ":"JWT","alg":"EdDSA","kid":kid}`.
pub fn sign<T: serde::Serialize + ?Sized>(
    claims: &T,
    kid: &str,
    pkcs8_der: &[u8],
) -> Result<String, JwsError> {
    let claims = serde_json::to_value(claims)
        .map_err(|e| JwsError::Malformed(format!("claims cannot be serialized: {e}")))?;
    if !claims.is_object() {
        return Err(JwsError::Malformed("claims must be a JSON object".into()));
    }
    if kid.is_empty() || kid.len() > MAX_KID_LEN {
        return Err(JwsError::Malformed(format!(
            "kid must be 1..={MAX_KID_LEN} bytes"
        )));
    }
    let key_pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8_der)
        .map_err(|e| JwsError::BadSigningKey(format!("not an Ed25519 PKCS#8 key: {e}")))?;
    let header = SignHeader {
        typ: "JWT",
        alg: ALG,
        kid,
    };
    let header = serde_json::to_vec(&header)
        .map_err(|e| JwsError::Malformed(format!("header cannot be serialized: {e}")))?;
    let claims = serde_json::to_vec(&claims)
        .map_err(|e| JwsError::Malformed(format!("claims cannot be serialized: {e}")))?;
    let mut token = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = key_pair.sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
    Ok(token)
}

/// The protected header of a token we sign, members in this order.
#[derive(serde::Serialize)]
struct SignHeader<'a> {
    typ: &'static str,
    alg: &'static str,
    kid: &'a str,
}

/// Reads the claims of a compact JWS WITHOUT verifying it. Only for echoing
/// `jti`/`cmd` in a rejection reply; never base a decision on the result.
pub fn peek_claims(token: &str) -> Option<Map<String, Value>> {
    let parts = split_compact(token.trim_ascii()).ok()?;
    decode_object(parts[1], "claims").ok()
}

/// Splits into exactly three non-empty base64url segments.
fn split_compact(token: &str) -> Result<[&str; 3], JwsError> {
    if token.is_empty() {
        return Err(JwsError::Malformed("empty token".into()));
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(JwsError::Malformed(format!(
            "expected 3 dot-separated segments, found {}",
            parts.len()
        )));
    }
    for (name, part) in ["header", "claims", "signature"].iter().zip(&parts) {
        if part.is_empty() {
            return Err(JwsError::Malformed(format!("{name} segment is empty")));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(JwsError::Malformed(format!(
                "{name} segment is not base64url without padding"
            )));
        }
    }
    Ok([parts[0], parts[1], parts[2]])
}

/// Base64url-decodes a segment and parses it as a JSON object, refusing
/// duplicate member names (they invite parser disagreements).
fn decode_object(segment: &str, what: &str) -> Result<Map<String, Value>, JwsError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|e| JwsError::Malformed(format!("{what} is not base64url: {e}")))?;
    let StrictValue(value) = serde_json::from_slice(&bytes)
        .map_err(|e| JwsError::Malformed(format!("{what} is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(JwsError::Malformed(format!("{what} is not a JSON object"))),
    }
}

/// Checks `alg`, `crit`, `b64` and returns the `kid`.
fn check_header(header: &Map<String, Value>) -> Result<String, JwsError> {
    match header.get("alg") {
        Some(Value::String(alg)) if alg == ALG => {}
        Some(Value::String(alg)) => {
            return Err(JwsError::Malformed(format!(
                "header alg {alg:?} is not accepted, only {ALG}"
            )))
        }
        _ => return Err(JwsError::Malformed("header has no alg string".into())),
    }
    if header.contains_key("crit") {
        return Err(JwsError::Malformed(
            "header crit extensions are not supported".into(),
        ));
    }
    if header.get("b64").is_some_and(|b| b != &Value::Bool(true)) {
        return Err(JwsError::Malformed(
            "unencoded payloads (b64) are not supported".into(),
        ));
    }
    match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_KID_LEN => Ok(kid.clone()),
        Some(_) => Err(JwsError::Malformed(format!(
            "header kid must be a string of 1..={MAX_KID_LEN} bytes"
        ))),
        None => Err(JwsError::Malformed("header has no kid".into())),
    }
}

/// A JSON value parsed with duplicate object members rejected.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut seen = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value()?;
            if seen.insert(key.clone(), v).is_some() {
                return Err(de::Error::custom(format!("duplicate member {key:?}")));
            }
        }
        Ok(Value::Object(seen.into_iter().collect()))
    }
}

// ---- claim readers shared by consents and commands ----

/// A required string claim; `Err` names the claim and the problem.
pub fn str_claim<'a>(claims: &'a Value, name: &str) -> Result<&'a str, String> {
    match claims.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("claim {name} must be a string")),
        None => Err(format!("required claim {name} is missing")),
    }
}

/// A required integer claim (NumericDate in whole seconds); floats are refused.
pub fn int_claim(claims: &Value, name: &str) -> Result<i64, String> {
    match claims.get(name) {
        Some(v) => v
            .as_i64()
            .ok_or_else(|| format!("claim {name} must be an integer number of seconds")),
        None => Err(format!("required claim {name} is missing")),
    }
}

/// An optional integer claim such as `nbf`.
pub fn opt_int_claim(claims: &Value, name: &str) -> Result<Option<i64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(_) => int_claim(claims, name).map(Some),
    }
}

/// The required `aud` claim: a string or a non-empty array of strings.
pub fn audience(claims: &Value) -> Result<Vec<String>, String> {
    match claims.get("aud") {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "claim aud array must hold only strings".to_string())
            })
            .collect(),
        Some(Value::Array(_)) => Err("claim aud is an empty array".into()),
        Some(_) => Err("claim aud must be a string or an array of strings".into()),
        None => Err("required claim aud is missing".into()),
    }
}

/// True when some entry addresses this device: its site id or `site/device`.
pub fn audience_matches(aud: &[String], me: &Identity) -> bool {
    let device = format!("{}/{}", me.site_id, me.device_id);
    aud.iter().any(|a| *a == me.site_id || *a == device)
}

/// A printable identifier (`jti`): 1..=128 characters, no control characters.
pub fn valid_id(s: &str) -> bool {
    let n = s.chars().count();
    (1..=128).contains(&n) && !s.chars().any(char::is_control)
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Keys and hand-made tokens shared by the token tests.
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    /// A fresh Ed25519 key: (pkcs8, public).
    pub fn keypair() -> (Vec<u8>, [u8; 32]) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .unwrap()
            .as_ref()
            .to_vec();
        let kp = Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap();
        let mut pk = [0u8; 32];
        pk.copy_from_slice(kp.public_key().as_ref());
        (pkcs8, pk)
    }

    pub fn trusted(kid: &str, role: Role, pk: [u8; 32]) -> TrustedKey {
        TrustedKey {
            kid: kid.into(),
            role,
            public_key: pk,
        }
    }

    pub fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Builds a token by hand from raw header/claims JSON text, signed with ring.
    pub fn hand_token(header: &str, claims: &str, pkcs8: &[u8]) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8).unwrap();
        let sig = kp.sign(input.as_bytes());
        format!("{input}.{}", b64(sig.as_ref()))
    }

    pub fn me() -> Identity {
        Identity {
            site_id: "lobby".into(),
            device_id: "term-01".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use serde_json::json;

    struct Setup {
        pkcs8: Vec<u8>,
        trust: Vec<TrustedKey>,
        other_pkcs8: Vec<u8>,
    }

    fn setup() -> Setup {
        let (pkcs8, pk) = keypair();
        let (other_pkcs8, other_pk) = keypair();
        Setup {
            pkcs8,
            trust: vec![
                trusted("k1", Role::Consent, pk),
                trusted("k2", Role::Fleet, other_pk),
            ],
            other_pkcs8,
        }
    }

    #[test]
    fn sign_then_verify_round_trip() {
        let s = setup();
        let claims = json!({"sub": "S-1", "n": 5});
        let token = sign(&claims, "k1", &s.pkcs8).unwrap();
        let v = verify(&token, &s.trust).unwrap();
        assert_eq!(v.kid, "k1");
        assert_eq!(v.role, Role::Consent);
        assert_eq!(v.claims, claims);
        // The header is the standard one.
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], "k1");
        assert_eq!(header["typ"], "JWT");
        // Surrounding whitespace (e.g. a trailing newline) is tolerated.
        assert!(verify(&format!("  {token}\n"), &s.trust).is_ok());
    }

    #[test]
    fn hand_built_token_verifies() {
        // Interoperability: a token built by hand from RFC 7515 + ring verifies.
        let s = setup();
        let token = hand_token(
            r#"{"alg":"EdDSA","kid":"k1"}"#,
            r#"{"iss":"hr","sub":"S-9"}"#,
            &s.pkcs8,
        );
        let v = verify(&token, &s.trust).unwrap();
        assert_eq!(v.claims["sub"], "S-9");
    }

    #[test]
    fn signed_token_verifies_with_plain_ring() {
        // Interoperability the other way: our output is plain RFC 7515/8037.
        let s = setup();
        let token = sign(&json!({"x": "y"}), "k1", &s.pkcs8).unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let pk = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ED25519,
            s.trust[0].public_key,
        );
        pk.verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
            .unwrap();
        let payload = input.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims, json!({"x": "y"}));
    }

    #[test]
    fn rejections() {
        let s = setup();
        let good = hand_token(r#"{"alg":"EdDSA","kid":"k1"}"#, r#"{"a":1}"#, &s.pkcs8);
        let parts: Vec<&str> = good.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], b64(br#"{"a":2}"#), parts[2]);
        let forged = hand_token(
            r#"{"alg":"EdDSA","kid":"k1"}"#,
            r#"{"a":1}"#,
            &s.other_pkcs8,
        );
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","kid":"k1"}"#),
            b64(br#"{"a":1}"#)
        );
        let none_sig = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"none","kid":"k1"}"#),
            b64(br#"{"a":1}"#),
            parts[2]
        );
        let hs256 = {
            let input = format!(
                "{}.{}",
                b64(br#"{"alg":"HS256","kid":"k1"}"#),
                b64(br#"{"a":1}"#)
            );
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &s.trust[0].public_key);
            let tag = ring::hmac::sign(&key, input.as_bytes());
            format!("{input}.{}", b64(tag.as_ref()))
        };
        let short_sig = format!("{}.{}.{}", parts[0], parts[1], b64(&[0u8; 10]));
        let zero_sig = format!("{}.{}.{}", parts[0], parts[1], b64(&[0u8; 64]));
        let padded = format!("{}.{}.{}=", parts[0], parts[1], parts[2]);

        let cases: Vec<(&str, String, JwsError)> = vec![
            ("empty", String::new(), JwsError::Malformed(String::new())),
            (
                "garbage",
                "not a token".into(),
                JwsError::Malformed(String::new()),
            ),
            (
                "two parts",
                format!("{}.{}", parts[0], parts[1]),
                JwsError::Malformed(String::new()),
            ),
            (
                "four parts",
                format!("{good}.x"),
                JwsError::Malformed(String::new()),
            ),
            ("padding", padded, JwsError::Malformed(String::new())),
            ("tampered payload", tampered, JwsError::BadSignature),
            (
                "other key claims trusted kid",
                forged,
                JwsError::BadSignature,
            ),
            ("zero signature", zero_sig, JwsError::BadSignature),
            (
                "short signature",
                short_sig,
                JwsError::Malformed(String::new()),
            ),
            (
                "alg none, no signature",
                none,
                JwsError::Malformed(String::new()),
            ),
            (
                "alg none, with signature",
                none_sig,
                JwsError::Malformed(String::new()),
            ),
            (
                "HS256 with public key as secret",
                hs256,
                JwsError::Malformed(String::new()),
            ),
            (
                "no kid",
                hand_token(r#"{"alg":"EdDSA"}"#, r#"{"a":1}"#, &s.pkcs8),
                JwsError::Malformed(String::new()),
            ),
            (
                "numeric kid",
                hand_token(r#"{"alg":"EdDSA","kid":1}"#, r#"{"a":1}"#, &s.pkcs8),
                JwsError::Malformed(String::new()),
            ),
            (
                "unknown kid",
                hand_token(r#"{"alg":"EdDSA","kid":"zz"}"#, r#"{"a":1}"#, &s.pkcs8),
                JwsError::UnknownKey("zz".into()),
            ),
            (
                "crit header",
                hand_token(
                    r#"{"alg":"EdDSA","kid":"k1","crit":["exp"],"exp":1}"#,
                    r#"{"a":1}"#,
                    &s.pkcs8,
                ),
                JwsError::Malformed(String::new()),
            ),
            (
                "b64 false",
                hand_token(
                    r#"{"alg":"EdDSA","kid":"k1","b64":false}"#,
                    r#"{"a":1}"#,
                    &s.pkcs8,
                ),
                JwsError::Malformed(String::new()),
            ),
            (
                "duplicate header member",
                hand_token(
                    r#"{"alg":"EdDSA","kid":"k1","kid":"k2"}"#,
                    r#"{"a":1}"#,
                    &s.pkcs8,
                ),
                JwsError::Malformed(String::new()),
            ),
            (
                "duplicate claim",
                hand_token(
                    r#"{"alg":"EdDSA","kid":"k1"}"#,
                    r#"{"a":1,"a":2}"#,
                    &s.pkcs8,
                ),
                JwsError::Malformed(String::new()),
            ),
            (
                "claims not an object",
                hand_token(r#"{"alg":"EdDSA","kid":"k1"}"#, r#"[1,2]"#, &s.pkcs8),
                JwsError::Malformed(String::new()),
            ),
            (
                "claims not JSON",
                hand_token(r#"{"alg":"EdDSA","kid":"k1"}"#, "\u{0}\u{1}", &s.pkcs8),
                JwsError::Malformed(String::new()),
            ),
        ];
        for (name, token, want) in cases {
            let got = verify(&token, &s.trust).expect_err(name);
            assert_eq!(
                std::mem::discriminant(&got),
                std::mem::discriminant(&want),
                "{name}: got {got:?}"
            );
            if let JwsError::UnknownKey(k) = &want {
                assert_eq!(got, JwsError::UnknownKey(k.clone()), "{name}");
            }
        }
    }

    #[test]
    fn sign_rejects_bad_input() {
        let s = setup();
        assert!(matches!(
            sign(&json!({}), "k1", b"not a key"),
            Err(JwsError::BadSigningKey(_))
        ));
        assert!(matches!(
            sign(&json!([1]), "k1", &s.pkcs8),
            Err(JwsError::Malformed(_))
        ));
        assert!(matches!(
            sign(&json!({}), "", &s.pkcs8),
            Err(JwsError::Malformed(_))
        ));
    }

    #[test]
    fn claim_readers() {
        let c = json!({"s": "x", "i": 5, "f": 5.5, "big": u64::MAX, "aud": ["a", "lobby/term-01"]});
        assert_eq!(str_claim(&c, "s"), Ok("x"));
        assert!(str_claim(&c, "i").is_err());
        assert!(str_claim(&c, "nope").is_err());
        assert_eq!(int_claim(&c, "i"), Ok(5));
        assert!(int_claim(&c, "f").is_err());
        assert!(int_claim(&c, "big").is_err());
        assert_eq!(opt_int_claim(&c, "nope"), Ok(None));
        let aud = audience(&c).unwrap();
        assert!(audience_matches(&aud, &me()));
        assert!(audience(&json!({"aud": []})).is_err());
        assert!(audience(&json!({"aud": [1]})).is_err());
        assert!(audience(&json!({"aud": 1})).is_err());
        assert!(audience(&json!({})).is_err());
        assert!(!audience_matches(
            &["lobby/term-02".into(), "other".into()],
            &me()
        ));
        assert!(valid_id("abc"));
        assert!(!valid_id(""));
        assert!(!valid_id("a\nb"));
        assert!(!valid_id(&"x".repeat(129)));
    }

    #[test]
    fn peek_reads_unverified_claims() {
        let t = format!("{}.{}.{}", b64(b"{}"), b64(br#"{"jti":"j"}"#), b64(b"x"));
        assert_eq!(peek_claims(&t).unwrap()["jti"], "j");
        assert!(peek_claims("a.b").is_none());
    }
}
