//! Passing handles between processes: across `execve` by inheritance, and to any process over
//! a Unix socket.
//!
//! A handle's descriptor is close-on-exec unless asked otherwise: it reaches a child only
//! through [`inherit`] (which clears the flag in that child alone, after `fork`, so that no
//! other program started at the same moment by another thread gets it), and the child finds it
//! by the environment variable [`ENV`]. Over a Unix socket, [`send_fd`] sends one message with
//! the descriptor attached (`SCM_RIGHTS`) and [`recv_fd`] receives it; the kernel gives the
//! receiver a new descriptor for the same open socket, so the container lives until the last
//! copy anywhere is closed. [`send_with`] attaches a handle to the bytes of another protocol
//! (a FastCGI request's first record on a Unix connection).

#![allow(unsafe_code)]

use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use rustix::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable that names an inherited handle's descriptor (a decimal number).
pub const ENV: &str = "RESCON_HANDLE";

/// The body of a message that carries a handle: lets a receiver tell it from other traffic.
const MAGIC: &[u8] = b"rescon-handle/1";

/// Sends the handle `fd` over the Unix socket `sock`, waiting if the socket is full. The
/// sender's copy stays open: close it if the receiver is to be the only holder.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<()> {
    sys::send(sock, MAGIC, &[fd], true).map_err(|e| Error::io("send a handle", e))
}

/// Receives a handle sent with [`send_fd`], waiting for it. Fails with
/// [`ErrorKind::Released`] if the sender closed the socket, and with
/// [`ErrorKind::Protocol`] if the message was not a handle (any descriptor it carried is
/// closed).
pub fn recv_fd(sock: BorrowedFd<'_>) -> Result<OwnedFd> {
    let mut buf = [0u8; 32];
    let r = sys::recv(sock, &mut buf, true)
        .map_err(|e| Error::io("receive a handle", e))?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Released,
                "receive a handle: the sender closed the socket",
            )
        })?;
    if &buf[..r.len] != MAGIC || r.fds.len() != 1 {
        return Err(Error::new(
            ErrorKind::Protocol,
            "receive a handle: the message is not a handle",
        ));
    }
    Ok(r.fds.into_iter().next().expect("one fd"))
}

/// Sends `bytes` on a Unix socket with the handle `fd` attached (`SCM_RIGHTS`): for a
/// protocol that already flows on the socket, such as a FastCGI connection, where the handle
/// rides on the request's first record. A receiver that reads with `read` rather than
/// [`recv_with`] never sees the descriptor: the kernel closes it, so a peer that does not know
/// rescon releases the handle without noticing.
pub fn send_with(sock: BorrowedFd<'_>, bytes: &[u8], fd: BorrowedFd<'_>) -> Result<()> {
    sys::send(sock, bytes, &[fd], true).map_err(|e| Error::io("send a handle", e))
}

/// Receives bytes sent with [`send_with`] into `buf`, and the handle that came with them, if
/// any. `Ok(None)` is end of file. On a stream socket the bytes are what one read gives (up to
/// the sender's message); the descriptor arrives with the first of them.
pub fn recv_with(sock: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Option<(usize, Option<OwnedFd>)>> {
    let r = sys::recv(sock, buf, true).map_err(|e| Error::io("receive a handle", e))?;
    Ok(r.map(|r| (r.len, r.fds.into_iter().next())))
}

/// Makes `cmd`'s child inherit the handle `fd` across `execve`, and sets [`ENV`] so that
/// [`Handle::from_env`](crate::Handle::from_env) finds it there. `fd` must stay open until
/// the child is spawned.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let handle = rescon_handle::Handle::from_env()?.unwrap();
/// use std::os::fd::AsFd;
/// let mut cmd = std::process::Command::new("/usr/lib/cgi-bin/report");
/// rescon_handle::pass::inherit(&mut cmd, handle.as_fd());
/// let status = cmd.status()?;
/// # Ok(()) }
/// ```
pub fn inherit(cmd: &mut std::process::Command, fd: BorrowedFd<'_>) {
    use std::os::unix::process::CommandExt;
    let raw: RawFd = fd.as_raw_fd();
    cmd.env(ENV, raw.to_string());
    // SAFETY: the closure runs in the child between fork and exec. It makes one fcntl system
    // call, which is async-signal-safe, allocates nothing and takes no lock. `raw` is open
    // there: the caller keeps `fd` open until the spawn, and the child's table is a copy.
    unsafe {
        cmd.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(raw);
            sys::set_inheritable(fd, true)
        });
    }
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// The descriptor [`ENV`] names, owned, close-on-exec again. Once per process.
pub(crate) fn take_env_fd() -> Result<Option<OwnedFd>> {
    let Some(v) = std::env::var_os(ENV) else {
        return Ok(None);
    };
    let fd: RawFd = v
        .to_str()
        .and_then(|s| s.trim().parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Protocol,
                format!(
                    "{ENV}={}: not a descriptor number above 2",
                    v.to_string_lossy()
                ),
            )
        })?;
    // Open? Asked of /proc rather than of the descriptor, which must not be borrowed unless
    // it is open.
    if std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_err() {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "{ENV}={fd}: no such descriptor is open (was the handle inherited with rescon_handle::pass::inherit?)"
            ),
        ));
    }
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("{ENV}={fd}: the inherited handle was taken already"),
        ));
    }
    // SAFETY: the descriptor is open (checked above) and, by the contract of ENV, is the
    // handle this process inherited and nobody else in it owns; TAKEN makes sure it is taken
    // once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    sys::set_inheritable(&owned, false).map_err(|e| Error::io("take the inherited handle", e))?;
    Ok(Some(owned))
}
