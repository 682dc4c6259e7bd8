//! A CGI run: the script in its container (and cgroup), its input and output streamed, its
//! timeout kept by the watchdog.

use super::*;

/// A CGI script's response body as it comes: chunks from the thread reading the script's
/// output, which waits while the client is slow (8 chunks of 16 KiB in flight at most). An
/// error ends the body early, so the client sees a cut response, not a complete one.
struct CgiBody {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
}

impl hyper::body::Body for CgiBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|r| r.map(hyper::body::Frame::data)))
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run_cgi(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    cgi_c: &Container,
    script: PathBuf,
    script_name: String,
    path_info: String,
    doc_root: PathBuf,
    server_name: String,
    peer: SocketAddr,
    local: SocketAddr,
) -> Response<Body> {
    let site = shared.site();
    let limits = &site.config.limits;
    let timeout = site.config.timeouts.cgi;
    let (parts, body) = req.into_parts();
    // A body of declared length streams into the script as it arrives; one without (chunked)
    // is read whole first, since CGI gives the script its length (RFC 3875, 4.1.2).
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let (stdin, content_length) = match declared {
        Some(n) if n > limits.max_body_bytes => {
            return simple(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        Some(0) => (Stdin::Whole(Bytes::new()), None),
        Some(n) => {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            rescon_rt::spawn(forward_body(body, tx, n, site.config.timeouts.body));
            (Stdin::Stream(rx), Some(n))
        }
        None => {
            let whole = match rescon_rt::timeout(
                site.config.timeouts.body,
                Limited::new(body, limits.max_body_bytes as usize).collect(),
            )
            .await
            {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(_)) => {
                    return simple(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
                }
                Err(_) => return simple(StatusCode::REQUEST_TIMEOUT, "request body too slow"),
            };
            let len = (!whole.is_empty()).then_some(whole.len() as u64);
            (Stdin::Whole(whole), len)
        }
    };
    let query = parts.uri.query().unwrap_or("").to_owned();
    let env = meta_variables(&CgiRequest {
        method: &parts.method,
        version: parts.version,
        raw_path: parts.uri.path(),
        query: &query,
        headers: &parts.headers,
        content_length,
        remote: peer,
        local,
        server_name: &server_name,
        script_name: &script_name,
        path_info: &path_info,
        script_filename: &script,
        document_root: &doc_root,
        container: Some(cgi_c.id()),
    });
    let max_head = limits.cgi_max_header_bytes as usize;
    let kernel = shared.kernel.clone();
    let watchdog = shared.cgi_watchdog.clone();
    let c2 = cgi_c.clone();
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let (body_tx, body_rx) = tokio::sync::mpsc::channel(8);
    // The script runs on the blocking pool: its pipes are blocking, and the thread's CPU is
    // charged to the CGI container. The thread sends the response head as soon as it is
    // parsed, then streams the body; it outlives this future if the client goes away (then it
    // stops the script).
    let _job = rescon_rt::spawn_blocking_in(cgi_c, move || {
        run_script(
            kernel, &watchdog, &c2, &script, env, stdin, timeout, max_head, head_tx, body_tx,
        )
    });
    let out = match head_rx.await {
        Ok(o) => o,
        Err(_) => return simple(StatusCode::INTERNAL_SERVER_ERROR, "CGI job failed"),
    };
    let mut body_rx = Some(body_rx);
    let mut stream = || {
        CgiBody {
            rx: body_rx.take().expect("one body"),
        }
        .boxed()
    };
    match out {
        CgiOutcome::TimedOut => simple(StatusCode::GATEWAY_TIMEOUT, "the CGI script took too long"),
        CgiOutcome::Failed(msg) => simple(StatusCode::BAD_GATEWAY, &msg),
        CgiOutcome::Done(head) => match head {
            CgiHead::Document { status, headers } => {
                let mut r = Response::new(stream());
                *r.status_mut() = status;
                for (k, v) in headers.iter() {
                    r.headers_mut().append(k, v.clone());
                }
                r
            }
            CgiHead::ClientRedirect { status, headers } => {
                let mut r = Response::new(stream());
                *r.status_mut() = status;
                for (k, v) in headers.iter() {
                    r.headers_mut().append(k, v.clone());
                }
                r
            }
            CgiHead::LocalRedirect { location } => {
                let mut r = simple(StatusCode::FOUND, "see other");
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
        },
    }
}

/// What a new pipe holds at least (a page): a write this size into it cannot block.
const PIPE_BUF: usize = 4096;

/// What a script reads on its standard input.
enum Stdin {
    /// A body read whole (or none).
    Whole(Bytes),
    /// Chunks as the client sends them.
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

/// Forwards a request body of declared length `len` to a script, frame by frame, each within
/// `timeout`; stops at `len` bytes, at the end, or when the client stalls or the script stops
/// reading (the script then sees the end of its input early).
async fn forward_body(
    mut body: Incoming,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    len: u64,
    timeout: Duration,
) {
    let mut left = len;
    while left > 0 {
        let frame = match rescon_rt::timeout(timeout, body.frame()).await {
            Ok(Some(Ok(f))) => f,
            _ => return,
        };
        if let Ok(mut data) = frame.into_data() {
            if data.len() as u64 > left {
                data.truncate(left as usize);
            }
            left -= data.len() as u64;
            if tx.send(data).await.is_err() {
                return;
            }
        }
    }
}

enum CgiOutcome {
    /// The head; the body follows on the channel.
    Done(CgiHead),
    Failed(String),
    TimedOut,
}

/// A running script, in its cgroup or a process group of its own.
enum Proc {
    Kernel(cgroup::Child, Arc<Manager>),
    User(std::process::Child),
}

impl Proc {
    fn kill_all(&mut self, c: &Container) {
        match self {
            Proc::Kernel(_, m) => {
                let _ = m.kill(c);
            }
            Proc::User(ch) => {
                // The script leads its own process group: kill it and its descendants.
                let pgid = ch.id() as i32;
                let _ = rustix::process::kill_process_group(
                    rustix::process::Pid::from_raw(pgid).expect("a child's pid is positive"),
                    rustix::process::Signal::KILL,
                );
            }
        }
    }

    /// Waits for the script to exit; `exited` runs once it has, before it is reaped (with a
    /// cgroup, after: the cgroup, not the pid, names what a kill reaches).
    fn wait(&mut self, c: &Container, exited: impl FnOnce()) -> Option<std::process::ExitStatus> {
        match self {
            // The child's CPU reaches the container's usage through the cgroup's counters
            // (the manager samples them after the run).
            Proc::Kernel(ch, _) => {
                let status = ch.wait().ok().map(|e| e.status);
                exited();
                status
            }
            Proc::User(ch) => {
                // Without a cgroup: wait for the exit without reaping, read the script's CPU
                // (its own and its reaped children's) while it is a zombie, then reap it.
                if let Some(pid) = rustix::process::Pid::from_raw(ch.id() as i32) {
                    let zombie = rustix::process::waitid(
                        rustix::process::WaitId::Pid(pid),
                        rustix::process::WaitIdOptions::EXITED
                            | rustix::process::WaitIdOptions::NOWAIT,
                    );
                    if zombie.is_ok()
                        && let Some(ns) = zombie_cpu_ns(ch.id())
                    {
                        c.account().add_kernel_cpu_ns(ns);
                    }
                }
                exited();
                ch.wait().ok()
            }
        }
    }
}

/// The CPU of an exited, unreaped process and of the children it reaped (`utime + stime +
/// cutime + cstime` of /proc/PID/stat), in nanoseconds.
fn zombie_cpu_ns(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let f: Vec<u64> = text[text.rfind(')')? + 2..]
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let ticks: u64 = f.iter().sum();
    Some(ticks * 1_000_000_000 / rustix::param::clock_ticks_per_second())
}

/// Runs a script: sends its outcome on `head_tx` as soon as it is known (the head parsed, or
/// why there is none), then the body's chunks on `body_tx`; a timeout after the head ends the
/// body with an error.
#[allow(clippy::too_many_arguments)]
fn run_script(
    kernel: Option<Arc<Manager>>,
    watchdog: &crate::cgi::Watchdog,
    c: &Container,
    script: &std::path::Path,
    env: std::collections::BTreeMap<String, std::ffi::OsString>,
    body: Stdin,
    timeout: Duration,
    max_head: usize,
    head_tx: tokio::sync::oneshot::Sender<CgiOutcome>,
    body_tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) {
    let mut head_tx = Some(head_tx);
    let outcome = run_script_inner(
        kernel,
        watchdog,
        c,
        script,
        env,
        body,
        timeout,
        max_head,
        &mut head_tx,
        &body_tx,
    );
    match head_tx.take() {
        Some(t) => {
            let _ = t.send(outcome);
        }
        None => {
            if let CgiOutcome::TimedOut = outcome {
                let _ = body_tx.blocking_send(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the CGI script took too long",
                )));
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_script_inner(
    kernel: Option<Arc<Manager>>,
    watchdog: &crate::cgi::Watchdog,
    c: &Container,
    script: &std::path::Path,
    env: std::collections::BTreeMap<String, std::ffi::OsString>,
    body: Stdin,
    timeout: Duration,
    max_head: usize,
    head_tx: &mut Option<tokio::sync::oneshot::Sender<CgiOutcome>>,
    body_tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> CgiOutcome {
    let dir = script.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let spawned = match &kernel {
        Some(m) => {
            let mut cmd = m.command(c, script);
            cmd.env_clear()
                .current_dir(&dir)
                .stdin(cgroup::Stdio::Piped)
                .stdout(cgroup::Stdio::Piped)
                .stderr(cgroup::Stdio::Inherit);
            for (k, v) in &env {
                cmd.env(k, v);
            }
            cmd.spawn()
                .map(|mut ch| {
                    let (i, o) = (ch.stdin.take(), ch.stdout.take());
                    (Proc::Kernel(ch, m.clone()), i, o)
                })
                .map_err(|e| e.to_string())
        }
        None => {
            let mut cmd = std::process::Command::new(script);
            cmd.env_clear()
                .envs(&env)
                .current_dir(&dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .process_group(0);
            cmd.spawn()
                .map(|mut ch| {
                    let i = ch
                        .stdin
                        .take()
                        .map(|s| std::fs::File::from(std::os::fd::OwnedFd::from(s)));
                    let o = ch
                        .stdout
                        .take()
                        .map(|s| std::fs::File::from(std::os::fd::OwnedFd::from(s)));
                    (Proc::User(ch), i, o)
                })
                .map_err(|e| e.to_string())
        }
    };
    let (mut proc, stdin, stdout) = match spawned {
        Ok(x) => x,
        Err(e) => return CgiOutcome::Failed(format!("the CGI script could not start: {e}")),
    };
    // The watchdog kills the script and its descendants when the timeout passes: its cgroup,
    // or its process group (the pid stays its own until it is reaped, after the watch ends).
    let watch = {
        let c = c.clone();
        let kernel = kernel.clone();
        let pid = match &proc {
            Proc::Kernel(ch, _) => ch.id() as i32,
            Proc::User(ch) => ch.id() as i32,
        };
        watchdog.watch(Instant::now() + timeout, move || match kernel {
            Some(m) => {
                let _ = m.kill(&c);
            }
            None => {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                }
            }
        })
    };
    // A body that fits in a new pipe (at least a page, PIPE_BUF) is written here without
    // blocking, as is the close that ends it (most requests have none); a larger one from a
    // thread, so a script that writes before it reads cannot deadlock with us.
    let feeder = match (stdin, body) {
        (None, _) => None,
        (Some(mut i), Stdin::Whole(b)) if b.len() <= PIPE_BUF => {
            let _ = i.write_all(&b);
            None
        }
        (Some(mut i), body) => Some(std::thread::spawn(move || match body {
            Stdin::Whole(b) => {
                let _ = i.write_all(&b);
            }
            Stdin::Stream(mut rx) => {
                while let Some(chunk) = rx.blocking_recv() {
                    if i.write_all(&chunk).is_err() {
                        break;
                    }
                }
            }
        })),
    };
    let mut parser = CgiHeadParser::new(max_head);
    let mut head_sent = false;
    let mut err = None;
    if let Some(mut o) = stdout {
        let mut buf = [0u8; 16384];
        loop {
            match o.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if head_sent {
                        let chunk = Bytes::copy_from_slice(&buf[..n]);
                        if body_tx.blocking_send(Ok(chunk)).is_err() {
                            // The client went away: stop the script.
                            proc.kill_all(c);
                            break;
                        }
                    } else {
                        match parser.feed(&buf[..n]) {
                            Ok(Some((h, rest))) => {
                                if !rest.is_empty() {
                                    let _ = body_tx.blocking_send(Ok(Bytes::from(rest)));
                                }
                                if let Some(t) = head_tx.take() {
                                    let _ = t.send(CgiOutcome::Done(h));
                                }
                                head_sent = true;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                err = Some(e.to_string());
                                proc.kill_all(c);
                                break;
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    // The watch ends when the script has exited, before it is reaped.
    let mut timed_out = false;
    let status = proc.wait(c, || timed_out = watch.disarm());
    if let Some(f) = feeder {
        let _ = f.join();
    }
    if let Some(m) = &kernel {
        let _ = m.kill(c);
        let _ = m.sample();
        // The run's cgroups go with it: the manager keeps what it mirrors (the container,
        // its cgroup directories and their open counter files, about ten) until detached,
        // and a run's container is made for this run only.
        // (After SIGTERM the manager has removed every cgroup already.)
        if let Err(e) = m.detach(c)
            && e.kind() != cgroup::ErrorKind::ShutDown
        {
            eprintln!("rescon-httpd: removing the cgroups of {}: {e}", c.name());
        }
    }
    if timed_out {
        return CgiOutcome::TimedOut;
    }
    if let Some(e) = err {
        return CgiOutcome::Failed(format!("bad CGI response: {e}"));
    }
    if head_sent {
        // The head went out; the body ends when the sender is dropped.
        return CgiOutcome::Failed(String::new());
    }
    let how = match status {
        Some(s) if !s.success() => {
            format!("the CGI script failed ({s}) before its response head")
        }
        _ => parser.eof().to_string(),
    };
    CgiOutcome::Failed(how)
}
