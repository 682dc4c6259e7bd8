//! Threads bound to a container's cgroups are charged to and limited by it.

mod common;

use common::*;
use rescon::Registry;
use rescon_linux::cgroup::{Config, LEAF, V2Mode, current_tid};
use std::time::{Duration, Instant};

/// Nanoseconds the calling thread has run (first field of its schedstat).
fn thread_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

fn spin(d: Duration) {
    let t = Instant::now();
    let mut x = 0u64;
    while t.elapsed() < d {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
}

#[test]
fn bound_thread_is_charged_and_limited() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "bound_thread_is_charged_and_limited") else {
        return;
    };
    let pool = kernel_child(
        &registry.root(),
        "blocking-pool",
        &[("cpu_limit", "20%"), ("cpu_period", "20ms")],
    );
    m.attach(&pool).unwrap();
    m.sample().unwrap();
    let before = pool.usage().kernel_cpu_ns;
    let wall = Duration::from_millis(1500);
    let (tid, cpu, cg_bound, cg_after) = std::thread::scope(|s| {
        s.spawn(|| {
            let tid = current_tid();
            m.bind_current_thread(&pool).unwrap();
            let cg_bound = cgroup_of(tid, "cpu");
            let c0 = thread_cpu_ns();
            spin(wall);
            let cpu = thread_cpu_ns() - c0;
            m.unbind_current_thread().unwrap();
            (tid, cpu, cg_bound, cgroup_of(tid, "cpu"))
        })
        .join()
        .unwrap()
    });
    m.sample().unwrap();
    let charged = pool.usage().kernel_cpu_ns - before;
    let frac = cpu as f64 / wall.as_nanos() as f64;
    eprintln!(
        "thread {tid}: ran {} ms in {wall:?} ({frac:.3}), charged {} ms",
        cpu / 1_000_000,
        charged / 1_000_000
    );
    if let Some(cg) = cg_bound {
        assert!(
            cg.ends_with(&format!("c{}-blocking-pool/{LEAF}", pool.id())),
            "{cg}"
        );
        let origin = m
            .layout()
            .controller(rescon_linux::cgroup::Controller::Cpu)
            .unwrap();
        assert_eq!(cg_after.as_deref(), Some(origin.own_relative()));
    }
    assert!(
        (frac - 0.20).abs() <= 0.03,
        "the thread got {frac:.3} of a CPU under a 20% limit"
    );
    let diff = charged.abs_diff(cpu) as f64 / cpu as f64;
    assert!(
        diff < 0.10,
        "charged {charged} ns for {cpu} ns of thread CPU"
    );
}

/// Shutdown moves bound threads back (else their cgroups could not be removed).
#[test]
fn shutdown_unbinds_threads() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "shutdown_unbinds_threads") else {
        return;
    };
    let c = kernel_child(&registry.root(), "c", &[]);
    let tid = current_tid();
    let before = cgroup_of(tid, "cpu");
    m.bind_current_thread(&c).unwrap();
    assert_ne!(cgroup_of(tid, "cpu"), before);
    let dirs = m.subtree_dirs();
    m.shutdown().unwrap();
    assert_eq!(cgroup_of(tid, "cpu"), before);
    assert!(dirs.iter().all(|d| !d.exists()));
}

/// In a threaded v2 subtree, threads are bound in v2 too; kill works without cgroup.kill.
#[test]
fn threaded_mode_binds_threads_in_v2() {
    let registry = Registry::new();
    let cfg = Config {
        v2_mode: V2Mode::Threaded,
        ..config()
    };
    let Some(m) = manager_with(&registry, "threaded_mode_binds_threads_in_v2", cfg) else {
        return;
    };
    if m.layout().v2().is_none() {
        eprintln!("threaded_mode_binds_threads_in_v2: skipped: no cgroup v2 mounted");
        return;
    }
    let c = kernel_child(&registry.root(), "t", &[]);
    let v2_before = cgroup_of(current_tid(), "");
    std::thread::scope(|s| {
        s.spawn(|| {
            let tid = current_tid();
            m.bind_current_thread(&c).unwrap();
            let v2 = cgroup_of(tid, "").unwrap();
            assert!(v2.ends_with(&format!("c{}-t/{LEAF}", c.id())), "{v2}");
            m.unbind_current_thread().unwrap();
            assert_eq!(cgroup_of(tid, ""), v2_before);
        });
    });
    let mut child = m.command(&c, "sleep").arg("30").spawn().unwrap();
    let v2 = cgroup_of(child.id() as i32, "").unwrap();
    assert!(v2.ends_with(&format!("c{}-t/{LEAF}", c.id())), "{v2}");
    // This thread stays bound while the container's processes are killed.
    m.bind_current_thread(&c).unwrap();
    let rep = m.kill(&c).unwrap();
    assert!(
        !rep.cgroup_kill,
        "cgroup.kill is refused in threaded cgroups"
    );
    assert!(rep.signalled >= 1);
    assert!(!child.wait().unwrap().status.success());
    m.unbind_current_thread().unwrap();
}
