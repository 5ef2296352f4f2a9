//! `facegate provision`: first-time setup of a terminal, safe to run again.
//!
//! It creates what only the device itself may hold, and nothing else:
//! - the state directory (mode 0700);
//! - the device storage key `<state_dir>/storage.key`: exactly 32 random
//!   bytes, mode 0600 (the store's crypto reads it as the device key); or,
//!   with `storage.key_source = "credential"` and `--seal`, a fresh key
//!   sealed with `systemd-creds encrypt` into
//!   `/etc/credstore.encrypted/facegate-storage-key` (or the path given), the
//!   plaintext passed on a pipe and never written to disk. A key file that
//!   already exists is never replaced or migrated silently: the database is
//!   encrypted under it;
//! - the device's TLS private key at `mqtt.key_file`: ECDSA P-256, PKCS#8
//!   PEM, mode 0600;
//! - a PKCS#10 certificate signing request next to it,
//!   `<key_file without extension>.csr`, for the fleet PKI to sign.
//!
//! The CSR names the device three ways, so any CA policy can pick one:
//! subject `CN=<device_id>, OU=<site_id>` (the broker turns the CN into the
//! MQTT user name, which its ACL confines to the device's topics), and the
//! subject alternative name URI `urn:facegate:<site_id>/<device_id>`, the
//! same `site/device` form consent and command audiences use.
//!
//! Keys are created with `create_new` and never overwritten. A CSR is public
//! and is (re)written whenever it is missing or no longer matches the key.
//! Key bytes never appear in the report or in errors.
//!
//! Run as root, provision must not be turned against other files by whoever
//! can write in the directories it works in (the daemon's user owns the state
//! directory). So a secret is created with `O_CREAT | O_EXCL | O_NOFOLLOW`
//! and given its mode and owner through the open descriptor (`fchmod`,
//! `fchown`), never by path; an existing one is opened with `O_NOFOLLOW` and
//! must be a regular file with one link, owned by the expected user or root,
//! before it is read; and a directory writable by group or others, or owned
//! by another user than root, the current user or the secrets' owner, is
//! refused.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType, SigningKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::{Config, KeySource};
use crate::credential::{self, CredentialError, SealWith};
use crate::keyref::{KeyRef, Pkcs11Key};
use crate::pkcs11::{Pkcs11Error, TokenKey};

/// File name of the device storage key inside `state_dir`.
pub const STORAGE_KEY_FILE: &str = "storage.key";
/// Length of the device storage key in bytes (an AES-256 key).
pub const STORAGE_KEY_LEN: usize = 32;

