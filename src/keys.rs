//! Ed25519 signing keys for the fleet tool: generation, the PEM `PRIVATE KEY`
//! file (PKCS#8, created mode 0600, never overwritten), reading it back (refusing
//! files other users can access), and the base64url public key form that
//! `[[trust]] public_key` takes.
//!
//! Private key bytes are never logged or put into error messages.

use std::fs::OpenOptions;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Why a key could not be generated, written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The system random generator or ring refused to make a key.
    #[error("cannot generate an Ed25519 key: {0}")]
    Generate(String),
    /// The bytes are not an Ed25519 PKCS#8 private key.
    #[error("{what} is not an Ed25519 PKCS#8 private key: {reason}")]
    Invalid {
        /// Where the bytes came from (a path or "key").
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// Refusing to overwrite an existing key file.
    #[error("{0}: already exists; refusing to overwrite a key file")]
    Exists(PathBuf),
    /// The key file can be read or written by group or others.
    #[error(
        "{path}: mode {mode:04o} lets group/others access the private key; run chmod 600 on it"
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Generates a new Ed25519 key: (PKCS#8 v2 DER, raw 32-byte public key).
pub fn generate() -> Result<(Vec<u8>, [u8; 32]), KeyError> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| KeyError::Generate("system randomness unavailable".into()))?;
    let pkcs8 = to_pkcs8_v1(doc.as_ref())?;
    let public = public_from_pkcs8(&pkcs8)?;
    Ok((pkcs8, public))
}

/// DER prefix of an RFC 8410 PKCS#8 v1 Ed25519 private key; the 32-byte seed follows.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Rewrites ring's PKCS#8 v2 document (seed + public key) as the plain v1
/// form of RFC 8410, which OpenSSL, Python `cryptography` and every JOSE
/// library read.
fn to_pkcs8_v1(v2: &[u8]) -> Result<Vec<u8>, KeyError> {
    // ring's v2 layout: 16-byte header, seed, then the public key.
    let seed = v2
        .get(16..48)
        .ok_or_else(|| KeyError::Generate("unexpected PKCS#8 layout".into()))?;
    let mut v1 = PKCS8_V1_PREFIX.to_vec();
    v1.extend_from_slice(seed);
    Ok(v1)
}

/// The raw public key of a PKCS#8 Ed25519 private key (v1 as made by OpenSSL, or v2).
pub fn public_from_pkcs8(der: &[u8]) -> Result<[u8; 32], KeyError> {
    let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| KeyError::Invalid {
        what: "key".into(),
        reason: e.to_string(),
    })?;
    let mut out = [0u8; 32];
    out.copy_from_slice(kp.public_key().as_ref());
    Ok(out)
}

/// The public key as config's `[[trust]] public_key` takes it (base64url, no padding).
pub fn public_key_b64(pk: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(pk)
}

/// Writes the key as a PEM `PRIVATE KEY` file, created with mode 0600.
/// Fails if the file already exists.
pub fn write_private_key(path: &Path, pkcs8: &[u8]) -> Result<(), KeyError> {
    public_from_pkcs8(pkcs8)?;
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(path.to_path_buf())
            } else {
                io(e)
            }
        })?;
    file.write_all(to_pem(pkcs8).as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reads a private key file written by [`write_private_key`] (PEM) or raw
/// PKCS#8 DER. Refuses a file that group or others can access.
pub fn read_private_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Check the mode of the file actually opened, not of whatever the path names later.
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    let invalid = |reason: String| KeyError::Invalid {
        what: path.display().to_string(),
        reason,
    };
    let der = if bytes.starts_with(b"-----") {
        let text = std::str::from_utf8(&bytes).map_err(|_| invalid("PEM is not UTF-8".into()))?;
        from_pem(text).map_err(invalid)?
    } else {
        bytes
    };
    public_from_pkcs8(&der).map_err(|e| match e {
        KeyError::Invalid { reason, .. } => invalid(reason),
        other => other,
    })?;
    Ok(der)
}

/// PEM armour, 64 base64 characters a line.
fn to_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from(PEM_BEGIN);
    out.push('\n');
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(PEM_END);
    out.push('\n');
    out
}

/// The DER inside a single `PRIVATE KEY` PEM block.
fn from_pem(text: &str) -> Result<Vec<u8>, String> {
    let start = text
        .find(PEM_BEGIN)
        .ok_or_else(|| format!("no {PEM_BEGIN} line (only unencrypted PKCS#8 is supported)"))?;
    let body = &text[start + PEM_BEGIN.len()..];
    let end = body
        .find(PEM_END)
        .ok_or_else(|| format!("no {PEM_END} line"))?;
    let b64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(b64)
        .map_err(|e| format!("PEM body is not base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generate_write_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.key");
        let (pkcs8, public) = generate().unwrap();
        write_private_key(&path, &pkcs8).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(PEM_BEGIN));
        assert!(text.lines().all(|l| l.len() <= 64));
        let back = read_private_key(&path).unwrap();
        assert_eq!(back, pkcs8);
        assert_eq!(public_from_pkcs8(&back).unwrap(), public);
        // The written key signs tokens the public key verifies.
        let token = crate::jws::sign(&serde_json::json!({"a": 1}), "k", &back).unwrap();
        let trust = [crate::config::TrustedKey {
            kid: "k".into(),
            role: crate::config::Role::Fleet,
            public_key: public,
        }];
        assert!(crate::jws::verify(&token, &trust).is_ok());
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.key");
        std::fs::write(&path, b"precious").unwrap();
        let (pkcs8, _) = generate().unwrap();
        assert!(matches!(
            write_private_key(&path, &pkcs8),
            Err(KeyError::Exists(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn refuses_open_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.key");
        let (pkcs8, _) = generate().unwrap();
        write_private_key(&path, &pkcs8).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_private_key(&path).unwrap_err();
            assert!(matches!(err, KeyError::TooOpen { .. }), "mode {mode:o}");
            assert!(err.to_string().contains("fleet.key"));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read_private_key(&path).is_ok());
    }

    #[test]
    fn reads_raw_der_and_rejects_junk() {
        let dir = tempfile::tempdir().unwrap();
        let (pkcs8, _) = generate().unwrap();
        let der_path = dir.path().join("k.der");
        std::fs::write(&der_path, &pkcs8).unwrap();
        std::fs::set_permissions(&der_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private_key(&der_path).unwrap(), pkcs8);

        let junk = dir.path().join("junk.key");
        std::fs::write(
            &junk,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = read_private_key(&junk).unwrap_err();
        assert!(matches!(err, KeyError::Invalid { .. }));
        assert!(err.to_string().contains("junk.key"));

        let missing = dir.path().join("missing.key");
        assert!(matches!(
            read_private_key(&missing),
            Err(KeyError::Io { .. })
        ));
    }

    #[test]
    fn reads_openssl_v1_pkcs8() {
        // `openssl genpkey -algorithm ed25519` output (PKCS#8 v1, RFC 8410 §10.3 example key).
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                   -----END PRIVATE KEY-----\n";
        let der = from_pem(pem).unwrap();
        let pk = public_from_pkcs8(&der).unwrap();
        // RFC 8410 §10.1 public key for that private key.
        assert_eq!(
            hex::encode(pk),
            "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"
        );
        assert_eq!(public_key_b64(&pk).len(), 43);
        assert_eq!(URL_SAFE_NO_PAD.decode(public_key_b64(&pk)).unwrap(), pk);
    }
}
