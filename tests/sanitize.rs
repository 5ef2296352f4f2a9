//! Image validation and metadata removal on real encoded images.

use std::time::{Duration, Instant};

use facegate::sanitize::{sanitize, ContentType, ImageError};
use facegate_testkit::config::capture_limits as limits;
use facegate_testkit::synth::{
    face_jpeg, face_png, png_with_text, progressive_jpeg, with_exif_gps,
};
use facegate_testkit::util::contains;
use img_parts::jpeg::{markers, Jpeg, JpegSegment};
use img_parts::png::{Png, PngChunk};
use img_parts::Bytes;

const MARK: &str = "SECRET-MARKER-51.5N";

fn pixels(bytes: &[u8]) -> image::DynamicImage {
    image::load_from_memory(bytes).expect("decodes")
}

fn assert_same_pixels(a: &[u8], b: &[u8]) {
    let (a, b) = (pixels(a), pixels(b));
    assert_eq!((a.width(), a.height()), (b.width(), b.height()));
    assert_eq!(a.color(), b.color());
    assert!(a.as_bytes() == b.as_bytes(), "pixels differ");
}

fn jpeg_markers(bytes: &[u8]) -> Vec<u8> {
    Jpeg::from_bytes(Bytes::copy_from_slice(bytes))
        .unwrap()
        .segments()
        .iter()
        .map(JpegSegment::marker)
        .collect()
}

fn png_chunks(bytes: &[u8]) -> Vec<[u8; 4]> {
    Png::from_bytes(Bytes::copy_from_slice(bytes))
        .unwrap()
        .chunks()
        .iter()
        .map(PngChunk::kind)
        .collect()
}

fn png_from_chunks(chunks: Vec<PngChunk>) -> Vec<u8> {
    let mut png = Png::from_bytes(Bytes::copy_from_slice(&face_png(2, 2, 0))).unwrap();
    *png.chunks_mut() = chunks;
    png.encoder().flat_map(|b| b.to_vec()).collect()
}

fn ihdr(width: u32, height: u32, depth: u8, color: u8) -> PngChunk {
    let mut c = width.to_be_bytes().to_vec();
    c.extend_from_slice(&height.to_be_bytes());
    c.extend_from_slice(&[depth, color, 0, 0, 0]);
    PngChunk::new(*b"IHDR", c.into())
}

#[test]
fn jpeg_metadata_removed_losslessly() {
    let raw = with_exif_gps(&face_jpeg(640, 480, 1, 85), MARK);
    assert!(
        contains(&raw, MARK.as_bytes()),
        "test input carries the marker"
    );
    assert!(contains(&raw, b"Exif\0\0"));

    let clean = sanitize(&raw, &limits()).unwrap();
    assert!(!contains(&clean.bytes, MARK.as_bytes()));
    assert!(!contains(&clean.bytes, b"Exif"));
    assert!(!contains(&clean.bytes, b"http://ns.adobe.com/xap"));
    assert!(!contains(&clean.bytes, b"JFIF"));
    let kept = jpeg_markers(&clean.bytes);
    assert!(
        kept.iter()
            .all(|m| !(markers::APP0..=markers::APP15).contains(m) && *m != markers::COM),
        "segments left: {kept:02X?}"
    );
    assert!(clean.bytes.ends_with(&[0xFF, 0xD9]));
    assert!(clean.bytes.len() < raw.len());

    assert_eq!(clean.content_type, ContentType::Jpeg);
    assert_eq!(clean.content_type.mime(), "image/jpeg");
    assert_eq!((clean.width, clean.height), (640, 480));
    let digest = ring::digest::digest(&ring::digest::SHA256, &clean.bytes);
    assert_eq!(&clean.sha256[..], digest.as_ref());
    assert_same_pixels(&raw, &clean.bytes);

    // Sanitizing is idempotent: a clean image comes back byte for byte.
    assert!(sanitize(&clean.bytes, &limits()).unwrap().bytes == clean.bytes);
}

