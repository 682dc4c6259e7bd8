//! `runtime`: rescon-rt beside tokio, measured in one run on the same machine and load.
//!
//! Each case runs its server side on one worker thread of each runtime (a multi-threaded
//! tokio runtime with one worker, a rescon-rt runtime with one worker), and its load, where
//! there is one, from the same client in both: a tokio current-thread runtime on its own
//! thread, so the load generator is identical and only the runtime under test differs. On a
//! two-core machine the server and the client each get about a core. Traffic stays on
//! 127.0.0.1; every case is bounded in time.
//!
//! - `spawn_join`: a task spawns a trivial task and awaits it, ns per pair.
//! - `yield`: two tasks on one worker each yield in a loop, ns per yield.
//! - `tcp_echo_64`: 64 connections each echo 1 KiB messages, messages/s.
//! - `http_keepalive`: hyper HTTP/1.1 serving a 1 KiB body, 50 keep-alive connections, req/s.

use rescon::{Attributes, Registry};
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
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

const CASES: [&str; 4] = ["spawn_join", "yield", "tcp_echo_64", "http_keepalive"];

#[derive(Serialize)]
struct Case {
    name: &'static str,
    unit: &'static str,
    rescon: f64,
    tokio: f64,
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

fn rescon_rt(registry: &Registry) -> rescon_rt::Runtime {
    rescon_rt::Builder::new(registry)
        .workers(1)
        .build()
        .expect("rescon-rt runtime")
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---- spawn and join ----

fn spawn_join_rescon(n: u64) -> f64 {
    let registry = Registry::new();
    let rt = rescon_rt(&registry);
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
    let rt = rescon_rt(&registry);
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
/// `dur`; each calls `one` in a loop on its own connection, which returns false to stop.
/// Returns operations per second.
fn client_load(addr: SocketAddr, conns: usize, dur: Duration, kind: ClientKind) -> f64 {
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
            let (t, d0) = (Instant::now(), done.load(SeqCst));
            tokio::time::sleep(dur).await;
            let ops = (done.load(SeqCst) - d0) as f64 / t.elapsed().as_secs_f64();
            stop.store(true, SeqCst);
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
            }
            ops
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

fn echo_rescon(dur: Duration) -> f64 {
    let registry = Registry::new();
    let rt = rescon_rt(&registry);
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
    client_load(addr, 64, dur, ClientKind::Echo)
}

fn echo_tokio(dur: Duration) -> f64 {
    let rt = tokio_rt();
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
    let ops = client_load(addr, 64, dur, ClientKind::Echo);
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

fn http_rescon(dur: Duration) -> f64 {
    let registry = Registry::new();
    let rt = rescon_rt(&registry);
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
        while let Ok((conn, _)) = l.accept().await {
            let _ = conn.set_nodelay(true);
            rescon_rt::spawn_in(&w2, async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(rescon_rt::HyperTimer::current())
                    .serve_connection(conn, hyper::service::service_fn(hello))
                    .await;
            });
        }
    });
    client_load(addr, 50, dur, ClientKind::Http)
}

fn http_tokio(dur: Duration) -> f64 {
    let rt = tokio_rt();
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
    let ops = client_load(addr, 50, dur, ClientKind::Http);
    rt.shutdown_timeout(Duration::from_secs(1));
    ops
}

/// `rebind` for `primitives`: a task switching its binding between two containers.
pub fn rebind_ns(n: u64) -> crate::primitives::Op {
    let registry = Registry::new();
    let rt = rescon_rt(&registry);
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
    let mut cases = Vec::new();
    type Pair = (fn() -> f64, fn() -> f64);
    let wanted = |name: &str| args.cases.is_empty() || args.cases.iter().any(|c| c == name);
    let mut measure = |name: &'static str, unit: &'static str, (r, t): Pair| {
        if !wanted(name) {
            return;
        }
        let mut rs = Vec::new();
        let mut ts = Vec::new();
        for i in 0..rounds {
            eprintln!("runtime: {name}, round {}/{rounds}", i + 1);
            rs.push(r());
            ts.push(t());
        }
        cases.push(Case {
            name,
            unit,
            rescon: median(rs),
            tokio: median(ts),
        });
    };
    const N: u64 = 200_000;
    measure(
        "spawn_join",
        "ns",
        (|| spawn_join_rescon(N), || spawn_join_tokio(N)),
    );
    measure("yield", "ns", (|| yield_rescon(N), || yield_tokio(N)));
    // Throughput cases take their duration from the arguments through a static.
    DURATION_MS.store(dur.as_millis() as u64, SeqCst);
    measure(
        "tcp_echo_64",
        "msgs/s",
        (|| echo_rescon(dur_arg()), || echo_tokio(dur_arg())),
    );
    measure(
        "http_keepalive",
        "req/s",
        (|| http_rescon(dur_arg()), || http_tokio(dur_arg())),
    );
    let report = Report { cases };
    anyhow::ensure!(!report.cases.is_empty(), "no case selected");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:16} {:>8} {:>14} {:>14} {:>8}",
        "case", "unit", "rescon-rt", "tokio", "ratio"
    );
    for c in &report.cases {
        // Ratios are "how much better rescon is": time units lower is better.
        let better = if c.unit == "ns" {
            c.tokio / c.rescon
        } else {
            c.rescon / c.tokio
        };
        println!(
            "{:16} {:>8} {:>14.1} {:>14.1} {:>7.2}x",
            c.name, c.unit, c.rescon, c.tokio, better
        );
    }
    println!(
        "\nratio: rescon-rt relative to tokio, above 1 is better (1 worker each; client on a tokio current-thread runtime)"
    );
    Ok(())
}

static DURATION_MS: AtomicU64 = AtomicU64::new(3000);

fn dur_arg() -> Duration {
    Duration::from_millis(DURATION_MS.load(SeqCst))
}
