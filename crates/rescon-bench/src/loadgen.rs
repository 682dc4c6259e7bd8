//! The server under test and the legitimate clients of the flood experiment.
//!
//! The server is a small multi-threaded accept server on a [`ListenerGroup`]: each thread
//! polls the members' sockets, accepts in priority order
//! ([`ListenerGroup::accept_prioritized`]), writes `ok\n` and closes. A client connects,
//! reads the reply, and counts a completed connection; one that times out counts as failed.

use rescon_linux::listen::ListenerGroup;
use rustix::event::{PollFd, PollFlags};
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running accept server; dropping it stops its threads.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts `threads` accept threads on `group` (they inherit the caller's namespace).
    pub fn start(group: Arc<ListenerGroup>, threads: usize) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let threads = (0..threads.max(1))
            .map(|i| {
                let (group, stop, accepted) = (group.clone(), stop.clone(), accepted.clone());
                std::thread::Builder::new()
                    .name(format!("accept-{i}"))
                    .spawn(move || serve(&group, &stop, &accepted))
                    .expect("spawn accept thread")
            })
            .collect();
        Server {
            stop,
            accepted,
            threads,
        }
    }

    /// Connections accepted and answered so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(group: &ListenerGroup, stop: &AtomicBool, accepted: &AtomicU64) {
    let timeout = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    while !stop.load(Ordering::Relaxed) {
        let members: Vec<_> = group
            .members()
            .into_iter()
            .filter(|m| !m.is_black_hole())
            .collect();
        let mut fds: Vec<PollFd<'_>> = members
            .iter()
            .map(|m| PollFd::new(m, PollFlags::IN))
            .collect();
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => panic!("poll: {e}"),
        }
        // Drain in priority order; another thread may have taken them first.
        for _ in 0..256 {
            match group.accept_prioritized() {
                Ok(Some((_, mut conn))) => {
                    let _ = conn.stream.write(b"ok\n");
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    break;
                }
            }
        }
    }
}

/// What the legitimate clients achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClientReport {
    /// Connections that completed (connected and got the reply).
    pub completed: u64,
    /// Connections that failed or timed out.
    pub failed: u64,
    /// How long the clients ran.
    pub elapsed: Duration,
}

impl ClientReport {
    /// Completed connections per second.
    pub fn per_s(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.completed as f64 / self.elapsed.as_secs_f64()
        }
    }
}

fn one(target: SocketAddr, timeout: Duration) -> bool {
    let domain = if target.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let Ok(s) = Socket::new(domain, Type::STREAM, None) else {
        return false;
    };
    // A blocking connect bounded by the send timeout, and a bounded read.
    if s.set_write_timeout(Some(timeout)).is_err() || s.set_read_timeout(Some(timeout)).is_err() {
        return false;
    }
    if s.connect(&target.into()).is_err() {
        return false;
    }
    let mut s: std::net::TcpStream = s.into();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).is_ok() && &buf == b"ok\n"
}

/// Runs `threads` client threads (in the caller's namespace) connecting to `target` one
/// connection at a time for `duration`, or until `stop`.
pub fn run_clients(
    target: SocketAddr,
    threads: usize,
    duration: Duration,
    timeout: Duration,
    stop: &Arc<AtomicBool>,
) -> ClientReport {
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<JoinHandle<(u64, u64)>> = (0..threads.max(1))
        .map(|i| {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("client-{i}"))
                .spawn(move || {
                    let (mut ok, mut bad) = (0, 0);
                    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                        if one(target, timeout) {
                            ok += 1;
                        } else {
                            bad += 1;
                        }
                    }
                    (ok, bad)
                })
                .expect("spawn client thread")
        })
        .collect();
    let mut r = ClientReport::default();
    for h in handles {
        let (ok, bad) = h.join().unwrap_or((0, 0));
        r.completed += ok;
        r.failed += bad;
    }
    r.elapsed = start.elapsed();
    r
}
