//! The request path, top to bottom. Each step is a stage in its own file:
//!
//! 0. [`framing`]: a request whose body or host could be read two ways is refused (RFC 9112:
//!    `Transfer-Encoding` other than one final `chunked`; `Host` missing, repeated, invalid);
//!    an absolute-form target's authority replaces `Host`;
//! 1. take the site's snapshot for this request ([`SiteCell::refresh`](super::site::SiteCell));
//! 2. [`dispatch`](super::dispatch): vhost, then cached file, static path or CGI script;
//! 3. [`placement`](super::placement): where the work is charged (the connection moved under
//!    its vhost, a request container, or a CGI run's container);
//! 4. the handler: [`static_file`](super::static_file) or [`cgi`](super::cgi);
//! 5. [`respond`](super::respond): count the request where it was charged, wrap the body for
//!    the access log and the connection's bookkeeping.
//!
//! A static request is answered within the call (nothing in it waits), so its future is ready
//! at once; a CGI request's future is boxed, since it waits for the script and holds its
//! state meanwhile.

use super::cgi::CgiRun;
use super::conn::{ConnState, ReqDone};
use super::dispatch::{Dispatch, dispatch};
use super::placement::{self, Placed};
use super::respond::{
    Body, Charged, ChargedTo, LogStart, Observe, ReqCpu, RequestLog, ResBody, Timed, finish,
    finish_in, mono_ns, simple,
};
use super::site::{CgiMount, Site, Vhost};
use super::{Shared, static_file};
use crate::admin::RequestCell;
use crate::static_files::RelPath;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use rescon::Container;
use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// What a connection's requests share: the connection and what its last request resolved.
/// Owned by the connection's service, used by one request at a time.
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) state: Arc<ConnState>,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    /// The client class it was accepted in.
    pub(crate) class: Arc<str>,
    /// The connection's container, which its task runs in while it is busy.
    pub(crate) me: Container,
    /// The container of the HTTP/2 stream whose request is being served, with
    /// `http2.stream_containers` (a child of `me`): charged instead of `me`.
    pub(crate) stream: RefCell<Option<Container>>,
    /// Stream containers made so far (their names' numbers).
    pub(crate) streams: Cell<u64>,
    /// The container `me` is under (where placement last moved it): the connection is
    /// charged to it while parked, and its next container is made under it.
    pub(crate) home: RefCell<Container>,
    /// The site snapshot of the last request, brought up to date by each new one.
    pub(crate) site: RefCell<Arc<Site>>,
    /// Where the connection's container was last placed.
    pub(crate) placed: Cell<Placed>,
    /// The last request's Host header and the vhost it chose, under its site generation:
    /// clients send the same Host on every request of a connection.
    pub(crate) last_host: RefCell<(u64, Vec<u8>, usize)>,
    /// The statistics cell of the last request's vhost (its name's `Arc`, kept so that the
    /// address cannot be reused) and the connection's class: looked up once, not per request.
    pub(crate) cell: RefCell<Option<LastCell>>,
}

/// A connection's last statistics cell: the vhost name it is for (`None`: no vhost) and the
/// cell.
pub(crate) type LastCell = (Option<Arc<str>>, Arc<RequestCell>);

/// A request's answer: ready at once (static files, errors), or a CGI run under way.
// The ready response is kept inline: hyper keeps the reply in its connection state, and a box
// per request is what the static path is meant not to pay.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Reply {
    Ready(Option<Response<ResBody>>),
    Pending(Pin<Box<dyn Future<Output = Response<ResBody>> + Send>>),
}

impl Future for Reply {
    type Output = Result<Response<ResBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            Reply::Ready(r) => {
                Poll::Ready(Ok(r.take().expect("a reply is polled to its end once")))
            }
            Reply::Pending(f) => f.as_mut().poll(cx).map(Ok),
        }
    }
}

