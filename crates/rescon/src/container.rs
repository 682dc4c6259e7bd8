//! Containers, handles and the registry (the container-id namespace).
//!
//! # The model
//!
//! A container is a resource principal: the activity (a connection, a request, a client class, a
//! virtual host, a CGI run) that resources are charged to and that is scheduled. Containers form
//! a tree. A container may be made parentless (it then stands at the top level beside the root)
//! or reparented under another container; a move that would make a cycle is refused.
//!
//! # Handles are capabilities
//!
//! A [`Container`] is a handle, the only way to act on a container, like a file descriptor in
//! the paper: cloning it is cheap and it is `Send + Sync`. What a handle may do:
//!
//! | operation | own container | a descendant | any other |
//! |---|---|---|---|
//! | read attributes and usage | yes | yes | privileged only |
//! | create a child | yes | (through its handle) | no |
//! | change attributes | only lower them ([`Attributes::check_lowering`]) | yes, any change | privileged only |
//! | reparent under a container of its subtree | no | yes | privileged only |
//! | make parentless | no | privileged only | privileged only |
//! | look up by id | | [`Container::descendant`] | [`Container::lookup`], privileged only |
//!
//! The [`Registry`]'s root handle is privileged; every other handle is not, and
//! [`Container::unprivileged`] drops the privilege from a copy.
//!
//! # Release
//!
//! A container lives while anything refers to it: a handle, a task or thread bound to it, a
//! socket, a scheduler queue, or a child (children keep their parent alive). When the last
//! reference goes, the container is removed from its parent and from the namespace, and its usage
//! (its own and what its released children left it) is added to its parent's *released* total,
//! so the parent's subtree usage is unchanged. Usage of a released parentless container goes to
//! the registry's total ([`Registry::usage_all`]), so the sum of all usage always equals the sum
//! of everything ever charged.
//!
//! # Limits
//!
//! Connection, memory and process limits are gauges maintained for whole subtrees: acquiring one
//! ([`Container::try_open_connection`], [`Container::charge_memory`],
//! [`Container::try_start_process`]) checks the container and every ancestor, and either takes
//! effect everywhere or nowhere.

use crate::attr::{Attributes, CpuLimit, Share};
use crate::error::{Error, Resource};
use crate::id::ContainerId;
use crate::usage::{Account, Counters, Gauges, Usage};
use compact_str::CompactString;
use once_cell::race::OnceBox;
use rustc_hash::FxHashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

const SHARDS: usize = 64;

type NameShard = FxHashMap<u64, Weak<Node>>;
const ONE_PPB: u64 = 1_000_000_000;
const NO_LIMIT: u64 = u64::MAX;

/// Bumped whenever a container is charged or credited CPU measured outside any poll
/// ([`Container::charge_kernel_net`], [`Container::credit_cpu`]): the policies look for such
/// charges only after it moved (a sampler's tick, every 10 to 100 ms), never per pick.
pub(crate) static OUT_OF_BAND_EPOCH: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind (counters, sums,
    // attributes that were either written or not), so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared by every container of one registry.
pub(crate) struct Shared {
    names: Box<[Mutex<NameShard>]>,
    /// Taken for writing by reparenting, for reading by checks that walk parent chains, so a
    /// check never sees a half-made move and two moves cannot together make a cycle.
    structure: RwLock<()>,
    feeds: RwLock<Vec<Weak<Feed>>>,
    orphans: Counters,
    /// Whether any container of the namespace has ever had an egress limit: until one does,
    /// senders skip the walk up the tree ([`Container::egress_limited`]).
    egress_used: AtomicBool,
}

impl Shared {
    fn shard(&self, id: ContainerId) -> &Mutex<NameShard> {
        &self.names[(id.get() as usize) % SHARDS]
    }

    fn lookup(&self, id: ContainerId) -> Option<Arc<Node>> {
        lock(self.shard(id)).get(&id.get()).and_then(Weak::upgrade)
    }

    /// Every live container.
    fn all(&self) -> Vec<Arc<Node>> {
        let mut out = Vec::new();
        for shard in self.names.iter() {
            out.extend(lock(shard).values().filter_map(Weak::upgrade));
        }
        out
    }

    /// Every live container, grouped by parent. The handles must be dropped outside any lock
    /// of this module: dropping the last reference to a container releases it.
    fn children_by_parent(&self) -> FxHashMap<ContainerId, Vec<Arc<Node>>> {
        let mut by_parent: FxHashMap<ContainerId, Vec<Arc<Node>>> = FxHashMap::default();
        for n in self.all() {
            if let Some(p) = n.parent_id() {
                by_parent.entry(p).or_default().push(n);
            }
        }
        for kids in by_parent.values_mut() {
            kids.sort_unstable_by_key(|n| n.id);
        }
        by_parent
    }

    fn notify(&self, id: ContainerId) {
        let feeds = self.feeds.read().unwrap_or_else(|e| e.into_inner());
        for f in feeds.iter().filter_map(Weak::upgrade) {
            {
                let mut p = lock(&f.pending);
                if !p.all {
                    if p.ids.len() < FEED_MAX {
                        p.ids.push(id);
                    } else {
                        p.ids = Vec::new();
                        p.all = true;
                    }
                }
            }
            f.dirty.store(true, Release);
            if let Some(wake) = &f.waker {
                wake();
            }
        }
    }
}

/// How many changes a feed lists before it says "any may have changed" instead. Every
/// change to a container some scheduler mirrors goes to every feed of the registry, and a
/// subscriber that does not drain (a policy that never picks: an idle worker's, or an idle
/// blocking pool's) would keep them all: rescon-httpd moves each connection's container under
/// its vhost, so an idle feed grew by an id per connection (measured: 4.4 MB over 700,000
/// connections, without end).
const FEED_MAX: usize = 1024;

/// A scheduler's inbox of containers whose attributes or parent changed.
#[derive(Default)]
pub(crate) struct Feed {
    pub(crate) dirty: AtomicBool,
    pending: Mutex<Pending>,
    waker: Option<Box<dyn Fn() + Send + Sync>>,
}

#[derive(Default)]
struct Pending {
    ids: Vec<ContainerId>,
    /// More than `FEED_MAX` changes came: any container may have changed.
    all: bool,
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("dirty", &self.dirty)
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// Takes the ids pushed since the last drain, if any. Returns true if more changes came
    /// than the feed lists (`FEED_MAX`): then any container may have changed.
    pub(crate) fn drain(&self, out: &mut Vec<ContainerId>) -> bool {
        if self.dirty.load(Relaxed) && self.dirty.swap(false, Acquire) {
            let mut p = lock(&self.pending);
            out.append(&mut p.ids);
            return std::mem::take(&mut p.all);
        }
        false
    }

    #[cfg(test)]
    pub(crate) fn listed(&self) -> usize {
        lock(&self.pending).ids.len()
    }
}

/// What a container keeps about its children. Children are not listed here: the namespace is
/// the one index of containers, and enumerating a container's children scans it (see
/// [`Shared::children_by_parent`]). That keeps creating and releasing a container to one
/// namespace entry, which is what the hot path of a server does per connection.
#[derive(Default)]
struct Family {
    /// Sum of the children's fixed shares, in parts per billion.
    fixed_ppb: u64,
    /// What released children left behind (allocated at the first release).
    released: Option<Box<Usage>>,
}

/// The CPU-limit token bucket shared by every scheduler serving the container.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    period: u64,
    tokens: i64,
    started: bool,
}

