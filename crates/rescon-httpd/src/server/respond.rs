//! Stage: the response and its log. Every response's body is a [`ResBody`]: it counts what
//! goes out into the request's [`PendingLog`], which writes the access-log line when the body
//! is dropped (sent, cut, or abandoned), and it marks the connection's request done then.

use super::conn::ReqDone;
use crate::log::AccessLogEntry;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use hyper::body::{Frame, SizeHint};
use rescon::Container;
use std::io::Write;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

/// A response body, without a box: bytes in memory, a large file a chunk at a time, or a CGI
/// script's output as it comes.
pub(crate) enum Body {
    /// All of it (`None`: empty).
    Full(Option<Bytes>),
    /// A large file.
    File(super::static_file::FileBody),
    /// A CGI script's output.
    Cgi(super::cgi::CgiBody),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut *self {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::File(f) => Poll::Ready(f.next_chunk().map(|r| r.map(Frame::data))),
            Body::Cgi(c) => c.poll_chunk(cx).map(|c| c.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_none(),
            Body::File(f) => f.remaining() == 0,
            Body::Cgi(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::File(f) => SizeHint::with_exact(f.remaining()),
            Body::Cgi(_) => SizeHint::default(),
        }
    }
}

/// A short plain-text answer (errors, redirects).
pub(crate) fn simple(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(Bytes::from(format!("{msg}\n")))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The access log: where lines go, reopened by each reload (so a rotated file is let go).
#[derive(Default)]
pub(crate) struct AccessLog {
    /// Whether `out` is open: read by every request, without the lock.
    on: AtomicBool,
    out: Mutex<Option<Box<dyn Write + Send>>>,
}

impl AccessLog {
    pub(crate) fn new(out: Option<Box<dyn Write + Send>>) -> AccessLog {
        AccessLog {
            on: AtomicBool::new(out.is_some()),
            out: Mutex::new(out),
        }
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Relaxed)
    }

    /// Puts `out` in place of the log's destination, flushing the old one.
    pub(crate) fn replace(&self, out: Option<Box<dyn Write + Send>>) {
        let mut l = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = l.as_mut() {
            let _ = old.flush();
        }
        self.on.store(out.is_some(), Relaxed);
        *l = out;
    }

    fn write_line(&self, line: &str) {
        let mut l = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = l.as_mut() {
            let _ = writeln!(w, "{line}");
        }
    }
}

/// The CPU of one request's handling: the time of each poll of its future, read from the
/// monotonic clock as the runtime charges polls (the runtime charges containers, not
/// requests, and flushes usage in 1 ms steps, too coarse for one request).
#[derive(Default)]
pub(crate) struct ReqCpu {
    done_ns: AtomicU64,
    /// When the poll under way began (a [`mono_ns`] reading), 0 between polls.
    poll_start: AtomicU64,
}

/// The monotonic clock the runtime times polls with: the TSC where the kernel keeps time with
/// it (no vDSO call), else `CLOCK_MONOTONIC`.
pub(crate) fn mono_ns() -> u64 {
    clock().now_ns()
}

/// The time now, from the same clock: [`Instant::now`] without its vDSO call where the TSC
/// is the clocksource (a request reads the time twice: when it begins and when its
/// response is done).
pub(crate) fn now() -> Instant {
    clock().now_instant()
}

fn clock() -> &'static rescon_rt::Clock {
    static CLOCK: std::sync::OnceLock<rescon_rt::Clock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(rescon_rt::Clock::monotonic)
}

impl ReqCpu {
    /// Adds CPU spent outside the polls it times.
    pub(crate) fn add(&self, ns: u64) {
        self.done_ns.fetch_add(ns, Relaxed);
    }

    /// The CPU so far, including the poll under way.
    fn so_far_ns(&self) -> u64 {
        let start = self.poll_start.load(Relaxed);
        let running = if start == 0 {
            0
        } else {
            mono_ns().saturating_sub(start)
        };
        self.done_ns.load(Relaxed) + running
    }
}

