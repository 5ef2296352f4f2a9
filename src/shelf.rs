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
//! The uplink also keeps captures sent in parts decrypted from their first
//! part to their last acknowledgement; it registers what holds them
//! ([`Shelf::set_parts_holder`]), and [`Shelf::forget`] lets go of those too,
//! in the same critical section.
//!
//! Lock order: the store lock, then the shelf's (or the parts holder's). The
//! encoding step takes the shelf's lock alone and takes no other lock while
//! holding it.

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

/// What left the outbox, for whoever holds captures decrypted outside the
/// store: they let go of them ([`Shelf::forget`]).
#[derive(Debug, Clone, Copy)]
pub enum Gone<'a> {
    /// Every capture of this subject (a revocation, a purge of the subject).
    Subject(&'a SubjectId),
    /// Every capture (a purge of all, a lost connection).
    All,
    /// These captures (housekeeping: consent expired, retention).
    Captures(&'a [CaptureId]),
}

impl Gone<'_> {
    /// Whether the capture `id` of `subject` is among what is gone.
    pub fn covers(&self, id: &CaptureId, subject: &SubjectId) -> bool {
        match self {
            Gone::Subject(s) => *s == subject,
            Gone::All => true,
            Gone::Captures(ids) => ids.contains(id),
        }
    }
}

/// Lets go of the captures in parts that are gone (registered by the uplink).
pub type PartsHolder = Box<dyn Fn(&Gone<'_>) + Send + Sync>;

/// The prepared captures, in queue order, and the hook to the captures the
/// uplink keeps decrypted for their parts.
#[derive(Default)]
pub struct Shelf {
    items: Mutex<Vec<Prepared>>,
    parts: Mutex<Option<PartsHolder>>,
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

    /// Registers what keeps captures in parts decrypted (one holder; a new
    /// one replaces the last).
    pub fn set_parts_holder(&self, holder: PartsHolder) {
        *self.parts.lock().unwrap_or_else(|p| p.into_inner()) = Some(holder);
    }

    /// Drops (wipes) the prepared captures that are `gone`, and has the
    /// parts holder let go of its own. Returns how many prepared captures
    /// were wiped. Called under the store lock by revocations and purges,
    /// so that none is readable once their receipt exists.
    pub fn forget(&self, gone: &Gone<'_>) -> usize {
        let wiped = {
            let mut items = self.lock();
            let before = items.len();
            items.retain(|p| !gone.covers(p.capture.capture_id(), p.subject()));
            before - items.len()
        };
        if let Some(holder) = self
            .parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            holder(gone);
        }
        wiped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Capture;

    fn prepared(id: &str, subject: &str) -> Prepared {
        let capture = Capture {
            consent_id: "k".into(),
            ..crate::store::testing::capture(id, subject, &[7; 100])
        };
        Prepared::new(Pending::opened(capture), "k".into())
    }

    #[test]
    fn forget_drops_one_subjects_items_some_captures_or_all() {
        let shelf = Shelf::default();
        shelf.lock().extend([
            prepared("c-1", "S-1"),
            prepared("c-2", "S-2"),
            prepared("c-3", "S-1"),
            prepared("c-4", "S-2"),
        ]);
        let s1 = SubjectId::new("S-1").unwrap();
        assert_eq!(shelf.forget(&Gone::Subject(&s1)), 2);
        assert_eq!(
            shelf.ids(),
            vec![CaptureId::from("c-2"), CaptureId::from("c-4")]
        );
        assert_eq!(shelf.forget(&Gone::Subject(&s1)), 0);
        assert_eq!(shelf.forget(&Gone::Captures(&[])), 0);
        assert_eq!(shelf.forget(&Gone::Captures(&[CaptureId::from("c-4")])), 1);
        assert_eq!(shelf.ids(), vec![CaptureId::from("c-2")]);
        assert_eq!(shelf.forget(&Gone::All), 1);
        assert!(shelf.is_empty());
    }

    #[test]
    fn forget_tells_the_parts_holder_what_is_gone() {
        let shelf = Shelf::default();
        let told = Arc::new(Mutex::new(Vec::new()));
        let seen = told.clone();
        shelf.set_parts_holder(Box::new(move |g| {
            seen.lock().unwrap().push(format!("{g:?}"));
        }));
        let s1 = SubjectId::new("S-1").unwrap();
        shelf.forget(&Gone::Subject(&s1));
        shelf.forget(&Gone::All);
        assert_eq!(told.lock().unwrap().len(), 2);
        assert!(told.lock().unwrap()[0].contains("S-1"));
    }
}
