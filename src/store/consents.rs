//! Consents and revocation tombstones: storing verified tokens, refusing ones
//! issued at or before a revocation, revoking, and applying the consent rule
//! ([`crate::gate`]) to what is stored: per capture and in the housekeeping sweep.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::json;

use super::purge::purge_subject_in;
use super::{
    AddConsent, CommandStamp, PurgeReason, Revocation, SqlCtx, Store, StoreError, Swept, Writer,
};
use crate::audit::kind;
use crate::config::{Identity, TrustedKey};
use crate::gate::{self, Consent, Decision, DropReason, SignatureMemo};
use crate::ids::SubjectId;

const COLUMNS: &str = "id, subject, issuer, issued_at, expires_at, audience, scopes, kid, token";

fn consent(r: &Row) -> rusqlite::Result<Consent> {
    let audience: String = r.get(5)?;
    let scopes: String = r.get(6)?;
    let subject: String = r.get(1)?;
    Ok(Consent {
        id: r.get(0)?,
        subject: SubjectId::new(subject).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
        })?,
        issuer: r.get(2)?,
        issued_at: r.get(3)?,
        expires_at: r.get(4)?,
        audience: serde_json::from_str(&audience).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(e))
        })?,
        scopes: scopes
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        kid: r.get(7)?,
        token: r.get(8)?,
    })
}

fn tombstone(conn: &Connection, sref: &[u8; 32]) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached("SELECT revoked_before FROM tombstones WHERE subject_ref = ?1")
        .and_then(|mut s| s.query_row([&sref[..]], |r| r.get(0)).optional())
        .op("reading a revocation tombstone")
}

pub(super) fn add(
    store: &mut Store,
    c: &Consent,
    now: i64,
    cmd: Option<CommandStamp<'_, AddConsent>>,
) -> Result<AddConsent, StoreError> {
    let mut w = store.writer()?;
    let sref = w.pseudonym(&c.subject);
    // A consent id is unique per signing key: the same token again is
    // harmless, another consent under a used (kid, id) is refused.
    let stored: Option<String> =
        w.tx.prepare_cached("SELECT token FROM consents WHERE kid = ?1 AND id = ?2")
            .and_then(|mut s| s.query_row(params![c.kid, c.id], |r| r.get(0)).optional())
            .op("looking up a consent id")?;
    if stored.is_some_and(|token| token != c.token) {
        let detail = json!({ "consent_id": c.id, "kid": c.kid, "reason": "jti_reused" });
        let refused = StoreError::ConsentIdReused {
            consent_id: c.id.clone(),
            kid: c.kid.clone(),
        };
        return refuse(w, &sref, detail, refused, "consent_jti_reused", cmd, now);
    }
    if let Some(revoked_before) = tombstone(&w.tx, &sref)? {
        if gate::is_revoked(c, Some(revoked_before)) {
            let detail = json!({ "consent_id": c.id, "reason": "revoked", "revoked_before": revoked_before });
            let refused = StoreError::Revoked {
                consent_id: c.id.clone(),
                revoked_before,
            };
            return refuse(w, &sref, detail, refused, "consent_revoked", cmd, now);
        }
    }
    let audience = serde_json::to_string(&c.audience).map_err(|e| StoreError::Corrupt {
        what: format!("consent {} audience: {e}", c.id),
    })?;
    let inserted =
        w.tx.execute(
            "INSERT INTO consents (id, subject, subject_ref, issuer, issued_at, expires_at,
                                   audience, scopes, kid, token, added_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT(kid, id) DO NOTHING",
            params![
                c.id,
                c.subject.as_str(),
                &sref[..],
                c.issuer,
                c.issued_at,
                c.expires_at,
                audience,
                c.scopes.join(" "),
                c.kid,
                c.token,
                now
            ],
        )
        .op("storing a consent")?;
    let outcome = if inserted == 1 {
        let detail = json!({
            "consent_id": c.id, "issuer": c.issuer, "kid": c.kid,
            "issued_at": c.issued_at, "expires_at": c.expires_at, "scopes": c.scopes,
        });
        w.audit(now, kind::CONSENT_ADDED, Some(&sref), detail)?;
        AddConsent::Added
    } else {
        AddConsent::AlreadyKnown
    };
    w.applied(cmd, &outcome, now)?;
    w.commit()?;
    Ok(outcome)
}

