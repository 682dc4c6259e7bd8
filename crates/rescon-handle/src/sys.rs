//! The system calls of both sides, over rustix: `SOCK_SEQPACKET` socket pairs, messages with
//! descriptors (`SCM_RIGHTS`), and the shared page of counters (a sealed memfd mapped shared).
//! The unsafe code here is the mapping, in [`Mapping`]; the rest of the crate's is in
//! [`pass`](crate::pass) (taking an inherited descriptor, clearing close-on-exec in a child).

#![allow(unsafe_code)]

use rustix::event::{PollFd, PollFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::ptr::NonNull;

/// The most descriptors one message may carry (a handle, a session or a page: one).
pub const MAX_FDS: usize = 1;

/// A pair of connected `SOCK_SEQPACKET` Unix sockets, both close-on-exec: record boundaries
/// are kept, and the peer's last close is seen as end of file.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// A `SOCK_SEQPACKET` socket listening on the abstract Unix address `name` (close-on-exec,
/// non-blocking: the owner accepts from its event loop).
#[cfg(feature = "owner")]
pub fn listener(name: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::bind(&fd, &rustix::net::SocketAddrUnix::new_abstract_name(name)?)?;
    rustix::net::listen(&fd, 128)?;
    Ok(fd)
}

/// Gives a socket the abstract Unix address `name`.
#[cfg(feature = "owner")]
pub fn bind_abstract(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    Ok(rustix::net::bind(
        fd,
        &rustix::net::SocketAddrUnix::new_abstract_name(name)?,
    )?)
}

/// A new non-blocking connection accepted from `listener` (close-on-exec), or `None` when
/// none is waiting.
#[cfg(feature = "owner")]
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    loop {
        match rustix::net::accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::AGAIN) => return Ok(None),
            Err(Errno::INTR | Errno::CONNABORTED) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// A `SOCK_SEQPACKET` connection to the abstract Unix address `name` (close-on-exec).
pub fn connect_abstract(name: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let addr = rustix::net::SocketAddrUnix::new_abstract_name(name)?;
    loop {
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => return Ok(fd),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The abstract Unix address of `fd`'s peer, if it has one.
pub fn peer_abstract_name(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    let Some(addr) = rustix::net::getpeername(fd)? else {
        return Ok(None);
    };
    let unix = rustix::net::SocketAddrUnix::try_from(addr).ok();
    Ok(unix.and_then(|u| u.abstract_name().map(<[u8]>::to_vec)))
}

/// The socket's cookie (`SO_COOKIE`): a number the kernel gives each socket, never reused,
/// and the same for every descriptor of it in any process.
#[cfg(feature = "owner")]
pub fn cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::net::sockopt::socket_cookie(fd)?)
}

/// 64 random bits from the kernel.
#[cfg(feature = "owner")]
pub fn random_u64() -> io::Result<u64> {
    let mut b = [0u8; 8];
    let mut got = 0;
    while got < b.len() {
        got += rustix::rand::getrandom(&mut b[got..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(u64::from_ne_bytes(b))
}

/// Whether `fd` is a Unix `SOCK_SEQPACKET` socket, as every handle and session is.
pub fn is_seqpacket_unix(fd: BorrowedFd<'_>) -> bool {
    matches!(
        rustix::net::sockopt::socket_type(fd),
        Ok(SocketType::SEQPACKET)
    ) && matches!(
        rustix::net::sockopt::socket_domain(fd),
        Ok(AddressFamily::UNIX)
    )
}

/// Sends one message with `fds` attached. With `wait`, a full socket (or one another holder
/// made non-blocking: the flag is shared by every copy of a descriptor) is waited for;
/// without, it fails with `WouldBlock`.
pub fn send(
    sock: BorrowedFd<'_>,
    msg: &[u8],
    fds: &[BorrowedFd<'_>],
    wait: bool,
) -> io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(fds.len() <= MAX_FDS, "at most {MAX_FDS} fds per message");
        if !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("no room for the descriptors"));
        }
    }
    loop {
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(msg)],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(n) if n == msg.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::other(format!(
                    "short send: {n} of {} bytes",
                    msg.len()
                )));
            }
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) if wait => wait_for(sock, PollFlags::OUT)?,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until `sock` is ready for `what` (or has hung up).
pub fn wait_for(sock: BorrowedFd<'_>, what: PollFlags) -> io::Result<()> {
    let mut p = [PollFd::new(&sock, what)];
    loop {
        match rustix::event::poll(&mut p, None) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// A message received.
#[derive(Debug)]
pub struct Received {
    /// Its length (in the buffer given).
    pub len: usize,
    /// The descriptors that came with it (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// Whether it was longer than the buffer (the rest is lost) or carried more descriptors
    /// than [`MAX_FDS`] (the kernel closed the rest).
    pub truncated: bool,
}

/// Receives one message. `Ok(None)` is end of file: every copy of the peer is closed. An
/// empty message is end of file too, unless the socket is still open (which a second,
/// non-blocking look tells): it is then returned with length 0.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], wait: bool) -> io::Result<Option<Received>> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let flags = RecvFlags::CMSG_CLOEXEC
        | if wait {
            RecvFlags::empty()
        } else {
            RecvFlags::DONTWAIT
        };
    let r = loop {
        match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, flags) {
            Ok(r) => break r,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    let truncated = r.flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC);
    if r.bytes == 0 && fds.is_empty() && !truncated && hung_up(sock) {
        return Ok(None);
    }
    Ok(Some(Received {
        len: r.bytes.min(buf.len()),
        fds,
        truncated,
    }))
}

/// Whether the peer of `sock` has closed (its last copy).
pub fn hung_up(sock: BorrowedFd<'_>) -> bool {
    let mut p = [PollFd::new(&sock, PollFlags::IN)];
    match rustix::event::poll(&mut p, Some(&rustix::time::Timespec::default())) {
        Ok(_) => p[0]
            .revents()
            .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR),
        Err(_) => true,
    }
}

