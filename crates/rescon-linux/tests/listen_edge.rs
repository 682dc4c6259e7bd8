//! The edge filter (XDP) and the early counters for real: the program's verdicts and counts on
//! crafted frames (`BPF_PROG_TEST_RUN`, nothing sent), and attached to `lo` of a fresh
//! network namespace, where black-holed sources (IPv4 and IPv6) cannot connect while others
//! can. Needs root.

mod listen_common;

use ipnet::IpNet;
use listen_common::{connect_from, have, in_new_netns, is_root};
use rescon::{Attributes, Registry};
use rescon_linux::listen::early::{Holes, SourceCount};
use rescon_linux::listen::edge::{self, EdgeFilter, Target, XDP_DROP, XDP_PASS, XdpMode};
use rescon_linux::listen::{Filter, ListenerGroup};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::time::Duration;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

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

/// An Ethernet frame with an IPv6 header and a TCP header.
fn frame6(src: Ipv6Addr, dst: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40 + 20];
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    f[14] = 0x60;
    f[18..20].copy_from_slice(&20u16.to_be_bytes());
    f[20] = 6;
    f[21] = 64;
    f[22..38].copy_from_slice(&src.octets());
    f[38..54].copy_from_slice(&dst.octets());
    f[54..56].copy_from_slice(&40000u16.to_be_bytes());
    f[56..58].copy_from_slice(&dport.to_be_bytes());
    f[66] = 5 << 4;
    f[67] = flags;
    f
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|p| p.parse().unwrap()).collect()
}

fn holes(list: &[&str]) -> Option<Holes> {
    let mut h = match Holes::new() {
        Ok(h) => h,
        Err(e) => {
            assert!(!have(false, &format!("eBPF maps and programs: {e}")));
            return None;
        }
    };
    h.set(&nets(list)).unwrap();
    Some(h)
}

fn target(port: u16, v4: Ipv4Addr, v6: Option<Ipv6Addr>) -> Target {
    Target {
        port,
        v4: Some(v4),
        v6,
    }
}

