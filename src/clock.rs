//! Time as the daemon sees it: unix seconds (`i64`) inside, RFC 3339 at the edges.
//! Pure decisions take `now` as an argument; only the edges call [`now`].

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Current unix time in seconds.
pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Formats unix seconds as RFC 3339 in UTC (`2026-11-28T09:33:02Z`).
pub fn rfc3339(ts: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ts)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Parses an RFC 3339 timestamp into unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339).ok().map(|t| t.unix_timestamp())
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
}
