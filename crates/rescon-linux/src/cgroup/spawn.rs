//! Child processes started directly inside a container's cgroups, or, where there are no
//! cgroups, in a process group of their own ([`Command::without_cgroups`]).
//!
//! [`Command`] is a small `std::process::Command` for one container: the child is created by
//! `clone3(CLONE_INTO_CGROUP)` in the container's v2 leaf cgroup, so it never runs a single
//! instruction outside it, and, before `execve`, writes `0` to the `cgroup.procs` of the
//! container's v1 leaves (opened by the parent beforehand: the child only writes). Its
//! descendants inherit every membership. Where `clone3` or `CLONE_INTO_CGROUP` is missing,
//! the child joins v2 the same way as v1.
//!
//! On x86_64 the child shares the parent's memory until it executes (`CLONE_VM |
//! CLONE_VFORK`, as `posix_spawn` does), so spawning costs the same whatever the size of the
//! server; elsewhere it is a fork-like copy (see `sys::spawn`).
//!
//! It is written here rather than on top of `std::process::Command` because std offers no way
//! to choose the clone flags, and `pre_exec` alone would leave the child briefly outside its
//! cgroup (forks it makes before joining would escape) and force a fork that copies the
//! parent's page tables.
//!
//! While the child lives, a [`rescon::ProcGuard`] counts it against the container's (and its
//! ancestors') `max_processes`; at exit, the container's cgroups are sampled so its
//! `kernel_cpu_ns` is up to date, and the child's own `rusage` is returned in [`Exit`].

use super::error::{Error, ErrorKind};
use super::manager::Inner;
use super::sys::{self, ChildUsage, ExecPlan, stage};
use rescon::{Container, ProcGuard};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Where a child's standard stream goes.
#[derive(Debug, Default)]
pub enum Stdio {
    /// The parent's.
    #[default]
    Inherit,
    /// `/dev/null`.
    Null,
    /// A new pipe; the parent's end is in [`Child::stdin`], [`Child::stdout`] or
    /// [`Child::stderr`].
    Piped,
    /// This fd (duplicated for each spawn).
    Fd(OwnedFd),
}

/// A process to start in a container's cgroups. Made by
/// [`Manager::command`](super::Manager::command).
///
/// ```no_run
/// # use rescon_linux::cgroup::{Config, Manager, Stdio};
/// # let registry = rescon::Registry::new();
/// # let mut a = rescon::Attributes::default();
/// # a.set("enforcement", "kernel").unwrap();
/// # let cgi = registry.root().create_child("cgi", a).unwrap();
/// # let manager = Manager::new(&registry, Config::default()).unwrap();
/// use std::io::Read;
/// let mut child = manager
///     .command(&cgi, "sh")
///     .args(["-c", "echo hello from $(cat /proc/self/cgroup | tail -1)"])
///     .stdout(Stdio::Piped)
///     .spawn()?;
/// let mut out = String::new();
/// child.stdout.take().unwrap().read_to_string(&mut out)?;
/// let exit = child.wait()?;
/// assert!(exit.status.success());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Command {
    /// The manager whose cgroups the child joins; `None` without cgroups.
    inner: Option<Arc<Inner>>,
    container: Container,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    env_clear: bool,
    cwd: Option<PathBuf>,
    stdio: [Stdio; 3],
    affinity: Option<Vec<usize>>,
    keep: Vec<OwnedFd>,
    new_group: bool,
    ids: Option<(u32, u32)>,
}

/// How a child ended, and what it used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit status.
    pub status: ExitStatus,
    /// User CPU time of the child and of the descendants it waited for.
    pub user_cpu: Duration,
    /// System CPU time, likewise.
    pub system_cpu: Duration,
    /// Peak resident set size, bytes.
    pub max_rss_bytes: u64,
}

impl Exit {
    fn new(status: i32, u: &ChildUsage) -> Exit {
        Exit {
            status: ExitStatus::from_raw(status),
            user_cpu: Duration::from_micros(u.user_us),
            system_cpu: Duration::from_micros(u.system_us),
            max_rss_bytes: u.max_rss_kb.saturating_mul(1024),
        }
    }
}

