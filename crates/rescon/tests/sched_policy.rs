//! The hierarchical policy's guarantees, one by one, on a fake clock.

use rescon::sched::{Fifo, Hierarchical, HierarchicalConfig, Policy};
use rescon::sim::{Load, Sim};
use rescon::{Attributes, Container, Registry};

const MS: u64 = 1_000_000;

fn child(parent: &Container, name: &str, pairs: &[(&str, &str)]) -> Container {
    let mut a = Attributes::default();
    for (k, v) in pairs {
        a.set(k, v).unwrap();
    }
    parent.create_child(name, a).unwrap()
}

#[test]
fn higher_class_always_runs_first() {
    let registry = Registry::new();
    let root = registry.root();
    let lo = child(
        &root,
        "lo",
        &[("class", "normal"), ("share", "weight:10000")],
    );
    let hi = child(&root, "hi", &[("class", "high"), ("share", "weight:1")]);
    let mut p = Hierarchical::new(&registry);
    let (klo, khi) = (p.attach(&lo), p.attach(&hi));
    p.set_runnable(klo, true);
    p.set_runnable(khi, true);
    for _ in 0..1000 {
        let pick = p.pick().unwrap();
        assert_eq!(
            pick.key, khi,
            "a class-2 container must run before any class-1 one"
        );
        p.charge(pick.key, MS);
    }
    p.set_runnable(khi, false);
    assert_eq!(
        p.pick().unwrap().key,
        klo,
        "work-conserving: the lower class runs when the higher is idle"
    );
}

#[test]
fn classes_are_strict_only_among_siblings() {
    // A critical child of a normal-class parent does not beat a high-class sibling of its parent.
    let registry = Registry::new();
    let root = registry.root();
    let normal = child(&root, "normal", &[]);
    let crit = child(&normal, "crit", &[("class", "critical")]);
    let high = child(&root, "high", &[("class", "high")]);
    let mut p = Hierarchical::new(&registry);
    let (kc, kh) = (p.attach(&crit), p.attach(&high));
    p.set_runnable(kc, true);
    p.set_runnable(kh, true);
    assert_eq!(p.pick().unwrap().key, kh);
}

#[test]
fn priority_zero_never_runs_even_alone() {
    let registry = Registry::new();
    let root = registry.root();
    let hole = child(&root, "hole", &[("priority", "0")]);
    let under = child(&hole, "under", &[]);
    let mut p = Hierarchical::new(&registry);
    let (kh, ku) = (p.attach(&hole), p.attach(&under));
    p.set_runnable(kh, true);
    p.set_runnable(ku, true);
    assert_eq!(
        p.pick(),
        None,
        "nothing under priority 0 may run, even with the CPU idle"
    );
    // Raising the priority elsewhere takes effect at the next pick.
    root.update(&hole, |a| a.set("priority", "1")).unwrap();
    assert!(p.pick().is_some());
    root.update(&hole, |a| a.set("priority", "0")).unwrap();
    assert_eq!(p.pick(), None);
}

#[test]
fn cap_holds_in_every_period_and_throttling_is_recorded() {
    let registry = Registry::new();
    let root = registry.root();
    let capped = child(
        &root,
        "capped",
        &[("cpu_limit", "30%"), ("cpu_period", "10ms")],
    );
    let other = child(&root, "other", &[]);
    let mut sim = Sim::new(Box::new(Hierarchical::new(&registry)), 700_000);
    sim.set_top(vec![root.clone()]);
    sim.add(&capped, Load::Backlogged);
    sim.add(
        &other,
        Load::OnOff {
            on_ns: 25 * MS,
            off_ns: 35 * MS,
            phase_ns: 0,
        },
    );
    let mut per_period = vec![0u64; 200];
    sim.run_traced(2000 * MS, |run| {
        if run.container == capped.id() {
            let first = run.start_ns / (10 * MS);
            let last = (run.start_ns + run.len_ns - 1) / (10 * MS);
            assert_eq!(first, last, "the slice stops a run at the period's end");
            per_period[first as usize] += run.len_ns;
        }
    });
    for (i, used) in per_period.iter().enumerate() {
        assert!(*used <= 3 * MS, "period {i}: {used} ns over a 3 ms budget");
    }
    assert!(
        per_period.iter().all(|&u| u == 3 * MS),
        "backlogged: every period's budget is used"
    );
    assert!((sim.delivered(&capped) - 0.3).abs() < 1e-9);
    let throttled = capped.usage().throttled_ns;
    assert!(throttled > 0, "throttled time is recorded");
}

