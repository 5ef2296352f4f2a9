//! The commands' arguments, roles, subjects and descriptions, and the reply
//! kept with a command's effect.

use serde_json::json;

use super::*;
use crate::agent::{testing, PurgeTarget};
use crate::protocol::{Granted, Status as StatusMessage};

fn sid(s: &str) -> SubjectId {
    SubjectId::new(s).unwrap()
}

fn parse(name: CommandName, args: Value) -> Result<Command, CommandError> {
    <Command as CommandSet>::parse(name, Some(&args))
}

#[test]
fn each_command_parses_its_arguments() {
    let cases = [
        (CommandName::Status, json!({}), Command::Status(Status {})),
        (
            CommandName::ConsentGrant,
            json!({"token": "a.b.c"}),
            Command::ConsentGrant(ConsentGrant {
                token: "a.b.c".into(),
            }),
        ),
        (
            CommandName::ConsentRevoke,
            json!({"subject": "S-1"}),
            Command::ConsentRevoke(ConsentRevoke {
                subject: sid("S-1"),
            }),
        ),
        (
            CommandName::CapturePurge,
            json!({"subject": "S-1"}),
            Command::CapturePurge(CapturePurge {
                target: PurgeTarget::Subject(sid("S-1")),
            }),
        ),
        (
            CommandName::CapturePurge,
            json!({"all": true}),
            Command::CapturePurge(CapturePurge {
                target: PurgeTarget::All,
            }),
        ),
    ];
    for (name, args, want) in cases {
        let got = parse(name, args.clone()).unwrap();
        assert_eq!(got, want, "{name} {args}");
        assert_eq!(got.name(), name);
        // What the fleet tool signs is exactly what was given.
        assert_eq!(serde_json::to_value(&got).unwrap(), args, "{name}");
        assert_eq!(Command::from_parts(name.as_str(), &args).unwrap(), got);
    }
    // An absent `args` claim counts as `{}`.
    assert_eq!(
        <Command as CommandSet>::parse(CommandName::Status, None).unwrap(),
        Command::Status(Status {})
    );
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let max = crate::consent::MAX_TOKEN_BYTES;
    let grant = format!("consent.grant needs a token string of 1..={max} bytes");
    let subject = "subject must match [A-Za-z0-9._:-]{1,128}";
    let either = r#"capture.purge needs either {"subject": "…"} or {"all": true}"#;
    let cases: Vec<(CommandName, Value, String)> = vec![
        (
            CommandName::Status,
            json!([]),
            "args must be an object".into(),
        ),
        (
            CommandName::Status,
            json!(null),
            "args must be an object".into(),
        ),
        (
            CommandName::Status,
            json!({"x": 1}),
            r#"unexpected argument "x" for status"#.into(),
        ),
        (CommandName::ConsentGrant, json!({}), grant.clone()),
        (
            CommandName::ConsentGrant,
            json!({"token": 5}),
            grant.clone(),
        ),
        (
            CommandName::ConsentGrant,
            json!({"token": ""}),
            grant.clone(),
        ),
        (
            CommandName::ConsentGrant,
            json!({"token": "a".repeat(max + 1)}),
            grant.clone(),
        ),
        (
            CommandName::ConsentGrant,
            json!({"token": "a.b.c", "subject": "S"}),
            r#"unexpected argument "subject" for consent.grant"#.into(),
        ),
        (
            CommandName::ConsentRevoke,
            json!({}),
            "consent.revoke needs a subject".into(),
        ),
        (
            CommandName::ConsentRevoke,
            json!({"subject": "a/b"}),
            subject.into(),
        ),
        (
            CommandName::ConsentRevoke,
            json!({"subject": null}),
            subject.into(),
        ),
        (
            CommandName::ConsentRevoke,
            json!({"subject": "S", "all": true}),
            r#"unexpected argument "all" for consent.revoke"#.into(),
        ),
        (CommandName::CapturePurge, json!({}), either.into()),
        (
            CommandName::CapturePurge,
            json!({"all": false}),
            either.into(),
        ),
        (
            CommandName::CapturePurge,
            json!({"all": "yes"}),
            either.into(),
        ),
        (
            CommandName::CapturePurge,
            json!({"all": true, "subject": "S"}),
            either.into(),
        ),
        (
            CommandName::CapturePurge,
            json!({"all": true, "subject": "a/b"}),
            either.into(),
        ),
        (
            CommandName::CapturePurge,
            json!({"subject": 7}),
            subject.into(),
        ),
        (
            CommandName::CapturePurge,
            json!({"subject": null}),
            subject.into(),
        ),
        (
            CommandName::CapturePurge,
            json!({"why": "x", "all": true}),
            r#"unexpected argument "why" for capture.purge"#.into(),
        ),
    ];
    for (name, args, message) in cases {
        match parse(name, args.clone()) {
            Err(CommandError::BadArgs(m)) => assert_eq!(m, message, "{name} {args}"),
            other => panic!("{name} {args}: {other:?}"),
        }
    }
    assert_eq!(
        Command::from_parts("reboot", &json!({}))
            .unwrap_err()
            .code(),
        ErrorCode::UnknownCommand
    );
}

