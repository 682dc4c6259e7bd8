//! Attribute changes reach the kernel without restarts, read back from the knobs.

mod common;

use common::*;
use rescon::{Container, Registry};
use rescon_linux::cgroup::{Controller, ErrorKind, LEAF, Manager, Version};
use std::time::Duration;

fn version(m: &Manager, c: Controller) -> Option<Version> {
    m.layout().controller(c).map(|h| h.version())
}

/// Reads a knob, picking the file by the controller's version.
fn knob(m: &Manager, c: &Container, ctl: Controller, v1: &str, v2: &str) -> Option<String> {
    let file = match version(m, ctl)? {
        Version::V1 => v1,
        Version::V2 => v2,
    };
    Some(m.read_knob(c, ctl, file).unwrap())
}

fn weight_knob(m: &Manager, c: &Container) -> String {
    knob(m, c, Controller::Cpu, "cpu.shares", "cpu.weight").unwrap()
}

/// Weight for a v2 value, shares for v1.
fn w(m: &Manager, v2: u64) -> String {
    match version(m, Controller::Cpu).unwrap() {
        Version::V1 => (v2 * 1024 / 100).to_string(),
        Version::V2 => v2.to_string(),
    }
}

#[test]
fn attribute_changes_apply_live() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "attribute_changes_apply_live") else {
        return;
    };
    m.start_background(Duration::from_millis(200)).unwrap();
    let root = registry.root();
    let c = kernel_child(&root, "c", &[("weight", "200")]);
    m.attach(&c).unwrap();
    assert_eq!(weight_knob(&m, &c), w(&m, 200));
    let live = |f: &dyn Fn() -> bool| wait_until(Duration::from_secs(3), f);

    // Weight and priority (which scales it).
    root.update(&c, |a| a.set("weight", "300")).unwrap();
    assert!(
        live(&|| weight_knob(&m, &c) == w(&m, 300)),
        "{}",
        weight_knob(&m, &c)
    );
    root.update(&c, |a| a.set("priority", "50")).unwrap();
    assert!(
        live(&|| weight_knob(&m, &c) == w(&m, 150)),
        "{}",
        weight_knob(&m, &c)
    );

    // CPU limit.
    root.update(&c, |a| a.set("cpu_limit", "25%")).unwrap();
    let quota = || match version(&m, Controller::Cpu).unwrap() {
        Version::V1 => m
            .read_knob(&c, Controller::Cpu, "cpu.cfs_quota_us")
            .unwrap(),
        Version::V2 => m.read_knob(&c, Controller::Cpu, "cpu.max").unwrap(),
    };
    let want_quota = match version(&m, Controller::Cpu).unwrap() {
        Version::V1 => "25000",
        Version::V2 => "25000 100000",
    };
    assert!(live(&|| quota() == want_quota), "{}", quota());
    root.update(&c, |a| a.set("cpu_limit", "none")).unwrap();
    let unlimited = match version(&m, Controller::Cpu).unwrap() {
        Version::V1 => "-1",
        Version::V2 => "max 100000",
    };
    assert!(live(&|| quota() == unlimited), "{}", quota());

    // Memory and processes.
    if version(&m, Controller::Memory).is_some() {
        root.update(&c, |a| a.set("max_memory", "64MiB")).unwrap();
        assert!(live(&|| {
            knob(
                &m,
                &c,
                Controller::Memory,
                "memory.limit_in_bytes",
                "memory.max",
            )
            .unwrap()
                == "67108864"
        }));
    }
    if version(&m, Controller::Pids).is_some() {
        root.update(&c, |a| a.set("max_processes", "5")).unwrap();
        assert!(live(&|| m
            .read_knob(&c, Controller::Pids, "pids.max")
            .unwrap()
            == "5"));
    }

    // The idle class.
    let cpu_dir = m.cgroup_dir(&c, Controller::Cpu).unwrap();
    if cpu_dir.join("cpu.idle").exists() {
        root.update(&c, |a| a.set("class", "idle")).unwrap();
        assert!(live(&|| m
            .read_knob(&c, Controller::Cpu, "cpu.idle")
            .unwrap()
            == "1"));
    }

    // Priority 0 freezes; raising it thaws.
    if let Some(v) = version(&m, Controller::Freezer) {
        let frozen = || match v {
            Version::V1 => {
                m.read_knob(&c, Controller::Freezer, "freezer.state")
                    .unwrap()
                    == "FROZEN"
            }
            Version::V2 => {
                m.read_knob(&c, Controller::Freezer, "cgroup.freeze")
                    .unwrap()
                    == "1"
            }
        };
        let mut child = m.command(&c, "sleep").arg("30").spawn().unwrap();
        root.update(&c, |a| a.set("priority", "0")).unwrap();
        assert!(live(&frozen));
        root.update(&c, |a| a.set("priority", "100")).unwrap();
        assert!(live(&|| !frozen()));
        m.kill(&c).unwrap();
        child.wait().unwrap();
    }
    assert!(m.take_errors().is_empty());
}

/// Fixed fractions become weights that give them under contention (see `map`).
#[test]
fn fixed_fractions_become_weights() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "fixed_fractions_become_weights") else {
        return;
    };
    let p = kernel_child(&registry.root(), "p", &[]);
    let f = kernel_child(&p, "fixed", &[("share", "30%")]);
    let a = kernel_child(&p, "a", &[("weight", "300")]);
    let b = kernel_child(&p, "b", &[("weight", "100")]);
    m.sync_tree(&registry.root()).unwrap();
    assert_eq!(m.mirrored().len(), 4);
    assert_eq!(weight_knob(&m, &f), w(&m, 3000));
    assert_eq!(weight_knob(&m, &a), w(&m, 5250));
    assert_eq!(weight_knob(&m, &b), w(&m, 1750));
    // b leaves: a takes the whole pool.
    m.detach(&b).unwrap();
    assert_eq!(weight_knob(&m, &a), w(&m, 7000));
}

