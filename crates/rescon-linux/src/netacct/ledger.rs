//! The accounting arithmetic: from the kernel's cumulative counters to what each container
//! is charged per interval, and the interrupted threads' credit. Pure: no I/O, no clock;
//! tested on literal inputs.
//!
//! # What a container is charged
//!
//! Over an interval, NET_RX softirq ran for `T` ns on all CPUs: the driver, GRO, IP, the
//! socket lookup, TCP, the wake-up of the reader. `T` is apportioned by **packets** among
//! everything the stack received: each container's packets (in softirq or from a socket's
//! backlog: every one of them came through NET_RX), the packets dropped early for it (by
//! the edge filter or its black-hole socket, which never reach a socket), and everyone
//! else's. The denominator is the larger of the containers' packets and every packet the
//! stack received (the kernel's count, [`Totals::frames`]), so that traffic of sockets
//! nobody bound, other protocols, and handshakes keep their share instead of inflating the
//! containers'. What is not charged to a container is **unattributed**; the two add up to
//! `T` exactly: each share is rounded down and the remainders are handed out by largest
//! fraction ([`apportion`]).
//!
//! Packets, not time per packet: the programs read no clock per packet (see the module docs
//! of [`netacct`](super), "Costs"). A container whose packets cost more than the average
//! (large ones, out of order, each waking a reader) is charged the average: over the
//! packets of one interval, the error is the spread of the per-packet cost, not a bias
//! towards any container.
//!
//! # The interrupted thread
//!
//! Without IRQ time accounting (as on these machines), the kernel adds softirq time to the
//! task it interrupted. The programs add each NET_RX run's time to the interrupted thread's
//! credit when it belongs to the watched process; [`credit_back`] takes a thread's credit
//! out of what its polls were charged, in proportion to each charge, so that the same
//! nanoseconds are not charged twice: once to the container whose packets they were, and
//! once to the container whose poll happened to be running.
//!
//! ```
//! use rescon_linux::netacct::ledger::{apportion, credit_back};
//! // 1000 ns shared by packets 3:1, with 4 more packets of nobody's: 375 + 125.
//! assert_eq!(apportion(1000, &[("a", 3), ("b", 1)], 8), vec![("a", 375), ("b", 125)]);
//! // A thread charged 600 ns to "a" and 200 ns to "b" had 400 ns stolen by softirq.
//! assert_eq!(credit_back(&[("a", 600), ("b", 200)], 400), vec![("a", 300), ("b", 100)]);
//! ```

use rescon::ContainerId;
use std::collections::BTreeMap;

/// One container's counters, cumulative, as the kernel keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketCounters {
    /// TCP packets received (one per skb the TCP layer handled: a GRO aggregate counts once).
    pub rx_packets: u64,
    /// Bytes of those packets from the TCP header on.
    pub rx_bytes: u64,
    /// TCP packets sent (one per skb handed to a device: a TSO aggregate on loopback counts
    /// once).
    pub tx_packets: u64,
    /// Bytes of those from the TCP header on.
    pub tx_bytes: u64,
}

impl SocketCounters {
    pub(crate) fn from_words(w: &[u64]) -> SocketCounters {
        let g = |i: usize| w.get(i).copied().unwrap_or(0);
        SocketCounters {
            rx_packets: g(0),
            rx_bytes: g(1),
            tx_packets: g(2),
            tx_bytes: g(3),
        }
    }

    fn delta(&self, prev: &SocketCounters) -> SocketCounters {
        SocketCounters {
            rx_packets: self.rx_packets.wrapping_sub(prev.rx_packets),
            rx_bytes: self.rx_bytes.wrapping_sub(prev.rx_bytes),
            tx_packets: self.tx_packets.wrapping_sub(prev.tx_packets),
            tx_bytes: self.tx_bytes.wrapping_sub(prev.tx_bytes),
        }
    }
}

