//! The policy's guarantees over several workers, on simulated workers with a fake clock:
//! each worker has its own policy in shared mode, work moves between them by
//! `sched::balance`, and every container must receive its entitlement of all the workers'
//! time (water-filled by its tasks), however its tasks were first placed.

use rescon::sched::{Hierarchical, HierarchicalConfig, Policy};
use rescon::sim::MultiSim;
use rescon::{Attributes, Container, Registry};

const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000 * MS;
/// The quantum of the simulated workers (the runtime's default).
const QUANTUM: u64 = 200_000;

fn child(parent: &Container, name: &str, attrs: &[(&str, &str)]) -> Container {
    let mut a = Attributes::default();
    for (k, v) in attrs {
        a.set(k, v).unwrap();
    }
    parent.create_child(name, a).unwrap()
}

fn sim(registry: &Registry, workers: usize) -> MultiSim {
    let cfg = HierarchicalConfig {
        shared: true,
        lease_ns: Some(MS),
    };
    let mut s = MultiSim::new(workers, QUANTUM, || {
        Box::new(Hierarchical::with_config(registry, cfg)) as Box<dyn Policy>
    });
    s.set_top(vec![registry.root()]);
    s
}

/// Runs, then checks every container against its entitlement: the fraction within `tol`, and
/// the largest lag at any time within `lag_ms`.
fn check(name: &str, s: &mut MultiSim, cs: &[&Container], tol: f64, lag_ms: f64) {
    s.run_for(10 * SECOND);
    let mut bad = Vec::new();
    for c in cs {
        let (e, d, lag) = (s.entitled(c), s.delivered(c), s.max_lag_ns(c) / 1e6);
        println!(
            "{name:28} {:10} entitled {e:.4} delivered {d:.4} max lag {lag:6.2} ms placement {:?}",
            c.name(),
            s.placement(c)
        );
        if (e - d).abs() > tol || lag > lag_ms {
            bad.push(format!(
                "{}: entitled {e:.4} delivered {d:.4} lag {lag:.2} ms",
                c.name()
            ));
        }
    }
    println!("{name:28} {} tasks moved", s.moves());
    assert!(bad.is_empty(), "{name}: {bad:?}");
}

#[test]
fn skewed_placement_two_containers_on_one_worker_one_on_the_other() {
    let registry = Registry::new();
    let root = registry.root();
    let (a, b, c) = (
        child(&root, "a", &[]),
        child(&root, "b", &[]),
        child(&root, "c", &[]),
    );
    let mut s = sim(&registry, 2);
    s.add(&a, 4, 0);
    s.add(&b, 4, 0);
    s.add(&c, 4, 1);
    check("skewed", &mut s, &[&a, &b, &c], 0.005, 10.0);
}

#[test]
fn three_single_tasks_on_two_workers_take_turns() {
    let registry = Registry::new();
    let root = registry.root();
    let (a, b, c) = (
        child(&root, "a", &[]),
        child(&root, "b", &[]),
        child(&root, "c", &[]),
    );
    let mut s = sim(&registry, 2);
    s.add(&a, 1, 0);
    s.add(&b, 1, 0);
    s.add(&c, 1, 1);
    check("three single tasks", &mut s, &[&a, &b, &c], 0.005, 10.0);
}

#[test]
fn a_heavy_container_with_one_task_gets_one_worker_and_no_credit() {
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[("share", "weight:400")]);
    let b = child(&root, "b", &[]);
    let mut s = sim(&registry, 2);
    s.add(&a, 1, 0);
    s.add(&b, 8, 0);
    check("water-filled", &mut s, &[&a, &b], 0.005, 10.0);
}

#[test]
fn nested_fixed_shares_with_weights_below_on_two_and_four_workers() {
    for workers in [2, 4] {
        let registry = Registry::new();
        let root = registry.root();
        let p = child(&root, "p", &[("share", "50%")]);
        let q = child(&root, "q", &[("share", "30%")]);
        let r = child(&root, "r", &[("share", "20%")]);
        let p1 = child(&p, "p1", &[("share", "weight:300")]);
        let p2 = child(&p, "p2", &[("share", "weight:100")]);
        let q1 = child(&q, "q1", &[]);
        let q2 = child(&q, "q2", &[]);
        let r1 = child(&r, "r1", &[]);
        let mut s = sim(&registry, workers);
        // All of p on the first worker, q and r on the last.
        s.add(&p1, 4, 0);
        s.add(&p2, 4, 0);
        s.add(&q1, 4, workers - 1);
        s.add(&q2, 4, workers - 1);
        s.add(&r1, 4, workers - 1);
        check(
            &format!("nested on {workers}"),
            &mut s,
            &[&p, &q, &r, &p1, &p2, &q1, &q2, &r1],
            0.005,
            10.0,
        );
    }
}

#[test]
fn a_high_class_takes_every_worker_it_can_use() {
    for high_tasks in [1, 2, 4] {
        let registry = Registry::new();
        let root = registry.root();
        let high = child(&root, "high", &[("class", "high")]);
        let normal = child(&root, "normal", &[]);
        let mut s = sim(&registry, 2);
        s.add(&high, high_tasks, 0);
        s.add(&normal, 4, 1);
        check(
            &format!("high with {high_tasks} tasks"),
            &mut s,
            &[&high, &normal],
            0.005,
            10.0,
        );
    }
}

#[test]
fn a_cap_holds_over_all_workers_and_priority_zero_never_runs() {
    let registry = Registry::new();
    let root = registry.root();
    let capped = child(
        &root,
        "capped",
        &[("cpu_limit", "60%"), ("cpu_period", "10ms")],
    );
    let free = child(&root, "free", &[]);
    let hole = child(&root, "hole", &[("priority", "0")]);
    let mut s = sim(&registry, 2);
    s.add(&capped, 4, 0);
    s.add(&hole, 4, 1);
    s.add(&free, 4, 0);
    check(
        "cap and priority 0",
        &mut s,
        &[&capped, &free, &hole],
        0.005,
        10.0,
    );
    assert_eq!(hole.usage().cpu_ns, 0);
}

