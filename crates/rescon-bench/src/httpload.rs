//! An HTTP load generator in the manner of httperf, for the paper's experiments.
//!
//! Groups of clients, each group from its own source address (127.0.0.x, so that a server can
//! tell client classes apart by address), run together against one server for a bounded time:
//!
//! - **closed loop**: `conns` clients each send a request, wait for the whole response, and
//!   send the next; with [`Mode::ConnPerRequest`] each request has its own connection (HTTP/1.0
//!   style, the server closes), with [`Mode::KeepAlive`] one connection carries them all.
//! - **open loop**: requests arrive at a fixed rate whatever the server does, each on its own
//!   connection; a request's latency counts from when it was due, so a server that falls
//!   behind is charged for the queue it builds (no coordinated omission).
//!
//! Latencies go into one HdrHistogram per group (microseconds, 3 significant digits); only
//! requests that complete after the warm-up and before the end are counted. Everything runs on
//! one tokio current-thread runtime in a thread of its own, optionally pinned to a CPU, so the
//! load's placement is fixed and reported. Progress is printed once a second when asked.
//!
//! Hand-written rather than wrapping wrk or oha: neither picks a source address per client
//! class nor runs open and closed loops side by side with per-class histograms.

use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a closed-loop client uses connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Mode {
    /// One persistent HTTP/1.1 connection per client.
    KeepAlive,
    /// A new connection per request, HTTP/1.0 without keep-alive: the server closes.
    ConnPerRequest,
    /// One HTTP/2 connection per client (TLS with ALPN h2 when the group has TLS, prior
    /// knowledge otherwise), one stream at a time.
    H2,
    /// An attacker: a full TLS handshake per connection, then close; each handshake counts
    /// as a response (latency: the handshake's).
    Handshake,
    /// An attacker: HTTP/2's rapid reset, a stream opened and reset at once, again and
    /// again, on one connection after another; each reset counts as a response.
    RapidReset,
}

/// One class of clients.
#[derive(Clone, Debug)]
pub struct Group {
    /// The class's name, for the results.
    pub name: String,
    /// The source address its connections are made from (a loopback address).
    pub src: Ipv4Addr,
    /// Closed loop: the number of concurrent clients. Ignored when `rate` is set.
    pub conns: usize,
    /// Open loop: requests per second, each on its own connection.
    pub rate: Option<f64>,
    /// Closed loop: how connections are used.
    pub mode: Mode,
    /// The `Host` header.
    pub host: String,
    /// Request paths, taken in turn.
    pub paths: Vec<String>,
    /// Runs on a thread of its own at the highest nice priority (root only; otherwise at
    /// the default), so that its latency measures the server, not the load generator's
    /// queue behind the other groups.
    pub dedicated: bool,
    /// TLS: the client configuration (ALPN, resumption, verification), with the SNI name
    /// `host`. `None`: cleartext.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The server.
    pub target: SocketAddr,
    /// The client classes, all run at once.
    pub groups: Vec<Group>,
    /// Time before counting starts.
    pub warmup: Duration,
    /// Time counted.
    pub duration: Duration,
    /// A request not answered within this is an error (and its connection is dropped).
    pub timeout: Duration,
    /// The CPU the load's thread is pinned to.
    pub cpu: Option<usize>,
    /// A label for progress lines on standard error; `None` prints nothing.
    pub progress: Option<String>,
    /// Open loop: at most this many requests in flight per group; arrivals beyond it are
    /// counted as errors, not queued.
    pub max_in_flight: usize,
}

impl Plan {
    /// A plan with the defaults: 1 s warm-up, 5 s counted, 10 s timeout, 4096 in flight.
    pub fn new(target: SocketAddr, groups: Vec<Group>) -> Plan {
        Plan {
            target,
            groups,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            cpu: None,
            progress: None,
            max_in_flight: 4096,
        }
    }
}

/// What one group got.
#[derive(Clone, Debug)]
pub struct GroupResult {
    /// The group's name.
    pub name: String,
    /// Complete responses with a 2xx status, counted.
    pub ok: u64,
    /// Complete responses with another status.
    pub non_2xx: u64,
    /// Requests that failed: refused, reset, timed out, malformed, or over `max_in_flight`.
    pub errors: u64,
    /// Latency of the 2xx responses, microseconds.
    pub latency_us: Histogram<u64>,
    /// The counted time, seconds.
    pub seconds: f64,
}

