//! Processes capped without cgroups: real CPU-burning children held near their container's
//! limit by the user-mode limiter (checked loosely: the controller's accuracy is tested on fake
//! samples in `usermode::control`), `max_processes` enforced at spawn, descriptors inherited,
//! and the enforcement reported as it is.

mod common;

use common::{BUSY, wait_until};
use rescon::{Attributes, Container, Registry};
use rescon_linux::cgroup::{Command, ErrorKind, Stdio, parse};
use rescon_linux::enforcement::{self, Mechanism};
use rescon_linux::usermode::{Config, Limiter, Target};
use std::io::Read;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Kills a busy child's whole process group when dropped, so that a failing assertion does not
/// leave busy loops running (stopped or not) after the test.
struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        // SAFETY: kill takes plain integers; the group is the child's own (it leads it).
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

fn container(registry: &Registry, pairs: &[(&str, &str)]) -> Container {
    let mut a = Attributes::default();
    for (k, v) in pairs {
        a.set(k, v).unwrap();
    }
    registry.root().create_child("cgi", a).unwrap()
}

fn stat(pid: i32) -> Option<parse::ProcStat> {
    parse::proc_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).ok()
}

/// CPU seconds of a process and its descendants (live ones), from /proc.
fn tree_cpu_secs(root: i32) -> f64 {
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Some(p) = e
            .file_name()
            .to_str()
            .and_then(|n| n.parse().ok())
            .and_then(stat)
        {
            all.push(p);
        }
    }
    let mut total = 0;
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for p in all.iter().filter(|p| p.pid == pid) {
            total += p.utime + p.stime;
        }
        stack.extend(all.iter().filter(|p| p.ppid == pid).map(|p| p.pid));
    }
    total as f64 / 100.0
}

/// The share of one CPU a process tree got over `wall`.
fn share_over(root: i32, wall: Duration) -> f64 {
    let c0 = tree_cpu_secs(root);
    let t0 = Instant::now();
    std::thread::sleep(wall);
    let c1 = tree_cpu_secs(root);
    (c1 - c0) / t0.elapsed().as_secs_f64()
}

