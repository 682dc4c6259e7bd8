//! Property tests of the policy and the model on random trees and random workloads.

use proptest::prelude::*;
use rescon::sched::{Hierarchical, Policy};
use rescon::sim::{Load, Sim};
use rescon::{Attributes, Container, Error, Registry};
use std::collections::HashSet;

const MS: u64 = 1_000_000;

/// A random container: its parent (an index among those before it, or the root), its
/// attributes, and whether work is bound to it.
#[derive(Clone, Debug)]
struct Spec {
    parent: Option<usize>,
    class: u8,
    share: ShareSpec,
    priority: u16,
    cap: Option<u8>,
    busy: bool,
}

#[derive(Clone, Copy, Debug)]
enum ShareSpec {
    Fixed(u8),
    Weight(u32),
}

fn spec(with_caps: bool) -> impl Strategy<Value = Spec> {
    (
        any::<prop::sample::Index>(),
        prop::bool::weighted(0.3),
        0u8..3,
        prop_oneof![
            (1u8..40).prop_map(ShareSpec::Fixed),
            (1u32..500).prop_map(ShareSpec::Weight)
        ],
        prop_oneof![9 => 1u16..300, 1 => Just(0u16)],
        prop::option::weighted(0.3, 5u8..80).prop_map(move |c| c.filter(|_| with_caps)),
        prop::bool::weighted(0.7),
    )
        .prop_map(|(idx, top, class, share, priority, cap, busy)| Spec {
            parent: if top {
                None
            } else {
                Some(idx.index(usize::MAX))
            },
            class,
            share,
            priority,
            cap,
            busy,
        })
}

/// Builds the tree; fixed shares that would over-commit a parent become weights.
fn build(registry: &Registry, specs: &[Spec]) -> Vec<Container> {
    let root = registry.root();
    let mut made: Vec<Container> = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let parent = match s.parent {
            Some(p) if i > 0 => made[p % i].clone(),
            _ => root.clone(),
        };
        let mut a = Attributes::default();
        a.set("class", &s.class.to_string()).unwrap();
        a.set("priority", &s.priority.to_string()).unwrap();
        if let Some(c) = s.cap {
            a.set("cpu_limit", &format!("{c}%")).unwrap();
            a.set("cpu_period", "20ms").unwrap();
        }
        match s.share {
            ShareSpec::Fixed(f) => a.set("share", &format!("{f}%")).unwrap(),
            ShareSpec::Weight(w) => a.set("share", &format!("weight:{w}")).unwrap(),
        }
        let c = match parent.create_child(&format!("c{i}"), a) {
            Ok(c) => c,
            Err(Error::FixedSharesExceed { .. }) => {
                a.set("share", "weight:100").unwrap();
                parent.create_child(&format!("c{i}"), a).unwrap()
            }
            Err(e) => panic!("{e}"),
        };
        made.push(c);
    }
    made
}

