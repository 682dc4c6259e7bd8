//! Kernel-enforced containers: containers with `enforcement = "kernel"` mirrored as cgroups,
//! so that threads bound to them and child processes spawned in them are charged and limited
//! by the kernel.
//!
//! Work that leaves the runtime (a CGI process and its children, a blocking thread pool) must
//! still be charged to and limited by its container, and only the kernel can do that.
//!
//! # Pieces
//!
//! - [`Layout`]: which hierarchies are mounted (v2, v1, hybrid), from `/proc/self/mountinfo`
//!   and `/proc/self/cgroup`, with the cgroupfs root as a parameter.
//! - [`Manager`]: rescon's own subtree in every hierarchy used; mirrors containers
//!   ([`Manager::attach`], [`Manager::sync_tree`]), applies attribute changes live
//!   ([`Manager::apply`], or the background thread of [`Manager::start_background`], woken
//!   by a [`rescon::Watch`]), reports usage ([`Manager::sample`]), binds threads
//!   ([`Manager::bind_current_thread`]), spawns ([`Manager::command`]) and kills
//!   ([`Manager::kill`]) processes, and removes everything on shutdown (also when dropped).
//! - [`map`]: the pure mapping of attributes to knobs, with the formula that turns fixed
//!   fractions into weights.
//! - [`parse`]: pure parsers of the kernel's text, tested on literal fixtures.
//! - [`Manager::probe`] and [`Manager::start`]: whether kernel enforcement is available, and
//!   the fall-back to user-level containers when it is not and the configuration allows it.
//!
//! # The subtree
//!
//! ```text
//! <parent>/<name>/                      one per hierarchy (v2, cpu, cpuacct, memory, pids, freezer)
//!     c12-cgi/                          container 12 (kernel-enforced), its limits
//!         self/                         its own processes and bound threads (weight 100)
//!         c15-cgi-user-7/               container 15, a kernel-enforced descendant of 12
//!             self/
//! ```
//!
//! A container's processes and threads live in its `self` leaf, never in the cgroup that
//! carries its limits, so that the cgroup can have children (cgroup v2 forbids processes in a
//! cgroup whose controllers are enabled for its children), and the container's own work
//! competes with its kernel children as one more child of weight 100, as in the user-level
//! policy.
//!
//! # Guarantees
//!
//! - The manager never writes to a cgroup it did not create, except to add the controllers its
//!   subtree needs to the parent's `cgroup.subtree_control` (v2; it never removes any) and to
//!   move threads it bound back where they came from.
//! - After [`Manager::shutdown`] (or drop, also when unwinding from a panic), no cgroup of the
//!   subtree is left, and no process either (they are killed).
//! - Every error names the path and value refused; a permission error also says how to get
//!   permission (root, a systemd unit with `Delegate=yes`, or `enforcement = "user"`).
//! - Kernel CPU time is reported exactly once: each container gets its cgroup's total minus
//!   its kernel children's, as deltas into [`rescon::Usage::kernel_cpu_ns`].
//!
//! # Costs
//!
//! Making a container's cgroups is one mkdir per hierarchy (20-30 us each, see
//! `rescon-bench primitives`); reading its CPU time is one pread of a file kept open (about
//! 1 us). Moving a thread costs 7-15 us back to back but up to 9 ms when moves are spaced
//! out, so threads are bound once, never per connection: kernel containers are for classes of
//! work (a CGI class, a virtual server, a blocking pool), not for each connection.

#![deny(unsafe_code)]

mod error;
mod fs;
mod layout;
mod manager;
pub mod map;
pub mod parse;
mod spawn;
pub(crate) mod sys;

pub use error::{Error, ErrorKind, PERMISSION_HINT};
pub use layout::{Controller, DEFAULT_ROOT, Hierarchy, Layout, LayoutKind, Version};
pub use manager::{
    ApplyReport, Config, KernelStats, KillReport, LEAF, Manager, Parent, Probe, Start, V2Mode,
};
pub use spawn::{Child, Command, Exit, Stdio};
pub use sys::ChildUsage;

/// The calling thread's id, for [`Manager::bind_thread`].
pub fn current_tid() -> i32 {
    sys::gettid()
}

#[cfg(test)]
mod tests;
