//! Several simulated workers, each with its own policy, serving CPU-bound containers: the
//! many-worker counterpart of [`Sim`](super::Sim), with the balancing of
//! [`sched::balance`](crate::sched::balance) between them.
//!
//! Every step, each worker refills its policy with the fake time, picks a container, runs one
//! of its tasks for a quantum (shorter if the policy's slice says so) and charges that time;
//! the workers move in lock step. Every [`BALANCE_NS`] or so each worker offers
//! its waiting work and each, in turn, takes what [`choose`] tells it to. A container's tasks
//! are interchangeable and always runnable; a worker runs one task at a time, so a container
//! with `k` tasks can use at most `k` workers. Alongside, the entitlement of every container
//! on that many cores ([`entitlements_on`]) is integrated, so a run ends with what each
//! container should have received beside what it did, and the largest lag between the two
//! seen at any balancing step.
//!
//! ```
//! use rescon::sched::{Hierarchical, HierarchicalConfig, Policy};
//! use rescon::sim::MultiSim;
//! use rescon::Registry;
//! let registry = Registry::new();
//! let root = registry.root();
//! let (a, b, c) = (
//!     root.create_child("a", Default::default()).unwrap(),
//!     root.create_child("b", Default::default()).unwrap(),
//!     root.create_child("c", Default::default()).unwrap(),
//! );
//! let cfg = HierarchicalConfig { shared: true, ..Default::default() };
//! let mut sim = MultiSim::new(2, 200_000, || {
//!     Box::new(Hierarchical::with_config(&registry, cfg)) as Box<dyn Policy>
//! });
//! sim.set_top(vec![root.clone()]);
//! // Skewed: a and b on worker 0, c alone on worker 1.
//! sim.add(&a, 4, 0);
//! sim.add(&b, 4, 0);
//! sim.add(&c, 4, 1);
//! sim.run_for(2_000_000_000);
//! for x in [&a, &b, &c] {
//!     assert!((sim.delivered(x) - 1.0 / 3.0).abs() < 0.01, "{}", sim.delivered(x));
//! }
//! ```

use super::entitlements_on;
use crate::sched::balance::{BALANCE_NS, Offer, Rules, choose_except};
use crate::sched::{Key, Policy, Standing};
use crate::{Container, ContainerId, Snapshot};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;

/// A container's tasks on one simulated worker.
#[derive(Debug)]
struct Slot {
    container: Container,
    key: Key,
    /// Its tasks, in the order they run: when each was queued.
    queue: VecDeque<u64>,
    /// The longest a task of it waited, of those that ran since the last balancing.
    waited: u64,
    /// When its tasks came to this worker.
    since: u64,
}

#[derive(Debug)]
struct Worker {
    policy: Box<dyn Policy>,
    slots: FxHashMap<ContainerId, Slot>,
    by_key: FxHashMap<Key, ContainerId>,
    running: Option<ContainerId>,
}

impl Worker {
    /// Adds tasks queued at `queued`; `moved` if they come from another worker.
    fn add(&mut self, c: &Container, queued: &[u64], moved: bool) {
        if let Some(s) = self.slots.get_mut(&c.id()) {
            s.queue.extend(queued);
            return;
        }
        let key = if moved {
            self.policy.attach_moved(c)
        } else {
            self.policy.attach(c)
        };
        self.policy.set_runnable(key, true);
        self.by_key.insert(key, c.id());
        self.slots.insert(
            c.id(),
            Slot {
                container: c.clone(),
                key,
                queue: queued.iter().copied().collect(),
                waited: 0,
                since: queued.iter().copied().min().unwrap_or(0),
            },
        );
    }

    /// Takes the last `tasks` tasks of a container, for another worker.
    fn remove(&mut self, id: ContainerId, tasks: u32) -> (Container, Vec<u64>) {
        let s = self.slots.get_mut(&id).expect("offered");
        let keep = s.queue.len() - tasks as usize;
        let taken: Vec<u64> = s.queue.drain(keep..).collect();
        let c = s.container.clone();
        self.policy.publish(s.key);
        if s.queue.is_empty() {
            let key = s.key;
            self.slots.remove(&id);
            self.by_key.remove(&key);
            self.policy.set_runnable(key, false);
            self.policy.detach(key);
        }
        (c, taken)
    }
}

