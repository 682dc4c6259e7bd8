//! Errors of listener groups and flood defense.

use super::MemberId;
use super::bpf::TooLarge;
use super::filter::FilterError;
use ipnet::IpNet;
use std::io;
use std::net::SocketAddr;

/// What can go wrong with a listener group or its defense. A failed change leaves the group
/// as it was: the kernel's steering program is swapped only once the new one is built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The filters were refused.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// The filters need a larger program than the kernel accepts.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// A socket operation failed.
    #[error("{op} on {addr} failed: {source}{hint}")]
    Socket {
        /// The operation (`bind`, `listen`, `SO_ATTACH_REUSEPORT_CBPF`, ...).
        op: &'static str,
        /// The group's address.
        addr: SocketAddr,
        /// The kernel's error.
        #[source]
        source: io::Error,
        /// What to do about it (empty when there is nothing specific to say).
        hint: &'static str,
    },
    /// No member with this id in the group.
    #[error("no {0} in this group")]
    NoMember(MemberId),
    /// The member was retired and takes no new connections or prefixes.
    #[error("{0} is retired: it takes no new prefixes")]
    Retired(MemberId),
    /// Prefixes cannot be added to or removed from a complement filter one by one.
    #[error("{0} has a complement filter: change its exceptions with set_filter")]
    Complement(MemberId),
    /// The prefix is not listed by the member.
    #[error("prefix {prefix} is not listed by {member}")]
    NotListed {
        /// The member.
        member: MemberId,
        /// The prefix.
        prefix: IpNet,
    },
    /// Reading a kernel file failed.
    #[error("reading {path} failed: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A kernel file or message had an unexpected shape.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// What was being parsed (`/proc/net/netstat`, `inet_diag message`, ...).
        what: &'static str,
        /// Where and why.
        detail: String,
    },
    /// A sock_diag (netlink) request failed.
    #[error("sock_diag {op} failed: {source}{hint}")]
    Diag {
        /// The request (`dump SYN_RECV`, `destroy`).
        op: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// A defense configuration value was out of range.
    #[error("invalid defense setting {field} = {value}: {allowed}")]
    Config {
        /// The setting.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },
}

impl Error {
    pub(crate) fn socket(op: &'static str, addr: SocketAddr, source: io::Error) -> Error {
        let hint = match source.raw_os_error() {
            Some(libc::EADDRINUSE) => {
                ": another socket holds this address without SO_REUSEPORT or under another user; stop it or pick another port"
            }
            Some(libc::EACCES) => {
                ": ports below 1024 need CAP_NET_BIND_SERVICE; run as root or pick a port above 1023"
            }
            Some(libc::EADDRNOTAVAIL) => {
                ": the address is not configured on any interface of this network namespace"
            }
            Some(libc::EPERM) => ": the operation needs CAP_NET_ADMIN or CAP_NET_RAW",
            Some(libc::EINVAL) if op == "SO_ATTACH_REUSEPORT_CBPF" => {
                ": the kernel refused the program; this is a bug in the compiler, please report the filters"
            }
            _ => "",
        };
        Error::Socket {
            op,
            addr,
            source,
            hint,
        }
    }

    pub(crate) fn diag(op: &'static str, source: io::Error) -> Error {
        let hint = match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                ": destroying sockets needs CAP_NET_ADMIN in the network namespace"
            }
            Some(libc::EOPNOTSUPP) => {
                ": the kernel lacks CONFIG_INET_DIAG_DESTROY; flushing half-open connections is unavailable"
            }
            Some(libc::EPROTONOSUPPORT) | Some(libc::ENOENT) => {
                ": the kernel lacks sock_diag for TCP (CONFIG_INET_DIAG / tcp_diag module)"
            }
            _ => "",
        };
        Error::Diag { op, source, hint }
    }
}
