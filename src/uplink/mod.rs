//! The MQTT uplink to the fleet broker: mutual TLS, persistent session, topics
//! under `{prefix}/{site}/{device}/…` (`crate::protocol::Topics`). [`tls`] owns the TLS client configuration,
//! the MQTT connection options and the explanations of failed connections.

pub mod backoff;
pub mod eventloop;
pub mod handover;
pub mod state;
pub mod tls;

pub use eventloop::run;
