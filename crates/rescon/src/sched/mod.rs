//! Scheduling policies over the container tree.
//!
//! A policy decides which container runs next. It is pure: it does no I/O and reads no clock;
//! the caller (the runtime, or the [simulator](crate::sim)) tells it what is runnable, what ran
//! for how long, and what time it is. One policy instance serves one worker thread; several
//! workers each have their own and share the containers (attributes, usage, the CPU limit's
//! budget, and in shared mode their virtual times: see [`global`]).
//!
//! The protocol:
//!
//! 1. [`attach`](Policy::attach) a container that has work on this worker, getting a [`Key`]
//!    (attaching again returns the same key and counts a reference);
//! 2. [`set_runnable`](Policy::set_runnable) when its queue becomes non-empty or empty;
//! 3. [`refill`](Policy::refill) with the current time, then [`pick`](Policy::pick) the next
//!    container, run some of its work, and [`charge`](Policy::charge) the time it took;
//! 4. [`detach`](Policy::detach) when the worker drops its last reference; the key is then
//!    invalid and may be reused.
//!
//! Two policies are provided: [`Hierarchical`], the resource-container policy, and [`Fifo`],
//! round robin over containers that ignores their attributes (the "containers off" baseline).
//! Others can be plugged in through the trait, as RCLinux loaded policies as modules.
//!
//! A runtime with several workers gives each its own policy. [`Hierarchical`] in shared mode
//! keeps the virtual times of the containers the policies have in common in step and tells
//! where a container stands ([`Policy::standing`]), so that the runtime can move work to the
//! worker where it should run: see [`global`].

pub mod balance;
mod fifo;
pub mod global;
mod heap;
pub mod hier;

pub use fifo::Fifo;
pub use global::{Level, SYNC_NS, Standing};
pub use hier::{FLUSH_NS, Hierarchical, HierarchicalConfig};

use crate::{Container, ContainerId};
use std::fmt;

/// A container attached to a policy. Keys are small integers, so a runtime can index its
/// per-container queues by [`Key::index`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub(crate) u32);

impl Key {
    /// The key as an index, dense from 0.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// What [`Policy::pick`] chose. The container's id is [`Policy::container`] of the key: a
/// runtime indexes its own per-container state by key and rarely needs the id, and reading it
/// here would cost the pick a cache miss when containers are many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// The container to run.
    pub key: Key,
    /// If a CPU limit applies, how long it may run before the limit (or the end of the limit's
    /// period) is reached. A caller that can stop work early should; one that cannot may run
    /// over, and the excess is paid back from the next period.
    pub slice_ns: Option<u64>,
}

/// A scheduling policy: see the [module docs](self) for the protocol.
pub trait Policy: Send + fmt::Debug {
    /// Attaches a container (its ancestors come with it) and counts a reference.
    fn attach(&mut self, container: &Container) -> Key;
    /// Drops a reference taken by [`attach`](Policy::attach).
    fn detach(&mut self, key: Key);
    /// Marks whether the container has work to run.
    fn set_runnable(&mut self, key: Key, runnable: bool);
    /// Chooses the next container to run, or `None` if nothing runnable may run now (nothing
    /// is runnable, or everything runnable is throttled or has priority 0).
    fn pick(&mut self) -> Option<Pick>;
    /// Charges `elapsed_ns` of CPU to a container: its usage and its scheduling state.
    ///
    /// A container whose queue the work just emptied may be marked idle first and charged
    /// after: the result is the same as charging it then marking it idle, and for
    /// [`Hierarchical`] it is cheaper (the container leaves its queue from the front, where
    /// the pick found it, instead of being re-keyed into the queue's middle and then
    /// forgotten there).
    fn charge(&mut self, key: Key, elapsed_ns: u64);
    /// Advances the policy's time to `now_ns` (monotonic, caller's clock), refilling CPU-limit
    /// budgets whose period has begun.
    fn refill(&mut self, now_ns: u64);
    /// Adds CPU charged but not yet recorded to the containers' usage. A policy may batch the
    /// recording of charges ([`Hierarchical`] does, for at most [`hier::FLUSH_NS`] of its time,
    /// and flushes a container when it goes idle, when it is detached, and when the policy is
    /// dropped; a charge that comes after the container went idle waits for the next flush);
    /// the default records at once and has nothing to flush.
    fn flush(&mut self) {}
    /// The earliest time a throttled container gets budget again, if any is throttled.
    fn next_refill(&self) -> Option<u64>;
    /// The container a key names.
    fn container(&self, key: Key) -> ContainerId;
    /// Where the container stands in this policy's order, written to `out`, for comparing
    /// it with work on other workers ([`Standing::beats`]); false if it may not run now
    /// (priority 0, or throttled by a CPU limit), so that no worker takes its work. A policy
    /// without an order that holds across workers leaves `out` empty and returns true (the
    /// default): then a runtime moves work between its workers only to keep them busy.
    fn standing(&mut self, key: Key, out: &mut Standing) -> bool {
        let _ = key;
        out.levels.clear();
        true
    }
    /// Makes what this policy knows of the container's place (and its ancestors') visible to
    /// the other policies of a runtime, before its work moves to another worker: there it
    /// starts where it stands here, not at the floor of a container that wakes. The default
    /// has nothing to share.
    fn publish(&mut self, key: Key) {
        let _ = key;
    }
    /// Attaches a container whose waiting work comes from another worker, whose policy has
    /// [`publish`](Policy::publish)ed it: it starts where it stood there (a container that
    /// wakes starts at its siblings' floor instead, so that it cannot bring credit from idle
    /// time; work that moves was not idle). The default is [`attach`](Policy::attach).
    fn attach_moved(&mut self, container: &Container) -> Key {
        self.attach(container)
    }
}
