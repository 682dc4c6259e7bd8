//! Classic BPF programs: the steering program compiled from a [`Steering`], and the
//! SYN-dropping filter of a black-hole member.
//!
//! # The steering program
//!
//! Attached with `SO_ATTACH_REUSEPORT_CBPF` to a reuseport group, it runs on every new
//! connection's SYN and returns the index of the member socket (the order of `listen()`); an
//! index out of range makes the kernel hash over all members, so the program returns an
//! explicit index for every source ([`Steering`] refuses filters that leave a source
//! uncovered). The source address is read relative to the network header (`SKF_NET_OFF`),
//! which works whatever the transport offset is: at `+12` for IPv4, at `+8..+24` for IPv6. On
//! a dual-stack group the version nibble picks the branch.
//!
//! The layout, per family: the source is stored in scratch memory; listed prefixes are
//! tested longest first (IPv4 prefixes of one length share one mask instruction); then each
//! complement member in order is tested against its exceptions and returns its index if none
//! matches. Its size is about two instructions per IPv4 prefix and five per IPv6 `/64`; the
//! kernel accepts up to [`MAX_INSNS`].
//!
//! ```
//! use rescon_linux::listen::{bpf, Filter, Stack, Steering};
//! let steering = Steering::new(Stack::V4, vec![Filter::any(), "127.0.0.3/32".parse().unwrap()]).unwrap();
//! let prog = bpf::compile(&steering).unwrap();
//! assert!(prog.len() < 12);
//! print!("{prog}"); // a bpf_asm-like listing
//! ```

use super::filter::Steering;
use ipnet::IpNet;
use std::fmt;

/// The most instructions the kernel accepts in a classic program (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// Offset of the network header in absolute loads (`SKF_NET_OFF`).
pub const SKF_NET_OFF: i32 = -0x100000;

/// Instruction classes, sizes, modes and operations of classic BPF (`linux/bpf_common.h`).
#[allow(missing_docs)]
pub mod op {
    pub const LD: u16 = 0x00;
    pub const LDX: u16 = 0x01;
    pub const ST: u16 = 0x02;
    pub const STX: u16 = 0x03;
    pub const ALU: u16 = 0x04;
    pub const JMP: u16 = 0x05;
    pub const RET: u16 = 0x06;
    pub const MISC: u16 = 0x07;
    pub const W: u16 = 0x00;
    pub const H: u16 = 0x08;
    pub const B: u16 = 0x10;
    pub const IMM: u16 = 0x00;
    pub const ABS: u16 = 0x20;
    pub const IND: u16 = 0x40;
    pub const MEM: u16 = 0x60;
    pub const LEN: u16 = 0x80;
    pub const MSH: u16 = 0xa0;
    pub const ADD: u16 = 0x00;
    pub const SUB: u16 = 0x10;
    pub const MUL: u16 = 0x20;
    pub const DIV: u16 = 0x30;
    pub const OR: u16 = 0x40;
    pub const AND: u16 = 0x50;
    pub const LSH: u16 = 0x60;
    pub const RSH: u16 = 0x70;
    pub const NEG: u16 = 0x80;
    pub const MOD: u16 = 0x90;
    pub const XOR: u16 = 0xa0;
    pub const JA: u16 = 0x00;
    pub const JEQ: u16 = 0x10;
    pub const JGT: u16 = 0x20;
    pub const JGE: u16 = 0x30;
    pub const JSET: u16 = 0x40;
    pub const K: u16 = 0x00;
    pub const X: u16 = 0x08;
    pub const A: u16 = 0x10;
    pub const TAX: u16 = 0x00;
    pub const TXA: u16 = 0x80;
}

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Insn {
    /// Opcode: class | size | mode, or class | operation | source.
    pub code: u16,
    /// Jump offset if true (conditional jumps).
    pub jt: u8,
    /// Jump offset if false (conditional jumps).
    pub jf: u8,
    /// The constant operand.
    pub k: u32,
}

impl Insn {
    const fn new(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
        Insn { code, jt, jf, k }
    }

    /// `A = word at network header + off`.
    pub const fn ld_net_w(off: u32) -> Insn {
        Insn::new(op::LD | op::W | op::ABS, 0, 0, SKF_NET_OFF as u32 + off)
    }

