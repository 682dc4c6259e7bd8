//! The manager on an emulated cgroupfs in a temporary directory: which files it writes with
//! which values, how it accounts, and that it removes everything it made. (The kernel tests
//! in `tests/cgroup_*.rs` check the same against the real kernel.)

use super::parse::fixtures::{HYBRID_MOUNTINFO, V2_MOUNTINFO};
use super::*;
use rescon::{Attributes, Container, Registry};
use std::path::{Path, PathBuf};

struct Fake {
    tmp: tempfile::TempDir,
    layout: Layout,
}

impl Fake {
    fn new(mountinfo: &str, self_cgroup: &str, v2_controllers: &str) -> Fake {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::parse(mountinfo, self_cgroup, tmp.path()).unwrap();
        for h in layout.hierarchies() {
            std::fs::create_dir_all(h.own_cgroup()).unwrap();
            if h.version() == Version::V2 {
                std::fs::write(h.own_cgroup().join("cgroup.controllers"), v2_controllers).unwrap();
                std::fs::write(h.own_cgroup().join("cgroup.subtree_control"), "").unwrap();
                std::fs::write(h.own_cgroup().join("cgroup.procs"), "").unwrap();
            }
        }
        Fake { tmp, layout }
    }

    fn hybrid() -> Fake {
        Fake::new(
            HYBRID_MOUNTINFO,
            "9:name=systemd:/\n8:pids:/\n6:freezer:/\n4:memory:/job/1\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n",
            "hugetlb\n",
        )
    }

    fn v2() -> Fake {
        Fake::new(
            V2_MOUNTINFO,
            "0::/system.slice/x.service\n",
            "cpu io memory pids\n",
        )
    }

    fn config(&self) -> Config {
        Config {
            layout: Some(self.layout.clone()),
            cgroupfs_root: self.tmp.path().to_path_buf(),
            emulate: true,
            ..Config::default()
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// Every directory under the fake root.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.tmp.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    out.push(e.path());
                    stack.push(e.path());
                }
            }
        }
        out.sort();
        out
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

fn kernel(parent: &Container, name: &str, kv: &[(&str, &str)]) -> Container {
    let mut a = Attributes::default();
    a.set("enforcement", "kernel").unwrap();
    for (k, v) in kv {
        a.set(k, v).unwrap();
    }
    parent.create_child(name, a).unwrap()
}

