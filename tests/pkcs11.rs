//! The device key in a PKCS#11 token (SoftHSM2, a fresh token per test):
//! `facegate provision` generates it inside the token and prints the CSR, the
//! testkit CA signs it, the real daemon connects to a real Mosquitto over
//! mutual TLS with every handshake signed by the token and uploads; the key
//! cannot be read out of the token; a wrong PIN, a missing library or a
//! missing object are named in the log while captures wait in the outbox; the
//! fleet tool takes a key in a token the same way.
#![cfg(feature = "pkcs11")]

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use facegate::clock;
use facegate::doctor::{self, names, places, Outcome};
use facegate::keyref::KeyRef;
use facegate::pkcs11::TokenKey;
use facegate::provision::{csr_info, CsrRequest};
use facegate_testkit::broker::{Broker, ClientCreds};
use facegate_testkit::daemon::Daemon;
use facegate_testkit::hsm::{self, Token, USER_PIN};
use facegate_testkit::mqtt::{Session, Uploads};
use facegate_testkit::synth;
use facegate_testkit::util::wait_until;
use facegate_testkit::{DEVICE, SITE};

const T: Duration = Duration::from_secs(30);
const CAPTURES: &str = "facegate/lobby/term-01/captures";

/// A terminal whose device key is `uri` in a token reached through `module`;
/// its certificate is `device.pem` next to the config (made by [`sign_csr`]).
fn terminal(broker: &Broker, uri: &str, module: &Path) -> Daemon {
    let creds = ClientCreds {
        ca: broker.ca_file.clone(),
        cert: "device.pem".into(),
        key: uri.into(),
    };
    Daemon::builder()
        .mqtt("localhost", broker.port, &creds)
        .configure(|c| {
            c.pkcs11_key(uri, module)
                .keep_alive(Duration::from_secs(5))
                .fast_reconnect()
        })
        .build()
}

fn facegate(d: &Daemon, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_facegate"))
        .args(args)
        .arg("--config")
        .arg(&d.config)
        .output()
        .expect("run facegate")
}

