//! facegate: consent-gated face-capture uplink for on-site terminals.
//!
//! Module map (see ARCHITECTURE.md for the flow and invariants):
//! - [`config`]: two-phase configuration (raw TOML/env, then validated objects).
//! - [`clock`]: unix seconds inside, RFC 3339 at the edges.
//! - [`consent`]: consent tokens: the verified form and its checks.
//! - [`jws`]: EdDSA JWS compact verification and signing, shared claim readers.
//! - [`keys`]: Ed25519 key files for the fleet tool (generate, PEM, permissions).
//! - [`gate`]: the consent gate: may this subject's capture be kept/uploaded now?
//! - [`command`]: signed fleet commands: verification, signing, replies.
//! - [`pki`]: throwaway X.509 CA, broker and device certificates (tooling, demo, tests).
//! - [`uplink`]: the MQTT uplink; [`uplink::tls`] builds its mutual-TLS configuration.
//! - [`logging`]: the `tracing` subscriber (text or JSON on stderr).
//! - [`notify`]: systemd readiness, watchdog and stopping notifications.
//! - [`provision`]: first-time device setup (state dir, storage key, TLS key, CSR).
//! - [`doctor`]: site-admin health checks (files, certificates, clock, disk, broker).

pub mod clock;
pub mod command;
pub mod config;
pub mod consent;
pub mod doctor;
pub mod gate;
pub mod jws;
pub mod keys;
pub mod logging;
pub mod notify;
pub mod pki;
pub mod provision;
pub mod uplink;
