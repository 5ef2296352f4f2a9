//! A self-contained demo of facegate's whole flow, also run as a smoke test
//! (`scripts/demo`). It exits non-zero as soon as one expectation fails.
//!
//! Everything is throwaway and lives in temporary directories: a CA with broker,
//! device and fleet certificates, the consent and fleet signing keys, a local
//! Mosquitto with mutual TLS ([`Broker`]), and the agent itself: the real
//! `facegate` binary (`scripts/demo` builds it) on a throwaway terminal, run by
//! the testkit's [`Daemon`] harness. The demo then plays three roles:
//!
//! - the **camera**: writes synthetic face captures (drawn, not real people) into the
//!   spool, each file under a temporary name and then renamed;
//! - the **site admin**: talks to the control socket like `facegate ctl`;
//! - the **fleet manager**: an MQTT client with the `fleet` certificate that sees every
//!   upload and sends a signed `consent.revoke`.
//!
//! The agent's log goes to a file in the temporary directory and is shown only
//! when something fails.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use facegate::audit::{AuditEntry, VerifyReport};
use facegate::cmd::{Command, ConsentRevoke};
use facegate::config::Config;
use facegate::control::Request;
use facegate::ids::{Jti, SubjectId};
use facegate::protocol::{Envelope, Granted, Receipt, Reply, Status, Topics};
use facegate::{clock, sanitize};
use facegate_testkit::broker::{Broker, BrokerOptions};
use facegate_testkit::daemon::Daemon;
use facegate_testkit::mqtt::Session;
use facegate_testkit::synth;
use facegate_testkit::util::contains;
use facegate_testkit::{DEVICE, SITE};
use ring::digest;
use rumqttc::Publish;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
/// Planted in the EXIF, XMP and comment of one capture; must never leave the device.
const GPS_MARKER: &str = "DEMO-GPS-52.52N-13.41E";
/// Upper bound for every wait; the whole demo normally takes a few seconds.
const WAIT: Duration = Duration::from_secs(20);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let started = Instant::now();
    let mut demo = match Demo::setup() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("\nDEMO FAILED during setup: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = demo.story().await;
    let log_tail = demo.agent_log_tail(40);
    demo.teardown();
    match outcome {
        Ok(()) => {
            println!(
                "\nAll expectations held. Cleaned up: agent stopped, broker stopped, \
                 temporary keys, certificates and data removed. ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\nDEMO FAILED: {e:#}\n--- agent log (tail) ---\n{log_tail}");
            ExitCode::FAILURE
        }
    }
}

/// One synthetic capture the camera writes, and what is known about it.
struct Shot {
    /// Spool file name without extension.
    name: String,
    /// `subject` in the sidecar (`None` = anonymous).
    subject: Option<&'static str>,
    /// The bytes the camera wrote.
    raw: Vec<u8>,
    /// What the agent must upload for it: the sanitized image's SHA-256.
    clean_sha256: String,
}

/// The demo's world: broker, terminal (keys, config, state, spool, agent), fleet client.
struct Demo {
    /// The private Mosquitto.
    broker: Broker,
    /// The terminal and its agent process; signs consents and commands it trusts.
    agent: Daemon,
    /// The agent's parsed configuration, for paths and capture limits.
    config: Config,
    /// The fleet manager's MQTT client.
    fleet: Option<Fleet>,
    /// Every capture written, by name.
    shots: Vec<Shot>,
    /// Upload envelopes received by the fleet, by capture id.
    uploads: HashMap<String, Envelope>,
    /// Rows for the summary table.
    summary: Vec<[String; 4]>,
}

