//! `rescon-bench`: rescon's measuring harness. Each subcommand lives in its own module and
//! prints a human table, or JSON with `--json`.

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: a server making and dropping a container per connection
/// frees them in batches, which glibc serves from its slow bins (its per-thread cache holds
/// seven chunks per size); mimalloc's free lists take about a third fewer instructions per
/// create and destroy (callgrind). The server binary uses it too, so the figures here are the
/// ones it sees. Counted when `RESCON_HEAP_STATS` asks, or in `memory`'s probes (see
/// `rescon_httpd::alloc`).
#[global_allocator]
static GLOBAL: rescon_httpd::alloc::Counting<mimalloc::MiMalloc> =
    rescon_httpd::alloc::Counting::mimalloc();

mod flood;
mod load;
mod memory;
mod netacct;
mod paper;
mod primitives;
mod primitives_handle;
mod primitives_kernel;
mod runtime;
mod shares;
mod sim;
mod synflood;
mod uring;

/// What a task has run, from its `schedstat` file (`/proc/<pid>/schedstat`, or
/// `/proc/self/task/<tid>/schedstat` for a thread): nanoseconds on a CPU, exactly, and the
/// number of times it was switched onto one. The file's fields are run time, run-queue wait
/// and timeslices.
fn schedstat(path: &str) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let mut f = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    let run_ns = f.next()??;
    let slices = f.nth(1)??;
    Some((run_ns, slices))
}

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
    /// rescon-rt beside tokio: spawn, yield, TCP echo and hyper keep-alive, in one run.
    Runtime(runtime::Args),
    /// Containers' shares of a real rescon-rt runtime's CPU with 1, 2 and one worker per core,
    /// tasks placed evenly or all on one worker: entitled vs delivered.
    Shares(shares::Args),
    /// What io_uring would save a server thread over epoll: one-thread echo servers, same
    /// client, loopback.
    Uring(uring::Args),
    /// The kernel's network work charged to containers on the test bed: NET_RX softirq
    /// time attributed, and what the accounting costs (root).
    Netacct(netacct::Args),
    /// The bounded SYN flooder alone, for a test bed's attacker namespace (root).
    Flood(flood::Args),
    /// The paper's Section 5 on this machine beside nginx and hyper on tokio: report.md,
    /// results.json and plots in --out.
    Paper(paper::Args),
    /// HTTP load from loopback clients, closed or open loop, with latency percentiles.
    Load(load::Args),
    /// Resident memory per idle connection (kept alive after a request, and never sent a
    /// byte) in rescon-httpd, nginx and hyper on tokio, and per container in the model.
    Memory(memory::Args),
    /// rescon-httpd itself, for `paper` (the same code as the rescon-httpd binary).
    #[command(hide = true)]
    Httpd {
        /// The configuration file.
        #[arg(long)]
        config: std::path::PathBuf,
        /// Worker threads.
        #[arg(long)]
        workers: Option<usize>,
        /// Serve without containers.
        #[arg(long)]
        no_containers: bool,
    },
    /// hyper on a tokio current-thread runtime serving 1 KB, for `paper`.
    #[command(hide = true)]
    HyperBaseline {
        /// With --key: also serve HTTPS (HTTP/2 or HTTP/1.1) with this certificate chain.
        #[arg(long, requires = "key")]
        cert: Option<std::path::PathBuf>,
        /// The certificate's private key.
        #[arg(long, requires = "cert")]
        key: Option<std::path::PathBuf>,
        /// hyper's wait for a request head, seconds (default: hyper's own, 30 s).
        #[arg(long)]
        header_timeout: Option<u64>,
    },
    /// The other process of `primitives`' handle measurements (orders on stdout, handles on
    /// stdin).
    #[command(hide = true)]
    HandlePeer,
    /// A CGI program burning MS milliseconds of its own CPU, for `paper`.
    #[command(hide = true)]
    CgiBurn {
        /// CPU milliseconds to burn.
        ms: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Sim(a) => sim::run(a),
        Command::Primitives(a) => primitives::run(a),
        Command::Synflood(a) => synflood::run(a),
        Command::Netacct(a) => netacct::run(a),
        Command::Flood(a) => flood::run(a),
        Command::Runtime(a) => runtime::run(a),
        Command::Shares(a) => shares::run(a),
        Command::Uring(a) => uring::run(a),
        Command::Paper(a) => paper::run(a),
        Command::Load(a) => load::run(a),
        Command::Memory(a) => memory::run(a),
        Command::Httpd {
            config,
            workers,
            no_containers,
        } => {
            anyhow::Context::context(
                rescon_httpd::alloc::count_heap_from_env(),
                rescon_httpd::alloc::HEAP_STATS_ENV,
            )?;
            rescon_httpd::logging::init(rescon_httpd::logging::Format::Text, None)
                .map_err(|e| anyhow::anyhow!(e))?;
            let loaded =
                rescon_httpd::config::Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            rescon_httpd::alloc::release_freed_memory_at_once();
            rescon_httpd::alloc::keep_idle_state_apart();
            rescon_httpd::server::run(
                loaded,
                rescon_httpd::server::Options {
                    workers,
                    no_containers,
                    config_path: Some(config),
                },
            )
        }
        Command::HyperBaseline {
            cert,
            key,
            header_timeout,
        } => paper::hyper_baseline(
            cert.zip(key),
            header_timeout.map(std::time::Duration::from_secs),
        ),
        Command::HandlePeer => primitives_handle::peer(),
        Command::CgiBurn { ms } => paper::cgi_burn(ms),
    }
}
