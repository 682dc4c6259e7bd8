//! The kernel's network work charged to containers, with eBPF: packets and bytes per
//! container, and the CPU the kernel spends receiving them in softirq.
//!
//! The paper's central complaint is that a server's CPU goes largely to network processing
//! in the kernel, charged to whoever happens to be running. On Linux without IRQ time
//! accounting (as on these machines) NET_RX softirq time is added to the task it
//! interrupted, a CGI script included; nothing charges it to the connection whose packets
//! they were. Iron (NSDI 2018) did it with a kernel patch; this module does it with
//! programs the kernel verifies, on an unpatched kernel.
//!
//! # How
//!
//! - **Owners.** [`NetAccounting::bind`] writes a container id into a socket's BPF socket
//!   storage. A listener's storage is copied to every connection it accepts, so binding a
//!   listener (a [`listen`](crate::listen) member) charges its connections to its container
//!   with no system call per connection; binding a connection to a container of its own
//!   later (after its first request, say) is one system call. The storage goes away with the
//!   socket.
//! - **Packets, bytes, softirq time** by owner: fentry/fexit programs on `tcp_v4_do_rcv` and
//!   `tcp_v6_do_rcv` (the socket is known there) time each receive that runs in NET_RX
//!   softirq and count every receive; fentry on `ip_queue_xmit` and `inet6_csk_xmit` counts
//!   what is sent. Counters live in a per-CPU hash by container id.
//! - **The rest of NET_RX** (driver, GRO, IP, socket lookup) is timed by the `softirq_entry`
//!   and `softirq_exit` tracepoints and apportioned by packets: see [`ledger`], which turns
//!   cumulative reads into per-interval charges, with packets dropped early for a container
//!   (the listener groups' edge filter and black holes) counted as its packets.
//! - **The interrupted thread** of the watched process (this one by default) is credited each
//!   NET_RX run's time, so that a runtime can take it out of what its polls were charged
//!   ([`ledger::credit_back`]).
//!
//! The programs are assembled by hand and find this kernel's function ids and field offsets
//! in its BTF (see [`ebpf`](crate::ebpf) for why no C toolchain).
//!
//! # The boundary
//!
//! [`NetAccounting::open`] loads and attaches everything, or says why it cannot
//! ([`Unavailable`]: not root, no BTF, a function missing from this kernel, a refusal of the
//! verifier); a server keeps an `Option<NetAccounting>` and runs without kernel network
//! accounting when it is `None`, saying so. Nothing else here touches the kernel: the
//! arithmetic of [`ledger`] is pure and runs anywhere. Everything loaded (programs, maps,
//! links) belongs to the handle's file descriptors and is gone when it is dropped, or when
//! the process dies.
//!
//! # Costs
//!
//! Per packet received: two trampolines, two clock reads, one socket-storage lookup and one
//! hash lookup (`rescon-bench netacct` measures it with the kernel's own program statistics);
//! per packet sent: one trampoline, one storage lookup and one hash lookup; per NET_RX softirq
//! run (up to 64 frames per NAPI poll): two clock reads. A [`read`](NetAccounting::read)
//! costs a few system calls plus one batch read of the usage map.
//!
//! # Use
//!
//! ```no_run
//! use rescon_linux::netacct::{NetAccounting, Options};
//! use rescon_linux::netacct::ledger::Ledger;
//! # let (listener_fd, container) = (std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
//! #     rescon::Registry::new().root().create_child("c", Default::default()).unwrap());
//! let acct = match NetAccounting::open(&Options::default()) {
//!     Ok(a) => Some(a),
//!     Err(e) => {
//!         eprintln!("{e}; running without kernel network accounting");
//!         None
//!     }
//! };
//! if let Some(acct) = &acct {
//!     acct.bind(&listener_fd, container.id()).unwrap(); // its connections too
//!     let mut ledger = Ledger::starting_at(&acct.read().unwrap(), &[]);
//!     // ... every 100 ms, with the packets the listener groups dropped early for each
//!     // member's container (black holes, edge filters):
//!     # let group: rescon_linux::listen::ListenerGroup = unimplemented!();
//!     let drops: Vec<(rescon::ContainerId, u64)> = group
//!         .early_drops_by_member()
//!         .into_iter()
//!         .filter_map(|(m, n)| Some((group.member(m).ok()?.container().id(), n)))
//!         .collect();
//!     let interval = ledger.advance(&acct.read().unwrap(), &drops);
//!     for (id, u) in &interval.containers {
//!         println!("{id}: {} packets in, {} ns of kernel network CPU", u.rx_packets, u.kernel_net_ns());
//!     }
//! }
//! ```

#![deny(unsafe_code)]

pub mod ledger;
mod progs;

