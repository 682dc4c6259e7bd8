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
