//! Store tests against real SQLite files in temporary directories.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use serde_json::json;

use super::*;
use crate::audit::kind;
use crate::config::{Identity, OutboxConfig, Role, TrustedKey, WhenFull};
use crate::consent::{sign_consent, Consent, ConsentRequest, UPLOAD_SCOPE};
use crate::crypto::DeviceKey;
use crate::ids::{CaptureId, Jti, SubjectId};

const T0: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

fn key() -> DeviceKey {
    DeviceKey::from_bytes([42u8; 32])
}

fn open(dir: &Path) -> Store {
    Store::open(dir, key()).unwrap()
}

fn sid(s: &str) -> SubjectId {
    SubjectId::new(s).unwrap()
}

/// The consent signing key of these tests: (pkcs8, public).
fn signing_key() -> &'static (Vec<u8>, [u8; 32]) {
    static KEY: std::sync::OnceLock<(Vec<u8>, [u8; 32])> = std::sync::OnceLock::new();
    KEY.get_or_init(|| crate::keys::generate().unwrap())
}

/// The trusted keys: the test consent key as `consent-2026`.
fn trust() -> Vec<TrustedKey> {
    vec![TrustedKey {
        kid: "consent-2026".into(),
        role: Role::Consent,
        public_key: signing_key().1,
    }]
}

/// `consent-2026` replaced by another key.
fn other_key() -> Vec<TrustedKey> {
    let (_, public) = crate::keys::generate().unwrap();
    vec![TrustedKey {
        public_key: public,
        ..trust()[0].clone()
    }]
}

fn me() -> Identity {
    Identity {
        site_id: "lobby".into(),
        device_id: "term-01".into(),
    }
}

/// A consent with a real token signed by [`signing_key`] as `consent-2026`.
fn consent(id: &str, subject: &str, iat: i64, exp: i64) -> Consent {
    let req = ConsentRequest {
        issuer: "hr".into(),
        subject: subject.into(),
        audience: vec!["lobby".into()],
        scopes: vec![UPLOAD_SCOPE.into()],
        lifetime_s: exp - iat,
        jti: Some(id.into()),
    };
    let token = sign_consent(&req, "consent-2026", &signing_key().0, iat).unwrap();
    Consent {
        id: id.into(),
        subject: sid(subject),
        issuer: "hr".into(),
        issued_at: iat,
        expires_at: exp,
        audience: vec!["lobby".into()],
        scopes: vec![UPLOAD_SCOPE.into()],
        kid: "consent-2026".into(),
        token,
    }
}

fn capture(id: &str, subject: &str, consent_id: &str, image: &[u8]) -> Capture {
    Capture {
        consent_id: consent_id.into(),
        ..testing::capture(id, subject, image)
    }
}

fn policy(quota: u64, when_full: WhenFull) -> OutboxConfig {
    OutboxConfig {
        retention: Duration::from_secs(7 * DAY as u64),
        quota_bytes: quota,
        when_full,
    }
}

fn roomy() -> OutboxConfig {
    policy(1 << 30, WhenFull::RejectNew)
}

/// Image bytes with a unique marker in the middle.
fn marked_image(marker: &str) -> Vec<u8> {
    let mut v = vec![0xFFu8, 0xD8, 0xFF];
    v.extend_from_slice(&[0x11; 300]);
    v.extend_from_slice(format!("PIXELS<{marker}>").as_bytes());
    v.extend_from_slice(&[0x22; 300]);
    v
}

fn raw_files(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["facegate.db", "facegate.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            all.extend_from_slice(&bytes);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn raw(dir: &Path) -> Connection {
    Connection::open(dir.join(DB_FILE_NAME)).unwrap()
}

/// Capture ids `pending` returns, in order.
fn pending_ids(store: &mut Store, limit: usize, exclude: &[CaptureId]) -> Vec<CaptureId> {
    store
        .pending(limit, exclude)
        .unwrap()
        .into_iter()
        .map(|c| c.capture.capture_id)
        .collect()
}

fn kinds(store: &mut Store) -> Vec<String> {
    store
        .audit_tail(1000)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

/// One subject with a consent and `n` queued captures.
fn with_captures(store: &mut Store, subject: &str, n: usize, now: i64) -> Vec<CaptureId> {
    let cid = format!("consent-{subject}");
    store
        .add_consent(&consent(&cid, subject, now - 10, now + DAY), now, None)
        .unwrap();
    let ids: Vec<CaptureId> = (0..n)
        .map(|i| CaptureId::new(format!("{subject}-cap-{i}")))
        .collect();
    let batch = ids
        .iter()
        .map(|id| capture(id.as_str(), subject, &cid, &marked_image(id.as_str())))
        .collect();
    let r = store.insert_captures(batch, &roomy(), now).unwrap();
    assert!(r.iter().all(|x| *x == Inserted::Accepted), "{r:?}");
    ids
}

#[test]
fn store_is_send() {
    fn is_send<T: Send>() {}
    is_send::<Store>();
}

#[test]
fn migrations_are_idempotent_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path());
        s.add_consent(&consent("c1", "S-1", T0, T0 + DAY), T0, None)
            .unwrap();
    }
    for _ in 0..2 {
        let mut s = open(dir.path());
        assert_eq!(s.list_consents().unwrap().len(), 1);
        let v: u32 = s
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, schema::known_version());
        let mode: String = s
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sd: i64 = s
            .conn()
            .query_row("PRAGMA secure_delete", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sd, 1);
        assert!(s.audit_verify().unwrap().ok);
    }
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    raw(dir.path())
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = Store::open(dir.path(), key()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn wrong_storage_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let err = Store::open(dir.path(), DeviceKey::from_bytes([1u8; 32])).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
}

#[test]
fn database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    with_captures(&mut s, "S-1", 1, T0);
    for name in ["facegate.db", "facegate.db-wal"] {
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{name} mode {mode:o}");
    }
}

#[test]
fn storage_key_with_loose_permissions_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(crate::crypto::KEY_FILE_NAME);
    let k = DeviceKey::load_or_create(&path).unwrap();
    drop(Store::open(dir.path(), k).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = DeviceKey::load_or_create(&path).unwrap_err();
    assert!(err.to_string().contains("storage.key"), "{err}");
}

#[test]
fn consents_add_list_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let c1 = consent("c1", "S-1", T0, T0 + DAY);
    assert_eq!(s.add_consent(&c1, T0, None).unwrap(), AddConsent::Added);
    assert_eq!(
        s.add_consent(&c1, T0, None).unwrap(),
        AddConsent::AlreadyKnown
    );
    s.add_consent(&consent("c2", "S-2", T0 - 5, T0 + 10), T0, None)
        .unwrap();
    assert_eq!(s.consents_for(&sid("S-1")).unwrap(), vec![c1.clone()]);
    assert!(s.consents_for(&sid("S-3")).unwrap().is_empty());
    let all: Vec<String> = s
        .list_consents()
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(all, ["c2", "c1"]);
    assert_eq!(s.active_consent_count(T0).unwrap(), 2);
    assert_eq!(s.active_consent_count(T0 + 10).unwrap(), 1);
    assert_eq!(kinds(&mut s), [kind::CONSENT_ADDED, kind::CONSENT_ADDED]);
    // Audit rows carry salted pseudonyms, never plain subject ids.
    let tail = s.audit_tail(10).unwrap();
    assert_eq!(tail[0].subject_ref, s.audit_ref(&sid("S-1")).unwrap());
    assert_ne!(tail[0].subject_ref, tail[1].subject_ref);
    assert_ne!(
        tail[0].subject_ref.as_deref(),
        Some(s.subject_ref(&sid("S-1")).as_str())
    );
    assert!(!serde_json::to_string(&tail).unwrap().contains("S-1"));
}

#[test]
fn consent_ids_are_unique_per_key_and_a_reused_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let c1 = consent("c1", "S-1", T0, T0 + DAY);
    assert_eq!(s.add_consent(&c1, T0, None).unwrap(), AddConsent::Added);
    // The same token again: harmless.
    assert_eq!(
        s.add_consent(&c1, T0 + 1, None).unwrap(),
        AddConsent::AlreadyKnown
    );
    // The same key's id for another subject, or another token for the same
    // subject: refused, the stored consent kept.
    for other in [
        consent("c1", "S-2", T0, T0 + DAY),
        consent("c1", "S-1", T0, T0 + 2 * DAY),
    ] {
        let err = s.add_consent(&other, T0, None).unwrap_err();
        assert!(
            matches!(&err, StoreError::ConsentIdReused { consent_id, kid }
                if consent_id == "c1" && kid == "consent-2026"),
            "{err}"
        );
    }
    assert_eq!(s.list_consents().unwrap(), vec![c1.clone()]);
    assert!(s.consents_for(&sid("S-2")).unwrap().is_empty());
    // Another key may use the same id.
    let other_kid = Consent {
        kid: "consent-2027".into(),
        subject: sid("S-2"),
        ..c1.clone()
    };
    assert_eq!(
        s.add_consent(&other_kid, T0, None).unwrap(),
        AddConsent::Added
    );
    assert_eq!(s.list_consents().unwrap().len(), 2);
    let k = kinds(&mut s);
    assert_eq!(
        k.iter().filter(|k| *k == kind::CONSENT_REFUSED).count(),
        2,
        "{k:?}"
    );
    // Expiry deletes each (kid, id) on its own.
    let mut keep = |outcome: Result<&AddConsent, &StoreError>| match outcome {
        Ok(_) => "added".to_string(),
        Err(e) => format!("refused: {e}"),
    };
    let cmd = Jti::from("cmd-reuse");
    let err = s.add_consent(
        &consent("c1", "S-3", T0, T0 + DAY),
        T0,
        Some(stamp(&cmd, "consent.grant", &mut keep)),
    );
    assert!(matches!(err, Err(StoreError::ConsentIdReused { .. })));
    assert!(
        s.command_seen(&cmd).unwrap(),
        "a refused grant burns its jti"
    );
    assert!(s.audit_verify().unwrap().ok);
}

#[test]
fn the_consent_key_migration_keeps_a_version_2_database_working() {
    let dir = tempfile::tempdir().unwrap();
    let c1 = consent("c1", "S-1", T0, T0 + DAY);
    let c2 = consent("c2", "S-2", T0 - 5, T0 + DAY);
    {
        let mut s = open(dir.path());
        s.add_consent(&c1, T0, None).unwrap();
        s.add_consent(&c2, T0, None).unwrap();
    }
    // Put the consents table back into its version 1/2 layout (taken from
    // the released step itself), rows kept, drop the tables of later steps,
    // and set the version back to 2.
    let v1 = schema::steps()[0];
    let start = v1.find("CREATE TABLE consents (").unwrap();
    let end = start + v1[start..].find(");").unwrap() + 2;
    let old_table = &v1[start..end];
    assert!(
        old_table.contains("id          TEXT PRIMARY KEY"),
        "{old_table}"
    );
    {
        let conn = raw(dir.path());
        conn.execute_batch(&format!(
            "BEGIN;
             ALTER TABLE consents RENAME TO consents_new;
             {old_table}
             INSERT INTO consents SELECT * FROM consents_new;
             DROP TABLE consents_new;
             CREATE INDEX consents_by_subject ON consents(subject_ref);
             CREATE INDEX consents_by_expiry ON consents(expires_at);
             DROP TABLE audit_salts;
             DROP TABLE audit_checkpoint;
             DROP TABLE capture_parts;
             DROP INDEX captures_quarantined;
             DROP INDEX captures_attempted;
             ALTER TABLE captures DROP COLUMN attempts;
             ALTER TABLE captures DROP COLUMN quarantined_at;
             PRAGMA user_version = 2;
             COMMIT;"
        ))
        .unwrap();
        let pk: String = conn
            .query_row(
                "SELECT group_concat(name) FROM pragma_table_info('consents') WHERE pk > 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(pk, "id");
    }
    let mut s = open(dir.path());
    let v: u32 = s
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, schema::known_version());
    assert_eq!(s.list_consents().unwrap(), vec![c2.clone(), c1.clone()]);
    assert!(matches!(
        s.decide(&sid("S-1"), &trust(), &me(), T0).unwrap(),
        crate::gate::Decision::Accept { .. }
    ));
    assert_eq!(
        s.add_consent(&c1, T0, None).unwrap(),
        AddConsent::AlreadyKnown
    );
    assert!(matches!(
        s.add_consent(&consent("c1", "S-9", T0, T0 + DAY), T0, None),
        Err(StoreError::ConsentIdReused { .. })
    ));
    let other_kid = Consent {
        kid: "consent-2027".into(),
        ..c2.clone()
    };
    assert_eq!(
        s.add_consent(&other_kid, T0, None).unwrap(),
        AddConsent::Added
    );
    assert_eq!(
        s.sweep_consents(&trust(), &me(), T0 + DAY).unwrap().len(),
        0
    );
    assert!(s.list_consents().unwrap().is_empty());
    assert!(s.audit_verify().unwrap().ok);
}

