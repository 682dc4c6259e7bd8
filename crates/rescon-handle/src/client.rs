//! The holder's side: a [`Handle`] on a container owned by another process.

use crate::error::{Error, ErrorKind, Result};
use crate::meter::Meter;
use crate::sys;
use crate::wire::{self, Charge, Info, MAX_MESSAGE, Reply, Request};
use rescon::{Attributes, ContainerId, Usage};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// How long a call waits for the owner's answer unless told otherwise
/// ([`Handle::set_timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on a container owned by another process: a file descriptor, and the only way in.
///
/// The descriptor is one end of a `SOCK_SEQPACKET` socket pair whose other end the owner
/// serves. It behaves as a file descriptor does: [`inherit`](crate::pass::inherit) passes it to
/// a child across `execve`, [`send_to`](Handle::send_to) passes it to any process over a Unix
/// socket (`SCM_RIGHTS`), and when the last copy in any process is closed (or the last process
/// holding it dies) the owner sees the close and releases its reference to the container: the
/// container goes by the model's rules, its usage kept in its parent.
///
/// What a handle may do is what an unprivileged handle of the model may do on its container
/// ([`rescon::container`]): read its usage and attributes and its descendants', create
/// children (each comes with its own handle), lower its own attributes and change its
/// descendants', charge usage, and bind the caller's threads to the container's cgroups where
/// the owner enforces it in the kernel. The owner checks every call; nothing else of the
/// owner's namespace can be reached.
///
/// Charging is one message with no answer that wakes nobody ([`charge`](Handle::charge),
/// well under a microsecond) or one atomic add on a shared page ([`meter`](Handle::meter), a
/// few nanoseconds). Other operations are calls answered by the owner on a session private to
/// the calling process: a connection to the owner's listening socket (an abstract Unix
/// address found from the handle), opened at the first call and proven by sending the handle
/// on it.
///
/// ```no_run
/// use rescon_handle::{Charge, Handle};
/// # fn main() -> Result<(), rescon_handle::Error> {
/// // A CGI or FastCGI program started by rescon-httpd with RESCON_HANDLE set.
/// let handle = Handle::from_env()?.expect("run me from rescon-httpd");
/// handle.charge(Charge { requests: 1, bytes_out: 512, ..Default::default() })?;
/// let info = handle.info()?;
/// println!("container {} ({}) used {} ns", info.id, info.name, info.usage.cpu_ns);
/// // A child for a sub-task, capped below the container's own limits.
/// let part = handle.create_child("thumbnail", &[("cpu_limit", "10%")])?;
/// // Raising its own limit is refused by the owner.
/// assert!(part.set(&[("cpu_limit", "90%")]).is_err());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Handle {
    fd: OwnedFd,
    session: Mutex<Option<Session>>,
    meter: OnceLock<Meter>,
    timeout: Duration,
}

/// A socket on which the owner answers calls from one process.
#[derive(Debug)]
struct Session {
    sock: OwnedFd,
    /// The process that opened it: a child forked with the handle opens its own.
    pid: i32,
    tag: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The session is either usable or dropped on error: a panic cannot leave it half-made.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AsFd for Handle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Handle> for OwnedFd {
    fn from(h: Handle) -> OwnedFd {
        h.fd
    }
}

impl Handle {
    /// A handle from its descriptor (received, inherited, or made by an owner in this
    /// process). Fails with [`ErrorKind::Protocol`] if the descriptor is not a Unix
    /// `SOCK_SEQPACKET` socket.
    pub fn from_fd(fd: OwnedFd) -> Result<Handle> {
        if !sys::is_seqpacket_unix(fd.as_fd()) {
            return Err(Error::new(
                ErrorKind::Protocol,
                "not a container handle: a handle is a Unix SOCK_SEQPACKET socket",
            ));
        }
        Ok(Handle::unchecked(fd))
    }

