//! What the runtime needs from the kernel beyond `mio`, one helper each.
//!
//! System calls go through `rustix` where it has them (clocks, thread ids, nice values,
//! resource limits, receiving into uninitialised memory); what it lacks is here, with the C
//! library: the scheduling policy of a thread (`sched_getscheduler`, `sched_setscheduler`)
//! and reading the TSC. Every `unsafe` block of the crate that calls the C library or the
//! processor directly is in this module.

#![allow(unsafe_code)]

use rustix::process::{Pid, Resource};
use rustix::time::ClockId;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;

fn clock_ns(clock: ClockId) -> u64 {
    let ts = rustix::time::clock_gettime(clock);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `CLOCK_MONOTONIC` in nanoseconds (a vDSO call, about 25 ns on the reference machine).
///
/// # References
/// clock_gettime(2)
#[inline]
pub(crate) fn clock_monotonic_ns() -> u64 {
    clock_ns(ClockId::Monotonic)
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
    clock_ns(ClockId::ThreadCPUTime)
}

/// The calling thread's kernel id.
///
/// # References
/// gettid(2)
pub(crate) fn gettid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// A thread's scheduling policy and nice value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KernelPrio {
    pub(crate) policy: i32,
    pub(crate) nice: i32,
}

/// Reads a thread's scheduling policy (`SCHED_OTHER`, `SCHED_IDLE`, ...). Not in rustix.
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
/// and idle policies accept). Not in rustix.
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

fn pid(tid: i32) -> io::Result<Pid> {
    Pid::from_raw(tid).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "thread id 0"))
}

/// Reads a thread's nice value (`PRIO_PROCESS` with a thread id addresses that thread).
///
/// # References
/// getpriority(2)
pub(crate) fn getpriority(tid: i32) -> io::Result<i32> {
    Ok(rustix::process::getpriority_process(Some(pid(tid)?))?)
}

/// Sets a thread's nice value.
///
/// # References
/// setpriority(2)
pub(crate) fn setpriority(tid: i32, nice: i32) -> io::Result<()> {
    Ok(rustix::process::setpriority_process(Some(pid(tid)?), nice)?)
}

/// The soft limit of `RLIMIT_NICE`: how far an unprivileged thread may lower its nice value
/// (`20 - limit` is the lowest reachable).
///
/// # References
/// getrlimit(2)
pub(crate) fn rlimit_nice() -> io::Result<u64> {
    Ok(rustix::process::getrlimit(Resource::Nice)
        .current
        .unwrap_or(u64::MAX))
}

/// Receives into possibly uninitialised memory, returning how many bytes were written.
///
/// # References
/// recv(2)
pub(crate) fn recv_uninit(fd: BorrowedFd<'_>, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    let ((init, _), _) = rustix::net::recv(fd, buf, rustix::net::RecvFlags::empty())?;
    Ok(init.len())
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

    #[test]
    fn nice_values_and_limits_read_through_rustix() {
        let tid = gettid();
        assert!(tid > 0);
        let nice = getpriority(tid).unwrap();
        assert!((-20..=19).contains(&nice), "{nice}");
        assert!(rlimit_nice().is_ok());
        assert!(thread_cpu_ns() > 0);
    }
}
