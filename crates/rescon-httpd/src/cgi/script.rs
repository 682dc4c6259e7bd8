//! Finding the script a request names under a CGI prefix, with the same traversal rules as
//! static files: the request path is [normalized](crate::static_files::normalize) first, and
//! every lookup is confined beneath the script directory.
//!
//! The walk takes the segments after the prefix one at a time: while they name directories it
//! goes on; the first regular file is the script and the rest of the path is `PATH_INFO`
//! (`/cgi-bin/tools/env.sh/a/b` runs `tools/env.sh` with `PATH_INFO=/a/b`). A file that is not
//! executable is refused (403), never served as text.

use crate::static_files::{RelPath, is_escape, open_beneath, open_root};
use http::StatusCode;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What a path under the script directory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A regular file.
    File {
        /// Whether any execute bit is set.
        executable: bool,
    },
    /// A directory.
    Dir,
    /// Nothing.
    Missing,
    /// Something that may not be used: it leaves the directory, is not a regular file or
    /// directory, or cannot be read.
    Forbidden,
}

/// Why no script was found.
#[derive(Debug)]
pub enum ScriptError {
    /// No script at that path.
    NotFound,
    /// A script that may not be run.
    Forbidden(&'static str),
    /// The file system failed.
    Io(io::Error),
}

impl ScriptError {
    /// The status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            ScriptError::NotFound => StatusCode::NOT_FOUND,
            ScriptError::Forbidden(_) => StatusCode::FORBIDDEN,
            ScriptError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScriptError::NotFound => f.write_str("no such script"),
            ScriptError::Forbidden(why) => write!(f, "forbidden: {why}"),
            ScriptError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ScriptError {}

/// The segments of a URL prefix such as `/cgi-bin/`.
fn prefix_segments(prefix: &str) -> Vec<&str> {
    prefix.split('/').filter(|s| !s.is_empty()).collect()
}

/// If `rel` (a normalized request path) is under `prefix`, the rest of it.
///
/// ```
/// use rescon_httpd::cgi::under_prefix;
/// use rescon_httpd::static_files::normalize;
/// let rest = under_prefix("/cgi-bin/", &normalize("//cgi-bin/./env.sh/x").unwrap()).unwrap();
/// assert_eq!(rest.to_path(), std::path::Path::new("env.sh/x"));
/// assert!(under_prefix("/cgi-bin/", &normalize("/cgi-bin-other/x").unwrap()).is_none());
/// ```
pub fn under_prefix(prefix: &str, rel: &RelPath) -> Option<RelPath> {
    let want = prefix_segments(prefix);
    let segs = rel.segments();
    if segs.len() < want.len()
        || !want
            .iter()
            .zip(segs)
            .all(|(w, s)| s.as_bytes() == w.as_bytes())
    {
        return None;
    }
    Some(rel.suffix(want.len()))
}

/// A script found under a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptMatch {
    /// The script's path relative to the script directory.
    pub rel: PathBuf,
    /// `SCRIPT_NAME`: the prefix and the script's segments, decoded.
    pub script_name: String,
    /// `PATH_INFO`: what follows, decoded (empty if nothing).
    pub path_info: String,
}

fn join_segments(segs: &[std::ffi::OsString]) -> String {
    let mut s = String::new();
    for seg in segs {
        s.push('/');
        s.push_str(&seg.to_string_lossy());
    }
    s
}

/// Walks `rest` (the path after `prefix`) with `lookup` until it finds the script. Pure: the
/// file system is behind `lookup`.
pub fn find_script(
    prefix: &str,
    rest: &RelPath,
    mut lookup: impl FnMut(&RelPath) -> Lookup,
) -> Result<ScriptMatch, ScriptError> {
    let segs = rest.segments();
    for i in 1..=segs.len() {
        let candidate = rest.prefix(i);
        match lookup(&candidate) {
            Lookup::Dir => continue,
            Lookup::File { executable: true } => {
                let prefix_path: String = prefix_segments(prefix)
                    .iter()
                    .map(|s| format!("/{s}"))
                    .collect();
                let mut path_info = join_segments(&segs[i..]);
                if rest.trailing_slash() && i < segs.len() {
                    path_info.push('/');
                }
                return Ok(ScriptMatch {
                    rel: candidate.to_path(),
                    script_name: format!("{prefix_path}{}", join_segments(&segs[..i])),
                    path_info,
                });
            }
            Lookup::File { executable: false } => {
                return Err(ScriptError::Forbidden("the script is not executable"));
            }
            Lookup::Missing => return Err(ScriptError::NotFound),
            Lookup::Forbidden => return Err(ScriptError::Forbidden("not a script")),
        }
    }
    Err(ScriptError::NotFound)
}

/// A directory of CGI scripts, open for confined lookups.
#[derive(Debug)]
pub struct ScriptDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl ScriptDir {
    /// Opens a script directory.
    pub fn open(path: &Path) -> io::Result<ScriptDir> {
        Ok(ScriptDir {
            fd: open_root(path)?,
            path: path.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `rel` is, looked up beneath the directory.
    pub fn lookup(&self, rel: &RelPath) -> Lookup {
        match open_beneath(&self.fd, &self.path, &rel.to_path()) {
            Ok((fd, _)) => match std::fs::File::from(fd).metadata() {
                Ok(md) if md.is_dir() => Lookup::Dir,
                Ok(md) if md.is_file() => Lookup::File {
                    executable: md.permissions().mode() & 0o111 != 0,
                },
                Ok(_) => Lookup::Forbidden,
                Err(_) => Lookup::Forbidden,
            },
            Err(e) if is_escape(&e) => Lookup::Forbidden,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Lookup::Missing,
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => Lookup::Missing,
            Err(_) => Lookup::Forbidden,
        }
    }

    /// Finds the script `rest` names (see [`find_script`]); the script's file is
    /// `self.path().join(&match.rel)`.
    pub fn find(&self, prefix: &str, rest: &RelPath) -> Result<ScriptMatch, ScriptError> {
        find_script(prefix, rest, |r| self.lookup(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::static_files::normalize;
    use std::collections::HashMap;
    use std::os::unix::fs::symlink;

    fn rest(p: &str) -> RelPath {
        under_prefix("/cgi-bin/", &normalize(p).unwrap()).unwrap()
    }

    fn fake(entries: &[(&str, Lookup)]) -> impl FnMut(&RelPath) -> Lookup {
        let map: HashMap<PathBuf, Lookup> = entries
            .iter()
            .map(|(p, l)| (PathBuf::from(p), *l))
            .collect();
        move |r: &RelPath| map.get(&r.to_path()).copied().unwrap_or(Lookup::Missing)
    }

    const EXE: Lookup = Lookup::File { executable: true };

    #[test]
    fn splits_script_and_path_info() {
        let fs = || {
            fake(&[
                ("tools", Lookup::Dir),
                ("tools/env.sh", EXE),
                ("hello", EXE),
            ])
        };
        let m = find_script("/cgi-bin/", &rest("/cgi-bin/tools/env.sh/a/b%20c/"), fs()).unwrap();
        assert_eq!(m.rel, Path::new("tools/env.sh"));
        assert_eq!(m.script_name, "/cgi-bin/tools/env.sh");
        assert_eq!(m.path_info, "/a/b c/");
        let m = find_script("/cgi-bin/", &rest("/cgi-bin/hello"), fs()).unwrap();
        assert_eq!(
            (m.script_name.as_str(), m.path_info.as_str()),
            ("/cgi-bin/hello", "")
        );
        let m = find_script("/cgi-bin/", &rest("/cgi-bin/hello/"), fs()).unwrap();
        assert_eq!(
            m.path_info, "",
            "a slash after the script alone is no PATH_INFO"
        );
    }

    #[test]
    fn refusals() {
        let fs = || {
            fake(&[
                ("tools", Lookup::Dir),
                ("readme.txt", Lookup::File { executable: false }),
                ("fifo", Lookup::Forbidden),
            ])
        };
        let status = |p: &str| {
            find_script("/cgi-bin/", &rest(p), fs())
                .unwrap_err()
                .status()
        };
        assert_eq!(status("/cgi-bin/readme.txt"), StatusCode::FORBIDDEN);
        assert_eq!(status("/cgi-bin/fifo"), StatusCode::FORBIDDEN);
        assert_eq!(status("/cgi-bin/missing/x"), StatusCode::NOT_FOUND);
        assert_eq!(status("/cgi-bin/tools/"), StatusCode::NOT_FOUND);
        assert_eq!(status("/cgi-bin/"), StatusCode::NOT_FOUND);
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let r = normalize("/cgi-bin/x").unwrap();
        assert!(under_prefix("/cgi-bin/", &r).is_some());
        assert!(under_prefix("/cgi/", &r).is_none());
        assert!(under_prefix("/cgi-bin/x/", &r).is_some());
        assert!(under_prefix("/a/cgi-bin/", &r).is_none());
        // Encoded forms of the prefix are the prefix: a script is never served as a file.
        assert!(under_prefix("/cgi-bin/", &normalize("/cgi%2Dbin/x").unwrap()).is_some());
    }

    #[test]
    fn real_directory_with_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let cgi = dir.path().join("cgi");
        std::fs::create_dir_all(cgi.join("sub")).unwrap();
        let script = cgi.join("sub/run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(cgi.join("data.txt"), "x").unwrap();
        let outside = dir.path().join("evil.sh");
        std::fs::write(&outside, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
        symlink("../evil.sh", cgi.join("escape.sh")).unwrap();
        symlink("sub/run.sh", cgi.join("alias.sh")).unwrap();
        let d = ScriptDir::open(&cgi).unwrap();
        let m = d
            .find("/cgi-bin/", &rest("/cgi-bin/sub/run.sh/info"))
            .unwrap();
        assert_eq!(m.rel, Path::new("sub/run.sh"));
        assert_eq!(m.path_info, "/info");
        assert!(d.find("/cgi-bin/", &rest("/cgi-bin/alias.sh")).is_ok());
        assert_eq!(
            d.find("/cgi-bin/", &rest("/cgi-bin/escape.sh"))
                .unwrap_err()
                .status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            d.find("/cgi-bin/", &rest("/cgi-bin/data.txt"))
                .unwrap_err()
                .status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            d.find("/cgi-bin/", &rest("/cgi-bin/data.txt/x"))
                .unwrap_err()
                .status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            d.find("/cgi-bin/", &rest("/cgi-bin/nope"))
                .unwrap_err()
                .status(),
            StatusCode::NOT_FOUND
        );
    }
}
