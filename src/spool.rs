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
//! Anything that is not a regular file (a subdirectory, a symlink, a FIFO)
//! is a leftover: removed after the grace period, a directory with its
//! contents, a symlink as the link itself (its target is never touched).
//!
//! Cameras may put subject ids in file names, so a spool name never reaches
//! a log line, an error message or the audit log: they show its [`NameTag`],
//! a keyed digest under a key drawn at random when the process starts and
//! never stored. Tags correlate the lines of one run (a log line with its
//! audit row); nothing, not even the device's keys, links a tag back to a name
//! afterwards (an unkeyed hash of a short subject id could be reversed by
//! trying every id). [`SpoolName`], [`Pair`], [`Orphan`] and [`SpoolError`]
//! print tags by themselves.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use ring::hmac;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::clock;
use crate::ids::SubjectId;
use crate::sanitize::ContentType;

/// Largest sidecar accepted, in bytes.
pub const SIDECAR_MAX_BYTES: u64 = 16 * 1024;
/// Longest `NAME` (file stem) accepted.
pub const MAX_NAME_LEN: usize = 128;

/// Hex digits of a [`NameTag`] (48 bits: collisions among the entries of one
/// run are negligible, and a tag stays short in a log line).
pub const TAG_HEX_LEN: usize = 12;

/// What logs, error messages and the audit log show instead of a spool
/// entry's name: the first [`TAG_HEX_LEN`] hex digits of HMAC-SHA256 of the
/// name under a per-process random key (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct NameTag(String);

impl NameTag {
    /// The tag of a name (the bytes of a file name or stem).
    pub fn of(name: &[u8]) -> NameTag {
        static KEY: OnceLock<Option<hmac::Key>> = OnceLock::new();
        let key = KEY.get_or_init(|| {
            hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new()).ok()
        });
        match key {
            Some(key) => {
                let mut hex = hex::encode(hmac::sign(key, name).as_ref());
                hex.truncate(TAG_HEX_LEN);
                NameTag(hex)
            }
            // No randomness for a key: show nothing rather than the name.
            None => NameTag("withheld".into()),
        }
    }

    /// The tag of a path's last component (the whole path if it has none).
    pub fn of_path(path: &Path) -> NameTag {
        NameTag::of(path.file_name().unwrap_or(path.as_os_str()).as_bytes())
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NameTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A spool entry shown by its tag, for error messages: `spool entry <tag>`.
struct Shown<'a>(&'a Path);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spool entry {}", NameTag::of_path(self.0))
    }
}

/// The `NAME` of a pair. Cameras may put subject ids in it: [`fmt::Display`]
/// and [`fmt::Debug`] print its [`NameTag`]; [`SpoolName::as_str`] is for the
/// capture id, never for a log line.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpoolName(String);

impl SpoolName {
    /// The name itself: input to the capture id only.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag that logs and the audit log show.
    pub fn tag(&self) -> NameTag {
        NameTag::of(self.0.as_bytes())
    }
}

impl fmt::Display for SpoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.tag().fmt(f)
    }
}

impl From<&str> for SpoolName {
    fn from(name: &str) -> Self {
        SpoolName(name.to_owned())
    }
}

impl From<String> for SpoolName {
    fn from(name: String) -> Self {
        SpoolName(name)
    }
}

impl PartialEq<str> for SpoolName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SpoolName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for SpoolName {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

impl fmt::Debug for SpoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpoolName({})", self.tag())
    }
}

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
/// Its `Debug` shows the name's tag, not the paths.
#[derive(Clone, PartialEq, Eq)]
pub struct Pair {
    /// The shared file stem (`NAME`); shown as its tag.
    pub name: SpoolName,
    /// The image file (`NAME.jpg`, `NAME.jpeg` or `NAME.png`).
    pub image: PathBuf,
    /// The sidecar (`NAME.json`), the commit marker.
    pub sidecar: PathBuf,
    /// Format the image extension announces; the caller refuses the pair
    /// when the bytes turn out to be another format.
    pub declared: ContentType,
    /// Size of the image file when the spool was scanned (what reading the
    /// pair will hold in memory; intake bounds a batch by it).
    pub bytes: u64,
}

