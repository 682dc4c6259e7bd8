//! hyper 1.x on rescon-rt: `hyper::rt::{Read, Write}` for the streams, an
//! [`Executor`](HyperExecutor) and a [`Timer`](HyperTimer).
//!
//! ```
//! use http_body_util::Full;
//! use hyper::body::Bytes;
//! use rescon_rt::{HyperExecutor, HyperTimer, TcpListener, TcpStream};
//! let registry = rescon::Registry::new();
//! let rt = rescon_rt::Runtime::new(&registry).unwrap();
//! let web = registry.root().create_child("web", Default::default()).unwrap();
//! let status = rt.block_on(async {
//!     let listener = TcpListener::bind_in("127.0.0.1:0".parse().unwrap(), &web).unwrap();
//!     let addr = listener.local_addr().unwrap();
//!     rescon_rt::spawn_in(&web, async move {
//!         let (conn, _) = listener.accept().await.unwrap();
//!         let svc = hyper::service::service_fn(|_req| async {
//!             Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from("hi"))))
//!         });
//!         hyper::server::conn::http1::Builder::new()
//!             .timer(HyperTimer::current())
//!             .serve_connection(conn, svc)
//!             .await
//!             .unwrap();
//!     });
//!     let stream = TcpStream::connect(addr).await.unwrap();
//!     let (mut send, conn) = hyper::client::conn::http1::handshake(stream).await.unwrap();
//!     rescon_rt::spawn(conn);
//!     let req = hyper::Request::get("/").body(Full::new(Bytes::new())).unwrap();
//!     send.send_request(req).await.unwrap().status()
//! });
//! assert_eq!(status, 200);
//! # let _ = HyperExecutor;
//! ```

#![allow(unsafe_code)]

use crate::Clock;
use crate::io::{TcpStream, UnixStream};
use crate::time::Sleep;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

macro_rules! hyper_io {
    ($t:ty) => {
        impl hyper::rt::Read for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                mut buf: hyper::rt::ReadBufCursor<'_>,
            ) -> Poll<io::Result<()>> {
                // SAFETY: the slice is only written to (by recv(2)), never read, and only the
                // bytes recv reports written are marked initialised below.
                let dst = unsafe { buf.as_mut() };
                let n = ready!(self.sock().poll_read_uninit(cx, dst))?;
                // SAFETY: recv wrote exactly `n` bytes at the start of `dst`.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
        }

        impl hyper::rt::Write for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.sock().poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                self.sock().poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }

            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(match self.shutdown(std::net::Shutdown::Write) {
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                    r => r,
                })
            }
        }
    };
}

hyper_io!(TcpStream);
hyper_io!(UnixStream);

/// Spawns hyper's background futures (HTTP/2 streams, client connections) as tasks bound to
/// the current container.
#[derive(Clone, Copy, Debug, Default)]
pub struct HyperExecutor;

impl<F> hyper::rt::Executor<F> for HyperExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        drop(crate::spawn(fut));
    }
}

/// hyper's timers on the runtime's clock.
///
/// hyper asks a server's timer for `now` and sets a deadline from it on every request (its
/// header-read timeout). Converting between [`Instant`] and the runtime's clock by reading both
/// clocks cost two `clock_gettime` calls per request, one more than tokio's timer needs (perf:
/// the vDSO clock took 2.5% of a server thread's samples under hyper on rescon-rt, 0.8% on
/// tokio). On the monotonic clock the timer instead keeps the offset between the two clocks,
/// measured again when it is a second old (so the TSC's drift from `CLOCK_MONOTONIC`, a few
/// parts per million, cannot build up), and converts with arithmetic: `now` reads the TSC
/// once and a deadline reads no clock. On a manual clock, which jumps, it reads both clocks
/// each time, as before.
#[derive(Clone, Debug)]
pub struct HyperTimer {
    clock: Clock,
    anchor: Arc<Anchor>,
}

/// How old the offset between `Instant` and the runtime's clock may get.
const REANCHOR_NS: u64 = 1_000_000_000;

/// The offset between `Instant` and the runtime's clock, shared by a timer's clones.
#[derive(Debug)]
struct Anchor {
    /// The origin of the instants' side: an instant is `base` plus nanoseconds.
    base: Instant,
    /// The clock's reading at `base`: clock ns = ns since `base` + `offset` (wrapping).
    offset: AtomicU64,
    /// The clock's reading when `offset` was measured; 0 before the first time. Read apart
    /// from `offset`: a pair from two measurements is still a pair of good measurements.
    at: AtomicU64,
}

impl HyperTimer {
    /// A timer on the current runtime's clock.
    ///
    /// # Panics
    /// Outside a runtime.
    pub fn current() -> HyperTimer {
        HyperTimer::on(crate::context::clock())
    }

    /// A timer on `handle`'s clock.
    pub fn new(handle: &crate::Handle) -> HyperTimer {
        HyperTimer::on(handle.clock().clone())
    }

    fn on(clock: Clock) -> HyperTimer {
        HyperTimer {
            clock,
            anchor: Arc::new(Anchor {
                base: Instant::now(),
                offset: AtomicU64::new(0),
                at: AtomicU64::new(0),
            }),
        }
    }

    /// The offset, measured again if it is older than [`REANCHOR_NS`] at clock time `now`.
    fn offset(&self, now: u64) -> u64 {
        let a = &self.anchor;
        let at = a.at.load(Relaxed);
        if at != 0 && now.wrapping_sub(at) < REANCHOR_NS {
            return a.offset.load(Relaxed);
        }
        let i = Instant::now();
        let n = self.clock.now_ns();
        let off = n.wrapping_sub(i.saturating_duration_since(a.base).as_nanos() as u64);
        a.offset.store(off, Relaxed);
        a.at.store(n.max(1), Relaxed);
        off
    }

    /// The clock's nanoseconds at `at`.
    fn to_ns(&self, at: Instant) -> u64 {
        if self.clock.is_manual() {
            return self.clock.instant_to_ns(at);
        }
        let a = &self.anchor;
        let off = if a.at.load(Relaxed) == 0 {
            self.offset(self.clock.now_ns())
        } else {
            a.offset.load(Relaxed)
        };
        (at.saturating_duration_since(a.base).as_nanos() as u64).wrapping_add(off)
    }
}

impl hyper::rt::Sleep for Sleep {}

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let at = self
            .clock
            .now_ns()
            .saturating_add(duration.as_nanos() as u64);
        Box::pin(Sleep::at_ns(self.clock.clone(), at))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::at_ns(self.clock.clone(), self.to_ns(deadline)))
    }

    fn now(&self) -> Instant {
        let now = self.clock.now_ns();
        if self.clock.is_manual() {
            return self.clock.ns_to_instant(now);
        }
        let since = now.wrapping_sub(self.offset(now));
        // A clock reading before `base` (only by the measurement's error) is `base`.
        if since > u64::MAX / 2 {
            self.anchor.base
        } else {
            self.anchor.base + Duration::from_nanos(since)
        }
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        let ns = self.to_ns(new_deadline);
        if let Some(s) = sleep.as_mut().downcast_mut_pin::<Sleep>() {
            s.get_mut().reset_ns(ns);
        } else {
            *sleep = Box::pin(Sleep::at_ns(self.clock.clone(), ns));
        }
    }
}