impl Demo {
    /// Step 1: PKI, broker, signing keys and the agent's configuration.
    fn setup() -> Result<Demo> {
        step(
            1,
            "Set up a throwaway PKI, a local MQTT broker and signing keys",
        );
        let broker = Broker::try_start(BrokerOptions::default())?;
        let agent = Daemon::builder()
            .broker(&broker)
            .configure(|c| {
                c.keep_alive(Duration::from_secs(5))
                    .fast_reconnect()
                    .poll_interval(Duration::from_millis(50))
                    .log_level("info")
            })
            .build();
        say(&format!(
            "CA + server certificate; Mosquitto listening on 127.0.0.1:{} (mutual TLS only)",
            broker.port
        ));
        say("broker persistence saved every second (persistence true, autosave_interval 1)");
        why("the terminal deletes a capture once the broker acknowledges it: from then on only the broker's disk keeps it (docs/OPERATIONS.md, \"Broker durability\")");
        say(&format!(
            "client certificates: {DEVICE:?} (the terminal) and \"fleet\" (the back-end)"
        ));
        say(&format!(
            "Ed25519 keys: {:?} signs consents, {:?} signs fleet commands",
            agent.consent_signer.kid, agent.fleet_signer.kid
        ));
        why("the terminal trusts only these two public keys, each for its own role");

        let config = agent.load_config();
        config.check_files()?;
        Ok(Demo {
            broker,
            agent,
            config,
            fleet: None,
            shots: Vec::new(),
            uploads: HashMap::new(),
            summary: Vec::new(),
        })
    }

    /// Steps 2 to 6.
    async fn story(&mut self) -> Result<()> {
        step(2, "Start the agent and the fleet manager's subscriber");
        self.agent.spawn();
        let work = self.agent.dir.path();
        say(&format!(
            "agent running; state in {}, spool in {}",
            rel(work, &self.config.state_dir),
            rel(work, &self.config.spool_dir)
        ));
        self.fleet = Some(Fleet::connect(self.broker.options("fleet")).await?);
        say("fleet subscribed to facegate/# (sees every upload, reply and status)");
        self.wait_status("the agent to connect to the broker", |s| {
            s.uplink.is_some_and(|u| u.connected)
        })
        .await?;
        say("agent connected to the broker with its device certificate");

        self.consented_and_unconsented().await?;
        self.offline_then_revoked().await?;
        self.final_report().await?;
        self.print_summary();
        Ok(())
    }

    /// Step 3: consent first; no consent means nothing is kept; metadata is removed.
    async fn consented_and_unconsented(&mut self) -> Result<()> {
        step(
            3,
            "Consent first: captures of Alice (consented), Bob and an anonymous person",
        );
        let token = self.agent.consent_signer.consent("alice", 3600);
        let added: Granted = self
            .ctl(Request::ConsentAdd { token })
            .await
            .context("ctl consent add")?;
        say(&format!(
            "site admin: `facegate ctl consent add <token>` for alice -> consent {} until {}",
            short(added.consent_id.as_str()),
            clock::rfc3339(added.expires_at)
        ));
        why(
            "Alice gave explicit, separate consent for `capture:upload`, signed by the consent key",
        );

        let plain = synth::face_jpeg(320, 240, 1, 85);
        let gps = synth::with_exif_gps(&synth::face_jpeg(320, 240, 2, 85), GPS_MARKER);
        self.camera("alice-1", Some("alice"), plain)?;
        self.camera("alice-2-gps", Some("alice"), gps)?;
        self.camera("bob-1", Some("bob"), synth::face_jpeg(320, 240, 3, 85))?;
        self.camera("anon-1", None, synth::face_jpeg(320, 240, 4, 85))?;
        say("camera wrote 4 captures (synthetic faces) into the spool: alice-1, alice-2-gps (with EXIF GPS, XMP and a comment), bob-1, anon-1");

        self.wait_spool_empty().await?;
        self.collect_uploads(2).await?;
        // Anything else (Bob, the anonymous capture, a duplicate) would show up now.
        self.collect_uploads_for(Duration::from_millis(1500))
            .await?;
        ensure!(
            self.uploads.len() == 2,
            "expected exactly 2 uploads, the fleet received {}",
            self.uploads.len()
        );
        let status = self
            .wait_status("the two uploads to be acknowledged", |s| {
                counters(s).uploaded == 2 && outbox(s).captures == 0
            })
            .await?;
        ensure!(
            counters(&status).dropped_no_consent == 2,
            "expected 2 captures dropped for lack of consent: {status:?}"
        );

        for name in ["alice-1", "alice-2-gps"] {
            let env = self.upload_of(name)?;
            let image = &env.image;
            ensure!(
                env.subject == "alice",
                "{name}: wrong subject {}",
                env.subject
            );
            ensure!(
                !contains(image, GPS_MARKER.as_bytes()) && !contains(image, b"Exif\0\0"),
                "{name}: the uploaded image still carries metadata"
            );
            let raw_len = self.shot(name)?.raw.len();
            say(&format!(
                "fleet received {name}: capture {}, {} -> {} bytes, sha256 verified, no EXIF/GPS/XMP/comment",
                short(&env.capture_id),
                raw_len,
                image.len()
            ));
        }
        say("bob-1 and anon-1: dropped at intake (counter dropped_no_consent = 2), never uploaded");
        self.check_no_plaintext_on_disk()?;
        say("state directory scanned: no image bytes and no GPS marker of any capture on disk");
        why("without consent a capture is deleted from the spool and never written to storage;");
        why("uploads carry only the pixels needed for the purpose: location metadata is stripped");
        self.row("alice-1", "alice", "yes", "uploaded, sha256 verified");
        self.row(
            "alice-2-gps",
            "alice",
            "yes",
            "uploaded with EXIF/GPS/XMP/comment removed",
        );
        self.row("bob-1", "bob", "no", "dropped at intake, never stored");
        self.row("anon-1", "(none)", "no", "dropped at intake, never stored");
        Ok(())
    }

