//! The image sanitizer (`sanitize::sanitize`): format sniffing, JPEG/PNG
//! parsing, metadata removal and a full decode under the configured limits
//! (the product's defaults). No panic, overflow or allocation beyond the
//! limits (libFuzzer's `-rss_limit_mb` catches the latter). An accepted
//! image stays within the limits, its digest is that of its bytes, and it
//! is a fixed point: sanitizing the output again gives the same bytes. A
//! panic inside the decoders is refused as the daemon refuses it
//! (`daemon_panic_policy`, ARCHITECTURE I16); any other panic is a finding.
#![no_main]

use facegate::sanitize::{sanitize, ContentType};
use facegate_fuzz::{capture, daemon_panic_policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    daemon_panic_policy();
    let limits = capture();
    let Ok(clean) = sanitize(data, &limits) else {
        return;
    };
    assert!(clean.width >= 1 && clean.width <= limits.max_width);
    assert!(clean.height >= 1 && clean.height <= limits.max_height);
    assert_eq!(ContentType::sniff(&clean.bytes), Some(clean.content_type));
    let digest = ring::digest::digest(&ring::digest::SHA256, &clean.bytes);
    assert_eq!(digest.as_ref(), &clean.sha256[..]);
    let again = match sanitize(&clean.bytes, &limits) {
        Ok(again) => again,
        Err(e) => panic!("a sanitized image is refused when sanitized again: {e}"),
    };
    assert!(
        again.bytes[..] == clean.bytes[..],
        "sanitizing a sanitized image changed it"
    );
    assert_eq!((again.width, again.height), (clean.width, clean.height));
});
