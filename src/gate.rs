//! The consent gate (SPEC invariants 1, 2 and 4): may a capture of this subject
//! be kept and uploaded right now? A pure function of the subject's stored
//! consents, its latest revocation, the trusted keys, this device's identity
//! and `now`. This module is the one place the rule is written
//! (ARCHITECTURE I1).
//!
//! # The consent rule
//!
//! A stored consent **allows uploading at `now`** when all of these hold,
//! checked in this order ([`check`]; the failure codes are [`DropReason`]s):
//!
//! 1. *signed* — its token still verifies under the current trusted keys, by a
//!    key of role `consent` with the `kid` it was stored with. A key removed
//!    from the config, demoted to `fleet`, or replaced under the same `kid`
//!    voids everything it signed (`key_not_trusted`).
//! 2. *not revoked* — it was issued after the subject's latest revocation:
//!    `iat > revoked_before` ([`is_revoked`]; `revoked`).
//! 3. *addressed* — `aud` names this site or this device (`wrong_audience`).
//! 4. *scoped* — `scope` includes [`UPLOAD_SCOPE`] (`missing_scope`).
//! 5. *current* — `now < exp` (`expired`).
//!
//! Terms 3–5 are the ones a token can be judged on alone ([`check_terms`]).
//! A subject's captures may be kept and uploaded while at least one of its
//! stored consents allows uploading ([`allowing`]); a capture is judged by its
//! subject ([`decide`]). When none does, the reported reason is the one of the
//! consent that came closest ([`DropReason`] order).
//!
//! # Where the rule is applied
//!
//! The store loads a subject's consents and tombstone and applies the rule
//! (`Store::decide`, `Store::sweep_consents`); nothing else restates it. It
//! keeps a [`SignatureMemo`] so term 1 is not re-verified for every subject on
//! every run while the trusted keys stay the same.
//! - **Intake**, before a capture is written: `Store::decide` under the store
//!   lock, in the same critical section as the insert, so the insert needs no
//!   second check (`crate::intake`).
//! - **Hand-over**, before each publish to MQTT: `Store::decide` under the
//!   store lock; a refused subject's queued captures are purged instead
//!   (`crate::uplink`).
//! - **Housekeeping**, every few seconds: `Store::sweep_consents` purges the
//!   queued captures of every subject the rule refuses (`consent_expired` when
//!   expiry is the cause, `consent_invalid` otherwise), so a withdrawn trust
//!   key or an expiry takes effect while the broker is offline too.
//! - **Token arrival** (`crate::consent::verify_consent`) checks terms 3–5 with
//!   [`check_terms`]; it checks the signature and role itself, with finer error
//!   codes, while parsing, and the store refuses a revoked consent with
//!   [`is_revoked`] when adding it.

use std::collections::HashMap;

use ring::digest;

use crate::config::{Identity, Role, TrustedKey};
use crate::ids::SubjectId;
use crate::jws::{self, audience_matches};

/// The scope a consent must include for captures to be uploaded.
pub const UPLOAD_SCOPE: &str = "capture:upload";

/// A consent token that passed verification on arrival; what the ledger
/// stores and what the rule is applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    /// The token's `jti`: the consent id quoted in every upload envelope.
    pub id: String,
    /// The subject (`sub`) the consent is about.
    pub subject: SubjectId,
    /// Who issued it (`iss`), for audit and listing.
    pub issuer: String,
    /// `iat`, unix seconds: compared against the subject's latest revocation.
    pub issued_at: i64,
    /// `exp`, unix seconds: the consent stops working at this instant.
    pub expires_at: i64,
    /// `aud` entries (site ids or `site/device`), kept so the rule can re-check them.
    pub audience: Vec<String>,
    /// `scope` split on spaces; uploading needs [`UPLOAD_SCOPE`].
    pub scopes: Vec<String>,
    /// Header `kid` of the signing key, so a key removed from config stops the consent.
    pub kid: String,
    /// The compact JWS as received, kept for listing and re-verification.
    pub token: String,
}

/// The gate's verdict for one capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep / upload; quote this consent id in the envelope.
    Accept {
        /// The subject the capture names (a capture without one is never accepted).
        subject: SubjectId,
        /// `jti` of the consent that allows it (the one expiring last).
        consent_id: String,
    },
    /// Drop the capture (never store it; purge it if queued).
    Drop(DropReason),
}