#[test]
fn consent_at_or_before_tombstone_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.revoke(&sid("S-1"), T0, T0, None).unwrap();
    assert_eq!(s.revoked_before(&sid("S-1")).unwrap(), Some(T0));
    assert_eq!(s.revoked_before(&sid("S-2")).unwrap(), None);
    for iat in [T0 - 100, T0] {
        let err = s
            .add_consent(
                &consent(&format!("old{iat}"), "S-1", iat, T0 + DAY),
                T0,
                None,
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Revoked {
                    revoked_before: T0,
                    ..
                }
            ),
            "{err}"
        );
    }
    assert_eq!(
        s.add_consent(&consent("new", "S-1", T0 + 1, T0 + DAY), T0, None)
            .unwrap(),
        AddConsent::Added
    );
    // Another subject is unaffected.
    s.add_consent(&consent("other", "S-2", T0 - 100, T0 + DAY), T0, None)
        .unwrap();
    let k = kinds(&mut s);
    assert_eq!(
        k.iter().filter(|k| *k == kind::CONSENT_REFUSED).count(),
        2,
        "{k:?}"
    );
    assert!(s.audit_verify().unwrap().ok);
}

#[test]
fn revoke_removes_older_consents_keeps_later_and_never_lowers_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.add_consent(&consent("a", "S-1", T0 - 20, T0 + DAY), T0, None)
        .unwrap();
    s.add_consent(&consent("b", "S-1", T0 - 10, T0 + DAY), T0, None)
        .unwrap();
    s.add_consent(&consent("c", "S-1", T0 + 10, T0 + DAY), T0 + 10, None)
        .unwrap();
    s.add_consent(&consent("x", "S-2", T0 - 20, T0 + DAY), T0, None)
        .unwrap();
    let r = s.revoke(&sid("S-1"), T0 - 10, T0 + 20, None).unwrap();
    assert_eq!(r.consents_removed, 2);
    assert_eq!(r.revoked_before, T0 - 10);
    let left: Vec<String> = s
        .consents_for(&sid("S-1"))
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, ["c"]);
    assert_eq!(s.consents_for(&sid("S-2")).unwrap().len(), 1);
    // An older (replayed) revocation does not lower the tombstone or touch "c".
    let r = s.revoke(&sid("S-1"), T0 - 100, T0 + 30, None).unwrap();
    assert_eq!(r.consents_removed, 0);
    assert_eq!(r.revoked_before, T0 - 10);
    assert_eq!(s.revoked_before(&sid("S-1")).unwrap(), Some(T0 - 10));
    assert_eq!(s.consents_for(&sid("S-1")).unwrap().len(), 1);
}

#[test]
fn images_are_never_stored_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    with_captures(&mut s, "S-1", 3, T0);
    assert_eq!(s.pending(10, &[]).unwrap().len(), 3);
    let files = raw_files(dir.path());
    assert!(files.len() > 4096);
    assert!(!contains(&files, b"PIXELS<"));
    assert!(!contains(&files, &[0x11; 64]));
    assert!(!contains(&files, &[0x22; 64]));
}