#[test]
fn hybrid_mirrors_into_every_used_hierarchy_and_writes_v1_knobs() {
    let fake = Fake::hybrid();
    let before = fake.dirs();
    let registry = Registry::new();
    let m = Manager::new(&registry, fake.config()).unwrap();
    let name = m.name().to_string();
    // One subtree per used hierarchy, under our own cgroup in each.
    let mut roots: Vec<PathBuf> = m.subtree_dirs();
    roots.sort();
    let mut want: Vec<PathBuf> = [
        "cpu",
        "cpuacct",
        "freezer",
        "memory/job/1",
        "pids",
        "unified",
    ]
    .iter()
    .map(|h| fake.path(h).join(&name))
    .collect();
    want.sort();
    assert_eq!(roots, want);

    let c = kernel(
        &registry.root(),
        "cgi bin",
        &[
            ("weight", "400"),
            ("cpu_limit", "30%"),
            ("cpu_burst", "10ms"),
            ("max_memory", "64MiB"),
            ("max_processes", "8"),
        ],
    );
    m.attach(&c).unwrap();
    let cpu = m.cgroup_dir(&c, Controller::Cpu).unwrap();
    assert_eq!(
        cpu,
        fake.path("cpu")
            .join(&name)
            .join(format!("c{}-cgi_bin", c.id()))
    );
    assert_eq!(read(&cpu.join("cpu.shares")), "4096");
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "30000");
    assert_eq!(read(&cpu.join("cpu.cfs_burst_us")), "10000");
    let mem = m.cgroup_dir(&c, Controller::Memory).unwrap();
    assert!(mem.starts_with(fake.path("memory/job/1")));
    assert_eq!(read(&mem.join("memory.limit_in_bytes")), "67108864");
    let pids = m.cgroup_dir(&c, Controller::Pids).unwrap();
    assert_eq!(read(&pids.join("pids.max")), "8");
    let frz = m.cgroup_dir(&c, Controller::Freezer).unwrap();
    assert_eq!(read(&frz.join("freezer.state")), "THAWED");
    assert_eq!(m.cgroup_dirs(&c).len(), 6);

    // Priority 0 freezes, the idle class sets cpu.idle, and both are undone.
    let root = registry.root();
    root.update(&c, |a| a.set("priority", "0")).unwrap();
    root.update(&c, |a| a.set("class", "idle")).unwrap();
    let rep = m.apply();
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert_eq!(rep.changed, 1);
    assert_eq!(read(&frz.join("freezer.state")), "FROZEN");
    assert_eq!(read(&cpu.join("cpu.idle")), "1");
    root.update(&c, |a| {
        a.set("priority", "100")?;
        a.set("class", "normal")
    })
    .unwrap();
    assert!(m.apply().errors.is_empty());
    assert_eq!(read(&frz.join("freezer.state")), "THAWED");
    assert_eq!(read(&cpu.join("cpu.idle")), "0");
    assert_eq!(read(&cpu.join("cpu.shares")), "4096");
    assert!(m.notes(&c).is_empty(), "{:?}", m.notes(&c));

    // A class above normal has no kernel counterpart: noted, not an error.
    root.update(&c, |a| a.set("class", "critical")).unwrap();
    assert!(m.apply().errors.is_empty());
    assert!(
        m.notes(&c)[0].contains("user level only"),
        "{:?}",
        m.notes(&c)
    );

    m.shutdown().unwrap();
    assert_eq!(
        fake.dirs(),
        before,
        "shutdown leaves exactly what was there"
    );
}

