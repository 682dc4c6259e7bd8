//! End to end: the `rescon-httpd` binary with a configuration of the test's own, on loopback,
//! asked by a real HTTP/1.1 client (raw requests over TCP, so every byte is the test's).
//! Each test starts its own server on a free port and stops it (SIGTERM, which also removes
//! its cgroups) when it ends, also when it fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    log: PathBuf,
    /// The server's standard error (its diagnostics) after `listening on`, line by line, as
    /// bytes.
    diagnostics: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A site: two vhosts, CGI scripts, and `extra` appended to the configuration.
fn start(extra_containers: &str, extra: &str) -> Server {
    start_with(extra_containers, "", extra, "", "")
}

/// [`start`], with `listener_extra` added to the listener's table.
fn start_with(
    extra_containers: &str,
    listener_extra: &str,
    extra: &str,
    admin_extra: &str,
    server_extra: &str,
) -> Server {
    start_in(
        None,
        extra_containers,
        listener_extra,
        extra,
        admin_extra,
        server_extra,
    )
}

/// [`start_with`], the server run in network namespace `netns` (`ip netns exec`) if given.
fn start_in(
    netns: Option<&str>,
    extra_containers: &str,
    listener_extra: &str,
    extra: &str,
    admin_extra: &str,
    server_extra: &str,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for v in ["a", "b"] {
        std::fs::create_dir_all(d.join(v)).unwrap();
        std::fs::write(d.join(v).join("index.html"), format!("<h1>site {v}</h1>\n")).unwrap();
    }
    std::fs::write(d.join("a/file.txt"), "0123456789abcdef").unwrap();
    std::fs::write(d.join("secret.txt"), "outside the root").unwrap();
    std::os::unix::fs::symlink(d.join("secret.txt"), d.join("a/link.txt")).unwrap();
    let cgi = d.join("cgi");
    std::fs::create_dir_all(&cgi).unwrap();
    write_exec(
        &cgi.join("env.sh"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\necho \"container=$RESCON_CONTAINER\"\necho \"query=$QUERY_STRING\"\necho \"proxy=$HTTP_PROXY\"\n",
    );
    write_exec(
        &cgi.join("echo.sh"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\ncat\n",
    );
    write_exec(&cgi.join("crash.sh"), "#!/bin/sh\necho oops >&2\nexit 3\n");
    write_exec(
        &cgi.join("slow.sh"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nfirst\\n'\nsleep 5\necho never\n",
    );
    write_exec(
        &cgi.join("hang.sh"),
        &format!(
            "#!/bin/sh\necho $$ > {0}/hang.pid\nsleep 300 &\necho $! > {0}/hang.child\nwait\n",
            d.display()
        ),
    );
    write_exec(
        &cgi.join("nap.sh"),
        "#!/bin/sh\nsleep 0.6\nprintf 'Content-Type: text/plain\\n\\nrested\\n'\n",
    );
    write_exec(
        &cgi.join("stream.sh"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nfor i in 1 2 3 4 5 6 7 8; do echo \"tick $i\"; sleep 0.4; done\necho end\n",
    );
    write_exec(
        &cgi.join("forever.sh"),
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nwhile :; do echo tick; sleep 0.3; done\n",
    );
    // 50 MB of random bytes (NULs, escapes, newlines, a forged line) to standard error, then
    // an answer.
    write_exec(
        &cgi.join("noisy.sh"),
        "#!/bin/sh\nprintf 'FORGED\\033[2J\\r\\n2026-01-01T00:00:00Z  INFO rescon_httpd: forged\\n' >&2\nhead -c 52428800 /dev/urandom >&2\nprintf 'Content-Type: text/plain\\n\\ndone\\n'\n",
    );
    write_exec(
        &cgi.join("spin.sh"),
        "#!/bin/sh\ni=0\nwhile [ $i -lt 60000 ]; do i=$((i+1)); done\nprintf 'Content-Type: text/plain\\n\\nspun\\n'\n",
    );
    let log = d.join("access.log");
    let conf = format!(
        r#"
[server]
access_log = "{log}"
{server_extra}

[timeouts]
header = "2s"
keep_alive = "4s"
send = "2s"
cgi_idle = "1s"
cgi_total = "5s"

[limits]
max_header_bytes = "8KiB"

[admin]
socket = "{d}/admin.sock"
{admin_extra}

[containers.clients.premium]
class = "high"
[containers.clients.rest]
[containers.clients.limited]
max_connections = 1
[containers.site-a]
share = "fixed:0.5"
[containers.site-b]
share = "fixed:0.3"
[containers.cgi]
cpu_limit = "30%"
enforcement = "kernel"
{extra_containers}

[[listener]]
name = "web"
address = "127.0.0.1"
port = 0
black_hole = ["127.0.0.66/32"]
{listener_extra}

[[listener.class]]
name = "premium"
container = "clients/premium"
prefixes = ["127.0.0.2/32"]

[[listener.class]]
name = "limited"
container = "clients/limited"
prefixes = ["127.0.0.3/32"]

[[listener.class]]
name = "rest"
container = "clients/rest"
except = []

[[vhost]]
name = "a"
hosts = ["a.test", "localhost"]
root = "{d}/a"
container = "site-a"
default = true

[[vhost.cgi]]
prefix = "/cgi-bin/"
dir = "{d}/cgi"
container = "cgi"

[[vhost]]
name = "b"
hosts = ["b.test"]
root = "{d}/b"
container = "site-b"
{extra}
"#,
        log = log.display(),
        d = d.display(),
    );
    let path = d.join("httpd.toml");
    std::fs::write(&path, conf).unwrap();
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_rescon-httpd")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_rescon-httpd")),
    };
    let mut child = cmd
        .arg("--config")
        .arg(&path)
        .arg("--workers")
        .arg("2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(out).lines() {});
    // The address is in the diagnostics on standard error; the rest of them is passed on.
    let mut diag = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        let n = diag.read_line(&mut line).unwrap();
        assert!(n > 0, "the server said its address");
        let line = line.trim_end();
        eprintln!("{line}");
        if let Some(a) = listening_on(line) {
            break a.parse().unwrap();
        }
    };
    let diagnostics = Arc::new(Mutex::new(Vec::new()));
    let kept = diagnostics.clone();
    std::thread::spawn(move || {
        for l in diag.split(b'\n').map_while(Result::ok) {
            eprintln!("{}", String::from_utf8_lossy(&l));
            kept.lock().unwrap().push(l);
        }
    });
    Server {
        child,
        addr,
        dir,
        log,
        diagnostics,
    }
}

/// The address of a `listening on ADDR` diagnostic line.
fn listening_on(line: &str) -> Option<&str> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    rest.split(|c: char| c.is_whitespace() || c == '"').next()
}

