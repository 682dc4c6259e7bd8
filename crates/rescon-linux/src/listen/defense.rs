//! The SYN-flood defense policy: pure logic fed with samples, deciding which source
//! prefixes to quarantine (move to a low- or zero-priority member) and when to release them.
//!
//! # The policy
//!
//! Each [`Sample`] carries the time, the namespace's [`ListenStats`], the half-open
//! (SYN_RECV) connections of the protected port counted by source prefix, and the drop
//! counter of the quarantine member.
//!
//! - **Attack signal.** At least [`trigger_syn_recv`](DefenseConfig::trigger_syn_recv)
//!   half-open connections from sources not yet quarantined, or SYN-queue pressure
//!   ([`ListenStats::pressure`]) growing by at least
//!   [`trigger_pressure_per_s`](DefenseConfig::trigger_pressure_per_s).
//! - **Offenders.** On a signal, every prefix with at least
//!   [`min_prefix_syn_recv`](DefenseConfig::min_prefix_syn_recv) half-open connections is
//!   an offender, unless it overlaps a protected prefix. When at least
//!   [`aggregate_min`](DefenseConfig::aggregate_min) counted prefixes share a shorter
//!   prefix (`/16` for IPv4, `/48` for IPv6 by default) that covers no protected prefix and
//!   holds at least `min_prefix_syn_recv` half-open connections in all, that prefix is
//!   quarantined instead (a flood spoofed over a range spreads thin over many `/24`s). The heaviest
//!   offenders go first, up to [`max_prefixes`](DefenseConfig::max_prefixes) quarantined.
//! - **Hysteresis.** The attack ends only after [`calm_for`](DefenseConfig::calm_for) with
//!   no signal and the quarantine member dropping fewer than
//!   [`calm_drops_per_s`](DefenseConfig::calm_drops_per_s) SYNs a second (a black hole
//!   still sees a flood it is dropping). Then each prefix held at least
//!   [`min_hold`](DefenseConfig::min_hold) is released. A prefix that floods again is
//!   quarantined again on the next signal.
//!
//! # With early counters
//!
//! When the group has an edge filter, a sample carries its [`Early`] counters instead of a
//! `sock_diag` dump, and the driver can sample every few milliseconds:
//!
//! - The half-open connections by prefix are estimated from the SYNs each source `/24` or
//!   `/64` sent less the ACKs it sent, kept as a count that never goes below zero and
//!   decays with [`early_half_life`](DefenseConfig::early_half_life), much as half-open
//!   connections time out. A client answers every SYN-ACK, and its data and FINs are
//!   ACKs too: it stays at zero; a spoofed source never answers. The same triggers, offender marks and aggregation apply to it: a
//!   flood of 70,000 SYN/s spoofed over a `/16` passes the trigger of 128 within 2 ms.
//! - Each quarantined prefix is released on its own, once its own early drops (edge and
//!   black-hole socket) stayed under `calm_drops_per_s` for `calm_for` and it was held
//!   `min_hold`; the attack is over when nothing signals and no prefix is still dropping.
//!
//! ```
//! use rescon_linux::listen::defense::{Action, DefenseConfig, DefensePolicy, Sample};
//! use std::time::Duration;
//! let mut cfg = DefenseConfig::new(rescon_linux::listen::MemberId::from_index(1));
//! cfg.min_hold = Duration::ZERO;
//! let mut policy = DefensePolicy::new(cfg).unwrap();
//! let flood = Sample {
//!     at: Duration::from_millis(100),
//!     syn_recv: vec![("198.19.7.0/24".parse().unwrap(), 900)],
//!     ..Sample::default()
//! };
//! let d = policy.observe(&flood);
//! assert!(d.under_attack);
//! assert!(matches!(d.actions[0], Action::Quarantine { .. }));
//! ```

use super::MemberId;
use super::early::{PrefixDrops, SourceCount};
use super::error::Error;
use super::stats::ListenStats;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

