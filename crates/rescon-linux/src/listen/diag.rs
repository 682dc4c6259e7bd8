//! Half-open connections through `sock_diag` (`NETLINK_SOCK_DIAG`, `inet_diag`): dump the
//! SYN_RECV sockets of a port, count them by source prefix, and destroy those of flooding
//! sources so that a SYN queue filled before the flood was steered away empties at once.
//!
//! The messages are two fixed structs (`inet_diag_req_v2`, `inet_diag_msg`) behind a
//! `nlmsghdr`; encoding and decoding them is a few pure functions tested on literal bytes,
//! which is less code and fewer crates than a general netlink library.
//!
//! ```no_run
//! use rescon_linux::listen::diag::{Diag, by_prefix};
//! let mut diag = Diag::open().unwrap();
//! let half_open = diag.syn_recv(8080).unwrap();
//! for (prefix, n) in by_prefix(&half_open, 24, 64) {
//!     println!("{prefix}: {n} half-open");
//! }
//! ```

use super::error::Error;
use super::filter::unmap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
#[cfg(test)]
const NLM_F_MULTI: u16 = 0x02;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_DUMP: u16 = 0x300;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const REQ_LEN: usize = 56;
const MSG_LEN: usize = 72;
/// `TCP_SYN_RECV` of `include/net/tcp_states.h`.
pub const TCP_SYN_RECV: u8 = 3;
const INET_DIAG_NOCOOKIE: u32 = !0;
/// Destroy requests per `sendmsg` (each ack is 36 bytes: 500 fit any receive buffer).
const DESTROY_BATCH: usize = 500;

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// One socket of a dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    /// TCP state (`TCP_SYN_RECV` for half-open connections).
    pub state: u8,
    /// SYN-ACK retransmissions so far.
    pub retrans: u8,
    /// The server's end.
    pub local: SocketAddr,
    /// The client's end: the source of the SYN.
    pub remote: SocketAddr,
    /// The bound interface index (0: none).
    pub iface: u32,
    /// The kernel's cookie for this socket.
    pub cookie: [u32; 2],
}

/// Encodes a `SOCK_DIAG_BY_FAMILY` dump request for TCP sockets in `states` (a bit mask of
/// `1 << state`) of one family, asking the kernel to match local port `port` (0: any).
pub fn encode_dump(seq: u32, family: u8, states: u32, port: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HDRLEN + REQ_LEN);
    header(&mut b, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq);
    b.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    b.extend_from_slice(&states.to_ne_bytes());
    let mut id = [0u8; 48];
    id[0..2].copy_from_slice(&port.to_be_bytes());
    id[44..48].copy_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    id[40..44].copy_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    b.extend_from_slice(&id);
    b
}

/// Appends a `SOCK_DESTROY` request for one socket (acknowledged).
pub fn encode_destroy(b: &mut Vec<u8>, seq: u32, s: &DiagSocket) {
    header(b, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, seq);
    let family = match s.local {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    } as u8;
    b.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    b.extend_from_slice(&u32::MAX.to_ne_bytes());
    let mut id = [0u8; 48];
    id[0..2].copy_from_slice(&s.local.port().to_be_bytes());
    id[2..4].copy_from_slice(&s.remote.port().to_be_bytes());
    put_addr(&mut id[4..20], s.local.ip());
    put_addr(&mut id[20..36], s.remote.ip());
    id[36..40].copy_from_slice(&s.iface.to_ne_bytes());
    id[40..44].copy_from_slice(&s.cookie[0].to_ne_bytes());
    id[44..48].copy_from_slice(&s.cookie[1].to_ne_bytes());
    b.extend_from_slice(&id);
}

fn header(b: &mut Vec<u8>, kind: u16, flags: u16, seq: u32) {
    b.extend_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
}

fn put_addr(dst: &mut [u8], ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => dst[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => dst.copy_from_slice(&a.octets()),
    }
}

