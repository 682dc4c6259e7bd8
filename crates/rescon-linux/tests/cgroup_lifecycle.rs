//! The subtree's life: made on start, stale subtrees of dead instances removed, configured
//! names locked, everything removed on shutdown, even when a test panics; the probe, and the
//! errors without permission.

mod common;

use common::*;
use rescon::Registry;
use rescon_linux::cgroup::{Config, ErrorKind, Manager, Start};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

#[test]
fn shutdown_leaves_no_cgroup_and_no_process() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "shutdown_leaves_no_cgroup_and_no_process") else {
        return;
    };
    let a = kernel_child(&registry.root(), "a", &[]);
    let b = kernel_child(&a, "b", &[("cpu_limit", "50%")]);
    let mut ca = m.command(&a, "sleep").arg("30").spawn().unwrap();
    let cb = m.command(&b, "sleep").arg("30").spawn().unwrap();
    let pb = cb.id() as i32;
    drop(cb);
    let dirs = m.subtree_dirs();
    assert!(dirs.iter().all(|d| d.exists()));
    assert!(
        m.cgroup_dirs(&b)
            .iter()
            .all(|d| d.starts_with(dirs.iter().find(|r| d.starts_with(r)).unwrap()))
    );
    m.shutdown().unwrap();
    for d in &dirs {
        assert!(!d.exists(), "{} is left", d.display());
    }
    assert!(!ca.wait().unwrap().status.success());
    assert!(!alive(pb));
    // Calls after shutdown say so.
    assert_eq!(m.attach(&a).unwrap_err().kind(), ErrorKind::ShutDown);
    assert_eq!(
        m.command(&a, "true").spawn().unwrap_err().kind(),
        ErrorKind::ShutDown
    );
    m.shutdown().unwrap();
}

/// A test that panics inside the manager's scope leaves nothing behind: the manager's Drop
/// runs during unwinding.
#[test]
fn panic_inside_the_guard_scope_leaves_nothing() {
    let registry = Registry::new();
    if manager(&registry, "panic_inside_the_guard_scope_leaves_nothing").is_none() {
        return;
    }
    let seen: Mutex<(Vec<PathBuf>, i32)> = Mutex::new((Vec::new(), 0));
    let r = std::panic::catch_unwind(|| {
        let m = Manager::new(&registry, config()).unwrap();
        let c = kernel_child(&registry.root(), "doomed", &[]);
        let child = m.command(&c, "sleep").arg("30").spawn().unwrap();
        let mut s = seen.lock().unwrap();
        s.0 = m.subtree_dirs();
        s.1 = child.id() as i32;
        drop(s);
        std::mem::forget(child);
        panic!("deliberate failure inside the guard scope");
    });
    assert!(r.is_err());
    let (dirs, pid) = seen.into_inner().unwrap();
    assert!(!dirs.is_empty());
    for d in &dirs {
        assert!(!d.exists(), "{} survived the panic", d.display());
    }
    // The forgotten child was killed by the shutdown (it stays a zombie of this process).
    assert!(
        wait_until(Duration::from_secs(2), || !alive(pid)),
        "child {pid} survived"
    );
}

/// Subtrees whose owner is dead are removed on start, with what is inside them; a subtree
/// whose owner lives is left alone.
#[test]
fn stale_subtrees_of_dead_instances_are_removed() {
    let registry = Registry::new();
    let prefix = "rescontest";
    let cfg = Config {
        prefix: prefix.into(),
        ..config()
    };
    let Some(first) = manager_with(&registry, "stale_subtrees", cfg.clone()) else {
        return;
    };
    // Where our subtree is made, make a dead instance's (pid 1 never started at that time)
    // with a child cgroup, and a live one (this process, another counter).
    let parents: Vec<PathBuf> = first
        .subtree_dirs()
        .iter()
        .map(|d| d.parent().unwrap().to_path_buf())
        .collect();
    let live_name = {
        let n = first.name();
        let mut parts: Vec<&str> = n.rsplitn(2, '-').collect();
        parts[0] = "999999";
        format!("{}-{}", parts[1], parts[0])
    };
    drop(first);
    let dead_name = format!("{prefix}-1-999999999999-{}", std::process::id());
    for p in &parents {
        std::fs::create_dir(p.join(&dead_name)).unwrap();
        std::fs::create_dir(p.join(&dead_name).join("c1-x")).unwrap();
        std::fs::create_dir(p.join(&live_name)).unwrap();
    }
    let m = Manager::new(&registry, cfg).unwrap();
    for p in &parents {
        assert!(
            !p.join(&dead_name).exists(),
            "stale {} is left",
            p.display()
        );
        assert!(
            p.join(&live_name).exists(),
            "a live instance's subtree was removed"
        );
        std::fs::remove_dir(p.join(&live_name)).unwrap();
    }
    drop(m);
}

