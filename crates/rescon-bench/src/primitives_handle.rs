//! Container handles across processes (`rescon-handle`), measured between this process (the
//! owner, serving handles on a thread of its own) and a peer process (this binary run again as
//! the hidden `handle-peer`):
//!
//! - `move_between_processes`: the paper's "move container between processes": the owner's
//!   process sends a handle over a Unix socket (`sendmsg` with `SCM_RIGHTS`), the peer receives
//!   it (`recvmsg`) and makes a first use of it, a charge (one `sendmsg` to the owner, served by
//!   the owner's thread). Batches of 32, the peer waiting until a batch is sent before it
//!   starts, so the figure is the time of the three system calls on both sides, without the
//!   peer's wake-up; `..._send` and `..._receive_use` are its two halves.
//! - `move_between_processes_roundtrip`: one handle at a time to a peer asleep in `recvmsg`,
//!   which acknowledges after its first use: two wake-ups included, the latency a server sees.
//! - `handle_charge`: a charge message on a handle held; `handle_meter_charge`: a charge on
//!   its page of counters (an atomic add); `handle_call_usage`: reading usage, a call answered
//!   by the owner's thread; `handle_issue`: the owner making a handle.
//!
//! The owner's thread and the sender share CPU 0, the peer has CPU 1 (where there are two), so
//! that neither side's timed loop is preempted by the other's work.

use crate::primitives::{Op, ROUNDS, median_of};
use anyhow::{Context, Result, bail};
use rescon::{Attributes, Registry};
use rescon_handle::owner::Owner;
use rescon_handle::{Charge, Handle, pass};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Handles per batch of `move_between_processes`.
const BATCH: usize = 32;

fn iters(base: u64, scale: f64) -> u64 {
    ((base as f64 * scale) as u64).max(BATCH as u64 * ROUNDS as u64)
}

/// Adds the handle ops to `ops`, or says on stderr why they are left out.
pub fn add_to(ops: &mut BTreeMap<&'static str, Op>, scale: f64) {
    eprintln!("measuring handles across processes...");
    let old = pin_self(0);
    let r = measure(scale);
    if let Some(old) = old {
        let _ = rustix::thread::sched_setaffinity(None, &old);
    }
    match r {
        Ok(m) => ops.extend(m),
        Err(e) => eprintln!("handle primitives left out: {e:#}"),
    }
}

/// Pins the calling thread to `cpu` (if the machine has it) and returns its former set.
fn pin_self(cpu: usize) -> Option<rustix::thread::CpuSet> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return None;
    }
    let old = rustix::thread::sched_getaffinity(None).ok()?;
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).ok()?;
    Some(old)
}

/// A text message on a control socket.
fn say(sock: &OwnedFd, msg: &str) -> Result<()> {
    rustix::net::send(sock, msg.as_bytes(), rustix::net::SendFlags::empty())?;
    Ok(())
}

fn hear(sock: &OwnedFd) -> Result<String> {
    let mut buf = [0u8; 256];
    let (n, _) = rustix::net::recv(sock, &mut buf, rustix::net::RecvFlags::empty())?;
    if n == 0 {
        bail!("the peer closed the control socket");
    }
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn hear_ns(sock: &OwnedFd) -> Result<u64> {
    let m = hear(sock)?;
    m.strip_prefix("ns ")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("the peer said {m:?}, not a time"))
}

fn pair() -> Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?)
}