/// Limits mirrored into atomics so that acquiring a gauge never takes the attribute lock.
#[derive(Debug)]
struct LimitCache {
    conns: AtomicU64,
    memory: AtomicU64,
    procs: AtomicU64,
    egress: AtomicU64,
}

impl LimitCache {
    fn store(&self, a: &Attributes) {
        let l = &a.limits;
        self.conns
            .store(l.max_connections.unwrap_or(NO_LIMIT), Relaxed);
        self.memory.store(l.max_memory.unwrap_or(NO_LIMIT), Relaxed);
        self.procs
            .store(l.max_processes.unwrap_or(NO_LIMIT), Relaxed);
        self.egress
            .store(l.egress_bytes_per_sec.unwrap_or(NO_LIMIT), Relaxed);
    }
}

/// A container.
///
/// # Size
///
/// A server makes one per connection or per request, so what every container carries inline
/// is what a connection's or a request's container uses: its id, name and parent, the usage
/// counters every busy container moves, and the scheduler's state. The rest ([`Extra`]: its
/// children's sums, attributes other than the default, limits, gauges, token buckets) is one
/// block made when first needed, as are the rarely moved counters ([`Counters`]). A
/// connection's container, with default attributes and no children, never makes it.
/// `rescon-bench memory` measures what one costs (673 bytes with everything inline).
pub(crate) struct Node {
    pub(crate) id: ContainerId,
    /// Inline up to 24 bytes (a connection's `conn-N`), so a container is one block.
    name: CompactString,
    shared: Arc<Shared>,
    /// Changed only under the registry's structure lock (and by the node's own release).
    parent: Mutex<Option<Arc<Node>>>,
    pub(crate) counters: Counters,
    /// How many schedulers have this container attached; changes are only announced when
    /// some scheduler could care.
    pub(crate) sched_refs: AtomicU32,
    /// What the policies of several workers share about it (`sched::global`).
    pub(crate) global: crate::sched::global::NodeGlobal,
    /// A pointer (a `OnceLock` would add its state word).
    extra: OnceBox<Extra>,
}

/// What a container has only once it is used as more than a leaf with default attributes
/// (see [`Node`]). Absent, it reads as a default one: no children's sums, default
/// attributes, no limits, zero gauges.
struct Extra {
    family: Mutex<Family>,
    attrs: Mutex<Attributes>,
    /// The limits, mirrored so that acquiring a gauge takes no lock.
    limits: LimitCache,
    /// The container's own gauges and its subtree's.
    gauges: NodeGauges,
    /// Token buckets of the CPU and egress limits, allocated when first used.
    buckets: Mutex<Option<Box<Buckets>>>,
    /// CPU charged (positive) or credited (negative) outside any poll that no scheduling
    /// policy has taken into its virtual times yet ([`Node::take_out_of_band`]).
    out_of_band_ns: AtomicI64,
}

impl Default for Extra {
    fn default() -> Extra {
        Extra {
            family: Mutex::default(),
            attrs: Mutex::default(),
            limits: LimitCache {
                conns: AtomicU64::new(NO_LIMIT),
                memory: AtomicU64::new(NO_LIMIT),
                procs: AtomicU64::new(NO_LIMIT),
                egress: AtomicU64::new(NO_LIMIT),
            },
            gauges: NodeGauges::default(),
            buckets: Mutex::new(None),
            out_of_band_ns: AtomicI64::new(0),
        }
    }
}

#[derive(Debug, Default)]
struct NodeGauges {
    own: Gauges,
    tree: Gauges,
}

#[derive(Debug, Default)]
struct Buckets {
    cap: Bucket,
    egress: EgressBucket,
}

