//! Which cgroup hierarchies are mounted, with which controllers, and where this process sits
//! in each: discovered from `/proc/self/mountinfo` and `/proc/self/cgroup`.
//!
//! Three layouts are met in practice, and all three are supported:
//!
//! - **v2** (most distributions today): one `cgroup2` hierarchy, controllers enabled per level
//!   through `cgroup.subtree_control`;
//! - **v1**: one `cgroup` hierarchy per controller or group of controllers (`cpu,cpuacct`,
//!   `memory`, `pids`, ...);
//! - **hybrid** (these machines, and systemd's "hybrid" mode): v1 hierarchies for the
//!   controllers, plus a `cgroup2` hierarchy that holds membership only (no controllers, but
//!   `cgroup.kill`, `cgroup.freeze`, `cgroup.threads`, the core `cpu.stat` and
//!   `clone3(CLONE_INTO_CGROUP)`).
//!
//! The cgroupfs root is a parameter: [`Layout::parse`] rebases every mount point found under
//! the conventional `/sys/fs/cgroup` onto the root it is given, so tests can lay a fake
//! cgroupfs out in a temporary directory.
//!
//! ```
//! use rescon_linux::cgroup::{Controller, Layout, LayoutKind};
//! let mountinfo = "\
//! 32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
//! 35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
//! 41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
//! ";
//! let self_cgroup = "4:memory:/job/7\n1:cpu:/\n0::/\n";
//! let layout = Layout::parse(mountinfo, self_cgroup, "/sys/fs/cgroup".as_ref()).unwrap();
//! assert_eq!(layout.kind(), LayoutKind::Hybrid);
//! let mem = layout.controller(Controller::Memory).unwrap();
//! assert_eq!(mem.own_cgroup(), std::path::Path::new("/sys/fs/cgroup/memory/job/7"));
//! ```

use super::error::{Error, ErrorKind};
use super::parse;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where cgroup hierarchies are mounted by convention.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// The names the kernel gives v1 controllers (anything else in a v1 mount's superblock options
/// is an option, except `name=...`, which names a controller-less hierarchy).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
    "debug",
];

/// cgroup version of a hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// cgroup v1: one hierarchy per controller group.
    V1,
    /// cgroup v2: the unified hierarchy.
    V2,
}

/// The controllers rescon uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Controller {
    /// CPU weight, idle, bandwidth (`cpu.weight`/`cpu.shares`, `cpu.idle`, `cpu.max`/CFS).
    Cpu,
    /// CPU accounting (v1 `cpuacct`; v2 has it in the core `cpu.stat`).
    Cpuacct,
    /// Memory limit and usage.
    Memory,
    /// Process-count limit.
    Pids,
    /// Freezing (v1 `freezer`; v2 has it in the core `cgroup.freeze`).
    Freezer,
}

impl Controller {
    /// Every controller rescon uses.
    pub const ALL: [Controller; 5] = [
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Memory,
        Controller::Pids,
        Controller::Freezer,
    ];

    /// The kernel's name of the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Freezer => "freezer",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One mounted hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    version: Version,
    mount_point: PathBuf,
    controllers: Vec<String>,
    own_rel: String,
    own: PathBuf,
}

impl Hierarchy {
    /// v1 or v2.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Where the hierarchy is mounted (rebased onto the cgroupfs root in use).
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// v1: the controllers bound to the hierarchy (`cpu`, `name=systemd`). v2: the controllers
    /// available in this process's cgroup (its `cgroup.controllers`), when they were read.
    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }

    /// Whether the hierarchy has a controller.
    pub fn has(&self, name: &str) -> bool {
        self.controllers.iter().any(|c| c == name)
    }

    /// This process's cgroup in the hierarchy, as `/proc/self/cgroup` names it.
    pub fn own_relative(&self) -> &str {
        &self.own_rel
    }

    /// This process's cgroup directory.
    pub fn own_cgroup(&self) -> &Path {
        &self.own
    }

    /// A short label: `v2` or the v1 controller list (`cpu,cpuacct`).
    pub fn label(&self) -> String {
        match self.version {
            Version::V2 => "v2".to_string(),
            Version::V1 => self.controllers.join(","),
        }
    }
}

