//! `uring`: what the kernel's completion interface (io_uring) would save a server thread over
//! readiness (epoll), measured below any runtime.
//!
//! With one worker, rescon-rt and tokio serve loopback echo and HTTP at the same rate and the
//! same CPU per request (`runtime`): both spend over 80% of it in the kernel, in one `recv` and
//! one `send` per request and a share of an `epoll_wait`, and neither has user-space work left
//! to remove that would show. This probe asks what a different kernel interface would give,
//! before a runtime is built on it: three one-thread echo servers, each serving 64 connections
//! of 1 KiB messages from the same client (one thread, epoll, closed loop):
//!
//! - `epoll`: edge-triggered epoll, a `recv` and a `send` per message: what both runtimes do.
//! - `uring`: io_uring: one multishot receive per connection into a ring of provided
//!   buffers, each reply a send from the buffer it arrived in, submitted with the loop's
//!   other sends in one `io_uring_enter` that also waits for the next completions.
//! - `hybrid`: epoll and `recv` as in `epoll`, the replies sent through io_uring, all of a
//!   loop's sends submitted in one `io_uring_enter` before the thread waits in `epoll_wait`.
//!
//! The modes take turns, a window each (the first of each turn rotating), and each reports
//! messages per second and the server thread's CPU time per message (its `schedstat`); the
//! ratios against `epoll` are medians over the turns, with the 95% interval of `runtime`.
//!
//! A probe, not a server: sends are never partial here (1 KiB into an empty loopback socket
//! buffer; one that is makes the run fail), and a connection that closes ends the run.
//! Traffic stays on 127.0.0.1; every window is bounded in time.

use anyhow::{Context, bail, ensure};
use io_uring::{IoUring, cqueue, opcode, types};
use rustix::event::epoll;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds of load in each window.
    #[arg(long, default_value_t = 1.5)]
    duration: f64,
    /// Turns: each runs every mode for one window.
    #[arg(long, default_value_t = 8)]
    turns: usize,
}

const CONNS: usize = 64;
const MSG: usize = 1024;
/// Provided buffers (a power of two) and their size.
const NBUF: usize = 256;
const BUFSZ: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Epoll,
    Uring,
    Hybrid,
}

const MODES: [Mode; 3] = [Mode::Epoll, Mode::Uring, Mode::Hybrid];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Epoll => "epoll",
            Mode::Uring => "uring",
            Mode::Hybrid => "hybrid",
        }
    }
}

#[derive(Serialize)]
struct ModeReport {
    mode: &'static str,
    /// Median over the turns.
    msgs_per_s: f64,
    /// The server thread's CPU time per message, microseconds (median over the turns).
    server_cpu_us: f64,
    /// Against `epoll` in the same turn (absent for `epoll`): messages per second, higher is
    /// better, and CPU per message, lower is better. Medians with 95% intervals.
    #[serde(skip_serializing_if = "Option::is_none")]
    throughput_vs_epoll: Option<[f64; 3]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_vs_epoll: Option<[f64; 3]>,
}

