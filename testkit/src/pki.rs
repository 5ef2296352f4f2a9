//! Throwaway X.509 PKI for the MQTT uplink: a certificate authority that issues
//! broker (server) certificates and per-device client certificates.
//!
//! It exists for the demo, the benchmarks and the tests, which need a working
//! mutual-TLS setup without an external CA. Keys are ECDSA P-256, written as PKCS#8 PEM.
//! A device certificate carries the device id as its common name, which is what
//! Mosquitto's `use_identity_as_username` turns into the MQTT user name.
//! Validity times are unix seconds, so tests can issue already-expired certificates.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;

use facegate::clock;

/// How long a CA made by [`Ca::new`] stays valid: ten years.
pub const CA_VALIDITY_SECS: i64 = 10 * 365 * 24 * 3600;

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The requested validity window is empty or outside what X.509 can express.
    #[error("invalid validity for {what}: not_before {not_before} / not_after {not_after} (unix seconds)")]
    Validity {
        /// Which certificate was requested.
        what: String,
        /// Requested start, unix seconds.
        not_before: i64,
        /// Requested end, unix seconds.
        not_after: i64,
    },
    /// A name (common name or subject alternative name) is empty or not representable.
    #[error("invalid name {name:?} for {what}: {reason}")]
    Name {
        /// Which certificate was requested.
        what: String,
        /// The offending name.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// Key generation or signing failed.
    #[error("cannot create {what}: {source}")]
    Generate {
        /// Which certificate or key was being made.
        what: String,
        /// The underlying rcgen error.
        source: rcgen::Error,
    },
    /// Writing a PEM file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

/// A certificate authority held in memory: its certificate and signing key.
pub struct Ca {
    /// The parameters the CA certificate was made from; rcgen needs its subject and
    /// key-identifier method to sign certificates under it.
    params: CertificateParams,
    /// The CA's private signing key (never printed).
    key: KeyPair,
    /// The CA certificate in PEM, what clients and the broker trust.
    cert_pem: String,
}

/// A freshly issued certificate with its private key, both in PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate (single PEM block), what the peer is shown.
    pub cert_pem: String,
    /// The private key as PKCS#8 PEM; secret, never printed by `Debug`.
    pub key_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Ca {
    /// Creates a self-signed CA named `common_name`, valid from an hour ago for ten years.
    pub fn new(common_name: &str) -> Result<Ca, PkiError> {
        let now = clock::now();
        Ca::with_validity(common_name, now - 3600, now + CA_VALIDITY_SECS)
    }

    /// Creates a self-signed CA with an explicit validity window (unix seconds).
    pub fn with_validity(
        common_name: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<Ca, PkiError> {
        let what = format!("CA certificate {common_name:?}");
        check_common_name(&what, common_name)?;
        let mut params = CertificateParams::default();
        set_validity(&mut params, &what, not_before, not_after)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = generate_key(&what)?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Generate {
                what: what.clone(),
                source,
            })?;
        Ok(Ca {
            params,
            key,
            cert_pem: cert.pem(),
        })
    }

    /// The CA certificate in PEM: the `ca_file` of devices and of the broker.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the CA certificate to `dir/{stem}.pem` (mode 0644) and returns the path.
    pub fn write_cert(&self, dir: &Path, stem: &str) -> Result<PathBuf, PkiError> {
        let path = dir.join(format!("{stem}.pem"));
        write_file(&path, self.cert_pem.as_bytes(), 0o644)?;
        Ok(path)
    }

    /// Issues a TLS server certificate (server-auth EKU) for the given names.
    ///
    /// Each name becomes a subject alternative name: an IP address when it parses as
    /// one (`127.0.0.1`), a DNS name otherwise (`localhost`). The first name is also
    /// the common name.
    pub fn issue_server(
        &self,
        names: &[&str],
        not_before: i64,
        not_after: i64,
    ) -> Result<Issued, PkiError> {
        let what = format!("server certificate for {names:?}");
        let Some(first) = names.first() else {
            return Err(PkiError::Name {
                what,
                name: String::new(),
                reason: "at least one DNS name or IP address is needed".into(),
            });
        };
        check_common_name(&what, first)?;
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).map_err(|e| PkiError::Name {
            what: what.clone(),
            name: names.join(","),
            reason: e.to_string(),
        })?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, *first);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, &what, not_before, not_after)
    }

    /// Issues a device (client-auth EKU) certificate whose common name is
    /// `common_name`, normally the device id. `not_after` may lie in the past, which
    /// yields an already-expired certificate (for tests of broker refusal).
    pub fn issue_client(
        &self,
        common_name: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<Issued, PkiError> {
        self.issue_client_edited(common_name, not_before, not_after, |_| {})
    }

    /// Issues a device certificate like [`Ca::issue_client`], then lets `edit`
    /// change its parameters before signing: what a careless or tricked CA
    /// would sign, e.g. `CA:TRUE` (`is_ca`), `keyCertSign` (`key_usages`) or
    /// no `clientAuth` (`extended_key_usages`), for tests of the doctor.
    pub fn issue_client_edited(
        &self,
        common_name: &str,
        not_before: i64,
        not_after: i64,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Result<Issued, PkiError> {
        let what = format!("client certificate {common_name:?}");
        check_common_name(&what, common_name)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue_edited(params, &what, not_before, not_after, edit)
    }

    /// Signs a device's certificate request as the signing recipe of the
    /// operations guide does: only the request's public key is taken; subject
    /// (`CN=common_name`) and extensions (client authentication, not a CA) are
    /// set here. Returns the certificate in PEM. For keys the test cannot see,
    /// such as one inside a PKCS#11 token.
    pub fn sign_client_csr(
        &self,
        csr_pem: &str,
        common_name: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<String, PkiError> {
        let what = format!("certificate for the request of {common_name:?}");
        check_common_name(&what, common_name)?;
        let generate = |source| PkiError::Generate {
            what: what.clone(),
            source,
        };
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, &what, not_before, not_after)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(generate)?;
        Ok(cert.pem())
    }

    /// Signs a leaf certificate made from `params` with a fresh key.
    fn issue(
        &self,
        params: CertificateParams,
        what: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<Issued, PkiError> {
        self.issue_edited(params, what, not_before, not_after, |_| {})
    }

    /// Signs a leaf certificate made from `params`, with the leaf defaults
    /// (not a CA, digitalSignature) changed by `edit`, with a fresh key.
    fn issue_edited(
        &self,
        mut params: CertificateParams,
        what: &str,
        not_before: i64,
        not_after: i64,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Result<Issued, PkiError> {
        set_validity(&mut params, what, not_before, not_after)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        edit(&mut params);
        let key = generate_key(what)?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|source| PkiError::Generate {
                what: what.to_string(),
                source,
            })?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Issued {
    /// Writes `dir/{stem}.pem` (certificate, mode 0644) and `dir/{stem}.key`
    /// (private key, mode 0600) and returns `(cert_path, key_path)`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        write_file(&cert_path, self.cert_pem.as_bytes(), 0o644)?;
        write_file(&key_path, self.key_pem.as_bytes(), 0o600)?;
        Ok((cert_path, key_path))
    }
}

/// Refuses empty or oversized common names (X.509 caps CN at 64 characters).
fn check_common_name(what: &str, name: &str) -> Result<(), PkiError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.chars().count() > 64 {
        "longer than 64 characters"
    } else {
        return Ok(());
    };
    Err(PkiError::Name {
        what: what.to_string(),
        name: name.to_string(),
        reason: reason.to_string(),
    })
}

/// Sets `not_before`/`not_after`, refusing an empty or unrepresentable window.
fn set_validity(
    params: &mut CertificateParams,
    what: &str,
    not_before: i64,
    not_after: i64,
) -> Result<(), PkiError> {
    let invalid = || PkiError::Validity {
        what: what.to_string(),
        not_before,
        not_after,
    };
    if not_after <= not_before {
        return Err(invalid());
    }
    params.not_before = OffsetDateTime::from_unix_timestamp(not_before).map_err(|_| invalid())?;
    params.not_after = OffsetDateTime::from_unix_timestamp(not_after).map_err(|_| invalid())?;
    Ok(())
}

/// A fresh ECDSA P-256 key.
fn generate_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate {
        what: format!("key for {what}"),
        source,
    })
}

