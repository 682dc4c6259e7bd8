//! `rescon-httpd`: the resource-container web server.
//!
//! Serves the configured sites (the embedded demo site by default, on 127.0.0.1:8080) on the
//! rescon-rt runtime; also checks and prints configurations and unpacks the demo site.

use anyhow::{Context, Result};
use clap::Parser;
use rescon_httpd::config::{Config, DEFAULT_CONFIG};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: containers are made and dropped per connection, in bursts (see rescon-bench);
/// counted when `RESCON_HEAP_STATS` asks (see `rescon_httpd::alloc`).
#[global_allocator]
static GLOBAL: rescon_httpd::alloc::Counting<mimalloc::MiMalloc> =
    rescon_httpd::alloc::Counting::mimalloc();

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
    /// Serve without containers (the benchmark baseline): one container for all connections,
    /// no client classes, no per-connection or CGI containers.
    #[arg(long)]
    no_containers: bool,
    /// Worker threads (default: the available cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// Write the embedded demo site (htdocs/ and cgi-bin/) into DIR and exit.
    #[arg(long, value_name = "DIR", conflicts_with = "check_config")]
    unpack_demo: Option<PathBuf>,
    /// Which diagnostics to write to standard error, in `RUST_LOG` syntax (default: $RUST_LOG,
    /// else `info`), e.g. `info,rescon_rt=warn` or `debug`.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// The diagnostics' format: `text`, or `json` (one object per line).
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: rescon_httpd::logging::Format,
}

fn load(args: &Args) -> Result<Config, rescon_httpd::config::ConfigError> {
    match &args.config {
        Some(path) => Config::load(path),
        None => Ok(Config::default_config()),
    }
}

fn main() -> ExitCode {
    let heap_stats = rescon_httpd::alloc::count_heap_from_env();
    let args = Args::parse();
    if let Err(e) = rescon_httpd::logging::init(args.log_format, args.log.as_deref()) {
        eprintln!("rescon-httpd: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = heap_stats {
        eprintln!("rescon-httpd: {}: {e}", rescon_httpd::alloc::HEAP_STATS_ENV);
        return ExitCode::FAILURE;
    }
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
    if args.check_config {
        print!("{}", config.to_toml());
        eprintln!("rescon-httpd: {}: configuration ok", config.source);
        return Ok(ExitCode::SUCCESS);
    }
    tracing::info!(source = %config.source, "configuration {}", config.source);
    rescon_httpd::alloc::release_freed_memory_at_once();
    rescon_httpd::alloc::keep_idle_state_apart();
    rescon_httpd::server::run(
        config,
        rescon_httpd::server::Options {
            workers: args.workers.map(usize::from),
            no_containers: args.no_containers,
            config_path: args.config.clone(),
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
