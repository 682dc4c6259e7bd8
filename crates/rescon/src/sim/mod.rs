//! A deterministic simulator for policies: a fake clock, CPU-bound loads, and the entitlement
//! the model promises, so that a policy's accuracy is measured without a kernel or a timer.
//!
//! The simulator plays one CPU. Each step it refills the policy with the fake time, picks a
//! container, "runs" it for one quantum (shorter if the policy's slice or a load change says so)
//! and charges that time. Alongside, it integrates the entitlement of every container over the
//! periods in which the set of backlogged containers is constant, so a run ends with what each
//! container *should* have received beside what it did receive (from its usage).
//!
//! ```
//! use rescon::sim::{Load, Sim};
//! use rescon::sched::Hierarchical;
//! use rescon::{Attributes, Registry};
//! let registry = Registry::new();
//! let mut heavy = Attributes::default();
//! heavy.set("share", "weight:300").unwrap();
//! let a = registry.root().create_child("a", heavy).unwrap();
//! let b = registry.root().create_child("b", Attributes::default()).unwrap();
//! let mut sim = Sim::new(Box::new(Hierarchical::new(&registry)), 1_000_000);
//! sim.set_top(vec![registry.root()]);
//! sim.add(&a, Load::Backlogged);
//! sim.add(&b, Load::Backlogged);
//! sim.run_for(10_000_000_000);
//! assert!((sim.delivered(&a) - 0.75).abs() < 0.001);
//! assert!((sim.entitled(&a) - 0.75).abs() < 1e-9);
//! ```

mod multi;

pub use multi::MultiSim;

use crate::attr::{SchedClass, Share};
use crate::sched::{Key, Policy};
use crate::{Container, ContainerId, Snapshot};
use rustc_hash::{FxHashMap, FxHashSet};

/// What a simulated container wants to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// Always runnable.
    Backlogged,
    /// Runnable for `on_ns`, then idle for `off_ns`, repeating, shifted by `phase_ns`.
    OnOff {
        /// Runnable time per cycle.
        on_ns: u64,
        /// Idle time per cycle.
        off_ns: u64,
        /// Offset of the cycle.
        phase_ns: u64,
    },
    /// Never runnable.
    Idle,
}

impl Load {
    fn runnable_at(&self, t: u64) -> bool {
        match *self {
            Load::Backlogged => true,
            Load::Idle => false,
            Load::OnOff {
                on_ns,
                off_ns,
                phase_ns,
            } => (t + phase_ns) % (on_ns + off_ns) < on_ns,
        }
    }

    /// The next time after `t` at which runnability changes.
    fn next_change(&self, t: u64) -> u64 {
        match *self {
            Load::Backlogged | Load::Idle => u64::MAX,
            Load::OnOff {
                on_ns,
                off_ns,
                phase_ns,
            } => {
                let cycle = on_ns + off_ns;
                let at = (t + phase_ns) % cycle;
                if at < on_ns {
                    t + (on_ns - at)
                } else {
                    t + (cycle - at)
                }
            }
        }
    }
}

#[derive(Debug)]
struct Leaf {
    container: Container,
    key: Key,
    load: Load,
    runnable: bool,
}

/// One run of a policy on one simulated CPU.
#[derive(Debug)]
pub struct Sim {
    policy: Box<dyn Policy>,
    quantum_ns: u64,
    leaves: Vec<Leaf>,
    by_key: FxHashMap<Key, usize>,
    now: u64,
    start: u64,
    start_usage: FxHashMap<ContainerId, u64>,
    entitled_ns: FxHashMap<ContainerId, f64>,
    tops: Vec<Container>,
}

/// A run of a leaf: which leaf, when it started, how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Index of the leaf, in the order of [`Sim::add`].
    pub leaf: usize,
    /// The leaf's container.
    pub container: ContainerId,
    /// Start time (fake clock, ns).
    pub start_ns: u64,
    /// Length (ns).
    pub len_ns: u64,
}

