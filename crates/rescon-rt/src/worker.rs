//! Workers: one thread each, with its own epoll instance, its own policy and its own
//! per-container run queues.
//!
//! # The loop
//!
//! ```text
//! loop {
//!     take remote work (spawns, wake-ups, timers from other threads)
//!     now = clock; fire due timers; every millisecond: maintenance
//!     policy.refill(now); pick = policy.pick()
//!     Some(pick) => run a burst of the picked container's queue, charge it
//!     None, first time since a burst => yield the CPU, poll I/O without blocking
//!     None       => flush usage, release idle containers, sleep in epoll_wait until the
//!                   next timer, the next CPU-limit refill, an I/O event or a remote wake-up
//!     every 61 polls: poll I/O without blocking
//! }
//! ```
//!
//! A *burst* runs tasks from the front of one container's queue until the queue is empty,
//! [`Config::max_burst`] polls have run, the burst has lasted [`Config::quantum`] (or the
//! container's CPU-limit slice, if shorter), another container became runnable, or remote work
//! arrived. The clock is read once per poll (the end of one poll is the start of the next) and
//! the burst's time is charged to the container with one `Policy::charge` when it ends.
//!
//! A container whose burst emptied its queue while a task is still bound to it *lingers*:
//! it stays runnable for the policy until its next turn comes (then it goes idle, and the
//! policy picks again) or new work comes (then it simply has work). A connection's container
//! on a busy keep-alive connection has its next request before its next turn, and is spared
//! a sleep and a wake in the policy per request.
//!
//! # Invariants
//!
//! - The core (`Local::core`) is borrowed only for short stretches that never poll a task,
//!   drop a task or wake a waker: those can re-enter the worker through the schedule function
//!   or a task's drop. Wakers and runnables taken out under a borrow are woken or dropped after.
//! - A slot (a container's queue) exists while a task is bound to it, its queue is non-empty,
//!   or it waits in the reclaim list; it is released (its policy key detached and its
//!   `Container` handle dropped) at the next maintenance after it became unused.

use crate::clock::Correction;
use crate::io::IoState;
use crate::prio::IdleLowering;
use crate::runtime::RtShared;
use crate::task::{self, JoinHandle, Runnable, TaskMeta, UNPLACED};
use crate::time::{TimerHeap, TimerShared};
use atomic_waker::AtomicWaker;
use rescon::sched::{Hierarchical, Key, Policy};
use rescon::{Container, ContainerId};
use rustc_hash::FxHashMap;
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

scoped_tls::scoped_thread_local!(static CTX: Local);

pub(crate) const WAKE_TOKEN: mio::Token = mio::Token(usize::MAX);
const TICK_NS: u64 = 1_000_000;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks (queues, slabs) stays consistent if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Work handed to a worker by another thread.
pub(crate) enum Remote {
    /// A new task, to be bound to the container on this worker.
    Spawn(Runnable, Container),
    /// A wake-up of a task this worker owns.
    Wake(Runnable),
    /// A timer to register.
    Timer(Arc<TimerShared>),
    /// Record all pending usage, then count down.
    Flush(Arc<FlushAll>),
}

/// A countdown of workers that have flushed their pending usage.
#[derive(Debug, Default)]
pub(crate) struct FlushAll {
    pub(crate) remaining: AtomicUsize,
    pub(crate) waker: AtomicWaker,
}

impl FlushAll {
    fn done(&self) {
        if self.remaining.fetch_sub(1, AcqRel) == 1 {
            self.waker.wake();
        }
    }
}

/// What other threads see of a worker.
pub(crate) struct WorkerShared {
    pub(crate) index: usize,
    inbox: Mutex<Vec<Remote>>,
    pending: AtomicBool,
    sleeping: AtomicBool,
    notified: AtomicBool,
    /// Set when the runtime asks the worker to stop.
    stop: AtomicBool,
    /// Set (under the inbox lock) once the worker has stopped taking work.
    closed: AtomicBool,
    waker: mio::Waker,
    pub(crate) registry: mio::Registry,
    pub(crate) io: Mutex<Slab<Arc<IoState>>>,
    /// Live tasks owned by this worker.
    pub(crate) load: AtomicUsize,
    pub(crate) tid: AtomicI32,
    pub(crate) lowered: AtomicBool,
    /// epoll_wait calls that could sleep, and those that could not (written by the worker
    /// only; see [`crate::IoPolls`]).
    pub(crate) io_sleeps: AtomicU64,
    pub(crate) io_polls: AtomicU64,
    /// Timers dropped while queued on this worker, since its timer heap last compacted (see
    /// `TimerHeap::register`).
    pub(crate) timers_dropped: AtomicUsize,
}

impl std::fmt::Debug for WorkerShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerShared")
            .field("index", &self.index)
            .field("load", &self.load)
            .finish_non_exhaustive()
    }
}