#[test]
fn burst_lets_saved_budget_run_once() {
    let registry = Registry::new();
    let root = registry.root();
    let capped = child(
        &root,
        "capped",
        &[
            ("cpu_limit", "0.2"),
            ("cpu_period", "10ms"),
            ("cpu_burst", "3ms"),
        ],
    );
    let mut sim = Sim::new(Box::new(Hierarchical::new(&registry)), MS);
    sim.add(
        &capped,
        Load::OnOff {
            on_ns: 10 * MS,
            off_ns: 40 * MS,
            phase_ns: 0,
        },
    );
    let mut per_period = vec![0u64; 100];
    sim.run_traced(1000 * MS, |run| {
        per_period[(run.start_ns / (10 * MS)) as usize] += run.len_ns
    });
    // Runnable in one period of five: 2 ms budget plus up to 3 ms carried over.
    assert_eq!(per_period[0], 2 * MS, "nothing saved yet at the start");
    for (i, &used) in per_period.iter().enumerate().skip(5).step_by(5) {
        assert_eq!(used, 5 * MS, "period {i}: budget plus full burst");
    }
}

#[test]
fn rebinding_moves_later_charges() {
    // The runtime charges whichever container a task is bound to when its poll ends.
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let b = child(&root, "b", &[]);
    let mut p = Hierarchical::new(&registry);
    let (ka, kb) = (p.attach(&a), p.attach(&b));
    p.charge(ka, 5);
    p.charge(kb, 7);
    assert_eq!(
        (a.usage().cpu_ns, b.usage().cpu_ns),
        (0, 0),
        "batched until flushed"
    );
    p.flush();
    assert_eq!((a.usage().cpu_ns, b.usage().cpu_ns), (5, 7));
}

#[test]
fn charges_reach_usage_when_idle_detached_dropped_or_in_time() {
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let b = child(&root, "b", &[]);
    let mut p = Hierarchical::new(&registry);
    let (ka, kb) = (p.attach(&a), p.attach(&b));
    p.set_runnable(ka, true);
    p.set_runnable(kb, true);
    p.charge(ka, 10);
    p.charge(kb, 20);
    p.set_runnable(ka, false);
    assert_eq!(a.usage().cpu_ns, 10, "going idle flushes");
    p.refill(rescon::sched::FLUSH_NS);
    assert_eq!(b.usage().cpu_ns, 20, "a millisecond of policy time flushes");
    p.charge(kb, rescon::sched::FLUSH_NS);
    assert_eq!(
        b.usage().cpu_ns,
        20 + rescon::sched::FLUSH_NS,
        "a millisecond of CPU flushes"
    );
    p.charge(ka, 1);
    p.charge(kb, 2);
    p.detach(ka);
    assert_eq!(a.usage().cpu_ns, 11, "detaching flushes");
    drop(p);
    assert_eq!(
        b.usage().cpu_ns,
        22 + rescon::sched::FLUSH_NS,
        "dropping the policy flushes"
    );
}

#[test]
fn own_work_competes_with_children_as_one_weighted_child() {
    let registry = Registry::new();
    let root = registry.root();
    let listener = child(&root, "listener", &[]);
    let conn = child(&listener, "conn", &[("share", "weight:300")]);
    let mut sim = Sim::new(Box::new(Hierarchical::new(&registry)), MS);
    sim.set_top(vec![root.clone()]);
    sim.add(&listener, Load::Backlogged);
    sim.add(&conn, Load::Backlogged);
    sim.run_for(4000 * MS);
    assert!(
        (sim.delivered(&conn) - 0.75).abs() < 0.001,
        "{}",
        sim.delivered(&conn)
    );
    assert!((sim.entitled(&conn) - 0.75).abs() < 1e-9);
    assert!((listener.usage().cpu_ns as f64 / 4e9 - 0.25).abs() < 0.001);
}

