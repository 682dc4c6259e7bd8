//! The [`Manager`]: rescon's own cgroup subtree, the containers mirrored in it, live
//! attribute changes, usage sampling, thread binding and killing.

use super::error::{Error, ErrorKind};
use super::fs::{self, Fs};
use super::layout::{Controller, Layout, LayoutKind, Version, join_rel};
use super::map::{self, Bandwidth, Desired, Member};
use super::parse;
use super::spawn::{Command, Orphan};
use super::sys;
use rescon::{Container, ContainerId, Enforcement, Registry, SchedClass, Watch, Weight};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The name of the leaf cgroup that holds a container's own processes and threads, beside the
/// cgroups of its kernel-enforced children.
pub const LEAF: &str = "self";

static INSTANCE_SEQ: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state is kept consistent at every await point of a panic: a poisoned lock holds
    // data that is still usable (at worst a cache that causes one redundant write).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where rescon's subtree is made in each hierarchy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Parent {
    /// This process's own cgroup (as a delegated systemd unit wants: `Delegate=yes`).
    #[default]
    Own,
    /// The parent of this process's cgroup: under systemd with `DelegateSubgroup=` (v2), the
    /// process sits in a leaf of the unit's cgroup, and rescon's subtree goes beside it.
    OwnParent,
    /// A path relative to each hierarchy's root (`/` is the root itself).
    Path(PathBuf),
}

/// How rescon's subtree is typed in the unified (v2) hierarchy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum V2Mode {
    /// Domain cgroups: every controller (memory included) and `cgroup.kill` are available,
    /// but a thread cannot be moved away from its process's v2 cgroup, so thread binding works
    /// only where the CPU is controlled in v1 hierarchies (hybrid and v1 layouts).
    #[default]
    Domain,
    /// A threaded subtree: threads of this process can be bound to containers in v2
    /// (`cgroup.threads`), but domain controllers (memory) are not available in it and
    /// `cgroup.kill` is refused by the kernel (kill falls back to signalling every process).
    Threaded,
}

/// How a [`Manager`] is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// The subtree's name in each hierarchy. `None` (the default) makes one per instance,
    /// `<prefix>-<pid>-<start time>-<n>`, so that subtrees of dead instances can be
    /// recognised and removed. A configured name is locked (flock) while in use; a subtree of
    /// that name left by a dead instance is removed on start.
    pub name: Option<String>,
    /// The prefix of per-instance names, `rescon` by default.
    pub prefix: String,
    /// Where the subtree is made.
    pub parent: Parent,
    /// Where cgroup hierarchies are mounted (see [`Layout::parse`]).
    pub cgroupfs_root: PathBuf,
    /// A layout to use instead of discovering one.
    pub layout: Option<Layout>,
    /// How the subtree is typed in v2.
    pub v2_mode: V2Mode,
    /// The weight of rescon's whole subtree against its siblings (the other processes and
    /// cgroups under the parent). `None` leaves the kernel's default (100, or 1024 shares).
    pub root_weight: Option<Weight>,
    /// Whether to remove subtrees of dead instances on start (killing what they still hold).
    pub remove_stale: bool,
    /// How long [`Manager::kill`] and shutdown wait for processes to go away.
    pub kill_timeout: Duration,
    /// Whether this process moves itself into the leaf of the subtree's root in the unified
    /// (v2) hierarchy (`<parent>/<name>/self`). Needed when the process gives up root after
    /// start: the kernel lets an unprivileged process put a child into a v2 cgroup only if it
    /// may write `cgroup.procs` of the cgroup that holds both, which is then the subtree's
    /// root, handed to it by [`Manager::chown`]. The move also happens, whatever this says,
    /// when the parent is this process's own v2 cgroup and controllers must be enabled for
    /// its children (the kernel refuses while the parent holds a process: EBUSY).
    pub own_leaf: bool,
    #[cfg(test)]
    pub(crate) emulate: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: None,
            prefix: "rescon".to_string(),
            parent: Parent::Own,
            cgroupfs_root: PathBuf::from(super::layout::DEFAULT_ROOT),
            layout: None,
            v2_mode: V2Mode::Domain,
            root_weight: None,
            remove_stale: true,
            kill_timeout: Duration::from_secs(5),
            own_leaf: false,
            #[cfg(test)]
            emulate: false,
        }
    }
}

/// What [`Manager::probe`] found.
#[derive(Debug)]
pub struct Probe {
    layout: Option<Layout>,
    error: Option<Error>,
}

impl Probe {
    /// Whether kernel enforcement is available: a usable layout with a cpu controller, and
    /// permission to make cgroups where the subtree would go.
    pub fn available(&self) -> bool {
        self.error.is_none()
    }

    /// Why it is not available.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// The layout found, if any.
    pub fn layout(&self) -> Option<&Layout> {
        self.layout.as_ref()
    }
}

/// The outcome of [`Manager::start`].
#[derive(Debug)]
pub enum Start {
    /// Kernel enforcement is on.
    Kernel(Manager),
    /// Kernel enforcement is not available (the error says why) and the configuration does
    /// not require it: keep user-level containers only.
    UserOnly(Error),
}

/// What [`Manager::kill`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KillReport {
    /// Whether `cgroup.kill` (v2) was used.
    pub cgroup_kill: bool,
    /// Processes signalled one by one.
    pub signalled: usize,
    /// Rounds of the freeze-signal-thaw loop.
    pub rounds: usize,
}

/// Counters read from a container's cgroups, for its whole kernel subtree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// CPU time, nanoseconds (`cpuacct.usage`, or v2 `cpu.stat` `usage_usec`).
    pub cpu_ns: Option<u64>,
    /// Memory in use, bytes (`memory.current` or `memory.usage_in_bytes`).
    pub memory_bytes: Option<u64>,
    /// Processes (tasks in v1) alive (`pids.current`).
    pub processes: Option<u64>,
    /// Time throttled by the CPU limit, nanoseconds.
    pub throttled_ns: Option<u64>,
    /// Enforcement periods throttled.
    pub nr_throttled: Option<u64>,
}

/// What [`Manager::apply`] did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Containers whose attributes or parent changed.
    pub changed: usize,
    /// Containers whose cgroup moved (reparented, or their kernel parent came or went).
    pub moved: usize,
    /// Containers no longer mirrored (their enforcement became `user`).
    pub unmirrored: usize,
    /// What failed; everything else was applied.
    pub errors: Vec<Error>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Roles {
    cpu: Option<usize>,
    acct: Option<usize>,
    memory: Option<usize>,
    pids: Option<usize>,
    freezer: Option<usize>,
    v2: Option<usize>,
}

#[derive(Debug)]
struct Hier {
    version: Version,
    controllers: Vec<String>,
    /// Where the hierarchy is mounted.
    mount: PathBuf,
    parent_dir: PathBuf,
    root_dir: PathBuf,
    origin: PathBuf,
    /// v2: controllers to enable in `cgroup.subtree_control` of every inner cgroup.
    enable: Vec<&'static str>,
    threaded: bool,
    lock: Option<File>,
}

#[derive(Debug)]
struct Counter {
    file: File,
    path: PathBuf,
}

/// A container's counter files, kept open and read with pread.
#[derive(Debug, Default)]
struct Counters {
    cpu: Option<Counter>,
    cpu_is_usec: bool,
    throttle: Option<Counter>,
    mem: Option<Counter>,
}

/// The fds a child needs to join a container's cgroups, opened before it is cloned so that
/// the child itself only writes.
#[derive(Debug)]
pub(crate) struct SpawnFds {
    /// The v2 leaf directory, for `CLONE_INTO_CGROUP`.
    pub(crate) v2_dir: Option<File>,
    /// The v2 leaf's `cgroup.procs`, for kernels without `clone3`.
    pub(crate) v2_procs: Option<File>,
    /// `cgroup.procs` of the v1 leaves.
    pub(crate) v1_procs: Vec<File>,
    /// The paths of `v1_procs`, then of `v2_procs`, for error messages.
    pub(crate) paths: Vec<PathBuf>,
}

type Cache = HashMap<(usize, &'static str), String>;

#[derive(Debug)]
struct Node {
    c: Container,
    parent: Option<ContainerId>,
    children: Vec<ContainerId>,
    rel: PathBuf,
    leaf: bool,
    spawn: Option<Arc<SpawnFds>>,
    bind: Option<Arc<Vec<(File, PathBuf)>>>,
    ctr: Counters,
    last_cpu: u64,
    reported_cpu: u64,
    departed_cpu: u64,
    last_throttled: u64,
    last_mem: u64,
    written: Cache,
    leaf_written: Cache,
    /// The bandwidth in the cpu hierarchy now; `None` inside when unknown after a failure.
    bw: Option<Option<Bandwidth>>,
    /// Whether its share was fixed at the last write (fixed siblings make weights depend on
    /// each other).
    fixed: bool,
    notes: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<ContainerId, Node>,
    top: Vec<ContainerId>,
    root_leaf: bool,
    root_leaf_written: Cache,
    bound: HashMap<i32, ContainerId>,
    orphans: Vec<Orphan>,
    shut: bool,
    errors: Vec<Error>,
    /// CPU of a container's cgroup that is charged to other containers (see
    /// [`Manager::set_cpu_credit`]).
    credits: HashMap<ContainerId, CpuCredit>,
}

/// How much of a cgroup's CPU, in nanoseconds, was charged elsewhere: a monotone count read
/// at each sample, right after the cgroup's own counter.
#[derive(Clone)]
struct CpuCredit(crate::usermode::Credit);

impl fmt::Debug for CpuCredit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CpuCredit")
    }
}

#[derive(Debug, Default)]
struct WakeFlags {
    changed: bool,
    stop: bool,
}

/// How long the background thread gathers announced changes before applying them. Every
/// change to a container some scheduler holds is announced to the watch, whether mirrored or
/// not, and a busy server makes several per connection (rescon-httpd moves each connection's
/// container under its vhost): woken for each, this thread took a futex wake and two context
/// switches per connection on the server's CPU (`rescon-bench paper`, a connection per
/// request: 30,000 a second, 7% of the CPU in this thread alone). Gathered, it wakes at most
/// once per period; a change reaches the cgroups at most this much later.
const CHANGE_GATHER: Duration = Duration::from_millis(1);

#[derive(Debug, Default)]
struct Wake {
    flags: Mutex<WakeFlags>,
    cv: Condvar,
}

#[derive(Debug)]
pub(crate) struct Inner {
    fs: Fs,
    layout: Layout,
    hiers: Vec<Hier>,
    roles: Roles,
    name: String,
    root: Container,
    watch: Watch,
    wake: Arc<Wake>,
    state: Mutex<State>,
    kill_timeout: Duration,
    own_pid: i32,
    /// The hierarchy (v2) in which this process moved itself into the subtree root's leaf.
    own_leaf: Option<usize>,
}

