//! The reference receiver's store (`facegate fleet receive`, SPEC "Fleet
//! side"): each capture kept once, parts joined in any arrival order, the
//! whole-image `sha256` checked, and a revoked subject's copies deleted,
//! including in-flight captures that arrive after the receipt.
//!
//! The captures go to a [`CaptureStore`] (a directory, or an object store):
//! `{site}/{device}/{capture_id}.{jpg|png}` and `{capture_id}.json` (the
//! envelope without `image`). The receiver's own state stays in a local
//! state directory (by default the output directory, when that is local):
//! - `deletions.log`: one JSON line per deletion
//!   (`{"subject","site","device","deleted":N,"at"}`);
//! - `.receive/received`: every capture id taken (stored, refused or deleted
//!   on arrival), one per line, so a redelivery is dropped across restarts;
//! - `.receive/parts/`: parts of captures not complete yet, one file each;
//! - `.receive/revocations`: receipts remembered (site, subject, in-flight
//!   ids, time), so late arrivals are deleted;
//! - `.receive/stored`: the index of stored captures (id, site, subject,
//!   keys; a line per capture stored or deleted), so a receipt finds a
//!   subject's captures without listing the store.
//!
//! The state is appended and fsync'd locally: an object store has no
//! append, and listing or reading it per message or per receipt would cost
//! round trips in proportion to everything stored. The store is read once,
//! when a state directory has no index yet (a new state directory, or one
//! of a version before the index).
//!
//! Every write that a message's acknowledgement depends on is durable (a
//! store put has returned; a local file and its directory are fsync'd)
//! before [`Inbox::take`] returns: the caller acknowledges the message only
//! then.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::capture_store::{fsync_dir, write_durably, CaptureStore, StoreError};
use crate::protocol::{Envelope, Receipt};

/// Why the inbox could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// A file or directory of the inbox.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file of the inbox's own state is not what it wrote.
    #[error("{path}: line {line}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The capture store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InboxError + '_ {
    move |source| InboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What became of one received upload message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// The capture is stored (whole, or its last part completed it).
    Stored {
        /// The image's key in the store (`{site}/{device}/{file}`).
        key: String,
    },
    /// A part kept until the others arrive.
    PartKept,
    /// Seen before (a redelivery): nothing done.
    Duplicate,
    /// Its subject was revoked on its site: deleted on arrival, never stored.
    DeletedOnArrival,
    /// Refused: the whole image does not match `sha256`, or the parts are
    /// inconsistent. Logged and counted, never stored.
    Refused {
        /// Why.
        reason: String,
    },
    /// A field cannot name a file safely (site, device, capture id): refused.
    BadName {
        /// Which field.
        field: &'static str,
    },
}

/// One remembered revocation (or purge) of a subject on a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Revocation {
    site: String,
    /// `None` for a purge of everything (only its in-flight ids matter).
    subject: Option<String>,
    device: String,
    in_flight: Vec<String>,
    /// Unix seconds, by the device's clock: the subject's captures that
    /// device took up to then are gone.
    purged_at: i64,
}

/// One line of `deletions.log` (SPEC).
#[derive(Debug, Clone, Serialize)]
struct Deletion<'a> {
    subject: Option<&'a str>,
    site: &'a str,
    device: &'a str,
    deleted: u64,
    at: String,
}

/// A stored capture as the index knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    site: String,
    subject: String,
    image: String,
    meta: String,
}

/// One line of `.receive/stored`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum IndexLine {
    /// A capture stored (its objects put).
    Stored { id: String, capture: Stored },
    /// A capture deleted (its objects removed).
    Deleted { id: String },
}

/// Counts since the inbox was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxCounts {
    /// Captures stored.
    pub stored: u64,
    /// Redeliveries dropped.
    pub duplicates: u64,
    /// Captures refused (digest mismatch, bad parts, bad names).
    pub refused: u64,
    /// Stored captures deleted by receipts.
    pub deleted: u64,
    /// Captures deleted on arrival (revoked before they arrived).
    pub deleted_on_arrival: u64,
}

/// The receiver's durable store. Several receivers (a shared
/// subscription) may use one state directory and one capture store: the
/// lists of ids taken and of receipts are shared append-only files each one
/// reads again before a decision, parts are joined from the shared parts
/// directory, and a capture stored while another receiver took a receipt
/// for it is deleted by whichever of the two comes second.
pub struct Inbox<S: CaptureStore> {
    captures: S,
    /// The state directory (`deletions.log`, `.receive/`).
    root: PathBuf,
    state: PathBuf,
    received: HashSet<String>,
    /// Bytes of `received` read so far.
    received_seen: u64,
    received_log: File,
    /// Bytes of the index (`stored`) read so far.
    index_seen: u64,
    index_log: File,
    revocations: Vec<Revocation>,
    /// Bytes of `revocations` read so far.
    revocations_seen: u64,
    /// capture id → where it is stored.
    index: HashMap<String, Stored>,
    /// Counts since open.
    pub counts: InboxCounts,
}

