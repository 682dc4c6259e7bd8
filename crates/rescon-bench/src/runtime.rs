//! `runtime`: rescon-rt beside tokio, measured in one run on the same machine and load.
//!
//! Each case runs its server side on worker threads of each runtime (a multi-threaded tokio
//! runtime, a rescon-rt runtime, with the same number of workers), and its load, where there
//! is one, from the same client for both: a tokio current-thread runtime on its own thread, so
//! the load generator is identical and only the runtime under test differs. Traffic stays on
//! 127.0.0.1; every case is bounded in time.
//!
//! The two runtimes are measured in pairs taken back to back, and the ratio reported is the
//! median of the pairs' ratios, with a 95% confidence interval. On a shared VM the machine's
//! speed moves by tens of percent over seconds, so two figures taken seconds apart compare
//! the machine as much as the runtimes. For the load cases both servers are up at once and the
//! client's connections to them take turns in windows of a quarter second, in the order ABBA
//! ABBA..; spawn and yield pair a run of each per round.
//!
//! The interval treats the pairs as independent draws. They are not quite: the machine's
//! state drifts over minutes too, and two runs of the whole benchmark can give intervals
//! that do not overlap (measured for `tcp_echo_64_per_core`: 0.85-1.00 in one run, 1.02-1.10
//! in another, same binary). It says how well one run pinned its median, not how the next
//! run will come out; compare runs before trusting a difference of a few percent.
//!
//! - `spawn_join`: a task spawns a trivial task and awaits it, ns per pair.
//! - `yield`: two tasks on one worker each yield in a loop, ns per yield.
//! - `tcp_echo_64`: 64 connections each echo 1 KiB messages, messages/s.
//! - `http_keepalive`: hyper HTTP/1.1 serving a 1 KiB body, 50 keep-alive connections, req/s.
//!
//! These four give each runtime one worker: the cost of a worker thread, with a core left for
//! the client on a two-core machine. Two more run the load cases as each runtime is built by
//! default, one worker per core, sharing the cores with the client:
//!
//! - `tcp_echo_64_per_core`, `http_keepalive_per_core`.
//!
//! There the designs part: tokio's workers share one I/O driver and steal each other's tasks,
//! waking each other through futexes; a rescon-rt worker has its own epoll and keeps its
//! connections, so its workers do not hand work to each other.
//!
//! And one runs the paper's model, a container per connection as rescon-httpd does, against
//! the same tokio server (tokio has no containers): what charging and scheduling each
//! connection separately costs, one worker each.
//!
//! - `http_container_per_conn`.
//!
//! The last measures latency, not throughput: a server's worker sharing its core with a
//! CPU-bound thread. A worker that yields its CPU before it sleeps (`Builder::yield_before_sleep`)
//! would hand that thread whole time slices while its events wait; rescon-rt's worker stops
//! yielding when its yields take that long, and this case checks that it then answers as
//! promptly as tokio's, which sleeps in `epoll_wait` and is woken by the kernel.
//!
//! - `rtt_beside_busy_loop`: each runtime's one worker and a spinning thread on one CPU, a
//!   blocking client on another making 64-byte round trips one at a time on one connection,
//!   the 99th percentile round trip of each window, microseconds (lower is better).
//!
//! The load cases also report the server's CPU time per operation: what the server's threads
//! ran over the measured window (from their `schedstat`, exact), divided by the operations
//! done; and how many times per operation a server thread was switched onto a CPU (from the
//! same file), which is where the designs differ with a worker per core. With one worker on a
//! two-core machine the server's thread is busy all the time and the client's nearly so
//! (measured: 99% and 89-92% of a CPU), so the throughputs of the two runtimes stay close
//! together; the CPU per operation is the server's own cost, with the kernel's work for its
//! sockets in it (above 80% of it, measured with `perf`).

use rescon::{Attributes, Registry};
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds of load for each throughput case, runtime and round.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Rounds of each case: fresh servers (and for spawn and yield, a fresh run) each round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Milliseconds of one load window: within a round the two servers take turns, a window
    /// each.
    #[arg(long, default_value_t = 250)]
    window_ms: u64,
    /// Cases to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_parser = CASES)]
    cases: Vec<String>,
}

