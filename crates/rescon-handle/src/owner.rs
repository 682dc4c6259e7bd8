//! The owner's side: issuing handles on containers and serving them.
//!
//! An [`Owner`] keeps a table of the handles it issued. Each is the owner's end of a socket
//! pair (the other end is the handle) and an unprivileged [`rescon::Container`]: the rights of
//! the holder are exactly those of that model handle, checked by the model on every call.
//!
//! # Who wakes the owner
//!
//! Charges do not. A handle's socket is watched for its close only; the charges queued on it
//! are read when the owner harvests ([`Owner::harvest`], every [`Config::harvest_interval`]),
//! before it answers a call on the handle, and after the close. Waking a sleeping thread on
//! another CPU costs the sender several microseconds on a virtual machine (measured: a
//! `sendmsg` to a socket watched by a thread asleep in `epoll_wait` took 6 us, 1.4 us with
//! nobody woken), more than the charge itself; charges are accounting, not requests, and are
//! cheaper read in batches. What a holder waits for does wake the owner: a call (on a
//! session) and a close.
//!
//! # Sessions
//!
//! Calls go on a session, a connection of the calling process to the owner's listening
//! socket (an abstract Unix address). The holder finds the address from its handle: the
//! owner's end of every handle is bound to `rescon-handle/<owner>/<handle>`, and the listener
//! is `rescon-handle/<owner>`. The first message on a connection must carry the handle's
//! descriptor; the owner takes the session for that handle only if the descriptor is one of
//! the handles it issued (the kernel's socket cookie, the same in every process, says which):
//! a connection proves nothing, a descriptor does. The connection's `SO_PEERCRED` is the
//! calling process, whose threads alone a call may bind.
//!
//! # Driving it
//!
//! The sockets sit in one epoll set, so the owner is driven by whatever loop the process has:
//!
//! - [`Owner::spawn`] starts a thread of its own that serves and harvests (the simple way);
//! - or an event loop registers [`Owner::poll_fd`] (readable when something waits to be
//!   served) and calls [`Owner::serve`] with a zero timeout when it is, and
//!   [`Owner::harvest`] every [`Config::harvest_interval`].
//!
//! Nothing here depends on a runtime. Serving takes the handle's own lock, never the table's
//! for longer than a lookup, so a slow call (a thread moved between cgroups can take
//! milliseconds) holds up only its own handle.
//!
//! # Release
//!
//! When every copy of a handle's descriptor is closed, in any process (a holder that dies
//! closes its copies), the owner reads what is still queued on the socket (charges sent
//! before the close count), harvests the handle's page, closes its sessions, and drops its
//! reference to the container. The container is then released by the model's rules when
//! nothing else holds it: its usage goes to its parent's, so nothing charged is lost.
//!
//! # Costs
//!
//! A handle costs the owner two descriptors (the pair's ends until the handle is passed on:
//! then one), two epoll registrations, an abstract address and about 300 bytes; a session one
//! descriptor per process that makes calls; a meter a page and one descriptor. Handles,
//! sessions and connections not yet proven are bounded ([`Config`]).

use crate::error::{Error, ErrorKind, Result};
use crate::meter::Page;
use crate::sys;
use crate::wire::{self, Info, MAX_MESSAGE, Reply, Request};
use rescon::{Attributes, Container, ContainerId, Enforcement};
use rustix::event::epoll;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use slab::Slab;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
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
    /// holder or an operator (for instance `kernel (cgroups)`).
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
    /// The most connections to the listener that have not yet shown a handle.
    pub max_unproven: usize,
    /// How often charges and pages of counters are read ([`Owner::spawn`]'s thread does it;
    /// an event loop driving the owner calls [`Owner::harvest`] at this interval). It bounds
    /// how late a charge reaches the container's usage, and how long a holder that fills its
    /// socket with charges (some hundreds) waits to send more.
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
            max_unproven: 256,
            harvest_interval: Duration::from_millis(10),
            allow_enforcement_changes: false,
        }
    }
}

