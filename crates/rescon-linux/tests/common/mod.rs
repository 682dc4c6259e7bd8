//! Helpers shared by the cgroup kernel tests.
//!
//! Every test makes its own [`Manager`], whose subtree has a unique per-instance name (pid,
//! process start time and a counter), and whose `Drop` kills what is left and removes the
//! subtree, also when the test fails. Without the capability, a test skips (printing why)
//! unless `RESCON_REQUIRE_KERNEL=1`, in which case it fails.

#![allow(dead_code)]

use rescon::{Attributes, Container, Registry, Weight};
use rescon_linux::cgroup::{Config, Manager};
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether kernel tests must run (CI).
pub fn required() -> bool {
    std::env::var("RESCON_REQUIRE_KERNEL").is_ok_and(|v| v == "1")
}

/// The configuration of the tests: the subtree gets the largest weight, so that the
/// measurements hold on a machine that is busy with other work.
pub fn config() -> Config {
    Config {
        root_weight: Some(Weight::new(Weight::MAX).unwrap()),
        ..Config::default()
    }
}

/// A manager, or `None` (test skipped) where kernel enforcement is unavailable.
pub fn manager(registry: &Registry, test: &str) -> Option<Manager> {
    manager_with(registry, test, config())
}

pub fn manager_with(registry: &Registry, test: &str, config: Config) -> Option<Manager> {
    let probe = Manager::probe(&config);
    if let Some(e) = probe.error() {
        if required() {
            panic!("{test}: RESCON_REQUIRE_KERNEL=1 but kernel enforcement is unavailable: {e}");
        }
        eprintln!("{test}: skipped: {e}");
        return None;
    }
    match Manager::new(registry, config) {
        Ok(m) => Some(m),
        Err(e) => panic!("{test}: probe said available, but: {e}"),
    }
}

/// A kernel-enforced child of `parent` with extra attributes.
pub fn kernel_child(parent: &Container, name: &str, attrs: &[(&str, &str)]) -> Container {
    let mut a = Attributes::default();
    a.set("enforcement", "kernel").unwrap();
    for (k, v) in attrs {
        a.set(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
    }
    parent.create_child(name, a).unwrap()
}

/// Polls `f` every millisecond until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    f()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

/// The cgroup of a task in the hierarchy whose `/proc/<pid>/cgroup` line contains
/// `controller` (or `0::` for v2).
pub fn cgroup_of(pid: i32, controller: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    s.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let (_, ctl, path) = (it.next()?, it.next()?, it.next()?);
        let hit = if controller.is_empty() {
            ctl.is_empty()
        } else {
            ctl.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_string())
    })
}

/// Whether a directory exists.
pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// A shell loop that burns CPU until killed.
pub const BUSY: &str = "while :; do :; done";