fn u16_ne(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

fn u32_ne(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// One netlink message decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A socket of a dump.
    Socket(DiagSocket),
    /// The end of a dump.
    Done,
    /// An acknowledgement (`errno` 0) or an error (`errno` > 0) for request `seq`.
    Ack {
        /// The request's sequence number.
        seq: u32,
        /// 0, or the error number.
        errno: i32,
    },
}

/// Decodes the netlink messages in one datagram.
pub fn decode(buf: &[u8]) -> Result<Vec<Reply>, Error> {
    let bad = |detail: String| Error::Parse {
        what: "sock_diag reply",
        detail,
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_ne(&buf[at..]) as usize;
        let kind = u16_ne(&buf[at + 4..]);
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(bad(format!(
                "message of length {len} at {at} in {} bytes",
                buf.len()
            )));
        }
        let body = &buf[at + NLMSG_HDRLEN..at + len];
        match kind {
            NLMSG_DONE => out.push(Reply::Done),
            NLMSG_ERROR => {
                if body.len() < 4 + NLMSG_HDRLEN {
                    return Err(bad(format!("short error message ({} bytes)", body.len())));
                }
                let err = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                let seq = u32_ne(&body[4 + 8..]);
                out.push(Reply::Ack { seq, errno: -err });
            }
            SOCK_DIAG_BY_FAMILY => out.push(Reply::Socket(decode_msg(body).map_err(bad)?)),
            other => return Err(bad(format!("unexpected message type {other}"))),
        }
        at += align(len);
    }
    Ok(out)
}

fn decode_msg(b: &[u8]) -> Result<DiagSocket, String> {
    if b.len() < MSG_LEN {
        return Err(format!(
            "inet_diag_msg of {} bytes, expected {MSG_LEN}",
            b.len()
        ));
    }
    let family = b[0] as i32;
    let id = &b[4..52];
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let addr = |raw: &[u8]| -> Result<IpAddr, String> {
        match family {
            libc::AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            libc::AF_INET6 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&raw[..16]);
                Ok(IpAddr::V6(Ipv6Addr::from(o)))
            }
            f => Err(format!("address family {f}")),
        }
    };
    Ok(DiagSocket {
        state: b[1],
        retrans: b[3],
        local: SocketAddr::new(addr(&id[4..20])?, sport),
        remote: SocketAddr::new(addr(&id[20..36])?, dport),
        iface: u32_ne(&id[36..]),
        cookie: [u32_ne(&id[40..]), u32_ne(&id[44..])],
    })
}

/// Counts sockets by the prefix of their remote address: `/v4_len` for IPv4 (IPv4-mapped
/// included), `/v6_len` for IPv6. Largest counts first.
pub fn by_prefix(socks: &[DiagSocket], v4_len: u8, v6_len: u8) -> Vec<(IpNet, u32)> {
    let mut counts: HashMap<IpNet, u32> = HashMap::new();
    for s in socks {
        let net = match unmap(s.remote.ip()) {
            IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, v4_len.min(32)).expect("len").trunc()),
            IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, v6_len.min(128)).expect("len").trunc()),
        };
        *counts.entry(net).or_default() += 1;
    }
    let mut v: Vec<(IpNet, u32)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// What a destroy pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Destroyed {
    /// Sockets destroyed.
    pub destroyed: usize,
    /// Sockets already gone (completed or expired) when asked.
    pub gone: usize,
    /// Sockets the kernel refused to destroy.
    pub failed: usize,
}

