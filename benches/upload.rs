//! Upload throughput and CPU per capture of ~48 KB captures: the agent
//! against a plain durable forwarder and a bare publisher, interleaved
//! (`cargo bench --bench upload`; needs `mosquitto`, see
//! scripts/ensure-mosquitto).
//!
//! One private Mosquitto with mutual TLS (the testkit's dev broker) serves
//! every run, with no subscriber on the capture topics. Each round runs, in
//! this order:
//!
//! * **Agent.** A fresh terminal whose encrypted outbox is filled through the
//!   library with N captures (640×480 synthetic JPEGs, ~48 KB), drained by
//!   the benchmark build of `facegate run` with window 16; timed from the
//!   first status saying the uplink is connected to the first status with an
//!   empty outbox (every capture acknowledged and deleted).
//! * **Durable forwarder.** What a store-and-forward client without consent,
//!   encryption or audit does: N envelopes of the agent's exact size in a
//!   SQLite table (WAL, `synchronous=FULL`, filled before the clock starts),
//!   read in order and published with QoS 1 and window 16 by a rumqttc
//!   client with its own certificate; each burst of PUBACKs deletes its rows
//!   in one transaction, on a second connection. Timed from CONNACK to the
//!   commit of the last delete.
//! * **Bare publisher.** The same envelopes from memory, window 16, nothing
//!   kept; CONNACK to the N-th PUBACK.
//!
//! CPU per capture is user + system time from `/proc/PID/stat` over the
//! timed interval: the daemon's for the agent, this process's for the
//! forwarder and the publisher (which run in it), and Mosquitto's for each.
//! Disk writes per capture are `write_bytes` of `/proc/PID/io` over the same
//! interval, of the same process (what wears a terminal's flash).
//!
//! `FACEGATE_BENCH_CAPTURES` (default 6000) sets N, `FACEGATE_BENCH_ROUNDS`
//! (default 3) the rounds, `FACEGATE_BENCH_WINDOW` (default 16) the window
//! of all three (the agent's `mqtt.inflight`), to see how each scales with it.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use facegate_testkit::bench;
use facegate_testkit::broker::Broker;
use rumqttc::QoS;

/// The window of all three sides: `FACEGATE_BENCH_WINDOW`, else 16.
fn window() -> u16 {
    u16::try_from(bench::env_count("FACEGATE_BENCH_WINDOW", 16)).unwrap_or(u16::MAX)
}
const WAIT: Duration = Duration::from_secs(30);

fn main() {
    let n = bench::captures(6000);
    let rounds = bench::rounds(3);
    bench::runtime().block_on(run(n, rounds));
}

/// One run's figures.
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    cpu_us: f64,
    broker_us: f64,
    /// Bytes written to storage per capture.
    written: f64,
}

async fn run(n: usize, rounds: usize) {
    let broker = bench::start_broker();
    let images = bench::camera_jpegs();
    let probe = bench::daemon().broker(&broker).build();
    let payload = bench::envelope_for(&probe.load_config(), &images[0]);
    drop(probe);
    println!(
        "upload: {n} captures per run, envelope {} B, window {}, {rounds} rounds; load {}",
        payload.len(),
        window(),
        bench::loadavg()
    );
    let (mut agent, mut fwd, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let load = bench::loadavg();
        let a = agent_run(&broker, n, &images).await;
        report(round, "agent", &a, &load);
        agent.push(a);
        let load = bench::loadavg();
        let f = forwarder_run(&broker, n, &payload).await;
        report(round, "durable forwarder", &f, &load);
        fwd.push(f);
        let load = bench::loadavg();
        let b = bare_run(&broker, n, &payload).await;
        report(round, "bare publisher", &b, &load);
        bare.push(b);
    }
    for (name, runs) in [
        ("agent", &agent),
        ("durable forwarder", &fwd),
        ("bare publisher", &bare),
    ] {
        let r = |f: fn(&Run) -> f64| summary(runs.iter().map(f).collect());
        println!(
            "RESULT {name:17}: {} captures/s; CPU {} µs/capture; broker {} µs/capture; \
             written {} B/capture",
            r(|x| x.rate),
            r(|x| x.cpu_us),
            r(|x| x.broker_us),
            r(|x| x.written)
        );
    }
    let ratios: Vec<f64> = agent
        .iter()
        .zip(&fwd)
        .map(|(a, f)| a.rate / f.rate)
        .collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = median(agent.iter().map(|a| a.rate).collect())
        / median(fwd.iter().map(|f| f.rate).collect());
    let cpu = median(agent.iter().map(|a| a.cpu_us).collect());
    println!(
        "RESULT agent / durable forwarder = {ratio:.2} (medians; per round {}); target >= 0.7: {}",
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        if ratio >= 0.7 { "PASS" } else { "FAIL" }
    );
    println!(
        "RESULT agent CPU median {cpu:.0} µs/capture; target <= 350: {}; load now {}",
        if cpu <= 350.0 { "PASS" } else { "FAIL" },
        bench::loadavg()
    );
}