    /// Step 4: captures queued offline, encrypted; a revocation wins over the queue.
    async fn offline_then_revoked(&mut self) -> Result<()> {
        step(4, "Offline queue, then Alice withdraws her consent");
        self.broker.stop();
        self.wait_status("the agent to notice the broker is gone", |s| {
            s.uplink.is_some_and(|u| !u.connected)
        })
        .await?;
        say("network outage: broker stopped; the agent keeps working locally");
        for i in 3..=5 {
            let image = synth::face_jpeg(320, 240, 10 + i, 85);
            self.camera(&format!("alice-{i}"), Some("alice"), image)?;
        }
        self.wait_spool_empty().await?;
        let status = self
            .wait_status("3 captures in the outbox", |s| outbox(s).captures == 3)
            .await?;
        self.check_no_plaintext_on_disk()?;
        say(&format!(
            "camera wrote alice-3..5; `ctl status`: outbox = {} captures, {} bytes, encrypted (AES-256-GCM, Alice's own key)",
            outbox(&status).captures,
            outbox(&status).bytes
        ));
        why("a consented capture is never lost: it waits in the outbox until the broker acknowledges it");

        self.stop_agent()?;
        say("terminal powered off (agent stopped) with the 3 captures still queued");
        self.broker.restart();
        let revoke = Command::ConsentRevoke(ConsentRevoke {
            subject: SubjectId::new("alice")?,
        });
        let (jti, jws) =
            self.agent
                .fleet_signer
                .sign(&revoke, &format!("{SITE}/{DEVICE}"), 600, clock::now());
        let fleet = self.fleet_mut()?;
        fleet.wait_connected().await?;
        fleet.session.publish(&topics().device_cmd, jws).await;
        fleet.wait_puback().await?;
        say(&format!(
            "broker back; Alice withdrew consent: fleet published a signed consent.revoke (jti {}); the broker holds it for the offline terminal",
            short(jti.as_str())
        ));

        let before = self.uploads.len();
        self.agent.spawn();
        say("terminal powered on: it connects, receives the revocation first, then looks at its outbox");
        let reply = self.wait_reply(&jti).await?;
        ensure!(reply.ok, "revocation refused: {reply:?}");
        let receipt: Receipt = reply
            .receipt()
            .cloned()
            .with_context(|| format!("reply without a receipt: {reply:?}"))?;
        ensure!(
            receipt
                .subject
                .as_ref()
                .is_some_and(|s| s.as_str() == "alice")
                && receipt.purged == 3,
            "expected all 3 queued captures purged: {receipt:?}"
        );
        let in_flight = receipt.in_flight.len();
        self.collect_uploads_for(Duration::from_millis(1500))
            .await?;
        ensure!(
            self.uploads.len() == before,
            "a capture was uploaded after the revocation"
        );
        let status = self
            .wait_status("the purge to show in the status", |s| {
                outbox(s).captures == 0 && s.consent.is_some_and(|c| c.active == 0)
            })
            .await?;
        say(&format!(
            "receipt: purged = {}, in_flight = {in_flight} (none had been handed to MQTT); outbox now {}",
            receipt.purged,
            outbox(&status).captures
        ));
        why("withdrawal stops processing at once: nothing more of Alice is sent, her data key is");
        why("destroyed so her queued captures are unreadable, and the receipt tells the back-end");
        why("which already-sent captures (in_flight) it must delete on its side");
        println!("\n  purge receipt (reply on {}):", topics().reply);
        print_json(&receipt, 4);
        self.row(
            "alice-3..5",
            "alice",
            "revoked",
            "queued encrypted offline, purged by the revocation",
        );
        Ok(())
    }

