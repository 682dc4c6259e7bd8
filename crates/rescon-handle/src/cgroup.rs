//! [`Enforcer`]s from rescon-linux: its cgroup [`Manager`] (holders bind their threads and
//! processes to kernel-enforced containers through it), and, where there are no cgroups, its
//! user-mode [`Limiter`](rescon_linux::usermode::Limiter) (binding is refused; the CPU limit is
//! held from user space). Both describe the enforcement in force with
//! [`rescon_linux::enforcement::report`].

use crate::error::{Error, ErrorKind, Result};
use crate::owner::Enforcer;
use rescon::Container;
use rescon_linux::cgroup::{self, Manager};

fn convert(what: &str, e: cgroup::Error) -> Error {
    let kind = match e.kind() {
        cgroup::ErrorKind::NotKernel | cgroup::ErrorKind::NotMirrored => ErrorKind::NotEnforced,
        cgroup::ErrorKind::ShutDown => ErrorKind::Released,
        _ => ErrorKind::Kernel,
    };
    Error::new(kind, format!("{what}: {e}"))
}

impl Enforcer for Manager {
    fn describe(&self, c: &Container) -> String {
        let r = rescon_linux::enforcement::report(c, Some(self), None);
        let mut s = format!(
            "{}: cpu_limit {}; max_processes {}; max_memory {}",
            r.summary, r.cpu_limit, r.max_processes, r.max_memory
        );
        if !r.notes.is_empty() {
            s.push_str("; except: ");
            s.push_str(&r.notes.join("; "));
        }
        s
    }

    fn bind_thread(&self, pid: i32, tid: i32, c: &Container) -> Result<()> {
        let r = if pid == std::process::id() as i32 {
            Manager::bind_thread(self, tid, c)
        } else {
            self.bind_foreign_thread(tid, c)
        };
        r.map_err(|e| convert(&format!("bind thread {tid} to container {}", c.id()), e))
    }

    fn bind_process(&self, pid: i32, c: &Container) -> Result<()> {
        Manager::bind_process(self, pid, c)
            .map_err(|e| convert(&format!("bind process {pid} to container {}", c.id()), e))
    }
}

/// Without cgroups: the user-mode limiter holds CPU limits, and nothing can bind a thread.
impl Enforcer for rescon_linux::usermode::Limiter {
    fn describe(&self, c: &Container) -> String {
        let r = rescon_linux::enforcement::report(c, None, Some(self));
        format!(
            "{}: cpu_limit {}; max_processes {}; max_memory {}",
            r.summary, r.cpu_limit, r.max_processes, r.max_memory
        )
    }

    fn bind_thread(&self, _pid: i32, tid: i32, c: &Container) -> Result<()> {
        Err(Error::new(
            ErrorKind::NotEnforced,
            format!(
                "bind thread {tid} to container {}: no cgroups here (user-mode enforcement)",
                c.id()
            ),
        ))
    }

    fn bind_process(&self, pid: i32, c: &Container) -> Result<()> {
        Err(Error::new(
            ErrorKind::NotEnforced,
            format!(
                "bind process {pid} to container {}: no cgroups here (user-mode enforcement)",
                c.id()
            ),
        ))
    }
}
