//! Prioritized accept: a lower member's connections wait while a higher member has
//! connections queued.

#[path = "listen_common/mod.rs"]
mod common;

use common::*;
use rescon::{Attributes, Registry};
use rescon_linux::listen::{Filter, ListenerGroup};
use std::net::IpAddr;
use std::time::Duration;

#[test]
fn low_priority_accepts_wait_while_high_priority_connections_are_queued() {
    let reg = Registry::new();
    let root = reg.root();
    let mut hi = Attributes::default();
    hi.set("priority", "900").unwrap();
    let mut lo = Attributes::default();
    lo.set("priority", "10").unwrap();
    let high = root.create_child("high", hi).unwrap();
    let low = root.create_child("low", lo).unwrap();
    // The low member comes first in member order: order must come from priority.
    let group = ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
        .member(&low, Filter::any())
        .member(&high, "127.0.0.2/32".parse().unwrap())
        .build()
        .unwrap();
    let dst = group.local_addr();
    let m = group.members();
    let t = Duration::from_secs(2);
    let src = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut keep = Vec::new();
    // Low-priority clients arrive first.
    for _ in 0..3 {
        keep.push(connect_from(src("127.0.0.5"), dst, t).unwrap());
    }
    for _ in 0..4 {
        keep.push(connect_from(src("127.0.0.2"), dst, t).unwrap());
    }
    wait_queued(&m[0], 3);
    wait_queued(&m[1], 4);
    let mut order = Vec::new();
    while let Some((member, conn)) = group.accept_prioritized().unwrap() {
        order.push((member.id(), conn.peer.ip()));
    }
    let ids: Vec<usize> = order.iter().map(|(id, _)| id.get()).collect();
    assert_eq!(ids, vec![1, 1, 1, 1, 0, 0, 0], "{order:?}");
    assert!(order[..4].iter().all(|(_, p)| *p == src("127.0.0.2")));
    assert_eq!(high.usage().conns_accepted, 4);
    assert_eq!(low.usage().conns_accepted, 3);
}

#[test]
fn connections_beyond_the_container_limit_are_refused_at_accept() {
    let reg = Registry::new();
    let root = reg.root();
    let mut attrs = Attributes::default();
    attrs.set("max_connections", "2").unwrap();
    let c = root.create_child("capped", attrs).unwrap();
    let group = ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
        .member(&c, Filter::any())
        .build()
        .unwrap();
    let m = &group.members()[0];
    let mut keep = Vec::new();
    for _ in 0..3 {
        keep.push(
            connect_from(
                "127.0.0.1".parse().unwrap(),
                group.local_addr(),
                Duration::from_secs(2),
            )
            .unwrap(),
        );
    }
    wait_queued(m, 3);
    let a = m.accept().unwrap().unwrap();
    let b = m.accept().unwrap().unwrap();
    assert!(m.accept().unwrap().is_none(), "the third is over the limit");
    assert_eq!(c.usage().conns_refused, 1);
    drop((a, b));
    assert_eq!(c.usage_subtree().open_conns, 0);
}
