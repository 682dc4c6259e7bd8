//! The declared container tree, its instantiation in a [`Registry`], and live reloads.
//!
//! The tree of `[containers]` is declarative: a reload does not rebuild it but computes a
//! [`TreeDiff`] against the running tree (attribute changes, containers to add, containers to
//! remove) and applies it with [`LiveTree::apply`], which takes full effect or none: if any step
//! is refused, the steps already taken are undone in reverse order.
//!
//! Containers of the declared tree are named by their path from the root, `vhosts/a`. The
//! containers the server makes at run time (one per connection, request or CGI run) hang below
//! them and are not part of the declaration: a reload never touches them, and a declared
//! container that a reload removes is only dropped from the tree's index; it lives on, with its
//! fixed share given up at once (it becomes `weight:1`), until its last connection ends.

use rescon::{Attributes, Container, Registry, Share, Weight};
use std::collections::BTreeMap;
use std::fmt;

/// The path of a declared container below the root, `/`-separated: `vhosts/a`. The root's path
/// is the empty string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPath(String);

static ROOT_PATH: ContainerPath = ContainerPath::ROOT;

impl ContainerPath {
    /// The root.
    pub const ROOT: ContainerPath = ContainerPath(String::new());

    /// Checks a path: segments of ASCII letters, digits, `_`, `-` and `.`, not starting with
    /// `.`, separated by single `/`. Returns what is wrong otherwise.
    pub fn parse(s: &str) -> Result<ContainerPath, &'static str> {
        if s.is_empty() {
            return Ok(ContainerPath::ROOT);
        }
        for seg in s.split('/') {
            check_segment(seg)?;
        }
        Ok(ContainerPath(s.to_string()))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parent's path (`None` for the root).
    pub fn parent(&self) -> Option<ContainerPath> {
        if self.0.is_empty() {
            return None;
        }
        Some(ContainerPath(
            self.0.rfind('/').map_or("", |i| &self.0[..i]).to_string(),
        ))
    }

    /// The last segment: the container's name (`root` for the root).
    pub fn name(&self) -> &str {
        if self.0.is_empty() {
            return "root";
        }
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// A child's path.
    pub fn child(&self, name: &str) -> ContainerPath {
        if self.0.is_empty() {
            ContainerPath(name.to_string())
        } else {
            ContainerPath(format!("{}/{name}", self.0))
        }
    }

    /// How many segments deep (0 for the root).
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.split('/').count()
        }
    }
}

pub(crate) fn check_segment(seg: &str) -> Result<(), &'static str> {
    if seg.is_empty() {
        return Err("an empty name");
    }
    if seg.starts_with('.') {
        return Err("a name starting with `.`");
    }
    if !seg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err("a character other than ASCII letters, digits, `_`, `-` and `.`");
    }
    Ok(())
}

impl fmt::Display for ContainerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(root)")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// One declared container.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    /// Where it is.
    pub path: ContainerPath,
    /// Its attributes (defaults for those the file does not give).
    pub attrs: Attributes,
}

/// The declared tree: the root's attributes and every container below it, parents first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TreeSpec {
    /// The root's attributes.
    pub root: Attributes,
    /// Every declared container, each after its parent, in file order otherwise.
    pub nodes: Vec<NodeSpec>,
}

impl TreeSpec {
    /// Whether `path` is declared (the root always is).
    pub fn contains(&self, path: &ContainerPath) -> bool {
        path.0.is_empty() || self.nodes.iter().any(|n| &n.path == path)
    }

    /// The declared attributes of `path`.
    pub fn attrs(&self, path: &ContainerPath) -> Option<&Attributes> {
        if path.0.is_empty() {
            return Some(&self.root);
        }
        self.nodes
            .iter()
            .find(|n| &n.path == path)
            .map(|n| &n.attrs)
    }

    /// Every declared path, the root first.
    pub fn paths(&self) -> impl Iterator<Item = &ContainerPath> {
        std::iter::once(&ROOT_PATH).chain(self.nodes.iter().map(|n| &n.path))
    }
}

/// The declared tree instantiated under a registry's root: the handle of every declared
/// container by path.
///
/// ```
/// use rescon_httpd::config::{Config, ContainerPath, LiveTree};
/// let config = Config::parse("t.toml", r#"
/// [containers.cgi]
/// cpu_limit = "30%"
/// "#).unwrap();
/// let registry = rescon::Registry::new();
/// let live = LiveTree::build(&registry, &config.tree).unwrap();
/// let cgi = live.get(&ContainerPath::parse("cgi").unwrap()).unwrap();
/// assert_eq!(cgi.attrs().cpu_limit.unwrap().fraction(), 0.3);
/// ```
#[derive(Debug)]
pub struct LiveTree {
    root: Container,
    by_path: BTreeMap<ContainerPath, Container>,
}

