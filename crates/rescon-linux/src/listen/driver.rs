//! The defense driver: samples the kernel, asks the [policy](super::defense), moves
//! prefixes in the [group](super::ListenerGroup), flushes the half-open connections of
//! quarantined sources, logs every action and keeps a history an API can show.

use super::defense::{Action, Decision, DefenseConfig, DefensePolicy, Early, Sample};
use super::diag::{Diag, DiagSocket, by_prefix};
use super::error::Error;
use super::filter::{Filter, Stack, unmap};
use super::group::{ListenerGroup, MemberId};
use super::stats::ListenStats;
use ipnet::IpNet;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Records kept in the history (the oldest are dropped first).
pub const HISTORY: usize = 1024;

/// One action taken, as the history shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Wall-clock time of the action.
    pub when: SystemTime,
    /// Time since the defender started.
    pub elapsed: Duration,
    /// What was done.
    pub action: Action,
    /// The member the prefix went to: the quarantine for a quarantine; for a release, the
    /// member that listed it before, or `None` if none did (then it went to whichever member's
    /// filter takes it).
    pub to: Option<MemberId>,
    /// `Err` with the reason if the group refused the change.
    pub outcome: Result<(), String>,
}

/// A function called with every record, right after the action (see
/// [`Defender::on_action`]).
pub type Observer = Box<dyn Fn(&Record) + Send + Sync>;

struct Inner {
    policy: DefensePolicy,
    diag: Diag,
    /// Who listed each quarantined prefix before, to give it back.
    origin: HashMap<IpNet, Option<MemberId>>,
    last: Decision,
    flushed: usize,
    /// When the pressure counters were last read.
    stats_at: Option<Duration>,
}

/// A sampling interval for a defender that reads early counters.
pub const EARLY_INTERVAL: Duration = Duration::from_millis(5);

/// How often a defender with early counters reads the namespace's pressure counters
/// (`/proc/net/netstat` and `snmp`, about 200 us a read).
pub const STATS_EVERY: Duration = Duration::from_millis(100);

/// Watches one group's port and defends it with a [`DefensePolicy`].
///
/// Samples are read in the network namespace of the thread that calls [`step`](Self::step)
/// (`/proc/thread-self/net`, and a sock_diag socket opened by [`new`](Self::new)): run it in
/// the group's namespace.
///
/// - **With an edge filter** ([`ListenerGroup::drop_at_edge`]), each step reads the group's
///   [early counters](super::early): a batch read of the sources the edge counted and a
///   lookup per black-holed prefix, tens of microseconds whatever the machine's connection
///   count. Sample every few milliseconds ([`EARLY_INTERVAL`]): a flood is then quarantined
///   within milliseconds of its first SYNs. The port's half-open connections are dumped
///   only after a quarantine, to flush the quarantined sources' ones.
/// - **Without**, each step dumps the half-open connections of the port, whose cost grows
///   with the machine's connection count (see [`Diag::syn_recv`]): sample every 50 ms or so,
///   and give the protected member a backlog that holds a flood's SYNs for an interval or
///   two.
///
/// Flushing half-open connections needs `CAP_NET_ADMIN`; without it (or with `flush` off) a
/// queue filled before the quarantine drains as its entries time out.
///
/// ```no_run
/// use rescon_linux::listen::driver::Defender;
/// use rescon_linux::listen::defense::DefenseConfig;
/// # fn group() -> std::sync::Arc<rescon_linux::listen::ListenerGroup> { unimplemented!() }
/// let group = group();
/// let quarantine = group.members()[1].id();
/// let defender = std::sync::Arc::new(Defender::new(group, DefenseConfig::new(quarantine)).unwrap());
/// let running = defender.clone().spawn(std::time::Duration::from_millis(50));
/// // ... later, for an admin API:
/// for r in defender.history() {
///     println!("{:?} {} {:?}", r.elapsed, r.action, r.outcome);
/// }
/// drop(running); // stops the thread
/// ```
pub struct Defender {
    group: Arc<ListenerGroup>,
    quarantine: MemberId,
    flush: bool,
    start: Instant,
    inner: Mutex<Inner>,
    history: Mutex<VecDeque<Record>>,
    observers: Mutex<Vec<Observer>>,
    /// Steps taken and the wall time they took, in nanoseconds.
    steps: AtomicU64,
    step_ns: AtomicU64,
}