fn cstring(what: &'static str, s: &OsStr) -> Result<CString, Error> {
    CString::new(s.as_bytes()).map_err(|_| {
        Error::new(ErrorKind::Spawn, "spawn")
            .value(s.to_string_lossy())
            .detail(format!("the {what} contains a NUL byte"))
    })
}

/// Finds `program` as execvp would: as given if it has a slash, else in `PATH`.
fn resolve(program: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, Error> {
    let p = Path::new(program);
    if program.as_bytes().contains(&b'/') {
        return Ok(p.to_path_buf());
    }
    let default = OsStr::new("/usr/local/bin:/usr/bin:/bin");
    for dir in std::env::split_paths(path_var.unwrap_or(default)) {
        let cand = dir.join(p);
        if let Ok(m) = std::fs::metadata(&cand) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(cand);
            }
        }
    }
    Err(Error::new(ErrorKind::Spawn, "spawn")
        .value(program.to_string_lossy())
        .detail("program not found in PATH"))
}

fn stage_name(s: u32) -> String {
    match s {
        stage::SIGNALS => "resetting signals".into(),
        stage::STDIO => "setting up stdio".into(),
        stage::CHDIR => "changing directory".into(),
        stage::AFFINITY => "setting CPU affinity".into(),
        stage::EXEC => "exec".into(),
        stage::KEEP => "keeping inherited fds".into(),
        stage::GROUP => "making a process group".into(),
        stage::IDS => "switching to its user".into(),
        s if s >= stage::JOIN => format!("joining cgroup #{}", s - stage::JOIN),
        s => format!("stage {s}"),
    }
}

impl Command {
    pub(crate) fn new(inner: Arc<Inner>, container: Container, program: &OsStr) -> Command {
        Command::build(Some(inner), container, program)
    }

    /// A process to start in `c` without cgroups (where kernel enforcement is not available):
    /// in a process group of its own, so that it and its descendants can be signalled and
    /// capped together ([`usermode::Limiter`](crate::usermode::Limiter) with
    /// [`Target::ProcessGroup`](crate::usermode::Target::ProcessGroup) of its pid), and
    /// counted against the `max_processes` of `c` and its ancestors while it lives (processes
    /// it forks are not counted: only a pids cgroup sees those). Its CPU (and its reaped
    /// descendants') is added to `c`'s `kernel_cpu_ns` when it is waited for.
    ///
    /// ```no_run
    /// # let registry = rescon::Registry::new();
    /// # let cgi = registry.root().create_child("cgi", Default::default()).unwrap();
    /// use rescon_linux::cgroup::Command;
    /// let mut child = Command::without_cgroups(&cgi, "/usr/lib/cgi-bin/report").spawn()?;
    /// let exit = child.wait()?;
    /// # Ok::<(), rescon_linux::cgroup::Error>(())
    /// ```
    pub fn without_cgroups(c: &Container, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::build(None, c.clone(), program.as_ref());
        cmd.new_group = true;
        cmd
    }

