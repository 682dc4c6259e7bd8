//! Stage: a client connection, busy or parked.
//!
//! # Busy and parked
//!
//! A connection holds buffers, protocol state and a container of its own only while it has
//! something to do. Busy, it is hyper over any byte stream ([`Stream`]: a TCP socket or a
//! TLS session) with the waits' timeouts ([`IdleClose`]: request head, keep-alive quiet,
//! stalled sends) and the graceful stop, in HTTP/1.1 or HTTP/2 ([`Proto`]: HTTP/2 through
//! hyper's h2, its streams run in the connection's container (first within the connection's
//! poll, then as tasks if not done), or each as a task in a child of its own with
//! `http2.stream_containers` ([`StreamExec`]), its frames metered by
//! [`H2Guard`](super::h2guard)), in its own container (`conn-N`, under its class's container
//! or where placement moved it); each request goes to
//! [`request::serve`](super::request::serve).
//!
//! Once a response is done and the connection has stayed quiet for `timeouts.park` (100 ms by
//! default; nothing read since, no request under way, nothing left to send), it *parks*: hyper is stopped
//! between requests (`graceful_shutdown` closes an idle HTTP/1 connection at once, and
//! `without_shutdown` gives back the socket and any bytes hyper read but did not parse), its
//! container is let go (its usage folds into its parent's, so nothing charged is lost), and
//! what is left is a [`Parked`] record: the socket, where its container was, its class's
//! connection slot, its number and one timer, charged to the container its own was under. It
//! wakes when the socket becomes readable (bytes, the client's close, an error), makes its
//! container again where it was and starts a new hyper; bytes the last hyper had read and not
//! parsed (a pipelined request's beginning) go to the new one first, so nothing the client sent
//! is lost or read twice. A connection that has not sent its first byte starts parked. A
//! parked connection wakes by reading, into a buffer on the stack ([`Parked::poll_wait`]):
//! what it reads is the new hyper's first input, and a wake-up that finds nothing to read (a
//! new socket is taken as readable until a read says otherwise, and an event may be one a
//! read already consumed) stays parked without making anything. That read's bytes are charged
//! to the container the connection is parked in (its class's), the later ones to its own.
//!
//! Why not park at once after every response, as nginx frees its buffers: waking costs a new
//! hyper connection (its buffers are allocated again) and a new container, and a client that
//! sends its next request as soon as it has the response would pay that on every request
//! (50 keep-alive clients on one worker: about 22% fewer requests per second with
//! `park = "0s"`; perf shows the difference in building and moving hyper's state, the
//! container's making, binding and release, and the allocator). 100 ms of quiet costs a busy
//! client nothing (its gaps are a round trip), and bounds what a burst of clients that then
//! go idle holds at once: with 1 s, every connection of a burst of 8,000 was busy at the same
//! time, and the worker's and allocator's structures kept that high-water mark (`rescon-bench
//! memory`, keep-alive: 2,426 bytes per idle connection against 1,163 for never-sent ones).
//! A connection that has not been answered yet has no such client to wait for: it parks at
//! once, whatever `timeouts.park` says.
//!
//! What parking keeps exact: the timeouts (a parked connection waits until the deadline it had:
//! `keep_alive` after the response's end, or for a first request `header` after the
//! connection's start), the class's connection slot (held throughout), the graceful stop (a
//! parked connection closes at once), usage (its containers' usage folds into the one they were
//! under). A request that came with a body keeps its connection busy until a request without
//! one: hyper may still be reading that body, and stopping it then would close the connection.
//!
//! An HTTP/2 connection parks only before its first byte: once hyper's h2 runs, it stays busy
//! to its end (hyper gives back no socket from an HTTP/2 connection, and its streams and
//! settings are state a client expects kept). A TLS connection parks as a TCP one does, its
//! session kept; a session holding decrypted bytes not yet read is ready at once
//! ([`Stream::poll_read_ready`]).

use super::placement::Placed;
use super::request::{ConnCtx, Reply};
use super::respond::ResBody;
use super::stop::StopWatch;
use crate::config::Timeouts;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::rt::ReadBufCursor;
use rescon::{Attributes, ConnGuard, Container};
use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::Shared;

