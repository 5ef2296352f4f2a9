//! Validation and metadata removal for one capture image: bytes in, bytes out.
//!
//! [`sanitize`] owns the rule "what we upload is a real, complete JPEG or PNG
//! within the configured limits, carrying nothing but pixels". It works in
//! this order, cheapest check first:
//!
//! 1. file size against `max_file_bytes`;
//! 2. format from the magic bytes (never from a file name);
//! 3. dimensions from the header, rejected **before** any pixel buffer is
//!    allocated, so a tiny file claiming 100000x100000 costs microseconds;
//! 4. lossless removal of every metadata segment/chunk (no re-encode, the
//!    compressed pixel data is copied byte for byte), which also requires the
//!    end-of-image marker (JPEG `EOI`, PNG `IEND`): a truncated file is refused
//!    even when a lenient decoder would silently fill the missing rows;
//! 5. a full decode of the *stripped* bytes under [`image::Limits`], so what
//!    is stored is exactly what was validated.
//!
//! Trailing bytes after the end-of-image marker are never part of the image
//! (they may hold preview images, appended videos or other files), so they
//! are dropped from the output; the image itself is still accepted.
//!
//! Every buffer of image data this module owns is wiped when it is done
//! with it: the output ([`CleanImage::bytes`], a `Zeroizing` buffer
//! allocated once at its final size), img-parts' working copies of the input
//! and of the cleaned scan data (overwritten once img-parts holds no
//! reference to them any more), and the decoded pixels. Not wiped: what the
//! JPEG and PNG decoders allocate inside themselves (row and block buffers).
//!
//! JPEG keeps only SOI, DQT, SOFn, DHT, DAC, DRI, SOS with scan data (every
//! scan of a progressive file) and EOI, plus an `APP14 "Adobe"` segment when
//! present because it changes how colours are decoded. All other APPn
//! segments (JFIF, EXIF/GPS, XMP, ICC, IPTC, MPF, ...) and comments are
//! dropped. PNG keeps IHDR, PLTE, IDAT, tRNS and IEND; every other ancillary
//! chunk (text, EXIF, time, ICC, gamma, ...) is dropped.

use std::fmt;
use std::io::Cursor;
use std::sync::{Condvar, Mutex, PoisonError};

use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::error::LimitErrorKind;
use image::ImageDecoder;
use img_parts::jpeg::{markers, Jpeg, JpegSegment};
use img_parts::png::Png;
use img_parts::Bytes;
use zeroize::{Zeroize, Zeroizing};

use crate::config::CaptureConfig;

/// Image formats a capture may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentType {
    /// JPEG (JFIF/EXIF baseline or progressive).
    Jpeg,
    /// PNG.
    Png,
}

impl ContentType {
    /// MIME type for the upload envelope.
    pub fn mime(&self) -> &'static str {
        match self {
            ContentType::Jpeg => "image/jpeg",
            ContentType::Png => "image/png",
        }
    }

    /// Every spool file extension [`Self::from_extension`] accepts.
    pub const EXTENSIONS: [&'static str; 3] = ["jpg", "jpeg", "png"];

    /// The type a spool file extension announces (`jpg`, `jpeg`, `png`; lower
    /// case, without the dot). The caller compares it with the type found in
    /// the bytes; a mismatch is a bad pair.
    pub fn from_extension(ext: &str) -> Option<ContentType> {
        match ext {
            "jpg" | "jpeg" => Some(ContentType::Jpeg),
            "png" => Some(ContentType::Png),
            _ => None,
        }
    }

    /// The type announced by the magic bytes at the start of `raw`, if any.
    pub fn sniff(raw: &[u8]) -> Option<ContentType> {
        if raw.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(ContentType::Jpeg)
        } else if raw.starts_with(PNG_SIGNATURE) {
            Some(ContentType::Png)
        } else {
            None
        }
    }

    /// Short upper-case name for messages.
    fn name(&self) -> &'static str {
        match self {
            ContentType::Jpeg => "JPEG",
            ContentType::Png => "PNG",
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated image with all metadata removed: the bytes that get uploaded.
#[derive(Clone, PartialEq, Eq)]
pub struct CleanImage {
    /// The sanitized file (same compressed pixel data as the input, no
    /// metadata), wiped when dropped.
    pub bytes: Zeroizing<Vec<u8>>,
    /// Format of `bytes`, for the envelope's `content_type`.
    pub content_type: ContentType,
    /// Width in pixels, as decoded.
    pub width: u32,
    /// Height in pixels, as decoded.
    pub height: u32,
    /// SHA-256 of `bytes` (the envelope's `sha256`).
    pub sha256: [u8; 32],
}

/// Never prints the image bytes, only their size.
impl fmt::Debug for CleanImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CleanImage")
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .field("content_type", &self.content_type)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("sha256", &format_args!("{}", hex::encode(self.sha256)))
            .finish()
    }
}