const CASES: [&str; 8] = [
    "spawn_join",
    "yield",
    "tcp_echo_64",
    "http_keepalive",
    "tcp_echo_64_per_core",
    "http_keepalive_per_core",
    "http_container_per_conn",
    "rtt_beside_busy_loop",
];

#[derive(Serialize)]
struct Case {
    name: &'static str,
    unit: &'static str,
    /// Worker threads of each runtime.
    workers: usize,
    rescon: f64,
    tokio: f64,
    /// The server threads' CPU time per operation, microseconds (load cases only).
    #[serde(skip_serializing_if = "Option::is_none")]
    rescon_server_cpu_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokio_server_cpu_us: Option<f64>,
    /// How many times per operation a server thread was switched onto a CPU (load cases
    /// only): a thread that sleeps and is woken for every few requests pays a context switch
    /// and a wakeup each time.
    #[serde(skip_serializing_if = "Option::is_none")]
    rescon_server_switches: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokio_server_switches: Option<f64>,
    /// rescon-rt relative to tokio, above 1 is better: the median of `pair_ratios`.
    ratio: f64,
    /// A 95% confidence interval for that median (from the order statistics of
    /// `pair_ratios`; with few pairs, their whole range).
    ratio_ci95: [f64; 2],
    /// The ratio of each pair of measurements taken back to back, one of each runtime: for
    /// load cases a pair of windows next to each other, for the others a round. Taken so
    /// close together, each is little moved by the machine's speed changing (on a shared VM
    /// it moves by tens of percent over seconds), and their spread says how far to trust
    /// the ratio.
    pair_ratios: Vec<f64>,
}

/// How much better rescon-rt did than tokio: for times lower is better, for rates higher.
fn better(unit: &str, rescon: f64, tokio: f64) -> f64 {
    if unit == "ns" || unit == RTT_UNIT {
        tokio / rescon
    } else {
        rescon / tokio
    }
}

/// One measurement of a case on one runtime (a round, or for load cases a window): its
/// figure, and for load cases the server's CPU time and switches per operation.
#[derive(Clone, Copy)]
struct Sample {
    value: f64,
    server_cpu_us: Option<f64>,
    server_switches: Option<f64>,
}

impl From<f64> for Sample {
    fn from(value: f64) -> Sample {
        Sample {
            value,
            server_cpu_us: None,
            server_switches: None,
        }
    }
}

/// What the threads `tids` of this process have run, together, from their `schedstat`: CPU
/// time (ns) and the number of times they were switched onto a CPU. `None` if one cannot be
/// read.
fn threads_sched(tids: &[i32]) -> Option<(u64, u64)> {
    tids.iter()
        .map(|t| crate::schedstat(&format!("/proc/self/task/{t}/schedstat")))
        .try_fold((0, 0), |(r, n), x| x.map(|(a, b)| (r + a, n + b)))
}

#[derive(Serialize)]
struct Report {
    cases: Vec<Case>,
}

const BODY: &[u8; 1024] = &[b'x'; 1024];

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A 95% confidence interval for the median of `v`: how many values fall below the median is
/// binomial (n, 1/2), so with the normal approximation the interval runs from the value of
/// rank n/2 - 0.98 sqrt(n) to that of rank 1 + n/2 + 0.98 sqrt(n) (ranks from 1). No
/// assumption on how the values are distributed; with few values it is their whole range.
pub(crate) fn median_ci95(mut v: Vec<f64>) -> [f64; 2] {
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let half = 0.98 * n.sqrt();
    let lo = ((n / 2.0 - half).floor().max(1.0) as usize).min(v.len());
    let hi = ((1.0 + n / 2.0 + half).ceil() as usize).clamp(1, v.len());
    [v[lo - 1], v[hi - 1]]
}

fn rescon_rt(registry: &Registry, workers: usize) -> rescon_rt::Runtime {
    rescon_rt_pinned(registry, workers, None)
}