/// Why a spool entry is a leftover to be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanReason {
    /// An image without sidecar, older than the grace period.
    LoneImage,
    /// A sidecar whose image is gone. Cameras write the image before the
    /// sidecar, so it can never become a pair; most often it is what a crash
    /// between the two unlinks of [`remove_pair`] left. Removed at once.
    LoneSidecar,
    /// A committed name with more than one image (e.g. `a.jpg` and `a.png`).
    DuplicateImage,
    /// A symlink, FIFO, socket or device where a file was expected.
    NotRegularFile,
    /// A name that is not `NAME.jpg|jpeg|png|json` with a safe `NAME`
    /// (temp files, hidden files, other extensions), older than the grace period.
    UnrecognisedName,
    /// A subdirectory, older than the grace period: removed with its contents.
    Directory,
}

impl OrphanReason {
    /// Whether the entry says something about the camera's output (counted
    /// as `rejected_bad_input`), rather than being a leftover of the
    /// device's own interrupted work (a lone sidecar).
    pub fn is_bad_input(self) -> bool {
        !matches!(self, OrphanReason::LoneSidecar)
    }

    /// Whether the entry is an orphan because of its age (it may still be
    /// being written until the grace period ends), rather than at once.
    pub fn by_age(self) -> bool {
        !matches!(
            self,
            OrphanReason::LoneSidecar | OrphanReason::DuplicateImage
        )
    }

    /// A stable code for the audit log.
    pub fn code(self) -> &'static str {
        match self {
            OrphanReason::LoneImage => "lone_image",
            OrphanReason::LoneSidecar => "lone_sidecar",
            OrphanReason::DuplicateImage => "duplicate_image",
            OrphanReason::NotRegularFile => "not_regular_file",
            OrphanReason::UnrecognisedName => "unrecognised_name",
            OrphanReason::Directory => "directory",
        }
    }
}

impl fmt::Display for OrphanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrphanReason::LoneImage => "image without sidecar after the grace period",
            OrphanReason::LoneSidecar => "sidecar whose image is gone",
            OrphanReason::DuplicateImage => "more than one image for one sidecar",
            OrphanReason::NotRegularFile => "not a regular file",
            OrphanReason::UnrecognisedName => {
                "unrecognised name (expected NAME.jpg, NAME.jpeg, NAME.png or NAME.json)"
            }
            OrphanReason::Directory => "a directory (the spool holds files only)",
        })
    }
}

impl fmt::Debug for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pair")
            .field("name", &self.name)
            .field("declared", &self.declared)
            .finish_non_exhaustive()
    }
}

/// A spool entry that will never become part of a usable pair.
/// Its `Debug` shows the name's tag, not the path.
#[derive(Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The entry to remove (a directory with its contents; a symlink itself,
    /// not its target).
    pub path: PathBuf,
    /// Why, for the log and the audit trail.
    pub reason: OrphanReason,
}

impl Orphan {
    /// The tag that logs and the audit log show for the entry.
    pub fn tag(&self) -> NameTag {
        NameTag::of_path(&self.path)
    }
}

impl fmt::Debug for Orphan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Orphan")
            .field("tag", &self.tag())
            .field("reason", &self.reason)
            .finish()
    }
}

/// Result of one look at the spool directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Complete pairs, oldest sidecar first, at most `max_batch`.
    pub ready: Vec<Pair>,
    /// Leftovers, bad pairs and subdirectories to remove (with their reason).
    pub orphans: Vec<Orphan>,
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