/// The machine-wide counters, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Time in NET_RX softirq, all CPUs.
    pub netrx_ns: u64,
    /// NET_RX softirq runs.
    pub netrx_runs: u64,
    /// Packets the stack received, all CPUs, every protocol (`/proc/net/softnet_stat`).
    pub frames: u64,
    /// Packets of sockets whose container was forgotten since they were bound.
    pub lost: u64,
    /// NET_RX time credited to the watched process's threads.
    pub credited_ns: u64,
}

impl Totals {
    /// From the programs' words (`frames` is read apart).
    pub(crate) fn from_words(w: &[u64]) -> Totals {
        let g = |i: usize| w.get(i).copied().unwrap_or(0);
        Totals {
            netrx_ns: g(0),
            netrx_runs: g(1),
            frames: 0,
            lost: g(2),
            credited_ns: g(3),
        }
    }

    fn delta(&self, p: &Totals) -> Totals {
        Totals {
            netrx_ns: self.netrx_ns.wrapping_sub(p.netrx_ns),
            netrx_runs: self.netrx_runs.wrapping_sub(p.netrx_runs),
            frames: self.frames.wrapping_sub(p.frames),
            lost: self.lost.wrapping_sub(p.lost),
            credited_ns: self.credited_ns.wrapping_sub(p.credited_ns),
        }
    }
}

/// Everything the kernel counted, cumulative: one read of
/// [`NetAccounting::read`](super::NetAccounting::read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// By container.
    pub containers: BTreeMap<ContainerId, SocketCounters>,
    /// Machine-wide.
    pub totals: Totals,
    /// NET_RX softirq time that interrupted each thread (by thread id) of the watched
    /// process.
    pub credits: BTreeMap<u32, u64>,
}

/// What one container was charged over an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetUsage {
    /// TCP packets received.
    pub rx_packets: u64,
    /// Bytes received (from the TCP header on).
    pub rx_bytes: u64,
    /// TCP packets sent.
    pub tx_packets: u64,
    /// Bytes sent (from the TCP header on).
    pub tx_bytes: u64,
    /// Packets dropped early for it (edge filter, black-hole socket).
    pub dropped: u64,
    /// Its share, by packets, of the NET_RX softirq time.
    pub softirq_ns: u64,
}

impl NetUsage {
    /// The kernel's network CPU charged to the container.
    pub fn kernel_net_ns(&self) -> u64 {
        self.softirq_ns
    }
}

/// One interval, from [`Ledger::advance`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interval {
    /// By container, those with anything to report.
    pub containers: BTreeMap<ContainerId, NetUsage>,
    /// NET_RX softirq time, all CPUs.
    pub netrx_ns: u64,
    /// The part charged to containers.
    pub attributed_ns: u64,
    /// The rest, the share of the packets of no container: `attributed_ns +
    /// unattributed_ns == netrx_ns`.
    pub unattributed_ns: u64,
    /// Packets the stack received (every protocol and socket).
    pub frames: u64,
    /// The containers' packets (received, and dropped early for them).
    pub packets_seen: u64,
    /// NET_RX time that interrupted each thread of the watched process.
    pub credits: BTreeMap<u32, u64>,
    /// Packets of sockets whose container was forgotten while they were bound.
    pub lost: u64,
}

impl Interval {
    /// The share of softirq time charged to containers (1 when there was none).
    pub fn attributed_fraction(&self) -> f64 {
        if self.netrx_ns == 0 {
            1.0
        } else {
            self.attributed_ns as f64 / self.netrx_ns as f64
        }
    }
}

/// Turns cumulative reads into per-interval charges; see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    prev: Counters,
    prev_drops: BTreeMap<ContainerId, u64>,
}

impl Ledger {
    /// A ledger whose first interval starts at zero (use [`Ledger::starting_at`] to start
    /// from a read).
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// A ledger whose first interval starts at `now` (with `drops` early drops so far).
    pub fn starting_at(now: &Counters, drops: &[(ContainerId, u64)]) -> Ledger {
        Ledger {
            prev: now.clone(),
            prev_drops: drops.iter().copied().collect(),
        }
    }

