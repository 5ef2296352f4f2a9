//! The encrypted outbox: inserting consented captures (group commit, quota),
//! reading them back decrypted for upload, acknowledging, and sizes.
//!
//! Each capture row keeps in clear only what queries need (queue order, id,
//! subject pseudonym, queue time, size). The plain subject id, consent id,
//! camera, content type and digest are a sealed JSON `meta` blob; the image is
//! a sealed `image` blob; both under the capture's own key, which is stored
//! in `capture_keys`, wrapped under the subject's data key (ARCHITECTURE I3,
//! I4).

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use super::purge::{capture_ref, delete_rows, destroy_key_if_unused, CaptureRef, REF_COLUMNS};
use super::{
    counter, Capture, Inserted, OutboxCapture, OutboxStats, PurgeReason, SqlCtx, Store, StoreError,
    Writer,
};
use crate::audit::kind;
use crate::config::{OutboxConfig, WhenFull};
use crate::crypto::{CryptoError, DataKey, DerivedKeys, Part, SEAL_OVERHEAD};
use crate::ids::{CaptureId, SubjectId};

/// The sealed metadata of a capture.
#[derive(Serialize, Deserialize)]
struct Meta {
    subject: SubjectId,
    consent_id: String,
    captured_at: i64,
    camera: String,
    content_type: String,
    sha256: String,
}

fn load_key(
    conn: &rusqlite::Connection,
    keys: &DerivedKeys,
    sref: &[u8; 32],
) -> Result<Option<DataKey>, StoreError> {
    let wrapped: Option<Vec<u8>> = conn
        .prepare_cached("SELECT wrapped FROM data_keys WHERE subject_ref = ?1")
        .and_then(|mut s| s.query_row([&sref[..]], |r| r.get(0)).optional())
        .op("reading a data key")?;
    match wrapped {
        Some(w) => Ok(Some(DataKey::unwrap(&keys.kek, sref, &w)?)),
        None => Ok(None),
    }
}

/// The subject's data key, created (and stored wrapped) on first use.
fn key_for<'c>(
    w: &Writer,
    cache: &'c mut HashMap<[u8; 32], DataKey>,
    sref: &[u8; 32],
    now: i64,
) -> Result<&'c DataKey, StoreError> {
    if !cache.contains_key(sref) {
        let key = match load_key(&w.tx, w.keys, sref)? {
            Some(k) => k,
            None => {
                let k = DataKey::generate()?;
                let wrapped = k.wrap(&w.keys.kek, sref)?;
                w.tx.execute(
                    "INSERT INTO data_keys (subject_ref, wrapped, created_at) VALUES (?1, ?2, ?3)",
                    params![&sref[..], wrapped, now],
                )
                .op("storing a data key")?;
                k
            }
        };
        cache.insert(*sref, key);
    }
    cache.get(sref).ok_or_else(|| StoreError::Corrupt {
        what: "data key cache".into(),
    })
}

fn totals(w: &Writer) -> Result<(u64, u64), StoreError> {
    w.tx.prepare_cached("SELECT captures, bytes FROM outbox_totals WHERE id = 1")
        .and_then(|mut s| s.query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))))
        .op("reading outbox totals")
        .map(|(c, b)| (c.max(0) as u64, b.max(0) as u64))
}

fn exists(w: &Writer, capture_id: &CaptureId) -> Result<bool, StoreError> {
    w.tx.prepare_cached("SELECT 1 FROM captures WHERE capture_id = ?1")
        .and_then(|mut s| s.query_row([capture_id.as_str()], |_| Ok(())).optional())
        .op("looking up a capture")
        .map(|r| r.is_some())
}

