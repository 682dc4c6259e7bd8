//! Moving work between the workers of a runtime: which waiting work a worker should take from
//! another. Pure: the runtime says what waits where and what each worker would run, this
//! module says what moves.
//!
//! Each worker [offers](Offer) the containers that have tasks waiting on it (queued, not
//! running), with where each stands in its policy's order ([`Standing`]). A worker looking
//! for work ([`choose`]) takes some of the waiting tasks of a container offered elsewhere
//! when
//!
//! - it has nothing to run, the offering worker has more than one task, and the container has
//!   had tasks queued there without a break for at least [`Rules::idle_wait_ns`] (a
//!   container whose queue empties now and then is served where it is, and moving its work
//!   would cost its locality: a connection's task whose socket is registered with the other
//!   worker's epoll); or
//! - the work beats what it would run ([`Standing::beats`]): a higher class where the paths
//!   part, or a virtual time behind by more than [`Rules::slack_ns`] of running; and it has
//!   waited at least [`Rules::min_wait_ns`] (a container whose tasks all run, or whose one
//!   task just ran, gains nothing from moving: it may be behind in virtual time because it
//!   cannot use more CPU, not because it is kept from it).
//!
//! Among the work that qualifies it takes the highest class, then the container with the
//! most tasks waiting on one worker (so that a container's tasks spread evenly), then what has
//! waited longest;
//! half of its waiting tasks (at least one), so that a container with many tasks spreads over
//! the workers and a container with one moves whole. It leaves the offering worker one task of
//! the container unless the container [may leave](Standing::may_leave): taking it all must not
//! leave that worker running lower-class work while the container's task waits elsewhere. This is the rule of distributed weighted
//! round robin (Li, Baumberger and Hahn, PPoPP 2009) in virtual time: no worker runs work that
//! is more than the slack ahead of work waiting elsewhere, so the error of every container's
//! share is bounded by a constant, not by the number of workers.

use super::global::Standing;
use crate::ContainerId;

/// Work waiting on a worker, as that worker offers it to the others.
#[derive(Clone, Debug, PartialEq)]
pub struct Offer {
    /// The container whose tasks wait.
    pub container: ContainerId,
    /// How many of its tasks wait there (queued, not running).
    pub waiting: u32,
    /// How long its tasks have waited there: the longest wait of those that ran since the
    /// last offer, or the wait so far of the oldest still waiting, whichever is longer (ns).
    pub waited_ns: u64,
    /// How long it has had tasks queued there without a break (ns).
    pub backlog_ns: u64,
    /// Where the container stands in the offering worker's policy (empty if the policy has no
    /// order that holds across workers: then only an idle worker takes it).
    pub standing: Standing,
}

/// The thresholds of [`choose`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Work behind by more than this much running (ns) moves to a worker that runs the work it
    /// is behind.
    pub slack_ns: u64,
    /// Work backlogged this long (ns) moves to a worker with nothing to run.
    pub idle_wait_ns: u64,
    /// Work that beats what a worker runs moves only if it has waited this long (ns).
    pub min_wait_ns: u64,
}

/// How often a runtime's workers offer their waiting work and look at the others' (ns).
pub const BALANCE_NS: u64 = 1_000_000;

impl Default for Rules {
    fn default() -> Self {
        Rules {
            slack_ns: 2_000_000,
            idle_wait_ns: 2_000_000,
            min_wait_ns: 100_000,
        }
    }
}

/// What a worker decided to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Take {
    /// The worker it takes from.
    pub from: usize,
    /// The container whose waiting tasks it takes.
    pub container: ContainerId,
    /// How many of them.
    pub tasks: u32,
}

/// Chooses work for worker `me`, whose best work stands at `mine` (`None`: it has nothing
/// to run), among the offers of every worker (`offers[w]` is worker `w`'s; its own are
/// skipped). See the [module docs](self).
///
/// ```
/// use rescon::sched::balance::{choose, Offer, Rules};
/// use rescon::sched::Standing;
/// let registry = rescon::Registry::new();
/// let c = registry.root().create_child("c", Default::default()).unwrap();
/// let offer = |backlog_ns| Offer {
///     container: c.id(), waiting: 4, waited_ns: 0, backlog_ns, standing: Standing::default(),
/// };
/// let rules = Rules { slack_ns: 2_000_000, idle_wait_ns: 500_000, min_wait_ns: 100_000 };
/// // An idle worker takes half of what has waited long enough on worker 1.
/// let take = choose(0, None, &[vec![], vec![offer(800_000)]], &rules).unwrap();
/// assert_eq!((take.from, take.tasks), (1, 2));
/// // Not what has been queued there only briefly.
/// assert!(choose(0, None, &[vec![], vec![offer(100_000)]], &rules).is_none());
/// ```
pub fn choose(
    me: usize,
    mine: Option<&Standing>,
    offers: &[Vec<Offer>],
    rules: &Rules,
) -> Option<Take> {
    choose_except(me, mine, offers, rules, |_| false)
}

/// [`choose`], where `here` says which containers have runnable work on worker `me` already:
/// a busy worker takes none of theirs. It can serve such a container itself, as much as its
/// policy says; more of its tasks would add no parallelism, only moves (measured on real
/// runtimes: with every container's tasks spread evenly, a worker that the kernel kept off
/// its CPU for a slice had its waiting tasks taken by the other, which then had two of a
/// container's tasks and the first none, and back, hundreds of moves a second, each costing
/// the container a worker for a while).
pub fn choose_except(
    me: usize,
    mine: Option<&Standing>,
    offers: &[Vec<Offer>],
    rules: &Rules,
    here: impl Fn(ContainerId) -> bool,
) -> Option<Take> {
    /// (class key, tasks waiting, waited), higher is better.
    type Rank = (u32, u32, u64);
    let mut best: Option<(Rank, usize, &Offer, u32)> = None;
    for (w, list) in offers.iter().enumerate() {
        if w == me {
            continue;
        }
        let total: u32 = list.iter().map(|o| o.waiting).sum();
        for o in list {
            let key = o.standing.class_key();
            let mut tasks = o.waiting.div_ceil(2);
            if tasks == o.waiting {
                let rest: Vec<&Standing> = list
                    .iter()
                    .filter(|p| p.container != o.container)
                    .map(|p| &p.standing)
                    .collect();
                if !o.standing.may_leave(&rest) {
                    tasks -= 1;
                }
            }
            if tasks == 0 || (mine.is_some() && here(o.container)) {
                continue;
            }
            let qualifies = match mine {
                None => o.backlog_ns >= rules.idle_wait_ns && tasks < total,
                Some(m) => {
                    o.waited_ns >= rules.min_wait_ns
                        && !o.standing.levels.is_empty()
                        && o.standing.beats(Some(m), rules.slack_ns)
                }
            };
            if !qualifies {
                continue;
            }
            let rank = (key, o.waiting, o.waited_ns);
            if best.is_none_or(|(r, ..)| rank > r) {
                best = Some((rank, w, o, tasks));
            }
        }
    }
    best.map(|(_, from, o, tasks)| Take {
        from,
        container: o.container,
        tasks,
    })
}