/// A random leaf for the properties below: its parent (one of the top-level groups), class,
/// fixed share (when its parent has room) or weight, tasks (all placed on one random worker:
/// the most skewed placement there is).
#[derive(Clone, Debug)]
struct Spec {
    parent: usize,
    class: u8,
    fixed: Option<u8>,
    weight: u32,
    tasks: u32,
    worker: usize,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0usize..3,
        0u8..3,
        prop::option::weighted(0.4, 5u8..60),
        1u32..400,
        1u32..5,
        0usize..8,
    )
        .prop_map(|(parent, class, fixed, weight, tasks, worker)| Spec {
            parent,
            class,
            fixed,
            weight,
            tasks,
            worker,
        })
}

type Group = (u8, Option<u8>, u32);

/// Builds the tree (fixed shares that would over-commit a parent become weights), places
/// each leaf's tasks (at least `min_tasks`), runs 3 s, and returns (name, entitled, delivered,
/// max lag in ms) for every leaf.
fn run_random(
    workers: usize,
    groups: &[Group],
    leaves: &[Spec],
    min_tasks: u32,
) -> Vec<(String, f64, f64, f64, Vec<u32>)> {
    let registry = Registry::new();
    let root = registry.root();
    let make = |parent: &Container, name: String, class: u8, fixed: Option<u8>, weight: u32| {
        let mut a = Attributes::default();
        a.set("class", &class.to_string()).unwrap();
        a.set("share", &format!("weight:{weight}")).unwrap();
        if let Some(f) = fixed {
            a.set("share", &format!("{f}%")).unwrap();
        }
        parent.create_child(&name, a).unwrap_or_else(|_| {
            a.set("share", &format!("weight:{weight}")).unwrap();
            parent.create_child(&name, a).unwrap()
        })
    };
    let tops: Vec<Container> = groups
        .iter()
        .enumerate()
        .map(|(i, (class, fixed, weight))| make(&root, format!("g{i}"), *class, *fixed, *weight))
        .collect();
    let mut s = sim(&registry, workers);
    let mut made = Vec::new();
    for (i, l) in leaves.iter().enumerate() {
        let parent = &tops[l.parent % tops.len()];
        let c = make(parent, format!("l{i}"), l.class, l.fixed, l.weight);
        s.add(&c, l.tasks.max(min_tasks), l.worker % workers);
        made.push(c);
    }
    s.run_for(3 * SECOND);
    made.iter()
        .map(|c| {
            (
                c.name().to_string(),
                s.entitled(c),
                s.delivered(c),
                s.max_lag_ns(c) / 1e6,
                s.placement(c),
            )
        })
        .collect()
}

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the tree and wherever the tasks start, a leaf with at least as many tasks as
    /// there are workers (so that no parallelism limit binds) gets its entitlement of all the
    /// workers' time within half a percentage point, and never lags it by more than the
    /// bound stated in `sched::balance`.
    #[test]
    fn any_tree_any_placement_gets_its_entitlement(
        workers in 2usize..5,
        groups in prop::collection::vec((0u8..3, prop::option::weighted(0.5, 10u8..50), 1u32..400), 1..4),
        leaves in prop::collection::vec(spec(), 2..7),
    ) {
        for (name, e, d, lag, placed) in run_random(workers, &groups, &leaves, workers as u32) {
            prop_assert!(
                (e - d).abs() <= 0.005 && lag <= LAG_BOUND_MS,
                "{name}: entitled {e:.4} delivered {d:.4} lag {lag:.2} ms on {workers} workers, placement {placed:?}"
            );
        }
    }

}

/// With fewer tasks than workers, parallelism limits bind, and work keeps moving to approach
/// the water-filled entitlement; a placement that gives every container its entitlement may
/// not be reachable by the moves the balancing makes (a container whose one task shares a
/// worker with work that is not behind stays where it is). Measured over 200 random trees:
/// at least 95% of the leaves within two percentage points of their entitlement (at the time
/// of writing: 99%, the worst 0.2).
#[test]
fn few_tasks_get_their_water_filled_entitlement_mostly() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let strategy = (
        2usize..5,
        prop::collection::vec(
            (0u8..3, prop::option::weighted(0.5, 10u8..50), 1u32..400),
            1..4,
        ),
        prop::collection::vec(spec(), 2..7),
    );
    let mut runner = TestRunner::deterministic();
    let (mut leaves_total, mut within, mut worst) = (0, 0, (0.0f64, String::new()));
    for _ in 0..200 {
        let (workers, groups, leaves) = strategy.new_tree(&mut runner).unwrap().current();
        for (name, e, d, _, placed) in run_random(workers, &groups, &leaves, 1) {
            leaves_total += 1;
            let err = (e - d).abs();
            if err <= 0.02 {
                within += 1;
            }
            if err > worst.0 {
                worst = (
                    err,
                    format!(
                        "{name}: entitled {e:.4} delivered {d:.4} on {workers} workers, {placed:?}"
                    ),
                );
            }
        }
    }
    let share = within as f64 / leaves_total as f64;
    println!(
        "{within} of {leaves_total} leaves within 0.02 ({share:.3}); worst {:.4}: {}",
        worst.0, worst.1
    );
    assert!(
        share >= 0.95,
        "{within} of {leaves_total} within 0.02; worst {}",
        worst.1
    );
}

/// The lag bound the first property checks, ms of CPU.
const LAG_BOUND_MS: f64 = 12.0;
