//! The filters seen by the admin API: which client class each source address goes to, and how an
//! operator (or the flood defense) moves a prefix from one class to another.
//!
//! [`Filters`] is the seam: the kernel listener group (`rescon_linux::listen`) implements it on
//! its SO_REUSEPORT members; [`FilterTable`] is the model of the same rules in memory, which the
//! server uses as its source of truth and for user-level classification, and tests use as a
//! double.
//!
//! # Resolution
//!
//! Each member of a listener (a client class, or the black hole) holds prefixes. A source goes
//! to the member holding the *longest* prefix that contains it. A source no prefix contains goes
//! to the class with `except` unless it is in one of its exceptions; a source nothing takes is
//! black-holed. Moving a prefix takes it from every member that holds exactly that prefix and
//! gives it to the target; a longer prefix held elsewhere still wins inside it.

use super::api::{FilterAction, ListenerView, MemberView, MoveResult};
use crate::config::{ClassFilter, ContainerPath, ListenerConfig};
use ipnet::IpNet;
use rescon::ContainerId;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rescon_admin::BLACK_HOLE;

/// What the admin API needs from the filters.
pub trait Filters: Send + Sync {
    /// Every listener with its members.
    fn listeners(&self) -> Vec<ListenerView>;

    /// Moves `prefix` to member `to` of `listener` (`None`: the only listener).
    fn move_prefix(
        &self,
        listener: Option<&str>,
        prefix: IpNet,
        to: &str,
        reason: &str,
    ) -> Result<MoveResult, FilterError>;

    /// Takes `prefix` off the black hole of `listener` (`None`: the only listener): back to
    /// the class the configuration lists it in, if one does, else to wherever the other
    /// prefixes (or the `except` class) take its sources.
    fn unblock(
        &self,
        listener: Option<&str>,
        prefix: IpNet,
        reason: &str,
    ) -> Result<MoveResult, FilterError>;

    /// Recent moves, oldest first.
    fn actions(&self) -> Vec<FilterAction> {
        Vec::new()
    }

    /// SYNs the kernel dropped, per listener, prefix group and stage (`/metrics`).
    fn drop_counts(&self) -> Vec<super::DropCount> {
        Vec::new()
    }
}

/// What an unblock that finds nothing to take off says it moved the prefix to.
pub const UNLISTED: &str = "(unlisted)";

/// Why a move was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterError {
    /// No listener of that name, or none given when there are several.
    NoListener {
        /// The name asked for, if any.
        asked: Option<String>,
        /// The listeners there are.
        known: Vec<String>,
    },
    /// No member of that name.
    NoMember {
        /// The name asked for.
        asked: String,
        /// The members there are.
        known: Vec<String>,
    },
    /// The kernel refused the new steering (nothing changed).
    Refused {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterError::NoListener {
                asked: Some(a),
                known,
            } => {
                write!(f, "no listener {a:?}; listeners: {}", known.join(", "))
            }
            FilterError::NoListener { asked: None, known } => write!(
                f,
                "there are several listeners: name one of {}",
                known.join(", ")
            ),
            FilterError::NoMember { asked, known } => {
                write!(f, "no class {asked:?}; members: {}", known.join(", "))
            }
            FilterError::Refused { reason } => {
                write!(f, "the listener's steering was not changed: {reason}")
            }
        }
    }
}

impl std::error::Error for FilterError {}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    name: String,
    container: Option<ContainerId>,
    prefixes: Vec<IpNet>,
    except: Option<Vec<IpNet>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Listener {
    name: String,
    addr: SocketAddr,
    members: Vec<Member>,
}

impl Listener {
    fn classify(&self, src: IpAddr) -> usize {
        // A dual-stack socket reports an IPv4 client as `::ffff:a.b.c.d`; the kernel's
        // steering matches it against the IPv4 prefixes, and so must this.
        let src = src.to_canonical();
        let mut best: Option<(u8, usize)> = None;
        for (i, m) in self.members.iter().enumerate() {
            for p in &m.prefixes {
                if p.contains(&src) && best.is_none_or(|(l, _)| p.prefix_len() > l) {
                    best = Some((p.prefix_len(), i));
                }
            }
        }
        if let Some((_, i)) = best {
            return i;
        }
        for (i, m) in self.members.iter().enumerate() {
            if let Some(ex) = &m.except {
                if !ex.iter().any(|p| p.contains(&src)) {
                    return i;
                }
            }
        }
        0
    }
}

