//! The runtime: its builder, its handle, `block_on`, and shutdown.

use crate::Clock;
use crate::blocking::{BlockingPool, BlockingPoolBuilder};
use crate::context::{self, EnterGuard, Entered, Mode};
use crate::prio::{IdleLowering, IdlePriority};
use crate::task::{self, JoinHandle};
use crate::worker::{self, FlushAll, Local, Remote, WorkerShared};
use rescon::sched::{Hierarchical, HierarchicalConfig};
use rescon::{Container, Registry};
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// What the whole runtime shares.
pub(crate) struct RtShared {
    pub(crate) workers: Box<[Arc<WorkerShared>]>,
    pub(crate) registry: Registry,
    pub(crate) default_container: Container,
    pub(crate) clock: Clock,
    pub(crate) worker_cfg: worker::Config,
    pub(crate) correct_cpu: bool,
    pub(crate) blocking: BlockingPool,
    rr: AtomicUsize,
}

impl fmt::Debug for RtShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtShared")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl RtShared {
    pub(crate) fn next_rr(&self) -> usize {
        self.rr.fetch_add(1, Relaxed) % self.workers.len()
    }

    /// Chooses a worker for a new task: the least loaded, ties to `local`, then round robin.
    pub(crate) fn place(&self, local: Option<usize>) -> usize {
        let n = self.workers.len();
        if n == 1 {
            return 0;
        }
        let start = self.next_rr();
        let mut best = local.unwrap_or(start);
        let mut best_load = self.workers[best].load.load(Relaxed);
        for i in 0..n {
            let w = (start + i) % n;
            let l = self.workers[w].load.load(Relaxed);
            if l < best_load {
                best = w;
                best_load = l;
            }
        }
        best
    }

    /// Chooses a worker for a new task that could stay on the worker `local` spawning it (it
    /// is spawned by `spawn`, or bound to the spawner's container): `local`, for locality,
    /// unless `local` has clearly more tasks than the least loaded worker (more than one
    /// task and an eighth more), and then that one. So an accept loop that spawns its
    /// connections where it runs still spreads them across the workers.
    pub(crate) fn place_near(&self, local: usize) -> usize {
        if self.workers.len() == 1 {
            return 0;
        }
        // A plain scan first: staying, the common case, takes no round-robin ticket (a
        // read-modify-write of a line every worker's spawns share).
        let here = self.workers[local].load.load(Relaxed);
        let least = self.workers.iter().map(|w| w.load.load(Relaxed)).min();
        if least.is_none_or(|l| here <= l + 1 + l / 8) {
            local
        } else {
            self.place(Some(local))
        }
    }

    /// Spawns on worker `w` from another thread.
    pub(crate) fn spawn_remote<F>(&self, w: usize, c: Container, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let owner = self.workers[w].clone();
        let sched = owner.clone();
        let (r, h) = task::build(fut, true, move |r, info| worker::schedule(&sched, r, info));
        owner.load.fetch_add(1, Relaxed);
        owner.push(Remote::Spawn(r, c));
        h
    }
}