/// Why provisioning stopped. Nothing already created is removed; fix the
/// problem and run `facegate provision` again.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A filesystem operation failed.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was being done, e.g. "create directory".
        action: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file exists where a key belongs but is not a usable key; it is left
    /// untouched (move it away to have a new key created).
    #[error("{}: exists but {reason}; refusing to overwrite it", path.display())]
    BadExistingKey {
        /// The existing file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The system random generator failed.
    #[error("cannot generate {what}: system randomness unavailable")]
    Random {
        /// The key being made.
        what: &'static str,
    },
    /// rcgen could not make the key or the CSR.
    #[error("cannot create {what}: {source}")]
    Generate {
        /// What was being made.
        what: String,
        /// The underlying error.
        source: rcgen::Error,
    },
    /// A directory provision writes secrets into could be changed under it by
    /// another user; nothing is written there.
    #[error("{}: {reason}; refusing to write secrets there (another user could swap them for links to other files)", path.display())]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it, e.g. "is writable by group or others (mode 0777)".
        reason: String,
    },
    /// Something other than a plain file of the expected owner is where a
    /// secret belongs (a symbolic link, a device, a hard link, a file of
    /// another user); it is left untouched.
    #[error("{}: {reason}; refusing to use it (remove it and run facegate provision again)", path.display())]
    UnsafeFile {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key in the PKCS#11 token could not be found or generated (the
    /// message names the URI part at fault).
    #[error(transparent)]
    Pkcs11(#[from] Pkcs11Error),
    /// `--seal` with `storage.key_source = "file"`.
    #[error("--seal makes the storage key a sealed systemd credential: set [storage] key_source = \"credential\" in the configuration first")]
    SealNeedsCredentialSource,
    /// `storage.key_source = "credential"` while a plaintext key file exists.
    #[error("{}: a plaintext storage key exists and storage.key_source = \"credential\"; it is not replaced (the database is encrypted under it, a new key would orphan that data). To keep the data, seal this key: `systemd-creds encrypt --name=facegate-storage-key {} {}`, check the service starts, then remove the file; to start afresh, stop facegate, move the state directory away and run facegate provision --seal again", file.display(), file.display(), sealed.display())]
    PlaintextKeyExists {
        /// The key file.
        file: PathBuf,
        /// Where the sealed credential belongs.
        sealed: PathBuf,
    },
    /// `systemd-creds` could not seal the key.
    #[error("cannot seal the storage key")]
    Seal(#[from] CredentialError),
    /// The user that should own the device's secrets does not exist.
    #[error("user {0:?} does not exist (install the package or run systemd-sysusers first)")]
    NoSuchUser(String),
}

/// The account that must own the state directory and the device keys: the
/// daemon's user (`facegate`) when provisioning as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id given to created directories and key files.
    pub uid: u32,
    /// Group id given to them.
    pub gid: u32,
}

impl Owner {
    /// The user `name` and its primary group, from the password database.
    #[allow(unsafe_code)] // getpwnam_r(3), see SAFETY below
    pub fn of_user(name: &str) -> Result<Owner, ProvisionError> {
        let no_user = || ProvisionError::NoSuchUser(name.to_string());
        let c_name = std::ffi::CString::new(name).map_err(|_| no_user())?;
        // SAFETY: passwd is a plain C struct; all zeroes (null pointers) is a valid value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; getpwnam_r writes only
        // into `pwd` and `buf` (whose length we pass) and sets `result`.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return Err(no_user());
        }
        Ok(Owner {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }

    /// Who should own the device's secrets when nobody was named: the
    /// `facegate` user if we run as root and it exists (the daemon cannot
    /// read root's 0600 files), otherwise the current user (`None`).
    pub fn default_for_provision() -> Option<Owner> {
        if euid() != 0 {
            return None;
        }
        Owner::of_user("facegate").ok()
    }
}

/// The effective user id of this process.
#[allow(unsafe_code)] // geteuid(2), see SAFETY below
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// What provisioning did to one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It was created now.
    Created,
    /// It already existed and was kept as is.
    Kept,
    /// It existed but did not match the key, and was written again.
    Replaced,
    /// It is not there; someone else must provide it (shown, not an error).
    Missing,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What the item is, e.g. "TLS private key".
    pub what: &'static str,
    /// Where it lives (for a key in a PKCS#11 token: the token, slot and
    /// object, in words).
    pub path: PathBuf,
    /// What happened to it.
    pub action: Action,
}

/// The outcome of [`provision`], printed for the site admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionReport {
    /// Every item looked at, in order.
    pub items: Vec<Item>,
    /// The CSR to send to the fleet PKI.
    pub csr_path: PathBuf,
    /// The CSR in PEM (public), so it can be printed or copied.
    pub csr_pem: String,
    /// SHA-256 of the device's public key (SubjectPublicKeyInfo DER), hex, so
    /// the PKI operator can confirm the CSR came from this device.
    pub public_key_sha256: String,
    /// Subject of the CSR as text, e.g. `CN=term-01, OU=lobby`.
    pub subject: String,
    /// The SAN URI in the CSR.
    pub san_uri: String,
    /// Where the signed certificate must be installed (`mqtt.cert_file`).
    pub cert_file: PathBuf,
    /// Where the CA certificate must be installed (`mqtt.ca_file`).
    pub ca_file: PathBuf,
}

