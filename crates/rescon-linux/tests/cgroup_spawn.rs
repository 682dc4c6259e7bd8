//! Processes spawned in a container: placement, inheritance, kill, exit accounting, limits.

mod common;

use common::*;
use rescon::Registry;
use rescon_linux::cgroup::{Controller, ErrorKind, LEAF, Stdio};
use std::io::Read;
use std::time::Duration;

/// The child is in the container's leaf in every hierarchy from its first instruction, and a
/// grandchild it forks is there too.
#[test]
fn grandchild_is_inside_the_container() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "grandchild_is_inside_the_container") else {
        return;
    };
    let cgi = kernel_child(&registry.root(), "cgi", &[]);
    // The shell starts a background sleep (the grandchild), prints its pid, and waits.
    let mut child = m
        .command(&cgi, "sh")
        .args(["-c", "sleep 30 & echo $!; wait"])
        .stdout(Stdio::Piped)
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 32];
    let n = out.read(&mut buf).unwrap();
    let gpid: i32 = std::str::from_utf8(&buf[..n])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let leaf_of = |c: Controller| {
        let dir = m.cgroup_dir(&cgi, c).unwrap().join(LEAF);
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        procs
            .lines()
            .map(|l| l.trim().parse::<i32>().unwrap())
            .collect::<Vec<_>>()
    };
    for c in [
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Memory,
        Controller::Pids,
    ] {
        if m.cgroup_dir(&cgi, c).is_none() {
            continue;
        }
        let members = leaf_of(c);
        assert!(
            members.contains(&(child.id() as i32)),
            "{c}: child not in {members:?}"
        );
        assert!(
            members.contains(&gpid),
            "{c}: grandchild {gpid} not in {members:?}"
        );
    }
    if let Some(v2) = m.layout().v2() {
        let _ = v2;
        let want = format!("/c{}-cgi/{LEAF}", cgi.id());
        let got = cgroup_of(gpid, "").unwrap();
        assert!(got.ends_with(&want), "v2 cgroup of grandchild: {got}");
    }
    let rep = m.kill(&cgi).unwrap();
    assert!(rep.cgroup_kill || rep.signalled >= 2, "{rep:?}");
    let exit = child.wait().unwrap();
    assert!(!exit.status.success());
    assert!(
        wait_until(Duration::from_secs(2), || !alive(gpid)),
        "grandchild survived"
    );
}

