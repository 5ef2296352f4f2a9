//! The `facegate` command line, private to the binary: argument definitions
//! ([`args`]), the daemon ([`run`]), `facegate ctl` requests and their
//! rendering ([`ctl`]) and the fleet tool ([`fleet`]). Errors are `anyhow`
//! here and nowhere else; `main` prints them as one line.

pub mod args;
mod ctl;
mod fleet;
mod run;

use std::process::ExitCode;

use facegate::{config, doctor, provision};

use args::{Cli, Command};

/// Runs one parsed command line; the exit code on success.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
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
        Command::Ctl { command } => ctl::execute(&cli.config, command),
        Command::Fleet { command } => fleet::execute(command),
    }
}

/// Collapses a (possibly multi-line) error chain to one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
