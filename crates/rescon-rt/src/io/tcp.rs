//! TCP sockets bound to containers.

use super::{AcceptPause, Dir, Sock, default_container, is_exhaustion, is_per_connection};
use rescon::{ConnGuard, Container};
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::task::{Context, Poll, ready};

/// A TCP listener bound to a container: see the [module docs](crate::io) for what that means.
///
/// ```
/// use rescon_rt::{TcpListener, TcpStream};
/// let registry = rescon::Registry::new();
/// let rt = rescon_rt::Runtime::new(&registry).unwrap();
/// let web = registry.root().create_child("web", Default::default()).unwrap();
/// rt.block_on(async {
///     let listener = TcpListener::bind_in("127.0.0.1:0".parse().unwrap(), &web).unwrap();
///     let addr = listener.local_addr().unwrap();
///     let server = rescon_rt::spawn_in(&web, async move {
///         let (conn, _) = listener.accept().await.unwrap();
///         let mut buf = [0; 5];
///         conn.read_exact(&mut buf).await.unwrap();
///         conn.write_all(&buf).await.unwrap();
///     });
///     let client = TcpStream::connect(addr).await.unwrap();
///     client.write_all(b"hello").await.unwrap();
///     let mut buf = [0; 5];
///     client.read_exact(&mut buf).await.unwrap();
///     assert_eq!(&buf, b"hello");
///     server.await.unwrap();
/// });
/// rt.flush_usage();
/// assert_eq!(web.usage().bytes_in, 5);
/// assert_eq!(web.usage().conns_accepted, 1);
/// ```
pub struct TcpListener {
    sock: Sock<mio::net::TcpListener>,
    pause: AcceptPause,
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("addr", &self.sock.io.local_addr().ok())
            .field("container", &self.sock.container.id())
            .finish()
    }
}

impl TcpListener {
    /// Binds a listener (with `SO_REUSEADDR`) in the current task's container.
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind_in(addr, &default_container()?)
    }

    /// Binds a listener in `container`. Works outside a runtime too: the listener registers
    /// with a worker when first awaited.
    pub fn bind_in(addr: SocketAddr, container: &Container) -> io::Result<TcpListener> {
        let l = mio::net::TcpListener::bind(addr)?;
        Ok(TcpListener::from_mio(l, container))
    }

    /// Wraps a standard listener (made non-blocking here), bound to `container`.
    pub fn from_std(l: std::net::TcpListener, container: &Container) -> io::Result<TcpListener> {
        l.set_nonblocking(true)?;
        Ok(TcpListener::from_mio(
            mio::net::TcpListener::from_std(l),
            container,
        ))
    }

    fn from_mio(l: mio::net::TcpListener, container: &Container) -> TcpListener {
        TcpListener {
            sock: Sock::new(l, container.clone()),
            pause: AcceptPause::default(),
        }
    }

    /// Accepts a connection, running in the listener's container (see the
    /// [module docs](crate::io)). The stream is bound to the listener's container and counted
    /// against its connection limit until dropped; rebind it with
    /// [`TcpStream::set_container`].
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let c = self.sock.container.clone();
        crate::with_container(&c, std::future::poll_fn(|cx| self.poll_accept(cx))).await
    }

    /// Polls for a connection, in whatever container the calling task is bound to (unlike
    /// [`accept`](TcpListener::accept)).
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        loop {
            ready!(self.pause.poll_paused(cx));
            match ready!(
                self.sock
                    .reg
                    .poll_io(cx, Dir::Read, || self.sock.io.accept())
            ) {
                Ok((s, addr)) => {
                    self.pause.succeeded();
                    match self.sock.container.try_open_connection() {
                        Ok(guard) => {
                            let c = self.sock.container.clone();
                            return Poll::Ready(Ok((TcpStream::from_mio(s, c, Some(guard)), addr)));
                        }
                        Err(e) => {
                            tracing::debug!(peer = %addr, error = %e, "connection refused by the container's limit");
                            drop(s);
                        }
                    }
                }
                Err(e) if is_exhaustion(&e) => self.pause.pause(&e, self.sock.io.as_raw_fd()),
                Err(e) if is_per_connection(&e) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.io.local_addr()
    }

    /// The container the listener is bound to.
    pub fn container(&self) -> &Container {
        &self.sock.container
    }

    /// Rebinds the listener: later accepts run in, and count against, `container`.
    pub fn set_container(&mut self, container: &Container) {
        self.sock.container = container.unprivileged();
    }

    /// How many times accepting has paused for lack of descriptors or memory.
    pub fn accept_pauses(&self) -> u64 {
        self.pause.count()
    }
}

