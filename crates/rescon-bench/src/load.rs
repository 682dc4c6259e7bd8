//! `load`: HTTP load from loopback clients against a loopback server, like httperf: closed
//! loop (keep-alive or a connection per request) or open loop (`--rate`), from a chosen source
//! address, with throughput and latency percentiles.

use anyhow::{Context, Result, bail};
use rescon_bench::httpload::{self, Group, Mode, Plan};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The URL: http://127.0.0.x:PORT/path (loopback only).
    url: String,
    /// Concurrent closed-loop clients.
    #[arg(long, short = 'c', default_value_t = 50)]
    conns: usize,
    /// Open loop instead: this many requests per second, each on its own connection.
    #[arg(long)]
    rate: Option<f64>,
    /// A connection per request (HTTP/1.0) instead of keep-alive.
    #[arg(long)]
    close: bool,
    /// Seconds counted (1 to 600).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Seconds of warm-up, not counted.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// The clients' source address (127.0.0.0/8).
    #[arg(long, default_value = "127.0.0.1")]
    src: Ipv4Addr,
    /// The Host header (default: the URL's host).
    #[arg(long)]
    host: Option<String>,
    /// Pin the load to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_url(url: &str) -> Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("the URL must start with http:// (https is not supported)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .find(|a| a.is_ipv4())
        .with_context(|| format!("{authority} has no IPv4 address"))?;
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address: load goes only to 127.0.0.0/8");
    }
    Ok((addr, authority.to_string(), path))
}

pub fn run(a: Args) -> Result<()> {
    if !(a.duration > 0.0 && a.duration <= 600.0) {
        bail!("--duration {} s: allowed (0, 600]", a.duration);
    }
    if !(0.0..=60.0).contains(&a.warmup) {
        bail!("--warmup {} s: allowed [0, 60]", a.warmup);
    }
    if a.rate.is_none() && !(1..=10_000).contains(&a.conns) {
        bail!("--conns {}: allowed 1 to 10000", a.conns);
    }
    let (addr, authority, path) = parse_url(&a.url)?;
    let mut plan = Plan::new(
        addr,
        vec![Group {
            name: "load".into(),
            src: a.src,
            conns: a.conns,
            rate: a.rate,
            mode: if a.close {
                Mode::ConnPerRequest
            } else {
                Mode::KeepAlive
            },
            host: a.host.clone().unwrap_or(authority),
            paths: vec![path],
            dedicated: false,
            tls: None,
        }],
    );
    plan.duration = Duration::from_secs_f64(a.duration);
    plan.warmup = Duration::from_secs_f64(a.warmup);
    plan.cpu = a.cpu;
    plan.progress = (!a.json).then(|| a.url.clone());
    let r = httpload::run(&plan)?;
    let g = &r[0];
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "per_s": g.per_s(), "ok": g.ok, "non_2xx": g.non_2xx, "errors": g.errors,
                "p50_ms": g.ms(0.5), "p90_ms": g.ms(0.9), "p99_ms": g.ms(0.99), "max_ms": g.ms(1.0),
            })
        );
    } else {
        println!(
            "{:.0} req/s over {:.1} s: {} ok, {} other status, {} errors",
            g.per_s(),
            g.seconds,
            g.ok,
            g.non_2xx,
            g.errors
        );
        println!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            g.ms(0.5),
            g.ms(0.9),
            g.ms(0.99),
            g.ms(1.0)
        );
    }
    Ok(())
}