#[test]
fn the_program_drops_black_holed_syns_and_passes_the_rest() {
    if !have(is_root(), "loading BPF programs needs root") {
        return;
    }
    let Some(holes) = holes(&["198.19.0.0/16", "200.1.2.3/32"]) else {
        return;
    };
    let any = Ipv4Addr::UNSPECIFIED;
    let dst = Ipv4Addr::new(10, 77, 0, 1);
    let v = |d: Ipv4Addr, f: &[u8]| {
        edge::verdict_for(&target(8080, d, None), &holes, f).expect("test run")
    };
    let flood = Ipv4Addr::new(198, 19, 44, 5);
    assert_eq!(
        v(any, &frame(flood, dst, 8080, SYN)),
        XDP_DROP,
        "a SYN from the range"
    );
    assert_eq!(
        v(any, &frame(Ipv4Addr::new(200, 1, 2, 3), dst, 8080, SYN)),
        XDP_DROP,
        "a /32 whose top bit is set"
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
    // A group that receives IPv4 only passes IPv6 untouched.
    let six = frame6(
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
        8080,
        SYN,
    );
    assert_eq!(v(any, &six), XDP_PASS, "not this group's family");

    // Each drop was counted for its prefix, at the edge.
    let d = holes.drops().unwrap();
    let of = |p: &str| {
        d.iter()
            .find(|x| x.prefix == p.parse::<IpNet>().unwrap())
            .unwrap()
    };
    assert_eq!(
        (of("198.19.0.0/16").edge, of("198.19.0.0/16").socket),
        (2, 0)
    );
    assert_eq!(of("200.1.2.3/32").edge, 1);
    // The passed SYNs were counted by source /24: 198.20.0.0/24 and 200.1.2.0/24 (the
    // ports and addresses not ours are not looked at).
    let s = holes.take_sources().unwrap();
    assert_eq!(
        s,
        vec![
            SourceCount {
                prefix: "198.20.0.0/24".parse().unwrap(),
                syns: 1,
                acks: 0
            },
            SourceCount {
                prefix: "200.1.2.0/24".parse().unwrap(),
                syns: 1,
                acks: 0
            },
        ]
    );
    assert!(holes.take_sources().unwrap().is_empty(), "taken");
}

#[test]
fn sources_that_answer_are_told_from_those_that_do_not() {
    if !have(is_root(), "loading BPF programs needs root") {
        return;
    }
    let Some(holes) = holes(&[]) else { return };
    let t = target(80, Ipv4Addr::UNSPECIFIED, Some(Ipv6Addr::UNSPECIFIED));
    let dst = Ipv4Addr::new(10, 0, 0, 1);
    let run = |f: Vec<u8>| edge::verdict_for(&t, &holes, &f).unwrap();
    // A client completes 3 handshakes and sends data; a spoofer sends 5 SYNs; an
    // established peer that sent no SYN this period sends ACKs, which are not counted.
    for i in 0..3 {
        let c = Ipv4Addr::new(192, 0, 2, 10 + i);
        assert_eq!(run(frame(c, dst, 80, SYN)), XDP_PASS);
        run(frame(c, dst, 80, ACK));
        run(frame(c, dst, 80, ACK | 0x08));
    }
    for i in 0..5 {
        run(frame(Ipv4Addr::new(198, 19, 3, i), dst, 80, SYN));
    }
    run(frame(Ipv4Addr::new(203, 0, 113, 1), dst, 80, ACK));
    let me6: Ipv6Addr = "2001:db8:5:6:7::1".parse().unwrap();
    run(frame6(me6, "2001:db8::80".parse().unwrap(), 80, SYN));
    run(frame6(me6, "2001:db8::80".parse().unwrap(), 80, ACK));
    let s = holes.take_sources().unwrap();
    let get = |p: &str| {
        *s.iter()
            .find(|x| x.prefix == p.parse::<IpNet>().unwrap())
            .unwrap()
    };
    assert_eq!(s.len(), 3, "{s:?}");
    assert_eq!((get("192.0.2.0/24").syns, get("192.0.2.0/24").acks), (3, 6));
    assert_eq!(get("192.0.2.0/24").unanswered(), 0);
    assert_eq!(get("198.19.3.0/24").unanswered(), 5);
    assert_eq!(
        (get("2001:db8:5:6::/64").syns, get("2001:db8:5:6::/64").acks),
        (1, 1)
    );
}

#[test]
fn ipv6_black_holes_are_dropped_at_the_edge() {
    if !have(is_root(), "loading BPF programs needs root") {
        return;
    }
    let Some(mut holes) = holes(&["2001:db8:bad::/48"]) else {
        return;
    };
    let dst: Ipv6Addr = "2001:db8::80".parse().unwrap();
    let t = Target {
        port: 443,
        v4: None,
        v6: Some(dst),
    };
    let v = |holes: &Holes, src: &str, d: Ipv6Addr, port| {
        edge::verdict_for(&t, holes, &frame6(src.parse().unwrap(), d, port, SYN)).unwrap()
    };
    assert_eq!(v(&holes, "2001:db8:bad:1::7", dst, 443), XDP_DROP);
    assert_eq!(
        v(&holes, "2001:db8:bae::7", dst, 443),
        XDP_PASS,
        "outside the /48"
    );
    assert_eq!(
        v(&holes, "2001:db8:bad:1::7", dst, 444),
        XDP_PASS,
        "another port"
    );
    assert_eq!(
        v(
            &holes,
            "2001:db8:bad:1::7",
            "2001:db8::81".parse().unwrap(),
            443
        ),
        XDP_PASS,
        "another address"
    );
    let four = frame(
        Ipv4Addr::new(1, 2, 3, 4),
        Ipv4Addr::new(5, 6, 7, 8),
        443,
        SYN,
    );
    assert_eq!(
        edge::verdict_for(&t, &holes, &four).unwrap(),
        XDP_PASS,
        "IPv4 to a v6-only group"
    );
    // Taken out: passes, and the count stays.
    holes.set(&[]).unwrap();
    assert_eq!(v(&holes, "2001:db8:bad:1::7", dst, 443), XDP_PASS);
    let d = holes.drops().unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].prefix, d[0].edge),
        ("2001:db8:bad::/48".parse().unwrap(), 1)
    );
    // Back in: the count goes on from where it was.
    holes.set(&nets(&["2001:db8:bad::/48"])).unwrap();
    assert_eq!(v(&holes, "2001:db8:bad:2::1", dst, 443), XDP_DROP);
    assert_eq!(holes.drops().unwrap()[0].edge, 2);
}

