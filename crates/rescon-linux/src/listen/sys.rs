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
