//! `facegate fleet receive` against a real Mosquitto with mutual TLS and a
//! real terminal: each capture stored once (whole and in parts, across a
//! receiver restart), a revocation's receipt deletes the subject's copies,
//! and an in-flight capture arriving after the receipt is never kept; the
//! same through an object store URL (`--out file:///…`, feature
//! `object-store`) with the receiver's state apart (`--state`).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use facegate_testkit::broker::{Broker, ClientCreds};
use facegate_testkit::daemon::Daemon;
use facegate_testkit::mqtt::Session;
use facegate_testkit::synth;
use facegate_testkit::SITE;
use ring::digest;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

struct Receiver {
    child: Child,
    log: PathBuf,
}

impl Receiver {
    fn start(broker: &Broker, tls: &ClientCreds, out: &Path) -> Receiver {
        Receiver::start_with(broker, tls, out, &[])
    }

    fn start_with(broker: &Broker, tls: &ClientCreds, out: &Path, extra: &[&str]) -> Receiver {
        let log = out.with_extension(format!("log{}", rand_suffix()));
        Receiver::spawn(broker, tls, out.as_os_str(), log, extra)
    }

    /// `--out` as given (a URL); its stderr in `log`.
    fn spawn(
        broker: &Broker,
        tls: &ClientCreds,
        out: &std::ffi::OsStr,
        log: PathBuf,
        extra: &[&str],
    ) -> Receiver {
        Receiver::spawn_env(broker, tls, out, log, extra, &[])
    }