fn times_out(src: IpAddr, dst: SocketAddr) -> bool {
    match connect_from(src, dst, Duration::from_millis(300)) {
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
        let (hole, other) = (IpAddr::from([127, 0, 0, 2]), IpAddr::from([127, 0, 0, 3]));
        let Some(mut holes) = holes(&["127.0.0.2/32"]) else {
            return;
        };
        let f = match EdgeFilter::attach(
            "lo",
            target(addr.port(), Ipv4Addr::LOCALHOST, None),
            &holes,
            XdpMode::Auto,
        ) {
            Ok(f) => f,
            Err(e) => {
                assert!(!have(false, &format!("XDP on lo: {e}")));
                return;
            }
        };
        assert_eq!(f.drops(), 0);
        assert!(
            times_out(hole, addr),
            "a black-holed source's SYN is dropped"
        );
        assert!(f.drops() >= 1, "and counted");
        assert!(!times_out(other, addr), "others connect");
        // Swap in the tables: the hole is lifted, another source goes in; the count goes on.
        let before = f.drops();
        holes.set(&nets(&["127.0.0.3/32"])).unwrap();
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
        let Some(holes) = holes(&[]) else { return };
        let e = EdgeFilter::attach(
            "nosuch0",
            target(80, Ipv4Addr::UNSPECIFIED, None),
            &holes,
            XdpMode::Auto,
        )
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains("nosuch0"), "{e}");
    });
}

fn black_hole() -> Attributes {
    let mut a = Attributes::default();
    a.set("priority", "0").unwrap();
    a
}

#[test]
fn a_group_with_an_edge_drops_its_black_holes_syns_before_the_socket() {
    if !have(is_root(), "network namespaces and XDP need root") {
        return;
    }
    in_new_netns(&[], || {
        let reg = Registry::new();
        let root = reg.root();
        let ok = root.create_child("ok", Attributes::default()).unwrap();
        let hole = root.create_child("hole", black_hole()).unwrap();
        let group = ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
            .member(&ok, Filter::any())
            .member(&hole, "127.0.0.3/32".parse().unwrap())
            .build()
            .unwrap();
        let dst = group.local_addr();
        let m = group.members();
        assert!(group.take_sources().is_none(), "no edge yet");
        group.drop_at_edge("lo", XdpMode::Generic).unwrap();
        assert_eq!(
            group.edges(),
            vec![("lo".to_string(), nets(&["127.0.0.3/32"]), 0)],
            "the edge starts with the black hole's prefixes"
        );
        assert!(times_out(IpAddr::from([127, 0, 0, 3]), dst));
        assert_eq!(
            m[1].drops().unwrap(),
            0,
            "dropped at the edge, not at the socket"
        );
        assert!(group.edge_drops() >= 1, "counted at the edge");
        let early = group.early_drops();
        assert_eq!(early.len(), 1);
        assert_eq!(early[0].1, Some(m[1].id()), "listed by the black hole");
        assert!(early[0].0.edge >= 1 && early[0].0.socket == 0, "{early:?}");
        let by_member = group.early_drops_by_member();
        assert_eq!(by_member, vec![(m[1].id(), early[0].0.edge)]);
        // A client's handshake is counted by source, with its ACK.
        assert!(!times_out(IpAddr::from([127, 0, 0, 4]), dst));
        let s = group.take_sources().unwrap().unwrap();
        let c = s
            .iter()
            .find(|c| c.prefix == "127.0.0.0/24".parse::<IpNet>().unwrap())
            .unwrap();
        assert!(c.syns >= 1 && c.acks >= 1 && c.unanswered() == 0, "{s:?}");
        // The defense moves another source to the black hole: the edge follows.
        let p2: IpNet = "127.0.0.2/32".parse().unwrap();
        group.move_prefixes(&[p2], m[1].id()).unwrap();
        assert_eq!(group.edges()[0].1, nets(&["127.0.0.2/32", "127.0.0.3/32"]));
        assert!(times_out(IpAddr::from([127, 0, 0, 2]), dst));
        assert!(
            !times_out(IpAddr::from([127, 0, 0, 4]), dst),
            "others connect"
        );
        // And back: the prefix keeps its count, with no member listing it.
        group.remove_prefix(m[1].id(), p2).unwrap();
        assert_eq!(group.edges()[0].1, nets(&["127.0.0.3/32"]));
        assert!(!times_out(IpAddr::from([127, 0, 0, 2]), dst));
        assert_eq!(m[1].drops().unwrap(), 0);
        let early = group.early_drops();
        let gone = early.iter().find(|(d, _)| d.prefix == p2).unwrap();
        assert!(gone.0.edge >= 1 && gone.1.is_none(), "{early:?}");
        // Every drop went to the black hole, the one that listed the prefix when it dropped.
        let total: u64 = early.iter().map(|(d, _)| d.total()).sum();
        assert_eq!(group.early_drops_by_member(), vec![(m[1].id(), total)]);
    });
}

