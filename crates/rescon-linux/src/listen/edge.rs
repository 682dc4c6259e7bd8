//! The edge filter: black-holed sources dropped by XDP as their SYNs arrive on an interface,
//! before the kernel allocates, routes and looks them up; and the early counts of every
//! other source's SYNs and ACKs, which the defense reacts on.
//!
//! A black-hole member of a [`ListenerGroup`](super::ListenerGroup) drops the SYNs steered to
//! it with a socket filter, so a flood gets no SYN-ACK and no accept work. The kernel still
//! pays for each SYN up to that point: the IP layer, the route lookup, the listener lookup,
//! the steering program (anchors.md measured 4 us per dropped SYN on these machines, and a
//! profile of `rescon-bench synflood` shows it). An XDP program on the interface the flood
//! comes in on drops it at the driver instead, for a few instructions and one table lookup
//! per packet. It is the paper's "dropped before it costs anything" on today's Linux.
//!
//! The program looks at TCP to the group's port (and address, if the group has one), IPv4
//! without options and not a later fragment, or IPv6 with TCP as the first next header:
//!
//! - a SYN (SYN set, ACK clear) whose source is in a black-holed prefix of the group's
//!   [`Holes`] is dropped, and counted for that prefix and for this interface;
//! - any other SYN is counted for its source's `/24` or `/64`, and an ACK is counted for a
//!   source that sent a SYN in the same period ([`Holes::take_sources`]);
//! - everything else passes: other ports, established connections from black-holed
//!   sources, extension headers, options and fragments go on to the kernel, where the
//!   group's own filters still apply.
//!
//! The prefixes live in the `Holes` tables, shared with the group's black-hole sockets:
//! moving a prefix is one table update that every edge sees at once. Dropping the filter
//! detaches it.
//!
//! Written by hand with `bpf(2)` directly (see [`ebpf`](crate::ebpf)): about 100
//! instructions, assembled for the group's port and addresses.

use super::early::{self, Holes};
use super::filter::Stack;
use crate::ebpf::asm::Size::{B, DW, H, W};
use crate::ebpf::asm::{
    Asm, Cond, Helper, Insn, Label, R0, R1, R2, R3, R4, R5, R7, R8, R10, Src, be16, be32,
};
use crate::ebpf::sys::{self, MapSpec, MapType, ProgSpec, ProgType};
use crate::ebpf::{Map, sum_words};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Where on the receive path the program runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// The driver's XDP if it has one (at the very start of receive, in its interrupt
    /// context), else the generic one: what a server's NIC wants.
    #[default]
    Auto,
    /// In the driver; refused if the driver has no XDP.
    Native,
    /// Generic (skb) XDP: after the packet is queued to the CPU that processes it (after
    /// receive packet steering), for any device. On a veth this is the mode that runs on the
    /// receiving side's CPU, as a real NIC's would; the native veth mode runs in the
    /// sender's context.
    Generic,
}

impl XdpMode {
    /// `XDP_FLAGS_*` of `linux/if_link.h`.
    fn flags(self) -> u32 {
        match self {
            XdpMode::Auto => 0,
            XdpMode::Generic => 1 << 1,
            XdpMode::Native => 1 << 2,
        }
    }
}

/// XDP verdicts (`enum xdp_action`).
pub const XDP_DROP: u32 = 1;
/// See [`XDP_DROP`].
pub const XDP_PASS: u32 = 2;

/// The packets an edge filter looks at: TCP to `port`, at these addresses (`None`: not this
/// family; unspecified: any address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The port.
    pub port: u16,
    /// IPv4 destination.
    pub v4: Option<Ipv4Addr>,
    /// IPv6 destination.
    pub v6: Option<Ipv6Addr>,
}

impl Target {
    /// What a group listening on `local` with `stack` receives.
    pub fn of(local: SocketAddr, stack: Stack) -> Target {
        let (v4, v6) = match (local.ip(), stack) {
            (IpAddr::V4(a), _) => (Some(a), None),
            (IpAddr::V6(a), Stack::V6Only) => (None, Some(a)),
            (IpAddr::V6(a), _) if a.is_unspecified() => (Some(Ipv4Addr::UNSPECIFIED), Some(a)),
            (IpAddr::V6(a), _) => match a.to_ipv4_mapped() {
                Some(m) => (Some(m), None),
                None => (None, Some(a)),
            },
        };
        Target {
            port: local.port(),
            v4,
            v6,
        }
    }
}

