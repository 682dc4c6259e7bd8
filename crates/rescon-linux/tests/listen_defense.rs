//! Half-open connections through sock_diag, and the defender acting on them, on real
//! sockets in a private network namespace. A listener filter that drops the client's final
//! ACK leaves handshakes half-open on the server while the clients think they connected.

#[path = "listen_common/mod.rs"]
mod common;

use common::*;
use rescon::{Attributes, Registry};
use rescon_linux::listen::bpf::{Insn, Program};
use rescon_linux::listen::defense::{Action, DefenseConfig};
use rescon_linux::listen::diag::{Diag, by_prefix};
use rescon_linux::listen::driver::Defender;
use rescon_linux::listen::{Filter, ListenerGroup};
use socket2::SockRef;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Passes SYNs, drops everything else: handshakes stay half-open on this listener.
fn drop_acks(l: &TcpListener) {
    let p = Program::from_insns(vec![
        Insn::ld_b(13),
        Insn::jset(0x02, 1, 0),
        Insn::ret(0),
        Insn::ret(u32::MAX),
    ]);
    SockRef::from(l)
        .attach_filter(&p.to_sock_filters())
        .unwrap();
}

fn half_open(from: &str, dst: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|_| {
            connect_from(ip(from), dst, Duration::from_secs(2)).expect("client side completes")
        })
        .collect()
}

#[test]
fn syn_recv_dump_groups_by_source_and_destroys() {
    if !have(
        is_root(),
        "needs root for a private namespace and SOCK_DESTROY",
    ) {
        return;
    }
    in_new_netns(&[], || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        drop_acks(&l);
        let dst = l.local_addr().unwrap();
        let _a = half_open("127.0.0.2", dst, 3);
        let _b = half_open("127.0.0.3", dst, 2);
        let mut diag = Diag::open().unwrap();
        let socks = diag.syn_recv(dst.port()).unwrap();
        assert_eq!(socks.len(), 5, "{socks:?}");
        assert!(socks.iter().all(|s| s.local == dst));
        let g = by_prefix(&socks, 32, 128);
        assert_eq!(
            g,
            vec![
                ("127.0.0.2/32".parse().unwrap(), 3),
                ("127.0.0.3/32".parse().unwrap(), 2)
            ]
        );
        assert_eq!(
            by_prefix(&socks, 24, 64),
            vec![("127.0.0.0/24".parse().unwrap(), 5)]
        );
        // Another port sees none of them.
        assert!(
            diag.syn_recv(dst.port().wrapping_add(1))
                .unwrap()
                .is_empty()
        );

        let from2: Vec<_> = socks
            .iter()
            .filter(|s| s.remote.ip() == ip("127.0.0.2"))
            .copied()
            .collect();
        let d = diag.destroy(&from2).unwrap();
        assert_eq!((d.destroyed, d.gone, d.failed), (3, 0, 0));
        let left = diag.syn_recv(dst.port()).unwrap();
        assert_eq!(left.len(), 2);
        assert!(left.iter().all(|s| s.remote.ip() == ip("127.0.0.3")));
        let d = diag.destroy(&from2).unwrap();
        assert_eq!((d.destroyed, d.gone), (0, 3), "already gone");
    });
}

#[test]
fn defender_quarantines_flushes_and_releases() {
    if !have(
        is_root(),
        "needs root for a private namespace and SOCK_DESTROY",
    ) {
        return;
    }
    in_new_netns(&[], || {
        let reg = Registry::new();
        let root = reg.root();
        let mut bh = Attributes::default();
        bh.set("priority", "0").unwrap();
        let victim = root.create_child("victim", Attributes::default()).unwrap();
        let hole = root.create_child("hole", bh).unwrap();
        let legit = root.create_child("legit", Attributes::default()).unwrap();
        let group = Arc::new(
            ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
                .member(&victim, Filter::any())
                .member(&hole, Filter::nothing())
                .member(&legit, "127.0.0.6/32".parse().unwrap())
                .build()
                .unwrap(),
        );
        let m = group.members();
        drop_acks(m[0].listener());
        let dst = group.local_addr();
        let _flood = half_open("127.0.0.5", dst, 10);

        let mut cfg = DefenseConfig::new(m[1].id());
        cfg.trigger_syn_recv = 5;
        cfg.min_prefix_syn_recv = 3;
        cfg.v4_len = 32;
        cfg.aggregate_v4 = None;
        cfg.min_hold = Duration::ZERO;
        cfg.calm_for = Duration::from_millis(200);
        let defender = Defender::new(group.clone(), cfg).unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        defender.on_action(move |r| s2.lock().unwrap().push(r.clone()));

        let d = defender.step().unwrap();
        assert!(d.under_attack);
        assert_eq!(d.syn_recv, 10);
        assert_eq!(
            d.actions,
            vec![Action::Quarantine {
                prefix: "127.0.0.5/32".parse().unwrap(),
                syn_recv: 10
            }]
        );
        assert_eq!(group.classify(ip("127.0.0.5")), Some(m[1].id()));
        assert_eq!(
            defender.flushed(),
            10,
            "the half-open connections were destroyed"
        );
        assert!(
            Diag::open()
                .unwrap()
                .syn_recv(dst.port())
                .unwrap()
                .is_empty()
        );
        // The quarantined source is black-holed now; the others still connect.
        assert!(connect_from(ip("127.0.0.5"), dst, Duration::from_millis(200)).is_err());
        let _ok = connect_from(ip("127.0.0.6"), dst, Duration::from_secs(2)).unwrap();

        // Quiet: calm for 200 ms, then released to where it came from (no one: the default).
        let d = defender.step().unwrap();
        assert!(d.under_attack && d.actions.is_empty());
        std::thread::sleep(Duration::from_millis(250));
        let d = defender.step().unwrap();
        assert!(!d.under_attack, "{d:?}");
        assert!(matches!(
            d.actions.as_slice(),
            [Action::Release { merged: false, .. }]
        ));
        assert_eq!(group.classify(ip("127.0.0.5")), Some(m[0].id()));
        let h = defender.history();
        assert_eq!(h.len(), 2);
        assert!(h.iter().all(|r| r.outcome.is_ok()));
        assert_eq!(h[0].to, Some(m[1].id()), "quarantined into the black hole");
        assert_eq!(h[1].to, None, "released to where no member listed it");
        assert_eq!(
            *seen.lock().unwrap(),
            h,
            "the observer saw every record as it happened"
        );
        assert!(defender.quarantined().is_empty());
    });
}