/// Audits a refused consent and, for a command, keeps the command (it is used
/// up by its refusal) with the refusal as its reply; commits and returns the
/// refusal.
fn refuse(
    mut w: Writer,
    sref: &[u8; 32],
    detail: serde_json::Value,
    refused: StoreError,
    command_reason: &str,
    cmd: Option<CommandStamp<'_, AddConsent>>,
    now: i64,
) -> Result<AddConsent, StoreError> {
    w.audit(now, kind::CONSENT_REFUSED, Some(sref), detail)?;
    if let Some(cmd) = cmd {
        let reply = (cmd.reply)(Err(&refused));
        super::replay::remember(&mut w, cmd.jti, cmd.expires_at, &reply, now)?;
        if let Some(seq) = cmd.seq {
            super::consent_log::mark_applied(&w.tx, seq)?;
        }
        let detail = json!({ "jti": cmd.jti, "cmd": cmd.cmd, "reason": command_reason });
        w.audit(now, kind::COMMAND_REFUSED, None, detail)?;
    }
    w.commit()?;
    Err(refused)
}

fn query(
    conn: &Connection,
    sql_where: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<Consent>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM consents {sql_where} ORDER BY issued_at, id");
    let mut stmt = conn.prepare_cached(&sql).op("reading consents")?;
    let rows = stmt
        .query_map(args, consent)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .op("reading consents")?;
    Ok(rows)
}

/// The consents stored for a pseudonym, oldest first.
fn of_subject(conn: &Connection, sref: &[u8; 32]) -> Result<Vec<Consent>, StoreError> {
    query(conn, "WHERE subject_ref = ?1", [&sref[..]])
}

pub(super) fn for_subject(
    store: &mut Store,
    subject: &SubjectId,
) -> Result<Vec<Consent>, StoreError> {
    let sref = store.keys.pseudonyms.pseudonym(subject.as_str());
    of_subject(&store.conn, &sref)
}

pub(super) fn list(store: &mut Store) -> Result<Vec<Consent>, StoreError> {
    query(&store.conn, "", [])
}

pub(super) fn revoked_before(
    store: &mut Store,
    subject: &SubjectId,
) -> Result<Option<i64>, StoreError> {
    let sref = store.keys.pseudonyms.pseudonym(subject.as_str());
    tombstone(&store.conn, &sref)
}

/// The tables the consent rule reads (besides the trusted keys and `now`).
const RULE_TABLES: [&str; 2] = ["consents", "tombstones"];

/// The row events that change a table.
const EVENTS: [&str; 3] = ["INSERT", "UPDATE", "DELETE"];

/// One temp trigger per table of [`RULE_TABLES`] and event, with `body`.
fn triggers(name: &str, when: &str, body: &str) -> String {
    let mut sql = String::new();
    for table in RULE_TABLES {
        for event in EVENTS {
            sql.push_str(&format!(
                "CREATE TEMP TRIGGER IF NOT EXISTS {table}_{name}_{event} {when} {event} ON main.{table}
                 BEGIN {body}; END;\n"
            ));
        }
    }
    sql
}

/// Sets up the main connection's count of every row written to the tables
/// the rule reads: temp triggers (nothing on disk) add one to a temp table
/// per insert, update and delete, so a [`DecisionMemo`] knows whether what it
/// remembers may be stale without reading those tables. The count is part of
/// the writing transaction: a rollback takes it back with the rows.
pub(super) fn watch_changes(conn: &Connection) -> Result<(), StoreError> {
    let sql = format!(
        "CREATE TEMP TABLE IF NOT EXISTS consent_changes (n INTEGER NOT NULL);
         INSERT INTO temp.consent_changes SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM temp.consent_changes);
         {}",
        triggers("counted", "AFTER", "UPDATE consent_changes SET n = n + 1")
    );
    conn.execute_batch(&sql)
        .op("setting up the count of consent changes")
}

