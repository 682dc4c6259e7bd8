//! The embedded demo site: static pages and CGI scripts compiled into the binary, so that the
//! default configuration serves something on a fresh machine, from any directory.
//!
//! The files are unpacked to a directory (scripts must be files to be executed, and the static
//! handler serves files, so the one code path serves the demo and real sites alike):
//! [`unpack_cached`] puts them under the runtime directory, named by a fingerprint of their
//! contents so that a new build never serves an old copy; `rescon-httpd --unpack-demo DIR`
//! writes them where an operator wants a starting point.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One file of the demo site.
#[derive(Clone, Copy, Debug)]
pub struct DemoFile {
    /// Its path in the site (`htdocs/index.html`, `cgi-bin/hello.sh`).
    pub path: &'static str,
    /// Its contents.
    pub contents: &'static [u8],
    /// Whether it is a script (mode 0755) or a page (0644).
    pub executable: bool,
}

macro_rules! demo_file {
    ($path:literal, $exec:expr) => {
        DemoFile {
            path: $path,
            contents: include_bytes!(concat!("../demo/", $path)),
            executable: $exec,
        }
    };
}

/// Every file of the demo site.
pub const FILES: &[DemoFile] = &[
    demo_file!("htdocs/index.html", false),
    demo_file!("htdocs/style.css", false),
    demo_file!("htdocs/about.txt", false),
    demo_file!("cgi-bin/hello.sh", true),
    demo_file!("cgi-bin/spin.sh", true),
];

/// A fingerprint of the demo's paths and contents (FNV-1a, 64 bits, in hex): a directory name
/// that changes whenever a file does. (A cryptographic hash is not needed: the input is ours.)
pub fn fingerprint() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in FILES {
        for b in f
            .path
            .bytes()
            .chain([0])
            .chain(f.contents.iter().copied())
            .chain([u8::from(f.executable), 0])
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Writes the demo site into `dir` (created if missing): `dir/htdocs` and `dir/cgi-bin`.
/// Existing files of the same names are replaced.
pub fn unpack(dir: &Path) -> io::Result<()> {
    for f in FILES {
        let path = dir.join(f.path);
        if let Some(parent) = path.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| with_path(e, "creating", parent))?;
        }
        let mode = if f.executable { 0o755 } else { 0o644 };
        // Written beside, then renamed: a running script is never half-written.
        let tmp = path.with_extension("rescon-tmp");
        let _ = fs::remove_file(&tmp);
        {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
                .map_err(|e| with_path(e, "creating", &tmp))?;
            io::Write::write_all(&mut file, f.contents)
                .map_err(|e| with_path(e, "writing", &tmp))?;
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .map_err(|e| with_path(e, "setting the mode of", &tmp))?;
        fs::rename(&tmp, &path).map_err(|e| with_path(e, "renaming", &path))?;
    }
    Ok(())
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Unpacks the demo under `base` (once per content fingerprint) and returns its directory,
/// `base/demo-FINGERPRINT`. `base` is created with mode 0700 if missing, and must belong to
/// this user.
pub fn unpack_cached_in(base: &Path) -> io::Result<PathBuf> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(base)
        .map_err(|e| with_path(e, "creating", base))?;
    let md = fs::metadata(base).map_err(|e| with_path(e, "reading", base))?;
    let me = rustix::process::getuid().as_raw();
    if md.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to this user ({me}): remove it or set XDG_RUNTIME_DIR",
                base.display(),
                md.uid()
            ),
        ));
    }
    let dir = base.join(format!("demo-{}", fingerprint()));
    let marker = dir.join(".complete");
    if marker.exists() {
        return Ok(dir);
    }
    unpack(&dir)?;
    fs::write(&marker, fingerprint()).map_err(|e| with_path(e, "writing", &marker))?;
    Ok(dir)
}

