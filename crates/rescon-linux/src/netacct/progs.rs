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
//! | `softirq_exit` | `irq:softirq_exit` | NET_RX run ends: add its time to the totals, and to the interrupted thread's credit if it belongs to the watched process |
//! | `tcp_probe` | `tcp:tcp_probe` (`tp_btf`) | an established socket receives a segment: count it and its bytes in its owner's slot |
//! | `tx_skb` | `net:net_dev_start_xmit` (`tp_btf`) | a device sends an skb: count it and its bytes from the TCP header on in its socket's owner's slot |
//!
//! **Per packet, no clock and no hash.** A socket's owner is a *slot* in its socket storage
//! ([`Maps::owner`]: the slot in the low 32 bits, the slot's generation in the high 32);
//! the counters are a per-CPU array indexed by slot ([`Maps::usage`]), whose lookup the
//! verifier inlines into a few instructions. A socket nobody bound has no storage: the
//! program returns after one storage lookup. User space gives each container a slot
//! ([`Slots`](super::Slots)) and a new generation when a slot is reused, so that sockets
//! still bound to a forgotten container are not counted for the slot's next owner (their
//! packets count as lost). A listener's storage is copied to the connections it accepts
//! (`BPF_F_CLONE`).
//!
//! **Time per NET_RX run, not per packet.** The softirq programs time each NET_RX run (two
//! clock reads per run: on a NIC, one per NAPI poll of up to 64 frames; on loopback, about
//! one per packet sent); user space apportions that time by packets
//! ([`ledger`](super::ledger)). The per-CPU start time is nonzero only between
//! `softirq_entry` and `softirq_exit` of vector 3, which also tells the packet programs
//! whether they run in NET_RX softirq (where plain adds to this CPU's counters are safe) or
//! in a reader's context (the socket backlog at `release_sock`, which a softirq may
//! interrupt: atomic adds).

use crate::ebpf::asm::Size::{DW, H, W};
use crate::ebpf::asm::{
    Asm, Cond, Helper, Insn, Label, R0, R1, R2, R3, R4, R6, R7, R8, R9, R10, Reg, Src,
};
use std::os::fd::BorrowedFd;

/// `NET_RX_SOFTIRQ` (`include/linux/interrupt.h`).
pub(crate) const NET_RX_SOFTIRQ: i32 = 3;

/// Per-CPU state, one entry: offsets of its 64-bit fields.
pub(crate) mod state {
    /// Time the NET_RX softirq run on this CPU started; 0 outside one.
    pub const NETRX_START: i16 = 0;
    pub const SIZE: u32 = 8;
}

/// Per-slot counters (per CPU): offsets of the 64-bit fields of a usage value.
pub(crate) mod usage {
    /// The slot's generation (the same in every CPU's copy; written by user space).
    pub const GEN: i16 = 0;
    pub const RX_PKTS: i16 = 8;
    pub const RX_BYTES: i16 = 16;
    pub const TX_PKTS: i16 = 24;
    pub const TX_BYTES: i16 = 32;
    pub const SIZE: u32 = 40;
}

/// Machine-wide counters (per CPU), one entry: offsets of its 64-bit fields.
pub(crate) mod totals {
    /// Time in NET_RX softirq.
    pub const NETRX_NS: i16 = 0;
    /// NET_RX softirq runs.
    pub const NETRX_RUNS: i16 = 8;
    /// Packets of a socket whose slot has been given to another container since it was
    /// bound.
    pub const LOST: i16 = 16;
    /// NET_RX softirq time credited to the watched process's threads.
    pub const CREDITED_NS: i16 = 24;
    pub const SIZE: u32 = 32;
}

/// The maps a program refers to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Maps<'a> {
    /// Per-CPU array, one [`state`] entry.
    pub state: BorrowedFd<'a>,
    /// Per-CPU array, one [`totals`] entry.
    pub totals: BorrowedFd<'a>,
    /// Socket storage: the owner's slot (low u32) and its generation (high u32).
    pub owner: BorrowedFd<'a>,
    /// Per-CPU array: slot (u32) to [`usage`] counters.
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

