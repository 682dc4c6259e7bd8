//! The hierarchical resource-container policy.
//!
//! # Policy
//!
//! The policy mirrors the part of the container tree that has work on this worker. Picking
//! walks down from the top: at each container it takes the highest scheduling class that has a
//! runnable child, and within that class the child with the least virtual time. Charging walks
//! up from the container that ran, advancing each level's virtual time by
//! `elapsed / effective share`.
//!
//! Within one class of siblings:
//! - a fixed-share child with fraction `f` advances by `elapsed / f`;
//! - the weighted children together form a *pool* that competes with the fixed children as one
//!   entry of weight `1 - (sum of the fractions of the runnable fixed children)`, and inside the
//!   pool each weighted child advances by `elapsed / (weight * priority / 100)`.
//!
//! So fixed children receive their fractions as guaranteed minimums, what they leave (idle
//! fixed children included) goes to the weighted children by weight, and if no weighted child is
//! runnable the fixed children divide everything in proportion to their fractions.
//!
//! Work bound directly to a container that also has children competes with them as one more
//! weighted child of weight 100 in the normal class.
//!
//! A child that becomes runnable starts at its siblings' minimum active virtual time (or keeps
//! its own, if larger), so an idle container cannot hoard credit and return to monopolise the
//! CPU.
//!
//! # Guarantees
//!
//! - A runnable sibling of a higher class always runs before any sibling of a lower class.
//! - A container with priority 0, or below one, is never picked.
//! - A continuously backlogged container receives its entitlement (the share its ancestors'
//!   shares give it of the CPU this worker delivers) within one quantum of error per level.
//! - A capped subtree is not picked once its budget is spent, until the next period of its
//!   limit; [`Pick::slice_ns`] tells how much budget is left, so a caller that can stop early
//!   never exceeds the cap in any period.
//! - The policy is work-conserving: `pick` returns `None` only when nothing runnable may run.
//!
//! # Cost
//!
//! `pick` is O(depth): one heap peek per level. `charge` is O(depth x log4 siblings): one heap
//! re-key per level. A mirrored container takes 72 bytes plus, if it has mirrored children, one
//! block of queues; 100,000 leaf containers fit in a few megabytes, so picking among them stays
//! in the cache. `set_runnable` is O(depth x log4 siblings) when it changes the runnable
//! state of ancestors, O(log4 siblings) otherwise. Attribute changes made elsewhere reach the
//! policy through a change feed checked with one atomic load per `pick`.

use super::heap::{Heap, NOT_QUEUED};
use super::{Key, Pick, Policy};
use crate::attr::{CpuLimit, SchedClass, Share};
use crate::container::{Feed, Node};
use crate::{Container, ContainerId, Registry};
use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

const TOP: u32 = 0;
const ONE_PPB: u32 = 1_000_000_000;
/// Below this, the weighted pool's weight counts as zero: fixed children that sum to 1 leave it
/// nothing while they are all runnable.
const MIN_POOL_WEIGHT: f64 = 1e-9;
/// The weight of a container's own work when it competes with its children.
const OWN_WEIGHT: f64 = 100.0;
const OWN_CLASS: usize = SchedClass::NORMAL.get() as usize;
/// CPU charged to a container is added to its usage once this much has gathered, at the latest
/// this long (of the policy's time) after it was charged, and at once when the container goes
/// idle or is detached. Batching saves an atomic add on a line of the container's that is
/// otherwise cold, per charge.
pub const FLUSH_NS: u64 = 1_000_000;

/// The larger of two virtual times (never NaN, so without `f64::max`'s NaN handling).
#[inline]
fn max(a: f64, b: f64) -> f64 {
    if a > b { a } else { b }
}

/// Queue entries: `2 * i` is mirrored container `i` as a child of its parent, `2 * i + 1` is
/// the work bound directly to `i` when `i` also has children.
#[inline]
fn as_child(i: u32) -> u32 {
    2 * i
}
#[inline]
fn as_own(i: u32) -> u32 {
    2 * i + 1
}

/// Tuning of [`Hierarchical`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HierarchicalConfig {
    /// How much CPU-limit budget a worker takes from a container's shared budget at a time.
    /// `None` takes all that is left in the period, right for a single scheduler; several
    /// workers sharing a capped container should take small leases (about a millisecond) so
    /// that each gets budget while it has work.
    pub lease_ns: Option<u64>,
}