impl WorkerShared {
    pub(crate) fn new(index: usize, poll: &mio::Poll) -> std::io::Result<WorkerShared> {
        Ok(WorkerShared {
            index,
            inbox: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            notified: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            waker: mio::Waker::new(poll.registry(), WAKE_TOKEN)?,
            registry: poll.registry().try_clone()?,
            io: Mutex::new(Slab::new()),
            load: AtomicUsize::new(0),
            tid: AtomicI32::new(0),
            lowered: AtomicBool::new(false),
            io_sleeps: AtomicU64::new(0),
            io_polls: AtomicU64::new(0),
            timers_dropped: AtomicUsize::new(0),
        })
    }

    /// Hands work to the worker from another thread, waking it if it sleeps. After the
    /// worker has stopped, the work is dropped here (a task's future with it).
    pub(crate) fn push(&self, r: Remote) {
        {
            let mut inbox = lock(&self.inbox);
            if !self.closed.load(Relaxed) {
                inbox.push(r);
                drop(inbox);
                self.pending.store(true, SeqCst);
                self.wake_if_sleeping();
                return;
            }
        }
        // Closed: dropped outside the lock, since dropping a task may push again.
        if let Remote::Flush(f) = &r {
            f.done();
        }
        drop(r);
    }

    /// Wakes the worker if it sleeps (or is about to: see `Local::park`).
    pub(crate) fn wake_if_sleeping(&self) {
        if self.sleeping.load(SeqCst) && !self.notified.swap(true, AcqRel) {
            let _ = self.waker.wake();
        }
    }

    /// Wakes the worker to look at its policy again (an attribute changed elsewhere).
    pub(crate) fn nudge(&self) {
        self.pending.store(true, SeqCst);
        self.wake_if_sleeping();
    }

    /// Asks the worker to stop.
    pub(crate) fn stop(&self) {
        self.stop.store(true, SeqCst);
        self.pending.store(true, SeqCst);
        let _ = self.waker.wake();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Acquire)
    }
}

/// The schedule function of every task: routes a wake-up to the owning worker's run queue.
pub(crate) fn schedule(owner: &Arc<WorkerShared>, r: Runnable, info: async_task::ScheduleInfo) {
    let r = if CTX.is_set() {
        CTX.with(|l| {
            if Arc::ptr_eq(&l.shared, owner) {
                l.schedule_local(r, info);
                None
            } else {
                Some(r)
            }
        })
    } else {
        Some(r)
    };
    if let Some(r) = r {
        owner.push(Remote::Wake(r));
    }
}

/// Registers a timer with a worker.
pub(crate) fn register_timer(w: &Arc<WorkerShared>, t: Arc<TimerShared>) {
    let t = if CTX.is_set() {
        CTX.with(|l| {
            if Arc::ptr_eq(&l.shared, w) {
                let now = l.now.get();
                l.core
                    .borrow_mut()
                    .timers
                    .register_local(t, now, &w.timers_dropped);
                None
            } else {
                Some(t)
            }
        })
    } else {
        Some(t)
    };
    if let Some(t) = t {
        w.push(Remote::Timer(t));
    }
}

/// Called when a task's future is dropped: if it is the task this worker is running, the
/// worker releases the task's binding when the poll returns.
pub(crate) fn task_dropped(meta_id: usize) {
    if CTX.is_set() {
        CTX.with(|l| {
            if l.running_meta.get() as usize == meta_id {
                l.ended.set(true);
            }
        })
    }
}

pub(crate) fn with_local<R>(f: impl FnOnce(&Local) -> R) -> Option<R> {
    if CTX.is_set() {
        Some(CTX.with(f))
    } else {
        None
    }
}

/// Entries in the running worker's timer heap (live, stale and dropped), for tests.
#[cfg(test)]
pub(crate) fn timer_entries() -> Option<usize> {
    with_local(|l| l.core.borrow().timers.len())
}

/// Most distinct containers a burst's rebindings charge at its end; more are charged at once.
const DEFERRED_MAX: usize = 8;

/// The worker's tuning, from the [`Builder`](crate::Builder).
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) quantum_ns: u64,
    pub(crate) max_burst: u32,
    pub(crate) event_interval: u32,
    pub(crate) event_gap_ns: u64,
    /// See `Builder::yield_before_sleep`.
    pub(crate) yield_before_sleep: bool,
}