/// A name that may be one path component: no separators, not `.`/`..`,
/// not empty, printable ASCII from the SPEC id alphabet.
fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Appends one line to an append-only log and fsyncs it.
fn append_line(file: &mut File, path: &Path, line: &str) -> Result<(), InboxError> {
    file.write_all(format!("{line}\n").as_bytes())
        .map_err(io(path))?;
    file.sync_data().map_err(io(path))
}

fn open_append(path: &Path) -> Result<File, InboxError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))
}

/// The metadata file: the envelope without its image.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    v: u8,
    capture_id: String,
    site: String,
    device: String,
    subject: String,
    consent_id: String,
    captured_at: String,
    camera: String,
    content_type: String,
    sha256: String,
}

impl Meta {
    fn of(env: &Envelope) -> Meta {
        Meta {
            v: env.v,
            capture_id: env.capture_id.clone(),
            site: env.site.clone(),
            device: env.device.clone(),
            subject: env.subject.clone(),
            consent_id: env.consent_id.clone(),
            captured_at: crate::clock::rfc3339(env.captured_at),
            camera: env.camera.clone(),
            content_type: env.content_type.clone(),
            sha256: env.sha256.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// Reads the complete lines appended to `path` since byte `seen`; moves
/// `seen` past them.
fn read_new_lines(path: &Path, seen: &mut u64) -> Result<Vec<String>, InboxError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    f.seek(SeekFrom::Start(*seen)).map_err(io(path))?;
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(io(path))?;
    // A line another receiver is still appending is left for next time.
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    *seen += complete as u64;
    Ok(text[..complete]
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

impl<S: CaptureStore> Inbox<S> {
    /// Opens (creating) the inbox with its state in `state_dir` and the
    /// captures in `captures`: reads the ids taken, the remembered receipts
    /// and the stored captures, and removes parts of captures already taken
    /// (left by a crash).
    pub async fn open(captures: S, state_dir: &Path) -> Result<Inbox<S>, InboxError> {
        let state = state_dir.join(".receive");
        fs::create_dir_all(state.join("parts")).map_err(io(&state))?;
        let index_path = state.join("stored");
        if !index_path.exists() {
            // Written whole or not at all: a scan cut short is done again.
            let lines = index_store(&captures).await?;
            write_durably(&index_path, lines.as_bytes())?;
        }
        let mut inbox = Inbox {
            captures,
            root: state_dir.to_path_buf(),
            received_log: open_append(&state.join("received"))?,
            index_seen: 0,
            index_log: open_append(&index_path)?,
            state,
            received: HashSet::new(),
            received_seen: 0,
            revocations: Vec::new(),
            revocations_seen: 0,
            index: HashMap::new(),
            counts: InboxCounts::default(),
        };
        inbox.refresh()?;
        let dir = inbox.state.join("parts");
        let mut taken = Vec::new();
        for e in fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some((id, _)) = name.split_once('.') {
                if inbox.received.contains(id) {
                    taken.push(id.to_string());
                }
            }
        }
        for id in taken {
            inbox.remove_parts(&id)?;
        }
        Ok(inbox)
    }

    /// Reads what other receivers appended to the shared lists.
    fn refresh(&mut self) -> Result<(), InboxError> {
        let path = self.state.join("received");
        for id in read_new_lines(&path, &mut self.received_seen)? {
            self.received.insert(id);
        }
        let path = self.state.join("revocations");
        let before = self.revocations_seen;
        for (i, line) in read_new_lines(&path, &mut self.revocations_seen)?
            .iter()
            .enumerate()
        {
            let rev: Revocation = serde_json::from_str(line).map_err(|e| InboxError::Corrupt {
                path: path.clone(),
                line: i + 1,
                reason: format!("{e} (in the lines after byte {before})"),
            })?;
            if !self.revocations.contains(&rev) {
                self.revocations.push(rev);
            }
        }
        let path = self.state.join("stored");
        let before = self.index_seen;
        for (i, line) in read_new_lines(&path, &mut self.index_seen)?
            .iter()
            .enumerate()
        {
            let line: IndexLine = serde_json::from_str(line).map_err(|e| InboxError::Corrupt {
                path: path.clone(),
                line: i + 1,
                reason: format!("{e} (in the lines after byte {before})"),
            })?;
            match line {
                IndexLine::Stored { id, capture } => self.index.insert(id, capture),
                IndexLine::Deleted { id } => self.index.remove(&id),
            };
        }
        Ok(())
    }

    /// Appends a line to the index (fsync'd).
    fn index_append(&mut self, line: &IndexLine) -> Result<(), InboxError> {
        let path = self.state.join("stored");
        let text = serde_json::to_string(line).unwrap_or_default();
        append_line(&mut self.index_log, &path, &text)
    }

    /// Where the captures are.
    pub fn store(&self) -> &S {
        &self.captures
    }

    /// The state directory (`deletions.log`, `.receive/`).
    pub fn state_dir(&self) -> &Path {
        &self.root
    }

    /// How many captures this receiver knows stored.
    pub fn stored(&self) -> usize {
        self.index.len()
    }

    /// Captures with some parts waiting for the rest.
    pub fn incomplete(&self) -> usize {
        let dir = self.state.join("parts");
        let ids: HashSet<String> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.ends_with(".part")
                    .then(|| name.split('.').next().map(str::to_string))
                    .flatten()
            })
            .collect();
        ids.len()
    }

    /// Whether a remembered receipt covers this capture.
    fn revoked(&self, env: &Envelope) -> bool {
        self.revocations.iter().any(|r| {
            r.site == env.site
                && (r.in_flight.contains(&env.capture_id)
                    || (r.subject.as_deref() == Some(env.subject.as_str())
                        && r.device == env.device
                        && env.captured_at <= r.purged_at))
        })
    }

    /// Takes one upload message (an envelope, whole or a part). Returns once
    /// what it did is durable: the caller acknowledges the message then.
    pub async fn take(&mut self, env: Envelope, now: i64) -> Result<Taken, InboxError> {
        for (field, value) in [
            ("site", &env.site),
            ("device", &env.device),
            ("capture_id", &env.capture_id),
        ] {
            if !safe_component(value) {
                self.counts.refused += 1;
                return Ok(Taken::BadName { field });
            }
        }
        self.refresh()?;
        if self.received.contains(&env.capture_id) {
            self.counts.duplicates += 1;
            return Ok(Taken::Duplicate);
        }
        if self.revoked(&env) {
            self.delete_on_arrival(&env, now).await?;
            return Ok(Taken::DeletedOnArrival);
        }
        let whole = match (env.part, env.parts) {
            (None, None) => env,
            (Some(part), Some(parts)) if part < parts => {
                write_durably(
                    &self.part_path(&env.capture_id, parts, part),
                    &env.to_bytes(),
                )?;
                match self.joined(&env.capture_id, parts)? {
                    Some(Ok(whole)) => whole,
                    Some(Err(reason)) => {
                        self.remove_parts(&env.capture_id)?;
                        self.mark_received(&env.capture_id)?;
                        self.counts.refused += 1;
                        return Ok(Taken::Refused { reason });
                    }
                    None => return Ok(Taken::PartKept),
                }
            }
            (part, parts) => {
                self.mark_received(&env.capture_id)?;
                self.counts.refused += 1;
                return Ok(Taken::Refused {
                    reason: format!("bad part numbers (part {part:?} of {parts:?})"),
                });
            }
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, &whole.image);
        if digest.as_ref() != whole.sha256 {
            self.remove_parts(&whole.capture_id)?;
            self.mark_received(&whole.capture_id)?;
            self.counts.refused += 1;
            return Ok(Taken::Refused {
                reason: "the image does not match its sha256".into(),
            });
        }
        let key = self.put(&whole).await?;
        self.remove_parts(&whole.capture_id)?;
        // Another receiver may have taken a receipt for it meanwhile: it
        // appended the receipt before looking for stored captures, so one of
        // the two sees the other.
        self.refresh()?;
        if self.revoked(&whole) {
            self.delete_stored(&whole.capture_id).await?;
            self.log_deletion(Some(&whole.subject), &whole.site, &whole.device, 1, now)?;
            self.counts.stored = self.counts.stored.saturating_sub(1);
            self.counts.deleted_on_arrival += 1;
            return Ok(Taken::DeletedOnArrival);
        }
        Ok(Taken::Stored { key })
    }

    async fn delete_on_arrival(&mut self, env: &Envelope, now: i64) -> Result<(), InboxError> {
        self.remove_parts(&env.capture_id)?;
        // A redelivery after a crash between the image's and the metadata's
        // put finds the image alone, which no index knows: removed here.
        let base = format!("{}/{}/{}", env.site, env.device, env.capture_id);
        for key in [
            format!("{base}.{}", ext_of(&env.content_type)),
            format!("{base}.json"),
        ] {
            self.captures.delete(&key).await?;
        }
        if self.index.remove(&env.capture_id).is_some() {
            self.index_append(&IndexLine::Deleted {
                id: env.capture_id.clone(),
            })?;
        }
        self.mark_received(&env.capture_id)?;
        self.log_deletion(Some(&env.subject), &env.site, &env.device, 1, now)?;
        self.counts.deleted_on_arrival += 1;
        Ok(())
    }

    /// The whole capture once every part of the `parts`-way split is on
    /// disk: `Some(Ok)` joined in `part` order, `Some(Err)` when the parts
    /// disagree, `None` while some are missing.
    #[allow(clippy::type_complexity)]
    fn joined(
        &self,
        capture_id: &str,
        parts: u32,
    ) -> Result<Option<Result<Envelope, String>>, InboxError> {
        let mut set = BTreeMap::new();
        for part in 0..parts {
            let path = self.part_path(capture_id, parts, part);
            match fs::read(&path) {
                Ok(bytes) => {
                    set.insert(part, bytes);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io(&path)(e)),
            }
        }
        let mut whole: Option<Envelope> = None;
        let mut image = Vec::new();
        for (part, bytes) in set {
            let env = match Envelope::from_bytes(&bytes) {
                Ok(env) => env,
                Err(e) => return Ok(Some(Err(format!("part {part}: {e}")))),
            };
            image.extend_from_slice(&env.image);
            if let Some(first) = &whole {
                if first.sha256 != env.sha256 || first.subject != env.subject {
                    return Ok(Some(Err(format!(
                        "part {part} names another image or subject than part 0"
                    ))));
                }
            } else {
                whole = Some(Envelope {
                    image: Vec::new(),
                    part: None,
                    parts: None,
                    ..env
                });
            }
        }
        Ok(whole.map(|w| Ok(Envelope { image, ..w })))
    }

    fn part_path(&self, capture_id: &str, parts: u32, part: u32) -> PathBuf {
        self.state
            .join("parts")
            .join(format!("{capture_id}.{parts}.{part}.part"))
    }

    fn remove_parts(&mut self, capture_id: &str) -> Result<(), InboxError> {
        let dir = self.state.join("parts");
        let prefix = format!("{capture_id}.");
        let mut removed = false;
        for e in fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let p = e.path();
                match fs::remove_file(&p) {
                    Ok(()) => removed = true,
                    // Another receiver removed it first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&p)(e)),
                }
            }
        }
        if removed {
            fsync_dir(&dir)?;
        }
        Ok(())
    }

    fn mark_received(&mut self, capture_id: &str) -> Result<(), InboxError> {
        let path = self.state.join("received");
        append_line(&mut self.received_log, &path, capture_id)?;
        self.received.insert(capture_id.to_string());
        Ok(())
    }

    /// Writes the whole capture: image, then metadata, then the id as
    /// taken. Returns the image's key.
    async fn put(&mut self, env: &Envelope) -> Result<String, InboxError> {
        let base = format!("{}/{}/{}", env.site, env.device, env.capture_id);
        let image = format!("{base}.{}", ext_of(&env.content_type));
        let meta = format!("{base}.json");
        // Two receivers sharing the store may both complete the same parts
        // at once: both write the same bytes under the same keys, so the
        // capture is still there once; the second to index it counts a
        // duplicate.
        self.captures.put(&image, env.image.clone()).await?;
        let text = serde_json::to_vec_pretty(&Meta::of(env)).unwrap_or_default();
        self.captures.put(&meta, text).await?;
        // Indexed before the receipts are read again (`take`): a receiver
        // taking a receipt meanwhile appended it before reading the index,
        // so one of the two sees the other.
        self.refresh()?;
        let again = self.index.contains_key(&env.capture_id);
        let capture = Stored {
            site: env.site.clone(),
            subject: env.subject.clone(),
            image: image.clone(),
            meta,
        };
        self.index_append(&IndexLine::Stored {
            id: env.capture_id.clone(),
            capture: capture.clone(),
        })?;
        self.mark_received(&env.capture_id)?;
        self.index.insert(env.capture_id.clone(), capture);
        if again {
            self.counts.duplicates += 1;
        } else {
            self.counts.stored += 1;
        }
        Ok(image)
    }

    /// Removes a stored capture's objects (durably); `false` when it was
    /// not stored.
    async fn delete_stored(&mut self, capture_id: &str) -> Result<bool, InboxError> {
        let Some(s) = self.index.remove(capture_id) else {
            return Ok(false);
        };
        // The image first: metadata left by a crash in between is found by
        // the next receipt and its image deleted again (a no-op).
        self.captures.delete(&s.image).await?;
        self.captures.delete(&s.meta).await?;
        self.index_append(&IndexLine::Deleted {
            id: capture_id.to_string(),
        })?;
        Ok(true)
    }

    fn log_deletion(
        &self,
        subject: Option<&str>,
        site: &str,
        device: &str,
        deleted: u64,
        now: i64,
    ) -> Result<(), InboxError> {
        let path = self.root.join("deletions.log");
        let line = serde_json::to_string(&Deletion {
            subject,
            site,
            device,
            deleted,
            at: crate::clock::rfc3339(now),
        })
        .unwrap_or_default();
        let mut f = open_append(&path)?;
        append_line(&mut f, &path, &line)
    }

    /// A purge receipt from `device` on `site`: deletes every stored capture
    /// of the receipt's subject on the site, and the in-flight captures it
    /// names; remembers it so that those arriving later are deleted on
    /// arrival. Appends one line to `deletions.log`. Returns how many stored
    /// captures were deleted.
    pub async fn apply_receipt(
        &mut self,
        site: &str,
        device: &str,
        receipt: &Receipt,
        now: i64,
    ) -> Result<u64, InboxError> {
        let subject = receipt.subject.as_ref().map(|s| s.as_str().to_string());
        let in_flight: Vec<String> = receipt
            .in_flight
            .iter()
            .map(|id| id.as_str().to_string())
            .collect();
        let rev = Revocation {
            site: site.to_string(),
            subject: subject.clone(),
            device: device.to_string(),
            in_flight: in_flight.clone(),
            purged_at: receipt.purged_at,
        };
        // Remembered first (see `take`): a capture stored from now on is
        // deleted by its receiver; one stored before is found below.
        self.refresh()?;
        if !self.revocations.contains(&rev) {
            let path = self.state.join("revocations");
            let mut f = open_append(&path)?;
            append_line(
                &mut f,
                &path,
                &serde_json::to_string(&rev).unwrap_or_default(),
            )?;
            self.revocations.push(rev);
        }
        let doomed: Vec<String> = self
            .index
            .iter()
            .filter(|(id, s)| {
                s.site == site && (in_flight.contains(id) || Some(&s.subject) == subject.as_ref())
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut deleted = 0;
        for id in &doomed {
            if self.delete_stored(id).await? {
                deleted += 1;
            }
        }
        // Parts waiting for the rest: the in-flight ones, and any other of
        // the subject's on this site (none may stay on disk after a receipt).
        let mut partial: Vec<String> = in_flight.clone();
        let dir = self.state.join("parts");
        for e in fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let Ok(bytes) = fs::read(e.path()) else {
                continue;
            };
            if let Ok(env) = Envelope::from_bytes(&bytes) {
                if env.site == site && Some(&env.subject) == subject.as_ref() {
                    partial.push(env.capture_id);
                }
            }
        }
        for id in &partial {
            self.remove_parts(id)?;
        }
        self.counts.deleted += deleted;
        self.log_deletion(subject.as_deref(), site, device, deleted, now)?;
        Ok(deleted)
    }
}