#[derive(Debug, Default)]
struct EgressBucket {
    tokens: f64,
    last_ns: u64,
    started: bool,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Node {
    pub(crate) fn attrs(&self) -> Attributes {
        self.extra
            .get()
            .map_or_else(Attributes::default, |x| *lock(&x.attrs))
    }

    /// The block of what most containers never use, made now if it is not yet.
    fn extra(&self) -> &Extra {
        self.extra.get_or_init(Box::default)
    }

    /// Sets the attributes, with `attrs` the locked ones of [`Extra`].
    fn set_attrs_locked(&self, attrs: &mut Attributes, new: Attributes) {
        *attrs = new;
        if new.limits.egress_bytes_per_sec.is_some() {
            self.shared.egress_used.store(true, Relaxed);
        }
        self.extra().limits.store(&new);
    }

    fn egress_limit(&self) -> u64 {
        self.extra
            .get()
            .map_or(NO_LIMIT, |x| x.limits.egress.load(Relaxed))
    }

    fn gauges(&self) -> &NodeGauges {
        &self.extra().gauges
    }

    /// A subtree gauge's value (zero while the gauges are not made).
    fn tree_gauge(&self, f: impl Fn(&Gauges) -> &AtomicU64) -> u64 {
        self.extra
            .get()
            .map_or(0, |x| f(&x.gauges.tree).load(Acquire))
    }

    pub(crate) fn parent(&self) -> Option<Arc<Node>> {
        lock(&self.parent).clone()
    }

    pub(crate) fn parent_id(&self) -> Option<ContainerId> {
        lock(&self.parent).as_ref().map(|p| p.id)
    }

    /// Whether `self` is `other` or one of its ancestors.
    fn is_ancestor_or_self(&self, other: &Node) -> bool {
        if std::ptr::eq(self, other) {
            return true;
        }
        // The first step without touching reference counts: most checks are parent to child.
        let mut cur = match &*lock(&other.parent) {
            None => return false,
            Some(p) if std::ptr::eq(&**p, self) => return true,
            Some(p) => p.clone(),
        };
        loop {
            let next = match &*lock(&cur.parent) {
                None => return false,
                Some(p) if std::ptr::eq(&**p, self) => return true,
                Some(p) => p.clone(),
            };
            cur = next;
        }
    }

    pub(crate) fn notify(&self) {
        if self.sched_refs.load(SeqCst) > 0 {
            self.shared.notify(self.id);
        }
    }

    /// Leases up to `want` ns of CPU budget for the period containing `now`. Returns the
    /// amount granted and the start of the next period, when more becomes available.
    pub(crate) fn cap_lease(&self, limit: &CpuLimit, now: u64, want: u64) -> (u64, u64) {
        let period_ns = limit.period().as_nanos() as u64;
        let budget = limit.budget_ns() as i64;
        let cap = budget + limit.burst().as_nanos() as i64;
        let idx = now / period_ns;
        let mut guard = lock(&self.extra().buckets);
        let b = &mut guard.get_or_insert_with(Default::default).cap;
        if !b.started {
            *b = Bucket {
                period: idx,
                tokens: budget,
                started: true,
            };
        } else if idx > b.period {
            let periods = (idx - b.period).min(1 << 20) as i64;
            b.tokens = (b.tokens.saturating_add(periods.saturating_mul(budget))).min(cap);
            b.period = idx;
        }
        let grant = (b.tokens.max(0) as u64).min(want);
        b.tokens -= grant as i64;
        (grant, (idx + 1) * period_ns)
    }

    fn add_out_of_band(&self, ns: i64) {
        self.extra().out_of_band_ns.fetch_add(ns, AcqRel);
        OUT_OF_BAND_EPOCH.fetch_add(1, Release);
    }

    /// Takes the CPU charged outside any poll since the last take, for a policy to add to
    /// the container's virtual time (once: the first policy to take it has it). A net credit
    /// is not taken: virtual times only move forward, so a credit waits to offset the
    /// container's later out-of-band charges.
    pub(crate) fn take_out_of_band(&self) -> u64 {
        // A container never charged out of band has no `Extra` to look in.
        let Some(x) = self.extra.get() else {
            return 0;
        };
        if x.out_of_band_ns.load(Acquire) <= 0 {
            return 0;
        }
        let v = x.out_of_band_ns.swap(0, AcqRel);
        if v < 0 {
            x.out_of_band_ns.fetch_add(v, AcqRel);
        }
        v.max(0) as u64
    }

    /// Returns unused budget (or, when negative, a debt run up beyond a lease).
    pub(crate) fn cap_give_back(&self, tokens: i64) {
        // A bucket not yet leased from has nothing to give back to.
        let Some(x) = self.extra.get() else {
            return;
        };
        if let Some(b) = lock(&x.buckets).as_mut()
            && b.cap.started
        {
            b.cap.tokens = b.cap.tokens.saturating_add(tokens);
        }
    }

    fn gauge(&self, tree: bool, which: Resource) -> &AtomicU64 {
        let g = if tree {
            &self.gauges().tree
        } else {
            &self.gauges().own
        };
        match which {
            Resource::Connections => &g.open_conns,
            Resource::Memory => &g.memory_bytes,
            Resource::Processes => &g.processes,
        }
    }

    fn limit(&self, which: Resource) -> u64 {
        let Some(x) = self.extra.get() else {
            return NO_LIMIT;
        };
        let l = &x.limits;
        match which {
            Resource::Connections => l.conns.load(Relaxed),
            Resource::Memory => l.memory.load(Relaxed),
            Resource::Processes => l.procs.load(Relaxed),
        }
    }

    /// Adds `n` to a gauge of this node and its ancestors, checking every limit on the way.
    fn acquire(self: &Arc<Node>, which: Resource, n: u64) -> Result<(), Error> {
        let mut taken: Vec<Arc<Node>> = Vec::new();
        let mut cur = Some(self.clone());
        while let Some(node) = cur {
            let prev = node.gauge(true, which).fetch_add(n, AcqRel);
            let limit = node.limit(which);
            let over = prev.saturating_add(n) > limit;
            if over {
                node.gauge(true, which).fetch_sub(n, AcqRel);
                for t in &taken {
                    t.gauge(true, which).fetch_sub(n, AcqRel);
                }
                return Err(Error::LimitExceeded {
                    container: node.id,
                    resource: which,
                    limit,
                });
            }
            cur = node.parent();
            taken.push(node);
        }
        self.gauge(false, which).fetch_add(n, Relaxed);
        Ok(())
    }

    fn release_gauge(&self, which: Resource, n: u64) {
        self.gauge(false, which).fetch_sub(n, Relaxed);
        self.gauge(true, which).fetch_sub(n, AcqRel);
        let mut cur = self.parent();
        while let Some(node) = cur {
            node.gauge(true, which).fetch_sub(n, AcqRel);
            cur = node.parent();
        }
    }

    /// Adds a signed delta to the kernel-memory gauge of this node and its ancestors.
    fn adjust_kernel_memory(&self, delta: u64) {
        let g = self.gauges();
        g.own.kernel_memory_bytes.fetch_add(delta, Relaxed);
        g.tree.kernel_memory_bytes.fetch_add(delta, Relaxed);
        let mut cur = self.parent();
        while let Some(node) = cur {
            node.gauges()
                .tree
                .kernel_memory_bytes
                .fetch_add(delta, Relaxed);
            cur = node.parent();
        }
    }

    fn usage_self(&self) -> Usage {
        let mut u = Usage::default();
        self.counters.snapshot_into(&mut u);
        if let Some(x) = self.extra.get() {
            x.gauges.own.snapshot_into(&mut u);
        }
        u
    }

    /// This node's counters and what its released children left, plus its subtree gauges.
    fn usage_own_and_released(&self) -> Usage {
        let mut u = Usage::default();
        match self.extra.get() {
            None => self.counters.snapshot_into(&mut u),
            Some(x) => {
                let fam = lock(&x.family);
                self.counters.snapshot_into(&mut u);
                if let Some(r) = &fam.released {
                    u += **r;
                }
                drop(fam);
                x.gauges.tree.snapshot_into(&mut u);
            }
        }
        u
    }
}

/// Subtree usage of `node`, given the children of every container.
fn subtree_usage(node: &Node, by_parent: &FxHashMap<ContainerId, Vec<Arc<Node>>>) -> Usage {
    let mut u = node.usage_own_and_released();
    for kid in by_parent.get(&node.id).into_iter().flatten() {
        u += without_gauges(subtree_usage(kid, by_parent));
    }
    u
}

/// Gauges of a subtree are kept at its top; summing children must not count them again.
fn without_gauges(mut u: Usage) -> Usage {
    u.open_conns = 0;
    u.memory_bytes = 0;
    u.processes = 0;
    u.kernel_memory_bytes = 0;
    u
}

impl Drop for Node {
    fn drop(&mut self) {
        let mut total = Usage::default();
        self.counters.snapshot_into(&mut total);
        let mut fixed = 0;
        if let Some(x) = self.extra.get() {
            if let Some(r) = &lock(&x.family).released {
                total += **r;
            }
            fixed = fixed_ppb(lock(&x.attrs).share);
        }
        let parent = self
            .parent
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match parent {
            Some(parent) => {
                if fixed > 0 || total != Usage::default() {
                    let mut fam = lock(&parent.extra().family);
                    fam.fixed_ppb -= fixed;
                    **fam.released.get_or_insert_with(Default::default) += total;
                }
                // `parent` is dropped here, after its lock: it may be the last reference.
            }
            None => self.shared.orphans.add(&total),
        }
        lock(self.shared.shard(self.id)).remove(&self.id.get());
    }
}

/// The container namespace: every live container of one tree, by id.
///
/// ```
/// use rescon::Registry;
/// let registry = Registry::new();
/// let root = registry.root();
/// let web = root.create_child("web", Default::default()).unwrap();
/// assert_eq!(root.lookup(web.id()).unwrap().name(), "web");
/// ```
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
    root: Container,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("root", &self.root.id())
            .finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// A new namespace with a root container named `root` with default attributes.
    pub fn new() -> Registry {
        let shared = Arc::new(Shared {
            names: (0..SHARDS)
                .map(|_| Mutex::new(FxHashMap::default()))
                .collect(),
            structure: RwLock::new(()),
            feeds: RwLock::new(Vec::new()),
            orphans: Counters::default(),
            egress_used: AtomicBool::new(false),
        });
        let root = new_node(&shared, "root", Attributes::default(), None);
        register(&shared, &root);
        Registry {
            shared,
            root: Container {
                node: root,
                privileged: true,
            },
        }
    }

