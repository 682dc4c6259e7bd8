//! The accounting programs, assembled by hand (see [`ebpf`](crate::ebpf) for why), and the
//! layouts of the maps they share with user space.
//!
//! All are tracepoint programs: raw tracepoints where no pointer is followed, BTF
//! tracepoints (`tp_btf`) where the socket or the skb is read. (fentry/fexit on
//! `tcp_v4_do_rcv` would give the socket too, but loading them is refused with `EPERM` on
//! the machines this was built on, while BTF tracepoints of the same program type load; and
//! tracepoints do not depend on what the compiler inlined.)
//!
//! | program | tracepoint | does |
//! |---|---|---|
//! | `softirq_entry` | `irq:softirq_entry` | NET_RX run starts: note the time |
//! | `rx_skb` | `net:netif_receive_skb` | an skb enters the stack in NET_RX: close the CPU's open segment, open one for this skb |
//! | `tcp_probe` | `tcp:tcp_probe` (`tp_btf`) | an established socket receives a segment: count it and its bytes to the socket's owner, and give the open segment that owner |
//! | `napi_poll` | `napi:napi_poll` | a NAPI poll ends: count its frames, close the open segment |
//! | `softirq_exit` | `irq:softirq_exit` | NET_RX run ends: close the open segment, add the run's time to the totals and to the interrupted thread's credit if it belongs to the watched process |
//! | `tx_skb` | `net:net_dev_start_xmit` (`tp_btf`) | a device sends an skb: count it and its bytes from the TCP header on to its socket's owner |
//!
//! **Segments.** Within a NET_RX run, each CPU's time is cut at every skb that enters the
//! stack and at the end of every NAPI poll. A segment that runs from one skb's entry to the
//! next cut holds that skb's whole receive (IP, socket lookup, TCP, the wake-up of the
//! reader, the ACK it sends); when `tcp_probe` names its socket, the segment is charged to
//! the socket's owner (or to "other" for a socket nobody bound). Segments whose socket
//! stays unknown (a listener's SYN, a handshake's ACK, a packet a filter dropped) and the
//! time outside segments (the driver, XDP, GRO) are left to be apportioned by
//! [`ledger`](super::ledger).
//!
//! A socket's owner is the container id in its socket storage ([`Maps::owner`]); a
//! listener's storage is copied to the connections it accepts (`BPF_F_CLONE`). NET_RX
//! softirq is known from the per-CPU start time, nonzero only between `softirq_entry` and
//! `softirq_exit` of vector 3: receive work run in a reader's context (busy polling, the
//! socket backlog at `release_sock`) is already charged to the reader and is not timed.

use crate::ebpf::asm::Size::{DW, H, W};
use crate::ebpf::asm::{
    Asm, Cond, Helper, Insn, Label, R0, R1, R2, R3, R4, R6, R7, R8, R9, R10, Reg, Src,
};
use std::os::fd::BorrowedFd;

/// `NET_RX_SOFTIRQ` (`include/linux/interrupt.h`).
pub(crate) const NET_RX_SOFTIRQ: i32 = 3;

/// The owner of a segment whose socket nobody bound.
const OTHER: i32 = -1;

/// Per-CPU state, one entry: offsets of its 64-bit fields.
pub(crate) mod state {
    /// Time the NET_RX softirq run on this CPU started; 0 outside one.
    pub const NETRX_START: i16 = 0;
    /// Time the open segment started; 0 for none.
    pub const SEG_START: i16 = 8;
    /// The open segment's owner: a container id, all ones for "other", 0 for unknown.
    pub const SEG_OWNER: i16 = 16;
    pub const SIZE: u32 = 24;
}

/// Per-container counters (per CPU): offsets of the 64-bit fields of a usage value.
pub(crate) mod usage {
    pub const RX_PKTS: i16 = 0;
    pub const RX_BYTES: i16 = 8;
    pub const TX_PKTS: i16 = 16;
    pub const TX_BYTES: i16 = 24;
    /// Packets received in NET_RX softirq.
    pub const SOFTIRQ_PKTS: i16 = 32;
    /// Time of the segments charged to the container.
    pub const SOFTIRQ_NS: i16 = 40;
    pub const SIZE: u32 = 48;
}

