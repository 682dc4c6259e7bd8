//! The serving loop: hyper on rescon-rt, a container per connection, static files, CGI runs in
//! their own containers (in a cgroup where the kernel allows), the admin API on a Unix socket,
//! and reloads on SIGHUP.
//!
//! # Placement
//!
//! A listener's accept loop runs in the listener's container. Each accepted connection is
//! classified by its source address through the listener's filters ([`FilterTable`]): the
//! black-hole member closes it at once; otherwise the class container's connection limit is
//! taken (beyond it the client gets a 503 and the connection closes) and the connection gets
//! its own container under the class container, to which its task, its socket's bytes and
//! every request on it are charged. A CGI request gets a container under its prefix's class
//! container (the CGI class, e.g. capped at 30%), where the script's process runs: in the
//! container's cgroup when kernel enforcement is on, so its CPU and its children's are charged
//! and capped there.
//!
//! With `--no-containers` (the benchmark's baseline) every connection is served in one
//! container, with no classes and no per-connection containers: the runtime's policy has a
//! single member, so it serves tasks first come, first served.

use crate::admin::{Admin, FilterTable};
use crate::cgi::{CgiHead, CgiHeadParser, CgiRequest, ScriptDir, meta_variables};
use crate::config::{
    AccessLog, ClassFilter, Config, ContainerPath, FloodAction, FloodDefense, ListenerConfig,
    LiveTree, TokenSource, VhostConfig,
};
use crate::log::AccessLogEntry;
use crate::routing::{Target, route};
use crate::static_files::{BodyPlan, DocRoot, Resolved, plan};
use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rescon::{Attributes, Container, Registry};
use rescon_linux::cgroup::{self, Manager};
use rescon_linux::listen::edge::XdpMode;
use rescon_linux::listen::{Filter, ListenerGroup, MemberId};
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// How the server is run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Worker threads (default: the available cores).
    pub workers: Option<usize>,
    /// Serve without containers: one container for everything (the baseline).
    pub no_containers: bool,
    /// The configuration file, for reloads (`None`: the embedded default, not reloadable).
    pub config_path: Option<PathBuf>,
}

/// What the request handlers share. Swapped as a whole on reload.
struct Site {
    config: Config,
    roots: HashMap<String, Arc<DocRoot>>,
    scripts: HashMap<(String, String), Arc<ScriptDir>>,
    /// Small files by (vhost, request path); emptied by a reload, since the site is rebuilt.
    files: FileCache,
}

/// Files at most this large are kept in memory.
const CACHE_MAX_FILE: u64 = 256 * 1024;
/// Entries kept at most; a full cache is emptied and refills with what is asked for.
const CACHE_MAX_ENTRIES: usize = 4096;
/// How long a cached file is served before it is resolved and checked again (nginx's
/// `open_file_cache_valid` is 60 s by default).
const CACHE_VALID: Duration = Duration::from_secs(1);

/// Small static files in memory, like nginx's `open_file_cache` but holding the bytes too: a
/// hit costs no system call, where resolving, opening, checking and reading a file costs five
/// (openat2, statx, lseek, read, close; measured with strace), about a third of a keep-alive
/// request's time. An entry is served for at most [`CACHE_VALID`]; then the path is resolved
/// again beneath the root (so a replaced file or a new symlink is noticed within that time) and
/// re-read if its entity tag changed. Written by hand: what is cached is the result of our own
/// confined resolution, which no caching crate knows about.
#[derive(Default)]
struct FileCache {
    /// By vhost, then request path: looked up by borrowed strings, with no allocation.
    map: RwLock<HashMap<String, HashMap<String, Arc<CachedFile>>>>,
}

struct CachedFile {
    meta: crate::static_files::FileMeta,
    /// The validators' header values, formatted once per file rather than per response.
    validators: crate::static_files::Validators,
    body: Bytes,
    checked: Instant,
}

impl FileCache {
    fn get(&self, vhost: &str, path: &str, now: Instant) -> Option<Arc<CachedFile>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let hit = map.get(vhost)?.get(path)?;
        (now.duration_since(hit.checked) < CACHE_VALID).then(|| hit.clone())
    }

    fn put(&self, vhost: &str, path: &str, file: Arc<CachedFile>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.values().map(HashMap::len).sum::<usize>() >= CACHE_MAX_ENTRIES {
            map.clear();
        }
        map.entry(vhost.to_owned())
            .or_default()
            .insert(path.to_owned(), file);
    }
}

struct Shared {
    /// The privileged root handle: moves connection containers between classes and vhosts.
    root: Container,
    site: RwLock<Arc<Site>>,
    tree: Mutex<LiveTree>,
    filters: Arc<FilterTable>,
    kernel: Option<Arc<Manager>>,
    options: Options,
    /// The access log, reopened by each reload (so a rotated file is let go).
    log: Mutex<Option<Box<dyn Write + Send>>>,
    /// Whether `log` is open: read by every request, without the lock.
    log_on: std::sync::atomic::AtomicBool,
    next_conn: AtomicU64,
    next_cgi: AtomicU64,
    next_req: AtomicU64,
    /// Kills CGI runs that outlive their timeout.
    cgi_watchdog: Arc<crate::cgi::Watchdog>,
    stop: Arc<Stop>,
}

/// A graceful stop: set once (by SIGQUIT); the accept loops and connections registered here
/// are woken to look, and each connection is counted until it ends.
#[derive(Default)]
struct Stop {
    on: std::sync::atomic::AtomicBool,
    /// The wakers of the tasks that watch, under their keys.
    waiters: Mutex<HashMap<u64, std::task::Waker>>,
    next: AtomicU64,
    /// Connections that have not ended.
    live: std::sync::atomic::AtomicUsize,
}

impl Stop {
    /// Sets the stop and wakes every watcher.
    fn begin(&self) {
        self.on.store(true, std::sync::atomic::Ordering::SeqCst);
        let waiters = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|e| e.into_inner()));
        for w in waiters.into_values() {
            w.wake();
        }
    }

    fn is_on(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A watch for one task; `counted` for a connection (ended when the watch drops).
    fn watch(self: &Arc<Self>, counted: bool) -> StopWatch {
        if counted {
            self.live.fetch_add(1, Relaxed);
        }
        StopWatch {
            stop: self.clone(),
            key: None,
            counted,
        }
    }
}

/// One task's view of the [`Stop`]: registers its waker on the first look.
struct StopWatch {
    stop: Arc<Stop>,
    key: Option<u64>,
    counted: bool,
}

impl StopWatch {
    /// Whether the stop has begun; if not, the task is woken when it does. A task's waker
    /// stays valid for the task's life, so it is registered once.
    fn stopping(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if self.stop.is_on() {
            return true;
        }
        if self.key.is_none() {
            let key = self.stop.next.fetch_add(1, Relaxed);
            self.stop
                .waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, cx.waker().clone());
            self.key = Some(key);
            // Begun between the look and the registration: its wake-up went by.
            return self.stop.is_on();
        }
        false
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.stop
                .waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
        if self.counted {
            self.stop.live.fetch_sub(1, Relaxed);
        }
    }
}

impl Shared {
    fn container(&self, path: &ContainerPath) -> Option<Container> {
        self.tree
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .cloned()
    }

