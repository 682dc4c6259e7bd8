//! `listen_filter`: the listener filter syntax (`10.0.0.0/8, 192.0.2.1`, `!10.0.0.0/8`, `any`,
//! `none`) and the steering of a group built from the filters.
//!
//! The control byte picks the group's families (IPv4, IPv6-only, dual-stack); the rest is up to
//! six filters separated by `|`, one per member. Properties:
//!
//! - a parsed filter is normalized ([`Filter::check`]), and printing and parsing it again gives
//!   the same filter;
//! - a set of filters that [`Steering::new`] accepts compiles into a steering program or is
//!   refused as too large, never anything else;
//! - every source of the group's families has a member (the guarantee that no connection is
//!   left to the kernel's hashing), and the member chosen is one whose own filter takes the
//!   source; sources of other families have none. Sources probed: each prefix's first and
//!   last address and their neighbours, and the edges of both address spaces.

use super::{control, text};
use ipnet::IpNet;
use rescon_linux::listen::bpf;
use rescon_linux::listen::{Filter, Stack, Steering};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The target.
pub const TARGET: crate::Target = crate::Target {
    name: "listen_filter",
    about: "listener filters (CIDR lists, complements) and the steering of a group of them",
    run,
    dictionary: &[
        b"|",
        b", ",
        b"!",
        b"not ",
        b"any",
        b"none",
        b"*",
        b"/",
        b"/0",
        b"/32",
        b"/128",
        b"/96",
        b"10.0.0.0/8",
        b"0.0.0.0/0",
        b"::/0",
        b"::ffff:",
        b"::ffff:10.0.0.0/104",
        b"2001:db8::/32",
        b"fe80::1%lo",
        b"127.0.0.1",
        b"255.255.255.255",
        b"::",
        b"::1",
    ],
};

fn run(data: &[u8]) {
    let Some((ctl, rest)) = control(data) else {
        return;
    };
    let stack = [Stack::V4, Stack::V6Only, Stack::Dual][usize::from(ctl % 3)];
    let src = text(rest);
    let mut filters = Vec::new();
    for part in src.split('|').take(6) {
        match part.parse::<Filter>() {
            Ok(f) => {
                f.check().expect("a parsed filter is normalized");
                let printed = f.to_string();
                let again: Filter = printed
                    .parse()
                    .unwrap_or_else(|e| panic!("{f:?} printed as {printed:?}: {e}"));
                assert_eq!(again, f, "printed as {printed:?}");
                filters.push(f);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    if filters.is_empty() {
        return;
    }
    let steering = match Steering::new(stack, filters.clone()) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let _ = bpf::compile(&steering);
    for addr in probes(&filters) {
        let v4 = match addr {
            IpAddr::V4(_) => true,
            IpAddr::V6(a) => a.to_ipv4_mapped().is_some(),
        };
        let receives = if v4 {
            stack != Stack::V6Only
        } else {
            stack != Stack::V4
        };
        match steering.classify(addr) {
            Some(i) => {
                assert!(receives, "{addr} steered on a {stack} group");
                assert!(
                    filters[i].matches(addr),
                    "{addr} steered to member {i}, whose filter {} does not take it",
                    filters[i]
                );
            }
            None => assert!(!receives, "{addr} has no member on a {stack} group"),
        }
    }
}

fn probes(filters: &[Filter]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = vec![
        Ipv4Addr::UNSPECIFIED.into(),
        Ipv4Addr::BROADCAST.into(),
        Ipv4Addr::new(10, 0, 0, 1).into(),
        Ipv4Addr::new(127, 0, 0, 1).into(),
        Ipv6Addr::UNSPECIFIED.into(),
        Ipv6Addr::LOCALHOST.into(),
        Ipv6Addr::from(u128::MAX).into(),
        Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().into(),
    ];
    for f in filters {
        for p in f.prefix_set() {
            match p {
                IpNet::V4(n) => {
                    let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
                    for a in [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)] {
                        out.push(Ipv4Addr::from(a).into());
                        out.push(Ipv4Addr::from(a).to_ipv6_mapped().into());
                    }
                }
                IpNet::V6(n) => {
                    let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                    for a in [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)] {
                        out.push(Ipv6Addr::from(a).into());
                    }
                }
            }
        }
    }
    out
}
