//! `facegate provision` on real files: what a first run creates, that a second
//! run changes nothing, how it recovers a missing or stale CSR, and that it
//! never overwrites a key it cannot use.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use facegate::config::{self, Config};
use facegate::provision::{
    csr_info, csr_path_for, items, provision, provision_owned, Action, Owner, ProvisionError,
    STORAGE_KEY_FILE,
};
use facegate_testkit::config::{ConfigBuilder, Role};
use rcgen::{KeyPair, PublicKeyData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

/// The consent key every provisioning config trusts.
const CONSENT_PUB: &str = "HlUcpubr33dzSLpH73nq1RnpLeGr2xK9c2aBBA6nkdc";

/// A config for `term-01` with the TLS files at `ca`, `cert` and `key`.
fn site_config(state: &Path, spool: &Path, ca: &Path, cert: &Path, key: &Path) -> ConfigBuilder {
    ConfigBuilder::new()
        .state_dir(state)
        .spool_dir(spool)
        .host("broker.example.net")
        .tls_files(ca, cert, key)
        .trust("consent-2026", Role::Consent, CONSENT_PUB)
}

/// A config whose state dir and TLS files live in a fresh temp dir (none exist yet).
fn setup() -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = site_config(
        &d.join("state"),
        &d.join("spool"),
        &d.join("etc/ca.pem"),
        &d.join("etc/device.pem"),
        &d.join("etc/device.key"),
    )
    .load(d);
    (dir, cfg)
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `mqtt.key_file` of a config with a file key.
fn key_file(cfg: &Config) -> PathBuf {
    cfg.mqtt.key.file().expect("a file key").to_path_buf()
}

fn storage_key(cfg: &Config) -> PathBuf {
    cfg.state_dir.join(STORAGE_KEY_FILE)
}

#[test]
fn first_run_creates_the_device_secrets_and_a_csr() {
    let (_dir, cfg) = setup();
    let report = provision(&cfg).unwrap();

    assert_eq!(report.action(items::STATE_DIR), Some(Action::Created));
    assert_eq!(mode(&cfg.state_dir), 0o700);

    assert_eq!(report.action(items::STORAGE_KEY), Some(Action::Created));
    let key = fs::read(storage_key(&cfg)).unwrap();
    assert_eq!(key.len(), 32);
    assert_ne!(key, vec![0u8; 32]);
    assert_eq!(mode(&storage_key(&cfg)), 0o600);

    assert_eq!(report.action(items::TLS_KEY), Some(Action::Created));
    assert_eq!(mode(&key_file(&cfg)), 0o600);
    let key_pem = fs::read_to_string(key_file(&cfg)).unwrap();
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8 PEM"
    );
    let tls_key = KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(tls_key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    // The uplink's own key loader accepts it.
    assert!(matches!(
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()),
        Ok(PrivateKeyDer::Pkcs8(_))
    ));

    assert_eq!(report.action(items::CSR), Some(Action::Created));
    let csr_path = cfg.state_dir.parent().unwrap().join("etc/device.csr");
    assert_eq!(report.csr_path, csr_path);
    assert_eq!(mode(&csr_path), 0o644);
    let csr_pem = fs::read_to_string(&csr_path).unwrap();
    assert_eq!(report.csr_pem, csr_pem);
    let info = csr_info(&csr_pem).expect("a parsable CSR");
    assert_eq!(info.common_name.as_deref(), Some("term-01"));
    assert_eq!(info.organizational_unit.as_deref(), Some("lobby"));
    assert_eq!(
        info.san_uris,
        vec!["urn:facegate:lobby/term-01".to_string()]
    );
    assert!(info.signature_ok);
    assert_eq!(info.public_key_der, tls_key.subject_public_key_info());

    assert_eq!(report.action(items::CERT), Some(Action::Missing));
    assert_eq!(report.action(items::CA), Some(Action::Missing));
    assert!(report.changed());
}