#[test]
fn revoke_purges_and_leaves_no_trace_in_db_or_wal() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let subject = "SUBJ-7f3a9c-unique";
    let marker = "MARKER-d41d8cd98f00b204";
    s.add_consent(&consent("cons-1", subject, T0 - 10, T0 + DAY), T0, None)
        .unwrap();
    let mut img = marked_image(marker);
    img.extend_from_slice(&[0x33; 5000]); // spills into an overflow page
    s.insert_captures(
        vec![
            capture("cap-a", subject, "cons-1", &img),
            capture("cap-b", subject, "cons-1", &img),
        ],
        &roomy(),
        T0,
    )
    .unwrap();
    with_captures(&mut s, "S-keep", 2, T0);
    let sealed: Vec<u8> = s
        .conn()
        .query_row(
            "SELECT image FROM captures WHERE capture_id='cap-a'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let wrapped: Vec<u8> = s
        .conn()
        .query_row(
            "SELECT wrapped FROM data_keys WHERE subject_ref = ?1",
            [&s.keys.pseudonyms.pseudonym(subject)[..]],
            |r| r.get(0),
        )
        .unwrap();
    let ct_probe = &sealed[100..164];
    let before = raw_files(dir.path());
    // Negative controls: the search does find what is there.
    assert!(
        contains(&before, subject.as_bytes()),
        "consent row holds the subject"
    );
    assert!(contains(&before, ct_probe), "ciphertext is stored");
    assert!(contains(&before, &wrapped), "wrapped key is stored");
    assert!(!contains(&before, marker.as_bytes()), "image is encrypted");

    let r = s.revoke(&sid(subject), T0 + 5, T0 + 10, None).unwrap();
    assert_eq!(r.purged, ["cap-a", "cap-b"]);
    assert_eq!(r.consents_removed, 1);

    let after = raw_files(dir.path());
    assert!(
        !contains(&after, subject.as_bytes()),
        "plain subject id survived"
    );
    assert!(!contains(&after, marker.as_bytes()));
    assert!(!contains(&after, ct_probe), "ciphertext survived");
    assert!(!contains(&after, &wrapped), "wrapped data key survived");
    let wal_len = std::fs::metadata(dir.path().join("facegate.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(wal_len, 0, "WAL truncated");
    // Other subjects untouched.
    assert_eq!(s.pending(10, &[]).unwrap().len(), 2);
    assert_eq!(s.counters().unwrap()["purged"], 2);
    let k = kinds(&mut s);
    assert!(k.contains(&kind::CONSENT_REVOKED.to_string()));
    assert!(k.contains(&kind::CAPTURE_PURGED.to_string()));
    assert!(s.audit_verify().unwrap().ok);
}

#[test]
fn pending_is_ordered_decrypted_and_honours_exclude() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let a = with_captures(&mut s, "S-1", 3, T0);
    let b = with_captures(&mut s, "S-2", 2, T0 + 1);
    let p = s.pending(10, &[]).unwrap();
    let ids: Vec<CaptureId> = p.iter().map(|c| c.capture_id.clone()).collect();
    assert_eq!(ids, [&a[..], &b[..]].concat());
    let first = &p[0];
    assert_eq!(first.subject, "S-1");
    assert_eq!(first.consent_id, "consent-S-1");
    assert_eq!(*first.image, marked_image(a[0].as_str()));
    // Every field as stored (`testing::capture`).
    let stored = capture(
        a[0].as_str(),
        "S-1",
        "consent-S-1",
        &marked_image(a[0].as_str()),
    );
    assert_eq!(first.sha256, stored.sha256);
    assert_eq!(first.camera, stored.camera);
    assert_eq!(first.content_type, stored.content_type);
    assert_eq!(first.captured_at, stored.captured_at);
    assert_eq!(first.queued_at, T0);
    let dbg = format!("{first:?}");
    assert!(
        !dbg.contains("PIXELS") && !dbg.contains("subject") && dbg.contains("image_len"),
        "{dbg}"
    );
    assert_eq!(p[3].queued_at, T0 + 1);

    let excl = vec![a[0].clone(), a[2].clone()];
    let ids = pending_ids(&mut s, 2, &excl);
    assert_eq!(ids, [a[1].clone(), b[0].clone()]);
    assert!(s.pending(0, &[]).unwrap().is_empty());
}

#[test]
fn ack_deletes_counts_and_destroys_unused_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let ids = with_captures(&mut s, "S-1", 2, T0);
    assert!(s.ack(&ids[0], T0 + 1).unwrap());
    assert!(!s.ack(&ids[0], T0 + 1).unwrap());
    assert!(!s.ack(&CaptureId::from("unknown"), T0 + 1).unwrap());
    let keys = |s: &Store| -> i64 {
        s.conn()
            .query_row("SELECT COUNT(*) FROM data_keys", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(keys(&s), 1);
    assert!(s.ack(&ids[1], T0 + 1).unwrap());
    assert_eq!(keys(&s), 0);
    // Zeroing stays on for the connection (ARCHITECTURE I4).
    let sd: i64 = s
        .conn()
        .query_row("PRAGMA secure_delete", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sd, 1);
    let c = s.counters().unwrap();
    assert_eq!((c["accepted"], c["uploaded"]), (2, 2));
    assert_eq!(s.outbox_stats(T0 + 1).unwrap(), OutboxStats::default());
}

/// Offset in `haystack` of any `len`-byte window of `needle`, if one is there.
fn find_any_window(haystack: &[u8], needle: &[u8], len: usize) -> Option<usize> {
    let windows: std::collections::HashSet<&[u8]> = needle.windows(len).collect();
    haystack.windows(len).position(|w| windows.contains(w))
}

/// Fails on the old code: with `store.writer_zeroing(false)` in `outbox::ack`
/// the checkpoint copies the unzeroed freed pages into `facegate.db` (found at
/// "after the truncation"), and without the scheduled truncation the WAL keeps
/// the pages from before the delete.
#[test]
fn uploaded_captures_leave_no_ciphertext_once_the_wal_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    // Opening never truncated anything: the first call does.
    assert!(s.truncate_wal_after_deletes().unwrap());
    assert!(
        !s.truncate_wal_after_deletes().unwrap(),
        "nothing deleted since"
    );
    let last = with_captures(&mut s, "S-last", 1, T0);
    let kept = with_captures(&mut s, "S-kept", 2, T0);
    // The sealed image; windows of the sealed metadata are searched too.
    let sealed = |s: &Store, id: &CaptureId| -> Vec<u8> {
        let (meta, image): (Vec<u8>, Vec<u8>) = s
            .conn()
            .query_row(
                "SELECT meta, image FROM captures WHERE capture_id = ?1",
                [id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        [image, meta].concat()
    };
    let uploaded = [sealed(&s, &last[0]), sealed(&s, &kept[0])];
    let still_queued = sealed(&s, &kept[1]);
    let wrapped: Vec<u8> = s
        .conn()
        .query_row(
            "SELECT wrapped FROM data_keys WHERE subject_ref = ?1",
            [&s.keys.pseudonyms.pseudonym("S-last")[..]],
            |r| r.get(0),
        )
        .unwrap();
    let files = raw_files(dir.path());
    for ct in uploaded.iter().chain([&still_queued, &wrapped]) {
        assert!(find_any_window(&files, ct, 32).is_some(), "control: stored");
    }

    assert_eq!(
        s.ack_many(&[last[0].clone(), kept[0].clone()], T0 + 1)
            .unwrap(),
        2
    );
    // The WAL still holds the pages from before the delete: truncating is
    // what makes the deleted rows go.
    let files = raw_files(dir.path());
    assert!(
        find_any_window(&files, &uploaded[0], 32).is_some(),
        "control: in the WAL"
    );

    assert!(s.truncate_wal_after_deletes().unwrap());
    assert!(
        !s.truncate_wal_after_deletes().unwrap(),
        "nothing deleted since"
    );
    let files = raw_files(dir.path());
    for (what, ct) in [
        ("uploaded capture", &uploaded[0]),
        ("uploaded capture", &uploaded[1]),
        ("data key", &wrapped),
    ] {
        if let Some(at) = find_any_window(&files, ct, 32) {
            panic!("after the truncation: {what} bytes found at offset {at} of the database files");
        }
    }
    let wal_len = std::fs::metadata(dir.path().join("facegate.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(wal_len, 0, "WAL truncated");
    // What is still queued is untouched and still readable.
    assert!(find_any_window(&files, &still_queued, 32).is_some());
    assert_eq!(pending_ids(&mut s, 10, &[]), [kept[1].clone()]);
}

/// One acknowledgement of several captures on the ack connection, one of them
/// without a key row of its own (stored before capture keys, not rekeyed
/// yet), in any order and with an id no longer queued: every queued one is
/// deleted by the batch's two statements, audited and counted once, the
/// subject's data key stays for the capture still queued, and zeroing is on
/// again (ARCHITECTURE I4).
#[test]
fn a_batch_of_acknowledged_captures_with_and_without_keys_goes_in_one_delete() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let ids = with_captures(&mut s, "S-mix", 4, T0);
    outbox::make_legacy(&mut s, &ids[1]);
    let count =
        |s: &Store, sql: &str| -> i64 { s.conn().query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count(&s, "SELECT COUNT(*) FROM capture_keys"), 3);

    let batch = [
        ids[2].clone(),
        CaptureId::from("unknown"),
        ids[1].clone(),
        ids[0].clone(),
    ];
    // On the ack connection, as after PUBACKs: the batch's two statements.
    let mut acks = s.second_connection().unwrap();
    // Its statement journals stay in memory (2: MEMORY), never in a file.
    assert_eq!(count(&acks, "PRAGMA temp_store"), 2);
    assert_eq!(acks.ack_uploads(&batch, &[], T0 + 1).unwrap().deleted, 3);
    assert_eq!(count(&s, "SELECT COUNT(*) FROM captures"), 1);
    assert_eq!(pending_ids(&mut s, 10, &[]), [ids[3].clone()]);
    assert_eq!(count(&s, "SELECT COUNT(*) FROM capture_keys"), 1);
    assert_eq!(
        count(&s, "SELECT COUNT(*) FROM data_keys"),
        1,
        "one capture left"
    );
    assert_eq!(
        count(
            &s,
            "SELECT COUNT(*) FROM audit WHERE kind = 'capture.uploaded'"
        ),
        3
    );
    assert_eq!(s.counters().unwrap()["uploaded"], 3);
    assert_eq!(count(&acks, "PRAGMA secure_delete"), 1);
    // Acknowledged again (a PUBACK after a reconnect): nothing more.
    assert_eq!(acks.ack_uploads(&batch, &[], T0 + 2).unwrap().deleted, 0);
    assert_eq!(s.ack_many(&batch, T0 + 2).unwrap(), 0);
    assert_eq!(s.counters().unwrap()["uploaded"], 3);
}

/// A batch of PUBACKs larger than one delete statement takes
/// (`outbox::DELETE_STATEMENT_ROWS`) is deleted whole, in one transaction.
#[test]
fn a_batch_larger_than_one_delete_statement_is_deleted_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let n = 2 * outbox::DELETE_STATEMENT_ROWS + 5;
    let ids = with_captures(&mut s, "S-many", n + 1, T0);
    let mut acks = s.second_connection().unwrap();
    assert_eq!(acks.ack_uploads(&ids[..n], &[], T0 + 1).unwrap().deleted, n);
    let count = |sql: &str| -> i64 { s.conn().query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT COUNT(*) FROM captures"), 1);
    assert_eq!(count("SELECT COUNT(*) FROM capture_keys"), 1);
    assert_eq!(
        count("SELECT COUNT(*) FROM audit WHERE kind = 'capture.uploaded'"),
        n as i64
    );
    assert_eq!(pending_ids(&mut s, 10, &[]), [ids[n].clone()]);
}

/// Deletes after PUBACK run on the second connection: the first sees them,
/// knows the WAL needs truncating, and its truncation leaves no ciphertext
/// of them in the files, also while the second keeps deleting from another
/// thread (ARCHITECTURE I4).
#[test]
fn deletes_on_the_second_connection_are_truncated_by_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    assert!(s.truncate_wal_after_deletes().unwrap());
    let ids = with_captures(&mut s, "S-1", 40, T0);
    let sealed: Vec<u8> = s
        .conn()
        .query_row(
            "SELECT image FROM captures WHERE capture_id = ?1",
            [ids[0].as_str()],
            |r| r.get(0),
        )
        .unwrap();
    let mut acks = s.second_connection().unwrap();
    let sd: i64 = acks
        .conn()
        .query_row("PRAGMA secure_delete", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sd, 1, "zeroing on the second connection too");
    assert!(
        !s.truncate_wal_after_deletes().unwrap(),
        "nothing deleted yet"
    );
    let acked = acks.ack_uploads(&ids[..1], &[], T0 + 1).unwrap();
    assert_eq!(acked.deleted, 1);
    assert_eq!(pending_ids(&mut s, 100, &[]), ids[1..].to_vec());
    assert!(s.truncate_wal_after_deletes().unwrap(), "the first knows");
    let files = raw_files(dir.path());
    assert!(
        find_any_window(&files, &sealed, 32).is_none(),
        "no ciphertext left"
    );
    // The rest deleted one at a time on another thread while the first
    // truncates and gives pages back: every call returns, nothing is lost.
    let rest = ids[1..].to_vec();
    let worker = std::thread::spawn(move || {
        for id in rest {
            assert_eq!(acks.ack_uploads(&[id], &[], T0 + 2).unwrap().deleted, 1);
        }
    });
    while !worker.is_finished() {
        s.truncate_wal_after_deletes().unwrap();
        s.vacuum_free_pages().unwrap();
    }
    worker.join().unwrap();
    s.truncate_wal_after_deletes().unwrap();
    assert!(pending_ids(&mut s, 100, &[]).is_empty());
    assert_eq!(s.counters().unwrap()["uploaded"], 40);
    assert!(s.audit_verify().unwrap().ok, "one audit chain");
}

#[test]
fn decide_applies_the_rule_to_stored_consents_and_tombstones() {
    use crate::gate::{Decision, DropReason};
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.add_consent(&consent("ok", "S-1", T0 - 10, T0 + 100), T0, None)
        .unwrap();
    let mut no_scope = consent("noscope", "S-2", T0 - 10, T0 + 100);
    no_scope.scopes = vec!["capture:store".into(), "CAPTURE:UPLOAD".into()];
    s.add_consent(&no_scope, T0, None).unwrap();
    s.add_consent(&consent("revoked", "S-3", T0 - 10, T0 + 100), T0, None)
        .unwrap();
    s.revoke(&sid("S-3"), T0 - 10, T0, None).unwrap();
    // The tombstone outlives the deleted consent; a newer consent counts.
    s.add_consent(&consent("after", "S-4", T0 - 5, T0 + 100), T0, None)
        .unwrap();
    s.revoke(&sid("S-4"), T0 - 10, T0, None).unwrap();
    let accept = |subject: &str, id: &str| Decision::Accept {
        subject: sid(subject),
        consent_id: id.into(),
    };
    let cases = [
        ("S-1", T0, trust(), accept("S-1", "ok")),
        ("S-1", T0 + 99, trust(), accept("S-1", "ok")),
        (
            "S-1",
            T0 + 100,
            trust(),
            Decision::Drop(DropReason::Expired),
        ),
        ("S-1", T0, vec![], Decision::Drop(DropReason::KeyNotTrusted)),
        (
            "S-1",
            T0,
            other_key(),
            Decision::Drop(DropReason::KeyNotTrusted),
        ),
        ("S-2", T0, trust(), Decision::Drop(DropReason::MissingScope)),
        ("S-3", T0, trust(), Decision::Drop(DropReason::NoConsent)),
        ("S-4", T0, trust(), accept("S-4", "after")),
        ("S-5", T0, trust(), Decision::Drop(DropReason::NoConsent)),
    ];
    for (subject, now, trust, want) in cases {
        let got = s.decide(&sid(subject), &trust, &me(), now).unwrap();
        assert_eq!(got, want, "{subject} at {now} with {} keys", trust.len());
    }
    // The tombstone is part of the rule's input: a consent under it is refused
    // as revoked (revoke deletes such consents; here the tombstone is written
    // directly to show that the rule, not only the deletion, refuses it).
    s.conn()
        .execute(
            "INSERT INTO tombstones (subject_ref, revoked_before, updated_at) VALUES (?1, ?2, ?2)",
            rusqlite::params![&s.keys.pseudonyms.pseudonym("S-1")[..], T0 - 10],
        )
        .unwrap();
    assert_eq!(
        s.decide(&sid("S-1"), &trust(), &me(), T0).unwrap(),
        Decision::Drop(DropReason::Revoked)
    );
}

/// Every step of a store's life that changes what the rule reads, with the
/// remembered answers of `Store::decide` checked against fresh ones for
/// several subjects and times after each.
#[test]
fn remembered_decisions_are_always_the_fresh_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let subjects = ["S-1", "S-2", "S-3"];
    let times = [T0 - 50, T0, T0 + 49, T0 + 50, T0 + 99, T0 + 100, T0 + 500];
    let mut other_me = me();
    other_me.site_id = "elsewhere".into();
    let check = |s: &mut Store, trust: &[TrustedKey], me: &Identity, step: &str| {
        // Twice, and with the times forwards then backwards (a clock set
        // back): the second pass is answered from the memo.
        for pass in 0..2 {
            let order: Vec<i64> = if pass == 0 {
                times.to_vec()
            } else {
                times.iter().rev().copied().collect()
            };
            for now in order {
                for subject in subjects {
                    let got = s.decide(&sid(subject), trust, me, now).unwrap();
                    let fresh = consents::decide_fresh(s, &sid(subject), trust, me, now)
                        .unwrap()
                        .0;
                    assert_eq!(got, fresh, "{step}: {subject} at {now}, pass {pass}");
                }
            }
        }
    };
    check(&mut s, &trust(), &me(), "empty");
    s.add_consent(&consent("a", "S-1", T0 - 10, T0 + 50), T0, None)
        .unwrap();
    check(&mut s, &trust(), &me(), "one consent");
    s.add_consent(&consent("b", "S-1", T0 - 9, T0 + 100), T0, None)
        .unwrap();
    s.add_consent(&consent("c", "S-2", T0 - 9, T0 + 100), T0, None)
        .unwrap();
    check(&mut s, &trust(), &me(), "more consents");
    check(&mut s, &[], &me(), "no trusted key");
    check(&mut s, &other_key(), &me(), "another key");
    check(&mut s, &trust(), &other_me, "another identity");
    s.revoke(&sid("S-2"), T0 - 9, T0, None).unwrap();
    check(&mut s, &trust(), &me(), "revoked");
    // Written behind the store's back, on the same connection: still seen.
    s.conn()
        .execute(
            "UPDATE consents SET expires_at = ?1 WHERE id = 'b'",
            [T0 + 60],
        )
        .unwrap();
    check(&mut s, &trust(), &me(), "expiry changed in SQL");
    s.conn().execute("DELETE FROM tombstones", []).unwrap();
    check(&mut s, &trust(), &me(), "tombstone deleted in SQL");
    // A transaction that is rolled back: answers taken inside it are not
    // remembered, and after it the rule reads what is committed.
    s.conn().execute_batch("BEGIN").unwrap();
    s.conn()
        .execute("DELETE FROM consents WHERE subject = 'S-1'", [])
        .unwrap();
    check(&mut s, &trust(), &me(), "inside a transaction");
    s.conn().execute_batch("ROLLBACK").unwrap();
    check(&mut s, &trust(), &me(), "after the rollback");
    assert!(matches!(
        s.decide(&sid("S-1"), &trust(), &me(), T0).unwrap(),
        crate::gate::Decision::Accept { .. }
    ));
    // The second connection cannot write consents or tombstones, so every
    // such write is counted where the memo looks.
    let acks = s.second_connection().unwrap();
    for sql in [
        "DELETE FROM consents",
        "UPDATE consents SET expires_at = 0",
        "INSERT INTO tombstones VALUES (x'00', 0, 0)",
    ] {
        let e = acks.conn().execute(sql, []).unwrap_err().to_string();
        assert!(e.contains("main connection only"), "{sql}: {e}");
    }
    check(
        &mut s,
        &trust(),
        &me(),
        "after the second connection's attempts",
    );
}

#[test]
fn insert_stores_what_the_gate_accepted() {
    // The gate's decision is taken by the caller under the same lock as the
    // insert (intake); the insert itself encrypts, counts and audits.
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.add_consent(&consent("ok", "S-1", T0 - 10, T0 + 100), T0, None)
        .unwrap();
    let img = marked_image("x");
    let r = s
        .insert_captures(
            vec![
                capture("1", "S-1", "ok", &img),
                capture("2", "S-1", "ok", &img),
                capture("1", "S-1", "ok", &img),
            ],
            &roomy(),
            T0,
        )
        .unwrap();
    assert_eq!(
        r,
        [Inserted::Accepted, Inserted::Accepted, Inserted::Duplicate]
    );
    let c = s.counters().unwrap();
    assert_eq!((c["accepted"], c["dropped_no_consent"]), (2, 0));
    assert_eq!(
        kinds(&mut s)
            .iter()
            .filter(|k| *k == kind::CAPTURE_ACCEPTED)
            .count(),
        2
    );
    assert!(s.audit_verify().unwrap().ok);
}

#[test]
fn quota_reject_new() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.add_consent(&consent("c", "S-1", T0 - 10, T0 + DAY), T0, None)
        .unwrap();
    let img = vec![7u8; 1000];
    s.insert_captures(vec![capture("a", "S-1", "c", &img)], &roomy(), T0)
        .unwrap();
    let one = s.outbox_stats(T0).unwrap().bytes;
    let p = policy(one * 2 + 10, WhenFull::RejectNew);
    let r = s
        .insert_captures(
            vec![
                capture("b", "S-1", "c", &img),
                capture("c", "S-1", "c", &img),
            ],
            &p,
            T0,
        )
        .unwrap();
    assert_eq!(r, [Inserted::Accepted, Inserted::QuotaRejected]);
    let ids = pending_ids(&mut s, 10, &[]);
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(s.counters().unwrap()["rejected_quota"], 1);
    assert!(kinds(&mut s).contains(&kind::CAPTURE_REJECTED.to_string()));
}

#[test]
fn quota_drop_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.add_consent(&consent("c", "S-1", T0 - 10, T0 + DAY), T0, None)
        .unwrap();
    s.add_consent(&consent("d", "S-2", T0 - 10, T0 + DAY), T0, None)
        .unwrap();
    let img = vec![7u8; 1000];
    s.insert_captures(
        vec![
            capture("a", "S-2", "d", &img),
            capture("b", "S-1", "c", &img),
        ],
        &roomy(),
        T0,
    )
    .unwrap();
    let one = s.outbox_stats(T0).unwrap().bytes / 2;
    let p = policy(one * 2 + 10, WhenFull::DropOldest);
    let r = s
        .insert_captures(
            vec![
                capture("c", "S-1", "c", &img),
                capture("d", "S-1", "c", &img),
            ],
            &p,
            T0,
        )
        .unwrap();
    assert_eq!(r, [Inserted::Accepted, Inserted::Accepted]);
    let ids = pending_ids(&mut s, 10, &[]);
    assert_eq!(ids, ["c", "d"]);
    assert_eq!(s.counters().unwrap()["purged"], 2);
    // S-2 lost its last capture: its key is gone.
    let n: i64 = s
        .conn()
        .query_row("SELECT COUNT(*) FROM data_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    // Too big to ever fit: rejected without dropping anything.
    let huge = vec![1u8; (one * 3) as usize];
    let r = s
        .insert_captures(vec![capture("e", "S-1", "c", &huge)], &p, T0)
        .unwrap();
    assert_eq!(r, [Inserted::QuotaRejected]);
    assert_eq!(s.outbox_stats(T0).unwrap().captures, 2);
    assert!(s.audit_verify().unwrap().ok);
}

#[test]
fn retention_purges_old_captures() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let old = with_captures(&mut s, "S-1", 2, T0);
    let new = with_captures(&mut s, "S-2", 1, T0 + 50);
    let ret = Duration::from_secs(100);
    assert!(s.enforce_retention(T0 + 100, ret).unwrap().is_empty()); // exactly 100 s old: kept
    assert_eq!(s.enforce_retention(T0 + 101, ret).unwrap(), old);
    assert_eq!(s.outbox_stats(T0 + 101).unwrap().captures, 1);
    assert_eq!(s.outbox_stats(T0 + 101).unwrap().oldest_age_s, 51);
    assert_eq!(s.enforce_retention(T0 + 151, ret).unwrap(), new);
    assert!(kinds(&mut s).contains(&kind::CAPTURE_EXPIRED.to_string()));
    assert_eq!(s.counters().unwrap()["purged"], 3);
}

