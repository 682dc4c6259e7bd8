//! Container-bound listening sockets: CIDR filters steering each new connection to a member
//! socket in the kernel, black-hole members, and SYN-flood defense.
//!
//! The paper binds several listening sockets to one address and port, each with a filter of
//! client addresses and its own resource container, so that a server can prefer some clients
//! before it has accepted their connections and black-hole others whose SYNs then cost almost
//! nothing. On Linux:
//!
//! - [`filter`]: a member's [`Filter`] is a set of CIDR prefixes or the complement of one;
//!   a group's filters resolve overlaps by **longest prefix**, then the **first complement**
//!   in member order, and must leave no source without a member ([`Steering`]).
//! - [`bpf`]: the filters compile into a classic BPF program for
//!   `SO_ATTACH_REUSEPORT_CBPF`, which picks the member socket of each SYN by its source
//!   address in the kernel; a black-hole member drops SYNs with a socket filter or, without
//!   the privilege for one, a TCP-MD5 key ([`SynDrop`]).
//! - [`ListenerGroup`]: the `SO_REUSEPORT` sockets, one per member with its own backlog and
//!   container; run-time changes (move prefixes, add or retire members) swap the program
//!   atomically without losing queued connections. [`Member`] hands a runtime each socket
//!   (non-blocking) with its container, so that it can run each member's accept loop in
//!   the member's container.
//! - [`early`]: the black holes' prefixes in the kernel's longest-prefix-match tables, with
//!   the SYNs dropped for each (at the edge and at the black-hole sockets, whose eBPF filter
//!   counts them), and the SYNs and ACKs of every other source the edge sees; the defense
//!   reacts on them within milliseconds.
//! - [`edge`]: an XDP program on the interfaces a flood comes in on, dropping the black
//!   holes' SYNs (IPv4 and IPv6) before the IP layer ([`ListenerGroup::drop_at_edge`]); it
//!   shares the tables, so it follows every prefix move at once.
//! - [`stats`], [`diag`]: SYN-queue pressure from `/proc/net/netstat` and `/proc/net/snmp`,
//!   and half-open connections by source prefix from `sock_diag`.
//! - [`defense`], [`driver`]: a pure policy that decides which prefixes to quarantine and
//!   when to release them, and a [`Defender`](driver::Defender) that samples, decides, moves
//!   prefixes, flushes the quarantined sources' half-open connections, and keeps a history.
//!
//! ```no_run
//! use rescon::{Attributes, Registry};
//! use rescon_linux::listen::{Filter, ListenerGroup};
//!
//! let registry = Registry::new();
//! let root = registry.root();
//! let mut premium = Attributes::default();
//! premium.set("priority", "500").unwrap();
//! let premium = root.create_child("premium", premium).unwrap();
//! let everyone = root.create_child("everyone", Attributes::default()).unwrap();
//! let group = ListenerGroup::builder("[::]:8080".parse().unwrap())
//!     .member(&everyone, Filter::any())
//!     .member(&premium, "203.0.113.0/24, 2001:db8:42::/48".parse().unwrap())
//!     .build()
//!     .unwrap();
//! assert_eq!(group.classify("203.0.113.7".parse().unwrap()), Some(group.members()[1].id()));
//! ```

#![deny(unsafe_code)]

pub mod bpf;
pub mod defense;
pub mod diag;
pub mod driver;
pub mod early;
pub mod edge;
mod error;
pub mod filter;
mod group;
pub mod stats;
mod sys;

pub use error::Error;
pub use filter::{Filter, FilterError, Stack, Steering, check_prefix, parse_prefix};
pub use group::{
    Accepted, DEFAULT_BACKLOG, GroupBuilder, ListenerGroup, Member, MemberId, SynDrop,
};
