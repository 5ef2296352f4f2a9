//! The doctor's checks that need no network: state directory, storage key,
//! TLS files, the device certificate (dates, chain, identity), clock, spool
//! file system and disk space. The rules for dates, clock, disk and spool are
//! pure functions of their inputs and `now`; the `check_*` functions gather
//! the inputs from the file system.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use x509_parser::prelude::*;

use super::{names, places, Check, KeyPlace, Outcome};
use crate::clock;
use crate::config::{Config, KeySource};
use crate::credential;
use crate::crypto::{CREDENTIALS_DIRECTORY, CREDENTIAL_NAME};
use crate::keyref::{KeyRef, Pkcs11Key};
use crate::pkcs11::TokenKey;
use crate::provision::{Owner, STORAGE_KEY_FILE, STORAGE_KEY_LEN};
use crate::uplink::tls;

/// A certificate expiring sooner than this is a warning.
pub const EXPIRY_WARNING_SECS: i64 = 30 * 24 * 3600;
/// A clock before this (2024-01-01T00:00:00Z) cannot be right: certificate
/// and token checks would all be wrong.
pub const EARLIEST_PLAUSIBLE_TIME: i64 = 1_704_067_200;
/// Less free space than this in the state directory is a warning (100 MiB).
pub const DISK_WARN_BYTES: u64 = 100 * 1024 * 1024;
/// Less free space than this in the state directory is a failure (10 MiB).
pub const DISK_FAIL_BYTES: u64 = 10 * 1024 * 1024;
/// `statfs` magic number of tmpfs.
pub const TMPFS_MAGIC: u64 = 0x0102_1994;
/// `statfs` magic number of ramfs (also memory only).
pub const RAMFS_MAGIC: u64 = 0x8584_58f6;
/// Every local check for `cfg`, at time `now`, in the order they are printed.
pub fn checks(cfg: &Config, now: i64) -> Vec<Check> {
    let mut checks = vec![
        check_state_dir(&cfg.state_dir),
        match cfg.storage.key_source {
            KeySource::File => check_storage_key(&cfg.state_dir.join(STORAGE_KEY_FILE)),
            KeySource::Credential => check_storage_credential(&cfg.state_dir),
        },
        check_tls_key(&cfg.mqtt.key),
        check_tls_files(cfg),
    ];
    checks.extend(check_certificate(cfg, now));
    checks.push(Check {
        name: names::CLOCK,
        outcome: clock_outcome(now),
    });
    checks.push(Check {
        name: names::CLOCK_SYNC,
        outcome: clock_sync_outcome(kernel_clock_sync(), &cfg.commands.clock_skew),
    });
    checks.push(check_spool(&cfg.spool_dir));
    checks.push(check_disk(&cfg.state_dir));
    checks
}

/// Permission bits of `path`, or a failure naming it.
fn mode_of(path: &Path) -> Result<(u32, u64), String> {
    fs::metadata(path)
        .map(|m| (m.permissions().mode() & 0o7777, m.len()))
        .map_err(|e| format!("{}: {}", path.display(), e.kind()))
}

fn check_state_dir(dir: &Path) -> Check {
    let name = names::STATE_DIR;
    match mode_of(dir) {
        Err(e) => Check::fail(name, format!("{e} (run facegate provision)")),
        Ok(_) if !dir.is_dir() => {
            Check::fail(name, format!("{} is not a directory", dir.display()))
        }
        Ok((mode, _)) if mode & 0o077 != 0 => Check::warn(
            name,
            format!("{} has mode {mode:04o}; expected 0700", dir.display()),
        ),
        Ok(_) => Check::pass(name),
    }
}

