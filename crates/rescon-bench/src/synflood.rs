//! `synflood`: legitimate connections per second under a SYN flood, with no defense
//! (cookies off), with SYN cookies, with a static filter (the flood range black-holed
//! through the listener group) and with automatic detection (the defender finds the flood's
//! prefixes and moves them to the black hole), against the paper's 73% at 70,000 SYN/s.
//!
//! Everything runs in the test bed's network namespaces (see `rescon_bench::testbed`): the
//! attacker spoofs 198.19.0.0/16 towards the server at a paced rate, the client namespace
//! runs the legitimate clients, the server namespace runs a small accept server on a
//! listener group with two members: `legit` (every source) and `hole` (priority 0). Each
//! measurement uses a fresh group on a fresh port, so no half-open connection of one run
//! survives into the next. Every run is bounded in time; Ctrl-C stops the runs and removes
//! the namespaces.

use anyhow::{Context, bail};
use rescon::{Attributes, Registry};
use rescon_bench::flooder::{self, FloodConfig, FloodReport};
use rescon_bench::loadgen::{ClientReport, Server, run_clients};
use rescon_bench::testbed::{self, ATTACKER_IFACE, SERVER_ATT, SERVER_CLI, SPOOFED, Testbed};
use rescon_linux::listen::defense::DefenseConfig;
use rescon_linux::listen::driver::Defender;
use rescon_linux::listen::{Filter, ListenerGroup};
use serde::Serialize;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A defense measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Defense {
    /// No defense, SYN cookies off.
    None,
    /// SYN cookies on (the Linux default, tcp_syncookies=1), no filter.
    Syncookies,
    /// The flood range listed by the black-hole member from the start; cookies off.
    Filter,
    /// The defender detects the flood and moves its prefixes to the black hole; cookies off.
    Auto,
}

