//! Started without privileges, a listener group keeps what the paper's prioritized listening
//! is for: one socket per client class with the kernel's steering program, accept priority,
//! run-time moves, and black holes that drop SYNs unanswered. The steering program
//! (`SO_ATTACH_REUSEPORT_CBPF`) is allowed to any process; where `SO_ATTACH_FILTER` is not
//! (this project's CI kernel wants `CAP_NET_ADMIN` for it), a black hole falls back to a
//! TCP-MD5 key, and nothing else changes.
//!
//! Run as root, the test runs itself again as the user nobody with `setpriv` (from a copy of
//! its binary that nobody can execute); run as another user, it runs as that user. Under
//! `RESCON_REQUIRE_KERNEL=1` not being able to drop privileges fails the test.

#[path = "listen_common/mod.rs"]
mod common;

use common::*;
use rescon::{Attributes, Registry};
use rescon_linux::listen::{Filter, ListenerGroup, SynDrop};
use std::io;
use std::net::{IpAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

const ROLE: &str = "RESCON_UNPRIVILEGED_CHILD";
const TEST: &str = "an_unprivileged_group_keeps_its_classes_priority_and_black_hole";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn attrs(kv: &[(&str, &str)]) -> Attributes {
    let mut a = Attributes::default();
    for (k, v) in kv {
        a.set(k, v).unwrap();
    }
    a
}

fn refused(r: io::Result<TcpStream>) -> bool {
    matches!(r, Err(e) if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock)
}

/// The effective capabilities of this process (`CapEff` of /proc/self/status).
fn effective_caps() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

/// Whether this kernel lets this process attach a classic socket filter.
fn may_attach_filter() -> bool {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.attach_filter(&[socket2::SockFilter::new(0x06, 0, 0, 0)])
        .is_ok()
}

/// The scenario, as whoever runs it.
fn scenario() {
    let reg = Registry::new();
    let root = reg.root();
    let low = root.create_child("low", Attributes::default()).unwrap();
    let high = root
        .create_child("high", attrs(&[("class", "high"), ("priority", "500")]))
        .unwrap();
    let hole = root
        .create_child("hole", attrs(&[("priority", "0")]))
        .unwrap();
    let group = ListenerGroup::builder("127.0.0.1:0".parse().unwrap())
        .member(&low, Filter::any())
        .member(&high, "127.0.0.2/32".parse().unwrap())
        .member(&hole, "127.0.0.3/32".parse().unwrap())
        .build()
        .expect("an unprivileged process builds a listener group");
    let dst = group.local_addr();
    let m = group.members();
    assert_eq!(m.len(), 3, "one socket per class");
    let how = m[2].syn_drop().expect("the black hole drops SYNs");
    if !may_attach_filter() {
        assert_eq!(
            how,
            SynDrop::Md5Signature,
            "the fallback where no filter is allowed"
        );
    }
    println!("black hole drops SYNs with a {how}");

    // Steering in the kernel: each source lands in its class's own queue.
    let short = Duration::from_millis(300);
    let long = Duration::from_secs(2);
    let _low1 = connect_from(ip("127.0.0.4"), dst, long).expect("the default class connects");
    let _high1 = connect_from(ip("127.0.0.2"), dst, long).expect("the high class connects");
    wait_queued(&m[0], 1);
    wait_queued(&m[1], 1);

    // The black hole: no handshake, nothing queued, the drop counted.
    assert!(
        refused(connect_from(ip("127.0.0.3"), dst, short)),
        "a black-holed source completed a handshake"
    );
    assert_eq!(m[2].queue().unwrap().0, 0);
    assert!(
        m[2].drops().unwrap() >= 1,
        "drops {}",
        m[2].drops().unwrap()
    );

    // Accept priority: the high class first, though its connection came second.
    let (first, _) = group
        .accept_prioritized()
        .unwrap()
        .expect("something queued");
    assert_eq!(first.id(), m[1].id());
    let (second, _) = group.accept_prioritized().unwrap().expect("the default's");
    assert_eq!(second.id(), m[0].id());
    assert!(group.accept_prioritized().unwrap().is_none());

    // Run-time moves swap the steering program, unprivileged too.
    group
        .move_prefixes(&["127.0.0.4/32".parse().unwrap()], m[2].id())
        .expect("moving a prefix to the black hole");
    assert!(refused(connect_from(ip("127.0.0.4"), dst, short)));
    group
        .move_prefixes(&["127.0.0.4/32".parse().unwrap()], m[1].id())
        .unwrap();
    let _high2 = connect_from(ip("127.0.0.4"), dst, long).expect("moved to the high class");
    wait_queued(&m[1], 1);

    // Priority changes: out of the black hole and back.
    root.update(&hole, |a| a.set("priority", "50")).unwrap();
    assert_eq!(group.refresh().unwrap(), vec![m[2].id()]);
    assert_eq!(m[2].syn_drop(), None);
    let _c = connect_from(ip("127.0.0.3"), dst, long).expect("no longer a black hole");
    wait_queued(&m[2], 1);
    root.update(&hole, |a| a.set("priority", "0")).unwrap();
    assert_eq!(group.refresh().unwrap(), vec![m[2].id()]);
    assert_eq!(m[2].syn_drop(), Some(how));
    assert!(refused(connect_from(ip("127.0.0.3"), dst, short)));
    println!("UNPRIVILEGED-SCENARIO-PASSED");
}

#[test]
fn an_unprivileged_group_keeps_its_classes_priority_and_black_hole() {
    if std::env::var_os(ROLE).is_some() {
        assert_eq!(effective_caps(), 0, "the child runs without capabilities");
        scenario();
        return;
    }
    if !is_root() {
        // Already unprivileged: the scenario as this user.
        scenario();
        return;
    }
    // Root: again as nobody, from a copy of this binary that nobody may execute.
    let dir = tempfile::Builder::new()
        .prefix("rescon-unprivileged-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("listen_unprivileged");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(ROLE, "1")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            // Fails under RESCON_REQUIRE_KERNEL=1, skips (saying why) otherwise.
            have(false, &format!("cannot run setpriv: {e}"));
            return;
        }
    };
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the unprivileged run failed:\n{text}");
    assert!(
        text.contains("UNPRIVILEGED-SCENARIO-PASSED"),
        "the unprivileged run did not get through the scenario:\n{text}"
    );
}