#[test]
fn black_hole_sockets_count_their_drops_by_prefix_without_an_edge() {
    if !have(is_root(), "network namespaces and eBPF need root") {
        return;
    }
    in_new_netns(&["-6 addr add ::2/128 dev lo nodad"], || {
        let reg = Registry::new();
        let root = reg.root();
        let ok = root.create_child("ok", Attributes::default()).unwrap();
        let hole = root.create_child("hole", black_hole()).unwrap();
        let group = ListenerGroup::builder("[::]:0".parse().unwrap())
            .member(&ok, Filter::any())
            .member(&hole, "127.0.0.3/32, ::2/128".parse().unwrap())
            .build()
            .unwrap();
        let port = group.local_addr().port();
        let v4 = SocketAddr::from(([127, 0, 0, 1], port));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        assert!(times_out(IpAddr::from([127, 0, 0, 3]), v4));
        assert!(times_out("::2".parse().unwrap(), v6));
        assert!(!times_out(IpAddr::from([127, 0, 0, 4]), v4));
        assert!(!times_out(Ipv6Addr::LOCALHOST.into(), v6));
        let early = group.early_drops();
        for p in ["127.0.0.3/32", "::2/128"] {
            let (d, owner) = early
                .iter()
                .find(|(d, _)| d.prefix == p.parse::<IpNet>().unwrap())
                .unwrap_or_else(|| panic!("{p} in {early:?}"));
            assert!(d.socket >= 1 && d.edge == 0, "{p}: {d:?}");
            assert_eq!(*owner, Some(group.members()[1].id()));
        }
        assert!(
            group.members()[1].drops().unwrap() >= 2,
            "SO_MEMINFO sees them too"
        );
    });
}

#[test]
fn an_ipv6_group_drops_at_the_edge() {
    if !have(is_root(), "network namespaces and XDP need root") {
        return;
    }
    in_new_netns(
        &[
            "-6 addr add ::2/128 dev lo nodad",
            "-6 addr add ::3/128 dev lo nodad",
        ],
        || {
            let reg = Registry::new();
            let root = reg.root();
            let ok = root.create_child("ok", Attributes::default()).unwrap();
            let hole = root.create_child("hole", black_hole()).unwrap();
            let group = ListenerGroup::builder("[::1]:0".parse().unwrap())
                .member(&ok, Filter::any())
                .member(&hole, "::2/128".parse().unwrap())
                .build()
                .unwrap();
            group.drop_at_edge("lo", XdpMode::Generic).unwrap();
            let dst = group.local_addr();
            assert!(times_out("::2".parse().unwrap(), dst));
            assert!(!times_out("::3".parse().unwrap(), dst));
            assert!(group.edge_drops() >= 1);
            assert_eq!(
                group.members()[1].drops().unwrap(),
                0,
                "none reached the socket"
            );
        },
    );
}
