//! `rctl completions SHELL`: the scripts are produced from the parser's definition, name every
//! command, and are accepted by the shells themselves where they are installed (`bash -n`,
//! `zsh -n`, `fish --no-execute`).

use clap::Parser;
use std::process::Command;

fn completions(shell: &str) -> String {
    let args = rctl::cli::Args::try_parse_from(["rctl", "completions", shell]).unwrap();
    let mut out = Vec::new();
    rctl::cli::run(&args, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Checks `script` with `shell`'s syntax check; `false` when the shell is not installed.
fn syntax_ok(shell: &str, check: &[&str], script: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("rctl.{shell}"));
    std::fs::write(&file, script).unwrap();
    let out = match Command::new(shell).args(check).arg(&file).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(e) => panic!("running {shell}: {e}"),
    };
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{shell} {check:?} refused the script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[test]
fn completion_scripts_name_every_command_and_parse() {
    let commands = [
        "tree",
        "show",
        "set",
        "filters",
        "block",
        "unblock",
        "move",
        "reload",
        "metrics",
        "top",
        "completions",
    ];
    let bash = completions("bash");
    assert!(bash.contains("complete -F _rctl"), "{bash}");
    for c in commands {
        assert!(bash.contains(c), "{c} missing from the bash script");
    }
    assert!(bash.contains("--batch") && bash.contains("--socket"));
    assert!(
        syntax_ok("bash", &["-n"], &bash),
        "bash is installed everywhere this runs"
    );
    let zsh = completions("zsh");
    assert!(zsh.starts_with("#compdef rctl"), "{zsh}");
    for c in commands {
        assert!(zsh.contains(c), "{c} missing from the zsh script");
    }
    if !syntax_ok("zsh", &["-n"], &zsh) {
        eprintln!("zsh not installed: its script's syntax is not checked");
    }
    let fish = completions("fish");
    assert!(fish.contains("complete -c rctl"), "{fish}");
    for c in commands {
        assert!(fish.contains(c), "{c} missing from the fish script");
    }
    if !syntax_ok("fish", &["--no-execute"], &fish) {
        eprintln!("fish not installed: its script's syntax is not checked");
    }
    // An unknown shell is refused by the parser, naming the ones there are.
    let e = rctl::cli::Args::try_parse_from(["rctl", "completions", "tcsh"]).unwrap_err();
    assert!(e.to_string().contains("bash"), "{e}");
}