    fn site(&self) -> Arc<Site> {
        self.site.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn open_site(config: Config) -> Result<Site> {
    let mut roots = HashMap::new();
    let mut scripts = HashMap::new();
    for v in &config.vhosts {
        let root = DocRoot::open(&v.root, v.index.clone()).with_context(|| {
            format!(
                "vhost {}: opening the document root {}",
                v.name,
                v.root.display()
            )
        })?;
        roots.insert(v.name.clone(), Arc::new(root));
        for p in &v.cgi {
            let dir = ScriptDir::open(&p.dir).with_context(|| {
                format!(
                    "vhost {}: opening the CGI directory {}",
                    v.name,
                    p.dir.display()
                )
            })?;
            scripts.insert((v.name.clone(), p.prefix.clone()), Arc::new(dir));
        }
    }
    Ok(Site {
        config,
        roots,
        scripts,
        files: FileCache::default(),
    })
}

/// Runs the server until it is killed. Prints `listening on ADDR` on standard output for each
/// listener once it accepts.
pub fn run(config: Config, options: Options) -> Result<()> {
    let registry = Registry::new();
    let root = registry.root();
    let tree = LiveTree::build(&registry, &config.tree).context("building the container tree")?;
    // Kernel enforcement: cgroups where the configuration asks and the kernel allows.
    let wants_kernel = !options.no_containers
        && config
            .tree
            .nodes
            .iter()
            .any(|n| n.attrs.enforcement == rescon::Enforcement::Kernel);
    let kernel = if wants_kernel {
        let required = config.server.enforcement == crate::config::EnforcementMode::Kernel;
        if config.server.enforcement == crate::config::EnforcementMode::User {
            None
        } else {
            match Manager::start(&registry, cgroup::Config::default(), required)
                .context("starting kernel enforcement (cgroups)")?
            {
                cgroup::Start::Kernel(m) => {
                    let m = Arc::new(m);
                    m.start_background(Duration::from_millis(100))
                        .context("starting the cgroup sampler")?;
                    Some(m)
                }
                cgroup::Start::UserOnly(reason) => {
                    eprintln!(
                        "rescon-httpd: kernel enforcement off, user-level containers only: {reason}"
                    );
                    None
                }
            }
        }
    } else {
        None
    };
    let filters = Arc::new(FilterTable::from_config(&config.listeners, |p| {
        tree.get(p).map(|c| c.id())
    }));
    let synced = Arc::new(SyncedFilters {
        table: filters.clone(),
        kernel: Mutex::new(HashMap::new()),
    });
    let admin = Arc::new(Admin::new(root.clone(), synced.clone()));
    admin.set_declared(&tree);
    let log = open_log(&config.server.access_log)?;
    let listeners = config.listeners.clone();
    let admin_socket = config.admin.socket.clone();
    let (admin_tcp, admin_token) = (config.admin.tcp, config.admin.token.clone());
    let site = open_site(config)?;
    let shared = Arc::new(Shared {
        root: root.clone(),
        site: RwLock::new(Arc::new(site)),
        tree: Mutex::new(tree),
        filters,
        kernel,
        options: options.clone(),
        log_on: std::sync::atomic::AtomicBool::new(log.is_some()),
        log: Mutex::new(log),
        next_conn: AtomicU64::new(0),
        next_cgi: AtomicU64::new(0),
        next_req: AtomicU64::new(0),
        cgi_watchdog: Arc::new(crate::cgi::Watchdog::new()),
        stop: Arc::new(Stop::default()),
    });
    let mut b = rescon_rt::Builder::new(&registry);
    if let Some(n) = options.workers {
        b = b.workers(n);
    }
    let rt = b.build().context("starting the runtime")?;
    let everything = root
        .create_child("server", Attributes::default())
        .context("creating the server container")?;

    // SIGQUIT: a graceful stop (below, in the serving loop).
    {
        let stop = shared.stop.clone();
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGQUIT])
            .context("installing the SIGQUIT handler")?;
        std::thread::Builder::new()
            .name("rescon-httpd-quit".into())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    stop.begin();
                }
            })
            .context("starting the signal thread")?;
    }
    // SIGTERM and SIGINT: stop CGI runs and remove our cgroups, then exit.
    {
        let kernel = shared.kernel.clone();
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])
        .context("installing the SIGTERM handler")?;
        std::thread::Builder::new()
            .name("rescon-httpd-stop".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    eprintln!("rescon-httpd: signal {sig}, stopping");
                    if let Some(m) = kernel {
                        if let Err(e) = m.shutdown() {
                            eprintln!("rescon-httpd: removing the cgroups: {e}");
                        }
                    }
                    std::process::exit(0);
                }
            })
            .context("starting the signal thread")?;
    }
    // SIGHUP: reload.
    if let Some(path) = options.config_path.clone() {
        let shared = shared.clone();
        let admin = admin.clone();
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
            .context("installing the SIGHUP handler")?;
        std::thread::Builder::new()
            .name("rescon-httpd-reload".into())
            .spawn(move || {
                for _ in signals.forever() {
                    match reload(&shared, &admin, &path) {
                        Ok(summary) => eprintln!("rescon-httpd: reloaded {}: {summary}", path.display()),
                        Err(e) => eprintln!(
                            "rescon-httpd: reload of {} failed, keeping the running configuration: {e:#}",
                            path.display()
                        ),
                    }
                }
            })
            .context("starting the reload thread")?;
    }

    rt.block_on(async move {
        if let Some(path) = admin_socket {
            serve_admin(path, admin.clone(), &everything)?;
        }
        if let Some(addr) = admin_tcp {
            let token = match &admin_token {
                Some(TokenSource::Inline(t)) => t.clone(),
                Some(TokenSource::File(f)) => std::fs::read_to_string(f)
                    .with_context(|| format!("reading the admin token file {}", f.display()))?
                    .trim_end()
                    .to_string(),
                None => anyhow::bail!("admin.tcp needs admin.token or admin.token_file"),
            };
            serve_admin_tcp(addr, token.into(), admin.clone(), &everything)?;
        }
        // Kept for the server's life: the member sockets' steering program lives with them.
        let mut groups = Vec::new();
        let mut defenses = Vec::new();
        for l in listeners {
            let c = everything
                .create_child(&format!("listener-{}", l.name), Attributes::default())
                .context("creating a listener container")?;
            if !shared.options.no_containers {
                match class_group(&shared, &l, &c) {
                    Ok(Some((group, members))) => {
                        for iface in &l.edge {
                            match group.drop_at_edge(iface, XdpMode::Auto) {
                                Ok(()) => println!(
                                    "listener {}: black-holed SYNs dropped at {iface} (XDP)",
                                    l.name
                                ),
                                Err(e) => eprintln!(
                                    "rescon-httpd: listener {}: no edge filter on {iface}: {e} (the black hole still drops those SYNs at its socket)",
                                    l.name
                                ),
                            }
                        }
                        println!("listening on {}", group.local_addr());
                        let group = Arc::new(group);
                        let mut names: Vec<String> =
                            l.classes.iter().map(|c| c.name.clone()).collect();
                        if group.members().len() > names.len() {
                            names.push(crate::admin::BLACK_HOLE.to_string());
                        }
                        if let Some(fd) = &l.flood_defense {
                            match flood_defense(&group, &names, fd, &synced.table, &l.name) {
                                Ok(running) => defenses.push(running),
                                Err(e) => eprintln!(
                                    "rescon-httpd: listener {}: flood defense off: {e:#}",
                                    l.name
                                ),
                            }
                        }
                        synced
                            .kernel
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(l.name.clone(), (group.clone(), names));
                        for (listener, class_c) in members {
                            let fallback = c.clone();
                            let task =
                                accept_loop(shared.clone(), listener, l.name.clone(), fallback);
                            rescon_rt::spawn_in(&class_c, task);
                        }
                        groups.push(group);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => eprintln!(
                        "rescon-httpd: listener {}: no per-class sockets ({e:#}); one socket, \
                         classes chosen after accept",
                        l.name
                    ),
                }
            }
            let listener = rescon_rt::TcpListener::bind_in(l.addr, &c)
                .with_context(|| format!("listener {}: binding {}", l.name, l.addr))?;
            let addr = listener.local_addr()?;
            println!("listening on {addr}");
            let shared = shared.clone();
            let name = l.name.clone();
            let fallback = c.clone();
            rescon_rt::spawn_in(&c, accept_loop(shared, listener, name, fallback));
        }
        std::io::stdout().flush().ok();
        // Serve until killed (SIGTERM, SIGINT) or stopped (SIGQUIT).
        let mut watch = shared.stop.watch(false);
        std::future::poll_fn(|cx| {
            if watch.stopping(cx) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        // The groups' sockets close with the last reference: the admin API's too.
        synced
            .kernel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        graceful_stop(&shared, (groups, defenses)).await;
        Ok(())
    })
}

/// The rest of a graceful stop, once it has begun: the accept loops have returned (closing
/// their sockets) and each connection finishes the request under way, then closes; the
/// listener groups' sockets are closed here, so new connections are refused. Waits up to
/// `timeouts.shutdown` for the connections, then stops the CGI runs, removes the cgroups and
/// exits, as SIGTERM does at once.
async fn graceful_stop(shared: &Shared, listeners: impl Sized) {
    drop(listeners);
    let live = || shared.stop.live.load(Relaxed);
    let grace = shared.site().config.timeouts.shutdown;
    eprintln!(
        "rescon-httpd: SIGQUIT, stopping: no new connections; waiting up to {grace:?} for {} under way",
        live()
    );
    let deadline = Instant::now() + grace;
    while live() > 0 && Instant::now() < deadline {
        rescon_rt::sleep(Duration::from_millis(20)).await;
    }
    if live() > 0 {
        eprintln!(
            "rescon-httpd: {} connections still open at timeouts.shutdown: cut",
            live()
        );
    }
    if let Some(m) = &shared.kernel {
        if let Err(e) = m.shutdown() {
            eprintln!("rescon-httpd: removing the cgroups: {e}");
        }
    }
    eprintln!("rescon-httpd: stopped");
    std::process::exit(0);
}

/// The filters as the admin API sees them: the user-level table, which places each accepted
/// connection, and the kernel's steering of each listener group, kept in step with it, so that
/// a prefix moved to the black hole has its SYNs dropped in the kernel from then on, and one
/// moved to a class waits in that class's accept queue.
struct SyncedFilters {
    table: Arc<FilterTable>,
    /// Per listener: its group and the name of each member, in member order.
    kernel: Mutex<HashMap<String, GroupMembers>>,
}

/// A listener group and the name of each of its members, in member order.
type GroupMembers = (Arc<ListenerGroup>, Vec<String>);

impl crate::admin::Filters for SyncedFilters {
    fn listeners(&self) -> Vec<crate::admin::api::ListenerView> {
        let mut ls = self.table.listeners();
        let kernel = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
        for l in &mut ls {
            if let Some((group, _)) = kernel.get(&l.name) {
                l.edges = group
                    .edges()
                    .into_iter()
                    .map(|(iface, prefixes, drops)| crate::admin::api::EdgeView {
                        iface,
                        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
                        drops,
                    })
                    .collect();
            }
        }
        ls
    }

    fn move_prefix(
        &self,
        listener: Option<&str>,
        prefix: ipnet::IpNet,
        to: &str,
        reason: &str,
    ) -> Result<crate::admin::api::MoveResult, crate::admin::FilterError> {
        let r = self.table.move_prefix(listener, prefix, to, reason)?;
        let kernel = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((group, names)) = kernel.get(&r.listener) {
            let moved = match names.iter().position(|n| n == to) {
                Some(i) => group
                    .move_prefixes(&[prefix.trunc()], MemberId::from_index(i))
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => Err(format!("no kernel member {to}")),
            };
            if let Err(e) = moved {
                // The user-level table decides anyway: the connection is accepted from the
                // old member's queue, then placed (or, for the black hole, closed).
                eprintln!(
                    "rescon-httpd: listener {}: the kernel's steering keeps {prefix} where it was \
                     ({e}); connections from it are placed after accept",
                    r.listener
                );
            }
        }
        Ok(r)
    }

    fn actions(&self) -> Vec<crate::admin::api::FilterAction> {
        self.table.actions()
    }
}

/// Starts the automatic SYN-flood defense of a listener group (rescon-linux's `Defender`,
/// sampling every 100 ms): sources of half-open connections during an attack are moved, in
/// the kernel's steering, to the black hole or to the class `demote_to` names, for at least
/// `hold`. `syn_rate` is the growth of the listen queue's pressure per second (SYN drops and
/// overflows, from /proc/net) that signals an attack. Each move is applied to the filter
/// table too, so accepted connections from a demoted prefix are placed in the class it was
/// demoted to, and `GET /filters` lists the moves with the defense's reason.
fn flood_defense(
    group: &Arc<ListenerGroup>,
    names: &[String],
    fd: &FloodDefense,
    table: &Arc<FilterTable>,
    listener: &str,
) -> Result<rescon_linux::listen::driver::Running> {
    let to = match &fd.action {
        FloodAction::BlackHole => crate::admin::BLACK_HOLE,
        FloodAction::Demote(class) => class.as_str(),
    };
    let i = names
        .iter()
        .position(|n| n == to)
        .with_context(|| format!("no member {to} to move offenders to"))?;
    let mut cfg = rescon_linux::listen::defense::DefenseConfig::new(MemberId::from_index(i));
    cfg.trigger_pressure_per_s = fd.syn_rate as f64;
    cfg.min_hold = fd.hold;
    let defender = rescon_linux::listen::driver::Defender::new(group.clone(), cfg)
        .with_context(|| format!("moving offenders to {to}"))?;
    let (table, listener, names) = (table.clone(), listener.to_string(), names.to_vec());
    defender.on_action(move |r| mirror_defense(&table, &listener, &names, r));
    eprintln!(
        "rescon-httpd: flood defense on {}: offenders go to {to}",
        group.local_addr()
    );
    Ok(Arc::new(defender).spawn(Duration::from_millis(100)))
}

/// Applies a flood-defense action (already done in the kernel) to the filter table.
fn mirror_defense(
    table: &FilterTable,
    listener: &str,
    names: &[String],
    r: &rescon_linux::listen::driver::Record,
) {
    use crate::admin::Filters;
    use rescon_linux::listen::defense::Action;
    if r.outcome.is_err() {
        return;
    }
    let prefix = match &r.action {
        Action::Quarantine { prefix, .. } | Action::Release { prefix, .. } => *prefix,
    };
    let reason = format!("flood defense: {}", r.action);
    match r.to.and_then(|m| names.get(m.get())) {
        Some(to) => {
            if let Err(e) = table.move_prefix(Some(listener), prefix, to, &reason) {
                eprintln!(
                    "rescon-httpd: listener {listener}: flood defense moved {prefix} to {to} in the kernel, but not in the filter table: {e}"
                );
            }
        }
        None => table.unlist(listener, prefix, &reason),
    }
}

type ClassSockets = (ListenerGroup, Vec<(rescon_rt::TcpListener, Container)>);

/// The paper's prioritized listening: one socket per client class on the listener's address,
/// the kernel steering each SYN to its class's socket by source address (longest prefix
/// first), so each class's connections wait in a queue of their own and are accepted by a task
/// in the class's container: a high class's connections are accepted before a flood of
/// normal ones, and a black-holed range (a socket whose container has priority 0) has its
/// SYNs dropped before they cost a SYN-ACK. The user-level classification still decides
/// where an accepted connection goes, so the admin API's prefix moves take effect at once.
///
/// `None` when the listener has no classes.
fn class_group(
    shared: &Shared,
    l: &ListenerConfig,
    listener_c: &Container,
) -> Result<Option<ClassSockets>> {
    if l.classes.is_empty() {
        return Ok(None);
    }
    let mut b = ListenerGroup::builder(l.addr);
    let mut classes = Vec::new();
    for class in &l.classes {
        let c = shared
            .container(&class.container)
            .with_context(|| format!("class {}: no container {}", class.name, class.container))?;
        let filter = match &class.filter {
            ClassFilter::Prefixes(p) => Filter::prefixes(p.iter().copied()),
            ClassFilter::Except(e) => Filter::except(e.iter().copied()),
        }
        .with_context(|| format!("class {}", class.name))?;
        b = b.member(&c, filter);
        classes.push(c);
    }
    let black_hole_defense = matches!(
        &l.flood_defense,
        Some(FloodDefense {
            action: FloodAction::BlackHole,
            ..
        })
    );
    if !l.black_hole.is_empty() || black_hole_defense {
        let mut attrs = Attributes::default();
        attrs
            .set("priority", "0")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let hole = listener_c
            .create_child("black-hole", attrs)
            .context("creating the black-hole container")?;
        let filter = if l.black_hole.is_empty() {
            Filter::nothing()
        } else {
            Filter::prefixes(l.black_hole.iter().copied()).context("black_hole")?
        };
        b = b.member(&hole, filter);
    }
    let group = b.build().context("building the listener group")?;
    let mut out = Vec::new();
    for (member, c) in group.members().into_iter().zip(classes) {
        // The socket counts its accepts against the listener's container, as the single
        // socket does; the accept task runs in the class's container, so the class's
        // scheduling class and share decide when its connections are accepted.
        let std_l = member.try_clone_listener()?;
        out.push((rescon_rt::TcpListener::from_std(std_l, listener_c)?, c));
    }
    Ok(Some((group, out)))
}

/// Opens the access log (appending to a file): `None` when it is off.
fn open_log(how: &AccessLog) -> Result<Option<Box<dyn Write + Send>>> {
    Ok(match how {
        AccessLog::Off => None,
        AccessLog::Stdout => Some(Box::new(std::io::stdout())),
        AccessLog::File(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening the access log {}", p.display()))?;
            Some(Box::new(f))
        }
    })
}

fn reload(shared: &Shared, admin: &Admin, path: &std::path::Path) -> Result<String> {
    let mut config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if config.uses_demo() {
        let dir = crate::demo::unpack_cached()?;
        config.set_demo_dir(&dir);
    }
    // Opened anew, as the file now says: after a rotation (the file renamed, then SIGHUP) the
    // log goes to a new file at the configured path. Before anything changes, so a log that
    // cannot be opened changes nothing.
    let log = open_log(&config.server.access_log)?;
    let site = open_site(config)?;
    let summary = {
        let mut tree = shared.tree.lock().unwrap_or_else(|e| e.into_inner());
        let diff = tree
            .reload(&site.config.tree)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tree.apply(&diff).map_err(|e| anyhow::anyhow!("{e}"))?;
        admin.set_declared(&tree);
        format!(
            "{} containers added, {} removed, {} changed",
            diff.add.len(),
            diff.remove.len(),
            diff.change.len()
        )
    };
    *shared.site.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(site);
    {
        let mut l = shared.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = l.as_mut() {
            let _ = old.flush();
        }
        shared.log_on.store(log.is_some(), Relaxed);
        *l = log;
    }
    Ok(summary)
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: rescon_rt::TcpListener,
    name: String,
    fallback: Container,
) {
    let mut watch = shared.stop.watch(false);
    loop {
        // A graceful stop ends the loop, and the listener closes with it.
        let accepted = std::future::poll_fn(|cx| {
            if watch.stopping(cx) {
                return std::task::Poll::Ready(None);
            }
            listener.poll_accept(cx).map(Some)
        })
        .await;
        let Some(accepted) = accepted else {
            return;
        };
        let (mut conn, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                eprintln!("rescon-httpd: listener {name}: accept: {e}");
                rescon_rt::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = conn.set_nodelay(true);
        if shared.options.no_containers {
            let c = fallback.clone();
            let sh = shared.clone();
            rescon_rt::spawn_in(&c, serve_conn(sh, conn, peer, "all".into(), None));
            continue;
        }
        let site = shared.site();
        let listener_cfg = site.config.listeners.iter().find(|l| l.name == name);
        let class_name = shared.filters.classify(&name, peer.ip());
        let class = class_name
            .as_deref()
            .and_then(|cn| listener_cfg.and_then(|l| l.classes.iter().find(|c| c.name == cn)));
        let Some(class) = class else {
            // The black hole (or no class takes this source): close without a word.
            drop(conn);
            continue;
        };
        let Some(class_c) = shared.container(&class.container) else {
            continue;
        };
        let guard = match class_c.try_open_connection() {
            Ok(g) => g,
            Err(_) => {
                rescon_rt::spawn_in(&class_c, refuse(conn));
                continue;
            }
        };
        let n = shared.next_conn.fetch_add(1, Relaxed);
        let c = match class_c.create_child(&format!("conn-{n}"), Attributes::default()) {
            Ok(c) => c,
            Err(_) => continue,
        };
        conn.set_container(&c);
        let sh = shared.clone();
        let cn = class.name.clone();
        rescon_rt::spawn_in(&c, async move {
            serve_conn(sh, conn, peer, cn, Some(guard)).await;
        });
    }
}

/// Over the class's connection limit: a 503 and close.
async fn refuse(conn: rescon_rt::TcpStream) {
    let _ = conn
        .write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 37\r\nConnection: close\r\nRetry-After: 1\r\n\r\ntoo many connections; try again soon\n",
        )
        .await;
}

async fn serve_conn(
    shared: Arc<Shared>,
    conn: rescon_rt::TcpStream,
    peer: SocketAddr,
    class: String,
    _guard: Option<rescon::ConnGuard>,
) {
    let local = conn
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let site = shared.site();
    let t = &site.config.timeouts;
    let max_header = site.config.limits.max_header_bytes as usize;
    let mut stop = shared.stop.watch(true);
    let sh = shared.clone();
    let state = Arc::new(ConnState {
        class,
        placed: Mutex::new(None),
        started: AtomicU64::new(0),
        done: AtomicU64::new(0),
        done_ns: AtomicU64::new(0),
        born: Instant::now(),
    });
    let io = IdleClose::new(conn, state.clone(), t);
    let svc = hyper::service::service_fn(move |req| {
        let sh = sh.clone();
        let state = state.clone();
        state.started.fetch_add(1, Relaxed);
        let cpu = Arc::new(ReqCpu::default());
        let cpu2 = cpu.clone();
        Timed {
            inner: Box::pin(async move {
                let (resp, log) = handle(sh, req, peer, local, &state, &cpu).await;
                Ok::<_, Infallible>(resp.map(|inner| ResBody {
                    inner,
                    log,
                    _done: ReqDone(state),
                }))
            }),
            cpu: cpu2,
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(rescon_rt::HyperTimer::current())
        // The head's timeout is IdleClose's, with the keep-alive one.
        .header_read_timeout(None)
        .max_buf_size(max_header.max(8192))
        .keep_alive(true)
        .serve_connection(io, svc);
    // A graceful stop lets the request under way finish, then closes (at once if idle).
    let mut conn = std::pin::pin!(conn);
    let mut told = false;
    let _ = std::future::poll_fn(|cx| {
        if !told && stop.stopping(cx) {
            told = true;
            conn.as_mut().graceful_shutdown();
        }
        conn.as_mut().poll(cx)
    })
    .await;
}

/// What a connection's requests share.
struct ConnState {
    /// The client class it was accepted in.
    class: String,
    /// The vhost its container was last placed under.
    placed: Mutex<Option<String>>,
    /// Requests whose head has arrived, and those whose response has gone out (or been
    /// dropped): equal between requests.
    started: AtomicU64,
    done: AtomicU64,
    /// When the last response was done, in nanoseconds after `born`.
    done_ns: AtomicU64,
    born: Instant,
}

impl ConnState {
    fn done_at(&self) -> Instant {
        self.born + Duration::from_nanos(self.done_ns.load(Relaxed))
    }
}

/// Counts a response as done, and when, as hyper drops its body.
struct ReqDone(Arc<ConnState>);

impl Drop for ReqDone {
    fn drop(&mut self) {
        let c = &self.0;
        c.done_ns.store(c.born.elapsed().as_nanos() as u64, Relaxed);
        c.done.fetch_add(1, Relaxed);
    }
}

/// A connection's reads, under the two timeouts of waiting for a request: `timeouts.header`
/// for a request's head (from the connection's start for the first, from its first byte for
/// the next ones), and `timeouts.keep_alive` for the quiet between a response and the next
/// request's first byte.
///
/// hyper has one timer, the head's, which it also runs between requests: with it, an idle
/// kept-alive connection stayed open for the header timeout and `keep_alive` did nothing.
/// Both are kept here instead, with one timer per connection moved from deadline to deadline
/// (hyper made a new one for every request). hyper does not read again when a response ends
/// (its last read, during the request, is still pending), so while a request is served the
/// timer is set a keep-alive period ahead, and when it fires the wait is judged from when the
/// response ended. When the quiet runs out, reading reports the end of the stream, which
/// hyper takes, between requests, as the client closing: the connection ends cleanly. A head
/// that runs out of time is an error: the connection ends, as it did with hyper's timer.
struct IdleClose {
    io: rescon_rt::TcpStream,
    conn: Arc<ConnState>,
    header: Duration,
    keep_alive: Duration,
    /// The connection's `done` count when this wait began.
    seen_done: u64,
    /// A byte has come since then.
    read_since: bool,
    /// What the timer is set for, and until when.
    deadline: Option<(Waiting, Instant)>,
    /// Made by the first wait, moved for the later ones.
    timer: Option<rescon_rt::Sleep>,
    send: Duration,
    /// Until when the write under way may wait for the client to take data.
    send_deadline: Option<Instant>,
    send_timer: Option<rescon_rt::Sleep>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Waiting {
    /// For a response: only to look again then.
    Serving,
    /// For the next request's first byte.
    Quiet,
    /// For the rest of a request's head.
    Head,
}

impl IdleClose {
    fn new(io: rescon_rt::TcpStream, conn: Arc<ConnState>, t: &crate::config::Timeouts) -> Self {
        IdleClose {
            io,
            conn,
            header: t.header,
            keep_alive: t.keep_alive,
            seen_done: 0,
            read_since: false,
            deadline: None,
            timer: None,
            send: t.send,
            send_deadline: None,
            send_timer: None,
        }
    }

    /// A write made progress (`Ready`) or waits for room: the connection ends with an error
    /// once a write has waited `timeouts.send`, as nginx's `send_timeout` does, so a client
    /// that stops reading does not hold its connection (and its class's connection slot)
    /// for ever.
    fn sent<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        if r.is_ready() {
            self.send_deadline = None;
            return r;
        }
        let deadline = *self
            .send_deadline
            .get_or_insert_with(|| Instant::now() + self.send);
        let timer = self
            .send_timer
            .get_or_insert_with(|| rescon_rt::sleep_until(deadline));
        timer.reset(deadline);
        match std::pin::Pin::new(timer).poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no data for timeouts.send",
            ))),
        }
    }

    /// What the connection waits for now, and until when.
    fn wait(&mut self, done: u64) -> (Waiting, Instant) {
        let waiting = if self.conn.started.load(Relaxed) != done {
            Waiting::Serving
        } else if done > 0 && !self.read_since {
            Waiting::Quiet
        } else {
            Waiting::Head
        };
        let d = match (waiting, self.deadline) {
            (Waiting::Quiet, _) => self.conn.done_at() + self.keep_alive,
            (w, Some((was, d))) if w == was => d,
            (Waiting::Serving, _) => Instant::now() + self.keep_alive,
            (Waiting::Head, _) => Instant::now() + self.header,
        };
        self.deadline = Some((waiting, d));
        (waiting, d)
    }
}

impl hyper::rt::Read for IdleClose {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        let done = this.conn.done.load(Relaxed);
        if done != this.seen_done {
            // A response went out: a new wait begins.
            this.seen_done = done;
            this.read_since = false;
            this.deadline = None;
        }
        match this.io.poll_read_hyper(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.read_since |= n > 0;
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        loop {
            let (waiting, deadline) = this.wait(done);
            let timer = this
                .timer
                .get_or_insert_with(|| rescon_rt::sleep_until(deadline));
            timer.reset(deadline);
            if std::pin::Pin::new(timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
            match waiting {
                // Still serving after a keep-alive period: look again in another.
                Waiting::Serving => this.deadline = None,
                // The end of the stream, with nothing read: hyper closes the connection.
                Waiting::Quiet => return Poll::Ready(Ok(())),
                Waiting::Head => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request head took longer than timeouts.header",
                    )));
                }
            }
        }
    }
}

