//! The container model's rules: capabilities, the id namespace, reparenting, release, limits.

use rescon::{Attributes, Container, Error, Registry, Resource, Usage};

fn attrs(pairs: &[(&str, &str)]) -> Attributes {
    let mut a = Attributes::default();
    for (k, v) in pairs {
        a.set(k, v).unwrap();
    }
    a
}

fn child(parent: &Container, name: &str, pairs: &[(&str, &str)]) -> Container {
    parent.create_child(name, attrs(pairs)).unwrap()
}

#[test]
fn handles_are_send_sync_and_clone() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Container>();
    check::<Registry>();
}

#[test]
fn own_container_may_only_be_lowered() {
    let registry = Registry::new();
    let class = child(&registry.root(), "class", &[]);
    let conn = child(
        &class,
        "conn",
        &[
            ("share", "weight:200"),
            ("cpu_limit", "0.5"),
            ("max_connections", "10"),
        ],
    );
    let before = conn.attrs();
    for (k, v) in [
        ("share", "weight:300"),
        ("share", "fixed:0.1"),
        ("priority", "101"),
        ("class", "high"),
        ("cpu_limit", "none"),
        ("cpu_limit", "0.6"),
        ("max_connections", "11"),
        ("max_connections", "none"),
        ("enforcement", "kernel"),
    ] {
        let r = conn.update(&conn, |a| a.set(k, v));
        assert!(
            matches!(r, Err(Error::PermissionDenied { .. })),
            "{k}={v}: {r:?}"
        );
        assert_eq!(conn.attrs(), before, "{k}={v} changed something");
    }
    for (k, v) in [
        ("share", "weight:100"),
        ("priority", "5"),
        ("class", "idle"),
        ("cpu_limit", "0.25"),
        ("max_connections", "2"),
        ("max_memory", "1MiB"), // from unlimited to a limit is a lowering
    ] {
        conn.update(&conn, |a| a.set(k, v))
            .unwrap_or_else(|e| panic!("{k}={v}: {e}"));
    }
    assert_eq!(conn.attrs().priority.get(), 5);
    assert_eq!(conn.attrs().limits.max_connections, Some(2));
}

#[test]
fn ancestors_may_change_anything_siblings_nothing() {
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let a1 = child(&a, "a1", &[]);
    let a11 = child(&a1, "a11", &[]);
    let b = child(&root, "b", &[]);
    a.update(&a11, |x| x.set("priority", "1000")).unwrap();
    a.update(&a11, |x| x.set("class", "critical")).unwrap();
    assert_eq!(a11.attrs().priority.get(), 1000);
    let r = b.update(&a11, |x| x.set("priority", "1"));
    assert!(matches!(r, Err(Error::PermissionDenied { .. })), "{r:?}");
    let r = a11.update(&a, |x| x.set("priority", "1"));
    assert!(
        matches!(r, Err(Error::PermissionDenied { .. })),
        "a descendant cannot touch its ancestor: {r:?}"
    );
    // The unprivileged copy of the root handle is an ancestor of everything under it.
    root.unprivileged()
        .update(&a11, |x| x.set("priority", "3"))
        .unwrap();
}

#[test]
fn lookup_by_id_needs_privilege_descendant_does_not() {
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let a1 = child(&a, "a1", &[]);
    let b = child(&root, "b", &[]);
    assert!(root.is_privileged() && !a.is_privileged());
    assert_eq!(root.lookup(a1.id()).unwrap(), a1);
    assert!(
        !root.lookup(a1.id()).unwrap().is_privileged(),
        "lookup hands out unprivileged handles"
    );
    assert!(matches!(
        a.lookup(a1.id()),
        Err(Error::PermissionDenied { .. })
    ));
    assert!(matches!(
        root.unprivileged().lookup(a1.id()),
        Err(Error::PermissionDenied { .. })
    ));
    assert_eq!(a.descendant(a1.id()).unwrap(), a1);
    assert_eq!(a.descendant(a.id()).unwrap(), a);
    assert!(matches!(
        a.descendant(b.id()),
        Err(Error::PermissionDenied { .. })
    ));
    let gone = a1.id();
    drop(a1);
    assert_eq!(root.lookup(gone), Err(Error::NotFound(gone)));
}

