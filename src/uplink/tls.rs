//! TLS for the MQTT uplink: the rustls client configuration (mutual TLS, our CA only),
//! the MQTT options that use it, and plain-language explanations of failed connections.
//!
//! Verification of the broker (chain to `ca_file`, server name, validity) is always on:
//! nothing in this module, or anywhere else, can turn it off. The ring crypto provider is
//! used explicitly, and only TLS 1.2 and 1.3 are offered.

use std::error::Error as StdError;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{ConnectReturnCode, ConnectionError, MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

use crate::keyref::KeyRef;
use crate::pkcs11::{Pkcs11Error, TlsKey, TokenKey};

/// Why the TLS client configuration (or the MQTT options) could not be built.
/// Every variant names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read (missing, permission denied, ...).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The file is not valid PEM.
    #[error("{path} is not valid PEM: {reason}")]
    Pem {
        /// The malformed file.
        path: PathBuf,
        /// What is wrong with it, in words.
        reason: String,
    },
    /// The file holds no `CERTIFICATE` PEM block.
    #[error("no certificate in {path}")]
    NoCertificate {
        /// The file that should hold a certificate.
        path: PathBuf,
    },
    /// A CA certificate could not be used as a trust anchor.
    #[error("unusable CA certificate in {path}: {source}")]
    BadCaCertificate {
        /// The CA file.
        path: PathBuf,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// The client certificate could not be parsed.
    #[error("unusable client certificate in {path}: {source}")]
    BadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// The key file holds no PKCS#8, SEC1 or RSA private key.
    #[error("no private key (PKCS#8, SEC1 or RSA PEM) in {path}")]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// The private key is of a kind the ring provider cannot sign with.
    #[error("unsupported private key in {path}: {source}")]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// Why the provider refused it.
        source: rustls::Error,
    },
    /// The private key is accessible to group or others.
    #[error("private key {path} has mode {mode:04o}: it must not be accessible by group or others (chmod 600)")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The private key does not belong to the certificate.
    #[error("private key {key} does not match the certificate {cert}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// rustls refused the assembled configuration.
    #[error("cannot build TLS configuration from {cert} and {key}: {source}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// MQTT needs a client id for a persistent session.
    #[error("MQTT client id must not be empty")]
    EmptyClientId,
    /// The key in the PKCS#11 token cannot be used (the message names the URI part).
    #[error(transparent)]
    Pkcs11(#[from] Pkcs11Error),
    /// The token's key does not belong to the certificate.
    #[error("the key {uri} in the PKCS#11 token does not match the certificate {cert}")]
    TokenKeyMismatch {
        /// The key's URI.
        uri: String,
        /// The certificate file.
        cert: PathBuf,
    },
}

/// [`client_config`] for a key wherever it lives: a file (exactly
/// [`client_config`]) or a PKCS#11 token, where every handshake signature is
/// made by the token.
pub fn client_config_for(
    ca_file: &Path,
    cert_file: &Path,
    key: &KeyRef,
) -> Result<Arc<ClientConfig>, TlsError> {
    match key {
        KeyRef::File(key_file) => client_config(ca_file, cert_file, key_file),
        KeyRef::Pkcs11(key) => {
            let token_key = TokenKey::open(key)?;
            token_client_config(ca_file, cert_file, token_key)
        }
    }
}

/// The client configuration of [`client_config`] with a key in a token.
pub fn token_client_config(
    ca_file: &Path,
    cert_file: &Path,
    token_key: Arc<TokenKey>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = read_roots(ca_file)?;
    let chain = read_certs(cert_file)?;
    let uri = token_key.uri().to_string();
    let signing: Arc<dyn rustls::sign::SigningKey> = Arc::new(TlsKey(token_key));
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::TokenKeyMismatch {
                uri,
                cert: cert_file.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(TlsError::BadCertificate {
                path: cert_file.to_path_buf(),
                source,
            })
        }
    }
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::BadCertificate {
            path: cert_file.to_path_buf(),
            source,
        })?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    Ok(Arc::new(config))
}

