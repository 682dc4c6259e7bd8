//! Scheduler binding: a worker that serves only idle-class work lowers its own kernel priority,
//! and one that hosts work of a class above normal raises it.
//!
//! In the paper, the kernel schedules a thread by the containers it serves (its *scheduler
//! binding*). A worker here serves many containers; the kernel sees one thread. So the worker
//! tells the kernel the one thing that matters to other processes: when, for a couple of
//! milliseconds, everything it has run was of the lowest class ([`SchedClass::IDLE`], on the
//! container or any ancestor), it moves itself to `SCHED_IDLE` (or a high nice value), so that
//! other processes' normal work wins over this process's unimportant work. It moves back as
//! soon as work of a higher class becomes runnable on it. Each move is one system call on the
//! worker's own thread (no cgroup move).
//!
//! Coming back needs the right to raise a priority (`CAP_SYS_NICE`, or an `RLIMIT_NICE` that
//! allows the original nice value). Without it the feature turns itself off at start, since a
//! worker that could lower itself but not come back would stay slow.
//!
//! Latency: a lowered worker is woken by the kernel like any `SCHED_IDLE` thread, so the first
//! higher-class event it handles may wait behind other processes' work; from then on it runs
//! at its normal priority.
//!
//! The other way, when asked for ([`HighPriority`], off by default): a worker runs at a lower nice
//! value while it runs work of the high or critical class (on its whole path) or has such work
//! queued, and while it sleeps hosting such work (a listener's accept loop) that ran in the last
//! 100 ms ([`SLEEP_RAISED_AFTER_HIGH_NS`]), so that where the machine's CPUs are shared with other
//! processes the kernel neither takes the CPU from it for another thread's time slice
//! (milliseconds) between the moment it learns of a high-class request and the response, nor lets a
//! wake-up for such work wait behind other threads. It goes back to its normal nice value at the
//! first burst of other work with none of that class waiting, so the raise lasts as long as the
//! high-class work runs: a server whose high class is a trickle of requests raises its workers for
//! that trickle only, and other processes keep their share of the CPUs. A worker that is off its
//! CPU when the work arrives cannot raise itself: that wait is the kernel's (a server accepts such
//! a class on every worker, so that whichever runs takes it), and so is the wait for a high-class
//! connection's next event once the worker has gone back to other work. Each change is one
//! `setpriority` on the worker's own thread. It needs the right to lower a nice value
//! (`CAP_SYS_NICE`, or an `RLIMIT_NICE` that allows it); without it the feature turns itself off at
//! start, saying so.
//!
//! Measured with `rescon-bench paper --quick --only 3` (rescon-httpd with a worker per core,
//! not pinned, beside the load generator on two cores; 64 low clients): the high-priority
//! client's 99th percentile went from 11-18 times its unloaded value to 3-4 times. Raising a
//! worker for as long as it merely hosted high-class work (an accept loop never leaves)
//! raised every worker all the time and changed nothing (nice -5); holding the raise 200 µs
//! after high-class work ran (for the request that follows an accept) reached 2.7-3.1 times,
//! but kept the workers raised nearly all the time under that client's 7,000 requests a
//! second, and the load generator beside them lost the CPU: the low clients' throughput fell
//! by 40%.

use crate::sys;
use rescon::{Container, Registry, SchedClass};
use std::io;

/// What a worker does with its kernel priority when it serves only idle-class work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IdlePriority {
    /// Leave the kernel priority alone.
    Off,
    /// Move to `SCHED_IDLE` (the default).
    #[default]
    SchedIdle,
    /// Set this nice value (1..=19).
    Nice(i32),
}

/// What a worker does with its kernel priority while it runs work of a class above normal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HighPriority {
    /// Leave the kernel priority alone (the default).
    #[default]
    Off,
    /// Run at this nice value (-20..=-1) meanwhile.
    Nice(i32),
}

/// A worker's raising for high-class work (see [`HighPriority`]).
#[derive(Debug)]
pub(crate) struct Boost {
    nice: Option<i32>,
    tid: i32,
    orig: i32,
    boosted: bool,
    /// When it last ran high-class work (runtime clock, ns), if ever.
    last_high: Option<u64>,
}

