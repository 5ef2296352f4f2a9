//! Broker profiles (`[mqtt] profile`): the documented limits of the brokers
//! fleets run behind, and the rule that compares a configuration with them.
//!
//! [`limits`] is the one table (each figure with the page it comes from);
//! [`check`] is a pure function of the profile, the configuration and the
//! device's inbound packet limit (computed by the uplink, passed in so this
//! file names no I/O module). Each mismatch is a [`Finding`] naming what, the
//! configured value, the broker's limit and the fix; `doctor` turns them into
//! one check line per [`Rule`].
//!
//! A figure is a broker's *default* where the broker lets its operator change
//! it (EMQX, HiveMQ, Mosquitto): doctor cannot read the broker's settings, so a
//! finding for those brokers says "by default".

use std::fmt;
use std::time::Duration;

use super::{names, Check};
use crate::config::{BrokerProfile, Config};
use crate::protocol::Topics;

/// The documented limits of one broker product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The product, as people call it (`AWS IoT Core`).
    pub broker: &'static str,
    /// Largest message the broker takes from a client (and so passes on), in
    /// bytes; `None`: nothing below MQTT's own limit. Compared with the whole
    /// packet the device sends, which is larger than its payload: conservative
    /// where the broker counts the payload only (AWS, Azure).
    pub max_message: Option<usize>,
    /// Whether the figures are defaults the broker's operator can change
    /// (EMQX, HiveMQ, Mosquitto), or fixed (cloud services).
    pub configurable: bool,
    /// Most topic levels (`a/b/c` has 3), if limited.
    pub max_topic_levels: Option<usize>,
    /// Longest topic name in bytes, if limited below MQTT's 65,535.
    pub max_topic_bytes: Option<usize>,
    /// Longest client id in bytes, if limited below MQTT's 65,535.
    pub max_client_id: Option<usize>,
    /// Whether the broker refuses client ids starting with `$`.
    pub no_dollar_client_id: bool,
    /// Keep-alive values the broker honours as asked, in seconds (inclusive);
    /// `None`: any value MQTT allows.
    pub keep_alive: Option<(u64, u64)>,
    /// Unacknowledged QoS 1 messages the broker takes from one client at a
    /// time (AWS's quota, HiveMQ's receive maximum), if limited.
    pub max_inflight: Option<u16>,
    /// Whether the broker speaks MQTT 5 (generally available, not a preview).
    pub mqtt5: bool,
    /// The only topics the broker accepts device messages on, when it fixes
    /// them (Azure IoT Hub); facegate's topics are fixed by its protocol.
    pub fixed_topics: Option<&'static str>,
    /// How long a persistent session outlives its connection by default, when
    /// the broker (not the client) sets it.
    pub session_expiry: Option<Duration>,
}

