//! The `facegate` command line, private to the binary: argument definitions
//! ([`args`]), the daemon ([`run`]), `facegate ctl` requests and their
//! rendering ([`ctl`]), the fleet tool ([`fleet`]) and the panic policy
//! ([`panics`]). Errors are `anyhow`
//! here and nowhere else; `main` prints them as one line.

pub mod args;
mod ctl;
#[cfg(feature = "fleet")]
mod fleet;
pub mod panics;
mod run;

use std::process::ExitCode;

use facegate::{config, credential, doctor, provision};

use args::{Cli, Command};

/// Runs one parsed command line; the exit code on success.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    forbid_core_dumps()?;
    match cli.command {
        Command::Run => run::daemon(&cli.config),
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
        Command::Provision {
            owner,
            seal,
            seal_to,
            with_key,
        } => {
            let cfg = config::load_unchecked(&cli.config)?;
            let owner = match owner {
                Some(name) => Some(provision::Owner::of_user(&name)?),
                None => provision::Owner::default_for_provision(),
            };
            let seal = match seal {
                false => None,
                true => Some(provision::Seal {
                    path: seal_to,
                    with: credential::SealWith::parse(&with_key)
                        .ok_or_else(|| anyhow::anyhow!("--with-key: unknown value {with_key:?}"))?,
                }),
            };
            println!("{}", provision::provision_with(&cfg, owner, seal.as_ref())?);
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
        Command::Ctl { command } => ctl::execute(&cli.config, command),
        #[cfg(feature = "fleet")]
        Command::Fleet { command } => fleet::execute(command),
    }
}

/// Every facegate process holds secrets at some point (the daemon the
/// storage key and plaintext images, `provision` and `fleet` private keys,
/// `ctl` consent tokens), so before anything else each one makes itself
/// non-dumpable: no core dump (`RLIMIT_CORE` 0, also without the unit's
/// `LimitCORE=0`), and `PR_SET_DUMPABLE` 0, so other processes of the same
/// user can neither ptrace it nor read its `/proc/PID/mem` or `environ`
/// (those files then belong to root).
#[allow(unsafe_code)] // setrlimit(2) and prctl(2), see SAFETY below
fn forbid_core_dumps() -> anyhow::Result<()> {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit only reads the rlimit struct passed by reference.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) } != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!("cannot turn off core dumps (setrlimit RLIMIT_CORE): {e}");
    }
    let off: libc::c_ulong = 0;
    // SAFETY: PR_SET_DUMPABLE takes one integer argument (the unused ones
    // are 0); no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, off, off, off, off) } != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!("cannot make the process non-dumpable (prctl PR_SET_DUMPABLE): {e}");
    }
    Ok(())
}

/// Largest value read from stdin or a file for [`arg_value`] (a consent
/// token is at most 16 KiB, command arguments at most 64 KiB).
const MAX_ARG_BYTES: u64 = 1024 * 1024;

/// Resolves an argument that may carry personal data (a token, a subject id,
/// command arguments): `-` reads it from stdin, `@FILE` from a file, anything
/// else is the value itself. Stdin and files keep it out of the process list
/// (`ps`, `/proc/PID/cmdline`). Leading and trailing whitespace (the newline
/// of `echo` or of a file) is removed.
pub(crate) fn arg_value(value: String, what: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::Read;
    let text = if value == "-" {
        let mut text = String::new();
        std::io::stdin()
            .lock()
            .take(MAX_ARG_BYTES + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("reading the {what} from stdin"))?;
        text
    } else if let Some(path) = value.strip_prefix('@') {
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_ARG_BYTES + 1).read_to_string(&mut text))
            .with_context(|| format!("reading the {what} from {path}"))?;
        text
    } else {
        return Ok(value);
    };
    if text.len() as u64 > MAX_ARG_BYTES {
        anyhow::bail!("the {what} is larger than {MAX_ARG_BYTES} bytes");
    }
    let text = text.trim();
    if text.is_empty() {
        anyhow::bail!("the {what} read from {value} is empty");
    }
    Ok(text.to_string())
}

/// Collapses a (possibly multi-line) error chain to one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
