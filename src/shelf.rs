//! The shelf: whole captures the uplink chose for upload, decrypted and
//! encoded ahead of the window, held outside the store until the window has
//! room for them (ARCHITECTURE I7, "Consent at hand-over").
//!
//! What is on it is readable (a decrypted image, an envelope with the image
//! in base64), so it is bounded and wiped like the store's content:
//! - at most one window (`mqtt.inflight`) of captures; each item is dropped
//!   (its image and envelope zeroed) once handed over, or once its capture
//!   is no longer queued;
//! - a revocation or a purge wipes its subject's items (everyone's for a
//!   purge of all) under the store lock, in the same critical section as the
//!   store's purge, so by the time its receipt exists none is left (SPEC
//!   invariant 4). Items are put on the shelf only under the store lock, and
//!   a purge waits for an encoding in progress (which holds the shelf's own
//!   lock) to finish before it wipes;
//! - housekeeping wipes the items of the captures it purges (consent
//!   expired, retention), and a lost connection wipes all of them (nothing
//!   is held while offline).
//!
//! Lock order: the store lock, then the shelf's. The encoding step takes the
//! shelf's lock alone and takes no other lock while holding it.

use std::sync::{Arc, Mutex, MutexGuard};

use zeroize::Zeroizing;

use crate::config::Config;
use crate::ids::{CaptureId, SubjectId};
use crate::store::Pending;

/// A whole capture chosen for upload under the consent `consent_id`, with
/// its envelope once encoded.
pub struct Prepared {
    /// Read with its image sealed; opened when its envelope is encoded
    /// (still sealed after that: the image did not decrypt).
    pub capture: Pending,
    /// The consent the envelope quotes: the one that allowed it when chosen.
    pub consent_id: String,
    /// The envelope quoting `consent_id` under `cfg`; empty until encoded.
    pub payload: Zeroizing<Vec<u8>>,
    /// The configuration it was encoded under (a reload in between: the
    /// envelope is encoded again under the new one).
    pub cfg: Option<Arc<Config>>,
    /// Whether decryption and encoding were tried.
    pub tried: bool,
}

impl Prepared {
    /// Chosen, not yet decrypted or encoded.
    pub fn new(capture: Pending, consent_id: String) -> Prepared {
        Prepared {
            capture,
            consent_id,
            payload: Zeroizing::new(Vec::new()),
            cfg: None,
            tried: false,
        }
    }

    /// The capture's subject.
    pub fn subject(&self) -> &SubjectId {
        &self.capture.fields().subject
    }
}

impl Drop for Prepared {
    /// The decrypted image and the envelope are zeroed, with one memset
    /// each (crate::crypto::wipe).
    fn drop(&mut self) {
        self.capture.wipe();
        crate::crypto::wipe(&mut self.payload);
    }
}

/// The prepared captures, in queue order.
#[derive(Default)]
pub struct Shelf {
    items: Mutex<Vec<Prepared>>,
}

impl Shelf {
    /// The items, locked. Take the store lock first where both are needed.
    pub fn lock(&self) -> MutexGuard<'_, Vec<Prepared>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many captures are on it.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The ids of the captures on it (a hand-over does not choose them again).
    pub fn ids(&self) -> Vec<CaptureId> {
        self.lock()
            .iter()
            .map(|p| p.capture.capture_id().clone())
            .collect()
    }

    /// Drops (wipes) the items of `subject`, every item with `None`.
    /// Returns how many were wiped.
    pub fn wipe(&self, subject: Option<&SubjectId>) -> usize {
        let mut items = self.lock();
        let before = items.len();
        items.retain(|p| subject.is_some_and(|s| p.subject() != s));
        before - items.len()
    }

    /// Drops (wipes) the items of these captures (purged by housekeeping:
    /// consent expired, retention).
    pub fn wipe_captures(&self, ids: &[CaptureId]) -> usize {
        if ids.is_empty() {
            return 0;
        }
        let mut items = self.lock();
        let before = items.len();
        items.retain(|p| !ids.contains(p.capture.capture_id()));
        before - items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Capture;

    fn prepared(id: &str, subject: &str) -> Prepared {
        let capture = Capture {
            capture_id: CaptureId::from(id),
            subject: SubjectId::new(subject).unwrap(),
            consent_id: "k".into(),
            captured_at: 1_700_000_000,
            camera: "cam".into(),
            content_type: "image/jpeg".into(),
            sha256: [0; 32],
            image: Zeroizing::new(vec![7; 100]),
        };
        Prepared::new(Pending::opened(capture), "k".into())
    }

    #[test]
    fn wipe_drops_one_subjects_items_or_all() {
        let shelf = Shelf::default();
        shelf.lock().extend([
            prepared("c-1", "S-1"),
            prepared("c-2", "S-2"),
            prepared("c-3", "S-1"),
        ]);
        let s1 = SubjectId::new("S-1").unwrap();
        assert_eq!(shelf.wipe(Some(&s1)), 2);
        assert_eq!(shelf.ids(), vec![CaptureId::from("c-2")]);
        assert_eq!(shelf.wipe(Some(&s1)), 0);
        assert_eq!(shelf.wipe(None), 1);
        assert!(shelf.is_empty());
    }

    #[test]
    fn wipe_captures_drops_those_captures_only() {
        let shelf = Shelf::default();
        shelf
            .lock()
            .extend([prepared("c-1", "S-1"), prepared("c-2", "S-1")]);
        assert_eq!(shelf.wipe_captures(&[]), 0);
        assert_eq!(shelf.wipe_captures(&[CaptureId::from("c-2")]), 1);
        assert_eq!(shelf.ids(), vec![CaptureId::from("c-1")]);
    }
}