    /// As `spawn`, with `env` added to the receiver's environment.
    fn spawn_env(
        broker: &Broker,
        tls: &ClientCreds,
        out: &std::ffi::OsStr,
        log: PathBuf,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Receiver {
        let child = Command::new(env!("CARGO_BIN_EXE_facegate"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["fleet", "receive", "--site", SITE])
            .args(tls.fleet_args(broker))
            .arg("--out")
            .arg(out)
            .args(["--progress", "1s"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let r = Receiver { child, log };
        r.wait_log("connected to", T);
        r
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "receiver log lacks {needle:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, and a clean exit.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}\n{}", self.log_text());
        self.log_text()
    }
}

impl Drop for Receiver {
    /// A failed test leaves no receiver behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Captures stored under `out`: capture id → (metadata, image bytes).
fn stored(out: &Path) -> Vec<(Value, Vec<u8>)> {
    let mut got = Vec::new();
    let Ok(sites) = fs::read_dir(out) else {
        return got;
    };
    for site in sites.flatten() {
        if site.file_name().to_string_lossy().starts_with('.') || !site.path().is_dir() {
            continue;
        }
        for dev in fs::read_dir(site.path()).unwrap().flatten() {
            for f in fs::read_dir(dev.path()).unwrap().flatten() {
                let p = f.path();
                if p.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let meta: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
                let image = fs::read(p.with_extension("jpg")).unwrap();
                got.push((meta, image));
            }
        }
    }
    got
}

fn wait_stored(out: &Path, n: usize, timeout: Duration) -> Vec<(Value, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = stored(out);
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn daemon(broker: &Broker) -> Daemon {
    Daemon::builder()
        .broker(broker)
        .configure(|c| {
            c.keep_alive(Duration::from_secs(5))
                .fast_reconnect()
                // ~300 KB captures go out in parts.
                .max_packet_size(128 * 1024)
        })
        .start()
}

#[test]
fn stores_each_capture_once_across_restarts_and_deletes_on_receipt() {
    let mut broker = Broker::start();
    // Its own certificate: the broker ties the client id to it, and another
    // fleet tool on the same one would take over (and, with a clean
    // session, discard) the receiver's session.
    let tls = broker.issue_client("fleet-2");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("inbox");
    let d = daemon(&broker);
    d.wait_uplink_connected(T);
    d.grant("S-1");
    d.grant("S-2");

    let receiver = Receiver::start(&broker, &tls, &out);
    // Small ones whole, one large one in parts.
    for i in 0..4 {
        let subject = if i % 2 == 0 { "S-1" } else { "S-2" };
        d.drop_pair(
            &format!("a{i}"),
            "jpg",
            &synth::face_jpeg(320, 240, i, 90),
            Some(subject),
        );
    }
    d.drop_pair(
        "big",
        "jpg",
        &synth::face_jpeg(1440, 1080, 7, 95),
        Some("S-2"),
    );
    let got = wait_stored(&out, 5, T);
    assert_eq!(got.len(), 5, "{}", receiver.log_text());
    // Stop the receiver; captures uploaded meanwhile wait on the broker in
    // its persistent session.
    let log = receiver.stop();
    assert!(log.contains("stored 5"), "{log}");
    for i in 4..8 {
        let subject = if i % 2 == 0 { "S-1" } else { "S-2" };
        d.drop_pair(
            &format!("b{i}"),
            "jpg",
            &synth::face_jpeg(320, 240, i, 90),
            Some(subject),
        );
    }
    d.drop_pair(
        "big2",
        "jpg",
        &synth::face_jpeg(1440, 1080, 8, 95),
        Some("S-1"),
    );
    let deadline = Instant::now() + T;
    while d.outbox_len() > 0 {
        assert!(Instant::now() < deadline, "the device did not drain");
        std::thread::sleep(Duration::from_millis(200));
    }
    let receiver = Receiver::start(&broker, &tls, &out);
    let got = wait_stored(&out, 10, T);
    assert_eq!(got.len(), 10, "{}", receiver.log_text());
    let ids: HashSet<&str> = got
        .iter()
        .map(|(m, _)| m["capture_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 10);
    let mut big = 0;
    for (meta, image) in &got {
        assert_eq!(
            meta["sha256"].as_str().unwrap(),
            hex(digest::digest(&digest::SHA256, image).as_ref()),
            "{meta}"
        );
        assert!(meta.get("image").is_none());
        assert!(image.starts_with(&[0xFF, 0xD8]), "a JPEG");
        if image.len() > 128 * 1024 {
            big += 1;
        }
    }
    assert_eq!(big, 2, "the two large captures, joined from their parts");
    assert_eq!(d.counters().uploaded, 10);

    // Revoke S-1 through the broker; the device's receipt reaches the receiver.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut fleet = Session::spawn(broker.options("fleet"));
        fleet.wait_connected(T).await.unwrap();
        let (_, jws) = d.fleet_signer.command(
            "consent.revoke",
            json!({"subject": "S-1"}),
            &format!("{SITE}/term-01"),
            600,
            facegate::clock::now(),
        );
        fleet.publish("facegate/lobby/term-01/cmd", jws).await;
        fleet.wait_puback(T).await;
    });
    receiver.wait_log("receipt for S-1", T);
    let left = stored(&out);
    assert_eq!(left.len(), 5, "only S-2's captures remain");
    assert!(left.iter().all(|(m, _)| m["subject"] == "S-2"));
    let deletions = fs::read_to_string(out.join("deletions.log")).unwrap();
    let line: Value = serde_json::from_str(deletions.lines().next().unwrap()).unwrap();
    assert_eq!(line["subject"], "S-1");
    assert_eq!(line["site"], SITE);
    assert_eq!(line["device"], "term-01");
    assert_eq!(line["deleted"], 5);
    assert!(line["at"].as_str().is_some());

    // The broker restarts: the receiver connects again and goes on.
    broker.stop();
    broker.restart();
    receiver.wait_log("connection lost", T);
    for i in 8..10 {
        d.drop_pair(
            &format!("c{i}"),
            "jpg",
            &synth::face_jpeg(320, 240, i, 90),
            Some("S-2"),
        );
    }
    let got = wait_stored(&out, 7, T);
    assert_eq!(got.len(), 7, "{}", receiver.log_text());
    receiver.stop();
}

/// An upload envelope as a device sends it.
fn envelope(
    capture_id: &str,
    subject: &str,
    image: &[u8],
    part: Option<(u32, u32)>,
    whole: &[u8],
) -> Vec<u8> {
    let mut env = json!({
        "v": 1, "capture_id": capture_id, "site": SITE, "device": "term-02",
        "subject": subject, "consent_id": "c-1", "captured_at": facegate::clock::rfc3339(facegate::clock::now() - 5),
        "camera": "cam", "content_type": "image/jpeg",
        "sha256": hex(digest::digest(&digest::SHA256, whole).as_ref()),
        "image": base64::engine::general_purpose::STANDARD.encode(image),
    });
    if let Some((part, parts)) = part {
        env["part"] = json!(part);
        env["parts"] = json!(parts);
    }
    serde_json::to_vec(&env).unwrap()
}

#[test]
fn in_flight_arrivals_after_the_receipt_and_corrupt_parts_are_never_kept() {
    let broker = Broker::start();
    // Its own certificate: the broker ties the client id to it, and another
    // fleet tool on the same one would take over (and, with a clean
    // session, discard) the receiver's session.
    let tls = broker.issue_client("fleet-2");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("inbox");
    let receiver = Receiver::start(&broker, &tls, &out);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A terminal's certificate, speaking the device's side of SPEC.
        let mut dev = Session::spawn(broker.options("term-02"));
        dev.wait_connected(T).await.unwrap();
        let image = synth::face_jpeg(320, 240, 1, 90);
        // A capture of S-9 stored before the revocation.
        dev.publish(
            "facegate/lobby/term-02/captures",
            envelope(
                "11111111-1111-4111-8111-111111111111",
                "S-9",
                &image,
                None,
                &image,
            ),
        )
        .await;
        dev.wait_puback(T).await;
        // The receipt lists one capture still in flight.
        let in_flight = "22222222-2222-4222-8222-222222222222";
        let reply = json!({"v":1,"jti":"j-1","cmd":"consent.revoke","ok":true,
            "result":{"subject":"S-9","purged":2,"in_flight":[in_flight],
                      "purged_at": facegate::clock::rfc3339(facegate::clock::now())}});
        dev.publish(
            "facegate/lobby/term-02/reply",
            serde_json::to_vec(&reply).unwrap(),
        )
        .await;
        dev.wait_puback(T).await;
        // Then the in-flight capture arrives, in two parts.
        let half = image.len() / 2;
        dev.publish(
            "facegate/lobby/term-02/captures",
            envelope(in_flight, "S-9", &image[..half], Some((0, 2)), &image),
        )
        .await;
        dev.publish(
            "facegate/lobby/term-02/captures",
            envelope(in_flight, "S-9", &image[half..], Some((1, 2)), &image),
        )
        .await;
        // And a capture of someone else whose second part is corrupted.
        let bad = "33333333-3333-4333-8333-333333333333";
        let mut broken = image[half..].to_vec();
        broken[10] ^= 0xFF;
        dev.publish(
            "facegate/lobby/term-02/captures",
            envelope(bad, "S-8", &image[..half], Some((0, 2)), &image),
        )
        .await;
        dev.publish(
            "facegate/lobby/term-02/captures",
            envelope(bad, "S-8", &broken, Some((1, 2)), &image),
        )
        .await;
        // A good one last: once it is stored, everything before it was seen.
        dev.publish(
            "facegate/lobby/term-02/captures",
            envelope(
                "44444444-4444-4444-8444-444444444444",
                "S-8",
                &image,
                None,
                &image,
            ),
        )
        .await;
        for _ in 0..5 {
            dev.wait_puback(T).await;
        }
    });
    let deadline = Instant::now() + T;
    while !out
        .join("lobby/term-02/44444444-4444-4444-8444-444444444444.jpg")
        .exists()
    {
        assert!(Instant::now() < deadline, "{}", receiver.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = receiver.stop();
    assert!(log.contains("deleted on arrival"), "{log}");
    assert!(log.contains("does not match its sha256"), "{log}");
    let left = stored(&out);
    let ids: Vec<&str> = left
        .iter()
        .map(|(m, _)| m["capture_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["44444444-4444-4444-8444-444444444444"], "{log}");
    let deletions = two_deletions_no_parts(&out);
    assert!(deletions
        .iter()
        .all(|l| l["subject"] == "S-9" && l["device"] == "term-02"));
}

#[test]
fn two_receivers_on_a_shared_subscription_store_each_capture_once() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("inbox");
    let one = Receiver::start_with(
        &broker,
        &broker.issue_client("fleet-2"),
        &out,
        &["--share", "rx"],
    );
    let two = Receiver::start_with(
        &broker,
        &broker.issue_client("fleet-3"),
        &out,
        &["--share", "rx"],
    );
    let d = daemon(&broker);
    d.wait_uplink_connected(T);
    d.grant("S-1");
    for i in 0..12 {
        d.drop_pair(
            &format!("s{i}"),
            "jpg",
            &synth::face_jpeg(320, 240, i, 90),
            Some("S-1"),
        );
    }
    d.drop_pair(
        "sbig",
        "jpg",
        &synth::face_jpeg(1440, 1080, 3, 95),
        Some("S-1"),
    );
    let got = wait_stored(&out, 13, T);
    assert_eq!(got.len(), 13, "{}\n{}", one.log_text(), two.log_text());
    std::thread::sleep(Duration::from_millis(1500));
    let (log1, log2) = (one.stop(), two.stop());
    let stored_by = |log: &str| -> u64 {
        let last = log
            .lines()
            .rev()
            .find(|l| l.starts_with("stored "))
            .unwrap_or("stored 0");
        last.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let (n1, n2) = (stored_by(&log1), stored_by(&log2));
    // Both may complete the large capture's parts at the same moment; it is
    // still stored once (same name, same bytes) and counted once.
    assert!(n1 + n2 >= 13, "{log1}\n{log2}");
    assert!(n1 > 0 && n2 > 0, "both took a share: {n1} and {n2}");
    let got = stored(&out);
    let ids: HashSet<&str> = got
        .iter()
        .map(|(m, _)| m["capture_id"].as_str().unwrap())
        .collect();
    assert_eq!((got.len(), ids.len()), (13, 13));
    for (meta, image) in &got {
        assert_eq!(
            meta["sha256"].as_str().unwrap(),
            hex(digest::digest(&digest::SHA256, image).as_ref())
        );
    }
    assert_eq!(
        fs::read_dir(out.join(".receive/parts")).unwrap().count(),
        0,
        "no part left behind"
    );
}

#[test]
fn a_backlog_larger_than_the_client_queue_is_taken_whole() {
    // More messages waiting than the MQTT client's request queue holds: the
    // acknowledgements must not wait on the event loop that brings them.
    let broker = Broker::start_with(facegate_testkit::broker::BrokerOptions {
        max_queued_messages: Some(2000),
        ..Default::default()
    });
    let tls = broker.issue_client("fleet-2");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("inbox");
    Receiver::start(&broker, &tls, &out).stop();
    let n = 600;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut dev = Session::spawn(broker.options("term-02"));
        dev.wait_connected(T).await.unwrap();
        for i in 0..n {
            let image = format!("image {i}").into_bytes();
            let id = format!("{i:08}-0000-4000-8000-000000000000");
            dev.publish(
                "facegate/lobby/term-02/captures",
                envelope(&id, "S-1", &image, None, &image),
            )
            .await;
            dev.wait_puback(T).await.expect("PUBACK");
        }
    });
    let receiver = Receiver::start(&broker, &tls, &out);
    let deadline = Instant::now() + T;
    let dev_dir = out.join("lobby/term-02");
    let count = || fs::read_dir(&dev_dir).map_or(0, |d| d.count());
    while count() < 2 * n {
        assert!(
            Instant::now() < deadline,
            "{} of {} files\n{}",
            count(),
            2 * n,
            receiver.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    receiver.stop();
}

/// The receiver's last progress line's count after `what` ("stored",
/// "duplicates", ...).
#[cfg(feature = "object-store")]
fn last_count(log: &str, what: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.starts_with("stored "))
        .unwrap_or_default();
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    words
        .iter()
        .position(|w| *w == what)
        .and_then(|i| words.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {what:?} in {line:?}"))
}

/// An object's bytes by key, `None` when there is none.
#[cfg(feature = "object-store")]
type Get<'a> = dyn Fn(&str) -> Option<Vec<u8>> + 'a;

/// An object store as the test sees it, apart from the receiver: its
/// `--out` URL, the environment the receiver needs for it, every key under
/// the URL's root, and an object's bytes.
#[cfg(feature = "object-store")]
struct Objects<'a> {
    url: String,
    env: Vec<(String, String)>,
    keys: Box<dyn Fn() -> Vec<String> + 'a>,
    get: Box<Get<'a>>,
}

#[cfg(feature = "object-store")]
impl Objects<'_> {
    /// Captures stored: capture id → (metadata, image bytes).
    fn stored(&self) -> Vec<(Value, Vec<u8>)> {
        let mut got = Vec::new();
        for key in (self.keys)() {
            let parts: Vec<&str> = key.split('/').collect();
            if parts.len() != 3 || parts.iter().any(|p| p.starts_with('.')) {
                continue;
            }
            let Some(stem) = key.strip_suffix(".json") else {
                continue;
            };
            let meta: Value = serde_json::from_slice(&(self.get)(&key).unwrap()).unwrap();
            let image = (self.get)(&format!("{stem}.jpg")).unwrap();
            got.push((meta, image));
        }
        got
    }

    fn wait_stored(&self, n: usize) -> Vec<(Value, Vec<u8>)> {
        let deadline = Instant::now() + T;
        loop {
            let got = self.stored();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn exists(&self, key: &str) -> bool {
        (self.get)(key).is_some()
    }
}

/// A `file://` store: the directory's files.
#[cfg(feature = "object-store")]
fn file_objects(root: &Path) -> Objects<'_> {
    fn walk(dir: &Path, base: &Path, keys: &mut Vec<String>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, keys);
            } else {
                keys.push(p.strip_prefix(base).unwrap().to_string_lossy().to_string());
            }
        }
    }
    Objects {
        url: format!("file://{}", root.display()),
        env: Vec::new(),
        keys: Box::new(move || {
            let mut keys = Vec::new();
            walk(root, root, &mut keys);
            keys
        }),
        get: Box::new(move |key| fs::read(root.join(key)).ok()),
    }
}

#[cfg(feature = "object-store")]
#[test]
fn an_object_store_url_stores_once_across_restarts_and_purges_late_arrivals() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    object_store_scenario(&file_objects(&objects), dir.path());
    assert!(objects.join("lobby/term-02").is_dir());
}

/// The same against an S3 server (`s3://bucket/prefix`, feature `s3`): run
/// only when `FACEGATE_TEST_S3_ENDPOINT` names one (`scripts/s3-check` starts
/// one and sets it), with its bucket in `FACEGATE_TEST_S3_BUCKET`
/// (`facegate-test` when unset), which must exist. Each run stores under a
/// prefix of its own, two levels deep, and checks nothing lands outside it.
#[cfg(feature = "s3")]
#[test]
fn an_s3_url_stores_once_across_restarts_and_purges_late_arrivals() {
    use object_store::path::Path as Key;
    use object_store::{ObjectStore, ObjectStoreExt};
    let Ok(endpoint) = std::env::var("FACEGATE_TEST_S3_ENDPOINT") else {
        eprintln!(
            "SKIPPED: FACEGATE_TEST_S3_ENDPOINT names no S3 server (scripts/s3-check runs one)"
        );
        return;
    };
    let bucket = std::env::var("FACEGATE_TEST_S3_BUCKET").unwrap_or("facegate-test".into());
    let var = |k: &str, default: &str| std::env::var(k).unwrap_or(default.into());
    let (key_id, secret) = (
        var("AWS_ACCESS_KEY_ID", "test"),
        var("AWS_SECRET_ACCESS_KEY", "test"),
    );
    let region = var("AWS_REGION", "us-east-1");
    let run = format!("receive-{}", rand_suffix());
    let prefix = format!("{run}/captures");
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_bucket_name(&bucket)
        .with_access_key_id(&key_id)
        .with_secret_access_key(&secret)
        .with_region(&region)
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Every key under `under`, whole.
    let all = |under: &str| -> Vec<String> {
        rt.block_on(async {
            let mut keys = Vec::new();
            let mut todo = vec![Key::from(under)];
            while let Some(p) = todo.pop() {
                let level = s3.list_with_delimiter(Some(&p)).await.unwrap();
                todo.extend(level.common_prefixes);
                keys.extend(level.objects.into_iter().map(|o| o.location.to_string()));
            }
            keys
        })
    };
    let objects = Objects {
        url: format!("s3://{bucket}/{prefix}"),
        env: vec![
            ("AWS_ENDPOINT".into(), endpoint.clone()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), secret.clone()),
            ("AWS_REGION".into(), region.clone()),
        ],
        keys: Box::new(|| {
            all(&prefix)
                .iter()
                .map(|k| k.strip_prefix(&format!("{prefix}/")).unwrap().to_string())
                .collect()
        }),
        get: Box::new(|key| {
            rt.block_on(async {
                match s3.get(&Key::from(format!("{prefix}/{key}"))).await {
                    Ok(got) => Some(got.bytes().await.unwrap().to_vec()),
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => panic!("{key}: {e}"),
                }
            })
        }),
    };
    let dir = tempfile::tempdir().unwrap();
    object_store_scenario(&objects, dir.path());
    // The three captures kept, metadata and image, and nothing outside the
    // prefix.
    let keys = all(&run);
    assert_eq!(keys.len(), 6, "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with(&format!("{prefix}/lobby/term-02/"))),
        "{keys:?}"
    );
}

/// The receiver storing into `objects` (its state in `dir/state`): each
/// capture once, whole and in parts, across a restart; a receipt deletes the
/// subject's stored captures, and its in-flight one arriving after.
#[cfg(feature = "object-store")]
fn object_store_scenario(objects: &Objects<'_>, dir: &Path) {
    let broker = Broker::start();
    let tls = broker.issue_client("fleet-2");
    let state = dir.join("state");
    let url = objects.url.clone();
    let start = || {
        Receiver::spawn_env(
            &broker,
            &tls,
            url.as_ref(),
            dir.join(format!("receiver-{}.log", rand_suffix())),
            &["--state", state.to_str().unwrap()],
            &objects.env,
        )
    };
    let image = synth::face_jpeg(320, 240, 1, 90);
    let half = image.len() / 2;
    let kept = "11111111-1111-4111-8111-111111111111";
    let parted = "55555555-5555-4555-8555-555555555555";
    let doomed = "66666666-6666-4666-8666-666666666666";
    let in_flight = "22222222-2222-4222-8222-222222222222";
    let last = "44444444-4444-4444-8444-444444444444";
    let topic = "facegate/lobby/term-02/captures";
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Its session and subscriptions made first: what the device publishes
    // waits on the broker from the start.
    start().stop();
    let receiver = start();
    assert!(
        receiver.log_text().contains(&format!("captures to {url}")),
        "{}",
        receiver.log_text()
    );
    rt.block_on(async {
        let mut dev = Session::spawn(broker.options("term-02"));
        dev.wait_connected(T).await.unwrap();
        // S-8's capture whole, then again (a redelivery); another in parts,
        // the second part first; and one of S-9.
        for body in [
            envelope(kept, "S-8", &image, None, &image),
            envelope(kept, "S-8", &image, None, &image),
            envelope(parted, "S-8", &image[half..], Some((1, 2)), &image),
            envelope(parted, "S-8", &image[..half], Some((0, 2)), &image),
            envelope(doomed, "S-9", &image, None, &image),
        ] {
            dev.publish(topic, body).await;
            dev.wait_puback(T).await.expect("PUBACK");
        }
    });
    let got = objects.wait_stored(3);
    let mut ids: Vec<&str> = got
        .iter()
        .map(|(m, _)| m["capture_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [kept, parted, doomed], "{}", receiver.log_text());
    for (meta, bytes) in &got {
        assert_eq!(bytes, &image, "{meta}");
    }
    let log = receiver.stop();
    assert_eq!(last_count(&log, "stored"), 3, "{log}");
    assert_eq!(last_count(&log, "duplicates"), 1, "{log}");
    // The receiver's state is apart from the captures.
    assert!(state.join(".receive/received").exists());
    assert!(
        (objects.keys)().iter().all(|k| !k.starts_with(".receive")),
        "{:?}",
        (objects.keys)()
    );

    // Restarted: a redelivery of a stored capture is still a duplicate; a
    // receipt for S-9 deletes its stored capture, and its in-flight one,
    // arriving after, is deleted on arrival.
    let receiver = start();
    rt.block_on(async {
        let mut dev = Session::spawn(broker.options("term-02"));
        dev.wait_connected(T).await.unwrap();
        dev.publish(topic, envelope(kept, "S-8", &image, None, &image))
            .await;
        dev.wait_puback(T).await.expect("PUBACK");
        let reply = json!({"v":1,"jti":"j-1","cmd":"consent.revoke","ok":true,
            "result":{"subject":"S-9","purged":2,"in_flight":[in_flight],
                      "purged_at": facegate::clock::rfc3339(facegate::clock::now())}});
        dev.publish(
            "facegate/lobby/term-02/reply",
            serde_json::to_vec(&reply).unwrap(),
        )
        .await;
        dev.wait_puback(T).await.expect("PUBACK");
        for body in [
            envelope(in_flight, "S-9", &image[..half], Some((0, 2)), &image),
            envelope(in_flight, "S-9", &image[half..], Some((1, 2)), &image),
            envelope(last, "S-8", &image, None, &image),
        ] {
            dev.publish(topic, body).await;
            dev.wait_puback(T).await.expect("PUBACK");
        }
    });
    let deadline = Instant::now() + T;
    while !objects.exists(&format!("lobby/term-02/{last}.json")) {
        assert!(Instant::now() < deadline, "{}", receiver.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = receiver.stop();
    assert!(log.contains("receipt for S-9: deleted 1"), "{log}");
    assert!(log.contains("deleted on arrival"), "{log}");
    // The redelivery, and the in-flight capture's second part (its id was
    // taken, deleted on arrival, with the first).
    assert_eq!(last_count(&log, "duplicates"), 2, "{log}");
    assert_eq!(last_count(&log, "stored"), 1, "{log}");
    let mut ids: Vec<String> = objects
        .stored()
        .iter()
        .map(|(m, _)| m["capture_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, [kept, last, parted], "{log}");
    for id in [doomed, in_flight] {
        assert!(!objects.exists(&format!("lobby/term-02/{id}.jpg")));
        assert!(!objects.exists(&format!("lobby/term-02/{id}.json")));
    }
    let deletions = two_deletions_no_parts(&state);
    assert!(deletions.iter().all(|l| l["subject"] == "S-9"));
}

/// `--out URL` a build cannot serve is refused at start, naming the cargo
/// feature it needs; an s3:// store needs a local `--state`.
#[test]
fn an_object_store_url_this_build_cannot_serve_is_refused_by_name() {
    let broker = Broker::start();
    let tls = broker.issue_client("fleet-2");
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &str, extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_facegate"))
            .args(["fleet", "receive", "--site", SITE])
            .args(tls.fleet_args(&broker))
            .args(["--out", out])
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let file = format!("file://{}", dir.path().join("objects").display());
    if !cfg!(feature = "object-store") {
        // (A build with it serves the URL: the test above.)
        let (ok, err) = run(&file, &[]);
        assert!(!ok && err.contains("feature `object-store`"), "{err}");
    }
    let state = dir.path().join("state");
    if !cfg!(feature = "s3") {
        // (A build with S3 would go on to the store; no S3 endpoint here.)
        let (ok, err) = run("s3://bucket/prefix", &["--state", state.to_str().unwrap()]);
        assert!(!ok && err.contains("feature `s3`"), "{err}");
    }
    let (ok, err) = run("gs://bucket/prefix", &["--state", state.to_str().unwrap()]);
    assert!(!ok && err.contains("gs://"), "{err}");
}

/// The receiver's state directory after a purge receipt and a late in-flight
/// arrival: no part left behind, and `deletions.log` holds two lines, the
/// stored capture's and the late one's (deleted on arrival); returns them.
fn two_deletions_no_parts(state: &Path) -> Vec<Value> {
    assert_eq!(
        fs::read_dir(state.join(".receive/parts")).unwrap().count(),
        0,
        "no part left behind"
    );
    let deletions: Vec<Value> = fs::read_to_string(state.join("deletions.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(deletions.len(), 2, "{deletions:?}");
    assert_eq!(deletions[0]["deleted"], 1, "the stored one");
    assert_eq!(deletions[1]["deleted"], 1, "the late one, on arrival");
    deletions
}