    /// Forgets a container (its entry was deleted in the kernel): a later entry with its id
    /// starts from zero.
    pub fn forget(&mut self, id: ContainerId) {
        self.prev.containers.remove(&id);
        self.prev_drops.remove(&id);
    }

    /// The interval since the last call: `now` is a read of the kernel's counters, `drops`
    /// the early drops so far by container (cumulative; from the listener groups).
    pub fn advance(&mut self, now: &Counters, drops: &[(ContainerId, u64)]) -> Interval {
        let t = now.totals.delta(&self.prev.totals);
        let mut rows: BTreeMap<ContainerId, NetUsage> = BTreeMap::new();
        let mut weights: BTreeMap<ContainerId, u64> = BTreeMap::new();
        for (id, c) in &now.containers {
            let d = match self.prev.containers.get(id) {
                Some(p) => c.delta(p),
                None => *c,
            };
            if d != SocketCounters::default() {
                rows.insert(
                    *id,
                    NetUsage {
                        rx_packets: d.rx_packets,
                        rx_bytes: d.rx_bytes,
                        tx_packets: d.tx_packets,
                        tx_bytes: d.tx_bytes,
                        ..NetUsage::default()
                    },
                );
            }
            if d.rx_packets > 0 {
                weights.insert(*id, d.rx_packets);
            }
        }
        let mut drop_now: BTreeMap<ContainerId, u64> = BTreeMap::new();
        for &(id, n) in drops {
            *drop_now.entry(id).or_default() += n;
        }
        for (id, n) in &drop_now {
            let d = n.saturating_sub(self.prev_drops.get(id).copied().unwrap_or(0));
            if d > 0 {
                rows.entry(*id).or_default().dropped = d;
                let w = weights.entry(*id).or_default();
                *w = w.saturating_add(d);
            }
        }
        let weights: Vec<(ContainerId, u64)> = weights.into_iter().collect();
        let seen: u64 = weights.iter().map(|(_, w)| *w).sum();
        let mut attributed = 0;
        for (id, ns) in apportion(t.netrx_ns, &weights, seen.max(t.frames)) {
            rows.entry(id).or_default().softirq_ns = ns;
            attributed += ns;
        }
        let mut credits = BTreeMap::new();
        for (tid, ns) in &now.credits {
            let d = ns.saturating_sub(self.prev.credits.get(tid).copied().unwrap_or(0));
            if d > 0 {
                credits.insert(*tid, d);
            }
        }
        self.prev = now.clone();
        self.prev_drops = drop_now;
        Interval {
            containers: rows,
            netrx_ns: t.netrx_ns,
            attributed_ns: attributed,
            unattributed_ns: t.netrx_ns - attributed,
            frames: t.frames,
            packets_seen: seen,
            credits,
            lost: t.lost,
        }
    }
}

/// Splits `total` among `weights` out of `denominator` (at least their sum): each gets
/// `total * w / denominator` rounded down, then the units lost to rounding, `floor(total *
/// sum / denominator)` minus the sum of the shares, go one each to the largest remainders
/// (ties to the earlier entry). What the weights do not cover of the denominator goes to
/// nobody.
pub fn apportion<K: Copy>(total: u64, weights: &[(K, u64)], denominator: u64) -> Vec<(K, u64)> {
    let sum: u128 = weights.iter().map(|(_, w)| u128::from(*w)).sum();
    let den = u128::from(denominator).max(sum);
    if den == 0 {
        return weights.iter().map(|(k, _)| (*k, 0)).collect();
    }
    let total = u128::from(total);
    let mut out: Vec<(K, u64, u128)> = weights
        .iter()
        .map(|(k, w)| {
            let x = total * u128::from(*w);
            (*k, (x / den) as u64, x % den)
        })
        .collect();
    // floor(total * sum / den), without forming total * sum (which can pass 2^128): the
    // shares' floors plus the whole units in their remainders.
    let given: u64 = out.iter().map(|(_, s, _)| *s).sum();
    let rems: u128 = out.iter().map(|(_, _, r)| *r).sum();
    let target = given + (rems / den) as u64;
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by(|&a, &b| out[b].2.cmp(&out[a].2).then(a.cmp(&b)));
    for &i in order.iter().take(target.saturating_sub(given) as usize) {
        out[i].1 += 1;
    }
    out.into_iter().map(|(k, s, _)| (k, s)).collect()
}