impl GroupResult {
    /// 2xx responses per second.
    pub fn per_s(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    /// The latency at `q` (0..=1) in milliseconds; NaN when nothing was counted.
    pub fn ms(&self, q: f64) -> f64 {
        if self.latency_us.is_empty() {
            f64::NAN
        } else {
            self.latency_us.value_at_quantile(q) as f64 / 1000.0
        }
    }
}

pub(crate) struct Counts {
    ok: u64,
    non_2xx: u64,
    errors: u64,
    hist: Histogram<u64>,
}

pub(crate) struct Window {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
}

impl Window {
    fn counts(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

pub(crate) type Shared = Rc<RefCell<Counts>>;

/// Runs `plan` to the end and returns one result per group, in order.
pub fn run(plan: &Plan) -> anyhow::Result<Vec<GroupResult>> {
    anyhow::ensure!(!plan.groups.is_empty(), "no client groups");
    for g in &plan.groups {
        anyhow::ensure!(
            g.src.is_loopback(),
            "group {}: source {} is not a loopback address",
            g.name,
            g.src
        );
        anyhow::ensure!(!g.paths.is_empty(), "group {}: no paths", g.name);
        if let Some(r) = g.rate {
            anyhow::ensure!(r > 0.0 && r.is_finite(), "group {}: rate {r}", g.name);
        }
    }
    anyhow::ensure!(
        plan.target.ip().is_loopback(),
        "target {} is not a loopback address",
        plan.target
    );
    // One thread for the shared groups and one for each dedicated group, all counting the
    // same window.
    let t0 = Instant::now();
    let mut parts: Vec<(Vec<usize>, bool)> = Vec::new();
    let shared: Vec<usize> = (0..plan.groups.len())
        .filter(|&i| !plan.groups[i].dedicated)
        .collect();
    if !shared.is_empty() {
        parts.push((shared, false));
    }
    for (i, g) in plan.groups.iter().enumerate() {
        if g.dedicated {
            parts.push((vec![i], true));
        }
    }
    let mut threads = Vec::new();
    for (k, (idx, dedicated)) in parts.into_iter().enumerate() {
        let mut part = plan.clone();
        part.groups = idx.iter().map(|&i| plan.groups[i].clone()).collect();
        if k > 0 {
            part.progress = None;
        }
        threads.push((
            idx,
            std::thread::Builder::new().name("httpload".into()).spawn(
                move || -> anyhow::Result<Vec<GroupResult>> {
                    if let Some(cpu) = part.cpu {
                        pin_to(cpu)?;
                    }
                    if dedicated {
                        // Best effort: a normal user may not raise its priority.
                        let tid = rustix::thread::gettid();
                        let _ = rustix::process::setpriority_process(
                            rustix::process::Pid::from_raw(tid.as_raw_nonzero().get()),
                            -20,
                        );
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    Ok(rt.block_on(drive(part, t0)))
                },
            )?,
        ));
    }
    let mut out: Vec<Option<GroupResult>> = vec![None; plan.groups.len()];
    for (idx, t) in threads {
        let r = t
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        for (i, g) in idx.into_iter().zip(r) {
            out[i] = Some(g);
        }
    }
    Ok(out
        .into_iter()
        .map(|g| g.expect("every group ran"))
        .collect())
}

/// Pins the calling thread (and threads and processes it starts later) to `cpu`.
pub fn pin_to(cpu: usize) -> anyhow::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)
        .map_err(|e| anyhow::anyhow!("pinning to CPU {cpu}: {e}"))
}

async fn drive(plan: Plan, t0: Instant) -> Vec<GroupResult> {
    let window = Rc::new(Window {
        start: t0 + plan.warmup,
        end: t0 + plan.warmup + plan.duration,
    });
    let local = tokio::task::LocalSet::new();
    let mut shared = Vec::new();
    for g in &plan.groups {
        let counts: Shared = Rc::new(RefCell::new(Counts {
            ok: 0,
            non_2xx: 0,
            errors: 0,
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"),
        }));
        shared.push(counts.clone());
        let g = Rc::new(g.clone());
        match g.rate {
            Some(rate) => {
                local.spawn_local(open_loop(
                    plan.target,
                    g,
                    rate,
                    counts,
                    window.clone(),
                    plan.timeout,
                    plan.max_in_flight,
                ));
            }
            None => {
                for i in 0..g.conns {
                    let (target, g, counts, window) =
                        (plan.target, g.clone(), counts.clone(), window.clone());
                    match (g.mode, g.tls.is_some()) {
                        (Mode::KeepAlive | Mode::ConnPerRequest, false) => {
                            local.spawn_local(closed_client(
                                target,
                                g,
                                i,
                                counts,
                                window,
                                plan.timeout,
                            ));
                        }
                        _ => {
                            local.spawn_local(crate::tlsload::client(
                                target,
                                g,
                                counts,
                                window,
                                plan.timeout,
                            ));
                        }
                    }
                }
            }
        }
    }
    if let Some(label) = plan.progress.clone() {
        let shared = shared.clone();
        let window = window.clone();
        local.spawn_local(async move {
            let total = (window.end - t0).as_secs_f64();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = Instant::now();
                if now >= window.end {
                    break;
                }
                let done: u64 = shared.iter().map(|c| c.borrow().ok).sum();
                let errs: u64 = shared.iter().map(|c| c.borrow().errors).sum();
                let phase = if now < window.start {
                    "warming up"
                } else {
                    "measuring"
                };
                eprintln!(
                    "    {label}: {:.0}/{total:.0} s {phase}, {done} responses, {errs} errors",
                    (now - t0).as_secs_f64()
                );
            }
        });
    }
    // The clients stop themselves at the end; requests still in flight then are dropped
    // uncounted.
    local
        .run_until(async {
            tokio::time::sleep_until((window.end).into()).await;
        })
        .await;
    drop(local);
    plan.groups
        .iter()
        .zip(shared)
        .map(|(g, c)| {
            let c = c.borrow();
            GroupResult {
                name: g.name.clone(),
                ok: c.ok,
                non_2xx: c.non_2xx,
                errors: c.errors,
                latency_us: c.hist.clone(),
                seconds: plan.duration.as_secs_f64(),
            }
        })
        .collect()
}

pub(crate) fn record(counts: &Shared, window: &Window, due: Instant, outcome: Result<u16, ()>) {
    let now = Instant::now();
    if !window.counts(now) {
        return;
    }
    let mut c = counts.borrow_mut();
    match outcome {
        Ok(s) if (200..300).contains(&s) => {
            c.ok += 1;
            let us = (now - due).as_micros().max(1) as u64;
            let _ = c.hist.record(us);
        }
        Ok(_) => c.non_2xx += 1,
        Err(()) => c.errors += 1,
    }
}

async fn closed_client(
    target: SocketAddr,
    g: Rc<Group>,
    index: usize,
    counts: Shared,
    window: Rc<Window>,
    timeout: Duration,
) {
    let mut conn: Option<tokio::net::TcpStream> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let reqs = requests(&g, g.mode);
    let mut n = index;
    while Instant::now() < window.end {
        let req = &reqs[n % reqs.len()];
        n += 1;
        let due = Instant::now();
        let left = window.end.saturating_duration_since(due) + timeout;
        let res = tokio::time::timeout(
            timeout.min(left),
            request(target, g.src, req, g.mode, &mut conn, &mut buf),
        )
        .await;
        let outcome = match res {
            Ok(Ok(s)) => Ok(s),
            _ => {
                conn = None;
                Err(())
            }
        };
        let failed = outcome.is_err();
        record(&counts, &window, due, outcome);
        if failed {
            // A refused or reset connection: do not spin.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn open_loop(
    target: SocketAddr,
    g: Rc<Group>,
    rate: f64,
    counts: Shared,
    window: Rc<Window>,
    timeout: Duration,
    max_in_flight: usize,
) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let in_flight = Rc::new(std::cell::Cell::new(0usize));
    let reqs: Vec<Rc<[u8]>> = requests(&g, Mode::ConnPerRequest)
        .into_iter()
        .map(Rc::from)
        .collect();
    let mut due = Instant::now();
    let mut n = 0usize;
    while due < window.end {
        tokio::time::sleep_until(due.into()).await;
        if in_flight.get() >= max_in_flight {
            record(&counts, &window, due, Err(()));
        } else {
            in_flight.set(in_flight.get() + 1);
            let (g, counts, window, in_flight) =
                (g.clone(), counts.clone(), window.clone(), in_flight.clone());
            let req = reqs[n % reqs.len()].clone();
            tokio::task::spawn_local(async move {
                let mut conn = None;
                let mut buf = vec![0u8; 16 * 1024];
                let res = tokio::time::timeout(
                    timeout,
                    request(
                        target,
                        g.src,
                        &req,
                        Mode::ConnPerRequest,
                        &mut conn,
                        &mut buf,
                    ),
                )
                .await;
                let outcome = match res {
                    Ok(Ok(s)) => Ok(s),
                    _ => Err(()),
                };
                record(&counts, &window, due, outcome);
                in_flight.set(in_flight.get() - 1);
            });
        }
        n += 1;
        due += period;
    }
}

pub(crate) async fn connect(
    target: SocketAddr,
    src: Ipv4Addr,
) -> std::io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))?;
    let s = s.connect(target).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// The request of each of a group's paths, made once: the load generator's own work per
