//! How container attributes map onto cgroup knobs. Pure: no I/O.
//!
//! | attribute | cgroup v2 | cgroup v1 |
//! |---|---|---|
//! | share (weight x priority / 100) | `cpu.weight` (1..=10000, 100 = default) | `cpu.shares` (2..=262144, 1024 = default) |
//! | fixed share | a weight computed from the siblings (below) | the same, in shares |
//! | class idle (the lowest) | `cpu.idle = 1` | `cpu.idle = 1` where the kernel has it |
//! | cpu_limit, cpu_period, cpu_burst | `cpu.max`, `cpu.max.burst` | `cpu.cfs_quota_us`, `cpu.cfs_period_us`, `cpu.cfs_burst_us` |
//! | max_memory | `memory.max` | `memory.limit_in_bytes` |
//! | max_processes | `pids.max` | `pids.max` |
//! | priority 0 (never scheduled) | `cgroup.freeze = 1` | `freezer.state = FROZEN` |
//!
//! Classes above idle have no kernel counterpart (the kernel has no strict priority between
//! cgroups); they are enforced by the user-level scheduler only.
//!
//! # Weights from shares
//!
//! The kernel divides CPU among sibling cgroups by weight only. Among the kernel siblings of
//! one class (idle siblings are a group of their own), with `F` the sum of the fixed fractions
//! `f_i` and `W` the sum of the effective weights `e_j = weight_j * priority_j / 100` of the
//! weighted siblings:
//!
//! - with no fixed sibling, each sibling's kernel weight is its effective weight `e_j`;
//! - otherwise, with `T = 10000` (the largest `cpu.weight`), a fixed sibling gets
//!   `f_i * T` and a weighted sibling `(1 - F) * T * e_j / W`.
//!
//! So under contention among all of them, fixed sibling `i` receives exactly `f_i` of the
//! parent's CPU and the weighted siblings share `1 - F` in proportion to their weights, which
//! is the user-level policy's guarantee. (When some siblings are idle, the kernel gives their
//! part to every runnable sibling by weight, where the user-level policy gives it to the
//! weighted ones first: the two agree exactly only under full contention.) If the fixed
//! fractions of kernel siblings sum above 1 (possible when their containers have different,
//! non-enforced parents), they are scaled down to sum to 1 and the weighted siblings get the
//! smallest weight. Weights are clamped to the kernel's range.
//!
//! ```
//! use rescon::{Priority, Share};
//! use rescon_linux::cgroup::map::{sibling_weights, Member};
//! let fixed = |f: f64| Member::new(Share::Fixed(rescon::Fraction::new(f).unwrap()));
//! let weighted = |w: u32| Member::new(Share::Weight(rescon::Weight::new(w).unwrap()));
//! // 30% fixed, and two weighted siblings 3:1 share the remaining 70%.
//! let w = sibling_weights(&[fixed(0.3), weighted(300), weighted(100)]);
//! assert_eq!(w, vec![3000.0, 5250.0, 1750.0]);
//! ```

use super::layout::Version;
use rescon::{Attributes, CpuLimit, Priority, SchedClass, Share, Weight};

/// The total weight fixed fractions are spread over: the largest `cpu.weight`.
pub const FIXED_TOTAL: f64 = 10_000.0;
/// The smallest and largest v2 `cpu.weight`.
pub const V2_WEIGHT: (u64, u64) = (1, 10_000);
/// The smallest and largest v1 `cpu.shares`.
pub const V1_SHARES: (u64, u64) = (2, 262_144);
/// The kernel's bounds on a CFS period, microseconds.
pub const PERIOD_US: (u64, u64) = (1_000, 1_000_000);
/// The kernel's smallest CFS quota, microseconds.
pub const MIN_QUOTA_US: u64 = 1_000;

/// A sibling as the weight computation sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Member {
    /// Its share.
    pub share: Share,
    /// Its priority (scales a weight).
    pub priority: Priority,
    /// Whether it is in the idle class.
    pub idle: bool,
}

impl Member {
    /// A normal-class member with the default priority.
    pub fn new(share: Share) -> Member {
        Member {
            share,
            priority: Priority::DEFAULT,
            idle: false,
        }
    }

    /// The member for a container's attributes.
    pub fn of(a: &Attributes) -> Member {
        Member {
            share: a.share,
            priority: a.priority,
            idle: a.class == SchedClass::IDLE,
        }
    }

    /// The leaf that holds a container's own processes and threads beside its kernel
    /// children: weight 100, normal class, as the user-level policy treats a container's own
    /// work.
    pub fn own_work() -> Member {
        Member::new(Share::Weight(Weight::DEFAULT))
    }
}