fn check_storage_key(path: &Path) -> Check {
    let name = names::STORAGE_KEY;
    match mode_of(path) {
        Err(e) => Check::fail(name, format!("{e} (run facegate provision)")),
        Ok((mode, _)) if mode & 0o077 != 0 => Check::fail(
            name,
            format!(
                "{} has mode {mode:04o}: other users can read the device key (chmod 600)",
                path.display()
            ),
        ),
        Ok((_, len)) if len != STORAGE_KEY_LEN as u64 => Check::fail(
            name,
            format!(
                "{} is {len} bytes, expected {STORAGE_KEY_LEN}",
                path.display()
            ),
        ),
        Ok(_) => match fs::metadata(path).map(|m| m.uid()) {
            Ok(uid) if !key_owner_allowed(uid) => Check::fail(
                name,
                format!(
                    "{} is owned by uid {uid}: that user can read the device key (chown facegate: it, or run facegate provision)",
                    path.display()
                ),
            ),
            _ => Check::pass(name),
        },
    }
}

/// Who may own a key file: the service user (`facegate` when it exists), the
/// user running doctor, or root (who can read everything anyway).
fn key_owner_allowed(uid: u32) -> bool {
    let service = Owner::of_user("facegate").ok().map(|o| o.uid);
    // /proc/self belongs to this process's effective user.
    let me = fs::metadata("/proc/self").map(|m| m.uid()).ok();
    uid == 0 || Some(uid) == service || Some(uid) == me
}

/// What the doctor finds about a storage key kept as a systemd credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFacts {
    /// `<state_dir>/storage.key`, if a key file is there too.
    pub key_file: Option<String>,
    /// `$CREDENTIALS_DIRECTORY/facegate-storage-key` and its size (or why
    /// it cannot be read), when the variable is set.
    pub credential: Option<(String, Result<u64, String>)>,
    /// The sealed credential at the default place and what seals it, if it is there.
    pub sealed: Option<(String, Option<&'static str>)>,
}

/// The rule for `storage.key_source = "credential"` (pure): a key file next
/// to it fails (ambiguous); inside the service the credential must be there
/// and 32 bytes; outside it (no `$CREDENTIALS_DIRECTORY`, e.g. doctor run
/// from a shell) it cannot be read, which is a warning saying how to check.
pub fn storage_credential_outcome(facts: &CredentialFacts) -> Outcome {
    if let Some(file) = &facts.key_file {
        return Outcome::Fail(format!(
            "storage.key_source = \"credential\" but the key file {file} exists too: it is unclear which key encrypts the database (seal it, then remove it; see OPERATIONS.md, \"The storage key as a sealed credential\")"
        ));
    }
    match &facts.credential {
        Some((_, Ok(len))) if *len == STORAGE_KEY_LEN as u64 => Outcome::Pass,
        Some((path, Ok(len))) => Outcome::Fail(format!(
            "{path} is {len} bytes, expected {STORAGE_KEY_LEN}"
        )),
        Some((path, Err(e))) => Outcome::Fail(format!(
            "{path}: {e} (the unit must load it with LoadCredentialEncrypted={CREDENTIAL_NAME}:<sealed file>)"
        )),
        None => match &facts.sealed {
            Some((path, Some(with))) => Outcome::Warn(format!(
                "${CREDENTIALS_DIRECTORY} is not set (not run by the service), so the credential cannot be read here; {path} is sealed with {with}: check it decrypts with `systemd-creds decrypt --name={CREDENTIAL_NAME} {path} - | wc -c` (as root, prints 32)"
            )),
            Some((path, None)) => Outcome::Fail(format!(
                "{path} is not a credential sealed by systemd-creds"
            )),
            None => Outcome::Warn(format!(
                "${CREDENTIALS_DIRECTORY} is not set (not run by the service), so the credential cannot be read here, and there is no sealed credential at {} (run facegate provision --seal, or check the path the unit's LoadCredentialEncrypted= names)",
                credential::DEFAULT_SEALED_PATH
            )),
        },
    }
}