/// Kill empties the container (and its kernel descendants) even while processes fork as fast
/// as they can, and leaves no process behind.
#[test]
fn kill_leaves_no_process_behind() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "kill_leaves_no_process_behind") else {
        return;
    };
    let cgi = kernel_child(&registry.root(), "cgi", &[]);
    let inner = kernel_child(&cgi, "inner", &[]);
    // A bounded fork loop in each (at most 200 short-lived children each).
    let script = "i=0; while [ $i -lt 200 ]; do sleep 5 & i=$((i+1)); done; wait";
    let mut a = m.command(&cgi, "sh").args(["-c", script]).spawn().unwrap();
    let mut b = m
        .command(&inner, "sh")
        .args(["-c", script])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let before = m.stats(&cgi).unwrap().processes;
    let rep = m.kill(&cgi).unwrap();
    for dir in m.cgroup_dirs(&cgi) {
        for d in walk(&dir) {
            let file = if d.join("cgroup.procs").exists() {
                "cgroup.procs"
            } else {
                continue;
            };
            let procs = std::fs::read_to_string(d.join(file)).unwrap();
            assert!(
                procs.trim().is_empty(),
                "{} still has {procs:?}",
                d.display()
            );
        }
    }
    assert!(!a.wait().unwrap().status.success());
    assert!(!b.wait().unwrap().status.success());
    // pids.current also counts killed processes until they are reaped (by init, for the
    // orphans), which follows shortly.
    if before.is_some() {
        assert!(
            wait_until(Duration::from_secs(5), || m.stats(&cgi).unwrap().processes
                == Some(0)),
            "pids.current after kill: {:?} (was {before:?}); {rep:?}",
            m.stats(&cgi).unwrap().processes
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().unwrap().is_dir() {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// At exit, the container's kernel CPU includes the child's, the exit carries its rusage, and
/// the process limit is given back.
#[test]
fn exit_records_usage_and_releases_the_process_slot() {
    let registry = Registry::new();
    let Some(m) = manager(
        &registry,
        "exit_records_usage_and_releases_the_process_slot",
    ) else {
        return;
    };
    let cgi = kernel_child(&registry.root(), "cgi", &[("max_processes", "1")]);
    // Burn about 200 ms of CPU.
    let mut child = m
        .command(&cgi, "sh")
        .args(["-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"])
        .spawn()
        .unwrap();
    assert_eq!(cgi.usage().processes, 1);
    let e = m.command(&cgi, "true").spawn().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Limit, "{e}");
    let exit = child.wait().unwrap();
    assert!(exit.status.success());
    let rusage_ns = (exit.user_cpu + exit.system_cpu).as_nanos() as u64;
    assert!(rusage_ns > 10_000_000, "rusage {rusage_ns} ns");
    let kernel = cgi.usage().kernel_cpu_ns;
    // The cgroup saw at least what the child reported (ticks make rusage coarse).
    assert!(
        kernel + 8_000_000 >= rusage_ns,
        "kernel_cpu_ns {kernel} vs rusage {rusage_ns}"
    );
    assert_eq!(cgi.usage().processes, 0);
    assert_eq!(cgi.usage().procs_spawned, 1);
    let mut again = m.command(&cgi, "true").spawn().unwrap();
    assert!(again.wait().unwrap().status.success());
}

/// A program that cannot run fails with an error that names it and the step.
#[test]
fn spawn_errors_name_the_program() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "spawn_errors_name_the_program") else {
        return;
    };
    let cgi = kernel_child(&registry.root(), "cgi", &[]);
    let e = m
        .command(&cgi, "no-such-program-rescon")
        .spawn()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Spawn);
    assert!(e.to_string().contains("no-such-program-rescon"), "{e}");
    let e = m.command(&cgi, "/etc/hostname").spawn().unwrap_err();
    assert!(e.to_string().contains("exec"), "{e}");
    let e = m
        .command(&cgi, "true")
        .current_dir("/no/such/dir")
        .spawn()
        .unwrap_err();
    assert!(e.to_string().contains("changing directory"), "{e}");
    // Nothing is left counted.
    assert_eq!(cgi.usage().processes, 0);
}

/// Environment, working directory and stdio reach the child.
#[test]
fn environment_directory_and_pipes() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "environment_directory_and_pipes") else {
        return;
    };
    let cgi = kernel_child(&registry.root(), "cgi", &[]);
    let mut child = m
        .command(&cgi, "sh")
        .args(["-c", "read x; echo \"$x $RESCON_T $(pwd)\"; echo err >&2"])
        .env("RESCON_T", "tv")
        .current_dir("/tmp")
        .stdin(Stdio::Piped)
        .stdout(Stdio::Piped)
        .stderr(Stdio::Null)
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.as_mut().unwrap().write_all(b"hi\n").unwrap();
    let exit = child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(exit.status.success());
    assert_eq!(out, "hi tv /tmp\n");
}

/// A child whose handle is dropped is adopted, reaped, and its slot given back.
#[test]
fn dropped_child_is_reaped() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "dropped_child_is_reaped") else {
        return;
    };
    let cgi = kernel_child(&registry.root(), "cgi", &[]);
    let child = m.command(&cgi, "sleep").arg("0.05").spawn().unwrap();
    let pid = child.id() as i32;
    drop(child);
    assert_eq!(cgi.usage().processes, 1);
    assert!(wait_until(Duration::from_secs(3), || {
        m.sample().unwrap();
        cgi.usage().processes == 0
    }));
    assert!(!alive(pid));
}
