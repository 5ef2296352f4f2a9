//! Key material at rest: the device storage key (a file, or a systemd
//! credential: [`load_storage_key`] is the one place that chooses), the sub-keys derived
//! from it (HKDF-SHA256), per-subject data keys, and the AES-256-GCM envelopes
//! that protect captures in the outbox (ARCHITECTURE I3: no plaintext at rest).
//!
//! Layout of every sealed blob: `nonce (12 bytes) || ciphertext || tag (16 bytes)`.
//! The nonce is random per seal. Key bytes are never printed (`Debug` shows
//! only the type) and are overwritten with zeros when dropped. Sealing
//! encrypts in the buffer it returns (no other copy of the plaintext is
//! made); opening returns the plaintext as [`Zeroizing`], wiped when dropped.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

use crate::config::KeySource;

/// Length in bytes of the device key and of every data key.
pub const KEY_LEN: usize = 32;
/// File name of the device storage key inside the state directory.
pub const KEY_FILE_NAME: &str = "storage.key";
/// Name of the systemd credential holding the storage key
/// (`storage.key_source = "credential"`): systemd decrypts it into
/// `$CREDENTIALS_DIRECTORY/facegate-storage-key` for the service.
pub const CREDENTIAL_NAME: &str = "facegate-storage-key";
/// The environment variable systemd sets to the service's credentials directory.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

const TAG_LEN: usize = 16;
const HKDF_SALT: &[u8] = b"facegate storage key v1";
const INFO_WRAP: &[u8] = b"facegate/v1/key-wrapping";
const INFO_PSEUDONYM: &[u8] = b"facegate/v1/subject-pseudonym";
const INFO_AUDIT: &[u8] = b"facegate/v1/audit-chain";
const INFO_CHECK: &[u8] = b"facegate/v1/key-check";
const AUDIT_REF_LABEL: &[u8] = b"facegate/v1/audit-subject-ref";

/// Errors from key files and envelopes.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Reading or creating a key file failed.
    #[error("storage key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file may be read by group or others.
    #[error("storage key {path} has mode {mode:o}; it must not be accessible by group or others (chmod 600)")]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold exactly [`KEY_LEN`] bytes.
    #[error("storage key {path} is {size} bytes long, expected {KEY_LEN}")]
    WrongSize {
        /// The key file.
        path: PathBuf,
        /// Its actual size.
        size: u64,
    },
    /// `storage.key_source = "credential"` outside a service that loads credentials.
    #[error("storage.key_source = \"credential\" but ${CREDENTIALS_DIRECTORY} is not set: run facegate as the systemd service with LoadCredentialEncrypted={CREDENTIAL_NAME}:<sealed file> (see facegate-credential.conf), or set storage.key_source = \"file\"")]
    NoCredentialsDirectory,
    /// The credentials directory does not hold the storage key credential.
    #[error("storage key credential {path}: {source}; the unit must load it with LoadCredentialEncrypted={CREDENTIAL_NAME}:<sealed file> (create the sealed file with facegate provision --seal)")]
    CredentialMissing {
        /// Where it was looked for.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Both a credential and a key file could be the storage key.
    #[error("storage.key_source = \"credential\" but the key file {file} exists too: it is unclear which key encrypts the database. If {file} is the key of the existing data, seal it into the credential (docs/OPERATIONS.md, \"The storage key as a sealed credential\") and then remove it; if it is not, move it out of the state directory")]
    Ambiguous {
        /// The key file in the state directory.
        file: PathBuf,
    },
    /// The system random generator failed.
    #[error("system random generator failed")]
    Random,
    /// A sealed blob is too short or fails authentication (wrong key, tampered
    /// data, or data moved to another capture/subject).
    #[error("cannot decrypt {what}: wrong key or tampered data")]
    Open {
        /// What was being decrypted (e.g. `data key`, `capture`).
        what: &'static str,
    },
    /// Encryption failed (ring refuses only absurd lengths).
    #[error("cannot encrypt {what}")]
    Seal {
        /// What was being encrypted.
        what: &'static str,
    },
}

fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| CryptoError::Random)?;
    Ok(out)
}

/// The device's root storage secret, 32 random bytes in `<state_dir>/storage.key`.
pub struct DeviceKey {
    bytes: [u8; KEY_LEN],
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(..)")
    }
}