/// A rescon-rt runtime whose workers run on CPU `pin`, if given.
fn rescon_rt_pinned(registry: &Registry, workers: usize, pin: Option<usize>) -> rescon_rt::Runtime {
    let mut b = rescon_rt::Builder::new(registry).workers(workers);
    if let Some(cpu) = pin {
        b = b.on_worker_start(move |_| {
            rescon_bench::httpload::pin_to(cpu).expect("pinning a rescon-rt worker");
        });
    }
    b.build().expect("rescon-rt runtime")
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio_rt_tids(1).0
}

/// A multi-threaded tokio runtime with `workers` workers, and the ids of the threads it starts
/// (its workers, and any blocking thread), filled in as they start.
fn tokio_rt_tids(workers: usize) -> (tokio::runtime::Runtime, Arc<Mutex<Vec<i32>>>) {
    tokio_rt_pinned(workers, None)
}

/// [`tokio_rt_tids`], with the runtime's threads on CPU `pin`, if given.
fn tokio_rt_pinned(
    workers: usize,
    pin: Option<usize>,
) -> (tokio::runtime::Runtime, Arc<Mutex<Vec<i32>>>) {
    let tids = Arc::new(Mutex::new(Vec::new()));
    let t2 = tids.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .on_thread_start(move || {
            if let Some(cpu) = pin {
                rescon_bench::httpload::pin_to(cpu).expect("pinning a tokio worker");
            }
            let tid = rustix::thread::gettid().as_raw_nonzero().get();
            t2.lock().expect("tids").push(tid);
        })
        .build()
        .expect("tokio runtime");
    (rt, tids)
}

// ---- spawn and join ----

fn spawn_join_rescon(n: u64) -> f64 {
    let registry = Registry::new();
    let rt = rescon_rt(&registry, 1);
    let c = registry
        .root()
        .create_child("bench", Attributes::default())
        .unwrap();
    rt.block_on(rt.spawn_in(&c, async move {
        let t = Instant::now();
        for i in 0..n {
            let v = rescon_rt::spawn(async move { i }).await.unwrap();
            std::hint::black_box(v);
        }
        t.elapsed().as_nanos() as f64 / n as f64
    }))
    .unwrap()
}