// Offsets in an Ethernet frame.
const ETH_TYPE: i16 = 12;
const IP: i16 = 14;
// IPv4 without options, then TCP.
const IP4_VHL: i16 = IP;
const IP4_FRAG: i16 = IP + 6;
const IP4_PROTO: i16 = IP + 9;
const IP4_SRC: i16 = IP + 12;
const IP4_DST: i16 = IP + 16;
const TCP4: i16 = IP + 20;
// IPv6, then TCP.
const IP6_NEXT: i16 = IP + 6;
const IP6_SRC: i16 = IP + 8;
const IP6_DST: i16 = IP + 24;
const TCP6: i16 = IP + 40;
// In the TCP header.
const TCP_DPORT: i16 = 2;
const TCP_FLAGS: i16 = 13;
const SYN: i32 = 0x02;
const ACK: i32 = 0x10;

// The stack: the trie keys, the source key, a source value.
const KEY4: i16 = -8;
const KEY6: i16 = -24;
const SRC_KEY: i16 = -48;
const SRC_VALUE: i16 = -64;

/// The maps the program refers to.
struct Maps<'a> {
    v4: BorrowedFd<'a>,
    v6: BorrowedFd<'a>,
    sources: BorrowedFd<'a>,
    /// This interface's drops (an array of one u64).
    counter: BorrowedFd<'a>,
}

/// `if (dst != want) goto pass` over a 32-bit word at `off` of the packet in `r2`.
fn word_is(a: &mut Asm, off: i16, want: u32, pass: Label) {
    a.ldx(W, R5, R2, off)
        .jmp32(Cond::Ne, R5, Src::Imm(be32(want)), pass);
}

