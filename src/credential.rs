//! The storage key as a sealed systemd credential (`storage.key_source =
//! "credential"`): sealing a fresh key with `systemd-creds encrypt` for
//! `facegate provision --seal`, and telling what a sealed file is bound to
//! (host key, TPM2, both) for `facegate doctor`.
//!
//! `systemd-creds` is the supported interface to systemd's credential
//! encryption, so it runs as a subprocess: the key goes to it on stdin and
//! the sealed credential comes back on stdout, so the plaintext key is never
//! written to a file. The daemon never seals or unseals anything: systemd
//! decrypts the credential into the service's private `$CREDENTIALS_DIRECTORY`
//! (`LoadCredentialEncrypted=`) and [`crate::crypto::load_storage_key`] reads
//! it there.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::crypto::{CREDENTIAL_NAME, KEY_LEN};

/// Where `provision --seal` puts the sealed storage key by default: systemd's
/// credential store, which `LoadCredentialEncrypted=` reads.
pub const DEFAULT_SEALED_PATH: &str = "/etc/credstore.encrypted/facegate-storage-key";
/// The tool that seals credentials.
pub const SYSTEMD_CREDS: &str = "systemd-creds";

/// What the credential is sealed with (`systemd-creds encrypt --with-key=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealWith {
    /// The TPM2 (and the host key) where there is a TPM2, else the host key.
    Auto,
    /// The host key `/var/lib/systemd/credential.secret` only.
    Host,
    /// The TPM2 only.
    Tpm2,
    /// Both: the host key and the TPM2.
    HostTpm2,
}

impl SealWith {
    /// Every value, as `--with-key` takes it.
    pub const ALL: [SealWith; 4] = [
        SealWith::Auto,
        SealWith::Host,
        SealWith::Tpm2,
        SealWith::HostTpm2,
    ];

    /// The `--with-key=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SealWith::Auto => "auto",
            SealWith::Host => "host",
            SealWith::Tpm2 => "tpm2",
            SealWith::HostTpm2 => "host+tpm2",
        }
    }

    /// The value named `name`, if any.
    pub fn parse(name: &str) -> Option<SealWith> {
        SealWith::ALL.into_iter().find(|w| w.as_str() == name)
    }
}

/// Why sealing failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// `systemd-creds` could not be run.
    #[error("cannot run `{command}`: {source} (systemd-creds comes with systemd 250 or later)")]
    Spawn {
        /// The command line (no key in it).
        command: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `systemd-creds` ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line (no key in it).
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The system random generator failed.
    #[error("cannot generate the storage key: system randomness unavailable")]
    Random,
}

/// The `systemd-creds` command line that seals the storage key, as shown in errors.
fn encrypt_args(with: SealWith) -> Vec<String> {
    vec![
        "encrypt".into(),
        format!("--name={CREDENTIAL_NAME}"),
        format!("--with-key={}", with.as_str()),
        "-".into(),
        "-".into(),
    ]
}

/// A fresh random storage key sealed with `systemd-creds encrypt` (the key
/// goes in on stdin, the sealed credential comes out on stdout: no file
/// ever holds the plaintext). Returns the sealed credential (text).
pub fn seal_new_key(with: SealWith) -> Result<Vec<u8>, CredentialError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new()
        .fill(key.as_mut())
        .map_err(|_| CredentialError::Random)?;
    seal(key.as_ref(), with)
}

