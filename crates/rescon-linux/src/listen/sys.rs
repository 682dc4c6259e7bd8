//! The socket options `socket2` does not wrap: one helper per system call, each with its
//! `// SAFETY:` argument. Everything else in [`listen`](super) is safe code.

#![allow(unsafe_code)]

use super::bpf::Insn;
use std::io;
use std::mem::{size_of, size_of_val};
use std::os::fd::{AsRawFd, BorrowedFd};

// The kernel reads `struct sock_filter` through the pointer; `Insn` must have its layout.
const _: () = assert!(size_of::<Insn>() == size_of::<libc::sock_filter>());

/// `TCP_LISTEN` of `include/net/tcp_states.h`.
const TCP_LISTEN: u8 = 10;
/// Entries of the `SO_MEMINFO` array (`SK_MEMINFO_VARS` in `linux/sock_diag.h`).
const SK_MEMINFO_VARS: usize = 9;

/// `setsockopt(SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF)`: attaches (or atomically replaces) the
/// steering program of the reuseport group `fd` belongs to.
///
/// # References
/// - socket(7), `SO_ATTACH_REUSEPORT_CBPF`
pub(crate) fn attach_reuseport_cbpf(fd: BorrowedFd<'_>, prog: &[Insn]) -> io::Result<()> {
    let len = u16::try_from(prog.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fd` is a live socket; `fprog` points at `len` instructions laid out as
    // `struct sock_filter` (checked above) that outlive the call; the kernel copies them.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            size_of_val(&fprog) as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt(IPPROTO_TCP, TCP_INFO)` on a listener: (connections waiting in its accept
/// queue, its accept backlog). For a listener the kernel reports these in `tcpi_unacked`
/// and `tcpi_sacked`.
///
/// # References
/// - tcp(7), `TCP_INFO`; `tcp_get_info()` in `net/ipv4/tcp.c`
pub(crate) fn listener_queue(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    // SAFETY: `tcp_info` is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of_val(&info) as libc::socklen_t;
    // SAFETY: `fd` is a live socket; `info` is writable for `len` bytes and the kernel writes
    // at most `len` bytes, storing the length it wrote in `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if info.tcpi_state != TCP_LISTEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a listening socket",
        ));
    }
    Ok((info.tcpi_unacked, info.tcpi_sacked))
}

/// `getsockopt(SOL_SOCKET, SO_MEMINFO)`: the socket's drop counter (`sk_drops`), which counts,
/// on a listener, the packets its socket filter dropped and the SYNs dropped for a full queue.
///
/// # References
/// - `sk_get_meminfo()` in `net/core/sock.c`
pub(crate) fn socket_drops(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut mem = [0u32; SK_MEMINFO_VARS];
    let mut len = size_of_val(&mem) as libc::socklen_t;
    // SAFETY: `fd` is a live socket; `mem` is writable for `len` bytes and the kernel writes
    // at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            mem.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(mem[libc::SK_MEMINFO_DROPS as usize])
}

/// `TCP_MD5SIG_EXT` of `linux/tcp.h`: `TCP_MD5SIG` with a prefix length.
const TCP_MD5SIG_EXT: libc::c_int = 32;
/// `TCP_MD5SIG_FLAG_PREFIX`: `tcpm_prefixlen` is meaningful.
const TCP_MD5SIG_FLAG_PREFIX: u8 = 1;
/// `TCP_MD5SIG_MAXKEYLEN`.
pub(crate) const TCP_MD5_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` of `linux/tcp.h`.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; TCP_MD5_KEY_LEN],
}

const _: () = assert!(size_of::<TcpMd5Sig>() == 216);

/// `setsockopt(IPPROTO_TCP, TCP_MD5SIG_EXT)`: sets (with `key`) or deletes (without) the
/// RFC 2385 signature key for the sources in `addr/prefixlen`. On a listener the kernel then
/// drops every segment from those sources that is not signed with the key, SYNs included,
/// before it answers them (`tcp_inbound_hash()`); no capability is needed. On an IPv6
/// socket an IPv4-mapped `addr` sets a key for IPv4 sources, with `prefixlen` counted on
/// the IPv4 address.
///
/// # References
/// - tcp(7); `tcp_v4_parse_md5_keys()` in `net/ipv4/tcp_ipv4.c`, `tcp_v6_parse_md5_keys()` in
///   `net/ipv6/tcp_ipv6.c`
pub(crate) fn set_md5_key(
    fd: BorrowedFd<'_>,
    addr: std::net::IpAddr,
    prefixlen: u8,
    key: Option<&[u8; TCP_MD5_KEY_LEN]>,
) -> io::Result<()> {
    // SAFETY: `tcp_md5sig` is plain old data; all-zero is a valid value.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let sa = socket2::SockAddr::from(std::net::SocketAddr::new(addr, 0));
    // SAFETY: `sa` holds `sa.len()` initialized bytes of a socket address, at most the size
    // of the `sockaddr_storage` they are copied into; the two do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr().cast::<u8>(),
            (&raw mut sig.addr).cast::<u8>(),
            sa.len() as usize,
        );
    }
    sig.flags = TCP_MD5SIG_FLAG_PREFIX;
    sig.prefixlen = prefixlen;
    if let Some(k) = key {
        sig.key = *k;
        sig.keylen = TCP_MD5_KEY_LEN as u16;
    }
    // SAFETY: `fd` is a live socket; `sig` is a `struct tcp_md5sig` (layout checked above)
    // that outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_MD5SIG_EXT,
            (&raw const sig).cast(),
            size_of_val(&sig) as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getrandom(2)`: fills `buf` from the kernel's random pool.