#[derive(Serialize)]
struct Report {
    conns: usize,
    msg_bytes: usize,
    turns: usize,
    modes: Vec<ModeReport>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.duration > 0.0 && args.duration <= 30.0,
        "--duration must be in (0, 30] seconds"
    );
    ensure!((1..=50).contains(&args.turns), "--turns must be in 1..=50");
    probe_io_uring()?;
    let dur = Duration::from_secs_f64(args.duration);
    // samples[mode] = (msgs/s, cpu us/msg) per turn
    let mut samples: [Vec<(f64, f64)>; 3] = Default::default();
    for t in 0..args.turns {
        for k in 0..MODES.len() {
            let m = (t + k) % MODES.len();
            eprintln!("uring: turn {}/{}, {}", t + 1, args.turns, MODES[m].name());
            samples[m].push(run_once(MODES[m], dur)?);
        }
    }
    let median = |v: Vec<f64>| crate::runtime::median(v);
    let ci = |v: Vec<f64>| crate::runtime::median_ci95(v);
    let mut modes = Vec::new();
    for (m, mode) in MODES.iter().enumerate() {
        let vs = |f: fn(&(f64, f64)) -> f64, inverse: bool| -> Option<[f64; 3]> {
            (m != 0).then(|| {
                let r: Vec<f64> = samples[m]
                    .iter()
                    .zip(&samples[0])
                    .map(|(x, e)| if inverse { f(e) / f(x) } else { f(x) / f(e) })
                    .collect();
                let [lo, hi] = ci(r.clone());
                [median(r), lo, hi]
            })
        };
        modes.push(ModeReport {
            mode: mode.name(),
            msgs_per_s: median(samples[m].iter().map(|s| s.0).collect()),
            server_cpu_us: median(samples[m].iter().map(|s| s.1).collect()),
            throughput_vs_epoll: vs(|s| s.0, false),
            cpu_vs_epoll: vs(|s| s.1, false),
        });
    }
    let report = Report {
        conns: CONNS,
        msg_bytes: MSG,
        turns: args.turns,
        modes,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:8} {:>12} {:>16}   {:>22}   {:>22}",
        "mode", "msgs/s", "server CPU/msg us", "throughput vs epoll", "CPU/msg vs epoll"
    );
    let fmt = |x: Option<[f64; 3]>| {
        x.map_or(String::new(), |[m, lo, hi]| {
            format!("{m:.3} ({lo:.2}-{hi:.2})")
        })
    };
    for m in &report.modes {
        println!(
            "{:8} {:>12.0} {:>16.2}   {:>22}   {:>22}",
            m.mode,
            m.msgs_per_s,
            m.server_cpu_us,
            fmt(m.throughput_vs_epoll),
            fmt(m.cpu_vs_epoll)
        );
    }
    println!(
        "\none server thread, {CONNS} connections, {MSG}-byte echo, one client thread; medians over {} turns, ratios with 95% intervals (CPU/msg: below 1 is less)",
        report.turns
    );
    Ok(())
}

/// Fails with a message saying why if io_uring cannot be used here.
fn probe_io_uring() -> anyhow::Result<()> {
    IoUring::new(8).map(drop).context(
        "io_uring is not available (kernel 6.0 or later with io_uring enabled: \
         /proc/sys/kernel/io_uring_disabled = 0, and not blocked by seccomp)",
    )
}

/// One window of one mode: messages per second and the server's CPU microseconds per message.
fn run_once(mode: Mode, dur: Duration) -> anyhow::Result<(f64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (mut clients, mut servers) = (Vec::new(), Vec::new());
    for _ in 0..CONNS {
        let c = TcpStream::connect(addr)?;
        let (s, _) = listener.accept()?;
        for x in [&c, &s] {
            x.set_nodelay(true)?;
        }
        clients.push(c);
        servers.push(s);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let (tid_tx, tid_rx) = mpsc::channel();
    let st = stop.clone();
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        tid_tx
            .send(rustix::thread::gettid().as_raw_nonzero().get())
            .ok();
        for s in &servers {
            s.set_nonblocking(true)?;
        }
        let r = match mode {
            Mode::Epoll => epoll_server(&servers, &st),
            Mode::Uring => uring_server(&servers, &st),
            Mode::Hybrid => hybrid_server(&servers, &st),
        };
        after_stop_is_fine(r, &st)
    });
    let (st, dn) = (stop.clone(), done.clone());
    let client = std::thread::spawn(move || {
        let r = client_loop(&mut clients, &st, &dn);
        after_stop_is_fine(r, &st)
    });
    let tid = tid_rx.recv().context("server thread")?;
    let path = format!("/proc/self/task/{tid}/schedstat");
    std::thread::sleep(Duration::from_millis(200));
    let (t0, d0, c0) = (Instant::now(), done.load(Relaxed), crate::schedstat(&path));
    std::thread::sleep(dur);
    let (d1, c1) = (done.load(Relaxed), crate::schedstat(&path));
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    let served = server.join().expect("server thread");
    let driven = client.join().expect("client thread");
    served.with_context(|| format!("{} server", mode.name()))?;
    driven.context("client")?;
    let n = d1 - d0;
    ensure!(n > 0, "{}: no message echoed in the window", mode.name());
    let (Some(a), Some(b)) = (c0, c1) else {
        bail!("cannot read {path}");
    };
    Ok((
        n as f64 / secs,
        b.0.saturating_sub(a.0) as f64 / 1e3 / n as f64,
    ))
}