/// Machine-wide counters (per CPU), one entry: offsets of its 64-bit fields.
pub(crate) mod totals {
    /// Time in NET_RX softirq.
    pub const NETRX_NS: i16 = 0;
    /// NET_RX softirq runs.
    pub const NETRX_RUNS: i16 = 8;
    /// Frames NAPI polls handled in NET_RX softirq.
    pub const FRAMES: i16 = 16;
    /// Packets received by sockets without an owner.
    pub const OTHER_PKTS: i16 = 24;
    /// Time of their segments.
    pub const OTHER_NS: i16 = 32;
    /// Packets of an owner that could not be counted (the usage map was full).
    pub const LOST: i16 = 40;
    /// NET_RX softirq time credited to the watched process's threads.
    pub const CREDITED_NS: i16 = 48;
    pub const SIZE: u32 = 56;
}

/// The maps a program refers to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Maps<'a> {
    /// Per-CPU array, one [`state`] entry.
    pub state: BorrowedFd<'a>,
    /// Per-CPU array, one [`totals`] entry.
    pub totals: BorrowedFd<'a>,
    /// Socket storage: the owner's container id (u64).
    pub owner: BorrowedFd<'a>,
    /// Per-CPU hash: container id (u64) to [`usage`] counters.
    pub usage: BorrowedFd<'a>,
    /// Hash: thread id (u32) to NET_RX softirq time credited to it (u64).
    pub credit: BorrowedFd<'a>,
    /// Array, one entry: the watched process id (u32; 0 for none).
    pub cfg: BorrowedFd<'a>,
}

/// Field offsets of this kernel's `struct sk_buff`, from its BTF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SkbFields {
    /// `len` (u32).
    pub len: i16,
    /// `sk` (a pointer).
    pub sk: i16,
    /// `transport_header` (u16, from `head`).
    pub transport_header: i16,
    /// `mac_header` (u16, from `head`).
    pub mac_header: i16,
}

/// `r9 = &state` (this CPU's), or `goto out`.
fn load_state(a: &mut Asm, m: &Maps<'_>, out: Label) {
    lookup_zero(a, m.state, out);
    a.mov(R9, R0);
}

/// `r0 = lookup(map, &0u32)`, or `goto out`. Uses the stack word at -4.
fn lookup_zero(a: &mut Asm, map: BorrowedFd<'_>, out: Label) {
    a.st_imm(W, R10, -4, 0)
        .ld_map(R1, map)
        .mov(R2, R10)
        .add_imm(R2, -4)
        .call(Helper::MapLookupElem)
        .jmp(Cond::Eq, R0, Src::Imm(0), out);
}

/// `r0 = owner storage of socket r6` (a pointer to its container id), or `goto none`.
fn load_owner(a: &mut Asm, m: &Maps<'_>, none: Label) {
    a.ld_map(R1, m.owner)
        .mov(R2, R6)
        .mov_imm(R3, 0)
        .mov_imm(R4, 0)
        .call(Helper::SkStorageGet)
        .jmp(Cond::Eq, R0, Src::Imm(0), none);
}

/// With `r0` pointing at a container id: `r0 = &usage[id]` (this CPU's copy), created
/// zeroed if absent; if the map is full, counts one lost packet and `goto out`. Uses the
/// stack from -64 to -9.
fn load_usage(a: &mut Asm, m: &Maps<'_>, out: Label) {
    let found = a.label();
    let lost = a.label();
    a.ldx(DW, R1, R0, 0)
        .stx(DW, R10, -16, R1)
        .ld_map(R1, m.usage)
        .mov(R2, R10)
        .add_imm(R2, -16)
        .call(Helper::MapLookupElem)
        .jmp(Cond::Ne, R0, Src::Imm(0), found);
    for i in 0..(usage::SIZE as i16 / 8) {
        a.st_imm(DW, R10, -64 + 8 * i, 0);
    }
    a.ld_map(R1, m.usage)
        .mov(R2, R10)
        .add_imm(R2, -16)
        .mov(R3, R10)
        .add_imm(R3, -64)
        .mov_imm(R4, 1) // BPF_NOEXIST: another CPU may have made it meanwhile
        .call(Helper::MapUpdateElem)
        .ld_map(R1, m.usage)
        .mov(R2, R10)
        .add_imm(R2, -16)
        .call(Helper::MapLookupElem)
        .jmp(Cond::Ne, R0, Src::Imm(0), found);
    a.place(lost);
    lookup_zero(a, m.totals, out);
    a.mov_imm(R1, 1)
        .atomic_add(DW, R0, totals::LOST, R1)
        .ja(out);
    a.place(found);
}