fn spawn_join_tokio(n: u64) -> f64 {
    let rt = tokio_rt();
    rt.block_on(async move {
        tokio::spawn(async move {
            let t = Instant::now();
            for i in 0..n {
                let v = tokio::spawn(async move { i }).await.unwrap();
                std::hint::black_box(v);
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .await
        .unwrap()
    })
}

// ---- yield ping-pong ----

fn yield_rescon(n: u64) -> f64 {
    let registry = Registry::new();
    let rt = rescon_rt(&registry, 1);
    let c = registry
        .root()
        .create_child("bench", Attributes::default())
        .unwrap();
    rt.block_on(rt.spawn_in(&c, async move {
        let t = Instant::now();
        let a = rescon_rt::spawn(async move {
            for _ in 0..n {
                rescon_rt::yield_now().await;
            }
        });
        let b = rescon_rt::spawn(async move {
            for _ in 0..n {
                rescon_rt::yield_now().await;
            }
        });
        a.await.unwrap();
        b.await.unwrap();
        t.elapsed().as_nanos() as f64 / (2 * n) as f64
    }))
    .unwrap()
}

fn yield_tokio(n: u64) -> f64 {
    let rt = tokio_rt();
    rt.block_on(async move {
        tokio::spawn(async move {
            let t = Instant::now();
            let a = tokio::spawn(async move {
                for _ in 0..n {
                    tokio::task::yield_now().await;
                }
            });
            let b = tokio::spawn(async move {
                for _ in 0..n {
                    tokio::task::yield_now().await;
                }
            });
            a.await.unwrap();
            b.await.unwrap();
            t.elapsed().as_nanos() as f64 / (2 * n) as f64
        })
        .await
        .unwrap()
    })
}

// ---- the servers ----

/// A server under test, listening on `addr`, with the ids of its threads (filled in as they
/// start). Dropping it stops its runtime.
struct Server {
    addr: SocketAddr,
    tids: Arc<Mutex<Vec<i32>>>,
    rt: ServerRt,
}

enum ServerRt {
    Rescon(#[allow(dead_code)] rescon_rt::Runtime),
    Tokio(Option<tokio::runtime::Runtime>),
}

impl Drop for Server {
    fn drop(&mut self) {
        if let ServerRt::Rescon(rt) = &self.rt {
            let moved: u64 = rt.handle().worker_moves().iter().map(|m| m.0).sum();
            if moved > 0 {
                eprintln!("runtime: rescon-rt's workers moved {moved} tasks between them");
            }
        }
        if let ServerRt::Tokio(rt) = &mut self.rt {
            if let Some(rt) = rt.take() {
                rt.shutdown_timeout(Duration::from_secs(1));
            }
        }
    }
}

fn rescon_server(rt: rescon_rt::Runtime, addr: SocketAddr) -> Server {
    let tids = Arc::new(Mutex::new(rt.handle().worker_tids()));
    Server {
        addr,
        tids,
        rt: ServerRt::Rescon(rt),
    }
}

fn echo_rescon(workers: usize, pin: Option<usize>) -> Server {
    let registry = Registry::new();
    let rt = rescon_rt_pinned(&registry, workers, pin);
    let web = registry
        .root()
        .create_child("echo", Attributes::default())
        .unwrap();
    let l = rt
        .block_on(async { rescon_rt::TcpListener::bind_in("127.0.0.1:0".parse().unwrap(), &web) })
        .expect("bind");
    let addr = l.local_addr().unwrap();
    let w2 = web.clone();
    rt.spawn_in(&web, async move {
        while let Ok((conn, _)) = l.accept().await {
            rescon_rt::spawn_in(&w2, async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    rescon_server(rt, addr)
}

fn echo_tokio(workers: usize, pin: Option<usize>) -> Server {
    let (rt, tids) = tokio_rt_pinned(workers, pin);
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = l.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((mut conn, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Server {
        addr,
        tids,
        rt: ServerRt::Tokio(Some(rt)),
    }
}

async fn hello(
    _req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<hyper::body::Bytes>>, Infallible> {
    Ok(hyper::Response::new(http_body_util::Full::new(
        hyper::body::Bytes::from_static(BODY),
    )))
}

/// The hyper server on rescon-rt; with `per_conn`, each connection runs in a container of its
/// own under the listener's, as in rescon-httpd.
fn http_rescon(workers: usize, per_conn: bool) -> Server {
    let registry = Registry::new();
    let rt = rescon_rt(&registry, workers);
    let web = registry
        .root()
        .create_child("web", Attributes::default())
        .unwrap();
    let l = rt
        .block_on(async { rescon_rt::TcpListener::bind_in("127.0.0.1:0".parse().unwrap(), &web) })
        .expect("bind");
    let addr = l.local_addr().unwrap();
    let w2 = web.clone();
    rt.spawn_in(&web, async move {
        while let Ok((mut conn, _)) = l.accept().await {
            let _ = conn.set_nodelay(true);
            let c = if per_conn {
                let c = w2
                    .create_child("conn", Attributes::default())
                    .expect("connection container");
                conn.set_container(&c);
                c
            } else {
                w2.clone()
            };
            rescon_rt::spawn_in(&c, async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(rescon_rt::HyperTimer::current())
                    .serve_connection(conn, hyper::service::service_fn(hello))
                    .await;
            });
        }
    });
    rescon_server(rt, addr)
}

fn http_tokio(workers: usize) -> Server {
    let (rt, tids) = tokio_rt_tids(workers);
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = l.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((conn, _)) = l.accept().await {
            let _ = conn.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(conn),
                        hyper::service::service_fn(hello),
                    )
                    .await;
            });
        }
    });
    Server {
        addr,
        tids,
        rt: ServerRt::Tokio(Some(rt)),
    }
}

// ---- the client side, identical for both runtimes ----

/// `dur` of load for each server split into windows of about `window`: how many, and how long.
fn windows_of(dur: Duration, window: Duration) -> (u32, Duration) {
    let n = (dur.as_secs_f64() / window.as_secs_f64()).ceil().max(1.0) as u32;
    (n, dur / n)
}

/// The server whose turn window `w` is: 0 1 1 0 0 1 1 0 .. (ABBA).
fn abba(w: u32) -> usize {
    (w.div_ceil(2) % 2) as usize
}

/// How long a server's turn runs before its window opens: the other server's operations in
/// flight finish, and the connections that waited get going.
const SETTLE: Duration = Duration::from_millis(25);

/// Which server the client's connections may use: 0 (rescon-rt), 1 (tokio), or none.
const IDLE: u8 = 2;
const STOP: u8 = 3;

/// Loads both servers in turn from one client, a tokio current-thread runtime on its own
/// thread: `conns` connections to each, each doing `kind`'s operation in a loop while its
/// server's turn lasts (the other server's connections wait, idle). `dur` of load for each
/// server, in windows of about `window`, in the order ABBA ABBA.. so that a drift of the
/// machine's speed falls on both alike; the windows of each pair are next to each other.
/// Returns each server's windows: operations per second, and the CPU time and switches of the
/// server's threads per operation.
fn ab_load(
    servers: &[Server; 2],
    conns: usize,
    dur: Duration,
    window: Duration,
    kind: ClientKind,
) -> [Vec<Sample>; 2] {
    let addrs = [servers[0].addr, servers[1].addr];
    let tids = [servers[0].tids.clone(), servers[1].tids.clone()];
    let (windows, window) = windows_of(dur, window);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        rt.block_on(async move {
            let phase = Arc::new(AtomicU8::new(IDLE));
            let (turn, turns) = tokio::sync::watch::channel(IDLE);
            let done = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
            let mut tasks = Vec::new();
            for (me, addr) in addrs.into_iter().enumerate() {
                for _ in 0..conns {
                    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                    s.set_nodelay(true).ok();
                    let (phase, mut turns, done) = (phase.clone(), turns.clone(), done[me].clone());
                    tasks.push(tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        loop {
                            // One relaxed load per operation while it is this server's turn;
                            // the channel only to wait for the next turn.
                            if phase.load(Relaxed) != me as u8 {
                                loop {
                                    match *turns.borrow_and_update() {
                                        STOP => return,
                                        p if p == me as u8 => break,
                                        _ => {}
                                    }
                                    if turns.changed().await.is_err() {
                                        return;
                                    }
                                }
                            }
                            client_op(kind, &mut s, &mut buf).await;
                            done.fetch_add(1, Relaxed);
                        }
                    }));
                }
            }
            let set = |p: u8| {
                phase.store(p, Relaxed);
                turn.send_replace(p);
            };
            // Warm both up (connections accepted, buffers grown), then measure.
            for me in [0, 1] {
                set(me);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut out = [Vec::new(), Vec::new()];
            for w in 0..2 * windows {
                let me = abba(w);
                set(me as u8);
                tokio::time::sleep(SETTLE).await;
                let ids = tids[me].lock().expect("tids").clone();
                let (t, d0, c0) = (Instant::now(), done[me].load(SeqCst), threads_sched(&ids));
                tokio::time::sleep(window).await;
                let (n, c1) = (done[me].load(SeqCst) - d0, threads_sched(&ids));
                let ops = n as f64 / t.elapsed().as_secs_f64();
                let (server_cpu_us, server_switches) = match (c0, c1) {
                    (Some(a), Some(b)) if n > 0 && !ids.is_empty() => (
                        Some(b.0.saturating_sub(a.0) as f64 / 1e3 / n as f64),
                        Some(b.1.saturating_sub(a.1) as f64 / n as f64),
                    ),
                    _ => (None, None),
                };
                out[me].push(Sample {
                    value: ops,
                    server_cpu_us,
                    server_switches,
                });
            }
            set(STOP);
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
            }
            out
        })
    })
    .join()
    .expect("client thread")
}

#[derive(Clone, Copy)]
enum ClientKind {
    Echo,
    Http,
}

async fn client_op(kind: ClientKind, s: &mut tokio::net::TcpStream, buf: &mut [u8]) {
    match kind {
        ClientKind::Echo => {
            s.write_all(BODY).await.expect("write");
            s.read_exact(&mut buf[..BODY.len()]).await.expect("read");
        }
        ClientKind::Http => {
            s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                .await
                .expect("write");
            read_response(s, buf).await;
        }
    }
}

/// Reads one response with a Content-Length body.
async fn read_response(s: &mut tokio::net::TcpStream, buf: &mut [u8]) {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).await.expect("read");
        assert!(n > 0, "server closed the connection");
        have += n;
        if let Some(end) = find(&buf[..have], b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).expect("head");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            let total = end + 4 + len;
            while have < total {
                let n = s.read(&mut buf[have..]).await.expect("read");
                assert!(n > 0, "server closed the connection");
                have += n;
            }
            return;
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

// ---- round trips beside a busy loop ----

/// The figure of `rtt_beside_busy_loop`: a time, so lower is better.
const RTT_UNIT: &str = "p99 us";
/// Bytes each way in a round trip of `rtt_beside_busy_loop`.
const PING: usize = 64;

/// The first two CPUs this thread may run on, if it may run on two.
fn two_cpus() -> Option<[usize; 2]> {
    let set = rustix::thread::sched_getaffinity(None).ok()?;
    let mut it = (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c));
    Some([it.next()?, it.next()?])
}