#[test]
fn png_metadata_removed_losslessly() {
    let raw = png_with_text(&face_png(320, 240, 3), MARK);
    assert!(contains(&raw, MARK.as_bytes()));
    let clean = sanitize(&raw, &limits()).unwrap();
    assert!(!contains(&clean.bytes, MARK.as_bytes()));
    let kinds = png_chunks(&clean.bytes);
    for k in &kinds {
        assert!(
            [b"IHDR", b"IDAT", b"IEND"].contains(&k),
            "chunk {:?} left",
            String::from_utf8_lossy(k)
        );
    }
    assert_eq!(clean.content_type.mime(), "image/png");
    assert_eq!((clean.width, clean.height), (320, 240));
    assert_same_pixels(&raw, &clean.bytes);
}

#[test]
fn png_transparency_is_kept() {
    let src = face_png(16, 16, 4);
    let mut png = Png::from_bytes(Bytes::copy_from_slice(&src)).unwrap();
    png.chunks_mut()
        .insert(1, PngChunk::new(*b"tRNS", vec![0, 40, 0, 30, 0, 30].into()));
    png.chunks_mut().insert(
        1,
        PngChunk::new(*b"gAMA", 45455u32.to_be_bytes().to_vec().into()),
    );
    let raw: Vec<u8> = png.encoder().flat_map(|b| b.to_vec()).collect();
    let clean = sanitize(&raw, &limits()).unwrap();
    assert_eq!(
        png_chunks(&clean.bytes),
        vec![*b"IHDR", *b"tRNS", *b"IDAT", *b"IEND"]
    );
    assert_same_pixels(&raw, &clean.bytes);
}

#[test]
fn jpeg_adobe_segment_kept_other_app_segments_dropped() {
    let src = face_jpeg(64, 64, 5, 90);
    let mut jpeg = Jpeg::from_bytes(Bytes::copy_from_slice(&src)).unwrap();
    let adobe = b"Adobe\0\x64\0\0\0\0\x01".to_vec();
    jpeg.segments_mut().insert(
        0,
        JpegSegment::new_with_contents(markers::APP14, adobe.into()),
    );
    jpeg.segments_mut().insert(
        0,
        JpegSegment::new_with_contents(markers::APP13, b"Photoshop 3.0\0SECRET".to_vec().into()),
    );
    jpeg.segments_mut().insert(
        0,
        JpegSegment::new_with_contents(
            markers::APP2,
            b"ICC_PROFILE\0\x01\x01SECRET".to_vec().into(),
        ),
    );
    let raw: Vec<u8> = jpeg.encoder().flat_map(|b| b.to_vec()).collect();
    let clean = sanitize(&raw, &limits()).unwrap();
    let kept = jpeg_markers(&clean.bytes);
    assert_eq!(kept.iter().filter(|m| **m == markers::APP14).count(), 1);
    assert!(!kept.contains(&markers::APP13) && !kept.contains(&markers::APP2));
    assert!(!contains(&clean.bytes, b"SECRET"));
    assert_same_pixels(&raw, &clean.bytes);
}

#[test]
fn jpeg_segments_after_the_scan_and_trailing_bytes_removed() {
    let src = face_jpeg(120, 90, 6, 85);
    assert!(src.ends_with(&[0xFF, 0xD9]));
    // A comment between the scan data and EOI, then bytes after EOI.
    let mut raw = src[..src.len() - 2].to_vec();
    let comment = format!("tail {MARK}");
    raw.extend_from_slice(&[0xFF, markers::COM]);
    raw.extend_from_slice(&((comment.len() + 2) as u16).to_be_bytes());
    raw.extend_from_slice(comment.as_bytes());
    raw.extend_from_slice(&[0xFF, 0xD9]);
    raw.extend_from_slice(format!("appended {MARK} and more").as_bytes());
    raw.extend_from_slice(&face_jpeg(8, 8, 1, 50)); // e.g. an appended preview image

    let clean = sanitize(&raw, &limits()).unwrap();
    let expected = sanitize(&src, &limits()).unwrap();
    assert!(
        clean.bytes == expected.bytes,
        "exactly the original image is left"
    );
    assert_same_pixels(&src, &clean.bytes);
}

