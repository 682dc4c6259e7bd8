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
//! - **Packets and bytes** by owner: the `tcp_probe` tracepoint (an established socket
//!   receives a segment) counts what is received, `net_dev_start_xmit` what is sent. A
//!   socket's storage holds its owner's *slot*, a small index into a per-CPU array of
//!   counters: no clock and no hash per packet, and one storage lookup for a socket nobody
//!   bound.
//! - **NET_RX softirq time** is timed per run by the `softirq_entry` and `softirq_exit`
//!   tracepoints (driver, GRO, IP, socket lookup, TCP: all of it) and apportioned by
//!   packets: see [`ledger`], which turns cumulative reads into per-interval charges. The
//!   denominator is every packet the stack received (the kernel's own count,
//!   `/proc/net/softnet_stat`), so other sockets' traffic keeps its share; packets dropped
//!   early for a container (the listener groups' edge filter and black holes) count as its
//!   packets.
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
//! Per packet received: one tracepoint program, one socket-storage lookup and two inlined
//! per-CPU array lookups, no clock; per packet sent: one program, one storage lookup and
//! one array lookup; a socket nobody bound stops after its storage lookup. Per NET_RX
//! softirq run (on a NIC, one NAPI poll of up to 64 frames; on loopback, where receive runs
//! in the sender at the end of each send, about one per packet): two programs and two clock
//! reads, and for a thread of the watched process one hash lookup. Every softirq of another
//! vector (timers, RCU) runs the two programs to their first test.
//!
//! Measured with `rescon-bench netacct` on the namespace test bed (the kernel's program
//! statistics, which leave out the tracepoint's dispatch and add their own two clock reads
//! to each run): before this design (a per-CPU hash by container id, and each skb's receive
//! timed apart in segments by two more programs, four clock reads per loopback packet),
//! 262 ns of programs per packet counted, `tcp_probe` 108 and `tx_skb` 113 ns a run; now
//! 83-85 ns per packet counted, `tcp_probe` 61-62 and `tx_skb` 63-64 ns a run, and
//! `softirq_entry`/`softirq_exit` 105-117/205-221 ns a run (the load differs: the attacker
//! now sends a packet per write, about 0.07 softirq runs per packet counted against 0.35).
//! A [`read`](NetAccounting::read) costs one system call per container counted, a few more,
//! and a read of `/proc/net/softnet_stat`.
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
use std::collections::HashMap;
use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;

