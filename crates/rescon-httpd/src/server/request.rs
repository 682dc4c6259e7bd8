//! A request: routing, its container, static files, the access log line.

use super::*;

/// Response bodies: whole ([`full`]) or streamed from a CGI script ([`CgiBody`]).
pub(super) type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The CPU of one request's handling: the time of each poll of its future, read from the
/// monotonic clock as the runtime charges polls (the runtime charges containers, not
/// requests, and flushes usage in 1 ms steps, too coarse for one request).
#[derive(Default)]
pub(super) struct ReqCpu {
    done_ns: AtomicU64,
    /// When the poll under way began (a [`mono_ns`] reading), 0 between polls.
    poll_start: AtomicU64,
}

/// The monotonic clock the runtime times polls with: the TSC where the kernel keeps time with
/// it (no vDSO call; two readings per poll of every request add up), else `CLOCK_MONOTONIC`.
fn mono_ns() -> u64 {
    static CLOCK: std::sync::OnceLock<rescon_rt::Clock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(rescon_rt::Clock::monotonic).now_ns()
}

impl ReqCpu {
    /// The CPU so far, including the poll under way.
    fn so_far_ns(&self) -> u64 {
        let start = self.poll_start.load(Relaxed);
        let running = if start == 0 {
            0
        } else {
            mono_ns().saturating_sub(start)
        };
        self.done_ns.load(Relaxed) + running
    }
}

pin_project_lite::pin_project! {
    /// A request's future, timed poll by poll into its [`ReqCpu`] when there is one: only
    /// the access log reads it, so without a log nothing is timed. Pinned in place (hyper
    /// keeps each connection's request future in one box, reused), not boxed again per
    /// request.
    pub(super) struct Timed<F> {
        #[pin]
        pub(super) inner: F,
        pub(super) cpu: Option<Arc<ReqCpu>>,
    }
}

impl<F: std::future::Future> std::future::Future for Timed<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let Some(cpu) = this.cpu else {
            return this.inner.poll(cx);
        };
        let start = mono_ns().max(1);
        cpu.poll_start.store(start, Relaxed);
        let r = this.inner.poll(cx);
        let end = mono_ns();
        cpu.poll_start.store(0, Relaxed);
        cpu.done_ns.fetch_add(end.saturating_sub(start), Relaxed);
        r
    }
}

/// A CGI run's own CPU so far (its reading thread and, as sampled, the script's), added to
/// the request's; nothing for a request charged to its connection.
fn own_run_cpu(c: &Container, cgi_run: bool) -> u64 {
    if !cgi_run {
        return 0;
    }
    let u = c.usage();
    u.cpu_ns + u.kernel_cpu_ns
}

