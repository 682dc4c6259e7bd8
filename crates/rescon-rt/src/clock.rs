//! The runtime's clock: what every poll is timed with, and what timers and CPU limits run on.
//!
//! [`Clock::monotonic`] (the default) reads the TSC where the kernel keeps time with it (an
//! invariant TSC as the clocksource: about 10 ns a read on the reference machine, calibrated
//! against `CLOCK_MONOTONIC` once), and `CLOCK_MONOTONIC` through the vDSO elsewhere (about
//! 25 ns); a worker reads it once per poll (the end of one poll is the start of the next).
//! [`Clock::manual`] is a clock that only moves when told to: scheduling
//! tests run on it, making each poll cost exactly what the test says, so share ratios are
//! exact and independent of the machine's load.
//!
//! ```
//! use rescon_rt::Clock;
//! use std::time::Duration;
//! let clock = Clock::manual();
//! let t0 = clock.now_ns();
//! clock.advance(Duration::from_micros(250));
//! assert_eq!(clock.now_ns() - t0, 250_000);
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

/// Where a runtime reads the time.
#[derive(Clone)]
pub struct Clock {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Monotonic,
    Manual(Arc<AtomicU64>),
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Monotonic => f.write_str("Clock::Monotonic"),
            Kind::Manual(t) => write!(f, "Clock::Manual({} ns)", t.load(Relaxed)),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::monotonic()
    }
}

impl Clock {
    /// The system's monotonic clock (the default): the TSC where the kernel keeps time with
    /// it, else `CLOCK_MONOTONIC`. The first one made in a process measures the TSC's rate
    /// (20 ms).
    pub fn monotonic() -> Clock {
        let _ = crate::sys::tsc::get();
        Clock {
            kind: Kind::Monotonic,
        }
    }

    /// A clock that stands still until [`advance`](Clock::advance)d or [`set`](Clock::set).
    ///
    /// A runtime on a manual clock jumps the clock to the next timer or CPU-limit refill when
    /// it has nothing else to do (as if it slept until then), so sleeps and throttling finish
    /// at once in simulated time. It does not correct charges with the thread CPU clock.
    /// Share it between runtimes only if they are meant to share time.
    pub fn manual() -> Clock {
        Clock {
            kind: Kind::Manual(Arc::new(AtomicU64::new(1_000_000_000))),
        }
    }

    /// Whether this is a manual clock.
    pub fn is_manual(&self) -> bool {
        matches!(self.kind, Kind::Manual(_))
    }

    /// The time in nanoseconds, from an arbitrary fixed origin.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match &self.kind {
            Kind::Monotonic => crate::sys::monotonic_ns(),
            Kind::Manual(t) => t.load(Acquire),
        }
    }

    /// Moves a manual clock forward. Does nothing on the monotonic clock.
    pub fn advance(&self, by: Duration) {
        if let Kind::Manual(t) = &self.kind {
            t.fetch_add(by.as_nanos() as u64, AcqRel);
        }
    }

    /// Moves a manual clock forward to `ns` (never back). Does nothing on the monotonic clock.
    pub fn set(&self, ns: u64) {
        if let Kind::Manual(t) = &self.kind {
            t.fetch_max(ns, AcqRel);
        }
    }

    /// An [`Instant`] and this clock's reading at it, for the conversions: the kept offset on
    /// the monotonic clock, both clocks read now on a manual one.
    fn meeting(&self) -> (Instant, u64) {
        match &self.kind {
            Kind::Monotonic => anchor().get_at(crate::sys::monotonic_ns()),
            Kind::Manual(_) => (Instant::now(), self.now_ns()),
        }
    }

    /// The clock's time now as an [`Instant`]: `ns_to_instant(now_ns())` with one reading of
    /// the clock instead of two (hyper asks for it on every request). On the monotonic clock
    /// with the TSC, a cheaper [`Instant::now`] (no vDSO call), which agrees with it to the
    /// offset's last measurement (see [`instant_to_ns`](Clock::instant_to_ns)).
    ///
    /// ```
    /// let clock = rescon_rt::Clock::monotonic();
    /// let (a, b) = (clock.now_instant(), std::time::Instant::now());
    /// assert!(a.max(b) - a.min(b) < std::time::Duration::from_millis(100));
    /// ```
    pub fn now_instant(&self) -> Instant {
        match &self.kind {
            Kind::Monotonic => {
                let now = crate::sys::monotonic_ns();
                let (base, base_ns) = anchor().get_at(now);
                from_meeting(base, base_ns, now)
            }
            Kind::Manual(_) => self.ns_to_instant(self.now_ns()),
        }
    }

    /// Converts an [`Instant`] to this clock's nanoseconds (for deadlines given as instants).
    ///
    /// On the monotonic clock through a kept offset between the two clocks, measured again
    /// every second: no second clock read. On a manual clock, which jumps, relative to both
    /// clocks read now.
    pub fn instant_to_ns(&self, at: Instant) -> u64 {
        let (base, base_ns) = self.meeting();
        match at.checked_duration_since(base) {
            Some(ahead) => base_ns.saturating_add(ahead.as_nanos() as u64),
            None => base_ns.saturating_sub(base.duration_since(at).as_nanos() as u64),
        }
    }

    /// Converts this clock's nanoseconds to an [`Instant`] (approximately: to the offset's
    /// measurement on the monotonic clock; on a manual one the two clocks are read one after
    /// the other).
    pub fn ns_to_instant(&self, ns: u64) -> Instant {
        let (base, base_ns) = self.meeting();
        from_meeting(base, base_ns, ns)
    }
}