impl Sim {
    /// A simulator driving `policy` with runs of at most `quantum_ns`.
    pub fn new(policy: Box<dyn Policy>, quantum_ns: u64) -> Sim {
        assert!(quantum_ns > 0, "the quantum must be positive");
        Sim {
            policy,
            quantum_ns,
            leaves: Vec::new(),
            by_key: FxHashMap::default(),
            now: 0,
            start: 0,
            start_usage: FxHashMap::default(),
            entitled_ns: FxHashMap::default(),
            tops: Vec::new(),
        }
    }

    /// Adds a container with a load; returns its leaf index. Delivered and entitled shares are
    /// reported for it and for all of its ancestors.
    pub fn add(&mut self, container: &Container, load: Load) -> usize {
        let key = self.policy.attach(container);
        assert!(!self.by_key.contains_key(&key), "one load per container");
        self.by_key.insert(key, self.leaves.len());
        self.leaves.push(Leaf {
            container: container.clone(),
            key,
            load,
            runnable: false,
        });
        self.leaves.len() - 1
    }

    /// Registers the top of the tree whose entitlements are integrated (by default the
    /// topmost ancestors of the added containers, which the simulator cannot reach from an
    /// unprivileged handle: pass the registry's root handle).
    pub fn set_top(&mut self, tops: Vec<Container>) {
        self.tops = tops;
    }

    /// The fake clock.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Runs for `duration_ns` of fake time.
    pub fn run_for(&mut self, duration_ns: u64) {
        self.run_traced(duration_ns, |_| {});
    }

    /// Runs for `duration_ns` of fake time, reporting every run.
    pub fn run_traced(&mut self, duration_ns: u64, mut on_run: impl FnMut(Run)) {
        if self.start_usage.is_empty() {
            self.start = self.now;
            for l in &self.leaves {
                let mut cur = Some(l.container.clone());
                while let Some(c) = cur {
                    self.start_usage.insert(c.id(), c.usage_subtree().cpu_ns);
                    cur = self.parent_of(&c);
                }
            }
        }
        let end = self.now + duration_ns;
        while self.now < end {
            let now = self.now;
            let mut next_change = end;
            let mut changed = false;
            for l in &mut self.leaves {
                let r = l.load.runnable_at(now);
                if r != l.runnable {
                    l.runnable = r;
                    self.policy.set_runnable(l.key, r);
                    changed = true;
                }
                next_change = next_change.min(l.load.next_change(now));
            }
            let _ = changed;
            self.policy.refill(now);
            let step_end;
            match self.policy.pick() {
                Some(p) => {
                    let mut len = self.quantum_ns.min(next_change - now);
                    if let Some(s) = p.slice_ns {
                        len = len.min(s);
                    }
                    let len = len.max(1);
                    self.policy.charge(p.key, len);
                    let leaf = self.by_key[&p.key];
                    on_run(Run {
                        leaf,
                        container: self.policy.container(p.key),
                        start_ns: now,
                        len_ns: len,
                    });
                    step_end = now + len;
                }
                None => {
                    let wake = self.policy.next_refill().unwrap_or(u64::MAX);
                    step_end = next_change.min(wake).max(now + 1);
                }
            }
            self.integrate(now, step_end.min(end));
            self.now = step_end;
        }
        self.policy.flush();
    }

    fn parent_of(&self, c: &Container) -> Option<Container> {
        let pid = c.parent_id()?;
        self.tops.iter().find_map(|t| t.descendant(pid).ok())
    }

