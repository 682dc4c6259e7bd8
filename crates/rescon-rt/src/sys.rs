//! The system calls the runtime makes itself, one helper each.
//!
//! Sockets and epoll go through `mio`; what mio does not cover is here: clocks, thread ids,
//! the kernel scheduling priority of a thread, and reading into uninitialised memory. Every
//! `unsafe` block of the crate that calls the C library is in this module.

#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids used are supported by every
    // Linux kernel this crate runs on, so the call cannot fail (and if it did, `ts` stays 0).
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `CLOCK_MONOTONIC` in nanoseconds (a vDSO call, about 25 ns on the reference machine).
///
/// # References
/// clock_gettime(2)
#[inline]
pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_THREAD_CPUTIME_ID`: CPU time the calling thread has used, in nanoseconds (a real
/// system call, about 540 ns on the reference machine).
///
/// # References
/// clock_gettime(2)
pub(crate) fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The calling thread's kernel id.
///
/// # References
/// gettid(2)
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// A thread's scheduling policy and nice value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KernelPrio {
    pub(crate) policy: i32,
    pub(crate) nice: i32,
}

/// Reads a thread's scheduling policy (`SCHED_OTHER`, `SCHED_IDLE`, ...).
///
/// # References
/// sched_getscheduler(2)
pub(crate) fn sched_getscheduler(tid: i32) -> io::Result<i32> {
    // SAFETY: plain integer argument; the result is checked.
    let r = unsafe { libc::sched_getscheduler(tid) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Sets a thread's scheduling policy with static priority 0 (the only one the normal, batch
/// and idle policies accept).
///
/// # References
/// sched_setscheduler(2)
pub(crate) fn sched_setscheduler(tid: i32, policy: i32) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; the result is checked.
    let r = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads a thread's nice value (`PRIO_PROCESS` with a thread id addresses that thread).
///
/// # References
/// getpriority(2)
pub(crate) fn getpriority(tid: i32) -> io::Result<i32> {
    // getpriority may legitimately return -1, so errno is cleared first and checked after.
    // SAFETY: __errno_location returns the calling thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    // SAFETY: as above.
    let errno = unsafe { *libc::__errno_location() };
    if r == -1 && errno != 0 {
        Err(io::Error::from_raw_os_error(errno))
    } else {
        Ok(r)
    }
}

/// Sets a thread's nice value.
///
/// # References
/// setpriority(2)
pub(crate) fn setpriority(tid: i32, nice: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments; the result is checked.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The soft limit of `RLIMIT_NICE`: how far an unprivileged thread may lower its nice value
/// (`20 - limit` is the lowest reachable).
///
/// # References
/// getrlimit(2)
pub(crate) fn rlimit_nice() -> io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit; the result is checked.
    if unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut r) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r.rlim_cur)
}

/// Receives into possibly uninitialised memory, returning how many bytes were written.
///
/// # References
/// recv(2)
pub(crate) fn recv_uninit(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe memory this function holds exclusively for the
    // call; recv only writes to it. `fd` is owned by the caller's socket for the call.
    let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}
