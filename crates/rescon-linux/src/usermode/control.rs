//! The controller of user-mode capping: pure, no I/O and no clock. Given the time and each
//! target's CPU so far, it says which targets to stop and continue, and when to look again.
//!
//! Every capped container is a token bucket in CPU nanoseconds, as the model's
//! [`CpuLimit`] says: it refills at `fraction` nanoseconds per nanosecond of wall time up to
//! one period's budget plus the burst, and every nanosecond a target under it runs is taken
//! from it. A target runs while every bucket above it (its container's and its ancestors')
//! holds a non-negative amount; it is stopped when one goes negative, and continued when all
//! are repaid. What a target runs between two looks (a tick, or the time to repayment) is a
//! debt paid from the following periods, so over any run of periods the CPU given is the
//! limit's, within one tick's worth (times the target's threads) plus the burst.

use rescon::{ContainerId, CpuLimit};
use std::collections::BTreeMap;
use std::time::Duration;

/// The id of a capped target (a process group or process tree), chosen by the caller.
pub type TargetId = u64;

/// What to do to a target's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop them (`SIGSTOP`).
    Stop,
    /// Continue them (`SIGCONT`).
    Continue,
}

/// The outcome of one [`Controller::step`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Targets whose state changes, in id order.
    pub actions: Vec<(TargetId, Action)>,
    /// Nanoseconds each target spent stopped since the previous step (for the containers'
    /// `throttled_ns`), for targets that were stopped.
    pub throttled: Vec<(TargetId, u64)>,
    /// When to step again (the tick when anything runs, the earliest repayment when all is
    /// stopped), or `None` with no target.
    pub next_ns: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    limit: CpuLimit,
    tokens: f64,
    last_ns: u64,
}

impl Bucket {
    fn cap(&self) -> f64 {
        (self.limit.budget_ns() + self.limit.burst().as_nanos() as u64) as f64
    }

    /// Adds what the time since the last refill earned, without the cap: the CPU used over
    /// the same time is taken next, and only then is the cap applied ([`Bucket::clip`]).
    /// Usage seen only at the ends of an interval is taken as spread over it, so the content
    /// moves in a straight line, and clipping the end is what clipping along the way gives.
    fn refill(&mut self, now: u64) {
        let dt = now.saturating_sub(self.last_ns) as f64;
        self.tokens += dt * self.limit.fraction();
        self.last_ns = self.last_ns.max(now);
    }

    fn clip(&mut self) {
        self.tokens = self.tokens.min(self.cap());
    }
}

#[derive(Clone, Debug, Default)]
struct Target {
    caps: Vec<ContainerId>,
    last_cpu: Option<u64>,
    stopped: bool,
}

/// Holds targets to the CPU limits of their containers (see the [module docs](self)).
///
/// ```
/// use rescon::{ContainerId, CpuLimit};
/// use rescon_linux::usermode::control::{Action, Controller};
/// use std::time::Duration;
///
/// let mut ctl = Controller::new(Duration::from_millis(10));
/// let cgi = ContainerId::from_raw(7).unwrap();
/// ctl.set_caps(1, &[(cgi, CpuLimit::new(0.3).unwrap())], 0);
/// // A process that has used 50 ms of CPU in 50 ms is over 30% of 100 ms plus what 50 ms
/// // refilled: it is stopped, until the debt is repaid.
/// let s = ctl.step(0, &[(1, 0)]);
/// assert!(s.actions.is_empty());
/// let s = ctl.step(50_000_000, &[(1, 50_000_000)]);
/// assert_eq!(s.actions, vec![(1, Action::Stop)]);
/// assert!(s.next_ns.unwrap() > 50_000_000);
/// ```
#[derive(Clone, Debug)]
pub struct Controller {
    tick_ns: u64,
    buckets: BTreeMap<ContainerId, Bucket>,
    targets: BTreeMap<TargetId, Target>,
    last_step: Option<u64>,
}

/// The shortest wait between two steps.
const MIN_WAIT_NS: u64 = 1_000_000;

impl Controller {
    /// A controller that looks at running targets every `tick` (at least a millisecond).
    pub fn new(tick: Duration) -> Controller {
        Controller {
            tick_ns: (tick.as_nanos() as u64).max(MIN_WAIT_NS),
            buckets: BTreeMap::new(),
            targets: BTreeMap::new(),
            last_step: None,
        }
    }

