//! The kernel equivalents of the container primitives, measured beside the user-level ones in
//! `primitives`: what a kernel-enforced container (a cgroup in every hierarchy used) costs.
//!
//! - `cgroup_create` / `cgroup_destroy`: mirroring a container as cgroups, and removing them;
//! - `thread_bind_kernel`: moving this thread between two containers' cgroups, back to back;
//!   `thread_bind_kernel_spaced`: the median single move with 10 ms between moves (the case a
//!   server meets, which may pay for an RCU grace period);
//! - `spawn_in_container`: starting `/bin/true` inside a container (clone3 into its cgroup) and
//!   reaping it; `spawn_plain`: the same with `std::process::Command`;
//! - `cgroup_sample`: reading one container's kernel counters into its usage;
//! - `cgroup_apply_weight`: a weight change applied to the kernel.
//!
//! Without root or cgroups, prints why on stderr and adds nothing.

use crate::primitives::{Op, ROUNDS, median_of, time_loop};
use rescon::{Attributes, Registry};
use rescon_linux::cgroup::{Config, Manager};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn iters(base: u64, scale: f64) -> u64 {
    ((base as f64 * scale) as u64).max(20)
}

fn kernel_attrs() -> Attributes {
    let mut a = Attributes::default();
    a.set("enforcement", "kernel").expect("valid");
    a
}

/// Adds the kernel ops to `ops`, or explains on stderr why they are left out.
pub fn add_to(ops: &mut BTreeMap<&'static str, Op>, scale: f64) {
    match measure(scale) {
        Ok(k) => ops.extend(k),
        Err(why) => eprintln!("kernel primitives left out: {why}"),
    }
}

fn measure(scale: f64) -> Result<BTreeMap<&'static str, Op>, String> {
    let config = Config::default();
    let probe = Manager::probe(&config);
    if let Some(e) = probe.error() {
        return Err(e.to_string());
    }
    eprintln!("measuring kernel primitives...");
    let registry = Registry::new();
    let root = registry.root();
    let m = Manager::new(&registry, config).map_err(|e| e.to_string())?;
    let mut ops = BTreeMap::new();
    let err = |e: rescon_linux::cgroup::Error| e.to_string();

    // Create and destroy: in each round, a batch of containers mirrored, then detached.
    let per_round = (iters(1000, scale) / ROUNDS as u64).max(1);
    let (mut creates, mut destroys) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let batch: Vec<_> = (0..per_round)
            .map(|i| root.create_child(&format!("k{r}-{i}"), kernel_attrs()))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        for c in &batch {
            m.attach(c).map_err(err)?;
        }
        creates.push(t.elapsed().as_nanos() as f64 / per_round as f64);
        let t = Instant::now();
        for c in &batch {
            m.detach(c).map_err(err)?;
        }
        destroys.push(t.elapsed().as_nanos() as f64 / per_round as f64);
    }
    let n = per_round * ROUNDS as u64;
    ops.insert(
        "cgroup_create",
        Op {
            mean_ns: median_of(creates),
            iterations: n,
        },
    );
    ops.insert(
        "cgroup_destroy",
        Op {
            mean_ns: median_of(destroys),
            iterations: n,
        },
    );

    // Thread binding, on a thread of its own so the caller's thread stays where it was.
    let a = root
        .create_child("bind-a", kernel_attrs())
        .map_err(|e| e.to_string())?;
    let b = root
        .create_child("bind-b", kernel_attrs())
        .map_err(|e| e.to_string())?;
    let n = iters(2000, scale);
    let spaced_n = iters(40, scale.min(1.0));
    let (back_to_back, spaced) = std::thread::scope(|s| {
        s.spawn(|| -> Result<(Op, Op), String> {
            let mut failed = None;
            let op = time_loop(n, |i| {
                let c = if i % 2 == 0 { &a } else { &b };
                if let Err(e) = m.bind_current_thread(c) {
                    failed.get_or_insert(e.to_string());
                }
            });
            let mut spaced = Vec::new();
            for i in 0..spaced_n {
                std::thread::sleep(Duration::from_millis(10));
                let c = if i % 2 == 0 { &a } else { &b };
                let t = Instant::now();
                if let Err(e) = m.bind_current_thread(c) {
                    failed.get_or_insert(e.to_string());
                }
                spaced.push(t.elapsed().as_nanos() as f64);
            }
            m.unbind_current_thread().map_err(err)?;
            if let Some(e) = failed {
                return Err(e);
            }
            // Single moves are too short to time in rounds: the median move is reported.
            let spaced = Op {
                mean_ns: median_of(spaced),
                iterations: spaced_n,
            };
            Ok((op, spaced))
        })
        .join()
        .map_err(|_| "the binding thread panicked".to_string())?
    })?;
    ops.insert("thread_bind_kernel", back_to_back);
    ops.insert("thread_bind_kernel_spaced", spaced);

    // Spawning /bin/true and reaping it, in a container and plainly.
    let n = iters(300, scale);
    let mut failed = None;
    ops.insert(
        "spawn_in_container",
        time_loop(n, |_| {
            match m
                .command(&a, "/bin/true")
                .spawn()
                .and_then(|mut c| c.wait())
            {
                Ok(_) => {}
                Err(e) => {
                    failed.get_or_insert(e.to_string());
                }
            }
        }),
    );
    ops.insert(
        "spawn_plain",
        time_loop(n, |_| {
            match std::process::Command::new("/bin/true")
                .spawn()
                .and_then(|mut c| c.wait())
            {
                Ok(_) => {}
                Err(e) => {
                    failed.get_or_insert(e.to_string());
                }
            }
        }),
    );
    if let Some(e) = failed {
        return Err(e);
    }

    // Usage and attributes.
    m.detach(&b).map_err(err)?;
    let n = iters(20_000, scale);
    ops.insert(
        "cgroup_sample",
        time_loop(n, |_| {
            let _ = std::hint::black_box(m.sample());
        }),
    );
    let n = iters(5_000, scale);
    ops.insert(
        "cgroup_apply_weight",
        time_loop(n, |i| {
            let w = if i % 2 == 0 { "200" } else { "100" };
            let _ = root.update(&a, |x| x.set("weight", w));
            std::hint::black_box(m.apply());
        }),
    );
    m.shutdown().map_err(err)?;
    Ok(ops)
}
