//! Stage: a client connection. hyper over any byte stream ([`Stream`]: a TCP socket or a TLS
//! session) with the waits' timeouts ([`IdleClose`]: request head, keep-alive quiet, stalled
//! sends) and the graceful stop, in HTTP/1.1 or HTTP/2 ([`Proto`]: HTTP/2 through hyper's h2,
//! its streams run as tasks in the connection's container, its frames metered by
//! [`H2Guard`](super::h2guard)); each request goes to [`request::serve`](super::request::serve).

use super::request::{ConnCtx, Reply};
use super::respond::ResBody;
use super::{Shared, placement::Placed};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::rt::ReadBufCursor;
use rescon::{ConnGuard, Container};
use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What the connection stage needs of a byte stream: hyper's reads and writes, and reads that
/// say how many bytes came (an idle timeout must stop once a request begins to arrive, and
/// hyper's read cursor does not tell).
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
}

impl Stream for rescon_rt::TcpStream {
    fn poll_read_count(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<usize>> {
        self.poll_read_hyper(cx, buf)
    }
}

/// A connection as accepted: who and where, its class and container.
pub(crate) struct Accepted<S> {
    pub(crate) stream: S,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) class: Arc<str>,
    /// The connection's container (its task runs in it).
    pub(crate) container: Container,
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

/// Serves a connection until it ends (the client closes, a timeout, a graceful stop).
pub(crate) async fn serve_conn<S: Stream>(shared: Arc<Shared>, conn: Accepted<S>, proto: Proto) {
    let site = shared.site.get();
    let t = site.config.timeouts;
    let max_header = site.config.limits.max_header_bytes as usize;
    let h2 = site.config.http2;
    let stop = shared.stop.watch(true);
    let state = Arc::new(ConnState {
        started: AtomicU64::new(0),
        done: AtomicU64::new(0),
        done_ns: AtomicU64::new(0),
        born: Instant::now(),
    });
    let _guard = conn.guard;
    let me = conn.container.clone();
    let svc = Service(ConnCtx {
        shared,
        state: state.clone(),
        peer: conn.peer,
        local: conn.local,
        class: conn.class,
        me: conn.container,
        site: RefCell::new(site),
        placed: Cell::new(Placed::default()),
        last_host: RefCell::new((0, Vec::new(), 0)),
    });
    if proto == Proto::Http2 {
        let io = super::h2guard::H2Guard::new(conn.stream, me, &h2);
        let io = IdleClose::new(io, state, &t);
        let conn = hyper::server::conn::http2::Builder::new(rescon_rt::HyperExecutor)
            .timer(rescon_rt::HyperTimer::current())
            .max_concurrent_streams(h2.max_concurrent_streams)
            .max_header_list_size(max_header.try_into().unwrap_or(u32::MAX))
            .serve_connection(io, svc);
        return drive(conn, stop, |c| c.graceful_shutdown()).await;
    }
    let io = IdleClose::new(conn.stream, state, &t);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(rescon_rt::HyperTimer::current())
        // The head's timeout is IdleClose's, with the keep-alive one.
        .header_read_timeout(None)
        .max_buf_size(max_header.max(8192))
        .keep_alive(true)
        .serve_connection(io, svc);
    drive(conn, stop, |c| c.graceful_shutdown()).await
}

/// Runs a connection to its end. A graceful stop lets the requests under way finish, then
/// closes (at once if idle).
async fn drive<C: Future>(
    conn: C,
    mut stop: super::stop::StopWatch,
    mut graceful: impl FnMut(Pin<&mut C>),
) {
    let mut conn = std::pin::pin!(conn);
    let mut told = false;
    let _ = std::future::poll_fn(|cx| {
        if !told && stop.stopping(cx) {
            told = true;
            graceful(conn.as_mut());
        }
        conn.as_mut().poll(cx)
    })
    .await;
}

/// The connection's requests, as hyper calls them.
struct Service(ConnCtx);

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = Reply;

    fn call(&self, req: Request<Incoming>) -> Reply {
        super::request::serve(&self.0, req)
    }
}

/// What a connection's reads and its requests share: counts of requests begun and done, so
/// the reads know whether a request is being served (each written by one side only).
pub(crate) struct ConnState {
    /// Requests whose head has arrived, and those whose response has gone out (or been
    /// dropped): equal between requests.
    started: AtomicU64,
    done: AtomicU64,
    /// When the last response was done, in nanoseconds after `born`.
    done_ns: AtomicU64,
    born: Instant,
}

impl ConnState {
    fn done_at(&self) -> Instant {
        self.born + Duration::from_nanos(self.done_ns.load(Relaxed))
    }
}