/// With `r6` = a socket: `r0 = &usage[slot]` (this CPU's copy) of its owner, or `goto
/// out` if it has none; `goto lost` if its slot has been given to another container since
/// (its generation changed). Clobbers `r1`-`r5`, `r7`; uses the stack word at -8.
fn load_usage(a: &mut Asm, m: &Maps<'_>, out: Label, lost: Label) {
    a.ld_map(R1, m.owner)
        .mov(R2, R6)
        .mov_imm(R3, 0)
        .mov_imm(R4, 0)
        .call(Helper::SkStorageGet)
        .jmp(Cond::Eq, R0, Src::Imm(0), out)
        // r7 = generation << 32 | slot.
        .ldx(DW, R7, R0, 0)
        .stx(W, R10, -8, R7)
        .ld_map(R1, m.usage)
        .mov(R2, R10)
        .add_imm(R2, -8)
        .call(Helper::MapLookupElem)
        .jmp(Cond::Eq, R0, Src::Imm(0), lost)
        .rsh_imm(R7, 32)
        .ldx(DW, R1, R0, usage::GEN)
        .jmp(Cond::Ne, R1, Src::Reg(R7), lost);
}

/// Counts one lost packet in this CPU's totals (atomically: it may run in a reader's
/// context), then `goto out`.
fn count_lost(a: &mut Asm, m: &Maps<'_>, lost: Label, out: Label) {
    a.place(lost);
    lookup_zero(a, m.totals, out);
    a.mov_imm(R1, 1)
        .atomic_add(DW, R0, totals::LOST, R1)
        .ja(out);
}

/// `*(u64 *)(base + off) += src`, not atomic: for per-CPU values in softirq or with bottom
/// halves off, which nothing else on this CPU runs into. Clobbers `r1`.
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

/// Raw tracepoint `softirq_entry(unsigned int vec_nr)`.
pub(crate) fn softirq_entry(m: &Maps<'_>) -> Vec<Insn> {
    let mut a = Asm::new();
    let out = a.label();
    a.ldx(DW, R2, R1, 0)
        .jmp32(Cond::Ne, R2, Src::Imm(NET_RX_SOFTIRQ), out);
    load_state(&mut a, m, out);
    a.call(Helper::KtimeGetNs)
        .stx(DW, R9, state::NETRX_START, R0);
    epilogue(&mut a, out);
    a.finish()
}

