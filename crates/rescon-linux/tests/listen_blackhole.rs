//! A member whose container has priority 0 drops SYNs: its sources never complete a
//! handshake, while everyone else's do.

#[path = "listen_common/mod.rs"]
mod common;

use common::*;
use rescon::{Attributes, Registry};
use rescon_linux::listen::{Filter, ListenerGroup};
use std::io;
use std::net::IpAddr;
use std::time::Duration;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn black_hole_attrs() -> Attributes {
    let mut a = Attributes::default();
    a.set("priority", "0").unwrap();
    a
}

fn times_out(r: io::Result<std::net::TcpStream>) -> bool {
    matches!(r, Err(e) if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock)
}

#[test]
fn black_holed_sources_never_complete_a_handshake() {
    let reg = Registry::new();
    let root = reg.root();
    let ok = root.create_child("ok", Attributes::default()).unwrap();
    let hole = root.create_child("hole", black_hole_attrs()).unwrap();
    let group = ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
        .member(&ok, Filter::any())
        .member(&hole, "127.0.0.3/32".parse().unwrap())
        .build()
        .unwrap();
    let dst = group.local_addr();
    let m = group.members();
    assert!(m[1].is_black_hole() && !m[0].is_black_hole());
    let short = Duration::from_millis(300);
    for _ in 0..3 {
        assert!(
            times_out(connect_from(ip("127.0.0.3"), dst, short)),
            "black-holed source connected"
        );
        connect_from(ip("127.0.0.2"), dst, Duration::from_secs(2)).expect("others connect");
    }
    wait_queued(&m[0], 3);
    assert_eq!(
        m[1].queue().unwrap().0,
        0,
        "nothing queued in the black hole"
    );
    assert!(m[1].accept().unwrap().is_none());
    // The dropped SYNs are counted on the black-hole socket (SO_MEMINFO drops).
    assert!(
        m[1].drops().unwrap() >= 3,
        "drops {}",
        m[1].drops().unwrap()
    );
    assert_eq!(m[0].drops().unwrap(), 0);
}

#[test]
fn priority_changes_take_effect_on_refresh() {
    let reg = Registry::new();
    let root = reg.root();
    let a = root.create_child("a", Attributes::default()).unwrap();
    let b = root.create_child("b", Attributes::default()).unwrap();
    let group = ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
        .member(&a, Filter::any())
        .member(&b, "127.0.0.3/32".parse().unwrap())
        .build()
        .unwrap();
    let dst = group.local_addr();
    let short = Duration::from_millis(300);
    let _c = connect_from(ip("127.0.0.3"), dst, short).expect("b accepts before");

    root.update(&b, |at| at.set("priority", "0")).unwrap();
    assert_eq!(group.refresh().unwrap(), vec![group.members()[1].id()]);
    assert!(times_out(connect_from(ip("127.0.0.3"), dst, short)));
    // The connection queued before the change is still there to accept.
    let m = group.members();
    wait_queued(&m[1], 1);
    assert!(m[1].accept().unwrap().is_some());

    root.update(&b, |at| at.set("priority", "50")).unwrap();
    assert_eq!(group.refresh().unwrap().len(), 1);
    assert!(group.refresh().unwrap().is_empty(), "nothing more to do");
    connect_from(ip("127.0.0.3"), dst, short).expect("b accepts again");
}