impl Drop for DeviceKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl DeviceKey {
    /// Loads the key file, or creates it (mode 0600, fsynced with its directory)
    /// if it does not exist. Refuses a file that group/others may access or
    /// whose size is not [`KEY_LEN`].
    ///
    /// Creation is crash-safe: the key is written and fsynced under a temporary
    /// name, then hard-linked into place (which fails if another process won the
    /// race), so `path` never holds a partial key.
    pub fn load_or_create(path: &Path) -> Result<DeviceKey, CryptoError> {
        if path.exists() {
            return Self::load(path);
        }
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| CryptoError::Io { path: p, source }
        };
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&tmp)(e)),
        }
        let bytes = random_bytes::<KEY_LEN>()?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(&bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_parent_dir(path).map_err(io(path))?;
                Ok(DeviceKey { bytes })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(io(path)(e)),
        }
    }

    /// Loads an existing key file with the same checks as [`Self::load_or_create`].
    pub fn load(path: &Path) -> Result<DeviceKey, CryptoError> {
        let io = |source| CryptoError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CryptoError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        if meta.len() != KEY_LEN as u64 {
            return Err(CryptoError::WrongSize {
                path: path.to_path_buf(),
                size: meta.len(),
            });
        }
        let mut bytes = [0u8; KEY_LEN];
        file.read_exact(&mut bytes).map_err(io)?;
        Ok(DeviceKey { bytes })
    }

    /// Builds a key from raw bytes (tests and benchmarks).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> DeviceKey {
        DeviceKey { bytes }
    }

    /// Derives the three working keys (wrapping, pseudonyms, audit chain).
    pub fn derive(&self) -> DerivedKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&self.bytes);
        let mut wrap = [0u8; KEY_LEN];
        expand_into(&prk, INFO_WRAP, &mut wrap);
        let mut pseud = [0u8; KEY_LEN];
        expand_into(&prk, INFO_PSEUDONYM, &mut pseud);
        let mut audit = [0u8; KEY_LEN];
        expand_into(&prk, INFO_AUDIT, &mut audit);
        let mut check = [0u8; KEY_LEN];
        expand_into(&prk, INFO_CHECK, &mut check);
        let keys = DerivedKeys {
            kek: Kek {
                key: aead_key(&wrap),
            },
            pseudonyms: PseudonymKey {
                key: hmac::Key::new(hmac::HMAC_SHA256, &pseud),
            },
            audit: AuditKey {
                key: hmac::Key::new(hmac::HMAC_SHA256, &audit),
            },
            check,
        };
        wrap.zeroize();
        pseud.zeroize();
        audit.zeroize();
        keys
    }
}

/// Where the storage key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLocation {
    /// `<state_dir>/storage.key`, created if missing.
    File(PathBuf),
    /// `$CREDENTIALS_DIRECTORY/facegate-storage-key`, never created.
    Credential(PathBuf),
}

/// Zeroes all of `buf`'s allocation (its spare capacity too) and leaves it
/// empty, as dropping a `Zeroizing` buffer does, but with one
/// `explicit_bzero(3)` (a memset the compiler may not remove) instead of
/// zeroize's volatile write per byte: for an image-sized buffer on the
/// upload path that was 4 % of the daemon's CPU. Elsewhere than Linux,
/// zeroize's own.
pub fn wipe(buf: &mut Zeroizing<Vec<u8>>) {
    let mut v = std::mem::take(&mut **buf);
    zero_allocation(&mut v);
}

/// Zeroes `v`'s whole allocation and sets its length to 0.
#[allow(unsafe_code)] // explicit_bzero(3), see SAFETY below
fn zero_allocation(v: &mut Vec<u8>) {
    #[cfg(target_os = "linux")]
    {
        let cap = v.capacity();
        if cap > 0 {
            // SAFETY: the pointer and length are those of `v`'s own
            // allocation (`capacity` bytes, all writable; writing to the
            // spare capacity is allowed), and nothing else refers to it.
            unsafe { libc::explicit_bzero(v.as_mut_ptr().cast(), cap) };
        }
        v.clear();
    }
    #[cfg(not(target_os = "linux"))]
    v.zeroize();
}