/// Serves one request of connection `conn`.
pub(crate) fn serve(conn: &ConnCtx, mut req: Request<Incoming>) -> Reply {
    let shared = &conn.shared;
    let done = ReqDone::begin(&conn.state, !hyper::body::Body::is_end_stream(req.body()));
    // What the access log needs, taken before the request is consumed; nothing without a log.
    let log = shared.log.is_on().then(|| RequestLog {
        out: shared.log.clone(),
        start: LogStart::of(&req),
        cpu: Arc::new(ReqCpu::default()),
        remote: conn.peer.ip(),
        class: conn.class.clone(),
    });
    let now = super::respond::now();
    // 0. One meaning for the body's framing and for the host, or none.
    if let Err(resp) = framing(&mut req, &conn.last_host.borrow().1) {
        return answer(conn, resp, None, log, done, now);
    }
    // 1. One snapshot of the site, to the end of the request.
    let mut snapshot = conn.site.borrow_mut();
    shared.site.refresh(&mut snapshot);
    let site: &Arc<Site> = &snapshot;
    // 2. Dispatch.
    // `framing` put the target's authority (HTTP/2's `:authority`) in the Host field.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    // FastCGI prefixes hold on every vhost, before the vhost's own routes.
    if let Some((app, rest)) = shared.fastcgi.route(req.uri().path()) {
        let host = host.map(str::to_owned);
        return super::fastcgi::serve(
            conn,
            site,
            &app,
            &rest,
            host.as_deref(),
            req,
            log,
            done,
            conn.observe(now),
        );
    }
    let to = match dispatch(conn.vhost_for(site, host), req.uri().path(), now) {
        Ok(d) => d,
        Err(e) => {
            let resp = simple(e.status(), "bad request path");
            return answer(conn, resp, None, log, done, now);
        }
    };
    let vhost = to.vhost();
    match to {
        Dispatch::Static { target, .. } => {
            // 3. Placement, 4. the static handler, 5. the response and its log.
            let req_c = place_static(conn, site, vhost);
            if let Some(c) = &req_c {
                rescon_rt::bind(c);
            }
            let resp = static_file::serve(&vhost.root, &vhost.files, &mut req, target, now);
            match req_c {
                Some(c) => {
                    rescon_rt::bind(conn.stream.borrow().as_ref().unwrap_or(&conn.me));
                    let charged = ChargedTo {
                        container: &c,
                        cgi_run: false,
                        vhost: Some(&vhost.name),
                    };
                    answer_in(conn, resp, charged, log, done, now)
                }
                None => answer(conn, resp, Some(vhost), log, done, now),
            }
        }
        Dispatch::Cgi { mount, rest, .. } => {
            // 3. Placement: the run's own container under the CGI class.
            let run = match cgi_run(conn, site, vhost, mount, &rest, host) {
                Ok(run) => run,
                Err(resp) => return answer(conn, resp, Some(vhost), log, done, now),
            };
            let charged = Charged {
                container: run.container.clone(),
                cgi_run: true,
                vhost: Some(vhost.name.clone()),
            };
            // 4. The CGI handler, then 5. the response; timed poll by poll for the log.
            let cpu = log.as_ref().map(|l| l.cpu.clone());
            if let Some(l) = &log {
                l.cpu.add(mono_ns().saturating_sub(l.start.mono()));
            }
            let observe = conn.observe(now);
            Reply::Pending(Box::pin(Timed {
                inner: async move {
                    let resp = run.run(req).await;
                    finish(resp, charged, log, done, observe)
                },
                cpu,
            }))
        }
    }
}

impl ConnCtx {
    /// The vhost of a Host header: the last request's when the header is the same.
    fn vhost_for<'s>(&self, site: &'s Site, host: Option<&str>) -> Option<&'s Vhost> {
        let mut last = self.last_host.borrow_mut();
        if let Some(h) = host
            && last.0 == site.generation
            && last.1 == h.as_bytes()
        {
            return site.vhosts.get(last.2);
        }
        let v = site.vhost_for(host)?;
        if let Some(h) = host {
            last.0 = site.generation;
            last.1.clear();
            last.1.extend_from_slice(h.as_bytes());
            last.2 = v.index;
        }
        Some(v)
    }

    /// Where the statistics of a request that began at `began` go, for a stage that finds
    /// its cell when it finishes (FastCGI, CGI).
    fn observe(&self, began: Instant) -> Observe {
        Observe {
            stats: self.shared.http.clone(),
            class: self.class.clone(),
            began,
        }
    }

    /// The statistics cell of (`vhost`, the connection's class): the last request's when its
    /// vhost is the same, as it is on nearly every request of a connection.
    fn stats_cell(&self, vhost: Option<&Arc<str>>) -> Arc<RequestCell> {
        let mut last = self.cell.borrow_mut();
        if let Some((v, cell)) = &*last {
            let same = match (v, vhost) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same {
                return cell.clone();
            }
        }
        let cell = self
            .shared
            .http
            .cell(vhost.unwrap_or(&crate::admin::NO_VHOST), &self.class);
        *last = Some((vhost.cloned(), cell.clone()));
        cell
    }
}

