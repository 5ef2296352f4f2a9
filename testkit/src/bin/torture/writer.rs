//! Camera software in a thread: capture pairs written into the spool at a
//! steady pace, each named and tagged (`camera`) with a tag of its own, so the
//! fleet's ledger tells every capture apart.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use facegate::clock;
use facegate_testkit::spool::SpoolWriter;

/// Whom the writer's captures show.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Subject id in the sidecar; `None`: anonymous.
    pub id: Option<String>,
    /// Whether the subject holds a consent while captures are written.
    pub consented: bool,
}

impl Subject {
    /// A subject holding a consent.
    pub fn consented(id: &str) -> Subject {
        Subject {
            id: Some(id.into()),
            consented: true,
        }
    }

    /// A subject without consent.
    pub fn unconsented(id: &str) -> Subject {
        Subject {
            id: Some(id.into()),
            consented: false,
        }
    }

    /// An anonymous capture (`"subject": null`).
    pub fn anonymous() -> Subject {
        Subject {
            id: None,
            consented: false,
        }
    }
}

/// One capture pair completely written (its sidecar renamed in).
#[derive(Debug, Clone)]
pub struct Written {
    /// Name of the pair and its `camera` field.
    pub tag: String,
    /// Its subject.
    pub subject: Option<String>,
    /// Whether the subject held a consent when it was written.
    pub consented: bool,
}

/// The writing thread; [`Writer::finish`] stops it and returns what it wrote.
pub struct Writer {
    subjects: Arc<Mutex<Vec<Subject>>>,
    written: Arc<Mutex<Vec<Written>>>,
    stop: Arc<AtomicBool>,
    /// The camera's clock: seconds ahead of real time (the clock phase).
    offset: Arc<AtomicI64>,
    /// Held while a pair is written, so a clock jump never falls inside one.
    gate: Arc<Mutex<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Writes one pair every `every` into `spool`, named `{phase}-{n}`, of a
    /// subject picked at random from those set by [`Writer::set_subjects`]
    /// (nothing while there are none).
    pub fn start(
        spool: SpoolWriter,
        phase: &str,
        every: Duration,
        seed: u64,
        images: Arc<Vec<Vec<u8>>>,
    ) -> Writer {
        let subjects: Arc<Mutex<Vec<Subject>>> = Arc::default();
        let written: Arc<Mutex<Vec<Written>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let offset = Arc::new(AtomicI64::new(0));
        let gate = Arc::new(Mutex::new(()));
        let phase = phase.to_string();
        let thread = {
            let (subjects, written, stop) = (subjects.clone(), written.clone(), stop.clone());
            let (offset, gate) = (offset.clone(), gate.clone());
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed);
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(every);
                    let pick = {
                        let s = subjects.lock().unwrap_or_else(|e| e.into_inner());
                        if s.is_empty() {
                            continue;
                        }
                        s[rng.usize(..s.len())].clone()
                    };
                    let tag = format!("{phase}-{n:06}");
                    n += 1;
                    let image = &images[rng.usize(..images.len())];
                    let _pair = gate.lock().unwrap_or_else(|e| e.into_inner());
                    let ahead = offset.load(Ordering::SeqCst);
                    if write_pair(spool.dir(), &tag, pick.id.as_deref(), image, ahead).is_ok() {
                        written
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Written {
                                tag,
                                subject: pick.id,
                                consented: pick.consented,
                            });
                    }
                }
            })
        };
        Writer {
            subjects,
            written,
            stop,
            offset,
            gate,
            thread: Some(thread),
        }
    }

    /// Sets the camera's clock `ahead` seconds of real time, running `jump`
    /// (which moves the daemon's clock) between two pairs.
    pub fn jump(&self, ahead: i64, jump: impl FnOnce()) {
        let _between = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        jump();
        self.offset.store(ahead, Ordering::SeqCst);
    }

    /// Whom the next captures show.
    pub fn set_subjects(&self, subjects: Vec<Subject>) {
        *self.subjects.lock().unwrap_or_else(|e| e.into_inner()) = subjects;
    }

    /// Pairs written so far.
    pub fn count(&self) -> usize {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// What was written so far.
    pub fn snapshot(&self) -> Vec<Written> {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops writing; everything written.
    pub fn finish(mut self) -> Vec<Written> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.written.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Writes `tag.jpg`, then `tag.json` (`camera` = `tag`), each to a temp name,
/// synced, stamped with the camera's clock (`ahead` seconds of real time:
/// modification time and `captured_at`) and renamed in.
fn write_pair(
    dir: &Path,
    tag: &str,
    subject: Option<&str>,
    image: &[u8],
    ahead: i64,
) -> std::io::Result<()> {
    let now = clock::now() + ahead;
    let sidecar = serde_json::json!({
        "subject": subject,
        "captured_at": clock::rfc3339(now),
        "camera": tag,
    })
    .to_string();
    let mtime = if ahead >= 0 {
        SystemTime::now() + Duration::from_secs(ahead.unsigned_abs())
    } else {
        SystemTime::now() - Duration::from_secs(ahead.unsigned_abs())
    };
    for (name, bytes) in [
        (format!("{tag}.jpg"), image),
        (format!("{tag}.json"), sidecar.as_bytes()),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.set_modified(mtime)?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(&name))?;
    }
    Ok(())
}
