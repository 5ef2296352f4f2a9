//! Captures in parts (SPEC "Broker limits and large captures"), pure.
//!
//! - [`publish_packet_size`]: the exact size of the MQTT PUBLISH packet that
//!   carries a payload, the one number compared with `[mqtt] max_packet_size`;
//! - [`split`]: whether a capture goes whole or in how many parts, a pure
//!   function of the capture's envelope fields, the topic and the limit, so
//!   every re-send after a reconnect or restart makes the same parts;
//! - [`slice`]: which bytes of the image part `i` of `n` carries;
//! - [`Reassembler`]: the back-end side, joining parts in `part` order and
//!   checking the whole image's `sha256`.
//!
//! The consent id an envelope quotes is chosen when each part is handed over
//! and may change between parts (a newer consent that lasts longer), so the
//! split reserves room for the longest consent id there can be
//! ([`MAX_CONSENT_ID_JSON`]) instead of measuring the current one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use super::Envelope;
use crate::ids::CaptureId;

/// The most bytes a consent id (`jti`: 1 to 128 characters, no control
/// characters) takes inside a JSON string: 128 characters of at most 4 UTF-8
/// bytes each (serde_json writes them as they are; its only escapes, `\"`
/// and `\\`, take 2 bytes).
pub const MAX_CONSENT_ID_JSON: usize = 128 * 4;

/// One upload message: a whole capture, or one part of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Piece {
    /// The capture it carries (all of it or a part).
    pub capture_id: CaptureId,
    /// Which part, for a capture sent in parts; `None` for a whole capture.
    pub part: Option<PartNo>,
}

impl Piece {
    /// A whole capture.
    pub fn whole(capture_id: CaptureId) -> Piece {
        Piece {
            capture_id,
            part: None,
        }
    }

    /// Part `index` of `of` of a capture.
    pub fn part(capture_id: CaptureId, index: u32, of: u32) -> Piece {
        Piece {
            capture_id,
            part: Some(PartNo { index, of }),
        }
    }
}

/// Part `index` (0-based) of `of` parts: the envelope's `part` and `parts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartNo {
    /// 0-based index of the part.
    pub index: u32,
    /// How many parts the capture has.
    pub of: u32,
}

/// How a capture goes out under a packet limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// One envelope without `part`/`parts`.
    Whole,
    /// This many parts (at least 2).
    Parts(u32),
}

/// Why a capture cannot be sent under a packet limit at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// Not even an envelope with a few image bytes fits.
    #[error("a packet limit of {max} bytes leaves no room for image bytes in an envelope of {overhead} bytes on this topic")]
    LimitTooSmall {
        /// The packet limit.
        max: usize,
        /// The envelope without image (consent id room included) and the topic.
        overhead: usize,
    },
    /// More parts than a `u32` counts (an image of terabytes).
    #[error("the image would need more than {} parts", u32::MAX)]
    TooManyParts,
}

/// Length in bytes of MQTT's variable-length encoding of `n` (the
/// "remaining length" of the fixed header): 1 to 4 bytes.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The size of the MQTT 3.1.1 PUBLISH packet (QoS 1, as every facegate
/// publish is) that carries `payload_len` bytes on a topic of `topic_len`
/// bytes: the fixed header byte, the remaining length (1 to 4 bytes), the
/// topic's 2-byte length and the topic, the 2-byte packet id, the payload.
/// This is what brokers and rumqttc compare with their packet limits.
pub fn publish_packet_size(topic_len: usize, payload_len: usize) -> usize {
    let remaining = 2 + topic_len + 2 + payload_len;
    1 + varint_len(remaining) + remaining
}

/// The largest payload whose PUBLISH on a topic of `topic_len` bytes is at
/// most `max` bytes, if any.
pub fn max_payload(topic_len: usize, max: usize) -> Option<usize> {
    let fixed = 1 + 2 + topic_len + 2;
    // The remaining length takes 1 to 4 bytes: try the smallest payloads
    // first would be slower; instead start from the most room and step down
    // at most 3 times as the length prefix grows.
    let mut payload = max.checked_sub(fixed + 1)?;
    while publish_packet_size(topic_len, payload) > max {
        payload = payload.checked_sub(1)?;
    }
    Some(payload)
}

/// Room left for the envelope's fields other than the image in
/// [`surely_whole_up_to`]: far more than a capture's fields take (ids,
/// names, the consent id, the digest), so a capture of at most that stored
/// size is sent whole whatever its fields hold.
pub const FIELDS_ALLOWANCE: usize = 8 * 1024;

