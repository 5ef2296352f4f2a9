//! Target D1: upload throughput of ~50 KB captures end to end, against a bare
//! rumqttc publisher in the same run (`cargo bench --bench uplink`; needs
//! `mosquitto`, see scripts/ensure-mosquitto).
//!
//! One private Mosquitto with mutual TLS (the testkit's dev broker) serves both
//! sides, with no subscriber on the capture topics.
//!
//! * Baseline: a bare rumqttc client with its own certificate, in-flight
//!   window 16, publishes N envelopes of exactly the agent's envelope size
//!   (built by the agent's own `envelope()`) as fast as rumqttc takes them;
//!   timed from CONNACK to the N-th PUBACK.
//! * Agent: N captures (640×480 synthetic JPEGs, ~49 KB) are put into the
//!   encrypted outbox of a state directory through the library, then the
//!   benchmark build of `facegate run` starts on it (window `mqtt.inflight =
//!   16`, the default). Status is polled on the control socket every 10 ms;
//!   timed from the first status saying the uplink is connected to the first
//!   status with an empty outbox (every capture acknowledged by the broker
//!   and deleted). This includes the agent's deliberate 500 ms settle delay
//!   after connecting (so queued revocations are applied before uploads);
//!   the rate from the first deletion to the end is printed as well.
//!
//! * Breakdown (no network): the agent's store work done serially through the
//!   library on an outbox of the same captures: `pending(16)`, the consent
//!   re-check and `envelope()` for each capture (what `hand_over` does), and
//!   `ack_many` (what deleting acknowledged captures costs) in transactions of
//!   16 (the agent's burst at window 16), 64 and 256. This shows what bounds
//!   the agent's rate and what batching deletions would buy.
//!
//! `FACEGATE_BENCH_CAPTURES` (default 2000) sets N.

use std::time::{Duration, Instant};

use facegate_testkit::bench;
use facegate_testkit::broker::Broker;

const WINDOW: u16 = 16;
/// Room for every capture of the run in the outbox.
const QUOTA: u64 = 4 * 1024 * 1024 * 1024;
/// Longest wait for a PUBACK or a status.
const WAIT: Duration = Duration::from_secs(30);

fn main() {
    bench::runtime().block_on(run(bench::captures(2000)));
}

async fn run(n: usize) {
    let broker = bench::start_broker();
    let images = bench::camera_jpegs();

    let mut d = bench::daemon()
        .broker(&broker)
        .configure(|c| c.inflight(WINDOW).fast_reconnect().quota_bytes(QUOTA))
        .build();
    let cfg = d.load_config();
    let payload = bench::envelope_for(&cfg, &images[0]);
    println!(
        "uplink: {n} captures, image {} B, envelope {} B, window {WINDOW}",
        images[0].len(),
        payload.len()
    );

    let base = baseline(&broker, n, &payload).await;

    let t = Instant::now();
    bench::fill_outbox(&cfg, &d.consent_signer, 20, n, &images, 200);
    println!(
        "agent: filled the outbox in {:.1} s (not timed)",
        t.elapsed().as_secs_f64()
    );
    let (agent, steady) = bench::drain(&mut d, n, Duration::from_secs(120)).await;

    let base2 = baseline(&broker, n, &payload).await;
    let (hand_ms, ack_ms) = breakdown(&images);
    let base_mean = (base + base2) / 2.0;
    println!("RESULT D1 baseline bare rumqttc (window {WINDOW}): {base:.1} and {base2:.1} captures/s (mean {base_mean:.1})");
    println!("RESULT D1 agent, connect -> outbox empty:        {agent:.1} captures/s");
    println!("RESULT D1 agent, first ack -> outbox empty:      {steady:.1} captures/s");
    for (b, per) in ACK_BATCHES.iter().zip(&ack_ms) {
        println!(
            "RESULT D1 breakdown: hand-over work {:.3} ms/capture + ack_many({b}) {per:.3} ms/capture \
             -> serial store bound {:.0} captures/s",
            hand_ms / WINDOW as f64,
            1e3 / (hand_ms / WINDOW as f64 + per)
        );
    }
    println!(
        "RESULT D1 ratio agent/baseline = {:.2} (steady state {:.2}); target >= 0.8: {}",
        agent / base_mean,
        steady / base_mean,
        if agent / base_mean >= 0.8 {
            "PASS"
        } else {
            "FAIL"
        }
    );
}

