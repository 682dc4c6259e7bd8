//! The free functions of the crate: spawning, the current container, rebinding.
//!
//! They work wherever the calling thread has a scheduling context (a worker's task,
//! [`Runtime::block_on`](crate::Runtime::block_on), [`Runtime::enter`](crate::Runtime::enter)
//! or a blocking job) and panic elsewhere, saying so.

use crate::scheduler::context::{
    self, NO_RUNTIME, expect_runtime, in_worker_task, is_bound_to, try_bind,
};
use crate::scheduler::worker::{spawn_on, with_local};
use crate::task::JoinHandle;
use pin_project_lite::pin_project;
use rescon::Container;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The container the running task (or this thread's context) is bound to: an unprivileged
/// handle.
///
/// # Panics
/// Outside a runtime; see [`try_current`] for a version that does not.
///
/// ```
/// let registry = rescon::Registry::new();
/// let rt = rescon_rt::Runtime::new(&registry).unwrap();
/// let c = registry.root().create_child("c", Default::default()).unwrap();
/// let id = rt.block_on(rt.spawn_in(&c, async { rescon_rt::current().id() }));
/// assert_eq!(id.unwrap(), c.id());
/// ```
pub fn current() -> Container {
    try_current().expect(NO_RUNTIME)
}

/// Like [`current`], but `None` outside a runtime.
pub fn try_current() -> Option<Container> {
    context::try_current()
}

/// Rebinds the running task to `container`: the rest of this poll and every later poll are
/// charged to it, and the task is scheduled as a member of it from its next wake-up on. The
/// paper's "change thread's resource binding"; it costs a hash lookup, a clock read and a
/// charge (see `rescon-bench primitives`, op `rebind`).
///
/// The task's current poll is not interrupted: if the new container should not run now
/// (priority 0, throttled, or a lower class than runnable work), it stops being scheduled
/// once the task next yields or waits. [`with_container`] yields at once instead.
///
/// # Panics
/// Outside a runtime.
///
/// ```
/// let registry = rescon::Registry::new();
/// let rt = rescon_rt::Runtime::new(&registry).unwrap();
/// let a = registry.root().create_child("a", Default::default()).unwrap();
/// let b = registry.root().create_child("b", Default::default()).unwrap();
/// let b2 = b.clone();
/// rt.block_on(rt.spawn_in(&a, async move {
///     rescon_rt::bind(&b2);
///     assert_eq!(rescon_rt::current(), b2);
/// }))
/// .unwrap();
/// ```
pub fn bind(container: &Container) {
    if !try_bind(container) {
        panic!("{NO_RUNTIME}");
    }
}

/// Spawns a task bound to the current container.
///
/// A task is placed on a worker, and moves only when the scheduler's balancing moves it (see the
/// [crate docs](crate#workers-and-guarantees)). Spawned on a worker, it stays there unless
/// that worker has clearly more tasks than the least loaded one (more than one task and an
/// eighth more), and then goes to that one; outside the workers, it goes on the least loaded
/// worker. So an accept loop that spawns a task per connection spreads the connections
/// across the workers, and a task's helpers mostly stay beside it.
///
/// # Panics
/// Outside a runtime.
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    // On a worker: `None` to stay, else the runtime and the worker to go to.
    let away = with_local(|l| {
        let w = l.rt.place_near(l.shared.index);
        (w != l.shared.index).then(|| (l.rt.clone(), w))
    });
    let (rt, w) = match away {
        Some(None) => {
            let mut fut = Some(fut);
            return with_local(|l| l.spawn_local(None, fut.take().expect("once")))
                .expect("on a worker");
        }
        Some(Some(to)) => to,
        None => {
            let rt = expect_runtime();
            let w = rt.place(None);
            (rt, w)
        }
    };
    let c = try_current().unwrap_or_else(|| rt.default_container.clone());
    spawn_on(&rt, w, c, fut)
}

