//! The runtime's scheduling guarantees, on one worker: shares, classes, priority 0, caps,
//! rebinding. Ratios of charged CPU are compared, never wall-clock times.

use rescon::{Attributes, Container, Registry};
use rescon_rt::{Builder, Clock, Runtime};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn one_worker(registry: &Registry) -> Runtime {
    Builder::new(registry).workers(1).build().expect("runtime")
}

/// One worker on a manual clock: a poll costs exactly what the task advances the clock by, so
/// shares come out exact whatever else the machine is doing.
fn one_worker_manual(registry: &Registry) -> (Runtime, Clock) {
    let clock = Clock::manual();
    let rt = Builder::new(registry)
        .workers(1)
        .clock(clock.clone())
        .build()
        .expect("runtime");
    (rt, clock)
}

fn child(parent: &Container, name: &str, attrs: &[(&str, &str)]) -> Container {
    let mut a = Attributes::default();
    for (k, v) in attrs {
        a.set(k, v).unwrap();
    }
    parent.create_child(name, a).unwrap()
}

/// "Burns" `ns` of CPU: moves the manual clock, as a poll that long would.
fn spin(clock: &Clock, ns: u64) {
    clock.advance(Duration::from_nanos(ns));
}

/// Yields until `go` is set: lets a test spawn all its tasks before any of them moves the
/// clock.
async fn wait_for(go: &AtomicBool) {
    while !go.load(SeqCst) {
        rescon_rt::yield_now().await;
    }
}

/// A CPU-bound task: once `go` is set, slices of 50 us with a yield between, until the clock
/// reaches `until_ns`.
async fn busy(clock: Clock, until_ns: u64, go: Arc<AtomicBool>) {
    wait_for(&go).await;
    while clock.now_ns() < until_ns {
        spin(&clock, 50_000);
        rescon_rt::yield_now().await;
    }
}

#[test]
fn weights_3_to_1_share_one_worker_3_to_1() {
    let registry = Registry::new();
    let (rt, clock) = one_worker_manual(&registry);
    let root = registry.root();
    let a = child(&root, "a", &[("share", "weight:300")]);
    let b = child(&root, "b", &[("share", "weight:100")]);
    let until = clock.now_ns() + 400_000_000;
    let go = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in [&a, &b] {
        for _ in 0..3 {
            tasks.push(rt.spawn_in(c, busy(clock.clone(), until, go.clone())));
        }
    }
    go.store(true, SeqCst);
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
    assert!(ua + ub >= 400e6, "they ran the whole 400 ms: {}", ua + ub);
    assert!(
        (ratio / 3.0 - 1.0).abs() <= 0.01,
        "ratio {ratio:.3}, want 3 within 1%"
    );
}

/// Wakers of `serving` tasks waiting for their next request.
type Parked = Arc<Mutex<Vec<std::task::Waker>>>;