#[derive(Debug)]
struct Group {
    fixed: Heap,
    pool: Heap,
    /// Sum of the fractions of the queued fixed children.
    fixed_ppb: u32,
    /// Reciprocal of the pool's weight, `1 / (1 - fixed fractions)`.
    inv_pool_weight: f64,
    pool_vtime: f64,
    floor: f64,
    pool_floor: f64,
}

impl Default for Group {
    fn default() -> Self {
        Group {
            fixed: Heap::default(),
            pool: Heap::default(),
            fixed_ppb: 0,
            inv_pool_weight: 1.0,
            pool_vtime: 0.0,
            floor: 0.0,
            pool_floor: 0.0,
        }
    }
}

impl Group {
    fn pool_weight(&self) -> f64 {
        (ONE_PPB.saturating_sub(self.fixed_ppb)) as f64 / ONE_PPB as f64
    }

    fn set_fixed_ppb(&mut self, ppb: u32) {
        self.fixed_ppb = ppb;
        self.inv_pool_weight = 1.0 / self.pool_weight().max(MIN_POOL_WEIGHT);
    }

    fn is_empty(&self) -> bool {
        self.fixed.is_empty() && self.pool.is_empty()
    }

    /// The least virtual time among the active entries (the fixed children and the pool), or,
    /// if none is active, the least there was when the last one left. An entry that becomes
    /// runnable starts there, so it cannot bring credit from its idle time.
    fn floor(&self) -> f64 {
        let fixed = self.fixed.peek().map(|(v, _)| v);
        let pool = (!self.pool.is_empty()).then_some(self.pool_vtime);
        match (fixed, pool) {
            (Some(f), Some(p)) => f.min(p),
            (Some(f), None) => f,
            (None, Some(p)) => p,
            (None, None) => self.floor,
        }
    }

    /// Likewise, among the pool's members.
    fn pool_floor(&self) -> f64 {
        self.pool.peek().map_or(self.pool_floor, |(v, _)| v)
    }

    /// Enters a pool member at the pool's floor (or its own virtual time, if later).
    fn push_pool(&mut self, entry: u32, vtime: f64, pos: &mut [u32]) -> f64 {
        if self.pool.is_empty() {
            self.pool_vtime = max(self.pool_vtime, self.floor());
        }
        let v = max(vtime, self.pool_floor());
        self.pool.push(v, entry, pos);
        v
    }

    /// Removes a pool member whose virtual time is `vtime`, remembering the floors if it was
    /// the last.
    fn remove_pool(&mut self, entry: u32, vtime: f64, pos: &mut [u32]) {
        self.pool.remove(entry, pos);
        if self.pool.is_empty() {
            self.pool_floor = max(self.pool_floor, vtime);
            if self.fixed.is_empty() {
                self.floor = max(self.floor, self.pool_vtime);
            }
        }
    }

    /// Removes a fixed member whose virtual time is `vtime`, remembering the floor if the
    /// group is left empty.
    fn remove_fixed(&mut self, entry: u32, vtime: f64, ppb: u32, pos: &mut [u32]) {
        self.fixed.remove(entry, pos);
        self.set_fixed_ppb(self.fixed_ppb - ppb);
        if self.is_empty() {
            self.floor = max(self.floor, vtime);
        }
    }

    /// Advances a pool member that ran for `e` ns, `inv_w` being the reciprocal of its weight.
    fn charge_pool(
        &mut self,
        entry: u32,
        vtime: f64,
        queued: bool,
        e: f64,
        inv_w: f64,
        pos: &mut [u32],
    ) -> f64 {
        let v = vtime + e * inv_w;
        if queued {
            self.pool.update(entry, v, pos);
        }
        self.pool_vtime += e * self.inv_pool_weight;
        v
    }
}

#[derive(Debug)]
struct CapState {
    limit: CpuLimit,
    tokens: i64,
    lease_period: u64,
    throttled: bool,
    retry_at: u64,
    throttled_since: u64,
}