/// The second connection writes acknowledgements only: temp triggers make
/// any write of the tables the rule reads fail there, so every such write is
/// counted by the main connection's [`watch_changes`].
pub(super) fn refuse_changes(conn: &Connection) -> Result<(), StoreError> {
    let sql = triggers(
        "refused",
        "BEFORE",
        "SELECT RAISE(ABORT, 'consents and tombstones are written on the main connection only')",
    );
    conn.execute_batch(&sql)
        .op("setting up the second connection's triggers")
}

/// How many consent and tombstone rows this connection has written.
fn changes(conn: &Connection) -> Result<i64, StoreError> {
    conn.prepare_cached("SELECT n FROM temp.consent_changes")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .op("reading the count of consent changes")
}

/// Answers of the consent rule remembered per subject, so that a hand-over
/// of a few captures every millisecond does not read and judge the same
/// subjects' consents again and again. An answer is used only while all it
/// was computed from is unchanged:
/// - no consent or tombstone was written since ([`watch_changes`]; the
///   second connection cannot write them, [`refuse_changes`]);
/// - the same trusted keys and the same identity;
/// - `now` within the interval where the rule's time term gives the same
///   answer ([`gate::steady_between`]), a clock set back included.
///
/// Same answers as [`decide_fresh`] (tested); remembered only outside a
/// write transaction, so nothing uncommitted is remembered. Kept by the
/// subject's storage pseudonym, with the consent id or the refusal: no plain
/// subject id is held.
#[derive(Debug, Default)]
pub(super) struct DecisionMemo {
    /// The count of consent changes the answers hold for.
    changes: i64,
    trust: Vec<TrustedKey>,
    me: Option<Identity>,
    answers: std::collections::HashMap<[u8; 32], Remembered>,
}

#[derive(Debug)]
struct Remembered {
    /// The consent that allows uploading, or why none does.
    answer: Result<String, DropReason>,
    from: i64,
    until: i64,
}

impl DecisionMemo {
    /// At most this many subjects are remembered; when full, all are
    /// forgotten and judged again as needed.
    const CAPACITY: usize = 8192;

    /// Forgets every answer unless they hold for these inputs.
    fn hold_for(&mut self, changes: i64, trust: &[TrustedKey], me: &Identity) {
        if self.changes != changes || self.trust != trust || self.me.as_ref() != Some(me) {
            self.answers.clear();
            self.changes = changes;
            self.trust = trust.to_vec();
            self.me = Some(me.clone());
        }
    }

    /// The remembered decision for `subject` (pseudonym `sref`) at `now`.
    fn get(&self, sref: &[u8; 32], subject: &SubjectId, now: i64) -> Option<Decision> {
        let r = self
            .answers
            .get(sref)
            .filter(|r| r.from <= now && now < r.until)?;
        Some(match &r.answer {
            Ok(consent_id) => Decision::Accept {
                subject: subject.clone(),
                consent_id: consent_id.clone(),
            },
            Err(reason) => Decision::Drop(*reason),
        })
    }

    fn remember(&mut self, sref: [u8; 32], decision: &Decision, (from, until): (i64, i64)) {
        if self.answers.len() >= Self::CAPACITY {
            self.answers.clear();
        }
        let answer = match decision {
            Decision::Accept { consent_id, .. } => Ok(consent_id.clone()),
            Decision::Drop(reason) => Err(*reason),
        };
        self.answers.insert(
            sref,
            Remembered {
                answer,
                from,
                until,
            },
        );
    }
}

