//! Stage: a FastCGI request, the paper's persistent CGI. A request under a `[[fastcgi]]`
//! prefix goes to its application, over a Unix or TCP socket, one connection per request.
//!
//! - **Where it is charged.** Each request gets a container of its own under the
//!   application's class container (a CGI class), as a CGI run does. The worker that serves
//!   it is found from the connection ([`peer`]), and its CPU from the end of its previous
//!   request to the end of this one is added to the request's container (`kernel_cpu_ns`): a
//!   worker serves one request at a time. A rescon-aware application also receives the
//!   request's container handle on the first record (`pass_handle`, Unix sockets only;
//!   `rescon_handle::pass::recv_with` reads it) and can charge it, read it, make children.
//! - **Limits.** The pool the server starts ([`pool`]) runs in a container under the class:
//!   in its cgroup with kernel enforcement, held by the user-mode limiter otherwise, so the
//!   class's CPU cap and process limit apply to FastCGI work as to CGI runs. An application
//!   started elsewhere is not placed (nothing of the server reaches it); its requests are
//!   still charged.
//! - **Failures.** An application that cannot be reached, closes the connection before the end
//!   of the request (a crashed worker), sends a malformed record or a head over
//!   `limits.cgi_max_header_bytes` gets 502 with what happened. One that sends nothing (no
//!   record, not a byte) for `timeouts.cgi_idle`, or has not finished at `timeouts.cgi_total`
//!   (if set), gets 504, as a CGI run does; if its head was sent already, the body is cut.
//!   Either way the connection is shut, and a worker of our own pool is killed: the pool
//!   forks another. The connection is closed in every case; the request's
//!   container goes with the response.
//! - **Reloads** apply `[[fastcgi]]` ([`FastCgi::reload`]): an application whose
//!   configuration (and class container) is unchanged keeps running, pool and all; a new or
//!   changed one starts (its pool too) and takes the prefix's requests at once; one no longer
//!   configured, or replaced, is retired: no new request reaches it, those under way finish
//!   (for up to `timeouts.shutdown`), then its pool stops (SIGTERM, SIGKILL after 5 s) and its
//!   container goes. A new pool on the address of a pool being retired (php-fpm's socket path)
//!   starts only once that one has stopped, as two cannot listen there at once; its requests
//!   wait for it within their own timeouts, and retry connecting while it starts.
//! - **Stderr.** What the application writes on `FCGI_STDERR` is logged, bounded per request
//!   ([`stderr`]: the one place to change when a shared bound for CGI output exists).
//!
//! - **CPU adds up.** With kernel enforcement the pool's cgroup counts every process of the
//!   pool. The pool's own container is credited what its workers used for requests (charged
//!   to the requests' containers, or used so far by requests under way:
//!   [`peer::Workers::credit`], read by the cgroup manager right after the cgroup's counter,
//!   `Manager::set_cpu_credit`), so it shows only the rest: the master, idle workers, workers
//!   started but not yet serving. The pool and its requests are siblings' worth of a sum: over
//!   the class's subtree they add up to the cgroup's CPU, within what clock ticks round down
//!   (10 ms per worker under way at a sample, never lost, at most held in the pool's
//!   container). In user mode the limiter that caps the pool's process group charges its CPU
//!   to the pool's container by the same rule (`Limiter::cap_charging`, with the same
//!   credit): the same sum, CPU counted once.

mod peer;
mod pool;

pub(crate) use pool::{RunAs, stop_all};

use super::cgi::CgiBody;
use super::respond::{Body, simple};
use crate::cgi::{CgiHead, CgiHeadParser, CgiRequest, Watchdog, meta_variables, under_prefix};
use crate::config::{FastCgiAddress, FastCgiConfig, LiveTree, RequestLimits, Timeouts};
use crate::fastcgi::{self as codec, Decoder, Event};
use crate::static_files::{RelPath, normalize};
use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use rescon::{Attributes, Container};
use rescon_linux::cgroup::Manager;
use rescon_linux::usermode::Limiter;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// One `[[fastcgi]]` application, from its start to the reload that retires it (then, once
/// its requests under way have ended, its pool is stopped).
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) config: FastCgiConfig,
    /// The class container its requests are made under.
    class: Container,
    /// The pool the server started (`command` set), once it is started: a pool that replaces
    /// one on the same address starts when that one has stopped.
    pool: OnceLock<Arc<pool::Pool>>,
    /// Set if the pool to start could not be started (its requests stop waiting for it).
    pool_failed: AtomicBool,
    workers: Arc<peer::Workers>,
    /// Requests under way, for a drain.
    inflight: Mutex<usize>,
    drained: Condvar,
}