/// One mirrored container. Kept small: the hot path touches one of these per level.
#[derive(Debug)]
struct SNode {
    node: Option<Arc<Node>>,
    groups: Option<Box<[Group; SchedClass::COUNT]>>,
    cap: Option<Box<CapState>>,
    /// Virtual time as a child of its parent.
    vtime: f64,
    /// Virtual time of its own work among its children.
    own_vtime: f64,
    /// The reciprocal of the fixed fraction or of the effective weight: charging multiplies.
    inv_share: f64,
    parent: u32,
    /// Attachments of its own work.
    refs: u32,
    /// Mirrored children.
    children: u32,
    /// CPU charged but not yet added to the container's usage (see [`FLUSH_NS`]).
    pending_ns: u64,
    /// The fixed fraction in parts per billion, 0 for a weighted container.
    fixed_ppb: u32,
    class: u8,
    /// Classes of `groups` that have queued entries.
    mask: u8,
    flags: u8,
}

const BLACK_HOLE: u8 = 1;
const RUNNABLE: u8 = 2;
const QUEUED: u8 = 4;
const OWN_QUEUED: u8 = 8;
const THROTTLED: u8 = 16;
/// In the policy's list of nodes with pending CPU.
const DIRTY: u8 = 32;

impl SNode {
    fn new(node: Option<Arc<Node>>, parent: u32) -> SNode {
        SNode {
            node,
            groups: None,
            cap: None,
            vtime: 0.0,
            own_vtime: 0.0,
            inv_share: 1.0 / 100.0,
            parent,
            refs: 0,
            children: 0,
            pending_ns: 0,
            fixed_ppb: 0,
            class: SchedClass::NORMAL.get(),
            mask: 0,
            flags: 0,
        }
    }

    #[inline]
    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    #[inline]
    fn set(&mut self, f: u8, on: bool) {
        if on {
            self.flags |= f;
        } else {
            self.flags &= !f;
        }
    }

    fn group(&mut self, class: usize) -> &mut Group {
        &mut self.groups.get_or_insert_with(Default::default)[class]
    }
}

/// The resource-container policy: see the [module docs](self).
///
/// ```
/// use rescon::sched::{Hierarchical, Policy};
/// use rescon::{Attributes, Registry};
/// let registry = Registry::new();
/// let mut hi = Attributes::default();
/// hi.set("class", "high").unwrap();
/// let a = registry.root().create_child("a", Attributes::default()).unwrap();
/// let b = registry.root().create_child("b", hi).unwrap();
/// let mut policy = Hierarchical::new(&registry);
/// let (ka, kb) = (policy.attach(&a), policy.attach(&b));
/// policy.set_runnable(ka, true);
/// policy.set_runnable(kb, true);
/// assert_eq!(policy.pick().unwrap().key, kb, "the higher class runs first");
/// ```
#[derive(Debug)]
pub struct Hierarchical {
    nodes: Vec<SNode>,
    /// Heap positions, by queue entry (see [`as_child`], [`as_own`]).
    pos: Vec<u32>,
    free: Vec<u32>,
    by_id: FxHashMap<ContainerId, u32>,
    feed: Arc<Feed>,
    changed: Vec<ContainerId>,
    throttled: Vec<u32>,
    capped: Vec<u32>,
    /// The earliest end of a capped node's lease period.
    next_roll: u64,
    /// Nodes with pending CPU.
    dirty: Vec<u32>,
    last_flush: u64,
    now: u64,
    cfg: HierarchicalConfig,
}

impl Hierarchical {
    /// A policy over the containers of `registry`, with the default configuration.
    pub fn new(registry: &Registry) -> Hierarchical {
        Hierarchical::with_config(registry, HierarchicalConfig::default())
    }

    /// A policy with an explicit configuration.
    pub fn with_config(registry: &Registry, cfg: HierarchicalConfig) -> Hierarchical {
        Hierarchical::build(registry, cfg, None)
    }

