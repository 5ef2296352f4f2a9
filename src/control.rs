//! Local control socket for site admins (`facegate ctl …`).
//!
//! One JSON request line in, one JSON response line out, then the connection
//! closes. [`dispatch`] turns a [`Request`] into calls of the agent's typed
//! operations; the agent knows nothing of this protocol. The socket is a Unix socket (mode 0660): file permissions are the
//! authorization, so a local revoke needs no signature. There is no network
//! listener anywhere in facegate.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::agent::{
    subject_id, Agent, ApplyError, ConsentSummary, OutboxEntry, PurgeTarget, Retried,
};
use crate::audit::{AuditEntry, VerifyReport};
use crate::clock;
use crate::ids::CaptureId;
use crate::protocol::{ErrorBody, ErrorCode, Granted, Receipt, Status};
use crate::shutdown::Shutdown;

/// Largest request line accepted (a consent token fits easily).
const MAX_REQUEST: u64 = 64 * 1024;
/// A client that says nothing for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What `facegate ctl` can ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The SPEC status object.
    Status,
    /// Verify and store a consent token.
    ConsentAdd {
        /// Compact JWS consent token.
        token: String,
    },
    /// Every stored consent.
    ConsentList,
    /// Revoke every consent of `subject` the device holds or could accept now
    /// (issued up to now + `[commands] clock_skew`) and purge its captures.
    ConsentRevoke {
        /// Subject id.
        subject: String,
    },
    /// Purge captures of one subject (or all), keeping consents.
    Purge {
        /// Subject id, or `None` together with `all`.
        subject: Option<String>,
        /// Purge every queued capture.
        #[serde(default)]
        all: bool,
    },
    /// Check the audit hash chain.
    AuditVerify,
    /// The newest audit entries.
    AuditTail {
        /// How many entries.
        n: usize,
    },
    /// Every capture of the outbox (queued, in flight, quarantined).
    OutboxList,
    /// Put quarantined captures back in the queue: one, or all.
    OutboxRetry {
        /// Capture id, or `None` together with `all`.
        capture_id: Option<String>,
        /// Every quarantined capture.
        #[serde(default)]
        all: bool,
    },
}

/// What a request that took effect answers with: the agent's typed result.
/// Untagged on the socket; a client that knows its request reads the answer
/// as that request's type (see [`request`]), since an empty list could be
/// either list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Answer {
    /// `status`: the SPEC status object.
    Status(Box<Status>),
    /// `consent_add`: the stored consent.
    Granted(Granted),
    /// `consent_revoke`, `purge`: the purge receipt.
    Receipt(Receipt),
    /// `audit_verify`: whether the chain is intact.
    AuditReport(VerifyReport),
    /// `consent_list`: every stored consent.
    Consents(Vec<ConsentSummary>),
    /// `audit_tail`: the newest audit entries.
    AuditEntries(Vec<AuditEntry>),
    /// `outbox_list`: the captures of the outbox.
    OutboxEntries(Vec<OutboxEntry>),
    /// `outbox_retry`: the captures put back in the queue.
    Retried(Retried),
}

impl From<Vec<OutboxEntry>> for Answer {
    fn from(list: Vec<OutboxEntry>) -> Self {
        Answer::OutboxEntries(list)
    }
}

impl From<Retried> for Answer {
    fn from(r: Retried) -> Self {
        Answer::Retried(r)
    }
}

impl From<Status> for Answer {
    fn from(s: Status) -> Self {
        Answer::Status(Box::new(s))
    }
}

impl From<Granted> for Answer {
    fn from(g: Granted) -> Self {
        Answer::Granted(g)
    }
}

impl From<Receipt> for Answer {
    fn from(r: Receipt) -> Self {
        Answer::Receipt(r)
    }
}

impl From<VerifyReport> for Answer {
    fn from(r: VerifyReport) -> Self {
        Answer::AuditReport(r)
    }
}

impl From<Vec<ConsentSummary>> for Answer {
    fn from(list: Vec<ConsentSummary>) -> Self {
        Answer::Consents(list)
    }
}

impl From<Vec<AuditEntry>> for Answer {
    fn from(rows: Vec<AuditEntry>) -> Self {
        Answer::AuditEntries(rows)
    }
}

