//! Wire messages that arrive from MQTT at the fleet and back-end side: the
//! upload envelope (parsed and joined by `protocol::parts::Reassembler`, as
//! a back-end does), command replies and device status messages. No panic;
//! what parses serializes to bytes that parse to the same message.
//!
//! Input: one selector byte, then messages separated by 0xFF (a byte that
//! valid JSON text never holds).
#![no_main]

use facegate::protocol::parts::Reassembler;
use facegate::protocol::{Envelope, Reply, Status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let mut joiner = Reassembler::new();
    for message in rest.split(|&b| b == 0xFF) {
        match which % 3 {
            0 => {
                let Ok(env) = Envelope::from_bytes(message) else {
                    continue;
                };
                let again = Envelope::from_bytes(&env.to_bytes());
                assert!(
                    again.as_ref().ok() == Some(&env),
                    "envelope does not round-trip"
                );
                if let Ok(Some(whole)) = joiner.add(env) {
                    let digest = ring::digest::digest(&ring::digest::SHA256, &whole.image);
                    assert_eq!(digest.as_ref(), &whole.sha256[..]);
                    assert!(!whole.is_part());
                }
            }
            1 => {
                let Ok(reply) = Reply::from_bytes(message) else {
                    continue;
                };
                // A result with duplicate member names is read as an unknown
                // result (`Other`, last member wins), which serializes
                // without them and then reads as the known result: stable
                // from the second round on (tests/fixtures/fuzz/wire).
                let once = Reply::from_bytes(&reply.to_bytes());
                let Ok(once) = once else {
                    panic!("a serialized reply does not parse");
                };
                let twice = Reply::from_bytes(&once.to_bytes());
                assert!(
                    twice.as_ref().ok() == Some(&once),
                    "reply does not round-trip"
                );
            }
            _ => {
                let Ok(status) = Status::from_bytes(message) else {
                    continue;
                };
                let again = Status::from_bytes(&status.to_bytes());
                assert!(
                    again.as_ref().ok() == Some(&status),
                    "status does not round-trip"
                );
            }
        }
    }
});