/// A stored size (`bytes` of the outbox: sealed metadata and sealed image,
/// each at least as long as what it seals) at or below which a capture is
/// certainly sent whole under `max` on a topic of `topic_len` bytes: the
/// hand-over skips reading larger captures while it has no room to start
/// another capture in parts. 0 when no image fits whole.
pub fn surely_whole_up_to(topic_len: usize, max: usize) -> usize {
    max_payload(topic_len, max)
        .and_then(|room| room.checked_sub(FIELDS_ALLOWANCE))
        .map_or(0, |chars| chars / 4 * 3)
}

/// Base64 (padded) length of `n` bytes.
fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// The JSON length of `header` (its `image` and `consent_id` ignored) with
/// `part`, plus room for the longest consent id: what an envelope costs
/// besides the base64 of its image bytes.
fn overhead(header: &Envelope, part: Option<PartNo>) -> usize {
    let shape = Envelope {
        consent_id: String::new(),
        image: Default::default(),
        part: part.map(|p| p.index),
        parts: part.map(|p| p.of),
        ..header.clone()
    };
    shape.to_bytes().len() + MAX_CONSENT_ID_JSON
}

/// How a capture of `image_len` bytes goes out on a topic of `topic_len`
/// bytes when no packet may exceed `max` bytes. `header` is its envelope;
/// only the fields other than `image`, `consent_id`, `part` and `parts`
/// count (so the caller may pass it with an empty image).
///
/// Whole when the whole envelope fits. Otherwise `n` parts, the fewest whose
/// slices ([`slice`]) fit: each part's base64 slice has at most the room an
/// envelope with `"part": n-1, "parts": n` leaves. The result depends only on
/// the arguments, so a capture is split the same way every time it is sent
/// under the same limit.
pub fn split(
    header: &Envelope,
    image_len: usize,
    topic_len: usize,
    max: usize,
) -> Result<Split, SplitError> {
    let too_small = |overhead: usize| SplitError::LimitTooSmall {
        max,
        overhead: overhead + topic_len,
    };
    let whole = overhead(header, None);
    let room = max_payload(topic_len, max).ok_or(too_small(whole))?;
    if whole + base64_len(image_len) <= room {
        return Ok(Split::Whole);
    }
    // The part fields grow with the number of digits of n: start with 2
    // parts and widen until the count found has no more digits than assumed.
    let mut assumed: u32 = 2;
    loop {
        let cost = overhead(
            header,
            Some(PartNo {
                index: assumed - 1,
                of: assumed,
            }),
        );
        let chars = room.checked_sub(cost).ok_or(too_small(cost))?;
        let slice = chars / 4 * 3;
        if slice == 0 {
            return Err(too_small(cost));
        }
        let need = u32::try_from(image_len.div_ceil(slice).max(2))
            .map_err(|_| SplitError::TooManyParts)?;
        if need.to_string().len() <= assumed.to_string().len() {
            return Ok(Split::Parts(need));
        }
        assumed = need;
    }
}

/// The bytes of an image of `image_len` bytes that part `index` of `parts`
/// carries: consecutive slices of `ceil(image_len / parts)` bytes, the last
/// one shorter. For the `parts` that [`split`] gives, none is empty.
pub fn slice(image_len: usize, parts: u32, index: u32) -> Range<usize> {
    let size = image_len.div_ceil(parts.max(1) as usize);
    let start = (index as usize).saturating_mul(size).min(image_len);
    let end = start.saturating_add(size).min(image_len);
    start..end
}

/// Why a received message cannot be taken as (part of) a capture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    /// `part` without `parts` or the reverse, `parts` of 0, or `part` not
    /// below `parts`.
    #[error("capture {capture_id}: bad part numbers (part {part:?} of {parts:?})")]
    BadPart {
        /// The envelope's `capture_id`.
        capture_id: String,
        /// Its `part`.
        part: Option<u32>,
        /// Its `parts`.
        parts: Option<u32>,
    },
    /// The joined image does not have the envelope's `sha256`; nothing is
    /// kept of it.
    #[error("capture {capture_id}: the image does not match its sha256")]
    DigestMismatch {
        /// The envelope's `capture_id`.
        capture_id: String,
    },
}

/// Joins the parts of captures as a back-end receives them (in any order,
/// with duplicates, interleaved with other captures) and gives back each
/// capture once, whole, its `sha256` checked. Parts are collected per
/// `capture_id` and `parts` (a device whose packet limit changed between
/// restarts may start a capture over with another split; the first complete
/// set wins). A capture already given back is not given again.
#[derive(Debug, Default)]
pub struct Reassembler {
    /// Parts received so far: (capture id, parts) → part index → envelope.
    partial: HashMap<(String, u32), BTreeMap<u32, Envelope>>,
    /// Captures already given back.
    done: HashSet<String>,
}

