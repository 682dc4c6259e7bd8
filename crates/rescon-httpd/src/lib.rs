//! rescon-httpd: the resource-container web server.
//!
//! Every connection, request, client class, virtual host and CGI run has its container, and an
//! operator can see and change them live. This library holds the parts of the server that do
//! not depend on the runtime: each is pure where it can be, and tested on its own.
//!
//! - [`config`]: the TOML configuration, its checks and errors, the container tree and reloads.
//! - [`static_files`]: path resolution confined to the document root, and the response decision
//!   for static files (validators, conditional requests, ranges).
//! - [`cgi`]: CGI/1.1 script resolution, meta-variables and response parsing.
//! - [`fastcgi`]: the FastCGI record codec the server speaks to FastCGI applications.
//! - [`admin`]: the admin API as functions from (method, path, body) to (status, JSON), over a
//!   container handle and the [`admin::Filters`] seam; Prometheus metrics; the bearer check.
//! - [`routing`]: which vhost and handler a request goes to.
//! - [`log`]: the access log line, with the container and the CPU charged.
//! - [`demo`]: the embedded demo site the default configuration serves.
//! - [`server`]: the server on rescon-rt: the request path in stages (accept, connection,
//!   dispatch, placement, static, CGI, response and log) over a compiled site, the listeners'
//!   steering tables, the admin sockets.
//! - [`service`]: running as a service: sd_notify, socket activation, the switch to
//!   `[server] user`, the open-file limit.
//! - [`logging`]: the `tracing` subscriber the binaries install.
//! - [`alloc`]: the allocator setting the binaries make, so idle connections' freed memory
//!   goes back to the system.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod alloc;
pub mod cgi;
pub mod config;
pub mod demo;
pub mod fastcgi;
pub mod log;
pub mod logging;
pub mod routing;
pub mod server;
pub mod service;
pub mod static_files;