fn read_roots(ca_file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_file)? {
        roots
            .add(cert)
            .map_err(|source| TlsError::BadCaCertificate {
                path: ca_file.to_path_buf(),
                source,
            })?;
    }
    Ok(roots)
}

/// Builds the uplink's TLS client configuration: trust only the CA(s) in `ca_file`
/// (no system roots), authenticate with the chain in `cert_file` and the key in
/// `key_file`, offer TLS 1.2 and 1.3 with the ring provider.
///
/// The key file must not be accessible by group or others, and the key must match
/// the first certificate of `cert_file`.
pub fn client_config(
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = read_roots(ca_file)?;

    let chain = read_certs(cert_file)?;
    let key = read_key(key_file)?;
    check_pair(&provider, &chain, &key, cert_file, key_file)?;

    let config_err = |source| TlsError::Config {
        cert: cert_file.to_path_buf(),
        key: key_file.to_path_buf(),
        source,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(config_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(config_err)?;
    Ok(Arc::new(config))
}

/// MQTT options for the uplink: mutual TLS with `tls`, persistent session
/// (clean session off, so commands queued while offline are delivered), the given
/// keep-alive (at least 1 s, at most 65535 s) and the same packet size limit both ways.
pub fn mqtt_options(
    client_id: &str,
    host: &str,
    port: u16,
    keep_alive: Duration,
    max_packet_size: usize,
    tls: Arc<ClientConfig>,
) -> Result<MqttOptions, TlsError> {
    if client_id.is_empty() {
        return Err(TlsError::EmptyClientId);
    }
    let keep_alive = Duration::from_secs(keep_alive.as_secs().clamp(1, u64::from(u16::MAX)));
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_keep_alive(keep_alive)
        .set_clean_session(false)
        .set_max_packet_size(max_packet_size, max_packet_size)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    Ok(options)
}

/// Reads every certificate of a PEM file; at least one is required.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file, refusing a file that group or others
/// can access.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let meta = fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let pem = read(path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(pem_error(path, e)),
    }
}

/// A PEM parser error in words, naming the file (the parser prints markers as bytes).
fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    let reason = match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a section has no end line \"-----END {}-----\" (truncated file?)",
            String::from_utf8_lossy(&end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed BEGIN line {:?}", String::from_utf8_lossy(&line))
        }
        pem::Error::Base64Decode(e) => format!("a section's body is not base64: {e}"),
        other => other.to_string(),
    };
    TlsError::Pem {
        path: path.to_path_buf(),
        reason,
    }
}

/// Checks that `key` belongs to the end-entity certificate of `chain` by comparing
/// public keys (rustls does not guarantee this check for every key type).
fn check_pair(
    provider: &rustls::crypto::CryptoProvider,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_file: &Path,
    key_file: &Path,
) -> Result<(), TlsError> {
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|source| TlsError::UnsupportedKey {
            path: key_file.to_path_buf(),
            source,
        })?;
    match CertifiedKey::new(chain.to_vec(), signing_key).keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            key: key_file.to_path_buf(),
            cert: cert_file.to_path_buf(),
        }),
        Err(source) => Err(TlsError::BadCertificate {
            path: cert_file.to_path_buf(),
            source,
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// What went wrong when connecting to the broker, in the operator's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The broker's certificate does not chain to the CA in `ca_file`.
    UntrustedServer,
    /// The broker's certificate is not valid for the host name we connected to.
    ServerNameMismatch,
    /// The broker's certificate has expired.
    ServerCertExpired,
    /// The broker's certificate is not valid yet (or our clock is behind).
    ServerCertNotYetValid,
    /// The broker's certificate is unusable for another reason.
    ServerCertInvalid,
    /// The broker refused our client certificate (TLS alert from the broker).
    ClientCertRejected,
    /// The TLS handshake failed for another reason (protocol, ciphers, ...).
    TlsFailed,
    /// Nothing listens on the broker's port (TCP connection refused).
    Refused,
    /// The broker's host name could not be resolved.
    Dns,
    /// The broker did not answer in time.
    Timeout,
    /// The broker closed or reset the connection without a TLS alert.
    Closed,
    /// The broker refused the MQTT session (CONNACK return code).
    MqttRefused,
    /// Anything else.
    Other,
}

/// Sorts a failed connection into a [`ConnectFailure`] by walking the error chain
/// rumqttc produces (`Tls(Io(rustls::Error))`, `MqttState(Deserialization(Io(..)))`, ...).
pub fn classify(err: &ConnectionError) -> ConnectFailure {
    match err {
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => {
            return ConnectFailure::Timeout
        }
        ConnectionError::ConnectionRefused(_) => return ConnectFailure::MqttRefused,
        ConnectionError::Tls(rumqttc::TlsError::DNSName(_)) => return ConnectFailure::Dns,
        ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted) => {
            return ConnectFailure::Closed
        }
        _ => {}
    }
    if let Some(tls) = find::<rustls::Error>(err) {
        return classify_rustls(tls);
    }
    if let Some(io) = find::<io::Error>(err) {
        return classify_io(io);
    }
    ConnectFailure::Other
}