pin_project_lite::pin_project! {
    /// A request's future, timed poll by poll into its [`ReqCpu`] (only the access log reads
    /// it, so without a log nothing is timed).
    pub(crate) struct Timed<F> {
        #[pin]
        pub(crate) inner: F,
        pub(crate) cpu: Option<Arc<ReqCpu>>,
    }
}

impl<F: std::future::Future> std::future::Future for Timed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(cpu) = this.cpu else {
            return this.inner.poll(cx);
        };
        let start = mono_ns().max(1);
        cpu.poll_start.store(start, Relaxed);
        let r = this.inner.poll(cx);
        let end = mono_ns();
        cpu.poll_start.store(0, Relaxed);
        cpu.done_ns.fetch_add(end.saturating_sub(start), Relaxed);
        r
    }
}

/// What the access log needs of a request, taken before the request is consumed; built only
/// while the log is on.
pub(crate) struct LogStart {
    time: SystemTime,
    start: Instant,
    /// [`mono_ns`] when the request began, for its CPU.
    mono: u64,
    request_line: String,
    referer: Option<Vec<u8>>,
    ua: Option<Vec<u8>>,
}

impl LogStart {
    /// [`mono_ns`] when the request began.
    pub(crate) fn mono(&self) -> u64 {
        self.mono
    }

    pub(crate) fn of<B>(req: &http::Request<B>) -> LogStart {
        let header = |name| {
            req.headers()
                .get(name)
                .map(|v: &HeaderValue| v.as_bytes().to_vec())
        };
        LogStart {
            time: SystemTime::now(),
            start: Instant::now(),
            mono: mono_ns(),
            request_line: format!("{} {} {:?}", req.method(), req.uri(), req.version()),
            referer: header(header::REFERER),
            ua: header(header::USER_AGENT),
        }
    }
}

/// Who a request was for and where it was charged, for its log line.
pub(crate) struct Charged {
    /// The container its work was charged to.
    pub(crate) container: Container,
    /// Whether that is a CGI run's own container (whose CPU is added to the line's).
    pub(crate) cgi_run: bool,
    pub(crate) vhost: Option<Arc<str>>,
}

/// A request's log in the making, while the access log is on.
pub(crate) struct RequestLog {
    pub(crate) out: Arc<AccessLog>,
    pub(crate) start: LogStart,
    pub(crate) cpu: Arc<ReqCpu>,
    pub(crate) remote: IpAddr,
    pub(crate) class: Arc<str>,
}

/// Where a request's duration and status go (`/metrics`), for the stages that find the
/// statistics cell only when they finish (FastCGI, CGI): the server's statistics, the
/// connection's class, and when the request's head was read. The static path, the hot one,
/// takes the connection's cached cell instead ([`ConnCtx::stats_cell`](super::request::ConnCtx)).
pub(crate) struct Observe {
    pub(crate) stats: Arc<crate::admin::HttpStats>,
    pub(crate) class: Arc<str>,
    pub(crate) began: Instant,
}

/// A response's entry in the request statistics and the connection's request done, made when
/// its body is dropped (as the access-log line is), so the duration runs to the last byte.
/// One clock reading serves both.
struct Observed {
    cell: Arc<crate::admin::RequestCell>,
    status: u16,
    began: Instant,
    done: ReqDone,
}

impl Drop for Observed {
    fn drop(&mut self) {
        let now = now();
        self.cell.record(
            self.status,
            now.saturating_duration_since(self.began).as_nanos() as u64,
        );
        self.done.end(now);
    }
}

/// Counts the request where its work was charged and wraps the response's body for the log,
/// the statistics and the connection's bookkeeping: the last step of every request.
pub(crate) fn finish(
    resp: Response<Body>,
    charged: Charged,
    log: Option<RequestLog>,
    done: ReqDone,
    observe: Observe,
) -> Response<ResBody> {
    let cell = observe.stats.cell(
        charged.vhost.as_ref().unwrap_or(&*crate::admin::NO_VHOST),
        &observe.class,
    );
    let to = ChargedTo {
        container: &charged.container,
        cgi_run: charged.cgi_run,
        vhost: charged.vhost.as_ref(),
    };
    finish_in(resp, to, log, done, cell, observe.began)
}