/// What the connection stage needs of a byte stream: hyper's reads and writes, reads that
/// say how many bytes came (an idle timeout must stop once a request begins to arrive, and
/// hyper's read cursor does not tell), and what parking needs.
pub(crate) trait Stream:
    hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static
{
    /// Reads as [`hyper::rt::Read::poll_read`] does; `Ok(n)` is the number of bytes read
    /// (0: the end of the stream).
    fn poll_read_count(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<usize>>;

    /// Waits, without reading and without a buffer, until a read may make progress (bytes,
    /// the end of the stream, an error): what a parked connection waits for. A stream that
    /// keeps bytes of its own (a TLS session's decrypted ones) is ready while it holds any.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Charges the stream's later bytes to `c`.
    fn set_container(&mut self, c: &Container);

    /// The connection parks: gives back what the stream needs only while busy (a TLS
    /// session's buffers). A plain socket has nothing to give back.
    fn park(&mut self) {}
}

impl Stream for rescon_rt::TcpStream {
    fn poll_read_count(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<usize>> {
        self.poll_read_hyper(cx, buf)
    }

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        rescon_rt::TcpStream::poll_read_ready(self, cx)
    }

    fn set_container(&mut self, c: &Container) {
        rescon_rt::TcpStream::set_container(self, c)
    }
}

/// A connection as accepted: who and where, its class and where it is charged.
pub(crate) struct Accepted<S> {
    pub(crate) stream: S,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) class: Arc<str>,
    /// The container it is charged to while parked, and under which its own is made while it
    /// is busy: its class's container (its task is spawned in it).
    pub(crate) home: Container,
    /// Its number: its own container is `conn-N`. `None`: it has none and is served in `home`
    /// (`--no-containers`).
    pub(crate) n: Option<u64>,
    /// The class's connection slot, held for the connection's life.
    pub(crate) guard: Option<ConnGuard>,
}

/// The protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    Http1,
    /// HTTP/2: chosen by ALPN, or by prior knowledge on a cleartext h2 listener.
    Http2,
}

/// A connection between requests, holding no buffers: what it keeps to wake up.
pub(crate) struct Parked<S> {
    stream: S,
    shared: Arc<Shared>,
    peer: SocketAddr,
    local: SocketAddr,
    class: Arc<str>,
    home: Container,
    n: ConnNumber,
    /// Where placement last put its container.
    placed: Placed,
    _guard: Option<ConnGuard>,
    stop: StopWatch,
    /// The connection's one timer, kept from wait to wait.
    timer: Timer,
    /// Until when it waits parked.
    deadline: Ns,
    /// It has not been answered yet: its first request's head is due by `deadline`.
    first: bool,
    proto: Proto,
}

/// Serves a connection until it ends (the client closes, a timeout, a graceful stop):
/// parked until it has something to say, busy until it is quiet again (see the
/// [module docs](self)).
pub(crate) fn serve_conn<S: Stream>(
    shared: Arc<Shared>,
    conn: Accepted<S>,
    proto: Proto,
) -> ServeConn<S> {
    let header = shared.site.get().config.timeouts.header;
    let stop = shared.stop.watch(true);
    ServeConn(Phase::Parked(Parked {
        stream: conn.stream,
        shared,
        peer: conn.peer,
        local: conn.local,
        class: conn.class,
        home: conn.home,
        n: ConnNumber::new(conn.n),
        placed: Placed::default(),
        _guard: conn.guard,
        stop,
        timer: Timer::default(),
        deadline: Ns::of(Instant::now() + header),
        first: true,
        proto,
    }))
}

/// A connection's number (`Accepted::n`) in one word: `u64::MAX` for none (a server does not
/// accept that many connections).
#[derive(Clone, Copy)]
struct ConnNumber(u64);

impl ConnNumber {
    fn new(n: Option<u64>) -> ConnNumber {
        ConnNumber(n.unwrap_or(u64::MAX))
    }

    fn get(self) -> Option<u64> {
        (self.0 != u64::MAX).then_some(self.0)
    }
}

/// The future of a connection's life: written out by hand (not an `async fn`) so that a
/// parked connection's task holds the [`Parked`] record and nothing more; hyper's state,
/// the bulk of a busy connection, is boxed while it is busy.
pub(crate) struct ServeConn<S>(Phase<S>);