/// The documented limits of `profile`, each figure with its source.
pub fn limits(profile: BrokerProfile) -> Limits {
    match profile {
        BrokerProfile::AwsIot => Limits {
            broker: "AWS IoT Core",
            // "Message size: the payload for every publish request can be no
            // larger than 128 KB", read as 128 × 1024 bytes (facegate's default).
            // https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits
            max_message: Some(128 * 1024),
            configurable: false,
            // At most 7 forward slashes (8 levels) in a topic, topics at most
            // 256 bytes, client ids at most 128 bytes:
            // https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits
            // (also enforced by the AWS device SDK's AwsIotCoreDefaults:
            // https://aws.github.io/aws-iot-device-sdk-js-v2/node/enums/mqtt5.ClientExtendedValidationAndFlowControl.html)
            max_topic_levels: Some(8),
            max_topic_bytes: Some(256),
            max_client_id: Some(128),
            // Client ids "can't start with a dollar sign ($)":
            // https://docs.aws.amazon.com/sdk-for-kotlin/api/latest/iotdataplane/aws.sdk.kotlin.services.iotdataplane.model/-send-direct-message-request/-builder/client-id.html
            no_dollar_client_id: true,
            // Values below 30 s are treated as 30 s; 1200 s is the maximum
            // (and the default):
            // https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits
            // https://github.com/awslabs/aws-c-mqtt/releases/tag/v0.4.27
            keep_alive: Some((30, 1200)),
            // "Maximum inbound unacknowledged messages": 100 per client:
            // https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits
            // (confirmed only in an older copy of that page; see OPERATIONS.md).
            max_inflight: Some(100),
            // MQTT 5 is generally available on AWS IoT Core:
            // https://docs.aws.amazon.com/iot/latest/developerguide/mqtt.html
            mqtt5: true,
            fixed_topics: None,
            // "Persistent sessions have a default expiry period of 1 hour",
            // adjustable through a quota increase:
            // https://docs.aws.amazon.com/iot/latest/developerguide/mqtt-persistent-sessions.html
            session_expiry: Some(Duration::from_secs(3600)),
        },
        BrokerProfile::AzureIotHub => Limits {
            broker: "Azure IoT Hub",
            // "Maximum size of device-to-cloud message: 256 KB"; device ids
            // at most 128 characters:
            // https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-quotas-throttling
            max_message: Some(256 * 1024),
            configurable: false,
            max_topic_levels: None,
            max_topic_bytes: None,
            max_client_id: Some(128),
            no_dollar_client_id: false,
            // The hub's idle timeout is 1.5 × keep-alive, capped at 1767 s
            // (the Azure load balancer's TCP idle timeout):
            // https://learn.microsoft.com/azure/iot/iot-mqtt-connect-to-iot-hub ("default keep-alive timeout")
            keep_alive: Some((1, 1767)),
            max_inflight: None,
            // MQTT v3.1.1 only (MQTT 5 is a preview on new hubs); telemetry
            // only on devices/{device_id}/messages/events/, client id = the
            // device id:
            // https://learn.microsoft.com/azure/iot/iot-mqtt-connect-to-iot-hub
            mqtt5: false,
            fixed_topics: Some("devices/{device_id}/messages/events/"),
            session_expiry: None,
        },
        BrokerProfile::Emqx => Limits {
            broker: "EMQX",
            // mqtt.max_packet_size 1MB, max_clientid_len 65535,
            // max_topic_levels 128 by default:
            // https://docs.emqx.com/en/emqx/latest/configuration/mqtt.html
            max_message: Some(1024 * 1024),
            configurable: true,
            max_topic_levels: Some(128),
            max_topic_bytes: None,
            max_client_id: None,
            no_dollar_client_id: false,
            keep_alive: None,
            max_inflight: None,
            // https://docs.emqx.com/en/emqx/latest/configuration/mqtt.html
            mqtt5: true,
            fixed_topics: None,
            session_expiry: None,
        },
        BrokerProfile::Hivemq => Limits {
            broker: "HiveMQ",
            // Max packet size 268435460, server receive maximum 10, max
            // keep-alive 65535, 1000 queued messages per client by default:
            // https://docs.hivemq.com/hivemq-edge/mqtt-specific-configuration.html
            // https://github.com/hivemq/hivemq-community-edition/wiki/MQTT-Specific-Configuration
            max_message: None,
            configurable: true,
            max_topic_levels: None,
            max_topic_bytes: None,
            max_client_id: None,
            no_dollar_client_id: false,
            keep_alive: None,
            max_inflight: Some(10),
            mqtt5: true,
            fixed_topics: None,
            session_expiry: None,
        },
        BrokerProfile::Mosquitto => Limits {
            broker: "Mosquitto",
            // max_packet_size: no limit by default; max_inflight_messages 20
            // and max_queued_messages 1000 apply to messages the broker
            // sends, not to what a client publishes; max_keepalive 65535:
            // https://mosquitto.org/man/mosquitto-conf-5.html
            max_message: None,
            configurable: true,
            max_topic_levels: None,
            max_topic_bytes: None,
            max_client_id: None,
            no_dollar_client_id: false,
            keep_alive: None,
            max_inflight: None,
            mqtt5: true,
            fixed_topics: None,
            session_expiry: None,
        },
    }
}

/// The MQTT version the uplink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (SPEC's default).
    V311,
    /// MQTT 5.
    V5,
}

/// The MQTT version `cfg` makes the uplink speak (`[mqtt] protocol`): the
/// one place the profile rules read it.
pub fn mqtt_version(cfg: &Config) -> MqttVersion {
    match cfg.mqtt.protocol {
        crate::config::MqttProtocol::V311 => MqttVersion::V311,
        crate::config::MqttProtocol::V5 => MqttVersion::V5,
    }
}

/// One rule of the profile check; doctor prints one line per rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `mqtt.max_packet_size` against the broker's message limit.
    PacketSize,
    /// What the broker may deliver against the device's inbound limit.
    InboundSize,
    /// `mqtt.inflight` against the broker's in-flight limit.
    Inflight,
    /// `mqtt.keep_alive` against the range the broker honours.
    KeepAlive,
    /// The client id (`device_id`) against the broker's rules.
    ClientId,
    /// Every topic the device uses: layout, depth, length.
    Topics,
    /// The MQTT version against what the broker speaks.
    Protocol,
    /// How long the broker keeps the device's session.
    Session,
}

impl Rule {
    /// Every rule, in the order doctor prints them.
    pub const ALL: [Rule; 8] = [
        Rule::PacketSize,
        Rule::InboundSize,
        Rule::Inflight,
        Rule::KeepAlive,
        Rule::ClientId,
        Rule::Topics,
        Rule::Protocol,
        Rule::Session,
    ];
}

/// How bad a mismatch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// A risk or a degradation: delivery works, something needs attention.
    Warn,
    /// Delivery breaks (the broker refuses the packet, topic or connection).
    Fail,
}

/// One mismatch between the configuration and the broker's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which rule found it.
    pub rule: Rule,
    /// How bad it is.
    pub severity: Severity,
    /// What was compared (a config key, a topic).
    pub what: String,
    /// Its value here.
    pub configured: String,
    /// The broker's limit, naming the broker.
    pub limit: String,
    /// What to do.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {}, {}; fix: {}",
            self.what, self.configured, self.limit, self.fix
        )
    }
}