fn report(round: usize, name: &str, r: &Run, load: &str) {
    println!(
        "RESULT round {round} {name:17}: {:.0} captures/s, CPU {:.0} µs/capture, broker {:.0} µs/capture, \
         written {:.0} B/capture; load {load}",
        r.rate, r.cpu_us, r.broker_us, r.written
    );
}

/// "min–max (median)" of `v`.
fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:.0}–{:.0} (median {:.0})",
        v[0],
        v[v.len() - 1],
        v[v.len() / 2]
    )
}

fn broker_cpu(broker: &Broker) -> f64 {
    bench::cpu_seconds(broker.pid().expect("broker running"))
}

fn own_cpu() -> f64 {
    bench::cpu_seconds(std::process::id())
}

fn own_writes() -> u64 {
    bench::write_bytes(std::process::id())
}

async fn agent_run(broker: &Broker, n: usize, images: &[Vec<u8>]) -> Run {
    let mut d = bench::daemon()
        .broker(broker)
        .configure(|c| {
            c.inflight(window())
                .fast_reconnect()
                .quota_bytes(4 * 1024 * 1024 * 1024)
        })
        .build();
    bench::forget_session(broker, facegate_testkit::DEVICE).await;
    let cfg = d.load_config();
    bench::fill_outbox(&cfg, &d.consent_signer, 20, n, images, 500);
    let b0 = broker_cpu(broker);
    let t = Instant::now();
    let drained = bench::drain_measured(&mut d, n, Duration::from_secs(300)).await;
    let b1 = broker_cpu(broker);
    // The broker's CPU over the whole drain (connect included), spread over
    // the captures; the drain's own interval is a little shorter.
    let _ = t;
    Run {
        rate: drained.rate,
        cpu_us: drained.cpu_s / n as f64 * 1e6,
        broker_us: (b1 - b0) / n as f64 * 1e6,
        written: drained.written as f64 / n as f64,
    }
}

/// The forwarder's queue: `n` copies of `payload`, committed.
fn fill_queue(path: &Path, n: usize, payload: &[u8]) {
    let mut conn = rusqlite::Connection::open(path).expect("open queue");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE queue (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);",
    )
    .expect("queue schema");
    let tx = conn.transaction().expect("begin");
    {
        let mut st = tx
            .prepare("INSERT INTO queue (payload) VALUES (?1)")
            .expect("prepare");
        for _ in 0..n {
            st.execute([payload]).expect("insert");
        }
    }
    tx.commit().expect("commit");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
}

fn open_queue(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open queue");
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
        .expect("pragmas");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy");
    conn
}

