//! The device key in a PKCS#11 token: finding it from its RFC 7512 URI
//! ([`crate::keyref`]), signing TLS handshakes and the CSR with it inside the
//! token, and generating it there (`facegate provision`).
//!
//! The private key never leaves the token: facegate only asks the token to
//! sign. ECDSA P-256 keys sign with `CKM_ECDSA` over a SHA-256 digest computed
//! here (tokens do not all offer `CKM_ECDSA_SHA256`), and the raw `r || s` the
//! token returns is DER-encoded for TLS and X.509. Ed25519 keys
//! (`CKK_EC_EDWARDS`) sign with `CKM_EDDSA` where the token offers it.
//!
//! Each provider library is loaded and initialised once per process and kept
//! (two `C_Initialize`/`C_Finalize` pairs on one library would pull the ground
//! from under each other). A [`TokenKey`] keeps one logged-in session behind a
//! mutex. When a signature fails (token removed, session closed), the session
//! is dropped and the next signature opens a new one, logging in again with
//! the PIN read afresh: a handshake fails with a clear error, the uplink
//! reconnects with backoff as after any TLS failure, and captures wait.
//!
//! The user PIN comes from the URI's `pin-source` file (mode 0600 or 0400,
//! nothing for others) or from the systemd credential
//! [`crate::keyref::PIN_CREDENTIAL`] in `$CREDENTIALS_DIRECTORY`. A PIN the
//! token refused is not offered again until it changes (tokens lock).
//!
//! This file holds what does not need the token library; `token.rs` talks to
//! the token through cryptoki (cargo feature `pkcs11`, on by default) and
//! `off.rs` stands in for it in a build without the feature.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::{SignatureAlgorithm, SignatureScheme};

#[cfg(feature = "pkcs11")]
mod token;
#[cfg(feature = "pkcs11")]
pub use token::{read_pin, TokenKey};

#[cfg(not(feature = "pkcs11"))]
mod off;
#[cfg(not(feature = "pkcs11"))]
pub use off::TokenKey;

/// Why the token key cannot be used, naming the URI and the part at fault
/// (`module`, `token`, `slot-id`, `pin`, `object`, `key`, `sign`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("PKCS#11 key {uri}: {part}: {reason}")]
pub struct Pkcs11Error {
    /// The key's URI as configured.
    pub uri: String,
    /// The part at fault.
    pub part: &'static str,
    /// What is wrong, in words.
    pub reason: String,
}

/// The kind of key in the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA over P-256 with SHA-256.
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

/// Where a token key was found, for `doctor` and `provision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The token's label.
    pub token: String,
    /// The slot number.
    pub slot: u64,
    /// The key's label, if it has one.
    pub object: Option<String>,
    /// `CKA_EXTRACTABLE` of the private key.
    pub extractable: bool,
    /// `CKA_SENSITIVE` of the private key.
    pub sensitive: bool,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PKCS#11 token {}, slot {}", self.token, self.slot)?;
        if let Some(o) = &self.object {
            write!(f, ", object {o}")?;
        }
        f.write_str(if self.extractable {
            ", EXTRACTABLE"
        } else {
            ", not extractable"
        })?;
        if !self.sensitive {
            f.write_str(", NOT sensitive")?;
        }
        Ok(())
    }
}

/// Refuses a PIN file that is not a regular file or that group or others may access.
pub fn check_pin_file(path: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    let meta = if meta.file_type().is_symlink() {
        fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?
    } else {
        meta
    };
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {mode:04o} lets group or others access the PIN (chmod 600 it)"
        ));
    }
    Ok(())
}

/// DER-encodes a raw ECDSA P-256 signature `r || s` (32 bytes each) as the
/// `ECDSA-Sig-Value` SEQUENCE of two INTEGERs that TLS and X.509 carry.
/// `None` unless `raw` is 64 bytes.
pub fn ecdsa_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    let integer = |half: &[u8]| {
        let start = half.iter().position(|&b| b != 0).unwrap_or(half.len() - 1);
        let digits = &half[start..];
        let mut out = vec![0x02];
        if digits[0] & 0x80 != 0 {
            out.push(digits.len() as u8 + 1);
            out.push(0);
        } else {
            out.push(digits.len() as u8);
        }
        out.extend_from_slice(digits);
        out
    };
    let (r, s) = (integer(&raw[..32]), integer(&raw[32..]));
    let mut der = vec![0x30, (r.len() + s.len()) as u8];
    der.extend(r);
    der.extend(s);
    Some(der)
}

