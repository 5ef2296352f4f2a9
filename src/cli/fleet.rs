//! `facegate fleet`: key generation, consent tokens, signed commands, and
//! sending a command to devices over the broker.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use facegate::cmd::Command;
use facegate::keyref::KeyRef;
use facegate::{clock, consent, fleet, keys};

use super::args::{AclArgs, Fleet, SendArgs};

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

fn fleet_send(a: SendArgs, now: i64) -> anyhow::Result<ExitCode> {
    let (host, port) = match a.broker.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse()
                .with_context(|| format!("--broker: bad port in {:?}", a.broker))?,
        ),
        None => (a.broker.clone(), 8883),
    };
    let args = super::arg_value(a.args, "--args")?;
    let args: Value = serde_json::from_str(&args).context("--args must be a JSON object")?;
    let command = Command::from_parts(&a.cmd, &args).map_err(fleet::FleetError::Sign)?;
    let req = fleet::SendRequest {
        host,
        port,
        ca_file: a.ca,
        cert_file: a.cert,
        key: KeyRef::parse(&a.tls_key, Path::new(""), a.pkcs11_module).context("--tls-key")?,
        prefix: a.prefix,
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
    let outcome = rt.block_on(fleet::send(&req, now))?;
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