/// Compares `cfg` with the documented limits of `profile`. `inbound_limit`
/// is the largest packet the device accepts (the uplink's
/// `max(1 MiB, 4 × commands.max_bytes)`). Empty when nothing mismatches.
pub fn check(profile: BrokerProfile, cfg: &Config, inbound_limit: usize) -> Vec<Finding> {
    let l = limits(profile);
    let mut found = Vec::new();
    packet_size(&l, cfg, &mut found);
    inbound_size(&l, inbound_limit, &mut found);
    inflight(&l, cfg, &mut found);
    keep_alive(&l, cfg, &mut found);
    client_id(&l, cfg, &mut found);
    topics(&l, cfg, &mut found);
    protocol(&l, mqtt_version(cfg), &mut found);
    session(&l, &mut found);
    found
}

/// The findings as doctor check lines: one per [`Rule`], named by
/// [`check_name`], failing on any [`Severity::Fail`] finding of that rule,
/// warning on a warning, each message naming the broker's profile and every
/// finding of the rule.
pub fn to_checks(profile: BrokerProfile, found: &[Finding]) -> Vec<Check> {
    Rule::ALL
        .iter()
        .map(|&rule| {
            let name = check_name(rule);
            let mine: Vec<&Finding> = found.iter().filter(|f| f.rule == rule).collect();
            let worst = mine.iter().map(|f| f.severity).max();
            let text = || {
                let all: Vec<String> = mine.iter().map(|f| f.to_string()).collect();
                format!("profile {}: {}", profile.name(), all.join("; "))
            };
            match worst {
                None => Check::pass(name),
                Some(Severity::Warn) => Check::warn(name, text()),
                Some(Severity::Fail) => Check::fail(name, text()),
            }
        })
        .collect()
}

/// The doctor check name of `rule` (one of [`names`]).
pub fn check_name(rule: Rule) -> &'static str {
    match rule {
        Rule::PacketSize => names::PROFILE_PACKET_SIZE,
        Rule::InboundSize => names::PROFILE_INBOUND_SIZE,
        Rule::Inflight => names::PROFILE_INFLIGHT,
        Rule::KeepAlive => names::PROFILE_KEEP_ALIVE,
        Rule::ClientId => names::PROFILE_CLIENT_ID,
        Rule::Topics => names::PROFILE_TOPICS,
        Rule::Protocol => names::PROFILE_PROTOCOL,
        Rule::Session => names::PROFILE_SESSION,
    }
}

fn by_default(l: &Limits) -> &'static str {
    if l.configurable {
        " by default"
    } else {
        ""
    }
}

fn packet_size(l: &Limits, cfg: &Config, found: &mut Vec<Finding>) {
    let Some(max) = l.max_message else { return };
    let ours = cfg.mqtt.max_packet_size;
    if ours > max {
        found.push(Finding {
            rule: Rule::PacketSize,
            severity: Severity::Fail,
            what: "mqtt.max_packet_size".into(),
            configured: format!("{ours} bytes"),
            limit: format!(
                "{} takes messages up to {max} bytes{}: a larger one is refused and the capture is quarantined after mqtt.max_attempts",
                l.broker,
                by_default(l)
            ),
            fix: format!(
                "set mqtt.max_packet_size to {max} or less ({}){}",
                size_text(max),
                if l.configurable {
                    ", or raise the broker's limit"
                } else {
                    ""
                }
            ),
        });
    }
}

/// `max` as config text: `"1MiB"`, `"128KiB"` or plain bytes.
fn size_text(max: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    if max.is_multiple_of(MIB) {
        format!("\"{}MiB\"", max / MIB)
    } else if max.is_multiple_of(KIB) {
        format!("\"{}KiB\"", max / KIB)
    } else {
        max.to_string()
    }
}

fn inbound_size(l: &Limits, inbound_limit: usize, found: &mut Vec<Finding>) {
    let (delivers, fix) = match l.max_message {
        Some(max) if max <= inbound_limit => return,
        Some(max) => (
            format!("{max} bytes{}", by_default(l)),
            format!(
                "lower the broker's limit to {inbound_limit} bytes or less, or raise commands.max_bytes to {} or more",
                max.div_ceil(4)
            ),
        ),
        None => (
            "any size MQTT allows (no limit by default)".to_string(),
            format!(
                "limit the broker's packet size to {inbound_limit} bytes or less (Mosquitto max_packet_size, HiveMQ max-packet-size), or raise commands.max_bytes"
            ),
        ),
    };
    found.push(Finding {
        rule: Rule::InboundSize,
        severity: Severity::Warn,
        what: "the inbound packet limit max(1 MiB, 4 × commands.max_bytes)".into(),
        configured: format!("{inbound_limit} bytes"),
        limit: format!(
            "{} may deliver messages of {delivers}: under MQTT 3.1.1 a larger one on a command topic closes the device's connection, again at every redelivery",
            l.broker
        ),
        fix,
    });
}

/// Slots of the broker's in-flight window left for a command reply and a
/// status message next to a full upload window.
pub const REPLY_STATUS_ROOM: u16 = 2;

