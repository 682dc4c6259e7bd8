//! The blocking pool, the paper's multi-threaded model: jobs wait in per-container queues
//! ordered by the container policy, and a free thread takes the next job of the container the
//! policy picks. On a manual clock a job costs exactly what it advances the clock by, so the
//! order is exact.

use rescon::{Attributes, Container, Registry};
use rescon_rt::{BlockingPool, Clock, Runtime};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

fn child(parent: &Container, name: &str, attrs: &[(&str, &str)]) -> Container {
    let mut a = Attributes::default();
    for (k, v) in attrs {
        a.set(k, v).unwrap();
    }
    parent.create_child(name, a).unwrap()
}

/// A pool of `threads` threads over `registry`'s containers, on a manual clock.
fn manual_pool(registry: &Registry, threads: usize) -> (Clock, BlockingPool) {
    let clock = Clock::manual();
    let pool = BlockingPool::builder(registry)
        .max_threads(threads)
        .clock(clock.clone())
        .build();
    (clock, pool)
}

/// A gate the first job waits at, so that every other job is queued before any runs.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut o = self.open.lock().unwrap();
        while !*o {
            o = self.cv.wait(o).unwrap();
        }
    }
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

#[test]
fn fixed_shares_divide_the_pools_threads() {
    // One thread, a gate job holding it, then 40 jobs of each of a (75%) and b (25%), each
    // costing 1 ms: the first 40 to run are 30 of a's and 10 of b's, in the policy's order.
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[("share", "75%")]);
    let b = child(&root, "b", &[("share", "25%")]);
    let gate_c = child(&root, "gate", &[]);
    let (clock, pool) = manual_pool(&registry, 1);
    let rt = Runtime::new(&registry).unwrap();
    let gate = Arc::new(Gate::default());
    let order = Arc::new(Mutex::new(Vec::new()));
    let g = gate.clone();
    let first = pool.spawn_in(&gate_c, move || g.wait());
    let mut jobs = Vec::new();
    for _ in 0..40 {
        for (c, name) in [(&a, 'a'), (&b, 'b')] {
            let (order, clock) = (order.clone(), clock.clone());
            jobs.push(pool.spawn_in(c, move || {
                clock.advance(Duration::from_millis(1));
                order.lock().unwrap().push(name);
            }));
        }
    }
    gate.open();
    rt.block_on(async {
        first.await.unwrap();
        for j in jobs {
            j.await.unwrap();
        }
    });
    // A job's charge is recorded after its handle completes; dropping the pool waits for its
    // thread and records what is pending.
    drop(pool);
    let order = order.lock().unwrap().clone();
    let first40 = &order[..40];
    let na = first40.iter().filter(|&&c| c == 'a').count();
    assert_eq!(
        na,
        30,
        "a's jobs among the first 40: {}",
        first40.iter().collect::<String>()
    );
    assert_eq!(a.usage().cpu_ns, 40_000_000, "each job charged its 1 ms");
    assert_eq!(b.usage().cpu_ns, 40_000_000);
}

#[test]
fn a_higher_class_takes_every_free_thread_first() {
    let registry = Registry::new();
    let root = registry.root();
    let high = child(&root, "high", &[("class", "high")]);
    let low = child(&root, "low", &[]);
    let gate_c = child(&root, "gate", &[]);
    let (_clock, pool) = manual_pool(&registry, 1);
    let rt = Runtime::new(&registry).unwrap();
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    let first = pool.spawn_in(&gate_c, move || g.wait());
    let order = Arc::new(Mutex::new(String::new()));
    let mut jobs = Vec::new();
    for _ in 0..5 {
        for (c, name) in [(&low, 'l'), (&high, 'h')] {
            let order = order.clone();
            jobs.push(pool.spawn_in(c, move || order.lock().unwrap().push(name)));
        }
    }
    gate.open();
    rt.block_on(async {
        first.await.unwrap();
        for j in jobs {
            j.await.unwrap();
        }
    });
    assert_eq!(*order.lock().unwrap(), "hhhhhlllll");
}

