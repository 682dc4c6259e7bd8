//! The seam between the runtime and its scheduling policy: which [`Policy`] each worker (and
//! the blocking pool) runs, made by a factory given at build time.
//!
//! The two built-in policies are called without an indirect call: [`AnyPolicy`] dispatches by a
//! `match` that the compiler inlines and the processor predicts, so the default runtime pays
//! nothing for the seam. Any other [`Policy`] is boxed.

use rescon::sched::{Fifo, Hierarchical, HierarchicalConfig, Key, Pick, Policy, Standing};
use rescon::{Container, ContainerId, Registry};
use std::fmt;
use std::sync::Arc;

/// What a policy factory is told about the policy it makes (see
/// [`Builder::policy`](crate::Builder::policy)).
#[non_exhaustive]
pub struct PolicyEnv {
    /// The registry whose containers the runtime schedules.
    pub registry: Registry,
    /// The worker the policy serves, or `None` for the blocking pool's.
    pub worker: Option<usize>,
    /// How many workers the runtime has.
    pub workers: usize,
    /// Wakes the worker to look at its policy again: a policy that learns of changes made
    /// elsewhere (as [`Hierarchical::with_waker`] does) calls it, so that a sleeping worker
    /// applies them at once.
    pub wake: Arc<dyn Fn() + Send + Sync>,
    /// How much CPU-limit budget a policy should take from a container's shared budget at a
    /// time (see [`HierarchicalConfig::lease_ns`]).
    pub lease_ns: Option<u64>,
}

impl fmt::Debug for PolicyEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEnv")
            .field("worker", &self.worker)
            .field("workers", &self.workers)
            .field("lease_ns", &self.lease_ns)
            .finish_non_exhaustive()
    }
}

type Factory = dyn Fn(&PolicyEnv) -> Box<dyn Policy> + Send + Sync;

/// Which policy a runtime schedules with.
#[derive(Clone)]
pub(crate) enum PolicyChoice {
    /// [`Hierarchical`], in shared mode when there are several workers.
    Hierarchical,
    /// [`Fifo`].
    Fifo,
    /// Made by a factory.
    Custom(Arc<Factory>),
}

impl fmt::Debug for PolicyChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyChoice::Hierarchical => f.write_str("Hierarchical"),
            PolicyChoice::Fifo => f.write_str("Fifo"),
            PolicyChoice::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl PolicyChoice {
    pub(crate) fn custom(
        f: impl Fn(&PolicyEnv) -> Box<dyn Policy> + Send + Sync + 'static,
    ) -> PolicyChoice {
        PolicyChoice::Custom(Arc::new(f))
    }

    /// Makes the policy for `env`. The workers' [`Hierarchical`] policies run in shared mode
    /// when there is more than one worker; the blocking pool's serves alone.
    pub(crate) fn make(&self, env: &PolicyEnv) -> AnyPolicy {
        match self {
            PolicyChoice::Hierarchical => {
                let cfg = HierarchicalConfig {
                    lease_ns: env.lease_ns,
                    shared: env.worker.is_some() && env.workers > 1,
                };
                let wake = env.wake.clone();
                AnyPolicy::Hier(Hierarchical::with_waker(&env.registry, cfg, move || wake()))
            }
            PolicyChoice::Fifo => AnyPolicy::Fifo(Fifo::new()),
            PolicyChoice::Custom(f) => AnyPolicy::Dyn(f(env)),
        }
    }
}

/// A policy of one of the kinds a runtime can run, dispatched without an indirect call for
/// the built-in ones.
#[derive(Debug)]
// One per worker: boxing the large variant would add a pointer chase to every pick.
#[allow(clippy::large_enum_variant)]
pub(crate) enum AnyPolicy {
    Hier(Hierarchical),
    Fifo(Fifo),
    Dyn(Box<dyn Policy>),
}

macro_rules! dispatch {
    ($self:ident, $p:ident => $e:expr) => {
        match $self {
            AnyPolicy::Hier($p) => $e,
            AnyPolicy::Fifo($p) => $e,
            AnyPolicy::Dyn($p) => $e,
        }
    };
}

impl AnyPolicy {
    #[inline]
    pub(crate) fn attach(&mut self, c: &Container) -> Key {
        dispatch!(self, p => p.attach(c))
    }
    #[inline]
    pub(crate) fn attach_moved(&mut self, c: &Container) -> Key {
        dispatch!(self, p => p.attach_moved(c))
    }
    #[inline]
    pub(crate) fn detach(&mut self, key: Key) {
        dispatch!(self, p => p.detach(key))
    }
    #[inline]
    pub(crate) fn set_runnable(&mut self, key: Key, runnable: bool) {
        dispatch!(self, p => p.set_runnable(key, runnable))
    }
    #[inline]
    pub(crate) fn pick(&mut self) -> Option<Pick> {
        dispatch!(self, p => p.pick())
    }
    #[inline]
    pub(crate) fn charge(&mut self, key: Key, ns: u64) {
        dispatch!(self, p => p.charge(key, ns))
    }
    #[inline]
    pub(crate) fn refill(&mut self, now: u64) {
        dispatch!(self, p => p.refill(now))
    }
    pub(crate) fn flush(&mut self) {
        dispatch!(self, p => p.flush())
    }
    pub(crate) fn next_refill(&self) -> Option<u64> {
        dispatch!(self, p => p.next_refill())
    }
    #[allow(dead_code)]
    pub(crate) fn container(&self, key: Key) -> ContainerId {
        dispatch!(self, p => p.container(key))
    }
    pub(crate) fn standing(&mut self, key: Key, out: &mut Standing) -> bool {
        dispatch!(self, p => p.standing(key, out))
    }
    pub(crate) fn publish(&mut self, key: Key) {
        dispatch!(self, p => p.publish(key))
    }
}