/// What an owner is serving now, and what it refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Handles alive.
    pub handles: usize,
    /// Sessions open (connections proven by a handle).
    pub sessions: usize,
    /// Pages of counters mapped.
    pub meters: usize,
    /// Handles released (their last descriptor closed) since the start.
    pub released: u64,
    /// Messages and connections refused as malformed or unproven since the start.
    pub malformed: u64,
}

/// Tokens of the epoll set's fixed members (slab keys never reach them).
const WAKE: u64 = u64::MAX;
const LISTENER: u64 = u64::MAX - 1;
/// Messages served per session per turn, so that one busy holder cannot keep the others
/// waiting (the epoll set is level-triggered: the rest waits for the next turn).
const BATCH: usize = 64;
/// Charges read from one handle at a time: every one a holder can have queued (a socket's
/// buffer holds some hundreds), without letting a flood hold the owner forever.
const DRAIN: usize = 4096;

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
    /// Handles' closes, sessions, the listener: what wakes the owner.
    epoll: OwnedFd,
    /// Handles with charges queued: looked at when harvesting, never waited on.
    charges: OwnedFd,
    listener: OwnedFd,
    /// An eventfd in `epoll`: written to wake a thread waiting in [`Owner::serve`].
    wake: OwnedFd,
    /// Whether the owner's thread waits with no handle to harvest (and so no timeout): a new
    /// handle must wake it.
    idle: AtomicBool,
    /// `rescon-handle/<random>`: the listener's address and the prefix of the handles'.
    name: String,
    table: Mutex<Table>,
    /// Handles with a page of counters, harvested every interval.
    metered: Mutex<Vec<Arc<HandleEntry>>>,
    enforcer: Option<Arc<dyn Enforcer>>,
    config: Config,
    released: AtomicU64,
    malformed: AtomicU64,
}

