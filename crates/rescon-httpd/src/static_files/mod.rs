//! Static files: safe path resolution, index files, MIME types, and the response decision
//! (validators, conditional requests, ranges, HEAD).
//!
//! - [`normalize`] and [`open_beneath`] (the `resolve` module docs): a request
//!   path can name nothing outside the document root.
//! - [`DocRoot::resolve`]: from a request path to an open regular file and its [`FileMeta`],
//!   trying index files for directories and redirecting `/dir` to `/dir/`.
//! - [`plan()`]: a pure function from (method, request headers, file metadata) to a
//!   [`ResponsePlan`]; the server sends what it says.
//!
//! ```
//! # fn main() -> std::io::Result<()> {
//! use rescon_httpd::static_files::{DocRoot, Resolved, ResolveError};
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("index.html"), "<h1>hi</h1>")?;
//! let root = DocRoot::open(dir.path(), vec!["index.html".into()])?;
//! let Ok(Resolved::File(f)) = root.resolve("/") else { panic!() };
//! assert_eq!(f.meta.len, 11);
//! assert_eq!(f.meta.content_type, "text/html; charset=utf-8");
//! assert!(matches!(root.resolve("/../etc/passwd"), Err(ResolveError::Path(_))));
//! # Ok(()) }
//! ```

mod plan;
mod resolve;

pub use plan::{
    BodyPlan, FileMeta, RangeSpec, ResponsePlan, Validators, is_plain, parse_range, plan, plan_with,
};
pub use resolve::{
    Confinement, MAX_PATH_BYTES, PathError, RelPath, encode_path, is_escape, normalize,
    open_beneath, open_root, percent_decode_strict,
};

use http::{HeaderValue, StatusCode};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The `Content-Type` for a file name: from its extension, `application/octet-stream` when
/// unknown, with `charset=utf-8` for text.
pub fn content_type(name: &Path) -> HeaderValue {
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let text = mime.type_() == mime_guess::mime::TEXT
        || matches!(mime.subtype().as_str(), "javascript" | "json" | "xml")
        || mime.suffix().is_some_and(|s| s == "xml" || s == "json");
    let v = if text && mime.get_param("charset").is_none() {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.to_string()
    };
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// A document root: a directory descriptor that requests are resolved beneath, and the index
/// file names tried for directories.
#[derive(Debug)]
pub struct DocRoot {
    path: PathBuf,
    fd: OwnedFd,
    index: Vec<String>,
}

/// What a request path resolved to.
#[derive(Debug)]
pub enum Resolved {
    /// A regular file, open for reading.
    File(OpenFile),
    /// A directory asked for without the trailing `/`: redirect here (301), so that relative
    /// links in its index page work.
    Redirect(String),
}

/// An open regular file beneath the root.
#[derive(Debug)]
pub struct OpenFile {
    /// The file.
    pub file: File,
    /// Its metadata for [`plan()`].
    pub meta: FileMeta,
    /// Its path relative to the root.
    pub rel: RelPath,
    /// How the root was enforced.
    pub confinement: Confinement,
}

/// Why a request path does not give a file.
#[derive(Debug)]
pub enum ResolveError {
    /// Refused before touching the file system.
    Path(PathError),
    /// Nothing there (or a directory without an index file).
    NotFound,
    /// There, but not to be served: it leaves the root, or it is not a regular file, or the
    /// server may not read it.
    Forbidden(&'static str),
    /// Something else went wrong.
    Io(io::Error),
}

impl ResolveError {
    /// The status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            ResolveError::Path(p) => p.status(),
            ResolveError::NotFound => StatusCode::NOT_FOUND,
            ResolveError::Forbidden(_) => StatusCode::FORBIDDEN,
            ResolveError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn from_io(e: io::Error) -> ResolveError {
        if is_escape(&e) {
            return ResolveError::Forbidden("the path leaves the document root");
        }
        if e.raw_os_error() == Some(rustix::io::Errno::NAMETOOLONG.raw_os_error()) {
            // A segment longer than the file system's names (NAME_MAX) names nothing: the
            // client's mistake, not the server's (found by the static_path fuzz target).
            return ResolveError::NotFound;
        }
        match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => ResolveError::NotFound,
            io::ErrorKind::PermissionDenied => ResolveError::Forbidden("permission denied"),
            _ => ResolveError::Io(e),
        }
    }
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Path(p) => write!(f, "bad path: {p}"),
            ResolveError::NotFound => f.write_str("not found"),
            ResolveError::Forbidden(why) => write!(f, "forbidden: {why}"),
            ResolveError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ResolveError {}

impl DocRoot {
    /// Opens a document root.
    pub fn open(path: &Path, index: Vec<String>) -> io::Result<DocRoot> {
        Ok(DocRoot {
            fd: open_root(path)?,
            path: path.to_path_buf(),
            index,
        })
    }

    /// The root's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file a request path (percent-encoded, without query) names.
    pub fn resolve(&self, uri_path: &str) -> Result<Resolved, ResolveError> {
        let rel = normalize(uri_path).map_err(ResolveError::Path)?;
        self.resolve_rel(rel)
    }

    /// As [`resolve`](DocRoot::resolve), for a path already normalized.
    pub fn resolve_rel(&self, rel: RelPath) -> Result<Resolved, ResolveError> {
        let (file, md, confinement) = self.open_rel(&rel)?;
        if md.is_dir() {
            if !rel.trailing_slash() {
                let mut loc = encode_path(&rel);
                if !loc.ends_with('/') {
                    loc.push('/');
                }
                return Ok(Resolved::Redirect(loc));
            }
            for name in &self.index {
                let candidate = rel.join(name);
                match self.open_rel(&candidate) {
                    Ok((file, md, confinement)) if md.is_file() => {
                        return Ok(Resolved::File(OpenFile {
                            meta: meta(&md, Path::new(name)),
                            file,
                            rel: candidate,
                            confinement,
                        }));
                    }
                    Ok(_) | Err(ResolveError::NotFound) => continue,
                    Err(e) => return Err(e),
                }
            }
            return Err(ResolveError::NotFound);
        }
        if !md.is_file() {
            return Err(ResolveError::Forbidden("not a regular file"));
        }
        if rel.trailing_slash() {
            // `/file.html/` names a directory that is not there.
            return Err(ResolveError::NotFound);
        }
        let name = rel.to_path();
        Ok(Resolved::File(OpenFile {
            meta: meta(&md, &name),
            file,
            rel,
            confinement,
        }))
    }

    fn open_rel(
        &self,
        rel: &RelPath,
    ) -> Result<(File, std::fs::Metadata, Confinement), ResolveError> {
        let (fd, confinement) =
            open_beneath(&self.fd, &self.path, &rel.to_path()).map_err(ResolveError::from_io)?;
        let file = File::from(fd);
        let md = file.metadata().map_err(ResolveError::Io)?;
        Ok((file, md, confinement))
    }
}

fn meta(md: &std::fs::Metadata, name: &Path) -> FileMeta {
    FileMeta {
        len: md.len(),
        modified: md.modified().ok(),
        inode: md.ino(),
        content_type: content_type(name),
    }
}

#[cfg(test)]
mod tests;
