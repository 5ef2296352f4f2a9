//! facegate: consent-gated face-capture uplink for on-site terminals.
//!
//! Module map (see ARCHITECTURE.md for the flow and invariants):
//! - [`config`]: two-phase configuration (raw TOML/env, then validated objects).
//! - [`clock`]: unix seconds inside, RFC 3339 at the edges.
//! - [`consent`]: consent tokens: the verified form and its checks.
//! - [`crypto`]: storage key file, derived keys, per-subject data keys, AES-GCM envelopes.
//! - [`audit`]: the audit log's MAC hash chain (pure) and its verification.
//! - [`store`]: SQLite state (consents, encrypted outbox, counters, audit, replay); the only SQL.

pub mod audit;
pub mod clock;
pub mod config;
pub mod consent;
pub mod crypto;
pub mod store;