    fn build(inner: Option<Arc<Inner>>, container: Container, program: &OsStr) -> Command {
        Command {
            inner,
            keep: Vec::new(),
            new_group: false,
            ids: None,
            container,
            program: program.to_os_string(),
            args: Vec::new(),
            env: Vec::new(),
            env_clear: false,
            cwd: None,
            stdio: Default::default(),
            affinity: None,
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Command {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> &mut Command {
        self.env
            .push((k.as_ref().to_os_string(), Some(v.as_ref().to_os_string())));
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(&mut self, k: impl AsRef<OsStr>) -> &mut Command {
        self.env.push((k.as_ref().to_os_string(), None));
        self
    }

    /// Starts from an empty environment instead of this process's.
    pub fn env_clear(&mut self) -> &mut Command {
        self.env_clear = true;
        self.env.clear();
        self
    }

    /// Sets the working directory.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Command {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Sets standard input.
    pub fn stdin(&mut self, s: Stdio) -> &mut Command {
        self.stdio[0] = s;
        self
    }

    /// Sets standard output.
    pub fn stdout(&mut self, s: Stdio) -> &mut Command {
        self.stdio[1] = s;
        self
    }

    /// Sets standard error.
    pub fn stderr(&mut self, s: Stdio) -> &mut Command {
        self.stdio[2] = s;
        self
    }

    /// Makes the child lead a new process group (its pgid is its pid), or not. On by default
    /// [`without_cgroups`](Command::without_cgroups), off in cgroups (which name the
    /// processes already).
    pub fn process_group(&mut self, new: bool) -> &mut Command {
        self.new_group = new;
        self
    }

    /// Runs the child as `uid` and `gid` (its supplementary groups: just `gid`), switched to
    /// after it joins its cgroups and before it changes directory and executes. The calling
    /// process must be root; otherwise the spawn fails at that step.
    pub fn user(&mut self, uid: u32, gid: u32) -> &mut Command {
        self.ids = Some((uid, gid));
        self
    }

    /// Passes `fd` to the child across `execve` (a container handle, a listening socket), and
    /// returns its number there. The command keeps a duplicate (close-on-exec, numbered 3 or
    /// above) until it is dropped; only the child clears its close-on-exec flag, so programs
    /// other threads start at the same moment do not get it.
    pub fn inherit_fd(&mut self, fd: BorrowedFd<'_>) -> Result<i32, Error> {
        let dup = fd
            .try_clone_to_owned()
            .map_err(|e| Error::new(ErrorKind::Spawn, "duplicate an inherited fd").source_err(e))?;
        let n = dup.as_raw_fd();
        self.keep.push(dup);
        Ok(n)
    }

    /// Pins the child (and, by inheritance, its descendants) to these CPUs.
    pub fn cpu_affinity(&mut self, cpus: &[usize]) -> &mut Command {
        self.affinity = Some(cpus.to_vec());
        self
    }

    fn environment(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = if self.env_clear {
            Vec::new()
        } else {
            std::env::vars_os().collect()
        };
        for (k, v) in &self.env {
            env.retain(|(ek, _)| ek != k);
            if let Some(v) = v {
                env.push((k.clone(), v.clone()));
            }
        }
        env
    }

    /// Starts the child in the container's cgroups (mirroring the container first if
    /// needed). Fails with [`ErrorKind::Limit`] if the container or an ancestor is at its
    /// `max_processes`, and with [`ErrorKind::Spawn`] if the program cannot be executed (the
    /// error says at which step).
    pub fn spawn(&mut self) -> Result<Child, Error> {
        if self.inner.as_ref().is_some_and(|i| i.is_shut()) {
            return Err(Error::shut_down());
        }
        let guard = self.container.try_start_process()?;
        let fds = match &self.inner {
            Some(inner) => Some(inner.prepare_spawn(&self.container)?),
            None => None,
        };

        // Everything the child reads, built now (the child may not allocate).
        let env = self.environment();
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let path = cstring(
            "program path",
            resolve(&self.program, path_var)?.as_os_str(),
        )?;
        let mut argv = vec![cstring("program", &self.program)?];
        for a in &self.args {
            argv.push(cstring("argument", a)?);
        }
        let mut env_c = Vec::with_capacity(env.len());
        for (k, v) in &env {
            let mut kv = k.clone().into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env_c.push(cstring("environment", &OsString::from_vec(kv))?);
        }
        let mut plan = ExecPlan::new(path, argv, env_c);
        if let Some(d) = &self.cwd {
            plan.cwd = Some(cstring("working directory", d.as_os_str())?);
        }
        if let Some(c) = &self.affinity {
            plan.affinity = Some(
                sys::cpu_set(c).map_err(|e| Error::new(ErrorKind::Spawn, "spawn").source_err(e))?,
            );
        }

        // Standard streams: the child's fds, and the parent's ends of pipes.
        let spawn_err =
            |op: &'static str, e: std::io::Error| Error::new(ErrorKind::Spawn, op).source_err(e);
        let mut child_side: [Option<OwnedFd>; 3] = [None, None, None];
        let mut parent_side: [Option<File>; 3] = [None, None, None];
        for (i, s) in self.stdio.iter().enumerate() {
            match s {
                Stdio::Inherit => {}
                Stdio::Null => {
                    let f = std::fs::OpenOptions::new()
                        .read(i == 0)
                        .write(i != 0)
                        .open("/dev/null")
                        .map_err(|e| spawn_err("open /dev/null", e))?;
                    child_side[i] = Some(f.into());
                }
                Stdio::Piped => {
                    let (r, w) = sys::pipe_cloexec().map_err(|e| spawn_err("make pipe", e))?;
                    if i == 0 {
                        child_side[i] = Some(r);
                        parent_side[i] = Some(File::from(w));
                    } else {
                        child_side[i] = Some(w);
                        parent_side[i] = Some(File::from(r));
                    }
                }
                Stdio::Fd(fd) => {
                    child_side[i] = Some(fd.try_clone().map_err(|e| spawn_err("duplicate fd", e))?);
                }
            }
        }
        plan.stdio = [0, 1, 2].map(|i| child_side[i].as_ref().map(|f| f.as_raw_fd()));
        if let Some(fds) = &fds {
            plan.join = fds.v1_procs.iter().map(|f| f.as_raw_fd()).collect();
            plan.join_fallback = fds.v2_procs.as_ref().map(|f| f.as_raw_fd());
        }
        plan.keep = self.keep.iter().map(|f| f.as_raw_fd()).collect();
        plan.new_group = self.new_group;
        plan.ids = self.ids;
        let (err_r, err_w) = sys::pipe_cloexec().map_err(|e| spawn_err("make pipe", e))?;
        plan.err = err_w.as_raw_fd();

        let v2_dir = fds
            .as_ref()
            .and_then(|f| f.v2_dir.as_ref())
            .map(|f| f.as_fd());
        let spawned = sys::spawn(&plan, v2_dir);
        drop(child_side);
        drop(err_w);
        let sys::Spawned { pid, pidfd } = match spawned {
            Ok(s) => s,
            Err(e) => {
                let dir = fds
                    .as_ref()
                    .and_then(|f| f.paths.last().cloned())
                    .unwrap_or_else(|| PathBuf::from("<no cgroup>"));
                return Err(Error::io(ErrorKind::Spawn, "clone3 into cgroup", &dir, e)
                    .value(self.program.to_string_lossy()));
            }
        };
        let mut report = [0u8; 8];
        let mut got = 0;
        let mut err_file = File::from(err_r);
        while got < report.len() {
            match err_file.read(&mut report[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if got > 0 {
            // The child failed before exec and exited: reap it and say why.
            let _ = sys::wait4(pid, false);
            let st = u32::from_le_bytes(report[..4].try_into().expect("4 bytes"));
            let errno = i32::from_le_bytes(report[4..].try_into().expect("4 bytes"));
            let os = std::io::Error::from_raw_os_error(errno);
            let e = if st >= stage::JOIN {
                let i = (st - stage::JOIN) as usize;
                let path = fds
                    .as_ref()
                    .and_then(|f| f.paths.get(i).cloned())
                    .unwrap_or_default();
                Error::io(ErrorKind::Spawn, "join cgroup", &path, os).value("0")
            } else {
                Error::new(ErrorKind::Spawn, "spawn")
                    .value(self.program.to_string_lossy())
                    .source_err(os)
                    .detail(format!("the child failed while {}", stage_name(st)))
            };
            return Err(e);
        }
        let [stdin, stdout, stderr] = parent_side;
        Ok(Child {
            pid,
            pidfd,
            container: self.container.clone(),
            guard: Some(guard),
            inner: self.inner.as_ref().map_or_else(Weak::new, Arc::downgrade),
            exit: None,
            stdin,
            stdout,
            stderr,
        })
    }
}

/// A child started by [`Command::spawn`].
///
/// Dropping a child that has not been waited for does not kill it (as with std): the manager
/// adopts it and reaps it when it exits (at the next [`sample`](super::Manager::sample)), and
/// kills it at shutdown.
#[derive(Debug)]
pub struct Child {
    pid: i32,
    pidfd: Option<OwnedFd>,
    container: Container,
    guard: Option<ProcGuard>,
    inner: Weak<Inner>,
    exit: Option<Exit>,
    /// The parent's end of the child's stdin, if piped.
    pub stdin: Option<File>,
    /// The parent's end of the child's stdout, if piped.
    pub stdout: Option<File>,
    /// The parent's end of the child's stderr, if piped.
    pub stderr: Option<File>,
}

impl Child {
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// A pidfd for the child (readable once it exits, for an event loop), if the kernel gave
    /// one.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }

    /// The container it runs in.
    pub fn container(&self) -> &Container {
        &self.container
    }

    /// Sends a signal to the child (only the child: to kill all of a container's processes,
    /// use [`Manager::kill`](super::Manager::kill)). Does nothing once it has been reaped.
    pub fn signal(&self, sig: i32) -> Result<(), Error> {
        if self.exit.is_some() {
            return Ok(());
        }
        let r = match &self.pidfd {
            Some(fd) => sys::pidfd_send_signal(fd.as_fd(), sig),
            // Not reaped yet, so the pid cannot have been reused.
            None => sys::kill(self.pid, sig),
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(Error::new(ErrorKind::Io, "signal child")
                .value(self.pid)
                .source_err(e)),
        }
    }

    /// Sends `SIGKILL` to the child.
    pub fn kill(&self) -> Result<(), Error> {
        self.signal(libc::SIGKILL)
    }

    fn finish(&mut self, status: i32, usage: ChildUsage) -> Exit {
        let exit = Exit::new(status, &usage);
        self.guard = None;
        match self.inner.upgrade() {
            Some(inner) => inner.after_exit(&self.container, &usage),
            None => self
                .container
                .account()
                .add_kernel_cpu_ns((usage.user_us + usage.system_us).saturating_mul(1000)),
        }
        self.exit = Some(exit);
        exit
    }

    /// Returns the exit if the child has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> Result<Option<Exit>, Error> {
        if let Some(e) = self.exit {
            return Ok(Some(e));
        }
        match sys::wait4(self.pid, true) {
            Ok(Some((status, usage))) => Ok(Some(self.finish(status, usage))),
            Ok(None) => Ok(None),
            Err(e) => Err(Error::new(ErrorKind::Io, "wait for child")
                .value(self.pid)
                .source_err(e)),
        }
    }

    /// Waits for the child to exit (closing its stdin first, so it sees end of file), records
    /// its usage, and returns its exit.
    pub fn wait(&mut self) -> Result<Exit, Error> {
        if let Some(e) = self.exit {
            return Ok(e);
        }
        drop(self.stdin.take());
        match sys::wait4(self.pid, false) {
            Ok(Some((status, usage))) => Ok(self.finish(status, usage)),
            Ok(None) => unreachable!("wait4 without WNOHANG returned no child"),
            Err(e) => Err(Error::new(ErrorKind::Io, "wait for child")
                .value(self.pid)
                .source_err(e)),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        if let Ok(Some(_)) = self.try_wait() {
            return;
        }
        let orphan = Orphan {
            pid: self.pid,
            guard: self.guard.take(),
            container: self.container.clone(),
            add_rusage: true,
        };
        match self.inner.upgrade() {
            Some(inner) => inner.adopt(Orphan {
                add_rusage: !inner.counts_cpu(),
                ..orphan
            }),
            // Without a manager to adopt it: a thread waits for it, so that its slot in
            // `max_processes` is held until it exits, and its CPU is counted.
            None => {
                let _ = std::thread::Builder::new()
                    .name("rescon-reap".into())
                    .spawn(move || orphan.reap_blocking());
            }
        }
    }
}

/// A child whose handle was dropped before it exited; reaped by the manager.
#[derive(Debug)]
pub(crate) struct Orphan {
    pid: i32,
    guard: Option<ProcGuard>,
    container: Container,
    add_rusage: bool,
}

impl Orphan {
    /// Waits for the child to exit and reaps it.
    fn reap_blocking(mut self) {
        if let Ok(Some((_, u))) = sys::wait4(self.pid, false) {
            if self.add_rusage {
                self.container
                    .account()
                    .add_kernel_cpu_ns((u.user_us + u.system_us).saturating_mul(1000));
            }
        }
        self.guard = None;
    }

    /// Reaps the child if it has exited. `true` when done with it.
    pub(crate) fn try_reap(&mut self) -> bool {
        match sys::wait4(self.pid, true) {
            Ok(Some((_, u))) => {
                if self.add_rusage {
                    self.container
                        .account()
                        .add_kernel_cpu_ns((u.user_us + u.system_us).saturating_mul(1000));
                }
                self.guard = None;
                true
            }
            Ok(None) => false,
            // Not our child any more (reaped elsewhere).
            Err(_) => true,
        }
    }
}
