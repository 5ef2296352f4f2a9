//! `facegate doctor` against real files and a real Mosquitto mTLS broker: a
//! healthy terminal passes; each broken piece (key permissions, expired or
//! foreign certificate, wrong device name, broker down) fails the named check.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use facegate::clock;
use facegate::config;
use facegate::doctor::{self, names, Outcome};
use facegate_testkit::broker::{Broker, BrokerAcl, BrokerOptions, ClientCreds};
use facegate_testkit::config::{ConfigBuilder, Role};
use facegate_testkit::daemon::Daemon;
use facegate_testkit::mqtt::Session;
use facegate_testkit::pki::Ca;
use facegate_testkit::util::free_port;

/// A terminal's files in a temp dir: config, state dir with storage key, TLS files.
struct Terminal {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Terminal {
    /// A provisioned terminal `term-01` at site `lobby` using `creds`, talking to
    /// `localhost:port`.
    fn new(creds: &ClientCreds, port: u16) -> Terminal {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        let key = state.join("storage.key");
        fs::write(&key, [7u8; 32]).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir(dir.path().join("spool")).unwrap();
        let tls = dir.path().join("tls");
        fs::create_dir(&tls).unwrap();
        for (from, to) in [
            (&creds.ca, "ca.pem"),
            (&creds.cert, "device.pem"),
            (&creds.key, "device.key"),
        ] {
            fs::copy(from, tls.join(to)).unwrap();
        }
        let config = dir.path().join("facegate.toml");
        ConfigBuilder::new()
            .state_dir("state")
            .spool_dir("spool")
            .broker("localhost", port)
            .tls_files("tls/ca.pem", "tls/device.pem", "tls/device.key")
            .trust(
                "consent-2026",
                Role::Consent,
                "HlUcpubr33dzSLpH73nq1RnpLeGr2xK9c2aBBA6nkdc",
            )
            .write(&config);
        Terminal { dir, config }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Replaces the device certificate and key.
    fn install(&self, cert_pem: &str, key_pem: &str) {
        fs::write(self.path("tls/device.pem"), cert_pem).unwrap();
        fs::write(self.path("tls/device.key"), key_pem).unwrap();
    }

    fn local(&self) -> doctor::DoctorReport {
        doctor::local_checks(&self.config, clock::now())
    }
}

/// Credentials from a CA that is not the broker's, but files laid out like it.
fn offline_creds(dir: &Path, ca: &Ca, cn: &str) -> ClientCreds {
    let now = clock::now();
    let issued = ca.issue_client(cn, now - 3600, now + 365 * 86_400).unwrap();
    let (cert, key) = issued.write(dir, cn).unwrap();
    ClientCreds {
        ca: ca.write_cert(dir, "ca").unwrap(),
        cert,
        key,
    }
}

fn outcome<'a>(report: &'a doctor::DoctorReport, name: &str) -> &'a Outcome {
    &report
        .get(name)
        .unwrap_or_else(|| panic!("no check {name:?} in\n{report}"))
        .outcome
}

fn assert_fails(report: &doctor::DoctorReport, name: &str, needle: &str) {
    match outcome(report, name) {
        Outcome::Fail(msg) => assert!(msg.contains(needle), "{name}: {msg:?} lacks {needle:?}"),
        other => panic!("{name} should fail, got {other:?}\n{report}"),
    }
    assert!(!report.ok());
}

/// Local checks with good files pass (all but the spool's file system, the
/// disk and the clock's synchronisation, which depend on the machine).
fn assert_local_pass(report: &doctor::DoctorReport) {
    for check in &report.checks {
        if [names::SPOOL_TMPFS, names::DISK, names::CLOCK_SYNC].contains(&check.name) {
            assert!(!matches!(check.outcome, Outcome::Fail(_)), "{report}");
        } else {
            assert_eq!(check.outcome, Outcome::Pass, "{}\n{report}", check.name);
        }
    }
}

#[test]
fn good_files_pass_the_local_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-01"), free_port());
    let report = t.local();
    assert_local_pass(&report);
    assert!(report.ok(), "{report}");
}

