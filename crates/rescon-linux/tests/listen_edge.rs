//! The edge filter (XDP) for real: its program's verdicts on crafted frames
//! (`BPF_PROG_TEST_RUN`, nothing sent), and attached to `lo` of a fresh network namespace,
//! where black-holed sources cannot connect while others can. Needs root.

mod listen_common;

use ipnet::Ipv4Net;
use listen_common::{connect_from, have, in_new_netns, is_root};
use rescon_linux::listen::edge::{self, EdgeFilter, XDP_DROP, XDP_PASS, XdpMode};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

/// An Ethernet frame with an IPv4 header (no options) and a TCP header.
fn frame(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&40u16.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&src.octets());
    f[30..34].copy_from_slice(&dst.octets());
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[46] = 5 << 4;
    f[47] = flags;
    f
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn prefixes(list: &[&str]) -> Vec<Ipv4Net> {
    list.iter().map(|p| p.parse().unwrap()).collect()
}

#[test]
fn the_program_drops_black_holed_syns_and_passes_the_rest() {
    if !have(is_root(), "loading BPF programs needs root") {
        return;
    }
    let any = Ipv4Addr::UNSPECIFIED;
    let dst = Ipv4Addr::new(10, 77, 0, 1);
    let holes = prefixes(&["198.19.0.0/16", "200.1.2.3/32"]);
    let v = |d: Ipv4Addr, f: &[u8]| edge::verdict_for(d, 8080, &holes, f).expect("test run");
    let flood = Ipv4Addr::new(198, 19, 44, 5);
    assert_eq!(
        v(any, &frame(flood, dst, 8080, SYN)),
        XDP_DROP,
        "a SYN from the range"
    );
    assert_eq!(
        v(any, &frame(Ipv4Addr::new(200, 1, 2, 3), dst, 8080, SYN)),
        XDP_DROP,
        "a /32 whose top bit is set (32-bit compares)"
    );
    assert_eq!(
        v(any, &frame(Ipv4Addr::new(198, 20, 0, 1), dst, 8080, SYN)),
        XDP_PASS,
        "a SYN from outside the range"
    );
    assert_eq!(
        v(any, &frame(Ipv4Addr::new(200, 1, 2, 4), dst, 8080, SYN)),
        XDP_PASS,
        "next to the /32"
    );
    assert_eq!(
        v(any, &frame(flood, dst, 8080, SYN | ACK)),
        XDP_PASS,
        "a SYN-ACK"
    );
    assert_eq!(
        v(any, &frame(flood, dst, 8080, ACK)),
        XDP_PASS,
        "an established connection's ACK"
    );
    assert_eq!(
        v(any, &frame(flood, dst, 8081, SYN)),
        XDP_PASS,
        "another port"
    );
    assert_eq!(
        v(dst, &frame(flood, dst, 8080, SYN)),
        XDP_DROP,
        "our address"
    );
    assert_eq!(
        v(dst, &frame(flood, Ipv4Addr::new(10, 77, 0, 9), 8080, SYN)),
        XDP_PASS,
        "another address, when the group has one"
    );
    let mut v6 = frame(flood, dst, 8080, SYN);
    v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    assert_eq!(v(any, &v6), XDP_PASS, "not IPv4");
    let mut opts = frame(flood, dst, 8080, SYN);
    opts[14] = 0x46;
    assert_eq!(
        v(any, &opts),
        XDP_PASS,
        "IPv4 options: left to the listener's filter"
    );
    let mut frag = frame(flood, dst, 8080, SYN);
    frag[21] = 0x10;
    assert_eq!(v(any, &frag), XDP_PASS, "a later fragment");
    let short = frame(flood, dst, 8080, SYN);
    assert_eq!(
        v(any, &short[..40]),
        XDP_PASS,
        "too short to hold the flags"
    );
    assert_eq!(
        edge::verdict_for(any, 8080, &[], &frame(flood, dst, 8080, SYN)).unwrap(),
        XDP_PASS,
        "no prefixes, nothing dropped"
    );
}

fn times_out(src: Ipv4Addr, dst: SocketAddr) -> bool {
    match connect_from(src.into(), dst, Duration::from_millis(300)) {
        Ok(_) => false,
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
            true
        }
    }
}

