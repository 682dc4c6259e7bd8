//! An event-driven async runtime that charges every poll to a resource container and
//! schedules by container.
//!
//! In the paper's event-driven server one thread serves many connections, switching its
//! resource binding as it goes, and the containers' usage decides what runs next. Here every
//! task carries its container: each poll is timed and charged to it, and each worker runs the
//! container its [`rescon`] policy picks, so a server's CPU is divided by activity (connection,
//! client class, virtual host) instead of by thread.
//!
//! ```
//! use rescon::{Attributes, Registry};
//! use std::time::Duration;
//!
//! let registry = Registry::new();
//! let root = registry.root();
//! let mut premium = Attributes::default();
//! premium.set("share", "weight:300").unwrap();
//! let premium = root.create_child("premium", premium).unwrap();
//! let basic = root.create_child("basic", Attributes::default()).unwrap();
//!
//! let rt = rescon_rt::Runtime::new(&registry).unwrap();
//! rt.block_on(async {
//!     // A task per request, in its client's container.
//!     let a = rescon_rt::spawn_in(&premium, async { 1 });
//!     let b = rescon_rt::spawn_in(&basic, async {
//!         // A request that turns out to be a premium client's moves its later work there.
//!         rescon_rt::bind(&rescon_rt::current());
//!         rescon_rt::sleep(Duration::from_millis(1)).await;
//!         2
//!     });
//!     assert_eq!(a.await.unwrap() + b.await.unwrap(), 3);
//! });
//! rt.flush_usage();
//! assert_eq!(premium.usage().polls, 1);
//! ```
//!
//! # Tasks and bindings
//!
//! [`spawn_in`] binds a new task to a container, [`spawn`] to the current task's, [`current`]
//! tells which, [`bind`] rebinds the running task (later charges and scheduling go to the new
//! container), [`with_container`] runs a future bound to a container and restores the binding
//! after. [`yield_now`], timers ([`sleep`], [`timeout`], [`interval`]) and
//! [`Runtime::block_on`] are as in other runtimes. A panicking task is reported through its
//! [`JoinHandle`] as [`JoinError::Panic`]; the worker goes on.
//!
//! # Workers and guarantees
//!
//! There are N workers (default: the available cores), each a thread with its own epoll
//! instance, its own policy ([`Hierarchical`](rescon::sched::Hierarchical) by default, or any
//! other: [`Builder::policy`]) and its own run queue per container, so that running tasks
//! touches no lock shared with other workers. A new task of a container not yet on the current
//! worker goes to the least loaded worker; one that could stay (by [`spawn`], or into the
//! spawner's container) stays unless the current worker has clearly more tasks than the least
//! loaded. Either way an accept loop's connections spread.
//!
//! The policy's guarantees hold over the whole runtime, not per worker (the
//! [scheduler's docs](scheduler) state them with their error bounds):
//! - a backlogged container receives its hierarchical entitlement of all the workers' time
//!   (fixed shares, weights, water-filled by how many tasks it can run at once), whatever
//!   worker its tasks were placed on: the workers' policies keep the virtual times of the
//!   containers they share in step, and work waiting on one worker that should run on another
//!   moves there (every millisecond, by [`rescon::sched::balance`]);
//! - a runnable container of a higher class does not wait while another worker runs a lower
//!   class (or sleeps) beyond the end of its worker's current burst and one poll of the other
//!   worker (work waiting for its class is handed over at the next burst start; for classes
//!   that part below the top eight levels of the tree, a balancing interval and a burst; the
//!   [scheduler's docs](scheduler) list what else the hand-off cannot see), and a container
//!   with priority 0 is never run on any worker, and neither is a listener's accept in it
//!   (see [`io`]);
//! - within one worker, backlogged containers share its CPU by their fixed shares and weights
//!   within one burst ([`Builder::quantum`], default 200 µs, or one poll if a poll runs
//!   longer) of error per level of the tree;
//! - a CPU limit holds across all workers: they take leases of the container's shared budget
//!   (1 ms by default when there are several workers), so per period a capped subtree runs at
//!   most its budget plus what the running polls overrun (a poll is never interrupted; the
//!   overrun is paid back from the next period).
//!
//! Work moves only when the shares call for it, or to a worker that has nothing to run, and
//! then only work that has been queued for a while: a connection's task stays on the worker
//! whose epoll instance has its socket, and one that moves takes its sockets along at their
//! next wait. `rescon-bench shares` measures the shares on real runtimes; with one worker
//! none of this runs.
//!
//! What keeping tasks costs: a worker with nothing to run sleeps in its own epoll and is woken
//! for its own connections, where a work-stealing runtime keeps one thread in the kernel and
//! wakes others only when work piles up. Where busy threads outnumber cores that would mean a
//! sleep and a wakeup every few requests, so a worker that runs out of work first yields its
//! CPU and looks at I/O once more ([`Builder::yield_before_sleep`]): the thread it yields to
//! is often the one about to send it work. `rescon-bench runtime`, `http_keepalive_per_core`
//! (a worker per core beside the load generator, on two cores): 0.03 context switches per
//! request (tokio: 0.05-0.08; 0.33 without the yield). A worker whose yields go to a
//! CPU-bound thread on its core stops yielding for a while (see the option), which keeps its
//! round trips beside a busy loop as short as tokio's (`rtt_beside_busy_loop`). It cannot tell
//! a load generator that keeps the core for whole slices, because it is busy, from such a
//! thread: in `tcp_echo_64_per_core` the worker then sleeps and is woken about once per five
//! messages (tokio: once per sixteen), and its throughput there is at or below tokio's.
//!
//! I/O is polled without blocking every 61 polls ([`Builder::event_interval`]), at least
//! every 100 us of busy time ([`Builder::event_gap`]), and whenever the worker has nothing to
//! run, so CPU-bound tasks cannot starve I/O and a high-class task's events are not kept
//! waiting behind many short tasks of lower classes.
//!
//! # Charging
//!
//! Each poll is timed with the runtime's [`Clock`] (the TSC where the kernel keeps time with
//! it, about 10 ns, else `CLOCK_MONOTONIC` through the vDSO, about 25 ns; the end of one poll is
//! the start of the next, so one read per poll), and the time of
//! a burst of polls of one container is charged with one
//! [`Policy::charge`](rescon::sched::Policy::charge). Kernel work done inside a poll (send,
//! recv, accept) is charged with it. Every 10 ms the worker reads its thread CPU clock (about
//! 540 ns) and scales later charges by the CPU it actually got over its awake time, so time
//! the kernel gave to other threads in the middle of a poll is not charged (see
//! [`Builder::correct_cpu`]). Polls, wait time (runnable to polled), bytes in and out of
//! every socket, and accepts are recorded in the containers' [`Usage`](rescon::Usage); the
//! batched part reaches it within a millisecond, or at once with [`Runtime::flush_usage`].
//!
//! # The rest
//!
//! - [`io`]: sockets bound to containers, accept in the listener's container, pausing on
//!   descriptor exhaustion.
//! - [`blocking`]: the multi-threaded model, a thread pool ordered by the same policy.
//! - [`prio`]: scheduler binding, a worker that serves only idle-class work lowers its own
//!   kernel priority, and one that runs high-class work raises it (when asked for).
//! - `hyper` (feature): hyper 1.x runs on this runtime.
//! - Dropping the [`Runtime`] cancels every task and releases every container reference it
//!   held.
//!
//! # Layout
//!
//! The crate is laid out by role, each layer using only those below it:
//! - `sys` (what rustix lacks) and `clock`;
//! - `task`: the task cell with its binding in the metadata, join handles; no scheduler in it;
//! - `driver`: each worker's epoll instance (its readiness per socket) and timer heap;
//! - [`scheduler`]: run queues over a policy (a worker's and the blocking pool's), the worker
//!   loop and the balancing between workers, and the thread's context, through which the
//!   layers above reach the current worker's driver and container;
//! - [`blocking`], [`io`], [`time`], `hyper`: built on the scheduler and the drivers;
//! - the API: [`Builder`], [`Runtime`], [`Handle`] and the free functions.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod blocking;
mod clock;
mod driver;
#[cfg(feature = "hyper")]
mod hyper;
pub mod io;
pub mod prio;
mod runtime;
pub mod scheduler;
mod spawn;
mod sys;
mod task;
pub mod time;

pub use blocking::{BlockingPool, BlockingPoolBuilder};
pub use clock::Clock;
#[cfg(feature = "hyper")]
pub use hyper::{HyperExecutor, HyperTimer};
pub use io::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
pub use prio::{HighPriority, IdlePriority, ThreadPriority};
pub use runtime::{BuildError, Builder, Handle, IoPolls, Runtime};
pub use scheduler::context::EnterGuard;
pub use scheduler::policy::PolicyEnv;
pub use spawn::{
    WithContainer, bind, current, spawn, spawn_blocking_in, spawn_in, try_current, with_container,
};
pub use task::{JoinError, JoinHandle, YieldNow, yield_now};
pub use time::{Elapsed, Interval, Sleep, interval, sleep, sleep_until, timeout};