/// Why a capture was dropped, most informative first reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The capture names no subject.
    NoSubject,
    /// No stored consent for the subject.
    NoConsent,
    /// Rule term 1: the token no longer verifies under a trusted consent key
    /// with its `kid` (key removed, demoted or replaced).
    KeyNotTrusted,
    /// Rule term 2: issued at or before the subject's latest revocation.
    Revoked,
    /// Rule term 3: addressed to another site or device.
    WrongAudience,
    /// Rule term 4: lacks the `capture:upload` scope.
    MissingScope,
    /// Rule term 5: past its `exp`.
    Expired,
}

impl DropReason {
    /// Stable code for logs, audit and counters.
    pub fn code(&self) -> &'static str {
        match self {
            DropReason::NoSubject => "no_subject",
            DropReason::NoConsent => "no_consent",
            DropReason::KeyNotTrusted => "key_not_trusted",
            DropReason::Revoked => "revoked",
            DropReason::WrongAudience => "wrong_audience",
            DropReason::MissingScope => "missing_scope",
            DropReason::Expired => "expired",
        }
    }

    /// How close a consent failing for this reason came to being valid; the
    /// closest one is reported. The checks on one consent run in this order,
    /// so e.g. a subject whose consents are all past `exp` (and otherwise
    /// fine) gets `Expired`, and one with an old revoked consent and a newer
    /// expired one also gets `Expired`.
    fn rank(self) -> u8 {
        match self {
            DropReason::NoSubject => 0,
            DropReason::NoConsent => 1,
            DropReason::KeyNotTrusted => 2,
            DropReason::Revoked => 3,
            DropReason::WrongAudience => 4,
            DropReason::MissingScope => 5,
            DropReason::Expired => 6,
        }
    }
}

/// Which of the terms a token can be judged on alone (rule terms 3–5) fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokenTerm {
    /// Term 3: not addressed to this site or device.
    WrongAudience,
    /// Term 4: no upload scope.
    MissingScope,
    /// Term 5: `now >= exp`.
    Expired,
}

impl From<BrokenTerm> for DropReason {
    fn from(t: BrokenTerm) -> Self {
        match t {
            BrokenTerm::WrongAudience => DropReason::WrongAudience,
            BrokenTerm::MissingScope => DropReason::MissingScope,
            BrokenTerm::Expired => DropReason::Expired,
        }
    }
}

/// Decides whether a capture of `subject` may be kept/uploaded at `now`:
/// accepted iff some stored consent of that subject allows uploading (see the
/// module docs). `consents` are the stored consents of the subject (entries
/// for other subjects are ignored); `revoked_before` is its latest revocation.
pub fn decide(
    subject: Option<&SubjectId>,
    consents: &[Consent],
    revoked_before: Option<i64>,
    trust: &[TrustedKey],
    me: &Identity,
    now: i64,
) -> Decision {
    let mut signed = |c: &Consent| still_signed(c, trust);
    decide_with(subject, consents, revoked_before, &mut signed, me, now)
}

/// [`decide`] with rule term 1 answered by `signed` ([`still_signed`] under
/// the trusted keys, e.g. through a [`SignatureMemo`]).
pub fn decide_with(
    subject: Option<&SubjectId>,
    consents: &[Consent],
    revoked_before: Option<i64>,
    signed: &mut dyn FnMut(&Consent) -> bool,
    me: &Identity,
    now: i64,
) -> Decision {
    let Some(subject) = subject else {
        return Decision::Drop(DropReason::NoSubject);
    };
    let own = consents.iter().filter(|c| c.subject == *subject);
    match allowing_with(own, revoked_before, signed, me, now) {
        Ok(c) => Decision::Accept {
            subject: subject.clone(),
            consent_id: c.id.clone(),
        },
        Err(reason) => Decision::Drop(reason),
    }
}

/// The rule for one subject: of `consents` (all the subject's), the one that
/// allows uploading at `now` and expires last, or why none does
/// ([`DropReason::NoConsent`] for none at all, else the closest failure).
pub fn allowing<'a>(
    consents: impl IntoIterator<Item = &'a Consent>,
    revoked_before: Option<i64>,
    trust: &[TrustedKey],
    me: &Identity,
    now: i64,
) -> Result<&'a Consent, DropReason> {
    let mut signed = |c: &Consent| still_signed(c, trust);
    allowing_with(consents, revoked_before, &mut signed, me, now)
}

