use super::*;
use crate::jws::testkit::*;
use serde_json::{json, Value};

const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

fn head(seq: u64, base: u64, iat: i64) -> Head {
    Head {
        seq: Seq::new(seq),
        base: Seq::new(base),
        iat,
        exp: iat + DAY,
    }
}

fn run(h: Option<Head>, fresh: bool, applied: &[(u64, u64)], now: i64) -> ConsentLogStatus {
    sync(&SyncInput {
        head: h.as_ref(),
        head_fresh: fresh,
        applied,
        head_max_age_s: DAY,
        now,
    })
}

#[test]
fn sync_table() {
    // (name, head, fresh, applied, now, in_sync, applied K, missing)
    type Row = (
        &'static str,
        Option<Head>,
        bool,
        Vec<(u64, u64)>,
        i64,
        bool,
        u64,
        Vec<[u64; 2]>,
    );
    let h5 = Some(head(5, 1, NOW - 60));
    let rows: Vec<Row> = vec![
        ("no head", None, false, vec![(1, 5)], NOW, false, 0, vec![]),
        ("all applied", h5, true, vec![(1, 5)], NOW, true, 5, vec![]),
        (
            "all applied, head not from this connection",
            h5,
            false,
            vec![(1, 5)],
            NOW,
            false,
            5,
            vec![],
        ),
        (
            "nothing applied",
            h5,
            true,
            vec![],
            NOW,
            false,
            0,
            vec![[1, 5]],
        ),
        (
            "gap in the middle",
            h5,
            true,
            vec![(1, 1), (4, 5)],
            NOW,
            false,
            1,
            vec![[2, 3]],
        ),
        (
            "two gaps",
            h5,
            true,
            vec![(2, 2), (4, 4)],
            NOW,
            false,
            0,
            vec![[1, 1], [3, 3], [5, 5]],
        ),
        (
            "tail missing",
            h5,
            true,
            vec![(1, 3)],
            NOW,
            false,
            3,
            vec![[4, 5]],
        ),
        (
            "applied beyond the head",
            h5,
            true,
            vec![(1, 7)],
            NOW,
            true,
            7,
            vec![],
        ),
        (
            "head exactly max age old",
            h5.map(|h| Head {
                iat: NOW - DAY,
                ..h
            }),
            true,
            vec![(1, 5)],
            NOW,
            true,
            5,
            vec![],
        ),
        (
            "stale head",
            h5.map(|h| Head {
                iat: NOW - DAY - 1,
                ..h
            }),
            true,
            vec![(1, 5)],
            NOW,
            false,
            5,
            vec![],
        ),
        (
            "base 40 seq 45, 40-45 applied",
            Some(head(45, 40, NOW)),
            true,
            vec![(40, 45)],
            NOW,
            true,
            45,
            vec![],
        ),
        (
            "base 40 seq 45, nothing",
            Some(head(45, 40, NOW)),
            true,
            vec![],
            NOW,
            false,
            39,
            vec![[40, 45]],
        ),
        (
            "base 40, old ranges below it",
            Some(head(45, 40, NOW)),
            true,
            vec![(1, 3), (41, 45)],
            NOW,
            false,
            39,
            vec![[40, 40]],
        ),
        (
            "base 40, a range across it",
            Some(head(45, 40, NOW)),
            true,
            vec![(30, 44)],
            NOW,
            false,
            44,
            vec![[45, 45]],
        ),
        (
            "empty log (seq 0)",
            Some(head(0, 1, NOW)),
            true,
            vec![],
            NOW,
            true,
            0,
            vec![],
        ),
        (
            "all compacted (base = seq + 1)",
            Some(head(9, 10, NOW)),
            true,
            vec![],
            NOW,
            true,
            9,
            vec![],
        ),
        (
            "head iat in the future",
            Some(head(1, 1, NOW + 30)),
            true,
            vec![(1, 1)],
            NOW,
            true,
            1,
            vec![],
        ),
    ];
    for (name, h, fresh, applied, now, in_sync, k, missing) in rows {
        let s = run(h, fresh, &applied, now);
        assert_eq!(s.in_sync, in_sync, "{name}: in_sync");
        assert_eq!(s.applied, k, "{name}: applied");
        assert_eq!(s.missing, missing, "{name}: missing");
        assert_eq!(s.head, h.map(|h| h.seq.get()).unwrap_or(0), "{name}: head");
    }
}