/// What there is to know about the storage credential on this machine.
fn credential_facts(state_dir: &Path) -> CredentialFacts {
    let key_file = state_dir.join(STORAGE_KEY_FILE);
    let credential = std::env::var_os(CREDENTIALS_DIRECTORY)
        .filter(|d| !d.is_empty())
        .map(|dir| {
            let path = Path::new(&dir).join(CREDENTIAL_NAME);
            let len = fs::metadata(&path)
                .map(|m| m.len())
                .map_err(|e| e.kind().to_string());
            (path.display().to_string(), len)
        });
    let sealed_path = credential::default_sealed_path();
    let sealed = fs::read(&sealed_path).ok().map(|bytes| {
        (
            sealed_path.display().to_string(),
            credential::sealed_with(&bytes),
        )
    });
    CredentialFacts {
        key_file: fs::symlink_metadata(&key_file)
            .ok()
            .map(|_| key_file.display().to_string()),
        credential,
        sealed,
    }
}

fn check_storage_credential(state_dir: &Path) -> Check {
    Check {
        name: names::STORAGE_KEY,
        outcome: storage_credential_outcome(&credential_facts(state_dir)),
    }
}

/// Where the device's keys live, for the head of the report: the TLS key (a
/// file, or a token with its slot and whether the key can leave it) and the
/// storage key.
pub fn key_places(cfg: &Config) -> Vec<KeyPlace> {
    let device = match &cfg.mqtt.key {
        KeyRef::File(path) => format!("file {}", path.display()),
        KeyRef::Pkcs11(key) => match TokenKey::open(key) {
            Ok(token_key) => token_key.location().to_string(),
            Err(e) => format!("PKCS#11 {} (cannot be opened: {})", key.uri, e.reason),
        },
    };
    vec![
        KeyPlace {
            key: places::DEVICE_KEY,
            place: device,
        },
        KeyPlace {
            key: places::STORAGE_KEY,
            place: match cfg.storage.key_source {
                KeySource::File => {
                    format!("file {}", cfg.state_dir.join(STORAGE_KEY_FILE).display())
                }
                KeySource::Credential => {
                    let facts = credential_facts(&cfg.state_dir);
                    let mut place = format!("systemd credential {CREDENTIAL_NAME}");
                    match &facts.credential {
                        Some((path, _)) => place.push_str(&format!(" (loaded: {path})")),
                        None => place.push_str(&format!(" (${CREDENTIALS_DIRECTORY} not set)")),
                    }
                    if let Some((path, with)) = &facts.sealed {
                        place.push_str(&format!(", sealed: {} {path}", with.unwrap_or("unknown")));
                    }
                    place
                }
            },
        },
    ]
}

fn check_tls_key(key: &KeyRef) -> Check {
    match key {
        KeyRef::File(path) => check_tls_key_file(path),
        KeyRef::Pkcs11(key) => check_token_key(key),
    }
}

/// A token key must open (library, token, PIN, object) and must not be
/// extractable or readable (`CKA_EXTRACTABLE` false, `CKA_SENSITIVE` true).
fn check_token_key(key: &Pkcs11Key) -> Check {
    let name = names::TLS_KEY;
    match TokenKey::open(key) {
        Err(e) => Check::fail(name, e.to_string()),
        Ok(k) if k.location().extractable || !k.location().sensitive => Check::warn(
            name,
            format!(
                "{}: the key can be exported from the token (CKA_EXTRACTABLE true or CKA_SENSITIVE false): generate a new one with facegate provision",
                key.uri
            ),
        ),
        Ok(_) => Check::pass(name),
    }
}

fn check_tls_key_file(path: &Path) -> Check {
    let name = names::TLS_KEY;
    match mode_of(path) {
        Err(e) => Check::fail(name, format!("{e} (mqtt.key_file; run facegate provision)")),
        Ok((mode, _)) if mode & 0o077 != 0 => Check::fail(
            name,
            format!(
                "{} has mode {mode:04o}: group/others can access the private key (chmod 600)",
                path.display()
            ),
        ),
        Ok(_) => match fs::metadata(path).map(|m| m.uid()) {
            Ok(uid) if !key_owner_allowed(uid) => Check::fail(
                name,
                format!(
                    "{} is owned by uid {uid}: that user can read the private key (chown facegate: it)",
                    path.display()
                ),
            ),
            _ => Check::pass(name),
        },
    }
}