#[test]
fn reparenting_moves_scheduling() {
    let registry = Registry::new();
    let root = registry.root();
    let gold = child(&root, "gold", &[("class", "high")]);
    let bronze = child(&root, "bronze", &[]);
    let conn = child(&bronze, "conn", &[]);
    let other = child(&bronze, "other", &[]);
    let mut p = Hierarchical::new(&registry);
    let (kc, ko) = (p.attach(&conn), p.attach(&other));
    p.set_runnable(kc, true);
    p.set_runnable(ko, true);
    p.charge(kc, MS); // conn has run more: other is next
    assert_eq!(p.pick().unwrap().key, ko);
    root.reparent(&conn, Some(&gold)).unwrap();
    for _ in 0..10 {
        let pick = p.pick().unwrap();
        assert_eq!(
            pick.key, kc,
            "moved under a high-class parent, it runs first"
        );
        p.charge(pick.key, MS);
    }
    // The new parent's subtree usage includes what ran after the move.
    p.flush();
    assert_eq!(gold.usage_subtree().cpu_ns, 11 * MS);
}

#[test]
fn detaching_releases_the_mirror_and_the_container() {
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let a1 = child(&a, "a1", &[]);
    let mut p = Hierarchical::new(&registry);
    let k = p.attach(&a1);
    let k2 = p.attach(&a1);
    assert_eq!(k, k2, "one key per container");
    assert_eq!(p.mirrored(), 3, "the container and its ancestors");
    p.set_runnable(k, true);
    p.detach(k);
    assert!(p.pick().is_some(), "one attachment remains");
    p.detach(k);
    assert_eq!(p.pick(), None);
    assert_eq!(p.mirrored(), 0);
    let id = a1.id();
    drop((a, a1));
    assert!(
        root.lookup(id).is_err(),
        "the policy holds no reference after detach"
    );
}

#[test]
fn a_policy_keeps_its_containers_alive_while_attached() {
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let id = a.id();
    let mut p = Hierarchical::new(&registry);
    let k = p.attach(&a);
    drop(a);
    assert!(root.lookup(id).is_ok(), "a scheduler queue refers to it");
    p.detach(k);
    assert!(root.lookup(id).is_err());
}

#[test]
fn caps_hold_across_schedulers_sharing_a_container() {
    // Two workers, each with its own policy, serve one capped container: the shared budget
    // is leased in slices so their sum stays under the cap.
    let registry = Registry::new();
    let root = registry.root();
    let capped = child(
        &root,
        "capped",
        &[("cpu_limit", "0.5"), ("cpu_period", "10ms")],
    );
    let cfg = HierarchicalConfig {
        lease_ns: Some(MS / 2),
        ..Default::default()
    };
    let mut workers = [
        Hierarchical::with_config(&registry, cfg),
        Hierarchical::with_config(&registry, cfg),
    ];
    let keys: Vec<_> = workers.iter_mut().map(|w| w.attach(&capped)).collect();
    for (w, k) in workers.iter_mut().zip(&keys) {
        w.set_runnable(*k, true);
    }
    let quantum = 100_000;
    let mut used_per_period = vec![0u64; 50];
    for step in 0..(500 * MS / quantum) {
        let now = step * quantum;
        for w in workers.iter_mut() {
            w.refill(now);
            if let Some(pick) = w.pick() {
                let len = quantum.min(pick.slice_ns.unwrap_or(u64::MAX)).max(1);
                w.charge(pick.key, len);
                used_per_period[(now / (10 * MS)) as usize] += len;
            }
        }
    }
    for (i, &u) in used_per_period.iter().enumerate() {
        assert!(
            u <= 5 * MS,
            "period {i}: {u} ns on two workers over a 5 ms budget"
        );
        assert!(
            u >= 4 * MS,
            "period {i}: {u} ns, the budget should be mostly used"
        );
    }
}