fn classify_io(io: &io::Error) -> ConnectFailure {
    match io.kind() {
        io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
        io::ErrorKind::TimedOut => ConnectFailure::Timeout,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => ConnectFailure::Closed,
        _ if io.to_string().contains("failed to lookup address") => ConnectFailure::Dns,
        _ => ConnectFailure::Other,
    }
}

fn classify_rustls(err: &rustls::Error) -> ConnectFailure {
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                ConnectFailure::UntrustedServer
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                ConnectFailure::ServerNameMismatch
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                ConnectFailure::ServerCertExpired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                ConnectFailure::ServerCertNotYetValid
            }
            _ => ConnectFailure::ServerCertInvalid,
        },
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
            | AlertDescription::AccessDenied,
        ) => ConnectFailure::ClientCertRejected,
        _ => ConnectFailure::TlsFailed,
    }
}

/// One line telling an operator why the connection failed and what to look at,
/// followed by the raw error in parentheses.
pub fn explain(err: &ConnectionError) -> String {
    let cause = match classify(err) {
        ConnectFailure::MqttRefused => match err {
            ConnectionError::ConnectionRefused(code) => {
                format!("broker refused the MQTT session: {}", connack_reason(*code))
            }
            _ => "broker refused the MQTT session".to_string(),
        },
        failure => cause(failure, err),
    };
    format!("{cause} ({err})")
}

