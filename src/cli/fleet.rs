//! `facegate fleet`: key generation, consent tokens, signed commands, and
//! sending a command to devices over the broker.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use facegate::cmd::Command;
use facegate::fleet::overview;
use facegate::keyref::KeyRef;
use facegate::{clock, consent, fleet, keys};

use facegate::command::Stamp;
use facegate::fleet::log::{self as sitelog, Record};
use facegate::protocol::CommandName;

use super::args::{
    AclArgs, BrokerArgs, Fleet, FleetLog, LogCompactArgs, LogHeadArgs, LogSyncArgs, ReceiveArgs,
    SendArgs, StatusArgs,
};

/// Runs one fleet subcommand.
pub fn execute(command: Fleet) -> anyhow::Result<ExitCode> {
    let now = clock::now();
    match command {
        Fleet::Keygen { out } => {
            let (pkcs8, public) = keys::generate()?;
            keys::write_private_key(&out, &pkcs8)?;
            println!("{}", keys::public_key_b64(&public));
            eprintln!("private key written to {} (mode 0600); the line above is the public key for [[trust]]", out.display());
        }
        Fleet::Consent(a) => {
            if a.lifetime.as_secs() > a.max_lifetime.as_secs() {
                bail!(
                    "--lifetime {} exceeds --max-lifetime {} (the devices' [consent] max_lifetime): devices would refuse the token",
                    a.lifetime,
                    a.max_lifetime
                );
            }
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
            let args = super::arg_value(a.args, "--args")?;
            let args: Value =
                serde_json::from_str(&args).context("--args must be a JSON object")?;
            if !args.is_object() {
                return Err(anyhow!("--args must be a JSON object"));
            }
            let (_, jws) = Command::from_parts(&a.cmd, &args)?.sign(
                &a.aud,
                a.lifetime.as_secs() as i64,
                &a.signer.kid,
                &pkcs8,
                now,
            )?;
            println!("{jws}");
        }
        Fleet::Send(a) => return fleet_send(*a, now),
        Fleet::Acl(a) => print!("{}", fleet_acl(&a)?),
        Fleet::Status(a) => fleet_status(*a)?,
        Fleet::Receive(a) => fleet_receive(*a)?,
        Fleet::Log { command } => match command {
            FleetLog::Head(a) => log_head(*a, now)?,
            FleetLog::Sync(a) => return log_sync(*a, now),
            FleetLog::Compact(a) => log_compact(&a, now)?,
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// The ACL for `fleet acl`: reads the inventory, the rest is the library's.
fn fleet_acl(a: &AclArgs) -> anyhow::Result<String> {
    let inventory = if a.inventory.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("cannot read the inventory from stdin")?;
        text
    } else {
        std::fs::read_to_string(&a.inventory)
            .with_context(|| format!("cannot read the inventory {}", a.inventory.display()))?
    };
    let users = a
        .fleet
        .iter()
        .map(|spec| fleet::acl::FleetUser::parse(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let name = if a.inventory.as_os_str() == "-" {
        "stdin".to_string()
    } else {
        a.inventory.display().to_string()
    };
    fleet::acl::generate(&inventory, &a.prefix, &users).with_context(|| name)
}

/// HOST or HOST:PORT (default 8883).
fn host_port(broker: &str) -> anyhow::Result<(String, u16)> {
    Ok(match broker.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse()
                .with_context(|| format!("--broker: bad port in {broker:?}"))?,
        ),
        None => (broker.to_string(), 8883),
    })
}

/// The broker connection from the shared options.
fn broker_conn(b: BrokerArgs) -> anyhow::Result<fleet::BrokerConn> {
    let (host, port) = host_port(&b.broker)?;
    Ok(fleet::BrokerConn {
        host,
        port,
        ca_file: b.ca,
        cert_file: b.cert,
        key: KeyRef::parse(&b.tls_key, Path::new(""), b.pkcs11_module).context("--tls-key")?,
        prefix: b.prefix,
    })
}

/// `fleet log head`: signs the log's head at `now` and publishes it retained.
fn log_head(a: LogHeadArgs, now: i64) -> anyhow::Result<()> {
    let log = sitelog::read(&a.log)?;
    let pkcs8 = keys::read_private_key(&a.signer.key)?;
    let head = log.head(now, a.lifetime.as_secs() as i64);
    let jws = facegate::consent_log::sign_head(&a.site, &head, &a.signer.kid, &pkcs8)?;
    let conn = broker_conn(a.broker)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(fleet::publish_head(&conn, &a.site, &jws, *a.timeout))?;
    println!(
        "head of {} published: seq {}, base {}, valid until {}",
        a.site,
        head.seq,
        head.base,
        clock::rfc3339(head.exp)
    );
    Ok(())
}

/// `fleet log sync`: sends each device what its status says it misses.
fn log_sync(a: LogSyncArgs, now: i64) -> anyhow::Result<ExitCode> {
    let log = sitelog::read(&a.log)?;
    let pkcs8 = keys::read_private_key(&a.signer.key)?;
    let conn = broker_conn(a.broker)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (sent, not_held) = rt.block_on(fleet::sync_log(
        &conn,
        &a.site,
        &log,
        &a.signer.kid,
        &pkcs8,
        a.lifetime.as_secs() as i64,
        *a.timeout,
        now,
    ))?;
    let mut ok = true;
    for r in &sent {
        let timed = if r.re_timed {
            " (signed again at now: its own time was over)"
        } else {
            ""
        };
        match &r.reply {
            Some(reply) => {
                let line = fleet::describe(&fleet::DeviceReply {
                    device: r.device.clone(),
                    reply: reply.clone(),
                });
                ok &= reply.ok;
                println!("{}: resent {}{timed} -> {line}", r.device, r.seq);
            }
            None => {
                ok = false;
                println!(
                    "{}: resent {}{timed} -> no reply within {}",
                    r.device, r.seq, a.timeout
                );
            }
        }
    }
    for (device, seq) in &not_held {
        ok = false;
        println!(
            "{device}: misses {seq}, which the log does not hold (below its base {} or above its last entry {}): publish the head (fleet log head)",
            log.base(),
            log.last()
        );
    }
    if sent.is_empty() && not_held.is_empty() {
        println!("every device of {} has every entry it needs", a.site);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `fleet log compact`: appends a raised base.
fn log_compact(a: &LogCompactArgs, now: i64) -> anyhow::Result<()> {
    let mut locked = sitelog::lock(&a.log)?;
    let log = locked.log.clone();
    let base = log.compact_base(now);
    if base == log.base() {
        println!("base stays {}: entry {base} is still needed", log.base());
        return Ok(());
    }
    locked.append(&Record::Base {
        base: facegate::ids::Seq::new(base),
        at: now,
    })?;
    println!(
        "base raised from {} to {base}; publish the head (fleet log head)",
        log.base()
    );
    Ok(())
}

fn fleet_send(a: SendArgs, now: i64) -> anyhow::Result<ExitCode> {
    let conn = broker_conn(a.broker)?;
    let args = super::arg_value(a.args, "--args")?;
    let args: Value = serde_json::from_str(&args).context("--args must be a JSON object")?;
    let command = Command::from_parts(&a.cmd, &args).map_err(fleet::FleetError::Sign)?;
    let req = fleet::SendRequest {
        host: conn.host,
        port: conn.port,
        ca_file: conn.ca_file,
        cert_file: conn.cert_file,
        key: conn.key,
        prefix: conn.prefix,
        site: a.site,
        device: a.device.clone(),
        command,
        lifetime_s: a.lifetime.as_secs() as i64,
        signing_key: keys::read_private_key(&a.signer.key)?,
        kid: a.signer.kid,
        timeout: *a.timeout,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = match &a.log {
        None => rt.block_on(fleet::send(&req, now))?,
        Some(path) => {
            if req.device.is_some()
                || !matches!(
                    req.command.name(),
                    CommandName::ConsentGrant | CommandName::ConsentRevoke
                )
            {
                bail!("--log: only consent.grant and consent.revoke to a whole site (no --device) go into the site consent log");
            }
            // Locked from the seq to the append: concurrent sends never
            // share a seq.
            let mut locked = sitelog::lock(path)?;
            let log = &locked.log;
            let seq = log.next_seq();
            let stamp = Stamp {
                iat: now,
                exp: now + req.lifetime_s,
                seq: Some(seq),
            };
            let (jti, jws) =
                req.command
                    .sign_as(&req.audience(), stamp, &req.kid, &req.signing_key)?;
            let needed_until =
                log.needed_until(&req.command, now, a.max_consent_lifetime.as_secs() as i64);
            locked.append(&Record::Entry {
                seq,
                jws: jws.clone(),
                needed_until,
            })?;
            drop(locked);
            eprintln!("entry {seq} appended to {}", path.display());
            // The entry first, then the head that names it: a device that
            // gets both is never shown a gap it cannot fill yet.
            let outcome = rt.block_on(fleet::send_signed(&req, jti, jws))?;
            let log = sitelog::read(path)?;
            let head = log.head(now, a.head_lifetime.as_secs() as i64);
            let head_jws =
                facegate::consent_log::sign_head(&req.site, &head, &req.kid, &req.signing_key)?;
            rt.block_on(fleet::publish_head(
                &req.broker(),
                &req.site,
                &head_jws,
                *a.timeout,
            ))?;
            outcome
        }
    };
    for reply in &outcome.replies {
        if a.json {
            println!("{}", serde_json::to_string(&reply.reply)?);
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
    let all_ok = outcome.replies.iter().all(|r| r.reply.ok);
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `fleet status`: the site's devices once, or followed with `--watch`.
fn fleet_status(a: StatusArgs) -> anyhow::Result<()> {
    let conn = broker_conn(a.broker)?;
    let stale = a.stale.as_secs();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if !a.watch {
        let statuses = rt.block_on(fleet::read_statuses(
            &conn,
            &a.site,
            std::time::Duration::from_millis(500),
            *a.timeout,
        ))?;
        if statuses.is_empty() {
            eprintln!(
                "no status on {}: no device of the site has connected, or this certificate may not read it (check the broker ACL)",
                facegate::protocol::SiteTopics::new(&conn.prefix, &a.site).statuses
            );
        }
        let rows = overview::rows(statuses, clock::now(), stale);
        if a.json {
            print!("{}", overview::render_json(&rows));
        } else {
            print!("{}", overview::render(&rows, &a.site));
        }
        return Ok(());
    }
    rt.block_on(watch(conn, a.site, a.json, stale))
}

/// `fleet status --watch`: redraws the table on every status and every
/// second (ages move on); JSON prints each status as it comes.
async fn watch(
    conn: fleet::BrokerConn,
    site: String,
    json: bool,
    stale: u64,
) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    use std::io::Write as _;
    use tokio::signal::unix::{signal, SignalKind};

    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let watcher = {
        let (conn, site) = (conn.clone(), site.clone());
        tokio::spawn(async move {
            fleet::watch_statuses(&conn, &site, std::time::Duration::from_secs(2), tx).await
        })
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut statuses = BTreeMap::new();
    let mut note = String::from("connecting");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {}
            got = rx.recv() => match got {
                Some(fleet::Watched::Subscribed) => note = "connected".into(),
                Some(fleet::Watched::Lost { reason, retry }) => {
                    note = format!("connection lost ({reason}); again in {}s", retry.as_secs());
                    if json {
                        eprintln!("{note}");
                    }
                }
                Some(fleet::Watched::Status(device, status)) => {
                    let status = *status;
                    if json {
                        let rows = overview::rows(vec![(device.clone(), status.clone())], clock::now(), stale);
                        print!("{}", overview::render_json(&rows));
                        let _ = std::io::stdout().flush();
                    }
                    statuses.insert(device, status);
                    if json {
                        continue;
                    }
                }
                None => break,
            },
        }
        if !json {
            let now = clock::now();
            let rows = overview::rows(
                statuses
                    .iter()
                    .map(|(d, s)| (d.clone(), s.clone()))
                    .collect(),
                now,
                stale,
            );
            // Home the cursor and clear the screen, then draw.
            print!(
                "\x1b[H\x1b[2J{} ({note})\n\n{}",
                overview::heading(&site, now),
                overview::render(&rows, &site)
            );
            let _ = std::io::stdout().flush();
        }
    }
    // Stopped by a signal: the watcher may be waiting on the broker. Ended
    // by itself (the channel closed): it says why.
    if !watcher.is_finished() {
        watcher.abort();
        return Ok(());
    }
    match watcher.await {
        Ok(Err(e)) => Err(e.into()),
        _ => Ok(()),
    }
}

/// `fleet receive`: runs the reference receiver until SIGTERM or Ctrl-C.
fn fleet_receive(a: ReceiveArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};

    let req = fleet::receive::ReceiveRequest {
        conn: broker_conn(a.broker)?,
        client_id: a
            .client_id
            .unwrap_or_else(|| format!("fleet-receive-{}", a.site)),
        site: a.site,
        out: a.out,
        state: a.state,
        max_packet_size: a.max_packet_size,
        progress_every: *a.progress,
        retry: std::time::Duration::from_secs(2),
        share: a.share,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut term = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(true);
        });
        fleet::receive::receive(&req, rx).await?;
        Ok(())
    })
}