    /// Adds a target (running), or updates the caps it is under: the CPU limits of its
    /// container and of its ancestors, as `(container, limit)`. A bucket starts full (one
    /// period's budget); a limit that changed keeps the bucket's content, cut to the new cap.
    /// Buckets no target uses any more are dropped.
    pub fn set_caps(&mut self, t: TargetId, caps: &[(ContainerId, CpuLimit)], now: u64) {
        for (id, limit) in caps {
            match self.buckets.get_mut(id) {
                Some(b) => {
                    if b.limit != *limit {
                        b.limit = *limit;
                        b.clip();
                    }
                }
                None => {
                    self.buckets.insert(
                        *id,
                        Bucket {
                            limit: *limit,
                            tokens: limit.budget_ns() as f64,
                            last_ns: now,
                        },
                    );
                }
            }
        }
        let ids: Vec<ContainerId> = caps.iter().map(|(id, _)| *id).collect();
        let target = self.targets.entry(t).or_default();
        if target.caps != ids {
            target.caps = ids;
            self.gc();
        }
    }

    fn gc(&mut self) {
        let used: std::collections::BTreeSet<ContainerId> = self
            .targets
            .values()
            .flat_map(|t| t.caps.iter().copied())
            .collect();
        self.buckets.retain(|id, _| used.contains(id));
    }

    /// Forgets a target. Returns [`Action::Continue`] if it was stopped: its processes must
    /// not stay stopped.
    pub fn remove(&mut self, t: TargetId) -> Option<Action> {
        let target = self.targets.remove(&t)?;
        self.gc();
        target.stopped.then_some(Action::Continue)
    }

    /// Whether a target is stopped now.
    pub fn is_stopped(&self, t: TargetId) -> bool {
        self.targets.get(&t).is_some_and(|t| t.stopped)
    }

    /// The tokens left in a container's bucket now (negative: a debt), for reports.
    pub fn tokens_ns(&self, c: ContainerId) -> Option<f64> {
        self.buckets.get(&c).map(|b| b.tokens)
    }