/// The shape of a layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutKind {
    /// No cgroup hierarchy is mounted (or none can be reached).
    None,
    /// v1 hierarchies only.
    V1,
    /// The unified hierarchy only.
    V2,
    /// v1 hierarchies and a unified hierarchy.
    Hybrid,
}

/// The cgroup hierarchies of this system, as seen from this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    hierarchies: Vec<Hierarchy>,
}

impl Layout {
    /// Reads `/proc/self/mountinfo` and `/proc/self/cgroup` and the v2 controllers available
    /// to this process.
    pub fn discover() -> Result<Layout, Error> {
        Layout::discover_at(Path::new(DEFAULT_ROOT))
    }

    /// As [`discover`](Layout::discover), with the hierarchies rebased onto `root` (a
    /// bind-mounted or test copy of the cgroup tree).
    pub fn discover_at(root: &Path) -> Result<Layout, Error> {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map_err(|e| Error::io(ErrorKind::Unavailable, "read", Path::new(p), e))
        };
        let mountinfo = read("/proc/self/mountinfo")?;
        let self_cgroup = read("/proc/self/cgroup")?;
        let mut layout = Layout::parse(&mountinfo, &self_cgroup, root)?;
        layout.read_v2_controllers();
        Ok(layout)
    }

    /// Builds the layout from the text of `mountinfo` and `/proc/self/cgroup`, rebasing mount
    /// points under `/sys/fs/cgroup` onto `root`. Pure: the v2 controllers are left empty
    /// (see [`read_v2_controllers`](Layout::read_v2_controllers)).
    ///
    /// A hierarchy this process has no line for in `self_cgroup`, or whose mount does not
    /// show this process's cgroup (a bind mount of another subtree), is left out: rescon can
    /// only nest its subtree where it can see its own cgroup.
    pub fn parse(mountinfo: &str, self_cgroup: &str, root: &Path) -> Result<Layout, Error> {
        let mounts = parse::cgroup_mounts(mountinfo).map_err(Error::parse)?;
        let lines = parse::proc_cgroup(self_cgroup).map_err(Error::parse)?;
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        let mut seen_dev: Vec<String> = Vec::new();
        for m in mounts {
            if seen_dev.contains(&m.dev) {
                continue;
            }
            let (version, controllers) = if m.fstype == "cgroup2" {
                (Version::V2, Vec::new())
            } else {
                let c: Vec<String> = m
                    .super_options
                    .iter()
                    .filter(|o| V1_CONTROLLERS.contains(&o.as_str()) || o.starts_with("name="))
                    .cloned()
                    .collect();
                (Version::V1, c)
            };
            let line = lines.iter().find(|l| match version {
                Version::V2 => l.hierarchy_id == 0 && l.controllers.is_empty(),
                Version::V1 => {
                    l.hierarchy_id != 0
                        && !l.controllers.is_empty()
                        && l.controllers.len() == controllers.len()
                        && l.controllers.iter().all(|c| controllers.contains(c))
                }
            });
            let Some(line) = line else { continue };
            // The mount shows the hierarchy from `m.root` down; our cgroup must be below it.
            let mount_root = m.root.trim_end_matches('/');
            let Some(below) = line.path.strip_prefix(mount_root) else {
                continue;
            };
            if !(below.is_empty() || below.starts_with('/')) {
                continue;
            }
            let mount_point = rebase(Path::new(&m.mount_point), root);
            let own = join_rel(&mount_point, below);
            seen_dev.push(m.dev.clone());
            hierarchies.push(Hierarchy {
                version,
                mount_point,
                controllers,
                own_rel: line.path.clone(),
                own,
            });
        }
        Ok(Layout { hierarchies })
    }

    /// Fills the v2 hierarchy's controllers from its `cgroup.controllers` in this process's
    /// cgroup. A file that cannot be read leaves the list empty (membership only).
    pub fn read_v2_controllers(&mut self) {
        for h in &mut self.hierarchies {
            if h.version == Version::V2 {
                h.controllers = std::fs::read_to_string(h.own.join("cgroup.controllers"))
                    .map(|t| parse::controllers(&t))
                    .unwrap_or_default();
            }
        }
    }

    /// Sets the v2 controllers as given (for layouts built by hand).
    pub fn set_v2_controllers(&mut self, controllers: &[&str]) {
        for h in &mut self.hierarchies {
            if h.version == Version::V2 {
                h.controllers = controllers.iter().map(|s| s.to_string()).collect();
            }
        }
    }

    /// Every usable hierarchy.
    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    /// The unified (v2) hierarchy, if mounted.
    pub fn v2(&self) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.version == Version::V2)
    }

    /// The index in [`hierarchies`](Layout::hierarchies) of the hierarchy that provides a
    /// controller: the v1 hierarchy it is bound to, else the v2 hierarchy if it offers it
    /// (the v2 core provides freezing and, through `cpu.stat`, CPU accounting).
    pub fn controller_index(&self, c: Controller) -> Option<usize> {
        if let Some(i) = self
            .hierarchies
            .iter()
            .position(|h| h.version == Version::V1 && h.has(c.name()))
        {
            return Some(i);
        }
        let v2 = self
            .hierarchies
            .iter()
            .position(|h| h.version == Version::V2)?;
        let h = &self.hierarchies[v2];
        let ok = match c {
            Controller::Freezer => true,
            // The core cpu.stat has usage_usec whether or not the cpu controller is on.
            Controller::Cpuacct => true,
            Controller::Cpu | Controller::Memory | Controller::Pids => h.has(c.name()),
        };
        ok.then_some(v2)
    }

    /// The hierarchy that provides a controller (see
    /// [`controller_index`](Layout::controller_index)).
    pub fn controller(&self, c: Controller) -> Option<&Hierarchy> {
        self.controller_index(c).map(|i| &self.hierarchies[i])
    }

    /// The hierarchies rescon creates its subtree in: the unified one (membership, kill,
    /// freeze) and every v1 hierarchy that holds a controller it uses.
    pub fn used_indices(&self) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        if let Some(i) = self
            .hierarchies
            .iter()
            .position(|h| h.version == Version::V2)
        {
            out.push(i);
        }
        for c in Controller::ALL {
            if let Some(i) = self.controller_index(c) {
                if !out.contains(&i) {
                    out.push(i);
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// The shape of the layout.
    pub fn kind(&self) -> LayoutKind {
        let v1 = self.hierarchies.iter().any(|h| h.version == Version::V1);
        let v2 = self.v2().is_some();
        match (v1, v2) {
            (false, false) => LayoutKind::None,
            (true, false) => LayoutKind::V1,
            (false, true) => LayoutKind::V2,
            (true, true) => LayoutKind::Hybrid,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}:", self.kind())?;
        for h in &self.hierarchies {
            write!(
                f,
                " [{} at {} (own {}){}]",
                h.label(),
                h.mount_point.display(),
                h.own_rel,
                if h.version == Version::V2 {
                    format!(" controllers: {}", h.controllers.join(" "))
                } else {
                    String::new()
                }
            )?;
        }
        Ok(())
    }
}

fn rebase(mount_point: &Path, root: &Path) -> PathBuf {
    let default = Path::new(DEFAULT_ROOT);
    if root == default {
        return mount_point.to_path_buf();
    }
    match mount_point.strip_prefix(default) {
        Ok(rest) => root.join(rest),
        Err(_) => mount_point.to_path_buf(),
    }
}

/// `base` joined with a cgroup path such as `/a/b` (or `/`, which is `base` itself).
pub(crate) fn join_rel(base: &Path, rel: &str) -> PathBuf {
    let mut p = base.to_path_buf();
    for part in rel.split('/').filter(|s| !s.is_empty()) {
        p.push(part);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::super::parse::fixtures::*;
    use super::*;

    const HYBRID_SELF: &str = "9:name=systemd:/\n8:pids:/\n6:freezer:/\n4:memory:/process_api/8f3b\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn hybrid_layout() {
        let l = Layout::parse(HYBRID_MOUNTINFO, HYBRID_SELF, Path::new(DEFAULT_ROOT)).unwrap();
        assert_eq!(l.kind(), LayoutKind::Hybrid);
        assert_eq!(l.hierarchies().len(), 8);
        let cpu = l.controller(Controller::Cpu).unwrap();
        assert_eq!(cpu.version(), Version::V1);
        assert_eq!(cpu.mount_point(), Path::new("/sys/fs/cgroup/cpu"));
        let acct = l.controller(Controller::Cpuacct).unwrap();
        assert_eq!(acct.mount_point(), Path::new("/sys/fs/cgroup/cpuacct"));
        let mem = l.controller(Controller::Memory).unwrap();
        assert_eq!(
            mem.own_cgroup(),
            Path::new("/sys/fs/cgroup/memory/process_api/8f3b")
        );
        assert_eq!(
            l.controller(Controller::Freezer).unwrap().version(),
            Version::V1
        );
        let v2 = l.v2().unwrap();
        assert_eq!(v2.own_cgroup(), Path::new("/sys/fs/cgroup/unified"));
        // v2 (membership), cpu, cpuacct, memory, freezer, pids; not cpuset nor systemd.
        let used: Vec<String> = l
            .used_indices()
            .into_iter()
            .map(|i| l.hierarchies()[i].label())
            .collect();
        assert_eq!(
            used,
            vec!["cpu", "cpuacct", "memory", "freezer", "pids", "v2"]
        );
    }

    #[test]
    fn v1_layout_comounted() {
        let l = Layout::parse(
            V1_MOUNTINFO,
            "5:pids:/system.slice/x.service\n4:memory:/system.slice/x.service\n3:cpu,cpuacct:/system.slice/x.service\n1:name=systemd:/system.slice/x.service\n",
            Path::new(DEFAULT_ROOT),
        )
        .unwrap();
        assert_eq!(l.kind(), LayoutKind::V1);
        let cpu = l.controller_index(Controller::Cpu).unwrap();
        assert_eq!(l.controller_index(Controller::Cpuacct), Some(cpu));
        assert_eq!(
            l.hierarchies()[cpu].own_cgroup(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct/system.slice/x.service")
        );
        // No v1 freezer and no v2: nothing can freeze.
        assert_eq!(l.controller_index(Controller::Freezer), None);
        assert_eq!(l.used_indices().len(), 3);
    }

    #[test]
    fn v2_layout_with_controllers_and_rebase() {
        let tmp = Path::new("/tmp/fake-cgroupfs");
        let mut l = Layout::parse(V2_MOUNTINFO, "0::/system.slice/rescon.service\n", tmp).unwrap();
        assert_eq!(l.kind(), LayoutKind::V2);
        let v2 = l.v2().unwrap();
        assert_eq!(v2.mount_point(), tmp);
        assert_eq!(
            v2.own_cgroup(),
            Path::new("/tmp/fake-cgroupfs/system.slice/rescon.service")
        );
        // Before the controllers are known, only the core features are there.
        assert_eq!(l.controller_index(Controller::Cpu), None);
        assert_eq!(l.controller_index(Controller::Freezer), Some(0));
        l.set_v2_controllers(&["cpu", "memory", "pids"]);
        assert_eq!(l.controller_index(Controller::Cpu), Some(0));
        assert_eq!(l.controller_index(Controller::Memory), Some(0));
        assert_eq!(l.used_indices(), vec![0]);
    }

    #[test]
    fn bind_mounted_subtree_and_missing_lines() {
        // A container runtime bind-mounts /docker/abc of the cpu hierarchy.
        let mi = "60 50 0:29 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n61 50 0:30 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let l = Layout::parse(
            mi,
            "1:cpu:/docker/abc/app\n2:memory:/elsewhere\n",
            Path::new(DEFAULT_ROOT),
        )
        .unwrap();
        assert_eq!(l.hierarchies().len(), 1, "memory cannot reach our cgroup");
        assert_eq!(
            l.hierarchies()[0].own_cgroup(),
            Path::new("/sys/fs/cgroup/cpu/app")
        );
        let none = Layout::parse(
            "1 0 0:1 / / rw - ext4 /dev/x rw\n",
            "0::/\n",
            Path::new(DEFAULT_ROOT),
        )
        .unwrap();
        assert_eq!(none.kind(), LayoutKind::None);
        assert!(none.used_indices().is_empty());
    }

    #[test]
    fn bad_text_is_an_error_naming_it() {
        let e = Layout::parse("garbage", "0::/\n", Path::new(DEFAULT_ROOT)).unwrap_err();
        assert!(e.to_string().contains("mountinfo"), "{e}");
    }
}
