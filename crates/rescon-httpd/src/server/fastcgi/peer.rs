//! Which process serves a FastCGI request, and its CPU: how a request's CPU in a persistent
//! worker is charged to the request's container.
//!
//! The worker that accepted our connection holds the other end of it. The other end's socket
//! inode comes from the kernel: for a Unix socket from `NETLINK_SOCK_DIAG` (`UNIX_DIAG_PEER`,
//! what `ss -x` shows), for TCP from `/proc/net/tcp` (the entry whose addresses are ours
//! swapped); the process is the one whose `/proc/<pid>/fd` links to `socket:[inode]`,
//! looked for among the workers seen before, then among the pool's processes (or, for an
//! application started elsewhere, every process). A worker serves one request at a time
//! (php-fpm's, and any pre-forked pool's), so its CPU from the end of its previous request
//! to the end of this one is this request's.
//!
//! Costs, per request: a netlink round trip (Unix) or a read of `/proc/net/tcp` (TCP), a
//! `readlink` per descriptor of the workers tried until the holder is found, and two reads
//! of `/proc/<pid>/stat`.

use rescon_linux::cgroup::parse::proc_stat;
use rustix::fd::{AsFd, BorrowedFd};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;

/// The inode of a socket.
pub(super) fn inode(fd: BorrowedFd<'_>) -> Option<u64> {
    rustix::fs::fstat(fd).ok().map(|s| s.st_ino)
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const UDIAG_SHOW_PEER: u32 = 4;
const UNIX_DIAG_PEER: u16 = 2;

/// The request asking the kernel for the Unix socket `ino` and its peer: a `nlmsghdr` and a
/// `struct unix_diag_req` (linux/unix_diag.h), in native byte order.
fn unix_diag_request(ino: u32) -> [u8; 40] {
    let mut m = [0u8; 40];
    m[0..4].copy_from_slice(&40u32.to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m[8..12].copy_from_slice(&1u32.to_ne_bytes());
    m[16] = 1; // AF_UNIX
    m[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m[24..28].copy_from_slice(&ino.to_ne_bytes());
    m[28..32].copy_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes());
    m[32..40].copy_from_slice(&[0xff; 8]); // no cookie
    m
}

/// The peer inode in the kernel's answer to [`unix_diag_request`]: the `UNIX_DIAG_PEER`
/// attribute after the `nlmsghdr` (16 bytes) and the `unix_diag_msg` (16 bytes).
fn parse_unix_diag(msg: &[u8]) -> Option<u64> {
    let u16_at = |i: usize| Some(u16::from_ne_bytes(msg.get(i..i + 2)?.try_into().ok()?));
    if u16_at(4)? == NLMSG_ERROR {
        return None;
    }
    let len = (u32::from_ne_bytes(msg.get(0..4)?.try_into().ok()?) as usize).min(msg.len());
    let mut at = 32;
    while at + 4 <= len {
        let (alen, atype) = (u16_at(at)? as usize, u16_at(at + 2)?);
        if alen < 4 {
            return None;
        }
        if atype == UNIX_DIAG_PEER && alen >= 8 {
            return Some(u32::from_ne_bytes(msg.get(at + 4..at + 8)?.try_into().ok()?) as u64);
        }
        at += (alen + 3) & !3;
    }
    None
}

/// The inode of the other end of the connected Unix socket `ino`.
pub(super) fn unix_peer_inode(ino: u64) -> io::Result<Option<u64>> {
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, netlink};
    let Ok(ino) = u32::try_from(ino) else {
        return Ok(None);
    };
    let nl = rustix::net::socket(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        Some(netlink::SOCK_DIAG),
    )?;
    rustix::net::send(&nl, &unix_diag_request(ino), SendFlags::empty())?;
    let mut buf = [0u8; 512];
    let (n, _) = rustix::net::recv(&nl, &mut buf[..], RecvFlags::empty())?;
    Ok(parse_unix_diag(&buf[..n]))
}

/// An address as `/proc/net/tcp` writes it: the IPv4 address as a native-order u32 in hex,
/// the port in hex (IPv6: four native-order u32s).
fn proc_net_addr(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v.ip().octets()),
            v.port()
        ),
        SocketAddr::V6(v) => {
            let o = v.ip().octets();
            let mut s = String::new();
            for w in o.chunks(4) {
                s.push_str(&format!(
                    "{:08X}",
                    u32::from_ne_bytes(w.try_into().expect("4 bytes"))
                ));
            }
            format!("{s}:{:04X}", v.port())
        }
    }
}