/// The filters of every listener, in memory. See the module docs above.
///
/// ```
/// use rescon_httpd::admin::{FilterTable, Filters};
/// use rescon_httpd::config::Config;
/// let config = Config::default_config();
/// let table = FilterTable::from_config(&config.listeners, |_| None);
/// assert_eq!(table.classify("web", "127.0.0.2".parse().unwrap()).unwrap(), "premium");
/// assert_eq!(table.classify("web", "127.0.0.9".parse().unwrap()).unwrap(), "local");
/// table.move_prefix(Some("web"), "127.0.0.9/32".parse().unwrap(), "black-hole", "operator").unwrap();
/// assert_eq!(table.classify("web", "127.0.0.9".parse().unwrap()).unwrap(), "black-hole");
/// ```
#[derive(Debug)]
pub struct FilterTable {
    listeners: Mutex<Vec<Listener>>,
    actions: ActionLog,
}

/// How many moves [`FilterTable`] remembers.
pub const ACTION_HISTORY: usize = 256;

/// The bounded history of filter moves, stamped when recorded: the last [`ACTION_HISTORY`].
/// Shared by every [`Filters`] implementation.
#[derive(Debug, Default)]
pub(crate) struct ActionLog(Mutex<std::collections::VecDeque<FilterAction>>);

impl ActionLog {
    /// Adds a move, stamped now, forgetting the oldest past [`ACTION_HISTORY`].
    pub(crate) fn record(&self, listener: &str, prefix: &str, to: &str, reason: &str) {
        let a = FilterAction {
            at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            listener: listener.to_string(),
            prefix: prefix.to_string(),
            to: to.to_string(),
            reason: reason.to_string(),
        };
        let mut actions = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if actions.len() == ACTION_HISTORY {
            actions.pop_front();
        }
        actions.push_back(a);
    }

    /// The moves remembered, oldest first.
    pub(crate) fn all(&self) -> Vec<FilterAction> {
        let actions = self.0.lock().unwrap_or_else(|e| e.into_inner());
        actions.iter().cloned().collect()
    }
}

impl FilterTable {
    /// The filters of the configured listeners; `container` gives the id of a class container.
    /// Each listener's member 0 is its black hole.
    pub fn from_config(
        listeners: &[ListenerConfig],
        container: impl Fn(&ContainerPath) -> Option<ContainerId>,
    ) -> FilterTable {
        let ls = listeners
            .iter()
            .map(|l| {
                let mut members = vec![Member {
                    name: BLACK_HOLE.into(),
                    container: None,
                    prefixes: l.black_hole.clone(),
                    except: None,
                }];
                for c in &l.classes {
                    let (prefixes, except) = match &c.filter {
                        ClassFilter::Prefixes(p) => (p.clone(), None),
                        ClassFilter::Except(e) => (Vec::new(), Some(e.clone())),
                    };
                    members.push(Member {
                        name: c.name.clone(),
                        container: container(&c.container),
                        prefixes,
                        except,
                    });
                }
                Listener {
                    name: l.name.clone(),
                    addr: l.addr,
                    members,
                }
            })
            .collect();
        FilterTable {
            listeners: Mutex::new(ls),
            actions: ActionLog::default(),
        }
    }

    /// Takes `prefix` off every member of `listener` that lists it, so its sources go where
    /// the other prefixes (or the `except` class) take them; recorded like a move, with
    /// `to` = "(unlisted)". Unknown listeners and prefixes change nothing.
    pub fn unlist(&self, listener: &str, prefix: IpNet, reason: &str) {
        let prefix = prefix.trunc();
        let mut ls = self.lock();
        let Some(l) = ls.iter_mut().find(|l| l.name == listener) else {
            return;
        };
        for m in l.members.iter_mut() {
            m.prefixes.retain(|p| *p != prefix);
        }
        drop(ls);
        self.record(listener, &prefix.to_string(), "(unlisted)", reason);
    }