/// The clock's synchronisation is checked, as the kernel reports it, and it
/// warns at most: a terminal keeps working with a drifting clock (it applies
/// revocations issued "in the future"), but the operator is told. Whether it
/// warns here depends on this machine's clock; the rule's table is in
/// `doctor::local`.
#[test]
fn clock_synchronisation_is_checked_and_only_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-01"), free_port());
    let report = t.local();
    let got = outcome(&report, names::CLOCK_SYNC);
    let skew = std::time::Duration::from_secs(60);
    let expected = doctor::local::clock_sync_outcome(doctor::local::kernel_clock_sync(), &skew);
    // The estimated error may grow between the two reads; the verdict kind may not.
    assert_eq!(
        std::mem::discriminant(got),
        std::mem::discriminant(&expected),
        "{got:?} vs {expected:?}"
    );
    assert!(!matches!(got, Outcome::Fail(_)), "{report}");
    // The check sits right after the clock's plausibility in the report.
    let order: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
    let at = order.iter().position(|n| *n == names::CLOCK).unwrap();
    assert_eq!(order.get(at + 1), Some(&names::CLOCK_SYNC), "{order:?}");
}

#[test]
fn bad_permissions_on_keys_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-01"), free_port());
    fs::set_permissions(t.path("tls/device.key"), fs::Permissions::from_mode(0o640)).unwrap();
    let report = t.local();
    assert_fails(&report, names::TLS_KEY, "0640");
    assert_fails(&report, names::TLS_FILES, "device.key");
    fs::set_permissions(t.path("tls/device.key"), fs::Permissions::from_mode(0o600)).unwrap();
    if fs::metadata("/proc/self").unwrap().uid() == 0 {
        std::os::unix::fs::chown(t.path("tls/device.key"), Some(54_321), None).unwrap();
        assert_fails(&t.local(), names::TLS_KEY, "owned by uid 54321");
    }

    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-01"), free_port());
    fs::set_permissions(
        t.path("state/storage.key"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert_fails(&t.local(), names::STORAGE_KEY, "0644");
    fs::set_permissions(
        t.path("state/storage.key"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // 0600 but owned by another user: that user reads the key.
    if fs::metadata("/proc/self").unwrap().uid() == 0 {
        std::os::unix::fs::chown(t.path("state/storage.key"), Some(54_321), None).unwrap();
        assert_fails(&t.local(), names::STORAGE_KEY, "owned by uid 54321");
        std::os::unix::fs::chown(t.path("state/storage.key"), Some(0), None).unwrap();
        assert!(!matches!(
            outcome(&t.local(), names::STORAGE_KEY),
            Outcome::Fail(_)
        ));
    } else {
        println!("SKIPPED the storage key owner case: changing a file's owner needs root");
    }
    fs::write(t.path("state/storage.key"), [1u8; 16]).unwrap();
    assert_fails(&t.local(), names::STORAGE_KEY, "16 bytes");
    fs::remove_file(t.path("state/storage.key")).unwrap();
    assert_fails(&t.local(), names::STORAGE_KEY, "provision");
}

#[test]
fn expired_and_not_yet_valid_certificates_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-01"), free_port());
    let now = clock::now();

    let expired = ca.issue_client("term-01", now - 7200, now - 3600).unwrap();
    t.install(&expired.cert_pem, &expired.key_pem);
    let report = t.local();
    assert_fails(&report, names::CERT_DATES, "expired on");
    assert_eq!(outcome(&report, names::CERT_CHAIN), &Outcome::Pass);

    let future = ca.issue_client("term-01", now + 3600, now + 7200).unwrap();
    t.install(&future.cert_pem, &future.key_pem);
    assert_fails(&t.local(), names::CERT_DATES, "not valid before");

    let soon = ca
        .issue_client("term-01", now - 3600, now + 5 * 86_400)
        .unwrap();
    t.install(&soon.cert_pem, &soon.key_pem);
    let report = t.local();
    assert!(
        matches!(outcome(&report, names::CERT_DATES), Outcome::Warn(m) if m.contains("renew")),
        "{report}"
    );
    assert!(report.ok(), "a warning is not a failure:\n{report}");
}

#[test]
fn a_certificate_from_another_ca_fails_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-01"), free_port());
    let other = Ca::new("someone else's CA").unwrap();
    let now = clock::now();
    let foreign = other
        .issue_client("term-01", now - 60, now + 365 * 86_400)
        .unwrap();
    t.install(&foreign.cert_pem, &foreign.key_pem);
    let report = t.local();
    assert_fails(&report, names::CERT_CHAIN, "not signed by the CA");
    assert_eq!(outcome(&report, names::CERT_DATES), &Outcome::Pass);

    // Same issuer name, different key: the signature decides, not the name.
    let impostor = Ca::new("fleet CA").unwrap();
    let fake = impostor
        .issue_client("term-01", now - 60, now + 365 * 86_400)
        .unwrap();
    t.install(&fake.cert_pem, &fake.key_pem);
    assert_fails(&t.local(), names::CERT_CHAIN, "not signed by the CA");
}

#[test]
fn a_certificate_for_another_device_fails_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-02"), free_port());
    assert_fails(&t.local(), names::CERT_IDENTITY, "term-02");
}

