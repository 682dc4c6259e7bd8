//! The kernel's network work charged to the classes' containers (issue 24), with
//! [`rescon_linux::netacct`].
//!
//! Each class's member socket of a listener group is bound to the class's container, and the
//! connections it accepts inherit the binding in the kernel, so every packet of a class's
//! connections (and every SYN dropped early for a black hole or at the edge) is counted for
//! the class with no system call per connection. Every [`TICK`] a sampler thread reads the
//! kernel's counters, turns them into one interval's charges ([`Ledger`]: each class's share,
//! by packets, of the NET_RX softirq time)
//! and charges each class with [`Container::charge_kernel_net`]: the admin API's usage and
//! the metrics show it as `kernel_net_ns`, a class's CPU limit pays for it, and the policy
//! counts it in the class's share.
//!
//! The interrupted threads are credited back: on this kernel softirq time is added to the
//! task it interrupted, so a worker's poll that NET_RX interrupted was charged, as poll time,
//! the receive of someone else's packets. The programs count the NET_RX time that
//! interrupted each of the server's threads; each interval, the workers' part is taken back
//! from the classes whose polls ran in it, in proportion to their poll time
//! ([`worker_credits`]), with [`Container::credit_cpu`].
//!
//! Loading the programs needs root (`CAP_BPF` with `CAP_PERFMON`); without it, or with
//! `RESCON_KERNEL_NET=off` in the environment, the server says so once and runs without
//! kernel network accounting. With `--no-containers` (the baseline) it is off.

use rescon::{Container, ContainerId};
use rescon_linux::listen::ListenerGroup;
use rescon_linux::netacct::ledger::Ledger;
use rescon_linux::netacct::{NetAccounting, Options};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often the kernel's counters are read and charged.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// The environment variable that turns the accounting off (`off` or `0`).
const SWITCH: &str = "RESCON_KERNEL_NET";

/// The loaded programs and the listener groups whose classes they charge.
pub(crate) struct KernelNet {
    acct: NetAccounting,
    /// Privileged: looks the charged containers up by id.
    root: Container,
    groups: Mutex<Vec<Weak<ListenerGroup>>>,
    /// The runtime's worker threads (thread ids), whose interruptions are credited back.
    workers: Mutex<BTreeSet<u32>>,
    /// Member sockets (by cookie) whose window is bounded: their class has a CPU limit.
    clamped: Mutex<BTreeSet<u64>>,
}

/// The receive window of a capped class's connections, in bytes: 256 packets of 64 bytes,
/// or a round trip's worth of a LAN connection at 100 MB/s.
const CAPPED_WINDOW: u32 = 16 * 1024;

/// TCP's largest window (65,535 scaled by 2^14): no bound.
const TCP_MAX_WINDOW: u32 = 65_535 << 14;

/// What the sampler keeps between intervals.
struct Sampler {
    ledger: Ledger,
    /// Each class charged so far, with its poll time (its subtree's `cpu_ns`) at the last
    /// tick (by id: a handle would keep a released class alive).
    polled: BTreeMap<ContainerId, u64>,
}