fn inflight(l: &Limits, cfg: &Config, found: &mut Vec<Finding>) {
    let Some(max) = l.max_inflight else { return };
    let ours = cfg.mqtt.inflight;
    let fits = max.saturating_sub(REPLY_STATUS_ROOM).max(1);
    if ours > fits {
        found.push(Finding {
            rule: Rule::Inflight,
            severity: Severity::Warn,
            what: "mqtt.inflight".into(),
            configured: ours.to_string(),
            limit: format!(
                "{} takes at most {max} unacknowledged QoS 1 messages from a client{}, replies and status included: the rest wait or are refused",
                l.broker,
                by_default(l)
            ),
            fix: format!("set mqtt.inflight to {fits} or less (room for a reply and a status)"),
        });
    }
}

fn keep_alive(l: &Limits, cfg: &Config, found: &mut Vec<Finding>) {
    let Some((min, max)) = l.keep_alive else {
        return;
    };
    let ours = cfg.mqtt.keep_alive.as_secs();
    let consequence = if ours < min {
        format!(
            "{} treats a keep-alive below {min} s as {min} s: a dead connection (and the offline last will) is noticed later than configured",
            l.broker
        )
    } else if ours > max {
        format!(
            "{} keeps an idle connection at most {max} s: a longer keep-alive lets it close the connection between pings",
            l.broker
        )
    } else {
        return;
    };
    found.push(Finding {
        rule: Rule::KeepAlive,
        severity: Severity::Warn,
        what: "mqtt.keep_alive".into(),
        configured: format!("{ours}s"),
        limit: consequence,
        fix: format!("set mqtt.keep_alive between \"{min}s\" and \"{max}s\""),
    });
}

fn client_id(l: &Limits, cfg: &Config, found: &mut Vec<Finding>) {
    let id = &cfg.identity.device_id;
    if let Some(max) = l.max_client_id {
        if id.len() > max {
            found.push(Finding {
                rule: Rule::ClientId,
                severity: Severity::Fail,
                what: "device_id (the MQTT client id)".into(),
                configured: format!("{} bytes long", id.len()),
                limit: format!("{} refuses client ids over {max} bytes", l.broker),
                fix: format!("choose a device_id of at most {max} bytes"),
            });
        }
    }
    // Config never allows '$' in a device_id; the rule keeps doctor honest
    // for hand-built configs.
    if l.no_dollar_client_id && id.starts_with('$') {
        found.push(Finding {
            rule: Rule::ClientId,
            severity: Severity::Fail,
            what: "device_id (the MQTT client id)".into(),
            configured: format!("{id:?}"),
            limit: format!("{} refuses client ids starting with '$'", l.broker),
            fix: "choose a device_id that does not start with '$'".into(),
        });
    }
    if l.fixed_topics.is_some() {
        // Azure IoT Hub: the client id must be the hub's device id; facegate
        // always connects with client id = device_id.
        found.push(Finding {
            rule: Rule::ClientId,
            severity: Severity::Warn,
            what: "device_id (the MQTT client id)".into(),
            configured: format!("{id:?}"),
            limit: format!(
                "{} requires the client id to be the device id registered in the hub (case-sensitive)",
                l.broker
            ),
            fix: format!("register the device in the hub as {id:?}"),
        });
    }
}