/// A token key as a rustls signing key (TLS client authentication).
#[derive(Debug, Clone)]
pub struct TlsKey(pub Arc<TokenKey>);

impl TlsKey {
    fn scheme(&self) -> SignatureScheme {
        match self.0.kind() {
            KeyKind::EcdsaP256 => SignatureScheme::ECDSA_NISTP256_SHA256,
            KeyKind::Ed25519 => SignatureScheme::ED25519,
        }
    }
}

impl rustls::sign::SigningKey for TlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        let scheme = self.scheme();
        if !offered.contains(&scheme) {
            return None;
        }
        Some(Box::new(TlsSigner {
            key: self.0.clone(),
            scheme,
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.0.spki()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.0.kind() {
            KeyKind::EcdsaP256 => SignatureAlgorithm::ECDSA,
            KeyKind::Ed25519 => SignatureAlgorithm::ED25519,
        }
    }
}

/// Signs one handshake in the token.
#[derive(Debug)]
struct TlsSigner {
    key: Arc<TokenKey>,
    scheme: SignatureScheme,
}

impl rustls::sign::Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key
            .sign(message)
            .map_err(|e| rustls::Error::General(e.to_string()))
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

impl rcgen::PublicKeyData for TokenKey {
    fn der_bytes(&self) -> &[u8] {
        self.public_key_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.kind() {
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

impl rcgen::SigningKey for TokenKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        TokenKey::sign(self, msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ecdsa_signatures_become_der() {
        // (r, s, expected DER): short values, a high bit that needs a 0x00, leading zeros.
        let mut hi = [0u8; 32];
        hi[0] = 0x80;
        hi[31] = 1;
        let mut small = [0u8; 32];
        small[31] = 5;
        let mut lead = [0u8; 32];
        lead[1] = 0x7f;
        let cases: [(&[u8; 32], &[u8; 32], Vec<u8>); 3] = [
            (&small, &small, vec![0x30, 6, 2, 1, 5, 2, 1, 5]),
            (&hi, &small, {
                let mut v = vec![0x30, 38, 2, 33, 0];
                v.extend_from_slice(&hi);
                v.extend([2, 1, 5]);
                v
            }),
            (&lead, &[0u8; 32], {
                let mut v = vec![0x30, 36, 2, 31];
                v.extend_from_slice(&lead[1..]);
                v.extend([2, 1, 0]);
                v
            }),
        ];
        for (r, s, want) in cases {
            let raw = [&r[..], &s[..]].concat();
            assert_eq!(ecdsa_der(&raw), Some(want));
        }
        assert_eq!(ecdsa_der(&[1; 63]), None);
        assert_eq!(ecdsa_der(&[1; 72]), None);
    }

    #[test]
    fn der_signatures_verify_with_ring() {
        // A raw r||s from ring's fixed-length signer, re-encoded here, must
        // verify as ring's ASN.1 form: the encoding TLS peers check.
        use ring::signature::{self, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        for _ in 0..32 {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
            let msg = b"facegate handshake transcript";
            let raw = pair.sign(&rng, msg).unwrap();
            let der = ecdsa_der(raw.as_ref()).unwrap();
            signature::UnparsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_ASN1,
                pair.public_key().as_ref(),
            )
            .verify(msg, &der)
            .unwrap();
        }
    }

    #[test]
    fn pin_files_open_to_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("pin");
        fs::write(&pin, "1234\n").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            fs::set_permissions(&pin, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(check_pin_file(&pin).is_ok(), ok, "{mode:o}");
        }
        assert!(check_pin_file(dir.path())
            .unwrap_err()
            .contains("regular file"));
        assert!(check_pin_file(&dir.path().join("none")).is_err());
    }

    #[cfg(feature = "pkcs11")]
    #[test]
    fn the_spki_prefixes_match_rcgen() {
        use super::token::{ED25519_SPKI_PREFIX, P256_SPKI_PREFIX};
        // rcgen writes the SubjectPublicKeyInfo of its own keys: ours must be byte-equal.
        use rcgen::PublicKeyData;
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert_eq!(
            [P256_SPKI_PREFIX, pair.der_bytes()].concat(),
            pair.subject_public_key_info()
        );
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert_eq!(
            [ED25519_SPKI_PREFIX, pair.der_bytes()].concat(),
            pair.subject_public_key_info()
        );
    }
}