/// Takes `stolen` ns (NET_RX softirq time that interrupted a thread) out of what that
/// thread's polls were charged over the same interval, in proportion to each charge (the
/// interruptions fall uniformly over the time the thread ran). A charge never goes below
/// zero: stolen time beyond the charges fell outside any poll (the runtime's own work, or
/// waiting in the kernel) and is already nobody's.
pub fn credit_back<K: Copy>(charged: &[(K, u64)], stolen: u64) -> Vec<(K, u64)> {
    let sum: u64 = charged.iter().map(|(_, c)| *c).sum();
    let take = stolen.min(sum);
    let cuts = apportion(take, charged, sum);
    charged
        .iter()
        .zip(cuts)
        .map(|((k, c), (_, cut))| (*k, c - cut))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> ContainerId {
        ContainerId::from_raw(n).unwrap()
    }

    /// `rows`: (container, packets received); every packet 100 bytes.
    fn counters(rows: &[(u64, u64)], netrx_ns: u64, frames: u64) -> Counters {
        Counters {
            containers: rows
                .iter()
                .map(|&(c, p)| {
                    (
                        id(c),
                        SocketCounters {
                            rx_packets: p,
                            rx_bytes: 100 * p,
                            ..SocketCounters::default()
                        },
                    )
                })
                .collect(),
            totals: Totals {
                netrx_ns,
                frames,
                ..Totals::default()
            },
            credits: BTreeMap::new(),
        }
    }

    #[test]
    fn apportion_is_exact_and_proportional() {
        assert_eq!(
            apportion(10, &[('a', 1), ('b', 1), ('c', 1)], 3),
            vec![('a', 4), ('b', 3), ('c', 3)]
        );
        // Out of a larger denominator: 10 * 3/4 = 7.5 -> 7 in all.
        assert_eq!(
            apportion(10, &[('a', 2), ('b', 1)], 4),
            vec![('a', 5), ('b', 2)]
        );
        assert_eq!(apportion(0, &[('a', 2)], 2), vec![('a', 0)]);
        assert_eq!(
            apportion(7, &[('a', 0), ('b', 0)], 0),
            vec![('a', 0), ('b', 0)]
        );
        // The denominator is at least the weights' sum.
        assert_eq!(
            apportion(9, &[('a', 2), ('b', 1)], 1),
            vec![('a', 6), ('b', 3)]
        );
        // Large values do not overflow.
        let big = apportion(u64::MAX, &[('a', u64::MAX), ('b', u64::MAX)], u64::MAX);
        assert_eq!(
            big.iter().map(|x| x.1 as u128).sum::<u128>(),
            u64::MAX as u128
        );
    }

    #[test]
    fn softirq_time_by_packets() {
        let mut l = Ledger::new();
        let now = counters(&[(1, 30), (2, 10)], 10_000, 40);
        let i = l.advance(&now, &[]);
        assert_eq!(i.containers[&id(1)].softirq_ns, 7_500);
        assert_eq!(i.containers[&id(2)].kernel_net_ns(), 2_500);
        assert_eq!(i.attributed_ns, 10_000);
        assert_eq!(i.unattributed_ns, 0);
        assert_eq!(i.attributed_fraction(), 1.0);
        assert_eq!(i.containers[&id(1)].rx_bytes, 3_000);
        assert_eq!(i.packets_seen, 40);
    }

    #[test]
    fn everyone_else_s_packets_keep_their_share() {
        let mut l = Ledger::new();
        // 20 packets of ours among 80 the stack received: ours is a quarter.
        let now = counters(&[(1, 20)], 10_000, 80);
        let i = l.advance(&now, &[]);
        assert_eq!(i.containers[&id(1)].softirq_ns, 2_500);
        assert_eq!(i.attributed_ns, 2_500);
        assert_eq!(i.unattributed_ns, 7_500);
        assert_eq!(i.attributed_fraction(), 0.25);
        // The stack's count can lag ours (read a moment earlier): never above the whole.
        let i = l.advance(&counters(&[(1, 40)], 20_000, 90), &[]);
        assert_eq!(i.containers[&id(1)].softirq_ns, 10_000);
        assert_eq!(i.unattributed_ns, 0);
    }

    #[test]
    fn sent_packets_weigh_nothing_but_are_reported() {
        let mut l = Ledger::new();
        let mut now = counters(&[(1, 10)], 1_000, 10);
        now.containers.insert(
            id(2),
            SocketCounters {
                tx_packets: 5,
                tx_bytes: 500,
                ..SocketCounters::default()
            },
        );
        let i = l.advance(&now, &[]);
        assert_eq!(i.containers[&id(2)].tx_bytes, 500);
        assert_eq!(i.containers[&id(2)].softirq_ns, 0);
        assert_eq!(i.containers[&id(1)].softirq_ns, 1_000);
    }

    #[test]
    fn early_drops_count_as_their_containers_packets() {
        let mut l = Ledger::new();
        // Container 9 is a black hole: 90 SYNs dropped at the edge, no socket receives.
        let now = counters(&[(1, 10)], 10_000, 100);
        let i = l.advance(&now, &[(id(9), 90)]);
        assert_eq!(i.containers[&id(9)].dropped, 90);
        assert_eq!(i.containers[&id(9)].softirq_ns, 9_000);
        assert_eq!(i.containers[&id(1)].softirq_ns, 1_000);
        assert_eq!(i.attributed_ns, 10_000);
        // Next interval: drops are cumulative; 10 more.
        let mut next = now.clone();
        next.totals.netrx_ns += 1_000;
        next.totals.frames += 10;
        let i = l.advance(&next, &[(id(9), 100)]);
        assert_eq!(i.containers[&id(9)].dropped, 10);
        assert_eq!(i.containers[&id(9)].softirq_ns, 1_000);
        assert!(!i.containers.contains_key(&id(1)), "nothing new for 1");
    }

    #[test]
    fn first_read_and_forget() {
        let start = counters(&[(1, 100)], 50_000, 100);
        let mut l = Ledger::starting_at(&start, &[]);
        let i = l.advance(&start, &[]);
        assert!(i.containers.is_empty());
        assert_eq!(i.netrx_ns, 0);
        assert_eq!(i.attributed_fraction(), 1.0);
        // The kernel's slot of 1 was given back and given again from zero.
        l.forget(id(1));
        let mut again = start.clone();
        again.containers.insert(
            id(1),
            SocketCounters {
                rx_packets: 3,
                ..SocketCounters::default()
            },
        );
        let i = l.advance(&again, &[]);
        assert_eq!(i.containers[&id(1)].rx_packets, 3);
    }

    #[test]
    fn credits_are_per_interval() {
        let mut l = Ledger::new();
        let mut c = Counters::default();
        c.credits.insert(7, 1_000);
        c.credits.insert(8, 50);
        assert_eq!(
            l.advance(&c, &[]).credits,
            BTreeMap::from([(7, 1_000), (8, 50)])
        );
        c.credits.insert(7, 1_500);
        assert_eq!(l.advance(&c, &[]).credits, BTreeMap::from([(7, 500)]));
    }

    #[test]
    fn credit_back_never_goes_negative() {
        assert_eq!(
            credit_back(&[('a', 600), ('b', 200)], 400),
            vec![('a', 300), ('b', 100)]
        );
        assert_eq!(
            credit_back(&[('a', 600), ('b', 200)], 5_000),
            vec![('a', 0), ('b', 0)]
        );
        assert_eq!(
            credit_back(&[('a', 1), ('b', 1), ('c', 1)], 2),
            vec![('a', 0), ('b', 0), ('c', 1)]
        );
        assert_eq!(credit_back::<char>(&[], 100), vec![]);
        assert_eq!(credit_back(&[('a', 0)], 100), vec![('a', 0)]);
    }
}
