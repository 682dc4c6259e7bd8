//! `static_path` and `static_plan`: a request path resolved beneath a document root, and the
//! response decision for a file (conditional requests and ranges).
//!
//! `static_path` feeds the input as a request path to [`normalize`], then resolves it with
//! [`DocRoot::resolve`] in a real directory that has files, an index, a dotfile, and symbolic
//! links leading out of the root (relative, absolute, a loop). Properties:
//!
//! - a normalized path has no empty, `.` or `..` segment, no separator or control byte in a
//!   segment, no hidden segment but `.well-known`, and is relative; encoding it and
//!   normalizing again gives the same segments (unless encoding made it too long);
//! - a refusal maps to 400, 404 or 414; decoding never lengthens a path;
//! - whatever resolves is a file inside the root (never the secret file beside it, however
//!   reached); a redirect is to a path ending in `/` that normalizes;
//! - no request path makes resolution fail with an internal error (a 500).
//!
//! `static_plan`: the control byte picks the method and the file's length; the rest is
//! request header lines (`Name: value`). [`plan`] decides; properties:
//!
//! - 405 exactly for methods other than GET and HEAD; HEAD never has a body;
//! - 200: `Content-Length` is the file's length; 206: one range inside the file, with
//!   `Content-Length` and `Content-Range` that say so, and only for GET; 416:
//!   `Content-Range: bytes */len`; 304, 412 and 416 have no body;
//! - [`parse_range`] returns ranges inside the file, non-empty;
//! - a request [`is_plain`] says is plain gets the bare GET's (or HEAD's) answer.

use super::{control, text};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use rescon_httpd::static_files::{
    BodyPlan, DocRoot, FileMeta, MAX_PATH_BYTES, PathError, RangeSpec, ResolveError, Resolved,
    encode_path, is_plain, normalize, parse_range, percent_decode_strict, plan,
};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

/// The path target.
pub const PATH: crate::Target = crate::Target {
    name: "static_path",
    about: "a request path: normalized, then resolved beneath a document root with symlinks out",
    run: run_path,
    dictionary: &[
        b"/",
        b"//",
        b".",
        b"..",
        b"/../",
        b"%2e",
        b"%2E%2e",
        b"%2f",
        b"%2F",
        b"%5c",
        b"\\",
        b"%00",
        b"%0a",
        b"%",
        b"%%",
        b"%zz",
        b".well-known",
        b".hidden",
        b"index.html",
        b"sub/",
        b"up/",
        b"abs/",
        b"parent/",
        b"loop/",
        b"in/",
        b"file.txt",
        b"secret",
        b"%e2%80%ae",
        b"%ff",
    ],
};

/// The plan target.
pub const PLAN: crate::Target = crate::Target {
    name: "static_plan",
    about: "Range, If-Range and the conditional headers of a GET or HEAD of a file",
    run: run_plan,
    dictionary: &[
        b"\n",
        b"Range: ",
        b"Range: bytes=",
        b"bytes=",
        b"-",
        b",",
        b"If-Range: ",
        b"If-Match: ",
        b"If-None-Match: ",
        b"If-Modified-Since: ",
        b"If-Unmodified-Since: ",
        b"*",
        b"W/",
        ETAG.as_bytes(),
        LAST_MODIFIED.as_bytes(),
        b"Thu, 01 Jan 1970 00:00:00 GMT",
        b"Fri, 31 Dec 9999 23:59:59 GMT",
        b"\"",
    ],
};

/// The entity tag and date of the file the plan target decides for (with the first length
/// of [`LENGTHS`]), so that the corpus and the dictionary can match them.
const ETAG: &str = "\"1234-3e8-17979cfe53f76500\"";
const LAST_MODIFIED: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
const LENGTHS: [u64; 4] = [1000, 0, 1, 1 << 40];

