//! Kernel network accounting for real: the programs loaded (verified by this kernel) and
//! attached, TCP connections on loopback, and the counters read back. Needs root (CAP_BPF,
//! CAP_PERFMON); skips without it unless `RESCON_REQUIRE_KERNEL=1`.
//!
//! The programs see every packet on the machine, but count only sockets bound through the
//! handle that loaded them: each test has its own handle, its own containers, and asserts
//! only on them. Everything loaded goes away with the handle (also when a test fails).

mod listen_common;

use listen_common::required;
use rescon::{Attributes, Registry};
use rescon_linux::netacct::ledger::Ledger;
use rescon_linux::netacct::{NetAccounting, Options, socket_cookie};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn open(test: &str) -> Option<NetAccounting> {
    match NetAccounting::open(&Options::default()) {
        Ok(a) => Some(a),
        Err(e) => {
            assert!(!required(), "{test}: RESCON_REQUIRE_KERNEL=1 but {e}");
            eprintln!("{test}: skipped: {e}");
            None
        }
    }
}

/// The calling thread's id, from `/proc/thread-self` (`<pid>/task/<tid>`).
fn gettid() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    link.file_name().unwrap().to_str().unwrap().parse().unwrap()
}

/// Sends `n` writes of `size` bytes from `from` and reads them all at `to`.
fn pump(from: &mut TcpStream, to: &mut TcpStream, n: usize, size: usize) {
    let buf = vec![7u8; size];
    let mut got = vec![0u8; n * size];
    for _ in 0..n {
        from.write_all(&buf).unwrap();
    }
    to.read_exact(&mut got).unwrap();
}

#[test]
fn a_listener_s_owner_is_inherited_and_its_traffic_counted() {
    let Some(acct) = open("a_listener_s_owner_is_inherited_and_its_traffic_counted") else {
        return;
    };
    let reg = Registry::new();
    let web = reg
        .root()
        .create_child("web", Attributes::default())
        .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    acct.bind(&l, web.id()).unwrap();
    assert_eq!(acct.owner(&l).unwrap(), Some(web.id()));
    let before = acct.read().unwrap();
    let mut ledger = Ledger::starting_at(&before, &[]);

    let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut server, _) = l.accept().unwrap();
    assert_eq!(
        acct.owner(&server).unwrap(),
        Some(web.id()),
        "the accepted socket inherits its listener's owner"
    );
    assert_eq!(acct.owner(&client).unwrap(), None, "the client is nobody's");
    assert_ne!(
        socket_cookie(&server).unwrap(),
        socket_cookie(&client).unwrap()
    );

    // The client's writes are received on loopback in NET_RX softirq, run in the client
    // thread's context (this one): the server socket's receive time is charged to web,
    // and the softirq time credited to this thread.
    pump(&mut client, &mut server, 200, 1000);
    pump(&mut server, &mut client, 20, 500);
    let now = acct.read().unwrap();
    let c = now.containers[&web.id()];
    assert!(c.rx_packets >= 1 && c.rx_packets <= 200 + 3, "{c:?}");
    // 200,000 bytes of payload, plus TCP headers (20-32 bytes a packet), plus the
    // handshake's final ACK (a listener's packets are counted too).
    assert!(
        c.rx_bytes >= 200_000 && c.rx_bytes < 200_000 + 64 * (c.rx_packets + 3),
        "{c:?}"
    );
    assert!(c.tx_packets >= 1, "{c:?}");
    assert!(c.tx_bytes >= 10_000, "{c:?}");
    assert!(now.totals.netrx_ns > before.totals.netrx_ns);
    // The stack's own count of packets received covers ours.
    assert!(
        now.totals.frames - before.totals.frames >= c.rx_packets,
        "{now:?}"
    );
    assert!(now.totals.netrx_runs > before.totals.netrx_runs);
    let me = gettid();
    assert!(
        now.credits.get(&me).copied().unwrap_or(0) > before.credits.get(&me).copied().unwrap_or(0),
        "the sending thread ({me}) is credited: {:?}",
        now.credits
    );

    let i = ledger.advance(&now, &[]);
    eprintln!("web: {c:?}\ninterval: {i:?}");
    let u = i.containers[&web.id()];
    assert!(u.kernel_net_ns() > 0, "{u:?}");
    assert!(i.attributed_ns >= u.kernel_net_ns() && i.attributed_ns <= i.netrx_ns);
    assert_eq!(i.attributed_ns + i.unattributed_ns, i.netrx_ns);
}

