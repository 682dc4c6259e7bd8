//! Run queues over a policy: one queue of runnable tasks per container (a *slot*), and the
//! policy that says whose queue runs next. A worker has one; so has the blocking pool.
//!
//! # Invariants
//!
//! - A slot exists while a task is bound to it, its queue is non-empty, or it waits in the
//!   reclaim list; [`reclaim`](RunQueues::reclaim) releases it (detaches its policy key and
//!   drops its `Container` handle) once none of that holds.
//! - A slot is runnable for the policy while its queue is non-empty, and also while it
//!   *lingers*: a burst emptied its queue while a task is still bound to it (see the worker).
//! - A slot's key in the policy is its index here, so a task's metadata holds one number for
//!   both.

use super::policy::AnyPolicy;
use crate::task::Runnable;
use rescon::sched::balance::Offer;
use rescon::sched::{Key, Pick, Standing};
use rescon::{Container, ContainerId};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;

/// Levels of a container's path that the class hand-off compares (see the worker's docs).
pub(crate) const PATH_LEVELS: usize = 8;

/// A container's path from the top, as the class hand-off compares it: per level
/// `id << 3 | own << 2 | class`, zero past the end, all zero for work that may not run now
/// (priority 0, a spent CPU limit) or that the policy gives no standing.
pub(crate) type ClassPath = [u64; PATH_LEVELS];

/// Whether work at path `a` outclasses work at path `b`: at the first level where they part,
/// `a`'s class is higher. Paths that do not part within [`PATH_LEVELS`] levels, or where one
/// ends first, do not.
pub(crate) fn outclasses(a: &ClassPath, b: &ClassPath) -> bool {
    for (x, y) in a.iter().zip(b) {
        if *x == 0 || *y == 0 {
            return false;
        }
        if x >> 2 != y >> 2 {
            return (x & 3) > (y & 3);
        }
    }
    false
}

/// The class path of a standing, with the highest and lowest class on it (the lowest is
/// `u8::MAX` for an empty path).
pub(crate) fn class_path(st: &Standing) -> (ClassPath, u8, u8) {
    let mut path = [0u64; PATH_LEVELS];
    let (mut max, mut min) = (0u8, u8::MAX);
    for (slot, l) in path.iter_mut().zip(&st.levels) {
        let class = l.class & 3;
        *slot = (l.id.get() << 3) | ((l.own as u64) << 2) | class as u64;
        max = max.max(class);
        min = min.min(class);
    }
    (path, max, min)
}

/// One container's place: its queue of runnable tasks (each with the time it was queued).
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) container: Container,
    pub(crate) key: Key,
    pub(crate) queue: VecDeque<(Runnable, u64)>,
    /// Tasks bound to it.
    pub(crate) bound: u32,
    /// Whether the policy has it runnable.
    pub(crate) runnable: bool,
    /// Runnable for the policy with an empty queue (see the module docs).
    pub(crate) lingering: bool,
    /// Effective scheduling class (the lowest on its path), for idle lowering.
    pub(crate) class: u8,
    /// Whether it is high-class work (`prio::is_high`), for raising the worker.
    high: bool,
    in_reclaim: bool,
    dirty: bool,
    /// In [`RunQueues::queued`].
    listed: bool,
    /// Polls and wait time not yet added to the container's usage.
    pub(crate) polls: u64,
    pub(crate) wait_ns: u64,
    /// The longest a task of it waited, of those that ran since the last offer.
    pub(crate) max_wait: u64,
    /// When its queue last became non-empty.
    backlog_since: u64,
    /// Its class path, and the highest and lowest class on it (kept only with `offers`).
    pub(crate) path: ClassPath,
    pub(crate) pmax: u8,
    pub(crate) pmin: u8,
}

impl Slot {
    /// Whether it is high-class work (`prio::is_high`; known only where a worker raises its
    /// priority for it or lowers it for idle work).
    pub(crate) fn is_high(&self) -> bool {
        self.high
    }
}

