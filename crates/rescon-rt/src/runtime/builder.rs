//! The builder of a [`Runtime`].

use super::{Handle, Runtime};
use crate::Clock;
use crate::blocking::{BlockingPool, BlockingPoolBuilder};
use crate::driver::Driver;
use crate::prio::{Boost, HighPriority, IdleLowering, IdlePriority};
use crate::scheduler::inbox::WorkerShared;
use crate::scheduler::policy::{PolicyChoice, PolicyEnv};
use crate::scheduler::queues::RunQueues;
use crate::scheduler::shared::{Config, Shared};
use crate::scheduler::worker::Local;
use rescon::sched::Policy;
use rescon::sched::balance::Rules;
use rescon::{Container, Registry};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

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
    high: HighPriority,
    correct_cpu: bool,
    default_container: Option<Container>,
    thread_name: String,
    blocking: Option<BlockingPoolBuilder>,
    on_worker_start: Option<Arc<dyn Fn(usize) + Send + Sync>>,
    policy: PolicyChoice,
    rules: Rules,
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
            high: HighPriority::default(),
            correct_cpu: true,
            default_container: None,
            thread_name: "rescon-worker".into(),
            blocking: None,
            on_worker_start: None,
            policy: PolicyChoice::Hierarchical,
            rules: Rules::default(),
        }
    }

    /// The policy each worker schedules with, made per worker by `factory` (and one for the
    /// blocking pool): any [`rescon::sched::Policy`]. The default is
    /// [`Hierarchical`](rescon::sched::Hierarchical), in shared mode when there are several
    /// workers (the machine-wide guarantees of the [scheduler](crate#workers-and-guarantees)
    /// need it: with another policy each worker schedules by its own, and work moves between
    /// workers only to keep them busy).
    ///
    /// ```
    /// use rescon::sched::{Fifo, Policy};
    /// let registry = rescon::Registry::new();
    /// let rt = rescon_rt::Builder::new(&registry)
    ///     .workers(2)
    ///     .policy(|_env| Box::new(Fifo::new()) as Box<dyn Policy>)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(rt.block_on(rt.handle().spawn(async { 7 })).unwrap(), 7);
    /// ```
    pub fn policy(
        mut self,
        factory: impl Fn(&PolicyEnv) -> Box<dyn Policy> + Send + Sync + 'static,
    ) -> Self {
        self.policy = PolicyChoice::custom(factory);
        self
    }

    /// Schedules with [`Fifo`](rescon::sched::Fifo), round robin over containers that ignores
    /// their attributes (CPU is still charged to them): the "containers off" baseline, with
    /// the dispatch of the built-in policy (no indirect call).
    pub fn fifo(mut self) -> Self {
        self.policy = PolicyChoice::Fifo;
        self
    }

    /// The rules by which work moves between workers (see
    /// [`rescon::sched::balance::Rules`]; the defaults are the ones the guarantees are stated
    /// and tested with).
    pub fn balance_rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
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

    /// What a worker does with its kernel priority while it runs (or has queued) work of
    /// containers of the high or critical class (default: nothing; see
    /// [`prio`](crate::prio)).
    pub fn high_priority(mut self, p: HighPriority) -> Self {
        self.high = p;
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
        let mut drivers = Vec::with_capacity(n);
        let mut shared = Vec::with_capacity(n);
        for i in 0..n {
            let (driver, handle) = Driver::new(i, n).map_err(BuildError::Io)?;
            shared.push(Arc::new(WorkerShared::new(i, handle)));
            drivers.push(driver);
        }
        let workers: Arc<[Arc<WorkerShared>]> = shared.into();
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
        let cfg = Config {
            quantum_ns: self.quantum.as_nanos() as u64,
            max_burst: self.max_burst,
            event_interval: self.event_interval,
            event_gap_ns: self.event_gap.as_nanos().min(u64::MAX as u128) as u64,
            yield_before_sleep: self.yield_before_sleep,
            balance: n > 1,
            rules: self.rules,
        };
        let mut blocking = None;
        let rt = Arc::new_cyclic(|weak| {
            let pool = blocking_builder.build_for(weak.clone());
            let jobs = pool.jobs();
            blocking = Some(pool);
            Shared::new(
                workers.clone(),
                self.registry.clone(),
                default_container,
                clock,
                cfg,
                self.correct_cpu,
                self.policy.clone(),
                jobs,
            )
        });
        let blocking = blocking.expect("built");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let mut threads = Vec::with_capacity(n);
        for (i, driver) in drivers.into_iter().enumerate() {
            let rt2 = rt.clone();
            let ready = ready_tx.clone();
            let hook = self.on_worker_start.clone();
            let (idle, high) = (self.idle, self.high);
            let registry = self.registry.clone();
            let t = std::thread::Builder::new()
                .name(format!("{}-{i}", self.thread_name))
                .spawn(move || {
                    let shared = rt2.workers[i].clone();
                    shared.tid.store(crate::sys::gettid(), SeqCst);
                    if let Some(h) = hook {
                        h(i);
                    }
                    let nudge = shared.clone();
                    let env = PolicyEnv {
                        registry,
                        worker: Some(i),
                        workers: rt2.workers.len(),
                        wake: Arc::new(move || nudge.nudge()),
                        lease_ns: lease,
                    };
                    let queues = RunQueues::new(rt2.policy.make(&env), rt2.cfg.balance);
                    let idle = IdleLowering::for_current_thread(idle);
                    let boost = Boost::for_current_thread(high);
                    let local = Local::new(shared, rt2, driver, queues, idle, boost);
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
            blocking: Some(blocking),
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