/// Why an image was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    /// The file is bigger than `capture.max_file_bytes`.
    #[error("image file is {size} bytes, more than the limit of {max} bytes")]
    TooLarge {
        /// The file's size in bytes.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// Neither JPEG nor PNG magic bytes.
    #[error("not an image: the file does not start with JPEG or PNG magic bytes")]
    NotAnImage,
    /// A JPEG or PNG feature we do not accept.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// The header announces dimensions above `capture.max_width`/`max_height`.
    #[error("image is {width}x{height} pixels, more than the limit of {max_width}x{max_height}")]
    DimensionsTooLarge {
        /// Announced width.
        width: u32,
        /// Announced height.
        height: u32,
        /// `capture.max_width`.
        max_width: u32,
        /// `capture.max_height`.
        max_height: u32,
    },
    /// Decoding would allocate more than `capture.max_alloc_bytes`.
    #[error("decoding the image needs more memory than the limit of {max} bytes")]
    TooManyPixels {
        /// `capture.max_alloc_bytes`.
        max: u64,
    },
    /// The structure or the pixel data is broken.
    #[error("corrupt {format} image: {reason}")]
    Corrupt {
        /// JPEG or PNG.
        format: ContentType,
        /// What the decoder found.
        reason: String,
    },
    /// The file ends before its end-of-image marker (JPEG EOI / PNG IEND).
    #[error("truncated {0} image: the file ends before its end-of-image marker")]
    Truncated(ContentType),
    /// The decoder itself failed (panicked) on this file: a decoder bug
    /// that a hostile or broken file triggers. Refused like a corrupt image.
    #[error("the {format} decoder failed on this image ({reason}); refused as corrupt")]
    DecoderFailed {
        /// JPEG or PNG.
        format: ContentType,
        /// The decoder's panic message.
        reason: String,
    },
}

const PNG_SIGNATURE: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// Validates `raw` against `limits` and returns it without any metadata.
///
/// Pure: no I/O, no clock. See the module documentation for the steps.
pub fn sanitize(raw: &[u8], limits: &CaptureConfig) -> Result<CleanImage, ImageError> {
    let size = raw.len() as u64;
    if size > limits.max_file_bytes {
        return Err(ImageError::TooLarge {
            size,
            max: limits.max_file_bytes,
        });
    }
    let content_type = ContentType::sniff(raw).ok_or(ImageError::NotAnImage)?;
    let (bytes, progressive) = match content_type {
        ContentType::Jpeg => strip_jpeg(raw, limits)?,
        ContentType::Png => (strip_png(raw, limits)?, None),
    };
    let (width, height) = decode(&bytes, content_type, progressive, limits)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(digest.as_ref());
    Ok(CleanImage {
        bytes,
        content_type,
        width,
        height,
        sha256,
    })
}

fn check_dimensions(width: u32, height: u32, limits: &CaptureConfig) -> Result<(), ImageError> {
    if width > limits.max_width || height > limits.max_height {
        return Err(ImageError::DimensionsTooLarge {
            width,
            height,
            max_width: limits.max_width,
            max_height: limits.max_height,
        });
    }
    Ok(())
}

fn corrupt(format: ContentType, reason: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        format,
        reason: reason.into(),
    }
}

fn parts_error(format: ContentType, err: img_parts::Error) -> ImageError {
    match err {
        img_parts::Error::Truncated => ImageError::Truncated(format),
        img_parts::Error::WrongSignature => ImageError::NotAnImage,
        other => corrupt(format, other.to_string()),
    }
}

/// Start-of-frame markers (SOF0..SOF15 minus DHT, JPG and DAC, which share the range).
fn is_sof(m: u8) -> bool {
    matches!(m, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF)
}

/// Progressive start-of-frame markers (SOF2, SOF6, SOF10, SOF14): the
/// decoder keeps every DCT coefficient of the image until the last scan.
fn is_progressive(m: u8) -> bool {
    matches!(m, 0xC2 | 0xC6 | 0xCA | 0xCE)
}