impl hyper::rt::Write for IdleClose {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = hyper::rt::Write::poll_write(std::pin::Pin::new(&mut self.io), cx, buf);
        self.sent(cx, r)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = hyper::rt::Write::poll_write_vectored(std::pin::Pin::new(&mut self.io), cx, bufs);
        self.sent(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.io)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        hyper::rt::Write::poll_flush(std::pin::Pin::new(&mut self.io), cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        hyper::rt::Write::poll_shutdown(std::pin::Pin::new(&mut self.io), cx)
    }
}

/// Response bodies: whole ([`full`]) or streamed from a CGI script ([`CgiBody`]).
type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The CPU of one request's handling: the time of each poll of its future, read from the
/// monotonic clock as the runtime charges polls (the runtime charges containers, not
/// requests, and flushes usage in 1 ms steps, too coarse for one request).
#[derive(Default)]
struct ReqCpu {
    done_ns: AtomicU64,
    /// When the poll under way began (a [`mono_ns`] reading), 0 between polls.
    poll_start: AtomicU64,
}

/// The monotonic clock the runtime times polls with: the TSC where the kernel keeps time with
/// it (no vDSO call; two readings per poll of every request add up), else `CLOCK_MONOTONIC`.
fn mono_ns() -> u64 {
    static CLOCK: std::sync::OnceLock<rescon_rt::Clock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(rescon_rt::Clock::monotonic).now_ns()
}

