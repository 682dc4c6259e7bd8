//! A client connection: hyper over the connection's reads and writes with their timeouts
//! (request head, keep-alive quiet, stalled sends), and the graceful stop.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

/// A graceful stop: set once (by SIGQUIT); the accept loops and connections registered here
/// are woken to look, and each connection is counted until it ends.
#[derive(Default)]
pub(super) struct Stop {
    on: AtomicBool,
    /// The wakers of the tasks that watch, under their keys.
    waiters: Mutex<HashMap<u64, std::task::Waker>>,
    next: AtomicU64,
    /// Connections that have not ended.
    pub(super) live: AtomicUsize,
}

impl Stop {
    /// Sets the stop and wakes every watcher.
    pub(super) fn begin(&self) {
        self.on.store(true, SeqCst);
        let waiters = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|e| e.into_inner()));
        for w in waiters.into_values() {
            w.wake();
        }
    }

    fn is_on(&self) -> bool {
        self.on.load(SeqCst)
    }

    /// A watch for one task; `counted` for a connection (ended when the watch drops).
    pub(super) fn watch(self: &Arc<Self>, counted: bool) -> StopWatch {
        if counted {
            self.live.fetch_add(1, Relaxed);
        }
        StopWatch {
            stop: self.clone(),
            key: None,
            counted,
        }
    }
}

/// One task's view of the [`Stop`]: registers its waker on the first look.
pub(super) struct StopWatch {
    stop: Arc<Stop>,
    key: Option<u64>,
    counted: bool,
}

impl StopWatch {
    /// Whether the stop has begun; if not, the task is woken when it does. A task's waker
    /// stays valid for the task's life, so it is registered once.
    pub(super) fn stopping(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if self.stop.is_on() {
            return true;
        }
        if self.key.is_none() {
            let key = self.stop.next.fetch_add(1, Relaxed);
            self.stop
                .waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, cx.waker().clone());
            self.key = Some(key);
            // Begun between the look and the registration: its wake-up went by.
            return self.stop.is_on();
        }
        false
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.stop
                .waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
        if self.counted {
            self.stop.live.fetch_sub(1, Relaxed);
        }
    }
}

