//! The shipped systemd units (`deploy/`) pass `systemd-analyze verify` with no diagnostic at
//! all (an unknown key is only a warning to systemd; here it fails). `ExecStart=` is pointed
//! at the built binary, since `verify` checks that the program exists.

use std::process::Command;

#[test]
fn the_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("RESCON_REQUIRE_KERNEL").is_none_or(|v| v != "1"),
            "RESCON_REQUIRE_KERNEL=1 but systemd-analyze is missing (apt-get install systemd)"
        );
        eprintln!("skipped: no systemd-analyze");
        return;
    }
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(deploy.join("rescon-httpd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/rescon-httpd "));
    for want in [
        "Type=notify",
        "Delegate=yes",
        "KillSignal=SIGQUIT",
        "LimitNOFILE=",
    ] {
        assert!(unit.contains(want), "{want} not in the unit");
    }
    std::fs::write(
        dir.path().join("rescon-httpd.service"),
        unit.replace(
            "/usr/local/bin/rescon-httpd",
            env!("CARGO_BIN_EXE_rescon-httpd"),
        ),
    )
    .unwrap();
    std::fs::copy(
        deploy.join("rescon-httpd.socket"),
        dir.path().join("rescon-httpd.socket"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .current_dir(dir.path())
        .args(["verify", "./rescon-httpd.service", "./rescon-httpd.socket"])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

fn deploy() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// The sysusers file (named by the error for an unknown `[server] user`) makes the user and
/// its group, as `systemd-sysusers` applies it to an empty root.
#[test]
fn the_sysusers_file_makes_the_user() {
    if Command::new("systemd-sysusers")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("RESCON_REQUIRE_KERNEL").is_none_or(|v| v != "1"),
            "RESCON_REQUIRE_KERNEL=1 but systemd-sysusers is missing (apt-get install systemd)"
        );
        eprintln!("skipped: no systemd-sysusers");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let file = deploy().join("rescon-httpd.sysusers.conf");
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(file.canonicalize().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("rescon:"))
        .unwrap_or_else(|| panic!("no rescon user in {passwd}"));
    assert!(user.ends_with(":/usr/sbin/nologin"), "{user}");
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("rescon:")), "{group}");
}

/// The container recipe (no image is built here: CI has no container engine) hangs
/// together: the files it copies exist, the configuration it installs is the one its
/// entrypoint names and passes `--check-config`, it stops with SIGQUIT, and its build
/// context leaves out `target/`.
#[test]
fn the_dockerfile_copies_what_exists_and_its_configuration_is_valid() {
    let d = deploy();
    let text = std::fs::read_to_string(d.join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert!(lines[0].starts_with("FROM ") && lines[0].ends_with(" AS build"));
    let mut installed = None;
    for l in &lines {
        let Some(rest) = l.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from=") {
            continue;
        }
        let parts: Vec<&str> = rest.split_whitespace().collect();
        let (dest, srcs) = parts.split_last().unwrap();
        for s in srcs {
            let p = d.join("..").join(s);
            assert!(p.exists(), "COPY {s}: {} does not exist", p.display());
        }
        if srcs == ["deploy/container.toml"] {
            installed = Some(dest.to_string());
        }
    }
    let installed = installed.expect("the image installs deploy/container.toml");
    let entry = lines
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    assert!(
        entry.contains(&format!("\"--config\", \"{installed}\"")),
        "{entry}"
    );
    assert!(lines.contains(&"STOPSIGNAL SIGQUIT"));
    assert!(
        text.contains("useradd --system") && text.contains("--unpack-demo /srv/rescon"),
        "the user and the site the configuration names"
    );
    let conf = std::fs::read_to_string(d.join("container.toml")).unwrap();
    assert!(conf.contains("user = \"rescon\"") && conf.contains("/srv/rescon/htdocs"));
    let out = Command::new(env!("CARGO_BIN_EXE_rescon-httpd"))
        .arg("--check-config")
        .arg("--config")
        .arg(d.join("container.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ignore = std::fs::read_to_string(d.join("Dockerfile.dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "{ignore}");
}