fn provision(d: &Daemon) -> String {
    let out = facegate(d, &["provision"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "provision failed:\n{text}");
    text
}

fn csr_path(d: &Daemon) -> PathBuf {
    d.dir.path().join("device.csr")
}

/// Signs the terminal's CSR with the broker's CA into `device.pem`.
fn sign_csr(broker: &Broker, d: &Daemon) {
    let csr = fs::read_to_string(csr_path(d)).expect("the CSR provision wrote");
    let now = clock::now();
    let cert = broker
        .ca
        .sign_client_csr(&csr, DEVICE, now - 3600, now + 86_400)
        .expect("signed CSR");
    fs::write(d.dir.path().join("device.pem"), cert).expect("device.pem");
}

async fn fleet(broker: &Broker) -> Session {
    let mut s = Session::spawn(broker.options("fleet"));
    s.wait_connected(T).await.expect("fleet connects");
    s.subscribe(CAPTURES, T).await;
    s
}

/// Capture ids received on the captures topic (parts joined, whole `sha256`
/// checked by the testkit's back-end) until `n` arrived or `wait` passed.
async fn collect(fleet: &mut Session, n: usize, wait: Duration) -> HashSet<String> {
    let mut up = Uploads::new();
    up.collect(fleet, CAPTURES, n, wait).await;
    for env in up.captures.values() {
        assert_eq!(env.subject, "S-1");
    }
    up.captures.into_keys().collect()
}

fn line_of<'a>(text: &'a str, what: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no {what:?} line in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_in_the_token_signs_the_tls_connection_and_never_leaves_it() {
    let broker = Broker::start();
    let token = Token::fresh();
    let uri = token.uri("device");
    let mut d = terminal(&broker, &uri, &token.module);

    // Provision generates the key in the token and writes the CSR next to the certificate.
    let first = provision(&d);
    let key_line = line_of(&first, "TLS private key");
    assert!(key_line.contains("created"), "{first}");
    assert!(
        key_line.contains(&format!("PKCS#11 token {}, slot ", token.label))
            && key_line.ends_with("object device, not extractable"),
        "{first}"
    );
    assert!(
        line_of(&first, "certificate request").contains("created"),
        "{first}"
    );
    let csr = fs::read_to_string(csr_path(&d)).unwrap();
    assert!(first.contains(csr_path(&d).to_str().unwrap()), "{first}");
    let info = csr_info(&csr).expect("a readable CSR");
    assert_eq!(info.common_name.as_deref(), Some(DEVICE));
    assert_eq!(info.organizational_unit.as_deref(), Some(SITE));
    assert_eq!(info.san_uris, vec![format!("urn:facegate:{SITE}/{DEVICE}")]);

    // Idempotent: the key and the CSR are kept.
    let second = provision(&d);
    assert!(
        line_of(&second, "TLS private key").contains("exists, kept"),
        "{second}"
    );
    assert!(
        line_of(&second, "certificate request").contains("exists, kept"),
        "{second}"
    );
    assert_eq!(fs::read_to_string(csr_path(&d)).unwrap(), csr);

    sign_csr(&broker, &d);
    let out = facegate(&d, &["check-config"]);
    assert!(out.status.success(), "{out:?}");

    let mut fleet = fleet(&broker).await;
    d.spawn();
    d.wait_uplink_connected(T);
    d.grant("S-1");
    d.drop_pair("c1", "jpg", &synth::face_jpeg(320, 240, 1, 85), Some("S-1"));
    let seen = collect(&mut fleet, 1, T).await;
    assert_eq!(seen.len(), 1, "no upload over the token key:\n{}", d.log());
    wait_until(T, || d.outbox_len() == 0, || d.log());

    // Doctor: where the key lives, and that it matches the certificate.
    let report = doctor::local_checks(&d.config, clock::now());
    let place = report
        .key_place(places::DEVICE_KEY)
        .expect("device key place");
    assert!(
        place.starts_with(&format!("PKCS#11 token {}, slot ", token.label))
            && place.ends_with("object device, not extractable"),
        "{report}"
    );
    for check in [names::TLS_KEY, names::TLS_FILES] {
        assert_eq!(
            report.get(check).unwrap().outcome,
            Outcome::Pass,
            "{report}"
        );
    }
    // A certificate of another key (a file key the broker's CA signed) does not match.
    let other = broker.issue_client(DEVICE);
    fs::copy(&other.cert, d.dir.path().join("device.pem")).unwrap();
    let report = doctor::local_checks(&d.config, clock::now());
    match &report.get(names::TLS_FILES).unwrap().outcome {
        Outcome::Fail(m) => assert!(m.contains(&uri) && m.contains("does not match"), "{m}"),
        other => panic!("TLS files: {other:?}\n{report}"),
    }
    d.stop();

    // The token says the key is sensitive and not extractable, and will not hand out its value.
    let session = user_session(&token);
    let keys = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"device".to_vec()),
        ])
        .unwrap();
    assert_eq!(keys.len(), 1, "one private key labelled device");
    let attrs = session
        .get_attributes(
            keys[0],
            &[
                AttributeType::Extractable,
                AttributeType::Sensitive,
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::NeverExtractable,
            ],
        )
        .unwrap();
    for want in [
        Attribute::Extractable(false),
        Attribute::Sensitive(true),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::NeverExtractable(true),
    ] {
        assert!(attrs.contains(&want), "{want:?} not in {attrs:?}");
    }
    // Export attempt: C_GetAttributeValue(CKA_VALUE) is refused as sensitive.
    let info = session
        .get_attribute_info(keys[0], &[AttributeType::Value])
        .unwrap();
    assert!(
        matches!(info.as_slice(), [AttributeInfo::Sensitive]),
        "CKA_VALUE must be sensitive: {info:?}"
    );
    let value = session
        .get_attributes(keys[0], &[AttributeType::Value])
        .unwrap();
    assert!(
        !value.iter().any(|a| matches!(a, Attribute::Value(_))),
        "the private value came out: {value:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_problems_are_named_and_captures_wait_until_fixed() {
    let broker = Broker::start();
    let token = Token::fresh();
    // A PIN file of this terminal's own, so the test can break and mend it.
    let pin_dir = tempfile::tempdir().unwrap();
    let pin = pin_dir.path().join("pin");
    hsm::write_private(&pin, USER_PIN);
    let uri = token.uri_with_pin("device", &pin);
    let mut d = terminal(&broker, &uri, &token.module);
    provision(&d);
    sign_csr(&broker, &d);
    let mut fleet = fleet(&broker).await;
    let config = fs::read_to_string(&d.config).unwrap();

    // Wrong PIN: the daemon runs, says which part is wrong, and keeps the capture.
    hsm::write_private(&pin, "wrong-pin-q7");
    d.spawn();
    d.grant("S-1");
    d.drop_pair("c1", "jpg", &synth::face_jpeg(320, 240, 1, 85), Some("S-1"));
    wait_until(T, || d.counters().accepted == 1, || d.log());
    wait_until(
        T,
        || d.log().contains("pin-source: the token") && d.log().contains("CKR_PIN_INCORRECT"),
        || d.log(),
    );
    // The refused PIN is not offered again (a token locks after a few wrong
    // PINs): the next attempts say so without logging in.
    wait_until(
        T,
        || d.log().contains("refused this PIN before"),
        || d.log(),
    );
    assert_eq!(
        d.log()
            .matches("refused the PIN (CKR_PIN_INCORRECT)")
            .count(),
        1,
        "{}",
        d.log()
    );
    assert!(
        !d.log().contains("wrong-pin-q7"),
        "the PIN must not be logged"
    );
    assert_eq!(d.outbox_len(), 1);
    assert!(!d.uplink_connected());

    // Mended while running: the next attempt logs in, connects and uploads.
    hsm::write_private(&pin, USER_PIN);
    let seen = collect(&mut fleet, 1, T).await;
    assert_eq!(
        seen.len(),
        1,
        "not uploaded after the PIN was fixed:\n{}",
        d.log()
    );
    wait_until(T, || d.outbox_len() == 0, || d.log());

    // Missing object and missing library: named, no crash, the capture waits.
    let cases = [
        (
            config.replace("object=device", "object=absent"),
            "object: no private key labelled \"absent\"",
        ),
        (
            config.replace(
                &format!("pkcs11_module = \"{}\"", token.module.display()),
                "pkcs11_module = \"/nonexistent/libnone.so\"",
            ),
            "module: cannot load the PKCS#11 library /nonexistent/libnone.so",
        ),
    ];
    for (i, (text, expected)) in cases.into_iter().enumerate() {
        assert_ne!(text, config, "case {i} changed nothing");
        d.stop();
        fs::write(&d.config, text).unwrap();
        d.spawn();
        d.drop_pair(
            &format!("m{i}"),
            "jpg",
            &synth::face_jpeg(320, 240, 10 + i as u64, 85),
            Some("S-1"),
        );
        wait_until(T, || d.outbox_len() == 1, || d.log());
        wait_until(T, || d.log().contains(expected), || d.log());
        assert!(
            d.try_ctl(&["status", "--json"]).status.success(),
            "the daemon must keep running:\n{}",
            d.log()
        );
        assert_eq!(d.outbox_len(), 1, "{}", d.log());
        // Doctor names the same part.
        let report = doctor::local_checks(&d.config, clock::now());
        match &report.get(names::TLS_KEY).unwrap().outcome {
            Outcome::Fail(m) => assert!(m.contains(expected), "{m}"),
            other => panic!("TLS key: {other:?}\n{report}"),
        }
        fs::write(&d.config, &config).unwrap();
        d.stop();
        d.spawn();
        let seen = collect(&mut fleet, 1, T).await;
        assert_eq!(
            seen.len(),
            1,
            "case {i}: not uploaded once fixed:\n{}",
            d.log()
        );
        wait_until(T, || d.outbox_len() == 0, || d.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_tool_connects_with_a_key_in_a_token() {
    let broker = Broker::start();
    let d = Daemon::builder()
        .broker(&broker)
        .configure(|c| c.keep_alive(Duration::from_secs(5)).fast_reconnect())
        .start();
    d.wait_uplink_connected(T);

    // The back-end's own key, generated in its token; its certificate is CN=fleet.
    let token = Token::fresh();
    let uri = token.uri("fleet");
    let key = KeyRef::parse(&uri, Path::new(""), Some(token.module.clone())).unwrap();
    let (token_key, created) = TokenKey::open_or_generate(key.pkcs11().unwrap()).unwrap();
    assert!(created);
    let csr = CsrRequest::for_device(SITE, "fleet")
        .to_pem(token_key.as_ref())
        .unwrap();
    let now = clock::now();
    let cert = d.dir.path().join("fleet.pem");
    fs::write(
        &cert,
        broker
            .ca
            .sign_client_csr(&csr, "fleet", now - 3600, now + 86_400)
            .unwrap(),
    )
    .unwrap();
    let signing_key = d.dir.path().join("fleet-signing.pem");
    facegate::keys::write_private_key(&signing_key, &d.fleet_signer.pkcs8).unwrap();

    let send = |module: &Path| {
        Command::new(env!("CARGO_BIN_EXE_facegate"))
            .args(["fleet", "send", "--broker"])
            .arg(format!("localhost:{}", broker.port))
            .args(["--site", SITE, "--device", DEVICE, "--cmd", "status"])
            .args(["--kid", &d.fleet_signer.kid])
            .arg("--key")
            .arg(&signing_key)
            .arg("--ca")
            .arg(&broker.ca_file)
            .arg("--cert")
            .arg(&cert)
            .args(["--tls-key", &uri, "--pkcs11-module"])
            .arg(module)
            .output()
            .unwrap()
    };
    let out = send(&token.module);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("term-01: ok status"), "{text}");

    // A wrong library is named, with the URI part, and nothing is sent.
    let out = send(Path::new("/nonexistent/libnone.so"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("module: cannot load the PKCS#11 library /nonexistent/libnone.so"),
        "{err}"
    );
}

/// Logs into `token` in this process (the library is initialised once).
fn user_session(token: &Token) -> cryptoki::session::Session {
    let ctx = Pkcs11::new(&token.module).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == token.label)
        .expect("the token");
    let session = ctx.open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(USER_PIN))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("login: {e}"),
    }
    session
}

