//! The admin API's JSON documents, shared by the server and `rctl` so the two cannot drift.

use rescon::{Snapshot, Usage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A container: its attributes in the `key=value` syntax, its own and its subtree's usage, and
/// its children (as deep as asked).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerView {
    /// Its id.
    pub id: u64,
    /// Its name (not unique).
    pub name: String,
    /// Its parent's id, if any.
    pub parent: Option<u64>,
    /// Every attribute, as [`rescon::Attributes::to_pairs`] gives them.
    pub attrs: BTreeMap<String, String>,
    /// Its own usage.
    pub usage: UsageView,
    /// The usage of its subtree, released descendants included.
    pub usage_subtree: UsageView,
    /// How many children it has (also when `children` is cut by the depth asked for).
    pub child_count: usize,
    /// Its children, in order of creation, down to the depth asked for.
    #[serde(default)]
    pub children: Vec<ContainerView>,
    /// The enforcement actually in force for its limits on processes (the server fills it in;
    /// the `enforcement` attribute says only what was asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<EnforcementView>,
}

/// Who enforces a container's limits on processes, in words (rescon-linux
/// `enforcement::Report`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcementView {
    /// `kernel` (cgroups), `user-mode` (the CPU limit held by stopping and continuing
    /// processes) or `user` (the server's own scheduling only).
    pub summary: String,
    /// Who holds `cpu_limit`.
    pub cpu_limit: String,
    /// Who holds `max_processes`.
    pub max_processes: String,
    /// Who holds `max_memory`.
    pub max_memory: String,
    /// What the kernel does not enforce in this layout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl ContainerView {
    /// The view of a snapshot, `depth` levels of children deep (`None`: all).
    pub fn from_snapshot(s: &Snapshot, depth: Option<usize>) -> ContainerView {
        let children = match depth {
            Some(0) => Vec::new(),
            d => s
                .children
                .iter()
                .map(|c| ContainerView::from_snapshot(c, d.map(|d| d - 1)))
                .collect(),
        };
        ContainerView {
            id: s.id.get(),
            name: s.name.clone(),
            parent: s.parent.map(|p| p.get()),
            attrs: s
                .attrs
                .to_pairs()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            usage: UsageView::from(&s.usage),
            usage_subtree: UsageView::from(&s.usage_subtree),
            child_count: s.children.len(),
            children,
            enforcement: None,
        }
    }

    /// This container and its descendants in the view, depth first, to change.
    pub fn walk_mut(&mut self, f: &mut impl FnMut(&mut ContainerView)) {
        f(self);
        for c in &mut self.children {
            c.walk_mut(f);
        }
    }

    /// This container and its descendants in the view, depth first.
    pub fn walk(&self) -> Vec<&ContainerView> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }
}

/// Usage counters and gauges, as in [`rescon::Usage`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct UsageView {
    pub cpu_ns: u64,
    pub kernel_cpu_ns: u64,
    /// The kernel's network CPU charged by eBPF accounting (absent from older servers).
    #[serde(default)]
    pub kernel_net_ns: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub conns_accepted: u64,
    pub conns_refused: u64,
    pub requests: u64,
    pub polls: u64,
    pub wait_ns: u64,
    pub throttled_ns: u64,
    pub procs_spawned: u64,
    #[serde(default)]
    pub tls_handshakes: u64,
    #[serde(default)]
    pub tls_failed: u64,
    #[serde(default)]
    pub h2_streams: u64,
    #[serde(default)]
    pub h2_resets: u64,
    #[serde(default)]
    pub stderr_bytes: u64,
    pub open_conns: u64,
    pub memory_bytes: u64,
    pub kernel_memory_bytes: u64,
    pub processes: u64,
}

impl From<&Usage> for UsageView {
    fn from(u: &Usage) -> Self {
        UsageView {
            cpu_ns: u.cpu_ns,
            kernel_cpu_ns: u.kernel_cpu_ns,
            kernel_net_ns: u.kernel_net_ns,
            bytes_in: u.bytes_in,
            bytes_out: u.bytes_out,
            conns_accepted: u.conns_accepted,
            conns_refused: u.conns_refused,
            requests: u.requests,
            polls: u.polls,
            wait_ns: u.wait_ns,
            throttled_ns: u.throttled_ns,
            procs_spawned: u.procs_spawned,
            tls_handshakes: u.tls_handshakes,
            tls_failed: u.tls_failed,
            h2_streams: u.h2_streams,
            h2_resets: u.h2_resets,
            stderr_bytes: u.stderr_bytes,
            open_conns: u.open_conns,
            memory_bytes: u.memory_bytes,
            kernel_memory_bytes: u.kernel_memory_bytes,
            processes: u.processes,
        }
    }
}

/// One member of a listener group: a client class, or the black hole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// The class's name, or `black-hole`.
    pub name: String,
    /// The class container's id (`None` for the black hole).
    pub container: Option<u64>,
    /// Prefixes it takes (the longest matching prefix of any member wins).
    pub prefixes: Vec<String>,
    /// For the class that takes what no prefix matches: the prefixes it does not take.
    pub except: Option<Vec<String>>,
}

/// A listener and its members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerView {
    /// Its name.
    pub name: String,
    /// Its address and port.
    pub address: String,
    /// Its members.
    pub members: Vec<MemberView>,
    /// The interfaces where its black hole's SYNs are dropped by XDP (`edge` in the
    /// configuration), with what each drops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<EdgeView>,
}

/// An edge filter (XDP) on one interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeView {
    /// The interface.
    pub iface: String,
    /// The IPv4 prefixes whose SYNs it drops now (the black hole's).
    pub prefixes: Vec<String>,
    /// SYNs it has dropped.
    pub drops: u64,
}

/// An action of the flood defense (or an operator's move), for the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterAction {
    /// Seconds since the Unix epoch.
    pub at_unix: u64,
    /// The listener.
    pub listener: String,
    /// The prefix moved.
    pub prefix: String,
    /// The member it went to.
    pub to: String,
    /// Why (`operator`, or the flood defense's reason).
    pub reason: String,
}

/// `GET /filters`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiltersView {
    /// Every listener.
    pub listeners: Vec<ListenerView>,
    /// Recent moves, oldest first.
    #[serde(default)]
    pub actions: Vec<FilterAction>,
}

/// `POST /filters/move`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    /// The listener (may be left out when there is only one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// A CIDR prefix or an address.
    pub prefix: String,
    /// A class name, or `black-hole`.
    pub to: String,
}

/// The answer to a move.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveResult {
    /// The listener.
    pub listener: String,
    /// The prefix, normalized.
    pub prefix: String,
    /// The members that held exactly this prefix before.
    pub from: Vec<String>,
    /// The member that holds it now.
    pub to: String,
}

/// Every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
    /// The field or attribute at fault, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The values it allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<String>,
}

/// `POST /filters/unblock`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnblockRequest {
    /// The listener (may be left out when there is only one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// A CIDR prefix or an address.
    pub prefix: String,
}

/// The answer to `POST /reload`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResult {
    /// What changed (`2 containers added, 0 removed, 1 changed`).
    pub summary: String,
}