/// A worker's (or the blocking pool's) run queues: see the [module docs](self).
#[derive(Debug)]
pub(crate) struct RunQueues {
    pub(crate) policy: AnyPolicy,
    slots: Vec<Option<Slot>>,
    by_id: FxHashMap<ContainerId, u32>,
    reclaim: Vec<u32>,
    dirty: Vec<u32>,
    /// Slots whose queue became non-empty since the last [`offers`](RunQueues::offers) (some
    /// may have emptied since), kept only when `offers` is used.
    queued: Vec<u32>,
    track: bool,
    /// Live slots of a class above normal (see `prio::Boost`).
    high: u32,
    /// Slots of a class above normal with tasks queued (see `prio::Boost`).
    high_queued: u32,
    /// Slots with tasks queued, by the highest class on their path (kept only with `offers`).
    waiting: [u32; 4],
    /// The classes seen on the paths of this worker's slots, a bit each.
    pub(crate) classes: u8,
    scratch: Standing,
}

impl RunQueues {
    /// Run queues over `policy`; `offers` says whether [`offers`](RunQueues::offers) will be
    /// asked for (a worker of a runtime with several).
    pub(crate) fn new(policy: AnyPolicy, offers: bool) -> RunQueues {
        RunQueues {
            policy,
            slots: Vec::new(),
            by_id: FxHashMap::default(),
            reclaim: Vec::new(),
            dirty: Vec::new(),
            queued: Vec::new(),
            track: offers,
            high: 0,
            high_queued: 0,
            waiting: [0; 4],
            classes: 0,
            scratch: Standing::default(),
        }
    }

    #[inline]
    pub(crate) fn slot(&mut self, k: u32) -> &mut Slot {
        self.slots[k as usize].as_mut().expect("live slot")
    }

    /// The slot of a container, if it has one.
    pub(crate) fn find(&self, id: ContainerId) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    /// The slot of a container, made (and attached to the policy) if needed; `moved` if the
    /// work comes from another worker ([`Policy::attach_moved`](rescon::sched::Policy)).
    /// `class` gives the slot's effective class, when one is made.
    pub(crate) fn slot_for(
        &mut self,
        c: &Container,
        moved: bool,
        class: impl FnOnce() -> (u8, bool),
    ) -> u32 {
        if let Some(&k) = self.by_id.get(&c.id()) {
            return k;
        }
        let key = if moved {
            self.policy.attach_moved(c)
        } else {
            self.policy.attach(c)
        };
        let k = key.index() as u32;
        if self.slots.len() <= k as usize {
            self.slots.resize_with(k as usize + 1, || None);
        }
        let (class, high) = class();
        if high {
            self.high += 1;
        }
        self.slots[k as usize] = Some(Slot {
            container: c.unprivileged(),
            key,
            queue: VecDeque::new(),
            bound: 0,
            runnable: false,
            lingering: false,
            class,
            high,
            in_reclaim: false,
            dirty: false,
            listed: false,
            polls: 0,
            wait_ns: 0,
            max_wait: 0,
            backlog_since: 0,
            path: [0; PATH_LEVELS],
            pmax: 0,
            pmin: u8::MAX,
        });
        self.by_id.insert(c.id(), k);
        if self.track {
            let mut st = std::mem::take(&mut self.scratch);
            if self.policy.standing(key, &mut st) {
                self.set_path(k, &st);
            }
            self.scratch = st;
        }
        k
    }

    /// Records a slot's class path (from its standing).
    fn set_path(&mut self, k: u32, st: &Standing) {
        let (path, max, min) = class_path(st);
        let s = self.slots[k as usize].as_mut().expect("live slot");
        if s.path == path {
            return;
        }
        if !s.queue.is_empty() {
            self.waiting[s.pmax as usize] -= 1;
            self.waiting[max as usize] += 1;
        }
        s.path = path;
        s.pmax = max;
        s.pmin = min;
        for l in st.levels.iter().take(PATH_LEVELS) {
            self.classes |= 1 << (l.class & 3);
        }
    }

    /// The highest class on the path of work queued here that waits while slot `running`
    /// runs (its own further tasks count; the task it is about to run does not), if any.
    pub(crate) fn top_waiting(&self, running: u32) -> Option<u8> {
        let s = self.slots[running as usize].as_ref()?;
        (0..4u8).rev().find(|&c| {
            let own = (c == s.pmax && s.queue.len() < 2) as u32;
            self.waiting[c as usize] > own
        })
    }