/// Whether a worker may yield before it sleeps: not for a while once yields keep it away long.
/// A yield is meant for a thread that runs briefly and blocks (the client about to send the
/// next requests); given to a CPU-bound thread on the same core, it keeps the worker off the
/// CPU for that thread's whole time slice (milliseconds; measured: a 4 ms 90th percentile for
/// an echo round trip), where a worker asleep in `epoll_wait` would have been woken at the
/// first event. So when two of the last eight yields were long, the worker sleeps without
/// yielding for a pause: 10 ms, doubled (up to a second) when it happens again within the
/// first eight yields after a pause, as it does while the CPU-bound thread stays. Next to one
/// that costs two or three slow round trips per second (measured, 40,000 echo round trips
/// beside a busy loop on the worker's core: 90th percentile 58-61 us, 99th 144-231 us, against
/// 55-58 and 99-135 us without yielding; without this gate, a 90th percentile of 3.9 ms). A
/// long yield now and then (the host took the CPU, the load generator was preempted) does not
/// close it.
///
/// Long is 2 ms: a CPU-bound thread's slice here is a 250 Hz tick, 4 ms, while in the
/// per-core benchmark, where a yield goes to the client or the other worker, 1 yield in about
/// 1,300 takes 2 ms or more and 1 in 200 takes more than 1 ms. On a kernel with shorter
/// slices a CPU-bound neighbour may go unnoticed; `Builder::yield_before_sleep(false)` is the
/// way out there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct YieldGate {
    /// The yields since the gate last opened, the last eight, newest in the low bit: 1 for a
    /// long one.
    recent: u8,
    /// Yields since the gate last opened.
    since_open: u32,
    pause_ns: u64,
    closed_until: u64,
}

impl YieldGate {
    /// A yield that kept the worker away at least this long went to a CPU-bound thread.
    const LONG_NS: u64 = 2_000_000;
    const PAUSE_MIN_NS: u64 = 10_000_000;
    const PAUSE_MAX_NS: u64 = 1_000_000_000;

    fn open(self, now: u64) -> bool {
        now >= self.closed_until
    }

    /// Records a yield from `start` to `end`.
    fn yielded(&mut self, start: u64, end: u64) {
        let long = end.saturating_sub(start) >= Self::LONG_NS;
        self.recent = (self.recent << 1) | long as u8;
        self.since_open = self.since_open.saturating_add(1);
        if !long || self.recent.count_ones() < 2 {
            return;
        }
        // Among the first yields after a pause: the CPU-bound thread is still there.
        let again = self.pause_ns > 0 && self.since_open <= 8;
        self.pause_ns = if again {
            (self.pause_ns * 2).clamp(Self::PAUSE_MIN_NS, Self::PAUSE_MAX_NS)
        } else {
            Self::PAUSE_MIN_NS
        };
        self.closed_until = end + self.pause_ns;
        self.recent = 0;
        self.since_open = 0;
    }
}

#[derive(Clone, Copy, Debug)]
struct Run {
    key: u32,
    seg_start: u64,
}

const NOT_RUNNING: Run = Run {
    key: UNPLACED,
    seg_start: 0,
};

/// One container's place on a worker.
#[derive(Debug)]
struct Slot {
    container: Container,
    key: Key,
    queue: VecDeque<(Runnable, u64)>,
    /// Tasks bound to it.
    bound: u32,
    /// Whether the policy has it runnable.
    runnable: bool,
    /// Runnable for the policy with an empty queue: its last burst emptied it while a task
    /// was still bound to it (see `Local::run_burst`).
    lingering: bool,
    /// Effective scheduling class (the lowest on its path), for idle lowering.
    class: u8,
    in_reclaim: bool,
    dirty: bool,
    polls: u64,
    wait_ns: u64,
}

pub(crate) struct Core {
    policy: Hierarchical,
    slots: Vec<Option<Slot>>,
    by_id: FxHashMap<ContainerId, u32>,
    tasks: Slab<Waker>,
    pub(crate) timers: TimerHeap,
    reclaim: Vec<u32>,
    dirty: Vec<u32>,
    corr: Correction,
    idle: IdleLowering,
    served: Vec<u32>,
}

impl Core {
    #[inline]
    fn slot(&mut self, k: u32) -> &mut Slot {
        self.slots[k as usize].as_mut().expect("live slot")
    }

    /// The slot of a container, made (and attached to the policy) if needed.
    fn slot_for(&mut self, c: &Container, rt: &RtShared) -> u32 {
        if let Some(&k) = self.by_id.get(&c.id()) {
            return k;
        }
        let key = self.policy.attach(c);
        let k = key.index() as u32;
        if self.slots.len() <= k as usize {
            self.slots.resize_with(k as usize + 1, || None);
        }
        let class = if self.idle.enabled() {
            crate::prio::effective_class(&rt.registry, c)
        } else {
            rescon::SchedClass::NORMAL.get()
        };
        self.slots[k as usize] = Some(Slot {
            container: c.unprivileged(),
            key,
            queue: VecDeque::new(),
            bound: 0,
            runnable: false,
            lingering: false,
            class,
            in_reclaim: false,
            dirty: false,
            polls: 0,
            wait_ns: 0,
        });
        self.by_id.insert(c.id(), k);
        k
    }

    /// Queues a runnable task; returns whether its container became runnable (from idle, or
    /// from lingering: runnable for the policy already, but with nothing to run).
    #[inline]
    fn push(&mut self, k: u32, r: Runnable, now: u64) -> bool {
        let s = self.slot(k);
        s.queue.push_back((r, now));
        if s.runnable {
            if !s.lingering {
                return false;
            }
            s.lingering = false;
            let class = s.class;
            self.idle.on_runnable(class);
            return true;
        }
        s.runnable = true;
        let (key, class) = (s.key, s.class);
        self.policy.set_runnable(key, true);
        self.idle.on_runnable(class);
        true
    }

