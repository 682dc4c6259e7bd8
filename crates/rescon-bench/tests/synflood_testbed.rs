//! The flood test bed for real (root): the flooder's safety check, a flood black-holed
//! through a listener group, and the automatic defense.

use rescon::{Attributes, Container, Registry};
use rescon_bench::flooder::{self, FloodConfig, FloodError, PacketSink, RawSink, SYN_LEN};
use rescon_bench::loadgen::{ClientReport, Server, run_clients};
use rescon_bench::testbed::{ATTACKER_IFACE, SERVER_ATT, SERVER_CLI, SPOOFED, Testbed};
use rescon_linux::listen::defense::{Action, DefenseConfig};
use rescon_linux::listen::diag::Diag;
use rescon_linux::listen::driver::Defender;
use rescon_linux::listen::{Filter, ListenerGroup};
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

fn required() -> bool {
    std::env::var_os("RESCON_REQUIRE_KERNEL").is_some_and(|v| v == "1")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn have_root() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        !required(),
        "RESCON_REQUIRE_KERNEL=1 but not root: the test bed needs root"
    );
    eprintln!("skipped: the test bed needs root");
    false
}

/// Counts what it is given; sends nothing anywhere.
#[derive(Default)]
struct Recorder(usize);

impl PacketSink for Recorder {
    fn send(&mut self, pkts: &[[u8; SYN_LEN]]) -> io::Result<usize> {
        self.0 += pkts.len();
        Ok(pkts.len())
    }
}

fn cfg(port: u16, rate: u64, secs: f64) -> FloodConfig {
    FloodConfig {
        target: SocketAddrV4::new(SERVER_ATT, port),
        sources: SPOOFED,
        rate,
        duration: Duration::from_secs_f64(secs),
        iface: ATTACKER_IFACE.to_string(),
    }
}

#[test]
fn the_flooder_refuses_outside_the_test_bed_and_sends_nothing() {
    // This test's own namespace: the initial one, or the host's namespace with its real
    // interfaces. Either way the flooder refuses before its first packet.
    let mut rec = Recorder::default();
    let stop = AtomicBool::new(false);
    let err = flooder::flood_with(&cfg(9, 1000, 1.0), &mut rec, &stop).unwrap_err();
    assert!(matches!(err, FloodError::Refused(_)), "{err}");
    assert_eq!(rec.0, 0, "nothing was handed to the sink");
    assert!(matches!(
        RawSink::open(&cfg(9, 1000, 1.0)),
        Err(FloodError::Refused(_))
    ));
    eprintln!("refused: {err}");
}

