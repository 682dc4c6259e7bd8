//! Workers: one thread each, with its own epoll instance, its own policy and its own
//! per-container run queues; work moves between them only by the balancing rules.
//!
//! # The loop
//!
//! ```text
//! loop {
//!     take remote work (spawns, wake-ups, timers, moved tasks from other threads)
//!     now = clock; fire due timers; every millisecond: maintenance and balancing
//!     policy.refill(now); pick = policy.pick()
//!     Some(pick) => run a burst of the picked container's queue, charge it
//!     None, first time since a burst => look for work waiting on other workers,
//!                   yield the CPU, poll I/O without blocking
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
//! # Balancing
//!
//! With more than one worker, each worker, every [`BALANCE_NS`] of its time, offers the work
//! waiting in its queues on its board (`WorkerShared::board`: the containers with queued tasks,
//! where each stands in its policy), reads the other workers' boards, and asks
//! [`rescon::sched::balance::choose`] whether some of it should run here instead; if so it asks
//! that worker (`Remote::Steal`), which hands the tasks over at its next burst boundary
//! (`Remote::Adopt`). A worker that runs out of work looks once more before it sleeps, and a
//! busy worker gives work to a sleeping one directly. A task moves only while queued: its
//! metadata gets the new owner, and its wake-ups go there from then on.
//!
//! # The class hand-off
//!
//! Balancing every millisecond would let a high-class task wait that long on a worker busy
//! with other high-class work while another worker runs normal work or sleeps. So once the
//! runtime's containers are of more than one class (`Shared::classes`), a worker at the start
//! of every burst publishes the class path of the container it runs (`WorkerShared::run_path`:
//! the top [`PATH_LEVELS`] (eight) levels' ids and classes, a few relaxed stores into one
//! cache line, only when it changes), and, if work of a higher class than the lowest class
//! some other worker runs waits in its own queues (counted per class as queues fill and
//! empty, so this costs nothing when none waits), looks among its queued containers for one
//! that outclasses what that worker runs where their paths part, and hands it half of that
//! container's waiting tasks (`Remote::Adopt`; the receiver's burst ends at its next poll,
//! since remote work arrived). A worker asleep in `epoll_wait` counts as running the
//! runtime's lowest class with no path: it is handed work with a class above the lowest on
//! its path (the push wakes it). A worker whose latest burst began more than two quanta ago
//! is handed nothing: it is not running (the kernel runs another thread on its CPU, which on
//! a machine shared with other processes happens for whole kernel time slices, or one of its
//! polls runs long), and the work would wait for it longer than for its own worker. Not again to the same worker until it has taken them in;
//! after a search that found nothing, not for a few bursts. No lock, no clock: it counts
//! bursts.
//!
//! The bound: a runnable container waits for a worker running (or sleeping instead of
//! running) a class it outclasses at most the rest of its own worker's current burst
//! (`Config::quantum_ns`, or one poll if longer), [`HANDOFF_SKIP`] bursts after a fruitless
//! search, and one poll of the receiving worker. What it does not cover, bounded by
//! balancing instead (the next [`BALANCE_NS`] of the busy worker's time, then a burst):
//! - paths that part below the top eight levels (a tree deeper than eight whose classes
//!   differ only down there);
//! - work that is not a runnable task yet: an event in a worker's epoll instance waits until
//!   that worker polls I/O (every `Config::event_gap_ns` of its busy time, or when it wakes),
//!   so a socket whose worker thread the kernel does not run waits for the kernel. A server
//!   that must not let a class's connections wait so accepts them on every worker
//!   (rescon-httpd does, for classes above normal);
//! - a worker the kernel has descheduled in the middle of a burst: it is running for the
//!   hand-off, and its queued work waits for it or for another worker's balancing.
//!
//! # Invariants
//!
//! - The core (`Local::core`) is borrowed only for short stretches that never poll a task,
//!   drop a task or wake a waker: those can re-enter the worker through the schedule function
//!   or a task's drop. Wakers and runnables taken out under a borrow are woken or dropped after.
//! - A slot (a container's queue) lives as the run queues' module docs say; a worker releases
//!   unused slots at its maintenance.
//! - Every live task is counted in the `load` of exactly one worker, its owner, and listed in
//!   that worker's `tasks` (for cancellation at shutdown).