/// Builds a [`Runtime`].
///
/// ```
/// use std::time::Duration;
/// let registry = rescon::Registry::new();
/// let rt = rescon_rt::Builder::new(&registry)
///     .workers(2)
///     .quantum(Duration::from_micros(200))
///     .idle_priority(rescon_rt::IdlePriority::Off)
///     .build()
///     .unwrap();
/// assert_eq!(rt.handle().workers(), 2);
/// ```
pub struct Builder {
    registry: Registry,
    workers: usize,
    clock: Clock,
    quantum: Duration,
    max_burst: u32,
    event_interval: u32,
    event_gap: Duration,
    yield_before_sleep: bool,
    lease: Option<Duration>,
    idle: IdlePriority,
    correct_cpu: bool,
    default_container: Option<Container>,
    thread_name: String,
    blocking: Option<BlockingPoolBuilder>,
    on_worker_start: Option<Arc<dyn Fn(usize) + Send + Sync>>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("workers", &self.workers)
            .field("clock", &self.clock)
            .field("quantum", &self.quantum)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// A builder for a runtime over `registry`'s containers, with the defaults: one worker per
    /// available core, the monotonic clock, a 200 µs quantum, idle lowering to `SCHED_IDLE`
    /// (where the process may come back), CPU correction on.
    pub fn new(registry: &Registry) -> Builder {
        Builder {
            registry: registry.clone(),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            clock: Clock::monotonic(),
            quantum: Duration::from_micros(200),
            max_burst: 32,
            event_interval: 61,
            event_gap: Duration::from_micros(100),
            yield_before_sleep: true,
            lease: None,
            idle: IdlePriority::default(),
            correct_cpu: true,
            default_container: None,
            thread_name: "rescon-worker".into(),
            blocking: None,
            on_worker_start: None,
        }
    }

    /// Number of worker threads (at least 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// The clock polls are timed with (see [`Clock`]); a manual clock makes scheduling
    /// deterministic for tests (use one worker with it: an idle worker advances the clock).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The longest a worker runs one container's tasks before asking the policy again
    /// (default 200 µs). Smaller is fairer at short time scales and costs more policy calls.
    pub fn quantum(mut self, d: Duration) -> Self {
        self.quantum = d;
        self
    }

    /// The most polls in one burst of one container's tasks (default 32).
    pub fn max_burst(mut self, n: u32) -> Self {
        self.max_burst = n.max(1);
        self
    }

    /// Poll I/O (without blocking) at least every this many task polls while tasks are
    /// runnable (default 61), so that CPU-bound tasks cannot starve I/O.
    pub fn event_interval(mut self, n: u32) -> Self {
        self.event_interval = n.max(1);
        self
    }

    /// Poll I/O (without blocking) also whenever this much time has passed since the last
    /// time, while tasks are runnable (default 100 us): events of a high-class task are seen
    /// within this time however many short tasks of lower classes are queued, for one
    /// `epoll_wait` per gap at most (about 1% of a busy worker's time at the default).
    pub fn event_gap(mut self, d: Duration) -> Self {
        self.event_gap = d;
        self
    }

    /// Whether a worker with nothing to run yields its CPU once, and polls I/O again, before
    /// it sleeps in `epoll_wait` (default on). Where busy threads outnumber cores, as with a
    /// load generator on the server's machine, the thread it yields to is often the one about
    /// to send it work, which it then finds without a sleep and a wakeup: with a worker per
    /// core beside the load on two cores, `rescon-bench runtime` measured 0.33 context switches
    /// per HTTP request without it and 0.03 with it, and a quarter less CPU per request (10.5
    /// against 7.9 us; 1.13x tokio's throughput instead of 0.96x). Where a
    /// worker has a core to itself it costs a `sched_yield` and a non-blocking `epoll_wait`
    /// once per idle spell (under a microsecond).
    ///
    /// Given to a CPU-bound thread on the worker's core, a yield would keep the worker away
    /// for that thread's time slice, where a sleeping worker is woken at the first event; so
    /// a worker whose yields take that long (2 ms or more, twice in eight) stops yielding for
    /// a while, from 10 ms to a second. `rescon-bench runtime`, `rtt_beside_busy_loop` (the
    /// worker beside a spinning thread on one core, one connection making round trips from
    /// another): 99th percentile 100 us, tokio's 95 us; with the gate held open, 4.0 ms
    /// against 94 us, and 172 round trips in a quarter second instead of about 4,000.
    ///
    /// The gate cannot tell a CPU-bound neighbour from a load generator that keeps the core
    /// for whole slices because it is busy feeding the worker, as the client does in
    /// `tcp_echo_64_per_core` (three busy threads on two cores): there, in streaks, up to half
    /// of a worker's yields take 2 ms or more, the gate closes, and the worker sleeps and is
    /// woken about once per five messages (0.19 switches per message against tokio's 0.06),
    /// and its throughput was 0.85-1.10x tokio's (median 0.93x over twelve runs), against
    /// 1.10x and 1.12x in two runs with the gate held open. Latency beside a busy neighbour
    /// was judged worth more.
    /// Turn it off where CPU-bound neighbours run with time slices shorter than that, or where
    /// an idle worker must not spend the microsecond.
    pub fn yield_before_sleep(mut self, on: bool) -> Self {
        self.yield_before_sleep = on;
        self
    }

