//! Run-time changes: moved prefixes take effect for new SYNs; accepted and queued
//! connections stay where they are; members can be added and retired.

#[path = "listen_common/mod.rs"]
mod common;

use common::*;
use rescon::{Attributes, Registry};
use rescon_linux::listen::{Error, Filter, FilterError, ListenerGroup};
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::Duration;

const T: Duration = Duration::from_secs(2);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Sends a byte from the client and reads it on the server side, and back.
fn alive(client: &mut TcpStream, server: &mut TcpStream) {
    server.set_nonblocking(false).unwrap();
    client.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    server.read_exact(&mut b).unwrap();
    server.write_all(b"y").unwrap();
    client.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"y");
}

#[test]
fn moving_a_prefix_redirects_new_syns_and_keeps_existing_connections() {
    let reg = Registry::new();
    let root = reg.root();
    let [d, a, b] =
        ["default", "a", "b"].map(|n| root.create_child(n, Attributes::default()).unwrap());
    let group = ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
        .member(&d, Filter::any())
        .member(&a, "127.0.0.2/32".parse().unwrap())
        .member(&b, Filter::nothing())
        .build()
        .unwrap();
    let dst = group.local_addr();
    let m = group.members();

    // One connection accepted by A, two left queued in A.
    let mut c1 = connect_from(ip("127.0.0.2"), dst, T).unwrap();
    wait_queued(&m[1], 1);
    let mut s1 = m[1].accept().unwrap().unwrap().stream;
    let mut c2 = connect_from(ip("127.0.0.2"), dst, T).unwrap();
    let _c3 = connect_from(ip("127.0.0.2"), dst, T).unwrap();
    wait_queued(&m[1], 2);

    let prev = group
        .move_prefixes(&["127.0.0.2/32".parse().unwrap()], m[2].id())
        .unwrap();
    assert_eq!(
        prev,
        vec![("127.0.0.2/32".parse().unwrap(), Some(m[1].id()))]
    );
    assert_eq!(group.classify(ip("127.0.0.2")), Some(m[2].id()));

    // New SYNs from .2 land on B.
    let _c4 = connect_from(ip("127.0.0.2"), dst, T).unwrap();
    wait_queued(&m[2], 1);
    // A's queue is intact and its connections work.
    assert_eq!(m[1].queue().unwrap().0, 2);
    alive(&mut c1, &mut s1);
    let mut s2 = m[1].accept().unwrap().unwrap().stream;
    alive(&mut c2, &mut s2);
    assert!(m[1].accept().unwrap().is_some());
    assert!(m[1].accept().unwrap().is_none());

    // Back again, and removal of the last listed prefix.
    group
        .move_prefixes(&["127.0.0.2/32".parse().unwrap()], m[1].id())
        .unwrap();
    let _c5 = connect_from(ip("127.0.0.2"), dst, T).unwrap();
    wait_queued(&m[1], 1);
    group
        .remove_prefix(m[1].id(), "127.0.0.2/32".parse().unwrap())
        .unwrap();
    let _c6 = connect_from(ip("127.0.0.2"), dst, T).unwrap();
    wait_queued(&m[0], 1);
    assert_eq!(m[2].queue().unwrap().0, 1, "B keeps what it had");
}

#[test]
fn refused_changes_change_nothing() {
    let reg = Registry::new();
    let root = reg.root();
    let [d, a] = ["default", "a"].map(|n| root.create_child(n, Attributes::default()).unwrap());
    let group = ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
        .member(&d, Filter::any())
        .member(&a, "127.0.0.2/32".parse().unwrap())
        .build()
        .unwrap();
    let m = group.members();
    let before = group.program();
    // Taking the default away would leave sources uncovered.
    assert!(matches!(
        group.set_filter(m[0].id(), Filter::nothing()),
        Err(Error::Filter(FilterError::Uncovered { .. }))
    ));
    assert!(matches!(
        group.add_prefix(m[0].id(), "10.0.0.0/8".parse().unwrap()),
        Err(Error::Complement(_))
    ));
    assert!(matches!(
        group.remove_prefix(m[1].id(), "127.0.0.3/32".parse().unwrap()),
        Err(Error::NotListed { .. })
    ));
    assert!(matches!(
        group.add_prefix(m[1].id(), "::1/128".parse().unwrap()),
        Err(Error::Filter(FilterError::WrongFamily { .. }))
    ));
    assert_eq!(group.program(), before);
    let _c = connect_from(ip("127.0.0.2"), group.local_addr(), T).unwrap();
    wait_queued(&m[1], 1);
}

#[test]
fn members_added_and_retired_at_run_time_lose_nothing_queued() {
    let reg = Registry::new();
    let root = reg.root();
    let [d, a, late] =
        ["default", "a", "late"].map(|n| root.create_child(n, Attributes::default()).unwrap());
    let group = ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
        .member(&d, Filter::any())
        .member(&a, "127.0.0.2/32".parse().unwrap())
        .build()
        .unwrap();
    let dst = group.local_addr();
    let m = group.members();
    let _q1 = connect_from(ip("127.0.0.2"), dst, T).unwrap();
    let _q0 = connect_from(ip("127.0.0.4"), dst, T).unwrap();
    wait_queued(&m[1], 1);
    wait_queued(&m[0], 1);

    let new = group
        .add_member(&late, "127.0.0.3/32".parse().unwrap())
        .unwrap();
    assert_eq!(new.id().get(), 2);
    let _c = connect_from(ip("127.0.0.3"), dst, T).unwrap();
    wait_queued(&new, 1);
    assert_eq!(m[1].queue().unwrap().0, 1);
    assert_eq!(m[0].queue().unwrap().0, 1);

    // Retire A: its source goes to the default member; A's queue stays acceptable.
    let retired = group.retire(m[1].id()).unwrap();
    assert!(retired.is_retired());
    assert_eq!(group.members().len(), 2);
    let _c = connect_from(ip("127.0.0.2"), dst, T).unwrap();
    wait_queued(&m[0], 2);
    assert!(retired.accept().unwrap().is_some());
    assert!(matches!(
        group.add_prefix(retired.id(), "127.0.0.9/32".parse().unwrap()),
        Err(Error::Retired(_))
    ));
    // A member added after a retirement still gets the next index.
    let newer = group.add_member(&late, Filter::nothing()).unwrap();
    assert_eq!(newer.id().get(), 3);
    group
        .move_prefixes(&["127.0.0.3/32".parse().unwrap()], newer.id())
        .unwrap();
    let _c = connect_from(ip("127.0.0.3"), dst, T).unwrap();
    wait_queued(&newer, 1);
    wait_queued(&new, 1);
}
