//! Processes capped without cgroups: a container's CPU limit held in user mode, as `cpulimit`
//! does.
//!
//! Where kernel enforcement is not available (no root, no delegation), a container's processes
//! (a CGI run, a FastCGI pool) are still held to its `cpu_limit`: a [`Limiter`] thread reads
//! their CPU from `/proc/<pid>/stat`, and stops them (`SIGSTOP`) when they have used their
//! container's budget and continues them (`SIGCONT`) when it is repaid. The decisions are made
//! by a pure [`control::Controller`] (token buckets over the container and its ancestors, as
//! the model's [`rescon::CpuLimit`] says), tested on fake samples; this module reads `/proc`
//! and sends the signals.
//!
//! A capped [`Target`] is a process group (what
//! [`Command::without_cgroups`](crate::cgroup::Command::without_cgroups) makes: the child leads
//! one, and its descendants stay in it unless they leave) or the tree of a process's
//! descendants (found by parent pid, so a process that daemonizes and is reparented leaves
//! it).
//!
//! # Guarantees and limits
//!
//! - Over any run of periods, a busy target gets its limit's CPU, within what it can run in
//!   one tick (the tick times its threads) plus the burst: what it overruns is a debt paid
//!   with stopped time.
//! - CPU is read in clock ticks (10 ms): short bursts are seen late, never lost; what a
//!   member uses between the last look and its exit is.
//! - A stopped process can still be killed; processes are continued when their target is
//!   dropped and when the limiter stops. If the limiter's process dies while they are stopped,
//!   they stay stopped (a kernel cgroup has no such failure: prefer it where it exists).
//! - Only CPU is enforced here: memory is not limited without cgroups, and `max_processes`
//!   counts the processes rescon spawns ([`crate::cgroup::Command`]), not those they fork.
//!   [`crate::enforcement`] reports what is in force.
//! - A target capped with [`Limiter::cap_charging`] is also charged: its CPU goes to its
//!   container's `kernel_cpu_ns` at every look, less what the caller charges elsewhere (the
//!   rule of [`Manager::set_cpu_credit`](crate::cgroup::Manager::set_cpu_credit) for a
//!   cgroup), so a FastCGI pool's idle CPU is its container's and its requests' CPU is counted
//!   once.
//!
//! # Costs
//!
//! Per tick (10 ms by default), one `/proc/<pid>/stat` read per member of each target; every
//! `rescan` (100 ms), one read per process of the system to find members; a signal per
//! member (one per group) at each stop and continue: at 30% of a CPU with a 10 ms tick, about
//! 30 stops a second per busy target.

pub mod control;
mod procfs;

use control::{Action, Controller, TargetId};
use rescon::{Container, ContainerId, CpuLimit, Registry};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state is whole after every step (a target added or removed, a decision applied): a
    // poisoned lock still guards consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The processes a cap applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every process of a process group.
    ProcessGroup(i32),
    /// A process and its descendants.
    Tree(i32),
}

/// How a [`Limiter`] samples.
#[derive(Clone, Debug)]
pub struct Config {
    /// How often running targets are looked at: what a target can overrun (times its threads)
    /// before it is stopped. At least a millisecond.
    pub tick: Duration,
    /// How often every process is read to find new members of the targets.
    pub rescan: Duration,
    /// Where procfs is mounted.
    pub proc_root: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tick: Duration::from_millis(10),
            rescan: Duration::from_millis(100),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// What a limiter is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Targets capped.
    pub targets: usize,
    /// Targets stopped now.
    pub stopped: usize,
    /// Stops sent since the start.
    pub stops: u64,
    /// Continues sent since the start.
    pub continues: u64,
}