/// Makes room for `need` bytes by purging the oldest captures. False if the
/// outbox cannot hold `need` bytes at all.
fn make_room(
    w: &mut Writer,
    cache: &mut HashMap<[u8; 32], DataKey>,
    need: u64,
    policy: &OutboxConfig,
    now: i64,
) -> Result<bool, StoreError> {
    let (_, used) = totals(w)?;
    if used + need <= policy.quota_bytes {
        return Ok(true);
    }
    if need > policy.quota_bytes || policy.when_full == WhenFull::RejectNew {
        return Ok(false);
    }
    let mut victims: Vec<CaptureRef> = Vec::new();
    let mut freed = 0u64;
    {
        let mut stmt =
            w.tx.prepare_cached(&format!(
                "SELECT {REF_COLUMNS}, bytes FROM captures ORDER BY seq"
            ))
            .op("choosing captures to drop")?;
        let mut rows = stmt.query([]).op("choosing captures to drop")?;
        while used - freed + need > policy.quota_bytes {
            let Some(row) = rows.next().op("choosing captures to drop")? else {
                break;
            };
            let bytes: i64 = row.get(3).op("choosing captures to drop")?;
            freed += bytes.max(0) as u64;
            victims.push(capture_ref(row).op("choosing captures to drop")?);
        }
    }
    let destroyed = delete_rows(
        w,
        &victims,
        kind::CAPTURE_PURGED,
        PurgeReason::OutboxFull,
        now,
    )?;
    for sref in destroyed {
        cache.remove(&sref);
    }
    Ok(used - freed + need <= policy.quota_bytes)
}

pub(super) fn insert(
    store: &mut Store,
    batch: Vec<Capture>,
    records: &super::drops::IntakeRecords,
    policy: &OutboxConfig,
    now: i64,
) -> Result<(Vec<Inserted>, Vec<bool>), StoreError> {
    let mut w = store.writer()?;
    // Rejections and the drop summary first: they fit in the pages the
    // batch writes anyway, and need no room under the quota.
    let rejected = super::drops::record(&mut w, records, now)?;
    let mut cache: HashMap<[u8; 32], DataKey> = HashMap::new();
    let mut out = Vec::with_capacity(batch.len());
    for c in batch {
        let sref = w.pseudonym(&c.subject);
        if exists(&w, &c.capture_id)? {
            out.push(Inserted::Duplicate);
            continue;
        }
        // No consent check here: the caller's gate decision, taken under the
        // same lock, stands (see `Store::insert_captures`).
        // Plaintext (the subject id among it): wiped once sealed.
        let meta = serde_json::to_vec(&Meta {
            subject: c.subject.clone(),
            consent_id: c.consent_id.clone(),
            captured_at: c.captured_at,
            camera: c.camera.clone(),
            content_type: c.content_type.clone(),
            sha256: hex::encode(c.sha256),
        })
        .map(Zeroizing::new)
        .map_err(|e| StoreError::Corrupt {
            what: format!("capture {} metadata: {e}", c.capture_id),
        })?;
        let need = (meta.len() + c.image.len() + 2 * SEAL_OVERHEAD) as u64;
        if !make_room(&mut w, &mut cache, need, policy, now)? {
            let detail =
                json!({ "capture_id": c.capture_id, "reason": "outbox_full", "bytes": need });
            w.audit(now, kind::CAPTURE_REJECTED, Some(&sref), detail)?;
            w.bump(counter::REJECTED_QUOTA, 1)?;
            out.push(Inserted::QuotaRejected);
            continue;
        }
        let subject_key = key_for(&w, &mut cache, &sref, now)?;
        let key = DataKey::generate()?;
        let wrapped = subject_key.wrap_capture_key(&key, c.capture_id.as_str(), &sref)?;
        let meta = key.seal(Part::Meta, c.capture_id.as_str(), &sref, &meta)?;
        let image = key.seal(Part::Image, c.capture_id.as_str(), &sref, &c.image)?;
        let bytes = (meta.len() + image.len()) as i64;
        w.tx.prepare_cached(
            "INSERT INTO captures (capture_id, subject_ref, queued_at, bytes, meta, image)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut s| {
            s.execute(params![
                c.capture_id.as_str(),
                &sref[..],
                now,
                bytes,
                meta,
                image
            ])
        })
        .op("storing a capture")?;
        store_capture_key(&w, w.tx.last_insert_rowid(), &wrapped)?;
        let detail = json!({ "capture_id": c.capture_id, "consent_id": c.consent_id, "camera": c.camera, "bytes": bytes });
        w.audit(now, kind::CAPTURE_ACCEPTED, Some(&sref), detail)?;
        w.bump(counter::ACCEPTED, 1)?;
        out.push(Inserted::Accepted);
    }
    w.commit()?;
    Ok((out, rejected))
}

fn decode_meta(bytes: &[u8]) -> Option<(Meta, [u8; 32])> {
    let meta: Meta = serde_json::from_slice(bytes).ok()?;
    let sha: [u8; 32] = hex::decode(&meta.sha256).ok()?.try_into().ok()?;
    Some((meta, sha))
}

