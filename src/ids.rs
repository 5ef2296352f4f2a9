//! Identifier newtypes, so a subject id, a capture id and a command id cannot
//! be mixed up across module boundaries.
//!
//! Each serializes as the bare value it wraps (a JSON string, or a number for
//! [`Seq`]), so wire and storage formats are the same as with plain strings.
//! Only [`SubjectId`] has a syntax of its own (SPEC: `[A-Za-z0-9._:-]{1,128}`),
//! checked by its constructor and when it is deserialized.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest subject id (SPEC).
pub const MAX_SUBJECT_LEN: usize = 128;

/// A subject id: `[A-Za-z0-9._:-]{1,128}`. Holding one means it was checked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubjectId(String);

/// A string that is not a valid [`SubjectId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subject {0:?} is not a valid subject id ([A-Za-z0-9._:-]{{1,128}})")]
pub struct BadSubjectId(pub String);

impl SubjectId {
    /// The syntax of a subject id, for messages.
    pub const PATTERN: &'static str = "[A-Za-z0-9._:-]{1,128}";

    /// Checks `s` and wraps it.
    pub fn new(s: impl Into<String>) -> Result<SubjectId, BadSubjectId> {
        let s = s.into();
        if Self::is_valid(&s) {
            Ok(SubjectId(s))
        } else {
            Err(BadSubjectId(s))
        }
    }

    /// True when `s` is a valid subject id: `[A-Za-z0-9._:-]{1,128}`.
    pub fn is_valid(s: &str) -> bool {
        (1..=MAX_SUBJECT_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SubjectId {
    type Error = BadSubjectId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        SubjectId::new(s)
    }
}

impl TryFrom<&str> for SubjectId {
    type Error = BadSubjectId;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        SubjectId::new(s)
    }
}

impl std::str::FromStr for SubjectId {
    type Err = BadSubjectId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SubjectId::new(s)
    }
}

/// Serialized as the bare string, like `#[serde(transparent)]`.
impl Serialize for SubjectId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Deserialized from the bare string, refusing an invalid one.
impl<'de> Deserialize<'de> for SubjectId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SubjectId::new(s).map_err(serde::de::Error::custom)
    }
}

/// Defines a string id without a syntax of its own.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps `s`.
            pub fn new(s: impl Into<String>) -> Self {
                $name(s.into())
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }
    };
}

string_id!(
    /// A capture id (a UUID in practice), stable across upload retries.
    CaptureId
);

string_id!(
    /// A token or command id (`jti` claim).
    Jti
);

/// Things every string id shares: `Display`, `AsRef<str>`, comparison with strings.
macro_rules! str_like {
    ($($name:ident),*) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    )*};
}

str_like!(SubjectId, CaptureId, Jti);

impl CaptureId {
    /// The id of a capture taken at `captured_at` (unix seconds) whose
    /// content hashes to `digest`: a UUID of version 8 (RFC 9562, custom)
    /// whose first 48 bits are the capture time (big-endian, as version 7
    /// puts its time; clamped to 0..2^48) and the rest the digest's first
    /// bytes. The same capture always gets the same id (stable across retries
    /// and restarts), and ids sort by capture time: the outbox's index of
    /// capture ids is then written in order, so the deletes after PUBACK and
    /// the lookups by id touch a few neighbouring index pages instead of one
    /// page per capture (BENCHMARKS K, twelfth round).
    pub fn derive(captured_at: i64, digest: &[u8; 32]) -> CaptureId {
        let seconds = u64::try_from(captured_at).unwrap_or(0).min((1 << 48) - 1);
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&seconds.to_be_bytes()[2..]);
        bytes[6..].copy_from_slice(&digest[..10]);
        CaptureId(
            uuid::Builder::from_custom_bytes(bytes)
                .into_uuid()
                .to_string(),
        )
    }
}

/// A position in the site consent log (`seq` claim: 1, 2, 3, … per site).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(u64);