/// Connects from `src` (a 127.0.0.x address).
fn connect_from(src: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into())?;
    s.connect(&to.into())?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw bytes and reads the response until the server closes.
fn raw(s: &Server, src: &str, req: &[u8]) -> Option<Resp> {
    let mut c = connect_from(src, s.addr).unwrap();
    c.write_all(req).unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let mut body = buf[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Some(Resp { status, head, body })
}

/// Decodes a chunked body (streamed CGI responses come so); `None` if it is cut short.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).ok()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

fn get(s: &Server, path: &str, headers: &str) -> Resp {
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n");
    raw(s, "127.0.0.1", req.as_bytes()).expect("a response")
}

fn admin(s: &Server, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut c = std::os::unix::net::UnixStream::connect(s.dir.path().join("admin.sock")).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn json(s: &str) -> serde_json::Value {
    // A chunked body has size lines; the admin API sends Content-Length, so none here.
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn static_files_ranges_conditionals_and_traversal() {
    let s = start("", "");
    let r = get(&s, "/", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<h1>site a</h1>\n");
    let etag = r.header("etag").expect("an ETag");
    assert!(r.header("last-modified").is_some());
    let r = get(&s, "/file.txt", "Range: bytes=2-5\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "2345");
    assert_eq!(r.header("content-range").as_deref(), Some("bytes 2-5/16"));
    let r = get(&s, "/file.txt", "Range: bytes=100-\r\n");
    assert_eq!(r.status, 416);
    let r = get(&s, "/", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let req = b"HEAD /file.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let r = raw(&s, "127.0.0.1", req).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("16"));
    assert!(r.body.is_empty());
    assert_eq!(get(&s, "/nothing-here", "").status, 404);
    for attack in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/a/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/file.txt%00.html",
        "/link.txt",
    ] {
        let r = get(&s, attack, "");
        assert!(
            r.status >= 400 && !r.text().contains("outside the root"),
            "{attack}: {} {}",
            r.status,
            r.text()
        );
    }
    // Virtual hosts by Host.
    let req = b"GET / HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n";
    assert_eq!(
        raw(&s, "127.0.0.1", req).unwrap().text(),
        "<h1>site b</h1>\n"
    );
    // A changed file is served changed within a second (the in-memory cache checks again),
    // with a new entity tag; a removed one is a 404 in the same time.
    let before = get(&s, "/file.txt", "");
    assert_eq!(before.text(), "0123456789abcdef");
    let file = s.dir.path().join("a/file.txt");
    std::fs::write(file.with_extension("new"), "changed").unwrap();
    std::fs::rename(file.with_extension("new"), &file).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let after = get(&s, "/file.txt", "");
    assert_eq!(after.text(), "changed");
    assert_ne!(after.header("etag"), before.header("etag"));
    std::fs::remove_file(&file).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(&s, "/file.txt", "").status, 404);
}

#[test]
fn cgi_output_body_errors_timeouts_and_cpu() {
    let s = start("", "");
    let r = get(&s, "/cgi-bin/env.sh?x=1", "Proxy: http://evil.test/\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert!(t.contains("query=x=1"), "{t}");
    assert!(
        t.contains("proxy=\n"),
        "httpoxy: the Proxy header is not passed on: {t}"
    );
    let id: u64 = t
        .lines()
        .find_map(|l| l.strip_prefix("container="))
        .unwrap()
        .parse()
        .expect("the script ran in a container");
    assert!(id > 0);
    let req = b"POST /cgi-bin/echo.sh HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 11\r\n\r\nhello world";
    let r = raw(&s, "127.0.0.1", req).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    assert_eq!(get(&s, "/cgi-bin/crash.sh", "").status, 502);
    assert_eq!(get(&s, "/cgi-bin/missing.sh", "").status, 404);
    a_hung_script_is_cut_and_killed(&s);
    // CPU of a CGI run reaches the CGI class container.
    assert_eq!(get(&s, "/cgi-bin/spin.sh", "").status, 200);
    let t = Instant::now();
    loop {
        let (st, body) = admin(&s, "GET", "/containers/cgi?depth=0", "");
        assert_eq!(st, 200);
        let v = json(&body);
        let u = &v["usage_subtree"];
        let cpu = u["kernel_cpu_ns"].as_u64().unwrap() + u["cpu_ns"].as_u64().unwrap();
        if cpu > 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no CPU charged to cgi: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn client_classes_black_hole_and_connection_limit() {
    let s = start("", "");
    let req = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(&s, "127.0.0.2", req).unwrap().status, 200);
    assert_eq!(raw(&s, "127.0.0.1", req).unwrap().status, 200);
    // Each class has its own socket; the black hole's SYNs are dropped in the kernel, so
    // there is no connection at all (no SYN-ACK within a second; loopback answers in
    // microseconds).
    let hole = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    hole.bind(&"127.0.0.66:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let err = hole
        .connect_timeout(&s.addr.into(), Duration::from_secs(1))
        .expect_err("the black hole answers nothing");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ),
        "{err}"
    );
    // A prefix moved to the black hole through the admin API is dropped in the kernel too.
    assert_eq!(raw(&s, "127.0.0.5", req).unwrap().status, 200);
    let (st, body) = admin(
        &s,
        "POST",
        "/filters/move",
        r#"{"prefix": "127.0.0.5/32", "to": "black-hole"}"#,
    );
    assert_eq!(st, 200, "{body}");
    let moved = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    moved
        .bind(&"127.0.0.5:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    assert!(
        moved
            .connect_timeout(&s.addr.into(), Duration::from_secs(1))
            .is_err(),
        "a blocked prefix gets no SYN-ACK"
    );
    // Classes show in the access log.
    let t = Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(&s.log).unwrap_or_default();
        if log.lines().count() >= 2 || t.elapsed() > Duration::from_secs(5) {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(log.contains("class=premium"), "{log}");
    assert!(log.contains("class=rest"), "{log}");
    // Each line carries the CPU its request took: timed poll by poll, so never zero.
    for line in log.lines() {
        let cpu: u64 = line
            .split("cpu_us=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no cpu_us in {line}"));
        assert!(cpu > 0, "{line}");
    }
    assert!(!log.contains("127.0.0.66"), "{log}");
    // limited: one connection at a time; the second gets 503.
    let mut first = connect_from("127.0.0.3", s.addr).unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(first.read(&mut buf).unwrap() > 0, "the first is served");
    let r = raw(&s, "127.0.0.3", req).unwrap();
    assert_eq!(r.status, 503);
    drop(first);
    let t = Instant::now();
    let mut last = 0;
    while t.elapsed() < Duration::from_secs(5) {
        last = raw(&s, "127.0.0.3", req).map_or(0, |r| r.status);
        if last == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(last, 200, "served again once the first connection closed");
}

#[test]
fn bad_requests_do_not_disturb_the_server() {
    let s = start("", "");
    let r = raw(&s, "127.0.0.1", b"GARBAGE\x00\x01 nonsense\r\n\r\n").unwrap();
    assert_eq!(r.status, 400);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "x".repeat(64 * 1024)
    );
    let r = raw(&s, "127.0.0.1", big.as_bytes());
    assert!(
        r.as_ref()
            .is_none_or(|r| r.status == 431 || r.status == 400),
        "oversized headers are refused"
    );
    // A slow client that never finishes its head is cut off by the header timeout (2 s).
    let mut slow = connect_from("127.0.0.1", s.addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: loc").unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(9),
        "the slow client was cut off"
    );
    // And the server still serves.
    assert_eq!(get(&s, "/", "").status, 200);
}

/// Reads one response with a Content-Length from a kept-alive connection: its status.
fn read_one(c: &mut TcpStream) -> std::io::Result<u16> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    c.read_exact(&mut body)?;
    Ok(head.split(' ').nth(1).unwrap().parse().unwrap())
}

#[test]
fn kept_alive_connections_wait_keep_alive_for_a_request_and_header_for_its_head() {
    // header = 2 s, keep_alive = 4 s. Before, hyper's head timer ran between requests too:
    // an idle connection closed at 2 s, and keep_alive did nothing.
    let s = start("", "");
    let req = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut c = connect_from("127.0.0.1", s.addr).unwrap();
    c.write_all(req).unwrap();
    assert_eq!(read_one(&mut c).unwrap(), 200);
    // Quiet past the header timeout, within keep-alive: the connection still serves.
    std::thread::sleep(Duration::from_secs(3));
    c.write_all(req).unwrap();
    assert_eq!(
        read_one(&mut c).expect("still open after 3 s of quiet"),
        200
    );
    // Then the server closes it, cleanly, once keep_alive passes.
    let t = Instant::now();
    let mut rest = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.read_to_end(&mut rest)
        .expect("a clean close, not a reset");
    let waited = t.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        waited >= Duration::from_millis(3500) && waited < Duration::from_secs(15),
        "closed after {waited:?} of quiet"
    );
    // A next request's head that stalls is cut by the header timeout from its first byte,
    // not left for keep_alive.
    let mut c = connect_from("127.0.0.1", s.addr).unwrap();
    c.write_all(req).unwrap();
    assert_eq!(read_one(&mut c).unwrap(), 200);
    c.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    let t = Instant::now();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = c.read_to_end(&mut rest);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_millis(3900),
        "cut after {waited:?}"
    );
}

#[test]
fn admin_api_and_reload() {
    let s = start("", "");
    let (st, body) = admin(&s, "GET", "/containers", "");
    assert_eq!(st, 200);
    let v = json(&body);
    assert_eq!(v["name"], "root");
    // A request names vhost b: its connection's container moves under site-b, usage and all.
    let r = get(&s, "/", "");
    assert_eq!(r.status, 200);
    let req = b"GET / HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n";
    let r = raw(&s, "127.0.0.1", req).expect("a response");
    assert_eq!(r.status, 200);
    assert_eq!(String::from_utf8_lossy(&r.body), "<h1>site b</h1>\n");
    let requests = |c: &str| {
        let (st, body) = admin(&s, "GET", &format!("/containers/{c}?depth=0"), "");
        assert_eq!(st, 200, "{body}");
        json(&body)["usage_subtree"]["requests"].as_u64().unwrap()
    };
    assert_eq!(requests("site-b"), 1);
    assert_eq!(requests("site-a"), 1, "localhost is vhost a");
    let (st, body) = admin(&s, "GET", "/containers/cgi", "");
    assert_eq!(st, 200, "{body}");
    assert_eq!(json(&body)["attrs"]["cpu_limit"], "0.3");
    let (st, body) = admin(&s, "PATCH", "/containers/cgi", "cpu_limit=20%");
    assert_eq!(st, 200, "{body}");
    let (_, body) = admin(&s, "GET", "/containers/cgi", "");
    assert_eq!(json(&body)["attrs"]["cpu_limit"], "0.2");
    let (st, body) = admin(&s, "PATCH", "/containers/cgi", "priority=5000");
    assert!(st == 422 || st == 400, "{st} {body}");
    assert!(body.contains("priority"), "{body}");
    let (st, body) = admin(&s, "GET", "/metrics", "");
    assert_eq!(st, 200);
    assert!(body.contains("cgi"), "{body}");
    // A body over the API's 1 MiB is refused as such, not read as an empty one.
    let mut c = std::os::unix::net::UnixStream::connect(s.dir.path().join("admin.sock")).unwrap();
    let big = 2usize << 20;
    let head = format!(
        "PATCH /containers/cgi HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {big}\r\n\r\n"
    );
    c.write_all(head.as_bytes()).unwrap();
    let _ = c.write_all(&vec![b'x'; big]); // the server may stop reading at 1 MiB
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    // Reload: a new attribute value applies live; a bad file changes nothing.
    let conf = s.dir.path().join("httpd.toml");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        text.replace("cpu_limit = \"30%\"", "cpu_limit = \"40%\""),
    )
    .unwrap();
    let hup = |pid: u32| {
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };
    hup(s.child.id());
    let t = Instant::now();
    loop {
        let (_, body) = admin(&s, "GET", "/containers/cgi", "");
        if json(&body)["attrs"]["cpu_limit"] == "0.4" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "reload applied: {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(
        &conf,
        text.replace("cpu_limit = \"30%\"", "cpu_limit = \"400%%\""),
    )
    .unwrap();
    hup(s.child.id());
    std::thread::sleep(Duration::from_millis(300));
    let (_, body) = admin(&s, "GET", "/containers/cgi", "");
    assert_eq!(
        json(&body)["attrs"]["cpu_limit"],
        "0.4",
        "a bad reload keeps the old"
    );
    assert_eq!(get(&s, "/", "").status, 200);
}

#[test]
fn flood_defense_runs_beside_the_listener() {
    let s = start_with(
        "",
        r#"flood_defense = { action = "black-hole", syn_rate = 500, hold = "5s" }"#,
        "",
        "",
        "",
    );
    // The defender samples on a thread of its own in the server.
    let threads = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/task", s.child.id()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|c| c.trim().to_string())
            .collect()
    };
    let t = Instant::now();
    while !threads().iter().any(|t| t == "rescon-defense") {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no defense thread among {:?}",
            threads()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // And the listener serves as before.
    assert_eq!(get(&s, "/", "").status, 200);
}

#[test]
fn admin_api_over_loopback_tcp_needs_the_token() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = "e2e-token-0123456789abcdef";
    let s = start_with(
        "",
        "",
        "",
        &format!("tcp = \"127.0.0.1:{port}\"\ntoken = \"{token}\""),
        "",
    );
    let api = |auth: &str| -> (u16, String) {
        let t = Instant::now();
        let mut c = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(c) => break c,
                Err(e) => {
                    assert!(t.elapsed() < Duration::from_secs(5), "admin TCP: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        write!(
            c,
            "GET /containers/cgi?depth=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n"
        )
        .unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        let status = text[9..12].parse().unwrap();
        (status, text)
    };
    let (st, text) = api("");
    assert_eq!(st, 401, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{text}"
    );
    assert_eq!(
        api("Authorization: Bearer wrong-token-0000000000\r\n").0,
        401
    );
    let (st, text) = api(&format!("Authorization: Bearer {token}\r\n"));
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("\"cpu_limit\""), "{text}");
    drop(s);
}