use super::inbox::{Remote, WorkerShared};
use super::queues::{ClassPath, PATH_LEVELS, RunQueues};
use super::shared::{Config, Shared};
use crate::clock::Correction;
use crate::driver::timer::{TimerHeap, TimerShared};
use crate::driver::{Driver, lock};
use crate::prio::{Boost, IdleLowering};
use crate::task::{self, JoinHandle, Runnable, Running, TaskMeta, UNPLACED};
use rescon::Container;
use rescon::sched::Standing;
use rescon::sched::balance::{BALANCE_NS, Offer, choose, choose_except};
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::*;
use std::task::Waker;
use std::time::Duration;

scoped_tls::scoped_thread_local!(static CTX: Local);

const TICK_NS: u64 = 1_000_000;
/// Containers a worker offers on its board at most.
const OFFERS: usize = 8;
/// Bursts a worker lets pass after a search for a class hand-off that found nothing.
const HANDOFF_SKIP: u32 = 8;

/// The schedule function of every task: routes a wake-up to the owning worker's run queue.
/// `home` is the worker the task was spawned on, where it usually still is.
pub(crate) fn schedule(
    home: &Arc<WorkerShared>,
    workers: &[Arc<WorkerShared>],
    r: Runnable,
    info: async_task::ScheduleInfo,
) {
    let i = r.metadata().owner();
    let owner = if i == home.index { home } else { &workers[i] };
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

/// Spawns a task on worker `w` from another thread (or from a worker that is not `w`).
pub(crate) fn spawn_on<F>(rt: &Shared, w: usize, c: Container, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (home, workers) = (rt.workers[w].clone(), rt.workers.clone());
    let (r, h) = task::build(fut, Some(w), move |r, info| {
        schedule(&home, &workers, r, info)
    });
    let owner = &rt.workers[w];
    owner.load.fetch_add(1, Relaxed);
    owner.push(Remote::Spawn(r, c));
    h
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

pub(crate) struct Core {
    queues: RunQueues,
    tasks: Slab<Waker>,
    pub(crate) timers: TimerHeap,
    corr: Correction,
    idle: IdleLowering,
    boost: Boost,
    served: Vec<u32>,
}

impl Core {
    /// The slot of a container, made if needed (`moved`: its work comes from another
    /// worker).
    fn slot_for(&mut self, c: &Container, rt: &Shared, moved: bool) -> u32 {
        let classes = self.idle.enabled() || self.boost.enabled();
        self.queues.slot_for(c, moved, || {
            if classes {
                let p = crate::prio::path_classes(&rt.registry, c);
                (p.0, crate::prio::is_high(p))
            } else {
                (rescon::SchedClass::NORMAL.get(), false)
            }
        })
    }

    /// Queues a task; returns whether its container became runnable.
    #[inline]
    fn push(&mut self, k: u32, r: Runnable, queued: u64) -> bool {
        match self.queues.push(k, r, queued) {
            Some(class) => {
                self.idle.on_runnable(class);
                true
            }
            None => false,
        }
    }

    fn charge(&mut self, k: u32, ns: u64) {
        let ns = self.corr.scale(ns);
        self.queues.charge(k, ns);
    }

    /// Re-reads the classes of the containers served in the last window (idle lowering).
    fn refresh_served_classes(&mut self, rt: &Shared) -> u8 {
        let mut mask = 0u8;
        for k in std::mem::take(&mut self.served) {
            if let Some(s) = self.queues.get_mut(k) {
                let p = crate::prio::path_classes(&rt.registry, &s.container);
                self.queues.set_class(k, p.0, crate::prio::is_high(p));
                mask |= 1 << p.0;
            }
        }
        mask
    }
}

/// A worker's thread-local state.
pub(crate) struct Local {
    pub(crate) shared: Arc<WorkerShared>,
    pub(crate) rt: Arc<Shared>,
    core: RefCell<Core>,
    driver: RefCell<Driver>,
    running: Cell<Run>,
    /// The metadata of the task being polled (null outside a poll): `bind` writes the new key
    /// through it.
    running_meta: Cell<*const TaskMeta>,
    preempt: Cell<bool>,
    closing: Cell<bool>,
    now: Cell<u64>,
    next_tick: Cell<u64>,
    next_balance: Cell<u64>,
    /// When it last looked for work on other workers because it had none.
    last_look: Cell<u64>,
    /// When it last had nothing to run: its queued work is a backlog only since then.
    busy_since: Cell<u64>,
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
    /// Scratch space for balancing: this worker's offers, the others', where its best stands.
    offers: RefCell<Vec<Offer>>,
    boards: RefCell<Vec<Vec<Offer>>>,
    mine: RefCell<Standing>,
    /// The class hand-off: the classes told to the runtime, the path last published, bursts
    /// to wait before the next search after one that found nothing, and per worker how many
    /// tasks it had taken in when this worker last handed it work (none again until it has
    /// taken that in).
    classes_told: Cell<u8>,
    published: Cell<(ClassPath, u8)>,
    handoff_skip: Cell<u32>,
    handed: RefCell<Vec<u64>>,
    cfg: Config,
}

impl Local {
    pub(crate) fn new(
        shared: Arc<WorkerShared>,
        rt: Arc<Shared>,
        driver: Driver,
        queues: RunQueues,
        idle: IdleLowering,
        boost: Boost,
    ) -> Local {
        let now = rt.clock.now_ns();
        let cfg = rt.cfg.clone();
        let correct = rt.correct_cpu && !rt.clock.is_manual();
        let n = rt.workers.len();
        Local {
            shared,
            core: RefCell::new(Core {
                queues,
                tasks: Slab::new(),
                timers: TimerHeap::default(),
                corr: Correction::new(correct, now),
                idle,
                boost,
                served: Vec::new(),
            }),
            driver: RefCell::new(driver),
            running: Cell::new(NOT_RUNNING),
            running_meta: Cell::new(std::ptr::null()),
            preempt: Cell::new(false),
            closing: Cell::new(false),
            now: Cell::new(now),
            next_tick: Cell::new(now + TICK_NS),
            next_balance: Cell::new(now + BALANCE_NS),
            last_look: Cell::new(0),
            busy_since: Cell::new(now),
            io_budget: Cell::new(cfg.event_interval),
            yielded: Cell::new(false),
            yield_gate: Cell::new(YieldGate::default()),
            last_io: Cell::new(0),
            deferred: RefCell::new(Vec::with_capacity(DEFERRED_MAX)),
            wakers: RefCell::new(Vec::new()),
            spare: RefCell::new(Vec::new()),
            offers: RefCell::new(Vec::new()),
            boards: RefCell::new(vec![Vec::new(); n]),
            mine: RefCell::new(Standing::default()),
            classes_told: Cell::new(0),
            published: Cell::new(([0; PATH_LEVELS], u8::MAX)),
            handoff_skip: Cell::new(0),
            handed: RefCell::new(vec![u64::MAX; n]),
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
                core.queues.policy.refill(now);
                let pick = core.queues.pick();
                if core.boost.enabled()
                    && let Some(p) = &pick
                {
                    // Raised while it runs high-class work or has some waiting, so that the
                    // kernel does not take the CPU from it for another thread's time slice
                    // meanwhile; at normal priority otherwise (see `prio::Boost`).
                    let k = p.key.index() as u32;
                    let want = core.queues.slot(k).is_high() || core.queues.high_queued();
                    core.boost.running(want, now);
                }
                pick
            };
            match pick {
                Some(p) => {
                    if self.busy_since.get() == u64::MAX {
                        self.busy_since.set(now);
                    }
                    self.yielded.set(false);
                    if self.cfg.balance {
                        self.class_handoff(p.key.index() as u32, now);
                    }
                    self.run_burst(p);
                    if self.io_budget.get() == 0 {
                        self.poll_io(Some(Duration::ZERO));
                    }
                }
                None => {
                    self.busy_since.set(u64::MAX);
                    if self.cfg.balance {
                        self.publish([0; PATH_LEVELS], u8::MAX);
                    }
                    if !self.yielded.get() {
                        self.look_for_work(now);
                    }
                    if self.cfg.yield_before_sleep
                        && !self.yielded.get()
                        && self.yield_gate.get().open(now)
                        && !self.rt.clock.is_manual()
                    {
                        self.yielded.set(true);
                        self.yield_cpu(now);
                    } else {
                        self.park(now);
                    }
                }
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
        let (mut polls, mut wait, mut longest) = (0u32, 0u64, 0u64);
        let mut rebound = false;
        loop {
            let next = self.core.borrow_mut().queues.pop(k);
            let Some((runnable, queued_at)) = next else {
                break;
            };
            let waited = t.saturating_sub(queued_at);
            wait += waited;
            longest = longest.max(waited);
            polls += 1;
            let meta: *const TaskMeta = runnable.metadata();
            let idx = runnable.metadata().idx.load(Relaxed);
            self.running_meta.set(meta);
            let ended = Running::run(runnable);
            self.running_meta.set(std::ptr::null());
            t = clock.now_ns();
            self.now.set(t);
            let run = self.running.get();
            let mut core = self.core.borrow_mut();
            if ended {
                core.tasks.try_remove(idx as usize);
                core.queues.unbind(run.key);
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
        let ns = core.corr.scale(t.saturating_sub(run.seg_start));
        if self.cfg.balance {
            core.queues.waited(k, longest);
        }
        // A container the burst left with nothing to run, typical of a connection's (one
        // short poll per request), lingers while a task is bound to it: it stays runnable for
        // the policy until its next turn. If work comes first, as the next request on a busy
        // keep-alive connection usually does, the policy is spared a sleep and a wake (about
        // 600 instructions of the 1,600 a container per connection cost rescon-httpd per
        // request, callgrind); if its turn comes first, it goes idle then.
        core.queues.end_burst(k, ns, !rebound, polls, wait);
        // Before anything can reclaim the slots they name (bound counts keep them until here).
        for (key, ns) in self.deferred.borrow_mut().drain(..) {
            core.charge(key, ns);
        }
        let Core {
            queues,
            idle,
            served,
            ..
        } = &mut *core;
        if idle.enabled() {
            let class = queues.slot(k).class;
            if idle.served(class) {
                served.push(k);
            }
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

    /// Makes this worker the owner of a task bound to slot `k`, and queues it (queued at
    /// `queued`).
    fn place(&self, core: &mut Core, r: Runnable, k: u32, queued: u64) {
        let meta = r.metadata();
        meta.set_key(k);
        meta.owner.store(self.shared.index as u32, Relaxed);
        let idx = core.tasks.insert(r.waker());
        meta.idx.store(idx as u32, Relaxed);
        core.queues.slot(k).bound += 1;
        if core.push(k, r, queued) && k != self.running.get().key {
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
        let (home, workers) = (self.shared.clone(), self.rt.workers.clone());
        let (r, h) = task::build(fut, Some(self.shared.index), move |r, info| {
            schedule(&home, &workers, r, info)
        });
        self.shared.load.fetch_add(1, Relaxed);
        if self.closing.get() {
            drop(r);
            return h;
        }
        let mut core = self.core.borrow_mut();
        let run = self.running.get();
        let k = match c {
            Some(c) => core.slot_for(c, &self.rt, false),
            None if run.key != UNPLACED => run.key,
            None => core.slot_for(&self.rt.default_container, &self.rt, false),
        };
        self.place(&mut core, r, k, self.now.get());
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
        Some(core.queues.slot(run.key).container.clone())
    }

    /// Whether the running task's container is high-class work (see `prio::is_high`).
    pub(crate) fn in_high_work(&self) -> bool {
        let run = self.running.get();
        if run.key == UNPLACED {
            return false;
        }
        self.core.borrow_mut().queues.slot(run.key).is_high()
    }

    /// Whether this worker raises its kernel priority while it runs high-class work (see
    /// `prio::Boost`).
    pub(crate) fn raises_for_high(&self) -> bool {
        self.core.borrow().boost.enabled()
    }

    /// Whether the running task is bound to `c` (`None` if no task is running).
    pub(crate) fn is_bound_to(&self, c: &Container) -> Option<bool> {
        let run = self.running.get();
        if run.key == UNPLACED {
            return None;
        }
        let mut core = self.core.borrow_mut();
        Some(core.queues.slot(run.key).container.id() == c.id())
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
        let k = core.slot_for(c, &self.rt, false);
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
        core.queues.slot(k).bound += 1;
        core.queues.unbind(run.key);
        // SAFETY: `meta` was set from the running task's `Runnable::metadata()` just before
        // `Running::run` and is cleared right after it returns; we are inside that call (on
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
        self.shared.take_inbox(&mut items);
        let now = self.rt.clock.now_ns();
        self.now.set(now);
        let mut flushes = Vec::new();
        let mut gifts = Vec::new();
        {
            let mut core = self.core.borrow_mut();
            for item in items.drain(..) {
                match item {
                    Remote::Spawn(r, c) => {
                        let k = core.slot_for(&c, &self.rt, false);
                        self.place(&mut core, r, k, now);
                    }
                    Remote::Wake(r) => {
                        let k = r.metadata().key();
                        core.push(k, r, now);
                    }
                    Remote::Timer(t) => core.timers.register(t, &self.shared.timers_dropped),
                    Remote::Flush(f) => flushes.push(f),
                    Remote::Steal {
                        container,
                        tasks,
                        to,
                    } => {
                        if let Some(g) = self.give(&mut core, container, tasks, to) {
                            gifts.push((to, g));
                        }
                    }
                    Remote::Adopt(c, list) => {
                        let k = core.slot_for(&c, &self.rt, true);
                        let n = list.len() as u64;
                        for (r, queued) in list {
                            self.place(&mut core, r, k, queued);
                        }
                        self.shared.load.fetch_add(n as usize, Relaxed);
                        self.shared.moved_in.fetch_add(n, Relaxed);
                    }
                }
            }
            if !flushes.is_empty() {
                core.queues.flush_all();
            }
        }
        *self.spare.borrow_mut() = items;
        for f in flushes {
            f.done();
        }
        for (to, (c, list)) in gifts {
            self.rt.workers[to].push(Remote::Adopt(c, list));
        }
    }

    /// Takes up to `n` queued tasks of a container for worker `to`: they are no longer this
    /// worker's (its owner, load and list of tasks say so at once; the caller hands them
    /// over).
    fn give(
        &self,
        core: &mut Core,
        container: rescon::ContainerId,
        n: u32,
        to: usize,
    ) -> Option<(Container, Vec<(Runnable, u64)>)> {
        let (c, list) = core.queues.take(container, n)?;
        for (r, _) in &list {
            let meta = r.metadata();
            core.tasks.try_remove(meta.idx.load(Relaxed) as usize);
            meta.set_key(UNPLACED);
            meta.owner.store(to as u32, Relaxed);
        }
        let n = list.len();
        self.shared.load.fetch_sub(n, Relaxed);
        self.shared.moved_out.fetch_add(n as u64, Relaxed);
        Some((c, list))
    }

    /// Offers this worker's waiting work, reads the others' offers, and asks for what should
    /// run here (see the module docs). With `idle`, this worker has nothing to run.
    fn balance(&self, now: u64, idle: bool) -> bool {
        let me = self.shared.index;
        let rules = self.cfg.rules;
        let mut offers = self.offers.borrow_mut();
        let mut mine = self.mine.borrow_mut();
        let has_best = {
            let mut core = self.core.borrow_mut();
            let busy = now.saturating_sub(self.busy_since.get().min(now));
            core.queues.offers(now, busy, OFFERS, &mut offers);
            !idle && core.queues.best(now, &mut mine)
        };
        {
            let mut board = lock(&self.shared.board);
            board.clone_from(&offers);
        }
        let mut boards = self.boards.borrow_mut();
        for (w, b) in boards.iter_mut().enumerate() {
            if w == me {
                b.clear();
            } else {
                b.clone_from(&lock(&self.rt.workers[w].board));
            }
        }
        let mut asked = false;
        let mine_ref = (has_best).then_some(&*mine);
        let take = (idle || has_best)
            .then(|| {
                let core = self.core.borrow();
                choose_except(me, mine_ref, &boards, &rules, |id| {
                    core.queues.has_queued(id)
                })
            })
            .flatten();
        if let Some(take) = take {
            self.rt.workers[take.from].push(Remote::Steal {
                container: take.container,
                tasks: take.tasks,
                to: me,
            });
            asked = true;
        }
        if idle {
            return asked;
        }
        // A worker asleep looks at nobody's board: give it work directly.
        std::mem::swap(&mut boards[me], &mut offers);
        for (w, other) in self.rt.workers.iter().enumerate() {
            if w == me || !other.sleeping.load(Relaxed) {
                continue;
            }
            if let Some(take) = choose(w, None, &boards, &rules)
                && take.from == me
            {
                let gift = self.give(&mut self.core.borrow_mut(), take.container, take.tasks, w);
                if let Some((c, list)) = gift {
                    other.push(Remote::Adopt(c, list));
                }
                break;
            }
        }
        std::mem::swap(&mut boards[me], &mut offers);
        asked
    }

    /// Before a burst of slot `k`, while the runtime's containers are of mixed classes:
    /// publishes what this worker runs, and hands work waiting here to a worker that runs
    /// work it outclasses (see the module docs).
    fn class_handoff(&self, k: u32, now: u64) {
        let classes = self.core.borrow().queues.classes;
        if classes & !self.classes_told.get() != 0 {
            self.classes_told.set(classes);
            self.rt.classes.fetch_or(classes, Relaxed);
        }
        if self.rt.classes.load(Relaxed).count_ones() < 2 {
            return;
        }
        let (path, min, top) = {
            let core = self.core.borrow();
            let q = &core.queues;
            let Some(s) = q.get(k) else { return };
            (s.path, s.pmin, q.top_waiting(k))
        };
        self.publish(path, min);
        self.shared.burst_at.store(now, Relaxed);
        let Some(top) = top else { return };
        let skip = self.handoff_skip.get();
        if skip > 0 {
            self.handoff_skip.set(skip - 1);
            return;
        }
        let me = self.shared.index;
        // The lowest class of the runtime: what a sleeping worker's nothing is taken for.
        let lowest = self.rt.classes.load(Relaxed).trailing_zeros() as u8;
        let mut handed = self.handed.borrow_mut();
        for (w, other) in self.rt.workers.iter().enumerate() {
            if w == me {
                continue;
            }
            // A sleeping worker runs nothing: work of a class above the lowest goes to it
            // (the push wakes it), rather than waiting here for this worker's balancing.
            let asleep = other.sleeping.load(Relaxed);
            let their_min = if asleep {
                lowest
            } else {
                other.run_min.load(Relaxed)
            };
            if their_min >= top {
                continue;
            }
            // Awake, but its burst began more than two quanta ago: the kernel is running
            // another thread on its CPU (or a poll runs long). Work handed to it would wait
            // for the kernel instead of for this worker's next burst.
            if !asleep && now.saturating_sub(other.burst_at.load(Relaxed)) > 2 * self.cfg.quantum_ns
            {
                continue;
            }
            let taken_in = other.moved_in.load(Relaxed);
            if handed[w] == taken_in {
                continue;
            }
            let theirs: ClassPath = std::array::from_fn(|i| other.run_path[i].load(Relaxed));
            let theirs = (!asleep).then_some(&theirs);
            let mut core = self.core.borrow_mut();
            let Some((c, n)) = core.queues.handoff(k, theirs, their_min) else {
                continue;
            };
            if let Some((c, list)) = self.give(&mut core, c, n, w) {
                drop(core);
                handed[w] = taken_in;
                other.push(Remote::Adopt(c, list));
                return;
            }
        }
        // Nothing found: do not look again for a few bursts.
        self.handoff_skip.set(HANDOFF_SKIP);
    }

    /// Publishes the class path of what this worker runs (if it changed).
    fn publish(&self, path: ClassPath, min: u8) {
        if self.published.get() == (path, min) {
            return;
        }
        self.published.set((path, min));
        for (a, v) in self.shared.run_path.iter().zip(path) {
            a.store(v, Relaxed);
        }
        self.shared.run_min.store(min, Relaxed);
    }

    /// Nothing to run here: before yielding or sleeping, looks for work waiting on other
    /// workers (at most once a balancing interval); what it asks for comes through its
    /// inbox, waking it.
    fn look_for_work(&self, now: u64) {
        if !self.cfg.balance || now.saturating_sub(self.last_look.get()) < BALANCE_NS {
            return;
        }
        self.last_look.set(now);
        self.balance(now, true);
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

    /// Every millisecond of worker time: usage, unused slots, the CPU-clock correction, the
    /// idle-lowering decision, and balancing.
    fn maintain(&self, now: u64) {
        self.next_tick.set(now + TICK_NS);
        {
            let mut core = self.core.borrow_mut();
            core.timers.promote();
            core.queues.flush_counters();
            core.queues.reclaim();
            core.corr.tick(now);
            let share = core.corr.ratio_q16().min(u32::MAX as u64) as u32;
            if self.shared.cpu_q16.load(Relaxed) != share {
                self.shared.cpu_q16.store(share, Relaxed);
            }
            if core.idle.enabled() && core.idle.window_wants_lower() {
                // Confirm with fresh classes before lowering.
                let mask = core.refresh_served_classes(&self.rt);
                core.idle.confirm_lower(mask, &self.shared.lowered);
            } else {
                core.served.clear();
            }
            // A raise on runnable work happens outside this decision: publish the state.
            if core.idle.enabled() {
                self.shared.lowered.store(core.idle.is_lowered(), Relaxed);
            }
        }
        if self.cfg.balance && now >= self.next_balance.get() {
            self.next_balance.set(now + BALANCE_NS);
            self.balance(now, false);
        }
    }

    /// Nothing may run: record usage, release unused slots, and sleep until there is work.
    fn park(&self, now: u64) {
        let deadline = {
            let mut core = self.core.borrow_mut();
            core.queues.flush_all();
            core.queues.reclaim();
            if core.boost.enabled() {
                // Asleep, it costs nobody CPU: raised while it hosts high-class work that
                // ran lately, it is woken ahead of other threads for that work's next event
                // (see `prio::SLEEP_RAISED_AFTER_HIGH_NS`).
                let hosts = core.queues.hosts_high();
                core.boost.sleeping(hosts, now);
            }
            core.timers.promote();
            let t = core.timers.next_deadline();
            let r = core.queues.policy.next_refill();
            match (t, r) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        if self.rt.clock.is_manual()
            && let Some(d) = deadline
        {
            if !self.shared.pending.load(SeqCst) {
                // Simulated time: nothing to do until `d`, so it is `d` now.
                self.rt.clock.set(d);
            }
            self.poll_io(Some(Duration::ZERO));
            return;
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
        if let Err(e) = self
            .driver
            .borrow_mut()
            .poll(&self.shared.driver, timeout, &mut wakers)
        {
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::warn!(worker = self.shared.index, error = %e, "epoll_wait failed");
            }
            return;
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
        drop(self.shared.close_inbox());
        loop {
            let mut runnables = Vec::new();
            let mut wakers = Vec::new();
            {
                let mut core = self.core.borrow_mut();
                core.queues.drain(&mut runnables);
                wakers.extend(core.tasks.drain());
                core.timers.drain(&mut wakers);
            }
            self.shared.driver.close(&mut wakers);
            if runnables.is_empty() && wakers.is_empty() {
                break;
            }
            drop(runnables);
            for w in wakers {
                w.wake();
            }
        }
        self.core.borrow_mut().queues.detach_all();
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