/// The `capture.purged` audit details, oldest first.
fn purge_details(store: &mut Store) -> Vec<serde_json::Value> {
    store
        .audit_tail(1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind::CAPTURE_PURGED)
        .map(|e| e.detail)
        .collect()
}

#[test]
fn sweep_deletes_expired_consents_and_purges_uncovered_subjects() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let a = with_captures(&mut s, "S-1", 2, T0); // consent expires T0 + DAY
    with_captures(&mut s, "S-2", 1, T0); // also T0 + DAY, but gets a later one
    s.add_consent(&consent("later", "S-2", T0, T0 + 2 * DAY), T0, None)
        .unwrap();
    // A subject with only an expired consent and nothing queued loses the consent.
    s.add_consent(&consent("idle", "S-3", T0, T0 + DAY), T0, None)
        .unwrap();
    assert!(s
        .sweep_consents(&trust(), &me(), T0 + DAY - 1)
        .unwrap()
        .is_empty());
    assert_eq!(s.list_consents().unwrap().len(), 4, "nothing expired yet");
    let swept = s.sweep_consents(&trust(), &me(), T0 + DAY).unwrap();
    assert_eq!(
        swept,
        vec![Swept {
            subject_ref: s.subject_ref(&sid("S-1")),
            reason: PurgeReason::ConsentExpired,
            purged: a.clone(),
        }]
    );
    assert!(s.consents_for(&sid("S-1")).unwrap().is_empty());
    assert!(s.consents_for(&sid("S-3")).unwrap().is_empty());
    let left: Vec<String> = s
        .consents_for(&sid("S-2"))
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, ["later"]);
    assert_eq!(s.pending(10, &[]).unwrap().len(), 1);
    let k = kinds(&mut s);
    assert_eq!(k.iter().filter(|k| *k == kind::CONSENT_EXPIRED).count(), 3);
    let purged = purge_details(&mut s);
    assert_eq!(purged.len(), 1);
    assert_eq!(purged[0]["reason"], "consent_expired");
    assert_eq!(purged[0]["capture_ids"], json!(a));
    assert_eq!(s.counters().unwrap()["purged"], 2);
    // Nothing left to do: a second sweep changes nothing.
    assert!(s
        .sweep_consents(&trust(), &me(), T0 + DAY)
        .unwrap()
        .is_empty());
    assert!(s.audit_verify().unwrap().ok);
}

#[test]
fn sweep_purges_subjects_whose_trust_key_was_removed_or_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let a = with_captures(&mut s, "S-1", 2, T0);
    let b = with_captures(&mut s, "S-2", 1, T0);
    // Nothing is expired; with the keys unchanged the sweep keeps everything.
    assert!(s
        .sweep_consents(&trust(), &me(), T0 + 1)
        .unwrap()
        .is_empty());
    assert_eq!(s.outbox_stats(T0).unwrap().captures, 3);

    // The consent key is removed from the trusted keys (a SIGHUP reload):
    // the next sweep purges every subject it signed for, no broker involved.
    let swept = s.sweep_consents(&[], &me(), T0 + 2).unwrap();
    let mut want = vec![
        Swept {
            subject_ref: s.subject_ref(&sid("S-1")),
            reason: PurgeReason::ConsentInvalid,
            purged: a.clone(),
        },
        Swept {
            subject_ref: s.subject_ref(&sid("S-2")),
            reason: PurgeReason::ConsentInvalid,
            purged: b.clone(),
        },
    ];
    want.sort_by(|x, y| x.subject_ref.cmp(&y.subject_ref));
    assert_eq!(swept, want);
    assert_eq!(s.outbox_stats(T0).unwrap(), OutboxStats::default());
    let keys: i64 = s
        .conn()
        .query_row("SELECT COUNT(*) FROM data_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(keys, 0, "data keys destroyed");
    let purged = purge_details(&mut s);
    assert_eq!(purged.len(), 2);
    assert!(
        purged.iter().all(|d| d["reason"] == "consent_invalid"),
        "{purged:?}"
    );
    // The consents stay (a key put back makes them usable again); only the
    // captures, which may not wait for that, are gone.
    assert_eq!(s.list_consents().unwrap().len(), 2);

    // A key replaced under the same kid voids what the old key signed.
    let c = with_captures(&mut s, "S-3", 1, T0 + 3);
    let swept = s.sweep_consents(&other_key(), &me(), T0 + 4).unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].purged, c);
    assert_eq!(swept[0].reason, PurgeReason::ConsentInvalid);
    assert!(s.audit_verify().unwrap().ok);
}

#[test]
fn sweep_purges_captures_left_without_any_consent_or_under_a_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let a = with_captures(&mut s, "S-1", 1, T0);
    let b = with_captures(&mut s, "S-2", 1, T0);
    let c = with_captures(&mut s, "S-3", 1, T0);
    // Written behind the store's back: S-1's consent row gone, a tombstone
    // over S-2's consent. The rule refuses both; S-3 is untouched.
    s.conn()
        .execute("DELETE FROM consents WHERE id = 'consent-S-1'", [])
        .unwrap();
    s.conn()
        .execute(
            "INSERT INTO tombstones (subject_ref, revoked_before, updated_at) VALUES (?1, ?2, ?2)",
            rusqlite::params![&s.keys.pseudonyms.pseudonym("S-2")[..], T0],
        )
        .unwrap();
    let mut swept = s.sweep_consents(&trust(), &me(), T0 + 1).unwrap();
    swept.sort_by(|x, y| x.purged.cmp(&y.purged));
    let got: Vec<(Vec<CaptureId>, PurgeReason)> =
        swept.into_iter().map(|x| (x.purged, x.reason)).collect();
    assert_eq!(
        got,
        [
            (a, PurgeReason::ConsentInvalid),
            (b, PurgeReason::ConsentInvalid)
        ]
    );
    assert_eq!(pending_ids(&mut s, 10, &[]), c);
}

#[test]
fn sweep_keeps_a_subject_while_one_consent_allows_uploading() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    with_captures(&mut s, "S-1", 1, T0);
    // A second consent for another device: it does not help, the first one does.
    let mut elsewhere = consent("elsewhere", "S-1", T0, T0 + 2 * DAY);
    elsewhere.audience = vec!["hall".into()];
    s.add_consent(&elsewhere, T0, None).unwrap();
    assert!(s
        .sweep_consents(&trust(), &me(), T0 + 10)
        .unwrap()
        .is_empty());
    // Once the good one expires, the closest failure is the expiry.
    let swept = s.sweep_consents(&trust(), &me(), T0 + DAY).unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].reason, PurgeReason::ConsentExpired);
    // The consent for the other device has not expired and stays.
    let left: Vec<String> = s
        .list_consents()
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, ["elsewhere"]);
}

#[test]
fn purge_subject_and_all_keep_consents() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let a = with_captures(&mut s, "S-1", 2, T0);
    let b = with_captures(&mut s, "S-2", 2, T0);
    assert_eq!(
        s.purge_subject(&sid("S-1"), T0, PurgeReason::Local, None)
            .unwrap(),
        a
    );
    assert!(s
        .purge_subject(&sid("S-1"), T0, PurgeReason::Local, None)
        .unwrap()
        .is_empty());
    assert_eq!(s.list_consents().unwrap().len(), 2);
    assert_eq!(s.purge_all(T0, PurgeReason::Command, None).unwrap(), b);
    assert_eq!(s.outbox_stats(T0).unwrap(), OutboxStats::default());
    let n: i64 = s
        .conn()
        .query_row("SELECT COUNT(*) FROM data_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(s.list_consents().unwrap().len(), 2);
    // A new capture after a purge gets a fresh key and still decrypts.
    let r = s
        .insert_captures(
            vec![capture("z", "S-1", "consent-S-1", b"img")],
            &roomy(),
            T0,
        )
        .unwrap();
    assert_eq!(r, [Inserted::Accepted]);
    assert_eq!(s.pending(5, &[]).unwrap()[0].image.as_slice(), b"img");
}

#[test]
fn tampered_audit_row_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    with_captures(&mut s, "S-1", 4, T0); // 1 consent + 4 captures = 5 rows
    assert_eq!(s.audit_verify().unwrap().rows, 5);
    raw(dir.path())
        .execute(
            "UPDATE audit SET detail = replace(detail, 'S-1-cap-2', 'S-1-cap-9') WHERE seq = 4",
            [],
        )
        .unwrap();
    let r = s.audit_verify().unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad.map(|b| b.0), Some(4));
}

#[test]
fn deleted_audit_row_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    with_captures(&mut s, "S-1", 4, T0);
    raw(dir.path())
        .execute("DELETE FROM audit WHERE seq = 3", [])
        .unwrap();
    let r = s.audit_verify().unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad.map(|b| b.0), Some(4));
    // Renumbering to hide the gap breaks the prev link instead.
    raw(dir.path())
        .execute("UPDATE audit SET seq = seq - 1 WHERE seq > 3", [])
        .unwrap();
    let r = s.audit_verify().unwrap();
    assert_eq!(r.first_bad.map(|b| b.0), Some(3));
}

#[test]
fn everything_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ids;
    {
        let mut s = open(dir.path());
        ids = with_captures(&mut s, "S-1", 3, T0);
        s.revoke(&sid("S-9"), T0, T0, None).unwrap();
        s.record(
            kind::CAPTURE_REJECTED,
            None,
            json!({"reason": "not_an_image"}),
            Some(counter::REJECTED_BAD_INPUT),
            T0,
        )
        .unwrap();
        let mut keep = |_: Result<&(), &StoreError>| "{}".to_string();
        s.remember_command(stamp(&Jti::from("j1"), "status", &mut keep), T0)
            .unwrap();
    }
    let mut s = open(dir.path());
    let got = pending_ids(&mut s, 10, &[]);
    assert_eq!(got, ids);
    assert_eq!(s.revoked_before(&sid("S-9")).unwrap(), Some(T0));
    assert!(s.command_seen(&Jti::from("j1")).unwrap());
    let c = s.counters().unwrap();
    assert_eq!((c["accepted"], c["rejected_bad_input"]), (3, 1));
    let v = s.audit_verify().unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(s.audit_tail(1).unwrap()[0].kind, kind::COMMAND_APPLIED);
}

/// The stamp of command `jti` (`cmd`), keeping what `keep` makes.
fn stamp<'a, T>(
    jti: &'a Jti,
    cmd: &'a str,
    keep: &'a mut dyn FnMut(Result<&T, &StoreError>) -> String,
) -> CommandStamp<'a, T> {
    CommandStamp {
        jti,
        cmd,
        expires_at: T0 + 60,
        seq: None,
        reply: keep,
    }
}

#[test]
fn commands_commit_with_their_effect_and_are_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let ids = with_captures(&mut s, "S-1", 2, T0);
    let cmd_1 = Jti::from("cmd-1");
    assert!(!s.command_seen(&cmd_1).unwrap());
    let mut keep = |_: Result<&Vec<CaptureId>, &StoreError>| "{}".to_string();
    assert_eq!(
        s.purge_subject(
            &sid("S-1"),
            T0,
            PurgeReason::Command,
            Some(stamp(&cmd_1, "capture.purge", &mut keep))
        )
        .unwrap(),
        ids
    );
    assert!(s.command_seen(&cmd_1).unwrap());
    // Same jti again: refused and rolled back (the new capture survives).
    with_captures(&mut s, "S-2", 1, T0);
    let mut keep = |_: Result<&Revocation, &StoreError>| "{}".to_string();
    let again = stamp(&cmd_1, "consent.revoke", &mut keep);
    let err = s.revoke(&sid("S-2"), T0, T0, Some(again)).unwrap_err();
    assert!(matches!(err, StoreError::Replayed { .. }), "{err}");
    assert_eq!(s.pending(10, &[]).unwrap().len(), 1);
    assert_eq!(s.revoked_before(&sid("S-2")).unwrap(), None);
    let mut keep = |_: Result<&(), &StoreError>| "{}".to_string();
    assert!(matches!(
        s.remember_command(stamp(&cmd_1, "status", &mut keep), T0),
        Err(StoreError::Replayed { .. })
    ));
    // A grant refused by a tombstone still burns the jti, and keeps the
    // refusal as its reply.
    s.revoke(&sid("S-3"), T0, T0, None).unwrap();
    let cmd_2 = Jti::from("cmd-2");
    let mut keep = |outcome: Result<&AddConsent, &StoreError>| match outcome {
        Ok(_) => "added".to_string(),
        Err(e) => format!("refused: {e}"),
    };
    let err = s.add_consent(
        &consent("old", "S-3", T0 - 1, T0 + DAY),
        T0,
        Some(stamp(&cmd_2, "consent.grant", &mut keep)),
    );
    assert!(matches!(err, Err(StoreError::Revoked { .. })));
    assert!(s.command_seen(&cmd_2).unwrap());
    let kept = s.command_reply(&cmd_2).unwrap().unwrap();
    assert!(
        kept.starts_with("refused: consent old was issued"),
        "{kept}"
    );
    // Forgotten only a day after expiry.
    assert_eq!(s.forget_commands(T0 + 60 + DAY - 1).unwrap(), 0);
    assert_eq!(s.forget_commands(T0 + 60 + DAY).unwrap(), 2);
    assert!(!s.command_seen(&cmd_1).unwrap());
    assert!(s.audit_verify().unwrap().ok);
}

