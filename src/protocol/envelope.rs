//! The upload envelope (SPEC "Upload envelope" and "Broker limits and large
//! captures"): one capture per message, or one part of a large capture.

use serde::{Deserialize, Serialize};

use super::fields;

/// One upload message. A whole capture has `part` and `parts` absent; a part
/// carries the `part`-th consecutive slice of the image in `image`, while
/// `sha256` is always the digest of the whole image.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Always [`super::WIRE_VERSION`].
    pub v: u8,
    /// UUID, stable across retries: back-ends drop duplicates by it.
    pub capture_id: String,
    /// The device's site.
    pub site: String,
    /// The device.
    pub device: String,
    /// The subject the capture shows.
    pub subject: String,
    /// `jti` of the consent that allowed the upload.
    pub consent_id: String,
    /// When the camera took it (unix seconds; RFC 3339 on the wire).
    #[serde(with = "fields::rfc3339")]
    pub captured_at: i64,
    /// Camera name from the spool marker.
    pub camera: String,
    /// `image/jpeg` or `image/png`.
    pub content_type: String,
    /// SHA-256 of the whole image (hex on the wire).
    #[serde(with = "fields::sha256_hex")]
    pub sha256: [u8; 32],
    /// The image bytes, or this part's slice of them (base64 on the wire).
    #[serde(with = "fields::base64_std")]
    pub image: Vec<u8>,
    /// 0-based index of this part; absent for a whole capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<u32>,
    /// How many parts the capture was split into; absent for a whole capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
}

/// The fields of an [`Envelope`] before the image, in the same order and
/// with the same encodings (serde writes fields in declaration order).
#[derive(Serialize)]
struct Head<'a> {
    v: u8,
    capture_id: &'a str,
    site: &'a str,
    device: &'a str,
    subject: &'a str,
    consent_id: &'a str,
    #[serde(with = "fields::rfc3339")]
    captured_at: i64,
    camera: &'a str,
    content_type: &'a str,
    #[serde(with = "fields::sha256_hex")]
    sha256: [u8; 32],
}

impl Envelope {
    /// The JSON bytes published on the captures topic. The buffer is
    /// allocated once, at a size the JSON cannot outgrow: a growing buffer
    /// would leave partial copies of the (base64) image in freed memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with(&self.image)
    }

    /// [`Self::to_bytes`] of this envelope with `image` in place of
    /// `self.image` (which is not read): the uplink passes the decrypted
    /// image, or one part's slice of it, without copying it into the
    /// envelope first. The fields before the image are written by serde;
    /// the image is base64-encoded straight into the output buffer (base64
    /// needs no JSON escaping, so it is not scanned for characters to
    /// escape), then `part` and `parts`. Byte for byte what serde writes for
    /// the whole struct (tested), in one buffer that never grows.
    pub fn to_bytes_with(&self, image: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut out = Vec::with_capacity(self.json_len_bound_for(image.len()));
        let head = Head {
            v: self.v,
            capture_id: &self.capture_id,
            site: &self.site,
            device: &self.device,
            subject: &self.subject,
            consent_id: &self.consent_id,
            captured_at: self.captured_at,
            camera: &self.camera,
            content_type: &self.content_type,
            sha256: self.sha256,
        };
        // Serializing plain strings, integers and a valid time cannot fail;
        // a time beyond RFC 3339 gives no bytes, as before.
        if serde_json::to_writer(&mut out, &head).is_err() || out.pop() != Some(b'}') {
            return Vec::new();
        }
        out.extend_from_slice(b",\"image\":\"");
        let start = out.len();
        let Some(n) = base64::encoded_len(image.len(), true) else {
            return Vec::new();
        };
        // SIMD where the CPU has it (chosen at run time), the same bytes as
        // the `base64` crate's standard engine (tested), written straight
        // into the spare capacity (no zeroing of the 4/3 image first).
        base64_simd::STANDARD.encode_append(image, &mut out);
        if out.len() != start + n {
            return Vec::new();
        }
        out.push(b'"');
        // Writing into a Vec cannot fail.
        if let Some(part) = self.part {
            let _ = write!(out, ",\"part\":{part}");
        }
        if let Some(parts) = self.parts {
            let _ = write!(out, ",\"parts\":{parts}");
        }
        out.push(b'}');
        out
    }

    /// An upper bound of the length of [`Self::to_bytes`]: the base64 image,
    /// every text field fully escaped (`\u00XX`, 6 bytes per byte), and
    /// room for the names, the digest, the time and the numbers.
    #[cfg(test)]
    fn json_len_bound(&self) -> usize {
        self.json_len_bound_for(self.image.len())
    }

    /// [`Self::json_len_bound`] for an image of `image_len` bytes.
    fn json_len_bound_for(&self, image_len: usize) -> usize {
        let text: usize = [
            &self.capture_id,
            &self.site,
            &self.device,
            &self.subject,
            &self.consent_id,
            &self.camera,
            &self.content_type,
        ]
        .iter()
        .map(|t| t.len())
        .sum();
        4 * image_len.div_ceil(3) + 6 * text + 512
    }

    /// Parses an envelope as a back-end receives it.
    pub fn from_bytes(payload: &[u8]) -> Result<Envelope, serde_json::Error> {
        serde_json::from_slice(payload)
    }

    /// True when this message is one part of a larger capture.
    pub fn is_part(&self) -> bool {
        self.parts.is_some()
    }
}

