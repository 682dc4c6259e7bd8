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
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

macro_rules! hyper_io {
    ($t:ty) => {
        impl $t {
            /// Reads into hyper's buffer as the stream's [`hyper::rt::Read`] does, and says how
            /// many bytes came (0: the end of the stream), for wrappers that need to know, such
            /// as an idle timeout that must stop once a request begins to arrive.
            pub fn poll_read_hyper(
                &self,
                cx: &mut Context<'_>,
                mut buf: hyper::rt::ReadBufCursor<'_>,
            ) -> Poll<io::Result<usize>> {
                // SAFETY: the slice is only written to (by recv(2)), never read, and only the
                // bytes recv reports written are marked initialised below.
                let dst = unsafe { buf.as_mut() };
                let n = ready!(self.sock().poll_read_uninit(cx, dst))?;
                // SAFETY: recv wrote exactly `n` bytes at the start of `dst`.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(n))
            }
        }

        impl hyper::rt::Read for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: hyper::rt::ReadBufCursor<'_>,
            ) -> Poll<io::Result<()>> {
                self.poll_read_hyper(cx, buf).map_ok(|_| ())
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
/// hyper asks a server's timer for `now` and resets its header-read timeout from it on every
/// request; on the monotonic clock both conversions go through [`Clock`]'s kept offset between
/// `Instant` and the clock, so they read only the runtime's clock (the TSC, where the kernel
/// keeps time with it).
#[derive(Clone, Debug)]
pub struct HyperTimer {
    clock: Clock,
}

impl HyperTimer {
    /// A timer on the current runtime's clock.
    ///
    /// # Panics
    /// Outside a runtime.
    pub fn current() -> HyperTimer {
        HyperTimer {
            clock: crate::scheduler::context::clock(),
        }
    }

    /// A timer on `handle`'s clock.
    pub fn new(handle: &crate::Handle) -> HyperTimer {
        HyperTimer {
            clock: handle.clock().clone(),
        }
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
        Box::pin(Sleep::at_ns(
            self.clock.clone(),
            self.clock.instant_to_ns(deadline),
        ))
    }

    fn now(&self) -> Instant {
        self.clock.now_instant()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        if let Some(s) = sleep.as_mut().downcast_mut_pin::<Sleep>() {
            s.get_mut().reset(new_deadline);
        } else {
            *sleep = self.sleep_until(new_deadline);
        }
    }
}