#[test]
fn second_run_creates_nothing_and_keeps_every_byte() {
    let (_dir, cfg) = setup();
    provision(&cfg).unwrap();
    let csr_path = csr_path_for(&key_file(&cfg));
    let before: Vec<Vec<u8>> = [&storage_key(&cfg), &key_file(&cfg), &csr_path]
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect();

    let again = provision(&cfg).unwrap();
    assert!(!again.changed(), "{again}");
    for what in [
        items::STATE_DIR,
        items::STORAGE_KEY,
        items::TLS_KEY,
        items::CSR,
    ] {
        assert_eq!(again.action(what), Some(Action::Kept), "{what}");
    }
    let after: Vec<Vec<u8>> = [&storage_key(&cfg), &key_file(&cfg), &csr_path]
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn a_missing_csr_is_made_again_from_the_existing_key() {
    let (_dir, cfg) = setup();
    provision(&cfg).unwrap();
    let key_before = fs::read(key_file(&cfg)).unwrap();
    let csr_path = csr_path_for(&key_file(&cfg));
    fs::remove_file(&csr_path).unwrap();

    let report = provision(&cfg).unwrap();
    assert_eq!(report.action(items::TLS_KEY), Some(Action::Kept));
    assert_eq!(report.action(items::CSR), Some(Action::Created));
    assert_eq!(fs::read(key_file(&cfg)).unwrap(), key_before);
    let key = KeyPair::from_pem(std::str::from_utf8(&key_before).unwrap()).unwrap();
    let info = csr_info(&fs::read_to_string(&csr_path).unwrap()).unwrap();
    assert_eq!(info.public_key_der, key.subject_public_key_info());
}

#[test]
fn a_csr_of_another_key_or_device_is_rewritten() {
    let (dir, cfg) = setup();
    provision(&cfg).unwrap();
    let csr_path = csr_path_for(&key_file(&cfg));

    // A CSR left over from an earlier key.
    let other = KeyPair::generate().unwrap();
    let stale = facegate::provision::CsrRequest::for_device("lobby", "term-01")
        .to_pem(&other)
        .unwrap();
    fs::write(&csr_path, &stale).unwrap();
    let report = provision(&cfg).unwrap();
    assert_eq!(report.action(items::CSR), Some(Action::Replaced));
    let key = KeyPair::from_pem(&fs::read_to_string(key_file(&cfg)).unwrap()).unwrap();
    let info = csr_info(&fs::read_to_string(&csr_path).unwrap()).unwrap();
    assert_eq!(info.public_key_der, key.subject_public_key_info());

    // The same key, but the device was renamed in the config.
    let renamed = {
        let mut c = cfg.clone();
        c.identity.device_id = "term-09".into();
        c
    };
    let report = provision(&renamed).unwrap();
    assert_eq!(report.action(items::CSR), Some(Action::Replaced));
    let info = csr_info(&fs::read_to_string(&csr_path).unwrap()).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("term-09"));

    // Garbage where the CSR belongs is replaced too (a CSR is public).
    fs::write(&csr_path, "not a CSR").unwrap();
    let report = provision(&cfg).unwrap();
    assert_eq!(report.action(items::CSR), Some(Action::Replaced));
    drop(dir);
}

