//! Issue-13 figure: captures stored per second by one `facegate fleet
//! receive` against `mosquitto_sub` writing the same payloads to a file, in
//! the same run (`cargo bench --bench receive`; needs `mosquitto` and
//! `mosquitto_sub`, see scripts/ensure-mosquitto).
//!
//! One private Mosquitto with mutual TLS (`max_queued_messages` above N).
//! Each run: the consumer's persistent session subscribes to the site's
//! captures and goes away; a bare publisher with the device's certificate
//! publishes N upload envelopes exactly as a terminal builds them (~48 KB
//! camera JPEGs; the broker queues them for the session); then the consumer
//! starts and is timed from its start until it has everything:
//!
//! * receiver: `facegate fleet receive` (bench build) on a directory on the
//!   disk (`FACEGATE_BENCH_DIR`, else the temp dir): each capture parsed,
//!   its `sha256` checked, image and metadata written and fsync'd, its id
//!   appended (fsync'd), then acknowledged;
//! * baseline: `mosquitto_sub -c -q 1` printing every payload to one file
//!   (no parsing, no fsync).
//!
//! The two alternate for `FACEGATE_BENCH_ROUNDS` rounds (default 3); each run
//! prints captures/s, the consumer's CPU time per capture (`/proc/PID/stat`)
//! and the load average. `FACEGATE_BENCH_CAPTURES` sets N (default 6000).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use facegate_testkit::bench;
use facegate_testkit::broker::{Broker, BrokerOptions, ClientCreds};
use facegate_testkit::daemon::{facegate_binary, Daemon};

const WINDOW: u16 = 64;
const LIMIT: Duration = Duration::from_secs(900);

fn main() {
    let n = bench::captures(6000);
    let rounds = bench::rounds(3);
    bench::runtime().block_on(run(n, rounds));
}

async fn run(n: usize, rounds: usize) {
    let broker = Broker::start_with(BrokerOptions {
        max_queued_messages: Some(n + 100),
        ..BrokerOptions::default()
    });
    let images = bench::camera_jpegs();
    // The device's config makes the envelopes (a daemon that never runs).
    let device = Daemon::builder().broker(&broker).build();
    let cfg = device.load_config();
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| bench::envelope_for(&cfg, &images[i % images.len()]))
        .collect();
    let mean = payloads.iter().map(Vec::len).sum::<usize>() / n;
    println!("receive: {n} captures per run, envelopes ~{mean} B, {rounds} rounds");
    let receiver_tls = broker.issue_client("fleet-2");
    let sub_tls = broker.issue_client("fleet-3");

    let (mut rx, mut sub) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let load = bench::loadavg();
        let (rate, cpu) = receiver_run(&broker, &receiver_tls, &payloads).await;
        println!(
            "RESULT receive round {round} receiver: {rate:.1} captures/s, {:.0} µs CPU per capture; load {load}",
            cpu / n as f64 * 1e6
        );
        rx.push((rate, cpu / n as f64 * 1e6));
        let load = bench::loadavg();
        let (rate, cpu) = sub_run(&broker, &sub_tls, &payloads).await;
        println!(
            "RESULT receive round {round} mosquitto_sub: {rate:.1} captures/s, {:.0} µs CPU per capture; load {load}",
            cpu / n as f64 * 1e6
        );
        sub.push((rate, cpu / n as f64 * 1e6));
    }
    for (name, v) in [("receiver", &rx), ("mosquitto_sub", &sub)] {
        let lo = v.iter().map(|x| x.0).fold(f64::INFINITY, f64::min);
        let hi = v.iter().map(|x| x.0).fold(0.0, f64::max);
        let clo = v.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
        let chi = v.iter().map(|x| x.1).fold(0.0, f64::max);
        println!("RESULT receive {name}: {lo:.1}..{hi:.1} captures/s, {clo:.0}..{chi:.0} µs CPU per capture");
    }
}

/// Publishes every payload on the device's capture topic, waiting for each
/// window of PUBACKs.
async fn publish_all(broker: &Broker, payloads: &[Vec<u8>]) {
    let session = bench::bare_client(broker, "term-01", WINDOW).await;
    let mut session = session;
    let topic = bench::topics().captures;
    for chunk in payloads.chunks(WINDOW as usize) {
        for p in chunk {
            session.publish(&topic, p.clone()).await;
        }
        for _ in chunk {
            session
                .wait_puback(Duration::from_secs(60))
                .await
                .expect("PUBACK");
        }
    }
}

