//! `sim`: the standard scenarios of `rescon::sim` on a chosen policy.

use rescon::Registry;
use rescon::sched::{Fifo, Hierarchical, Policy};
use serde::Serialize;
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Simulated seconds per scenario.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Length of one run (the scheduling quantum), in microseconds.
    #[arg(long, default_value_t = 1000)]
    quantum_us: u64,
    /// The policy: `hierarchical` (resource containers) or `fifo` (containers off).
    #[arg(long, default_value = "hierarchical", value_parser = ["hierarchical", "fifo"])]
    policy: String,
}

#[derive(Serialize)]
struct Report {
    policy: String,
    simulated_seconds: u64,
    quantum_us: u64,
    scenarios: Vec<ScenarioOut>,
    max_abs_error: f64,
}

#[derive(Serialize)]
struct ScenarioOut {
    name: &'static str,
    description: &'static str,
    containers: Vec<ContainerOut>,
}

#[derive(Serialize)]
struct ContainerOut {
    name: String,
    entitled: f64,
    delivered: f64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.seconds > 0, "--seconds must be positive");
    anyhow::ensure!(args.quantum_us > 0, "--quantum-us must be positive");
    let registry = Registry::new();
    let scenarios = rescon::sim::scenarios(&registry);
    let mut report = Report {
        policy: args.policy.clone(),
        simulated_seconds: args.seconds,
        quantum_us: args.quantum_us,
        scenarios: Vec::new(),
        max_abs_error: 0.0,
    };
    let total = scenarios.len();
    for (i, s) in scenarios.iter().enumerate() {
        eprint!("\r[{}/{}] {:40}", i + 1, total, s.name);
        let _ = std::io::stderr().flush();
        let policy: Box<dyn Policy> = match args.policy.as_str() {
            "fifo" => Box::new(Fifo::new()),
            _ => Box::new(Hierarchical::new(&registry)),
        };
        let out = s.run(policy, args.seconds * 1_000_000_000, args.quantum_us * 1000);
        let containers: Vec<ContainerOut> = out
            .into_iter()
            .map(|o| ContainerOut {
                name: o.name,
                entitled: o.entitled,
                delivered: o.delivered,
            })
            .collect();
        for c in &containers {
            report.max_abs_error = report.max_abs_error.max((c.entitled - c.delivered).abs());
        }
        report.scenarios.push(ScenarioOut {
            name: s.name,
            description: s.description,
            containers,
        });
    }
    eprintln!("\r{:60}", "");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "policy {}, {} simulated seconds per scenario, {} us quantum\n",
        report.policy, report.simulated_seconds, report.quantum_us
    );
    for s in &report.scenarios {
        println!("{}: {}", s.name, s.description);
        println!(
            "  {:28} {:>9} {:>10} {:>8}",
            "container", "entitled", "delivered", "error"
        );
        for c in &s.containers {
            println!(
                "  {:28} {:>8.2}% {:>9.2}% {:>+7.2}",
                c.name,
                c.entitled * 100.0,
                c.delivered * 100.0,
                (c.delivered - c.entitled) * 100.0
            );
        }
        println!();
    }
    println!(
        "largest error: {:.3} percentage points",
        report.max_abs_error * 100.0
    );
    Ok(())
}
