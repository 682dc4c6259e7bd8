//! `rescon-httpd`: the resource-container web server.
//!
//! This build checks and prints configurations and unpacks the demo site; serving runs on the
//! rescon-rt runtime and comes with it.

use anyhow::{Context, Result};
use clap::Parser;
use rescon_httpd::config::{Config, DEFAULT_CONFIG};
use std::path::PathBuf;
use std::process::ExitCode;

/// The resource-container web server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file (default: the embedded configuration serving the demo site on
    /// 127.0.0.1:8080).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration, print the effective configuration, and exit: 0 if it is valid,
    /// 2 if not.
    #[arg(long)]
    check_config: bool,
    /// Print the embedded default configuration (a starting point for your own) and exit.
    #[arg(long, conflicts_with_all = ["check_config", "config", "unpack_demo"])]
    print_default_config: bool,
    /// Write the embedded demo site (htdocs/ and cgi-bin/) into DIR and exit.
    #[arg(long, value_name = "DIR", conflicts_with = "check_config")]
    unpack_demo: Option<PathBuf>,
}

fn load(args: &Args) -> Result<Config, rescon_httpd::config::ConfigError> {
    match &args.config {
        Some(path) => Config::load(path),
        None => Ok(Config::default_config()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rescon-httpd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode> {
    if args.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(dir) = &args.unpack_demo {
        rescon_httpd::demo::unpack(dir)
            .with_context(|| format!("unpacking the demo site into {}", dir.display()))?;
        println!(
            "demo site written to {0}/htdocs and {0}/cgi-bin",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut config = match load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("rescon-httpd: the configuration is not valid; nothing was started");
            return Ok(ExitCode::from(2));
        }
    };
    if config.uses_demo() && !args.check_config {
        let dir = rescon_httpd::demo::unpack_cached().context("unpacking the demo site")?;
        config.set_demo_dir(&dir);
    }
    print!("{}", config.to_toml());
    if args.check_config {
        eprintln!("rescon-httpd: {}: configuration ok", config.source);
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "rescon-httpd: serving needs the rescon-rt runtime, which this build does not include yet; \
         the configuration above is valid. Use --check-config to check a configuration."
    );
    Ok(ExitCode::FAILURE)
}
