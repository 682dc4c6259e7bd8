//! The blocking pool: the paper's multi-threaded model beside the event-driven one.
//!
//! A blocking job ([`spawn_blocking_in`](crate::spawn_blocking_in),
//! [`BlockingPool::spawn_in`]) runs on a pool thread. Jobs wait in per-container queues ordered
//! by the same policy as the workers ([`Hierarchical`] behind the pool's lock): when threads
//! are scarce, the container the policy picks runs next, and a container over its CPU limit
//! waits for its next period. A job is charged the thread CPU time it used
//! (`CLOCK_THREAD_CPUTIME_ID` read before and after), so time it spends blocked is not charged.
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

use crate::context::{self, Entered, Mode};
use crate::runtime::RtShared;
use crate::task::{self, JoinHandle, Runnable};
use crate::worker::lock;
use crate::{Clock, sys};
use rescon::sched::{Hierarchical, HierarchicalConfig, Key, Policy};
use rescon::{Container, ContainerId, Registry};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
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

    /// The clock of the pool's CPU-limit periods (default: monotonic).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
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

    pub(crate) fn build_for(self, rt: Weak<RtShared>) -> BlockingPool {
        let cfg = HierarchicalConfig {
            // Several pool threads share one policy under the lock, so a single lease at a
            // time is right; small leases leave budget for the workers serving the container.
            lease_ns: Some(1_000_000),
        };
        let shared = Arc::new(PoolShared {
            state: Mutex::new(PoolState {
                policy: Hierarchical::with_config(&self.registry, cfg),
                slots: Vec::new(),
                by_id: FxHashMap::default(),
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
    rt: Weak<RtShared>,
}

struct PoolState {
    policy: Hierarchical,
    slots: Vec<Option<BSlot>>,
    by_id: FxHashMap<ContainerId, u32>,
    threads: usize,
    idle: usize,
    shutdown: bool,
}

struct BSlot {
    container: Container,
    key: Key,
    queue: VecDeque<(Runnable, u64)>,
    /// Jobs queued or running.
    jobs: u32,
}

impl PoolState {
    fn slot_for(&mut self, c: &Container) -> u32 {
        if let Some(&k) = self.by_id.get(&c.id()) {
            return k;
        }
        let key = self.policy.attach(c);
        let k = key.index() as u32;
        if self.slots.len() <= k as usize {
            self.slots.resize_with(k as usize + 1, || None);
        }
        self.slots[k as usize] = Some(BSlot {
            container: c.unprivileged(),
            key,
            queue: VecDeque::new(),
            jobs: 0,
        });
        self.by_id.insert(c.id(), k);
        k
    }

    fn slot(&mut self, k: u32) -> &mut BSlot {
        self.slots[k as usize].as_mut().expect("live pool slot")
    }

    fn push(&mut self, k: u32, r: Runnable, now: u64) {
        let s = self.slot(k);
        let was_empty = s.queue.is_empty();
        s.queue.push_back((r, now));
        if was_empty {
            let key = s.key;
            self.policy.set_runnable(key, true);
        }
    }

    /// A job of slot `k` is done: release the slot if it has no more.
    fn job_done(&mut self, k: u32) {
        let s = self.slot(k);
        s.jobs -= 1;
        if s.jobs == 0 && s.queue.is_empty() {
            let s = self.slots[k as usize].take().expect("live");
            self.by_id.remove(&s.container.id());
            self.policy.detach(s.key);
        }
    }
}

impl PoolShared {
    fn schedule(self: &Arc<Self>, r: Runnable) {
        let mut st = lock(&self.state);
        if st.shutdown {
            drop(st);
            drop(r);
            return;
        }
        let k = r.metadata().key();
        let now = self.clock.now_ns();
        st.push(k, r, now);
        drop(st);
        self.work.notify_one();
    }

    fn spawn_thread(self: &Arc<Self>, st: &mut PoolState) {
        let me = self.clone();
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
            st.policy.refill(now);
            let Some(pick) = st.policy.pick() else {
                let wait = st.policy.next_refill().map(|t| {
                    Duration::from_nanos(t.saturating_sub(now)).max(Duration::from_micros(100))
                });
                st.idle += 1;
                let (g, to) = self
                    .work
                    .wait_timeout(st, wait.unwrap_or(self.keep_alive))
                    .unwrap_or_else(|e| e.into_inner());
                st = g;
                st.idle -= 1;
                if to.timed_out() && wait.is_none() && st.policy.next_refill().is_none() {
                    // Idle for keep_alive with nothing to do: this thread goes.
                    let mut probe_st = st;
                    probe_st.policy.refill(self.clock.now_ns());
                    if probe_st.policy.pick().is_none() {
                        st = probe_st;
                        break;
                    }
                    st = probe_st;
                }
                continue;
            };
            let k = pick.key.index() as u32;
            let s = st.slot(k);
            let (r, queued_at) = s.queue.pop_front().expect("picked slot has a job");
            let container = s.container.clone();
            if s.queue.is_empty() {
                let key = s.key;
                st.policy.set_runnable(key, false);
            }
            drop(st);
            container
                .account()
                .add_wait_ns(self.clock.now_ns().saturating_sub(queued_at));
            container.account().add_polls(1);
            let cpu0 = sys::thread_cpu_ns();
            let guard = context::enter(Entered {
                rt: self.rt.upgrade(),
                binding: container,
                seg_start: cpu0,
                mode: Mode::Blocking { first_ns: None },
                clock: self.clock.clone(),
            });
            let _ = catch_unwind(AssertUnwindSafe(|| r.run()));
            let cpu1 = sys::thread_cpu_ns();
            let entered = guard.take();
            st = lock(&self.state);
            let key = st.slot(k).key;
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
                    st.policy.charge(key, first);
                    binding.account().add_cpu_ns(cpu1.saturating_sub(seg_start));
                }
                _ => st.policy.charge(key, cpu1.saturating_sub(cpu0)),
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
        for s in st.slots.iter_mut().flatten() {
            cancelled.extend(s.queue.drain(..).map(|(r, _)| r));
        }
        let slots = std::mem::take(&mut st.slots);
        st.by_id.clear();
        for s in slots.into_iter().flatten() {
            st.policy.detach(s.key);
        }
        st.policy.flush();
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
        }
    }

    /// Runs `f` on a pool thread, queued in `container`'s order and charged with the thread
    /// CPU time it uses. If the pool has shut down, the handle reports cancellation.
    pub fn spawn_in<F, R>(&self, container: &Container, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let shared = self.inner.shared.clone();
        let sched = shared.clone();
        let (r, h) = task::build(async move { f() }, false, move |r, _| sched.schedule(r));
        let mut st = lock(&shared.state);
        if st.shutdown {
            drop(st);
            drop(r);
            return h;
        }
        let k = st.slot_for(container);
        st.slot(k).jobs += 1;
        r.metadata().set_key(k);
        let now = shared.clock.now_ns();
        st.push(k, r, now);
        if st.idle == 0 && st.threads < shared.max_threads {
            shared.spawn_thread(&mut st);
        }
        drop(st);
        shared.work.notify_one();
        h
    }

    /// Threads alive now.
    pub fn threads(&self) -> usize {
        lock(&self.inner.shared.state).threads
    }
}
