//! The local command line through the real binary: what `facegate ctl` and
//! `facegate fleet` accept and refuse, and how they take personal data.

use std::process::Output;
use std::time::Duration;

use facegate::clock;
use facegate_testkit::daemon::{facegate_binary, Daemon, CONSENT_KID};
use facegate_testkit::util::wait_until;
use facegate_testkit::SITE;
use serde_json::json;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A consent token for `subject` with exactly these `iat` and `exp`.
fn token_with_times(d: &Daemon, subject: &str, jti: &str, iat: i64, exp: i64) -> String {
    let claims = json!({
        "iss": "test", "sub": subject, "jti": jti, "iat": iat, "exp": exp,
        "aud": SITE, "scope": facegate::consent::UPLOAD_SCOPE,
    });
    facegate::jws::sign(&claims, CONSENT_KID, &d.consent_signer.pkcs8).unwrap()
}

#[test]
fn consent_add_refuses_far_future_and_overlong_tokens() {
    let d = Daemon::start();
    let now = clock::now();
    for (name, exp, code) in [
        ("exp 2^62", 1_i64 << 62, "malformed"),
        ("exp after 9999", clock::LATEST_CLAIM_TIME + 1, "malformed"),
        ("two years", now + 2 * 365 * 86_400, "lifetime_too_long"),
    ] {
        let token = token_with_times(&d, "S-far", name, now, exp);
        let out = d.try_ctl(&["consent", "add", &token]);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(stderr(&out).contains(code), "{name}: {}", stderr(&out));
    }
    assert_eq!(d.active_consents(), 0);
    assert!(d.ctl(&["consent", "list"]).find("1970").is_none());

    // Exactly the default maximum (365 days) is accepted.
    let token = token_with_times(&d, "S-far", "one-year", now, now + 365 * 86_400);
    d.ctl(&["consent", "add", &token]);
    assert_eq!(d.active_consents(), 1);

    // `[consent] max_lifetime` applies on SIGHUP.
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, text + "\n[consent]\nmax_lifetime = \"30d\"\n").unwrap();
    d.signal("HUP");
    wait_until(
        Duration::from_secs(20),
        || d.log().contains("configuration reloaded"),
        || d.log(),
    );
    let token = token_with_times(&d, "S-far", "sixty-days", now, now + 60 * 86_400);
    let out = d.try_ctl(&["consent", "add", &token]);
    assert!(
        stderr(&out).contains("lifetime_too_long"),
        "{}",
        stderr(&out)
    );
    let token = token_with_times(&d, "S-far", "thirty-days", now, now + 30 * 86_400);
    d.ctl(&["consent", "add", &token]);
}

#[test]
fn fleet_consent_refuses_lifetimes_devices_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("consent.key");
    let (pkcs8, _) = facegate::keys::generate().unwrap();
    facegate::keys::write_private_key(&key, &pkcs8).unwrap();
    let sign = |extra: &[&str]| {
        std::process::Command::new(facegate_binary())
            .args(["fleet", "consent", "--kid", "c", "--subject", "S-1"])
            .args(["--aud", SITE, "--key"])
            .arg(&key)
            .args(extra)
            .output()
            .unwrap()
    };
    assert!(sign(&[]).status.success(), "{}", stderr(&sign(&[])));
    let out = sign(&["--lifetime", "400d"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--max-lifetime"), "{}", stderr(&out));
    let out = sign(&["--lifetime", "400d", "--max-lifetime", "2years"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sign(&["--lifetime", "100000years", "--max-lifetime", "100000years"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("3650 days"), "{}", stderr(&out));
}

#[test]
fn consent_add_refuses_a_reused_consent_id() {
    let d = Daemon::start();
    let now = clock::now();
    let first = token_with_times(&d, "S-a", "shared-id", now, now + 3600);
    let granted: serde_json::Value =
        serde_json::from_str(&d.ctl(&["consent", "add", &first])).unwrap();
    assert_eq!(granted["new"], true, "{granted}");

    // The same consent id of the same key for another subject: refused.
    let other = token_with_times(&d, "S-b", "shared-id", now, now + 3600);
    let out = d.try_ctl(&["consent", "add", &other]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("jti_reused"), "{}", stderr(&out));
    // Nor another token of the same subject under that id.
    let longer = token_with_times(&d, "S-a", "shared-id", now, now + 7200);
    let out = d.try_ctl(&["consent", "add", &longer]);
    assert!(stderr(&out).contains("jti_reused"), "{}", stderr(&out));

    // The very same token again stays harmless.
    let again: serde_json::Value =
        serde_json::from_str(&d.ctl(&["consent", "add", &first])).unwrap();
    assert_eq!(again["new"], false, "{again}");
    let list = d.ctl_json(&["consent", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert!(!list.to_string().contains("S-b"), "{list}");
}

#[test]
fn tokens_and_subject_ids_can_come_from_stdin_or_a_file() {
    let d = Daemon::start();
    let jpeg = facegate_testkit::synth::face_jpeg(160, 120, 1, 80);

    // `consent add -`: the token from stdin (with echo's newline).
    let token = d.consent_signer.consent("S-in", 3600);
    let out = d.try_ctl_stdin(&["consent", "add", "-"], &format!("{token}\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(d.active_consents(), 1);

    // `purge @FILE`: the subject id from a file.
    d.drop_pair("a", "jpg", &jpeg, Some("S-in"));
    d.wait_spool_empty(Duration::from_secs(20));
    let file = d.dir.path().join("subject.txt");
    std::fs::write(&file, "S-in\n").unwrap();
    let receipt = d.ctl_json(&["purge", &format!("@{}", file.display())]);
    assert_eq!(receipt["subject"], "S-in", "{receipt}");
    assert_eq!(receipt["purged"], 1, "{receipt}");

    // `consent revoke -`: the subject id from stdin.
    let out = d.try_ctl_stdin(&["consent", "revoke", "-"], "S-in\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let receipt: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(receipt["subject"], "S-in", "{receipt}");
    assert_eq!(d.active_consents(), 0);

    // Empty input and a missing file are refused with a reason.
    let out = d.try_ctl_stdin(&["consent", "add", "-"], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("empty"), "{}", stderr(&out));
    let out = d.try_ctl(&["purge", "@/nonexistent/subject"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/subject"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn fleet_sign_reads_args_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("fleet.key");
    let (pkcs8, _) = facegate::keys::generate().unwrap();
    facegate::keys::write_private_key(&key, &pkcs8).unwrap();
    let mut cmd = std::process::Command::new(facegate_binary());
    cmd.args(["fleet", "sign", "--kid", "f", "--aud", SITE])
        .args(["--cmd", "consent.revoke", "--args", "-", "--key"])
        .arg(&key);
    let out = facegate_testkit::util::output_with_stdin(&mut cmd, br#"{"subject":"S-7"}"#);
    assert!(out.status.success(), "{}", stderr(&out));
    let jws = String::from_utf8(out.stdout).unwrap();
    let claims = facegate::jws::peek_claims(jws.trim()).unwrap();
    assert_eq!(claims["args"]["subject"], "S-7");
}