/// The simulator: see the [module docs](self).
#[derive(Debug)]
pub struct MultiSim {
    workers: Vec<Worker>,
    quantum_ns: u64,
    rules: Rules,
    now: u64,
    start: u64,
    next_balance: u64,
    tops: Vec<Container>,
    /// Runnable tasks of each container, over all workers.
    tasks: FxHashMap<ContainerId, u32>,
    containers: Vec<Container>,
    start_usage: FxHashMap<ContainerId, u64>,
    entitled_ns: FxHashMap<ContainerId, f64>,
    max_lag_ns: FxHashMap<ContainerId, f64>,
    moves: u64,
    balances: u64,
    ent: Option<FxHashMap<ContainerId, f64>>,
}

impl MultiSim {
    /// `workers` simulated workers, each with a policy from `policy`, running quanta of
    /// `quantum_ns`.
    pub fn new(
        workers: usize,
        quantum_ns: u64,
        mut policy: impl FnMut() -> Box<dyn Policy>,
    ) -> MultiSim {
        assert!(workers > 0 && quantum_ns > 0);
        MultiSim {
            workers: (0..workers)
                .map(|_| Worker {
                    policy: policy(),
                    slots: FxHashMap::default(),
                    by_key: FxHashMap::default(),
                    running: None,
                })
                .collect(),
            quantum_ns,
            rules: Rules::default(),
            now: 0,
            start: 0,
            next_balance: 0,
            tops: Vec::new(),
            tasks: FxHashMap::default(),
            containers: Vec::new(),
            start_usage: FxHashMap::default(),
            entitled_ns: FxHashMap::default(),
            max_lag_ns: FxHashMap::default(),
            moves: 0,
            balances: 0,
            ent: None,
        }
    }

    /// Replaces the balancing thresholds.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    /// The top of the tree whose entitlements are integrated (the registry's root handle).
    pub fn set_top(&mut self, tops: Vec<Container>) {
        self.tops = tops;
    }

    /// Places `tasks` CPU-bound tasks of `container` on worker `worker`.
    pub fn add(&mut self, container: &Container, tasks: u32, worker: usize) {
        let queued = vec![self.now; tasks as usize];
        self.workers[worker].add(container, &queued, false);
        *self.tasks.entry(container.id()).or_default() += tasks;
        if !self.containers.iter().any(|c| c.id() == container.id()) {
            self.containers.push(container.clone());
        }
        self.ent = None;
    }

    /// The fake clock.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Tasks moved between workers so far.
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// Tasks of `container` on each worker.
    pub fn placement(&self, container: &Container) -> Vec<u32> {
        self.workers
            .iter()
            .map(|w| {
                w.slots
                    .get(&container.id())
                    .map_or(0, |s| s.queue.len() as u32)
            })
            .collect()
    }

    fn snapshots(&self) -> Vec<Snapshot> {
        self.tops.iter().map(|t| t.snapshot()).collect()
    }

    fn ancestors_of(&self, c: &Container) -> Vec<Container> {
        let mut out = Vec::new();
        let mut cur = Some(c.clone());
        while let Some(x) = cur {
            let pid = x.parent_id();
            out.push(x);
            cur = pid.and_then(|p| self.tops.iter().find_map(|t| t.descendant(p).ok()));
        }
        out
    }

    /// Runs for `duration_ns` of fake time.
    pub fn run_for(&mut self, duration_ns: u64) {
        if self.start_usage.is_empty() {
            self.start = self.now;
            for c in self.containers.clone() {
                for a in self.ancestors_of(&c) {
                    self.start_usage.insert(a.id(), a.usage_subtree().cpu_ns);
                }
            }
        }
        let end = self.now + duration_ns;
        let q = self.quantum_ns;
        while self.now < end {
            let now = self.now;
            if now >= self.next_balance {
                // A little jitter (deterministic), as a real worker's ticks have: balancing in
                // step with the workers' turns would always see the same ones waiting.
                self.balances += 1;
                let jitter = self.balances.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                self.next_balance = now + BALANCE_NS - q + jitter % (2 * q);
                self.balance();
                self.sample_lag();
            }
            for w in &mut self.workers {
                w.policy.refill(now);
                w.running = None;
                if let Some(p) = w.policy.pick() {
                    let len = p.slice_ns.map_or(q, |s| s.min(q)).max(1);
                    w.policy.charge(p.key, len);
                    let id = w.by_key[&p.key];
                    let s = w.slots.get_mut(&id).expect("picked");
                    let queued = s.queue.pop_front().unwrap_or(now);
                    s.waited = s.waited.max(now - queued);
                    s.queue.push_back(now + len);
                    w.running = Some(id);
                }
            }
            if self.ent.is_none() {
                let snaps = self.snapshots();
                self.ent = Some(entitlements_on(
                    &snaps,
                    &self.tasks,
                    self.workers.len() as f64,
                ));
            }
            for (id, e) in self.ent.as_ref().expect("computed") {
                *self.entitled_ns.entry(*id).or_default() += e * q as f64;
            }
            self.now = now + q;
        }
        for w in &mut self.workers {
            w.policy.flush();
        }
    }