impl Shared {
    fn kick(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owner")
            .field("name", &self.name)
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
    /// The handles by the cookie of their holders' end.
    by_cookie: HashMap<u64, Arc<HandleEntry>>,
    handles: usize,
    sessions: usize,
    unproven: usize,
    /// Unproven connections, oldest first (tokens of entries since proven or gone are skipped
    /// when met).
    unproven_order: std::collections::VecDeque<u64>,
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
    cookie: u64,
    container: Container,
    state: Mutex<HandleState>,
}

#[derive(Default)]
struct HandleState {
    page: Option<Page>,
    sessions: Vec<u64>,
    released: bool,
}

/// A connection to the listener: unproven until its first message shows a handle.
struct SessionEntry {
    token: u64,
    sock: OwnedFd,
    handle: OnceLock<Arc<HandleEntry>>,
    /// The process that connected (`SO_PEERCRED`): the one whose threads calls may bind.
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
        let io = |what: &'static str| move |e: std::io::Error| Error::io(what, e);
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| Error::io("create the owner's epoll set", e.into()))?;
        let charges = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| Error::io("create the owner's epoll set", e.into()))?;
        let name = format!(
            "{}{:016x}",
            wire::ADDRESS_PREFIX,
            sys::random_u64().map_err(io("name the owner"))?
        );
        let listener = sys::listener(name.as_bytes()).map_err(io("listen for sessions"))?;
        epoll::add(
            &epoll,
            &listener,
            epoll::EventData::new_u64(LISTENER),
            epoll::EventFlags::IN,
        )
        .map_err(|e| Error::io("watch the listener", e.into()))?;
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| Error::io("create the owner's wake event", e.into()))?;
        epoll::add(
            &epoll,
            &wake,
            epoll::EventData::new_u64(WAKE),
            epoll::EventFlags::IN,
        )
        .map_err(|e| Error::io("watch the wake event", e.into()))?;
        Ok(Owner {
            shared: Arc::new(Shared {
                epoll,
                charges,
                listener,
                wake,
                idle: AtomicBool::new(false),
                name,
                table: Mutex::new(Table::default()),
                metered: Mutex::new(Vec::new()),
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
        let s = &self.shared;
        let (ours, theirs) = sys::seqpacket_pair().map_err(|e| Error::io("issue a handle", e))?;
        let cookie = sys::cookie(theirs.as_fd()).map_err(|e| Error::io("issue a handle", e))?;
        let mut t = lock(&s.table);
        if t.handles >= s.config.max_handles {
            return Err(Error::new(
                ErrorKind::Limit,
                format!(
                    "the owner serves {} handles, its limit (owner::Config::max_handles)",
                    t.handles
                ),
            ));
        }
        let (key, generation) = next_slot(&mut t);
        let tok = token(key, generation);
        // The holder finds the listener from this address (`getpeername` on its end).
        sys::bind_abstract(ours.as_fd(), format!("{}/{tok:x}", s.name).as_bytes())
            .map_err(|e| Error::io("name a handle", e))?;
        // Its close wakes the owner; its charges are only noted, in the other set.
        epoll::add(
            &s.epoll,
            &ours,
            epoll::EventData::new_u64(tok),
            epoll::EventFlags::RDHUP,
        )
        .map_err(|e| Error::io("watch a handle", e.into()))?;
        if let Err(e) = epoll::add(
            &s.charges,
            &ours,
            epoll::EventData::new_u64(tok),
            epoll::EventFlags::IN,
        ) {
            let _ = epoll::delete(&s.epoll, &ours);
            return Err(Error::io("watch a handle", e.into()));
        }
        let h = Arc::new(HandleEntry {
            token: tok,
            sock: ours,
            cookie,
            container: c.unprivileged(),
            state: Mutex::new(HandleState::default()),
        });
        t.by_cookie.insert(cookie, h.clone());
        t.handles += 1;
        t.slab.insert(Slot {
            generation,
            entry: Entry::Handle(h),
        });
        drop(t);
        if s.idle.swap(false, Ordering::SeqCst) {
            s.kick();
        }
        Ok(theirs)
    }

    /// Removes entries from the table and the epoll sets. Their sockets close when the last
    /// reference goes (a turn serving them may still hold one).
    fn remove(&self, tokens: &[u64]) {
        let s = &self.shared;
        let mut gone = Vec::with_capacity(tokens.len());
        {
            let mut t = lock(&s.table);
            for &tok in tokens {
                let (key, generation) = split(tok);
                if t.slab.get(key).is_none_or(|x| x.generation != generation) {
                    continue;
                }
                let slot = t.slab.remove(key);
                match &slot.entry {
                    Entry::Handle(h) => {
                        let _ = epoll::delete(&s.epoll, &h.sock);
                        let _ = epoll::delete(&s.charges, &h.sock);
                        t.by_cookie.remove(&h.cookie);
                        t.handles -= 1;
                    }
                    Entry::Session(x) => {
                        let _ = epoll::delete(&s.epoll, &x.sock);
                        if x.handle.get().is_some() {
                            t.sessions -= 1;
                        } else {
                            t.unproven -= 1;
                        }
                    }
                }
                gone.push(slot);
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

    /// The owner's epoll set: readable when [`serve`](Owner::serve) has work (a call, a
    /// connection, a handle closed). Register it in an event loop to drive the owner without a
    /// thread of its own.
    pub fn poll_fd(&self) -> BorrowedFd<'_> {
        self.shared.epoll.as_fd()
    }

    /// Serves what is ready: waits up to `timeout` (`None`: until something is ready) for
    /// calls, connections and closes, then serves each. Returns how many were served. With a
    /// zero timeout it never blocks. Charges wait for [`harvest`](Owner::harvest).
    pub fn serve(&self, timeout: Option<Duration>) -> Result<usize> {
        let events = wait(&self.shared.epoll, timeout)?;
        let mut served = 0;
        for tok in events {
            match tok {
                WAKE => {
                    let mut b = [0u8; 8];
                    let _ = rustix::io::read(&self.shared.wake, &mut b);
                    continue;
                }
                LISTENER => self.accept(),
                tok => match self.lookup(tok) {
                    Some(Entry::Handle(h)) => self.serve_handle(&h),
                    Some(Entry::Session(x)) => self.serve_session(&x),
                    None => continue,
                },
            }
            served += 1;
        }
        Ok(served)
    }

    /// Reads the charges queued on every handle and every page of counters, and adds them to
    /// the containers. Call it every [`Config::harvest_interval`] (the thread of
    /// [`spawn`](Owner::spawn) does).
    pub fn harvest(&self) {
        // Bounded, so that holders charging as fast as this thread reads cannot keep it here.
        for _ in 0..HARVEST_ROUNDS {
            let Ok(ready) = wait(&self.shared.charges, Some(Duration::ZERO)) else {
                break;
            };
            let n = ready.len();
            for tok in ready {
                if let Some(Entry::Handle(h)) = self.lookup(tok) {
                    let st = lock(&h.state);
                    if !st.released && self.drain(&h) {
                        self.release(&h, st);
                    }
                }
            }
            // A full batch may have left more behind.
            if n < EVENTS {
                break;
            }
        }
        let metered: Vec<Arc<HandleEntry>> = lock(&self.shared.metered).clone();
        for h in metered {
            let mut st = lock(&h.state);
            if let Some(p) = st.page.as_mut() {
                p.harvest().apply(&h.container);
            }
        }
    }

    /// What the owner serves now.
    pub fn stats(&self) -> Stats {
        let (handles, sessions) = {
            let t = lock(&self.shared.table);
            (t.handles, t.sessions)
        };
        Stats {
            handles,
            sessions,
            meters: lock(&self.shared.metered).len(),
            released: self.shared.released.load(Ordering::Relaxed),
            malformed: self.shared.malformed.load(Ordering::Relaxed),
        }
    }

    /// Starts a thread that serves the handles and harvests their charges until the returned
    /// [`Server`] is dropped (or stopped). Only one thread (or event loop) should drive an
    /// owner.
    pub fn spawn(&self, name: &str) -> Result<Server> {
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
            thread: Some(thread),
        })
    }

    fn run(&self, stop: &AtomicBool) {
        let s = &self.shared;
        let every = s.config.harvest_interval.max(Duration::from_millis(1));
        let mut next = Instant::now() + every;
        while !stop.load(Ordering::Acquire) {
            if self.stats().handles == 0 {
                // Nothing to harvest: wait for a call, a close or a new handle, with no tick
                // (`issue` wakes this thread; the flag is set before the last look, so a handle
                // issued in between is seen either here or by `issue`).
                s.idle.store(true, Ordering::SeqCst);
                if self.stats().handles == 0 && !stop.load(Ordering::Acquire) {
                    let _ = self.serve(None);
                }
                s.idle.store(false, Ordering::SeqCst);
                next = Instant::now() + every;
                continue;
            }
            let wait = next.saturating_duration_since(Instant::now());
            // An error of epoll_wait on a valid set is not expected; keep serving.
            let _ = self.serve(Some(wait));
            if Instant::now() >= next {
                self.harvest();
                next = Instant::now() + every;
            }
        }
        // Charges sent before the stop are counted.
        self.harvest();
    }

    /// Accepts connections to the listener; each must show a handle in its first message.
    ///
    /// A holder sends its handle right after it connects, so the first message is usually
    /// there when the connection is accepted, and is served at once. Connections that show
    /// nothing are bounded ([`Config::max_unproven`]): beyond, the oldest is closed, so that
    /// connections made to fill the table cannot keep holders out.
    fn accept(&self) {
        let s = &self.shared;
        while let Ok(Some(sock)) = sys::accept(s.listener.as_fd()) {
            let Ok(cred) = rustix::net::sockopt::socket_peercred(&sock) else {
                continue;
            };
            let mut evict = None;
            let x = {
                let mut t = lock(&s.table);
                if t.unproven >= s.config.max_unproven.max(1) {
                    evict = oldest_unproven(&mut t);
                }
                let (key, generation) = next_slot(&mut t);
                let tok = token(key, generation);
                if epoll::add(
                    &s.epoll,
                    &sock,
                    epoll::EventData::new_u64(tok),
                    epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
                )
                .is_err()
                {
                    continue;
                }
                let x = Arc::new(SessionEntry {
                    token: tok,
                    sock,
                    handle: OnceLock::new(),
                    pid: cred.pid.as_raw_nonzero().get(),
                });
                t.unproven += 1;
                t.unproven_order.push_back(tok);
                // Most connections are proven at once: forget them now and then, so the list
                // stays as short as the connections it is for.
                if t.unproven_order.len() > 2 * s.config.max_unproven + 16 {
                    let order = std::mem::take(&mut t.unproven_order);
                    t.unproven_order = order.into_iter().filter(|k| is_unproven(&t, *k)).collect();
                }
                t.slab.insert(Slot {
                    generation,
                    entry: Entry::Session(x.clone()),
                });
                x
            };
            if let Some(old) = evict {
                self.malformed();
                self.remove(&[old]);
            }
            self.serve_session(&x);
        }
    }

    /// A handle's socket hung up: every copy of it is closed.
    fn serve_handle(&self, h: &Arc<HandleEntry>) {
        let mut st = lock(&h.state);
        if st.released {
            return;
        }
        // Once every copy is closed nothing more can come: read all that is queued.
        let closed = loop {
            if self.drain(h) {
                break true;
            }
            if !sys::hung_up(h.sock.as_fd()) {
                break false;
            }
        };
        if let Some(p) = st.page.as_mut() {
            p.harvest().apply(&h.container);
        }
        if closed {
            self.release(h, st);
        }
    }

    /// Reads the charges queued on a handle's socket (up to [`DRAIN`]). Returns whether the
    /// handle was closed (every copy of it, in every process) and all of them read.
    fn drain(&self, h: &HandleEntry) -> bool {
        let mut buf = [0u8; MAX_MESSAGE];
        for _ in 0..DRAIN {
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
                // Calls belong on a session; descriptors that came with anything else are
                // closed as `r` drops.
                Ok(_) | Err(_) => self.malformed(),
            }
        }
        false
    }

    fn malformed(&self) {
        self.shared.malformed.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops the owner's reference to a closed handle, after its last charges.
    fn release(&self, h: &Arc<HandleEntry>, mut st: MutexGuard<'_, HandleState>) {
        st.released = true;
        let mut tokens = std::mem::take(&mut st.sessions);
        tokens.push(h.token);
        let metered = match st.page.take() {
            Some(mut p) => {
                p.harvest().apply(&h.container);
                true
            }
            None => false,
        };
        drop(st);
        if metered {
            lock(&self.shared.metered).retain(|m| !Arc::ptr_eq(m, h));
        }
        self.remove(&tokens);
        self.shared.released.fetch_add(1, Ordering::Relaxed);
    }

    /// Serves a session's calls (its first message must show its handle).
    fn serve_session(&self, x: &Arc<SessionEntry>) {
        let mut buf = [0u8; MAX_MESSAGE];
        for _ in 0..BATCH {
            let r = match sys::recv(x.sock.as_fd(), &mut buf, false) {
                Ok(Some(r)) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Ok(None) | Err(_) => return self.close_session(x),
            };
            let Some(h) = x.handle.get() else {
                // Unproven: this message must be the handle, or the connection goes.
                let decoded = wire::decode_request(&buf[..r.len]);
                let proven = match (decoded, r.fds.as_slice()) {
                    (Ok((_, Request::OpenSession)), [fd]) if !r.truncated => self.prove(x, fd),
                    _ => false,
                };
                if !proven {
                    self.malformed();
                    return self.close_session(x);
                }
                continue;
            };
            let (tag, reply, fd) = if r.truncated {
                self.malformed();
                let msg = format!("a call longer than {MAX_MESSAGE} bytes");
                (0, Reply::Error(ErrorKind::Protocol, msg), None)
            } else {
                match wire::decode_request(&buf[..r.len]) {
                    Ok((tag, req)) => {
                        let (reply, fd) = self.call(x, h, req);
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

    /// Takes a connection as a session of the handle `fd` is, if it is one of ours.
    fn prove(&self, x: &Arc<SessionEntry>, fd: &OwnedFd) -> bool {
        let Ok(cookie) = sys::cookie(fd.as_fd()) else {
            return false;
        };
        let h = {
            let t = lock(&self.shared.table);
            match t.by_cookie.get(&cookie) {
                Some(h) => h.clone(),
                None => return false,
            }
        };
        let mut st = lock(&h.state);
        if st.released || st.sessions.len() >= self.shared.config.max_sessions_per_handle {
            return false;
        }
        st.sessions.push(x.token);
        drop(st);
        let _ = x.handle.set(h);
        let mut t = lock(&self.shared.table);
        t.unproven -= 1;
        t.sessions += 1;
        true
    }

    fn close_session(&self, x: &Arc<SessionEntry>) {
        if let Some(h) = x.handle.get() {
            lock(&h.state).sessions.retain(|t| *t != x.token);
        }
        self.remove(&[x.token]);
    }

    /// Answers one call: the reply, and a descriptor to send with it.
    fn call(
        &self,
        x: &SessionEntry,
        h: &Arc<HandleEntry>,
        req: Request,
    ) -> (Reply, Option<OwnedFd>) {
        let mut st = lock(&h.state);
        // Charges the holder sent before this call are counted before it is answered, so a
        // holder reads its own charges back.
        let closed = !st.released && self.drain(h);
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
        match self.act(x, h, &mut st, req) {
            Ok(r) => r,
            Err(e) => (Reply::Error(e.kind(), e.message().to_string()), None),
        }
    }

    fn act(
        &self,
        x: &SessionEntry,
        h: &Arc<HandleEntry>,
        st: &mut HandleState,
        req: Request,
    ) -> Result<(Reply, Option<OwnedFd>)> {
        let c = &h.container;
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
                    lock(&self.shared.metered).push(h.clone());
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
            // The charges were read before the call was answered (see `call`).
            Request::Flush => (Reply::Ok, None),
            Request::Charge(_) | Request::OpenSession => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    "charges go on the handle itself, and a session is opened once",
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

/// Whether `tok` names a connection that has not shown a handle yet.
fn is_unproven(t: &Table, tok: u64) -> bool {
    let (key, generation) = split(tok);
    t.slab.get(key).is_some_and(|slot| {
        slot.generation == generation
            && matches!(&slot.entry, Entry::Session(x) if x.handle.get().is_none())
    })
}

/// The oldest connection still unproven, taken off the list.
fn oldest_unproven(t: &mut Table) -> Option<u64> {
    while let Some(tok) = t.unproven_order.pop_front() {
        if is_unproven(t, tok) {
            return Some(tok);
        }
    }
    None
}

/// The next slot's key and a fresh generation (the slot is filled by the caller, under the
/// same lock).
fn next_slot(t: &mut Table) -> (usize, u32) {
    t.generation = t.generation.wrapping_add(1);
    (t.slab.vacant_key(), t.generation)
}

/// Events per wait.
const EVENTS: usize = 64;
/// Waits on the set of handles with charges per harvest (each gives up to [`EVENTS`]).
const HARVEST_ROUNDS: usize = 1024;

/// Waits on an epoll set and returns the tokens ready.
fn wait(set: &OwnedFd, timeout: Option<Duration>) -> Result<Vec<u64>> {
    let mut events = Vec::with_capacity(EVENTS);
    let ts = timeout.map(|d| rustix::time::Timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    });
    match epoll::wait(
        set,
        rustix::buffer::spare_capacity(&mut events),
        ts.as_ref(),
    ) {
        Ok(_) => Ok(events.iter().map(|e| e.data.u64()).collect()),
        Err(rustix::io::Errno::INTR) => Ok(Vec::new()),
        Err(e) => Err(Error::io("wait for handles", e.into())),
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
        self.owner.shared.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_key_and_generation() {
        for (k, g) in [(0, 1), (5, u32::MAX), (0xffff_fffe, 7)] {
            assert_eq!(split(token(k, g)), (k, g));
            assert!(token(k, g) != WAKE && token(k, g) != LISTENER);
        }
    }
}