/// A TCP connection bound to a container: its bytes in and out are charged to it.
pub struct TcpStream {
    pub(crate) sock: Sock<mio::net::TcpStream>,
    _conn: Option<ConnGuard>,
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("peer", &self.sock.io.peer_addr().ok())
            .field("container", &self.sock.container.id())
            .finish()
    }
}

impl TcpStream {
    fn from_mio(s: mio::net::TcpStream, c: Container, conn: Option<ConnGuard>) -> TcpStream {
        TcpStream {
            sock: Sock::new(s, c),
            _conn: conn,
        }
    }

    /// Connects to `addr`, bound to the current task's container.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        TcpStream::connect_in(addr, &default_container()?).await
    }

    /// Connects to `addr`, bound to `container`.
    pub async fn connect_in(addr: SocketAddr, container: &Container) -> io::Result<TcpStream> {
        let s = TcpStream::from_mio(mio::net::TcpStream::connect(addr)?, container.clone(), None);
        std::future::poll_fn(|cx| {
            loop {
                let seen = ready!(s.sock.reg.poll_ready(cx, Dir::Write))?;
                if let Some(e) = s.sock.io.take_error()? {
                    return Poll::Ready(Err(e));
                }
                match s.sock.io.peer_addr() {
                    Ok(_) => return Poll::Ready(Ok(())),
                    Err(e)
                        if e.kind() == io::ErrorKind::NotConnected
                            || e.raw_os_error() == Some(libc::EINPROGRESS) =>
                    {
                        s.sock.reg.clear_would_block(Dir::Write, seen)
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        })
        .await?;
        Ok(s)
    }

    /// Wraps a connected standard stream (made non-blocking here), bound to `container`.
    pub fn from_std(s: std::net::TcpStream, container: &Container) -> io::Result<TcpStream> {
        s.set_nonblocking(true)?;
        Ok(TcpStream::from_mio(
            mio::net::TcpStream::from_std(s),
            container.clone(),
            None,
        ))
    }

    /// Reads some bytes; 0 means the peer closed its side.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.read(buf).await
    }

    /// Reads exactly `buf.len()` bytes.
    pub async fn read_exact(&self, buf: &mut [u8]) -> io::Result<()> {
        self.sock.read_exact(buf).await
    }

    /// Writes some bytes.
    pub async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.sock.write(buf).await
    }

    /// Writes all of `buf`.
    pub async fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        self.sock.write_all(buf).await
    }

    /// Waits, without reading, until the stream may be readable: bytes have come, the peer
    /// closed its side, or the socket has an error. What a server waits for while it holds
    /// no read buffer for an idle connection. It may be ready and the next read still would
    /// block (an event that a read already consumed), as with any readiness.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.sock.reg.poll_ready(cx, Dir::Read).map_ok(|_| ())
    }

    /// Polls a read.
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.sock.poll_read(cx, buf)
    }

    /// Polls a write.
    pub fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.sock.poll_write(cx, buf)
    }

    /// Polls a vectored write.
    pub fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.sock.poll_write_vectored(cx, bufs)
    }

    /// Shuts down the read, write or both halves.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.io.shutdown(how)
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.sock.io.set_nodelay(on)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.io.peer_addr()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.io.local_addr()
    }

    /// The container the stream's bytes are charged to.
    pub fn container(&self) -> &Container {
        &self.sock.container
    }

    /// Charges the stream's later bytes to `container` (for example a container made for this
    /// connection). The connection stays counted against the limit of the container it was
    /// accepted in.
    pub fn set_container(&mut self, container: &Container) {
        self.sock.container = container.unprivileged();
    }

    #[cfg(feature = "hyper")]
    pub(crate) fn sock(&self) -> &Sock<mio::net::TcpStream> {
        &self.sock
    }
}