/// Why the tree could not be built or changed.
#[derive(Debug, thiserror::Error)]
#[error("container {path}: {source}")]
pub struct TreeError {
    /// The declared container the refused step was about.
    pub path: ContainerPath,
    /// What the container model refused.
    #[source]
    pub source: rescon::Error,
}

impl LiveTree {
    /// Creates every declared container under `registry`'s root and sets the root's attributes.
    /// On error nothing of the tree is left (the containers made so far are released).
    pub fn build(registry: &Registry, spec: &TreeSpec) -> Result<LiveTree, TreeError> {
        let root = registry.root();
        let mut live = LiveTree {
            root: root.clone(),
            by_path: BTreeMap::new(),
        };
        let diff = TreeDiff::between(&live.current(), spec);
        live.apply(&diff)?;
        Ok(live)
    }

    /// The handle of a declared container (the root for the empty path).
    pub fn get(&self, path: &ContainerPath) -> Option<&Container> {
        if path.0.is_empty() {
            Some(&self.root)
        } else {
            self.by_path.get(path)
        }
    }

    /// Every declared container with its path, the root first.
    pub fn iter(&self) -> impl Iterator<Item = (&ContainerPath, &Container)> {
        std::iter::once((&ROOT_PATH, &self.root)).chain(self.by_path.iter())
    }

    /// The running tree as a spec: what a reload is compared with. Attributes are read live,
    /// so changes made through the admin API count as the running state.
    pub fn current(&self) -> TreeSpec {
        TreeSpec {
            root: self.root.attrs(),
            nodes: self
                .by_path
                .iter()
                .map(|(p, c)| NodeSpec {
                    path: p.clone(),
                    attrs: c.attrs(),
                })
                .collect(),
        }
    }

    /// Makes the running tree what `new` declares: computes the [`TreeDiff`] against the
    /// running tree and applies it (all or nothing). Returns what changed, for the log.
    pub fn reload(&mut self, new: &TreeSpec) -> Result<TreeDiff, TreeError> {
        let diff = TreeDiff::between(&self.current(), new);
        self.apply(&diff)?;
        Ok(diff)
    }

    /// Applies `diff`: removals first (giving up their fixed shares), then attribute changes
    /// that lower a fixed share, then the other changes, then additions, parents first. If a
    /// step is refused, every step taken is undone and the tree is as it was.
    pub fn apply(&mut self, diff: &TreeDiff) -> Result<(), TreeError> {
        let mut undo: Vec<Undo> = Vec::new();
        match self.apply_steps(diff, &mut undo) {
            Ok(()) => Ok(()),
            Err(e) => {
                for step in undo.into_iter().rev() {
                    self.undo(step);
                }
                Err(e)
            }
        }
    }

    fn apply_steps(&mut self, diff: &TreeDiff, undo: &mut Vec<Undo>) -> Result<(), TreeError> {
        // Deepest first, so a child is given up before its parent.
        let mut removals = diff.remove.clone();
        removals.sort_by_key(|p| std::cmp::Reverse(p.depth()));
        for path in &removals {
            let Some(c) = self.by_path.get(path).cloned() else {
                continue;
            };
            let old = c.attrs();
            if matches!(old.share, Share::Fixed(_)) {
                let mut freed = old;
                freed.share = Share::Weight(Weight::new(1).expect("1 is a weight"));
                self.set(path, &c, freed)?;
            }
            self.by_path.remove(path);
            undo.push(Undo::Removed(path.clone(), c, old));
        }
        let fixed = |a: &Attributes| match a.share {
            Share::Fixed(f) => f.get(),
            Share::Weight(_) => 0.0,
        };
        let mut changes: Vec<&AttrChange> = diff.change.iter().collect();
        changes.sort_by(|a, b| {
            let da = fixed(&a.new) - fixed(&a.old);
            let db = fixed(&b.new) - fixed(&b.old);
            da.total_cmp(&db)
        });
        for ch in changes {
            let c = self.get(&ch.path).cloned().ok_or_else(|| TreeError {
                path: ch.path.clone(),
                source: rescon::Error::NotFound(self.root.id()),
            })?;
            let old = c.attrs();
            self.set(&ch.path, &c, ch.new)?;
            undo.push(Undo::Changed(c, old));
        }
        for node in &diff.add {
            let parent_path = node.path.parent().unwrap_or(ContainerPath::ROOT);
            let parent = self
                .get(&parent_path)
                .cloned()
                .expect("a diff adds parents before children");
            let child = parent
                .create_child(node.path.name(), node.attrs)
                .map_err(|source| TreeError {
                    path: node.path.clone(),
                    source,
                })?;
            self.by_path.insert(node.path.clone(), child);
            undo.push(Undo::Added(node.path.clone()));
        }
        Ok(())
    }

