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
pub(crate) fn clock_monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The runtime's monotonic time in nanoseconds: the TSC scaled to nanoseconds where the
/// kernel itself keeps time with it (see [`tsc`]), about 10 ns a read here; elsewhere
/// `CLOCK_MONOTONIC`.
#[inline]
pub(crate) fn monotonic_ns() -> u64 {
    match tsc::get() {
        Some(c) => c.now_ns(),
        None => clock_monotonic_ns(),
    }
}

/// Time from the TSC, for the runtime's clock.
///
/// Used only where the kernel's clocksource is `tsc` and the CPU has an invariant TSC
/// (`constant_tsc` and `nonstop_tsc`): then the kernel has checked that the counters tick at
/// one rate and are in step across CPUs, and reading the counter directly skips the vDSO's
/// sequence lock and conversion. The rate is measured once, against `CLOCK_MONOTONIC`, over
/// 20 ms at first use, and the time is anchored there: it agrees with `CLOCK_MONOTONIC` to the
/// measurement's few parts per million, and drifts from it by what NTP slews that clock
/// (at most 500 ppm, 30 ms over a minute; typically a few ppm). The runtime converts
/// `Instant` deadlines through an offset measured again every second (`clock::Anchor`), so
/// the drift does not accumulate in timers.
pub(crate) mod tsc {
    use std::sync::OnceLock;

    /// A calibration: `now = ns0 + (tsc - tsc0) * mult >> 32`.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Calib {
        tsc0: u64,
        ns0: u64,
        mult: u64,
    }

    impl Calib {
        #[inline]
        pub(crate) fn now_ns(&self) -> u64 {
            let d = read().saturating_sub(self.tsc0);
            self.ns0 + ((u128::from(d) * u128::from(self.mult)) >> 32) as u64
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn read() -> u64 {
        // SAFETY: RDTSC reads a counter; it has no memory effects and exists on every
        // x86-64 CPU.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[inline]
    fn read() -> u64 {
        0
    }

    static CALIB: OnceLock<Option<Calib>> = OnceLock::new();

    /// The calibration, or `None` where the TSC is not the kernel's clock.
    #[inline]
    pub(crate) fn get() -> Option<&'static Calib> {
        CALIB.get_or_init(calibrate).as_ref()
    }

    /// Whether the kernel keeps time with an invariant TSC.
    fn usable() -> bool {
        if !cfg!(target_arch = "x86_64") || std::env::var_os("RESCON_NO_TSC").is_some() {
            return false;
        }
        let source = std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .unwrap_or_default();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .unwrap_or_default();
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        source.trim() == "tsc" && has("constant_tsc") && has("nonstop_tsc")
    }

    /// A pair of readings taken as close together as we can: the TSC between two reads of
    /// `CLOCK_MONOTONIC`, the tightest of a few tries.
    fn pair() -> (u64, u64) {
        let mut best = (u64::MAX, 0, 0);
        for _ in 0..16 {
            let a = super::clock_monotonic_ns();
            let t = read();
            let b = super::clock_monotonic_ns();
            if b - a < best.0 {
                best = (b - a, a + (b - a) / 2, t);
            }
        }
        (best.1, best.2)
    }

    fn calibrate() -> Option<Calib> {
        if !usable() {
            return None;
        }
        let (ns0, tsc0) = pair();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (ns1, tsc1) = pair();
        let (dns, dtsc) = (ns1.checked_sub(ns0)?, tsc1.checked_sub(tsc0)?);
        if dtsc == 0 || dns == 0 {
            return None;
        }
        let mult = ((u128::from(dns) << 32) / u128::from(dtsc)) as u64;
        Some(Calib {
            tsc0: tsc1,
            ns0: ns1,
            mult,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_clock_keeps_to_clock_monotonic_and_never_goes_back() {
        if tsc::get().is_none() {
            eprintln!("the TSC is not the kernel's clock here: the runtime reads CLOCK_MONOTONIC");
            return;
        }
        let (a0, m0) = (monotonic_ns(), clock_monotonic_ns());
        let mut last = a0;
        let end = m0 + 50_000_000;
        while clock_monotonic_ns() < end {
            let t = monotonic_ns();
            assert!(t >= last, "went back: {last} then {t}");
            last = t;
        }
        let (a1, m1) = (monotonic_ns(), clock_monotonic_ns());
        let (da, dm) = (a1 - a0, m1 - m0);
        // The same 50 ms to within 0.1% (the calibration is good to a few ppm; this leaves
        // room for a preemption between the paired reads).
        assert!(
            da.abs_diff(dm) < dm / 1000 + 20_000,
            "TSC {da} ns, CLOCK_MONOTONIC {dm} ns"
        );
        // And the same origin, to within a millisecond.
        assert!(
            a1.abs_diff(m1) < 1_000_000,
            "TSC time {a1}, CLOCK_MONOTONIC {m1}"
        );
    }
}
