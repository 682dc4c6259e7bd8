//! `rctl`: the command line of rescon-httpd's admin API.
//!
//! ```text
//! rctl tree                         the container tree with CPU, requests, connections
//! rctl show cgi                     one container: attributes, usage, children
//! rctl set cgi cpu_limit=20%        change attributes live (all or nothing)
//! rctl filters                      client classes, black holes, recent moves
//! rctl block 192.0.2.0/24           drop a prefix's SYNs in the kernel
//! rctl top                          live view sorted by CPU; q quits
//! rctl top -b -n 3                  the same as text, 3 frames (batch mode, for scripts)
//! rctl unblock 192.0.2.0/24         take a prefix off the black hole
//! rctl move 192.0.2.0/24 premium    put a prefix in a client class
//! rctl reload                       load the configuration file again (as SIGHUP)
//! rctl metrics                      the Prometheus metrics
//! rctl completions bash             a completion script (bash, zsh, fish, elvish, powershell)
//! ```
//!
//! It talks HTTP/1.1 to the Unix socket of the server's `[admin]` section (`--socket`, default
//! the default configuration's), or to the loopback TCP API with `--url` and `--token`. The
//! library holds the parts, each tested on its own: [`client`] (the HTTP exchange),
//! [`render`] (text from API documents), [`top`] (the live view), [`cli`] (the commands).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod render;
pub mod top;