#[test]
fn priority_zero_jobs_never_run_until_the_priority_is_raised() {
    let registry = Registry::new();
    let root = registry.root();
    let hole = child(&root, "hole", &[("priority", "0")]);
    let other = child(&root, "other", &[]);
    let pool = BlockingPool::builder(&registry).max_threads(4).build();
    let rt = Runtime::new(&registry).unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let held: Vec<_> = (0..8)
        .map(|_| {
            let ran = ran.clone();
            pool.spawn_in(&hole, move || {
                ran.fetch_add(1, SeqCst);
            })
        })
        .collect();
    // Many other jobs run on all four threads meanwhile.
    let done = Arc::new(AtomicUsize::new(0));
    let others: Vec<_> = (0..200)
        .map(|_| {
            let done = done.clone();
            pool.spawn_in(&other, move || {
                done.fetch_add(1, SeqCst);
            })
        })
        .collect();
    rt.block_on(async {
        for j in others {
            j.await.unwrap();
        }
    });
    assert_eq!(done.load(SeqCst), 200);
    assert_eq!(ran.load(SeqCst), 0, "a priority-0 container's job ran");
    assert_eq!(hole.usage().polls, 0);
    // The same container at a nonzero priority: its jobs run (the test can fail).
    let mut attrs = hole.attrs();
    attrs.set("priority", "100").unwrap();
    root.set_attrs(&hole, attrs).unwrap();
    // The pool learns of the change at its next pick: give it one.
    let nudge = pool.spawn_in(&other, || ());
    rt.block_on(async {
        nudge.await.unwrap();
        for j in held {
            j.await.unwrap();
        }
    });
    assert_eq!(ran.load(SeqCst), 8);
}

#[test]
fn dropping_the_pool_cancels_queued_jobs() {
    let registry = Registry::new();
    let root = registry.root();
    let c = child(&root, "c", &[]);
    let pool = BlockingPool::builder(&registry).max_threads(1).build();
    let rt = Runtime::new(&registry).unwrap();
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let first = pool.spawn_in(&c, move || {
        s.store(true, SeqCst);
        g.wait();
    });
    let queued = pool.spawn_in(&c, || 1);
    while !started.load(SeqCst) {
        std::thread::yield_now();
    }
    let g2 = gate.clone();
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        g2.open();
    });
    drop(pool);
    opener.join().unwrap();
    rt.block_on(async {
        first.await.unwrap();
        assert!(queued.await.unwrap_err().is_cancelled());
    });
}

/// Jobs of short-lived containers (a connection's, released once its job is done, as a TLS
/// handshake's on the handshake pool): each job's charge reaches the parent's subtree, while
/// the pool keeps running.
#[test]
fn jobs_of_released_containers_are_charged_to_their_parent_s_subtree() {
    let registry = Registry::new();
    let low = child(&registry.root(), "low", &[]);
    let (clock, pool) = manual_pool(&registry, 1);
    let rt = Runtime::new(&registry).unwrap();
    rt.block_on(async {
        for i in 0..41 {
            let conn = child(&low, &format!("conn-{i}"), &[]);
            let clock = clock.clone();
            pool.spawn_in(&conn, move || clock.advance(Duration::from_millis(1)))
                .await
                .unwrap();
            drop(conn);
        }
    });
    // One thread: job 41 ran after the first 40 were charged. The pool still runs.
    let charged = low.usage_subtree().cpu_ns;
    assert!(
        charged >= 40_000_000,
        "40 jobs of 1 ms each were charged {charged} ns to the subtree"
    );
    drop(pool);
    assert_eq!(low.usage_subtree().cpu_ns, 41_000_000);
}

/// The same with jobs queued at once on two threads, their containers released while the
/// jobs wait (a flood of handshakes whose connections close).
#[test]
fn concurrent_jobs_of_released_containers_are_all_charged() {
    let registry = Registry::new();
    let low = child(&registry.root(), "low", &[]);
    let gate_c = child(&registry.root(), "gate", &[]);
    let (clock, pool) = manual_pool(&registry, 2);
    let rt = Runtime::new(&registry).unwrap();
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    let first = pool.spawn_in(&gate_c, move || g.wait());
    let mut jobs = Vec::new();
    for i in 0..40 {
        let conn = child(&low, &format!("conn-{i}"), &[]);
        let clock = clock.clone();
        jobs.push(pool.spawn_in(&conn, move || clock.advance(Duration::from_millis(1))));
    }
    gate.open();
    rt.block_on(async {
        first.await.unwrap();
        for j in jobs {
            j.await.unwrap();
        }
    });
    drop(pool);
    // On a manual clock shared by two threads a job may be charged the other's advance too:
    // never less than its own.
    let charged = low.usage_subtree().cpu_ns;
    assert!(
        charged >= 40_000_000,
        "40 jobs of 1 ms each were charged {charged} ns to the subtree"
    );
}
