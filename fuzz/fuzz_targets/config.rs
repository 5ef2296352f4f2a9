//! The config loader (`config::from_text`, what `config::load` runs once it
//! has read the file): TOML syntax, `FACEGATE_*` environment overrides,
//! shape (serde) and validation. No panic or overflow, whatever the text;
//! every error renders.
//!
//! Input: the TOML text, optionally followed by a NUL byte and environment
//! lines `NAME=VALUE` (each NAME gets the `FACEGATE_` prefix). Relative
//! paths resolve against a directory that does not exist, so the only files
//! the loader may read are absolute `public_key_file` paths.
#![no_main]

use std::path::Path;

use facegate::config::{from_text, ENV_PREFIX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (text, env) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (format!("{ENV_PREFIX}{name}"), value.to_string()))
        .collect();
    let origin = Path::new("/nonexistent/facegate-fuzz/facegate.toml");
    let base = Path::new("/nonexistent/facegate-fuzz");
    if let Err(e) = from_text(text, origin, base, &env) {
        let _ = e.to_string();
        let _ = e.key();
    }
});
