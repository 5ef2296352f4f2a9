//! The reference receiver's store (`facegate fleet receive`, SPEC "Fleet
//! side"): each capture kept once, parts joined in any arrival order, the
//! whole-image `sha256` checked, and a revoked subject's copies deleted,
//! including in-flight captures that arrive after the receipt.
//!
//! Layout under the output directory:
//! - `{site}/{device}/{capture_id}.{jpg|png}` and `{capture_id}.json` (the
//!   envelope without `image`);
//! - `deletions.log`: one JSON line per deletion
//!   (`{"subject","site","device","deleted":N,"at"}`);
//! - `.receive/received`: every capture id taken (stored, refused or deleted
//!   on arrival), one per line, so a redelivery is dropped across restarts;
//! - `.receive/parts/`: parts of captures not complete yet, one file each;
//! - `.receive/revocations`: receipts remembered (site, subject, in-flight
//!   ids, time), so late arrivals are deleted.
//!
//! Every write that a message's acknowledgement depends on is fsync'd
//! (file, then directory) before [`Inbox::take`] returns: the caller
//! acknowledges the message only then.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::parts::ReassemblyError;
use crate::protocol::{Envelope, Reassembler, Receipt};

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
        /// The image file.
        path: PathBuf,
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
#[derive(Debug, Clone)]
struct Stored {
    site: String,
    subject: String,
    image: PathBuf,
    meta: PathBuf,
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

/// The receiver's durable store.
pub struct Inbox {
    out: PathBuf,
    state: PathBuf,
    received: HashSet<String>,
    received_log: File,
    revocations: Vec<Revocation>,
    reassembler: Reassembler,
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

fn fsync_dir(dir: &Path) -> Result<(), InboxError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Writes `bytes` to `path` durably: a temporary file, fsync, rename, fsync
/// of the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), InboxError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    fsync_dir(dir)
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

fn read_lines(path: &Path) -> Result<Vec<String>, InboxError> {
    match File::open(path) {
        Ok(f) => BufReader::new(f)
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .map_err(io(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(path)(e)),
    }
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

impl Inbox {
    /// Opens (creating) the inbox in `out`: reads the ids taken, the
    /// remembered revocations, the stored captures and the parts waiting.
    pub fn open(out: &Path) -> Result<Inbox, InboxError> {
        let state = out.join(".receive");
        fs::create_dir_all(state.join("parts")).map_err(io(&state))?;
        let received_path = state.join("received");
        let received: HashSet<String> = read_lines(&received_path)?
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect();
        let revocations_path = state.join("revocations");
        let mut revocations = Vec::new();
        for (i, line) in read_lines(&revocations_path)?.iter().enumerate() {
            if line.is_empty() {
                continue;
            }
            revocations.push(serde_json::from_str(line).map_err(|e| InboxError::Corrupt {
                path: revocations_path.clone(),
                line: i + 1,
                reason: e.to_string(),
            })?);
        }
        let mut inbox = Inbox {
            out: out.to_path_buf(),
            received_log: open_append(&received_path)?,
            state,
            received,
            revocations,
            reassembler: Reassembler::new(),
            index: HashMap::new(),
            counts: InboxCounts::default(),
        };
        inbox.index_stored()?;
        inbox.reload_parts()?;
        Ok(inbox)
    }

    /// Where captures and `deletions.log` are.
    pub fn dir(&self) -> &Path {
        &self.out
    }

    /// How many captures are stored.
    pub fn stored(&self) -> usize {
        self.index.len()
    }

    /// Captures with some parts waiting for the rest.
    pub fn incomplete(&self) -> usize {
        self.reassembler.incomplete()
    }

    /// Reads `{site}/{device}/*.json` into the index.
    fn index_stored(&mut self) -> Result<(), InboxError> {
        let Ok(sites) = fs::read_dir(&self.out) else {
            return Ok(());
        };
        for site in sites.flatten() {
            let site_path = site.path();
            if site.file_name().to_string_lossy().starts_with('.') || !site_path.is_dir() {
                continue;
            }
            for device in fs::read_dir(&site_path).map_err(io(&site_path))?.flatten() {
                let dev_path = device.path();
                if !dev_path.is_dir() {
                    continue;
                }
                for f in fs::read_dir(&dev_path).map_err(io(&dev_path))?.flatten() {
                    let p = f.path();
                    if p.extension().and_then(|e| e.to_str()) != Some("json") {
                        continue;
                    }
                    let Ok(text) = fs::read(&p) else { continue };
                    let Ok(meta) = serde_json::from_slice::<Meta>(&text) else {
                        continue;
                    };
                    let image = p.with_extension(ext_of(&meta.content_type));
                    self.index.insert(
                        meta.capture_id.clone(),
                        Stored {
                            site: meta.site,
                            subject: meta.subject,
                            image,
                            meta: p,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Feeds the parts kept on disk back into the reassembler.
    fn reload_parts(&mut self) -> Result<(), InboxError> {
        let dir = self.state.join("parts");
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("part"))
            .collect();
        files.sort();
        for p in files {
            let Ok(bytes) = fs::read(&p) else { continue };
            let Ok(env) = serde_json::from_slice::<Envelope>(&bytes) else {
                let _ = fs::remove_file(&p);
                continue;
            };
            // A part whose capture completed before a crash: its files are
            // still here but the capture is taken.
            if self.received.contains(&env.capture_id) {
                self.remove_parts(&env.capture_id)?;
                continue;
            }
            self.join_part(env)?;
        }
        Ok(())
    }

    /// Whether a remembered revocation covers this capture.
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
    pub fn take(&mut self, env: Envelope, now: i64) -> Result<Taken, InboxError> {
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
        if self.received.contains(&env.capture_id) {
            self.counts.duplicates += 1;
            return Ok(Taken::Duplicate);
        }
        if self.revoked(&env) {
            let (site, device, subject) =
                (env.site.clone(), env.device.clone(), env.subject.clone());
            self.remove_parts(&env.capture_id)?;
            self.mark_received(&env.capture_id)?;
            self.log_deletion(Some(&subject), &site, &device, 1, now)?;
            self.counts.deleted_on_arrival += 1;
            return Ok(Taken::DeletedOnArrival);
        }
        if env.part.is_some() || env.parts.is_some() {
            let path = self.part_path(&env);
            if let (Some(_), Some(_)) = (env.part, env.parts) {
                let bytes = env.to_bytes();
                write_durably(&path, &bytes)?;
            }
        }
        match self.join_part(env)? {
            Some(taken) => Ok(taken),
            None => Ok(Taken::PartKept),
        }
    }

    /// Gives the envelope to the reassembler; stores the capture when it is
    /// whole. `None` while parts are missing.
    fn join_part(&mut self, env: Envelope) -> Result<Option<Taken>, InboxError> {
        let capture_id = env.capture_id.clone();
        match self.reassembler.add(env) {
            Ok(None) => Ok(None),
            Ok(Some(whole)) => {
                let path = self.store(&whole)?;
                self.remove_parts(&capture_id)?;
                Ok(Some(Taken::Stored { path }))
            }
            Err(e) => {
                let reason = match &e {
                    ReassemblyError::DigestMismatch { .. } => {
                        "the image does not match its sha256".to_string()
                    }
                    other => other.to_string(),
                };
                self.remove_parts(&capture_id)?;
                self.mark_received(&capture_id)?;
                self.counts.refused += 1;
                Ok(Some(Taken::Refused { reason }))
            }
        }
    }

    fn part_path(&self, env: &Envelope) -> PathBuf {
        self.state.join("parts").join(format!(
            "{}.{}.{}.part",
            env.capture_id,
            env.parts.unwrap_or(0),
            env.part.unwrap_or(0)
        ))
    }

    fn remove_parts(&mut self, capture_id: &str) -> Result<(), InboxError> {
        let dir = self.state.join("parts");
        let prefix = format!("{capture_id}.");
        let mut removed = false;
        for e in fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let p = e.path();
                fs::remove_file(&p).map_err(io(&p))?;
                removed = true;
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
    /// taken.
    fn store(&mut self, env: &Envelope) -> Result<PathBuf, InboxError> {
        let dir = self.out.join(&env.site).join(&env.device);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let image = dir.join(format!("{}.{}", env.capture_id, ext_of(&env.content_type)));
        let meta = dir.join(format!("{}.json", env.capture_id));
        write_durably(&image, &env.image)?;
        let text = serde_json::to_vec_pretty(&Meta::of(env)).unwrap_or_default();
        write_durably(&meta, &text)?;
        self.mark_received(&env.capture_id)?;
        self.index.insert(
            env.capture_id.clone(),
            Stored {
                site: env.site.clone(),
                subject: env.subject.clone(),
                image: image.clone(),
                meta,
            },
        );
        self.counts.stored += 1;
        Ok(image)
    }

    fn log_deletion(
        &self,
        subject: Option<&str>,
        site: &str,
        device: &str,
        deleted: u64,
        now: i64,
    ) -> Result<(), InboxError> {
        let path = self.out.join("deletions.log");
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
    pub fn apply_receipt(
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
        // Remembered first: a crash after it redoes the deletions at the
        // next redelivery of the reply, or on arrival.
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
        let mut dirs = BTreeMap::new();
        for id in &doomed {
            if let Some(s) = self.index.remove(id) {
                for p in [&s.image, &s.meta] {
                    match fs::remove_file(p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io(p)(e)),
                    }
                }
                if let Some(d) = s.image.parent() {
                    dirs.insert(d.to_path_buf(), ());
                }
            }
        }
        for d in dirs.keys() {
            fsync_dir(d)?;
        }
        for id in &in_flight {
            self.remove_parts(id)?;
        }
        let deleted = doomed.len() as u64;
        self.counts.deleted += deleted;
        self.log_deletion(subject.as_deref(), site, device, deleted, now)?;
        Ok(deleted)
    }
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

    #[test]
    fn whole_capture_stored_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let env = envelope("id-1", "S-1", b"jpeg bytes");
        let mut inbox = Inbox::open(dir.path()).unwrap();
        let Taken::Stored { path } = inbox.take(env.clone(), NOW).unwrap() else {
            panic!("not stored")
        };
        assert_eq!(fs::read(&path).unwrap(), b"jpeg bytes");
        assert_eq!(path, dir.path().join("lobby/term-01/id-1.jpg"));
        let meta: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("lobby/term-01/id-1.json")).unwrap())
                .unwrap();
        assert_eq!(meta["subject"], "S-1");
        assert!(meta.get("image").is_none());
        assert_eq!(inbox.take(env.clone(), NOW).unwrap(), Taken::Duplicate);
        drop(inbox);
        let mut inbox = Inbox::open(dir.path()).unwrap();
        assert_eq!(inbox.stored(), 1);
        assert_eq!(inbox.take(env, NOW).unwrap(), Taken::Duplicate);
    }

    #[test]
    fn parts_in_any_order_and_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let image: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let env = envelope("id-2", "S-1", &image);
        let mut parts = parts_of(&env, 4);
        parts.reverse();
        let mut inbox = Inbox::open(dir.path()).unwrap();
        assert_eq!(inbox.take(parts[0].clone(), NOW).unwrap(), Taken::PartKept);
        assert_eq!(inbox.take(parts[1].clone(), NOW).unwrap(), Taken::PartKept);
        // The same part again is kept once.
        assert_eq!(inbox.take(parts[1].clone(), NOW).unwrap(), Taken::PartKept);
        drop(inbox);
        let mut inbox = Inbox::open(dir.path()).unwrap();
        assert_eq!(inbox.incomplete(), 1);
        assert_eq!(inbox.take(parts[2].clone(), NOW).unwrap(), Taken::PartKept);
        let Taken::Stored { path } = inbox.take(parts[3].clone(), NOW).unwrap() else {
            panic!("not stored")
        };
        assert_eq!(fs::read(path).unwrap(), image);
        assert_eq!(
            fs::read_dir(dir.path().join(".receive/parts"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(inbox.take(parts[0].clone(), NOW).unwrap(), Taken::Duplicate);
    }

    #[test]
    fn a_corrupted_part_is_refused_and_nothing_stored() {
        let dir = tempfile::tempdir().unwrap();
        let env = envelope("id-3", "S-1", b"0123456789abcdef");
        let mut parts = parts_of(&env, 2);
        parts[1].image[0] ^= 1;
        let mut inbox = Inbox::open(dir.path()).unwrap();
        assert_eq!(inbox.take(parts[0].clone(), NOW).unwrap(), Taken::PartKept);
        assert!(matches!(
            inbox.take(parts[1].clone(), NOW).unwrap(),
            Taken::Refused { .. }
        ));
        assert_eq!(inbox.stored(), 0);
        assert!(!dir.path().join("lobby/term-01/id-3.jpg").exists());
        assert_eq!(inbox.counts.refused, 1);
    }

    #[test]
    fn a_receipt_deletes_the_subjects_copies_and_late_in_flight_arrivals() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox = Inbox::open(dir.path()).unwrap();
        inbox.take(envelope("a", "S-1", b"a"), NOW).unwrap();
        inbox.take(envelope("b", "S-1", b"b"), NOW).unwrap();
        inbox.take(envelope("c", "S-2", b"c"), NOW).unwrap();
        let late = envelope("d", "S-1", b"d");
        let late_parts = parts_of(&envelope("e", "S-1", b"eeee"), 2);
        inbox.take(late_parts[0].clone(), NOW).unwrap();
        let deleted = inbox
            .apply_receipt("lobby", "term-01", &receipt(Some("S-1"), &["d", "e"]), NOW)
            .unwrap();
        assert_eq!(deleted, 2);
        assert!(!dir.path().join("lobby/term-01/a.jpg").exists());
        assert!(!dir.path().join("lobby/term-01/b.json").exists());
        assert!(dir.path().join("lobby/term-01/c.jpg").exists());
        assert_eq!(
            fs::read_dir(dir.path().join(".receive/parts"))
                .unwrap()
                .count(),
            0,
            "the in-flight capture's parts are gone"
        );
        drop(inbox);
        // After a restart the revocation is still remembered.
        let mut inbox = Inbox::open(dir.path()).unwrap();
        assert_eq!(inbox.take(late, NOW).unwrap(), Taken::DeletedOnArrival);
        assert_eq!(
            inbox.take(late_parts[1].clone(), NOW).unwrap(),
            Taken::DeletedOnArrival
        );
        assert!(!dir.path().join("lobby/term-01/d.jpg").exists());
        // A new capture after the revocation (a new consent) is kept.
        let mut fresh = envelope("f", "S-1", b"f");
        fresh.captured_at = NOW + 10;
        assert!(matches!(
            inbox.take(fresh, NOW + 20).unwrap(),
            Taken::Stored { .. }
        ));
        let log: Vec<serde_json::Value> = fs::read_to_string(dir.path().join("deletions.log"))
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

    #[test]
    fn names_that_could_leave_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox = Inbox::open(dir.path()).unwrap();
        for (field, bad) in [("site", "../x"), ("device", ".."), ("capture_id", "a/b")] {
            let mut env = envelope("ok", "S-1", b"x");
            match field {
                "site" => env.site = bad.into(),
                "device" => env.device = bad.into(),
                _ => env.capture_id = bad.into(),
            }
            assert_eq!(inbox.take(env, NOW).unwrap(), Taken::BadName { field });
        }
        assert_eq!(inbox.stored(), 0);
    }

    #[test]
    fn split_parts_match_what_devices_send() {
        // The device's own splitter produces parts the inbox joins.
        let dir = tempfile::tempdir().unwrap();
        let image: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let env = envelope("id-9", "S-1", &image);
        let mut inbox = Inbox::open(dir.path()).unwrap();
        let mut last = None;
        for i in 0..3u32 {
            let mut p = env.clone();
            p.image = image[slice(image.len(), 3, i)].to_vec();
            p.part = Some(i);
            p.parts = Some(3);
            last = Some(inbox.take(p, NOW).unwrap());
        }
        assert!(matches!(last, Some(Taken::Stored { .. })));
    }
}