/// request should be as small as it can be.
pub(crate) fn requests(g: &Group, mode: Mode) -> Vec<Vec<u8>> {
    let version = match mode {
        Mode::ConnPerRequest => "1.0",
        _ => "1.1",
    };
    g.paths
        .iter()
        .map(|path| format!("GET {path} HTTP/{version}\r\nHost: {}\r\n\r\n", g.host).into_bytes())
        .collect()
}

/// Sends one request and reads its whole response; returns the status.
async fn request(
    target: SocketAddr,
    src: Ipv4Addr,
    req: &[u8],
    mode: Mode,
    conn: &mut Option<tokio::net::TcpStream>,
    buf: &mut [u8],
) -> std::io::Result<u16> {
    if conn.is_none() {
        *conn = Some(connect(target, src).await?);
    }
    let s = conn.as_mut().expect("connected");
    s.write_all(req).await?;
    let (status, close) = read_response(s, buf).await?;
    if mode == Mode::ConnPerRequest || close {
        *conn = None;
    }
    Ok(status)
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one response: its head, then its body (chunked, `Content-Length` bytes, or to the end
/// of the stream when it has neither). Returns the status and whether the connection is
/// finished.
pub(crate) async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut [u8],
) -> std::io::Result<(u16, bool)> {
    let mut have = 0;
    loop {
        if have == buf.len() {
            return Err(bad("response head too large"));
        }
        let n = s.read(&mut buf[have..]).await?;
        if n == 0 {
            return Err(bad("connection closed before the response head"));
        }
        have += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf[..have]).map_err(|e| bad(&e.to_string()))? {
            httparse::Status::Partial => continue,
            httparse::Status::Complete(head_len) => {
                let status = resp.code.unwrap_or(0);
                let mut length = None;
                let mut chunked = false;
                let mut close = resp.version == Some(0);
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = String::from_utf8_lossy(h.value)
                            .to_ascii_lowercase()
                            .contains("chunked");
                    } else if h.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok());
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                        if v.contains("close") {
                            close = true;
                        } else if v.contains("keep-alive") {
                            close = false;
                        }
                    }
                }
                if chunked {
                    // A CGI response, streamed: chunked wins over any length (RFC 9112 6.3).
                    skip_chunked(s, buf, buf[head_len..have].to_vec()).await?;
                    if close {
                        while s.read(buf).await? > 0 {}
                    }
                    return Ok((status, close));
                }
                let mut body = have - head_len;
                match length {
                    Some(len) => {
                        while body < len {
                            let n = s.read(buf).await?;
                            if n == 0 {
                                return Err(bad("connection closed inside the body"));
                            }
                            body += n;
                        }
                        if close {
                            // Let the server close first: its side keeps the TIME_WAIT, and
                            // the client's ports are not used up.
                            while s.read(buf).await? > 0 {}
                        }
                        return Ok((status, close));
                    }
                    None => {
                        while s.read(buf).await? > 0 {}
                        return Ok((status, true));
                    }
                }
            }
        }
    }
}

