//! `facegate fleet acl`: the broker ACL that confines each certificate to its
//! own site's and device's topics (pure: text in, text out).
//!
//! Mosquitto's `pattern` lines can only substitute the user name (`%u`) and
//! the client id (`%c`); nothing in them names *the site of this device*, so
//! a pattern ACL either lets a device into every site (`facegate/+/%u/…`,
//! `facegate/+/cmd`) or needs one rule per site. This module writes one
//! `user` block per device instead, from an inventory of `SITE DEVICE` lines,
//! plus the blocks of the fleet back-end's users. It is correct only on a
//! listener with `require_certificate true`, `use_identity_as_username true`
//! (the user name is the certificate CN) and `use_username_as_clientid true`
//! (the client id is the user name, so a certificate can only ever be the
//! session named by its CN): the generated file says so in its header
//! ([`BROKER_CONF`]).
//!
//! A device `D` of site `S` may write `{prefix}/S/D/captures`, `…/reply` and
//! `…/status`, and read `{prefix}/S/D/cmd`, `{prefix}/S/cmd` and the site's
//! consent-log head `{prefix}/S/consent/head`; nothing else. Device ids are
//! certificate CNs and MQTT user names, so they are unique per broker (also
//! across sites, and ignoring case), and no device may be named like a fleet
//! user or a reserved identity ([`crate::config::RESERVED_DEVICE_IDS`]).

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::config::{is_identifier, RESERVED_DEVICE_IDS};

/// The mosquitto.conf lines the generated ACL relies on (TLS listener
/// settings; `acl_file` names where the generated file is installed).
pub const BROKER_CONF: &str = "\
require_certificate true
use_identity_as_username true
use_username_as_clientid true
acl_file /etc/mosquitto/facegate.acl";

/// One terminal of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its site id.
    pub site: String,
    /// Its device id: the certificate CN, MQTT user name and client id.
    pub device: String,
}

/// A fleet back-end identity (certificate CN) and the sites it may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetUser {
    /// The user name (the certificate CN of the back-end program).
    pub name: String,
    /// `None`: every site; otherwise only these sites.
    pub sites: Option<Vec<String>>,
}

impl FleetUser {
    /// Reads `NAME` (every site) or `NAME=SITE[,SITE…]` (those sites only).
    pub fn parse(spec: &str) -> Result<FleetUser, AclError> {
        let (name, sites) = match spec.split_once('=') {
            None => (spec, None),
            Some((name, list)) => (
                name,
                Some(list.split(',').map(str::to_string).collect::<Vec<_>>()),
            ),
        };
        let bad = |problem: String| AclError::Fleet {
            name: spec.to_string(),
            problem,
        };
        if !is_identifier(name) {
            return Err(bad(format!("user name {name:?} {ID_RULE}")));
        }
        if let Some(sites) = &sites {
            if let Some(site) = sites.iter().find(|s| !is_identifier(s)) {
                return Err(bad(format!("site {site:?} {ID_RULE}")));
            }
        }
        Ok(FleetUser {
            name: name.to_string(),
            sites,
        })
    }
}

/// What an identifier must look like (the config's rule).
const ID_RULE: &str = "must be 1 to 64 characters of A-Z a-z 0-9 _ -";

/// Why no ACL could be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// A line of the inventory is wrong.
    #[error("inventory line {line}: {problem}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// The topic prefix is not an identifier.
    #[error("prefix {0:?} {ID_RULE}")]
    Prefix(String),
    /// A fleet user is not usable.
    #[error("fleet user {name:?}: {problem}")]
    Fleet {
        /// The fleet user as given.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Reads an inventory: one `SITE DEVICE` per line, `#` starts a comment,
/// blank lines are skipped. Checks each id, that no device id is listed
/// twice (ignoring case: a certificate CN is one broker user) and that none is
/// reserved (`fleet` or a name in `fleet_users`, ignoring case).
pub fn parse_inventory(text: &str, fleet_users: &[FleetUser]) -> Result<Vec<Device>, AclError> {
    let mut devices = Vec::new();
    let mut seen: HashMap<String, (usize, String)> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let err = |problem: String| AclError::Line { line, problem };
        let content = raw.split('#').next().unwrap_or("");
        let fields: Vec<&str> = content.split_whitespace().collect();
        let (site, device) = match fields[..] {
            [] => continue,
            [site, device] => (site, device),
            _ => {
                return Err(err(format!(
                    "expected `SITE DEVICE`, got {:?}",
                    content.trim()
                )))
            }
        };
        if !is_identifier(site) {
            return Err(err(format!("site {site:?} {ID_RULE}")));
        }
        if !is_identifier(device) {
            return Err(err(format!("device {device:?} {ID_RULE}")));
        }
        if let Some(name) = RESERVED_DEVICE_IDS
            .iter()
            .copied()
            .chain(fleet_users.iter().map(|f| f.name.as_str()))
            .find(|r| r.eq_ignore_ascii_case(device))
        {
            return Err(err(format!(
                "device {device:?} is reserved: {name:?} is a fleet user with rights over other devices' topics"
            )));
        }
        if let Some((first, other_site)) = seen.get(&device.to_ascii_lowercase()) {
            return Err(err(format!(
                "device {device:?} is already listed on line {first} (site {other_site:?}): a device id is a certificate CN and must be unique on the broker"
            )));
        }
        seen.insert(device.to_ascii_lowercase(), (line, site.to_string()));
        devices.push(Device {
            site: site.to_string(),
            device: device.to_string(),
        });
    }
    Ok(devices)
}