/// A request under way on a connection: counted begun when made, done (and when) when
/// dropped, as hyper drops the response's body.
pub(crate) struct ReqDone(Arc<ConnState>);

impl ReqDone {
    pub(crate) fn begin(c: &Arc<ConnState>) -> ReqDone {
        // One writer (the connection's task): no read-modify-write needed.
        c.started.store(c.started.load(Relaxed) + 1, Relaxed);
        ReqDone(c.clone())
    }
}

impl Drop for ReqDone {
    fn drop(&mut self) {
        let c = &self.0;
        c.done_ns.store(c.born.elapsed().as_nanos() as u64, Relaxed);
        // HTTP/2's responses end in their streams' tasks, which may run at once on two
        // workers: an atomic add.
        c.done.fetch_add(1, Relaxed);
    }
}

/// A connection's reads, under the two timeouts of waiting for a request: `timeouts.header`
/// for a request's head (from the connection's start for the first, from its first byte for
/// the next ones), and `timeouts.keep_alive` for the quiet between a response and the next
/// request's first byte; and its writes, under `timeouts.send`.
///
/// hyper has one timer, the head's, which it also runs between requests: with it, an idle
/// kept-alive connection stayed open for the header timeout and `keep_alive` did nothing.
/// Both are kept here instead, with one timer per connection. hyper does not read again when
/// a response ends (its last read, during the request, is still pending), so while a request
/// is served the timer is set a keep-alive period ahead, and when it fires the wait is judged
/// from when the response ended. When the quiet runs out, reading reports the end of the
/// stream, which hyper takes, between requests, as the client closing: the connection ends
/// cleanly. A head that runs out of time is an error: the connection ends, as it did with
/// hyper's timer.
///
/// The timer is moved lazily: a wait whose deadline is later than the one the timer is set
/// for leaves it there, and when it fires early the wait sets it again for its own deadline.
/// Between kept-alive requests each wait ends later than the one before, so the timer is
/// moved once per keep-alive period, not once per request.
///
/// One case is judged wrong: a next request's head sent before the response (pipelined) and
/// left incomplete waits under `keep_alive`, not `header`, since the bytes that hyper holds
/// unparsed cannot be told from the request's own.
pub(crate) struct IdleClose<S> {
    io: S,
    conn: Arc<ConnState>,
    header: Duration,
    keep_alive: Duration,
    /// The connection's `done` count when this wait began.
    seen_done: u64,
    /// A byte has come since then.
    read_since: bool,
    /// What the wait is for, and until when.
    deadline: Option<(Waiting, Instant)>,
    /// Made by the first wait; with the time it is set for (at or before the deadline).
    timer: Option<(rescon_rt::Sleep, Instant)>,
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
    pub(crate) fn new(io: S, conn: Arc<ConnState>, t: &crate::config::Timeouts) -> Self {
        IdleClose {
            io,
            conn,
            header: t.header,
            keep_alive: t.keep_alive,
            seen_done: 0,
            read_since: false,
            deadline: None,
            timer: None,
            send: t.send,
            send_deadline: None,
            send_timer: None,
        }
    }

    /// A write made progress (`Ready`) or waits for room: the connection ends with an error
    /// once a write has waited `timeouts.send`, as nginx's `send_timeout` does, so a client
    /// that stops reading does not hold its connection (and its class's connection slot)
    /// for ever.
    fn sent<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.send_deadline = None;
            return r;
        }
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
            (Waiting::Serving, _) => Instant::now() + self.keep_alive,
            (Waiting::Head, _) => Instant::now() + self.header,
        };
        self.deadline = Some((waiting, d));
        (waiting, d)
    }
}

impl<S: Stream> hyper::rt::Read for IdleClose<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let done = this.conn.done.load(Relaxed);
        if done != this.seen_done {
            // A response went out: a new wait begins.
            this.seen_done = done;
            this.read_since = false;
            this.deadline = None;
        }
        match Pin::new(&mut this.io).poll_read_count(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.read_since |= n > 0;
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        loop {
            let (waiting, deadline) = this.wait(done);
            let timer = match &mut this.timer {
                // Set for this deadline or an earlier one: left alone (see the type's docs).
                Some((t, at)) if *at <= deadline => t,
                Some((t, at)) => {
                    t.reset(deadline);
                    *at = deadline;
                    t
                }
                None => {
                    &mut this
                        .timer
                        .insert((rescon_rt::sleep_until(deadline), deadline))
                        .0
                }
            };
            if Pin::new(&mut *timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Fired: early, for an older wait, or at this wait's deadline.
            if Instant::now() < deadline {
                timer.reset(deadline);
                if let Some((_, at)) = &mut this.timer {
                    *at = deadline;
                }
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