async fn forwarder_run(broker: &Broker, n: usize, payload: &[u8]) -> Run {
    let dir = bench::disk_tempdir();
    let path = dir.path().join("queue.db");
    fill_queue(&path, n, payload);
    let topic = bench::site_topics().device("term-02").captures;
    let (c0, b0, w0) = (own_cpu(), broker_cpu(broker), own_writes());
    let mut p = bench::bare_client(broker, "term-02", window()).await;
    let start = Instant::now();
    let client = p.client.clone();
    // Ids in publish order; PUBACKs of QoS 1 come back in that order.
    let (ids_tx, mut ids_rx) = tokio::sync::mpsc::unbounded_channel::<i64>();
    let reader_path = path.clone();
    let reader = tokio::spawn(async move {
        let conn = open_queue(&reader_path);
        let mut last = 0i64;
        loop {
            let rows: Vec<(i64, Vec<u8>)> = {
                let mut st = conn
                    .prepare_cached(
                        "SELECT id, payload FROM queue WHERE id > ?1 ORDER BY id LIMIT ?2",
                    )
                    .expect("prepare");
                st.query_map([last, i64::from(window())], |r| Ok((r.get(0)?, r.get(1)?)))
                    .expect("read")
                    .collect::<rusqlite::Result<_>>()
                    .expect("rows")
            };
            if rows.is_empty() {
                return;
            }
            for (id, body) in rows {
                last = id;
                let _ = ids_tx.send(id);
                // Waits while rumqttc's window of 16 is full.
                client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, body)
                    .await
                    .expect("publish");
            }
        }
    });
    let mut deleter = open_queue(&path);
    let mut sent: VecDeque<i64> = VecDeque::new();
    let mut done = 0usize;
    while done < n {
        let mut batch = Vec::new();
        p.wait_puback_stamped(WAIT).await.expect("PUBACK");
        batch.push(());
        while p.wait_puback_stamped(Duration::ZERO).await.is_some() {
            batch.push(());
        }
        while let Ok(id) = ids_rx.try_recv() {
            sent.push_back(id);
        }
        let ids: Vec<i64> = batch.iter().filter_map(|()| sent.pop_front()).collect();
        assert_eq!(ids.len(), batch.len(), "a PUBACK for an unknown publish");
        let tx = deleter.transaction().expect("begin");
        {
            let mut st = tx
                .prepare_cached("DELETE FROM queue WHERE id = ?1")
                .expect("prepare");
            for id in &ids {
                st.execute([id]).expect("delete");
            }
        }
        tx.commit().expect("commit");
        done += ids.len();
    }
    let secs = start.elapsed().as_secs_f64();
    let (c1, b1, w1) = (own_cpu(), broker_cpu(broker), own_writes());
    reader.await.expect("reader");
    let left: i64 = deleter
        .query_row("SELECT count(*) FROM queue", [], |r| r.get(0))
        .expect("count");
    assert_eq!(left, 0, "every row deleted");
    Run {
        rate: n as f64 / secs,
        cpu_us: (c1 - c0) / n as f64 * 1e6,
        broker_us: (b1 - b0) / n as f64 * 1e6,
        written: w1.saturating_sub(w0) as f64 / n as f64,
    }
}

async fn bare_run(broker: &Broker, n: usize, payload: &[u8]) -> Run {
    let (c0, b0, w0) = (own_cpu(), broker_cpu(broker), own_writes());
    let mut p = bench::bare_client(broker, "term-02", window()).await;
    let start = Instant::now();
    let client = p.client.clone();
    let topic = bench::site_topics().device("term-02").captures;
    let body = payload.to_vec();
    let sender = tokio::spawn(async move {
        for _ in 0..n {
            client
                .publish(topic.clone(), QoS::AtLeastOnce, false, body.clone())
                .await
                .expect("publish");
        }
    });
    for _ in 0..n {
        p.wait_puback_stamped(WAIT).await.expect("PUBACK");
    }
    let secs = start.elapsed().as_secs_f64();
    let (c1, b1, w1) = (own_cpu(), broker_cpu(broker), own_writes());
    let _ = sender.await;
    Run {
        rate: n as f64 / secs,
        cpu_us: (c1 - c0) / n as f64 * 1e6,
        broker_us: (b1 - b0) / n as f64 * 1e6,
        written: w1.saturating_sub(w0) as f64 / n as f64,
    }
}
