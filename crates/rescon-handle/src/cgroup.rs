//! [`Enforcer`] for rescon-linux's cgroup manager: holders bind their threads and processes to
//! kernel-enforced containers through the owner's [`Manager`].

use crate::error::{Error, ErrorKind, Result};
use crate::owner::Enforcer;
use rescon::{Container, Enforcement};
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
        if c.attrs().enforcement != Enforcement::Kernel {
            return "user-level: the container is not kernel-enforced (enforcement = \"user\"); \
                    its processes are not limited by cgroups"
                .to_string();
        }
        let notes = self.notes(c);
        if notes.is_empty() {
            "kernel (cgroups)".to_string()
        } else {
            format!("kernel (cgroups), except: {}", notes.join("; "))
        }
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