pub(super) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub(super) fn simple(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(super) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
    local: SocketAddr,
    conn: &ConnState,
    req_cpu: Option<&Arc<ReqCpu>>,
) -> (Response<Body>, Option<PendingLog>) {
    let class = conn.class.as_str();
    // What the access log needs, taken before the request is consumed; nothing without a log.
    let logging = shared.log_on.load(Relaxed);
    let start = logging.then(Instant::now);
    let time = logging.then(SystemTime::now);
    let me = rescon_rt::current();
    let site = shared.site();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let path = req.uri().path().to_owned();
    let request_line = if logging {
        format!("{} {} {:?}", req.method(), req.uri(), req.version())
    } else {
        String::new()
    };
    let header_bytes = |name| {
        logging
            .then(|| req.headers().get(name).map(|v| v.as_bytes().to_vec()))
            .flatten()
    };
    let ua = header_bytes(header::USER_AGENT);
    let referer = header_bytes(header::REFERER);
    // A file the cache holds under this vhost and raw path was routed as a static file, and
    // its path checked, when it was cached, under this configuration (the cache is the
    // site's, replaced on reload): served without routing again, which costs a tenth of a
    // request (normalizing the path allocates per segment).
    let now = Instant::now();
    let routed = site
        .config
        .vhost_for(host.as_deref())
        .ok_or(RouteError::NoVhost)
        .and_then(|vhost| match site.files.get(&vhost.name, &path, now) {
            Some(file) => Ok((vhost, Work::Static(StaticReq::Cached(file)))),
            None => route_in(vhost, &path).map(|r| {
                let work = match r.target {
                    Target::Static(rel) => Work::Static(StaticReq::Path(rel)),
                    Target::Cgi { prefix, rest } => Work::Cgi { prefix, rest },
                };
                (r.vhost, work)
            }),
        });
    let (resp, vhost, charged, cgi_run) = match routed {
        Err(e) => (
            simple(e.status(), "bad request path"),
            String::new(),
            me.clone(),
            false,
        ),
        Ok((r_vhost, work)) => {
            let vhost = r_vhost.name.clone();
            match work {
                Work::Static(what) => {
                    let req_c = if shared.options.no_containers {
                        None
                    } else if site.config.server.per_request_containers {
                        request_container(&shared, r_vhost, conn)
                    } else {
                        place_under_vhost(&shared, &me, r_vhost, conn);
                        None
                    };
                    if let Some(c) = &req_c {
                        rescon_rt::bind(c);
                    }
                    let root = site.roots.get(&vhost).cloned();
                    let resp = match root {
                        Some(root) => {
                            serve_static(&root, &site.files, &vhost, &path, &req, what, now)
                        }
                        None => simple(StatusCode::INTERNAL_SERVER_ERROR, "no document root"),
                    };
                    if req_c.is_some() {
                        rescon_rt::bind(&me);
                    }
                    (resp, vhost, req_c.unwrap_or_else(|| me.clone()), false)
                }
                // Refusals inside leave the block with the connection's container.
                Work::Cgi { prefix, rest } => 'cgi: {
                    let dir = site
                        .scripts
                        .get(&(vhost.clone(), prefix.prefix.clone()))
                        .cloned();
                    let class_c = shared.container(&prefix.container);
                    match (dir, class_c) {
                        (Some(dir), Some(class_c)) => {
                            let m = match dir.find(&prefix.prefix, &rest) {
                                Ok(m) => m,
                                Err(e) => {
                                    let r = simple(e.status(), &e.to_string());
                                    break 'cgi (r, vhost, me.clone(), false);
                                }
                            };
                            let n = shared.next_cgi.fetch_add(1, Relaxed);
                            let mut attrs = Attributes::default();
                            if shared.kernel.is_some() {
                                let _ = attrs.set("enforcement", "kernel");
                            }
                            let cgi_c = match class_c.create_child(&format!("cgi-{n}"), attrs) {
                                Ok(c) => c,
                                Err(e) => {
                                    let r = simple(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
                                    break 'cgi (r, vhost, me.clone(), false);
                                }
                            };
                            let script = dir.path().join(&m.rel);
                            let doc_root = r_vhost.root.clone();
                            let server_name = host
                                .as_deref()
                                .map(|h| h.split(':').next().unwrap_or(h).to_owned())
                                .or_else(|| site.config.server.server_name.clone())
                                .unwrap_or_else(|| "localhost".into());
                            // Boxed: inline, the CGI run's state would make every request's
                            // future 2,760 bytes (moved into its box per request) instead of
                            // its own few hundred; a CGI run can afford an allocation.
                            let resp = Box::pin(run_cgi(
                                &shared,
                                req,
                                &cgi_c,
                                script,
                                m.script_name,
                                m.path_info,
                                doc_root,
                                server_name,
                                peer,
                                local,
                            ))
                            .await;
                            (resp, vhost, cgi_c, true)
                        }
                        _ => (
                            simple(StatusCode::INTERNAL_SERVER_ERROR, "CGI not configured"),
                            vhost,
                            me.clone(),
                            false,
                        ),
                    }
                }
            }
        }
    };
    // Logged, and counted, with the container its work was charged to.
    log_and(
        &shared,
        resp,
        peer,
        time,
        request_line,
        referer,
        ua,
        charged,
        req_cpu.cloned(),
        cgi_run,
        start,
        vhost,
        class,
    )
}

/// Moves the connection's container under the container its request's work is charged to
/// ([`work_parent`](crate::routing::work_parent): the vhost's, or its per-class refinement),
/// once per connection or again when a later request names another vhost. The scheduler
/// follows the move, so the vhost's share governs the connection from then on; the usage
/// moves with it, so what the vhost delivered is its subtree's usage. The class's
/// connection limit stays taken, as accepted.
fn place_under_vhost(shared: &Shared, me: &Container, vhost: &VhostConfig, conn: &ConnState) {
    // Most connections name one vhost: after the first request, one string comparison.
    let mut placed = conn.placed.lock().unwrap_or_else(|e| e.into_inner());
    if placed.as_deref() == Some(vhost.name.as_str()) {
        return;
    }
    *placed = Some(vhost.name.clone());
    let Some(target) = work_container(shared, vhost, &conn.class) else {
        return;
    };
    if me.id() == target.id() || me.parent_id() == Some(target.id()) {
        return;
    }
    if let Err(e) = shared.root.reparent(me, Some(&target)) {
        eprintln!(
            "rescon-httpd: moving {} under vhost {}: {e}",
            me.name(),
            vhost.name
        );
    }
}