fn ancestors(c: &Container, root: &Container) -> Vec<Container> {
    let mut out = Vec::new();
    let mut cur = c.parent_id();
    while let Some(id) = cur {
        let a = root.lookup(id).unwrap();
        cur = a.parent_id();
        out.push(a);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Every continuously backlogged container (and every ancestor) receives its entitlement
    /// within one percentage point over a long horizon.
    #[test]
    fn backlogged_containers_get_their_entitlement(specs in prop::collection::vec(spec(false), 1..14)) {
        let registry = Registry::new();
        let made = build(&registry, &specs);
        let mut sim = Sim::new(Box::new(Hierarchical::new(&registry)), MS);
        sim.set_top(vec![registry.root()]);
        for (c, s) in made.iter().zip(&specs) {
            if s.busy {
                sim.add(c, Load::Backlogged);
            }
        }
        sim.run_for(20_000 * MS);
        let mut total = 0.0;
        for c in &made {
            let (e, d) = (sim.entitled(c), sim.delivered(c));
            prop_assert!((e - d).abs() < 0.01, "{}: entitled {e:.4} delivered {d:.4}", c.name());
            if c.parent_id() == Some(registry.root().id()) {
                total += d;
            }
        }
        let any_runs = made.iter().zip(&specs).any(|(c, s)| s.busy && sim.entitled(c) > 0.0);
        if any_runs {
            prop_assert!((total - 1.0).abs() < 1e-9, "work-conserving: the CPU is never idle, got {total}");
        }
    }

    /// With caps and intermittent loads: no capped subtree ever runs more than its budget in a
    /// period, and nothing under priority 0 ever runs.
    #[test]
    fn caps_and_black_holes_hold_under_random_loads(
        specs in prop::collection::vec(spec(true), 1..12),
        phases in prop::collection::vec((1u64..40, 1u64..40, 0u64..40), 12),
        quantum_us in 100u64..3000,
    ) {
        let registry = Registry::new();
        let root = registry.root();
        let made = build(&registry, &specs);
        let mut sim = Sim::new(Box::new(Hierarchical::new(&registry)), quantum_us * 1000);
        let mut leaves = Vec::new();
        for (i, (c, s)) in made.iter().zip(&specs).enumerate() {
            if s.busy {
                let (on, off, ph) = phases[i];
                sim.add(c, Load::OnOff { on_ns: on * MS, off_ns: off * MS, phase_ns: ph * MS });
                leaves.push(c.clone());
            }
        }
        // For each leaf: its capped ancestors (itself included) and whether it is black-holed.
        let info: Vec<(Vec<(usize, u64)>, bool)> = leaves.iter().map(|l| {
            let mut chain = vec![l.clone()];
            chain.extend(ancestors(l, &root));
            let caps = chain.iter().filter_map(|c| {
                let i = made.iter().position(|m| m == c)?;
                c.attrs().cpu_limit.map(|cap| (i, cap.budget_ns()))
            }).collect();
            let hole = chain.iter().any(|c| c.attrs().priority.is_black_hole());
            (caps, hole)
        }).collect();
        let mut used = vec![vec![0u64; 200]; made.len()];
        let mut violation = None;
        sim.run_traced(2000 * MS, |run| {
            let (caps, hole) = &info[run.leaf];
            if *hole && violation.is_none() {
                violation = Some(format!("{} under priority 0 ran", leaves[run.leaf].name()));
            }
            let period = (run.start_ns / (20 * MS)) as usize;
            for &(i, budget) in caps {
                used[i][period] += run.len_ns;
                if used[i][period] > budget && violation.is_none() {
                    violation = Some(format!("c{i} used {} of {budget} in period {period}", used[i][period]));
                }
            }
        });
        prop_assert!(violation.is_none(), "{}", violation.unwrap());
    }

    /// Reparenting never makes a cycle: a move is refused exactly when the new parent is in the
    /// target's subtree, and after any sequence every container still reaches a top.
    #[test]
    fn reparenting_never_makes_a_cycle(
        specs in prop::collection::vec(spec(false), 2..12),
        moves in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), prop::bool::weighted(0.1)), 1..40),
    ) {
        let registry = Registry::new();
        let root = registry.root();
        let made = build(&registry, &specs);
        for (t, p, detach) in moves {
            let target = &made[t.index(made.len())];
            let new_parent = &made[p.index(made.len())];
            let in_subtree = target.contains(new_parent);
            let r = root.reparent(target, if detach { None } else { Some(new_parent) });
            match r {
                Ok(()) => prop_assert!(detach || !in_subtree),
                Err(Error::Cycle { .. }) => prop_assert!(in_subtree),
                Err(Error::FixedSharesExceed { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
        for c in &made {
            let mut seen = HashSet::new();
            let mut cur = Some(c.clone());
            while let Some(n) = cur {
                prop_assert!(seen.insert(n.id()), "cycle through {}", n.name());
                cur = n.parent_id().map(|id| root.lookup(id).unwrap());
            }
        }
    }

    /// Whatever is created, charged, reparented and released, the sum of all usage (released
    /// included) equals the sum of all charges.
    #[test]
    fn no_charge_is_ever_lost(ops in prop::collection::vec((0u8..5, any::<prop::sample::Index>(), any::<prop::sample::Index>(), 1u64..1000), 1..200)) {
        let registry = Registry::new();
        let root = registry.root();
        let mut policy = Hierarchical::new(&registry);
        let mut live: Vec<(Container, rescon::sched::Key)> = Vec::new();
        let mut charged = 0u64;
        for (op, a, b, n) in ops {
            match op {
                0 | 1 => {
                    let parent = if live.is_empty() || op == 0 { root.clone() } else { live[a.index(live.len())].0.clone() };
                    let c = parent.create_child("c", Attributes::default()).unwrap();
                    let k = policy.attach(&c);
                    policy.set_runnable(k, true);
                    live.push((c, k));
                }
                2 if !live.is_empty() => {
                    let (_, k) = &live[a.index(live.len())];
                    policy.charge(*k, n);
                    charged += n;
                }
                3 if !live.is_empty() => {
                    let (c, k) = live.swap_remove(a.index(live.len()));
                    policy.detach(k);
                    drop(c);
                }
                4 if live.len() > 1 => {
                    let t = &live[a.index(live.len())].0;
                    let p = &live[b.index(live.len())].0;
                    let _ = root.reparent(t, if n % 5 == 0 { None } else { Some(p) });
                }
                _ => {}
            }
            policy.flush();
            prop_assert_eq!(registry.usage_all().cpu_ns, charged);
        }
        for (_, k) in live.drain(..) {
            policy.detach(k);
        }
        drop(policy);
        prop_assert_eq!(registry.usage_all().cpu_ns, charged);
        prop_assert_eq!(registry.len(), 1, "everything but the root is released");
    }
}