#[test]
fn a_device_certificate_that_is_a_ca_or_not_for_client_auth_fails_usage() {
    use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose};
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-01"), free_port());
    assert_eq!(outcome(&t.local(), names::CERT_USAGE), &Outcome::Pass);
    let now = clock::now();
    let issue = |edit: &dyn Fn(&mut rcgen::CertificateParams)| {
        ca.issue_client_edited("term-01", now - 60, now + 365 * 86_400, edit)
            .unwrap()
    };
    type Edit = Box<dyn Fn(&mut rcgen::CertificateParams)>;
    let cases: [(&str, Edit, &str); 4] = [
        (
            "CA:TRUE",
            Box::new(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
            "CA:TRUE",
        ),
        (
            "keyCertSign",
            Box::new(|p| {
                p.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ]
            }),
            "keyCertSign",
        ),
        (
            "no extended key usage",
            Box::new(|p| p.extended_key_usages = vec![]),
            "clientAuth",
        ),
        (
            "server only",
            Box::new(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]),
            "clientAuth",
        ),
    ];
    for (name, edit, needle) in cases {
        let bad = issue(&*edit);
        t.install(&bad.cert_pem, &bad.key_pem);
        let report = t.local();
        assert_fails(&report, names::CERT_USAGE, needle);
        // Everything else about it is fine: only the usage check catches it.
        for other in [names::CERT_CHAIN, names::CERT_IDENTITY, names::TLS_FILES] {
            assert_eq!(outcome(&report, other), &Outcome::Pass, "{name}: {other}");
        }
    }
}

#[test]
fn a_broken_config_is_one_failure_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-01"), free_port());
    let text = fs::read_to_string(&t.config).unwrap();
    fs::write(&t.config, text.replace("host = ", "hostt = ")).unwrap();
    let report = doctor::run_checks(&t.config);
    assert_eq!(report.checks.len(), 1, "{report}");
    assert_fails(&report, names::CONFIG, "mqtt.hostt");
    assert!(config::load_unchecked(&t.config).is_err());
}

#[test]
fn broker_down_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-01"), free_port());
    let report = doctor::run_checks(&t.config);
    assert_fails(&report, names::BROKER, "refused");
    assert_fails(&report, names::BROKER_ACL, "not checked");
    assert_fails(&report, names::BROKER_CONFINEMENT, "not checked");
    let text = report.to_string();
    assert!(text.contains("FAIL  broker connection"), "{text}");
}

#[test]
fn healthy_terminal_passes_against_a_real_broker() {
    let broker = Broker::start();
    let now = clock::now();
    let creds = broker.issue_client_valid("term-01", now - 3600, now + 365 * 86_400);
    let t = Terminal::new(&creds, broker.port);
    let report = doctor::run_checks(&t.config);
    assert_local_pass(&report);
    assert_eq!(outcome(&report, names::BROKER), &Outcome::Pass, "{report}");
    assert_eq!(
        outcome(&report, names::BROKER_ACL),
        &Outcome::Pass,
        "{report}"
    );
    assert_eq!(
        outcome(&report, names::BROKER_CONFINEMENT),
        &Outcome::Pass,
        "{report}"
    );
    assert!(report.ok(), "{report}");
    // The head says where each key lives.
    let cfg = facegate::config::load_unchecked(&t.config).unwrap();
    assert_eq!(
        report.key_place(doctor::places::DEVICE_KEY),
        Some(format!("file {}", cfg.mqtt.key.file().unwrap().display()).as_str()),
        "{report}"
    );
    assert_eq!(
        report.key_place(doctor::places::STORAGE_KEY),
        Some(format!("file {}", cfg.state_dir.join("storage.key").display()).as_str()),
        "{report}"
    );
    assert!(report.to_string().contains("\nkeys:\n"), "{report}");
    // Whatever id the probe asked for, the broker made it the session named
    // by the certificate's CN.
    let log = broker.log();
    assert!(log.contains(" as term-01 "), "{log}");
    assert!(!log.contains(" as term-01-doctor "), "{log}");
}