/// What a boxed busy connection gives back: the record to park, or `None` when it ended.
type Busy<S> = Pin<Box<dyn Future<Output = Option<Parked<S>>> + Send>>;

// The parked record is inline on purpose: a parked connection is this future and nothing
// else on the heap (the busy state, which is large and short-lived, is the one boxed).
#[allow(clippy::large_enum_variant)]
enum Phase<S> {
    Parked(Parked<S>),
    Busy(Busy<S>),
    Done,
}

impl<S: Stream> Future for ServeConn<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let phase = &mut self.get_mut().0;
        loop {
            match phase {
                Phase::Parked(p) => {
                    let first = match p.poll_wait(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(first)) => first,
                        Poll::Ready(None) => break,
                    };
                    let Phase::Parked(p) = std::mem::replace(phase, Phase::Done) else {
                        unreachable!("parked just now")
                    };
                    *phase = Phase::Busy(Box::pin(busy(p, first)));
                }
                Phase::Busy(b) => match b.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(p)) => *phase = Phase::Parked(p),
                    Poll::Ready(None) => break,
                },
                Phase::Done => break,
            }
        }
        *phase = Phase::Done;
        Poll::Ready(())
    }
}

/// How much a parked connection reads when it wakes, into a buffer on the stack: most
/// requests' heads fit.
const WAKE_READ: usize = 1024;

impl<S: Stream> Parked<S> {
    /// Ready with the first bytes that came (`Some`), or `None` when the connection closes:
    /// the client closed it or it failed, its deadline has passed, or a graceful stop has
    /// begun.
    ///
    /// The bytes are read here, into a buffer on the stack, and handed to the busy
    /// connection: a wake-up that finds nothing to read (a new socket is taken as readable
    /// until a read says otherwise; an event may be one a read already consumed) costs one
    /// read and stays parked, instead of making a container and a hyper connection to find
    /// out. A never-sent connection so never leaves its parked record. (An HTTP/2 connection,
    /// which parks only before its first byte, wakes on readiness alone.)
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.stop.stopping(cx) {
            return Poll::Ready(None);
        }
        while let Poll::Ready(r) = self.stream.poll_read_ready(cx) {
            if r.is_err() {
                return Poll::Ready(None);
            }
            if self.proto == Proto::Http2 {
                // Its bytes go through the frame meter (`H2Guard`), which reads them itself.
                return Poll::Ready(Some(Bytes::new()));
            }
            let mut buf = [0u8; WAKE_READ];
            let mut rb = hyper::rt::ReadBuf::new(&mut buf);
            match Pin::new(&mut self.stream).poll_read_count(cx, rb.unfilled()) {
                // The client closed (its close while parked), or the socket failed.
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {
                    return Poll::Ready(Some(Bytes::copy_from_slice(rb.filled())));
                }
                // Nothing after all: the read cleared the readiness; wait again.
                Poll::Pending => {}
            }
        }
        self.timer
            .poll_until(cx, self.deadline.instant())
            .map(|()| None)
    }
}