    /// Step 5: the site admin's view: status counters, audit chain, last entries.
    async fn final_report(&mut self) -> Result<()> {
        step(
            5,
            "What the site admin can show: status, audit chain, audit trail",
        );
        let status: Status = self.ctl(Request::Status).await?;
        let c = counters(&status);
        println!(
            "  status counters: accepted={} dropped_no_consent={} rejected_bad_input={} uploaded={} purged={}",
            c.accepted, c.dropped_no_consent, c.rejected_bad_input, c.uploaded, c.purged
        );
        let expected = [
            ("accepted", c.accepted, 5),
            ("dropped_no_consent", c.dropped_no_consent, 2),
            ("rejected_bad_input", c.rejected_bad_input, 0),
            ("uploaded", c.uploaded, 2),
            ("purged", c.purged, 3),
        ];
        for (key, got, want) in expected {
            ensure!(got == want, "counter {key}: expected {want}, got {got}");
        }
        let verify: VerifyReport = self.ctl(Request::AuditVerify).await?;
        ensure!(verify.ok, "audit chain does not verify: {verify:?}");
        println!(
            "  `ctl audit verify`: ok, {} entries, hash chain intact",
            verify.rows
        );
        // Drops are audited in a summary row, written with the next batch or
        // within 5 s of the first drop it counts.
        let dropped_in = |entries: &[AuditEntry]| -> u64 {
            entries
                .iter()
                .filter(|e| e.kind == "capture.dropped")
                .filter_map(|e| e.detail["count"].as_u64())
                .sum()
        };
        let mut entries: Vec<AuditEntry> = self.ctl(Request::AuditTail { n: 20 }).await?;
        for _ in 0..40 {
            if dropped_in(&entries) >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            entries = self.ctl(Request::AuditTail { n: 20 }).await?;
        }
        println!("  `ctl audit tail` (subjects appear only as pseudonyms):");
        let dropped = dropped_in(&entries);
        ensure!(
            dropped == 2,
            "expected 2 drops in capture.dropped audit entries, found {dropped}"
        );
        for e in &entries {
            let ts = clock::rfc3339(e.ts);
            let subject = e.subject_ref.as_deref().map(short).unwrap_or("-");
            println!(
                "    {:<4} {}  {:<17} subject {:<8} {}",
                format!("#{}", e.seq),
                ts.get(11..19).unwrap_or(&ts),
                e.kind,
                subject,
                compact(&e.detail, 64)
            );
        }
        why("every decision is recorded in a keyed hash chain, so the operator can prove what happened");
        Ok(())
    }

