//! `netacct`: the kernel's network work charged to containers, on the test bed: the harness
//! of the paper run's experiment 9 without the server integration (which charges the
//! figures into the policy).
//!
//! In the test bed's namespaces (see `rescon_bench::testbed`), a small server has two
//! listeners: the victim's, which the clients' namespace uses for request/response (100
//! bytes in, 1 KB out, on persistent connections), and the attacker's, to which the
//! attacker's namespace sends many small writes on established connections (`TCP_NODELAY`,
//! `--small` bytes each, autocorking off in its namespace so that each write is a packet;
//! real connections, no spoofing). The server runs on the last CPU,
//! the clients and the attacker on the first; the server's veths steer their packets to
//! the server's CPU (RPS), so NET_RX softirq runs there as a NIC's would, interrupting the
//! server.
//!
//! With `--isolation`, the attacker's threads run at `SCHED_IDLE`: on two CPUs they share the
//! clients' CPU, and so they take only what the victim's clients leave, so that what
//! the victim loses is the server's doing (its CPU taken by the attacker's packets), not its
//! load generator's.
//!
//! Each round runs once without kernel network accounting and once with it (the listeners
//! bound to a victim and an attacker container), interleaved. Reported: the victim's
//! requests/s and the attacker's packets/s with and without (the accounting's overhead),
//! the NET_RX softirq time measured, the part attributed to containers (goal >= 90%), each
//! container's kernel network CPU, the NET_RX time that interrupted the server's threads,
//! and in a last run with the kernel's BPF statistics on, the programs' time per packet.
//! Every run is bounded in time; Ctrl-C stops it and removes the namespaces.

use anyhow::{Context, bail};
use rescon::{Attributes, Registry};
use rescon_bench::httpload::pin_to;
use rescon_bench::testbed::{self, SERVER_ATT, SERVER_ATT_IFACE, SERVER_CLI, Testbed};
use rescon_linux::netacct::ledger::{Interval, Ledger, credit_back};
use rescon_linux::netacct::{NetAccounting, Options, ProgramStats, RunStats};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds per run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Rounds (each: one run without accounting, one with), interleaved; medians reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Attacker connections.
    #[arg(long, default_value_t = 2)]
    attackers: usize,
    /// Bytes per attacker write (one packet each, with TCP_NODELAY).
    #[arg(long, default_value_t = 64)]
    small: usize,
    /// Victim connections (each one request at a time).
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Also the isolation runs: the victim's throughput under attack against none, with the
    /// attacker's class capped at 20% and charged its kernel network CPU, and without
    /// containers.
    #[arg(long)]
    isolation: bool,
    /// In the isolation runs, each attacker connection's writes per second (0: as fast as it
    /// can). The attacker's threads run at `SCHED_IDLE` there, so that on two CPUs it takes only
    /// the CPU the victim's clients leave: what the victim loses is the server's doing.
    #[arg(long, default_value_t = 0)]
    attack_rate: u64,
    /// In the isolation runs, the server sockets' receive buffer in bytes (0: the kernel's
    /// default): a capped class whose reads wait closes its window sooner with a small one.
    #[arg(long, default_value_t = 65536)]
    rcvbuf: usize,
    /// In the isolation runs, the attacker's class's CPU limit, in percent of one CPU.
    #[arg(long, default_value_t = 20)]
    attacker_cap: u32,
    /// In the isolation runs, the receive window of the capped class's connections, in bytes
    /// (0: the kernel's): when the cap holds its reads back, its senders stop once this
    /// much is in flight.
    #[arg(long, default_value_t = 16384)]
    capped_window: u32,
    /// First port; each run takes the next two.
    #[arg(long, default_value_t = 19000)]
    port: u16,
}

const REQUEST: usize = 100;
const RESPONSE: usize = 1000;

const VICTIM: Load = Load {
    victim: true,
    small: 0,
    rate: 0,
    background: false,
};