/// Once the window is over, each side may see the other close first (a reset, a broken pipe,
/// an end of stream): only an error before that counts.
fn after_stop_is_fine(r: anyhow::Result<()>, stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Relaxed) { Ok(()) } else { r }
}

/// An epoll instance watching `socks` for `flags`, each event carrying the socket's index.
fn watch(socks: &[TcpStream], flags: epoll::EventFlags) -> std::io::Result<OwnedFd> {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    for (i, s) in socks.iter().enumerate() {
        epoll::add(&ep, s, epoll::EventData::new_u64(i as u64), flags)?;
    }
    Ok(ep)
}

/// What the servers watch for: edge-triggered, both directions and the peer's close, as mio
/// registers a socket for the runtimes.
const SERVER_EVENTS: epoll::EventFlags = epoll::EventFlags::IN
    .union(epoll::EventFlags::OUT)
    .union(epoll::EventFlags::RDHUP)
    .union(epoll::EventFlags::ET);

/// Waits up to 50 ms for events; returns the indices of the sockets that became readable.
fn wait_readable<'a>(
    ep: &OwnedFd,
    events: &'a mut Vec<epoll::Event>,
) -> std::io::Result<impl Iterator<Item = usize> + 'a> {
    let timeout = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    events.clear();
    epoll::wait(ep, rustix::buffer::spare_capacity(events), Some(&timeout))?;
    Ok(events.iter().filter_map(|ev| {
        let (flags, data) = (ev.flags, ev.data);
        flags
            .contains(epoll::EventFlags::IN)
            .then_some(data.u64() as usize)
    }))
}

