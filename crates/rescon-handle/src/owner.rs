//! The owner's side: issuing handles on containers and serving them.
//!
//! An [`Owner`] keeps a table of the handles it issued. Each is the owner's end of a socket
//! pair (the other end is the handle) and an unprivileged [`rescon::Container`]: the rights of
//! the holder are exactly those of that model handle, checked by the model on every call. The
//! sockets sit in one epoll set, so the owner is driven by whatever loop the process has:
//!
//! - [`Owner::spawn`] starts a thread of its own that serves and harvests (the simple way);
//! - or an event loop registers [`Owner::poll_fd`] (readable when a handle needs serving) and
//!   calls [`Owner::serve`] with a zero timeout when it is, and [`Owner::harvest`] from time to
//!   time (every [`Config::harvest_interval`]).
//!
//! Nothing here depends on a runtime. Serving one message takes the handle's own lock, never a
//! lock of the whole table for longer than a lookup, so a slow call (a thread moved between
//! cgroups can take milliseconds) holds up only its own handle.
//!
//! # Release
//!
//! When every copy of a handle's descriptor is closed, in any process (a holder that dies
//! closes its copies), the owner reads what is still queued on the socket (charges sent
//! before the close count), harvests the handle's page, closes the handle's sessions, and
//! drops its reference to the container. The container is then released by the model's rules
//! when nothing else holds it: its usage goes to its parent's, so nothing charged is lost.
//!
//! # Costs
//!
//! A handle costs the owner two descriptors (the pair's ends until the handle is passed on:
//! then one), an epoll registration and about 200 bytes; a session one descriptor more per
//! process that makes calls; a meter a page of memory and one descriptor. The numbers of
//! handles and sessions are bounded ([`Config`]).

use crate::error::{Error, ErrorKind, Result};
use crate::meter::Page;
use crate::sys;
use crate::wire::{self, Info, MAX_MESSAGE, Reply, Request};
use rescon::{Attributes, Container, ContainerId, Enforcement};
use rustix::event::epoll;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use slab::Slab;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the table or a handle's state whole (an insert or remove
    // of one entry, a flag): a poisoned lock still guards consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the owner enforces containers on processes: the kernel backend a server plugs in
/// (`rescon_linux::cgroup::Manager` with the `cgroup` feature), or none.
pub trait Enforcer: Send + Sync + fmt::Debug {
    /// The enforcement actually in force for `c`'s limits on processes, in words for a
    /// holder or an operator (for instance `kernel (cgroups: cpu, cpuacct, pids, memory)`).
    fn describe(&self, c: &Container) -> String;

    /// Binds thread `tid` of process `pid` to `c`'s cgroups. The owner has checked that the
    /// thread belongs to the process that asked.
    fn bind_thread(&self, pid: i32, tid: i32, c: &Container) -> Result<()>;

    /// Moves process `pid` (all its threads) into `c`'s cgroups.
    fn bind_process(&self, pid: i32, c: &Container) -> Result<()>;
}

/// What an owner allows and how often it harvests.
#[derive(Clone, Debug)]
pub struct Config {
    /// The most handles alive at once (issued and made by holders); beyond, issuing and
    /// creating children fail with [`ErrorKind::Limit`].
    pub max_handles: usize,
    /// The most sessions (processes making calls) per handle.
    pub max_sessions_per_handle: usize,
    /// How often [`Owner::spawn`]'s thread reads the pages of counters (an event loop driving
    /// the owner calls [`Owner::harvest`] at this interval).
    pub harvest_interval: Duration,
    /// Whether holders may set `enforcement` on their descendants (which would make the
    /// owner's kernel backend create cgroups for them). Off by default: kernel enforcement is
    /// the server's configuration to set.
    pub allow_enforcement_changes: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_handles: 65_536,
            max_sessions_per_handle: 64,
            harvest_interval: Duration::from_millis(100),
            allow_enforcement_changes: false,
        }
    }
}

/// What an owner is serving now, and what it refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Handles alive.
    pub handles: usize,
    /// Sessions open.
    pub sessions: usize,
    /// Pages of counters mapped.
    pub meters: usize,
    /// Handles released (their last descriptor closed) since the start.
    pub released: u64,
    /// Messages refused as malformed since the start.
    pub malformed: u64,
}

