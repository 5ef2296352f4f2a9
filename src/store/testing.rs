//! Test captures: one builder for the tests of every module (store, agent,
//! shelf, uplink), so a new field of [`Capture`] is filled in one place.

use super::Capture;
use crate::ids::SubjectId;

/// When [`capture`]s were taken (unix seconds).
pub(crate) const CAPTURED_AT: i64 = 1_800_000_000 - 5;

/// A capture `id` of `subject` holding `image` (its SHA-256 computed),
/// allowed at intake by consent `c`, from camera `cam-1`, a JPEG taken at
/// [`CAPTURED_AT`]. Tests change a field with struct update syntax:
/// `Capture { consent_id: "k".into(), ..capture(id, subject, image) }`.
pub(crate) fn capture(id: &str, subject: &str, image: &[u8]) -> Capture {
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, image).as_ref());
    Capture {
        capture_id: id.into(),
        subject: SubjectId::new(subject).expect("a test subject id"),
        consent_id: "c".into(),
        captured_at: CAPTURED_AT,
        camera: "cam-1".into(),
        content_type: "image/jpeg".into(),
        sha256,
        image: image.to_vec().into(),
    }
}