/// Holds processes to their containers' CPU limits without cgroups (see the
/// [module docs](self)). Stopping it (dropping it) continues every process it stopped.
///
/// ```no_run
/// use rescon_linux::cgroup::Command;
/// use rescon_linux::usermode::{Config, Limiter, Target};
/// let registry = rescon::Registry::new();
/// let mut a = rescon::Attributes::default();
/// a.set("cpu_limit", "30%").unwrap();
/// let cgi = registry.root().create_child("cgi", a).unwrap();
/// let limiter = Limiter::start(&registry, Config::default())?;
/// let mut child = Command::without_cgroups(&cgi, "/usr/lib/cgi-bin/report").spawn()?;
/// let _capped = limiter.cap(Target::ProcessGroup(child.id() as i32), &cgi)?;
/// child.wait()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Limiter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    /// The registry's privileged root: how the ancestors of a target's container are found.
    root: Container,
    config: Config,
    ticks_per_sec: u64,
    epoch: Instant,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug)]
struct State {
    ctl: Controller,
    targets: BTreeMap<TargetId, Rec>,
    next_id: TargetId,
    next_scan: u64,
    stop: bool,
    stops: u64,
    continues: u64,
}

#[derive(Debug)]
struct Rec {
    target: Target,
    container: Container,
    members: procfs::Members,
    charge: Option<Charge>,
}

/// How much of a target's CPU, in nanoseconds, the caller charges to other containers: a count
/// that never decreases (see [`Limiter::cap_charging`]).
pub type Credit = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A charged target's account: what its container was given so far.
struct Charge {
    credit: Credit,
    /// `credit()` when the cap began: only what is credited since counts against this
    /// target (a restarted pool's predecessor was credited its own CPU).
    base: u64,
    /// The target's CPU given to its container so far, ns.
    reported: u64,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge")
            .field("base", &self.base)
            .field("reported", &self.reported)
            .finish_non_exhaustive()
    }
}

impl Charge {
    /// Given the target's CPU so far (`total`, read first), adds to `c` what is neither given
    /// yet nor credited elsewhere (read right after). Monotone: a credit ahead of the CPU
    /// seen (a request charged from a fresher reading) holds the container still until the
    /// CPU passes it.
    fn charge(&mut self, total: u64, c: &Container) {
        let credited = (self.credit)().saturating_sub(self.base);
        let own = total.saturating_sub(credited);
        if own > self.reported {
            c.account().add_kernel_cpu_ns(own - self.reported);
            self.reported = own;
        }
    }
}

/// A target held by a [`Limiter`]; dropping it ends the cap (its processes are continued if
/// they were stopped).
#[derive(Debug)]
pub struct Capped {
    shared: Weak<Shared>,
    id: TargetId,
}

impl Capped {
    /// Whether the target's processes are stopped now.
    pub fn is_stopped(&self) -> bool {
        self.shared
            .upgrade()
            .is_some_and(|s| lock(&s.state).ctl.is_stopped(self.id))
    }
}

impl Drop for Capped {
    fn drop(&mut self) {
        if let Some(s) = self.shared.upgrade() {
            let mut st = lock(&s.state);
            if let Some(mut rec) = st.targets.remove(&self.id) {
                // A charged target's last look: what its members still there used since.
                if let Some(charge) = &mut rec.charge {
                    rec.members.sample(&s.config.proc_root);
                    charge.charge(s.ticks_to_ns(rec.members.cpu_ticks()), &rec.container);
                }
                if let Some(a) = st.ctl.remove(self.id) {
                    s.signal(&rec, a);
                    st.continues += 1;
                }
            }
        }
    }
}

