//! `facegate fleet log`: the reference back-end's site consent log (SPEC
//! "Site consent log"), one append-only file per site, one JSON object per
//! line, written with `fsync` before anything is published:
//!
//! ```text
//! {"kind":"entry","seq":1,"jws":"<the signed command>","needed_until":1795858382}
//! {"kind":"base","base":2,"at":1795858400}
//! ```
//!
//! An entry is the signed command as first sent (its claims — `cmd`, `args`,
//! `iat`, `seq` — are read back from it to sign it again for a device that
//! missed it). `needed_until` is when every consent it concerns has expired:
//! for a grant, its consent token's `exp`; for a revocation, the latest
//! `needed_until` of the subject's earlier grants in the log, or its `iat`
//! plus the longest consent lifetime when the log has none. A `base` line
//! (`fleet log compact`) raises the head's `base` past a prefix of entries
//! no longer needed. Seqs are never reused.
//!
//! Everything here but [`append`], [`lock`] and [`read`] is pure.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cmd::Command;
use crate::command::{CommandError, Stamp};
use crate::consent_log::Head;
use crate::ids::{Jti, Seq};
use crate::jws;
use crate::protocol::CommandName;

/// One line of a site log file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// A consent command sent to the whole site.
    Entry {
        /// Its place in the log.
        seq: Seq,
        /// The signed command as first sent.
        jws: String,
        /// When every consent it concerns has expired (unix seconds).
        needed_until: i64,
    },
    /// Entries below `base` are no longer needed.
    Base {
        /// The new base.
        base: Seq,
        /// When it was raised (unix seconds).
        at: i64,
    },
}

/// Why a log file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not a record.
    #[error("{path}:{line}: {why}")]
    Bad {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// An entry cannot be signed again.
    #[error("entry {seq}: {source}")]
    Resign {
        /// The entry.
        seq: Seq,
        /// Why.
        source: CommandError,
    },
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The signed command as first sent.
    pub jws: String,
    /// When every consent it concerns has expired.
    pub needed_until: i64,
}

/// A site's log as read from its file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteLog {
    entries: BTreeMap<u64, Entry>,
    base: u64,
}