    /// `A = byte at network header + off`.
    pub const fn ld_net_b(off: u32) -> Insn {
        Insn::new(op::LD | op::B | op::ABS, 0, 0, SKF_NET_OFF as u32 + off)
    }

    /// `A = byte at data offset off` (a listener's socket filter sees the TCP header at 0).
    pub const fn ld_b(off: u32) -> Insn {
        Insn::new(op::LD | op::B | op::ABS, 0, 0, off)
    }

    /// `A = M[i]`.
    pub const fn ld_mem(i: u32) -> Insn {
        Insn::new(op::LD | op::MEM, 0, 0, i)
    }

    /// `M[i] = A`.
    pub const fn st(i: u32) -> Insn {
        Insn::new(op::ST, 0, 0, i)
    }

    /// `A &= k`.
    pub const fn and(k: u32) -> Insn {
        Insn::new(op::ALU | op::AND | op::K, 0, 0, k)
    }

    /// `A >>= k`.
    pub const fn rsh(k: u32) -> Insn {
        Insn::new(op::ALU | op::RSH | op::K, 0, 0, k)
    }

    /// `pc += jt if A == k else jf`.
    pub const fn jeq(k: u32, jt: u8, jf: u8) -> Insn {
        Insn::new(op::JMP | op::JEQ | op::K, jt, jf, k)
    }

    /// `pc += jt if A & k != 0 else jf`.
    pub const fn jset(k: u32, jt: u8, jf: u8) -> Insn {
        Insn::new(op::JMP | op::JSET | op::K, jt, jf, k)
    }

    /// `pc += k`.
    pub const fn ja(k: u32) -> Insn {
        Insn::new(op::JMP | op::JA, 0, 0, k)
    }

    /// `return k`.
    pub const fn ret(k: u32) -> Insn {
        Insn::new(op::RET | op::K, 0, 0, k)
    }
}

impl fmt::Display for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.k;
        let abs = |k: u32| {
            let net = k.wrapping_sub(SKF_NET_OFF as u32);
            if net < 0x10_0000 {
                format!("[net+{net}]")
            } else {
                format!("[{k}]")
            }
        };
        let alu = |o| match o {
            op::ADD => "add",
            op::SUB => "sub",
            op::MUL => "mul",
            op::DIV => "div",
            op::OR => "or",
            op::AND => "and",
            op::LSH => "lsh",
            op::RSH => "rsh",
            op::NEG => "neg",
            op::MOD => "mod",
            op::XOR => "xor",
            _ => "alu?",
        };
        match self.code & 0x07 {
            op::LD => match self.code & 0xe0 {
                op::ABS => {
                    let s = ["ld", "ldh", "ldb", "ld?"][((self.code & 0x18) >> 3) as usize];
                    write!(f, "{s} {}", abs(k))
                }
                op::MEM => write!(f, "ld M[{k}]"),
                op::IMM => write!(f, "ld #{k:#x}"),
                op::LEN => write!(f, "ld len"),
                _ => write!(f, "ld? {:#06x} {k:#x}", self.code),
            },
            op::LDX => match self.code & 0xe0 {
                op::MEM => write!(f, "ldx M[{k}]"),
                op::IMM => write!(f, "ldx #{k:#x}"),
                _ => write!(f, "ldx? {:#06x} {k:#x}", self.code),
            },
            op::ST => write!(f, "st M[{k}]"),
            op::STX => write!(f, "stx M[{k}]"),
            op::ALU => {
                let src = if self.code & op::X != 0 {
                    "x".to_string()
                } else {
                    format!("#{k:#x}")
                };
                write!(f, "{} {src}", alu(self.code & 0xf0))
            }
            op::JMP => match self.code & 0xf0 {
                op::JA => write!(f, "ja +{k}"),
                o => {
                    let n = match o {
                        op::JEQ => "jeq",
                        op::JGT => "jgt",
                        op::JGE => "jge",
                        op::JSET => "jset",
                        _ => "j?",
                    };
                    write!(f, "{n} #{k:#x}, +{}, +{}", self.jt, self.jf)
                }
            },
            op::RET => {
                if self.code & op::A != 0 {
                    write!(f, "ret a")
                } else {
                    write!(f, "ret #{k}")
                }
            }
            _ => write!(
                f,
                "{}",
                if self.code & op::TXA != 0 {
                    "txa"
                } else {
                    "tax"
                }
            ),
        }
    }
}