fn doctor_against(opts: BrokerOptions) -> doctor::DoctorReport {
    let broker = Broker::start_with(opts);
    let now = clock::now();
    let creds = broker.issue_client_valid("term-01", now - 3600, now + 365 * 86_400);
    let t = Terminal::new(&creds, broker.port);
    let report = doctor::run_checks(&t.config);
    assert_eq!(outcome(&report, names::BROKER), &Outcome::Pass, "{report}");
    assert_eq!(
        outcome(&report, names::BROKER_ACL),
        &Outcome::Pass,
        "{report}"
    );
    report
}

#[test]
fn the_old_pattern_layout_fails_confinement() {
    let report = doctor_against(BrokerOptions {
        acl: BrokerAcl::old_pattern(),
        client_id_from_certificate: false,
        ..BrokerOptions::default()
    });
    // `pattern write facegate/+/%u/reply`: the same device name at any site.
    assert_fails(
        &report,
        names::BROKER_CONFINEMENT,
        "accepted a publish on facegate/doctor-probe/term-01/reply",
    );
    assert_fails(
        &report,
        names::BROKER_CONFINEMENT,
        "use_username_as_clientid",
    );
    assert_fails(&report, names::BROKER_CONFINEMENT, "facegate fleet acl");
}

#[test]
fn a_broker_letting_the_device_read_everything_fails_confinement() {
    // Client ids tied to certificates, but the device may read and write it all.
    let report = doctor_against(BrokerOptions {
        acl: BrokerAcl::Custom("user term-01\ntopic readwrite facegate/#\n".into()),
        ..BrokerOptions::default()
    });
    assert_fails(&report, names::BROKER_CONFINEMENT, "delivered");
    assert_fails(
        &report,
        names::BROKER_CONFINEMENT,
        "facegate/lobby/term-01/reply",
    );
    assert_fails(
        &report,
        names::BROKER_CONFINEMENT,
        "facegate/lobby/doctor-probe/reply",
    );
    let Outcome::Fail(msg) = outcome(&report, names::BROKER_CONFINEMENT) else {
        unreachable!()
    };
    assert!(!msg.contains("use_username_as_clientid is off"), "{msg}");
}

/// The probe resumes the device's own session without wiping it and
/// acknowledges nothing: a command queued for the device is still delivered
/// to it afterwards. (With the probe's former clean session, which the broker
/// now names after the certificate, the command was lost; so it was when the
/// probe acknowledged what it received: both checked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_keeps_what_is_queued_for_the_device() {
    const T: Duration = Duration::from_secs(10);
    let broker = Broker::start();
    let now = clock::now();
    let creds = broker.issue_client_valid("term-01", now - 3600, now + 365 * 86_400);
    let cmd = "facegate/lobby/term-01/cmd";
    let mut dev = Session::spawn(broker.options_for("term-01", "localhost", &creds));
    dev.wait_connected(T).await.unwrap();
    dev.subscribe(cmd, T).await;
    dev.client.disconnect().await.unwrap();
    while dev.next(Duration::from_millis(300)).await.is_some() {}
    let mut fleet = Session::spawn(broker.options("fleet"));
    fleet.wait_connected(T).await.unwrap();
    fleet.publish(cmd, "queued-revocation").await;
    fleet.wait_puback(T).await.expect("PUBACK");

    let t = Terminal::new(&creds, broker.port);
    let config = t.config.clone();
    let report = tokio::task::spawn_blocking(move || doctor::run_checks(&config))
        .await
        .unwrap();
    assert!(report.ok(), "{report}");

    let mut dev = Session::spawn(broker.options_for("term-01", "localhost", &creds));
    let ack = dev.wait_connected(T).await.unwrap();
    assert!(ack.session_present, "the device's session was wiped");
    let got = dev.recv_on(cmd, T).await.expect("the queued command");
    assert_eq!(&got.payload[..], b"queued-revocation");
}

/// While the daemon runs, a probe would take its session over: the ACL checks
/// are skipped with a warning, the connection is read from the daemon.
#[test]
fn with_the_daemon_running_the_probes_are_skipped() {
    let broker = Broker::start();
    let d = Daemon::builder().broker(&broker).start();
    d.wait_uplink_connected(Duration::from_secs(20));
    let connections = broker.log().matches(" as term-01 ").count();
    let report = doctor::run_checks(&d.config);
    assert_eq!(outcome(&report, names::BROKER), &Outcome::Pass, "{report}");
    for name in [names::BROKER_ACL, names::BROKER_CONFINEMENT] {
        match outcome(&report, name) {
            Outcome::Warn(msg) => assert!(msg.contains("daemon runs"), "{msg}"),
            other => panic!("{name}: {other:?}\n{report}"),
        }
    }
    assert_eq!(
        broker.log().matches(" as term-01 ").count(),
        connections,
        "the doctor connected as the running daemon"
    );
}

