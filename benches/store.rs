//! Store benchmark (plain main, `cargo bench --bench store`):
//! - group-commit insert throughput (captures/s at several batch sizes),
//! - `pending(16)` latency with a full outbox,
//! - purge of one subject's 100 captures among 100,000 queued (incl. WAL checkpoint).
//!
//! Set `FACEGATE_BENCH_DIR` to run on a specific file system (default: system temp dir).

use std::time::{Duration, Instant};

use facegate::config::{OutboxConfig, WhenFull};
use facegate::consent::{Consent, UPLOAD_SCOPE};
use facegate::crypto::DeviceKey;
use facegate::ids::SubjectId;
use facegate::store::{Capture, PurgeReason, Store};
use facegate_testkit::bench;

const NOW: i64 = 1_800_000_000;
const QUEUED: usize = 100_000;
const PER_SUBJECT: usize = 100;
const IMAGE_BYTES: usize = 2_048;

fn consent(subject: &str) -> Consent {
    Consent {
        id: format!("consent-{subject}"),
        subject: SubjectId::new(subject).expect("subject id"),
        issuer: "bench".into(),
        issued_at: NOW - 10,
        expires_at: NOW + 86_400,
        audience: vec!["site".into()],
        scopes: vec![UPLOAD_SCOPE.into()],
        kid: "k".into(),
        token: "h.p.s".into(),
    }
}

fn capture(subject: &str, n: usize, image: &[u8]) -> Capture {
    Capture {
        capture_id: format!("{subject}-{n:06}").into(),
        subject: SubjectId::new(subject).expect("subject id"),
        consent_id: format!("consent-{subject}"),
        captured_at: NOW,
        camera: "cam-1".into(),
        content_type: "image/jpeg".into(),
        sha256: [0u8; 32],
        image: image.to_vec().into(),
    }
}

fn report(name: &str, mut samples: Vec<Duration>) {
    let (text, _) = bench::summary(&mut samples);
    println!("{name}: {text}");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = bench::disk_tempdir();
    let mut store = Store::open(dir.path(), DeviceKey::from_bytes([7u8; 32]))?;
    let policy = OutboxConfig {
        retention: Duration::from_secs(7 * 86_400),
        quota_bytes: u64::MAX / 2,
        when_full: WhenFull::RejectNew,
    };
    let image: Vec<u8> = (0..IMAGE_BYTES).map(|i| (i % 251) as u8).collect();

    // Fill: 1000 subjects x 100 captures, one transaction per 1000 inserts.
    let start = Instant::now();
    let subjects = QUEUED / PER_SUBJECT;
    for s in 0..subjects {
        store.add_consent(&consent(&format!("S-{s:05}")), NOW, None)?;
    }
    let mut batch = Vec::with_capacity(1000);
    for i in 0..QUEUED {
        let s = format!("S-{:05}", i % subjects);
        batch.push(capture(&s, i, &image));
        if batch.len() == 1000 {
            store.insert_captures(std::mem::take(&mut batch), &policy, NOW)?;
        }
    }
    let fill = start.elapsed();
    println!(
        "fill: {QUEUED} captures of {IMAGE_BYTES} B in {:.1} s ({:.0} captures/s in 1000-capture transactions)",
        fill.as_secs_f64(),
        QUEUED as f64 / fill.as_secs_f64()
    );

    // Group-commit throughput at small batch sizes (synchronous=FULL).
    for size in [1usize, 10, 50] {
        let rounds = 200 / size.max(1) + 5;
        let start = Instant::now();
        for r in 0..rounds {
            let batch = (0..size)
                .map(|k| capture("S-00000", 1_000_000 + r * 100 + k + size * 10_000, &image))
                .collect();
            store.insert_captures(batch, &policy, NOW)?;
        }
        let n = rounds * size;
        println!(
            "insert batch={size}: {:.0} captures/s",
            n as f64 / start.elapsed().as_secs_f64()
        );
    }

    // pending(16) with a full outbox.
    let mut samples = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let got = store.pending(16, &[])?;
        samples.push(t.elapsed());
        assert_eq!(got.len(), 16);
    }
    report("pending(16)", samples);

    // Purge one subject with 100 captures among ~100,000 (incl. WAL checkpoint).
    let mut samples = Vec::new();
    for round in 0..50 {
        let subject = format!("P-{round:03}");
        store.add_consent(&consent(&subject), NOW, None)?;
        let batch = (0..PER_SUBJECT)
            .map(|k| capture(&subject, k, &image))
            .collect();
        store.insert_captures(batch, &policy, NOW)?;
        let subject = SubjectId::new(subject).expect("subject id");
        let t = Instant::now();
        let purged = store.purge_subject(&subject, NOW, PurgeReason::Revoked, None)?;
        samples.push(t.elapsed());
        assert_eq!(purged.len(), PER_SUBJECT);
    }
    report("purge_subject(100 of 100k)", samples);

    let mut samples = Vec::new();
    for round in 0..50 {
        let subject = format!("R-{round:03}");
        store.add_consent(&consent(&subject), NOW, None)?;
        let batch = (0..PER_SUBJECT)
            .map(|k| capture(&subject, k, &image))
            .collect();
        store.insert_captures(batch, &policy, NOW)?;
        let subject = SubjectId::new(subject).expect("subject id");
        let t = Instant::now();
        let r = store.revoke(&subject, NOW, NOW, None)?;
        samples.push(t.elapsed());
        assert_eq!(r.purged.len(), PER_SUBJECT);
    }
    report("revoke(100 of 100k)", samples);
    println!("outbox: {:?}", store.outbox_stats(NOW)?);
    Ok(())
}
