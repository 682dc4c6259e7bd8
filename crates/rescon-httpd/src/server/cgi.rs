//! Stage: a CGI run. The script runs in its own container (and cgroup, with kernel
//! enforcement) on the blocking pool; its input streams from the client, its output streams
//! back as it comes, and the watchdog kills it when it has been silent for `timeouts.cgi_idle`
//! (or at `timeouts.cgi_total`, if set). Its standard error goes to the server's log through a
//! [`StderrSink`]: escaped, lines cut at about 2 KB, at most `limits.cgi_stderr_bytes` per run,
//! and every byte of it charged to the run's container (`stderr_bytes`).
//!
//! A run is described once, by a [`CgiRun`] (what the request asks and where it runs) and
//! then a [`ScriptJob`] (what the blocking thread needs), not by loose parameters.

use super::respond::{Body, simple};
use crate::cgi::{CgiHead, CgiHeadParser, CgiRequest, StderrSink, Watch, Watchdog, meta_variables};
use crate::config::{RequestLimits, Timeouts};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use rescon::Container;
use rescon_linux::cgroup::{self, Manager};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A CGI script's response body as it comes: chunks from the thread reading the script's
/// output, which waits while the client is slow (8 chunks of 16 KiB in flight at most). An
/// error ends the body early, so the client sees a cut response, not a complete one.
pub(crate) struct CgiBody {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
}

impl CgiBody {
    /// The body sent on `rx` (FastCGI responses stream the same way).
    pub(crate) fn from_channel(rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> Self {
        CgiBody { rx }
    }

    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::io::Result<Bytes>>> {
        self.rx.poll_recv(cx)
    }
}

/// One CGI request: the script found by dispatch, the request's environment, and where the
/// run is charged.
pub(crate) struct CgiRun {
    /// The script's file.
    pub(crate) script: PathBuf,
    pub(crate) script_name: String,
    pub(crate) path_info: String,
    pub(crate) document_root: PathBuf,
    pub(crate) server_name: String,
    pub(crate) remote: SocketAddr,
    pub(crate) local: SocketAddr,
    /// The run's own container (under the CGI class).
    pub(crate) container: Container,
    pub(crate) limits: RequestLimits,
    pub(crate) timeouts: Timeouts,
    pub(crate) kernel: Option<Arc<Manager>>,
    /// Caps the script in user mode where no cgroup does.
    pub(crate) limiter: Option<Arc<rescon_linux::usermode::Limiter>>,
    pub(crate) watchdog: Arc<Watchdog>,
    /// The uid and gid the script runs as, when not the server's (a vhost's `user`).
    pub(crate) user: Option<(u32, u32)>,
}

impl CgiRun {
    /// Runs the script for `req` and answers with its response (streamed) or why there is
    /// none (413, 408, 502, 504).
    pub(crate) async fn run(self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let stdin = match self.stdin(&parts.headers, body).await {
            Ok(s) => s,
            Err(r) => return r,
        };
        let query = parts.uri.query().unwrap_or("");
        let env = meta_variables(&CgiRequest {
            method: &parts.method,
            version: parts.version,
            raw_path: parts.uri.path(),
            query,
            headers: &parts.headers,
            content_length: stdin.1,
            remote: self.remote,
            local: self.local,
            server_name: &self.server_name,
            script_name: &self.script_name,
            path_info: &self.path_info,
            script_filename: &self.script,
            document_root: &self.document_root,
            container: Some(self.container.id()),
        });
        let (head_tx, head_rx) = tokio::sync::oneshot::channel();
        let (body_tx, body_rx) = tokio::sync::mpsc::channel(8);
        let job = ScriptJob {
            kernel: self.kernel,
            limiter: self.limiter,
            watchdog: self.watchdog,
            container: self.container.clone(),
            script: self.script,
            env,
            stdin: stdin.0,
            idle: self.timeouts.cgi_idle,
            total: self.timeouts.cgi_total,
            max_head: self.limits.cgi_max_header_bytes as usize,
            stderr_budget: self.limits.cgi_stderr_bytes,
            head_tx: Some(head_tx),
            body_tx: Some(body_tx),
            user: self.user,
        };
        // The script runs on the blocking pool: its pipes are blocking, and the thread's CPU
        // is charged to the CGI container. The thread sends the response head as soon as it
        // is parsed, then streams the body; it outlives this future if the client goes away
        // (then it stops the script).
        let _job = rescon_rt::spawn_blocking_in(&self.container, move || job.run());
        let out = match head_rx.await {
            Ok(o) => o,
            Err(_) => return simple(StatusCode::INTERNAL_SERVER_ERROR, "CGI job failed"),
        };
        let head = match out {
            CgiOutcome::TimedOut => {
                return simple(StatusCode::GATEWAY_TIMEOUT, TIMED_OUT);
            }
            CgiOutcome::Failed(msg) => return simple(StatusCode::BAD_GATEWAY, &msg),
            CgiOutcome::Done(head) => head,
        };
        let (status, headers) = match head {
            CgiHead::Document { status, headers } | CgiHead::ClientRedirect { status, headers } => {
                (status, headers)
            }
            CgiHead::LocalRedirect { location } => {
                let mut r = simple(StatusCode::FOUND, "see other");
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                return r;
            }
        };
        let mut r = Response::new(Body::Cgi(CgiBody { rx: body_rx }));
        *r.status_mut() = status;
        for (k, v) in headers.iter() {
            r.headers_mut().append(k, v.clone());
        }
        r
    }

