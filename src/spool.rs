//! The intake directory protocol: which spool files form a capture, which
//! are leftovers, and how they are read and removed.
//!
//! Camera software writes `NAME.jpg` (or `NAME.jpeg`, `NAME.png`) and then
//! `NAME.json`, each atomically (temp name, then rename). The `.json` sidecar
//! is the commit marker: a name with a sidecar and exactly one image is a
//! complete [`Pair`], ready at once. Anything else is left alone while it
//! is younger than the grace period (it may still be being written) and
//! reported as an [`Orphan`] once it is older. A committed name whose files
//! are unusable (two images, a symlink) is a bad pair and reported at once.
//!
//! `NAME` must be a safe file stem: `[A-Za-z0-9._-]`, 1 to 128 characters,
//! no leading dot. Extensions are lower case.
//!
//! The spool is written by another program, so nothing here follows a
//! symbolic link: entries are inspected with `lstat` semantics and files are
//! opened with `O_NOFOLLOW | O_NONBLOCK` (a FIFO cannot hang the reader),
//! then checked to be regular files. Reads are bounded by a byte limit.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::clock;
use crate::ids::SubjectId;
use crate::sanitize::ContentType;

/// Largest sidecar accepted, in bytes.
pub const SIDECAR_MAX_BYTES: u64 = 16 * 1024;
/// Longest `NAME` (file stem) accepted.
pub const MAX_NAME_LEN: usize = 128;

/// The commit marker's content: who and when, as the camera saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    /// Subject id the camera matched (`[A-Za-z0-9._:-]{1,128}`); `None` when
    /// unknown, which the consent gate treats as "no consent".
    pub subject: Option<SubjectId>,
    /// Capture time in unix seconds, from the sidecar's RFC 3339 `captured_at`.
    pub captured_at: i64,
    /// Camera name for the envelope (`[A-Za-z0-9._:-]{1,64}`).
    pub camera: String,
}

/// A complete capture in the spool: a sidecar and exactly one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The shared file stem (`NAME`), for logs and audit.
    pub name: String,
    /// The image file (`NAME.jpg`, `NAME.jpeg` or `NAME.png`).
    pub image: PathBuf,
    /// The sidecar (`NAME.json`), the commit marker.
    pub sidecar: PathBuf,
    /// Format the image extension announces; the caller refuses the pair
    /// when the bytes turn out to be another format.
    pub declared: ContentType,
}

/// Why a spool entry is a leftover to be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanReason {
    /// An image without sidecar, older than the grace period.
    LoneImage,
    /// A sidecar without image, older than the grace period.
    LoneSidecar,
    /// A committed name with more than one image (e.g. `a.jpg` and `a.png`).
    DuplicateImage,
    /// A symlink, FIFO, socket or device where a file was expected.
    NotRegularFile,
    /// A name that is not `NAME.jpg|jpeg|png|json` with a safe `NAME`
    /// (temp files, hidden files, other extensions), older than the grace period.
    UnrecognisedName,
}

impl fmt::Display for OrphanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrphanReason::LoneImage => "image without sidecar after the grace period",
            OrphanReason::LoneSidecar => "sidecar without image after the grace period",
            OrphanReason::DuplicateImage => "more than one image for one sidecar",
            OrphanReason::NotRegularFile => "not a regular file",
            OrphanReason::UnrecognisedName => {
                "unrecognised name (expected NAME.jpg, NAME.jpeg, NAME.png or NAME.json)"
            }
        })
    }
}

/// A spool entry that will never become part of a usable pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The entry to remove (never a directory; a symlink itself, not its target).
    pub path: PathBuf,
    /// Why, for the log and the audit trail.
    pub reason: OrphanReason,
}

/// Result of one look at the spool directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Complete pairs, oldest sidecar first, at most `max_batch`.
    pub ready: Vec<Pair>,
    /// Leftovers and bad pairs to remove (with their reason).
    pub orphans: Vec<Orphan>,
    /// Subdirectories: never touched, reported so the operator can be told.
    pub directories: Vec<PathBuf>,
}

/// Why a sidecar's content is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SidecarError {
    /// More than [`SIDECAR_MAX_BYTES`].
    #[error("sidecar is {size} bytes, more than the limit of {max} bytes")]
    TooLarge {
        /// The sidecar's size in bytes.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Not a JSON object with exactly the known fields (names the bad field).
    #[error("sidecar is not valid: {0}")]
    Json(String),
    /// `subject` present but malformed.
    #[error("field `subject` must match [A-Za-z0-9._:-]{{1,128}}")]
    BadSubject,
    /// `captured_at` is not RFC 3339.
    #[error("field `captured_at` is not an RFC 3339 timestamp")]
    BadCapturedAt,
    /// `camera` empty, too long or with other characters.
    #[error("field `camera` must be 1 to 64 characters of [A-Za-z0-9._:-]")]
    BadCamera,
}