#[test]
fn argument_names_come_from_the_structs() {
    assert_eq!(field_names::<ConsentGrant>(), ["token"]);
    assert_eq!(field_names::<ConsentRevoke>(), ["subject"]);
    assert_eq!(field_names::<CapturePurge>(), ["subject", "all"]);
    assert!(field_names::<Status>().is_empty());
    assert!(field_names::<String>().is_empty());
}

#[test]
fn only_fleet_keys_sign_commands_but_consent_keys_may_revoke() {
    for name in CommandName::ALL {
        assert!(Command::may_sign(name, Role::Fleet), "{name}");
        assert_eq!(
            Command::may_sign(name, Role::Consent),
            name == CommandName::ConsentRevoke,
            "{name}"
        );
    }
}

#[test]
fn only_take_aways_are_applied_ahead_of_the_clock() {
    for name in CommandName::ALL {
        let take_away = matches!(name, CommandName::ConsentRevoke | CommandName::CapturePurge);
        assert_eq!(Command::early_ok(name), take_away, "{name}");
    }
}

#[test]
fn each_command_names_its_subject() {
    let (pkcs8, _) = crate::keys::generate().unwrap();
    let token = crate::consent::sign_consent(
        &crate::consent::ConsentRequest {
            issuer: "test".into(),
            subject: "S-9".into(),
            audience: vec!["lobby".into()],
            scopes: vec![crate::consent::UPLOAD_SCOPE.into()],
            lifetime_s: 60,
            jti: None,
        },
        "consent-1",
        &pkcs8,
        1_800_000_000,
    )
    .unwrap();
    let subject = |name: CommandName, args: Value| parse(name, args).unwrap().subject();
    assert_eq!(
        subject(CommandName::ConsentGrant, json!({ "token": token })),
        Some(sid("S-9"))
    );
    assert_eq!(
        subject(CommandName::ConsentRevoke, json!({"subject": "S-1"})),
        Some(sid("S-1"))
    );
    assert_eq!(
        subject(CommandName::CapturePurge, json!({"subject": "S-2"})),
        Some(sid("S-2"))
    );
    assert_eq!(
        subject(CommandName::CapturePurge, json!({"all": true})),
        None
    );
    assert_eq!(subject(CommandName::Status, json!({})), None);
}