/// Serves the connection from when it woke with `first` (the bytes it read) until it ends
/// (`None`) or is quiet again (the record to park).
async fn busy<S: Stream>(p: Parked<S>, first_bytes: Bytes) -> Option<Parked<S>> {
    let Parked {
        mut stream,
        shared,
        peer,
        local,
        class,
        mut home,
        n,
        mut placed,
        _guard,
        mut stop,
        mut timer,
        deadline,
        first,
        proto,
    } = p;
    let number = n;
    let n = n.get();
    let site = shared.site.get();
    let t = site.config.timeouts;
    let max_header = site.config.limits.max_header_bytes as usize;
    // Its own container, where its last one was.
    let me = match n {
        Some(n) => match home.create_child(&format!("conn-{n}"), Attributes::default()) {
            Ok(c) => {
                rescon_rt::bind(&c);
                stream.set_container(&c);
                c
            }
            Err(e) => {
                tracing::warn!(parent = %home.name(), error = %e, "no container for a connection; it is served in its parent's");
                home.clone()
            }
        },
        None => home.clone(),
    };
    // The first request's head is due by the deadline from the connection's start.
    let mut head = first.then(|| deadline.instant());
    if proto == Proto::Http2 {
        let h2 = site.config.http2;
        let state = Arc::new(ConnState::new());
        let io = super::h2guard::H2Guard::new(stream, me.clone(), &h2);
        let io = IdleClose::new(io, state.clone(), &t, Bytes::new(), head, timer);
        // With `http2.stream_containers`, each stream's container (see `StreamExec`).
        let streams = (h2.stream_containers && n.is_some()).then(|| me.clone());
        let svc = Service(
            ConnCtx {
                shared: shared.clone(),
                state,
                peer,
                local,
                class,
                me,
                stream: RefCell::new(None),
                streams: Cell::new(0),
                home: RefCell::new(home),
                site: RefCell::new(site),
                placed: Cell::new(placed),
                last_host: RefCell::new((0, Vec::new(), 0)),
                cell: RefCell::new(None),
            },
            streams.is_some(),
        );
        let conn = hyper::server::conn::http2::Builder::new(StreamExec(streams))
            .timer(rescon_rt::HyperTimer::current())
            .max_concurrent_streams(h2.max_concurrent_streams)
            .max_header_list_size(max_header.try_into().unwrap_or(u32::MAX))
            .serve_connection(io, svc);
        // A graceful stop lets the streams under way finish, then closes (at once if idle).
        let mut conn = std::pin::pin!(conn);
        let mut told = false;
        let _ = std::future::poll_fn(|cx| {
            if !told && stop.stopping(cx) {
                told = true;
                conn.as_mut().graceful_shutdown();
            }
            conn.as_mut().poll(cx)
        })
        .await;
        return None;
    }
    let mut prefix = first_bytes;
    loop {
        let state = Arc::new(ConnState::new());
        let io = IdleClose::new(stream, state.clone(), &t, prefix, head, timer);
        let svc = Service(
            ConnCtx {
                shared: shared.clone(),
                state: state.clone(),
                peer,
                local,
                class: class.clone(),
                me: me.clone(),
                stream: RefCell::new(None),
                streams: Cell::new(0),
                home: RefCell::new(home),
                site: RefCell::new(site.clone()),
                placed: Cell::new(placed),
                last_host: RefCell::new((0, Vec::new(), 0)),
                cell: RefCell::new(None),
            },
            false,
        );
        let mut conn = hyper::server::conn::http1::Builder::new()
            .timer(rescon_rt::HyperTimer::current())
            // The head's timeout is IdleClose's, with the keep-alive one.
            .header_read_timeout(None)
            .max_buf_size(max_header.max(8192))
            .keep_alive(true)
            .serve_connection(io, svc);
        // A graceful stop lets the request under way finish, then closes (at once if idle).
        let (mut told, mut parking) = (false, false);
        let r = std::future::poll_fn(|cx| {
            if !told && stop.stopping(cx) {
                told = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            loop {
                if parking {
                    return conn.poll_without_shutdown(cx);
                }
                match Pin::new(&mut conn).poll(cx) {
                    Poll::Pending if !told && state.may_park(t.park.is_zero()) => {
                        parking = true;
                        if state.done.load(Relaxed) == 0 {
                            // Woken for nothing: this hyper has read nothing and begun no
                            // request, so it has nothing to finish. (Told to stop before its
                            // first request, it would only turn keep-alive off and wait on.)
                            return Poll::Ready(Ok(()));
                        }
                        // Between requests, nothing buffered to send: hyper closes at once,
                        // and gives back the socket instead of shutting it down.
                        Pin::new(&mut conn).graceful_shutdown();
                    }
                    r => return r,
                }
            }
        })
        .await;
        if !parking || r.is_err() {
            // Ended (closed by hyper after its last response, or an error): the socket is
            // closed when dropped.
            return None;
        }
        let parts = conn.into_parts();
        let ctx = parts.service.0;
        placed = ctx.placed.get();
        home = ctx.home.into_inner();
        (stream, timer) = parts.io.into_parts();
        if !parts.read_buf.is_empty() {
            // Bytes of a next request came before hyper stopped: a new hyper takes them first.
            prefix = parts.read_buf;
            head = None;
            continue;
        }
        // Parks: charged to where its container was until it wakes; the container goes.
        if n.is_some() {
            rescon_rt::bind(&home);
            stream.set_container(&home);
        }
        stream.park();
        let answered = state.done.load(Relaxed) > 0;
        return Some(Parked {
            stream,
            shared,
            peer,
            local,
            class,
            home,
            n: number,
            placed,
            _guard,
            stop,
            timer,
            // Woken for nothing (no byte came), it waits again as it did.
            deadline: if answered {
                Ns::of(state.done_at() + t.keep_alive)
            } else {
                deadline
            },
            first: first && !answered,
            proto,
        });
    }
}

/// The connection's requests, as hyper calls them; `true`: each in a container of its own
/// (HTTP/2 with `http2.stream_containers`).
struct Service(ConnCtx, bool);

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = Reply;

    fn call(&self, req: Request<Incoming>) -> Reply {
        if self.1 {
            return self.call_in_stream_container(req);
        }
        super::request::serve(&self.0, req)
    }
}