    /// How much CPU-limit budget a worker takes from a container's shared budget at a time.
    /// Default: all that is left with one worker, 1 ms with several (so a capped container's
    /// limit holds across workers, each taking small leases while it has work).
    pub fn cpu_limit_lease(mut self, d: Duration) -> Self {
        self.lease = Some(d);
        self
    }

    /// What a worker does with its kernel priority when it serves only idle-class work.
    pub fn idle_priority(mut self, p: IdlePriority) -> Self {
        self.idle = p;
        self
    }

    /// Whether charges are corrected with the thread CPU clock (default on; see
    /// [the crate docs](crate#charging)). Always off with a manual clock.
    pub fn correct_cpu(mut self, on: bool) -> Self {
        self.correct_cpu = on;
        self
    }

    /// The container of tasks spawned outside any task, and of `block_on` (default: the
    /// registry's root, as an unprivileged handle).
    pub fn default_container(mut self, c: &Container) -> Self {
        self.default_container = Some(c.unprivileged());
        self
    }

    /// The worker threads' name (default `rescon-worker`; the index is appended).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = name.into();
        self
    }

    /// Runs `hook(worker_index)` at the start of each worker thread.
    pub fn on_worker_start(mut self, hook: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_worker_start = Some(Arc::new(hook));
        self
    }

    /// Configures the runtime's blocking pool (see [`BlockingPool::builder`]).
    pub fn blocking_pool(
        mut self,
        f: impl FnOnce(BlockingPoolBuilder) -> BlockingPoolBuilder,
    ) -> Self {
        let b = self
            .blocking
            .take()
            .unwrap_or_else(|| BlockingPool::builder(&self.registry));
        self.blocking = Some(f(b));
        self
    }

    /// Starts the workers.
    pub fn build(self) -> Result<Runtime, BuildError> {
        if self.workers == 0 || self.workers > 4096 {
            return Err(BuildError::Config(format!(
                "workers = {}: allowed 1..=4096",
                self.workers
            )));
        }
        if self.quantum.is_zero() {
            return Err(BuildError::Config(
                "quantum = 0: allowed a positive duration (default 200 µs)".into(),
            ));
        }
        let n = self.workers;
        let mut polls = Vec::with_capacity(n);
        let mut shared = Vec::with_capacity(n);
        for i in 0..n {
            let poll = mio::Poll::new().map_err(BuildError::Io)?;
            shared.push(Arc::new(
                WorkerShared::new(i, &poll).map_err(BuildError::Io)?,
            ));
            polls.push(poll);
        }
        let lease = match (self.lease, n) {
            (Some(d), _) => Some(d.as_nanos() as u64),
            (None, 1) => None,
            (None, _) => Some(1_000_000),
        };
        let clock = self.clock.clone();
        let blocking_builder = self
            .blocking
            .unwrap_or_else(|| BlockingPool::builder(&self.registry))
            .clock(clock.clone());
        let default_container = self
            .default_container
            .unwrap_or_else(|| self.registry.root().unprivileged());
        let rt = Arc::new_cyclic(|weak| RtShared {
            workers: shared.into_boxed_slice(),
            registry: self.registry.clone(),
            default_container,
            clock,
            worker_cfg: worker::Config {
                quantum_ns: self.quantum.as_nanos() as u64,
                max_burst: self.max_burst,
                event_interval: self.event_interval,
                event_gap_ns: self.event_gap.as_nanos().min(u64::MAX as u128) as u64,
                yield_before_sleep: self.yield_before_sleep,
            },
            correct_cpu: self.correct_cpu,
            blocking: blocking_builder.build_for(weak.clone()),
            rr: AtomicUsize::new(0),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let mut threads = Vec::with_capacity(n);
        for (i, poll) in polls.into_iter().enumerate() {
            let rt2 = rt.clone();
            let ready = ready_tx.clone();
            let hook = self.on_worker_start.clone();
            let idle = self.idle;
            let registry = self.registry.clone();
            let cfg = HierarchicalConfig { lease_ns: lease };
            let t = std::thread::Builder::new()
                .name(format!("{}-{i}", self.thread_name))
                .spawn(move || {
                    let shared = rt2.workers[i].clone();
                    shared.tid.store(crate::sys::gettid(), SeqCst);
                    if let Some(h) = hook {
                        h(i);
                    }
                    let nudge = shared.clone();
                    let policy = Hierarchical::with_waker(&registry, cfg, move || nudge.nudge());
                    let idle = IdleLowering::for_current_thread(idle);
                    let local = Local::new(shared, rt2, poll, policy, idle);
                    let _ = ready.send(());
                    local.run();
                });
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    for w in rt.workers.iter() {
                        w.stop();
                    }
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(BuildError::Io(e));
                }
            }
        }
        drop(ready_tx);
        // Wait until every worker has recorded its thread id and set up its state.
        for _ in 0..n {
            if ready_rx.recv().is_err() {
                break;
            }
        }
        Ok(Runtime {
            handle: Handle { rt },
            threads,
        })
    }
}

