//! `primitives`: the cost of the container operations, beside the paper's Table 1.
//!
//! Each operation is timed over many iterations with a monotonic clock around the whole loop,
//! after a warm-up, and reported as a mean. Nothing here asserts a figure: the numbers are
//! for the report and the issue notes.
//!
//! The paper's operations are system calls; ours are user-level calls, except "move container
//! between processes", which is measured between two processes (`primitives_handle`).

use rescon::sched::{Hierarchical, Policy};
use rescon::{Attributes, Container, ContainerId, Registry};
use serde::Serialize;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Scale the iteration counts (0.1 for a quick look).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
}

/// One measured operation.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Op {
    pub mean_ns: f64,
    pub iterations: u64,
}

/// The paper's Table 1 (Digital UNIX on a 500 MHz Alpha), microseconds, by our op name.
pub const PAPER_US: &[(&str, &str, f64)] = &[
    ("create", "create resource container", 2.36),
    ("destroy", "destroy resource container", 2.10),
    ("rebind", "change thread's resource binding", 1.04),
    ("usage", "obtain container resource usage", 2.04),
    ("set_attr", "set container attributes", 2.10),
    ("get_attr", "get container attributes", 2.10),
    (
        "move_between_processes",
        "move container between processes",
        3.15,
    ),
    ("lookup_id", "obtain handle for existing container", 1.90),
];

#[derive(Serialize)]
struct Report {
    ops: BTreeMap<&'static str, Op>,
}

fn iters(base: u64, scale: f64) -> u64 {
    ((base as f64 * scale) as u64).max(100)
}

/// Rounds per measurement: each op is timed in this many rounds and the median round's mean is
/// reported, so that a hiccup of the (virtual) machine in one round does not move the figure.
pub const ROUNDS: usize = 5;

/// The median of round means.
pub fn median_of(mut means: Vec<f64>) -> f64 {
    means.sort_by(f64::total_cmp);
    means[means.len() / 2]
}

/// Times `n` calls of `f` (in [`ROUNDS`] rounds, after a warm-up) and returns the median
/// round's mean.
pub fn time_loop(n: u64, mut f: impl FnMut(u64)) -> Op {
    for i in 0..n.min(1000) {
        f(i);
    }
    let per_round = (n / ROUNDS as u64).max(1);
    let means = (0..ROUNDS as u64)
        .map(|r| {
            let t = Instant::now();
            for i in r * per_round..(r + 1) * per_round {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / per_round as f64
        })
        .collect();
    Op {
        mean_ns: median_of(means),
        iterations: per_round * ROUNDS as u64,
    }
}

fn user_level_ops(scale: f64) -> BTreeMap<&'static str, Op> {
    let mut ops = BTreeMap::new();
    let registry = Registry::new();
    let root = registry.root();
    let parent = root
        .create_child("bench", Attributes::default())
        .expect("create");

    // create and destroy in steady state: batches of children made, then dropped, so the
    // memory a batch frees serves the next (as a server's per-connection containers do).
    let batch = 1000;
    let rounds = iters(200, scale).max(20);
    let attrs = Attributes::default();
    let mut kept: Vec<Container> = Vec::with_capacity(batch);
    let (mut create, mut destroy) = (Vec::new(), Vec::new());
    for _round in 0..ROUNDS {
        let (mut create_ns, mut destroy_ns) = (0u128, 0u128);
        for _ in 0..rounds / ROUNDS as u64 + 1 {
            let t = Instant::now();
            for _ in 0..batch {
                kept.push(parent.create_child("c", attrs).expect("create"));
            }
            create_ns += t.elapsed().as_nanos();
            let t = Instant::now();
            kept.clear();
            destroy_ns += t.elapsed().as_nanos();
        }
        let n = (rounds / ROUNDS as u64 + 1) * batch as u64;
        create.push(create_ns as f64 / n as f64);
        destroy.push(destroy_ns as f64 / n as f64);
    }
    let n = (rounds / ROUNDS as u64 + 1) * batch as u64 * ROUNDS as u64;
    let mean = |means: Vec<f64>| Op {
        mean_ns: median_of(means),
        iterations: n,
    };
    ops.insert("create", mean(create));
    ops.insert("destroy", mean(destroy));

    let c = parent
        .create_child("probe", Attributes::default())
        .expect("create");
    let n = iters(2_000_000, scale);
    ops.insert(
        "usage",
        time_loop(n, |_| {
            black_box(black_box(&c).usage());
        }),
    );
    ops.insert(
        "usage_subtree",
        time_loop(iters(200_000, scale), |_| {
            black_box(black_box(&parent).usage_subtree());
        }),
    );
    ops.insert(
        "get_attr",
        time_loop(n, |_| {
            black_box(black_box(&c).attrs());
        }),
    );
    let mut a1 = Attributes::default();
    a1.set("priority", "50").expect("attr");
    let a2 = Attributes::default();
    ops.insert(
        "set_attr",
        time_loop(n, |i| {
            parent
                .set_attrs(&c, if i % 2 == 0 { a1 } else { a2 })
                .expect("set");
        }),
    );
    // Not the paper's "move container between processes" (that is `move_between_processes`,
    // measured between two processes by `primitives_handle`): a clone of a handle inside one
    // process, an atomic increment.
    ops.insert(
        "clone_handle_in_process",
        time_loop(n, |_| {
            black_box(black_box(&c).clone());
        }),
    );
    let id: ContainerId = c.id();
    ops.insert(
        "lookup_id",
        time_loop(n, |_| {
            black_box(root.lookup(black_box(id)).expect("lookup"));
        }),
    );
    ops.insert("rebind", crate::runtime::rebind_ns(iters(2_000_000, scale)));
    ops.insert("pick_charge_100k", pick_charge(scale, 1));
    ops.insert("pick_charge_100k_1pct_runnable", pick_charge(scale, 100));
    ops.insert(
        "wake_pick_charge_sleep_64",
        wake_pick_charge_sleep(scale, 64),
    );
    ops
}