/// [`allowing`] with rule term 1 answered by `signed` ([`still_signed`]
/// under the trusted keys, e.g. through a [`SignatureMemo`]).
pub fn allowing_with<'a>(
    consents: impl IntoIterator<Item = &'a Consent>,
    revoked_before: Option<i64>,
    signed: &mut dyn FnMut(&Consent) -> bool,
    me: &Identity,
    now: i64,
) -> Result<&'a Consent, DropReason> {
    let mut best: Option<&Consent> = None;
    let mut reason = DropReason::NoConsent;
    for c in consents {
        match check_signed(c, signed(c), revoked_before, me, now) {
            Ok(()) => {
                let later = best.is_none_or(|b| {
                    (c.expires_at, c.issued_at, &c.id) > (b.expires_at, b.issued_at, &b.id)
                });
                if later {
                    best = Some(c);
                }
            }
            Err(r) if r.rank() > reason.rank() => reason = r,
            Err(_) => {}
        }
    }
    best.ok_or(reason)
}

/// The rule for one stored consent: `Ok` when it allows uploading at `now`,
/// else the first term it fails (module docs, terms 1–5 in order).
pub fn check(
    c: &Consent,
    revoked_before: Option<i64>,
    trust: &[TrustedKey],
    me: &Identity,
    now: i64,
) -> Result<(), DropReason> {
    check_signed(c, still_signed(c, trust), revoked_before, me, now)
}

/// [`check`] with rule term 1 already answered (`signed`).
fn check_signed(
    c: &Consent,
    signed: bool,
    revoked_before: Option<i64>,
    me: &Identity,
    now: i64,
) -> Result<(), DropReason> {
    if !signed {
        return Err(DropReason::KeyNotTrusted);
    }
    if is_revoked(c, revoked_before) {
        return Err(DropReason::Revoked);
    }
    check_terms(c, me, now).map_err(DropReason::from)
}

/// The instants between which the rule's answer at `now` on `consents`
/// stays the same, `[from, until)`: the only term that reads the time is
/// term 5 (`now < exp`), so the answer changes only where `now` crosses a
/// consent's `expires_at`. `from` is the latest `expires_at` at or before
/// `now` (`i64::MIN` if none), `until` the earliest after it (`i64::MAX` if
/// none). A clock set back before `from` is outside the interval too.
pub fn steady_between(consents: &[Consent], now: i64) -> (i64, i64) {
    consents
        .iter()
        .fold((i64::MIN, i64::MAX), |(from, until), c| {
            if c.expires_at <= now {
                (from.max(c.expires_at), until)
            } else {
                (from, until.min(c.expires_at))
            }
        })
}

/// Rule term 1: the stored token still verifies under `trust`, signed by a
/// key of role `consent` with the `kid` the consent was stored with.
pub fn still_signed(c: &Consent, trust: &[TrustedKey]) -> bool {
    jws::verify(&c.token, trust).is_ok_and(|v| v.kid == c.kid && v.role == Role::Consent)
}

/// Remembered answers of rule term 1 ([`still_signed`]), so that applying the
/// rule every few seconds to many queued subjects does not verify every
/// signature again. An answer depends only on the consent's `kid` and token
/// and on the trusted keys: it is kept per (`kid`, token) digest and all are
/// forgotten when the trusted keys differ from the last call's. Same answers
/// as [`still_signed`].
#[derive(Debug, Default)]
pub struct SignatureMemo {
    /// The trusted keys the answers hold for.
    trust: Vec<TrustedKey>,
    /// SHA-256 of (`kid`, token) → answer.
    answers: HashMap<[u8; 32], bool>,
}

impl SignatureMemo {
    /// At most this many answers are kept (about 40 bytes each); when full,
    /// all are forgotten and computed again as needed.
    pub const CAPACITY: usize = 8192;

    /// [`still_signed`]`(c, trust)`, remembered.
    pub fn still_signed(&mut self, c: &Consent, trust: &[TrustedKey]) -> bool {
        if self.trust != trust {
            self.trust = trust.to_vec();
            self.answers.clear();
        }
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in [c.kid.as_bytes(), c.token.as_bytes()] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        if let Some(&answer) = self.answers.get(&key) {
            return answer;
        }
        if self.answers.len() >= Self::CAPACITY {
            self.answers.clear();
        }
        let answer = still_signed(c, trust);
        self.answers.insert(key, answer);
        answer
    }