#[test]
fn the_kept_reply_commits_with_the_effect_or_neither_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let ids = with_captures(&mut s, "S-1", 2, T0);
    with_captures(&mut s, "S-2", 3, T0);

    // One call: the effect, the jti and the reply made from the effect's
    // outcome are all there.
    let cmd_1 = Jti::from("cmd-1");
    let mut keep = |outcome: Result<&Vec<CaptureId>, &StoreError>| match outcome {
        Ok(purged) => format!("purged {}", purged.len()),
        Err(e) => format!("refused: {e}"),
    };
    let purged = s
        .purge_subject(
            &sid("S-1"),
            T0,
            PurgeReason::Command,
            Some(stamp(&cmd_1, "capture.purge", &mut keep)),
        )
        .unwrap();
    assert_eq!(purged, ids);
    assert!(s.command_seen(&cmd_1).unwrap());
    assert_eq!(
        s.command_reply(&cmd_1).unwrap().as_deref(),
        Some("purged 2")
    );
    assert_eq!(s.pending(10, &[]).unwrap().len(), 3);

    // Keeping the reply fails (as on a full disk): the purge is rolled
    // back with it, nothing of the command is remembered, so a redelivery
    // applies it afresh.
    s.conn()
        .execute_batch(
            "CREATE TEMP TRIGGER keep_fails BEFORE INSERT ON commands
             WHEN NEW.reply = 'purged 3'
             BEGIN SELECT RAISE(ABORT, 'no space left for the reply'); END;",
        )
        .unwrap();
    let audit_rows = s.audit_verify().unwrap().rows;
    let cmd_2 = Jti::from("cmd-2");
    let err = s
        .purge_subject(
            &sid("S-2"),
            T0,
            PurgeReason::Command,
            Some(stamp(&cmd_2, "capture.purge", &mut keep)),
        )
        .unwrap_err();
    assert!(err.to_string().contains("no space left"), "{err}");
    assert_eq!(s.pending(10, &[]).unwrap().len(), 3, "purge rolled back");
    assert!(!s.command_seen(&cmd_2).unwrap());
    assert_eq!(s.command_reply(&cmd_2).unwrap(), None);
    assert_eq!(s.audit_verify().unwrap().rows, audit_rows);
    assert_eq!(s.counters().unwrap()["purged"], 2);

    // Without the failure the same command goes through, reply and all.
    s.conn().execute_batch("DROP TRIGGER keep_fails").unwrap();
    s.purge_subject(
        &sid("S-2"),
        T0,
        PurgeReason::Command,
        Some(stamp(&cmd_2, "capture.purge", &mut keep)),
    )
    .unwrap();
    assert_eq!(
        s.command_reply(&cmd_2).unwrap().as_deref(),
        Some("purged 3")
    );
    assert!(s.pending(10, &[]).unwrap().is_empty());
    assert!(s.audit_verify().unwrap().ok);
}

#[test]
fn disk_full_is_reported_and_prior_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let ids = with_captures(&mut s, "S-1", 2, T0);
    let pages: i64 = s
        .conn()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    s.conn()
        .query_row(
            &format!("PRAGMA max_page_count = {}", pages + 2),
            [],
            |_| Ok(()),
        )
        .unwrap();
    let big = vec![5u8; 64 * 1024];
    let err = s
        .insert_captures(
            vec![
                capture("big1", "S-1", "consent-S-1", &big),
                capture("big2", "S-1", "consent-S-1", &big),
            ],
            &roomy(),
            T0,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::DiskFull { .. }), "{err:?}");
    assert!(err.to_string().contains("disk full while writing"), "{err}");
    assert!(err.to_string().contains("facegate.db"), "{err}");
    drop(s);
    let mut s = open(dir.path());
    let got = pending_ids(&mut s, 10, &[]);
    assert_eq!(got, ids);
    assert_eq!(s.counters().unwrap()["accepted"], 2);
    assert!(s.audit_verify().unwrap().ok);
}

#[test]
fn undecryptable_rows_are_purged_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let ids = with_captures(&mut s, "S-1", 3, T0);
    raw(dir.path())
        .execute(
            "UPDATE captures SET image = zeroblob(100) WHERE capture_id = ?1",
            [ids[1].as_str()],
        )
        .unwrap();
    let got = pending_ids(&mut s, 10, &[]);
    assert_eq!(got, [ids[0].clone(), ids[2].clone()]);
    assert_eq!(s.outbox_stats(T0).unwrap().captures, 2);
}

/// The uplink's read leaves images sealed: a capture whose image does not
/// decrypt is read (its metadata opens), fails only when opened, stays
/// sealed then, and is purged on request, audited as undecryptable; a
/// capture whose metadata does not decrypt is purged at the read.
#[test]
fn images_are_read_sealed_and_one_that_does_not_open_is_purged_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let ids = with_captures(&mut s, "S-1", 3, T0);
    let db = raw(dir.path());
    db.execute(
        "UPDATE captures SET image = zeroblob(length(image)) WHERE capture_id = ?1",
        [ids[1].as_str()],
    )
    .unwrap();
    db.execute(
        "UPDATE captures SET meta = zeroblob(length(meta)) WHERE capture_id = ?1",
        [ids[2].as_str()],
    )
    .unwrap();
    let mut got = s.pending_where(10, &[], 0, &mut |_| true).unwrap();
    let read: Vec<CaptureId> = got.iter().map(|p| p.capture_id().clone()).collect();
    assert_eq!(
        read,
        [ids[0].clone(), ids[1].clone()],
        "bad metadata: purged"
    );
    assert_eq!(s.outbox_stats(T0).unwrap().captures, 2);
    let image_len = got[0].image_len();
    assert!(image_len > 0);
    for p in &got {
        assert!(!p.is_open());
        assert!(p.fields().image.is_empty(), "not decrypted at the read");
        assert_eq!(p.image_len(), image_len);
    }
    got[0].open().unwrap();
    assert!(got[0].is_open());
    assert_eq!(got[0].fields().image.len(), image_len);
    assert!(got[1].open().is_err());
    assert!(!got[1].is_open(), "still sealed after a failed open");
    let gone = CaptureId::new("00000000-0000-4000-8000-000000000000");
    assert_eq!(s.purge_undecryptable(&[ids[1].clone(), gone]).unwrap(), 1);
    assert_eq!(s.outbox_stats(T0).unwrap().captures, 1);
    let purged = s
        .audit_tail(100)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind::CAPTURE_PURGED && e.detail["reason"] == "undecryptable")
        .count();
    assert_eq!(purged, 2, "the metadata one at the read, the image one now");
    assert_eq!(s.purge_undecryptable(&[ids[1].clone()]).unwrap(), 0);
}

#[test]
fn purge_and_pending_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let plan = |sql: &str| -> String {
        let mut st = s
            .conn()
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let rows: Vec<String> = st
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        rows.join("; ")
    };
    let p = plan(
        "SELECT seq, capture_id, subject_ref FROM captures WHERE subject_ref = x'00' ORDER BY seq",
    );
    assert!(p.contains("captures_by_subject"), "{p}");
    assert!(!p.contains("TEMP B-TREE"), "{p}");
    let p = plan("SELECT seq FROM captures ORDER BY seq LIMIT 10");
    assert!(!p.contains("TEMP B-TREE"), "{p}");
    // The hand-over's choice reads keys and sizes from the index, never a
    // row with its sealed image.
    let p = plan(&super::outbox::pending_keys_sql().replace("?1", "10"));
    assert!(p.contains("COVERING INDEX captures_keys"), "{p}");
    assert!(!p.contains("TEMP B-TREE"), "{p}");
    // Captures looked up by a list of ids: each by its index, never a scan
    // of the outbox (the sort is of the list's few rows, into its order).
    let p = plan(&super::outbox::REFS_OF_SQL.replace("?1", "'[\"a\"]'"));
    assert!(p.contains("SEARCH c USING INDEX"), "{p}");
    assert!(!p.contains("SCAN c"), "{p}");
    let p = plan(&super::outbox::still_queued_sql().replace("?1", "'[\"a\"]'"));
    assert!(p.contains("SEARCH captures USING"), "{p}");
    assert!(!p.contains("SCAN captures"), "{p}");
    // The deletes after PUBACK find each capture and key by its `seq`.
    for sql in [
        super::outbox::DELETE_KEYS_SQL,
        super::outbox::DELETE_CAPTURES_SQL,
    ] {
        let p = plan(&sql.replace("?1", "'[1, 2]'"));
        assert!(p.contains("USING INTEGER PRIMARY KEY"), "{p}");
        assert!(!p.contains("SCAN capture"), "{p}");
    }
    let p = plan("SELECT seq FROM captures WHERE queued_at < 5 ORDER BY queued_at, seq");
    assert!(p.contains("captures_by_queued"), "{p}");
    assert!(!p.contains("TEMP B-TREE"), "{p}");
}

/// The audit salts stored, by storage pseudonym.
fn audit_salts(dir: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let conn = raw(dir);
    let mut stmt = conn
        .prepare("SELECT subject_ref, salt FROM audit_salts")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    rows
}

/// Every reference the subject's id and the device key give, with any salt
/// still on the device: the old unsalted pseudonym and one per stored salt.
fn refs_from_id_and_key(dir: &Path, subject: &str) -> Vec<String> {
    let keys = key().derive();
    let p = keys.pseudonyms.pseudonym(subject);
    let mut out = vec![hex::encode(p)];
    for (_, salt) in audit_salts(dir) {
        let salt = crate::crypto::AuditSalt::from_slice(&salt).unwrap();
        out.push(hex::encode(keys.pseudonyms.audit_ref(&salt, &p)));
    }
    out
}

#[test]
fn revocation_makes_the_subjects_earlier_audit_rows_unlinkable() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    with_captures(&mut s, "S-1", 2, T0);
    with_captures(&mut s, "S-2", 1, T0);
    let before = s.audit_ref(&sid("S-1")).unwrap().expect("S-1 has a salt");
    let rows_before = s.audit_tail(1000).unwrap();
    let named: Vec<&AuditEntry> = rows_before
        .iter()
        .filter(|e| e.subject_ref.as_deref() == Some(before.as_str()))
        .collect();
    assert_eq!(named.len(), 3, "consent.added and two capture.accepted");
    // While the salt lives, the device key and the id link the rows.
    assert!(refs_from_id_and_key(dir.path(), "S-1").contains(&before));
    let salt: Vec<u8> = audit_salts(dir.path())
        .into_iter()
        .find(|(p, _)| *p == key().derive().pseudonyms.pseudonym("S-1"))
        .map(|(_, salt)| salt)
        .unwrap();

    s.revoke(&sid("S-1"), T0, T0 + 1, None).unwrap();

    // Rows up to and including the revocation's own: no longer computable
    // from the subject id and the device key, and the salt is gone from
    // the database files (zeroed, WAL truncated).
    let after_revoke = s.audit_tail(1000).unwrap();
    let candidates = refs_from_id_and_key(dir.path(), "S-1");
    for e in &after_revoke {
        if let Some(r) = &e.subject_ref {
            assert!(!candidates.contains(r), "row {} still links: {e:?}", e.seq);
        }
    }
    assert!(after_revoke
        .iter()
        .any(|e| e.kind == kind::CONSENT_REVOKED && e.subject_ref.as_deref() == Some(&before)));
    assert_eq!(s.audit_ref(&sid("S-1")).unwrap(), None);
    assert!(
        !contains(&raw_files(dir.path()), &salt),
        "salt left in the files"
    );
    // Other subjects keep theirs.
    assert!(s.audit_ref(&sid("S-2")).unwrap().is_some());

    // Rows after the revocation get a new salt: linkable to each other,
    // not to the earlier ones.
    s.add_consent(&consent("c-new", "S-1", T0 + 5, T0 + DAY), T0 + 6, None)
        .unwrap();
    let after = s.audit_ref(&sid("S-1")).unwrap().expect("a new salt");
    assert_ne!(after, before);
    let newest = s.audit_tail(1).unwrap().remove(0);
    assert_eq!(newest.kind, kind::CONSENT_ADDED);
    assert_eq!(newest.subject_ref.as_deref(), Some(after.as_str()));
    assert!(
        s.audit_verify().unwrap().ok,
        "the chain covers rows as written"
    );
}

/// Appends `n` rows at `ts`, their detail naming `tag`.
fn rows_at(s: &mut Store, tag: &str, n: usize, ts: i64) {
    for i in 0..n {
        s.record(
            kind::CAPTURE_REJECTED,
            None,
            json!({ "reason": format!("{tag}-{i}") }),
            None,
            ts,
        )
        .unwrap();
    }
}

