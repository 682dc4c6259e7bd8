//! [`Handle`]: the runtime as any thread sees it.

use crate::Clock;
use crate::scheduler::context::{self, EnterGuard, Entered, Mode};
use crate::scheduler::inbox::{FlushAll, Remote};
use crate::scheduler::shared::Shared;
use crate::scheduler::worker::{spawn_on, with_local};
use crate::task::JoinHandle;
use rescon::{Container, Registry};
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::*;
use std::task::{Context, Poll, Wake, Waker};

/// A handle to a runtime: spawn from any thread, inspect the workers. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    pub(crate) rt: Arc<Shared>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("workers", &self.rt.workers.len())
            .finish()
    }
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// A worker's calls to `epoll_wait` since it started ([`Handle::worker_io_polls`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoPolls {
    /// Calls that could sleep: the worker had nothing to run.
    pub sleeps: u64,
    /// Calls that could not: a busy worker looking at I/O every
    /// [`event_interval`](Builder::event_interval) polls or [`event_gap`](Builder::event_gap),
    /// and an idle one looking once more after yielding its CPU
    /// ([`yield_before_sleep`](Builder::yield_before_sleep)).
    pub polls: u64,
}

impl Handle {
    /// The current thread's runtime, if any.
    pub fn try_current() -> Option<Handle> {
        context::runtime().map(|rt| Handle { rt })
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.rt.workers.len()
    }

    /// The kernel thread ids of the workers, in order.
    pub fn worker_tids(&self) -> Vec<i32> {
        self.rt.workers.iter().map(|w| w.tid.load(SeqCst)).collect()
    }

    /// Whether each worker has lowered its kernel priority (see [`IdlePriority`]).
    pub fn workers_lowered(&self) -> Vec<bool> {
        self.rt
            .workers
            .iter()
            .map(|w| w.lowered.load(Relaxed))
            .collect()
    }

    /// How often each worker has waited for I/O events, in order: a measure of the
    /// runtime's system-call overhead (divide by the requests served).
    pub fn worker_io_polls(&self) -> Vec<IoPolls> {
        self.rt
            .workers
            .iter()
            .map(|w| IoPolls {
                sleeps: w.io_sleeps.load(Relaxed),
                polls: w.io_polls.load(Relaxed),
            })
            .collect()
    }

    /// Live tasks on each worker.
    pub fn worker_loads(&self) -> Vec<usize> {
        self.rt
            .workers
            .iter()
            .map(|w| w.load.load(Relaxed))
            .collect()
    }

    /// Tasks each worker gave to other workers, and took from them, since it started (see
    /// the [crate docs](crate#workers-and-guarantees)).
    pub fn worker_moves(&self) -> Vec<(u64, u64)> {
        self.rt
            .workers
            .iter()
            .map(|w| (w.moved_out.load(Relaxed), w.moved_in.load(Relaxed)))
            .collect()
    }

    /// The runtime's clock.
    pub fn clock(&self) -> &Clock {
        &self.rt.clock
    }

    /// The registry the runtime schedules.
    pub fn registry(&self) -> &Registry {
        &self.rt.registry
    }

    /// Spawns a task bound to `container` (see [`spawn_in`](crate::spawn_in)).
    pub fn spawn_in<F>(&self, container: &Container, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let local = with_local(|l| Arc::ptr_eq(&l.rt, &self.rt)).unwrap_or(false);
        if local {
            return crate::spawn_in(container, fut);
        }
        let w = self.rt.place(None);
        spawn_on(&self.rt, w, container.clone(), fut)
    }

    /// Spawns a task bound to `container` on worker `worker` (its index, below
    /// [`workers`](Handle::workers)), wherever the placement rules would put it: for tests and
    /// benchmarks that need a given placement, such as all of a container's tasks on one
    /// worker. The task does not stay there if the balancing moves it (see the
    /// [crate docs](crate#workers-and-guarantees)).
    ///
    /// # Panics
    /// If `worker` is not below [`workers`](Handle::workers).
    pub fn spawn_on<F>(&self, worker: usize, container: &Container, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        assert!(
            worker < self.rt.workers.len(),
            "spawn_on: worker {worker} of a runtime with {} workers",
            self.rt.workers.len()
        );
        spawn_on(&self.rt, worker, container.clone(), fut)
    }

    /// Spawns a task bound to the runtime's default container.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let c = self.rt.default_container.clone();
        self.spawn_in(&c, fut)
    }

    /// Runs a blocking function on the runtime's blocking pool (see
    /// [`spawn_blocking_in`](crate::spawn_blocking_in)).
    pub fn spawn_blocking_in<F, R>(&self, container: &Container, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        crate::blocking::spawn_job(&self.rt.jobs, container, f)
    }

    /// See [`Runtime::enter`].
    pub fn enter(&self) -> EnterGuard {
        context::enter(Entered {
            rt: Some(self.rt.clone()),
            binding: self.rt.default_container.clone(),
            seg_start: self.rt.clock.now_ns(),
            mode: Mode::Plain,
            clock: self.rt.clock.clone(),
        })
    }

    /// See [`Runtime::block_on`].
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        assert!(
            with_local(|_| ()).is_none(),
            "Runtime::block_on called on a rescon-rt worker thread: it would block the worker; await the future instead"
        );
        let _guard = self.enter();
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut fut = pin!(fut);
        loop {
            let t0 = self.rt.clock.now_ns();
            context::with_entered(|e| e.seg_start = t0);
            let r = fut.as_mut().poll(&mut cx);
            let t1 = self.rt.clock.now_ns();
            context::with_entered(|e| {
                let a = e.binding.account();
                a.add_cpu_ns(t1.saturating_sub(e.seg_start));
                a.add_polls(1);
            });
            if let Poll::Ready(v) = r {
                return v;
            }
            std::thread::park();
        }
    }

    /// Asks every worker to record its pending usage; completes when all have.
    pub fn flush_usage(&self) -> impl Future<Output = ()> + Send + 'static {
        let all = Arc::new(FlushAll::default());
        all.remaining.store(self.rt.workers.len(), SeqCst);
        for w in self.rt.workers.iter() {
            w.push(Remote::Flush(all.clone()));
        }
        std::future::poll_fn(move |cx| {
            if all.remaining.load(Acquire) == 0 {
                return Poll::Ready(());
            }
            all.waker.register(cx.waker());
            if all.remaining.load(Acquire) == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}