/// [`gate::decide`] on the subject's stored consents and tombstone,
/// remembered ([`DecisionMemo`]).
pub(super) fn decide(
    store: &mut Store,
    subject: &SubjectId,
    trust: &[TrustedKey],
    me: &Identity,
    now: i64,
) -> Result<Decision, StoreError> {
    if !store.conn.is_autocommit() {
        return Ok(decide_fresh(store, subject, trust, me, now)?.0);
    }
    let n = changes(&store.conn)?;
    store.decisions.hold_for(n, trust, me);
    let sref = store.keys.pseudonyms.pseudonym(subject.as_str());
    if let Some(d) = store.decisions.get(&sref, subject, now) {
        return Ok(d);
    }
    let (decision, steady) = decide_fresh(store, subject, trust, me, now)?;
    store.decisions.remember(sref, &decision, steady);
    Ok(decision)
}

/// [`gate::decide`] on what the store holds now, and the interval of `now`
/// over which that answer holds ([`gate::steady_between`]).
pub(super) fn decide_fresh(
    store: &mut Store,
    subject: &SubjectId,
    trust: &[TrustedKey],
    me: &Identity,
    now: i64,
) -> Result<(Decision, (i64, i64)), StoreError> {
    let sref = store.keys.pseudonyms.pseudonym(subject.as_str());
    let consents = of_subject(&store.conn, &sref)?;
    let revoked_before = tombstone(&store.conn, &sref)?;
    let memo = &mut store.signatures;
    let mut signed = |c: &Consent| memo.still_signed(c, trust);
    let decision = gate::decide_with(
        Some(subject),
        &consents,
        revoked_before,
        &mut signed,
        me,
        now,
    );
    Ok((decision, gate::steady_between(&consents, now)))
}

pub(super) fn active_count(store: &mut Store, now: i64) -> Result<u64, StoreError> {
    let n: i64 = store
        .conn
        .query_row(
            "SELECT COUNT(*) FROM consents WHERE expires_at > ?1",
            [now],
            |r| r.get(0),
        )
        .op("counting consents")?;
    Ok(n.max(0) as u64)
}

pub(super) fn revoke(
    store: &mut Store,
    subject: &SubjectId,
    before: i64,
    now: i64,
    cmd: Option<CommandStamp<'_, Revocation>>,
) -> Result<Revocation, StoreError> {
    let mut w = store.writer()?;
    let sref = w.pseudonym(subject);
    w.tx.execute(
        "INSERT INTO tombstones (subject_ref, revoked_before, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(subject_ref) DO UPDATE SET
             revoked_before = max(revoked_before, excluded.revoked_before),
             updated_at = excluded.updated_at",
        params![&sref[..], before, now],
    )
    .op("writing a revocation tombstone")?;
    let revoked_before = tombstone(&w.tx, &sref)?.unwrap_or(before);
    let removed =
        w.tx.execute(
            "DELETE FROM consents WHERE subject_ref = ?1 AND issued_at <= ?2",
            params![&sref[..], revoked_before],
        )
        .op("deleting revoked consents")? as u64;
    let remaining: i64 =
        w.tx.query_row(
            "SELECT count(*) FROM consents WHERE subject_ref = ?1",
            params![&sref[..]],
            |r| r.get(0),
        )
        .op("counting the consents a revocation leaves")?;
    let remaining = remaining.max(0) as u64;
    let detail = json!({ "before": before, "revoked_before": revoked_before,
                         "consents_removed": removed, "consents_remaining": remaining });
    w.audit(now, kind::CONSENT_REVOKED, Some(&sref), detail)?;
    let purged = purge_subject_in(&mut w, &sref, now, PurgeReason::Revoked)?;
    // The subject's history so far becomes unlinkable to it (ARCHITECTURE I3);
    // rows naming it from now on get a new salt.
    w.forget_audit_subject(&sref)?;
    let revocation = Revocation {
        consents_removed: removed,
        purged,
        revoked_before,
        consents_remaining: remaining,
    };
    w.applied(cmd, &revocation, now)?;
    w.commit()?;
    store.checkpoint()?;
    Ok(revocation)
}

/// What the rule reads about one subject: its stored consents (oldest first)
/// and its revocation tombstone.
type Ledger = (Vec<Consent>, Option<i64>);

fn sref_of(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt {
        what: "a malformed subject_ref".into(),
    })
}

