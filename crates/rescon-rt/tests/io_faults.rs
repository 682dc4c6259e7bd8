//! Sockets charge their container; hyper serves on the runtime; faults do not take it down.

use rescon::{Attributes, Container, Registry};
use rescon_rt::{Builder, TcpListener, TcpStream};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn child(parent: &Container, name: &str) -> Container {
    parent.create_child(name, Attributes::default()).unwrap()
}

#[test]
fn socket_bytes_are_charged_to_the_socket_container() {
    let registry = Registry::new();
    let rt = Builder::new(&registry).workers(2).build().unwrap();
    let srv = child(&registry.root(), "echo");
    let listener = rt
        .block_on(async { TcpListener::bind_in("127.0.0.1:0".parse().unwrap(), &srv) })
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn_in(&srv, async move {
        let (conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            conn.write_all(&buf[..n]).await.unwrap();
        }
    });
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    let data = vec![7u8; 100_000];
    let mut back = vec![0u8; data.len()];
    let mut writer = client.try_clone().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| writer.write_all(&data).unwrap());
        client.read_exact(&mut back).unwrap();
    });
    assert_eq!(back, data);
    drop(client);
    let t = Instant::now();
    while srv.usage().bytes_out < 100_000 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let u = srv.usage();
    assert_eq!(u.bytes_in, 100_000);
    assert_eq!(u.bytes_out, 100_000);
    assert_eq!(u.conns_accepted, 1);
    rt.flush_usage();
    assert!(
        srv.usage().cpu_ns > 0,
        "the echo's CPU is charged to its container"
    );
}

#[test]
fn hyper_serves_with_a_container_per_connection() {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let registry = Registry::new();
    let rt = Builder::new(&registry).workers(2).build().unwrap();
    let web = child(&registry.root(), "web");
    let web2 = web.clone();
    let listener = rt
        .block_on(async { TcpListener::bind_in("127.0.0.1:0".parse().unwrap(), &web) })
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn_in(&web, async move {
        let mut n = 0;
        while let Ok((mut conn, _)) = listener.accept().await {
            n += 1;
            let c = web2
                .create_child(&format!("conn-{n}"), Attributes::default())
                .unwrap();
            conn.set_container(&c);
            rescon_rt::spawn_in(&c, async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let id = rescon_rt::current().id();
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        format!("served in {id}"),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(rescon_rt::HyperTimer::current())
                    .serve_connection(conn, svc)
                    .await;
            });
        }
    });
    let bodies: Vec<String> = rt.block_on(async move {
        let mut out = Vec::new();
        for _ in 0..2 {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(stream).await.unwrap();
            rescon_rt::spawn(conn);
            for _ in 0..2 {
                send.ready().await.unwrap();
                let req = hyper::Request::get("/")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                out.push(String::from_utf8(body.to_vec()).unwrap());
            }
        }
        out
    });
    assert_eq!(bodies.len(), 4);
    assert_eq!(
        bodies[0], bodies[1],
        "keep-alive: one connection, one container"
    );
    assert_ne!(
        bodies[1], bodies[2],
        "a new connection gets a new container"
    );
    assert_ne!(bodies[0], format!("served in {}", web.id()));
}

#[test]
fn a_panicking_task_is_reported_and_the_worker_goes_on() {
    let registry = Registry::new();
    let rt = Builder::new(&registry).workers(1).build().unwrap();
    let c = child(&registry.root(), "c");
    let err = rt
        .block_on(rt.spawn_in(&c, async { panic!("boom") }))
        .map(|_: ()| ())
        .unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.panic_message(), Some("boom"));
    let v = rt.block_on(rt.spawn_in(&c, async { 41 + 1 })).unwrap();
    assert_eq!(v, 42, "the same worker runs the next task");
}

#[test]
fn dropping_the_runtime_releases_every_container() {
    let registry = Registry::new();
    let before = registry.len();
    {
        let rt = Builder::new(&registry).workers(2).build().unwrap();
        let parent = child(&registry.root(), "parent");
        for i in 0..20 {
            let c = child(&parent, &format!("c{i}"));
            // Tasks that never finish: they hold their containers until the runtime goes.
            rt.spawn_in(&c, async {
                rescon_rt::sleep(Duration::from_secs(3600)).await;
            });
        }
        let l = rt
            .block_on(async { TcpListener::bind_in("127.0.0.1:0".parse().unwrap(), &parent) })
            .unwrap();
        rt.spawn_in(&parent, async move {
            let _ = l.accept().await;
        });
        std::thread::sleep(Duration::from_millis(20));
        assert!(registry.len() >= before + 21);
        drop(parent);
    }
    assert_eq!(
        registry.len(),
        before,
        "every container was released with the runtime"
    );
}

