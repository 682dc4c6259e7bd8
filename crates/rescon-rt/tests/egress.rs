//! Egress limits on sockets, on the manual clock: a container's `egress_bytes_per_sec` holds
//! its sockets (and its descendants') to that rate, exactly in simulated time.

use rescon::{Attributes, Container, Registry};
use rescon_rt::{Builder, Clock, Runtime};
use std::io::Read;

fn runtime(registry: &Registry) -> (Runtime, Clock) {
    let clock = Clock::manual();
    let rt = Builder::new(registry)
        .workers(1)
        .clock(clock.clone())
        .build()
        .expect("runtime");
    (rt, clock)
}

fn child(parent: &Container, name: &str, egress: Option<&str>) -> Container {
    let mut a = Attributes::default();
    if let Some(e) = egress {
        a.set("egress_bytes_per_sec", e).unwrap();
    }
    parent.create_child(name, a).unwrap()
}

/// A loopback connection: the server side for the runtime, and a thread reading the client
/// side to the end, returning how many bytes it got.
fn pair() -> (std::net::TcpStream, std::thread::JoinHandle<usize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut total = 0;
        loop {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    (server, reader)
}

/// Sends `bytes` from each of `conns` (one connection per container), all at once; returns
/// the simulated seconds it took and what each reader got.
fn send(rt: &Runtime, clock: &Clock, conns: &[Container], bytes: usize) -> (f64, Vec<usize>) {
    let t0 = clock.now_ns();
    let mut tasks = Vec::new();
    let mut readers = Vec::new();
    for c in conns {
        let (server, reader) = pair();
        readers.push(reader);
        let c2 = c.clone();
        tasks.push(rt.spawn_in(c, async move {
            let s = rescon_rt::TcpStream::from_std(server, &c2).unwrap();
            s.write_all(&vec![7u8; bytes]).await.unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }));
    }
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let secs = (clock.now_ns() - t0) as f64 / 1e9;
    (
        secs,
        readers.into_iter().map(|r| r.join().unwrap()).collect(),
    )
}

#[test]
fn a_limited_container_sends_at_its_rate() {
    let registry = Registry::new();
    let (rt, clock) = runtime(&registry);
    let root = registry.root();
    let slow = child(&root, "slow", Some("100KB"));
    let (secs, got) = send(&rt, &clock, std::slice::from_ref(&slow), 1_000_000);
    assert_eq!(got, [1_000_000], "everything arrives");
    // A full bucket (16 KiB) goes at once, the rest at 100 kB/s.
    let want = (1_000_000.0 - 16_384.0) / 100_000.0;
    eprintln!("1 MB at 100 kB/s took {secs:.3} s of simulated time (want {want:.3})");
    assert!((secs - want).abs() < 0.15, "{secs} s");
    assert_eq!(slow.usage().bytes_out, 1_000_000);
}

#[test]
fn an_ancestors_limit_is_shared_by_its_descendants() {
    let registry = Registry::new();
    let (rt, clock) = runtime(&registry);
    let root = registry.root();
    let class = child(&root, "class", Some("100KB"));
    let a = child(&class, "a", None);
    let b = child(&class, "b", None);
    let (secs, got) = send(&rt, &clock, &[a, b], 500_000);
    assert_eq!(got, [500_000, 500_000]);
    let want = (1_000_000.0 - 16_384.0) / 100_000.0;
    eprintln!("2 x 500 kB under one 100 kB/s limit took {secs:.3} s (want {want:.3})");
    assert!((secs - want).abs() < 0.25, "{secs} s");
}

#[test]
fn an_unlimited_container_is_not_held_back() {
    let registry = Registry::new();
    let (rt, clock) = runtime(&registry);
    let root = registry.root();
    // A limit elsewhere in the namespace makes every send look up the tree.
    let _other = child(&root, "other", Some("1KB"));
    let free = child(&root, "free", None);
    let (secs, got) = send(&rt, &clock, &[free], 1_000_000);
    assert_eq!(got, [1_000_000]);
    assert!(secs < 0.001, "{secs} s");
}
