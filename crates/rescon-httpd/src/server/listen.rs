//! The listeners and their client classes: one source of truth per listener.
//!
//! A listener with classes is a [`ListenerGroup`]: a socket per member on one address, the
//! kernel steering each SYN to its member by source address (longest prefix first), so each
//! class's connections wait in a queue of their own and are accepted by a task in the class's
//! container, and a black-holed range has its SYNs dropped before they cost a SYN-ACK. The
//! class of a connection is a property of the member that accepted it: nothing classifies it
//! again. The admin API's moves ([`Listeners`], which implements [`Filters`]) and the flood
//! defense change the group's steering table directly, and `GET /filters` reads it back.
//!
//! The members of a group, in order ([`Role`]): each class (its `prefixes`, or its `except`
//! complement); then, for a class with `except`, a companion member that takes the prefixes
//! moved to that class (a complement cannot list prefixes, and a moved prefix must beat a
//! shorter one listed elsewhere); then the black hole with its prefixes; and, unless a class
//! takes every source with `except = []`, a second black-hole member that takes the sources
//! no class takes, as the configuration's rules say. (A prefix of a family the listener cannot
//! receive never gets here: the configuration refuses it at load.)
//!
//! Where the kernel refuses the group (no `SO_REUSEPORT` steering), the listener is one
//! socket and each accepted connection is classified with a [`FilterTable`] holding the same
//! rules, which the admin API's moves then act on instead.

use crate::admin::ActionLog;
use crate::admin::api::{FilterAction, ListenerView, MemberView, MoveResult};
use crate::admin::{BLACK_HOLE, FilterError, FilterTable, Filters};
use crate::config::{ClassFilter, FloodAction, FloodDefense, ListenerConfig};
use anyhow::{Context as _, Result};
use ipnet::IpNet;
use rescon::{Attributes, Container};
use rescon_linux::listen::driver::{Defender, Record, Running};
use rescon_linux::listen::{Filter, ListenerGroup, MemberId};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// What a member of a group is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Role {
    /// The class's name, or [`BLACK_HOLE`].
    pub(crate) name: Arc<str>,
    /// Whether its filter is a complement (it cannot take prefixes).
    pub(crate) complement: bool,
    /// Whether it is the companion of an `except` class.
    pub(crate) companion: bool,
}

impl Role {
    pub(crate) fn is_black_hole(&self) -> bool {
        &*self.name == BLACK_HOLE
    }
}

/// The members of a group for listener `l`, in member order, each with its filter.
pub(crate) fn members(l: &ListenerConfig) -> Vec<(Role, Filter)> {
    let role = |name: &str, complement, companion| Role {
        name: name.into(),
        complement,
        companion,
    };
    let mut out = Vec::new();
    for c in &l.classes {
        let filter = match &c.filter {
            ClassFilter::Prefixes(p) => (
                role(&c.name, false, false),
                Filter::Prefixes(p.iter().copied().collect()),
            ),
            ClassFilter::Except(e) => (
                role(&c.name, true, false),
                Filter::Except(e.iter().copied().collect()),
            ),
        };
        out.push(filter);
    }
    for c in &l.classes {
        if matches!(c.filter, ClassFilter::Except(_)) {
            out.push((role(&c.name, false, true), Filter::nothing()));
        }
    }
    out.push((
        role(BLACK_HOLE, false, false),
        Filter::Prefixes(l.black_hole.iter().copied().collect()),
    ));
    // What no class takes (no class has `except`, or its exceptions): the black hole, after
    // the `except` class in member order, so it gets only what that class leaves.
    if !l
        .classes
        .iter()
        .any(|c| matches!(&c.filter, ClassFilter::Except(e) if e.is_empty()))
    {
        out.push((role(BLACK_HOLE, true, false), Filter::any()));
    }
    out
}

/// A listener's group with the role of each member.
pub(crate) struct Group {
    pub(crate) group: Arc<ListenerGroup>,
    pub(crate) roles: Vec<Role>,
}