#[test]
fn idle_class_work_lowers_the_worker_and_normal_work_raises_it() {
    use rescon_rt::ThreadPriority;
    let registry = Registry::new();
    let rt = Builder::new(&registry).workers(1).build().unwrap();
    let tid = rt.handle().worker_tids()[0];
    let mut a = Attributes::default();
    a.set("class", "idle").unwrap();
    let idle = registry.root().create_child("idle", a).unwrap();
    let normal = child(&registry.root(), "normal");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let bg = rt.spawn_in(&idle, async move {
        while !s2.load(std::sync::atomic::Ordering::SeqCst) {
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(100) {}
            rescon_rt::yield_now().await;
        }
    });
    let wait_for = |want: bool| {
        let t = Instant::now();
        while rt.handle().workers_lowered()[0] != want && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        rt.handle().workers_lowered()[0] == want
    };
    if !wait_for(true) {
        let required = std::env::var("RESCON_REQUIRE_KERNEL").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "RESCON_REQUIRE_KERNEL=1 but the worker never lowered itself"
        );
        eprintln!("skipped: the worker cannot change its priority here (needs CAP_SYS_NICE)");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        return;
    }
    let p = ThreadPriority::of_thread(tid).unwrap();
    assert_eq!(p.policy, ThreadPriority::SCHED_IDLE, "{p:?}");
    // Normal-class work arrives: the worker comes back at once.
    let stop2 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s3 = stop2.clone();
    let fg = rt.spawn_in(&normal, async move {
        while !s3.load(std::sync::atomic::Ordering::SeqCst) {
            rescon_rt::yield_now().await;
        }
    });
    assert!(wait_for(false), "normal work raised the worker");
    let p = ThreadPriority::of_thread(tid).unwrap();
    assert_eq!(p.policy, ThreadPriority::SCHED_OTHER, "{p:?}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    stop2.store(true, std::sync::atomic::Ordering::SeqCst);
    rt.block_on(async {
        bg.await.unwrap();
        fg.await.unwrap();
    });
}

#[test]
fn a_worker_hosting_high_class_work_runs_at_a_lower_nice_value() {
    use rescon_rt::{HighPriority, ThreadPriority};
    let registry = Registry::new();
    let rt = Builder::new(&registry)
        .workers(1)
        .high_priority(HighPriority::Nice(-5))
        .build()
        .unwrap();
    let tid = rt.handle().worker_tids()[0];
    let orig = ThreadPriority::of_thread(tid).unwrap().nice;
    let mut a = Attributes::default();
    a.set("class", "high").unwrap();
    let high = registry.root().create_child("high", a).unwrap();
    // A high-class task waiting (as an accept loop does), then gone.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let waiting = rt.spawn_in(&high, async move {
        while rx.try_recv().is_err() {
            rescon_rt::sleep(Duration::from_millis(1)).await;
        }
    });
    let nice_is = |want: i32| {
        let t = Instant::now();
        while ThreadPriority::of_thread(tid).unwrap().nice != want
            && t.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        ThreadPriority::of_thread(tid).unwrap().nice == want
    };
    if !nice_is(orig.min(-5)) {
        let required = std::env::var("RESCON_REQUIRE_KERNEL").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "RESCON_REQUIRE_KERNEL=1 but the worker never raised itself"
        );
        eprintln!("skipped: the worker cannot lower its nice value here (needs CAP_SYS_NICE)");
        tx.send(()).unwrap();
        rt.block_on(waiting).unwrap();
        return;
    }
    tx.send(()).unwrap();
    rt.block_on(waiting).unwrap();
    assert!(
        nice_is(orig),
        "back to nice {orig} once no high-class work is left"
    );
}