/// A checked classic BPF program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program(Vec<Insn>);

impl Program {
    /// A program of hand-written instructions (the kernel checks it when attached).
    pub fn from_insns(insns: Vec<Insn>) -> Program {
        Program(insns)
    }

    /// The instructions.
    pub fn insns(&self) -> &[Insn] {
        &self.0
    }

    /// The number of instructions.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the program is empty (never true for a compiled program).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The program as `socket2` filters, for `SO_ATTACH_FILTER`.
    pub fn to_sock_filters(&self) -> Vec<socket2::SockFilter> {
        self.0
            .iter()
            .map(|i| socket2::SockFilter::new(i.code, i.jt, i.jf, i.k))
            .collect()
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, insn) in self.0.iter().enumerate() {
            writeln!(f, "{i:4}: {insn}")?;
        }
        Ok(())
    }
}

/// The steering program would exceed the kernel's limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the steering program needs {insns} instructions, more than the kernel's {max}: list fewer prefixes ({prefixes} now), or merge neighbouring ones into shorter prefixes"
)]
pub struct TooLarge {
    /// Instructions needed.
    pub insns: usize,
    /// The kernel's limit.
    pub max: usize,
    /// Prefixes in the filters.
    pub prefixes: usize,
}

/// The filter of a black-hole member: drops every packet with SYN set (a listener's filter
/// sees the TCP header at offset 0; byte 13 holds the flags), so no SYN-ACK is sent and no
/// request is queued; other packets (the last ACK of a handshake started before the member
/// became a black hole) pass.
pub fn syn_drop() -> Program {
    Program(vec![
        Insn::ld_b(13),
        Insn::jset(0x02, 0, 1),
        Insn::ret(0),
        Insn::ret(u32::MAX),
    ])
}

/// Compiles a group's steering into the program for `SO_ATTACH_REUSEPORT_CBPF`.
pub fn compile(s: &Steering) -> Result<Program, TooLarge> {
    use super::filter::Stack;
    let default = s
        .filters()
        .iter()
        .position(|f| f.is_complement())
        .unwrap_or(0) as u32;
    let mut p = Vec::new();
    match s.stack() {
        Stack::V4 => v4_block(s, &mut p, default),
        Stack::V6Only => v6_block(s, &mut p, default),
        Stack::Dual => {
            // Version nibble: 4 falls through to the IPv4 block, anything else jumps over it.
            p.push(Insn::ld_net_b(0));
            p.push(Insn::rsh(4));
            p.push(Insn::jeq(4, 1, 0));
            let ja = p.len();
            p.push(Insn::ja(0));
            v4_block(s, &mut p, default);
            p[ja].k = (p.len() - ja - 1) as u32;
            v6_block(s, &mut p, default);
        }
    }
    if p.len() > MAX_INSNS {
        return Err(TooLarge {
            insns: p.len(),
            max: MAX_INSNS,
            prefixes: s.filters().iter().map(|f| f.prefix_set().len()).sum(),
        });
    }
    Ok(Program(p))
}

fn v4_mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

fn v4_parts(p: &IpNet) -> (u8, u32) {
    match p {
        IpNet::V4(n) => (n.prefix_len(), u32::from(n.network())),
        IpNet::V6(_) => unreachable!("IPv4 rules only"),
    }
}

/// Source in M[0]; positive rules grouped by length; complements; a final explicit index.
fn v4_block(s: &Steering, p: &mut Vec<Insn>, default: u32) {
    p.push(Insn::ld_net_w(12));
    p.push(Insn::st(0));
    let rules = s.positive(true);
    let mut i = 0;
    while i < rules.len() {
        let (len, _) = v4_parts(&rules[i].0);
        if len == 0 {
            // 0.0.0.0/0 matches everything left: nothing after it is reachable.
            p.push(Insn::ret(rules[i].1 as u32));
            return;
        }
        p.push(Insn::ld_mem(0));
        if len < 32 {
            p.push(Insn::and(v4_mask(len)));
        }
        while i < rules.len() && v4_parts(&rules[i].0).0 == len {
            let (_, net) = v4_parts(&rules[i].0);
            p.push(Insn::jeq(net, 0, 1));
            p.push(Insn::ret(rules[i].1 as u32));
            i += 1;
        }
    }
    for (member, ex) in s.complements(true) {
        let mut skips = Vec::new();
        let mut never = false;
        for e in &ex {
            let (len, net) = v4_parts(e);
            if len == 0 {
                never = true;
                break;
            }
            p.push(Insn::ld_mem(0));
            p.push(Insn::and(v4_mask(len)));
            p.push(Insn::jeq(net, 0, 1));
            skips.push(p.len());
            p.push(Insn::ja(0));
        }
        if never {
            // Excludes every IPv4 source: this member takes none of them.
            p.truncate(p.len() - 4 * skips.len());
            continue;
        }
        p.push(Insn::ret(member as u32));
        for at in skips {
            p[at].k = (p.len() - at - 1) as u32;
        }
    }
    // Unreachable for checked steering (every source is covered); an explicit index all the same.
    p.push(Insn::ret(default));
}

