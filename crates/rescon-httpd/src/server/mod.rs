//! The server: hyper on rescon-rt, a container per connection, static files, CGI runs in
//! their own containers (in a cgroup where the kernel allows), the admin API on a Unix
//! socket, and reloads on SIGHUP.
//!
//! # The request path
//!
//! A connection passes through stages, each in its own file with its own tests:
//!
//! | stage | file | what |
//! |---|---|---|
//! | accept | [`accept`] | the member socket the kernel steered the SYN to gives the class; the connection's container is made under the class's |
//! | TLS | [`tls`] | the handshake in the connection's container, bounded per class; certificates by SNI |
//! | connection | [`conn`] | hyper over any byte stream, HTTP/1.1 or HTTP/2 ([`h2guard`] meters its frames), with the waits' timeouts and the graceful stop |
//! | request | [`request`] | the path of one request, top to bottom, calling the stages below |
//! | dispatch | [`dispatch`] | vhost, cached file, static path or CGI script, over the compiled site |
//! | placement | [`placement`] | the one rule of where work is charged, and its application |
//! | static | [`static_file`] | files from the cache or the document root |
//! | CGI | [`cgi`] | a script run in its own container |
//! | response and log | [`respond`] | the body, the access-log line, the request counted |
//!
//! What a request reads is the compiled [`site`]: built at start-up and at each reload, it
//! already holds every container, open directory and cache a request needs. The listeners
//! and their classes ([`listen`]) are the kernel's steering tables, which the admin API
//! changes directly.
//!
//! With `--no-containers` (the benchmark's baseline) every connection is served in one
//! container, with no classes and no per-connection containers: the runtime's policy has a
//! single member, so it serves tasks first come, first served.

mod accept;
mod admin_api;
mod cgi;
mod conn;
mod dispatch;
mod fastcgi;
mod h2guard;
mod listen;
mod netacct;
mod placement;
mod request;
mod respond;
mod site;
mod static_file;
mod stop;
mod tls;

use crate::admin::{Admin, FilterTable};
use crate::config::{AccessLog as LogConfig, Config, ListenerConfig, LiveTree, TokenSource};
use accept::{Classes, accept_loop};
use anyhow::{Context as _, Result};
use listen::{Group, Listener, Listeners, Source};
use rescon::{Attributes, Container, Registry};
use rescon_linux::cgroup::{self, Manager};
use rescon_linux::listen::driver::Running;
use rescon_linux::listen::edge::XdpMode;
use respond::AccessLog;
use site::{Opened, Site, SiteCell};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stop::Stop;

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

/// Sequence numbers of the containers made per connection, CGI run and request.
#[derive(Default)]
pub(crate) struct Seq {
    pub(crate) conn: AtomicU64,
    pub(crate) cgi: AtomicU64,
    pub(crate) req: AtomicU64,
}

/// What the stages share for the server's life.
pub(crate) struct Shared {
    /// The privileged root handle: moves connection containers between classes and vhosts.
    pub(crate) root: Container,
    /// The compiled site in force.
    pub(crate) site: SiteCell,
    /// The declared containers, changed by reloads only.
    tree: Mutex<LiveTree>,
    pub(crate) kernel: Option<Arc<Manager>>,
    pub(crate) options: Options,
    pub(crate) log: Arc<AccessLog>,
    pub(crate) seq: Seq,
    /// Kills CGI runs that outlive their timeout.
    pub(crate) cgi_watchdog: Arc<crate::cgi::Watchdog>,
    pub(crate) stop: Arc<Stop>,
    /// Request durations and statuses by vhost and class (`/metrics`).
    pub(crate) http: Arc<crate::admin::HttpStats>,
    /// Where TLS handshakes below the high class run (see [`tls`]).
    pub(crate) handshakes: tls::Offload,
    /// Kernel network accounting, where the kernel allows ([`netacct`]).
    kernel_net: Option<Arc<netacct::KernelNet>>,
    /// Holds CGI runs and FastCGI pools to their class's CPU limit where no cgroup does.
    pub(crate) limiter: Option<Arc<rescon_linux::usermode::Limiter>>,
    /// The `[[fastcgi]]` applications and their pools.
    pub(crate) fastcgi: fastcgi::FastCgi,
}

