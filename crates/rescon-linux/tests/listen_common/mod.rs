//! Helpers shared by the kernel tests of `listen`.
#![allow(dead_code)]

use rescon_linux::listen::Member;
use socket2::{Domain, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether CI demands every kernel capability (then a missing one fails the test).
pub fn required() -> bool {
    std::env::var_os("RESCON_REQUIRE_KERNEL").is_some_and(|v| v == "1")
}

/// Skips (returns false, printing why) or fails when a capability is missing.
pub fn have(cap: bool, why: &str) -> bool {
    if cap {
        return true;
    }
    assert!(!required(), "RESCON_REQUIRE_KERNEL=1 but {why}");
    eprintln!("skipped: {why}");
    false
}

/// Whether we run as root (needed for network namespaces).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Connects from `src` (port chosen by the kernel) to `dst` within `timeout`.
pub fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&dst.into(), timeout)?;
    Ok(s.into())
}

/// Waits until `member` has `n` connections queued for accept (bounded: 5 s).
pub fn wait_queued(member: &Member, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (q, _) = member.queue().expect("TCP_INFO on a listener");
        if q >= n {
            assert_eq!(q, n, "{member:?} has more queued than expected");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{member:?}: {q} queued, expected {n}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Accepts everything queued on `member` (after `wait_queued`).
pub fn accept_all(member: &Member) -> Vec<rescon_linux::listen::Accepted> {
    let mut out = Vec::new();
    while let Some(a) = member.accept().expect("accept") {
        out.push(a);
    }
    out
}

/// Runs `f` on a thread of its own in a fresh network namespace with `lo` up, and `setup`
/// run there as `ip` commands first. The namespace goes away with the thread.
pub fn in_new_netns<T: Send + 'static>(
    setup: &[&str],
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let setup: Vec<String> = setup.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) changes only this thread's network namespace; it
        // touches no memory of ours.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        );
        for cmd in std::iter::once("link set lo up".to_string()).chain(setup) {
            // A child forked from this thread starts in this thread's namespace.
            let st = Command::new("ip")
                .args(cmd.split_whitespace())
                .status()
                .expect("run ip");
            assert!(st.success(), "ip {cmd} failed");
        }
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}