    /// The privileged handle of the root container.
    pub fn root(&self) -> Container {
        self.root.clone()
    }

    /// Total usage of everything this registry ever accounted: the root's subtree, every live
    /// parentless container's subtree, and what released parentless containers left.
    pub fn usage_all(&self) -> Usage {
        let mut u = Usage::default();
        self.shared.orphans.snapshot_into(&mut u);
        for top in self.top_level() {
            u += top.usage_subtree();
        }
        u
    }

    /// Every live parentless container (the root and any container made parentless), as
    /// privileged handles.
    pub fn top_level(&self) -> Vec<Container> {
        let mut out = Vec::new();
        for shard in self.shared.names.iter() {
            let nodes: Vec<Arc<Node>> = lock(shard).values().filter_map(Weak::upgrade).collect();
            // Dropped outside the shard lock: a drop may be a release that takes it.
            for n in nodes {
                if n.parent_id().is_none() {
                    out.push(Container {
                        node: n,
                        privileged: true,
                    });
                }
            }
        }
        out.sort_by_key(|c| c.id());
        out
    }

    /// Number of live containers.
    pub fn len(&self) -> usize {
        self.shared.names.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether no container is alive (never: the registry holds its root).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A [`Watch`] over containers of this registry.
    pub fn watch(&self) -> Watch {
        Watch {
            feed: self.subscribe(None),
            watched: Mutex::new(FxHashMap::default()),
        }
    }

    /// A [`Watch`] that also calls `wake` (from the thread that made the change) whenever a
    /// watched container changes, so that a sleeping thread can be woken to apply it.
    pub fn watch_with_waker(&self, wake: impl Fn() + Send + Sync + 'static) -> Watch {
        Watch {
            feed: self.subscribe(Some(Box::new(wake))),
            watched: Mutex::new(FxHashMap::default()),
        }
    }

    pub(crate) fn subscribe(&self, waker: Option<Box<dyn Fn() + Send + Sync>>) -> Arc<Feed> {
        let feed = Arc::new(Feed {
            waker,
            ..Feed::default()
        });
        let mut feeds = self.shared.feeds.write().unwrap_or_else(|e| e.into_inner());
        feeds.retain(|w| w.strong_count() > 0);
        feeds.push(Arc::downgrade(&feed));
        feed
    }
}

fn new_node(
    shared: &Arc<Shared>,
    name: &str,
    attrs: Attributes,
    parent: Option<Arc<Node>>,
) -> Arc<Node> {
    let node = Arc::new(Node {
        id: ContainerId::next(),
        name: name.into(),
        shared: shared.clone(),
        parent: Mutex::new(parent),
        counters: Counters::default(),
        sched_refs: AtomicU32::new(0),
        global: Default::default(),
        extra: OnceBox::new(),
    });
    if attrs != Attributes::default() {
        node.set_attrs_locked(&mut lock(&node.extra().attrs), attrs);
    }
    node
}

fn register(shared: &Shared, node: &Arc<Node>) {
    lock(shared.shard(node.id)).insert(node.id.get(), Arc::downgrade(node));
}

fn fixed_ppb(share: Share) -> u64 {
    match share {
        Share::Fixed(f) => f.ppb(),
        Share::Weight(_) => 0,
    }
}

/// A handle to a container: a capability (see the [module docs](self) for what it allows).
#[derive(Clone)]
pub struct Container {
    pub(crate) node: Arc<Node>,
    privileged: bool,
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Container")
            .field("id", &self.node.id)
            .field("name", &self.node.name)
            .field("privileged", &self.privileged)
            .finish()
    }
}