    /// A policy that calls `wake` whenever an attached container's attributes or parent change
    /// (from the thread that changed them), so a worker sleeping in `epoll_wait` can be woken
    /// to apply the change at once.
    pub fn with_waker(
        registry: &Registry,
        cfg: HierarchicalConfig,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> Hierarchical {
        Hierarchical::build(registry, cfg, Some(Box::new(wake)))
    }

    fn build(
        registry: &Registry,
        cfg: HierarchicalConfig,
        wake: Option<Box<dyn Fn() + Send + Sync>>,
    ) -> Hierarchical {
        let mut top = SNode::new(None, u32::MAX);
        top.refs = 1;
        Hierarchical {
            nodes: vec![top],
            pos: vec![NOT_QUEUED; 2],
            free: Vec::new(),
            by_id: FxHashMap::default(),
            feed: registry.subscribe(wake),
            changed: Vec::new(),
            throttled: Vec::new(),
            capped: Vec::new(),
            next_roll: u64::MAX,
            dirty: Vec::new(),
            last_flush: 0,
            now: 0,
            cfg,
        }
    }

    /// Number of containers mirrored (attached ones and their ancestors).
    pub fn mirrored(&self) -> usize {
        self.by_id.len()
    }

    fn alloc(&mut self, n: SNode) -> u32 {
        if let Some(i) = self.free.pop() {
            self.nodes[i as usize] = n;
            i
        } else {
            self.nodes.push(n);
            self.pos.push(NOT_QUEUED);
            self.pos.push(NOT_QUEUED);
            (self.nodes.len() - 1) as u32
        }
    }

    #[inline]
    fn n(&self, i: u32) -> &SNode {
        &self.nodes[i as usize]
    }

    #[inline]
    fn nm(&mut self, i: u32) -> &mut SNode {
        &mut self.nodes[i as usize]
    }

    /// The mirror of a container, created with its ancestors if needed.
    fn ensure(&mut self, node: &Arc<Node>) -> u32 {
        if let Some(&i) = self.by_id.get(&node.id) {
            return i;
        }
        // Count the reference before reading parent and attributes: a change made after this
        // point is announced on the feed, one made before is seen by the reads.
        node.sched_refs.fetch_add(1, SeqCst);
        let parent = match node.parent() {
            Some(p) => self.ensure(&p),
            None => TOP,
        };
        let i = self.alloc(SNode::new(Some(node.clone()), parent));
        self.add_child(parent);
        self.by_id.insert(node.id, i);
        self.apply_attrs(i);
        i
    }

    /// Counts a mirrored child of `p`. A container's own work moves into its queues when it
    /// gets its first child.
    fn add_child(&mut self, p: u32) {
        let s = self.nm(p);
        s.children += 1;
        if s.children == 1 && p != TOP && s.has(RUNNABLE) {
            self.enqueue_own(p);
        }
    }

    /// Uncounts a mirrored child of `p`; frees `p` if nothing else holds it.
    fn remove_child(&mut self, p: u32) {
        let s = self.nm(p);
        s.children -= 1;
        if s.children == 0 && s.has(OWN_QUEUED) {
            self.dequeue_own(p);
        }
        self.refresh(p);
        self.maybe_free(p);
    }

    /// Copies the container's attributes into the mirror. The node must not be queued.
    fn apply_attrs(&mut self, i: u32) {
        debug_assert!(!self.n(i).has(QUEUED));
        let node = self.n(i).node.clone().expect("container");
        let a = node.attrs();
        let now = self.now;
        let s = self.nm(i);
        s.class = a.class.get();
        match a.share {
            Share::Fixed(f) => {
                s.inv_share = 1.0 / f.get();
                s.fixed_ppb = f.ppb() as u32;
            }
            Share::Weight(w) => {
                let effective = w.get() as f64 * a.priority.get() as f64 / 100.0;
                s.inv_share = 1.0 / effective.max(MIN_POOL_WEIGHT);
                s.fixed_ppb = 0;
            }
        }
        s.set(BLACK_HOLE, a.priority.is_black_hole());
        match (a.cpu_limit, s.cap.as_mut()) {
            (None, None) => {}
            (Some(limit), Some(cap)) => cap.limit = limit,
            (Some(limit), None) => {
                s.cap = Some(Box::new(CapState {
                    limit,
                    tokens: 0,
                    lease_period: now / limit.period().as_nanos() as u64,
                    throttled: false,
                    retry_at: 0,
                    throttled_since: 0,
                }));
                self.capped.push(i);
                self.replenish(i);
                self.next_roll = self.next_roll.min(self.lease_end(i));
            }
            (None, Some(_)) => {
                let cap = self.nm(i).cap.take().expect("cap");
                self.forget_cap(i, &node, *cap);
            }
        }
    }

    fn eligible(&self, i: u32) -> bool {
        let s = self.n(i);
        if s.has(BLACK_HOLE) || s.has(THROTTLED) {
            return false;
        }
        if s.children == 0 {
            s.has(RUNNABLE)
        } else {
            s.mask != 0
        }
    }

    /// Brings `i`'s membership in its parent's queues in line with its eligibility, and
    /// propagates up as long as that changes a parent's eligibility.
    fn refresh(&mut self, mut i: u32) {
        while i != TOP {
            let want = self.eligible(i);
            if want == self.n(i).has(QUEUED) {
                return;
            }
            let p = self.n(i).parent;
            if want {
                self.enqueue(p, i);
            } else {
                self.dequeue(p, i);
            }
            i = p;
        }
    }

    fn enqueue(&mut self, p: u32, i: u32) {
        let (class, fixed_ppb, vtime) = {
            let s = self.n(i);
            (s.class as usize, s.fixed_ppb, s.vtime)
        };
        let parent = &mut self.nodes[p as usize];
        let g = parent.group(class);
        let v = if fixed_ppb > 0 {
            let v = max(vtime, g.floor());
            g.fixed.push(v, as_child(i), &mut self.pos);
            g.set_fixed_ppb(g.fixed_ppb + fixed_ppb);
            v
        } else {
            g.push_pool(as_child(i), vtime, &mut self.pos)
        };
        parent.mask |= 1 << class;
        let s = self.nm(i);
        s.vtime = v;
        s.set(QUEUED, true);
    }

    fn dequeue(&mut self, p: u32, i: u32) {
        let (class, fixed_ppb, vtime) = {
            let s = self.n(i);
            (s.class as usize, s.fixed_ppb, s.vtime)
        };
        let parent = &mut self.nodes[p as usize];
        let g = &mut parent.groups.as_mut().expect("queued child has groups")[class];
        if fixed_ppb > 0 {
            g.remove_fixed(as_child(i), vtime, fixed_ppb, &mut self.pos);
        } else {
            g.remove_pool(as_child(i), vtime, &mut self.pos);
        }
        if g.is_empty() {
            parent.mask &= !(1 << class);
        }
        self.nm(i).set(QUEUED, false);
    }

    fn enqueue_own(&mut self, i: u32) {
        let s = &mut self.nodes[i as usize];
        let own = s.own_vtime;
        s.own_vtime = s.group(OWN_CLASS).push_pool(as_own(i), own, &mut self.pos);
        s.mask |= 1 << OWN_CLASS;
        s.set(OWN_QUEUED, true);
    }

    fn dequeue_own(&mut self, i: u32) {
        let s = &mut self.nodes[i as usize];
        let g = &mut s.groups.as_mut().expect("own work queued")[OWN_CLASS];
        g.remove_pool(as_own(i), s.own_vtime, &mut self.pos);
        if g.is_empty() {
            s.mask &= !(1 << OWN_CLASS);
        }
        s.set(OWN_QUEUED, false);
    }

    /// Makes sure a capped node holds a lease for the current period, taking more of its
    /// container's shared budget when the local tokens are spent, and throttles it when none is
    /// left. A lease is only good in its own period: at a period change the rest of it (or the
    /// debt, if the node ran over) goes back to the shared budget.
    fn replenish(&mut self, i: u32) {
        let now = self.now;
        let lease = self.cfg.lease_ns.unwrap_or(u64::MAX / 4);
        let node = self.n(i).node.clone().expect("capped container");
        let cap = self.nm(i).cap.as_mut().expect("capped");
        let period = cap.limit.period().as_nanos() as u64;
        let idx = now / period;
        if idx != cap.lease_period {
            node.cap_give_back(cap.tokens);
            cap.tokens = 0;
            cap.lease_period = idx;
        }
        if cap.tokens > 0 {
            return;
        }
        let need = cap.tokens.unsigned_abs().saturating_add(lease);
        let (grant, next) = node.cap_lease(&cap.limit, now, need);
        cap.tokens += grant as i64;
        if cap.tokens > 0 {
            return;
        }
        cap.retry_at = next;
        if !cap.throttled {
            cap.throttled = true;
            cap.throttled_since = now;
            self.nm(i).set(THROTTLED, true);
            self.throttled.push(i);
            self.refresh(i);
        }
    }

    /// Start of the next period of a capped node's lease.
    fn lease_end(&self, i: u32) -> u64 {
        let cap = self.n(i).cap.as_ref().expect("capped");
        (cap.lease_period + 1) * cap.limit.period().as_nanos() as u64
    }

    fn forget_cap(&mut self, i: u32, node: &Node, cap: CapState) {
        node.cap_give_back(cap.tokens);
        if cap.throttled {
            node.add_throttled(self.now.saturating_sub(cap.throttled_since));
            self.throttled.retain(|&t| t != i);
            self.nm(i).set(THROTTLED, false);
        }
        self.capped.retain(|&t| t != i);
    }

    /// Frees a mirror that has no attachments and no children, then its parent if that frees it.
    fn maybe_free(&mut self, i: u32) {
        if i == TOP {
            return;
        }
        let s = self.nm(i);
        if s.refs > 0 || s.children > 0 {
            return;
        }
        debug_assert!(!s.has(QUEUED) && s.mask == 0);
        flush_node(s);
        let parent = s.parent;
        let node = s.node.take().expect("container");
        let cap = s.cap.take();
        s.groups = None;
        s.flags = 0;
        if let Some(cap) = cap {
            self.forget_cap(i, &node, *cap);
        }
        self.by_id.remove(&node.id);
        node.sched_refs.fetch_sub(1, SeqCst);
        self.free.push(i);
        self.remove_child(parent);
    }

    fn sync(&mut self) {
        self.feed.drain(&mut self.changed);
        if self.changed.is_empty() {
            return;
        }
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        changed.dedup();
        for id in changed.drain(..) {
            if let Some(&i) = self.by_id.get(&id) {
                self.resync(i);
            }
        }
        self.changed = changed;
    }

    /// Re-reads a container's parent and attributes after a change made elsewhere.
    fn resync(&mut self, i: u32) {
        let node = self.n(i).node.clone().expect("container");
        let old_parent = self.n(i).parent;
        if self.n(i).has(QUEUED) {
            self.dequeue(old_parent, i);
        }
        let want_parent = node.parent();
        let cur_parent_id = self.n(old_parent).node.as_ref().map(|n| n.id);
        if want_parent.as_ref().map(|p| p.id) != cur_parent_id {
            let new_parent = match want_parent {
                Some(p) => self.ensure(&p),
                None => TOP,
            };
            self.add_child(new_parent);
            self.nm(i).parent = new_parent;
            self.remove_child(old_parent);
        } else {
            self.refresh(old_parent);
        }
        self.apply_attrs(i);
        let p = self.n(i).parent;
        self.refresh(i);
        self.refresh(p);
    }
}

/// Adds a node's pending CPU to its container's usage.
fn flush_node(s: &mut SNode) {
    if s.pending_ns > 0 {
        let node = s.node.as_ref().expect("charged node is attached");
        crate::usage::Account {
            counters: &node.counters,
        }
        .add_cpu_ns(s.pending_ns);
        s.pending_ns = 0;
    }
}

impl Drop for Hierarchical {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Node {
    fn add_throttled(&self, ns: u64) {
        crate::usage::Account {
            counters: &self.counters,
        }
        .add_throttled_ns(ns);
    }
}

impl Policy for Hierarchical {
    fn attach(&mut self, container: &Container) -> Key {
        let i = self.ensure(&container.node);
        self.nm(i).refs += 1;
        Key(i)
    }