/// The client: each connection sends a message and waits for all of it to come back, in a loop.
fn client_loop(
    clients: &mut [TcpStream],
    stop: &AtomicBool,
    done: &AtomicU64,
) -> anyhow::Result<()> {
    for c in clients.iter() {
        c.set_nonblocking(true)?;
    }
    let ep = watch(clients, epoll::EventFlags::IN | epoll::EventFlags::ET)?;
    let msg = [b'x'; MSG];
    let mut have = vec![0usize; clients.len()];
    let mut buf = [0u8; BUFSZ];
    for c in clients.iter_mut() {
        ensure!(c.write(&msg)? == MSG, "short first send");
    }
    let mut events = Vec::with_capacity(CONNS);
    while !stop.load(Relaxed) {
        for i in wait_readable(&ep, &mut events)? {
            loop {
                match clients[i].read(&mut buf) {
                    Ok(0) if stop.load(Relaxed) => return Ok(()),
                    Ok(0) => bail!("server closed connection {i}"),
                    Ok(n) => {
                        have[i] += n;
                        if have[i] >= MSG {
                            have[i] -= MSG;
                            done.fetch_add(1, Relaxed);
                            ensure!(clients[i].write(&msg)? == MSG, "short send");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

fn epoll_server(socks: &[TcpStream], stop: &AtomicBool) -> anyhow::Result<()> {
    let ep = watch(socks, SERVER_EVENTS)?;
    let mut buf = [0u8; BUFSZ];
    let mut events = Vec::with_capacity(1024);
    while !stop.load(Relaxed) {
        for i in wait_readable(&ep, &mut events)? {
            let mut s = &socks[i];
            // As the runtimes do: one read, and a short one means the socket is drained.
            loop {
                match s.read(&mut buf) {
                    Ok(0) if stop.load(Relaxed) => return Ok(()),
                    Ok(0) => bail!("client closed"),
                    Ok(n) => {
                        ensure!(s.write(&buf[..n])? == n, "partial send");
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// A ring of provided buffers (page-aligned, as the kernel requires) and the buffers it hands
/// out. Both are leaked: when the ring is dropped the kernel cancels its multishot receives
/// asynchronously, and one may still write into a buffer after the drop returns, so the
/// memory must never be reused (1 MiB a window, at most 50 windows a run).
struct Provided {
    /// NBUF buffers of BUFSZ bytes. A raw pointer, not a slice: the kernel writes them behind
    /// Rust's back, and Rust never reads them (a send hands them back to the kernel).
    bufs: *mut u8,
    ring: *mut types::BufRingEntry,
    tail: u16,
}

impl Provided {
    fn new(ring: &IoUring) -> anyhow::Result<Provided> {
        let layout =
            std::alloc::Layout::from_size_align(NBUF * size_of::<types::BufRingEntry>(), 4096)?;
        // SAFETY: a non-zero size; zeroed memory is a valid (empty) buffer ring. Never freed.
        let base = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
        ensure!(!base.is_null(), "out of memory");
        let mut p = Provided {
            bufs: Vec::leak(vec![0u8; NBUF * BUFSZ]).as_mut_ptr(),
            ring: base,
            tail: 0,
        };
        // SAFETY: the ring's memory is leaked, so it outlives the registration.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(base as u64, NBUF as u16, 0, 0)
        }
        .context("register a provided-buffer ring (kernel 5.19 or later)")?;
        for bid in 0..NBUF as u16 {
            p.give_back(bid);
        }
        Ok(p)
    }

    fn addr(&self, bid: u16) -> *const u8 {
        assert!((bid as usize) < NBUF, "buffer id {bid} out of range");
        self.bufs.wrapping_add(bid as usize * BUFSZ)
    }

    /// Returns buffer `bid` to the ring.
    fn give_back(&mut self, bid: u16) {
        let addr = self.addr(bid) as u64;
        // SAFETY: `ring` points to NBUF entries that live forever; the index is masked into
        // range, and the kernel reads an entry only once the tail (published with release
        // ordering below) has moved past it.
        unsafe {
            let e = &mut *self.ring.add(self.tail as usize & (NBUF - 1));
            e.set_addr(addr);
            e.set_len(BUFSZ as u32);
            e.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
            let tail = types::BufRingEntry::tail(self.ring) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

/// User data: bit 63 marks a receive; a send carries its buffer in bits 32..48; the low 32
/// bits are the connection.
const RECV: u64 = 1 << 63;

fn recv_multi(fd: i32, conn: usize) -> io_uring::squeue::Entry {
    opcode::RecvMulti::new(types::Fd(fd), 0)
        .build()
        .user_data(RECV | conn as u64)
}

/// Queues `e`, submitting what is queued first if the submission queue is full.
fn push(ring: &mut IoUring, e: &io_uring::squeue::Entry) -> anyhow::Result<()> {
    // SAFETY: the only memory an entry names is a provided buffer (leaked, see `Provided`) or
    // one the caller keeps until the entry completes.
    while unsafe { ring.submission().push(e) }.is_err() {
        ring.submit()?;
    }
    Ok(())
}

const ENOBUFS: i32 = -105;

fn uring_server(socks: &[TcpStream], stop: &AtomicBool) -> anyhow::Result<()> {
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(4 * NBUF as u32)
        .build(NBUF as u32)?;
    let mut provided = Provided::new(&ring)?;
    let mut sent = [0i32; NBUF];
    let fds: Vec<i32> = socks.iter().map(|s| s.as_raw_fd()).collect();
    for (i, &fd) in fds.iter().enumerate() {
        push(&mut ring, &recv_multi(fd, i))?;
    }
    let ts = types::Timespec::new().nsec(50_000_000);
    let args = types::SubmitArgs::new().timespec(&ts);
    let mut done = Vec::with_capacity(4 * NBUF);
    while !stop.load(Relaxed) {
        // Submit the loop's sends and wait for completions in one call.
        match ring.submitter().submit_with_args(1, &args) {
            Err(e)
                if e.raw_os_error() != Some(rustix::io::Errno::TIME.raw_os_error())
                    && e.kind() != std::io::ErrorKind::Interrupted =>
            {
                return Err(e.into());
            }
            _ => {}
        }
        done.clear();
        done.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(ud, res, flags) in &done {
            let conn = (ud & 0xffff_ffff) as usize;
            if ud & RECV == 0 {
                let bid = (ud >> 32) as u16;
                if res < 0 && stop.load(Relaxed) {
                    return Ok(()); // the client went first
                }
                ensure!(
                    res == sent[bid as usize],
                    "send on connection {conn}: {res}"
                );
                provided.give_back(bid);
                continue;
            }
            if res == ENOBUFS {
                // Every buffer was out and the receive ended: arm it again.
                push(&mut ring, &recv_multi(fds[conn], conn))?;
                continue;
            }
            if res == 0 && stop.load(Relaxed) {
                return Ok(());
            }
            ensure!(res > 0, "receive on connection {conn}: {res}");
            let bid = cqueue::buffer_select(flags).context("no buffer selected")?;
            sent[bid as usize] = res;
            let send = opcode::Send::new(types::Fd(fds[conn]), provided.addr(bid), res as u32)
                .build()
                .user_data(((bid as u64) << 32) | conn as u64);
            push(&mut ring, &send)?;
            if !cqueue::more(flags) {
                push(&mut ring, &recv_multi(fds[conn], conn))?;
            }
        }
    }
    Ok(())
}

fn hybrid_server(socks: &[TcpStream], stop: &AtomicBool) -> anyhow::Result<()> {
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_cqsize(4 * NBUF as u32)
        .build(NBUF as u32)?;
    let ep = watch(socks, SERVER_EVENTS)?;
    let mut bufs = vec![0u8; NBUF * BUFSZ];
    let mut free: Vec<u16> = (0..NBUF as u16).collect();
    let mut sent = [0i32; NBUF];
    let mut events = Vec::with_capacity(1024);
    while !stop.load(Relaxed) {
        // The sends queued since the last wait go in one call; their completions free buffers.
        ring.submit()?;
        for c in ring.completion() {
            let bid = c.user_data() as u16;
            ensure!(
                c.result() == sent[bid as usize] || stop.load(Relaxed),
                "send: {}",
                c.result()
            );
            free.push(bid);
        }
        for i in wait_readable(&ep, &mut events)? {
            let Some(bid) = free.pop() else {
                bail!("out of send buffers");
            };
            let buf = &mut bufs[bid as usize * BUFSZ..][..BUFSZ];
            let n = match (&socks[i]).read(buf) {
                Ok(0) if stop.load(Relaxed) => {
                    // No send for this buffer: the wait below counts only those in flight.
                    free.push(bid);
                    break;
                }
                Ok(0) => bail!("client closed"),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    free.push(bid);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            sent[bid as usize] = n as i32;
            let send = opcode::Send::new(types::Fd(socks[i].as_raw_fd()), buf.as_ptr(), n as u32)
                .build()
                .user_data(bid as u64);
            push(&mut ring, &send)?;
        }
    }
    // Sends still in flight read `bufs`: wait for them before it goes.
    ring.submit_and_wait(NBUF - free.len())?;
    Ok(())
}