impl PartialEq for Container {
    /// Two handles are equal when they name the same container, whatever their rights.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.node, &other.node)
    }
}

impl Eq for Container {}

impl std::hash::Hash for Container {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.node.id.hash(state)
    }
}

impl Container {
    /// The container's id.
    pub fn id(&self) -> ContainerId {
        self.node.id
    }

    /// The container's name (not unique; ids are).
    pub fn name(&self) -> &str {
        &self.node.name
    }

    /// Whether this handle is privileged (may look up and act on any container).
    pub fn is_privileged(&self) -> bool {
        self.privileged
    }

    /// A copy of this handle without privilege.
    pub fn unprivileged(&self) -> Container {
        Container {
            node: self.node.clone(),
            privileged: false,
        }
    }

    /// The parent's id, or `None` for a top-level container.
    pub fn parent_id(&self) -> Option<ContainerId> {
        self.node.parent_id()
    }

    /// The attributes.
    pub fn attrs(&self) -> Attributes {
        self.node.attrs()
    }

    /// This container's own usage (children excluded, except for gauges, which count the
    /// container only).
    pub fn usage(&self) -> Usage {
        self.node.usage_self()
    }

    /// The usage of the whole subtree: this container, its live descendants and everything
    /// released descendants left behind.
    ///
    /// This scans the namespace once: O(number of containers). [`snapshot`](Container::snapshot)
    /// gives the subtree usage of every container of a subtree in the same single scan.
    pub fn usage_subtree(&self) -> Usage {
        subtree_usage(&self.node, &self.node.shared.children_by_parent())
    }