/// What a progressive decode holds at its peak, from the frame header alone:
/// the coefficients of every component (2 bytes each, the component's
/// blocks padded to whole MCUs) plus the decoded pixels (one byte per
/// component and pixel). A baseline decode needs only the pixels, which
/// `read_all` checks; a progressive one needs about three times that, and
/// the decoder allocates the coefficients outside `image::Limits` (a 98 KB
/// 4096x4096 file peaked at 150 MB). `None` when the header is malformed
/// (the decoder then refuses it).
fn progressive_decode_bytes(sof: &[u8], width: u32, height: u32) -> Option<u64> {
    let count = usize::from(*sof.get(5)?);
    let comps = sof.get(6..6 + 3 * count)?;
    let sampling: Vec<(u64, u64)> = comps
        .chunks_exact(3)
        .map(|c| (u64::from(c[1] >> 4), u64::from(c[1] & 0x0F)))
        .collect();
    let h_max = sampling.iter().map(|s| s.0).max()?.max(1);
    let v_max = sampling.iter().map(|s| s.1).max()?.max(1);
    let mcus_x = u64::from(width).div_ceil(8 * h_max);
    let mcus_y = u64::from(height).div_ceil(8 * v_max);
    let blocks: u64 = sampling.iter().map(|(h, v)| mcus_x * h * mcus_y * v).sum();
    let coefficients = blocks * 64 * 2;
    let pixels = u64::from(width) * u64::from(height) * count as u64;
    Some(coefficients + pixels)
}

/// Header segments that decoding needs; everything else before the first scan is dropped.
fn keep_jpeg_header_segment(seg: &JpegSegment) -> Result<bool, ImageError> {
    let m = seg.marker();
    Ok(match m {
        markers::DQT | markers::DHT | markers::DAC | markers::DRI | markers::SOS => true,
        _ if is_sof(m) => true,
        markers::APP14 => seg.contents().starts_with(b"Adobe"),
        markers::APP0..=markers::APP15 | markers::COM => false,
        other => {
            return Err(ImageError::Unsupported(format!(
                "JPEG marker 0x{other:02X} before the first scan"
            )))
        }
    })
}

/// Parses the JPEG header, checks dimensions, drops metadata segments, and
/// rebuilds the file up to and including EOI. With it, for a progressive
/// file, the memory its decode holds ([`progressive_decode_bytes`]).
fn strip_jpeg(
    raw: &[u8],
    limits: &CaptureConfig,
) -> Result<(Zeroizing<Vec<u8>>, Option<u64>), ImageError> {
    // img-parts works on its own copy of the file: wiped when it is done.
    let copy = Wiped(Bytes::copy_from_slice(raw));
    let clean_tail = Wiped(Bytes::new());
    strip_jpeg_in(raw, &copy, clean_tail, limits)
}

fn strip_jpeg_in(
    raw: &[u8],
    copy: &Wiped,
    mut clean_tail: Wiped,
    limits: &CaptureConfig,
) -> Result<(Zeroizing<Vec<u8>>, Option<u64>), ImageError> {
    const J: ContentType = ContentType::Jpeg;
    // img-parts parses segments up to the first SOS; its "entropy" is the rest of the file.
    let mut jpeg = Jpeg::from_bytes(copy.0.clone()).map_err(|e| parts_error(J, e))?;
    let sofs: Vec<&JpegSegment> = jpeg
        .segments()
        .iter()
        .filter(|s| is_sof(s.marker()))
        .collect();
    if sofs.len() != 1 {
        return Err(corrupt(
            J,
            format!(
                "expected one frame header before the first scan, found {}",
                sofs.len()
            ),
        ));
    }
    let sof = sofs[0].contents();
    if sof.len() < 5 {
        return Err(corrupt(J, "frame header too short"));
    }
    let height = u32::from(u16::from_be_bytes([sof[1], sof[2]]));
    let width = u32::from(u16::from_be_bytes([sof[3], sof[4]]));
    if width == 0 {
        return Err(corrupt(J, "frame header declares width 0"));
    }
    if height == 0 {
        return Err(ImageError::Unsupported(
            "JPEG height defined after the first scan (DNL)".into(),
        ));
    }
    check_dimensions(width, height, limits)?;
    let progressive = if is_progressive(sofs[0].marker()) {
        progressive_decode_bytes(sof, width, height)
    } else {
        None
    };
    if progressive.is_some_and(|needed| needed > limits.max_alloc_bytes) {
        return Err(ImageError::TooManyPixels {
            max: limits.max_alloc_bytes,
        });
    }

    let mut kept = Vec::with_capacity(jpeg.segments().len());
    for seg in jpeg.segments() {
        if keep_jpeg_header_segment(seg)? {
            kept.push(seg.clone());
        }
    }
    let Some(sos) = kept
        .pop()
        .filter(|s| s.marker() == markers::SOS && s.has_entropy())
    else {
        return Err(corrupt(J, "no image data (no start-of-scan segment)"));
    };
    // The parser stopped at this SOS; its entropy is the rest of the file, a suffix of `raw`.
    let entropy_len = sos.len_with_entropy() - sos.len();
    let tail = &raw[raw.len() - entropy_len..];
    clean_tail.0 = Bytes::from(clean_jpeg_tail(tail)?);
    kept.push(JpegSegment::new_with_entropy(
        markers::SOS,
        sos.contents().clone(),
        clean_tail.0.clone(),
    ));
    *jpeg.segments_mut() = kept;
    Ok((collect(jpeg.encoder()), progressive))
    // `jpeg` goes first, then `clean_tail`: unshared, it is wiped.
}