/// `weight * priority / 100`.
pub fn effective_weight(w: Weight, p: Priority) -> f64 {
    w.get() as f64 * p.get() as f64 / 100.0
}

/// Kernel weights (in `cpu.weight` units, 100 = default) for a set of siblings, in order. See
/// the [module docs](self) for the formula.
pub fn sibling_weights(members: &[Member]) -> Vec<f64> {
    let mut out = vec![0.0; members.len()];
    for idle in [false, true] {
        let group: Vec<usize> = (0..members.len())
            .filter(|&i| members[i].idle == idle)
            .collect();
        let fixed_sum: f64 = group
            .iter()
            .filter_map(|&i| match members[i].share {
                Share::Fixed(f) => Some(f.get()),
                Share::Weight(_) => None,
            })
            .sum();
        let weight_sum: f64 = group
            .iter()
            .filter_map(|&i| match members[i].share {
                Share::Weight(w) => Some(effective_weight(w, members[i].priority)),
                Share::Fixed(_) => None,
            })
            .sum();
        let scale = if fixed_sum > 1.0 {
            1.0 / fixed_sum
        } else {
            1.0
        };
        let pool = (1.0 - fixed_sum * scale).max(0.0) * FIXED_TOTAL;
        for &i in &group {
            out[i] = match members[i].share {
                Share::Weight(w) if fixed_sum == 0.0 => effective_weight(w, members[i].priority),
                Share::Weight(w) if weight_sum > 0.0 => {
                    pool * effective_weight(w, members[i].priority) / weight_sum
                }
                Share::Weight(_) => 0.0,
                Share::Fixed(f) => f.get() * scale * FIXED_TOTAL,
            };
        }
    }
    out
}

/// `cpu.weight` for a kernel weight.
pub fn v2_weight(w: f64) -> u64 {
    (w.round() as u64).clamp(V2_WEIGHT.0, V2_WEIGHT.1)
}

/// `cpu.shares` for a kernel weight (100 maps to the default 1024).
pub fn v1_shares(w: f64) -> u64 {
    ((w * 1024.0 / 100.0).round() as u64).clamp(V1_SHARES.0, V1_SHARES.1)
}

/// CFS bandwidth as the kernel takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bandwidth {
    /// Runtime per period, microseconds.
    pub quota_us: u64,
    /// Period, microseconds.
    pub period_us: u64,
    /// Unused runtime that may accumulate, microseconds.
    pub burst_us: u64,
}

impl Bandwidth {
    /// The kernel's comparison key for v1's rule that a child may not have more bandwidth
    /// than its parent: `(quota << 20) / period`, as `to_ratio()` computes it.
    pub fn ratio(&self) -> u128 {
        ((self.quota_us as u128 * 1000) << 20) / (self.period_us as u128 * 1000)
    }

    /// The fraction of a CPU.
    pub fn fraction(&self) -> f64 {
        self.quota_us as f64 / self.period_us as f64
    }
}

/// Bandwidth for a CPU limit within the kernel's bounds: the period is brought into
/// 1 ms..=1 s, and lengthened if needed so the quota is at least 1 ms, keeping the fraction;
/// a fraction below 0.1% of a CPU becomes 0.1%. The burst is at most the quota (the kernel
/// refuses more).
pub fn bandwidth(limit: &CpuLimit) -> Bandwidth {
    let f = limit.fraction();
    let mut period_us = (limit.period().as_micros() as u64).clamp(PERIOD_US.0, PERIOD_US.1);
    let mut quota_us = (f * period_us as f64).round() as u64;
    if quota_us < MIN_QUOTA_US {
        let need = (MIN_QUOTA_US as f64 / f).ceil() as u64;
        if need <= PERIOD_US.1 {
            period_us = need;
            quota_us = (f * period_us as f64).round().max(MIN_QUOTA_US as f64) as u64;
        } else {
            period_us = PERIOD_US.1;
            quota_us = MIN_QUOTA_US;
        }
    }
    let burst_us = (limit.burst().as_micros() as u64).min(quota_us);
    Bandwidth {
        quota_us,
        period_us,
        burst_us,
    }
}

/// What a container's cgroup should look like.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Desired {
    /// Kernel weight (from [`sibling_weights`]).
    pub weight: f64,
    /// `cpu.idle`.
    pub idle: bool,
    /// The bandwidth to write in this cgroup (in v1, `None` where an ancestor's is as tight).
    pub bandwidth: Option<Bandwidth>,
    /// Memory limit, bytes.
    pub memory: Option<u64>,
    /// Process limit.
    pub pids: Option<u64>,
    /// Frozen (priority 0).
    pub frozen: bool,
}

