//! Tasks: the `async-task` cell with the container binding in its metadata, join handles, and
//! the wrapper that catches panics. This module knows nothing of workers: a scheduler hands
//! it a schedule function and reads the metadata.
//!
//! # The binding
//!
//! A task's metadata ([`TaskMeta`]) holds the worker that owns it and the key of its container
//! there: an index into that worker's per-container run queues, equal to the container's
//! [`Key`](rescon::sched::Key) in the worker's policy. Only the owning worker reads or writes
//! the key, so rebinding a task is a store of a small integer, and a wake-up knows at once
//! which queue the task goes to. The worker keeps the [`Container`](rescon::Container) handle
//! itself, once per container, not once per task.
//!
//! A task moves to another worker only while it is queued (never while it runs): the worker
//! giving it away clears its key and stores the new owner before handing it over, and a
//! wake-up reads the owner to find the queue. A queued task is already scheduled, so no
//! wake-up can race with the move.
//!
//! # Knowing when a task ends
//!
//! A worker runs a task with [`Running::run`], which notes (in a thread-local) whether the
//! task's future was dropped during the poll: the task completed or was cancelled, and the
//! worker releases its binding.

use pin_project_lite::pin_project;
use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::task::{Context, Poll};

/// A task's key before a worker has placed it.
pub(crate) const UNPLACED: u32 = u32::MAX;

/// Per-task metadata, kept in the `async-task` header.
#[derive(Debug)]
pub(crate) struct TaskMeta {
    /// The container's key on the owning worker ([`UNPLACED`] until placed).
    pub(crate) key: AtomicU32,
    /// The task's index in its worker's list of live tasks.
    pub(crate) idx: AtomicU32,
    /// The worker that owns it (where its wake-ups go).
    pub(crate) owner: AtomicU32,
}

impl TaskMeta {
    pub(crate) fn new(owner: u32) -> TaskMeta {
        TaskMeta {
            key: AtomicU32::new(UNPLACED),
            idx: AtomicU32::new(UNPLACED),
            owner: AtomicU32::new(owner),
        }
    }

    #[inline]
    pub(crate) fn owner(&self) -> usize {
        self.owner.load(Relaxed) as usize
    }

    #[inline]
    pub(crate) fn key(&self) -> u32 {
        self.key.load(Relaxed)
    }

    #[inline]
    pub(crate) fn set_key(&self, k: u32) {
        self.key.store(k, Relaxed)
    }
}

pub(crate) type Runnable = async_task::Runnable<TaskMeta>;
pub(crate) type Panic = Box<dyn Any + Send + 'static>;
type RawTask<T> = async_task::FallibleTask<Result<T, Panic>, TaskMeta>;

pin_project! {
    /// The future a task runs: the user's future, with panics caught so that they reach the
    /// join handle instead of the worker, and a note to the worker when the task is gone.
    pub(crate) struct TaskFuture<F> {
        #[pin]
        fut: F,
        // The address of the task's metadata (an identity, never dereferenced), or 0 for a
        // task that does not run on a worker.
        meta_id: usize,
    }

    impl<F> PinnedDrop for TaskFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if this.meta_id != 0 {
                DROPPED.set(this.meta_id);
            }
        }
    }
}

thread_local! {
    /// The metadata address of the last worker task whose future this thread dropped (0:
    /// none since [`Running::run`] cleared it).
    static DROPPED: Cell<usize> = const { Cell::new(0) };
}

/// A task being run by a worker: see [`Running::run`].
pub(crate) struct Running;

impl Running {
    /// Runs `r` and returns whether its future was dropped meanwhile (it completed, panicked
    /// or was cancelled): the task is gone and its binding can be released.
    #[inline]
    pub(crate) fn run(r: Runnable) -> bool {
        let id = r.metadata() as *const TaskMeta as usize;
        DROPPED.set(0);
        // A panic escaping `run` (only from a future's destructor: polls are caught in
        // `TaskFuture`) must not take the worker down.
        let _ = catch_unwind(AssertUnwindSafe(|| r.run()));
        // Another task's future dropped in this poll (one it owned) is not this one.
        DROPPED.get() == id
    }
}