fn wait_released(owner: &Owner, live: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while owner.stats().handles > live {
        if Instant::now() > deadline {
            bail!("handles not released: {:?}", owner.stats());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

fn op(mean_ns: f64, iterations: u64) -> Op {
    Op {
        mean_ns,
        iterations,
    }
}

fn measure(scale: f64) -> Result<BTreeMap<&'static str, Op>> {
    let (transfer, transfer_peer) = pair()?;
    let (control, control_peer) = pair()?;
    let mut peer = std::process::Command::new(std::env::current_exe()?)
        .arg("handle-peer")
        .stdin(Stdio::from(transfer_peer))
        .stdout(Stdio::from(control_peer))
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the peer process")?;
    // The owner's thread inherits this thread's CPU (pinned by the caller).
    let owner = Owner::new(Default::default())?;
    let server = owner.spawn("rescon-handles")?;
    let r = run(&owner, &transfer, &control, scale);
    let _ = say(&control, "quit");
    drop((transfer, control));
    let status = peer.wait()?;
    drop(server);
    let ops = r?;
    if !status.success() {
        bail!("the peer failed ({status})");
    }
    Ok(ops)
}

fn run(
    owner: &Owner,
    transfer: &OwnedFd,
    control: &OwnedFd,
    scale: f64,
) -> Result<BTreeMap<&'static str, Op>> {
    let mut ops = BTreeMap::new();
    let registry = Registry::new();
    let parent = registry
        .root()
        .create_child("bench", Attributes::default())?;
    let issue = |n: usize| -> Result<Vec<OwnedFd>> {
        (0..n)
            .map(|_| {
                let c = parent.create_child("moved", Attributes::default())?;
                Ok(owner.issue(&c)?)
            })
            .collect()
    };
    assert_eq!(hear(control)?, "ready");

    // Moves in batches: the send timed here, the receive and first use timed by the peer.
    let n = iters(40_000, scale) as usize / ROUNDS / BATCH * BATCH;
    let (mut sends, mut recvs, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (mut send_ns, mut recv_ns) = (0u64, 0u64);
        for _ in 0..n / BATCH {
            let fds = issue(BATCH)?;
            let t = Instant::now();
            for fd in &fds {
                pass::send_fd(transfer.as_fd(), fd.as_fd())?;
            }
            send_ns += t.elapsed().as_nanos() as u64;
            drop(fds);
            say(control, &format!("move {BATCH}"))?;
            recv_ns += hear_ns(control)?;
            wait_released(owner, 0)?;
        }
        sends.push(send_ns as f64 / n as f64);
        recvs.push(recv_ns as f64 / n as f64);
        totals.push((send_ns + recv_ns) as f64 / n as f64);
    }
    let all = (n * ROUNDS) as u64;
    ops.insert("move_between_processes", op(median_of(totals), all));
    ops.insert("move_between_processes_send", op(median_of(sends), all));
    ops.insert(
        "move_between_processes_receive_use",
        op(median_of(recvs), all),
    );

    // One at a time to a sleeping peer that acknowledges: two wake-ups per move.
    let per_round = (iters(5_000, scale) as usize / ROUNDS).max(1);
    let mut means = Vec::new();
    for _ in 0..ROUNDS {
        let fds = issue(per_round)?;
        say(control, &format!("roundtrip {per_round}"))?;
        let t = Instant::now();
        for fd in &fds {
            pass::send_fd(transfer.as_fd(), fd.as_fd())?;
            let ack = hear(control)?;
            if ack != "ok" {
                bail!("the peer said {ack:?}");
            }
        }
        means.push(t.elapsed().as_nanos() as f64 / per_round as f64);
        drop(fds);
        say(control, "drop")?;
        assert_eq!(hear(control)?, "ok");
        wait_released(owner, 0)?;
    }
    ops.insert(
        "move_between_processes_roundtrip",
        op(median_of(means), (per_round * ROUNDS) as u64),
    );

    // A handle the peer holds, for the steady-state costs.
    let held = parent.create_child("held", Attributes::default())?;
    let fd = owner.issue(&held)?;
    say(control, "hold")?;
    pass::send_fd(transfer.as_fd(), fd.as_fd())?;
    drop(fd);
    assert_eq!(hear(control)?, "ok");
    for (name, cmd, base) in [
        ("handle_charge", "charge", 200_000u64),
        ("handle_meter_charge", "meter", 20_000_000),
        ("handle_call_usage", "call", 50_000),
    ] {
        let per_round = (iters(base, scale) / ROUNDS as u64).max(1);
        let mut means = Vec::new();
        for _ in 0..ROUNDS {
            say(control, &format!("{cmd} {per_round}"))?;
            means.push(hear_ns(control)? as f64 / per_round as f64);
        }
        ops.insert(name, op(median_of(means), per_round * ROUNDS as u64));
    }
    // Every charge reached the container (the page's at the harvest, at the latest the release).
    say(control, "drop")?;
    assert_eq!(hear(control)?, "ok");
    wait_released(owner, 0)?;
    let charged = held.usage().requests;
    let per = |base| (iters(base, scale) / ROUNDS as u64).max(1) * ROUNDS as u64;
    let expected = per(200_000) + per(20_000_000);
    if charged != expected {
        bail!("the held handle was charged {charged} requests, {expected} were sent");
    }

    // Issuing: a socket pair, an epoll registration and a table entry.
    let per_round = (iters(20_000, scale) as usize / ROUNDS).max(1);
    let mut means = Vec::new();
    let c = parent.create_child("issued", Attributes::default())?;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let fds: Vec<OwnedFd> = (0..per_round)
            .map(|_| owner.issue(&c))
            .collect::<Result<_, _>>()?;
        means.push(t.elapsed().as_nanos() as f64 / per_round as f64);
        drop(fds);
        wait_released(owner, 0)?;
    }
    ops.insert(
        "handle_issue",
        op(median_of(means), (per_round * ROUNDS) as u64),
    );
    Ok(ops)
}

