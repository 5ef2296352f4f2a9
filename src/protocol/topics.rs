//! Topic names (SPEC "Identity and topics"). One place builds them; the
//! device, the fleet tool and `doctor` all use these.

/// The topics of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Upload envelopes, QoS 1.
    pub captures: String,
    /// Commands for this device.
    pub device_cmd: String,
    /// Commands for every device of the site.
    pub site_cmd: String,
    /// Command replies.
    pub reply: String,
    /// Retained status and last will.
    pub status: String,
    /// The site consent log's retained, signed head.
    pub consent_head: String,
}

impl Topics {
    /// Topics of `device` at `site` under `prefix`.
    pub fn new(prefix: &str, site: &str, device: &str) -> Topics {
        let site_topics = SiteTopics::new(prefix, site);
        Topics {
            captures: format!("{prefix}/{site}/{device}/captures"),
            device_cmd: format!("{prefix}/{site}/{device}/cmd"),
            site_cmd: site_topics.cmd,
            reply: format!("{prefix}/{site}/{device}/reply"),
            status: format!("{prefix}/{site}/{device}/status"),
            consent_head: site_topics.consent_head,
        }
    }

    /// True for the two topics commands arrive on.
    pub fn is_command(&self, topic: &str) -> bool {
        topic == self.device_cmd || topic == self.site_cmd
    }
}

/// The topics of a whole site, as the fleet side sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteTopics {
    prefix: String,
    site: String,
    /// Commands for every device of the site.
    pub cmd: String,
    /// Every device's replies (a filter with `+`).
    pub replies: String,
    /// Every device's retained status (a filter with `+`).
    pub statuses: String,
    /// Every device's uploads (a filter with `+`).
    pub captures: String,
    /// The site consent log's retained, signed head.
    pub consent_head: String,
}

impl SiteTopics {
    /// Topics of `site` under `prefix`.
    pub fn new(prefix: &str, site: &str) -> SiteTopics {
        SiteTopics {
            prefix: prefix.to_string(),
            site: site.to_string(),
            cmd: format!("{prefix}/{site}/cmd"),
            replies: format!("{prefix}/{site}/+/reply"),
            statuses: format!("{prefix}/{site}/+/status"),
            captures: format!("{prefix}/{site}/+/captures"),
            consent_head: format!("{prefix}/{site}/consent/head"),
        }
    }

    /// The topics of one device of this site.
    pub fn device(&self, device: &str) -> Topics {
        Topics::new(&self.prefix, &self.site, device)
    }

    /// The device a per-device topic of this site belongs to
    /// (`{prefix}/{site}/{device}/{leaf}`), if it is one.
    pub fn device_of<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')?
            .strip_prefix(self.site.as_str())?
            .strip_prefix('/')?;
        let (device, leaf) = rest.split_once('/')?;
        (!device.is_empty() && !leaf.is_empty() && !leaf.contains('/')).then_some(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_topics_follow_the_spec() {
        let t = Topics::new("facegate", "lobby", "term-01");
        assert_eq!(t.captures, "facegate/lobby/term-01/captures");
        assert_eq!(t.device_cmd, "facegate/lobby/term-01/cmd");
        assert_eq!(t.site_cmd, "facegate/lobby/cmd");
        assert_eq!(t.reply, "facegate/lobby/term-01/reply");
        assert_eq!(t.status, "facegate/lobby/term-01/status");
        assert_eq!(t.consent_head, "facegate/lobby/consent/head");
        assert!(t.is_command("facegate/lobby/cmd"));
        assert!(t.is_command("facegate/lobby/term-01/cmd"));
        assert!(!t.is_command("facegate/lobby/term-02/cmd"));
    }

    #[test]
    fn site_topics_and_devices() {
        let s = SiteTopics::new("fg", "lobby");
        assert_eq!(s.cmd, "fg/lobby/cmd");
        assert_eq!(s.replies, "fg/lobby/+/reply");
        assert_eq!(s.statuses, "fg/lobby/+/status");
        assert_eq!(s.captures, "fg/lobby/+/captures");
        assert_eq!(s.device("t1"), Topics::new("fg", "lobby", "t1"));
        assert_eq!(s.device_of("fg/lobby/t1/reply"), Some("t1"));
        assert_eq!(s.device_of("fg/lobby/t1/status"), Some("t1"));
        assert_eq!(s.device_of("fg/lobby/cmd"), None);
        assert_eq!(s.device_of("fg/hall/t1/reply"), None);
        assert_eq!(s.device_of("fg/lobbyx/t1/reply"), None);
        assert_eq!(s.device_of("fg/lobby/t1/a/b"), None);
    }
}