#[test]
fn png_trailing_bytes_removed() {
    let src = face_png(40, 30, 7);
    let mut raw = src.clone();
    raw.extend_from_slice(MARK.as_bytes());
    let clean = sanitize(&raw, &limits()).unwrap();
    assert!(
        *clean.bytes == src,
        "PNG without ancillary chunks comes back unchanged"
    );
}

#[test]
fn truncated_jpeg_rejected() {
    let raw = face_jpeg(640, 480, 8, 85);
    // The decoder alone fills a file cut mid-scan with grey; we must not.
    for cut in [raw.len() / 2, raw.len() - 100, raw.len() - 2, raw.len() - 1] {
        let err = sanitize(&raw[..cut], &limits()).unwrap_err();
        assert_eq!(
            err,
            ImageError::Truncated(ContentType::Jpeg),
            "cut at {cut}"
        );
    }
    for cut in [3, 20, 200, 600] {
        assert!(sanitize(&raw[..cut], &limits()).is_err(), "cut at {cut}");
    }
}

#[test]
fn truncated_png_rejected() {
    let raw = face_png(200, 100, 9);
    for cut in [raw.len() / 2, raw.len() - 12, raw.len() - 1] {
        let err = sanitize(&raw[..cut], &limits()).unwrap_err();
        assert_eq!(err, ImageError::Truncated(ContentType::Png), "cut at {cut}");
    }
    for cut in [8, 20, 33] {
        assert!(sanitize(&raw[..cut], &limits()).is_err(), "cut at {cut}");
    }
}

#[test]
fn png_with_broken_pixel_data_rejected() {
    // Complete chunk structure (IEND present, CRCs right) but the IDAT stream is short.
    let src = face_png(64, 64, 10);
    let png = Png::from_bytes(Bytes::copy_from_slice(&src)).unwrap();
    let idat = png.chunk_by_type(*b"IDAT").unwrap().contents().clone();
    let chunks = vec![
        ihdr(64, 64, 8, 2),
        PngChunk::new(*b"IDAT", idat.slice(..idat.len() / 2)),
        PngChunk::new(*b"IEND", Bytes::new()),
    ];
    let err = sanitize(&png_from_chunks(chunks), &limits()).unwrap_err();
    assert!(
        matches!(err, ImageError::Corrupt { .. } | ImageError::Truncated(_)),
        "{err}"
    );
}

#[test]
fn random_bytes_rejected() {
    let mut state = 0x1234_5678_u32;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    assert_eq!(
        sanitize(&noise, &limits()).unwrap_err(),
        ImageError::NotAnImage
    );
    assert_eq!(
        sanitize(b"", &limits()).unwrap_err(),
        ImageError::NotAnImage
    );
    assert_eq!(
        sanitize(b"GIF89a....", &limits()).unwrap_err(),
        ImageError::NotAnImage
    );
    let mut fake_jpeg = vec![0xFF, 0xD8, 0xFF];
    fake_jpeg.extend_from_slice(&noise);
    assert!(sanitize(&fake_jpeg, &limits()).is_err());
    let mut fake_png = b"\x89PNG\r\n\x1a\n".to_vec();
    fake_png.extend_from_slice(&noise);
    assert!(sanitize(&fake_png, &limits()).is_err());
}

#[test]
fn png_bomb_rejected_before_decoding() {
    let chunks = vec![
        ihdr(60_000, 60_000, 8, 2),
        PngChunk::new(
            *b"IDAT",
            vec![0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01].into(),
        ),
        PngChunk::new(*b"IEND", Bytes::new()),
    ];
    let raw = png_from_chunks(chunks);
    assert!(raw.len() < 100);
    let start = Instant::now();
    let err = sanitize(&raw, &limits()).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_millis(20),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        err,
        ImageError::DimensionsTooLarge {
            width: 60_000,
            height: 60_000,
            max_width: 4096,
            max_height: 4096
        }
    );
    assert_eq!(
        err.to_string(),
        "image is 60000x60000 pixels, more than the limit of 4096x4096"
    );
}

