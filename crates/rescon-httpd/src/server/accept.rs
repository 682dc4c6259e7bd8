//! Stage: accept. A loop per listening socket, running in the container of the class whose
//! connections that socket receives (a member of the listener's group), so the class's
//! scheduling class and share decide when its connections are accepted. The class is the
//! member's: the kernel chose it from the SYN's source address, and nothing classifies the
//! connection again. Each connection takes its class's connection slot (beyond the limit: a
//! 503 and close) and a number, and starts parked in the class container: it gets a container
//! of its own (`conn-N`) under it whenever it is busy (see [`conn`](super::conn)).
//!
//! With `--no-containers` every connection is served in one container, with no classes. A
//! listener whose group the kernel refused is one socket: its loop classifies each
//! connection with the listener's table ([`Source::Table`](super::listen::Source)).

use super::Shared;
use super::conn::Accepted;
use super::listen::{Listener, Source};
use crate::admin::BLACK_HOLE;
use rescon::Container;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Who a socket's connections are.
#[derive(Clone)]
pub(crate) enum Classes {
    /// All of one class (a member of a group).
    Member(Arc<str>),
    /// Classified after accept by the listener's table.
    Table(Arc<Listener>),
    /// No classes (`--no-containers`): all served in this container.
    None(Container),
}

/// Accepts on `socket` until the graceful stop.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    socket: rescon_rt::TcpListener,
    listener: Arc<str>,
    classes: Classes,
) {
    let mut watch = shared.stop.watch(false);
    // One name for every connection without a class: the request statistics find a
    // connection's cell by the addresses of its vhost and class names (`HttpStats::cell`), so
    // a name made per connection missed that cache on every request of interleaved
    // connections (a lock, a hash of both names, three `Arc`s swapped).
    let all: Arc<str> = "all".into();
    loop {
        // A graceful stop ends the loop, and the socket closes with it.
        let accepted = std::future::poll_fn(|cx| {
            if watch.stopping(cx) {
                return std::task::Poll::Ready(None);
            }
            // The stream's readiness state lasts as long as the connection.
            crate::alloc::idle_state(|| socket.poll_accept(cx)).map(Some)
        })
        .await;
        let Some(accepted) = accepted else {
            return;
        };
        let (mut stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%listener, error = %e, "accept failed; trying again in 10 ms");
                rescon_rt::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let class: Arc<str> = match &classes {
            Classes::None(c) => {
                let conn = Accepted {
                    stream,
                    peer,
                    local,
                    class: all.clone(),
                    home: c.clone(),
                    n: None,
                    guard: None,
                };
                let serve = super::tls::serve(shared.clone(), conn, listener.clone());
                crate::alloc::idle_state(|| rescon_rt::spawn_in(c, serve));
                continue;
            }
            Classes::Member(class) => class.clone(),
            Classes::Table(l) => match &l.source {
                Source::Table(t) => match t.classify(&l.config.name, peer.ip()) {
                    Some(c) if c != BLACK_HOLE => c.into(),
                    // The black hole (or no class takes this source): close without a word.
                    _ => continue,
                },
                Source::Kernel(_) => unreachable!("a group's sockets accept as members"),
            },
        };
        let site = shared.site.get();
        let Some(class_c) = site.class_container(&listener, &class).cloned() else {
            tracing::warn!(%listener, %class, "no class container (removed by a reload?); connection closed");
            continue;
        };
        let guard = match class_c.try_open_connection() {
            Ok(g) => g,
            Err(_) => {
                rescon_rt::spawn_in(&class_c, refuse(stream));
                continue;
            }
        };
        let n = shared.seq.conn.fetch_add(1, Relaxed);
        stream.set_container(&class_c);
        let conn = Accepted {
            stream,
            peer,
            local,
            class,
            home: class_c.clone(),
            n: Some(n),
            guard: Some(guard),
        };
        let serve = super::tls::serve(shared.clone(), conn, listener.clone());
        // The task is what a parked connection is (see `alloc::idle_state`).
        crate::alloc::idle_state(|| rescon_rt::spawn_in(&class_c, serve));
    }
}

/// Over the class's connection limit: a 503 and close.
async fn refuse(conn: rescon_rt::TcpStream) {
    let _ = conn
        .write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 37\r\nConnection: close\r\nRetry-After: 1\r\n\r\ntoo many connections; try again soon\n",
        )
        .await;
}