    fn detach(&mut self, key: Key) {
        let i = key.0;
        let s = self.nm(i);
        assert!(s.refs > 0 && s.node.is_some(), "detach of an invalid key");
        s.refs -= 1;
        if s.refs == 0 {
            self.set_runnable(key, false);
            self.maybe_free(i);
        }
    }

    fn set_runnable(&mut self, key: Key, runnable: bool) {
        let i = key.0;
        let s = self.nm(i);
        if s.has(RUNNABLE) == runnable {
            return;
        }
        s.set(RUNNABLE, runnable);
        if !runnable {
            flush_node(s);
        }
        if s.children > 0 {
            if runnable {
                self.enqueue_own(i);
            } else {
                self.dequeue_own(i);
            }
        }
        self.refresh(i);
    }

    fn pick(&mut self) -> Option<Pick> {
        self.sync();
        let mut i = TOP;
        let mut slice: Option<u64> = None;
        let now = self.now;
        loop {
            let s = &self.nodes[i as usize];
            if i != TOP && s.children == 0 {
                break;
            }
            if s.mask == 0 {
                debug_assert_eq!(i, TOP, "a queued container has nothing runnable");
                return None;
            }
            let class = 7 - s.mask.leading_zeros() as usize;
            let g = &s.groups.as_ref().expect("mask implies groups")[class];
            let fixed_top = g.fixed.peek();
            let pool_open = !g.pool.is_empty() && (fixed_top.is_none() || g.fixed_ppb < ONE_PPB);
            let take_pool = pool_open && fixed_top.is_none_or(|(v, _)| g.pool_vtime < v);
            let entry = if take_pool {
                g.pool.peek().expect("pool open").1
            } else {
                fixed_top.expect("non-empty").1
            };
            if entry & 1 == 1 {
                break; // the own work of `i`
            }
            i = entry >> 1;
            if let Some(cap) = &self.nodes[i as usize].cap {
                let end = (cap.lease_period + 1) * cap.limit.period().as_nanos() as u64;
                let room = (cap.tokens.max(0) as u64).min(end.saturating_sub(now));
                slice = Some(slice.map_or(room, |s| s.min(room)));
            }
        }
        let container = self.n(i).node.as_ref().expect("container").id;
        Some(Pick {
            key: Key(i),
            container,
            slice_ns: slice,
        })
    }