#[test]
fn the_flooder_refuses_a_namespace_with_a_default_route_or_other_interfaces() {
    if !have_root() {
        return;
    }
    let tb = Testbed::up().unwrap();
    let check = |tb: &Testbed, iface: &'static str| {
        tb.attacker
            .spawn("check", move || flooder::check_isolation(iface))
            .unwrap()
            .join()
            .unwrap()
    };
    check(&tb, ATTACKER_IFACE).expect("the attacker namespace passes");
    let err = check(&tb, "other0").unwrap_err();
    assert!(err.to_string().contains("interfaces"), "{err}");
    tb.attacker
        .ip(&["route", "add", "default", "via", "198.18.1.1"])
        .unwrap();
    let err = check(&tb, ATTACKER_IFACE).unwrap_err();
    assert!(err.to_string().contains("default route"), "{err}");
    // And a refused flood sends nothing.
    let mut rec = Recorder::default();
    let stop = Arc::new(AtomicBool::new(false));
    let c = cfg(9, 1000, 1.0);
    let (r, n) = tb
        .attacker
        .spawn("flood", move || {
            let r = flooder::flood_with(&c, &mut rec, &stop);
            (r.map(|_| ()), rec.0)
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(matches!(r, Err(FloodError::Refused(_))));
    assert_eq!(n, 0);
}

static PORT: AtomicU16 = AtomicU16::new(20000);

struct Run {
    clients: ClientReport,
    sent: u64,
    hole_drops: u64,
    spoofed_half_open_on_legit: usize,
    history: Vec<Action>,
}

fn containers() -> (Registry, Container, Container) {
    let reg = Registry::new();
    let root = reg.root();
    let legit = root.create_child("legit", Attributes::default()).unwrap();
    let mut bh = Attributes::default();
    bh.set("priority", "0").unwrap();
    let hole = root.create_child("hole", bh).unwrap();
    (reg, legit, hole)
}

/// A flood of `secs` at `rate` against a group (legit: any; hole: `hole_filter`) with cookies
/// off, legit clients at the same time, and optionally the defender.
fn flood_run(tb: &Testbed, hole_filter: Filter, auto: bool, rate: u64, secs: f64) -> Run {
    tb.set_syncookies(false).unwrap();
    let port = PORT.fetch_add(1, Ordering::Relaxed);
    let (_reg, legit, hole) = containers();
    let (group, server, defender) = tb
        .server
        .spawn("server", move || {
            let group = Arc::new(
                ListenerGroup::builder(SocketAddr::from(([0, 0, 0, 0], port)))
                    .backlog(256)
                    .member(&legit, Filter::any())
                    .member(&hole, hole_filter)
                    .build()
                    .unwrap(),
            );
            let server = Server::start(group.clone(), 2);
            let defender = auto.then(|| {
                let mut c = DefenseConfig::new(group.members()[1].id());
                c.calm_for = Duration::from_millis(300);
                c.min_hold = Duration::ZERO;
                let d = Arc::new(Defender::new(group.clone(), c).unwrap());
                let running = d.clone().spawn(Duration::from_millis(20));
                (d, running)
            });
            (group, server, defender)
        })
        .unwrap()
        .join()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (c, s) = (cfg(port, rate, secs), stop.clone());
    let flood = tb
        .attacker
        .spawn("flood", move || flooder::flood(&c, &s))
        .unwrap();
    let s = stop.clone();
    let clients = tb
        .client
        .spawn("clients", move || {
            run_clients(
                SocketAddr::from((SERVER_CLI, port)),
                2,
                Duration::from_secs_f64(secs),
                Duration::from_secs(1),
                &s,
            )
        })
        .unwrap()
        .join()
        .unwrap();
    let report = flood
        .join()
        .unwrap()
        .expect("the flooder runs in the attacker namespace");
    // The flooding thread's CPU time is what it costs the machine: it ran, and it cannot
    // have used more than the whole of its own run.
    assert!(
        report.cpu > Duration::ZERO && report.cpu <= report.elapsed + Duration::from_millis(20),
        "{report:?}"
    );
    let sent = report.sent;
    let hole_drops = group.members()[1].drops().unwrap();
    let spoofed_half_open_on_legit = tb
        .server
        .spawn("diag", move || {
            let mut d = Diag::open().unwrap();
            d.syn_recv(port)
                .unwrap()
                .iter()
                .filter(|s| match s.remote.ip() {
                    std::net::IpAddr::V4(a) => SPOOFED.contains(&a),
                    _ => false,
                })
                .count()
        })
        .unwrap()
        .join()
        .unwrap();
    let history = match defender {
        Some((d, running)) => {
            // Let the defense see the calm after the flood, then stop it.
            std::thread::sleep(Duration::from_millis(600));
            running.stop();
            d.history().into_iter().map(|r| r.action).collect()
        }
        None => Vec::new(),
    };
    drop(server);
    Run {
        clients,
        sent,
        hole_drops,
        spoofed_half_open_on_legit,
        history,
    }
}

#[test]
fn a_black_holed_flood_leaves_legit_connects_completing() {
    if !have_root() {
        return;
    }
    let tb = Testbed::up().unwrap();
    let r = flood_run(
        &tb,
        Filter::prefixes([SPOOFED.into()]).unwrap(),
        false,
        30_000,
        2.0,
    );
    eprintln!(
        "black hole: {} SYNs sent, {} dropped by the hole; legit {} completed, {} failed",
        r.sent, r.hole_drops, r.clients.completed, r.clients.failed
    );
    assert!(r.sent > 10_000, "the flood ran");
    assert!(
        r.hole_drops > r.sent / 2,
        "the flood reached the black hole and was dropped there"
    );
    assert_eq!(
        r.spoofed_half_open_on_legit, 0,
        "no spoofed SYN reached the legit queue"
    );
    assert!(
        r.clients.completed > 500,
        "legit connects complete: {:?}",
        r.clients
    );
    assert_eq!(r.clients.failed, 0, "no legit connect failed");

    // The same flood without the black hole fills the legit member's queue: a contrast
    // showing the flood is strong enough to matter.
    let bare = flood_run(&tb, Filter::nothing(), false, 30_000, 2.0);
    eprintln!(
        "no defense: legit {} completed, {} failed; {} spoofed half-open",
        bare.clients.completed, bare.clients.failed, bare.spoofed_half_open_on_legit
    );
    assert!(bare.spoofed_half_open_on_legit > 100);
    assert!(bare.clients.failed > 0);
    assert!(bare.clients.completed < r.clients.completed / 2);
}

#[test]
fn the_defender_quarantines_a_flood_and_releases_it_after() {
    if !have_root() {
        return;
    }
    let tb = Testbed::up().unwrap();
    let r = flood_run(&tb, Filter::nothing(), true, 30_000, 2.0);
    eprintln!(
        "auto: {} SYNs sent, {} dropped by the hole; legit {} completed, {} failed; {:?}",
        r.sent, r.hole_drops, r.clients.completed, r.clients.failed, r.history
    );
    let q: Vec<_> = r
        .history
        .iter()
        .filter_map(|a| match a {
            Action::Quarantine { prefix, .. } => Some(*prefix),
            _ => None,
        })
        .collect();
    assert!(!q.is_empty(), "the flood was detected");
    let spoofed = ipnet::IpNet::from(SPOOFED);
    assert!(q.iter().all(|p| spoofed.contains(p)), "{q:?}");
    assert!(
        r.hole_drops > r.sent / 2,
        "most of the flood was dropped in the black hole"
    );
    assert!(r.clients.completed > 500, "{:?}", r.clients);
    assert!(
        r.history
            .iter()
            .any(|a| matches!(a, Action::Release { merged: false, .. })),
        "released after the flood: {:?}",
        r.history
    );
}