impl ProvisionReport {
    /// Whether this run created or rewrote anything.
    pub fn changed(&self) -> bool {
        self.items
            .iter()
            .any(|i| matches!(i.action, Action::Created | Action::Replaced))
    }

    /// The action recorded for `what`, if that item was looked at.
    pub fn action(&self, what: &str) -> Option<Action> {
        self.items.iter().find(|i| i.what == what).map(|i| i.action)
    }
}

impl fmt::Display for ProvisionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            let action = match item.action {
                Action::Created => "created",
                Action::Kept => "exists, kept",
                Action::Replaced => "rewritten (did not match the key)",
                Action::Missing => "missing",
            };
            writeln!(
                f,
                "{:<24} {:<34} {}",
                item.what,
                action,
                item.path.display()
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "Send {} to your fleet PKI to have it signed.",
            self.csr_path.display()
        )?;
        writeln!(f, "  subject:            {}", self.subject)?;
        writeln!(f, "  SAN:                {}", self.san_uri)?;
        writeln!(f, "  public key SHA-256: {}", self.public_key_sha256)?;
        writeln!(f, "The certificate must allow TLS client authentication.")?;
        writeln!(
            f,
            "Install the signed certificate as {} and the fleet CA as {},",
            self.cert_file.display(),
            self.ca_file.display()
        )?;
        write!(f, "then run `facegate doctor`.")
    }
}

/// Item names used in the report (and by tests).
pub mod items {
    /// The state directory.
    pub const STATE_DIR: &str = "state directory";
    /// The storage key.
    pub const STORAGE_KEY: &str = "storage key";
    /// The storage key as a sealed systemd credential.
    pub const SEALED_STORAGE_KEY: &str = "sealed storage key";
    /// The TLS private key.
    pub const TLS_KEY: &str = "TLS private key";
    /// The certificate signing request.
    pub const CSR: &str = "certificate request";
    /// The signed device certificate (installed by the admin).
    pub const CERT: &str = "device certificate";
    /// The fleet CA certificate (installed by the admin).
    pub const CA: &str = "CA certificate";
}

/// Provisions the device described by `cfg`, owned by the current user.
pub fn provision(cfg: &Config) -> Result<ProvisionReport, ProvisionError> {
    provision_owned(cfg, None)
}

/// `--seal`: seal a new storage key as a systemd credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// Where the sealed credential is written (default
    /// [`credential::DEFAULT_SEALED_PATH`]).
    pub path: PathBuf,
    /// What it is sealed with (`--with-key`, default `auto`).
    pub with: SealWith,
}

impl Default for Seal {
    fn default() -> Seal {
        Seal {
            path: credential::default_sealed_path(),
            with: SealWith::Auto,
        }
    }
}

/// Provisions the device; the state directory and both keys are given to
/// `owner` when it is set (running as root for the daemon's user).
pub fn provision_owned(
    cfg: &Config,
    owner: Option<Owner>,
) -> Result<ProvisionReport, ProvisionError> {
    provision_with(cfg, owner, None)
}