#[test]
fn fixed_shares_may_not_exceed_one() {
    let registry = Registry::new();
    let root = registry.root();
    let p = child(&root, "p", &[]);
    // 0.48 + 0.16 + 0.16 + 0.2 is exactly one.
    let a = child(&p, "a", &[("share", "48%")]);
    let _b = child(&p, "b", &[("share", "16%")]);
    let _c = child(&p, "c", &[("share", "16%")]);
    let d = child(&p, "d", &[("share", "20%")]);
    let r = p.create_child("e", attrs(&[("share", "1%")]));
    assert!(matches!(r, Err(Error::FixedSharesExceed { .. })), "{r:?}");
    // Raising a sibling is refused and changes nothing.
    let r = p.update(&a, |x| x.set("share", "49%"));
    assert!(matches!(r, Err(Error::FixedSharesExceed { .. })), "{r:?}");
    assert_eq!(a.attrs().share.to_string(), "fixed:0.48");
    // A weighted sibling is always fine, and releasing a fixed one frees its fraction.
    let _w = child(&p, "w", &[("share", "weight:5")]);
    drop(d);
    child(&p, "e", &[("share", "20%")]);
}

#[test]
fn reparenting_refuses_cycles_and_needs_rights() {
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let a1 = child(&a, "a1", &[]);
    let a11 = child(&a1, "a11", &[]);
    let b = child(&root, "b", &[]);
    assert!(matches!(
        root.reparent(&a, Some(&a11)),
        Err(Error::Cycle { .. })
    ));
    assert!(matches!(
        root.reparent(&a, Some(&a)),
        Err(Error::Cycle { .. })
    ));
    assert_eq!(a.parent_id(), Some(root.id()));
    // Within one's own subtree: allowed; out of it, or parentless: refused.
    a.reparent(&a11, Some(&a)).unwrap();
    assert_eq!(a11.parent_id(), Some(a.id()));
    assert!(matches!(
        a.reparent(&a11, Some(&b)),
        Err(Error::PermissionDenied { .. })
    ));
    assert!(matches!(
        a.reparent(&a11, None),
        Err(Error::PermissionDenied { .. })
    ));
    assert!(matches!(
        a.reparent(&a, Some(&a1)),
        Err(Error::PermissionDenied { .. })
    ));
    // The privileged root may move anything anywhere, or make it parentless.
    root.reparent(&a11, Some(&b)).unwrap();
    assert!(b.contains(&a11) && !a.contains(&a11));
    root.reparent(&a1, None).unwrap();
    assert_eq!(a1.parent_id(), None);
    assert!(registry.top_level().contains(&a1));
}

#[test]
fn reparenting_checks_the_new_parents_fixed_shares() {
    let registry = Registry::new();
    let root = registry.root();
    let p = child(&root, "p", &[]);
    let q = child(&root, "q", &[]);
    let _big = child(&q, "big", &[("share", "90%")]);
    let x = child(&p, "x", &[("share", "20%")]);
    let r = root.reparent(&x, Some(&q));
    assert!(matches!(r, Err(Error::FixedSharesExceed { .. })), "{r:?}");
    assert_eq!(x.parent_id(), Some(p.id()));
    // p's sum was not disturbed: 80% more still fits there.
    child(&p, "y", &[("share", "80%")]);
}

#[test]
fn usage_rolls_up_and_moves_with_the_subtree() {
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let a1 = child(&a, "a1", &[]);
    let b = child(&root, "b", &[]);
    a1.account().add_cpu_ns(100);
    a1.account().add_bytes_out(7);
    a.account().add_cpu_ns(1);
    assert_eq!(a.usage().cpu_ns, 1);
    assert_eq!(a.usage_subtree().cpu_ns, 101);
    assert_eq!(a.usage_subtree().bytes_out, 7);
    root.reparent(&a1, Some(&b)).unwrap();
    assert_eq!(a.usage_subtree().cpu_ns, 1);
    assert_eq!(b.usage_subtree().cpu_ns, 100);
    assert_eq!(root.usage_subtree().cpu_ns, 101);
}

#[test]
fn release_folds_usage_into_the_parent() {
    let registry = Registry::new();
    let root = registry.root();
    let class = child(&root, "class", &[]);
    let conn = child(&class, "conn", &[]);
    let req = child(&conn, "req", &[]);
    req.account().add_cpu_ns(40);
    conn.account().add_cpu_ns(2);
    conn.account().add_requests(1);
    let ids = (conn.id(), req.id());
    let before = class.usage_subtree();
    // The request's handle alone does not keep the connection alive, but the request
    // container does; dropping the connection handle first releases nothing.
    drop(conn);
    assert!(root.lookup(ids.0).is_ok(), "a child keeps its parent alive");
    drop(req);
    assert!(root.lookup(ids.0).is_err() && root.lookup(ids.1).is_err());
    assert_eq!(
        class.usage_subtree(),
        before,
        "released usage is folded, not lost"
    );
    assert_eq!(
        class.usage().cpu_ns,
        0,
        "folded into the released total, not the own counters"
    );
    assert_eq!(class.snapshot().usage_subtree.cpu_ns, 42);
}

