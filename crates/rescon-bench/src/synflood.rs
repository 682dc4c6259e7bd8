//! `synflood`: legitimate connections per second under a SYN flood, with no defense
//! (cookies off), with SYN cookies, with a static filter (the flood range black-holed
//! through the listener group) and with automatic detection (the defender finds the flood's
//! prefixes and moves them to the black hole), against the paper's 73% at 70,000 SYN/s.
//!
//! Everything runs in the test bed's network namespaces (see `rescon_bench::testbed`): the
//! attacker spoofs 198.19.0.0/16 towards the server at a paced rate, the client namespace
//! runs the legitimate clients, the server namespace runs a small accept server on a
//! listener group with two members: `legit` (every source) and `hole` (priority 0). With the
//! `filter` and `auto` defenses the group also drops the hole's SYNs at the server's veth with
//! XDP (the edge filter, `--no-edge` to measure without it). Each measurement uses a fresh
//! group on a fresh port, so no half-open connection of one run survives into the next.
//! Every run is bounded in time; Ctrl-C stops the runs and removes the namespaces.
//!
//! The machine's noise moves one measurement by 10-20%: `--rounds N` repeats every point,
//! interleaved, and reports medians. `--clients 0` measures the flood alone: the table's
//! `CPU ns/SYN` is then what one SYN costs the machine (making it, delivering it, dropping
//! it). `--placement` says where the attacker runs (see its help). `flood CPU` (JSON:
//! `flood_cpu_share`) is the flooding thread's share of the machine's CPU time: on one machine
//! the attacker's work is taken from the server and the clients, which caps what any defense
//! can keep (with two CPUs, the flooder at its highest rate takes about 30%).

use anyhow::{Context, bail};
use rescon::{Attributes, Registry};
use rescon_bench::flooder::{self, FloodConfig, FloodReport};
use rescon_bench::loadgen::{ClientReport, Server, run_clients};
use rescon_bench::testbed::{
    self, ATTACKER_IFACE, SERVER_ATT, SERVER_ATT_IFACE, SERVER_CLI, SPOOFED, Testbed,
};
use rescon_linux::listen::defense::DefenseConfig;
use rescon_linux::listen::driver::{Defender, EARLY_INTERVAL};
use rescon_linux::listen::edge::XdpMode;
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
    /// Sampling interval of the automatic defense, milliseconds (default: 5 with the edge
    /// filter, whose early counters are cheap to read; 50 without, where each sample dumps
    /// the port's half-open connections).
    #[arg(long)]
    defense_interval_ms: Option<u64>,
    /// Drop black-holed SYNs at the black-hole socket only, not also at the interface with
    /// XDP (the edge filter), to measure what the edge saves.
    #[arg(long)]
    no_edge: bool,
    /// Rounds of every measurement, interleaved; the medians are reported (the machine's
    /// noise moves one round by 10-20%).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Where the attacker runs. `shared` (the default): every thread on every CPU, so the
    /// attacker's own cost of making packets is taken from the machine measured, and the
    /// kernel's receive work for the flood runs in the attacker's context (as veth delivers);
    /// the edge filter is veth's native XDP there. `split`: the attacker gets CPU 0 to itself,
    /// as if it were another machine, everything else runs on the other CPUs, and the flood's
    /// packets are steered (RPS) to those, where a NIC would deliver them; the edge filter is
    /// generic XDP, which runs after that steering. On a VM each steered batch costs an
    /// inter-processor interrupt, which a real NIC does not: `split` overstates the server's
    /// cost per SYN, `shared` charges it the attacker's.
    #[arg(long, value_enum, default_value_t = Placement::Shared)]
    placement: Placement,
}

/// See [`Args::placement`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    Split,
    Shared,
}

/// CPUs for the attacker and for the rest, by placement.
#[derive(Clone, Copy, Debug)]
struct Cpus {
    /// CPUs of the machine (at most 64).
    n: usize,
    attacker: Option<usize>,
    /// Mask of the server's and clients' CPUs (also the RPS mask of the flood's interface).
    rest: u64,
}

impl Cpus {
    fn new(p: Placement) -> anyhow::Result<Cpus> {
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(64);
        Ok(match p {
            Placement::Shared => Cpus {
                n,
                attacker: None,
                rest: u64::MAX >> (64 - n),
            },
            Placement::Split => {
                if n < 2 {
                    bail!(
                        "--placement split needs two CPUs, this machine has {n}: use --placement shared"
                    );
                }
                Cpus {
                    n,
                    attacker: Some(0),
                    rest: (u64::MAX >> (64 - n)) & !1,
                }
            }
        })
    }