impl ReqCpu {
    /// The CPU so far, including the poll under way.
    fn so_far_ns(&self) -> u64 {
        let start = self.poll_start.load(Relaxed);
        let running = if start == 0 {
            0
        } else {
            mono_ns().saturating_sub(start)
        };
        self.done_ns.load(Relaxed) + running
    }
}

/// A request's future, timed poll by poll into its [`ReqCpu`].
struct Timed<F> {
    inner: std::pin::Pin<Box<F>>,
    cpu: Arc<ReqCpu>,
}

impl<F: std::future::Future> std::future::Future for Timed<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let start = mono_ns().max(1);
        self.cpu.poll_start.store(start, Relaxed);
        let r = self.inner.as_mut().poll(cx);
        let end = mono_ns();
        self.cpu.poll_start.store(0, Relaxed);
        self.cpu
            .done_ns
            .fetch_add(end.saturating_sub(start), Relaxed);
        r
    }
}

/// A CGI run's own CPU so far (its reading thread and, as sampled, the script's), added to
/// the request's; nothing for a request charged to its connection.
fn own_run_cpu(c: &Container, cgi_run: bool) -> u64 {
    if !cgi_run {
        return 0;
    }
    let u = c.usage();
    u.cpu_ns + u.kernel_cpu_ns
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A CGI script's response body as it comes: chunks from the thread reading the script's
/// output, which waits while the client is slow (8 chunks of 16 KiB in flight at most). An
/// error ends the body early, so the client sees a cut response, not a complete one.
struct CgiBody {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
}

impl hyper::body::Body for CgiBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|r| r.map(hyper::body::Frame::data)))
    }
}

