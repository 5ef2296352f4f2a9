//! The site consent log (SPEC "Site consent log: no revocation is lost"),
//! as pure decisions: the signed head (verification, which head replaces
//! which), and whether the device is in sync with its site's log (which
//! entries are missing), from the head, the applied set and `now`.
//!
//! The back-end numbers the consent commands it sends to a whole site
//! (`seq` 1, 2, 3, …) and keeps a retained, signed head on
//! `{prefix}/{site}/consent/head` (claims `aud`, `seq`, `base`, `iat`,
//! `exp`, signed by a `fleet` key). The device records every `seq` it applied
//! in the same transaction as the entry's effect (`store::consent_log`); with
//! `[consent] log = "required"` nothing is uploaded while it is out of sync:
//! - no valid head arrived on the current connection;
//! - the head's `iat` is older than `[consent] head_max_age`;
//! - some entry from the head's `base` to its `seq` is not applied.
//!
//! Head checks, in order: parse → key → signature → role (`fleet`) →
//! claims → audience (exactly this site) → time (`iat` not ahead of the clock
//! beyond the skew, `exp` not passed) → `base <= seq + 1`. A head with a lower
//! `seq` than one already seen (or the same `seq` and an older `iat`) is
//! ignored ([`replaces`]).

use serde::Serialize;

use crate::config::{ConsentLogMode, Identity, Role, TrustedKey};
use crate::ids::Seq;
use crate::jws::{self, JwsError};
use crate::protocol::{ConsentLogStatus, ErrorCode};

/// At most this many missing ranges are reported (SPEC).
pub const MAX_MISSING_RANGES: usize = 32;

/// Largest head accepted, in bytes (a head is about 300).
pub const MAX_HEAD_BYTES: usize = 4096;

/// A verified consent-log head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The highest entry the log holds.
    pub seq: Seq,
    /// Entries below it are no longer needed: counted as applied.
    pub base: Seq,
    /// When the back-end signed it (unix seconds).
    pub iat: i64,
    /// When it stops being valid (unix seconds).
    pub exp: i64,
}

/// Why a head was refused. [`HeadError::code`] is the SPEC error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not a well-formed head JWS, or a claim is missing or mistyped.
    #[error("malformed consent-log head: {0}")]
    Malformed(String),
    /// The header `kid` is not a trusted key.
    #[error("kid {0:?} is not a trusted key")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("signature does not verify under the key named by kid")]
    BadSignature,
    /// Signed by a key whose role is not `fleet`.
    #[error("key {0:?} may not sign a consent-log head (needs role fleet)")]
    WrongRole(String),
    /// Addressed to another site (or to a single device).
    #[error("consent-log head addressed to {0:?}, not to this site")]
    WrongAudience(Vec<String>),
    /// `iat` ahead of the device clock beyond the skew.
    #[error("consent-log head issued at {iat}, in the future (now {now})")]
    NotYetValid {
        /// The head's `iat`.
        iat: i64,
        /// Time of the check.
        now: i64,
    },
    /// `now >= exp + skew`.
    #[error("consent-log head expired at {exp} (now {now})")]
    Expired {
        /// The head's `exp`.
        exp: i64,
        /// Time of the check.
        now: i64,
    },
    /// Larger than [`MAX_HEAD_BYTES`].
    #[error("consent-log head is {0} bytes, at most {MAX_HEAD_BYTES} accepted")]
    TooLarge(usize),
}

impl HeadError {
    /// The SPEC error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            HeadError::Malformed(_) => ErrorCode::Malformed,
            HeadError::UnknownKey(_) => ErrorCode::UnknownKey,
            HeadError::BadSignature => ErrorCode::BadSignature,
            HeadError::WrongRole(_) => ErrorCode::WrongRole,
            HeadError::WrongAudience(_) => ErrorCode::WrongAudience,
            HeadError::NotYetValid { .. } => ErrorCode::NotYetValid,
            HeadError::Expired { .. } => ErrorCode::Expired,
            HeadError::TooLarge(_) => ErrorCode::TooLarge,
        }
    }
}

impl From<JwsError> for HeadError {
    fn from(e: JwsError) -> Self {
        match e {
            JwsError::Malformed(m) | JwsError::BadSigningKey(m) => HeadError::Malformed(m),
            JwsError::UnknownKey(k) => HeadError::UnknownKey(k),
            JwsError::BadSignature => HeadError::BadSignature,
        }
    }
}

/// Verifies a head as received on the head topic; `skew` in seconds.
pub fn verify_head(
    payload: &[u8],
    trust: &[TrustedKey],
    me: &Identity,
    skew: i64,
    now: i64,
) -> Result<Head, HeadError> {
    if payload.len() > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge(payload.len()));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|_| HeadError::Malformed("payload is not UTF-8".into()))?;
    let verified = jws::verify(text.trim(), trust)?;
    if verified.role != Role::Fleet {
        return Err(HeadError::WrongRole(verified.kid));
    }
    let c = &verified.claims;
    let int = |name: &str| jws::int_claim(c, name).map_err(HeadError::Malformed);
    let seq_of = |name: &str| {
        int(name).and_then(|n| {
            u64::try_from(n)
                .map(Seq::new)
                .map_err(|_| HeadError::Malformed(format!("claim {name} must not be negative")))
        })
    };
    let (seq, base, iat, exp) = (seq_of("seq")?, seq_of("base")?, int("iat")?, int("exp")?);
    let aud = jws::audience(c).map_err(HeadError::Malformed)?;
    if !aud.iter().all(|a| *a == me.site_id) {
        return Err(HeadError::WrongAudience(aud));
    }
    if exp <= iat {
        return Err(HeadError::Malformed(format!(
            "claim exp ({exp}) is not after iat ({iat})"
        )));
    }
    if iat > now.saturating_add(skew) {
        return Err(HeadError::NotYetValid { iat, now });
    }
    if now >= exp.saturating_add(skew) {
        return Err(HeadError::Expired { exp, now });
    }
    if base.get() > seq.get().saturating_add(1) {
        return Err(HeadError::Malformed(format!(
            "claim base ({base}) is above seq + 1 ({seq} + 1)"
        )));
    }
    Ok(Head {
        seq,
        base,
        iat,
        exp,
    })
}

