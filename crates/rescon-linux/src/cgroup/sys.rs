//! The system calls the cgroup backend needs that the standard library does not wrap: one
//! helper per call, each with its `// SAFETY:` argument. Everything else (open, read, write,
//! mkdir, rmdir, flock) goes through `std::fs`, and every fd is an `OwnedFd` or a `File`.
//!
//! The `child_*` helpers run in a freshly cloned child before `execve`: they make exactly one
//! system call each, allocate nothing and take no lock, so they are async-signal-safe (the
//! parent may have had other threads holding the allocator's locks when it cloned).

#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `CLONE_INTO_CGROUP` (Linux 5.7), not yet in the `libc` crate.
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The calling thread's id (gettid(2)).
pub fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Sends a signal to a process (kill(2)).
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers; a bad pid or signal is reported through errno.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Sends a signal through a pidfd (pidfd_send_signal(2)), which cannot hit a recycled pid.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: the fd is borrowed for the call; a null siginfo and zero flags are documented
    // as valid; errors come back through errno.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Resource usage of a reaped child (and of its descendants it waited for).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildUsage {
    /// User CPU time, microseconds.
    pub user_us: u64,
    /// System CPU time, microseconds.
    pub system_us: u64,
    /// Peak resident set size, kilobytes.
    pub max_rss_kb: u64,
}

fn tv_us(tv: libc::timeval) -> u64 {
    (tv.tv_sec.max(0) as u64) * 1_000_000 + tv.tv_usec.max(0) as u64
}

/// Waits for a child (wait4(2)), returning its raw wait status and usage, or `None` if
/// `nohang` and it has not exited. Retries on `EINTR`.
pub fn wait4(pid: i32, nohang: bool) -> io::Result<Option<(i32, ChildUsage)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: all-zero is a valid rusage (plain integers and timevals).
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if nohang { libc::WNOHANG } else { 0 };
        // SAFETY: status and ru are valid, writable and live for the call.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        return Ok(Some((
            status,
            ChildUsage {
                user_us: tv_us(ru.ru_utime),
                system_us: tv_us(ru.ru_stime),
                max_rss_kb: ru.ru_maxrss.max(0) as u64,
            },
        )));
    }
}

/// A pipe whose both ends are close-on-exec (pipe2(2)): (read end, write end).
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid array of two ints for the kernel to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The result of [`clone3`] or [`fork`].
#[derive(Debug)]
pub enum Forked {
    /// In the parent: the child's pid and, if asked for, its pidfd.
    Parent {
        /// The child's pid.
        pid: i32,
        /// A pidfd for the child.
        pidfd: Option<OwnedFd>,
    },
    /// In the child. Only async-signal-safe code may run from here to `execve`.
    Child,
}

/// clone3(2) like fork(2) (no shared memory, `SIGCHLD` on exit) with a pidfd, and into the
/// cgroup v2 directory `cgroup` if given (`CLONE_INTO_CGROUP`).
///
/// The child is a copy of the calling thread only: it must call nothing but async-signal-safe
/// functions (the `child_*` helpers) before `execve`.
pub fn clone3(cgroup: Option<BorrowedFd<'_>>) -> io::Result<Forked> {
    let mut pidfd: libc::c_int = -1;
    let mut flags = libc::CLONE_PIDFD as u64;
    if cgroup.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    // SAFETY: all-zero is a valid clone_args (no stack, no tls, no set_tid).
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = flags;
    args.pidfd = &mut pidfd as *mut libc::c_int as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    args.cgroup = cgroup.map_or(0, |fd| fd.as_raw_fd() as u64);
    // SAFETY: args is a valid clone_args of the size passed; without CLONE_VM and with a zero
    // stack the child runs on a private copy of this thread's stack, like fork; `pidfd`
    // outlives the call. The caller keeps the child to async-signal-safe code.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            pid: pid as i32,
            // SAFETY: with CLONE_PIDFD the kernel stored a new fd that nobody else owns.
            pidfd: (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) }),
        }),
    }
}

/// fork(2), for kernels without clone3.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: fork has no preconditions; the caller keeps the child to async-signal-safe
    // code until execve.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent { pid, pidfd: None }),
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// In the child: writes `buf` to `fd` in one write(2). Returns the errno on failure (a
/// short write counts as `EIO`).
pub fn child_write(fd: RawFd, buf: &[u8]) -> Result<(), i32> {
    // SAFETY: buf is valid for reads of its length; write is async-signal-safe.
    let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    match r {
        -1 => Err(errno()),
        n if n as usize == buf.len() => Ok(()),
        _ => Err(libc::EIO),
    }
}

/// In the child: dup2(2) `src` onto `dst`; if they are the same fd, clears its close-on-exec
/// flag instead (dup2 would do nothing).
pub fn child_dup2(src: RawFd, dst: RawFd) -> Result<(), i32> {
    if src == dst {
        // SAFETY: fcntl on an fd number; errors come back through errno.
        let r = unsafe { libc::fcntl(src, libc::F_SETFD, 0) };
        return if r == -1 { Err(errno()) } else { Ok(()) };
    }
    // SAFETY: dup2 on fd numbers; errors come back through errno.
    if unsafe { libc::dup2(src, dst) } == -1 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// In the child: chdir(2).
pub fn child_chdir(dir: &CStr) -> Result<(), i32> {
    // SAFETY: dir is a valid NUL-terminated string.
    if unsafe { libc::chdir(dir.as_ptr()) } == -1 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// In the child: sched_setaffinity(2) of the calling process.
pub fn child_set_affinity(set: &libc::cpu_set_t) -> Result<(), i32> {
    // SAFETY: set is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if r == -1 { Err(errno()) } else { Ok(()) }
}

/// In the child: unblocks every signal and restores `SIGPIPE` to its default (Rust programs
/// ignore it, and an ignored disposition would survive `execve`), as `std::process` does.
pub fn child_reset_signals() -> Result<(), i32> {
    // SAFETY: an all-zero sigset_t is a valid value to hand to sigemptyset, which fills it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t; sigemptyset and pthread_sigmask are async-signal-safe.
    let r = unsafe {
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(r);
    }
    // SAFETY: restoring the default disposition of SIGPIPE; signal() is async-signal-safe.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(errno());
    }
    Ok(())
}

/// In the child: execve(2). Returns only on failure, with the errno.
pub fn child_execve(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> i32 {
    debug_assert!(argv.last().is_some_and(|p| p.is_null()));
    debug_assert!(envp.last().is_some_and(|p| p.is_null()));
    // SAFETY: path is NUL-terminated; argv and envp are NULL-terminated arrays of pointers to
    // NUL-terminated strings that the parent built before cloning and that stay alive in
    // this address space until execve replaces it.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    errno()
}

/// In the child: _exit(2), without running destructors or atexit handlers.
pub fn child_exit(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// A CPU set with the given CPUs, for [`child_set_affinity`]. CPUs beyond the set's capacity
/// (1024) are refused.
pub fn cpu_set(cpus: &[usize]) -> io::Result<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cpu {c} is beyond the {} CPUs a cpu_set_t holds",
                    libc::CPU_SETSIZE
                ),
            ));
        }
        // SAFETY: c is below CPU_SETSIZE (checked above), so the bit is inside the set.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    Ok(set)
}

/// Tries to take an exclusive flock(2) on `fd` without blocking. `Ok(false)` if another open
/// file description holds it. (std's `File::try_lock` needs Rust 1.89, above the workspace's
/// minimum.)
pub fn flock_try_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: flock on a borrowed, open fd; errors come back through errno.
    let r = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}