/// Assembles the program: see the [module docs](self).
fn assemble(t: &Target, m: &Maps<'_>) -> Vec<Insn> {
    let mut a = Asm::new();
    let pass = a.label();
    let ip4 = a.label();
    let ip6 = a.label();
    let syn = a.label();
    let ack = a.label();
    let dropped = a.label();
    let syn4 = a.label();
    let syn6 = a.label();
    // r2 = data, r3 = data_end (struct xdp_md); the ethertype.
    a.ldx(W, R2, R1, 0)
        .ldx(W, R3, R1, 4)
        .mov(R4, R2)
        .add_imm(R4, 14)
        .jmp(Cond::Gt, R4, Src::Reg(R3), pass)
        .ldx(H, R5, R2, ETH_TYPE);
    if t.v4.is_some() {
        a.jmp(Cond::Eq, R5, Src::Imm(be16(0x0800)), ip4);
    }
    if t.v6.is_some() {
        a.jmp(Cond::Eq, R5, Src::Imm(be16(0x86dd)), ip6);
    }
    a.ja(pass);

    if let Some(dst) = t.v4 {
        a.place(ip4);
        a.mov(R4, R2)
            .add_imm(R4, i32::from(TCP4 + TCP_FLAGS + 1))
            .jmp(Cond::Gt, R4, Src::Reg(R3), pass)
            .ldx(B, R5, R2, IP4_VHL)
            .jmp(Cond::Ne, R5, Src::Imm(0x45), pass)
            .ldx(B, R5, R2, IP4_PROTO)
            .jmp(Cond::Ne, R5, Src::Imm(6), pass)
            .ldx(H, R5, R2, IP4_FRAG)
            .and32_imm(R5, be16(0x1fff))
            .jmp(Cond::Ne, R5, Src::Imm(0), pass)
            .ldx(H, R5, R2, TCP4 + TCP_DPORT)
            .jmp(Cond::Ne, R5, Src::Imm(be16(t.port)), pass);
        if !dst.is_unspecified() {
            word_is(&mut a, IP4_DST, dst.into(), pass);
        }
        // r7 = flags, r8 = source; the source key {4, /24}.
        a.ldx(B, R7, R2, TCP4 + TCP_FLAGS)
            .ldx(W, R8, R2, IP4_SRC)
            .st_imm(W, R10, SRC_KEY, early::FAMILY_V4)
            .mov(R1, R8)
            .and32_imm(R1, 0x00ff_ffff)
            .stx(W, R10, SRC_KEY + 4, R1);
        for i in 1..4 {
            a.st_imm(W, R10, SRC_KEY + 4 + 4 * i, 0);
        }
        a.mov(R1, R7)
            .and32_imm(R1, SYN | ACK)
            .jmp(Cond::Eq, R1, Src::Imm(SYN), syn4)
            .jmp(Cond::Set, R7, Src::Imm(ACK), ack)
            .ja(pass);
        a.place(syn4);
        a.st_imm(W, R10, KEY4, 32)
            .stx(W, R10, KEY4 + 4, R8)
            .ld_map(R1, m.v4)
            .mov(R2, R10)
            .add_imm(R2, i32::from(KEY4))
            .call(Helper::MapLookupElem)
            .jmp(Cond::Ne, R0, Src::Imm(0), dropped)
            .ja(syn);
    }

    if let Some(dst) = t.v6 {
        a.place(ip6);
        a.mov(R4, R2)
            .add_imm(R4, i32::from(TCP6 + TCP_FLAGS + 1))
            .jmp(Cond::Gt, R4, Src::Reg(R3), pass)
            .ldx(B, R5, R2, IP6_NEXT)
            .jmp(Cond::Ne, R5, Src::Imm(6), pass)
            .ldx(H, R5, R2, TCP6 + TCP_DPORT)
            .jmp(Cond::Ne, R5, Src::Imm(be16(t.port)), pass);
        if !dst.is_unspecified() {
            let o = dst.octets();
            for i in 0..4 {
                let w = u32::from_be_bytes(o[4 * i..4 * i + 4].try_into().expect("4 bytes"));
                word_is(&mut a, IP6_DST + 4 * i as i16, w, pass);
            }
        }
        // r7 = flags; the trie key {128, source} and the source key {6, /64}.
        a.ldx(B, R7, R2, TCP6 + TCP_FLAGS)
            .st_imm(W, R10, KEY6, 128)
            .st_imm(W, R10, SRC_KEY, early::FAMILY_V6);
        for i in 0..4 {
            a.ldx(W, R1, R2, IP6_SRC + 4 * i)
                .stx(W, R10, KEY6 + 4 + 4 * i, R1);
            if i < 2 {
                a.stx(W, R10, SRC_KEY + 4 + 4 * i, R1);
            } else {
                a.st_imm(W, R10, SRC_KEY + 4 + 4 * i, 0);
            }
        }
        a.mov(R1, R7)
            .and32_imm(R1, SYN | ACK)
            .jmp(Cond::Eq, R1, Src::Imm(SYN), syn6)
            .jmp(Cond::Set, R7, Src::Imm(ACK), ack)
            .ja(pass);
        a.place(syn6);
        a.ld_map(R1, m.v6)
            .mov(R2, R10)
            .add_imm(R2, i32::from(KEY6))
            .call(Helper::MapLookupElem)
            .jmp(Cond::Ne, R0, Src::Imm(0), dropped)
            .ja(syn);
    }

    // A SYN from a source not black-holed: count it for its /24 or /64 (per CPU; XDP runs in
    // NAPI or softirq, nothing else on this CPU runs into this CPU's value).
    let new = a.label();
    a.place(syn);
    source_lookup(&mut a, m);
    a.jmp(Cond::Eq, R0, Src::Imm(0), new)
        .ldx(DW, R1, R0, early::SYNS)
        .add_imm(R1, 1)
        .stx(DW, R0, early::SYNS, R1)
        .ja(pass);
    a.place(new);
    a.st_imm(DW, R10, SRC_VALUE, 1)
        .st_imm(DW, R10, SRC_VALUE + 8, 0)
        .ld_map(R1, m.sources)
        .mov(R2, R10)
        .add_imm(R2, i32::from(SRC_KEY))
        .mov(R3, R10)
        .add_imm(R3, i32::from(SRC_VALUE))
        .mov_imm(R4, 0)
        .call(Helper::MapUpdateElem)
        .ja(pass);
    // An ACK: counted only for a source that sent a SYN this period.
    a.place(ack);
    source_lookup(&mut a, m);
    a.jmp(Cond::Eq, R0, Src::Imm(0), pass)
        .ldx(DW, R1, R0, early::ACKS)
        .add_imm(R1, 1)
        .stx(DW, R0, early::ACKS, R1)
        .ja(pass);
    // Black-holed: count for the prefix (all CPUs share it) and for this interface.
    a.place(dropped);
    a.mov_imm(R1, 1)
        .atomic_add(DW, R0, early::EDGE, R1)
        .st_imm(W, R10, -4, 0)
        .ld_map(R1, m.counter)
        .mov(R2, R10)
        .add_imm(R2, -4)
        .call(Helper::MapLookupElem);
    let done = a.label();
    a.jmp(Cond::Eq, R0, Src::Imm(0), done)
        .mov_imm(R1, 1)
        .atomic_add(DW, R0, 0, R1);
    a.place(done);
    a.mov_imm(R0, XDP_DROP as i32).exit();
    a.place(pass);
    a.mov_imm(R0, XDP_PASS as i32).exit();
    a.finish()
}