#[test]
fn v2_enables_controllers_and_writes_v2_knobs() {
    let fake = Fake::v2();
    let registry = Registry::new();
    let m = Manager::new(&registry, fake.config()).unwrap();
    let own = fake.path("system.slice/x.service");
    // The only write to a cgroup rescon did not make: adding its controllers.
    assert_eq!(
        read(&own.join("cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    let root = own.join(m.name());
    assert_eq!(m.subtree_dirs(), vec![root.clone()]);
    assert_eq!(
        read(&root.join("cgroup.subtree_control")),
        "+cpu +memory +pids"
    );

    let p = kernel(
        &registry.root(),
        "p",
        &[("cpu_limit", "1.5"), ("max_memory", "1GiB")],
    );
    let c = kernel(
        &p,
        "c",
        &[
            ("weight", "50"),
            ("cpu_limit", "0.25"),
            ("cpu_burst", "500ms"),
        ],
    );
    m.sync_tree(&registry.root()).unwrap();
    let pd = m.cgroup_dir(&p, Controller::Cpu).unwrap();
    let cd = m.cgroup_dir(&c, Controller::Cpu).unwrap();
    assert_eq!(cd.parent().unwrap(), pd);
    assert_eq!(read(&pd.join("cpu.max")), "150000 100000");
    assert_eq!(read(&pd.join("memory.max")), "1073741824");
    assert_eq!(read(&cd.join("cpu.weight")), "50");
    // v2 takes a child's own limit as it is; the burst is capped at the quota.
    assert_eq!(read(&cd.join("cpu.max")), "25000 100000");
    assert_eq!(read(&cd.join("cpu.max.burst")), "25000");
    assert_eq!(
        read(&pd.join("cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    m.shutdown().unwrap();
    assert!(!root.exists());
}

#[test]
fn threaded_mode_types_every_cgroup_and_leaves_memory_out() {
    let fake = Fake::v2();
    let registry = Registry::new();
    let cfg = Config {
        v2_mode: V2Mode::Threaded,
        ..fake.config()
    };
    let m = Manager::new(&registry, cfg).unwrap();
    let root = m.subtree_dirs()[0].clone();
    assert_eq!(read(&root.join("cgroup.type")), "threaded");
    assert_eq!(read(&root.join("cgroup.subtree_control")), "+cpu +pids");
    let c = kernel(&registry.root(), "c", &[("max_memory", "1MiB")]);
    m.attach(&c).unwrap();
    let d = m.cgroup_dir(&c, Controller::Cpu).unwrap();
    assert_eq!(read(&d.join("cgroup.type")), "threaded");
    assert!(m.cgroup_dir(&c, Controller::Memory).is_none());
    assert!(
        m.notes(&c).iter().any(|n| n.contains("max_memory")),
        "{:?}",
        m.notes(&c)
    );
    // Binding a thread writes its tid to the threaded leaf's cgroup.threads.
    let tid = current_tid();
    m.bind_thread(tid, &c).unwrap();
    assert_eq!(read(&d.join(LEAF).join("cgroup.type")), "threaded");
    assert_eq!(read(&d.join(LEAF).join("cgroup.threads")), tid.to_string());
}

#[test]
fn domain_v2_refuses_thread_binding_with_a_reason() {
    let fake = Fake::v2();
    let registry = Registry::new();
    let m = Manager::new(&registry, fake.config()).unwrap();
    let c = kernel(&registry.root(), "c", &[]);
    let e = m.bind_current_thread(&c).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Topology);
    assert!(e.to_string().contains("V2Mode::Threaded"), "{e}");
}

#[test]
fn fixed_fractions_and_own_work_leaf_weights() {
    let fake = Fake::hybrid();
    let registry = Registry::new();
    let m = Manager::new(&registry, fake.config()).unwrap();
    let p = kernel(&registry.root(), "p", &[]);
    let f = kernel(&p, "f", &[("share", "fixed:0.5")]);
    let w = kernel(&p, "w", &[("weight", "100")]);
    m.sync_tree(&registry.root()).unwrap();
    let shares =
        |c: &Container| read(&m.cgroup_dir(c, Controller::Cpu).unwrap().join("cpu.shares"));
    assert_eq!(shares(&f), "51200");
    assert_eq!(shares(&w), "51200");
    // p gets an own-work leaf (a thread bound to it): the leaf joins the weighted pool.
    m.bind_thread(current_tid(), &p).unwrap();
    let leaf = m.cgroup_dir(&p, Controller::Cpu).unwrap().join(LEAF);
    assert_eq!(read(&leaf.join("cpu.shares")), "25600");
    assert_eq!(shares(&w), "25600");
    assert_eq!(shares(&f), "51200");
    assert_eq!(read(&leaf.join("tasks")), current_tid().to_string());
}

#[test]
fn kernel_cpu_and_memory_are_reported_once() {
    let fake = Fake::hybrid();
    let registry = Registry::new();
    let m = Manager::new(&registry, fake.config()).unwrap();
    let p = kernel(&registry.root(), "p", &[]);
    let c = kernel(&p, "c", &[]);
    m.sync_tree(&registry.root()).unwrap();
    let set = |c: &Container, ctl: Controller, file: &str, v: &str| {
        std::fs::write(m.cgroup_dir(c, ctl).unwrap().join(file), v).unwrap()
    };
    set(&p, Controller::Cpuacct, "cpuacct.usage", "1000\n");
    set(&c, Controller::Cpuacct, "cpuacct.usage", "300\n");
    set(&p, Controller::Memory, "memory.usage_in_bytes", "4096\n");
    set(&c, Controller::Memory, "memory.usage_in_bytes", "1024\n");
    set(
        &c,
        Controller::Cpu,
        "cpu.stat",
        "nr_periods 3\nnr_throttled 2\nthrottled_time 777\n",
    );
    m.sample().unwrap();
    assert_eq!(p.usage().kernel_cpu_ns, 700);
    assert_eq!(c.usage().kernel_cpu_ns, 300);
    assert_eq!(p.usage_subtree().kernel_cpu_ns, 1000);
    assert_eq!(p.usage().kernel_memory_bytes, 3072);
    assert_eq!(p.usage_subtree().kernel_memory_bytes, 4096);
    assert_eq!(c.usage().throttled_ns, 777);
    // Deltas only; a parent read racing ahead of a child never goes backwards.
    set(&p, Controller::Cpuacct, "cpuacct.usage", "2500\n");
    set(&c, Controller::Cpuacct, "cpuacct.usage", "1300\n");
    m.sample().unwrap();
    m.sample().unwrap();
    assert_eq!(p.usage().kernel_cpu_ns, 1200);
    assert_eq!(c.usage().kernel_cpu_ns, 1300);
    assert_eq!(registry.root().usage_subtree().kernel_cpu_ns, 2500);
    let s = m.stats(&c).unwrap();
    assert_eq!(s.cpu_ns, Some(1300));
    assert_eq!(s.nr_throttled, Some(2));
    assert_eq!(s.processes, Some(0));
    // Detaching c keeps p's share exact: c's past usage stays counted in p's cgroup.
    m.detach(&c).unwrap();
    m.sample().unwrap();
    assert_eq!(p.usage().kernel_cpu_ns, 1200);
}

#[test]
fn cpu_credited_elsewhere_is_not_reported_twice() {
    // A pool's cgroup whose CPU is partly charged to request containers by the caller: the
    // pool reports only the rest, and the two add up to the cgroup's counter.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let fake = Fake::hybrid();
    let registry = Registry::new();
    let m = Manager::new(&registry, fake.config()).unwrap();
    let pool = kernel(&registry.root(), "pool", &[]);
    let req = registry
        .root()
        .create_child("req", Attributes::default())
        .unwrap();
    m.sync_tree(&registry.root()).unwrap();
    let credited = Arc::new(AtomicU64::new(0));
    let c2 = credited.clone();
    m.set_cpu_credit(&pool, Arc::new(move || c2.load(Ordering::SeqCst)));
    let usage = |v: &str| {
        std::fs::write(
            m.cgroup_dir(&pool, Controller::Cpuacct)
                .unwrap()
                .join("cpuacct.usage"),
            v,
        )
        .unwrap()
    };
    let charge = |ns: u64| {
        req.account().add_kernel_cpu_ns(ns);
        credited.fetch_add(ns, Ordering::SeqCst);
    };
    usage("1000\n");
    charge(600);
    m.sample().unwrap();
    assert_eq!(pool.usage().kernel_cpu_ns, 400);
    // A credit ahead of the counter (charged before the kernel's count was read) holds the
    // pool still; it never goes back, and the sum catches up when the counter does.
    charge(900);
    m.sample().unwrap();
    assert_eq!(pool.usage().kernel_cpu_ns, 400);
    usage("2000\n");
    m.sample().unwrap();
    assert_eq!(pool.usage().kernel_cpu_ns, 500);
    assert_eq!(pool.usage().kernel_cpu_ns + req.usage().kernel_cpu_ns, 2000);
}

#[test]
fn v1_nested_limits_follow_the_kernel_rule() {
    let fake = Fake::hybrid();
    let registry = Registry::new();
    let m = Manager::new(&registry, fake.config()).unwrap();
    let root = registry.root();
    let p = kernel(&root, "p", &[("cpu_limit", "30%")]);
    let a = kernel(&p, "a", &[("cpu_limit", "50%")]);
    let b = kernel(&p, "b", &[("cpu_limit", "10%")]);
    // A non-enforced container between p and d: d nests under p's cgroup.
    let mid = p.create_child("mid", Attributes::default()).unwrap();
    let d = kernel(&mid, "d", &[("cpu_limit", "5%")]);
    m.sync_tree(&root).unwrap();
    let q = |c: &Container| {
        read(
            &m.cgroup_dir(c, Controller::Cpu)
                .unwrap()
                .join("cpu.cfs_quota_us"),
        )
    };
    assert_eq!(
        (q(&p), q(&a), q(&b), q(&d)),
        ("30000".into(), "-1".into(), "10000".into(), "5000".into())
    );
    assert_eq!(
        m.cgroup_dir(&d, Controller::Cpu).unwrap().parent().unwrap(),
        m.cgroup_dir(&p, Controller::Cpu).unwrap()
    );
    root.update(&p, |x| x.set("cpu_limit", "none")).unwrap();
    assert!(m.apply().errors.is_empty());
    assert_eq!(
        (q(&p), q(&a), q(&b)),
        ("-1".into(), "50000".into(), "10000".into())
    );
}

#[test]
fn reparent_and_enforcement_changes_move_cgroups() {
    let fake = Fake::hybrid();
    let registry = Registry::new();
    let m = Manager::new(&registry, fake.config()).unwrap();
    let root = registry.root();
    let a = kernel(&root, "a", &[]);
    let b = kernel(&root, "b", &[]);
    let c = kernel(&a, "c", &[("weight", "250")]);
    let g = kernel(&c, "g", &[]);
    m.sync_tree(&root).unwrap();
    let old_g = m.cgroup_dirs(&g);
    root.reparent(&c, Some(&b)).unwrap();
    let rep = m.apply();
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert_eq!(rep.moved, 1);
    let gd = m.cgroup_dir(&g, Controller::Cpu).unwrap();
    assert!(
        gd.ends_with(format!("c{}-b/c{}-c/c{}-g", b.id(), c.id(), g.id())),
        "{}",
        gd.display()
    );
    assert!(old_g.iter().all(|d| !d.exists()));
    let cd = m.cgroup_dir(&c, Controller::Cpu).unwrap();
    assert_eq!(read(&cd.join("cpu.shares")), "2560");
    // c becomes user-level: g moves up to b.
    root.update(&c, |x| x.set("enforcement", "user")).unwrap();
    let rep = m.apply();
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert_eq!(rep.unmirrored, 1);
    assert!(!cd.exists());
    let gd = m.cgroup_dir(&g, Controller::Cpu).unwrap();
    assert!(
        gd.ends_with(format!("c{}-b/c{}-g", b.id(), g.id())),
        "{}",
        gd.display()
    );
    let mut ids = m.mirrored();
    ids.sort();
    assert_eq!(ids, vec![a.id(), b.id(), g.id()]);
}

#[test]
fn root_weight_parent_path_and_names() {
    let fake = Fake::hybrid();
    let registry = Registry::new();
    let cfg = Config {
        root_weight: Some(rescon::Weight::new(10_000).unwrap()),
        name: Some("web-1".into()),
        ..fake.config()
    };
    let m = Manager::new(&registry, cfg.clone()).unwrap();
    assert_eq!(read(&fake.path("cpu/web-1/cpu.shares")), "102400");
    // The name is locked while in use.
    assert_eq!(
        Manager::new(&registry, cfg.clone()).unwrap_err().kind(),
        ErrorKind::InUse
    );
    drop(m);
    let bad = Config {
        parent: Parent::Path("no/such".into()),
        ..fake.config()
    };
    let e = Manager::new(&registry, bad).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.to_string().contains("no/such"), "{e}");
    for n in ["", "a/b", ".hidden", LEAF] {
        let cfg = Config {
            name: Some(n.into()),
            ..fake.config()
        };
        assert!(Manager::new(&registry, cfg).is_err(), "{n:?} accepted");
    }
    // OwnParent: beside our cgroup (memory: /job, not /job/1).
    let cfg = Config {
        parent: Parent::OwnParent,
        ..fake.config()
    };
    let e = Manager::new(&registry, cfg).unwrap_err();
    assert!(e.to_string().contains("root cgroup"), "{e}");
}

#[test]
fn stale_subtrees_are_removed_in_every_hierarchy() {
    let fake = Fake::hybrid();
    let registry = Registry::new();
    let stale = "rescon-1-999999999999-3";
    let not_ours = "rescon-notes";
    for h in fake.layout.hierarchies() {
        std::fs::create_dir_all(h.own_cgroup().join(stale).join("c4-x")).unwrap();
        std::fs::create_dir_all(h.own_cgroup().join(not_ours)).unwrap();
    }
    let m = Manager::new(&registry, fake.config()).unwrap();
    for h in fake.layout.hierarchies() {
        let used = m
            .subtree_dirs()
            .iter()
            .any(|d| d.parent() == Some(h.own_cgroup()));
        // Only in the hierarchies rescon uses; never anything not named like an instance.
        assert_eq!(h.own_cgroup().join(stale).exists(), !used, "{}", h.label());
        assert!(h.own_cgroup().join(not_ours).exists());
    }
}

#[test]
fn probe_on_a_fake_tree() {
    let fake = Fake::hybrid();
    let p = Manager::probe(&fake.config());
    assert!(p.available(), "{:?}", p.error());
    assert_eq!(p.layout().unwrap().kind(), LayoutKind::Hybrid);
    // A layout without a cpu controller is refused, by the probe and by new().
    let l = Layout::parse(
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        "4:memory:/\n",
        fake.tmp.path(),
    )
    .unwrap();
    let cfg = Config {
        layout: Some(l),
        ..fake.config()
    };
    let e = Manager::probe(&cfg);
    assert_eq!(e.error().unwrap().kind(), ErrorKind::Unavailable);
    assert!(e.error().unwrap().to_string().contains("no cpu controller"));
    assert!(Manager::new(&Registry::new(), cfg).is_err());
}

#[test]
fn v2_own_parent_is_emptied_into_a_leaf_before_controllers_are_enabled() {
    let fake = Fake::v2();
    let own = fake.path("system.slice/x.service");
    std::fs::write(own.join("cgroup.procs"), "").unwrap();
    let registry = Registry::new();
    let m = Manager::new(
        &registry,
        Config {
            name: Some("leafy".into()),
            ..fake.config()
        },
    )
    .unwrap();
    let leaf = own.join("leafy").join(LEAF);
    assert_eq!(m.own_leaf(), Some(leaf.clone()));
    assert_eq!(
        read(&leaf.join("cgroup.procs")),
        std::process::id().to_string(),
        "the server moved out of its parent first"
    );
    assert_eq!(
        read(&own.join("cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    assert_eq!(
        read(&own.join("leafy/cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    m.shutdown().unwrap();
    assert_eq!(
        read(&own.join("cgroup.procs")),
        std::process::id().to_string(),
        "moved back on shutdown"
    );
    assert!(!own.join("leafy").exists(), "{:?}", fake.dirs());
}

#[test]
fn hybrid_moves_into_its_leaf_only_when_asked_and_chowns_its_subtree() {
    let fake = Fake::hybrid();
    let registry = Registry::new();
    let m = Manager::new(&registry, fake.config()).unwrap();
    assert_eq!(m.own_leaf(), None, "nothing to enable: no move");
    drop(m);
    std::fs::write(fake.path("unified/cgroup.procs"), "").unwrap();
    let m = Manager::new(
        &registry,
        Config {
            own_leaf: true,
            ..fake.config()
        },
    )
    .unwrap();
    let leaf = m.own_leaf().expect("asked for");
    assert!(leaf.starts_with(fake.path("unified")), "{leaf:?}");
    // The root container's own leaf in the other hierarchies does not trip over it.
    let mut a = Attributes::default();
    a.set("enforcement", "kernel").unwrap();
    let c = registry.root().create_child("cgi", a).unwrap();
    m.attach(&c).unwrap();
    // Handing the subtree over to the user it runs as (here: root to root, as a test
    // cannot give files away and take them back without root).
    let meta =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(fake.path("unified")).unwrap());
    let gid =
        std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(fake.path("unified")).unwrap());
    m.chown(meta, gid).unwrap();
    m.shutdown().unwrap();
    assert!(
        fake.dirs()
            .iter()
            .all(|d| !d.to_string_lossy().contains("rescon-")),
        "{:?}",
        fake.dirs()
    );
}