/// Why a runtime could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting out of range; the message names it and the allowed values.
    Config(String),
    /// Creating an epoll instance, an eventfd or a thread failed (often: out of file
    /// descriptors or threads; raise `RLIMIT_NOFILE` or `RLIMIT_NPROC`).
    Io(std::io::Error),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Config(m) => write!(f, "invalid runtime configuration: {m}"),
            BuildError::Io(e) => write!(
                f,
                "starting the runtime failed: {e} (out of file descriptors or threads? check RLIMIT_NOFILE and RLIMIT_NPROC)"
            ),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::Io(e) => Some(e),
            BuildError::Config(_) => None,
        }
    }
}

/// The runtime: worker threads that run tasks by container. See the [crate docs](crate).
///
/// Dropping it stops the workers: every task still alive is cancelled (its future dropped,
/// its join handle reporting [`JoinError::Cancelled`](crate::JoinError)), every socket
/// registered with it fails with an error saying so, and every container reference the
/// runtime held is released, after the usage not yet recorded has been.
pub struct Runtime {
    handle: Handle,
    threads: Vec<std::thread::JoinHandle<()>>,
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
        let here = worker::with_local(|l| Arc::ptr_eq(&l.rt, &self.handle.rt)).unwrap_or(false);
        for t in self.threads.drain(..) {
            if here && t.thread().id() == std::thread::current().id() {
                // Dropped from one of its own tasks: this worker stops when the task returns.
                continue;
            }
            if t.join().is_err() {
                tracing::error!("a rescon-rt worker thread panicked");
            }
        }
    }
}

/// A handle to a runtime: spawn from any thread, inspect the workers. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    pub(crate) rt: Arc<RtShared>,
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
        let local = worker::with_local(|l| Arc::ptr_eq(&l.rt, &self.rt)).unwrap_or(false);
        if local {
            return crate::spawn_in(container, fut);
        }
        let w = self.rt.place(None);
        self.rt.spawn_remote(w, container.clone(), fut)
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
        self.rt.blocking.spawn_in(container, f)
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
            worker::with_local(|_| ()).is_none(),
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
