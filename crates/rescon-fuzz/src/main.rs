//! `rescon-fuzz`: runs the fuzz targets longer than `cargo test` does, without any tool but
//! cargo, and replays single inputs (a crash AFL++ found, a corpus file).

use clap::{Parser, Subcommand};
use rescon_fuzz::{TARGETS, Target, corpus, corpus_dir, fuzz, replay, target};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Fuzz rescon's parsers of untrusted bytes (mutational, on stable Rust)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lists the targets and their corpora.
    List,
    /// Replays files (or whole directories) through a target.
    Run {
        /// The target.
        target: String,
        /// Inputs.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Replays the corpus, then runs mutated inputs for a while.
    Fuzz {
        /// A target, or `all`.
        target: String,
        /// How long, per target (`30s`, `10m`, `2h`).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        time: Duration,
        /// The first seed; each round of 10,000 cases takes the next one.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: want a number and s, m or h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit is s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

fn pick(name: &str) -> Result<Vec<&'static Target>, String> {
    if name == "all" {
        return Ok(TARGETS.iter().collect());
    }
    target(name).map(|t| vec![t]).ok_or_else(|| {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        format!("no target {name:?}; targets: {}, or all", names.join(", "))
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rescon-fuzz: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::List => {
            for t in TARGETS {
                let n = corpus(t.name).map(|c| c.len()).unwrap_or(0);
                println!(
                    "{:<14} {:>3} inputs in {}",
                    t.name,
                    n,
                    corpus_dir(t.name).display()
                );
                println!("               {}", t.about);
            }
            Ok(())
        }
        Command::Run { target, files } => {
            let t = pick(&target)?;
            let [t] = t.as_slice() else {
                return Err("run takes one target".into());
            };
            let mut inputs = Vec::new();
            for f in files {
                if f.is_dir() {
                    for e in std::fs::read_dir(&f).map_err(|e| format!("{}: {e}", f.display()))? {
                        let p = e.map_err(|e| e.to_string())?.path();
                        if p.is_file() {
                            inputs.push(p);
                        }
                    }
                } else {
                    inputs.push(f);
                }
            }
            inputs.sort();
            let mut entries = Vec::new();
            for p in &inputs {
                let data = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
                entries.push((p.display().to_string(), data));
            }
            replay(t, &entries).map_err(|f| f.to_string())?;
            println!("{}: {} inputs pass", t.name, entries.len());
            Ok(())
        }
        Command::Fuzz { target, time, seed } => {
            for t in pick(&target)? {
                let entries = corpus(t.name).map_err(|e| e.to_string())?;
                replay(t, &entries).map_err(|f| f.to_string())?;
                let inputs: Vec<Vec<u8>> = entries.into_iter().map(|(_, d)| d).collect();
                let start = Instant::now();
                let (mut round, mut cases) = (0u64, 0u64);
                while start.elapsed() < time {
                    fuzz(t, &inputs, 10_000, seed + round).map_err(|f| {
                        format!("{f}\n(seed {}, after {cases} cases)", seed + round)
                    })?;
                    round += 1;
                    cases += 10_000;
                    eprint!(
                        "\r{}: {cases} cases, {:.0}/s, seeds {seed}..={}",
                        t.name,
                        cases as f64 / start.elapsed().as_secs_f64(),
                        seed + round - 1
                    );
                }
                eprintln!();
            }
            Ok(())
        }
    }
}
