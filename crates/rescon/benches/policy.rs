//! Criterion benchmarks of the container primitives and the scheduling policy, beside
//! `rescon-bench primitives` (which times plain loops and prints the paper's Table 1 next to
//! them): criterion repeats each measurement until it is stable and reports a confidence
//! interval, which on a shared machine tells a real change from noise.
//!
//! `cargo bench -p rescon`

use criterion::{Criterion, criterion_group, criterion_main};
use rescon::sched::{Hierarchical, Policy};
use rescon::{Attributes, Registry};
use std::hint::black_box;

fn primitives(c: &mut Criterion) {
    let registry = Registry::new();
    let root = registry.root();
    let parent = root.create_child("p", Attributes::default()).unwrap();
    c.bench_function("create+destroy", |b| {
        b.iter(|| {
            let c = parent.create_child("c", Attributes::default()).unwrap();
            drop(black_box(c));
        })
    });
    let child = parent.create_child("c", Attributes::default()).unwrap();
    c.bench_function("usage", |b| b.iter(|| black_box(child.usage())));
    c.bench_function("get_attr", |b| b.iter(|| black_box(child.attrs())));
    let id = child.id();
    c.bench_function("lookup_id", |b| {
        b.iter(|| black_box(root.lookup(black_box(id)).unwrap()))
    });
}

/// pick plus charge among `10 x 100 x 100` leaves at depth 3, one in `every` runnable.
fn pick_charge(c: &mut Criterion, every: usize, name: &str) {
    let registry = Registry::new();
    let root = registry.root();
    let mut policy = Hierarchical::new(&registry);
    let mut leaves = Vec::with_capacity(100_000);
    for a in 0..10 {
        let ca = root
            .create_child(&format!("a{a}"), Attributes::default())
            .unwrap();
        for b in 0..100 {
            let cb = ca
                .create_child(&format!("b{b}"), Attributes::default())
                .unwrap();
            for _ in 0..100 {
                let leaf = cb.create_child("leaf", Attributes::default()).unwrap();
                let k = policy.attach(&leaf);
                policy.set_runnable(k, leaves.len() % every == 0);
                leaves.push(leaf);
            }
        }
    }
    policy.refill(0);
    c.bench_function(name, |b| {
        b.iter(|| {
            let p = policy.pick().expect("runnable");
            policy.charge(p.key, 50_000);
        })
    });
}

fn policy(c: &mut Criterion) {
    pick_charge(c, 1, "pick_charge_100k");
    pick_charge(c, 100, "pick_charge_100k_1pct_runnable");
}

criterion_group!(benches, primitives, policy);
criterion_main!(benches);