/// A one-worker runtime that raises its worker to nice -5 for high-class work, hosting a
/// high-class task that waits all along (as an accept loop does), beside a normal-class
/// container.
struct Raised {
    rt: rescon_rt::Runtime,
    tid: i32,
    /// The worker's own nice value.
    orig: i32,
    high: Container,
    low: Container,
    hosted: Option<rescon_rt::JoinHandle<()>>,
    /// Just before high-class work last ran (in [`Raised::start`]).
    ran_high: Instant,
    _registry: Registry,
}

impl Raised {
    /// Starts it and runs high-class work once; `None` (the test skips, saying why) where
    /// the worker cannot be raised.
    fn start() -> Option<Raised> {
        use rescon_rt::{HighPriority, ThreadPriority};
        let registry = Registry::new();
        let rt = Builder::new(&registry)
            .workers(1)
            .high_priority(HighPriority::Nice(-5))
            .build()
            .unwrap();
        let tid = rt.handle().worker_tids()[0];
        let orig = ThreadPriority::of_thread(tid).unwrap().nice;
        if orig <= -5 {
            eprintln!("skipped: this thread already runs at nice {orig}, nothing to raise to -5");
            return None;
        }
        let mut a = Attributes::default();
        a.set("class", "high").unwrap();
        let high = registry.root().create_child("high", a).unwrap();
        let low = child(&registry.root(), "low");
        let hosted = rt.spawn_in(&high, async {
            rescon_rt::sleep(Duration::from_secs(3600)).await;
        });
        let r = Raised {
            rt,
            tid,
            orig,
            high,
            low,
            hosted: Some(hosted),
            ran_high: Instant::now(),
            _registry: registry,
        };
        if r.nice_in(&r.high) != -5 {
            let required = std::env::var("RESCON_REQUIRE_KERNEL").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "RESCON_REQUIRE_KERNEL=1 but the worker did not raise itself for high-class work"
            );
            eprintln!("skipped: the worker cannot lower its nice value here (needs CAP_SYS_NICE)");
            return None;
        }
        Some(r)
    }

    /// The worker's nice value, read from inside a task of `c` (so while the worker runs it).
    fn nice_in(&self, c: &Container) -> i32 {
        let tid = self.tid;
        self.rt
            .block_on(self.rt.spawn_in(c, async move {
                rescon_rt::ThreadPriority::of_thread(tid).unwrap().nice
            }))
            .unwrap()
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        if let Some(h) = self.hosted.take() {
            h.cancel();
        }
    }
}

#[test]
fn a_worker_hosting_high_class_work_runs_other_work_at_its_normal_nice_value() {
    let Some(r) = Raised::start() else { return };
    let orig = r.orig;
    // Other work, while the high-class task waits: not raised.
    assert_eq!(
        r.nice_in(&r.low),
        orig,
        "normal-class work runs at nice {orig}"
    );
    // High-class work again: raised again.
    assert_eq!(r.nice_in(&r.high), -5, "high-class work runs raised");
    assert_eq!(r.nice_in(&r.low), orig, "and normal-class work not");
}

/// The state letter of thread `tid` of this process (`R`, `S`, ...), from `/proc`.
fn thread_state(tid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    // After the command name, in parentheses that may hold anything.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.chars().next().unwrap()
}

/// Waits (up to 5 s) until thread `tid` sleeps, then returns its nice value.
fn nice_once_asleep(tid: i32) -> i32 {
    let start = std::time::Instant::now();
    while thread_state(tid) != 'S' {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the worker never went to sleep"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    rescon_rt::ThreadPriority::of_thread(tid).unwrap().nice
}

#[test]
fn a_worker_hosting_high_class_work_sleeps_raised_only_while_that_work_ran_lately() {
    let Some(r) = Raised::start() else { return };
    let orig = r.orig;
    // Asleep just after high-class work ran: raised, for that work's next event. (Only if it
    // fell asleep within the window; on a machine that delayed it longer, nothing to check.)
    let asleep = nice_once_asleep(r.tid);
    if r.ran_high.elapsed() < Duration::from_millis(90) {
        assert_eq!(asleep, -5, "asleep raised right after high-class work");
    }
    // The high-class task has not run for longer than the window; other work runs, then the
    // worker sleeps: at its normal nice value, though it still hosts the waiting task.
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(
        r.nice_in(&r.low),
        orig,
        "normal-class work runs at nice {orig}"
    );
    assert_eq!(
        nice_once_asleep(r.tid),
        orig,
        "asleep at nice {orig} when the hosted high-class work has been quiet"
    );
}