/// Settings of [`NetAccounting::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Containers counted at once (slots of the per-CPU usage array, 40 bytes per CPU
    /// each; default 4,096). [`NetAccounting::bind`] to one more container fails until
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
            max_containers: 4_096,
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
    slots: Mutex<Slots>,
    softnet: Mutex<Softnet>,
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
            MapType::PercpuArray,
            "rescon_na_usage",
            4,
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
            slots: Mutex::new(Slots::new(opts.max_containers.max(1))),
            softnet: Mutex::new(Softnet::default()),
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

    /// Loads and attaches, softirq timing first.
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
    /// container `id`, replacing any owner it had. The first socket of a container gives it
    /// a slot; fails if all [`Options::max_containers`] are taken.
    pub fn bind(&self, sock: &impl AsFd, id: ContainerId) -> io::Result<()> {
        let fd = sock.as_fd().as_raw_fd();
        let what = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("binding socket {fd} to container {id}: {e}"),
            )
        };
        let owner = {
            let mut slots = self.lock_slots();
            let (owner, fresh) = slots.assign(id).map_err(what)?;
            if fresh {
                // The slot's counters from zero, with its new generation, on every CPU.
                let mut v = vec![0u8; self.usage.value_buf_len()];
                let stride = (progs::usage::SIZE as usize).next_multiple_of(8);
                for cpu in v.chunks_mut(stride) {
                    cpu[..8].copy_from_slice(&u64::from(owner.generation).to_ne_bytes());
                }
                if let Err(e) = self.usage.set(&owner.slot.to_ne_bytes(), &v, sys::ANY) {
                    slots.release(id);
                    return Err(what(e));
                }
            }
            owner
        };
        self.owner
            .set(&fd.to_ne_bytes(), &owner.word().to_ne_bytes(), sys::ANY)
            .map_err(what)
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaves socket `sock` to nobody (its packets count as "other"). `false` if it had no
    /// owner.
    pub fn unbind(&self, sock: &impl AsFd) -> io::Result<bool> {
        self.owner.delete(&sock.as_fd().as_raw_fd().to_ne_bytes())
    }

    /// The container socket `sock` is charged to (`None` also when it was bound to a
    /// container since forgotten).
    pub fn owner(&self, sock: &impl AsFd) -> io::Result<Option<ContainerId>> {
        let v = self.owner.get(&sock.as_fd().as_raw_fd().to_ne_bytes())?;
        Ok(v.and_then(|v| {
            let w = u64::from_ne_bytes(v[..8].try_into().expect("8 bytes"));
            self.lock_slots().holder(Owner::from_word(w))
        }))
    }

    /// Everything counted so far (cumulative; [`ledger::Ledger`] makes intervals of it).
    pub fn read(&self) -> io::Result<Counters> {
        let mut c = Counters::default();
        let held: Vec<(ContainerId, Owner)> = self.lock_slots().held().collect();
        for (id, owner) in held {
            let Some(v) = self.usage.get(&owner.slot.to_ne_bytes())? else {
                continue;
            };
            let words = self.usage.sum_u64s(&v);
            // Each CPU's copy carries the generation: the sum is it times the copies.
            let copies = v.len() / (progs::usage::SIZE as usize).next_multiple_of(8);
            if words[0] != u64::from(owner.generation) * copies as u64 {
                continue; // given to another container meanwhile
            }
            c.containers
                .insert(id, SocketCounters::from_words(&words[1..]));
        }
        if let Some(v) = self.totals.get(&0u32.to_ne_bytes())? {
            c.totals = Totals::from_words(&self.totals.sum_u64s(&v));
        }
        c.totals.frames = self
            .softnet
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read()?;
        let credits = self.credit.read_all(false)?;
        for (k, v) in credits.iter() {
            let tid = u32::from_ne_bytes(k.try_into().expect("4 bytes"));
            c.credits.insert(tid, sum_words(v, 8, 1)[0]);
        }
        Ok(c)
    }

    /// Gives container `id`'s slot back (after its last [`read`](Self::read); call
    /// [`Ledger::forget`](ledger::Ledger::forget) too). Sockets still bound to it are no
    /// longer read (once the slot is given to another container, their packets count as
    /// lost), until bound again, which counts from zero. `false` if it had no slot.
    pub fn forget(&self, id: ContainerId) -> io::Result<bool> {
        Ok(self.lock_slots().release(id))
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
    /// The program (`softirq_entry`, `softirq_exit`, `tcp_probe`, `tx_skb`).
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

/// A socket's owner as its storage holds it: a slot of the usage array and the generation
/// the slot had when the socket was bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    slot: u32,
    generation: u32,
}

impl Owner {
    /// The storage's word: the generation in the high half, the slot in the low one (the
    /// programs read it so).
    fn word(self) -> u64 {
        u64::from(self.generation) << 32 | u64::from(self.slot)
    }

    fn from_word(w: u64) -> Owner {
        Owner {
            slot: w as u32,
            generation: (w >> 32) as u32,
        }
    }
}

/// Which container holds which slot of the usage array. Pure bookkeeping: [`NetAccounting`]
/// writes the kernel's side.
#[derive(Debug)]
struct Slots {
    by_id: HashMap<ContainerId, Owner>,
    /// By slot: the holder and the generation it was given with.
    holders: Vec<Option<(ContainerId, u32)>>,
    free: Vec<u32>,
    /// The last generation given (generations start at 1: a slot never given has 0).
    generation: u32,
}

impl Slots {
    fn new(max: u32) -> Slots {
        Slots {
            by_id: HashMap::new(),
            holders: vec![None; max as usize],
            // Lowest first: reads stay within the slots used.
            free: (0..max).rev().collect(),
            generation: 0,
        }
    }