    /// Step 6: the table.
    fn print_summary(&self) {
        step(6, "Summary");
        let header = ["capture", "subject", "consent", "what happened"];
        let widths: Vec<usize> = (0..4)
            .map(|i| {
                self.summary
                    .iter()
                    .map(|r| r[i].len())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: [&str; 4]| {
            let mut s = String::from("  ");
            for (i, cell) in cells.iter().enumerate() {
                let _ = write!(s, "{:<w$}  ", cell, w = widths[i]);
            }
            println!("{}", s.trim_end());
        };
        line(header);
        line(["-------", "-------", "-------", "-------------"]);
        for r in &self.summary {
            line([&r[0], &r[1], &r[2], &r[3]]);
        }
        println!();
        println!("  Why: uploads only with a valid signed consent for this site and purpose;");
        println!(
            "  no consent -> nothing stored; withdrawal -> processing stops and data is purged"
        );
        println!("  on the device's own initiative, with a receipt; everything audited.");
    }

    // ---- the agent ----

    fn stop_agent(&mut self) -> Result<()> {
        let status = self.agent.stop();
        ensure!(status.success(), "the agent exited with {status}");
        Ok(())
    }

    fn teardown(&mut self) {
        self.fleet = None;
        if self.agent.pid().is_some() {
            if let Err(e) = self.stop_agent() {
                eprintln!("stopping the agent: {e:#}");
            }
        }
        self.broker.kill();
    }

    /// One control-socket request, like `facegate ctl`; the result (as the
    /// type the request answers with) or the error.
    async fn ctl<T: DeserializeOwned>(&self, req: Request) -> Result<T> {
        // Name the request by its operation only (a consent token is not for the screen).
        let op = serde_json::to_value(&req)?["op"].to_string();
        self.agent
            .request(&req)
            .await
            .map_err(|e| anyhow!("control request {op}: {e}"))
    }

    /// Polls `ctl status` until `cond` holds; returns that status.
    async fn wait_status(&self, what: &str, cond: impl Fn(&Status) -> bool) -> Result<Status> {
        let deadline = Instant::now() + WAIT;
        loop {
            let status: Status = self.ctl(Request::Status).await?;
            if cond(&status) {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // ---- the camera ----

    /// Writes `NAME.jpg` then `NAME.json` into the spool, each under a temporary
    /// name and renamed into place, as camera software must.
    fn camera(&mut self, name: &str, subject: Option<&'static str>, raw: Vec<u8>) -> Result<()> {
        let clean = sanitize::sanitize(&raw, &self.config.capture)
            .with_context(|| format!("{name} is not a valid capture"))?;
        self.agent.spool.pair(name, "jpg", &raw, subject)?;
        self.shots.push(Shot {
            name: name.to_string(),
            subject,
            raw,
            clean_sha256: hex::encode(clean.sha256),
        });
        Ok(())
    }

    async fn wait_spool_empty(&self) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = self.agent.spool_len();
            if left == 0 {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "{left} files still in the spool");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn shot(&self, name: &str) -> Result<&Shot> {
        self.shots
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no capture named {name}"))
    }

    /// No file of the state directory holds a recognisable piece of any capture's
    /// image data, nor the GPS marker.
    fn check_no_plaintext_on_disk(&self) -> Result<()> {
        let mut files = Vec::new();
        walk(&self.config.state_dir, &mut files)?;
        for file in files {
            let Ok(bytes) = std::fs::read(&file) else {
                continue; // the control socket, or a file removed meanwhile
            };
            ensure!(
                !contains(&bytes, GPS_MARKER.as_bytes()),
                "GPS marker found in {}",
                file.display()
            );
            for shot in &self.shots {
                // A slice from the middle of the file: compressed pixel data, which
                // sanitizing keeps as is.
                let mid = shot.raw.len() / 2;
                let probe = &shot.raw[mid..mid + 48];
                ensure!(
                    !contains(&bytes, probe),
                    "plaintext image data of {} (subject {:?}) found in {}",
                    shot.name,
                    shot.subject,
                    file.display()
                );
            }
        }
        Ok(())
    }

    // ---- the fleet ----

    fn fleet_mut(&mut self) -> Result<&mut Fleet> {
        self.fleet.as_mut().context("fleet client not connected")
    }

    /// Reads messages until `n` distinct uploads have arrived in total.
    async fn collect_uploads(&mut self, n: usize) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.uploads.len() < n {
            let p = self
                .fleet_mut()?
                .next_publish(deadline)
                .await
                .with_context(|| {
                    format!("expected {n} uploads, received {}", self.uploads.len())
                })?;
            self.record(p)?;
        }
        Ok(())
    }

    /// Reads messages for `window`, recording uploads.
    async fn collect_uploads_for(&mut self, window: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + window;
        while let Some(p) = self.fleet_mut()?.next_publish(deadline).await {
            self.record(p)?;
        }
        Ok(())
    }

    /// Records an upload envelope (checking its sha256); keeps replies for later.
    fn record(&mut self, p: Publish) -> Result<()> {
        let topics = topics();
        if p.topic == topics.reply {
            let reply = Reply::from_bytes(&p.payload).context("not a reply")?;
            self.fleet_mut()?.replies.push(reply);
            return Ok(());
        }
        if p.topic != topics.captures {
            return Ok(());
        }
        let env = Envelope::from_bytes(&p.payload).context("not an upload envelope")?;
        let digest = digest::digest(&digest::SHA256, &env.image);
        ensure!(
            env.sha256[..] == *digest.as_ref(),
            "envelope sha256 does not match its image"
        );
        let sha = hex::encode(env.sha256);
        let id = env.capture_id.clone();
        ensure!(
            !self.uploads.contains_key(&id),
            "capture {id} delivered twice"
        );
        ensure!(
            self.shots
                .iter()
                .any(|s| s.clean_sha256 == sha && s.subject == Some("alice")),
            "the fleet received an image that is not a sanitized capture of Alice"
        );
        self.uploads.insert(id, env);
        Ok(())
    }

    /// The envelope (with its decoded image) uploaded for capture `name`.
    fn upload_of(&self, name: &str) -> Result<&Envelope> {
        let want = &self.shot(name)?.clean_sha256;
        self.uploads
            .values()
            .find(|e| hex::encode(e.sha256) == *want)
            .with_context(|| format!("{name} was not uploaded"))
    }

    async fn wait_reply(&mut self, jti: &Jti) -> Result<Reply> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let fleet = self.fleet_mut()?;
            if let Some(i) = fleet
                .replies
                .iter()
                .position(|r| r.jti.as_ref() == Some(jti))
            {
                return Ok(fleet.replies.remove(i));
            }
            let p = fleet
                .next_publish(deadline)
                .await
                .context("no reply to the revocation")?;
            self.record(p)?;
        }
    }

    fn row(&mut self, a: &str, b: &str, c: &str, d: &str) {
        self.summary
            .push([a.to_string(), b.to_string(), c.to_string(), d.to_string()]);
    }

    fn agent_log_tail(&self, n: usize) -> String {
        let log = self.agent.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// The fleet manager's MQTT client: a session that reconnects by itself
/// (persistent session) when the broker comes back, and the command replies
/// read while waiting for something else.
struct Fleet {
    session: Session,
    replies: Vec<Reply>,
}

impl Fleet {
    async fn connect(options: rumqttc::MqttOptions) -> Result<Fleet> {
        let mut fleet = Fleet {
            session: Session::spawn_reconnecting(options),
            replies: Vec::new(),
        };
        fleet.wait_connected().await?;
        fleet.session.subscribe("facegate/#", WAIT).await;
        Ok(fleet)
    }

    /// Waits for the (re)connection. Used only while the agent is stopped, so no
    /// reply can be missed meanwhile.
    async fn wait_connected(&mut self) -> Result<()> {
        self.session
            .wait_connected(WAIT)
            .await
            .map(drop)
            .map_err(|e| anyhow!("the fleet connection: {e}"))
    }

    /// Waits for the broker to take a command (the agent is stopped meanwhile).
    async fn wait_puback(&mut self) -> Result<()> {
        self.session
            .wait_puback(WAIT)
            .await
            .map(drop)
            .context("timed out waiting for PUBACK")
    }

    /// The next PUBLISH before `deadline`, or `None`.
    async fn next_publish(&mut self, deadline: tokio::time::Instant) -> Option<Publish> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.session.recv_publish(left).await
    }
}

/// The topics of the demo's terminal.
fn topics() -> Topics {
    Topics::new("facegate", SITE, DEVICE)
}

/// The outbox section of a status (the device always sends it).
fn outbox(s: &Status) -> facegate::protocol::OutboxStatus {
    s.outbox.unwrap_or_default()
}

/// The counters of a status (the device always sends them).
fn counters(s: &Status) -> facegate::protocol::Counters {
    s.counters.unwrap_or_default()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

fn step(n: u32, title: &str) {
    println!("\n[{n}] {title}");
}

fn say(text: &str) {
    println!("  - {text}");
}

fn why(text: &str) {
    println!("    why: {text}");
}

/// The first 8 characters of an id, enough to tell ids apart on screen.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn rel(base: &Path, p: &Path) -> String {
    p.strip_prefix(base)
        .map(|r| format!("<tmp>/{}", r.display()))
        .unwrap_or_else(|_| p.display().to_string())
}

/// One-line JSON, cut to `max` characters.
fn compact(v: &Value, max: usize) -> String {
    let s = v.to_string();
    if s.chars().count() <= max {
        s
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

fn print_json<T: Serialize>(v: &T, indent: usize) {
    let pretty = serde_json::to_string_pretty(v).unwrap_or_default();
    for line in pretty.lines() {
        println!("{:indent$}{line}", "");
    }
}