#[test]
fn a_connection_rebound_is_charged_to_its_new_owner() {
    let Some(acct) = open("a_connection_rebound_is_charged_to_its_new_owner") else {
        return;
    };
    let reg = Registry::new();
    let class = reg
        .root()
        .create_child("class", Attributes::default())
        .unwrap();
    let conn = class.create_child("conn", Attributes::default()).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    acct.bind(&l, class.id()).unwrap();
    let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut server, _) = l.accept().unwrap();
    pump(&mut client, &mut server, 10, 100);
    let first = acct.read().unwrap();
    let class_rx = first.containers[&class.id()].rx_bytes;
    assert!(class_rx >= 1000);

    acct.bind(&server, conn.id()).unwrap();
    pump(&mut client, &mut server, 10, 100);
    let second = acct.read().unwrap();
    assert_eq!(
        second.containers[&class.id()].rx_bytes,
        class_rx,
        "nothing more for the class"
    );
    assert!(second.containers[&conn.id()].rx_bytes >= 1000);

    assert!(acct.unbind(&server).unwrap());
    assert!(!acct.unbind(&server).unwrap(), "already unbound");
    pump(&mut client, &mut server, 10, 100);
    let third = acct.read().unwrap();
    assert_eq!(third.containers[&conn.id()], second.containers[&conn.id()]);

    // Forgetting a container gives its slot back: its counters are gone, and a socket
    // still bound to it names nobody and is not counted for the slot's next holder.
    acct.bind(&server, conn.id()).unwrap();
    assert!(acct.forget(conn.id()).unwrap());
    assert!(!acct.forget(conn.id()).unwrap());
    assert!(!acct.read().unwrap().containers.contains_key(&conn.id()));
    assert_eq!(acct.owner(&server).unwrap(), None);
    let next = class.create_child("next", Attributes::default()).unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    acct.bind(&other, next.id()).unwrap();
    let lost = acct.read().unwrap().totals.lost;
    pump(&mut client, &mut server, 10, 100);
    let fourth = acct.read().unwrap();
    assert_eq!(
        fourth
            .containers
            .get(&next.id())
            .copied()
            .unwrap_or_default(),
        Default::default(),
        "the slot's next holder is charged nothing of the old socket"
    );
    assert!(fourth.totals.lost > lost, "{:?}", fourth.totals);
}

#[test]
fn a_container_beyond_the_slots_is_refused_and_room_is_made_by_forgetting() {
    let opts = Options {
        max_containers: 2,
        ..Options::default()
    };
    let acct = match NetAccounting::open(&opts) {
        Ok(a) => a,
        Err(e) => {
            assert!(!required(), "RESCON_REQUIRE_KERNEL=1 but {e}");
            eprintln!("skipped: {e}");
            return;
        }
    };
    let reg = Registry::new();
    let c: Vec<_> = (0..3)
        .map(|i| {
            reg.root()
                .create_child(&format!("c{i}"), Attributes::default())
                .unwrap()
        })
        .collect();
    let socks: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    acct.bind(&socks[0], c[0].id()).unwrap();
    acct.bind(&socks[1], c[1].id()).unwrap();
    let e = acct.bind(&socks[2], c[2].id()).unwrap_err();
    assert!(e.to_string().contains("slots are taken"), "{e}");
    assert!(acct.forget(c[0].id()).unwrap());
    acct.bind(&socks[2], c[2].id()).unwrap();
    assert_eq!(acct.owner(&socks[2]).unwrap(), Some(c[2].id()));
    assert_eq!(acct.owner(&socks[0]).unwrap(), None);
}

