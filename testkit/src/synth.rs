//! Synthetic captures for tests, benchmarks and the demo: deterministic,
//! face-like drawings (never real people) and helpers that plant metadata in
//! them (EXIF with GPS, XMP, comments, PNG text chunks) so sanitization can be
//! shown to remove it.
//!
//! Everything here is deterministic: the same arguments give the same bytes.

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ImageEncoder, Rgb, RgbImage};
use img_parts::jpeg::{markers, Jpeg, JpegSegment};
use img_parts::png::{Png, PngChunk};
use img_parts::Bytes;

/// Small deterministic PRNG (SplitMix64), enough for pixel noise.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Draws the face-like pattern: a gradient background, a skin-coloured
/// ellipse, two eyes and a mouth, plus seeded noise so the JPEG has a
/// camera-like size (about 50 KB at 640x480, quality 85).
fn draw_face(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = SplitMix(seed);
    let (w, h) = (f64::from(width), f64::from(height));
    let (cx, cy) = (w / 2.0, h / 2.0);
    let (rx, ry) = (w * 0.28, h * 0.40);
    let eye_r = (w.min(h) * 0.05).max(1.0);
    let eyes = [
        (cx - rx * 0.4, cy - ry * 0.25),
        (cx + rx * 0.4, cy - ry * 0.25),
    ];
    let tint = (seed % 40) as f64;
    RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (f64::from(x), f64::from(y));
        let noise = (rng.next() % 13) as f64 - 6.0;
        let dx = (fx - cx) / rx;
        let dy = (fy - cy) / ry;
        let in_face = dx * dx + dy * dy <= 1.0;
        let in_eye = eyes
            .iter()
            .any(|(ex, ey)| (fx - ex).powi(2) + (fy - ey).powi(2) <= eye_r * eye_r);
        let in_mouth = (fy - (cy + ry * 0.45)).abs() < ry * 0.05 && (fx - cx).abs() < rx * 0.45;
        let base = if in_eye || in_mouth {
            [40.0, 30.0, 30.0]
        } else if in_face {
            [220.0 - tint, 180.0, 150.0 + tint / 2.0]
        } else {
            [60.0 + 120.0 * fy / h, 90.0 + tint, 140.0 + 80.0 * fx / w]
        };
        let px = |v: f64| (v + noise).clamp(0.0, 255.0) as u8;
        Rgb([px(base[0]), px(base[1]), px(base[2])])
    })
}

/// A synthetic face-like JPEG (baseline, JFIF header, no other metadata).
///
/// # Panics
/// If `width` or `height` is 0 or above 65535 (the encoder refuses them).
pub fn face_jpeg(width: u32, height: u32, seed: u64, quality: u8) -> Vec<u8> {
    let img = draw_face(width, height, seed);
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .write_image(img.as_raw(), width, height, image::ExtendedColorType::Rgb8)
        .expect("encoding a valid in-memory RGB image cannot fail");
    out
}

/// A synthetic face-like PNG (RGB 8-bit, no ancillary chunks).
///
/// # Panics
/// If `width` or `height` is 0.
pub fn face_png(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let img = draw_face(width, height, seed);
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(img.as_raw(), width, height, image::ExtendedColorType::Rgb8)
        .expect("encoding a valid in-memory RGB image cannot fail");
    out
}

