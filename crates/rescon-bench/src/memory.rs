//! `memory`: what an idle connection costs each server, in resident memory, and what a
//! container costs in the model.
//!
//! For each server (rescon-httpd, the same binary with `--no-containers`, nginx, hyper on
//! tokio; one worker each, pinned to the last CPU as in `paper`) and each case, a fresh
//! server is started and warmed up (a few connections and requests, then closed); the run
//! reads its resident set (`/proc/PID/statm`), opens N connections from loopback, waits
//! until the server holds them all (its descriptors in `/proc/PID/fd`), leaves them alone
//! for 2 s (rescon-httpd parks a kept-alive connection after `timeouts.park` of quiet, 100 ms
//! by default) and until its
//! resident set has settled, and reads it again: the difference over N is the figure. The cases:
//! - `keepalive`: each connection sends one request for the 1 KB file, reads the whole
//!   response, and stays open;
//! - `silent`: each connection is opened and never sends a byte;
//! - `tls-keepalive` (when `openssl` made the run a certificate): as `keepalive`, over TLS
//!   (a full handshake, HTTP/1.1 by ALPN) on the server's HTTPS port.
//!
//! Every server is given a 300 s wait for a request (nginx's `client_header_timeout` and
//! `keepalive_timeout`, rescon-httpd's `timeouts.header` and `timeouts.keep_alive`, hyper's
//! header read timeout), so no connection is closed while the run measures. After the
//! measurement one connection in a hundred sends a request and must get the file back: the
//! figures are of connections that still work. For nginx the worker process is measured (the
//! master only starts it).
//!
//! What a server frees is not always given back to the system at once: mimalloc (rescon-httpd's
//! allocator) purges freed pages after a delay, on the thread's later allocations, so a server
//! that went idle right after its connections parked would still hold what they used while
//! busy. rescon-httpd sets that delay to zero itself (`rescon_httpd::alloc`), unless
//! `MIMALLOC_PURGE_DELAY` is in the environment (the servers inherit it). Nor is a purged
//! page given back inside a transparent huge page: rescon-httpd turns them off for itself,
//! unless `MIMALLOC_ALLOW_THP` is in the environment (with them, it measured about 1,550
//! bytes per idle connection instead of about 800).
//!
//! The container figure is measured in this process: the resident growth of making
//! `--containers` children of one container, kept by their handles, over their number (the
//! node, its usage counters and attributes, its name and its slot in the registry's
//! namespace). The human output adds what a container costs with a task bound to it parked
//! on a rescon-rt worker (the worker's run-queue slot and policy node, the task).

use crate::paper::servers::{self, FILE_1K, Kind, Site};
use anyhow::{Context, Result, bail};
use rescon_httpd::alloc::HeapStats;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Idle connections per server and case.
    #[arg(long, short = 'n', default_value_t = 8000)]
    conns: usize,
    /// Print JSON: `{"n":N,"servers":[{"name":..,"case":"keepalive"|"silent",
    /// "bytes_per_conn":F}],"container_bytes":F}`.
    #[arg(long)]
    json: bool,
    /// Containers made for the per-container figure.
    #[arg(long, default_value_t = 100_000)]
    containers: usize,
    /// Only these servers: rescon, rescon_off, nginx, hyper_tokio (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Internal: measure one in-process figure (`containers` or `tasks`) in this process and
    /// print it. Each runs in a process of its own, since memory freed by one measurement
    /// stays resident in the allocator and would hide the next one's.
    #[arg(long, hide = true)]
    probe: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    KeepAlive,
    Silent,
    TlsKeepAlive,
}

impl Case {
    fn key(self) -> &'static str {
        match self {
            Case::KeepAlive => "keepalive",
            Case::Silent => "silent",
            Case::TlsKeepAlive => "tls-keepalive",
        }
    }
}

