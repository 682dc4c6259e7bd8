//! The blocking pool: the paper's multi-threaded model beside the event-driven one.
//!
//! A blocking job ([`spawn_blocking_in`](crate::spawn_blocking_in),
//! [`BlockingPool::spawn_in`]) runs on a pool thread. Jobs wait in per-container queues ordered
//! by the same kind of policy as the workers (the scheduler's run queues, behind the pool's
//! lock): when threads are scarce, the container the policy picks runs next, and a container
//! over its CPU limit waits for its next period. A job is charged the thread CPU time it used
//! (`CLOCK_THREAD_CPUTIME_ID` read before and after), so time it spends blocked is not charged.
//!
//! # Guarantees
//!
//! When more jobs are queued than the pool has threads, each free thread takes the next job of
//! the container the policy picks: fixed shares and weights divide the pool's threads' time
//! (as charged), higher classes go first, and the jobs of a container with priority 0 never
//! run (they wait until the priority is raised, or the pool shuts down and cancels them).
//! `tests/blocking.rs` checks both on a manual clock.
//!
//! A pool can be dedicated to a kernel-enforced container: [`BlockingPoolBuilder::on_thread_start`]
//! runs once at the start of each of its threads, for example to move the thread into the
//! container's cgroup (the `rescon-linux` backend), so that the kernel enforces the
//! container's limits on everything the pool runs without a cgroup move per job.
//!
//! ```
//! use rescon_rt::BlockingPool;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! let registry = rescon::Registry::new();
//! let cgi = registry.root().create_child("cgi", Default::default()).unwrap();
//! let started = Arc::new(AtomicUsize::new(0));
//! let s = started.clone();
//! let pool = BlockingPool::builder(&registry)
//!     .max_threads(2)
//!     .on_thread_start(move || { s.fetch_add(1, Ordering::SeqCst); })
//!     .build();
//! let rt = rescon_rt::Runtime::new(&registry).unwrap();
//! let out = rt.block_on(pool.spawn_in(&cgi, || std::thread::current().name().map(String::from)));
//! assert_eq!(out.unwrap().as_deref(), Some("rescon-blocking"));
//! assert_eq!(started.load(Ordering::SeqCst), 1);
//! ```

use crate::driver::lock;
use crate::scheduler::context::{self, Entered, Mode};
use crate::scheduler::policy::{PolicyChoice, PolicyEnv};
use crate::scheduler::queues::RunQueues;
use crate::scheduler::shared::{Jobs, Shared};
use crate::task::{self, JoinHandle, Runnable, Running};
use crate::{Clock, sys};
use rescon::{Container, Registry};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

type Hook = Arc<dyn Fn() + Send + Sync>;

/// Builds a [`BlockingPool`].
pub struct BlockingPoolBuilder {
    registry: Registry,
    max_threads: usize,
    keep_alive: Duration,
    name: String,
    on_thread_start: Option<Hook>,
    clock: Clock,
    shutdown_timeout: Duration,
    policy: PolicyChoice,
}

impl fmt::Debug for BlockingPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingPoolBuilder")
            .field("max_threads", &self.max_threads)
            .field("keep_alive", &self.keep_alive)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl BlockingPoolBuilder {
    /// At most this many threads (default 64; at least 1).
    pub fn max_threads(mut self, n: usize) -> Self {
        self.max_threads = n.max(1);
        self
    }

    /// An idle thread exits after this long (default 10 s).
    pub fn keep_alive(mut self, d: Duration) -> Self {
        self.keep_alive = d;
        self
    }

    /// The threads' name (default `rescon-blocking`).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Runs `hook` once at the start of every pool thread, before any job: the place to move
    /// the thread into a kernel-enforced container.
    pub fn on_thread_start(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_thread_start = Some(Arc::new(hook));
        self
    }

    /// The clock of the pool's CPU-limit periods (default: monotonic). A manual clock also
    /// times the jobs (instead of the thread CPU clock), so that tests can make each job cost
    /// exactly what they say.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Orders the jobs by [`Fifo`](rescon::sched::Fifo) instead of the container policy: in
    /// the order their containers got jobs, attributes ignored.
    pub fn fifo(mut self) -> Self {
        self.policy = PolicyChoice::Fifo;
        self
    }

    /// How long dropping the pool waits for running jobs to finish (default 10 s). Jobs still
    /// running after that are left to finish on their own; queued jobs are cancelled at once.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Builds the pool. Threads start when jobs come.
    pub fn build(self) -> BlockingPool {
        self.build_for(Weak::new())
    }

    pub(crate) fn build_for(self, rt: Weak<Shared>) -> BlockingPool {
        let env = PolicyEnv {
            registry: self.registry.clone(),
            worker: None,
            workers: 0,
            wake: Arc::new(|| {}),
            // Several pool threads share one policy under the lock, so a single lease at a
            // time is right; small leases leave budget for the workers serving the container.
            lease_ns: Some(1_000_000),
        };
        let shared = Arc::new_cyclic(|me| PoolShared {
            state: Mutex::new(PoolState {
                queues: RunQueues::new(self.policy.make(&env), false),
                threads: 0,
                idle: 0,
                shutdown: false,
            }),
            work: Condvar::new(),
            exited: Condvar::new(),
            max_threads: self.max_threads,
            keep_alive: self.keep_alive,
            name: self.name,
            on_start: self.on_thread_start,
            clock: self.clock,
            rt,
            me: me.clone(),
        });
        BlockingPool {
            inner: Arc::new(PoolHandle {
                shared,
                shutdown_timeout: self.shutdown_timeout,
            }),
        }
    }
}