/// [`provision_owned`], and with `seal` the storage key is created as a
/// sealed systemd credential (`storage.key_source = "credential"` only).
pub fn provision_with(
    cfg: &Config,
    owner: Option<Owner>,
    seal: Option<&Seal>,
) -> Result<ProvisionReport, ProvisionError> {
    let mut items = Vec::new();

    let state_dir = &cfg.state_dir;
    let action = ensure_dir(state_dir, 0o700, owner)?;
    check_dir(state_dir, owner)?;
    items.push(item(items::STATE_DIR, state_dir, action));

    let storage_key = state_dir.join(STORAGE_KEY_FILE);
    match cfg.storage.key_source {
        KeySource::File if seal.is_some() => return Err(ProvisionError::SealNeedsCredentialSource),
        KeySource::File => {
            let action = ensure_storage_key(&storage_key, owner)?;
            items.push(item(items::STORAGE_KEY, &storage_key, action));
        }
        KeySource::Credential => {
            let default = Seal::default();
            let seal_to = seal.unwrap_or(&default);
            if fs::symlink_metadata(&storage_key).is_ok() {
                return Err(ProvisionError::PlaintextKeyExists {
                    file: storage_key,
                    sealed: seal_to.path.clone(),
                });
            }
            let action = ensure_sealed_key(&seal_to.path, seal.map(|s| s.with))?;
            items.push(item(items::SEALED_STORAGE_KEY, &seal_to.path, action));
        }
    }

    let csr_path = csr_path(cfg);
    let request = CsrRequest::for_device(&cfg.identity.site_id, &cfg.identity.device_id);
    let (csr_pem, public_key_info) = match &cfg.mqtt.key {
        KeyRef::File(key_file) => {
            let key_dir = match key_file.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(parent) => parent,
                None => Path::new("."),
            };
            ensure_dir(key_dir, 0o755, None)?;
            check_dir(key_dir, owner)?;
            let (key, action) = ensure_tls_key(key_file, owner)?;
            items.push(item(items::TLS_KEY, key_file, action));
            csr_for(&mut items, &csr_path, &key, &request)?
        }
        KeyRef::Pkcs11(key) => {
            let (token_key, action) = ensure_token_key(key)?;
            items.push(Item {
                what: items::TLS_KEY,
                path: PathBuf::from(token_key.location().to_string()),
                action,
            });
            let csr_dir = match csr_path.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(parent) => parent,
                None => Path::new("."),
            };
            ensure_dir(csr_dir, 0o755, None)?;
            csr_for(&mut items, &csr_path, token_key.as_ref(), &request)?
        }
    };

    for (what, path) in [
        (items::CERT, &cfg.mqtt.cert_file),
        (items::CA, &cfg.mqtt.ca_file),
    ] {
        let action = if path.exists() {
            Action::Kept
        } else {
            Action::Missing
        };
        items.push(item(what, path, action));
    }

    Ok(ProvisionReport {
        items,
        csr_path,
        csr_pem,
        public_key_sha256: hex::encode(
            ring::digest::digest(&ring::digest::SHA256, &public_key_info).as_ref(),
        ),
        subject: request.subject_text(),
        san_uri: request.san_uri,
        cert_file: cfg.mqtt.cert_file.clone(),
        ca_file: cfg.mqtt.ca_file.clone(),
    })
}

/// Writes (or keeps) the CSR for `key`, records it, and returns its PEM and
/// the key's SubjectPublicKeyInfo.
fn csr_for(
    items: &mut Vec<Item>,
    csr_path: &Path,
    key: &impl SigningKey,
    request: &CsrRequest,
) -> Result<(String, Vec<u8>), ProvisionError> {
    let (csr_pem, action) = ensure_csr(csr_path, key, request)?;
    items.push(item(items::CSR, csr_path, action));
    Ok((csr_pem, key.subject_public_key_info()))
}

/// The key in the token, generated there (EC P-256, not extractable) if the
/// URI's object does not exist yet; an existing key is kept.
fn ensure_token_key(key: &Pkcs11Key) -> Result<(std::sync::Arc<TokenKey>, Action), ProvisionError> {
    let (token_key, created) = TokenKey::open_or_generate(key)?;
    let action = if created {
        Action::Created
    } else {
        Action::Kept
    };
    Ok((token_key, action))
}

/// Where the device's CSR is written: next to a key file
/// ([`csr_path_for`]), or, for a key in a PKCS#11 token, next to the
/// certificate (`mqtt.cert_file` with extension `.csr`).
pub fn csr_path(cfg: &Config) -> PathBuf {
    match &cfg.mqtt.key {
        KeyRef::File(key_file) => csr_path_for(key_file),
        KeyRef::Pkcs11(_) => cfg.mqtt.cert_file.with_extension("csr"),
    }
}

