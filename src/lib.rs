//! facegate: consent-gated face-capture uplink for on-site terminals.
//!
//! Module map (see ARCHITECTURE.md for the flow and invariants):
//! - [`config`]: two-phase configuration (raw TOML/env, then validated objects).
//! - [`clock`]: unix seconds inside, RFC 3339 at the edges.
//! - [`consent`]: consent tokens: the verified form and its checks.
//! - [`logging`]: the `tracing` subscriber (text or JSON on stderr).

pub mod clock;
pub mod config;
pub mod consent;
pub mod logging;