/// How long after it last ran high-class work a worker that hosts such work still sleeps
/// raised. A server whose high class is busy keeps its workers ready for that class's next
/// event; one whose high class is quiet does not wake raised for other work: each such
/// wake-up (at nice -20, weight 88,761 against a cgroup's 1,024) took the CPU from the
/// processes beside the server, a FastCGI pool under a 30% cap in `rescon-bench paper
/// --only 4`, which has no high-class traffic at all.
pub(crate) const SLEEP_RAISED_AFTER_HIGH_NS: u64 = 100_000_000;

impl Boost {
    /// Sets up raising for the calling thread (a worker), or turns it off if the thread may
    /// not lower its nice value that far.
    pub(crate) fn for_current_thread(mode: HighPriority) -> Boost {
        let tid = sys::gettid();
        let mut b = Boost {
            nice: None,
            tid,
            orig: 0,
            boosted: false,
            last_high: None,
        };
        let HighPriority::Nice(n) = mode else {
            return b;
        };
        let n = n.clamp(-20, 19);
        match sys::getpriority(tid) {
            Ok(orig) if n < orig && can_restore(n) => {
                b.nice = Some(n);
                b.orig = orig;
            }
            Ok(orig) if n >= orig => {}
            Ok(_) => tracing::info!(
                nice = n,
                "raising workers for high-class work off: without CAP_SYS_NICE or a sufficient RLIMIT_NICE a worker cannot lower its nice value"
            ),
            Err(e) => {
                tracing::info!(error = %e, "raising workers for high-class work off: cannot read this thread's priority")
            }
        }
        b
    }

    pub(crate) fn enabled(&self) -> bool {
        self.nice.is_some()
    }

    /// About to run work (at `now`): raised if it is high-class work or such work is
    /// waiting (`high`), put back otherwise.
    pub(crate) fn running(&mut self, high: bool, now: u64) {
        if high {
            self.last_high = Some(now);
        }
        self.set(high);
    }

    /// About to sleep (at `now`): raised if it hosts high-class work (`hosts_high`) and ran
    /// some within [`SLEEP_RAISED_AFTER_HIGH_NS`], so that it is woken ahead of other threads
    /// for that work's next event; put back otherwise.
    pub(crate) fn sleeping(&mut self, hosts_high: bool, now: u64) {
        let recent = self
            .last_high
            .is_some_and(|t| now.saturating_sub(t) < SLEEP_RAISED_AFTER_HIGH_NS);
        self.set(hosts_high && recent);
    }

    /// Raises the worker (`want`) or puts it back.
    fn set(&mut self, want: bool) {
        let Some(n) = self.nice else { return };
        if want == self.boosted {
            return;
        }
        let to = if want { n } else { self.orig };
        match sys::setpriority(self.tid, to) {
            Ok(()) => self.boosted = want,
            Err(e) => {
                tracing::warn!(error = %e, nice = to, "changing a worker's nice value failed; raising for high-class work off");
                self.nice = None;
            }
        }
    }
}

impl Drop for Boost {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// A thread's kernel scheduling, as read from `/proc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadPriority {
    /// The scheduling policy number (`0` normal, `3` batch, `5` idle, ...).
    pub policy: u32,
    /// The nice value.
    pub nice: i32,
}

impl ThreadPriority {
    /// `SCHED_IDLE`.
    pub const SCHED_IDLE: u32 = 5;
    /// `SCHED_OTHER` (normal).
    pub const SCHED_OTHER: u32 = 0;

    /// Reads a thread of this process from `/proc/self/task/<tid>/stat`.
    pub fn of_thread(tid: i32) -> io::Result<ThreadPriority> {
        let path = format!("/proc/self/task/{tid}/stat");
        let text = std::fs::read_to_string(&path)?;
        parse_stat(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected format of {path}: {text:?}"),
            )
        })
    }
}

/// Parses the nice value (field 19) and policy (field 41) of a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted from the last
/// `)`.
pub(crate) fn parse_stat(line: &str) -> Option<ThreadPriority> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let nice = fields.get(19 - 3)?.parse().ok()?;
    let policy = fields.get(41 - 3)?.parse().ok()?;
    Some(ThreadPriority { policy, nice })
}

/// Whether a `/proc/self/status` text shows an effective capability.
pub(crate) fn cap_effective(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << cap) != 0)
}

const CAP_SYS_NICE: u32 = 23;

/// Whether this process could raise a thread back to nice value `nice` after lowering it.
fn can_restore(nice: i32) -> bool {
    let cap = std::fs::read_to_string("/proc/self/status")
        .map(|s| cap_effective(&s, CAP_SYS_NICE))
        .unwrap_or(false);
    cap || sys::rlimit_nice().is_ok_and(|lim| lim >= (20 - nice) as u64)
}