/// The CSR's path: the key file with its extension replaced by `.csr`
/// (`/etc/facegate/device.key` → `/etc/facegate/device.csr`).
pub fn csr_path_for(key_file: &Path) -> PathBuf {
    key_file.with_extension("csr")
}

/// The names a device's CSR carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrRequest {
    /// Subject CN: the device id (the broker's MQTT user name).
    pub common_name: String,
    /// Subject OU: the site id.
    pub organizational_unit: String,
    /// SAN URI `urn:facegate:<site>/<device>`.
    pub san_uri: String,
}

impl CsrRequest {
    /// The names for `device_id` at `site_id`.
    pub fn for_device(site_id: &str, device_id: &str) -> CsrRequest {
        CsrRequest {
            common_name: device_id.to_string(),
            organizational_unit: site_id.to_string(),
            san_uri: format!("urn:facegate:{site_id}/{device_id}"),
        }
    }

    fn subject_text(&self) -> String {
        format!("CN={}, OU={}", self.common_name, self.organizational_unit)
    }

    /// A CSR for these names, signed by `key`, in PEM.
    pub fn to_pem(&self, key: &impl SigningKey) -> Result<String, ProvisionError> {
        let generate = |source| ProvisionError::Generate {
            what: format!("certificate request for {}", self.subject_text()),
            source,
        };
        let uri = self.san_uri.clone().try_into().map_err(generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, self.common_name.as_str());
        params.distinguished_name.push(
            DnType::OrganizationalUnitName,
            self.organizational_unit.as_str(),
        );
        params.subject_alt_names = vec![SanType::URI(uri)];
        params
            .serialize_request(key)
            .and_then(|csr| csr.pem())
            .map_err(generate)
    }
}

fn item(what: &'static str, path: &Path, action: Action) -> Item {
    Item {
        what,
        path: path.to_path_buf(),
        action,
    }
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> ProvisionError {
    let path = path.to_path_buf();
    move |source| ProvisionError::Io {
        path,
        action,
        source,
    }
}

/// Creates `dir` (and parents) with `mode` if missing, mode and owner set
/// through the open directory; an existing directory is kept as is (see
/// [`check_dir`]).
fn ensure_dir(dir: &Path, mode: u32, owner: Option<Owner>) -> Result<Action, ProvisionError> {
    if dir.is_dir() {
        return Ok(Action::Kept);
    }
    fs::create_dir_all(dir).map_err(io_err(dir, "create directory"))?;
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(io_err(dir, "open directory"))?;
    handle
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(dir, "set permissions of"))?;
    fchown(&handle, dir, owner)?;
    Ok(Action::Created)
}

/// Refuses a directory in which another user could replace what provision
/// writes: writable by group or others, or owned by anyone but root, the
/// current user or `owner`.
fn check_dir(dir: &Path, owner: Option<Owner>) -> Result<(), ProvisionError> {
    let meta = fs::metadata(dir).map_err(io_err(dir, "inspect"))?;
    let unsafe_dir = |reason: String| ProvisionError::UnsafeDirectory {
        path: dir.to_path_buf(),
        reason,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("is not a directory".into()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "is writable by group or others (mode {mode:04o}; chmod go-w)"
        )));
    }
    let trusted = [0, euid(), owner.map_or(0, |o| o.uid)];
    if !trusted.contains(&meta.uid()) {
        return Err(unsafe_dir(format!(
            "is owned by uid {}, neither root, the current user nor the secrets' owner",
            meta.uid()
        )));
    }
    Ok(())
}

