//! Interoperability with a standard JOSE implementation (PyJWT): tokens and
//! commands made by `facegate fleet` verify there, and tokens made there are
//! accepted by the agent's verification. `scripts/test` installs PyJWT.

use std::process::Command;

use facegate::command;
use facegate::config::{CommandConfig, Identity, Role, TrustedKey};
use facegate::consent;
use serde_json::Value;

fn python(args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/jose/interop.py"
        ))
        .args(args)
        .output()
        .expect("python3 runs (scripts/test installs PyJWT)");
    assert!(
        out.status.success(),
        "interop.py {args:?} failed (is PyJWT installed? scripts/test installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from interop.py")
}

fn facegate(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_facegate"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "facegate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn me() -> Identity {
    Identity {
        site_id: "lobby".into(),
        device_id: "term-01".into(),
    }
}

fn trusted(kid: &str, role: Role, public_b64: &str) -> Vec<TrustedKey> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(public_b64)
        .unwrap();
    vec![TrustedKey {
        kid: kid.into(),
        role,
        public_key: raw.try_into().unwrap(),
    }]
}

#[test]
fn fleet_tool_tokens_verify_with_pyjwt() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("consent.pem");
    let key = key.to_str().unwrap();
    let public = facegate(&["fleet", "keygen", "--out", key]);
    // The key file is standard PKCS#8: other tools read it and derive the same public key.
    assert_eq!(python(&["public", key])["public_key"], public.as_str());
    let token = facegate(&[
        "fleet",
        "consent",
        "--key",
        key,
        "--kid",
        "k1",
        "--subject",
        "S-1",
        "--aud",
        "lobby",
        "--lifetime",
        "1h",
    ]);
    let v = python(&["verify", &token, &public, "lobby"]);
    assert_eq!(v["header"]["alg"], "EdDSA");
    assert_eq!(v["header"]["kid"], "k1");
    assert_eq!(v["claims"]["sub"], "S-1");
    assert_eq!(v["claims"]["scope"], "capture:upload");
    assert!(v["claims"]["jti"].as_str().is_some_and(|j| !j.is_empty()));

    let cmd = facegate(&[
        "fleet",
        "sign",
        "--key",
        key,
        "--kid",
        "k1",
        "--aud",
        "lobby/term-01",
        "--cmd",
        "consent.revoke",
        "--args",
        r#"{"subject":"S-1"}"#,
    ]);
    let v = python(&["verify", &cmd, &public, "lobby/term-01"]);
    assert_eq!(v["claims"]["cmd"], "consent.revoke");
    assert_eq!(v["claims"]["args"]["subject"], "S-1");
}

#[test]
fn pyjwt_tokens_are_accepted_by_the_agent() {
    let now = facegate::clock::now();
    let made = python(&["sign", "consent", "lobby"]);
    let trust = trusted(
        "py-key",
        Role::Consent,
        made["public_key"].as_str().unwrap(),
    );
    let limits = consent::TokenLimits {
        clock_skew: 60,
        max_lifetime: 365 * 86_400,
    };
    let c = consent::verify_consent(made["token"].as_str().unwrap(), &trust, &me(), now, limits)
        .expect("accepted");
    assert_eq!(c.subject, "S-py");

    let made = python(&["sign", "command", "lobby"]);
    let trust = trusted("py-key", Role::Fleet, made["public_key"].as_str().unwrap());
    let policy = CommandConfig {
        max_lifetime: std::time::Duration::from_secs(86_400),
        clock_skew: std::time::Duration::from_secs(60),
        max_bytes: 65_536,
    };
    let cmd = command::verify_command::<facegate::cmd::Command>(
        made["token"].as_str().unwrap().as_bytes(),
        &trust,
        &me(),
        &policy,
        now,
        &|_| false,
    )
    .expect("accepted");
    assert_eq!(cmd.name, facegate::protocol::CommandName::CapturePurge);
}

/// A site consent-log head and entry made by PyJWT (as docs/PROTOCOL.md's
/// Python back-end makes them) are accepted by the device's checks.
#[test]
fn pyjwt_consent_log_heads_and_entries_are_accepted() {
    let now = facegate::clock::now();
    let made = python(&["sign", "head", "lobby"]);
    let trust = trusted("py-key", Role::Fleet, made["public_key"].as_str().unwrap());
    let head = facegate::consent_log::verify_head(
        made["token"].as_str().unwrap().as_bytes(),
        &trust,
        &me(),
        60,
        now,
    )
    .expect("accepted");
    assert_eq!((head.seq.get(), head.base.get()), (5, 2));

    let made = python(&["sign", "entry", "lobby"]);
    let trust = trusted("py-key", Role::Fleet, made["public_key"].as_str().unwrap());
    let policy = CommandConfig {
        max_lifetime: std::time::Duration::from_secs(86_400),
        clock_skew: std::time::Duration::from_secs(60),
        max_bytes: 65_536,
    };
    let cmd = command::verify_command::<facegate::cmd::Command>(
        made["token"].as_str().unwrap().as_bytes(),
        &trust,
        &me(),
        &policy,
        now,
        &|_| false,
    )
    .expect("accepted");
    assert_eq!(cmd.seq, Some(facegate::ids::Seq::new(3)));
    assert_eq!(cmd.name, facegate::protocol::CommandName::ConsentRevoke);
}