impl std::fmt::Debug for Defender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Defender")
            .field("addr", &self.group.local_addr())
            .field("quarantine", &self.quarantine)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state under these locks is replaced whole at each step: still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Defender {
    /// A defender for `group`, moving offenders to `cfg.quarantine`, which must be an
    /// active member whose filter lists prefixes.
    pub fn new(group: Arc<ListenerGroup>, cfg: DefenseConfig) -> Result<Defender, Error> {
        let q = group.member(cfg.quarantine)?;
        if q.is_retired() {
            return Err(Error::Retired(cfg.quarantine));
        }
        let filters = group.filters();
        if matches!(filters[cfg.quarantine.get()].1, Filter::Except(_)) {
            return Err(Error::Complement(cfg.quarantine));
        }
        let quarantine = cfg.quarantine;
        Ok(Defender {
            group,
            quarantine,
            flush: true,
            start: Instant::now(),
            inner: Mutex::new(Inner {
                policy: DefensePolicy::new(cfg)?,
                diag: Diag::open()?,
                origin: HashMap::new(),
                last: Decision::default(),
                flushed: 0,
                stats_at: None,
            }),
            history: Mutex::new(VecDeque::new()),
            observers: Mutex::new(Vec::new()),
            steps: AtomicU64::new(0),
            step_ns: AtomicU64::new(0),
        })
    }

    /// Calls `f` with every action's record, on the defender's thread, right after the
    /// action: a server that keeps its own view of the filters (the admin API's table, the
    /// user-level placement of accepted connections) applies the same move there. `f` must not
    /// call `on_action`.
    pub fn on_action(&self, f: impl Fn(&Record) + Send + Sync + 'static) {
        lock(&self.observers).push(Box::new(f));
    }

    /// Whether to destroy the half-open connections of quarantined sources (default on).
    pub fn set_flush(&mut self, flush: bool) {
        self.flush = flush;
    }

    /// The group defended.
    pub fn group(&self) -> &Arc<ListenerGroup> {
        &self.group
    }

    /// Samples, decides, and applies: one round of the defense.
    pub fn step(&self) -> Result<Decision, Error> {
        let t = Instant::now();
        let r = self.step_inner();
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.step_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }

    /// Steps taken so far, and the wall time they took: what sampling costs.
    pub fn sampling_cost(&self) -> (u64, Duration) {
        (
            self.steps.load(Ordering::Relaxed),
            Duration::from_nanos(self.step_ns.load(Ordering::Relaxed)),
        )
    }

    fn step_inner(&self) -> Result<Decision, Error> {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let cfg = inner.policy.config().clone();
        let early = match self.group.take_sources() {
            Some(sources) => Some(Early {
                sources: sources.map_err(|e| {
                    Error::socket("reading the edge's counters", self.group.local_addr(), e)
                })?,
                drops: self
                    .group
                    .early_drops()
                    .into_iter()
                    .map(|(d, _)| d)
                    .collect(),
            }),
            None => None,
        };
        let half_open = match early {
            Some(_) => Vec::new(),
            None => self.half_open(&mut inner.diag)?,
        };
        // The pressure counters back up the early ones (a flood coming in where no edge
        // is): every step without them, every STATS_EVERY with.
        let at = self.start.elapsed();
        let stats = if early.is_none()
            || inner
                .stats_at
                .is_none_or(|t| at.saturating_sub(t) >= STATS_EVERY)
        {
            inner.stats_at = Some(at);
            Some(ListenStats::read()?)
        } else {
            None
        };
        let quarantine = self.group.member(self.quarantine)?;
        let sample = Sample {
            at,
            stats,
            syn_recv: by_prefix(&half_open, cfg.v4_len, cfg.v6_len),
            early,
            // A black-hole quarantine's SYNs may be dropped at the edge (XDP) before its
            // socket: both count, or a flood the edge stops would look like calm.
            quarantine_drops: quarantine.drops().unwrap_or(0)
                + if quarantine.is_black_hole() {
                    self.group.edge_drops()
                } else {
                    0
                },
        };
        let decision = inner.policy.observe(&sample);
        let mut moves: Vec<(IpNet, Action)> = Vec::new();
        let mut releases: Vec<(IpNet, Action)> = Vec::new();
        for a in &decision.actions {
            match a {
                Action::Quarantine { prefix, .. } => moves.push((*prefix, a.clone())),
                Action::Release { prefix, .. } => releases.push((*prefix, a.clone())),
            }
        }
        let moved = !moves.is_empty();
        // Quarantines first, in one swap, so a merge never leaves a gap.
        if moved {
            let prefixes: Vec<IpNet> = moves.iter().map(|(p, _)| *p).collect();
            match self.group.move_prefixes(&prefixes, self.quarantine) {
                Ok(prev) => {
                    for (p, owner) in prev {
                        inner.origin.insert(p, owner);
                    }
                    for (_, a) in moves {
                        self.record(a, Some(self.quarantine), Ok(()));
                    }
                }
                Err(e) => {
                    for (p, a) in moves {
                        inner.policy.forget(&p);
                        self.record(a, Some(self.quarantine), Err(e.to_string()));
                    }
                }
            }
        }
        for (p, a) in releases {
            let owner = inner.origin.remove(&p).flatten();
            let outcome = match owner {
                // Listed by the quarantine member's own configuration: it stays.
                Some(owner) if owner == self.quarantine => Ok(()),
                Some(owner) => self.group.move_prefixes(&[p], owner).map(drop),
                None => self.group.remove_prefix(self.quarantine, p),
            };
            self.record(a, owner, outcome.map_err(|e| e.to_string()));
        }
        // With early counters the port is dumped only after a quarantine; without, every
        // step's dump is at hand.
        let half_open = if sample.early.is_some() && self.flush && moved {
            self.half_open(&mut inner.diag)?
        } else {
            half_open
        };
        if self.flush {
            let held: Vec<IpNet> = inner.policy.quarantined().map(|(p, _)| *p).collect();
            let doomed: Vec<DiagSocket> = half_open
                .into_iter()
                .filter(|s| {
                    let ip = unmap(s.remote.ip());
                    held.iter().any(|p| p.contains(&ip))
                })
                .collect();
            if !doomed.is_empty() {
                let d = inner.diag.destroy(&doomed)?;
                inner.flushed += d.destroyed;
                tracing::debug!(
                    destroyed = d.destroyed,
                    gone = d.gone,
                    failed = d.failed,
                    "flushed half-open connections of quarantined sources"
                );
            }
        }
        inner.last = decision.clone();
        Ok(decision)
    }

    /// The port's half-open connections (IPv4 clients of a dual-stack group have IPv4
    /// request sockets).
    fn half_open(&self, diag: &mut Diag) -> Result<Vec<DiagSocket>, Error> {
        let (v4, v6) = match self.group.stack() {
            Stack::V4 => (true, false),
            Stack::V6Only => (false, true),
            Stack::Dual => (true, true),
        };
        diag.syn_recv_of(self.group.local_addr().port(), v4, v6)
    }

    fn record(&self, action: Action, to: Option<MemberId>, outcome: Result<(), String>) {
        match &outcome {
            Ok(()) => tracing::info!(addr = %self.group.local_addr(), %action, "defense action"),
            Err(e) => {
                tracing::error!(addr = %self.group.local_addr(), %action, error = %e, "defense action failed")
            }
        }
        let r = Record {
            when: SystemTime::now(),
            elapsed: self.start.elapsed(),
            action,
            to,
            outcome,
        };
        for f in lock(&self.observers).iter() {
            f(&r);
        }
        let mut h = lock(&self.history);
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(r);
    }

    /// Every action taken (the last [`HISTORY`]), oldest first.
    pub fn history(&self) -> Vec<Record> {
        lock(&self.history).iter().cloned().collect()
    }

    /// The prefixes quarantined now, with when (since start) each was quarantined.
    pub fn quarantined(&self) -> Vec<(IpNet, Duration)> {
        lock(&self.inner)
            .policy
            .quarantined()
            .map(|(p, t)| (*p, *t))
            .collect()
    }

    /// The last decision (attack state and rates).
    pub fn last_decision(&self) -> Decision {
        lock(&self.inner).last.clone()
    }

    /// Half-open connections destroyed so far.
    pub fn flushed(&self) -> usize {
        lock(&self.inner).flushed
    }

    /// Runs [`step`](Self::step) every `interval` on a thread of its own, started in the
    /// calling thread's network namespace, until the returned handle is dropped or stopped.
    /// Errors are logged and the defense goes on.
    pub fn spawn(self: Arc<Self>, interval: Duration) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("rescon-defense".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if let Err(e) = self.step() {
                        tracing::error!(error = %e, "defense step failed");
                    }
                    let spent = t.elapsed();
                    if spent < interval {
                        std::thread::park_timeout(interval - spent);
                    }
                }
            })
            .expect("spawn the defense thread");
        Running {
            stop,
            handle: Some(handle),
        }
    }
}

/// A running defense thread; dropping it stops the thread and waits for it.
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}