/// Runs the server until it is killed. Says `listening on ADDR` (an info event on standard
/// error) for each listener once it accepts.
pub fn run(config: Config, options: Options) -> Result<()> {
    // As a service: passed sockets, the open-file limit, the user to become (see `service`).
    let notify = crate::service::notifier();
    let mut start = crate::service::Startup::begin(&config)?;
    let registry = Registry::new();
    let root = registry.root();
    let tree = LiveTree::build(&registry, &config.tree).context("building the container tree")?;
    let kernel = start_kernel(&config, &options, &registry, start.drops_privileges())?;
    let listeners = Arc::new(Listeners::default());
    let admin = Arc::new(Admin::new(root.clone(), listeners.clone()));
    admin.set_declared(&tree);
    let log = open_log(&config.server.access_log)?;
    let access_log_path = match &config.server.access_log {
        LogConfig::File(p) => Some(p.clone()),
        _ => None,
    };
    let listener_configs = config.listeners.clone();
    let admin_socket = config.admin.socket.clone();
    let (admin_tcp, admin_token) = (config.admin.tcp, config.admin.token.clone());
    let metrics_listen = config.metrics.listen;
    let limiter = start_limiter(&options, kernel.as_ref(), &registry);
    // Pools start now, with the cgroups, as `[server] user` if one is set.
    let run_as = start
        .ids
        .as_ref()
        .filter(|_| start.drops_privileges())
        .map(|i| fastcgi::RunAs {
            uid: i.uid,
            gid: i.gid,
            known: i.known,
        });
    let fastcgi = fastcgi::FastCgi::start(
        &config.fastcgi,
        &tree,
        kernel.as_ref(),
        limiter.as_ref(),
        run_as,
    )
    .context("starting FastCGI")?;
    {
        // The admin API shows the enforcement in force, not the attribute's wish.
        let (kernel, limiter) = (kernel.clone(), limiter.clone());
        admin.set_enforcement(Box::new(move |c| {
            let r = rescon_linux::enforcement::report(c, kernel.as_deref(), limiter.as_deref());
            rescon_admin::api::EnforcementView {
                summary: r.summary.to_string(),
                cpu_limit: r.cpu_limit.to_string(),
                max_processes: r.max_processes.to_string(),
                max_memory: r.max_memory.to_string(),
                notes: r.notes,
            }
        }));
    }
    let site = Site::compile(config, &tree)?;
    let shared = Arc::new(Shared {
        root: root.clone(),
        site: SiteCell::new(site),
        tree: Mutex::new(tree),
        kernel,
        options: options.clone(),
        log: Arc::new(AccessLog::new(log)),
        seq: Seq::default(),
        cgi_watchdog: Arc::new(crate::cgi::Watchdog::new()),
        stop: Arc::new(Stop::default()),
        http: admin.http_stats(),
        handshakes: tls::Offload::new(&registry, &options),
        kernel_net: (!options.no_containers)
            .then(|| netacct::KernelNet::start(&root))
            .flatten(),
        limiter,
        fastcgi,
    });
    // A worker runs at nice -20 while it runs (or has queued) work of a class above normal,
    // and only then: the high class's requests are not kept waiting for another process's
    // kernel time slice on a shared machine (see `rescon_rt::prio`; off, saying so, without
    // the right to lower a nice value).
    let mut b =
        rescon_rt::Builder::new(&registry).high_priority(rescon_rt::HighPriority::Nice(-20));
    if let Some(n) = options.workers {
        b = b.workers(n);
    }
    if let Some(k) = &shared.kernel_net {
        let k = Arc::downgrade(k);
        b = b.on_worker_start(move |_| {
            if let Some(k) = k.upgrade() {
                k.worker_started();
            }
        });
    }
    let rt = b.build().context("starting the runtime")?;
    let everything = root
        .create_child("server", Attributes::default())
        .context("creating the server container")?;
    handle_signals(&shared, &admin)?;

    rt.block_on(async move {
        if let Some(path) = admin_socket {
            admin_api::serve_admin(path, admin.clone(), &everything)?;
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
            admin_api::serve_admin_tcp(addr, token.into(), admin.clone(), &everything)?;
        }
        if let Some(addr) = metrics_listen {
            admin_api::serve_metrics(addr, admin.clone(), &everything)?;
        }
        // Kept for the server's life: the defenses sample and move prefixes until dropped.
        let mut defenses = Vec::new();
        // Every socket bound first; accepting starts once the process runs as the
        // configured user, so that no request (no CGI run) is ever served as root.
        let mut loops = AcceptLoops::new();
        for l in &listener_configs {
            let passed = start.passed.take(l);
            start_listener(
                &shared,
                &listeners,
                l,
                &everything,
                &mut defenses,
                passed,
                &mut loops,
            )?;
        }
        start.finish(shared.kernel.as_deref(), access_log_path.as_deref())?;
        let rt = rescon_rt::Handle::try_current();
        for (c, worker, accept) in loops {
            match (worker, &rt) {
                (Some(w), Some(rt)) => drop(rt.spawn_on(w, &c, accept)),
                _ => drop(rescon_rt::spawn_in(&c, accept)),
            }
        }
        crate::service::watchdog(notify, &everything);
        notify.ready(&format!(
            "serving {} listener(s) on {} worker(s)",
            listener_configs.len(),
            rescon_rt::Handle::try_current().map_or(0, |h| h.workers())
        ));
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
        listeners.clear();
        graceful_stop(&shared, defenses).await;
        Ok(())
    })
}