/// `r0 = &sources[key at SRC_KEY]` (this CPU's), or 0.
fn source_lookup(a: &mut Asm, m: &Maps<'_>) {
    a.ld_map(R1, m.sources)
        .mov(R2, R10)
        .add_imm(R2, i32::from(SRC_KEY))
        .call(Helper::MapLookupElem);
}

/// Loads the program for `target` over `holes`, with its own drop counter.
fn load(target: &Target, holes: &Holes) -> io::Result<(OwnedFd, Map)> {
    let counter = Map::create(&MapSpec {
        kind: MapType::Array,
        key: 4,
        value: 8,
        max_entries: 1,
        flags: 0,
        name: "rescon_edge_n",
        btf: None,
    })?;
    let (v4, v6, sources) = holes.maps();
    let insns = assemble(
        target,
        &Maps {
            v4,
            v6,
            sources,
            counter: counter.as_fd(),
        },
    );
    let prog = sys::prog_load(&ProgSpec {
        kind: ProgType::Xdp,
        insns: &insns,
        name: "rescon_edge",
        attach: Some(sys::AttachType::Xdp),
        attach_btf_id: 0,
    })?;
    Ok((prog, counter))
}

/// An XDP program on one interface dropping SYNs to one listening address from black-holed
/// prefixes, and counting the others: see the [module docs](self).
pub struct EdgeFilter {
    iface: String,
    target: Target,
    _link: OwnedFd,
    _prog: OwnedFd,
    /// This interface's drops.
    counter: Map,
}

impl fmt::Debug for EdgeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeFilter")
            .field("iface", &self.iface)
            .field("target", &self.target)
            .finish()
    }
}

/// The index of interface `name` in the calling thread's network namespace.
fn ifindex(name: &str) -> io::Result<u32> {
    match sys::if_index(name)? {
        0 => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {name} in this network namespace (see `ip link`)"),
        )),
        i => Ok(i),
    }
}

impl EdgeFilter {
    /// Attaches a filter to interface `iface` (of the calling thread's network namespace)
    /// for `target`, dropping what `holes` black-holes. Needs `CAP_NET_ADMIN` and `CAP_BPF`
    /// (root).
    pub fn attach(
        iface: &str,
        target: Target,
        holes: &Holes,
        mode: XdpMode,
    ) -> io::Result<EdgeFilter> {
        let ifindex = ifindex(iface)?;
        let (prog, counter) = load(&target, holes).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("loading the edge filter for {iface}: {e}"),
            )
        })?;
        let link = sys::xdp_link(prog.as_fd(), ifindex, mode.flags()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("attaching the edge filter (XDP) to {iface}: {e} (is another XDP program attached?)"),
            )
        })?;
        tracing::info!(iface, ?target, ?mode, "edge filter attached");
        Ok(EdgeFilter {
            iface: iface.to_string(),
            target,
            _link: link,
            _prog: prog,
            counter,
        })
    }

    /// SYNs this interface's filter has dropped.
    pub fn drops(&self) -> u64 {
        self.counter
            .get(&0u32.to_ne_bytes())
            .ok()
            .flatten()
            .map_or(0, |v| sum_words(&v, 8, 1)[0])
    }

    /// The interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// What it looks at.
    pub fn target(&self) -> Target {
        self.target
    }
}