/// A `NETLINK_SOCK_DIAG` socket in the calling thread's network namespace.
#[derive(Debug)]
pub struct Diag {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Diag {
    /// Opens the netlink socket (in the network namespace of the calling thread).
    pub fn open() -> Result<Diag, Error> {
        let sock = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(libc::NETLINK_SOCK_DIAG)),
        )
        .map_err(|e| Error::diag("open", e))?;
        // A reply that never comes must not hang the caller.
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| Error::diag("open", e))?;
        Ok(Diag {
            sock,
            seq: 0,
            buf: vec![0u8; 256 * 1024],
        })
    }

    fn recv(&mut self, op: &'static str) -> Result<Vec<Reply>, Error> {
        let n = loop {
            match (&self.sock).read(&mut self.buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::diag(op, e)),
            }
        };
        decode(&self.buf[..n])
    }

    /// The half-open (SYN_RECV) TCP connections to local port `port`, both families.
    ///
    /// A dump walks the kernel's whole established hash table (every connection and
    /// TIME_WAIT socket of every namespace), so its cost grows with the machine's connection
    /// count: about 1-2 ms per family on an idle 24 GiB machine, 10-50 ms with 100,000
    /// TIME_WAIT sockets. Dump only the families you need ([`syn_recv_of`](Self::syn_recv_of)).
    pub fn syn_recv(&mut self, port: u16) -> Result<Vec<DiagSocket>, Error> {
        self.syn_recv_of(port, true, true)
    }

    /// Like [`syn_recv`](Self::syn_recv), for IPv4 and/or IPv6 request sockets only.
    pub fn syn_recv_of(&mut self, port: u16, v4: bool, v6: bool) -> Result<Vec<DiagSocket>, Error> {
        let mut out = Vec::new();
        let families = [(v4, libc::AF_INET), (v6, libc::AF_INET6)];
        for family in families.into_iter().filter(|f| f.0).map(|f| f.1) {
            self.seq = self.seq.wrapping_add(1);
            let req = encode_dump(self.seq, family as u8, 1 << TCP_SYN_RECV, port);
            self.sock
                .send(&req)
                .map_err(|e| Error::diag("dump SYN_RECV", e))?;
            'dump: loop {
                for r in self.recv("dump SYN_RECV")? {
                    match r {
                        Reply::Socket(s) => {
                            if s.state == TCP_SYN_RECV && s.local.port() == port {
                                out.push(s);
                            }
                        }
                        Reply::Done => break 'dump,
                        Reply::Ack { errno: 0, .. } => {}
                        Reply::Ack { errno, .. } => {
                            return Err(Error::diag(
                                "dump SYN_RECV",
                                io::Error::from_raw_os_error(errno),
                            ));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Destroys sockets found by a dump (`SOCK_DESTROY`; a half-open one is dropped from its
    /// listener's queue without a reset). Needs `CAP_NET_ADMIN` and a kernel with
    /// `CONFIG_INET_DIAG_DESTROY`; a missing capability or support is an error, a socket
    /// already gone is not.
    pub fn destroy(&mut self, socks: &[DiagSocket]) -> Result<Destroyed, Error> {
        let mut d = Destroyed::default();
        for chunk in socks.chunks(DESTROY_BATCH) {
            let first = self.seq.wrapping_add(1);
            let mut b = Vec::with_capacity(chunk.len() * (NLMSG_HDRLEN + REQ_LEN));
            for s in chunk {
                self.seq = self.seq.wrapping_add(1);
                encode_destroy(&mut b, self.seq, s);
            }
            self.sock.send(&b).map_err(|e| Error::diag("destroy", e))?;
            let mut acked = 0;
            while acked < chunk.len() {
                for r in self.recv("destroy")? {
                    let Reply::Ack { seq, errno } = r else {
                        continue;
                    };
                    if seq.wrapping_sub(first) as usize >= chunk.len() {
                        continue;
                    }
                    acked += 1;
                    match errno {
                        0 => d.destroyed += 1,
                        libc::ENOENT => d.gone += 1,
                        libc::EPERM | libc::EACCES | libc::EOPNOTSUPP => {
                            return Err(Error::diag(
                                "destroy",
                                io::Error::from_raw_os_error(errno),
                            ));
                        }
                        _ => d.failed += 1,
                    }
                }
            }
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ne32(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    /// An `inet_diag_msg` reply as the kernel lays it out: a SYN_RECV from 198.19.7.9:40000
    /// to 198.18.1.1:8080, retransmitted once.
    fn reply_v4() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&ne32((NLMSG_HDRLEN + MSG_LEN) as u32));
        b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        b.extend_from_slice(&NLM_F_MULTI.to_ne_bytes());
        b.extend_from_slice(&ne32(7));
        b.extend_from_slice(&ne32(0));
        b.extend_from_slice(&[libc::AF_INET as u8, TCP_SYN_RECV, 1, 1]);
        b.extend_from_slice(&8080u16.to_be_bytes());
        b.extend_from_slice(&40000u16.to_be_bytes());
        b.extend_from_slice(&[198, 18, 1, 1]);
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&[198, 19, 7, 9]);
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&ne32(0)); // if
        b.extend_from_slice(&ne32(0x1234)); // cookie
        b.extend_from_slice(&ne32(0x5678));
        b.extend_from_slice(&[0; 20]); // expires, rqueue, wqueue, uid, inode
        b
    }

    #[test]
    fn dump_request_layout() {
        let r = encode_dump(9, libc::AF_INET as u8, 1 << TCP_SYN_RECV, 8080);
        assert_eq!(r.len(), 72);
        assert_eq!(u32_ne(&r[0..]), 72);
        assert_eq!(u16_ne(&r[4..]), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16_ne(&r[6..]), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(u32_ne(&r[8..]), 9);
        assert_eq!(&r[16..20], &[libc::AF_INET as u8, 6, 0, 0]);
        assert_eq!(u32_ne(&r[20..]), 8);
        assert_eq!(&r[24..26], &[0x1f, 0x90], "port in network order");
    }

    #[test]
    fn decodes_sockets_done_and_errors() {
        let mut b = reply_v4();
        // NLMSG_DONE with its int payload.
        b.extend_from_slice(&ne32(20));
        b.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        b.extend_from_slice(&NLM_F_MULTI.to_ne_bytes());
        b.extend_from_slice(&ne32(7));
        b.extend_from_slice(&ne32(0));
        b.extend_from_slice(&ne32(0));
        // NLMSG_ERROR -ENOENT for request 12.
        b.extend_from_slice(&ne32(36));
        b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&ne32(12));
        b.extend_from_slice(&ne32(0));
        b.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        b.extend_from_slice(&ne32(72));
        b.extend_from_slice(&SOCK_DESTROY.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&ne32(12));
        b.extend_from_slice(&ne32(0));
        let r = decode(&b).unwrap();
        let s = DiagSocket {
            state: TCP_SYN_RECV,
            retrans: 1,
            local: "198.18.1.1:8080".parse().unwrap(),
            remote: "198.19.7.9:40000".parse().unwrap(),
            iface: 0,
            cookie: [0x1234, 0x5678],
        };
        assert_eq!(
            r,
            vec![
                Reply::Socket(s),
                Reply::Done,
                Reply::Ack {
                    seq: 12,
                    errno: libc::ENOENT
                }
            ]
        );
        // A destroy request carries the socket's identity back.
        let mut d = Vec::new();
        encode_destroy(&mut d, 3, &s);
        assert_eq!(d.len(), 72);
        assert_eq!(u16_ne(&d[4..]), SOCK_DESTROY);
        assert_eq!(&d[24..28], &[0x1f, 0x90, 0x9c, 0x40]);
        assert_eq!(&d[28..32], &[198, 18, 1, 1]);
        assert_eq!(&d[44..48], &[198, 19, 7, 9]);
        assert_eq!(u32_ne(&d[64..]), 0x1234);
    }

    #[test]
    fn refuses_truncated_messages() {
        let b = reply_v4();
        assert!(decode(&b[..b.len() - 1]).is_err());
        let mut short = b.clone();
        short[0..4].copy_from_slice(&ne32(40));
        assert!(decode(&short).is_err());
    }

    #[test]
    fn groups_by_source_prefix() {
        let mk = |remote: &str| DiagSocket {
            state: TCP_SYN_RECV,
            retrans: 0,
            local: "[::]:80".parse().unwrap(),
            remote: remote.parse().unwrap(),
            iface: 0,
            cookie: [0, 0],
        };
        let socks = [
            mk("198.19.7.9:1"),
            mk("198.19.7.10:2"),
            mk("[::ffff:198.19.7.11]:3"),
            mk("198.19.8.1:4"),
            mk("[2001:db8::1]:5"),
            mk("[2001:db8::2]:6"),
            mk("[2001:db8:0:1::2]:7"),
        ];
        let g = by_prefix(&socks, 24, 64);
        let s = |p: &str| p.parse::<IpNet>().unwrap();
        assert_eq!(
            g,
            vec![
                (s("198.19.7.0/24"), 3),
                (s("2001:db8::/64"), 2),
                (s("198.19.8.0/24"), 1),
                (s("2001:db8:0:1::/64"), 1),
            ]
        );
    }
}
