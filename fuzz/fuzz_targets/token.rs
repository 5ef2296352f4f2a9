//! JWS tokens from outside: a fleet command as an MQTT payload
//! (`command::verify_command`, then for `consent.grant` the consent token
//! inside as the agent verifies it), a consent token as `ctl consent add`
//! hands it to the agent (`consent::verify_consent`), and a site consent-log
//! head (`consent_log::verify_head`). No panic, overflow or unbounded
//! allocation, whatever the bytes.
//!
//! Input: one flags byte, then the payload.
//! - `flags & 3`: 0 or 3 command, 1 consent token, 2 consent-log head;
//! - `0x04`: the payload is not a token but claims bytes, signed here with
//!   the fleet key (or with `0x08` the consent key), so that the claim checks
//!   after the signature are reached;
//! - `0x10` (with `0x04`): the payload is `header 0xFF claims` (else the
//!   header is `{"alg":"EdDSA","kid":…}` of the signing key);
//! - `0x20`: the first 8 payload bytes are `now` (little-endian i64).
#![no_main]

use facegate::cmd::Command;
use facegate::command::verify_command;
use facegate::consent::verify_consent;
use facegate::consent_log::{replaces, verify_head};
use facegate_fuzz::{
    commands, header, identity, token, token_limits, trust, CONSENT_KID, CONSENT_SEED, FLEET_KID,
    FLEET_SEED, NOW,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut now = NOW;
    if flags & 0x20 != 0 {
        let Some((at, tail)) = rest.split_first_chunk::<8>() else {
            return;
        };
        now = i64::from_le_bytes(*at);
        rest = tail;
    }
    let signed;
    let payload: &[u8] = if flags & 0x04 != 0 {
        let (seed, kid) = if flags & 0x08 != 0 {
            (&CONSENT_SEED, CONSENT_KID)
        } else {
            (&FLEET_SEED, FLEET_KID)
        };
        signed = match rest.iter().position(|&b| b == 0xFF) {
            Some(at) if flags & 0x10 != 0 => token(&rest[..at], &rest[at + 1..], seed),
            _ => token(&header(kid), rest, seed),
        };
        signed.as_bytes()
    } else {
        rest
    };
    let (trust, me) = (trust(), identity());
    match flags & 0x03 {
        1 => {
            // `ctl consent add`: the token arrives as a JSON string, the agent trims it.
            let text = String::from_utf8_lossy(payload);
            let _ = verify_consent(text.trim(), &trust, &me, now, token_limits());
        }
        2 => {
            if let Ok(head) = verify_head(payload, &trust, &me, 60, now) {
                assert!(replaces(None, &head));
                assert!(replaces(Some(&head), &head));
            }
        }
        _ => {
            let seen = |jti: &facegate::ids::Jti| jti.as_str() == "seen";
            match verify_command::<Command>(payload, &trust, &me, &commands(), now, &seen) {
                Err(rejected) => {
                    // The refusal is answered on the reply topic.
                    let _ = rejected.reply().to_bytes();
                }
                Ok(verified) => {
                    let _ = verified.command.subject();
                    if let Command::ConsentGrant(grant) = &verified.command {
                        let _ =
                            verify_consent(grant.token.trim(), &trust, &me, now, token_limits());
                    }
                }
            }
        }
    }
});
