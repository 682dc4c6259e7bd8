//! The `rescon-httpd` binary's configuration commands.

use std::process::Command;

fn httpd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rescon-httpd"))
        .args(args)
        .output()
        .expect("run rescon-httpd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn check_config_prints_the_effective_default() {
    let (code, out, err) = httpd(&["--check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[server]\nenforcement = \"auto\""), "{out}");
    assert!(
        out.contains("[containers.cgi]\nclass = \"normal\""),
        "{out}"
    );
    assert!(out.contains("cpu_limit = \"0.3\""), "{out}");
    assert!(out.contains("port = 8080"), "{out}");
    assert!(
        err.contains("<embedded default>: configuration ok"),
        "{err}"
    );
}

#[test]
fn a_bad_file_names_file_line_key_and_allowed_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nenforcement = \"kernal\"\n\n[containers.cgi]\ncpu_limit = \"300%\"\npriority = 5000\n",
    )
    .unwrap();
    let (code, out, err) = httpd(&["--check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(out.is_empty(), "nothing printed on stdout: {out}");
    let file = path.display().to_string();
    assert!(
        err.contains(&format!(
            "{file}:2:15: server.enforcement: invalid value \"kernal\"; allowed: user, kernel, auto"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:6:12: containers.cgi.priority")),
        "{err}"
    );
    assert!(err.contains("2 problems in the configuration"), "{err}");
    assert!(err.contains("nothing was started"), "{err}");
}

#[test]
fn a_missing_file_is_an_error() {
    let (code, _, err) = httpd(&["--check-config", "--config", "/nonexistent/rescon.toml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/rescon.toml: cannot read the configuration file"),
        "{err}"
    );
}

#[test]
fn the_printed_default_checks_and_the_demo_unpacks() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text, _) = httpd(&["--print-default-config"]);
    assert_eq!(code, 0);
    let cfg = dir.path().join("httpd.toml");
    std::fs::write(
        &cfg,
        text.replace("{demo}", dir.path().join("site").to_str().unwrap()),
    )
    .unwrap();
    let (code, _, err) = httpd(&["--unpack-demo", dir.path().join("site").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(dir.path().join("site/cgi-bin/hello.sh").exists());
    let (code, out, err) = httpd(&["--check-config", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("root = \"{}/site/htdocs\"", dir.path().display())),
        "{out}"
    );
}

/// The quick start's main job: no arguments serves the embedded default configuration (the demo
/// site on 127.0.0.1:8080, admin socket under `$XDG_RUNTIME_DIR`) until SIGTERM.
#[test]
fn no_arguments_serves_the_demo_until_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    if std::net::TcpListener::bind("127.0.0.1:8080").is_err() {
        eprintln!("skipped: 127.0.0.1:8080 (the default configuration's port) is in use");
        return;
    }
    let runtime = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rescon-httpd"))
        .env("XDG_RUNTIME_DIR", runtime.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop it whatever happens below.
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    let _stop = Stop(child.id());
    // The address is a diagnostic, on standard error: standard output is the access log's.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let addr = loop {
        let line = lines.next().expect("the server said its address").unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if let Some(i) = line.find("listening on ") {
            let rest = &line[i + "listening on ".len()..];
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    assert_eq!(addr, "127.0.0.1:8080");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
        "{resp}"
    );
    assert!(
        runtime
            .path()
            .join("rescon-httpd")
            .read_dir()
            .unwrap()
            .next()
            .is_some(),
        "the demo was unpacked"
    );
    assert!(
        runtime.path().join("rescon-httpd/admin.sock").exists(),
        "the admin socket is where the default configuration says"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut err = seen;
    for l in lines.map_while(Result::ok) {
        err.push_str(&l);
        err.push('\n');
    }
    assert!(status.success(), "SIGTERM is a clean stop: {status}\n{err}");
    assert!(
        err.contains(" INFO ") && err.contains("configuration "),
        "{err}"
    );
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        !out.contains("listening on"),
        "standard output is the access log's: {out}"
    );
}