    fn pin_attacker(&self) -> anyhow::Result<()> {
        match self.attacker {
            Some(c) => rescon_bench::httpload::pin_to(c),
            None => Ok(()),
        }
    }

    /// Pins the calling thread (and the threads it starts) to the server's CPUs.
    fn pin_rest(&self) -> anyhow::Result<()> {
        if self.attacker.is_none() {
            return Ok(());
        }
        let mut set = rustix::thread::CpuSet::new();
        for c in 0..64 {
            if self.rest & (1 << c) != 0 {
                set.set(c);
            }
        }
        rustix::thread::sched_setaffinity(None, &set)
            .map_err(|e| anyhow::anyhow!("pinning to CPUs {:#x}: {e}", self.rest))
    }
}

#[derive(Serialize)]
struct Row {
    syn_rate: f64,
    defense: &'static str,
    legit_per_s: f64,
    /// Whether the black hole's SYNs were also dropped at the interface (XDP).
    edge: bool,
    /// The flooding thread's share of the machine's CPU time (0 to 1): the attacker runs on
    /// the machine measured, and what it takes the server and the clients do not get.
    flood_cpu_share: f64,
}

#[derive(Serialize)]
struct Report {
    rows: Vec<Row>,
    no_flood_legit_per_s: f64,
}

