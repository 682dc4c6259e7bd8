//! The kernel enforces what the attributes say: weights 4:1 split one core 80/20, and a 30%
//! limit holds, both read back from the containers' usage (`kernel_cpu_ns`).
//!
//! Each test measures 2.5 s of CPU after a short warm-up, on a core of its own when the
//! machine has two (the tests of this file run in parallel).

mod common;

use common::*;
use rescon::{Container, Registry};
use rescon_linux::cgroup::{Child, Manager};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_millis(2500);

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn busy(m: &Manager, c: &Container, core: usize) -> Child {
    m.command(c, "sh")
        .args(["-c", BUSY])
        .cpu_affinity(&[core])
        .spawn()
        .unwrap()
}

/// Kernel CPU of each container over the window, and the window's wall time.
fn measure(m: &Manager, cs: &[&Container]) -> (Vec<u64>, Duration) {
    std::thread::sleep(Duration::from_millis(300));
    m.sample().unwrap();
    let before: Vec<u64> = cs.iter().map(|c| c.usage().kernel_cpu_ns).collect();
    let t = Instant::now();
    std::thread::sleep(WINDOW);
    m.sample().unwrap();
    let wall = t.elapsed();
    let after: Vec<u64> = cs.iter().map(|c| c.usage().kernel_cpu_ns).collect();
    (
        after.iter().zip(&before).map(|(a, b)| a - b).collect(),
        wall,
    )
}

#[test]
fn weights_4_to_1_split_one_core_80_20() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "weights_4_to_1_split_one_core_80_20") else {
        return;
    };
    let web = kernel_child(&registry.root(), "web", &[]);
    let a = kernel_child(&web, "a", &[("weight", "400")]);
    let b = kernel_child(&web, "b", &[("weight", "100")]);
    let core = 0;
    let mut ca = busy(&m, &a, core);
    let mut cb = busy(&m, &b, core);
    let (d, _) = measure(&m, &[&a, &b]);
    m.kill(&web).unwrap();
    ca.wait().unwrap();
    cb.wait().unwrap();
    let share = d[0] as f64 / (d[0] + d[1]) as f64;
    eprintln!(
        "a {} ms, b {} ms: a's share {:.3}",
        d[0] / 1_000_000,
        d[1] / 1_000_000,
        share
    );
    assert!(
        (share - 0.8).abs() <= 0.03,
        "a's share {share:.3}, want 0.80 +- 0.03"
    );
    // The parent's subtree usage is the sum (no double counting).
    let sub = web.usage_subtree().kernel_cpu_ns;
    let sum = a.usage().kernel_cpu_ns + b.usage().kernel_cpu_ns + web.usage().kernel_cpu_ns;
    assert_eq!(sub, sum);
    assert!(
        web.usage().kernel_cpu_ns < 50_000_000,
        "web's own: {}",
        web.usage().kernel_cpu_ns
    );
}

#[test]
fn cpu_limit_of_30_percent_holds() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "cpu_limit_of_30_percent_holds") else {
        return;
    };
    // A short period so that the window holds many of them.
    let cgi = kernel_child(
        &registry.root(),
        "cgi",
        &[
            ("cpu_limit", "30%"),
            ("cpu_period", "20ms"),
            ("weight", "10000"),
        ],
    );
    let core = if cores() > 1 { 1 } else { 0 };
    let mut c = busy(&m, &cgi, core);
    let (d, wall) = measure(&m, &[&cgi]);
    m.kill(&cgi).unwrap();
    c.wait().unwrap();
    let frac = d[0] as f64 / wall.as_nanos() as f64;
    eprintln!("limited to 30%: got {:.3} of a CPU over {wall:?}", frac);
    assert!(
        (frac - 0.30).abs() <= 0.02,
        "got {frac:.3} of a CPU, want 0.30 +- 0.02"
    );
    let stats = m.stats(&cgi).unwrap();
    assert!(stats.nr_throttled.unwrap_or(1) > 0, "{stats:?}");
    assert!(cgi.usage().throttled_ns > 0, "throttled time is reported");
}
