//! Unix-domain stream sockets bound to containers.

use super::{AcceptPause, Dir, Sock, default_container, is_exhaustion, is_per_connection};
use rescon::{ConnGuard, Container};
use std::fmt;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::task::{Context, Poll, ready};

/// A Unix-domain listener bound to a container; it behaves as [`TcpListener`](crate::TcpListener).
///
/// ```
/// use rescon_rt::{UnixListener, UnixStream};
/// let registry = rescon::Registry::new();
/// let rt = rescon_rt::Runtime::new(&registry).unwrap();
/// let path = std::env::temp_dir().join(format!("rescon-rt-doc-{}.sock", std::process::id()));
/// let _ = std::fs::remove_file(&path);
/// rt.block_on(async {
///     let listener = UnixListener::bind(&path).unwrap();
///     let server = rescon_rt::spawn(async move {
///         let (conn, _) = listener.accept().await.unwrap();
///         conn.write_all(b"hi").await.unwrap();
///     });
///     let client = UnixStream::connect(&path).await.unwrap();
///     let mut buf = [0; 2];
///     client.read_exact(&mut buf).await.unwrap();
///     assert_eq!(&buf, b"hi");
///     server.await.unwrap();
/// });
/// std::fs::remove_file(&path).unwrap();
/// ```
pub struct UnixListener {
    sock: Sock<mio::net::UnixListener>,
    pause: AcceptPause,
}

impl fmt::Debug for UnixListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixListener")
            .field("container", &self.sock.container.id())
            .finish_non_exhaustive()
    }
}

impl UnixListener {
    /// Binds a listener at `path` in the current task's container.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        UnixListener::bind_in(path, &default_container()?)
    }

    /// Binds a listener at `path` in `container`.
    pub fn bind_in(path: impl AsRef<Path>, container: &Container) -> io::Result<UnixListener> {
        let l = mio::net::UnixListener::bind(path)?;
        Ok(UnixListener {
            sock: Sock::new(l, container.clone()),
            pause: AcceptPause::default(),
        })
    }

    /// Accepts a connection, running in the listener's container.
    pub async fn accept(&self) -> io::Result<(UnixStream, std::os::unix::net::SocketAddr)> {
        let c = self.sock.container.clone();
        crate::with_container(&c, std::future::poll_fn(|cx| self.poll_accept(cx))).await
    }

    /// Polls for a connection, in the calling task's container.
    pub fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(UnixStream, std::os::unix::net::SocketAddr)>> {
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
                            return Poll::Ready(Ok((
                                UnixStream {
                                    sock: Sock::new(s, c),
                                    _conn: Some(guard),
                                },
                                addr,
                            )));
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "connection refused by the container's limit");
                        }
                    }
                }
                Err(e) if is_exhaustion(&e) => self.pause.pause(&e, self.sock.io.as_raw_fd()),
                Err(e) if is_per_connection(&e) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// The container the listener is bound to.
    pub fn container(&self) -> &Container {
        &self.sock.container
    }

    /// Rebinds the listener.
    pub fn set_container(&mut self, container: &Container) {
        self.sock.container = container.unprivileged();
    }
}

/// A Unix-domain stream bound to a container.
pub struct UnixStream {
    sock: Sock<mio::net::UnixStream>,
    _conn: Option<ConnGuard>,
}

impl fmt::Debug for UnixStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixStream")
            .field("container", &self.sock.container.id())
            .finish_non_exhaustive()
    }
}

impl UnixStream {
    /// Connects to `path`, bound to the current task's container.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        UnixStream::connect_in(path, &default_container()?).await
    }

    /// Connects to `path`, bound to `container`.
    pub async fn connect_in(
        path: impl AsRef<Path>,
        container: &Container,
    ) -> io::Result<UnixStream> {
        let s = UnixStream {
            sock: Sock::new(mio::net::UnixStream::connect(path)?, container.clone()),
            _conn: None,
        };
        std::future::poll_fn(|cx| {
            ready!(s.sock.reg.poll_ready(cx, Dir::Write))?;
            Poll::Ready(match s.sock.io.take_error()? {
                Some(e) => Err(e),
                None => Ok(()),
            })
        })
        .await?;
        Ok(s)
    }

    /// A connected pair, both bound to `container`.
    pub fn pair_in(container: &Container) -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = mio::net::UnixStream::pair()?;
        let wrap = |s| UnixStream {
            sock: Sock::new(s, container.clone()),
            _conn: None,
        };
        Ok((wrap(a), wrap(b)))
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

    /// Polls a read.
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.sock.poll_read(cx, buf)
    }

    /// Polls a write.
    pub fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.sock.poll_write(cx, buf)
    }

    /// Shuts down the read, write or both halves.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.io.shutdown(how)
    }

    /// The container the stream's bytes are charged to.
    pub fn container(&self) -> &Container {
        &self.sock.container
    }

    /// Charges the stream's later bytes to `container`.
    pub fn set_container(&mut self, container: &Container) {
        self.sock.container = container.unprivileged();
    }

    #[cfg(feature = "hyper")]
    pub(crate) fn sock(&self) -> &Sock<mio::net::UnixStream> {
        &self.sock
    }
}