/// The token of the stop event in the epoll set (slab keys never reach it).
const STOP: u64 = u64::MAX;
/// Messages served per handle or session per turn, so that one busy holder cannot keep the
/// others waiting (the epoll set is level-triggered: the rest waits for the next turn).
const BATCH: usize = 64;
/// Charges read before a call is answered: every one a well-behaved holder can have queued
/// (a socket's buffer holds a few hundred), without letting a flood hold the call forever.
const DRAIN_BEFORE_CALL: usize = 4096;

/// Issues handles on containers and serves them. Cheap to clone (all clones are one owner).
///
/// ```
/// use rescon_handle::{Charge, Handle, owner::Owner};
/// let registry = rescon::Registry::new();
/// let cgi = registry.root().create_child("cgi", Default::default()).unwrap();
/// let owner = Owner::new(Default::default()).unwrap();
/// let _server = owner.spawn("rescon-handles").unwrap();
///
/// // Issue a handle on a request's container; here the holder is this process.
/// let request = cgi.create_child("request-1", Default::default()).unwrap();
/// let handle = Handle::from_fd(owner.issue(&request).unwrap()).unwrap();
/// handle.charge(Charge { requests: 1, ..Default::default() }).unwrap();
/// assert_eq!(handle.usage().unwrap().requests, 1);
///
/// // The last close releases the owner's reference; the usage stays in the parent.
/// drop((handle, request));
/// # while owner.stats().handles > 0 { std::thread::sleep(std::time::Duration::from_millis(1)); }
/// assert_eq!(cgi.usage_subtree().requests, 1);
/// ```
#[derive(Clone, Debug)]
pub struct Owner {
    shared: Arc<Shared>,
}

struct Shared {
    epoll: OwnedFd,
    table: Mutex<Table>,
    enforcer: Option<Arc<dyn Enforcer>>,
    config: Config,
    released: AtomicU64,
    malformed: AtomicU64,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owner")
            .field("config", &self.config)
            .field("enforcer", &self.enforcer)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Table {
    slab: Slab<Slot>,
    /// Bumped at every insert: a token names one entry, never a later one in the same slot.
    generation: u32,
    handles: usize,
    sessions: usize,
}

struct Slot {
    generation: u32,
    entry: Entry,
}

#[derive(Clone)]
enum Entry {
    Handle(Arc<HandleEntry>),
    Session(Arc<SessionEntry>),
}

struct HandleEntry {
    token: u64,
    sock: OwnedFd,
    container: Container,
    state: Mutex<HandleState>,
}

#[derive(Default)]
struct HandleState {
    page: Option<Page>,
    sessions: Vec<u64>,
    released: bool,
}

struct SessionEntry {
    token: u64,
    sock: OwnedFd,
    handle: Arc<HandleEntry>,
    /// The process that made the session's socket (`SO_PEERCRED`): the one whose threads
    /// calls may bind.
    pid: i32,
}

fn token(key: usize, generation: u32) -> u64 {
    ((generation as u64) << 32) | key as u64
}

fn split(token: u64) -> (usize, u32) {
    ((token & 0xffff_ffff) as usize, (token >> 32) as u32)
}

impl Owner {
    /// An owner without a kernel backend: binding threads is refused with
    /// [`ErrorKind::NotEnforced`].
    pub fn new(config: Config) -> Result<Owner> {
        Owner::build(config, None)
    }

    /// An owner that binds threads and processes through `enforcer` and describes the
    /// enforcement in force with it.
    pub fn with_enforcer(config: Config, enforcer: Arc<dyn Enforcer>) -> Result<Owner> {
        Owner::build(config, Some(enforcer))
    }