/// Every subject with queued captures, by pseudonym, with its ledger; in
/// three queries whatever the number of subjects.
fn queued_ledgers(conn: &Connection) -> Result<BTreeMap<[u8; 32], Ledger>, StoreError> {
    const QUEUED: &str = "SELECT subject_ref FROM captures";
    let mut out = BTreeMap::new();
    let subjects: Vec<Vec<u8>> = conn
        .prepare_cached("SELECT DISTINCT subject_ref FROM captures")
        .and_then(|mut s| {
            s.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .op("listing subjects with queued captures")?;
    for sref in subjects {
        out.insert(sref_of(sref)?, (Vec::new(), None));
    }
    let consents: Vec<(Vec<u8>, Consent)> = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS}, subject_ref FROM consents
             WHERE subject_ref IN ({QUEUED}) ORDER BY issued_at, id"
        ))
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(9)?, consent(r)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .op("reading the consents of queued subjects")?;
    for (sref, c) in consents {
        if let Some(ledger) = out.get_mut(&sref_of(sref)?) {
            ledger.0.push(c);
        }
    }
    let tombstones: Vec<(Vec<u8>, i64)> = conn
        .prepare_cached(&format!(
            "SELECT subject_ref, revoked_before FROM tombstones WHERE subject_ref IN ({QUEUED})"
        ))
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .op("reading the tombstones of queued subjects")?;
    for (sref, revoked_before) in tombstones {
        if let Some(ledger) = out.get_mut(&sref_of(sref)?) {
            ledger.1 = Some(revoked_before);
        }
    }
    Ok(out)
}

/// Deletes the consents expired at `now`, auditing each; returns how many.
fn delete_expired(w: &mut Writer, now: i64) -> Result<usize, StoreError> {
    let expired: Vec<(String, String, Vec<u8>)> =
        w.tx.prepare_cached(
            "SELECT kid, id, subject_ref FROM consents WHERE expires_at <= ?1
             ORDER BY expires_at, kid, id",
        )
        .and_then(|mut s| {
            s.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .op("finding expired consents")?;
    for (kid, id, sref) in &expired {
        let sref: [u8; 32] = sref
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt {
                what: format!("consent {id} has a malformed subject_ref"),
            })?;
        w.tx.execute("DELETE FROM consents WHERE kid = ?1 AND id = ?2", [kid, id])
            .op("deleting an expired consent")?;
        w.audit(
            now,
            kind::CONSENT_EXPIRED,
            Some(&sref),
            json!({ "consent_id": id }),
        )?;
    }
    Ok(expired.len())
}

pub(super) fn sweep(
    store: &mut Store,
    trust: &[TrustedKey],
    me: &Identity,
    now: i64,
) -> Result<Vec<Swept>, StoreError> {
    // The write transaction borrows the store: lend the memo out meanwhile.
    let mut memo = std::mem::take(&mut store.signatures);
    let r = sweep_with(store, &mut memo, trust, me, now);
    store.signatures = memo;
    r
}

fn sweep_with(
    store: &mut Store,
    memo: &mut SignatureMemo,
    trust: &[TrustedKey],
    me: &Identity,
    now: i64,
) -> Result<Vec<Swept>, StoreError> {
    let mut w = store.writer()?;
    // The rule on every subject with queued captures, on what is stored now:
    // expired consents are still there, so expiry is named as the cause.
    let mut signed = |c: &Consent| memo.still_signed(c, trust);
    let mut refused = Vec::new();
    for (sref, (consents, revoked_before)) in queued_ledgers(&w.tx)? {
        if let Err(reason) = gate::allowing_with(&consents, revoked_before, &mut signed, me, now) {
            refused.push((sref, PurgeReason::from(reason)));
        }
    }
    let expired = delete_expired(&mut w, now)?;
    if refused.is_empty() && expired == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(refused.len());
    for (sref, reason) in refused {
        let purged = purge_subject_in(&mut w, &sref, now, reason)?;
        out.push(Swept {
            subject_ref: hex::encode(sref),
            reason,
            purged,
        });
    }
    w.commit()?;
    store.checkpoint()?;
    Ok(out)
}
