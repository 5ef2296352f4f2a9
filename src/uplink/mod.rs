//! The MQTT uplink to the fleet broker: mutual TLS, persistent session, topics
//! under `{prefix}/{site}/{device}/…` (`crate::protocol::Topics`).
//!
//! Pure cores, tested on their own (no runtime, no store, no network):
//! - [`state`]: the FIFO of handed publishes and the pkid → capture map;
//! - [`handover`]: which queued captures go to MQTT now and which subjects
//!   are purged instead, from the consent rule's verdicts and the window;
//! - [`suspect`]: after a dropped connection, which capture (if any) a
//!   refusal is counted against, probe mode (a window of one) until an
//!   acknowledgement, and when a capture is quarantined;
//! - [`backoff`]: the reconnect delays;
//! - [`deletes`]: a failed delete after PUBACK: retry with backoff, hand-over paused;
//! - [`ingress`]: which inbound messages are ignored (retained, QoS 0) and
//!   how many refusals get a log line and an audit row each.
//!
//! The I/O around them:
//! - [`eventloop`]: the network and logic tasks ([`run`]);
//! - [`link`]: what the two tasks share (the state and the live connection);
//! - [`upload`]: the outbox side (hand-over under the store lock, deletes on
//!   PUBACK, the envelope bytes);
//! - [`commands`]: inbound commands, acknowledged after their effect commits;
//! - [`consent_head`]: the site consent-log head and the status republished
//!   when the sync changes;
//! - [`status`]: the retained status and the offline message;
//! - [`options`]: the connection settings and one client per connection;
//! - [`mqtt`]: MQTT 3.1.1 or 5 behind one client and event type, and what
//!   MQTT 5 reason codes mean (a PUBACK's verdict, a DISCONNECT's reason);
//! - [`tls`]: the TLS client configuration and explanations of failed
//!   connections.

pub mod backoff;
pub mod commands;
pub mod consent_head;
pub mod deletes;
pub mod eventloop;
pub mod handover;
pub mod ingress;
pub mod link;
pub mod mqtt;
pub mod options;
pub mod progress;
pub mod state;
pub mod status;
pub mod suspect;
pub mod tls;
pub mod upload;

pub use eventloop::run;