/// The Mosquitto `acl_file` for `inventory` (see [`parse_inventory`]) under
/// topic `prefix`, with a block for each fleet user (in the given order),
/// then one per device (in inventory order).
pub fn generate(
    inventory: &str,
    prefix: &str,
    fleet_users: &[FleetUser],
) -> Result<String, AclError> {
    if !is_identifier(prefix) {
        return Err(AclError::Prefix(prefix.to_string()));
    }
    for (i, user) in fleet_users.iter().enumerate() {
        if fleet_users[..i]
            .iter()
            .any(|u| u.name.eq_ignore_ascii_case(&user.name))
        {
            return Err(AclError::Fleet {
                name: user.name.clone(),
                problem: "listed twice".into(),
            });
        }
    }
    let devices = parse_inventory(inventory, fleet_users)?;
    Ok(render(prefix, fleet_users, &devices))
}

/// Writes the file (inputs already checked).
fn render(prefix: &str, fleet_users: &[FleetUser], devices: &[Device]) -> String {
    let mut out = String::new();
    out.push_str(
        "# Mosquitto acl_file written by `facegate fleet acl`: each certificate reaches\n\
         # only its own topics. Correct only with these settings on the TLS listener\n\
         # (mosquitto.conf), so that the certificate CN is both the user name and the\n\
         # client id:\n",
    );
    for line in BROKER_CONF.lines() {
        let _ = writeln!(out, "#   {line}");
    }
    let _ = writeln!(
        out,
        "# Prefix {prefix:?}, {} fleet user(s), {} device(s). Generate it again when a\n\
         # device is added, moved or removed, then reload Mosquitto (SIGHUP).",
        fleet_users.len(),
        devices.len()
    );
    for user in fleet_users {
        let scope = match &user.sites {
            None => vec!["+".to_string()],
            Some(sites) => sites.clone(),
        };
        let what = match &user.sites {
            None => "every site".to_string(),
            Some(sites) => format!("site(s) {}", sites.join(", ")),
        };
        let _ = writeln!(out, "\n# fleet back-end, {what}");
        let _ = writeln!(out, "user {}", user.name);
        for site in &scope {
            if site == "+" {
                let _ = writeln!(out, "topic read {prefix}/#");
            } else {
                let _ = writeln!(out, "topic read {prefix}/{site}/#");
            }
            let _ = writeln!(out, "topic write {prefix}/{site}/cmd");
            let _ = writeln!(out, "topic write {prefix}/{site}/+/cmd");
            let _ = writeln!(out, "topic write {prefix}/{site}/consent/head");
        }
    }
    for Device { site, device } in devices {
        let _ = writeln!(out, "\n# device {device} of site {site}");
        let _ = writeln!(out, "user {device}");
        for topic in ["captures", "reply", "status"] {
            let _ = writeln!(out, "topic write {prefix}/{site}/{device}/{topic}");
        }
        let _ = writeln!(out, "topic read {prefix}/{site}/{device}/cmd");
        let _ = writeln!(out, "topic read {prefix}/{site}/cmd");
        let _ = writeln!(out, "topic read {prefix}/{site}/consent/head");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Vec<FleetUser> {
        vec![FleetUser::parse("fleet").unwrap()]
    }

    #[test]
    fn output_is_exactly_the_layout() {
        let inventory = "\
# site   device
lobby    term-01
lobby    term-02   # by the door

hall     term-07
";
        let users = vec![
            FleetUser::parse("fleet").unwrap(),
            FleetUser::parse("recv-lobby=lobby").unwrap(),
        ];
        let acl = generate(inventory, "fg", &users).unwrap();
        let expected = "\
# Mosquitto acl_file written by `facegate fleet acl`: each certificate reaches
# only its own topics. Correct only with these settings on the TLS listener
# (mosquitto.conf), so that the certificate CN is both the user name and the
# client id:
#   require_certificate true
#   use_identity_as_username true
#   use_username_as_clientid true
#   acl_file /etc/mosquitto/facegate.acl
# Prefix \"fg\", 2 fleet user(s), 3 device(s). Generate it again when a
# device is added, moved or removed, then reload Mosquitto (SIGHUP).

# fleet back-end, every site
user fleet
topic read fg/#
topic write fg/+/cmd
topic write fg/+/+/cmd
topic write fg/+/consent/head

# fleet back-end, site(s) lobby
user recv-lobby
topic read fg/lobby/#
topic write fg/lobby/cmd
topic write fg/lobby/+/cmd
topic write fg/lobby/consent/head

# device term-01 of site lobby
user term-01
topic write fg/lobby/term-01/captures
topic write fg/lobby/term-01/reply
topic write fg/lobby/term-01/status
topic read fg/lobby/term-01/cmd
topic read fg/lobby/cmd
topic read fg/lobby/consent/head

# device term-02 of site lobby
user term-02
topic write fg/lobby/term-02/captures
topic write fg/lobby/term-02/reply
topic write fg/lobby/term-02/status
topic read fg/lobby/term-02/cmd
topic read fg/lobby/cmd
topic read fg/lobby/consent/head

# device term-07 of site hall
user term-07
topic write fg/hall/term-07/captures
topic write fg/hall/term-07/reply
topic write fg/hall/term-07/status
topic read fg/hall/term-07/cmd
topic read fg/hall/cmd
topic read fg/hall/consent/head
";
        assert_eq!(acl, expected);
        // No pattern line: nothing is granted to "whoever the user is".
        assert!(!acl.lines().any(|l| l.starts_with("pattern")));
    }

    #[test]
    fn a_fleet_user_may_be_scoped_to_several_sites() {
        let users = vec![FleetUser::parse("recv=a,b").unwrap()];
        let acl = generate("a d1\n", "facegate", &users).unwrap();
        for line in [
            "topic read facegate/a/#",
            "topic write facegate/a/+/cmd",
            "topic read facegate/b/#",
            "topic write facegate/b/consent/head",
        ] {
            assert!(acl.lines().any(|l| l == line), "{line} missing:\n{acl}");
        }
        assert!(!acl.contains("facegate/#"), "{acl}");
        assert!(!acl.contains("facegate/+/"), "{acl}");
    }

    #[test]
    fn bad_inventories_are_refused_naming_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "lobby term-01\nhall term-01\n",
                2,
                "already listed on line 1",
            ),
            (
                "lobby term-01\nhall TERM-01\n",
                2,
                "already listed on line 1",
            ),
            ("# c\n\nlobby fleet\n", 3, "reserved"),
            ("lobby FLEET\n", 1, "reserved"),
            ("lobby recv\n", 1, "reserved"),
            ("lobby\n", 1, "expected `SITE DEVICE`"),
            ("lobby a b\n", 1, "expected `SITE DEVICE`"),
            ("lob/by term-01\n", 1, "site \"lob/by\""),
            ("lobby term+01\n", 1, "device \"term+01\""),
            ("lobby #term\n", 1, "expected `SITE DEVICE`"),
            ("x \n", 1, "expected"),
        ];
        let users = vec![
            FleetUser::parse("fleet").unwrap(),
            FleetUser::parse("recv").unwrap(),
        ];
        for (inventory, line, needle) in cases {
            match generate(inventory, "facegate", &users) {
                Err(AclError::Line { line: l, problem }) => {
                    assert_eq!(l, *line, "{inventory:?}: {problem}");
                    assert!(problem.contains(needle), "{inventory:?}: {problem}");
                }
                other => panic!("{inventory:?}: {other:?}"),
            }
        }
        let long = format!("lobby {}\n", "d".repeat(65));
        assert!(matches!(
            generate(&long, "facegate", &users),
            Err(AclError::Line { line: 1, .. })
        ));
        // `fleet` stays reserved even when the back-end's user is named otherwise.
        let other = vec![FleetUser::parse("backend").unwrap()];
        assert!(generate("lobby fleet\n", "facegate", &other).is_err());
    }

    #[test]
    fn bad_prefix_and_fleet_users_are_refused() {
        for prefix in ["", "a/b", "a+", "#", "x y"] {
            assert_eq!(
                generate("lobby t\n", prefix, &fleet()),
                Err(AclError::Prefix(prefix.to_string()))
            );
        }
        for spec in ["", "a b", "f=", "f=lobby,", "f=lo/bby", "=lobby"] {
            assert!(
                matches!(FleetUser::parse(spec), Err(AclError::Fleet { .. })),
                "{spec:?}"
            );
        }
        let twice = vec![
            FleetUser::parse("fleet").unwrap(),
            FleetUser::parse("Fleet=lobby").unwrap(),
        ];
        assert!(matches!(
            generate("lobby t\n", "facegate", &twice),
            Err(AclError::Fleet { problem, .. }) if problem.contains("twice")
        ));
    }

    #[test]
    fn an_empty_inventory_gives_the_fleet_blocks_only() {
        let acl = generate("# nothing yet\n\n", "facegate", &fleet()).unwrap();
        assert!(acl.contains("user fleet\n"), "{acl}");
        assert_eq!(acl.matches("\nuser ").count(), 1, "{acl}");
    }
}
