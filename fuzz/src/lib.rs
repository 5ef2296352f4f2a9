//! What the fuzz targets share: fixed Ed25519 keys and the device's trust
//! list, identity and limits, and building compact JWS tokens from fuzzed
//! header and claims bytes signed with those keys, so that a target reaches
//! the checks that come after the signature.
//!
//! The keys are derived from fixed seeds; `scripts/fuzz-seeds` (Python,
//! `cryptography`) derives the same keys to write the seed corpus.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use facegate::config::{CaptureConfig, CommandConfig, Identity, Role, TrustedKey};
use facegate::consent::TokenLimits;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use std::time::Duration;

/// `kid` of the fleet key.
pub const FLEET_KID: &str = "fleet-1";
/// `kid` of the consent key.
pub const CONSENT_KID: &str = "consent-1";
/// Seed of the fleet key (32 bytes of 0x01).
pub const FLEET_SEED: [u8; 32] = [1; 32];
/// Seed of the consent key (32 bytes of 0x02).
pub const CONSENT_SEED: [u8; 32] = [2; 32];
/// The device's clock unless an input brings its own `now`.
pub const NOW: i64 = 1_800_000_000;

/// The key pair of a seed.
pub fn key(seed: &[u8; 32]) -> Ed25519KeyPair {
    match Ed25519KeyPair::from_seed_unchecked(seed) {
        Ok(k) => k,
        Err(_) => unreachable!("any 32-byte seed is an Ed25519 key"),
    }
}

fn public(seed: &[u8; 32]) -> [u8; 32] {
    let mut pk = [0u8; 32];
    pk.copy_from_slice(key(seed).public_key().as_ref());
    pk
}

/// The device's `[[trust]]` list: one fleet and one consent key.
pub fn trust() -> Vec<TrustedKey> {
    vec![
        TrustedKey {
            kid: FLEET_KID.into(),
            role: Role::Fleet,
            public_key: public(&FLEET_SEED),
        },
        TrustedKey {
            kid: CONSENT_KID.into(),
            role: Role::Consent,
            public_key: public(&CONSENT_SEED),
        },
    ]
}

/// Site `lobby`, device `term-01`.
pub fn identity() -> Identity {
    Identity {
        site_id: "lobby".into(),
        device_id: "term-01".into(),
    }
}

/// `[commands]` at its defaults (24 h lifetime, 60 s skew, 64 KiB).
pub fn commands() -> CommandConfig {
    CommandConfig {
        max_lifetime: Duration::from_secs(86_400),
        clock_skew: Duration::from_secs(60),
        max_bytes: 65_536,
    }
}

/// Consent token limits at their defaults (60 s skew, 365 days).
pub fn token_limits() -> TokenLimits {
    TokenLimits {
        clock_skew: 60,
        max_lifetime: 365 * 86_400,
    }
}

/// `[capture]` with the product's default limits (8 MiB, 4096 x 4096,
/// 64 MiB of decoder allocations).
pub fn capture() -> CaptureConfig {
    CaptureConfig {
        max_file_bytes: 8 * 1024 * 1024,
        max_width: 4096,
        max_height: 4096,
        max_alloc_bytes: 64 * 1024 * 1024,
        decode_memory_bytes: 64 * 1024 * 1024,
        spool_grace: Duration::from_secs(60),
        poll_interval: Duration::from_millis(100),
        max_batch_bytes: 16 << 20,
    }
}

/// A compact JWS over the raw `header` and `claims` bytes, signed with the
/// key of `seed`: valid base64url segments and a valid signature whatever
/// the bytes are, so the verifier goes on to parse them.
pub fn token(header: &[u8], claims: &[u8], seed: &[u8; 32]) -> String {
    let mut token = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = key(seed).sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
    token
}

/// The header of a token signed by `kid`.
pub fn header(kid: &str) -> Vec<u8> {
    format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#).into_bytes()
}

/// Makes the process's panic policy that of the daemon (ARCHITECTURE I16): a
/// panic inside the image decoder boundary (`sanitize::decoding`) is caught
/// there and refuses the file, so it is no finding; any other panic still
/// goes to libFuzzer's hook, which aborts and reports it. Call at the start
/// of each input (only the first call installs the hook).
pub fn daemon_panic_policy() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let libfuzzer = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !facegate::sanitize::decoding() {
                libfuzzer(info);
            }
        }));
    });
}