/// The answer to one [`Request`]: `{"ok":true,"result":…}` or
/// `{"ok":false,"error":{"code":…,"message":…}}`. The daemon sends
/// `Response<Answer>`; a client reads the result as the type its request
/// answers with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response<T = Answer> {
    /// True when the request took effect.
    pub ok: bool,
    /// The result when `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    /// `{code, message}` when not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl<T> Response<T> {
    /// A success carrying `result`.
    pub fn ok(result: T) -> Self {
        Response {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// A refusal.
    pub fn err(code: ErrorCode, message: impl Into<String>) -> Self {
        Response {
            ok: false,
            result: None,
            error: Some(ErrorBody {
                code,
                message: message.into(),
            }),
        }
    }

    /// The result, or the refusal.
    pub fn into_result(self) -> Result<T, ErrorBody> {
        match (self.result, self.error) {
            (Some(result), None) if self.ok => Ok(result),
            (_, Some(e)) => Err(e),
            _ => Err(ErrorBody {
                code: ErrorCode::Internal,
                message: "answer without a result or a reason".into(),
            }),
        }
    }
}

/// Answers one request with the agent's typed operations, at the current time.
pub async fn dispatch(agent: &Agent, req: Request) -> Response {
    let now = clock::now();
    let result = match req {
        Request::Status => answer(agent.status(now).await),
        Request::ConsentAdd { token } => answer(agent.grant(token, now, None).await),
        Request::ConsentList => answer(agent.list_consents(now).await),
        Request::ConsentRevoke { subject } => {
            // A local revoke needs no signature; it covers every consent
            // the device could have accepted by now.
            match subject_id(subject) {
                Ok(subject) => answer(agent.revoke_now(subject, now).await),
                Err(e) => Err(e),
            }
        }
        Request::Purge { subject, all } => match (subject, all) {
            (Some(s), false) => match subject_id(s) {
                Ok(s) => answer(agent.purge(PurgeTarget::Subject(s), now, None).await),
                Err(e) => Err(e),
            },
            (None, true) => answer(agent.purge(PurgeTarget::All, now, None).await),
            _ => Err(ApplyError::BadRequest(
                "purge needs a subject or --all, not both".into(),
            )),
        },
        Request::AuditVerify => answer(agent.audit_verify().await),
        Request::AuditTail { n } => answer(agent.audit_tail(n).await),
        Request::OutboxList => answer(agent.outbox_list(now).await),
        Request::OutboxRetry { capture_id, all } => match (capture_id, all) {
            (Some(id), false) if !id.is_empty() => {
                answer(agent.retry_quarantined(Some(CaptureId::new(id)), now).await)
            }
            (None, true) => answer(agent.retry_quarantined(None, now).await),
            _ => Err(ApplyError::BadRequest(
                "outbox retry needs a capture id or --all, not both".into(),
            )),
        },
    };
    match result {
        Ok(v) => Response::ok(v),
        Err(e) => Response::err(e.code(), e.to_string()),
    }
}

fn answer<T: Into<Answer>>(r: Result<T, ApplyError>) -> Result<Answer, ApplyError> {
    r.map(Into::into)
}

/// Failures of the control socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be created.
    #[error("control socket {path}: cannot listen: {source}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another daemon already answers on the socket.
    #[error("control socket {path}: another facegate is already running there")]
    InUse {
        /// The socket's path.
        path: PathBuf,
    },
    /// The client could not reach the daemon.
    #[error("control socket {path}: cannot connect ({source}); is `facegate run` running?")]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket's path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The daemon did not answer in time.
    #[error("control socket {path}: no answer within {0:?}", IO_TIMEOUT)]
    Timeout {
        /// The socket's path.
        path: PathBuf,
    },
    /// The answer was not a valid response.
    #[error("control socket {path}: bad answer: {reason}")]
    BadAnswer {
        /// The socket's path.
        path: PathBuf,
        /// What was wrong with the answer.
        reason: String,
    },
}

/// Sends one request to the daemon listening at `path` and returns its
/// response, its result read as `T`: the type the request answers with
/// ([`Status`] for [`Request::Status`], …), or [`Answer`].
pub async fn request<T: DeserializeOwned>(
    path: &Path,
    req: &Request,
) -> Result<Response<T>, ControlError> {
    let answer = exchange(path, req).await?;
    serde_json::from_str(&answer).map_err(|e| ControlError::BadAnswer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// One request line out, one answer line back: the socket I/O of
/// [`request`], kept out of its generic part so it is compiled once.
async fn exchange(path: &Path, req: &Request) -> Result<String, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::BadAnswer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).await.map_err(io)?;
    let mut answer = String::new();
    // Purges and audit checks on a large store can take a while: be generous.
    let mut reader = BufReader::new(stream);
    let read = reader.read_line(&mut answer);
    match tokio::time::timeout(IO_TIMEOUT * 6, read).await {
        Err(_) => {
            return Err(ControlError::Timeout {
                path: path.to_path_buf(),
            })
        }
        Ok(r) => r.map_err(io)?,
    };
    Ok(answer)
}

