//! The flood test bed of `rescon-bench`, as a library so that integration tests can build
//! on it: network namespaces and veths ([`testbed`]), a bounded raw-socket SYN flooder with
//! its safety check ([`flooder`]), and the server under test and legitimate clients
//! ([`loadgen`]). Harness code only: no product crate depends on it.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod flooder;
pub mod httpload;
pub mod loadgen;
pub mod plot;
pub mod testbed;
pub mod tlsload;