    /// The script's standard input and its length: a body of declared length streams into
    /// the script as it arrives; one without (chunked) is read whole first, since CGI gives
    /// the script its length (RFC 3875, 4.1.2).
    async fn stdin(
        &self,
        headers: &http::HeaderMap,
        body: Incoming,
    ) -> Result<(Stdin, Option<u64>), Response<Body>> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        let too_large = || simple(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        match declared {
            Some(n) if n > self.limits.max_body_bytes => Err(too_large()),
            Some(0) => Ok((Stdin::Whole(Bytes::new()), None)),
            Some(n) => {
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                rescon_rt::spawn(forward_body(body, tx, n, self.timeouts.body));
                Ok((Stdin::Stream(rx), Some(n)))
            }
            None => {
                let limited = Limited::new(body, self.limits.max_body_bytes as usize).collect();
                match rescon_rt::timeout(self.timeouts.body, limited).await {
                    Ok(Ok(b)) => {
                        let whole = b.to_bytes();
                        let len = (!whole.is_empty()).then_some(whole.len() as u64);
                        Ok((Stdin::Whole(whole), len))
                    }
                    Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
                    // A body that breaks off or is malformed (a bad chunk size, a bare LF):
                    // the client's error, and where the next request starts is unknown.
                    Ok(Err(_)) => {
                        let mut r = simple(StatusCode::BAD_REQUEST, "malformed request body");
                        r.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        Err(r)
                    }
                    Err(_) => Err(simple(StatusCode::REQUEST_TIMEOUT, "request body too slow")),
                }
            }
        }
    }
}

/// Why a run was cut: the body's error, or the 504's text.
const TIMED_OUT: &str =
    "the CGI script was silent too long (timeouts.cgi_idle) or ran past timeouts.cgi_total";

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
    fn pid(&self) -> i32 {
        match self {
            Proc::Kernel(ch, _) => ch.id() as i32,
            Proc::User(ch) => ch.id() as i32,
        }
    }

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

/// What the blocking thread of a run needs: the script, its environment and input, where it
/// runs, and where its head and body go.
struct ScriptJob {
    kernel: Option<Arc<Manager>>,
    limiter: Option<Arc<rescon_linux::usermode::Limiter>>,
    watchdog: Arc<Watchdog>,
    container: Container,
    script: PathBuf,
    env: BTreeMap<String, OsString>,
    stdin: Stdin,
    /// Killed after this long without output (or input taken), or at `total`.
    idle: Duration,
    total: Option<Duration>,
    max_head: usize,
    /// What its standard error may put in the log.
    stderr_budget: u64,
    /// Taken when the head (or why there is none) is sent.
    head_tx: Option<tokio::sync::oneshot::Sender<CgiOutcome>>,
    /// Taken when the output ends: the body ends with it.
    body_tx: Option<tokio::sync::mpsc::Sender<std::io::Result<Bytes>>>,
    /// The uid and gid to run the script as, if not the server's.
    user: Option<(u32, u32)>,
}

/// A run's two output pipes, as the relay reads them.
struct Outputs {
    stdout: Option<std::fs::File>,
    stderr: Option<std::fs::File>,
}

impl ScriptJob {
    /// Runs the script: sends its outcome as soon as it is known (the head parsed, or why
    /// there is none), then the body's chunks; a timeout after the head ends the body with an
    /// error.
    fn run(mut self) {
        let outcome = self.execute();
        match self.head_tx.take() {
            Some(t) => {
                let _ = t.send(outcome);
            }
            None => {
                if let (CgiOutcome::TimedOut, Some(tx)) = (outcome, &self.body_tx) {
                    let _ = tx.blocking_send(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        TIMED_OUT,
                    )));
                }
            }
        }
    }

    /// Starts the script in its cgroup, or in a process group of its own.
    fn spawn(&mut self) -> Result<(Proc, Option<std::fs::File>, Outputs), String> {
        let dir = self
            .script
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        match &self.kernel {
            Some(m) => {
                let mut cmd = m.command(&self.container, &self.script);
                cmd.env_clear()
                    .current_dir(&dir)
                    .stdin(cgroup::Stdio::Piped)
                    .stdout(cgroup::Stdio::Piped)
                    .stderr(cgroup::Stdio::Piped);
                for (k, v) in &self.env {
                    cmd.env(k, v);
                }
                if let Some((uid, gid)) = self.user {
                    cmd.user(uid, gid);
                }
                cmd.spawn()
                    .map(|mut ch| {
                        let out = Outputs {
                            stdout: ch.stdout.take(),
                            stderr: ch.stderr.take(),
                        };
                        let i = ch.stdin.take();
                        (Proc::Kernel(ch, m.clone()), i, out)
                    })
                    .map_err(|e| e.to_string())
            }
            None => {
                let mut cmd = std::process::Command::new(&self.script);
                cmd.env_clear()
                    .envs(&self.env)
                    .current_dir(&dir)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0);
                if let Some((uid, gid)) = self.user {
                    // std drops the supplementary groups too (setgroups(0)) when root.
                    cmd.uid(uid).gid(gid);
                }
                let file = |fd: std::os::fd::OwnedFd| std::fs::File::from(fd);
                cmd.spawn()
                    .map(|mut ch| {
                        let i = ch.stdin.take().map(|s| file(s.into()));
                        let out = Outputs {
                            stdout: ch.stdout.take().map(|s| file(s.into())),
                            stderr: ch.stderr.take().map(|s| file(s.into())),
                        };
                        (Proc::User(ch), i, out)
                    })
                    .map_err(|e| e.to_string())
            }
        }
    }

    fn execute(&mut self) -> CgiOutcome {
        let (mut proc, stdin, outputs) = match self.spawn() {
            Ok(x) => x,
            Err(e) => return CgiOutcome::Failed(format!("the CGI script could not start: {e}")),
        };
        // Without a cgroup, the script's process group is held to its class's CPU limit in
        // user mode until the run ends.
        let _capped = match (&self.limiter, &proc) {
            (Some(l), Proc::User(_)) => l
                .cap(
                    rescon_linux::usermode::Target::ProcessGroup(proc.pid()),
                    &self.container,
                )
                .map_err(|e| tracing::warn!(error = %e, "a CGI run is not capped"))
                .ok(),
            _ => None,
        };
        let c = self.container.clone();
        // The watchdog kills the script and its descendants when it has been silent too long
        // (or ran past its total): its cgroup, or its process group (the pid stays its own
        // until it is reaped, after the watch ends). Each read of its output, and each write
        // of its input, is activity.
        let watch = {
            let (c, kernel, pid) = (c.clone(), self.kernel.clone(), proc.pid());
            self.watchdog
                .watch_idle(self.idle, self.total, move || match kernel {
                    Some(m) => {
                        let _ = m.kill(&c);
                    }
                    None => {
                        if let Some(p) = rustix::process::Pid::from_raw(pid) {
                            let _ = rustix::process::kill_process_group(
                                p,
                                rustix::process::Signal::KILL,
                            );
                        }
                    }
                })
        };
        let activity = watch.activity();
        // A body that fits in a new pipe (at least a page, PIPE_BUF) is written here without
        // blocking, as is the close that ends it (most requests have none); a larger one from
        // a thread, so a script that writes before it reads cannot deadlock with us.
        let body = std::mem::replace(&mut self.stdin, Stdin::Whole(Bytes::new()));
        let feeder = match (stdin, body) {
            (None, _) => None,
            (Some(mut i), Stdin::Whole(b)) if b.len() <= PIPE_BUF => {
                let _ = i.write_all(&b);
                None
            }
            (Some(mut i), body) => {
                let activity = activity.clone();
                Some(std::thread::spawn(move || match body {
                    Stdin::Whole(b) => {
                        for part in b.chunks(64 * 1024) {
                            if i.write_all(part).is_err() {
                                break;
                            }
                            activity.touch();
                        }
                    }
                    Stdin::Stream(mut rx) => {
                        while let Some(chunk) = rx.blocking_recv() {
                            if i.write_all(&chunk).is_err() {
                                break;
                            }
                            activity.touch();
                        }
                    }
                }))
            }
        };
        let mut parser = CgiHeadParser::new(self.max_head);
        let mut stderr = StderrLog::new(&c, self.stderr_budget);
        let (head_sent, err) = self.relay(outputs, &mut parser, &mut proc, &mut stderr, &watch);
        stderr.finish();
        // The watch ends when the script has exited, before it is reaped.
        let mut timed_out = false;
        let status = proc.wait(&c, || timed_out = watch.disarm());
        if let Some(f) = feeder {
            let _ = f.join();
        }
        if let Some(m) = &self.kernel {
            let _ = m.kill(&c);
            let _ = m.sample();
            // The run's cgroups go with it: the manager keeps what it mirrors (the container,
            // its cgroup directories and their open counter files, about ten) until detached,
            // and a run's container is made for this run only. (After SIGTERM the manager has
            // removed every cgroup already.)
            if let Err(e) = m.detach(&c)
                && e.kind() != cgroup::ErrorKind::ShutDown
            {
                tracing::warn!(container = %c.name(), error = %e, "removing a CGI run's cgroups failed");
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
        CgiOutcome::Failed(match status {
            Some(s) if !s.success() => {
                format!("the CGI script failed ({s}) before its response head")
            }
            _ => parser.eof().to_string(),
        })
    }

    /// Reads the script's output until its standard output ends: the head into `parser`
    /// (sent as soon as it is whole), the rest as body chunks; its standard error meanwhile
    /// into `stderr`, then to its end. Returns whether the head went out, and the head's
    /// error if any. When the output has ended by itself (not by a kill), the body's sender
    /// is dropped at once, so the response is complete while the standard error still drains.
    fn relay(
        &mut self,
        mut pipes: Outputs,
        parser: &mut CgiHeadParser,
        proc: &mut Proc,
        stderr: &mut StderrLog,
        watch: &Watch,
    ) -> (bool, Option<String>) {
        let activity = watch.activity();
        let mut buf = vec![0u8; 16384];
        let mut head_sent = false;
        let mut head_err = None;
        while let Some(out) = &pipes.stdout {
            let (out_ready, err_ready) = match ready(out, pipes.stderr.as_ref(), None) {
                Ok(r) => r,
                Err(_) => break,
            };
            if err_ready && !stderr.read_from(&mut pipes.stderr, &mut buf) {
                activity.touch();
            }
            if !out_ready {
                continue;
            }
            let n = match (&*out).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            activity.touch();
            if head_sent {
                let chunk = Bytes::copy_from_slice(&buf[..n]);
                if !self.send_body(chunk) {
                    // The client went away: stop the script.
                    proc.kill_all(&self.container);
                    break;
                }
                // Waiting for the client is not the script's silence.
                activity.touch();
                continue;
            }
            match parser.feed(&buf[..n]) {
                Ok(Some((h, rest))) => {
                    if let Some(t) = self.head_tx.take() {
                        let _ = t.send(CgiOutcome::Done(h));
                    }
                    head_sent = true;
                    if !rest.is_empty() && !self.send_body(Bytes::from(rest)) {
                        proc.kill_all(&self.container);
                        break;
                    }
                    activity.touch();
                }
                Ok(None) => {}
                Err(e) => {
                    proc.kill_all(&self.container);
                    head_err = Some(e.to_string());
                    break;
                }
            }
        }
        pipes.stdout = None;
        // The output ended by itself: the body is whole (a kill's cut is sent by `run`).
        if !watch.fired() {
            self.body_tx = None;
        }
        // The standard error to its end; a wait longer than the idle time ends it (a
        // descendant that escaped the kill may hold it open).
        while let Some(err) = &pipes.stderr {
            match ready(err, None, Some(self.idle)) {
                Ok((true, _)) => {
                    stderr.read_from(&mut pipes.stderr, &mut buf);
                }
                _ => break,
            }
        }
        (head_sent, head_err)
    }

    /// Sends a body chunk; false if the client has gone.
    fn send_body(&self, chunk: Bytes) -> bool {
        match &self.body_tx {
            Some(tx) => tx.blocking_send(Ok(chunk)).is_ok(),
            None => false,
        }
    }
}

/// Waits until `a` (and `b`, if given) can be read (or are closed): which ones. `timeout`:
/// `Ok((false, false))` when it passes first.
fn ready(
    a: &std::fs::File,
    b: Option<&std::fs::File>,
    timeout: Option<Duration>,
) -> std::io::Result<(bool, bool)> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let t = timeout.map(|d| Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos().into(),
    });
    let mut fds = [
        PollFd::new(a, PollFlags::IN),
        PollFd::new(b.unwrap_or(a), PollFlags::IN),
    ];
    let n = if b.is_some() { 2 } else { 1 };
    loop {
        match poll(&mut fds[..n], t.as_ref()) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let any = |f: &PollFd<'_>| !f.revents().is_empty();
    Ok((any(&fds[0]), n == 2 && any(&fds[1])))
}

