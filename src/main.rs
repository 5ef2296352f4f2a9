//! The `facegate` command: daemon, local control, config check and fleet tool.
//! This is the binary edge: errors become one line on stderr and a non-zero
//! exit. The command line itself is in [`cli`].

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cli::panics::install();
    let args = cli::args::Cli::parse();
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("facegate: {}", cli::one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