impl App {
    /// `[[fastcgi]]` number `i`, under its class container in `tree`; its pool not started.
    fn new(i: usize, f: &FastCgiConfig, tree: &LiveTree) -> anyhow::Result<Arc<App>> {
        let class = tree
            .get(&f.container)
            .with_context(|| {
                format!(
                    "fastcgi[{i}]: container {} is not declared",
                    f.container.as_str()
                )
            })?
            .clone();
        Ok(Arc::new(App {
            config: f.clone(),
            class,
            pool: OnceLock::new(),
            pool_failed: AtomicBool::new(false),
            workers: Arc::new(peer::Workers::default()),
            inflight: Mutex::new(0),
            drained: Condvar::new(),
        }))
    }

    fn pool(&self) -> Option<&Arc<pool::Pool>> {
        self.pool.get()
    }

    /// Waits until this application's pool is started (or failed to start), at most `left`.
    fn wait_for_pool(&self, left: Duration) {
        if self.config.command.is_empty() {
            return;
        }
        let until = Instant::now() + left;
        while self.pool.get().is_none() && !self.pool_failed.load(Relaxed) && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until no request is under way, at most `grace`: whether none is.
    fn drain(&self, grace: Duration) -> bool {
        let until = Instant::now() + grace;
        let mut n = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self
                .drained
                .wait_timeout(n, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// A request under way at an application: counted from the request's container being made to
/// the end of its job (or the run dropped before it), so a drain waits for it.
struct InFlight(Arc<App>);

impl InFlight {
    fn new(app: &Arc<App>) -> InFlight {
        *app.inflight.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        InFlight(app.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut n = self.0.inflight.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            self.0.drained.notify_all();
        }
    }
}

/// What starting a pool needs from the server, kept for reloads.
struct Starter {
    kernel: Option<Arc<Manager>>,
    limiter: Option<Arc<Limiter>>,
    run_as: Option<RunAs>,
    /// Numbers the pools' containers and threads: `fastcgi-pool-<index>` at the server's
    /// start, `fastcgi-pool-<index>-<n>` after (the name of a pool still draining is taken).
    started: AtomicU64,
}

impl Starter {
    /// Starts `f`'s pool for `app` (in a container under its class, named after `index`).
    fn start_pool(&self, index: usize, app: &App) -> anyhow::Result<()> {
        let n = self.started.fetch_add(1, Relaxed);
        let name = if n < START_GENERATION {
            format!("{index}")
        } else {
            format!("{index}-{}", n - START_GENERATION)
        };
        let mut attrs = Attributes::default();
        if self.kernel.is_some() {
            let _ = attrs.set("enforcement", "kernel");
        }
        let c = app
            .class
            .create_child(&format!("fastcgi-pool-{name}"), attrs)
            .context("creating a FastCGI pool's container")?;
        // What the pool's workers used for requests is charged to the requests' containers,
        // so the pool's own container gets only the rest (see the module docs): the cgroup's
        // sampler takes it off, or without cgroups the user-mode limiter, by the same rule.
        let w = app.workers.clone();
        let credit: rescon_linux::usermode::Credit = Arc::new(move || w.credit());
        if let Some(m) = &self.kernel {
            m.set_cpu_credit(&c, credit.clone());
        }
        let pool = pool::Pool::start(
            &name,
            &app.config.command,
            c,
            self.kernel.clone(),
            self.limiter.clone(),
            app.config.restarts,
            self.run_as.clone(),
            credit,
        );
        match pool {
            Ok(p) => {
                let _ = app.pool.set(p);
                Ok(())
            }
            Err(e) => {
                app.pool_failed.store(true, Relaxed);
                Err(e)
            }
        }
    }
}

/// `Starter::started` from here on names pools started by reloads.
const START_GENERATION: u64 = 1 << 32;

/// The FastCGI applications and what serves them.
pub(crate) struct FastCgi {
    /// The applications in force, in `[[fastcgi]]` order (a reload publishes a new list).
    apps: RwLock<Arc<[Arc<App>]>>,
    /// Issues request handles for applications with `pass_handle` (made with the first).
    owner: OnceLock<(rescon_handle::owner::Owner, rescon_handle::owner::Server)>,
    starter: Starter,
    seq: AtomicU64,
    /// Whether any application is configured (`route`'s fast way out).
    any: AtomicBool,
}

/// What a reload does to `[[fastcgi]]`, by the applications' new index.
#[derive(Debug, PartialEq)]
enum Plan {
    /// The same configuration, in the same class container: the running application stays.
    Keep(usize),
    /// New or changed: a new application (and pool, if it has a command).
    Start,
}

impl FastCgi {
    /// Starts the pools of `configs` in their class containers (declared in `tree`).
    pub(crate) fn start(
        configs: &[FastCgiConfig],
        tree: &LiveTree,
        kernel: Option<&Arc<Manager>>,
        limiter: Option<&Arc<Limiter>>,
        run_as: Option<RunAs>,
    ) -> anyhow::Result<FastCgi> {
        let fcgi = FastCgi {
            apps: RwLock::new(Arc::from(Vec::new())),
            owner: OnceLock::new(),
            starter: Starter {
                kernel: kernel.cloned(),
                limiter: limiter.cloned(),
                run_as,
                started: AtomicU64::new(0),
            },
            seq: AtomicU64::new(0),
            any: AtomicBool::new(!configs.is_empty()),
        };
        let mut apps = Vec::new();
        for (i, f) in configs.iter().enumerate() {
            let app = App::new(i, f, tree)?;
            if !f.command.is_empty() {
                fcgi.starter.start_pool(i, &app)?;
            }
            apps.push(app);
        }
        fcgi.starter.started.store(START_GENERATION, Relaxed);
        fcgi.ensure_owner(configs)?;
        *fcgi.apps.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(apps);
        Ok(fcgi)
    }

    /// The applications in force.
    fn apps(&self) -> Arc<[Arc<App>]> {
        self.apps.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The handle owner, made when an application first passes handles.
    fn ensure_owner(&self, configs: &[FastCgiConfig]) -> anyhow::Result<()> {
        if self.owner.get().is_some() || !configs.iter().any(|f| f.pass_handle) {
            return Ok(());
        }
        let enforcer: Option<Arc<dyn rescon_handle::owner::Enforcer>> =
            match (&self.starter.kernel, &self.starter.limiter) {
                (Some(m), _) => Some(m.clone()),
                (None, Some(l)) => Some(l.clone()),
                _ => None,
            };
        let config = rescon_handle::owner::Config::default();
        let owner = match enforcer {
            Some(e) => rescon_handle::owner::Owner::with_enforcer(config, e),
            None => rescon_handle::owner::Owner::new(config),
        }
        .context("starting the container-handle owner")?;
        let server = owner
            .spawn("rescon-handles")
            .context("starting the handle thread")?;
        let _ = self.owner.set((owner, server));
        Ok(())
    }

    /// Which running application each of `new` keeps (same configuration, same class
    /// container), each running one kept at most once.
    fn plan(old: &[Arc<App>], new: &[FastCgiConfig], tree: &LiveTree) -> Vec<Plan> {
        let mut taken = vec![false; old.len()];
        new.iter()
            .map(|n| {
                let same = old.iter().enumerate().position(|(j, o)| {
                    !taken[j]
                        && o.config == *n
                        && tree
                            .get(&n.container)
                            .is_some_and(|c| c.id() == o.class.id())
                });
                match same {
                    Some(j) => {
                        taken[j] = true;
                        Plan::Keep(j)
                    }
                    None => Plan::Start,
                }
            })
            .collect()
    }

    /// Puts `new` in force (a reload; `tree` is the reloaded tree): unchanged applications keep
    /// running, new and changed ones start, and the applications no longer configured stop
    /// taking requests at once and are retired: their requests under way finish (for up to
    /// `grace`), then their pools stop. A new pool on the address of one being retired starts
    /// once that one has stopped (its requests wait for it, within their timeouts). What was
    /// done, in words, or `None` if `[[fastcgi]]` did not change.
    pub(crate) fn reload(
        &self,
        new: &[FastCgiConfig],
        tree: &LiveTree,
        grace: Duration,
    ) -> Option<String> {
        let old = self.apps();
        let plan = Self::plan(&old, new, tree);
        let kept: Vec<usize> = plan
            .iter()
            .filter_map(|p| match p {
                Plan::Keep(j) => Some(*j),
                Plan::Start => None,
            })
            .collect();
        if old.len() == new.len() && plan.iter().enumerate().all(|(i, p)| *p == Plan::Keep(i)) {
            return None;
        }
        let retired: Vec<Arc<App>> = (0..old.len())
            .filter(|j| !kept.contains(j))
            .map(|j| old[j].clone())
            .collect();
        let mut said = Vec::new();
        let mut apps = Vec::new();
        // Pools that wait for a retired one on their address to stop: (retired, new, index).
        let mut after: Vec<(usize, Arc<App>, usize)> = Vec::new();
        for (i, (f, p)) in new.iter().zip(&plan).enumerate() {
            if let Plan::Keep(j) = p {
                apps.push(old[*j].clone());
                if *j != i {
                    said.push(format!(
                        "fastcgi[{i}] ({}) kept (was fastcgi[{j}])",
                        f.prefix
                    ));
                }
                continue;
            }
            let app = match App::new(i, f, tree) {
                Ok(a) => a,
                Err(e) => {
                    said.push(format!("fastcgi[{i}] ({}) NOT started: {e:#}", f.prefix));
                    continue;
                }
            };
            let what = match old.iter().position(|o| o.config.prefix == f.prefix) {
                Some(j) => {
                    let fields = changed_fields(&old[j].config, f);
                    format!(
                        "fastcgi[{i}] ({}) changed ({})",
                        f.prefix,
                        if fields.is_empty() {
                            "its class container was declared anew".into()
                        } else {
                            fields.join(", ")
                        }
                    )
                }
                None => format!("fastcgi[{i}] ({}) added", f.prefix),
            };
            let blocking = retired
                .iter()
                .position(|r| r.config.address == f.address && r.pool().is_some());
            match (f.command.is_empty(), blocking) {
                (true, _) => said.push(what),
                (false, Some(r)) => {
                    said.push(format!(
                        "{what}, its pool starts once the old pool on {} has drained and stopped",
                        f.address
                    ));
                    after.push((r, app.clone(), i));
                }
                (false, None) => match self.starter.start_pool(i, &app) {
                    Ok(()) => said.push(format!("{what}, its pool started")),
                    Err(e) => said.push(format!(
                        "{what}, but its pool did NOT start ({e:#}): its requests get 502"
                    )),
                },
            }
            apps.push(app);
        }
        if let Err(e) = self.ensure_owner(new) {
            said.push(format!(
                "no container handles for pass_handle applications ({e:#})"
            ));
        }
        self.any.store(!apps.is_empty(), Relaxed);
        *self.apps.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(apps);
        for (r, app) in retired.iter().enumerate() {
            let starts: Vec<(Arc<App>, usize)> = after
                .iter()
                .filter(|(k, _, _)| *k == r)
                .map(|(_, a, i)| (a.clone(), *i))
                .collect();
            let j = old.iter().position(|o| Arc::ptr_eq(o, app)).unwrap_or(0);
            let replaced = new.iter().any(|n| n.prefix == app.config.prefix);
            said.push(
                format!(
                    "{} fastcgi[{j}] ({}) {}: {}",
                    if replaced { "the old" } else { "" },
                    app.config.prefix,
                    if replaced { "retired" } else { "removed" },
                    if app.pool().is_some() {
                        "no new requests, its pool stops once its requests under way have ended"
                    } else {
                        "no new requests"
                    }
                )
                .trim_start()
                .to_string(),
            );
            self.retire(app.clone(), grace, starts);
        }
        Some(format!("[[fastcgi]] applied: {}", said.join("; ")))
    }

    /// Drains `app` (retired: no new requests reach it) for up to `grace`, stops its pool, then
    /// starts the pools of `then` (new applications on its address), from a thread.
    fn retire(&self, app: Arc<App>, grace: Duration, then: Vec<(Arc<App>, usize)>) {
        let starter = Starter {
            kernel: self.starter.kernel.clone(),
            limiter: self.starter.limiter.clone(),
            run_as: self.starter.run_as.clone(),
            started: AtomicU64::new(0),
        };
        // The names of the pools started later are taken now, from the shared sequence.
        let names: Vec<u64> = then
            .iter()
            .map(|_| self.starter.started.fetch_add(1, Relaxed))
            .collect();
        let spawned = std::thread::Builder::new()
            .name("fcgi-drain".into())
            .spawn(move || {
                let prefix = app.config.prefix.clone();
                if !app.drain(grace) {
                    tracing::warn!(fastcgi = %prefix, ?grace, "a retired FastCGI application still had requests under way at timeouts.shutdown: its pool stops anyway");
                }
                if let Some(p) = app.pool() {
                    p.stop();
                    tracing::info!(fastcgi = %prefix, "retired FastCGI pool drained and stopped");
                }
                drop(app);
                for ((new, i), n) in then.into_iter().zip(names) {
                    starter.started.store(n, Relaxed);
                    if let Err(e) = starter.start_pool(i, &new) {
                        tracing::error!(fastcgi = %new.config.prefix, error = %format!("{e:#}"), "the FastCGI pool of a reload did not start: its requests get 502");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the thread that retires a FastCGI application");
        }
    }

    /// The application whose prefix `path` (raw, percent-encoded) is under, longest prefix
    /// first, and the path after the prefix.
    pub(crate) fn route(&self, path: &str) -> Option<(Arc<App>, RelPath)> {
        // Every request asks: without applications, one load.
        if !self.any.load(Relaxed) {
            return None;
        }
        let rel = normalize(path).ok()?;
        self.apps()
            .iter()
            .filter_map(|a| Some((a, under_prefix(&a.config.prefix, &rel)?)))
            .max_by_key(|(a, _)| a.config.prefix.len())
            .map(|(a, r)| (a.clone(), r))
    }

    /// A request's run: its container made under the class (503 if it cannot be).
    // The error is an answer to send, built once and moved once: not worth a box.
    #[allow(clippy::result_large_err, clippy::too_many_arguments)]
    pub(crate) fn run(
        &self,
        app: &Arc<App>,
        rest: &RelPath,
        server_name: String,
        remote: SocketAddr,
        local: SocketAddr,
        limits: RequestLimits,
        timeouts: Timeouts,
        watchdog: Arc<Watchdog>,
    ) -> Result<FcgiRun, Response<Body>> {
        let inflight = InFlight::new(app);
        let n = self.seq.fetch_add(1, Relaxed);
        let container = app
            .class
            .create_child(&format!("fcgi-{n}"), Attributes::default())
            .map_err(|e| simple(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()))?;
        let handle = match (self.owner.get(), app.config.pass_handle) {
            (Some((o, _)), true) => match o.issue(&container) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "no container handle for a FastCGI request; it is served without");
                    None
                }
            },
            _ => None,
        };
        let (script, path_info) = split_script(&app.config.root, rest);
        Ok(FcgiRun {
            app: app.clone(),
            inflight,
            container,
            handle,
            script_name: format!("{}{}", app.config.prefix, script),
            script_filename: app.config.root.join(&script),
            path_info,
            server_name,
            remote,
            local,
            limits,
            timeouts,
            watchdog,
        })
    }
}

/// The fields of `[[fastcgi]]` that differ between `o` and `n`.
fn changed_fields(o: &FastCgiConfig, n: &FastCgiConfig) -> Vec<&'static str> {
    [
        ("prefix", o.prefix != n.prefix),
        ("address", o.address != n.address),
        ("root", o.root != n.root),
        ("container", o.container != n.container),
        ("command", o.command != n.command),
        ("restarts", o.restarts != n.restarts),
        ("pass_handle", o.pass_handle != n.pass_handle),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// The script (the first path that is a file under `root`, or the whole path if none is)
/// and the path after it (`PATH_INFO`).
fn split_script(root: &std::path::Path, rest: &RelPath) -> (String, String) {
    let segs = rest.segments();
    let join = |s: &[std::ffi::OsString]| {
        s.iter()
            .map(|x| x.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/")
    };
    for n in 1..=segs.len() {
        let p: PathBuf = segs[..n].iter().collect();
        if root.join(&p).is_file() {
            let info = if n < segs.len() {
                format!("/{}", join(&segs[n..]))
            } else {
                String::new()
            };
            return (join(&segs[..n]), info);
        }
    }
    (join(segs), String::new())
}

/// One FastCGI request.
pub(crate) struct FcgiRun {
    app: Arc<App>,
    /// Counts the request as under way at `app` until its job ends.
    inflight: InFlight,
    /// The request's own container (under the class).
    pub(crate) container: Container,
    handle: Option<std::os::fd::OwnedFd>,
    script_name: String,
    script_filename: PathBuf,
    path_info: String,
    server_name: String,
    remote: SocketAddr,
    local: SocketAddr,
    limits: RequestLimits,
    timeouts: Timeouts,
    watchdog: Arc<Watchdog>,
}

enum Outcome {
    /// The head; the body follows on the channel.
    Done(CgiHead),
    /// The application ended the request after its response.
    Ended,
    Failed(String),
    /// Which timeout passed.
    TimedOut(&'static str),
}

/// Why a run timed out: the total if it has passed, else the idle time.
fn which_timeout(started: Instant, total: Option<Duration>) -> &'static str {
    match total {
        Some(t) if started.elapsed() >= t => "the FastCGI application ran past timeouts.cgi_total",
        _ => "the FastCGI application was silent longer than timeouts.cgi_idle",
    }
}

impl FcgiRun {
    /// Sends the request to the application and answers with its response (streamed), or
    /// why there is none (413, 408, 502, 504).
    pub(crate) async fn run(self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        // The body is read whole first (bounded by limits.max_body_bytes): FastCGI gives the
        // application its length, and a slow client then holds no worker.
        let limited = Limited::new(body, self.limits.max_body_bytes as usize).collect();
        let stdin = match rescon_rt::timeout(self.timeouts.body, limited).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => return simple(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            Err(_) => return simple(StatusCode::REQUEST_TIMEOUT, "request body too slow"),
        };
        let env = meta_variables(&CgiRequest {
            method: &parts.method,
            version: parts.version,
            raw_path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            content_length: (!stdin.is_empty()).then_some(stdin.len() as u64),
            remote: self.remote,
            local: self.local,
            server_name: &self.server_name,
            script_name: &self.script_name,
            path_info: &self.path_info,
            script_filename: &self.script_filename,
            document_root: &self.app.config.root,
            container: Some(self.container.id()),
        });
        let mut params: Vec<(&[u8], &[u8])> = env
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        // php-fpm wants REQUEST_URI; CGI/1.1 has no such variable.
        let uri = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        if !env.contains_key("REQUEST_URI") {
            params.push((b"REQUEST_URI", uri.as_bytes()));
        }
        let params = codec::encode_params(params);
        let (head_tx, head_rx) = tokio::sync::oneshot::channel();
        let (body_tx, body_rx) = tokio::sync::mpsc::channel(8);
        let job = Job {
            app: self.app,
            _inflight: self.inflight,
            container: self.container.clone(),
            handle: self.handle,
            params,
            stdin,
            started: Instant::now(),
            idle: self.timeouts.cgi_idle,
            total: self.timeouts.cgi_total,
            max_head: self.limits.cgi_max_header_bytes as usize,
            stderr_budget: self.limits.cgi_stderr_bytes,
            watchdog: self.watchdog,
            head_tx: Some(head_tx),
            body_tx,
        };
        // Blocking sockets on the blocking pool, as a CGI run's pipes: the relay's CPU is
        // charged to the request's container.
        let _job = rescon_rt::spawn_blocking_in(&self.container, move || job.run());
        let head = match head_rx.await {
            Ok(Outcome::Done(h)) => h,
            Ok(Outcome::TimedOut(why)) => return simple(StatusCode::GATEWAY_TIMEOUT, why),
            Ok(Outcome::Failed(msg)) => return simple(StatusCode::BAD_GATEWAY, &msg),
            Ok(Outcome::Ended) => {
                return simple(
                    StatusCode::BAD_GATEWAY,
                    "the FastCGI request ended without a response",
                );
            }
            Err(_) => return simple(StatusCode::INTERNAL_SERVER_ERROR, "FastCGI job failed"),
        };
        let (status, headers) = match head {
            CgiHead::Document { status, headers } | CgiHead::ClientRedirect { status, headers } => {
                (status, headers)
            }
            CgiHead::LocalRedirect { location } => {
                let mut r = simple(StatusCode::FOUND, "see other");
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                return r;
            }
        };
        let mut r = Response::new(Body::Cgi(CgiBody::from_channel(body_rx)));
        *r.status_mut() = status;
        for (k, v) in headers.iter() {
            r.headers_mut().append(k, v.clone());
        }
        r
    }
}

/// A connection to an application.
pub(crate) enum Conn {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Conn {
    fn connect(a: &FastCgiAddress, timeout: Duration) -> std::io::Result<Conn> {
        Ok(match a {
            FastCgiAddress::Unix(p) => Conn::Unix(std::os::unix::net::UnixStream::connect(p)?),
            FastCgiAddress::Tcp(sa) => {
                let s = std::net::TcpStream::connect_timeout(sa, timeout)?;
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }
        })
    }

    fn try_clone(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, t: Option<Duration>) {
        let _ = match self {
            Conn::Unix(s) => s.set_read_timeout(t),
            Conn::Tcp(s) => s.set_read_timeout(t),
        };
    }

    fn shutdown(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.write_all(b),
            Conn::Tcp(s) => s.write_all(b),
        }
    }

    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(b),
            Conn::Tcp(s) => s.read(b),
        }
    }
}

/// What the blocking thread of a request needs.
struct Job {
    app: Arc<App>,
    _inflight: InFlight,
    container: Container,
    handle: Option<std::os::fd::OwnedFd>,
    params: Vec<u8>,
    stdin: Bytes,
    /// When the request was handed to the job: `total` counts from here.
    started: Instant,
    /// `timeouts.cgi_idle`: the longest silence, between connecting and the end of the
    /// response (every byte read from the application is activity).
    idle: Duration,
    /// `timeouts.cgi_total`.
    total: Option<Duration>,
    max_head: usize,
    /// `limits.cgi_stderr_bytes`: what of the application's stderr reaches the log.
    stderr_budget: u64,
    watchdog: Arc<Watchdog>,
    head_tx: Option<tokio::sync::oneshot::Sender<Outcome>>,
    body_tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
}

/// The request id on a connection of our own (one request per connection).
const ID: u16 = 1;

/// A request body this size or smaller is written before the response is read; a larger
/// one from a thread, so an application that answers before it reads cannot deadlock with us.
const INLINE_STDIN: usize = 64 * 1024;

impl Job {
    fn run(mut self) {
        let outcome = self.execute();
        match self.head_tx.take() {
            Some(t) => {
                let _ = t.send(outcome);
            }
            None => {
                // The head went out: a failure now cuts the body.
                if let Outcome::TimedOut(why) = outcome {
                    tracing::warn!(fastcgi = %self.app.config.prefix, "{why}: the response was cut");
                }
                if let Outcome::TimedOut(_) | Outcome::Failed(_) = outcome {
                    let _ = self
                        .body_tx
                        .blocking_send(Err(std::io::Error::other("the FastCGI response was cut")));
                }
            }
        }
    }

    fn execute(&mut self) -> Outcome {
        let addr = &self.app.config.address;
        let left = || match self.total {
            Some(t) => t.saturating_sub(self.started.elapsed()).min(self.idle),
            None => self.idle,
        };
        // A pool that a reload started after the one it replaces stopped: wait for it.
        self.app.wait_for_pool(left());
        let conn = loop {
            match Conn::connect(addr, left().max(Duration::from_millis(1))) {
                Ok(c) => break Ok(c),
                // A pool just started may not listen yet: asked again, within the timeout.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) && self.app.pool().is_some_and(|p| p.just_started())
                        && left() > Duration::from_millis(20) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => break Err(e),
            }
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                let down = self.app.pool().is_some_and(|p| p.pgid().is_none());
                return Outcome::Failed(format!(
                    "the FastCGI application at {addr} is not reachable ({e}){}",
                    if down { "; its pool is down" } else { "" }
                ));
            }
        };
        // Silent for `idle`, or at `total`: the connection is shut, the reads and writes
        // below end, and the run is over. Every read is activity.
        let total = self.total.map(|t| t.saturating_sub(self.started.elapsed()));
        let watch = match conn.try_clone() {
            Ok(c) => self
                .watchdog
                .watch_idle(self.idle, total, move || c.shutdown()),
            Err(e) => return Outcome::Failed(format!("FastCGI connection: {e}")),
        };
        let activity = watch.activity();
        let mut request = Vec::with_capacity(self.params.len() + 64);
        codec::stream(&mut request, codec::PARAMS, ID, &self.params);
        codec::stream(&mut request, codec::PARAMS, ID, &[]);
        let stdin = std::mem::take(&mut self.stdin);
        let inline = stdin.len() <= INLINE_STDIN;
        if inline {
            // No body: the stream's end alone (an empty record is the end: one, not two).
            if !stdin.is_empty() {
                codec::stream(&mut request, codec::STDIN, ID, &stdin);
            }
            codec::stream(&mut request, codec::STDIN, ID, &[]);
        }
        let begin = codec::begin_request(ID, false);
        let sent = match (&conn, self.handle.take()) {
            // The handle rides on the first record; our copy closes here, so the application
            // holds the only one (or none, if it reads without taking descriptors).
            (Conn::Unix(s), Some(h)) => {
                rescon_handle::pass::send_with(s.as_fd(), &begin, h.as_fd())
                    .map_err(|e| std::io::Error::other(e.to_string()))
            }
            _ => conn.write_all(&begin),
        }
        .and_then(|()| conn.write_all(&request));
        let feeder = match (sent.is_ok() && !inline).then(|| conn.try_clone()) {
            Some(Ok(mut c)) => Some(std::thread::spawn(move || {
                let mut r = Vec::with_capacity(stdin.len() + stdin.len() / 8000 + 16);
                codec::stream(&mut r, codec::STDIN, ID, &stdin);
                codec::stream(&mut r, codec::STDIN, ID, &[]);
                let _ = c.write_all(&r);
            })),
            _ => None,
        };
        // The worker that accepted the connection, and its CPU so far.
        let pgid = self.app.pool().and_then(|p| p.pgid());
        let mut worker = self.find_worker(&conn, pgid, false);
        let outcome = match sent {
            Err(e) => Outcome::Failed(format!(
                "the FastCGI application at {addr} did not take the request ({e})"
            )),
            Ok(()) => self.relay(&mut conn, &mut worker, pgid, &activity),
        };
        let timed_out = watch.disarm();
        conn.shutdown();
        if let Some(f) = feeder {
            let _ = f.join();
        }
        if let Some((pid, from)) = worker {
            if timed_out && pgid.is_some() {
                // A worker of our pool that overran: killed, and its pool forks another.
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            if let Some(ns) = self.app.workers.end(pid, from) {
                self.container.account().add_kernel_cpu_ns(ns);
            }
        }
        if timed_out {
            return Outcome::TimedOut(which_timeout(self.started, self.total));
        }
        outcome
    }

    /// The worker holding the other end of `conn` and its CPU at the start of this request
    /// (`known_only`: among the workers seen before only, without a scan of `/proc`).
    fn find_worker(&self, conn: &Conn, pgid: Option<i32>, known_only: bool) -> Option<(i32, u64)> {
        let ino = peer::peer_inode(conn)?;
        let pid = self.app.workers.find(ino, pgid, known_only)?;
        Some((pid, self.app.workers.begin(pid, pgid.is_some())?))
    }

    /// Reads the response: the head into a parser (sent as soon as it is whole), the rest as
    /// body chunks, stderr to the log, until `FCGI_END_REQUEST`.
    fn relay(
        &mut self,
        conn: &mut Conn,
        worker: &mut Option<(i32, u64)>,
        pgid: Option<i32>,
        activity: &crate::cgi::Activity,
    ) -> Outcome {
        let mut parser = CgiHeadParser::new(self.max_head);
        let mut dec = Decoder::new(ID);
        let mut stderr = crate::cgi::StderrSink::new(self.stderr_budget);
        let prefix = self.app.config.prefix.clone();
        let mut log = |line: &str| tracing::warn!(fastcgi = %prefix, "FastCGI stderr: {line}");
        let mut buf = vec![0u8; 16384];
        // A worker of our pool not found yet (the connection waits to be accepted) is looked
        // for again every LOOK while the response is awaited, among the known workers (a
        // full scan every tenth time), so that its CPU is counted as this request's while it
        // works (the pool's credit, see `peer::Workers::credit`), not only once it answers.
        const LOOK: Duration = Duration::from_millis(10);
        let mut looks = 0u32;
        let mut look = worker.is_none() && pgid.is_some();
        if look {
            conn.set_read_timeout(Some(LOOK));
        }
        loop {
            let crashed = || {
                Outcome::Failed(
                    "the FastCGI application closed the connection before the end of the \
                     request (did its worker crash?)"
                        .into(),
                )
            };
            let n = match conn.read(&mut buf) {
                Ok(0) => return crashed(),
                Ok(n) => {
                    activity.touch();
                    n
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if look
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                {
                    looks += 1;
                    *worker = self.find_worker(conn, pgid, looks % 10 != 0);
                    if worker.is_some() {
                        look = false;
                        conn.set_read_timeout(None);
                    }
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return crashed(),
                Err(e) => return Outcome::Failed(format!("reading the FastCGI response: {e}")),
            };
            if worker.is_none() {
                // Not accepted yet when we looked first: it is now.
                *worker = self.find_worker(conn, pgid, false);
            }
            if look && worker.is_some() {
                look = false;
                conn.set_read_timeout(None);
            }
            dec.feed(&buf[..n]);
            loop {
                let ev = match dec.next() {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(e) => return Outcome::Failed(format!("bad FastCGI response: {e}")),
                };
                match ev {
                    Event::Stdout(b) => {
                        if self.head_tx.is_none() {
                            if self.body_tx.blocking_send(Ok(b)).is_err() {
                                // The client went away.
                                return Outcome::Failed(String::new());
                            }
                            continue;
                        }
                        match parser.feed(&b) {
                            Ok(Some((h, rest))) => {
                                if let Some(t) = self.head_tx.take() {
                                    let _ = t.send(Outcome::Done(h));
                                }
                                if !rest.is_empty() {
                                    let _ = self.body_tx.blocking_send(Ok(Bytes::from(rest)));
                                }
                            }
                            Ok(None) => {}
                            Err(e) => return Outcome::Failed(format!("bad CGI response: {e}")),
                        }
                    }
                    Event::Stderr(b) => {
                        self.container.account().add_stderr_bytes(b.len() as u64);
                        stderr.feed(&b, &mut log);
                    }
                    Event::End(end) => {
                        stderr.finish(&mut log);
                        if self.head_tx.is_none() {
                            return Outcome::Ended;
                        }
                        return Outcome::Failed(if end.protocol_status != 0 {
                            format!(
                                "the FastCGI application refused the request: {}",
                                end.protocol_status_text()
                            )
                        } else {
                            format!(
                                "the FastCGI application ended the request (status {}) {}",
                                end.app_status,
                                parser.eof()
                            )
                        });
                    }
                    Event::StreamEnd(_) | Event::Management(_) => {}
                }
            }
        }
    }
}

/// Serves a request under a `[[fastcgi]]` prefix (the request stage's hook, before
/// dispatch): placement (the request's container under the class), the application, then the
/// response and its log, as a CGI run's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn serve(
    conn: &super::request::ConnCtx,
    site: &super::site::Site,
    app: &Arc<App>,
    rest: &RelPath,
    host: Option<&str>,
    req: Request<Incoming>,
    log: Option<super::respond::RequestLog>,
    done: super::conn::ReqDone,
    observe: super::respond::Observe,
) -> super::request::Reply {
    use super::respond::{Charged, Timed, finish, mono_ns};
    let shared = &conn.shared;
    let server_name = host
        .map(|h| h.split(':').next().unwrap_or(h).to_owned())
        .or_else(|| site.config.server.server_name.clone())
        .unwrap_or_else(|| "localhost".into());
    let run = shared.fastcgi.run(
        app,
        rest,
        server_name,
        conn.peer,
        conn.local,
        site.config.limits,
        site.config.timeouts,
        shared.cgi_watchdog.clone(),
    );
    let run = match run {
        Ok(r) => r,
        Err(resp) => {
            let charged = Charged {
                container: conn.me.clone(),
                cgi_run: false,
                vhost: None,
            };
            return super::request::Reply::Ready(Some(finish(resp, charged, log, done, observe)));
        }
    };
    let charged = Charged {
        container: run.container.clone(),
        cgi_run: true,
        vhost: None,
    };
    let cpu = log.as_ref().map(|l| l.cpu.clone());
    if let Some(l) = &log {
        l.cpu.add(mono_ns().saturating_sub(l.start.mono()));
    }
    super::request::Reply::Pending(Box::pin(Timed {
        inner: async move {
            let resp = run.run(req).await;
            finish(resp, charged, log, done, observe)
        },
        cpu,
    }))
}