/// The (word, mask, value) tests of an IPv6 prefix, against the source in M[0..4].
fn v6_tests(p: &IpNet) -> Vec<(u32, u32, u32)> {
    let IpNet::V6(n) = p else {
        unreachable!("IPv6 rules only")
    };
    let bits = u128::from(n.network());
    let len = n.prefix_len() as u32;
    let mut tests = Vec::new();
    let mut w = 0;
    while w * 32 < len {
        let word = (bits >> (96 - 32 * w)) as u32;
        let take = (len - w * 32).min(32);
        let mask = if take == 32 {
            u32::MAX
        } else {
            u32::MAX << (32 - take)
        };
        tests.push((w, mask, word));
        w += 1;
    }
    tests
}

/// Emits tests that fall through when all hold and jump past `then` otherwise.
fn v6_match(p: &mut Vec<Insn>, tests: &[(u32, u32, u32)], then: &[Insn]) {
    let start = p.len();
    let mut jumps = Vec::new();
    for &(w, mask, val) in tests {
        p.push(Insn::ld_mem(w));
        if mask != u32::MAX {
            p.push(Insn::and(mask));
        }
        jumps.push(p.len());
        p.push(Insn::jeq(val, 0, 0));
    }
    p.extend_from_slice(then);
    let end = p.len();
    for j in jumps {
        // Blocks are at most 13 instructions long, so the offset fits in a byte.
        p[j].jf = (end - j - 1) as u8;
    }
    debug_assert!(end - start <= 16);
}

fn v6_block(s: &Steering, p: &mut Vec<Insn>, default: u32) {
    for w in 0..4 {
        p.push(Insn::ld_net_w(8 + 4 * w));
        p.push(Insn::st(w));
    }
    for (prefix, member) in s.positive(false) {
        let tests = v6_tests(&prefix);
        if tests.is_empty() {
            p.push(Insn::ret(member as u32));
            return;
        }
        v6_match(p, &tests, &[Insn::ret(member as u32)]);
    }
    for (member, ex) in s.complements(false) {
        if ex.iter().any(|e| e.prefix_len() == 0) {
            continue;
        }
        let mut skips = Vec::new();
        for e in &ex {
            v6_match(p, &v6_tests(e), &[Insn::ja(0)]);
            skips.push(p.len() - 1);
        }
        p.push(Insn::ret(member as u32));
        for at in skips {
            p[at].k = (p.len() - at - 1) as u32;
        }
    }
    p.push(Insn::ret(default));
}

/// A classic BPF interpreter with the kernel's checks, for tests: runs a program on a packet
/// given as its network header (with what follows) and the bytes at data offset 0.
#[cfg(test)]
pub(crate) mod interp {
    use super::{Insn, SKF_NET_OFF, op};

