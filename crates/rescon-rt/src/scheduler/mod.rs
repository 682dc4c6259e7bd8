//! The scheduler: per-container run queues over a policy, on every worker and in the blocking
//! pool, and the rules that move work between workers so that containers' shares hold over
//! the whole runtime.
//!
//! Its parts (private to the crate):
//! - `queues`: run queues over a policy (a worker's, and the blocking pool's);
//! - `policy`: which policy runs, and the dispatch to it ([`PolicyEnv`](crate::PolicyEnv));
//! - `worker`: the worker loop, and balancing between workers;
//! - `inbox`: what other threads see of a worker;
//! - `shared`: what the whole runtime shares;
//! - `context`: how the rest of the crate finds the current worker, driver and container.
//!
//! # The guarantee
//!
//! Every worker has its own policy and its own queues, so that picking, charging and waking
//! touch only that worker's memory: there is no lock on the poll path, and a connection's task
//! stays on the worker whose epoll instance has its socket. Over all workers:
//!
//! - **Shares hold over the runtime.** A continuously backlogged container receives its
//!   hierarchical entitlement of the runtime's total CPU (all workers' time), water-filled by
//!   its parallelism (a container with `k` runnable tasks cannot use more than `k` workers,
//!   and what it cannot use goes to the others as the policy's model says:
//!   [`rescon::sim::entitlements_on`]), whatever worker its tasks were placed on. The
//!   workers' [`Hierarchical`](rescon::sched::Hierarchical) policies run in shared mode
//!   ([`rescon::sched::global`]): the virtual times of the containers they have in common are
//!   exchanged every [`SYNC_NS`](rescon::sched::SYNC_NS) (250 µs), so each worker's local order
//!   is the runtime's. Every [`BALANCE_NS`](rescon::sched::balance::BALANCE_NS) (1 ms) each
//!   worker offers its waiting work and takes from the others what
//!   [`balance::choose`](rescon::sched::balance::choose) says should run there: work of a
//!   higher class than it runs, work behind in virtual time by more than 2 ms of running, and,
//!   when it has nothing to run, work backlogged for 2 ms; never, while it has work, more
//!   tasks of a container it has tasks of queued itself
//!   ([`choose_except`](rescon::sched::balance::choose_except)). Error bound: when every
//!   container has at least as many runnable tasks as there are workers, a container's
//!   received CPU never lags its entitlement by more than 12 ms of CPU at any time (the slack,
//!   a balancing interval, the exchange interval and a quantum per worker; checked on random
//!   trees and placements on 2 to 4 simulated workers, `rescon/tests/sched_multi.rs`). With
//!   fewer tasks than workers, work keeps moving to approach the water-filled entitlement; a
//!   placement that reaches it is not always found (measured: 99% of containers within 2
//!   points, the worst 10 points off, on 200 random trees).
//! - **Classes hold over the runtime.** A task of a higher class waiting on one worker while
//!   another worker runs a lower class or sleeps (where their paths part within the top
//!   eight levels of the tree; the worker's docs list what the hand-off cannot see) waits there at most until its worker's current burst ends (one quantum, 200 µs
//!   by default, or one poll if a poll runs longer), then one poll of the other worker: at
//!   every burst start a worker with waiting work compares the highest class on its path with
//!   what the other workers publish they run, and hands the outclassing work (half of a
//!   container's waiting tasks, at least one) to such a worker at once (the *class hand-off*;
//!   it counts bursts, not time, and `rescon-rt/tests/sched_workers.rs` checks it with a
//!   clock that never moves). Work of a higher class never waits on its own worker behind a
//!   lower class for more than one poll (a wake-up of a runnable container ends the burst).
//!   Deeper in the tree, and for an idle worker, the balancing interval bound holds: the
//!   worker running the lower class takes the higher-class work at its next balancing, one
//!   interval and one burst (and a worker never gives away the last task of a container if
//!   that would leave it running work the container outclasses). While every container is
//!   of one class, none of this runs (one atomic load per burst).
//! - **Priority 0** never runs on any worker, and its work never moves.
//! - **CPU limits** hold across workers as before: they lease from the container's shared
//!   budget.
//!
//! With one worker none of this runs: the policy is the single-CPU one, exactly as before.

pub(crate) mod context;
pub(crate) mod inbox;
pub(crate) mod policy;
pub(crate) mod queues;
pub(crate) mod shared;
pub(crate) mod worker;
