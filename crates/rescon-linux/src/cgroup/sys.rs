//! The system calls the cgroup backend needs that the standard library does not wrap: one
//! helper per call, each with its `// SAFETY:` argument. Everything else (open, read, write,
//! mkdir, rmdir, flock) goes through `std::fs`, and every fd is an `OwnedFd` or a `File`.
//!
//! The `child_*` helpers run in a freshly cloned child before `execve`: they make exactly one
//! system call each, allocate nothing and take no lock, so they are async-signal-safe (the
//! parent may have had other threads holding the allocator's locks when it cloned).

#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `CLONE_INTO_CGROUP` (Linux 5.7), not yet in the `libc` crate.
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The calling thread's id (gettid(2)).
pub fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Sends a signal to a process (kill(2)).
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers; a bad pid or signal is reported through errno.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of `/proc/<pid>/stat`'s CPU
/// times.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf takes a plain integer and only reads system configuration.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Sends a signal through a pidfd (pidfd_send_signal(2)), which cannot hit a recycled pid.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: the fd is borrowed for the call; a null siginfo and zero flags are documented
    // as valid; errors come back through errno.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Resource usage of a reaped child (and of its descendants it waited for).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildUsage {
    /// User CPU time, microseconds.
    pub user_us: u64,
    /// System CPU time, microseconds.
    pub system_us: u64,
    /// Peak resident set size, kilobytes.
    pub max_rss_kb: u64,
}

fn tv_us(tv: libc::timeval) -> u64 {
    (tv.tv_sec.max(0) as u64) * 1_000_000 + tv.tv_usec.max(0) as u64
}

/// Waits for a child (wait4(2)), returning its raw wait status and usage, or `None` if
/// `nohang` and it has not exited. Retries on `EINTR`.
pub fn wait4(pid: i32, nohang: bool) -> io::Result<Option<(i32, ChildUsage)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: all-zero is a valid rusage (plain integers and timevals).
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if nohang { libc::WNOHANG } else { 0 };
        // SAFETY: status and ru are valid, writable and live for the call.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        return Ok(Some((
            status,
            ChildUsage {
                user_us: tv_us(ru.ru_utime),
                system_us: tv_us(ru.ru_stime),
                max_rss_kb: ru.ru_maxrss.max(0) as u64,
            },
        )));
    }
}

/// A pipe whose both ends are close-on-exec (pipe2(2)): (read end, write end).
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid array of two ints for the kernel to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `CLONE_CLEAR_SIGHAND` (Linux 5.5): the child starts with every caught signal reset to its
/// default, so no handler of the parent can run in it.
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;

/// Everything a child needs between clone and `execve`, built by the parent beforehand: the
/// child only reads it and makes system calls, so it allocates nothing and takes no lock.
#[derive(Debug)]
pub struct ExecPlan {
    path: CString,
    _argv: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    envp: Vec<*const libc::c_char>,
    /// Files the child writes `0` to before exec (`cgroup.procs` of v1 leaves: joining them).
    pub join: Vec<RawFd>,
    /// Written to as well when the child could not be cloned into its v2 cgroup (no clone3 or
    /// no `CLONE_INTO_CGROUP`): the v2 leaf's `cgroup.procs`.
    pub join_fallback: Option<RawFd>,
    /// Fds to make the child's stdin, stdout and stderr.
    pub stdio: [Option<RawFd>; 3],
    /// Working directory.
    pub cwd: Option<CString>,
    /// CPU affinity.
    pub affinity: Option<libc::cpu_set_t>,
    /// The write end of a close-on-exec pipe: a child that fails before exec writes the step
    /// and the errno there (8 bytes) and exits with 127.
    pub err: RawFd,
    /// Fds (numbered 3 and up) the child keeps across `execve`: their close-on-exec flag is
    /// cleared in the child alone.
    pub keep: Vec<RawFd>,
    /// Whether the child leads a new process group (`setpgid(0, 0)`).
    pub new_group: bool,
    /// The uid and gid the child switches to before it changes directory and executes (its
    /// supplementary groups become just the gid). Needs the parent to be root.
    pub ids: Option<(libc::uid_t, libc::gid_t)>,
}

/// Steps at which the child can fail, as reported through [`ExecPlan::err`].
pub mod stage {
    /// Restoring signals.
    pub const SIGNALS: u32 = 1;
    /// Setting up stdin, stdout, stderr.
    pub const STDIO: u32 = 2;
    /// Changing directory.
    pub const CHDIR: u32 = 3;
    /// Setting the CPU affinity.
    pub const AFFINITY: u32 = 4;
    /// `execve`.
    pub const EXEC: u32 = 5;
    /// Keeping the inherited fds.
    pub const KEEP: u32 = 6;
    /// Making a new process group.
    pub const GROUP: u32 = 7;
    /// Switching to the plan's uid and gid.
    pub const IDS: u32 = 8;
    /// Joining cgroup number `n` (in [`ExecPlan::join`] order, then the fallback): `JOIN + n`.
    pub const JOIN: u32 = 100;
}

