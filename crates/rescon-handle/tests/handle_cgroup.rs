//! Binding a holder's threads and process to a kernel-enforced container through its handle.
//! Runs for real as root with cgroups (CI sets `RESCON_REQUIRE_KERNEL=1`); skips otherwise.

mod common;

use common::{ROLE, reported, run_as, value};
use rescon::{Attributes, Registry};
use rescon_handle::owner::{Config, Owner};
use rescon_handle::{ErrorKind, Handle, pass};
use rescon_linux::cgroup::{self, Controller, LEAF, Manager};
use std::os::fd::AsFd;
use std::sync::Arc;

/// The cgroup of the calling thread in the cpu hierarchy (v1), from `/proc/thread-self`.
fn my_cpu_cgroup() -> String {
    let s = std::fs::read_to_string("/proc/thread-self/cgroup").unwrap();
    s.lines()
        .find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctl, path) = (it.next()?, it.next()?, it.next()?);
            ctl.split(',').any(|c| c == "cpu").then(|| path.to_string())
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "run as a child process by the other tests of this file"]
fn child() {
    if std::env::var(ROLE).as_deref() != Ok("bind") {
        return;
    }
    let h = Handle::from_env().unwrap().unwrap();
    let before = my_cpu_cgroup();
    let (thread_cg, main_cg_meanwhile) = std::thread::scope(|s| {
        s.spawn(|| {
            h.bind_current_thread().unwrap();
            (
                my_cpu_cgroup(),
                std::fs::read_to_string("/proc/self/cgroup").unwrap(),
            )
        })
        .join()
        .unwrap()
    });
    println!("report thread={thread_cg}");
    println!(
        "report main_moved={}",
        main_cg_meanwhile.contains(&thread_cg) && before != thread_cg
    );
    h.bind_process().unwrap();
    println!("report process={}", my_cpu_cgroup());
}

#[test]
fn without_cgroups_the_limiter_describes_and_refuses_binding() {
    let registry = Registry::new();
    let mut a = Attributes::default();
    a.set("cpu_limit", "30%").unwrap();
    a.set("enforcement", "kernel").unwrap();
    let cgi = registry.root().create_child("cgi", a).unwrap();
    let limiter =
        Arc::new(rescon_linux::usermode::Limiter::start(&registry, Default::default()).unwrap());
    let owner = Owner::with_enforcer(Config::default(), limiter).unwrap();
    let _server = owner.spawn("test-usermode-handles").unwrap();
    let h = Handle::from_fd(owner.issue(&cgi).unwrap()).unwrap();
    let said = h.info().unwrap().enforcement;
    // The attribute says kernel; what is in force is the user-mode limiter.
    assert!(said.starts_with("user-mode: cpu_limit user-mode"), "{said}");
    assert_eq!(
        h.bind_current_thread().unwrap_err().kind(),
        ErrorKind::NotEnforced
    );
}

#[test]
fn holders_bind_threads_and_processes_to_kernel_containers() {
    let required = std::env::var("RESCON_REQUIRE_KERNEL").is_ok_and(|v| v == "1");
    let config = cgroup::Config::default();
    if let Some(e) = Manager::probe(&config).error() {
        assert!(
            !required,
            "RESCON_REQUIRE_KERNEL=1 but cgroups are unavailable: {e}"
        );
        eprintln!("skipped: {e}");
        return;
    }
    let registry = Registry::new();
    let manager = Arc::new(Manager::new(&registry, config).unwrap());
    if manager
        .layout()
        .controller(Controller::Cpu)
        .map(|h| h.version())
        != Some(cgroup::Version::V1)
    {
        // Threads move between cgroups only in v1 hierarchies (or a threaded v2 subtree).
        assert!(
            !required,
            "this test expects the cpu controller in cgroup v1"
        );
        eprintln!("skipped: the cpu controller is not in cgroup v1");
        return;
    }
    let mut a = Attributes::default();
    a.set("enforcement", "kernel").unwrap();
    a.set("cpu_limit", "50%").unwrap();
    let pool = registry.root().create_child("fcgi-pool", a).unwrap();
    let plain = registry
        .root()
        .create_child("user-only", Attributes::default())
        .unwrap();
    let owner = Owner::with_enforcer(Config::default(), manager.clone()).unwrap();
    let server = owner.spawn("test-cgroup-handles").unwrap();

    // A container the owner does not enforce in the kernel: binding is refused, and said so.
    let h = Handle::from_fd(owner.issue(&plain).unwrap()).unwrap();
    assert_eq!(
        h.bind_current_thread().unwrap_err().kind(),
        ErrorKind::NotEnforced
    );
    assert!(
        h.info().unwrap().enforcement.starts_with("user:"),
        "{}",
        h.info().unwrap().enforcement
    );
    drop(h);

    let fd = owner.issue(&pool).unwrap();
    let said = Handle::from_fd(fd.try_clone().unwrap())
        .unwrap()
        .info()
        .unwrap()
        .enforcement;
    assert!(said.starts_with("kernel: cpu_limit kernel"), "{said}");
    let mut cmd = run_as("bind");
    pass::inherit(&mut cmd, fd.as_fd());
    let out = cmd.output().unwrap();
    drop(fd);
    assert!(out.status.success(), "{out:?}");
    let r = reported(&out.stdout);
    let leaf = manager
        .cgroup_dir(&pool, Controller::Cpu)
        .expect("mirrored when bound")
        .join(LEAF);
    for key in ["thread", "process"] {
        let cg = value(&r, key);
        let rel = cg.trim_start_matches('/');
        assert!(
            rel.ends_with(LEAF) && leaf.ends_with(rel),
            "{key} in {cg}, the container's leaf is {}",
            leaf.display()
        );
    }
    // Binding a thread moved that thread alone.
    assert_eq!(value(&r, "main_moved"), "false");
    drop(server);
    drop(owner);
    Arc::try_unwrap(manager)
        .expect("the owner let go of the manager")
        .shutdown()
        .unwrap();
}