#[test]
fn released_parentless_usage_stays_in_the_registry_total() {
    let registry = Registry::new();
    let root = registry.root();
    let lone = child(&root, "lone", &[]);
    lone.account().add_cpu_ns(5);
    root.account().add_cpu_ns(1);
    root.reparent(&lone, None).unwrap();
    assert_eq!(root.usage_subtree().cpu_ns, 1);
    assert_eq!(registry.usage_all().cpu_ns, 6);
    drop(lone);
    assert_eq!(registry.usage_all().cpu_ns, 6);
    assert_eq!(registry.len(), 1);
}

#[test]
fn ids_are_never_reused() {
    let registry = Registry::new();
    let root = registry.root();
    let mut last = root.id();
    for _ in 0..1000 {
        let c = child(&root, "c", &[]);
        assert!(c.id() > last);
        last = c.id();
    }
    assert_eq!(registry.len(), 1);
}

#[test]
fn connection_limits_cover_the_subtree() {
    let registry = Registry::new();
    let root = registry.root();
    let class = child(&root, "class", &[("max_connections", "2")]);
    let a = child(&class, "a", &[]);
    let b = child(&class, "b", &[("max_connections", "1")]);
    let g1 = a.try_open_connection().unwrap();
    let g2 = b.try_open_connection().unwrap();
    match a.try_open_connection() {
        Err(Error::LimitExceeded {
            container,
            resource: Resource::Connections,
            limit: 2,
        }) => {
            assert_eq!(container, class.id())
        }
        other => panic!("{other:?}"),
    }
    drop(g1);
    match b.try_open_connection() {
        Err(Error::LimitExceeded {
            container,
            limit: 1,
            ..
        }) => assert_eq!(container, b.id()),
        other => panic!("{other:?}"),
    }
    let g3 = a.try_open_connection().unwrap();
    assert_eq!(class.usage_subtree().open_conns, 2);
    assert_eq!(a.usage().conns_accepted, 2);
    assert_eq!(a.usage().conns_refused, 1);
    assert_eq!(b.usage().conns_refused, 1);
    drop((g2, g3));
    assert_eq!(class.usage_subtree().open_conns, 0);
    // A guard keeps its container alive.
    let c = child(&class, "c", &[]);
    let id = c.id();
    let g = c.try_open_connection().unwrap();
    drop(c);
    assert!(root.lookup(id).is_ok());
    drop(g);
    assert!(root.lookup(id).is_err());
}

#[test]
fn memory_and_process_limits() {
    let registry = Registry::new();
    let root = registry.root();
    let cgi = child(
        &root,
        "cgi",
        &[("max_memory", "1KiB"), ("max_processes", "1")],
    );
    let run = child(&cgi, "run", &[]);
    run.charge_memory(1000).unwrap();
    assert!(matches!(
        run.charge_memory(100),
        Err(Error::LimitExceeded {
            resource: Resource::Memory,
            ..
        })
    ));
    run.uncharge_memory(1000);
    run.charge_memory(1024).unwrap();
    let p = run.try_start_process().unwrap();
    assert!(matches!(
        run.try_start_process(),
        Err(Error::LimitExceeded {
            resource: Resource::Processes,
            ..
        })
    ));
    assert_eq!(cgi.usage_subtree().processes, 1);
    drop(p);
    let _p = run.try_start_process().unwrap();
    assert_eq!(run.usage().procs_spawned, 2);
    run.set_kernel_memory(4096);
    run.set_kernel_memory(1000);
    assert_eq!(cgi.usage_subtree().kernel_memory_bytes, 1000);
}

#[test]
fn egress_is_rate_limited_by_every_limited_ancestor() {
    let registry = Registry::new();
    let root = registry.root();
    let class = child(&root, "class", &[("egress_bytes_per_sec", "1MB")]);
    let conn = child(&class, "conn", &[]);
    // The bucket starts full: a tenth of a second's worth.
    assert_eq!(conn.egress_grant(0, 1_000_000), 100_000);
    assert_eq!(conn.egress_grant(0, 10), 0);
    // 10 ms later, 10 kB more.
    assert_eq!(conn.egress_grant(10_000_000, 1_000_000), 10_000);
    // An unlimited container is never held back.
    let free = child(&root, "free", &[]);
    assert_eq!(free.egress_grant(0, 1 << 40), 1 << 40);
    assert!(!free.egress_limited() && conn.egress_limited() && class.egress_limited());
    assert_eq!(conn.egress_min_rate(), Some(1_000_000));
    // What was granted but not sent goes back, up to the bucket's size.
    conn.egress_refund(4_000);
    assert_eq!(conn.egress_grant(10_000_000, 1_000_000), 4_000);
    conn.egress_refund(1 << 30);
    assert_eq!(
        conn.egress_grant(10_000_000, 1 << 30),
        100_000,
        "capped at the bucket"
    );
}

