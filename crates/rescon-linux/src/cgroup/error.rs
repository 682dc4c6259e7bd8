//! The error of the cgroup backend: what failed, on which path, with which value, and what to
//! do about it.

use super::parse::ParseError;
use rescon::ContainerId;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What to tell an operator who lacks permission.
pub const PERMISSION_HINT: &str = "run as root, or under a systemd unit with Delegate=yes (see \
crates/rescon-linux/README.md), or set enforcement = \"user\" to keep user-level containers only";

/// The kind of an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The kernel refused for lack of permission (`EACCES`, `EPERM`, `EROFS`).
    PermissionDenied,
    /// No usable cgroup hierarchy, or a needed controller or file is missing.
    Unavailable,
    /// The container's attributes say enforcement = "user".
    NotKernel,
    /// The container is not mirrored by this manager.
    NotMirrored,
    /// A cgroup still holds processes (or is in use) and cannot be removed or changed so.
    Busy,
    /// The cgroup topology does not allow the operation (v2's rules on threaded subtrees and
    /// on processes in inner cgroups).
    Topology,
    /// The kernel wrote text of an unexpected shape.
    Parse,
    /// A limit of the container model refused (for instance `max_processes`).
    Limit,
    /// A child process could not be started.
    Spawn,
    /// Processes did not go away in time.
    Timeout,
    /// The manager has been shut down.
    ShutDown,
    /// The subtree's name is held by another live instance.
    InUse,
    /// The container model refused (a handle without the right, a released container).
    Model,
    /// Any other I/O error.
    Io,
}

/// An error of the cgroup backend.
///
/// Its message says what failed, on which path, with which value, and what to do, so it can
/// be shown to an operator as it is:
///
/// ```
/// use rescon_linux::cgroup::{Error, ErrorKind};
/// let e = Error::io(
///     ErrorKind::Io,
///     "write",
///     std::path::Path::new("/sys/fs/cgroup/cpu/x/cpu.shares"),
///     std::io::Error::from_raw_os_error(libc::EACCES),
/// );
/// assert_eq!(e.kind(), ErrorKind::PermissionDenied);
/// assert!(e.to_string().contains("/sys/fs/cgroup/cpu/x/cpu.shares"));
/// assert!(e.to_string().contains("Delegate=yes"));
/// ```
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    op: &'static str,
    path: Option<PathBuf>,
    value: Option<String>,
    detail: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// A new error of `kind` about operation `op`.
    pub fn new(kind: ErrorKind, op: &'static str) -> Error {
        Error {
            kind,
            op,
            path: None,
            value: None,
            detail: None,
            source: None,
        }
    }

    /// An I/O error on `path`. Permission errors (`EACCES`, `EPERM`, `EROFS`) become
    /// [`ErrorKind::PermissionDenied`] whatever `kind` says, and `EBUSY` becomes
    /// [`ErrorKind::Busy`].
    pub fn io(kind: ErrorKind, op: &'static str, path: &Path, e: io::Error) -> Error {
        let kind = match e.raw_os_error() {
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => ErrorKind::PermissionDenied,
            Some(libc::EBUSY) if kind == ErrorKind::Io => ErrorKind::Busy,
            Some(libc::EOPNOTSUPP) if kind == ErrorKind::Io => ErrorKind::Topology,
            _ => kind,
        };
        Error {
            path: Some(path.to_path_buf()),
            source: Some(Box::new(e)),
            ..Error::new(kind, op)
        }
    }

    pub(crate) fn parse(e: ParseError) -> Error {
        Error {
            source: Some(Box::new(e)),
            ..Error::new(ErrorKind::Parse, "parse")
        }
    }

    pub(crate) fn parse_at(path: &Path, e: ParseError) -> Error {
        Error {
            path: Some(path.to_path_buf()),
            ..Error::parse(e)
        }
    }

    pub(crate) fn not_mirrored(id: ContainerId) -> Error {
        Error::new(ErrorKind::NotMirrored, "find cgroup").detail(format!(
            "container {id} is not mirrored as a cgroup: attach it with Manager::attach (it needs enforcement = \"kernel\")"
        ))
    }

    pub(crate) fn shut_down() -> Error {
        Error::new(ErrorKind::ShutDown, "use manager")
            .detail("the cgroup manager has been shut down; create a new one")
    }

    /// Adds the value that was being written.
    pub fn value(mut self, v: impl fmt::Display) -> Error {
        self.value = Some(v.to_string());
        self
    }

    /// Adds an explanation.
    pub fn detail(mut self, d: impl Into<String>) -> Error {
        self.detail = Some(d.into());
        self
    }

    /// Sets the path.
    pub fn path(mut self, p: &Path) -> Error {
        self.path = Some(p.to_path_buf());
        self
    }

    pub(crate) fn source_err(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(e));
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The path refused or missing, if the error is about one.
    pub fn path_ref(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The value that was written, if any.
    pub fn value_ref(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// The operating-system error number, if the error came from a system call.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source
            .as_ref()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .and_then(io::Error::raw_os_error)
    }

    fn hint(&self) -> Option<&'static str> {
        match self.kind {
            ErrorKind::PermissionDenied => Some(PERMISSION_HINT),
            ErrorKind::Busy => Some(
                "the cgroup still holds processes: kill them first (Manager::kill) or wait for them to exit",
            ),
            ErrorKind::Unavailable => Some(
                "kernel enforcement is not available here; set enforcement = \"user\" to use user-level containers only",
            ),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cgroup: ")?;
        f.write_str(self.op)?;
        if let Some(p) = &self.path {
            write!(f, " {}", p.display())?;
        }
        if let Some(v) = &self.value {
            write!(f, " (value {v:?})")?;
        }
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        if let Some(h) = self.hint() {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<rescon::Error> for Error {
    fn from(e: rescon::Error) -> Error {
        let kind = match e {
            rescon::Error::LimitExceeded { .. } => ErrorKind::Limit,
            _ => ErrorKind::Model,
        };
        Error {
            source: Some(Box::new(e)),
            ..Error::new(kind, "container")
        }
    }
}