/// [`explain`] for an error of rumqttc's MQTT 5 client (its own MQTT
/// reasons are told by `super::mqtt`): the TLS or socket cause found in
/// its chain, followed by the raw error in parentheses.
pub fn explain_chain(err: &(dyn StdError + 'static)) -> String {
    let failure = if let Some(tls) = find::<rustls::Error>(err) {
        classify_rustls(tls)
    } else if let Some(io) = find::<io::Error>(err) {
        classify_io(io)
    } else {
        ConnectFailure::Other
    };
    format!("{} ({err})", cause(failure, err))
}

fn cause(failure: ConnectFailure, err: &(dyn StdError + 'static)) -> String {
    match failure {
        ConnectFailure::UntrustedServer => {
            "broker certificate not trusted: it is not signed by the CA in mqtt.ca_file (unknown issuer)".to_string()
        }
        ConnectFailure::ServerNameMismatch => {
            "broker certificate name mismatch: it is not valid for mqtt.host".to_string()
        }
        ConnectFailure::ServerCertExpired => "broker certificate expired".to_string(),
        ConnectFailure::ServerCertNotYetValid => {
            "broker certificate not valid yet (check the device clock)".to_string()
        }
        ConnectFailure::ServerCertInvalid => "broker certificate invalid".to_string(),
        ConnectFailure::ClientCertRejected => {
            let alert = find::<rustls::Error>(err)
                .and_then(|e| match e {
                    rustls::Error::AlertReceived(a) => Some(alert_name(*a)),
                    _ => None,
                })
                .unwrap_or("alert");
            format!(
                "broker rejected our client certificate (TLS {alert}): check mqtt.cert_file is current and signed by the broker's client CA"
            )
        }
        ConnectFailure::TlsFailed => "TLS handshake failed".to_string(),
        ConnectFailure::Refused => {
            "connection refused: nothing listens on mqtt.host:mqtt.port".to_string()
        }
        ConnectFailure::Dns => "cannot resolve mqtt.host (DNS failure)".to_string(),
        ConnectFailure::Timeout => "broker did not answer in time (timeout)".to_string(),
        ConnectFailure::Closed => "broker closed the connection (it may have rejected our client certificate or session)".to_string(),
        ConnectFailure::MqttRefused => "broker refused the MQTT session".to_string(),
        ConnectFailure::Other => "connection failed".to_string(),
    }
}

fn alert_name(alert: AlertDescription) -> &'static str {
    match alert {
        AlertDescription::BadCertificate => "alert bad_certificate",
        AlertDescription::UnsupportedCertificate => "alert unsupported_certificate",
        AlertDescription::CertificateRevoked => "alert certificate_revoked",
        AlertDescription::CertificateExpired => "alert certificate_expired",
        AlertDescription::CertificateUnknown => "alert certificate_unknown",
        AlertDescription::UnknownCA => "alert unknown_ca",
        AlertDescription::CertificateRequired => "alert certificate_required",
        AlertDescription::AccessDenied => "alert access_denied",
        _ => "alert",
    }
}

fn connack_reason(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Success => "success",
        ConnectReturnCode::RefusedProtocolVersion => "unacceptable protocol version",
        ConnectReturnCode::BadClientId => "client id rejected",
        ConnectReturnCode::ServiceUnavailable => "service unavailable",
        ConnectReturnCode::BadUserNamePassword => {
            "bad user name or password (certificate identity)"
        }
        ConnectReturnCode::NotAuthorized => "not authorized",
    }
}