impl Seq {
    /// Wraps `n`.
    pub const fn new(n: u64) -> Self {
        Seq(n)
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for Seq {
    fn from(n: u64) -> Self {
        Seq(n)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_id_syntax() {
        let ok = [
            "S-1",
            "a",
            "a.b_c:d-E9",
            &"s".repeat(MAX_SUBJECT_LEN),
            "0",
            "...",
        ];
        for s in ok {
            assert_eq!(SubjectId::new(s).unwrap().as_str(), s, "{s:?}");
        }
        let bad = [
            String::new(),
            "s".repeat(MAX_SUBJECT_LEN + 1),
            "S 1".into(),
            "a/b".into(),
            "a\nb".into(),
            "é".into(),
            "a@b".into(),
            "\"".into(),
        ];
        for s in bad {
            let err = SubjectId::new(s.clone()).unwrap_err();
            assert_eq!(err, BadSubjectId(s.clone()));
            assert!(err.to_string().contains("[A-Za-z0-9._:-]{1,128}"), "{err}");
            assert!(!SubjectId::is_valid(&s));
        }
    }

    #[test]
    fn subject_id_serde_is_a_bare_string_and_validates() {
        let s = SubjectId::new("S-1").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), r#""S-1""#);
        assert_eq!(serde_json::from_str::<SubjectId>(r#""S-1""#).unwrap(), s);
        let err = serde_json::from_str::<SubjectId>(r#""a b""#).unwrap_err();
        assert!(err.to_string().contains("not a valid subject id"), "{err}");
        assert!(serde_json::from_str::<SubjectId>("5").is_err());
        assert_eq!(s.to_string(), "S-1");
        assert_eq!(s, "S-1");
        assert_eq!("S-2".parse::<SubjectId>().unwrap(), "S-2");
        assert!(SubjectId::try_from("").is_err());
    }

    #[test]
    fn string_ids_are_transparent() {
        let c = CaptureId::from("5f0c-uuid");
        assert_eq!(serde_json::to_string(&c).unwrap(), r#""5f0c-uuid""#);
        assert_eq!(
            serde_json::from_str::<CaptureId>(r#""5f0c-uuid""#).unwrap(),
            c
        );
        assert_eq!(c.as_str(), "5f0c-uuid");
        assert_eq!(c.to_string(), "5f0c-uuid");
        let j = Jti::new("cmd-1");
        assert_eq!(
            serde_json::to_value(&j).unwrap(),
            serde_json::json!("cmd-1")
        );
        assert_eq!(String::from(j), "cmd-1");
        // In a JSON object the newtypes look exactly like the strings they replace.
        let ids = vec![CaptureId::from("a"), CaptureId::from("b")];
        assert_eq!(serde_json::to_string(&ids).unwrap(), r#"["a","b"]"#);
    }

    #[test]
    fn seq_is_a_bare_number() {
        let s = Seq::new(42);
        assert_eq!(serde_json::to_string(&s).unwrap(), "42");
        assert_eq!(serde_json::from_str::<Seq>("42").unwrap(), s);
        assert!(serde_json::from_str::<Seq>("-1").is_err());
        assert!(serde_json::from_str::<Seq>(r#""42""#).is_err());
        assert_eq!(s.get(), 42);
        assert_eq!(s.to_string(), "42");
        assert!(Seq::from(1) < Seq::new(2));
        assert_eq!(Seq::default().get(), 0);
    }

    fn digest(n: u8) -> [u8; 32] {
        let mut d = [0u8; 32];
        d.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &[n]).as_ref());
        d
    }

    #[test]
    fn a_derived_capture_id_is_a_version_8_uuid_and_the_same_for_the_same_capture() {
        let id = CaptureId::derive(1_795_858_382, &digest(1));
        let uuid = uuid::Uuid::parse_str(id.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 8);
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(id, CaptureId::derive(1_795_858_382, &digest(1)));
        assert_ne!(id, CaptureId::derive(1_795_858_382, &digest(2)));
        assert_ne!(id, CaptureId::derive(1_795_858_383, &digest(1)));
        // The time is the first 48 bits, big-endian.
        assert_eq!(&uuid.as_bytes()[..6], &1_795_858_382u64.to_be_bytes()[2..]);
    }

    #[test]
    fn derived_capture_ids_sort_by_capture_time_as_stored_text() {
        // Out-of-range times are clamped, not wrapped.
        let times = [
            i64::MIN,
            -1,
            0,
            1,
            255,
            256,
            65_535,
            1_795_858_382,
            1_795_858_383,
            (1 << 48) - 1,
            1 << 48,
            i64::MAX,
        ];
        let clamped = |t: i64| t.clamp(0, (1 << 48) - 1);
        let mut prev: Option<(i64, CaptureId)> = None;
        for &t in &times {
            for n in 0..16u8 {
                let id = CaptureId::derive(t, &digest(n));
                if let Some((pt, pid)) = &prev {
                    if clamped(t) > clamped(*pt) {
                        assert!(id.as_str() > pid.as_str(), "{t}: {id} after {pid}");
                    }
                }
                prev = Some((t, id));
            }
        }
    }
}
