//! Turning a request path into an open file that cannot be outside the document root.
//!
//! Two steps, each a defence on its own:
//!
//! 1. [`normalize`] is pure: it splits the path on `/`, percent-decodes each segment and refuses
//!    what could name something outside the root or confuse a later step: `..` (also encoded as
//!    `%2e%2e`), an encoded `/` (`%2F`) or `\`, NUL and other control bytes, malformed escapes.
//!    `.` and empty segments are dropped; a segment starting with `.` (a dotfile such as `.git`,
//!    except `.well-known`) is not served.
//! 2. [`open_beneath`] opens the result relative to a descriptor of the root with `openat2` and
//!    `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: the kernel refuses any resolution, through `..`
//!    or a symbolic link, that leaves the root (symlinks that stay inside it work). On kernels
//!    without `openat2` (before 5.6) it falls back to canonicalizing the path and checking that it
//!    starts with the canonical root, which has a window between the check and the open that a
//!    local user able to swap symlinks could use; the fallback says so in its docs.

use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The longest request path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// Why a request path was refused before touching the file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not starting with `/`.
    NotAbsolute,
    /// Longer than [`MAX_PATH_BYTES`].
    TooLong,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A `..` segment, plain or encoded.
    DotDot,
    /// An encoded `/`, or a `\`, inside a segment.
    Separator,
    /// NUL or another control byte.
    ControlByte,
    /// A segment starting with `.` (other than `.well-known`).
    Hidden,
}

impl PathError {
    /// The HTTP status the refusal maps to: 404 for hidden files (their existence is not
    /// disclosed), 414 for an overlong path, 400 otherwise.
    pub fn status(self) -> http::StatusCode {
        match self {
            PathError::Hidden => http::StatusCode::NOT_FOUND,
            PathError::TooLong => http::StatusCode::URI_TOO_LONG,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path does not start with /",
            PathError::TooLong => "the path is too long",
            PathError::BadEscape => "malformed percent-escape",
            PathError::DotDot => "`..` segment",
            PathError::Separator => "encoded / or a backslash in a segment",
            PathError::ControlByte => "NUL or a control byte",
            PathError::Hidden => "hidden file",
        })
    }
}

impl std::error::Error for PathError {}

/// A request path made safe: decoded segments, none of them `.`, `..`, empty, or containing a
/// separator or NUL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelPath {
    segments: Vec<OsString>,
    trailing_slash: bool,
}

impl RelPath {
    /// The decoded segments.
    pub fn segments(&self) -> &[OsString] {
        &self.segments
    }

    /// Whether the request path ended with `/` (a directory was asked for).
    pub fn trailing_slash(&self) -> bool {
        self.trailing_slash
    }

    /// The relative path (`.` for the root itself).
    pub fn to_path(&self) -> PathBuf {
        if self.segments.is_empty() {
            return PathBuf::from(".");
        }
        self.segments.iter().collect()
    }

    /// The first `n` segments.
    pub fn prefix(&self, n: usize) -> RelPath {
        RelPath {
            segments: self.segments[..n.min(self.segments.len())].to_vec(),
            trailing_slash: false,
        }
    }

    /// The segments after the first `n`, with the trailing slash kept.
    pub fn suffix(&self, n: usize) -> RelPath {
        RelPath {
            segments: self.segments[n.min(self.segments.len())..].to_vec(),
            trailing_slash: self.trailing_slash,
        }
    }

    /// This path with one more segment (which must be a plain name).
    pub fn join(&self, name: &str) -> RelPath {
        let mut segments = self.segments.clone();
        segments.push(name.into());
        RelPath {
            segments,
            trailing_slash: false,
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes, refusing malformed ones. (`percent_encoding::percent_decode` passes
/// malformed escapes through unchanged, which would let `%2` and `%2e` mean different things to
/// different layers.)
pub fn percent_decode_strict(s: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hi = s.get(i + 1).copied().and_then(hex);
            let lo = s.get(i + 2).copied().and_then(hex);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => return Err(PathError::BadEscape),
            }
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Checks and decodes a request path (without its query). See the module docs.
///
/// ```
/// use rescon_httpd::static_files::{normalize, PathError};
/// let p = normalize("/docs/./a%20b.html").unwrap();
/// assert_eq!(p.to_path(), std::path::Path::new("docs/a b.html"));
/// assert_eq!(normalize("/docs/%2e%2e/etc/passwd"), Err(PathError::DotDot));
/// assert_eq!(normalize("/a%2Fb"), Err(PathError::Separator));
/// ```
pub fn normalize(path: &str) -> Result<RelPath, PathError> {
    let bytes = path.as_bytes();
    if bytes.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut segments = Vec::new();
    let mut hidden = false;
    for raw in bytes[1..].split(|&b| b == b'/') {
        let seg = percent_decode_strict(raw)?;
        if seg.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(PathError::ControlByte);
        }
        if seg.iter().any(|&b| b == b'/' || b == b'\\') {
            return Err(PathError::Separator);
        }
        match seg.as_slice() {
            b"" | b"." => continue,
            b".." => return Err(PathError::DotDot),
            b".well-known" => {}
            s if s.starts_with(b".") => hidden = true,
            _ => {}
        }
        segments.push(OsString::from_vec(seg));
    }
    // Every segment was checked for `..` before a hidden one is reported, so that a traversal
    // attempt through a dot directory is still reported as one.
    if hidden {
        return Err(PathError::Hidden);
    }
    let trailing_slash = bytes.ends_with(b"/");
    Ok(RelPath {
        segments,
        trailing_slash,
    })
}

/// Opens a directory to resolve requests beneath (`O_PATH`, so it needs no read permission on
/// the directory's contents list).
pub fn open_root(dir: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("opening the document root {}: {e}", dir.display()),
        )
    })
}

/// How [`open_beneath`] confines resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confinement {
    /// `openat2` with `RESOLVE_BENEATH` (Linux 5.6 and later).
    Kernel,
    /// Canonicalize and check the prefix (older kernels; racy against symlink swaps).
    Canonicalize,
}

/// Opens `rel` beneath `root` (a descriptor from [`open_root`]; `root_path` is its path, used
/// only by the fallback) for reading, without blocking on a FIFO. A resolution that would leave
/// the root fails with `EXDEV` (kernel) or `PermissionDenied` (fallback).
///
/// # References
/// openat2(2)
pub fn open_beneath(
    root: impl AsFd,
    root_path: &Path,
    rel: &Path,
) -> io::Result<(OwnedFd, Confinement)> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    match rustix::fs::openat2(
        root.as_fd(),
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => Ok((fd, Confinement::Kernel)),
        Err(rustix::io::Errno::NOSYS) => {
            let canon_root = root_path.canonicalize()?;
            let target = root_path.join(rel).canonicalize()?;
            if !target.starts_with(&canon_root) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{} resolves outside the root", rel.display()),
                ));
            }
            let fd = rustix::fs::open(&target, flags | OFlags::NOFOLLOW, Mode::empty())?;
            Ok((fd, Confinement::Canonicalize))
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether an error from [`open_beneath`] means the path tried to leave the root.
pub fn is_escape(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error())
        || e.kind() == io::ErrorKind::PermissionDenied && e.raw_os_error().is_none()
        || e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

/// The percent-encoded form of a relative path, for a `Location` header.
pub fn encode_path(rel: &RelPath) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let mut out = String::new();
    for s in rel.segments() {
        out.push('/');
        out.extend(percent_encoding::percent_encode(OsStr::as_bytes(s), SET));
    }
    if out.is_empty() || (rel.trailing_slash() && !out.ends_with('/')) {
        out.push('/');
    }
    out
}
