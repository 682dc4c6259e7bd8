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
//!
//! # Parts
//!
//! This module starts the server, accepts, reloads and stops; `conn` serves a connection
//! (hyper, its timeouts, the graceful stop), `request` a request (routing, containers,
//! static files, the access log), `cgi_run` a CGI run, and `admin_api` the admin sockets.

use crate::admin::{Admin, FilterTable};
use crate::cgi::{CgiHead, CgiHeadParser, CgiRequest, ScriptDir, meta_variables};
use crate::config::{
    AccessLog, ClassFilter, Config, ContainerPath, FloodAction, FloodDefense, ListenerConfig,
    LiveTree, TokenSource, VhostConfig,
};
use crate::log::AccessLogEntry;
use crate::routing::{RouteError, Target, route_in};
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

mod admin_api;
mod cgi_run;
mod conn;
mod request;

use admin_api::*;
use cgi_run::*;
use conn::*;
use request::*;

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
    map: RwLock<CacheMap<CacheMap<Arc<CachedFile>>>>,
}

/// The cache's maps hash with foldhash, not SipHash: two lookups on every request, where
/// SipHash's cost showed (callgrind). Seeded per process; a client can add at most
/// [`CACHE_MAX_ENTRIES`] keys (paths of existing files) before the cache is emptied.
type CacheMap<V> = HashMap<String, V, foldhash::quality::RandomState>;

struct CachedFile {
    meta: crate::static_files::FileMeta,
    /// The validators' header values, formatted once per file rather than per response.
    validators: crate::static_files::Validators,
    /// The headers of a plain 200 ([`is_plain`](crate::static_files::is_plain)), built once.
    plain: http::HeaderMap,
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
        if map.values().map(CacheMap::len).sum::<usize>() >= CACHE_MAX_ENTRIES {
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

#[cfg(test)]
mod tests {
    use super::*;
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
}