    /// Work queued here that outclasses work at `theirs` (whose lowest class is
    /// `their_min`), or, for a worker that runs nothing (`theirs` is `None`), work with a class
    /// above `their_min` on its path, and that waits while slot `running` runs: the container
    /// and how many of its waiting tasks to hand over (half, at least one).
    pub(crate) fn handoff(
        &self,
        running: u32,
        theirs: Option<&ClassPath>,
        their_min: u8,
    ) -> Option<(ContainerId, u32)> {
        for &k in &self.queued {
            let Some(s) = self.slots[k as usize].as_ref() else {
                continue;
            };
            let avail = s.queue.len() - (k == running) as usize;
            if avail == 0 || s.pmax <= their_min || theirs.is_some_and(|t| !outclasses(&s.path, t))
            {
                continue;
            }
            return Some((s.container.id(), avail.div_ceil(2) as u32));
        }
        None
    }

    /// Queues a runnable task at `now`; returns its slot's class if the slot became runnable
    /// (from idle, or from lingering: runnable for the policy already, but with nothing to
    /// run).
    #[inline]
    pub(crate) fn push(&mut self, k: u32, r: Runnable, now: u64) -> Option<u8> {
        let s = self.slots[k as usize].as_mut().expect("live slot");
        if s.high && s.queue.is_empty() {
            self.high_queued += 1;
        }
        if self.track && s.queue.is_empty() {
            self.waiting[s.pmax as usize] += 1;
            s.backlog_since = now;
            if !s.listed {
                s.listed = true;
                self.queued.push(k);
            }
        }
        s.queue.push_back((r, now));
        if s.runnable {
            if !s.lingering {
                return None;
            }
            s.lingering = false;
            return Some(s.class);
        }
        s.runnable = true;
        let (key, class) = (s.key, s.class);
        self.policy.set_runnable(key, true);
        Some(class)
    }

    /// The next task of a slot, and when it was queued.
    #[inline]
    pub(crate) fn pop(&mut self, k: u32) -> Option<(Runnable, u64)> {
        let s = self.slots[k as usize].as_mut().expect("live slot");
        let r = s.queue.pop_front();
        if r.is_some() && s.queue.is_empty() {
            if self.track {
                self.waiting[s.pmax as usize] -= 1;
            }
            if s.high {
                self.high_queued -= 1;
            }
        }
        r
    }

    /// Drops a task's binding to a slot.
    pub(crate) fn unbind(&mut self, k: u32) {
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
    pub(crate) fn end_linger(&mut self, k: u32) -> bool {
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

    /// After a burst of slot `k`: if the burst emptied its queue, the slot lingers while a
    /// task is bound to it, and goes idle otherwise (before its charge: the same result, and
    /// the cheaper order for the policy). Then charges `ns` (unless `charge` is false: the
    /// burst ended in a rebinding, charged already), and records the burst's polls and wait.
    pub(crate) fn end_burst(&mut self, k: u32, ns: u64, charge: bool, polls: u32, wait: u64) {
        let s = self.slots[k as usize].as_mut().expect("live slot");
        let emptied = s.queue.is_empty();
        if emptied {
            if s.bound > 0 {
                s.lingering = true;
            } else {
                s.runnable = false;
                let key = s.key;
                self.policy.set_runnable(key, false);
            }
        }
        let s = self.slots[k as usize].as_mut().expect("live slot");
        if charge {
            let key = s.key;
            self.policy.charge(key, ns);
        }
        let s = self.slots[k as usize].as_mut().expect("live slot");
        s.polls += polls as u64;
        s.wait_ns += wait;
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(k);
        }
        if emptied && s.bound == 0 && !s.in_reclaim {
            s.in_reclaim = true;
            self.reclaim.push(k);
        }
    }

    /// A task of slot `k` was taken to run outside a burst (by a blocking-pool thread): the
    /// slot goes idle for the policy if its queue is empty. It does not linger: the task stays
    /// bound until it has run, and a pool thread takes one task at a time.
    pub(crate) fn idle_if_empty(&mut self, k: u32) {
        let s = self.slot(k);
        if s.queue.is_empty() && s.runnable {
            s.runnable = false;
            let key = s.key;
            self.policy.set_runnable(key, false);
        }
    }

    /// Notes a task of slot `k` that waited `ns` before it ran (for the offers).
    #[inline]
    pub(crate) fn waited(&mut self, k: u32, ns: u64) {
        let s = self.slot(k);
        if ns > s.max_wait {
            s.max_wait = ns;
        }
    }

    pub(crate) fn charge(&mut self, k: u32, ns: u64) {
        let key = self.slot(k).key;
        self.policy.charge(key, ns);
    }

    /// Asks the policy for the next slot to run. A lingering slot whose turn came before new
    /// work did goes idle, and the policy is asked again.
    pub(crate) fn pick(&mut self) -> Option<Pick> {
        loop {
            match self.policy.pick() {
                Some(p) if self.end_linger(p.key.index() as u32) => {}
                p => return p,
            }
        }
    }

    /// Records pending polls and wait time into the containers' usage.
    pub(crate) fn flush_counters(&mut self) {
        for k in std::mem::take(&mut self.dirty) {
            if let Some(s) = self.slots[k as usize].as_mut() {
                flush_slot(s);
            }
        }
    }

    pub(crate) fn flush_all(&mut self) {
        self.flush_counters();
        self.policy.flush();
    }

    /// Releases the slots nobody uses any more.
    pub(crate) fn reclaim(&mut self) {
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
            if s.high {
                self.high -= 1;
            }
            self.by_id.remove(&s.container.id());
            self.policy.detach(s.key);
        }
        // Keep the vector for the next round.
        if self.reclaim.capacity() == 0 {
            self.reclaim = Vec::with_capacity(16);
        }
    }