    /// Drops a task's binding to a slot.
    fn unbind(&mut self, k: u32) {
        let s = self.slot(k);
        s.bound -= 1;
        if s.bound == 0 && s.lingering {
            self.end_linger(k);
            return;
        }
        let s = self.slot(k);
        if s.bound == 0 && s.queue.is_empty() && !s.in_reclaim {
            s.in_reclaim = true;
            self.reclaim.push(k);
        }
    }

    /// Makes a lingering slot idle, for the policy too; returns whether it was lingering.
    fn end_linger(&mut self, k: u32) -> bool {
        let s = self.slot(k);
        if !s.lingering {
            return false;
        }
        s.lingering = false;
        s.runnable = false;
        let key = s.key;
        let unused = s.bound == 0 && !s.in_reclaim;
        if unused {
            s.in_reclaim = true;
        }
        self.policy.set_runnable(key, false);
        if unused {
            self.reclaim.push(k);
        }
        true
    }

    fn charge(&mut self, k: u32, ns: u64) {
        let ns = self.corr.scale(ns);
        let key = self.slot(k).key;
        self.policy.charge(key, ns);
    }

    /// Records pending polls and wait time into the containers' usage.
    fn flush_counters(&mut self) {
        for k in std::mem::take(&mut self.dirty) {
            if let Some(s) = self.slots[k as usize].as_mut() {
                flush_slot(s);
            }
        }
    }

    fn flush_all(&mut self) {
        self.flush_counters();
        self.policy.flush();
    }

    /// Releases the slots nobody uses any more.
    fn reclaim(&mut self) {
        let list = std::mem::take(&mut self.reclaim);
        for k in list {
            let Some(s) = self.slots[k as usize].as_mut() else {
                continue;
            };
            s.in_reclaim = false;
            if s.bound > 0 || !s.queue.is_empty() || s.runnable {
                continue;
            }
            flush_slot(s);
            let s = self.slots[k as usize].take().expect("checked");
            self.by_id.remove(&s.container.id());
            self.policy.detach(s.key);
        }
    }

    /// Re-reads the classes of the containers served in the last window (idle lowering).
    fn refresh_served_classes(&mut self, rt: &RtShared) -> u8 {
        let mut mask = 0u8;
        for k in std::mem::take(&mut self.served) {
            if let Some(s) = self.slots[k as usize].as_mut() {
                s.class = crate::prio::effective_class(&rt.registry, &s.container);
                mask |= 1 << s.class;
            }
        }
        mask
    }
}

fn flush_slot(s: &mut Slot) {
    if s.polls > 0 || s.wait_ns > 0 {
        let a = s.container.account();
        a.add_polls(s.polls);
        a.add_wait_ns(s.wait_ns);
        s.polls = 0;
        s.wait_ns = 0;
    }
    s.dirty = false;
}

/// A worker's thread-local state.
pub(crate) struct Local {
    pub(crate) shared: Arc<WorkerShared>,
    pub(crate) rt: Arc<RtShared>,
    core: RefCell<Core>,
    io: RefCell<(mio::Poll, mio::Events)>,
    running: Cell<Run>,
    /// The metadata of the task being polled (null outside a poll): its address identifies
    /// the task, and `bind` writes the new key through it.
    running_meta: Cell<*const TaskMeta>,
    ended: Cell<bool>,
    preempt: Cell<bool>,
    closing: Cell<bool>,
    now: Cell<u64>,
    next_tick: Cell<u64>,
    io_budget: Cell<u32>,
    /// Yielded the CPU since it last ran a task (see `main_loop`).
    yielded: Cell<bool>,
    yield_gate: Cell<YieldGate>,
    /// When I/O was last polled (runtime clock, ns).
    last_io: Cell<u64>,
    /// CPU of segments that ran before a rebinding in this burst, by slot: charged when the
    /// burst ends. The policy decides only between bursts, so charging then changes no
    /// decision, and a task that rebinds often charges each container once per burst.
    deferred: RefCell<Vec<(u32, u64)>>,
    wakers: RefCell<Vec<Waker>>,
    spare: RefCell<Vec<Remote>>,
    cfg: Config,
}