impl Group {
    /// Opens the group of listener `l`: the members' sockets, their containers (the class
    /// containers; a black-hole container with priority 0 under `listener_c`).
    pub(crate) fn open(
        l: &ListenerConfig,
        class_container: impl Fn(&str) -> Option<Container>,
        listener_c: &Container,
        passed: &mut Option<std::net::TcpListener>,
    ) -> Result<Group> {
        let members = members(l);
        let mut attrs = Attributes::default();
        attrs
            .set("priority", "0")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let hole = listener_c
            .create_child("black-hole", attrs)
            .context("creating the black-hole container")?;
        // A passed socket named for this listener sets the address (its port may differ).
        let addr = passed
            .as_ref()
            .and_then(|p| p.local_addr().ok())
            .unwrap_or(l.addr);
        let mut b = ListenerGroup::builder(addr);
        let mut roles = Vec::new();
        for (role, filter) in members {
            let c = if role.is_black_hole() {
                hole.clone()
            } else {
                class_container(&role.name)
                    .with_context(|| format!("class {}: no container", role.name))?
            };
            b = b.member(&c, filter);
            roles.push(role);
        }
        // A socket the service manager passed is the first member's; a copy of it is given,
        // so that it stays for the one-socket fallback if the group cannot be built.
        if let Some(p) = passed.as_ref() {
            b = b.adopt(p.try_clone().context("duplicating the passed socket")?);
        }
        let group = b.build().context("building the listener group")?;
        passed.take();
        Ok(Group {
            group: Arc::new(group),
            roles,
        })
    }

    /// The member that takes prefixes moved to `name`.
    fn target(&self, name: &str) -> Option<MemberId> {
        self.roles
            .iter()
            .position(|r| &*r.name == name && !r.complement)
            .map(MemberId::from_index)
    }

    fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = Vec::new();
        for r in &self.roles {
            if !n.iter().any(|x| **x == *r.name) {
                n.push(r.name.to_string());
            }
        }
        n
    }

    /// The members as the admin API shows them: the black hole first, then each class with
    /// its prefixes (and, for `except`, its exceptions).
    fn view(&self, l: &ListenerConfig, class_id: impl Fn(&str) -> Option<u64>) -> Vec<MemberView> {
        let filters = self.group.filters();
        let set = |f: &Filter| {
            f.prefix_set()
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
        };
        let mut names = vec![BLACK_HOLE.to_string()];
        names.extend(l.classes.iter().map(|c| c.name.clone()));
        names
            .into_iter()
            .map(|name| {
                let mut prefixes = Vec::new();
                let mut except = None;
                for ((_, f), r) in filters.iter().zip(&self.roles) {
                    if *r.name != *name {
                        continue;
                    }
                    if r.complement {
                        if !r.is_black_hole() {
                            except = Some(set(f));
                        }
                    } else {
                        prefixes.extend(set(f));
                    }
                }
                MemberView {
                    container: (name != BLACK_HOLE).then(|| class_id(&name)).flatten(),
                    name,
                    prefixes,
                    except,
                }
            })
            .collect()
    }
}

/// How a listener's connections are classified.
pub(crate) enum Source {
    /// By the kernel: the member that accepted a connection is its class.
    Kernel(Group),
    /// After accept, by a table of the same rules (the kernel refused the group).
    Table(FilterTable),
}

/// One listener: its configuration, bound address and source of classification.
pub(crate) struct Listener {
    pub(crate) config: ListenerConfig,
    pub(crate) addr: SocketAddr,
    pub(crate) source: Source,
}

/// Every listener, as the admin API's [`Filters`]: moves act on each listener's one source.
#[derive(Default)]
pub(crate) struct Listeners {
    list: Mutex<Vec<Arc<Listener>>>,
    /// Class container ids by listener and class, for the views.
    ids: Mutex<Vec<(String, String, u64)>>,
    actions: ActionLog,
}

impl Listeners {
    pub(crate) fn add(&self, l: Arc<Listener>, ids: Vec<(String, u64)>) {
        let mut all = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        all.extend(
            ids.into_iter()
                .map(|(c, id)| (l.config.name.clone(), c, id)),
        );
        self.list.lock().unwrap_or_else(|e| e.into_inner()).push(l);
    }