impl<F: Future> Future for TaskFuture<F> {
    type Output = Result<F::Output, Panic>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.project().fut;
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(p) => Poll::Ready(Err(p)),
        }
    }
}

/// Builds the `async-task` cell for a future, owned by worker `owner` (`None`: a task that
/// does not run on a worker, a blocking job).
pub(crate) fn build<F, S>(
    fut: F,
    owner: Option<usize>,
    schedule: S,
) -> (Runnable, JoinHandle<F::Output>)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
    S: Fn(Runnable, async_task::ScheduleInfo) + Send + Sync + 'static,
{
    let on_worker = owner.is_some();
    let meta = TaskMeta::new(owner.map_or(UNPLACED, |w| w as u32));
    let (runnable, task) = async_task::Builder::new().metadata(meta).spawn(
        move |meta: &TaskMeta| TaskFuture {
            fut,
            meta_id: if on_worker {
                meta as *const TaskMeta as usize
            } else {
                0
            },
        },
        async_task::WithInfo(schedule),
    );
    (
        runnable,
        JoinHandle {
            task: Some(task.fallible()),
        },
    )
}

/// Waits for a task to finish and gives its output.
///
/// Dropping a `JoinHandle` detaches the task: it keeps running. [`cancel`](JoinHandle::cancel)
/// stops it instead.
///
/// ```
/// let registry = rescon::Registry::new();
/// let rt = rescon_rt::Runtime::new(&registry).unwrap();
/// let v = rt.block_on(async {
///     let h = rescon_rt::spawn(async { 40 + 2 });
///     h.await.unwrap()
/// });
/// assert_eq!(v, 42);
/// ```
pub struct JoinHandle<T> {
    task: Option<RawTask<T>>,
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// Whether the task has finished (completed, panicked or been cancelled).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Cancels the task: its future is dropped (on its worker) without running again.
    pub fn cancel(mut self) {
        drop(self.task.take());
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.detach();
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(task) = self.task.as_mut() else {
            return Poll::Ready(Err(JoinError::Cancelled));
        };
        match Pin::new(task).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(out) => {
                self.task = None;
                Poll::Ready(match out {
                    Some(Ok(v)) => Ok(v),
                    Some(Err(p)) => Err(JoinError::Panic(p)),
                    None => Err(JoinError::Cancelled),
                })
            }
        }
    }
}

/// Why a task gave no output.
pub enum JoinError {
    /// The task panicked; the payload is what it panicked with. The worker that ran it is
    /// unharmed.
    Panic(Panic),
    /// The task was cancelled before finishing: its handle was cancelled, or the runtime shut
    /// down.
    Cancelled,
}

impl JoinError {
    /// Whether the task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, JoinError::Panic(_))
    }

    /// Whether the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, JoinError::Cancelled)
    }

    /// The panic's message, if it panicked with a string.
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            JoinError::Panic(p) => p
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| p.downcast_ref::<String>().map(String::as_str)),
            JoinError::Cancelled => None,
        }
    }

    /// The panic payload, to resume the panic with [`std::panic::resume_unwind`].
    pub fn into_panic(self) -> Option<Panic> {
        match self {
            JoinError::Panic(p) => Some(p),
            JoinError::Cancelled => None,
        }
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.panic_message()) {
            (JoinError::Panic(_), Some(m)) => write!(f, "task panicked: {m}"),
            (JoinError::Panic(_), None) => f.write_str("task panicked"),
            (JoinError::Cancelled, _) => {
                f.write_str("task cancelled (its handle was cancelled or the runtime shut down)")
            }
        }
    }
}

impl std::error::Error for JoinError {}

/// Gives other tasks a turn: the task goes to the back of its container's run queue, and the
/// worker asks the policy what runs next.
///
/// ```
/// let registry = rescon::Registry::new();
/// let rt = rescon_rt::Runtime::new(&registry).unwrap();
/// rt.block_on(async { rescon_rt::yield_now().await });
/// ```
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// The future of [`yield_now`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
