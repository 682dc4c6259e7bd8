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
//! `MIMALLOC_PURGE_DELAY` is in the environment (the servers inherit it).
//!
//! The container figure is measured in this process: the resident growth of making
//! `--containers` children of one container, kept by their handles, over their number (the
//! node, its usage counters and attributes, its name and its slot in the registry's
//! namespace). The human output adds what a container costs with a task bound to it parked
//! on a rescon-rt worker (the worker's run-queue slot and policy node, the task).

use crate::paper::servers::{self, FILE_1K, Kind, Site};
use anyhow::{Context, Result, bail};
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
            println!("{}", container_bytes(args.containers)?);
            return Ok(());
        }
        Some("tasks") => {
            println!("{}", container_with_task_bytes(args.containers)?);
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
                json!({"name": k.name(), "case": c.key(), "bytes_per_conn": m.bytes_per_conn})
            })
            .collect();
        let out = json!({"n": n, "servers": servers, "container_bytes": model});
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
    println!(
        "\nA container in the model: {model:.0} bytes ({} made); with a parked task bound to it on a rescon-rt worker: {with_task:.0} bytes.",
        args.containers
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
    }))
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

/// Runs `--probe what` in a child process of this program and returns its figure.
fn probe(what: &str, containers: usize) -> Result<f64> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["memory", "--probe", what, "--containers"])
        .arg(containers.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running the {what} probe"))?;
    if !out.status.success() {
        bail!("the {what} probe failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("the {what} probe's output"))
}

/// Resident bytes per container of `m` children of one container, kept by their handles.
fn container_bytes(m: usize) -> Result<f64> {
    let registry = rescon::Registry::new();
    let class = registry
        .root()
        .create_child("clients", rescon::Attributes::default())?;
    let mut kept = Vec::with_capacity(m);
    let before = rss("self")?;
    for i in 0..m {
        kept.push(class.create_child(&format!("conn-{i}"), rescon::Attributes::default())?);
    }
    let after = rss("self")?;
    Ok((after as f64 - before as f64) / m.max(1) as f64)
}

/// Resident bytes per container with a task bound to it parked on a rescon-rt worker.
fn container_with_task_bytes(m: usize) -> Result<f64> {
    let registry = rescon::Registry::new();
    let class = registry
        .root()
        .create_child("clients", rescon::Attributes::default())?;
    let rt = rescon_rt::Builder::new(&registry).workers(1).build()?;
    let per = rt.block_on(async move {
        let before = rss("self")?;
        for i in 0..m {
            let c = class.create_child(&format!("conn-{i}"), rescon::Attributes::default())?;
            drop(rescon_rt::spawn_in(&c, std::future::pending::<()>()));
        }
        // Time for the worker to place them all.
        rescon_rt::sleep(Duration::from_millis(500)).await;
        let after = rss("self")?;
        anyhow::Ok((after as f64 - before as f64) / m.max(1) as f64)
    })?;
    drop(rt);
    Ok(per)
}