    /// Lets the groups go (at a graceful stop: their sockets close with the last handle).
    pub(crate) fn clear(&self) {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn all(&self) -> Vec<Arc<Listener>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds a move, stamped now, to the bounded history.
    pub(crate) fn record(&self, listener: &str, prefix: &str, to: &str, reason: &str) {
        self.actions.record(listener, prefix, to, reason);
    }
}

impl Filters for Listeners {
    fn listeners(&self) -> Vec<ListenerView> {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.all()
            .iter()
            .map(|l| match &l.source {
                Source::Kernel(g) => {
                    let class_id = |c: &str| {
                        ids.iter()
                            .find(|(ln, cn, _)| *ln == l.config.name && cn == c)
                            .map(|x| x.2)
                    };
                    ListenerView {
                        name: l.config.name.clone(),
                        address: l.addr.to_string(),
                        members: g.view(&l.config, class_id),
                        edges: g
                            .group
                            .edges()
                            .into_iter()
                            .map(|(iface, prefixes, drops)| crate::admin::api::EdgeView {
                                iface,
                                prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
                                drops,
                            })
                            .collect(),
                    }
                }
                Source::Table(t) => {
                    let mut v = t.listeners().remove(0);
                    v.address = l.addr.to_string();
                    v
                }
            })
            .collect()
    }

    fn move_prefix(
        &self,
        listener: Option<&str>,
        prefix: IpNet,
        to: &str,
        reason: &str,
    ) -> Result<MoveResult, FilterError> {
        let all = self.all();
        let known = || {
            all.iter()
                .map(|l| l.config.name.clone())
                .collect::<Vec<_>>()
        };
        let l = match listener {
            Some(n) => all
                .iter()
                .find(|l| l.config.name == n)
                .ok_or(FilterError::NoListener {
                    asked: Some(n.to_string()),
                    known: known(),
                })?,
            None if all.len() == 1 => &all[0],
            None => {
                return Err(FilterError::NoListener {
                    asked: None,
                    known: known(),
                });
            }
        };
        let prefix = prefix.trunc();
        let result = match &l.source {
            Source::Table(t) => t.move_prefix(Some(&l.config.name), prefix, to, reason)?,
            Source::Kernel(g) => {
                let Some(target) = g.target(to) else {
                    return Err(FilterError::NoMember {
                        asked: to.to_string(),
                        known: g.names(),
                    });
                };
                let previous =
                    g.group
                        .move_prefixes(&[prefix], target)
                        .map_err(|e| FilterError::Refused {
                            reason: e.to_string(),
                        })?;
                let from = previous
                    .iter()
                    .filter_map(|(_, owner)| *owner)
                    .map(|m| g.roles[m.get()].name.to_string())
                    .collect();
                MoveResult {
                    listener: l.config.name.clone(),
                    prefix: prefix.to_string(),
                    from,
                    to: to.to_string(),
                }
            }
        };
        self.record(&result.listener, &result.prefix, &result.to, reason);
        Ok(result)
    }

    fn unblock(
        &self,
        listener: Option<&str>,
        prefix: IpNet,
        reason: &str,
    ) -> Result<MoveResult, FilterError> {
        let all = self.all();
        let l = pick_listener(&all, listener)?;
        let prefix = prefix.trunc();
        // Listed in a class by the configuration: back there.
        let listed = l
            .config
            .classes
            .iter()
            .find(|c| matches!(&c.filter, ClassFilter::Prefixes(p) if p.contains(&prefix)));
        if let Some(c) = listed {
            return self.move_prefix(Some(&l.config.name), prefix, &c.name.clone(), reason);
        }
        let result = match &l.source {
            Source::Table(t) => t.unblock(Some(&l.config.name), prefix, reason)?,
            Source::Kernel(g) => {
                let mut from = Vec::new();
                for (id, f) in g.group.filters() {
                    let r = &g.roles[id.get()];
                    if r.is_black_hole() && !r.complement && f.prefix_set().contains(&prefix) {
                        g.group
                            .remove_prefix(id, prefix)
                            .map_err(|e| FilterError::Refused {
                                reason: e.to_string(),
                            })?;
                        from.push(r.name.to_string());
                    }
                }
                MoveResult {
                    listener: l.config.name.clone(),
                    prefix: prefix.to_string(),
                    from,
                    to: crate::admin::UNLISTED.to_string(),
                }
            }
        };
        self.record(&result.listener, &result.prefix, &result.to, reason);
        Ok(result)
    }