/// Accept loops made while the sockets are bound, spawned once privileges are dropped: the
/// container each runs in, the worker it is spawned on (`None`: where the runtime places it),
/// and the loop.
type AcceptLoops = Vec<(
    Container,
    Option<usize>,
    std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
)>;

/// Kernel enforcement: cgroups where the configuration asks and the kernel allows.
fn start_kernel(
    config: &Config,
    options: &Options,
    registry: &Registry,
    own_leaf: bool,
) -> Result<Option<Arc<Manager>>> {
    use crate::config::EnforcementMode;
    let wants = !options.no_containers
        && config
            .tree
            .nodes
            .iter()
            .any(|n| n.attrs.enforcement == rescon::Enforcement::Kernel);
    if !wants || config.server.enforcement == EnforcementMode::User {
        return Ok(None);
    }
    let required = config.server.enforcement == EnforcementMode::Kernel;
    match Manager::start(
        registry,
        crate::service::cgroup_config(&config.server, own_leaf),
        required,
    )
    .context("starting kernel enforcement (cgroups)")?
    {
        cgroup::Start::Kernel(m) => {
            let m = Arc::new(m);
            m.start_background(Duration::from_millis(100))
                .context("starting the cgroup sampler")?;
            Ok(Some(m))
        }
        cgroup::Start::UserOnly(reason) => {
            tracing::warn!(%reason, "kernel enforcement off, user-level containers only");
            Ok(None)
        }
    }
}

/// User-mode CPU capping, where no cgroup holds processes: CGI runs and FastCGI pools are
/// stopped and continued to keep their class's `cpu_limit` (rescon-linux `usermode`).
fn start_limiter(
    options: &Options,
    kernel: Option<&Arc<Manager>>,
    registry: &Registry,
) -> Option<Arc<rescon_linux::usermode::Limiter>> {
    if kernel.is_some() || options.no_containers {
        return None;
    }
    match rescon_linux::usermode::Limiter::start(registry, Default::default()) {
        Ok(l) => Some(Arc::new(l)),
        Err(e) => {
            tracing::warn!(error = %e, "no user-mode CPU capping: CGI processes are not capped");
            None
        }
    }
}