fn seqs(s: &mut Store) -> Vec<i64> {
    s.audit_tail(1000)
        .unwrap()
        .into_iter()
        .map(|e| e.seq)
        .collect()
}

const RETENTION: Duration = Duration::from_secs(90 * 86_400);

#[test]
fn audit_retention_deletes_old_rows_behind_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    rows_at(&mut s, "old-row", 3, T0 - 100 * DAY);
    rows_at(&mut s, "new-row", 2, T0 - 10 * DAY);
    assert_eq!(s.prune_audit(T0 - 11 * DAY, RETENTION).unwrap(), 0);
    assert_eq!(s.prune_audit(T0, RETENTION).unwrap(), 3);
    assert_eq!(seqs(&mut s), [4, 5, 6]);
    let pruned = s.audit_tail(1).unwrap().remove(0);
    assert_eq!(pruned.kind, kind::AUDIT_PRUNED);
    assert_eq!(
        pruned.detail,
        json!({ "rows": 3, "through_seq": 3, "before": T0 - 90 * DAY })
    );
    let v = s.audit_verify().unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!((v.rows, v.pruned_through), (3, Some(3)));
    assert!(
        !contains(&raw_files(dir.path()), b"old-row"),
        "deleted rows left in the database files"
    );
    assert!(contains(&raw_files(dir.path()), b"new-row-1"));
    // Nothing more to do; the chain goes on from the head, across a reopen.
    assert_eq!(s.prune_audit(T0, RETENTION).unwrap(), 0);
    drop(s);
    let mut s = open(dir.path());
    rows_at(&mut s, "later", 1, T0);
    assert!(s.audit_verify().unwrap().ok);

    // Tampering with the rest or with the checkpoint is still detected.
    type Tamper = (&'static str, &'static str, i64);
    let cases: [Tamper; 4] = [
        (
            "UPDATE audit SET ts = ts + 1 WHERE seq = 5",
            "edited row",
            5,
        ),
        (
            "DELETE FROM audit WHERE seq = 4",
            "deleted oldest kept row",
            5,
        ),
        (
            "UPDATE audit_checkpoint SET seq = 4",
            "checkpoint moved on",
            4,
        ),
        ("DELETE FROM audit_checkpoint", "checkpoint deleted", 4),
    ];
    drop(s);
    for (sql, name, first_bad) in cases {
        // Each on a copy of the database.
        let copy = tempfile::tempdir().unwrap();
        for f in ["facegate.db", "facegate.db-wal"] {
            if dir.path().join(f).exists() {
                std::fs::copy(dir.path().join(f), copy.path().join(f)).unwrap();
            }
        }
        raw(copy.path()).execute(sql, []).unwrap();
        let v = open(copy.path()).audit_verify().unwrap();
        assert!(!v.ok, "{name}: {v:?}");
        assert_eq!(v.first_bad.map(|b| b.0), Some(first_bad), "{name}");
    }
}

#[test]
fn audit_retention_deletes_only_the_old_prefix_of_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    rows_at(&mut s, "old", 2, T0 - 100 * DAY);
    rows_at(&mut s, "recent", 1, T0);
    // A row written while the clock was wrong (unset at boot).
    rows_at(&mut s, "clock-unset", 1, 0);
    assert_eq!(s.prune_audit(T0, RETENTION).unwrap(), 2);
    assert_eq!(seqs(&mut s), [3, 4, 5]);
    assert!(s.audit_verify().unwrap().ok);
}

#[test]
fn audit_retention_of_every_row_keeps_the_chain_going() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    rows_at(&mut s, "old", 3, T0 - 100 * DAY);
    assert_eq!(s.prune_audit(T0, RETENTION).unwrap(), 3);
    // Only the audit.pruned row is left; a later pass prunes that too and
    // the next row chains to the checkpoint.
    assert_eq!(s.prune_audit(T0 + 91 * DAY, RETENTION).unwrap(), 1);
    assert_eq!(seqs(&mut s), [5]);
    rows_at(&mut s, "next", 1, T0 + 91 * DAY);
    assert_eq!(seqs(&mut s), [5, 6]);
    let v = s.audit_verify().unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.pruned_through, Some(4));
}

#[test]
fn audit_retention_keeps_a_chain_that_does_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    rows_at(&mut s, "old", 3, T0 - 100 * DAY);
    rows_at(&mut s, "new", 1, T0);
    raw(dir.path())
        .execute("UPDATE audit SET detail = '{}' WHERE seq = 2", [])
        .unwrap();
    let err = s.prune_audit(T0, RETENTION).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_eq!(seqs(&mut s), [1, 2, 3, 4], "the evidence is kept");
    assert_eq!(s.audit_verify().unwrap().first_bad.map(|b| b.0), Some(2));
}

fn part(index: u32, of: u32) -> crate::protocol::PartNo {
    crate::protocol::PartNo { index, of }
}

fn part_rows(s: &Store) -> i64 {
    s.conn()
        .query_row("SELECT COUNT(*) FROM capture_parts", [], |r| r.get(0))
        .unwrap()
}

/// One batch of PUBACKs, one transaction: whole captures deleted, parts
/// recorded, and a capture whose last part came deleted with them; parts of
/// a capture not complete are recorded and it stays; a capture no longer
/// queued is ignored.
#[test]
fn a_batch_of_pubacks_deletes_whole_captures_and_completed_ones_in_parts_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let ids = with_captures(&mut s, "S-1", 4, T0);
    let (whole, done, partly, gone) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    s.ack_parts(&[(done.clone(), part(0, 2))], T0).unwrap();
    s.ack(gone, T0).unwrap();
    let acked = s
        .ack_uploads(
            &[whole.clone(), gone.clone()],
            &[
                (done.clone(), part(1, 2)),
                (partly.clone(), part(0, 2)),
                (gone.clone(), part(1, 2)),
            ],
            T0 + 1,
        )
        .unwrap();
    assert_eq!(
        acked,
        Acked {
            deleted: 2,
            completed: vec![done.clone()]
        }
    );
    assert_eq!(s.part_progress(whole).unwrap(), None);
    assert_eq!(s.part_progress(done).unwrap(), None);
    assert_eq!(s.part_progress(partly).unwrap(), Some(vec![part(0, 2)]));
    assert!(s.is_queued(partly).unwrap() && !s.is_queued(done).unwrap());
    assert_eq!(part_rows(&s), 1, "only the incomplete capture's part");
    assert_eq!(s.counters().unwrap()["uploaded"], 3);
    assert_eq!(s.ack_uploads(&[], &[], T0).unwrap(), Acked::default());
}

#[test]
fn a_capture_in_parts_is_deleted_only_when_every_part_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let ids = with_captures(&mut s, "S-1", 2, T0);
    let big = &ids[0];
    assert_eq!(s.part_progress(big).unwrap(), Some(vec![]));
    // Parts 2 and 0 of 3, out of order and one twice.
    let acked = [(big.clone(), part(2, 3)), (big.clone(), part(0, 3))];
    assert!(s.ack_parts(&acked, T0 + 1).unwrap().is_empty());
    assert!(s.ack_parts(&acked[..1], T0 + 1).unwrap().is_empty());
    assert_eq!(
        s.part_progress(big).unwrap(),
        Some(vec![part(0, 3), part(2, 3)])
    );
    assert_eq!(s.outbox_stats(T0).unwrap().captures, 2, "still queued");
    assert_eq!(s.counters().unwrap()["uploaded"], 0);
    // Parts of another split (a changed packet limit) do not complete it.
    assert!(s
        .ack_parts(&[(big.clone(), part(1, 4))], T0 + 1)
        .unwrap()
        .is_empty());
    // Survives a reopen (a restart sends only part 1).
    drop(s);
    let mut s = open(dir.path());
    assert_eq!(
        s.part_progress(big).unwrap(),
        Some(vec![part(0, 3), part(2, 3), part(1, 4)])
    );
    assert_eq!(
        s.ack_parts(&[(big.clone(), part(1, 3))], T0 + 2).unwrap(),
        vec![big.clone()]
    );
    assert_eq!(s.part_progress(big).unwrap(), None, "deleted");
    assert_eq!(part_rows(&s), 0, "its part rows went with it");
    assert_eq!(s.counters().unwrap()["uploaded"], 1);
    assert!(kinds(&mut s).contains(&kind::CAPTURE_UPLOADED.to_string()));
    // A part of a capture no longer queued is ignored.
    assert!(s
        .ack_parts(&[(big.clone(), part(0, 3))], T0 + 3)
        .unwrap()
        .is_empty());
    assert_eq!(part_rows(&s), 0);
    assert_eq!(s.outbox_stats(T0).unwrap().captures, 1);
}

#[test]
fn purging_a_capture_in_parts_removes_its_part_rows_and_names_it_partly_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let a = with_captures(&mut s, "S-1", 2, T0);
    let b = with_captures(&mut s, "S-2", 1, T0);
    s.ack_parts(
        &[(a[1].clone(), part(0, 2)), (b[0].clone(), part(1, 5))],
        T0,
    )
    .unwrap();
    assert_eq!(
        s.partly_sent(Some(&sid("S-1"))).unwrap(),
        vec![a[1].clone()]
    );
    assert!(s.partly_sent(Some(&sid("S-3"))).unwrap().is_empty());
    let mut all = s.partly_sent(None).unwrap();
    all.sort();
    assert_eq!(all, vec![a[1].clone(), b[0].clone()]);
    s.purge_subject(&sid("S-1"), T0, PurgeReason::Revoked, None)
        .unwrap();
    assert_eq!(part_rows(&s), 1);
    assert_eq!(s.partly_sent(None).unwrap(), vec![b[0].clone()]);
    s.purge_all(T0, PurgeReason::Local, None).unwrap();
    assert_eq!(part_rows(&s), 0);
}

#[test]
fn a_capture_with_every_part_recorded_is_completed_as_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let ids = with_captures(&mut s, "S-1", 1, T0);
    // As a crash between recording the last part and the delete leaves it.
    s.conn()
        .execute(
            "INSERT INTO capture_parts (capture_seq, parts, part, acked_at)
             SELECT seq, 2, 0, 0 FROM captures UNION ALL SELECT seq, 2, 1, 0 FROM captures",
            [],
        )
        .unwrap();
    assert_eq!(s.complete_parts(&ids, T0).unwrap(), 1);
    assert_eq!(s.outbox_stats(T0).unwrap().captures, 0);
    assert_eq!(part_rows(&s), 0);
}

fn queued_ids(s: &mut Store) -> Vec<CaptureId> {
    pending_ids(s, 100, &[])
}

#[test]
fn refusals_are_counted_durably_and_quarantine_when_the_rule_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let ids = with_captures(&mut s, "S-1", 3, T0);
    let rule = |n: u32| n >= 3;
    assert_eq!(
        s.count_refusal(&ids[0], rule, "closed", T0).unwrap(),
        Refusal::Counted(1)
    );
    assert_eq!(
        s.count_refusal(&ids[0], rule, "closed", T0).unwrap(),
        Refusal::Counted(2)
    );
    // Survives a restart (kill -9 does not reset the count).
    drop(s);
    let mut s = open(dir.path());
    assert_eq!(s.outbox_stats(T0).unwrap().quarantined, 0);
    assert_eq!(
        s.count_refusal(&ids[0], rule, "closed", T0 + 1).unwrap(),
        Refusal::Quarantined(3)
    );
    // Quarantined: not handed over, still in the outbox, counted in status.
    assert_eq!(queued_ids(&mut s), ids[1..].to_vec());
    let stats = s.outbox_stats(T0 + 1).unwrap();
    assert_eq!((stats.captures, stats.quarantined), (3, 1));
    assert_eq!(s.part_progress(&ids[0]).unwrap(), None);
    // Counting again is a no-op; unknown ids too.
    assert_eq!(
        s.count_refusal(&ids[0], rule, "closed", T0).unwrap(),
        Refusal::NotQueued
    );
    assert_eq!(
        s.count_refusal(&CaptureId::new("nope"), rule, "closed", T0)
            .unwrap(),
        Refusal::NotQueued
    );
    // Audited with id, attempts and reason, the subject by its salted reference only.
    let e = s
        .audit_tail(100)
        .unwrap()
        .into_iter()
        .find(|e| e.kind == kind::CAPTURE_QUARANTINED)
        .expect("capture.quarantined audited");
    assert_eq!(
        e.detail,
        json!({ "capture_id": ids[0], "attempts": 3, "reason": "closed" })
    );
    assert!(e.subject_ref.is_some());
    assert!(s.audit_verify().unwrap().first_bad.is_none());
    // The list shows it.
    let list = s.outbox_list(T0 + 11).unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0].capture_id, ids[0].as_str());
    assert_eq!(list[0].state, OutboxState::Quarantined);
    assert_eq!((list[0].attempts, list[0].age_s), (3, 11));
    assert_eq!(list[1].state, OutboxState::Queued);
    assert_eq!(list[1].attempts, 0);
}

#[test]
fn still_queued_answers_is_queued_for_many_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let ids = with_captures(&mut s, "S-1", 4, T0);
    // One uploaded, one quarantined, one never stored.
    s.ack(&ids[0], T0).unwrap();
    let rule = |_: u32| true;
    s.count_refusal(&ids[1], rule, "closed", T0).unwrap();
    let unknown = CaptureId::new("never-stored".to_string());
    let mut asked = ids.clone();
    asked.push(unknown);
    let found = s.still_queued(&asked).unwrap();
    for id in &asked {
        assert_eq!(found.contains(id), s.is_queued(id).unwrap(), "{id:?}");
    }
    assert_eq!(found.len(), 2);
    assert!(s.still_queued(&[]).unwrap().is_empty());
}

