use super::*;
use proptest::prelude::*;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;

/// A document root `site/` with a secret file beside it (outside the root).
struct Fixture {
    dir: tempfile::TempDir,
    root: DocRoot,
    secret_ino: u64,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("docs/sub")).unwrap();
    std::fs::create_dir_all(site.join("empty")).unwrap();
    std::fs::create_dir_all(site.join(".git")).unwrap();
    std::fs::create_dir_all(site.join(".well-known")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(site.join("docs/index.htm"), "docs").unwrap();
    std::fs::write(site.join("docs/a b.txt"), "spaced").unwrap();
    std::fs::write(site.join("docs/sub/style.css"), "body{}").unwrap();
    std::fs::write(site.join(".git/config"), "secret too").unwrap();
    std::fs::write(site.join(".well-known/security.txt"), "contact").unwrap();
    std::fs::write(dir.path().join("secret"), "top secret").unwrap();
    std::fs::create_dir(dir.path().join("outside")).unwrap();
    std::fs::write(dir.path().join("outside/secret"), "top secret").unwrap();
    // Symlinks: one that stays inside, three that leave.
    symlink("docs/sub/style.css", site.join("inside-link.css")).unwrap();
    symlink("../secret", site.join("escape-link")).unwrap();
    symlink(dir.path().join("outside"), site.join("escape-dir")).unwrap();
    symlink("/etc/passwd", site.join("absolute-link")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        site.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let secret_ino = std::fs::metadata(dir.path().join("secret")).unwrap().ino();
    let root = DocRoot::open(&site, vec!["index.html".into(), "index.htm".into()]).unwrap();
    Fixture {
        dir,
        root,
        secret_ino,
    }
}

fn body(r: Result<Resolved, ResolveError>) -> String {
    match r {
        Ok(Resolved::File(mut f)) => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut f.file, &mut s).unwrap();
            s
        }
        other => panic!("expected a file, got {other:?}"),
    }
}

fn status(r: Result<Resolved, ResolveError>) -> u16 {
    match r {
        Ok(Resolved::File(f)) => panic!("served {:?}", f.rel),
        Ok(Resolved::Redirect(l)) => panic!("redirect to {l}"),
        Err(e) => e.status().as_u16(),
    }
}