/// Where the storage key comes from (pure): `source` from the config, the
/// value of `$CREDENTIALS_DIRECTORY` (unset or empty: `None`) and whether a
/// key file exists in the state directory. A key file next to a credential
/// source is refused: it may be the key of the existing data.
pub fn storage_key_location(
    source: KeySource,
    state_dir: &Path,
    credentials_dir: Option<&OsStr>,
    key_file_exists: bool,
) -> Result<KeyLocation, CryptoError> {
    let file = state_dir.join(KEY_FILE_NAME);
    match source {
        KeySource::File => Ok(KeyLocation::File(file)),
        KeySource::Credential if key_file_exists => Err(CryptoError::Ambiguous { file }),
        KeySource::Credential => match credentials_dir.filter(|d| !d.is_empty()) {
            Some(dir) => Ok(KeyLocation::Credential(
                Path::new(dir).join(CREDENTIAL_NAME),
            )),
            None => Err(CryptoError::NoCredentialsDirectory),
        },
    }
}

/// Loads the device storage key from where `source` says (the daemon's one
/// way to get it): the key file (created if missing), or the systemd
/// credential in `$CREDENTIALS_DIRECTORY`, which must exist, be 32 bytes and
/// not be accessible by group or others.
pub fn load_storage_key(source: KeySource, state_dir: &Path) -> Result<DeviceKey, CryptoError> {
    let credentials = std::env::var_os(CREDENTIALS_DIRECTORY);
    load_storage_key_in(source, state_dir, credentials.as_deref())
}

/// [`load_storage_key`] with the credentials directory given.
pub fn load_storage_key_in(
    source: KeySource,
    state_dir: &Path,
    credentials: Option<&OsStr>,
) -> Result<DeviceKey, CryptoError> {
    let file = state_dir.join(KEY_FILE_NAME);
    let exists = match fs::symlink_metadata(&file) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => return Err(CryptoError::Io { path: file, source }),
    };
    match storage_key_location(source, state_dir, credentials, exists)? {
        KeyLocation::File(path) => DeviceKey::load_or_create(&path),
        KeyLocation::Credential(path) => match fs::symlink_metadata(&path) {
            Err(source) => Err(CryptoError::CredentialMissing { path, source }),
            Ok(_) => DeviceKey::load(&path),
        },
    }
}

/// HKDF-SHA256 expand of `prk` with label `info` into 32 bytes.
fn expand_into(prk: &hkdf::Prk, info: &[u8], out: &mut [u8; KEY_LEN]) {
    let infos = [info];
    // Expanding to 32 bytes is far below HKDF's 255 * 32 byte limit: cannot fail.
    if prk
        .expand(&infos, hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(out))
        .is_err()
    {
        unreachable!("HKDF-SHA256 expand to 32 bytes never fails");
    }
}

fn aead_key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    match UnboundKey::new(&AES_256_GCM, bytes) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => unreachable!("AES-256 key is 32 bytes"),
    }
}

fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// The working keys derived from a [`DeviceKey`].
pub struct DerivedKeys {
    /// Wraps per-subject data keys (AES-256-GCM).
    pub kek: Kek,
    /// Turns subject ids into stable pseudonyms (HMAC-SHA256).
    pub pseudonyms: PseudonymKey,
    /// Authenticates the audit hash chain (HMAC-SHA256).
    pub audit: AuditKey,
    /// A public check value stored in the database, so a database opened with
    /// the wrong storage key is detected at once.
    pub check: [u8; KEY_LEN],
}

impl std::fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DerivedKeys(..)")
    }
}

/// Key-encryption key: wraps [`DataKey`]s.
pub struct Kek {
    key: LessSafeKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

/// HMAC key that maps subject ids to pseudonyms.
pub struct PseudonymKey {
    key: hmac::Key,
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(..)")
    }
}