#[test]
fn retry_puts_quarantined_captures_back_with_no_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let ids = with_captures(&mut s, "S-1", 3, T0);
    let now = |_: u32| true;
    for id in &ids[..2] {
        assert_eq!(
            s.count_refusal(id, now, "r", T0).unwrap(),
            Refusal::Quarantined(1)
        );
    }
    assert!(s.retry_quarantined(Some(&ids[2]), T0).unwrap().is_empty());
    assert_eq!(
        s.retry_quarantined(Some(&ids[1]), T0).unwrap(),
        vec![ids[1].clone()]
    );
    assert_eq!(queued_ids(&mut s), ids[1..].to_vec());
    assert_eq!(s.outbox_list(T0).unwrap()[1].attempts, 0);
    assert_eq!(s.retry_quarantined(None, T0).unwrap(), vec![ids[0].clone()]);
    assert_eq!(queued_ids(&mut s), ids);
    assert_eq!(s.outbox_stats(T0).unwrap().quarantined, 0);
    let retried = kinds(&mut s)
        .into_iter()
        .filter(|k| k == kind::CAPTURE_RETRIED)
        .count();
    assert_eq!(retried, 2);
}

#[test]
fn an_acknowledged_part_clears_the_refusals_of_its_capture() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let ids = with_captures(&mut s, "S-1", 2, T0);
    let rule = |n: u32| n >= 5;
    for _ in 0..4 {
        s.count_refusal(&ids[0], rule, "r", T0).unwrap();
    }
    s.count_refusal(&ids[1], rule, "r", T0).unwrap();
    s.ack_parts(&[(ids[0].clone(), part(0, 3))], T0).unwrap();
    let list = s.outbox_list(T0).unwrap();
    assert_eq!((list[0].attempts, list[0].parts_acked), (0, 1));
    assert_eq!(list[1].attempts, 1, "only its own capture");
    assert_eq!(
        s.count_refusal(&ids[0], rule, "r", T0).unwrap(),
        Refusal::Counted(1)
    );
}

#[test]
fn quarantined_captures_are_purged_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let a = with_captures(&mut s, "S-1", 2, T0);
    let b = with_captures(&mut s, "S-2", 1, T0);
    let c = with_captures(&mut s, "S-3", 1, T0 + DAY);
    for id in [&a[0], &b[0], &c[0]] {
        s.count_refusal(id, |_| true, "r", T0).unwrap();
    }
    // Revocation.
    let purged = s
        .purge_subject(&sid("S-1"), T0, PurgeReason::Revoked, None)
        .unwrap();
    assert_eq!(purged.len(), 2, "the quarantined one and the queued one");
    // Retention.
    let expired = s
        .enforce_retention(T0 + DAY / 2, Duration::from_secs(3600))
        .unwrap();
    assert_eq!(expired, b);
    assert_eq!(s.outbox_stats(T0 + DAY).unwrap().quarantined, 1);
    // Everything.
    s.purge_all(T0, PurgeReason::Local, None).unwrap();
    assert_eq!(s.outbox_stats(T0 + DAY).unwrap().captures, 0);
    assert!(s.outbox_list(T0).unwrap().is_empty());
}

#[test]
fn the_quarantine_migration_keeps_queued_captures_queued() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let mut s = open(dir.path());
        with_captures(&mut s, "S-1", 2, T0)
    };
    {
        let conn = raw(dir.path());
        conn.execute_batch(
            "BEGIN;
             DROP INDEX captures_quarantined;
             DROP INDEX captures_attempted;
             ALTER TABLE captures DROP COLUMN attempts;
             ALTER TABLE captures DROP COLUMN quarantined_at;
             PRAGMA user_version = 5;
             COMMIT;",
        )
        .unwrap();
    }
    let mut s = open(dir.path());
    assert_eq!(queued_ids(&mut s), ids);
    assert!(s.outbox_list(T0).unwrap().iter().all(|e| e.attempts == 0));
    assert_eq!(s.outbox_stats(T0).unwrap().quarantined, 0);
}

#[test]
fn status_figures_never_read_the_captures() {
    // The quarantine columns sit after the sealed image: a query that reads
    // them row by row walks every image's overflow pages, ~0.4 s for 32,000
    // captures of 48 KB, and the status runs after every revocation.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path());
        with_captures(&mut s, "S-1", 2, T0);
    }
    let conn = raw(dir.path());
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", outbox::STATS_SQL))
        .unwrap()
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(
        plan.iter().all(|step| !step.starts_with("SCAN captures")),
        "{plan:?}"
    );
    assert!(
        plan.iter()
            .any(|step| step.contains("COVERING INDEX captures_quarantined")),
        "{plan:?}"
    );
}

#[test]
fn partly_sent_starts_from_the_parts_not_from_the_captures() {
    // Under the store lock of every revocation: walking all captures cost
    // ~90 ms with 32,000 queued.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path());
        with_captures(&mut s, "S-1", 2, T0);
    }
    let conn = raw(dir.path());
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", parts::PARTLY_SENT_SQL))
        .unwrap()
        .query_map([Some(vec![0u8; 32])], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(plan[0].starts_with("SCAN p"), "{plan:?}");
    assert!(
        plan.iter()
            .any(|step| step.starts_with("SEARCH c USING INTEGER PRIMARY KEY")),
        "{plan:?}"
    );
}

#[test]
fn the_hand_over_queries_never_test_a_column_after_the_image() {
    // The quarantine and refusal columns were added after the sealed image:
    // testing them row by row walks each image's overflow pages. Every query
    // of the hand-over path asks the partial indexes instead.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path());
        with_captures(&mut s, "S-1", 2, T0);
    }
    let conn = raw(dir.path());
    let plan = |sql: &str| -> Vec<String> {
        let n = conn.prepare(sql).unwrap().parameter_count();
        let params: Vec<i64> = vec![1; n];
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let not_quarantined = plan(&format!(
        "SELECT seq, capture_id FROM captures WHERE {} ORDER BY seq LIMIT ?1",
        outbox::NOT_QUARANTINED
    ));
    assert!(
        not_quarantined
            .iter()
            .any(|s| s.contains("COVERING INDEX captures_quarantined")),
        "{not_quarantined:?}"
    );
    let attempted = plan("SELECT seq FROM captures WHERE attempts > 0");
    assert!(
        attempted
            .iter()
            .any(|s| s.contains("COVERING INDEX captures_attempted")),
        "{attempted:?}"
    );
}

#[test]
fn pending_where_reads_only_the_captures_the_filter_accepts_within_the_lookahead() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let small = with_captures(&mut s, "S-1", 2, T0);
    let cid = "consent-S-2";
    s.add_consent(&consent(cid, "S-2", T0 - 10, T0 + DAY), T0, None)
        .unwrap();
    let big: Vec<CaptureId> = (0..2)
        .map(|i| CaptureId::new(format!("S-2-big-{i}")))
        .collect();
    let image = vec![7u8; 200_000];
    for id in &big {
        s.insert_captures(vec![capture(id.as_str(), "S-2", cid, &image)], &roomy(), T0)
            .unwrap();
    }
    let more = with_captures(&mut s, "S-3", 1, T0);
    let ids = |v: Vec<OutboxCapture>| -> Vec<CaptureId> {
        v.into_iter().map(|c| c.capture.capture_id).collect()
    };
    let pids = |v: Vec<Pending>| -> Vec<CaptureId> {
        v.into_iter().map(|c| c.capture_id().clone()).collect()
    };
    // In order, the big ones included, without a filter.
    let all = ids(s.pending(10, &[]).unwrap());
    assert_eq!(
        all,
        [
            small[0].clone(),
            small[1].clone(),
            big[0].clone(),
            big[1].clone(),
            more[0].clone()
        ]
    );
    // Only small ones: the big ones are passed over (not read) and the
    // limit is filled from behind them, as far as the lookahead reaches
    // (keys read: limit + excluded + lookahead).
    let mut small_only = |bytes: u64| bytes <= 100_000;
    let got = s
        .pending_where(2, &[small[0].clone()], 2, &mut small_only)
        .unwrap();
    assert_eq!(pids(got), [small[1].clone(), more[0].clone()]);
    let got = s
        .pending_where(2, &[small[0].clone()], 0, &mut small_only)
        .unwrap();
    assert_eq!(pids(got), [small[1].clone()], "not looked that far");
    assert!(pids(s.pending_where(10, &[], 10, &mut |_| false).unwrap()).is_empty());
    // The filter is asked in queue order and may count: at most one big one.
    let mut bigs = 0;
    let mut one_big = |bytes: u64| {
        if bytes <= 100_000 {
            return true;
        }
        bigs += 1;
        bigs <= 1
    };
    let got = s.pending_where(10, &[], 10, &mut one_big).unwrap();
    assert_eq!(
        pids(got),
        [
            small[0].clone(),
            small[1].clone(),
            big[0].clone(),
            more[0].clone()
        ]
    );
}

/// What intake records with a batch (`Store::insert_captures_with`): a
/// rejection is counted and audited once per pair, also across a crash
/// between its commit and the spool removal (the store reopened); its mark
/// holds neither the digest nor anything else readable, and goes after a
/// week; a drop summary adds its count and one audit row; all of it in the
/// batch's transaction, also without captures.
#[test]
fn intake_records_go_with_the_batch_and_a_rejection_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let now = 1_800_000_000;
    let policy = roomy();
    let rejection = |pair: [u8; 32]| Rejection {
        pair,
        detail: json!({ "pair": "tag", "reason": "image: not an image" }),
    };
    let records = |pairs: &[[u8; 32]], dropped: u64| IntakeRecords {
        rejections: pairs.iter().map(|p| rejection(*p)).collect(),
        dropped: (dropped > 0).then(|| DropSummary {
            count: dropped,
            detail: json!({ "count": dropped }),
        }),
    };
    let count = |s: &mut Store| {
        let c = s.counters().unwrap();
        let get = |k| c.get(k).copied().unwrap_or(0);
        let rows = s.audit_tail(100).unwrap();
        let rows = |k: &str| rows.iter().filter(|e| e.kind == k).count();
        (
            get(counter::REJECTED_BAD_INPUT),
            rows("capture.rejected"),
            get(counter::DROPPED_NO_CONSENT),
            rows("capture.dropped"),
        )
    };
    let (a, b) = ([7u8; 32], [8u8; 32]);
    {
        let mut s = open(dir.path());
        let (inserted, new) = s
            .insert_captures_with(Vec::new(), &records(&[a], 3), &policy, now)
            .unwrap();
        assert!(inserted.is_empty());
        assert_eq!(new, [true]);
        assert_eq!(count(&mut s), (1, 1, 3, 1));
        // The crash point: committed, the spool pair not removed yet.
    }
    let mut s = open(dir.path());
    let (_, new) = s
        .insert_captures_with(Vec::new(), &records(&[a, b], 0), &policy, now + 3)
        .unwrap();
    assert_eq!(new, [false, true], "counted once across the crash");
    assert_eq!(count(&mut s), (2, 2, 3, 1));
    let marks: Vec<Vec<u8>> = s
        .conn()
        .prepare("SELECT mark FROM dropped_pairs")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(marks.len(), 2);
    assert!(marks
        .iter()
        .all(|m| m.len() == 32 && m[..] != a && m[..] != b));
    // A week later the marks are gone (deleted by the next rejection).
    let later = now + drops::KEEP_S + 10;
    let (_, new) = s
        .insert_captures_with(Vec::new(), &records(&[a], 2), &policy, later)
        .unwrap();
    assert_eq!(new, [true]);
    assert_eq!(count(&mut s), (3, 3, 5, 2));
    assert!(s.audit_verify().unwrap().ok, "the chain holds");
}

/// The clock's high-water mark survives a restart and is replaced, not added.
#[test]
fn the_clock_mark_is_kept_across_a_restart() {
    use crate::clock::watch::Mark;
    let dir = tempfile::tempdir().unwrap();
    let mark = |wall: i64| Mark {
        wall,
        boot: "b8f0c1de-0000-4000-8000-000000000001".into(),
        mono: 1234,
        high: wall + 7,
    };
    {
        let mut s = open(dir.path());
        assert_eq!(s.clock_mark().unwrap(), None);
        s.save_clock_mark(&mark(T0)).unwrap();
        s.save_clock_mark(&mark(T0 + 60)).unwrap();
    }
    let mut s = open(dir.path());
    assert_eq!(s.clock_mark().unwrap(), Some(mark(T0 + 60)));
}

/// Size of the database file on disk.
fn db_file_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(DB_FILE_NAME)).unwrap().len()
}