#[test]
fn unusable_existing_keys_are_refused_and_left_alone() {
    // A storage key of the wrong size.
    let (_dir, cfg) = setup();
    fs::create_dir_all(&cfg.state_dir).unwrap();
    fs::write(storage_key(&cfg), [1u8; 31]).unwrap();
    let err = provision(&cfg).unwrap_err();
    assert!(
        matches!(err, ProvisionError::BadExistingKey { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("storage.key"), "{err}");
    assert_eq!(fs::read(storage_key(&cfg)).unwrap(), vec![1u8; 31]);

    // A TLS key file that is not a PKCS#8 key.
    let (_dir, cfg) = setup();
    fs::create_dir_all(key_file(&cfg).parent().unwrap()).unwrap();
    fs::write(key_file(&cfg), "garbage").unwrap();
    let err = provision(&cfg).unwrap_err();
    assert!(
        matches!(err, ProvisionError::BadExistingKey { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("device.key"), "{err}");
    assert_eq!(fs::read_to_string(key_file(&cfg)).unwrap(), "garbage");
    assert!(!csr_path_for(&key_file(&cfg)).exists());
}

#[test]
fn report_tells_the_admin_what_to_send_and_never_shows_keys() {
    let (_dir, cfg) = setup();
    let report = provision(&cfg).unwrap();
    let text = report.to_string();
    assert!(
        text.contains(&report.csr_path.display().to_string()),
        "{text}"
    );
    assert!(text.contains("fleet PKI"), "{text}");
    assert!(text.contains("CN=term-01, OU=lobby"), "{text}");
    assert!(text.contains("urn:facegate:lobby/term-01"), "{text}");
    assert!(text.contains(&report.public_key_sha256), "{text}");
    assert!(text.contains("created"), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let again = provision(&cfg).unwrap().to_string();
    assert!(again.contains("exists, kept"), "{again}");
    assert!(!again.contains("created"), "{again}");
}

#[test]
fn owner_lookup_and_chown() {
    assert_eq!(Owner::of_user("root").unwrap().uid, 0);
    assert!(matches!(
        Owner::of_user("no-such-user-facegate-test"),
        Err(ProvisionError::NoSuchUser(_))
    ));
    let (dir, cfg) = setup();
    let me = fs::metadata(dir.path()).unwrap();
    let owner = Owner {
        uid: me.uid(),
        gid: me.gid(),
    };
    provision_owned(&cfg, Some(owner)).unwrap();
    for p in [&cfg.state_dir, &storage_key(&cfg), &key_file(&cfg)] {
        let m = fs::metadata(p).unwrap();
        assert_eq!((m.uid(), m.gid()), (owner.uid, owner.gid), "{p:?}");
    }
}

#[test]
fn config_for_provisioning_loads_before_the_tls_files_exist() {
    let (dir, _) = setup();
    let path = dir.path().join("facegate.toml");
    site_config(
        Path::new("state"),
        Path::new("spool"),
        Path::new("ca.pem"),
        Path::new("device.pem"),
        Path::new("device.key"),
    )
    .write(&path);
    let err = config::load_with_env(&path, &[]).unwrap_err();
    assert_eq!(err.key(), Some("mqtt.ca_file"));
    let cfg = config::load_unchecked_with_env(&path, &[]).unwrap();
    assert_eq!(key_file(&cfg), dir.path().join("device.key"));
    provision(&cfg).unwrap();
    // Still refused by the daemon's loader until the signed certificate and CA are installed.
    assert!(config::load_with_env(&path, &[]).is_err());
}

/// The effective uid of the test process (root in CI).
fn running_as_root() -> bool {
    fs::metadata("/proc/self").unwrap().uid() == 0
}

/// A file outside the state directory that provision must never change.
fn canary(dir: &Path, bytes: &[u8]) -> (PathBuf, fs::Metadata) {
    let path = dir.join("canary");
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    (path.clone(), fs::metadata(&path).unwrap())
}

fn assert_untouched(path: &Path, before: &fs::Metadata, bytes: &[u8]) {
    let now = fs::metadata(path).unwrap();
    assert_eq!(
        (now.uid(), now.gid(), now.mode() & 0o7777),
        (before.uid(), before.gid(), before.mode() & 0o7777),
        "{path:?} changed owner or mode"
    );
    assert_eq!(fs::read(path).unwrap(), bytes, "{path:?} changed content");
}

#[test]
fn a_racing_symlink_swap_never_changes_another_file() {
    if !running_as_root() {
        eprintln!("skipped: giving files to another user needs root (CI runs as root)");
        return;
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let (dir, cfg) = setup();
    let (canary, before) = canary(dir.path(), b"root's file");
    // Secrets go to another user, as `provision` run by root gives them to `facegate`.
    let owner = Owner {
        uid: 4242,
        gid: 4242,
    };
    provision_owned(&cfg, Some(owner)).unwrap();
    let key = storage_key(&cfg);

    // Whoever can write the state directory (the daemon's user) keeps
    // replacing the storage key with a link to root's file.
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (stop, key, canary) = (stop.clone(), key.clone(), canary.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = fs::remove_file(&key);
                if std::os::unix::fs::symlink(&canary, &key).is_ok() {
                    swaps += 1;
                }
            }
            swaps
        })
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut runs, mut created) = (0u32, 0u32);
    while Instant::now() < deadline {
        let _ = fs::remove_file(&key);
        if let Ok(report) = provision_owned(&cfg, Some(owner)) {
            if report.action(items::STORAGE_KEY) == Some(Action::Created) {
                created += 1;
            }
        }
        runs += 1;
        let now = fs::metadata(&canary).unwrap();
        if (now.uid(), now.mode() & 0o7777) != (before.uid(), before.mode() & 0o7777) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    assert_untouched(&canary, &before, b"root's file");
    assert!(
        swaps > 0 && runs > 10,
        "the race did not run: {swaps} swaps, {runs} runs"
    );
    eprintln!("{runs} runs, {created} keys created, {swaps} swaps");
}

#[test]
fn a_symlink_where_a_secret_belongs_is_refused() {
    // A link to a file that would pass as a storage key, and a dangling link.
    let (dir, cfg) = setup();
    let (target, before) = canary(dir.path(), &[9u8; 32]);
    fs::create_dir_all(&cfg.state_dir).unwrap();
    fs::set_permissions(&cfg.state_dir, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&target, storage_key(&cfg)).unwrap();
    let err = provision(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("storage.key") && err.contains("symbolic link"),
        "{err}"
    );
    assert_untouched(&target, &before, &[9u8; 32]);

    fs::remove_file(storage_key(&cfg)).unwrap();
    std::os::unix::fs::symlink(dir.path().join("nowhere"), storage_key(&cfg)).unwrap();
    let err = provision(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("storage.key") && err.contains("symbolic link"),
        "{err}"
    );
    assert!(!dir.path().join("nowhere").exists());

    // A link to some other private key in place of the device's TLS key.
    let (dir, cfg) = setup();
    let other = dir.path().join("other.key");
    fs::write(&other, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    fs::create_dir_all(key_file(&cfg).parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&other, key_file(&cfg)).unwrap();
    let err = provision(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("device.key") && err.contains("symbolic link"),
        "{err}"
    );
    assert!(!csr_path_for(&key_file(&cfg)).exists());

    // A hard link to another file.
    let (dir, cfg) = setup();
    let (target, before) = canary(dir.path(), &[9u8; 32]);
    fs::create_dir_all(&cfg.state_dir).unwrap();
    fs::set_permissions(&cfg.state_dir, fs::Permissions::from_mode(0o700)).unwrap();
    fs::hard_link(&target, storage_key(&cfg)).unwrap();
    let err = provision(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("storage.key") && err.contains("hard links"),
        "{err}"
    );
    assert_untouched(&target, &before, &[9u8; 32]);
}

#[test]
fn a_state_directory_others_can_write_is_refused() {
    let (_dir, cfg) = setup();
    fs::create_dir_all(&cfg.state_dir).unwrap();
    fs::set_permissions(&cfg.state_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let err = provision(&cfg).unwrap_err().to_string();
    assert!(
        err.contains(&cfg.state_dir.display().to_string()) && err.contains("writable"),
        "{err}"
    );
    assert!(!storage_key(&cfg).exists());

    fs::set_permissions(&cfg.state_dir, fs::Permissions::from_mode(0o770)).unwrap();
    let err = provision(&cfg).unwrap_err().to_string();
    assert!(err.contains("0770"), "{err}");

    if running_as_root() {
        // Owned by another, unprivileged user.
        fs::set_permissions(&cfg.state_dir, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&cfg.state_dir, Some(4243), Some(4243)).unwrap();
        let err = provision(&cfg).unwrap_err().to_string();
        assert!(
            err.contains(&cfg.state_dir.display().to_string()) && err.contains("uid 4243"),
            "{err}"
        );
        assert!(!storage_key(&cfg).exists());
        // Unless that user is the one the secrets are for.
        let owner = Owner {
            uid: 4243,
            gid: 4243,
        };
        provision_owned(&cfg, Some(owner)).unwrap();
        let key = fs::metadata(storage_key(&cfg)).unwrap();
        assert_eq!((key.uid(), key.mode() & 0o777), (4243, 0o600));
    }

    // The directory of the TLS key too.
    let (_dir, cfg) = setup();
    let key = key_file(&cfg);
    let etc = key.parent().unwrap();
    fs::create_dir_all(etc).unwrap();
    fs::set_permissions(etc, fs::Permissions::from_mode(0o757)).unwrap();
    let err = provision(&cfg).unwrap_err().to_string();
    assert!(
        err.contains(&etc.display().to_string()) && err.contains("writable"),
        "{err}"
    );
    assert!(!key_file(&cfg).exists());
}