    /// How many answers are remembered.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

/// Rule term 2 (negated): the consent falls under the subject's latest
/// revocation (`issued_at <= revoked_before`) and is void.
pub fn is_revoked(c: &Consent, revoked_before: Option<i64>) -> bool {
    revoked_before.is_some_and(|r| c.issued_at <= r)
}

/// Rule terms 3–5, which need nothing but the consent, this device and
/// `now`: addressed here, upload scope, `now < exp`; the first one failing.
pub fn check_terms(c: &Consent, me: &Identity, now: i64) -> Result<(), BrokenTerm> {
    if !audience_matches(&c.audience, me) {
        return Err(BrokenTerm::WrongAudience);
    }
    if !c.scopes.iter().any(|s| s == UPLOAD_SCOPE) {
        return Err(BrokenTerm::MissingScope);
    }
    if now >= c.expires_at {
        return Err(BrokenTerm::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jws::testkit::{keypair, me, trusted};
    use serde_json::json;
    use std::sync::OnceLock;

    const NOW: i64 = 1_800_000_000;

    /// The consent signing key (pkcs8, public) and the fleet key's public half.
    fn keys() -> &'static (Vec<u8>, [u8; 32], [u8; 32]) {
        static KEYS: OnceLock<(Vec<u8>, [u8; 32], [u8; 32])> = OnceLock::new();
        KEYS.get_or_init(|| {
            let (pkcs8, public) = keypair();
            let (_, fleet) = keypair();
            (pkcs8, public, fleet)
        })
    }

    fn trust() -> Vec<TrustedKey> {
        let (_, consent, fleet) = keys();
        vec![
            trusted("consent-1", Role::Consent, *consent),
            trusted("fleet-1", Role::Fleet, *fleet),
        ]
    }

    fn sid(s: &str) -> SubjectId {
        SubjectId::new(s).unwrap()
    }

    /// A token signed by the trusted `consent-1` key.
    fn token() -> String {
        static TOKEN: OnceLock<String> = OnceLock::new();
        TOKEN
            .get_or_init(|| {
                let claims = json!({ "sub": "S-1", "jti": "t" });
                jws::sign(&claims, "consent-1", &keys().0).unwrap()
            })
            .clone()
    }

    /// A consent valid at NOW; tests change one field.
    fn consent(id: &str) -> Consent {
        Consent {
            id: id.into(),
            subject: sid("S-1"),
            issuer: "hr".into(),
            issued_at: NOW - 1000,
            expires_at: NOW + 1000,
            audience: vec!["lobby".into()],
            scopes: vec![UPLOAD_SCOPE.into()],
            kid: "consent-1".into(),
            token: token(),
        }
    }

    fn with(id: &str, f: impl FnOnce(&mut Consent)) -> Consent {
        let mut c = consent(id);
        f(&mut c);
        c
    }

    fn accept(id: &str) -> Decision {
        Decision::Accept {
            subject: sid("S-1"),
            consent_id: id.into(),
        }
    }

    fn drop(r: DropReason) -> Decision {
        Decision::Drop(r)
    }

    /// (name, subject, stored consents, revoked_before, now, expected).
    type Case = (
        &'static str,
        Option<&'static str>,
        Vec<Consent>,
        Option<i64>,
        i64,
        Decision,
    );

    #[test]
    fn decision_table() {
        use DropReason::*;
        let rb = NOW - 1000; // equals the default consent's iat
        let cases: Vec<Case> = vec![
            (
                "valid",
                Some("S-1"),
                vec![consent("a")],
                None,
                NOW,
                accept("a"),
            ),
            (
                "no subject",
                None,
                vec![consent("a")],
                None,
                NOW,
                drop(NoSubject),
            ),
            (
                "no consents",
                Some("S-1"),
                vec![],
                None,
                NOW,
                drop(NoConsent),
            ),
            (
                "other subject only",
                Some("S-2"),
                vec![consent("a")],
                None,
                NOW,
                drop(NoConsent),
            ),
            (
                "one second before exp",
                Some("S-1"),
                vec![consent("a")],
                None,
                NOW + 999,
                accept("a"),
            ),
            (
                "exactly at exp",
                Some("S-1"),
                vec![consent("a")],
                None,
                NOW + 1000,
                drop(Expired),
            ),
            (
                "iat = revoked_before",
                Some("S-1"),
                vec![consent("a")],
                Some(rb),
                NOW,
                drop(Revoked),
            ),
            (
                "iat = revoked_before + 1",
                Some("S-1"),
                vec![consent("a")],
                Some(rb - 1),
                NOW,
                accept("a"),
            ),
            (
                "missing scope",
                Some("S-1"),
                vec![with("a", |c| c.scopes = vec!["x".into()])],
                None,
                NOW,
                drop(MissingScope),
            ),
            (
                "scope match is exact",
                Some("S-1"),
                vec![with("a", |c| {
                    c.scopes = vec!["capture:uploads".into(), "CAPTURE:UPLOAD".into()]
                })],
                None,
                NOW,
                drop(MissingScope),
            ),
            (
                "other site",
                Some("S-1"),
                vec![with("a", |c| c.audience = vec!["hall".into()])],
                None,
                NOW,
                drop(WrongAudience),
            ),
            (
                "other device",
                Some("S-1"),
                vec![with("a", |c| c.audience = vec!["lobby/term-02".into()])],
                None,
                NOW,
                drop(WrongAudience),
            ),
            (
                "this device",
                Some("S-1"),
                vec![with("a", |c| c.audience = vec!["lobby/term-01".into()])],
                None,
                NOW,
                accept("a"),
            ),
            (
                "stored kid not trusted",
                Some("S-1"),
                vec![with("a", |c| c.kid = "old".into())],
                None,
                NOW,
                drop(KeyNotTrusted),
            ),
            (
                "stored kid is a fleet key",
                Some("S-1"),
                vec![with("a", |c| c.kid = "fleet-1".into())],
                None,
                NOW,
                drop(KeyNotTrusted),
            ),
            (
                "token does not verify",
                Some("S-1"),
                vec![with("a", |c| {
                    let mut t = c.token.clone().into_bytes();
                    let last = t.len() - 2;
                    t[last] = if t[last] == b'A' { b'B' } else { b'A' };
                    c.token = String::from_utf8(t).unwrap();
                })],
                None,
                NOW,
                drop(KeyNotTrusted),
            ),
            (
                "token is not a token",
                Some("S-1"),
                vec![with("a", |c| c.token = String::new())],
                None,
                NOW,
                drop(KeyNotTrusted),
            ),
            (
                "untrusted key is reported before expiry",
                Some("S-1"),
                vec![with("a", |c| {
                    c.kid = "old".into();
                    c.expires_at = NOW - 1;
                })],
                None,
                NOW,
                drop(KeyNotTrusted),
            ),
            (
                "all expired",
                Some("S-1"),
                vec![
                    with("a", |c| c.expires_at = NOW - 5),
                    with("b", |c| c.expires_at = NOW),
                ],
                None,
                NOW,
                drop(Expired),
            ),
            (
                "revoked old and expired new reports expired",
                Some("S-1"),
                vec![
                    consent("old"),
                    with("new", |c| {
                        c.issued_at = rb + 1;
                        c.expires_at = NOW - 1;
                    }),
                ],
                Some(rb),
                NOW,
                drop(Expired),
            ),
            (
                "revoked one, valid newer one",
                Some("S-1"),
                vec![consent("old"), with("new", |c| c.issued_at = rb + 1)],
                Some(rb),
                NOW,
                accept("new"),
            ),
            (
                "untrusted one, valid one",
                Some("S-1"),
                vec![with("gone", |c| c.kid = "old".into()), consent("ok")],
                None,
                NOW,
                accept("ok"),
            ),
            (
                "latest expiry wins",
                Some("S-1"),
                vec![
                    consent("a"),
                    with("b", |c| c.expires_at = NOW + 5000),
                    with("c", |c| c.expires_at = NOW + 10),
                ],
                None,
                NOW,
                accept("b"),
            ),
            (
                "same expiry: latest issued wins",
                Some("S-1"),
                vec![consent("a"), with("b", |c| c.issued_at = NOW - 10)],
                None,
                NOW,
                accept("b"),
            ),
            (
                "invalid consent with later expiry is not picked",
                Some("S-1"),
                vec![
                    consent("a"),
                    with("b", |c| {
                        c.expires_at = NOW + 5000;
                        c.scopes = vec![];
                    }),
                ],
                None,
                NOW,
                accept("a"),
            ),
            (
                "consent of another subject is ignored",
                Some("S-1"),
                vec![
                    with("a", |c| c.subject = sid("S-2")),
                    with("b", |c| c.expires_at = NOW - 1),
                ],
                None,
                NOW,
                drop(Expired),
            ),
        ];
        for (name, subject, consents, rb, now, want) in cases {
            let subject = subject.map(sid);
            assert_eq!(
                decide(subject.as_ref(), &consents, rb, &trust(), &me(), now),
                want,
                "{name}"
            );
        }
    }

    /// Rule term 1 follows the trusted keys of the moment: the same stored
    /// consent under changed trust.
    #[test]
    fn trust_changes_table() {
        let (_, consent_pk, fleet_pk) = *keys();
        let (_, other_pk) = keypair();
        let fleet = trusted("fleet-1", Role::Fleet, fleet_pk);
        let cases: Vec<(&str, Vec<TrustedKey>, Decision)> = vec![
            ("unchanged", trust(), accept("a")),
            (
                "another key added",
                vec![
                    trusted("consent-2", Role::Consent, other_pk),
                    trusted("consent-1", Role::Consent, consent_pk),
                ],
                accept("a"),
            ),
            (
                "key removed",
                vec![fleet.clone()],
                drop(DropReason::KeyNotTrusted),
            ),
            ("no keys at all", vec![], drop(DropReason::KeyNotTrusted)),
            (
                "key replaced under the same kid",
                vec![trusted("consent-1", Role::Consent, other_pk), fleet.clone()],
                drop(DropReason::KeyNotTrusted),
            ),
            (
                "key demoted to fleet",
                vec![trusted("consent-1", Role::Fleet, consent_pk)],
                drop(DropReason::KeyNotTrusted),
            ),
            (
                "same key under another kid",
                vec![trusted("consent-9", Role::Consent, consent_pk)],
                drop(DropReason::KeyNotTrusted),
            ),
        ];
        let c = consent("a");
        for (name, trust, want) in cases {
            assert_eq!(
                decide(
                    Some(&sid("S-1")),
                    std::slice::from_ref(&c),
                    None,
                    &trust,
                    &me(),
                    NOW
                ),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn check_and_allowing_agree_with_decide() {
        let t = trust();
        let ok = consent("ok");
        let expired = with("exp", |c| c.expires_at = NOW);
        assert_eq!(check(&ok, None, &t, &me(), NOW), Ok(()));
        assert_eq!(
            check(&expired, None, &t, &me(), NOW),
            Err(DropReason::Expired)
        );
        assert_eq!(
            check(&ok, Some(ok.issued_at), &t, &me(), NOW),
            Err(DropReason::Revoked)
        );
        let both = [expired.clone(), ok.clone()];
        assert_eq!(allowing(&both, None, &t, &me(), NOW), Ok(&ok));
        assert_eq!(
            allowing(&[expired], None, &t, &me(), NOW),
            Err(DropReason::Expired)
        );
        assert_eq!(
            allowing(&[], None, &t, &me(), NOW),
            Err(DropReason::NoConsent)
        );
    }

    #[test]
    fn signature_memo_gives_the_answers_of_still_signed() {
        let (_, consent_pk, _) = *keys();
        let (_, other_pk) = keypair();
        let good = consent("a");
        let other_kid = with("b", |c| c.kid = "consent-2".into());
        let tampered = with("c", |c| c.token.push('x'));
        let trusts = [
            trust(),
            vec![],
            vec![trusted("consent-1", Role::Consent, other_pk)],
            vec![
                trusted("consent-1", Role::Consent, consent_pk),
                trusted("consent-2", Role::Consent, consent_pk),
            ],
            trust(),
        ];
        let mut memo = SignatureMemo::default();
        for t in &trusts {
            // Twice each: the second answer comes from the memo.
            for _ in 0..2 {
                for c in [&good, &other_kid, &tampered] {
                    assert_eq!(
                        memo.still_signed(c, t),
                        still_signed(c, t),
                        "{} under {t:?}",
                        c.id
                    );
                }
            }
            assert_eq!(
                memo.len(),
                3,
                "one answer per (kid, token), kept for this trust"
            );
        }
        assert!(memo.still_signed(&good, &trust()));
        assert!(!memo.still_signed(&other_kid, &trust()));
        // A consent whose token changes under the same id is verified anew.
        let forged = with("a", |c| c.token = token().replace('.', ".x"));
        assert!(!memo.still_signed(&forged, &trust()));
        // decide_with through the memo decides like decide.
        let consents = [good.clone(), other_kid.clone()];
        for t in &trusts {
            let mut signed = |c: &Consent| memo.still_signed(c, t);
            assert_eq!(
                decide_with(Some(&sid("S-1")), &consents, None, &mut signed, &me(), NOW),
                decide(Some(&sid("S-1")), &consents, None, t, &me(), NOW),
            );
        }
    }

    #[test]
    fn the_decision_holds_between_the_expiries_around_now() {
        // Consents expiring at NOW+10, NOW+20 (one revoked), NOW+30, each a
        // different id; every `now` from before the first to after the last.
        let exps = [NOW + 10, NOW + 20, NOW + 30];
        let consents: Vec<Consent> = exps
            .iter()
            .enumerate()
            .map(|(i, e)| {
                with(&format!("c{i}"), |c| {
                    c.expires_at = *e;
                    c.issued_at = NOW - 100 + i as i64;
                })
            })
            .collect();
        let revoked = Some(NOW - 99); // revokes c0 and c1, not c2
        let at = |now| decide(Some(&sid("S-1")), &consents, revoked, &trust(), &me(), now);
        for now in NOW - 5..NOW + 40 {
            let (from, until) = steady_between(&consents, now);
            assert!(from <= now && now < until, "{now}: [{from}, {until})");
            let here = at(now);
            for t in from.max(NOW - 10)..until.min(NOW + 45) {
                assert_eq!(at(t), here, "the answer at {now} holds at {t}");
            }
            // The ends are expiries: past them the rule reads another term.
            assert!(from == i64::MIN || exps.contains(&from));
            assert!(until == i64::MAX || exps.contains(&until));
        }
        assert_eq!(steady_between(&consents, NOW), (i64::MIN, NOW + 10));
        assert_eq!(steady_between(&consents, NOW + 20), (NOW + 20, NOW + 30));
        assert_eq!(steady_between(&consents, NOW + 30), (NOW + 30, i64::MAX));
        assert_eq!(steady_between(&[], NOW), (i64::MIN, i64::MAX));
    }

    #[test]
    fn signature_memo_is_bounded() {
        let mut memo = SignatureMemo::default();
        let t = trust();
        for i in 0..SignatureMemo::CAPACITY + 10 {
            let c = with("a", |c| c.token = format!("not-a-token-{i}"));
            assert!(!memo.still_signed(&c, &t));
        }
        assert!(memo.len() <= SignatureMemo::CAPACITY);
        assert!(!memo.is_empty());
    }

    #[test]
    fn terms_in_order() {
        let c = consent("a");
        assert_eq!(check_terms(&c, &me(), NOW), Ok(()));
        let all_wrong = with("a", |c| {
            c.audience = vec!["hall".into()];
            c.scopes = vec![];
            c.expires_at = NOW;
        });
        assert_eq!(
            check_terms(&all_wrong, &me(), NOW),
            Err(BrokenTerm::WrongAudience)
        );
        let scope_and_exp = with("a", |c| {
            c.scopes = vec![];
            c.expires_at = NOW;
        });
        assert_eq!(
            check_terms(&scope_and_exp, &me(), NOW),
            Err(BrokenTerm::MissingScope)
        );
        assert_eq!(
            check_terms(&c, &me(), c.expires_at),
            Err(BrokenTerm::Expired)
        );
    }

    #[test]
    fn revocation_boundaries() {
        let c = |iat| with("c", |c| c.issued_at = iat);
        assert!(!is_revoked(&c(100), None));
        assert!(
            is_revoked(&c(100), Some(100)),
            "iat = revocation is revoked"
        );
        assert!(is_revoked(&c(99), Some(100)));
        assert!(
            !is_revoked(&c(101), Some(100)),
            "iat = revocation + 1 is fine"
        );
    }

    #[test]
    fn codes_are_distinct() {
        use DropReason::*;
        let all = [
            NoSubject,
            NoConsent,
            KeyNotTrusted,
            Revoked,
            WrongAudience,
            MissingScope,
            Expired,
        ];
        let codes: std::collections::BTreeSet<_> = all.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), all.len());
    }
}