    fn actions(&self) -> Vec<FilterAction> {
        self.actions.all()
    }

    fn drop_counts(&self) -> Vec<crate::admin::DropCount> {
        let mut out = Vec::new();
        for l in self.all() {
            let Source::Kernel(g) = &l.source else {
                continue;
            };
            for m in g.group.members() {
                let Some(role) = g.roles.get(m.id().get()) else {
                    continue;
                };
                out.push(crate::admin::DropCount {
                    listener: l.config.name.clone(),
                    group: role.name.to_string(),
                    stage: "socket".into(),
                    dropped: m.drops().unwrap_or(0),
                });
            }
            for (iface, _, drops) in g.group.edges() {
                let _ = iface;
                out.push(crate::admin::DropCount {
                    listener: l.config.name.clone(),
                    group: BLACK_HOLE.into(),
                    stage: "edge".into(),
                    dropped: drops,
                });
            }
        }
        out
    }
}

/// The listener a request names (`None`: the only one).
fn pick_listener<'a>(
    all: &'a [Arc<Listener>],
    name: Option<&str>,
) -> Result<&'a Arc<Listener>, FilterError> {
    let known = || {
        all.iter()
            .map(|l| l.config.name.clone())
            .collect::<Vec<_>>()
    };
    match name {
        Some(n) => all
            .iter()
            .find(|l| l.config.name == n)
            .ok_or(FilterError::NoListener {
                asked: Some(n.to_string()),
                known: known(),
            }),
        None if all.len() == 1 => Ok(&all[0]),
        None => Err(FilterError::NoListener {
            asked: None,
            known: known(),
        }),
    }
}

/// Starts the automatic SYN-flood defense of a group (rescon-linux's `Defender`, sampling
/// every 100 ms): sources of half-open connections during an attack are moved, in the
/// group's steering, to the black hole or to the class `demote_to` names, for at least
/// `hold`. `syn_rate` is the growth of the listen queue's pressure per second (SYN drops and
/// overflows, from /proc/net) that signals an attack. Each move is recorded with the
/// defense's reason, so `GET /filters` lists it.
pub(crate) fn flood_defense(
    g: &Group,
    fd: &FloodDefense,
    listeners: &Arc<Listeners>,
    listener: &str,
) -> Result<Running> {
    let to = match &fd.action {
        FloodAction::BlackHole => BLACK_HOLE,
        FloodAction::Demote(class) => class.as_str(),
    };
    let target = g
        .target(to)
        .with_context(|| format!("no member {to} to move offenders to"))?;
    let mut cfg = rescon_linux::listen::defense::DefenseConfig::new(target);
    cfg.trigger_pressure_per_s = fd.syn_rate as f64;
    cfg.min_hold = fd.hold;
    let defender =
        Defender::new(g.group.clone(), cfg).with_context(|| format!("moving offenders to {to}"))?;
    let (log, listener, roles) = (listeners.clone(), listener.to_string(), g.roles.clone());
    defender.on_action(move |r| record_defense(&log, &listener, &roles, r));
    tracing::info!(address = %g.group.local_addr(), to, "flood defense on");
    Ok(Arc::new(defender).spawn(std::time::Duration::from_millis(100)))
}

