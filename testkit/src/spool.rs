//! Writing captures into a spool the way camera software must: the image, then
//! its JSON sidecar (the marker that completes the pair), each written under a
//! temporary name, synced and renamed into place.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use facegate::clock;

/// The camera named in every sidecar.
pub const CAMERA: &str = "cam-1";

/// Writes capture pairs into one spool directory.
#[derive(Debug, Clone)]
pub struct SpoolWriter {
    dir: PathBuf,
}

impl SpoolWriter {
    /// A writer for the spool directory `dir` (which must exist).
    pub fn new(dir: impl Into<PathBuf>) -> SpoolWriter {
        SpoolWriter { dir: dir.into() }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `name.ext` with `image`, then `name.json` saying `subject` (none:
    /// anonymous), captured now by [`CAMERA`]. Returns the instant the pair became
    /// complete (its sidecar renamed in).
    pub fn pair(
        &self,
        name: &str,
        ext: &str,
        image: &[u8],
        subject: Option<&str>,
    ) -> io::Result<Instant> {
        self.pair_with_sidecar(name, ext, image, &sidecar(subject))
    }

    /// Writes `name.ext` with `image`, then `name.json` with exactly `sidecar`
    /// (for malformed sidecars). Returns the instant the pair became complete.
    pub fn pair_with_sidecar(
        &self,
        name: &str,
        ext: &str,
        image: &[u8],
        sidecar: &[u8],
    ) -> io::Result<Instant> {
        write_atomic(&self.dir.join(format!("{name}.{ext}")), image)?;
        write_atomic(&self.dir.join(format!("{name}.json")), sidecar)?;
        Ok(Instant::now())
    }

    /// Number of entries in the spool directory (0 if it cannot be read).
    pub fn len(&self) -> usize {
        std::fs::read_dir(&self.dir).map_or(0, |d| d.count())
    }

    /// Whether the spool directory is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The sidecar of a capture of `subject` (none: anonymous) taken now by [`CAMERA`].
pub fn sidecar(subject: Option<&str>) -> Vec<u8> {
    sidecar_from(subject, CAMERA)
}

/// The sidecar of a capture of `subject` taken now by `camera` (which the
/// upload envelope carries, so it can tell captures apart).
pub fn sidecar_from(subject: Option<&str>, camera: &str) -> Vec<u8> {
    serde_json::json!({
        "subject": subject,
        "captured_at": clock::rfc3339(clock::now()),
        "camera": camera,
    })
    .to_string()
    .into_bytes()
}

/// Writes `bytes` to `.{name}.tmp` next to `path`, syncs it and renames it to
/// `path`, so a reader never sees a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let context = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))
        .map_err(context)?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = File::create(&tmp).map_err(context)?;
    file.write_all(bytes).map_err(context)?;
    file.sync_all().map_err(context)?;
    std::fs::rename(&tmp, path).map_err(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_image_and_sidecar_without_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let spool = SpoolWriter::new(dir.path());
        spool.pair("a", "jpg", b"image", Some("S-1")).unwrap();
        assert_eq!(spool.len(), 2);
        assert_eq!(std::fs::read(dir.path().join("a.jpg")).unwrap(), b"image");
        let sidecar: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("a.json")).unwrap()).unwrap();
        assert_eq!(sidecar["subject"], "S-1");
        assert_eq!(sidecar["camera"], CAMERA);
        assert!(clock::parse_rfc3339(sidecar["captured_at"].as_str().unwrap()).is_some());
    }

    #[test]
    fn an_anonymous_sidecar_has_a_null_subject() {
        let v: serde_json::Value = serde_json::from_slice(&sidecar(None)).unwrap();
        assert!(v["subject"].is_null());
    }
}