impl Reassembler {
    /// An empty reassembler.
    pub fn new() -> Reassembler {
        Reassembler::default()
    }

    /// Takes one received envelope. Returns the whole capture (no `part` or
    /// `parts`, `image` the whole image) when this message completes it,
    /// `None` while parts are missing or when it was already given back.
    pub fn add(&mut self, env: Envelope) -> Result<Option<Envelope>, ReassemblyError> {
        if self.done.contains(&env.capture_id) {
            return Ok(None);
        }
        let whole = match (env.part, env.parts) {
            (None, None) => env,
            (Some(part), Some(parts)) if part < parts => {
                let key = (env.capture_id.clone(), parts);
                let set = self.partial.entry(key.clone()).or_default();
                set.entry(part).or_insert(env);
                if set.len() < parts as usize {
                    return Ok(None);
                }
                let set = self.partial.remove(&key).unwrap_or_default();
                join(set)
            }
            (part, parts) => {
                return Err(ReassemblyError::BadPart {
                    capture_id: env.capture_id,
                    part,
                    parts,
                })
            }
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, &whole.image);
        if digest.as_ref() != whole.sha256 {
            return Err(ReassemblyError::DigestMismatch {
                capture_id: whole.capture_id,
            });
        }
        self.partial.retain(|(id, _), _| *id != whole.capture_id);
        self.done.insert(whole.capture_id.clone());
        Ok(Some(whole))
    }

    /// How many captures have parts waiting for the rest.
    pub fn incomplete(&self) -> usize {
        self.partial.len()
    }
}

/// The whole capture from its complete set of parts (keyed by index): the
/// first part's fields, the slices concatenated in `part` order.
fn join(parts: BTreeMap<u32, Envelope>) -> Envelope {
    let mut image = Vec::new();
    let mut first = None;
    for (_, env) in parts {
        image.extend_from_slice(&env.image);
        if first.is_none() {
            first = Some(env);
        }
    }
    let first = first.unwrap_or_else(empty);
    Envelope {
        image,
        part: None,
        parts: None,
        ..first
    }
}