impl ExecPlan {
    /// A plan to execute `path` with `argv` (`argv[0]` included) and the environment `env`
    /// (`KEY=value` strings).
    pub fn new(path: CString, argv: Vec<CString>, env: Vec<CString>) -> ExecPlan {
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        ExecPlan {
            argv: ptrs(&argv),
            envp: ptrs(&env),
            path,
            _argv: argv,
            _env: env,
            join: Vec::new(),
            join_fallback: None,
            stdio: [None; 3],
            cwd: None,
            affinity: None,
            err: -1,
            keep: Vec::new(),
            new_group: false,
            ids: None,
        }
    }
}

/// A child started by [`spawn`].
#[derive(Debug)]
pub struct Spawned {
    /// Its pid.
    pub pid: i32,
    /// A pidfd for it, when the kernel gave one.
    pub pidfd: Option<OwnedFd>,
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Starts a child that follows `plan` and executes its program, inside the cgroup v2
/// directory `cgroup` if given.
///
/// On x86_64 the child is made with `clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD |
/// CLONE_CLEAR_SIGHAND | CLONE_INTO_CGROUP)` on a stack of its own, as `posix_spawn` does:
/// no page tables are copied, so the cost does not grow with the parent's memory, and the
/// calling thread sleeps until the child has called `execve` or exited. Elsewhere, or on
/// kernels without these flags, the child is a fork-like copy (`clone3` without `CLONE_VM`,
/// or `fork`), and joins its v2 cgroup like the v1 ones when it could not be cloned into it.
/// All signals are blocked in the calling thread while the child is made.
pub fn spawn(plan: &ExecPlan, cgroup: Option<BorrowedFd<'_>>) -> io::Result<Spawned> {
    let _mask = SignalsBlocked::new()?;
    #[cfg(target_arch = "x86_64")]
    {
        let stack = ChildStack::new()?;
        match clone3_vfork(plan, cgroup, &stack) {
            Ok(s) => return Ok(s),
            Err(e) if !old_kernel(&e) => return Err(e),
            Err(_) => {}
        }
    }
    match clone3_fork(cgroup) {
        Ok(Some(s)) => return Ok(s),
        Ok(None) => child_main(plan, false),
        Err(e) if !old_kernel(&e) => return Err(e),
        Err(_) => {}
    }
    // SAFETY: fork has no preconditions; the child runs only `child_main`, which makes
    // async-signal-safe system calls and never returns.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => child_main(plan, true),
        pid => Ok(Spawned { pid, pidfd: None }),
    }
}

/// Errors that mean "this kernel lacks clone3 or one of its flags".
fn old_kernel(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL)
    )
}

/// Blocks every signal in the calling thread until dropped, so that no handler runs in a
/// child that shares the parent's memory before it has reset them.
struct SignalsBlocked {
    old: libc::sigset_t,
}