/// A configured name is held by one live instance at a time; one left by a dead instance is
/// taken over.
#[test]
fn configured_names_are_locked() {
    let registry = Registry::new();
    let name = format!("rescon-locked-{}", std::process::id());
    let cfg = Config {
        name: Some(name.clone()),
        ..config()
    };
    let Some(a) = manager_with(&registry, "configured_names_are_locked", cfg.clone()) else {
        return;
    };
    assert_eq!(a.name(), name);
    let e = Manager::new(&registry, cfg.clone()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InUse, "{e}");
    assert!(e.to_string().contains(&name), "{e}");
    let dirs = a.subtree_dirs();
    drop(a);
    // A dead instance's leftovers, with a child cgroup.
    for d in &dirs {
        std::fs::create_dir(d).unwrap();
        std::fs::create_dir(d.join("c9-old")).unwrap();
    }
    let b = Manager::new(&registry, cfg).unwrap();
    for d in &dirs {
        assert!(d.exists() && !d.join("c9-old").exists());
    }
    drop(b);
    assert!(dirs.iter().all(|d| !d.exists()));
}

#[test]
fn probe_and_start() {
    let registry = Registry::new();
    let cfg = config();
    let probe = Manager::probe(&cfg);
    if let Some(e) = probe.error() {
        assert!(!required(), "RESCON_REQUIRE_KERNEL=1 but: {e}");
        eprintln!("probe_and_start: skipped: {e}");
        return;
    }
    assert!(probe.available());
    assert!(
        probe
            .layout()
            .unwrap()
            .controller(rescon_linux::cgroup::Controller::Cpu)
            .is_some()
    );
    match Manager::start(&registry, cfg, true).unwrap() {
        Start::Kernel(m) => m.shutdown().unwrap(),
        Start::UserOnly(e) => panic!("probe said available: {e}"),
    }
    // A root where nothing is mounted: unavailable, and start falls back unless required.
    let tmp = tempfile::tempdir().unwrap();
    let bad = Config {
        cgroupfs_root: tmp.path().join("nothing"),
        ..Config::default()
    };
    let p = Manager::probe(&bad);
    let e = p.error().expect("unavailable");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("nothing"), "names the path: {e}");
    assert!(matches!(
        Manager::start(&registry, bad.clone(), false).unwrap(),
        Start::UserOnly(_)
    ));
    assert!(Manager::start(&registry, bad, true).is_err());
}

/// Without permission, every call fails with the path refused and how to get permission.
/// Runs itself again as the user nobody (with setpriv).
#[test]
fn permission_errors_name_the_path_and_the_remedy() {
    const ROLE: &str = "RESCON_PERMISSION_CHILD";
    if std::env::var_os(ROLE).is_some() {
        // The unprivileged child.
        let registry = Registry::new();
        let probe = Manager::probe(&Config::default());
        let e = probe.error().expect("nobody may not make cgroups");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        let msg = e.to_string();
        assert!(msg.contains("/sys/fs/cgroup"), "{msg}");
        assert!(
            msg.contains("Delegate=yes") && msg.contains("enforcement = \"user\""),
            "{msg}"
        );
        let e = Manager::new(&registry, Config::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        match Manager::start(&registry, Config::default(), false).unwrap() {
            Start::UserOnly(e) => println!("FALLBACK: {e}"),
            Start::Kernel(_) => panic!("nobody got kernel enforcement"),
        }
        return;
    }
    let registry = Registry::new();
    if manager(&registry, "permission_errors").is_none() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&exe)
        .args([
            "--exact",
            "permission_errors_name_the_path_and_the_remedy",
            "--nocapture",
        ])
        .env(ROLE, "1")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            eprintln!("permission_errors: skipped: cannot run setpriv: {e}");
            return;
        }
    };
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("Permission denied") && !text.contains("running 1 test") {
        eprintln!(
            "permission_errors: skipped: nobody cannot execute {}",
            exe.display()
        );
        return;
    }
    assert!(out.status.success(), "unprivileged run failed:\n{text}");
    assert!(text.contains("FALLBACK: cgroup:"), "{text}");
}