/// Seals `key` with `systemd-creds encrypt --name=facegate-storage-key`.
fn seal(key: &[u8], with: SealWith) -> Result<Vec<u8>, CredentialError> {
    let args = encrypt_args(with);
    let command = format!("{SYSTEMD_CREDS} {}", args.join(" "));
    let mut child = Command::new(SYSTEMD_CREDS)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CredentialError::Spawn {
            command: command.clone(),
            source,
        })?;
    // 32 bytes fit in the pipe: writing cannot block on the unread stdout.
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(key),
        None => Err(std::io::Error::other("no stdin")),
    };
    let output = child
        .wait_with_output()
        .map_err(|source| CredentialError::Spawn {
            command: command.clone(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if !output.status.success() || output.stdout.is_empty() {
        return Err(CredentialError::Failed {
            command,
            status: output.status.to_string(),
            stderr: if stderr.is_empty() {
                "no output".into()
            } else {
                stderr
            },
        });
    }
    if let Err(source) = written {
        return Err(CredentialError::Spawn { command, source });
    }
    Ok(output.stdout)
}

/// What a sealed credential is bound to, read from its header (the first 16
/// bytes name systemd's sealing mode), e.g. `"host"`, `"tpm2"`,
/// `"host+tpm2"`; `None` if the text is not a sealed credential systemd
/// makes. Pure: the header is public.
pub fn sealed_with(sealed: &[u8]) -> Option<&'static str> {
    // systemd's mode ids (src/shared/creds-util.h).
    const MODES: [([u8; 16], &str); 7] = [
        (hex16("5a1c6a86df9d4096b1d5a65e0862f19a"), "host"),
        (hex16("55b9ed1d38594d43a8319d2ebb332ac6"), "host (scoped)"),
        (hex16("0c7cc07b117645919c4b0bea08bc20fe"), "tpm2"),
        (
            hex16("faf7eb9341e3412ca1a436f95a29362f"),
            "tpm2 (signed PCR policy)",
        ),
        (hex16("93a894094874449090caf2fc93cab553"), "host+tpm2"),
        (
            hex16("ef4ac13679a9480ea7db68897f9f165d"),
            "host+tpm2 (scoped)",
        ),
        (
            hex16("af4950a849134eb1a73846304ff30c05"),
            "host+tpm2 (signed PCR policy)",
        ),
    ];
    let text: Vec<u8> = sealed
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .take(24)
        .collect();
    // 24 base64 digits: 18 bytes, the 16 of the id first.
    let head = base64::engine::general_purpose::STANDARD
        .decode(text.get(..24)?)
        .ok()?;
    let id: [u8; 16] = head.get(..16)?.try_into().ok()?;
    MODES.iter().find(|(m, _)| *m == id).map(|(_, name)| *name)
}

/// 16 bytes from 32 hex digits (compile time).
const fn hex16(text: &str) -> [u8; 16] {
    const fn digit(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a hex digit"),
        }
    }
    let t = text.as_bytes();
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = digit(t[2 * i]) << 4 | digit(t[2 * i + 1]);
        i += 1;
    }
    out
}

/// The sealed file's path and what it is sealed with, in words, for reports:
/// `systemd credential facegate-storage-key (sealed: host, /etc/credstore.encrypted/…)`.
pub fn describe(path: &std::path::Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => match sealed_with(&bytes) {
            Some(with) => format!(
                "systemd credential {CREDENTIAL_NAME} (sealed: {with}, {})",
                path.display()
            ),
            None => format!(
                "systemd credential {CREDENTIAL_NAME} ({} is not a sealed credential)",
                path.display()
            ),
        },
        Err(e) => format!(
            "systemd credential {CREDENTIAL_NAME} (sealed file {}: {})",
            path.display(),
            e.kind()
        ),
    }
}

/// The sealed file's default place as a path.
pub fn default_sealed_path() -> PathBuf {
    PathBuf::from(DEFAULT_SEALED_PATH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sealing_mode_is_read_from_the_header() {
        // A credential sealed here with --with-key=host (systemd 252).
        let host =
            b"Whxqht+dQJax1aZeCGLxmiAAAAABAAAADAAAABAAAAAtlFqOsKACalfSe5QAAAAAY3uvrLDX87m5eiS\n";
        assert_eq!(sealed_with(host), Some("host"));
        let b64 = |id: &str| {
            let mut bytes = hex::decode(id).unwrap();
            bytes.extend_from_slice(&[0u8; 16]);
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        assert_eq!(
            sealed_with(b64("0c7cc07b117645919c4b0bea08bc20fe").as_bytes()),
            Some("tpm2")
        );
        assert_eq!(
            sealed_with(b64("93a894094874449090caf2fc93cab553").as_bytes()),
            Some("host+tpm2")
        );
        // Line breaks as `--pretty` or an editor may add them do not matter.
        let broken = b"Whxqht+dQJ\nax1aZeCGLxmiAAAAAB";
        assert_eq!(sealed_with(broken), Some("host"));
        for not in [
            &b""[..],
            b"short",
            b"\x00\x01 plain key bytes 0123456789012345",
        ] {
            assert_eq!(sealed_with(not), None);
        }
        assert_eq!(
            sealed_with(b64("a219cb0785b24c04b16d18cab9d2ee01").as_bytes()),
            None,
            "unknown mode"
        );
    }

    #[test]
    fn with_key_values_round_trip() {
        for w in SealWith::ALL {
            assert_eq!(SealWith::parse(w.as_str()), Some(w));
        }
        assert_eq!(SealWith::parse("none"), None);
        assert_eq!(
            encrypt_args(SealWith::Host).join(" "),
            "encrypt --name=facegate-storage-key --with-key=host - -"
        );
    }
}