impl Service {
    /// An HTTP/2 stream's request with `http2.stream_containers`: served in a child container
    /// of its own, `stream-N` under the connection's, which it is charged to; the task hyper
    /// spawns next for the stream ([`StreamExec`]) is bound to it too. The container goes when
    /// the last of the two lets it go (the response's end, the task's end), and its usage
    /// folds into the connection's.
    fn call_in_stream_container(&self, req: Request<Incoming>) -> Reply {
        let ctx = &self.0;
        let k = ctx.streams.get() + 1;
        ctx.streams.set(k);
        let c = match ctx
            .me
            .create_child(&format!("stream-{k}"), Attributes::default())
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(parent = %ctx.me.name(), error = %e, "no container for an HTTP/2 stream; it is served in its connection's");
                return super::request::serve(ctx, req);
            }
        };
        // Left bound for the spawn that follows the call; `StreamExec` binds back.
        rescon_rt::bind(&c);
        *ctx.stream.borrow_mut() = Some(c);
        let reply = super::request::serve(ctx, req);
        *ctx.stream.borrow_mut() = None;
        reply
    }
}

/// hyper's executor for an HTTP/2 connection: runs each stream's future in the container the
/// connection's task is bound to.
///
/// Without stream containers (`None`) a stream's future is polled once here, inside the
/// connection's poll, and spawned as a task only if it is not done then. hyper calls the
/// service and hands the stream's future over as soon as a request's HEADERS are read; for
/// a response that is ready at once (a static file, an error) that first poll sends the
/// whole response into h2's queue, and the connection, still in the same poll, writes it
/// out. A task per stream instead cost a spawn, a poll of its own and a second poll of the
/// connection to write what it queued, for every request (`rescon-bench paper --only 10`,
/// HTTP/2: see the commit that made this change). The first poll runs with a waker that
/// does nothing: a future not done then is spawned, and its task polls it again at once,
/// which registers the task's waker wherever the first poll registered the other.
///
/// With stream containers (`Some`: the connection's container), hyper spawns a stream's
/// task right after calling the service for its request, which left the task bound to the
/// stream's container: the stream's task is bound to it, and the connection's task back to
/// its own.
#[derive(Clone)]
struct StreamExec(Option<Container>);

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        match &self.0 {
            None => {
                let mut fut = Box::pin(fut);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                if fut.as_mut().poll(&mut cx).is_pending() {
                    drop(rescon_rt::spawn(fut));
                }
            }
            Some(me) => {
                drop(rescon_rt::spawn(fut));
                rescon_rt::bind(me);
            }
        }
    }
}