fn check_tls_files(cfg: &Config) -> Check {
    let m = &cfg.mqtt;
    match tls::client_config_for(&m.ca_file, &m.cert_file, &m.key) {
        Ok(_) => Check::pass(names::TLS_FILES),
        Err(e) => Check::fail(names::TLS_FILES, e.to_string()),
    }
}

/// Dates, chain and identity of the device certificate (three checks).
fn check_certificate(cfg: &Config, now: i64) -> Vec<Check> {
    let cert_file = &cfg.mqtt.cert_file;
    let chain = match read_pem_certs(cert_file) {
        Ok(chain) => chain,
        Err(e) => {
            return [
                names::CERT_DATES,
                names::CERT_CHAIN,
                names::CERT_IDENTITY,
                names::CERT_USAGE,
            ]
            .into_iter()
            .map(|n| Check::fail(n, e.clone()))
            .collect()
        }
    };
    let anchors = read_pem_certs(&cfg.mqtt.ca_file);
    let mut checks = Vec::new();
    match X509Certificate::from_der(&chain[0]) {
        Ok((_, leaf)) => {
            let v = leaf.validity();
            checks.push(Check {
                name: names::CERT_DATES,
                outcome: cert_dates_outcome(v.not_before.timestamp(), v.not_after.timestamp(), now),
            });
            checks.push(Check {
                name: names::CERT_CHAIN,
                outcome: chain_outcome(&chain, &anchors, &cfg.mqtt.ca_file),
            });
            checks.push(Check {
                name: names::CERT_IDENTITY,
                outcome: identity_outcome(&leaf, &cfg.identity.device_id),
            });
            checks.push(Check {
                name: names::CERT_USAGE,
                outcome: match CertUsage::of(&leaf) {
                    Ok(usage) => usage_outcome(&usage),
                    Err(e) => Outcome::Fail(e),
                },
            });
        }
        Err(e) => {
            let msg = format!("{}: not an X.509 certificate: {e}", cert_file.display());
            for n in [
                names::CERT_DATES,
                names::CERT_CHAIN,
                names::CERT_IDENTITY,
                names::CERT_USAGE,
            ] {
                checks.push(Check::fail(n, msg.clone()));
            }
        }
    }
    checks
}

/// DER of every `CERTIFICATE` block in a PEM file; at least one.
fn read_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let data = fs::read(path).map_err(|e| format!("{}: {}", path.display(), e.kind()))?;
    let mut certs = Vec::new();
    for pem in Pem::iter_from_buffer(&data) {
        let pem = pem.map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
        if pem.label == "CERTIFICATE" {
            certs.push(pem.contents);
        }
    }
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// The rule for certificate dates at `now`.
pub fn cert_dates_outcome(not_before: i64, not_after: i64, now: i64) -> Outcome {
    let date = |t: i64| clock::rfc3339(t);
    if now < not_before {
        Outcome::Fail(format!(
            "not valid before {} (is the clock wrong?)",
            date(not_before)
        ))
    } else if now > not_after {
        Outcome::Fail(format!("expired on {}", date(not_after)))
    } else if not_after - now < EXPIRY_WARNING_SECS {
        Outcome::Warn(format!(
            "expires on {} (in {} days): renew it",
            date(not_after),
            (not_after - now) / 86_400
        ))
    } else {
        Outcome::Pass
    }
}