    /// Records usage on this container.
    pub fn account(&self) -> Account<'_> {
        Account {
            counters: &self.node.counters,
        }
    }

    /// Creates a child with the given attributes and returns an (unprivileged) handle to it.
    ///
    /// Fails without change if the child's fixed share would take the children's fixed shares
    /// above 1.
    pub fn create_child(&self, name: &str, attrs: Attributes) -> Result<Container, Error> {
        let want = fixed_ppb(attrs.share);
        if want > 0 {
            // Reserve the fixed share; a weighted child changes no sum and takes no lock.
            let mut fam = lock(&self.node.extra().family);
            if fam.fixed_ppb + want > ONE_PPB {
                let sum = (fam.fixed_ppb + want) as f64 / 1e9;
                return Err(Error::FixedSharesExceed {
                    parent: self.node.id,
                    sum,
                });
            }
            fam.fixed_ppb += want;
        }
        // Built with its parent set, before anyone else can see it.
        let node = new_node(&self.node.shared, name, attrs, Some(self.node.clone()));
        register(&self.node.shared, &node);
        Ok(Container {
            node,
            privileged: false,
        })
    }

    /// Handles to the live children, in order of creation. This scans the namespace: O(number
    /// of containers).
    pub fn children(&self) -> Vec<Container> {
        let mut kids: Vec<Arc<Node>> = self
            .node
            .shared
            .all()
            .into_iter()
            .filter(|n| n.parent_id() == Some(self.node.id))
            .collect();
        kids.sort_unstable_by_key(|n| n.id);
        kids.into_iter()
            .map(|node| Container {
                node,
                privileged: false,
            })
            .collect()
    }

    /// Whether `other` is this container or one of its descendants.
    pub fn contains(&self, other: &Container) -> bool {
        let _s = self
            .node
            .shared
            .structure
            .read()
            .unwrap_or_else(|e| e.into_inner());
        self.node.is_ancestor_or_self(&other.node)
    }

    /// A handle to a container of this handle's subtree (itself included), by id.
    pub fn descendant(&self, id: ContainerId) -> Result<Container, Error> {
        let node = self.node.shared.lookup(id).ok_or(Error::NotFound(id))?;
        let _s = self
            .node
            .shared
            .structure
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if self.privileged || self.node.is_ancestor_or_self(&node) {
            Ok(Container {
                node,
                privileged: false,
            })
        } else {
            Err(Error::PermissionDenied {
                op: "descendant",
                target: id,
                reason: "not in this handle's subtree; looking up any id needs a privileged handle",
            })
        }
    }

    /// Looks any container up by id: the namespace the paper exposes under `/proc`. Needs a
    /// privileged handle; returns an unprivileged one.
    pub fn lookup(&self, id: ContainerId) -> Result<Container, Error> {
        if !self.privileged {
            return Err(Error::PermissionDenied {
                op: "lookup",
                target: id,
                reason: "looking containers up by id needs a privileged handle; use descendant() within your subtree",
            });
        }
        let node = self.node.shared.lookup(id).ok_or(Error::NotFound(id))?;
        Ok(Container {
            node,
            privileged: false,
        })
    }

    /// Replaces the attributes of `target`: any change if `target` is a strict descendant of
    /// this handle's container (or the handle is privileged), only a lowering if `target` is
    /// the container itself. Fails without change otherwise.
    pub fn set_attrs(&self, target: &Container, new: Attributes) -> Result<(), Error> {
        let shared = &self.node.shared;
        let _s = shared.structure.read().unwrap_or_else(|e| e.into_inner());
        let same = Arc::ptr_eq(&self.node, &target.node);
        if !self.privileged {
            if same {
                if let Err(field) = target.node.attrs().check_lowering(&new) {
                    return Err(Error::PermissionDenied {
                        op: field_op(field),
                        target: target.id(),
                        reason: "a handle may only lower its own container's shares, limits and priority; ask the parent's handle",
                    });
                }
            } else if !self.node.is_ancestor_or_self(&target.node) {
                return Err(Error::PermissionDenied {
                    op: "set_attrs",
                    target: target.id(),
                    reason: "not a descendant of this handle's container",
                });
            }
        }
        let node = &target.node;
        // Fast path: the share is unchanged, so the parent's fixed sum is too.
        {
            let mut attrs = lock(&node.extra().attrs);
            if attrs.share == new.share {
                node.set_attrs_locked(&mut attrs, new);
                drop(attrs);
                node.notify();
                return Ok(());
            }
        }
        // The share changes: check and update the parent's fixed sum and the attributes under
        // the parent's family lock (taken before the attribute lock, as everywhere), so two
        // siblings raised at once cannot together exceed 1.
        let parent = node.parent();
        let mut ch = parent.as_ref().map(|p| lock(&p.extra().family));
        {
            let mut attrs = lock(&node.extra().attrs);
            let (old_ppb, new_ppb) = (fixed_ppb(attrs.share), fixed_ppb(new.share));
            if let Some(ch) = ch.as_mut() {
                let sum = ch.fixed_ppb - old_ppb + new_ppb;
                if sum > ONE_PPB {
                    return Err(Error::FixedSharesExceed {
                        parent: parent.as_ref().map(|p| p.id).expect("has parent"),
                        sum: sum as f64 / 1e9,
                    });
                }
                ch.fixed_ppb = sum;
            }
            node.set_attrs_locked(&mut attrs, new);
        }
        drop(ch);
        node.notify();
        Ok(())
    }

    /// Reads `target`'s attributes, changes them with `f`, and sets them with
    /// [`set_attrs`](Container::set_attrs).
    pub fn update(
        &self,
        target: &Container,
        f: impl FnOnce(&mut Attributes) -> Result<(), crate::AttrError>,
    ) -> Result<(), Error> {
        let mut a = target.attrs();
        f(&mut a)?;
        self.set_attrs(target, a)
    }

    /// Moves `target` under `new_parent`, or makes it parentless with `None`.
    ///
    /// Needs `target` to be a strict descendant of this handle's container and `new_parent`
    /// to be in its subtree, or a privileged handle; making a container parentless needs a
    /// privileged handle, since it takes the subtree out from under its ancestors' limits.
    /// Refused without change if the move would make a cycle or over-commit the new parent's
    /// fixed shares. The subtree's usage moves with it.
    pub fn reparent(
        &self,
        target: &Container,
        new_parent: Option<&Container>,
    ) -> Result<(), Error> {
        let shared = &self.node.shared;
        let _s = shared.structure.write().unwrap_or_else(|e| e.into_inner());
        if !self.privileged {
            let ok = match new_parent {
                None => false,
                Some(np) => {
                    !Arc::ptr_eq(&self.node, &target.node)
                        && self.node.is_ancestor_or_self(&target.node)
                        && self.node.is_ancestor_or_self(&np.node)
                }
            };
            if !ok {
                return Err(Error::PermissionDenied {
                    op: "reparent",
                    target: target.id(),
                    reason: "needs the target to be a strict descendant and the new parent in this handle's subtree; making a container parentless needs a privileged handle",
                });
            }
        }
        let node = &target.node;
        if let Some(np) = new_parent {
            if node.is_ancestor_or_self(&np.node) {
                return Err(Error::Cycle {
                    target: target.id(),
                    new_parent: np.id(),
                });
            }
        }
        let old = node.parent();
        if old.as_ref().map(|p| p.id) == new_parent.map(|p| p.id()) {
            return Ok(());
        }
        let fixed = fixed_ppb(node.attrs().share);
        // Move the fixed share: reserve it under the new parent first, the only step that can
        // fail, then give it back to the old.
        if let Some(np) = new_parent {
            let mut fam = lock(&np.node.extra().family);
            if fam.fixed_ppb + fixed > ONE_PPB {
                return Err(Error::FixedSharesExceed {
                    parent: np.id(),
                    sum: (fam.fixed_ppb + fixed) as f64 / 1e9,
                });
            }
            fam.fixed_ppb += fixed;
        }
        if let Some(op) = &old {
            lock(&op.extra().family).fixed_ppb -= fixed;
        }
        // Move the subtree's gauges from the old chain to the new one.
        let moved: [(Resource, u64); 3] = [
            (Resource::Connections, node.tree_gauge(|g| &g.open_conns)),
            (Resource::Memory, node.tree_gauge(|g| &g.memory_bytes)),
            (Resource::Processes, node.tree_gauge(|g| &g.processes)),
        ];
        let kmem = node.tree_gauge(|g| &g.kernel_memory_bytes);
        let mut cur = old.clone();
        while let Some(n) = cur {
            for (r, v) in moved {
                n.gauge(true, r).fetch_sub(v, AcqRel);
            }
            n.gauges().tree.kernel_memory_bytes.fetch_sub(kmem, AcqRel);
            cur = n.parent();
        }
        let mut cur = new_parent.map(|p| p.node.clone());
        while let Some(n) = cur {
            for (r, v) in moved {
                n.gauge(true, r).fetch_add(v, AcqRel);
            }
            n.gauges().tree.kernel_memory_bytes.fetch_add(kmem, AcqRel);
            cur = n.parent();
        }
        let previous =
            std::mem::replace(&mut *lock(&node.parent), new_parent.map(|p| p.node.clone()));
        node.notify();
        drop(_s);
        // The old parent may have been kept alive only by this child.
        drop(previous);
        drop(old);
        Ok(())
    }

    /// Takes one connection from the connection limit of this container and every ancestor.
    /// The returned guard gives it back when dropped, and keeps the container alive.
    pub fn try_open_connection(&self) -> Result<ConnGuard, Error> {
        self.node
            .acquire(Resource::Connections, 1)
            .inspect_err(|_| self.account().add_conns_refused(1))?;
        self.account().add_conns_accepted(1);
        Ok(ConnGuard {
            node: self.node.clone(),
        })
    }

    /// Charges `ns` of the kernel's network CPU (measured outside any poll: softirq receive
    /// of the container's packets) to this container: it is recorded as
    /// [`Usage::kernel_net_ns`], and taken from the shared CPU-limit budget of this container
    /// and of every ancestor whose limit is in force, as a debt the next leases pay first,
    /// so a capped class's network work counts against its cap; and the scheduling policies
    /// add it to the container's virtual time (at their next refill after it), so that its
    /// share and weight hold over its polls and its network work together.
    pub fn charge_kernel_net(&self, ns: u64) {
        if ns == 0 {
            return;
        }
        self.account().add_kernel_net_ns(ns);
        let ns = ns.min(i64::MAX as u64) as i64;
        self.cap_adjust(-ns);
        // The policies add it to the container's virtual time too, so that shares and
        // weights hold over polls and network work together.
        self.node.add_out_of_band(ns);
    }

    /// Takes back `ns` of CPU that this container's polls were charged but that the kernel
    /// spent meanwhile on other work: NET_RX softirq that interrupted the polling thread, on
    /// a kernel without IRQ time accounting, and that [`charge_kernel_net`] charged to the
    /// container whose packets it received. The thread that was interrupted is credited
    /// back: `ns` leaves [`Usage::cpu_ns`] (which never goes below zero), returns to the
    /// CPU-limit budgets of this container and its ancestors, and offsets the container's
    /// later out-of-band charges in the virtual time its shares are scheduled by.
    ///
    /// [`charge_kernel_net`]: Container::charge_kernel_net
    pub fn credit_cpu(&self, ns: u64) {
        if ns == 0 {
            return;
        }
        self.account().take_cpu_ns(ns);
        let ns = ns.min(i64::MAX as u64) as i64;
        self.cap_adjust(ns);
        self.node.add_out_of_band(-ns);
    }

    /// Adds `tokens` (negative: a debt) to the shared CPU-limit budget of this container and
    /// of every ancestor whose limit is in force.
    fn cap_adjust(&self, tokens: i64) {
        let mut cur = Some(self.node.clone());
        while let Some(n) = cur {
            n.cap_give_back(tokens);
            cur = lock(&n.parent).clone();
        }
    }

    /// Charges `bytes` of memory against this container's and its ancestors' memory limits.
    pub fn charge_memory(&self, bytes: u64) -> Result<(), Error> {
        self.node.acquire(Resource::Memory, bytes)
    }

    /// Gives back memory charged with [`charge_memory`](Container::charge_memory).
    pub fn uncharge_memory(&self, bytes: u64) {
        self.node.release_gauge(Resource::Memory, bytes)
    }

    /// Sets the memory the kernel reports for this container (`memory.current`), keeping its
    /// ancestors' subtree totals in step.
    pub fn set_kernel_memory(&self, bytes: u64) {
        let old =
            (self.node.extra.get()).map_or(0, |x| x.gauges.own.kernel_memory_bytes.load(Relaxed));
        self.node.adjust_kernel_memory(bytes.wrapping_sub(old));
    }

    /// Takes one process from the process limit of this container and every ancestor, and
    /// counts a spawn. The guard gives it back when dropped (when the process has exited).
    pub fn try_start_process(&self) -> Result<ProcGuard, Error> {
        self.node.acquire(Resource::Processes, 1)?;
        self.account().add_procs_spawned(1);
        Ok(ProcGuard {
            node: self.node.clone(),
        })
    }

    /// Whether this container or an ancestor has an egress limit. One atomic load while no
    /// container of the namespace has ever had one; a walk up the tree after that.
    pub fn egress_limited(&self) -> bool {
        if !self.node.shared.egress_used.load(Relaxed) {
            return false;
        }
        self.egress_min_rate().is_some()
    }

    /// The smallest egress limit (bytes per second) of this container and its ancestors.
    pub fn egress_min_rate(&self) -> Option<u64> {
        let mut min = None;
        let mut cur = Some(self.node.clone());
        while let Some(n) = cur {
            let r = n.egress_limit();
            if r != NO_LIMIT {
                min = Some(min.map_or(r, |m: u64| m.min(r)));
            }
            cur = n.parent();
        }
        min
    }

    /// Gives back `bytes` granted by [`egress_grant`](Container::egress_grant) but not sent
    /// (the socket took fewer, or none), to this container's and its ancestors' buckets.
    pub fn egress_refund(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut cur = Some(self.node.clone());
        while let Some(n) = cur {
            cur = n.parent();
            let rate = n.egress_limit();
            if rate == NO_LIMIT {
                continue;
            }
            if let Some(b) = lock(&n.extra().buckets).as_mut() {
                let cap = (rate as f64 / 10.0).max(16384.0);
                b.egress.tokens = (b.egress.tokens + bytes as f64).min(cap);
            }
        }
    }

    /// How many of `want` bytes may be sent now under the egress limits of this container and
    /// its ancestors, and takes them. `now_ns` is the caller's monotonic clock. Each limited
    /// container refills at its rate and holds at most a tenth of a second's worth (at least
    /// 16 KiB) when idle.
    pub fn egress_grant(&self, now_ns: u64, want: u64) -> u64 {
        let mut chain = Vec::new();
        let mut cur = Some(self.node.clone());
        while let Some(n) = cur {
            cur = n.parent();
            if n.egress_limit() != NO_LIMIT {
                chain.push(n);
            }
        }
        let mut grant = want;
        for n in &chain {
            let rate = n.egress_limit() as f64;
            let mut guard = lock(&n.extra().buckets);
            let b = &mut guard.get_or_insert_with(Default::default).egress;
            let cap = (rate / 10.0).max(16384.0);
            if !b.started {
                b.started = true;
                b.tokens = cap;
            } else {
                let dt = now_ns.saturating_sub(b.last_ns) as f64 / 1e9;
                b.tokens = (b.tokens + dt * rate).min(cap);
            }
            b.last_ns = b.last_ns.max(now_ns);
            grant = grant.min(b.tokens.max(0.0) as u64);
        }
        for n in &chain {
            if let Some(b) = lock(&n.extra().buckets).as_mut() {
                b.egress.tokens -= grant as f64;
            }
        }
        grant
    }

    /// A tree of this container and its descendants with attributes and usage, for display.
    ///
    /// One scan of the namespace, O(number of containers), whatever the subtree's size.
    pub fn snapshot(&self) -> Snapshot {
        snapshot_of(&self.node, &self.node.shared.children_by_parent())
    }
}