    /// The handle this process was started with: the descriptor named by the environment
    /// variable [`ENV`](crate::pass::ENV) (`RESCON_HANDLE`), which
    /// [`inherit`](crate::pass::inherit) sets. `Ok(None)` without the variable. The descriptor
    /// is made close-on-exec again, so it goes no further unless passed on; it can be taken
    /// once per process.
    pub fn from_env() -> Result<Option<Handle>> {
        crate::pass::take_env_fd()?.map(Handle::from_fd).transpose()
    }

    /// Sets how long calls wait for the owner's answer (default [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&mut self, d: Duration) {
        self.timeout = d;
        *lock(&self.session) = None;
    }

    /// Another descriptor for the same handle (`dup`): the container is released when every
    /// copy is closed.
    pub fn try_clone(&self) -> Result<Handle> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| Error::io("duplicate the handle", e))?;
        Handle::from_fd(fd)
    }

    /// Sends this handle to another process over a Unix socket (`SCM_RIGHTS`); the receiver
    /// takes it with [`recv_from`](Handle::recv_from). This copy stays open.
    pub fn send_to(&self, sock: impl AsFd) -> Result<()> {
        crate::pass::send_fd(sock.as_fd(), self.fd.as_fd())
    }

    /// Receives a handle sent with [`send_to`](Handle::send_to) (or by an owner with
    /// [`pass::send_fd`](crate::pass::send_fd)), waiting for it. The message that carries it
    /// says it is a handle: the descriptor is not checked again (two system calls saved on
    /// the way a handle moves between processes; one that is not a handle fails at its first
    /// use).
    pub fn recv_from(sock: impl AsFd) -> Result<Handle> {
        Ok(Handle::unchecked(crate::pass::recv_fd(sock.as_fd())?))
    }

    fn unchecked(fd: OwnedFd) -> Handle {
        Handle {
            fd,
            session: Mutex::new(None),
            meter: OnceLock::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Charges usage to the container: one message to the owner, no answer waited for and
    /// nobody woken. The owner reads charges when it harvests (every
    /// [`harvest_interval`](crate::owner::Config::harvest_interval)), before it answers a call
    /// on the handle (so a holder reads its own charges back), and after the handle's last
    /// descriptor closes: a charge sent before the close is counted. A holder that sends some
    /// hundreds of charges within one harvest interval fills the socket; the next charge then
    /// asks the owner to read them (one call). Charge that often through the
    /// [`meter`](Handle::meter).
    pub fn charge(&self, c: Charge) -> Result<()> {
        let msg = wire::encode_request(0, &Request::Charge(c));
        match sys::send(self.fd.as_fd(), &msg, &[], false) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // The socket is full of charges the owner has not read yet: ask it to read
                // them now (a call wakes it), rather than wait for its next harvest; where no
                // call can be made, wait for room.
                let _ = self.call(Request::Flush);
                sys::send(self.fd.as_fd(), &msg, &[], true)
            }
            r => r,
        }
        .map_err(|e| Error::io("charge", e))
    }

    /// The page of counters shared with the owner (mapped at the first call): charging
    /// through it is one atomic add. See [`Meter`].
    pub fn meter(&self) -> Result<&Meter> {
        if let Some(m) = self.meter.get() {
            return Ok(m);
        }
        let (reply, mut fds) = self.call(Request::OpenMeter)?;
        expect(&reply, |r| matches!(r, Reply::Meter), "a meter")?;
        let fd = fds
            .pop()
            .ok_or_else(|| Error::new(ErrorKind::Protocol, "the owner sent no meter"))?;
        let m = Meter::from_fd(fd)?;
        Ok(self.meter.get_or_init(|| m))
    }

    /// The container: id, parent, name, attributes, usage and the enforcement in force.
    pub fn info(&self) -> Result<Info> {
        self.info_call(None)
    }

    /// A descendant of the container, by id. Anything outside the handle's subtree (a
    /// sibling, the parent) is refused with [`ErrorKind::PermissionDenied`].
    pub fn info_of(&self, id: ContainerId) -> Result<Info> {
        self.info_call(Some(id))
    }

    fn info_call(&self, target: Option<ContainerId>) -> Result<Info> {
        match self.call(Request::Info { target })?.0 {
            Reply::Info(i) => Ok(*i),
            r => Err(unexpected(&r, "container info")),
        }
    }

    /// The container's id.
    pub fn id(&self) -> Result<ContainerId> {
        Ok(self.info()?.id)
    }

    /// The container's own usage (what this and every other holder charged, and what the
    /// owner charged itself).
    pub fn usage(&self) -> Result<Usage> {
        Ok(self.info()?.usage)
    }

    /// The container's attributes.
    pub fn attrs(&self) -> Result<Attributes> {
        Ok(self.info()?.attrs)
    }

    /// Makes a child of the container with `key=value` attributes over the defaults (the
    /// syntax of [`rescon::Attributes::set`]), and returns a handle to it: the child lives
    /// while that handle (or the owner) holds it.
    pub fn create_child(&self, name: &str, attrs: &[(&str, &str)]) -> Result<Handle> {
        let req = Request::CreateChild {
            name: name.to_string(),
            attrs: owned_pairs(attrs),
        };
        let (reply, mut fds) = self.call(req)?;
        expect(&reply, |r| matches!(r, Reply::Handle(_)), "a handle")?;
        let fd = fds
            .pop()
            .ok_or_else(|| Error::new(ErrorKind::Protocol, "the owner sent no handle"))?;
        Handle::from_fd(fd)
    }

    /// Changes the container's own attributes, `key=value` in order over the current ones.
    /// Only lowering is allowed (a smaller share, weight, priority or limit, a lower class):
    /// raising is refused with [`ErrorKind::PermissionDenied`], as in the model.
    pub fn set(&self, attrs: &[(&str, &str)]) -> Result<()> {
        self.set_call(None, attrs)
    }

    /// Changes a descendant's attributes (any change, as the model allows an ancestor).
    pub fn set_of(&self, id: ContainerId, attrs: &[(&str, &str)]) -> Result<()> {
        self.set_call(Some(id), attrs)
    }

    fn set_call(&self, target: Option<ContainerId>, attrs: &[(&str, &str)]) -> Result<()> {
        let req = Request::SetAttrs {
            target,
            attrs: owned_pairs(attrs),
        };
        let (reply, _) = self.call(req)?;
        expect(&reply, |r| matches!(r, Reply::Ok), "ok")
    }

    /// Binds the calling thread to the container's cgroups, so the kernel charges and limits
    /// its CPU there. Fails with [`ErrorKind::NotEnforced`] where the owner does not enforce
    /// the container in the kernel. A move between cgroups can take milliseconds: bind a
    /// thread once, not per request.
    pub fn bind_current_thread(&self) -> Result<()> {
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        let (reply, _) = self.call(Request::BindThread { tid })?;
        expect(&reply, |r| matches!(r, Reply::Ok), "ok")
    }

    /// Moves this whole process (every thread, and the children it forks from now on) into
    /// the container's cgroups; see [`bind_current_thread`](Handle::bind_current_thread).
    pub fn bind_process(&self) -> Result<()> {
        let (reply, _) = self.call(Request::BindProcess)?;
        expect(&reply, |r| matches!(r, Reply::Ok), "ok")
    }

    /// One call: a request on this process's session and the owner's answer, with the
    /// descriptors it carries. An error answer becomes an `Err` of its kind.
    fn call(&self, req: Request) -> Result<(Reply, Vec<OwnedFd>)> {
        let mut guard = lock(&self.session);
        let pid = rustix::process::getpid().as_raw_nonzero().get();
        let mut fresh = false;
        if guard.as_ref().is_none_or(|s| s.pid != pid) {
            // None yet, or one inherited from the parent across fork: this process's own.
            *guard = Some(self.open_session(pid)?);
            fresh = true;
        }
        let mut result = self.exchange_on(&mut guard, &req);
        if fresh
            && result
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::Released)
        {
            // A new session closed before its first answer: the owner may have dropped it
            // among connections that had shown nothing yet (it keeps a bounded number). One
            // more try tells that from a released handle.
            *guard = Some(self.open_session(pid)?);
            result = self.exchange_on(&mut guard, &req);
        }
        let (reply, fds) = result?;
        match reply {
            Reply::Error(kind, msg) => Err(Error::new(kind, msg)),
            r => Ok((r, fds)),
        }
    }

    fn exchange_on(
        &self,
        guard: &mut MutexGuard<'_, Option<Session>>,
        req: &Request,
    ) -> Result<(Reply, Vec<OwnedFd>)> {
        let s = guard.as_mut().expect("a session");
        s.tag = s.tag.wrapping_add(1).max(1);
        let result = exchange(&s.sock, s.tag, req);
        if result.is_err() {
            // A session that failed once (a timeout whose answer may still come, a closed
            // owner) is not trusted again.
            **guard = None;
        }
        result
    }

    /// Opens this process's session: a connection to the owner's listener (its address
    /// derived from the owner's end of the handle), proven by sending the handle on it.
    fn open_session(&self, pid: i32) -> Result<Session> {
        let name = sys::peer_abstract_name(self.fd.as_fd())
            .map_err(|e| Error::io("find the owner", e))?
            .ok_or_else(|| Error::released("find the owner"))?;
        let listener = wire::listener_of(&name).ok_or_else(|| {
            Error::new(
                ErrorKind::Protocol,
                format!(
                    "the handle's owner has the address {:?}, not a rescon-handle owner's",
                    String::from_utf8_lossy(&name)
                ),
            )
        })?;
        let sock = sys::connect_abstract(listener).map_err(|e| {
            Error::io(
                "connect to the owner (calls need the owner's network namespace: its address \
                 is an abstract Unix socket)",
                e,
            )
        })?;
        rustix::net::sockopt::set_socket_timeout(
            &sock,
            rustix::net::sockopt::Timeout::Recv,
            Some(self.timeout),
        )
        .map_err(|e| Error::io("open a session", e.into()))?;
        let msg = wire::encode_request(0, &Request::OpenSession);
        sys::send(sock.as_fd(), &msg, &[self.fd.as_fd()], true)
            .map_err(|e| Error::io("open a session with the owner", e))?;
        Ok(Session { sock, pid, tag: 0 })
    }
}

