//! Target G: the site consent log (`cargo bench --bench consent_log`; needs
//! `mosquitto`).
//!
//! * G1, gap closed → first upload: the benchmark build of `facegate run`
//!   with `[consent] log = "required"` against a private Mosquitto with
//!   mutual TLS. Each round publishes a head one entry ahead of what the
//!   device applied (a gap of one), queues one consented capture (held),
//!   then publishes the missing entry (a site-wide `consent.revoke` of a
//!   subject without captures) and times from that PUBLISH to the arrival of
//!   the held capture's upload. Baseline, same run and entries: from the
//!   PUBLISH to the entry's reply (the command path alone).
//! * G2, the applied set with 100,000 entries: store only. The time of one
//!   entry's transaction (`Store::mark_consent_seq`: the seq and its audit
//!   row, one fsync) and of the sync decision (`Store::consent_log_status`)
//!   with 100,000 entries applied in order (one run of seqs) and with
//!   100,000 entries applied every other seq (50,000 runs, the worst case
//!   short of a log that never fills a gap), against an empty applied set.

use std::time::{Duration, Instant};

use facegate::clock;
use facegate::consent_log::Head;
use facegate::ids::Seq;
use facegate::protocol::{Envelope, Reply};
use facegate_testkit::{bench, synth};
use serde_json::json;

const ROUNDS: u64 = 60;
const MARKS: u64 = 200;
const WAIT: Duration = Duration::from_secs(30);

fn main() {
    bench::runtime().block_on(gap_to_upload());
    applied_set();
}

async fn gap_to_upload() {
    let broker = bench::start_broker();
    let d = bench::daemon()
        .broker(&broker)
        .configure(|c| c.fast_reconnect().consent_log("required"))
        .start();
    d.grant("S-held");
    d.wait_uplink_connected(WAIT);
    let mut fleet = bench::bare_client(&broker, "fleet", 16).await;
    let topics = bench::topics();
    let site = bench::site_topics();
    fleet.subscribe(&topics.captures, WAIT).await;
    fleet.subscribe(&topics.reply, WAIT).await;

    let mut to_upload = Vec::new();
    let mut to_reply = Vec::new();
    for seq in 1..=ROUNDS {
        let head = d.fleet_signer.head(seq, 1);
        fleet
            .client
            .publish(&site.consent_head, rumqttc::QoS::AtLeastOnce, true, head)
            .await
            .expect("publish the head");
        facegate_testkit::util::wait_until(
            WAIT,
            || {
                d.status()
                    .consent_log
                    .is_some_and(|l| l.head == seq && l.missing == vec![[seq, seq]])
            },
            || format!("gap {seq} not seen\n{}", d.log()),
        );
        d.drop_pair(
            &format!("held-{seq}"),
            "jpg",
            &synth::face_jpeg(160, 120, seq, 80),
            Some("S-held"),
        );
        d.wait_spool_empty(WAIT);
        // Held: give the hand-over a few rounds to prove it.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(d.outbox_len(), 1, "uploaded while out of sync");
        let (jti, entry) = d.fleet_signer.entry(
            "consent.revoke",
            json!({ "subject": format!("S-none-{seq}") }),
            seq,
            clock::now(),
        );
        let t0 = Instant::now();
        fleet.publish(&site.cmd, entry).await;
        let (mut replied, mut uploaded) = (None, None);
        while replied.is_none() || uploaded.is_none() {
            let p = fleet
                .recv_publish(WAIT)
                .await
                .expect("a reply and an upload");
            if p.topic == topics.reply {
                let r = Reply::from_bytes(&p.payload).expect("reply");
                if r.jti.as_ref() == Some(&jti) {
                    replied = Some(t0.elapsed());
                }
            } else if p.topic == topics.captures {
                let e: Envelope = serde_json::from_slice(&p.payload).expect("envelope");
                assert_eq!(e.subject, "S-held");
                uploaded = Some(t0.elapsed());
            }
        }
        to_reply.extend(replied);
        to_upload.extend(uploaded);
        facegate_testkit::util::wait_until(
            WAIT,
            || d.outbox_len() == 0,
            || "the upload was not acknowledged".to_string(),
        );
    }
    let (text, _) = bench::summary(&mut to_reply);
    println!("RESULT G1 baseline: missing entry publish -> its reply: {text}");
    let (text, p99) = bench::summary(&mut to_upload);
    println!("RESULT G1 missing entry publish -> first upload: {text}");
    println!(
        "RESULT G1 target p99 < 50 ms: {}",
        if p99 < Duration::from_millis(50) {
            "PASS"
        } else {
            "FAIL"
        }
    );
}

fn applied_set() {
    for (name, step) in [("empty", 0u64), ("in order", 1), ("every other seq", 2)] {
        let d = bench::daemon().build();
        let cfg = d.load_config();
        let first = if step == 0 {
            1
        } else {
            drop(facegate::daemon::open(cfg.clone()).expect("open agent"));
            let db =
                rusqlite::Connection::open(d.state.join("facegate.db")).expect("open the database");
            db.execute_batch("BEGIN").expect("begin");
            if step == 1 {
                db.execute(
                    "INSERT INTO consent_log_applied (lo, hi) VALUES (1, 100000)",
                    [],
                )
                .expect("insert");
            } else {
                let mut st = db
                    .prepare("INSERT INTO consent_log_applied (lo, hi) VALUES (?1, ?1)")
                    .expect("prepare");
                for seq in (1..=200_000u64).step_by(2) {
                    st.execute([seq as i64]).expect("insert");
                }
            }
            db.execute_batch("COMMIT").expect("commit");
            200_001
        };
        let agent = facegate::daemon::open(cfg).expect("open agent");
        let mut store = agent.db().lock();
        let now = clock::now();
        let head = Head {
            seq: Seq::new(first + MARKS),
            base: Seq::new(1),
            iat: now,
            exp: now + 3600,
        };
        store.accept_consent_head(&head, now).expect("head");
        let mut marks = Vec::new();
        let mut decide = Vec::new();
        for i in 0..MARKS {
            let t = Instant::now();
            store
                .mark_consent_seq(Seq::new(first + i), now)
                .expect("mark");
            marks.push(t.elapsed());
            let t = Instant::now();
            let status = store.consent_log_status(86_400, now).expect("status");
            decide.push(t.elapsed());
            assert!(!status.in_sync);
        }
        let (text, _) = bench::summary(&mut marks);
        println!("RESULT G2 {name}: one entry's transaction: {text}");
        let (text, _) = bench::summary(&mut decide);
        println!("RESULT G2 {name}: sync decision: {text}");
    }
}
