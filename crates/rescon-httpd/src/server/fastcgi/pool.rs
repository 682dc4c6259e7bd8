//! A FastCGI application pool that the server starts and supervises: the configured command
//! (php-fpm in the foreground, or any pre-forking FastCGI server) run in the pool's
//! container, under the class it serves.
//!
//! - **Placement.** The pool's container is a child of the class container. With kernel
//!   enforcement it is mirrored in a cgroup under the class's, so the class's `cpu_limit` and
//!   `max_processes` (`pids.max`) hold for the pool's every process, the workers it forks
//!   included. Without, the pool leads a process group of its own and the user-mode
//!   [`Limiter`] holds the group to the class's CPU limit (stopping and continuing it) and
//!   charges the group's CPU to the pool's container, less what its requests were charged
//!   (`credit`); `max_processes` then counts the pool's start only.
//! - **Supervision.** When the pool's main process exits it is started again after a delay
//!   that doubles from 100 ms to 5 s, at most `restarts` times (a pool that ran a minute
//!   earns its budget back); then it is left down, said at error level, and requests get 502.
//!   A worker that crashes is the pool's business (php-fpm's master forks another).
//! - **User.** With `[server] user`, pools start before the server switches to that user
//!   (they start with the server's cgroups, as root), so each pool is started through
//!   util-linux's `setpriv` as the user: uid, gid and groups set (its supplementary groups
//!   if the user is in the user database, none otherwise) before the command runs. Once the
//!   server runs as the user itself, a restart runs the command directly.
//! - **Stopping.** [`stop_all`] (the server's SIGTERM and graceful stop) sends the pool's
//!   process group SIGTERM; in cgroups the manager's shutdown kills what is left. A pool that
//!   a reload retires is stopped alone ([`Pool::stop`], once its requests have ended): SIGTERM
//!   to its group, SIGKILL after [`STOP_WAIT`], and it is not started again.

use rescon::Container;
use rescon_linux::cgroup::{self, Manager};
use rescon_linux::usermode::{Capped, Credit, Limiter, Target};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The process groups of every running pool, for [`stop_all`].
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn groups() -> std::sync::MutexGuard<'static, Vec<i32>> {
    lock(&GROUPS)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stops every pool: SIGTERM to each pool's process group. No pool restarts after.
pub(crate) fn stop_all() {
    STOPPING.store(true, Ordering::SeqCst);
    for g in groups().drain(..) {
        term_group(g);
    }
}

static STOPPING: AtomicBool = AtomicBool::new(false);

/// SIGTERM to process group `g`.
fn term_group(g: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(g) {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::TERM);
    }
}

/// The user a pool runs as (`[server] user`, resolved).
#[derive(Clone, Debug)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Whether the user is in the user database (then its supplementary groups are set).
    pub(crate) known: bool,
}

/// Where util-linux's `setpriv` is.
const SETPRIV: &str = "/usr/bin/setpriv";

/// The program and arguments that run `command` as `run_as`: through `setpriv` unless this
/// process runs as that user already.
fn argv(command: &[String], run_as: Option<&RunAs>) -> Vec<String> {
    let Some(u) = run_as.filter(|u| rustix::process::geteuid().as_raw() != u.uid) else {
        return command.to_vec();
    };
    let mut v = vec![
        SETPRIV.to_string(),
        format!("--reuid={}", u.uid),
        format!("--regid={}", u.gid),
        if u.known {
            "--init-groups".to_string()
        } else {
            "--clear-groups".to_string()
        },
        "--".to_string(),
    ];
    v.extend(command.iter().cloned());
    v
}

/// How long a stopped pool has after SIGTERM before SIGKILL.
pub(crate) const STOP_WAIT: Duration = Duration::from_secs(5);

/// How long after its start a pool may not listen yet (requests retry connecting meanwhile).
const STARTUP: Duration = Duration::from_secs(5);

/// A running pool.
#[derive(Debug)]
pub(crate) struct Pool {
    /// The pool's process group (its main process's pid), 0 while it is down.
    pgid: AtomicI32,
    /// When its main process last started.
    since: Mutex<Instant>,
    /// Set by [`Pool::stop`]: not started again.
    stopping: AtomicBool,
    /// Set when the supervisor has returned (the pool is down for good).
    ended: (Mutex<bool>, std::sync::Condvar),
    /// The pool's container.
    pub(crate) container: Container,
}

impl Pool {
    /// The pool's process group, if it runs.
    pub(crate) fn pgid(&self) -> Option<i32> {
        Some(self.pgid.load(Ordering::Acquire)).filter(|p| *p > 0)
    }

    /// Whether it runs and started less than [`STARTUP`] ago (it may not listen yet).
    pub(crate) fn just_started(&self) -> bool {
        self.pgid().is_some() && lock(&self.since).elapsed() < STARTUP
    }

    fn stopping(&self) -> bool {
        STOPPING.load(Ordering::SeqCst) || self.stopping.load(Ordering::SeqCst)
    }