fn run_path(data: &[u8]) {
    let path = text(data);
    if let Ok(decoded) = percent_decode_strict(data) {
        assert!(decoded.len() <= data.len());
    }
    match normalize(&path) {
        Ok(rel) => {
            assert!(path.starts_with('/') && path.len() <= MAX_PATH_BYTES);
            for seg in rel.segments() {
                let b = seg.as_encoded_bytes();
                assert!(!b.is_empty() && b != b"." && b != b"..", "segment {seg:?}");
                assert!(
                    !b.iter()
                        .any(|&c| c == b'/' || c == b'\\' || c < 0x20 || c == 0x7f),
                    "separator or control byte in {seg:?}"
                );
                assert!(
                    !b.starts_with(b".") || b == b".well-known",
                    "hidden {seg:?}"
                );
            }
            assert!(
                rel.to_path()
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
                "{:?} is not plainly relative",
                rel.to_path()
            );
            // Encoding can lengthen a path (a byte becomes `%XX`) past what is accepted;
            // within the limit it comes back the same (found by AFL++ on a 4 KB path).
            let encoded = encode_path(&rel);
            match normalize(&encoded) {
                Ok(again) => {
                    assert_eq!(
                        again.segments(),
                        rel.segments(),
                        "encode/normalize round trip"
                    );
                    if !rel.segments().is_empty() {
                        assert_eq!(again.trailing_slash(), rel.trailing_slash());
                    }
                }
                Err(e) => assert!(
                    e == PathError::TooLong && encoded.len() > MAX_PATH_BYTES,
                    "{encoded:?} does not normalize: {e:?}"
                ),
            }
        }
        Err(e) => {
            assert!(matches!(e.status().as_u16(), 400 | 404 | 414), "{e:?}");
            assert_eq!(e == PathError::TooLong, path.len() > MAX_PATH_BYTES);
        }
    }
    resolve(&path);
}

/// A document root with what a path might try to reach.
struct Root {
    root: DocRoot,
    secret_ino: u64,
}

/// The root, made once per user in the temporary directory and shared by every process that
/// fuzzes (a fuzzer starts many, and a directory per process would pile up): built in a
/// directory of its own, then renamed into place, so that it is complete or absent.
fn root() -> &'static Root {
    static ROOT: OnceLock<Root> = OnceLock::new();
    ROOT.get_or_init(|| {
        let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
        let base = std::env::temp_dir().join(format!("rescon-fuzz-{uid}"));
        let d = base.join("static-root-v1");
        if !d.join("htdocs").is_dir() {
            std::fs::create_dir_all(&base).expect("a directory for the fuzz fixture");
            let tmp = tempfile::Builder::new()
                .prefix("building-")
                .tempdir_in(&base)
                .expect("a temporary directory");
            build(tmp.path(), &d);
            if std::fs::rename(tmp.path(), &d).is_ok() {
                let _ = tmp.keep();
            } // else another process put its copy there first; this one is removed.
        }
        let secret_ino = std::fs::metadata(d.join("secret")).unwrap().ino();
        let root = DocRoot::open(&d.join("htdocs"), vec!["index.html".into()]).unwrap();
        Root { root, secret_ino }
    })
}

/// Writes the fixture into `at`, its absolute symbolic link pointing to where it will be,
/// `final_dir`.
fn build(at: &Path, final_dir: &Path) {
    let htdocs = at.join("htdocs");
    std::fs::create_dir_all(htdocs.join("sub/.well-known")).unwrap();
    std::fs::write(at.join("secret"), "the secret beside the root").unwrap();
    std::fs::write(htdocs.join("index.html"), "<h1>index</h1>").unwrap();
    std::fs::write(htdocs.join("file.txt"), "a file").unwrap();
    std::fs::write(htdocs.join(".hidden"), "a dotfile").unwrap();
    std::fs::write(htdocs.join("sub/index.html"), "sub index").unwrap();
    std::fs::write(htdocs.join("sub/.well-known/x"), "well known").unwrap();
    let link = |to: &Path, name: &str| std::os::unix::fs::symlink(to, htdocs.join(name));
    link(Path::new("../secret"), "up").unwrap();
    link(&final_dir.join("secret"), "abs").unwrap();
    link(Path::new(".."), "parent").unwrap();
    link(Path::new("loop"), "loop").unwrap();
    link(Path::new("sub"), "in").unwrap();
}

