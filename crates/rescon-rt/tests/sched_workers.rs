//! The scheduler over several workers, on real threads: work moves to where it should run,
//! a moved task keeps working (its wake-ups and its sockets follow it), and the policy is
//! pluggable. What these check is behaviour (where tasks ran, whether they finished), never a
//! time; the shares themselves are checked deterministically on simulated workers in
//! `rescon/tests/sched_multi.rs`, and measured on real runtimes by `rescon-bench shares`.

use rescon::sched::{Fifo, Key, Pick, Policy};
use rescon::{Attributes, Container, ContainerId, Registry};
use rescon_rt::{Builder, Clock, Runtime};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

fn child(parent: &Container, name: &str, attrs: &[(&str, &str)]) -> Container {
    let mut a = Attributes::default();
    for (k, v) in attrs {
        a.set(k, v).unwrap();
    }
    parent.create_child(name, a).unwrap()
}

fn two_workers(registry: &Registry) -> Runtime {
    Builder::new(registry)
        .workers(2)
        .idle_priority(rescon_rt::IdlePriority::Off)
        .build()
        .unwrap()
}

/// A CPU-bound task: slices of 50 us of busy loop with a yield between, recording the threads
/// it ran on, until `stop`.
async fn burn(stop: Arc<AtomicBool>, threads: Arc<Mutex<HashSet<ThreadId>>>) {
    while !stop.load(SeqCst) {
        threads.lock().unwrap().insert(std::thread::current().id());
        let t = Instant::now();
        while t.elapsed() < Duration::from_micros(50) {
            std::hint::spin_loop();
        }
        rescon_rt::yield_now().await;
    }
}

/// Waits (at most 20 s) until `done` says so.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(20), "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn work_placed_on_one_worker_spreads_to_the_idle_one() {
    let registry = Registry::new();
    let rt = two_workers(&registry);
    let a = child(&registry.root(), "a", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let threads = Arc::new(Mutex::new(HashSet::new()));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            rt.handle()
                .spawn_on(0, &a, burn(stop.clone(), threads.clone()))
        })
        .collect();
    eventually("a's tasks run on both workers", || {
        threads.lock().unwrap().len() == 2
    });
    let moves = rt.handle().worker_moves();
    assert!(moves[0].0 >= 1 && moves[1].1 >= 1, "{moves:?}");
    stop.store(true, SeqCst);
    // Moved tasks still finish: their wake-ups reach their new worker.
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    // A worker counts a task gone just after its handle completes.
    eventually("both workers count no task", || {
        rt.handle().worker_loads() == [0, 0]
    });
}

