//! facegate: consent-gated face-capture uplink for on-site terminals.
//!
//! Module map (see ARCHITECTURE.md for the flow and invariants):
//! - [`config`]: two-phase configuration (raw TOML/env, then validated objects).
//! - [`clock`]: unix seconds inside, RFC 3339 at the edges.
//! - [`consent`]: consent tokens: the verified form and its checks.
//! - [`sanitize`]: image validation and lossless metadata removal (bytes in, bytes out).
//! - [`spool`]: the intake directory protocol (pairs, sidecars, orphans, bounded reads).
//! - [`synth`]: synthetic face-like captures with planted metadata, for tests and demos.

pub mod clock;
pub mod config;
pub mod consent;
pub mod sanitize;
pub mod spool;
pub mod synth;