/// Refuses a request that could be read two ways (with the connection closed after the
/// answer, since where its body ends is not known), and puts an absolute-form target's
/// authority in its `Host` field, so every later stage (the vhost, CGI's `HTTP_HOST` and
/// `SERVER_NAME`) sees the one host RFC 9112 3.2.2 says it names.
///
/// hyper parses the framing; what it lets through and the RFC does not: `Transfer-Encoding`
/// with `chunked` twice (RFC 9112 6.1: a sender must not; a front end may decode it twice),
/// and codings other than `chunked`, which the server does not implement (501, as nginx).
///
/// `known`: a Host value an earlier request of the connection had accepted (the one
/// [`ConnCtx::vhost_for`] keeps; empty for none). Clients send the same Host on every
/// request, and a lone Host field with those bytes and no target authority is valid again
/// without looking (the check is a function of the bytes alone).
// The error is an answer to send, built once and moved once: not worth a box.
#[allow(clippy::result_large_err)]
fn framing<B>(req: &mut Request<B>, known: &[u8]) -> Result<(), Response<Body>> {
    let refuse = |status, why: &str| {
        let mut r = simple(status, why);
        r.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        r
    };
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) {
        let (mut chunked, mut other) = (0, false);
        for v in h.get_all(header::TRANSFER_ENCODING) {
            for c in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                match c {
                    b"" => {}
                    c if c.eq_ignore_ascii_case(b"chunked") => chunked += 1,
                    _ => other = true,
                }
            }
        }
        if other {
            return Err(refuse(
                StatusCode::NOT_IMPLEMENTED,
                "only the chunked transfer coding is implemented",
            ));
        }
        if chunked != 1 {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "chunked given more than once",
            ));
        }
    }
    // HTTP/2 carries the host in `:authority` (the target's), not in a required field.
    let http11 = req.version() == http::Version::HTTP_11;
    let target = req.uri().authority().map(|a| a.as_str());
    if !known.is_empty() && target.is_none() {
        let mut lone = h.get_all(header::HOST).iter();
        if lone.next().map(|v| v.as_bytes()) == Some(known) && lone.next().is_none() {
            return Ok(());
        }
    }
    let fields = h.get_all(header::HOST).iter().map(|v| v.as_bytes());
    match crate::routing::request_host(http11, target, fields) {
        Err(e) => Err(refuse(StatusCode::BAD_REQUEST, &e.to_string())),
        Ok(_) if target.is_none() => Ok(()),
        Ok(host) => {
            let v = http::HeaderValue::from_str(host.unwrap_or_default())
                .map_err(|_| refuse(StatusCode::BAD_REQUEST, "invalid target authority"))?;
            req.headers_mut().insert(header::HOST, v);
            Ok(())
        }
    }
}

/// The last step of a request answered within its call, charged to the connection's own
/// container (its HTTP/2 stream's, with stream containers) under `vhost`.
fn answer(
    conn: &ConnCtx,
    resp: Response<Body>,
    vhost: Option<&Vhost>,
    log: Option<RequestLog>,
    done: ReqDone,
    began: Instant,
) -> Reply {
    let stream = conn.stream.borrow();
    let charged = ChargedTo {
        container: stream.as_ref().unwrap_or(&conn.me),
        cgi_run: false,
        vhost: vhost.map(|v| &v.name),
    };
    answer_in(conn, resp, charged, log, done, began)
}

/// [`answer`] charged to `charged`: its CPU (this call) for the log.
fn answer_in(
    conn: &ConnCtx,
    resp: Response<Body>,
    charged: ChargedTo<'_>,
    log: Option<RequestLog>,
    done: ReqDone,
    began: Instant,
) -> Reply {
    if let Some(l) = &log {
        l.cpu.add(mono_ns().saturating_sub(l.start.mono()));
    }
    let cell = conn.stats_cell(charged.vhost);
    Reply::Ready(Some(finish_in(resp, charged, log, done, cell, began)))
}