/// [`unpack_cached_in`] the server's runtime directory (see
/// [`default_admin_socket`](crate::config::default_admin_socket) for where that is).
pub fn unpack_cached() -> io::Result<PathBuf> {
    unpack_cached_in(&crate::config::runtime_dir().join("rescon-httpd"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgi::ScriptDir;
    use crate::cgi::{CgiHead, CgiHeadParser, CgiRequest, meta_variables};
    use crate::config::Config;
    use crate::routing::{Target, route};
    use crate::static_files::{DocRoot, Resolved};

    /// Runs a freshly written script, retrying while another test thread's fork still holds a
    /// descriptor of it open for writing (ETXTBSY), a known race of multi-threaded test runs.
    fn output(cmd: &mut std::process::Command) -> std::process::Output {
        for _ in 0..100 {
            match cmd.output() {
                Err(e) if e.raw_os_error() == Some(26) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                r => return r.unwrap(),
            }
        }
        panic!("the script stayed busy")
    }

    #[test]
    fn unpacks_with_modes_and_reuses_the_copy() {
        let base = tempfile::tempdir().unwrap();
        let dir = unpack_cached_in(base.path()).unwrap();
        for f in FILES {
            let md = fs::metadata(dir.join(f.path)).unwrap();
            assert_eq!(fs::read(dir.join(f.path)).unwrap(), f.contents);
            let want = if f.executable { 0o755 } else { 0o644 };
            assert_eq!(md.permissions().mode() & 0o777, want, "{}", f.path);
        }
        let mtime = fs::metadata(dir.join(".complete"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(unpack_cached_in(base.path()).unwrap(), dir);
        assert_eq!(
            fs::metadata(dir.join(".complete"))
                .unwrap()
                .modified()
                .unwrap(),
            mtime
        );
        assert_eq!(fingerprint().len(), 16);
    }

    /// The default configuration, its demo site and the CGI parts work together: the index is
    /// served, the script is found through the router, runs with the meta-variables, and its
    /// output parses.
    #[test]
    fn the_default_site_serves_and_its_script_runs() {
        let base = tempfile::tempdir().unwrap();
        let dir = unpack_cached_in(base.path()).unwrap();
        let mut config = Config::default_config();
        config.set_demo_dir(&dir);
        let r = route(&config, Some("127.0.0.1:8080"), "/").unwrap();
        let root = DocRoot::open(&r.vhost.root, r.vhost.index.clone()).unwrap();
        let Target::Static(rel) = r.target else {
            panic!()
        };
        match root.resolve_rel(rel).unwrap() {
            Resolved::File(f) => assert_eq!(f.meta.content_type, "text/html; charset=utf-8"),
            other => panic!("{other:?}"),
        }

        let r = route(&config, Some("localhost"), "/cgi-bin/hello.sh/a/b").unwrap();
        let Target::Cgi { prefix, rest } = r.target else {
            panic!()
        };
        let scripts = ScriptDir::open(&prefix.dir).unwrap();
        let m = scripts.find(&prefix.prefix, &rest).unwrap();
        assert_eq!(
            (m.script_name.as_str(), m.path_info.as_str()),
            ("/cgi-bin/hello.sh", "/a/b")
        );
        let headers = http::HeaderMap::new();
        let script = scripts.path().join(&m.rel);
        let env = meta_variables(&CgiRequest {
            method: &http::Method::GET,
            version: http::Version::HTTP_11,
            raw_path: "/cgi-bin/hello.sh/a/b",
            query: "x=1",
            headers: &headers,
            content_length: None,
            remote: "127.0.0.1:40000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            server_name: "localhost",
            script_name: &m.script_name,
            path_info: &m.path_info,
            script_filename: &script,
            document_root: &r.vhost.root,
            container: rescon::ContainerId::from_raw(99),
        });
        let out = output(std::process::Command::new(&script).env_clear().envs(&env));
        assert!(out.status.success());
        let mut p = CgiHeadParser::new(4096);
        let (head, body) = p.feed(&out.stdout).unwrap().unwrap();
        assert!(matches!(head, CgiHead::Document { status, .. } if status == 200));
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("running in container 99"), "{body}");
        assert!(
            body.contains("PATH_INFO=/a/b\n") && body.contains("QUERY_STRING=x=1\n"),
            "{body}"
        );
    }

    #[test]
    fn the_spin_script_refuses_bad_input() {
        let base = tempfile::tempdir().unwrap();
        let dir = unpack_cached_in(base.path()).unwrap();
        let run = |q: &str| {
            let out = output(
                std::process::Command::new(dir.join("cgi-bin/spin.sh"))
                    .env_clear()
                    .env("QUERY_STRING", q),
            );
            String::from_utf8(out.stdout).unwrap()
        };
        assert!(run("n=10").contains("spun 10 iterations"));
        assert!(run("n=999999999999").starts_with("Status: 400"));
        assert!(
            run("n=$(id)").contains("spun 100000 iterations"),
            "not a number: the default"
        );
    }
}