impl SiteLog {
    /// Reads the lines of a log file (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<SiteLog, LogError> {
        let mut log = SiteLog {
            entries: BTreeMap::new(),
            base: 1,
        };
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |why: String| LogError::Bad {
                path: path.to_path_buf(),
                line: i + 1,
                why,
            };
            match serde_json::from_str::<Record>(line).map_err(|e| bad(e.to_string()))? {
                Record::Entry {
                    seq,
                    jws,
                    needed_until,
                } => {
                    if seq.get() == 0 || log.entries.contains_key(&seq.get()) {
                        return Err(bad(format!("seq {seq} is 0 or used twice")));
                    }
                    log.entries.insert(seq.get(), Entry { jws, needed_until });
                }
                Record::Base { base, .. } => log.base = log.base.max(base.get()),
            }
        }
        Ok(log)
    }

    /// The highest seq in the log (0 when empty).
    pub fn last(&self) -> u64 {
        self.entries.keys().next_back().copied().unwrap_or(0)
    }

    /// The seq the next entry gets: never one used before.
    pub fn next_seq(&self) -> Seq {
        Seq::new(self.last().max(self.base.saturating_sub(1)) + 1)
    }

    /// The head's `base`.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The head to publish, signed at `now`, valid for `lifetime_s`.
    pub fn head(&self, now: i64, lifetime_s: i64) -> Head {
        Head {
            seq: Seq::new(self.last().max(self.base.saturating_sub(1))),
            base: Seq::new(self.base),
            iat: now,
            exp: now.saturating_add(lifetime_s.max(1)),
        }
    }

    /// Entry `seq`, if the log holds it.
    pub fn entry(&self, seq: u64) -> Option<&Entry> {
        self.entries.get(&seq)
    }

    /// The base `fleet log compact` raises to at `now`: past the prefix of
    /// entries (from the current base) no longer needed.
    pub fn compact_base(&self, now: i64) -> u64 {
        let mut base = self.base;
        for (&seq, e) in self.entries.range(self.base..) {
            if seq != base || e.needed_until > now {
                break;
            }
            base = seq + 1;
        }
        base
    }

    /// `needed_until` of a new entry signed as `command` at `iat`;
    /// `max_consent_lifetime_s` for a revocation of a subject the log has
    /// no earlier grant of.
    pub fn needed_until(&self, command: &Command, iat: i64, max_consent_lifetime_s: i64) -> i64 {
        match command {
            Command::ConsentGrant(g) => token_exp(&g.token).unwrap_or(i64::MAX),
            Command::ConsentRevoke(r) => self
                .entries
                .values()
                .filter(|e| {
                    matches!(parse_command(&e.jws), Some((Command::ConsentGrant(g), _))
                        if token_sub(&g.token).as_deref() == Some(r.subject.as_str()))
                })
                .map(|e| e.needed_until)
                .max()
                .unwrap_or_else(|| iat.saturating_add(max_consent_lifetime_s)),
            _ => iat,
        }
    }

    /// Entry `seq` signed again for `aud` with a new `jti`: its own `iat`
    /// and `exp` while those are still good for `min_left_s`, else `iat` =
    /// `now` (a revocation then also covers consents of the subject issued
    /// since it was first sent: a device misses nothing, it may revoke more).
    pub fn resign(
        &self,
        seq: u64,
        aud: &str,
        lifetime_s: i64,
        kid: &str,
        pkcs8: &[u8],
        now: i64,
    ) -> Option<Result<Resigned, LogError>> {
        let entry = self.entries.get(&seq)?;
        let seq_id = Seq::new(seq);
        let Some((command, (iat, exp))) = parse_command(&entry.jws) else {
            return Some(Err(LogError::Resign {
                seq: seq_id,
                source: CommandError::Malformed("the logged command cannot be read".into()),
            }));
        };
        let (stamp, original_time) = if exp > now.saturating_add(60) {
            (
                Stamp {
                    iat,
                    exp,
                    seq: Some(seq_id),
                },
                true,
            )
        } else {
            (
                Stamp {
                    iat: now,
                    exp: now.saturating_add(lifetime_s.max(1)),
                    seq: Some(seq_id),
                },
                false,
            )
        };
        Some(
            command
                .sign_as(aud, stamp, kid, pkcs8)
                .map(|(jti, jws)| Resigned {
                    name: command.name(),
                    jti,
                    jws,
                    original_time,
                })
                .map_err(|source| LogError::Resign {
                    seq: seq_id,
                    source,
                }),
        )
    }
}

/// An entry signed again.
#[derive(Debug, Clone)]
pub struct Resigned {
    /// Its command.
    pub name: CommandName,
    /// The new `jti`.
    pub jti: Jti,
    /// The new JWS.
    pub jws: String,
    /// False when it had to be signed with `iat` = now.
    pub original_time: bool,
}

/// The command and `(iat, exp)` of a logged JWS (read back, not verified:
/// the back-end signed it).
fn parse_command(jws: &str) -> Option<(Command, (i64, i64))> {
    let claims = jws::peek_claims(jws)?;
    let cmd = claims.get("cmd")?.as_str()?;
    let args = claims.get("args").cloned().unwrap_or(Value::Null);
    let command = Command::from_parts(cmd, &args).ok()?;
    let iat = claims.get("iat")?.as_i64()?;
    let exp = claims.get("exp")?.as_i64()?;
    Some((command, (iat, exp)))
}

/// The `exp` of a consent token, read without verifying it.
fn token_exp(token: &str) -> Option<i64> {
    jws::peek_claims(token)?.get("exp")?.as_i64()
}

/// The `sub` of a consent token, read without verifying it.
fn token_sub(token: &str) -> Option<String> {
    Some(jws::peek_claims(token)?.get("sub")?.as_str()?.to_string())
}