fn store_capture_key(w: &Writer, seq: i64, wrapped: &[u8]) -> Result<(), StoreError> {
    w.tx.prepare_cached("INSERT INTO capture_keys (capture_seq, wrapped) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![seq, wrapped]))
        .op("storing a capture key")?;
    Ok(())
}

struct Row {
    r: CaptureRef,
    queued_at: i64,
    meta: Vec<u8>,
    image: Vec<u8>,
    /// The capture's own key, wrapped (`None`: not stored).
    wrapped_key: Option<Vec<u8>>,
}

/// The columns of a [`Row`], for `SELECT ... FROM captures`.
const ROW_COLUMNS: &str = "seq, capture_id, subject_ref, queued_at, meta, image,
    (SELECT wrapped FROM capture_keys WHERE capture_seq = captures.seq)";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        r: capture_ref(r)?,
        queued_at: r.get(3)?,
        meta: r.get(4)?,
        image: r.get(5)?,
        wrapped_key: r.get(6)?,
    })
}

/// A queued capture read for upload: every field opened but the image,
/// which stays sealed (with the capture's own key, unwrapped) until
/// [`Pending::open`]. The uplink reads captures under the store lock and
/// opens the image of a capture sent whole after it, with no lock held
/// (ARCHITECTURE I7); AES-GCM over the image is the part of a read that
/// grows with the capture.
pub struct Pending {
    /// The capture; its `image` is empty while `sealed` holds it.
    capture: Capture,
    sealed: Option<SealedImage>,
    /// When it entered the outbox (unix seconds).
    pub queued_at: i64,
}

/// A capture's image as stored, and what opens it.
struct SealedImage {
    key: DataKey,
    subject_ref: [u8; 32],
    bytes: Vec<u8>,
}

impl Pending {
    /// Wipes the decrypted image now (fast, [`crate::crypto::wipe`]); the
    /// capture stays, with an empty image.
    pub fn wipe(&mut self) {
        crate::crypto::wipe(&mut self.capture.image);
    }

    /// The capture's id.
    pub fn capture_id(&self) -> &CaptureId {
        &self.capture.capture_id
    }

    /// The capture's fields; `image` is empty until [`Pending::open`].
    pub fn fields(&self) -> &Capture {
        &self.capture
    }

    /// The image's length in bytes, also while it is sealed.
    pub fn image_len(&self) -> usize {
        match &self.sealed {
            Some(s) => s.bytes.len().saturating_sub(SEAL_OVERHEAD),
            None => self.capture.image.len(),
        }
    }

    /// Whether the image is opened.
    pub fn is_open(&self) -> bool {
        self.sealed.is_none()
    }

    /// Opens (decrypts) the image into [`Pending::fields`]; nothing to do if
    /// it is open. An error means the stored image is not what was sealed
    /// (the capture must be purged, `Store::purge_undecryptable`); the image
    /// then stays sealed.
    pub fn open(&mut self) -> Result<(), CryptoError> {
        if let Some(s) = &self.sealed {
            let id = self.capture.capture_id.as_str();
            self.capture.image = s.key.open(Part::Image, id, &s.subject_ref, &s.bytes)?;
            self.sealed = None;
        }
        Ok(())
    }

    /// A capture read with its image open, for unit tests.
    #[cfg(test)]
    pub(crate) fn opened(capture: Capture) -> Pending {
        Pending {
            capture,
            sealed: None,
            queued_at: 0,
        }
    }

    /// The capture with its image opened ([`Pending::open`]).
    pub fn into_opened(mut self) -> Result<OutboxCapture, CryptoError> {
        self.open()?;
        Ok(OutboxCapture {
            capture: self.capture,
            queued_at: self.queued_at,
        })
    }
}