/// Errors of spool access; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// An I/O call failed.
    #[error("spool: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A symlink, FIFO, socket, device or directory where a file was expected.
    #[error("spool: {} is not a regular file (links and special files are refused)", path.display())]
    NotRegularFile {
        /// The entry.
        path: PathBuf,
    },
    /// The file is bigger than allowed; it was not read.
    #[error("spool: {} is {size} bytes, more than the limit of {max} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The sidecar's content is refused.
    #[error("spool: bad sidecar {}: {reason}", path.display())]
    BadSidecar {
        /// The sidecar file.
        path: PathBuf,
        /// Why it is refused.
        reason: SidecarError,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSidecar {
    #[serde(default)]
    subject: Option<String>,
    captured_at: String,
    camera: String,
}

fn chars_ok(s: &str, max: usize, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// Whether `name` is an acceptable `NAME` (file stem) in the spool.
pub fn valid_name(name: &str) -> bool {
    chars_ok(name, MAX_NAME_LEN, b"._-") && !name.starts_with('.')
}

/// Parses and validates sidecar bytes (pure; [`read_sidecar`] adds the file side).
pub fn parse_sidecar(bytes: &[u8]) -> Result<Sidecar, SidecarError> {
    let size = bytes.len() as u64;
    if size > SIDECAR_MAX_BYTES {
        return Err(SidecarError::TooLarge {
            size,
            max: SIDECAR_MAX_BYTES,
        });
    }
    let raw: RawSidecar = serde_json::from_slice(bytes).map_err(|e| {
        // serde may quote offending values; keep log lines short.
        let mut msg = e.to_string();
        if msg.len() > 200 {
            let cut = (0..=200)
                .rev()
                .find(|&i| msg.is_char_boundary(i))
                .unwrap_or(0);
            msg.truncate(cut);
            msg.push('…');
        }
        SidecarError::Json(msg)
    })?;
    let subject = match raw.subject {
        Some(s) => Some(SubjectId::new(s).map_err(|_| SidecarError::BadSubject)?),
        None => None,
    };
    let captured_at = clock::parse_rfc3339(&raw.captured_at).ok_or(SidecarError::BadCapturedAt)?;
    if !chars_ok(&raw.camera, 64, b"._:-") {
        return Err(SidecarError::BadCamera);
    }
    Ok(Sidecar {
        subject,
        captured_at,
        camera: raw.camera,
    })
}

/// Reads and validates a sidecar file (at most [`SIDECAR_MAX_BYTES`], no links).
pub fn read_sidecar(path: &Path) -> Result<Sidecar, SpoolError> {
    let bytes = read_bounded(path, SIDECAR_MAX_BYTES).map_err(|e| match e {
        SpoolError::TooLarge { path, size, max } => SpoolError::BadSidecar {
            path,
            reason: SidecarError::TooLarge { size, max },
        },
        other => other,
    })?;
    parse_sidecar(&bytes).map_err(|reason| SpoolError::BadSidecar {
        path: path.to_path_buf(),
        reason,
    })
}

/// Reads an image file of at most `max_bytes` bytes, refusing links and
/// special files. A larger file is reported as [`SpoolError::TooLarge`]
/// without reading it (at most `max_bytes + 1` bytes are ever read). The
/// bytes are wiped when dropped.
pub fn read_image(path: &Path, max_bytes: u64) -> Result<Zeroizing<Vec<u8>>, SpoolError> {
    read_bounded(path, max_bytes)
}

/// The file's bytes, in a buffer of the size `fstat` gave (it grows only if
/// the file grew meanwhile), wiped when dropped.
fn read_bounded(path: &Path, max: u64) -> Result<Zeroizing<Vec<u8>>, SpoolError> {
    let not_regular = || SpoolError::NotRegularFile {
        path: path.to_path_buf(),
    };
    let too_large = |size| SpoolError::TooLarge {
        path: path.to_path_buf(),
        size,
        max,
    };
    // lstat first: never even open a link or a special file in the normal case.
    let meta = fs::symlink_metadata(path).map_err(io_err("inspecting", path))?;
    if !meta.file_type().is_file() {
        return Err(not_regular());
    }
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    // The entry may be swapped between lstat and open: O_NOFOLLOW refuses a
    // link, O_NONBLOCK keeps a FIFO from blocking, fstat checks the result.
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                not_regular()
            } else {
                io_err("opening", path)(e)
            }
        })?;
    let meta = file.metadata().map_err(io_err("inspecting", path))?;
    if !meta.file_type().is_file() {
        return Err(not_regular());
    }
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io_err("reading", path))?;
    if buf.len() as u64 > max {
        // Grew while we read it.
        return Err(too_large(buf.len() as u64));
    }
    Ok(buf)
}

