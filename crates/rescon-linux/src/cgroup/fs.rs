//! cgroupfs file operations, each turning an I/O error into an [`Error`] that names the path
//! and the value.
//!
//! Knob files are opened without `O_CREAT`: on cgroupfs a missing file means a missing
//! controller or kernel feature, never something to create. For unit tests on a temporary
//! directory, an emulation mode creates the files a kernel would when a directory is made, and
//! removes them before the directory is removed.

use super::error::{Error, ErrorKind};
use super::layout::Version;
use super::parse;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How the files of a cgroup directory are reached.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Fs {
    /// Emulate the kernel on a plain directory (unit tests only).
    pub(crate) emulate: bool,
}

impl Fs {
    /// Makes a cgroup directory. `files` are the knobs an emulated kernel creates in it, with
    /// their default contents.
    pub(crate) fn mkdir(&self, dir: &Path, files: &[(&str, &str)]) -> Result<(), Error> {
        std::fs::create_dir(dir).map_err(|e| Error::io(ErrorKind::Io, "create cgroup", dir, e))?;
        if self.emulate {
            for (f, v) in files {
                std::fs::write(dir.join(f), v)
                    .map_err(|e| Error::io(ErrorKind::Io, "emulate knob", &dir.join(f), e))?;
            }
        }
        Ok(())
    }

    /// Removes a cgroup directory (which must have no child cgroups and no processes).
    pub(crate) fn rmdir(&self, dir: &Path) -> Result<(), Error> {
        if self.emulate {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_file()) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        std::fs::remove_dir(dir).map_err(|e| Error::io(ErrorKind::Io, "remove cgroup", dir, e))
    }

    /// Writes `value` to `dir/file` in one write(2), as cgroupfs requires.
    pub(crate) fn write(&self, dir: &Path, file: &str, value: &str) -> Result<(), Error> {
        let path = dir.join(file);
        let res = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .truncate(self.emulate)
                .open(&path)?;
            let n = f.write(value.as_bytes())?;
            if n != value.len() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {n} of {} bytes", value.len()),
                ));
            }
            Ok(())
        })();
        res.map_err(|e| Error::io(ErrorKind::Io, "write", &path, e).value(value))
    }

    /// Whether `dir/file` exists.
    pub(crate) fn exists(&self, dir: &Path, file: &str) -> bool {
        dir.join(file).exists()
    }
}

/// Reads a whole small file.
pub(crate) fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::io(ErrorKind::Io, "read", path, e))
}

/// Opens a counter file to be read again and again with [`pread`].
pub(crate) fn open_counter(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|e| Error::io(ErrorKind::Unavailable, "open counter", path, e))
}

/// Reads a counter file from its start (one pread(2): the kernel regenerates the text).
pub(crate) fn pread<'b>(f: &File, buf: &'b mut [u8], path: &Path) -> Result<&'b str, Error> {
    let n = f
        .read_at(buf, 0)
        .map_err(|e| Error::io(ErrorKind::Io, "read counter", path, e))?;
    std::str::from_utf8(&buf[..n]).map_err(|_| {
        Error::new(ErrorKind::Parse, "read counter")
            .path(path)
            .detail("not UTF-8")
    })
}

/// The ids in `dir/file` (`cgroup.procs`, `tasks`, `cgroup.threads`).
pub(crate) fn pids(dir: &Path, file: &str) -> Result<Vec<i32>, Error> {
    let path = dir.join(file);
    let mut s = String::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(|e| Error::io(ErrorKind::Io, "read", &path, e))?;
    parse::pid_list(&s).map_err(|e| Error::parse_at(&path, e))
}

/// The child cgroups of `dir`.
pub(crate) fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(ErrorKind::Io, "list", dir, e))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(ErrorKind::Io, "list", dir, e))?;
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// `dir` and every cgroup below it, parents before children.
pub(crate) fn walk(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let kids = subdirs(&out[i])?;
        out.extend(kids);
        i += 1;
    }
    Ok(out)
}

/// The files an emulated kernel creates in a new cgroup of a hierarchy.
pub(crate) fn emulated_files(
    version: Version,
    controllers: &[String],
) -> Vec<(&'static str, &'static str)> {
    let mut f: Vec<(&'static str, &'static str)> = vec![("cgroup.procs", "")];
    let has = |c: &str| controllers.iter().any(|x| x == c);
    match version {
        Version::V2 => {
            f.extend([
                ("cgroup.threads", ""),
                ("cgroup.type", "domain\n"),
                ("cgroup.subtree_control", ""),
                ("cgroup.controllers", ""),
                ("cgroup.events", "populated 0\nfrozen 0\n"),
                ("cgroup.kill", ""),
                ("cgroup.freeze", "0\n"),
                ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
            ]);
            if has("cpu") {
                f.extend([
                    ("cpu.weight", "100\n"),
                    ("cpu.idle", "0\n"),
                    ("cpu.max", "max 100000\n"),
                    ("cpu.max.burst", "0\n"),
                ]);
            }
            if has("memory") {
                f.extend([("memory.max", "max\n"), ("memory.current", "0\n")]);
            }
            if has("pids") {
                f.extend([("pids.max", "max\n"), ("pids.current", "0\n")]);
            }
        }
        Version::V1 => {
            f.push(("tasks", ""));
            if has("cpu") {
                f.extend([
                    ("cpu.shares", "1024\n"),
                    ("cpu.idle", "0\n"),
                    ("cpu.cfs_quota_us", "-1\n"),
                    ("cpu.cfs_period_us", "100000\n"),
                    ("cpu.cfs_burst_us", "0\n"),
                    (
                        "cpu.stat",
                        "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
                    ),
                ]);
            }
            if has("cpuacct") {
                f.extend([
                    ("cpuacct.usage", "0\n"),
                    ("cpuacct.stat", "user 0\nsystem 0\n"),
                ]);
            }
            if has("memory") {
                f.extend([
                    ("memory.limit_in_bytes", "9223372036854771712\n"),
                    ("memory.usage_in_bytes", "0\n"),
                ]);
            }
            if has("pids") {
                f.extend([("pids.max", "max\n"), ("pids.current", "0\n")]);
            }
            if has("freezer") {
                f.push(("freezer.state", "THAWED\n"));
            }
        }
    }
    f
}