/// A row read for upload: its capture key unwrapped and its metadata
/// opened; `None` if either fails (the capture must be purged).
fn open_row(
    conn: &rusqlite::Connection,
    keys: &DerivedKeys,
    cache: &mut HashMap<[u8; 32], Option<DataKey>>,
    row: Row,
) -> Result<Option<Pending>, StoreError> {
    let sref = row.r.subject_ref;
    let key = match cache.entry(sref) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let key = match load_key(conn, keys, &sref) {
                Ok(k) => k,
                Err(StoreError::Crypto(_)) => None,
                Err(e) => return Err(e),
            };
            e.insert(key)
        }
    };
    let Some(subject_key) = key else {
        return Ok(None);
    };
    let id = &row.r.capture_id;
    let Some(wrapped) = &row.wrapped_key else {
        return Ok(None);
    };
    let Ok(key) = subject_key.unwrap_capture_key(id.as_str(), &sref, wrapped) else {
        return Ok(None);
    };
    let Ok(meta) = key.open(Part::Meta, id.as_str(), &sref, &row.meta) else {
        return Ok(None);
    };
    let Some((meta, sha256)) = decode_meta(&meta) else {
        return Ok(None);
    };
    Ok(Some(Pending {
        capture: Capture {
            capture_id: id.clone(),
            subject: meta.subject,
            consent_id: meta.consent_id,
            captured_at: meta.captured_at,
            camera: meta.camera,
            content_type: meta.content_type,
            sha256,
            image: Zeroizing::new(Vec::new()),
        },
        sealed: Some(SealedImage {
            key,
            subject_ref: sref,
            bytes: row.image,
        }),
        queued_at: row.queued_at,
    }))
}

/// A queued capture, not quarantined, for a `WHERE` clause on `captures`.
/// The quarantine columns sit after the sealed image in the row, so testing
/// them row by row walks each image's overflow pages; the partial index of
/// quarantined captures (schema `QUARANTINE_INDEX`, normally empty) answers
/// this instead.
pub(super) const NOT_QUARANTINED: &str =
    "seq NOT IN (SELECT seq FROM captures WHERE quarantined_at IS NOT NULL)";

/// The keys and sizes of the first `?1` queued captures, in queue order:
/// answered from the covering index `captures_keys` (schema
/// `OUTBOX_KEYS_INDEX`), not from the rows with their sealed images.
pub(super) fn pending_keys_sql() -> String {
    format!(
        "SELECT seq, capture_id, bytes FROM captures
         WHERE {NOT_QUARANTINED} ORDER BY seq LIMIT ?1"
    )
}

/// The next queued captures in order, up to `limit`, leaving out
/// `exclude` (in flight) and those `read` says not to read (asked in queue
/// order with each one's stored size, `bytes`): which ones is decided on
/// their keys and sizes alone (no sealed image is read, nothing decrypted,
/// for a capture left out), then only those are read: their metadata
/// opened, their images left sealed ([`Pending`]). A capture whose key or
/// metadata does not open is purged (audited) and left out. Left out by
/// `read`, at most `lookahead` captures are looked past.
pub(super) fn pending(
    store: &mut Store,
    limit: usize,
    exclude: &[CaptureId],
    lookahead: usize,
    read: &mut dyn FnMut(u64) -> bool,
) -> Result<Vec<Pending>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let exclude: std::collections::HashSet<&str> = exclude.iter().map(CaptureId::as_str).collect();
    // The keys in queue order, stepped only as far as needed (the scan ends
    // with the `limit`-th capture chosen); only a chosen key's `seq` is kept,
    // nothing is allocated for a key passed over (the excluded ones are the
    // captures in flight and those prepared ahead).
    let chosen: Vec<i64> = store
        .conn
        .prepare_cached(&pending_keys_sql())
        .and_then(|mut s| {
            let n = limit
                .saturating_add(exclude.len())
                .saturating_add(lookahead);
            let mut rows = s.query(params![i64::try_from(n).unwrap_or(i64::MAX)])?;
            let mut chosen = Vec::with_capacity(limit);
            while let Some(r) = rows.next()? {
                if exclude.contains(r.get_ref(1)?.as_str()?) {
                    continue;
                }
                let bytes: i64 = r.get(2)?;
                if read(u64::try_from(bytes).unwrap_or(0)) {
                    chosen.push(r.get::<_, i64>(0)?);
                    if chosen.len() >= limit {
                        break;
                    }
                }
            }
            Ok(chosen)
        })
        .op("reading the outbox")?;
    let mut rows: Vec<Row> = Vec::with_capacity(chosen.len());
    for seq in chosen {
        let row = store
            .conn
            .prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM captures WHERE seq = ?1"
            ))
            .and_then(|mut s| s.query_row([seq], read_row))
            .op("reading the outbox")?;
        rows.push(row);
    }
    let mut cache = HashMap::new();
    let mut out = Vec::new();
    let mut broken = Vec::new();
    for row in rows {
        let r = CaptureRef {
            seq: row.r.seq,
            capture_id: row.r.capture_id.clone(),
            subject_ref: row.r.subject_ref,
        };
        match open_row(&store.conn, &store.keys, &mut cache, row)? {
            Some(c) => out.push(c),
            None => broken.push(r),
        }
    }
    if !broken.is_empty() {
        let mut w = store.writer()?;
        purge_undecryptable(&mut w, &broken)?;
        w.commit()?;
    }
    Ok(out)
}

