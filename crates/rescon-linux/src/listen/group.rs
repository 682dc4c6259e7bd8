//! The listener group: member sockets on one address and port, each with a filter and a
//! container, steered by a classic BPF program in the kernel.

use super::bpf::{self, Program};
use super::early::{self, Holes, PrefixDrops, SourceCount};
use super::edge::{EdgeFilter, Target, XdpMode};
use super::error::Error;
use super::filter::{Filter, Stack, Steering, check_prefix};
use super::sys;
use ipnet::IpNet;
use rescon::{ConnGuard, Container};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

/// A member's index in its group: the order of its `listen()`, which is also the index the
/// kernel's steering program returns. Stable for the group's life (retired members keep
/// theirs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(u32);

impl MemberId {
    /// The member id of index `i` (panics beyond `u32::MAX`, far past any group).
    pub fn from_index(i: usize) -> MemberId {
        MemberId(u32::try_from(i).expect("member index fits in u32"))
    }

    /// The index.
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "member {}", self.0)
    }
}

/// The default accept backlog of each member.
pub const DEFAULT_BACKLOG: u32 = 1024;

/// How a black-hole member drops the SYNs steered to it, so that they cost no SYN-ACK and
/// queue nothing. Both drops happen in the kernel, on the member's socket, before a SYN is
/// answered, and both are counted in [`Member::drops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SynDrop {
    /// A classic BPF socket filter that drops every packet (`SO_ATTACH_FILTER`). Some kernels
    /// (this project's CI machine among them) allow it only with `CAP_NET_ADMIN`.
    SocketFilter,
    /// A TCP-MD5 signature key (RFC 2385) for every source address, set with `TCP_MD5SIG`,
    /// which needs no capability: the kernel drops each SYN that does not carry a signature
    /// made with the key, before answering it, and the key is random and never leaves the
    /// process. The fallback when `SO_ATTACH_FILTER` is refused. While any socket of the
    /// system has such a key, the kernel's TCP receive path also tests the other sockets for
    /// keys (a pointer test per segment; not measured here).
    Md5Signature,
}

impl SynDrop {
    fn code(drop: Option<SynDrop>) -> u8 {
        match drop {
            None => 0,
            Some(SynDrop::SocketFilter) => 1,
            Some(SynDrop::Md5Signature) => 2,
        }
    }

    fn from_code(c: u8) -> Option<SynDrop> {
        match c {
            1 => Some(SynDrop::SocketFilter),
            2 => Some(SynDrop::Md5Signature),
            _ => None,
        }
    }
}

impl fmt::Display for SynDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SynDrop::SocketFilter => "socket filter (SO_ATTACH_FILTER)",
            SynDrop::Md5Signature => "TCP-MD5 key (TCP_MD5SIG)",
        })
    }
}

/// Makes `s` drop every SYN: with a socket filter, or, where that is refused for want of a
/// capability, with a TCP-MD5 key for every source of the socket's families (see
/// [`SynDrop`]). Works before and after `listen()`.
fn drop_syns(s: SockRef<'_>, stack: Stack) -> io::Result<SynDrop> {
    match s.attach_filter(&bpf::syn_drop().to_sock_filters()) {
        Ok(()) => return Ok(SynDrop::SocketFilter),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            tracing::debug!(error = %e, "SO_ATTACH_FILTER refused; dropping SYNs with a TCP-MD5 key");
        }
        Err(e) => return Err(e),
    }
    drop_with_md5(s, stack).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "SO_ATTACH_FILTER needs CAP_NET_ADMIN here, and the fallback, a TCP-MD5 key, failed too: {e}"
            ),
        )
    })?;
    Ok(SynDrop::Md5Signature)
}

/// [`SynDrop::Md5Signature`]: a fresh random key for every source of the socket's families.
fn drop_with_md5(s: SockRef<'_>, stack: Stack) -> io::Result<()> {
    let mut key = [0u8; sys::TCP_MD5_KEY_LEN];
    sys::random_bytes(&mut key)?;
    for (addr, len) in md5_sources(stack) {
        if let Err(e) = sys::set_md5_key(s.as_fd(), addr, len, Some(&key)) {
            let _ = stop_dropping(s, stack, SynDrop::Md5Signature);
            return Err(e);
        }
    }
    Ok(())
}