/// `*(u64 *)(base + off) += src`, not atomic: for per-CPU values in softirq, which nothing
/// else on this CPU runs into. Clobbers `r1`.
fn add(a: &mut Asm, base: Reg, off: i16, src: Reg) {
    a.ldx(DW, R1, base, off).add(R1, src).stx(DW, base, off, R1);
}

/// Same, adding a constant.
fn add_imm(a: &mut Asm, base: Reg, off: i16, k: i32) {
    a.ldx(DW, R1, base, off)
        .add_imm(R1, k)
        .stx(DW, base, off, R1);
}

fn epilogue(a: &mut Asm, out: Label) {
    a.place(out);
    a.mov_imm(R0, 0).exit();
}

/// With `r9` = state and `r6` = now: charges the open segment to its owner, if it has one.
/// Clobbers `r0`-`r5`, `r7`, `r8`.
fn close_segment(a: &mut Asm, m: &Maps<'_>) {
    let done = a.label();
    let other = a.label();
    a.ldx(DW, R1, R9, state::SEG_START)
        .jmp(Cond::Eq, R1, Src::Imm(0), done)
        .mov(R7, R6)
        .sub(R7, R1)
        .ldx(DW, R8, R9, state::SEG_OWNER)
        .jmp(Cond::Eq, R8, Src::Imm(0), done)
        .jmp(Cond::Eq, R8, Src::Imm(OTHER), other)
        .stx(DW, R10, -16, R8)
        .ld_map(R1, m.usage)
        .mov(R2, R10)
        .add_imm(R2, -16)
        .call(Helper::MapLookupElem)
        // Forgotten since its packet was counted: the time is nobody's.
        .jmp(Cond::Eq, R0, Src::Imm(0), other);
    add(a, R0, usage::SOFTIRQ_NS, R7);
    a.ja(done);
    a.place(other);
    lookup_zero(a, m.totals, done);
    add(a, R0, totals::OTHER_NS, R7);
    a.place(done);
}

/// With `r9` = state: `r6 = now`, then ends the open segment and opens (`open`) or not a
/// new one.
fn cut(a: &mut Asm, m: &Maps<'_>, open: bool) {
    a.call(Helper::KtimeGetNs).mov(R6, R0);
    close_segment(a, m);
    if open {
        a.stx(DW, R9, state::SEG_START, R6);
    } else {
        a.st_imm(DW, R9, state::SEG_START, 0);
    }
    a.st_imm(DW, R9, state::SEG_OWNER, 0);
}

/// `r9 = &state`, or `goto out` unless this CPU is in a NET_RX softirq run.
fn in_net_rx(a: &mut Asm, m: &Maps<'_>, out: Label) {
    load_state(a, m, out);
    a.ldx(DW, R1, R9, state::NETRX_START)
        .jmp(Cond::Eq, R1, Src::Imm(0), out);
}

/// Raw tracepoint `softirq_entry(unsigned int vec_nr)`.
pub(crate) fn softirq_entry(m: &Maps<'_>) -> Vec<Insn> {
    let mut a = Asm::new();
    let out = a.label();
    a.ldx(DW, R2, R1, 0)
        .jmp32(Cond::Ne, R2, Src::Imm(NET_RX_SOFTIRQ), out);
    load_state(&mut a, m, out);
    a.call(Helper::KtimeGetNs)
        .stx(DW, R9, state::NETRX_START, R0)
        .st_imm(DW, R9, state::SEG_START, 0)
        .st_imm(DW, R9, state::SEG_OWNER, 0);
    epilogue(&mut a, out);
    a.finish()
}