/// Purges the captures of `ids` still in the outbox, whose image did not
/// open ([`Pending::open`]): audited and counted like any undecryptable
/// capture. Returns how many were purged.
pub(super) fn purge_undecryptable_ids(
    store: &mut Store,
    ids: &[CaptureId],
) -> Result<usize, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut w = store.writer()?;
    let broken = refs_of(&w, ids)?;
    purge_undecryptable(&mut w, &broken)?;
    w.commit()?;
    Ok(broken.len())
}

/// `ids` as a JSON array, the parameter of the list lookups
/// ([`REFS_OF_SQL`], [`still_queued_sql`]; SQLite reads it with `json_each`).
pub(super) fn id_list(ids: &[CaptureId]) -> rusqlite::Result<String> {
    let list: Vec<&str> = ids.iter().map(CaptureId::as_str).collect();
    serde_json::to_string(&list).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// [`refs_of`]'s query: `?1` a JSON array of capture ids.
pub(super) const REFS_OF_SQL: &str =
    "SELECT c.seq, c.capture_id, c.subject_ref FROM json_each(?1) AS j
     CROSS JOIN captures AS c ON c.capture_id = j.value ORDER BY j.key";

/// [`Store::still_queued`]'s query: `?1` a JSON array of capture ids.
pub(super) fn still_queued_sql() -> String {
    format!(
        "SELECT capture_id FROM captures
         WHERE capture_id IN (SELECT value FROM json_each(?1)) AND {NOT_QUARANTINED}"
    )
}

/// The rows of those of `ids` still in the outbox, in the order of `ids`
/// (one query: `CROSS JOIN` walks the list in order and looks each id up by
/// its index).
fn refs_of(w: &Writer<'_>, ids: &[CaptureId]) -> Result<Vec<CaptureRef>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    id_list(ids)
        .and_then(|list| {
            let mut s = w.tx.prepare_cached(REFS_OF_SQL)?;
            let found = s
                .query_map([list], capture_ref)?
                .collect::<rusqlite::Result<Vec<_>>>();
            found
        })
        .op("looking up captures")
}

/// Purges captures that cannot be decrypted (audited, counted), inside `w`.
fn purge_undecryptable(w: &mut Writer<'_>, broken: &[CaptureRef]) -> Result<(), StoreError> {
    if broken.is_empty() {
        return Ok(());
    }
    tracing::error!(
        count = broken.len(),
        "purging outbox captures that cannot be decrypted"
    );
    delete_rows(
        w,
        broken,
        kind::CAPTURE_PURGED,
        PurgeReason::Undecryptable,
        crate::clock::now(),
    )?;
    Ok(())
}

/// [`ack_in`] in a transaction of its own, on a connection that keeps its
/// temporary data in files (the main one: finishing the delete of a capture
/// whose parts were all acknowledged before a crash). One capture per
/// [`ack_in`] here, so each statement journals only the few pages one
/// capture's delete changes (SQLite keeps up to 64 KiB of a statement journal
/// in memory before it spills to a temporary file); the batched statements
/// run on the ack connection (`Store::second_connection`, `temp_store=MEMORY`).
pub(super) fn ack(
    store: &mut Store,
    capture_ids: &[CaptureId],
    now: i64,
) -> Result<usize, StoreError> {
    let pair = store.pair.clone();
    let _pair = pair.lock().unwrap_or_else(|p| p.into_inner());
    let dirty = store.wal_has_deleted.clone();
    let mut w = store.writer()?;
    let mut deleted = 0;
    for id in capture_ids {
        deleted += ack_in(&mut w, std::slice::from_ref(id), now)?;
    }
    if deleted > 0 {
        // The WAL will hold the pages as they were before the delete.
        dirty.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    w.commit()?;
    Ok(deleted)
}

/// Deletes uploaded captures inside the transaction `w` (audited
/// `capture.uploaded`, counted, data key destroyed with the last capture of
/// a subject); returns how many were still queued. The caller commits and
/// marks the WAL for truncation if any was.
///
/// Crypto-shredding (ARCHITECTURE I4): each capture's key row is deleted
/// with `secure_delete=ON`, as every delete, so no copy of the key survives
/// in the database file (its page is zeroed where the row was; a page freed
/// is zeroed whole). The capture row itself is then deleted with
/// `secure_delete=FAST`: SQLite still zeroes the row in the pages the delete
/// writes anyway, but leaves the freed overflow pages of its sealed blobs as
/// they are, ciphertext under a key that exists nowhere any more, instead of
/// writing zeros over every page of every uploaded image. A row without a
/// key row (none is, after `rekey_legacy`) is deleted with zeroing.
pub(super) fn ack_in(
    w: &mut Writer<'_>,
    capture_ids: &[CaptureId],
    now: i64,
) -> Result<usize, StoreError> {
    let found = refs_of(w, capture_ids)?;
    if found.is_empty() {
        return Ok(0);
    }
    let seqs: Vec<i64> = found.iter().map(|r| r.seq).collect();
    let mut shredded = std::collections::BTreeSet::new();
    for chunk in seqs.chunks(DELETE_STATEMENT_ROWS) {
        let gone: Vec<i64> = seq_list(chunk)
            .and_then(|list| {
                let mut s = w.tx.prepare_cached(DELETE_KEYS_SQL)?;
                let gone = s
                    .query_map([list], |r| r.get::<_, i64>(0))?
                    .collect::<rusqlite::Result<_>>();
                gone
            })
            .op("destroying capture keys")?;
        shredded.extend(gone);
    }
    let (shredded, zeroed): (Vec<i64>, Vec<i64>) =
        seqs.iter().copied().partition(|seq| shredded.contains(seq));
    delete_captures(w, &zeroed)?;
    secure_delete(w, "FAST")?;
    let fast = delete_captures(w, &shredded);
    // Back to zeroing whatever happened: every other delete zeroes.
    secure_delete(w, "ON")?;
    fast?;
    let mut subjects = std::collections::BTreeSet::new();
    for r in &found {
        w.audit(
            now,
            kind::CAPTURE_UPLOADED,
            Some(&r.subject_ref),
            json!({ "capture_id": r.capture_id }),
        )?;
        subjects.insert(r.subject_ref);
    }
    for subject_ref in &subjects {
        destroy_key_if_unused(w, subject_ref)?;
    }
    w.bump(counter::UPLOADED, found.len() as u64)?;
    Ok(found.len())
}

fn delete_captures(w: &Writer<'_>, seqs: &[i64]) -> Result<(), StoreError> {
    for chunk in seqs.chunks(DELETE_STATEMENT_ROWS) {
        seq_list(chunk)
            .and_then(|list| w.tx.prepare_cached(DELETE_CAPTURES_SQL)?.execute([list]))
            .op("deleting uploaded captures")?;
    }
    Ok(())
}

/// At most this many captures per statement of [`DELETE_KEYS_SQL`] and
/// [`DELETE_CAPTURES_SQL`]. A statement's journal holds about a page per
/// capture (the one with its row) besides the index, counter and free-list
/// pages it shares with the others, so it stays within a few hundred KiB of
/// memory on the ack connection however many PUBACKs one batch gathers
/// (`mqtt.inflight` goes up to 1,024, and four windows may wait for their
/// delete).
pub(super) const DELETE_STATEMENT_ROWS: usize = 64;

/// `seqs` as a JSON array, the parameter of [`DELETE_KEYS_SQL`] and
/// [`DELETE_CAPTURES_SQL`].
fn seq_list(seqs: &[i64]) -> rusqlite::Result<String> {
    serde_json::to_string(seqs).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Destroys the keys of the captures of `?1` (a JSON array of `seq`s) and
/// returns the `seq` of each capture that had one. One statement for the
/// whole batch of an acknowledgement (up to [`DELETE_STATEMENT_ROWS`]), as
/// [`DELETE_CAPTURES_SQL`].
pub(super) const DELETE_KEYS_SQL: &str =
    "DELETE FROM capture_keys WHERE capture_seq IN (SELECT value FROM json_each(?1))
     RETURNING capture_seq";

/// Deletes the captures of `?1` (a JSON array of `seq`s), each found by its
/// `seq`. One statement for the whole batch (up to [`DELETE_STATEMENT_ROWS`]): the delete of a capture fires
/// a trigger (`outbox_totals`) and foreign-key actions (`capture_parts`,
/// `capture_keys`), so SQLite keeps a statement journal of every page the
/// statement changes; one statement journals each page once, not once per
/// capture.
pub(super) const DELETE_CAPTURES_SQL: &str =
    "DELETE FROM captures WHERE seq IN (SELECT value FROM json_each(?1))";

/// Sets `PRAGMA secure_delete` of the transaction's connection.
fn secure_delete(w: &Writer<'_>, mode: &str) -> Result<(), StoreError> {
    w.tx.pragma_update(None, "secure_delete", mode)
        .op("setting secure_delete")
}

/// Gives each capture stored before capture keys (schema step
/// `CAPTURE_KEYS`) its own key: its blobs are opened with the subject's
/// data key and sealed again under a new capture key, in transactions of
/// [`REKEY_BATCH`] captures (zeroing on, so the old blobs are overwritten).
/// A capture that cannot be opened is purged, as the outbox read does. When
/// none is left, the `meta` row `capture_keys` records it, so later opens
/// cost one lookup. Returns how many captures it rekeyed.
pub(super) fn rekey_legacy(store: &mut Store) -> Result<u64, StoreError> {
    let done: Option<Vec<u8>> = store
        .conn
        .query_row(
            "SELECT value FROM meta WHERE name = 'capture_keys'",
            [],
            |r| r.get(0),
        )
        .optional()
        .op("reading the capture key mark")?;
    if done.is_some() {
        return Ok(0);
    }
    let mut total = 0;
    while let Some(n) = rekey_batch(store)? {
        total += n;
        // The old blobs' zeroed pages and the new ones leave the WAL
        // before the next batch: the WAL stays within one batch.
        store.checkpoint()?;
    }
    Ok(total)
}

/// One transaction of [`rekey_legacy`]: up to [`REKEY_BATCH`] captures
/// without a key of their own, and no more than [`REKEY_BATCH_BYTES`] of
/// their sealed bytes (always at least one capture), rekeyed (or purged if
/// they cannot be opened), committed; `None` once none is left (then the
/// mark is written). A crash between two batches leaves the database with
/// some captures rekeyed and the rest as before; the next open goes on
/// from there.
pub(super) fn rekey_batch(store: &mut Store) -> Result<Option<u64>, StoreError> {
    let mut w = store.writer()?;
    // The keys and sizes only (the covering index `captures_keys`); the
    // rows are read one by one.
    let keys: Vec<(i64, i64)> =
        w.tx.prepare_cached(
            "SELECT seq, bytes FROM captures WHERE seq NOT IN
             (SELECT capture_seq FROM capture_keys) ORDER BY seq LIMIT ?1",
        )
        .and_then(|mut s| {
            s.query_map([REKEY_BATCH], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .op("finding captures without a key")?;
    let mut sum = 0i64;
    let seqs: Vec<i64> = keys
        .into_iter()
        .enumerate()
        .take_while(|(i, (_, bytes))| {
            sum = sum.saturating_add(*bytes);
            *i == 0 || sum <= REKEY_BATCH_BYTES
        })
        .map(|(_, (seq, _))| seq)
        .collect();
    if seqs.is_empty() {
        w.tx.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES ('capture_keys', X'01')",
            [],
        )
        .op("recording that every capture has its key")?;
        w.commit()?;
        return Ok(None);
    }
    let mut total = 0;
    let mut broken = Vec::new();
    for seq in seqs {
        let row =
            w.tx.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM captures WHERE seq = ?1"
            ))
            .and_then(|mut s| s.query_row([seq], read_row))
            .op("reading a capture without a key")?;
        let sref = row.r.subject_ref;
        let id = row.r.capture_id.as_str();
        let subject_key = match load_key(&w.tx, w.keys, &sref) {
            Ok(k) => k,
            Err(StoreError::Crypto(_)) => None,
            Err(e) => return Err(e),
        };
        let opened = subject_key.as_ref().and_then(|k| {
            let meta = k.open(Part::Meta, id, &sref, &row.meta).ok()?;
            let image = k.open(Part::Image, id, &sref, &row.image).ok()?;
            Some((k, meta, image))
        });
        let Some((subject_key, meta, image)) = opened else {
            broken.push(row.r);
            continue;
        };
        let key = DataKey::generate()?;
        let wrapped = subject_key.wrap_capture_key(&key, id, &sref)?;
        let meta = key.seal(Part::Meta, id, &sref, &meta)?;
        let image = key.seal(Part::Image, id, &sref, &image)?;
        w.tx.prepare_cached("UPDATE captures SET meta = ?1, image = ?2 WHERE seq = ?3")
            .and_then(|mut s| s.execute(params![meta, image, row.r.seq]))
            .op("sealing a capture under its own key")?;
        store_capture_key(&w, row.r.seq, &wrapped)?;
        total += 1;
    }
    purge_undecryptable(&mut w, &broken)?;
    w.commit()?;
    // The old blobs' pages are in the WAL until it is truncated.
    store.set_wal_dirty(true);
    Ok(Some(total))
}

/// Captures rekeyed per transaction by [`rekey_legacy`].
pub(super) const REKEY_BATCH: i64 = 64;

/// Sealed bytes rekeyed per transaction at most (a larger capture goes
/// alone). A batch writes its captures' new blobs and, zeroing, the old
/// ones: about twice this to the WAL, which is truncated after each batch,
/// and the file grows by about this once (the next batch reuses the pages
/// the last one freed). So the rekey at the first open after an upgrade
/// fits in the space reserve (`[storage] reserve_bytes`, 16 MiB by
/// default) that a full disk releases for it (`Store::open`).
pub(super) const REKEY_BATCH_BYTES: i64 = 4 * 1024 * 1024;

/// The status figures. Every part is answered from an index or the totals
/// row, never by reading captures: it runs for every status, also with
/// 100,000 captures queued (schema `QUARANTINE_INDEX`).
pub(super) const STATS_SQL: &str = "SELECT captures, bytes, (SELECT MIN(queued_at) FROM captures),
        (SELECT COUNT(*) FROM captures WHERE quarantined_at IS NOT NULL)
 FROM outbox_totals WHERE id = 1";

pub(super) fn stats(store: &mut Store, now: i64) -> Result<OutboxStats, StoreError> {
    let (captures, bytes, oldest, quarantined): (i64, i64, Option<i64>, i64) = store
        .conn
        .query_row(STATS_SQL, [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .op("reading outbox totals")?;
    Ok(OutboxStats {
        captures: captures.max(0) as u64,
        quarantined: quarantined.max(0) as u64,
        bytes: bytes.max(0) as u64,
        oldest_age_s: oldest
            .map(|t| now.saturating_sub(t).max(0) as u64)
            .unwrap_or(0),
    })
}

/// Turns a stored capture back into the format before capture keys (its
/// blobs sealed under the subject's data key, no key row, no `meta` mark),
/// for the tests of [`rekey_legacy`].
#[cfg(test)]
pub(super) fn make_legacy(store: &mut Store, capture_id: &CaptureId) {
    let w = store.writer().unwrap();
    let row =
        w.tx.query_row(
            &format!("SELECT {ROW_COLUMNS} FROM captures WHERE capture_id = ?1"),
            [capture_id.as_str()],
            read_row,
        )
        .unwrap();
    let sref = row.r.subject_ref;
    let id = capture_id.as_str();
    let subject_key = load_key(&w.tx, w.keys, &sref).unwrap().unwrap();
    let key = subject_key
        .unwrap_capture_key(id, &sref, &row.wrapped_key.unwrap())
        .unwrap();
    let meta = key.open(Part::Meta, id, &sref, &row.meta).unwrap();
    let image = key.open(Part::Image, id, &sref, &row.image).unwrap();
    let meta = subject_key.seal(Part::Meta, id, &sref, &meta).unwrap();
    let image = subject_key.seal(Part::Image, id, &sref, &image).unwrap();
    w.tx.execute(
        "UPDATE captures SET meta = ?1, image = ?2 WHERE seq = ?3",
        params![meta, image, row.r.seq],
    )
    .unwrap();
    w.tx.execute(
        "DELETE FROM capture_keys WHERE capture_seq = ?1",
        [row.r.seq],
    )
    .unwrap();
    w.tx.execute("DELETE FROM meta WHERE name = 'capture_keys'", [])
        .unwrap();
    w.commit().unwrap();
}