pub(crate) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is writable for `rest.len()` bytes; the kernel writes at most that.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// `struct bpf_insn` of `linux/bpf.h`: an extended BPF instruction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EbpfInsn {
    pub code: u8,
    /// Destination register in the low nibble, source in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const _: () = assert!(size_of::<EbpfInsn>() == 8);

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
/// `sizeof(union bpf_attr)` of the kernel headers this was written against; the kernel
/// accepts a shorter or longer union as long as the bytes it does not know are zero.
const ATTR_SIZE: usize = 144;

/// `union bpf_attr`, as bytes: each command sets the fields it uses at their offsets.
struct Attr([u64; ATTR_SIZE / 8]);

impl Attr {
    fn new() -> Attr {
        Attr([0; ATTR_SIZE / 8])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        let word = &mut self.0[off / 8];
        let shift = (off % 8) * 8;
        *word = (*word & !(0xffff_ffff << shift)) | (u64::from(v) << shift);
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off / 8] = v;
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        (self.0[off / 8] >> ((off % 8) * 8)) as u32
    }
    fn call(&mut self, cmd: libc::c_long) -> io::Result<libc::c_long> {
        // SAFETY: `bpf(2)` reads (and for some commands writes) `ATTR_SIZE` bytes at the
        // pointer, which is this live, 8-aligned array; pointers stored in it (instructions,
        // license, log and packet buffers) are set by the callers below to memory that
        // outlives the call, with the sizes they pass.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.0.as_mut_ptr().cast::<libc::c_void>(),
                ATTR_SIZE as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }
}

fn owned_fd(rc: libc::c_long) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `rc` is a file descriptor the kernel just returned to us and nobody else owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(rc as i32) }
}

/// `bpf(BPF_PROG_LOAD)` of an XDP program. On a verifier refusal the error carries the
/// verifier's log.
///
/// # References
/// - bpf(2), `BPF_PROG_LOAD`; `Documentation/bpf/verifier.rst`
pub(crate) fn load_xdp(insns: &[EbpfInsn], name: &str) -> io::Result<std::os::fd::OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = Attr::new();
    attr.u32(0, BPF_PROG_TYPE_XDP)
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(68, BPF_XDP);
    let mut n = [0u8; 16];
    for (d, s) in n.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    attr.u64(48, u64::from_ne_bytes(n[..8].try_into().expect("8 bytes")))
        .u64(56, u64::from_ne_bytes(n[8..].try_into().expect("8 bytes")));
    match attr.call(BPF_PROG_LOAD) {
        Ok(fd) => Ok(owned_fd(fd)),
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            // Load again with the verifier's log, to say why.
            attr.u32(24, 1)
                .u32(28, log.len() as u32)
                .u64(32, log.as_mut_ptr() as u64);
            let again = attr.call(BPF_PROG_LOAD);
            if let Ok(fd) = again {
                return Ok(owned_fd(fd));
            }
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(6).collect();
            Err(io::Error::new(
                e.kind(),
                format!(
                    "{e}; verifier: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ),
            ))
        }
        Err(e) => Err(e),
    }
}

/// `bpf(BPF_LINK_CREATE)` attaching an XDP program to interface `ifindex`: the program stays
/// attached while the returned link is open. `flags` 0 lets the kernel take the driver's
/// XDP when it has one and the generic (skb) one otherwise.
pub(crate) fn xdp_link(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    flags: u32,
) -> io::Result<std::os::fd::OwnedFd> {
    let mut attr = Attr::new();
    attr.u32(0, prog.as_raw_fd() as u32)
        .u32(4, ifindex)
        .u32(8, BPF_XDP)
        .u32(12, flags);
    attr.call(BPF_LINK_CREATE).map(owned_fd)
}

/// `bpf(BPF_LINK_UPDATE)`: swaps the program of a link atomically.
pub(crate) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.u32(0, link.as_raw_fd() as u32)
        .u32(4, prog.as_raw_fd() as u32);
    attr.call(BPF_LINK_UPDATE).map(|_| ())
}

/// `bpf(BPF_PROG_TEST_RUN)`: runs a loaded program once on `packet`, returns its verdict.
pub(crate) fn test_run(prog: BorrowedFd<'_>, packet: &[u8]) -> io::Result<u32> {
    let mut attr = Attr::new();
    attr.u32(0, prog.as_raw_fd() as u32)
        .u32(8, packet.len() as u32)
        .u64(16, packet.as_ptr() as u64)
        .u32(32, 1);
    attr.call(BPF_PROG_TEST_RUN)?;
    Ok(attr.get_u32(4))
}

/// `if_nametoindex(3)`, in the calling thread's network namespace: 0 if there is no such
/// interface.
pub(crate) fn if_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    Ok(unsafe { libc::if_nametoindex(c.as_ptr()) })
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// `bpf(BPF_MAP_CREATE)` of an array of `n` 64-bit counters, zeroed.
pub(crate) fn counter_array(n: u32) -> io::Result<std::os::fd::OwnedFd> {
    let mut attr = Attr::new();
    attr.u32(0, BPF_MAP_TYPE_ARRAY)
        .u32(4, 4)
        .u32(8, 8)
        .u32(12, n);
    attr.call(BPF_MAP_CREATE).map(owned_fd)
}

/// `bpf(BPF_MAP_LOOKUP_ELEM)`: counter `i` of an array made by [`counter_array`].
pub(crate) fn read_counter(map: BorrowedFd<'_>, i: u32) -> io::Result<u64> {
    let key = i;
    let mut value = 0u64;
    let mut attr = Attr::new();
    attr.u32(0, map.as_raw_fd() as u32)
        .u64(8, (&raw const key) as u64)
        .u64(16, (&raw mut value) as u64);
    attr.call(BPF_MAP_LOOKUP_ELEM)?;
    Ok(value)
}
