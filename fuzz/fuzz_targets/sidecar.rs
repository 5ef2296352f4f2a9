//! The spool sidecar (`NAME.json`, written by the camera software):
//! `spool::parse_sidecar`, the pure part of `spool::read_sidecar`. No panic,
//! whatever the bytes; what it accepts keeps the documented limits.
#![no_main]

use facegate::spool::{parse_sidecar, SIDECAR_MAX_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sidecar) = parse_sidecar(data) {
        assert!(data.len() as u64 <= SIDECAR_MAX_BYTES);
        let camera = &sidecar.camera;
        assert!(!camera.is_empty() && camera.len() <= 64);
        assert!(camera
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)));
        if let Some(subject) = &sidecar.subject {
            assert!(!subject.as_str().is_empty() && subject.as_str().len() <= 128);
        }
    }
});