/// SYNs from `from` for `dur`, each on its own socket, given up at once: a flood the edge
/// filter drops (nothing completes).
fn syn_burst(from: &str, dst: SocketAddr, dur: Duration) {
    let end = std::time::Instant::now() + dur;
    while std::time::Instant::now() < end {
        let _ = connect_from(ip(from), dst, Duration::from_millis(2));
    }
}

/// Opens `n` connections from `from` whose own socket drops everything it receives: their
/// SYNs reach the server, the SYN-ACKs are never answered, as with spoofed sources. The
/// sockets must stay open for the connections to stay half-open.
fn unanswered(from: &str, dst: SocketAddr, n: usize) -> Vec<socket2::Socket> {
    (0..n)
        .map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.attach_filter(&[socket2::SockFilter::new(0x06, 0, 0, 0)])
                .unwrap();
            s.set_nonblocking(true).unwrap();
            s.bind(&SocketAddr::new(ip(from), 0).into()).unwrap();
            match s.connect(&dst.into()) {
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                other => panic!("connect: {other:?}"),
            }
            s
        })
        .collect()
}

#[test]
fn with_an_edge_the_defense_reacts_on_early_counters() {
    use rescon_linux::listen::edge::XdpMode;
    if !have(
        is_root(),
        "needs root for a private namespace, XDP and SOCK_DESTROY",
    ) {
        return;
    }
    in_new_netns(&[], || {
        let reg = Registry::new();
        let root = reg.root();
        let mut bh = Attributes::default();
        bh.set("priority", "0").unwrap();
        let victim = root.create_child("victim", Attributes::default()).unwrap();
        let hole = root.create_child("hole", bh).unwrap();
        let group = Arc::new(
            ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
                .member(&victim, Filter::any())
                .member(&hole, Filter::nothing())
                .build()
                .unwrap(),
        );
        group.drop_at_edge("lo", XdpMode::Generic).unwrap();
        let m = group.members();
        let dst = group.local_addr();
        let mut cfg = DefenseConfig::new(m[1].id());
        cfg.trigger_syn_recv = 5;
        cfg.min_prefix_syn_recv = 3;
        cfg.aggregate_v4 = None;
        cfg.min_hold = Duration::ZERO;
        cfg.calm_for = Duration::from_millis(200);
        let defender = Defender::new(group.clone(), cfg).unwrap();
        // A client that completes its handshakes is never a signal.
        let _ok: Vec<_> = (0..20)
            .map(|_| connect_from(ip("127.0.0.1"), dst, Duration::from_secs(2)).unwrap())
            .collect();
        let d = defender.step().unwrap();
        assert!(!d.under_attack && d.actions.is_empty(), "{d:?}");

        // Ten unanswered SYNs from 127.0.5.0/24: quarantined at the next step, the
        // half-open connections flushed, with no dump before.
        let _flood = unanswered("127.0.5.9", dst, 10);
        let d = defender.step().unwrap();
        assert!(d.under_attack, "{d:?}");
        assert_eq!(
            d.actions,
            vec![Action::Quarantine {
                prefix: "127.0.5.0/24".parse().unwrap(),
                syn_recv: 10
            }]
        );
        assert_eq!(
            defender.flushed(),
            10,
            "the half-open connections were destroyed"
        );
        assert_eq!(
            group.edges()[0].1,
            vec!["127.0.5.0/24".parse::<ipnet::IpNet>().unwrap()]
        );
        // The flood goes on, dropped at the edge only: the prefix's own early drops keep it
        // held.
        for _ in 0..3 {
            syn_burst("127.0.5.9", dst, Duration::from_millis(150));
            let d = defender.step().unwrap();
            assert!(d.under_attack, "{d:?}");
            assert!(
                d.actions.is_empty(),
                "released while the flood went on: {d:?}"
            );
            assert!(d.quarantine_drops_per_s > 50.0, "{d:?}");
        }
        assert_eq!(
            m[1].drops().unwrap(),
            0,
            "all of it dropped before the socket"
        );
        let early = group.early_drops();
        assert!(early[0].0.edge >= 3, "{early:?}");
        // It stops: calm, then released, and the edge lets the source through again.
        let _ = defender.step().unwrap();
        std::thread::sleep(Duration::from_millis(250));
        let d = defender.step().unwrap();
        assert!(!d.under_attack, "{d:?}");
        assert!(matches!(d.actions.as_slice(), [Action::Release { .. }]));
        assert!(group.edges()[0].1.is_empty());
        assert!(connect_from(ip("127.0.5.9"), dst, Duration::from_secs(2)).is_ok());
    });
}