/// The settings of a defense. [`DefenseConfig::new`] gives the defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct DefenseConfig {
    /// The member offenders are moved to (a black hole, or a low-priority member). Its filter
    /// must list prefixes (not be a complement).
    pub quarantine: MemberId,
    /// Half-open connections from unquarantined sources that signal an attack (default 128).
    pub trigger_syn_recv: u32,
    /// Growth of [`ListenStats::pressure`] per second that signals an attack (default 100).
    pub trigger_pressure_per_s: f64,
    /// Half-open connections a prefix needs to be an offender (default 8).
    pub min_prefix_syn_recv: u32,
    /// Prefix length half-open connections are counted by, IPv4 (default 24).
    pub v4_len: u8,
    /// Prefix length half-open connections are counted by, IPv6 (default 64).
    pub v6_len: u8,
    /// Shorter IPv4 prefix offenders are merged into (default 16; `None`: never).
    pub aggregate_v4: Option<u8>,
    /// Shorter IPv6 prefix offenders are merged into (default 48; `None`: never).
    pub aggregate_v6: Option<u8>,
    /// Offenders under one shorter prefix that make it quarantined whole (default 4).
    pub aggregate_min: usize,
    /// Most prefixes quarantined at once (default 64).
    pub max_prefixes: usize,
    /// Quiet time before an attack is over (default 2 s).
    pub calm_for: Duration,
    /// Quarantine drops per second below which it is quiet (default 50).
    pub calm_drops_per_s: f64,
    /// Least time a prefix stays quarantined (default 5 s).
    pub min_hold: Duration,
    /// With early counters: the half-life of the estimate of half-open connections
    /// (default 100 ms).
    pub early_half_life: Duration,
    /// Prefixes never quarantined, nor covered by an aggregate (e.g. your monitoring).
    pub protect: Vec<IpNet>,
}

impl DefenseConfig {
    /// The defaults, moving offenders to `quarantine`.
    pub fn new(quarantine: MemberId) -> DefenseConfig {
        DefenseConfig {
            quarantine,
            trigger_syn_recv: 128,
            trigger_pressure_per_s: 100.0,
            min_prefix_syn_recv: 8,
            v4_len: 24,
            v6_len: 64,
            aggregate_v4: Some(16),
            aggregate_v6: Some(48),
            aggregate_min: 4,
            max_prefixes: 64,
            calm_for: Duration::from_secs(2),
            calm_drops_per_s: 50.0,
            min_hold: Duration::from_secs(5),
            early_half_life: Duration::from_millis(100),
            protect: Vec::new(),
        }
    }

    /// Checks every setting's domain.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field, value: String, allowed| {
            Err(Error::Config {
                field,
                value,
                allowed,
            })
        };
        if self.trigger_syn_recv == 0 {
            return bad("trigger_syn_recv", "0".into(), "at least 1");
        }
        if self.trigger_pressure_per_s.is_nan() || self.trigger_pressure_per_s <= 0.0 {
            return bad(
                "trigger_pressure_per_s",
                self.trigger_pressure_per_s.to_string(),
                "a positive rate",
            );
        }
        if self.min_prefix_syn_recv == 0 {
            return bad("min_prefix_syn_recv", "0".into(), "at least 1");
        }
        if !(1..=32).contains(&self.v4_len) {
            return bad("v4_len", self.v4_len.to_string(), "1..=32");
        }
        if !(1..=128).contains(&self.v6_len) {
            return bad("v6_len", self.v6_len.to_string(), "1..=128");
        }
        if let Some(a) = self.aggregate_v4 {
            if a == 0 || a >= self.v4_len {
                return bad(
                    "aggregate_v4",
                    a.to_string(),
                    "1..v4_len (shorter than v4_len)",
                );
            }
        }
        if let Some(a) = self.aggregate_v6 {
            if a == 0 || a >= self.v6_len {
                return bad(
                    "aggregate_v6",
                    a.to_string(),
                    "1..v6_len (shorter than v6_len)",
                );
            }
        }
        if self.aggregate_min < 2 {
            return bad(
                "aggregate_min",
                self.aggregate_min.to_string(),
                "at least 2",
            );
        }
        if self.max_prefixes == 0 {
            return bad("max_prefixes", "0".into(), "at least 1");
        }
        if self.early_half_life.is_zero() {
            return bad("early_half_life", "0".into(), "a positive duration");
        }
        if self.calm_drops_per_s.is_nan() || self.calm_drops_per_s < 0.0 {
            return bad(
                "calm_drops_per_s",
                self.calm_drops_per_s.to_string(),
                "a rate >= 0",
            );
        }
        Ok(())
    }
}

/// What the defense sees at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Monotonic time of the sample (from any fixed origin).
    pub at: Duration,
    /// The namespace's counters (cumulative), if read for this sample: with early
    /// counters the driver reads them less often (reading them costs about 200 us).
    pub stats: Option<ListenStats>,
    /// Half-open connections of the protected port by source prefix.
    pub syn_recv: Vec<(IpNet, u32)>,
    /// The quarantine member's drop counter (cumulative; [`Member::drops`](super::Member::drops)).
    pub quarantine_drops: u64,
    /// The group's early counters, when it has an edge filter (then `syn_recv` is not
    /// used).
    pub early: Option<Early>,
}