    /// `id`'s slot, and whether it was just given (its counters must start from zero).
    fn assign(&mut self, id: ContainerId) -> io::Result<(Owner, bool)> {
        if let Some(o) = self.by_id.get(&id) {
            return Ok((*o, false));
        }
        let Some(slot) = self.free.pop() else {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "all {} containers' slots are taken: forget released containers, or raise max_containers",
                    self.holders.len()
                ),
            ));
        };
        // Wraps after 2^32 - 1 reuses; 0 is skipped.
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        let o = Owner {
            slot,
            generation: self.generation,
        };
        self.by_id.insert(id, o);
        self.holders[slot as usize] = Some((id, o.generation));
        Ok((o, true))
    }

    /// Gives `id`'s slot back; `false` if it had none.
    fn release(&mut self, id: ContainerId) -> bool {
        let Some(o) = self.by_id.remove(&id) else {
            return false;
        };
        self.holders[o.slot as usize] = None;
        self.free.push(o.slot);
        true
    }

    /// The container a storage word names, if its slot is still held with its generation.
    fn holder(&self, o: Owner) -> Option<ContainerId> {
        match self.holders.get(o.slot as usize) {
            Some(Some((id, g))) if *g == o.generation => Some(*id),
            _ => None,
        }
    }

    fn held(&self) -> impl Iterator<Item = (ContainerId, Owner)> + '_ {
        self.by_id.iter().map(|(id, o)| (*id, *o))
    }
}

/// The stack's received packets, all CPUs, from `/proc/net/softnet_stat` (its counters are
/// 32 bits per CPU: each CPU's is followed across wraps).
#[derive(Debug, Default)]
struct Softnet {
    last: Vec<u32>,
    total: u64,
}

impl Softnet {
    fn read(&mut self) -> io::Result<u64> {
        let text = std::fs::read_to_string("/proc/net/softnet_stat")?;
        let now = parse_softnet_processed(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/net/softnet_stat: unexpected format",
            )
        })?;
        Ok(self.advance(&now))
    }

    /// Adds each CPU's packets since the last reading (the first reading counts from
    /// zero).
    fn advance(&mut self, now: &[u32]) -> u64 {
        for (i, n) in now.iter().enumerate() {
            let last = self.last.get(i).copied().unwrap_or(0);
            self.total += u64::from(n.wrapping_sub(last));
        }
        self.last = now.to_vec();
        self.total
    }
}

/// The first column of `/proc/net/softnet_stat` (one line per online CPU, hexadecimal):
/// the packets the stack received on each CPU (`softnet_data.processed`, counted in
/// `__netif_receive_skb_core`: every skb, every protocol and namespace, after GRO).
fn parse_softnet_processed(text: &str) -> Option<Vec<u32>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| u32::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> ContainerId {
        ContainerId::from_raw(n).unwrap()
    }

    #[test]
    fn softnet_lines_and_wraps() {
        let text = "292aa6f6 00000000 00000079 00000000\n\
                    00000010 00000000 0000008b 00000000\n";
        assert_eq!(parse_softnet_processed(text), Some(vec![0x292a_a6f6, 0x10]));
        assert_eq!(parse_softnet_processed("zz 0\n"), None);
        let mut s = Softnet::default();
        assert_eq!(s.advance(&[10, 20]), 30);
        // CPU 0 passes u32::MAX and wraps to 4: counted across the wrap.
        assert_eq!(s.advance(&[u32::MAX, 25]), 30 + (u32::MAX - 10) as u64 + 5);
        assert_eq!(s.advance(&[4, 25]), 30 + (u32::MAX - 10) as u64 + 5 + 5);
    }

    #[test]
    fn slots_are_reused_with_a_new_generation() {
        let mut s = Slots::new(2);
        let (a, fresh) = s.assign(id(1)).unwrap();
        assert!(fresh);
        assert_eq!(s.assign(id(1)).unwrap(), (a, false));
        let (b, _) = s.assign(id(2)).unwrap();
        assert_ne!(a.slot, b.slot);
        let e = s.assign(id(3)).unwrap_err();
        assert!(e.to_string().contains("all 2 containers"), "{e}");
        assert_eq!(s.holder(a), Some(id(1)));
        assert!(s.release(id(1)));
        assert!(!s.release(id(1)));
        assert_eq!(
            s.holder(a),
            None,
            "a forgotten container's sockets name nobody"
        );
        let (c, fresh) = s.assign(id(3)).unwrap();
        assert!(fresh);
        assert_eq!(c.slot, a.slot, "the slot is reused");
        assert_ne!(c.generation, a.generation);
        assert_eq!(s.holder(a), None, "the old generation still names nobody");
        assert_eq!(s.holder(c), Some(id(3)));
        assert_eq!(Owner::from_word(c.word()), c);
        assert_eq!(c.word() >> 32, u64::from(c.generation));
    }
}