#[test]
fn head_age_is_reported() {
    let s = run(Some(head(5, 1, NOW - 300)), true, &[(1, 5)], NOW);
    assert_eq!(s.head_age_s, 300);
    assert_eq!(run(None, false, &[], NOW).head_age_s, 0);
}

#[test]
fn at_most_32_missing_ranges_and_never_in_sync_when_cut() {
    // Every even seq applied up to 200: 100 gaps.
    let applied: Vec<(u64, u64)> = (1..=100).map(|i| (2 * i, 2 * i)).collect();
    let s = run(Some(head(200, 1, NOW)), true, &applied, NOW);
    assert_eq!(s.missing.len(), MAX_MISSING_RANGES);
    assert_eq!(s.missing[0], [1, 1]);
    assert_eq!(s.missing[31], [63, 63]);
    assert!(!s.in_sync);
    assert_eq!(s.applied, 0);
}

#[test]
fn uploads_are_held_only_when_required_and_out_of_sync() {
    let out = run(None, false, &[], NOW);
    let ok = run(Some(head(1, 1, NOW)), true, &[(1, 1)], NOW);
    assert!(holds_uploads(ConsentLogMode::Required, &out));
    assert!(!holds_uploads(ConsentLogMode::Required, &ok));
    assert!(!holds_uploads(ConsentLogMode::Off, &out));
    assert!(!holds_uploads(ConsentLogMode::Off, &ok));
}

