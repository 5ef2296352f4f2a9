//! facegate: consent-gated face-capture uplink for on-site terminals.
//!
//! Module map (ARCHITECTURE.md has the flow and the invariants):
//!
//! The daemon
//! - [`daemon`]: `run(config, shutdown)`: opens everything, runs tasks, stops them.
//! - [`shutdown`]: the typed shutdown signal passed in from the edge.
//! - [`agent`]: applies grant / revoke / purge / status for any caller.
//! - [`control`]: the local Unix control socket behind `facegate ctl`, and its dispatch to the agent.
//! - [`cmd`]: the fleet commands, one file each, and their way from MQTT payload to reply.
//! - [`intake`]: spool → sanitize → gate → outbox, one transaction per batch.
//! - [`uplink`]: MQTT over mutual TLS: uploads, commands, replies, status.
//! - [`reload`]: SIGHUP: which parts of a new config apply live.
//! - [`notify`]: systemd readiness, watchdog and stopping notifications.
//! - [`space`]: disk space: the intake rule against the space reserve, disk-full flags.
//! - [`shelf`]: whole captures encoded ahead of the upload window, wiped by revocations and purges.
//! - [`heap`]: the allocator policy that gives the memory of a burst of large captures back.
//!
//! Pure decisions (functions of their inputs and `now`)
//! - [`gate`]: the consent rule: may this subject's capture be kept or uploaded now?
//! - [`consent`]: consent token verification.
//! - [`consent_log`]: the site consent log: head verification and whether the
//!   device is in sync with it (pure).
//! - [`command`]: what every fleet command shares: verification and signing.
//! - [`protocol`]: the wire formats as typed serde structs: topics, envelope, status, replies.
//! - [`jws`]: EdDSA JWS compact verification and signing.
//! - [`audit`]: the keyed hash chain of audit entries.
//!
//! Inputs and storage
//! - [`config`]: two-phase configuration (raw TOML/env, then validated objects).
//! - [`spool`]: the intake directory protocol (pairs, sidecars, orphans).
//! - [`sanitize`]: image validation and lossless metadata removal.
//! - [`db`]: the single owner of the store connection.
//! - [`store`]: SQLite, the only module that speaks SQL.
//! - [`crypto`]: storage key (a file or a systemd credential), per-subject data keys, AES-256-GCM, pseudonyms.
//! - [`credential`]: the storage key sealed as a systemd credential (`provision --seal`, doctor).
//!
//! Tools and helpers
//! - [`provision`]: first-time device setup (state dir, storage key, TLS key, CSR).
//! - [`doctor`]: site-admin health checks (files, certificates, clock, disk, broker).
//! - [`fleet`]: `facegate fleet send`: sign, publish and collect replies; `fleet acl`: the broker ACL.
//! - [`keys`]: Ed25519 key files for the fleet tool.
//! - [`logging`]: the `tracing` subscriber (text or JSON on stderr).
//! - [`clock`]: unix seconds inside, RFC 3339 at the edges.
//! - [`ids`]: `SubjectId`, `CaptureId`, `Jti`, `Seq` newtypes.

pub mod agent;
pub mod audit;
pub mod clock;
pub mod cmd;
pub mod command;
pub mod config;
pub mod consent;
pub mod consent_log;
pub mod control;
pub mod credential;
pub mod crypto;
pub mod daemon;
pub mod db;
pub mod doctor;
#[cfg(feature = "fleet")]
pub mod fleet;
pub mod gate;
pub mod heap;
pub mod ids;
pub mod intake;
pub mod jws;
pub mod keyref;
pub mod keys;
pub mod logging;
pub mod notify;
pub mod pkcs11;
pub mod protocol;
pub mod provision;
pub mod reload;
pub mod sanitize;
pub mod shelf;
pub mod shutdown;
pub mod space;
pub mod spool;
pub mod store;
pub mod tally;
pub mod timekeeper;
pub mod uplink;