impl SignalsBlocked {
    fn new() -> io::Result<SignalsBlocked> {
        // SAFETY: all-zero sigset_t values are valid for sigfillset and pthread_sigmask to
        // fill; both pointers are valid for the calls.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            match libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) {
                0 => Ok(SignalsBlocked { old }),
                e => Err(io::Error::from_raw_os_error(e)),
            }
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new`; the pointer is valid for the call.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// A child's stack: anonymous memory with a guard page below it.
#[cfg(target_arch = "x86_64")]
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

#[cfg(target_arch = "x86_64")]
impl ChildStack {
    const LEN: usize = 64 * 1024;
    const GUARD: usize = 4096;

    fn new() -> io::Result<ChildStack> {
        let len = Self::LEN + Self::GUARD;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing
        // touches no existing memory.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the guard page is the first page of the mapping just made.
        if unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made by `new`; the child that used it has
        // exec'd or exited (CLONE_VFORK), so nothing runs on it any more.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// The child's entry point on its own stack: runs the plan, never returns.
#[cfg(target_arch = "x86_64")]
extern "C" fn child_entry(plan: *mut libc::c_void) -> ! {
    // SAFETY: `plan` is the `&ExecPlan` that `clone3_vfork` passed; the parent thread is
    // suspended (CLONE_VFORK) and keeps it alive until the child has exec'd or exited.
    let plan = unsafe { &*(plan as *const ExecPlan) };
    child_main(plan, false)
}

#[cfg(target_arch = "x86_64")]
fn clone3_vfork(
    plan: &ExecPlan,
    cgroup: Option<BorrowedFd<'_>>,
    stack: &ChildStack,
) -> io::Result<Spawned> {
    let mut pidfd: libc::c_int = -1;
    let mut flags =
        (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD) as u64 | CLONE_CLEAR_SIGHAND;
    if cgroup.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    // SAFETY: all-zero is a valid clone_args (no tls, no set_tid).
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = flags;
    args.pidfd = &mut pidfd as *mut libc::c_int as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    args.stack = stack.base as u64 + ChildStack::GUARD as u64;
    args.stack_size = ChildStack::LEN as u64;
    args.cgroup = cgroup.map_or(0, |fd| fd.as_raw_fd() as u64);
    let ret: isize;
    // SAFETY: clone3 with CLONE_VM runs the child in this address space on `stack` (whose
    // top, page-aligned, becomes its stack pointer). The child path of the asm never returns
    // into this function: it clears the frame pointer and calls `child_entry(plan)`, which
    // ends in execve or _exit. The parent path returns the syscall's result with only rax,
    // rcx and r11 changed, as declared. CLONE_VFORK keeps this thread (and so `plan`,
    // `stack` and `pidfd`) suspended until the child is done with them; the other threads of
    // the process never see the child's stack or plan.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") &mut args as *mut libc::clone_args,
            in("rsi") std::mem::size_of::<libc::clone_args>(),
            in("r12") plan as *const ExecPlan as *mut libc::c_void,
            in("r13") child_entry as extern "C" fn(*mut libc::c_void) -> !,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret as i32));
    }
    Ok(Spawned {
        pid: ret as i32,
        // SAFETY: with CLONE_PIDFD the kernel stored a new fd that nobody else owns.
        pidfd: (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) }),
    })
}

/// clone3 like fork(2) (a copy of this thread, its own memory), with a pidfd and into
/// `cgroup`. `Ok(None)` in the child.
fn clone3_fork(cgroup: Option<BorrowedFd<'_>>) -> io::Result<Option<Spawned>> {
    let mut pidfd: libc::c_int = -1;
    let mut flags = libc::CLONE_PIDFD as u64;
    if cgroup.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    // SAFETY: all-zero is a valid clone_args (no stack, no tls, no set_tid).
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = flags;
    args.pidfd = &mut pidfd as *mut libc::c_int as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    args.cgroup = cgroup.map_or(0, |fd| fd.as_raw_fd() as u64);
    // SAFETY: args is a valid clone_args of the size passed; without CLONE_VM and with no
    // stack the child continues on a private copy of this thread's stack, like fork, and the
    // caller runs only `child_main` in it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(Spawned {
            pid: pid as i32,
            // SAFETY: with CLONE_PIDFD the kernel stored a new fd that nobody else owns.
            pidfd: (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) }),
        })),
    }
}

/// Runs in the child: restores signals, joins the cgroups, sets up stdio, directory and
/// affinity, and executes the program. Makes only async-signal-safe system calls and reads
/// only `plan`. On failure, reports the step and errno through `plan.err` and exits 127.
fn child_main(plan: &ExecPlan, fallback: bool) -> ! {
    if let Err(e) = child_reset_signals() {
        child_fail(plan.err, stage::SIGNALS, e);
    }
    for (i, fd) in plan.join.iter().enumerate() {
        if let Err(e) = child_write(*fd, b"0") {
            child_fail(plan.err, stage::JOIN + i as u32, e);
        }
    }
    if let (true, Some(fd)) = (fallback, plan.join_fallback) {
        if let Err(e) = child_write(fd, b"0") {
            child_fail(plan.err, stage::JOIN + plan.join.len() as u32, e);
        }
    }
    for (dst, src) in plan.stdio.iter().enumerate() {
        if let Some(src) = src {
            if let Err(e) = child_dup2(*src, dst as RawFd) {
                child_fail(plan.err, stage::STDIO, e);
            }
        }
    }
    for fd in &plan.keep {
        if let Err(e) = child_dup2(*fd, *fd) {
            child_fail(plan.err, stage::KEEP, e);
        }
    }
    if plan.new_group {
        if let Err(e) = child_setpgid() {
            child_fail(plan.err, stage::GROUP, e);
        }
    }
    if let Some((uid, gid)) = plan.ids {
        if let Err(e) = child_set_ids(uid, gid) {
            child_fail(plan.err, stage::IDS, e);
        }
    }
    if let Some(cwd) = &plan.cwd {
        if let Err(e) = child_chdir(cwd) {
            child_fail(plan.err, stage::CHDIR, e);
        }
    }
    if let Some(set) = &plan.affinity {
        if let Err(e) = child_set_affinity(set) {
            child_fail(plan.err, stage::AFFINITY, e);
        }
    }
    // SAFETY: path is NUL-terminated; argv and envp are NULL-terminated arrays of pointers to
    // NUL-terminated strings owned by `plan`, alive until execve replaces this image.
    unsafe { libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()) };
    child_fail(plan.err, stage::EXEC, errno())
}

fn child_fail(err: RawFd, stage: u32, errno: i32) -> ! {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&stage.to_le_bytes());
    b[4..].copy_from_slice(&errno.to_le_bytes());
    let _ = child_write(err, &b);
    // SAFETY: _exit is async-signal-safe and never returns; it runs no destructors and no
    // atexit handlers (which belong to the parent).
    unsafe { libc::_exit(127) }
}

/// Writes `buf` to `fd` in one write(2); a short write counts as `EIO`.
fn child_write(fd: RawFd, buf: &[u8]) -> Result<(), i32> {
    // SAFETY: buf is valid for reads of its length.
    let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    match r {
        -1 => Err(errno()),
        n if n as usize == buf.len() => Ok(()),
        _ => Err(libc::EIO),
    }
}

/// dup2(2) `src` onto `dst`; if they are the same fd, clears its close-on-exec flag instead
/// (dup2 would do nothing).
fn child_dup2(src: RawFd, dst: RawFd) -> Result<(), i32> {
    if src == dst {
        // SAFETY: fcntl on an fd number; errors come back through errno.
        let r = unsafe { libc::fcntl(src, libc::F_SETFD, 0) };
        return if r == -1 { Err(errno()) } else { Ok(()) };
    }
    // SAFETY: dup2 on fd numbers; errors come back through errno.
    if unsafe { libc::dup2(src, dst) } == -1 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// setpgid(2): the calling process leads a new process group of its own pid.
fn child_setpgid() -> Result<(), i32> {
    // SAFETY: setpgid on the calling process with plain integers; errors come back through
    // errno.
    if unsafe { libc::setpgid(0, 0) } == -1 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Becomes `uid` and `gid` for good: supplementary groups (just `gid`), then the real,
/// effective and saved gid, then uid. Raw system calls: the child is a single thread cloned
/// from a multi-threaded process, and glibc's wrappers would try to apply the change to the
/// parent's other threads as well (the "setxid broadcast"), which do not exist here.
fn child_set_ids(uid: libc::uid_t, gid: libc::gid_t) -> Result<(), i32> {
    let groups = [gid];
    // SAFETY: setgroups reads one gid from a live array. Errors come back through errno.
    if unsafe { libc::syscall(libc::SYS_setgroups, 1usize, groups.as_ptr()) } == -1 {
        return Err(errno());
    }
    // SAFETY: plain integers; errors come back through errno.
    if unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) } == -1 {
        return Err(errno());
    }
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } == -1 {
        return Err(errno());
    }
    Ok(())
}

/// chdir(2).
fn child_chdir(dir: &CStr) -> Result<(), i32> {
    // SAFETY: dir is a valid NUL-terminated string.
    if unsafe { libc::chdir(dir.as_ptr()) } == -1 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// sched_setaffinity(2) of the calling process.
fn child_set_affinity(set: &libc::cpu_set_t) -> Result<(), i32> {
    // SAFETY: set is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if r == -1 { Err(errno()) } else { Ok(()) }
}

/// Unblocks every signal and restores `SIGPIPE` to its default (Rust programs ignore it, and
/// an ignored disposition would survive `execve`), as `std::process` does.
fn child_reset_signals() -> Result<(), i32> {
    // SAFETY: restoring the default disposition of SIGPIPE; signal() is async-signal-safe.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(errno());
    }
    // SAFETY: an all-zero sigset_t is valid for sigemptyset to fill; both calls are
    // async-signal-safe and take valid pointers.
    let r = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut())
    };
    if r != 0 { Err(r) } else { Ok(()) }
}

/// A CPU set with the given CPUs, for [`child_set_affinity`]. CPUs beyond the set's capacity
/// (1024) are refused.
pub fn cpu_set(cpus: &[usize]) -> io::Result<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cpu {c} is beyond the {} CPUs a cpu_set_t holds",
                    libc::CPU_SETSIZE
                ),
            ));
        }
        // SAFETY: c is below CPU_SETSIZE (checked above), so the bit is inside the set.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    Ok(set)
}

/// Tries to take an exclusive flock(2) on `fd` without blocking. `Ok(false)` if another open
/// file description holds it. (std's `File::try_lock` needs Rust 1.89, above the workspace's
/// minimum.)
pub fn flock_try_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: flock on a borrowed, open fd; errors come back through errno.
    let r = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}