/// Opens the secret at `path` for reading if there is one, without following
/// a symbolic link, and checks it is a regular file with a single link owned
/// by the secrets' owner (or root). `None` if nothing is there.
fn open_existing_secret(
    path: &Path,
    owner: Option<Owner>,
) -> Result<Option<(fs::File, fs::Metadata)>, ProvisionError> {
    let unsafe_file = |reason: String| ProvisionError::UnsafeFile {
        path: path.to_path_buf(),
        reason,
    };
    // O_NONBLOCK: opening a FIFO planted there must not hang.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(unsafe_file("is a symbolic link".into()))
        }
        Err(e) => return Err(io_err(path, "open")(e)),
    };
    let meta = file.metadata().map_err(io_err(path, "inspect"))?;
    if !meta.is_file() {
        return Err(unsafe_file("is not a regular file".into()));
    }
    if meta.nlink() != 1 {
        return Err(unsafe_file(format!(
            "has {} hard links (another name may point at it)",
            meta.nlink()
        )));
    }
    let expected = owner.map_or_else(euid, |o| o.uid);
    if meta.uid() != expected && meta.uid() != 0 {
        return Err(unsafe_file(format!(
            "is owned by uid {}, expected {expected} or root",
            meta.uid()
        )));
    }
    Ok(Some((file, meta)))
}

/// Creates the 32-byte storage key unless a file is already there; an
/// existing file of the wrong size is refused, never replaced.
fn ensure_storage_key(path: &Path, owner: Option<Owner>) -> Result<Action, ProvisionError> {
    if let Some((_, meta)) = open_existing_secret(path, owner)? {
        if meta.len() == STORAGE_KEY_LEN as u64 {
            return Ok(Action::Kept);
        }
        return Err(ProvisionError::BadExistingKey {
            path: path.to_path_buf(),
            reason: format!(
                "is not a {STORAGE_KEY_LEN}-byte key file ({} bytes)",
                meta.len()
            ),
        });
    }
    let mut key = [0u8; STORAGE_KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| ProvisionError::Random {
            what: "the storage key",
        })?;
    write_new(path, &key, 0o600, owner)?;
    Ok(Action::Created)
}

/// Keeps the sealed credential at `path` if there is one (a regular file of
/// root or the current user); otherwise seals a fresh key there with
/// `systemd-creds` when `with` is given (`--seal`), or reports it missing.
/// The directory is created 0700 (systemd's credential store convention).
fn ensure_sealed_key(path: &Path, with: Option<SealWith>) -> Result<Action, ProvisionError> {
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => parent,
        None => Path::new("."),
    };
    if let Some((mut file, _)) = open_existing_secret(path, None)? {
        let mut head = Vec::new();
        (&mut file)
            .take(64)
            .read_to_end(&mut head)
            .map_err(io_err(path, "read"))?;
        if credential::sealed_with(&head).is_none() {
            return Err(ProvisionError::BadExistingKey {
                path: path.to_path_buf(),
                reason: "is not a credential sealed by systemd-creds".into(),
            });
        }
        return Ok(Action::Kept);
    }
    let Some(with) = with else {
        return Ok(Action::Missing);
    };
    ensure_dir(dir, 0o700, None)?;
    check_dir(dir, None)?;
    let sealed = credential::seal_new_key(with)?;
    write_new(path, &sealed, 0o600, None)?;
    Ok(Action::Created)
}

/// Loads the TLS key at `path`, or creates a P-256 key there if there is none.
fn ensure_tls_key(path: &Path, owner: Option<Owner>) -> Result<(KeyPair, Action), ProvisionError> {
    if let Some((mut file, _)) = open_existing_secret(path, owner)? {
        let mut pem = String::new();
        file.read_to_string(&mut pem)
            .map_err(io_err(path, "read"))?;
        let key = KeyPair::from_pem(&pem).map_err(|e| ProvisionError::BadExistingKey {
            path: path.to_path_buf(),
            reason: format!("is not a PKCS#8 PEM private key ({e})"),
        })?;
        return Ok((key, Action::Kept));
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
        ProvisionError::Generate {
            what: "the TLS private key".into(),
            source,
        }
    })?;
    write_new(path, key.serialize_pem().as_bytes(), 0o600, owner)?;
    Ok((key, Action::Created))
}