/// Finds the first error of type `T` in the chain of `err`, also looking inside
/// `io::Error` wrappers (whose `source()` skips the wrapped error itself).
fn find<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = match e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;
    use facegate_testkit::pki::{Ca, Issued};

    struct Files {
        _dir: tempfile::TempDir,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    }

    fn files() -> (Files, Ca, Issued) {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("unit CA").unwrap();
        let now = clock::now();
        let issued = ca.issue_client("term-01", now - 60, now + 3600).unwrap();
        let ca_path = ca.write_cert(dir.path(), "ca").unwrap();
        let (cert, key) = issued.write(dir.path(), "dev").unwrap();
        (
            Files {
                _dir: dir,
                ca: ca_path,
                cert,
                key,
            },
            ca,
            issued,
        )
    }

    #[test]
    fn valid_files_build_a_config() {
        let (f, _, _) = files();
        let config = client_config(&f.ca, &f.cert, &f.key).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        let options = mqtt_options(
            "term-01",
            "localhost",
            8883,
            Duration::from_secs(30),
            1 << 20,
            config,
        )
        .unwrap();
        assert!(!options.clean_session());
        assert_eq!(options.keep_alive(), Duration::from_secs(30));
        assert!(matches!(options.transport(), Transport::Tls(_)));
    }

    #[test]
    fn mqtt_options_refuse_empty_client_id_and_clamp_keep_alive() {
        let (f, _, _) = files();
        let config = client_config(&f.ca, &f.cert, &f.key).unwrap();
        assert!(matches!(
            mqtt_options("", "h", 1, Duration::from_secs(5), 10, config.clone()),
            Err(TlsError::EmptyClientId)
        ));
        let o = mqtt_options("d", "h", 1, Duration::ZERO, 10, config).unwrap();
        assert_eq!(o.keep_alive(), Duration::from_secs(1));
    }

    #[test]
    fn each_bad_input_is_named() {
        let (f, ca, issued) = files();
        let dir = f.ca.parent().unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let p = dir.join(name);
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let missing = dir.join("missing.pem");
        let empty = write("empty.pem", "", 0o600);
        let garbage_ca = write(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            0o644,
        );
        let key_only = write("key-only.pem", &issued.key_pem, 0o600);
        let open_key = write("open.key", &issued.key_pem, 0o640);
        let now = clock::now();
        let other = ca.issue_client("term-02", now - 60, now + 60).unwrap();
        let other_key = write("other.key", &other.key_pem, 0o600);

        type Case<'a> = (&'a str, Result<Arc<ClientConfig>, TlsError>, &'a Path);
        let cases: Vec<Case> = vec![
            (
                "missing CA",
                client_config(&missing, &f.cert, &f.key),
                &missing,
            ),
            ("empty CA", client_config(&empty, &f.cert, &f.key), &empty),
            (
                "garbage CA",
                client_config(&garbage_ca, &f.cert, &f.key),
                &garbage_ca,
            ),
            (
                "CA file with a key only",
                client_config(&key_only, &f.cert, &f.key),
                &key_only,
            ),
            (
                "missing cert",
                client_config(&f.ca, &missing, &f.key),
                &missing,
            ),
            (
                "missing key",
                client_config(&f.ca, &f.cert, &missing),
                &missing,
            ),
            (
                "cert file as key",
                client_config(&f.ca, &f.cert, &empty),
                &empty,
            ),
            (
                "open key",
                client_config(&f.ca, &f.cert, &open_key),
                &open_key,
            ),
            (
                "wrong key",
                client_config(&f.ca, &f.cert, &other_key),
                &other_key,
            ),
        ];
        for (name, result, path) in cases {
            let err = result.expect_err(name);
            let msg = err.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "{name}: message {msg:?} must name {path:?}"
            );
        }

        assert!(matches!(
            client_config(&missing, &f.cert, &f.key),
            Err(TlsError::Read { .. })
        ));
        assert!(matches!(
            client_config(&empty, &f.cert, &f.key),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(matches!(
            client_config(&f.ca, &f.cert, &empty),
            Err(TlsError::NoPrivateKey { .. })
        ));
        assert!(matches!(
            client_config(&f.ca, &f.cert, &open_key),
            Err(TlsError::KeyPermissions { mode: 0o640, .. })
        ));
        assert!(matches!(
            client_config(&f.ca, &f.cert, &other_key),
            Err(TlsError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn broken_pem_is_explained_with_the_file() {
        let (f, _, issued) = files();
        let dir = f.ca.parent().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        let cert_pem = fs::read_to_string(&f.cert).unwrap();
        let truncated_cert = write("truncated.pem", &cert_pem[..cert_pem.len() / 2]);
        let truncated_key = write("truncated.key", &issued.key_pem[..issued.key_pem.len() / 2]);
        let bad_base64 = write(
            "bad64.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let cases = [
            (
                "truncated CA",
                client_config(&truncated_cert, &f.cert, &f.key),
                &truncated_cert,
                "no end line \"-----END CERTIFICATE-----\"",
            ),
            (
                "truncated client certificate",
                client_config(&f.ca, &truncated_cert, &f.key),
                &truncated_cert,
                "no end line \"-----END CERTIFICATE-----\"",
            ),
            (
                "truncated key",
                client_config(&f.ca, &f.cert, &truncated_key),
                &truncated_key,
                "no end line \"-----END PRIVATE KEY-----\"",
            ),
            (
                "bad base64",
                client_config(&bad_base64, &f.cert, &f.key),
                &bad_base64,
                "not base64",
            ),
        ];
        for (name, result, path, reason) in cases {
            let err = result.expect_err(name);
            assert!(matches!(err, TlsError::Pem { .. }), "{name}: {err:?}");
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("{} is not valid PEM: ", path.display())),
                "{name}: {msg}"
            );
            assert!(msg.contains(reason), "{name}: {msg}");
        }
    }

    #[test]
    fn sec1_keys_are_accepted() {
        // rcgen writes PKCS#8; re-wrap the same P-256 key as SEC1 ("EC PRIVATE KEY").
        let (f, _, issued) = files();
        let pkcs8 = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        let sec1 = pkcs8_p256_to_sec1(pkcs8.secret_der());
        let pem = format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
            base64_lines(&sec1)
        );
        fs::write(&f.key, pem).unwrap();
        assert!(matches!(
            PrivateKeyDer::from_pem_slice(&fs::read(&f.key).unwrap()),
            Ok(PrivateKeyDer::Sec1(_))
        ));
        client_config(&f.ca, &f.cert, &f.key).unwrap();
    }

    /// Extracts the SEC1 `ECPrivateKey` that a PKCS#8 key embeds as the OCTET STRING
    /// after the version and algorithm identifier.
    fn pkcs8_p256_to_sec1(der: &[u8]) -> Vec<u8> {
        /// Returns (header length, content length) of the DER element at `at`.
        fn tlv(der: &[u8], at: usize) -> (usize, usize) {
            match der[at + 1] {
                n if n < 0x80 => (2, n as usize),
                0x81 => (3, der[at + 2] as usize),
                other => panic!("unexpected DER length byte {other:#x}"),
            }
        }
        let (outer_header, _) = tlv(der, 0);
        let mut at = outer_header;
        for _ in 0..2 {
            let (h, l) = tlv(der, at); // version, then algorithm identifier
            at += h + l;
        }
        assert_eq!(der[at], 0x04, "expected the OCTET STRING with the SEC1 key");
        let (h, l) = tlv(der, at);
        der[at + h..at + h + l].to_vec()
    }

    fn base64_lines(der: &[u8]) -> String {
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        text.as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn tls_io(err: rustls::Error) -> ConnectionError {
        ConnectionError::Tls(rumqttc::TlsError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            err,
        )))
    }

    #[test]
    fn classify_walks_the_error_chain() {
        let deser_io = |err: rustls::Error| {
            ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                rumqttc::mqttbytes::Error::Io(io::Error::new(io::ErrorKind::InvalidData, err)),
            ))
        };
        let cases: Vec<(ConnectionError, ConnectFailure)> = vec![
            (
                tls_io(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                )),
                ConnectFailure::UntrustedServer,
            ),
            (
                tls_io(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName,
                )),
                ConnectFailure::ServerNameMismatch,
            ),
            (
                tls_io(rustls::Error::InvalidCertificate(CertificateError::Expired)),
                ConnectFailure::ServerCertExpired,
            ),
            (
                tls_io(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidYet,
                )),
                ConnectFailure::ServerCertNotYetValid,
            ),
            (
                tls_io(rustls::Error::InvalidCertificate(CertificateError::Revoked)),
                ConnectFailure::ServerCertInvalid,
            ),
            (
                tls_io(rustls::Error::AlertReceived(
                    AlertDescription::BadCertificate,
                )),
                ConnectFailure::ClientCertRejected,
            ),
            (
                deser_io(rustls::Error::AlertReceived(
                    AlertDescription::CertificateExpired,
                )),
                ConnectFailure::ClientCertRejected,
            ),
            (
                tls_io(rustls::Error::AlertReceived(
                    AlertDescription::ProtocolVersion,
                )),
                ConnectFailure::TlsFailed,
            ),
            (
                ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionRefused)),
                ConnectFailure::Refused,
            ),
            (
                ConnectionError::Io(io::Error::other(
                    "failed to lookup address information: Name or service not known",
                )),
                ConnectFailure::Dns,
            ),
            (ConnectionError::NetworkTimeout, ConnectFailure::Timeout),
            (
                ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted),
                ConnectFailure::Closed,
            ),
            (
                ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
                ConnectFailure::MqttRefused,
            ),
            (
                ConnectionError::MqttState(rumqttc::StateError::InvalidState),
                ConnectFailure::Other,
            ),
        ];
        for (err, expected) in cases {
            assert_eq!(classify(&err), expected, "{err}");
            let line = explain(&err);
            assert!(!line.contains('\n'), "{line}");
            assert!(line.contains(&err.to_string()), "{line}");
        }
    }

    #[test]
    fn explain_names_the_alert() {
        let err = tls_io(rustls::Error::AlertReceived(
            AlertDescription::CertificateExpired,
        ));
        let line = explain(&err);
        assert!(line.contains("client certificate"), "{line}");
        assert!(line.contains("certificate_expired"), "{line}");
    }
}
