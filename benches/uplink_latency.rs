//! Target D3: stop-and-wait latency with an in-flight window of 1, agent vs a
//! bare rumqttc publisher (`cargo bench --bench uplink_latency`; needs `mosquitto`).
//!
//! Both run for 35 s at 10 captures/s against the same private Mosquitto
//! (mutual TLS, keep-alive 5 s on both sides), so keep-alive pings fall between
//! and during uploads.
//!
//! * Agent: the benchmark build of `facegate run` with `mqtt.inflight = 1`,
//!   `mqtt.keep_alive = "5s"`, JSON logs and
//!   `RUST_LOG=info,facegate::uplink::timing=debug`. A 640×480 synthetic JPEG
//!   pair is dropped into the spool every 100 ms (consent granted first). The
//!   uplink's measurement hook logs, per capture, the time from handing the
//!   publish to rumqttc (`try_publish`) to the PUBACK being polled from its
//!   event loop (`handed_to_puback_us`); the bench reads those log events.
//! * Baseline: a bare rumqttc client (window 1, same envelope size) publishes
//!   every 100 ms and times `publish` → PUBACK polled from its event loop.
//!
//! Reports p50/p90/p99/max for both and the five slowest samples with their
//! offset from the start (outliers near multiples of 5 s would point at the
//! keep-alive).

#[path = "support/mqtt.rs"]
mod mqtt;
mod support;

use std::time::{Duration, Instant};

use facegate::synth;
use facegate::uplink::eventloop::TIMING_TARGET;
use serde_json::Value;

const RUN: Duration = Duration::from_secs(35);
const EVERY: Duration = Duration::from_millis(100);

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run());
}

async fn run() {
    let broker = mqtt::start_broker();
    let images: Vec<Vec<u8>> = (0..8).map(|s| synth::face_jpeg(640, 480, s, 85)).collect();
    let dir = support::disk_tempdir();
    let spool = support::spool_tempdir();
    let trust = support::Trust::new();
    let files = mqtt::agent_files(&broker);
    let toml = support::config_toml(
        &dir.path().join("state"),
        spool.path(),
        &files,
        &trust,
        "inflight = 1\nkeep_alive = \"5s\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"",
        "[log]\nformat = \"json\"\n",
    );
    let cfg = support::parse(&toml, dir.path());
    let config_path = dir.path().join("facegate.toml");
    std::fs::write(&config_path, &toml).expect("write config");
    let payload = mqtt::envelope_for(&cfg, &images[0]);

    // Baseline first: bare rumqttc, window 1.
    let mut base = baseline(&broker, &payload).await;

    // Agent.
    let mut d = support::DaemonProc::start(
        &config_path,
        &cfg.control.socket,
        &dir.path().join("daemon.log"),
        &[("RUST_LOG", "info,facegate::uplink::timing=debug")],
    )
    .await;
    d.grant(&trust.consent.consent("S-lat")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.status().await["uplink"]["connected"] != true {
        assert!(Instant::now() < deadline, "agent did not connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = tokio::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < RUN {
        support::write_pair(
            spool.path(),
            &format!("lat-{n:05}"),
            &images[n % images.len()],
            "S-lat",
        );
        n += 1;
        tokio::time::sleep_until(start + EVERY * n as u32).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.outbox_len().await > 0 || support::dir_len(spool.path()) > 0 {
        assert!(Instant::now() < deadline, "agent did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = d.status().await;
    d.stop();
    let log = d.log_text();
    let lost = log.matches("broker connection lost").count();
    let mut agent = timing_events(&log);
    assert_eq!(agent.len(), n, "one timing event per capture ({st})");

    println!("latency: {n} captures of {} B envelope each side, keep-alive 5 s, window 1; agent disconnects: {lost}", payload.len());
    report("baseline bare rumqttc publish -> PUBACK", &mut base);
    report("agent handed to MQTT -> PUBACK", &mut agent);
    let p99 = |s: &mut Vec<(f64, Duration)>| {
        let mut d: Vec<Duration> = s.iter().map(|x| x.1).collect();
        support::summary(&mut d).1
    };
    let (bp, ap) = (p99(&mut base), p99(&mut agent));
    let ratio = ap.as_secs_f64() / bp.as_secs_f64();
    println!(
        "RESULT D3 agent p99 / baseline p99 = {ratio:.2}; target <= 1.5: {}",
        if ratio <= 1.5 { "PASS" } else { "FAIL" }
    );
}

/// Publishes every 100 ms for 35 s; returns (offset s, publish → PUBACK) per message.
async fn baseline(broker: &facegate::devbroker::DevBroker, payload: &[u8]) -> Vec<(f64, Duration)> {
    let mut p = mqtt::BarePublisher::connect(broker, "term-02", 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = tokio::time::Instant::now();
    let mut out = Vec::new();
    let mut n = 0u32;
    while start.elapsed() < RUN {
        let t0 = Instant::now();
        mqtt::publish(&p, payload.to_vec()).await;
        let acked = p.next_puback().await;
        out.push((
            (t0 - start.into_std()).as_secs_f64(),
            acked.saturating_duration_since(t0),
        ));
        n += 1;
        tokio::time::sleep_until(start + EVERY * n).await;
    }
    out
}

/// (offset s from the first event, handed → PUBACK) from the agent's JSON log.
fn timing_events(log: &str) -> Vec<(f64, Duration)> {
    let mut out = Vec::new();
    let mut first: Option<time::OffsetDateTime> = None;
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["target"] != TIMING_TARGET {
            continue;
        }
        let us = v["fields"]["handed_to_puback_us"]
            .as_u64()
            .expect("handed_to_puback_us");
        let at = v["timestamp"]
            .as_str()
            .and_then(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            })
            .expect("timestamp");
        let t0 = *first.get_or_insert(at);
        out.push(((at - t0).as_seconds_f64(), Duration::from_micros(us)));
    }
    out
}

fn report(label: &str, samples: &mut [(f64, Duration)]) {
    let mut d: Vec<Duration> = samples.iter().map(|x| x.1).collect();
    let (text, _) = support::summary(&mut d);
    println!("RESULT D3 {label}: {text}");
    samples.sort_by_key(|s| std::cmp::Reverse(s.1));
    let slow: Vec<String> = samples
        .iter()
        .take(5)
        .map(|(at, d)| format!("{:.2} ms at {at:.2} s", d.as_secs_f64() * 1e3))
        .collect();
    println!("  slowest: {}", slow.join(", "));
}
