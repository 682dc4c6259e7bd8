//! `runtime`: rescon-rt beside tokio, measured in one run on the same machine and load.
//!
//! Each case runs its server side on worker threads of each runtime (a multi-threaded tokio
//! runtime, a rescon-rt runtime, with the same number of workers), and its load, where there
//! is one, from the same client in both: a tokio current-thread runtime on its own thread, so
//! the load generator is identical and only the runtime under test differs. Traffic stays on
//! 127.0.0.1; every case is bounded in time.
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
//! The load cases also report the server's CPU time per operation: what the server's threads
//! ran over the measured window (from their `schedstat`, exact), divided by the operations
//! done; and how many times per operation a server thread was switched onto a CPU (from the
//! same file), which is where the designs differ with a worker per core. With one worker on a
//! two-core machine the client is saturated too, and being the same for both runtimes it
//! bounds both throughputs alike; the CPU per operation is the server's own cost, with the
//! kernel's work for its sockets in it.

use rescon::{Attributes, Registry};
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds of load for each throughput case and runtime.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Rounds of each case (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Cases to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_parser = CASES)]
    cases: Vec<String>,
}

const CASES: [&str; 7] = [
    "spawn_join",
    "yield",
    "tcp_echo_64",
    "http_keepalive",
    "tcp_echo_64_per_core",
    "http_keepalive_per_core",
    "http_container_per_conn",
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
    /// The ratio of each round on its own (rescon-rt relative to tokio, above 1 is better):
    /// each round runs both runtimes back to back, so its ratio is the one least moved by
    /// the machine's load changing, and their spread says how far to trust the medians.
    round_ratios: Vec<f64>,
}

/// How much better rescon-rt did than tokio: for times lower is better, for rates higher.
fn better(unit: &str, rescon: f64, tokio: f64) -> f64 {
    if unit == "ns" {
        tokio / rescon
    } else {
        rescon / tokio
    }
}

/// One round of a case on one runtime: its figure, and for load cases the server's CPU time
/// per operation.
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rescon_rt(registry: &Registry, workers: usize) -> rescon_rt::Runtime {
    rescon_rt::Builder::new(registry)
        .workers(workers)
        .build()
        .expect("rescon-rt runtime")
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio_rt_tids(1).0
}

