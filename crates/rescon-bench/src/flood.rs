//! `flood`: the bounded raw-socket SYN flooder on its own, for use inside a test bed's
//! attacker namespace (`ip netns exec <attacker> rescon-bench flood ...`). It refuses to
//! send anywhere else: see `rescon_bench::flooder` for the safety check.

use rescon_bench::flooder::{self, FloodConfig};
use serde::Serialize;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The listener to flood (inside the test ranges 198.18.0.0/15 or 10.77.0.0/16).
    #[arg(long)]
    target: SocketAddrV4,
    /// The range spoofed sources are drawn from (inside the test ranges).
    #[arg(long, default_value = "198.19.0.0/16")]
    sources: ipnet::Ipv4Net,
    /// SYNs per second (at most 2,000,000).
    #[arg(long)]
    rate: u64,
    /// Seconds (at most 60).
    #[arg(long)]
    duration: f64,
    /// The harness's veth: the only interface besides lo allowed in this namespace.
    #[arg(long, default_value = "att0")]
    iface: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Out {
    sent: u64,
    seconds: f64,
    syn_rate: f64,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        anyhow::bail!(
            "--duration {}: give a positive number of seconds",
            a.duration
        );
    }
    let cfg = FloodConfig {
        target: a.target,
        sources: a.sources,
        rate: a.rate,
        duration: Duration::from_secs_f64(a.duration),
        iface: a.iface,
    };
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let r = flooder::flood(&cfg, &stop)?;
    let out = Out {
        sent: r.sent,
        seconds: r.elapsed.as_secs_f64(),
        syn_rate: r.rate().round(),
    };
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "sent {} SYNs in {:.2} s: {:.0} SYN/s",
            out.sent, out.seconds, out.syn_rate
        );
    }
    Ok(())
}
