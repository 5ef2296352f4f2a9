//! Time as the daemon sees it: unix seconds (`i64`) inside, RFC 3339 at the edges.
//! Pure decisions take `now` as an argument; only the edges call [`now`].

pub mod watch;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Current unix time in seconds.
pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Earliest time a signed claim (`iat`, `exp`, `nbf`) may name:
/// 2000-01-01T00:00:00Z. Anything before is a bug or a forgery, not a date.
pub const EARLIEST_CLAIM_TIME: i64 = 946_684_800;

/// Latest time a signed claim may name, and the latest RFC 3339 can write
/// (four-digit years): 9999-12-31T23:59:59Z.
pub const LATEST_CLAIM_TIME: i64 = 253_402_300_799;

/// Whether `ts` lies in [`EARLIEST_CLAIM_TIME`]`..=`[`LATEST_CLAIM_TIME`].
pub fn is_sane_claim_time(ts: i64) -> bool {
    (EARLIEST_CLAIM_TIME..=LATEST_CLAIM_TIME).contains(&ts)
}

/// Formats unix seconds as RFC 3339 in UTC (`2026-11-28T09:33:02Z`), or
/// `None` when RFC 3339 cannot write it (before year 0 or after 9999).
pub fn try_rfc3339(ts: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(ts)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// Formats unix seconds as RFC 3339 in UTC (`2026-11-28T09:33:02Z`). A time
/// RFC 3339 cannot write is shown as `unix:<ts> (out of RFC 3339 range)`,
/// never as some other date. Wire formats use [`try_rfc3339`] and refuse.
pub fn rfc3339(ts: i64) -> String {
    try_rfc3339(ts).unwrap_or_else(|| format!("unix:{ts} (out of RFC 3339 range)"))
}

/// Parses an RFC 3339 timestamp into unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("2026-11-28T09:33:02Z"), Some(1_795_858_382));
        assert_eq!(parse_rfc3339(&rfc3339(1_795_858_382)), Some(1_795_858_382));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn out_of_range_times_are_never_shown_as_another_date() {
        assert_eq!(rfc3339(LATEST_CLAIM_TIME), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(EARLIEST_CLAIM_TIME), "2000-01-01T00:00:00Z");
        for ts in [1_i64 << 62, LATEST_CLAIM_TIME + 1, i64::MAX, i64::MIN] {
            assert_eq!(try_rfc3339(ts), None, "{ts}");
            let shown = rfc3339(ts);
            assert!(!shown.starts_with("1970"), "{ts} shown as {shown}");
            assert!(shown.contains(&ts.to_string()), "{ts} shown as {shown}");
        }
        assert!(is_sane_claim_time(EARLIEST_CLAIM_TIME));
        assert!(is_sane_claim_time(LATEST_CLAIM_TIME));
        assert!(!is_sane_claim_time(EARLIEST_CLAIM_TIME - 1));
        assert!(!is_sane_claim_time(LATEST_CLAIM_TIME + 1));
        assert!(!is_sane_claim_time(1 << 62));
    }
}