#[test]
fn serves_files_and_index_files() {
    let f = fixture();
    assert_eq!(body(f.root.resolve("/")), "<h1>home</h1>");
    assert_eq!(body(f.root.resolve("/index.html")), "<h1>home</h1>");
    assert_eq!(
        body(f.root.resolve("/docs/")),
        "docs",
        "the second index name"
    );
    assert_eq!(body(f.root.resolve("/docs/a%20b.txt")), "spaced");
    assert_eq!(body(f.root.resolve("//docs/./sub//style.css")), "body{}");
    assert_eq!(body(f.root.resolve("/.well-known/security.txt")), "contact");
    match f.root.resolve("/docs/sub/style.css") {
        Ok(Resolved::File(file)) => {
            assert_eq!(file.meta.content_type, "text/css; charset=utf-8");
            assert_eq!(
                file.confinement,
                Confinement::Kernel,
                "openat2 is available here"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn directories_redirect_to_their_slash_form() {
    let f = fixture();
    match f.root.resolve("/docs") {
        Ok(Resolved::Redirect(l)) => assert_eq!(l, "/docs/"),
        other => panic!("{other:?}"),
    }
    match f.root.resolve("/docs/sub") {
        Ok(Resolved::Redirect(l)) => assert_eq!(l, "/docs/sub/"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        status(f.root.resolve("/empty/")),
        404,
        "no index, no listing"
    );
    assert_eq!(status(f.root.resolve("/index.html/")), 404);
    assert_eq!(status(f.root.resolve("/missing.html")), 404);
    assert_eq!(status(f.root.resolve("/index.html/x")), 404);
}

#[test]
fn dot_segments_are_refused() {
    let f = fixture();
    for p in [
        "/../secret",
        "/docs/../../secret",
        "/docs/..",
        "/%2e%2e/secret",
        "/%2E%2e/secret",
        "/.%2e/secret",
        "/%2e./secret",
        "/docs/%2e%2e/%2e%2e/secret",
    ] {
        assert_eq!(status(f.root.resolve(p)), 400, "{p}");
        assert_eq!(normalize(p), Err(PathError::DotDot), "{p}");
    }
}

#[test]
fn encoded_separators_backslashes_and_nul_are_refused() {
    let f = fixture();
    for (p, e) in [
        ("/..%2fsecret", PathError::Separator),
        ("/docs%2F..%2F..%2Fsecret", PathError::Separator),
        ("/..\\secret", PathError::Separator),
        ("/..%5csecret", PathError::Separator),
        ("/index.html%00.txt", PathError::ControlByte),
        ("/a%0d%0aSet-Cookie:x", PathError::ControlByte),
        ("/%zz", PathError::BadEscape),
        ("/%2", PathError::BadEscape),
        ("relative", PathError::NotAbsolute),
        ("", PathError::NotAbsolute),
    ] {
        assert_eq!(normalize(p), Err(e), "{p}");
        assert_eq!(status(f.root.resolve(p)), 400, "{p}");
    }
    // Double encoding is a literal name, never a traversal.
    assert_eq!(status(f.root.resolve("/%252e%252e/secret")), 404);
    let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
    assert_eq!(status(f.root.resolve(&long)), 414);
}

#[test]
fn hidden_files_are_not_served() {
    let f = fixture();
    assert_eq!(status(f.root.resolve("/.git/config")), 404);
    assert_eq!(status(f.root.resolve("/%2egit/config")), 404);
    assert_eq!(
        normalize("/.git/../x"),
        Err(PathError::DotDot),
        "traversal reported first"
    );
}

#[test]
fn symlinks_that_leave_the_root_are_refused() {
    let f = fixture();
    assert_eq!(body(f.root.resolve("/inside-link.css")), "body{}");
    assert_eq!(status(f.root.resolve("/escape-link")), 403);
    assert_eq!(status(f.root.resolve("/escape-dir/secret")), 403);
    assert_eq!(status(f.root.resolve("/absolute-link")), 403);
}

/// Found by the `static_path` fuzz target: a segment longer than NAME_MAX (255 bytes) made
/// `openat2` fail with ENAMETOOLONG, which was answered as an internal error (500).
#[test]
fn names_longer_than_the_file_system_allows_are_not_found() {
    let f = fixture();
    let long = format!("/{}", "a".repeat(300));
    assert_eq!(status(f.root.resolve(&long)), 404);
    assert_eq!(status(f.root.resolve(&format!("/docs{long}/x"))), 404);
}

#[test]
fn special_files_are_refused_without_blocking() {
    let f = fixture();
    // Opening a FIFO for reading would block until a writer comes; O_NONBLOCK avoids that.
    assert_eq!(status(f.root.resolve("/fifo")), 403);
}

#[test]
fn encode_path_round_trips() {
    let rel = normalize("/a%20b/%C3%A9/x%3Fy/").unwrap();
    let enc = encode_path(&rel);
    assert_eq!(enc, "/a%20b/%C3%A9/x%3Fy/");
    assert_eq!(normalize(&enc).unwrap(), rel);
    assert_eq!(encode_path(&normalize("/").unwrap()), "/");
}

#[test]
fn content_types() {
    assert_eq!(
        content_type(Path::new("a.html")),
        "text/html; charset=utf-8"
    );
    assert_eq!(
        content_type(Path::new("a.js")),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        content_type(Path::new("a.json")),
        "application/json; charset=utf-8"
    );
    assert_eq!(content_type(Path::new("a.png")), "image/png");
    assert_eq!(
        content_type(Path::new("a.unknownext")),
        "application/octet-stream"
    );
    assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
}

fn path_chars() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("/".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("%2e".to_string()),
        Just("%2E".to_string()),
        Just("%2f".to_string()),
        Just("%5c".to_string()),
        Just("%00".to_string()),
        Just("%".to_string()),
        Just("\\".to_string()),
        Just("secret".to_string()),
        Just("escape-link".to_string()),
        Just("escape-dir".to_string()),
        Just("docs".to_string()),
        Just("outside".to_string()),
        any::<char>().prop_map(|c| c.to_string()),
    ];
    proptest::collection::vec(pieces, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the bytes, a normalized path has only plain segments.
    #[test]
    fn normalize_yields_only_plain_segments(s in path_chars(), raw in any::<String>()) {
        for input in [format!("/{s}"), raw] {
            if let Ok(rel) = normalize(&input) {
                for seg in rel.segments() {
                    let b = seg.as_bytes();
                    prop_assert!(!b.is_empty() && b != b"." && b != b"..");
                    prop_assert!(!b.iter().any(|&c| c == b'/' || c == b'\\' || c < 0x20));
                }
                prop_assert!(rel.to_path().is_relative());
                prop_assert!(rel.to_path().components().all(|c| matches!(c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir)));
                prop_assert_eq!(normalize(&encode_path(&rel)).map(|r| r.segments().to_vec()),
                    Ok(rel.segments().to_vec()));
            }
        }
    }
}

#[test]
fn resolve_never_opens_a_file_outside_the_root() {
    let f = fixture();
    let canon_root = f.root.path().canonicalize().unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(1024));
    runner
        .run(&path_chars(), |s| {
            if let Ok(Resolved::File(file)) = f.root.resolve(&format!("/{s}")) {
                prop_assert_ne!(file.file.metadata().unwrap().ino(), f.secret_ino);
                let real = f
                    .root
                    .path()
                    .join(file.rel.to_path())
                    .canonicalize()
                    .unwrap();
                prop_assert!(real.starts_with(&canon_root), "{}", real.display());
            }
            Ok(())
        })
        .unwrap();
    assert!(f.dir.path().join("secret").exists());
}