/// The live container a static request's work is charged under, as
/// [`work_parent`](crate::routing::work_parent) places it: the vhost's per-class refinement
/// if declared, else the vhost's.
fn work_container(shared: &Shared, vhost: &VhostConfig, class: &str) -> Option<Container> {
    shared
        .container(&vhost.container.child(class))
        .or_else(|| shared.container(&vhost.container))
}

/// With `per_request_containers`: a container for one request, under the one its work is
/// charged to (the vhost's, or its per-class refinement); the request's processing runs bound
/// to it and its usage folds into the vhost's when it is dropped. The connection's container
/// stays under its class.
fn request_container(shared: &Shared, vhost: &VhostConfig, conn: &ConnState) -> Option<Container> {
    let parent = work_container(shared, vhost, &conn.class)?;
    let n = shared.next_req.fetch_add(1, Relaxed);
    match parent.create_child(&format!("req-{n}"), Attributes::default()) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!(
                "rescon-httpd: a request container under vhost {}: {e}",
                vhost.name
            );
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn log_and(
    shared: &Arc<Shared>,
    resp: Response<Body>,
    peer: SocketAddr,
    time: Option<SystemTime>,
    request_line: String,
    referer: Option<Vec<u8>>,
    ua: Option<Vec<u8>>,
    me: Container,
    req_cpu: Option<Arc<ReqCpu>>,
    cgi_run: bool,
    start: Option<Instant>,
    vhost: String,
    class: &str,
) -> (Response<Body>, Option<PendingLog>) {
    // Every request counts once, where its work was charged: the connection's container
    // (under its vhost), or the request's or CGI run's own.
    me.account().add_requests(1);
    if !shared.log_on.load(Relaxed) {
        return (resp, None);
    }
    let pending = PendingLog {
        shared: shared.clone(),
        remote: peer.ip(),
        // Taken when the request came in, if the log was on then.
        time: time.unwrap_or_else(SystemTime::now),
        request_line,
        status: resp.status().as_u16(),
        referer,
        ua,
        container: me,
        req_cpu,
        cgi_run,
        start,
        vhost,
        class: class.to_owned(),
        sent: 0,
    };
    (resp, Some(pending))
}

/// One access-log line, written when its response's body has gone to the connection or is
/// dropped (cut by an error, abandoned by the client, or never sent, as for `HEAD`): so it
/// counts the body bytes that went out and the time until then, as nginx's
/// `$body_bytes_sent` and `$request_time` do, for streamed CGI output as for files.
pub(super) struct PendingLog {
    shared: Arc<Shared>,
    remote: std::net::IpAddr,
    time: SystemTime,
    request_line: String,
    status: u16,
    referer: Option<Vec<u8>>,
    ua: Option<Vec<u8>>,
    container: Container,
    req_cpu: Option<Arc<ReqCpu>>,
    cgi_run: bool,
    start: Option<Instant>,
    vhost: String,
    class: String,
    /// Body bytes handed to the connection so far.
    sent: u64,
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        if !self.shared.log_on.load(Relaxed) {
            return;
        }
        let line = AccessLogEntry {
            remote: self.remote,
            time: self.time,
            request_line: self.request_line.as_bytes(),
            status: self.status,
            bytes: self.sent,
            referer: self.referer.as_deref(),
            user_agent: self.ua.as_deref(),
            container: self.container.id(),
            cpu: Duration::from_nanos(
                self.req_cpu.as_ref().map_or(0, |c| c.so_far_ns())
                    + own_run_cpu(&self.container, self.cgi_run),
            ),
            duration: self.start.map_or(Duration::ZERO, |s| s.elapsed()),
            vhost: &self.vhost,
            class: &self.class,
        }
        .format();
        let mut log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = log.as_mut() {
            let _ = writeln!(w, "{line}");
        }
    }
}