/// The image is left out: it may be large and is personal data.
impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("capture_id", &self.capture_id)
            .field("site", &self.site)
            .field("device", &self.device)
            .field("consent_id", &self.consent_id)
            .field("part", &self.part)
            .field("parts", &self.parts)
            .field("image_len", &self.image.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn sample() -> Envelope {
        Envelope {
            v: 1,
            capture_id: "7d9f2c1e-0000-4000-8000-000000000001".into(),
            site: "lobby".into(),
            device: "term-01".into(),
            subject: "S-123".into(),
            consent_id: "c-1".into(),
            captured_at: 1_795_858_382,
            camera: "cam-1".into(),
            content_type: "image/jpeg".into(),
            sha256: [0xab; 32],
            image: vec![0xff, 0xd8, 0xff, 0xd9],
            part: None,
            parts: None,
        }
    }

    #[test]
    fn whole_capture_has_exactly_the_spec_fields() {
        let v: Value = serde_json::from_slice(&sample().to_bytes()).unwrap();
        assert_eq!(
            v,
            json!({
                "v": 1,
                "capture_id": "7d9f2c1e-0000-4000-8000-000000000001",
                "site": "lobby", "device": "term-01", "subject": "S-123",
                "consent_id": "c-1", "captured_at": "2026-11-28T09:33:02Z",
                "camera": "cam-1", "content_type": "image/jpeg",
                "sha256": "ab".repeat(32), "image": "/9j/2Q==",
            })
        );
    }

    #[test]
    fn a_part_carries_part_and_parts_and_round_trips() {
        let e = Envelope {
            part: Some(2),
            parts: Some(3),
            ..sample()
        };
        let v: Value = serde_json::from_slice(&e.to_bytes()).unwrap();
        assert_eq!(v["part"], 2);
        assert_eq!(v["parts"], 3);
        assert!(e.is_part() && !sample().is_part());
        assert_eq!(Envelope::from_bytes(&e.to_bytes()).unwrap(), e);
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        let mut v: Value = serde_json::from_slice(&sample().to_bytes()).unwrap();
        v["sha256"] = json!("xyz");
        let err = Envelope::from_bytes(v.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
        let mut v: Value = serde_json::from_slice(&sample().to_bytes()).unwrap();
        v["captured_at"] = json!("yesterday");
        assert!(Envelope::from_bytes(v.to_string().as_bytes()).is_err());
    }

    #[test]
    fn the_json_is_written_into_one_buffer_that_never_grows() {
        let cases = [
            sample(),
            Envelope {
                image: (0..=255u8).cycle().take(100_000).collect(),
                camera: "\u{1}\"\\\u{7f}é".repeat(20),
                part: Some(u32::MAX),
                parts: Some(u32::MAX),
                captured_at: i64::from(i32::MIN),
                ..sample()
            },
        ];
        for e in cases {
            let bytes = e.to_bytes();
            assert_eq!(Envelope::from_bytes(&bytes).unwrap(), e);
            // A buffer that had to grow would have a larger capacity.
            assert_eq!(bytes.capacity(), e.json_len_bound(), "{e:?}");
            assert!(bytes.len() <= bytes.capacity());
        }
    }

    /// The hand-written image and part fields give exactly serde's bytes
    /// for the whole struct (the wire format of SPEC "Upload envelope").
    #[test]
    fn the_bytes_are_serdes_bytes_for_every_shape() {
        let images: [Vec<u8>; 5] = [
            vec![],
            vec![0xff],
            vec![0xff, 0xd8],
            vec![0xff, 0xd8, 0xff],
            (0..=255u8).cycle().take(64_001).collect(),
        ];
        let parts = [
            (None, None),
            (Some(0), Some(1)),
            (Some(7), Some(9)),
            (Some(u32::MAX), Some(u32::MAX)),
        ];
        for image in &images {
            for (part, parts) in parts {
                for camera in ["cam-1", "\u{1}\"\\\u{7f}é</script>"] {
                    let e = Envelope {
                        image: image.clone(),
                        part,
                        parts,
                        camera: camera.into(),
                        ..sample()
                    };
                    let want = serde_json::to_vec(&e).unwrap();
                    assert_eq!(e.to_bytes(), want, "{e:?}");
                    let head = Envelope {
                        image: Vec::new(),
                        ..e.clone()
                    };
                    assert_eq!(head.to_bytes_with(image), want, "{e:?}");
                }
            }
        }
    }

    /// The image's base64 (SIMD blocks, then the tail) is the `base64`
    /// crate's standard encoding, which serde's field writes, at every
    /// length around the block sizes and for every byte value.
    #[test]
    fn the_image_base64_is_standard_base64_at_every_length() {
        use base64::Engine;
        let mut x = 0x9e37_79b9_u32;
        let bytes: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_le_bytes()[0]
            })
            .collect();
        let head = sample();
        let plain = Envelope {
            image: Vec::new(),
            ..head.clone()
        }
        .to_bytes_with(&[]);
        let prefix = plain.len() - 2; // `"}` after the empty image
        for len in (0..=300).chain([1023, 1024, 1025, 4095, 4096, 4097, 5000]) {
            let image = &bytes[..len];
            let out = head.to_bytes_with(image);
            let want = base64::engine::general_purpose::STANDARD.encode(image);
            assert_eq!(&out[prefix..prefix + want.len()], want.as_bytes(), "{len}");
            assert_eq!(&out[prefix + want.len()..], b"\"}", "{len}");
        }
    }

    #[test]
    fn debug_leaves_the_image_out() {
        let text = format!("{:?}", sample());
        assert!(
            text.contains("image_len: 4") && !text.contains("255"),
            "{text}"
        );
    }
}