/// Loads (without attaching) the program for `target` over `holes` and runs it once on
/// `frame`: the verdict the edge filter would give (counting as it would). For tests and for
/// checking a configuration.
pub fn verdict_for(target: &Target, holes: &Holes, frame: &[u8]) -> io::Result<u32> {
    let (prog, _counter) = load(target, holes)?;
    sys::test_run_packet(prog.as_fd(), frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebpf::asm::{CALL, EXIT, JMP, check_shape};

    fn with_maps<T>(f: impl FnOnce(&Maps<'_>) -> T) -> T {
        let files: Vec<std::fs::File> = (0..4)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        f(&Maps {
            v4: files[0].as_fd(),
            v6: files[1].as_fd(),
            sources: files[2].as_fd(),
            counter: files[3].as_fd(),
        })
    }

    #[test]
    fn programs_for_every_kind_of_group_are_well_formed() {
        with_maps(|m| {
            for (addr, stack) in [
                ("0.0.0.0:80", Stack::V4),
                ("10.0.0.1:80", Stack::V4),
                ("[::]:80", Stack::Dual),
                ("[::]:80", Stack::V6Only),
                ("[2001:db8::1]:80", Stack::V6Only),
                ("[::ffff:10.0.0.1]:80", Stack::Dual),
            ] {
                let t = Target::of(addr.parse().unwrap(), stack);
                let p = assemble(&t, m);
                check_shape(&p).unwrap_or_else(|e| panic!("{addr}: {e}"));
                let exits = p.iter().filter(|i| i.code == JMP | EXIT).count();
                assert_eq!(exits, 2, "{addr}: DROP and PASS");
                // The port, in network order, is compared in every family handled.
                let port_tests = p
                    .iter()
                    .filter(|i| i.imm == be16(80) && i.is_jump())
                    .count();
                assert_eq!(
                    port_tests,
                    usize::from(t.v4.is_some()) + usize::from(t.v6.is_some()),
                    "{addr}"
                );
            }
        });
    }

    #[test]
    fn targets_follow_the_group_stack() {
        let t = |a: &str, s| Target::of(a.parse().unwrap(), s);
        assert_eq!(t("0.0.0.0:1", Stack::V4).v6, None);
        assert_eq!(
            t("[::]:1", Stack::Dual),
            Target {
                port: 1,
                v4: Some(Ipv4Addr::UNSPECIFIED),
                v6: Some(Ipv6Addr::UNSPECIFIED)
            }
        );
        assert_eq!(t("[::]:1", Stack::V6Only).v4, None);
        assert_eq!(
            t("[::ffff:10.0.0.1]:1", Stack::Dual).v4,
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
    }

    #[test]
    fn a_specific_address_is_compared_word_by_word() {
        with_maps(|m| {
            let t = Target::of("[2001:db8::1]:80".parse().unwrap(), Stack::V6Only);
            let p = assemble(&t, m);
            let words: Vec<i32> = p
                .iter()
                .filter(|i| i.class() == crate::ebpf::asm::JMP32 && i.is_jump())
                .map(|i| i.imm)
                .collect();
            assert_eq!(words, vec![be32(0x2001_0db8), 0, 0, be32(1)]);
            // The helpers: the trie, the sources (lookup, update; lookup), the counter.
            let calls: Vec<i32> = p
                .iter()
                .filter(|i| i.code == JMP | CALL)
                .map(|i| i.imm)
                .collect();
            assert_eq!(
                calls,
                vec![
                    Helper::MapLookupElem as i32,
                    Helper::MapLookupElem as i32,
                    Helper::MapUpdateElem as i32,
                    Helper::MapLookupElem as i32,
                    Helper::MapLookupElem as i32,
                ]
            );
        });
    }
}
