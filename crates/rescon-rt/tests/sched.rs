//! The runtime's scheduling guarantees, on one worker: shares, classes, priority 0, caps,
//! rebinding. Ratios of charged CPU are compared, never wall-clock times.

use rescon::{Attributes, Container, Registry};
use rescon_rt::{Builder, Runtime};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn one_worker(registry: &Registry) -> Runtime {
    Builder::new(registry).workers(1).build().expect("runtime")
}

fn child(parent: &Container, name: &str, attrs: &[(&str, &str)]) -> Container {
    let mut a = Attributes::default();
    for (k, v) in attrs {
        a.set(k, v).unwrap();
    }
    parent.create_child(name, a).unwrap()
}

/// Burns about `ns` of CPU.
fn spin(ns: u64) {
    let t = Instant::now();
    while t.elapsed().as_nanos() < ns as u128 {
        std::hint::spin_loop();
    }
}

/// A CPU-bound task: slices of 50 us with a yield between, until `stop`.
async fn busy(stop: Arc<AtomicBool>) {
    while !stop.load(SeqCst) {
        spin(50_000);
        rescon_rt::yield_now().await;
    }
}

#[test]
fn weights_3_to_1_share_one_worker_3_to_1() {
    let registry = Registry::new();
    let rt = one_worker(&registry);
    let root = registry.root();
    let a = child(&root, "a", &[("share", "weight:300")]);
    let b = child(&root, "b", &[("share", "weight:100")]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in [&a, &b] {
        for _ in 0..3 {
            tasks.push(rt.spawn_in(c, busy(stop.clone())));
        }
    }
    std::thread::sleep(Duration::from_millis(400));
    stop.store(true, SeqCst);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    rt.flush_usage();
    let (ua, ub) = (a.usage().cpu_ns as f64, b.usage().cpu_ns as f64);
    let ratio = ua / ub;
    eprintln!(
        "a {:.1} ms, b {:.1} ms, ratio {ratio:.3}",
        ua / 1e6,
        ub / 1e6
    );
    assert!(ua > 50e6, "a ran: {ua}");
    assert!(
        (ratio / 3.0 - 1.0).abs() <= 0.05,
        "ratio {ratio:.3}, want 3 within 5%"
    );
}

#[test]
fn higher_class_runs_first() {
    let registry = Registry::new();
    let rt = one_worker(&registry);
    let root = registry.root();
    let gate_c = child(&root, "gate", &[]);
    let normal = child(&root, "normal", &[("class", "normal")]);
    let high = child(&root, "high", &[("class", "high")]);
    let order = Arc::new(Mutex::new(Vec::new()));
    let (entered, release) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    // Occupy the only worker, so the next two tasks are both queued when it picks.
    let gate = {
        let (entered, release) = (entered.clone(), release.clone());
        rt.spawn_in(&gate_c, async move {
            entered.store(true, SeqCst);
            while !release.load(SeqCst) {
                std::hint::spin_loop();
            }
        })
    };
    while !entered.load(SeqCst) {
        std::thread::yield_now();
    }
    let mut tasks = Vec::new();
    for _ in 0..3 {
        for (c, name) in [(&normal, "normal"), (&high, "high")] {
            let order = order.clone();
            tasks.push(rt.spawn_in(c, async move { order.lock().unwrap().push(name) }));
        }
    }
    release.store(true, SeqCst);
    rt.block_on(async {
        gate.await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order,
        ["high", "high", "high", "normal", "normal", "normal"],
        "every high-class task runs before any normal one"
    );
}

#[test]
fn priority_zero_never_runs_and_its_listener_accepts_nothing() {
    let registry = Registry::new();
    let rt = one_worker(&registry);
    let root = registry.root();
    let hole = child(&root, "hole", &[("priority", "0")]);
    let ran = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let listener = rt
        .block_on(async { rescon_rt::TcpListener::bind_in("127.0.0.1:0".parse().unwrap(), &hole) })
        .unwrap();
    let addr = listener.local_addr().unwrap();
    {
        let ran = ran.clone();
        rt.spawn_in(&hole, async move { ran.store(true, SeqCst) });
    }
    {
        let accepted = accepted.clone();
        rt.spawn_in(&hole, async move {
            while listener.accept().await.is_ok() {
                accepted.fetch_add(1, SeqCst);
            }
        });
    }
    // The kernel completes the handshakes (backlog); the runtime must not accept them.
    let clients: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Other work runs meanwhile, so the worker is busy picking.
    let other = child(&root, "other", &[]);
    rt.block_on(rt.spawn_in(&other, async {
        for _ in 0..50 {
            rescon_rt::sleep(Duration::from_millis(1)).await;
        }
    }))
    .unwrap();
    assert!(!ran.load(SeqCst), "a task of a priority-0 container ran");
    assert_eq!(accepted.load(SeqCst), 0, "a priority-0 listener accepted");
    assert_eq!(hole.usage().polls, 0);
    // The same container with a nonzero priority runs at once: the test can fail.
    let mut attrs = hole.attrs();
    attrs.set("priority", "100").unwrap();
    root.set_attrs(&hole, attrs).unwrap();
    let t = Instant::now();
    while (accepted.load(SeqCst) < 3 || !ran.load(SeqCst)) && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(ran.load(SeqCst));
    assert_eq!(accepted.load(SeqCst), 3);
    drop(clients);
}

#[test]
fn capped_container_stays_under_its_cap() {
    let registry = Registry::new();
    let rt = one_worker(&registry);
    let root = registry.root();
    let capped = child(
        &root,
        "capped",
        &[("cpu_limit", "30%"), ("cpu_period", "10ms")],
    );
    let free = child(&root, "free", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in [&capped, &free] {
        for _ in 0..2 {
            tasks.push(rt.spawn_in(c, busy(stop.clone())));
        }
    }
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, SeqCst);
    let wall = t.elapsed().as_nanos() as f64;
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    rt.flush_usage();
    let (uc, uf) = (capped.usage().cpu_ns as f64, free.usage().cpu_ns as f64);
    let frac = uc / wall;
    eprintln!(
        "capped {:.1} ms ({frac:.3} of the wall), free {:.1} ms",
        uc / 1e6,
        uf / 1e6
    );
    // At most 30% per period, plus one overrunning slice per period and the final period.
    assert!(
        frac <= 0.30 + 0.06,
        "capped got {frac:.3} of a CPU, cap 0.30"
    );
    assert!(capped.usage().throttled_ns > 0, "the cap throttled");
    assert!(uf > uc, "the uncapped sibling got the rest: {uf} vs {uc}");
    assert!(frac > 0.10, "the capped container did run: {frac:.3}");
}

#[test]
fn rebind_moves_later_charges() {
    let registry = Registry::new();
    let rt = one_worker(&registry);
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let b = child(&root, "b", &[]);
    let b2 = b.clone();
    rt.block_on(rt.spawn_in(&a, async move {
        spin(20_000_000);
        rescon_rt::yield_now().await;
        rescon_rt::bind(&b2);
        assert_eq!(rescon_rt::current().id(), b2.id());
        for _ in 0..3 {
            spin(10_000_000);
            rescon_rt::yield_now().await;
        }
    }))
    .unwrap();
    rt.flush_usage();
    let (ua, ub) = (a.usage().cpu_ns, b.usage().cpu_ns);
    eprintln!("a {} us, b {} us", ua / 1000, ub / 1000);
    assert!((15_000_000..28_000_000).contains(&ua), "a: {ua}");
    assert!((22_000_000..40_000_000).contains(&ub), "b: {ub}");
}

#[test]
fn with_container_charges_the_inner_future_and_restores() {
    let registry = Registry::new();
    let rt = one_worker(&registry);
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let b = child(&root, "b", &[]);
    let (a2, b2) = (a.clone(), b.clone());
    rt.block_on(rt.spawn_in(&a, async move {
        rescon_rt::with_container(&b2, async {
            spin(20_000_000);
        })
        .await;
        assert_eq!(rescon_rt::current().id(), a2.id());
    }))
    .unwrap();
    rt.flush_usage();
    assert!(b.usage().cpu_ns >= 15_000_000, "b: {}", b.usage().cpu_ns);
    assert!(a.usage().cpu_ns < 10_000_000, "a: {}", a.usage().cpu_ns);
}
