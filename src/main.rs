//! The `facegate` command: daemon, local control, config check and fleet tool.
//! This is the binary edge: errors become one line on stderr and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use facegate::control::{self, Request, Response};
use facegate::{clock, config, consent, daemon, doctor, fleet, keys, logging, provision, shutdown};

#[derive(Parser)]
#[command(
    name = "facegate",
    version,
    about = "Consent-gated face-capture uplink for on-site terminals"
)]
struct Cli {
    /// Configuration file (TOML); FACEGATE_<KEY> environment variables override it.
    #[arg(long, short, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (intake, consent gate, outbox, control socket).
    Run,
    /// Validate the configuration; exits non-zero naming the key and the problem.
    CheckConfig,
    /// First-time setup: state dir, storage key, TLS key and CSR (safe to re-run).
    Provision {
        /// Owner of the created secrets (default: user `facegate` when run as root).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Check this terminal (files, certificates, clock, disk, broker); non-zero on failure.
    Doctor,
    /// Talk to the running daemon over its control socket.
    Ctl {
        #[command(subcommand)]
        command: Ctl,
    },
    /// Fleet managers' tool: keys, consent tokens, signed commands.
    Fleet {
        #[command(subcommand)]
        command: Fleet,
    },
}

#[derive(Subcommand)]
enum Ctl {
    /// Outbox, consents and counters.
    Status {
        /// Print the raw status object.
        #[arg(long)]
        json: bool,
    },
    /// Consent tokens held by the device.
    Consent {
        #[command(subcommand)]
        command: CtlConsent,
    },
    /// Purge queued captures of one subject, or all; consents stay.
    Purge {
        /// Subject id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        subject: Option<String>,
        /// Purge every queued capture.
        #[arg(long)]
        all: bool,
    },
    /// The hash-chained audit log.
    Audit {
        #[command(subcommand)]
        command: CtlAudit,
    },
}

#[derive(Subcommand)]
enum CtlConsent {
    /// Verify and store a consent token (compact JWS).
    Add { token: String },
    /// List stored consents.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke every consent of a subject issued up to now and purge its captures.
    Revoke { subject: String },
}

#[derive(Subcommand)]
enum CtlAudit {
    /// Check every entry of the hash chain; exits non-zero if any was altered or removed.
    Verify,
    /// Show the newest entries.
    Tail {
        /// How many entries.
        #[arg(short, default_value_t = 20)]
        n: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Fleet {
    /// Generate an Ed25519 signing key (PKCS#8 PEM, mode 0600) and print its public key.
    Keygen {
        /// Where to write the private key; never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a consent token for a subject.
    Consent(ConsentArgs),
    /// Sign a fleet command and print it (compact JWS).
    Sign(SignArgs),
    /// Sign a command, publish it over mutual TLS and print the replies.
    Send(Box<SendArgs>),
}

#[derive(Args)]
struct SendArgs {
    #[command(flatten)]
    signer: SignerArgs,
    /// Broker as HOST or HOST:PORT (default port 8883).
    #[arg(long)]
    broker: String,
    /// CA certificate (PEM) that signed the broker's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// The fleet's client certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// The fleet's TLS private key (PEM).
    #[arg(long = "tls-key")]
    tls_key: PathBuf,
    /// Topic prefix.
    #[arg(long, default_value = "facegate")]
    prefix: String,
    /// Target site.
    #[arg(long)]
    site: String,
    /// Target device; without it the command goes to every device of the site.
    #[arg(long)]
    device: Option<String>,
    /// Command name: consent.grant, consent.revoke, capture.purge, status.
    #[arg(long)]
    cmd: String,
    /// Arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
    /// How long the command stays valid.
    #[arg(long, default_value = "10m")]
    lifetime: humantime::Duration,
    /// How long to wait for replies (a whole site: always this long).
    #[arg(long, default_value = "10s")]
    timeout: humantime::Duration,
    /// Print each reply as one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SignerArgs {
    /// Private key file written by `fleet keygen`.
    #[arg(long)]
    key: PathBuf,
    /// Key id, as configured in the devices' [[trust]] entries.
    #[arg(long)]
    kid: String,
}

#[derive(Args)]
struct ConsentArgs {
    #[command(flatten)]
    signer: SignerArgs,
    /// Subject id the consent is about.
    #[arg(long)]
    subject: String,
    /// Audience: a site id or `site/device`; repeat for several.
    #[arg(long = "aud", required = true)]
    audience: Vec<String>,
    /// Space-separated scopes.
    #[arg(long, default_value = consent::UPLOAD_SCOPE)]
    scope: String,
    /// How long the consent lasts (`30d`, `12h`).
    #[arg(long, default_value = "365d")]
    lifetime: humantime::Duration,
    /// Issuer (`iss`).
    #[arg(long, default_value = "facegate-fleet")]
    issuer: String,
    /// Consent id (`jti`); a random UUID if omitted.
    #[arg(long)]
    jti: Option<String>,
}

#[derive(Args)]
struct SignArgs {
    #[command(flatten)]
    signer: SignerArgs,
    /// Audience: a site id or `site/device`.
    #[arg(long)]
    aud: String,
    /// Command name: consent.grant, consent.revoke, capture.purge, status.
    #[arg(long)]
    cmd: String,
    /// Arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
    /// How long the command stays valid.
    #[arg(long, default_value = "1h")]
    lifetime: humantime::Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("facegate: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run => run(&cli.config),
        Command::CheckConfig => {
            let cfg = config::load(&cli.config)?;
            println!(
                "{}: ok (site {}, device {}, {} trusted key(s))",
                cli.config.display(),
                cfg.identity.site_id,
                cfg.identity.device_id,
                cfg.trust.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Provision { owner } => {
            let cfg = config::load_unchecked(&cli.config)?;
            let owner = match owner {
                Some(name) => Some(provision::Owner::of_user(&name)?),
                None => provision::Owner::default_for_provision(),
            };
            println!("{}", provision::provision_owned(&cfg, owner)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor => {
            let report = doctor::run_checks(&cli.config);
            report.print();
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Ctl { command } => ctl(&cli.config, command),
        Command::Fleet { command } => fleet(command),
    }
}

fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = config::load(path)?;
    logging::init(&cfg.log)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (trigger, shutdown) = shutdown::channel();
        let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let path = path.to_path_buf();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => match config::load(&path) {
                        Ok(new) => {
                            let _ = reload_tx.send(new);
                        }
                        Err(e) => tracing::error!(
                            "reload refused, the running configuration stays: {}",
                            one_line(&e.to_string())
                        ),
                    },
                }
            }
            trigger.fire(shutdown::Reason::Signal);
        });
        daemon::run_with_reload(cfg, shutdown, Some(reload_rx)).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn ctl(path: &Path, command: Ctl) -> anyhow::Result<ExitCode> {
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

fn fleet(command: Fleet) -> anyhow::Result<ExitCode> {
    let now = clock::now();
    match command {
        Fleet::Keygen { out } => {
            let (pkcs8, public) = keys::generate()?;
            keys::write_private_key(&out, &pkcs8)?;
            println!("{}", keys::public_key_b64(&public));
            eprintln!("private key written to {} (mode 0600); the line above is the public key for [[trust]]", out.display());
        }
        Fleet::Consent(a) => {
            let pkcs8 = keys::read_private_key(&a.signer.key)?;
            let req = consent::ConsentRequest {
                issuer: a.issuer,
                subject: a.subject,
                audience: a.audience,
                scopes: a.scope.split_whitespace().map(str::to_string).collect(),
                lifetime_s: a.lifetime.as_secs() as i64,
                jti: a.jti,
            };
            println!(
                "{}",
                consent::sign_consent(&req, &a.signer.kid, &pkcs8, now)?
            );
        }
        Fleet::Sign(a) => {
            let pkcs8 = keys::read_private_key(&a.signer.key)?;
            let args: Value =
                serde_json::from_str(&a.args).context("--args must be a JSON object")?;
            if !args.is_object() {
                return Err(anyhow!("--args must be a JSON object"));
            }
            let (_, jws) = facegate::command::sign_command(
                &a.cmd,
                args,
                &a.aud,
                a.lifetime.as_secs() as i64,
                &a.signer.kid,
                &pkcs8,
                now,
            )?;
            println!("{jws}");
        }
        Fleet::Send(a) => return fleet_send(*a, now),
    }
    Ok(ExitCode::SUCCESS)
}

fn fleet_send(a: SendArgs, now: i64) -> anyhow::Result<ExitCode> {
    let (host, port) = match a.broker.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse()
                .with_context(|| format!("--broker: bad port in {:?}", a.broker))?,
        ),
        None => (a.broker.clone(), 8883),
    };
    let args: Value = serde_json::from_str(&a.args).context("--args must be a JSON object")?;
    let req = fleet::SendRequest {
        host,
        port,
        ca_file: a.ca,
        cert_file: a.cert,
        key_file: a.tls_key,
        prefix: a.prefix,
        site: a.site,
        device: a.device.clone(),
        cmd: a.cmd,
        args,
        lifetime_s: a.lifetime.as_secs() as i64,
        signing_key: keys::read_private_key(&a.signer.key)?,
        kid: a.signer.kid,
        timeout: *a.timeout,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(fleet::send(&req, now))?;
    for reply in &outcome.replies {
        if a.json {
            println!("{}", serde_json::to_string(&reply.body)?);
        } else {
            println!("{}", fleet::describe(reply));
        }
    }
    if outcome.replies.is_empty() {
        bail!(
            "command {} sent, but no reply within {}",
            outcome.jti,
            a.timeout
        );
    }
    let all_ok = outcome.replies.iter().all(|r| r.body["ok"] == true);
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