use crate::ebpf::btf::{self, Btf};
use crate::ebpf::sys::{self, AttachType, MapSpec, MapType, ProgSpec, ProgType};
use crate::ebpf::{Map, sum_words};
use ledger::{Counters, SocketCounters, Totals};
use progs::{Maps, SkbFields};
use rescon::ContainerId;
use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Settings of [`NetAccounting::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Containers counted at once (entries of the usage map; default 65,536). Packets of a
    /// container beyond it are counted as lost ([`ledger::Totals::lost`]) until
    /// [`NetAccounting::forget`] makes room.
    pub max_containers: u32,
    /// Threads whose NET_RX interruptions are credited (default 4,096; the least recently
    /// interrupted are evicted first).
    pub max_threads: u32,
    /// The process whose threads are credited (default: this one; `None`: no credit).
    pub credit_process: Option<u32>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_containers: 65_536,
            max_threads: 4_096,
            credit_process: Some(std::process::id()),
        }
    }
}

/// Why kernel network accounting is unavailable: the step that failed, the kernel's reason,
/// and what to do.
#[derive(Debug)]
pub struct Unavailable {
    step: String,
    reason: String,
    permission: bool,
}

impl Unavailable {
    fn new(step: impl Into<String>, e: impl fmt::Display, permission: bool) -> Unavailable {
        Unavailable {
            step: step.into(),
            reason: e.to_string(),
            permission,
        }
    }

    fn io(step: impl Into<String>, e: io::Error) -> Unavailable {
        let permission = e.raw_os_error() == Some(libc::EPERM);
        Unavailable::new(step, e, permission)
    }

    /// Whether it failed for want of privilege (then root, or `CAP_BPF` with
    /// `CAP_PERFMON`, would do).
    pub fn is_permission(&self) -> bool {
        self.permission
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel network accounting unavailable: {}: {}",
            self.step, self.reason
        )?;
        if self.permission {
            f.write_str(" (loading tracing programs needs root, or CAP_BPF with CAP_PERFMON)")?;
        }
        Ok(())
    }
}

impl std::error::Error for Unavailable {}

/// One attached program.
struct Attached {
    name: &'static str,
    prog: OwnedFd,
    _link: OwnedFd,
}

/// The loaded programs and their maps: see the [module docs](self).
pub struct NetAccounting {
    state: Map,
    totals: Map,
    owner: Map,
    usage: Map,
    credit: Map,
    cfg: Map,
    _btf: OwnedFd,
    progs: Vec<Attached>,
}

impl fmt::Debug for NetAccounting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetAccounting")
            .field(
                "programs",
                &self.progs.iter().map(|p| p.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// What the programs need from this kernel's BTF: the BTF tracepoints' type ids and the
/// fields of `struct sk_buff` they read.
struct Hooks {
    tcp_probe: u32,
    start_xmit: u32,
    skb: SkbFields,
}

fn hooks(btf: &Btf) -> Result<Hooks, Unavailable> {
    let fail = |e: btf::BtfError| Unavailable::new("reading the kernel's BTF", e, false);
    let field = |f: &str| -> Result<i16, Unavailable> {
        let off = btf.field("sk_buff", f).map_err(fail)?;
        i16::try_from(off).map_err(|_| fail(btf::BtfError(format!("sk_buff.{f} at {off}"))))
    };
    Ok(Hooks {
        tcp_probe: btf.tracepoint("tcp_probe").map_err(fail)?,
        start_xmit: btf.tracepoint("net_dev_start_xmit").map_err(fail)?,
        skb: SkbFields {
            len: field("len")?,
            sk: field("sk")?,
            transport_header: field("transport_header")?,
            mac_header: field("mac_header")?,
        },
    })
}

impl NetAccounting {
    /// Loads the programs and attaches them (machine-wide: every network namespace).
    pub fn open(opts: &Options) -> Result<NetAccounting, Unavailable> {
        let kbtf = Btf::vmlinux().map_err(|e| Unavailable::new("reading BTF", e, false))?;
        let h = hooks(&kbtf)?;
        drop(kbtf);
        let blob = btf::int_blob();
        let btf_fd =
            sys::btf_load(&blob).map_err(|e| Unavailable::io("loading map types (BTF)", e))?;
        let map = |spec: MapSpec<'_>| {
            Map::create(&spec)
                .map_err(|e| Unavailable::io(format!("creating map {}", spec.name), e))
        };
        let plain = |kind, name, key, value, max_entries| MapSpec {
            kind,
            key,
            value,
            max_entries,
            flags: 0,
            name,
            btf: None,
        };
        let state = map(plain(
            MapType::PercpuArray,
            "rescon_na_state",
            4,
            progs::state::SIZE,
            1,
        ))?;
        let totals = map(plain(
            MapType::PercpuArray,
            "rescon_na_total",
            4,
            progs::totals::SIZE,
            1,
        ))?;
        let usage = map(plain(
            MapType::PercpuHash,
            "rescon_na_usage",
            8,
            progs::usage::SIZE,
            opts.max_containers.max(1),
        ))?;
        let credit = map(plain(
            MapType::LruHash,
            "rescon_na_cred",
            4,
            8,
            opts.max_threads.max(16),
        ))?;
        let cfg = map(plain(MapType::Array, "rescon_na_cfg", 4, 8, 1))?;
        let owner = map(MapSpec {
            kind: MapType::SkStorage,
            key: 4,
            value: 8,
            max_entries: 0,
            flags: sys::F_NO_PREALLOC | sys::F_CLONE,
            name: "rescon_na_owner",
            btf: Some((btf_fd.as_fd(), btf::INT_ID, btf::U64_ID)),
        })?;
        let mut acct = NetAccounting {
            state,
            totals,
            owner,
            usage,
            credit,
            cfg,
            _btf: btf_fd,
            progs: Vec::new(),
        };
        acct.watch_process(opts.credit_process.unwrap_or(0))
            .map_err(|e| Unavailable::io("configuring", e))?;
        acct.attach_all(&h)?;
        tracing::info!(programs = acct.progs.len(), "kernel network accounting on");
        Ok(acct)
    }

    fn maps(&self) -> Maps<'_> {
        Maps {
            state: self.state.as_fd(),
            totals: self.totals.as_fd(),
            owner: self.owner.as_fd(),
            usage: self.usage.as_fd(),
            credit: self.credit.as_fd(),
            cfg: self.cfg.as_fd(),
        }
    }

    /// Loads and attaches, softirq timing first, so that the others find it on.
    fn attach_all(&mut self, h: &Hooks) -> Result<(), Unavailable> {
        let m = self.maps();
        let todo: Vec<(&'static str, Vec<crate::ebpf::asm::Insn>, Target)> = vec![
            (
                "softirq_entry",
                progs::softirq_entry(&m),
                Target::Raw(c"softirq_entry"),
            ),
            (
                "softirq_exit",
                progs::softirq_exit(&m),
                Target::Raw(c"softirq_exit"),
            ),
            ("napi_poll", progs::napi_poll(&m), Target::Raw(c"napi_poll")),
            (
                "rx_skb",
                progs::rx_skb(&m),
                Target::Raw(c"netif_receive_skb"),
            ),
            (
                "tcp_probe",
                progs::tcp_probe(&m, h.skb),
                Target::Btf(h.tcp_probe),
            ),
            (
                "tx_skb",
                progs::tx_skb(&m, h.skb),
                Target::Btf(h.start_xmit),
            ),
        ];
        let mut done = Vec::new();
        for (name, insns, target) in todo {
            let (kind, attach, btf_id, tp) = match target {
                Target::Raw(n) => (ProgType::RawTracepoint, None, 0, Some(n)),
                Target::Btf(id) => (ProgType::Tracing, Some(AttachType::TraceRawTp), id, None),
            };
            let prog = sys::prog_load(&ProgSpec {
                kind,
                insns: &insns,
                name: &format!("rescon_{name}"),
                attach,
                attach_btf_id: btf_id,
            })
            .map_err(|e| Unavailable::io(format!("loading program {name}"), e))?;
            let link = sys::raw_tracepoint_open(prog.as_fd(), tp)
                .map_err(|e| Unavailable::io(format!("attaching program {name}"), e))?;
            done.push(Attached {
                name,
                prog,
                _link: link,
            });
        }
        self.progs = done;
        Ok(())
    }

    /// Charges socket `sock` (TCP; a listener's connections inherit it when accepted) to
    /// container `id`, replacing any owner it had.
    pub fn bind(&self, sock: &impl AsFd, id: ContainerId) -> io::Result<()> {
        let fd = sock.as_fd().as_raw_fd();
        self.owner
            .set(&fd.to_ne_bytes(), &id.get().to_ne_bytes(), sys::ANY)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("binding socket {fd} to container {id}: {e}"),
                )
            })
    }

    /// Leaves socket `sock` to nobody (its packets count as "other"). `false` if it had no
    /// owner.
    pub fn unbind(&self, sock: &impl AsFd) -> io::Result<bool> {
        self.owner.delete(&sock.as_fd().as_raw_fd().to_ne_bytes())
    }

    /// The container socket `sock` is charged to.
    pub fn owner(&self, sock: &impl AsFd) -> io::Result<Option<ContainerId>> {
        let v = self.owner.get(&sock.as_fd().as_raw_fd().to_ne_bytes())?;
        Ok(v.and_then(|v| {
            ContainerId::from_raw(u64::from_ne_bytes(v[..8].try_into().expect("8 bytes")))
        }))
    }

    /// Everything counted so far (cumulative; [`ledger::Ledger`] makes intervals of it).
    pub fn read(&self) -> io::Result<Counters> {
        let mut c = Counters::default();
        let entries = self.usage.read_all(false)?;
        for (k, v) in entries.iter() {
            let Some(id) =
                ContainerId::from_raw(u64::from_ne_bytes(k.try_into().expect("8 bytes")))
            else {
                continue;
            };
            c.containers
                .insert(id, SocketCounters::from_words(&self.usage.sum_u64s(v)));
        }
        if let Some(v) = self.totals.get(&0u32.to_ne_bytes())? {
            c.totals = Totals::from_words(&self.totals.sum_u64s(&v));
        }
        let credits = self.credit.read_all(false)?;
        for (k, v) in credits.iter() {
            let tid = u32::from_ne_bytes(k.try_into().expect("4 bytes"));
            c.credits.insert(tid, sum_words(v, 8, 1)[0]);
        }
        Ok(c)
    }

    /// Deletes container `id`'s counters (after its last [`read`](Self::read); call
    /// [`Ledger::forget`](ledger::Ledger::forget) too). Sockets still bound to it make a new
    /// entry from zero.
    pub fn forget(&self, id: ContainerId) -> io::Result<bool> {
        self.usage.delete(&id.get().to_ne_bytes())
    }

    /// Deletes a thread's credit (when it exits).
    pub fn forget_thread(&self, tid: u32) -> io::Result<bool> {
        self.credit.delete(&tid.to_ne_bytes())
    }

    /// Credits NET_RX interruptions to the threads of process `pid` from now on (0: none).
    pub fn watch_process(&self, pid: u32) -> io::Result<()> {
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&pid.to_ne_bytes());
        self.cfg.set(&0u32.to_ne_bytes(), &v, sys::ANY)
    }

    /// Runs and run time of each program, as the kernel counts them while statistics are on
    /// ([`RunStats::enable`]).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.progs
            .iter()
            .map(|p| {
                let s = sys::prog_run_stats(p.prog.as_fd()).unwrap_or_default();
                ProgramStats {
                    name: p.name,
                    runs: s.run_cnt,
                    run_ns: s.run_time_ns,
                }
            })
            .collect()
    }
}

/// Where a program attaches: a raw tracepoint by name, or a BTF tracepoint by the id of its
/// `btf_trace_<name>` type.
enum Target {
    Raw(&'static CStr),
    Btf(u32),
}

/// One program's runs, for measuring what the accounting costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    /// The program (`softirq_entry`, `softirq_exit`, `napi_poll`, `rx_skb`, `tcp_probe`,
    /// `tx_skb`).
    pub name: &'static str,
    /// Times it ran.
    pub runs: u64,
    /// Time it ran, in total (the program only, not the trampoline that calls it).
    pub run_ns: u64,
}

/// The kernel's run-time statistics of every BPF program, on while this is alive (it costs
/// two clock reads per program run, so only for measuring).
#[derive(Debug)]
pub struct RunStats {
    /// Statistics stay on while this is open.
    _on: OwnedFd,
}

impl RunStats {
    /// Turns the statistics on (root).
    pub fn enable() -> io::Result<RunStats> {
        sys::enable_stats().map(|fd| RunStats { _on: fd })
    }
}

/// The kernel's cookie of a socket: its id in `sock_diag` and in BPF programs.
pub fn socket_cookie(sock: &impl AsFd) -> io::Result<u64> {
    sys::socket_cookie(sock.as_fd())
}

/// Bounds the receive window TCP socket `sock` advertises to `bytes` (a listener passes it
/// to the connections it accepts): how a class held back by its CPU limit stops its senders.
///
/// A class over its cap has its reads wait; its connections' receive windows then close, and
/// their senders stop, only once the data in flight fills them. With the kernel's default
/// window that takes thousands of small packets, each received, queued, and at last
/// collapsed or dropped in softirq, while the sender keeps sending; bounded to a few
/// kilobytes, the window closes within a few dozen packets of the reads stopping, and opens
/// again (the kernel sends a window update) when they resume. A bound of tens of kilobytes
/// costs a LAN connection little throughput (a window per round trip of a few hundred
/// microseconds). The kernel raises bounds below about 1 KB to that.
pub fn clamp_window(sock: &impl AsFd, bytes: u32) -> io::Result<()> {
    sys::set_window_clamp(sock.as_fd(), bytes).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("bounding the receive window to {bytes} bytes: {e}"),
        )
    })
}