/// Raw tracepoint `softirq_exit(unsigned int vec_nr)`: the run's time into the totals, and
/// into the interrupted thread's credit if it belongs to the watched process.
pub(crate) fn softirq_exit(m: &Maps<'_>) -> Vec<Insn> {
    let mut a = Asm::new();
    let out = a.label();
    let credited = a.label();
    a.ldx(DW, R2, R1, 0)
        .jmp32(Cond::Ne, R2, Src::Imm(NET_RX_SOFTIRQ), out);
    load_state(&mut a, m, out);
    a.ldx(DW, R7, R9, state::NETRX_START)
        .jmp(Cond::Eq, R7, Src::Imm(0), out)
        .call(Helper::KtimeGetNs)
        // r6 = the run's time.
        .mov(R6, R0)
        .sub(R6, R7)
        .st_imm(DW, R9, state::NETRX_START, 0);
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

/// BTF tracepoint `tcp_probe(struct sock *sk, struct sk_buff *skb)`, at the start of
/// `tcp_rcv_established`: a segment for an established socket.
pub(crate) fn tcp_probe(m: &Maps<'_>, skb: SkbFields) -> Vec<Insn> {
    let mut a = Asm::new();
    let out = a.label();
    let lost = a.label();
    let process = a.label();
    a.ldx(DW, R6, R1, 0)
        .ldx(DW, R8, R1, 8)
        .ldx(W, R8, R8, skb.len);
    load_usage(&mut a, m, out, lost);
    a.mov(R6, R0);
    load_state(&mut a, m, out);
    a.ldx(DW, R1, R9, state::NETRX_START)
        .jmp(Cond::Eq, R1, Src::Imm(0), process);
    // In NET_RX softirq: nothing else on this CPU runs into this CPU's values.
    add_imm(&mut a, R6, usage::RX_PKTS, 1);
    add(&mut a, R6, usage::RX_BYTES, R8);
    a.ja(out);
    // In a reader's context (its backlog, at release_sock), which a softirq may interrupt:
    // atomic adds.
    a.place(process);
    a.mov_imm(R1, 1)
        .atomic_add(DW, R6, usage::RX_PKTS, R1)
        .atomic_add(DW, R6, usage::RX_BYTES, R8)
        .ja(out);
    count_lost(&mut a, m, lost, out);
    epilogue(&mut a, out);
    a.finish()
}

/// BTF tracepoint `net_dev_start_xmit(const struct sk_buff *skb, const struct net_device
/// *dev)`: a device sends an skb (after segmentation: one per packet on the wire, except
/// for devices that take TSO aggregates, such as loopback). It runs with bottom halves off
/// (`__dev_queue_xmit` holds `rcu_read_lock_bh`), so plain adds are safe.
pub(crate) fn tx_skb(m: &Maps<'_>, skb: SkbFields) -> Vec<Insn> {
    let mut a = Asm::new();
    let out = a.label();
    let lost = a.label();
    let whole = a.label();
    a.ldx(DW, R9, R1, 0)
        .ldx(DW, R6, R9, skb.sk)
        .jmp(Cond::Eq, R6, Src::Imm(0), out)
        // Bytes from the TCP header on: the length less the link and IP headers (the
        // data starts at the link header here).
        .ldx(W, R8, R9, skb.len)
        .ldx(H, R1, R9, skb.transport_header)
        .ldx(H, R2, R9, skb.mac_header)
        .jmp(Cond::Gt, R2, Src::Reg(R1), whole)
        .sub(R1, R2)
        .jmp(Cond::Gt, R1, Src::Reg(R8), whole)
        .sub(R8, R1);
    a.place(whole);
    load_usage(&mut a, m, out, lost);
    add_imm(&mut a, R0, usage::TX_PKTS, 1);
    add(&mut a, R0, usage::TX_BYTES, R8);
    a.ja(out);
    count_lost(&mut a, m, lost, out);
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
                ("tcp_probe", tcp_probe(m, SKB)),
                ("tx_skb", tx_skb(m, SKB)),
            ] {
                check_shape(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(p.len() < 100, "{name}: {} instructions", p.len());
            }
        });
    }

    #[test]
    fn packet_programs_read_no_clock_and_no_hash() {
        with_maps(|m| {
            let probe = tcp_probe(m, SKB);
            // skb->len (32 bits) from the second argument.
            assert!(probe.iter().any(|i| i.code == 0x61 && i.off == SKB.len));
            let tx = tx_skb(m, SKB);
            assert!(tx.iter().any(|i| i.code == 0x79 && i.off == SKB.sk));
            for off in [SKB.transport_header, SKB.mac_header] {
                assert!(tx.iter().any(|i| i.code == 0x69 && i.off == off));
            }
            // The socket's slot, then its counters in the per-CPU array (then, only for a
            // stale generation, the lost-packet counter).
            let want_tx = vec![
                Helper::SkStorageGet as i32,
                Helper::MapLookupElem as i32,
                Helper::MapLookupElem as i32,
            ];
            assert_eq!(calls(&tx), want_tx);
            let fds: Vec<i32> = [m.owner, m.usage, m.totals]
                .iter()
                .map(|f| f.as_raw_fd())
                .collect();
            assert_eq!(maps_used(&tx), fds);
            // tcp_probe also reads the state, to know softirq from a reader's context.
            assert_eq!(
                calls(&probe),
                vec![
                    Helper::SkStorageGet as i32,
                    Helper::MapLookupElem as i32,
                    Helper::MapLookupElem as i32,
                    Helper::MapLookupElem as i32,
                ]
            );
            for p in [&probe, &tx] {
                assert!(!calls(p).contains(&(Helper::KtimeGetNs as i32)));
                // The generation check: the storage's high half against the slot's.
                assert!(p.iter().any(|i| i.code == 0x77 && i.imm == 32));
                assert!(p.iter().any(|i| i.code == 0x79 && i.off == usage::GEN));
            }
            // The slot is the storage's low 32 bits, the array's key.
            assert!(probe.iter().any(|i| i.code == 0x63 && i.off == -8));
        });
    }

    #[test]
    fn softirq_programs_filter_net_rx_and_credit_the_watched_process() {
        with_maps(|m| {
            for p in [softirq_entry(m), softirq_exit(m)] {
                // The first test is vector == NET_RX, in 32 bits.
                let j = p.iter().find(|i| i.is_jump()).unwrap();
                assert_eq!((j.class(), j.imm), (JMP32, NET_RX_SOFTIRQ));
                // One clock read each: the run's start and end.
                let clocks = calls(&p)
                    .iter()
                    .filter(|c| **c == Helper::KtimeGetNs as i32)
                    .count();
                assert_eq!(clocks, 1);
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
