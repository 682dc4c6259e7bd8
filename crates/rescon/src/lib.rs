//! Resource containers: the container model, usage accounting, capabilities and the
//! hierarchical scheduling policy.
//!
//! Operating systems account and schedule by process and thread; servers do their work per
//! activity. A *resource container* (Banga, Druschel and Mogul, OSDI 1999) is the activity as a
//! resource principal: what is charged and what is scheduled, separate from the protection
//! domain. This crate is the model, pure Rust with no I/O, no clock and no unsafe code:
//!
//! - [`Registry`] and [`Container`]: the tree, the id namespace, handles as capabilities,
//!   reparenting and release ([`container`] explains the rules);
//! - [`Attributes`]: scheduling class, fixed or weighted share, priority (0 is the black hole),
//!   CPU limit, and limits on connections, memory, egress and processes ([`attr`]);
//! - [`Usage`]: what a container and its subtree consumed ([`usage`]);
//! - [`sched`]: the policy that picks the next container to run, behind a trait;
//! - [`sim`]: a deterministic simulator that measures a policy against the model.
//!
//! ```
//! use rescon::sched::{Hierarchical, Policy};
//! use rescon::{Attributes, Registry};
//!
//! let registry = Registry::new();
//! let root = registry.root();
//! // A CGI class capped at 30% of a CPU, and a connection container under it.
//! let mut cgi_attrs = Attributes::default();
//! cgi_attrs.set("cpu_limit", "30%").unwrap();
//! let cgi = root.create_child("cgi", cgi_attrs).unwrap();
//! let request = cgi.create_child("request-1", Attributes::default()).unwrap();
//!
//! // The runtime attaches the request's container, marks it runnable, picks and charges.
//! let mut policy = Hierarchical::new(&registry);
//! let key = policy.attach(&request);
//! policy.set_runnable(key, true);
//! policy.refill(0);
//! let pick = policy.pick().unwrap();
//! assert_eq!(policy.container(pick.key), request.id());
//! policy.charge(pick.key, 1_000_000);
//! policy.flush(); // charges reach usage within a millisecond of policy time, or on flush
//!
//! // Usage rolls up the tree.
//! assert_eq!(cgi.usage_subtree().cpu_ns, 1_000_000);
//! // The request's handle cannot raise its own limits; the class's handle can.
//! assert!(request.update(&request, |a| a.set("priority", "500")).is_err());
//! assert!(cgi.update(&request, |a| a.set("priority", "500")).is_ok());
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attr;
pub mod container;
mod error;
mod id;
pub mod sched;
pub mod sim;
pub mod usage;

pub use attr::{
    Attributes, CpuLimit, Enforcement, Fraction, Limits, Priority, SchedClass, Share, Weight,
};
pub use container::{ConnGuard, Container, ProcGuard, Registry, Snapshot, Watch};
pub use error::{AttrError, Error, Resource};
pub use id::ContainerId;
pub use usage::Usage;