/// The early counters of a group (see [`early`](super::early)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Early {
    /// SYNs and ACKs by source since the previous sample.
    pub sources: Vec<SourceCount>,
    /// SYNs dropped early by black-holed prefix (cumulative).
    pub drops: Vec<PrefixDrops>,
}

/// One decision of the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Move `prefix` to the quarantine member.
    Quarantine {
        /// The prefix.
        prefix: IpNet,
        /// Half-open connections from it in the sample.
        syn_recv: u32,
    },
    /// Move `prefix` back.
    Release {
        /// The prefix.
        prefix: IpNet,
        /// How long it was held.
        held: Duration,
        /// Whether it was merged into a shorter quarantined prefix (rather than the attack
        /// being over).
        merged: bool,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Quarantine { prefix, syn_recv } => {
                write!(f, "quarantine {prefix} ({syn_recv} half-open)")
            }
            Action::Release {
                prefix,
                held,
                merged: false,
            } => write!(f, "release {prefix} after {:.1} s", held.as_secs_f64()),
            Action::Release {
                prefix,
                merged: true,
                ..
            } => write!(f, "release {prefix}: merged into a shorter prefix"),
        }
    }
}

/// What the policy made of a sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Whether an attack is in progress (after hysteresis).
    pub under_attack: bool,
    /// Half-open connections from sources not quarantined.
    pub syn_recv: u32,
    /// Growth of the pressure counters per second since the last sample with them (0 for
    /// a sample without).
    pub pressure_per_s: f64,
    /// Quarantine drops per second since the last sample.
    pub quarantine_drops_per_s: f64,
    /// Changes to make, quarantines first.
    pub actions: Vec<Action>,
}