#[test]
fn kernel_network_work_counts_against_a_cap() {
    // A container capped at 5 ms in 10 is charged 2 ms of the kernel's network CPU in every
    // period (measured outside its polls): its polls get what is left, 3 ms a period.
    let registry = Registry::new();
    let root = registry.root();
    let class = child(
        &root,
        "class",
        &[("cpu_limit", "0.5"), ("cpu_period", "10ms")],
    );
    let conn = child(&class, "conn", &[]);
    let mut w = Hierarchical::with_config(
        &registry,
        HierarchicalConfig {
            lease_ns: Some(MS / 2),
            ..Default::default()
        },
    );
    let k = w.attach(&conn);
    w.set_runnable(k, true);
    let quantum = 100_000;
    let mut used = vec![0u64; 30];
    for step in 0..(300 * MS / quantum) {
        let now = step * quantum;
        if now % (10 * MS) == 5 * MS {
            conn.charge_kernel_net(2 * MS);
        }
        w.refill(now);
        if let Some(pick) = w.pick() {
            let len = quantum.min(pick.slice_ns.unwrap_or(u64::MAX)).max(1);
            w.charge(pick.key, len);
            used[(now / (10 * MS)) as usize] += len;
        }
    }
    for (i, &u) in used.iter().enumerate().skip(2) {
        assert!(
            (5 * MS / 2..=3 * MS + MS / 2).contains(&u),
            "period {i}: polls ran {u} ns, expected about 3 ms of the 5 ms budget"
        );
    }
    assert_eq!(conn.usage().kernel_net_ns, 30 * 2 * MS);
    assert_eq!(class.usage_subtree().kernel_net_ns, 30 * 2 * MS);
}

#[test]
fn fifo_ignores_attributes_but_charges_usage() {
    let registry = Registry::new();
    let root = registry.root();
    let hole = child(&root, "hole", &[("priority", "0")]);
    let hi = child(&root, "hi", &[("class", "critical")]);
    let mut p = Fifo::new();
    let (k0, k1) = (p.attach(&hole), p.attach(&hi));
    p.set_runnable(k0, true);
    p.set_runnable(k1, true);
    let first = p.pick().unwrap();
    assert_eq!(
        first.key, k0,
        "first come, first served, whatever the attributes"
    );
    p.charge(first.key, 3);
    assert_eq!(p.pick().unwrap().key, k1);
    assert_eq!(hole.usage().cpu_ns, 3);
}

/// Runs `p` for `total` ns of fake time in quanta of 100 us, calling `tick` every 10 ms
/// (before the refill), and returns the poll time each key got.
fn run_busy(
    p: &mut Hierarchical,
    keys: &[rescon::sched::Key],
    total: u64,
    mut tick: impl FnMut(),
) -> Vec<u64> {
    let quantum = 100_000;
    let mut used = vec![0u64; keys.len()];
    for step in 0..(total / quantum) {
        let now = step * quantum;
        if now % (10 * MS) == 5 * MS {
            tick();
        }
        p.refill(now);
        let pick = p.pick().expect("always runnable");
        let len = quantum.min(pick.slice_ns.unwrap_or(u64::MAX)).max(1);
        p.charge(pick.key, len);
        let i = keys.iter().position(|k| *k == pick.key).unwrap();
        used[i] += len;
    }
    used
}

#[test]
fn kernel_network_work_counts_in_shares() {
    // Two equal siblings, both always runnable; one is charged 2 ms of the kernel's network
    // CPU every 10 ms (measured outside its polls). Shares hold over polls and network work
    // together: a's polls plus its 60 ms of network work equal b's polls, so of 300 ms of
    // polls a gets 120 and b 180.
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let b = child(&root, "b", &[]);
    let mut p = Hierarchical::new(&registry);
    let (ka, kb) = (p.attach(&a), p.attach(&b));
    p.set_runnable(ka, true);
    p.set_runnable(kb, true);
    let used = run_busy(&mut p, &[ka, kb], 300 * MS, || a.charge_kernel_net(2 * MS));
    let (ua, ub) = (used[0], used[1]);
    assert!(
        (115 * MS..=125 * MS).contains(&ua) && (175 * MS..=185 * MS).contains(&ub),
        "a polled {ua} ns and b {ub} ns: expected about 120 ms and 180 ms"
    );
    drop(p);
    // Recorded once, as network work, not as polls.
    assert_eq!(a.usage().kernel_net_ns, 60 * MS);
    assert_eq!(a.usage().cpu_ns, ua);
}

