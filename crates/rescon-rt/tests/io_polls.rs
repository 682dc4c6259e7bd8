//! How often a worker asks the kernel for I/O events (the runtime's overhead per request).

use rescon::{Attributes, Registry};
use rescon_rt::{Builder, IoPolls, TcpStream};
use std::io::Write;
use std::time::Duration;

/// One worker, with an event gap of 20 ms: only a stall of the worker thread that long (not a
/// slow machine in general) could make a poll due between its wake-up and its next sleep.
fn one_worker(registry: &Registry, yield_before_sleep: bool) -> rescon_rt::Runtime {
    Builder::new(registry)
        .workers(1)
        .event_gap(Duration::from_millis(20))
        .yield_before_sleep(yield_before_sleep)
        .build()
        .unwrap()
}

/// A worker of `rt` serving one connection: the client's end, and the reader task's handle.
struct Served {
    client: std::net::TcpStream,
    reader: rescon_rt::JoinHandle<usize>,
}

fn serve_one(rt: &rescon_rt::Runtime, registry: &Registry) -> Served {
    let c = registry
        .root()
        .create_child("conn", Attributes::default())
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    let server = {
        let _rt = rt.enter();
        TcpStream::from_std(server, &c).unwrap()
    };
    let reader = rt.spawn_in(&c, async move {
        let mut buf = [0u8; 16];
        server.read(&mut buf).await.unwrap()
    });
    Served { client, reader }
}

/// Sends the served connection 4 bytes once the worker sleeps, and returns the worker's
/// `epoll_wait` counts from before the data to after the worker went back to sleep.
fn wake_once(rt: &rescon_rt::Runtime, mut s: Served) -> (IoPolls, IoPolls) {
    // The reader runs, finds nothing, and the worker sleeps (longer than the gap).
    std::thread::sleep(Duration::from_millis(100));
    let before = rt.handle().worker_io_polls()[0];
    s.client.write_all(b"ping").unwrap();
    assert_eq!(rt.block_on(s.reader).unwrap(), 4);
    // Let the worker go back to sleep.
    std::thread::sleep(Duration::from_millis(100));
    let after = rt.handle().worker_io_polls()[0];
    assert!(
        after.sleeps > before.sleeps,
        "the worker slept and woke for the data: {before:?} -> {after:?}"
    );
    (before, after)
}

/// A worker that slept longer than the event gap, woken by data, serves it and sleeps again
/// without a non-blocking epoll_wait in between: its view of I/O is as fresh as its wake-up.
#[test]
fn a_long_sleep_is_not_followed_by_an_extra_poll() {
    let registry = Registry::new();
    let rt = one_worker(&registry, false);
    let served = serve_one(&rt, &registry);
    let (before, after) = wake_once(&rt, served);
    assert_eq!(
        after.polls, before.polls,
        "no non-blocking epoll_wait between the wake-up and the next sleep: {before:?} -> {after:?}"
    );
}

/// With `yield_before_sleep` (the default), a worker that runs out of work yields its CPU and
/// looks at I/O once without blocking before it sleeps: one such call per idle spell, not a
/// loop of them.
#[test]
fn an_idle_spell_yields_once_then_sleeps() {
    let registry = Registry::new();
    let rt = one_worker(&registry, true);
    let served = serve_one(&rt, &registry);
    let (before, after) = wake_once(&rt, served);
    assert_eq!(
        after.polls,
        before.polls + 1,
        "one non-blocking epoll_wait after the yield, then a sleep: {before:?} -> {after:?}"
    );
    // Idle, it does not yield and poll again (only a burst of work earns another yield),
    // whatever wakes it.
    std::thread::sleep(Duration::from_millis(100));
    let idle = rt.handle().worker_io_polls()[0];
    assert_eq!(
        idle.polls, after.polls,
        "an idle worker sleeps: {after:?} -> {idle:?}"
    );
}