/// SIGQUIT: a graceful stop. SIGTERM and SIGINT: stop CGI runs and remove our cgroups, then
/// exit. SIGHUP: reload (when there is a configuration file).
fn handle_signals(shared: &Arc<Shared>, admin: &Arc<Admin>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    use signal_hook::iterator::Signals;
    let thread = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map(drop)
            .context("starting a signal thread")
    };
    let stop = shared.stop.clone();
    let mut quit = Signals::new([SIGQUIT]).context("installing the SIGQUIT handler")?;
    thread(
        "rescon-httpd-quit",
        Box::new(move || {
            if quit.forever().next().is_some() {
                crate::service::notifier().stopping("stopping gracefully (SIGQUIT)");
                stop.begin();
            }
        }),
    )?;
    let kernel = shared.kernel.clone();
    let mut term = Signals::new([SIGTERM, SIGINT]).context("installing the SIGTERM handler")?;
    thread(
        "rescon-httpd-stop",
        Box::new(move || {
            if let Some(sig) = term.forever().next() {
                tracing::info!(signal = sig, "stopping");
                crate::service::notifier().stopping("stopping at once");
                fastcgi::stop_all();
                if let Some(m) = kernel {
                    if let Err(e) = m.shutdown() {
                        tracing::error!(error = %e, "removing the cgroups failed");
                    }
                }
                std::process::exit(0);
            }
        }),
    )?;
    if let Some(path) = shared.options.config_path.clone() {
        // POST /reload does what SIGHUP does (the admin holds its reloader: a weak handle
        // back to it, so neither keeps the other alive).
        let (s2, weak, p2) = (shared.clone(), Arc::downgrade(admin), path.clone());
        admin.set_reloader(Box::new(move || match weak.upgrade() {
            Some(admin) => reload_notified(&s2, &admin, &p2),
            None => Err("the server is stopping".into()),
        }));
        let (shared, admin) = (shared.clone(), admin.clone());
        let mut hup = Signals::new([SIGHUP]).context("installing the SIGHUP handler")?;
        thread(
            "rescon-httpd-reload",
            Box::new(move || {
                for _ in hup.forever() {
                    let _ = reload_notified(&shared, &admin, &path);
                }
            }),
        )?;
    }
    Ok(())
}

/// A reload as a service manager sees it (RELOADING, then READY) and as the log says it.
fn reload_notified(
    shared: &Shared,
    admin: &Admin,
    path: &std::path::Path,
) -> std::result::Result<String, String> {
    let notify = crate::service::notifier();
    notify.reloading();
    let result = reload(shared, admin, path);
    notify.ready(match &result {
        Ok(_) => "reloaded",
        Err(_) => "reload failed; the running configuration stays",
    });
    match result {
        Ok(summary) => {
            tracing::info!(config = %path.display(), %summary, "reloaded");
            Ok(summary)
        }
        Err(e) => {
            let e = format!("{e:#}");
            tracing::error!(
                config = %path.display(),
                error = %e,
                "reload failed; the running configuration stays"
            );
            Err(e)
        }
    }
}