    /// Takes up to `n` queued tasks of a container from the back of its queue, for another
    /// worker, with the container and when each was queued. The policy first
    /// [publishes](rescon::sched::Policy::publish) where the container stands, so that it
    /// keeps its place there. The tasks' bindings are dropped here.
    pub(crate) fn take(
        &mut self,
        id: ContainerId,
        n: u32,
    ) -> Option<(Container, Vec<(Runnable, u64)>)> {
        let k = self.find(id)?;
        let s = self.slot(k);
        let keep = s.queue.len().saturating_sub(n as usize);
        if keep == s.queue.len() {
            return None;
        }
        let taken: Vec<(Runnable, u64)> = s.queue.drain(keep..).collect();
        let (key, c, pmax, high) = (s.key, s.container.clone(), s.pmax as usize, s.high);
        if self.track && keep == 0 {
            self.waiting[pmax] -= 1;
        }
        if high && keep == 0 {
            self.high_queued -= 1;
        }
        self.policy.publish(key);
        for _ in 0..taken.len() {
            self.unbind(k);
        }
        let s = self.slot(k);
        if s.queue.is_empty() && s.runnable && !s.lingering {
            if s.bound > 0 {
                s.lingering = true;
            } else {
                s.runnable = false;
                self.policy.set_runnable(key, false);
                let s = self.slot(k);
                if !s.in_reclaim {
                    s.in_reclaim = true;
                    self.reclaim.push(k);
                }
            }
        }
        Some((c, taken))
    }

    /// Lists the containers with tasks queued, for other workers, at most `max`: the highest
    /// classes first, then those that waited longest. Containers the policy says may not run
    /// now are left out.
    /// `busy_ns` is how long the worker has had work without a break: a container's backlog
    /// counts no longer than that.
    pub(crate) fn offers(&mut self, now: u64, busy_ns: u64, max: usize, out: &mut Vec<Offer>) {
        out.clear();
        let mut i = 0;
        while i < self.queued.len() {
            let k = self.queued[i];
            let Some(s) = self.slots[k as usize].as_mut() else {
                self.queued.swap_remove(i);
                continue;
            };
            if s.queue.is_empty() {
                s.listed = false;
                self.queued.swap_remove(i);
                continue;
            }
            i += 1;
            let waited = std::mem::take(&mut s.max_wait)
                .max(now.saturating_sub(s.queue.front().map_or(now, |q| q.1)));
            let (key, container, waiting, backlog) = (
                s.key,
                s.container.id(),
                s.queue.len() as u32,
                now.saturating_sub(s.backlog_since).min(busy_ns),
            );
            let mut standing = Standing::default();
            if !self.policy.standing(key, &mut standing) {
                // It may not run now: nor may it be handed over for its class.
                standing.levels.clear();
                self.set_path(k, &standing);
                continue;
            }
            self.set_path(k, &standing);
            out.push(Offer {
                container,
                waiting,
                waited_ns: waited,
                backlog_ns: backlog,
                standing,
            });
        }
        out.sort_by(|a, b| {
            (b.standing.class_key(), b.waited_ns).cmp(&(a.standing.class_key(), a.waited_ns))
        });
        out.truncate(max);
    }

    /// Where the slot the policy would run next stands (for comparison with other workers'
    /// offers), if it would run any.
    pub(crate) fn best(&mut self, now: u64, out: &mut Standing) -> bool {
        self.policy.refill(now);
        match self.pick() {
            Some(p) => self.policy.standing(p.key, out),
            None => false,
        }
    }

