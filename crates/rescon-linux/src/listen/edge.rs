//! The edge filter: black-holed sources dropped by XDP as their SYNs arrive on an interface,
//! before the kernel allocates, routes and looks them up.
//!
//! A black-hole member of a [`ListenerGroup`](super::ListenerGroup) drops the SYNs steered to
//! it with a socket filter, so a flood gets no SYN-ACK and no accept work. The kernel still
//! pays for each SYN up to that point: the IP layer, the route lookup, the listener lookup,
//! the steering program (anchors.md measured 4 us per dropped SYN on these machines, and a
//! profile of `rescon-bench synflood` shows it). An XDP program on the interface the flood
//! comes in on drops it at the driver instead, for a few instructions per packet. It is
//! the paper's "dropped before it costs anything" on today's Linux.
//!
//! The program drops IPv4 TCP SYNs (SYN set, ACK clear) to the group's port (and address, if
//! the group has one) whose source is in one of the prefixes, and passes everything else:
//! other ports, established connections from those sources, IPv6, fragments and IPv4
//! headers with options go on to the kernel, where the listener group's own filter still
//! applies. [`EdgeFilter::set_prefixes`] swaps in a new program atomically
//! (`BPF_LINK_UPDATE`); dropping the filter detaches it.
//!
//! Written by hand, with `bpf(2)` directly: the program is about 30 instructions plus 3 per prefix,
//! assembled from the prefix list at run time. The Rust eBPF toolchain (aya) compiles
//! programs ahead of time with its own linker, which fits programs written in Rust, not one
//! generated from a configuration; libbpf would add a C dependency for three system calls.