#[test]
fn lower_heads_are_ignored() {
    let cur = head(5, 1, NOW);
    assert!(replaces(None, &cur));
    assert!(replaces(Some(&cur), &head(6, 1, NOW - 10)));
    assert!(
        replaces(Some(&cur), &head(5, 1, NOW + 10)),
        "same seq, signed again"
    );
    assert!(replaces(Some(&cur), &cur));
    assert!(!replaces(Some(&cur), &head(4, 1, NOW + 10)), "lower seq");
    assert!(
        !replaces(Some(&cur), &head(5, 1, NOW - 10)),
        "same seq, older"
    );
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

fn claims() -> Value {
    json!({"aud": "lobby", "seq": 5, "base": 1, "iat": NOW - 10, "exp": NOW + DAY})
}

fn verify(k: &Keys, c: &Value, kid: &str, key: &[u8]) -> Result<Head, HeadError> {
    let token = jws::sign(c, kid, key).unwrap();
    verify_head(token.as_bytes(), &k.trust, &me(), 60, NOW)
}

#[test]
fn a_valid_head_is_read() {
    let k = keys();
    let h = verify(&k, &claims(), "fleet-1", &k.fleet).unwrap();
    assert_eq!(
        h,
        Head {
            exp: NOW + DAY,
            ..head(5, 1, NOW - 10)
        }
    );
    let signed = sign_head("lobby", &h, "fleet-1", &k.fleet).unwrap();
    assert_eq!(
        verify_head(signed.as_bytes(), &k.trust, &me(), 60, NOW).unwrap(),
        h
    );
    let arr = verify(
        &k,
        &json!({"aud": ["lobby"], "seq": 5, "base": 1, "iat": NOW, "exp": NOW + 60}),
        "fleet-1",
        &k.fleet,
    );
    assert!(arr.is_ok());
}

#[test]
fn head_rejection_table() {
    let k = keys();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        c
    };
    let cases: Vec<(&str, Result<Head, HeadError>, &str)> = vec![
        (
            "stranger key",
            verify(&k, &claims(), "fleet-1", &k.stranger),
            "bad_signature",
        ),
        (
            "unknown kid",
            verify(&k, &claims(), "who", &k.fleet),
            "unknown_key",
        ),
        (
            "consent key",
            verify(&k, &claims(), "consent-1", &k.consent),
            "wrong_role",
        ),
        (
            "other site",
            verify(
                &k,
                &with(&|c| c["aud"] = json!("hall")),
                "fleet-1",
                &k.fleet,
            ),
            "wrong_audience",
        ),
        (
            "one device",
            verify(
                &k,
                &with(&|c| c["aud"] = json!("lobby/term-01")),
                "fleet-1",
                &k.fleet,
            ),
            "wrong_audience",
        ),
        (
            "site and another",
            verify(
                &k,
                &with(&|c| c["aud"] = json!(["lobby", "hall"])),
                "fleet-1",
                &k.fleet,
            ),
            "wrong_audience",
        ),
        (
            "expired",
            verify(
                &k,
                &with(&|c| {
                    c["iat"] = json!(NOW - 1000);
                    c["exp"] = json!(NOW - 61)
                }),
                "fleet-1",
                &k.fleet,
            ),
            "expired",
        ),
        (
            "future",
            verify(
                &k,
                &with(&|c| {
                    c["iat"] = json!(NOW + 61);
                    c["exp"] = json!(NOW + DAY)
                }),
                "fleet-1",
                &k.fleet,
            ),
            "not_yet_valid",
        ),
        (
            "no seq",
            verify(
                &k,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("seq");
                }),
                "fleet-1",
                &k.fleet,
            ),
            "malformed",
        ),
        (
            "negative seq",
            verify(&k, &with(&|c| c["seq"] = json!(-1)), "fleet-1", &k.fleet),
            "malformed",
        ),
        (
            "seq as text",
            verify(&k, &with(&|c| c["seq"] = json!("5")), "fleet-1", &k.fleet),
            "malformed",
        ),
        (
            "no base",
            verify(
                &k,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("base");
                }),
                "fleet-1",
                &k.fleet,
            ),
            "malformed",
        ),
        (
            "base above seq + 1",
            verify(&k, &with(&|c| c["base"] = json!(7)), "fleet-1", &k.fleet),
            "malformed",
        ),
        (
            "exp before iat",
            verify(
                &k,
                &with(&|c| c["exp"] = json!(NOW - 20)),
                "fleet-1",
                &k.fleet,
            ),
            "malformed",
        ),
        (
            "no aud",
            verify(
                &k,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("aud");
                }),
                "fleet-1",
                &k.fleet,
            ),
            "malformed",
        ),
    ];
    for (name, r, code) in cases {
        match r {
            Ok(h) => panic!("{name}: accepted {h:?}"),
            Err(e) => assert_eq!(e.code().as_str(), code, "{name}: {e}"),
        }
    }
    let big = vec![b'a'; MAX_HEAD_BYTES + 1];
    assert_eq!(
        verify_head(&big, &k.trust, &me(), 60, NOW)
            .unwrap_err()
            .code()
            .as_str(),
        "too_large"
    );
    assert_eq!(
        verify_head(b"not a jws", &k.trust, &me(), 60, NOW)
            .unwrap_err()
            .code()
            .as_str(),
        "malformed"
    );
}

#[test]
fn described_in_words() {
    let out = ConsentLogStatus {
        in_sync: false,
        applied: 1,
        head: 5,
        missing: vec![[2, 3]],
        head_age_s: 300,
    };
    assert_eq!(
        describe(&out, None, None),
        "out of sync: missing 2\u{2013}3, head 5 min old (head 5, applied 1)"
    );
    assert!(describe(&out, Some(ConsentLogMode::Required), None).ends_with("; uploads held"));
    let stale = ConsentLogStatus {
        missing: vec![],
        applied: 5,
        head_age_s: 30 * 3600,
        ..out.clone()
    };
    assert_eq!(
        describe(&stale, None, Some(86_400)),
        "out of sync: head 30 h old, older than head_max_age 24 h (head 5, applied 5)"
    );
    let ok = ConsentLogStatus {
        in_sync: true,
        applied: 5,
        head: 5,
        missing: vec![],
        head_age_s: 42,
    };
    assert_eq!(
        describe(&ok, None, None),
        "in sync: head 5, applied 5, head 42 s old"
    );
    assert_eq!(
        describe(&ConsentLogStatus::default(), None, None),
        "out of sync: no head received yet"
    );
}
