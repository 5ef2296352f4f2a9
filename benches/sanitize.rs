//! Timing of capture handling on camera-sized synthetic images:
//! `cargo bench --bench sanitize`. Prints median and p95 per operation.
//! (No benchmark framework: a plain timed loop keeps the dependency list short.)

use std::hint::black_box;
use std::time::{Duration, Instant};

use facegate::sanitize::sanitize;
use facegate::spool::scan;
use facegate_testkit::config::capture_limits;
use facegate_testkit::synth::{face_jpeg, face_png, png_with_text, with_exif_gps};

fn time(label: &str, iterations: usize, mut f: impl FnMut()) {
    for _ in 0..iterations.div_ceil(10) {
        f();
    }
    let mut samples: Vec<Duration> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort();
    let median = samples[samples.len() / 2];
    let p95 = samples[samples.len() * 95 / 100];
    println!("{label:<48} median {median:>10.3?}   p95 {p95:>10.3?}   ({iterations} runs)");
}

fn main() {
    let lim = capture_limits();
    let jpeg = with_exif_gps(&face_jpeg(640, 480, 1, 85), "bench-marker");
    println!("640x480 q85 JPEG with EXIF/XMP/COM: {} bytes", jpeg.len());
    time("sanitize 640x480 JPEG", 300, || {
        black_box(sanitize(black_box(&jpeg), &lim).unwrap());
    });
    let big = face_jpeg(1920, 1080, 2, 90);
    println!("1920x1080 q90 JPEG: {} bytes", big.len());
    time("sanitize 1920x1080 JPEG", 50, || {
        black_box(sanitize(black_box(&big), &lim).unwrap());
    });
    let png = png_with_text(&face_png(640, 480, 3), "bench-marker");
    println!("640x480 PNG with text chunks: {} bytes", png.len());
    time("sanitize 640x480 PNG", 100, || {
        black_box(sanitize(black_box(&png), &lim).unwrap());
    });

    let dir = tempfile::tempdir().unwrap();
    for i in 0..500 {
        std::fs::write(dir.path().join(format!("cap-{i}.jpg")), b"x").unwrap();
        std::fs::write(dir.path().join(format!("cap-{i}.json")), b"{}").unwrap();
    }
    time("scan spool with 500 pairs (batch 32)", 100, || {
        let s = scan(
            dir.path(),
            std::time::SystemTime::now(),
            Duration::from_secs(60),
            32,
        )
        .unwrap();
        black_box(s);
    });
}