    /// One look: `now` (monotonic nanoseconds, never going back) and each target's CPU so far
    /// (nanoseconds, any origin: only growth counts; a target's first sample only sets it).
    /// Targets without a sample are charged nothing.
    pub fn step(&mut self, now: u64, samples: &[(TargetId, u64)]) -> Step {
        let since = self.last_step.map_or(0, |l| now.saturating_sub(l));
        self.last_step = Some(now);
        for b in self.buckets.values_mut() {
            b.refill(now);
        }
        for (t, cpu) in samples {
            let Some(target) = self.targets.get_mut(t) else {
                continue;
            };
            let used = target.last_cpu.map_or(0, |last| cpu.saturating_sub(last));
            target.last_cpu = Some(target.last_cpu.map_or(*cpu, |last| last.max(*cpu)));
            for c in &target.caps {
                if let Some(b) = self.buckets.get_mut(c) {
                    b.tokens -= used as f64;
                }
            }
        }
        for b in self.buckets.values_mut() {
            b.clip();
        }
        let mut step = Step::default();
        let mut next: Option<u64> = None;
        for (id, target) in self.targets.iter_mut() {
            if target.stopped && since > 0 {
                step.throttled.push((*id, since));
            }
            // The time until every bucket over the target is repaid (0: none owes).
            let mut repaid_in = 0u64;
            for c in &target.caps {
                if let Some(b) = self.buckets.get(c) {
                    if b.tokens < 0.0 {
                        let ns = (-b.tokens / b.limit.fraction()).ceil() as u64;
                        repaid_in = repaid_in.max(ns.max(1));
                    }
                }
            }
            let blocked = repaid_in > 0;
            if blocked != target.stopped {
                target.stopped = blocked;
                step.actions.push((
                    *id,
                    if blocked {
                        Action::Stop
                    } else {
                        Action::Continue
                    },
                ));
            }
            let at = if blocked {
                now + repaid_in.max(MIN_WAIT_NS)
            } else {
                now + self.tick_ns
            };
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        step.next_ns = next;
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn id(n: u64) -> ContainerId {
        ContainerId::from_raw(n).unwrap()
    }

    fn limit(f: f64) -> CpuLimit {
        CpuLimit::new(f).unwrap()
    }

    /// Processes under the controller: each target runs `threads` CPUs' worth while
    /// continued and nothing while stopped; its CPU is reported rounded down to `quantum` (as
    /// /proc's clock ticks are).
    struct Sim {
        targets: Vec<(TargetId, f64)>,
        cpu: Vec<f64>,
        running: Vec<bool>,
        now: u64,
        quantum: u64,
    }

    impl Sim {
        fn new(targets: &[(TargetId, f64)], quantum: u64) -> Sim {
            Sim {
                targets: targets.to_vec(),
                cpu: vec![0.0; targets.len()],
                running: vec![true; targets.len()],
                now: 0,
                quantum,
            }
        }

        /// Runs `secs` more seconds; returns each target's CPU over them.
        fn run(&mut self, ctl: &mut Controller, secs: u64) -> Vec<u64> {
            let before = self.cpu.clone();
            let end = self.now + secs * 1000 * MS;
            while self.now < end {
                let samples: Vec<(TargetId, u64)> = self
                    .targets
                    .iter()
                    .zip(&self.cpu)
                    .map(|((t, _), c)| (*t, (*c as u64) / self.quantum * self.quantum))
                    .collect();
                let s = ctl.step(self.now, &samples);
                for (t, a) in s.actions {
                    let i = self.targets.iter().position(|(x, _)| *x == t).unwrap();
                    self.running[i] = a == Action::Continue;
                }
                let next = s.next_ns.unwrap().min(end);
                for (i, (_, threads)) in self.targets.iter().enumerate() {
                    if self.running[i] {
                        self.cpu[i] += (next - self.now) as f64 * threads;
                    }
                }
                self.now = next;
            }
            self.cpu
                .iter()
                .zip(&before)
                .map(|(c, b)| (c - b) as u64)
                .collect()
        }
    }

    fn simulate(
        ctl: &mut Controller,
        targets: &[(TargetId, f64)],
        secs: u64,
        quantum: u64,
    ) -> Vec<u64> {
        Sim::new(targets, quantum).run(ctl, secs)
    }

    #[test]
    fn a_busy_process_is_held_to_its_fraction() {
        let mut ctl = Controller::new(Duration::from_millis(10));
        ctl.set_caps(1, &[(id(5), limit(0.3))], 0);
        let cpu = simulate(&mut ctl, &[(1, 1.0)], 20, 1);
        let share = cpu[0] as f64 / (20_000.0 * MS as f64);
        assert!((share - 0.3).abs() < 0.005, "{share}");
    }

    #[test]
    fn decisions_on_known_samples() {
        let mut ctl = Controller::new(Duration::from_millis(10));
        ctl.set_caps(1, &[(id(5), limit(0.3))], 0);
        // The first sample sets the origin; the budget (30 ms) is there from the start.
        let s = ctl.step(0, &[(1, 1_000 * MS)]);
        assert_eq!((s.actions.clone(), s.next_ns), (vec![], Some(10 * MS)));
        // 40 ms of CPU in 40 ms: 30 + 12 earned meanwhile - 40 = 2 ms left: still running.
        let s = ctl.step(40 * MS, &[(1, 1_040 * MS)]);
        assert!(s.actions.is_empty());
        assert!((ctl.tokens_ns(id(5)).unwrap() - 2.0 * MS as f64).abs() < 1.0);
        // 10 ms more: 2 + 3 - 10 = -5 ms: stopped until 5 / 0.3 = 16.67 ms have passed.
        let s = ctl.step(50 * MS, &[(1, 1_050 * MS)]);
        assert_eq!(s.actions, vec![(1, Action::Stop)]);
        assert_eq!(s.next_ns, Some(50 * MS + 16_666_667));
        assert!(ctl.is_stopped(1));
        // Looked at too early: still owes, stays stopped; stopped time is reported.
        let s = ctl.step(60 * MS, &[(1, 1_050 * MS)]);
        assert!(s.actions.is_empty());
        assert_eq!(s.throttled, vec![(1, 10 * MS)]);
        // Repaid: continued.
        let s = ctl.step(50 * MS + 16_666_667, &[(1, 1_050 * MS)]);
        assert_eq!(s.actions, vec![(1, Action::Continue)]);
        assert_eq!(s.throttled, vec![(1, 6_666_667)]);
    }

    #[test]
    fn coarse_samples_still_give_the_fraction() {
        // /proc counts CPU in clock ticks of 10 ms.
        let mut ctl = Controller::new(Duration::from_millis(10));
        ctl.set_caps(1, &[(id(5), limit(0.3))], 0);
        let cpu = simulate(&mut ctl, &[(1, 1.0)], 20, 10 * MS);
        let share = cpu[0] as f64 / (20_000.0 * MS as f64);
        assert!((share - 0.3).abs() < 0.01, "{share}");
    }

    #[test]
    fn threads_on_several_cpus_share_one_limit() {
        let mut ctl = Controller::new(Duration::from_millis(10));
        ctl.set_caps(1, &[(id(5), limit(0.5))], 0);
        let cpu = simulate(&mut ctl, &[(1, 2.0)], 20, 1);
        let share = cpu[0] as f64 / (20_000.0 * MS as f64);
        assert!((share - 0.5).abs() < 0.01, "{share}");
    }

    #[test]
    fn a_class_cap_holds_over_its_requests() {
        // Two requests' processes under a CGI class capped at 40%, each also capped at 30%.
        let mut ctl = Controller::new(Duration::from_millis(10));
        ctl.set_caps(1, &[(id(11), limit(0.3)), (id(10), limit(0.4))], 0);
        ctl.set_caps(2, &[(id(12), limit(0.3)), (id(10), limit(0.4))], 0);
        let cpu = simulate(&mut ctl, &[(1, 1.0), (2, 1.0)], 20, 1);
        let wall = 20_000.0 * MS as f64;
        let total = (cpu[0] + cpu[1]) as f64 / wall;
        assert!((total - 0.4).abs() < 0.01, "{total}");
        for c in &cpu {
            assert!(*c as f64 / wall <= 0.3 + 0.01);
        }
    }

    #[test]
    fn burst_is_allowed_after_idleness_once() {
        let mut ctl = Controller::new(Duration::from_millis(10));
        let l = CpuLimit::with_period(0.3, Duration::from_millis(100), Duration::from_millis(200))
            .unwrap();
        ctl.set_caps(1, &[(id(5), l)], 0);
        // Idle for 10 s: the bucket fills to budget + burst (230 ms), no more.
        ctl.step(0, &[(1, 0)]);
        ctl.step(10_000 * MS, &[(1, 0)]);
        assert!((ctl.tokens_ns(id(5)).unwrap() - 230.0 * MS as f64).abs() < 1.0);
        // Then busy: it runs 230 / 0.7 = 329 ms before its first stop.
        let mut now = 10_000 * MS;
        let mut cpu = 0;
        loop {
            now += 10 * MS;
            cpu += 10 * MS;
            if !ctl.step(now, &[(1, cpu)]).actions.is_empty() {
                break;
            }
        }
        assert_eq!(now - 10_000 * MS, 330 * MS);
    }

    #[test]
    fn a_removed_stopped_target_is_continued() {
        let mut ctl = Controller::new(Duration::from_millis(10));
        ctl.set_caps(1, &[(id(5), limit(0.1))], 0);
        ctl.set_caps(2, &[(id(6), limit(0.1))], 0);
        ctl.step(0, &[(1, 0), (2, 0)]);
        let s = ctl.step(100 * MS, &[(1, 100 * MS), (2, 0)]);
        assert_eq!(s.actions, vec![(1, Action::Stop)]);
        assert_eq!(ctl.remove(1), Some(Action::Continue));
        assert_eq!(ctl.remove(2), None);
        assert_eq!(ctl.remove(2), None);
        assert!(ctl.tokens_ns(id(5)).is_none(), "unused buckets go");
        assert_eq!(ctl.step(200 * MS, &[]).next_ns, None);
    }

    #[test]
    fn a_changed_limit_applies_at_once() {
        let mut ctl = Controller::new(Duration::from_millis(10));
        ctl.set_caps(1, &[(id(5), limit(0.2))], 0);
        let mut sim = Sim::new(&[(1, 1.0)], 1);
        let wall = 10_000.0 * MS as f64;
        let first = sim.run(&mut ctl, 10)[0];
        assert!((first as f64 / wall - 0.2).abs() < 0.01, "{first}");
        ctl.set_caps(1, &[(id(5), limit(0.6))], sim.now);
        assert!(ctl.tokens_ns(id(5)).unwrap() <= 60.0 * MS as f64);
        let second = sim.run(&mut ctl, 10)[0];
        assert!((second as f64 / wall - 0.6).abs() < 0.01, "{second}");
        // Lowered again: the bucket is cut to the new cap at once.
        ctl.set_caps(1, &[(id(5), limit(0.05))], sim.now);
        assert!(ctl.tokens_ns(id(5)).unwrap() <= 5.0 * MS as f64);
        let third = sim.run(&mut ctl, 10)[0];
        assert!((third as f64 / wall - 0.05).abs() < 0.01, "{third}");
    }

    #[test]
    fn a_target_without_caps_is_never_stopped() {
        let mut ctl = Controller::new(Duration::from_millis(10));
        ctl.set_caps(1, &[], 0);
        let cpu = simulate(&mut ctl, &[(1, 1.0)], 2, 1);
        assert_eq!(cpu[0], 2_000 * MS);
    }
}
