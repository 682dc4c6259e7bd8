//! The kernel's network work charged to the classes' containers (issue 24), with
//! [`rescon_linux::netacct`].
//!
//! Each class's member socket of a listener group is bound to the class's container, and the
//! connections it accepts inherit the binding in the kernel, so every packet of a class's
//! connections (and every SYN dropped early for a black hole or at the edge) is counted for
//! the class with no system call per connection. Every [`TICK`] a sampler thread reads the
//! kernel's counters, turns them into one interval's charges ([`Ledger`]: the receive time of
//! each class's own sockets, and its share by packets of the rest of the NET_RX softirq time)
//! and charges each class with [`Container::charge_kernel_net`]: the admin API's usage and
//! the metrics show it as `kernel_net_ns`, and a class's CPU limit pays for it.
//!
//! Loading the programs needs root (`CAP_BPF` with `CAP_PERFMON`); without it, or with
//! `RESCON_KERNEL_NET=off` in the environment, the server says so once and runs without
//! kernel network accounting. With `--no-containers` (the baseline) it is off.

use rescon::{Container, ContainerId};
use rescon_linux::listen::ListenerGroup;
use rescon_linux::netacct::ledger::Ledger;
use rescon_linux::netacct::{NetAccounting, Options};
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
        let mut ledger = match acct.read() {
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
        });
        let weak = Arc::downgrade(&k);
        let sampler = std::thread::Builder::new()
            .name("rescon-httpd-netacct".into())
            .spawn(move || {
                while let Some(k) = weak.upgrade() {
                    k.tick(&mut ledger);
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

    /// Charges the connections of `group`'s classes to the classes from now on.
    pub(crate) fn watch(&self, group: &Arc<ListenerGroup>) {
        self.bind_members(group);
        self.lock_groups().push(Arc::downgrade(group));
    }

    fn lock_groups(&self) -> std::sync::MutexGuard<'_, Vec<Weak<ListenerGroup>>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds each member socket that accepts to its class (again: idempotent, and members
    /// added by the admin API or a defense since are bound too).
    fn bind_members(&self, g: &ListenerGroup) {
        for m in g.members() {
            if m.is_black_hole() || m.is_retired() {
                continue;
            }
            if let Err(e) = self.acct.bind(m.listener(), m.container().id()) {
                tracing::warn!(error = %e, "kernel network accounting: a class's socket stays unbound");
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

    /// One interval: read, apportion, charge.
    fn tick(&self, ledger: &mut Ledger) {
        let drops = self.early_drops();
        let now = match self.acct.read() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading the kernel network counters failed");
                return;
            }
        };
        let interval = ledger.advance(&now, &drops);
        for (id, u) in &interval.containers {
            match self.root.lookup(*id) {
                Ok(c) => c.charge_kernel_net(u.kernel_net_ns()),
                // Released: its sockets are gone, and so are its counters.
                Err(_) => {
                    let _ = self.acct.forget(*id);
                    ledger.forget(*id);
                }
            }
        }
        if interval.lost > 0 {
            tracing::warn!(
                packets = interval.lost,
                "kernel network accounting: the usage map is full; packets not counted"
            );
        }
    }
}