    /// Adds an action, stamped now, to the bounded history.
    fn record(&self, listener: &str, prefix: &str, to: &str, reason: &str) {
        self.actions.record(listener, prefix, to, reason);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Listener>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The member a source address of `listener` goes to.
    pub fn classify(&self, listener: &str, src: IpAddr) -> Option<String> {
        let ls = self.lock();
        let l = ls.iter().find(|l| l.name == listener)?;
        Some(l.members[l.classify(src)].name.clone())
    }

    /// The class container a source of `listener` goes to, `None` for the black hole (refuse
    /// the connection).
    pub fn container_for(&self, listener: &str, src: IpAddr) -> Option<ContainerId> {
        let ls = self.lock();
        let l = ls.iter().find(|l| l.name == listener)?;
        l.members[l.classify(src)].container
    }
}

fn pick<'a>(ls: &'a mut [Listener], name: Option<&str>) -> Result<&'a mut Listener, FilterError> {
    let known = || ls.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
    match name {
        Some(n) => {
            let k = known();
            ls.iter_mut()
                .find(|l| l.name == n)
                .ok_or(FilterError::NoListener {
                    asked: Some(n.to_string()),
                    known: k,
                })
        }
        None if ls.len() == 1 => Ok(&mut ls[0]),
        None => Err(FilterError::NoListener {
            asked: None,
            known: known(),
        }),
    }
}