fn field_op(field: &'static str) -> &'static str {
    match field {
        "class" => "raise class",
        "share" => "raise share",
        "priority" => "raise priority",
        "cpu_limit" => "raise cpu_limit",
        "enforcement" => "change enforcement",
        _ => "raise limit",
    }
}

fn snapshot_of(node: &Node, by_parent: &FxHashMap<ContainerId, Vec<Arc<Node>>>) -> Snapshot {
    let children: Vec<Snapshot> = by_parent
        .get(&node.id)
        .into_iter()
        .flatten()
        .map(|k| snapshot_of(k, by_parent))
        .collect();
    let mut subtree = node.usage_own_and_released();
    for c in &children {
        subtree += without_gauges(c.usage_subtree);
    }
    Snapshot {
        id: node.id,
        name: node.name.to_string(),
        parent: node.parent_id(),
        attrs: node.attrs(),
        usage: node.usage_self(),
        usage_subtree: subtree,
        children,
    }
}

/// A container and its descendants at one moment.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Snapshot {
    /// The container's id.
    pub id: ContainerId,
    /// Its name.
    pub name: String,
    /// Its parent, if any.
    pub parent: Option<ContainerId>,
    /// Its attributes.
    pub attrs: Attributes,
    /// Its own usage.
    pub usage: Usage,
    /// The usage of its subtree.
    pub usage_subtree: Usage,
    /// Its live children, in order of creation.
    pub children: Vec<Snapshot>,
}