#[test]
fn png_within_dimensions_but_over_memory_rejected() {
    // 4096x4096 RGBA 16-bit needs 128 MiB of pixels, over the 64 MiB budget.
    let chunks = vec![
        ihdr(4096, 4096, 16, 6),
        PngChunk::new(
            *b"IDAT",
            vec![0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01].into(),
        ),
        PngChunk::new(*b"IEND", Bytes::new()),
    ];
    let start = Instant::now();
    let err = sanitize(&png_from_chunks(chunks), &limits()).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_millis(50),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        err,
        ImageError::TooManyPixels {
            max: 64 * 1024 * 1024
        }
    );
}

#[test]
fn jpeg_bomb_rejected_before_decoding() {
    let mut raw = face_jpeg(16, 16, 11, 80);
    // Patch the SOF0 height and width fields (FF C0 len(2) precision(1) h(2) w(2)).
    let sof = raw.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    raw[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
    raw[sof + 7..sof + 9].copy_from_slice(&50_000u16.to_be_bytes());
    let start = Instant::now();
    let err = sanitize(&raw, &limits()).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_millis(20),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(
            err,
            ImageError::DimensionsTooLarge {
                width: 50_000,
                height: 60_000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn dimension_limits_are_inclusive() {
    let raw = face_jpeg(100, 80, 12, 80);
    let mut lim = limits();
    lim.max_width = 100;
    lim.max_height = 80;
    assert!(sanitize(&raw, &lim).is_ok());
    lim.max_width = 99;
    assert!(matches!(
        sanitize(&raw, &lim),
        Err(ImageError::DimensionsTooLarge {
            width: 100,
            height: 80,
            max_width: 99,
            ..
        })
    ));
    lim.max_width = 100;
    lim.max_height = 79;
    assert!(sanitize(&raw, &lim).is_err());
}

#[test]
fn oversize_file_rejected() {
    let raw = face_jpeg(640, 480, 13, 85);
    let mut lim = limits();
    lim.max_file_bytes = raw.len() as u64;
    assert!(sanitize(&raw, &lim).is_ok(), "the limit itself is allowed");
    lim.max_file_bytes = raw.len() as u64 - 1;
    let err = sanitize(&raw, &lim).unwrap_err();
    assert_eq!(
        err,
        ImageError::TooLarge {
            size: raw.len() as u64,
            max: raw.len() as u64 - 1
        }
    );
    assert!(err.to_string().contains("more than the limit"));
}

#[test]
fn extension_mapping() {
    assert_eq!(ContentType::from_extension("jpg"), Some(ContentType::Jpeg));
    assert_eq!(ContentType::from_extension("jpeg"), Some(ContentType::Jpeg));
    assert_eq!(ContentType::from_extension("png"), Some(ContentType::Png));
    assert_eq!(ContentType::from_extension("gif"), None);
    assert_eq!(ContentType::from_extension("JPG"), None);
    assert_eq!(
        ContentType::sniff(&face_png(2, 2, 0)),
        Some(ContentType::Png)
    );
    assert_eq!(
        ContentType::sniff(&face_jpeg(2, 2, 0, 50)),
        Some(ContentType::Jpeg)
    );
}

#[test]
fn debug_output_never_contains_image_bytes() {
    let clean = sanitize(&face_png(8, 8, 14), &limits()).unwrap();
    let dbg = format!("{clean:?}");
    assert!(dbg.contains("bytes>"), "{dbg}");
    assert!(!dbg.contains("137, 80, 78, 71"), "{dbg}");
}

/// Progressive JPEG with restart markers (10 scans, Huffman tables between
/// scans), made losslessly from `face_jpeg(96, 64, 42, 85)` by
/// `jpegtran -progressive -restart 2 -copy none`.
const PROGRESSIVE: &[u8] = include_bytes!("fixtures/progressive-restart.jpg");

fn segment(marker: u8, content: &[u8]) -> Vec<u8> {
    let mut s = vec![0xFF, marker];
    s.extend_from_slice(&((content.len() + 2) as u16).to_be_bytes());
    s.extend_from_slice(content);
    s
}

#[test]
fn progressive_jpeg_with_restarts_kept_losslessly() {
    assert_eq!(
        PROGRESSIVE
            .windows(2)
            .filter(|w| *w == [0xFF, markers::SOS])
            .count(),
        10
    );
    let clean = sanitize(PROGRESSIVE, &limits()).unwrap();
    assert_eq!((clean.width, clean.height), (96, 64));
    assert_same_pixels(PROGRESSIVE, &clean.bytes);
    // Same pixels as the baseline file it was made from.
    assert_same_pixels(&face_jpeg(96, 64, 42, 85), &clean.bytes);

    // Metadata hidden between scans is removed too; every scan survives.
    let second_sos = PROGRESSIVE
        .windows(2)
        .enumerate()
        .filter(|(_, w)| *w == [0xFF, markers::SOS])
        .nth(1)
        .unwrap()
        .0;
    let mut raw = PROGRESSIVE[..second_sos].to_vec();
    raw.extend(segment(markers::COM, MARK.as_bytes()));
    raw.extend(segment(markers::APP1, format!("Exif\0\0{MARK}").as_bytes()));
    raw.extend_from_slice(&PROGRESSIVE[second_sos..]);
    let raw = with_exif_gps(&raw, MARK);
    let stripped = sanitize(&raw, &limits()).unwrap();
    assert!(!contains(&stripped.bytes, MARK.as_bytes()));
    assert!(stripped.bytes == clean.bytes);
    assert_eq!(
        stripped
            .bytes
            .windows(2)
            .filter(|w| *w == [0xFF, markers::SOS])
            .count(),
        10
    );
}

#[test]
fn progressive_jpeg_truncated_between_scans_rejected() {
    // Cut right before the 6th scan: every remaining segment is complete,
    // only EOI and later scans are missing.
    let sixth = PROGRESSIVE
        .windows(2)
        .enumerate()
        .filter(|(_, w)| *w == [0xFF, markers::SOS])
        .nth(5)
        .unwrap()
        .0;
    assert_eq!(
        sanitize(&PROGRESSIVE[..sixth], &limits()).unwrap_err(),
        ImageError::Truncated(ContentType::Jpeg)
    );
}

/// Found by the `sanitize` fuzz target (fuzz/, RELIABILITY.md "Fuzzing"):
/// files with fill bytes (`FF FF …`) before a metadata segment inside the
/// scan data. The segment was removed but its fill bytes were kept, and ran
/// into the scan data that followed as a bogus marker (`FF 1A`, `FF 7D`):
/// the output was an image `sanitize` itself refuses. Fill bytes now go with
/// their marker, so a sanitized image is a fixed point.
#[test]
fn jpeg_fill_bytes_go_with_a_dropped_segment() {
    let found: [(&str, &[u8]); 2] = [
        (
            "jpeg-fill-before-dropped-app-1",
            include_bytes!("fixtures/fuzz/sanitize/jpeg-fill-before-dropped-app-1.jpg"),
        ),
        (
            "jpeg-fill-before-dropped-app-2",
            include_bytes!("fixtures/fuzz/sanitize/jpeg-fill-before-dropped-app-2.jpg"),
        ),
    ];
    for (name, raw) in found {
        let clean = sanitize(raw, &limits()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let again = sanitize(&clean.bytes, &limits())
            .unwrap_or_else(|e| panic!("{name}: the sanitized image is refused: {e}"));
        assert!(again.bytes == clean.bytes, "{name}: not a fixed point");
        assert!(
            !clean.bytes.windows(2).any(|w| w == [0xFF, 0xFF]),
            "{name}: fill bytes left"
        );
    }
}

/// A progressive JPEG keeps every DCT coefficient until its last scan, which
/// the decoder allocates outside `image::Limits`: a small file announcing
/// 4096x4096 would hold about 144 MiB while decoding. Its frame header alone
/// refuses it against `max_alloc_bytes`, before anything is allocated; the
/// same file as a small image is accepted.
#[test]
fn progressive_jpeg_over_the_memory_budget_refused_from_its_header() {
    let sof = PROGRESSIVE
        .windows(2)
        .position(|w| w == [0xFF, 0xC2])
        .expect("a progressive frame header");
    let mut bomb = PROGRESSIVE.to_vec();
    // SOF2: FF C2, length (2), precision (1), height (2), width (2).
    bomb[sof + 5..sof + 7].copy_from_slice(&4096u16.to_be_bytes());
    bomb[sof + 7..sof + 9].copy_from_slice(&4096u16.to_be_bytes());
    let lim = limits();
    assert_eq!(
        sanitize(&bomb, &lim).unwrap_err(),
        ImageError::TooManyPixels {
            max: lim.max_alloc_bytes
        }
    );
    sanitize(PROGRESSIVE, &lim).unwrap();

    // A real progressive encoding at 4096x4096 (the largest the default
    // limits allow as a baseline image) is refused the same way; at
    // 1280x960 it is accepted, pixels unchanged.
    let real = progressive_jpeg(4096, 4096, 7, 75);
    assert_eq!(
        sanitize(&real, &lim).unwrap_err(),
        ImageError::TooManyPixels {
            max: lim.max_alloc_bytes
        }
    );
    let fits = progressive_jpeg(1280, 960, 7, 75);
    let clean = sanitize(&fits, &lim).unwrap();
    assert_eq!((clean.width, clean.height), (1280, 960));
    assert_same_pixels(&clean.bytes, &fits);
}

/// Found by the `sanitize` fuzz target (RELIABILITY.md "Findings"): a
/// 2,332-byte hostile JPEG on which zune-jpeg 0.5.15 (behind `image`)
/// unwraps a `None` in its AVX2 IDCT (upstream issue 361). The panic is
/// caught at the decoder boundary and refuses the file like a corrupt one
/// (ARCHITECTURE I16). On a CPU without AVX2 the scalar IDCT runs and the
/// file is refused for what it is; accepted it never is.
#[test]
fn a_decoder_panic_refuses_the_file() {
    let raw = include_bytes!("fixtures/fuzz/sanitize/jpeg-decoder-panic.jpg");
    let err = sanitize(raw, &limits()).unwrap_err();
    if std::arch::is_x86_feature_detected!("avx2") {
        match &err {
            ImageError::DecoderFailed { format, reason } => {
                assert_eq!(*format, ContentType::Jpeg);
                assert!(!reason.is_empty());
            }
            other => panic!("expected the decoder failure, got {other:?}"),
        }
        assert!(err.to_string().contains("JPEG decoder failed"), "{err}");
    }
    // The boundary is left behind: a panic here is no longer a decoder's.
    assert!(!facegate::sanitize::decoding());
    // And the next image decodes as before.
    sanitize(PROGRESSIVE, &limits()).unwrap();
}

/// Fill bytes before the segments after a scan (a legal JPEG) are dropped
/// with them; pixels stay the same.
#[test]
fn jpeg_fill_bytes_between_scans_dropped() {
    let clean = sanitize(PROGRESSIVE, &limits()).unwrap();
    let second = clean
        .bytes
        .windows(2)
        .enumerate()
        .filter(|(_, w)| *w == [0xFF, markers::SOS])
        .nth(1)
        .unwrap()
        .0;
    // The segment before the second scan (a DHT or the SOS itself), with
    // fill bytes and a comment in front of it.
    let mut padded = clean.bytes[..second].to_vec();
    padded.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFE, 0x00, 0x04, b'h', b'i', 0xFF, 0xFF]);
    padded.extend_from_slice(&clean.bytes[second..]);
    let again = sanitize(&padded, &limits()).unwrap();
    assert!(again.bytes == clean.bytes);
    assert_same_pixels(&again.bytes, PROGRESSIVE);
}