fn receiver_cmd(broker: &Broker, tls: &ClientCreds, out: &Path) -> Command {
    let mut cmd = Command::new(facegate_binary());
    cmd.args(["fleet", "receive", "--site", "lobby"])
        .args(tls.fleet_args(broker))
        .arg("--out")
        .arg(out)
        .args(["--progress", "1h"])
        .stdout(Stdio::null());
    cmd
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

async fn receiver_run(broker: &Broker, tls: &ClientCreds, payloads: &[Vec<u8>]) -> (f64, f64) {
    let dir = bench::disk_tempdir();
    let out = dir.path().join("inbox");
    let log = dir.path().join("receiver.log");
    // Its persistent session subscribes, then goes away.
    let child = receiver_cmd(broker, tls, &out)
        .stderr(fs::File::create(&log).expect("log"))
        .spawn()
        .expect("facegate fleet receive");
    wait_for("receiver subscribed", LIMIT, || {
        fs::read_to_string(&log).is_ok_and(|l| l.contains("connected to"))
    });
    std::thread::sleep(Duration::from_millis(300));
    stop(child);
    publish_all(broker, payloads).await;
    let received = out.join(".receive/received");
    // Each id is a UUID and a newline.
    let want = payloads.len() as u64 * 37;
    let started = Instant::now();
    let child = receiver_cmd(broker, tls, &out)
        .stderr(fs::File::create(&log).expect("log"))
        .spawn()
        .expect("facegate fleet receive");
    let pid = child.id();
    let mut cpu = 0.0;
    wait_for("every capture stored", LIMIT, || {
        cpu = bench::cpu_seconds(pid);
        fs::metadata(&received).is_ok_and(|m| m.len() >= want)
    });
    let secs = started.elapsed().as_secs_f64();
    stop(child);
    discard_session(broker, tls, "fleet-2");
    (payloads.len() as f64 / secs, cpu)
}

/// Discards the persistent session of `tls`'s client (a clean-session
/// connection), so that what one consumer's run published does not wait for
/// the other's next run.
fn discard_session(broker: &Broker, tls: &ClientCreds, id: &str) {
    let status = Command::new("mosquitto_sub")
        .args(["-h", "localhost", "-p", &broker.port.to_string()])
        .arg("--cafile")
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&tls.cert)
        .arg("--key")
        .arg(&tls.key)
        .args(["-i", id, "-q", "1", "-t", "facegate/discard", "-E"])
        .stdout(Stdio::null())
        .status()
        .expect("mosquitto_sub");
    assert!(
        status.success(),
        "discarding the session of {id}: {status:?}"
    );
}

fn sub_cmd(broker: &Broker, tls: &ClientCreds) -> Command {
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args(["-h", "localhost", "-p", &broker.port.to_string()])
        .arg("--cafile")
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&tls.cert)
        .arg("--key")
        .arg(&tls.key)
        .args([
            "-i",
            "fleet-3",
            "-c",
            "-q",
            "1",
            "-t",
            "facegate/lobby/+/captures",
        ]);
    cmd
}

async fn sub_run(broker: &Broker, tls: &ClientCreds, payloads: &[Vec<u8>]) -> (f64, f64) {
    let dir = bench::disk_tempdir();
    let file = dir.path().join("payloads");
    // Subscribe the persistent session and leave (-E: exit once subscribed).
    let status = sub_cmd(broker, tls)
        .arg("-E")
        .stdout(Stdio::null())
        .status()
        .expect("mosquitto_sub");
    assert!(status.success(), "mosquitto_sub -E: {status:?}");
    publish_all(broker, payloads).await;
    let want: u64 = payloads.iter().map(|p| p.len() as u64 + 1).sum();
    let started = Instant::now();
    let child = sub_cmd(broker, tls)
        .stdout(fs::File::create(&file).expect("payload file"))
        .spawn()
        .expect("mosquitto_sub");
    let pid = child.id();
    let mut cpu = 0.0;
    wait_for("every payload written", LIMIT, || {
        cpu = bench::cpu_seconds(pid);
        fs::metadata(&file).is_ok_and(|m| m.len() >= want)
    });
    let secs = started.elapsed().as_secs_f64();
    stop(child);
    discard_session(broker, tls, "fleet-3");
    (payloads.len() as f64 / secs, cpu)
}