/// What a worker does per request when each connection has its own container (the paper's
/// model, and rescon-httpd's): a connection's container becomes runnable when its socket is
/// ready, is picked, charged for the poll and goes idle again. `conns` containers under one
/// parent; batches of 1 to 16 of them wake together, in a pseudo-random order (a fixed
/// sequence, so runs compare), as an epoll batch does; each is charged 2 to 20 us. The figure
/// is per request: the wake, the pick, the sleep and the charge (in the runtime's order: a
/// container whose queue a burst emptied goes idle before it is charged).
fn wake_pick_charge_sleep(scale: f64, conns: usize) -> Op {
    let registry = Registry::new();
    let web = registry
        .root()
        .create_child("web", Attributes::default())
        .expect("create");
    let mut policy = Hierarchical::new(&registry);
    let keep: Vec<Container> = (0..conns)
        .map(|_| {
            web.create_child("conn", Attributes::default())
                .expect("create")
        })
        .collect();
    let keys: Vec<_> = keep.iter().map(|c| policy.attach(c)).collect();
    // The connection a picked key is, without a search in the timed loop.
    let mut conn_of = vec![usize::MAX; keys.iter().map(|k| k.index() + 1).max().unwrap_or(0)];
    for (c, k) in keys.iter().enumerate() {
        conn_of[k.index()] = c;
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut now = 0u64;
    let mut awake = 0usize;
    let mut is_awake = vec![false; conns];
    time_loop(iters(2_000_000, scale), |_| {
        if awake == 0 {
            for _ in 0..1 + next() % 16 {
                let c = next() as usize % conns;
                if !is_awake[c] {
                    is_awake[c] = true;
                    awake += 1;
                    policy.set_runnable(keys[c], true);
                }
            }
        }
        policy.refill(now);
        let p = policy.pick().expect("runnable");
        let ns = 2_000 + next() % 18_000;
        now += ns;
        // Idle first, then charged: the runtime's order (`Policy::charge`).
        policy.set_runnable(p.key, false);
        policy.charge(p.key, ns);
        let c = conn_of[p.key.index()];
        is_awake[c] = false;
        awake -= 1;
    })
}

/// pick plus charge among 100,000 leaf containers at depth 3 (10 x 100 x 100), of which one in
/// `runnable_every` has work.
fn pick_charge(scale: f64, runnable_every: usize) -> Op {
    let registry = Registry::new();
    let root = registry.root();
    let mut policy = Hierarchical::new(&registry);
    let mut leaves = Vec::with_capacity(100_000);
    for a in 0..10 {
        let ca = root
            .create_child(&format!("a{a}"), Attributes::default())
            .expect("create");
        for b in 0..100 {
            let cb = ca
                .create_child(&format!("b{b}"), Attributes::default())
                .expect("create");
            for _ in 0..100 {
                let leaf = cb
                    .create_child("leaf", Attributes::default())
                    .expect("create");
                let k = policy.attach(&leaf);
                policy.set_runnable(k, leaves.len() % runnable_every == 0);
                leaves.push(leaf);
            }
        }
    }
    policy.refill(0);
    time_loop(iters(2_000_000, scale), |_| {
        let p = policy.pick().expect("runnable");
        policy.charge(p.key, 50_000);
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.scale > 0.0, "--scale must be positive");
    eprintln!("measuring user-level primitives...");
    let mut ops = user_level_ops(args.scale);
    crate::primitives_handle::add_to(&mut ops, args.scale);
    crate::primitives_kernel::add_to(&mut ops, args.scale);
    let report = Report { ops };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:38} {:>12} {:>12} {:>10}",
        "operation", "paper (us)", "rescon (ns)", "speed-up"
    );
    for (op, desc, us) in PAPER_US {
        match report.ops.get(op) {
            Some(m) => println!(
                "{:38} {:>12.2} {:>12.1} {:>9.0}x",
                desc,
                us,
                m.mean_ns,
                us * 1000.0 / m.mean_ns
            ),
            None => println!("{:38} {:>12.2} {:>12} {:>10}", desc, us, "-", "-"),
        }
    }
    println!(
        "\nAll rows but one are user-level calls; \"move container between processes\" is the \
         paper's operation: a handle (a descriptor) sent to another process, received and used \
         there once (rescon-handle). clone_handle_in_process below is an in-process clone, not \
         comparable.\n"
    );
    for (op, m) in &report.ops {
        if !PAPER_US.iter().any(|(o, _, _)| o == op) {
            println!("{:38} {:>12} {:>12.1}", op, "", m.mean_ns);
        }
    }
    Ok(())
}