/// Whether the leaf `chain[0]` leads, through the rest of `chain`, to a
/// certificate in `anchors` (the CA file, or why it could not be read) by
/// valid signatures.
fn chain_outcome(
    chain: &[Vec<u8>],
    anchors: &Result<Vec<Vec<u8>>, String>,
    ca_file: &Path,
) -> Outcome {
    let anchors = match anchors {
        Ok(a) => a,
        Err(e) => return Outcome::Fail(format!("{e} (mqtt.ca_file)")),
    };
    fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
        X509Certificate::from_der(der).ok().map(|(_, c)| c)
    }
    let anchors: Vec<X509Certificate> = anchors.iter().filter_map(|d| parse(d)).collect();
    if anchors.is_empty() {
        return Outcome::Fail(format!(
            "{}: no usable CA certificate (mqtt.ca_file)",
            ca_file.display()
        ));
    }
    let intermediates: Vec<X509Certificate> = chain[1..].iter().filter_map(|d| parse(d)).collect();
    let Some(mut current) = parse(&chain[0]) else {
        return Outcome::Fail("device certificate cannot be parsed".into());
    };
    let signed_by = |child: &X509Certificate, parent: &X509Certificate| {
        child.issuer() == parent.subject()
            && child.verify_signature(Some(parent.public_key())).is_ok()
    };
    for _ in 0..=intermediates.len() {
        if anchors.iter().any(|a| signed_by(&current, a)) {
            return Outcome::Pass;
        }
        match intermediates.iter().find(|i| signed_by(&current, i)) {
            Some(next) => current = next.clone(),
            None => break,
        }
    }
    Outcome::Fail(format!(
        "device certificate (issuer {}) is not signed by the CA in {} (mqtt.ca_file)",
        current.issuer(),
        ca_file.display()
    ))
}

/// The certificate's CN must be the device id (the broker's ACL keys on it).
fn identity_outcome(leaf: &X509Certificate, device_id: &str) -> Outcome {
    let cn = leaf
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok());
    if cn != Some(device_id) {
        return Outcome::Fail(format!(
            "certificate CN is {:?}, but device_id is {device_id:?}: the broker would treat it as another device",
            cn.unwrap_or("")
        ));
    }
    Outcome::Pass
}

/// What a device certificate may be used for, as the usage rule needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertUsage {
    /// basicConstraints says `CA:TRUE`.
    pub ca: bool,
    /// keyUsage includes `keyCertSign` (it may sign certificates).
    pub key_cert_sign: bool,
    /// extendedKeyUsage is present and lists `clientAuth`.
    pub client_auth: bool,
}

impl CertUsage {
    /// Reads the three extensions of `leaf`; an unreadable one is an error.
    fn of(leaf: &X509Certificate) -> Result<CertUsage, String> {
        let bad = |what: &str, e: X509Error| format!("unreadable {what} extension: {e}");
        let ca = leaf
            .basic_constraints()
            .map_err(|e| bad("basic constraints", e))?
            .is_some_and(|b| b.value.ca);
        let key_cert_sign = leaf
            .key_usage()
            .map_err(|e| bad("key usage", e))?
            .is_some_and(|k| k.value.key_cert_sign());
        let client_auth = leaf
            .extended_key_usage()
            .map_err(|e| bad("extended key usage", e))?
            .is_some_and(|e| e.value.client_auth);
        Ok(CertUsage {
            ca,
            key_cert_sign,
            client_auth,
        })
    }
}

/// The rule for a device certificate's usage: a TLS client certificate
/// (EKU `clientAuth`, listed explicitly) that cannot act as a CA. A device
/// certificate that can sign certificates lets whoever holds the device key
/// mint any identity the broker trusts, `fleet` included.
pub fn usage_outcome(usage: &CertUsage) -> Outcome {
    let mut problems = Vec::new();
    if usage.ca {
        problems.push("is a CA (basicConstraints CA:TRUE)");
    }
    if usage.key_cert_sign {
        problems.push("may sign certificates (keyUsage keyCertSign)");
    }
    if !usage.client_auth {
        problems.push("does not list TLS client authentication (extendedKeyUsage clientAuth)");
    }
    if problems.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(format!(
            "device certificate {}: have the CSR signed again with the recipe in OPERATIONS.md (explicit extensions only)",
            problems.join(", ")
        ))
    }
}