/// The index of what `captures` holds, as lines of `.receive/stored`, from
/// its `{site}/{device}/*.json`: read once, for a state directory without an
/// index.
async fn index_store<S: CaptureStore>(captures: &S) -> Result<String, InboxError> {
    let mut lines = String::new();
    for key in captures.list(None).await? {
        let Some(base) = key.strip_suffix(".json") else {
            continue;
        };
        // Gone meanwhile, or not ours: not indexed.
        let Some(text) = captures.get(&key).await? else {
            continue;
        };
        let Ok(meta) = serde_json::from_slice::<Meta>(&text) else {
            continue;
        };
        let line = IndexLine::Stored {
            id: meta.capture_id.clone(),
            capture: Stored {
                image: format!("{base}.{}", ext_of(&meta.content_type)),
                site: meta.site,
                subject: meta.subject,
                meta: key.clone(),
            },
        };
        lines.push_str(&serde_json::to_string(&line).unwrap_or_default());
        lines.push('\n');
    }
    Ok(lines)
}

/// The file extension for a content type.
fn ext_of(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => "png",
        _ => "jpg",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::capture_store::{DirStore, ObjectCaptures};
    use crate::ids::{CaptureId, SubjectId};
    use crate::protocol::parts::slice;

    const NOW: i64 = 1_795_858_382;

    fn envelope(id: &str, subject: &str, image: &[u8]) -> Envelope {
        Envelope {
            v: 1,
            capture_id: id.into(),
            site: "lobby".into(),
            device: "term-01".into(),
            subject: subject.into(),
            consent_id: "c-1".into(),
            captured_at: NOW - 60,
            camera: "cam".into(),
            content_type: "image/jpeg".into(),
            sha256: ring::digest::digest(&ring::digest::SHA256, image)
                .as_ref()
                .try_into()
                .unwrap(),
            image: image.to_vec(),
            part: None,
            parts: None,
        }
    }

    fn parts_of(env: &Envelope, n: usize) -> Vec<Envelope> {
        let size = env.image.len().div_ceil(n);
        let chunks: Vec<&[u8]> = env.image.chunks(size).collect();
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut p = env.clone();
                p.image = c.to_vec();
                p.part = Some(i as u32);
                p.parts = Some(chunks.len() as u32);
                p
            })
            .collect()
    }

    fn receipt(subject: Option<&str>, in_flight: &[&str]) -> Receipt {
        Receipt {
            subject: subject.map(|s| SubjectId::new(s).unwrap()),
            purged: 1,
            in_flight: in_flight.iter().map(|id| CaptureId::new(*id)).collect(),
            purged_at: NOW,
            all: None,
            consents_remaining: Some(0),
        }
    }

    async fn whole_capture_stored_once_across_restarts<S: CaptureStore + Clone>(
        store: S,
        state: &Path,
    ) {
        let env = envelope("id-1", "S-1", b"jpeg bytes");
        let mut inbox = Inbox::open(store.clone(), state).await.unwrap();
        let Taken::Stored { key } = inbox.take(env.clone(), NOW).await.unwrap() else {
            panic!("not stored")
        };
        assert_eq!(store.get(&key).await.unwrap().unwrap(), b"jpeg bytes");
        assert_eq!(key, "lobby/term-01/id-1.jpg");
        let meta: serde_json::Value =
            serde_json::from_slice(&store.get("lobby/term-01/id-1.json").await.unwrap().unwrap())
                .unwrap();
        assert_eq!(meta["subject"], "S-1");
        assert!(meta.get("image").is_none());
        assert_eq!(
            inbox.take(env.clone(), NOW).await.unwrap(),
            Taken::Duplicate
        );
        drop(inbox);
        let mut inbox = Inbox::open(store.clone(), state).await.unwrap();
        assert_eq!(inbox.stored(), 1);
        assert_eq!(inbox.take(env, NOW).await.unwrap(), Taken::Duplicate);
    }

    async fn parts_in_any_order_and_across_a_restart<S: CaptureStore + Clone>(
        store: S,
        state: &Path,
    ) {
        let image: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let env = envelope("id-2", "S-1", &image);
        let mut parts = parts_of(&env, 4);
        parts.reverse();
        let mut inbox = Inbox::open(store.clone(), state).await.unwrap();
        assert_eq!(
            inbox.take(parts[0].clone(), NOW).await.unwrap(),
            Taken::PartKept
        );
        assert_eq!(
            inbox.take(parts[1].clone(), NOW).await.unwrap(),
            Taken::PartKept
        );
        // The same part again is kept once.
        assert_eq!(
            inbox.take(parts[1].clone(), NOW).await.unwrap(),
            Taken::PartKept
        );
        drop(inbox);
        let mut inbox = Inbox::open(store.clone(), state).await.unwrap();
        assert_eq!(inbox.incomplete(), 1);
        assert_eq!(
            inbox.take(parts[2].clone(), NOW).await.unwrap(),
            Taken::PartKept
        );
        let Taken::Stored { key } = inbox.take(parts[3].clone(), NOW).await.unwrap() else {
            panic!("not stored")
        };
        assert_eq!(store.get(&key).await.unwrap().unwrap(), image);
        assert_eq!(
            fs::read_dir(state.join(".receive/parts")).unwrap().count(),
            0
        );
        assert_eq!(
            inbox.take(parts[0].clone(), NOW).await.unwrap(),
            Taken::Duplicate
        );
    }

    async fn a_corrupted_part_is_refused_and_nothing_stored<S: CaptureStore + Clone>(
        store: S,
        state: &Path,
    ) {
        let env = envelope("id-3", "S-1", b"0123456789abcdef");
        let mut parts = parts_of(&env, 2);
        parts[1].image[0] ^= 1;
        let mut inbox = Inbox::open(store.clone(), state).await.unwrap();
        assert_eq!(
            inbox.take(parts[0].clone(), NOW).await.unwrap(),
            Taken::PartKept
        );
        assert!(matches!(
            inbox.take(parts[1].clone(), NOW).await.unwrap(),
            Taken::Refused { .. }
        ));
        assert_eq!(inbox.stored(), 0);
        assert!(!store.exists("lobby/term-01/id-3.jpg").await.unwrap());
        assert_eq!(inbox.counts.refused, 1);
    }

    async fn a_receipt_deletes_the_subjects_copies_and_late_in_flight_arrivals<
        S: CaptureStore + Clone,
    >(
        store: S,
        state: &Path,
    ) {
        let mut inbox = Inbox::open(store.clone(), state).await.unwrap();
        inbox.take(envelope("a", "S-1", b"a"), NOW).await.unwrap();
        inbox.take(envelope("b", "S-1", b"b"), NOW).await.unwrap();
        inbox.take(envelope("c", "S-2", b"c"), NOW).await.unwrap();
        let late = envelope("d", "S-1", b"d");
        let late_parts = parts_of(&envelope("e", "S-1", b"eeee"), 2);
        inbox.take(late_parts[0].clone(), NOW).await.unwrap();
        // A part of another capture of S-1 that the receipt does not name.
        let unnamed = parts_of(&envelope("g", "S-1", b"gggg"), 2);
        inbox.take(unnamed[0].clone(), NOW).await.unwrap();
        let deleted = inbox
            .apply_receipt("lobby", "term-01", &receipt(Some("S-1"), &["d", "e"]), NOW)
            .await
            .unwrap();
        assert_eq!(deleted, 2);
        assert!(!store.exists("lobby/term-01/a.jpg").await.unwrap());
        assert!(!store.exists("lobby/term-01/b.json").await.unwrap());
        assert!(store.exists("lobby/term-01/c.jpg").await.unwrap());
        assert_eq!(
            fs::read_dir(state.join(".receive/parts")).unwrap().count(),
            0,
            "the in-flight capture's parts are gone"
        );
        drop(inbox);
        // After a restart the revocation is still remembered.
        let mut inbox = Inbox::open(store.clone(), state).await.unwrap();
        assert_eq!(
            inbox.take(late, NOW).await.unwrap(),
            Taken::DeletedOnArrival
        );
        assert_eq!(
            inbox.take(late_parts[1].clone(), NOW).await.unwrap(),
            Taken::DeletedOnArrival
        );
        assert!(!store.exists("lobby/term-01/d.jpg").await.unwrap());
        // A new capture after the revocation (a new consent) is kept.
        let mut fresh = envelope("f", "S-1", b"f");
        fresh.captured_at = NOW + 10;
        assert!(matches!(
            inbox.take(fresh, NOW + 20).await.unwrap(),
            Taken::Stored { .. }
        ));
        let log: Vec<serde_json::Value> = fs::read_to_string(state.join("deletions.log"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(log.len(), 3, "{log:?}");
        assert_eq!(log[0]["subject"], "S-1");
        assert_eq!(log[0]["site"], "lobby");
        assert_eq!(log[0]["device"], "term-01");
        assert_eq!(log[0]["deleted"], 2);
        assert_eq!(log[1]["deleted"], 1);
    }

    async fn names_that_could_leave_the_directory_are_refused<S: CaptureStore + Clone>(
        store: S,
        state: &Path,
    ) {
        let mut inbox = Inbox::open(store.clone(), state).await.unwrap();
        for (field, bad) in [("site", "../x"), ("device", ".."), ("capture_id", "a/b")] {
            let mut env = envelope("ok", "S-1", b"x");
            match field {
                "site" => env.site = bad.into(),
                "device" => env.device = bad.into(),
                _ => env.capture_id = bad.into(),
            }
            assert_eq!(
                inbox.take(env, NOW).await.unwrap(),
                Taken::BadName { field }
            );
        }
        assert_eq!(inbox.stored(), 0);
    }

    async fn split_parts_match_what_devices_send<S: CaptureStore + Clone>(store: S, state: &Path) {
        // The device's own splitter produces parts the inbox joins.
        let image: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let env = envelope("id-9", "S-1", &image);
        let mut inbox = Inbox::open(store.clone(), state).await.unwrap();
        let mut last = None;
        for i in 0..3u32 {
            let mut p = env.clone();
            p.image = image[slice(image.len(), 3, i)].to_vec();
            p.part = Some(i);
            p.parts = Some(3);
            last = Some(inbox.take(p, NOW).await.unwrap());
        }
        assert!(matches!(last, Some(Taken::Stored { .. })));
    }

    async fn two_receivers_on_one_directory_share_parts_ids_and_receipts<
        S: CaptureStore + Clone,
    >(
        store: S,
        state: &Path,
    ) {
        let mut a = Inbox::open(store.clone(), state).await.unwrap();
        let mut b = Inbox::open(store.clone(), state).await.unwrap();
        // The parts of one capture split between the two.
        let image: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
        let parts = parts_of(&envelope("p", "S-1", &image), 3);
        assert_eq!(
            a.take(parts[0].clone(), NOW).await.unwrap(),
            Taken::PartKept
        );
        assert_eq!(
            b.take(parts[2].clone(), NOW).await.unwrap(),
            Taken::PartKept
        );
        assert_eq!(b.incomplete(), 1);
        let Taken::Stored { key } = a.take(parts[1].clone(), NOW).await.unwrap() else {
            panic!("not joined from the shared parts")
        };
        assert_eq!(store.get(&key).await.unwrap().unwrap(), image);
        // A redelivery to the other one is a duplicate.
        assert_eq!(
            b.take(parts[2].clone(), NOW).await.unwrap(),
            Taken::Duplicate
        );
        // b stored one of S-2 before a takes the receipt: a finds it.
        b.take(envelope("x", "S-2", b"x"), NOW).await.unwrap();
        assert_eq!(
            a.apply_receipt("lobby", "term-01", &receipt(Some("S-2"), &["late"]), NOW)
                .await
                .unwrap(),
            1
        );
        assert!(!store.exists("lobby/term-01/x.jpg").await.unwrap());
        // The in-flight one arrives at b, which never saw the receipt.
        assert_eq!(
            b.take(envelope("late", "S-2", b"l"), NOW).await.unwrap(),
            Taken::DeletedOnArrival
        );
        assert!(!store.exists("lobby/term-01/late.jpg").await.unwrap());
    }

    async fn an_image_left_alone_by_a_crash_goes_with_the_redelivery<S: CaptureStore + Clone>(
        store: S,
        state: &Path,
    ) {
        // A crash after the image's put, before its metadata's: the message
        // was not acknowledged, no index knows the image.
        store
            .put("lobby/term-01/o.jpg", b"o".to_vec())
            .await
            .unwrap();
        let mut inbox = Inbox::open(store.clone(), state).await.unwrap();
        assert_eq!(inbox.stored(), 0);
        inbox
            .apply_receipt("lobby", "term-01", &receipt(Some("S-1"), &[]), NOW)
            .await
            .unwrap();
        // The broker hands the message over again: deleted on arrival, and
        // the image left before goes too.
        assert_eq!(
            inbox.take(envelope("o", "S-1", b"o"), NOW).await.unwrap(),
            Taken::DeletedOnArrival
        );
        assert!(!store.exists("lobby/term-01/o.jpg").await.unwrap());
    }

    async fn a_new_state_directory_indexes_what_the_store_holds<S: CaptureStore + Clone>(
        store: S,
        state: &Path,
    ) {
        let mut inbox = Inbox::open(store.clone(), state).await.unwrap();
        inbox.take(envelope("a", "S-1", b"a"), NOW).await.unwrap();
        inbox.take(envelope("b", "S-2", b"b"), NOW).await.unwrap();
        drop(inbox);
        // Another state directory on the same store (or one from before the
        // index): the store is read once, and a receipt finds S-1's capture.
        let other = tempfile::tempdir().unwrap();
        let mut inbox = Inbox::open(store.clone(), other.path()).await.unwrap();
        assert_eq!(inbox.stored(), 2);
        assert_eq!(
            inbox
                .apply_receipt("lobby", "term-01", &receipt(Some("S-1"), &[]), NOW)
                .await
                .unwrap(),
            1
        );
        assert!(!store.exists("lobby/term-01/a.jpg").await.unwrap());
        assert!(store.exists("lobby/term-01/b.jpg").await.unwrap());
        // Opened again, it keeps its index (the deletion included).
        drop(inbox);
        let inbox = Inbox::open(store.clone(), other.path()).await.unwrap();
        assert_eq!(inbox.stored(), 1);
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Each scenario on a directory holding both the captures and the
    /// state (the default), and on an object store with the state apart.
    macro_rules! on_every_store {
        ($($name:ident),* $(,)?) => {
            mod on_a_directory {
                $(
                    #[test]
                    fn $name() {
                        let dir = tempfile::tempdir().unwrap();
                        let store = super::DirStore::open(dir.path()).unwrap();
                        super::block(super::$name(store, dir.path()));
                    }
                )*
            }
            mod on_an_object_store {
                $(
                    #[test]
                    fn $name() {
                        let state = tempfile::tempdir().unwrap();
                        let store = super::ObjectCaptures::new(
                            std::sync::Arc::new(object_store::memory::InMemory::new()),
                            "memory",
                        );
                        super::block(super::$name(store, state.path()));
                    }
                )*
            }
        };
    }

    on_every_store!(
        whole_capture_stored_once_across_restarts,
        parts_in_any_order_and_across_a_restart,
        a_corrupted_part_is_refused_and_nothing_stored,
        a_receipt_deletes_the_subjects_copies_and_late_in_flight_arrivals,
        names_that_could_leave_the_directory_are_refused,
        split_parts_match_what_devices_send,
        two_receivers_on_one_directory_share_parts_ids_and_receipts,
        an_image_left_alone_by_a_crash_goes_with_the_redelivery,
        a_new_state_directory_indexes_what_the_store_holds,
    );
}