/// Records a flood-defense action (done in the kernel's steering already).
fn record_defense(log: &Listeners, listener: &str, roles: &[Role], r: &Record) {
    use rescon_linux::listen::defense::Action;
    if r.outcome.is_err() {
        return;
    }
    let prefix = match &r.action {
        Action::Quarantine { prefix, .. } | Action::Release { prefix, .. } => *prefix,
    };
    let to =
        r.to.and_then(|m| roles.get(m.get()))
            .map_or("(unlisted)", |role| &*role.name);
    log.record(
        listener,
        &prefix.to_string(),
        to,
        &format!("flood defense: {}", r.action),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use rescon_linux::listen::{Stack, Steering};

    fn listener(classes: &str) -> ListenerConfig {
        let text = format!(
            r#"
[containers.premium]
[containers.bulk]
[containers.site]
[[listener]]
name = "web"
address = "127.0.0.1"
port = 8080
black_hole = ["10.66.0.0/16"]
{classes}
[[vhost]]
name = "v"
root = "/srv"
container = "site"
"#
        );
        Config::parse("t.toml", &text).unwrap().listeners.remove(0)
    }

    fn steering(l: &ListenerConfig) -> (Vec<Role>, Steering) {
        let m = members(l);
        let (roles, filters): (Vec<Role>, Vec<Filter>) = m.into_iter().unzip();
        (
            roles,
            Steering::new(Stack::V4, filters).expect("the members cover every source"),
        )
    }

    fn class_of(l: &ListenerConfig, a: &str) -> String {
        let (roles, s) = steering(l);
        roles[s.classify(a.parse().unwrap()).unwrap()]
            .name
            .to_string()
    }

    #[test]
    fn members_classify_as_the_configuration_says() {
        let l = listener(
            r#"
[[listener.class]]
name = "premium"
container = "premium"
prefixes = ["10.0.0.0/8"]
[[listener.class]]
name = "bulk"
container = "bulk"
except = ["192.168.0.0/16"]
"#,
        );
        let m = members(&l);
        let names: Vec<&str> = m.iter().map(|(r, _)| &*r.name).collect();
        assert_eq!(
            names,
            ["premium", "bulk", "bulk", "black-hole", "black-hole"],
            "class, class, companion, hole, what the exceptions leave"
        );
        assert_eq!(class_of(&l, "10.1.2.3"), "premium");
        assert_eq!(class_of(&l, "10.66.1.1"), "black-hole", "a /16 inside a /8");
        assert_eq!(class_of(&l, "8.8.8.8"), "bulk");
        assert_eq!(
            class_of(&l, "192.168.1.1"),
            "black-hole",
            "excepted and unlisted"
        );
    }

    #[test]
    fn without_except_what_no_class_lists_is_black_holed() {
        let l = listener(
            r#"
[[listener.class]]
name = "premium"
container = "premium"
prefixes = ["10.0.0.0/8"]
"#,
        );
        assert_eq!(class_of(&l, "10.1.2.3"), "premium");
        assert_eq!(class_of(&l, "8.8.8.8"), "black-hole");
    }

    #[test]
    fn a_prefix_moved_to_an_except_class_goes_to_its_companion() {
        let l = listener(
            r#"
[[listener.class]]
name = "premium"
container = "premium"
prefixes = ["10.0.0.0/8"]
[[listener.class]]
name = "bulk"
container = "bulk"
except = []
"#,
        );
        let m = members(&l);
        let roles: Vec<Role> = m.iter().map(|(r, _)| r.clone()).collect();
        let target = roles
            .iter()
            .position(|r| &*r.name == "bulk" && !r.complement)
            .unwrap();
        assert!(roles[target].companion);
        // Moving 10.1/16 to bulk: listed by the companion, it beats premium's /8.
        let mut filters: Vec<Filter> = m.into_iter().map(|(_, f)| f).collect();
        if let Filter::Prefixes(set) = &mut filters[target] {
            set.insert("10.1.0.0/16".parse().unwrap());
        }
        let s = Steering::new(Stack::V4, filters).unwrap();
        let who = |a: &str| &*roles[s.classify(a.parse().unwrap()).unwrap()].name;
        assert_eq!(who("10.1.2.3"), "bulk");
        assert_eq!(who("10.2.0.1"), "premium");
    }
}