impl Local {
    pub(crate) fn new(
        shared: Arc<WorkerShared>,
        rt: Arc<RtShared>,
        poll: mio::Poll,
        policy: Hierarchical,
        idle: IdleLowering,
    ) -> Local {
        let now = rt.clock.now_ns();
        let cfg = rt.worker_cfg.clone();
        let correct = rt.correct_cpu && !rt.clock.is_manual();
        Local {
            shared,
            core: RefCell::new(Core {
                policy,
                slots: Vec::new(),
                by_id: FxHashMap::default(),
                tasks: Slab::new(),
                timers: TimerHeap::default(),
                reclaim: Vec::new(),
                dirty: Vec::new(),
                corr: Correction::new(correct, now),
                idle,
                served: Vec::new(),
            }),
            io: RefCell::new((poll, mio::Events::with_capacity(1024))),
            running: Cell::new(NOT_RUNNING),
            running_meta: Cell::new(std::ptr::null()),
            ended: Cell::new(false),
            preempt: Cell::new(false),
            closing: Cell::new(false),
            now: Cell::new(now),
            next_tick: Cell::new(now + TICK_NS),
            io_budget: Cell::new(cfg.event_interval),
            yielded: Cell::new(false),
            yield_gate: Cell::new(YieldGate::default()),
            last_io: Cell::new(0),
            deferred: RefCell::new(Vec::with_capacity(DEFERRED_MAX)),
            wakers: RefCell::new(Vec::new()),
            spare: RefCell::new(Vec::new()),
            cfg,
            rt,
        }
    }

    /// Runs the worker until the runtime stops it, then cancels what is left.
    pub(crate) fn run(&self) {
        CTX.set(self, || {
            self.main_loop();
            self.shutdown();
        });
    }

    fn main_loop(&self) {
        loop {
            if self.shared.stop.load(Relaxed) {
                return;
            }
            self.drain_remote();
            let now = self.rt.clock.now_ns();
            self.now.set(now);
            self.fire_timers(now);
            if now >= self.next_tick.get() {
                self.maintain(now);
            }
            // Busy with many short tasks, the poll count alone lets I/O wait for 61 of them:
            // a high-class connection's request would wait behind them. A time bound keeps
            // the worker's view of I/O at most `event_gap` old, for the price of an epoll_wait
            // per gap.
            if now.saturating_sub(self.last_io.get()) >= self.cfg.event_gap_ns {
                self.poll_io(Some(Duration::ZERO));
            }
            let pick = {
                let mut core = self.core.borrow_mut();
                core.policy.refill(now);
                loop {
                    match core.policy.pick() {
                        // Its turn came before new work did: idle now, and pick again.
                        Some(p) if core.end_linger(p.key.index() as u32) => {}
                        p => break p,
                    }
                }
            };
            match pick {
                Some(p) => {
                    self.yielded.set(false);
                    self.run_burst(p);
                    if self.io_budget.get() == 0 {
                        self.poll_io(Some(Duration::ZERO));
                    }
                }
                None if self.cfg.yield_before_sleep
                    && !self.yielded.get()
                    && self.yield_gate.get().open(now)
                    && !self.rt.clock.is_manual() =>
                {
                    self.yielded.set(true);
                    self.yield_cpu(now);
                }
                None => self.park(now),
            }
        }
    }

    /// Runs tasks of the picked container: see the module docs.
    fn run_burst(&self, pick: rescon::sched::Pick) {
        let k = pick.key.index() as u32;
        let quantum = pick
            .slice_ns
            .map_or(self.cfg.quantum_ns, |s| s.min(self.cfg.quantum_ns));
        let clock = &self.rt.clock;
        let t0 = clock.now_ns();
        let mut t = t0;
        self.running.set(Run {
            key: k,
            seg_start: t0,
        });
        self.preempt.set(false);
        let (mut polls, mut wait) = (0u32, 0u64);
        let mut rebound = false;
        loop {
            let next = self.core.borrow_mut().slot(k).queue.pop_front();
            let Some((runnable, queued_at)) = next else {
                break;
            };
            wait += t.saturating_sub(queued_at);
            polls += 1;
            let meta: *const TaskMeta = runnable.metadata();
            let idx = runnable.metadata().idx.load(Relaxed);
            self.running_meta.set(meta);
            self.ended.set(false);
            // A panic escaping `run` (only from a future's destructor: polls are caught in
            // `TaskFuture`) must not take the worker down.
            let _ = catch_unwind(AssertUnwindSafe(|| runnable.run()));
            self.running_meta.set(std::ptr::null());
            t = clock.now_ns();
            self.now.set(t);
            let run = self.running.get();
            let mut core = self.core.borrow_mut();
            if self.ended.get() {
                self.ended.set(false);
                core.tasks.try_remove(idx as usize);
                core.unbind(run.key);
                self.shared.load.fetch_sub(1, Relaxed);
            }
            if run.key != k {
                // Rebound during this poll: the time before the bind went to `k` in `bind`,
                // the rest goes to the new container, and the policy decides what runs next.
                core.charge(run.key, t.saturating_sub(run.seg_start));
                rebound = true;
                break;
            }
            if polls >= self.cfg.max_burst
                || t.saturating_sub(t0) >= quantum
                || self.preempt.get()
                || self.shared.pending.load(Relaxed)
            {
                break;
            }
        }
        let run = self.running.get();
        self.running.set(NOT_RUNNING);
        let mut core = self.core.borrow_mut();
        // A container the burst left with nothing to run, typical of a connection's (one
        // short poll per request), lingers while a task is bound to it: it stays runnable for
        // the policy until its next turn. If work comes first, as the next request on a busy
        // keep-alive connection usually does, the policy is spared a sleep and a wake (about
        // 600 instructions of the 1,600 a container per connection cost rescon-httpd per
        // request, callgrind); if its turn comes first, it goes idle then. Otherwise it goes
        // idle before its charge (the same result, and the cheaper order for the policy:
        // `Policy::charge`).
        let emptied = core.slot(k).queue.is_empty();
        if emptied {
            let s = core.slot(k);
            if s.bound > 0 {
                s.lingering = true;
            } else {
                s.runnable = false;
                let key = s.key;
                core.policy.set_runnable(key, false);
            }
        }
        if !rebound {
            core.charge(k, t.saturating_sub(run.seg_start));
        }
        // Before anything can reclaim the slots they name (bound counts keep them until here).
        for (key, ns) in self.deferred.borrow_mut().drain(..) {
            core.charge(key, ns);
        }
        let Core {
            slots,
            dirty,
            reclaim,
            idle,
            served,
            ..
        } = &mut *core;
        let s = slots[k as usize].as_mut().expect("live slot");
        s.polls += polls as u64;
        s.wait_ns += wait;
        if !s.dirty {
            s.dirty = true;
            dirty.push(k);
        }
        if idle.enabled() && idle.served(s.class) {
            served.push(k);
        }
        if emptied && s.bound == 0 && !s.in_reclaim {
            s.in_reclaim = true;
            reclaim.push(k);
        }
        drop(core);
        self.io_budget
            .set(self.io_budget.get().saturating_sub(polls.max(1)));
    }