fn exchange(sock: &OwnedFd, tag: u32, req: &Request) -> Result<(Reply, Vec<OwnedFd>)> {
    let msg = wire::encode_request(tag, req);
    sys::send(sock.as_fd(), &msg, &[], true).map_err(|e| Error::io("send a call", e))?;
    let mut buf = [0u8; MAX_MESSAGE];
    let r = match sys::recv(sock.as_fd(), &mut buf, true) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(Error::new(
                ErrorKind::Released,
                "the owner closed the session: the handle was released, or the owner refused it",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            return Err(Error::new(
                ErrorKind::Timeout,
                "the owner did not answer in time (Handle::set_timeout sets how long to wait)",
            ));
        }
        Err(e) => return Err(Error::io("receive an answer", e)),
    };
    if r.truncated {
        return Err(Error::new(ErrorKind::Protocol, "an answer too long"));
    }
    let (rtag, reply) = wire::decode_reply(&buf[..r.len])?;
    if rtag != tag {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!("answer {rtag} to call {tag}"),
        ));
    }
    Ok((reply, r.fds))
}

fn owned_pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn unexpected(r: &Reply, want: &str) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("the owner answered {r:?} where {want} was expected"),
    )
}

fn expect(r: &Reply, ok: impl Fn(&Reply) -> bool, want: &str) -> Result<()> {
    if ok(r) {
        Ok(())
    } else {
        Err(unexpected(r, want))
    }
}