struct Point {
    /// CPU time the whole machine was busy during the measurement (`/proc/stat`).
    busy_ns: u64,
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
    cpus: Cpus,
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
    let (tb, a, stop, port, cpus) = (ctx.tb, ctx.a, &ctx.stop, ctx.port, ctx.cpus);
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
    let edge = uses_edge(a, defense);
    let interval = a.defense_interval_ms.unwrap_or(if edge {
        EARLY_INTERVAL.as_millis() as u64
    } else {
        50
    });
    let (backlog, threads) = (a.backlog, a.server_threads);
    // The group, the server and the defender live in the server namespace.
    let (group, server, defender) = tb
        .server
        .spawn("server", move || -> anyhow::Result<_> {
            cpus.pin_rest()?;
            let group = Arc::new(
                ListenerGroup::builder(SocketAddr::from(([0, 0, 0, 0], port)))
                    .backlog(backlog)
                    .member(&legit, Filter::any())
                    .member(&hole, hole_filter)
                    .build()?,
            );
            if edge {
                // Split: generic XDP runs where the flood's packets are processed, after RPS,
                // on the server's CPUs as a NIC's would (veth's native XDP runs in the
                // sender). Shared: everything runs in the sender anyway; native is cheaper.
                let mode = if cpus.attacker.is_some() {
                    XdpMode::Generic
                } else {
                    XdpMode::Auto
                };
                group.drop_at_edge(SERVER_ATT_IFACE, mode)?;
            }
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
        Some(tb.attacker.spawn("flood", move || {
            cpus.pin_attacker()
                .map_err(|e| flooder::FloodError::Refused(e.to_string()))?;
            flooder::flood(&cfg, &stop)
        })?)
    } else {
        None
    };
    let busy0 = busy_ns()?;
    let clients = if clients && a.clients > 0 {
        let (n, stop) = (a.clients, stop.clone());
        let target = SocketAddr::from((SERVER_CLI, port));
        Some(tb.client.spawn("clients", move || {
            if let Err(e) = cpus.pin_rest() {
                eprintln!("{e}");
            }
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
    let busy_ns = busy_ns()?.saturating_sub(busy0);
    let accepted = server.accepted();
    let actions = match defender {
        Some((d, running)) => {
            running.stop();
            let (steps, spent) = d.sampling_cost();
            let mut v: Vec<String> = d
                .history()
                .iter()
                .map(|r| format!("{:.0} ms {}", r.elapsed.as_secs_f64() * 1e3, r.action))
                .collect();
            v.push(format!(
                "{steps} steps, {:.0} us each",
                spent.as_secs_f64() * 1e6 / steps.max(1) as f64
            ));
            v
        }
        None => Vec::new(),
    };
    drop(server);
    drop(group);
    Ok(Point {
        busy_ns,
        flood,
        clients,
        accepted,
        actions,
    })
}

/// Whether `defense` also drops at the interface (the edge filter) in this run.
fn uses_edge(a: &Args, defense: Defense) -> bool {
    !a.no_edge && matches!(defense, Defense::Filter | Defense::Auto)
}

/// CPU time all CPUs have been busy since boot (`/proc/stat`: everything but idle and
/// iowait), in nanoseconds.
fn busy_ns() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    anyhow::ensure!(f.len() >= 8, "short cpu line in /proc/stat: {line}");
    // user nice system idle iowait irq softirq steal
    let busy: u64 = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
    let hz = rustix::param::clock_ticks_per_second();
    Ok(busy * 1_000_000_000 / hz)
}

/// The median (the mean of the middle two for an even count; NaN for none).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
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
    let cpus = Cpus::new(a.placement)?;
    let tb = Testbed::up().context("building the test bed")?;
    if cpus.attacker.is_some() {
        tb.server.rps(SERVER_ATT_IFACE, cpus.rest)?;
    }
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
        cpus,
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

    // Defenses interleaved at each rate, rates within a round, so that drift on a shared
    // machine hits them alike.
    if !(1..=9).contains(&a.rounds) {
        bail!("--rounds {}: allowed 1 to 9", a.rounds);
    }
    let total = a.defenses.len() * rates.len() * a.rounds;
    let mut done = Vec::new();
    'outer: for (&rate, _round) in (0..a.rounds).flat_map(|r| rates.iter().map(move |x| (x, r))) {
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
    let zero: Vec<f64> = done
        .iter()
        .filter(|(_, r, _)| *r == 0)
        .map(|(_, _, p)| p.clients.per_s())
        .collect();
    let no_flood = median(zero);
    let mut rows = Vec::new();
    let mut table = Vec::new();
    for &d in &a.defenses {
        for &rate in &rates {
            let runs: Vec<&Point> = done
                .iter()
                .filter(|(d2, r2, _)| *d2 == d && *r2 == rate)
                .map(|(_, _, p)| p)
                .collect();
            if runs.is_empty() {
                continue;
            }
            let sent = median(runs.iter().map(|p| p.flood.rate()).collect());
            let legit = median(runs.iter().map(|p| p.clients.per_s()).collect());
            let failed = runs.iter().map(|p| p.clients.failed).sum::<u64>();
            // Machine CPU per SYN sent: the flood's whole cost (making, delivering and
            // dropping each SYN), meaningful with --clients 0.
            let per_syn = median(
                runs.iter()
                    .filter(|p| p.flood.sent > 0)
                    .map(|p| p.busy_ns as f64 / p.flood.sent as f64)
                    .collect(),
            );
            let share = median(
                runs.iter()
                    .map(|p| {
                        let wall = p.flood.elapsed.as_secs_f64() * cpus.n as f64;
                        if wall > 0.0 {
                            p.flood.cpu.as_secs_f64() / wall
                        } else {
                            0.0
                        }
                    })
                    .collect(),
            );
            table.push((d, rate, sent, legit, failed, per_syn, share));
            rows.push(Row {
                syn_rate: sent.round(),
                defense: d.name(),
                legit_per_s: legit.round(),
                edge: uses_edge(&a, d),
                flood_cpu_share: (share * 1000.0).round() / 1000.0,
            });
        }
    }
    drop(tb);
    if a.json {
        let report = Report {
            rows,
            no_flood_legit_per_s: no_flood.round(),
        };
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "no flood: {no_flood:.0} legit connections/s (median of the rate-0 runs, {} client threads); medians of {} round(s); placement {:?}; edge filter (XDP) {}",
            a.clients,
            a.rounds,
            a.placement,
            if a.no_edge {
                "off"
            } else {
                "on for filter and auto"
            }
        );
        println!(
            "{:<11} {:>10} {:>11} {:>10} {:>7} {:>7} {:>11} {:>10}",
            "defense",
            "asked/s",
            "SYN/s sent",
            "legit/s",
            "% base",
            "failed",
            "CPU ns/SYN",
            "flood CPU"
        );
        for (d, asked, sent, legit, failed, per_syn, share) in table {
            println!(
                "{:<11} {:>10} {:>11.0} {:>10.0} {:>6.0}% {:>7} {:>11.0} {:>9.0}%",
                d.name(),
                asked,
                sent,
                legit,
                100.0 * legit / no_flood.max(1.0),
                failed,
                per_syn,
                100.0 * share
            );
        }
        if a.clients > 0 {
            println!(
                "(CPU ns/SYN: the machine's busy time per SYN sent, legitimate work included; run with --clients 0 for the flood's cost alone. flood CPU: the flooding thread's share of the machine's {} CPUs, its sends and the receive work veth does for them in its context)",
                cpus.n
            );
        }
    }
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}