/// rescon's cgroup subtree: mirrors containers with `enforcement = "kernel"` as cgroups,
/// applies their attributes, reports their usage, binds threads and spawns processes in them.
///
/// The manager creates one subtree in every hierarchy it uses (the unified one, and the v1
/// hierarchies of cpu, cpuacct, memory, pids and freezer) under its [`Parent`], and never
/// writes to a cgroup it did not create, with two exceptions it needs: adding the
/// controllers the subtree uses to the parent's `cgroup.subtree_control` (v2; never
/// removing any), and moving threads it bound back to their original cgroup. On shutdown
/// (explicit, or when dropped, even while unwinding from a panic) it kills what is left in
/// its subtree and removes every cgroup of it.
///
/// ```no_run
/// use rescon::{Attributes, Registry};
/// use rescon_linux::cgroup::{Config, Manager};
///
/// let registry = Registry::new();
/// let mut attrs = Attributes::default();
/// attrs.set("enforcement", "kernel")?;
/// attrs.set("cpu_limit", "30%")?;
/// let cgi = registry.root().create_child("cgi", attrs)?;
///
/// let manager = Manager::new(&registry, Config::default())?;
/// manager.attach(&cgi)?;
/// let mut child = manager.command(&cgi, "/usr/lib/cgi-bin/report").arg("--all").spawn()?;
/// let exit = child.wait()?;
/// println!("{} used {:?} of CPU", exit.status, cgi.usage().kernel_cpu_ns);
/// manager.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Manager {
    inner: Arc<Inner>,
    background: Mutex<Option<JoinHandle<()>>>,
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .take(32)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.trim_start_matches('.').to_string()
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != LEAF
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Unavailable, "name subtree")
            .value(name)
            .detail("a subtree name is one path component of letters, digits, '_', '-' and '.', not starting with '.'"))
    }
}

/// This process's start time, from `/proc/self/stat`.
fn own_start_time() -> Result<u64, Error> {
    let p = Path::new("/proc/self/stat");
    let s = fs::read(p)?;
    parse::proc_start_time(&s).map_err(|e| Error::parse_at(p, e))
}

/// Whether a per-instance name `<prefix>-<pid>-<start>-<n>` belongs to a process that is gone.
fn instance_is_dead(prefix: &str, name: &str) -> Option<bool> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let mut it = rest.split('-');
    let pid: u32 = it.next()?.parse().ok()?;
    let start: u64 = it.next()?.parse().ok()?;
    let _seq: u64 = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse::proc_start_time(&s).ok())
        == Some(start);
    Some(!alive)
}

fn open_lock(dir: &Path) -> Result<File, Error> {
    File::open(dir).map_err(|e| Error::io(ErrorKind::Io, "open subtree", dir, e))
}

/// Whether the flock on `dir` is free (taking it if so).
fn try_lock(f: &File, dir: &Path) -> Result<bool, Error> {
    sys::flock_try_exclusive(f.as_fd())
        .map_err(|e| Error::io(ErrorKind::Io, "lock subtree", dir, e))
}

impl Manager {
    /// Checks whether kernel enforcement is available with this configuration: discovers the
    /// layout, requires a cpu controller, and makes and removes a probe cgroup where the
    /// subtree would go in every hierarchy used. Leaves nothing behind.
    pub fn probe(config: &Config) -> Probe {
        let mut layout = match &config.layout {
            Some(l) => l.clone(),
            None => match Layout::discover_at(&config.cgroupfs_root) {
                Ok(l) => l,
                Err(e) => {
                    return Probe {
                        layout: None,
                        error: Some(e),
                    };
                }
            },
        };
        refresh_v2_controllers(&mut layout, &config.parent);
        let error = (|| {
            if layout.kind() == LayoutKind::None {
                return Err(Error::new(ErrorKind::Unavailable, "discover cgroups")
                    .path(&config.cgroupfs_root)
                    .detail(
                        "no cgroup hierarchy is mounted where this process can see its own cgroup",
                    ));
            }
            if layout.controller(Controller::Cpu).is_none() {
                return Err(Error::new(ErrorKind::Unavailable, "discover cgroups")
                    .path(&config.cgroupfs_root)
                    .detail(format!(
                        "no cpu controller is available to this process ({layout})"
                    )));
            }
            let n = INSTANCE_SEQ.fetch_add(1, Ordering::Relaxed);
            for i in layout.used_indices() {
                let h = &layout.hierarchies()[i];
                let parent = resolve_parent(h.mount_point(), h.own_cgroup(), &config.parent)?;
                let dir = parent.join(format!(
                    "{}-probe-{}-{n}",
                    config.prefix,
                    std::process::id()
                ));
                std::fs::create_dir(&dir).map_err(|e| {
                    Error::io(ErrorKind::Unavailable, "create probe cgroup", &dir, e)
                })?;
                std::fs::remove_dir(&dir)
                    .map_err(|e| Error::io(ErrorKind::Io, "remove probe cgroup", &dir, e))?;
            }
            Ok(())
        })()
        .err();
        Probe {
            layout: Some(layout),
            error,
        }
    }

    /// Starts kernel enforcement if available. If it is not and `required` is false, returns
    /// [`Start::UserOnly`] with the reason, for the runtime to log and carry on with
    /// user-level containers; if `required` (the configuration demands kernel enforcement),
    /// returns the error, for start-up to fail with it.
    pub fn start(registry: &Registry, config: Config, required: bool) -> Result<Start, Error> {
        match Manager::new(registry, config) {
            Ok(m) => Ok(Start::Kernel(m)),
            Err(e) if !required => Ok(Start::UserOnly(e)),
            Err(e) => Err(e),
        }
    }

