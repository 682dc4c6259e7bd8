//! How often a worker asks the kernel for I/O events (the runtime's overhead per request).

use rescon::{Attributes, Registry};
use rescon_rt::{Builder, TcpStream};
use std::io::Write;
use std::time::Duration;

/// A worker that slept longer than the event gap, woken by data, serves it and sleeps again
/// without a non-blocking epoll_wait in between: its view of I/O is as fresh as its wake-up.
#[test]
fn a_long_sleep_is_not_followed_by_an_extra_poll() {
    let registry = Registry::new();
    // A gap of 20 ms: only a stall of the worker thread that long (not a slow machine in
    // general) could make a poll due between its wake-up and its next sleep.
    let rt = Builder::new(&registry)
        .workers(1)
        .event_gap(Duration::from_millis(20))
        .build()
        .unwrap();
    let c = registry
        .root()
        .create_child("conn", Attributes::default())
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
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
    // The reader runs, finds nothing, and the worker sleeps (longer than the gap).
    std::thread::sleep(Duration::from_millis(100));
    let before = rt.handle().worker_io_polls()[0];
    client.write_all(b"ping").unwrap();
    assert_eq!(rt.block_on(reader).unwrap(), 4);
    // Let the worker go back to sleep.
    std::thread::sleep(Duration::from_millis(100));
    let after = rt.handle().worker_io_polls()[0];
    assert!(
        after.sleeps > before.sleeps,
        "the worker slept and woke for the data: {before:?} -> {after:?}"
    );
    assert_eq!(
        after.polls, before.polls,
        "no non-blocking epoll_wait between the wake-up and the next sleep: {before:?} -> {after:?}"
    );
}