/// The [`Instant`] of clock reading `ns`, given that `base` was at `base_ns`.
fn from_meeting(base: Instant, base_ns: u64, ns: u64) -> Instant {
    if ns >= base_ns {
        base + Duration::from_nanos(ns - base_ns)
    } else {
        base.checked_sub(Duration::from_nanos(base_ns - ns))
            .unwrap_or(base)
    }
}

/// How old the offset between `Instant` and the monotonic clock may get before it is measured
/// again.
const REANCHOR_NS: u64 = 1_000_000_000;

/// Where [`Instant`]s meet the monotonic clock, for [`Clock::instant_to_ns`] and
/// [`Clock::ns_to_instant`].
///
/// Reading both clocks for every conversion cost a `clock_gettime` per deadline: hyper sets
/// one from its timer's `now` on every request, two vDSO calls that tokio's timer does not
/// make (perf: 0.67% of a server thread's samples under hyper, 0.09% with the offset). So the
/// offset between the clocks is kept, process-wide, and measured again when it is a second
/// old, so that the TSC's drift from `CLOCK_MONOTONIC` (a few parts per million) cannot build
/// up; a conversion then reads only the runtime's clock, to see the offset's age.
struct Anchor {
    base: Instant,
    /// The monotonic clock's reading at `base`, as last measured.
    base_ns: AtomicU64,
    /// The monotonic clock's reading when `base_ns` was measured. Read apart from it: a pair
    /// from two measurements is still a pair of good measurements.
    at: AtomicU64,
}

fn anchor() -> &'static Anchor {
    static ANCHOR: std::sync::OnceLock<Anchor> = std::sync::OnceLock::new();
    ANCHOR.get_or_init(|| {
        let a = Anchor {
            base: Instant::now(),
            base_ns: AtomicU64::new(0),
            at: AtomicU64::new(0),
        };
        a.measure();
        a
    })
}

impl Anchor {
    /// `base` and the clock's reading then, measured again if the last measurement is old
    /// at `now` (the monotonic clock's reading).
    fn get_at(&self, now: u64) -> (Instant, u64) {
        let base_ns = if now.wrapping_sub(self.at.load(Relaxed)) < REANCHOR_NS {
            self.base_ns.load(Relaxed)
        } else {
            self.measure()
        };
        (self.base, base_ns)
    }

    fn measure(&self) -> u64 {
        let i = Instant::now();
        let n = crate::sys::monotonic_ns();
        let base_ns = n.saturating_sub(i.saturating_duration_since(self.base).as_nanos() as u64);
        self.base_ns.store(base_ns, Relaxed);
        self.at.store(n, Relaxed);
        base_ns
    }
}

/// Scales charges by how much of the worker's awake time the kernel actually gave it.
///
/// A poll is timed with the monotonic clock, which also counts time the kernel gave to other
/// threads while the poll was running (preemption, a page fault that slept). Every
/// [`WINDOW_NS`] the worker reads its thread CPU clock (about 540 ns, a system call) and
/// compares the CPU it got with the wall time it was awake (not blocked in `epoll_wait`) over
/// the window. Charges in the next window are multiplied by that ratio, so a container is
/// charged CPU time, not wall time, even on a contended machine. The ratio scales all
/// containers of a worker alike, so it never changes their relative shares; it matters for CPU
/// limits and for the usage reported.
#[derive(Debug)]
pub(crate) struct Correction {
    enabled: bool,
    /// The ratio in 1/65536.
    ratio_q16: u64,
    window_start: u64,
    cpu_start: u64,
    slept: u64,
}