    /// Adds the entitlement of the interval `[from, to)` (constant backlogged set).
    fn integrate(&mut self, from: u64, to: u64) {
        if to <= from || self.tops.is_empty() {
            return;
        }
        let backlogged: FxHashSet<ContainerId> = self
            .leaves
            .iter()
            .filter(|l| l.runnable)
            .map(|l| l.container.id())
            .collect();
        let snaps: Vec<Snapshot> = self.tops.iter().map(|t| t.snapshot()).collect();
        let ent = entitlements(&snaps, &backlogged);
        let dt = (to - from) as f64;
        for (id, e) in ent {
            *self.entitled_ns.entry(id).or_default() += e * dt;
        }
    }

    fn elapsed(&self) -> f64 {
        (self.now - self.start) as f64
    }

    /// Fraction of the simulated CPU the container's subtree received since the first run.
    pub fn delivered(&self, c: &Container) -> f64 {
        let before = self.start_usage.get(&c.id()).copied().unwrap_or(0);
        (c.usage_subtree().cpu_ns - before) as f64 / self.elapsed()
    }

    /// Fraction of the CPU the model entitled the container's subtree to, integrated over the
    /// run. Needs [`set_top`](Sim::set_top).
    pub fn entitled(&self, c: &Container) -> f64 {
        self.entitled_ns.get(&c.id()).copied().unwrap_or(0.0) / self.elapsed()
    }
}

/// The share of one CPU each container is entitled to when the containers in `backlogged` are
/// continuously runnable and all others idle, following the model of
/// [`Share`]: strict classes, fixed shares as minimums, the rest to weighted
/// siblings, priority 0 never, CPU caps.
///
/// `tops` are the top-level containers (siblings at the top). Caps are exact when at most one
/// sibling of a class is held back by its cap; with several, the result is an approximation.
pub fn entitlements(
    tops: &[Snapshot],
    backlogged: &FxHashSet<ContainerId>,
) -> FxHashMap<ContainerId, f64> {
    let mut out = FxHashMap::default();
    let members: Vec<Member<'_>> = tops.iter().map(Member::Node).collect();
    let limit = |m: Member<'_>| Limits {
        cap: params(m).3,
        par: None,
    };
    distribute(&members, 1.0, backlogged, &mut out, &limit);
    out
}

/// The CPU, in cores, each container is entitled to on `cores` CPUs when the containers in
/// `tasks` have that many tasks runnable and all others are idle: the model of
/// [`entitlements`], water-filled by parallelism. A container cannot use more cores than it
/// has runnable tasks in its subtree (one task runs on one core at a time); what it cannot
/// use goes to its siblings as what a CPU cap leaves does.
///
/// ```
/// use rescon::sim::entitlements_on;
/// use rescon::Attributes;
/// let registry = rescon::Registry::new();
/// let root = registry.root();
/// let mut heavy = Attributes::default();
/// heavy.set("share", "weight:400").unwrap();
/// let a = root.create_child("a", heavy).unwrap();
/// let b = root.create_child("b", Attributes::default()).unwrap();
/// // a would have 4/5 of two cores, but it has one task: one core, and b the other.
/// let tasks = [(a.id(), 1), (b.id(), 8)].into_iter().collect();
/// let e = entitlements_on(&[root.snapshot()], &tasks, 2.0);
/// assert!((e[&a.id()] - 1.0).abs() < 1e-9 && (e[&b.id()] - 1.0).abs() < 1e-9);
/// ```
pub fn entitlements_on(
    tops: &[Snapshot],
    tasks: &FxHashMap<ContainerId, u32>,
    cores: f64,
) -> FxHashMap<ContainerId, f64> {
    fn subtree(s: &Snapshot, tasks: &FxHashMap<ContainerId, u32>) -> f64 {
        tasks.get(&s.id).copied().unwrap_or(0) as f64
            + s.children.iter().map(|c| subtree(c, tasks)).sum::<f64>()
    }
    let backlogged: FxHashSet<ContainerId> = tasks
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(id, _)| *id)
        .collect();
    let limit = |m: Member<'_>| Limits {
        cap: params(m).3,
        par: Some(match m {
            Member::Node(s) => subtree(s, tasks),
            Member::Own(s) => tasks.get(&s.id).copied().unwrap_or(0) as f64,
        }),
    };
    let mut out = FxHashMap::default();
    let members: Vec<Member<'_>> = tops.iter().map(Member::Node).collect();
    distribute(&members, cores, &backlogged, &mut out, &limit);
    out
}