impl Desired {
    /// The desired state for attributes and a kernel weight.
    pub fn of(a: &Attributes, weight: f64) -> Desired {
        Desired {
            weight,
            idle: a.class == SchedClass::IDLE,
            bandwidth: a.cpu_limit.as_ref().map(bandwidth),
            memory: a.limits.max_memory,
            pids: a.limits.max_processes,
            frozen: a.priority.is_black_hole(),
        }
    }

    /// The desired state of a cgroup rescon made but that mirrors no container (the subtree
    /// root, a container's own-work leaf).
    pub fn plain(weight: f64) -> Desired {
        Desired {
            weight,
            idle: false,
            bandwidth: None,
            memory: None,
            pids: None,
            frozen: false,
        }
    }
}

/// The v1 rule: a cgroup's bandwidth may not exceed its nearest limited ancestor's. Returns
/// what to write: the container's own bandwidth if strictly tighter than `ancestor`, else
/// none (unlimited: the ancestor's limit already covers the subtree).
pub fn v1_bandwidth(own: Option<Bandwidth>, ancestor: Option<Bandwidth>) -> Option<Bandwidth> {
    match (own, ancestor) {
        (Some(o), Some(a)) if o.ratio() >= a.ratio() => None,
        (o, _) => o,
    }
}

/// A knob: file name and value.
pub type Knob = (&'static str, String);

/// The CPU knobs other than bandwidth, for a cgroup of `version`, in the order they must be
/// written: the kernel refuses a weight for an idle cgroup, so an idle cgroup gets only
/// `cpu.idle = 1`, and a normal one gets `cpu.idle = 0` before its weight.
pub fn cpu_knobs(d: &Desired, version: Version) -> Vec<Knob> {
    if d.idle {
        return vec![("cpu.idle", "1".into())];
    }
    let weight = match version {
        Version::V2 => ("cpu.weight", v2_weight(d.weight).to_string()),
        Version::V1 => ("cpu.shares", v1_shares(d.weight).to_string()),
    };
    vec![("cpu.idle", "0".into()), weight]
}

/// The bandwidth knobs, in the order they must be written.
///
/// v2 writes `cpu.max` then `cpu.max.burst` (lowered first when the quota falls, since the
/// burst may not exceed the quota). v1 writes the burst to 0, the quota to unlimited, the
/// period, the quota and the burst: each step is valid whatever the old values were.
pub fn bandwidth_knobs(b: Option<Bandwidth>, version: Version) -> Vec<Knob> {
    match (version, b) {
        (Version::V2, Some(b)) => vec![
            ("cpu.max.burst", "0".into()),
            ("cpu.max", format!("{} {}", b.quota_us, b.period_us)),
            ("cpu.max.burst", b.burst_us.to_string()),
        ],
        (Version::V2, None) => vec![
            ("cpu.max.burst", "0".into()),
            ("cpu.max", "max 100000".into()),
        ],
        (Version::V1, Some(b)) => vec![
            ("cpu.cfs_burst_us", "0".into()),
            ("cpu.cfs_quota_us", "-1".into()),
            ("cpu.cfs_period_us", b.period_us.to_string()),
            ("cpu.cfs_quota_us", b.quota_us.to_string()),
            ("cpu.cfs_burst_us", b.burst_us.to_string()),
        ],
        (Version::V1, None) => vec![
            ("cpu.cfs_burst_us", "0".into()),
            ("cpu.cfs_quota_us", "-1".into()),
            ("cpu.cfs_period_us", "100000".into()),
        ],
    }
}

/// The memory limit knob.
pub fn memory_knob(limit: Option<u64>, version: Version) -> Knob {
    match version {
        Version::V2 => (
            "memory.max",
            limit.map_or_else(|| "max".into(), |v| v.to_string()),
        ),
        Version::V1 => (
            "memory.limit_in_bytes",
            limit.map_or_else(|| "-1".into(), |v| v.to_string()),
        ),
    }
}

/// The process limit knob.
pub fn pids_knob(limit: Option<u64>) -> Knob {
    (
        "pids.max",
        limit.map_or_else(|| "max".into(), |v| v.to_string()),
    )
}

/// The freezing knob.
pub fn freeze_knob(frozen: bool, version: Version) -> Knob {
    match version {
        Version::V2 => ("cgroup.freeze", if frozen { "1" } else { "0" }.into()),
        Version::V1 => (
            "freezer.state",
            if frozen { "FROZEN" } else { "THAWED" }.into(),
        ),
    }
}

/// The value of each knob in a new cgroup, so that only changes are written.
pub fn kernel_default(file: &str) -> Option<&'static str> {
    Some(match file {
        "cpu.weight" => "100",
        "cpu.shares" => "1024",
        "cpu.idle" => "0",
        "cpu.max" => "max 100000",
        "cpu.max.burst" | "cpu.cfs_burst_us" => "0",
        "cpu.cfs_quota_us" => "-1",
        "cpu.cfs_period_us" => "100000",
        "memory.max" | "pids.max" => "max",
        "memory.limit_in_bytes" => "-1",
        "cgroup.freeze" => "0",
        "freezer.state" => "THAWED",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rescon::Fraction;
    use std::time::Duration;

    fn fixed(f: f64) -> Member {
        Member::new(Share::Fixed(Fraction::new(f).unwrap()))
    }
    fn weighted(w: u32) -> Member {
        Member::new(Share::Weight(Weight::new(w).unwrap()))
    }

    /// Each sibling's share of the CPU under full contention, given kernel weights.
    fn split(w: &[f64]) -> Vec<f64> {
        let t: f64 = w.iter().sum();
        w.iter().map(|x| x / t).collect()
    }

    #[test]
    fn plain_weights_and_priority() {
        let mut low = weighted(100);
        low.priority = Priority::new(50).unwrap();
        let w = sibling_weights(&[weighted(400), weighted(100), low]);
        assert_eq!(w, vec![400.0, 100.0, 50.0]);
        assert_eq!(v2_weight(400.0), 400);
        assert_eq!(v1_shares(400.0), 4096);
        assert_eq!(v1_shares(100.0), 1024);
        // Clamped to the kernels' ranges.
        assert_eq!(v2_weight(100_000.0), 10_000);
        assert_eq!(v2_weight(0.0), 1);
        assert_eq!(v1_shares(0.0), 2);
        assert_eq!(v1_shares(100_000.0), 262_144);
    }

    #[test]
    fn fixed_fractions_become_weights_that_yield_them() {
        // The paper's RCLinux experiment: 16%, 32%, 48% fixed (plus 4% left to nobody).
        let w = sibling_weights(&[fixed(0.16), fixed(0.32), fixed(0.48)]);
        let s = split(&w);
        // With no weighted sibling the fixed ones divide everything by their fractions.
        for (got, want) in s.iter().zip([0.16 / 0.96, 0.32 / 0.96, 0.48 / 0.96]) {
            assert!((got - want).abs() < 1e-9, "{s:?}");
        }
        // Fixed 48/16/16 plus weighted siblings 3:1: fixed get exactly theirs, the pool 20%.
        let w = sibling_weights(&[
            fixed(0.48),
            fixed(0.16),
            fixed(0.16),
            weighted(300),
            weighted(100),
        ]);
        let s = split(&w);
        let want = [0.48, 0.16, 0.16, 0.15, 0.05];
        for (got, want) in s.iter().zip(want) {
            assert!((got - want).abs() < 1e-9, "{s:?}");
        }
    }

    #[test]
    fn overcommitted_fixed_and_idle_groups() {
        let w = sibling_weights(&[fixed(0.7), fixed(0.7), weighted(100)]);
        assert_eq!(w[0], w[1]);
        assert_eq!(w[2], 0.0, "no pool left");
        assert_eq!(v2_weight(w[2]), 1);
        let mut idle = fixed(0.5);
        idle.idle = true;
        // The idle sibling is its own group: it does not take from the normal ones.
        let w = sibling_weights(&[fixed(0.5), weighted(100), idle]);
        assert_eq!(w[0], 5000.0);
        assert_eq!(w[1], 5000.0);
        assert_eq!(w[2], 5000.0);
        // The own-work leaf is a weighted member of weight 100.
        let w = sibling_weights(&[weighted(300), Member::own_work()]);
        assert_eq!(w, vec![300.0, 100.0]);
    }

    #[test]
    fn bandwidth_bounds() {
        let b = bandwidth(&CpuLimit::new(0.3).unwrap());
        assert_eq!(
            b,
            Bandwidth {
                quota_us: 30_000,
                period_us: 100_000,
                burst_us: 0
            }
        );
        assert_eq!(b.fraction(), 0.3);
        // Too small a quota: the period grows to keep the fraction.
        let b = bandwidth(
            &CpuLimit::with_period(0.005, Duration::from_millis(100), Duration::ZERO).unwrap(),
        );
        assert_eq!((b.quota_us, b.period_us), (1_000, 200_000));
        // Below 0.1%: the floor.
        let b = bandwidth(
            &CpuLimit::with_period(0.0001, Duration::from_millis(100), Duration::ZERO).unwrap(),
        );
        assert_eq!((b.quota_us, b.period_us), (1_000, 1_000_000));
        // Period above 1 s is brought to 1 s; burst at most the quota.
        let b = bandwidth(
            &CpuLimit::with_period(0.5, Duration::from_secs(5), Duration::from_secs(2)).unwrap(),
        );
        assert_eq!(
            (b.quota_us, b.period_us, b.burst_us),
            (500_000, 1_000_000, 500_000)
        );
        // Several CPUs.
        let b = bandwidth(&CpuLimit::new(2.5).unwrap());
        assert_eq!((b.quota_us, b.period_us), (250_000, 100_000));
    }

    #[test]
    fn v1_hierarchy_rule() {
        let bw = |q, p| Bandwidth {
            quota_us: q,
            period_us: p,
            burst_us: 0,
        };
        // Tighter than the ancestor: written.
        assert_eq!(
            v1_bandwidth(Some(bw(20_000, 100_000)), Some(bw(30_000, 100_000))),
            Some(bw(20_000, 100_000))
        );
        // As tight or looser (whatever the periods): unlimited, the ancestor covers it.
        assert_eq!(
            v1_bandwidth(Some(bw(15_000, 50_000)), Some(bw(30_000, 100_000))),
            None
        );
        assert_eq!(
            v1_bandwidth(Some(bw(50_000, 100_000)), Some(bw(30_000, 100_000))),
            None
        );
        assert_eq!(
            v1_bandwidth(Some(bw(50_000, 100_000)), None),
            Some(bw(50_000, 100_000))
        );
        assert_eq!(v1_bandwidth(None, Some(bw(1, 2))), None);
    }

    #[test]
    fn knob_text() {
        let mut a = Attributes::default();
        a.set("cpu_limit", "30%").unwrap();
        a.set("cpu_burst", "10ms").unwrap();
        a.set("max_memory", "64MiB").unwrap();
        a.set("max_processes", "8").unwrap();
        a.set("class", "idle").unwrap();
        let d = Desired::of(&a, 250.0);
        assert_eq!(cpu_knobs(&d, Version::V2), vec![("cpu.idle", "1".into())]);
        let normal = Desired { idle: false, ..d };
        assert_eq!(
            cpu_knobs(&normal, Version::V2),
            vec![("cpu.idle", "0".into()), ("cpu.weight", "250".into())]
        );
        assert_eq!(
            cpu_knobs(&normal, Version::V1),
            vec![("cpu.idle", "0".into()), ("cpu.shares", "2560".into())]
        );
        assert_eq!(
            bandwidth_knobs(d.bandwidth, Version::V2),
            vec![
                ("cpu.max.burst", "0".into()),
                ("cpu.max", "30000 100000".into()),
                ("cpu.max.burst", "10000".into())
            ]
        );
        let v1 = bandwidth_knobs(d.bandwidth, Version::V1);
        assert_eq!(v1[3], ("cpu.cfs_quota_us", "30000".into()));
        assert_eq!(v1[4], ("cpu.cfs_burst_us", "10000".into()));
        assert_eq!(
            memory_knob(d.memory, Version::V2),
            ("memory.max", "67108864".into())
        );
        assert_eq!(
            memory_knob(None, Version::V1),
            ("memory.limit_in_bytes", "-1".into())
        );
        assert_eq!(pids_knob(d.pids), ("pids.max", "8".into()));
        assert_eq!(pids_knob(None), ("pids.max", "max".into()));
        assert!(!d.frozen);
        a.set("priority", "0").unwrap();
        let d = Desired::of(&a, 1.0);
        assert_eq!(
            freeze_knob(d.frozen, Version::V1),
            ("freezer.state", "FROZEN".into())
        );
        assert_eq!(
            freeze_knob(false, Version::V2),
            ("cgroup.freeze", "0".into())
        );
        // Every knob written has a known default, so unchanged ones are never written.
        for (f, v) in bandwidth_knobs(None, Version::V1)
            .into_iter()
            .chain(bandwidth_knobs(None, Version::V2))
            .chain(cpu_knobs(&Desired::plain(100.0), Version::V1))
            .chain(cpu_knobs(&Desired::plain(100.0), Version::V2))
            .chain([
                memory_knob(None, Version::V1),
                memory_knob(None, Version::V2),
                pids_knob(None),
            ])
            .chain([
                freeze_knob(false, Version::V1),
                freeze_knob(false, Version::V2),
            ])
        {
            assert_eq!(kernel_default(f), Some(v.as_str()), "{f}");
        }
    }
}
