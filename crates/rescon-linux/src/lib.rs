//! Kernel backends for rescon.
//!
//! - [`cgroup`]: containers marked for kernel enforcement mirrored as cgroups (v1, v2 and
//!   hybrids), so that threads bound to them and child processes spawned in them are charged and
//!   limited by the kernel.
//! - [`listen`]: listening sockets bound to containers, with CIDR filters steering each new
//!   connection to a member socket in the kernel, and flood defense.
//! - [`netacct`]: the kernel's network work (packets, bytes, softirq CPU) charged to
//!   containers with eBPF.
//! - [`usermode`]: where cgroups cannot be used, a container's processes held to its CPU limit
//!   from user space (sampling `/proc`, `SIGSTOP`/`SIGCONT`, as `cpulimit` does), beside
//!   [`cgroup::Command::without_cgroups`], which counts them against `max_processes` at spawn.
//! - [`enforcement`]: the enforcement actually in force for a container's limits on
//!   processes, for a server to show.
//!
//! Every kernel interface sits behind a module boundary whose pure parts (parsers of kernel text,
//! program builders) are tested on literal fixtures, and whose system calls are confined to one
//! helper each with a `// SAFETY:` comment.

#![warn(missing_docs)]

pub mod cgroup;
mod ebpf;
pub mod enforcement;
pub mod listen;
pub mod netacct;
pub mod usermode;