fn simple(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
    local: SocketAddr,
    conn: &ConnState,
    req_cpu: &Arc<ReqCpu>,
) -> (Response<Body>, Option<PendingLog>) {
    let class = conn.class.as_str();
    // What the access log needs, taken before the request is consumed; nothing without a log.
    let logging = shared.log_on.load(Relaxed);
    let start = logging.then(Instant::now);
    let time = logging.then(SystemTime::now);
    let me = rescon_rt::current();
    let site = shared.site();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let path = req.uri().path().to_owned();
    let request_line = if logging {
        format!("{} {} {:?}", req.method(), req.uri(), req.version())
    } else {
        String::new()
    };
    let header_bytes = |name| {
        logging
            .then(|| req.headers().get(name).map(|v| v.as_bytes().to_vec()))
            .flatten()
    };
    let ua = header_bytes(header::USER_AGENT);
    let referer = header_bytes(header::REFERER);
    let (resp, vhost, charged, cgi_run) = match route(&site.config, host.as_deref(), &path) {
        Err(e) => (
            simple(e.status(), "bad request path"),
            String::new(),
            me.clone(),
            false,
        ),
        Ok(r) => {
            let vhost = r.vhost.name.clone();
            match r.target {
                Target::Static(rel) => {
                    let req_c = if shared.options.no_containers {
                        None
                    } else if site.config.server.per_request_containers {
                        request_container(&shared, r.vhost, conn)
                    } else {
                        place_under_vhost(&shared, &me, r.vhost, conn);
                        None
                    };
                    if let Some(c) = &req_c {
                        rescon_rt::bind(c);
                    }
                    let root = site.roots.get(&vhost).cloned();
                    let resp = match root {
                        Some(root) => serve_static(&root, &site.files, &vhost, &path, &req, rel),
                        None => simple(StatusCode::INTERNAL_SERVER_ERROR, "no document root"),
                    };
                    if req_c.is_some() {
                        rescon_rt::bind(&me);
                    }
                    (resp, vhost, req_c.unwrap_or_else(|| me.clone()), false)
                }
                // Refusals inside leave the block with the connection's container.
                Target::Cgi { prefix, rest } => 'cgi: {
                    let dir = site
                        .scripts
                        .get(&(vhost.clone(), prefix.prefix.clone()))
                        .cloned();
                    let class_c = shared.container(&prefix.container);
                    match (dir, class_c) {
                        (Some(dir), Some(class_c)) => {
                            let m = match dir.find(&prefix.prefix, &rest) {
                                Ok(m) => m,
                                Err(e) => {
                                    let r = simple(e.status(), &e.to_string());
                                    break 'cgi (r, vhost, me.clone(), false);
                                }
                            };
                            let n = shared.next_cgi.fetch_add(1, Relaxed);
                            let mut attrs = Attributes::default();
                            if shared.kernel.is_some() {
                                let _ = attrs.set("enforcement", "kernel");
                            }
                            let cgi_c = match class_c.create_child(&format!("cgi-{n}"), attrs) {
                                Ok(c) => c,
                                Err(e) => {
                                    let r = simple(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
                                    break 'cgi (r, vhost, me.clone(), false);
                                }
                            };
                            let script = dir.path().join(&m.rel);
                            let doc_root = r.vhost.root.clone();
                            let server_name = host
                                .as_deref()
                                .map(|h| h.split(':').next().unwrap_or(h).to_owned())
                                .or_else(|| site.config.server.server_name.clone())
                                .unwrap_or_else(|| "localhost".into());
                            // Boxed: inline, the CGI run's state would make every request's
                            // future 2,760 bytes (moved into its box per request) instead of
                            // its own few hundred; a CGI run can afford an allocation.
                            let resp = Box::pin(run_cgi(
                                &shared,
                                req,
                                &cgi_c,
                                script,
                                m.script_name,
                                m.path_info,
                                doc_root,
                                server_name,
                                peer,
                                local,
                            ))
                            .await;
                            (resp, vhost, cgi_c, true)
                        }
                        _ => (
                            simple(StatusCode::INTERNAL_SERVER_ERROR, "CGI not configured"),
                            vhost,
                            me.clone(),
                            false,
                        ),
                    }
                }
            }
        }
    };
    // Logged, and counted, with the container its work was charged to.
    log_and(
        &shared,
        resp,
        peer,
        time,
        request_line,
        referer,
        ua,
        charged,
        req_cpu.clone(),
        cgi_run,
        start,
        vhost,
        class,
    )
}

/// Moves the connection's container under the container its request's work is charged to
/// ([`work_parent`](crate::routing::work_parent): the vhost's, or its per-class refinement),
/// once per connection or again when a later request names another vhost. The scheduler
/// follows the move, so the vhost's share governs the connection from then on; the usage
/// moves with it, so what the vhost delivered is its subtree's usage. The class's
/// connection limit stays taken, as accepted.
fn place_under_vhost(shared: &Shared, me: &Container, vhost: &VhostConfig, conn: &ConnState) {
    // Most connections name one vhost: after the first request, one string comparison.
    let mut placed = conn.placed.lock().unwrap_or_else(|e| e.into_inner());
    if placed.as_deref() == Some(vhost.name.as_str()) {
        return;
    }
    *placed = Some(vhost.name.clone());
    let Some(target) = work_container(shared, vhost, &conn.class) else {
        return;
    };
    if me.id() == target.id() || me.parent_id() == Some(target.id()) {
        return;
    }
    if let Err(e) = shared.root.reparent(me, Some(&target)) {
        eprintln!(
            "rescon-httpd: moving {} under vhost {}: {e}",
            me.name(),
            vhost.name
        );
    }
}

/// The live container a static request's work is charged under, as
/// [`work_parent`](crate::routing::work_parent) places it: the vhost's per-class refinement
/// if declared, else the vhost's.
fn work_container(shared: &Shared, vhost: &VhostConfig, class: &str) -> Option<Container> {
    shared
        .container(&vhost.container.child(class))
        .or_else(|| shared.container(&vhost.container))
}

/// With `per_request_containers`: a container for one request, under the one its work is
/// charged to (the vhost's, or its per-class refinement); the request's processing runs bound
/// to it and its usage folds into the vhost's when it is dropped. The connection's container
/// stays under its class.
fn request_container(shared: &Shared, vhost: &VhostConfig, conn: &ConnState) -> Option<Container> {
    let parent = work_container(shared, vhost, &conn.class)?;
    let n = shared.next_req.fetch_add(1, Relaxed);
    match parent.create_child(&format!("req-{n}"), Attributes::default()) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!(
                "rescon-httpd: a request container under vhost {}: {e}",
                vhost.name
            );
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn log_and(
    shared: &Arc<Shared>,
    resp: Response<Body>,
    peer: SocketAddr,
    time: Option<SystemTime>,
    request_line: String,
    referer: Option<Vec<u8>>,
    ua: Option<Vec<u8>>,
    me: Container,
    req_cpu: Arc<ReqCpu>,
    cgi_run: bool,
    start: Option<Instant>,
    vhost: String,
    class: &str,
) -> (Response<Body>, Option<PendingLog>) {
    // Every request counts once, where its work was charged: the connection's container
    // (under its vhost), or the request's or CGI run's own.
    me.account().add_requests(1);
    if !shared.log_on.load(Relaxed) {
        return (resp, None);
    }
    let pending = PendingLog {
        shared: shared.clone(),
        remote: peer.ip(),
        // Taken when the request came in, if the log was on then.
        time: time.unwrap_or_else(SystemTime::now),
        request_line,
        status: resp.status().as_u16(),
        referer,
        ua,
        container: me,
        req_cpu,
        cgi_run,
        start,
        vhost,
        class: class.to_owned(),
        sent: 0,
    };
    (resp, Some(pending))
}

/// One access-log line, written when its response's body has gone to the connection or is
/// dropped (cut by an error, abandoned by the client, or never sent, as for `HEAD`): so it
/// counts the body bytes that went out and the time until then, as nginx's
/// `$body_bytes_sent` and `$request_time` do, for streamed CGI output as for files.
struct PendingLog {
    shared: Arc<Shared>,
    remote: std::net::IpAddr,
    time: SystemTime,
    request_line: String,
    status: u16,
    referer: Option<Vec<u8>>,
    ua: Option<Vec<u8>>,
    container: Container,
    req_cpu: Arc<ReqCpu>,
    cgi_run: bool,
    start: Option<Instant>,
    vhost: String,
    class: String,
    /// Body bytes handed to the connection so far.
    sent: u64,
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        if !self.shared.log_on.load(Relaxed) {
            return;
        }
        let line = AccessLogEntry {
            remote: self.remote,
            time: self.time,
            request_line: self.request_line.as_bytes(),
            status: self.status,
            bytes: self.sent,
            referer: self.referer.as_deref(),
            user_agent: self.ua.as_deref(),
            container: self.container.id(),
            cpu: Duration::from_nanos(
                self.req_cpu.so_far_ns() + own_run_cpu(&self.container, self.cgi_run),
            ),
            duration: self.start.map_or(Duration::ZERO, |s| s.elapsed()),
            vhost: &self.vhost,
            class: &self.class,
        }
        .format();
        let mut log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = log.as_mut() {
            let _ = writeln!(w, "{line}");
        }
    }
}

/// The body of every response to a client: counts what it yields into its [`PendingLog`]
/// (if the log is on), which writes the line when the body is dropped, and marks the
/// connection's request done then.
struct ResBody {
    inner: Body,
    log: Option<PendingLog>,
    _done: ReqDone,
}