#[test]
fn a_new_database_gives_freed_space_back_and_keeps_no_deleted_content() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let av: i64 = s
        .conn()
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(av, 2, "incremental from the start");
    s.add_consent(&consent("k1", "S-1", T0 - 10, T0 + DAY), T0, None)
        .unwrap();
    let image = |i: usize| {
        let mut v = marked_image(&format!("vac{i}"));
        v.resize(40_000, (i % 200) as u8);
        v
    };
    let batch: Vec<Capture> = (0..40)
        .map(|i| capture(&format!("v{i}"), "S-1", "k1", &image(i)))
        .collect();
    s.insert_captures(batch, &roomy(), T0).unwrap();
    s.truncate_wal_after_deletes().unwrap();
    let full = db_file_len(dir.path());
    assert!(full > 1_500_000, "{full}");
    let ids: Vec<CaptureId> = (0..40)
        .map(|i| CaptureId::from(format!("v{i}").as_str()))
        .collect();
    assert_eq!(s.ack_many(&ids, T0).unwrap(), 40);
    s.truncate_wal_after_deletes().unwrap();
    assert_eq!(db_file_len(dir.path()), full, "deletes alone keep the size");
    let (_, free) = s.db_size().unwrap();
    assert!(free > 1_000_000, "{free}");
    assert!(s.vacuum_free_pages().unwrap() > 0);
    let small = db_file_len(dir.path());
    assert!(small < full / 4, "{small} of {full}");
    assert_eq!(s.db_size().unwrap().1, 0, "no free page left");
    assert_eq!(s.vacuum_free_pages().unwrap(), 0, "nothing more to do");
    // What was cut off and what is left hold no deleted content.
    for i in 0..40 {
        assert!(!contains(
            &raw_files(dir.path()),
            format!("vac{i}").as_bytes()
        ));
    }
    // Still a working database.
    s.insert_captures(vec![capture("w", "S-1", "k1", &image(1))], &roomy(), T0)
        .unwrap();
    assert_eq!(s.outbox_stats(T0).unwrap().captures, 1);
}

#[test]
fn an_older_database_is_converted_to_incremental_vacuum_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A database as facegate created it before: auto_vacuum off.
        let conn = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
        conn.execute_batch(
            "PRAGMA auto_vacuum = NONE; PRAGMA journal_mode = WAL; CREATE TABLE x (a);",
        )
        .unwrap();
        conn.execute_batch("DROP TABLE x;").unwrap();
        let av: i64 = conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .unwrap();
        assert_eq!(av, 0);
    }
    let mut s = open(dir.path());
    let av: i64 = s
        .conn()
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(av, 2, "converted");
    s.add_consent(&consent("k1", "S-1", T0 - 10, T0 + DAY), T0, None)
        .unwrap();
    assert_eq!(s.consents_for(&sid("S-1")).unwrap().len(), 1);
    drop(s);
    // Opening again changes nothing.
    let s = open(dir.path());
    let av: i64 = s
        .conn()
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(av, 2);
}

#[test]
fn the_space_reserve_is_a_private_file_of_the_configured_size() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let file = dir.path().join(RESERVE_FILE_NAME);
    assert_eq!(s.reserve_held(), 0);
    assert_eq!(s.keep_reserve(3 << 20).unwrap(), 3 << 20);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.len(), 3 << 20);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Written, not sparse: the blocks are really taken.
    use std::os::unix::fs::MetadataExt;
    assert!(meta.blocks() * 512 >= 3 << 20, "{} blocks", meta.blocks());
    assert_eq!(s.keep_reserve(3 << 20).unwrap(), 3 << 20, "kept as it is");
    assert_eq!(s.keep_reserve(1 << 20).unwrap(), 1 << 20, "shrunk");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 20);
    // Released (as on a full disk) and written again.
    std::fs::remove_file(&file).unwrap();
    assert_eq!(s.keep_reserve(1 << 20).unwrap(), 1 << 20);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 20);
    // 0 turns it off.
    assert_eq!(s.keep_reserve(0).unwrap(), 0);
    assert!(!file.exists());
    drop(s);
    // A reserve left by an earlier run is counted at open.
    let mut s = open(dir.path());
    s.keep_reserve(2 << 20).unwrap();
    drop(s);
    assert_eq!(open(dir.path()).reserve_held(), 2 << 20);
}

/// An image of `len` bytes that compresses to nothing and repeats no 32-byte
/// window, so that a window of its sealed form found in the files is its.
fn big_image(seed: u8, len: usize) -> Vec<u8> {
    let mut x = u64::from(seed) | 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn wal_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("facegate.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// ARCHITECTURE I4, crypto-shredding: deleting an uploaded capture destroys
/// its key (no copy in the files once the WAL is truncated) and does not
/// rewrite the pages of its sealed image (the delete's WAL frames stay far
/// below the image's size); a purge still zeroes every page it frees.
#[test]
fn an_upload_delete_destroys_the_key_and_leaves_the_image_pages_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    let image_len = 256 * 1024;
    let add = |s: &mut Store, subject: &str, seed: u8| -> CaptureId {
        let cid = format!("consent-{subject}");
        s.add_consent(&consent(&cid, subject, T0 - 10, T0 + DAY), T0, None)
            .unwrap();
        let id = CaptureId::new(format!("{subject}-big"));
        let c = capture(id.as_str(), subject, &cid, &big_image(seed, image_len));
        s.insert_captures(vec![c], &roomy(), T0).unwrap();
        id
    };
    let uploaded = add(&mut s, "S-up", 1);
    let purged = add(&mut s, "S-gone", 2);
    let row = |s: &Store, id: &CaptureId| -> (Vec<u8>, Vec<u8>) {
        s.conn()
            .query_row(
                "SELECT k.wrapped, c.image FROM captures c
                 JOIN capture_keys k ON k.capture_seq = c.seq WHERE c.capture_id = ?1",
                [id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    let (up_key, up_image) = row(&s, &uploaded);
    let (_, gone_image) = row(&s, &purged);
    assert_eq!(up_key.len(), 32 + crate::crypto::SEAL_OVERHEAD);
    assert!(s.truncate_wal_after_deletes().unwrap());
    assert_eq!(wal_len(dir.path()), 0);
    let files = raw_files(dir.path());
    assert!(find_any_window(&files, &up_key, 32).is_some(), "control");

    assert_eq!(
        s.ack_many(std::slice::from_ref(&uploaded), T0 + 1).unwrap(),
        1
    );
    let frames = wal_len(dir.path());
    assert!(
        frames < image_len as u64 / 2,
        "the delete wrote {frames} B of WAL for a {image_len} B image: its pages were rewritten"
    );
    let sd: i64 = s
        .conn()
        .query_row("PRAGMA secure_delete", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sd, 1, "zeroing is back on for every other delete");
    assert!(s.truncate_wal_after_deletes().unwrap());
    let files = raw_files(dir.path());
    if let Some(at) = find_any_window(&files, &up_key, 16) {
        panic!("the uploaded capture's key is still in the files at {at}");
    }
    // Its sealed image may stay in free pages: under a key that is gone.
    let _ = up_image;

    s.purge_subject(&sid("S-gone"), T0 + 2, PurgeReason::Revoked, None)
        .unwrap();
    let files = raw_files(dir.path());
    if let Some(at) = find_any_window(&files, &gone_image, 32) {
        panic!("a purged capture's sealed image is still in the files at {at}");
    }
    let capture_keys: i64 = s
        .conn()
        .query_row("SELECT COUNT(*) FROM capture_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(capture_keys, 0, "no capture key outlives its capture");
    assert_eq!(s.counters().unwrap()["uploaded"], 1);
    assert!(s.audit_verify().unwrap().ok);
}

/// A rekey cut off between two of its transactions (a kill -9 at start-up,
/// a power cut) leaves some captures rekeyed and the rest in the old
/// format; the next open goes on from there and finishes, and every capture
/// reads back as it was stored.
#[test]
fn a_rekey_cut_off_between_batches_goes_on_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let n = outbox::REKEY_BATCH as usize + 6;
    let ids = {
        let mut s = open(dir.path());
        let ids = with_captures(&mut s, "S-old", n, T0);
        for id in &ids {
            outbox::make_legacy(&mut s, id);
        }
        ids
    };
    let keys = |s: &Store| -> i64 {
        s.conn()
            .query_row("SELECT COUNT(*) FROM capture_keys", [], |r| r.get(0))
            .unwrap()
    };
    {
        // Opening rekeys everything: undo it, keep the database as a
        // crash after the first batch leaves it.
        let mut s = open(dir.path());
        assert_eq!(keys(&s), n as i64);
        for id in &ids {
            outbox::make_legacy(&mut s, id);
        }
        assert_eq!(keys(&s), 0);
        assert_eq!(
            outbox::rekey_batch(&mut s).unwrap(),
            Some(outbox::REKEY_BATCH as u64)
        );
        assert_eq!(keys(&s), outbox::REKEY_BATCH);
    }
    let mut s = open(dir.path());
    assert_eq!(keys(&s), n as i64, "the open finished it");
    let back = s.pending(n + 1, &[]).unwrap();
    assert_eq!(back.len(), n);
    for c in &back {
        assert_eq!(
            &*c.capture.image,
            &marked_image(c.capture.capture_id.as_str())[..]
        );
    }
    assert_eq!(outbox::rekey_legacy(&mut s).unwrap(), 0, "marked done");
    assert!(s.audit_verify().unwrap().ok);
}

/// A rekey transaction carries at most `REKEY_BATCH_BYTES` of sealed
/// captures (a larger one alone), and the WAL is truncated after each, so
/// the rekey at the first open after an upgrade needs about one batch of
/// free space, which the space reserve holds, however large the queue.
#[test]
fn rekey_batches_are_bounded_in_bytes_and_the_wal_is_truncated_after_each() {
    let dir = tempfile::tempdir().unwrap();
    let mib = 1024 * 1024;
    let big = |id: &str, len: usize| {
        let mut image = marked_image(id);
        image.resize(len, 0x33);
        image
    };
    // Five captures of 1.5 MiB, then one of 5 MiB.
    let sizes = [
        3 * mib / 2,
        3 * mib / 2,
        3 * mib / 2,
        3 * mib / 2,
        3 * mib / 2,
        5 * mib,
    ];
    let ids: Vec<CaptureId> = (0..sizes.len())
        .map(|i| CaptureId::new(format!("S-big-cap-{i}")))
        .collect();
    {
        let mut s = open(dir.path());
        s.add_consent(
            &consent("consent-big", "S-big", T0 - 10, T0 + DAY),
            T0,
            None,
        )
        .unwrap();
        let batch = ids
            .iter()
            .zip(sizes)
            .map(|(id, len)| capture(id.as_str(), "S-big", "consent-big", &big(id.as_str(), len)))
            .collect();
        let r = s.insert_captures(batch, &roomy(), T0).unwrap();
        assert!(r.iter().all(|x| *x == Inserted::Accepted), "{r:?}");
        for id in &ids {
            outbox::make_legacy(&mut s, id);
        }
    }
    {
        // The open rekeys everything: undo it, then run the batches by hand.
        let mut s = open(dir.path());
        for id in &ids {
            outbox::make_legacy(&mut s, id);
        }
        s.checkpoint().unwrap();
        let mut batches = Vec::new();
        while let Some(n) = outbox::rekey_batch(&mut s).unwrap() {
            batches.push(n);
        }
        assert_eq!(
            batches,
            [2, 2, 1, 1],
            "1.5 MiB twice per batch, 5 MiB alone"
        );
    }
    {
        let mut s = open(dir.path());
        for id in &ids {
            outbox::make_legacy(&mut s, id);
        }
        s.checkpoint().unwrap();
    }
    // A real open after an upgrade: every batch leaves the WAL truncated.
    let mut s = open(dir.path());
    let wal = std::fs::metadata(dir.path().join("facegate.db-wal")).map_or(0, |m| m.len());
    assert!(wal < mib as u64, "WAL of {wal} B after the rekey");
    let back = s.pending(10, &[]).unwrap();
    assert_eq!(back.len(), ids.len());
    for (c, len) in back.iter().zip(sizes) {
        assert_eq!(*c.capture.image, big(c.capture.capture_id.as_str(), len));
    }
    assert!(s.audit_verify().unwrap().ok);
}

/// Captures stored before capture keys are sealed again under keys of
/// their own at the next open (ARCHITECTURE I4), read back as they were;
/// one that cannot be opened is purged; later opens find the mark and do
/// nothing.
#[test]
fn captures_of_the_old_format_get_their_own_key_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let mut s = open(dir.path());
        let ids = with_captures(&mut s, "S-old", 3, T0);
        for id in &ids {
            outbox::make_legacy(&mut s, id);
        }
        // The third one's blob damaged: it cannot be opened.
        s.conn()
            .execute(
                "UPDATE captures SET image = zeroblob(100) WHERE capture_id = ?1",
                [ids[2].as_str()],
            )
            .unwrap();
        let keys: i64 = s
            .conn()
            .query_row("SELECT COUNT(*) FROM capture_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(keys, 0, "control: the old format");
        ids
    };
    let mut s = open(dir.path());
    let keyed: i64 = s
        .conn()
        .query_row("SELECT COUNT(*) FROM capture_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(keyed, 2);
    let back = s.pending(10, &[]).unwrap();
    let got: Vec<_> = back.iter().map(|c| c.capture.capture_id.clone()).collect();
    assert_eq!(got, ids[..2].to_vec());
    for c in &back {
        assert_eq!(
            &*c.capture.image,
            &marked_image(c.capture.capture_id.as_str())[..]
        );
    }
    assert!(kinds(&mut s).iter().any(|k| k == kind::CAPTURE_PURGED));
    assert_eq!(outbox::rekey_legacy(&mut s).unwrap(), 0, "marked done");
    drop(s);
    let mut s = open(dir.path());
    assert_eq!(pending_ids(&mut s, 10, &[]), ids[..2].to_vec());
    assert!(s.audit_verify().unwrap().ok);
}