/// Opens listener `l`: its group of class sockets (or, if the kernel refuses, one socket with
/// classes chosen after accept), an accept loop per socket, and its flood defense.
fn start_listener(
    shared: &Arc<Shared>,
    listeners: &Arc<Listeners>,
    l: &ListenerConfig,
    parent: &Container,
    defenses: &mut Vec<Running>,
    passed: Option<std::net::TcpListener>,
    loops: &mut AcceptLoops,
) -> Result<()> {
    let c = parent
        .create_child(&format!("listener-{}", l.name), Attributes::default())
        .context("creating a listener container")?;
    let name: Arc<str> = l.name.as_str().into();
    let site = shared.site.get();
    let ids: Vec<(String, u64)> = l
        .classes
        .iter()
        .filter_map(|k| {
            Some((
                k.name.clone(),
                site.class_container(&l.name, &k.name)?.id().get(),
            ))
        })
        .collect();
    let table = || {
        let tree = shared.tree.lock().unwrap_or_else(|e| e.into_inner());
        FilterTable::from_config(std::slice::from_ref(l), |p| tree.get(p).map(|c| c.id()))
    };
    // A socket the service manager passed serves as this listener's (first) socket.
    let mut passed = passed;
    let bind = |passed: &mut Option<std::net::TcpListener>| -> Result<rescon_rt::TcpListener> {
        match passed.take() {
            Some(s) => rescon_rt::TcpListener::from_std(s, &c)
                .with_context(|| format!("listener {}: the passed socket", l.name)),
            None => rescon_rt::TcpListener::bind_in(l.addr, &c)
                .with_context(|| format!("listener {}: binding {}", l.name, l.addr)),
        }
    };
    let one_socket = |classes: Classes,
                      passed: &mut Option<std::net::TcpListener>,
                      loops: &mut AcceptLoops|
     -> Result<SocketAddr> {
        let socket = bind(passed)?;
        let addr = socket.local_addr()?;
        loops.push((
            c.clone(),
            None,
            Box::pin(accept_loop(shared.clone(), socket, name.clone(), classes)),
        ));
        Ok(addr)
    };
    if shared.options.no_containers {
        let addr = one_socket(Classes::None(c.clone()), &mut passed, loops)?;
        let source = Source::Table(table());
        listeners.add(
            Arc::new(Listener {
                config: l.clone(),
                addr,
                source,
            }),
            ids,
        );
        listening(l, addr);
        return Ok(());
    }
    let opened = Group::open(
        l,
        |class| site.class_container(&l.name, class).cloned(),
        &c,
        &mut passed,
    );
    let group = match opened {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(listener = %l.name, error = format!("{e:#}"), "no per-class sockets; one socket, classes chosen after accept");
            // Registered before it accepts, so its loop finds its table.
            let socket = bind(&mut passed)?;
            let addr = socket.local_addr()?;
            let listener = Arc::new(Listener {
                config: l.clone(),
                addr,
                source: Source::Table(table()),
            });
            listeners.add(listener.clone(), ids);
            let loop_ = accept_loop(shared.clone(), socket, name, Classes::Table(listener));
            loops.push((c.clone(), None, Box::pin(loop_)));
            listening(l, addr);
            return Ok(());
        }
    };
    for iface in &l.edge {
        match group.group.drop_at_edge(iface, XdpMode::Auto) {
            Ok(()) => {
                tracing::info!(listener = %l.name, %iface, "black-holed SYNs dropped at the interface (XDP)")
            }
            Err(e) => {
                tracing::warn!(listener = %l.name, %iface, error = %e, "no edge filter; the black hole still drops those SYNs at its socket")
            }
        }
    }
    let workers = rescon_rt::Handle::try_current().map_or(1, |h| h.workers());
    for m in group.group.members() {
        let role = &group.roles[m.id().get()];
        if role.is_black_hole() {
            continue;
        }
        let Some(class_c) = site.class_container(&l.name, &role.name) else {
            continue;
        };
        // The socket counts its accepts against the listener's container, as one socket
        // does; the accept task runs in the class's container, so the class's scheduling
        // class and share decide when its connections are accepted.
        //
        // A class above normal is accepted on every worker: each has a loop on its own
        // descriptor of the member socket, in its own epoll instance, so that whichever
        // worker is running (or wakes first) accepts the connection; `spawn_in` from it then
        // serves the connection on the worker the kernel gives the most of a CPU. With one
        // loop, the class's new connections waited in one worker's epoll instance while the
        // kernel ran another thread on that worker's CPU, and neither the class hand-off nor
        // balancing can see work that is not yet a runnable task. Other classes keep one
        // loop: a connection wakes every loop of its class, and only one accepts it.
        let copies = if above_normal(class_c) { workers } else { 1 };
        for i in 0..copies {
            let socket = rescon_rt::TcpListener::from_std(m.try_clone_listener()?, &c)?;
            let classes = Classes::Member(role.name.clone());
            loops.push((
                class_c.clone(),
                (copies > 1).then_some(i),
                Box::pin(accept_loop(shared.clone(), socket, name.clone(), classes)),
            ));
        }
    }
    if let Some(k) = &shared.kernel_net {
        k.watch(&group.group);
    }
    if let Some(fd) = &l.flood_defense {
        match listen::flood_defense(&group, fd, listeners, &l.name) {
            Ok(running) => defenses.push(running),
            Err(e) => {
                tracing::warn!(listener = %l.name, error = format!("{e:#}"), "flood defense off")
            }
        }
    }
    let addr = group.group.local_addr();
    let source = Source::Kernel(group);
    listeners.add(
        Arc::new(Listener {
            config: l.clone(),
            addr,
            source,
        }),
        ids,
    );
    listening(l, addr);
    Ok(())
}