/// Little-endian TIFF block as found in EXIF: IFD0 with `ImageDescription =
/// marker` and a pointer to a GPS IFD holding GPSVersionID, latitude
/// 52°31'12.5" N and longitude 13°24'36.25" E.
pub fn exif_tiff(marker: &str) -> Vec<u8> {
    const ASCII: u16 = 2;
    const LONG: u16 = 4;
    const RATIONAL: u16 = 5;
    const BYTE: u16 = 1;
    fn entry(out: &mut Vec<u8>, tag: u16, typ: u16, count: u32, value: [u8; 4]) {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&typ.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&value);
    }
    let mut desc = marker.as_bytes().to_vec();
    desc.push(0);
    let desc_len = desc.len() as u32;
    if desc.len() % 2 == 1 {
        desc.push(0); // keep following offsets word aligned
    }
    let ifd0_at: u32 = 8;
    let ifd0_size: u32 = 2 + 2 * 12 + 4;
    let desc_at = ifd0_at + ifd0_size;
    let gps_at = desc_at + desc.len() as u32;
    let gps_size: u32 = 2 + 5 * 12 + 4;
    let lat_at = gps_at + gps_size;
    let lon_at = lat_at + 24;

    let mut t = Vec::new();
    t.extend_from_slice(b"II");
    t.extend_from_slice(&42u16.to_le_bytes());
    t.extend_from_slice(&ifd0_at.to_le_bytes());
    // IFD0: entries sorted by tag.
    t.extend_from_slice(&2u16.to_le_bytes());
    entry(&mut t, 0x010E, ASCII, desc_len, desc_at.to_le_bytes());
    entry(&mut t, 0x8825, LONG, 1, gps_at.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    t.extend_from_slice(&desc);
    // GPS IFD.
    t.extend_from_slice(&5u16.to_le_bytes());
    entry(&mut t, 0x0000, BYTE, 4, [2, 3, 0, 0]);
    entry(&mut t, 0x0001, ASCII, 2, *b"N\0\0\0");
    entry(&mut t, 0x0002, RATIONAL, 3, lat_at.to_le_bytes());
    entry(&mut t, 0x0003, ASCII, 2, *b"E\0\0\0");
    entry(&mut t, 0x0004, RATIONAL, 3, lon_at.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    for (num, den) in [(52, 1), (31, 1), (1250, 100), (13, 1), (24, 1), (3625, 100)] {
        t.extend_from_slice(&(num as u32).to_le_bytes());
        t.extend_from_slice(&(den as u32).to_le_bytes());
    }
    t
}

/// Adds, right after SOI, an EXIF APP1 segment (see [`exif_tiff`]), an XMP
/// APP1 packet and a COM segment, each containing `marker`, so a test can
/// check that none of it survives sanitization.
///
/// # Panics
/// If `jpeg` does not parse as JPEG or `marker` is longer than 60000 bytes.
pub fn with_exif_gps(jpeg: &[u8], marker: &str) -> Vec<u8> {
    assert!(marker.len() <= 60_000, "marker too long for a JPEG segment");
    let mut img = Jpeg::from_bytes(Bytes::copy_from_slice(jpeg)).expect("input must be a JPEG");
    let mut exif = b"Exif\0\0".to_vec();
    exif.extend_from_slice(&exif_tiff(marker));
    let xmp = format!(
        "http://ns.adobe.com/xap/1.0/\0<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\
         <x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\
         <rdf:Description xmlns:dc=\"http://purl.org/dc/elements/1.1/\" dc:description=\"{marker}\"/>\
         </rdf:RDF></x:xmpmeta><?xpacket end=\"w\"?>"
    );
    let segments = img.segments_mut();
    segments.insert(
        0,
        JpegSegment::new_with_contents(markers::APP1, exif.into()),
    );
    segments.insert(
        1,
        JpegSegment::new_with_contents(markers::APP1, xmp.into_bytes().into()),
    );
    segments.insert(
        2,
        JpegSegment::new_with_contents(markers::COM, marker.as_bytes().to_vec().into()),
    );
    collect(img.encoder())
}

/// Adds `tEXt`, `iTXt` and `eXIf` chunks containing `marker` after IHDR, and
/// another `tEXt` just before IEND (CRCs computed).
///
/// # Panics
/// If `png` does not parse as PNG.
pub fn png_with_text(png: &[u8], marker: &str) -> Vec<u8> {
    let mut img = Png::from_bytes(Bytes::copy_from_slice(png)).expect("input must be a PNG");
    let mut text = b"Comment\0".to_vec();
    text.extend_from_slice(marker.as_bytes());
    // keyword, NUL, compression flag, method, language tag NUL, translated keyword NUL, text
    let mut itxt = b"Description\0\0\0en\0\0".to_vec();
    itxt.extend_from_slice(marker.as_bytes());
    let chunks = img.chunks_mut();
    chunks.insert(1, PngChunk::new(*b"tEXt", text.clone().into()));
    chunks.insert(2, PngChunk::new(*b"iTXt", itxt.into()));
    chunks.insert(3, PngChunk::new(*b"eXIf", exif_tiff(marker).into()));
    let before_end = chunks.len() - 1;
    chunks.insert(before_end, PngChunk::new(*b"tEXt", text.into()));
    collect(img.encoder())
}

fn collect<I: Iterator<Item = Bytes>>(pieces: I) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        out.extend_from_slice(&piece);
    }
    out
}

/// The same synthetic face as [`face_jpeg`], as a progressive JPEG (several
/// scans; a decoder keeps every DCT coefficient until the last one).
///
/// # Panics
/// If `width` or `height` is 0 or above 65535 (the encoder refuses them).
pub fn progressive_jpeg(width: u32, height: u32, seed: u64, quality: u8) -> Vec<u8> {
    let img = draw_face(width, height, seed);
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    encoder.set_progressive(true);
    let side = |v: u32| u16::try_from(v).expect("JPEG sides are at most 65535");
    encoder
        .encode(
            img.as_raw(),
            side(width),
            side(height),
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("encoding a valid in-memory RGB image cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_camera_sized() {
        let a = face_jpeg(640, 480, 7, 85);
        assert_eq!(a, face_jpeg(640, 480, 7, 85));
        assert_ne!(a, face_jpeg(640, 480, 8, 85));
        assert!(
            (40_000..=60_000).contains(&a.len()),
            "640x480 q85 is {} bytes",
            a.len()
        );
        let img = image::load_from_memory(&a).unwrap();
        assert_eq!((img.width(), img.height()), (640, 480));
    }

    #[test]
    fn planted_metadata_is_readable() {
        let jpeg = with_exif_gps(&face_jpeg(64, 48, 1, 85), "MARK-123");
        let parsed = Jpeg::from_bytes(Bytes::from(jpeg.clone())).unwrap();
        assert_eq!(parsed.segments_by_marker(markers::APP1).count(), 2);
        assert_eq!(parsed.segments_by_marker(markers::COM).count(), 1);
        use img_parts::ImageEXIF;
        let exif = parsed.exif().unwrap();
        assert!(exif.starts_with(b"II*\0"));
        // Still a valid image with the metadata in it.
        assert_eq!(image::load_from_memory(&jpeg).unwrap().width(), 64);

        let png = png_with_text(&face_png(32, 16, 1), "MARK-123");
        let parsed = Png::from_bytes(Bytes::from(png.clone())).unwrap();
        assert_eq!(parsed.chunks_by_type(*b"tEXt").count(), 2);
        assert!(parsed.chunk_by_type(*b"eXIf").is_some());
        assert_eq!(image::load_from_memory(&png).unwrap().height(), 16);
    }
}