impl KernelNet {
    /// Loads the programs and starts the sampler, or says why not and returns `None`.
    pub(crate) fn start(root: &Container) -> Option<Arc<KernelNet>> {
        if std::env::var(SWITCH).is_ok_and(|v| v == "off" || v == "0") {
            tracing::info!("kernel network accounting off ({SWITCH})");
            return None;
        }
        let acct = match NetAccounting::open(&Options::default()) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(reason = %e, "running without kernel network accounting");
                return None;
            }
        };
        let ledger = match acct.read() {
            Ok(c) => Ledger::starting_at(&c, &[]),
            Err(e) => {
                tracing::warn!(error = %e, "reading the kernel network counters failed; running without kernel network accounting");
                return None;
            }
        };
        let k = Arc::new(KernelNet {
            acct,
            root: root.clone(),
            groups: Mutex::new(Vec::new()),
            workers: Mutex::new(BTreeSet::new()),
            clamped: Mutex::new(BTreeSet::new()),
        });
        let mut state = Sampler {
            ledger,
            polled: BTreeMap::new(),
        };
        let weak = Arc::downgrade(&k);
        let sampler = std::thread::Builder::new()
            .name("rescon-httpd-netacct".into())
            .spawn(move || {
                while let Some(k) = weak.upgrade() {
                    k.tick(&mut state);
                    drop(k);
                    std::thread::sleep(TICK);
                }
            });
        if let Err(e) = sampler {
            tracing::warn!(error = %e, "starting the kernel network sampler failed; running without kernel network accounting");
            return None;
        }
        Some(k)
    }

    /// Registers the calling thread as a worker of the runtime (from its start hook): the
    /// NET_RX time that interrupts it is credited back to the classes it polled.
    pub(crate) fn worker_started(&self) {
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tid);
    }

    /// Charges the connections of `group`'s classes to the classes from now on.
    pub(crate) fn watch(&self, group: &Arc<ListenerGroup>) {
        self.bind_members(group);
        self.lock_groups().push(Arc::downgrade(group));
    }

    fn lock_groups(&self) -> std::sync::MutexGuard<'_, Vec<Weak<ListenerGroup>>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds each member socket that accepts to its class (again: idempotent, and members
    /// added by the admin API or a defense since are bound too). The members of a class with
    /// a CPU limit of its own bound their connections' receive windows to [`CAPPED_WINDOW`]:
    /// when the limit holds the class's reads back, its senders stop within a few dozen
    /// packets ([`rescon_linux::netacct::clamp_window`]).
    fn bind_members(&self, g: &ListenerGroup) {
        for m in g.members() {
            if m.is_black_hole() || m.is_retired() {
                continue;
            }
            if let Err(e) = self.acct.bind(m.listener(), m.container().id()) {
                tracing::warn!(error = %e, "kernel network accounting: a class's socket stays unbound");
            }
            let capped = m.container().attrs().cpu_limit.is_some();
            // By cookie: a descriptor number may be reused by another socket.
            let Ok(cookie) = rescon_linux::netacct::socket_cookie(m.listener()) else {
                continue;
            };
            let mut clamped = self.clamped.lock().unwrap_or_else(|e| e.into_inner());
            // Set when the limit comes, lifted (to TCP's largest window) when it goes.
            let window = match (capped, clamped.contains(&cookie)) {
                (true, false) => CAPPED_WINDOW,
                (false, true) => TCP_MAX_WINDOW,
                _ => continue,
            };
            match rescon_linux::netacct::clamp_window(m.listener(), window) {
                Ok(()) if capped => {
                    clamped.insert(cookie);
                }
                Ok(()) => {
                    clamped.remove(&cookie);
                }
                Err(e) => tracing::warn!(error = %e, "a capped class's window stays unbounded"),
            }
        }
    }

    /// Early drops so far (cumulative) by the container of the member they were dropped for.
    fn early_drops(&self) -> Vec<(ContainerId, u64)> {
        let groups: Vec<Arc<ListenerGroup>> = {
            let mut g = self.lock_groups();
            g.retain(|w| w.strong_count() > 0);
            g.iter().filter_map(Weak::upgrade).collect()
        };
        let mut out = Vec::new();
        for g in &groups {
            self.bind_members(g);
            for (m, n) in g.early_drops_by_member() {
                if let Ok(m) = g.member(m) {
                    out.push((m.container().id(), n));
                }
            }
        }
        out
    }

    /// One interval: read, apportion, charge, and credit the interrupted workers back.
    fn tick(&self, st: &mut Sampler) {
        let drops = self.early_drops();
        let now = match self.acct.read() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading the kernel network counters failed");
                return;
            }
        };
        let interval = st.ledger.advance(&now, &drops);
        for (id, u) in &interval.containers {
            match self.root.lookup(*id) {
                Ok(c) => {
                    c.charge_kernel_net(u.kernel_net_ns());
                    st.polled
                        .entry(*id)
                        .or_insert_with(|| c.usage_subtree().cpu_ns);
                }
                // Released: its sockets are gone, and so are its counters.
                Err(_) => {
                    let _ = self.acct.forget(*id);
                    st.ledger.forget(*id);
                    st.polled.remove(id);
                }
            }
        }
        // The classes' poll time over the interval, for the credit.
        let mut polled = Vec::new();
        let mut classes = BTreeMap::new();
        st.polled.retain(|id, before| match self.root.lookup(*id) {
            Ok(c) => {
                let cpu = c.usage_subtree().cpu_ns;
                polled.push((*id, cpu.saturating_sub(*before)));
                *before = cpu;
                classes.insert(*id, c);
                true
            }
            Err(_) => false,
        });
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (id, ns) in worker_credits(&workers, &interval.credits, &polled) {
            if let (Some(c), Some(before)) = (classes.get(&id), st.polled.get_mut(&id)) {
                c.credit_cpu(ns);
                // What the next interval's polls add starts from here.
                *before = c.usage_subtree().cpu_ns;
            }
        }
        if interval.lost > 0 {
            tracing::debug!(
                packets = interval.lost,
                "kernel network accounting: packets of sockets whose class was released, not counted"
            );
        }
    }
}

/// What each class is credited back: the NET_RX time that interrupted the runtime's
/// `workers` over an interval (`credits`, by thread; other threads' interruptions fell
/// outside any poll), taken from the classes' poll time over the same interval (`polled`)
/// in proportion to it, never more than a class polled ([`ledger::credit_back`]). Pure.
///
/// [`ledger::credit_back`]: rescon_linux::netacct::ledger::credit_back
pub(crate) fn worker_credits(
    workers: &BTreeSet<u32>,
    credits: &BTreeMap<u32, u64>,
    polled: &[(ContainerId, u64)],
) -> Vec<(ContainerId, u64)> {
    let stolen: u64 = credits
        .iter()
        .filter(|(tid, _)| workers.contains(tid))
        .map(|(_, ns)| *ns)
        .sum();
    rescon_linux::netacct::ledger::credit_back(polled, stolen)
        .into_iter()
        .zip(polled)
        .map(|((id, left), (_, was))| (id, was - left))
        .filter(|(_, ns)| *ns > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> ContainerId {
        ContainerId::from_raw(n).unwrap()
    }

    #[test]
    fn workers_interruptions_are_taken_from_the_classes_polls_by_poll_time() {
        let workers: BTreeSet<u32> = [10, 11].into();
        // Thread 12 is not a worker (the sampler, say): its interruptions are nobody's polls.
        let credits: BTreeMap<u32, u64> = [(10, 300), (11, 100), (12, 5000)].into();
        let polled = [(id(1), 3000), (id(2), 1000), (id(3), 0)];
        assert_eq!(
            worker_credits(&workers, &credits, &polled),
            vec![(id(1), 300), (id(2), 100)]
        );
        // Never more than a class polled: 10,000 ns stolen from 4,000 ns of polls.
        let credits: BTreeMap<u32, u64> = [(10, 10_000)].into();
        assert_eq!(
            worker_credits(&workers, &credits, &polled),
            vec![(id(1), 3000), (id(2), 1000)]
        );
        // Nothing polled, nothing credited; no worker interrupted, nothing either.
        assert!(worker_credits(&workers, &credits, &[(id(1), 0)]).is_empty());
        assert!(worker_credits(&BTreeSet::new(), &credits, &polled).is_empty());
    }
}