/// A connection's task: once `go` is set, a poll of 50 us, then a wait for its next request
/// (its container's queue empty meanwhile) until `feeder` wakes it, until the clock reaches
/// `until_ns`.
async fn serving(clock: Clock, until_ns: u64, go: Arc<AtomicBool>, parked: Parked) {
    wait_for(&go).await;
    while clock.now_ns() < until_ns {
        spin(&clock, 50_000);
        let mut asked = false;
        std::future::poll_fn(|cx| {
            if std::mem::replace(&mut asked, true) {
                std::task::Poll::Ready(())
            } else {
                parked.lock().unwrap().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

/// The clients: polls of 1 us that wake every waiting `serving` task, until `until_ns`.
async fn feeder(clock: Clock, until_ns: u64, parked: Parked) {
    loop {
        let done = clock.now_ns() >= until_ns;
        let wakers = std::mem::take(&mut *parked.lock().unwrap());
        wakers.into_iter().for_each(std::task::Waker::wake);
        if done {
            return;
        }
        spin(&clock, 1_000);
        rescon_rt::yield_now().await;
    }
}

#[test]
fn containers_emptied_by_every_poll_keep_their_shares() {
    // Each connection's container goes empty after every poll and has work again, woken by
    // the clients, before its next turn: it lingers, runnable for the policy, instead of
    // going idle and waking. Its share holds.
    let registry = Registry::new();
    let (rt, clock) = one_worker_manual(&registry);
    let root = registry.root();
    let a = child(&root, "a", &[("share", "weight:300")]);
    let b = child(&root, "b", &[("share", "weight:100")]);
    let clients = child(&root, "clients", &[]);
    let until = clock.now_ns() + 400_000_000;
    let go = Arc::new(AtomicBool::new(false));
    let parked = Parked::default();
    let mut tasks: Vec<_> = [&a, &b]
        .into_iter()
        .map(|c| rt.spawn_in(c, serving(clock.clone(), until, go.clone(), parked.clone())))
        .collect();
    tasks.push(rt.spawn_in(&clients, feeder(clock.clone(), until, parked.clone())));
    go.store(true, SeqCst);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    rt.flush_usage();
    let (ua, ub) = (a.usage().cpu_ns as f64, b.usage().cpu_ns as f64);
    let ratio = ua / ub;
    assert!(ua + ub >= 200e6, "they ran most of the 400 ms: {}", ua + ub);
    assert!(
        (ratio / 3.0 - 1.0).abs() <= 0.02,
        "ratio {ratio:.3}, want 3 within 2%"
    );
}

#[test]
fn a_waiting_high_class_container_holds_up_nothing_and_is_released_at_its_end() {
    // A high-class connection waits a millisecond between requests, its container empty;
    // a normal-class task keeps the CPU in between. When the connection ends, its container
    // is released, though it was waiting when its last request came.
    let registry = Registry::new();
    let before = registry.len();
    let (rt, clock) = one_worker_manual(&registry);
    let root = registry.root();
    let high = child(&root, "high", &[("class", "high")]);
    let normal = child(&root, "normal", &[("class", "normal")]);
    let start = clock.now_ns();
    let until = start + 20_000_000;
    let go = Arc::new(AtomicBool::new(false));
    let served = {
        let (clock, go) = (clock.clone(), go.clone());
        rt.spawn_in(&high, async move {
            wait_for(&go).await;
            for _ in 0..10 {
                spin(&clock, 10_000);
                rescon_rt::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let cpu = rt.spawn_in(&normal, busy(clock.clone(), until, go.clone()));
    go.store(true, SeqCst);
    rt.block_on(async {
        served.await.unwrap();
        cpu.await.unwrap();
    });
    rt.flush_usage();
    let (uh, un) = (high.usage().cpu_ns, normal.usage().cpu_ns);
    assert_eq!(uh, 100_000, "ten requests of 10 us");
    assert!(un >= 19_000_000, "the normal task ran in between: {un} ns");
    drop((high, normal));
    // The worker releases unused containers at its next maintenance or sleep.
    rt.block_on(async { rescon_rt::sleep(Duration::from_millis(5)).await });
    rt.flush_usage();
    assert_eq!(registry.len(), before, "both containers were released");
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
    let (rt, clock) = one_worker_manual(&registry);
    let root = registry.root();
    let capped = child(
        &root,
        "capped",
        &[("cpu_limit", "30%"), ("cpu_period", "10ms")],
    );
    let free = child(&root, "free", &[]);
    let t0 = clock.now_ns();
    let until = t0 + 500_000_000;
    let go = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in [&capped, &free] {
        for _ in 0..2 {
            tasks.push(rt.spawn_in(c, busy(clock.clone(), until, go.clone())));
        }
    }
    go.store(true, SeqCst);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    rt.flush_usage();
    let elapsed = (clock.now_ns() - t0) as f64;
    let (uc, uf) = (capped.usage().cpu_ns as f64, free.usage().cpu_ns as f64);
    let frac = uc / elapsed;
    eprintln!(
        "capped {:.1} ms ({frac:.3} of the time), free {:.1} ms",
        uc / 1e6,
        uf / 1e6
    );
    // 30% per period, give or take the one 50 us slice that may overrun a period.
    assert!(
        (0.29..=0.31).contains(&frac),
        "capped got {frac:.3} of a CPU, cap 0.30"
    );
    assert!(capped.usage().throttled_ns > 0, "the cap throttled");
    assert!(
        (uf / elapsed - 0.70).abs() <= 0.01,
        "the uncapped sibling got the rest: {uf} of {elapsed}"
    );
}

#[test]
fn rebind_moves_later_charges() {
    let registry = Registry::new();
    let (rt, clock) = one_worker_manual(&registry);
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let b = child(&root, "b", &[]);
    let b2 = b.clone();
    rt.block_on(rt.spawn_in(&a, async move {
        spin(&clock, 20_000_000);
        rescon_rt::yield_now().await;
        spin(&clock, 5_000_000);
        // Charges up to here go to a; the rest of this poll and later ones to b.
        rescon_rt::bind(&b2);
        assert_eq!(rescon_rt::current().id(), b2.id());
        for _ in 0..3 {
            spin(&clock, 10_000_000);
            rescon_rt::yield_now().await;
        }
    }))
    .unwrap();
    rt.flush_usage();
    let (ua, ub) = (a.usage().cpu_ns, b.usage().cpu_ns);
    eprintln!("a {} us, b {} us", ua / 1000, ub / 1000);
    assert_eq!(ua, 25_000_000, "a: {ua}");
    assert_eq!(ub, 30_000_000, "b: {ub}");
}

#[test]
fn with_container_charges_the_inner_future_and_restores() {
    let registry = Registry::new();
    let (rt, clock) = one_worker_manual(&registry);
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let b = child(&root, "b", &[]);
    let (a2, b2) = (a.clone(), b.clone());
    rt.block_on(rt.spawn_in(&a, async move {
        spin(&clock, 3_000_000);
        rescon_rt::with_container(&b2, async {
            spin(&clock, 20_000_000);
        })
        .await;
        assert_eq!(rescon_rt::current().id(), a2.id());
        spin(&clock, 4_000_000);
    }))
    .unwrap();
    rt.flush_usage();
    assert_eq!(b.usage().cpu_ns, 20_000_000, "b");
    assert_eq!(a.usage().cpu_ns, 7_000_000, "a");
}

#[test]
fn a_high_class_task_sees_its_io_within_the_event_gap() {
    // Polls of 30 us by 50 normal tasks; I/O is looked at only every 1000 polls (30 ms) by
    // count, so it is the 100 us time bound that must bring the high task its byte.
    let registry = Registry::new();
    let clock = Clock::manual();
    let rt = Builder::new(&registry)
        .workers(1)
        .clock(clock.clone())
        .event_interval(1000)
        .event_gap(Duration::from_micros(100))
        .build()
        .expect("runtime");
    let root = registry.root();
    let normal = child(&root, "normal", &[("class", "normal")]);
    let high = child(&root, "high", &[("class", "high")]);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server_side, _) = l.accept().unwrap();
    server_side.set_nonblocking(true).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let written_at = Arc::new(AtomicU64::new(0));
    let peer = server_side.try_clone().unwrap();
    let client = Arc::new(Mutex::new(Some((client, peer))));
    let t0 = clock.now_ns();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (clock, done, written_at, client) = (
            clock.clone(),
            done.clone(),
            written_at.clone(),
            client.clone(),
        );
        let ready = ready.clone();
        tasks.push(rt.spawn_in(&normal, async move {
            // Nothing moves the clock before the high task waits for its byte.
            while !ready.load(SeqCst) {
                rescon_rt::yield_now().await;
            }
            while !done.load(SeqCst) {
                spin(&clock, 30_000);
                // After 10 ms, one of them sends the byte, noting the time on the worker's
                // own clock (nothing moves it between the write and the reading).
                if clock.now_ns() - t0 >= 10_000_000 {
                    if let Some((mut c, peer)) = client.lock().unwrap().take() {
                        use std::io::Write;
                        c.write_all(b"x").unwrap();
                        // Loopback delivers in the sender's softirq, which a busy machine
                        // defers: wait (in real time, the manual clock standing still) until
                        // the byte is there to read, so the time measured is the runtime's.
                        let mut b = [0u8; 1];
                        while !matches!(peer.peek(&mut b), Ok(1)) {
                            std::thread::yield_now();
                        }
                        written_at.store(clock.now_ns(), SeqCst);
                        std::mem::forget(c);
                    }
                }
                rescon_rt::yield_now().await;
            }
        }));
    }
    let (clock2, done2, high2) = (clock.clone(), done.clone(), high.clone());
    let seen = rt.spawn_in(&high, async move {
        let s = rescon_rt::TcpStream::from_std(server_side, &high2).unwrap();
        let mut b = [0u8; 1];
        // The read's first poll registers the interest before any normal task runs again.
        ready.store(true, SeqCst);
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
        let at = clock2.now_ns();
        done2.store(true, SeqCst);
        at
    });
    let seen = rt.block_on(seen).unwrap();
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let waited = seen - written_at.load(SeqCst);
    eprintln!(
        "the high task saw its byte {} us after it was sent",
        waited / 1000
    );
    assert!(
        waited <= 100_000 + 2 * 30_000,
        "waited {waited} ns: more than the 100 us gap and two polls"
    );
}

#[test]
fn many_rebinds_in_one_poll_charge_each_container_exactly() {
    // More containers than the worker defers to the end of a burst, some visited twice: every
    // segment still lands on the container bound while it ran.
    let registry = Registry::new();
    let (rt, clock) = one_worker_manual(&registry);
    let root = registry.root();
    let cs: Vec<Container> = (0..12)
        .map(|i| child(&root, &format!("c{i}"), &[]))
        .collect();
    let home = child(&root, "home", &[]);
    let visits: Vec<usize> = (0..12).chain([3, 7, 11]).collect();
    let (cs2, visits2) = (cs.clone(), visits.clone());
    rt.block_on(rt.spawn_in(&home, async move {
        spin(&clock, 1_000);
        for &i in &visits2 {
            rescon_rt::bind(&cs2[i]);
            spin(&clock, (i as u64 + 1) * 10_000);
        }
    }))
    .unwrap();
    rt.flush_usage();
    assert_eq!(home.usage().cpu_ns, 1_000);
    for (i, c) in cs.iter().enumerate() {
        let times = visits.iter().filter(|&&v| v == i).count() as u64;
        assert_eq!(c.usage().cpu_ns, times * (i as u64 + 1) * 10_000, "c{i}");
    }
}