impl Limiter {
    /// Starts the limiter's thread for containers of `registry`.
    pub fn start(registry: &Registry, config: Config) -> std::io::Result<Limiter> {
        let shared = Arc::new(Shared {
            root: registry.root(),
            ticks_per_sec: crate::cgroup::sys::clock_ticks_per_sec(),
            epoch: Instant::now(),
            state: Mutex::new(State {
                ctl: Controller::new(config.tick),
                targets: BTreeMap::new(),
                next_id: 1,
                next_scan: 0,
                stop: false,
                stops: 0,
                continues: 0,
            }),
            wake: Condvar::new(),
            config,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rescon-usercap".into())
            .spawn(move || s.run())?;
        Ok(Limiter {
            shared,
            thread: Some(thread),
        })
    }

    /// Holds `target` to the CPU limits of `c` and of its ancestors, until the returned
    /// [`Capped`] is dropped. The limits are read at every look, so a change applies at once.
    /// Cap only processes no cgroup limits already (a kernel-enforced container's).
    ///
    /// Refused (`InvalidInput`) for a target this process belongs to (its own process group,
    /// or a tree it is in): stopping it would stop the limiter.
    pub fn cap(&self, target: Target, c: &Container) -> std::io::Result<Capped> {
        self.add(target, c, None)
    }

    /// As [`Limiter::cap`], and charges the target's CPU to `c` (`kernel_cpu_ns`), as a
    /// cgroup's sampler would: at every look, what its processes used since the last, less
    /// what `credit` says the caller charged to other containers since the cap began (read
    /// right after the processes' CPU, so nothing is counted twice). `c`'s usage never goes
    /// down; it adds up with what was credited to the target's CPU. What a member runs
    /// between the last look and its exit is not seen (a tick at most). `credit` runs under
    /// the limiter's lock: it must not call the limiter.
    pub fn cap_charging(
        &self,
        target: Target,
        c: &Container,
        credit: Credit,
    ) -> std::io::Result<Capped> {
        let base = credit();
        self.add(
            target,
            c,
            Some(Charge {
                credit,
                base,
                reported: 0,
            }),
        )
    }

    fn add(
        &self,
        target: Target,
        c: &Container,
        charge: Option<Charge>,
    ) -> std::io::Result<Capped> {
        let s = &self.shared;
        if contains_self(&s.config.proc_root, target) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{target:?} holds this process: capping it would stop the limiter itself; \
                     start the processes to cap in a process group of their own \
                     (cgroup::Command::without_cgroups does)"
                ),
            ));
        }
        let mut st = lock(&s.state);
        let id = st.next_id;
        st.next_id += 1;
        // The leader is a member from the start; the rest are found at the next scan.
        let mut members = procfs::Members::default();
        let leader = match target {
            Target::ProcessGroup(p) | Target::Tree(p) => p,
        };
        if let Some(p) = procfs::read(&s.config.proc_root, leader) {
            members.update(&[(p.pid, p.start_time)]);
            members.record(&p);
        }
        st.targets.insert(
            id,
            Rec {
                target,
                container: c.clone(),
                members,
                charge,
            },
        );
        let now = s.now_ns();
        st.ctl.set_caps(id, &caps_of(&s.root, c), now);
        st.next_scan = now;
        s.wake.notify_all();
        Ok(Capped {
            shared: Arc::downgrade(s),
            id,
        })
    }

    /// What the limiter is doing.
    pub fn stats(&self) -> Stats {
        let st = lock(&self.shared.state);
        Stats {
            targets: st.targets.len(),
            stopped: st
                .targets
                .keys()
                .filter(|id| st.ctl.is_stopped(**id))
                .count(),
            stops: st.stops,
            continues: st.continues,
        }
    }

    /// How it samples.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The mechanism in words, for a report: `user-mode: CPU read from /proc every 10ms,
    /// processes stopped and continued with SIGSTOP/SIGCONT`.
    pub fn describe(&self) -> String {
        format!(
            "user-mode: CPU read from /proc every {:?}, processes stopped and continued with SIGSTOP/SIGCONT",
            self.shared.config.tick
        )
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether this process is one of `target`'s.
fn contains_self(proc_root: &std::path::Path, target: Target) -> bool {
    let me = std::process::id() as i32;
    let Some(mine) = procfs::read(proc_root, me) else {
        return false;
    };
    match target {
        Target::ProcessGroup(pgid) => pgid == mine.pgrp,
        Target::Tree(root) => {
            // This process or one of its ancestors is the root.
            let mut cur = Some(mine);
            while let Some(p) = cur {
                if p.pid == root {
                    return true;
                }
                if p.ppid <= 0 || p.ppid == p.pid {
                    return false;
                }
                cur = procfs::read(proc_root, p.ppid);
            }
            false
        }
    }
}

/// The CPU limits over `c`: its own and its ancestors', nearest first.
fn caps_of(root: &Container, c: &Container) -> Vec<(ContainerId, CpuLimit)> {
    let mut out = Vec::new();
    let mut cur = Some(c.clone());
    while let Some(x) = cur {
        if let Some(l) = x.attrs().cpu_limit {
            out.push((x.id(), l));
        }
        cur = x.parent_id().and_then(|p| root.lookup(p).ok());
    }
    out
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn ticks_to_ns(&self, ticks: u64) -> u64 {
        ticks.saturating_mul(1_000_000_000) / self.ticks_per_sec
    }

    /// Sends a target's processes the signal for `a`.
    fn signal(&self, rec: &Rec, a: Action) {
        let sig = match a {
            Action::Stop => libc::SIGSTOP,
            Action::Continue => libc::SIGCONT,
        };
        use crate::cgroup::sys::kill;
        match rec.target {
            // One signal reaches the whole group, members forked since the last scan too.
            Target::ProcessGroup(pgid) if !rec.members.is_empty() => {
                let _ = kill(-pgid, sig);
            }
            Target::ProcessGroup(_) => {}
            Target::Tree(_) => {
                for pid in rec.members.pids() {
                    // A member that exited since the last look: nothing to signal.
                    let _ = kill(pid, sig);
                }
            }
        }
    }

    fn run(self: Arc<Self>) {
        let mut st = lock(&self.state);
        loop {
            if st.stop {
                let ids: Vec<TargetId> = st.targets.keys().copied().collect();
                for id in ids {
                    if let Some(Action::Continue) = st.ctl.remove(id) {
                        self.signal(&st.targets[&id], Action::Continue);
                    }
                }
                return;
            }
            if st.targets.is_empty() {
                // Nothing to watch: sleep until a target comes (`cap` wakes this thread).
                st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let now = self.now_ns();
            let st_ref = &mut *st;
            if now >= st_ref.next_scan {
                let all = procfs::scan(&self.config.proc_root);
                let by_pid: HashMap<i32, &crate::cgroup::parse::ProcStat> =
                    all.iter().map(|p| (p.pid, p)).collect();
                for (id, rec) in st_ref.targets.iter_mut() {
                    let members = procfs::members_of(&rec.target, &all);
                    rec.members.update(&members);
                    for (pid, _) in &members {
                        if let Some(p) = by_pid.get(pid) {
                            rec.members.record(p);
                        }
                    }
                    // A member forked since the target was stopped runs until it is stopped
                    // too: a tree stopped before its shell forked its workers would otherwise
                    // run them free for as long as it stays over budget.
                    if st_ref.ctl.is_stopped(*id) {
                        self.signal(rec, Action::Stop);
                    }
                }
                st_ref.next_scan = now + self.config.rescan.as_nanos() as u64;
            } else {
                for rec in st_ref.targets.values_mut() {
                    rec.members.sample(&self.config.proc_root);
                }
            }
            let mut samples = Vec::with_capacity(st_ref.targets.len());
            for (id, rec) in st_ref.targets.iter_mut() {
                let cpu = self.ticks_to_ns(rec.members.cpu_ticks());
                if let Some(charge) = &mut rec.charge {
                    charge.charge(cpu, &rec.container);
                }
                samples.push((*id, cpu));
                st_ref
                    .ctl
                    .set_caps(*id, &caps_of(&self.root, &rec.container), now);
            }
            let step = st_ref.ctl.step(now, &samples);
            for (id, a) in &step.actions {
                if let Some(rec) = st_ref.targets.get(id) {
                    self.signal(rec, *a);
                    match a {
                        Action::Stop => st_ref.stops += 1,
                        Action::Continue => st_ref.continues += 1,
                    }
                }
            }
            for (id, ns) in &step.throttled {
                if let Some(rec) = st_ref.targets.get(id) {
                    rec.container.account().add_throttled_ns(*ns);
                }
            }
            let until = step
                .next_ns
                .unwrap_or(u64::MAX)
                .min(st_ref.next_scan.max(now + 1_000_000))
                .min(now + 1_000_000_000);
            let wait = Duration::from_nanos(until.saturating_sub(self.now_ns()));
            st = self
                .wake
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rescon::Attributes;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A pid no process has (above the kernel's default `pid_max` of 2^22): the fake
    /// process below is never confused with a real one, and a signal to it reaches nobody.
    const PID: i32 = 4_194_400;

    /// Writes the fake process's stat: `ticks` of user CPU, leading its own group.
    fn write_stat(root: &std::path::Path, ticks: u64) {
        let dir = root.join(PID.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let line = format!(
            "{PID} (php-fpm) S 1 {PID} {PID} 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0 5000 0 0\n"
        );
        // Whole or absent for a reader: written aside, then renamed over.
        std::fs::write(dir.join("stat.new"), line).unwrap();
        std::fs::rename(dir.join("stat.new"), dir.join("stat")).unwrap();
    }

    /// Waits (bounded) until `f` holds, looking again after each of the limiter's ticks.
    fn until(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(20), "never: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_charged_target_adds_up_with_what_is_credited_elsewhere() {
        // A pool (no CPU limit: never signalled) whose processes use 1 s; 600 ms of it is
        // charged to a request by the caller, so the pool's container gets the other 400 ms.
        let proc_root = tempfile::tempdir().unwrap();
        let registry = Registry::new();
        let pool = registry
            .root()
            .create_child("pool", Attributes::default())
            .unwrap();
        let req = registry
            .root()
            .create_child("req", Attributes::default())
            .unwrap();
        let config = Config {
            tick: Duration::from_millis(1),
            rescan: Duration::from_millis(1),
            proc_root: proc_root.path().to_path_buf(),
        };
        let limiter = Limiter::start(&registry, config).unwrap();
        let tps = crate::cgroup::sys::clock_ticks_per_sec();
        let ticks = |ms: u64| ms * tps / 1000;
        let ns = |ms: u64| ticks(ms) * 1_000_000_000 / tps;
        // Credited before the cap (a previous pool's requests): not this target's.
        let credited = Arc::new(AtomicU64::new(ns(5_000)));
        write_stat(proc_root.path(), ticks(0));
        let c2 = credited.clone();
        let _capped = limiter
            .cap_charging(
                Target::ProcessGroup(PID),
                &pool,
                Arc::new(move || c2.load(Ordering::SeqCst)),
            )
            .unwrap();
        let charge = |n: u64| {
            req.account().add_kernel_cpu_ns(n);
            credited.fetch_add(n, Ordering::SeqCst);
        };
        let own = || pool.usage().kernel_cpu_ns;
        // Charged elsewhere first (the limiter may look at any moment: whether it sees the
        // processes' CPU before or after it grows, the pool never gets more than the rest).
        charge(ns(600));
        write_stat(proc_root.path(), ticks(1_000));
        until("the pool gets the rest", || own() == ns(400));
        // A credit ahead of the processes' CPU holds the pool still; it never goes back.
        charge(ns(900));
        std::thread::sleep(Duration::from_millis(50)); // dozens of looks
        assert_eq!(own(), ns(400));
        // The processes catch up: the pool gets what is beyond every credit, and the two add
        // up to the processes' CPU.
        write_stat(proc_root.path(), ticks(2_000));
        until("the pool catches up", || own() == ns(500));
        assert_eq!(own() + req.usage().kernel_cpu_ns, ns(2_000));
        assert_eq!(limiter.stats().stops, 0, "nothing capped, nothing stopped");
    }
}