    fn set(&self, path: &ContainerPath, c: &Container, a: Attributes) -> Result<(), TreeError> {
        self.root.set_attrs(c, a).map_err(|source| TreeError {
            path: path.clone(),
            source,
        })
    }

    fn undo(&mut self, step: Undo) {
        // Undoing restores a state that held before, so the model accepts it; a failure here
        // would be a bug in the model, and there is nothing better to do than keep going.
        match step {
            Undo::Added(path) => {
                self.by_path.remove(&path);
            }
            Undo::Changed(c, old) => {
                let _ = self.root.set_attrs(&c, old);
            }
            Undo::Removed(path, c, old) => {
                let _ = self.root.set_attrs(&c, old);
                self.by_path.insert(path, c);
            }
        }
    }
}

enum Undo {
    Added(ContainerPath),
    Changed(Container, Attributes),
    Removed(ContainerPath, Container, Attributes),
}

/// One declared container whose attributes change.
#[derive(Clone, Debug, PartialEq)]
pub struct AttrChange {
    /// Which.
    pub path: ContainerPath,
    /// Its running attributes.
    pub old: Attributes,
    /// Its declared attributes.
    pub new: Attributes,
}

impl AttrChange {
    /// The `key=value` pairs that differ, with old and new values.
    pub fn changed_keys(&self) -> Vec<(&'static str, String, String)> {
        let old = self.old.to_pairs();
        self.new
            .to_pairs()
            .into_iter()
            .zip(old)
            .filter(|((_, n), (_, o))| n != o)
            .map(|((k, n), (_, o))| (k, o, n))
            .collect()
    }
}

/// What a reload changes in the declared tree.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TreeDiff {
    /// Declared containers to create, parents first.
    pub add: Vec<NodeSpec>,
    /// Declared containers to drop from the tree.
    pub remove: Vec<ContainerPath>,
    /// Attribute changes, applied live.
    pub change: Vec<AttrChange>,
}

impl TreeDiff {
    /// What turns the running tree `running` into the declared tree `new`.
    pub fn between(running: &TreeSpec, new: &TreeSpec) -> TreeDiff {
        let mut diff = TreeDiff::default();
        if running.root != new.root {
            diff.change.push(AttrChange {
                path: ContainerPath::ROOT,
                old: running.root,
                new: new.root,
            });
        }
        for n in &new.nodes {
            match running.attrs(&n.path) {
                None => diff.add.push(n.clone()),
                Some(old) if *old != n.attrs => diff.change.push(AttrChange {
                    path: n.path.clone(),
                    old: *old,
                    new: n.attrs,
                }),
                Some(_) => {}
            }
        }
        for n in &running.nodes {
            if !new.contains(&n.path) {
                diff.remove.push(n.path.clone());
            }
        }
        diff
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty() && self.change.is_empty()
    }
}