    /// Puts a woken task in its container's queue (on the owning worker's thread).
    fn schedule_local(&self, r: Runnable, info: async_task::ScheduleInfo) {
        if self.closing.get() {
            drop(r);
            return;
        }
        let k = r.metadata().key();
        let now = self.now.get();
        let Ok(mut core) = self.core.try_borrow_mut() else {
            // Woken from inside a core borrow: cannot happen by the invariants, but if it
            // did, the wake-up is not lost: it goes round through the inbox.
            self.shared.push(Remote::Wake(r));
            return;
        };
        let became = core.push(k, r, now);
        // A yield (woken while running) stays in the running container; a wake-up that made
        // another container runnable ends the burst so the policy can choose again.
        if became && !info.woken_while_running && k != self.running.get().key {
            self.preempt.set(true);
        }
    }

    /// Places a new task on this worker, bound to slot `k`.
    fn place(&self, core: &mut Core, r: Runnable, k: u32) {
        let meta = r.metadata();
        meta.set_key(k);
        let idx = core.tasks.insert(r.waker());
        meta.idx.store(idx as u32, Relaxed);
        core.slot(k).bound += 1;
        if core.push(k, r, self.now.get()) && k != self.running.get().key {
            self.preempt.set(true);
        }
    }

    /// Spawns a future on this worker, bound to `c` (or, with `None`, to the running task's
    /// container, or the runtime's default outside a task).
    pub(crate) fn spawn_local<F>(&self, c: Option<&Container>, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let owner = self.shared.clone();
        let (r, h) = task::build(fut, true, move |r, info| schedule(&owner, r, info));
        self.shared.load.fetch_add(1, Relaxed);
        if self.closing.get() {
            drop(r);
            return h;
        }
        let mut core = self.core.borrow_mut();
        let run = self.running.get();
        let k = match c {
            Some(c) => core.slot_for(c, &self.rt),
            None if run.key != UNPLACED => run.key,
            None => core.slot_for(&self.rt.default_container, &self.rt),
        };
        self.place(&mut core, r, k);
        h
    }

    /// Whether a task is being polled.
    pub(crate) fn in_task(&self) -> bool {
        self.running.get().key != UNPLACED
    }

    /// The running task's container, if a task is running.
    pub(crate) fn current(&self) -> Option<Container> {
        let run = self.running.get();
        if run.key == UNPLACED {
            return None;
        }
        let mut core = self.core.borrow_mut();
        Some(core.slot(run.key).container.clone())
    }

    /// Whether the running task is bound to `c` (`None` if no task is running).
    pub(crate) fn is_bound_to(&self, c: &Container) -> Option<bool> {
        let run = self.running.get();
        if run.key == UNPLACED {
            return None;
        }
        let mut core = self.core.borrow_mut();
        Some(core.slot(run.key).container.id() == c.id())
    }

