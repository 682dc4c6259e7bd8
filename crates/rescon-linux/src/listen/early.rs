//! Early counters: the black holes' prefixes as the kernel's longest-prefix-match tables,
//! each with the SYNs dropped for it at the edge (XDP) and at the black-hole socket, and the
//! SYNs and ACKs the edge sees from every other source, by `/24` (IPv4) and `/64` (IPv6).
//!
//! A group's [`Holes`] is shared by every program that drops for it: the [edge
//! filters](super::edge) on interfaces and the eBPF socket filter of each black-hole member.
//! Moving a prefix into or out of a black hole is one map update, seen by all of them at
//! once; nothing is reloaded. The counters are what the [defense](super::defense) reacts on
//! within milliseconds, with no `sock_diag` dump:
//!
//! - **Drops by prefix** ([`Holes::drops`]): cumulative, so that a quarantined prefix that
//!   keeps flooding is told from one that stopped. A prefix taken out keeps its counts, so
//!   they never go back when it returns.
//! - **Sources** ([`Holes::take_sources`]): SYNs (without ACK) and ACKs to the group's port
//!   from sources not black-holed, by `/24` or `/64`, since the last take. A spoofed flood's
//!   SYNs are never followed by ACKs (their SYN-ACKs go nowhere); a real client's are. The
//!   edge counts an ACK only for a source that sent a SYN in the same period, so the table
//!   holds the period's SYN senders, not every established peer.
//!
//! Without the capability to load eBPF (root), a group has no `Holes`: black holes drop with
//! their classic BPF filter as before, and the defense reads `sock_diag`.
//!
//! ```text
//! LPM trie v4  { prefixlen: u32, addr: [u8; 4] }  -> { edge: u64, socket: u64 }
//! LPM trie v6  { prefixlen: u32, addr: [u8; 16] } -> { edge: u64, socket: u64 }
//! LRU per-CPU hash { family: u32, addr: [u8; 16] (/24 or /64) } -> { syns: u64, acks: u64 }
//! ```

use super::MemberId;
use crate::ebpf::asm::Size::{B, DW, W};
use crate::ebpf::asm::{Asm, Cond, Helper, Insn, R0, R1, R2, R3, R4, R5, R6, R10, Src, be16};
use crate::ebpf::sys::{self, MapSpec, MapType, ProgSpec, ProgType};
use crate::ebpf::{Map, sum_words};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Black-holed prefixes a group holds at most.
pub const MAX_PREFIXES: u32 = 16_384;

/// Sources counted per period at most (the least recently seen are evicted first).
pub const MAX_SOURCES: u32 = 4_096;

/// The prefix length the edge counts IPv4 sources by.
pub const SOURCE_V4_LEN: u8 = 24;
/// The prefix length the edge counts IPv6 sources by.
pub const SOURCE_V6_LEN: u8 = 64;

/// Offsets of a trie value's counters.
pub(crate) const EDGE: i16 = 0;
pub(crate) const SOCKET: i16 = 8;
/// Offsets of a source value's counters.
pub(crate) const SYNS: i16 = 0;
pub(crate) const ACKS: i16 = 8;
/// Source keys: the family word.
pub(crate) const FAMILY_V4: i32 = 4;
pub(crate) const FAMILY_V6: i32 = 6;
pub(crate) const SOURCE_KEY: u32 = 20;

/// SYNs dropped early for one prefix, cumulative.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PrefixDrops {
    /// The black-holed prefix.
    pub prefix: IpNet,
    /// Dropped at an interface by an edge filter.
    pub edge: u64,
    /// Dropped at a black-hole member's socket.
    pub socket: u64,
}

impl PrefixDrops {
    /// Both.
    pub fn total(&self) -> u64 {
        self.edge + self.socket
    }
}

/// What the edge saw from one source prefix since the last take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceCount {
    /// The source's `/24` or `/64`.
    pub prefix: IpNet,
    /// SYNs (without ACK) to the group's port.
    pub syns: u64,
    /// ACKs from it to the port, after a SYN in the same period.
    pub acks: u64,
}

impl SourceCount {
    /// SYNs not answered by an ACK in the period: the half-open connections it made.
    pub fn unanswered(&self) -> u64 {
        self.syns.saturating_sub(self.acks)
    }
}