    fn build(config: Config, enforcer: Option<Arc<dyn Enforcer>>) -> Result<Owner> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| Error::io("create the owner's epoll set", e.into()))?;
        Ok(Owner {
            shared: Arc::new(Shared {
                epoll,
                table: Mutex::new(Table::default()),
                enforcer,
                config,
                released: AtomicU64::new(0),
                malformed: AtomicU64::new(0),
            }),
        })
    }

    /// Issues a new handle on `c`: returns the descriptor to give away (close-on-exec; pass it
    /// with [`pass::inherit`](crate::pass::inherit) or [`pass::send_fd`](crate::pass::send_fd),
    /// then close this copy). The holder gets the rights of an unprivileged model handle on
    /// `c`, whatever `c`'s own. The owner holds `c` until the handle is released.
    pub fn issue(&self, c: &Container) -> Result<OwnedFd> {
        let (ours, theirs) = sys::seqpacket_pair().map_err(|e| Error::io("issue a handle", e))?;
        self.insert(|token| {
            Entry::Handle(Arc::new(HandleEntry {
                token,
                sock: ours,
                container: c.unprivileged(),
                state: Mutex::new(HandleState::default()),
            }))
        })?;
        Ok(theirs)
    }

    /// Adds an entry to the table and its socket to the epoll set.
    fn insert(&self, make: impl FnOnce(u64) -> Entry) -> Result<u64> {
        let s = &self.shared;
        let mut t = lock(&s.table);
        let entry_slot = t.slab.vacant_entry();
        let key = entry_slot.key();
        t.generation = t.generation.wrapping_add(1);
        let generation = t.generation;
        let tok = token(key, generation);
        let entry = make(tok);
        let (is_handle, fd) = match &entry {
            Entry::Handle(h) => (true, h.sock.as_fd()),
            Entry::Session(x) => (false, x.sock.as_fd()),
        };
        if is_handle && t.handles >= s.config.max_handles {
            return Err(Error::new(
                ErrorKind::Limit,
                format!(
                    "the owner serves {} handles, its limit (owner::Config::max_handles)",
                    t.handles
                ),
            ));
        }
        epoll::add(
            &s.epoll,
            fd,
            epoll::EventData::new_u64(tok),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )
        .map_err(|e| Error::io("watch a handle", e.into()))?;
        if is_handle {
            t.handles += 1;
        } else {
            t.sessions += 1;
        }
        t.slab.insert(Slot { generation, entry });
        Ok(tok)
    }

    /// Removes entries from the table and the epoll set. Their sockets close when the last
    /// reference goes (a turn serving them may still hold one).
    fn remove(&self, tokens: &[u64]) {
        let s = &self.shared;
        let mut gone = Vec::with_capacity(tokens.len());
        {
            let mut t = lock(&s.table);
            for &tok in tokens {
                let (key, generation) = split(tok);
                if t.slab.get(key).is_some_and(|x| x.generation == generation) {
                    let slot = t.slab.remove(key);
                    let fd_ok = match &slot.entry {
                        Entry::Handle(h) => epoll::delete(&s.epoll, &h.sock),
                        Entry::Session(x) => epoll::delete(&s.epoll, &x.sock),
                    };
                    debug_assert!(fd_ok.is_ok());
                    match slot.entry {
                        Entry::Handle(_) => t.handles -= 1,
                        Entry::Session(_) => t.sessions -= 1,
                    }
                    gone.push(slot);
                }
            }
        }
        // Dropped outside the table's lock: the last reference to a container releases it.
        drop(gone);
    }

    fn lookup(&self, tok: u64) -> Option<Entry> {
        let (key, generation) = split(tok);
        let t = lock(&self.shared.table);
        t.slab
            .get(key)
            .filter(|s| s.generation == generation)
            .map(|s| s.entry.clone())
    }

    /// The epoll set of the owner's sockets: readable when [`serve`](Owner::serve) has work.
    /// Register it in an event loop to drive the owner without a thread of its own.
    pub fn poll_fd(&self) -> BorrowedFd<'_> {
        self.shared.epoll.as_fd()
    }

    /// Serves what is ready: waits up to `timeout` (`None`: until something is ready) for
    /// handles and sessions with messages or closes, then serves each. Returns how many were
    /// served. With a zero timeout it never blocks.
    pub fn serve(&self, timeout: Option<Duration>) -> Result<usize> {
        let mut events = Vec::with_capacity(64);
        let ts = timeout.map(|d| rustix::time::Timespec {
            tv_sec: d.as_secs() as _,
            tv_nsec: d.subsec_nanos() as _,
        });
        match epoll::wait(
            &self.shared.epoll,
            rustix::buffer::spare_capacity(&mut events),
            ts.as_ref(),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(0),
            Err(e) => return Err(Error::io("wait for handles", e.into())),
        }
        let mut served = 0;
        for ev in &events {
            let tok = ev.data.u64();
            if tok == STOP {
                continue;
            }
            match self.lookup(tok) {
                Some(Entry::Handle(h)) => self.serve_handle(&h),
                Some(Entry::Session(x)) => self.serve_session(&x),
                None => continue,
            }
            served += 1;
        }
        Ok(served)
    }

    /// Reads every handle's page of counters and adds what grew to its container.
    pub fn harvest(&self) {
        for h in self.handles() {
            let mut st = lock(&h.state);
            if let Some(p) = st.page.as_mut() {
                p.harvest().apply(&h.container);
            }
        }
    }

    /// Every live handle entry (collected under the table's lock, used after it).
    fn handles(&self) -> Vec<Arc<HandleEntry>> {
        let t = lock(&self.shared.table);
        t.slab
            .iter()
            .filter_map(|(_, s)| match &s.entry {
                Entry::Handle(h) => Some(h.clone()),
                Entry::Session(_) => None,
            })
            .collect()
    }

    /// What the owner serves now.
    pub fn stats(&self) -> Stats {
        // Handles' states are locked after the table's lock is let go (the order everywhere
        // else is a handle's state, then the table).
        let (handles, sessions) = {
            let t = lock(&self.shared.table);
            (t.handles, t.sessions)
        };
        let entries = self.handles();
        let meters = entries
            .iter()
            .filter(|h| lock(&h.state).page.is_some())
            .count();
        Stats {
            handles,
            sessions,
            meters,
            released: self.shared.released.load(Ordering::Relaxed),
            malformed: self.shared.malformed.load(Ordering::Relaxed),
        }
    }

    /// Starts a thread that serves the handles and harvests their pages until the returned
    /// [`Server`] is dropped (or stopped). Only one thread (or event loop) should drive an
    /// owner.
    pub fn spawn(&self, name: &str) -> Result<Server> {
        let stop_fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| Error::io("create the owner's stop event", e.into()))?;
        epoll::add(
            &self.shared.epoll,
            &stop_fd,
            epoll::EventData::new_u64(STOP),
            epoll::EventFlags::IN,
        )
        .map_err(|e| Error::io("watch the stop event", e.into()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let owner = self.clone();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || owner.run(&flag))
            .map_err(|e| Error::io("start the owner's thread", e))?;
        Ok(Server {
            owner: self.clone(),
            stop,
            stop_fd,
            thread: Some(thread),
        })
    }

    fn run(&self, stop: &AtomicBool) {
        let every = self
            .shared
            .config
            .harvest_interval
            .max(Duration::from_millis(1));
        let mut next = Instant::now() + every;
        while !stop.load(Ordering::Acquire) {
            let wait = next.saturating_duration_since(Instant::now());
            // An error of epoll_wait on a valid set is not expected; keep serving.
            let _ = self.serve(Some(wait));
            if Instant::now() >= next {
                self.harvest();
                next = Instant::now() + every;
            }
        }
    }

    /// Serves a handle's socket: charges, sessions opened, and its close.
    fn serve_handle(&self, h: &Arc<HandleEntry>) {
        let mut st = lock(&h.state);
        if st.released {
            return;
        }
        let closed = self.drain(h, &mut st, BATCH);
        if let Some(p) = st.page.as_mut() {
            p.harvest().apply(&h.container);
        }
        if closed {
            self.release(h, st);
        }
    }

    /// Reads up to `max` one-way messages from a handle's socket. Returns whether the handle
    /// was closed (every copy of it, in every process).
    fn drain(&self, h: &Arc<HandleEntry>, st: &mut HandleState, max: usize) -> bool {
        let mut buf = [0u8; MAX_MESSAGE];
        let mut n = 0;
        loop {
            if n == max {
                return false;
            }
            n += 1;
            let r = match sys::recv(h.sock.as_fd(), &mut buf, false) {
                Ok(Some(r)) => r,
                Ok(None) => return true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                // Any other error on a connected pair means the peer is gone.
                Err(_) => return true,
            };
            if r.truncated {
                self.malformed();
                continue;
            }
            match wire::decode_request(&buf[..r.len]) {
                Ok((_, Request::Charge(c))) => c.apply(&h.container),
                Ok((_, Request::OpenSession)) => {
                    let mut fds = r.fds;
                    match fds.pop() {
                        Some(fd) if fds.is_empty() && sys::is_seqpacket_unix(fd.as_fd()) => {
                            self.open_session(h, st, fd)
                        }
                        _ => self.malformed(),
                    }
                }
                // Calls belong on a session; descriptors that came with anything else are
                // closed as `r` drops.
                Ok(_) | Err(_) => self.malformed(),
            }
        }
    }

    fn malformed(&self) {
        self.shared.malformed.fetch_add(1, Ordering::Relaxed);
    }

    fn open_session(&self, h: &Arc<HandleEntry>, st: &mut HandleState, sock: OwnedFd) {
        if st.sessions.len() >= self.shared.config.max_sessions_per_handle {
            // Refused by closing it: the holder's call sees the close.
            return;
        }
        let Ok(cred) = rustix::net::sockopt::socket_peercred(&sock) else {
            return;
        };
        let pid = cred.pid.as_raw_nonzero().get();
        let handle = h.clone();
        if let Ok(tok) = self.insert(|token| {
            Entry::Session(Arc::new(SessionEntry {
                token,
                sock,
                handle,
                pid,
            }))
        }) {
            st.sessions.push(tok);
        }
    }

    /// Drops the owner's reference to a closed handle, after its last charges.
    fn release(&self, h: &Arc<HandleEntry>, mut st: MutexGuard<'_, HandleState>) {
        st.released = true;
        let mut tokens = std::mem::take(&mut st.sessions);
        tokens.push(h.token);
        drop(st);
        self.remove(&tokens);
        self.shared.released.fetch_add(1, Ordering::Relaxed);
    }

    /// Serves a session's calls.
    fn serve_session(&self, x: &Arc<SessionEntry>) {
        let mut buf = [0u8; MAX_MESSAGE];
        for _ in 0..BATCH {
            let r = match sys::recv(x.sock.as_fd(), &mut buf, false) {
                Ok(Some(r)) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Ok(None) | Err(_) => return self.close_session(x),
            };
            let (tag, reply, fd) = if r.truncated {
                self.malformed();
                let msg = format!("a call longer than {MAX_MESSAGE} bytes");
                (0, Reply::Error(ErrorKind::Protocol, msg), None)
            } else {
                match wire::decode_request(&buf[..r.len]) {
                    Ok((tag, req)) => {
                        let (reply, fd) = self.call(x, req);
                        (tag, reply, fd)
                    }
                    Err(e) => {
                        self.malformed();
                        (0, Reply::Error(e.kind(), e.message().to_string()), None)
                    }
                }
            };
            let bytes = wire::encode_reply(tag, &reply);
            let fds: Vec<BorrowedFd<'_>> = fd.iter().map(|f| f.as_fd()).collect();
            // The holder waits for each answer before its next call: a full socket means a
            // holder that does not read them, and loses its session.
            if sys::send(x.sock.as_fd(), &bytes, &fds, false).is_err() {
                return self.close_session(x);
            }
        }
    }

    fn close_session(&self, x: &Arc<SessionEntry>) {
        lock(&x.handle.state).sessions.retain(|t| *t != x.token);
        self.remove(&[x.token]);
    }

    /// Answers one call: the reply, and a descriptor to send with it.
    fn call(&self, x: &SessionEntry, req: Request) -> (Reply, Option<OwnedFd>) {
        let h = &x.handle;
        let mut st = lock(&h.state);
        // Charges the holder sent before this call are counted before it is answered, so a
        // holder reads its own charges back.
        let closed = !st.released && self.drain(h, &mut st, DRAIN_BEFORE_CALL);
        if let Some(p) = st.page.as_mut() {
            p.harvest().apply(&h.container);
        }
        if st.released || closed {
            if closed {
                self.release(h, st);
            }
            return (
                Reply::Error(
                    ErrorKind::Released,
                    "the handle has been released (its last descriptor was closed)".into(),
                ),
                None,
            );
        }
        match self.act(x, &mut st, req) {
            Ok(r) => r,
            Err(e) => (Reply::Error(e.kind(), e.message().to_string()), None),
        }
    }

    fn act(
        &self,
        x: &SessionEntry,
        st: &mut HandleState,
        req: Request,
    ) -> Result<(Reply, Option<OwnedFd>)> {
        let c = &x.handle.container;
        let target = |id: Option<ContainerId>| -> Result<Container> {
            match id {
                None => Ok(c.clone()),
                Some(id) => Ok(c.descendant(id)?),
            }
        };
        Ok(match req {
            Request::Info { target: id } => {
                let t = target(id)?;
                (Reply::Info(Box::new(self.info(&t))), None)
            }
            Request::CreateChild { name, attrs } => {
                let mut a = Attributes::default();
                wire::apply_pairs(&mut a, &attrs)?;
                if a.enforcement != Enforcement::User
                    && !self.shared.config.allow_enforcement_changes
                {
                    return Err(enforcement_refused(c.id()));
                }
                let child = c.create_child(&name, a)?;
                let fd = self.issue(&child)?;
                (Reply::Handle(child.id()), Some(fd))
            }
            Request::SetAttrs { target: id, attrs } => {
                let t = target(id)?;
                let mut a = t.attrs();
                let before = a.enforcement;
                wire::apply_pairs(&mut a, &attrs)?;
                if a.enforcement != before && !self.shared.config.allow_enforcement_changes {
                    return Err(enforcement_refused(t.id()));
                }
                c.set_attrs(&t, a)?;
                (Reply::Ok, None)
            }
            Request::OpenMeter => {
                if st.page.is_none() {
                    st.page = Some(
                        Page::new(c.id()).map_err(|e| Error::io("make a page of counters", e))?,
                    );
                }
                let fd = st
                    .page
                    .as_ref()
                    .expect("just made")
                    .fd()
                    .try_clone_to_owned()
                    .map_err(|e| Error::io("share the page of counters", e))?;
                (Reply::Meter, Some(fd))
            }
            Request::BindThread { tid } => {
                let e = self.enforcer()?;
                // The thread must be the calling process's: its directory under the process.
                if tid <= 0
                    || std::fs::symlink_metadata(format!("/proc/{}/task/{tid}", x.pid)).is_err()
                {
                    return Err(Error::new(
                        ErrorKind::PermissionDenied,
                        format!(
                            "bind thread {tid}: not a thread of the calling process {}",
                            x.pid
                        ),
                    ));
                }
                e.bind_thread(x.pid, tid, c)?;
                (Reply::Ok, None)
            }
            Request::BindProcess => {
                self.enforcer()?.bind_process(x.pid, c)?;
                (Reply::Ok, None)
            }
            Request::Charge(_) | Request::OpenSession => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    "charges and sessions go on the handle itself, not on a session",
                ));
            }
        })
    }

    fn enforcer(&self) -> Result<&Arc<dyn Enforcer>> {
        self.shared.enforcer.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::NotEnforced,
                "the owner has no kernel enforcement (no cgroups): threads cannot be bound",
            )
        })
    }

    fn info(&self, c: &Container) -> Info {
        Info {
            id: c.id(),
            parent: c.parent_id(),
            name: c.name().to_string(),
            attrs: c.attrs(),
            usage: c.usage(),
            usage_subtree: c.usage_subtree(),
            enforcement: match &self.shared.enforcer {
                Some(e) => e.describe(c),
                None => "user-level only: the owner has no kernel backend, so processes are \
                         not limited by the kernel"
                    .to_string(),
            },
        }
    }
}

fn enforcement_refused(id: ContainerId) -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "change enforcement on container {id}: kernel enforcement is set by the server's \
             configuration, not through a handle"
        ),
    )
}

/// The thread of [`Owner::spawn`]: stops and joins it when dropped.
#[derive(Debug)]
pub struct Server {
    owner: Owner,
    stop: Arc<AtomicBool>,
    stop_fd: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// The owner served.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = rustix::io::write(&self.stop_fd, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = epoll::delete(&self.owner.shared.epoll, &self.stop_fd);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
    }
}
