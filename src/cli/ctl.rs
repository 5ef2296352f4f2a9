//! `facegate ctl`: one request to the running daemon over its control socket,
//! and the rendering of the answer.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use serde_json::Value;

use facegate::control::{self, Request, Response};
use facegate::{clock, config};

use super::args::{Ctl, CtlAudit, CtlConsent};

/// Sends the request `command` stands for and prints the answer.
pub fn execute(path: &Path, command: Ctl) -> anyhow::Result<ExitCode> {
    let cfg = config::load_unchecked(path)?;
    let (req, view) = match command {
        Ctl::Status { json } => (
            Request::Status,
            if json { View::Json } else { View::Status },
        ),
        Ctl::Consent {
            command: CtlConsent::Add { token },
        } => (Request::ConsentAdd { token }, View::Summary),
        Ctl::Consent {
            command: CtlConsent::List { json },
        } => (
            Request::ConsentList,
            if json { View::Json } else { View::Consents },
        ),
        Ctl::Consent {
            command: CtlConsent::Revoke { subject },
        } => (Request::ConsentRevoke { subject }, View::Summary),
        Ctl::Purge { subject, all } => (Request::Purge { subject, all }, View::Summary),
        Ctl::Audit {
            command: CtlAudit::Verify,
        } => (Request::AuditVerify, View::AuditVerify),
        Ctl::Audit {
            command: CtlAudit::Tail { n, json },
        } => (
            Request::AuditTail { n },
            if json { View::Json } else { View::AuditTail },
        ),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = rt.block_on(control::request(&cfg.control.socket, &req))?;
    render(response, view)
}

/// How to print a control response.
enum View {
    Json,
    Summary,
    Status,
    Consents,
    AuditVerify,
    AuditTail,
}

fn render(response: Response, view: View) -> anyhow::Result<ExitCode> {
    if !response.ok {
        let e = response.error.unwrap_or_else(|| control::ErrorBody {
            code: "internal".into(),
            message: "refused without a reason".into(),
        });
        bail!("{}: {}", e.code, e.message);
    }
    let v = response.result.unwrap_or(Value::Null);
    match view {
        View::Json | View::Summary => println!("{}", serde_json::to_string_pretty(&v)?),
        View::Status => print_status(&v),
        View::Consents => {
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no consents stored");
            }
            for c in list {
                println!(
                    "{:<24} {:<36} expires {} {}",
                    s(&c["subject"]),
                    s(&c["consent_id"]),
                    s(&c["expires_at"]),
                    if c["active"].as_bool() == Some(true) {
                        ""
                    } else {
                        "(expired)"
                    }
                );
            }
        }
        View::AuditVerify => {
            let ok = v["ok"].as_bool() == Some(true);
            println!("{}", serde_json::to_string(&v)?);
            if !ok {
                return Ok(ExitCode::from(2));
            }
        }
        View::AuditTail => {
            for e in v.as_array().cloned().unwrap_or_default() {
                println!(
                    "{:>6} {} {:<22} {} {}",
                    e["seq"],
                    e["ts"].as_i64().map(clock::rfc3339).unwrap_or_default(),
                    s(&e["kind"]),
                    e["subject_ref"]
                        .as_str()
                        .map(|r| &r[..r.len().min(12)])
                        .unwrap_or("-"),
                    e["detail"]
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(v: &Value) {
    println!(
        "facegate {} — {} at {}",
        s(&v["version"]),
        s(&v["state"]),
        s(&v["ts"])
    );
    let o = &v["outbox"];
    println!(
        "outbox:   {} captures, {} bytes, oldest {} s",
        o["captures"], o["bytes"], o["oldest_age_s"]
    );
    println!("consents: {} active", v["consent"]["active"]);
    let c = &v["counters"];
    println!(
        "counters: accepted {}, dropped (no consent) {}, rejected (bad input) {}, rejected (outbox full) {}, \
         uploaded {}, upload retries {}, purged {}",
        c["accepted"],
        c["dropped_no_consent"],
        c["rejected_bad_input"],
        c["rejected_quota"],
        c["uploaded"],
        c["upload_retries"],
        c["purged"]
    );
    let u = &v["uplink"];
    println!(
        "uplink:   {}, {} in flight",
        if u["connected"].as_bool() == Some(true) {
            "connected"
        } else {
            "not connected"
        },
        u["in_flight"]
    );
}

fn s(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}