/// The rule for the system clock at `now`.
pub fn clock_outcome(now: i64) -> Outcome {
    if now < EARLIEST_PLAUSIBLE_TIME {
        Outcome::Fail(format!(
            "system time {} is before {}: set the clock (NTP) or every certificate and token check is wrong",
            clock::rfc3339(now),
            clock::rfc3339(EARLIEST_PLAUSIBLE_TIME)
        ))
    } else {
        Outcome::Pass
    }
}

/// The kernel's view of its clock discipline (`adjtimex(2)`, what
/// `timedatectl`'s `NTPSynchronized` reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSync {
    /// An NTP (or PTP, chrony, timesyncd) daemon disciplines the clock:
    /// `STA_UNSYNC` is clear.
    pub synchronised: bool,
    /// The kernel's estimate of the clock's maximum error, microseconds.
    pub max_error_us: i64,
}

/// The rule for clock synchronisation: a warning, never a failure, when the
/// clock is not synchronised or its estimated error exceeds the accepted
/// command skew (`[commands] clock_skew`), or when the state is unknown. A
/// clock off by more than the skew refuses commands and consents issued
/// "in the future" and keeps expired ones; revocations and purges are applied
/// all the same.
pub fn clock_sync_outcome(sync: Result<ClockSync, String>, skew: &std::time::Duration) -> Outcome {
    let advice = "enable NTP (timedatectl set-ntp true, chrony or systemd-timesyncd)";
    match sync {
        Err(e) => Outcome::Warn(format!(
            "cannot read the clock's synchronisation state ({e}); {advice}"
        )),
        Ok(s) if !s.synchronised => Outcome::Warn(format!(
            "the system clock is not synchronised: consents and commands carry times; {advice}"
        )),
        Ok(s) if s.max_error_us.max(0) as u128 > skew.as_micros() => Outcome::Warn(format!(
            "the clock's estimated error (up to {} ms) exceeds commands.clock_skew ({} s)",
            s.max_error_us / 1000,
            skew.as_secs()
        )),
        Ok(_) => Outcome::Pass,
    }
}

/// Reads the kernel's clock synchronisation state (read-only `adjtimex`).
#[allow(unsafe_code)] // adjtimex(2), see SAFETY below
pub fn kernel_clock_sync() -> Result<ClockSync, String> {
    // SAFETY: timex is a plain C struct; all zeroes is a valid value, and
    // `modes = 0` only reads.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `tx` is a writable timex with `modes = 0` (read only).
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(ClockSync {
        synchronised: state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0,
        #[allow(clippy::unnecessary_cast)]
        max_error_us: tx.maxerror as i64,
    })
}

/// The rule for free space in the state directory.
pub fn disk_outcome(free_bytes: u64) -> Outcome {
    let mib = free_bytes / (1024 * 1024);
    if free_bytes < DISK_FAIL_BYTES {
        Outcome::Fail(format!("only {mib} MiB free in the state directory"))
    } else if free_bytes < DISK_WARN_BYTES {
        Outcome::Warn(format!("only {mib} MiB free in the state directory"))
    } else {
        Outcome::Pass
    }
}

/// The rule for the spool's file system type (`statfs` `f_type`).
pub fn spool_fs_outcome(f_type: u64) -> Outcome {
    if f_type == TMPFS_MAGIC || f_type == RAMFS_MAGIC {
        Outcome::Pass
    } else {
        Outcome::Warn(format!(
            "spool is not on tmpfs (file system type {f_type:#x}): captures may touch the disk unencrypted"
        ))
    }
}

fn check_spool(dir: &Path) -> Check {
    match statfs_type(dir) {
        Ok(f_type) => Check {
            name: names::SPOOL_TMPFS,
            outcome: spool_fs_outcome(f_type),
        },
        Err(e) => Check::warn(
            names::SPOOL_TMPFS,
            format!(
                "{}: {e} (created at boot by facegate.tmpfiles)",
                dir.display()
            ),
        ),
    }
}

fn check_disk(dir: &Path) -> Check {
    match free_bytes(dir) {
        Ok(free) => Check {
            name: names::DISK,
            outcome: disk_outcome(free),
        },
        Err(e) => Check::fail(names::DISK, format!("{}: {e}", dir.display())),
    }
}

fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
}

/// `statfs(2)` file system magic of the file system holding `path`.
#[allow(unsafe_code)] // statfs(2), see SAFETY below
fn statfs_type(path: &Path) -> std::io::Result<u64> {
    let c = c_path(path)?;
    // SAFETY: statfs is a plain C struct; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // f_type is signed and of different widths per architecture; the magic
    // numbers are 32-bit.
    #[allow(clippy::unnecessary_cast)]
    Ok((st.f_type as u64) & 0xffff_ffff)
}

/// Bytes available to unprivileged users on the file system holding `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    crate::space::free_bytes(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    #[test]
    fn a_credential_key_passes_only_where_the_service_would_read_it() {
        let cred = |len: Result<u64, &str>| {
            Some((
                "/run/credentials/facegate.service/facegate-storage-key".to_string(),
                len.map_err(str::to_string),
            ))
        };
        let sealed = |with| {
            Some((
                "/etc/credstore.encrypted/facegate-storage-key".to_string(),
                with,
            ))
        };
        let file = Some("/var/lib/facegate/storage.key".to_string());
        // (key file, credential, sealed file) -> outcome, a word of its message
        let rows = [
            (None, cred(Ok(32)), None, "pass", ""),
            (None, cred(Ok(32)), sealed(Some("tpm2")), "pass", ""),
            (None, cred(Ok(16)), None, "fail", "16 bytes"),
            (
                None,
                cred(Err("not found")),
                None,
                "fail",
                "LoadCredentialEncrypted=",
            ),
            (file.clone(), cred(Ok(32)), None, "fail", "exists too"),
            (file.clone(), None, None, "fail", "exists too"),
            (None, None, sealed(Some("host")), "warn", "sealed with host"),
            (None, None, sealed(None), "fail", "not a credential"),
            (None, None, None, "warn", "provision --seal"),
        ];
        for (key_file, credential, sealed, want, word) in rows {
            let facts = CredentialFacts {
                key_file,
                credential,
                sealed,
            };
            let got = storage_credential_outcome(&facts);
            assert_eq!(kind(&got), want, "{facts:?}: {got:?}");
            match &got {
                Outcome::Pass => {}
                Outcome::Warn(m) | Outcome::Fail(m) => assert!(m.contains(word), "{m}"),
            }
        }
    }

    fn kind(o: &Outcome) -> &'static str {
        match o {
            Outcome::Pass => "pass",
            Outcome::Warn(_) => "warn",
            Outcome::Fail(_) => "fail",
        }
    }

    #[test]
    fn certificate_dates() {
        let cases = [
            ("not yet valid", NOW + 1, NOW + 365 * DAY, "fail"),
            ("starts now", NOW, NOW + 365 * DAY, "pass"),
            ("expired a second ago", NOW - 365 * DAY, NOW - 1, "fail"),
            ("expires this second", NOW - DAY, NOW, "warn"),
            ("expires in 29 days", NOW - DAY, NOW + 29 * DAY, "warn"),
            (
                "30 days minus a second",
                NOW - DAY,
                NOW + 30 * DAY - 1,
                "warn",
            ),
            ("exactly 30 days", NOW - DAY, NOW + 30 * DAY, "pass"),
            ("a year", NOW - DAY, NOW + 365 * DAY, "pass"),
        ];
        for (name, nb, na, want) in cases {
            let got = cert_dates_outcome(nb, na, NOW);
            assert_eq!(kind(&got), want, "{name}: {got:?}");
        }
        let Outcome::Fail(msg) = cert_dates_outcome(NOW - 2 * DAY, NOW - DAY, NOW) else {
            panic!()
        };
        assert!(msg.contains("expired on"), "{msg}");
    }

    #[test]
    fn certificate_usage() {
        let u = |ca, key_cert_sign, client_auth| CertUsage {
            ca,
            key_cert_sign,
            client_auth,
        };
        let cases = [
            ("client certificate", u(false, false, true), "pass", ""),
            ("CA:TRUE", u(true, false, true), "fail", "CA:TRUE"),
            ("keyCertSign", u(false, true, true), "fail", "keyCertSign"),
            ("a full CA", u(true, true, true), "fail", "CA:TRUE"),
            (
                "no clientAuth",
                u(false, false, false),
                "fail",
                "clientAuth",
            ),
            (
                "CA without clientAuth",
                u(true, true, false),
                "fail",
                "clientAuth",
            ),
        ];
        for (name, usage, want, needle) in cases {
            let got = usage_outcome(&usage);
            assert_eq!(kind(&got), want, "{name}: {got:?}");
            if let Outcome::Fail(msg) = &got {
                assert!(msg.contains(needle), "{name}: {msg}");
            }
        }
    }

    #[test]
    fn clock_sanity() {
        assert_eq!(kind(&clock_outcome(0)), "fail");
        assert_eq!(kind(&clock_outcome(EARLIEST_PLAUSIBLE_TIME - 1)), "fail");
        assert_eq!(kind(&clock_outcome(EARLIEST_PLAUSIBLE_TIME)), "pass");
        assert_eq!(kind(&clock_outcome(NOW)), "pass");
    }

    #[test]
    fn clock_sync_table() {
        let skew = std::time::Duration::from_secs(60);
        let synced = |max_error_us| {
            Ok(ClockSync {
                synchronised: true,
                max_error_us,
            })
        };
        let cases: Vec<(&str, Result<ClockSync, String>, &str)> = vec![
            ("synchronised, small error", synced(250_000), "pass"),
            ("error exactly the skew", synced(60_000_000), "pass"),
            ("error beyond the skew", synced(60_000_001), "warn"),
            ("negative error reported", synced(-1), "pass"),
            (
                "not synchronised",
                Ok(ClockSync {
                    synchronised: false,
                    max_error_us: 0,
                }),
                "warn",
            ),
            ("state unknown", Err("EPERM".into()), "warn"),
        ];
        for (name, sync, want) in cases {
            assert_eq!(kind(&clock_sync_outcome(sync, &skew)), want, "{name}");
        }
        let zero = std::time::Duration::ZERO;
        assert_eq!(kind(&clock_sync_outcome(synced(1), &zero)), "warn");
        let Outcome::Warn(msg) = clock_sync_outcome(
            Ok(ClockSync {
                synchronised: false,
                max_error_us: 0,
            }),
            &skew,
        ) else {
            panic!()
        };
        assert!(msg.contains("not synchronised"), "{msg}");
    }

    #[test]
    fn the_kernel_clock_state_is_readable() {
        let sync = kernel_clock_sync().expect("adjtimex reads without privileges");
        assert!(sync.max_error_us >= 0, "{sync:?}");
    }

    #[test]
    fn disk_thresholds() {
        let mib = 1024 * 1024;
        let cases = [
            (0, "fail"),
            (10 * mib - 1, "fail"),
            (10 * mib, "warn"),
            (100 * mib - 1, "warn"),
            (100 * mib, "pass"),
            (u64::MAX, "pass"),
        ];
        for (free, want) in cases {
            assert_eq!(kind(&disk_outcome(free)), want, "{free}");
        }
    }

    #[test]
    fn spool_file_systems() {
        assert_eq!(spool_fs_outcome(TMPFS_MAGIC), Outcome::Pass);
        assert_eq!(spool_fs_outcome(RAMFS_MAGIC), Outcome::Pass);
        assert_eq!(kind(&spool_fs_outcome(0xEF53)), "warn"); // ext4
    }

    #[test]
    fn statfs_sees_proc() {
        // /proc is procfs (0x9fa0) everywhere Linux runs.
        assert_eq!(statfs_type(Path::new("/proc")).unwrap(), 0x9fa0);
        assert!(free_bytes(Path::new("/")).unwrap() > 0);
    }
}
