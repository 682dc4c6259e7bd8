//! The error of both sides: what failed and why, in words an operator or an application
//! author can act on.

use std::fmt;
use std::io;

/// The kind of an [`Error`]. The same kinds travel on the wire, so an application sees the
/// owner's refusal as the owner made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The handle does not carry the right (raising its own container's limits, reaching a
    /// container outside its subtree, changing enforcement).
    PermissionDenied,
    /// No container with that id in the handle's subtree (never made, or released).
    NotFound,
    /// An attribute key or value outside its domain.
    InvalidAttr,
    /// A limit of the model refused (fixed shares above 1, `max_processes` ...), or the owner's
    /// limit on handles or sessions.
    Limit,
    /// The owner does not enforce what was asked in the kernel (binding a thread to a
    /// container without kernel enforcement, or an owner with no cgroup backend).
    NotEnforced,
    /// The kernel refused a binding (the message names the cgroup file).
    Kernel,
    /// The owner is gone or has released the handle: nothing more can be done through it.
    Released,
    /// A message of the wrong shape, in either direction.
    Protocol,
    /// The owner did not answer in time.
    Timeout,
    /// Any other I/O error.
    Io,
}

impl ErrorKind {
    /// The kind's code on the wire.
    pub(crate) fn code(self) -> u8 {
        match self {
            ErrorKind::PermissionDenied => 1,
            ErrorKind::NotFound => 2,
            ErrorKind::InvalidAttr => 3,
            ErrorKind::Limit => 4,
            ErrorKind::NotEnforced => 5,
            ErrorKind::Kernel => 6,
            ErrorKind::Released => 7,
            ErrorKind::Protocol => 8,
            ErrorKind::Timeout => 9,
            ErrorKind::Io => 10,
        }
    }

    /// The kind of a code from the wire; an unknown code (a newer owner) is `Protocol`.
    pub(crate) fn from_code(c: u8) -> ErrorKind {
        match c {
            1 => ErrorKind::PermissionDenied,
            2 => ErrorKind::NotFound,
            3 => ErrorKind::InvalidAttr,
            4 => ErrorKind::Limit,
            5 => ErrorKind::NotEnforced,
            6 => ErrorKind::Kernel,
            7 => ErrorKind::Released,
            9 => ErrorKind::Timeout,
            10 => ErrorKind::Io,
            _ => ErrorKind::Protocol,
        }
    }
}

/// An error of a handle operation, on either side.
///
/// ```
/// use rescon_handle::{Error, ErrorKind};
/// let e = Error::new(ErrorKind::PermissionDenied, "raise cpu_limit on container 7: ...");
/// assert_eq!(e.kind(), ErrorKind::PermissionDenied);
/// assert!(e.to_string().contains("container 7"));
/// ```
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

impl Error {
    /// An error of `kind` with a message saying what failed and why.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An I/O error while doing `what`. A closed peer (or an owner no longer listening)
    /// becomes [`ErrorKind::Released`], a receive timeout [`ErrorKind::Timeout`].
    pub fn io(what: impl Into<String>, e: io::Error) -> Error {
        let kind = match e.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof => ErrorKind::Released,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Io,
        };
        Error {
            kind,
            message: what.into(),
            source: Some(e),
        }
    }

    /// The owner has gone, or released the handle.
    pub(crate) fn released(what: &str) -> Error {
        Error::new(
            ErrorKind::Released,
            format!(
                "{what}: the owner has closed this handle (it exited, or the handle was released)"
            ),
        )
    }

    /// What kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the source.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl From<rescon::Error> for Error {
    fn from(e: rescon::Error) -> Error {
        let kind = match &e {
            rescon::Error::InvalidAttr(_) => ErrorKind::InvalidAttr,
            rescon::Error::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            rescon::Error::NotFound(_) => ErrorKind::NotFound,
            rescon::Error::FixedSharesExceed { .. } | rescon::Error::LimitExceeded { .. } => {
                ErrorKind::Limit
            }
            _ => ErrorKind::Protocol,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<rescon::AttrError> for Error {
    fn from(e: rescon::AttrError) -> Error {
        Error::new(ErrorKind::InvalidAttr, e.to_string())
    }
}

/// A result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for k in [
            ErrorKind::PermissionDenied,
            ErrorKind::NotFound,
            ErrorKind::InvalidAttr,
            ErrorKind::Limit,
            ErrorKind::NotEnforced,
            ErrorKind::Kernel,
            ErrorKind::Released,
            ErrorKind::Protocol,
            ErrorKind::Timeout,
            ErrorKind::Io,
        ] {
            assert_eq!(ErrorKind::from_code(k.code()), k);
        }
        assert_eq!(ErrorKind::from_code(200), ErrorKind::Protocol);
    }

    #[test]
    fn closed_peer_is_released() {
        let e = Error::io("call", io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(e.kind(), ErrorKind::Released);
        let e = Error::io("call", io::Error::from(io::ErrorKind::WouldBlock));
        assert_eq!(e.kind(), ErrorKind::Timeout);
    }
}
