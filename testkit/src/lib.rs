//! facegate-testkit: facegate's test and development tooling, kept out of the
//! product. It is a dev-dependency of `facegate` only, so the daemon binary
//! contains none of it. Integration tests, benchmarks and the demo share it.
//!
//! Module map:
//!
//! Parts of a throwaway world
//! - [`pki`]: throwaway X.509 CA, broker and device certificates.
//! - [`broker`]: the dev broker, a throwaway local Mosquitto with mutual TLS.
//! - [`relay`]: a TCP relay in front of it that holds back replies or cuts connections.
//! - [`synth`]: synthetic face-like captures, with or without planted metadata.
//! - [`signer`]: signing keys for consent tokens and fleet commands.
//! - [`hsm`]: SoftHSM2 tokens (PKCS#11) in a private token directory.
//!
//! Driving the product
//! - [`config`]: the typed builder that renders facegate's TOML config.
//! - [`daemon`]: the real `facegate` binary on a throwaway terminal.
//! - [`spool`]: capture pairs written into a spool as camera software must.
//! - [`mqtt`]: MQTT clients with their event loop in a task (fleet, devices, baselines).
//!
//! Helpers
//! - [`bench`]: what only the benchmarks need (tmpfs spool, outbox fill, percentiles, RSS).
//! - [`smallfs`]: a real small file system (tmpfs of a given size) for disk-full tests.
//! - [`util`]: free ports, polling, byte search.
//!
//! The torture suite (`scripts/torture`, RELIABILITY.md) is this crate's
//! binary `torture` (`src/bin/torture/`), built on the modules above.
//!
//! Failures panic with what is needed to understand them (a daemon's or
//! broker's log), as test tooling should; [`broker::Broker::try_start`] and the
//! [`spool`] writers return errors for callers that report them themselves.
//!
//! `facegate`'s own unit tests link another build of the `facegate` crate than
//! this one does: they may use only what involves no facegate type ([`pki`],
//! [`synth`]).

pub mod bench;
pub mod broker;
pub mod config;
pub mod daemon;
pub mod faketime;
pub mod hsm;
pub mod mqtt;
pub mod pki;
pub mod relay;
pub mod signer;
pub mod smallfs;
pub mod spool;
pub mod synth;
pub mod util;

/// Site of every harness terminal.
pub const SITE: &str = "lobby";
/// Device id of every harness terminal.
pub const DEVICE: &str = "term-01";