    /// Creates the manager's subtree in every hierarchy used (after removing subtrees of dead
    /// instances, if configured) and starts watching `registry` for changes.
    pub fn new(registry: &Registry, config: Config) -> Result<Manager, Error> {
        #[cfg(test)]
        let fs = Fs {
            emulate: config.emulate,
        };
        #[cfg(not(test))]
        let fs = Fs::default();
        let mut layout = match &config.layout {
            Some(l) => l.clone(),
            None => Layout::discover_at(&config.cgroupfs_root)?,
        };
        refresh_v2_controllers(&mut layout, &config.parent);
        if layout.controller(Controller::Cpu).is_none() {
            return Err(Error::new(ErrorKind::Unavailable, "discover cgroups")
                .path(&config.cgroupfs_root)
                .detail(format!(
                    "no cpu controller is available to this process ({layout})"
                )));
        }
        let name = match &config.name {
            Some(n) => n.clone(),
            None => format!(
                "{}-{}-{}-{}",
                config.prefix,
                std::process::id(),
                own_start_time()?,
                INSTANCE_SEQ.fetch_add(1, Ordering::Relaxed)
            ),
        };
        check_name(&name)?;
        check_name(&config.prefix)?;
        let threaded = config.v2_mode == V2Mode::Threaded;

        let mut hiers: Vec<Hier> = Vec::new();
        let mut roles = Roles::default();
        for li in layout.used_indices() {
            let h = &layout.hierarchies()[li];
            let parent_dir = resolve_parent(h.mount_point(), h.own_cgroup(), &config.parent)?;
            let controllers = h.controllers().to_vec();
            let idx = hiers.len();
            let mut enable = Vec::new();
            for c in Controller::ALL {
                if layout.controller_index(c) != Some(li) {
                    continue;
                }
                let slot = match c {
                    Controller::Cpu => &mut roles.cpu,
                    Controller::Cpuacct => &mut roles.acct,
                    Controller::Memory => &mut roles.memory,
                    Controller::Pids => &mut roles.pids,
                    Controller::Freezer => &mut roles.freezer,
                };
                if h.version() == Version::V2 {
                    let offered = controllers.iter().any(|x| x == c.name());
                    match c {
                        Controller::Cpu | Controller::Pids if offered => enable.push(c.name()),
                        // Not a threaded controller: unavailable in a threaded subtree.
                        Controller::Memory if offered && !threaded => enable.push(c.name()),
                        Controller::Cpu | Controller::Pids | Controller::Memory => continue,
                        Controller::Cpuacct | Controller::Freezer => {}
                    }
                }
                *slot = Some(idx);
            }
            if h.version() == Version::V2 {
                roles.v2 = Some(idx);
            }
            hiers.push(Hier {
                version: h.version(),
                controllers,
                mount: h.mount_point().to_path_buf(),
                root_dir: parent_dir.join(&name),
                parent_dir,
                origin: h.own_cgroup().to_path_buf(),
                enable,
                threaded: threaded && h.version() == Version::V2,
                lock: None,
            });
        }
        if roles.cpu.is_none() {
            return Err(
                Error::new(ErrorKind::Unavailable, "discover cgroups").detail(format!(
                    "the cpu controller is not offered where the subtree would go ({layout})"
                )),
            );
        }

        // Remove stale subtrees, then make ours; on failure remove what was made.
        let mut made: Vec<PathBuf> = Vec::new();
        let mut own_leaf: Option<usize> = None;
        let result = (|| -> Result<(), Error> {
            for (hi, h) in hiers.iter_mut().enumerate() {
                if config.remove_stale {
                    remove_stale(&fs, h, &config.prefix, &name, config.kill_timeout)?;
                }
                if h.root_dir.exists() {
                    // A configured name: in use by a live instance, or left by a dead one.
                    let f = open_lock(&h.root_dir)?;
                    if !try_lock(&f, &h.root_dir)? {
                        return Err(Error::new(ErrorKind::InUse, "create subtree")
                            .path(&h.root_dir)
                            .detail("another live rescon instance holds this subtree; configure another name"));
                    }
                    drop(f);
                    remove_tree(&fs, h, &h.root_dir, config.kill_timeout)?;
                }
                let holds_us = h.parent_dir == h.origin && h.origin != h.mount;
                if h.version == Version::V2
                    && (config.own_leaf || (holds_us && !h.enable.is_empty()))
                {
                    // Out of the parent first, so that it may enable controllers for its
                    // children (no internal processes), into a cgroup of our own.
                    create_cgroup(&fs, h, &h.root_dir, false)?;
                    made.push(h.root_dir.clone());
                    let leaf = h.root_dir.join(LEAF);
                    create_cgroup(&fs, h, &leaf, false)?;
                    made.push(leaf.clone());
                    fs.write(&leaf, "cgroup.procs", &std::process::id().to_string())
                        .map_err(|e| {
                            let remedy = match e.kind() {
                                // EOPNOTSUPP: the leaf is "domain invalid", as every domain
                                // cgroup below a threaded one is.
                                ErrorKind::Topology => {
                                    ": the kernel takes no process into this cgroup, as the parent is in a threaded subtree (cgroup.type \"threaded\"): point [server] cgroup_parent at a domain cgroup (a systemd unit's own with Delegate=yes), or set [server] cgroup_v2_mode = \"threaded\" (no memory limits)"
                                }
                                _ => "",
                            };
                            e.detail(format!(
                                "moving the server into its own leaf, out of its parent cgroup{remedy}"
                            ))
                        })?;
                    own_leaf = Some(hi);
                    if !h.enable.is_empty() {
                        enable_in_parent(&fs, h)?;
                        let v: Vec<String> = h.enable.iter().map(|c| format!("+{c}")).collect();
                        fs.write(&h.root_dir, "cgroup.subtree_control", &v.join(" "))?;
                    }
                } else {
                    if h.version == Version::V2 && !h.enable.is_empty() {
                        enable_in_parent(&fs, h)?;
                    }
                    create_cgroup(&fs, h, &h.root_dir, true)?;
                    made.push(h.root_dir.clone());
                }
                let f = open_lock(&h.root_dir)?;
                if !try_lock(&f, &h.root_dir)? {
                    return Err(Error::new(ErrorKind::InUse, "lock subtree").path(&h.root_dir));
                }
                h.lock = Some(f);
            }
            if let (Some(w), Some(ci)) = (config.root_weight, roles.cpu) {
                let h = &hiers[ci];
                for (f, v) in map::cpu_knobs(&Desired::plain(w.get() as f64), h.version) {
                    if map::kernel_default(f) != Some(v.as_str()) {
                        fs.write(&h.root_dir, f, &v)?;
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            if let Some(hi) = own_leaf {
                let h = &hiers[hi];
                let _ = fs.write(&h.origin, "cgroup.procs", &std::process::id().to_string());
            }
            for dir in made.iter().rev() {
                let _ = fs.rmdir(dir);
            }
            return Err(e);
        }

        let wake = Arc::new(Wake::default());
        let w2 = wake.clone();
        // Only the first change since the background thread last looked wakes it: the
        // changes that come while it gathers them (see `CHANGE_GATHER`) cost no wake-up.
        let watch = registry.watch_with_waker(move || {
            let mut f = lock(&w2.flags);
            if !f.changed {
                f.changed = true;
                w2.cv.notify_one();
            }
        });
        Ok(Manager {
            inner: Arc::new(Inner {
                fs,
                layout,
                hiers,
                roles,
                name,
                root: registry.root(),
                watch,
                wake,
                state: Mutex::new(State::default()),
                kill_timeout: config.kill_timeout,
                own_pid: std::process::id() as i32,
                own_leaf,
            }),
            background: Mutex::new(None),
        })
    }

    /// The subtree's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The layout in use.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The subtree's root directory in every hierarchy used.
    pub fn subtree_dirs(&self) -> Vec<PathBuf> {
        self.inner
            .hiers
            .iter()
            .map(|h| h.root_dir.clone())
            .collect()
    }

    /// The cgroup this process sits in, in the unified hierarchy, if it moved itself into
    /// the subtree root's leaf (see [`Config::own_leaf`]).
    pub fn own_leaf(&self) -> Option<PathBuf> {
        self.inner
            .own_leaf
            .map(|h| self.inner.hiers[h].root_dir.join(LEAF))
    }

    /// Hands the subtree to `uid` and `gid` (as systemd does with a delegated cgroup): every
    /// directory and file of it in every hierarchy, so that after giving up root the process
    /// can still make, configure and remove its cgroups and spawn into them. Cgroups made
    /// later by the process belong to it anyway.
    pub fn chown(&self, uid: u32, gid: u32) -> Result<(), Error> {
        self.hand_over(uid, gid, || ())
    }

    /// [`chown`](Manager::chown), then `switch` (the change of user), with no cgroup made in
    /// between: no cgroup made by the background thread as root escapes the hand-over.
    pub fn hand_over<T>(&self, uid: u32, gid: u32, switch: impl FnOnce() -> T) -> Result<T, Error> {
        let _st = lock(&self.inner.state);
        self.chown_all(uid, gid)?;
        Ok(switch())
    }

    fn chown_all(&self, uid: u32, gid: u32) -> Result<(), Error> {
        for h in &self.inner.hiers {
            for dir in fs::walk(&h.root_dir)? {
                let entries = std::fs::read_dir(&dir)
                    .map_err(|e| Error::io(ErrorKind::Io, "list cgroup", &dir, e))?;
                let files = entries.flatten().map(|e| e.path()).filter(|p| !p.is_dir());
                for p in std::iter::once(dir.clone()).chain(files) {
                    std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(|e| {
                        Error::io(ErrorKind::PermissionDenied, "chown", &p, e)
                            .value(format!("{uid}:{gid}"))
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Mirrors a container with `enforcement = "kernel"` as a cgroup in every hierarchy used,
    /// nested under the cgroup of its nearest kernel-enforced ancestor (mirrored first if
    /// needed), applies its attributes and watches it for changes. Mirroring again does
    /// nothing. The manager keeps the container alive until it is detached or the manager
    /// shuts down.
    pub fn attach(&self, c: &Container) -> Result<(), Error> {
        let mut st = lock(&self.inner.state);
        self.inner.attach_locked(&mut st, c)
    }

    /// Mirrors every container with `enforcement = "kernel"` in the subtree of `top`, and
    /// returns how many were newly mirrored. Containers change enforcement rarely; call this
    /// after creating kernel-enforced containers in bulk, or from time to time.
    pub fn sync_tree(&self, top: &Container) -> Result<usize, Error> {
        let mut st = lock(&self.inner.state);
        let mut n = 0;
        let mut stack = vec![top.clone()];
        while let Some(c) = stack.pop() {
            if c.attrs().enforcement == Enforcement::Kernel && !st.nodes.contains_key(&c.id()) {
                self.inner.attach_locked(&mut st, &c)?;
                n += 1;
            }
            stack.extend(c.children());
        }
        Ok(n)
    }

    /// Stops mirroring a container: its kernel-enforced children move up to its kernel
    /// parent, threads of this process bound to it go back to their original cgroups, and its
    /// cgroups are removed. Fails with [`ErrorKind::Busy`] if other processes are still in
    /// it (kill them first with [`kill`](Manager::kill)).
    pub fn detach(&self, c: &Container) -> Result<(), Error> {
        let mut st = lock(&self.inner.state);
        if st.shut {
            return Err(Error::shut_down());
        }
        if !st.nodes.contains_key(&c.id()) {
            return Err(Error::not_mirrored(c.id()));
        }
        let parent = st.nodes[&c.id()].parent;
        self.inner.unmirror(&mut st, c.id(), false)?;
        let errs = self.inner.reconcile_group(&mut st, parent, None);
        errs.into_iter().next().map_or(Ok(()), Err)
    }

    /// The ids of the mirrored containers.
    pub fn mirrored(&self) -> Vec<ContainerId> {
        let st = lock(&self.inner.state);
        let mut v: Vec<_> = st.nodes.keys().copied().collect();
        v.sort();
        v
    }

    /// Applies pending changes of mirrored containers now: attributes to knobs, moves to the
    /// new place in the tree, enforcement changed to `user` (the cgroup goes away and its
    /// processes move to the kernel parent). The background thread
    /// ([`start_background`](Manager::start_background)) calls this whenever a change is
    /// announced.
    pub fn apply(&self) -> ApplyReport {
        self.inner.apply()
    }

    /// Reads every mirrored container's counters and reports what changed since the last
    /// sample: kernel CPU time as deltas into [`rescon::Usage::kernel_cpu_ns`] (each container
    /// gets its own part: its cgroup's total minus its kernel children's), throttled time into
    /// `throttled_ns`, memory into `kernel_memory_bytes`. Also reaps children whose handles
    /// were dropped before they exited. Returns the first error (the rest is still sampled).
    pub fn sample(&self) -> Result<(), Error> {
        let mut st = lock(&self.inner.state);
        let errs = self.inner.sample_locked(&mut st);
        errs.into_iter().next().map_or(Ok(()), Err)
    }

    /// Declares that part of `c`'s cgroup CPU is charged to other containers by the caller:
    /// `credit()` returns how much so far (nanoseconds, never decreasing), and the samples
    /// add to `c`'s `kernel_cpu_ns` only its cgroup's CPU beyond that. The cgroup's counter
    /// is read first and `credit` right after, so CPU charged elsewhere between the two is
    /// never reported twice; reports stay monotone (a credit ahead of the counter holds `c`'s
    /// usage still until the counter passes it). `credit` runs under the manager's lock: it
    /// must not call the manager. Used by a FastCGI pool whose workers' CPU is charged per
    /// request.
    pub fn set_cpu_credit(&self, c: &Container, credit: crate::usermode::Credit) {
        lock(&self.inner.state)
            .credits
            .insert(c.id(), CpuCredit(credit));
    }

    /// Reads a mirrored container's counters (for its whole kernel subtree).
    pub fn stats(&self, c: &Container) -> Result<KernelStats, Error> {
        let st = lock(&self.inner.state);
        let n = st
            .nodes
            .get(&c.id())
            .ok_or_else(|| Error::not_mirrored(c.id()))?;
        self.inner.stats_of(n)
    }

    /// What the kernel does not enforce for a container in this layout (a class above normal,
    /// a memory limit without a memory controller, a missing `cpu.idle` ...).
    pub fn notes(&self, c: &Container) -> Vec<String> {
        let st = lock(&self.inner.state);
        st.nodes
            .get(&c.id())
            .map(|n| n.notes.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The directory of a mirrored container's cgroup in the hierarchy that provides
    /// `controller`.
    pub fn cgroup_dir(&self, c: &Container, controller: Controller) -> Option<PathBuf> {
        let st = lock(&self.inner.state);
        let n = st.nodes.get(&c.id())?;
        let h = self.inner.role(controller)?;
        Some(self.inner.hiers[h].root_dir.join(&n.rel))
    }

    /// The directories of a mirrored container's cgroup in every hierarchy used.
    pub fn cgroup_dirs(&self, c: &Container) -> Vec<PathBuf> {
        let st = lock(&self.inner.state);
        match st.nodes.get(&c.id()) {
            Some(n) => self
                .inner
                .hiers
                .iter()
                .map(|h| h.root_dir.join(&n.rel))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Reads a knob of a mirrored container's cgroup (for instance `cpu.shares`), trimmed.
    pub fn read_knob(
        &self,
        c: &Container,
        controller: Controller,
        file: &str,
    ) -> Result<String, Error> {
        let dir = self
            .cgroup_dir(c, controller)
            .ok_or_else(|| Error::not_mirrored(c.id()))?;
        fs::read(&dir.join(file)).map(|s| s.trim().to_string())
    }

    /// Binds the calling thread to a container's cgroups (mirroring the container if
    /// needed): its CPU is then charged to and limited by the container in the kernel.
    ///
    /// Moving a thread between cgroups costs 7-15 us back to back but up to 9 ms when moves
    /// are spaced out (an RCU grace period under a global lock; see shared/anchors.md), so bind
    /// dedicated threads once (a blocking pool per kernel container, a worker per class),
    /// never per connection or per request.
    ///
    /// The thread goes to the container's own-work leaf in the cpu and cpuacct hierarchies
    /// (v1 `tasks`) and, with [`V2Mode::Threaded`], in the unified hierarchy
    /// (`cgroup.threads`). Memory and process counts are per process and are not rebound.
    pub fn bind_current_thread(&self, c: &Container) -> Result<(), Error> {
        self.bind_thread(sys::gettid(), c)
    }

    /// Binds a thread of this process (by tid) to a container's cgroups; see
    /// [`bind_current_thread`](Manager::bind_current_thread).
    pub fn bind_thread(&self, tid: i32, c: &Container) -> Result<(), Error> {
        let targets = {
            let mut st = lock(&self.inner.state);
            self.inner.attach_locked(&mut st, c)?;
            self.inner.ensure_leaf(&mut st, Some(c.id()))?;
            let t = self.inner.bind_files(&mut st, c.id())?;
            st.bound.insert(tid, c.id());
            t
        };
        let tid = tid.to_string();
        for (f, path) in targets.iter() {
            write_file(f, path, &tid)?;
        }
        Ok(())
    }

    /// Moves a bound thread back to the cgroups it came from (this process's own).
    pub fn unbind_thread(&self, tid: i32) -> Result<(), Error> {
        let mut st = lock(&self.inner.state);
        st.bound.remove(&tid);
        self.inner.unbind_raw(tid)
    }

    /// Unbinds the calling thread.
    pub fn unbind_current_thread(&self) -> Result<(), Error> {
        self.unbind_thread(sys::gettid())
    }

    /// Binds a thread of another process (a holder of the container's handle, see
    /// `rescon-handle`) to a container's cgroups, as [`bind_thread`](Manager::bind_thread)
    /// does for this process's threads. The thread is not moved back by
    /// [`unbind_thread`](Manager::unbind_thread) or at shutdown: like a process spawned in the
    /// container, it belongs to it now (killed with it at shutdown; while it is there the
    /// container cannot be detached).
    pub fn bind_foreign_thread(&self, tid: i32, c: &Container) -> Result<(), Error> {
        let targets = {
            let mut st = lock(&self.inner.state);
            if st.shut {
                return Err(Error::shut_down());
            }
            self.inner.attach_locked(&mut st, c)?;
            self.inner.ensure_leaf(&mut st, Some(c.id()))?;
            self.inner.bind_files(&mut st, c.id())?
        };
        let tid = tid.to_string();
        for (f, path) in targets.iter() {
            write_file(f, path, &tid)?;
        }
        Ok(())
    }

    /// Moves another process, every thread of it, into a container's cgroups in every
    /// hierarchy (its `cgroup.procs`), as if it had been spawned there: its CPU, memory and
    /// process count are the container's from now on, and so are the children it forks. It is
    /// not counted against the model's `max_processes` (it was not spawned by this manager);
    /// the kernel's `pids.max` counts it.
    pub fn bind_process(&self, pid: i32, c: &Container) -> Result<(), Error> {
        if self.inner.is_shut() {
            return Err(Error::shut_down());
        }
        let fds = self.inner.prepare_spawn(c)?;
        let v = pid.to_string();
        for (f, path) in fds.v1_procs.iter().zip(&fds.paths) {
            write_file(f, path, &v)?;
        }
        if let (Some(f), Some(path)) = (&fds.v2_procs, fds.paths.last()) {
            write_file(f, path, &v)?;
        }
        Ok(())
    }

    /// A command to run in a container's cgroups (see [`Command`]).
    pub fn command(&self, c: &Container, program: impl AsRef<OsStr>) -> Command {
        Command::new(self.inner.clone(), c.clone(), program.as_ref())
    }

    /// Kills every process in a container's cgroups and those of its kernel descendants, and
    /// returns once none is left (or fails with [`ErrorKind::Timeout`]).
    ///
    /// On v2 in domain mode `cgroup.kill` does it atomically (forks racing the kill are
    /// caught by the kernel). Otherwise, or for what is left in v1 hierarchies, each round
    /// freezes the cgroups (so nothing can fork), signals every process with `SIGKILL`, thaws
    /// them so they can die, and the rounds repeat until the cgroups are empty. Threads of
    /// this process bound to the container are never signalled (they would take the whole
    /// process with them): they stay bound.
    pub fn kill(&self, c: &Container) -> Result<KillReport, Error> {
        let dirs = {
            let st = lock(&self.inner.state);
            if st.shut {
                return Err(Error::shut_down());
            }
            let n = st
                .nodes
                .get(&c.id())
                .ok_or_else(|| Error::not_mirrored(c.id()))?;
            self.inner.dirs_of(&n.rel)
        };
        let report = self.inner.kill_dirs(&dirs);
        let mut st = lock(&self.inner.state);
        // The freeze state was changed under the cache's feet: rewrite what is desired.
        for n in st.nodes.values_mut() {
            if let Some(h) = self.inner.roles.freezer {
                n.written
                    .remove(&(h, map::freeze_knob(false, self.inner.hiers[h].version).0));
            }
        }
        let errs = self.inner.reconcile(&mut st);
        let report = report?;
        errs.into_iter().next().map_or(Ok(report), Err)
    }

    /// Starts a background thread that applies changes once they are announced (the watch's
    /// waker wakes it; it gathers what comes within a millisecond, `CHANGE_GATHER`, and
    /// applies it at once) and samples usage every `interval`. Errors it meets are kept
    /// for [`take_errors`](Manager::take_errors). Starting it again does nothing.
    pub fn start_background(&self, interval: Duration) -> Result<(), Error> {
        let mut bg = lock(&self.background);
        if bg.is_some() {
            return Ok(());
        }
        if lock(&self.inner.state).shut {
            return Err(Error::shut_down());
        }
        let inner = self.inner.clone();
        let interval = interval.max(Duration::from_millis(1));
        let handle = std::thread::Builder::new()
            .name("rescon-cgroup".into())
            .spawn(move || inner.background(interval))
            .map_err(|e| Error::new(ErrorKind::Io, "start background thread").source_err(e))?;
        *bg = Some(handle);
        Ok(())
    }

    /// Errors the background thread met since the last call.
    pub fn take_errors(&self) -> Vec<Error> {
        std::mem::take(&mut lock(&self.inner.state).errors)
    }

    /// Stops the background thread, moves bound threads back to their original cgroups,
    /// kills every process left in the subtree, reaps children whose handles were dropped, and
    /// removes every cgroup of the subtree. Idempotent; also run on drop. Returns the first
    /// error met (it still goes as far as it can).
    pub fn shutdown(&self) -> Result<(), Error> {
        {
            let mut f = lock(&self.inner.wake.flags);
            f.stop = true;
            self.inner.wake.cv.notify_all();
        }
        if let Some(h) = lock(&self.background).take() {
            let _ = h.join();
        }
        self.inner.shutdown()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Reads the v2 controllers offered where the subtree goes (the parent's
/// `cgroup.controllers`, which may differ from this process's own cgroup's).
fn refresh_v2_controllers(layout: &mut Layout, parent: &Parent) {
    let Some(v2) = layout.v2() else { return };
    let Ok(dir) = resolve_parent(v2.mount_point(), v2.own_cgroup(), parent) else {
        return;
    };
    if let Ok(t) = std::fs::read_to_string(dir.join("cgroup.controllers")) {
        let c = parse::controllers(&t);
        layout.set_v2_controllers(&c.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

fn resolve_parent(mount: &Path, own: &Path, parent: &Parent) -> Result<PathBuf, Error> {
    let p = match parent {
        Parent::Own => own.to_path_buf(),
        Parent::OwnParent => {
            if own == mount {
                return Err(Error::new(ErrorKind::Unavailable, "find parent cgroup")
                    .path(own)
                    .detail(
                        "this process is in the root cgroup, which has no parent: set [server] cgroup_parent = \"own\" (Parent::Own)",
                    ));
            }
            own.parent().unwrap_or(mount).to_path_buf()
        }
        Parent::Path(p) => join_rel(mount, &p.to_string_lossy()),
    };
    if !p.is_dir() {
        return Err(Error::new(ErrorKind::Unavailable, "find parent cgroup")
            .path(&p)
            .detail("the parent cgroup does not exist"));
    }
    Ok(p)
}

/// Adds the controllers the subtree needs to the parent's `cgroup.subtree_control`.
fn enable_in_parent(fs: &Fs, h: &Hier) -> Result<(), Error> {
    let cur = std::fs::read_to_string(h.parent_dir.join("cgroup.subtree_control"))
        .map(|t| parse::controllers(&t))
        .unwrap_or_default();
    let missing: Vec<String> = h
        .enable
        .iter()
        .filter(|c| !cur.iter().any(|x| x == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs.write(&h.parent_dir, "cgroup.subtree_control", &missing.join(" "))
        .map_err(|e| match e.kind() {
            ErrorKind::Busy => e.detail(
                "the parent cgroup holds processes other than this server, so the kernel will not enable domain controllers (memory) for its children: give the server a cgroup of its own (a systemd unit with Delegate=yes, as deploy/rescon-httpd.service; docker run --cgroupns=private), or point [server] cgroup_parent at an empty delegated cgroup, or set [server] cgroup_v2_mode = \"threaded\" (no memory limits)",
            ),
            _ => e,
        })
}

/// Makes a cgroup directory of rescon's subtree in `h`; `inner` cgroups get the subtree's
/// controllers enabled for their children (v2), leaves do not.
fn create_cgroup(fs: &Fs, h: &Hier, dir: &Path, inner: bool) -> Result<(), Error> {
    let files = fs::emulated_files(h.version, &h.controllers);
    fs.mkdir(dir, &files)?;
    let setup = (|| {
        if h.version == Version::V2 {
            if h.threaded {
                fs.write(dir, "cgroup.type", "threaded")?;
            }
            if inner && !h.enable.is_empty() {
                let v: Vec<String> = h.enable.iter().map(|c| format!("+{c}")).collect();
                fs.write(dir, "cgroup.subtree_control", &v.join(" "))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = setup {
        let _ = fs.rmdir(dir);
        return Err(e);
    }
    Ok(())
}

/// The file that lists what is in a cgroup of `h`: `cgroup.procs`, or `cgroup.threads` in a
/// threaded v2 cgroup (where `cgroup.procs` cannot be read).
fn members_file(h: &Hier) -> &'static str {
    if h.threaded {
        "cgroup.threads"
    } else {
        "cgroup.procs"
    }
}

/// Removes subtrees of dead instances from the parent directory of `h`.
fn remove_stale(
    fs: &Fs,
    h: &Hier,
    prefix: &str,
    ours: &str,
    timeout: Duration,
) -> Result<(), Error> {
    for dir in fs::subdirs(&h.parent_dir)? {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name == ours || instance_is_dead(prefix, name) != Some(true) {
            continue;
        }
        // The owner is gone; the lock tells whether some other process adopted it.
        let f = open_lock(&dir)?;
        if try_lock(&f, &dir)? {
            drop(f);
            remove_tree(fs, h, &dir, timeout)?;
        }
    }
    Ok(())
}

/// Kills what is left in a subtree of `h` and removes every cgroup in it, children first.
fn remove_tree(fs: &Fs, h: &Hier, dir: &Path, timeout: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    let own = std::process::id() as i32;
    loop {
        let mut pids = Vec::new();
        for d in fs::walk(dir)? {
            pids.extend(fs::pids(&d, members_file(h)).unwrap_or_default());
        }
        pids.retain(|p| *p != own);
        if pids.is_empty() || fs.emulate {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::new(ErrorKind::Timeout, "empty stale subtree")
                .path(dir)
                .detail(format!("processes {pids:?} did not exit")));
        }
        if h.version == Version::V2 && !h.threaded && fs.exists(dir, "cgroup.kill") {
            let _ = fs.write(dir, "cgroup.kill", "1");
        }
        for p in pids {
            let _ = sys::kill(p, libc::SIGKILL);
        }
        // A frozen v1 cgroup cannot die: thaw what rescon may have frozen.
        for d in fs::walk(dir)? {
            if fs.exists(&d, "freezer.state") {
                let _ = fs.write(&d, "freezer.state", "THAWED");
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut all = fs::walk(dir)?;
    all.reverse();
    for d in all {
        fs.rmdir(&d)?;
    }
    Ok(())
}

impl Inner {
    fn role(&self, c: Controller) -> Option<usize> {
        match c {
            Controller::Cpu => self.roles.cpu,
            Controller::Cpuacct => self.roles.acct,
            Controller::Memory => self.roles.memory,
            Controller::Pids => self.roles.pids,
            Controller::Freezer => self.roles.freezer,
        }
    }

    fn dirs_of(&self, rel: &Path) -> Vec<(usize, PathBuf)> {
        self.hiers
            .iter()
            .enumerate()
            .map(|(i, h)| (i, h.root_dir.join(rel)))
            .collect()
    }

    /// Where threads are bound: (hierarchy, file).
    fn thread_hiers(&self) -> Result<Vec<(usize, &'static str)>, Error> {
        let mut out = Vec::new();
        for (i, h) in self.hiers.iter().enumerate() {
            match h.version {
                Version::V1 if Some(i) == self.roles.cpu || Some(i) == self.roles.acct => {
                    out.push((i, "tasks"))
                }
                Version::V2 if h.threaded => out.push((i, "cgroup.threads")),
                Version::V2 if Some(i) == self.roles.cpu => {
                    return Err(Error::new(ErrorKind::Topology, "bind thread")
                        .path(&h.root_dir)
                        .detail("the cpu controller is in cgroup v2, where a thread can only move within a threaded subtree: use V2Mode::Threaded to bind threads (it gives up memory limits and cgroup.kill in v2)"));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    fn unbind_raw(&self, tid: i32) -> Result<(), Error> {
        let mut first = None;
        for (h, file) in self.thread_hiers()? {
            let dir = &self.hiers[h].origin;
            match self.fs.write(dir, file, &tid.to_string()) {
                Ok(()) => {}
                // The thread has exited.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The nearest kernel-enforced ancestor of `c` (mirroring it if needed), or `None` for
    /// the subtree root.
    fn mirror_parent(&self, st: &mut State, c: &Container) -> Result<Option<ContainerId>, Error> {
        let mut cur = c.parent_id();
        let mut guard = 0;
        while let Some(id) = cur {
            guard += 1;
            if guard > 10_000 {
                break;
            }
            if st.nodes.contains_key(&id) {
                return Ok(Some(id));
            }
            let Ok(anc) = self.root.lookup(id) else {
                return Ok(None);
            };
            if anc.attrs().enforcement == Enforcement::Kernel {
                self.attach_locked(st, &anc)?;
                return Ok(Some(id));
            }
            cur = anc.parent_id();
        }
        Ok(None)
    }

    fn rel_for(&self, st: &State, parent: Option<ContainerId>, c: &Container) -> PathBuf {
        let name = format!("c{}-{}", c.id(), sanitize(c.name()));
        match parent {
            Some(p) => st.nodes[&p].rel.join(name),
            None => PathBuf::from(name),
        }
    }

    fn attach_locked(&self, st: &mut State, c: &Container) -> Result<(), Error> {
        if st.shut {
            return Err(Error::shut_down());
        }
        if st.nodes.contains_key(&c.id()) {
            return Ok(());
        }
        if c.attrs().enforcement != Enforcement::Kernel {
            return Err(Error::new(ErrorKind::NotKernel, "mirror container").detail(format!(
                "container {} ({}) has enforcement = \"user\": set enforcement = \"kernel\" to mirror it as a cgroup",
                c.id(),
                c.name()
            )));
        }
        let parent = self.mirror_parent(st, c)?;
        let rel = self.rel_for(st, parent, c);
        self.make_dirs(&rel, false)?;
        let ctr = match self.open_counters(&rel) {
            Ok(c) => c,
            Err(e) => {
                self.remove_dirs(&rel, false);
                return Err(e);
            }
        };
        let node = Node {
            c: c.clone(),
            parent,
            children: Vec::new(),
            rel,
            leaf: false,
            spawn: None,
            bind: None,
            ctr,
            last_cpu: 0,
            reported_cpu: 0,
            departed_cpu: 0,
            last_throttled: 0,
            last_mem: 0,
            written: Cache::new(),
            leaf_written: Cache::new(),
            bw: Some(None),
            fixed: false,
            notes: BTreeSet::new(),
        };
        match parent {
            Some(p) => st
                .nodes
                .get_mut(&p)
                .expect("parent mirrored")
                .children
                .push(c.id()),
            None => st.top.push(c.id()),
        }
        st.nodes.insert(c.id(), node);
        self.watch.add(c);
        let errs = self.reconcile_group(st, parent, Some(c.id()));
        errs.into_iter().next().map_or(Ok(()), Err)
    }

    /// Makes a container's directory (and its leaf, if `leaf`) in every hierarchy; on failure
    /// removes what it made.
    fn make_dirs(&self, rel: &Path, leaf: bool) -> Result<(), Error> {
        let mut made: Vec<PathBuf> = Vec::new();
        for h in &self.hiers {
            let dir = h.root_dir.join(rel);
            let r = create_cgroup(&self.fs, h, &dir, true).and_then(|()| {
                made.push(dir.clone());
                if leaf {
                    create_cgroup(&self.fs, h, &dir.join(LEAF), false)?;
                    made.push(dir.join(LEAF));
                }
                Ok(())
            });
            if let Err(e) = r {
                for d in made.iter().rev() {
                    let _ = self.fs.rmdir(d);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn remove_dirs(&self, rel: &Path, leaf: bool) -> Vec<Error> {
        let mut errs = Vec::new();
        for h in &self.hiers {
            let dir = h.root_dir.join(rel);
            if leaf {
                if let Err(e) = self.fs.rmdir(&dir.join(LEAF)) {
                    errs.push(e);
                }
            }
            if let Err(e) = self.fs.rmdir(&dir) {
                errs.push(e);
            }
        }
        errs
    }

    fn open_counters(&self, rel: &Path) -> Result<Counters, Error> {
        let mut ctr = Counters::default();
        if let Some(h) = self.roles.acct {
            let hier = &self.hiers[h];
            let (file, usec) = match hier.version {
                Version::V1 => ("cpuacct.usage", false),
                Version::V2 => ("cpu.stat", true),
            };
            let path = hier.root_dir.join(rel).join(file);
            ctr.cpu = Some(Counter {
                file: fs::open_counter(&path)?,
                path,
            });
            ctr.cpu_is_usec = usec;
        }
        if let Some(h) = self.roles.cpu {
            let path = self.hiers[h].root_dir.join(rel).join("cpu.stat");
            ctr.throttle = fs::open_counter(&path)
                .ok()
                .map(|file| Counter { file, path });
        }
        if let Some(h) = self.roles.memory {
            let hier = &self.hiers[h];
            let file = match hier.version {
                Version::V1 => "memory.usage_in_bytes",
                Version::V2 => "memory.current",
            };
            let path = hier.root_dir.join(rel).join(file);
            ctr.mem = Some(Counter {
                file: fs::open_counter(&path)?,
                path,
            });
        }
        Ok(ctr)
    }

    /// Makes the own-work leaf of a container (or of the subtree root, `None`).
    fn ensure_leaf(&self, st: &mut State, id: Option<ContainerId>) -> Result<(), Error> {
        let (has, rel) = match id {
            Some(id) => {
                let n = st.nodes.get(&id).ok_or_else(|| Error::not_mirrored(id))?;
                (n.leaf, n.rel.clone())
            }
            None => (st.root_leaf, PathBuf::new()),
        };
        if has {
            return Ok(());
        }
        let mut made: Vec<PathBuf> = Vec::new();
        for (hi, h) in self.hiers.iter().enumerate() {
            let dir = h.root_dir.join(&rel).join(LEAF);
            if id.is_none() && self.own_leaf == Some(hi) {
                // Made at start, with this process in it.
                continue;
            }
            if let Err(e) = create_cgroup(&self.fs, h, &dir, false) {
                for d in made.iter().rev() {
                    let _ = self.fs.rmdir(d);
                }
                return Err(e);
            }
            made.push(dir);
        }
        match id {
            Some(id) => st.nodes.get_mut(&id).expect("checked").leaf = true,
            None => st.root_leaf = true,
        }
        // The leaf joins its owner's children in the weight computation.
        let errs = self.reconcile_group(st, id, None);
        errs.into_iter().next().map_or(Ok(()), Err)
    }

    /// The files a thread is bound through (kept open per container).
    fn bind_files(
        &self,
        st: &mut State,
        id: ContainerId,
    ) -> Result<Arc<Vec<(File, PathBuf)>>, Error> {
        let targets = self.thread_hiers()?;
        let n = st
            .nodes
            .get_mut(&id)
            .ok_or_else(|| Error::not_mirrored(id))?;
        if let Some(b) = &n.bind {
            return Ok(b.clone());
        }
        let mut files = Vec::new();
        for (h, file) in targets {
            let path = self.hiers[h].root_dir.join(&n.rel).join(LEAF).join(file);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(ErrorKind::Io, "open for binding", &path, e))?;
            files.push((f, path));
        }
        let files = Arc::new(files);
        n.bind = Some(files.clone());
        Ok(files)
    }

    pub(crate) fn prepare_spawn(&self, c: &Container) -> Result<Arc<SpawnFds>, Error> {
        let mut st = lock(&self.state);
        self.attach_locked(&mut st, c)?;
        self.ensure_leaf(&mut st, Some(c.id()))?;
        let n = st.nodes.get_mut(&c.id()).expect("attached");
        if let Some(s) = &n.spawn {
            return Ok(s.clone());
        }
        let mut fds = SpawnFds {
            v2_dir: None,
            v2_procs: None,
            v1_procs: Vec::new(),
            paths: Vec::new(),
        };
        let mut v2_path = None;
        for h in &self.hiers {
            let dir = h.root_dir.join(&n.rel).join(LEAF);
            let procs = dir.join("cgroup.procs");
            let open_w = |p: &Path| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(|e| Error::io(ErrorKind::Io, "open for spawn", p, e))
            };
            match h.version {
                Version::V1 => {
                    fds.v1_procs.push(open_w(&procs)?);
                    fds.paths.push(procs);
                }
                Version::V2 => {
                    fds.v2_dir = Some(
                        File::open(&dir)
                            .map_err(|e| Error::io(ErrorKind::Io, "open for spawn", &dir, e))?,
                    );
                    fds.v2_procs = Some(open_w(&procs)?);
                    v2_path = Some(procs);
                }
            }
        }
        fds.paths.extend(v2_path);
        let fds = Arc::new(fds);
        n.spawn = Some(fds.clone());
        Ok(fds)
    }

    /// Records a child's exit: samples the cgroups so the container's kernel CPU is up to date,
    /// or, where no cgroup counts CPU, adds the child's own rusage.
    pub(crate) fn after_exit(&self, c: &Container, usage: &sys::ChildUsage) {
        let mut st = lock(&self.state);
        if self.roles.acct.is_some() && st.nodes.contains_key(&c.id()) {
            let errs = self.sample_subtree(&mut st, c.id());
            st.errors.extend(errs);
        } else {
            c.account()
                .add_kernel_cpu_ns((usage.user_us + usage.system_us).saturating_mul(1000));
        }
    }

    pub(crate) fn adopt(&self, o: Orphan) {
        lock(&self.state).orphans.push(o);
    }

    /// Whether some cgroup counts CPU time (else exits add the child's rusage).
    pub(crate) fn counts_cpu(&self) -> bool {
        self.roles.acct.is_some()
    }

    pub(crate) fn is_shut(&self) -> bool {
        lock(&self.state).shut
    }

    fn pre_order(st: &State) -> Vec<ContainerId> {
        let mut out = Vec::with_capacity(st.nodes.len());
        let mut stack: Vec<ContainerId> = st.top.iter().rev().copied().collect();
        while let Some(id) = stack.pop() {
            out.push(id);
            if let Some(n) = st.nodes.get(&id) {
                stack.extend(n.children.iter().rev().copied());
            }
        }
        out
    }

    /// Writes `value` to a knob unless the cache says it is there already.
    fn put(
        &self,
        cache: &mut Cache,
        notes: &mut BTreeSet<String>,
        errs: &mut Vec<Error>,
        (h, dir): (usize, &Path),
        (file, value): map::Knob,
    ) {
        let cur = cache
            .get(&(h, file))
            .map(String::as_str)
            .or_else(|| map::kernel_default(file));
        if cur == Some(value.as_str()) {
            return;
        }
        match self.fs.write(dir, file, &value) {
            Ok(()) => {
                cache.insert((h, file), value);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                notes.insert(format!(
                    "{file} = {value} not applied: this kernel has no {file}"
                ));
            }
            Err(e) => errs.push(e),
        }
    }

    /// The kernel weights of a group of kernel siblings (the children of `owner`, or the top
    /// of the subtree), and of the owner's own-work leaf if it has one.
    fn group_weights(
        st: &State,
        owner: Option<ContainerId>,
    ) -> (Vec<(ContainerId, f64)>, Option<f64>) {
        let (kids, leaf) = match owner {
            Some(o) => (&st.nodes[&o].children, st.nodes[&o].leaf),
            None => (&st.top, st.root_leaf),
        };
        let mut members: Vec<Member> = kids
            .iter()
            .map(|k| Member::of(&st.nodes[k].c.attrs()))
            .collect();
        if leaf {
            members.push(Member::own_work());
        }
        let w = map::sibling_weights(&members);
        let leaf_w = leaf.then(|| *w.last().expect("leaf member"));
        (kids.iter().copied().zip(w).collect(), leaf_w)
    }

    /// Writes a cgroup's weight and idle knobs (and its leaf's weight).
    fn write_cpu(
        &self,
        n: &mut Node,
        d: &Desired,
        leaf_w: Option<f64>,
        notes: &mut BTreeSet<String>,
        errs: &mut Vec<Error>,
    ) {
        let Some(h) = self.roles.cpu else { return };
        let v = self.hiers[h].version;
        let dir = self.hiers[h].root_dir.join(&n.rel);
        if !d.idle && n.written.get(&(h, "cpu.idle")).is_some_and(|i| i == "1") {
            // Leaving the idle class: the kernel's weight is not what was last written, so
            // write it again.
            n.written.remove(&(h, "cpu.shares"));
            n.written.remove(&(h, "cpu.weight"));
        }
        for k in map::cpu_knobs(d, v) {
            self.put(&mut n.written, notes, errs, (h, &dir), k);
        }
        if let Some(lw) = leaf_w {
            for k in map::cpu_knobs(&Desired::plain(lw), v) {
                self.put(&mut n.leaf_written, notes, errs, (h, &dir.join(LEAF)), k);
            }
        }
    }

    /// Writes every knob of a container's cgroup but the bandwidth, and records what the
    /// kernel does not enforce.
    fn write_node(&self, n: &mut Node, weight: f64, leaf_w: Option<f64>, errs: &mut Vec<Error>) {
        let a = n.c.attrs();
        let d = Desired::of(&a, weight);
        n.fixed = matches!(a.share, rescon::Share::Fixed(_));
        let mut notes = BTreeSet::new();
        if a.class > SchedClass::NORMAL {
            notes.insert(format!(
                "class {} is enforced at user level only: the kernel has no strict priority between cgroups",
                a.class
            ));
        }
        self.write_cpu(n, &d, leaf_w, &mut notes, errs);
        match self.roles.memory {
            Some(h) => {
                let dir = self.hiers[h].root_dir.join(&n.rel);
                let k = map::memory_knob(d.memory, self.hiers[h].version);
                self.put(&mut n.written, &mut notes, errs, (h, &dir), k);
            }
            None if d.memory.is_some() => {
                notes.insert("max_memory is not enforced by the kernel: no memory controller in this subtree".into());
            }
            None => {}
        }
        match self.roles.pids {
            Some(h) => {
                let dir = self.hiers[h].root_dir.join(&n.rel);
                self.put(
                    &mut n.written,
                    &mut notes,
                    errs,
                    (h, &dir),
                    map::pids_knob(d.pids),
                );
            }
            None if d.pids.is_some() => {
                notes.insert(
                    "max_processes is enforced at spawn only: no pids controller in this subtree"
                        .into(),
                );
            }
            None => {}
        }
        match self.roles.freezer {
            Some(h) => {
                let dir = self.hiers[h].root_dir.join(&n.rel);
                let k = map::freeze_knob(d.frozen, self.hiers[h].version);
                self.put(&mut n.written, &mut notes, errs, (h, &dir), k);
            }
            None if d.frozen => {
                notes.insert("priority 0 is not enforced by the kernel: no freezer; the cgroup gets the smallest weight".into());
            }
            None => {}
        }
        n.notes = notes;
    }

    fn write_root_leaf(&self, st: &mut State, leaf_w: Option<f64>, errs: &mut Vec<Error>) {
        let (Some(h), Some(lw)) = (self.roles.cpu, leaf_w) else {
            return;
        };
        let dir = self.hiers[h].root_dir.join(LEAF);
        let mut notes = BTreeSet::new();
        for k in map::cpu_knobs(&Desired::plain(lw), self.hiers[h].version) {
            self.put(&mut st.root_leaf_written, &mut notes, errs, (h, &dir), k);
        }
    }

    /// Brings every mirrored cgroup's knobs in line with its container's attributes, writing
    /// only what changed.
    fn reconcile(&self, st: &mut State) -> Vec<Error> {
        let mut errs = Vec::new();
        let order = Self::pre_order(st);
        let mut weight: HashMap<ContainerId, f64> = HashMap::new();
        let mut leaf_weight: HashMap<Option<ContainerId>, Option<f64>> = HashMap::new();
        for owner in std::iter::once(None).chain(order.iter().map(|id| Some(*id))) {
            let (w, lw) = Self::group_weights(st, owner);
            weight.extend(w);
            leaf_weight.insert(owner, lw);
        }
        for id in &order {
            let n = st.nodes.get_mut(id).expect("in order");
            self.write_node(n, weight[id], leaf_weight[&Some(*id)], &mut errs);
        }
        self.write_root_leaf(st, leaf_weight[&None], &mut errs);
        if let Some(h) = self.roles.cpu {
            let attrs: HashMap<ContainerId, rescon::Attributes> = order
                .iter()
                .map(|id| (*id, st.nodes[id].c.attrs()))
                .collect();
            self.reconcile_bandwidth(st, &order, &attrs, h, &mut errs);
        }
        errs
    }

    /// As [`reconcile`](Inner::reconcile) for one group of siblings only, after a member
    /// came or went (or the owner's leaf appeared): the siblings' weights, the owner's leaf,
    /// and every knob of `new`, a member without kernel children. O(siblings), where the full
    /// reconcile is O(mirrored containers).
    fn reconcile_group(
        &self,
        st: &mut State,
        owner: Option<ContainerId>,
        new: Option<ContainerId>,
    ) -> Vec<Error> {
        let mut errs = Vec::new();
        let kids = match owner {
            Some(o) => &st.nodes[&o].children,
            None => &st.top,
        };
        let new_fixed =
            new.is_some_and(|k| matches!(st.nodes[&k].c.attrs().share, rescon::Share::Fixed(_)));
        if !new_fixed && !kids.iter().any(|k| st.nodes[k].fixed) {
            // Without fixed shares every weight is the member's own: only `new` and the
            // owner's leaf (weight 100) need writing. O(1) instead of O(siblings).
            if let Some(k) = new {
                let a = st.nodes[&k].c.attrs();
                let w = match a.share {
                    rescon::Share::Weight(w) => map::effective_weight(w, a.priority),
                    rescon::Share::Fixed(_) => unreachable!("checked"),
                };
                let n = st.nodes.get_mut(&k).expect("member");
                self.write_node(n, w, None, &mut errs);
                if let Some(h) = self.roles.cpu {
                    self.bandwidth_single(st, k, h, &mut errs);
                }
            }
            let own = Member::own_work();
            let lw = match own.share {
                rescon::Share::Weight(w) => map::effective_weight(w, own.priority),
                rescon::Share::Fixed(_) => unreachable!("own work is weighted"),
            };
            self.write_leaf_weight(st, owner, lw, &mut errs);
            return errs;
        }
        let (weights, leaf_w) = Self::group_weights(st, owner);
        for (k, w) in weights {
            let n = st.nodes.get_mut(&k).expect("member");
            if Some(k) == new {
                self.write_node(n, w, None, &mut errs);
            } else {
                let d = Desired::of(&n.c.attrs(), w);
                let mut notes = std::mem::take(&mut n.notes);
                self.write_cpu(n, &d, None, &mut notes, &mut errs);
                n.notes = notes;
            }
        }
        if let Some(lw) = leaf_w {
            self.write_leaf_weight(st, owner, lw, &mut errs);
        }
        if let (Some(id), Some(h)) = (new, self.roles.cpu) {
            self.bandwidth_single(st, id, h, &mut errs);
        }
        errs
    }

    /// Writes the weight of the own-work leaf of `owner` (the subtree root for `None`), if
    /// it has one.
    fn write_leaf_weight(
        &self,
        st: &mut State,
        owner: Option<ContainerId>,
        lw: f64,
        errs: &mut Vec<Error>,
    ) {
        match owner {
            Some(o) => {
                let n = st.nodes.get_mut(&o).expect("owner");
                if let (Some(h), true) = (self.roles.cpu, n.leaf) {
                    let dir = self.hiers[h].root_dir.join(&n.rel).join(LEAF);
                    let mut notes = std::mem::take(&mut n.notes);
                    for k in map::cpu_knobs(&Desired::plain(lw), self.hiers[h].version) {
                        self.put(&mut n.leaf_written, &mut notes, errs, (h, &dir), k);
                    }
                    n.notes = notes;
                }
            }
            None if st.root_leaf => self.write_root_leaf(st, Some(lw), errs),
            None => {}
        }
    }

    /// Writes the bandwidth of a container without kernel children, under its ancestors'
    /// current limits.
    fn bandwidth_single(&self, st: &mut State, id: ContainerId, h: usize, errs: &mut Vec<Error>) {
        let own = st.nodes[&id]
            .c
            .attrs()
            .cpu_limit
            .as_ref()
            .map(map::bandwidth);
        let mut above = None;
        let mut cur = st.nodes[&id].parent;
        while let Some(p) = cur {
            let pn = &st.nodes[&p];
            if let Some(Some(b)) = pn.bw {
                above = Some(b);
                break;
            }
            cur = pn.parent;
        }
        let version = self.hiers[h].version;
        let want = match version {
            Version::V1 => map::v1_bandwidth(own, above),
            Version::V2 => own,
        };
        let n = st.nodes.get_mut(&id).expect("mirrored");
        if n.bw != Some(want) {
            self.write_bandwidth(n, want, h, errs);
        }
    }

    fn write_bandwidth(
        &self,
        n: &mut Node,
        want: Option<Bandwidth>,
        h: usize,
        errs: &mut Vec<Error>,
    ) {
        let dir = self.hiers[h].root_dir.join(&n.rel);
        let mut ok = true;
        for (f, v) in map::bandwidth_knobs(want, self.hiers[h].version) {
            match self.fs.write(&dir, f, &v) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && f.contains("burst") => {
                    if v != "0" {
                        n.notes
                            .insert(format!("cpu_burst not applied: this kernel has no {f}"));
                    }
                }
                Err(e) => {
                    errs.push(e);
                    ok = false;
                    break;
                }
            }
        }
        n.bw = if ok { Some(want) } else { None };
    }

    /// CPU limits. In v1 a cgroup's bandwidth may not exceed an ancestor's, so a limit is
    /// written only where it is tighter than every kernel ancestor's (elsewhere the ancestor
    /// covers the subtree), and the writes are ordered: those that tighten go children first,
    /// those that loosen go parents first, so every intermediate state is one the kernel
    /// accepts.
    fn reconcile_bandwidth(
        &self,
        st: &mut State,
        order: &[ContainerId],
        attrs: &HashMap<ContainerId, rescon::Attributes>,
        h: usize,
        errs: &mut Vec<Error>,
    ) {
        let version = self.hiers[h].version;
        let mut want: HashMap<ContainerId, Option<Bandwidth>> = HashMap::new();
        let mut anc: HashMap<ContainerId, Option<Bandwidth>> = HashMap::new();
        for id in order {
            let own = attrs[id].cpu_limit.as_ref().map(map::bandwidth);
            let n = &st.nodes[id];
            let above = n.parent.and_then(|p| anc[&p]);
            let w = match version {
                Version::V1 => map::v1_bandwidth(own, above),
                Version::V2 => own,
            };
            want.insert(*id, w);
            anc.insert(*id, w.or(above));
        }
        let mut write = |st: &mut State, id: &ContainerId| {
            let n = st.nodes.get_mut(id).expect("in order");
            self.write_bandwidth(n, want[id], h, errs);
        };
        // First, children before parents, what can be written whatever the parent has now:
        // unlimited (an unlimited cgroup never breaks v1's rule), or a limit lowered from
        // one that was valid under the current parent.
        for id in order.iter().rev() {
            let n = &st.nodes[id];
            let w = want[id];
            let now_safe = match (n.bw, w) {
                (Some(cur), w) if cur == w => false,
                (_, None) => true,
                (Some(Some(cur)), Some(w)) => w.ratio() <= cur.ratio(),
                _ => false,
            };
            if now_safe {
                write(st, id);
            }
        }
        // Then the rest (raised limits, limits where there were none), parents before
        // children: each is below its parents' final limits by construction.
        for id in order {
            let n = &st.nodes[id];
            if n.bw != Some(want[id]) {
                write(st, id);
            }
        }
    }

    fn apply(&self) -> ApplyReport {
        let mut rep = ApplyReport::default();
        let changed = self.watch.changed();
        rep.changed = changed.len();
        let mut st = lock(&self.state);
        if st.shut {
            return rep;
        }
        for c in &changed {
            if st.nodes.contains_key(&c.id()) && c.attrs().enforcement != Enforcement::Kernel {
                match self.unmirror(&mut st, c.id(), true) {
                    Ok(()) => rep.unmirrored += 1,
                    Err(e) => rep.errors.push(e),
                }
            }
        }
        // Nesting: a container (or a non-enforced ancestor) may have moved.
        for id in Self::pre_order(&st) {
            let Some(n) = st.nodes.get(&id) else { continue };
            let c = n.c.clone();
            let cur = n.parent;
            match self.mirror_parent(&mut st, &c) {
                Ok(want) if want != cur => match self.relocate(&mut st, id, want) {
                    Ok(()) => rep.moved += 1,
                    Err(e) => rep.errors.push(e),
                },
                Ok(_) => {}
                Err(e) => rep.errors.push(e),
            }
        }
        rep.errors.extend(self.reconcile(&mut st));
        rep
    }

    /// Moves the tasks of `from` to `to` in hierarchy `h`, one at a time (v1 `tasks` moves
    /// threads, v2 `cgroup.procs` processes, threaded v2 `cgroup.threads` threads), until
    /// `from` is empty.
    fn migrate(&self, h: usize, from: &Path, to: &Path) -> Result<(), Error> {
        let hier = &self.hiers[h];
        let file = match hier.version {
            Version::V1 => "tasks",
            Version::V2 => members_file(hier),
        };
        for _ in 0..100 {
            let ids = fs::pids(from, file)?;
            if ids.is_empty() || self.fs.emulate {
                return Ok(());
            }
            for id in ids {
                match self.fs.write(to, file, &id.to_string()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Err(Error::new(ErrorKind::Timeout, "migrate tasks")
            .path(from)
            .detail("tasks kept appearing"))
    }

    /// The mirrored subtree of `id`, parents first.
    fn subtree(st: &State, id: ContainerId) -> Vec<ContainerId> {
        let mut out = vec![id];
        let mut i = 0;
        while i < out.len() {
            out.extend(st.nodes[&out[i]].children.iter().copied());
            i += 1;
        }
        out
    }

    /// Moves a mirrored container (and its mirrored subtree) under a new kernel parent: new
    /// cgroups are made, tasks migrate, the old cgroups are removed. Counters restart at zero
    /// in the new cgroups; what the old ones counted was already reported.
    fn relocate(
        &self,
        st: &mut State,
        id: ContainerId,
        to: Option<ContainerId>,
    ) -> Result<(), Error> {
        let _ = self.sample_subtree(st, id);
        let ids = Self::subtree(st, id);
        let old_top = st.nodes[&id].rel.clone();
        let new_top = self.rel_for(st, to, &st.nodes[&id].c.clone());
        let mut moves: Vec<(ContainerId, PathBuf, PathBuf, bool)> = Vec::new();
        for i in &ids {
            let n = &st.nodes[i];
            let rest = n.rel.strip_prefix(&old_top).expect("in subtree");
            moves.push((*i, n.rel.clone(), new_top.join(rest), n.leaf));
        }
        let mut made: Vec<(PathBuf, bool)> = Vec::new();
        for (_, _, new, leaf) in &moves {
            if let Err(e) = self.make_dirs(new, *leaf) {
                for (d, l) in made.iter().rev() {
                    self.remove_dirs(d, *l);
                }
                return Err(e);
            }
            made.push((new.clone(), *leaf));
        }
        for (_, old, new, leaf) in &moves {
            for h in 0..self.hiers.len() {
                let root = &self.hiers[h].root_dir;
                if *leaf {
                    self.migrate(h, &root.join(old).join(LEAF), &root.join(new).join(LEAF))?;
                }
            }
        }
        let old_parent = st.nodes[&id].parent;
        let moved_cpu = st.nodes[&id].last_cpu;
        for (_, old, _, leaf) in moves.iter().rev() {
            for e in self.remove_dirs(old, *leaf) {
                st.errors.push(e);
            }
        }
        // Relink.
        match old_parent {
            Some(p) => {
                let pn = st.nodes.get_mut(&p).expect("parent");
                pn.children.retain(|k| *k != id);
                pn.departed_cpu += moved_cpu;
            }
            None => st.top.retain(|k| *k != id),
        }
        match to {
            Some(p) => st.nodes.get_mut(&p).expect("new parent").children.push(id),
            None => st.top.push(id),
        }
        st.nodes.get_mut(&id).expect("moved").parent = to;
        for (i, _, new, _) in moves {
            let ctr = self.open_counters(&new);
            let n = st.nodes.get_mut(&i).expect("moved");
            n.rel = new;
            n.spawn = None;
            n.bind = None;
            n.written.clear();
            n.leaf_written.clear();
            n.bw = Some(None);
            n.last_cpu = 0;
            n.reported_cpu = 0;
            n.departed_cpu = 0;
            n.last_throttled = 0;
            n.ctr = ctr?;
        }
        Ok(())
    }

    /// Stops mirroring `id`: its kernel children move to its kernel parent, its own tasks to
    /// the parent's leaf (`move_tasks`) or, if there are tasks other than this process's
    /// bound threads, the call fails with `Busy`.
    fn unmirror(&self, st: &mut State, id: ContainerId, move_tasks: bool) -> Result<(), Error> {
        let parent = st.nodes[&id].parent;
        let rel = st.nodes[&id].rel.clone();
        let leaf = st.nodes[&id].leaf;
        if leaf && !move_tasks {
            let foreign = self.foreign_members(&self.dirs_of(&rel.join(LEAF)));
            if !foreign.is_empty() {
                return Err(Error::new(ErrorKind::Busy, "detach container")
                    .path(&self.hiers[0].root_dir.join(&rel))
                    .detail(format!("processes {foreign:?} are still in it")));
            }
        }
        for k in st.nodes[&id].children.clone() {
            self.relocate(st, k, parent)?;
        }
        let _ = self.sample_subtree(st, id);
        // This process's bound threads: back to where they came from, or up with the rest.
        let bound: Vec<i32> = st
            .bound
            .iter()
            .filter(|(_, c)| **c == id)
            .map(|(t, _)| *t)
            .collect();
        if leaf {
            if move_tasks {
                self.ensure_leaf(st, parent)?;
                let prel = parent.map_or_else(PathBuf::new, |p| st.nodes[&p].rel.clone());
                for h in 0..self.hiers.len() {
                    let root = &self.hiers[h].root_dir;
                    self.migrate(h, &root.join(&rel).join(LEAF), &root.join(&prel).join(LEAF))?;
                }
                for t in bound {
                    match parent {
                        Some(p) => {
                            st.bound.insert(t, p);
                        }
                        None => {
                            st.bound.remove(&t);
                        }
                    }
                }
            } else {
                for t in bound {
                    st.bound.remove(&t);
                    self.unbind_raw(t)?;
                }
            }
        }
        let errs = self.remove_dirs(&rel, leaf);
        if let Some(e) = errs.into_iter().next() {
            return Err(e);
        }
        let n = st.nodes.remove(&id).expect("mirrored");
        st.credits.remove(&id);
        match parent {
            Some(p) => {
                let pn = st.nodes.get_mut(&p).expect("parent");
                pn.children.retain(|k| *k != id);
                pn.departed_cpu += n.last_cpu;
            }
            None => st.top.retain(|k| *k != id),
        }
        self.watch.remove(id);
        Ok(())
    }

    fn read_u64(&self, c: &Counter, what: &'static str) -> Result<u64, Error> {
        let mut buf = [0u8; 1024];
        let s = fs::pread(&c.file, &mut buf, &c.path)?;
        parse::single_u64(s, what).map_err(|e| Error::parse_at(&c.path, e))
    }

    fn read_cpu(&self, n: &Node) -> Result<Option<u64>, Error> {
        let Some(c) = &n.ctr.cpu else { return Ok(None) };
        if n.ctr.cpu_is_usec {
            let mut buf = [0u8; 1024];
            let s = fs::pread(&c.file, &mut buf, &c.path)?;
            let st = parse::cpu_stat(s).map_err(|e| Error::parse_at(&c.path, e))?;
            Ok(st.usage_usec.map(|u| u.saturating_mul(1000)))
        } else {
            self.read_u64(c, "cpuacct.usage").map(Some)
        }
    }

    fn read_throttle(&self, n: &Node) -> Result<Option<parse::CpuStat>, Error> {
        let Some(c) = &n.ctr.throttle else {
            return Ok(None);
        };
        let mut buf = [0u8; 1024];
        let s = fs::pread(&c.file, &mut buf, &c.path)?;
        parse::cpu_stat(s)
            .map(Some)
            .map_err(|e| Error::parse_at(&c.path, e))
    }

    fn stats_of(&self, n: &Node) -> Result<KernelStats, Error> {
        let mut s = KernelStats {
            cpu_ns: self.read_cpu(n)?,
            ..KernelStats::default()
        };
        if let Some(m) = &n.ctr.mem {
            s.memory_bytes = Some(self.read_u64(m, "memory usage")?);
        }
        if let Some(t) = self.read_throttle(n)? {
            s.throttled_ns = t.throttled_ns;
            s.nr_throttled = t.nr_throttled;
        }
        if let Some(h) = self.roles.pids {
            let p = self.hiers[h].root_dir.join(&n.rel).join("pids.current");
            let t = fs::read(&p)?;
            s.processes =
                Some(parse::single_u64(&t, "pids.current").map_err(|e| Error::parse_at(&p, e))?);
        }
        Ok(s)
    }

    fn sample_locked(&self, st: &mut State) -> Vec<Error> {
        let mut order = Self::pre_order(st);
        order.reverse();
        let errs = self.sample_ids(st, &order);
        // Children whose handles were dropped before they exited.
        st.orphans.retain_mut(|o| !o.try_reap());
        errs
    }

    /// Samples a mirrored container and its kernel descendants.
    fn sample_subtree(&self, st: &mut State, id: ContainerId) -> Vec<Error> {
        let mut ids = Self::subtree(st, id);
        ids.reverse();
        self.sample_ids(st, &ids)
    }

    /// Samples `ids`, children before parents; a child not in `ids` counts with its last
    /// values.
    fn sample_ids(&self, st: &mut State, ids: &[ContainerId]) -> Vec<Error> {
        let mut errs = Vec::new();
        let mut totals: HashMap<ContainerId, (u64, u64)> = HashMap::new();
        for id in ids {
            let n = &st.nodes[id];
            let cpu = match self.read_cpu(n) {
                Ok(v) => v,
                Err(e) => {
                    errs.push(e);
                    None
                }
            };
            let mem = match &n.ctr.mem {
                Some(m) => match self.read_u64(m, "memory usage") {
                    Ok(v) => Some(v),
                    Err(e) => {
                        errs.push(e);
                        None
                    }
                },
                None => None,
            };
            let thr = self
                .read_throttle(n)
                .unwrap_or(None)
                .and_then(|t| t.throttled_ns);
            let (kids_cpu, kids_mem) = n
                .children
                .iter()
                .map(|k| {
                    totals
                        .get(k)
                        .copied()
                        .unwrap_or_else(|| (st.nodes[k].last_cpu, st.nodes[k].last_mem))
                })
                .fold((0u64, 0u64), |a, b| (a.0 + b.0, a.1 + b.1));
            let credit = cpu.and_then(|_| st.credits.get(id)).map_or(0, |c| (c.0)());
            let n = st.nodes.get_mut(id).expect("in order");
            if let Some(cpu) = cpu {
                let excl = cpu.saturating_sub(kids_cpu + n.departed_cpu + credit);
                if excl > n.reported_cpu {
                    n.c.account().add_kernel_cpu_ns(excl - n.reported_cpu);
                    n.reported_cpu = excl;
                }
                n.last_cpu = cpu;
            }
            if let Some(mem) = mem {
                n.c.set_kernel_memory(mem.saturating_sub(kids_mem));
                n.last_mem = mem;
            }
            if let Some(t) = thr {
                if t > n.last_throttled {
                    n.c.account().add_throttled_ns(t - n.last_throttled);
                }
                n.last_throttled = t;
            }
            totals.insert(*id, (n.last_cpu, n.last_mem));
        }
        errs
    }

    /// Processes (or, in threaded v2, threads) in `dirs` and below, other than this process.
    fn foreign_members(&self, dirs: &[(usize, PathBuf)]) -> Vec<i32> {
        let own_tids = own_tids();
        let mut out: BTreeSet<i32> = BTreeSet::new();
        for (h, dir) in dirs {
            let hier = &self.hiers[*h];
            let Ok(all) = fs::walk(dir) else { continue };
            for d in all {
                for p in fs::pids(&d, members_file(hier)).unwrap_or_default() {
                    if p != self.own_pid && !own_tids.contains(&p) {
                        out.insert(p);
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    fn own_in(&self, h: usize, dir: &Path) -> bool {
        let hier = &self.hiers[h];
        let own_tids = own_tids();
        fs::walk(dir).unwrap_or_default().iter().any(|d| {
            fs::pids(d, members_file(hier))
                .unwrap_or_default()
                .iter()
                .any(|p| *p == self.own_pid || own_tids.contains(p))
        })
    }

    fn set_frozen(&self, h: usize, dir: &Path, frozen: bool) {
        let (f, v) = map::freeze_knob(frozen, self.hiers[h].version);
        if self.fs.write(dir, f, &v).is_err() || !frozen {
            return;
        }
        // Wait (briefly) until every task is frozen.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(100) {
            let done = match self.hiers[h].version {
                Version::V1 => {
                    fs::read(&dir.join("freezer.state"))
                        .ok()
                        .and_then(|s| parse::freezer_state(&s).ok())
                        == Some(parse::FreezerState::Frozen)
                }
                Version::V2 => fs::read(&dir.join("cgroup.events"))
                    .ok()
                    .and_then(|s| parse::events(&s).ok())
                    .is_some_and(|e| e.frozen),
            };
            if done {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn kill_dirs(&self, dirs: &[(usize, PathBuf)]) -> Result<KillReport, Error> {
        let mut rep = KillReport::default();
        let deadline = Instant::now() + self.kill_timeout;
        if let Some(h) = self.roles.v2 {
            let dir = &dirs
                .iter()
                .find(|(i, _)| *i == h)
                .expect("every hierarchy")
                .1;
            if !self.hiers[h].threaded && self.fs.exists(dir, "cgroup.kill") && !self.own_in(h, dir)
            {
                self.fs.write(dir, "cgroup.kill", "1")?;
                rep.cgroup_kill = true;
            }
        }
        let freezer = self.roles.freezer.and_then(|h| {
            let dir = dirs.iter().find(|(i, _)| *i == h)?.1.clone();
            (!self.own_in(h, &dir)).then_some((h, dir))
        });
        let mut signalled: HashSet<i32> = HashSet::new();
        let mut backoff = Duration::from_micros(200);
        loop {
            let pids = self.foreign_members(dirs);
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::new(ErrorKind::Timeout, "kill")
                    .path(&dirs[0].1)
                    .detail(format!(
                        "processes {pids:?} are still there after {:?}",
                        self.kill_timeout
                    )));
            }
            // After cgroup.kill, give the kernel a moment before signalling one by one.
            if rep.cgroup_kill && rep.rounds == 0 {
                rep.rounds = 1;
                std::thread::sleep(backoff);
                continue;
            }
            rep.rounds += 1;
            if let Some((h, d)) = &freezer {
                self.set_frozen(*h, d, true);
            }
            for p in self.foreign_members(dirs) {
                match sys::kill(p, libc::SIGKILL) {
                    Ok(()) => {
                        signalled.insert(p);
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => {
                        if let Some((h, d)) = &freezer {
                            self.set_frozen(*h, d, false);
                        }
                        return Err(Error::io(ErrorKind::Io, "kill", &dirs[0].1, e).value(p));
                    }
                }
            }
            if let Some((h, d)) = &freezer {
                self.set_frozen(*h, d, false);
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(10));
        }
        rep.signalled = signalled.len();
        Ok(rep)
    }

    fn background(&self, interval: Duration) {
        let mut next = Instant::now() + interval;
        loop {
            let changed = {
                let mut f = lock(&self.wake.flags);
                loop {
                    if f.stop {
                        return;
                    }
                    if f.changed {
                        // Gather what else comes, then apply it all at once.
                        let until = Instant::now() + CHANGE_GATHER;
                        loop {
                            if f.stop {
                                return;
                            }
                            let now = Instant::now();
                            if now >= until {
                                break;
                            }
                            f = self
                                .wake
                                .cv
                                .wait_timeout(f, until - now)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                        }
                        break;
                    }
                    let now = Instant::now();
                    if now >= next {
                        break;
                    }
                    f = self
                        .wake
                        .cv
                        .wait_timeout(f, next - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                std::mem::take(&mut f.changed)
            };
            if changed || self.watch.has_changes() {
                let rep = self.apply();
                let mut st = lock(&self.state);
                st.errors.extend(rep.errors);
            }
            if Instant::now() >= next {
                let mut st = lock(&self.state);
                let errs = self.sample_locked(&mut st);
                st.errors.extend(errs);
                let keep = st.errors.len().saturating_sub(100);
                st.errors.drain(..keep);
                next = Instant::now() + interval;
            }
        }
    }

    fn shutdown(&self) -> Result<(), Error> {
        let mut st = lock(&self.state);
        if st.shut {
            return Ok(());
        }
        st.shut = true;
        let mut errs: Vec<Error> = Vec::new();
        let _ = self.sample_locked(&mut st);
        for tid in st.bound.keys().copied().collect::<Vec<_>>() {
            if let Err(e) = self.unbind_raw(tid) {
                errs.push(e);
            }
        }
        st.bound.clear();
        let roots = self.dirs_of(Path::new(""));
        if let Err(e) = self.kill_dirs(&roots) {
            errs.push(e);
        }
        // Children whose handles were dropped: they were killed above; reap them.
        let deadline = Instant::now() + self.kill_timeout;
        while !st.orphans.is_empty() && Instant::now() < deadline {
            st.orphans.retain_mut(|o| !o.try_reap());
            if !st.orphans.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Out of our own leaf, back where this process came from; after giving up root it
        // may not (the kernel wants write access to the origin's cgroup.procs): then the
        // subtree's root and leaf stay, empty once the process exits, and are removed as a
        // dead instance's at the next start (or by systemd with the unit's cgroup).
        let mut keep: Vec<PathBuf> = Vec::new();
        if let Some(hi) = self.own_leaf {
            let h = &self.hiers[hi];
            if self
                .fs
                .write(&h.origin, "cgroup.procs", &self.own_pid.to_string())
                .is_err()
            {
                keep.push(h.root_dir.clone());
                keep.push(h.root_dir.join(LEAF));
            }
        }
        for h in &self.hiers {
            match fs::walk(&h.root_dir) {
                Ok(mut all) => {
                    all.reverse();
                    for d in all {
                        if keep.contains(&d) {
                            continue;
                        }
                        match self.fs.rmdir(&d) {
                            // The subtree's root sits in a cgroup this process may no longer
                            // write to (it gave up root): left, empty, for the next start.
                            Err(e)
                                if d == h.root_dir
                                    && matches!(
                                        e.raw_os_error(),
                                        Some(libc::EACCES | libc::EPERM)
                                    ) => {}
                            Err(e) => errs.push(e),
                            Ok(()) => {}
                        }
                    }
                }
                Err(e) => errs.push(e),
            }
        }
        for id in st.nodes.keys().copied().collect::<Vec<_>>() {
            self.watch.remove(id);
        }
        st.nodes.clear();
        st.top.clear();
        errs.into_iter().next().map_or(Ok(()), Err)
    }
}

fn own_tids() -> HashSet<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `value` to an open cgroup file in one write(2).
fn write_file(f: &File, path: &Path, value: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut w = f;
    match w.write(value.as_bytes()) {
        Ok(n) if n == value.len() => Ok(()),
        Ok(n) => Err(Error::new(ErrorKind::Io, "write")
            .path(path)
            .value(value)
            .detail(format!("short write: {n} of {} bytes", value.len()))),
        Err(e) => Err(Error::io(ErrorKind::Io, "write", path, e).value(value)),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(sanitize("cgi bin/../x"), "cgi_bin_.._x");
        assert_eq!(sanitize("..hidden"), "hidden");
        assert_eq!(sanitize(&"x".repeat(100)).len(), 32);
        assert!(check_name("rescon-web").is_ok());
        for bad in ["", "a/b", ".x", LEAF, "sp ace"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn instance_names() {
        // Not an instance name: never touched.
        assert_eq!(instance_is_dead("rescon", "rescon-web"), None);
        assert_eq!(instance_is_dead("rescon", "rescontest-1-2-3"), None);
        assert_eq!(instance_is_dead("rescon", "rescon-1-2-3-4"), None);
        // pid 1 did not start at tick 999999999999: dead.
        assert_eq!(
            instance_is_dead("rescon", "rescon-1-999999999999-0"),
            Some(true)
        );
        // This process, with its real start time: alive.
        let me = format!(
            "rescon-{}-{}-7",
            std::process::id(),
            own_start_time().unwrap()
        );
        assert_eq!(instance_is_dead("rescon", &me), Some(false));
    }

    #[test]
    fn manager_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Manager>();
        check::<super::super::Command>();
        check::<super::super::Child>();
    }
}