/// Raw tracepoint `softirq_exit(unsigned int vec_nr)`: the last segment, the run's time into
/// the totals, and into the interrupted thread's credit if it belongs to the watched
/// process.
pub(crate) fn softirq_exit(m: &Maps<'_>) -> Vec<Insn> {
    let mut a = Asm::new();
    let out = a.label();
    let credited = a.label();
    a.ldx(DW, R2, R1, 0)
        .jmp32(Cond::Ne, R2, Src::Imm(NET_RX_SOFTIRQ), out);
    in_net_rx(&mut a, m, out);
    cut(&mut a, m, false);
    // r6 = the run's time.
    a.ldx(DW, R1, R9, state::NETRX_START)
        .st_imm(DW, R9, state::NETRX_START, 0)
        .sub(R6, R1);
    lookup_zero(&mut a, m.totals, out);
    a.mov(R8, R0);
    add(&mut a, R8, totals::NETRX_NS, R6);
    add_imm(&mut a, R8, totals::NETRX_RUNS, 1);
    // The interrupted thread: current, unless the softirq runs in ksoftirqd (then it is
    // ksoftirqd, never ours) or in the idle task (pid 0).
    a.call(Helper::GetCurrentPidTgid).mov(R7, R0);
    lookup_zero(&mut a, m.cfg, out);
    a.ldx(W, R1, R0, 0)
        .jmp(Cond::Eq, R1, Src::Imm(0), out)
        .mov(R2, R7)
        .rsh_imm(R2, 32)
        .jmp(Cond::Ne, R1, Src::Reg(R2), out)
        .stx(W, R10, -8, R7)
        .ld_map(R1, m.credit)
        .mov(R2, R10)
        .add_imm(R2, -8)
        .call(Helper::MapLookupElem);
    let fresh = a.label();
    a.jmp(Cond::Eq, R0, Src::Imm(0), fresh)
        .atomic_add(DW, R0, 0, R6)
        .ja(credited);
    a.place(fresh);
    a.stx(DW, R10, -16, R6)
        .ld_map(R1, m.credit)
        .mov(R2, R10)
        .add_imm(R2, -8)
        .mov(R3, R10)
        .add_imm(R3, -16)
        .mov_imm(R4, 0)
        .call(Helper::MapUpdateElem);
    a.place(credited);
    add(&mut a, R8, totals::CREDITED_NS, R6);
    epilogue(&mut a, out);
    a.finish()
}

/// Raw tracepoint `netif_receive_skb(struct sk_buff *skb)`: an skb enters the stack.
pub(crate) fn rx_skb(m: &Maps<'_>) -> Vec<Insn> {
    let mut a = Asm::new();
    let out = a.label();
    in_net_rx(&mut a, m, out);
    cut(&mut a, m, true);
    epilogue(&mut a, out);
    a.finish()
}

/// Raw tracepoint `napi_poll(struct napi_struct *napi, int work, int budget)`: frames
/// handled (in NET_RX softirq only: busy polling runs it in a reader too), and the end of
/// the poll's last segment.
pub(crate) fn napi_poll(m: &Maps<'_>) -> Vec<Insn> {
    let mut a = Asm::new();
    let out = a.label();
    a.ldx(DW, R1, R1, 8).mov32(R1, R1).stx(DW, R10, -24, R1);
    in_net_rx(&mut a, m, out);
    cut(&mut a, m, false);
    lookup_zero(&mut a, m.totals, out);
    a.ldx(DW, R2, R10, -24);
    add(&mut a, R0, totals::FRAMES, R2);
    epilogue(&mut a, out);
    a.finish()
}