#[test]
fn broker_rejecting_the_certificate_fails() {
    let broker = Broker::start();
    // A CA the broker does not trust: the TLS handshake is refused.
    let tmp = tempfile::tempdir().unwrap();
    let other = Ca::new("fleet CA").unwrap();
    let mut creds = offline_creds(tmp.path(), &other, "term-01");
    creds.ca = broker.ca_file.clone();
    let t = Terminal::new(&creds, broker.port);
    let report = tokio_free_run(&t.config);
    assert!(
        matches!(outcome(&report, names::BROKER), Outcome::Fail(_)),
        "{report}"
    );
}

/// `run_checks` from a plain thread (it builds its own runtime).
fn tokio_free_run(path: &Path) -> doctor::DoctorReport {
    let path = path.to_path_buf();
    std::thread::spawn(move || doctor::run_checks(&path))
        .join()
        .unwrap()
}

#[tokio::test]
async fn async_entry_point_works_inside_a_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-01"), free_port());
    let report = tokio::time::timeout(Duration::from_secs(20), doctor::run_checks_async(&t.config))
        .await
        .unwrap();
    assert_fails(&report, names::BROKER, "refused");
}

#[test]
fn broker_acl_refusing_the_devices_topics_fails() {
    let broker = Broker::start();
    let now = clock::now();
    let creds = broker.issue_client_valid("term-01", now - 3600, now + 365 * 86_400);
    let t = Terminal::new(&creds, broker.port);
    // The test broker's ACL only grants topics under `facegate/`.
    let text = fs::read_to_string(&t.config).unwrap();
    fs::write(
        &t.config,
        text.replace("[mqtt]\n", "[mqtt]\nprefix = \"elsewhere\"\n"),
    )
    .unwrap();
    let report = doctor::run_checks(&t.config);
    assert_eq!(outcome(&report, names::BROKER), &Outcome::Pass, "{report}");
    // Mosquitto grants any subscription and filters on delivery, but its MQTT 5
    // PUBACK says "not authorized" for a topic outside the device's ACL.
    assert_fails(&report, names::BROKER_ACL, "elsewhere/lobby/term-01/reply");
    assert_fails(&report, names::BROKER_ACL, "NotAuthorized");
    assert_fails(&report, names::BROKER_CONFINEMENT, "not checked");
}

/// A control socket that is there but does not answer: whether a daemon runs
/// is unknown, so the probes (which would take its session over) do not run.
#[test]
fn a_control_socket_that_does_not_answer_skips_the_probes() {
    let broker = Broker::start();
    let now = clock::now();
    let creds = broker.issue_client_valid("term-01", now - 3600, now + 365 * 86_400);
    let t = Terminal::new(&creds, broker.port);
    let _listener = std::os::unix::net::UnixListener::bind(t.path("state/control.sock")).unwrap();
    let connections = broker.log().matches(" as term-01 ").count();
    let report = doctor::run_checks(&t.config);
    for name in [names::BROKER, names::BROKER_ACL, names::BROKER_CONFINEMENT] {
        match outcome(&report, name) {
            Outcome::Warn(msg) => assert!(
                msg.contains("cannot tell whether the daemon runs") && msg.contains("no answer"),
                "{msg}"
            ),
            other => panic!("{name}: {other:?}\n{report}"),
        }
    }
    assert_eq!(broker.log().matches(" as term-01 ").count(), connections);
}

/// Adds `keys` (TOML lines) to the terminal's `[mqtt]` table.
fn with_mqtt_keys(t: &Terminal, keys: &str) {
    let text = fs::read_to_string(&t.config).unwrap();
    assert!(text.contains("[mqtt]\n"), "{text}");
    fs::write(
        &t.config,
        text.replace("[mqtt]\n", &format!("[mqtt]\n{keys}\n")),
    )
    .unwrap();
}

/// The profile check lines, in order.
fn profile_lines(report: &doctor::DoctorReport) -> Vec<&'static str> {
    report
        .checks
        .iter()
        .map(|c| c.name)
        .filter(|n| n.starts_with("profile "))
        .collect()
}

