//! UDP sockets bound to containers.

use super::{Dir, Sock, default_container};
use rescon::Container;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll, ready};

/// A UDP socket bound to a container: datagram bytes in and out are charged to it.
///
/// ```
/// use rescon_rt::UdpSocket;
/// let registry = rescon::Registry::new();
/// let rt = rescon_rt::Runtime::new(&registry).unwrap();
/// let c = registry.root().create_child("dns", Default::default()).unwrap();
/// rt.block_on(async {
///     let a = UdpSocket::bind_in("127.0.0.1:0".parse().unwrap(), &c).unwrap();
///     let b = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
///     b.send_to(b"ping", a.local_addr().unwrap()).await.unwrap();
///     let mut buf = [0; 16];
///     let (n, from) = a.recv_from(&mut buf).await.unwrap();
///     assert_eq!((&buf[..n], from), (&b"ping"[..], b.local_addr().unwrap()));
/// });
/// assert_eq!(c.usage().bytes_in, 4);
/// ```
pub struct UdpSocket {
    sock: Sock<mio::net::UdpSocket>,
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("addr", &self.sock.io.local_addr().ok())
            .field("container", &self.sock.container.id())
            .finish()
    }
}

impl UdpSocket {
    /// Binds a socket in the current task's container.
    pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
        UdpSocket::bind_in(addr, &default_container()?)
    }

    /// Binds a socket in `container`.
    pub fn bind_in(addr: SocketAddr, container: &Container) -> io::Result<UdpSocket> {
        Ok(UdpSocket {
            sock: Sock::new(mio::net::UdpSocket::bind(addr)?, container.clone()),
        })
    }

    /// Sends a datagram to `target`.
    pub async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_send_to(cx, buf, target)).await
    }

    /// Polls sending a datagram to `target`.
    pub fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        let n = ready!(
            self.sock
                .reg
                .poll_io(cx, Dir::Write, || self.sock.io.send_to(buf, target))
        )?;
        self.sock.sent(n);
        Poll::Ready(Ok(n))
    }

    /// Receives a datagram and its sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_recv_from(cx, buf)).await
    }

    /// Polls receiving a datagram.
    pub fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let (n, from) = ready!(
            self.sock
                .reg
                .poll_io(cx, Dir::Read, || self.sock.io.recv_from(buf))
        )?;
        self.sock.received(n);
        Poll::Ready(Ok((n, from)))
    }

    /// Sets the default destination (and the only source accepted).
    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        self.sock.io.connect(addr)
    }

    /// Sends to the connected destination.
    pub async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        let n = std::future::poll_fn(|cx| {
            self.sock
                .reg
                .poll_io(cx, Dir::Write, || self.sock.io.send(buf))
        })
        .await?;
        self.sock.sent(n);
        Ok(n)
    }

    /// Receives from the connected source.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = std::future::poll_fn(|cx| {
            self.sock
                .reg
                .poll_io(cx, Dir::Read, || self.sock.io.recv(buf))
        })
        .await?;
        self.sock.received(n);
        Ok(n)
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.io.local_addr()
    }

    /// The container the socket's bytes are charged to.
    pub fn container(&self) -> &Container {
        &self.sock.container
    }

    /// Charges the socket's later bytes to `container`.
    pub fn set_container(&mut self, container: &Container) {
        self.sock.container = container.unprivileged();
    }
}