/// Announces changes of the attributes or the parent of chosen containers.
///
/// The schedulers use the same mechanism internally; a kernel backend uses a `Watch` to apply
/// attribute changes to its cgroups live. Watching a container keeps it alive.
///
/// ```
/// let registry = rescon::Registry::new();
/// let root = registry.root();
/// let c = root.create_child("c", Default::default()).unwrap();
/// let watch = registry.watch();
/// watch.add(&c);
/// assert!(watch.changed().is_empty());
/// root.update(&c, |a| a.set("priority", "7")).unwrap();
/// let changed = watch.changed();
/// assert_eq!(changed, vec![c.clone()]);
/// assert_eq!(changed[0].attrs().priority.get(), 7);
/// ```
pub struct Watch {
    feed: Arc<Feed>,
    watched: Mutex<FxHashMap<ContainerId, Container>>,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("watched", &lock(&self.watched).len())
            .finish()
    }
}

impl Watch {
    /// Starts watching a container (again: no effect).
    pub fn add(&self, c: &Container) {
        let mut w = lock(&self.watched);
        if let std::collections::hash_map::Entry::Vacant(v) = w.entry(c.id()) {
            c.node.sched_refs.fetch_add(1, SeqCst);
            v.insert(c.unprivileged());
        }
    }

    /// Stops watching a container.
    pub fn remove(&self, id: ContainerId) {
        let removed = lock(&self.watched).remove(&id);
        if let Some(c) = removed {
            c.node.sched_refs.fetch_sub(1, SeqCst);
        }
    }

    /// Whether a change may be waiting (one atomic load).
    pub fn has_changes(&self) -> bool {
        self.feed.dirty.load(Relaxed)
    }

    /// The watched containers that changed since the last call, each once, in id order.
    /// After a great many changes between calls (more than a thousand anywhere in the
    /// registry) it cannot tell which, and returns every watched container.
    pub fn changed(&self) -> Vec<Container> {
        let mut ids = Vec::new();
        let all = self.feed.drain(&mut ids);
        let w = lock(&self.watched);
        if all {
            ids = w.keys().copied().collect();
        }
        ids.sort_unstable();
        ids.dedup();
        ids.iter().filter_map(|id| w.get(id).cloned()).collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let watched = std::mem::take(&mut *lock(&self.watched));
        for c in watched.values() {
            c.node.sched_refs.fetch_sub(1, SeqCst);
        }
    }
}

/// One open connection counted against the limits of a container and its ancestors.
#[derive(Debug)]
pub struct ConnGuard {
    node: Arc<Node>,
}

impl ConnGuard {
    /// The container the connection is counted in.
    pub fn container_id(&self) -> ContainerId {
        self.node.id
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.node.release_gauge(Resource::Connections, 1);
    }
}

/// One live process counted against the limits of a container and its ancestors.
#[derive(Debug)]
pub struct ProcGuard {
    node: Arc<Node>,
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        self.node.release_gauge(Resource::Processes, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_node_stays_small() {
        // A container per connection is made and dropped on every wake-up; `rescon-bench
        // memory` measures the resident figure (goal: at most 256 bytes with its namespace
        // entry). The node with its `Arc` counts must stay within mimalloc's 192-byte class.
        let node = std::mem::size_of::<Node>();
        assert!(node <= 160, "Node is {node} bytes");
        // A connection's name is kept inline: no block of its own.
        let registry = Registry::new();
        let c = registry
            .root()
            .create_child("conn-1000000000000000000", Attributes::default())
            .unwrap();
        assert!(!c.node.name.is_heap_allocated());
        assert_eq!(c.name(), "conn-1000000000000000000");
    }
}