#[test]
fn a_high_class_task_waiting_on_a_busy_worker_moves_to_the_one_running_normal_work() {
    let registry = Registry::new();
    let rt = two_workers(&registry);
    let root = registry.root();
    let high = child(&root, "high", &[("class", "high")]);
    let normal = child(&root, "normal", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (high_threads, normal_threads) = (
        Arc::new(Mutex::new(HashSet::new())),
        Arc::new(Mutex::new(HashSet::new())),
    );
    let mut tasks = Vec::new();
    // Two high tasks on worker 0 (one waits while the other runs), normal work on worker 1.
    for _ in 0..2 {
        tasks.push(
            rt.handle()
                .spawn_on(0, &high, burn(stop.clone(), high_threads.clone())),
        );
    }
    for _ in 0..2 {
        tasks.push(
            rt.handle()
                .spawn_on(1, &normal, burn(stop.clone(), normal_threads.clone())),
        );
    }
    eventually("the high class runs on both workers", || {
        high_threads.lock().unwrap().len() == 2
    });
    stop.store(true, SeqCst);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn priority_zero_work_never_runs_and_never_moves() {
    let registry = Registry::new();
    let rt = two_workers(&registry);
    let root = registry.root();
    let hole = child(&root, "hole", &[("priority", "0")]);
    let other = child(&root, "other", &[]);
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..4 {
        let ran = ran.clone();
        rt.handle().spawn_on(0, &hole, async move {
            ran.fetch_add(1, SeqCst);
        });
    }
    // Worker 1 is idle and worker 0 has nothing it may run: nothing moves, nothing runs.
    let stop = Arc::new(AtomicBool::new(false));
    let threads = Arc::new(Mutex::new(HashSet::new()));
    let busy = rt
        .handle()
        .spawn_on(1, &other, burn(stop.clone(), threads.clone()));
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, SeqCst);
    rt.block_on(busy).unwrap();
    assert_eq!(ran.load(SeqCst), 0);
    assert_eq!(hole.usage().polls, 0);
    assert_eq!(rt.handle().worker_moves(), [(0, 0), (0, 0)]);
}

#[test]
fn a_socket_follows_its_task_to_another_worker() {
    let registry = Registry::new();
    let rt = two_workers(&registry);
    let c = child(&registry.root(), "conn", &[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    let server = {
        let _e = rt.enter();
        Arc::new(rescon_rt::TcpStream::from_std(server, &c).unwrap())
    };
    // A read on worker 0 registers the socket there, and times out.
    let s0 = server.clone();
    let t0 = rt.handle().spawn_on(0, &c, async move {
        let mut b = [0u8; 1];
        let r = rescon_rt::timeout(Duration::from_millis(20), s0.read(&mut b)).await;
        (r.is_err(), std::thread::current().id())
    });
    let (timed_out, w0) = rt.block_on(t0).unwrap();
    assert!(timed_out);
    // The next wait is on worker 1: the registration moves, and the byte written then reaches
    // it through worker 1's epoll instance.
    let (started, s1) = (Arc::new(AtomicBool::new(false)), server.clone());
    let go = started.clone();
    let t1 = rt.handle().spawn_on(1, &c, async move {
        let mut b = [0u8; 1];
        go.store(true, SeqCst);
        let n = s1.read(&mut b).await.unwrap();
        (n, b[0], std::thread::current().id())
    });
    eventually("the reader waits on worker 1", || started.load(SeqCst));
    std::thread::sleep(Duration::from_millis(10));
    std::io::Write::write_all(&mut client, b"x").unwrap();
    let (n, byte, w1) = rt.block_on(t1).unwrap();
    assert_eq!((n, byte), (1, b'x'));
    assert_ne!(w0, w1, "the two reads ran on different workers");
}

/// A test double: picks only containers it has not been told to refuse, in the order they
/// became runnable, and counts its picks.
#[derive(Debug)]
struct Refusing {
    inner: Fifo,
    refused: ContainerId,
    picks: Arc<AtomicUsize>,
    runnable: Vec<Key>,
}

impl Policy for Refusing {
    fn attach(&mut self, c: &Container) -> Key {
        self.inner.attach(c)
    }
    fn detach(&mut self, key: Key) {
        self.runnable.retain(|k| *k != key);
        self.inner.detach(key)
    }
    fn set_runnable(&mut self, key: Key, runnable: bool) {
        if self.inner.container(key) == self.refused {
            return;
        }
        self.inner.set_runnable(key, runnable)
    }
    fn pick(&mut self) -> Option<Pick> {
        let p = self.inner.pick();
        if p.is_some() {
            self.picks.fetch_add(1, SeqCst);
        }
        p
    }
    fn charge(&mut self, key: Key, ns: u64) {
        self.inner.charge(key, ns)
    }
    fn refill(&mut self, now: u64) {
        self.inner.refill(now)
    }
    fn next_refill(&self) -> Option<u64> {
        None
    }
    fn container(&self, key: Key) -> ContainerId {
        self.inner.container(key)
    }
}

#[test]
fn the_runtime_schedules_with_the_policy_it_is_given() {
    let registry = Registry::new();
    let root = registry.root();
    let refused = child(&root, "refused", &[]);
    let fine = child(&root, "fine", &[]);
    let picks = Arc::new(AtomicUsize::new(0));
    let (id, p2) = (refused.id(), picks.clone());
    let rt = Builder::new(&registry)
        .workers(1)
        .policy(move |env| {
            assert_eq!(env.worker.is_some(), env.workers == 1, "{env:?}");
            Box::new(Refusing {
                inner: Fifo::new(),
                refused: id,
                picks: p2.clone(),
                runnable: Vec::new(),
            }) as Box<dyn Policy>
        })
        .build()
        .unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r2 = ran.clone();
    rt.spawn_in(&refused, async move { r2.store(true, SeqCst) });
    let v = rt.block_on(rt.spawn_in(&fine, async { 42 })).unwrap();
    assert_eq!(v, 42);
    std::thread::sleep(Duration::from_millis(20));
    assert!(!ran.load(SeqCst), "a container the policy never picks ran");
    assert!(picks.load(SeqCst) >= 1, "the runtime asked the policy");
}

#[test]
fn fifo_ignores_weights_but_charges_every_container() {
    // One worker on a manual clock: with Fifo, containers weighted 3:1 take turns 1:1.
    let registry = Registry::new();
    let clock = Clock::manual();
    let rt = Builder::new(&registry)
        .workers(1)
        .clock(clock.clone())
        .fifo()
        .build()
        .unwrap();
    let root = registry.root();
    let a = child(&root, "a", &[("share", "weight:300")]);
    let b = child(&root, "b", &[("share", "weight:100")]);
    let until = clock.now_ns() + 100_000_000;
    let go = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in [&a, &b] {
        let (clock, go) = (clock.clone(), go.clone());
        tasks.push(rt.spawn_in(c, async move {
            while !go.load(SeqCst) {
                rescon_rt::yield_now().await;
            }
            while clock.now_ns() < until {
                clock.advance(Duration::from_micros(50));
                rescon_rt::yield_now().await;
            }
        }));
    }
    go.store(true, SeqCst);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    rt.flush_usage();
    let (ua, ub) = (a.usage().cpu_ns as f64, b.usage().cpu_ns as f64);
    assert!(ua + ub >= 99e6, "{ua} + {ub}");
    assert!(
        (ua / ub - 1.0).abs() < 0.02,
        "a {ua} b {ub}: Fifo gave them turns"
    );
}

/// Two workers on a manual clock that nothing moves: the balancing every millisecond never
/// comes, so what moves, moves by the class hand-off (which counts bursts, not time).
fn two_workers_stopped_clock(registry: &Registry) -> (Runtime, Clock, u64) {
    let clock = Clock::manual();
    let start = clock.now_ns();
    let rt = Builder::new(registry)
        .workers(2)
        .clock(clock.clone())
        .idle_priority(rescon_rt::IdlePriority::Off)
        .build()
        .unwrap();
    (rt, clock, start)
}

#[test]
fn a_waiting_high_class_task_is_handed_over_without_waiting_for_a_balancing_interval() {
    let registry = Registry::new();
    let (rt, clock, start) = two_workers_stopped_clock(&registry);
    let root = registry.root();
    let high = child(&root, "high", &[("class", "high")]);
    let normal = child(&root, "normal", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (high_threads, normal_threads) = (
        Arc::new(Mutex::new(HashSet::new())),
        Arc::new(Mutex::new(HashSet::new())),
    );
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(
            rt.handle()
                .spawn_on(1, &normal, burn(stop.clone(), normal_threads.clone())),
        );
    }
    eventually("normal work runs on worker 1", || {
        !normal_threads.lock().unwrap().is_empty()
    });
    // Two high tasks on worker 0: one waits while the other runs, and worker 1 runs normal
    // work, which the high class outclasses.
    for _ in 0..2 {
        tasks.push(
            rt.handle()
                .spawn_on(0, &high, burn(stop.clone(), high_threads.clone())),
        );
    }
    eventually("the high class runs on both workers", || {
        high_threads.lock().unwrap().len() == 2
    });
    assert_eq!(clock.now_ns(), start, "no time passed: no balancing ran");
    let moves = rt.handle().worker_moves();
    assert!(
        moves[0].0 >= 1,
        "worker 0 handed over a high task: {moves:?}"
    );
    stop.store(true, SeqCst);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn work_of_one_class_is_not_handed_over_for_its_class() {
    let registry = Registry::new();
    let (rt, clock, start) = two_workers_stopped_clock(&registry);
    let root = registry.root();
    // Two classes in the tree, so the hand-off is on; but each worker runs high work.
    let a = child(&root, "a", &[("class", "high")]);
    let b = child(&root, "b", &[("class", "high")]);
    let low = child(&root, "low", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let on_0 = Arc::new(Mutex::new(HashSet::new()));
    let on_1 = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = vec![rt.handle().spawn_on(0, &low, async {})];
    rt.block_on(tasks.pop().unwrap()).unwrap();
    // One task each first, each waited for: a worker asleep is given waiting high work, so a
    // second task spawned while the other worker still sleeps would rightly move.
    tasks.push(
        rt.handle()
            .spawn_on(1, &b, burn(stop.clone(), on_1.clone())),
    );
    eventually("worker 1 runs b", || on_1.lock().unwrap().len() == 1);
    tasks.push(
        rt.handle()
            .spawn_on(0, &a, burn(stop.clone(), on_0.clone())),
    );
    eventually("worker 0 runs a", || on_0.lock().unwrap().len() == 1);
    // Both workers run the high class now: a second task of each waits on its own worker.
    tasks.push(
        rt.handle()
            .spawn_on(0, &a, burn(stop.clone(), on_0.clone())),
    );
    tasks.push(
        rt.handle()
            .spawn_on(1, &b, burn(stop.clone(), on_1.clone())),
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(clock.now_ns(), start);
    assert_eq!(rt.handle().worker_moves(), [(0, 0), (0, 0)]);
    let (t0, t1) = (on_0.lock().unwrap().clone(), on_1.lock().unwrap().clone());
    assert!(t0.len() == 1 && t1.len() == 1 && t0 != t1, "{t0:?} {t1:?}");
    stop.store(true, SeqCst);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn a_waiting_high_class_task_is_handed_to_a_sleeping_worker() {
    let registry = Registry::new();
    let (rt, clock, start) = two_workers_stopped_clock(&registry);
    let root = registry.root();
    let high = child(&root, "high", &[("class", "high")]);
    let normal = child(&root, "normal", &[]);
    // The runtime learns that its containers are of two classes from worker 0 running both.
    rt.block_on(rt.handle().spawn_on(0, &normal, async {}))
        .unwrap();
    // Worker 1 has nothing to run and sleeps in epoll_wait; with the clock stopped, no
    // balancing ever gives it work: only the hand-off can.
    let stop = Arc::new(AtomicBool::new(false));
    let threads = Arc::new(Mutex::new(HashSet::new()));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            rt.handle()
                .spawn_on(0, &high, burn(stop.clone(), threads.clone()))
        })
        .collect();
    eventually("the high class runs on both workers", || {
        threads.lock().unwrap().len() == 2
    });
    assert_eq!(clock.now_ns(), start, "no time passed: no balancing ran");
    let moves = rt.handle().worker_moves();
    assert!(
        moves[0].0 >= 1,
        "worker 0 handed a high task over: {moves:?}"
    );
    stop.store(true, SeqCst);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn classes_that_part_six_levels_down_are_handed_over() {
    let registry = Registry::new();
    let (rt, clock, start) = two_workers_stopped_clock(&registry);
    // root/l0/l1/l2/l3/l4/{high, normal}: the paths part at the sixth level.
    let mut parent = registry.root();
    for i in 0..5 {
        parent = child(&parent, &format!("l{i}"), &[]);
    }
    let high = child(&parent, "high", &[("class", "high")]);
    let normal = child(&parent, "normal", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (high_threads, normal_threads) = (
        Arc::new(Mutex::new(HashSet::new())),
        Arc::new(Mutex::new(HashSet::new())),
    );
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(
            rt.handle()
                .spawn_on(1, &normal, burn(stop.clone(), normal_threads.clone())),
        );
    }
    eventually("normal work runs on worker 1", || {
        !normal_threads.lock().unwrap().is_empty()
    });
    for _ in 0..2 {
        tasks.push(
            rt.handle()
                .spawn_on(0, &high, burn(stop.clone(), high_threads.clone())),
        );
    }
    eventually("the high class runs on both workers", || {
        high_threads.lock().unwrap().len() == 2
    });
    assert_eq!(clock.now_ns(), start, "no time passed: no balancing ran");
    assert!(rt.handle().worker_moves()[0].0 >= 1);
    stop.store(true, SeqCst);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// What no scheduling can do, and what a server does instead: a connection waiting in the
/// epoll instance of a worker whose thread is busy (here: stuck in one long poll; in a
/// server, a worker the kernel does not run) is no runnable task, so nothing can move it. A
/// listener with an accept loop on every worker, each on its own descriptor of the socket,
/// is accepted by whichever worker looks (rescon-httpd does this for its high classes).
#[test]
fn a_listener_accepted_on_every_worker_accepts_while_one_worker_is_stuck() {
    let registry = Registry::new();
    let rt = two_workers(&registry);
    let c = child(&registry.root(), "c", &[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let waiting = Arc::new(AtomicUsize::new(0));
    let accepted_on = Arc::new(Mutex::new(Vec::new()));
    let mut loops = Vec::new();
    for w in 0..2 {
        let l = rescon_rt::TcpListener::from_std(listener.try_clone().unwrap(), &c).unwrap();
        let (waiting, accepted_on) = (waiting.clone(), accepted_on.clone());
        loops.push(rt.handle().spawn_on(w, &c, async move {
            // Registered with this worker's epoll instance by the first wait.
            let first = std::future::poll_fn(|cx| {
                let p = l.poll_accept(cx);
                if p.is_pending() {
                    waiting.fetch_add(1, SeqCst);
                }
                p
            })
            .await;
            let mut next = Some(first);
            loop {
                let (s, _) = match next.take() {
                    Some(r) => r.unwrap(),
                    None => l.accept().await.unwrap(),
                };
                accepted_on
                    .lock()
                    .unwrap()
                    .push(std::thread::current().id());
                drop(s);
            }
        }));
    }
    eventually("both accept loops wait", || waiting.load(SeqCst) == 2);
    // Worker 0 runs one poll that does not return until a connection has been accepted (or
    // 20 s have passed).
    let (stuck, stuck_on) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(None)));
    let spin = {
        let (stuck, stuck_on, accepted_on) = (stuck.clone(), stuck_on.clone(), accepted_on.clone());
        rt.handle().spawn_on(0, &c, async move {
            *stuck_on.lock().unwrap() = Some(std::thread::current().id());
            stuck.store(true, SeqCst);
            let t = Instant::now();
            while accepted_on.lock().unwrap().is_empty() && t.elapsed() < Duration::from_secs(20) {
                std::hint::spin_loop();
            }
        })
    };
    eventually("worker 0 is stuck", || stuck.load(SeqCst));
    let client = std::net::TcpStream::connect(addr).unwrap();
    eventually("the connection is accepted", || {
        !accepted_on.lock().unwrap().is_empty()
    });
    let on = accepted_on.lock().unwrap()[0];
    assert_ne!(
        Some(on),
        *stuck_on.lock().unwrap(),
        "accepted by the worker that was stuck"
    );
    rt.block_on(spin).unwrap();
    drop(client);
    for l in loops {
        l.cancel();
    }
}

#[test]
fn high_class_work_is_not_handed_to_a_worker_that_has_not_started_a_burst_for_long() {
    let registry = Registry::new();
    let (rt, clock, _) = two_workers_stopped_clock(&registry);
    let root = registry.root();
    let high = child(&root, "high", &[("class", "high")]);
    let normal = child(&root, "normal", &[]);
    // Worker 1 learns that the runtime's containers are of two classes (so it publishes what
    // it runs), then runs normal work, in one poll that lasts until told (or 20 s): to the others
    // it runs normal work, but it starts no burst (as when the kernel runs another thread on
    // its CPU).
    rt.block_on(rt.handle().spawn_on(1, &high, async {}))
        .unwrap();
    let (stuck, release) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let blocker = {
        let (stuck, release) = (stuck.clone(), release.clone());
        rt.handle().spawn_on(1, &normal, async move {
            stuck.store(true, SeqCst);
            let t = Instant::now();
            while !release.load(SeqCst) && t.elapsed() < Duration::from_secs(20) {
                std::hint::spin_loop();
            }
        })
    };
    eventually("worker 1 is in its long poll", || stuck.load(SeqCst));
    // Its burst began a millisecond ago.
    clock.advance(Duration::from_millis(1));
    let stop = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (stop, polls) = (stop.clone(), polls.clone());
            rt.handle().spawn_on(0, &high, async move {
                while !stop.load(SeqCst) {
                    polls.fetch_add(1, SeqCst);
                    rescon_rt::yield_now().await;
                }
            })
        })
        .collect();
    // Many bursts of worker 0 with a high task waiting in each: every one a chance to hand.
    eventually("the high tasks run", || polls.load(SeqCst) >= 10_000);
    let moves = rt.handle().worker_moves();
    release.store(true, SeqCst);
    stop.store(true, SeqCst);
    rt.block_on(async {
        blocker.await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(
        moves[0].0, 0,
        "worker 0 handed work to the stalled worker: {moves:?}"
    );
}