use super::sys::{self, EbpfInsn};
use ipnet::Ipv4Net;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Most prefixes one program holds (3 instructions each; the kernel takes far more, this
/// bounds the cost per packet).
pub const MAX_PREFIXES: usize = 4096;

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

// Instruction fields (`linux/bpf.h`, `linux/bpf_common.h`).
const LDX: u8 = 0x01;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const MEM: u8 = 0x60;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const AND: u8 = 0x50;
const MOV: u8 = 0xb0;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JNE: u8 = 0x50;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
const STX: u8 = 0x03;
const ST: u8 = 0x02;
const LD: u8 = 0x00;
const DW: u8 = 0x18;
const IMM: u8 = 0x00;
const ATOMIC: u8 = 0xc0;
/// `BPF_PSEUDO_MAP_FD`: a 64-bit immediate load whose value is a map's file descriptor.
const PSEUDO_MAP_FD: u8 = 1;
/// `BPF_FUNC_map_lookup_elem`.
const MAP_LOOKUP: i32 = 1;

// Offsets in an Ethernet frame carrying IPv4 without options and TCP.
const ETH_TYPE: i16 = 12;
const IP_VHL: i16 = 14;
const IP_FRAG: i16 = 20;
const IP_PROTO: i16 = 23;
const IP_SRC: i16 = 26;
const IP_DST: i16 = 30;
const TCP_DPORT: i16 = 36;
const TCP_FLAGS: i16 = 47;
/// Bytes the program reads: through the TCP flags.
const NEEDED: i32 = 48;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> EbpfInsn {
    EbpfInsn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// A 16- or 32-bit field as the program loads it: network-order bytes read by a
/// little-endian load (x86-64 and arm64, the targets we build for).
fn le16(v: u16) -> i32 {
    i32::from(u16::from_le_bytes(v.to_be_bytes()))
}
fn le32(v: u32) -> i32 {
    u32::from_le_bytes(v.to_be_bytes()) as i32
}

/// Jumps that go to PASS or DROP, patched once both are placed.
#[derive(Clone, Copy)]
enum To {
    Pass,
    Drop,
}

/// Assembles the program for `port` (and `dst`, unless it is unspecified) and `prefixes`;
/// each drop adds one to counter 0 of the array map `counter` (a file descriptor).
fn assemble(port: u16, dst: Ipv4Addr, prefixes: &[Ipv4Net], counter: i32) -> Vec<EbpfInsn> {
    let mut p = Vec::with_capacity(24 + 3 * prefixes.len());
    let mut fix: Vec<(usize, To)> = Vec::new();
    let jump = |p: &mut Vec<EbpfInsn>, fix: &mut Vec<(usize, To)>, i: EbpfInsn, to: To| {
        fix.push((p.len(), to));
        p.push(i);
    };
    // r2 = data, r3 = data_end (struct xdp_md); pass anything shorter than we read.
    p.push(insn(LDX | W | MEM, 2, 1, 0, 0));
    p.push(insn(LDX | W | MEM, 3, 1, 4, 0));
    p.push(insn(ALU64 | MOV | X, 4, 2, 0, 0));
    p.push(insn(ALU64 | ADD | K, 4, 0, 0, NEEDED));
    jump(&mut p, &mut fix, insn(JMP | JGT | X, 4, 3, 0, 0), To::Pass);
    // IPv4, no options, TCP, not a later fragment.
    p.push(insn(LDX | H | MEM, 5, 2, ETH_TYPE, 0));
    jump(
        &mut p,
        &mut fix,
        insn(JMP | JNE | K, 5, 0, 0, le16(0x0800)),
        To::Pass,
    );
    p.push(insn(LDX | B | MEM, 5, 2, IP_VHL, 0));
    jump(
        &mut p,
        &mut fix,
        insn(JMP | JNE | K, 5, 0, 0, 0x45),
        To::Pass,
    );
    p.push(insn(LDX | B | MEM, 5, 2, IP_PROTO, 0));
    jump(&mut p, &mut fix, insn(JMP | JNE | K, 5, 0, 0, 6), To::Pass);
    p.push(insn(LDX | H | MEM, 5, 2, IP_FRAG, 0));
    p.push(insn(ALU | AND | K, 5, 0, 0, le16(0x1fff)));
    jump(&mut p, &mut fix, insn(JMP | JNE | K, 5, 0, 0, 0), To::Pass);
    // A SYN without ACK, to our port (and address).
    p.push(insn(LDX | B | MEM, 5, 2, TCP_FLAGS, 0));
    p.push(insn(ALU | AND | K, 5, 0, 0, 0x12));
    jump(
        &mut p,
        &mut fix,
        insn(JMP | JNE | K, 5, 0, 0, 0x02),
        To::Pass,
    );
    p.push(insn(LDX | H | MEM, 5, 2, TCP_DPORT, 0));
    jump(
        &mut p,
        &mut fix,
        insn(JMP | JNE | K, 5, 0, 0, le16(port)),
        To::Pass,
    );
    if !dst.is_unspecified() {
        p.push(insn(LDX | W | MEM, 5, 2, IP_DST, 0));
        jump(
            &mut p,
            &mut fix,
            insn(JMP32 | JNE | K, 5, 0, 0, le32(dst.into())),
            To::Pass,
        );
    }
    // The source against each prefix, in 32-bit operations (immediates are sign-extended in
    // 64-bit ones).
    p.push(insn(LDX | W | MEM, 5, 2, IP_SRC, 0));
    for net in prefixes {
        p.push(insn(ALU | MOV | X, 6, 5, 0, 0));
        p.push(insn(ALU | AND | K, 6, 0, 0, le32(net.netmask().into())));
        jump(
            &mut p,
            &mut fix,
            insn(JMP32 | JEQ | K, 6, 0, 0, le32(net.network().into())),
            To::Drop,
        );
    }
    let pass = p.len();
    p.push(insn(ALU64 | MOV | K, 0, 0, 0, XDP_PASS as i32));
    p.push(insn(JMP | EXIT, 0, 0, 0, 0));
    // Without prefixes nothing jumps to DROP, and the verifier refuses unreachable code.
    // DROP counts the packet: counter[0] += 1, atomically (so the defense sees a flood it no
    // longer meets at the socket), then drops it.
    let drop = p.len();
    if !prefixes.is_empty() {
        p.push(insn(LD | DW | IMM, 1, PSEUDO_MAP_FD, 0, counter));
        p.push(insn(0, 0, 0, 0, 0));
        p.push(insn(ST | W | MEM, 10, 0, -4, 0));
        p.push(insn(ALU64 | MOV | X, 2, 10, 0, 0));
        p.push(insn(ALU64 | ADD | K, 2, 0, 0, -4));
        p.push(insn(JMP | CALL, 0, 0, 0, MAP_LOOKUP));
        p.push(insn(JMP | JEQ | K, 0, 0, 2, 0));
        p.push(insn(ALU64 | MOV | K, 1, 0, 0, 1));
        p.push(insn(STX | DW | ATOMIC, 0, 1, 0, 0));
        p.push(insn(ALU64 | MOV | K, 0, 0, 0, XDP_DROP as i32));
        p.push(insn(JMP | EXIT, 0, 0, 0, 0));
    }
    for (at, to) in fix {
        let target = match to {
            To::Pass => pass,
            To::Drop => drop,
        };
        p[at].off = i16::try_from(target - at - 1).expect("program under 32k instructions");
    }
    p
}

/// A loaded program and what it was made from.
struct Prog {
    fd: OwnedFd,
    prefixes: Vec<Ipv4Net>,
}

/// The prefixes as the program holds them: truncated to their length, sorted, once each.
fn normalize(prefixes: &[Ipv4Net]) -> Vec<Ipv4Net> {
    let mut v: Vec<Ipv4Net> = prefixes.iter().map(|n| n.trunc()).collect();
    v.sort();
    v.dedup();
    v
}

/// Loads the program for `prefixes`, which [`normalize`] made.
fn load(port: u16, dst: Ipv4Addr, prefixes: Vec<Ipv4Net>, counter: &OwnedFd) -> io::Result<Prog> {
    if prefixes.len() > MAX_PREFIXES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} prefixes for the edge filter; at most {MAX_PREFIXES}: aggregate them into shorter prefixes",
                prefixes.len()
            ),
        ));
    }
    let insns = assemble(port, dst, &prefixes, counter.as_raw_fd());
    let fd = sys::load_xdp(&insns, "rescon_edge")?;
    Ok(Prog { fd, prefixes })
}