/// A run's standard error on its way to the log: a [`StderrSink`] whose lines are written as
/// diagnostics naming the run's container (the access log names it too), every byte charged
/// to that container.
struct StderrLog {
    sink: StderrSink,
    container: Container,
    run: String,
}

impl StderrLog {
    fn new(c: &Container, budget: u64) -> StderrLog {
        StderrLog {
            sink: StderrSink::new(budget),
            container: c.clone(),
            run: c.name().to_string(),
        }
    }

    /// Reads what `pipe` has; at its end (or an error) closes it. Returns whether it ended.
    fn read_from(&mut self, pipe: &mut Option<std::fs::File>, buf: &mut [u8]) -> bool {
        let Some(f) = pipe else { return true };
        let n = match (&*f).read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return false,
            Ok(0) | Err(_) => {
                *pipe = None;
                return true;
            }
            Ok(n) => n,
        };
        self.container.account().add_stderr_bytes(n as u64);
        let run = &self.run;
        self.sink
            .feed(&buf[..n], &mut |line: &str| log_line(run, line));
        false
    }

    /// The stream's end: its last line, and the note about what was dropped.
    fn finish(&mut self) {
        let run = &self.run;
        self.sink.finish(&mut |line: &str| log_line(run, line));
    }
}

/// One line of a run's standard error, escaped by the sink.
fn log_line(container: &str, line: &str) {
    tracing::warn!(%container, "CGI stderr: {line}");
}
