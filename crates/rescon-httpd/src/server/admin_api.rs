//! The admin API's sockets: Unix (mode 0600) and loopback TCP with a bearer token.

use super::respond::Body;
use crate::admin::Admin;
use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use rescon::{Attributes, Container};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn serve_admin(path: PathBuf, admin: Arc<Admin>, parent: &Container) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the admin socket's directory {}", dir.display()))?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("removing the stale admin socket {}", path.display()));
        }
    }
    let c = admin_container(parent)?;
    let l = rescon_rt::UnixListener::bind_in(&path, &c)
        .with_context(|| format!("binding the admin socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    tracing::info!(socket = %path.display(), "admin API on its Unix socket");
    let c2 = c.clone();
    rescon_rt::spawn_in(&c, async move {
        loop {
            let Ok((conn, _)) = l.accept().await else {
                rescon_rt::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let admin = admin.clone();
            rescon_rt::spawn_in(&c2, serve_admin_conn(conn, admin, None));
        }
    });
    Ok(())
}

/// The admin API on a loopback TCP address (the configuration refuses any other), every
/// request needing `Authorization: Bearer TOKEN`.
pub(crate) fn serve_admin_tcp(
    addr: SocketAddr,
    token: Arc<str>,
    admin: Arc<Admin>,
    parent: &Container,
) -> Result<()> {
    let c = admin_container(parent)?;
    let l = rescon_rt::TcpListener::bind_in(addr, &c)
        .with_context(|| format!("binding the admin API's TCP address {addr}"))?;
    tracing::info!(address = %l.local_addr()?, "admin API on TCP (bearer token required)");
    let c2 = c.clone();
    rescon_rt::spawn_in(&c, async move {
        loop {
            let Ok((conn, _)) = l.accept().await else {
                rescon_rt::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let (admin, token) = (admin.clone(), token.clone());
            rescon_rt::spawn_in(&c2, serve_admin_conn(conn, admin, Some(token)));
        }
    });
    Ok(())
}

/// The admin container (one for the Unix socket and the TCP address together).
fn admin_container(parent: &Container) -> Result<Container> {
    if let Some(c) = parent.children().into_iter().find(|c| c.name() == "admin") {
        return Ok(c);
    }
    parent
        .create_child("admin", Attributes::default())
        .context("creating the admin container")
}

/// The largest admin request body read.
const ADMIN_MAX_BODY: usize = 1 << 20;

async fn serve_admin_conn<IO>(conn: IO, admin: Arc<Admin>, token: Option<Arc<str>>)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (admin, token) = (admin.clone(), token.clone());
        async move {
            if let Some(t) = &token
                && let Err(a) = crate::admin::check_bearer(req.headers(), t)
            {
                return Ok::<_, Infallible>(api_response(a));
            }
            let method = req.method().clone();
            let target = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into());
            let body = match Limited::new(req.into_body(), ADMIN_MAX_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                // Not read as empty: a cut body must not pass for a request without one.
                Err(e) => {
                    let (status, msg) = if e.is::<http_body_util::LengthLimitError>() {
                        (
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("the request body is over {ADMIN_MAX_BODY} bytes"),
                        )
                    } else {
                        (
                            StatusCode::BAD_REQUEST,
                            format!("reading the request body: {e}"),
                        )
                    };
                    return Ok(api_response(crate::admin::ApiResponse::error(status, msg)));
                }
            };
            Ok(api_response(admin.handle(&method, &target, &body)))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(rescon_rt::HyperTimer::current())
        .serve_connection(conn, svc)
        .await;
}

fn api_response(a: crate::admin::ApiResponse) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(Bytes::from(a.body))));
    *r.status_mut() = a.status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    for (k, v) in a.headers {
        r.headers_mut().insert(k, v);
    }
    r
}