/// The peer process: receives handles on its stdin, takes orders and reports times on its
/// stdout (both `SOCK_SEQPACKET` sockets made by `measure`).
pub fn peer() -> Result<()> {
    pin_self(1);
    let transfer = std::io::stdin().as_fd().try_clone_to_owned()?;
    let control = std::io::stdout().as_fd().try_clone_to_owned()?;
    let one = Charge {
        requests: 1,
        ..Default::default()
    };
    let mut kept: Vec<Handle> = Vec::new();
    let mut held: Option<Handle> = None;
    say(&control, "ready")?;
    loop {
        let order = match hear(&control) {
            Ok(o) => o,
            // The owner's process went away.
            Err(_) => return Ok(()),
        };
        let (cmd, n) = match order.split_once(' ') {
            Some((c, n)) => (c, n.parse::<u64>().context("a count")?),
            None => (order.as_str(), 0),
        };
        match cmd {
            "move" => {
                let t = Instant::now();
                for _ in 0..n {
                    let h = Handle::recv_from(&transfer)?;
                    h.charge(one)?;
                    kept.push(h);
                }
                let ns = t.elapsed().as_nanos();
                say(&control, &format!("ns {ns}"))?;
                kept.clear();
            }
            "roundtrip" => {
                for _ in 0..n {
                    let h = Handle::recv_from(&transfer)?;
                    h.charge(one)?;
                    say(&control, "ok")?;
                    kept.push(h);
                }
            }
            "drop" => {
                kept.clear();
                held = None;
                say(&control, "ok")?;
            }
            "hold" => {
                held = Some(Handle::recv_from(&transfer)?);
                say(&control, "ok")?;
            }
            "charge" | "meter" | "call" => {
                let h = held.as_ref().context("no handle held")?;
                let meter = h.meter()?;
                h.usage()?;
                let t = Instant::now();
                match cmd {
                    "charge" => {
                        for _ in 0..n {
                            h.charge(one)?;
                        }
                    }
                    "meter" => {
                        for _ in 0..n {
                            meter.add_requests(std::hint::black_box(1));
                        }
                    }
                    _ => {
                        for _ in 0..n {
                            std::hint::black_box(h.usage()?);
                        }
                    }
                }
                let ns = t.elapsed().as_nanos();
                say(&control, &format!("ns {ns}"))?;
            }
            "quit" => return Ok(()),
            other => bail!("unknown order {other:?}"),
        }
    }
}