/// A key pair made in the token by someone else than facegate.
fn generate(token: &Token, label: &str, mechanism: Mechanism, params: &[u8], extractable: bool) {
    let session = user_session(token);
    let common = |extra: Vec<Attribute>| {
        let mut t = vec![
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(label.as_bytes().to_vec()),
        ];
        t.extend(extra);
        t
    };
    session
        .generate_key_pair(
            &mechanism,
            &common(vec![
                Attribute::Verify(true),
                Attribute::EcParams(params.to_vec()),
            ]),
            &common(vec![
                Attribute::Sign(true),
                Attribute::Private(true),
                Attribute::Sensitive(!extractable),
                Attribute::Extractable(extractable),
            ]),
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ed25519_key_in_the_token_connects_too() {
    let broker = Broker::start();
    let token = Token::fresh();
    // DER of the Ed25519 OID 1.3.101.112.
    generate(
        &token,
        "device",
        Mechanism::EccEdwardsKeyPairGen,
        &[0x06, 0x03, 0x2b, 0x65, 0x70],
        false,
    );
    let mut d = terminal(&broker, &token.uri("device"), &token.module);
    let out = provision(&d);
    assert!(
        line_of(&out, "TLS private key").contains("exists, kept"),
        "{out}"
    );
    sign_csr(&broker, &d);
    let mut fleet = fleet(&broker).await;
    d.spawn();
    d.wait_uplink_connected(T);
    d.grant("S-1");
    d.drop_pair("e1", "jpg", &synth::face_jpeg(320, 240, 3, 85), Some("S-1"));
    assert_eq!(collect(&mut fleet, 1, T).await.len(), 1, "{}", d.log());
    d.stop();
}

#[test]
fn doctor_warns_about_a_key_that_can_leave_the_token() {
    let token = Token::fresh();
    // P-256 (1.2.840.10045.3.1.7), extractable and not sensitive.
    generate(
        &token,
        "loose",
        Mechanism::EccKeyPairGen,
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        true,
    );
    let uri = token.uri("loose");
    let creds = ClientCreds {
        ca: "ca.pem".into(),
        cert: "device.pem".into(),
        key: uri.clone().into(),
    };
    let d = Daemon::builder()
        .mqtt("localhost", facegate_testkit::util::free_port(), &creds)
        .configure(|c| c.pkcs11_key(&uri, &token.module))
        .build();
    let report = doctor::local_checks(&d.config, clock::now());
    let place = report.key_place(places::DEVICE_KEY).unwrap();
    assert!(
        place.ends_with("object loose, EXTRACTABLE, NOT sensitive"),
        "{report}"
    );
    match &report.get(names::TLS_KEY).unwrap().outcome {
        Outcome::Warn(m) => assert!(m.contains("can be exported"), "{m}"),
        other => panic!("TLS key: {other:?}\n{report}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pin_source_the_pin_is_the_systemd_credential() {
    let broker = Broker::start();
    let token = Token::fresh();
    let d = terminal(&broker, &token.uri("device"), &token.module);
    provision(&d);
    sign_csr(&broker, &d);
    // The same key, its PIN handed over as systemd does with LoadCredential=.
    let config = fs::read_to_string(&d.config).unwrap();
    let with_pin = token.uri("device");
    let bare = format!("pkcs11:token={};object=device", token.label);
    fs::write(&d.config, config.replace(&with_pin, &bare)).unwrap();
    let credentials = tempfile::tempdir().unwrap();
    let doctor = |dir: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_facegate"));
        cmd.args(["doctor", "--config"]).arg(&d.config);
        cmd.env_remove("CREDENTIALS_DIRECTORY");
        if let Some(dir) = dir {
            cmd.env("CREDENTIALS_DIRECTORY", dir);
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
    };

    let out = doctor(None);
    let line = line_of(&out, "FAIL  TLS key permissions");
    assert!(
        line.contains("pin-source: no PIN") && line.contains("facegate-pkcs11-pin"),
        "{out}"
    );

    let pin = credentials.path().join("facegate-pkcs11-pin");
    hsm::write_private(&pin, &format!("{USER_PIN}\n"));
    let out = doctor(Some(credentials.path()));
    assert!(out.contains("PASS  TLS key permissions"), "{out}");
    assert!(out.contains("PASS  TLS files"), "{out}");
    assert!(out.contains("PASS  broker connection"), "{out}");

    // A credential others may read is refused, naming it.
    fs::set_permissions(&pin, fs::Permissions::from_mode(0o644)).unwrap();
    let out = doctor(Some(credentials.path()));
    let line = line_of(&out, "FAIL  TLS key permissions");
    assert!(
        line.contains("pin: ") && line.contains("facegate-pkcs11-pin: mode 0644"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_gone_while_running_fails_handshakes_without_a_crash() {
    let mut broker = Broker::start();
    let token = Token::fresh();
    let mut d = terminal(&broker, &token.uri("device"), &token.module);
    provision(&d);
    sign_csr(&broker, &d);
    d.spawn();
    d.wait_uplink_connected(T);
    d.grant("S-1");

    // The token goes away under the running daemon (a removed secure element,
    // a wiped token store); the next connection needs a signature.
    let out = Command::new("softhsm2-util")
        .args(["--delete-token", "--token", &token.label])
        .output()
        .unwrap();
    // SoftHSM removes the token's objects first and its directory last; the
    // running daemon's own SoftHSM may still hold a file in that directory,
    // and then only the final rmdir fails ("Could not delete the directory"):
    // the key is gone either way, which is what this test is about.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("Could not delete the directory"),
        "{out:?}"
    );
    broker.restart();
    d.drop_pair("g1", "jpg", &synth::face_jpeg(320, 240, 7, 85), Some("S-1"));
    wait_until(T, || d.counters().accepted == 1, || d.log());
    wait_until(
        T,
        || {
            d.log()
                .lines()
                .any(|l| l.contains("broker connection lost") && l.contains("PKCS#11 key"))
        },
        || d.log(),
    );
    assert!(
        d.try_ctl(&["status", "--json"]).status.success(),
        "the daemon must keep running:\n{}",
        d.log()
    );
    assert!(!d.uplink_connected(), "{}", d.log());
    assert_eq!(d.outbox_len(), 1, "the capture waits:\n{}", d.log());
    d.stop();
}