/// Reads a log file; a missing file is an empty log.
pub fn read(path: &Path) -> Result<SiteLog, LogError> {
    match fs::read_to_string(path) {
        Ok(text) => SiteLog::parse(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SiteLog::parse("", path),
        Err(source) => Err(LogError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A log file held under an exclusive lock (`flock`), read as it is: two
/// `fleet send --log` at once never give out the same `seq`.
pub struct Locked {
    path: PathBuf,
    file: fs::File,
    /// The log as read under the lock.
    pub log: SiteLog,
}

/// Opens (creating it, mode 0600) and locks the log file, and reads it.
pub fn lock(path: &Path) -> Result<Locked, LogError> {
    let io = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    if !existed {
        sync_dir(path).map_err(io)?;
    }
    file.lock().map_err(io)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(io)?;
    let log = SiteLog::parse(&text, path)?;
    Ok(Locked {
        path: path.to_path_buf(),
        file,
        log,
    })
}

impl Locked {
    /// Appends one record and syncs it to disk; the lock stays held.
    pub fn append(&mut self, record: &Record) -> Result<(), LogError> {
        let io = |source| LogError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(record).map_err(|e| io(std::io::Error::other(e)))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_all().map_err(io)
    }
}

/// Syncs the directory holding `path` (a new file's name is durable).
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(dir).and_then(|d| d.sync_all())
}

/// Appends one record and syncs it to disk (the file is created with mode
/// 0600: it names subjects; a new file's directory is synced too).
pub fn append(path: &Path, record: &Record) -> Result<(), LogError> {
    let io = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let existed = path.exists();
    let mut line = serde_json::to_vec(record).map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(&line).map_err(io)?;
    f.sync_all().map_err(io)?;
    if !existed {
        sync_dir(path).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jws::testkit::keypair;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn grant(pkcs8: &[u8], subject: &str, exp: i64) -> Command {
        let token = jws::sign(
            &json!({"sub": subject, "jti": format!("c-{subject}"), "iat": NOW, "exp": exp,
                    "aud": "lobby", "scope": "capture:upload", "iss": "t"}),
            "consent-1",
            pkcs8,
        )
        .unwrap();
        Command::from_parts("consent.grant", &json!({ "token": token })).unwrap()
    }

    fn revoke(subject: &str) -> Command {
        Command::from_parts("consent.revoke", &json!({ "subject": subject })).unwrap()
    }

    fn signed(c: &Command, seq: u64, pkcs8: &[u8], iat: i64) -> String {
        let stamp = Stamp {
            iat,
            exp: iat + 600,
            seq: Some(Seq::new(seq)),
        };
        c.sign_as("lobby", stamp, "fleet-1", pkcs8).unwrap().1
    }

    fn line(r: &Record) -> String {
        serde_json::to_string(r).unwrap()
    }

    #[test]
    fn the_log_reads_back_and_numbers_entries() {
        let (k, _) = keypair();
        let g = grant(&k, "alice", NOW + 100);
        let empty = SiteLog::parse("", Path::new("x")).unwrap();
        assert_eq!(empty.next_seq(), Seq::new(1));
        assert_eq!(empty.head(NOW, 60).seq, Seq::new(0));
        assert_eq!(empty.head(NOW, 60).base, Seq::new(1));
        let text = [
            line(&Record::Entry {
                seq: Seq::new(1),
                jws: signed(&g, 1, &k, NOW),
                needed_until: NOW + 100,
            }),
            line(&Record::Entry {
                seq: Seq::new(2),
                jws: signed(&revoke("alice"), 2, &k, NOW),
                needed_until: NOW + 100,
            }),
            line(&Record::Base {
                base: Seq::new(2),
                at: NOW,
            }),
        ]
        .join("\n");
        let log = SiteLog::parse(&text, Path::new("x")).unwrap();
        assert_eq!(log.last(), 2);
        assert_eq!(log.next_seq(), Seq::new(3));
        assert_eq!(log.base(), 2);
        let h = log.head(NOW, 3600);
        assert_eq!((h.seq.get(), h.base.get(), h.exp), (2, 2, NOW + 3600));
        let dup = format!(
            "{}\n{}",
            line(&Record::Entry {
                seq: Seq::new(1),
                jws: "a.b.c".into(),
                needed_until: 0
            }),
            line(&Record::Entry {
                seq: Seq::new(1),
                jws: "a.b.c".into(),
                needed_until: 0
            })
        );
        let err = SiteLog::parse(&dup, Path::new("site.log")).unwrap_err();
        assert!(err.to_string().starts_with("site.log:2:"), "{err}");
        assert!(SiteLog::parse("{\"kind\":\"x\"}", Path::new("x")).is_err());
    }

    #[test]
    fn a_base_past_every_entry_keeps_seqs_unique() {
        let log = SiteLog::parse(
            &line(&Record::Base {
                base: Seq::new(41),
                at: NOW,
            }),
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(log.next_seq(), Seq::new(41));
        assert_eq!(log.head(NOW, 60).seq, Seq::new(40));
    }

    #[test]
    fn compaction_stops_at_the_first_entry_still_needed() {
        let mut log = SiteLog {
            base: 1,
            ..SiteLog::default()
        };
        for (seq, until) in [(1, NOW - 10), (2, NOW - 5), (3, NOW + 10), (4, NOW - 1)] {
            log.entries.insert(
                seq,
                Entry {
                    jws: String::new(),
                    needed_until: until,
                },
            );
        }
        assert_eq!(log.compact_base(NOW), 3);
        assert_eq!(log.compact_base(NOW + 10), 5);
        assert_eq!(log.compact_base(NOW - 100), 1);
    }

    #[test]
    fn a_revocation_is_needed_as_long_as_the_grants_before_it() {
        let (k, _) = keypair();
        let mut log = SiteLog::default();
        log.entries.insert(
            1,
            Entry {
                jws: signed(&grant(&k, "alice", NOW + 500), 1, &k, NOW),
                needed_until: NOW + 500,
            },
        );
        log.entries.insert(
            2,
            Entry {
                jws: signed(&grant(&k, "bob", NOW + 900), 2, &k, NOW),
                needed_until: NOW + 900,
            },
        );
        assert_eq!(log.needed_until(&revoke("alice"), NOW, 1000), NOW + 500);
        assert_eq!(log.needed_until(&revoke("zed"), NOW, 1000), NOW + 1000);
        assert_eq!(
            log.needed_until(&grant(&k, "carol", NOW + 77), NOW, 1000),
            NOW + 77
        );
    }

    #[test]
    fn entries_are_signed_again_with_their_seq() {
        let (k, _) = keypair();
        let mut log = SiteLog::default();
        log.entries.insert(
            3,
            Entry {
                jws: signed(&revoke("alice"), 3, &k, NOW),
                needed_until: NOW,
            },
        );
        let r = log
            .resign(3, "lobby", 600, "fleet-1", &k, NOW)
            .unwrap()
            .unwrap();
        assert!(r.original_time);
        let c = jws::peek_claims(&r.jws).unwrap();
        assert_eq!((c["seq"].clone(), c["iat"].clone()), (json!(3), json!(NOW)));
        assert_ne!(
            c["jti"],
            jws::peek_claims(&log.entries[&3].jws).unwrap()["jti"]
        );
        // Its own time is over: signed at now.
        let late = log
            .resign(3, "lobby", 600, "fleet-1", &k, NOW + 600)
            .unwrap()
            .unwrap();
        assert!(!late.original_time);
        assert_eq!(
            jws::peek_claims(&late.jws).unwrap()["iat"],
            json!(NOW + 600)
        );
        assert!(log.resign(4, "lobby", 600, "fleet-1", &k, NOW).is_none());
    }

    #[test]
    fn append_creates_a_private_file_and_adds_lines() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lobby.log");
        let r = Record::Base {
            base: Seq::new(2),
            at: NOW,
        };
        append(&p, &r).unwrap();
        append(&p, &r).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_to_string(&p).unwrap().lines().count(), 2);
        assert_eq!(read(&p).unwrap().base(), 2);
        assert_eq!(read(&dir.path().join("none")).unwrap().last(), 0);
        let mut held = lock(&p).unwrap();
        assert_eq!(held.log.base(), 2);
        held.append(&Record::Base {
            base: Seq::new(3),
            at: NOW,
        })
        .unwrap();
        drop(held);
        assert_eq!(read(&p).unwrap().base(), 3);
        let fresh = lock(&dir.path().join("new.log")).unwrap();
        assert_eq!(fresh.log.next_seq(), Seq::new(1));
    }
}
