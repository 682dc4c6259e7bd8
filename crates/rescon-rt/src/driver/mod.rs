//! The drivers: each worker's epoll instance ([`Driver`], owned by the worker's thread, and
//! [`Handle`], what sockets on any thread use to register with it) and its timers
//! ([`timer`]).
//!
//! The scheduler runs a driver; sockets and timers reach the current worker's driver through
//! the scheduler's context (`scheduler::context`), never through the worker's internals.

pub(crate) mod io;
pub(crate) mod timer;

use self::io::IoState;
use slab::Slab;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

/// The token of the eventfd that wakes a worker sleeping in `epoll_wait`.
const WAKE_TOKEN: mio::Token = mio::Token(usize::MAX);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks (slabs, queues) stays consistent if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What other threads use of a worker's driver: registration of sockets, and the wake-up.
#[derive(Debug)]
pub(crate) struct Handle {
    /// The worker this driver belongs to.
    pub(crate) index: usize,
    /// Whether that worker is its runtime's only one (then sockets never move).
    pub(crate) alone: bool,
    registry: mio::Registry,
    io: Mutex<Slab<Arc<IoState>>>,
    waker: mio::Waker,
    /// Set once the worker has stopped: registrations fail from then on.
    closed: AtomicBool,
}

impl Handle {
    /// Registers a socket for both directions, edge-triggered; returns its token.
    pub(crate) fn register(
        &self,
        fd: std::os::fd::RawFd,
        state: Arc<IoState>,
    ) -> std::io::Result<usize> {
        let token = lock(&self.io).insert(state);
        match self.registry.register(
            &mut mio::unix::SourceFd(&fd),
            mio::Token(token),
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        ) {
            Ok(()) => Ok(token),
            Err(e) => {
                lock(&self.io).remove(token);
                Err(e)
            }
        }
    }

    /// Removes a socket registered with `token`. Its file's later events (another reference to
    /// it may live on) are not delivered, and an event already taken from the kernel finds
    /// the token free, or another socket's, which then tries a system call once in vain.
    pub(crate) fn deregister(&self, fd: std::os::fd::RawFd, token: usize) {
        let _ = self.registry.deregister(&mut mio::unix::SourceFd(&fd));
        lock(&self.io).try_remove(token);
    }

    /// Wakes the worker from `epoll_wait`.
    pub(crate) fn wake(&self) {
        let _ = self.waker.wake();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Acquire)
    }

    /// Marks the driver closed and takes the wakers of every socket registered with it
    /// (which then fail with an error saying the runtime has shut down).
    pub(crate) fn close(&self, out: &mut Vec<Waker>) {
        self.closed.store(true, Release);
        for (_, st) in lock(&self.io).iter() {
            st.shut_down(out);
        }
    }
}

/// A worker's epoll instance, owned by the worker's thread.
#[derive(Debug)]
pub(crate) struct Driver {
    poll: mio::Poll,
    events: mio::Events,
}

impl Driver {
    /// A driver and its handle, for worker `index` of `workers`.
    pub(crate) fn new(index: usize, workers: usize) -> std::io::Result<(Driver, Arc<Handle>)> {
        let poll = mio::Poll::new()?;
        let handle = Handle {
            index,
            alone: workers == 1,
            registry: poll.registry().try_clone()?,
            io: Mutex::new(Slab::new()),
            waker: mio::Waker::new(poll.registry(), WAKE_TOKEN)?,
            closed: AtomicBool::new(false),
        };
        Ok((
            Driver {
                poll,
                events: mio::Events::with_capacity(1024),
            },
            Arc::new(handle),
        ))
    }

    /// Waits for events (at most `timeout`), records them in the sockets' readiness, and
    /// takes the wakers of the tasks waiting for them.
    pub(crate) fn poll(
        &mut self,
        handle: &Handle,
        timeout: Option<Duration>,
        out: &mut Vec<Waker>,
    ) -> std::io::Result<()> {
        self.poll.poll(&mut self.events, timeout)?;
        if self.events.is_empty() {
            return Ok(());
        }
        let slab = lock(&handle.io);
        for ev in self.events.iter() {
            if ev.token() == WAKE_TOKEN {
                continue;
            }
            if let Some(st) = slab.get(ev.token().0) {
                st.set_ready(ev, out);
            }
        }
        Ok(())
    }
}