/// Removes both files of a handled pair: the image first, then the sidecar.
///
/// Why this order: the caller calls this only after the capture is durably
/// in the outbox (or deliberately dropped). If the device crashes between
/// the two unlinks, what is left is a lone `NAME.json` without image, which
/// can never be taken as a pair again (so no duplicate with a new capture
/// id) and is removed as an orphan after the grace period. The image, the
/// sensitive part, is gone first. Files already missing are not an error,
/// so a retry after a partial removal succeeds.
pub fn remove_pair(pair: &Pair) -> Result<(), SpoolError> {
    remove_entry(&pair.image)?;
    remove_entry(&pair.sidecar)
}

/// Removes an orphan (the entry itself; a symlink's target is untouched).
pub fn remove_orphan(orphan: &Orphan) -> Result<(), SpoolError> {
    remove_entry(&orphan.path)
}

fn remove_entry(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("removing", path)(e)),
    }
}

/// What a spool entry's name says it is.
enum Role {
    Image(ContentType),
    Sidecar,
}

struct Entry {
    path: PathBuf,
    regular: bool,
    mtime: SystemTime,
}

#[derive(Default)]
struct Group {
    images: Vec<(Entry, ContentType)>,
    sidecar: Option<Entry>,
}

fn classify(file_name: &str) -> Option<(&str, Role)> {
    let (stem, ext) = file_name.rsplit_once('.')?;
    if !valid_name(stem) {
        return None;
    }
    let role = if ext == "json" {
        Role::Sidecar
    } else {
        Role::Image(ContentType::from_extension(ext)?)
    };
    Some((stem, role))
}

/// Looks at the spool directory once (no file is read or changed).
///
/// `now` and `grace` decide which incomplete entries are old enough to be
/// orphans (age `>= grace`; an mtime in the future counts as age 0).
pub fn scan(
    dir: &Path,
    now: SystemTime,
    grace: Duration,
    max_batch: usize,
) -> Result<Scan, SpoolError> {
    let is_old = |e: &Entry| now.duration_since(e.mtime).unwrap_or(Duration::ZERO) >= grace;
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut out = Scan::default();
    let mut others: Vec<Entry> = Vec::new();

    for dirent in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let dirent = dirent.map_err(io_err("listing", dir))?;
        let path = dirent.path();
        // DirEntry::metadata does not follow symlinks on Unix.
        let meta = match dirent.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
            Err(e) => return Err(io_err("inspecting", &path)(e)),
        };
        if meta.is_dir() {
            out.directories.push(path);
            continue;
        }
        let mtime = meta.modified().map_err(io_err("inspecting", &path))?;
        let entry = Entry {
            path,
            regular: meta.file_type().is_file(),
            mtime,
        };
        let name = dirent.file_name();
        match name.to_str().and_then(classify) {
            Some((stem, role)) => {
                let group = groups.entry(stem.to_owned()).or_default();
                match role {
                    Role::Image(ct) => group.images.push((entry, ct)),
                    // One directory cannot hold two `NAME.json`.
                    Role::Sidecar => group.sidecar = Some(entry),
                }
            }
            None => others.push(entry),
        }
    }

    let mut ready: Vec<(SystemTime, Pair)> = Vec::new();
    for (name, group) in groups {
        match group.sidecar {
            Some(sidecar) => {
                let all_regular = sidecar.regular && group.images.iter().all(|(e, _)| e.regular);
                let bad = if !all_regular {
                    Some(OrphanReason::NotRegularFile)
                } else if group.images.len() > 1 {
                    Some(OrphanReason::DuplicateImage)
                } else {
                    None
                };
                if let Some(reason) = bad {
                    // Committed but unusable: a bad pair, removed at once.
                    for (e, _) in group.images {
                        out.orphans.push(Orphan {
                            path: e.path,
                            reason,
                        });
                    }
                    out.orphans.push(Orphan {
                        path: sidecar.path,
                        reason,
                    });
                } else if let Some((image, declared)) = group.images.into_iter().next() {
                    let pair = Pair {
                        name,
                        image: image.path,
                        sidecar: sidecar.path,
                        declared,
                    };
                    ready.push((sidecar.mtime, pair));
                } else if is_old(&sidecar) {
                    out.orphans.push(Orphan {
                        path: sidecar.path,
                        reason: OrphanReason::LoneSidecar,
                    });
                }
            }
            None => {
                for (e, _) in group.images {
                    if is_old(&e) {
                        let reason = if e.regular {
                            OrphanReason::LoneImage
                        } else {
                            OrphanReason::NotRegularFile
                        };
                        out.orphans.push(Orphan {
                            path: e.path,
                            reason,
                        });
                    }
                }
            }
        }
    }
    for e in others {
        if is_old(&e) {
            let reason = if e.regular {
                OrphanReason::UnrecognisedName
            } else {
                OrphanReason::NotRegularFile
            };
            out.orphans.push(Orphan {
                path: e.path,
                reason,
            });
        }
    }

    ready.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    out.ready = ready.into_iter().take(max_batch).map(|(_, p)| p).collect();
    out.orphans.sort_by(|a, b| a.path.cmp(&b.path));
    out.directories.sort();
    Ok(out)
}