/// In v1 a child may not have more bandwidth than its parent: a looser child is written as
/// unlimited, and tightening the parent below a child reorders the writes.
#[test]
fn nested_cpu_limits() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "nested_cpu_limits") else {
        return;
    };
    let root = registry.root();
    let p = kernel_child(&root, "p", &[("cpu_limit", "30%")]);
    let loose = kernel_child(&p, "loose", &[("cpu_limit", "50%")]);
    let tight = kernel_child(&p, "tight", &[("cpu_limit", "10%")]);
    m.sync_tree(&root).unwrap();
    let q = |c: &Container| knob(&m, c, Controller::Cpu, "cpu.cfs_quota_us", "cpu.max").unwrap();
    let v1 = version(&m, Controller::Cpu) == Some(Version::V1);
    if v1 {
        assert_eq!(q(&loose), "-1");
        assert_eq!(q(&tight), "10000");
    } else {
        assert_eq!(q(&loose), "50000 100000");
    }
    root.update(&p, |a| a.set("cpu_limit", "5%")).unwrap();
    let rep = m.apply();
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert_eq!(rep.changed, 1);
    assert_eq!(q(&p), if v1 { "5000" } else { "5000 100000" });
    if v1 {
        assert_eq!(q(&tight), "-1");
    }
    root.update(&p, |a| a.set("cpu_limit", "none")).unwrap();
    let rep = m.apply();
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert_eq!(q(&tight), if v1 { "10000" } else { "10000 100000" });
    assert_eq!(q(&loose), if v1 { "50000" } else { "50000 100000" });
}

/// Reparenting a container moves its cgroup (and its processes) under the new kernel parent.
#[test]
fn reparent_moves_the_cgroup_and_its_processes() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "reparent_moves_the_cgroup_and_its_processes") else {
        return;
    };
    let root = registry.root();
    let a = kernel_child(&root, "a", &[]);
    let b = kernel_child(&root, "b", &[]);
    let c = kernel_child(&a, "c", &[("weight", "700")]);
    let mut child = m.command(&c, "sleep").arg("30").spawn().unwrap();
    let old = m.cgroup_dirs(&c);
    root.reparent(&c, Some(&b)).unwrap();
    let rep = m.apply();
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert_eq!(rep.moved, 1);
    let new = m.cgroup_dirs(&c);
    for (o, n) in old.iter().zip(&new) {
        assert!(!o.exists(), "{} is left", o.display());
        assert!(n.exists());
        let parent = n.parent().unwrap().file_name().unwrap().to_str().unwrap();
        assert_eq!(parent, format!("c{}-b", b.id()));
    }
    let v1 = m.cgroup_dir(&c, Controller::Cpu).unwrap();
    let procs = std::fs::read_to_string(v1.join(LEAF).join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == child.id().to_string()),
        "{procs}"
    );
    assert_eq!(weight_knob(&m, &c), w(&m, 700), "knobs follow the move");
    m.kill(&c).unwrap();
    child.wait().unwrap();
}

/// A container whose enforcement becomes user stops being mirrored; its processes move up
/// to its kernel parent.
#[test]
fn enforcement_to_user_moves_processes_up() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "enforcement_to_user_moves_processes_up") else {
        return;
    };
    let root = registry.root();
    let p = kernel_child(&root, "p", &[]);
    let c = kernel_child(&p, "c", &[]);
    let mut child = m.command(&c, "sleep").arg("30").spawn().unwrap();
    let dirs = m.cgroup_dirs(&c);
    root.update(&c, |a| a.set("enforcement", "user")).unwrap();
    let rep = m.apply();
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert_eq!(rep.unmirrored, 1);
    assert!(dirs.iter().all(|d| !d.exists()));
    assert_eq!(m.mirrored(), vec![p.id()]);
    let pdir = m.cgroup_dir(&p, Controller::Cpu).unwrap();
    let procs = std::fs::read_to_string(pdir.join(LEAF).join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == child.id().to_string()),
        "{procs}"
    );
    m.kill(&p).unwrap();
    child.wait().unwrap();
}

/// Containers without kernel enforcement are refused with a message that says what to set;
/// a busy container cannot be detached until killed.
#[test]
fn refusals_say_what_to_do() {
    let registry = Registry::new();
    let Some(m) = manager(&registry, "refusals_say_what_to_do") else {
        return;
    };
    let user = registry
        .root()
        .create_child("plain", Default::default())
        .unwrap();
    let e = m.attach(&user).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotKernel);
    assert!(e.to_string().contains("enforcement = \"kernel\""), "{e}");
    assert_eq!(
        m.bind_current_thread(&user).unwrap_err().kind(),
        ErrorKind::NotKernel
    );
    let e = m.command(&user, "true").spawn().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotKernel);
    assert_eq!(user.usage().processes, 0);

    let c = kernel_child(&registry.root(), "c", &[]);
    let mut child = m.command(&c, "sleep").arg("30").spawn().unwrap();
    let e = m.detach(&c).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains(&child.id().to_string()), "{e}");
    m.kill(&c).unwrap();
    child.wait().unwrap();
    m.detach(&c).unwrap();
    assert!(m.mirrored().is_empty());
    assert_eq!(m.stats(&c).unwrap_err().kind(), ErrorKind::NotMirrored);
}