    /// Stops this pool for good: SIGTERM to its process group, SIGKILL after [`STOP_WAIT`];
    /// returns once its supervisor has seen the main process exit (or after a second
    /// [`STOP_WAIT`]; said if so).
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let ended = |wait: Duration| {
            let (m, cv) = &self.ended;
            let g = lock(m);
            let (g, _) = cv
                .wait_timeout_while(g, wait, |done| !*done)
                .unwrap_or_else(|e| e.into_inner());
            *g
        };
        if let Some(g) = self.pgid() {
            term_group(g);
        }
        if ended(STOP_WAIT) {
            return;
        }
        if let Some(g) = self.pgid()
            && let Some(p) = rustix::process::Pid::from_raw(g)
        {
            let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
        }
        if !ended(STOP_WAIT) {
            tracing::warn!("a stopped FastCGI pool's main process has not exited");
        }
    }

    /// Starts `command` in `container` and supervises it from a thread of its own. Fails if
    /// the first start fails (the error says why: a missing program, a process limit).
    // Each is one thing the pool needs from the server's start-up, named at its one caller.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        name: &str,
        command: &[String],
        container: Container,
        kernel: Option<Arc<Manager>>,
        limiter: Option<Arc<Limiter>>,
        restarts: u32,
        run_as: Option<RunAs>,
        credit: Credit,
    ) -> anyhow::Result<Arc<Pool>> {
        if run_as.is_some() && !std::path::Path::new(SETPRIV).exists() {
            anyhow::bail!(
                "starting the FastCGI pool {name} as [server] user needs {SETPRIV} \
                 (util-linux): install it, or start the pool yourself and leave `command` out"
            );
        }
        let pool = Arc::new(Pool {
            pgid: AtomicI32::new(0),
            since: Mutex::new(Instant::now()),
            stopping: AtomicBool::new(false),
            ended: (Mutex::new(false), std::sync::Condvar::new()),
            container,
        });
        let spawn = {
            let (pool, command) = (pool.clone(), command.to_vec());
            move || {
                let argv = argv(&command, run_as.as_ref());
                pool.spawn(&argv, kernel.as_deref(), limiter.as_deref(), &credit)
            }
        };
        let first =
            spawn().map_err(|e| anyhow::anyhow!("starting the FastCGI pool {name}: {e}"))?;
        let (p, name) = (pool.clone(), name.to_string());
        std::thread::Builder::new()
            .name(format!("fcgi-pool-{name}"))
            .spawn(move || {
                p.supervise(&name, first, spawn, restarts);
                *lock(&p.ended.0) = true;
                p.ended.1.notify_all();
            })?;
        Ok(pool)
    }

    fn spawn(
        &self,
        command: &[String],
        kernel: Option<&Manager>,
        limiter: Option<&Limiter>,
        credit: &Credit,
    ) -> Result<(cgroup::Child, Option<Capped>), String> {
        let c = &self.container;
        let mut cmd = match kernel {
            Some(m) => m.command(c, &command[0]),
            None => cgroup::Command::without_cgroups(c, &command[0]),
        };
        cmd.args(&command[1..])
            .process_group(true)
            .stdin(cgroup::Stdio::Null)
            .stdout(cgroup::Stdio::Inherit)
            .stderr(cgroup::Stdio::Inherit);
        let child = cmd.spawn().map_err(|e| e.to_string())?;
        let pid = child.id() as i32;
        let capped = match (kernel, limiter) {
            (None, Some(l)) => Some(
                l.cap_charging(Target::ProcessGroup(pid), c, credit.clone())
                    .map_err(|e| format!("capping the pool in user mode: {e}"))?,
            ),
            _ => None,
        };
        *lock(&self.since) = Instant::now();
        self.pgid.store(pid, Ordering::Release);
        groups().push(pid);
        Ok((child, capped))
    }

    fn supervise(
        &self,
        name: &str,
        first: (cgroup::Child, Option<Capped>),
        spawn: impl Fn() -> Result<(cgroup::Child, Option<Capped>), String>,
        restarts: u32,
    ) {
        let mut running = Some(first);
        let mut left = restarts;
        let mut delay = Duration::from_millis(100);
        loop {
            if let Some((mut child, capped)) = running.take() {
                let pid = child.id() as i32;
                let since = Instant::now();
                tracing::info!(pool = name, pid, "FastCGI pool running");
                let status = child.wait().map(|e| e.status.to_string());
                drop(capped);
                self.pgid.store(0, Ordering::Release);
                groups().retain(|g| *g != pid);
                // Its workers, if they outlive it, go with it.
                term_group(pid);
                if self.stopping() {
                    return;
                }
                if since.elapsed() > Duration::from_secs(60) {
                    left = restarts;
                    delay = Duration::from_millis(100);
                }
                tracing::warn!(pool = name, pid, status = ?status, restarts_left = left, "FastCGI pool exited");
            }
            if left == 0 {
                tracing::error!(
                    pool = name,
                    "FastCGI pool left down: it exited more often than `restarts` allows; \
                     its requests get 502 until the server restarts"
                );
                return;
            }
            left -= 1;
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(5));
            if self.stopping() {
                return;
            }
            match spawn() {
                Ok(r) => running = Some(r),
                Err(e) => {
                    tracing::error!(pool = name, error = %e, "restarting the FastCGI pool failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_runs_as_the_user_through_setpriv_until_the_server_is_that_user() {
        let cmd = vec!["php-fpm".to_string(), "-F".to_string()];
        assert_eq!(argv(&cmd, None), cmd);
        let me = rustix::process::geteuid().as_raw();
        let other = RunAs {
            uid: me.wrapping_add(1),
            gid: 65534,
            known: false,
        };
        assert_eq!(
            argv(&cmd, Some(&other)),
            [
                SETPRIV.to_string(),
                format!("--reuid={}", me.wrapping_add(1)),
                "--regid=65534".into(),
                "--clear-groups".into(),
                "--".into(),
                "php-fpm".into(),
                "-F".into()
            ]
        );
        // Already that user (a restart after the server switched): the command itself.
        let same = RunAs { uid: me, ..other };
        assert_eq!(argv(&cmd, Some(&same)), cmd);
    }
}
