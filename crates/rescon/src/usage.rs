//! Resource usage: what each container has consumed.
//!
//! Every container keeps its own counters as relaxed atomics, so recording is a single
//! uncontended `fetch_add` and reading never takes a lock the scheduler uses. Counters only grow;
//! when a container is released its counters (and what its released children left it) are folded
//! into its parent's *released* total, so the subtree total of every ancestor is unchanged by a
//! release and no charged resource is lost from the accounting.

use once_cell::race::OnceBox;
use std::ops::{Add, AddAssign};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! usage_struct {
    ($(#[$doc:meta] $counter:ident,)* ; $(#[$gdoc:meta] $gauge:ident,)*) => {
        /// A snapshot of usage: monotonically growing counters and current gauges.
        ///
        /// Snapshots add up: the usage of a subtree is the sum of its members' usage plus what
        /// released members left behind.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        pub struct Usage {
            $(#[$doc] pub $counter: u64,)*
            $(#[$gdoc] pub $gauge: u64,)*
        }

        impl Usage {
            /// The names of every field, counters first, then gauges, in declaration order:
            /// the keys of [`get`](Usage::get) and [`get_mut`](Usage::get_mut), for code that
            /// carries usage by name (a wire format, a metrics exporter).
            pub const FIELDS: &'static [&'static str] =
                &[$(stringify!($counter),)* $(stringify!($gauge),)*];

            /// A field by name, or `None` for a name not in [`FIELDS`](Usage::FIELDS).
            pub fn get(&self, name: &str) -> Option<u64> {
                match name {
                    $(stringify!($counter) => Some(self.$counter),)*
                    $(stringify!($gauge) => Some(self.$gauge),)*
                    _ => None,
                }
            }

            /// A field by name, to set it, or `None` for a name not in
            /// [`FIELDS`](Usage::FIELDS).
            pub fn get_mut(&mut self, name: &str) -> Option<&mut u64> {
                match name {
                    $(stringify!($counter) => Some(&mut self.$counter),)*
                    $(stringify!($gauge) => Some(&mut self.$gauge),)*
                    _ => None,
                }
            }
        }

        impl AddAssign for Usage {
            fn add_assign(&mut self, o: Usage) {
                $(self.$counter = self.$counter.wrapping_add(o.$counter);)*
                $(self.$gauge = self.$gauge.wrapping_add(o.$gauge);)*
            }
        }

        /// Current values of a container's gauges (not folded on release: a container holding
        /// a gauge is referenced by whatever holds it, so it is zero when released).
        #[derive(Debug, Default)]
        pub(crate) struct Gauges {
            $(pub(crate) $gauge: AtomicU64,)*
        }

        impl Gauges {
            pub(crate) fn snapshot_into(&self, u: &mut Usage) {
                $(u.$gauge = u.$gauge.wrapping_add(self.$gauge.load(Relaxed));)*
            }
        }
    };
}

usage_struct! {
    /// CPU time charged by the user-level scheduler, in nanoseconds.
    cpu_ns,
    /// CPU time reported by kernel backends (cgroups), in nanoseconds.
    kernel_cpu_ns,
    /// The kernel's network CPU (NET_RX softirq receive, send) charged by eBPF accounting, in ns.
    kernel_net_ns,
    /// Bytes received on sockets bound to the container.
    bytes_in,
    /// Bytes sent on sockets bound to the container.
    bytes_out,
    /// Connections accepted.
    conns_accepted,
    /// Connections refused (by a limit or a filter).
    conns_refused,
    /// Requests served.
    requests,
    /// Task polls run.
    polls,
    /// Time tasks were runnable but waiting to run, in nanoseconds.
    wait_ns,
    /// Time the container was held back by its CPU limit, in nanoseconds.
    throttled_ns,
    /// Child processes spawned.
    procs_spawned,
    /// TLS handshakes completed.
    tls_handshakes,
    /// TLS handshakes that failed: bad input, timed out, or the client left.
    tls_failed,
    /// HTTP/2 streams the client opened.
    h2_streams,
    /// HTTP/2 streams the client reset (RST_STREAM frames received).
    h2_resets,
    /// Bytes child processes (CGI runs) wrote to their standard error, logged or dropped.
    stderr_bytes,
    ;
    /// Connections open now.
    open_conns,
    /// Bytes of memory charged now by the application.
    memory_bytes,
    /// Bytes of memory the kernel reports for the container's cgroup (`memory.current`).
    kernel_memory_bytes,
    /// Child processes alive now.
    processes,
}

/// Defines a container's [`Counters`]: the counters every busy container moves (`hot`) are
/// inline in it; the others (`cold`: kernel, TLS, HTTP/2, process and refusal counts) are in
/// a block of their own, allocated the first time one of them is charged. A container per
/// connection or per request moves only the hot ones, and a container is mostly its counters:
/// 17 inline counters were 136 of its bytes, the hot ones and the pointer are 64.
macro_rules! counters {
    (hot: $($hot:ident),* ; cold: $($cold:ident),* $(,)?) => {
        /// The counters of one container, updated in place (see [`counters!`]).
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $($hot: AtomicU64,)*
            /// A pointer (a `OnceLock` would add its state word).
            cold: OnceBox<ColdCounters>,
        }

        /// The counters a container rarely moves, allocated when first charged.
        #[derive(Debug, Default)]
        struct ColdCounters {
            $($cold: AtomicU64,)*
        }

        impl Counters {
            $(
            #[inline]
            pub(crate) fn $hot(&self) -> &AtomicU64 {
                &self.$hot
            }
            )*
            $(
            pub(crate) fn $cold(&self) -> &AtomicU64 {
                &self.cold.get_or_init(Box::default).$cold
            }
            )*

            pub(crate) fn snapshot_into(&self, u: &mut Usage) {
                $(u.$hot = u.$hot.wrapping_add(self.$hot.load(Relaxed));)*
                if let Some(c) = self.cold.get() {
                    $(u.$cold = u.$cold.wrapping_add(c.$cold.load(Relaxed));)*
                }
            }

            pub(crate) fn add(&self, u: &Usage) {
                $(if u.$hot != 0 { self.$hot.fetch_add(u.$hot, Relaxed); })*
                $(if u.$cold != 0 { self.$cold().fetch_add(u.$cold, Relaxed); })*
            }
        }

        /// Every counter of [`Usage`] is one of `Counters`' (a counter left out of the lists
        /// above would fail to compile here: the pattern must name every field).
        #[allow(dead_code)]
        fn every_counter_is_kept(u: Usage) {
            let Usage {
                $($hot: _,)*
                $($cold: _,)*
                open_conns: _,
                memory_bytes: _,
                kernel_memory_bytes: _,
                processes: _,
            } = u;
        }
    };
}