/// A buffer img-parts reads from and slices (reference-counted): overwritten
/// with zeros when dropped, if no slice of it is left by then (img-parts is
/// done with it; otherwise it is only freed).
struct Wiped(Bytes);

impl Drop for Wiped {
    fn drop(&mut self) {
        // Unshared, the conversion keeps the same memory.
        match std::mem::take(&mut self.0).try_into_mut() {
            Ok(mut unshared) => unshared[..].zeroize(),
            Err(_still_shared) => {
                #[cfg(test)]
                tests::LEFT_UNWIPED.with(|n| n.set(n.get() + 1));
            }
        }
    }
}

/// Walks the bytes after the first SOS header: scan data, the segments
/// between scans, and EOI. Returns them with metadata segments removed and
/// everything after EOI cut off. No EOI means the file is truncated.
fn clean_jpeg_tail(tail: &[u8]) -> Result<Vec<u8>, ImageError> {
    const J: ContentType = ContentType::Jpeg;
    // Never grows past `tail.len()`; wiped if the tail is refused.
    let mut out = Zeroizing::new(Vec::with_capacity(tail.len()));
    let mut run_start = 0; // start of scan data not yet copied
    let mut i = 0;
    loop {
        let Some(off) = tail[i..].iter().position(|&b| b == 0xFF) else {
            return Err(ImageError::Truncated(J));
        };
        let j = i + off;
        let Some(&m) = tail.get(j + 1) else {
            return Err(ImageError::Truncated(J));
        };
        match m {
            // Stuffed 0xFF, restart markers: part of the scan data.
            0x00 | markers::RST0..=markers::RST7 => {
                i = j + 2;
                continue;
            }
            // Fill byte before a marker.
            0xFF => {
                i = j + 1;
                continue;
            }
            _ => {}
        }
        // Fill bytes (0xFF runs before a marker; in scan data a 0xFF is
        // always followed by 0x00 or a restart marker, never by 0xFF) belong
        // to the marker: dropped, so that removing a segment cannot leave
        // them in front of the next scan data, where they would read as a
        // new, bogus marker (found by fuzzing: the output was no longer an
        // image this function accepts).
        let fill = tail[run_start..j]
            .iter()
            .rev()
            .take_while(|&&b| b == 0xFF)
            .count();
        out.extend_from_slice(&tail[run_start..j - fill]);
        if m == markers::EOI {
            out.extend_from_slice(&[0xFF, markers::EOI]);
            return Ok(std::mem::take(&mut *out));
        }
        let keep = match m {
            markers::DHT | markers::DQT | markers::DRI | markers::DAC | markers::SOS => true,
            markers::APP0..=markers::APP15 | markers::COM => false,
            other => {
                return Err(ImageError::Unsupported(format!(
                    "JPEG marker 0x{other:02X} after the first scan"
                )))
            }
        };
        let Some(len) = tail.get(j + 2..j + 4) else {
            return Err(ImageError::Truncated(J));
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len < 2 {
            return Err(corrupt(J, format!("segment 0x{m:02X} with length {len}")));
        }
        let end = j + 2 + len;
        if end > tail.len() {
            return Err(ImageError::Truncated(J));
        }
        if keep {
            out.extend_from_slice(&tail[j..end]);
        }
        i = end;
        run_start = end;
    }
}

/// Checks IHDR dimensions, requires IEND, and keeps only rendering chunks.
fn strip_png(raw: &[u8], limits: &CaptureConfig) -> Result<Zeroizing<Vec<u8>>, ImageError> {
    const P: ContentType = ContentType::Png;
    // IHDR must be the first chunk; read its size fields before parsing anything else.
    let Some(ihdr) = raw.get(8..24) else {
        return Err(ImageError::Truncated(P));
    };
    if &ihdr[4..8] != b"IHDR" {
        return Err(corrupt(P, "first chunk is not IHDR"));
    }
    let width = u32::from_be_bytes([ihdr[8], ihdr[9], ihdr[10], ihdr[11]]);
    let height = u32::from_be_bytes([ihdr[12], ihdr[13], ihdr[14], ihdr[15]]);
    if width == 0 || height == 0 {
        return Err(corrupt(P, format!("IHDR declares {width}x{height} pixels")));
    }
    check_dimensions(width, height, limits)?;

    // img-parts works on its own copy of the file: wiped when it is done
    // (`copy` is declared first, so it is dropped after `png`).
    let copy = Wiped(Bytes::copy_from_slice(raw));
    let mut png = Png::from_bytes(copy.0.clone()).map_err(|e| parts_error(P, e))?;
    if png.chunks().last().map(|c| c.kind()) != Some(*b"IEND") {
        return Err(ImageError::Truncated(P));
    }
    let mut kept = Vec::with_capacity(png.chunks().len());
    for chunk in png.chunks() {
        let kind = chunk.kind();
        match &kind {
            b"IHDR" | b"PLTE" | b"IDAT" | b"IEND" | b"tRNS" => kept.push(chunk.clone()),
            // Ancillary chunks (lower-case first letter) are never needed to decode.
            _ if kind[0].is_ascii_lowercase() => {}
            _ => {
                return Err(ImageError::Unsupported(format!(
                    "PNG critical chunk {:?}",
                    String::from_utf8_lossy(&kind)
                )))
            }
        }
    }
    *png.chunks_mut() = kept;
    Ok(collect(png.encoder()))
}

/// The pieces of the rebuilt file in one buffer, allocated once at its final
/// size (a growing buffer would leave copies of the image in freed memory).
fn collect<I: Iterator<Item = Bytes>>(pieces: I) -> Zeroizing<Vec<u8>> {
    let pieces: Vec<Bytes> = pieces.collect();
    let mut out = Zeroizing::new(Vec::with_capacity(pieces.iter().map(Bytes::len).sum()));
    for piece in &pieces {
        out.extend_from_slice(piece);
    }
    out
}

thread_local! {
    /// Set while this thread runs a third-party decoder over capture bytes
    /// (see [`decoding`]).
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread is inside the decoder boundary of [`sanitize`]:
/// a panic raised here is a decoder bug triggered by a hostile or broken
/// file, and is caught and turned into [`ImageError::DecoderFailed`]. The
/// binary's panic hook reads this to log such a panic as one line and to
/// keep every other panic fatal (invariant I16).
pub fn decoding() -> bool {
    DECODING.with(std::cell::Cell::get)
}

/// Clears the flag when the decode ends, normally or by unwinding.
struct DecodingGuard;

impl DecodingGuard {
    fn enter() -> DecodingGuard {
        DECODING.with(|d| d.set(true));
        DecodingGuard
    }
}

impl Drop for DecodingGuard {
    fn drop(&mut self) {
        DECODING.with(|d| d.set(false));
    }
}

/// Decodes every pixel under the configured limits; returns the dimensions.
///
/// The decoders (zune-jpeg behind `image`, and png) run on bytes from
/// outside, and a decoder panic has been seen on a 2 KB hostile JPEG (an
/// `unwrap` in zune-jpeg's AVX2 IDCT, upstream issue 361). Such a panic is
/// caught here, and only here, and refuses the image like any other broken
/// file: the daemon neither dies nor crash-loops on the spool pair
/// (invariant I16). Nothing the decoder touches outlives the call (it owns
/// its state; our only buffer is wiped on drop while unwinding).
fn decode(
    bytes: &[u8],
    format: ContentType,
    progressive: Option<u64>,
    limits: &CaptureConfig,
) -> Result<(u32, u32), ImageError> {
    let guard = DecodingGuard::enter();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_in(bytes, format, progressive, limits)
    }));
    drop(guard);
    match outcome {
        Ok(result) => result,
        Err(payload) => Err(ImageError::DecoderFailed {
            format,
            reason: panic_message(payload.as_ref()),
        }),
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".to_string()
    }
}

