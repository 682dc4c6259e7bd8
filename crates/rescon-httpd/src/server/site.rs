//! The compiled site: what a request reads, resolved once per load or reload.
//!
//! [`Site::compile`] turns a [`Config`] and the live container tree into an immutable [`Site`]:
//! each vhost with its open document root, its container, the container its work is charged
//! under for each client class (by the placement rule, [`placement::work_parent`]), its CGI
//! mounts with their open directories and class containers, and its small-file cache; an index
//! from Host names to vhosts; and each listener's class containers. Requests hold no lock on
//! the tree and look nothing up by container path: what they need is a field here.
//!
//! A reload compiles a new `Site` and publishes it in a [`SiteCell`]; a request takes one
//! snapshot when it begins ([`SiteCell::refresh`]) and uses it to its end, so a reload in the
//! middle of a request never gives it two configurations.

use super::placement::{self, WorkKind};
use super::static_file::FileCache;
use crate::cgi::ScriptDir;
use crate::config::{CgiPrefix, Config, LiveTree, VhostConfig, normalize_host};
use crate::static_files::DocRoot;
use anyhow::{Context as _, Result};
use rescon::Container;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Maps hashed with foldhash: the Host lookup runs on every request (SipHash's cost showed in
/// callgrind); a client cannot add keys to these maps.
type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

/// The compiled configuration. See the [module docs](self).
pub(crate) struct Site {
    /// The configuration it was compiled from (timeouts, limits, the log's destination).
    pub(crate) config: Config,
    pub(crate) vhosts: Vec<Vhost>,
    hosts: HostIndex,
    /// Each listener's class containers, by listener name then class name.
    classes: Map<Map<Container>>,
    /// Bumped by every compile of a [`SiteCell`], so a connection can tell its snapshot is old.
    pub(crate) generation: u64,
    /// Each listener's TLS and protocols, with the vhosts' certificates.
    pub(crate) tls: super::tls::SiteTls,
}

/// A virtual host, compiled.
pub(crate) struct Vhost {
    /// Its index in [`Site::vhosts`].
    pub(crate) index: usize,
    pub(crate) name: Arc<str>,
    pub(crate) config: VhostConfig,
    pub(crate) root: DocRoot,
    /// Where static work is charged for each client class (its per-class refinement if the
    /// configuration declares one, else the vhost's container).
    work: Map<Container>,
    /// Where static work of a class not named in `work` goes: the vhost's container.
    container: Container,
    /// CGI mounts, the longest prefix first.
    pub(crate) cgi: Vec<CgiMount>,
    /// Small files by request path; a reload starts with an empty one.
    pub(crate) files: FileCache,
    /// The user its CGI scripts run as, if the vhost names one.
    pub(crate) cgi_user: Option<crate::service::privileges::Ids>,
}

/// A CGI prefix of a vhost, compiled.
pub(crate) struct CgiMount {
    pub(crate) prefix: CgiPrefix,
    pub(crate) dir: ScriptDir,
    /// The CGI class container: each run gets a container under it.
    pub(crate) container: Container,
}

/// Host name to vhost: exact names in a hash map, `*.suffix` wildcards longest first, then
/// the default (the same answers as [`Config::vhost_for`], which the tests check).
#[derive(Default)]
struct HostIndex {
    exact: Map<usize>,
    wildcards: Vec<(Box<str>, usize)>,
    default: Option<usize>,
}

impl HostIndex {
    fn new(vhosts: &[VhostConfig]) -> HostIndex {
        let mut idx = HostIndex::default();
        for (i, v) in vhosts.iter().enumerate() {
            for h in &v.hosts {
                match h.strip_prefix('*') {
                    Some(suffix) => idx.wildcards.push((suffix.into(), i)),
                    // The first vhost naming a host keeps it, as `vhost_for` finds it first.
                    None => {
                        idx.exact.entry(h.as_str().into()).or_insert(i);
                    }
                }
            }
            if v.default && idx.default.is_none() {
                idx.default = Some(i);
            }
        }
        // Longest suffix first; the first declared among equals, as `vhost_for` keeps it.
        idx.wildcards
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        idx
    }

    fn get(&self, host: Option<&str>) -> Option<usize> {
        if let Some(h) = host.map(normalize_host) {
            if let Some(&i) = self.exact.get(h.as_ref()) {
                return Some(i);
            }
            for (suffix, i) in &self.wildcards {
                if h.len() > suffix.len() && h.ends_with(suffix.as_ref()) {
                    return Some(*i);
                }
            }
        }
        self.default
    }
}

/// A configuration's directories, opened: the first half of a compile, which can fail on
/// I/O (a reload does it before it changes the tree, so a bad directory changes nothing).
pub(crate) struct Opened {
    config: Config,
    certs: super::tls::Certs,
    roots: Vec<DocRoot>,
    /// Per vhost, its CGI directories in configuration order.
    dirs: Vec<Vec<ScriptDir>>,
}

impl Opened {
    /// Opens every document root and CGI directory of `config`.
    pub(crate) fn open(config: Config) -> Result<Opened> {
        let mut roots = Vec::new();
        let mut dirs = Vec::new();
        for v in &config.vhosts {
            roots.push(DocRoot::open(&v.root, v.index.clone()).with_context(|| {
                format!(
                    "vhost {}: opening the document root {}",
                    v.name,
                    v.root.display()
                )
            })?);
            let mut d = Vec::new();
            for p in &v.cgi {
                d.push(ScriptDir::open(&p.dir).with_context(|| {
                    format!(
                        "vhost {}: opening the CGI directory {}",
                        v.name,
                        p.dir.display()
                    )
                })?);
            }
            dirs.push(d);
        }
        let certs = super::tls::Certs::load(&config)?;
        Ok(Opened {
            config,
            certs,
            roots,
            dirs,
        })
    }

    /// The configuration being compiled.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The second half: resolves every container a request needs in the live tree. Fails,
    /// naming what, if a container the configuration names is not in the tree.
    pub(crate) fn resolve(self, tree: &LiveTree) -> Result<Site> {
        let Opened {
            config,
            certs,
            roots,
            dirs,
        } = self;
        let live = |path: &crate::config::ContainerPath, what: &str| {
            tree.get(path)
                .cloned()
                .with_context(|| format!("{what}: no container {path} in the tree"))
        };
        let mut class_names: Vec<&str> = config
            .listeners
            .iter()
            .flat_map(|l| l.classes.iter().map(|c| c.name.as_str()))
            .collect();
        class_names.sort_unstable();
        class_names.dedup();
        let mut vhosts = Vec::with_capacity(config.vhosts.len());
        for ((index, v), (root, dirs)) in config
            .vhosts
            .iter()
            .enumerate()
            .zip(roots.into_iter().zip(dirs))
        {
            let container = live(&v.container, &format!("vhost {}", v.name))?;
            let mut work = Map::default();
            for class in &class_names {
                let path = placement::work_parent(&config.tree, v, class, WorkKind::Static);
                if path != v.container {
                    work.insert((*class).into(), live(&path, &format!("vhost {}", v.name))?);
                }
            }
            let mut cgi = Vec::with_capacity(v.cgi.len());
            for (p, dir) in v.cgi.iter().zip(dirs) {
                let path = placement::work_parent(&config.tree, v, "", WorkKind::Cgi(p));
                let container = live(&path, &format!("vhost {}: CGI {}", v.name, p.prefix))?;
                cgi.push(CgiMount {
                    prefix: p.clone(),
                    dir,
                    container,
                });
            }
            cgi.sort_by_key(|m| std::cmp::Reverse(m.prefix.prefix.len()));
            let cgi_user = crate::service::privileges::vhost_cgi_ids(&config.server, v)?;
            vhosts.push(Vhost {
                cgi_user,
                index,
                name: v.name.as_str().into(),
                config: v.clone(),
                root,
                work,
                container,
                cgi,
                files: FileCache::default(),
            });
        }
        let mut classes: Map<Map<Container>> = Map::default();
        for l in &config.listeners {
            let mut m = Map::default();
            for c in &l.classes {
                let what = format!("listener {}: class {}", l.name, c.name);
                m.insert(c.name.as_str().into(), live(&c.container, &what)?);
            }
            classes.insert(l.name.as_str().into(), m);
        }
        let tls = super::tls::SiteTls::compile(&config, certs, &classes)?;
        Ok(Site {
            hosts: HostIndex::new(&config.vhosts),
            config,
            vhosts,
            classes,
            generation: 0,
            tls,
        })
    }
}

impl Site {
    /// Compiles `config` over the live tree ([`Opened::open`], then [`Opened::resolve`]).
    pub(crate) fn compile(config: Config, tree: &LiveTree) -> Result<Site> {
        Opened::open(config)?.resolve(tree)
    }

    /// The vhost serving a Host header value (see [`Config::vhost_for`]).
    pub(crate) fn vhost_for(&self, host: Option<&str>) -> Option<&Vhost> {
        self.hosts.get(host).map(|i| &self.vhosts[i])
    }

    /// The container of class `class` of listener `listener`.
    pub(crate) fn class_container(&self, listener: &str, class: &str) -> Option<&Container> {
        self.classes.get(listener)?.get(class)
    }
}

impl Vhost {
    /// The container static work of `class` is charged under (see [`placement`]).
    pub(crate) fn work_container(&self, class: &str) -> &Container {
        self.work.get(class).unwrap_or(&self.container)
    }
}

/// The site in force, swapped whole by a reload.
pub(crate) struct SiteCell {
    current: RwLock<Arc<Site>>,
    generation: AtomicU64,
}

impl SiteCell {
    pub(crate) fn new(mut site: Site) -> SiteCell {
        site.generation = 1;
        SiteCell {
            current: RwLock::new(Arc::new(site)),
            generation: AtomicU64::new(1),
        }
    }

    /// The site in force.
    pub(crate) fn get(&self) -> Arc<Site> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `site` in force; requests that begin from now on see it.
    pub(crate) fn publish(&self, mut site: Site) {
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        site.generation = cur.generation + 1;
        let generation = site.generation;
        *cur = Arc::new(site);
        self.generation.store(generation, Ordering::Release);
    }

    /// Brings a connection's snapshot up to date: one atomic load when nothing changed (no
    /// lock and no reference count touched on the request path), a fresh snapshot after a
    /// reload.
    pub(crate) fn refresh(&self, snapshot: &mut Arc<Site>) {
        if self.generation.load(Ordering::Acquire) != snapshot.generation {
            *snapshot = self.get();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rescon::Registry;

    /// A configuration with two vhosts (one with nested CGI prefixes and a per-class
    /// refinement), two classes, over real directories in `dir`.
    pub(crate) fn config(dir: &std::path::Path) -> Config {
        for d in ["a", "b", "cgi", "cgi-admin"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let d = dir.display();
        Config::parse(
            "t.toml",
            &format!(
                r#"
[server]
access_log = "off"
[containers.premium]
class = "high"
[containers.rest]
[containers.cgi]
cpu_limit = "30%"
[containers.cgi-admin]
[containers.a]
share = "50%"
[containers.a.premium]
class = "high"
[containers.b]
share = "30%"
[[listener]]
name = "web"
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
hosts = ["a.test", "*.a.test", "*.test"]
root = "{d}/a"
container = "a"
default = true
[[vhost.cgi]]
prefix = "/cgi-bin/"
dir = "{d}/cgi"
container = "cgi"
[[vhost.cgi]]
prefix = "/cgi-bin/admin/"
dir = "{d}/cgi-admin"
container = "cgi-admin"
[[vhost]]
name = "b"
hosts = ["b.test", "*.b.test"]
root = "{d}/b"
container = "b"
"#
            ),
        )
        .unwrap()
    }

    pub(crate) fn compiled(dir: &std::path::Path) -> (Registry, LiveTree, Site) {
        let registry = Registry::new();
        let c = config(dir);
        let tree = LiveTree::build(&registry, &c.tree).unwrap();
        let site = Site::compile(c, &tree).unwrap();
        (registry, tree, site)
    }

    #[test]
    fn the_host_index_answers_as_the_configuration_does() {
        let dir = tempfile::tempdir().unwrap();
        let (_r, _t, site) = compiled(dir.path());
        for host in [
            None,
            Some("a.test"),
            Some("A.Test:8080"),
            Some("x.b.test"),
            Some("y.x.a.test"),
            Some("b.test."),
            Some("other.test"),
            Some("nowhere"),
            Some("[::1]:80"),
            Some(".test"),
        ] {
            let want = site.config.vhost_for(host).map(|v| v.name.as_str());
            let got = site.vhost_for(host).map(|v| &*v.name);
            assert_eq!(got, want, "{host:?}");
        }
    }

    #[test]
    fn containers_are_resolved_once_by_the_placement_rule() {
        let dir = tempfile::tempdir().unwrap();
        let (_r, tree, site) = compiled(dir.path());
        let path = |p: &str| {
            tree.get(&crate::config::ContainerPath::parse(p).unwrap())
                .unwrap()
                .id()
        };
        let a = &site.vhosts[0];
        assert_eq!(a.work_container("premium").id(), path("a/premium"));
        assert_eq!(a.work_container("rest").id(), path("a"));
        assert_eq!(site.vhosts[1].work_container("premium").id(), path("b"));
        let cgi: Vec<(&str, u64)> = a
            .cgi
            .iter()
            .map(|m| (m.prefix.prefix.as_str(), m.container.id().get()))
            .collect();
        assert_eq!(
            cgi,
            [
                ("/cgi-bin/admin/", path("cgi-admin").get()),
                ("/cgi-bin/", path("cgi").get())
            ],
            "longest prefix first"
        );
        assert_eq!(
            site.class_container("web", "premium").unwrap().id(),
            path("premium")
        );
        assert!(site.class_container("web", "nope").is_none());
    }

    #[test]
    fn a_reload_is_seen_at_the_next_refresh_only() {
        let dir = tempfile::tempdir().unwrap();
        let (_r, tree, site) = compiled(dir.path());
        let cell = SiteCell::new(site);
        let mut snap = cell.get();
        let first = snap.generation;
        cell.refresh(&mut snap);
        assert_eq!(snap.generation, first);
        cell.publish(Site::compile(config(dir.path()), &tree).unwrap());
        assert_eq!(
            snap.generation, first,
            "a snapshot does not change under a request"
        );
        cell.refresh(&mut snap);
        assert_eq!(snap.generation, first + 1);
    }
}