#[test]
fn results_are_described_in_one_line() {
    let purge = Receipt {
        subject: Some(sid("S-1")),
        purged: 3,
        in_flight: vec!["c-1".into()],
        purged_at: 0,
        all: None,
        consents_remaining: None,
    };
    let receipt = ReplyResult::Receipt(purge.clone());
    assert_eq!(
        Command::describe(CommandName::ConsentRevoke, &receipt),
        "purged 3 capture(s) of S-1, in flight 1"
    );
    let newer_left = ReplyResult::Receipt(Receipt {
        consents_remaining: Some(2),
        ..purge
    });
    assert_eq!(
        Command::describe(CommandName::ConsentRevoke, &newer_left),
        "purged 3 capture(s) of S-1, in flight 1, 2 newer consent(s) remain"
    );
    assert_eq!(
        Command::describe(CommandName::CapturePurge, &receipt),
        "purged 3 capture(s) of S-1, in flight 1"
    );
    let granted = ReplyResult::Granted(Granted {
        consent_id: "c-9".into(),
        subject: None,
        expires_at: 1_795_858_382,
        new: true,
    });
    assert_eq!(
        Command::describe(CommandName::ConsentGrant, &granted),
        "consent c-9 for ? until 2026-11-28T09:33:02Z"
    );
    let status = ReplyResult::Status(Box::new(StatusMessage::offline()));
    assert_eq!(
        Command::describe(CommandName::Status, &status),
        "outbox ? capture(s), ? active consent(s)"
    );
    // A result of the wrong shape is shown as it is.
    assert_eq!(
        Command::describe(CommandName::Status, &granted),
        r#"{"consent_id":"c-9","subject":null,"expires_at":"2026-11-28T09:33:02Z","new":true}"#
    );
}

/// An agent trusting a fleet key, and that key (PKCS#8).
fn agent_with_fleet_key() -> (tempfile::TempDir, Agent, Vec<u8>) {
    let (dir, agent, fleet, _) = agent_with_keys();
    (dir, agent, fleet)
}

/// An agent trusting a fleet key `fleet-1` and a consent key `consent-1`,
/// and those keys (PKCS#8).
fn agent_with_keys() -> (tempfile::TempDir, Agent, Vec<u8>, Vec<u8>) {
    let (fleet, fleet_public) = crate::keys::generate().unwrap();
    let (consent, consent_public) = crate::keys::generate().unwrap();
    let trust = |kid: &str, role: &str, public: &[u8; 32]| {
        format!(
            "[[trust]]\nkid = \"{kid}\"\nrole = \"{role}\"\npublic_key = \"{}\"\n",
            crate::keys::public_key_b64(public)
        )
    };
    let extra =
        trust("fleet-1", "fleet", &fleet_public) + &trust("consent-1", "consent", &consent_public);
    let (dir, agent) = testing::agent(&extra);
    (dir, agent, fleet, consent)
}

#[tokio::test]
async fn the_reply_is_kept_without_subject_and_gets_it_back_on_redelivery() {
    let (_dir, agent, key) = agent_with_fleet_key();
    let now = crate::clock::now();
    let revoke = Command::ConsentRevoke(ConsentRevoke {
        subject: sid("S-KEEP"),
    });
    let (jti, jws) = revoke.sign("lobby", 600, "fleet-1", &key, now).unwrap();

    let first = apply_command(&agent, jws.as_bytes(), false, now).await;
    assert!(first.reply.ok, "{:?}", first.reply);
    assert!(!first.publish_status);
    let receipt = first.reply.receipt().unwrap();
    assert_eq!(receipt.subject, Some(sid("S-KEEP")));

    // Kept in the store as published, but without the subject id.
    let kept = agent.kept_reply(jti.clone()).await.unwrap().unwrap();
    assert_eq!(kept, first.reply.without_subject());
    assert_eq!(kept.receipt().unwrap().subject, None);

    // The broker's redelivery gets the published reply, subject and all.
    let again = apply_command(&agent, jws.as_bytes(), true, now).await;
    assert_eq!(again.reply, first.reply);
    // Anyone else sending it again is refused.
    let replay = apply_command(&agent, jws.as_bytes(), false, now).await;
    assert_eq!(replay.reply.error.unwrap().code, ErrorCode::Replayed);
}

