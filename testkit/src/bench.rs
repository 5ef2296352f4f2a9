//! What only the benchmarks need: where their files live, a daemon set up for
//! measuring, an outbox filled through the library, the agent's exact envelope,
//! percentiles and `/proc` memory readings.

use std::path::Path;
use std::time::{Duration, Instant};

use facegate::config::Config;
use facegate::protocol::{SiteTopics, Topics};
use facegate::store::{Capture, OutboxCapture};
use facegate::{clock, consent};
use tempfile::TempDir;

use crate::broker::Broker;
use crate::daemon::{Daemon, DaemonBuilder};
use crate::mqtt::{Session, SessionOptions};
use crate::signer::Signer;
use crate::{DEVICE, SITE};

/// `FACEGATE_BENCH_CAPTURES` if set to a number, else `default`.
pub fn captures(default: usize) -> usize {
    env_count("FACEGATE_BENCH_CAPTURES", default)
}

/// How many rounds a benchmark that alternates its sides runs:
/// `FACEGATE_BENCH_ROUNDS`, else `default`.
pub fn rounds(default: usize) -> usize {
    env_count("FACEGATE_BENCH_ROUNDS", default)
}

/// A count from the environment variable `name`, else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The runtime of the MQTT benchmarks: multi-threaded with 2 workers, the
/// reference machine's cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// How many distinct images [`camera_jpegs`] makes.
pub const DISTINCT_IMAGES: u64 = 8;

/// The captures every benchmark uses: [`DISTINCT_IMAGES`] distinct 640×480 q85
/// synthetic JPEGs of about 48 KB, the size of a terminal camera's.
pub fn camera_jpegs() -> Vec<Vec<u8>> {
    (0..DISTINCT_IMAGES)
        .map(|seed| crate::synth::face_jpeg(640, 480, seed, 85))
        .collect()
}

/// Directory for state (SQLite on the real disk): under `FACEGATE_BENCH_DIR`, else the temp dir.
pub fn disk_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("FACEGATE_BENCH_DIR").map(Into::into)
}

