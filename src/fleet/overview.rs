//! `facegate fleet status`: one line per device of a site, from the retained
//! status topics (SPEC "Fleet side"). Pure: rows are built from the statuses
//! read and `now`, then rendered as a table or as JSON lines; the broker I/O
//! is [`super::site_statuses`] and [`super::watch_statuses`].

use std::fmt::Write as _;

use serde::Serialize;

use crate::clock;
use crate::protocol::{ClockState, State, Status};

/// How a device looks from the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Online, with a status newer than the staleness limit.
    Online,
    /// Online by its last status, but that status is older than the
    /// staleness limit: the device (or its clock) is not reporting.
    Silent,
    /// The broker published its last will, or it stopped cleanly.
    Offline,
}

impl Health {
    /// The word shown in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Online => "online",
            Health::Silent => "SILENT",
            Health::Offline => "OFFLINE",
        }
    }
}

/// One device's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceRow {
    /// The device id (from the status topic).
    pub device: String,
    /// Online, silent or offline.
    pub health: Health,
    /// When its status was taken (RFC 3339 on the wire); `None` for the last
    /// will, which carries no time.
    #[serde(with = "opt_time")]
    pub last_seen: Option<i64>,
    /// Seconds from `last_seen` to now (0 when the device's clock is ahead).
    pub last_seen_age_s: Option<u64>,
    /// The status as the device published it (its fields sit next to the
    /// ones above in JSON: `state`, `ts`, `outbox`, `counters`, ...).
    #[serde(flatten)]
    pub status: Status,
}