/// A group's black-holed prefixes and early counters: see the [module docs](self).
pub struct Holes {
    v4: Map,
    v6: Map,
    sources: Map,
    /// The black-hole members' socket filter.
    filter: OwnedFd,
    prefixes: BTreeSet<IpNet>,
    /// Counts of prefixes taken out, added back to their counts if they return.
    retired: BTreeMap<IpNet, (u64, u64)>,
    /// The member each prefix is black-holed for (as of the last [`Holes::set_owned`]).
    owner: BTreeMap<IpNet, MemberId>,
    /// Each prefix's total when last settled, and the drops settled to each owner.
    seen: BTreeMap<IpNet, u64>,
    by_owner: BTreeMap<MemberId, u64>,
}

impl fmt::Debug for Holes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Holes")
            .field("prefixes", &self.prefixes)
            .finish_non_exhaustive()
    }
}

fn trie_key(p: &IpNet) -> Vec<u8> {
    let p = p.trunc();
    let mut k = u32::from(p.prefix_len()).to_ne_bytes().to_vec();
    match p {
        IpNet::V4(n) => k.extend_from_slice(&n.network().octets()),
        IpNet::V6(n) => k.extend_from_slice(&n.network().octets()),
    }
    k
}

fn words(v: &[u8]) -> (u64, u64) {
    let w = sum_words(v, 16, 1);
    (w[0], w[1])
}

impl Holes {
    /// Creates the tables and loads the black-hole socket filter (needs root).
    pub fn new() -> io::Result<Holes> {
        let trie = |name, addr: u32| {
            Map::create(&MapSpec {
                kind: MapType::LpmTrie,
                key: 4 + addr,
                value: 16,
                max_entries: MAX_PREFIXES,
                flags: sys::F_NO_PREALLOC,
                name,
                btf: None,
            })
        };
        let v4 = trie("rescon_holes4", 4)?;
        let v6 = trie("rescon_holes6", 16)?;
        let sources = Map::create(&MapSpec {
            kind: MapType::LruPercpuHash,
            key: SOURCE_KEY,
            value: 16,
            max_entries: MAX_SOURCES,
            flags: 0,
            name: "rescon_sources",
            btf: None,
        })?;
        let insns = socket_filter(v4.as_fd(), v6.as_fd());
        let filter = sys::prog_load(&ProgSpec {
            kind: ProgType::SocketFilter,
            insns: &insns,
            name: "rescon_hole",
            attach: None,
            attach_btf_id: 0,
        })?;
        Ok(Holes {
            v4,
            v6,
            sources,
            filter,
            prefixes: BTreeSet::new(),
            retired: BTreeMap::new(),
            owner: BTreeMap::new(),
            seen: BTreeMap::new(),
            by_owner: BTreeMap::new(),
        })
    }

    fn trie(&self, p: &IpNet) -> &Map {
        match p {
            IpNet::V4(_) => &self.v4,
            IpNet::V6(_) => &self.v6,
        }
    }

    /// Makes `prefixes` the black-holed ones: new ones are added first, then gone ones
    /// removed, so that a prefix merged into a shorter one is never uncovered. IPv4-mapped
    /// IPv6 prefixes are taken as IPv4 (as the filters do).
    pub fn set(&mut self, prefixes: &[IpNet]) -> io::Result<()> {
        let owned: Vec<(IpNet, Option<MemberId>)> = prefixes.iter().map(|p| (*p, None)).collect();
        self.set_owned(&owned)
    }