    fn balance(&mut self) {
        let now = self.now;
        let mut offers: Vec<Vec<Offer>> = Vec::with_capacity(self.workers.len());
        let mut bests: Vec<Option<Standing>> = Vec::with_capacity(self.workers.len());
        for w in &mut self.workers {
            let mut list = Vec::new();
            for s in w.slots.values_mut() {
                // All of them: a runtime takes them at its next burst boundary, when the one
                // running now is back in the queue.
                let waiting = s.queue.len() as u32;
                let mut standing = Standing::default();
                if !w.policy.standing(s.key, &mut standing) {
                    continue;
                }
                list.push(Offer {
                    container: s.container.id(),
                    waiting,
                    waited_ns: std::mem::take(&mut s.waited)
                        .max(now.saturating_sub(s.queue.front().copied().unwrap_or(now))),
                    // CPU-bound tasks: queued since they came.
                    backlog_ns: now.saturating_sub(s.since),
                    standing,
                });
            }
            // A deterministic order (the map's is not).
            list.sort_by_key(|o| o.container);
            offers.push(list);
            w.policy.refill(now);
            let best = w.policy.pick().map(|p| {
                let mut s = Standing::default();
                w.policy.standing(p.key, &mut s);
                s
            });
            bests.push(best);
        }
        #[allow(clippy::needless_range_loop)] // `me` indexes three vectors and a worker
        for me in 0..self.workers.len() {
            let here = &self.workers[me].slots;
            let Some(take) = choose_except(me, bests[me].as_ref(), &offers, &self.rules, |id| {
                here.get(&id).is_some_and(|s| !s.queue.is_empty())
            }) else {
                continue;
            };
            let (c, queued) = self.workers[take.from].remove(take.container, take.tasks);
            self.workers[me].add(&c, &queued, true);
            self.moves += u64::from(take.tasks);
            if let Some(o) = offers[take.from]
                .iter_mut()
                .find(|o| o.container == take.container)
            {
                o.waiting -= take.tasks.min(o.waiting);
            }
            let w = &mut self.workers[me];
            w.policy.refill(now);
            bests[me] = w.policy.pick().map(|p| {
                let mut s = Standing::default();
                w.policy.standing(p.key, &mut s);
                s
            });
        }
    }

    fn sample_lag(&mut self) {
        if self.start_usage.is_empty() {
            return;
        }
        for w in &mut self.workers {
            w.policy.flush();
        }
        for c in &self.containers {
            let got =
                c.usage_subtree().cpu_ns - self.start_usage.get(&c.id()).copied().unwrap_or(0);
            let want = self.entitled_ns.get(&c.id()).copied().unwrap_or(0.0);
            let lag = (want - got as f64).abs();
            let m = self.max_lag_ns.entry(c.id()).or_default();
            *m = m.max(lag);
        }
    }

    fn elapsed_cpu(&self) -> f64 {
        (self.now - self.start) as f64 * self.workers.len() as f64
    }

    /// Fraction of all workers' time the container's subtree received since the first run.
    pub fn delivered(&self, c: &Container) -> f64 {
        let before = self.start_usage.get(&c.id()).copied().unwrap_or(0);
        (c.usage_subtree().cpu_ns - before) as f64 / self.elapsed_cpu()
    }

    /// Fraction of all workers' time the model entitled the container's subtree to.
    pub fn entitled(&self, c: &Container) -> f64 {
        self.entitled_ns.get(&c.id()).copied().unwrap_or(0.0) / self.elapsed_cpu()
    }

    /// The largest difference between what the container (one added with tasks) was entitled
    /// to so far and what it had received, over the balancing steps of the run, ns of CPU.
    pub fn max_lag_ns(&self, c: &Container) -> f64 {
        self.max_lag_ns.get(&c.id()).copied().unwrap_or(0.0)
    }
}