impl Defense {
    fn name(self) -> &'static str {
        match self {
            Defense::None => "none",
            Defense::Syncookies => "syncookies",
            Defense::Filter => "filter",
            Defense::Auto => "auto",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds of flood and legitimate load per measurement.
    #[arg(long, default_value_t = 4.0)]
    duration: f64,
    /// Flood rates in SYN/s, comma-separated (default: 0 and `steps` fractions of the highest
    /// rate this machine generates, measured first).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<u64>,
    /// Nonzero rates when they are chosen automatically.
    #[arg(long, default_value_t = 3)]
    steps: u64,
    /// Defenses to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values = ["none", "syncookies", "filter", "auto"])]
    defenses: Vec<Defense>,
    /// Legitimate client threads (each makes one connection at a time).
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Accept threads of the server.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Accept backlog of each member (also bounds its SYN queue when cookies are off).
    #[arg(long, default_value_t = 65535)]
    backlog: u32,
    /// First port; each measurement takes the next.
    #[arg(long, default_value_t = 18000)]
    port: u16,
    /// Sampling interval of the automatic defense, milliseconds.
    #[arg(long, default_value_t = 50)]
    defense_interval_ms: u64,
}

#[derive(Serialize)]
struct Row {
    syn_rate: f64,
    defense: &'static str,
    legit_per_s: f64,
}

#[derive(Serialize)]
struct Report {
    rows: Vec<Row>,
    no_flood_legit_per_s: f64,
}

struct Point {
    flood: FloodReport,
    clients: ClientReport,
    accepted: u64,
    actions: Vec<String>,
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// What every measurement shares.
struct Ctx<'a> {
    tb: &'a Testbed,
    a: &'a Args,
    stop: Arc<AtomicBool>,
    port: u16,
}

/// One measurement: a fresh group and server, then flood and clients together.
fn measure(
    ctx: &mut Ctx<'_>,
    defense: Defense,
    rate: u64,
    duration: Duration,
    clients: bool,
) -> anyhow::Result<Point> {
    ctx.port = ctx.port.wrapping_add(1).max(1024);
    let (tb, a, stop, port) = (ctx.tb, ctx.a, &ctx.stop, ctx.port);
    tb.set_syncookies(defense == Defense::Syncookies)?;
    let registry = Registry::new();
    let root = registry.root();
    let legit = root.create_child("legit", Attributes::default())?;
    let mut bh = Attributes::default();
    bh.set("priority", "0")?;
    let hole = root.create_child("hole", bh)?;
    let hole_filter = if defense == Defense::Filter {
        Filter::prefixes([SPOOFED.into()])?
    } else {
        Filter::nothing()
    };
    let (backlog, threads, interval) = (a.backlog, a.server_threads, a.defense_interval_ms);
    // The group, the server and the defender live in the server namespace.
    let (group, server, defender) = tb
        .server
        .spawn("server", move || -> anyhow::Result<_> {
            let group = Arc::new(
                ListenerGroup::builder(SocketAddr::from(([0, 0, 0, 0], port)))
                    .backlog(backlog)
                    .member(&legit, Filter::any())
                    .member(&hole, hole_filter)
                    .build()?,
            );
            let server = Server::start(group.clone(), threads);
            let defender = if defense == Defense::Auto {
                let q = group.members()[1].id();
                let d = Arc::new(Defender::new(group.clone(), DefenseConfig::new(q))?);
                let running = d.clone().spawn(Duration::from_millis(interval));
                Some((d, running))
            } else {
                None
            };
            Ok((group, server, defender))
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("server setup panicked"))??;
    let flood = if rate > 0 {
        let cfg = FloodConfig {
            target: SocketAddrV4::new(SERVER_ATT, port),
            sources: SPOOFED,
            rate,
            duration,
            iface: ATTACKER_IFACE.to_string(),
        };
        let stop = stop.clone();
        Some(
            tb.attacker
                .spawn("flood", move || flooder::flood(&cfg, &stop))?,
        )
    } else {
        None
    };
    let clients = if clients {
        let (n, stop) = (a.clients, stop.clone());
        let target = SocketAddr::from((SERVER_CLI, port));
        Some(tb.client.spawn("clients", move || {
            run_clients(target, n, duration, Duration::from_secs(1), &stop)
        })?)
    } else {
        None
    };
    let clients = match clients {
        Some(h) => h.join().map_err(|_| anyhow::anyhow!("clients panicked"))?,
        None => ClientReport::default(),
    };
    let flood = match flood {
        Some(h) => h
            .join()
            .map_err(|_| anyhow::anyhow!("flooder panicked"))?
            .context("flooder")?,
        None => FloodReport::default(),
    };
    let accepted = server.accepted();
    let actions = match defender {
        Some((d, running)) => {
            running.stop();
            d.history()
                .iter()
                .map(|r| format!("{:.0} ms {}", r.elapsed.as_secs_f64() * 1e3, r.action))
                .collect()
        }
        None => Vec::new(),
    };
    drop(server);
    drop(group);
    Ok(Point {
        flood,
        clients,
        accepted,
        actions,
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "synflood needs root: it creates network namespaces and veths, and sends raw packets inside them only"
        );
    }
    if !(a.duration > 0.0 && a.duration <= 30.0) {
        bail!("--duration {} s: allowed (0, 30]", a.duration);
    }
    let duration = Duration::from_secs_f64(a.duration);
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let stale = testbed::cleanup_stale();
    if stale > 0 {
        eprintln!("removed {stale} network namespaces left by dead runs");
    }
    let tb = Testbed::up().context("building the test bed")?;
    for key in ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"] {
        tb.server.sysctl(key, &a.backlog.max(128).to_string())?;
    }
    // The legitimate clients come from one address. Linux admits SYNs of peers it holds TCP
    // metrics for ("proven" peers) past three quarters of a full SYN queue, which would make
    // our single client immune and the no-defense runs look good; most clients a flooded
    // server meets are not proven, so the server keeps no metrics.
    tb.server.sysctl("net.ipv4.tcp_no_metrics_save", "1")?;
    // The server closes first: its TIME_WAIT sockets (up to 131,072 by default, shared hash
    // table) would make every sock_diag dump walk them (10-50 ms each, measured). Bounding
    // them keeps the automatic defense's sampling cheap; it changes nothing else measured.
    tb.server.sysctl("net.ipv4.tcp_max_tw_buckets", "4096")?;
    if a.defenses.is_empty() {
        bail!("nothing to measure: give --defenses");
    }
    let mut ctx = Ctx {
        tb: &tb,
        a: &a,
        stop: stop.clone(),
        port: a.port,
    };
    let rates: Vec<u64> = if a.rates.is_empty() {
        eprintln!("calibrating: the highest flood rate this machine generates (1 s, no clients)");
        let p = measure(
            &mut ctx,
            Defense::Filter,
            flooder::MAX_RATE,
            Duration::from_secs(1),
            false,
        )?;
        let top = (p.flood.rate() as u64 / 1000 * 1000).max(1000);
        eprintln!("  {top} SYN/s");
        let steps = a.steps.max(1);
        std::iter::once(0)
            .chain((1..=steps).map(|i| top * i / steps))
            .collect()
    } else {
        a.rates.clone()
    };

    // Defenses interleaved at each rate, so that drift on a shared machine hits them alike.
    let total = a.defenses.len() * rates.len();
    let mut done = Vec::new();
    'outer: for &rate in &rates {
        for &d in &a.defenses {
            if stop.load(Ordering::Relaxed) {
                eprintln!("interrupted: cleaning up");
                break 'outer;
            }
            let p = measure(&mut ctx, d, rate, duration, true)?;
            eprintln!(
                "[{:>2}/{total}] {:<10} flood {:>7} SYN/s asked, {:>8.0} sent/s  legit {:>7.0}/s  failed {}  accepted {}",
                done.len() + 1,
                d.name(),
                rate,
                p.flood.rate(),
                p.clients.per_s(),
                p.clients.failed,
                p.accepted,
            );
            for act in &p.actions {
                eprintln!("        defense: {act}");
            }
            done.push((d, rate, p));
        }
    }
    // The no-flood rate: the median of the rate-0 runs of every defense.
    let mut zero: Vec<f64> = done
        .iter()
        .filter(|(_, r, _)| *r == 0)
        .map(|(_, _, p)| p.clients.per_s())
        .collect();
    zero.sort_by(f64::total_cmp);
    let no_flood = match zero.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => zero[n / 2],
        n => (zero[n / 2 - 1] + zero[n / 2]) / 2.0,
    };
    let mut rows = Vec::new();
    let mut table = Vec::new();
    for (d, rate, p) in &done {
        let legit = p.clients.per_s();
        table.push((*d, *rate, p.flood.rate(), legit, p.clients.failed));
        rows.push(Row {
            syn_rate: p.flood.rate().round(),
            defense: d.name(),
            legit_per_s: legit.round(),
        });
    }
    rows.sort_by_key(|r| a.defenses.iter().position(|d| d.name() == r.defense));
    table.sort_by_key(|t| a.defenses.iter().position(|d| *d == t.0));
    drop(tb);
    if a.json {
        let report = Report {
            rows,
            no_flood_legit_per_s: no_flood.round(),
        };
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "no flood: {no_flood:.0} legit connections/s (median of the rate-0 runs, {} client threads)",
            a.clients
        );
        println!(
            "{:<11} {:>10} {:>11} {:>10} {:>7} {:>7}",
            "defense", "asked/s", "SYN/s sent", "legit/s", "% base", "failed"
        );
        for (d, asked, sent, legit, failed) in table {
            println!(
                "{:<11} {:>10} {:>11.0} {:>10.0} {:>6.0}% {:>7}",
                d.name(),
                asked,
                sent,
                legit,
                100.0 * legit / no_flood.max(1.0),
                failed
            );
        }
    }
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}
