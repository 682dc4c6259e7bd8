//! HTTP/1.1 with hyper on rescon-rt, a container per connection.
//!
//! ```sh
//! cargo run --release -p rescon-rt --example hyper_server [ADDR]   # default 127.0.0.1:3000
//! curl -s http://127.0.0.1:3000/       # answers with the connection's container and its usage
//! ```
//!
//! Every accepted connection gets a child container of `web`; its requests are served by a
//! task bound to it, so the CPU, polls and bytes of each connection are charged to it. The
//! response shows what the connection's container has been charged so far.

use http_body_util::Full;
use hyper::body::Bytes;
use rescon::{Attributes, Registry};
use rescon_rt::{HyperTimer, TcpListener};
use std::convert::Infallible;
use std::net::SocketAddr;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into())
        .parse()?;
    let registry = Registry::new();
    let web = registry.root().create_child("web", Attributes::default())?;
    let rt = rescon_rt::Runtime::new(&registry)?;
    rt.block_on(async move {
        let listener = TcpListener::bind_in(addr, &web)?;
        println!("listening on http://{}", listener.local_addr()?);
        let mut n = 0u64;
        loop {
            let (mut conn, peer) = listener.accept().await?;
            n += 1;
            let c = web.create_child(&format!("conn-{n}-{peer}"), Attributes::default())?;
            conn.set_container(&c);
            rescon_rt::spawn_in(&c, async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let me = rescon_rt::current();
                    let u = me.usage();
                    let body = format!(
                        "container {} ({}): {} polls, {} bytes in, {} bytes out so far\n",
                        me.id(),
                        me.name(),
                        u.polls,
                        u.bytes_in,
                        u.bytes_out
                    );
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .timer(HyperTimer::current())
                    .serve_connection(conn, svc)
                    .await
                {
                    eprintln!("connection from {peer}: {e}");
                }
            });
        }
    })
}