pub(super) async fn serve_conn(
    shared: Arc<Shared>,
    conn: rescon_rt::TcpStream,
    peer: SocketAddr,
    class: String,
    _guard: Option<rescon::ConnGuard>,
) {
    let local = conn
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let site = shared.site();
    let t = &site.config.timeouts;
    let max_header = site.config.limits.max_header_bytes as usize;
    let mut stop = shared.stop.watch(true);
    let sh = shared.clone();
    let state = Arc::new(ConnState {
        class,
        placed: Mutex::new(None),
        started: AtomicU64::new(0),
        done: AtomicU64::new(0),
        done_ns: AtomicU64::new(0),
        born: Instant::now(),
    });
    let io = IdleClose::new(conn, state.clone(), t);
    let svc = hyper::service::service_fn(move |req| {
        let sh = sh.clone();
        let state = state.clone();
        state.started.fetch_add(1, Relaxed);
        let cpu = sh.log_on.load(Relaxed).then(|| Arc::new(ReqCpu::default()));
        let cpu2 = cpu.clone();
        Timed {
            inner: async move {
                let (resp, log) = handle(sh, req, peer, local, &state, cpu.as_ref()).await;
                Ok::<_, Infallible>(resp.map(|inner| ResBody {
                    inner,
                    log,
                    _done: ReqDone(state),
                }))
            },
            cpu: cpu2,
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(rescon_rt::HyperTimer::current())
        // The head's timeout is IdleClose's, with the keep-alive one.
        .header_read_timeout(None)
        .max_buf_size(max_header.max(8192))
        .keep_alive(true)
        .serve_connection(io, svc);
    // A graceful stop lets the request under way finish, then closes (at once if idle).
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
}

/// What a connection's requests share.
pub(super) struct ConnState {
    /// The client class it was accepted in.
    pub(super) class: String,
    /// The vhost its container was last placed under.
    pub(super) placed: Mutex<Option<String>>,
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

/// Counts a response as done, and when, as hyper drops its body.
pub(super) struct ReqDone(Arc<ConnState>);

impl Drop for ReqDone {
    fn drop(&mut self) {
        let c = &self.0;
        c.done_ns.store(c.born.elapsed().as_nanos() as u64, Relaxed);
        c.done.fetch_add(1, Relaxed);
    }
}

/// A connection's reads, under the two timeouts of waiting for a request: `timeouts.header`
/// for a request's head (from the connection's start for the first, from its first byte for
/// the next ones), and `timeouts.keep_alive` for the quiet between a response and the next
/// request's first byte.
///
/// hyper has one timer, the head's, which it also runs between requests: with it, an idle
/// kept-alive connection stayed open for the header timeout and `keep_alive` did nothing.
/// Both are kept here instead, with one timer per connection moved from deadline to deadline
/// (hyper made a new one for every request). hyper does not read again when a response ends
/// (its last read, during the request, is still pending), so while a request is served the
/// timer is set a keep-alive period ahead, and when it fires the wait is judged from when the
/// response ended. When the quiet runs out, reading reports the end of the stream, which
/// hyper takes, between requests, as the client closing: the connection ends cleanly. A head
/// that runs out of time is an error: the connection ends, as it did with hyper's timer.
///
/// One case is judged wrong: a next request's head sent before the response (pipelined) and
/// left incomplete waits under `keep_alive`, not `header`, since the bytes that hyper holds
/// unparsed cannot be told from the request's own.
struct IdleClose {
    io: rescon_rt::TcpStream,
    conn: Arc<ConnState>,
    header: Duration,
    keep_alive: Duration,
    /// The connection's `done` count when this wait began.
    seen_done: u64,
    /// A byte has come since then.
    read_since: bool,
    /// What the timer is set for, and until when.
    deadline: Option<(Waiting, Instant)>,
    /// Made by the first wait, moved for the later ones; with the deadline it is set for.
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

impl IdleClose {
    fn new(io: rescon_rt::TcpStream, conn: Arc<ConnState>, t: &crate::config::Timeouts) -> Self {
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
    fn sent<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
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
        match std::pin::Pin::new(timer).poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
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
            (Waiting::Quiet, _) => self.conn.done_at() + self.keep_alive,
            (w, Some((was, d))) if w == was => d,
            (Waiting::Serving, _) => Instant::now() + self.keep_alive,
            (Waiting::Head, _) => Instant::now() + self.header,
        };
        self.deadline = Some((waiting, d));
        (waiting, d)
    }
}

impl hyper::rt::Read for IdleClose {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        let done = this.conn.done.load(Relaxed);
        if done != this.seen_done {
            // A response went out: a new wait begins.
            this.seen_done = done;
            this.read_since = false;
            this.deadline = None;
        }
        match this.io.poll_read_hyper(cx, buf) {
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
                // Set already for this deadline (a wait polled again): no conversion.
                Some((t, at)) if *at == deadline => t,
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
            if std::pin::Pin::new(timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
            match waiting {
                // Still serving after a keep-alive period: look again in another.
                Waiting::Serving => this.deadline = None,
                // The end of the stream, with nothing read: hyper closes the connection.
                Waiting::Quiet => return Poll::Ready(Ok(())),
                Waiting::Head => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request head took longer than timeouts.header",
                    )));
                }
            }
        }
    }
}

impl hyper::rt::Write for IdleClose {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = hyper::rt::Write::poll_write(std::pin::Pin::new(&mut self.io), cx, buf);
        self.sent(cx, r)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = hyper::rt::Write::poll_write_vectored(std::pin::Pin::new(&mut self.io), cx, bufs);
        self.sent(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.io)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        hyper::rt::Write::poll_flush(std::pin::Pin::new(&mut self.io), cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        hyper::rt::Write::poll_shutdown(std::pin::Pin::new(&mut self.io), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct CountWake(AtomicU64);

    impl std::task::Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn a_stop_wakes_its_watchers_once_and_counts_connections() {
        let stop = Arc::new(Stop::default());
        let wakes = Arc::new(CountWake(AtomicU64::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut conn = stop.watch(true);
        let mut loop_ = stop.watch(false);
        assert!(!conn.stopping(&mut cx) && !loop_.stopping(&mut cx));
        assert!(
            !conn.stopping(&mut cx),
            "registered once, still not stopping"
        );
        assert_eq!(stop.live.load(Relaxed), 1, "only connections count");
        stop.begin();
        assert_eq!(wakes.0.load(Relaxed), 2, "each watcher woken");
        assert!(conn.stopping(&mut cx) && loop_.stopping(&mut cx));
        // A watch that first looks after the stop began sees it at once.
        let mut late = stop.watch(true);
        assert!(late.stopping(&mut cx));
        assert_eq!(stop.live.load(Relaxed), 2);
        drop((conn, late, loop_));
        assert_eq!(stop.live.load(Relaxed), 0);
        assert!(stop.waiters.lock().unwrap().is_empty());
        assert_eq!(wakes.0.load(Relaxed), 2, "no wake after the stop");
    }

    #[test]
    fn a_dropped_watch_leaves_no_waker_behind() {
        let stop = Arc::new(Stop::default());
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        for _ in 0..3 {
            let mut w = stop.watch(true);
            assert!(!w.stopping(&mut cx));
        }
        assert!(stop.waiters.lock().unwrap().is_empty());
        assert_eq!(stop.live.load(Relaxed), 0);
    }
}