/// Whether `c` is of a scheduling class above normal (its own attribute: a class container
/// of the configuration, such as `clients/high`).
fn above_normal(c: &Container) -> bool {
    c.attrs().class > rescon::SchedClass::NORMAL
}

/// Says that a listener accepts (what scripts and tests wait for: `listening on ADDR`).
fn listening(l: &ListenerConfig, addr: SocketAddr) {
    tracing::info!(listener = %l.name, "listening on {addr}");
}

/// The rest of a graceful stop, once it has begun: the accept loops have returned (closing
/// their sockets) and each connection finishes the request under way, then closes; the
/// listener groups' sockets are closed here, so new connections are refused. Waits up to
/// `timeouts.shutdown` for the connections, then stops the CGI runs, removes the cgroups and
/// exits, as SIGTERM does at once.
async fn graceful_stop(shared: &Shared, defenses: Vec<Running>) {
    drop(defenses);
    let live = || shared.stop.live.load(Relaxed);
    let grace = shared.site.get().config.timeouts.shutdown;
    tracing::info!(
        ?grace,
        connections = live(),
        "SIGQUIT, stopping: no new connections; waiting for those under way"
    );
    let deadline = Instant::now() + grace;
    while live() > 0 && Instant::now() < deadline {
        rescon_rt::sleep(Duration::from_millis(20)).await;
    }
    if live() > 0 {
        tracing::warn!(
            connections = live(),
            "connections still open at timeouts.shutdown: cut"
        );
    }
    fastcgi::stop_all();
    if let Some(m) = &shared.kernel {
        if let Err(e) = m.shutdown() {
            tracing::error!(error = %e, "removing the cgroups failed");
        }
    }
    tracing::info!("stopped");
    std::process::exit(0);
}

/// Opens the access log (appending to a file): `None` when it is off.
fn open_log(how: &LogConfig) -> Result<Option<Box<dyn Write + Send>>> {
    Ok(match how {
        LogConfig::Off => None,
        LogConfig::Stdout => Some(Box::new(std::io::stdout())),
        LogConfig::File(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening the access log {}", p.display()))?;
            Some(Box::new(f))
        }
    })
}

/// Loads the configuration file again and puts it in force: the tree changes, a new compiled
/// site, the access log reopened. A configuration that does not load, a log or a directory
/// that cannot be opened changes nothing.
fn reload(shared: &Shared, admin: &Admin, path: &std::path::Path) -> Result<String> {
    let mut config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if config.uses_demo() {
        let dir = crate::demo::unpack_cached()?;
        config.set_demo_dir(&dir);
    }
    // Opened anew, as the file now says: after a rotation (the file renamed, then SIGHUP) the
    // log goes to a new file at the configured path.
    let log = open_log(&config.server.access_log)?;
    let fastcgi_configs = config.fastcgi.clone();
    let grace = config.timeouts.shutdown;
    let opened = Opened::open(config)?;
    let mut tree = shared.tree.lock().unwrap_or_else(|e| e.into_inner());
    let new_tree = opened_tree(&opened);
    let diff = tree.reload(&new_tree).map_err(|e| anyhow::anyhow!("{e}"))?;
    tree.apply(&diff).map_err(|e| anyhow::anyhow!("{e}"))?;
    admin.set_declared(&tree);
    let site = opened.resolve(&tree)?;
    // Routes change with the site: the new applications are in force from here.
    let fastcgi = shared.fastcgi.reload(&fastcgi_configs, &tree, grace);
    drop(tree);
    shared.site.publish(site);
    shared.log.replace(log);
    let mut summary = format!(
        "{} containers added, {} removed, {} changed",
        diff.add.len(),
        diff.remove.len(),
        diff.change.len()
    );
    if let Some(note) = fastcgi {
        tracing::info!(%note, "reload");
        summary = format!("{summary}; {note}");
    }
    Ok(summary)
}

/// The tree an opened configuration declares.
fn opened_tree(o: &Opened) -> crate::config::TreeSpec {
    o.config().tree.clone()
}