fn resolve(path: &str) {
    let r = root();
    match r.root.resolve(path) {
        Ok(Resolved::File(f)) => {
            let md = f.file.metadata().unwrap();
            assert!(md.is_file());
            assert_ne!(
                md.ino(),
                r.secret_ino,
                "{path:?} reached the secret outside the root"
            );
        }
        Ok(Resolved::Redirect(loc)) => {
            assert!(
                loc.starts_with('/') && loc.ends_with('/'),
                "redirect to {loc:?}"
            );
            assert!(
                normalize(&loc).is_ok(),
                "redirect to {loc:?} does not normalize"
            );
        }
        Err(ResolveError::Io(e)) => {
            panic!("{path:?}: internal error {e} (kind {:?})", e.kind())
        }
        Err(e) => assert!(matches!(e.status().as_u16(), 400 | 403 | 404 | 414), "{e}"),
    }
}

fn run_plan(data: &[u8]) {
    let Some((ctl, rest)) = control(data) else {
        return;
    };
    let method = match ctl & 3 {
        0 | 3 => Method::GET,
        1 => Method::HEAD,
        _ => Method::POST,
    };
    let len = LENGTHS[usize::from((ctl >> 2) & 3)];
    let mut req = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            req.append(n, v);
        }
    }
    let meta = FileMeta {
        len,
        modified: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000)),
        inode: 0x1234,
        content_type: HeaderValue::from_static("text/plain"),
    };
    for v in req.get_all(header::RANGE) {
        if let Ok(s) = v.to_str() {
            if let RangeSpec::One(start, end) = parse_range(s, len) {
                assert!(start < end && end <= len, "{s:?} on {len}: {start}..{end}");
            }
        }
    }
    let p = plan(&method, &req, &meta);
    let cl = |h: &HeaderMap| {
        h.get(header::CONTENT_LENGTH)
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
    };
    let get_or_head = method == Method::GET || method == Method::HEAD;
    assert_eq!(p.status == StatusCode::METHOD_NOT_ALLOWED, !get_or_head);
    if method == Method::HEAD {
        assert_eq!(p.body, BodyPlan::Empty);
    }
    match p.status.as_u16() {
        200 => {
            assert_eq!(cl(&p.headers), Some(len));
            let want = if method == Method::GET {
                BodyPlan::Full
            } else {
                BodyPlan::Empty
            };
            assert_eq!(p.body, want);
        }
        206 => {
            assert_eq!(method, Method::GET);
            let BodyPlan::Range { start, end } = p.body else {
                panic!("206 with {:?}", p.body);
            };
            assert!(start < end && end <= len, "{start}..{end} of {len}");
            assert_eq!(cl(&p.headers), Some(end - start));
            assert_eq!(
                p.headers[header::CONTENT_RANGE],
                format!("bytes {start}-{}/{len}", end - 1).as_str()
            );
            let first = req[header::RANGE].to_str().unwrap();
            assert_eq!(parse_range(first, len), RangeSpec::One(start, end));
        }
        416 => {
            assert_eq!(method, Method::GET);
            assert_eq!(
                p.headers[header::CONTENT_RANGE],
                format!("bytes */{len}").as_str()
            );
            assert_eq!(p.body, BodyPlan::Empty);
        }
        304 | 412 | 405 => assert_eq!(p.body, BodyPlan::Empty),
        s => panic!("status {s}"),
    }
    if is_plain(&method, &req) {
        let bare = plan(&method, &HeaderMap::new(), &meta);
        assert_eq!(p, bare, "a plain request is answered as a bare one");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_names_the_files_validators() {
        let meta = FileMeta {
            len: LENGTHS[0],
            modified: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000)),
            inode: 0x1234,
            content_type: HeaderValue::from_static("text/plain"),
        };
        assert_eq!(meta.etag(), ETAG);
        let p = plan(&Method::GET, &HeaderMap::new(), &meta);
        assert_eq!(p.headers[header::LAST_MODIFIED], LAST_MODIFIED);
    }
}