/// Undoes [`drop_syns`].
fn stop_dropping(s: SockRef<'_>, stack: Stack, how: SynDrop) -> io::Result<()> {
    match how {
        SynDrop::SocketFilter => match s.detach_filter() {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        },
        SynDrop::Md5Signature => {
            for (addr, len) in md5_sources(stack) {
                match sys::set_md5_key(s.as_fd(), addr, len, None) {
                    Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        }
    }
}

/// Every source a socket of `stack` receives, as TCP-MD5 key prefixes: `0.0.0.0/0` for IPv4,
/// `::/0` for IPv6, and for a dual-stack socket also its IPv4 clients (an IPv4-mapped
/// address, whose prefix length the kernel counts on the IPv4 address).
fn md5_sources(stack: Stack) -> Vec<(IpAddr, u8)> {
    let v4 = (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let mapped = (IpAddr::V6(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped()), 0);
    let v6 = (IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0);
    match stack {
        Stack::V4 => vec![v4],
        Stack::V6Only => vec![v6],
        Stack::Dual => vec![v6, mapped],
    }
}

/// Builds a [`ListenerGroup`].
#[derive(Debug)]
pub struct GroupBuilder {
    addr: SocketAddr,
    backlog: u32,
    dual: Option<bool>,
    members: Vec<(Container, Filter, Option<u32>)>,
}

impl GroupBuilder {
    /// The accept backlog of each member (default [`DEFAULT_BACKLOG`]; the kernel caps it at
    /// `net.core.somaxconn`). It also bounds each member's queue of half-open connections.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Whether an IPv6 group also receives IPv4 clients. The default is yes for the
    /// unspecified address `::` and no for any other IPv6 address. Ignored for IPv4.
    pub fn dual_stack(mut self, dual: bool) -> Self {
        self.dual = Some(dual);
        self
    }

    /// Adds a member: its container and its filter. Members are numbered in the order added.
    pub fn member(mut self, container: &Container, filter: Filter) -> Self {
        self.members.push((container.clone(), filter, None));
        self
    }

    /// Adds a member with its own accept backlog.
    pub fn member_with_backlog(
        mut self,
        container: &Container,
        filter: Filter,
        backlog: u32,
    ) -> Self {
        self.members
            .push((container.clone(), filter, Some(backlog)));
        self
    }

    /// Opens, binds and listens on one socket per member, in member order, with the
    /// steering program attached before the first `listen()`; black-hole members (container
    /// priority 0) get their SYN-dropping filter before theirs.
    ///
    /// With port 0 the first member binds an ephemeral port and the others join it.
    pub fn build(self) -> Result<ListenerGroup, Error> {
        let stack = match self.addr.ip() {
            IpAddr::V4(_) => Stack::V4,
            IpAddr::V6(a) => {
                if self.dual.unwrap_or(a.is_unspecified()) {
                    Stack::Dual
                } else {
                    Stack::V6Only
                }
            }
        };
        let filters: Vec<Filter> = self.members.iter().map(|m| m.1.clone()).collect();
        let steering = Steering::new(stack, filters)?;
        let program = bpf::compile(&steering)?;
        let mut group = ListenerGroup {
            local: self.addr,
            stack,
            backlog: self.backlog,
            state: Mutex::new(State {
                slots: Vec::new(),
                steering,
                program,
                edges: Vec::new(),
                holes: early::open_holes(),
            }),
        };
        let st = group.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for (i, (container, _, backlog)) in self.members.into_iter().enumerate() {
            let prog = (i == 0).then_some(&st.program);
            let member = open_member(
                &mut group.local,
                stack,
                MemberId(i as u32),
                &container,
                backlog.unwrap_or(self.backlog),
                prog,
                st.holes.as_ref(),
            )?;
            st.slots.push(member);
        }
        st.sync_holes(group.local);
        tracing::info!(
            addr = %group.local,
            members = st.slots.len(),
            program_len = st.program.len(),
            "listener group ready"
        );
        Ok(group)
    }
}

/// Opens one member socket, binds it (resolving port 0 into `addr`), arms it, and listens.
fn open_member(
    addr: &mut SocketAddr,
    stack: Stack,
    id: MemberId,
    container: &Container,
    backlog: u32,
    steering: Option<&Program>,
    holes: Option<&Holes>,
) -> Result<Member, Error> {
    let at = *addr;
    let err = |op| move |e| Error::socket(op, at, e);
    let domain = if stack == Stack::V4 {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(err("socket"))?;
    s.set_reuse_address(true).map_err(err("SO_REUSEADDR"))?;
    s.set_reuse_port(true).map_err(err("SO_REUSEPORT"))?;
    if stack != Stack::V4 {
        s.set_only_v6(stack == Stack::V6Only)
            .map_err(err("IPV6_V6ONLY"))?;
    }
    s.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
    s.bind(&(*addr).into()).map_err(err("bind"))?;
    if addr.port() == 0 {
        let bound = s.local_addr().map_err(err("getsockname"))?;
        if let Some(b) = bound.as_socket() {
            addr.set_port(b.port());
        }
    }
    let drop = if container.attrs().priority.is_black_hole() {
        // With the group's early tables, the counting eBPF filter; without (no privilege
        // to load eBPF), classic BPF or a TCP-MD5 key.
        let how = match holes {
            Some(h) => h.attach_filter(s.as_fd()).map(|()| SynDrop::SocketFilter),
            None => drop_syns(SockRef::from(&s), stack),
        }
        .map_err(err("SO_ATTACH_FILTER"))?;
        if how != SynDrop::SocketFilter {
            tracing::info!(addr = %at, member = %id, how = %how, "black-hole member drops SYNs without a socket filter");
        }
        Some(how)
    } else {
        None
    };
    if let Some(p) = steering {
        // Attached before the first listen(), the program is the group's from its first SYN.
        sys::attach_reuseport_cbpf(s.as_fd(), p.insns())
            .map_err(err("SO_ATTACH_REUSEPORT_CBPF"))?;
    }
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    s.listen(backlog).map_err(err("listen"))?;
    Ok(Member(Arc::new(MemberInner {
        id,
        container: container.unprivileged(),
        listener: TcpListener::from(s),
        local: *addr,
        stack,
        drop: AtomicU8::new(SynDrop::code(drop)),
        retired: AtomicBool::new(false),
    })))
}

struct State {
    /// Every member ever opened, by id; retired ones stay (see [`ListenerGroup::retire`]).
    slots: Vec<Member>,
    steering: Steering,
    program: Program,
    /// Edge filters dropping the black holes' SYNs at interfaces (see
    /// [`ListenerGroup::drop_at_edge`]).
    edges: Vec<EdgeFilter>,
    /// The black holes' prefixes and early counters, shared by the black-hole sockets'
    /// filters and the edge filters; `None` without the privilege to load eBPF.
    holes: Option<Holes>,
}

impl State {
    /// The prefixes listed by active black-hole members, with the member: what the early
    /// filters drop, and for whom.
    fn hole_prefixes(&self) -> Vec<(IpNet, Option<MemberId>)> {
        let mut out = Vec::new();
        for (m, f) in self.slots.iter().zip(self.steering.filters()) {
            if !m.is_black_hole() || m.is_retired() {
                continue;
            }
            if let Filter::Prefixes(set) = f {
                out.extend(set.iter().map(|p| (*p, Some(m.id()))));
            }
        }
        out
    }

    /// Brings the early filters' prefixes in line with the black holes. A failure is
    /// logged, not returned: the steering program still sends those SYNs to the black
    /// holes, whose sockets drop them.
    fn sync_holes(&mut self, addr: SocketAddr) {
        let want = self.hole_prefixes();
        if let Some(h) = &mut self.holes {
            if let Err(err) = h.set_owned(&want) {
                tracing::warn!(%addr, error = %err, "early filters not updated; the black-hole members still drop these SYNs");
            }
        }
    }
}

/// Listening sockets on one address and port, one per member, each with a filter of client
/// sources and a container; the kernel steers each new connection to a member by its source.
///
/// # Guarantees
///
/// - **Steering in the kernel.** Every SYN runs the group's classic BPF program, which
///   returns the member the [filters](super::filter) assign to its source; each member has
///   its own accept queue and its own queue of half-open connections, so a flood steered to
///   one member cannot fill another's.
/// - **Black holes.** A member whose container has priority 0 drops SYNs in the kernel, on
///   its socket: no SYN-ACK, no request queued, nothing to accept. It uses a socket filter,
///   or where the process may not attach one (no `CAP_NET_ADMIN` on some kernels), a TCP-MD5
///   key that no client signs with ([`SynDrop`]). [`refresh`](Self::refresh) follows
///   priority changes.
/// - **Without privileges.** Nothing else needs a capability: the steering program
///   (`SO_ATTACH_REUSEPORT_CBPF`) is allowed to any process, so an unprivileged group keeps
///   its per-member sockets, steering and accept priority. Only the edge filter
///   ([`drop_at_edge`](Self::drop_at_edge)) needs root.
/// - **Atomic changes.** Changing filters ([`set_filter`](Self::set_filter),
///   [`add_prefix`](Self::add_prefix), [`remove_prefix`](Self::remove_prefix),
///   [`move_prefixes`](Self::move_prefixes)) builds and checks the new program, then swaps
///   it with one `setsockopt`, which the kernel applies atomically. Connections already
///   accepted, queued for accept, or half-open stay where they are; only new SYNs follow the
///   new filters. A refused change leaves everything as it was.
/// - **Members at run time.** [`add_member`](Self::add_member) opens a socket that joins at
///   the next index and only then receives a share of the filters: nothing queued moves.
///   [`retire`](Self::retire) steers nothing more to a member but keeps its socket open, so
///   what it has queued or half-open can still be accepted through its [`Member`] handle;
///   its index is never reused. Sockets are closed only when the group and every handle are
///   dropped: closing one in the middle would make the kernel move the last socket into
///   its slot and misroute new SYNs until the next program swap.
///
/// Caveats: another socket of the same user that binds the same address and port with
/// `SO_REUSEPORT` would join the group and shift its indices; don't. A black hole is decided
/// by the member container's own priority, not its ancestors'.
///
/// ```no_run
/// use rescon::{Attributes, Registry};
/// use rescon_linux::listen::{Filter, ListenerGroup};
///
/// let registry = Registry::new();
/// let root = registry.root();
/// let mut attrs = Attributes::default();
/// attrs.set("priority", "0").unwrap();
/// let blocked = root.create_child("blocked", attrs).unwrap();
/// let web = root.create_child("web", Attributes::default()).unwrap();
/// let group = ListenerGroup::builder("127.0.0.1:8080".parse().unwrap())
///     .member(&web, Filter::any())
///     .member(&blocked, "198.18.0.0/15".parse().unwrap())
///     .build()
///     .unwrap();
/// // Later: send another range to the black hole, atomically.
/// let to = group.members()[1].id();
/// group.move_prefixes(&["203.0.113.0/24".parse().unwrap()], to).unwrap();
/// // A runtime runs an accept loop per member, in the member's container.
/// for m in group.members() {
///     while let Some(conn) = m.accept().unwrap() {
///         println!("{} from {} in {}", m.id(), conn.peer, m.container().name());
///     }
/// }
/// ```
pub struct ListenerGroup {
    local: SocketAddr,
    stack: Stack,
    backlog: u32,
    state: Mutex<State>,
}

impl fmt::Debug for ListenerGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("ListenerGroup")
            .field("local", &self.local)
            .field("stack", &self.stack)
            .field("filters", &st.steering.filters())
            .field("program_len", &st.program.len())
            .finish()
    }
}

impl ListenerGroup {
    /// Starts a group on `addr` (port 0: an ephemeral port, shared by all members).
    pub fn builder(addr: SocketAddr) -> GroupBuilder {
        GroupBuilder {
            addr,
            backlog: DEFAULT_BACKLOG,
            dual: None,
            members: Vec::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves either the old or the new state (the swap is
        // the last step), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address all members listen on (with the port resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The families the group receives.
    pub fn stack(&self) -> Stack {
        self.stack
    }

    /// The active (not retired) members, in id order.
    pub fn members(&self) -> Vec<Member> {
        self.lock()
            .slots
            .iter()
            .filter(|m| !m.is_retired())
            .cloned()
            .collect()
    }

    /// A member by id, retired or not.
    pub fn member(&self, id: MemberId) -> Result<Member, Error> {
        self.lock()
            .slots
            .get(id.get())
            .cloned()
            .ok_or(Error::NoMember(id))
    }

    /// The current filter of each member, by id (retired members: nothing).
    pub fn filters(&self) -> Vec<(MemberId, Filter)> {
        let st = self.lock();
        st.steering
            .filters()
            .iter()
            .enumerate()
            .map(|(i, f)| (MemberId(i as u32), f.clone()))
            .collect()
    }

    /// The steering program in force, for inspection (it prints as a listing).
    pub fn program(&self) -> Program {
        self.lock().program.clone()
    }

    /// The member that new connections from `addr` go to.
    pub fn classify(&self, addr: IpAddr) -> Option<MemberId> {
        self.lock()
            .steering
            .classify(addr)
            .map(|i| MemberId(i as u32))
    }

    /// The member whose filter lists `prefix` (not a complement's exception), if any.
    pub fn owner_of(&self, prefix: IpNet) -> Option<MemberId> {
        let prefix = check_prefix(prefix).ok()?;
        let st = self.lock();
        st.steering
            .filters()
            .iter()
            .position(|f| !f.is_complement() && f.prefix_set().contains(&prefix))
            .map(|i| MemberId(i as u32))
    }

    /// Builds, checks and swaps in the program for `filters`; on error nothing changes.
    fn apply(&self, st: &mut State, filters: Vec<Filter>, what: &str) -> Result<(), Error> {
        let steering = Steering::new(self.stack, filters)?;
        let program = bpf::compile(&steering)?;
        let any = st
            .slots
            .first()
            .ok_or(Error::Filter(super::FilterError::NoMembers))?;
        sys::attach_reuseport_cbpf(any.0.listener.as_fd(), program.insns())
            .map_err(|e| Error::socket("SO_ATTACH_REUSEPORT_CBPF", self.local, e))?;
        tracing::info!(addr = %self.local, change = what, program_len = program.len(), "steering program swapped");
        st.steering = steering;
        st.program = program;
        st.sync_holes(self.local);
        Ok(())
    }

    /// Also drops the SYNs of black-holed sources (IPv4 and IPv6) at interface `iface` (of
    /// the calling thread's network namespace), with XDP, before the kernel's IP and TCP
    /// layers see them, and counts every other source's SYNs there for the defense: see
    /// [`edge`](super::edge). The edge filter shares the black holes' prefix tables, so it
    /// follows every later change of them (moves, refreshes, retirements). Only prefixes
    /// listed by black-hole members are dropped there (a black hole with a complement filter
    /// drops only at its socket). Needs root; call once per interface the flood may come in
    /// on.
    pub fn drop_at_edge(&self, iface: &str, mode: XdpMode) -> Result<(), Error> {
        let mut st = self.lock();
        let Some(holes) = &st.holes else {
            return Err(Error::socket(
                "edge filter (XDP)",
                self.local,
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the group could not load its eBPF tables when it was built: run as root (CAP_BPF, CAP_NET_ADMIN)",
                ),
            ));
        };
        let edge = EdgeFilter::attach(iface, Target::of(self.local, self.stack), holes, mode)
            .map_err(|e| Error::socket("edge filter (XDP)", self.local, e))?;
        st.edges.push(edge);
        Ok(())
    }

    /// SYNs the edge filters have dropped, all interfaces together.
    pub fn edge_drops(&self) -> u64 {
        self.lock().edges.iter().map(EdgeFilter::drops).sum()
    }

    /// The interfaces with an edge filter: each one's name, the prefixes it drops now and
    /// the SYNs it has dropped.
    pub fn edges(&self) -> Vec<(String, Vec<IpNet>, u64)> {
        let st = self.lock();
        let prefixes: Vec<IpNet> = st
            .holes
            .as_ref()
            .map(|h| h.prefixes().copied().collect())
            .unwrap_or_default();
        st.edges
            .iter()
            .map(|e| (e.iface().to_string(), prefixes.clone(), e.drops()))
            .collect()
    }

    /// SYNs dropped early (at the edge and at black-hole sockets) for each prefix ever
    /// black-holed, cumulative, with the member that lists the prefix now (`None` once it
    /// was moved out). Empty without eBPF (see [`early`](super::early)).
    pub fn early_drops(&self) -> Vec<(PrefixDrops, Option<MemberId>)> {
        let st = self.lock();
        let Some(h) = &st.holes else {
            return Vec::new();
        };
        let drops = h.drops().unwrap_or_else(|e| {
            tracing::warn!(addr = %self.local, error = %e, "reading the early drop counters");
            Vec::new()
        });
        drops
            .into_iter()
            .map(|d| {
                let owner = st
                    .steering
                    .filters()
                    .iter()
                    .position(|f| !f.is_complement() && f.prefix_set().contains(&d.prefix))
                    .map(|i| MemberId(i as u32));
                (d, owner)
            })
            .collect()
    }

    /// SYNs dropped early for each member (its black-holed prefixes, at the edge and at its
    /// socket), cumulative and never decreasing, each drop to the member that black-holed
    /// its prefix when it was dropped: what a server charges to each member's container as
    /// packets dropped for it (see [`Holes::drops_by_owner`]). Empty without eBPF.
    pub fn early_drops_by_member(&self) -> Vec<(MemberId, u64)> {
        let mut st = self.lock();
        let Some(h) = &mut st.holes else {
            return Vec::new();
        };
        h.drops_by_owner().unwrap_or_else(|e| {
            tracing::warn!(addr = %self.local, error = %e, "reading the early drop counters");
            Vec::new()
        })
    }

    /// What the edge filters counted by source since the last call, or `None` when the group
    /// has no edge filter (see [`Holes::take_sources`]).
    pub fn take_sources(&self) -> Option<io::Result<Vec<SourceCount>>> {
        let st = self.lock();
        if st.edges.is_empty() {
            return None;
        }
        st.holes.as_ref().map(Holes::take_sources)
    }

    fn check_active(st: &State, id: MemberId) -> Result<(), Error> {
        match st.slots.get(id.get()) {
            None => Err(Error::NoMember(id)),
            Some(m) if m.is_retired() => Err(Error::Retired(id)),
            Some(_) => Ok(()),
        }
    }

    /// Replaces a member's filter.
    pub fn set_filter(&self, id: MemberId, filter: Filter) -> Result<(), Error> {
        let mut st = self.lock();
        Self::check_active(&st, id)?;
        let mut filters = st.steering.filters().to_vec();
        filters[id.get()] = filter;
        self.apply(&mut st, filters, &format!("set filter of {id}"))
    }

    /// Adds a prefix to a member's (non-complement) filter.
    pub fn add_prefix(&self, id: MemberId, prefix: IpNet) -> Result<(), Error> {
        let prefix = check_prefix(prefix)?;
        let mut st = self.lock();
        Self::check_active(&st, id)?;
        let mut filters = st.steering.filters().to_vec();
        match &mut filters[id.get()] {
            Filter::Prefixes(set) => set.insert(prefix),
            Filter::Except(_) => return Err(Error::Complement(id)),
        };
        self.apply(&mut st, filters, &format!("add {prefix} to {id}"))
    }

    /// Removes a prefix from a member's (non-complement) filter.
    pub fn remove_prefix(&self, id: MemberId, prefix: IpNet) -> Result<(), Error> {
        let prefix = check_prefix(prefix)?;
        let mut st = self.lock();
        Self::check_active(&st, id)?;
        let mut filters = st.steering.filters().to_vec();
        match &mut filters[id.get()] {
            Filter::Prefixes(set) => {
                if !set.remove(&prefix) {
                    return Err(Error::NotListed { member: id, prefix });
                }
            }
            Filter::Except(_) => return Err(Error::Complement(id)),
        }
        self.apply(&mut st, filters, &format!("remove {prefix} from {id}"))
    }

    /// Moves a set of prefixes to member `to` in one atomic swap: each prefix is taken from
    /// the member that lists it, if any, and listed by `to`. Returns the previous owner of
    /// each prefix (to move them back later).
    pub fn move_prefixes(
        &self,
        prefixes: &[IpNet],
        to: MemberId,
    ) -> Result<Vec<(IpNet, Option<MemberId>)>, Error> {
        let prefixes: Vec<IpNet> = prefixes
            .iter()
            .map(|p| check_prefix(*p))
            .collect::<Result<_, _>>()?;
        let mut st = self.lock();
        Self::check_active(&st, to)?;
        let mut filters = st.steering.filters().to_vec();
        if filters[to.get()].is_complement() {
            return Err(Error::Complement(to));
        }
        let mut previous = Vec::with_capacity(prefixes.len());
        for p in &prefixes {
            let mut owner = None;
            for (i, f) in filters.iter_mut().enumerate() {
                if let Filter::Prefixes(set) = f {
                    if set.remove(p) {
                        owner = Some(MemberId(i as u32));
                    }
                }
            }
            if let Filter::Prefixes(set) = &mut filters[to.get()] {
                set.insert(*p);
            }
            previous.push((*p, owner));
        }
        let what = format!("move {} prefixes to {to}", prefixes.len());
        self.apply(&mut st, filters, &what)?;
        Ok(previous)
    }

    /// Opens a new member at the next index with its filter. The socket listens before the
    /// program that steers to it is swapped in, so nothing is misrouted and nothing queued
    /// elsewhere moves.
    pub fn add_member(&self, container: &Container, filter: Filter) -> Result<Member, Error> {
        let mut st = self.lock();
        let id = MemberId(st.slots.len() as u32);
        let mut filters = st.steering.filters().to_vec();
        filters.push(filter);
        // Check the new filters before opening anything.
        let steering = Steering::new(self.stack, filters.clone())?;
        bpf::compile(&steering)?;
        let mut addr = self.local;
        let member = open_member(
            &mut addr,
            self.stack,
            id,
            container,
            self.backlog,
            None,
            st.holes.as_ref(),
        )?;
        st.slots.push(member.clone());
        if let Err(e) = self.apply(&mut st, filters, &format!("add {id}")) {
            // Nothing steers to it: keep it as retired so indices stay in step with the kernel.
            member.0.retired.store(true, Relaxed);
            let mut back = st.steering.filters().to_vec();
            back.push(Filter::nothing());
            st.steering =
                Steering::new(self.stack, back).expect("old filters plus nothing are valid");
            return Err(e);
        }
        Ok(member)
    }

    /// Retires a member: it gets no new connections (its filter becomes nothing, which must
    /// leave every source covered by the others), but its socket stays open so that what
    /// it has queued can still be accepted through the returned handle.
    pub fn retire(&self, id: MemberId) -> Result<Member, Error> {
        let mut st = self.lock();
        Self::check_active(&st, id)?;
        let mut filters = st.steering.filters().to_vec();
        filters[id.get()] = Filter::nothing();
        self.apply(&mut st, filters, &format!("retire {id}"))?;
        let m = st.slots[id.get()].clone();
        m.0.retired.store(true, Relaxed);
        st.sync_holes(self.local);
        Ok(m)
    }

    /// Applies container priority changes: attaches the SYN-dropping filter to members whose
    /// container now has priority 0 and removes it from the others. Returns the members
    /// changed. Call it when a [`rescon::Watch`] on the members' containers fires.
    pub fn refresh(&self) -> Result<Vec<MemberId>, Error> {
        let mut st = self.lock();
        let mut changed = Vec::new();
        for m in &st.slots {
            let want = m.container().attrs().priority.is_black_hole();
            if want != m.is_black_hole() {
                m.set_black_hole(want, st.holes.as_ref())
                    .map_err(|e| Error::socket("SO_ATTACH_FILTER", self.local, e))?;
                tracing::info!(addr = %self.local, member = %m.id(), black_hole = want, "member priority changed");
                changed.push(m.id());
            }
        }
        if !changed.is_empty() {
            st.sync_holes(self.local);
        }
        Ok(changed)
    }

    /// Accepts one connection, from the highest-priority member that has one queued:
    /// members are tried by container class, then priority, both highest first; black holes
    /// and retired members are skipped. So a lower member's connections wait while a higher
    /// member has connections queued. `Ok(None)` when nothing is queued anywhere.
    ///
    /// This is the accept order for one acceptor; a runtime that runs an accept loop per
    /// member in the member's container gets the same order from its scheduler.
    pub fn accept_prioritized(&self) -> io::Result<Option<(Member, Accepted)>> {
        let mut order = self.members();
        order.retain(|m| !m.is_black_hole());
        order.sort_by_key(|m| {
            let a = m.container().attrs();
            (std::cmp::Reverse((a.class, a.priority)), m.id())
        });
        for m in order {
            if let Some(a) = m.accept()? {
                return Ok(Some((m, a)));
            }
        }
        Ok(None)
    }
}

/// One member of a group: its socket and its container. Cloning is cheap (a shared handle).
#[derive(Clone)]
pub struct Member(Arc<MemberInner>);

struct MemberInner {
    id: MemberId,
    container: Container,
    listener: TcpListener,
    local: SocketAddr,
    stack: Stack,
    /// How the member drops SYNs: [`SynDrop::code`], 0 when it does not.
    drop: AtomicU8,
    retired: AtomicBool,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("id", &self.0.id)
            .field("container", &self.0.container.id())
            .field("syn_drop", &self.syn_drop())
            .field("retired", &self.is_retired())
            .finish()
    }
}

/// A connection accepted by a member, counted in the member's container.
#[derive(Debug)]
pub struct Accepted {
    /// The connection, non-blocking.
    pub stream: TcpStream,
    /// The client (IPv4 clients of a dual-stack group appear IPv4-mapped).
    pub peer: SocketAddr,
    /// The open connection counted against the container's connection limits; drop it when
    /// the connection closes.
    pub conn: ConnGuard,
}

impl Member {
    /// The member's id (its index in the group).
    pub fn id(&self) -> MemberId {
        self.0.id
    }

    /// The member's container (an unprivileged handle). A runtime runs this member's accept
    /// loop in it and creates per-connection containers under it.
    pub fn container(&self) -> &Container {
        &self.0.container
    }

    /// The member's listening socket (non-blocking), to register with a poller.
    pub fn listener(&self) -> &TcpListener {
        &self.0.listener
    }

    /// A duplicate of the listening socket's descriptor (sharing its non-blocking flag).
    pub fn try_clone_listener(&self) -> io::Result<TcpListener> {
        self.0.listener.try_clone()
    }

    /// The address the member listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local
    }

    /// Whether the member drops SYNs (its container had priority 0 at the last refresh).
    pub fn is_black_hole(&self) -> bool {
        self.syn_drop().is_some()
    }

    /// How the member drops SYNs, if it is a black hole.
    pub fn syn_drop(&self) -> Option<SynDrop> {
        SynDrop::from_code(self.0.drop.load(Relaxed))
    }

    /// Whether the member was retired.
    pub fn is_retired(&self) -> bool {
        self.0.retired.load(Relaxed)
    }

    /// Accepts one queued connection and counts it in the member's container
    /// ([`Container::try_open_connection`]). A connection beyond the container's connection
    /// limit is closed at once (counted as refused) and the next one is tried. `Ok(None)`
    /// when nothing is queued.
    pub fn accept(&self) -> io::Result<Option<Accepted>> {
        loop {
            let (stream, peer) = match self.0.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            match self.0.container.try_open_connection() {
                Ok(conn) => {
                    stream.set_nonblocking(true)?;
                    return Ok(Some(Accepted { stream, peer, conn }));
                }
                Err(e) => {
                    tracing::debug!(member = %self.0.id, %peer, error = %e, "connection refused by limit");
                    drop(stream);
                }
            }
        }
    }

    /// The member's accept queue: (connections waiting, backlog).
    pub fn queue(&self) -> io::Result<(u32, u32)> {
        sys::listener_queue(self.0.listener.as_fd())
    }

    /// Packets the kernel dropped on this socket: SYNs its black hole dropped (by filter or
    /// TCP-MD5 key, see [`SynDrop`]), and SYNs dropped because its queues were full. Counts
    /// since the socket was opened.
    pub fn drops(&self) -> io::Result<u64> {
        sys::socket_drops(self.0.listener.as_fd()).map(u64::from)
    }

    fn set_black_hole(&self, on: bool, holes: Option<&Holes>) -> io::Result<()> {
        let s = SockRef::from(&self.0.listener);
        let now = match (on, self.syn_drop()) {
            (true, None) => Some(match holes {
                Some(h) => {
                    h.attach_filter(self.0.listener.as_fd())?;
                    SynDrop::SocketFilter
                }
                None => drop_syns(s, self.0.stack)?,
            }),
            (false, Some(how)) => {
                stop_dropping(s, self.0.stack, how)?;
                None
            }
            (_, same) => same,
        };
        self.0.drop.store(SynDrop::code(now), Relaxed);
        Ok(())
    }
}

impl AsFd for Member {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.listener.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn required() -> bool {
        std::env::var_os("RESCON_REQUIRE_KERNEL").is_some_and(|v| v == "1")
    }

    fn listener(addr: &str, stack: Stack) -> io::Result<Socket> {
        let addr: SocketAddr = addr.parse().unwrap();
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        if stack != Stack::V4 {
            s.set_only_v6(stack == Stack::V6Only)?;
        }
        s.bind(&addr.into())?;
        Ok(s)
    }

    fn connects(to: SocketAddr) -> bool {
        let s = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
        s.connect_timeout(&to.into(), Duration::from_millis(300))
            .is_ok()
    }

    /// The fallback drop on its own, whatever this kernel allows: with the key set (before
    /// `listen()`, as a group sets it), no client of the socket's families completes a
    /// handshake and the drops are counted; with it removed, they connect.
    #[test]
    fn a_tcp_md5_key_drops_every_unsigned_syn_until_removed() {
        let cases: [(&str, Stack, &[&str]); 3] = [
            ("127.0.0.1:0", Stack::V4, &["127.0.0.1"]),
            ("[::]:0", Stack::Dual, &["127.0.0.1", "::1"]),
            ("[::1]:0", Stack::V6Only, &["::1"]),
        ];
        for (addr, stack, clients) in cases {
            let s = match listener(addr, stack) {
                Ok(s) => s,
                Err(e) => {
                    assert!(
                        !required(),
                        "RESCON_REQUIRE_KERNEL=1 but binding {addr}: {e}"
                    );
                    eprintln!("skipped {addr}: {e} (no IPv6 here?)");
                    continue;
                }
            };
            if let Err(e) = drop_with_md5(SockRef::from(&s), stack) {
                assert!(
                    !required(),
                    "RESCON_REQUIRE_KERNEL=1 but TCP_MD5SIG failed: {e}"
                );
                eprintln!("skipped: TCP_MD5SIG failed ({e}): no CONFIG_TCP_MD5SIG?");
                return;
            }
            s.listen(16).unwrap();
            let port = s.local_addr().unwrap().as_socket().unwrap().port();
            for c in clients {
                let to = SocketAddr::new(c.parse().unwrap(), port);
                assert!(
                    !connects(to),
                    "{to} connected through the key on a {stack} socket"
                );
            }
            assert!(sys::socket_drops(s.as_fd()).unwrap() >= clients.len() as u32);
            stop_dropping(SockRef::from(&s), stack, SynDrop::Md5Signature).unwrap();
            for c in clients {
                let to = SocketAddr::new(c.parse().unwrap(), port);
                assert!(connects(to), "{to} refused after the key was removed");
            }
        }
    }
}