    /// Rebinds the running task: returns false if no task is running.
    #[allow(unsafe_code)]
    pub(crate) fn bind(&self, c: &Container) -> bool {
        let run = self.running.get();
        let meta = self.running_meta.get();
        if run.key == UNPLACED || meta.is_null() {
            return false;
        }
        let mut core = self.core.borrow_mut();
        let k = core.slot_for(c, &self.rt);
        if k == run.key {
            return true;
        }
        let now = self.rt.clock.now_ns();
        let ns = now.saturating_sub(run.seg_start);
        {
            let mut d = self.deferred.borrow_mut();
            if let Some(e) = d.iter_mut().find(|e| e.0 == run.key) {
                e.1 += ns;
            } else if d.len() < DEFERRED_MAX {
                d.push((run.key, ns));
            } else {
                core.charge(run.key, ns);
            }
        }
        core.slot(k).bound += 1;
        core.unbind(run.key);
        // SAFETY: `meta` was set from the running task's `Runnable::metadata()` just before
        // `Runnable::run` and is cleared right after it returns; we are inside that call (on
        // this thread, with `running` set), and async-task keeps the task's allocation, which
        // holds the metadata, alive while it runs.
        unsafe { &*meta }.set_key(k);
        self.running.set(Run {
            key: k,
            seg_start: now,
        });
        true
    }

    fn drain_remote(&self) {
        if !self.shared.pending.load(Relaxed) || !self.shared.pending.swap(false, AcqRel) {
            return;
        }
        let mut items = std::mem::take(&mut *self.spare.borrow_mut());
        std::mem::swap(&mut items, &mut *lock(&self.shared.inbox));
        let now = self.rt.clock.now_ns();
        self.now.set(now);
        let mut flushes = Vec::new();
        {
            let mut core = self.core.borrow_mut();
            for item in items.drain(..) {
                match item {
                    Remote::Spawn(r, c) => {
                        let k = core.slot_for(&c, &self.rt);
                        self.place(&mut core, r, k);
                    }
                    Remote::Wake(r) => {
                        let k = r.metadata().key();
                        core.push(k, r, now);
                    }
                    Remote::Timer(t) => core.timers.register(t, &self.shared.timers_dropped),
                    Remote::Flush(f) => flushes.push(f),
                }
            }
            if !flushes.is_empty() {
                core.flush_all();
            }
        }
        *self.spare.borrow_mut() = items;
        for f in flushes {
            f.done();
        }
    }

    fn fire_timers(&self, now: u64) {
        let mut wakers = self.wakers.borrow_mut();
        {
            let mut core = self.core.borrow_mut();
            if core.timers.next_deadline().is_none_or(|d| d > now) {
                return;
            }
            core.timers.fire(now, &mut wakers);
        }
        let list = std::mem::take(&mut *wakers);
        drop(wakers);
        for w in list {
            w.wake();
        }
    }

    /// Every millisecond of worker time: usage, unused slots, the CPU-clock correction and
    /// the idle-lowering decision.
    fn maintain(&self, now: u64) {
        self.next_tick.set(now + TICK_NS);
        let mut core = self.core.borrow_mut();
        core.timers.promote();
        core.flush_counters();
        core.reclaim();
        core.corr.tick(now);
        if core.idle.enabled() && core.idle.window_wants_lower() {
            // Confirm with fresh classes before lowering.
            let mask = core.refresh_served_classes(&self.rt);
            core.idle.confirm_lower(mask, &self.shared);
        } else {
            core.served.clear();
        }
        // A raise on runnable work happens outside this decision: publish the state.
        if core.idle.enabled() {
            self.shared.lowered.store(core.idle.is_lowered(), Relaxed);
        }
    }

