//! Container handles as file descriptors: a resource container held by another process.
//!
//! In RCLinux "tasks identify resource containers through file descriptors ... the child
//! inherits the descriptors from the parent, and it can be passed between unrelated processes
//! through the Unix-domain socket file descriptor passing mechanisms ... an application can
//! access only those resource containers that it can reference through its file descriptors."
//! rescon's containers live in the server's memory ([`rescon`]); this crate gives another
//! process a descriptor that stands for one of them, served by the process that owns it.
//!
//! # Design
//!
//! A handle is one end of a Unix `SOCK_SEQPACKET` socket pair; the owner (the server) keeps the
//! other end with an unprivileged [`rescon::Container`] for it ([`owner::Owner::issue`]).
//!
//! - **A descriptor, with a descriptor's life.** It is close-on-exec unless
//!   [`pass::inherit`] passes it to a child (clearing the flag in that child only); it travels
//!   to any process with `SCM_RIGHTS` ([`Handle::send_to`], [`pass::send_fd`]). The kernel
//!   counts the copies: when the last one closes, in whatever process (a holder that dies
//!   closes its own), the owner's end reads end of file, and the owner drops its reference:
//!   the container is released by the model's rules, its usage folded into its parent's.
//! - **The only way in.** The owner answers only on handles it issued, and acts with the
//!   rights of an unprivileged model handle on the handle's container: read its usage and
//!   attributes and its descendants', create children (each with a handle of its own), lower
//!   its own attributes, change its descendants'. A sibling, a parent, any id outside the
//!   subtree is refused by the model ([`rescon::container`]), whatever the bytes sent.
//! - **Charging without waiting.** [`Handle::charge`] is one message with no answer (a
//!   `sendmsg`), and it wakes nobody: the owner watches a handle's socket for its close only,
//!   and reads the charges queued on it when it harvests (every
//!   [`owner::Config::harvest_interval`]), before it answers a call on the handle, and after
//!   the last close (on this virtual machine, waking a thread asleep on another CPU cost the
//!   sender 6 us, the send alone 1.4 us). [`Handle::meter`] maps a page of counters shared
//!   with the owner (a sealed memfd): charging is then one atomic add. Nothing charged is lost.
//! - **Calls on a session.** Reading usage, creating a child, changing attributes, binding a
//!   thread are calls. The first in a process connects to the owner's listening socket (an
//!   abstract Unix address: the owner's end of each handle is bound to a name under it, which
//!   the holder reads with `getpeername`) and sends the handle on the connection as proof: the
//!   owner takes it only if the kernel's socket cookie of that descriptor is one of the
//!   handles it issued. Sessions are private to a process, so processes sharing one handle
//!   never read each other's answers; the connection's `SO_PEERCRED` is what lets the owner
//!   bind only the caller's own threads. (Calls need the owner's network namespace, where its
//!   abstract address lives; charges, inheritance and passing work anywhere.)
//! - **Kernel binding** goes through the owner's [`owner::Enforcer`] (the cgroup manager of
//!   `rescon-linux` with the `cgroup` feature): the holder needs no privilege, and binds only
//!   where the owner enforces the container in the kernel.
//! - **Any event loop.** The owner's sockets sit in one epoll set ([`owner::Owner::poll_fd`]);
//!   a thread of its own ([`owner::Owner::spawn`]) or the server's loop drives it. The owner
//!   side depends on no runtime.
//!
//! # Costs
//!
//! Measured with `rescon-bench primitives` (two processes on a 2-vCPU virtual machine; the
//! owner's thread and the sender on one CPU, the receiver on the other):
//!
//! | operation | row | time |
//! |---|---|---|
//! | move a handle to another process: send, receive, first charge there | `move_between_processes` | 2.0 us (send 0.65, receive and charge 1.3) |
//! | the same, one at a time to a receiver asleep, acknowledged | `move_between_processes_roundtrip` | 5.4 us |
//! | a charge message (the holder's side) | `handle_charge` | 1.0 us |
//! | a charge on the page of counters | `handle_meter_charge` | 7 ns |
//! | a call answered by the owner (reading usage) | `handle_call_usage` | 9 us |
//! | issuing a handle (socket pair, name, two epoll registrations) | `handle_issue` | 6 us |
//!
//! The paper's "move container between processes" took 3.15 us (a system call on a 500 MHz
//! Alpha). A call pays two wake-ups (about 5 us each here), which is why charges avoid them.
//!
//! The owner pays two descriptors per handle until it is passed on (then one), one per session
//! and one per page, and an epoll registration; handles and sessions are bounded
//! ([`owner::Config`]).
//!
//! # For a server
//!
//! - **Start**: `Owner::with_enforcer(config, enforcer)`, the enforcer being the server's
//!   `Arc<rescon_linux::cgroup::Manager>` where kernel enforcement is on, or its
//!   `Arc<rescon_linux::usermode::Limiter>` where it is not (feature `cgroup`); then
//!   [`owner::Owner::spawn`], or register [`owner::Owner::poll_fd`] in the server's own loop,
//!   call `serve(Some(Duration::ZERO))` when it is readable and `harvest()` every
//!   [`owner::Config::harvest_interval`].
//! - **Traditional CGI**: per request, `let fd = owner.issue(&request)?`; with rescon-linux's
//!   `Command` (in cgroups, or `Command::without_cgroups`) `let n = cmd.inherit_fd(fd.as_fd())?`
//!   and `cmd.env(pass::ENV, n.to_string())`, or [`pass::inherit`] with std's `Command`; spawn,
//!   then drop `fd`. The script's [`Handle::from_env`] finds it; when the script and what it
//!   started exit, the handle is released with its charges.
//! - **Persistent CGI (FastCGI)**: per request, `owner.issue(&request)` and
//!   [`pass::send_with`] on a Unix connection to the application, the descriptor riding on the
//!   request's first record (`FCGI_BEGIN_REQUEST`); drop the server's copy. A rescon-aware
//!   application reads that record with [`pass::recv_with`] and gets the request's handle;
//!   one that is not (php-fpm) reads it with `read` and the kernel closes the descriptor, which
//!   releases the handle: the server then charges the worker's CPU itself.
//! - **Show** [`Info::enforcement`] (or `rescon_linux::enforcement::report`), the enforcement
//!   in force, rather than the `enforcement` attribute.
//!
//! # Features
//!
//! `owner` (default): the owner side. `cgroup`: [`owner::Enforcer`] for
//! `rescon_linux::cgroup::Manager`. An application that only holds handles builds with
//! `default-features = false`: the client depends on `rescon` (the model's types) and `rustix`.
//!
//! ```
//! # #[cfg(feature = "owner")] {
//! use rescon_handle::{Charge, Handle, ErrorKind, owner::Owner};
//!
//! let registry = rescon::Registry::new();
//! let mut attrs = rescon::Attributes::default();
//! attrs.set("cpu_limit", "30%").unwrap();
//! let cgi = registry.root().create_child("cgi", attrs).unwrap();
//! let owner = Owner::new(Default::default()).unwrap();
//! let _server = owner.spawn("rescon-handles").unwrap();
//!
//! // The server issues a handle for a request and passes it on (here it stays in-process).
//! let handle = Handle::from_fd(owner.issue(&cgi).unwrap()).unwrap();
//! handle.charge(Charge { requests: 1, ..Default::default() }).unwrap();
//! let info = handle.info().unwrap();
//! assert_eq!((info.name.as_str(), info.usage.requests), ("cgi", 1));
//!
//! // Lowering its own limit is allowed, raising it is not.
//! handle.set(&[("cpu_limit", "20%")]).unwrap();
//! let e = handle.set(&[("cpu_limit", "50%")]).unwrap_err();
//! assert_eq!(e.kind(), ErrorKind::PermissionDenied);
//! # }
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod error;
pub mod meter;
#[cfg(feature = "owner")]
pub mod owner;
pub mod pass;
mod sys;
pub mod wire;

#[cfg(feature = "cgroup")]
mod cgroup;

pub use client::{DEFAULT_TIMEOUT, Handle};
pub use error::{Error, ErrorKind, Result};
pub use meter::Meter;
pub use wire::{Charge, Info};
