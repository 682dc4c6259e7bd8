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

#[test]
fn serving_is_not_pretended() {
    let runtime = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rescon-httpd"))
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .unwrap();
    let (code, out, err) = (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
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
        out.contains(&format!(
            "socket = \"{}/rescon-httpd/admin.sock\"",
            runtime.path().display()
        )),
        "{out}"
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("[[vhost]]"),
        "the effective configuration is printed"
    );
    assert!(err.contains("needs the rescon-rt runtime"), "{err}");
}