    fn charge(&mut self, key: Key, elapsed_ns: u64) {
        let e = elapsed_ns as f64;
        let i = key.0;
        {
            let s = &mut self.nodes[i as usize];
            if !s.has(DIRTY) {
                s.set(DIRTY, true);
                self.dirty.push(i);
            }
            s.pending_ns += elapsed_ns;
            if s.pending_ns >= FLUSH_NS {
                flush_node(s);
            }
            if s.children > 0 {
                let queued = s.has(OWN_QUEUED);
                let own = s.own_vtime;
                let g = s.group(OWN_CLASS);
                s.own_vtime =
                    g.charge_pool(as_own(i), own, queued, e, 1.0 / OWN_WEIGHT, &mut self.pos);
            }
        }
        let mut i = i;
        while i != TOP {
            let (p, class, inv_share, fixed_ppb, queued, vtime) = {
                let s = self.n(i);
                (
                    s.parent,
                    s.class as usize,
                    s.inv_share,
                    s.fixed_ppb,
                    s.has(QUEUED),
                    s.vtime,
                )
            };
            let v = match self.nodes[p as usize].groups.as_mut() {
                Some(groups) => {
                    let g = &mut groups[class];
                    if fixed_ppb > 0 {
                        let v = vtime + e * inv_share;
                        if queued {
                            g.fixed.update(as_child(i), v, &mut self.pos);
                        }
                        v
                    } else {
                        g.charge_pool(as_child(i), vtime, queued, e, inv_share, &mut self.pos)
                    }
                }
                None => vtime,
            };
            let s = self.nm(i);
            s.vtime = v;
            if let Some(cap) = s.cap.as_mut() {
                cap.tokens -= elapsed_ns as i64;
                if cap.tokens <= 0 {
                    self.replenish(i);
                }
            }
            i = p;
        }
    }