#[derive(Clone, Copy)]
enum Member<'a> {
    Node(&'a Snapshot),
    /// Work bound directly to a container (this one) that also has children.
    Own(&'a Snapshot),
}

fn active(s: &Snapshot, backlogged: &FxHashSet<ContainerId>) -> bool {
    !s.attrs.priority.is_black_hole()
        && (backlogged.contains(&s.id) || s.children.iter().any(|c| active(c, backlogged)))
}

/// (class, fixed fraction or 0, effective weight or 0, cap as a fraction of one CPU)
fn params(m: Member<'_>) -> (u8, f64, f64, Option<f64>) {
    match m {
        Member::Own(_) => (SchedClass::NORMAL.get(), 0.0, 100.0, None),
        Member::Node(s) => {
            let cap = s.attrs.cpu_limit.map(|c| c.fraction());
            match s.attrs.share {
                Share::Fixed(f) => (s.attrs.class.get(), f.get(), 0.0, cap),
                Share::Weight(w) => (
                    s.attrs.class.get(),
                    0.0,
                    w.get() as f64 * s.attrs.priority.get() as f64 / 100.0,
                    cap,
                ),
            }
        }
    }
}

/// Fractions of the parent's time for the active members `set` of one class (no caps).
fn proportional(ms: &[Member<'_>], set: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; ms.len()];
    let fixed_sum: f64 = set.iter().map(|&i| params(ms[i]).1).sum();
    let weight_sum: f64 = set.iter().map(|&i| params(ms[i]).2).sum();
    for &i in set {
        let (_, f, w, _) = params(ms[i]);
        out[i] = if weight_sum > 0.0 {
            if f > 0.0 {
                f
            } else {
                (1.0 - fixed_sum).max(0.0) * w / weight_sum
            }
        } else {
            f / fixed_sum
        };
    }
    out
}

/// Like [`proportional`], with caps: a member whose share exceeds its cap is active only for
/// the fraction of time that gives it exactly its cap, and its siblings divide the rest as they
/// do when it is idle.
///
/// Parallelism limits apply first, at every instant: a member with fewer runnable tasks than
/// its share of cores uses what it can, and the others divide the rest in the proportions
/// they had (water-filling).
fn capped(ms: &[Member<'_>], set: &[usize], total: f64, limit: &LimitFn<'_>) -> Vec<f64> {
    let with = waterfill(ms, proportional(ms, set), set, total, limit);
    let over = set
        .iter()
        .copied()
        .filter_map(|i| {
            let cap = limit(ms[i]).cap?;
            (with[i] * total > cap + 1e-12).then(|| (i, cap / (with[i] * total)))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let Some((k, t)) = over else { return with };
    let rest: Vec<usize> = set.iter().copied().filter(|&i| i != k).collect();
    let without = if rest.is_empty() {
        vec![0.0; ms.len()]
    } else {
        capped(ms, &rest, total, limit)
    };
    (0..ms.len())
        .map(|i| t * with[i] + (1.0 - t) * without[i])
        .collect()
}

/// What holds a member back: a CPU cap (cores over the cap's period) and its parallelism
/// (cores at any instant).
#[derive(Clone, Copy, Default)]
struct Limits {
    cap: Option<f64>,
    par: Option<f64>,
}

type LimitFn<'a> = dyn Fn(Member<'_>) -> Limits + 'a;

/// Fractions `p` of `total` (for the members `set`) with parallelism limits applied, as
/// the policy divides: the fixed members and the pool of the weighted ones first (the pool as
/// one member, able to use as many cores as its members together), then the pool's part among
/// its members.
fn waterfill(
    ms: &[Member<'_>],
    p: Vec<f64>,
    set: &[usize],
    total: f64,
    limit: &LimitFn<'_>,
) -> Vec<f64> {
    if total <= 0.0 {
        return p;
    }
    let par = |i: usize| limit(ms[i]).par;
    let (fixed, pooled): (Vec<usize>, Vec<usize>) =
        set.iter().copied().partition(|&i| params(ms[i]).1 > 0.0);
    let mut out = p.clone();
    if fixed.is_empty() || pooled.is_empty() {
        let got = fill(
            &set.iter().map(|&i| p[i]).collect::<Vec<_>>(),
            &set.iter().map(|&i| par(i)).collect::<Vec<_>>(),
            total,
        );
        for (k, &i) in set.iter().enumerate() {
            out[i] = got[k];
        }
        return out;
    }
    let pool_base: f64 = pooled.iter().map(|&i| p[i]).sum();
    let pool_par: Option<f64> = pooled.iter().map(|&i| par(i)).sum();
    let mut bases: Vec<f64> = fixed.iter().map(|&i| p[i]).collect();
    let mut pars: Vec<Option<f64>> = fixed.iter().map(|&i| par(i)).collect();
    bases.push(pool_base);
    pars.push(pool_par);
    let got = fill(&bases, &pars, total);
    for (k, &i) in fixed.iter().enumerate() {
        out[i] = got[k];
    }
    let pool = got[fixed.len()];
    let inner = fill(
        &pooled.iter().map(|&i| p[i]).collect::<Vec<_>>(),
        &pooled.iter().map(|&i| par(i)).collect::<Vec<_>>(),
        pool * total,
    );
    for (k, &i) in pooled.iter().enumerate() {
        out[i] = inner[k] * pool;
    }
    out
}

/// Divides `total` cores by `bases` (in proportion), no member above its `pars` (cores):
/// what a member cannot use goes to the others in their proportions. Returns fractions of
/// `total`.
fn fill(bases: &[f64], pars: &[Option<f64>], total: f64) -> Vec<f64> {
    let mut out = vec![0.0; bases.len()];
    if total <= 0.0 {
        return out;
    }
    let mut held = vec![false; bases.len()];
    loop {
        let used: f64 = (0..bases.len()).filter(|&k| held[k]).map(|k| out[k]).sum();
        let weight: f64 = (0..bases.len())
            .filter(|&k| !held[k])
            .map(|k| bases[k])
            .sum();
        if weight <= 0.0 {
            return out;
        }
        let mut more = false;
        for k in 0..bases.len() {
            if held[k] {
                continue;
            }
            out[k] = (1.0 - used).max(0.0) * bases[k] / weight;
            if let Some(par) = pars[k]
                && out[k] * total > par + 1e-12
            {
                out[k] = par / total;
                held[k] = true;
                more = true;
            }
        }
        if !more {
            return out;
        }
    }
}

fn distribute(
    ms: &[Member<'_>],
    total: f64,
    backlogged: &FxHashSet<ContainerId>,
    out: &mut FxHashMap<ContainerId, f64>,
    limit: &LimitFn<'_>,
) {
    let is_active = |m: &Member<'_>| match m {
        Member::Own(_) => true,
        Member::Node(s) => active(s, backlogged),
    };
    // Classes from the highest down: each takes what the classes above leave (all of it,
    // unless every member above is held back by a cap or by its parallelism).
    let mut classes: Vec<u8> = ms
        .iter()
        .filter(|m| is_active(m))
        .map(|m| params(*m).0)
        .collect();
    classes.sort_unstable_by(|a, b| b.cmp(a));
    classes.dedup();
    let mut shares = vec![0.0; ms.len()];
    let mut left = 1.0;
    for class in classes {
        if left <= 1e-12 {
            break;
        }
        let set: Vec<usize> = (0..ms.len())
            .filter(|&i| is_active(&ms[i]) && params(ms[i]).0 == class)
            .collect();
        let part = capped(ms, &set, total * left, limit);
        let used: f64 = set.iter().map(|&i| part[i]).sum();
        for &i in &set {
            shares[i] = part[i] * left;
        }
        left -= used.min(1.0) * left;
    }
    for (i, m) in ms.iter().enumerate() {
        let Member::Node(s) = m else { continue };
        let mut mine = shares[i] * total;
        let l = limit(*m);
        for x in [l.cap, l.par].into_iter().flatten() {
            mine = mine.min(x);
        }
        out.insert(s.id, mine);
        let mut kids: Vec<Member<'_>> = s.children.iter().map(Member::Node).collect();
        if backlogged.contains(&s.id) && !kids.is_empty() {
            kids.push(Member::Own(s));
        }
        if kids.is_empty() {
            continue;
        }
        distribute(&kids, mine, backlogged, out, limit);
    }
}

/// A named scenario: a tree, its loads, and which containers to report.
#[derive(Debug)]
pub struct Scenario {
    /// Short name.
    pub name: &'static str,
    /// What it shows.
    pub description: &'static str,
    /// The containers reported, with their loads (containers without a load are interior).
    pub containers: Vec<(Container, Option<Load>)>,
    /// The registry's root.
    pub root: Container,
}

/// The result of one container in a scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Container name.
    pub name: String,
    /// Entitled fraction of the CPU.
    pub entitled: f64,
    /// Delivered fraction of the CPU.
    pub delivered: f64,
}

impl Scenario {
    /// Runs the scenario on `policy` for `duration_ns` with `quantum_ns` runs.
    pub fn run(&self, policy: Box<dyn Policy>, duration_ns: u64, quantum_ns: u64) -> Vec<Outcome> {
        let mut sim = Sim::new(policy, quantum_ns);
        sim.set_top(vec![self.root.clone()]);
        for (c, load) in &self.containers {
            if let Some(load) = load {
                sim.add(c, *load);
            }
        }
        sim.run_for(duration_ns);
        self.containers
            .iter()
            .map(|(c, _)| Outcome {
                name: c.name().to_string(),
                entitled: sim.entitled(c),
                delivered: sim.delivered(c),
            })
            .collect()
    }
}

/// The standard scenarios: the two RCLinux experiments, strict classes, a cap, priority 0,
/// an intermittent container that must not hoard credit, and the paper's virtual servers.
/// Each call builds fresh containers in `registry`.
pub fn scenarios(registry: &crate::Registry) -> Vec<Scenario> {
    use crate::Attributes;
    let attrs = |pairs: &[(&str, &str)]| {
        let mut a = Attributes::default();
        for (k, v) in pairs {
            a.set(k, v).expect("scenario attribute");
        }
        a
    };
    let root = registry.root();
    let mut out = Vec::new();
    let group = |name: &str| {
        root.create_child(name, Attributes::default())
            .expect("group")
    };

    let g = group("rclinux-fixed");
    out.push(Scenario {
        name: "rclinux-fixed-16-32-48",
        description: "fixed shares 16%, 32%, 48% all busy: the 4% left goes to them in proportion (RCLinux delivered 14.3/28.6/42.9)",
        containers: ["16", "32", "48"]
            .iter()
            .map(|p| (g.create_child(&format!("fixed-{p}"), attrs(&[("share", &format!("{p}%"))])).unwrap(), Some(Load::Backlogged)))
            .collect(),
        root: root.clone(),
    });

    let g = group("rclinux-mixed");
    let mut cs: Vec<(Container, Option<Load>)> = [("a", "48%"), ("b", "16%"), ("c", "16%")]
        .iter()
        .map(|(n, p)| {
            (
                g.create_child(&format!("fixed-{n}-{p}"), attrs(&[("share", p)]))
                    .unwrap(),
                Some(Load::Backlogged),
            )
        })
        .collect();
    cs.push((
        g.create_child("weighted", attrs(&[("share", "weight:100")]))
            .unwrap(),
        Some(Load::Backlogged),
    ));
    out.push(Scenario {
        name: "rclinux-fixed-48-16-16-weighted",
        description: "fixed 48/16/16 and one weighted sibling: the weighted one gets the 20% left (RCLinux delivered 54.2/20.9/20.9/8.7)",
        containers: cs,
        root: root.clone(),
    });

    let g = group("classes");
    out.push(Scenario {
        name: "strict-classes",
        description: "a high-class container runnable 40% of the time always runs when runnable; two normal ones split the rest 2:1",
        containers: vec![
            (
                g.create_child("high", attrs(&[("class", "high")])).unwrap(),
                Some(Load::OnOff { on_ns: 20_000_000, off_ns: 30_000_000, phase_ns: 0 }),
            ),
            (g.create_child("normal-w200", attrs(&[("share", "weight:200")])).unwrap(), Some(Load::Backlogged)),
            (g.create_child("normal-w100", attrs(&[("share", "weight:100")])).unwrap(), Some(Load::Backlogged)),
        ],
        root: root.clone(),
    });

    let g = group("cap");
    out.push(Scenario {
        name: "cpu-cap-30",
        description: "two equal weights, one capped at 30% of a CPU: it gets 30%, the other the rest",
        containers: vec![
            (g.create_child("capped-30", attrs(&[("cpu_limit", "30%")])).unwrap(), Some(Load::Backlogged)),
            (g.create_child("uncapped", Attributes::default()).unwrap(), Some(Load::Backlogged)),
        ],
        root: root.clone(),
    });

    let g = group("black-hole");
    out.push(Scenario {
        name: "priority-zero",
        description: "a backlogged container with priority 0 never runs; its siblings split the CPU 1:3",
        containers: vec![
            (g.create_child("priority-0", attrs(&[("priority", "0")])).unwrap(), Some(Load::Backlogged)),
            (g.create_child("w100", attrs(&[("share", "weight:100")])).unwrap(), Some(Load::Backlogged)),
            (g.create_child("w300", attrs(&[("share", "weight:300")])).unwrap(), Some(Load::Backlogged)),
        ],
        root: root.clone(),
    });

    let g = group("no-hoarding");
    out.push(Scenario {
        name: "idle-return",
        description: "equal weights, one runnable half the time: it gets half the CPU while runnable and no credit for idling",
        containers: vec![
            (
                g.create_child("intermittent", Attributes::default()).unwrap(),
                Some(Load::OnOff { on_ns: 50_000_000, off_ns: 50_000_000, phase_ns: 0 }),
            ),
            (g.create_child("steady", Attributes::default()).unwrap(), Some(Load::Backlogged)),
        ],
        root: root.clone(),
    });

    let g = group("virtual-servers");
    let mut cs = Vec::new();
    for (name, share) in [("vhost-a", "50%"), ("vhost-b", "30%"), ("vhost-c", "20%")] {
        let v = g.create_child(name, attrs(&[("share", share)])).unwrap();
        let stat = v
            .create_child(&format!("{name}-static"), attrs(&[("share", "weight:300")]))
            .unwrap();
        let cgi = v
            .create_child(
                &format!("{name}-cgi"),
                attrs(&[("share", "weight:100"), ("cpu_limit", "10%")]),
            )
            .unwrap();
        cs.push((v, None));
        cs.push((stat, Some(Load::Backlogged)));
        cs.push((cgi, Some(Load::Backlogged)));
    }
    out.push(Scenario {
        name: "virtual-servers-50-30-20",
        description: "three virtual hosts with fixed shares 50/30/20, each with a static class (weight 300) and a CGI class (weight 100, capped at 10%)",
        containers: cs,
        root: root.clone(),
    });
    out
}