/// What one run measured.
#[derive(Clone, Debug, Default, Serialize)]
struct Run {
    accounting: bool,
    victim_req_per_s: f64,
    attacker_bytes_per_s: f64,
    /// The attacker's writes per second (one packet each).
    attacker_writes_per_s: f64,
    /// With accounting: what the ledger made of the run.
    netrx_ms_per_s: f64,
    /// The part charged to any container (the server's and the peers').
    attributed: f64,
    /// The peers' (clients' and attacker's sockets': other machines in a real setup).
    peers_net_ms_per_s: f64,
    /// The server's containers' share of the NET_RX time that is not the peers'.
    server_attributed: f64,
    victim_net_ms_per_s: f64,
    attacker_net_ms_per_s: f64,
    attacker_rx_packets_per_s: f64,
    /// NET_RX time that interrupted the server's threads, per second.
    server_interrupted_ms_per_s: f64,
}

/// The server's side: listeners, connection threads, counters.
struct Server {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    absorbed: Arc<AtomicU64>,
    tids: Arc<Mutex<Vec<u32>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn gettid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

impl Server {
    /// Listens on `victim` and `attacker` (in the calling thread's namespace), each bound
    /// to its container if `acct` is given, and serves until stopped, on CPU `cpu`.
    fn start(
        victim: SocketAddr,
        attacker: SocketAddr,
        acct: Option<(&NetAccounting, rescon::ContainerId, rescon::ContainerId)>,
        cpu: usize,
    ) -> anyhow::Result<Server> {
        let lv = TcpListener::bind(victim).with_context(|| format!("bind {victim}"))?;
        let la = TcpListener::bind(attacker).with_context(|| format!("bind {attacker}"))?;
        if let Some((acct, v, a)) = acct {
            acct.bind(&lv, v)?;
            acct.bind(&la, a)?;
        }
        let s = Server {
            stop: Arc::new(AtomicBool::new(false)),
            served: Arc::new(AtomicU64::new(0)),
            absorbed: Arc::new(AtomicU64::new(0)),
            tids: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
        };
        let mut s = s;
        for (l, victim_side) in [(lv, true), (la, false)] {
            l.set_nonblocking(true)?;
            let (stop, served, absorbed, tids) = (
                s.stop.clone(),
                s.served.clone(),
                s.absorbed.clone(),
                s.tids.clone(),
            );
            s.threads.push(std::thread::spawn(move || {
                let _ = pin_to(cpu);
                tids.lock().unwrap().push(gettid());
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((c, _)) => {
                            let (stop, served, absorbed, tids) =
                                (stop.clone(), served.clone(), absorbed.clone(), tids.clone());
                            conns.push(std::thread::spawn(move || {
                                let _ = pin_to(cpu);
                                tids.lock().unwrap().push(gettid());
                                serve(c, victim_side, &stop, &served, &absorbed);
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            }));
        }
        Ok(s)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One connection: request/response for the victim, a sink for the attacker.
fn serve(
    mut c: TcpStream,
    victim: bool,
    stop: &AtomicBool,
    served: &AtomicU64,
    absorbed: &AtomicU64,
) {
    let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = c.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    let reply = vec![b'r'; RESPONSE];
    while !stop.load(Ordering::Relaxed) {
        if victim {
            match c.read_exact(&mut buf[..REQUEST]) {
                Ok(()) => {
                    if c.write_all(&reply).is_err() {
                        return;
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        } else {
            match c.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    absorbed.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
    }
}

/// How a client runs.
#[derive(Clone, Copy, Debug)]
struct Load {
    /// Request/response (the victim) or small writes (the attacker).
    victim: bool,
    /// Bytes per attacker write.
    small: usize,
    /// Writes per second (0: as fast as it can).
    rate: u64,
    /// At `SCHED_IDLE`: it takes only the CPU the others leave.
    background: bool,
}

/// A client loop until `end`. Returns the operations done. With `peer`, its socket is
/// charged to that container (the peers stand for other machines: their receive work is set
/// apart from the server's).
fn client(
    to: SocketAddr,
    load: Load,
    end: Instant,
    stop: &AtomicBool,
    peer: Option<(Arc<NetAccounting>, rescon::ContainerId)>,
) -> anyhow::Result<u64> {
    let Load {
        victim,
        small,
        rate,
        background,
    } = load;
    pin_to(0)?;
    if background {
        background_priority().context("lowering the attacker's priority")?;
    }
    let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .with_context(|| format!("connecting to {to}"))?;
    if let Some((acct, id)) = &peer {
        acct.bind(&c, *id)?;
    }
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    // A server that stops reading (a capped class) closes the window: the attacker's writes
    // then wait, and give up at the run's end.
    c.set_write_timeout(Some(Duration::from_millis(100)))?;
    let req = vec![b'q'; if victim { REQUEST } else { small }];
    let mut resp = vec![0u8; RESPONSE];
    let mut n = 0;
    let t0 = Instant::now();
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        if rate > 0 && n % 32 == 0 {
            let due = t0 + Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        match c.write_all(&req) {
            Ok(()) => {}
            Err(e)
                if !victim
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if victim {
            c.read_exact(&mut resp)?;
        }
        n += 1;
    }
    Ok(n)
}

/// Moves the calling thread (an attacker's) to `SCHED_IDLE`: it runs only when the clients'
/// CPU has nothing else to run, and a victim client that wakes there preempts it at once.
///
/// At nice 19 (what the isolation runs used before), a victim client woken by its response
/// waits for the attacker's protected time slice (EEVDF, about 3 ms on this 6.18 kernel)
/// before it runs: the victim lost on its own load generator's CPU, not on the server's.
/// Measured: with the attacker's class capped at 5%, throttled 918 ms/s and charged 17 ms/s
/// of kernel network CPU, the victim still made only 0.55 of its no-attack rate, while the
/// clients' CPU was 60% the attacker's. Falls back to nice 19 if `SCHED_IDLE` is refused.
fn background_priority() -> anyhow::Result<()> {
    #[allow(unsafe_code)]
    fn sched_idle() -> std::io::Result<()> {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid `sched_param` that outlives the call; pid 0 is the
        // calling thread. The result is checked.
        let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    if let Err(e) = sched_idle() {
        eprintln!("warning: the attacker runs at nice 19, not SCHED_IDLE: {e}");
        let tid = rustix::thread::gettid();
        rustix::process::setpriority_process(
            rustix::process::Pid::from_raw(tid.as_raw_nonzero().get()),
            19,
        )?;
    }
    Ok(())
}

/// One run: a fresh server on fresh ports, the clients and the attacker together.
fn run_once(
    tb: &Testbed,
    a: &Args,
    port: u16,
    acct: Option<&Arc<NetAccounting>>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(Run, Option<Interval>)> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_cpu = cpus - 1;
    let registry = Registry::new();
    let victim_c = registry
        .root()
        .create_child("victim", Attributes::default())?;
    let attacker_c = registry
        .root()
        .create_child("attacker", Attributes::default())?;
    let peers_c = registry
        .root()
        .create_child("peers", Attributes::default())?;
    let (vid, aid, pid) = (victim_c.id(), attacker_c.id(), peers_c.id());
    let victim_addr = SocketAddr::from((SERVER_CLI, port));
    let attacker_addr = SocketAddr::from((SERVER_ATT, port + 1));
    let acct2 = acct.cloned();
    let server = tb
        .server
        .spawn("server", move || {
            Server::start(
                victim_addr,
                attacker_addr,
                acct2.as_deref().map(|x| (x, vid, aid)),
                server_cpu,
            )
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("server setup panicked"))??;
    let duration = Duration::from_secs_f64(a.duration);
    let before = match acct {
        Some(x) => Some(x.read()?),
        None => None,
    };
    let t0 = Instant::now();
    let end = t0 + duration;
    let mut handles = Vec::new();
    let peer = || acct.map(|x| (x.clone(), pid));
    for _ in 0..a.clients {
        let (stop, peer) = (stop.clone(), peer());
        handles.push((
            true,
            tb.client.spawn("victim", move || {
                client(victim_addr, VICTIM, end, &stop, peer)
            })?,
        ));
    }
    for _ in 0..a.attackers {
        let (stop, peer) = (stop.clone(), peer());
        let load = Load {
            victim: false,
            small: a.small,
            rate: 0,
            background: false,
        };
        handles.push((
            false,
            tb.attacker.spawn("attacker", move || {
                client(attacker_addr, load, end, &stop, peer)
            })?,
        ));
    }
    let (mut reqs, mut writes) = (0u64, 0u64);
    for (victim, h) in handles {
        let n = h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        if victim {
            reqs += n;
        } else {
            writes += n;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let interval = match (acct, before) {
        (Some(x), Some(b)) => {
            let mut ledger = Ledger::starting_at(&b, &[]);
            Some(ledger.advance(&x.read()?, &[]))
        }
        _ => None,
    };
    let absorbed = server.absorbed.load(Ordering::Relaxed);
    let tids = server.tids.lock().unwrap().clone();
    drop(server);
    let mut run = Run {
        accounting: acct.is_some(),
        victim_req_per_s: reqs as f64 / secs,
        attacker_bytes_per_s: absorbed as f64 / secs,
        attacker_writes_per_s: writes as f64 / secs,
        ..Run::default()
    };
    if let Some(i) = &interval {
        let ms = |ns: u64| ns as f64 / 1e6 / secs;
        run.netrx_ms_per_s = ms(i.netrx_ns);
        run.attributed = i.attributed_fraction();
        let peers = i.containers.get(&pid).copied().unwrap_or_default();
        run.peers_net_ms_per_s = ms(peers.kernel_net_ns());
        let v = i.containers.get(&vid).copied().unwrap_or_default();
        let at = i.containers.get(&aid).copied().unwrap_or_default();
        run.victim_net_ms_per_s = ms(v.kernel_net_ns());
        run.attacker_net_ms_per_s = ms(at.kernel_net_ns());
        run.attacker_rx_packets_per_s = at.rx_packets as f64 / secs;
        let server_side = i.netrx_ns.saturating_sub(peers.kernel_net_ns());
        run.server_attributed = if server_side > 0 {
            (v.kernel_net_ns() + at.kernel_net_ns()) as f64 / server_side as f64
        } else {
            1.0
        };
        run.server_interrupted_ms_per_s = ms(tids
            .iter()
            .map(|t| i.credits.get(t).copied().unwrap_or(0))
            .sum());
        if let Some(x) = acct {
            for id in [vid, aid, pid] {
                let _ = x.forget(id);
            }
        }
    }
    Ok((run, interval))
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    crate::synflood::median(v.collect())
}

#[derive(Serialize)]
struct Report {
    runs: Vec<Run>,
    /// With accounting / without, medians: the victim's requests/s and the attacker's
    /// bytes/s.
    victim_ratio: f64,
    attacker_ratio: f64,
    /// The programs' run time per attacker packet received, from the kernel's statistics.
    program_ns_per_packet: Option<f64>,
    programs: Vec<(String, u64, u64)>,
    /// The isolation runs (with `--isolation`).
    isolation: Vec<IsoRun>,
    /// Medians: the victim's requests/s under attack / with no attacker, with containers
    /// (the attacker capped, charged its kernel network CPU) and without.
    isolation_containers: Option<f64>,
    isolation_no_containers: Option<f64>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "netacct needs root: it creates network namespaces and veths, and loads eBPF programs"
        );
    }
    if !(a.duration > 0.0 && a.duration <= 30.0) {
        bail!("--duration {} s: allowed (0, 30]", a.duration);
    }
    if !(1..=9).contains(&a.rounds) {
        bail!("--rounds {}: allowed 1 to 9", a.rounds);
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let stale = testbed::cleanup_stale();
    if stale > 0 {
        eprintln!("removed {stale} network namespaces left by dead runs");
    }
    let acct =
        Arc::new(NetAccounting::open(&Options::default()).context("kernel network accounting")?);
    let tb = Testbed::up().context("building the test bed")?;
    // Many small packets: each attacker write its own segment. With autocorking (the
    // default) the kernel holds a small write back while the previous one is still queued
    // and sends them together, so that the attacker's packets would be few and large.
    tb.attacker
        .sysctl("net.ipv4.tcp_autocorking", "0")
        .context("turning autocorking off in the attacker's namespace")?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        let mask = 1u64 << (cpus - 1).min(63);
        tb.server.rps(SERVER_ATT_IFACE, mask)?;
        tb.server.rps("scli", mask)?;
    }
    let mut port = a.port;
    let mut runs = Vec::new();
    for round in 0..a.rounds {
        for on in [false, true] {
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            port = port.wrapping_add(2).max(1024);
            let (r, _) = run_once(&tb, &a, port, on.then_some(&acct), &stop)?;
            eprintln!(
                "[{}/{}] accounting {:<3}  victim {:>7.0} req/s  attacker {:>8.0} writes/s {:>6.1} MB/s{}",
                round + 1,
                a.rounds,
                if on { "on" } else { "off" },
                r.victim_req_per_s,
                r.attacker_writes_per_s,
                r.attacker_bytes_per_s / 1e6,
                if on {
                    format!(
                        "  NET_RX {:.0} ms/s, {:.1}% attributed, {:.1}% of the server's (victim {:.0}, attacker {:.0}, peers {:.0} ms/s), server interrupted {:.0} ms/s",
                        r.netrx_ms_per_s,
                        100.0 * r.attributed,
                        100.0 * r.server_attributed,
                        r.victim_net_ms_per_s,
                        r.attacker_net_ms_per_s,
                        r.peers_net_ms_per_s,
                        r.server_interrupted_ms_per_s
                    )
                } else {
                    String::new()
                }
            );
            runs.push(r);
        }
    }
    // The programs' own cost: one more run with the kernel's statistics on.
    let (per_packet, programs) = {
        let _stats = RunStats::enable().context("enabling BPF run statistics")?;
        let s0 = acct.program_stats();
        port = port.wrapping_add(2).max(1024);
        let (_, interval) = run_once(&tb, &a, port, Some(&acct), &stop)?;
        let s1 = acct.program_stats();
        let progs: Vec<(String, u64, u64)> = s1
            .iter()
            .zip(&s0)
            .map(|(b, a): (&ProgramStats, &ProgramStats)| {
                (b.name.to_string(), b.runs - a.runs, b.run_ns - a.run_ns)
            })
            .collect();
        let total_ns: u64 = progs.iter().map(|p| p.2).sum();
        let pkts: u64 = interval
            .map(|i| {
                i.containers
                    .values()
                    .map(|u| u.rx_packets + u.tx_packets)
                    .sum()
            })
            .unwrap_or(0);
        ((pkts > 0).then(|| total_ns as f64 / pkts as f64), progs)
    };
    let mut iso = Vec::new();
    if a.isolation {
        for round in 0..a.rounds {
            for (containers, attack) in [(true, false), (true, true), (false, false), (false, true)]
            {
                if stop.load(Ordering::Relaxed) {
                    bail!("interrupted");
                }
                port = port.wrapping_add(2).max(1024);
                let setting = Setting { containers, attack };
                let r = iso_once(&tb, &a, port, setting, &acct, &stop)?;
                eprintln!(
                    "[{}/{}] isolation: containers {:<3} attack {:<3}  victim {:>7.0} req/s  attacker {:>8.0} writes/s  net ms/s victim {:.0} attacker {:.0}  attacker polled {:.0} ms/s, throttled {:.0} ms/s  server CPU busy {:.0} ms/s",
                    round + 1,
                    a.rounds,
                    if containers { "on" } else { "off" },
                    if attack { "on" } else { "off" },
                    r.victim_req_per_s,
                    r.attacker_writes_per_s,
                    r.victim_net_ms_per_s,
                    r.attacker_net_ms_per_s,
                    r.attacker_polled_ms_per_s,
                    r.attacker_throttled_ms_per_s,
                    r.server_busy_ms_per_s,
                );
                iso.push(r);
            }
        }
    }
    drop(tb);
    let iso_ratio = |containers: bool| -> Option<f64> {
        let m = |attack: bool| {
            median(
                iso.iter()
                    .filter(|r| r.setting == Setting { containers, attack })
                    .map(|r| r.victim_req_per_s),
            )
        };
        (!iso.is_empty()).then(|| m(true) / m(false))
    };
    let (isolation_containers, isolation_no_containers) = (iso_ratio(true), iso_ratio(false));
    let med =
        |on: bool, f: fn(&Run) -> f64| median(runs.iter().filter(|r| r.accounting == on).map(f));
    let victim_ratio = med(true, |r| r.victim_req_per_s) / med(false, |r| r.victim_req_per_s);
    let attacker_ratio =
        med(true, |r| r.attacker_bytes_per_s) / med(false, |r| r.attacker_bytes_per_s);
    if a.json {
        let report = Report {
            runs,
            victim_ratio,
            attacker_ratio,
            program_ns_per_packet: per_packet,
            programs,
            isolation: iso,
            isolation_containers,
            isolation_no_containers,
        };
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "medians of {} rounds, {} s each; {} victim connections (100 B -> 1 KB), {} attacker connections ({} B writes)",
        a.rounds, a.duration, a.clients, a.attackers, a.small
    );
    println!(
        "{:<12} {:>12} {:>16} {:>12} {:>11} {:>14} {:>16} {:>18}",
        "accounting",
        "victim req/s",
        "attacker pkts/s",
        "NET_RX ms/s",
        "server's",
        "victim net ms/s",
        "attacker net ms/s",
        "server interrupted"
    );
    for on in [false, true] {
        let m = |f: fn(&Run) -> f64| med(on, f);
        if on {
            println!(
                "{:<12} {:>12.0} {:>16.0} {:>12.0} {:>10.1}% {:>14.1} {:>16.1} {:>15.1} ms/s",
                "on",
                m(|r| r.victim_req_per_s),
                m(|r| r.attacker_writes_per_s),
                m(|r| r.netrx_ms_per_s),
                100.0 * m(|r| r.server_attributed),
                m(|r| r.victim_net_ms_per_s),
                m(|r| r.attacker_net_ms_per_s),
                m(|r| r.server_interrupted_ms_per_s),
            );
        } else {
            println!(
                "{:<12} {:>12.0} {:>16.0} {:>12} {:>11} {:>14} {:>16} {:>18}",
                "off",
                m(|r| r.victim_req_per_s),
                m(|r| r.attacker_writes_per_s),
                "-",
                "-",
                "-",
                "-",
                "-"
            );
        }
    }
    println!(
        "server's: the part of NET_RX not charged to the peers (the clients' and the attacker's sockets, other machines in a real setup) that is charged to the server's containers, victim and attacker (goal >= 90%); machine-wide, {:.1}% is charged to some container",
        100.0 * med(true, |r| r.attributed)
    );
    println!("with accounting / without: victim {victim_ratio:.3}, attacker {attacker_ratio:.3}");
    match per_packet {
        Some(ns) => println!(
            "the programs' own run time: {ns:.0} ns per packet counted (kernel BPF statistics, trampolines and tracepoint dispatch not included)"
        ),
        None => println!("the programs' own run time: no packets counted"),
    }
    for (name, runs, ns) in &programs {
        if *runs > 0 {
            println!(
                "  {name:<14} {runs:>10} runs {:>6.0} ns each",
                *ns as f64 / *runs as f64
            );
        }
    }
    if let (Some(c), Some(n)) = (isolation_containers, isolation_no_containers) {
        println!(
            "isolation, the victim's req/s under attack / with no attacker: containers (attacker capped at {}%, charged its kernel network CPU) {c:.3}, no containers {n:.3}",
            a.attacker_cap
        );
    }
    Ok(())
}

// ---- Isolation: the attacker's class capped, its kernel network work charged ----

/// One isolation run's setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Setting {
    /// Containers: the attacker's class capped (`--attacker-cap`) and charged its kernel
    /// network CPU; without, one container for both listeners and no accounting.
    containers: bool,
    /// The attacker sends.
    attack: bool,
}

/// How often the isolation server charges the kernel network CPU to its containers.
const CHARGE_EVERY: Duration = Duration::from_millis(10);

/// What one isolation run measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct IsoRun {
    setting: Setting,
    victim_req_per_s: f64,
    attacker_writes_per_s: f64,
    attacker_bytes_per_s: f64,
    /// With containers: the kernel network CPU charged to each class, ms per second.
    victim_net_ms_per_s: f64,
    attacker_net_ms_per_s: f64,
    /// The attacker's class's time throttled by its cap, ms per second.
    attacker_throttled_ms_per_s: f64,
    /// The CPU of the attacker's polls (its reads), ms per second, after the credit back.
    attacker_polled_ms_per_s: f64,
    /// The server's CPU busy (the run's length less its idle time in `/proc/stat`), ms per
    /// second.
    server_busy_ms_per_s: f64,
}

/// CPU `cpu`'s idle time so far, ns (`/proc/stat`'s idle and iowait).
///
/// A run's busy time is its length less this: the idle column is exact (the kernel times
/// each idle period), while the busy columns are sampled by the tick, which misses most of
/// the NET_RX softirq run from the idle task on a tickless idle CPU. Summed, the busy columns
/// said 722 ms/s for the server with containers and 330 ms/s without, no attacker, at the
/// same victim throughput (24,473 and 23,937 req/s), and 556-606 ms/s without containers in
/// other runs of the same setting, while a profile of the server's CPU over the same runs
/// (`perf record -a`) showed the same mix of work in both: the difference was in the tick's
/// sampling (with containers the accounting's 10 ms sampler keeps waking the CPU), not in
/// work. By idle time, the two settings are 470-517 and 484-534 ms/s over thirteen runs each.
fn cpu_idle_ns(cpu: usize) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("no {name} in /proc/stat"))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let idle: u64 = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    let hz = rustix::param::clock_ticks_per_second();
    Ok(idle * 1_000_000_000 / hz)
}

/// The isolation runs' server: rescon-rt with one worker on the server's CPU, a container per
/// listener, and with containers a sampler that charges each class its kernel network CPU
/// (so that the attacker's cap pays for its packets: when it is spent, the attacker's reads
/// stop, its receive window closes, and its packets stop coming).
fn iso_once(
    tb: &Testbed,
    a: &Args,
    port: u16,
    setting: Setting,
    acct: &Arc<NetAccounting>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<IsoRun> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_cpu = cpus - 1;
    let registry = Registry::new();
    let root = registry.root();
    let (victim_c, attacker_c) = if setting.containers {
        let mut capped = Attributes::default();
        capped.set("cpu_limit", &format!("{}%", a.attacker_cap))?;
        (
            root.create_child("victim", Attributes::default())?,
            root.create_child("attacker", capped)?,
        )
    } else {
        let all = root.create_child("all", Attributes::default())?;
        (all.clone(), all)
    };
    let victim_addr = SocketAddr::from((SERVER_CLI, port));
    let attacker_addr = SocketAddr::from((SERVER_ATT, port + 1));
    // Sockets keep the namespace they were made in.
    let rcvbuf = a.rcvbuf;
    let (lv, la) = tb
        .server
        .spawn("bind", move || -> std::io::Result<_> {
            let bind = |addr: SocketAddr| -> std::io::Result<TcpListener> {
                let l = TcpListener::bind(addr)?;
                if rcvbuf > 0 {
                    // Accepted sockets inherit it.
                    rustix::net::sockopt::set_socket_recv_buffer_size(&l, rcvbuf)?;
                }
                Ok(l)
            };
            Ok((bind(victim_addr)?, bind(attacker_addr)?))
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("bind panicked"))??;
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let mut sampler = None;
    // The worker's thread id: the NET_RX time that interrupts it is credited back to the
    // containers whose polls it inflated.
    let worker_tid = Arc::new(AtomicU64::new(0));
    if setting.containers {
        acct.bind(&lv, victim_c.id())?;
        acct.bind(&la, attacker_c.id())?;
        if a.capped_window > 0 {
            // The capped class's connections: when its cap holds its reads back, its
            // senders stop within a small window (accepted sockets inherit the bound).
            rescon_linux::netacct::clamp_window(&la, a.capped_window)?;
        }
        let (acct, stop, v, at, tid) = (
            acct.clone(),
            sampler_stop.clone(),
            victim_c.clone(),
            attacker_c.clone(),
            worker_tid.clone(),
        );
        sampler = Some(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut ledger = Ledger::starting_at(&acct.read()?, &[]);
            let polled = |c: &rescon::Container| c.usage_subtree().cpu_ns;
            let mut before = [polled(&v), polled(&at)];
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(CHARGE_EVERY);
                let i = ledger.advance(&acct.read()?, &[]);
                for c in [&v, &at] {
                    if let Some(u) = i.containers.get(&c.id()) {
                        c.charge_kernel_net(u.kernel_net_ns());
                    }
                }
                let now = [polled(&v), polled(&at)];
                let charged = [
                    (0, now[0].saturating_sub(before[0])),
                    (1, now[1].saturating_sub(before[1])),
                ];
                let worker = tid.load(Ordering::Relaxed) as u32;
                let stolen = i.credits.get(&worker).copied().unwrap_or(0);
                for ((k, was), (_, left)) in charged.iter().zip(credit_back(&charged, stolen)) {
                    [&v, &at][*k].credit_cpu(was - left);
                }
                before = [polled(&v), polled(&at)];
            }
            for c in [&v, &at] {
                let _ = acct.forget(c.id());
            }
            Ok(())
        }));
    }
    let rt = rescon_rt::Builder::new(&registry)
        .workers(1)
        .on_worker_start({
            let tid = worker_tid.clone();
            move |_| {
                let _ = pin_to(server_cpu);
                tid.store(u64::from(gettid()), Ordering::Relaxed);
            }
        })
        .build()?;
    let served = Arc::new(AtomicU64::new(0));
    let absorbed = Arc::new(AtomicU64::new(0));
    for (l, c, victim) in [(lv, &victim_c, true), (la, &attacker_c, false)] {
        l.set_nonblocking(true)?;
        let l = rescon_rt::TcpListener::from_std(l, c)?;
        let (served, absorbed, c2) = (served.clone(), absorbed.clone(), c.clone());
        rt.spawn_in(c, async move {
            while let Ok((s, _)) = l.accept().await {
                let _ = s.set_nodelay(true);
                let (served, absorbed) = (served.clone(), absorbed.clone());
                rescon_rt::spawn_in(&c2, async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let reply = vec![b'r'; RESPONSE];
                    loop {
                        if victim {
                            if s.read_exact(&mut buf[..REQUEST]).await.is_err()
                                || s.write_all(&reply).await.is_err()
                            {
                                return;
                            }
                            served.fetch_add(1, Ordering::Relaxed);
                        } else {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    absorbed.fetch_add(n as u64, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                });
            }
        });
    }
    let throttled0 = attacker_c.usage_subtree().throttled_ns;
    let polled0 = attacker_c.usage_subtree().cpu_ns;
    let net0 = (
        victim_c.usage_subtree().kernel_net_ns,
        attacker_c.usage_subtree().kernel_net_ns,
    );
    let duration = Duration::from_secs_f64(a.duration);
    let idle0 = cpu_idle_ns(server_cpu)?;
    let t0 = Instant::now();
    let end = t0 + duration;
    let mut handles = Vec::new();
    for _ in 0..a.clients {
        let stop = stop.clone();
        handles.push((
            true,
            tb.client.spawn("victim", move || {
                client(victim_addr, VICTIM, end, &stop, None)
            })?,
        ));
    }
    if setting.attack {
        for _ in 0..a.attackers {
            let stop = stop.clone();
            let load = Load {
                victim: false,
                small: a.small,
                rate: a.attack_rate,
                background: true,
            };
            handles.push((
                false,
                tb.attacker.spawn("attacker", move || {
                    client(attacker_addr, load, end, &stop, None)
                })?,
            ));
        }
    }
    let (mut reqs, mut writes) = (0u64, 0u64);
    for (victim, h) in handles {
        // An attacker's connection may be cut by the end of the run while its window is
        // closed: what it wrote before counts, an error does not fail the run.
        match h.join().map_err(|_| anyhow::anyhow!("client panicked"))? {
            Ok(n) if victim => reqs += n,
            Ok(n) => writes += n,
            Err(e) if victim => return Err(e),
            Err(_) => {}
        }
    }
    let elapsed = t0.elapsed();
    let secs = elapsed.as_secs_f64();
    let idle = cpu_idle_ns(server_cpu)?.saturating_sub(idle0);
    let busy = (elapsed.as_nanos() as u64).saturating_sub(idle);
    rt.flush_usage();
    let ms = |ns: u64| ns as f64 / 1e6 / secs;
    let run = IsoRun {
        setting,
        victim_req_per_s: reqs as f64 / secs,
        attacker_writes_per_s: writes as f64 / secs,
        attacker_bytes_per_s: absorbed.load(Ordering::Relaxed) as f64 / secs,
        victim_net_ms_per_s: ms(victim_c.usage_subtree().kernel_net_ns - net0.0),
        attacker_net_ms_per_s: if setting.containers {
            ms(attacker_c.usage_subtree().kernel_net_ns - net0.1)
        } else {
            0.0
        },
        attacker_throttled_ms_per_s: ms(attacker_c.usage_subtree().throttled_ns - throttled0),
        attacker_polled_ms_per_s: ms(attacker_c.usage_subtree().cpu_ns.saturating_sub(polled0)),
        server_busy_ms_per_s: ms(busy),
    };
    drop(rt);
    sampler_stop.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        s.join()
            .map_err(|_| anyhow::anyhow!("sampler panicked"))??;
    }
    Ok(run)
}