/// The inode of the socket whose local address is `local` and remote `remote`, in a
/// `/proc/net/tcp` table.
fn tcp_inode_in(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let (l, r) = (proc_net_addr(local), proc_net_addr(remote));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == l && f[2] == r)
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

/// The inode of the other end of our TCP connection from `ours` to `theirs`.
pub(super) fn tcp_peer_inode(ours: SocketAddr, theirs: SocketAddr) -> Option<u64> {
    let file = if theirs.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    tcp_inode_in(&std::fs::read_to_string(file).ok()?, theirs, ours)
}

/// Whether process `pid` has the socket `ino` open.
fn holds(pid: i32, ino: u64) -> bool {
    let want = format!("socket:[{ino}]");
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
}

/// A process's CPU (user and system, all threads) in nanoseconds, and its start time (which
/// tells a reused pid from the process seen before).
pub(super) fn cpu(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let s = proc_stat(&text).ok()?;
    let ticks = s.utime + s.stime;
    let ns = ticks.saturating_mul(1_000_000_000) / rustix::param::clock_ticks_per_second();
    Some((s.start_time, ns))
}

/// Whether `pid` belongs to the pool led by `leader`: in its process group, or its child
/// (php-fpm's master may leave the group it was started in; its workers are its children).
fn in_pool(pid: i32, leader: i32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    proc_stat(&text).is_ok_and(|s| s.pgrp == leader || s.ppid == leader || s.pid == leader)
}

/// The workers of one FastCGI application: who they are, how much CPU each had at the end
/// of its last request, and how much of their CPU went to requests (the pool's credit).
#[derive(Debug, Default)]
pub(crate) struct Workers {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// pid -> (start time, CPU at the end of its last request, ns).
    seen: HashMap<i32, (u64, u64)>,
    /// Requests under way: pid -> the worker's CPU at their start.
    inflight: HashMap<i32, u64>,
    /// CPU charged to requests that ended, ns.
    charged: u64,
}

