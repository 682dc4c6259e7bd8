//! The enforcement actually in force for a container's limits on processes: what a server
//! shows beside the limits, so that an operator never reads `enforcement = "kernel"` where no
//! cgroup exists, or a CPU cap that nothing applies to a CGI process.
//!
//! The rules, for a container `c`:
//!
//! | limit | kernel enforcement on (a [`Manager`] and `enforcement = "kernel"`) | otherwise |
//! |---|---|---|
//! | `cpu_limit` | the cgroup's CPU bandwidth | the user-mode [`Limiter`] if one runs; else the runtime's own tasks only |
//! | `max_processes` | `pids.max` (if the pids controller is there), and counted at spawn | counted at spawn (what rescon spawns, not what those fork) |
//! | `max_memory` | the memory cgroup's limit (if the controller is there) | not enforced on processes |

use crate::cgroup::{Controller, Manager, Version};
use crate::usermode::Limiter;
use rescon::{Container, Enforcement};
use std::fmt;

/// Who enforces one limit on a container's processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// The limit is not set on this container (an ancestor's may still apply).
    Unset,
    /// The kernel, through this cgroup file.
    Kernel(&'static str),
    /// User-mode capping, described.
    UserMode(String),
    /// Counted when rescon spawns a process; processes they fork are not counted.
    AtSpawn,
    /// Only the work the server runs itself (its runtime's tasks): processes are not limited.
    InProcessOnly,
    /// Not enforced on processes, and why.
    NotEnforced(&'static str),
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mechanism::Unset => f.write_str("not set"),
            Mechanism::Kernel(knob) => write!(f, "kernel ({knob})"),
            Mechanism::UserMode(how) => f.write_str(how),
            Mechanism::AtSpawn => f.write_str(
                "counted at spawn (processes rescon starts; what they fork is not counted)",
            ),
            Mechanism::InProcessOnly => {
                f.write_str("the server's own tasks only: its processes are not capped")
            }
            Mechanism::NotEnforced(why) => write!(f, "not enforced: {why}"),
        }
    }
}

/// The enforcement in force for a container's limits on processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// In one word, for an API field: `kernel` (cgroups), `user-mode` (the CPU limit held by
    /// the user-mode limiter, no cgroup) or `user` (the server's own scheduling only).
    pub summary: &'static str,
    /// The CPU limit.
    pub cpu_limit: Mechanism,
    /// The process limit.
    pub max_processes: Mechanism,
    /// The memory limit.
    pub max_memory: Mechanism,
    /// What the kernel does not enforce in this layout (from [`Manager::notes`]).
    pub notes: Vec<String>,
}

/// What is in force for `c`, given the server's kernel backend (if cgroups are in use) and
/// user-mode limiter (if one runs).
///
/// ```
/// let registry = rescon::Registry::new();
/// let mut a = rescon::Attributes::default();
/// a.set("cpu_limit", "30%").unwrap();
/// a.set("enforcement", "kernel").unwrap();
/// let cgi = registry.root().create_child("cgi", a).unwrap();
/// // No cgroups and no limiter: the attribute says kernel, the report does not.
/// let r = rescon_linux::enforcement::report(&cgi, None, None);
/// assert_eq!(r.summary, "user");
/// assert_eq!(r.cpu_limit, rescon_linux::enforcement::Mechanism::InProcessOnly);
/// ```
pub fn report(c: &Container, kernel: Option<&Manager>, limiter: Option<&Limiter>) -> Report {
    let a = c.attrs();
    let kernel = kernel.filter(|_| a.enforcement == Enforcement::Kernel);
    let has = |m: &Manager, ctl: Controller| m.layout().controller(ctl).map(|h| h.version());
    let cpu_limit = match (a.cpu_limit, kernel, limiter) {
        (None, _, _) => Mechanism::Unset,
        (Some(_), Some(m), _) => match has(m, Controller::Cpu) {
            Some(Version::V2) => Mechanism::Kernel("cpu.max"),
            Some(Version::V1) => Mechanism::Kernel("cpu.cfs_quota_us"),
            None => Mechanism::NotEnforced("no cpu controller"),
        },
        (Some(_), None, Some(l)) => Mechanism::UserMode(l.describe()),
        (Some(_), None, None) => Mechanism::InProcessOnly,
    };
    let max_processes = match (a.limits.max_processes, kernel) {
        (None, _) => Mechanism::Unset,
        (Some(_), Some(m)) if has(m, Controller::Pids).is_some() => Mechanism::Kernel("pids.max"),
        (Some(_), _) => Mechanism::AtSpawn,
    };
    let max_memory = match (a.limits.max_memory, kernel) {
        (None, _) => Mechanism::Unset,
        (Some(_), Some(m)) => match has(m, Controller::Memory) {
            Some(Version::V2) => Mechanism::Kernel("memory.max"),
            Some(Version::V1) => Mechanism::Kernel("memory.limit_in_bytes"),
            None => Mechanism::NotEnforced("no memory controller"),
        },
        (Some(_), None) => Mechanism::NotEnforced(
            "without a memory cgroup only the memory the server charges itself is counted",
        ),
    };
    Report {
        summary: match (kernel, limiter) {
            (Some(_), _) => "kernel",
            (None, Some(_)) if a.cpu_limit.is_some() => "user-mode",
            _ => "user",
        },
        cpu_limit,
        max_processes,
        max_memory,
        notes: kernel.map(|m| m.notes(c)).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rescon::{Attributes, Registry};

    fn container(pairs: &[(&str, &str)]) -> (Registry, Container) {
        let r = Registry::new();
        let mut a = Attributes::default();
        for (k, v) in pairs {
            a.set(k, v).unwrap();
        }
        let c = r.root().create_child("c", a).unwrap();
        (r, c)
    }

    #[test]
    fn without_cgroups_nothing_claims_the_kernel() {
        let (_r, c) = container(&[
            ("enforcement", "kernel"),
            ("cpu_limit", "30%"),
            ("max_processes", "4"),
            ("max_memory", "64MiB"),
        ]);
        let r = report(&c, None, None);
        assert_eq!(r.summary, "user");
        assert_eq!(r.cpu_limit, Mechanism::InProcessOnly);
        assert_eq!(r.max_processes, Mechanism::AtSpawn);
        assert!(matches!(r.max_memory, Mechanism::NotEnforced(_)));
        assert!(r.notes.is_empty());
        assert!(r.cpu_limit.to_string().contains("not capped"));
    }

    #[test]
    fn the_user_mode_limiter_holds_the_cpu_limit() {
        let (reg, c) = container(&[("cpu_limit", "30%")]);
        let l = Limiter::start(&reg, Default::default()).unwrap();
        let r = report(&c, None, Some(&l));
        assert_eq!(r.summary, "user-mode");
        assert!(matches!(&r.cpu_limit, Mechanism::UserMode(s) if s.contains("SIGSTOP")));
        assert_eq!(r.max_processes, Mechanism::Unset);
        // Without a CPU limit there is nothing for it to hold.
        let (_r2, plain) = container(&[]);
        assert_eq!(report(&plain, None, Some(&l)).summary, "user");
    }
}
