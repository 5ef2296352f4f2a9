//! Decoding of Ed25519 public keys given in `[[trust]]`: base64url text
//! (RFC 8037 `x` form, padding tolerated) or a PEM `PUBLIC KEY` (SPKI).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

/// DER of an Ed25519 SubjectPublicKeyInfo up to the key bytes
/// (RFC 8410: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (33 bytes) }).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Decodes a base64url Ed25519 public key; trailing `=` padding is accepted.
pub(crate) fn from_base64url(text: &str) -> Option<[u8; 32]> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .ok()?;
    bytes.try_into().ok()
}

/// Decodes the contents of a `public_key_file`: PEM SPKI if it looks like
/// PEM, otherwise base64url text.
pub(crate) fn from_file_text(text: &str) -> Option<[u8; 32]> {
    if text.trim_start().starts_with("-----BEGIN") {
        from_pem(text)
    } else {
        from_base64url(text)
    }
}

/// Decodes a PEM `PUBLIC KEY` block holding an Ed25519 SPKI.
fn from_pem(text: &str) -> Option<[u8; 32]> {
    let mut lines = text.lines().map(str::trim);
    lines.find(|l| *l == "-----BEGIN PUBLIC KEY-----")?;
    let mut body = String::new();
    for line in lines.by_ref() {
        if line == "-----END PUBLIC KEY-----" {
            let der = STANDARD.decode(body.as_bytes()).ok()?;
            let key = der.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
            return key.try_into().ok();
        }
        body.push_str(line);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn pem_of(key: &[u8; 32]) -> String {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(key);
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(der)
        )
    }

    #[test]
    fn base64url_with_and_without_padding() {
        let plain = URL_SAFE_NO_PAD.encode(KEY);
        assert_eq!(from_base64url(&plain), Some(KEY));
        assert_eq!(from_base64url(&format!("{plain}=")), Some(KEY));
        assert_eq!(from_base64url(&format!(" {plain}\n")), Some(KEY));
    }

    #[test]
    fn base64url_rejects_wrong_length_and_alphabet() {
        assert_eq!(from_base64url(&URL_SAFE_NO_PAD.encode([1u8; 31])), None);
        assert_eq!(from_base64url(&URL_SAFE_NO_PAD.encode([1u8; 33])), None);
        assert_eq!(from_base64url("not base64 at all!"), None);
        assert_eq!(from_base64url(""), None);
    }

    #[test]
    fn file_text_accepts_pem_and_base64url() {
        assert_eq!(from_file_text(&pem_of(&KEY)), Some(KEY));
        assert_eq!(
            from_file_text(&format!("{}\n", URL_SAFE_NO_PAD.encode(KEY))),
            Some(KEY)
        );
    }

    #[test]
    fn pem_of_other_algorithms_is_refused() {
        // Same length, X25519 OID (1.3.101.110) instead of Ed25519.
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der[8] = 0x6e;
        der.extend_from_slice(&KEY);
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(der)
        );
        assert_eq!(from_file_text(&pem), None);
        let truncated = pem_of(&KEY).replace("-----END PUBLIC KEY-----\n", "");
        assert_eq!(from_file_text(&truncated), None);
    }
}