/// A pool of threads for blocking jobs, ordered by the container policy. See the
/// [module docs](self). Cloning gives another handle to the same pool; the pool shuts down
/// when the last handle is dropped.
#[derive(Clone)]
pub struct BlockingPool {
    inner: Arc<PoolHandle>,
}

impl fmt::Debug for BlockingPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.inner.shared.state);
        f.debug_struct("BlockingPool")
            .field("threads", &st.threads)
            .field("idle", &st.idle)
            .finish_non_exhaustive()
    }
}

struct PoolHandle {
    shared: Arc<PoolShared>,
    shutdown_timeout: Duration,
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        self.shared.shutdown(self.shutdown_timeout);
    }
}

struct PoolShared {
    state: Mutex<PoolState>,
    work: Condvar,
    exited: Condvar,
    max_threads: usize,
    keep_alive: Duration,
    name: String,
    on_start: Option<Hook>,
    clock: Clock,
    rt: Weak<Shared>,
    /// Itself, for the threads it starts.
    me: Weak<PoolShared>,
}

/// The pool's state, behind its lock. A job's slot counts it as bound from submission until
/// it has run; its queue holds it while it waits.
struct PoolState {
    queues: RunQueues,
    threads: usize,
    idle: usize,
    shutdown: bool,
}

impl PoolState {
    /// A job of slot `k` is done: release the slot if it has no more.
    fn job_done(&mut self, k: u32) {
        self.queues.unbind(k);
        self.queues.reclaim();
    }
}

impl Jobs for PoolShared {
    fn submit(&self, container: &Container, job: Runnable) {
        let mut st = lock(&self.state);
        if st.shutdown {
            drop(st);
            drop(job);
            return;
        }
        let k = st.queues.slot_for(container, false, || {
            (rescon::SchedClass::NORMAL.get(), false)
        });
        st.queues.slot(k).bound += 1;
        job.metadata().set_key(k);
        let now = self.clock.now_ns();
        st.queues.push(k, job, now);
        if st.idle == 0 && st.threads < self.max_threads {
            self.spawn_thread(&mut st);
        }
        drop(st);
        self.work.notify_one();
    }

    fn schedule(&self, r: Runnable) {
        let mut st = lock(&self.state);
        if st.shutdown {
            drop(st);
            drop(r);
            return;
        }
        let k = r.metadata().key();
        let now = self.clock.now_ns();
        st.queues.push(k, r, now);
        drop(st);
        self.work.notify_one();
    }
}

impl PoolShared {
    /// When a job started and ended, for its charge: the thread CPU clock, or a manual clock.
    fn cpu_now(&self) -> u64 {
        if self.clock.is_manual() {
            self.clock.now_ns()
        } else {
            sys::thread_cpu_ns()
        }
    }

