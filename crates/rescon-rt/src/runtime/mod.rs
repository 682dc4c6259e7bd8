//! The runtime: the public API ([`Builder`], [`Runtime`], [`Handle`]) over the scheduler and
//! the drivers.

mod builder;
mod handle;

pub use builder::{BuildError, Builder};
pub use handle::{Handle, IoPolls};

use crate::scheduler::context::EnterGuard;
use crate::scheduler::worker::with_local;
use crate::task::JoinHandle;
use rescon::{Container, Registry};
use std::fmt;
use std::future::Future;
use std::sync::Arc;

/// The runtime: worker threads that run tasks by container. See the [crate docs](crate).
///
/// Dropping it stops the workers: every task still alive is cancelled (its future dropped,
/// its join handle reporting [`JoinError::Cancelled`](crate::JoinError)), every socket
/// registered with it fails with an error saying so, and every container reference the
/// runtime held is released, after the usage not yet recorded has been.
pub struct Runtime {
    handle: Handle,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Shut down after the workers have stopped.
    blocking: Option<crate::BlockingPool>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("workers", &self.threads.len())
            .finish()
    }
}

impl Runtime {
    /// A runtime with the default settings (see [`Builder::new`]).
    pub fn new(registry: &Registry) -> Result<Runtime, BuildError> {
        Builder::new(registry).build()
    }

    /// A handle for spawning from anywhere.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs a future on the calling thread until it completes; tasks it spawns run on the
    /// workers. Its polls are timed and recorded in the usage of the container it is bound
    /// to (the default container, or what it [`bind`](crate::bind)s to).
    ///
    /// # Panics
    /// On a worker thread of a runtime (it would block the worker).
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.handle.block_on(fut)
    }

    /// Makes this runtime the current one on this thread until the guard is dropped, so that
    /// [`spawn`](crate::spawn), sockets and timers can be used outside `block_on`.
    pub fn enter(&self) -> EnterGuard {
        self.handle.enter()
    }

    /// Spawns a task bound to `container`.
    pub fn spawn_in<F>(&self, container: &Container, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn_in(container, fut)
    }

    /// Records all usage not yet recorded (CPU charges, polls, wait time are batched for up to
    /// a millisecond), then returns. Blocks the calling thread.
    ///
    /// # Panics
    /// On a worker thread; use [`Handle::flush_usage`] there.
    pub fn flush_usage(&self) {
        self.handle.block_on(self.handle.flush_usage());
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for w in self.handle.rt.workers.iter() {
            w.stop();
        }
        let here = with_local(|l| Arc::ptr_eq(&l.rt, &self.handle.rt)).unwrap_or(false);
        for t in self.threads.drain(..) {
            if here && t.thread().id() == std::thread::current().id() {
                // Dropped from one of its own tasks: this worker stops when the task returns.
                continue;
            }
            if t.join().is_err() {
                tracing::error!("a rescon-rt worker thread panicked");
            }
        }
        drop(self.blocking.take());
    }
}