impl fmt::Display for TreeDiff {
    /// One line per step, as a reload logs it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("container tree unchanged");
        }
        for p in &self.remove {
            writeln!(f, "- {p}")?;
        }
        for c in &self.change {
            let pairs: Vec<String> = c
                .changed_keys()
                .into_iter()
                .map(|(k, o, n)| format!("{k}: {o} -> {n}"))
                .collect();
            writeln!(f, "~ {}: {}", c.path, pairs.join(", "))?;
        }
        for n in &self.add {
            writeln!(f, "+ {}", n.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        let mut a = Attributes::default();
        for (k, v) in pairs {
            a.set(k, v).unwrap();
        }
        a
    }

    fn spec(nodes: &[(&str, &[(&str, &str)])]) -> TreeSpec {
        TreeSpec {
            root: Attributes::default(),
            nodes: nodes
                .iter()
                .map(|(p, a)| NodeSpec {
                    path: ContainerPath::parse(p).unwrap(),
                    attrs: attrs(a),
                })
                .collect(),
        }
    }

    fn p(s: &str) -> ContainerPath {
        ContainerPath::parse(s).unwrap()
    }

    #[test]
    fn paths() {
        assert_eq!(p("a/b").parent(), Some(p("a")));
        assert_eq!(p("a").parent(), Some(ContainerPath::ROOT));
        assert_eq!(ContainerPath::ROOT.parent(), None);
        assert_eq!(p("a/b").name(), "b");
        assert_eq!(p("a/b").depth(), 2);
        assert_eq!(ContainerPath::ROOT.child("x"), p("x"));
        for bad in ["a//b", "/a", "a/", ".hidden", "a b", "ä"] {
            assert!(ContainerPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn diff_finds_adds_removes_and_changes() {
        let old = spec(&[("a", &[("share", "50%")]), ("b", &[]), ("b/x", &[])]);
        let new = spec(&[
            ("a", &[("share", "40%")]),
            ("c", &[("priority", "7")]),
            ("b", &[]),
        ]);
        let d = TreeDiff::between(&old, &new);
        assert_eq!(d.remove, vec![p("b/x")]);
        assert_eq!(d.add.len(), 1);
        assert_eq!(d.add[0].path, p("c"));
        assert_eq!(d.change.len(), 1);
        assert_eq!(
            d.change[0].changed_keys(),
            vec![("share", "fixed:0.5".to_string(), "fixed:0.4".to_string())]
        );
        assert!(TreeDiff::between(&new, &new).is_empty());
        let text = d.to_string();
        assert!(text.contains("- b/x") && text.contains("+ c") && text.contains("~ a: share"));
    }

    #[test]
    fn apply_moves_fixed_shares_between_siblings() {
        // 50/30/20 becomes 20/30/50: applied naively in file order, raising c first would
        // over-commit the parent; the order of steps avoids that.
        let registry = Registry::new();
        let old = spec(&[
            ("a", &[("share", "50%")]),
            ("b", &[("share", "30%")]),
            ("c", &[("share", "20%")]),
        ]);
        let mut live = LiveTree::build(&registry, &old).unwrap();
        let new = spec(&[
            ("c", &[("share", "50%")]),
            ("b", &[("share", "30%")]),
            ("a", &[("share", "20%")]),
        ]);
        let diff = TreeDiff::between(&live.current(), &new);
        live.apply(&diff).unwrap();
        assert_eq!(
            live.get(&p("c")).unwrap().attrs().share,
            Share::parse("50%").unwrap()
        );
        assert_eq!(
            live.get(&p("a")).unwrap().attrs().share,
            Share::parse("20%").unwrap()
        );
    }

    #[test]
    fn removing_a_fixed_container_frees_its_share_at_once() {
        let registry = Registry::new();
        let mut live = LiveTree::build(&registry, &spec(&[("a", &[("share", "60%")])])).unwrap();
        // A connection keeps `a` alive after the reload.
        let a = live.get(&p("a")).unwrap().clone();
        let conn = a.create_child("conn-1", Attributes::default()).unwrap();
        let diff = TreeDiff::between(&live.current(), &spec(&[("d", &[("share", "60%")])]));
        live.apply(&diff).unwrap();
        assert!(live.get(&p("a")).is_none());
        assert_eq!(a.attrs().share, Share::parse("weight:1").unwrap());
        assert_eq!(conn.parent_id(), Some(a.id()), "the connection lives on");
        assert!(live.get(&p("d")).is_some());
    }

    #[test]
    fn a_refused_step_undoes_everything() {
        let registry = Registry::new();
        let old = spec(&[("a", &[("share", "50%")]), ("b", &[("priority", "5")])]);
        let mut live = LiveTree::build(&registry, &old).unwrap();
        let before = live.current();
        // Live state the diff was not computed against: someone holds 50% elsewhere, so adding
        // a 60% container under the root fails after the other steps ran.
        let other = registry
            .root()
            .create_child("runtime-made", attrs(&[("share", "45%")]))
            .unwrap();
        let new = spec(&[
            ("a", &[("share", "40%")]),
            ("b", &[("priority", "9")]),
            ("n", &[("share", "60%")]),
        ]);
        let diff = TreeDiff::between(&live.current(), &new);
        let err = live.apply(&diff).unwrap_err();
        assert_eq!(err.path, p("n"));
        assert!(matches!(
            err.source,
            rescon::Error::FixedSharesExceed { .. }
        ));
        assert_eq!(live.current(), before, "nothing changed");
        assert_eq!(
            registry.root().children().len(),
            3,
            "a, b and runtime-made only"
        );
        drop(other);
    }
}