fn empty() -> Envelope {
    Envelope {
        v: super::WIRE_VERSION,
        capture_id: String::new(),
        site: String::new(),
        device: String::new(),
        subject: String::new(),
        consent_id: String::new(),
        captured_at: 0,
        camera: String::new(),
        content_type: String::new(),
        sha256: [0; 32],
        image: Default::default(),
        part: None,
        parts: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(consent_id: &str) -> Envelope {
        Envelope {
            v: 1,
            capture_id: "7d9f2c1e-0000-8000-8000-000000000001".into(),
            site: "lobby".into(),
            device: "term-01".into(),
            subject: "S-123".into(),
            consent_id: consent_id.into(),
            captured_at: 1_795_858_382,
            camera: "cam-1".into(),
            content_type: "image/jpeg".into(),
            sha256: [0; 32],
            image: Default::default(),
            part: None,
            parts: None,
        }
    }

    /// The envelopes a device sends for `image`: whole or its parts, quoting
    /// `consent_id`.
    fn envelopes(image: &[u8], consent_id: &str, topic_len: usize, max: usize) -> Vec<Envelope> {
        let digest = ring::digest::digest(&ring::digest::SHA256, image);
        let mut base = header(consent_id);
        base.sha256.copy_from_slice(digest.as_ref());
        match split(&base, image.len(), topic_len, max).unwrap() {
            Split::Whole => vec![Envelope {
                image: image.to_vec(),
                ..base
            }],
            Split::Parts(n) => (0..n)
                .map(|i| Envelope {
                    image: image[slice(image.len(), n, i)].to_vec(),
                    part: Some(i),
                    parts: Some(n),
                    ..base.clone()
                })
                .collect(),
        }
    }

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn the_publish_packet_size_counts_every_byte() {
        // fixed header 1 + remaining length + 2 + topic + 2 + payload
        assert_eq!(publish_packet_size(1, 0), 1 + 1 + 2 + 1 + 2);
        assert_eq!(publish_packet_size(10, 113), 1 + 1 + 127);
        assert_eq!(publish_packet_size(10, 114), 1 + 2 + 128);
        assert_eq!(publish_packet_size(10, 16_369), 1 + 2 + 16_383);
        assert_eq!(publish_packet_size(10, 16_370), 1 + 3 + 16_384);
        assert_eq!(publish_packet_size(10, 2_097_137), 1 + 3 + 2_097_151);
        assert_eq!(publish_packet_size(10, 2_097_138), 1 + 4 + 2_097_152);
    }

    #[test]
    fn the_largest_payload_is_exact_at_every_length_prefix_boundary() {
        for topic in [0, 1, 30, 200] {
            for max in (0..300).chain(16_000..16_800).chain([131_072, 2_097_160]) {
                match max_payload(topic, max) {
                    Some(p) => {
                        assert!(publish_packet_size(topic, p) <= max, "{topic} {max}");
                        assert!(publish_packet_size(topic, p + 1) > max, "{topic} {max}");
                    }
                    None => assert!(publish_packet_size(topic, 0) > max, "{topic} {max}"),
                }
            }
        }
    }

    #[test]
    fn a_capture_that_fits_goes_whole_and_one_that_does_not_goes_in_parts() {
        let topic = "facegate/lobby/term-01/captures".len();
        let small = envelopes(&image(1000), "c", topic, 131_072);
        assert_eq!(small.len(), 1);
        assert_eq!((small[0].part, small[0].parts), (None, None));
        let big = envelopes(&image(300_000), "c", topic, 131_072);
        assert_eq!(
            big.len(),
            4,
            "300 kB is 400 kB in base64: 4 packets of 128 KiB"
        );
        for (i, e) in big.iter().enumerate() {
            assert_eq!((e.part, e.parts), (Some(i as u32), Some(4)));
        }
    }

    /// Over image sizes around every boundary, limits, topic lengths and
    /// consent ids from the shortest to the longest and widest: every
    /// envelope's packet fits, parts are never empty, the slices are
    /// consecutive and make the image, and n is the fewest that fit.
    #[test]
    fn every_envelope_fits_and_the_parts_make_the_image() {
        let widest = "\u{10FFFF}".repeat(128);
        let quoted = "\"".repeat(128);
        for max in [4096, 5000, 65_536, 131_072] {
            for topic in [10, 31, 200] {
                let room = max_payload(topic, max).unwrap();
                let whole_limit = (room - overhead(&header(""), None)) / 4 * 3;
                let sizes = [1, 2, 3, 4, whole_limit - 1, whole_limit, whole_limit + 1]
                    .into_iter()
                    .chain((1..40).map(|k| k * 997 + max))
                    .chain([300_000, 1_000_003]);
                for len in sizes {
                    let img = image(len);
                    let mut counts = Vec::new();
                    for consent in ["k", quoted.as_str(), widest.as_str()] {
                        let out = envelopes(&img, consent, topic, max);
                        counts.push(out.len());
                        let mut joined = Vec::new();
                        for e in &out {
                            let size = publish_packet_size(topic, e.to_bytes().len());
                            assert!(size <= max, "len {len} max {max} topic {topic}: {size}");
                            assert!(!e.image.is_empty() || len == 0);
                            joined.extend_from_slice(&e.image);
                        }
                        assert_eq!(joined, img, "len {len} max {max}");
                    }
                    assert!(
                        counts.iter().all(|c| *c == counts[0]),
                        "the consent id does not change the split"
                    );
                    let n = counts[0] as u32;
                    let digits = |x: u32| x.to_string().len();
                    if n > 2 && digits(n - 2) == digits(n - 1) && digits(n - 1) == digits(n) {
                        // One part fewer would not fit (where the part fields
                        // are as wide, so the comparison is exact).
                        let fewer = n - 1;
                        let biggest = slice(len, fewer, 0).len();
                        let e = Envelope {
                            image: img[..biggest].to_vec(),
                            consent_id: widest.clone(),
                            part: Some(fewer - 1),
                            parts: Some(fewer),
                            ..header("")
                        };
                        assert!(
                            publish_packet_size(topic, e.to_bytes().len()) > max,
                            "{fewer} parts would have fitted (len {len} max {max})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn many_parts_widen_the_part_fields() {
        // 4 KiB packets and a 2 MB image: hundreds of parts, three digits each.
        let topic = 31;
        let img = image(2_000_000);
        let out = envelopes(&img, "k", topic, 4096);
        assert!(out.len() > 100, "{}", out.len());
        for e in &out {
            assert!(publish_packet_size(topic, e.to_bytes().len()) <= 4096);
        }
    }

    #[test]
    fn a_limit_without_room_for_image_bytes_is_an_error() {
        assert!(matches!(
            split(&header(""), 10, 31, 600),
            Err(SplitError::LimitTooSmall { .. })
        ));
        assert!(matches!(
            split(&header(""), 10, 31, 3),
            Err(SplitError::LimitTooSmall { .. })
        ));
    }

    /// The smallest `[mqtt] max_packet_size` splits the largest envelope the
    /// config and the id rules allow, on the longest topic.
    #[test]
    fn the_smallest_limit_leaves_room_for_the_largest_header() {
        let id64 = "x".repeat(64);
        let header = Envelope {
            site: id64.clone(),
            device: id64.clone(),
            subject: "s".repeat(crate::ids::MAX_SUBJECT_LEN),
            camera: id64.clone(),
            captured_at: 253_402_300_799,
            ..header("")
        };
        let topic = format!("{id64}/{id64}/{id64}/captures").len();
        let min = crate::config::MIN_MAX_PACKET_SIZE;
        assert!(matches!(
            split(&header, 10_000_000, topic, min),
            Ok(Split::Parts(_))
        ));
        assert_eq!(split(&header, 1, topic, min), Ok(Split::Whole));
    }

    #[test]
    fn the_split_is_the_same_every_time() {
        let h = header("k");
        for len in [200_000, 300_000, 5_000_000] {
            let a = split(&h, len, 31, 131_072).unwrap();
            let b = split(&h, len, 31, 131_072).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn slices_are_consecutive_and_cover_the_image() {
        for len in [2usize, 3, 10, 11, 1000] {
            for n in 2..=len.min(12) as u32 {
                let mut next = 0;
                for i in 0..n {
                    let r = slice(len, n, i);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn parts_reassemble_in_any_order_with_duplicates() {
        let img = image(300_000);
        let mut parts = envelopes(&img, "k", 31, 131_072);
        assert_eq!(parts.len(), 4);
        let small = envelopes(&image(50), "k", 31, 131_072).remove(0);
        let small = Envelope {
            capture_id: "other".into(),
            ..small
        };
        parts.swap(0, 3);
        let mut r = Reassembler::new();
        assert_eq!(r.add(parts[0].clone()), Ok(None));
        assert_eq!(r.add(parts[0].clone()), Ok(None), "a duplicate part");
        assert_eq!(r.add(small.clone()).unwrap().unwrap().image.len(), 50);
        assert_eq!(r.add(parts[1].clone()), Ok(None));
        assert_eq!(r.add(parts[2].clone()), Ok(None));
        assert_eq!(r.incomplete(), 1);
        let whole = r.add(parts[3].clone()).unwrap().expect("complete");
        assert_eq!(&whole.image[..], &img[..]);
        assert_eq!((whole.part, whole.parts), (None, None));
        assert_eq!(r.incomplete(), 0);
        assert_eq!(r.add(parts[1].clone()), Ok(None), "already given back");
        assert_eq!(r.add(small), Ok(None), "a whole duplicate");
    }

    #[test]
    fn a_bad_digest_or_bad_numbers_are_refused() {
        let mut parts = envelopes(&image(300_000), "k", 31, 131_072);
        parts[1].image[0] ^= 1;
        let mut r = Reassembler::new();
        r.add(parts[0].clone()).unwrap();
        r.add(parts[2].clone()).unwrap();
        r.add(parts[3].clone()).unwrap();
        assert!(matches!(
            r.add(parts[1].clone()),
            Err(ReassemblyError::DigestMismatch { .. })
        ));
        for (part, of) in [(Some(4), Some(4)), (Some(0), None), (None, Some(2))] {
            let e = Envelope {
                part,
                parts: of,
                ..parts[0].clone()
            };
            assert!(matches!(
                Reassembler::new().add(e),
                Err(ReassemblyError::BadPart { .. })
            ));
        }
    }

    #[test]
    fn a_capture_up_to_the_surely_whole_size_is_sent_whole() {
        let topic = "facegate/lobby/term-01/captures";
        for max in [4 * 1024, 16 * 1024, 128 * 1024, 256 * 1024, 1 << 20] {
            let bound = surely_whole_up_to(topic.len(), max);
            if max <= FIELDS_ALLOWANCE {
                assert_eq!(bound, 0, "{max}");
                continue;
            }
            assert!(bound > 0, "{max}");
            // The largest fields a capture can carry still fit with it.
            let largest = Envelope {
                subject: "s".repeat(256),
                camera: "c".repeat(256),
                site: "s".repeat(64),
                device: "d".repeat(64),
                ..header(&"k".repeat(MAX_CONSENT_ID_JSON))
            };
            assert_eq!(
                split(&largest, bound, topic.len(), max),
                Ok(Split::Whole),
                "{max}"
            );
            // And the bound is not far below the real threshold.
            assert!(split(&header(""), bound + FIELDS_ALLOWANCE, topic.len(), max).is_ok());
        }
    }
}