fn decode_in(
    bytes: &[u8],
    format: ContentType,
    progressive: Option<u64>,
    limits: &CaptureConfig,
) -> Result<(u32, u32), ImageError> {
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(limits.max_width);
    lim.max_image_height = Some(limits.max_height);
    lim.max_alloc = Some(limits.max_alloc_bytes);
    let err = |e| decode_error(format, limits, e);
    match format {
        ContentType::Jpeg => {
            let mut d = JpegDecoder::new(Cursor::new(bytes)).map_err(err)?;
            d.set_limits(lim).map_err(err)?;
            read_all(d, format, progressive, limits)
        }
        ContentType::Png => {
            let d = PngDecoder::with_limits(Cursor::new(bytes), lim).map_err(err)?;
            read_all(d, format, None, limits)
        }
    }
}

fn read_all(
    d: impl ImageDecoder,
    format: ContentType,
    progressive: Option<u64>,
    limits: &CaptureConfig,
) -> Result<(u32, u32), ImageError> {
    let (w, h) = d.dimensions();
    check_dimensions(w, h, limits)?;
    let needed = d.total_bytes();
    if needed > limits.max_alloc_bytes {
        return Err(ImageError::TooManyPixels {
            max: limits.max_alloc_bytes,
        });
    }
    let len = usize::try_from(needed).map_err(|_| ImageError::TooManyPixels {
        max: limits.max_alloc_bytes,
    })?;
    // What this decode holds at its peak waits for room in the budget
    // shared by all decodes, then is taken from it until the decode ends.
    let _room = DECODES.reserve(
        progressive.unwrap_or(0).max(needed),
        limits.decode_memory_bytes,
    );
    // The decoded pixels are only checked, never kept: wiped when dropped.
    let mut buf = Zeroizing::new(vec![0u8; len]);
    d.read_image(&mut buf)
        .map_err(|e| decode_error(format, limits, e))?;
    Ok((w, h))
}