/// BTF tracepoint `tcp_probe(struct sock *sk, struct sk_buff *skb)`, at the start of
/// `tcp_rcv_established`: a segment for an established socket.
pub(crate) fn tcp_probe(m: &Maps<'_>, skb: SkbFields) -> Vec<Insn> {
    let mut a = Asm::new();
    let out = a.label();
    let nobody = a.label();
    let process = a.label();
    a.ldx(DW, R6, R1, 0)
        .ldx(DW, R7, R1, 8)
        .ldx(W, R8, R7, skb.len);
    load_state(&mut a, m, out);
    load_owner(&mut a, m, nobody);
    // r7 = the owner's id, r0 = its usage.
    a.ldx(DW, R7, R0, 0);
    load_usage(&mut a, m, out);
    a.ldx(DW, R1, R9, state::NETRX_START)
        .jmp(Cond::Eq, R1, Src::Imm(0), process);
    // In NET_RX softirq: nothing else on this CPU runs into this CPU's values.
    add_imm(&mut a, R0, usage::RX_PKTS, 1);
    add(&mut a, R0, usage::RX_BYTES, R8);
    add_imm(&mut a, R0, usage::SOFTIRQ_PKTS, 1);
    a.ldx(DW, R1, R9, state::SEG_START)
        .jmp(Cond::Eq, R1, Src::Imm(0), out)
        .stx(DW, R9, state::SEG_OWNER, R7)
        .ja(out);
    // In a reader's context (its backlog, at release_sock): it may be preempted and others
    // run this program on this CPU meanwhile: atomic adds.
    a.place(process);
    a.mov_imm(R1, 1)
        .atomic_add(DW, R0, usage::RX_PKTS, R1)
        .atomic_add(DW, R0, usage::RX_BYTES, R8)
        .ja(out);
    // Nobody's socket: counted apart, so that the containers' share of the shared time is
    // not inflated, and its segment is "other".
    a.place(nobody);
    lookup_zero(&mut a, m.totals, out);
    a.mov_imm(R1, 1)
        .atomic_add(DW, R0, totals::OTHER_PKTS, R1)
        .ldx(DW, R1, R9, state::NETRX_START)
        .jmp(Cond::Eq, R1, Src::Imm(0), out)
        .ldx(DW, R1, R9, state::SEG_START)
        .jmp(Cond::Eq, R1, Src::Imm(0), out)
        .mov_imm(R1, OTHER)
        .stx(DW, R9, state::SEG_OWNER, R1);
    epilogue(&mut a, out);
    a.finish()
}