    /// Takes every queued task (at shutdown).
    pub(crate) fn drain(&mut self, out: &mut Vec<Runnable>) {
        for s in self.slots.iter_mut().flatten() {
            out.extend(s.queue.drain(..).map(|(r, _)| r));
        }
        self.waiting = [0; 4];
        self.high_queued = 0;
    }

    /// Detaches every slot (at shutdown) and records what is pending.
    pub(crate) fn detach_all(&mut self) {
        self.flush_counters();
        let slots = std::mem::take(&mut self.slots);
        self.by_id.clear();
        self.high = 0;
        self.high_queued = 0;
        for mut s in slots.into_iter().flatten() {
            flush_slot(&mut s);
            self.policy.detach(s.key);
        }
        self.policy.flush();
    }

    /// Sets a slot's effective class and whether it is high-class work (read again from the
    /// tree).
    pub(crate) fn set_class(&mut self, k: u32, class: u8, high: bool) {
        let Some(s) = self.slots.get_mut(k as usize).and_then(Option::as_mut) else {
            return;
        };
        match (s.high, high) {
            (false, true) => self.high += 1,
            (true, false) => self.high -= 1,
            _ => {}
        }
        if s.high != high && !s.queue.is_empty() {
            if high {
                self.high_queued += 1;
            } else {
                self.high_queued -= 1;
            }
        }
        s.class = class;
        s.high = high;
    }

    /// Whether a container of a class above normal has a slot here.
    pub(crate) fn hosts_high(&self) -> bool {
        self.high > 0
    }

    /// Whether tasks of a container of a class above normal are queued here.
    pub(crate) fn high_queued(&self) -> bool {
        self.high_queued > 0
    }

    /// Whether a container has tasks queued here.
    pub(crate) fn has_queued(&self, id: ContainerId) -> bool {
        self.find(id)
            .and_then(|k| self.get(k))
            .is_some_and(|s| !s.queue.is_empty())
    }

    /// A live slot.
    pub(crate) fn get(&self, k: u32) -> Option<&Slot> {
        self.slots.get(k as usize).and_then(Option::as_ref)
    }

    /// The live slots (for idle lowering's class refresh).
    pub(crate) fn get_mut(&mut self, k: u32) -> Option<&mut Slot> {
        self.slots.get_mut(k as usize).and_then(Option::as_mut)
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

#[cfg(test)]
mod tests {
    use super::*;
    use rescon::sched::Level;
    use rescon::{Attributes, Registry};

    fn path(levels: &[(&Container, u8)]) -> ClassPath {
        let st = Standing {
            levels: levels
                .iter()
                .map(|(c, class)| Level {
                    id: c.id(),
                    own: false,
                    class: *class,
                    fixed: false,
                    vtime: 0.0,
                    inv_share: 1.0,
                    pool_vtime: 0.0,
                    inv_pool: 1.0,
                })
                .collect(),
        };
        class_path(&st).0
    }

    #[test]
    fn a_path_outclasses_another_only_where_they_part() {
        let registry = Registry::new();
        let root = registry.root();
        let mk = |p: &Container, n: &str| p.create_child(n, Attributes::default()).unwrap();
        let (a, b) = (mk(&root, "a"), mk(&root, "b"));
        let (ax, ay, bz) = (mk(&a, "x"), mk(&a, "y"), mk(&b, "z"));
        // Siblings of different classes: the higher outclasses the lower, not the reverse.
        assert!(outclasses(&path(&[(&a, 2)]), &path(&[(&b, 1)])));
        assert!(!outclasses(&path(&[(&b, 1)]), &path(&[(&a, 2)])));
        // Parting at the top in one class: a high class below does not count.
        assert!(!outclasses(
            &path(&[(&a, 1), (&ax, 2)]),
            &path(&[(&b, 1), (&bz, 1)])
        ));
        // Parting below a common parent: the classes there decide.
        assert!(outclasses(
            &path(&[(&a, 1), (&ax, 2)]),
            &path(&[(&a, 1), (&ay, 1)])
        ));
        // The same container, an ancestor's path, or work that may not run: never.
        assert!(!outclasses(&path(&[(&a, 2)]), &path(&[(&a, 2)])));
        assert!(!outclasses(&path(&[(&a, 2), (&ax, 3)]), &path(&[(&a, 2)])));
        assert!(!outclasses(&[0; PATH_LEVELS], &path(&[(&b, 0)])));
    }
}
