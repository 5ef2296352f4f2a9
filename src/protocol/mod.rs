//! The wire protocol (SPEC "Identity and topics", "Upload envelope", "Status",
//! commands and replies) as typed serde structs. Everything the device, the
//! fleet tool, `doctor` and the tests put on or read from MQTT goes through
//! these types; nothing builds wire JSON by hand.
//!
//! - [`topics`]: every topic name, for a device and for a whole site.
//! - [`envelope`]: the upload envelope, whole or one part of a large capture.
//! - [`parts`]: packet sizes, how a large capture is split, and how a
//!   back-end joins the parts again.
//! - [`status`]: the retained status and the last will.
//! - [`reply`]: command names, error codes, replies and their results
//!   (purge receipt, granted consent).
//!
//! Pure: no I/O, no MQTT client, no store.

pub mod envelope;
pub mod parts;
pub mod reply;
pub mod status;
pub mod topics;

pub use envelope::Envelope;
pub use parts::{PartNo, Piece, Reassembler, Split};
pub use reply::{
    AlreadyApplied, CommandName, ErrorBody, ErrorCode, Granted, Receipt, Reply, ReplyResult,
};
pub use status::{
    ClockState, ClockStatus, ConsentLogStatus, ConsentStatus, Counters, IntakeState, OutboxStatus,
    State, Status, StorageStatus, UplinkStatus,
};
pub use topics::{SiteTopics, Topics};

/// The `v` field of every message facegate sends.
pub const WIRE_VERSION: u8 = 1;

/// Serde helpers for the field shapes the SPEC fixes.
pub(crate) mod fields {
    use base64::Engine;
    use serde::{de, Deserialize, Deserializer, Serializer};

    /// Unix seconds inside, RFC 3339 on the wire.
    pub mod rfc3339 {
        use super::*;

        pub fn serialize<S: Serializer>(ts: &i64, s: S) -> Result<S::Ok, S::Error> {
            let text = crate::clock::try_rfc3339(*ts).ok_or_else(|| {
                serde::ser::Error::custom(format!("{ts} is beyond what RFC 3339 can write"))
            })?;
            s.serialize_str(&text)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
            let text = String::deserialize(d)?;
            crate::clock::parse_rfc3339(&text)
                .ok_or_else(|| de::Error::custom(format!("{text:?} is not an RFC 3339 time")))
        }
    }

    /// A SHA-256 digest as 64 lowercase hex digits.
    pub mod sha256_hex {
        use super::*;

        pub fn serialize<S: Serializer>(digest: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&hex::encode(digest))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
            let text = String::deserialize(d)?;
            hex::decode(&text)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| de::Error::custom("sha256 must be 64 hex digits"))
        }
    }

    /// Bytes as standard base64 (with padding). The encoded text is an
    /// image: wiped once written out.
    pub mod base64_std {
        use super::*;

        pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
            let text =
                zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes));
            s.serialize_str(&text)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            let text = String::deserialize(d)?;
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| de::Error::custom(format!("image is not base64: {e}")))
        }
    }
}
