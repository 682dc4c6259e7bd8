//! What the policies of several workers share, and how work on one worker is compared with
//! work on another.
//!
//! # Shared virtual time
//!
//! Each worker has its own [`Hierarchical`](super::Hierarchical) policy over the containers
//! with work on it, so that picking and charging touch only that worker's memory. In *shared*
//! mode ([`HierarchicalConfig::shared`](super::HierarchicalConfig::shared)) the policies of
//! one runtime keep the virtual times of the containers they have in common in step: a
//! container mirrored by two or more of them gets a [`Vt`] in its node, and every policy that
//! mirrors it adds the virtual time it charged there and takes what the others charged, every
//! [`SYNC_NS`] of its time. The same goes for the time of the weighted pool under a shared
//! parent, and for the parent's own work. Two rules keep the exchange exact under races:
//!
//! - a charge is added (`v = v + charged`), so charges on several workers add up;
//! - a jump of a container to its siblings' floor (it woke after idling, so it may not bring
//!   credit) is a maximum (`v = max(v, jumped_to)`), so two workers waking it at once do not
//!   push it forward twice.
//!
//! A fixed-share child competes with the weighted pool of its siblings, whose weight is one
//! minus the fractions of the fixed siblings that are runnable *anywhere*: each node counts the
//! shared-mode policies on which it is runnable, and each parent sums, per class, the
//! fractions of its fixed children that are runnable on some worker.
//!
//! So a container whose tasks run on several workers is charged, on each of them, the CPU it
//! got on all of them, and each worker's local order is the runtime's order (up to one sync
//! interval of the others' charges). A container whose tasks are on one worker only is charged
//! there only, and its virtual time is that worker's; it is compared with siblings on other
//! workers through [`Standing`].
//!
//! # Standing
//!
//! [`Standing`] is where a container stands in the order: its path from the top, each level's
//! class and key. A worker compares the best work it has with work waiting on another worker
//! ([`Standing::beats`]): the paths are compared where they part, class first, then virtual
//! time. A runtime moves work that beats what a worker would run by more than a slack to that
//! worker (see rescon-rt's scheduler), which is the rule of distributed weighted round robin
//! (Li, Baumberger and Hahn, PPoPP 2009: no processor may run ahead of the round of work
//! waiting elsewhere) in virtual time.

use crate::ContainerId;
use crate::attr::SchedClass;
use once_cell::race::OnceBox;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

/// How often (of a policy's time) a shared-mode policy exchanges virtual time with the others.
pub const SYNC_NS: u64 = 250_000;

/// The scheduling state of a container node that shared-mode policies share.
///
/// Two words and two pointers: a container per connection is a leaf that no policy sums
/// children in, and most containers are never mirrored by two policies, so the per-class
/// sums and the virtual times are blocks of their own, made on first use (inline, they were
/// 40 of a container's bytes).
#[derive(Debug, Default)]
pub(crate) struct NodeGlobal {
    /// Shared-mode policies mirroring the container.
    pub(crate) refs: AtomicU32,
    /// Shared-mode policies on which it is runnable (kept for fixed-share containers only).
    pub(crate) runnable_on: AtomicU32,
    /// Its children's sums, made when a policy first counts a child in them.
    sums: OnceBox<ClassSums>,
    /// Virtual times, made when a second policy mirrors the container.
    vt: OnceBox<Vt>,
}

/// What a parent sums about its children, per class (see [`NodeGlobal`]).
#[derive(Debug, Default)]
pub(crate) struct ClassSums {
    /// Per class: the fractions (ppb) of its fixed children runnable on some shared-mode policy.
    pub(crate) fixed_ppb: [AtomicU32; SchedClass::COUNT],
    /// Per class: the shared-mode policies on which the pool of its weighted children is not
    /// empty (kept while the container is shared).
    pub(crate) pool_on: [AtomicU32; SchedClass::COUNT],
}

impl NodeGlobal {
    pub(crate) fn vt(&self) -> &Vt {
        self.vt.get_or_init(Box::default)
    }

    pub(crate) fn vt_if_any(&self) -> Option<&Vt> {
        self.vt.get()
    }

    /// The children's sums, made if they were not yet (two racing makers keep one).
    pub(crate) fn sums(&self) -> &ClassSums {
        self.sums.get_or_init(Box::default)
    }

    /// The fractions of fixed children in `class` runnable on some policy (zero before any
    /// was counted).
    pub(crate) fn fixed_ppb(&self, class: usize) -> u32 {
        self.sums
            .get()
            .map_or(0, |s| s.fixed_ppb[class].load(Acquire))
    }

    /// A fixed child of this node with fraction `ppb` in `class` became runnable on one more
    /// (`up`) or one fewer policy; `was` is its count before.
    pub(crate) fn fixed_child(&self, class: usize, ppb: u32, up: bool, was: u32) {
        if up && was == 0 {
            self.sums().fixed_ppb[class].fetch_add(ppb, Relaxed);
        } else if !up && was == 1 {
            // Counted up before, so the sums are there.
            if let Some(s) = self.sums.get() {
                let _ = s.fixed_ppb[class]
                    .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(ppb)));
            }
        }
    }
}

/// Virtual times shared by the policies mirroring one container, as `f64` bits.
#[derive(Debug, Default)]
pub(crate) struct Vt {
    /// As a child of its parent.
    pub(crate) v: AtomicU64,
    /// Its own work among its children.
    pub(crate) own: AtomicU64,
    /// Per class, the weighted pool of its children.
    pub(crate) pool: [AtomicU64; SchedClass::COUNT],
}