/// Writes `bytes` to `path` with exactly `mode`, also when the file already existed.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    // The mode given to open() only applies to new files (and is masked by umask).
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        clock::now()
    }

    #[test]
    fn ca_and_leaves_are_pem() {
        let ca = Ca::new("test CA").unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let server = ca
            .issue_server(&["localhost", "127.0.0.1"], now() - 60, now() + 3600)
            .unwrap();
        assert!(server.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(server.key_pem.contains("BEGIN PRIVATE KEY"));
        let client = ca
            .issue_client("term-01", now() - 60, now() + 3600)
            .unwrap();
        assert_ne!(client.cert_pem, server.cert_pem);
        assert_ne!(client.key_pem, server.key_pem);
    }

    #[test]
    fn expired_client_certificate_can_be_issued() {
        let ca = Ca::new("test CA").unwrap();
        assert!(ca.issue_client("old", now() - 7200, now() - 3600).is_ok());
    }

    #[test]
    fn bad_requests_are_refused() {
        let ca = Ca::new("test CA").unwrap();
        let t = now();
        let cases: Vec<(&str, Result<Issued, PkiError>)> = vec![
            ("empty window", ca.issue_client("d", t, t)),
            ("reversed window", ca.issue_client("d", t, t - 1)),
            ("unrepresentable", ca.issue_client("d", t, i64::MAX)),
            ("empty CN", ca.issue_client("", t, t + 1)),
            ("long CN", ca.issue_client(&"x".repeat(65), t, t + 1)),
            ("no server names", ca.issue_server(&[], t, t + 1)),
            ("bad DNS name", ca.issue_server(&["ünïcode"], t, t + 1)),
        ];
        for (name, result) in cases {
            assert!(result.is_err(), "{name} must be refused");
        }
        assert!(matches!(
            ca.issue_client("d", t, t),
            Err(PkiError::Validity { .. })
        ));
        assert!(matches!(
            ca.issue_client("", t, t + 1),
            Err(PkiError::Name { .. })
        ));
    }

    #[test]
    fn write_sets_modes_even_over_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA").unwrap();
        let issued = ca.issue_client("term-01", now() - 60, now() + 60).unwrap();
        let key = dir.path().join("dev.key");
        fs::write(&key, "old").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let (cert_path, key_path) = issued.write(dir.path(), "dev").unwrap();
        assert_eq!(key_path, key);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key_path), 0o600);
        assert_eq!(mode(&cert_path), 0o644);
        assert_eq!(fs::read_to_string(&key_path).unwrap(), issued.key_pem);
        assert_eq!(fs::read_to_string(&cert_path).unwrap(), issued.cert_pem);
        let ca_path = ca.write_cert(dir.path(), "ca").unwrap();
        assert_eq!(fs::read_to_string(ca_path).unwrap(), ca.cert_pem());
    }

    #[test]
    fn debug_never_shows_keys() {
        let ca = Ca::new("test CA").unwrap();
        let issued = ca.issue_client("term-01", now() - 60, now() + 60).unwrap();
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