/// Ack batch sizes tried in the breakdown (captures deleted per transaction).
const ACK_BATCHES: [usize; 3] = [16, 64, 256];
/// Captures per breakdown pass.
const PASS: usize = 768;

/// The agent's store work per capture, serially through the library: returns
/// (ms per window of 16 for pending + gate + envelope, [ms per capture of
/// `ack_many` at each of ACK_BATCHES]).
fn breakdown(images: &[Vec<u8>]) -> (f64, Vec<f64>) {
    let terminal = bench::daemon().configure(|c| c.quota_bytes(QUOTA)).build();
    let cfg = terminal.load_config();
    let signer = &terminal.consent_signer;
    bench::fill_outbox(&cfg, signer, 20, PASS * ACK_BATCHES.len(), images, 200);
    let agent = facegate::daemon::open(cfg.clone()).expect("open agent");
    let mut store = agent.db().lock();
    let (mut hand, mut windows) = (Duration::ZERO, 0u32);
    let mut ack_per_capture = Vec::new();
    for ack_batch in ACK_BATCHES {
        let (mut ack, mut done) = (Duration::ZERO, 0usize);
        let mut waiting: Vec<facegate::ids::CaptureId> = Vec::new();
        while done < PASS {
            let t = Instant::now();
            let batch = store.pending(WINDOW as usize, &waiting).expect("pending");
            for c in &batch {
                let decision = store
                    .decide(
                        &c.subject,
                        &cfg.trust,
                        &cfg.identity,
                        facegate::clock::now(),
                    )
                    .expect("decide");
                let facegate::gate::Decision::Accept { consent_id, .. } = decision else {
                    panic!("consent refused in the breakdown");
                };
                std::hint::black_box(facegate::uplink::upload::envelope(&cfg, c, &consent_id));
                waiting.push(c.capture_id.clone());
            }
            hand += t.elapsed();
            windows += 1;
            if waiting.len() >= ack_batch {
                let t = Instant::now();
                done += store
                    .ack_many(&waiting, facegate::clock::now())
                    .expect("ack_many");
                ack += t.elapsed();
                waiting.clear();
            }
        }
        let per = ack.as_secs_f64() * 1e3 / done as f64;
        println!("breakdown: ack_many in batches of {ack_batch}: {per:.3} ms per capture");
        ack_per_capture.push(per);
    }
    let hand_ms = hand.as_secs_f64() * 1e3 / windows as f64;
    println!("breakdown: pending(16) + gate + envelope: {hand_ms:.2} ms per window");
    (hand_ms, ack_per_capture)
}

/// Captures/s of a bare publisher, CONNACK → N-th PUBACK.
async fn baseline(broker: &Broker, n: usize, payload: &[u8]) -> f64 {
    let mut p = bench::bare_client(broker, "term-02", WINDOW).await;
    let start = Instant::now();
    let client = p.client.clone();
    let topic = bench::site_topics().device("term-02").captures;
    let body = payload.to_vec();
    let sender = tokio::spawn(async move {
        for _ in 0..n {
            client
                .publish(
                    topic.clone(),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    body.clone(),
                )
                .await
                .expect("publish");
        }
    });
    let mut last = start;
    for _ in 0..n {
        last = p.wait_puback_stamped(WAIT).await.expect("PUBACK").0;
    }
    let _ = sender.await;
    let secs = (last - start).as_secs_f64();
    println!("baseline: {n} PUBACKs in {secs:.2} s");
    n as f64 / secs
}