/// The lowest and the highest scheduling class on a container's path to the top (the top
/// itself, which has no siblings, left out of the highest). The lowest is the work's
/// effective class: work in an idle-class subtree is idle work, whatever the class of its own
/// container. Work with a class above normal somewhere on its path and none below is
/// high-class work ([`is_high`]).
pub(crate) fn path_classes(registry: &Registry, c: &Container) -> (u8, u8) {
    let own = c.attrs().class.get();
    let (mut low, mut high) = (own, SchedClass::NORMAL.get());
    let root = registry.root();
    let mut parent = c.parent_id();
    if parent.is_some() {
        high = own;
    }
    let mut depth = 0;
    while let Some(id) = parent {
        depth += 1;
        if low == SchedClass::IDLE.get() || depth > 256 {
            break;
        }
        match root.lookup(id) {
            Ok(p) => {
                let class = p.attrs().class.get();
                low = low.min(class);
                parent = p.parent_id();
                if parent.is_some() {
                    high = high.max(class);
                }
            }
            Err(_) => break,
        }
    }
    (low, high)
}

/// Whether work of a container with these [path classes](path_classes) is high-class work.
pub(crate) fn is_high(classes: (u8, u8)) -> bool {
    classes.0 >= SchedClass::NORMAL.get() && classes.1 > SchedClass::NORMAL.get()
}

const IDLE_MASK: u8 = 1 << SchedClass::IDLE.get();
/// Windows (maintenance ticks) of only idle work before lowering.
const WINDOWS_BEFORE_LOWERING: u32 = 2;

/// A worker's idle-lowering state.
#[derive(Debug)]
pub(crate) struct IdleLowering {
    mode: IdlePriority,
    tid: i32,
    orig: Option<sys::KernelPrio>,
    lowered: bool,
    mask: u8,
    idle_windows: u32,
}

impl IdleLowering {
    /// Sets up lowering for the calling thread (a worker), or turns it off if the thread could
    /// not come back.
    pub(crate) fn for_current_thread(mode: IdlePriority) -> IdleLowering {
        let tid = sys::gettid();
        let mut s = IdleLowering {
            mode: IdlePriority::Off,
            tid,
            orig: None,
            lowered: false,
            mask: 0,
            idle_windows: 0,
        };
        if mode == IdlePriority::Off {
            return s;
        }
        let orig = match (sys::sched_getscheduler(tid), sys::getpriority(tid)) {
            (Ok(policy), Ok(nice)) => sys::KernelPrio { policy, nice },
            (Err(e), _) | (_, Err(e)) => {
                tracing::info!(error = %e, "idle lowering off: cannot read this thread's priority");
                return s;
            }
        };
        if orig.policy != libc::SCHED_OTHER && orig.policy != libc::SCHED_BATCH {
            tracing::info!(
                policy = orig.policy,
                "idle lowering off: the worker runs under a real-time or idle policy already"
            );
            return s;
        }
        if !can_restore(orig.nice) {
            tracing::info!(
                "idle lowering off: without CAP_SYS_NICE or a sufficient RLIMIT_NICE a lowered worker could not raise itself back"
            );
            return s;
        }
        s.mode = mode;
        s.orig = Some(orig);
        s
    }

    pub(crate) fn enabled(&self) -> bool {
        self.mode != IdlePriority::Off
    }

    /// Notes a burst of work of `class`; returns whether the container should be re-checked
    /// before a decision to lower (only idle-class work needs to be).
    #[inline]
    pub(crate) fn served(&mut self, class: u8) -> bool {
        let first = self.mask & (1 << class) == 0;
        self.mask |= 1 << class;
        class == SchedClass::IDLE.get() && (first || self.lowered)
    }

    /// Work of `class` became runnable: raise at once if it is above idle.
    #[inline]
    pub(crate) fn on_runnable(&mut self, class: u8) {
        if self.lowered && class > SchedClass::IDLE.get() {
            self.raise();
        }
    }