#[test]
fn egress_limits_are_not_looked_for_until_one_is_set() {
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[]);
    assert!(!a.egress_limited());
    assert_eq!(a.egress_min_rate(), None);
    let mut attrs = a.attrs();
    attrs.set("egress_bytes_per_sec", "64KB").unwrap();
    root.set_attrs(&a, attrs).unwrap();
    let b = child(&a, "b", &[]);
    assert!(b.egress_limited());
    assert_eq!(b.egress_min_rate(), Some(64_000));
}

#[test]
fn watch_reports_attribute_and_parent_changes() {
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[]);
    let b = child(&root, "b", &[]);
    let wakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w2 = wakes.clone();
    let watch = registry.watch_with_waker(move || {
        w2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    watch.add(&a);
    root.update(&b, |x| x.set("priority", "9")).unwrap();
    assert!(
        watch.changed().is_empty(),
        "unwatched changes are not reported"
    );
    root.update(&a, |x| x.set("priority", "9")).unwrap();
    root.reparent(&a, Some(&b)).unwrap();
    assert_eq!(watch.changed(), vec![a.clone()], "each container once");
    assert_eq!(wakes.load(std::sync::atomic::Ordering::Relaxed), 2);
    watch.remove(a.id());
    root.update(&a, |x| x.set("priority", "8")).unwrap();
    assert!(watch.changed().is_empty());
}

#[test]
fn a_watch_read_late_reports_every_watched_container_rather_than_miss_one() {
    // A watch lists changes up to a bound; past it, it cannot tell which containers changed,
    // and holds no more (memory stays bounded however long nobody reads it).
    let registry = Registry::new();
    let root = registry.root();
    let (a, b, c) = (
        child(&root, "a", &[]),
        child(&root, "b", &[]),
        child(&root, "c", &[]),
    );
    let watch = registry.watch();
    watch.add(&a);
    watch.add(&b);
    watch.add(&c);
    for i in 0..5_000 {
        root.update(&c, |x| x.set("priority", &(1 + i % 100).to_string()))
            .unwrap();
    }
    assert_eq!(
        watch.changed(),
        vec![a, b, c.clone()],
        "all watched, in id order"
    );
    root.update(&c, |x| x.set("priority", "3")).unwrap();
    assert_eq!(watch.changed(), vec![c], "listed again after the read");
    assert!(watch.changed().is_empty());
}

#[test]
fn snapshot_is_the_subtree_in_creation_order() {
    let registry = Registry::new();
    let root = registry.root();
    let a = child(&root, "a", &[("share", "30%")]);
    let x = child(&a, "x", &[]);
    let y = child(&a, "y", &[]);
    x.account().add_requests(3);
    y.account().add_requests(4);
    let s = a.snapshot();
    assert_eq!(s.name, "a");
    assert_eq!(s.parent, Some(root.id()));
    assert_eq!(
        s.children
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["x", "y"]
    );
    assert_eq!(s.usage_subtree.requests, 7);
    assert_eq!(
        s.children[1].usage,
        Usage {
            requests: 4,
            ..Usage::default()
        }
    );
    assert_eq!(a.children(), vec![x, y]);
}

#[test]
fn concurrent_churn_loses_no_usage() {
    let registry = Registry::new();
    let root = registry.root();
    let class = child(&root, "class", &[]);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let class = class.clone();
            let root = root.clone();
            std::thread::spawn(move || {
                let mut keep = Vec::new();
                for i in 0..2000u64 {
                    let c = class.create_child("conn", Attributes::default()).unwrap();
                    c.account().add_cpu_ns(1);
                    if i % 3 == 0 {
                        let g = c.create_child("req", Attributes::default()).unwrap();
                        g.account().add_cpu_ns(2);
                        keep.push(g);
                    }
                    if i % 7 == t {
                        // Concurrent attribute changes and lookups of live containers.
                        root.update(&c, |a| a.set("priority", "7")).unwrap();
                        assert_eq!(root.lookup(c.id()).unwrap(), c);
                    }
                    if keep.len() > 50 {
                        keep.drain(..25);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let per_thread = 2000 + 2 * 667;
    assert_eq!(class.usage_subtree().cpu_ns, 4 * per_thread);
    assert_eq!(registry.len(), 2);
}
