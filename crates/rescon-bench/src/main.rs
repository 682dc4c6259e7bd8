//! `rescon-bench`: rescon's measuring harness. Each subcommand lives in its own module and
//! prints a human table, or JSON with `--json`.

use clap::{Parser, Subcommand};

mod flood;
mod primitives;
mod primitives_kernel;
mod sim;
mod synflood;

#[derive(Parser)]
#[command(
    name = "rescon-bench",
    version,
    about = "Measure rescon: policy simulations, primitive costs, and the paper's experiments"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the policy scenarios on a simulated CPU with a fake clock: entitled vs delivered.
    Sim(sim::Args),
    /// Measure the cost of the container primitives (the paper's Table 1) and of the policy.
    Primitives(primitives::Args),
    /// Legitimate connections/s under a SYN flood with no defense, SYN cookies, a static
    /// filter and automatic detection, in network namespaces made for the run (root).
    Synflood(synflood::Args),
    /// The bounded SYN flooder alone, for a test bed's attacker namespace (root).
    Flood(flood::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Sim(a) => sim::run(a),
        Command::Primitives(a) => primitives::run(a),
        Command::Synflood(a) => synflood::run(a),
        Command::Flood(a) => flood::run(a),
    }
}