impl hyper::body::Body for ResBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        let frame = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let (Some(log), std::task::Poll::Ready(Some(Ok(f)))) = (&mut this.log, &frame) {
            if let Some(data) = f.data_ref() {
                log.sent += data.len() as u64;
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn serve_static(
    root: &DocRoot,
    cache: &FileCache,
    vhost: &str,
    path: &str,
    req: &Request<Incoming>,
    rel: crate::static_files::RelPath,
) -> Response<Body> {
    let now = Instant::now();
    let cached = match cache.get(vhost, path, now) {
        Some(c) => c,
        None => {
            let file = match root.resolve_rel(rel) {
                Ok(Resolved::File(f)) => f,
                Ok(Resolved::Redirect(loc)) => {
                    let mut r = simple(StatusCode::MOVED_PERMANENTLY, "moved");
                    if let Ok(v) = HeaderValue::from_str(&loc) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    return r;
                }
                Err(e) => return simple(e.status(), &e.to_string()),
            };
            if file.meta.len > CACHE_MAX_FILE {
                return serve_open_file(file, req);
            }
            let body = match read_range(&file.file, 0, file.meta.len) {
                Ok(b) => b,
                Err(e) => return simple(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            };
            let c = Arc::new(CachedFile {
                validators: crate::static_files::Validators::of(&file.meta),
                meta: file.meta.clone(),
                body,
                checked: now,
            });
            cache.put(vhost, path, c.clone());
            c
        }
    };
    let p = crate::static_files::plan_with(
        req.method(),
        req.headers(),
        &cached.meta,
        &cached.validators,
    );
    let body = match p.body {
        BodyPlan::Empty => Bytes::new(),
        BodyPlan::Full => cached.body.clone(),
        BodyPlan::Range { start, end } => cached.body.slice(start as usize..end as usize),
    };
    respond(req, p, body)
}

/// A file too large for the cache: streamed, a chunk at a time (see [`FileBody`]).
fn serve_open_file(file: crate::static_files::OpenFile, req: &Request<Incoming>) -> Response<Body> {
    let p = plan(req.method(), req.headers(), &file.meta);
    let (start, end) = match p.body {
        _ if req.method() == Method::HEAD => (0, 0),
        BodyPlan::Empty => (0, 0),
        BodyPlan::Full => (0, file.meta.len),
        BodyPlan::Range { start, end } => (start, end),
    };
    let mut r = Response::new(
        FileBody {
            file: file.file,
            pos: start,
            end,
        }
        .boxed(),
    );
    *r.status_mut() = p.status;
    *r.headers_mut() = p.headers;
    r
}

/// How much of a large file one frame carries: 256 KiB downloads a 300 MB file at 2.3-2.7
/// GB/s on loopback, 64 KiB at 1.6-2.1, reading it whole at 1.9-2.6.
const FILE_CHUNK: usize = 256 * 1024;

/// A large file's body, read a chunk at a time as the connection takes it: hyper asks for the
/// next frame only when its write buffer has room, so a download holds a few chunks of memory
/// however large the file and however slow the client (it used to be read whole: four
/// downloads of a 300 MB file took the server to 1.2 GB, now 24 MB), and a worker reads one chunk per poll
/// instead of the whole file while its other connections wait. The reads are charged to the
/// connection's poll, like the copies they feed. A file that shrinks under the download ends
/// the body with an error, so the client sees a cut response, not a complete one.
struct FileBody {
    file: std::fs::File,
    pos: u64,
    end: u64,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        use std::os::unix::fs::FileExt;
        let this = &mut *self;
        if this.pos >= this.end {
            return std::task::Poll::Ready(None);
        }
        let want = (this.end - this.pos).min(FILE_CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match this.file.read_at(&mut buf[got..], this.pos + got as u64) {
                Ok(0) => {
                    // Past the end before the promised length: stop for good.
                    this.end = this.pos;
                    return std::task::Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was being sent",
                    ))));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    this.end = this.pos;
                    return std::task::Poll::Ready(Some(Err(e)));
                }
            }
        }
        this.pos += want as u64;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.end.saturating_sub(self.pos))
    }
}

fn respond(
    req: &Request<Incoming>,
    p: crate::static_files::ResponsePlan,
    body: Bytes,
) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    let mut r = Response::new(full(if head { Bytes::new() } else { body }));
    *r.status_mut() = p.status;
    *r.headers_mut() = p.headers;
    r
}