#[test]
fn binding_refuses_what_is_not_a_socket() {
    let Some(acct) = open("binding_refuses_what_is_not_a_socket") else {
        return;
    };
    let reg = Registry::new();
    let file = std::fs::File::open("/dev/null").unwrap();
    let e = acct.bind(&file, reg.root().id()).unwrap_err();
    assert!(e.to_string().contains("binding socket"), "{e}");
}

#[test]
fn only_the_watched_process_is_credited() {
    let Some(acct) = open("only_the_watched_process_is_credited") else {
        return;
    };
    // Nobody watched: traffic sent from this thread credits nothing.
    acct.watch_process(0).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut server, _) = l.accept().unwrap();
    let before = acct.read().unwrap();
    pump(&mut client, &mut server, 50, 1000);
    std::thread::sleep(Duration::from_millis(5));
    let after = acct.read().unwrap();
    assert_eq!(after.credits, before.credits);
    assert_eq!(after.totals.credited_ns, before.totals.credited_ns);
}

/// Without privilege, the accounting says why and what to do, and listener groups work
/// without their eBPF parts: a black hole drops SYNs the unprivileged way (see
/// `listen::SynDrop`), there are no early counters, and an edge filter is refused with the
/// remedy. Runs itself again as the user nobody (with setpriv).
#[test]
fn without_privilege_everything_degrades_and_says_why() {
    use rescon_linux::listen::edge::XdpMode;
    use rescon_linux::listen::{Filter, ListenerGroup};
    const ROLE: &str = "RESCON_NETACCT_UNPRIVILEGED";
    if std::env::var_os(ROLE).is_some() {
        let e = NetAccounting::open(&Options::default()).unwrap_err();
        assert!(e.is_permission(), "{e}");
        assert!(e.to_string().contains("needs root"), "{e}");
        let reg = Registry::new();
        let ok = reg
            .root()
            .create_child("ok", Attributes::default())
            .unwrap();
        let mut a = Attributes::default();
        a.set("priority", "0").unwrap();
        let hole = reg.root().create_child("hole", a).unwrap();
        let group = ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
            .member(&ok, Filter::any())
            .member(&hole, "127.0.0.3/32".parse().unwrap())
            .build()
            .expect("a group without eBPF");
        assert!(group.early_drops().is_empty());
        assert!(group.early_drops_by_member().is_empty());
        assert!(group.take_sources().is_none());
        let e = group.drop_at_edge("lo", XdpMode::Generic).unwrap_err();
        assert!(e.to_string().contains("run as root"), "{e}");
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&std::net::SocketAddr::from(([127, 0, 0, 3], 0)).into())
            .unwrap();
        let r = s.connect_timeout(&group.local_addr().into(), Duration::from_millis(300));
        assert!(r.is_err(), "the black hole still drops, without eBPF");
        println!("DEGRADED: {e}");
        return;
    }
    if open("without_privilege_everything_degrades_and_says_why").is_none() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&exe)
        .args([
            "--exact",
            "without_privilege_everything_degrades_and_says_why",
            "--nocapture",
        ])
        .env(ROLE, "1")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            assert!(
                !required(),
                "RESCON_REQUIRE_KERNEL=1 but cannot run setpriv: {e}"
            );
            eprintln!("skipped: cannot run setpriv: {e}");
            return;
        }
    };
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("Permission denied") && !text.contains("running 1 test") {
        eprintln!("skipped: nobody cannot execute {}", exe.display());
        return;
    }
    assert!(out.status.success(), "unprivileged run failed:\n{text}");
    assert!(text.contains("DEGRADED:"), "{text}");
}
