//! The consent gate (SPEC invariant 1): may a capture of this subject be kept
//! and uploaded right now? A pure function of the subject's stored consents, its
//! latest revocation, the trusted keys, this device's identity and `now`.
//!
//! It is called at intake (before anything is written to the outbox) and again
//! immediately before every hand-off to MQTT, so a revocation, an expiry or a
//! key removed from config takes effect on captures already queued.

use crate::config::{Identity, Role, TrustedKey};
use crate::consent::{is_revoked, Consent, UPLOAD_SCOPE};
use crate::ids::SubjectId;
use crate::jws::audience_matches;

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
    /// The signing key is gone from config or no longer has role `consent`.
    KeyNotTrusted,
    /// Issued at or before the subject's latest revocation.
    Revoked,
    /// Addressed to another site or device.
    WrongAudience,
    /// Lacks the `capture:upload` scope.
    MissingScope,
    /// Past its `exp`.
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

/// Decides whether a capture of `subject` may be kept/uploaded at `now`.
///
/// `consents` are the stored consents of that subject (entries for other
/// subjects are ignored); `revoked_before` is the subject's latest revocation
/// time, if any. Accepts iff some consent is for this subject, is signed by a
/// key still trusted with role `consent`, was issued after the revocation,
/// addresses this site or device, has the upload scope and `now < exp`.
pub fn decide(
    subject: Option<&SubjectId>,
    consents: &[Consent],
    revoked_before: Option<i64>,
    trust: &[TrustedKey],
    me: &Identity,
    now: i64,
) -> Decision {
    let Some(subject) = subject else {
        return Decision::Drop(DropReason::NoSubject);
    };
    let mut best: Option<&Consent> = None;
    let mut reason = DropReason::NoConsent;
    for c in consents.iter().filter(|c| c.subject == *subject) {
        match check(c, revoked_before, trust, me, now) {
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
    match best {
        Some(c) => Decision::Accept {
            subject: subject.clone(),
            consent_id: c.id.clone(),
        },
        None => Decision::Drop(reason),
    }
}

/// Keeps only the consents whose stored token still verifies under the
/// current trusted keys: a key replaced under the same `kid` (or removed)
/// voids what it signed. Callers run this before [`decide`] so "validly
/// signed" holds at the moment of the decision, not only when the consent
/// was stored.
pub fn still_signed(consents: Vec<Consent>, trust: &[TrustedKey]) -> Vec<Consent> {
    consents
        .into_iter()
        .filter(|c| {
            crate::jws::verify(&c.token, trust)
                .is_ok_and(|v| v.kid == c.kid && v.role == Role::Consent)
        })
        .collect()
}

/// The first check one consent fails, in [`DropReason::rank`] order.
fn check(
    c: &Consent,
    revoked_before: Option<i64>,
    trust: &[TrustedKey],
    me: &Identity,
    now: i64,
) -> Result<(), DropReason> {
    if !trust
        .iter()
        .any(|k| k.kid == c.kid && k.role == Role::Consent)
    {
        return Err(DropReason::KeyNotTrusted);
    }
    if is_revoked(c, revoked_before) {
        return Err(DropReason::Revoked);
    }
    if !audience_matches(&c.audience, me) {
        return Err(DropReason::WrongAudience);
    }
    if !c.scopes.iter().any(|s| s == UPLOAD_SCOPE) {
        return Err(DropReason::MissingScope);
    }
    if now >= c.expires_at {
        return Err(DropReason::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jws::testkit::me;

    const NOW: i64 = 1_800_000_000;

    fn trust() -> Vec<TrustedKey> {
        vec![
            TrustedKey {
                kid: "consent-1".into(),
                role: Role::Consent,
                public_key: [1; 32],
            },
            TrustedKey {
                kid: "fleet-1".into(),
                role: Role::Fleet,
                public_key: [2; 32],
            },
        ]
    }

    fn sid(s: &str) -> SubjectId {
        SubjectId::new(s).unwrap()
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
            token: String::new(),
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
                "key removed",
                Some("S-1"),
                vec![with("a", |c| c.kid = "old".into())],
                None,
                NOW,
                drop(KeyNotTrusted),
            ),
            (
                "key now fleet role",
                Some("S-1"),
                vec![with("a", |c| c.kid = "fleet-1".into())],
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

    #[test]
    fn still_signed_drops_consents_whose_key_changed_under_the_same_kid() {
        use crate::consent::{sign_consent, verify_consent, ConsentRequest};
        let (pkcs8, public) = crate::keys::generate().unwrap();
        let (_, other) = crate::keys::generate().unwrap();
        let key = |pk: [u8; 32]| TrustedKey {
            kid: "consent-1".into(),
            role: Role::Consent,
            public_key: pk,
        };
        let req = ConsentRequest {
            issuer: "t".into(),
            subject: "S-1".into(),
            audience: vec!["lobby".into()],
            scopes: vec![UPLOAD_SCOPE.into()],
            lifetime_s: 3600,
            jti: None,
        };
        let token = sign_consent(&req, "consent-1", &pkcs8, NOW).unwrap();
        let c = verify_consent(&token, &[key(public)], &me(), NOW, 0).unwrap();
        assert_eq!(still_signed(vec![c.clone()], &[key(public)]).len(), 1);
        assert!(
            still_signed(vec![c.clone()], &[key(other)]).is_empty(),
            "replaced key"
        );
        assert!(still_signed(vec![c.clone()], &[]).is_empty(), "removed key");
        let fleet = TrustedKey {
            role: Role::Fleet,
            ..key(public)
        };
        assert!(
            still_signed(vec![c], &[fleet]).is_empty(),
            "key demoted to fleet"
        );
    }
}