    fn spawn_thread(&self, st: &mut PoolState) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let r = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || me.thread_main());
        match r {
            Ok(_) => st.threads += 1,
            Err(e) if st.threads == 0 => {
                tracing::error!(error = %e, "cannot start a blocking-pool thread; jobs wait until one starts");
            }
            Err(e) => tracing::warn!(error = %e, "cannot start another blocking-pool thread"),
        }
    }

    fn thread_main(self: Arc<Self>) {
        if let Some(hook) = &self.on_start {
            if catch_unwind(AssertUnwindSafe(|| hook())).is_err() {
                tracing::error!("a blocking pool's on_thread_start hook panicked");
            }
        }
        let mut st = lock(&self.state);
        loop {
            if st.shutdown {
                break;
            }
            let now = self.clock.now_ns();
            st.queues.policy.refill(now);
            let Some(pick) = st.queues.pick() else {
                let wait = st.queues.policy.next_refill().map(|t| {
                    Duration::from_nanos(t.saturating_sub(now)).max(Duration::from_micros(100))
                });
                st.idle += 1;
                let (g, to) = self
                    .work
                    .wait_timeout(st, wait.unwrap_or(self.keep_alive))
                    .unwrap_or_else(|e| e.into_inner());
                st = g;
                st.idle -= 1;
                if to.timed_out() && wait.is_none() && st.queues.policy.next_refill().is_none() {
                    // Idle for keep_alive with nothing to do: this thread goes.
                    let mut probe_st = st;
                    probe_st.queues.policy.refill(self.clock.now_ns());
                    if probe_st.queues.pick().is_none() {
                        st = probe_st;
                        break;
                    }
                    st = probe_st;
                }
                continue;
            };
            let k = pick.key.index() as u32;
            let (r, queued_at) = st.queues.pop(k).expect("picked slot has a job");
            let container = st.queues.slot(k).container.clone();
            // Not runnable while its job runs, unless more jobs wait: a thread per job.
            st.queues.idle_if_empty(k);
            drop(st);
            container
                .account()
                .add_wait_ns(self.clock.now_ns().saturating_sub(queued_at));
            container.account().add_polls(1);
            let job_container = container.clone();
            let cpu0 = self.cpu_now();
            let guard = context::enter(Entered {
                rt: self.rt.upgrade(),
                binding: container,
                seg_start: cpu0,
                mode: Mode::Blocking { first_ns: None },
                clock: self.clock.clone(),
            });
            Running::run(r);
            let cpu1 = self.cpu_now();
            let entered = guard.take();
            st = lock(&self.state);
            if st.shutdown {
                // The pool shut down while the job ran, and released its slots: the job's CPU
                // goes straight to the containers' usage.
                if let Some(e) = entered {
                    let first = match e.mode {
                        Mode::Blocking { first_ns: Some(f) } => f,
                        _ => 0,
                    };
                    let rest = cpu1.saturating_sub(e.seg_start);
                    if first > 0 {
                        job_container.account().add_cpu_ns(first);
                    }
                    e.binding.account().add_cpu_ns(rest);
                }
                break;
            }
            match entered {
                Some(Entered {
                    mode:
                        Mode::Blocking {
                            first_ns: Some(first),
                        },
                    binding,
                    seg_start,
                    ..
                }) => {
                    st.queues.charge(k, first);
                    binding.account().add_cpu_ns(cpu1.saturating_sub(seg_start));
                }
                _ => st.queues.charge(k, cpu1.saturating_sub(cpu0)),
            }
            st.job_done(k);
        }
        st.threads -= 1;
        drop(st);
        self.exited.notify_all();
    }

    fn shutdown(&self, timeout: Duration) {
        let mut st = lock(&self.state);
        st.shutdown = true;
        let mut cancelled = Vec::new();
        st.queues.drain(&mut cancelled);
        st.queues.detach_all();
        self.work.notify_all();
        drop(st);
        drop(cancelled);
        let mut st = lock(&self.state);
        let deadline = std::time::Instant::now() + timeout;
        while st.threads > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    threads = st.threads,
                    "blocking jobs still running at shutdown; leaving them to finish"
                );
                break;
            }
            st = self
                .exited
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl BlockingPool {
    /// A builder for a pool over `registry`'s containers.
    pub fn builder(registry: &Registry) -> BlockingPoolBuilder {
        BlockingPoolBuilder {
            registry: registry.clone(),
            max_threads: 64,
            keep_alive: Duration::from_secs(10),
            name: "rescon-blocking".into(),
            on_thread_start: None,
            clock: Clock::monotonic(),
            shutdown_timeout: Duration::from_secs(10),
            policy: PolicyChoice::Hierarchical,
        }
    }

    /// Runs `f` on a pool thread, queued in `container`'s order and charged with the thread
    /// CPU time it uses. If the pool has shut down, the handle reports cancellation.
    pub fn spawn_in<F, R>(&self, container: &Container, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        spawn_job(&(self.inner.shared.clone() as Arc<dyn Jobs>), container, f)
    }

    /// The pool as the scheduler knows it.
    pub(crate) fn jobs(&self) -> Arc<dyn Jobs> {
        self.inner.shared.clone()
    }

    /// Threads alive now.
    pub fn threads(&self) -> usize {
        lock(&self.inner.shared.state).threads
    }
}

/// Runs `f` as a job of `jobs` (a pool), queued in `container`'s order.
pub(crate) fn spawn_job<F, R>(jobs: &Arc<dyn Jobs>, container: &Container, f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let sched = jobs.clone();
    let (r, h) = task::build(async move { f() }, None, move |r, _| sched.schedule(r));
    jobs.submit(container, r);
    h
}