/// Adds `charged` to a shared virtual time and raises it to at least `at_least`; returns the
/// result.
pub(crate) fn exchange(a: &AtomicU64, charged: f64, at_least: f64) -> f64 {
    let mut cur = a.load(Acquire);
    loop {
        let v = f64::from_bits(cur);
        let next = (v + charged.max(0.0)).max(at_least);
        if next.to_bits() == cur {
            return v;
        }
        match a.compare_exchange_weak(cur, next.to_bits(), AcqRel, Acquire) {
            Ok(_) => return next,
            Err(seen) => cur = seen,
        }
    }
}

pub(crate) fn load(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Acquire))
}

/// One level of a [`Standing`]: a container (or a container's own work) among its siblings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Level {
    /// The container at this level.
    pub id: ContainerId,
    /// Whether this level is the work bound directly to `id` competing with `id`'s children
    /// (then `id` is the level above's container).
    pub own: bool,
    /// Its scheduling class among its siblings.
    pub class: u8,
    /// Whether it has a fixed share (else it is weighted, a member of its siblings' pool).
    pub fixed: bool,
    /// Its virtual time among its siblings.
    pub vtime: f64,
    /// Its virtual time advances by this per nanosecond it runs.
    pub inv_share: f64,
    /// The virtual time of its siblings' weighted pool, which competes with the fixed ones.
    pub pool_vtime: f64,
    /// The pool's virtual time advances by this per nanosecond a pool member runs.
    pub inv_pool: f64,
}

/// Where a container stands in a policy's order: its path from the top, a [`Level`] each.
/// See the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Standing {
    /// From the top-level container down to the container itself.
    pub levels: Vec<Level>,
}

impl Standing {
    /// Whether work at `self` should run before work at `other` by more than `slack_ns` of
    /// CPU, or by class. `None` for `other` is a worker with nothing to run: then any work
    /// beats it.
    ///
    /// The paths are compared at the first level where they part: a higher class wins; in
    /// one class, `self` wins if it is behind `other` in virtual time by more than `slack_ns`
    /// of its own running (fixed against fixed and weighted against weighted by their own
    /// times; a fixed one against a weighted one by the weighted one's pool time). Work of
    /// the same container never beats itself, and neither does a path that is a prefix of the
    /// other (an ancestor's own work seen from a worker that has no children of it).
    ///
    /// ```
    /// use rescon::sched::{Level, Standing};
    /// let registry = rescon::Registry::new();
    /// let a = registry.root().create_child("a", Default::default()).unwrap();
    /// let b = registry.root().create_child("b", Default::default()).unwrap();
    /// let level = |id, vtime| Level {
    ///     id, own: false, class: 1, fixed: false, vtime, inv_share: 0.01,
    ///     pool_vtime: 0.0, inv_pool: 1.0,
    /// };
    /// let behind = Standing { levels: vec![level(a.id(), 10.0)] };
    /// let ahead = Standing { levels: vec![level(b.id(), 50_000.0)] };
    /// // 49,990 of virtual time at weight 100 is 4,999,000 ns of running.
    /// assert!(behind.beats(Some(&ahead), 1_000_000));
    /// assert!(!behind.beats(Some(&ahead), 5_000_000));
    /// assert!(!ahead.beats(Some(&behind), 0));
    /// assert!(ahead.beats(None, 0));
    /// ```
    pub fn beats(&self, other: Option<&Standing>, slack_ns: u64) -> bool {
        let Some(other) = other else {
            return !self.levels.is_empty();
        };
        let slack = slack_ns as f64;
        let at = self
            .levels
            .iter()
            .zip(&other.levels)
            .position(|(a, b)| a.id != b.id || a.own != b.own);
        let Some(j) = at else {
            return false;
        };
        let (me, them) = (&self.levels[j], &other.levels[j]);
        if me.class != them.class {
            return me.class > them.class;
        }
        match (me.fixed, them.fixed) {
            (false, false) | (true, true) => them.vtime - me.vtime > slack * me.inv_share,
            (true, false) => them.pool_vtime - me.vtime > slack * me.inv_share,
            (false, true) => them.vtime - me.pool_vtime > slack * me.inv_pool,
        }
    }

    /// Where the paths of `self` and `other` part: the index of the first level that differs.
    fn parts(&self, other: &Standing) -> Option<usize> {
        self.levels
            .iter()
            .zip(&other.levels)
            .position(|(a, b)| a.id != b.id || a.own != b.own)
    }

    /// Whether `self` is of a higher class than `other` where their paths part: work at
    /// `other` must not run while work at `self` waits.
    pub fn outclasses(&self, other: &Standing) -> bool {
        self.parts(other)
            .is_some_and(|j| self.levels[j].class > other.levels[j].class)
    }

    /// Whether work at `self` may leave a worker whose other work is at `rest` without
    /// letting work of a lower class run there in its stead: every work in `rest` that `self`
    /// outclasses is outclassed by other work in `rest` too, which keeps it from running.
    pub fn may_leave(&self, rest: &[&Standing]) -> bool {
        rest.iter().enumerate().all(|(k, r)| {
            !self.outclasses(r)
                || rest
                    .iter()
                    .enumerate()
                    .any(|(m, o)| m != k && o.outclasses(r))
        })
    }

    /// The classes along the path, the top level's in the most significant bits (2 bits a
    /// level, 16 levels): a key that orders paths by class where they part at a level whose
    /// siblings differ in class, for a quick first look before [`beats`](Standing::beats).
    pub fn class_key(&self) -> u32 {
        let mut k = 0u32;
        for (i, l) in self.levels.iter().take(16).enumerate() {
            k |= (l.class as u32 & 3) << (30 - 2 * i);
        }
        k
    }

    /// The container the path ends at (for own work, the container whose own work it is).
    pub fn container(&self) -> Option<ContainerId> {
        self.levels.last().map(|l| l.id)
    }
}
