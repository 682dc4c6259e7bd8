//! The scheduling context of the calling thread: on a worker, the worker (its running task,
//! its driver); on a thread inside [`Runtime::block_on`](crate::Runtime::block_on),
//! [`Runtime::enter`](crate::Runtime::enter) or a blocking job, a thread-local binding
//! ([`Entered`]). Elsewhere there is none, and what needs one fails, saying so.
//!
//! This is how the rest of the crate reaches the scheduler: sockets find the driver they
//! register with, timers the worker they register with, the free functions the current
//! container, without knowing a worker's internals.

use super::inbox::WorkerShared;
use super::shared::Shared;
use super::worker::with_local;
use crate::{Clock, driver, sys};
use rescon::Container;
use std::cell::RefCell;
use std::io;
use std::sync::Arc;

/// How a non-worker thread's time is charged.
#[derive(Debug)]
pub(crate) enum Mode {
    /// `block_on` or `enter`: polls are timed with the runtime clock and recorded in the bound
    /// container's usage.
    Plain,
    /// A blocking job: thread CPU time; the part before the first `bind` is charged through
    /// the pool's policy, the rest recorded where the job was rebound to.
    Blocking { first_ns: Option<u64> },
}

/// The context of a thread that is not a worker.
#[derive(Debug)]
pub(crate) struct Entered {
    pub(crate) rt: Option<Arc<Shared>>,
    pub(crate) binding: Container,
    pub(crate) seg_start: u64,
    pub(crate) mode: Mode,
    pub(crate) clock: Clock,
}

impl Entered {
    fn now(&self) -> u64 {
        match self.mode {
            Mode::Plain => self.clock.now_ns(),
            Mode::Blocking { .. } => sys::thread_cpu_ns(),
        }
    }

    fn bind(&mut self, c: &Container) {
        if self.binding.id() == c.id() {
            return;
        }
        let now = self.now();
        let seg = now.saturating_sub(self.seg_start);
        match &mut self.mode {
            Mode::Plain => self.binding.account().add_cpu_ns(seg),
            Mode::Blocking { first_ns } => match first_ns {
                None => *first_ns = Some(seg),
                Some(_) => self.binding.account().add_cpu_ns(seg),
            },
        }
        self.binding = c.unprivileged();
        self.seg_start = now;
    }
}

thread_local! {
    static ENTERED: RefCell<Option<Entered>> = const { RefCell::new(None) };
}

/// Installs a thread-local context; the previous one comes back when the guard drops.
pub(crate) fn enter(e: Entered) -> EnterGuard {
    let prev = ENTERED.with(|c| c.borrow_mut().replace(e));
    EnterGuard {
        prev: Some(prev),
        _not_send: std::marker::PhantomData,
    }
}

/// Restores the previous context when dropped. Made by
/// [`Runtime::enter`](crate::Runtime::enter).
#[derive(Debug)]
pub struct EnterGuard {
    prev: Option<Option<Entered>>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl EnterGuard {
    /// Takes the context out (for a blocking job's accounting) and restores the previous.
    pub(crate) fn take(mut self) -> Option<Entered> {
        let prev = self.prev.take().expect("guard used once");
        ENTERED.with(|c| std::mem::replace(&mut *c.borrow_mut(), prev))
    }
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        if let Some(prev) = self.prev.take() {
            let cur = ENTERED.with(|c| std::mem::replace(&mut *c.borrow_mut(), prev));
            drop(cur);
        }
    }
}

pub(crate) fn with_entered<R>(f: impl FnOnce(&mut Entered) -> R) -> Option<R> {
    ENTERED.with(|c| c.borrow_mut().as_mut().map(f))
}

/// The runtime of this thread's context, if any.
pub(crate) fn runtime() -> Option<Arc<Shared>> {
    with_local(|l| l.rt.clone())
        .or_else(|| ENTERED.with(|c| c.borrow().as_ref().and_then(|e| e.rt.clone())))
}

pub(crate) const NO_RUNTIME: &str = "no rescon-rt runtime on this thread: call this inside a task, Runtime::block_on, Runtime::enter or a blocking job";

pub(crate) fn expect_runtime() -> Arc<Shared> {
    runtime().expect(NO_RUNTIME)
}

pub(crate) fn clock() -> Clock {
    with_local(|l| l.rt.clock.clone())
        .or_else(|| ENTERED.with(|c| c.borrow().as_ref().map(|e| e.clock.clone())))
        .expect(NO_RUNTIME)
}

/// The worker running on this thread, if it is one.
pub(crate) fn current_worker() -> Option<usize> {
    with_local(|l| l.shared.index)
}

/// The worker a timer made here registers with.
pub(crate) fn timer_worker() -> Arc<WorkerShared> {
    if let Some(w) = with_local(|l| l.shared.clone()) {
        return w;
    }
    let rt = expect_runtime();
    rt.workers[rt.next_rr()].clone()
}

/// The driver a socket waited on here registers with.
pub(crate) fn io_driver() -> io::Result<Arc<driver::Handle>> {
    if let Some(d) = with_local(|l| l.shared.driver.clone()) {
        return Ok(d);
    }
    let rt = runtime().ok_or_else(|| io::Error::other(NO_RUNTIME))?;
    Ok(rt.workers[rt.next_rr()].driver.clone())
}

/// The container the running task (or this thread's context) is bound to.
pub(crate) fn try_current() -> Option<Container> {
    if let Some(c) = with_local(|l| {
        l.current()
            .unwrap_or_else(|| l.rt.default_container.clone())
    }) {
        return Some(c);
    }
    ENTERED.with(|c| c.borrow().as_ref().map(|e| e.binding.clone()))
}

/// Rebinds if there is a context; returns whether there was one.
pub(crate) fn try_bind(container: &Container) -> bool {
    if let Some(done) = with_local(|l| l.bind(container))
        && done
    {
        return true;
    }
    with_entered(|e| e.bind(container)).is_some()
}

pub(crate) fn is_bound_to(container: &Container) -> Option<bool> {
    if let Some(Some(b)) = with_local(|l| l.is_bound_to(container)) {
        return Some(b);
    }
    with_entered(|e| e.binding.id() == container.id())
}

pub(crate) fn in_worker_task() -> bool {
    with_local(|l| l.in_task()).unwrap_or(false)
}