/// How often the thread CPU clock is read.
pub(crate) const WINDOW_NS: u64 = 10_000_000;
const ONE_Q16: u64 = 1 << 16;

impl Correction {
    pub(crate) fn new(enabled: bool, now: u64) -> Correction {
        Correction {
            enabled,
            ratio_q16: ONE_Q16,
            window_start: now,
            cpu_start: if enabled {
                crate::sys::thread_cpu_ns()
            } else {
                0
            },
            slept: 0,
        }
    }

    /// Scales a measured duration.
    #[inline]
    pub(crate) fn scale(&self, ns: u64) -> u64 {
        if self.ratio_q16 == ONE_Q16 {
            ns
        } else {
            ((ns as u128 * self.ratio_q16 as u128) >> 16) as u64
        }
    }

    /// The share of a CPU the thread got while awake over the last windows, in 1/65536
    /// (65536 when the correction is off).
    pub(crate) fn ratio_q16(&self) -> u64 {
        self.ratio_q16
    }

    /// Records time spent blocked in the poller.
    pub(crate) fn slept(&mut self, ns: u64) {
        self.slept += ns;
    }

    /// Ends the window if it is over.
    pub(crate) fn tick(&mut self, now: u64) {
        if !self.enabled || now < self.window_start + WINDOW_NS {
            return;
        }
        let cpu = crate::sys::thread_cpu_ns();
        let wall = now - self.window_start;
        let awake = wall.saturating_sub(self.slept);
        let used = cpu.saturating_sub(self.cpu_start);
        self.ratio_q16 = ratio_q16(used, awake, self.ratio_q16);
        self.window_start = now;
        self.cpu_start = cpu;
        self.slept = 0;
    }
}

/// The new ratio from a window's CPU and awake time: CPU over awake, within [1/16, 1], and
/// averaged with the previous ratio so one odd window moves it halfway. A window with less
/// than a millisecond awake keeps the old ratio: too little to measure.
pub(crate) fn ratio_q16(cpu: u64, awake: u64, old: u64) -> u64 {
    if awake < 1_000_000 {
        return old;
    }
    let r = ((cpu as u128) << 16) / awake as u128;
    let r = (r as u64).clamp(ONE_Q16 / 16, ONE_Q16);
    (r + old) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_cpu_over_awake_averaged() {
        // Half the awake time was taken away: from 1.0 the ratio moves halfway to 0.5.
        assert_eq!(ratio_q16(5_000_000, 10_000_000, ONE_Q16), ONE_Q16 * 3 / 4);
        // Never above 1 (CPU clock granularity can make cpu exceed awake slightly).
        assert_eq!(ratio_q16(11_000_000, 10_000_000, ONE_Q16), ONE_Q16);
        // Never below 1/16.
        assert_eq!(ratio_q16(0, 10_000_000, ONE_Q16 / 16), ONE_Q16 / 16);
        // Too short a window keeps the old ratio.
        assert_eq!(ratio_q16(0, 500_000, 1234), 1234);
    }

    #[test]
    fn manual_clock_moves_only_forward() {
        let c = Clock::manual();
        let t = c.now_ns();
        c.set(t - 5);
        assert_eq!(c.now_ns(), t);
        c.advance(Duration::from_nanos(7));
        assert_eq!(c.now_ns(), t + 7);
        let m = Clock::monotonic();
        let a = m.now_ns();
        assert!(m.now_ns() >= a);
    }

    #[test]
    fn instants_round_trip_within_a_millisecond() {
        let c = Clock::monotonic();
        let at = Instant::now() + Duration::from_millis(50);
        let ns = c.instant_to_ns(at);
        let back = c.ns_to_instant(ns);
        let diff = if back > at { back - at } else { at - back };
        assert!(diff < Duration::from_millis(1), "{diff:?}");
    }

    #[test]
    fn now_as_an_instant_agrees_with_the_std_clock_and_the_conversion() {
        let c = Clock::monotonic();
        let before = Instant::now();
        let now = c.now_instant();
        let after = Instant::now();
        // Within the offset's measurement error of the interval the call took.
        let slack = Duration::from_millis(1);
        assert!(
            now + slack >= before && now <= after + slack,
            "{now:?} not in {before:?}..{after:?}"
        );
        let ns = c.instant_to_ns(now);
        assert!(c.now_ns() >= ns.saturating_sub(1_000_000));
        let m = Clock::manual();
        // A manual clock's conversions read `Instant::now` each: equal within their interval.
        let back = m.instant_to_ns(m.now_instant());
        assert!(m.now_ns().abs_diff(back) < 1_000_000, "{back}");
    }
}