/// A shared mapping of one page of a memfd: the counters a holder charges without a system
/// call. Unmapped when dropped.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory shared with other processes; this crate reaches it only
// through atomic operations (`Mapping::atomic`), which are sound from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: every access is atomic.
unsafe impl Sync for Mapping {}

/// The size of a page of counters.
pub const PAGE: usize = 4096;

impl Mapping {
    /// Maps the first [`PAGE`] bytes of `fd` shared, readable, and writable if `write`.
    /// The caller has checked that the file is at least that long and cannot shrink (sealed).
    pub fn map(fd: BorrowedFd<'_>, write: bool) -> io::Result<Mapping> {
        let prot = if write {
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE
        } else {
            rustix::mm::ProtFlags::READ
        };
        // SAFETY: a new mapping at an address of the kernel's choosing aliases no Rust object;
        // it is only ever read and written through atomics (see `atomic`), and unmapped once,
        // in Drop.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                PAGE,
                prot,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )?
        };
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?,
            len: PAGE,
        })
    }

    /// The 64-bit word at byte `offset` (a multiple of 8 inside the page), as an atomic.
    pub fn atomic(&self, offset: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(offset % 8 == 0 && offset + 8 <= self.len, "offset {offset}");
        // SAFETY: the address is inside the mapping (checked above) and 8-aligned (the mapping
        // is page-aligned); the mapping lives as long as `self`, which the reference borrows.
        // Other processes may write the word concurrently, which is what atomics allow.
        unsafe { std::sync::atomic::AtomicU64::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made by `map`; no reference into it outlives
        // `self` (`atomic` borrows it).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A new page of counters: a memfd of [`PAGE`] bytes beginning with `header`, sealed so that
/// no holder can shrink or grow it (a shrunk file would fault the owner's reads).
pub fn new_page(header: &[u8]) -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "rescon-meter",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, PAGE as u64)?;
    let mut off = 0;
    while off < header.len() {
        off += rustix::io::pwrite(&fd, &header[off..], off as u64)?;
    }
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// Whether `fd` is a page of counters a holder may map: a memfd sealed against shrinking, of
/// at least a page.
pub fn is_sealed_page(fd: BorrowedFd<'_>) -> bool {
    let sealed = rustix::fs::fcntl_get_seals(fd)
        .map(|s| s.contains(rustix::fs::SealFlags::SHRINK))
        .unwrap_or(false);
    let long = rustix::fs::fstat(fd)
        .map(|st| st.st_size as usize >= PAGE)
        .unwrap_or(false);
    sealed && long
}

/// Makes `fd` survive `execve` (clears close-on-exec) or not.
pub fn set_inheritable(fd: impl AsFd, inherit: bool) -> io::Result<()> {
    let flags = if inherit {
        rustix::io::FdFlags::empty()
    } else {
        rustix::io::FdFlags::CLOEXEC
    };
    Ok(rustix::io::fcntl_setfd(fd, flags)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_boundaries_and_carry_fds() {
        let (a, b) = seqpacket_pair().unwrap();
        let (x, _y) = seqpacket_pair().unwrap();
        send(a.as_fd(), b"one", &[], true).unwrap();
        send(a.as_fd(), b"two!", &[x.as_fd()], true).unwrap();
        let mut buf = [0u8; 16];
        let r = recv(b.as_fd(), &mut buf, true).unwrap().unwrap();
        assert_eq!(&buf[..r.len], b"one");
        assert!(r.fds.is_empty());
        let r = recv(b.as_fd(), &mut buf, true).unwrap().unwrap();
        assert_eq!(&buf[..r.len], b"two!");
        assert_eq!(r.fds.len(), 1);
        assert!(is_seqpacket_unix(r.fds[0].as_fd()));
        // Received descriptors are close-on-exec.
        let fl = rustix::io::fcntl_getfd(&r.fds[0]).unwrap();
        assert!(fl.contains(rustix::io::FdFlags::CLOEXEC));
        assert!(recv(b.as_fd(), &mut buf, false).unwrap_err().kind() == io::ErrorKind::WouldBlock);
    }

    #[test]
    fn empty_message_is_not_end_of_file_but_close_is() {
        let (a, b) = seqpacket_pair().unwrap();
        send(a.as_fd(), b"", &[], true).unwrap();
        let mut buf = [0u8; 16];
        let r = recv(b.as_fd(), &mut buf, true).unwrap();
        assert_eq!(r.map(|r| r.len), Some(0));
        send(a.as_fd(), b"last", &[], true).unwrap();
        drop(a);
        // What was sent before the close is still read, then end of file.
        let r = recv(b.as_fd(), &mut buf, true).unwrap().unwrap();
        assert_eq!(&buf[..r.len], b"last");
        assert!(recv(b.as_fd(), &mut buf, true).unwrap().is_none());
    }

    #[test]
    fn long_messages_are_flagged_truncated() {
        let (a, b) = seqpacket_pair().unwrap();
        send(a.as_fd(), &[7u8; 100], &[], true).unwrap();
        let mut buf = [0u8; 10];
        let r = recv(b.as_fd(), &mut buf, true).unwrap().unwrap();
        assert!(r.truncated);
    }

    #[test]
    fn pages_are_sealed_and_shared() {
        let fd = new_page(b"RCMETER1").unwrap();
        assert!(is_sealed_page(fd.as_fd()));
        assert_eq!(
            rustix::fs::ftruncate(&fd, 0).unwrap_err(),
            Errno::PERM,
            "a sealed page cannot shrink"
        );
        let w = Mapping::map(fd.as_fd(), true).unwrap();
        let r = Mapping::map(fd.as_fd(), false).unwrap();
        assert_eq!(
            r.atomic(0).load(std::sync::atomic::Ordering::Relaxed),
            u64::from_le_bytes(*b"RCMETER1")
        );
        w.atomic(64)
            .fetch_add(5, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(r.atomic(64).load(std::sync::atomic::Ordering::Relaxed), 5);
        let (s, _) = seqpacket_pair().unwrap();
        assert!(!is_sealed_page(s.as_fd()));
    }
}