/// A command applied, then forgotten by the replay set on a trusted clock
/// two days later, is not applied again when the wall clock goes back:
/// its expiry is judged at the highest trusted time (ARCHITECTURE I15).
#[tokio::test]
async fn a_forgotten_command_does_not_verify_again_on_a_clock_that_went_back() {
    let (dir, agent, key) = agent_with_fleet_key();
    let now = crate::clock::now();
    let (_, jws) = Command::Status(Status {})
        .sign("lobby/term-01", 600, "fleet-1", &key, now)
        .unwrap();
    assert!(
        apply_command(&agent, jws.as_bytes(), false, now)
            .await
            .reply
            .ok
    );
    // Two days later, on a trusted clock: the id is forgotten and the mark
    // records that time; then a restart.
    let later = now + 2 * 86_400;
    {
        let mut store = agent.db().lock();
        assert_eq!(store.forget_commands(later).unwrap(), 1);
        let mark = crate::clock::watch::Mark {
            wall: later,
            boot: "boot".into(),
            mono: 1,
            high: later,
        };
        store.save_clock_mark(&mark).unwrap();
    }
    let config = (*agent.config()).clone();
    drop(agent);
    let agent = crate::daemon::open(config).unwrap();
    assert_eq!(agent.clock().high_water(), Some(later));
    // The wall clock is back at `now`: the command must not apply again.
    let again = apply_command(&agent, jws.as_bytes(), false, now).await;
    assert_eq!(
        again.reply.error.map(|e| e.code),
        Some(ErrorCode::Expired),
        "applied twice"
    );
    drop(dir);
}

/// The wall clock stepped two hours back after the device had trusted the
/// real time: a consent issued at the real time is granted, not refused as
/// issued in the future (ARCHITECTURE I15).
#[tokio::test]
async fn a_fresh_consent_is_granted_on_a_clock_stepped_back() {
    let (dir, agent, _, consent_key) = agent_with_keys();
    let real = crate::clock::now();
    let behind = real - 2 * 3600;
    {
        let mark = crate::clock::watch::Mark {
            wall: real,
            boot: "boot".into(),
            mono: 1,
            high: real,
        };
        agent.db().lock().save_clock_mark(&mark).unwrap();
    }
    let config = (*agent.config()).clone();
    drop(agent);
    let agent = crate::daemon::open(config).unwrap();
    let req = crate::consent::ConsentRequest::lobby_upload("S-1", 3600);
    let token = crate::consent::sign_consent(&req, "consent-1", &consent_key, real).unwrap();
    let granted = agent.grant(token, behind, None).await;
    assert!(granted.is_ok(), "{granted:?}");
    drop(dir);
}

#[tokio::test]
async fn a_status_command_is_kept_with_its_status_and_asks_for_a_publish() {
    let (_dir, agent, key) = agent_with_fleet_key();
    let now = crate::clock::now();
    let (jti, jws) = Command::Status(Status {})
        .sign("lobby/term-01", 600, "fleet-1", &key, now)
        .unwrap();
    let first = apply_command(&agent, jws.as_bytes(), false, now).await;
    assert!(first.publish_status);
    assert!(matches!(first.reply.result, Some(ReplyResult::Status(_))));
    assert_eq!(
        agent.kept_reply(jti).await.unwrap(),
        Some(first.reply.clone())
    );
    let again = apply_command(&agent, jws.as_bytes(), true, now).await;
    assert_eq!(again.reply, first.reply);
    assert!(!again.publish_status);
}

#[tokio::test]
async fn refused_and_failed_commands_are_not_kept() {
    let (_dir, agent, key) = agent_with_fleet_key();
    let now = crate::clock::now();
    // Wrong audience: refused before any effect.
    let (jti, jws) = Command::Status(Status {})
        .sign("hall", 600, "fleet-1", &key, now)
        .unwrap();
    let r = apply_command(&agent, jws.as_bytes(), false, now).await;
    assert_eq!(r.reply.error.unwrap().code, ErrorCode::WrongAudience);
    assert_eq!(agent.kept_reply(jti).await.unwrap(), None);
    // A grant whose token does not verify: no effect, nothing kept, so a
    // redelivery is judged afresh.
    let grant = Command::ConsentGrant(ConsentGrant {
        token: "not.a.token".into(),
    });
    let (jti, jws) = grant.sign("lobby", 600, "fleet-1", &key, now).unwrap();
    let r = apply_command(&agent, jws.as_bytes(), false, now).await;
    assert_eq!(r.reply.jti.as_ref(), Some(&jti));
    assert_eq!(r.reply.error.unwrap().code, ErrorCode::Malformed);
    assert_eq!(agent.kept_reply(jti).await.unwrap(), None);
    let r = apply_command(&agent, jws.as_bytes(), true, now).await;
    assert_eq!(r.reply.error.unwrap().code, ErrorCode::Malformed);
}