/// `rtt_beside_busy_loop`: a thread spins on CPU `cpus[0]`, where each server's one worker
/// runs too, and a blocking client on `cpus[1]` makes 64-byte round trips one at a time on a
/// connection to each server, the servers taking turns in windows (ABBA..) as in `ab_load`.
/// Returns the 99th percentile round trip of each server's windows, in microseconds. The spin
/// stops when the client is done, and after `2 dur + 10 s` whatever happens.
fn rtt_beside_busy_loop(
    servers: &[Server; 2],
    cpus: [usize; 2],
    dur: Duration,
    window: Duration,
) -> [Vec<Sample>; 2] {
    use std::io::{Read, Write};
    let stop = Arc::new(AtomicBool::new(false));
    let limit = Instant::now() + 2 * dur + Duration::from_secs(10);
    let spin = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            rescon_bench::httpload::pin_to(cpus[0]).expect("pinning the busy loop");
            while !stop.load(Relaxed) && Instant::now() < limit {
                for _ in 0..10_000 {
                    std::hint::spin_loop();
                }
            }
        })
    };
    let addrs = [servers[0].addr, servers[1].addr];
    let (windows, window) = windows_of(dur, window);
    let client = std::thread::spawn(move || {
        rescon_bench::httpload::pin_to(cpus[1]).expect("pinning the client");
        let mut conns = addrs.map(|a| {
            let s = std::net::TcpStream::connect(a).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("read timeout");
            s
        });
        let (msg, mut buf) = ([b'x'; PING], [0u8; PING]);
        let mut rtt = |s: &mut std::net::TcpStream| {
            let t = Instant::now();
            s.write_all(&msg).expect("write");
            s.read_exact(&mut buf).expect("read");
            t.elapsed().as_nanos() as u64
        };
        // Warm both up, then measure.
        for c in &mut conns {
            let end = Instant::now() + Duration::from_millis(200);
            while Instant::now() < end {
                rtt(c);
            }
        }
        let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
            .expect("histogram bounds");
        let mut out = [Vec::new(), Vec::new()];
        for w in 0..2 * windows {
            let me = abba(w);
            hist.reset();
            let end = Instant::now() + window;
            while Instant::now() < end {
                hist.saturating_record(rtt(&mut conns[me]));
            }
            out[me].push(Sample::from(hist.value_at_quantile(0.99) as f64 / 1e3));
        }
        out
    })
    .join();
    stop.store(true, Relaxed);
    spin.join().expect("busy loop");
    client.expect("client thread")
}