/// Reads a chunked body to its end (the last chunk and any trailers), given what was read past
/// the head; what follows it on the connection is not read.
async fn skip_chunked<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut [u8],
    mut have: Vec<u8>,
) -> std::io::Result<()> {
    async fn more<S: tokio::io::AsyncRead + Unpin>(
        s: &mut S,
        buf: &mut [u8],
        have: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let n = s.read(buf).await?;
        if n == 0 {
            return Err(bad("connection closed inside the body"));
        }
        have.extend_from_slice(&buf[..n]);
        Ok(())
    }
    loop {
        let (used, size) = loop {
            match httparse::parse_chunk_size(&have) {
                Ok(httparse::Status::Complete((used, size))) => break (used, size),
                Ok(httparse::Status::Partial) if have.len() < 1024 => {
                    more(s, buf, &mut have).await?
                }
                _ => return Err(bad("bad chunk size line")),
            }
        };
        have.drain(..used);
        if size == 0 {
            // Trailer lines, then an empty one.
            loop {
                match have.windows(2).position(|w| w == b"\r\n") {
                    Some(0) => return Ok(()),
                    Some(i) => drop(have.drain(..i + 2)),
                    None if have.len() < 8192 => more(s, buf, &mut have).await?,
                    None => return Err(bad("trailers too long")),
                }
            }
        }
        // The data and its CRLF.
        let mut skip = usize::try_from(size)
            .ok()
            .and_then(|n| n.checked_add(2))
            .ok_or_else(|| bad("chunk too large"))?;
        while skip > 0 {
            if have.is_empty() {
                more(s, buf, &mut have).await?;
            }
            let k = skip.min(have.len());
            have.drain(..k);
            skip -= k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// A tiny blocking server: keep-alive unless the request is HTTP/1.0; `/slow` answers after
    /// 50 ms, `/missing` is a 404. Counts the requests it answered.
    fn server() -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicBool>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (served.clone(), stop.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                if st2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut c) = c else { continue };
                let s3 = s2.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 4096];
                    let mut have = 0;
                    loop {
                        let Ok(n) = c.read(&mut buf[have..]) else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        have += n;
                        let text = String::from_utf8_lossy(&buf[..have]).to_string();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let head = &text[..end];
                        have = 0;
                        let v10 = head.contains("HTTP/1.0");
                        let (status, body) = if head.starts_with("GET /missing") {
                            ("404 Not Found", "no\n")
                        } else {
                            if head.starts_with("GET /slow") {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            ("200 OK", "hello\n")
                        };
                        let close = if v10 { "Connection: close\r\n" } else { "" };
                        let resp = if head.starts_with("GET /chunked") {
                            // Two chunks (one with an extension) and a trailer, as a
                            // streamed CGI response comes.
                            format!(
                                "HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n{close}\r\n3;x=1\r\nhel\r\n3\r\nlo\n\r\n0\r\nX-Done: 1\r\n\r\n"
                            )
                        } else {
                            format!(
                                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{close}\r\n{body}",
                                body.len()
                            )
                        };
                        if c.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                        s3.fetch_add(1, Ordering::Relaxed);
                        if v10 {
                            return;
                        }
                    }
                });
            }
        });
        (addr, served, stop)
    }

    fn group(name: &str, src: [u8; 4], mode: Mode, paths: &[&str]) -> Group {
        Group {
            name: name.into(),
            src: Ipv4Addr::from(src),
            conns: 2,
            rate: None,
            mode,
            host: "t".into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            dedicated: false,
            tls: None,
        }
    }

    #[test]
    fn closed_loops_count_statuses_per_group_and_stop_by_themselves() {
        let (addr, served, stop) = server();
        let mut plan = Plan::new(
            addr,
            vec![
                group("ka", [127, 0, 0, 1], Mode::KeepAlive, &["/", "/missing"]),
                group("cpr", [127, 0, 0, 2], Mode::ConnPerRequest, &["/"]),
            ],
        );
        plan.warmup = Duration::from_millis(100);
        plan.duration = Duration::from_millis(400);
        let t = Instant::now();
        let r = run(&plan).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "bounded in time");
        stop.store(true, Ordering::Relaxed);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].name, "ka");
        assert!(
            r[0].ok > 0 && r[0].non_2xx > 0,
            "{:?}",
            (r[0].ok, r[0].non_2xx)
        );
        // Paths are taken in turn, so the two statuses are within a request per client.
        assert!(r[0].ok.abs_diff(r[0].non_2xx) <= 2 * plan.groups[0].conns as u64);
        assert!(r[1].ok > 0 && r[1].non_2xx == 0 && r[1].errors == 0);
        assert_eq!(r[1].latency_us.len(), r[1].ok);
        let counted: u64 = r.iter().map(|g| g.ok + g.non_2xx).sum();
        assert!(served.load(Ordering::Relaxed) >= counted);
    }

    #[test]
    fn chunked_responses_are_read_to_their_end_on_kept_alive_connections() {
        // rescon-httpd streams CGI output chunked; a client that waited for the connection to
        // close counted nothing (each request hung until the window ended).
        let (addr, served, stop) = server();
        let mut plan = Plan::new(
            addr,
            vec![group(
                "chunked",
                [127, 0, 0, 1],
                Mode::KeepAlive,
                &["/chunked"],
            )],
        );
        plan.warmup = Duration::from_millis(50);
        plan.duration = Duration::from_millis(300);
        let r = run(&plan).unwrap();
        stop.store(true, Ordering::Relaxed);
        // Two connections: far more responses than two means each was read to its end and
        // the connection reused.
        assert!(
            r[0].ok > 20 && r[0].errors == 0,
            "{:?}",
            (r[0].ok, r[0].errors)
        );
        assert!(served.load(Ordering::Relaxed) >= r[0].ok);
    }

    #[test]
    fn dedicated_groups_run_beside_the_others_in_the_same_window() {
        let (addr, _served, stop) = server();
        let mut plan = Plan::new(
            addr,
            vec![
                group("shared", [127, 0, 0, 1], Mode::KeepAlive, &["/"]),
                Group {
                    dedicated: true,
                    ..group("own", [127, 0, 0, 2], Mode::ConnPerRequest, &["/missing"])
                },
                group("shared2", [127, 0, 0, 3], Mode::KeepAlive, &["/"]),
            ],
        );
        plan.warmup = Duration::from_millis(100);
        plan.duration = Duration::from_millis(300);
        let r = run(&plan).unwrap();
        stop.store(true, Ordering::Relaxed);
        let names: Vec<&str> = r.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["shared", "own", "shared2"], "results in plan order");
        assert!(r[0].ok > 0 && r[2].ok > 0);
        assert!(
            r[1].ok == 0 && r[1].non_2xx > 0,
            "the dedicated group's own statuses"
        );
    }

    #[test]
    fn open_loop_keeps_its_rate_and_charges_the_queue() {
        let (addr, _served, stop) = server();
        let mut g = group("open", [127, 0, 0, 3], Mode::ConnPerRequest, &["/slow"]);
        g.rate = Some(200.0);
        let mut plan = Plan::new(addr, vec![g]);
        plan.warmup = Duration::from_millis(200);
        plan.duration = Duration::from_secs(1);
        let r = run(&plan).unwrap();
        stop.store(true, Ordering::Relaxed);
        // 200/s for 1 s; the server takes each request in its own thread, so all complete.
        assert!((150..=210).contains(&r[0].ok), "{}", r[0].ok);
        assert!(r[0].ms(0.5) >= 50.0, "latency includes the server's 50 ms");
    }

    #[test]
    fn refused_connections_are_errors_not_hangs() {
        // A port nobody listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let mut plan = Plan::new(
            addr,
            vec![group("x", [127, 0, 0, 1], Mode::KeepAlive, &["/"])],
        );
        plan.warmup = Duration::ZERO;
        plan.duration = Duration::from_millis(200);
        let r = run(&plan).unwrap();
        assert_eq!(r[0].ok, 0);
        assert!(r[0].errors > 0);
        assert!(r[0].ms(0.5).is_nan());
    }

    #[test]
    fn non_loopback_targets_and_sources_are_refused() {
        let target: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let plan = Plan::new(
            target,
            vec![group("x", [127, 0, 0, 1], Mode::KeepAlive, &["/"])],
        );
        assert!(
            run(&plan)
                .unwrap_err()
                .to_string()
                .contains("not a loopback")
        );
        let mut g = group("x", [127, 0, 0, 1], Mode::KeepAlive, &["/"]);
        g.src = Ipv4Addr::new(10, 0, 0, 1);
        let plan = Plan::new("127.0.0.1:1".parse().unwrap(), vec![g]);
        assert!(
            run(&plan)
                .unwrap_err()
                .to_string()
                .contains("not a loopback")
        );
    }
}