    /// Nothing may run: record usage, release unused slots, and sleep until there is work.
    fn park(&self, now: u64) {
        let deadline = {
            let mut core = self.core.borrow_mut();
            core.flush_all();
            core.reclaim();
            core.timers.promote();
            let t = core.timers.next_deadline();
            let r = core.policy.next_refill();
            match (t, r) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        if self.rt.clock.is_manual() {
            if let Some(d) = deadline {
                if !self.shared.pending.load(SeqCst) {
                    // Simulated time: nothing to do until `d`, so it is `d` now.
                    self.rt.clock.set(d);
                }
                self.poll_io(Some(Duration::ZERO));
                return;
            }
        }
        let timeout = deadline.map(|d| Duration::from_nanos(d.saturating_sub(now)));
        // Announce the sleep, then look for work once more: a remote push either sees
        // `sleeping` and wakes us, or happened before and we see `pending` (both SeqCst).
        self.shared.sleeping.store(true, SeqCst);
        if self.shared.pending.load(SeqCst) || self.shared.stop.load(SeqCst) {
            self.shared.sleeping.store(false, SeqCst);
            return;
        }
        self.poll_io(timeout);
        self.shared.sleeping.store(false, SeqCst);
        self.shared.notified.store(false, Release);
        let after = self.rt.clock.now_ns();
        // The view of I/O is as fresh as the end of the sleep, not its start: otherwise a
        // sleep longer than the event gap is followed at once by a second, non-blocking
        // epoll_wait (measured: 1.6 of them per blocking one in the echo benchmark).
        self.last_io.set(after);
        self.core.borrow_mut().corr.slept(after.saturating_sub(now));
    }

    /// Before sleeping: lets another runnable thread have this CPU, then looks for events
    /// once more (see `Builder::yield_before_sleep`). The time away counts as slept for the
    /// CPU correction, as a sleep in `epoll_wait` does.
    fn yield_cpu(&self, now: u64) {
        std::thread::yield_now();
        let after = self.rt.clock.now_ns();
        let mut gate = self.yield_gate.get();
        gate.yielded(now, after);
        self.yield_gate.set(gate);
        self.core.borrow_mut().corr.slept(after.saturating_sub(now));
        self.now.set(after);
        self.poll_io(Some(Duration::ZERO));
    }

    /// Waits for I/O events (at most `timeout`) and wakes the tasks waiting for them.
    fn poll_io(&self, timeout: Option<Duration>) {
        self.io_budget.set(self.cfg.event_interval);
        // Only this thread writes the counters: a load and a store, no locked add.
        let n = if timeout == Some(Duration::ZERO) {
            &self.shared.io_polls
        } else {
            &self.shared.io_sleeps
        };
        n.store(n.load(Relaxed) + 1, Relaxed);
        self.last_io.set(self.now.get());
        let mut wakers = self.wakers.borrow_mut();
        {
            let mut io = self.io.borrow_mut();
            let (poll, events) = &mut *io;
            if let Err(e) = poll.poll(events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::warn!(worker = self.shared.index, error = %e, "epoll_wait failed");
                }
                return;
            }
            if events.is_empty() {
                return;
            }
            let slab = lock(&self.shared.io);
            for ev in events.iter() {
                if ev.token() == WAKE_TOKEN {
                    continue;
                }
                if let Some(st) = slab.get(ev.token().0) {
                    st.set_ready(ev, &mut wakers);
                }
            }
        }
        let list = std::mem::take(&mut *wakers);
        drop(wakers);
        for w in list {
            w.wake();
        }
    }

    /// After the loop: cancel every task, wake every waiter, release every container.
    fn shutdown(&self) {
        self.closing.set(true);
        {
            let mut inbox = lock(&self.shared.inbox);
            self.shared.closed.store(true, Release);
            let items = std::mem::take(&mut *inbox);
            drop(inbox);
            drop(items);
        }
        loop {
            let mut runnables = Vec::new();
            let mut wakers = Vec::new();
            {
                let mut core = self.core.borrow_mut();
                for s in core.slots.iter_mut().flatten() {
                    runnables.extend(s.queue.drain(..).map(|(r, _)| r));
                }
                wakers.extend(core.tasks.drain());
                core.timers.drain(&mut wakers);
            }
            for st in lock(&self.shared.io).iter() {
                st.1.shut_down(&mut wakers);
            }
            if runnables.is_empty() && wakers.is_empty() {
                break;
            }
            drop(runnables);
            for w in wakers {
                w.wake();
            }
        }
        let mut core = self.core.borrow_mut();
        core.flush_counters();
        let slots = std::mem::take(&mut core.slots);
        core.by_id.clear();
        for s in slots.into_iter().flatten() {
            core.policy.detach(s.key);
        }
        core.policy.flush();
        self.shared.lowered.store(false, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::YieldGate;

    const MS: u64 = 1_000_000;

    #[test]
    fn short_yields_and_a_rare_long_one_leave_the_gate_open() {
        let mut g = YieldGate::default();
        for i in 0..1_000u64 {
            let t = i * MS;
            assert!(g.open(t), "yield {i}");
            // One long yield in a hundred.
            let away = if i % 100 == 50 { 4 * MS } else { 20_000 };
            g.yielded(t, t + away);
        }
        assert_eq!(g.pause_ns, 0);
    }

    #[test]
    fn long_yields_close_it_for_doubling_pauses_up_to_a_second() {
        let mut g = YieldGate::default();
        let mut t = 0;
        let mut pauses = Vec::new();
        for _ in 0..9 {
            // After each pause, as before the first: one long yield alone does not close it,
            // a second among the first eight does.
            assert!(g.open(t));
            g.yielded(t, t + 4 * MS);
            t += 4 * MS;
            assert!(g.open(t), "one long yield");
            g.yielded(t, t + 30_000);
            t += MS;
            g.yielded(t, t + 4 * MS);
            t += 4 * MS;
            assert!(!g.open(t), "closed after two long yields");
            pauses.push(g.closed_until - t);
            t = g.closed_until;
        }
        assert_eq!(
            pauses,
            [10, 20, 40, 80, 160, 320, 640, 1000, 1000].map(|ms| ms * MS)
        );
        // Eight short yields after a pause: the CPU-bound thread has gone. Long ones later are
        // news, so the pauses start over.
        for _ in 0..8 {
            g.yielded(t, t + 30_000);
            assert!(g.open(t + 30_000));
            t += MS;
        }
        g.yielded(t, t + 4 * MS);
        assert!(g.open(t + 4 * MS));
        g.yielded(t + 5 * MS, t + 9 * MS);
        assert_eq!(g.closed_until, t + 9 * MS + 10 * MS);
    }
}