/// What a busy connection's reads, writes and requests share (each field written by one side
/// only; all on the connection's task).
pub(crate) struct ConnState {
    /// Requests whose head has arrived, and those whose response has gone out (or been
    /// dropped): equal between requests.
    started: AtomicU64,
    done: AtomicU64,
    /// When the last response was done, in nanoseconds after `born`.
    done_ns: AtomicU64,
    born: Instant,
    /// Bytes given to hyper (read, or handed on from the last hyper), and that count when the
    /// last response was done.
    read: AtomicU64,
    read_at_done: AtomicU64,
    /// The last request came with a body.
    body: AtomicBool,
    /// A write waits for the client to take data.
    write_blocked: AtomicBool,
    /// The quiet since the last response has lasted `timeouts.park`.
    park: AtomicBool,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            started: AtomicU64::new(0),
            done: AtomicU64::new(0),
            done_ns: AtomicU64::new(0),
            born: Instant::now(),
            read: AtomicU64::new(0),
            read_at_done: AtomicU64::new(0),
            body: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
            park: AtomicBool::new(false),
        }
    }

    fn done_at(&self) -> Instant {
        self.born + Duration::from_nanos(self.done_ns.load(Relaxed))
    }

    /// Whether hyper may be stopped to park the connection: no request under way, nothing
    /// read since the last response (or, woken for nothing, ever), nothing waiting to be
    /// sent, no request body hyper may still be reading; and after a response, the quiet has
    /// lasted `timeouts.park` (`now`: it is zero).
    fn may_park(&self, now: bool) -> bool {
        let done = self.done.load(Relaxed);
        self.started.load(Relaxed) == done
            && self.read.load(Relaxed) == self.read_at_done.load(Relaxed)
            && !self.write_blocked.load(Relaxed)
            && !self.body.load(Relaxed)
            && (done == 0 || now || self.park.load(Relaxed))
    }
}

/// A request under way on a connection: counted begun when made, done (and when) when ended
/// ([`ReqDone::end`], as the response's statistics are recorded) or dropped, as hyper drops
/// the response's body.
pub(crate) struct ReqDone(Option<Arc<ConnState>>);

impl ReqDone {
    /// A request begins; `body`: it came with a body (hyper reads it as it is taken).
    pub(crate) fn begin(c: &Arc<ConnState>, body: bool) -> ReqDone {
        // One writer (the connection's task): no read-modify-write needed.
        c.started.store(c.started.load(Relaxed) + 1, Relaxed);
        c.body.store(body, Relaxed);
        // The quiet that counts towards parking starts again after this response.
        c.park.store(false, Relaxed);
        ReqDone(Some(c.clone()))
    }

    /// The request is done at `now` (a clock reading the caller has taken anyway); once.
    pub(crate) fn end(&mut self, now: Instant) {
        let Some(c) = self.0.take() else { return };
        c.done_ns.store(
            now.saturating_duration_since(c.born).as_nanos() as u64,
            Relaxed,
        );
        c.read_at_done.store(c.read.load(Relaxed), Relaxed);
        // HTTP/2's responses end in their streams' tasks, which may run at once on two
        // workers: an atomic add.
        c.done.fetch_add(1, Relaxed);
    }
}

impl Drop for ReqDone {
    fn drop(&mut self) {
        if self.0.is_some() {
            self.end(super::respond::now());
        }
    }
}

/// A connection's one timer, moved lazily: set for a deadline at or before the one wanted, it
/// is left there, and when it fires early it is set again for the one wanted. Between
/// kept-alive requests each wait ends later than the one before, so the timer moves once per
/// period, not once per request.
#[derive(Default)]
pub(crate) struct Timer(Option<(rescon_rt::Sleep, Ns)>);

/// An [`Instant`] in one word: nanoseconds since the first one this process converted, exact
/// both ways (an instant before that one, long past, reads as it). A parked connection keeps
/// two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ns(u64);

impl Ns {
    fn base() -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    fn of(at: Instant) -> Ns {
        Ns(at.saturating_duration_since(Ns::base()).as_nanos() as u64)
    }

    fn instant(self) -> Instant {
        Ns::base() + Duration::from_nanos(self.0)
    }
}

impl Timer {
    /// Ready once `deadline` has passed; else the task is woken then (or earlier).
    fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let (instant, deadline) = (deadline, Ns::of(deadline));
        loop {
            let (t, at) = match &mut self.0 {
                Some((t, at)) => {
                    if *at > deadline {
                        t.reset(instant);
                        *at = deadline;
                    }
                    (t, at)
                }
                None => {
                    // Kept from wait to wait while the connection lives, parked or not (see
                    // `alloc::idle_state`).
                    let sleep = crate::alloc::idle_state(|| rescon_rt::sleep_until(instant));
                    let (t, at) = self.0.insert((sleep, deadline));
                    (t, at)
                }
            };
            if Pin::new(&mut *t).poll(cx).is_pending() {
                return Poll::Pending;
            }
            if *at >= deadline {
                return Poll::Ready(());
            }
            // Fired for an earlier wait: set for this one.
            t.reset(instant);
            *at = deadline;
        }
    }
}

