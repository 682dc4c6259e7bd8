//! Connections land on the member whose filter matches their source, in the kernel.

#[path = "listen_common/mod.rs"]
mod common;

use common::*;
use rescon::{Attributes, Registry};
use rescon_linux::listen::{Filter, ListenerGroup};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const T: Duration = Duration::from_secs(2);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Connects `n` times from each source, then checks every member queued exactly its own.
fn check_landing(group: &ListenerGroup, dst: SocketAddr, expect: &[(&str, usize)], n: u32) {
    let mut clients = Vec::new();
    for _ in 0..n {
        for (src, _) in expect {
            clients.push(connect_from(ip(src), dst, T).expect("connect"));
        }
    }
    let members = group.members();
    for (i, m) in members.iter().enumerate() {
        let mine: Vec<&str> = expect
            .iter()
            .filter(|(_, who)| *who == i)
            .map(|(s, _)| *s)
            .collect();
        wait_queued(m, n * mine.len() as u32);
        let got = accept_all(m);
        assert_eq!(got.len(), n as usize * mine.len(), "member {i}");
        for a in &got {
            let peer = match a.peer.ip() {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 => v4,
            };
            assert!(
                mine.iter().any(|s| ip(s) == peer),
                "member {i} got a connection from {peer}, expected only {mine:?}"
            );
            assert_eq!(group.classify(peer), Some(m.id()));
        }
        assert_eq!(
            m.container().usage().conns_accepted,
            u64::from(n) * mine.len() as u64
        );
    }
}

#[test]
fn ipv4_sources_land_on_their_members() {
    let reg = Registry::new();
    let root = reg.root();
    let [d, a, b] =
        ["default", "a", "b"].map(|n| root.create_child(n, Attributes::default()).unwrap());
    let group = ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
        .member(&d, Filter::any())
        .member(&a, "127.0.0.2".parse().unwrap())
        .member(&b, "127.0.0.3/32".parse().unwrap())
        .build()
        .unwrap();
    let dst = group.local_addr();
    assert_ne!(dst.port(), 0);
    check_landing(
        &group,
        dst,
        &[
            ("127.0.0.2", 1),
            ("127.0.0.3", 2),
            ("127.0.0.4", 0),
            ("127.0.0.1", 0),
        ],
        4,
    );
}

#[test]
fn overlapping_prefixes_resolve_longest_first_in_the_kernel() {
    let reg = Registry::new();
    let root = reg.root();
    let [wide, narrow, rest] =
        ["wide", "narrow", "rest"].map(|n| root.create_child(n, Attributes::default()).unwrap());
    // Member 0 excludes 127.0.0.0/29 (a complement); member 1 lists 127.0.0.0/29 but member 2
    // lists the longer 127.0.0.4/30.
    let group = ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
        .member(&rest, "!127.0.0.0/29".parse().unwrap())
        .member(&wide, "127.0.0.0/29".parse().unwrap())
        .member(&narrow, "127.0.0.4/30".parse().unwrap())
        .build()
        .unwrap();
    check_landing(
        &group,
        group.local_addr(),
        &[("127.0.0.2", 1), ("127.0.0.5", 2), ("127.0.0.9", 0)],
        3,
    );
}

#[test]
fn dual_stack_group_steers_ipv4_clients_and_ipv6_loopback() {
    if !have(is_root(), "needs root for a private network namespace") {
        return;
    }
    // `::` listens on every interface: in a private namespace that is only lo.
    in_new_netns(&[], || {
        let reg = Registry::new();
        let root = reg.root();
        let [d, a, b] =
            ["default", "a", "b"].map(|n| root.create_child(n, Attributes::default()).unwrap());
        let group = ListenerGroup::builder("[::]:0".parse().unwrap())
            .member(&d, Filter::any())
            .member(&a, "::ffff:127.0.0.2/128".parse().unwrap())
            .member(&b, "::1/128".parse().unwrap())
            .build()
            .unwrap();
        assert_eq!(group.stack(), rescon_linux::listen::Stack::Dual);
        let port = group.local_addr().port();
        // IPv4 clients reach the dual-stack sockets through 127.0.0.1.
        let v4: SocketAddr = SocketAddr::new(ip("127.0.0.1"), port);
        let v6: SocketAddr = SocketAddr::new(ip("::1"), port);
        let mut keep = Vec::new();
        for _ in 0..3 {
            keep.push(connect_from(ip("127.0.0.2"), v4, T).unwrap());
            keep.push(connect_from(ip("127.0.0.3"), v4, T).unwrap());
            keep.push(connect_from(ip("::1"), v6, T).unwrap());
        }
        let m = group.members();
        wait_queued(&m[0], 3);
        wait_queued(&m[1], 3);
        wait_queued(&m[2], 3);
        for a in accept_all(&m[1]) {
            assert_eq!(a.peer.ip(), ip("::ffff:127.0.0.2"));
        }
        for a in accept_all(&m[2]) {
            assert_eq!(a.peer.ip(), ip("::1"));
        }
        for a in accept_all(&m[0]) {
            assert_eq!(a.peer.ip(), ip("::ffff:127.0.0.3"));
        }
    });
}

#[test]
fn ipv6_sources_land_on_their_members() {
    if !have(is_root(), "needs root for a private network namespace") {
        return;
    }
    // Loopback has only ::1 for IPv6; a private namespace gets two documentation addresses.
    in_new_netns(
        &[
            "-6 addr add 2001:db8::2/128 dev lo nodad",
            "-6 addr add 2001:db8::3/128 dev lo nodad",
            "-6 addr add 2001:db8:1::9/128 dev lo nodad",
        ],
        || {
            let reg = Registry::new();
            let root = reg.root();
            let [d, a, b] =
                ["default", "a", "b"].map(|n| root.create_child(n, Attributes::default()).unwrap());
            let group = ListenerGroup::builder("[::1]:0".parse().unwrap())
                .member(&d, Filter::any())
                .member(&a, "2001:db8::2/128".parse().unwrap())
                .member(&b, "2001:db8::/64".parse().unwrap())
                .build()
                .unwrap();
            assert_eq!(group.stack(), rescon_linux::listen::Stack::V6Only);
            check_landing(
                &group,
                group.local_addr(),
                &[
                    ("2001:db8::2", 1),
                    ("2001:db8::3", 2),
                    ("2001:db8:1::9", 0),
                    ("::1", 0),
                ],
                3,
            );
        },
    );
}