impl PseudonymKey {
    /// The subject's pseudonym: HMAC-SHA256(pseudonym key, subject id).
    pub fn pseudonym(&self, subject: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.key, subject.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The subject reference written to audit rows: HMAC-SHA256(pseudonym
    /// key, label, `salt`, the subject's pseudonym). `salt` is the subject's
    /// random audit salt ([`AuditSalt`]); once it is destroyed, the rows
    /// written under it cannot be linked to the subject again, not even with
    /// the device key.
    pub fn audit_ref(&self, salt: &AuditSalt, pseudonym: &[u8; 32]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(AUDIT_REF_LABEL);
        ctx.update(&salt.0);
        ctx.update(pseudonym);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

/// A subject's random audit salt (32 bytes): what makes its audit rows
/// linkable to it, for as long as the salt exists. Wiped when dropped.
pub struct AuditSalt([u8; KEY_LEN]);

impl std::fmt::Debug for AuditSalt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditSalt(..)")
    }
}

impl Drop for AuditSalt {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl AuditSalt {
    /// A fresh random salt.
    pub fn generate() -> Result<AuditSalt, CryptoError> {
        Ok(AuditSalt(random_bytes()?))
    }

    /// A stored salt; `None` unless exactly [`KEY_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<AuditSalt> {
        <[u8; KEY_LEN]>::try_from(bytes).ok().map(AuditSalt)
    }

    /// The bytes, for storing.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// HMAC key that authenticates the audit chain.
pub struct AuditKey {
    key: hmac::Key,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    /// Builds an audit key from raw bytes (tests).
    pub fn from_bytes(bytes: &[u8]) -> AuditKey {
        AuditKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// HMAC-SHA256 over `data`.
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.key, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// Which part of a capture a sealed blob holds; part of the AAD so blobs
/// cannot be swapped between the metadata and image columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The capture's metadata (subject, consent id, camera, ...).
    Meta,
    /// The sanitized image bytes.
    Image,
    /// The capture's own key, wrapped under its subject's key.
    Key,
}

impl Part {
    fn label(self) -> &'static [u8] {
        match self {
            Part::Meta => b"meta",
            Part::Image => b"image",
            Part::Key => b"key",
        }
    }
}

/// An AES-256-GCM key. As a subject's data key it is stored only wrapped
/// under the [`Kek`]: destroying the wrapped copy makes every capture of the
/// subject unreadable. As a capture's own key it is stored only wrapped under
/// its subject's data key ([`DataKey::wrap_capture_key`]): destroying that
/// copy makes the one capture unreadable (ARCHITECTURE I4).
pub struct DataKey {
    bytes: [u8; KEY_LEN],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// Encrypts `plaintext` into a new buffer, `nonce || ciphertext || tag`.
/// The buffer is allocated once at its final size and the plaintext is
/// encrypted in place there, so no copy of the plaintext is left behind in
/// freed memory (a growing `Vec` would reallocate and leave one).
fn seal_with(
    key: &LessSafeKey,
    aad: &[u8],
    plaintext: &[u8],
    what: &'static str,
) -> Result<Vec<u8>, CryptoError> {
    let nonce_bytes = random_bytes::<NONCE_LEN>()?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(plaintext);
    let sealed = key.seal_in_place_separate_tag(
        Nonce::assume_unique_for_key(nonce_bytes),
        Aad::from(aad),
        &mut out[NONCE_LEN..],
    );
    match sealed {
        Ok(tag) => {
            out.extend_from_slice(tag.as_ref());
            Ok(out)
        }
        Err(_) => {
            out.zeroize();
            Err(CryptoError::Seal { what })
        }
    }
}

/// Decrypts `nonce || ciphertext || tag`; the plaintext is wiped when dropped.
fn open_with(
    key: &LessSafeKey,
    aad: &[u8],
    sealed: &[u8],
    what: &'static str,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Open { what });
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open { what })?;
    let mut buf = Zeroizing::new(body.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| CryptoError::Open { what })?
        .len();
    // Shrinking never reallocates: the tag's bytes stay in the spare
    // capacity, which the wipe covers too.
    buf.truncate(len);
    Ok(buf)
}

fn capture_aad(part: Part, capture_id: &str, subject_ref: &[u8; 32]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + 32 + capture_id.len());
    aad.extend_from_slice(b"facegate/v1/");
    aad.extend_from_slice(part.label());
    aad.push(0);
    aad.extend_from_slice(subject_ref);
    aad.extend_from_slice(capture_id.as_bytes());
    aad
}

impl DataKey {
    /// A fresh random data key.
    pub fn generate() -> Result<DataKey, CryptoError> {
        Ok(DataKey {
            bytes: random_bytes::<KEY_LEN>()?,
        })
    }

    /// Encrypts this key under the KEK; the subject pseudonym is the AAD, so a
    /// wrapped key cannot be moved to another subject.
    pub fn wrap(&self, kek: &Kek, subject_ref: &[u8; 32]) -> Result<Vec<u8>, CryptoError> {
        seal_with(&kek.key, subject_ref, &self.bytes, "data key")
    }

    /// Reverses [`Self::wrap`].
    pub fn unwrap(
        kek: &Kek,
        subject_ref: &[u8; 32],
        wrapped: &[u8],
    ) -> Result<DataKey, CryptoError> {
        let plain = open_with(&kek.key, subject_ref, wrapped, "data key")?;
        DataKey::from_plain(&plain, "data key")
    }

    /// Wraps a capture's own key under this (its subject's) data key, bound
    /// to the capture id and the subject pseudonym.
    pub fn wrap_capture_key(
        &self,
        capture_key: &DataKey,
        capture_id: &str,
        subject_ref: &[u8; 32],
    ) -> Result<Vec<u8>, CryptoError> {
        self.seal(Part::Key, capture_id, subject_ref, &capture_key.bytes)
    }

    /// Reverses [`Self::wrap_capture_key`].
    pub fn unwrap_capture_key(
        &self,
        capture_id: &str,
        subject_ref: &[u8; 32],
        wrapped: &[u8],
    ) -> Result<DataKey, CryptoError> {
        let plain = self.open(Part::Key, capture_id, subject_ref, wrapped)?;
        DataKey::from_plain(&plain, "capture key")
    }

    /// The key whose bytes an unwrap gave back.
    fn from_plain(plain: &[u8], what: &'static str) -> Result<DataKey, CryptoError> {
        let bytes: [u8; KEY_LEN] = plain.try_into().map_err(|_| CryptoError::Open { what })?;
        Ok(DataKey { bytes })
    }

    /// Encrypts one part of a capture; the AAD binds the part, the capture id
    /// and the subject pseudonym.
    pub fn seal(
        &self,
        part: Part,
        capture_id: &str,
        subject_ref: &[u8; 32],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let aad = capture_aad(part, capture_id, subject_ref);
        seal_with(&aead_key(&self.bytes), &aad, plaintext, "capture")
    }

    /// Reverses [`Self::seal`]; fails if any bound value differs. The
    /// plaintext is wiped when dropped.
    pub fn open(
        &self,
        part: Part,
        capture_id: &str,
        subject_ref: &[u8; 32],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let aad = capture_aad(part, capture_id, subject_ref);
        open_with(&aead_key(&self.bytes), &aad, sealed, "capture")
    }
}

/// Bytes a sealed blob adds to its plaintext (nonce + tag), for quota estimates.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The global allocator of the library's unit tests: it counts, per thread
/// and only while a test has armed it, the heap blocks of at least a given
/// size that are allocated, reallocated and freed. A copy of a plaintext of
/// that size needs such a block, so the counts show whether sealing or
/// opening made a copy besides the buffer it returns.
#[cfg(test)]
mod big_blocks {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        /// Blocks of at least this size are counted; 0 = not armed.
        static MIN: Cell<usize> = const { Cell::new(0) };
        static ALLOCATED: Cell<usize> = const { Cell::new(0) };
        static LAST: Cell<usize> = const { Cell::new(0) };
        static REALLOCATED: Cell<usize> = const { Cell::new(0) };
        static FREED: Cell<usize> = const { Cell::new(0) };
    }

    fn big(size: usize) -> bool {
        MIN.try_with(|m| m.get() != 0 && size >= m.get())
            .unwrap_or(false)
    }

    fn bump(counter: &'static std::thread::LocalKey<Cell<usize>>) {
        let _ = counter.try_with(|c| c.set(c.get() + 1));
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    // SAFETY: every call is passed on unchanged to the system allocator; the
    // counting only touches const-initialised thread-locals (no allocation).
    #[allow(unsafe_code)]
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract is passed on as is.
            let ptr = unsafe { System.alloc(layout) };
            if big(layout.size()) {
                bump(&ALLOCATED);
                let _ = LAST.try_with(|l| l.set(ptr as usize));
            }
            ptr
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if big(layout.size()) {
                bump(&FREED);
            }
            // SAFETY: the caller's contract is passed on as is.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if big(layout.size()) {
                bump(&REALLOCATED);
            }
            // SAFETY: the caller's contract is passed on as is.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// What `f` did with blocks of at least `min` bytes on this thread:
    /// (allocated, reallocated, freed, address of the last one allocated).
    pub fn count<T>(min: usize, f: impl FnOnce() -> T) -> (T, [usize; 4]) {
        for c in [&ALLOCATED, &REALLOCATED, &FREED, &LAST] {
            c.with(|c| c.set(0));
        }
        MIN.with(|m| m.set(min));
        let out = f();
        MIN.with(|m| m.set(0));
        let n = [&ALLOCATED, &REALLOCATED, &FREED, &LAST].map(|c| c.with(Cell::get));
        (out, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails on the old code: `seal_with` copied the plaintext into a
    /// `Vec` of its exact length, which grew for the tag (a reallocation,
    /// leaving the plaintext in the freed block) and was then freed.
    #[test]
    fn sealing_and_opening_make_no_copy_besides_the_returned_buffer() {
        let k = keys();
        let s1 = k.pseudonyms.pseudonym("S-1");
        let dek = DataKey::generate().unwrap();
        let plain = vec![0x5Au8; 64 * 1024];
        let (sealed, [allocated, reallocated, freed, last]) =
            big_blocks::count(plain.len(), || {
                dek.seal(Part::Image, "c1", &s1, &plain).unwrap()
            });
        assert_eq!(
            (allocated, reallocated, freed),
            (1, 0, 0),
            "sealing: blocks of the plaintext's size (allocated, reallocated, freed)"
        );
        assert_eq!(
            last,
            sealed.as_ptr() as usize,
            "the one block is the sealed buffer"
        );
        assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);

        let (opened, [allocated, reallocated, freed, last]) =
            big_blocks::count(plain.len(), || {
                dek.open(Part::Image, "c1", &s1, &sealed).unwrap()
            });
        assert_eq!(
            (allocated, reallocated, freed),
            (1, 0, 0),
            "opening: blocks of the plaintext's size (allocated, reallocated, freed)"
        );
        assert_eq!(
            last,
            opened.as_ptr() as usize,
            "the one block is the plaintext"
        );
        assert_eq!(*opened, plain);
    }

    fn keys() -> DerivedKeys {
        DeviceKey::from_bytes([7u8; 32]).derive()
    }

    #[test]
    fn creates_key_file_0600_and_reloads_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        let k1 = DeviceKey::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::metadata(&path).unwrap().len(), 32);
        let k2 = DeviceKey::load_or_create(&path).unwrap();
        assert_eq!(k1.derive().check, k2.derive().check);
        assert!(!dir.path().join("storage.key.tmp").exists());
        assert_eq!(k1.bytes, k2.bytes);
    }