    /// Ends a window; returns whether the worker should lower now (after confirming the
    /// classes with [`confirm_lower`](IdleLowering::confirm_lower)), or, when lowered,
    /// whether classes should be re-checked.
    pub(crate) fn window_wants_lower(&mut self) -> bool {
        let mask = std::mem::take(&mut self.mask);
        if mask == 0 {
            return self.lowered;
        }
        if mask == IDLE_MASK {
            self.idle_windows += 1;
        } else {
            self.idle_windows = 0;
            if self.lowered {
                self.raise();
            }
        }
        self.lowered || self.idle_windows >= WINDOWS_BEFORE_LOWERING
    }

    /// Lowers if the served containers' fresh classes are all idle; raises if some is not.
    pub(crate) fn confirm_lower(
        &mut self,
        fresh_mask: u8,
        lowered: &std::sync::atomic::AtomicBool,
    ) {
        if fresh_mask != 0 && fresh_mask != IDLE_MASK {
            self.idle_windows = 0;
            if self.lowered {
                self.raise();
            }
        } else if !self.lowered && fresh_mask == IDLE_MASK {
            self.lower();
        }
        lowered.store(self.lowered, std::sync::atomic::Ordering::Relaxed);
    }

    fn lower(&mut self) {
        let r = match self.mode {
            IdlePriority::Off => return,
            IdlePriority::SchedIdle => sys::sched_setscheduler(self.tid, libc::SCHED_IDLE),
            IdlePriority::Nice(n) => sys::setpriority(self.tid, n),
        };
        match r {
            Ok(()) => self.lowered = true,
            Err(e) => {
                tracing::warn!(error = %e, "lowering a worker's priority failed; idle lowering off");
                self.mode = IdlePriority::Off;
            }
        }
    }

    fn raise(&mut self) {
        let Some(orig) = self.orig else { return };
        let r = match self.mode {
            IdlePriority::Off => Ok(()),
            IdlePriority::SchedIdle => sys::sched_setscheduler(self.tid, orig.policy),
            IdlePriority::Nice(_) => sys::setpriority(self.tid, orig.nice),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "raising a worker's priority back failed; idle lowering off");
            self.mode = IdlePriority::Off;
        }
        self.lowered = false;
        self.idle_windows = 0;
    }

    /// Whether the worker is lowered now.
    pub(crate) fn is_lowered(&self) -> bool {
        self.lowered
    }
}

impl Drop for IdleLowering {
    fn drop(&mut self) {
        if self.lowered {
            self.raise();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nice_and_policy_after_the_command_name() {
        // Read on this machine from `chrt -i 0 nice -n 19 cat /proc/self/stat`, then with the
        // command name changed to one holding a space and parentheses.
        let real = "24460 (cat) R 24456 24456 7521 0 -1 4194304 254 0 2 0 0 0 0 0 39 19 1 0 1008008 3133440 386 18446744073709551615 94689077223424 94689077243305 140723782592160 0 0 0 0 0 0 0 0 0 17 0 0 5 0 0 0 94689077259312 94689077260928 94689514102784 140723782593247 140723782593267 140723782593267 140723782594539 0";
        let p = parse_stat(real).unwrap();
        assert_eq!(
            p,
            ThreadPriority {
                nice: 19,
                policy: ThreadPriority::SCHED_IDLE
            }
        );
        let line = real.replace("(cat)", "(rescon (w) 0)");
        let p = parse_stat(&line).unwrap();
        assert_eq!(p.nice, 19);
        assert_eq!(p.policy, ThreadPriority::SCHED_IDLE);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 1 2").is_none());
    }

    #[test]
    fn capability_bits_are_read_from_cap_eff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000800000\n";
        assert!(cap_effective(status, CAP_SYS_NICE));
        assert!(!cap_effective(status, 21));
        assert!(!cap_effective("Name: x\n", CAP_SYS_NICE));
    }

    #[test]
    fn lowers_after_idle_windows_and_raises_on_higher_work() {
        // A state as a worker would have it, but with mode Off so no system call is made;
        // the decisions are what is tested here (the kernel switch is in tests/rt_idle.rs).
        let mut s = IdleLowering {
            mode: IdlePriority::Off,
            tid: 0,
            orig: None,
            lowered: false,
            mask: 0,
            idle_windows: 0,
        };
        assert!(s.served(0));
        assert!(!s.window_wants_lower(), "one window is not enough");
        s.served(0);
        assert!(s.window_wants_lower());
        s.served(1);
        assert!(!s.window_wants_lower(), "normal work resets");
        assert!(!s.is_lowered());
        // An idle worker (nothing served) keeps its state.
        assert!(!s.window_wants_lower());
    }
}