/// A connection's reads, under the two timeouts of waiting for a request: `timeouts.header`
/// for a request's head (from the connection's start for the first, from its first byte for
/// the next ones), and `timeouts.keep_alive` for the quiet between a response and the next
/// request's first byte; and its writes, under `timeouts.send`. It also says when the quiet
/// has lasted `timeouts.park` ([`ConnState::may_park`]).
///
/// hyper has one timer, the head's, which it also runs between requests: with it, an idle
/// kept-alive connection stayed open for the header timeout and `keep_alive` did nothing.
/// Both are kept here instead, with one timer per connection ([`Timer`]). hyper does not read
/// again when a response ends (its last read, during the request, is still pending), so while
/// a request is served the timer is set a keep-alive period ahead (a park period, when that is
/// shorter), and when it fires the wait is judged from when the response ended. When the quiet runs out, reading reports the end
/// of the stream, which hyper takes, between requests, as the client closing: the connection
/// ends cleanly. A head that runs out of time is an error: the connection ends, as it did
/// with hyper's timer.
///
/// One case is judged wrong: a next request's head sent before the response (pipelined) and
/// left incomplete waits under `keep_alive`, not `header`, since the bytes that hyper holds
/// unparsed cannot be told from the request's own.
pub(crate) struct IdleClose<S> {
    io: S,
    conn: Arc<ConnState>,
    header: Duration,
    keep_alive: Duration,
    /// `timeouts.park`, or `None` when it is zero (the connection stage parks at once, not
    /// on this timer) or not shorter than `keep_alive`.
    park: Option<Duration>,
    /// Bytes the last hyper read and did not parse: given out before the stream's.
    prefix: Bytes,
    /// The connection's `done` count when this wait began.
    seen_done: u64,
    /// A byte has come since then.
    read_since: bool,
    /// This wait's park time has come.
    park_asked: bool,
    /// What the wait is for, and until when.
    deadline: Option<(Waiting, Instant)>,
    timer: Timer,
    send: Duration,
    /// Until when the write under way may wait for the client to take data.
    send_deadline: Option<Instant>,
    send_timer: Option<rescon_rt::Sleep>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Waiting {
    /// For a response: only to look again then.
    Serving,
    /// For the next request's first byte.
    Quiet,
    /// For the rest of a request's head.
    Head,
}

impl<S: Stream> IdleClose<S> {
    /// `prefix`: bytes to read before the stream's; `head`: the first request's head is due
    /// by then (else `timeouts.header` after the first wait begins).
    pub(crate) fn new(
        io: S,
        conn: Arc<ConnState>,
        t: &Timeouts,
        prefix: Bytes,
        head: Option<Instant>,
        timer: Timer,
    ) -> Self {
        IdleClose {
            io,
            conn,
            header: t.header,
            keep_alive: t.keep_alive,
            park: (!t.park.is_zero() && t.park < t.keep_alive).then_some(t.park),
            prefix,
            seen_done: 0,
            read_since: false,
            park_asked: false,
            deadline: head.map(|d| (Waiting::Head, d)),
            timer,
            send: t.send,
            send_deadline: None,
            send_timer: None,
        }
    }

    /// The stream and the timer back.
    pub(crate) fn into_parts(self) -> (S, Timer) {
        (self.io, self.timer)
    }

