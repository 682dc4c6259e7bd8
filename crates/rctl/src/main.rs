//! `rctl`: see the library's docs.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = rctl::cli::Args::parse();
    let mut out = std::io::stdout().lock();
    match rctl::cli::run(&args, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rctl: {e:#}");
            ExitCode::from(rctl::cli::exit_code(&e))
        }
    }
}
