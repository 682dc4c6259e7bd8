//! rescon-httpd as a service: what happens between `exec` and serving, and around stops and
//! reloads, so that a service manager (systemd) and an operator can run it.
//!
//! | what | file | when |
//! |---|---|---|
//! | readiness, reload, stop and watchdog notifications | [`notify`] | `READY=1` once every listener accepts and privileges are dropped; `RELOADING=1` then `READY=1` around a reload; `STOPPING=1` at a stop; `WATCHDOG=1` from a runtime task |
//! | listening sockets passed by the manager | [`activation`] | taken by name or address when the listeners open |
//! | `[server] user` and `group` | [`privileges`] | resolved at start (an unknown name stops the start), switched to after the listeners, the admin sockets and the cgroups are made |
//! | the open-file limit | [`rlimit`] | raised at start, before anything is opened |
//!
//! The order at start ([`crate::server::run`]): notifier and passed sockets, open-file limit,
//! user resolved; cgroups made (the cgroup subtree handed to the user when there is one);
//! listeners and admin sockets; the switch to the user; `READY=1`.

pub mod activation;
pub mod notify;
pub mod privileges;
pub mod rlimit;

pub use activation::Activation;
pub use notify::{Notifier, notifier};

use crate::config::{CgroupParent, CgroupV2Mode, Config, ServerConfig};
use anyhow::{Context as _, Result};
use rescon::{Attributes, Container};
use rescon_linux::cgroup;
use std::path::{Path, PathBuf};

/// What start-up carries from its first steps (as root) to its last (as the user).
#[derive(Debug)]
pub struct Startup {
    /// Sockets passed by the service manager, until their listeners take them.
    pub passed: Activation,
    /// The user to become, if any.
    pub ids: Option<privileges::Ids>,
}

impl Startup {
    /// The first steps: takes the passed sockets, raises the open-file limit (saying so when
    /// it stays short of what the configuration needs), and resolves `[server] user` (an
    /// unknown user, or a server that is not root and cannot switch, stops the start here).
    pub fn begin(config: &Config) -> Result<Startup> {
        let passed = Activation::from_env().map_err(anyhow::Error::msg)?;
        if !passed.is_empty() {
            tracing::info!(
                sockets = passed.len(),
                "sockets passed by the service manager"
            );
        }
        let need = rlimit::needed(config);
        let r = rlimit::raise(config.server.nofile.or(need));
        if r.short() {
            tracing::warn!(
                limit = r.now,
                hard = r.hard,
                needed = r.needed,
                "the open-file limit is below what the configuration's connection and process limits need: raise LimitNOFILE= in the unit (or `ulimit -n`), or run as root, or set [server] nofile, or lower max_connections"
            );
        } else if r.now != r.before {
            tracing::info!(from = r.before, to = r.now, "open-file limit raised");
        }
        let ids = match &config.server.user {
            Some(u) => {
                let ids = privileges::resolve(u, config.server.group.as_deref())?;
                if !privileges::can_switch() && !privileges::is_current(&ids) {
                    anyhow::bail!(
                        "[server] user = {u:?}: switching to it needs root, and this process is not root: start the server as root (it switches once its sockets and cgroups are made), or remove [server] user"
                    );
                }
                Some(ids)
            }
            None => None,
        };
        Ok(Startup { passed, ids })
    }

    /// Whether the process will switch to another user (its cgroup subtree must then be
    /// handed over, with the process in it: see [`cgroup::Config::own_leaf`]).
    pub fn drops_privileges(&self) -> bool {
        self.ids
            .as_ref()
            .is_some_and(|i| !privileges::is_current(i))
    }

    /// The last steps, once every socket is bound: closes passed sockets no listener took,
    /// hands the cgroup subtree and the access log to the user, and switches to it.
    pub fn finish(
        &mut self,
        kernel: Option<&cgroup::Manager>,
        access_log: Option<&Path>,
    ) -> Result<()> {
        std::mem::take(&mut self.passed).finish();
        let Some(ids) = &self.ids else {
            return Ok(());
        };
        if privileges::is_current(ids) {
            return Ok(());
        }
        if let Some(p) = access_log {
            // Reopened by the user after a rotation (SIGHUP): the file must be its own.
            std::os::unix::fs::chown(p, Some(ids.uid), Some(ids.gid)).with_context(|| {
                format!("handing the access log {} to {}", p.display(), ids.user)
            })?;
        }
        match kernel {
            Some(m) => m
                .hand_over(ids.uid, ids.gid, || privileges::drop_to(ids))
                .with_context(|| format!("handing the cgroup subtree to {}", ids.user))??,
            None => privileges::drop_to(ids)?,
        }
        tracing::info!(user = %ids.user, uid = ids.uid, gid = ids.gid, "running as {}", ids.user);
        Ok(())
    }
}

/// The cgroup manager's configuration from `[server]`.
pub fn cgroup_config(s: &ServerConfig, own_leaf: bool) -> cgroup::Config {
    cgroup::Config {
        parent: match &s.cgroup_parent {
            CgroupParent::Own => cgroup::Parent::Own,
            CgroupParent::OwnParent => cgroup::Parent::OwnParent,
            CgroupParent::Path(p) => cgroup::Parent::Path(PathBuf::from(p)),
        },
        v2_mode: match s.cgroup_v2_mode {
            CgroupV2Mode::Domain => cgroup::V2Mode::Domain,
            CgroupV2Mode::Threaded => cgroup::V2Mode::Threaded,
        },
        own_leaf,
        ..cgroup::Config::default()
    }
}

/// Pings the service manager's watchdog from a task of the runtime, at half its interval:
/// a runtime that stops running tasks stops the pings, and systemd restarts the server.
pub fn watchdog(notify: &'static Notifier, parent: &Container) {
    let Some(every) = notify.watchdog() else {
        return;
    };
    let c = parent
        .create_child("watchdog", Attributes::default())
        .unwrap_or_else(|_| parent.clone());
    rescon_rt::spawn_in(&c, async move {
        loop {
            notify.watchdog_ping();
            rescon_rt::sleep(every / 2).await;
        }
    });
    tracing::info!(interval = ?every, "pinging the service manager's watchdog");
}