/// Errors of spool access. The spool directory is named by its path, an
/// entry in it by its [`NameTag`] (`spool entry <tag>`), never by its name.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool directory itself could not be listed.
    #[error("spool: listing {}: {source}", dir.display())]
    Listing {
        /// The spool directory.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An I/O call on an entry failed.
    #[error("spool: {op} {}: {source}", Shown(path))]
    Io {
        /// What was being done.
        op: &'static str,
        /// The entry (shown by its tag).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A symlink, FIFO, socket, device or directory where a file was expected.
    #[error(
        "spool: {} is not a regular file (links and special files are refused)",
        Shown(path)
    )]
    NotRegularFile {
        /// The entry (shown by its tag).
        path: PathBuf,
    },
    /// The file is bigger than allowed; it was not read.
    #[error(
        "spool: {} is {size} bytes, more than the limit of {max} bytes",
        Shown(path)
    )]
    TooLarge {
        /// The file (shown by its tag).
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The sidecar's content is refused.
    #[error("spool: bad sidecar {}: {reason}", Shown(path))]
    BadSidecar {
        /// The sidecar file (shown by its tag).
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

/// Removes an orphan: a file, link or special file itself (a symlink's target
/// is untouched), a directory with everything in it. What the entry is, is
/// asked again here (`lstat`), not taken from the scan; `remove_dir_all`
/// follows no symlink inside the directory (it works with `openat`/`unlinkat`
/// and `O_NOFOLLOW`), and a directory swapped for a link meanwhile is removed
/// as the link.
pub fn remove_orphan(orphan: &Orphan) -> Result<(), SpoolError> {
    let path = &orphan.path;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => match fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", path)(e)),
        },
        Ok(_) => remove_entry(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspecting", path)(e)),
    }
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
    len: u64,
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

/// Whether any image name for `stem` is present in `dir` now (`lstat`, so a
/// link or special file counts too: the next scan judges it).
fn image_exists(dir: &Path, stem: &str) -> Result<bool, SpoolError> {
    for ext in ContentType::EXTENSIONS {
        let path = dir.join(format!("{stem}.{ext}"));
        match fs::symlink_metadata(&path) {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspecting", &path)(e)),
        }
    }
    Ok(false)
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

    let listing = |source| SpoolError::Listing {
        dir: dir.to_path_buf(),
        source,
    };
    for dirent in fs::read_dir(dir).map_err(listing)? {
        let dirent = dirent.map_err(listing)?;
        let path = dirent.path();
        // DirEntry::metadata does not follow symlinks on Unix.
        let meta = match dirent.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
            Err(e) => return Err(io_err("inspecting", &path)(e)),
        };
        let mtime = meta.modified().map_err(io_err("inspecting", &path))?;
        if meta.is_dir() {
            // The spool holds files only; a directory (and what is in it) goes
            // once it is older than the grace period, like any leftover.
            if now.duration_since(mtime).unwrap_or(Duration::ZERO) >= grace {
                out.orphans.push(Orphan {
                    path,
                    reason: OrphanReason::Directory,
                });
            }
            continue;
        }
        let entry = Entry {
            path,
            regular: meta.file_type().is_file(),
            mtime,
            len: meta.len(),
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
                        name: SpoolName(name),
                        bytes: image.len,
                        image: image.path,
                        sidecar: sidecar.path,
                        declared,
                    };
                    ready.push((sidecar.mtime, pair));
                } else if !image_exists(dir, &name)? {
                    // The listing is not a snapshot: an image renamed in while
                    // it ran may be missing from it. The image is renamed in
                    // before its sidecar, so a lookup now finds it if it exists.
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
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_exists_looks_up_every_image_name() {
        // The guard against a listing that missed an image renamed in while it
        // ran: a lookup by name after the listing.
        let d = tempfile::tempdir().unwrap();
        assert!(!image_exists(d.path(), "cap").unwrap());
        for ext in ContentType::EXTENSIONS {
            let path = d.path().join(format!("cap.{ext}"));
            fs::write(&path, b"x").unwrap();
            assert!(image_exists(d.path(), "cap").unwrap(), "{ext}");
            fs::remove_file(&path).unwrap();
        }
        // A link counts too: the next scan judges what it is.
        std::os::unix::fs::symlink("/nonexistent", d.path().join("cap.png")).unwrap();
        assert!(image_exists(d.path(), "cap").unwrap());
        assert!(!image_exists(d.path(), "other").unwrap());
    }
}