    /// [`set`](Self::set), with the member each prefix is black-holed for: the drops so far
    /// are settled to the owners they had, and later ones go to these.
    pub(crate) fn set_owned(&mut self, prefixes: &[(IpNet, Option<MemberId>)]) -> io::Result<()> {
        self.settle()?;
        let norm = |p: &IpNet| super::check_prefix(*p).unwrap_or(*p).trunc();
        let want: BTreeSet<IpNet> = prefixes.iter().map(|(p, _)| norm(p)).collect();
        if want.len() > MAX_PREFIXES as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} black-holed prefixes; at most {MAX_PREFIXES}: aggregate them into shorter prefixes",
                    want.len()
                ),
            ));
        }
        for p in want.difference(&self.prefixes) {
            self.trie(p)
                .set(&trie_key(p), &[0u8; 16], sys::NOEXIST)
                .or_else(|e| {
                    if e.raw_os_error() == Some(libc::EEXIST) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
        }
        let gone: Vec<IpNet> = self.prefixes.difference(&want).copied().collect();
        for p in gone {
            let key = trie_key(&p);
            if let Some(v) = self.trie(&p).get(&key)? {
                let (e, s) = words(&v);
                let r = self.retired.entry(p).or_default();
                r.0 += e;
                r.1 += s;
            }
            self.trie(&p).delete(&key)?;
        }
        self.prefixes = want;
        self.owner = prefixes
            .iter()
            .filter_map(|(p, m)| m.map(|m| (norm(p), m)))
            .collect();
        Ok(())
    }

    /// Gives each prefix's drops since the last settling to its owner.
    fn settle(&mut self) -> io::Result<()> {
        for d in self.drops()? {
            let last = self.seen.insert(d.prefix, d.total()).unwrap_or(0);
            let delta = d.total().saturating_sub(last);
            if let (true, Some(m)) = (delta > 0, self.owner.get(&d.prefix)) {
                *self.by_owner.entry(*m).or_default() += delta;
            }
        }
        Ok(())
    }

    /// The black-holed prefixes.
    pub fn prefixes(&self) -> impl Iterator<Item = &IpNet> {
        self.prefixes.iter()
    }

    /// SYNs dropped for every prefix ever black-holed (cumulative), by prefix.
    pub fn drops(&self) -> io::Result<Vec<PrefixDrops>> {
        let mut by: BTreeMap<IpNet, (u64, u64)> = self.retired.clone();
        for p in &self.prefixes {
            if let Some(v) = self.trie(p).get(&trie_key(p))? {
                let (e, s) = words(&v);
                let r = by.entry(*p).or_default();
                r.0 += e;
                r.1 += s;
            }
        }
        Ok(by
            .into_iter()
            .map(|(prefix, (edge, socket))| PrefixDrops {
                prefix,
                edge,
                socket,
            })
            .collect())
    }

    /// SYNs dropped early for each member, cumulative and never decreasing: each drop goes
    /// to the member its prefix was black-holed for when it was dropped (settled at every
    /// change of the prefixes and at every call). Prefixes set without an owner give
    /// nobody anything.
    pub fn drops_by_owner(&mut self) -> io::Result<Vec<(MemberId, u64)>> {
        self.settle()?;
        Ok(self.by_owner.iter().map(|(m, n)| (*m, *n)).collect())
    }

    /// Takes what the edge filters counted by source since the last take.
    pub fn take_sources(&self) -> io::Result<Vec<SourceCount>> {
        let entries = self.sources.read_all(true)?;
        let mut out: BTreeMap<IpNet, (u64, u64)> = BTreeMap::new();
        for (k, v) in entries.iter() {
            let Some(prefix) = source_prefix(k) else {
                continue;
            };
            let w = self.sources.sum_u64s(v);
            let e = out.entry(prefix).or_default();
            e.0 += w[0];
            e.1 += w[1];
        }
        Ok(out
            .into_iter()
            .map(|(prefix, (syns, acks))| SourceCount { prefix, syns, acks })
            .collect())
    }

    /// Attaches the black-hole socket filter to a member's listener (replacing its filter).
    pub(crate) fn attach_filter(&self, sock: BorrowedFd<'_>) -> io::Result<()> {
        sys::attach_socket_bpf(sock, self.filter.as_fd())
    }

    pub(crate) fn maps(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>, BorrowedFd<'_>) {
        (self.v4.as_fd(), self.v6.as_fd(), self.sources.as_fd())
    }
}

/// A group's tables, if this process may load eBPF (else the group works without them).
pub(crate) fn open_holes() -> Option<Holes> {
    match Holes::new() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::debug!(error = %e, "no early counters (eBPF): black holes drop with classic BPF");
            None
        }
    }
}

/// The prefix of a source key.
fn source_prefix(k: &[u8]) -> Option<IpNet> {
    let fam = u32::from_ne_bytes(k.get(..4)?.try_into().ok()?);
    let a = k.get(4..20)?;
    match fam {
        4 => Some(IpNet::V4(
            Ipv4Net::new(Ipv4Addr::new(a[0], a[1], a[2], a[3]), SOURCE_V4_LEN)
                .ok()?
                .trunc(),
        )),
        6 => {
            let b: [u8; 16] = a.try_into().ok()?;
            Some(IpNet::V6(
                Ipv6Net::new(Ipv6Addr::from(b), SOURCE_V6_LEN).ok()?.trunc(),
            ))
        }
        _ => None,
    }
}

/// `BPF_HDR_START_NET` of `bpf_skb_load_bytes_relative`.
const HDR_START_NET: i32 = 1;