    /// A write made progress (`Ready`) or waits for room: the connection ends with an error
    /// once a write has waited `timeouts.send`, as nginx's `send_timeout` does, so a client
    /// that stops reading does not hold its connection (and its class's connection slot)
    /// for ever.
    fn sent<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.send_deadline = None;
            self.conn.write_blocked.store(false, Relaxed);
            return r;
        }
        self.conn.write_blocked.store(true, Relaxed);
        let deadline = *self
            .send_deadline
            .get_or_insert_with(|| Instant::now() + self.send);
        let timer = self
            .send_timer
            .get_or_insert_with(|| rescon_rt::sleep_until(deadline));
        timer.reset(deadline);
        match Pin::new(timer).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no data for timeouts.send",
            ))),
        }
    }

    /// What the connection waits for now, and until when.
    fn wait(&mut self, done: u64) -> (Waiting, Instant) {
        let waiting = if self.conn.started.load(Relaxed) != done {
            Waiting::Serving
        } else if done > 0 && !self.read_since {
            Waiting::Quiet
        } else {
            Waiting::Head
        };
        let d = match (waiting, self.deadline) {
            (w, Some((was, d))) if w == was => d,
            (Waiting::Quiet, _) => self.conn.done_at() + self.keep_alive,
            // Looked at again a park period ahead when there is one, so that the quiet
            // after the response is seen in time to park.
            (Waiting::Serving, _) => Instant::now() + self.park.unwrap_or(self.keep_alive),
            (Waiting::Head, _) => Instant::now() + self.header,
        };
        self.deadline = Some((waiting, d));
        (waiting, d)
    }

    fn count(&mut self, n: usize) {
        self.read_since |= n > 0;
        let c = &self.conn;
        c.read.store(c.read.load(Relaxed) + n as u64, Relaxed);
    }
}

impl<S: Stream> hyper::rt::Read for IdleClose<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let done = this.conn.done.load(Relaxed);
        if done != this.seen_done {
            // A response went out: a new wait begins.
            this.seen_done = done;
            this.read_since = false;
            this.park_asked = false;
            this.deadline = None;
        }
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            this.count(n);
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.io).poll_read_count(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.count(n);
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        loop {
            let (waiting, deadline) = this.wait(done);
            // The quiet after a response may end in parking first (the connection stage does
            // it, once hyper is between requests).
            let park_at = match (waiting, this.park) {
                (Waiting::Quiet, Some(p)) if !this.park_asked => {
                    Some(this.conn.done_at() + p).filter(|&at| at < deadline)
                }
                _ => None,
            };
            if this
                .timer
                .poll_until(cx, park_at.unwrap_or(deadline))
                .is_pending()
            {
                return Poll::Pending;
            }
            if park_at.is_some() {
                this.park_asked = true;
                this.conn.park.store(true, Relaxed);
                // On to the keep-alive deadline, in case the connection does not park.
                continue;
            }
            match waiting {
                // Still serving after a keep-alive period: look again in another.
                Waiting::Serving => this.deadline = None,
                // The end of the stream, with nothing read: hyper closes the connection.
                Waiting::Quiet => return Poll::Ready(Ok(())),
                Waiting::Head => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request head took longer than timeouts.header",
                    )));
                }
            }
        }
    }
}

impl<S: Stream> hyper::rt::Write for IdleClose<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.sent(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.sent(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// A parked cleartext connection's task is its [`Parked`] record and the task's header,
    /// in one allocation: what it weighs decides the allocator's size class it takes (448 B
    /// and 512 B are neighbouring classes of mimalloc's). `rescon-bench memory` counts it.
    #[test]
    fn a_parked_connection_s_future_stays_small() {
        let sizes = [
            ("TcpStream", size_of::<rescon_rt::TcpStream>()),
            ("Arc<Shared>", size_of::<Arc<Shared>>()),
            ("peer + local", 2 * size_of::<SocketAddr>()),
            ("class", size_of::<Arc<str>>()),
            ("home", size_of::<Container>()),
            ("n", size_of::<ConnNumber>()),
            ("placed", size_of::<Placed>()),
            ("guard", size_of::<Option<ConnGuard>>()),
            ("stop", size_of::<StopWatch>()),
            ("timer", size_of::<Timer>()),
            ("deadline", size_of::<Ns>()),
        ];
        let parked = size_of::<Parked<rescon_rt::TcpStream>>();
        let task = size_of::<super::super::tls::Serve>();
        for (what, n) in sizes {
            eprintln!("{what:>14}: {n:>3} B");
        }
        eprintln!(
            "{:>14}: {parked:>3} B (fields {} B)",
            "Parked",
            sizes.iter().map(|s| s.1).sum::<usize>()
        );
        eprintln!("{:>14}: {task:>3} B", "Serve");
        assert!(task <= 384, "a parked connection's future is {task} B");
    }
}