/// An XDP program on one interface dropping SYNs to one listening address from black-holed
/// IPv4 prefixes: see the [module docs](self).
pub struct EdgeFilter {
    iface: String,
    port: u16,
    dst: Ipv4Addr,
    link: OwnedFd,
    prog: Prog,
    /// The drop counter, shared by every program this filter loads.
    counter: OwnedFd,
}

impl fmt::Debug for EdgeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeFilter")
            .field("iface", &self.iface)
            .field("port", &self.port)
            .field("dst", &self.dst)
            .field("prefixes", &self.prog.prefixes)
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
    /// for SYNs to `port` (and `dst`, unless unspecified) from `prefixes`. Needs
    /// `CAP_NET_ADMIN` and `CAP_BPF` (root).
    pub fn attach(
        iface: &str,
        dst: Ipv4Addr,
        port: u16,
        prefixes: &[Ipv4Net],
        mode: XdpMode,
    ) -> io::Result<EdgeFilter> {
        let ifindex = ifindex(iface)?;
        let counter = sys::counter_array(1).map_err(|e| {
            io::Error::new(e.kind(), format!("creating the edge filter's counter: {e}"))
        })?;
        let prog = load(port, dst, normalize(prefixes), &counter).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("loading the edge filter for {iface}: {e}"),
            )
        })?;
        let link = sys::xdp_link(prog.fd.as_fd(), ifindex, mode.flags()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("attaching the edge filter (XDP) to {iface}: {e} (is another XDP program attached?)"),
            )
        })?;
        tracing::info!(
            iface,
            port,
            ?mode,
            prefixes = prog.prefixes.len(),
            "edge filter attached"
        );
        Ok(EdgeFilter {
            iface: iface.to_string(),
            port,
            dst,
            link,
            prog,
            counter,
        })
    }

    /// SYNs dropped so far (by every program this filter has had).
    pub fn drops(&self) -> u64 {
        sys::read_counter(self.counter.as_fd(), 0).unwrap_or(0)
    }

    /// Replaces the prefixes, atomically: packets see either the old program or the new one.
    /// Unchanged prefixes do nothing.
    pub fn set_prefixes(&mut self, prefixes: &[Ipv4Net]) -> io::Result<()> {
        let want = normalize(prefixes);
        if want == self.prog.prefixes {
            return Ok(());
        }
        let prog = load(self.port, self.dst, want, &self.counter)?;
        sys::link_update(self.link.as_fd(), prog.fd.as_fd()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("swapping the edge filter on {}: {e}", self.iface),
            )
        })?;
        tracing::info!(iface = %self.iface, prefixes = prog.prefixes.len(), "edge filter swapped");
        self.prog = prog;
        Ok(())
    }

    /// The interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The prefixes dropped now.
    pub fn prefixes(&self) -> &[Ipv4Net] {
        &self.prog.prefixes
    }
}

/// Loads (without attaching) the program for `prefixes` and runs it once on `frame`: the
/// verdict the edge filter would give. For tests and for checking a configuration.
pub fn verdict_for(
    dst: Ipv4Addr,
    port: u16,
    prefixes: &[Ipv4Net],
    frame: &[u8],
) -> io::Result<u32> {
    let counter = sys::counter_array(1)?;
    let prog = load(port, dst, normalize(prefixes), &counter)?;
    sys::test_run(prog.fd.as_fd(), frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_pass_or_drop() {
        let prefixes: Vec<Ipv4Net> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.0.2.7/32".parse().unwrap(),
        ];
        let p = assemble(80, Ipv4Addr::UNSPECIFIED, &prefixes, 3);
        let exits: Vec<usize> = (0..p.len()).filter(|&i| p[i].code == JMP | EXIT).collect();
        assert_eq!(exits.len(), 2);
        let pass = exits[0] - 1;
        let drop = p.iter().position(|x| x.code == LD | DW | IMM).unwrap();
        assert_eq!(drop, exits[0] + 1, "DROP follows PASS");
        for (i, x) in p[..pass].iter().enumerate() {
            let cls = x.code & 0x07;
            if cls == JMP || cls == JMP32 {
                let to = i + 1 + x.off as usize;
                assert!(to == pass || to == drop, "insn {i} jumps to {to}");
                assert_eq!(to == drop, x.code & 0xf0 == JEQ, "only prefix matches drop");
            }
        }
        assert_eq!(p[exits[1] - 1].imm, XDP_DROP as i32);
        assert_eq!(p[drop].imm, 3, "the counter's map");
        assert_eq!(p[pass].imm, XDP_PASS as i32);
    }

    #[test]
    fn fields_are_in_network_order() {
        // 0x0800 arrives as bytes 08 00, which a little-endian 16-bit load reads as 0x0008.
        assert_eq!(le16(0x0800), 0x0008);
        assert_eq!(le32(u32::from(Ipv4Addr::new(10, 1, 2, 3))), 0x0302_010a);
    }
}