#[test]
fn per_request_containers_charge_each_request_under_its_vhost() {
    let s = start_with("", "", "", "", "per_request_containers = true");
    let req = b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\nGET / HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n";
    let mut c = connect_from("127.0.0.1", s.addr).unwrap();
    c.write_all(req).unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    assert_eq!(
        String::from_utf8_lossy(&buf)
            .matches("<h1>site b</h1>")
            .count(),
        2,
        "two responses on one connection"
    );
    let requests = |c: &str| {
        let (st, body) = admin(&s, "GET", &format!("/containers/{c}?depth=1"), "");
        assert_eq!(st, 200, "{body}");
        json(&body)
    };
    // Both requests were charged under site-b (their containers released into it), while the
    // connection stayed under its class.
    let b = requests("site-b");
    assert_eq!(b["usage_subtree"]["requests"].as_u64(), Some(2), "{b}");
    let rest = requests("clients/rest");
    assert_eq!(
        rest["usage_subtree"]["requests"].as_u64(),
        Some(0),
        "{rest}"
    );
    // The access log names a container of its own for each request.
    let t = Instant::now();
    let ids = loop {
        let log = std::fs::read_to_string(&s.log).unwrap_or_default();
        let ids: Vec<String> = log
            .lines()
            .filter_map(|l| l.split("container=").nth(1)?.split(' ').next())
            .map(str::to_owned)
            .collect();
        if ids.len() >= 2 {
            break ids;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_ne!(ids[0], ids[1], "one container per request: {ids:?}");
}

#[test]
fn cgi_runs_leave_no_container_cgroup_or_open_file_behind() {
    // Each run has a container of its own (with kernel enforcement, cgroups and their open
    // counter files): all of it goes when the run ends, and what it used stays in cgi's
    // subtree. Before, each run kept about ten descriptors and its cgroup directories.
    let s = start("", "");
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", s.child.id()))
            .unwrap()
            .count()
    };
    assert_eq!(get(&s, "/cgi-bin/env.sh", "").status, 200);
    let first = fds();
    for _ in 0..30 {
        assert_eq!(get(&s, "/cgi-bin/env.sh", "").status, 200);
    }
    let t = Instant::now();
    loop {
        let (st, body) = admin(&s, "GET", "/containers/cgi?depth=1", "");
        assert_eq!(st, 200, "{body}");
        let v = json(&body);
        let runs = v["children"].as_array().map_or(0, Vec::len);
        if runs == 0 && v["usage_subtree"]["requests"].as_u64() == Some(31) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{runs} run containers left, or requests not kept: {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let now = fds();
    assert!(
        now <= first + 4,
        "{first} descriptors after one run, {now} after 31"
    );
}

/// A hung script gets 504 after the 1 s timeout, and neither it nor its child is left.
fn a_hung_script_is_cut_and_killed(s: &Server) {
    let r = get(s, "/cgi-bin/hang.sh", "");
    assert_eq!(r.status, 504);
    let pid = |f: &str| -> i32 {
        std::fs::read_to_string(s.dir.path().join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let alive = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map(|st| {
                !st.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    };
    let (p, c) = (pid("hang.pid"), pid("hang.child"));
    let t = Instant::now();
    while (alive(p) || alive(c)) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(p) && !alive(c),
        "the script {p} and its child {c} were killed"
    );
}

#[test]
fn cgi_cpu_is_charged_without_kernel_enforcement_too() {
    let s = start_with("", "", "", "", r#"enforcement = "user""#);
    for _ in 0..3 {
        assert_eq!(get(&s, "/cgi-bin/spin.sh", "").status, 200);
    }
    // Read from the exited script before it is reaped: ticks of 10 ms, so some CPU, not none.
    let (st, body) = admin(&s, "GET", "/containers/cgi?depth=0", "");
    assert_eq!(st, 200);
    let v = json(&body);
    assert!(
        v["usage_subtree"]["kernel_cpu_ns"].as_u64().unwrap() > 0,
        "no CPU charged to cgi: {body}"
    );
    assert_eq!(
        v["attrs"]["enforcement"], "kernel",
        "declared kernel, run user-level"
    );
    // Without a cgroup the timeout kills the script's process group.
    a_hung_script_is_cut_and_killed(&s);
}

/// `timeouts.cgi_idle` is between reads: a script that keeps sending (a line every 0.4 s for
/// 3.2 s, past the 1 s idle time) runs to its end; one that keeps sending for ever is cut at
/// `timeouts.cgi_total` (5 s), its body left incomplete.
#[test]
fn a_streaming_script_runs_while_it_sends_and_stops_at_its_total() {
    let s = start("", "");
    let r = get(&s, "/cgi-bin/stream.sh", "");
    assert_eq!(r.status, 200);
    let want: String = (1..=8).map(|i| format!("tick {i}\n")).collect::<String>() + "end\n";
    assert_eq!(r.text(), want, "the whole stream");
    let t = Instant::now();
    let mut c = connect_from("127.0.0.1", s.addr).unwrap();
    c.write_all(
        b"GET /cgi-bin/forever.sh HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.matches("tick").count() >= 5, "it streamed: {text}");
    assert!(!text.ends_with("0\r\n\r\n"), "cut, not complete: {text:?}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "cut at its total: {took:?}"
    );
}

/// Issue 26's hostile script: 50 MB of random bytes on standard error. The request completes;
/// the log gets at most `limits.cgi_stderr_bytes` (64 KiB) of it, escaped (no control byte,
/// the forged line inside one line of ours), then one line saying what was dropped; every
/// byte is charged to the CGI container.
#[test]
fn a_script_flooding_its_stderr_leaves_at_most_the_budget_in_the_log() {
    let s = start("", "");
    let t = Instant::now();
    let r = get(&s, "/cgi-bin/noisy.sh", "");
    assert_eq!((r.status, r.text().as_str()), (200, "done\n"));
    eprintln!("answered in {:?}", t.elapsed());
    // The note comes when the standard error has ended (after the response).
    let note = |d: &[Vec<u8>]| {
        d.iter()
            .any(|l| l.windows(21).any(|w| w == b"over its budget of 65"))
    };
    let t = Instant::now();
    while !note(&s.diagnostics.lock().unwrap()) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no note about dropped bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let diag = s.diagnostics.lock().unwrap().clone();
    let lines: Vec<&Vec<u8>> = diag
        .iter()
        .filter(|l| l.windows(12).any(|w| w == b"CGI stderr: "))
        .collect();
    let total: usize = lines.iter().map(|l| l.len() + 1).sum();
    eprintln!("{} stderr lines, {total} bytes in the log", lines.len());
    assert!(lines.len() > 10, "the script's lines are logged");
    // The lines' text and what each costs fit the budget; the whole lines (with the time,
    // level and container) too, give or take the note.
    assert!(
        total <= 64 * 1024 + 512,
        "{total} bytes of stderr in the log"
    );
    for l in &diag {
        assert!(
            l.iter().all(|&c| c >= 0x20 && c != 0x7f),
            "a raw control byte in the log: {:?}",
            String::from_utf8_lossy(l)
        );
        assert!(l.len() < 2048 + 256, "a line longer than a line may be");
    }
    let forged = String::from_utf8_lossy(lines[0]);
    assert!(forged.contains(r"CGI stderr: FORGED\x1B[2J "), "{forged}");
    assert!(
        !diag.iter().any(|l| l.starts_with(b"2026-01-01T00:00:00Z")),
        "a forged line of its own"
    );
    // Every byte is charged to the run's container, hence to the CGI class's subtree.
    let (st, body) = admin(&s, "GET", "/containers/cgi?depth=0", "");
    assert_eq!(st, 200);
    let charged = json(&body)["usage_subtree"]["stderr_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        charged >= 52_428_800,
        "{charged} stderr bytes charged: {body}"
    );
}

#[test]
fn cgi_output_streams_and_a_timeout_cuts_it() {
    let s = start("", "");
    // The script sends its head and a line, then hangs past the 1 s timeout: the head and the
    // line reach the client (streamed, not held until the end), then the body is cut: no
    // final chunk, so the client cannot take it for a whole response.
    let mut c = connect_from("127.0.0.1", s.addr).unwrap();
    c.write_all(b"GET /cgi-bin/slow.sh HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("first"), "{text}");
    assert!(!text.contains("never"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the body must not look complete: {text:?}"
    );
    // The log counts what went out of the cut body ("first\n"), and the time until the cut.
    let line = log_line(&s, "/cgi-bin/slow.sh");
    assert_eq!(logged_bytes(&line), 6, "{line}");
    let dur_us: u64 = field(&line, "dur_us=").parse().unwrap();
    assert!(dur_us >= 1_000_000, "logged when the body ended: {line}");
}

/// The access log's line for the request whose line contains `needle`, waited for: it is
/// written when the response's body has gone out.
fn log_line(s: &Server, needle: &str) -> String {
    let t = Instant::now();
    loop {
        let log = std::fs::read_to_string(&s.log).unwrap_or_default();
        if let Some(l) = log.lines().find(|l| l.contains(needle)) {
            return l.to_owned();
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no {needle} in {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The body bytes of a Combined Log Format line (after the quoted request line and status).
fn logged_bytes(line: &str) -> u64 {
    let after = line.split("\" ").nth(1).expect("a request line");
    after.split(' ').nth(1).unwrap().parse().unwrap()
}

/// The value after `key` in a log line, up to the next space.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(key)
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
}

#[test]
fn a_file_too_large_for_the_cache_streams_whole_ranged_and_headless() {
    let s = start("", "");
    // Larger than the server's cache (256 KiB): read a chunk at a time as the client takes it.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(s.dir.path().join("a/large.bin"), &data).unwrap();
    let r = get(&s, "/large.bin", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("3000000"));
    assert!(r.body == data, "the whole file, byte for byte");
    let r = get(&s, "/large.bin", "Range: bytes=65500-1000000\r\n");
    assert_eq!(r.status, 206);
    assert!(r.body == data[65500..=1_000_000], "exactly the range");
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 65500-1000000/3000000")
    );
    let head = b"HEAD /large.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let r = raw(&s, "127.0.0.1", head).expect("a response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("3000000"));
    assert!(r.body.is_empty());
    assert_eq!(logged_bytes(&log_line(&s, "GET /large.bin ")), 3_000_000);
}

#[test]
fn a_client_that_stops_reading_is_cut_off_by_the_send_timeout() {
    let s = start("", "");
    // 64 MiB (sparse: quick to make, zeros to read), far more than the socket buffers hold.
    let size = 64 << 20;
    let f = std::fs::File::create(s.dir.path().join("a/huge.bin")).unwrap();
    f.set_len(size).unwrap();
    let mut c = connect_from("127.0.0.1", s.addr).unwrap();
    c.write_all(b"GET /huge.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    // Take nothing for twice the send timeout (2 s): the server's writes wait, then it gives up.
    std::thread::sleep(Duration::from_secs(4));
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    assert!(
        got < size,
        "the connection ended before the whole file ({got} bytes of {size})"
    );
    // The server serves on, and logged the cut response with what went out.
    assert_eq!(get(&s, "/", "").status, 200);
    let sent = logged_bytes(&log_line(&s, "GET /huge.bin "));
    assert!(sent < size, "{sent}");
}

#[test]
fn a_reload_reopens_the_access_log_so_it_can_be_rotated() {
    let s = start("", "");
    assert_eq!(get(&s, "/?before", "").status, 200);
    log_line(&s, "/?before");
    // logrotate's way: rename the file, then SIGHUP.
    let rotated = s.log.with_extension("log.1");
    std::fs::rename(&s.log, &rotated).unwrap();
    let st = Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    while !s.log.exists() {
        assert!(t.elapsed() < Duration::from_secs(5), "no new log file");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(&s, "/?after", "").status, 200);
    log_line(&s, "/?after");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        old.contains("/?before") && !old.contains("/?after"),
        "{old}"
    );
}

#[test]
fn sigquit_finishes_the_requests_under_way_refuses_new_ones_and_exits() {
    let mut s = start("", "");
    // Idle kept-alive, and mid-request (a script that takes 0.6 s).
    let mut idle = connect_from("127.0.0.1", s.addr).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(read_one(&mut idle).unwrap(), 200);
    let mut busy = connect_from("127.0.0.1", s.addr).unwrap();
    busy.write_all(b"GET /cgi-bin/nap.sh HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let st = Command::new("kill")
        .args(["-QUIT", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // While the script still runs, new connections are refused.
    let t = Instant::now();
    while TcpStream::connect_timeout(&s.addr, Duration::from_millis(300)).is_ok() {
        assert!(t.elapsed() < Duration::from_secs(1), "still accepting");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The request under way is answered whole, and its connection then closed.
    let mut out = Vec::new();
    busy.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    busy.read_to_end(&mut out)
        .expect("a clean close after the response");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("rested"), "{text}");
    // The idle connection is closed without waiting for keep_alive.
    let t = Instant::now();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(
        rest.is_empty() && t.elapsed() < Duration::from_secs(3),
        "{rest:?}"
    );
    // The server exits by itself, successfully.
    let t = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn the_access_log_counts_the_body_bytes_that_went_out() {
    let s = start("", "");
    // Streamed (chunked) CGI output: the body's length, not 0 for want of a Content-Length.
    let r = get(&s, "/cgi-bin/env.sh?streamed", "");
    assert_eq!(r.status, 200);
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
    );
    let line = log_line(&s, "/cgi-bin/env.sh?streamed");
    assert_eq!(logged_bytes(&line), r.body.len() as u64, "{line}");
    // A whole file, a range of it, and HEAD (no body goes out).
    let r = get(&s, "/file.txt", "");
    assert_eq!(r.body.len(), 16);
    assert_eq!(logged_bytes(&log_line(&s, "GET /file.txt ")), 16);
    let r = get(&s, "/file.txt?part", "Range: bytes=2-5\r\n");
    assert_eq!((r.status, r.body.len()), (206, 4));
    assert_eq!(logged_bytes(&log_line(&s, "/file.txt?part")), 4);
    let head = b"HEAD /file.txt?head HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let r = raw(&s, "127.0.0.1", head).expect("a response");
    assert_eq!(r.status, 200);
    assert_eq!(logged_bytes(&log_line(&s, "/file.txt?head")), 0);
}

#[test]
fn cgi_request_bodies_stream_in_and_chunked_ones_are_read_whole() {
    let s = start("", "");
    // 1 MB through `cat`: in as the client sends it, out as the script writes it.
    let body: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut req = format!(
        "POST /cgi-bin/echo.sh HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let r = raw(&s, "127.0.0.1", &req).expect("a whole response");
    assert_eq!(r.status, 200);
    assert!(
        r.body == body,
        "the echo differs: {} bytes back",
        r.body.len()
    );
    // Without a length the body is read first, so the script gets CONTENT_LENGTH.
    let req = b"POST /cgi-bin/echo.sh HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let r = raw(&s, "127.0.0.1", req).expect("a response");
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    // A declared length over the limit is refused before the script starts.
    let req = b"POST /cgi-bin/echo.sh HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 99999999999\r\n\r\n";
    assert_eq!(raw(&s, "127.0.0.1", req).unwrap().status, 413);
}

/// A named network namespace with `lo` up, deleted when dropped (also when the test fails).
struct Netns(String);

impl Netns {
    /// A namespace named after the test (`tag`) and this process, so that tests running at
    /// once, here and in other test processes, never share one.
    fn create(tag: &str) -> Netns {
        let name = format!("rescon-e2e-{tag}-{}", std::process::id());
        let ok = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("run ip");
            assert!(st.success(), "ip {args:?} failed");
        };
        ok(&["netns", "add", &name]);
        let ns = Netns(name);
        ok(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` on a thread that has joined the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
        std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn the_edge_filter_drops_the_black_holes_syns_at_the_interface() {
    let root = rustix::process::geteuid().is_root();
    if !root {
        assert!(
            std::env::var_os("RESCON_REQUIRE_KERNEL").is_none_or(|v| v != "1"),
            "RESCON_REQUIRE_KERNEL=1 but not root (network namespaces and XDP need it)"
        );
        eprintln!("skipped: network namespaces and XDP need root");
        return;
    }
    let ns = Netns::create("edge");
    let s = std::sync::Arc::new(start_in(Some(&ns.0), "", "edge = [\"lo\"]", "", "", ""));
    // The listener's kernel group joins the admin API's view just after it listens.
    let edges = |s: &Server| -> serde_json::Value {
        let t = Instant::now();
        loop {
            let (st, body) = admin(s, "GET", "/filters", "");
            assert_eq!(st, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let e = v["listeners"][0]["edges"].clone();
            if !e.is_null() || t.elapsed() > Duration::from_secs(5) {
                return e;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let e = edges(&s);
    assert_eq!(e[0]["iface"], "lo", "{e}");
    assert_eq!(
        e[0]["prefixes"],
        serde_json::json!(["127.0.0.66/32"]),
        "{e}"
    );
    assert_eq!(e[0]["drops"], 0, "{e}");
    let s2 = s.clone();
    ns.run(move || {
        let req = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        assert_eq!(raw(&s2, "127.0.0.1", req).unwrap().status, 200);
        let hole =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        hole.bind(&"127.0.0.66:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        assert!(
            hole.connect_timeout(&s2.addr.into(), Duration::from_millis(500))
                .is_err(),
            "the black hole answers nothing"
        );
    });
    let e = edges(&s);
    assert!(
        e[0]["drops"].as_u64().unwrap() >= 1,
        "dropped at the edge: {e}"
    );
    // A prefix the operator moves to the black hole goes to the edge too.
    let (st, body) = admin(
        &s,
        "POST",
        "/filters/move",
        r#"{"prefix": "127.0.0.5/32", "to": "black-hole"}"#,
    );
    assert_eq!(st, 200, "{body}");
    let e = edges(&s);
    assert_eq!(
        e[0]["prefixes"],
        serde_json::json!(["127.0.0.5/32", "127.0.0.66/32"]),
        "{e}"
    );
    drop(s);
}

/// The value of `rescon_listener_dropped_syns_total` for `group` at `stage` (0 when the
/// series is not there yet).
fn dropped_syns(s: &Server, group: &str, stage: &str) -> u64 {
    let (st, body) = admin(s, "GET", "/metrics", "");
    assert_eq!(st, 200, "{body}");
    let want = format!(
        "rescon_listener_dropped_syns_total{{listener=\"web\",group=\"{group}\",stage=\"{stage}\"}} "
    );
    body.lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Sends `n` SYNs from `src` to `to`, one per connection attempt: each socket is closed right
/// after its non-blocking connect() has sent the SYN (on loopback, queued for the receiving
/// side at once), so no attempt retransmits and exactly `n` SYNs arrive.
fn syns_from(src: &str, to: SocketAddr, n: u64) {
    for _ in 0..n {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into())
            .unwrap();
        s.set_nonblocking(true).unwrap();
        match s.connect(&to.into()) {
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            other => panic!("connect from {src}: expected EINPROGRESS, got {other:?}"),
        }
    }
}

/// Waits until `read()` reaches `want` (it only rises), then checks it stays there: each
/// attempt counts once, no more.
fn settles_at(want: u64, read: impl Fn() -> u64, what: &str) {
    let t = Instant::now();
    while read() < want {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what}: {} of {want} counted after 10 s",
            read()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(), want, "{what}");
}

/// `rescon_listener_dropped_syns_total` counts every SYN the black hole drops, at its socket
/// (`stage="socket"`) and, with `edge`, at the interface (`stage="edge"`), one for one, and
/// no SYN of an allowed source. Run in a network namespace of the test's own (the edge
/// filter is XDP on its `lo`).
#[test]
fn the_dropped_syn_counters_count_each_blocked_connection_attempt() {
    if !rustix::process::geteuid().is_root() {
        assert!(
            std::env::var_os("RESCON_REQUIRE_KERNEL").is_none_or(|v| v != "1"),
            "RESCON_REQUIRE_KERNEL=1 but not root (network namespaces and XDP need it)"
        );
        eprintln!("skipped: network namespaces and XDP need root");
        return;
    }
    let ns = Netns::create("drops");
    let req = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    // At the black hole's socket.
    let s = Arc::new(start_in(Some(&ns.0), "", "", "", "", ""));
    let before = dropped_syns(&s, "black-hole", "socket");
    let s2 = s.clone();
    ns.run(move || {
        assert_eq!(raw(&s2, "127.0.0.1", req).unwrap().status, 200);
        syns_from("127.0.0.66", s2.addr, 7);
    });
    settles_at(
        before + 7,
        || dropped_syns(&s, "black-hole", "socket"),
        "black hole, socket stage",
    );
    assert_eq!(dropped_syns(&s, "rest", "socket"), 0, "allowed SYNs");
    // A prefix moved there by the operator counts the same way.
    let (st, body) = admin(
        &s,
        "POST",
        "/filters/move",
        r#"{"prefix": "127.0.0.5/32", "to": "black-hole"}"#,
    );
    assert_eq!(st, 200, "{body}");
    let s2 = s.clone();
    ns.run(move || syns_from("127.0.0.5", s2.addr, 4));
    settles_at(
        before + 11,
        || dropped_syns(&s, "black-hole", "socket"),
        "moved prefix, socket stage",
    );
    drop(s);

    // At the interface: the edge filter drops them before any socket sees them.
    let s = Arc::new(start_in(Some(&ns.0), "", "edge = [\"lo\"]", "", "", ""));
    let t = Instant::now();
    while !admin(&s, "GET", "/metrics", "")
        .1
        .contains("stage=\"edge\"")
    {
        assert!(t.elapsed() < Duration::from_secs(5), "no edge series");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (edge0, socket0) = (
        dropped_syns(&s, "black-hole", "edge"),
        dropped_syns(&s, "black-hole", "socket"),
    );
    let s2 = s.clone();
    ns.run(move || {
        assert_eq!(raw(&s2, "127.0.0.1", req).unwrap().status, 200);
        syns_from("127.0.0.66", s2.addr, 5);
    });
    settles_at(
        edge0 + 5,
        || dropped_syns(&s, "black-hole", "edge"),
        "black hole, edge stage",
    );
    assert_eq!(
        dropped_syns(&s, "black-hole", "socket"),
        socket0,
        "dropped at the edge, so never at the socket"
    );
    drop(s);
}