/// Keeps an existing CSR that names `request` and carries `key`'s public key;
/// writes a new one otherwise. Returns the CSR PEM now on disk.
fn ensure_csr(
    path: &Path,
    key: &impl SigningKey,
    request: &CsrRequest,
) -> Result<(String, Action), ProvisionError> {
    let existing = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(path, "read")(e)),
    };
    if let Some(text) = &existing {
        if csr_matches(text, key, request) {
            return Ok((text.clone(), Action::Kept));
        }
    }
    let pem = request.to_pem(key)?;
    write_public(path, pem.as_bytes())?;
    let action = if existing.is_some() {
        Action::Replaced
    } else {
        Action::Created
    };
    Ok((pem, action))
}

/// Whether the CSR PEM `text` carries `key`'s public key and `request`'s names.
fn csr_matches(text: &str, key: &impl SigningKey, request: &CsrRequest) -> bool {
    match csr_info(text) {
        Some(info) => {
            info.public_key_der == key.subject_public_key_info()
                && info.common_name.as_deref() == Some(&request.common_name)
                && info.san_uris.contains(&request.san_uri)
        }
        None => false,
    }
}

/// What a CSR says, as read back by [`csr_info`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrInfo {
    /// Subject common name.
    pub common_name: Option<String>,
    /// Subject organizational unit.
    pub organizational_unit: Option<String>,
    /// URIs among the requested subject alternative names.
    pub san_uris: Vec<String>,
    /// The SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
    /// Whether the CSR's self-signature verifies.
    pub signature_ok: bool,
}

/// Parses a PEM CSR; `None` if it is not one.
pub fn csr_info(pem_text: &str) -> Option<CsrInfo> {
    use x509_parser::prelude::*;
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).ok()?;
    if pem.label != "CERTIFICATE REQUEST" {
        return None;
    }
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents).ok()?;
    let info = &csr.certification_request_info;
    let first = |attr: Option<&AttributeTypeAndValue>| {
        attr.and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let mut san_uris = Vec::new();
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        san_uris.push(uri.to_string());
                    }
                }
            }
        }
    }
    let parsed = CsrInfo {
        common_name: first(info.subject.iter_common_name().next()),
        organizational_unit: first(info.subject.iter_organizational_unit().next()),
        san_uris,
        public_key_der: info.subject_pki.raw.to_vec(),
        signature_ok: csr.verify_signature().is_ok(),
    };
    Some(parsed)
}

/// Writes a new secret file: created with `O_CREAT | O_EXCL | O_NOFOLLOW`
/// (nothing, not even a symbolic link, may be there), given exactly `mode`
/// and `owner` through the open descriptor before any byte is written, then
/// synced.
fn write_new(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), ProvisionError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(path, "create"))?;
    // open()'s mode is masked by the umask; make it exact (fchmod).
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(path, "set permissions of"))?;
    fchown(&file, path, owner)?;
    file.write_all(bytes).map_err(io_err(path, "write"))?;
    file.sync_all().map_err(io_err(path, "sync"))?;
    sync_parent(path)
}

/// Writes a public file (mode 0644) through a temporary name and a rename.
fn write_public(path: &Path, bytes: &[u8]) -> Result<(), ProvisionError> {
    let tmp = path.with_extension("csr.tmp");
    let _ = fs::remove_file(&tmp);
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err(&tmp, "create"))?;
        file.write_all(bytes).map_err(io_err(&tmp, "write"))?;
        file.sync_all().map_err(io_err(&tmp, "sync"))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path, "rename into place"))?;
    sync_parent(path)
}

/// Gives the open file `handle` (at `path`, for errors) to `owner`.
fn fchown(handle: &fs::File, path: &Path, owner: Option<Owner>) -> Result<(), ProvisionError> {
    let Some(owner) = owner else { return Ok(()) };
    std::os::unix::fs::fchown(handle, Some(owner.uid), Some(owner.gid))
        .map_err(io_err(path, "change owner of"))
}

/// Makes a new directory entry durable.
fn sync_parent(path: &Path) -> Result<(), ProvisionError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io_err(parent, "sync directory"))
}