/// Builds the rows, sorted by device id. `stale_s`: an online status older
/// than this makes the device [`Health::Silent`].
pub fn rows(statuses: Vec<(String, Status)>, now: i64, stale_s: u64) -> Vec<DeviceRow> {
    let mut rows: Vec<DeviceRow> = statuses
        .into_iter()
        .map(|(device, status)| {
            let age = status.ts.map(|ts| now.saturating_sub(ts).max(0) as u64);
            let health = match (status.state, age) {
                (State::Offline, _) => Health::Offline,
                (State::Online, Some(age)) if age > stale_s => Health::Silent,
                (State::Online, _) => Health::Online,
            };
            DeviceRow {
                device,
                health,
                last_seen: status.ts,
                last_seen_age_s: age,
                status,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.device.cmp(&b.device));
    rows
}

/// A duration in seconds as the table shows it: `42s`, `7m`, `3h`, `2d`.
pub fn short_age(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m", s / 60),
        7_200..=172_799 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The consent-log column: `in sync`, `missing 3` (seqs), `no head` or `-`
/// (the device does not report a log, or it is offline).
fn consent_log_cell(status: &Status) -> String {
    match &status.consent_log {
        None => "-".into(),
        Some(cl) if cl.in_sync => "in sync".into(),
        Some(cl) if cl.head == 0 => "no head".into(),
        Some(cl) => {
            let missing: u64 = cl
                .missing
                .iter()
                .map(|[a, b]| b.saturating_sub(*a) + 1)
                .sum();
            if missing > 0 {
                format!("missing {missing}")
            } else {
                format!("head {}", short_age(cl.head_age_s))
            }
        }
    }
}

/// The clock column: `ok`, `unsynced`, `JUMPED +2d` (a jump the device has
/// not confirmed: it holds its irreversible time-based actions), or `-`.
fn clock_cell(status: &Status) -> String {
    match &status.clock {
        None => "-".into(),
        Some(c) => match c.state {
            ClockState::Ok => "ok".into(),
            ClockState::Unsynced => "unsynced".into(),
            ClockState::Jumped => format!(
                "JUMPED {}{}",
                if c.jump_s < 0 { "-" } else { "+" },
                short_age(c.jump_s.unsigned_abs())
            ),
        },
    }
}

/// The table: a header line, then one line per row; offline and silent
/// devices are in capitals, a summary line closes it.
pub fn render(rows: &[DeviceRow], site: &str) -> String {
    let header = [
        "DEVICE",
        "STATE",
        "LAST SEEN",
        "OUTBOX",
        "OLDEST",
        "QUARANTINED",
        "CONSENT LOG",
        "CLOCK",
        "ACCEPTED",
        "DROPPED",
        "REJECTED",
        "UPLOADED",
        "PURGED",
    ];
    let dash = || "-".to_string();
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let s = &r.status;
        let (captures, oldest, quarantined) = match &s.outbox {
            Some(o) => (
                o.captures.to_string(),
                short_age(o.oldest_age_s),
                o.quarantined.to_string(),
            ),
            None => (dash(), dash(), dash()),
        };
        let counters = match &s.counters {
            Some(c) => [
                c.accepted,
                c.dropped_no_consent,
                c.rejected_bad_input,
                c.uploaded,
                c.purged,
            ]
            .map(|n| n.to_string()),
            None => [dash(), dash(), dash(), dash(), dash()],
        };
        let seen = match r.last_seen_age_s {
            Some(age) => format!("{} ago", short_age(age)),
            None => dash(),
        };
        let mut line = vec![
            r.device.clone(),
            r.health.as_str().to_string(),
            seen,
            captures,
            oldest,
            quarantined,
            consent_log_cell(s),
            clock_cell(s),
        ];
        line.extend(counters);
        lines.push(line);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    let count = |h: Health| rows.iter().filter(|r| r.health == h).count();
    let _ = writeln!(
        out,
        "site {site}: {} devices, {} online, {} silent, {} offline",
        rows.len(),
        count(Health::Online),
        count(Health::Silent),
        count(Health::Offline)
    );
    out
}

/// One JSON object per row and line: the status as published, plus
/// `device`, `health`, `last_seen` and `last_seen_age_s`.
pub fn render_json(rows: &[DeviceRow]) -> String {
    rows.iter()
        .filter_map(|r| serde_json::to_string(r).ok())
        .map(|l| l + "\n")
        .collect()
}

/// `Option<i64>` unix seconds as RFC 3339 or `null`.
mod opt_time {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(ts: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ts.and_then(crate::clock::try_rfc3339) {
            Some(text) => s.serialize_str(&text),
            None => s.serialize_none(),
        }
    }
}

/// The line above the table in `--watch` mode.
pub fn heading(site: &str, now: i64) -> String {
    format!(
        "facegate fleet status: site {site} at {}",
        clock::rfc3339(now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClockStatus, ConsentLogStatus, Counters, OutboxStatus};
    use serde_json::Value;

    const NOW: i64 = 1_795_858_382;

    fn online(ts: i64, captures: u64) -> Status {
        let mut s = Status::offline();
        s.state = State::Online;
        s.ts = Some(ts);
        s.version = Some("1.0.0".into());
        s.outbox = Some(OutboxStatus {
            captures,
            bytes: captures * 1000,
            oldest_age_s: 130,
            quarantined: 1,
        });
        s.counters = Some(Counters {
            accepted: 7,
            uploaded: 4,
            ..Counters::default()
        });
        s
    }

    #[test]
    fn health_from_state_and_age() {
        let r = rows(
            vec![
                ("t3".into(), Status::offline()),
                ("t1".into(), online(NOW - 10, 0)),
                ("t2".into(), online(NOW - 301, 0)),
                ("t4".into(), online(NOW + 5, 0)),
            ],
            NOW,
            300,
        );
        let got: Vec<(&str, Health, Option<u64>)> = r
            .iter()
            .map(|r| (r.device.as_str(), r.health, r.last_seen_age_s))
            .collect();
        assert_eq!(
            got,
            vec![
                ("t1", Health::Online, Some(10)),
                ("t2", Health::Silent, Some(301)),
                ("t3", Health::Offline, None),
                ("t4", Health::Online, Some(0)),
            ]
        );
    }

    #[test]
    fn exactly_at_the_limit_is_still_online() {
        let r = rows(vec![("t".into(), online(NOW - 300, 0))], NOW, 300);
        assert_eq!(r[0].health, Health::Online);
    }

    #[test]
    fn ages() {
        for (s, text) in [
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (7_199, "119m"),
            (7_200, "2h"),
            (172_800, "2d"),
        ] {
            assert_eq!(short_age(s), text);
        }
    }

    #[test]
    fn table_lines_and_flags() {
        let mut lagging = online(NOW - 3, 2);
        lagging.consent_log = Some(ConsentLogStatus {
            in_sync: false,
            applied: 4,
            head: 9,
            missing: vec![[5, 6], [9, 9]],
            head_age_s: 30,
        });
        let table = render(
            &rows(
                vec![
                    ("term-02".into(), Status::offline()),
                    ("term-01".into(), lagging),
                ],
                NOW,
                300,
            ),
            "lobby",
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("DEVICE"), "{table}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "term-01", "online", "3s", "ago", "2", "2m", "1", "missing", "3", "-", "7", "0",
                "0", "4", "0"
            ],
            "{table}"
        );
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(cells[..3], ["term-02", "OFFLINE", "-"], "{table}");
        assert_eq!(
            lines[3],
            "site lobby: 2 devices, 1 online, 0 silent, 1 offline"
        );
    }

    #[test]
    fn clock_cells() {
        let mut s = online(NOW, 0);
        assert_eq!(clock_cell(&s), "-");
        let mut c = ClockStatus::default();
        s.clock = Some(c.clone());
        assert_eq!(clock_cell(&s), "ok");
        c.state = ClockState::Unsynced;
        s.clock = Some(c.clone());
        assert_eq!(clock_cell(&s), "unsynced");
        c.state = ClockState::Jumped;
        c.jump_s = -7_200;
        s.clock = Some(c.clone());
        assert_eq!(clock_cell(&s), "JUMPED -2h");
        c.jump_s = 2_678_400;
        s.clock = Some(c);
        assert_eq!(clock_cell(&s), "JUMPED +31d");
    }

    #[test]
    fn consent_log_cells() {
        let mut s = online(NOW, 0);
        assert_eq!(consent_log_cell(&s), "-");
        let mut cl = ConsentLogStatus {
            in_sync: true,
            ..ConsentLogStatus::default()
        };
        s.consent_log = Some(cl.clone());
        assert_eq!(consent_log_cell(&s), "in sync");
        cl.in_sync = false;
        s.consent_log = Some(cl.clone());
        assert_eq!(consent_log_cell(&s), "no head");
        cl.head = 5;
        cl.head_age_s = 90_000;
        s.consent_log = Some(cl);
        assert_eq!(consent_log_cell(&s), "head 25h");
    }

    #[test]
    fn json_lines_carry_the_status() {
        let text = render_json(&rows(
            vec![
                ("b".into(), online(NOW - 1, 3)),
                ("a".into(), Status::offline()),
            ],
            NOW,
            300,
        ));
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["device"], "a");
        assert_eq!(lines[0]["health"], "offline");
        assert_eq!(lines[0]["last_seen"], Value::Null);
        assert_eq!(lines[0]["state"], "offline");
        assert_eq!(lines[0]["v"], 1);
        assert!(lines[0].get("outbox").is_none());
        assert_eq!(lines[1]["health"], "online");
        assert_eq!(lines[1]["last_seen"], clock::rfc3339(NOW - 1));
        assert_eq!(lines[1]["last_seen_age_s"], 1);
        assert_eq!(lines[1]["state"], "online");
        assert_eq!(lines[1]["outbox"]["captures"], 3);
        assert_eq!(lines[1]["ts"], clock::rfc3339(NOW - 1));
    }
}