/// Where a request was charged, borrowed: what [`finish_in`] needs, cloned only for the
/// access log.
pub(crate) struct ChargedTo<'a> {
    pub(crate) container: &'a Container,
    pub(crate) cgi_run: bool,
    pub(crate) vhost: Option<&'a Arc<str>>,
}

/// [`finish`] with the statistics cell already found (`began`: when the request's head was
/// read). Nothing is cloned for the log unless it is on.
pub(crate) fn finish_in(
    resp: Response<Body>,
    charged: ChargedTo<'_>,
    log: Option<RequestLog>,
    done: ReqDone,
    cell: Arc<crate::admin::RequestCell>,
    began: Instant,
) -> Response<ResBody> {
    // Every request counts once, where its work was charged: the connection's container
    // (under its vhost), or the request's or CGI run's own.
    charged.container.account().add_requests(1);
    let status = resp.status().as_u16();
    let observed = Observed {
        cell,
        status,
        began,
        done,
    };
    let pending = log.map(
        |RequestLog {
             out,
             start,
             cpu,
             remote,
             class,
         }| PendingLog {
            out,
            remote,
            start,
            status,
            container: charged.container.clone(),
            cpu,
            cgi_run: charged.cgi_run,
            vhost: charged.vhost.cloned(),
            class,
            sent: 0,
        },
    );
    resp.map(|body| ResBody {
        body,
        log: pending,
        _observed: observed,
    })
}

/// One access-log line, written when its response's body has gone to the connection or is
/// dropped (cut by an error, abandoned by the client, or never sent, as for `HEAD`): so it
/// counts the body bytes that went out and the time until then, as nginx's
/// `$body_bytes_sent` and `$request_time` do, for streamed CGI output as for files.
pub(crate) struct PendingLog {
    out: Arc<AccessLog>,
    remote: IpAddr,
    start: LogStart,
    status: u16,
    container: Container,
    cpu: Arc<ReqCpu>,
    cgi_run: bool,
    vhost: Option<Arc<str>>,
    class: Arc<str>,
    /// Body bytes handed to the connection so far.
    sent: u64,
}

/// A CGI run's own CPU so far (its reading thread and, as sampled, the script's).
fn own_run_cpu(c: &Container, cgi_run: bool) -> u64 {
    if !cgi_run {
        return 0;
    }
    let u = c.usage();
    u.cpu_ns + u.kernel_cpu_ns
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        if !self.out.is_on() {
            return;
        }
        let s = &self.start;
        let line = AccessLogEntry {
            remote: self.remote,
            time: s.time,
            request_line: s.request_line.as_bytes(),
            status: self.status,
            bytes: self.sent,
            referer: s.referer.as_deref(),
            user_agent: s.ua.as_deref(),
            container: self.container.id(),
            cpu: Duration::from_nanos(
                self.cpu.so_far_ns() + own_run_cpu(&self.container, self.cgi_run),
            ),
            duration: s.start.elapsed(),
            vhost: self.vhost.as_deref().unwrap_or(""),
            class: &self.class,
        }
        .format();
        self.out.write_line(&line);
    }
}

/// The body of every response to a client: counts what it yields into its [`PendingLog`]
/// (if the log is on), which writes the line when the body is dropped, and marks the
/// connection's request done then.
pub(crate) struct ResBody {
    pub(crate) body: Body,
    log: Option<PendingLog>,
    /// Dropped after the log: the statistics and the connection's request done.
    _observed: Observed,
}

impl hyper::body::Body for ResBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let (Some(log), Poll::Ready(Some(Ok(f)))) = (&mut this.log, &frame) {
            if let Some(data) = f.data_ref() {
                log.sent += data.len() as u64;
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