/// `rebind` for `primitives`: a task switching its binding between two containers.
pub fn rebind_ns(n: u64) -> crate::primitives::Op {
    let registry = Registry::new();
    let rt = rescon_rt(&registry, 1);
    let a = registry
        .root()
        .create_child("a", Attributes::default())
        .unwrap();
    let b = registry
        .root()
        .create_child("b", Attributes::default())
        .unwrap();
    let (a2, b2) = (a.clone(), b.clone());
    rt.block_on(rt.spawn_in(&a, async move {
        crate::primitives::time_loop(n, |i| {
            rescon_rt::bind(if i & 1 == 0 { &b2 } else { &a2 });
        })
    }))
    .expect("rebind task")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.duration > 0.0 && args.duration <= 60.0,
        "--duration must be in (0, 60] seconds"
    );
    anyhow::ensure!(
        args.rounds >= 1 && args.rounds <= 20,
        "--rounds must be in 1..=20"
    );
    anyhow::ensure!(
        (10..=10_000).contains(&args.window_ms),
        "--window-ms must be in 10..=10000"
    );
    let dur = Duration::from_secs_f64(args.duration);
    let window = Duration::from_millis(args.window_ms);
    let rounds = args.rounds;
    let per_core = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cases = Vec::new();
    let wanted = |name: &str| args.cases.is_empty() || args.cases.iter().any(|c| c == name);
    let mut report =
        |name: &'static str, unit: &'static str, workers, rs: Vec<Sample>, ts: Vec<Sample>| {
            let med = |v: &[Sample], f: fn(&Sample) -> Option<f64>| {
                let c: Option<Vec<f64>> = v.iter().map(f).collect();
                c.map(median)
            };
            let pair_ratios: Vec<f64> = rs
                .iter()
                .zip(&ts)
                .map(|(r, t)| better(unit, r.value, t.value))
                .collect();
            cases.push(Case {
                name,
                unit,
                workers,
                rescon: median(rs.iter().map(|s| s.value).collect()),
                tokio: median(ts.iter().map(|s| s.value).collect()),
                rescon_server_cpu_us: med(&rs, |s| s.server_cpu_us),
                tokio_server_cpu_us: med(&ts, |s| s.server_cpu_us),
                rescon_server_switches: med(&rs, |s| s.server_switches),
                tokio_server_switches: med(&ts, |s| s.server_switches),
                ratio: median(pair_ratios.clone()),
                ratio_ci95: median_ci95(pair_ratios.clone()),
                pair_ratios,
            });
        };
    // Spawn and yield: a run of each runtime per round, back to back.
    const N: u64 = 200_000;
    type Run = fn(u64) -> f64;
    let micro: [(&'static str, Run, Run); 2] = [
        ("spawn_join", spawn_join_rescon, spawn_join_tokio),
        ("yield", yield_rescon, yield_tokio),
    ];
    for (name, r, t) in micro {
        if !wanted(name) {
            continue;
        }
        let (mut rs, mut ts) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            eprintln!("runtime: {name}, round {}/{rounds}", i + 1);
            // Alternate which runtime goes first, so that neither always runs on the
            // machine the other has just warmed (or heated).
            if i % 2 == 0 {
                rs.push(r(N).into());
                ts.push(t(N).into());
            } else {
                ts.push(t(N).into());
                rs.push(r(N).into());
            }
        }
        report(name, "ns", 1, rs, ts);
    }
    // Load: both servers up, taking turns in windows (`ab_load`).
    struct Load {
        name: &'static str,
        unit: &'static str,
        workers: usize,
        conns: usize,
        kind: ClientKind,
        build: Box<dyn Fn() -> [Server; 2]>,
    }
    let load = [
        Load {
            name: "tcp_echo_64",
            unit: "msgs/s",
            workers: 1,
            conns: 64,
            kind: ClientKind::Echo,
            build: Box::new(|| [echo_rescon(1, None), echo_tokio(1, None)]),
        },
        Load {
            name: "http_keepalive",
            unit: "req/s",
            workers: 1,
            conns: 50,
            kind: ClientKind::Http,
            build: Box::new(|| [http_rescon(1, false), http_tokio(1)]),
        },
        Load {
            name: "tcp_echo_64_per_core",
            unit: "msgs/s",
            workers: per_core,
            conns: 64,
            kind: ClientKind::Echo,
            build: Box::new(move || [echo_rescon(per_core, None), echo_tokio(per_core, None)]),
        },
        Load {
            name: "http_keepalive_per_core",
            unit: "req/s",
            workers: per_core,
            conns: 50,
            kind: ClientKind::Http,
            build: Box::new(move || [http_rescon(per_core, false), http_tokio(per_core)]),
        },
        Load {
            name: "http_container_per_conn",
            unit: "req/s",
            workers: 1,
            conns: 50,
            kind: ClientKind::Http,
            build: Box::new(|| [http_rescon(1, true), http_tokio(1)]),
        },
    ];
    for Load {
        name,
        unit,
        workers,
        conns,
        kind,
        build,
    } in load
    {
        if !wanted(name) {
            continue;
        }
        let (mut rs, mut ts) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            eprintln!("runtime: {name}, round {}/{rounds}", i + 1);
            let servers = build();
            let [r, t] = ab_load(&servers, conns, dur, window, kind);
            rs.extend(r);
            ts.extend(t);
        }
        report(name, unit, workers, rs, ts);
    }
    let name = "rtt_beside_busy_loop";
    if wanted(name) {
        match two_cpus() {
            Some(cpus) => {
                let (mut rs, mut ts) = (Vec::new(), Vec::new());
                for i in 0..rounds {
                    eprintln!("runtime: {name}, round {}/{rounds}", i + 1);
                    let servers = [echo_rescon(1, Some(cpus[0])), echo_tokio(1, Some(cpus[0]))];
                    let [r, t] = rtt_beside_busy_loop(&servers, cpus, dur, window);
                    rs.extend(r);
                    ts.extend(t);
                }
                report(name, RTT_UNIT, 1, rs, ts);
            }
            None => {
                eprintln!("runtime: {name} skipped: it needs two CPUs, this process may use one")
            }
        }
    }
    let report = Report { cases };
    anyhow::ensure!(!report.cases.is_empty(), "no case selected");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:24} {:>8} {:>7} {:>12} {:>12} {:>7} {:>11}   {:>16}   {:>16}",
        "case",
        "unit",
        "workers",
        "rescon-rt",
        "tokio",
        "ratio",
        "95% CI",
        "server CPU/op us",
        "switches/op"
    );
    for c in &report.cases {
        let [lo, hi] = c.ratio_ci95;
        let pair = |r: Option<f64>, t: Option<f64>, digits: usize| match (r, t) {
            (Some(r), Some(t)) => format!("{r:.digits$} vs {t:.digits$}"),
            _ => String::new(),
        };
        let cpu = pair(c.rescon_server_cpu_us, c.tokio_server_cpu_us, 2);
        let switches = pair(c.rescon_server_switches, c.tokio_server_switches, 3);
        println!(
            "{:24} {:>8} {:>7} {:>12.1} {:>12.1} {:>6.3}x {:>11}   {:>16}   {:>16}",
            c.name,
            c.unit,
            c.workers,
            c.rescon,
            c.tokio,
            c.ratio,
            format!("{lo:.2}-{hi:.2}"),
            cpu,
            switches
        );
    }
    println!(
        "\nrescon-rt, tokio: medians of the rounds (spawn, yield) or of the load windows\nratio: rescon-rt relative to tokio, above 1 is better: the median of the pairs' ratios (each pair measured back to back)\n95% CI: a 95% confidence interval for that median (from the pairs' order statistics)\nserver CPU/op: CPU time of the server's threads per operation, rescon-rt vs tokio (lower is better)\nswitches/op: times a server thread was switched onto a CPU, per operation (each one a wakeup or a preemption)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::median_ci95;

    #[test]
    fn the_median_interval_comes_from_order_statistics() {
        // 36 pairs: ranks 12 and 25 (18 - 5.88 and 1 + 18 + 5.88).
        let v: Vec<f64> = (1..=36).rev().map(f64::from).collect();
        assert_eq!(median_ci95(v), [12.0, 25.0]);
        // Few values: their whole range.
        assert_eq!(median_ci95(vec![1.1]), [1.1, 1.1]);
        assert_eq!(median_ci95(vec![3.0, 1.0, 2.0]), [1.0, 3.0]);
    }
}