/// A temporary directory for state, see [`disk_dir`].
pub fn disk_tempdir() -> TempDir {
    match disk_dir() {
        Some(d) => tempfile::tempdir_in(d).expect("tempdir in FACEGATE_BENCH_DIR"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

/// A temporary directory for a spool: on tmpfs (`/dev/shm`) when present, as on a terminal.
pub fn spool_tempdir() -> TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

/// A daemon set up for measuring: state on the disk ([`disk_dir`]), spool on
/// tmpfs, log level `info` (the default), no broker unless given.
pub fn daemon() -> DaemonBuilder {
    let builder = Daemon::builder()
        .spool_on_tmpfs()
        .configure(|c| c.log_level("info"));
    match disk_dir() {
        Some(d) => builder.under(d),
        None => builder,
    }
}

/// Whether `FACEGATE_BENCH_NODELAY=1` asks for TCP_NODELAY on the broker's and
/// the bare clients' sockets (the agent's own socket is left as the product sets it).
pub fn nodelay() -> bool {
    std::env::var("FACEGATE_BENCH_NODELAY").is_ok_and(|v| v == "1")
}

/// Starts a dev broker; with [`nodelay`], restarts it with `set_tcp_nodelay true`.
pub fn start_broker() -> Broker {
    let mut broker = Broker::start();
    if nodelay() {
        let conf = broker.dir.path().join("mosquitto.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read mosquitto.conf");
        text.insert_str(0, "set_tcp_nodelay true\n");
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        broker.restart();
        println!("broker and bare clients: TCP_NODELAY on");
    }
    broker
}

/// A bare rumqttc client `cn` with its own certificate and in-flight window
/// `window` (TCP_NODELAY with [`nodelay`]), connected.
pub async fn bare_client(broker: &Broker, cn: &str, window: u16) -> Session {
    let mut opts = broker.options(cn);
    opts.set_inflight(window);
    connected(opts, cn).await.0
}

/// A session of `opts` (no reconnect, TCP_NODELAY with [`nodelay`]) once the
/// broker has accepted it, with its CONNACK; panics naming `cn` if it cannot.
async fn connected(opts: rumqttc::MqttOptions, cn: &str) -> (Session, rumqttc::ConnAck) {
    let mut session = Session::spawn_with(
        opts,
        SessionOptions {
            reconnect: false,
            tcp_nodelay: nodelay(),
        },
    );
    let ack = session
        .wait_connected(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{cn} cannot connect: {e}"));
    (session, ack)
}

/// Makes the broker forget the session it keeps for `client_id` (MQTT 3.1.1
/// 3.1.2.4: a connection with a clean session discards the stored one, and
/// its own ends with it). Every round of a bench drains a fresh install;
/// without this the broker would still hold the session the last round's
/// terminal left under the same client id, so the new terminal would be told
/// a session is present and hold its uploads back for the settle time after
/// a reconnect (`uplink::state::SETTLE_AFTER_CONNECT`), which no fresh
/// install waits and no forwarder in the same round does.
pub async fn forget_session(broker: &Broker, client_id: &str) {
    let mut opts = broker.options(client_id);
    opts.set_clean_session(true);
    let (session, ack) = connected(opts, client_id).await;
    assert!(
        !ack.session_present,
        "a clean session has no stored session"
    );
    session.kill();
}

/// The topics of device `term-01` at site `lobby` (prefix `facegate`).
pub fn topics() -> Topics {
    site_topics().device(DEVICE)
}

/// The topics of site `lobby` (prefix `facegate`); `.device(name)` for one device.
pub fn site_topics() -> SiteTopics {
    SiteTopics::new("facegate", SITE)
}

/// The exact upload envelope the agent builds for `image` (same size on the
/// wire), each call a capture of its own: its own `capture_id`, even for the
/// same image in the same second (benches match arrivals by it).
pub fn envelope_for(cfg: &Config, image: &[u8]) -> Vec<u8> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let capture = OutboxCapture {
        capture: capture(
            "S-0000",
            uuid::Uuid::new_v4().to_string(),
            image.to_vec(),
            clock::now(),
            n,
        ),
        queued_at: clock::now(),
    };
    facegate::uplink::upload::envelope(cfg, &capture, &capture.consent_id.clone())
}

/// The `n`-th capture of `subject` under consent `consent_id`, taken at
/// `captured_at`, with the id intake would give it
/// ([`facegate::ids::CaptureId::derive`]: from the capture time and a digest
/// of the capture, here its image and `n`).
fn capture(subject: &str, consent_id: String, image: Vec<u8>, captured_at: i64, n: u64) -> Capture {
    let digest = ring::digest::digest(&ring::digest::SHA256, &image);
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(digest.as_ref());
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&sha256);
    ctx.update(&n.to_be_bytes());
    let mut id_digest = [0u8; 32];
    id_digest.copy_from_slice(ctx.finish().as_ref());
    Capture {
        capture_id: facegate::ids::CaptureId::derive(captured_at, &id_digest),
        subject: facegate::ids::SubjectId::new(subject).expect("subject id"),
        consent_id,
        captured_at,
        camera: crate::spool::CAMERA.into(),
        content_type: "image/jpeg".into(),
        sha256,
        image: image.into(),
    }
}

/// Opens the state directory like the daemon does (directories, storage key),
/// stores a real consent signed by `signer` for each of `subjects` subjects
/// (`S-0000`, …) and `queued` captures spread round-robin over them, `batch`
/// per transaction, taken ten a second up to now, as a terminal's camera
/// would. Image bytes cycle through `images`. Returns the subject names.
pub fn fill_outbox(
    cfg: &Config,
    signer: &Signer,
    subjects: usize,
    queued: usize,
    images: &[Vec<u8>],
    batch_size: usize,
) -> Vec<facegate::ids::SubjectId> {
    let agent = facegate::daemon::open(cfg.clone()).expect("open agent");
    let mut store = agent.db().lock();
    let now = clock::now();
    let mut names = Vec::with_capacity(subjects);
    let mut consent_ids = Vec::with_capacity(subjects);
    for s in 0..subjects {
        let name = format!("S-{s:04}");
        let token = signer.consent(&name, 86_400);
        let c = consent::verify_consent(
            &token,
            &cfg.trust,
            &cfg.identity,
            now,
            consent::TokenLimits::of(cfg),
        )
        .expect("verify consent");
        store.add_consent(&c, now, None).expect("add consent");
        consent_ids.push(c.id.clone());
        names.push(c.subject.clone());
    }
    let mut batch = Vec::with_capacity(batch_size);
    for i in 0..queued {
        let s = i % subjects;
        let image = images[i % images.len()].clone();
        let taken = now - i64::try_from((queued - i) / 10).unwrap_or(0);
        batch.push(capture(
            names[s].as_str(),
            consent_ids[s].clone(),
            image,
            taken,
            i as u64,
        ));
        if batch.len() == batch_size || i + 1 == queued {
            store
                .insert_captures(std::mem::take(&mut batch), &cfg.outbox, now)
                .expect("insert captures");
        }
    }
    names
}

/// The `p` quantile (0..=1) of sorted samples (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Sorts `samples`; returns `n=… p50=… p90=… p99=… max=…` in ms, and the p99.
pub fn summary(samples: &mut [Duration]) -> (String, Duration) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p99 = percentile(samples, 0.99);
    let text = format!(
        "n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        ms(percentile(samples, 0.50)),
        ms(percentile(samples, 0.90)),
        ms(p99),
        ms(samples[samples.len() - 1]),
    );
    (text, p99)
}

/// `(VmRSS, VmHWM)` in KiB from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Starts `d` on a filled outbox of `n` captures and waits until it is empty:
/// returns captures/s from the first status saying the uplink is connected to
/// the first status with an empty outbox, and from the first deletion to it.
/// Status is polled on the control socket every 10 ms. Panics after `limit`,
/// or if not every capture was counted as uploaded.
pub async fn drain(d: &mut Daemon, n: usize, limit: Duration) -> (f64, f64) {
    let drained = drain_measured(d, n, limit).await;
    (drained.rate, drained.steady)
}

/// What [`drain_measured`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    /// Captures/s from "uplink connected" to "outbox empty".
    pub rate: f64,
    /// Captures/s from the first deletion to "outbox empty".
    pub steady: f64,
    /// CPU seconds (user + system) the daemon process used over the same
    /// interval as `rate`.
    pub cpu_s: f64,
    /// Bytes the daemon process caused to be written to storage
    /// (`write_bytes` of `/proc/PID/io`) over the same interval.
    pub written: u64,
}