/// Spawns a task bound to `container`.
///
/// A task is placed on a worker, and moves only when the scheduler's balancing moves it.
/// Spawned from a task already bound to `container`, it is placed as by [`spawn`]: on the
/// same worker unless that worker has clearly more tasks than the least loaded one. Spawned
/// from high-class work (a class above normal on its path: a high-priority listener's accept
/// loop), it goes to the worker the kernel gives the most of a CPU (by the CPU correction's
/// measure, see [`Builder::correct_cpu`](crate::Builder::correct_cpu)) if that is clearly
/// more than the current worker gets, else as by [`spawn`]: a worker that shares its CPU with
/// another busy thread is off it for whole kernel time slices, and high-class work placed
/// there would wait for them. Where the workers raise their kernel priority for high-class
/// work ([`Builder::high_priority`](crate::Builder::high_priority)), it stays on the spawning
/// worker instead: that worker is on a CPU now and, raised, stays there while it runs the new
/// task. Otherwise it goes on the least loaded worker (ties go to the current worker, then
/// round robin). Both spread new connections' tasks across the
/// workers.
///
/// # Panics
/// Outside a runtime.
pub fn spawn_in<F>(container: &Container, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let local = with_local(|l| {
        let high = l.in_high_work();
        let near = high || l.is_bound_to(container) == Some(true);
        (
            l.rt.clone(),
            l.shared.index,
            near,
            high,
            high && l.raises_for_high(),
        )
    });
    match local {
        Some((rt, idx, near, high, raised)) => {
            let w = if raised {
                // This worker is running now, and runs the new task raised above other
                // threads: sent to another, it would wait for that one to be on a CPU.
                idx
            } else if high {
                rt.place_high(idx)
            } else if near {
                rt.place_near(idx)
            } else {
                rt.place(Some(idx))
            };
            if w == idx {
                let mut fut = Some(fut);
                with_local(|l| l.spawn_local(Some(container), fut.take().expect("once")))
                    .expect("on a worker")
            } else {
                spawn_on(&rt, w, container.clone(), fut)
            }
        }
        None => {
            let rt = expect_runtime();
            let w = rt.place(None);
            spawn_on(&rt, w, container.clone(), fut)
        }
    }
}

/// Runs a blocking function on the runtime's blocking pool, queued by `container`'s policy
/// order and charged with the thread CPU time it uses.
///
/// # Panics
/// Outside a runtime.
///
/// ```
/// let registry = rescon::Registry::new();
/// let rt = rescon_rt::Runtime::new(&registry).unwrap();
/// let cgi = registry.root().create_child("cgi", Default::default()).unwrap();
/// let sum = rt.block_on(rt.handle().spawn_blocking_in(&cgi, || (0..1000u64).sum::<u64>()));
/// assert_eq!(sum.unwrap(), 499_500);
/// ```
pub fn spawn_blocking_in<F, R>(container: &Container, f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    crate::blocking::spawn_job(&expect_runtime().jobs, container, f)
}

pin_project! {
    /// The future of [`with_container`].
    #[must_use = "futures do nothing unless awaited"]
    pub struct WithContainer<F> {
        #[pin]
        fut: F,
        container: Container,
        outer: Option<Container>,
        entered: bool,
        done: bool,
    }

    impl<F> PinnedDrop for WithContainer<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.entered && !*this.done {
                if let Some(outer) = this.outer.take() {
                    if is_bound_to(this.container) == Some(true) {
                        try_bind(&outer);
                    }
                }
            }
        }
    }
}

impl<F> std::fmt::Debug for WithContainer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithContainer")
            .field("container", &self.container.id())
            .finish_non_exhaustive()
    }
}

/// Runs `fut` bound to `container`, then goes back to the binding it had.
///
/// While `fut` runs and while it waits, the task is scheduled and charged as a member of
/// `container`. On its first poll, if the task was bound elsewhere, it rebinds and yields
/// once, so that even its first step waits for `container`'s turn: a future run in a container
/// with priority 0 never runs at all.
///
/// Two `with_container`s polled by one task at once (`join!`) take turns: the binding is a
/// property of the task, and the one polled last wins while both wait.
///
/// ```
/// let registry = rescon::Registry::new();
/// let rt = rescon_rt::Runtime::new(&registry).unwrap();
/// let a = registry.root().create_child("a", Default::default()).unwrap();
/// let b = registry.root().create_child("b", Default::default()).unwrap();
/// let (a2, b2) = (a.clone(), b.clone());
/// rt.block_on(rt.spawn_in(&a, async move {
///     let inner = rescon_rt::with_container(&b2, async { rescon_rt::current() }).await;
///     assert_eq!(inner, b2);
///     assert_eq!(rescon_rt::current(), a2);
/// }))
/// .unwrap();
/// ```
pub fn with_container<F: Future>(container: &Container, fut: F) -> WithContainer<F> {
    WithContainer {
        fut,
        container: container.clone(),
        outer: None,
        entered: false,
        done: false,
    }
}

impl<F: Future> Future for WithContainer<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if *this.done {
            panic!("WithContainer polled after completion");
        }
        match is_bound_to(this.container) {
            Some(true) => {
                if !*this.entered {
                    *this.entered = true;
                    *this.outer = Some(this.container.clone());
                }
            }
            Some(false) => {
                let first = !*this.entered;
                if first {
                    *this.entered = true;
                    *this.outer = try_current();
                }
                try_bind(this.container);
                if first && in_worker_task() {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            None => panic!("{NO_RUNTIME}"),
        }
        match this.fut.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(v) => {
                *this.done = true;
                if let Some(outer) = this.outer.take() {
                    if outer.id() != this.container.id() {
                        try_bind(&outer);
                    }
                }
                Poll::Ready(v)
            }
        }
    }
}
