//! The open-file limit (`RLIMIT_NOFILE`): raised at start to what the configuration needs.
//!
//! Every connection holds a socket, every CGI run a pidfd and two pipes, and the server a
//! base of listeners, cached files and logs. The common soft limit of 1,024 stops a server
//! configured for 20,000 connections at about a thousand. At start the soft limit is raised
//! to the hard one (what Go's runtime does for every program); when the configuration needs
//! more than the hard limit, the server raises that too if it runs as root (up to
//! `fs.nr_open`), else it says what to set.

use crate::config::Config;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors the server holds beside connections and CGI runs: listeners, the admin
/// sockets, logs, open directories and cached files.
pub const BASE: u64 = 256;

/// Descriptors a CGI run holds while it runs (pidfd, stdin and stdout pipes, the cgroup
/// directory while it spawns).
pub const PER_CGI_RUN: u64 = 4;

/// What the configuration needs: [`BASE`], one per connection its class containers allow,
/// [`PER_CGI_RUN`] per process its CGI containers allow. `None` when a listener's class (or
/// a listener without classes) has no connection limit: then nothing bounds it.
pub fn needed(config: &Config) -> Option<u64> {
    let attrs = |p: &crate::config::ContainerPath| {
        if p.as_str().is_empty() {
            Some(&config.tree.root)
        } else {
            config
                .tree
                .nodes
                .iter()
                .find(|n| &n.path == p)
                .map(|n| &n.attrs)
        }
    };
    let mut total = BASE;
    for l in &config.listeners {
        if l.classes.is_empty() {
            return None;
        }
        for c in &l.classes {
            total += attrs(&c.container)?.limits.max_connections?;
        }
    }
    for v in &config.vhosts {
        for cgi in &v.cgi {
            if let Some(p) = attrs(&cgi.container).and_then(|a| a.limits.max_processes) {
                total += PER_CGI_RUN * p;
            }
        }
    }
    Some(total)
}

/// What was done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raised {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub now: u64,
    /// The hard limit now.
    pub hard: u64,
    /// What the configuration needs (`None`: unbounded).
    pub needed: Option<u64>,
}

impl Raised {
    /// Whether the limit is short of what the configuration needs.
    pub fn short(&self) -> bool {
        self.needed.is_some_and(|n| n > self.now)
    }
}

fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// Raises the soft limit to the hard one, and both to `want` (or what the configuration
/// needs) when that is higher and the process may (root).
pub fn raise(want: Option<u64>) -> Raised {
    let cur = getrlimit(Resource::Nofile);
    let before = cur.current.unwrap_or(u64::MAX);
    let mut hard = cur.maximum.unwrap_or(u64::MAX);
    if let Some(w) = want {
        if w > hard {
            let w = w.min(nr_open());
            let lim = Rlimit {
                current: Some(w),
                maximum: Some(w),
            };
            if setrlimit(Resource::Nofile, lim).is_ok() {
                hard = w;
            }
        }
    }
    let target = hard.max(before);
    if target != before {
        let lim = Rlimit {
            current: Some(target),
            maximum: Some(hard),
        };
        let _ = setrlimit(Resource::Nofile, lim);
    }
    let now = getrlimit(Resource::Nofile);
    Raised {
        before,
        now: now.current.unwrap_or(u64::MAX),
        hard: now.maximum.unwrap_or(u64::MAX),
        needed: want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_follow_the_limits_of_the_classes_and_cgi() {
        let c = Config::parse(
            "t.toml",
            r#"
[containers.clients.a]
max_connections = 20000
[containers.clients.b]
max_connections = 100
[containers.cgi]
max_processes = 10
[[listener]]
address = "127.0.0.1"
port = 0
[[listener.class]]
name = "a"
container = "clients/a"
prefixes = ["10.0.0.0/8"]
[[listener.class]]
name = "b"
container = "clients/b"
except = []
[[vhost]]
name = "v"
root = "/tmp"
container = "clients"
[[vhost.cgi]]
prefix = "/cgi-bin/"
dir = "/tmp"
container = "cgi"
"#,
        )
        .unwrap();
        assert_eq!(needed(&c), Some(BASE + 20_100 + 10 * PER_CGI_RUN));
        // The default configuration has a class without a connection limit.
        let d = Config::default_config();
        let unbounded = d.listeners.iter().any(|l| {
            l.classes.iter().any(|k| {
                d.tree
                    .nodes
                    .iter()
                    .find(|n| n.path == k.container)
                    .is_none_or(|n| n.attrs.limits.max_connections.is_none())
            })
        });
        assert_eq!(needed(&d).is_none(), unbounded);
    }

    #[test]
    fn short_when_below_the_need() {
        let r = Raised {
            before: 1024,
            now: 4096,
            hard: 4096,
            needed: Some(20_000),
        };
        assert!(r.short());
        assert!(
            !Raised {
                needed: None,
                ..r.clone()
            }
            .short()
        );
    }
}