/// `write_bytes` of `/proc/PID/io`: the bytes process `pid` caused to be
/// written to storage so far (counted when it dirties a page of a file,
/// whoever writes the page back).
pub fn write_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("write_bytes")
}

/// CPU seconds (user + system) process `pid` has used so far
/// (`/proc/PID/stat` fields 14 and 15, in clock ticks).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name (field 2) is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3: utime is field 14, stime 15.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / clock_ticks_per_second()
}

/// `getconf CLK_TCK` (the unit of `/proc/PID/stat` times; 100 on Linux).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|hz| *hz > 0.0)
        .expect("getconf CLK_TCK")
}

/// [`drain`], also measuring the daemon's CPU time.
pub async fn drain_measured(d: &mut Daemon, n: usize, limit: Duration) -> Drained {
    d.spawn();
    let pid = d.pid().expect("daemon running");
    let mut cpu_at_connect = 0.0;
    let mut written_at_connect = 0;
    let deadline = Instant::now() + limit;
    let mut connected_at = None;
    let mut first_ack = None;
    let mut left_at_first_ack = n as u64;
    let end = loop {
        let st = d.status_async().await;
        let now = Instant::now();
        let left = st.outbox.expect("outbox").captures;
        if connected_at.is_none() && st.uplink.is_some_and(|u| u.connected) {
            connected_at = Some(now);
            cpu_at_connect = cpu_seconds(pid);
            written_at_connect = write_bytes(pid);
        }
        if first_ack.is_none() && left < n as u64 {
            first_ack = Some(now);
            left_at_first_ack = left;
        }
        if left == 0 {
            break (now, cpu_seconds(pid), write_bytes(pid));
        }
        assert!(
            Instant::now() < deadline,
            "outbox not empty after {limit:?}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (end, cpu_at_end, written_at_end) = end;
    let counters = d.status_async().await.counters.expect("counters");
    d.stop();
    let connected_at = connected_at.expect("uplink connected");
    let first_ack = first_ack.expect("an upload");
    let secs = (end - connected_at).as_secs_f64();
    let steady = (end - first_ack).as_secs_f64();
    println!(
        "agent: connect -> empty {secs:.2} s; first deletion {:.2} s after connect; \
         {:.0} B written per capture; counters {}",
        (first_ack - connected_at).as_secs_f64(),
        written_at_end.saturating_sub(written_at_connect) as f64 / n as f64,
        serde_json::to_string(&counters).unwrap_or_default()
    );
    assert_eq!(counters.uploaded, n as u64, "{counters:?}");
    Drained {
        rate: n as f64 / secs,
        steady: left_at_first_ack as f64 / steady,
        cpu_s: cpu_at_end - cpu_at_connect,
        written: written_at_end.saturating_sub(written_at_connect),
    }
}

/// The 1-, 5- and 15-minute load averages (`/proc/loadavg`), for the record.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