/// The black-hole members' socket filter: drops every packet with SYN set (as
/// `bpf::syn_drop` does: the last ACK of a handshake begun before the member became a
/// black hole passes) and counts it for the longest black-holed prefix holding its source.
/// A listener's filter sees the TCP header at offset 0; the IP header is read relative to
/// the network header.
pub(crate) fn socket_filter(v4: BorrowedFd<'_>, v6: BorrowedFd<'_>) -> Vec<Insn> {
    let mut a = Asm::new();
    let count = a.label();
    let ip6 = a.label();
    let found = a.label();
    let drop = a.label();
    a.mov(R6, R1)
        .ld_abs(B, 13)
        .jmp(Cond::Set, R0, Src::Imm(0x02), count)
        .mov_imm(R0, -1)
        .exit();
    a.place(count);
    // __sk_buff.protocol: the ethertype, in network order.
    a.ldx(W, R2, R6, 16)
        .jmp(Cond::Eq, R2, Src::Imm(be16(0x86dd)), ip6)
        .jmp(Cond::Ne, R2, Src::Imm(be16(0x0800)), drop);
    // IPv4: the source (at 12 in the IP header) after the key's prefix length.
    a.mov(R1, R6)
        .mov_imm(R2, 12)
        .mov(R3, R10)
        .add_imm(R3, -4)
        .mov_imm(R4, 4)
        .mov_imm(R5, HDR_START_NET)
        .call(Helper::SkbLoadBytesRelative)
        .jmp(Cond::Ne, R0, Src::Imm(0), drop)
        .st_imm(W, R10, -8, 32)
        .ld_map(R1, v4)
        .mov(R2, R10)
        .add_imm(R2, -8)
        .call(Helper::MapLookupElem)
        .ja(found);
    // IPv6: the source at 8.
    a.place(ip6);
    a.mov(R1, R6)
        .mov_imm(R2, 8)
        .mov(R3, R10)
        .add_imm(R3, -16)
        .mov_imm(R4, 16)
        .mov_imm(R5, HDR_START_NET)
        .call(Helper::SkbLoadBytesRelative)
        .jmp(Cond::Ne, R0, Src::Imm(0), drop)
        .st_imm(W, R10, -20, 128)
        .ld_map(R1, v6)
        .mov(R2, R10)
        .add_imm(R2, -20)
        .call(Helper::MapLookupElem);
    a.place(found);
    a.jmp(Cond::Eq, R0, Src::Imm(0), drop)
        .mov_imm(R1, 1)
        .atomic_add(DW, R0, SOCKET, R1);
    a.place(drop);
    a.mov_imm(R0, 0).exit();
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebpf::asm::check_shape;

    #[test]
    fn the_socket_filter_tests_syn_then_counts_by_family() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let g = std::fs::File::open("/dev/null").unwrap();
        let p = socket_filter(f.as_fd(), g.as_fd());
        check_shape(&p).unwrap();
        // LD_ABS of the flags byte, then the SYN bit.
        assert_eq!((p[1].code, p[1].imm), (0x30, 13));
        assert_eq!((p[2].code & 0xf0, p[2].imm), (0x40, 0x02));
        // Two exits: pass (all ones) and drop (0).
        let exits: Vec<usize> = (0..p.len()).filter(|&i| p[i].code == 0x95).collect();
        assert_eq!(exits.len(), 2);
        assert_eq!(p[exits[0] - 1].imm, -1);
        assert_eq!(p[exits[1] - 1].imm, 0);
        // Keys of 32 and 128 bits.
        assert!(
            p.iter()
                .any(|i| i.code == 0x62 && i.imm == 32 && i.off == -8)
        );
        assert!(
            p.iter()
                .any(|i| i.code == 0x62 && i.imm == 128 && i.off == -20)
        );
    }

    #[test]
    fn keys_and_source_prefixes() {
        let k = trie_key(&"10.1.2.3/16".parse().unwrap());
        assert_eq!(k, [16u32.to_ne_bytes().as_slice(), &[10, 1, 0, 0]].concat());
        let k6 = trie_key(&"2001:db8::/32".parse().unwrap());
        assert_eq!(k6.len(), 20);
        // As the edge writes them: the family word, then the /24 or /64, zero-padded.
        let mut s = vec![0u8; SOURCE_KEY as usize];
        s[..4].copy_from_slice(&4u32.to_ne_bytes());
        s[4..7].copy_from_slice(&[198, 19, 7]);
        assert_eq!(source_prefix(&s), Some("198.19.7.0/24".parse().unwrap()));
        let mut s6 = vec![0u8; SOURCE_KEY as usize];
        s6[..4].copy_from_slice(&6u32.to_ne_bytes());
        s6[4..12].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2]);
        assert_eq!(
            source_prefix(&s6),
            Some("2001:db8:1:2::/64".parse().unwrap())
        );
        assert_eq!(source_prefix(&[9, 0, 0, 0]), None);
        let c = SourceCount {
            prefix: "198.19.7.0/24".parse().unwrap(),
            syns: 5,
            acks: 9,
        };
        assert_eq!(c.unanswered(), 0);
    }
}
