//! The retained status message (SPEC "Status") and the last will.

use serde::{Deserialize, Serialize};

use super::fields;

/// `online` while the device holds its broker connection; `offline` is the
/// last will the broker publishes for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Connected (or answering locally).
    Online,
    /// The last will: the connection was lost or closed.
    Offline,
}

impl State {
    /// The state on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Online => "online",
            State::Offline => "offline",
        }
    }
}

/// The status object. The device always fills every section; the last will
/// carries only `v` and `state`, so the sections are optional for readers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Always [`super::WIRE_VERSION`].
    pub v: u8,
    /// Online, or the offline last will.
    pub state: State,
    /// facegate version of the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When the status was taken (unix seconds; RFC 3339 on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_rfc3339")]
    pub ts: Option<i64>,
    /// The encrypted outbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxStatus>,
    /// The consent ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<ConsentStatus>,
    /// Persistent counters since the database was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
    /// The broker connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkStatus>,
    /// Disk space of the state directory (beyond SPEC; absent from older
    /// devices and the last will).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageStatus>,
    /// The site consent log (SPEC "Site consent log").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_log: Option<ConsentLogStatus>,
    /// The wall clock as the device trusts it (beyond SPEC; absent from
    /// older devices and the last will).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockStatus>,
}

/// Whether the wall clock is trusted for irreversible time-based actions
/// (ARCHITECTURE I15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockState {
    /// Trusted.
    #[default]
    Ok,
    /// Trusted, but the kernel says NTP has not synchronised it (nothing
    /// held: no jump was seen).
    Unsynced,
    /// A jump larger than `[clock] jump_threshold` that is not confirmed:
    /// the actions in `held` wait.
    Jumped,
}

/// `{"state":"ok"|"unsynced"|"jumped","jump_s":N,"since":"RFC 3339","held":[…]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClockStatus {
    /// Trusted or not.
    pub state: ClockState,
    /// Wall time minus the time the device expects, in seconds (negative:
    /// the clock went back); 0 unless `jumped`.
    pub jump_s: i64,
    /// When the jump was seen (by the jumped clock).
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_rfc3339")]
    pub since: Option<i64>,
    /// The irreversible actions held: `consent_sweep`, `outbox_retention`,
    /// `replay_forget`, `audit_retention`, `spool_orphans`.
    pub held: Vec<String>,
}

/// Where the device stands in its site's consent log (SPEC "Site consent
/// log"): `{"in_sync":bool,"applied":K,"head":N,"missing":[[a,b],…],"head_age_s":S}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConsentLogStatus {
    /// A valid head arrived on the current connection, it is not older than
    /// `[consent] head_max_age`, and every entry from its `base` to its
    /// `seq` is applied.
    pub in_sync: bool,
    /// The highest seq with every entry from `base` up to it applied.
    pub applied: u64,
    /// The head's `seq` (0 before any head).
    pub head: u64,
    /// Ranges `[a, b]` (inclusive) of seqs from `base` to `head` not yet
    /// applied, at most 32, lowest first.
    pub missing: Vec<[u64; 2]>,
    /// Seconds since the head's `iat` (0 before any head).
    pub head_age_s: u64,
}

/// Outbox depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutboxStatus {
    /// Captures queued.
    pub captures: u64,
    /// Encrypted bytes queued.
    pub bytes: u64,
    /// Age in seconds of the oldest queued capture (0 when empty).
    pub oldest_age_s: u64,
    /// Of `captures`, those quarantined (SPEC "Broker limits and large
    /// captures"): refused by the broker `mqtt.max_attempts` times and not
    /// retried on their own. 0 when read from a device that does not send it.
    #[serde(default)]
    pub quarantined: u64,
}

/// The consent ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConsentStatus {
    /// Stored consents not yet expired.
    pub active: u64,
}

/// Persistent counters. Readers default a missing counter to 0, so devices
/// of different versions can be read alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Captures accepted into the outbox.
    pub accepted: u64,
    /// Captures dropped because the subject had no valid consent.
    pub dropped_no_consent: u64,
    /// Spool pairs rejected as bad input.
    pub rejected_bad_input: u64,
    /// Captures acknowledged by the broker.
    pub uploaded: u64,
    /// Captures purged (revocation, expiry, command, retention, quota).
    pub purged: u64,
    /// Consented captures refused because the outbox was full.
    pub rejected_quota: u64,
    /// Uploads cut off by a lost connection and sent again.
    pub upload_retries: u64,
    /// Fleet commands refused by verification (bad signature, expired, ...).
    pub commands_refused: u64,
    /// Messages on the command topics ignored (delivered retained, or QoS 0).
    pub commands_ignored: u64,
}

/// The broker connection as the device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UplinkStatus {
    /// Whether a broker connection is up.
    pub connected: bool,
    /// Uploads (whole captures or parts, one PUBLISH each) handed to MQTT
    /// and awaiting their PUBACK: at most `mqtt.inflight`. An acknowledged
    /// upload whose delete is not recorded yet does not count.
    pub in_flight: u64,
    /// Reconnects on which the broker kept no session for the device
    /// (`session_present = false`): commands queued for it while it was
    /// offline may have been dropped. Persistent; 0 when read from a device
    /// that does not send it.
    #[serde(default)]
    pub session_lost: u64,
}

/// Whether intake takes captures from the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntakeState {
    /// Taking captures.
    #[default]
    Running,
    /// Holding them in the spool: the disk has no room outside the space
    /// reserve (`[storage] reserve_bytes`).
    PausedDiskFull,
}