#[test]
fn attached_to_an_interface_it_stops_the_handshake_of_black_holed_sources_only() {
    if !have(is_root(), "network namespaces and XDP need root") {
        return;
    }
    in_new_netns(&[], || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (hole, other) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
        let mut f = match EdgeFilter::attach(
            "lo",
            Ipv4Addr::LOCALHOST,
            addr.port(),
            &prefixes(&["127.0.0.2/32"]),
            XdpMode::Auto,
        ) {
            Ok(f) => f,
            Err(e) => {
                assert!(!have(false, &format!("XDP on lo: {e}")));
                return;
            }
        };
        assert_eq!(f.prefixes(), prefixes(&["127.0.0.2/32"]).as_slice());
        assert_eq!(f.drops(), 0);
        assert!(
            times_out(hole, addr),
            "a black-holed source's SYN is dropped"
        );
        assert!(f.drops() >= 1, "and counted");
        assert!(!times_out(other, addr), "others connect");
        // Swap: the hole is lifted atomically, another source goes in; the count goes on.
        let before = f.drops();
        f.set_prefixes(&prefixes(&["127.0.0.3/32"])).unwrap();
        assert!(!times_out(hole, addr));
        assert_eq!(f.drops(), before, "a passed SYN is not counted");
        assert!(times_out(other, addr));
        assert!(f.drops() > before);
        // Detached when dropped.
        drop(f);
        assert!(!times_out(other, addr));
        drop(l);
    });
}

#[test]
fn a_missing_interface_is_named_in_the_error() {
    if !have(is_root(), "network namespaces need root") {
        return;
    }
    in_new_netns(&[], || {
        let e = EdgeFilter::attach("nosuch0", Ipv4Addr::UNSPECIFIED, 80, &[], XdpMode::Auto)
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains("nosuch0"), "{e}");
    });
}

#[test]
fn a_group_with_an_edge_drops_its_black_holes_syns_before_the_socket() {
    use rescon::{Attributes, Registry};
    use rescon_linux::listen::{Filter, ListenerGroup};
    if !have(is_root(), "network namespaces and XDP need root") {
        return;
    }
    in_new_netns(&[], || {
        let reg = Registry::new();
        let root = reg.root();
        let ok = root.create_child("ok", Attributes::default()).unwrap();
        let mut a = Attributes::default();
        a.set("priority", "0").unwrap();
        let hole = root.create_child("hole", a).unwrap();
        let group = ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
            .member(&ok, Filter::any())
            .member(&hole, "127.0.0.3/32".parse().unwrap())
            .build()
            .unwrap();
        let dst = group.local_addr();
        let m = group.members();
        group.drop_at_edge("lo", XdpMode::Generic).unwrap();
        assert_eq!(
            group.edges(),
            vec![("lo".to_string(), prefixes(&["127.0.0.3/32"]), 0)],
            "the edge starts with the black hole's prefixes"
        );
        assert!(times_out(Ipv4Addr::new(127, 0, 0, 3), dst));
        assert_eq!(
            m[1].drops().unwrap(),
            0,
            "dropped at the edge, not at the socket"
        );
        assert!(group.edge_drops() >= 1, "counted at the edge");
        // The defense moves another source to the black hole: the edge follows.
        let p2: ipnet::IpNet = "127.0.0.2/32".parse().unwrap();
        group.move_prefixes(&[p2], m[1].id()).unwrap();
        assert_eq!(
            group.edges()[0].1,
            prefixes(&["127.0.0.2/32", "127.0.0.3/32"])
        );
        assert!(times_out(Ipv4Addr::new(127, 0, 0, 2), dst));
        assert!(
            !times_out(Ipv4Addr::new(127, 0, 0, 4), dst),
            "others connect"
        );
        // And back.
        group.remove_prefix(m[1].id(), p2).unwrap();
        assert_eq!(group.edges()[0].1, prefixes(&["127.0.0.3/32"]));
        assert!(!times_out(Ipv4Addr::new(127, 0, 0, 2), dst));
        assert_eq!(m[1].drops().unwrap(), 0);
    });
}
