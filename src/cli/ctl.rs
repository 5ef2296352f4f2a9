//! `facegate ctl`: one request to the running daemon over its control socket,
//! and the rendering of the typed answer.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use serde::de::DeserializeOwned;
use serde::Serialize;

use facegate::agent::{ConsentSummary, OutboxEntry, OutboxState, Retried};
use facegate::audit::{AuditEntry, VerifyReport};
use facegate::control::{self, Request};
use facegate::protocol::{Granted, IntakeState, Receipt, Status};
use facegate::{clock, config};

use super::args::{Ctl, CtlAudit, CtlConsent, CtlOutbox};

/// Sends the request `command` stands for and prints the answer.
pub fn execute(path: &Path, command: Ctl) -> anyhow::Result<ExitCode> {
    let cfg = config::load_unchecked(path)?;
    let socket = Socket {
        path: &cfg.control.socket,
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    };
    match command {
        Ctl::Status { json } => {
            let status: Status = socket.ask(Request::Status)?;
            if json {
                print_json(&status)?;
            } else {
                print_status(&status, &cfg.consent);
            }
        }
        Ctl::Consent {
            command: CtlConsent::Add { token },
        } => {
            let token = super::arg_value(token, "token")?;
            print_json(&socket.ask::<Granted>(Request::ConsentAdd { token })?)?
        }
        Ctl::Consent {
            command: CtlConsent::List { json },
        } => {
            let list: Vec<ConsentSummary> = socket.ask(Request::ConsentList)?;
            if json {
                print_json(&list)?;
            } else {
                print_consents(&list);
            }
        }
        Ctl::Consent {
            command: CtlConsent::Revoke { subject },
        } => {
            let subject = super::arg_value(subject, "subject id")?;
            print_json(&socket.ask::<Receipt>(Request::ConsentRevoke { subject })?)?
        }
        Ctl::Purge { subject, all } => {
            let subject = subject
                .map(|s| super::arg_value(s, "subject id"))
                .transpose()?;
            print_json(&socket.ask::<Receipt>(Request::Purge { subject, all })?)?
        }
        Ctl::Audit {
            command: CtlAudit::Verify,
        } => {
            let report: VerifyReport = socket.ask(Request::AuditVerify)?;
            println!("{}", serde_json::to_string(&report)?);
            if !report.ok {
                return Ok(ExitCode::from(2));
            }
        }
        Ctl::Audit {
            command: CtlAudit::Tail { n, json },
        } => {
            let rows: Vec<AuditEntry> = socket.ask(Request::AuditTail { n })?;
            if json {
                print_json(&rows)?;
            } else {
                print_audit(&rows);
            }
        }
        Ctl::Outbox {
            command: CtlOutbox::List { json },
        } => {
            let list: Vec<OutboxEntry> = socket.ask(Request::OutboxList)?;
            if json {
                print_json(&list)?;
            } else {
                print_outbox(&list);
            }
        }
        Ctl::Outbox {
            command: CtlOutbox::Retry { capture_id, all },
        } => print_json(&socket.ask::<Retried>(Request::OutboxRetry { capture_id, all })?)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon's control socket and a runtime to talk to it.
struct Socket<'a> {
    path: &'a Path,
    rt: tokio::runtime::Runtime,
}

impl Socket<'_> {
    /// Sends `req`; its result as the type `req` answers with, or the
    /// daemon's refusal as the error.
    fn ask<T: DeserializeOwned>(&self, req: Request) -> anyhow::Result<T> {
        let response = self.rt.block_on(control::request::<T>(self.path, &req))?;
        match response.into_result() {
            Ok(result) => Ok(result),
            Err(e) => bail!("{}: {}", e.code, e.message),
        }
    }
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `-` for what a status message left out.
fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn print_status(s: &Status, consent: &config::ConsentConfig) {
    println!(
        "facegate {} — {} at {}",
        s.version.as_deref().unwrap_or("-"),
        s.state.as_str(),
        or_dash(s.ts.map(clock::rfc3339))
    );
    let o = s.outbox.unwrap_or_default();
    println!(
        "outbox:   {} captures ({} quarantined), {} bytes, oldest {} s",
        o.captures, o.quarantined, o.bytes, o.oldest_age_s
    );
    println!("consents: {} active", or_dash(s.consent.map(|c| c.active)));
    let c = s.counters.unwrap_or_default();
    println!(
        "counters: accepted {}, dropped (no consent) {}, rejected (bad input) {}, rejected (outbox full) {}, \
         uploaded {}, upload retries {}, purged {}",
        c.accepted,
        c.dropped_no_consent,
        c.rejected_bad_input,
        c.rejected_quota,
        c.uploaded,
        c.upload_retries,
        c.purged
    );
    println!(
        "commands: refused {}, ignored (retained or QoS 0) {}",
        c.commands_refused, c.commands_ignored
    );
    let u = s.uplink.unwrap_or_default();
    println!(
        "uplink:   {}, {} in flight, session lost {}",
        if u.connected {
            "connected"
        } else {
            "not connected"
        },
        u.in_flight,
        u.session_lost
    );
    if let Some(log) = &s.consent_log {
        println!(
            "consent log: {}",
            facegate::consent_log::describe(
                log,
                Some(consent.log),
                Some(consent.head_max_age.as_secs())
            )
        );
    }
    if let Some(c) = &s.clock {
        println!("clock:    {}", describe_clock(c));
    }
    if let Some(st) = s.storage {
        let intake = match st.intake {
            IntakeState::Running => "intake running",
            IntakeState::PausedDiskFull => "INTAKE PAUSED: disk full (captures wait in the spool)",
        };
        println!(
            "storage:  {} bytes free, reserve {} of {} bytes, quota in effect {} bytes, {}{}",
            st.free_bytes,
            st.reserve_held,
            st.reserve_bytes,
            st.quota_bytes,
            intake,
            if st.deletes_failing {
                ", DELETES FAILING: uploads paused"
            } else {
                ""
            }
        );
    }
}

/// The status `clock` object in words.
fn describe_clock(c: &facegate::protocol::ClockStatus) -> String {
    use facegate::protocol::ClockState;
    match c.state {
        ClockState::Ok => "trusted".to_string(),
        ClockState::Unsynced => "trusted (NTP not synchronised)".to_string(),
        ClockState::Jumped => format!(
            "JUMPED {}{} s{} against the time that passed: held until the clock comes back or NTP or a signed command confirms it: {}",
            if c.jump_s > 0 { "+" } else { "" },
            c.jump_s,
            c.since
                .map(|t| format!(" at {}", facegate::clock::rfc3339(t)))
                .unwrap_or_default(),
            c.held.join(", ")
        ),
    }
}

fn print_consents(list: &[ConsentSummary]) {
    if list.is_empty() {
        println!("no consents stored");
    }
    for c in list {
        println!(
            "{:<24} {:<36} expires {} {}",
            c.subject.as_str(),
            c.consent_id.as_str(),
            clock::rfc3339(c.expires_at),
            if c.active { "" } else { "(expired)" }
        );
    }
}

fn print_outbox(list: &[OutboxEntry]) {
    if list.is_empty() {
        println!("outbox empty");
    }
    for e in list {
        let state = match e.state {
            OutboxState::Queued => "queued",
            OutboxState::InFlight => "in_flight",
            OutboxState::Quarantined => "quarantined",
        };
        println!(
            "{:<36} {:<11} {:>9} B {:>7} s  attempts {}  parts acked {}",
            e.capture_id, state, e.bytes, e.age_s, e.attempts, e.parts_acked
        );
    }
}

fn print_audit(rows: &[AuditEntry]) {
    for e in rows {
        println!(
            "{:>6} {} {:<22} {} {}",
            e.seq,
            clock::rfc3339(e.ts),
            e.kind,
            e.subject_ref
                .as_deref()
                .map(|r| &r[..r.len().min(12)])
                .unwrap_or("-"),
            e.detail
        );
    }
}