/// Refusals that nothing remembers (so they can be sent again and again) are
/// not audited here but returned, for the caller to audit within its rate
/// limit (`uplink::ingress`); before, each wrote its own audit row.
#[tokio::test]
async fn refusals_that_can_be_repeated_are_left_to_the_caller_to_audit() {
    let (_dir, agent, key) = agent_with_fleet_key();
    let now = crate::clock::now();
    let (jti, jws) = Command::Status(Status {})
        .sign("hall", 600, "fleet-1", &key, now)
        .unwrap();
    let grant = Command::ConsentGrant(ConsentGrant {
        token: "not.a.token".into(),
    });
    let (grant_jti, grant_jws) = grant.sign("lobby", 600, "fleet-1", &key, now).unwrap();
    let cases = [
        (jti, jws, ErrorCode::WrongAudience),
        (grant_jti, grant_jws, ErrorCode::Malformed),
    ];
    for (jti, jws, code) in cases {
        for _ in 0..3 {
            let r = apply_command(&agent, jws.as_bytes(), false, now).await;
            let refused = r.refused.expect("a refusal");
            assert_eq!(refused.code, code);
            assert_eq!(refused.jti.as_ref(), Some(&jti));
            assert!(refused.unaudited, "{code:?}");
            assert!(r.settled);
        }
    }
    let rows = agent.audit_tail(100).await.unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    let garbage = apply_command(&agent, b"not a command", false, now).await;
    assert_eq!(garbage.refused.unwrap().code, ErrorCode::Malformed);
    // A local grant of the same bad token is audited by the agent.
    assert!(agent.grant("not.a.token".into(), now, None).await.is_err());
    let rows = agent.audit_tail(100).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].kind, crate::audit::kind::CONSENT_REFUSED);
}

#[tokio::test]
async fn a_grant_refused_as_revoked_is_kept_with_its_refusal() {
    let (_dir, agent, fleet, consent) = agent_with_keys();
    let now = crate::clock::now();
    let token = crate::consent::sign_consent(
        &crate::consent::ConsentRequest {
            issuer: "test".into(),
            subject: "S-OLD".into(),
            audience: vec!["lobby".into()],
            scopes: vec![crate::consent::UPLOAD_SCOPE.into()],
            lifetime_s: 3600,
            jti: None,
        },
        "consent-1",
        &consent,
        now - 10,
    )
    .unwrap();
    // The subject revoked after the token was issued.
    agent.revoke(sid("S-OLD"), now, now, None).await.unwrap();

    let grant = Command::ConsentGrant(ConsentGrant { token });
    let (jti, jws) = grant.sign("lobby", 600, "fleet-1", &fleet, now).unwrap();
    let first = apply_command(&agent, jws.as_bytes(), false, now).await;
    let error = first.reply.error.clone().unwrap();
    assert_eq!(error.code, ErrorCode::Revoked);
    assert!(
        !first.refused.as_ref().unwrap().unaudited,
        "the store audited it"
    );
    // The refusal used the command up: it was kept with it, in one transaction.
    assert_eq!(
        agent.kept_reply(jti).await.unwrap(),
        Some(first.reply.clone())
    );
    let again = apply_command(&agent, jws.as_bytes(), true, now).await;
    assert_eq!(again.reply, first.reply);
    let replay = apply_command(&agent, jws.as_bytes(), false, now).await;
    assert_eq!(replay.reply.error.unwrap().code, ErrorCode::Replayed);
    assert_eq!(agent.status(now).await.unwrap().consent.unwrap().active, 0);
}
