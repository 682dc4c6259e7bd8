//! Container-bound listening sockets: CIDR filters steering each new connection to a member
//! socket in the kernel, black-hole members, and SYN-flood defense.
//!
//! (Being written; see issue 5.)

#![deny(unsafe_code)]

pub mod bpf;
mod error;
pub mod filter;
mod group;
mod sys;

pub use error::Error;
pub use filter::{Filter, FilterError, Stack, Steering, check_prefix, parse_prefix};
pub use group::{Accepted, DEFAULT_BACKLOG, GroupBuilder, ListenerGroup, Member, MemberId};