/// Binds the control socket (mode 0660), replacing a stale socket file left by a
/// crashed daemon but refusing to steal one a live daemon answers on.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(|source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
        ControlError::Bind {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

/// Answers requests until shutdown; each connection is served on its own task.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    agent: Arc<Agent>,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_one(stream, &agent).await {
                            tracing::warn!(error = %e, "control client dropped");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn serve_one(stream: UnixStream, agent: &Agent) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST + 1));
    match tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => return Ok(()),
        Ok(r) => r?,
    };
    let response = if line.len() as u64 > MAX_REQUEST {
        Response::err(
            ErrorCode::TooLarge,
            format!("request longer than {MAX_REQUEST} bytes"),
        )
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(req) => dispatch(agent, req).await,
            Err(e) => Response::err(ErrorCode::Malformed, format!("bad request: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::testing;

    #[tokio::test]
    async fn dispatch_answers_with_the_agents_operations() {
        let (_dir, agent) = testing::agent("");
        let status = dispatch(&agent, Request::Status).await;
        assert!(status.ok, "{status:?}");
        let Some(Answer::Status(status)) = status.result else {
            panic!("not a status: {status:?}");
        };
        assert_eq!(status.state, crate::protocol::State::Online);
        assert_eq!(status.outbox.unwrap().captures, 0);

        let purged = dispatch(
            &agent,
            Request::Purge {
                subject: Some("S-1".into()),
                all: false,
            },
        )
        .await;
        assert!(purged.ok, "{purged:?}");
        let Some(Answer::Receipt(receipt)) = purged.result else {
            panic!("not a receipt: {purged:?}");
        };
        assert_eq!(receipt.purged, 0);
        assert_eq!(receipt.subject.unwrap().as_str(), "S-1");

        let both = dispatch(
            &agent,
            Request::Purge {
                subject: Some("S-1".into()),
                all: true,
            },
        )
        .await;
        assert_eq!(both.error.unwrap().code, ErrorCode::BadArgs);

        let list = dispatch(&agent, Request::OutboxList).await;
        assert_eq!(list.result, Some(Answer::OutboxEntries(vec![])));
        let all = dispatch(
            &agent,
            Request::OutboxRetry {
                capture_id: None,
                all: true,
            },
        )
        .await;
        assert_eq!(
            all.result,
            Some(Answer::Retried(Retried { retried: vec![] }))
        );
        for (capture_id, all) in [(Some("nope"), false), (Some("nope"), true), (None, false)] {
            let r = dispatch(
                &agent,
                Request::OutboxRetry {
                    capture_id: capture_id.map(String::from),
                    all,
                },
            )
            .await;
            assert_eq!(
                r.error.unwrap().code,
                ErrorCode::BadArgs,
                "{capture_id:?} {all}"
            );
        }

        let bad = dispatch(
            &agent,
            Request::ConsentAdd {
                token: "not-a-token".into(),
            },
        )
        .await;
        assert!(!bad.ok);
        assert_eq!(bad.error.unwrap().code, ErrorCode::Malformed);

        let tail = dispatch(&agent, Request::AuditTail { n: 5 }).await;
        assert!(tail.ok, "{tail:?}");
        assert!(matches!(tail.result, Some(Answer::AuditEntries(rows)) if !rows.is_empty()));
    }

    #[tokio::test]
    async fn a_client_reads_each_answer_as_its_requests_type() {
        let (dir, agent) = testing::agent("");
        let agent = Arc::new(agent);
        let path = dir.path().join("control.sock");
        let listener = bind(&path).await.unwrap();
        let (stop, shutdown) = crate::shutdown::channel();
        let server = tokio::spawn(serve(listener, path.clone(), agent, shutdown));

        let status: Status = request(&path, &Request::Status)
            .await
            .unwrap()
            .into_result()
            .unwrap();
        assert_eq!(status.consent.unwrap().active, 0);
        // An empty list of either kind reads as the list asked for.
        let consents: Vec<ConsentSummary> = request(&path, &Request::ConsentList)
            .await
            .unwrap()
            .into_result()
            .unwrap();
        assert!(consents.is_empty());
        let report: VerifyReport = request(&path, &Request::AuditVerify)
            .await
            .unwrap()
            .into_result()
            .unwrap();
        assert!(report.ok, "{report:?}");
        let rows: Vec<AuditEntry> = request(&path, &Request::AuditTail { n: 3 })
            .await
            .unwrap()
            .into_result()
            .unwrap();
        assert_eq!(rows.len() as u64, report.rows.min(3));
        let refused = request::<Receipt>(
            &path,
            &Request::ConsentRevoke {
                subject: "a/b".into(),
            },
        )
        .await
        .unwrap()
        .into_result()
        .unwrap_err();
        assert_eq!(refused.code, ErrorCode::BadArgs);

        stop.fire(crate::shutdown::Reason::Requested);
        server.await.unwrap();
    }

    #[test]
    fn requests_round_trip_as_json_lines() {
        let cases = [
            (Request::Status, r#"{"op":"status"}"#),
            (
                Request::ConsentAdd {
                    token: "a.b.c".into(),
                },
                r#"{"op":"consent_add","token":"a.b.c"}"#,
            ),
            (
                Request::Purge {
                    subject: None,
                    all: true,
                },
                r#"{"op":"purge","subject":null,"all":true}"#,
            ),
            (Request::AuditTail { n: 5 }, r#"{"op":"audit_tail","n":5}"#),
        ];
        for (req, json) in cases {
            assert_eq!(serde_json::to_string(&req).unwrap(), json);
            assert_eq!(serde_json::from_str::<Request>(json).unwrap(), req);
        }
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"consent_add","token":"t","x":1}"#).is_err()
        );
    }
}