/// A client connection of the run.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &mut **t,
        }
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &t.sock,
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Descriptors the run keeps for itself beyond the connections (and each server beyond its
/// connections: listeners, epoll, logs, the admin socket).
const SPARE_FDS: u64 = 256;
/// How long the run leaves the connections alone before it reads the resident set: more than
/// rescon-httpd's default `timeouts.park`.
const PARK_WAIT: Duration = Duration::from_secs(2);
/// How long every server lets a connection wait for a request during the run.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

pub fn run(args: Args) -> Result<()> {
    match args.probe.as_deref() {
        Some("containers") => {
            let (rss, heap) = container_bytes(args.containers)?;
            println!("{rss} {heap}");
            return Ok(());
        }
        Some("tasks") => {
            let (rss, heap) = container_with_task_bytes(args.containers)?;
            println!("{rss} {heap}");
            return Ok(());
        }
        Some(other) => bail!("unknown probe {other:?}"),
        None => {}
    }
    let n = fit_to_rlimit(args.conns)?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (server_cpu, load_cpu) = if cpus >= 2 {
        (Some(cpus - 1), Some(0))
    } else {
        (None, None)
    };
    if let Some(cpu) = load_cpu {
        rescon_bench::httpload::pin_to(cpu)?;
    }
    let scratch = std::env::temp_dir().join(format!("rescon-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(scratch.clone());
    let mut site = Site::create(&scratch, 100)?;
    site.idle_timeout = Some(IDLE_TIMEOUT);
    site.max_conns = n + 128;
    site.heap_stats = Some(scratch.join("heap.json"));

    let mut kinds = vec![Kind::Rescon, Kind::ResconOff];
    if servers::nginx_path().is_some() {
        kinds.push(Kind::Nginx);
    } else {
        eprintln!("nginx is not installed: its rows are missing (apt-get install nginx-light)");
    }
    kinds.push(Kind::HyperTokio);
    if !args.only.is_empty() {
        kinds.retain(|k| args.only.iter().any(|o| o == k.key()));
    }

    let mut cases = vec![Case::KeepAlive, Case::Silent];
    if site.tls {
        cases.push(Case::TlsKeepAlive);
    } else {
        eprintln!(
            "no certificate for the run (openssl failed?): the tls-keepalive case is left out"
        );
    }
    let mut rows = Vec::new();
    for &kind in &kinds {
        for &case in &cases {
            eprintln!("{}, {}: opening {n} connections", kind.name(), case.key());
            let Some(m) = measure(kind, case, &site, n, server_cpu)
                .with_context(|| format!("{}, {} connections", kind.name(), case.key()))?
            else {
                eprintln!(
                    "{} serves no TLS in this run: no {} row",
                    kind.name(),
                    case.key()
                );
                continue;
            };
            eprintln!(
                "{}, {}: {} connections held, {:.0} bytes each",
                kind.name(),
                case.key(),
                m.held,
                m.bytes_per_conn
            );
            rows.push((kind, case, m));
        }
    }
    let model = probe("containers", args.containers)?;
    let with_task = probe("tasks", args.containers)?;

    if args.json {
        let servers: Vec<_> = rows
            .iter()
            .map(|(k, c, m)| {
                let mut row =
                    json!({"name": k.name(), "case": c.key(), "bytes_per_conn": m.bytes_per_conn});
                if let Some(h) = m.heap_json() {
                    row["heap"] = h;
                }
                row
            })
            .collect();
        let out = json!({"n": n, "servers": servers, "container_bytes": model.0,
            "container_heap_bytes": model.1, "container_with_task_bytes": with_task.0,
            "container_with_task_heap_bytes": with_task.1});
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!(
        "Resident bytes per idle connection, {n} connections per server and case (one worker each{}):\n",
        server_cpu.map_or(String::new(), |c| format!(", pinned to CPU {c}"))
    );
    println!(
        "{:<30} {:>12} {:>12} {:>14}",
        "server", "keepalive", "silent", "tls-keepalive"
    );
    for &kind in &kinds {
        let get = |case| {
            rows.iter()
                .find(|(k, c, _)| *k == kind && *c == case)
                .map_or("-".to_string(), |(_, _, m)| {
                    format!("{:.0}", m.bytes_per_conn)
                })
        };
        println!(
            "{:<30} {:>12} {:>12} {:>14}",
            kind.name(),
            get(Case::KeepAlive),
            get(Case::Silent),
            get(Case::TlsKeepAlive)
        );
    }
    let heap_rows: Vec<_> = rows
        .iter()
        .filter_map(|(k, c, m)| Some((k, c, m.heap_text()?)))
        .collect();
    if !heap_rows.is_empty() {
        println!("\nrescon-httpd's counted heap, per connection:");
        for (k, c, text) in heap_rows {
            println!("  {}, {}: {text}", k.name(), c.key());
        }
    }
    println!(
        "\nA container in the model: {:.0} bytes resident, {:.0} B of live heap ({} made); with a parked task bound to it on a rescon-rt worker: {:.0} bytes resident, {:.0} B of live heap.",
        model.0, model.1, args.containers, with_task.0, with_task.1
    );
    Ok(())
}

/// Raises this process's descriptor limit (the servers inherit it) to what `n` connections
/// need, up to the hard limit; returns how many connections fit.
fn fit_to_rlimit(n: usize) -> Result<usize> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    let want = (n as u64).saturating_add(SPARE_FDS);
    let soft = want.min(hard);
    if lim.current.is_some_and(|c| c < soft) {
        setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(soft),
                maximum: lim.maximum,
            },
        )
        .context("raising RLIMIT_NOFILE")?;
    }
    let fit = hard.saturating_sub(SPARE_FDS).min(n as u64) as usize;
    if fit < n {
        eprintln!(
            "RLIMIT_NOFILE's hard limit is {hard}: this run can open {fit} connections per server, not {n}; raise it (ulimit -Hn as root, or LimitNOFILE=) to measure {n}"
        );
    }
    if fit == 0 {
        bail!("RLIMIT_NOFILE ({hard}) leaves no descriptors for connections");
    }
    Ok(fit)
}

struct Measured {
    held: usize,
    bytes_per_conn: f64,
    /// rescon-httpd's counted heap, from before the connections to after (see
    /// `rescon_httpd::alloc`).
    heap: Option<HeapStats>,
}

impl Measured {
    /// The heap's part, per connection, as JSON.
    fn heap_json(&self) -> Option<serde_json::Value> {
        let h = self.heap.as_ref()?;
        let per = |v: i64| v as f64 / self.held as f64;
        let classes: Vec<_> = h
            .classes
            .iter()
            .filter(|c| per(c.blocks).abs() >= 0.01)
            .map(|c| {
                json!({"size_up_to": c.size_up_to, "blocks_per_conn": per(c.blocks),
                    "bytes_per_conn": per(c.bytes), "made_per_conn": per(c.made as i64)})
            })
            .collect();
        Some(json!({
            "live_bytes_per_conn": per(h.live_bytes),
            "usable_bytes_per_conn": per(h.usable_bytes),
            "blocks_per_conn": per(h.live_blocks),
            "committed_bytes_per_conn": h.committed_bytes as i64 as f64 / self.held as f64,
            "classes": classes,
        }))
    }

    /// The heap's part, per connection, for people.
    fn heap_text(&self) -> Option<String> {
        let h = self.heap.as_ref()?;
        let per = |v: i64| v as f64 / self.held as f64;
        let mut out = format!(
            "live heap {:.0} B in {:.2} blocks (in the allocator's size classes: {:.0} B); mimalloc's committed memory grew {:.0} B",
            per(h.live_bytes),
            per(h.live_blocks),
            per(h.usable_bytes),
            h.committed_bytes as i64 as f64 / self.held as f64,
        );
        let mut classes: Vec<_> = h
            .classes
            .iter()
            .filter(|c| per(c.blocks).abs() >= 0.01)
            .collect();
        classes.sort_by_key(|c| std::cmp::Reverse(c.bytes.abs()));
        for c in classes {
            out.push_str(&format!(
                "\n      {:>+8.2} blocks of <= {:>5} B: {:>+7.0} B ({:.2} made in the class)",
                per(c.blocks),
                c.size_up_to,
                per(c.bytes),
                per(c.made as i64)
            ));
        }
        Some(out)
    }
}

/// `None`: the case is over TLS and the server has no HTTPS port in this run.
fn measure(
    kind: Kind,
    case: Case,
    site: &Site,
    n: usize,
    server_cpu: Option<usize>,
) -> Result<Option<Measured>> {
    let server = servers::start(kind, site, server_cpu)?;
    let pid = measured_pid(kind, server.pid)?;
    let heap_file = site.heap_stats.as_ref().filter(|_| counts_heap(kind));
    let tls = match (case, server.tls) {
        (Case::TlsKeepAlive, None) => return Ok(None),
        (Case::TlsKeepAlive, Some(addr)) => Some((
            addr,
            rescon_bench::tlsload::client_config(&["http/1.1"], false),
        )),
        _ => None,
    };
    let open = |addr: SocketAddr| -> Result<Conn> {
        let s = connect(addr)?;
        match &tls {
            None => Ok(Conn::Plain(s)),
            Some((_, config)) => {
                let c = rustls::ClientConnection::new(
                    config.clone(),
                    rustls::pki_types::ServerName::try_from("localhost")?,
                )?;
                let mut t = rustls::StreamOwned::new(c, s);
                while t.conn.is_handshaking() {
                    t.conn
                        .complete_io(&mut t.sock)
                        .context("the TLS handshake")?;
                }
                Ok(Conn::Tls(Box::new(t)))
            }
        }
    };
    let addr = tls.as_ref().map_or(server.addr, |(a, _)| *a);
    // Warm up: what a server makes once (caches, pools, the runtime's first allocations)
    // is not the connections' cost.
    for _ in 0..16 {
        let mut s = open(addr)?;
        for _ in 0..8 {
            request(s.io())?;
        }
        close(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    // The first snapshot makes the server's snapshot thread's own heap: before the reading.
    let heap0 = heap_file
        .map(|f| heap_snapshot(server.pid, f))
        .transpose()?;
    let fds0 = fd_count(pid)?;
    let rss0 = settled_rss(pid)?;

    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let opened = open(addr).and_then(|mut s| {
            if case != Case::Silent {
                request(s.io())?;
            }
            Ok(s)
        });
        match opened {
            Ok(s) => conns.push(s),
            Err(e) => {
                eprintln!("could open {i} connections of {n}: {e:#}");
                break;
            }
        }
    }
    if conns.is_empty() {
        bail!("no connection could be opened");
    }
    // Wait until the server holds them all (it accepts on its own time).
    let t = Instant::now();
    let mut held = fd_count(pid)?.saturating_sub(fds0);
    while held < conns.len() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
        held = fd_count(pid)?.saturating_sub(fds0);
    }
    if held < conns.len() {
        eprintln!(
            "{} holds {held} of the {} connections opened after 30 s; measuring those",
            kind.name(),
            conns.len()
        );
    }
    let held = held.min(conns.len());
    if held == 0 {
        bail!("the server holds none of the connections");
    }
    // Idle means idle for a while: rescon-httpd parks a kept-alive connection after
    // `timeouts.park` (100 ms by default) of quiet, so the last ones answered are given more.
    std::thread::sleep(PARK_WAIT);
    let rss1 = settled_rss(pid)?;
    let heap = match (heap_file, heap0) {
        (Some(f), Some(h0)) => Some(heap_snapshot(server.pid, f)?.since(&h0)),
        _ => None,
    };

    // The connections still work: one in a hundred asks for the file.
    let step = (conns.len() / 100).max(1);
    for (i, s) in conns.iter_mut().enumerate().step_by(step) {
        request(s.io()).with_context(|| format!("connection {i}, after the measurement"))?;
    }
    for s in conns {
        close(s);
    }
    Ok(Some(Measured {
        held,
        bytes_per_conn: (rss1 as f64 - rss0 as f64) / held as f64,
        heap,
    }))
}

/// Whether the server counts its heap when asked (rescon-httpd, on `Counting`).
fn counts_heap(kind: Kind) -> bool {
    matches!(kind, Kind::Rescon | Kind::ResconOff)
}

/// Asks the server (`SIGUSR2`) for a snapshot of its counted heap and reads it.
fn heap_snapshot(pid: u32, file: &std::path::Path) -> Result<HeapStats> {
    let _ = std::fs::remove_file(file);
    let pid = rustix::process::Pid::from_raw(pid as i32).context("a server pid of 0")?;
    rustix::process::kill_process(pid, rustix::process::Signal::USR2)
        .context("asking the server for a heap snapshot (SIGUSR2)")?;
    let t = Instant::now();
    loop {
        match std::fs::read(file) {
            Ok(b) => {
                let h: HeapStats = serde_json::from_slice(&b)
                    .with_context(|| format!("reading the heap snapshot {}", file.display()))?;
                if h.allocations == 0 {
                    bail!(
                        "the server counted no allocation: is its global allocator rescon_httpd::alloc::Counting?"
                    );
                }
                return Ok(h);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(format!("reading {}", file.display())),
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!(
                "the server wrote no heap snapshot to {} within 10 s of SIGUSR2",
                file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The process whose memory holds the connections: nginx's worker, else the server itself.
fn measured_pid(kind: Kind, pid: u32) -> Result<u32> {
    if kind != Kind::Nginx {
        return Ok(pid);
    }
    let t = Instant::now();
    loop {
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if servers::proc_stat(child).is_ok_and(|st| st.ppid == pid) {
                return Ok(child);
            }
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!("nginx (pid {pid}) started no worker process within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Closes with a reset (`SO_LINGER` 0): no TIME_WAIT left to use up loopback's ports.
fn close(s: Conn) {
    let _ = socket2::SockRef::from(s.tcp()).set_linger(Some(Duration::ZERO));
}

/// One request for the 1 KB file on `s`, its whole response read.
fn request(s: &mut dyn ReadWrite) -> Result<()> {
    write!(
        s,
        "GET {FILE_1K} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: rescon-bench\r\n\r\n"
    )?;
    s.flush()?;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let k = s.read(&mut chunk).context("reading the response")?;
        if k == 0 {
            bail!("the server closed the connection before answering");
        }
        buf.extend_from_slice(&chunk[..k]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = resp.parse(&buf)? else {
            continue;
        };
        if resp.code != Some(200) {
            bail!("the server answered {:?}", resp.code);
        }
        let len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .context("a response without Content-Length")?;
        if buf.len() >= head + len {
            return Ok(());
        }
    }
}

fn fd_count(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count())
}

/// Resident bytes of `pid` (`/proc/PID/statm`).
fn rss(pid: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .context("short statm")?
        .parse()?;
    Ok(pages * rustix::param::page_size() as u64)
}

/// The resident set once it stops moving: two readings 100 ms apart within 16 KiB (at most
/// 5 s).
fn settled_rss(pid: u32) -> Result<u64> {
    let pid = pid.to_string();
    let t = Instant::now();
    let mut last = rss(&pid)?;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = rss(&pid)?;
        if now.abs_diff(last) <= 16 * 1024 || t.elapsed() > Duration::from_secs(5) {
            return Ok(now);
        }
        last = now;
    }
}

/// Runs `--probe what` in a child process of this program and returns its figures: resident
/// bytes and live heap bytes per container.
fn probe(what: &str, containers: usize) -> Result<(f64, f64)> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["memory", "--probe", what, "--containers"])
        .arg(containers.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running the {what} probe"))?;
    if !out.status.success() {
        bail!("the {what} probe failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.split_whitespace().map(str::parse::<f64>);
    match (f.next(), f.next()) {
        (Some(Ok(rss)), Some(Ok(heap))) => Ok((rss, heap)),
        _ => bail!("the {what} probe's output {text:?} is not two figures"),
    }
}

/// Counts the heap from now on (a probe's process: nothing allocated before matters), and
/// reads the live bytes.
fn live_heap() -> i64 {
    rescon_httpd::alloc::start_counting();
    HeapStats::now().live_bytes
}

/// Resident and live heap bytes per container of `m` children of one container, kept by
/// their handles (the handles' vector, the harness's, is made and touched before).
fn container_bytes(m: usize) -> Result<(f64, f64)> {
    let registry = rescon::Registry::new();
    let class = registry
        .root()
        .create_child("clients", rescon::Attributes::default())?;
    let mut kept: Vec<Option<rescon::Container>> = Vec::new();
    kept.resize_with(m, || None);
    let heap0 = live_heap();
    let before = rss("self")?;
    for (i, k) in kept.iter_mut().enumerate() {
        *k = Some(class.create_child(&format!("conn-{i}"), rescon::Attributes::default())?);
    }
    let after = rss("self")?;
    let heap = HeapStats::now().live_bytes - heap0;
    let per = m.max(1) as f64;
    Ok(((after as f64 - before as f64) / per, heap as f64 / per))
}

/// Resident and live heap bytes per container with a task bound to it parked on a rescon-rt
/// worker.
fn container_with_task_bytes(m: usize) -> Result<(f64, f64)> {
    let registry = rescon::Registry::new();
    let class = registry
        .root()
        .create_child("clients", rescon::Attributes::default())?;
    let rt = rescon_rt::Builder::new(&registry).workers(1).build()?;
    let per = rt.block_on(async move {
        let heap0 = live_heap();
        let before = rss("self")?;
        for i in 0..m {
            let c = class.create_child(&format!("conn-{i}"), rescon::Attributes::default())?;
            drop(rescon_rt::spawn_in(&c, std::future::pending::<()>()));
        }
        // Time for the worker to place them all.
        rescon_rt::sleep(Duration::from_millis(500)).await;
        let after = rss("self")?;
        let heap = HeapStats::now().live_bytes - heap0;
        let per = m.max(1) as f64;
        anyhow::Ok(((after as f64 - before as f64) / per, heap as f64 / per))
    })?;
    drop(rt);
    Ok(per)
}
