//! What the whole runtime shares: its workers as other threads see them, its registry and
//! clock, the worker configuration, and where new tasks go.

use super::inbox::WorkerShared;
use super::policy::PolicyChoice;
use crate::Clock;
use crate::task::Runnable;
use rescon::sched::balance::Rules;
use rescon::{Container, Registry};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::*};

/// The worker's tuning, from the [`Builder`](crate::Builder).
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) quantum_ns: u64,
    pub(crate) max_burst: u32,
    pub(crate) event_interval: u32,
    pub(crate) event_gap_ns: u64,
    /// See `Builder::yield_before_sleep`.
    pub(crate) yield_before_sleep: bool,
    /// Whether work moves between workers (more than one worker).
    pub(crate) balance: bool,
    pub(crate) rules: Rules,
}

/// Where the blocking pool takes its jobs: the runtime's pool, seen from the scheduler (the
/// pool is built on the scheduler's run queues, so the scheduler knows it only by this).
pub(crate) trait Jobs: Send + Sync {
    /// Queues a new job of `container`.
    fn submit(&self, container: &Container, job: Runnable);
    /// Queues a job woken again (a blocking job's task is woken once, to run).
    fn schedule(&self, job: Runnable);
}

/// What the whole runtime shares.
pub(crate) struct Shared {
    pub(crate) workers: Arc<[Arc<WorkerShared>]>,
    pub(crate) registry: Registry,
    pub(crate) default_container: Container,
    pub(crate) clock: Clock,
    pub(crate) cfg: Config,
    pub(crate) correct_cpu: bool,
    pub(crate) policy: PolicyChoice,
    /// The blocking pool.
    pub(crate) jobs: Arc<dyn Jobs>,
    rr: AtomicUsize,
    /// The classes seen on the paths of the workers' containers, a bit each: with one only,
    /// no class can wait for another, and the class hand-off stays off.
    pub(crate) classes: AtomicU8,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        workers: Arc<[Arc<WorkerShared>]>,
        registry: Registry,
        default_container: Container,
        clock: Clock,
        cfg: Config,
        correct_cpu: bool,
        policy: PolicyChoice,
        jobs: Arc<dyn Jobs>,
    ) -> Shared {
        Shared {
            workers,
            registry,
            default_container,
            clock,
            cfg,
            correct_cpu,
            policy,
            jobs,
            rr: AtomicUsize::new(0),
            classes: AtomicU8::new(0),
        }
    }

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

    /// Chooses a worker for new high-class work spawned on worker `local` (a connection a
    /// high-priority listener accepted): the worker the kernel gives the most of a CPU, if it
    /// gets clearly more (an eighth of a CPU) than `local`, else as [`place_near`]. Where the
    /// machine's CPUs are shared with other busy threads (a load generator, other services),
    /// a worker beside one of them is off its CPU for whole kernel time slices, and a
    /// high-class request served there waits for them.
    ///
    /// [`place_near`]: Shared::place_near
    pub(crate) fn place_high(&self, local: usize) -> usize {
        if self.workers.len() == 1 {
            return 0;
        }
        // A high-priority connection is rare next to the requests: a small copy is fine.
        let mut shares = [0u32; 64];
        let n = self.workers.len().min(shares.len());
        for (s, w) in shares.iter_mut().zip(self.workers.iter()) {
            *s = w.cpu_q16.load(Relaxed);
        }
        better_cpu(local, &shares[..n]).unwrap_or_else(|| self.place_near(local))
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
}

/// Of workers getting `shares` of a CPU (in 1/65536), the one getting the most, if that is
/// more than an eighth of a CPU above what worker `local` gets (the first such on a tie).
fn better_cpu(local: usize, shares: &[u32]) -> Option<usize> {
    let here = *shares.get(local)?;
    let (best, top) = shares
        .iter()
        .copied()
        .enumerate()
        .fold((local, here), |b, (i, s)| if s > b.1 { (i, s) } else { b });
    (top > here + (1 << 13)).then_some(best)
}

#[cfg(test)]
mod tests {
    use super::better_cpu;

    const ONE: u32 = 1 << 16;

    #[test]
    fn high_work_goes_to_the_worker_with_clearly_more_of_a_cpu() {
        // Worker 0 shares its CPU with a busy thread (half a CPU); worker 1 has its own.
        assert_eq!(better_cpu(0, &[ONE / 2, ONE]), Some(1));
        // Already there.
        assert_eq!(better_cpu(1, &[ONE / 2, ONE]), None);
        // Less than an eighth of a CPU apart: stay (locality wins).
        assert_eq!(better_cpu(0, &[ONE - ONE / 16, ONE]), None);
        // The most of several.
        assert_eq!(better_cpu(2, &[ONE * 3 / 4, ONE, ONE / 4]), Some(1));
        // No such worker.
        assert_eq!(better_cpu(5, &[ONE]), None);
    }
}