    fn refill(&mut self, now_ns: u64) {
        self.now = self.now.max(now_ns);
        let now = self.now;
        if now >= self.last_flush + FLUSH_NS {
            self.flush();
            self.last_flush = now;
        }
        if now >= self.next_roll {
            self.next_roll = u64::MAX;
            for k in 0..self.capped.len() {
                let i = self.capped[k];
                if now >= self.lease_end(i) {
                    self.replenish(i);
                }
                self.next_roll = self.next_roll.min(self.lease_end(i));
            }
        }
        let mut k = 0;
        while k < self.throttled.len() {
            let i = self.throttled[k];
            let cap = self.n(i).cap.as_ref().expect("throttled is capped");
            if cap.retry_at <= now && cap.tokens <= 0 {
                self.replenish(i);
            }
            let cap = self.nm(i).cap.as_mut().expect("throttled is capped");
            if cap.tokens > 0 {
                cap.throttled = false;
                let waited = now.saturating_sub(cap.throttled_since);
                self.throttled.swap_remove(k);
                let s = self.nm(i);
                s.set(THROTTLED, false);
                s.node.as_ref().expect("container").add_throttled(waited);
                self.refresh(i);
                continue;
            }
            k += 1;
        }
    }

    fn flush(&mut self) {
        for i in std::mem::take(&mut self.dirty) {
            let s = &mut self.nodes[i as usize];
            if s.has(DIRTY) {
                s.set(DIRTY, false);
                flush_node(s);
            }
        }
    }

    fn next_refill(&self) -> Option<u64> {
        self.throttled
            .iter()
            .filter_map(|&i| self.n(i).cap.as_ref().map(|c| c.retry_at))
            .min()
    }

    fn container(&self, key: Key) -> ContainerId {
        self.n(key.0).node.as_ref().expect("attached").id
    }
}