    /// A packet as a program sees it.
    pub struct Packet<'a> {
        /// From the network header on.
        pub net: &'a [u8],
        /// From data offset 0 on (the TCP header for a socket filter).
        pub data: &'a [u8],
    }

    /// The kernel's static checks (`bpf_check_classic`): known opcodes, jumps in range,
    /// scratch memory in range, and a return at the end.
    pub fn check(prog: &[Insn]) -> Result<(), String> {
        if prog.is_empty() || prog.len() > super::MAX_INSNS {
            return Err(format!("bad length {}", prog.len()));
        }
        for (pc, i) in prog.iter().enumerate() {
            let left = prog.len() - pc - 1;
            match i.code & 0x07 {
                op::JMP => {
                    if i.code & 0xf0 == op::JA {
                        if i.k as usize >= left {
                            return Err(format!("{pc}: ja out of range"));
                        }
                    } else if i.jt as usize >= left || i.jf as usize >= left {
                        return Err(format!("{pc}: jump out of range"));
                    }
                }
                op::ST | op::STX if i.k >= 16 => {
                    return Err(format!("{pc}: scratch out of range"));
                }
                op::LD | op::LDX if i.code & 0xe0 == op::MEM && i.k >= 16 => {
                    return Err(format!("{pc}: scratch out of range"));
                }
                _ => {}
            }
        }
        match prog.last() {
            Some(i) if i.code & 0x07 == op::RET => Ok(()),
            _ => Err("does not end with ret".into()),
        }
    }

    fn load(pkt: &Packet<'_>, k: u32, size: usize) -> Option<u32> {
        let (buf, off) = if (k as i32) < 0 {
            let rel = (k as i32).wrapping_sub(SKF_NET_OFF);
            if !(0..0x10_0000).contains(&rel) {
                return None;
            }
            (pkt.net, rel as usize)
        } else {
            (pkt.data, k as usize)
        };
        let b = buf.get(off..off + size)?;
        Some(b.iter().fold(0u32, |acc, &x| (acc << 8) | x as u32))
    }

    /// Runs a checked program. A load out of the packet ends it with 0, as in the kernel.
    pub fn run(prog: &[Insn], pkt: &Packet<'_>) -> u32 {
        check(prog).expect("program passes the kernel's checks");
        let (mut a, mut x, mut m) = (0u32, 0u32, [0u32; 16]);
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            pc += 1;
            let src = if i.code & op::X != 0 { x } else { i.k };
            match i.code & 0x07 {
                op::LD => {
                    a = match i.code & 0xe0 {
                        op::ABS => {
                            let size = match i.code & 0x18 {
                                op::W => 4,
                                op::H => 2,
                                _ => 1,
                            };
                            match load(pkt, i.k, size) {
                                Some(v) => v,
                                None => return 0,
                            }
                        }
                        op::MEM => m[i.k as usize],
                        op::IMM => i.k,
                        op::LEN => pkt.data.len() as u32,
                        _ => panic!("unsupported load {:#x}", i.code),
                    }
                }
                op::LDX => {
                    x = match i.code & 0xe0 {
                        op::MEM => m[i.k as usize],
                        op::IMM => i.k,
                        _ => panic!("unsupported ldx {:#x}", i.code),
                    }
                }
                op::ST => m[i.k as usize] = a,
                op::STX => m[i.k as usize] = x,
                op::ALU => {
                    a = match i.code & 0xf0 {
                        op::ADD => a.wrapping_add(src),
                        op::SUB => a.wrapping_sub(src),
                        op::MUL => a.wrapping_mul(src),
                        op::DIV if src == 0 => return 0,
                        op::DIV => a / src,
                        op::MOD if src == 0 => return 0,
                        op::MOD => a % src,
                        op::OR => a | src,
                        op::AND => a & src,
                        op::XOR => a ^ src,
                        op::LSH => a.checked_shl(src).unwrap_or(0),
                        op::RSH => a.checked_shr(src).unwrap_or(0),
                        op::NEG => a.wrapping_neg(),
                        _ => panic!("unsupported alu {:#x}", i.code),
                    }
                }
                op::JMP => {
                    let cond = match i.code & 0xf0 {
                        op::JA => {
                            pc += i.k as usize;
                            continue;
                        }
                        op::JEQ => a == src,
                        op::JGT => a > src,
                        op::JGE => a >= src,
                        op::JSET => a & src != 0,
                        _ => panic!("unsupported jump {:#x}", i.code),
                    };
                    pc += if cond { i.jt } else { i.jf } as usize;
                }
                op::RET => return if i.code & op::A != 0 { a } else { i.k },
                _ => {
                    if i.code & op::TXA != 0 {
                        a = x
                    } else {
                        x = a
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::interp::{Packet, check, run};
    use super::*;
    use crate::listen::filter::{Filter, Stack, Steering};
    use ipnet::{Ipv4Net, Ipv6Net};
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// The network header of a SYN from `src`, followed by a TCP header with SYN set.
    fn syn_from(src: IpAddr) -> (Vec<u8>, Vec<u8>) {
        let mut tcp = vec![0u8; 20];
        tcp[12] = 5 << 4;
        tcp[13] = 0x02;
        let mut net = match src {
            IpAddr::V4(a) => {
                let mut h = vec![0u8; 20];
                h[0] = 0x45;
                h[9] = 6;
                h[12..16].copy_from_slice(&a.octets());
                h[16..20].copy_from_slice(&[10, 0, 0, 1]);
                h
            }
            IpAddr::V6(a) => {
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[6] = 6;
                h[8..24].copy_from_slice(&a.octets());
                h[24..40].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
                h
            }
        };
        net.extend_from_slice(&tcp);
        (net, tcp)
    }

    fn steer(prog: &Program, src: IpAddr) -> u32 {
        let (net, tcp) = syn_from(src);
        // A reuseport program sees data after the TCP header; it never reads there.
        let _ = tcp;
        run(
            prog.insns(),
            &Packet {
                net: &net,
                data: &[],
            },
        )
    }

    fn f(s: &str) -> Filter {
        s.parse().unwrap()
    }

    #[test]
    fn syn_drop_drops_syns_only() {
        let p = syn_drop();
        check(p.insns()).unwrap();
        let (_, mut tcp) = syn_from(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            run(
                p.insns(),
                &Packet {
                    net: &[],
                    data: &tcp
                }
            ),
            0
        );
        tcp[13] = 0x10; // ACK
        assert_ne!(
            run(
                p.insns(),
                &Packet {
                    net: &[],
                    data: &tcp
                }
            ),
            0
        );
        tcp[13] = 0x12; // SYN-ACK has SYN set too
        assert_eq!(
            run(
                p.insns(),
                &Packet {
                    net: &[],
                    data: &tcp
                }
            ),
            0
        );
    }

    #[test]
    fn small_programs_steer_by_source() {
        let s = Steering::new(
            Stack::V4,
            vec![f("any"), f("127.0.0.2/32"), f("127.0.0.3/32")],
        )
        .unwrap();
        let p = compile(&s).unwrap();
        for (a, want) in [("127.0.0.2", 1), ("127.0.0.3", 2), ("127.0.0.4", 0)] {
            assert_eq!(steer(&p, a.parse().unwrap()), want, "{a}\n{p}");
        }
        let s = Steering::new(
            Stack::Dual,
            vec![
                f("any"),
                f("127.0.0.2/32"),
                f("::1/128"),
                f("!2001:db8::/32"),
            ],
        )
        .unwrap();
        let p = compile(&s).unwrap();
        for (a, want) in [
            ("127.0.0.2", 1),
            ("127.0.0.9", 0),
            ("::1", 2),
            ("2001:db8::1", 0),
            ("2001:db9::1", 0),
        ] {
            assert_eq!(steer(&p, a.parse().unwrap()), want, "{a}\n{p}");
        }
    }

    #[test]
    fn a_complement_excluding_everything_takes_nothing() {
        let s = Steering::new(Stack::V4, vec![f("!0.0.0.0/0"), f("any")]).unwrap();
        let p = compile(&s).unwrap();
        assert_eq!(steer(&p, "1.2.3.4".parse().unwrap()), 1);
        let s = Steering::new(Stack::V6Only, vec![f("!::/0"), f("any")]).unwrap();
        let p = compile(&s).unwrap();
        assert_eq!(steer(&p, "::1".parse().unwrap()), 1);
    }

    #[test]
    fn too_many_prefixes_are_refused() {
        let many: Vec<IpNet> = (0..2100u32)
            .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(i << 8), 24).unwrap()))
            .collect();
        let s = Steering::new(Stack::V4, vec![f("any"), Filter::prefixes(many).unwrap()]).unwrap();
        let err = compile(&s).unwrap_err();
        assert_eq!(err.prefixes, 2100);
        assert!(err.insns > MAX_INSNS);
        // 1,500 /24s fit.
        let some: Vec<IpNet> = (0..1500u32)
            .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(i << 8), 24).unwrap()))
            .collect();
        let s = Steering::new(Stack::V4, vec![f("any"), Filter::prefixes(some).unwrap()]).unwrap();
        assert!(compile(&s).unwrap().len() <= MAX_INSNS);
    }

    /// Prefixes drawn from a small pool of networks so that overlaps are common.
    fn v4_prefix() -> impl Strategy<Value = IpNet> {
        (0u32..4, 0u32..4, 0u32..4, 0u8..=32).prop_map(|(a, b, c, len)| {
            let addr = Ipv4Addr::new(10, a as u8 * 64, b as u8 * 64, c as u8 * 64);
            IpNet::V4(Ipv4Net::new(addr, len).unwrap().trunc())
        })
    }

    fn v6_prefix() -> impl Strategy<Value = IpNet> {
        (0u16..4, 0u16..4, 0u16..4, 0u8..=128).prop_map(|(a, b, c, len)| {
            let addr = Ipv6Addr::new(0x2001, 0xdb8, a << 14, 0, b << 14, 0, 0, c << 14);
            IpNet::V6(Ipv6Net::new(addr, len).unwrap().trunc())
        })
    }

    fn v4_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0u32..4, 0u32..4, 0u32..4, 0u8..4).prop_map(|(a, b, c, d)| {
                IpAddr::V4(Ipv4Addr::new(
                    10,
                    a as u8 * 64,
                    b as u8 * 64,
                    c as u8 * 64 + d,
                ))
            }),
            any::<u32>().prop_map(|x| IpAddr::V4(Ipv4Addr::from(x))),
        ]
    }

    fn v6_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0u16..4, 0u16..4, 0u16..4, 0u16..4).prop_map(|(a, b, c, d)| {
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    a << 14,
                    0,
                    b << 14,
                    0,
                    0,
                    (c << 14) + d,
                ))
            }),
            any::<u128>().prop_map(|x| IpAddr::V6(Ipv6Addr::from(x))),
        ]
    }

    /// A random group: filters with random prefixes, some complements, and a default member
    /// somewhere unless `total` is off (then uncovered sets are skipped).
    fn group(prefix: impl Strategy<Value = IpNet> + 'static) -> impl Strategy<Value = Vec<Filter>> {
        let filter =
            (proptest::collection::btree_set(prefix, 0..6), 0u8..4).prop_map(|(set, kind)| {
                if kind == 0 {
                    Filter::Except(set)
                } else {
                    Filter::Prefixes(set)
                }
            });
        (proptest::collection::vec(filter, 1..6), 0usize..8).prop_map(|(mut fs, at)| {
            if at < fs.len() {
                fs.insert(at, Filter::any());
            }
            // A prefix belongs to one member: drop later duplicates.
            let mut seen = std::collections::BTreeSet::new();
            for f in &mut fs {
                if let Filter::Prefixes(set) = f {
                    set.retain(|p| seen.insert(*p));
                }
            }
            fs
        })
    }

    fn dual_prefix() -> impl Strategy<Value = IpNet> {
        prop_oneof![v4_prefix(), v6_prefix()]
    }

    fn agree(stack: Stack, filters: Vec<Filter>, addrs: &[IpAddr]) -> Result<(), TestCaseError> {
        let Ok(s) = Steering::new(stack, filters) else {
            return Ok(()); // uncovered: refused before any program exists
        };
        let p = compile(&s).unwrap();
        check(p.insns()).map_err(TestCaseError::fail)?;
        for &a in addrs {
            let want = s.classify_packet(a).expect("covered");
            prop_assert_eq!(
                steer(&p, a) as usize,
                want,
                "source {} with {:?}\n{}",
                a,
                s,
                p
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn v4_program_agrees_with_the_reference(
            fs in group(v4_prefix()),
            addrs in proptest::collection::vec(v4_addr(), 1..40),
        ) {
            agree(Stack::V4, fs, &addrs)?;
        }

        #[test]
        fn v6_program_agrees_with_the_reference(
            fs in group(v6_prefix()),
            addrs in proptest::collection::vec(v6_addr(), 1..40),
        ) {
            agree(Stack::V6Only, fs, &addrs)?;
        }

        #[test]
        fn dual_program_agrees_with_the_reference(
            fs in group(dual_prefix()),
            addrs in proptest::collection::vec(prop_oneof![v4_addr(), v6_addr()], 1..40),
        ) {
            agree(Stack::Dual, fs, &addrs)?;
        }
    }
}
