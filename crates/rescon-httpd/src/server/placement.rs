//! Stage: placement, the one rule of where a request's work is charged, and its application.
//!
//! # The rule
//!
//! - A connection is accepted by its client class (the listener member the kernel steered its
//!   SYN to) and its container is created under the class container. The class's connection
//!   limit is taken then and held for the connection's life (beyond it: 503).
//! - Static work is charged under the vhost: under `<vhost container>/<class name>` if the
//!   configuration declares such a container (so a vhost can give its premium clients their
//!   own share), else under the vhost's container ([`work_parent`]). Without per-request
//!   containers the connection's container is moved there, once, or again when a later request
//!   on it names another vhost ([`Placed`]); with them, each request's container is created
//!   there ([`request_container`]).
//! - A CGI run gets a container of its own under its prefix's class container, whatever the
//!   vhost, so a cap on the CGI class holds for all CGI work ([`cgi_container`]).
//!
//! [`work_parent`] is pure and is applied once per load, when the site is compiled
//! ([`Site::compile`](super::site::Site::compile)); the functions below apply its result.

use crate::config::{CgiPrefix, ContainerPath, TreeSpec, VhostConfig};
use rescon::{Attributes, Container};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What kind of work a request is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum WorkKind<'c> {
    /// A static file.
    Static,
    /// A CGI run under this prefix.
    Cgi(&'c CgiPrefix),
}

/// The container path a request's work of `kind`, from a client of class `class`, is charged
/// under on `vhost`. See the [module docs](self).
pub(crate) fn work_parent(
    tree: &TreeSpec,
    vhost: &VhostConfig,
    class: &str,
    kind: WorkKind<'_>,
) -> ContainerPath {
    match kind {
        WorkKind::Cgi(prefix) => prefix.container.clone(),
        WorkKind::Static => {
            let refined = vhost.container.child(class);
            if !class.is_empty() && tree.contains(&refined) {
                refined
            } else {
                vhost.container.clone()
            }
        }
    }
}

/// Where a connection's container was last placed: the site generation and vhost, so that
/// the next request to the same vhost costs two comparisons. In one word, since a parked
/// connection keeps it: the generation's low 32 bits (a stale placement would be taken for
/// current only after exactly 2^32 reloads), and the vhost's index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Placed {
    generation: u32,
    vhost: u32,
}

impl Placed {
    /// Whether the connection is placed for `vhost` of site `generation`.
    pub(crate) fn is(&self, generation: u64, vhost: usize) -> bool {
        self.generation == generation as u32 && self.vhost as usize == vhost
    }

    pub(crate) fn at(generation: u64, vhost: usize) -> Placed {
        Placed {
            generation: generation as u32,
            vhost: vhost as u32,
        }
    }
}

/// Moves the connection's container `me` under `target` (the scheduler follows the move, so
/// the vhost's share governs the connection from then on; its usage moves with it). Nothing
/// to do when it is there already. The class's connection limit stays taken, as accepted.
/// Returns whether `me` is under `target` now.
pub(crate) fn move_connection(root: &Container, me: &Container, target: &Container) -> bool {
    if me.id() == target.id() {
        return false;
    }
    if me.parent_id() == Some(target.id()) {
        return true;
    }
    match root.reparent(me, Some(target)) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(container = %me.name(), to = %target.name(), error = %e, "moving a connection under its vhost failed; its work stays where it is");
            false
        }
    }
}

/// With `per_request_containers`: a container for one request under `parent`; its usage
/// folds into the parent's when it is dropped. `None` (the request is charged to its
/// connection) if it cannot be made.
pub(crate) fn request_container(parent: &Container, seq: &AtomicU64) -> Option<Container> {
    let n = seq.fetch_add(1, Relaxed);
    match parent.create_child(&format!("req-{n}"), Attributes::default()) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(parent = %parent.name(), error = %e, "no request container; the request is charged to its connection");
            None
        }
    }
}

/// A CGI run's container under its class container `class`, mirrored in a cgroup when
/// `kernel` enforcement is on.
pub(crate) fn cgi_container(
    class: &Container,
    seq: &AtomicU64,
    kernel: bool,
) -> Result<Container, rescon::Error> {
    let n = seq.fetch_add(1, Relaxed);
    let mut attrs = Attributes::default();
    if kernel {
        let _ = attrs.set("enforcement", "kernel");
    }
    class.create_child(&format!("cgi-{n}"), attrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use rescon::Registry;

    fn config() -> Config {
        Config::parse(
            "t.toml",
            r#"
[containers.premium]
[containers.rest]
[containers.cgi]
[containers.a]
[containers.a.premium]
[containers.b]
[[listener]]
address = "127.0.0.1"
port = 8080
[[listener.class]]
name = "premium"
container = "premium"
prefixes = ["127.0.0.2"]
[[listener.class]]
name = "rest"
container = "rest"
except = []
[[vhost]]
name = "a"
root = "/srv/a"
container = "a"
default = true
[[vhost.cgi]]
prefix = "/cgi-bin/"
dir = "/srv/cgi"
container = "cgi"
[[vhost]]
name = "b"
hosts = ["b.test"]
root = "/srv/b"
container = "b"
"#,
        )
        .unwrap()
    }

    #[test]
    fn static_work_goes_under_the_vhost_or_its_class_refinement() {
        let c = config();
        let (a, b) = (&c.vhosts[0], &c.vhosts[1]);
        let p = |v, class| work_parent(&c.tree, v, class, WorkKind::Static);
        assert_eq!(p(a, "premium").as_str(), "a/premium");
        assert_eq!(p(a, "rest").as_str(), "a");
        assert_eq!(p(b, "premium").as_str(), "b");
        assert_eq!(p(a, "").as_str(), "a", "no class: the vhost");
    }

    #[test]
    fn cgi_work_goes_under_its_prefix_class_whatever_the_client() {
        let c = config();
        let prefix = &c.vhosts[0].cgi[0];
        for class in ["premium", "rest"] {
            let got = work_parent(&c.tree, &c.vhosts[0], class, WorkKind::Cgi(prefix));
            assert_eq!(got.as_str(), "cgi");
        }
    }

    #[test]
    fn a_connection_moves_once_and_containers_are_made_where_the_rule_says() {
        let r = Registry::new();
        let root = r.root();
        let class = root.create_child("rest", Attributes::default()).unwrap();
        let vhost = root.create_child("a", Attributes::default()).unwrap();
        let me = class.create_child("conn-1", Attributes::default()).unwrap();
        move_connection(&root, &me, &vhost);
        assert_eq!(me.parent_id(), Some(vhost.id()));
        move_connection(&root, &me, &vhost);
        assert_eq!(me.parent_id(), Some(vhost.id()), "no second move");
        let seq = AtomicU64::new(7);
        let req = request_container(&vhost, &seq).unwrap();
        assert_eq!((req.name(), req.parent_id()), ("req-7", Some(vhost.id())));
        let cgi = cgi_container(&class, &seq, true).unwrap();
        assert_eq!(cgi.parent_id(), Some(class.id()));
        assert_eq!(cgi.attrs().enforcement, rescon::Enforcement::Kernel);
        let placed = Placed::at(3, 1);
        assert!(placed.is(3, 1) && !placed.is(4, 1) && !placed.is(3, 0));
    }
}