/// Disk space of the state directory's file system, and what a full disk
/// holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageStatus {
    /// Bytes available on the file system (the reserve file not included).
    pub free_bytes: u64,
    /// The space reserve as configured (`[storage] reserve_bytes`).
    pub reserve_bytes: u64,
    /// Of it, what the reserve file holds now (less after a revocation,
    /// purge or delete used it on a full disk, until space comes back).
    pub reserve_held: u64,
    /// The outbox quota in effect: `[outbox] quota_bytes`, capped by what
    /// is queued plus the free space outside the reserve.
    pub quota_bytes: u64,
    /// Whether intake takes captures, or holds them in the spool and why.
    pub intake: IntakeState,
    /// Deleting acknowledged uploads fails (disk full): uploads pause until
    /// it succeeds, nothing is sent twice.
    pub deletes_failing: bool,
}

impl Status {
    /// The last will: `{"v":1,"state":"offline"}`.
    pub fn offline() -> Status {
        Status {
            v: super::WIRE_VERSION,
            state: State::Offline,
            version: None,
            ts: None,
            outbox: None,
            consent: None,
            counters: None,
            uplink: None,
            consent_log: None,
            storage: None,
            clock: None,
        }
    }

    /// The JSON bytes published on the status topic.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a status message (online or the last will).
    pub fn from_bytes(payload: &[u8]) -> Result<Status, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

/// `Option<i64>` unix seconds as an optional RFC 3339 string.
mod opt_rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ts {
            Some(ts) => super::fields::rfc3339::serialize(ts, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => crate::clock::parse_rfc3339(&text).map(Some).ok_or_else(|| {
                serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn states_are_named_as_on_the_wire() {
        for state in [State::Online, State::Offline] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
    }

    #[test]
    fn the_last_will_is_exactly_the_spec_bytes() {
        assert_eq!(
            Status::offline().to_bytes(),
            br#"{"v":1,"state":"offline"}"#
        );
        let back = Status::from_bytes(br#"{"v":1,"state":"offline"}"#).unwrap();
        assert_eq!(back, Status::offline());
    }

    #[test]
    fn online_status_has_the_spec_shape() {
        let s = Status {
            v: 1,
            state: State::Online,
            version: Some("0.1.0".into()),
            ts: Some(1_795_858_382),
            outbox: Some(OutboxStatus {
                captures: 2,
                bytes: 300,
                oldest_age_s: 7,
                quarantined: 1,
            }),
            consent: Some(ConsentStatus { active: 1 }),
            counters: Some(Counters {
                accepted: 3,
                uploaded: 1,
                ..Counters::default()
            }),
            uplink: Some(UplinkStatus {
                connected: true,
                in_flight: 0,
                session_lost: 2,
            }),
            consent_log: Some(ConsentLogStatus {
                in_sync: false,
                applied: 3,
                head: 7,
                missing: vec![[4, 5], [7, 7]],
                head_age_s: 300,
            }),
            storage: None,
            clock: Some(ClockStatus {
                state: ClockState::Jumped,
                jump_s: 2_678_400,
                since: Some(1_795_858_382),
                held: vec!["consent_sweep".into()],
            }),
        };
        let v: Value = serde_json::from_slice(&s.to_bytes()).unwrap();
        assert_eq!(v["state"], "online");
        assert_eq!(
            v["clock"],
            json!({"state":"jumped","jump_s":2_678_400,"since":"2026-11-28T09:33:02Z","held":["consent_sweep"]})
        );
        assert_eq!(Status::from_bytes(&s.to_bytes()).unwrap(), s);
        assert_eq!(
            serde_json::to_value(ClockStatus::default()).unwrap(),
            json!({"state":"ok","jump_s":0,"held":[]})
        );
        assert_eq!(v["ts"], "2026-11-28T09:33:02Z");
        assert_eq!(
            v["outbox"],
            json!({"captures":2,"bytes":300,"oldest_age_s":7,"quarantined":1})
        );
        assert_eq!(v["consent"], json!({"active":1}));
        assert_eq!(
            v["uplink"],
            json!({"connected":true,"in_flight":0,"session_lost":2})
        );
        for k in [
            "accepted",
            "dropped_no_consent",
            "rejected_bad_input",
            "uploaded",
            "purged",
        ] {
            assert!(v["counters"][k].is_u64(), "counter {k}");
        }
        assert_eq!(
            v["consent_log"],
            json!({"in_sync":false,"applied":3,"head":7,"missing":[[4,5],[7,7]],"head_age_s":300})
        );
        assert_eq!(Status::from_bytes(&s.to_bytes()).unwrap(), s);
    }

    #[test]
    fn readers_accept_a_status_with_fewer_counters() {
        let s = Status::from_bytes(
            br#"{"v":1,"state":"online","version":"0.0.9","ts":"2026-01-01T00:00:00Z",
                "outbox":{"captures":0,"bytes":0,"oldest_age_s":0},"consent":{"active":0},
                "counters":{"accepted":1},"uplink":{"connected":true,"in_flight":0},
                "extra":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(s.counters.unwrap().accepted, 1);
        assert_eq!(s.counters.unwrap().uploaded, 0);
        assert_eq!(s.uplink.unwrap().session_lost, 0);
        assert_eq!(s.outbox.unwrap().quarantined, 0);
    }
}