#[test]
fn without_a_broker_profile_there_are_no_profile_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-01"), free_port());
    assert!(profile_lines(&t.local()).is_empty());
}

#[test]
fn aws_profile_fails_a_packet_size_above_128_kib_and_passes_at_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let creds = offline_creds(tmp.path(), &ca, "term-01");

    let t = Terminal::new(&creds, free_port());
    with_mqtt_keys(&t, "profile = \"aws-iot\"\nmax_packet_size = \"256KiB\"");
    let report = t.local();
    assert_eq!(
        profile_lines(&report),
        vec![
            names::PROFILE_PACKET_SIZE,
            names::PROFILE_INBOUND_SIZE,
            names::PROFILE_INFLIGHT,
            names::PROFILE_KEEP_ALIVE,
            names::PROFILE_CLIENT_ID,
            names::PROFILE_TOPICS,
            names::PROFILE_PROTOCOL,
            names::PROFILE_SESSION,
        ]
    );
    assert_fails(
        &report,
        names::PROFILE_PACKET_SIZE,
        "mqtt.max_packet_size is 262144 bytes",
    );
    assert_fails(
        &report,
        names::PROFILE_PACKET_SIZE,
        "AWS IoT Core takes messages up to 131072 bytes",
    );
    assert_fails(&report, names::PROFILE_PACKET_SIZE, "\"128KiB\"");
    let text = report.to_string();
    assert!(text.contains("FAIL  profile packet size"), "{text}");
    // The other local checks are unaffected.
    assert_eq!(outcome(&report, names::TLS_FILES), &Outcome::Pass);

    let t = Terminal::new(&creds, free_port());
    with_mqtt_keys(&t, "profile = \"aws-iot\"\nmax_packet_size = \"128KiB\"");
    let report = t.local();
    assert_eq!(
        outcome(&report, names::PROFILE_PACKET_SIZE),
        &Outcome::Pass,
        "{report}"
    );
    for name in profile_lines(&report) {
        assert!(
            !matches!(outcome(&report, name), Outcome::Fail(_)),
            "{report}"
        );
    }
    // AWS ends sessions after an hour unless the quota was raised: said, not failed.
    assert!(
        matches!(outcome(&report, names::PROFILE_SESSION), Outcome::Warn(m) if m.contains("1h"))
    );
    assert!(report.ok(), "{report}");
}

#[test]
fn azure_profile_names_the_topic_layout_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-01"), free_port());
    with_mqtt_keys(&t, "profile = \"azure-iot-hub\"");
    let report = t.local();
    assert_fails(
        &report,
        names::PROFILE_TOPICS,
        "devices/{device_id}/messages/events/",
    );
    assert_fails(
        &report,
        names::PROFILE_TOPICS,
        "facegate/lobby/term-01/captures",
    );
    // 3.1.1, as the uplink speaks: the protocol itself is fine; the default
    // 128 KiB is under the hub's 256 KB.
    assert_eq!(outcome(&report, names::PROFILE_PROTOCOL), &Outcome::Pass);
    assert_eq!(outcome(&report, names::PROFILE_PACKET_SIZE), &Outcome::Pass);
    assert!(
        matches!(outcome(&report, names::PROFILE_CLIENT_ID), Outcome::Warn(m) if m.contains("\"term-01\""))
    );
}

#[test]
fn an_unknown_profile_fails_the_config_naming_the_valid_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-01"), free_port());
    with_mqtt_keys(&t, "profile = \"aws\"");
    let report = t.local();
    assert_eq!(report.checks.len(), 1, "{report}");
    assert_fails(
        &report,
        names::CONFIG,
        "mqtt.profile: expected \"aws-iot\" or \"azure-iot-hub\" or \"emqx\" or \"hivemq\" or \"mosquitto\", got \"aws\"",
    );
}

#[test]
fn mosquitto_profile_warns_that_the_broker_may_deliver_more_than_the_device_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("fleet CA").unwrap();
    let t = Terminal::new(&offline_creds(tmp.path(), &ca, "term-01"), free_port());
    with_mqtt_keys(&t, "profile = \"mosquitto\"");
    let report = t.local();
    match outcome(&report, names::PROFILE_INBOUND_SIZE) {
        // max(1 MiB, 4 × 64 KiB) with the default commands.max_bytes.
        Outcome::Warn(m) => assert!(
            m.contains("1048576 bytes") && m.contains("max_packet_size"),
            "{m}"
        ),
        other => panic!("{other:?}\n{report}"),
    }
    assert!(report.ok(), "{report}");
}