/// Every topic the device publishes or subscribes to, with what it is for.
fn device_topics(cfg: &Config) -> [(&'static str, String); 6] {
    let t = Topics::new(
        &cfg.mqtt.prefix,
        &cfg.identity.site_id,
        &cfg.identity.device_id,
    );
    [
        ("captures", t.captures),
        ("reply", t.reply),
        ("status", t.status),
        ("commands", t.device_cmd),
        ("site commands", t.site_cmd),
        ("consent head", t.consent_head),
    ]
}

fn topics(l: &Limits, cfg: &Config, found: &mut Vec<Finding>) {
    let all = device_topics(cfg);
    if let Some(layout) = l.fixed_topics {
        found.push(Finding {
            rule: Rule::Topics,
            severity: Severity::Fail,
            what: "the topic layout".into(),
            configured: format!("{}/… (fixed by the facegate protocol)", all[0].1),
            limit: format!(
                "{} takes device messages only on {layout} and has no retained messages or device-to-device topics",
                l.broker
            ),
            fix: "connect the terminals to a full MQTT broker (Azure Event Grid's MQTT broker, EMQX, HiveMQ, Mosquitto) and bridge to IoT Hub from the back-end if needed".into(),
        });
    }
    for (role, topic) in &all {
        let levels = topic.split('/').count();
        if let Some(max) = l.max_topic_levels {
            if levels > max {
                found.push(Finding {
                    rule: Rule::Topics,
                    severity: Severity::Fail,
                    what: format!("the {role} topic {topic:?}"),
                    configured: format!("{levels} levels"),
                    limit: format!("{} allows at most {max} levels{}", l.broker, by_default(l)),
                    fix: "shorten mqtt.prefix (it adds levels to every topic)".into(),
                });
            }
        }
        if let Some(max) = l.max_topic_bytes {
            if topic.len() > max {
                found.push(Finding {
                    rule: Rule::Topics,
                    severity: Severity::Fail,
                    what: format!("the {role} topic {topic:?}"),
                    configured: format!("{} bytes", topic.len()),
                    limit: format!("{} allows topics of at most {max} bytes", l.broker),
                    fix: "shorten mqtt.prefix, site_id or device_id".into(),
                });
            }
        }
    }
}

fn protocol(l: &Limits, version: MqttVersion, found: &mut Vec<Finding>) {
    if version == MqttVersion::V5 && !l.mqtt5 {
        found.push(Finding {
            rule: Rule::Protocol,
            severity: Severity::Fail,
            what: "mqtt.protocol".into(),
            configured: "\"5\"".into(),
            limit: format!("{} speaks MQTT 3.1.1 only", l.broker),
            fix: "set mqtt.protocol = \"3.1.1\"".into(),
        });
    }
}

fn session(l: &Limits, found: &mut Vec<Finding>) {
    let Some(expiry) = l.session_expiry else {
        return;
    };
    found.push(Finding {
        rule: Rule::Session,
        severity: Severity::Warn,
        what: "the persistent session".into(),
        configured: "kept by the broker".into(),
        limit: format!(
            "{} ends it {} after the device disconnects unless that quota was raised: commands queued for a terminal offline longer are dropped",
            l.broker,
            humantime::format_duration(expiry)
        ),
        fix: format!(
            "raise the {} quota \"Persistent session expiry period\" above the longest outage a terminal may have",
            l.broker
        ),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing;

    const MIB: usize = 1024 * 1024;

    fn cfg(extra: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let c = testing::config(dir.path(), extra);
        (dir, c)
    }

    fn rules(found: &[Finding]) -> Vec<(Rule, Severity)> {
        found.iter().map(|f| (f.rule, f.severity)).collect()
    }

    fn only(found: &[Finding], rule: Rule) -> Vec<&Finding> {
        found.iter().filter(|f| f.rule == rule).collect()
    }

    #[test]
    fn every_profile_has_limits_naming_the_broker() {
        for (name, p) in BrokerProfile::ALL {
            let l = limits(p);
            assert!(!l.broker.is_empty(), "{name}");
            if let Some((min, max)) = l.keep_alive {
                assert!(min >= 1 && min <= max, "{name}");
            }
        }
        assert_eq!(limits(BrokerProfile::AwsIot).max_message, Some(131_072));
        assert_eq!(
            limits(BrokerProfile::AzureIotHub).max_message,
            Some(262_144)
        );
        assert_eq!(limits(BrokerProfile::Emqx).max_message, Some(MIB));
        assert_eq!(limits(BrokerProfile::Hivemq).max_message, None);
        assert_eq!(limits(BrokerProfile::Mosquitto).max_message, None);
        assert!(!limits(BrokerProfile::AzureIotHub).mqtt5);
    }

    #[test]
    fn defaults_against_each_profile() {
        let (_d, c) = cfg("");
        let inbound = MIB;
        // AWS: defaults fit; only the 1 h session expiry is worth a warning.
        let aws = check(BrokerProfile::AwsIot, &c, inbound);
        assert_eq!(rules(&aws), vec![(Rule::Session, Severity::Warn)]);
        // Azure: the topic layout cannot work; the client id must be registered.
        let azure = check(BrokerProfile::AzureIotHub, &c, inbound);
        assert_eq!(
            rules(&azure),
            vec![
                (Rule::ClientId, Severity::Warn),
                (Rule::Topics, Severity::Fail)
            ]
        );
        // EMQX: 1 MB default, same as the smallest inbound limit: nothing.
        assert!(check(BrokerProfile::Emqx, &c, inbound).is_empty());
        // HiveMQ: delivers anything, and takes 10 in flight, not 16.
        let hive = check(BrokerProfile::Hivemq, &c, inbound);
        assert_eq!(
            rules(&hive),
            vec![
                (Rule::InboundSize, Severity::Warn),
                (Rule::Inflight, Severity::Warn)
            ]
        );
        // Mosquitto: delivers anything by default.
        let mosq = check(BrokerProfile::Mosquitto, &c, inbound);
        assert_eq!(rules(&mosq), vec![(Rule::InboundSize, Severity::Warn)]);
    }

    #[test]
    fn packet_size_above_the_broker_limit_fails() {
        // (profile, largest passing max_packet_size)
        let cases = [
            (BrokerProfile::AwsIot, 128 * 1024),
            (BrokerProfile::AzureIotHub, 256 * 1024),
            (BrokerProfile::Emqx, MIB),
        ];
        for (p, max) in cases {
            let (_d, mut c) = cfg("");
            c.mqtt.max_packet_size = max;
            assert!(
                only(&check(p, &c, MIB), Rule::PacketSize).is_empty(),
                "{p:?}"
            );
            c.mqtt.max_packet_size = max + 1;
            let found = check(p, &c, MIB);
            let f = only(&found, Rule::PacketSize);
            assert_eq!(f.len(), 1, "{p:?}");
            assert_eq!(f[0].severity, Severity::Fail);
            let text = f[0].to_string();
            assert!(text.contains(&format!("{} bytes", max + 1)), "{text}");
            assert!(text.contains(&format!("up to {max} bytes")), "{text}");
            assert!(text.contains(limits(p).broker), "{text}");
            assert!(text.contains(&size_text(max)), "{text}");
            // A fixed cloud limit cannot be raised; a broker default can.
            assert_eq!(
                text.contains("raise the broker's limit"),
                limits(p).configurable,
                "{text}"
            );
        }
        // No limit below MQTT's own: any size passes.
        for p in [BrokerProfile::Hivemq, BrokerProfile::Mosquitto] {
            let (_d, mut c) = cfg("");
            c.mqtt.max_packet_size = crate::config::MAX_MAX_PACKET_SIZE;
            assert!(only(&check(p, &c, MIB), Rule::PacketSize).is_empty());
        }
    }

    #[test]
    fn sizes_are_written_as_config_text() {
        assert_eq!(size_text(131_072), "\"128KiB\"");
        assert_eq!(size_text(MIB), "\"1MiB\"");
        assert_eq!(size_text(1000), "1000");
    }

    #[test]
    fn aws_at_256_kib_names_the_mismatch() {
        let (_d, mut c) = cfg("");
        c.mqtt.max_packet_size = 256 * 1024;
        let found = check(BrokerProfile::AwsIot, &c, MIB);
        let f = only(&found, Rule::PacketSize);
        assert_eq!(
            f[0].to_string(),
            "mqtt.max_packet_size is 262144 bytes, AWS IoT Core takes messages up to 131072 bytes: \
             a larger one is refused and the capture is quarantined after mqtt.max_attempts; \
             fix: set mqtt.max_packet_size to 131072 or less (\"128KiB\")"
        );
    }

    #[test]
    fn inbound_limit_against_what_the_broker_may_deliver() {
        let (_d, c) = cfg("");
        // Brokers with a limit: a warning only while it exceeds the device's.
        for (p, max) in [
            (BrokerProfile::AwsIot, 128 * 1024),
            (BrokerProfile::AzureIotHub, 256 * 1024),
            (BrokerProfile::Emqx, MIB),
        ] {
            assert!(only(&check(p, &c, max), Rule::InboundSize).is_empty());
            assert!(only(&check(p, &c, MIB), Rule::InboundSize).is_empty());
            let found = check(p, &c, max - 1);
            let f = only(&found, Rule::InboundSize);
            assert_eq!(f.len(), 1, "{p:?}");
            assert_eq!(f[0].severity, Severity::Warn);
            let text = f[0].to_string();
            assert!(text.contains("closes the device's connection"), "{text}");
            assert!(
                text.contains(&format!(
                    "commands.max_bytes to {} or more",
                    max.div_ceil(4)
                )),
                "{text}"
            );
        }
        // Brokers without a default limit: always a warning naming the fix.
        for p in [BrokerProfile::Hivemq, BrokerProfile::Mosquitto] {
            for inbound in [MIB, 64 * MIB] {
                let found = check(p, &c, inbound);
                let f = only(&found, Rule::InboundSize);
                assert_eq!(f.len(), 1, "{p:?}");
                let text = f[0].to_string();
                assert!(text.contains(&format!("{inbound} bytes")), "{text}");
                assert!(text.contains("no limit by default"), "{text}");
                assert!(text.contains("max_packet_size"), "{text}");
            }
        }
    }

    #[test]
    fn inflight_against_the_broker_window() {
        for (p, max) in [(BrokerProfile::AwsIot, 100u16), (BrokerProfile::Hivemq, 10)] {
            let (_d, mut c) = cfg("");
            c.mqtt.inflight = max - REPLY_STATUS_ROOM;
            assert!(only(&check(p, &c, MIB), Rule::Inflight).is_empty(), "{p:?}");
            c.mqtt.inflight = max - REPLY_STATUS_ROOM + 1;
            let found = check(p, &c, MIB);
            let f = only(&found, Rule::Inflight);
            assert_eq!(f.len(), 1, "{p:?}");
            assert_eq!(f[0].severity, Severity::Warn);
            assert_eq!(f[0].configured, (max - 1).to_string());
            assert!(f[0].limit.contains(&format!("at most {max}")));
            assert!(f[0]
                .fix
                .contains(&format!("to {} or less", max - REPLY_STATUS_ROOM)));
        }
        for p in [
            BrokerProfile::AzureIotHub,
            BrokerProfile::Emqx,
            BrokerProfile::Mosquitto,
        ] {
            let (_d, mut c) = cfg("");
            c.mqtt.inflight = 1024;
            assert!(only(&check(p, &c, MIB), Rule::Inflight).is_empty(), "{p:?}");
        }
    }

    #[test]
    fn keep_alive_outside_the_honoured_range_warns() {
        let secs = Duration::from_secs;
        // (profile, keep-alive, warns)
        let cases = [
            (BrokerProfile::AwsIot, 29, true),
            (BrokerProfile::AwsIot, 30, false),
            (BrokerProfile::AwsIot, 1200, false),
            (BrokerProfile::AwsIot, 1201, true),
            (BrokerProfile::AzureIotHub, 1, false),
            (BrokerProfile::AzureIotHub, 1767, false),
            (BrokerProfile::AzureIotHub, 1768, true),
            (BrokerProfile::Emqx, 65_535, false),
            (BrokerProfile::Hivemq, 1, false),
            (BrokerProfile::Mosquitto, 65_535, false),
        ];
        for (p, ka, warns) in cases {
            let (_d, mut c) = cfg("");
            c.mqtt.keep_alive = secs(ka);
            let found = check(p, &c, MIB);
            let f = only(&found, Rule::KeepAlive);
            assert_eq!(f.len(), usize::from(warns), "{p:?} {ka}");
            if let Some(f) = f.first() {
                assert_eq!(f.severity, Severity::Warn);
                assert_eq!(f.configured, format!("{ka}s"));
                assert!(f.fix.contains("between"), "{}", f.fix);
            }
        }
        let (_d, mut c) = cfg("");
        c.mqtt.keep_alive = secs(10);
        let text = check(BrokerProfile::AwsIot, &c, MIB)[0].to_string();
        assert!(
            text.contains("treats a keep-alive below 30 s as 30 s"),
            "{text}"
        );
    }

    #[test]
    fn client_id_rules() {
        let long = "x".repeat(129);
        for p in [BrokerProfile::AwsIot, BrokerProfile::AzureIotHub] {
            let (_d, mut c) = cfg("");
            c.identity.device_id = "x".repeat(128);
            assert!(only(&check(p, &c, MIB), Rule::ClientId)
                .iter()
                .all(|f| f.severity == Severity::Warn));
            c.identity.device_id = long.clone();
            let found = check(p, &c, MIB);
            let fails: Vec<_> = only(&found, Rule::ClientId)
                .into_iter()
                .filter(|f| f.severity == Severity::Fail)
                .collect();
            assert_eq!(fails.len(), 1, "{p:?}");
            assert!(fails[0].to_string().contains("129 bytes long"));
            assert!(fails[0].to_string().contains("over 128 bytes"));
        }
        for p in [
            BrokerProfile::Emqx,
            BrokerProfile::Hivemq,
            BrokerProfile::Mosquitto,
        ] {
            let (_d, mut c) = cfg("");
            c.identity.device_id = long.clone();
            assert!(only(&check(p, &c, MIB), Rule::ClientId).is_empty(), "{p:?}");
        }
        // '$' starts reserved names; config never allows it, the rule still says so.
        let (_d, mut c) = cfg("");
        c.identity.device_id = "$term".into();
        let found = check(BrokerProfile::AwsIot, &c, MIB);
        assert_eq!(only(&found, Rule::ClientId)[0].severity, Severity::Fail);
        assert!(only(&found, Rule::ClientId)[0].to_string().contains("'$'"));
        let found = check(BrokerProfile::Mosquitto, &c, MIB);
        assert!(only(&found, Rule::ClientId).is_empty());
        // Azure: the hub's registered id must be the device id.
        let (_d, c) = cfg("");
        let found = check(BrokerProfile::AzureIotHub, &c, MIB);
        let f = only(&found, Rule::ClientId);
        assert_eq!(f.len(), 1);
        assert!(f[0].fix.contains("\"term-01\""), "{}", f[0].fix);
    }

    #[test]
    fn every_topic_is_checked_for_depth_and_length() {
        let (_d, c) = cfg("");
        let names: Vec<_> = device_topics(&c)
            .iter()
            .map(|(r, t)| (*r, t.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("captures", "facegate/lobby/term-01/captures".to_string()),
                ("reply", "facegate/lobby/term-01/reply".to_string()),
                ("status", "facegate/lobby/term-01/status".to_string()),
                ("commands", "facegate/lobby/term-01/cmd".to_string()),
                ("site commands", "facegate/lobby/cmd".to_string()),
                ("consent head", "facegate/lobby/consent/head".to_string()),
            ]
        );
        // A prefix with levels (config refuses '/', a hand-built config may not):
        // 5 more levels make every per-device topic 9 deep, site topics 8/9.
        let (_d, mut c) = cfg("");
        c.mqtt.prefix = "a/b/c/d/e/facegate".into();
        let found = check(BrokerProfile::AwsIot, &c, MIB);
        let deep: Vec<_> = only(&found, Rule::Topics)
            .iter()
            .map(|f| (f.what.clone(), f.configured.clone()))
            .collect();
        assert_eq!(
            deep,
            vec![
                (
                    "the captures topic \"a/b/c/d/e/facegate/lobby/term-01/captures\"".to_string(),
                    "9 levels".to_string()
                ),
                (
                    "the reply topic \"a/b/c/d/e/facegate/lobby/term-01/reply\"".to_string(),
                    "9 levels".to_string()
                ),
                (
                    "the status topic \"a/b/c/d/e/facegate/lobby/term-01/status\"".to_string(),
                    "9 levels".to_string()
                ),
                (
                    "the commands topic \"a/b/c/d/e/facegate/lobby/term-01/cmd\"".to_string(),
                    "9 levels".to_string()
                ),
                (
                    "the consent head topic \"a/b/c/d/e/facegate/lobby/consent/head\"".to_string(),
                    "9 levels".to_string()
                ),
            ]
        );
        assert!(only(&found, Rule::Topics)
            .iter()
            .all(|f| f.severity == Severity::Fail && f.limit.contains("at most 8 levels")));
        // EMQX allows 128 levels by default.
        assert!(only(&check(BrokerProfile::Emqx, &c, MIB), Rule::Topics).is_empty());
        // Length: the longest ids config allows still fit AWS's 256 bytes ...
        let (_d, mut c) = cfg("");
        c.mqtt.prefix = "p".repeat(64);
        c.identity.site_id = "s".repeat(64);
        c.identity.device_id = "d".repeat(64);
        assert!(only(&check(BrokerProfile::AwsIot, &c, MIB), Rule::Topics).is_empty());
        // ... a longer prefix does not: 257 bytes for captures.
        c.mqtt.prefix = "p".repeat(118);
        let found = check(BrokerProfile::AwsIot, &c, MIB);
        let long = only(&found, Rule::Topics);
        assert_eq!(long.len(), 1, "{long:?}");
        assert_eq!(long[0].configured, "257 bytes");
        assert!(long[0].what.starts_with("the captures topic"));
        for p in [BrokerProfile::Hivemq, BrokerProfile::Mosquitto] {
            assert!(only(&check(p, &c, MIB), Rule::Topics).is_empty(), "{p:?}");
        }
    }

    #[test]
    fn azure_names_the_fixed_topic_layout() {
        let (_d, c) = cfg("");
        let found = check(BrokerProfile::AzureIotHub, &c, MIB);
        let f = only(&found, Rule::Topics);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Fail);
        let text = f[0].to_string();
        assert!(
            text.contains("devices/{device_id}/messages/events/"),
            "{text}"
        );
        assert!(text.contains("facegate/lobby/term-01/captures"), "{text}");
        assert!(text.contains("fixed by the facegate protocol"), "{text}");
    }

    #[test]
    fn mqtt5_on_a_broker_without_it_fails() {
        for (_, p) in BrokerProfile::ALL {
            let mut found = Vec::new();
            protocol(&limits(p), MqttVersion::V311, &mut found);
            assert!(found.is_empty(), "{p:?}");
            protocol(&limits(p), MqttVersion::V5, &mut found);
            let want = if p == BrokerProfile::AzureIotHub {
                vec![(Rule::Protocol, Severity::Fail)]
            } else {
                vec![]
            };
            assert_eq!(rules(&found), want, "{p:?}");
        }
        let (_d, c) = cfg("");
        assert_eq!(mqtt_version(&c), MqttVersion::V311);
        let (_d, mut c) = cfg("");
        c.mqtt.protocol = crate::config::MqttProtocol::V5;
        assert_eq!(mqtt_version(&c), MqttVersion::V5);
    }

    #[test]
    fn findings_become_one_check_per_rule() {
        use crate::doctor::Outcome;
        let (_d, mut c) = cfg("");
        c.mqtt.max_packet_size = 256 * 1024;
        let found = check(BrokerProfile::AwsIot, &c, MIB);
        let checks = to_checks(BrokerProfile::AwsIot, &found);
        let got: Vec<_> = checks.iter().map(|c| c.name).collect();
        assert_eq!(got, Rule::ALL.map(check_name).to_vec());
        for c in &checks {
            match c.name {
                names::PROFILE_PACKET_SIZE => match &c.outcome {
                    Outcome::Fail(m) => {
                        assert!(
                            m.starts_with("profile aws-iot: mqtt.max_packet_size"),
                            "{m}"
                        )
                    }
                    other => panic!("{other:?}"),
                },
                names::PROFILE_SESSION => assert!(matches!(c.outcome, Outcome::Warn(_))),
                _ => assert_eq!(c.outcome, Outcome::Pass, "{}", c.name),
            }
        }
        // Two findings of one rule: both named, the worse one decides.
        let two = vec![
            Finding {
                rule: Rule::ClientId,
                severity: Severity::Warn,
                what: "a".into(),
                configured: "1".into(),
                limit: "l".into(),
                fix: "f".into(),
            },
            Finding {
                rule: Rule::ClientId,
                severity: Severity::Fail,
                what: "b".into(),
                configured: "2".into(),
                limit: "m".into(),
                fix: "g".into(),
            },
        ];
        let checks = to_checks(BrokerProfile::Emqx, &two);
        let id = checks
            .iter()
            .find(|c| c.name == names::PROFILE_CLIENT_ID)
            .unwrap();
        assert_eq!(
            id.outcome,
            Outcome::Fail("profile emqx: a is 1, l; fix: f; b is 2, m; fix: g".into())
        );
    }

    #[test]
    fn session_expiry_only_where_the_broker_sets_it() {
        let (_d, c) = cfg("");
        for (_, p) in BrokerProfile::ALL {
            let found = check(p, &c, MIB);
            let f = only(&found, Rule::Session);
            if p == BrokerProfile::AwsIot {
                assert_eq!(f.len(), 1);
                assert_eq!(f[0].severity, Severity::Warn);
                assert!(f[0].limit.contains("1h after"), "{}", f[0].limit);
            } else {
                assert!(f.is_empty(), "{p:?}");
            }
        }
    }
}
