//! The audit log through the real binary: no trace of people who did not
//! consent, revoked subjects' history unlinkable, and retention that leaves
//! `facegate ctl audit verify` able to prove the rest.

use std::time::Duration;

use facegate::audit::kind;
use facegate::crypto::{AuditSalt, DeviceKey, KEY_FILE_NAME};
use facegate::store::Store;
use facegate_testkit::daemon::Daemon;
use facegate_testkit::synth;
use facegate_testkit::util::{file_contains, wait_until};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);
const DAY: i64 = 86_400;
const DB_FILES: [&str; 3] = ["facegate.db", "facegate.db-wal", "facegate.db-shm"];

fn device_key(d: &Daemon) -> DeviceKey {
    DeviceKey::load(&d.state.join(KEY_FILE_NAME)).unwrap()
}

fn verify(d: &Daemon) -> (bool, Value) {
    let out = d.try_ctl(&["audit", "verify"]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), report)
}

#[test]
fn a_dropped_capture_leaves_no_trace_of_its_subject() {
    let mut d = Daemon::start();
    let walker = "S-WALKER-77d1";
    d.drop_pair(
        "cam1-000123",
        "jpg",
        &synth::face_jpeg(320, 240, 1, 85),
        Some(walker),
    );
    d.wait_spool_empty(T);
    assert_eq!(d.counters().dropped_no_consent, 1);
    // Drops are audited in a summary row, written within seconds.
    let dropped_rows = || -> Vec<Value> {
        d.audit_tail()
            .into_iter()
            .filter(|e| e["kind"] == kind::CAPTURE_DROPPED)
            .collect()
    };
    wait_until(T, || !dropped_rows().is_empty(), || d.log());
    let dropped = dropped_rows();
    assert_eq!(dropped.len(), 1, "the drop is still audited");
    assert_eq!(dropped[0]["detail"]["count"], 1, "{dropped:?}");
    assert_eq!(dropped[0]["subject_ref"], Value::Null, "{dropped:?}");
    assert!(d.log().contains("dropped capture without consent"));
    d.stop();

    // The pseudonym the audit row used to carry: HMAC of the subject id under
    // the pseudonym key derived from storage.key, hex, and its raw bytes.
    let pseudonym = device_key(&d).derive().pseudonyms.pseudonym(walker);
    for f in DB_FILES {
        let path = d.state.join(f);
        assert!(
            !file_contains(&path, hex::encode(pseudonym).as_bytes()),
            "the walker's pseudonym is in {f}"
        );
        assert!(!file_contains(&path, &pseudonym), "pseudonym bytes in {f}");
        assert!(
            !file_contains(&path, walker.as_bytes()),
            "subject id in {f}"
        );
    }
}

#[test]
fn a_revoked_subjects_audit_history_cannot_be_linked_to_it() {
    let mut d = Daemon::start();
    let subject = "S-LEAVER-3e9a";
    d.grant(subject);
    d.drop_pair(
        "a",
        "jpg",
        &synth::face_jpeg(320, 240, 2, 85),
        Some(subject),
    );
    d.wait_spool_empty(T);
    assert_eq!(d.outbox_len(), 1);
    d.ctl_json(&["consent", "revoke", subject]);
    let rows = d.audit_tail();
    let refs: Vec<String> = rows
        .iter()
        .filter_map(|e| e["subject_ref"].as_str().map(str::to_owned))
        .collect();
    // consent.added, capture.accepted, consent.revoked, capture.purged
    assert_eq!(refs.len(), 4, "{rows:?}");
    let (ok, report) = verify(&d);
    assert!(ok, "{report}");
    d.stop();

    // From the subject id and the device key, with whatever the database
    // still holds: the unsalted pseudonym, and a salted one per stored salt.
    let keys = device_key(&d).derive();
    let pseudonym = keys.pseudonyms.pseudonym(subject);
    let mut computable = vec![hex::encode(pseudonym)];
    let conn = rusqlite::Connection::open(d.state.join("facegate.db")).unwrap();
    let mut stmt = conn.prepare("SELECT salt FROM audit_salts").unwrap();
    let salts: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for salt in salts {
        let salt = AuditSalt::from_slice(&salt).unwrap();
        computable.push(hex::encode(keys.pseudonyms.audit_ref(&salt, &pseudonym)));
    }
    for r in &refs {
        assert!(
            !computable.contains(r),
            "audit row subject_ref {r} is still linkable to {subject}"
        );
    }
}

#[test]
fn audit_verify_proves_the_chain_after_retention_deleted_old_rows() {
    let mut d = Daemon::builder()
        .configure(|c| c.audit_retention(Duration::from_secs(30 * DAY as u64)))
        .build();
    // A terminal with history: rows from 40 and 20 days ago.
    std::fs::create_dir_all(&d.state).unwrap();
    {
        let key = DeviceKey::load_or_create(&d.state.join(KEY_FILE_NAME)).unwrap();
        let mut store = Store::open(&d.state, key).unwrap();
        let now = facegate::clock::now();
        for (i, age) in [40, 40, 40, 20].into_iter().enumerate() {
            let detail = serde_json::json!({ "reason": format!("history-{i}") });
            store
                .record(kind::CAPTURE_REJECTED, None, detail, None, now - age * DAY)
                .unwrap();
        }
    }
    d.spawn();
    wait_until(
        T,
        || {
            d.audit_tail()
                .iter()
                .any(|e| e["kind"] == kind::AUDIT_PRUNED)
        },
        || format!("no audit.pruned row\n{}", d.log()),
    );
    let seqs: Vec<i64> = d
        .audit_tail()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs.first(), Some(&4), "rows 1-3 deleted: {seqs:?}");
    let (ok, report) = verify(&d);
    assert!(ok, "{report}");
    assert_eq!(report["pruned_through"], 3, "{report}");
    d.stop();

    // Tampering with a remaining row or with the checkpoint is detected.
    for (sql, undo) in [
        (
            "UPDATE audit SET ts = ts + 1 WHERE seq = 4",
            "UPDATE audit SET ts = ts - 1 WHERE seq = 4",
        ),
        (
            "UPDATE audit_checkpoint SET seq = seq + 1",
            "UPDATE audit_checkpoint SET seq = seq - 1",
        ),
    ] {
        let conn = rusqlite::Connection::open(d.state.join("facegate.db")).unwrap();
        assert_eq!(conn.execute(sql, []).unwrap(), 1, "{sql}");
        drop(conn);
        d.spawn();
        let (ok, report) = verify(&d);
        assert!(!ok, "{sql} went unnoticed: {report}");
        d.stop();
        let conn = rusqlite::Connection::open(d.state.join("facegate.db")).unwrap();
        conn.execute(undo, []).unwrap();
    }
    d.spawn();
    let (ok, report) = verify(&d);
    assert!(ok, "{report}");
}
