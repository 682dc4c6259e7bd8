//! What other threads see of a worker ([`WorkerShared`]): its inbox of remote work, the flags
//! that say whether it sleeps, its driver's handle, its counters, and the board where it
//! offers its waiting work to the other workers.

use crate::driver::timer::TimerShared;
use crate::driver::{self, lock};
use crate::task::Runnable;
use atomic_waker::AtomicWaker;
use rescon::sched::balance::Offer;
use rescon::{Container, ContainerId};
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::*,
};
use std::sync::{Arc, Mutex};

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
    /// Give up to `tasks` queued tasks of a container to worker `to` (`sched::balance`).
    Steal {
        container: ContainerId,
        tasks: u32,
        to: usize,
    },
    /// Tasks given by another worker, with their container and when each was queued: this
    /// worker owns them now.
    Adopt(Container, Vec<(Runnable, u64)>),
}

/// A countdown of workers that have flushed their pending usage.
#[derive(Debug, Default)]
pub(crate) struct FlushAll {
    pub(crate) remaining: AtomicUsize,
    pub(crate) waker: AtomicWaker,
}

impl FlushAll {
    pub(crate) fn done(&self) {
        if self.remaining.fetch_sub(1, AcqRel) == 1 {
            self.waker.wake();
        }
    }
}

/// What other threads see of a worker.
pub(crate) struct WorkerShared {
    pub(crate) index: usize,
    inbox: Mutex<Vec<Remote>>,
    pub(crate) pending: AtomicBool,
    pub(crate) sleeping: AtomicBool,
    pub(crate) notified: AtomicBool,
    /// Set when the runtime asks the worker to stop.
    pub(crate) stop: AtomicBool,
    /// Set (under the inbox lock) once the worker has stopped taking work.
    closed: AtomicBool,
    /// Its epoll instance, as sockets see it.
    pub(crate) driver: Arc<driver::Handle>,
    /// Live tasks owned by this worker.
    pub(crate) load: AtomicUsize,
    pub(crate) tid: AtomicI32,
    pub(crate) lowered: AtomicBool,
    /// epoll_wait calls that could sleep, and those that could not (written by the worker
    /// only; see [`crate::IoPolls`]).
    pub(crate) io_sleeps: AtomicU64,
    pub(crate) io_polls: AtomicU64,
    /// Tasks this worker gave to others, and took from them.
    pub(crate) moved_out: AtomicU64,
    pub(crate) moved_in: AtomicU64,
    /// Timers dropped while queued on this worker, since its timer heap last compacted (see
    /// `TimerHeap::register`).
    pub(crate) timers_dropped: AtomicUsize,
    /// The waiting work this worker offers the others (`sched::balance`), as of its last
    /// balancing.
    pub(crate) board: Mutex<Vec<Offer>>,
    /// The class path of the container it runs, and the lowest class on it (`u8::MAX`: it
    /// runs nothing that work could displace), published while classes are mixed, for the
    /// class hand-off (see the worker's docs). Read and written without a lock: a torn read
    /// can only cause one hand-off too many or too few, which the balancing corrects.
    pub(crate) run_path: [AtomicU64; crate::scheduler::queues::PATH_LEVELS],
    pub(crate) run_min: AtomicU8,
    /// When (the runtime's clock) it last started a burst, published with the path: a
    /// worker whose burst started long ago is not running (the kernel runs another thread on
    /// its CPU, or one poll runs long), and is handed nothing.
    pub(crate) burst_at: AtomicU64,
    /// The share of a CPU the kernel gave it while awake, in 1/65536 (the CPU correction's
    /// ratio, every 10 ms): below one where another busy thread shares its CPU.
    pub(crate) cpu_q16: AtomicU32,
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
    pub(crate) fn new(index: usize, driver: Arc<driver::Handle>) -> WorkerShared {
        WorkerShared {
            index,
            inbox: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            notified: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            driver,
            load: AtomicUsize::new(0),
            tid: AtomicI32::new(0),
            lowered: AtomicBool::new(false),
            io_sleeps: AtomicU64::new(0),
            io_polls: AtomicU64::new(0),
            moved_out: AtomicU64::new(0),
            moved_in: AtomicU64::new(0),
            timers_dropped: AtomicUsize::new(0),
            board: Mutex::new(Vec::new()),
            run_path: Default::default(),
            run_min: AtomicU8::new(u8::MAX),
            burst_at: AtomicU64::new(0),
            cpu_q16: AtomicU32::new(1 << 16),
        }
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

    /// Takes what other threads handed over, into `items` (empty).
    pub(crate) fn take_inbox(&self, items: &mut Vec<Remote>) {
        std::mem::swap(items, &mut *lock(&self.inbox));
    }

    /// Stops taking work: later pushes drop it. Returns what was queued.
    pub(crate) fn close_inbox(&self) -> Vec<Remote> {
        let mut inbox = lock(&self.inbox);
        self.closed.store(true, Release);
        std::mem::take(&mut *inbox)
    }

    /// Wakes the worker if it sleeps (or is about to: see the worker's `park`).
    pub(crate) fn wake_if_sleeping(&self) {
        if self.sleeping.load(SeqCst) && !self.notified.swap(true, AcqRel) {
            self.driver.wake();
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
        self.driver.wake();
    }
}