counters! {
    hot: cpu_ns, polls, wait_ns, bytes_in, bytes_out, requests;
    cold: kernel_cpu_ns, kernel_net_ns, conns_accepted, conns_refused, throttled_ns,
        procs_spawned, tls_handshakes, tls_failed, h2_streams, h2_resets, stderr_bytes,
}

impl Add for Usage {
    type Output = Usage;
    fn add(mut self, o: Usage) -> Usage {
        self += o;
        self
    }
}

/// Records usage on one container. Obtained from
/// [`Container::account`](crate::Container::account); each call is one relaxed atomic add.
///
/// ```
/// let registry = rescon::Registry::new();
/// let c = registry.root().create_child("conn", Default::default()).unwrap();
/// c.account().add_bytes_in(512);
/// c.account().add_requests(1);
/// assert_eq!(c.usage().bytes_in, 512);
/// assert_eq!(registry.root().usage_subtree().requests, 1);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Account<'a> {
    pub(crate) counters: &'a Counters,
}

impl Account<'_> {
    /// Takes `n` ns out of the CPU charged at user level, never below zero: CPU a poll was
    /// charged that was someone else's ([`Container::credit_cpu`](crate::Container::credit_cpu)).
    pub(crate) fn take_cpu_ns(&self, n: u64) {
        let _ = self
            .counters
            .cpu_ns
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
    }
}

macro_rules! adders {
    ($($(#[$doc:meta])* $name:ident => $field:ident,)*) => {
        impl Account<'_> {
            $($(#[$doc])* #[inline]
            pub fn $name(&self, n: u64) {
                self.counters.$field().fetch_add(n, Relaxed);
            })*
        }
    };
}

adders! {
    /// Adds CPU time charged at user level, in nanoseconds. The scheduler does this on
    /// [`Policy::charge`](crate::sched::Policy::charge); call it only for CPU no scheduler saw.
    add_cpu_ns => cpu_ns,
    /// Adds CPU time measured by the kernel, in nanoseconds.
    add_kernel_cpu_ns => kernel_cpu_ns,
    /// Adds the kernel's network CPU, in nanoseconds. Use
    /// [`Container::charge_kernel_net`](crate::Container::charge_kernel_net), which also
    /// takes it from the CPU limits.
    add_kernel_net_ns => kernel_net_ns,
    /// Adds bytes received.
    add_bytes_in => bytes_in,
    /// Adds bytes sent.
    add_bytes_out => bytes_out,
    /// Counts accepted connections.
    add_conns_accepted => conns_accepted,
    /// Counts refused connections.
    add_conns_refused => conns_refused,
    /// Counts requests.
    add_requests => requests,
    /// Counts polls.
    add_polls => polls,
    /// Adds time spent runnable but waiting, in nanoseconds.
    add_wait_ns => wait_ns,
    /// Adds time spent throttled, in nanoseconds.
    add_throttled_ns => throttled_ns,
    /// Counts spawned processes.
    add_procs_spawned => procs_spawned,
    /// Counts completed TLS handshakes.
    add_tls_handshakes => tls_handshakes,
    /// Counts failed TLS handshakes.
    add_tls_failed => tls_failed,
    /// Counts HTTP/2 streams opened by the client.
    add_h2_streams => h2_streams,
    /// Counts HTTP/2 streams reset by the client.
    add_h2_resets => h2_resets,
    /// Adds bytes a child process wrote to its standard error.
    add_stderr_bytes => stderr_bytes,
}

#[cfg(test)]
mod tests {
    use super::Usage;

    #[test]
    fn fields_by_name_cover_every_field() {
        let mut u = Usage::default();
        for (i, name) in Usage::FIELDS.iter().enumerate() {
            *u.get_mut(name).expect("listed name") = i as u64 + 1;
        }
        // Every field was reached exactly once: the sum of 1..=n, and the struct agrees.
        assert_eq!(u.cpu_ns, 1);
        assert_eq!(u.processes, Usage::FIELDS.len() as u64);
        let n = Usage::FIELDS.len() as u64;
        let total: u64 = Usage::FIELDS.iter().map(|f| u.get(f).unwrap()).sum();
        assert_eq!(total, n * (n + 1) / 2);
        assert_eq!(u.get("no_such_field"), None);
        assert!(u.get_mut("no_such_field").is_none());
    }
}