/// The body of every response to a client: counts what it yields into its [`PendingLog`]
/// (if the log is on), which writes the line when the body is dropped, and marks the
/// connection's request done then.
pub(super) struct ResBody {
    pub(super) inner: Body,
    pub(super) log: Option<PendingLog>,
    pub(super) _done: ReqDone,
}

impl hyper::body::Body for ResBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        let frame = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let (Some(log), std::task::Poll::Ready(Some(Ok(f)))) = (&mut this.log, &frame) {
            if let Some(data) = f.data_ref() {
                log.sent += data.len() as u64;
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// What a routed request asks for ([`Target`], with a static file possibly found in the
/// cache already).
enum Work<'c> {
    Static(StaticReq),
    Cgi {
        prefix: &'c crate::config::CgiPrefix,
        rest: crate::static_files::RelPath,
    },
}

/// A static file request: its file from the cache, or its path to resolve.
enum StaticReq {
    Cached(Arc<CachedFile>),
    Path(crate::static_files::RelPath),
}

fn serve_static(
    root: &DocRoot,
    cache: &FileCache,
    vhost: &str,
    path: &str,
    req: &Request<Incoming>,
    what: StaticReq,
    now: Instant,
) -> Response<Body> {
    let cached = match what {
        StaticReq::Cached(c) => c,
        StaticReq::Path(rel) => {
            let file = match root.resolve_rel(rel) {
                Ok(Resolved::File(f)) => f,
                Ok(Resolved::Redirect(loc)) => {
                    let mut r = simple(StatusCode::MOVED_PERMANENTLY, "moved");
                    if let Ok(v) = HeaderValue::from_str(&loc) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    return r;
                }
                Err(e) => return simple(e.status(), &e.to_string()),
            };
            if file.meta.len > CACHE_MAX_FILE {
                return serve_open_file(file, req);
            }
            let body = match read_range(&file.file, 0, file.meta.len) {
                Ok(b) => b,
                Err(e) => return simple(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            };
            let validators = crate::static_files::Validators::of(&file.meta);
            let plain = crate::static_files::plan_with(
                &Method::GET,
                &http::HeaderMap::new(),
                &file.meta,
                &validators,
            )
            .headers;
            let c = Arc::new(CachedFile {
                validators,
                plain,
                meta: file.meta.clone(),
                body,
                checked: now,
            });
            cache.put(vhost, path, c.clone());
            c
        }
    };
    if crate::static_files::is_plain(req.method(), req.headers()) {
        let p = crate::static_files::ResponsePlan {
            status: StatusCode::OK,
            headers: cached.plain.clone(),
            body: BodyPlan::Full,
        };
        return respond(req, p, cached.body.clone());
    }
    let p = crate::static_files::plan_with(
        req.method(),
        req.headers(),
        &cached.meta,
        &cached.validators,
    );
    let body = match p.body {
        BodyPlan::Empty => Bytes::new(),
        BodyPlan::Full => cached.body.clone(),
        BodyPlan::Range { start, end } => cached.body.slice(start as usize..end as usize),
    };
    respond(req, p, body)
}

/// A file too large for the cache: streamed, a chunk at a time (see [`FileBody`]).
fn serve_open_file(file: crate::static_files::OpenFile, req: &Request<Incoming>) -> Response<Body> {
    let p = plan(req.method(), req.headers(), &file.meta);
    let (start, end) = match p.body {
        _ if req.method() == Method::HEAD => (0, 0),
        BodyPlan::Empty => (0, 0),
        BodyPlan::Full => (0, file.meta.len),
        BodyPlan::Range { start, end } => (start, end),
    };
    let mut r = Response::new(
        FileBody {
            file: file.file,
            pos: start,
            end,
        }
        .boxed(),
    );
    *r.status_mut() = p.status;
    *r.headers_mut() = p.headers;
    r
}

/// How much of a large file one frame carries: 256 KiB downloads a 300 MB file at 2.3-2.7
/// GB/s on loopback, 64 KiB at 1.6-2.1, reading it whole at 1.9-2.6.
const FILE_CHUNK: usize = 256 * 1024;

/// A large file's body, read a chunk at a time as the connection takes it: hyper asks for the
/// next frame only when its write buffer has room, so a download holds a few chunks of memory
/// however large the file and however slow the client (it used to be read whole: four
/// downloads of a 300 MB file took the server to 1.2 GB, now 24 MB), and a worker reads one chunk per poll
/// instead of the whole file while its other connections wait. The reads are charged to the
/// connection's poll, like the copies they feed. A file that shrinks under the download ends
/// the body with an error, so the client sees a cut response, not a complete one.
struct FileBody {
    file: std::fs::File,
    pos: u64,
    end: u64,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        use std::os::unix::fs::FileExt;
        let this = &mut *self;
        if this.pos >= this.end {
            return std::task::Poll::Ready(None);
        }
        let want = (this.end - this.pos).min(FILE_CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        if let Err(e) = this.file.read_exact_at(&mut buf, this.pos) {
            // An error, or the end before the promised length: stop for good.
            this.end = this.pos;
            return std::task::Poll::Ready(Some(Err(
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    std::io::Error::new(e.kind(), "the file shrank while it was being sent")
                } else {
                    e
                },
            )));
        }
        this.pos += want as u64;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.end.saturating_sub(self.pos))
    }
}