impl Filters for FilterTable {
    fn listeners(&self) -> Vec<ListenerView> {
        self.lock()
            .iter()
            .map(|l| ListenerView {
                edges: Vec::new(),
                name: l.name.clone(),
                address: l.addr.to_string(),
                members: l
                    .members
                    .iter()
                    .map(|m| MemberView {
                        name: m.name.clone(),
                        container: m.container.map(|c| c.get()),
                        prefixes: m.prefixes.iter().map(|p| p.to_string()).collect(),
                        except: m
                            .except
                            .as_ref()
                            .map(|e| e.iter().map(|p| p.to_string()).collect()),
                    })
                    .collect(),
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
        let prefix = prefix.trunc();
        let mut ls = self.lock();
        let l = pick(&mut ls, listener)?;
        let Some(target) = l.members.iter().position(|m| m.name == to) else {
            return Err(FilterError::NoMember {
                asked: to.to_string(),
                known: l.members.iter().map(|m| m.name.clone()).collect(),
            });
        };
        let mut from = Vec::new();
        for m in l.members.iter_mut() {
            let before = m.prefixes.len();
            m.prefixes.retain(|p| *p != prefix);
            if m.prefixes.len() != before {
                from.push(m.name.clone());
            }
        }
        l.members[target].prefixes.push(prefix);
        let result = MoveResult {
            listener: l.name.clone(),
            prefix: prefix.to_string(),
            from,
            to: to.to_string(),
        };
        drop(ls);
        self.record(&result.listener, &result.prefix, &result.to, reason);
        Ok(result)
    }

    fn unblock(
        &self,
        listener: Option<&str>,
        prefix: IpNet,
        reason: &str,
    ) -> Result<MoveResult, FilterError> {
        let prefix = prefix.trunc();
        let mut ls = self.lock();
        let l = pick(&mut ls, listener)?;
        let mut from = Vec::new();
        for m in l.members.iter_mut().filter(|m| m.name == BLACK_HOLE) {
            let before = m.prefixes.len();
            m.prefixes.retain(|p| *p != prefix);
            if m.prefixes.len() != before {
                from.push(m.name.clone());
            }
        }
        let result = MoveResult {
            listener: l.name.clone(),
            prefix: prefix.to_string(),
            from,
            to: UNLISTED.to_string(),
        };
        drop(ls);
        self.record(&result.listener, &result.prefix, &result.to, reason);
        Ok(result)
    }

    fn actions(&self) -> Vec<FilterAction> {
        self.actions.all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table() -> FilterTable {
        let c = Config::parse(
            "t.toml",
            r#"
[containers.premium]
[containers.rest]
[containers.site]
[[listener]]
name = "web"
address = "::"
port = 8080
black_hole = ["10.66.0.0/16"]
[[listener.class]]
name = "premium"
container = "premium"
prefixes = ["10.0.0.0/8", "2001:db8::/32"]
[[listener.class]]
name = "rest"
container = "rest"
except = ["192.168.0.0/16"]
[[vhost]]
name = "v"
root = "/srv"
container = "site"
"#,
        )
        .unwrap();
        FilterTable::from_config(&c.listeners, |p| {
            rescon::ContainerId::from_raw(p.as_str().len() as u64)
        })
    }

    fn class(t: &FilterTable, a: &str) -> String {
        t.classify("web", a.parse().unwrap()).unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table();
        assert_eq!(class(&t, "10.1.2.3"), "premium");
        assert_eq!(class(&t, "10.66.1.1"), "black-hole", "a /16 inside a /8");
        assert_eq!(class(&t, "2001:db8::1"), "premium");
        assert_eq!(class(&t, "8.8.8.8"), "rest");
        assert_eq!(class(&t, "::2"), "rest");
        assert_eq!(
            class(&t, "192.168.1.1"),
            "black-hole",
            "excepted and unmatched"
        );
        assert_eq!(t.container_for("web", "192.168.1.1".parse().unwrap()), None);
        assert_eq!(
            t.container_for("web", "10.1.2.3".parse().unwrap()),
            rescon::ContainerId::from_raw(7)
        );
        assert_eq!(t.classify("nope", "10.1.2.3".parse().unwrap()), None);
    }

    /// An IPv4 client of a dual-stack listener, as its socket reports it, goes where the
    /// kernel steered it: it was classified as the `except` class, whatever its prefix.
    #[test]
    fn ipv4_clients_of_a_dual_stack_listener_match_their_ipv4_prefixes() {
        let t = table();
        assert_eq!(class(&t, "::ffff:10.1.2.3"), "premium");
        assert_eq!(class(&t, "::ffff:10.66.1.1"), "black-hole");
        assert_eq!(class(&t, "::ffff:8.8.8.8"), "rest");
        assert_eq!(
            t.container_for("web", "::ffff:192.168.1.1".parse().unwrap()),
            None
        );
    }

    #[test]
    fn moves_take_effect_and_are_recorded() {
        let t = table();
        let r = t
            .move_prefix(None, "10.1.0.0/16".parse().unwrap(), BLACK_HOLE, "flood")
            .unwrap();
        assert!(r.from.is_empty());
        assert_eq!(class(&t, "10.1.2.3"), "black-hole");
        assert_eq!(class(&t, "10.2.0.1"), "premium");
        // Moving it back to premium takes it from the black hole.
        let r = t
            .move_prefix(
                Some("web"),
                "10.1.0.0/16".parse().unwrap(),
                "premium",
                "operator",
            )
            .unwrap();
        assert_eq!(r.from, vec![BLACK_HOLE.to_string()]);
        assert_eq!(class(&t, "10.1.2.3"), "premium");
        // A prefix moved to the except class is taken explicitly, even inside an exception.
        t.move_prefix(None, "192.168.7.0/24".parse().unwrap(), "rest", "operator")
            .unwrap();
        assert_eq!(class(&t, "192.168.7.7"), "rest");
        let acts = t.actions();
        assert_eq!(acts.len(), 3);
        assert_eq!(
            (acts[0].reason.as_str(), acts[0].to.as_str()),
            ("flood", BLACK_HOLE)
        );
        let view = t.listeners();
        assert_eq!(view[0].members[0].name, BLACK_HOLE);
        assert!(
            view[0].members[2]
                .prefixes
                .contains(&"192.168.7.0/24".to_string())
        );
    }

    #[test]
    fn bad_moves_change_nothing() {
        let t = table();
        let before = t.listeners();
        let e = t
            .move_prefix(None, "10.0.0.0/8".parse().unwrap(), "vip", "operator")
            .unwrap_err();
        assert_eq!(
            e,
            FilterError::NoMember {
                asked: "vip".into(),
                known: vec!["black-hole".into(), "premium".into(), "rest".into()]
            }
        );
        let e = t
            .move_prefix(
                Some("ssh"),
                "10.0.0.0/8".parse().unwrap(),
                "rest",
                "operator",
            )
            .unwrap_err();
        assert!(e.to_string().contains("listeners: web"), "{e}");
        assert_eq!(t.listeners(), before);
        assert!(t.actions().is_empty());
    }
}