impl Workers {
    /// The process holding socket `ino`: a worker seen before, else (unless `known_only`) a
    /// process of the pool led by `pool` (the pool we started), else (`pool` unknown) any
    /// process.
    pub(crate) fn find(&self, ino: u64, pool: Option<i32>, known_only: bool) -> Option<i32> {
        let known: Vec<i32> = lock(&self.state).seen.keys().copied().collect();
        if let Some(p) = known.into_iter().find(|p| holds(*p, ino)) {
            return Some(p);
        }
        if known_only {
            return None;
        }
        let me = std::process::id() as i32;
        let found = std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| *p != me)
            .filter(|p| pool.is_none_or(|g| in_pool(*p, g)))
            .find(|p| holds(*p, ino))?;
        Some(found)
    }

    /// Begins a request on worker `pid`: the CPU it had when it ended its last request (the
    /// CPU since is this request's too). A worker not seen before: of a pool we started
    /// (`ours`), all its CPU is this request's (its start-up included: nothing is lost, and it
    /// may be found only once it has worked); of one started elsewhere, its CPU now.
    pub(crate) fn begin(&self, pid: i32, ours: bool) -> Option<u64> {
        let (start, now) = cpu(pid)?;
        let mut st = lock(&self.state);
        let from = match st.seen.get(&pid) {
            Some((s, at_end)) if *s == start => *at_end,
            _ => {
                let from = if ours { 0 } else { now };
                st.seen.insert(pid, (start, from));
                from
            }
        };
        st.inflight.insert(pid, from);
        Some(from)
    }

    /// Ends a request begun at `from` on worker `pid`: the CPU it used since, in
    /// nanoseconds (`None` if the worker is gone: its last part is not seen, and stays the
    /// pool's).
    pub(crate) fn end(&self, pid: i32, from: u64) -> Option<u64> {
        let now = cpu(pid);
        let mut st = lock(&self.state);
        st.inflight.remove(&pid);
        let (start, now) = now?;
        st.seen.insert(pid, (start, now));
        let used = now.saturating_sub(from);
        st.charged += used;
        // Forget workers that exited, so the table holds the pool's live workers only.
        if st.seen.len() > 64 {
            st.seen
                .retain(|p, _| std::path::Path::new(&format!("/proc/{p}")).exists());
        }
        Some(used)
    }

    /// The pool's CPU that is its requests': what ended requests were charged, plus what
    /// the requests under way have used so far. What the kernel counts for the pool's cgroup
    /// beyond this is the pool's own (idle workers, the master, start-up of workers not yet
    /// serving). Read under the lock, so a request ending is counted once, charged or under
    /// way. Clock ticks round each worker's CPU down (10 ms at most per worker under way).
    pub(crate) fn credit(&self) -> u64 {
        let st = lock(&self.state);
        let inflight: u64 = st
            .inflight
            .iter()
            .filter_map(|(pid, from)| Some(cpu(*pid)?.1.saturating_sub(*from)))
            .sum();
        st.charged + inflight
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The peer inode of a connected socket to an application.
pub(super) fn peer_inode(sock: &super::Conn) -> Option<u64> {
    match sock {
        super::Conn::Unix(s) => unix_peer_inode(inode(s.as_fd())?).ok().flatten(),
        super::Conn::Tcp(s) => tcp_peer_inode(s.local_addr().ok()?, s.peer_addr().ok()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_of_a_unix_socket_is_found_with_its_holder() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (ia, ib) = (inode(a.as_fd()).unwrap(), inode(b.as_fd()).unwrap());
        match unix_peer_inode(ia) {
            Ok(peer) => assert_eq!(peer, Some(ib)),
            Err(e) if std::env::var_os("RESCON_REQUIRE_KERNEL").is_none() => {
                eprintln!("skipped: NETLINK_SOCK_DIAG unavailable: {e}");
                return;
            }
            Err(e) => panic!("NETLINK_SOCK_DIAG: {e}"),
        }
        let me = std::process::id() as i32;
        assert!(holds(me, ib));
        let w = Workers::default();
        assert_eq!(
            w.find(ib, None, false),
            None,
            "this process is never a worker"
        );
    }

    #[test]
    fn the_peer_of_a_tcp_connection_is_in_proc_net_tcp() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let ino = tcp_peer_inode(c.local_addr().unwrap(), c.peer_addr().unwrap()).unwrap();
        assert_eq!(Some(ino), inode(s.as_fd()));
    }

    #[test]
    fn a_table_line_is_matched_on_both_addresses() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:2328 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 4242 1\n";
        let a: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:41394".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(tcp_inode_in(table, a, b), Some(4242));
            assert_eq!(tcp_inode_in(table, b, a), None);
        }
        assert_eq!(parse_unix_diag(&[0u8; 8]), None);
    }

    #[test]
    fn a_worker_is_charged_from_the_end_of_its_last_request() {
        let w = Workers::default();
        let me = std::process::id() as i32;
        let from = w.begin(me, false).unwrap();
        // Burn 60 ms of the process's CPU (not of wall time: on a loaded machine 60 ms of
        // wall time can be far less CPU), so the kernel's tick-grained figure has grown by
        // at least 50 ms.
        let cpu = || {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
            t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
        };
        let start = cpu();
        while cpu() - start < 60_000_000 {
            std::hint::black_box(0u64);
        }
        let used = w.end(me, from).unwrap();
        assert!(used >= 20_000_000, "{used}");
        // What ended requests were charged is the pool's credit; a request under way adds
        // its CPU so far.
        assert_eq!(w.credit(), used);
        // The next request starts where this one ended.
        assert_eq!(w.begin(me, true), Some(from + used));
        // A worker of our own pool seen for the first time: all its CPU so far.
        let w = Workers::default();
        assert_eq!(w.begin(me, true), Some(0));
        assert!(w.credit() >= used, "under way: {} < {used}", w.credit());
    }
}