fn respond(
    req: &Request<Incoming>,
    p: crate::static_files::ResponsePlan,
    body: Bytes,
) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    let mut r = Response::new(full(if head { Bytes::new() } else { body }));
    *r.status_mut() = p.status;
    *r.headers_mut() = p.headers;
    r
}

/// Reads `start..end` of a file (buffered: measured faster than sendfile for the small files
/// a web site is mostly made of, and it keeps the CPU of the copy in the connection's poll).
fn read_range(f: &std::fs::File, start: u64, end: u64) -> std::io::Result<Bytes> {
    let mut f = f;
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((end - start) as usize);
    f.take(end - start).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body as _;

    fn file_body(data: &[u8], pos: u64, end: u64) -> (tempfile::NamedTempFile, FileBody) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data).unwrap();
        let file = std::fs::File::open(f.path()).unwrap();
        (f, FileBody { file, pos, end })
    }

    /// Polls a body to its end on this thread (a file body never waits).
    fn frames(mut b: FileBody) -> Vec<Result<Bytes, std::io::Error>> {
        let mut out = Vec::new();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            let hint = b.size_hint().exact();
            match std::pin::Pin::new(&mut b).poll_frame(&mut cx) {
                std::task::Poll::Ready(Some(Ok(f))) => {
                    let d = f.into_data().unwrap();
                    assert_eq!(
                        hint.unwrap() - d.len() as u64,
                        b.size_hint().exact().unwrap()
                    );
                    out.push(Ok(d));
                }
                std::task::Poll::Ready(Some(Err(e))) => out.push(Err(e)),
                std::task::Poll::Ready(None) => return out,
                std::task::Poll::Pending => panic!("a file body does not wait"),
            }
        }
    }

    #[test]
    fn a_large_file_goes_out_in_chunks_of_its_range() {
        let data: Vec<u8> = (0..3 * FILE_CHUNK + 100).map(|i| (i % 251) as u8).collect();
        let (_f, b) = file_body(&data, 0, data.len() as u64);
        let got = frames(b);
        let sizes: Vec<usize> = got.iter().map(|c| c.as_ref().unwrap().len()).collect();
        assert_eq!(sizes, [FILE_CHUNK, FILE_CHUNK, FILE_CHUNK, 100]);
        let all: Vec<u8> = got.into_iter().flat_map(|c| c.unwrap()).collect();
        assert_eq!(all, data);
        // A range across a chunk boundary: exactly its bytes.
        let (start, end) = (FILE_CHUNK as u64 - 10, FILE_CHUNK as u64 + 20);
        let (_f, b) = file_body(&data, start, end);
        let all: Vec<u8> = frames(b).into_iter().flat_map(|c| c.unwrap()).collect();
        assert_eq!(all, &data[start as usize..end as usize]);
        // Nothing to send: ends at once.
        let (_f, b) = file_body(&data, 0, 0);
        assert!(b.is_end_stream());
        assert!(frames(b).is_empty());
    }

    #[test]
    fn a_file_that_shrinks_under_its_download_cuts_the_body() {
        let data = vec![7u8; 2 * FILE_CHUNK];
        let (f, b) = file_body(&data, 0, data.len() as u64);
        f.as_file().set_len(FILE_CHUNK as u64 + 5).unwrap();
        let got = frames(b);
        assert_eq!(got.len(), 2, "the whole first chunk, then the error");
        assert_eq!(got[0].as_ref().unwrap().len(), FILE_CHUNK);
        let e = got[1].as_ref().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }
}