#[test]
fn a_weight_holds_over_network_work() {
    // weight 3 against 1: with a's 60 ms of network work, a + 60 = 3 * b and a + b = 300,
    // so a polls 210 ms and b 90 ms (without the work, 225 and 75).
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[("share", "weight:3")]);
    let b = child(&root, "b", &[("share", "weight:1")]);
    let mut p = Hierarchical::new(&registry);
    let (ka, kb) = (p.attach(&a), p.attach(&b));
    p.set_runnable(ka, true);
    p.set_runnable(kb, true);
    let used = run_busy(&mut p, &[ka, kb], 300 * MS, || a.charge_kernel_net(2 * MS));
    assert!(
        (205 * MS..=215 * MS).contains(&used[0]),
        "a polled {} ns, expected about 210 ms",
        used[0]
    );
}

#[test]
fn interrupted_polls_are_credited_back() {
    // b's polls were interrupted by 2 ms of softirq (a's packets) every 10 ms: a is charged
    // that time as network work, and b is credited it. b's credit is taken out of its
    // polls' usage, and offsets its own later network work in the shares: b is charged 2 ms
    // of its own network work too, which the credit cancels, so a and b split as in
    // `kernel_network_work_counts_in_shares`.
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let b = child(&root, "b", &[]);
    let mut p = Hierarchical::new(&registry);
    let (ka, kb) = (p.attach(&a), p.attach(&b));
    p.set_runnable(ka, true);
    p.set_runnable(kb, true);
    let used = run_busy(&mut p, &[ka, kb], 300 * MS, || {
        a.charge_kernel_net(2 * MS);
        b.credit_cpu(2 * MS);
        b.charge_kernel_net(2 * MS);
    });
    assert!(
        (115 * MS..=125 * MS).contains(&used[0]),
        "a polled {} ns, expected about 120 ms",
        used[0]
    );
    drop(p);
    assert_eq!(b.usage().cpu_ns, used[1] - 60 * MS);
    assert_eq!(b.usage().kernel_net_ns, 60 * MS);
    // Never below zero.
    let idle = child(&root, "idle", &[]);
    idle.credit_cpu(MS);
    assert_eq!(idle.usage().cpu_ns, 0);
}

#[test]
fn a_credit_gives_back_cap_budget() {
    // Capped at 5 ms in 10, its polls interrupted by 1 ms of others' softirq each period:
    // credited back, the polls get the whole 5 ms of their own.
    let registry = Registry::new();
    let root = registry.root();
    let class = child(
        &root,
        "class",
        &[("cpu_limit", "0.5"), ("cpu_period", "10ms")],
    );
    let mut w = Hierarchical::with_config(
        &registry,
        HierarchicalConfig {
            lease_ns: Some(MS / 2),
            ..Default::default()
        },
    );
    let k = w.attach(&class);
    w.set_runnable(k, true);
    let quantum = 100_000;
    let mut used = vec![0u64; 30];
    for step in 0..(300 * MS / quantum) {
        let now = step * quantum;
        if now % (10 * MS) == 5 * MS {
            class.credit_cpu(MS);
        }
        w.refill(now);
        if let Some(pick) = w.pick() {
            let len = quantum.min(pick.slice_ns.unwrap_or(u64::MAX)).max(1);
            w.charge(pick.key, len);
            used[(now / (10 * MS)) as usize] += len;
        }
    }
    for (i, &u) in used.iter().enumerate().skip(2) {
        assert!(
            (5 * MS + MS / 2..=6 * MS + MS / 2).contains(&u),
            "period {i}: polls ran {u} ns, expected about 6 ms (5 ms of budget, 1 ms credited)"
        );
    }
}
