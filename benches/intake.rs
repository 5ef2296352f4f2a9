//! Target A: sustained intake of 640×480 JPEGs (~50 KB) with durable commits,
//! next to a bare baseline measured in the same run (`cargo bench --bench intake`).
//!
//! Real pipeline: spool pairs (image + sidecar, each written atomically) are
//! put into a spool directory on tmpfs, consent is granted, then
//! `intake::process_once` runs in a loop on an agent opened with
//! `daemon::open` until the spool is empty. That is the daemon's intake
//! thread minus its idle sleep: scan, read, sanitize (metadata strip + full
//! decode, on all cores), consent gate, AES-GCM encryption, one SQLite
//! transaction per batch of up to 64 (WAL, synchronous=FULL), spool removal.
//!
//! Baseline: the same JPEG bytes from memory, decoded with `image` on one
//! thread, inserted into a plain SQLite table (WAL, synchronous=FULL), once
//! with one transaction per capture and once in transactions of 64.
//!
//! `FACEGATE_BENCH_CAPTURES` (default 2000) sets the count; state lives in
//! `FACEGATE_BENCH_DIR` (default: the system temp dir), the spool on /dev/shm.

use std::time::{Instant, SystemTime};

use facegate::{clock, consent, daemon, intake};
use facegate_testkit::bench::{self, DISTINCT_IMAGES};
use rusqlite::{params, Connection};

const SUBJECT: &str = "S-bench";
const BATCH: usize = intake::MAX_BATCH;

fn main() {
    let n = bench::captures(2000);
    let images = bench::camera_jpegs();
    let avg = images.iter().map(Vec::len).sum::<usize>() / images.len();
    println!("intake: {n} captures, 640x480 q85 JPEG, {avg} B average, {DISTINCT_IMAGES} distinct images");

    let real = real_pipeline(n, &images);
    let per_tx = baseline(n, &images, 1);
    let batched = baseline(n, &images, BATCH);
    println!("RESULT A real pipeline (process_once loop):        {real:>7.1} captures/s");
    println!("RESULT A baseline decode+insert, 1 capture/tx:      {per_tx:>7.1} captures/s");
    println!("RESULT A baseline decode+insert, {BATCH} captures/tx:    {batched:>7.1} captures/s");
    println!(
        "RESULT A real / baseline(1/tx) = {:.2}, real / baseline({BATCH}/tx) = {:.2}; target >= 150/s: {}",
        real / per_tx,
        real / batched,
        if real >= 150.0 { "PASS" } else { "FAIL" }
    );
}

/// Captures/s of the real intake, from a full spool to an empty one.
fn real_pipeline(n: usize, images: &[Vec<u8>]) -> f64 {
    let terminal = bench::daemon().build();
    let cfg = terminal.load_config();
    let agent = daemon::open(cfg.clone()).expect("open agent");

    // Grant consent first (what `ctl consent add` does: verify, then store).
    let now = clock::now();
    let token = terminal.consent_signer.consent(SUBJECT, 86_400);
    let c = consent::verify_consent(
        &token,
        &cfg.trust,
        &cfg.identity,
        now,
        consent::TokenLimits::of(&cfg),
    )
    .expect("consent");
    agent
        .db()
        .lock()
        .add_consent(&c, now, None)
        .expect("store consent");

    let t = Instant::now();
    for i in 0..n {
        terminal
            .spool
            .pair(
                &format!("cap-{i:06}"),
                "jpg",
                &images[i % images.len()],
                Some(SUBJECT),
            )
            .expect("spool pair");
    }
    println!(
        "real: wrote {n} spool pairs in {:.2} s (not timed)",
        t.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let mut accepted = 0;
    let mut batches = 0;
    while !terminal.spool.is_empty() {
        let report = intake::process_once(&agent, SystemTime::now()).expect("intake batch");
        assert_eq!(
            report.rejected + report.dropped + report.over_quota,
            0,
            "{report:?}"
        );
        accepted += report.accepted;
        batches += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(accepted, n, "every pair must be accepted");
    let stats = agent.db().lock().outbox_stats(clock::now()).expect("stats");
    assert_eq!(stats.captures as usize, n);
    println!(
        "real: {n} captures in {secs:.2} s over {batches} batches, outbox {} B",
        stats.bytes
    );
    n as f64 / secs
}

/// Captures/s of bare decode + insert, `per_tx` captures per transaction.
fn baseline(n: usize, images: &[Vec<u8>], per_tx: usize) -> f64 {
    let dir = bench::disk_tempdir();
    let mut db = Connection::open(dir.path().join("baseline.db")).expect("open baseline db");
    db.pragma_update(None, "journal_mode", "WAL")
        .expect("WAL mode");
    db.pragma_update(None, "synchronous", "FULL")
        .expect("synchronous=FULL");
    db.execute_batch(
        "CREATE TABLE capture (id INTEGER PRIMARY KEY, name TEXT NOT NULL, image BLOB NOT NULL)",
    )
    .expect("create table");
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let tx = db.transaction().expect("begin");
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO capture (name, image) VALUES (?1, ?2)")
                .expect("prepare");
            for k in i..(i + per_tx).min(n) {
                let bytes = &images[k % images.len()];
                let img = image::load_from_memory(bytes).expect("decode");
                assert_eq!(img.width(), 640);
                stmt.execute(params![format!("cap-{k:06}"), bytes])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
        i += per_tx;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("baseline {per_tx}/tx: {n} captures in {secs:.2} s");
    n as f64 / secs
}