/// The policy's state. Pure: no clock, no I/O; the driver feeds it samples.
#[derive(Clone, Debug)]
pub struct DefensePolicy {
    cfg: DefenseConfig,
    held: BTreeMap<IpNet, Duration>,
    /// The last sample's time and quarantine drops.
    prev: Option<(Duration, u64)>,
    /// The last sample with stats: its time and pressure.
    prev_pressure: Option<(Duration, u64)>,
    attack: bool,
    calm_since: Option<Duration>,
    /// Early mode: the decaying estimate of half-open connections by prefix.
    unanswered: BTreeMap<IpNet, f64>,
    /// Early mode: each prefix's early drops at the last sample.
    prev_drops: BTreeMap<IpNet, u64>,
    /// Early mode: since when each held prefix has been calm.
    calm: BTreeMap<IpNet, Duration>,
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// `p` counted by the policy's prefix lengths: truncated when they are shorter.
fn bucket(p: IpNet, v4_len: u8, v6_len: u8) -> IpNet {
    match p {
        IpNet::V4(n) if v4_len < n.prefix_len() => {
            IpNet::V4(Ipv4Net::new(n.network(), v4_len).expect("len").trunc())
        }
        IpNet::V6(n) if v6_len < n.prefix_len() => {
            IpNet::V6(Ipv6Net::new(n.network(), v6_len).expect("len").trunc())
        }
        _ => p,
    }
}

fn supernet(p: &IpNet, v4: Option<u8>, v6: Option<u8>) -> Option<IpNet> {
    match p {
        IpNet::V4(n) => {
            let len = v4?;
            (len < n.prefix_len())
                .then(|| IpNet::V4(Ipv4Net::new(n.network(), len).expect("len").trunc()))
        }
        IpNet::V6(n) => {
            let len = v6?;
            (len < n.prefix_len())
                .then(|| IpNet::V6(Ipv6Net::new(n.network(), len).expect("len").trunc()))
        }
    }
}

impl DefensePolicy {
    /// A policy at peace.
    pub fn new(cfg: DefenseConfig) -> Result<DefensePolicy, Error> {
        cfg.validate()?;
        Ok(DefensePolicy {
            cfg,
            held: BTreeMap::new(),
            prev: None,
            prev_pressure: None,
            attack: false,
            calm_since: None,
            unanswered: BTreeMap::new(),
            prev_drops: BTreeMap::new(),
            calm: BTreeMap::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &DefenseConfig {
        &self.cfg
    }

    /// The prefixes quarantined, with the time each was quarantined.
    pub fn quarantined(&self) -> impl Iterator<Item = (&IpNet, &Duration)> {
        self.held.iter()
    }

    /// Whether an attack is in progress.
    pub fn under_attack(&self) -> bool {
        self.attack
    }

    /// Forgets a prefix the driver could not quarantine (or released by hand).
    pub fn forget(&mut self, prefix: &IpNet) {
        self.held.remove(prefix);
        self.calm.remove(prefix);
    }

    fn is_held(&self, p: &IpNet) -> bool {
        self.held.keys().any(|h| h.contains(p))
    }

    fn protected(&self, p: &IpNet) -> bool {
        self.cfg.protect.iter().any(|x| overlaps(x, p))
    }

    /// Takes one sample and decides.
    pub fn observe(&mut self, s: &Sample) -> Decision {
        let dt = match self.prev {
            Some((t, _)) if s.at > t => Some((s.at - t).as_secs_f64()),
            _ => None,
        };
        let mut drops_per_s = match (self.prev, dt) {
            (Some((_, q)), Some(dt)) => s.quarantine_drops.saturating_sub(q) as f64 / dt,
            _ => 0.0,
        };
        self.prev = Some((s.at, s.quarantine_drops));
        let mut pressure_per_s = 0.0;
        if let Some(stats) = &s.stats {
            let pressure = stats.pressure();
            if let Some((t, p)) = self.prev_pressure {
                if s.at > t {
                    pressure_per_s = pressure.saturating_sub(p) as f64 / (s.at - t).as_secs_f64();
                }
            }
            self.prev_pressure = Some((s.at, pressure));
        }
        let counts = match &s.early {
            Some(e) => self.estimate(e, dt.unwrap_or(0.0)),
            None => s.syn_recv.clone(),
        };
        let fresh: Vec<(IpNet, u32)> = counts
            .iter()
            .filter(|(p, _)| !self.is_held(p))
            .copied()
            .collect();
        let total: u32 = fresh.iter().map(|(_, n)| *n).sum();
        let signal =
            total >= self.cfg.trigger_syn_recv || pressure_per_s >= self.cfg.trigger_pressure_per_s;
        let mut actions = Vec::new();
        if signal {
            if !self.attack {
                tracing::warn!(half_open = total, pressure_per_s, "SYN flood suspected");
            }
            self.attack = true;
            self.calm_since = None;
            self.quarantine_offenders(s.at, &fresh, &mut actions);
        }
        match &s.early {
            Some(e) => {
                drops_per_s = self.release_calm_prefixes(s.at, e, dt, signal, &mut actions);
            }
            None => {
                if !signal && self.attack {
                    if drops_per_s < self.cfg.calm_drops_per_s {
                        let since = *self.calm_since.get_or_insert(s.at);
                        if s.at.saturating_sub(since) >= self.cfg.calm_for {
                            tracing::info!("SYN flood over");
                            self.attack = false;
                        }
                    } else {
                        self.calm_since = None;
                    }
                }
                if !self.attack {
                    let due: Vec<(IpNet, Duration)> = self
                        .held
                        .iter()
                        .filter(|(_, since)| s.at.saturating_sub(**since) >= self.cfg.min_hold)
                        .map(|(p, since)| (*p, s.at.saturating_sub(*since)))
                        .collect();
                    for (prefix, held) in due {
                        self.held.remove(&prefix);
                        actions.push(Action::Release {
                            prefix,
                            held,
                            merged: false,
                        });
                    }
                }
            }
        }
        Decision {
            under_attack: self.attack,
            syn_recv: total,
            pressure_per_s,
            quarantine_drops_per_s: drops_per_s,
            actions,
        }
    }

    /// Early mode: decays the estimate of half-open connections over `dt` seconds, adds the
    /// sample's SYNs less ACKs (by the configured prefix lengths, when shorter than the
    /// edge's), and returns it rounded.
    fn estimate(&mut self, e: &Early, dt: f64) -> Vec<(IpNet, u32)> {
        let keep = 0.5f64.powf(dt / self.cfg.early_half_life.as_secs_f64());
        for c in self.unanswered.values_mut() {
            *c *= keep;
        }
        // SYNs less ACKs, netted per prefix before adding, and never below zero: an ACK
        // that falls in the sample after its SYN cancels it there.
        let mut net: BTreeMap<IpNet, f64> = BTreeMap::new();
        for src in &e.sources {
            let p = bucket(src.prefix, self.cfg.v4_len, self.cfg.v6_len);
            *net.entry(p).or_default() += src.syns as f64 - src.acks as f64;
        }
        for (p, n) in net {
            let c = self.unanswered.entry(p).or_default();
            *c = (*c + n).max(0.0);
        }
        self.unanswered.retain(|_, c| *c >= 0.5);
        self.unanswered
            .iter()
            .map(|(p, c)| (*p, c.round().min(f64::from(u32::MAX)) as u32))
            .collect()
    }

    /// Early mode: releases each held prefix whose own drops stayed calm for `calm_for` and
    /// that was held `min_hold`; the attack ends when nothing signals and no held prefix is
    /// still dropping. Returns the held prefixes' drops per second.
    fn release_calm_prefixes(
        &mut self,
        at: Duration,
        e: &Early,
        dt: Option<f64>,
        signal: bool,
        actions: &mut Vec<Action>,
    ) -> f64 {
        let now: BTreeMap<IpNet, u64> = e.drops.iter().map(|d| (d.prefix, d.total())).collect();
        let mut total_rate = 0.0;
        let mut flooding = false;
        let held: Vec<(IpNet, Duration)> = self.held.iter().map(|(p, t)| (*p, *t)).collect();
        for (p, since) in held {
            let cur = now.get(&p).copied().unwrap_or(0);
            let rate = match dt {
                Some(dt) => {
                    cur.saturating_sub(self.prev_drops.get(&p).copied().unwrap_or(0)) as f64 / dt
                }
                None => 0.0,
            };
            total_rate += rate;
            if rate >= self.cfg.calm_drops_per_s {
                self.calm.remove(&p);
                flooding = true;
                continue;
            }
            let quiet = *self.calm.entry(p).or_insert(at);
            if at.saturating_sub(quiet) >= self.cfg.calm_for
                && at.saturating_sub(since) >= self.cfg.min_hold
            {
                self.held.remove(&p);
                self.calm.remove(&p);
                actions.push(Action::Release {
                    prefix: p,
                    held: at.saturating_sub(since),
                    merged: false,
                });
            } else {
                flooding |= at.saturating_sub(quiet) < self.cfg.calm_for;
            }
        }
        self.calm.retain(|p, _| self.held.contains_key(p));
        self.prev_drops = now;
        if self.attack && !signal && !flooding {
            tracing::info!("SYN flood over");
            self.attack = false;
        }
        total_rate
    }

    fn quarantine_offenders(
        &mut self,
        at: Duration,
        fresh: &[(IpNet, u32)],
        actions: &mut Vec<Action>,
    ) {
        let offenders: Vec<(IpNet, u32)> = fresh
            .iter()
            .filter(|(p, n)| *n >= self.cfg.min_prefix_syn_recv && !self.protected(p))
            .copied()
            .collect();
        // Sources that crowd under a shorter prefix, each perhaps below the offender mark
        // (a flood spoofed over a range spreads thin), make that prefix an offender.
        let mut groups: HashMap<IpNet, (usize, u32)> = HashMap::new();
        for (p, n) in fresh {
            if let Some(sup) = supernet(p, self.cfg.aggregate_v4, self.cfg.aggregate_v6) {
                let g = groups.entry(sup).or_default();
                g.0 += 1;
                g.1 += n;
            }
        }
        let merged: HashMap<IpNet, u32> = groups
            .into_iter()
            .filter(|(sup, (k, n))| {
                *k >= self.cfg.aggregate_min
                    && *n >= self.cfg.min_prefix_syn_recv
                    && !self.protected(sup)
            })
            .map(|(sup, (_, n))| (sup, n))
            .collect();
        let mut picks: Vec<(IpNet, u32)> = merged.iter().map(|(p, n)| (*p, *n)).collect();
        for (p, n) in offenders {
            if !merged.keys().any(|m| m.contains(&p)) {
                picks.push((p, n));
            }
        }
        picks.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut covered = Vec::new();
        for (prefix, n) in picks {
            if self.held.len() >= self.cfg.max_prefixes {
                tracing::warn!(
                    max = self.cfg.max_prefixes,
                    "quarantine full: raise max_prefixes or aggregate more"
                );
                break;
            }
            if self.is_held(&prefix) {
                continue;
            }
            covered.extend(self.held.keys().filter(|h| prefix.contains(*h)).copied());
            self.held.insert(prefix, at);
            actions.push(Action::Quarantine {
                prefix,
                syn_recv: n,
            });
        }
        for c in covered {
            if let Some(since) = self.held.remove(&c) {
                actions.push(Action::Release {
                    prefix: c,
                    held: at.saturating_sub(since),
                    merged: true,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg() -> DefenseConfig {
        let mut c = DefenseConfig::new(MemberId::from_index(1));
        c.calm_for = ms(500);
        c.min_hold = ms(1000);
        c
    }

    fn sample(at: u64, syn_recv: &[(&str, u32)], qdrops: u64) -> Sample {
        Sample {
            at: ms(at),
            stats: Some(ListenStats::default()),
            syn_recv: syn_recv.iter().map(|(s, n)| (p(s), *n)).collect(),
            quarantine_drops: qdrops,
            early: None,
        }
    }

    fn quarantined(d: &Decision) -> Vec<IpNet> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::Quarantine { prefix, .. } => Some(*prefix),
                _ => None,
            })
            .collect()
    }

    fn released(d: &Decision) -> Vec<IpNet> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::Release { prefix, .. } => Some(*prefix),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn quiet_traffic_triggers_nothing() {
        let mut pol = DefensePolicy::new(cfg()).unwrap();
        for t in 0..20 {
            let d = pol.observe(&sample(
                t * 100,
                &[("198.18.2.0/24", 3), ("10.0.0.0/24", 9)],
                0,
            ));
            assert!(!d.under_attack && d.actions.is_empty(), "{d:?}");
        }
    }

    #[test]
    fn a_flood_is_quarantined_then_released_after_calm_and_hold() {
        let mut pol = DefensePolicy::new(cfg()).unwrap();
        let d = pol.observe(&sample(
            0,
            &[("198.19.7.0/24", 300), ("198.18.2.0/24", 2)],
            0,
        ));
        assert!(d.under_attack);
        assert_eq!(
            quarantined(&d),
            vec![p("198.19.7.0/24")],
            "the legit /24 is below min"
        );
        // The black hole drops the flood: still under attack while drops are high.
        let d = pol.observe(&sample(100, &[("198.19.7.0/24", 300)], 5_000));
        assert!(d.under_attack && d.actions.is_empty());
        assert_eq!(d.syn_recv, 0, "quarantined sources no longer count");
        assert_eq!(d.quarantine_drops_per_s, 50_000.0);
        let d = pol.observe(&sample(1_200, &[], 100_000));
        assert!(d.under_attack, "drops still high");
        // Flood stops: calm needs 500 ms, then the 1 s hold has long passed.
        let d = pol.observe(&sample(1_300, &[], 100_000));
        assert!(d.under_attack && d.actions.is_empty());
        let d = pol.observe(&sample(1_700, &[], 100_001));
        assert!(d.under_attack, "calm for 400 ms only");
        let d = pol.observe(&sample(1_800, &[], 100_001));
        assert!(!d.under_attack);
        assert_eq!(released(&d), vec![p("198.19.7.0/24")]);
        assert_eq!(pol.quarantined().count(), 0);
    }

    #[test]
    fn hold_time_delays_release_and_a_relapse_quarantines_again() {
        let mut c = cfg();
        c.min_hold = ms(3000);
        let mut pol = DefensePolicy::new(c).unwrap();
        pol.observe(&sample(0, &[("198.19.7.0/24", 300)], 0));
        let d = pol.observe(&sample(100, &[], 0));
        assert!(d.under_attack);
        let d = pol.observe(&sample(700, &[], 0));
        assert!(!d.under_attack);
        assert!(d.actions.is_empty(), "held only 700 ms of 3 s");
        let d = pol.observe(&sample(3_000, &[], 0));
        assert_eq!(released(&d), vec![p("198.19.7.0/24")]);
        let d = pol.observe(&sample(3_100, &[("198.19.7.0/24", 200)], 0));
        assert_eq!(quarantined(&d), vec![p("198.19.7.0/24")]);
    }

    #[test]
    fn spread_floods_are_merged_and_protected_prefixes_spared() {
        let mut c = cfg();
        c.protect = vec![p("198.18.2.0/24")];
        let mut pol = DefensePolicy::new(c).unwrap();
        // A spoofed flood over 198.19.0.0/16 and a noisy but protected client network.
        let mut counts: Vec<(String, u32)> =
            (0..40).map(|i| (format!("198.19.{i}.0/24"), 10)).collect();
        counts.push(("198.18.2.0/24".into(), 50));
        counts.push(("198.18.3.0/24".into(), 9));
        let refs: Vec<(&str, u32)> = counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        let d = pol.observe(&sample(0, &refs, 0));
        // 198.18.0.0/16 holds 2 offenders, and a protected one: never merged; 198.18.3.0/24
        // is an offender of its own.
        assert_eq!(
            quarantined(&d),
            vec![p("198.19.0.0/16"), p("198.18.3.0/24")]
        );
    }

    #[test]
    fn a_thin_spread_is_caught_by_its_shorter_prefix() {
        let mut pol = DefensePolicy::new(cfg()).unwrap();
        // 256 /24s with 2 half-open each: no single /24 is an offender.
        let counts: Vec<(String, u32)> =
            (0..256).map(|i| (format!("198.19.{i}.0/24"), 2)).collect();
        let mut refs: Vec<(&str, u32)> = counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        refs.push(("198.18.2.0/24", 1));
        refs.push(("198.18.7.0/24", 1));
        let d = pol.observe(&sample(0, &refs, 0));
        assert!(d.under_attack);
        assert_eq!(quarantined(&d), vec![p("198.19.0.0/16")]);
        // Three /24s with few half-open are not enough to take 198.18.0.0/16 along with a
        // real offender.
        let mut pol = DefensePolicy::new(cfg()).unwrap();
        let d = pol.observe(&sample(
            0,
            &[
                ("198.18.2.0/24", 3),
                ("198.18.3.0/24", 3),
                ("198.18.4.0/24", 3),
                ("203.0.113.0/24", 200),
            ],
            0,
        ));
        assert_eq!(quarantined(&d), vec![p("203.0.113.0/24")]);
    }

    #[test]
    fn a_later_aggregate_replaces_the_prefixes_it_covers() {
        let mut pol = DefensePolicy::new(cfg()).unwrap();
        let d = pol.observe(&sample(0, &[("198.19.1.0/24", 200)], 0));
        assert_eq!(quarantined(&d), vec![p("198.19.1.0/24")]);
        let d = pol.observe(&sample(
            100,
            &[
                ("198.19.2.0/24", 50),
                ("198.19.3.0/24", 50),
                ("198.19.4.0/24", 50),
                ("198.19.5.0/24", 50),
            ],
            0,
        ));
        assert_eq!(quarantined(&d), vec![p("198.19.0.0/16")]);
        assert_eq!(released(&d), vec![p("198.19.1.0/24")]);
        assert!(matches!(d.actions[1], Action::Release { merged: true, .. }));
        assert_eq!(
            pol.quarantined().map(|(p, _)| *p).collect::<Vec<_>>(),
            vec![p("198.19.0.0/16")]
        );
    }

    #[test]
    fn the_quarantine_is_bounded() {
        let mut c = cfg();
        c.max_prefixes = 3;
        c.aggregate_v4 = None;
        let mut pol = DefensePolicy::new(c).unwrap();
        let counts: Vec<(String, u32)> = (0..10)
            .map(|i| (format!("198.19.{}.0/24", i * 7), 100 + i))
            .collect();
        let refs: Vec<(&str, u32)> = counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        let d = pol.observe(&sample(0, &refs, 0));
        // The three heaviest.
        assert_eq!(
            quarantined(&d),
            vec![
                p("198.19.63.0/24"),
                p("198.19.56.0/24"),
                p("198.19.49.0/24")
            ]
        );
        let d = pol.observe(&sample(100, &refs, 0));
        assert!(d.actions.is_empty());
    }

    #[test]
    fn pressure_counters_alone_signal_an_attack() {
        let mut pol = DefensePolicy::new(cfg()).unwrap();
        let mut s = sample(0, &[("198.19.9.0/24", 20)], 0);
        assert!(
            !pol.observe(&s).under_attack,
            "20 half-open is below the trigger"
        );
        s.at = ms(100);
        s.stats = Some(ListenStats {
            req_q_full_drop: 1000, // 10,000 drops/s
            ..ListenStats::default()
        });
        let d = pol.observe(&s);
        assert!(d.under_attack);
        assert_eq!(d.pressure_per_s, 10_000.0);
        assert_eq!(quarantined(&d), vec![p("198.19.9.0/24")]);
    }

    fn early(at: u64, sources: &[(&str, u64, u64)], drops: &[(&str, u64)]) -> Sample {
        Sample {
            at: ms(at),
            early: Some(Early {
                sources: sources
                    .iter()
                    .map(|(s, syns, acks)| SourceCount {
                        prefix: p(s),
                        syns: *syns,
                        acks: *acks,
                    })
                    .collect(),
                drops: drops
                    .iter()
                    .map(|(s, n)| PrefixDrops {
                        prefix: p(s),
                        edge: *n,
                        socket: 0,
                    })
                    .collect(),
            }),
            ..Sample::default()
        }
    }

    #[test]
    fn early_counts_catch_a_spread_flood_in_one_sample() {
        let mut pol = DefensePolicy::new(cfg()).unwrap();
        // 5 ms of 70,000 SYN/s spoofed over 198.19.0.0/16: about 1.4 SYNs per /24, none
        // answered; a busy client answers all of its SYNs.
        let mut src: Vec<(String, u64, u64)> = (0..=255)
            .map(|i| (format!("198.19.{i}.0/24"), 1 + u64::from(i % 3 == 0), 0))
            .collect();
        src.push(("192.0.2.0/24".into(), 120, 360));
        let refs: Vec<(&str, u64, u64)> =
            src.iter().map(|(s, a, b)| (s.as_str(), *a, *b)).collect();
        let d = pol.observe(&early(0, &refs, &[]));
        assert!(d.under_attack);
        assert_eq!(quarantined(&d), vec![p("198.19.0.0/16")]);
        // Nothing from the client is ever counted against it.
        assert!(
            !pol.quarantined()
                .any(|(q, _)| q.contains(&p("192.0.2.0/24")))
        );
    }

    #[test]
    fn the_early_estimate_decays_like_timeouts() {
        let mut pol = DefensePolicy::new(cfg()).unwrap();
        // 100 unanswered from one /24: below the trigger of 128, no quarantine.
        let d = pol.observe(&early(0, &[("203.0.113.0/24", 100, 0)], &[]));
        assert!(!d.under_attack);
        assert_eq!(d.syn_recv, 100);
        // One half-life later, half of it is left; with 80 more, 130 passes the trigger.
        let d = pol.observe(&early(100, &[("203.0.113.0/24", 80, 0)], &[]));
        assert_eq!(d.syn_recv, 130);
        assert_eq!(quarantined(&d), vec![p("203.0.113.0/24")]);
        // A source whose SYNs are answered never accumulates, also when its ACKs fall in
        // the next sample.
        let mut pol = DefensePolicy::new(cfg()).unwrap();
        for t in 0..50 {
            let acks = if t % 2 == 0 { 180 } else { 420 };
            let d = pol.observe(&early(t * 5, &[("192.0.2.0/24", 200, acks)], &[]));
            assert!(!d.under_attack, "{t}: {d:?}");
            assert!(d.syn_recv <= 20, "{t}: {d:?}");
        }
        // And an old count fades out.
        let mut pol = DefensePolicy::new(cfg()).unwrap();
        pol.observe(&early(0, &[("203.0.113.0/24", 100, 0)], &[]));
        let d = pol.observe(&early(1_000, &[], &[]));
        assert_eq!(d.syn_recv, 0);
    }

    #[test]
    fn each_quarantined_prefix_is_released_on_its_own() {
        let mut c = cfg();
        c.aggregate_v4 = None;
        let mut pol = DefensePolicy::new(c).unwrap();
        let (a, b) = ("198.19.1.0/24", "198.19.2.0/24");
        let d = pol.observe(&early(0, &[(a, 200, 0), (b, 200, 0)], &[]));
        assert_eq!(quarantined(&d).len(), 2);
        // Both flood on, dropped early: 100 per 100 ms = 1,000/s each.
        let mut na = 0;
        let mut nb = 0;
        for t in 1..=10 {
            na += 100;
            nb += 100;
            let d = pol.observe(&early(t * 100, &[], &[(a, na), (b, nb)]));
            assert!(d.under_attack && d.actions.is_empty(), "{d:?}");
            assert_eq!(d.quarantine_drops_per_s, 2_000.0);
        }
        // b stops at 1 s; a goes on. b is calm for 500 ms and held for 1 s: released alone.
        let mut released_b = None;
        for t in 11..=20 {
            na += 100;
            let d = pol.observe(&early(t * 100, &[], &[(a, na), (b, nb)]));
            assert!(d.under_attack);
            if !released(&d).is_empty() {
                assert_eq!(released(&d), vec![p(b)]);
                released_b = Some(t);
            }
        }
        assert_eq!(
            released_b,
            Some(16),
            "calm from 1.1 s, released 500 ms later"
        );
        // a stops: released after its own calm, and the attack is over.
        let mut t = 21;
        loop {
            let d = pol.observe(&early(t * 100, &[], &[(a, na), (b, nb)]));
            if !released(&d).is_empty() {
                assert_eq!(released(&d), vec![p(a)]);
                assert!(!d.under_attack);
                break;
            }
            assert!(d.under_attack, "{t}");
            t += 1;
            assert!(t < 40);
        }
        assert_eq!(t, 26);
    }

    #[test]
    fn settings_are_checked() {
        let mut c = cfg();
        c.aggregate_v4 = Some(24);
        assert!(
            DefensePolicy::new(c)
                .unwrap_err()
                .to_string()
                .contains("aggregate_v4")
        );
        let mut c = cfg();
        c.trigger_pressure_per_s = f64::NAN;
        assert!(DefensePolicy::new(c).is_err());
        let mut c = cfg();
        c.v4_len = 33;
        assert!(DefensePolicy::new(c).is_err());
        let mut c = cfg();
        c.early_half_life = Duration::ZERO;
        assert!(DefensePolicy::new(c).is_err());
    }
}