    #[test]
    fn the_key_source_decides_where_the_key_is_read() {
        use KeySource::{Credential, File};
        let state = Path::new("/var/lib/facegate");
        let creds = Some(OsStr::new("/run/credentials/facegate.service"));
        let file = KeyLocation::File(state.join("storage.key"));
        let cred = KeyLocation::Credential(
            Path::new("/run/credentials/facegate.service/facegate-storage-key").into(),
        );
        // (source, $CREDENTIALS_DIRECTORY, key file exists) -> location or error
        type Row<'a> = (
            KeySource,
            Option<&'a OsStr>,
            bool,
            Result<KeyLocation, &'a str>,
        );
        let rows: [Row<'_>; 8] = [
            (File, None, false, Ok(file.clone())),
            (File, None, true, Ok(file.clone())),
            (File, creds, true, Ok(file.clone())),
            (Credential, creds, false, Ok(cred.clone())),
            (
                Credential,
                None,
                false,
                Err("CREDENTIALS_DIRECTORY is not set"),
            ),
            (
                Credential,
                Some(OsStr::new("")),
                false,
                Err("CREDENTIALS_DIRECTORY is not set"),
            ),
            (
                Credential,
                creds,
                true,
                Err("the key file /var/lib/facegate/storage.key exists too"),
            ),
            (
                Credential,
                None,
                true,
                Err("the key file /var/lib/facegate/storage.key exists too"),
            ),
        ];
        for (source, dir, exists, want) in rows {
            let got = storage_key_location(source, state, dir, exists);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{source:?} {dir:?} {exists}"),
                (Err(e), Err(text)) => {
                    assert!(
                        e.to_string().contains(text),
                        "{source:?} {dir:?} {exists}: {e}"
                    )
                }
                (got, want) => panic!("{source:?} {dir:?} {exists}: {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn a_credential_key_is_read_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let creds = dir.path().join("creds");
        fs::create_dir_all(&state).unwrap();
        fs::create_dir_all(&creds).unwrap();
        let at = |exists| {
            storage_key_location(
                KeySource::Credential,
                &state,
                Some(creds.as_os_str()),
                exists,
            )
            .unwrap()
        };
        let KeyLocation::Credential(path) = at(false) else {
            panic!("not a credential")
        };
        // Missing: named, not created.
        let load = || load_storage_key_in(KeySource::Credential, &state, Some(creds.as_os_str()));
        let err = load().unwrap_err();
        assert!(
            matches!(err, CryptoError::CredentialMissing { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("facegate-storage-key"), "{err}");
        assert!(!path.exists() && !state.join(KEY_FILE_NAME).exists());
        // Wrong size: refused.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .unwrap()
            .write_all(&[5u8; 16])
            .unwrap();
        let err = load().unwrap_err();
        assert!(
            matches!(err, CryptoError::WrongSize { size: 16, .. }),
            "{err}"
        );
        // The right size: read as is.
        fs::remove_file(&path).unwrap();
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .unwrap()
            .write_all(&[5u8; 32])
            .unwrap();
        let key = load().unwrap();
        assert_eq!(key.bytes, [5u8; 32]);
        assert!(!state.join(KEY_FILE_NAME).exists(), "no key file is made");
        // A key file next to it: ambiguous, refused.
        DeviceKey::load_or_create(&state.join(KEY_FILE_NAME)).unwrap();
        let err = load().unwrap_err();
        assert!(matches!(err, CryptoError::Ambiguous { .. }), "{err}");
    }

    #[test]
    fn stale_temp_file_from_a_crash_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        fs::write(dir.path().join("storage.key.tmp"), b"partial").unwrap();
        let k = DeviceKey::load_or_create(&path).unwrap();
        assert_eq!(DeviceKey::load(&path).unwrap().bytes, k.bytes);
        assert!(!dir.path().join("storage.key.tmp").exists());
    }

    #[test]
    fn refuses_group_or_other_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        DeviceKey::load_or_create(&path).unwrap();
        for mode in [0o640, 0o604, 0o660, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = DeviceKey::load_or_create(&path).unwrap_err();
            assert!(
                matches!(err, CryptoError::InsecurePermissions { .. }),
                "{mode:o}"
            );
            assert!(err.to_string().contains(&path.display().to_string()));
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        DeviceKey::load_or_create(&path).unwrap();
    }

    #[test]
    fn refuses_wrong_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        for len in [0usize, 31, 33, 64] {
            let _ = fs::remove_file(&path);
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .unwrap()
                .write_all(&vec![1u8; len])
                .unwrap();
            let err = DeviceKey::load_or_create(&path).unwrap_err();
            assert!(matches!(err, CryptoError::WrongSize { size, .. } if size == len as u64));
            assert!(err.to_string().contains(&path.display().to_string()));
        }
    }

    #[test]
    fn debug_never_shows_bytes() {
        let k = DeviceKey::from_bytes([0xAB; 32]);
        let d = DataKey::generate().unwrap();
        let s = format!("{k:?} {d:?} {:?}", k.derive());
        assert!(
            !s.contains("171") && !s.to_lowercase().contains("ab, "),
            "{s}"
        );
    }

    #[test]
    fn sub_keys_differ_and_depend_on_device_key() {
        let a = keys();
        let b = DeviceKey::from_bytes([8u8; 32]).derive();
        assert_ne!(a.pseudonyms.pseudonym("S-1"), b.pseudonyms.pseudonym("S-1"));
        assert_ne!(a.pseudonyms.pseudonym("S-1"), a.pseudonyms.pseudonym("S-2"));
        assert_eq!(
            a.pseudonyms.pseudonym("S-1"),
            keys().pseudonyms.pseudonym("S-1")
        );
        assert_ne!(a.audit.mac(b"x"), a.pseudonyms.pseudonym("x"));
        assert_ne!(a.check, b.check);
    }

    #[test]
    fn audit_refs_depend_on_the_salt() {
        let k = keys();
        let p = k.pseudonyms.pseudonym("S-1");
        let salt = AuditSalt::generate().unwrap();
        let again = AuditSalt::from_slice(salt.as_bytes()).unwrap();
        let other = AuditSalt::generate().unwrap();
        assert_eq!(
            k.pseudonyms.audit_ref(&salt, &p),
            k.pseudonyms.audit_ref(&again, &p)
        );
        assert_ne!(
            k.pseudonyms.audit_ref(&salt, &p),
            k.pseudonyms.audit_ref(&other, &p)
        );
        assert_ne!(k.pseudonyms.audit_ref(&salt, &p), p);
        assert!(AuditSalt::from_slice(&[0u8; 31]).is_none());
        assert_eq!(format!("{salt:?}"), "AuditSalt(..)");
    }

    #[test]
    fn wrap_unwrap_bound_to_subject() {
        let k = keys();
        let s1 = k.pseudonyms.pseudonym("S-1");
        let s2 = k.pseudonyms.pseudonym("S-2");
        let dek = DataKey::generate().unwrap();
        let wrapped = dek.wrap(&k.kek, &s1).unwrap();
        assert_eq!(wrapped.len(), 32 + SEAL_OVERHEAD);
        let back = DataKey::unwrap(&k.kek, &s1, &wrapped).unwrap();
        assert_eq!(back.bytes, dek.bytes);
        assert!(DataKey::unwrap(&k.kek, &s2, &wrapped).is_err());
        let other = DeviceKey::from_bytes([9u8; 32]).derive();
        assert!(DataKey::unwrap(&other.kek, &s1, &wrapped).is_err());
        let mut bad = wrapped.clone();
        bad[20] ^= 1;
        assert!(DataKey::unwrap(&k.kek, &s1, &bad).is_err());
        assert!(DataKey::unwrap(&k.kek, &s1, &wrapped[..10]).is_err());
    }

    #[test]
    fn a_capture_key_unwraps_only_for_its_capture_and_subject() {
        let k = keys();
        let s1 = k.pseudonyms.pseudonym("S-1");
        let s2 = k.pseudonyms.pseudonym("S-2");
        let subject_key = DataKey::generate().unwrap();
        let capture_key = DataKey::generate().unwrap();
        let wrapped = subject_key
            .wrap_capture_key(&capture_key, "c1", &s1)
            .unwrap();
        assert_eq!(wrapped.len(), 32 + SEAL_OVERHEAD);
        let back = subject_key.unwrap_capture_key("c1", &s1, &wrapped).unwrap();
        assert_eq!(back.bytes, capture_key.bytes);
        assert!(subject_key.unwrap_capture_key("c2", &s1, &wrapped).is_err());
        assert!(subject_key.unwrap_capture_key("c1", &s2, &wrapped).is_err());
        let other = DataKey::generate().unwrap();
        assert!(other.unwrap_capture_key("c1", &s1, &wrapped).is_err());
        // Not interchangeable with a sealed part of the same capture.
        let sealed = subject_key.seal(Part::Meta, "c1", &s1, &[7u8; 32]).unwrap();
        assert!(subject_key.unwrap_capture_key("c1", &s1, &sealed).is_err());
    }

    #[test]
    fn seal_open_bound_to_capture_subject_and_part() {
        let k = keys();
        let s1 = k.pseudonyms.pseudonym("S-1");
        let s2 = k.pseudonyms.pseudonym("S-2");
        let dek = DataKey::generate().unwrap();
        let plain = b"MARKER image bytes".to_vec();
        let sealed = dek.seal(Part::Image, "c1", &s1, &plain).unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"MARKER"));
        assert_eq!(
            dek.open(Part::Image, "c1", &s1, &sealed)
                .unwrap()
                .as_slice(),
            plain
        );
        assert!(dek.open(Part::Image, "c2", &s1, &sealed).is_err());
        assert!(dek.open(Part::Image, "c1", &s2, &sealed).is_err());
        assert!(dek.open(Part::Meta, "c1", &s1, &sealed).is_err());
        let other = DataKey::generate().unwrap();
        assert!(other.open(Part::Image, "c1", &s1, &sealed).is_err());
        // Fresh nonce each time.
        assert_ne!(sealed, dek.seal(Part::Image, "c1", &s1, &plain).unwrap());
    }

    #[test]
    fn wipe_zeroes_the_whole_allocation_and_empties_the_buffer() {
        let mut v = vec![7u8; 1000];
        v.reserve(500);
        // The spare capacity holds old bytes too.
        v.extend_from_slice(&[9; 400]);
        v.truncate(1000);
        let cap = v.capacity();
        zero_allocation(&mut v);
        assert!(v.is_empty());
        assert_eq!(v.capacity(), cap, "the same allocation");
        #[allow(unsafe_code)]
        // SAFETY: zero_allocation wrote every byte of the allocation.
        unsafe {
            v.set_len(cap)
        };
        assert!(v.iter().all(|&b| b == 0));

        let mut z = Zeroizing::new(vec![5u8; 64]);
        wipe(&mut z);
        assert!(z.is_empty());
        assert_eq!(z.capacity(), 0, "the allocation is gone");
    }
}