/// BTF tracepoint `net_dev_start_xmit(const struct sk_buff *skb, const struct net_device
/// *dev)`: a device sends an skb (after segmentation: one per packet on the wire, except
/// for devices that take TSO aggregates, such as loopback).
pub(crate) fn tx_skb(m: &Maps<'_>, skb: SkbFields) -> Vec<Insn> {
    let mut a = Asm::new();
    let out = a.label();
    let whole = a.label();
    a.ldx(DW, R7, R1, 0)
        .ldx(DW, R6, R7, skb.sk)
        .jmp(Cond::Eq, R6, Src::Imm(0), out)
        // Bytes from the TCP header on: the length less the link and IP headers (the
        // data starts at the link header here).
        .ldx(W, R8, R7, skb.len)
        .ldx(H, R1, R7, skb.transport_header)
        .ldx(H, R2, R7, skb.mac_header)
        .jmp(Cond::Gt, R2, Src::Reg(R1), whole)
        .sub(R1, R2)
        .jmp(Cond::Gt, R1, Src::Reg(R8), whole)
        .sub(R8, R1);
    a.place(whole);
    load_owner(&mut a, m, out);
    load_usage(&mut a, m, out);
    a.mov_imm(R1, 1)
        .atomic_add(DW, R0, usage::TX_PKTS, R1)
        .atomic_add(DW, R0, usage::TX_BYTES, R8);
    epilogue(&mut a, out);
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebpf::asm::{CALL, JMP, JMP32, check_shape};
    use std::os::fd::{AsFd, AsRawFd};

    /// Descriptors of /dev/null: the programs only embed the numbers.
    fn with_maps<T>(f: impl FnOnce(&Maps<'_>) -> T) -> T {
        let files: Vec<std::fs::File> = (0..6)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let m = Maps {
            state: files[0].as_fd(),
            totals: files[1].as_fd(),
            owner: files[2].as_fd(),
            usage: files[3].as_fd(),
            credit: files[4].as_fd(),
            cfg: files[5].as_fd(),
        };
        f(&m)
    }

    const SKB: SkbFields = SkbFields {
        len: 112,
        sk: 24,
        transport_header: 182,
        mac_header: 186,
    };

    fn calls(p: &[Insn]) -> Vec<i32> {
        p.iter()
            .filter(|i| i.code == JMP | CALL)
            .map(|i| i.imm)
            .collect()
    }

    /// The map descriptors a program embeds, in order of first use.
    fn maps_used(p: &[Insn]) -> Vec<i32> {
        let mut v = Vec::new();
        for i in p.iter().filter(|i| i.code == 0x18 && i.src() == 1) {
            if !v.contains(&i.imm) {
                v.push(i.imm);
            }
        }
        v
    }

    #[test]
    fn every_program_is_well_formed() {
        with_maps(|m| {
            for (name, p) in [
                ("softirq_entry", softirq_entry(m)),
                ("softirq_exit", softirq_exit(m)),
                ("rx_skb", rx_skb(m)),
                ("napi_poll", napi_poll(m)),
                ("tcp_probe", tcp_probe(m, SKB)),
                ("tx_skb", tx_skb(m, SKB)),
            ] {
                check_shape(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(p.len() < 200, "{name}: {} instructions", p.len());
            }
        });
    }

    #[test]
    fn socket_programs_read_the_fields_btf_gave() {
        with_maps(|m| {
            let probe = tcp_probe(m, SKB);
            // skb->len (32 bits) from the second argument.
            assert!(probe.iter().any(|i| i.code == 0x61 && i.off == SKB.len));
            let tx = tx_skb(m, SKB);
            assert!(tx.iter().any(|i| i.code == 0x79 && i.off == SKB.sk));
            for off in [SKB.transport_header, SKB.mac_header] {
                assert!(tx.iter().any(|i| i.code == 0x69 && i.off == off));
            }
            // The socket's owner, then its usage entry (lookup, create, lookup again).
            let want_tx = vec![
                Helper::SkStorageGet as i32,
                Helper::MapLookupElem as i32,
                Helper::MapUpdateElem as i32,
                Helper::MapLookupElem as i32,
                Helper::MapLookupElem as i32, // the lost-packet counter
            ];
            assert_eq!(calls(&tx), want_tx);
            let fds: Vec<i32> = [m.owner, m.usage, m.totals]
                .iter()
                .map(|f| f.as_raw_fd())
                .collect();
            assert_eq!(maps_used(&tx), fds);
        });
    }

    #[test]
    fn segments_are_cut_with_the_time_and_charged_to_their_owner() {
        with_maps(|m| {
            for (name, p) in [
                ("rx_skb", rx_skb(m)),
                ("napi_poll", napi_poll(m)),
                ("softirq_exit", softirq_exit(m)),
            ] {
                let c = calls(&p);
                // The state, the time, then the owner's usage entry.
                assert_eq!(
                    c[..3],
                    [
                        Helper::MapLookupElem as i32,
                        Helper::KtimeGetNs as i32,
                        Helper::MapLookupElem as i32
                    ],
                    "{name}"
                );
                assert!(maps_used(&p).contains(&m.usage.as_raw_fd()), "{name}");
            }
            // rx_skb opens a segment (stores the time), napi_poll closes it (stores zero).
            let stores_time = |p: &[Insn]| {
                p.iter()
                    .any(|i| i.code == 0x7b && i.off == state::SEG_START && i.dst() == 9)
            };
            assert!(stores_time(&rx_skb(m)));
            assert!(!stores_time(&napi_poll(m)));
        });
    }

    #[test]
    fn softirq_programs_filter_net_rx_and_credit_the_watched_process() {
        with_maps(|m| {
            for p in [softirq_entry(m), softirq_exit(m)] {
                // The first test is vector == NET_RX, in 32 bits.
                let j = p.iter().find(|i| i.is_jump()).unwrap();
                assert_eq!((j.class(), j.imm), (JMP32, NET_RX_SOFTIRQ));
            }
            let exit = softirq_exit(m);
            assert!(calls(&exit).contains(&(Helper::GetCurrentPidTgid as i32)));
            assert!(maps_used(&exit).contains(&m.credit.as_raw_fd()));
            assert!(maps_used(&exit).contains(&m.cfg.as_raw_fd()));
            // The tgid is the top half of get_current_pid_tgid.
            assert!(exit.iter().any(|i| i.code == 0x77 && i.imm == 32));
        });
    }
}