/// Whether `new` replaces the head the device holds: a higher `seq`, or the
/// same `seq` signed again (not earlier). A lower `seq`, or the same one
/// with an older `iat`, is ignored (a replayed head).
pub fn replaces(current: Option<&Head>, new: &Head) -> bool {
    match current {
        None => true,
        Some(cur) => new.seq > cur.seq || (new.seq == cur.seq && new.iat >= cur.iat),
    }
}

/// The head's claims as the back-end signs them.
#[derive(Debug, Serialize)]
struct HeadClaims<'a> {
    aud: &'a str,
    seq: Seq,
    base: Seq,
    iat: i64,
    exp: i64,
}

/// Signs a head for `site` (the fleet tool; any JOSE library does the same).
pub fn sign_head(site: &str, head: &Head, kid: &str, pkcs8: &[u8]) -> Result<String, JwsError> {
    let claims = HeadClaims {
        aud: site,
        seq: head.seq,
        base: head.base,
        iat: head.iat,
        exp: head.exp,
    };
    jws::sign(&claims, kid, pkcs8)
}

/// What the sync decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct SyncInput<'a> {
    /// The highest head seen (kept across connections and restarts).
    pub head: Option<&'a Head>,
    /// Whether that head arrived on the current broker connection.
    pub head_fresh: bool,
    /// Applied seqs as inclusive ranges `(lo, hi)`, sorted, disjoint (may
    /// leave out ranges entirely below the head's `base`).
    pub applied: &'a [(u64, u64)],
    /// `[consent] head_max_age` in seconds.
    pub head_max_age_s: i64,
    /// Now (unix seconds).
    pub now: i64,
}

/// Where the device stands in its site's log: the status `consent_log` object.
pub fn sync(input: &SyncInput<'_>) -> ConsentLogStatus {
    let Some(head) = input.head else {
        return ConsentLogStatus {
            in_sync: false,
            applied: 0,
            head: 0,
            missing: Vec::new(),
            head_age_s: 0,
        };
    };
    let age = input.now.saturating_sub(head.iat).max(0);
    let base = head.base.get().max(1);
    let top = head.seq.get();
    // The highest seq with every entry from base up to it applied.
    let mut applied = base - 1;
    for &(lo, hi) in input.applied {
        if lo <= applied.saturating_add(1) && hi > applied {
            applied = hi;
        }
    }
    // The gaps in [base, top].
    let mut missing = Vec::new();
    let mut next = base;
    let mut truncated = false;
    for &(lo, hi) in input.applied {
        if next > top {
            break;
        }
        if hi < next {
            continue;
        }
        if lo > next {
            if missing.len() == MAX_MISSING_RANGES {
                truncated = true;
                break;
            }
            missing.push([next, (lo - 1).min(top)]);
        }
        next = next.max(hi.saturating_add(1));
    }
    if next <= top && !truncated && missing.len() < MAX_MISSING_RANGES {
        missing.push([next, top]);
    }
    let in_sync =
        input.head_fresh && age <= input.head_max_age_s && missing.is_empty() && !truncated;
    ConsentLogStatus {
        in_sync,
        applied,
        head: top,
        missing,
        head_age_s: u64::try_from(age).unwrap_or(0),
    }
}

/// Whether uploads wait: the log is required and the device is out of sync.
pub fn holds_uploads(mode: ConsentLogMode, status: &ConsentLogStatus) -> bool {
    mode == ConsentLogMode::Required && !status.in_sync
}

/// The status object in words, for `facegate ctl status`:
/// "in sync: head 5, applied 5, head 2 min old" or
/// "out of sync: missing 2–3, head 5 min old (head 5, applied 1)".
/// `mode` and `head_max_age_s` come from the local config when known.
pub fn describe(
    status: &ConsentLogStatus,
    mode: Option<ConsentLogMode>,
    head_max_age_s: Option<u64>,
) -> String {
    let age = age_words(status.head_age_s);
    let held = match mode {
        Some(ConsentLogMode::Required) => "; uploads held",
        Some(ConsentLogMode::Off) => "; not required ([consent] log = \"off\")",
        None => "",
    };
    if status.in_sync {
        return format!(
            "in sync: head {}, applied {}, head {age} old",
            status.head, status.applied
        );
    }
    if status.head == 0 && status.head_age_s == 0 {
        return format!("out of sync: no head received yet{held}");
    }
    let mut why = Vec::new();
    if !status.missing.is_empty() {
        let ranges: Vec<String> = status
            .missing
            .iter()
            .map(|[a, b]| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}\u{2013}{b}")
                }
            })
            .collect();
        why.push(format!("missing {}", ranges.join(", ")));
    }
    match head_max_age_s {
        Some(max) if status.head_age_s > max => why.push(format!(
            "head {age} old, older than head_max_age {}",
            age_words(max)
        )),
        _ if status.missing.is_empty() => why.push(format!(
            "no head on this connection yet (last one {age} old)"
        )),
        _ => why.push(format!("head {age} old")),
    }
    format!(
        "out of sync: {} (head {}, applied {}){held}",
        why.join(", "),
        status.head,
        status.applied
    )
}

/// "42 s", "5 min", "3 h", "2 d".
fn age_words(s: u64) -> String {
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

#[cfg(test)]
mod tests;
