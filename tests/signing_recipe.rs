//! The CSR signing script in docs/OPERATIONS.md ("Signing the CSR"), run as
//! written with the real `openssl` against a request that asks for CA rights
//! and another identity: the certificate it issues must be a TLS client
//! certificate for the device named on the command line and nothing more.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use facegate::provision::CsrRequest;
use rcgen::{KeyPair, PublicKeyData};
use x509_parser::prelude::*;

/// The line in OPERATIONS.md that precedes the script.
const MARKER: &str =
    "<!-- sign-device: tests/signing_recipe.rs runs the script in the next block -->";

/// The `sh` block right after [`MARKER`] in docs/OPERATIONS.md, verbatim.
fn documented_script() -> String {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/OPERATIONS.md"))
        .unwrap();
    let after = &doc[doc.find(MARKER).expect("the signing script's marker") + MARKER.len()..];
    let body = after
        .trim_start()
        .strip_prefix("```sh\n")
        .expect("a ```sh block right after the marker");
    let end = body.find("\n```").expect("the end of the block");
    body[..=end].to_string()
}

fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A PKI directory with a fleet CA (`ca.pem`, `ca.key`) made by openssl and
/// the documented script saved as `sign-device`.
fn pki() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    ok(
        run(
            &d,
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "3650",
                "-subj",
                "/CN=fleet CA",
            ],
        ),
        "making the CA",
    );
    fs::write(d.join("sign-device"), documented_script()).unwrap();
    (dir, d)
}

/// A request from a device key for `CN=fleet` asking to be a CA that signs
/// certificates, for server auth, with a foreign SAN.
fn malicious_csr(dir: &Path) {
    ok(
        run(
            dir,
            "openssl",
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "device.key",
                "-out",
                "device.csr",
                "-subj",
                "/CN=fleet/OU=lobby",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                "-addext",
                "extendedKeyUsage=serverAuth,clientAuth",
                "-addext",
                "subjectAltName=URI:urn:facegate:other/fleet,DNS:broker.example.net",
            ],
        ),
        "making the malicious CSR",
    );
}

/// What the checks below need to know of an issued certificate.
#[derive(Debug)]
struct Issued {
    ca: bool,
    key_cert_sign: bool,
    client_auth: bool,
    server_auth: bool,
    common_names: Vec<String>,
    san: Vec<String>,
}

fn inspect(pem_path: &Path) -> Issued {
    let pem_text = fs::read(pem_path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem_text).unwrap();
    let (_, cert) = X509Certificate::from_der(&pem.contents).unwrap();
    let eku = cert.extended_key_usage().unwrap();
    Issued {
        ca: cert
            .basic_constraints()
            .unwrap()
            .is_some_and(|b| b.value.ca),
        key_cert_sign: cert
            .key_usage()
            .unwrap()
            .is_some_and(|k| k.value.key_cert_sign()),
        client_auth: eku.as_ref().is_some_and(|e| e.value.client_auth),
        server_auth: eku.as_ref().is_some_and(|e| e.value.server_auth),
        common_names: cert
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap().to_string())
            .collect(),
        san: cert
            .subject_alternative_name()
            .unwrap()
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .map(|n| n.to_string())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[test]
fn the_documented_script_signs_a_ca_request_as_a_plain_client_certificate() {
    let (_tmp, d) = pki();
    malicious_csr(&d);

    // The request does get CA rights from a signer that copies extensions:
    // what the recipe used to do. So the checks below can tell.
    ok(
        run(
            &d,
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                "device.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "365",
                "-copy_extensions",
                "copyall",
                "-out",
                "copied.pem",
            ],
        ),
        "signing with copied extensions",
    );
    let copied = inspect(&d.join("copied.pem"));
    assert!(copied.ca && copied.key_cert_sign, "{copied:?}");

    ok(
        run(&d, "sh", &["sign-device", "lobby", "term-01"]),
        "the documented script",
    );
    let issued = inspect(&d.join("device.pem"));
    assert!(!issued.ca, "a CA: {issued:?}");
    assert!(!issued.key_cert_sign, "may sign certificates: {issued:?}");
    assert!(issued.client_auth, "no clientAuth: {issued:?}");
    assert!(!issued.server_auth, "serverAuth copied: {issued:?}");
    assert_eq!(issued.common_names, vec!["term-01".to_string()]);
    assert_eq!(
        issued.san,
        vec!["URI(urn:facegate:lobby/term-01)".to_string()]
    );
    // And OpenSSL agrees: a client certificate under the CA, not a CA itself.
    ok(
        run(
            &d,
            "openssl",
            &[
                "verify",
                "-CAfile",
                "ca.pem",
                "-purpose",
                "sslclient",
                "device.pem",
            ],
        ),
        "verify as a client",
    );
}

#[test]
fn the_documented_script_refuses_the_fleet_identity_and_bad_names() {
    let (_tmp, d) = pki();
    malicious_csr(&d);
    for (site, device) in [
        ("lobby", "fleet"),
        ("lobby", "FLEET"),
        ("lob/by", "term-01"),
        ("lobby", ""),
    ] {
        let out = run(&d, "sh", &["sign-device", site, device]);
        assert!(!out.status.success(), "{site}/{device} was signed");
        assert!(!d.join("device.pem").exists(), "{site}/{device}");
    }
}

#[test]
fn the_documented_script_prints_the_hash_provision_shows() {
    let (_tmp, d) = pki();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CsrRequest::for_device("lobby", "term-01")
        .to_pem(&key)
        .unwrap();
    fs::write(d.join("device.csr"), csr).unwrap();
    let stdout = ok(
        run(&d, "sh", &["sign-device", "lobby", "term-01"]),
        "the documented script",
    );
    let want = hex::encode(
        ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info()).as_ref(),
    );
    assert!(stdout.contains(&want), "{stdout} lacks {want}");
    let issued = inspect(&d.join("device.pem"));
    assert!(!issued.ca && issued.client_auth, "{issued:?}");
}