/// Reads `start..end` of a file (buffered: measured faster than sendfile for the small files
/// a web site is mostly made of, and it keeps the CPU of the copy in the connection's poll).
fn read_range(f: &std::fs::File, start: u64, end: u64) -> std::io::Result<Bytes> {
    let mut f = f;
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((end - start) as usize);
    f.take(end - start).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

#[allow(clippy::too_many_arguments)]
async fn run_cgi(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    cgi_c: &Container,
    script: PathBuf,
    script_name: String,
    path_info: String,
    doc_root: PathBuf,
    server_name: String,
    peer: SocketAddr,
    local: SocketAddr,
) -> Response<Body> {
    let site = shared.site();
    let limits = &site.config.limits;
    let timeout = site.config.timeouts.cgi;
    let (parts, body) = req.into_parts();
    // A body of declared length streams into the script as it arrives; one without (chunked)
    // is read whole first, since CGI gives the script its length (RFC 3875, 4.1.2).
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let (stdin, content_length) = match declared {
        Some(n) if n > limits.max_body_bytes => {
            return simple(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        Some(0) => (Stdin::Whole(Bytes::new()), None),
        Some(n) => {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            rescon_rt::spawn(forward_body(body, tx, n, site.config.timeouts.body));
            (Stdin::Stream(rx), Some(n))
        }
        None => {
            let whole = match rescon_rt::timeout(
                site.config.timeouts.body,
                Limited::new(body, limits.max_body_bytes as usize).collect(),
            )
            .await
            {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(_)) => {
                    return simple(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
                }
                Err(_) => return simple(StatusCode::REQUEST_TIMEOUT, "request body too slow"),
            };
            let len = (!whole.is_empty()).then_some(whole.len() as u64);
            (Stdin::Whole(whole), len)
        }
    };
    let query = parts.uri.query().unwrap_or("").to_owned();
    let env = meta_variables(&CgiRequest {
        method: &parts.method,
        version: parts.version,
        raw_path: parts.uri.path(),
        query: &query,
        headers: &parts.headers,
        content_length,
        remote: peer,
        local,
        server_name: &server_name,
        script_name: &script_name,
        path_info: &path_info,
        script_filename: &script,
        document_root: &doc_root,
        container: Some(cgi_c.id()),
    });
    let max_head = limits.cgi_max_header_bytes as usize;
    let kernel = shared.kernel.clone();
    let watchdog = shared.cgi_watchdog.clone();
    let c2 = cgi_c.clone();
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let (body_tx, body_rx) = tokio::sync::mpsc::channel(8);
    // The script runs on the blocking pool: its pipes are blocking, and the thread's CPU is
    // charged to the CGI container. The thread sends the response head as soon as it is
    // parsed, then streams the body; it outlives this future if the client goes away (then it
    // stops the script).
    let _job = rescon_rt::spawn_blocking_in(cgi_c, move || {
        run_script(
            kernel, &watchdog, &c2, &script, env, stdin, timeout, max_head, head_tx, body_tx,
        )
    });
    let out = match head_rx.await {
        Ok(o) => o,
        Err(_) => return simple(StatusCode::INTERNAL_SERVER_ERROR, "CGI job failed"),
    };
    let mut body_rx = Some(body_rx);
    let mut stream = || {
        CgiBody {
            rx: body_rx.take().expect("one body"),
        }
        .boxed()
    };
    match out {
        CgiOutcome::TimedOut => simple(StatusCode::GATEWAY_TIMEOUT, "the CGI script took too long"),
        CgiOutcome::Failed(msg) => simple(StatusCode::BAD_GATEWAY, &msg),
        CgiOutcome::Done(head) => match head {
            CgiHead::Document { status, headers } => {
                let mut r = Response::new(stream());
                *r.status_mut() = status;
                for (k, v) in headers.iter() {
                    r.headers_mut().append(k, v.clone());
                }
                r
            }
            CgiHead::ClientRedirect { status, headers } => {
                let mut r = Response::new(stream());
                *r.status_mut() = status;
                for (k, v) in headers.iter() {
                    r.headers_mut().append(k, v.clone());
                }
                r
            }
            CgiHead::LocalRedirect { location } => {
                let mut r = simple(StatusCode::FOUND, "see other");
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
        },
    }
}

/// What a new pipe holds at least (a page): a write this size into it cannot block.
const PIPE_BUF: usize = 4096;

/// What a script reads on its standard input.
enum Stdin {
    /// A body read whole (or none).
    Whole(Bytes),
    /// Chunks as the client sends them.
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

/// Forwards a request body of declared length `len` to a script, frame by frame, each within
/// `timeout`; stops at `len` bytes, at the end, or when the client stalls or the script stops
/// reading (the script then sees the end of its input early).
async fn forward_body(
    mut body: Incoming,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    len: u64,
    timeout: Duration,
) {
    let mut left = len;
    while left > 0 {
        let frame = match rescon_rt::timeout(timeout, body.frame()).await {
            Ok(Some(Ok(f))) => f,
            _ => return,
        };
        if let Ok(mut data) = frame.into_data() {
            if data.len() as u64 > left {
                data.truncate(left as usize);
            }
            left -= data.len() as u64;
            if tx.send(data).await.is_err() {
                return;
            }
        }
    }
}

enum CgiOutcome {
    /// The head; the body follows on the channel.
    Done(CgiHead),
    Failed(String),
    TimedOut,
}

/// A running script, in its cgroup or a process group of its own.
enum Proc {
    Kernel(cgroup::Child, Arc<Manager>),
    User(std::process::Child),
}

impl Proc {
    fn kill_all(&mut self, c: &Container) {
        match self {
            Proc::Kernel(_, m) => {
                let _ = m.kill(c);
            }
            Proc::User(ch) => {
                // The script leads its own process group: kill it and its descendants.
                let pgid = ch.id() as i32;
                let _ = rustix::process::kill_process_group(
                    rustix::process::Pid::from_raw(pgid).expect("a child's pid is positive"),
                    rustix::process::Signal::KILL,
                );
            }
        }
    }

    /// Waits for the script to exit; `exited` runs once it has, before it is reaped (with a
    /// cgroup, after: the cgroup, not the pid, names what a kill reaches).
    fn wait(&mut self, c: &Container, exited: impl FnOnce()) -> Option<std::process::ExitStatus> {
        match self {
            // The child's CPU reaches the container's usage through the cgroup's counters
            // (the manager samples them after the run).
            Proc::Kernel(ch, _) => {
                let status = ch.wait().ok().map(|e| e.status);
                exited();
                status
            }
            Proc::User(ch) => {
                // Without a cgroup: wait for the exit without reaping, read the script's CPU
                // (its own and its reaped children's) while it is a zombie, then reap it.
                if let Some(pid) = rustix::process::Pid::from_raw(ch.id() as i32) {
                    let zombie = rustix::process::waitid(
                        rustix::process::WaitId::Pid(pid),
                        rustix::process::WaitIdOptions::EXITED
                            | rustix::process::WaitIdOptions::NOWAIT,
                    );
                    if zombie.is_ok()
                        && let Some(ns) = zombie_cpu_ns(ch.id())
                    {
                        c.account().add_kernel_cpu_ns(ns);
                    }
                }
                exited();
                ch.wait().ok()
            }
        }
    }
}

/// The CPU of an exited, unreaped process and of the children it reaped (`utime + stime +
/// cutime + cstime` of /proc/PID/stat), in nanoseconds.
fn zombie_cpu_ns(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let f: Vec<u64> = text[text.rfind(')')? + 2..]
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let ticks: u64 = f.iter().sum();
    Some(ticks * 1_000_000_000 / rustix::param::clock_ticks_per_second())
}

/// Runs a script: sends its outcome on `head_tx` as soon as it is known (the head parsed, or
/// why there is none), then the body's chunks on `body_tx`; a timeout after the head ends the
/// body with an error.
#[allow(clippy::too_many_arguments)]
fn run_script(
    kernel: Option<Arc<Manager>>,
    watchdog: &crate::cgi::Watchdog,
    c: &Container,
    script: &std::path::Path,
    env: std::collections::BTreeMap<String, std::ffi::OsString>,
    body: Stdin,
    timeout: Duration,
    max_head: usize,
    head_tx: tokio::sync::oneshot::Sender<CgiOutcome>,
    body_tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) {
    let mut head_tx = Some(head_tx);
    let outcome = run_script_inner(
        kernel,
        watchdog,
        c,
        script,
        env,
        body,
        timeout,
        max_head,
        &mut head_tx,
        &body_tx,
    );
    match head_tx.take() {
        Some(t) => {
            let _ = t.send(outcome);
        }
        None => {
            if let CgiOutcome::TimedOut = outcome {
                let _ = body_tx.blocking_send(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the CGI script took too long",
                )));
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_script_inner(
    kernel: Option<Arc<Manager>>,
    watchdog: &crate::cgi::Watchdog,
    c: &Container,
    script: &std::path::Path,
    env: std::collections::BTreeMap<String, std::ffi::OsString>,
    body: Stdin,
    timeout: Duration,
    max_head: usize,
    head_tx: &mut Option<tokio::sync::oneshot::Sender<CgiOutcome>>,
    body_tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> CgiOutcome {
    let dir = script.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let spawned = match &kernel {
        Some(m) => {
            let mut cmd = m.command(c, script);
            cmd.env_clear()
                .current_dir(&dir)
                .stdin(cgroup::Stdio::Piped)
                .stdout(cgroup::Stdio::Piped)
                .stderr(cgroup::Stdio::Inherit);
            for (k, v) in &env {
                cmd.env(k, v);
            }
            cmd.spawn()
                .map(|mut ch| {
                    let (i, o) = (ch.stdin.take(), ch.stdout.take());
                    (Proc::Kernel(ch, m.clone()), i, o)
                })
                .map_err(|e| e.to_string())
        }
        None => {
            let mut cmd = std::process::Command::new(script);
            cmd.env_clear()
                .envs(&env)
                .current_dir(&dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .process_group(0);
            cmd.spawn()
                .map(|mut ch| {
                    let i = ch
                        .stdin
                        .take()
                        .map(|s| std::fs::File::from(std::os::fd::OwnedFd::from(s)));
                    let o = ch
                        .stdout
                        .take()
                        .map(|s| std::fs::File::from(std::os::fd::OwnedFd::from(s)));
                    (Proc::User(ch), i, o)
                })
                .map_err(|e| e.to_string())
        }
    };
    let (mut proc, stdin, stdout) = match spawned {
        Ok(x) => x,
        Err(e) => return CgiOutcome::Failed(format!("the CGI script could not start: {e}")),
    };
    // The watchdog kills the script and its descendants when the timeout passes: its cgroup,
    // or its process group (the pid stays its own until it is reaped, after the watch ends).
    let watch = {
        let c = c.clone();
        let kernel = kernel.clone();
        let pid = match &proc {
            Proc::Kernel(ch, _) => ch.id() as i32,
            Proc::User(ch) => ch.id() as i32,
        };
        watchdog.watch(Instant::now() + timeout, move || match kernel {
            Some(m) => {
                let _ = m.kill(&c);
            }
            None => {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                }
            }
        })
    };
    // A body that fits in a new pipe (at least a page, PIPE_BUF) is written here without
    // blocking, as is the close that ends it (most requests have none); a larger one from a
    // thread, so a script that writes before it reads cannot deadlock with us.
    let feeder = match (stdin, body) {
        (None, _) => None,
        (Some(mut i), Stdin::Whole(b)) if b.len() <= PIPE_BUF => {
            let _ = i.write_all(&b);
            None
        }
        (Some(mut i), body) => Some(std::thread::spawn(move || match body {
            Stdin::Whole(b) => {
                let _ = i.write_all(&b);
            }
            Stdin::Stream(mut rx) => {
                while let Some(chunk) = rx.blocking_recv() {
                    if i.write_all(&chunk).is_err() {
                        break;
                    }
                }
            }
        })),
    };
    let mut parser = CgiHeadParser::new(max_head);
    let mut head_sent = false;
    let mut err = None;
    if let Some(mut o) = stdout {
        let mut buf = [0u8; 16384];
        loop {
            match o.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if head_sent {
                        let chunk = Bytes::copy_from_slice(&buf[..n]);
                        if body_tx.blocking_send(Ok(chunk)).is_err() {
                            // The client went away: stop the script.
                            proc.kill_all(c);
                            break;
                        }
                    } else {
                        match parser.feed(&buf[..n]) {
                            Ok(Some((h, rest))) => {
                                if !rest.is_empty() {
                                    let _ = body_tx.blocking_send(Ok(Bytes::from(rest)));
                                }
                                if let Some(t) = head_tx.take() {
                                    let _ = t.send(CgiOutcome::Done(h));
                                }
                                head_sent = true;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                err = Some(e.to_string());
                                proc.kill_all(c);
                                break;
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    // The watch ends when the script has exited, before it is reaped.
    let mut timed_out = false;
    let status = proc.wait(c, || timed_out = watch.disarm());
    if let Some(f) = feeder {
        let _ = f.join();
    }
    if let Some(m) = &kernel {
        let _ = m.kill(c);
        let _ = m.sample();
        // The run's cgroups go with it: the manager keeps what it mirrors (the container,
        // its cgroup directories and their open counter files, about ten) until detached,
        // and a run's container is made for this run only.
        if let Err(e) = m.detach(c) {
            eprintln!("rescon-httpd: removing the cgroups of {}: {e}", c.name());
        }
    }
    if timed_out {
        return CgiOutcome::TimedOut;
    }
    if let Some(e) = err {
        return CgiOutcome::Failed(format!("bad CGI response: {e}"));
    }
    if head_sent {
        // The head went out; the body ends when the sender is dropped.
        return CgiOutcome::Failed(String::new());
    }
    let how = match status {
        Some(s) if !s.success() => {
            format!("the CGI script failed ({s}) before its response head")
        }
        _ => parser.eof().to_string(),
    };
    CgiOutcome::Failed(how)
}

fn serve_admin(path: PathBuf, admin: Arc<Admin>, parent: &Container) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the admin socket's directory {}", dir.display()))?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("removing the stale admin socket {}", path.display()));
        }
    }
    let c = admin_container(parent)?;
    let l = rescon_rt::UnixListener::bind_in(&path, &c)
        .with_context(|| format!("binding the admin socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    eprintln!("rescon-httpd: admin API on {}", path.display());
    let c2 = c.clone();
    rescon_rt::spawn_in(&c, async move {
        loop {
            let Ok((conn, _)) = l.accept().await else {
                rescon_rt::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let admin = admin.clone();
            rescon_rt::spawn_in(&c2, serve_admin_conn(conn, admin, None));
        }
    });
    Ok(())
}

/// The admin API on a loopback TCP address (the configuration refuses any other), every
/// request needing `Authorization: Bearer TOKEN`.
fn serve_admin_tcp(
    addr: SocketAddr,
    token: Arc<str>,
    admin: Arc<Admin>,
    parent: &Container,
) -> Result<()> {
    let c = admin_container(parent)?;
    let l = rescon_rt::TcpListener::bind_in(addr, &c)
        .with_context(|| format!("binding the admin API's TCP address {addr}"))?;
    eprintln!(
        "rescon-httpd: admin API on http://{} (bearer token required)",
        l.local_addr()?
    );
    let c2 = c.clone();
    rescon_rt::spawn_in(&c, async move {
        loop {
            let Ok((conn, _)) = l.accept().await else {
                rescon_rt::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let (admin, token) = (admin.clone(), token.clone());
            rescon_rt::spawn_in(&c2, serve_admin_conn(conn, admin, Some(token)));
        }
    });
    Ok(())
}

/// The admin container (one for the Unix socket and the TCP address together).
fn admin_container(parent: &Container) -> Result<Container> {
    if let Some(c) = parent.children().into_iter().find(|c| c.name() == "admin") {
        return Ok(c);
    }
    parent
        .create_child("admin", Attributes::default())
        .context("creating the admin container")
}

/// The largest admin request body read.
const ADMIN_MAX_BODY: usize = 1 << 20;

async fn serve_admin_conn<IO>(conn: IO, admin: Arc<Admin>, token: Option<Arc<str>>)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (admin, token) = (admin.clone(), token.clone());
        async move {
            if let Some(t) = &token
                && let Err(a) = crate::admin::check_bearer(req.headers(), t)
            {
                return Ok::<_, Infallible>(api_response(a));
            }
            let method = req.method().clone();
            let target = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into());
            let body = match Limited::new(req.into_body(), ADMIN_MAX_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                // Not read as empty: a cut body must not pass for a request without one.
                Err(e) => {
                    let (status, msg) = if e.is::<http_body_util::LengthLimitError>() {
                        (
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("the request body is over {ADMIN_MAX_BODY} bytes"),
                        )
                    } else {
                        (
                            StatusCode::BAD_REQUEST,
                            format!("reading the request body: {e}"),
                        )
                    };
                    return Ok(api_response(crate::admin::ApiResponse::error(status, msg)));
                }
            };
            Ok(api_response(admin.handle(&method, &target, &body)))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(rescon_rt::HyperTimer::current())
        .serve_connection(conn, svc)
        .await;
}

fn api_response(a: crate::admin::ApiResponse) -> Response<Body> {
    let mut r = Response::new(full(a.body));
    *r.status_mut() = a.status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    for (k, v) in a.headers {
        r.headers_mut().insert(k, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body as _;
    use ipnet::IpNet;
    use rescon_linux::listen::defense::Action;
    use rescon_linux::listen::driver::Record;
    use std::net::IpAddr;
    use std::time::SystemTime;

    fn record(action: Action, to: Option<usize>) -> Record {
        Record {
            when: SystemTime::now(),
            elapsed: Duration::ZERO,
            action,
            to: to.map(MemberId::from_index),
            outcome: Ok(()),
        }
    }

    #[test]
    fn defense_moves_are_mirrored_in_the_filter_table() {
        let c = Config::parse(
            "t.toml",
            r#"
[containers.premium]
[containers.bulk]
[containers.site]
[[listener]]
name = "web"
address = "127.0.0.1"
port = 8080
[[listener.class]]
name = "premium"
container = "premium"
prefixes = ["10.0.0.0/8"]
[[listener.class]]
name = "bulk"
container = "bulk"
except = []
[[vhost]]
name = "v"
root = "/srv"
container = "site"
"#,
        )
        .unwrap();
        let table = FilterTable::from_config(&c.listeners, |p| {
            rescon::ContainerId::from_raw(p.as_str().len() as u64)
        });
        // Member order of the group: the classes, then the black hole.
        let names: Vec<String> = vec!["premium".into(), "bulk".into(), "black-hole".into()];
        let src: IpAddr = "10.1.2.3".parse().unwrap();
        let p: IpNet = "10.1.2.0/24".parse().unwrap();
        assert_eq!(table.classify("web", src).as_deref(), Some("premium"));
        // Demoted: its accepted connections go to bulk.
        let q = Action::Quarantine {
            prefix: p,
            syn_recv: 40,
        };
        mirror_defense(&table, "web", &names, &record(q, Some(1)));
        assert_eq!(table.classify("web", src).as_deref(), Some("bulk"));
        // Released to no member that listed it: premium's /8 takes it again.
        let r = Action::Release {
            prefix: p,
            held: Duration::from_secs(60),
            merged: false,
        };
        mirror_defense(&table, "web", &names, &record(r, None));
        assert_eq!(table.classify("web", src).as_deref(), Some("premium"));
        // A refused action changes nothing.
        let mut failed = record(
            Action::Quarantine {
                prefix: p,
                syn_recv: 9,
            },
            Some(2),
        );
        failed.outcome = Err("refused".into());
        mirror_defense(&table, "web", &names, &failed);
        assert_eq!(table.classify("web", src).as_deref(), Some("premium"));
        // Both moves are listed, with the defense's reason.
        use crate::admin::Filters;
        let a = table.actions();
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].to.as_str(), a[1].to.as_str()), ("bulk", "(unlisted)"));
        assert!(
            a[0].reason
                .starts_with("flood defense: quarantine 10.1.2.0/24"),
            "{}",
            a[0].reason
        );
    }

    fn file_body(data: &[u8], pos: u64, end: u64) -> (tempfile::NamedTempFile, FileBody) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data).unwrap();
        let file = std::fs::File::open(f.path()).unwrap();
        (f, FileBody { file, pos, end })
    }

    /// Polls a body to its end on this thread (a file body never waits).
    fn frames(mut b: FileBody) -> Vec<Result<Bytes, std::io::Error>> {
        let mut out = Vec::new();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            let hint = b.size_hint().exact();
            match std::pin::Pin::new(&mut b).poll_frame(&mut cx) {
                std::task::Poll::Ready(Some(Ok(f))) => {
                    let d = f.into_data().unwrap();
                    assert_eq!(
                        hint.unwrap() - d.len() as u64,
                        b.size_hint().exact().unwrap()
                    );
                    out.push(Ok(d));
                }
                std::task::Poll::Ready(Some(Err(e))) => out.push(Err(e)),
                std::task::Poll::Ready(None) => return out,
                std::task::Poll::Pending => panic!("a file body does not wait"),
            }
        }
    }

    #[test]
    fn a_large_file_goes_out_in_chunks_of_its_range() {
        let data: Vec<u8> = (0..3 * FILE_CHUNK + 100).map(|i| (i % 251) as u8).collect();
        let (_f, b) = file_body(&data, 0, data.len() as u64);
        let got = frames(b);
        let sizes: Vec<usize> = got.iter().map(|c| c.as_ref().unwrap().len()).collect();
        assert_eq!(sizes, [FILE_CHUNK, FILE_CHUNK, FILE_CHUNK, 100]);
        let all: Vec<u8> = got.into_iter().flat_map(|c| c.unwrap()).collect();
        assert_eq!(all, data);
        // A range across a chunk boundary: exactly its bytes.
        let (start, end) = (FILE_CHUNK as u64 - 10, FILE_CHUNK as u64 + 20);
        let (_f, b) = file_body(&data, start, end);
        let all: Vec<u8> = frames(b).into_iter().flat_map(|c| c.unwrap()).collect();
        assert_eq!(all, &data[start as usize..end as usize]);
        // Nothing to send: ends at once.
        let (_f, b) = file_body(&data, 0, 0);
        assert!(b.is_end_stream());
        assert!(frames(b).is_empty());
    }

    #[test]
    fn a_file_that_shrinks_under_its_download_cuts_the_body() {
        let data = vec![7u8; 2 * FILE_CHUNK];
        let (f, b) = file_body(&data, 0, data.len() as u64);
        f.as_file().set_len(FILE_CHUNK as u64 + 5).unwrap();
        let got = frames(b);
        assert_eq!(got.len(), 2, "the whole first chunk, then the error");
        assert_eq!(got[0].as_ref().unwrap().len(), FILE_CHUNK);
        let e = got[1].as_ref().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }

    struct CountWake(AtomicU64);

    impl std::task::Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn a_stop_wakes_its_watchers_once_and_counts_connections() {
        let stop = Arc::new(Stop::default());
        let wakes = Arc::new(CountWake(AtomicU64::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut conn = stop.watch(true);
        let mut loop_ = stop.watch(false);
        assert!(!conn.stopping(&mut cx) && !loop_.stopping(&mut cx));
        assert!(
            !conn.stopping(&mut cx),
            "registered once, still not stopping"
        );
        assert_eq!(stop.live.load(Relaxed), 1, "only connections count");
        stop.begin();
        assert_eq!(wakes.0.load(Relaxed), 2, "each watcher woken");
        assert!(conn.stopping(&mut cx) && loop_.stopping(&mut cx));
        // A watch that first looks after the stop began sees it at once.
        let mut late = stop.watch(true);
        assert!(late.stopping(&mut cx));
        assert_eq!(stop.live.load(Relaxed), 2);
        drop((conn, late, loop_));
        assert_eq!(stop.live.load(Relaxed), 0);
        assert!(stop.waiters.lock().unwrap().is_empty());
        assert_eq!(wakes.0.load(Relaxed), 2, "no wake after the stop");
    }

    #[test]
    fn a_dropped_watch_leaves_no_waker_behind() {
        let stop = Arc::new(Stop::default());
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        for _ in 0..3 {
            let mut w = stop.watch(true);
            assert!(!w.stopping(&mut cx));
        }
        assert!(stop.waiters.lock().unwrap().is_empty());
        assert_eq!(stop.live.load(Relaxed), 0);
    }
}