/// A multi-threaded tokio runtime with `workers` workers, and the ids of the threads it starts
/// (its workers, and any blocking thread), filled in as they start.
fn tokio_rt_tids(workers: usize) -> (tokio::runtime::Runtime, Arc<Mutex<Vec<i32>>>) {
    let tids = Arc::new(Mutex::new(Vec::new()));
    let t2 = tids.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .on_thread_start(move || {
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

// ---- the client side, identical for both runtimes ----

/// Runs `conns` client tasks on a tokio current-thread runtime in a thread of its own for
/// `dur`, each doing `kind`'s operation in a loop on its own connection. Returns operations
/// per second, and the CPU time the server's threads (`server`, read when the window opens
/// and closes) ran per operation.
fn client_load(
    addr: SocketAddr,
    conns: usize,
    dur: Duration,
    kind: ClientKind,
    server: impl Fn() -> Vec<i32> + Send + 'static,
) -> Sample {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        rt.block_on(async move {
            let stop = Arc::new(AtomicBool::new(false));
            let done = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..conns {
                let (stop, done) = (stop.clone(), done.clone());
                tasks.push(tokio::spawn(async move {
                    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                    s.set_nodelay(true).ok();
                    let mut buf = vec![0u8; 4096];
                    while !stop.load(SeqCst) {
                        match kind {
                            ClientKind::Echo => {
                                s.write_all(BODY).await.expect("write");
                                s.read_exact(&mut buf[..BODY.len()]).await.expect("read");
                            }
                            ClientKind::Http => {
                                s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                                    .await
                                    .expect("write");
                                read_response(&mut s, &mut buf).await;
                            }
                        }
                        done.fetch_add(1, SeqCst);
                    }
                }));
            }
            // Warm up, then count over the window.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let tids = server();
            let (t, d0, c0) = (Instant::now(), done.load(SeqCst), threads_sched(&tids));
            tokio::time::sleep(dur).await;
            let (n, c1) = (done.load(SeqCst) - d0, threads_sched(&tids));
            let ops = n as f64 / t.elapsed().as_secs_f64();
            stop.store(true, SeqCst);
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
            }
            let (server_cpu_us, server_switches) = match (c0, c1) {
                (Some(a), Some(b)) if n > 0 && !tids.is_empty() => (
                    Some(b.0.saturating_sub(a.0) as f64 / 1e3 / n as f64),
                    Some(b.1.saturating_sub(a.1) as f64 / n as f64),
                ),
                _ => (None, None),
            };
            Sample {
                value: ops,
                server_cpu_us,
                server_switches,
            }
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

// ---- TCP echo ----

fn echo_rescon(dur: Duration, workers: usize) -> Sample {
    let registry = Registry::new();
    let rt = rescon_rt(&registry, workers);
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
    let tids = rt.handle().worker_tids();
    client_load(addr, 64, dur, ClientKind::Echo, move || tids.clone())
}

fn echo_tokio(dur: Duration, workers: usize) -> Sample {
    let (rt, tids) = tokio_rt_tids(workers);
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
    let ops = client_load(addr, 64, dur, ClientKind::Echo, move || {
        tids.lock().expect("tids").clone()
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    ops
}

// ---- hyper keep-alive ----

async fn hello(
    _req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<hyper::body::Bytes>>, Infallible> {
    Ok(hyper::Response::new(http_body_util::Full::new(
        hyper::body::Bytes::from_static(BODY),
    )))
}

/// The hyper server on rescon-rt; with `per_conn`, each connection runs in a container of its
/// own under the listener's, as in rescon-httpd.
fn http_rescon(dur: Duration, workers: usize, per_conn: bool) -> Sample {
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
    let tids = rt.handle().worker_tids();
    client_load(addr, 50, dur, ClientKind::Http, move || tids.clone())
}

fn http_tokio(dur: Duration, workers: usize) -> Sample {
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
    let ops = client_load(addr, 50, dur, ClientKind::Http, move || {
        tids.lock().expect("tids").clone()
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    ops
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
    let dur = Duration::from_secs_f64(args.duration);
    let rounds = args.rounds;
    let per_core = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cases = Vec::new();
    let wanted = |name: &str| args.cases.is_empty() || args.cases.iter().any(|c| c == name);
    let mut measure = |name: &'static str,
                       unit: &'static str,
                       workers: usize,
                       r: &dyn Fn() -> Sample,
                       t: &dyn Fn() -> Sample| {
        if !wanted(name) {
            return;
        }
        let mut rs = Vec::new();
        let mut ts = Vec::new();
        for i in 0..rounds {
            eprintln!("runtime: {name}, round {}/{rounds}", i + 1);
            // Alternate which runtime goes first, so that neither always runs on the
            // machine the other has just warmed (or heated).
            if i % 2 == 0 {
                rs.push(r());
                ts.push(t());
            } else {
                ts.push(t());
                rs.push(r());
            }
        }
        let med = |v: &[Sample], f: fn(&Sample) -> Option<f64>| {
            let c: Option<Vec<f64>> = v.iter().map(f).collect();
            c.map(median)
        };
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
            round_ratios: rs
                .iter()
                .zip(&ts)
                .map(|(r, t)| better(unit, r.value, t.value))
                .collect(),
        });
    };
    const N: u64 = 200_000;
    measure(
        "spawn_join",
        "ns",
        1,
        &|| spawn_join_rescon(N).into(),
        &|| spawn_join_tokio(N).into(),
    );
    measure("yield", "ns", 1, &|| yield_rescon(N).into(), &|| {
        yield_tokio(N).into()
    });
    for (name, w) in [("tcp_echo_64", 1), ("tcp_echo_64_per_core", per_core)] {
        measure(name, "msgs/s", w, &|| echo_rescon(dur, w), &|| {
            echo_tokio(dur, w)
        });
    }
    for (name, w) in [("http_keepalive", 1), ("http_keepalive_per_core", per_core)] {
        measure(name, "req/s", w, &|| http_rescon(dur, w, false), &|| {
            http_tokio(dur, w)
        });
    }
    measure(
        "http_container_per_conn",
        "req/s",
        1,
        &|| http_rescon(dur, 1, true),
        &|| http_tokio(dur, 1),
    );
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
        "rounds",
        "server CPU/op us",
        "switches/op"
    );
    for c in &report.cases {
        let ratio = better(c.unit, c.rescon, c.tokio);
        let (lo, hi) = c
            .round_ratios
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        let pair = |r: Option<f64>, t: Option<f64>, digits: usize| match (r, t) {
            (Some(r), Some(t)) => format!("{r:.digits$} vs {t:.digits$}"),
            _ => String::new(),
        };
        let cpu = pair(c.rescon_server_cpu_us, c.tokio_server_cpu_us, 2);
        let switches = pair(c.rescon_server_switches, c.tokio_server_switches, 3);
        println!(
            "{:24} {:>8} {:>7} {:>12.1} {:>12.1} {:>6.2}x {:>11}   {:>16}   {:>16}",
            c.name,
            c.unit,
            c.workers,
            c.rescon,
            c.tokio,
            ratio,
            format!("{lo:.2}-{hi:.2}"),
            cpu,
            switches
        );
    }
    println!(
        "\nratio: rescon-rt relative to tokio, above 1 is better (workers: each runtime's; the client: one tokio current-thread runtime)\nrounds: the lowest and highest ratio of a single round (both runtimes back to back)\nserver CPU/op: CPU time of the server's threads per operation, rescon-rt vs tokio (lower is better)\nswitches/op: times a server thread was switched onto a CPU, per operation (each one a wakeup or a preemption)"
    );
    Ok(())
}