/// Memory held by the decodes running now, in the whole process
/// (`capture.decode_memory_bytes`): intake decodes on every core, and a
/// terminal with four cores and 64 MiB images would otherwise hold four
/// times the per-image limit at once.
struct DecodeBudget {
    in_use: Mutex<u64>,
    freed: Condvar,
}

static DECODES: DecodeBudget = DecodeBudget {
    in_use: Mutex::new(0),
    freed: Condvar::new(),
};

impl DecodeBudget {
    /// Waits until `bytes` fit under `limit` next to what running decodes
    /// hold (or nothing else runs: a single decode always may), and takes them.
    fn reserve(&'static self, bytes: u64, limit: u64) -> Room {
        let mut in_use = self.in_use.lock().unwrap_or_else(PoisonError::into_inner);
        while *in_use > 0 && in_use.saturating_add(bytes) > limit {
            in_use = self
                .freed
                .wait(in_use)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *in_use += bytes;
        Room {
            budget: self,
            bytes,
        }
    }
}

/// Bytes taken from the [`DecodeBudget`]; given back when dropped (also
/// when the decoder panics and the stack unwinds).
struct Room {
    budget: &'static DecodeBudget,
    bytes: u64,
}

impl Drop for Room {
    fn drop(&mut self) {
        let mut in_use = self
            .budget
            .in_use
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *in_use = in_use.saturating_sub(self.bytes);
        self.budget.freed.notify_all();
    }
}

fn decode_error(format: ContentType, limits: &CaptureConfig, e: image::ImageError) -> ImageError {
    match e {
        image::ImageError::Limits(l) => match l.kind() {
            // Header dimensions were checked already, so the decoder disagrees with them.
            LimitErrorKind::DimensionError => {
                corrupt(format, "decoded dimensions differ from the header")
            }
            _ => ImageError::TooManyPixels {
                max: limits.max_alloc_bytes,
            },
        },
        image::ImageError::Unsupported(u) => ImageError::Unsupported(u.to_string()),
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Truncated(format)
        }
        other => corrupt(format, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use facegate_testkit::synth;

    const J: ContentType = ContentType::Jpeg;

    thread_local! {
        /// img-parts working copies dropped while still shared (not wiped).
        pub(super) static LEFT_UNWIPED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Fails on the old code: the output grew piece by piece (its capacity
    /// ended above its length, after reallocations that each left a copy in
    /// freed memory), and img-parts' copies were only freed.
    #[test]
    fn buffers_are_allocated_once_and_working_copies_wiped() {
        let limits = CaptureConfig {
            max_file_bytes: 8 << 20,
            max_width: 4096,
            max_height: 4096,
            max_alloc_bytes: 64 << 20,
            decode_memory_bytes: 64 << 20,
            spool_grace: std::time::Duration::from_secs(60),
            poll_interval: std::time::Duration::from_millis(100),
            max_batch_bytes: 8 << 20,
        };
        let jpeg = synth::face_jpeg(320, 240, 1, 85);
        let png = synth::face_png(160, 120, 2);
        for (name, raw) in [
            ("jpeg", jpeg.clone()),
            ("jpeg with EXIF", synth::with_exif_gps(&jpeg, "MARK")),
            ("png", png.clone()),
            ("png with text", synth::png_with_text(&png, "MARK")),
        ] {
            LEFT_UNWIPED.with(|n| n.set(0));
            let clean = sanitize(&raw, &limits).unwrap();
            assert_eq!(
                clean.bytes.capacity(),
                clean.bytes.len(),
                "{name}: output grew"
            );
            assert_eq!(
                LEFT_UNWIPED.with(|n| n.get()),
                0,
                "{name}: a working copy was still shared"
            );
        }
    }

    type Case<'a> = (&'a [u8], Result<Vec<u8>, ImageError>);

    #[test]
    fn tail_walker_table() {
        let eoi = [0xFF, 0xD9];
        let cases: Vec<Case> = vec![
            // Scan data with stuffed 0xFF00 and a restart marker, then EOI.
            (
                &[1, 0xFF, 0x00, 2, 0xFF, 0xD3, 3, 0xFF, 0xD9],
                Ok(vec![1, 0xFF, 0x00, 2, 0xFF, 0xD3, 3, 0xFF, 0xD9]),
            ),
            // Fill bytes before EOI (dropped) and garbage after it.
            (
                &[1, 0xFF, 0xFF, 0xFF, 0xD9, 9, 9, 9],
                Ok(vec![1, 0xFF, 0xD9]),
            ),
            // Fill bytes go with the comment they precede: kept, they would
            // run into the scan data after it as a marker (0xFF 0x02).
            (
                &[1, 0xFF, 0xFF, 0xFE, 0, 4, b'h', b'i', 2, 0xFF, 0xD9],
                Ok(vec![1, 2, 0xFF, 0xD9]),
            ),
            // A comment before EOI is removed, a DHT between scans kept.
            (
                &[
                    1, 0xFF, 0xFE, 0, 4, b'h', b'i', 0xFF, 0xC4, 0, 3, 7, 2, 0xFF, 0xD9,
                ],
                Ok(vec![1, 0xFF, 0xC4, 0, 3, 7, 2, 0xFF, 0xD9]),
            ),
            (&[1, 2, 3], Err(ImageError::Truncated(J))),
            (&[1, 2, 0xFF], Err(ImageError::Truncated(J))),
            (&[1, 0xFF, 0xFE, 0, 9, 1], Err(ImageError::Truncated(J))),
            (&[1, 0xFF, 0xFE, 0], Err(ImageError::Truncated(J))),
            (
                &[1, 0xFF, 0xFE, 0, 1, 0xFF, 0xD9],
                Err(corrupt(J, "segment 0xFE with length 1")),
            ),
            (
                &[1, 0xFF, 0xDC, 0, 4, 0, 8, 0xFF, 0xD9],
                Err(ImageError::Unsupported(
                    "JPEG marker 0xDC after the first scan".into(),
                )),
            ),
            (&eoi, Ok(eoi.to_vec())),
        ];
        for (input, want) in cases {
            assert_eq!(clean_jpeg_tail(input), want, "{input:02X?}");
        }
    }

    #[test]
    fn sof_markers() {
        let sof: Vec<u8> = (0xC0..=0xCF).filter(|m| is_sof(*m)).collect();
        assert_eq!(
            sof,
            [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF]
        );
        let progressive: Vec<u8> = sof.iter().copied().filter(|m| is_progressive(*m)).collect();
        assert_eq!(progressive, [0xC2, 0xC6, 0xCA, 0xCE]);
    }

    /// A decode that would take the budget over its limit waits until the
    /// running one gives its room back; a decode alone always runs.
    #[test]
    fn decode_budget_serializes_what_does_not_fit() {
        static BUDGET: DecodeBudget = DecodeBudget {
            in_use: Mutex::new(0),
            freed: Condvar::new(),
        };
        let held = |b: &DecodeBudget| *b.in_use.lock().unwrap();
        // Alone, even over the limit.
        drop(BUDGET.reserve(100, 64));
        assert_eq!(held(&BUDGET), 0);
        // Two that fit together.
        let a = BUDGET.reserve(30, 64);
        let b = BUDGET.reserve(30, 64);
        assert_eq!(held(&BUDGET), 60);
        drop((a, b));
        // One that does not fit waits for the first to end.
        let first = BUDGET.reserve(40, 64);
        let (tx, rx) = std::sync::mpsc::channel();
        let second = std::thread::spawn(move || {
            let room = BUDGET.reserve(40, 64);
            tx.send(held(&BUDGET)).unwrap();
            drop(room);
        });
        // Not before the first gives its room back: the second then holds
        // its 40 alone.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "reserved next to the first");
        drop(first);
        assert_eq!(rx.recv().unwrap(), 40);
        second.join().unwrap();
        assert_eq!(held(&BUDGET), 0);
    }

    /// A frame header's contents: precision, height, width, then
    /// (id, sampling HV, table) per component.
    fn sof(width: u16, height: u16, sampling: &[u8]) -> Vec<u8> {
        let mut out = vec![8];
        out.extend_from_slice(&height.to_be_bytes());
        out.extend_from_slice(&width.to_be_bytes());
        out.push(sampling.len() as u8);
        for (i, hv) in sampling.iter().enumerate() {
            out.extend_from_slice(&[i as u8 + 1, *hv, 0]);
        }
        out
    }

    #[test]
    fn progressive_decode_bytes_table() {
        const MIB: u64 = 1 << 20;
        type Case = (&'static str, Vec<u8>, u32, u32, Option<u64>);
        let cases: [Case; 6] = [
            // Grey 8x8: one block of 64 coefficients (128 B) and 64 pixels.
            ("grey 8x8", sof(8, 8, &[0x11]), 8, 8, Some(128 + 64)),
            // Grey 9x9: four blocks (padded), 81 pixels.
            ("grey 9x9", sof(9, 9, &[0x11]), 9, 9, Some(4 * 128 + 81)),
            // 4:4:4 colour 4096x4096: 3 x 512 x 512 blocks.
            (
                "4:4:4 4096",
                sof(4096, 4096, &[0x11, 0x11, 0x11]),
                4096,
                4096,
                Some(3 * 512 * 512 * 128 + 3 * 4096 * 4096),
            ),
            // 4:2:0 colour 4096x4096: luma 512x512 blocks, chroma 256x256 each.
            (
                "4:2:0 4096",
                sof(4096, 4096, &[0x22, 0x11, 0x11]),
                4096,
                4096,
                Some((512 * 512 + 2 * 256 * 256) * 128 + 3 * 4096 * 4096),
            ),
            (
                "no components listed",
                sof(16, 16, &[0x11])[..6].to_vec(),
                16,
                16,
                None,
            ),
            ("no components", sof(16, 16, &[]), 16, 16, None),
        ];
        for (name, header, w, h, want) in cases {
            assert_eq!(progressive_decode_bytes(&header, w, h), want, "{name}");
        }
        // The 98 KB 4096x4096 bomb of the issue needs about 144 MiB: over the
        // default budget of 64 MiB; a progressive Full HD capture fits.
        let bomb = progressive_decode_bytes(&sof(4096, 4096, &[0x11, 0x11, 0x11]), 4096, 4096);
        assert!(bomb.is_some_and(|b| b > 64 * MIB));
        let hd = progressive_decode_bytes(&sof(1920, 1080, &[0x22, 0x11, 0x11]), 1920, 1080);
        assert!(hd.is_some_and(|b| b < 16 * MIB), "{hd:?}");
    }
}