/// Where a static request's work is charged (the [`placement`] rule, compiled into the
/// site): with per-request containers, a new one under the work container, to be bound while
/// the request is handled; otherwise the connection's container, moved under the work
/// container when the vhost (or the site) changed since its last request.
fn place_static(conn: &ConnCtx, site: &Site, vhost: &Vhost) -> Option<Container> {
    let shared = &conn.shared;
    if shared.options.no_containers {
        return None;
    }
    if site.config.server.per_request_containers {
        let work = vhost.work_container(&conn.class);
        return placement::request_container(work, &shared.seq.req);
    }
    if !conn.placed.get().is(site.generation, vhost.index) {
        conn.placed.set(Placed::at(site.generation, vhost.index));
        let target = vhost.work_container(&conn.class);
        if placement::move_connection(&shared.root, &conn.me, target) {
            *conn.home.borrow_mut() = target.clone();
        }
    }
    None
}

/// A CGI request's run: its script found beneath the mount's directory, its container made
/// under the CGI class; or the answer why not (404, 403, 503).
// The error is an answer to send, built once and moved once: not worth a box.
#[allow(clippy::result_large_err)]
fn cgi_run(
    conn: &ConnCtx,
    site: &Site,
    vhost: &Vhost,
    mount: &CgiMount,
    rest: &RelPath,
    host: Option<&str>,
) -> Result<CgiRun, Response<Body>> {
    let shared = &conn.shared;
    let found = mount
        .dir
        .find(&mount.prefix.prefix, rest)
        .map_err(|e| simple(e.status(), &e.to_string()))?;
    let kernel = shared.kernel.clone();
    let container = placement::cgi_container(&mount.container, &shared.seq.cgi, kernel.is_some())
        .map_err(|e| simple(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()))?;
    let server_name = host
        .map(|h| h.split(':').next().unwrap_or(h).to_owned())
        .or_else(|| site.config.server.server_name.clone())
        .unwrap_or_else(|| "localhost".into());
    Ok(CgiRun {
        script: mount.dir.path().join(&found.rel),
        script_name: found.script_name,
        path_info: found.path_info,
        document_root: vhost.config.root.clone(),
        server_name,
        remote: conn.peer,
        local: conn.local,
        container,
        limits: site.config.limits,
        timeouts: site.config.timeouts,
        kernel,
        limiter: shared.limiter.clone(),
        watchdog: shared.cgi_watchdog.clone(),
        // Switched to in the script's process unless the server runs as that user already.
        user: vhost
            .cgi_user
            .as_ref()
            .filter(|ids| !crate::service::privileges::is_current(ids))
            .map(|ids| (ids.uid, ids.gid)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(hosts: &[&str], target: &str) -> Request<()> {
        let mut b = Request::get(target);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    fn status(r: Result<(), Response<Body>>) -> Option<u16> {
        r.err().map(|resp| resp.status().as_u16())
    }

    #[test]
    fn a_host_the_connection_accepted_before_is_accepted_again_and_nothing_else_is() {
        let known = b"example.test".as_slice();
        // The same lone Host: accepted, with or without the earlier value.
        assert_eq!(
            status(framing(&mut req(&["example.test"], "/"), known)),
            None
        );
        assert_eq!(status(framing(&mut req(&["example.test"], "/"), b"")), None);
        // Repeated, even with the known value first: refused.
        let twice = &["example.test", "example.test"];
        assert_eq!(status(framing(&mut req(twice, "/"), known)), Some(400));
        // Another value is checked: an invalid one is refused.
        assert_eq!(status(framing(&mut req(&["a b"], "/"), known)), Some(400));
        // Missing on HTTP/1.1: refused.
        assert_eq!(status(framing(&mut req(&[], "/"), known)), Some(400));
        // An absolute-form target's authority replaces the Host field, known or not.
        let mut r = req(&["example.test"], "http://other.test/x");
        assert_eq!(status(framing(&mut r, known)), None);
        assert_eq!(r.headers()[header::HOST], "other.test");
    }
}