#[test]
fn a_busy_process_group_is_held_near_its_cap() {
    let registry = Registry::new();
    // A cap well below what a busy loop gets even on a loaded machine (a CI runner with every
    // core taken still gives it more than 5%), so that the limiter must act whatever the load.
    let cgi = container(&registry, &[("cpu_limit", "5%")]);
    let limiter = Limiter::start(&registry, Config::default()).unwrap();
    let mut child = Command::without_cgroups(&cgi, "/bin/sh")
        .args(["-c", BUSY])
        .stdin(Stdio::Null)
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let _kill = KillGroup(pid);
    assert_eq!(
        stat(pid).unwrap().pgrp,
        pid,
        "the child leads its own group"
    );
    let capped = limiter.cap(Target::ProcessGroup(pid), &cgi).unwrap();
    // Let the first budget go, then measure.
    std::thread::sleep(Duration::from_millis(300));
    let share = share_over(pid, Duration::from_secs(2));
    eprintln!(
        "capped at 5%: got {share:.3} of a CPU; {:?}",
        limiter.stats()
    );
    // Loose: the controller's accuracy is tested deterministically; here, that it holds.
    assert!(
        share < 0.15,
        "a busy loop capped at 5% got {share:.3} of a CPU"
    );
    assert!(share > 0.005, "the capped process hardly ran: {share:.3}");
    // The limiter refuses to cap what holds itself.
    let own_group = stat(std::process::id() as i32).unwrap().pgrp;
    assert!(limiter.cap(Target::ProcessGroup(own_group), &cgi).is_err());
    assert!(
        limiter.cap(Target::Tree(1), &cgi).is_err(),
        "init's tree holds us"
    );
    assert!(
        limiter.stats().stops > 0,
        "the limiter never stopped a busy loop capped at 5%: {:?}",
        limiter.stats()
    );
    assert!(cgi.usage().throttled_ns > 0, "stopped time is reported");

    // The cap ends with its guard: the process is continued and runs free.
    drop(capped);
    assert!(wait_until(Duration::from_secs(2), || stat(pid)
        .is_some_and(|p| p.state != 'T')));
    assert_eq!(limiter.stats().targets, 0);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_process_tree_shares_one_cap() {
    let registry = Registry::new();
    let cgi = container(&registry, &[("cpu_limit", "20%")]);
    let limiter = Limiter::start(
        &registry,
        Config {
            rescan: Duration::from_millis(50),
            ..Config::default()
        },
    )
    .unwrap();
    // Two busy children of a shell: up to two CPUs uncapped.
    let script = format!("/bin/sh -c '{BUSY}' & /bin/sh -c '{BUSY}' & wait");
    let mut child = Command::without_cgroups(&cgi, "/bin/sh")
        .args(["-c", &script])
        .stdin(Stdio::Null)
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let _kill = KillGroup(pid);
    let _capped = limiter.cap(Target::Tree(pid), &cgi).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let share = share_over(pid, Duration::from_secs(2));
    eprintln!("two busy processes capped at 20%: got {share:.3} of a CPU");
    assert!(
        share < 0.35,
        "got {share:.3}; limiter {:?}; tree {:?}",
        limiter.stats(),
        std::process::Command::new("ps")
            .args([
                "-o",
                "pid,ppid,pgid,stat,etime,args",
                "-g",
                &pid.to_string()
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    );
    // Killing the group (the shell leads it) ends them all, stopped or not.
    // SAFETY: kill takes plain integers; the group is the child's own (it leads it).
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    child.wait().unwrap();
}

#[test]
fn max_processes_is_enforced_at_spawn() {
    let registry = Registry::new();
    let cgi = container(&registry, &[("max_processes", "1")]);
    let mut first = Command::without_cgroups(&cgi, "/bin/sleep")
        .arg("0.3")
        .spawn()
        .unwrap();
    let e = Command::without_cgroups(&cgi, "/bin/true")
        .spawn()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Limit, "{e}");
    assert_eq!(cgi.usage().processes, 1);
    first.wait().unwrap();
    assert_eq!(cgi.usage().processes, 0);
    // A child dropped without waiting keeps its slot until it exits.
    let dropped = Command::without_cgroups(&cgi, "/bin/sleep")
        .arg("0.2")
        .spawn()
        .unwrap();
    drop(dropped);
    assert_eq!(
        Command::without_cgroups(&cgi, "/bin/true")
            .spawn()
            .unwrap_err()
            .kind(),
        ErrorKind::Limit
    );
    assert!(wait_until(Duration::from_secs(5), || cgi.usage().processes == 0));
    let mut last = Command::without_cgroups(&cgi, "/bin/true").spawn().unwrap();
    assert!(last.wait().unwrap().status.success());
    assert_eq!(cgi.usage().procs_spawned, 3);
}

#[test]
fn a_descriptor_is_inherited_only_when_asked() {
    let registry = Registry::new();
    let cgi = container(&registry, &[]);
    let (mut r, w) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut cmd = Command::without_cgroups(&cgi, "/bin/sh");
    let n = cmd.inherit_fd(w.as_fd()).unwrap();
    assert!(n > 2);
    let mut child = cmd
        .args(["-c", &format!("echo through-{n} >&{n}")])
        .spawn()
        .unwrap();
    drop(w);
    assert!(child.wait().unwrap().status.success());
    drop(cmd);
    let mut out = String::new();
    r.read_to_string(&mut out).unwrap();
    assert_eq!(out.trim(), format!("through-{n}"));

    // Without asking, the same number is closed in the child.
    let (_r2, w2) = std::os::unix::net::UnixStream::pair().unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&w2);
    let mut child = Command::without_cgroups(&cgi, "/bin/sh")
        .args(["-c", &format!("echo x >&{raw}")])
        .stderr(Stdio::Null)
        .spawn()
        .unwrap();
    assert!(!child.wait().unwrap().status.success());
}

#[test]
fn the_report_names_the_kernel_only_with_cgroups() {
    let registry = Registry::new();
    let cgi = container(
        &registry,
        &[
            ("cpu_limit", "30%"),
            ("max_processes", "8"),
            ("max_memory", "64MiB"),
            ("enforcement", "kernel"),
        ],
    );
    // No cgroups, no limiter: nothing claims the kernel, the CPU cap holds in-process only.
    let r = enforcement::report(&cgi, None, None);
    assert_eq!(
        (r.summary, &r.cpu_limit, &r.max_processes),
        ("user", &Mechanism::InProcessOnly, &Mechanism::AtSpawn)
    );
    let Some(m) = common::manager(&registry, "the_report_names_the_kernel_only_with_cgroups")
    else {
        return;
    };
    let r = enforcement::report(&cgi, Some(&m), None);
    assert_eq!(r.summary, "kernel");
    assert!(matches!(r.cpu_limit, Mechanism::Kernel(_)), "{r:?}");
    assert!(matches!(r.max_memory, Mechanism::Kernel(_)), "{r:?}");
    // A container the configuration leaves to user level is reported so, cgroups or not.
    let user = registry
        .root()
        .create_child("user", {
            let mut a = Attributes::default();
            a.set("cpu_limit", "30%").unwrap();
            a
        })
        .unwrap();
    assert_eq!(enforcement::report(&user, Some(&m), None).summary, "user");
    m.shutdown().unwrap();
}
