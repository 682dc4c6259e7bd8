//! Parked connections, end to end: a kept-alive connection that has nothing to read lets go of
//! its buffers, its HTTP state and its container, and a connection woken after that serves the
//! next request as if it had never parked (pipelined bytes, a request split across the
//! wake-up, a client that closes while parked, the keep-alive timeout while parked).
//!
//! Each test starts the `rescon-httpd` binary on a free port with a configuration of its own,
//! speaks raw HTTP/1.1 to it, looks at its containers through the admin socket, and stops it
//! (SIGTERM) when it ends, also when it fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
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

/// A server with one vhost (a file, and a CGI script that naps 0.6 s), clients from
/// 127.0.0.3 in a class of one connection, everyone else in another; `timeouts` is the
/// `[timeouts]` table's body.
fn start(timeouts: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("a")).unwrap();
    std::fs::write(d.join("a/file.txt"), "0123456789abcdef").unwrap();
    std::fs::create_dir_all(d.join("cgi")).unwrap();
    let nap = d.join("cgi/nap.sh");
    std::fs::write(
        &nap,
        "#!/bin/sh\nsleep 0.6\nprintf 'Content-Type: text/plain\\n\\nrested\\n'\n",
    )
    .unwrap();
    std::fs::set_permissions(&nap, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = format!(
        r#"
[server]
access_log = "off"
enforcement = "user"

[timeouts]
{timeouts}

[admin]
socket = "{d}/admin.sock"

[containers.clients.one]
max_connections = 1
[containers.clients.rest]
[containers.site]
[containers.cgi]

[[listener]]
name = "web"
address = "127.0.0.1"
port = 0

[[listener.class]]
name = "one"
container = "clients/one"
prefixes = ["127.0.0.3/32"]

[[listener.class]]
name = "rest"
container = "clients/rest"
except = []

[[vhost]]
name = "a"
hosts = ["localhost"]
root = "{d}/a"
container = "site"
default = true

[[vhost.cgi]]
prefix = "/cgi-bin/"
dir = "{d}/cgi"
container = "cgi"
"#,
        d = d.display(),
    );
    let path = d.join("httpd.toml");
    std::fs::write(&path, conf).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rescon-httpd"))
        .arg("--config")
        .arg(&path)
        .args(["--workers", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The address is in the diagnostics on standard error; the rest of them is passed on.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server said its address").unwrap();
        eprintln!("{line}");
        if let Some(i) = line.find("listening on ") {
            let rest = &line[i + "listening on ".len()..];
            let a = rest.split(|c: char| c.is_whitespace() || c == '"').next();
            break a.unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            eprintln!("{l}");
        }
    });
    Server { child, addr, dir }
}

/// Connects from `src` (a 127.0.0.x address).
fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

const GET: &[u8] = b"GET /file.txt HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Reads one line (up to and with its CRLF), a byte at a time so that nothing of the next
/// response is taken.
fn read_line(c: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if c.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Reads one response (with a Content-Length, or chunked): its status and body.
fn read_one(c: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        head += &read_line(c)?;
    }
    let head = head.to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = Vec::new();
    if head.contains("transfer-encoding: chunked") {
        loop {
            let size = usize::from_str_radix(read_line(c)?.trim(), 16).unwrap();
            let mut chunk = vec![0u8; size + 2];
            c.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        body.resize(len, 0);
        c.read_exact(&mut body)?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The file, as a kept-alive response.
fn file_ok(c: &mut TcpStream) {
    assert_eq!(read_one(c).unwrap(), (200, "0123456789abcdef".to_string()));
}

/// The whole container tree, from the admin socket.
fn tree(s: &Server) -> serde_json::Value {
    let mut c = std::os::unix::net::UnixStream::connect(s.dir.path().join("admin.sock")).unwrap();
    c.write_all(b"GET /containers HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let (_, body) = out.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The per-connection containers (`conn-N`) that exist now.
fn conn_containers(s: &Server) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        let name = v["name"].as_str().unwrap_or_default();
        if name.starts_with("conn-") {
            out.push(name.to_string());
        }
        for c in v["children"].as_array().into_iter().flatten() {
            walk(c, out);
        }
    }
    let mut out = Vec::new();
    walk(&tree(s), &mut out);
    out
}

/// Polls `f` every 20 ms until it holds or `within` passes.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Waits for the server to close `c`: cleanly (no reset, nothing more sent), and how long it
/// took.
fn closed_by_server(c: &mut TcpStream) -> Duration {
    let t = Instant::now();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("a clean close, not a reset");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    t.elapsed()
}

#[test]
fn a_woken_connection_serves_pipelined_and_split_requests() {
    let s = start("header = \"2s\"\nkeep_alive = \"10s\"\npark = \"0s\"");
    let mut c = connect_from("127.0.0.1", s.addr);
    c.write_all(GET).unwrap();
    file_ok(&mut c);
    // Parked (nothing to read after the response): no container of its own.
    assert!(
        eventually(Duration::from_secs(2), || conn_containers(&s).is_empty()),
        "a parked connection keeps {:?}",
        conn_containers(&s)
    );
    // Two requests in one write wake it: both are answered, in order.
    c.write_all(&[GET, GET].concat()).unwrap();
    file_ok(&mut c);
    file_ok(&mut c);
    // Three in one write, the third cut in the middle of its head: the first two are
    // answered, the rest of the third comes after the connection has had time to park
    // again, and it is answered too; nothing was lost or read twice.
    let third = b"GET /file.txt HTTP/1.1\r\nHo";
    c.write_all(&[GET, GET, &third[..]].concat()).unwrap();
    file_ok(&mut c);
    file_ok(&mut c);
    std::thread::sleep(Duration::from_millis(300));
    c.write_all(b"st: localhost\r\n\r\n").unwrap();
    file_ok(&mut c);
    // A request head split across a wake-up: its first bytes wake the connection, the rest
    // comes later.
    std::thread::sleep(Duration::from_millis(300));
    c.write_all(b"GET /file").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.write_all(b".txt HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    file_ok(&mut c);
    // A byte at a time, with pauses.
    for b in GET {
        c.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    file_ok(&mut c);
    // A request with a body keeps the connection busy while its body may still be read;
    // the connection parks after the next request without one, and serves on.
    c.write_all(b"POST /file.txt HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let (status, _) = read_one(&mut c).unwrap();
    assert!(status >= 400, "a POST to a file: {status}");
    std::thread::sleep(Duration::from_millis(300));
    c.write_all(GET).unwrap();
    file_ok(&mut c);
    std::thread::sleep(Duration::from_millis(300));
    c.write_all(GET).unwrap();
    file_ok(&mut c);
}

#[test]
fn a_parked_connection_has_no_container_and_its_usage_is_kept() {
    let s = start("header = \"2s\"\nkeep_alive = \"10s\"\npark = \"0s\"");
    // A silent connection (no byte sent yet) has no container either.
    let _silent = connect_from("127.0.0.1", s.addr);
    let mut c = connect_from("127.0.0.1", s.addr);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(conn_containers(&s), Vec::<String>::new());
    // Busy (a CGI run under way), it has one.
    let req = b"GET /cgi-bin/nap.sh HTTP/1.1\r\nHost: localhost\r\n\r\n";
    c.write_all(req).unwrap();
    assert!(
        eventually(Duration::from_millis(500), || conn_containers(&s).len()
            == 1),
        "a busy connection has a container: {:?}",
        conn_containers(&s)
    );
    assert_eq!(read_one(&mut c).unwrap(), (200, "rested\n".to_string()));
    assert!(
        eventually(Duration::from_secs(2), || conn_containers(&s).is_empty()),
        "a parked connection keeps {:?}",
        conn_containers(&s)
    );
    // Its containers' usage went to where they were: every request and byte is counted.
    for _ in 0..3 {
        c.write_all(GET).unwrap();
        file_ok(&mut c);
    }
    let sent = (req.len() + 3 * GET.len()) as u64;
    assert!(eventually(Duration::from_secs(2), || conn_containers(&s).is_empty()));
    // The requests: under the root (the CGI run's is charged under the CGI's container, the
    // static ones under the vhost's).
    let t = tree(&s);
    assert_eq!(t["usage_subtree"]["requests"].as_u64().unwrap(), 4, "{t}");
    // The bytes: under every top container but the server's own (its admin API's).
    let bytes_in: u64 = t["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] != "server")
        .map(|c| c["usage_subtree"]["bytes_in"].as_u64().unwrap())
        .sum();
    assert_eq!(bytes_in, sent, "{t}");
}

#[test]
fn a_client_closing_while_parked_ends_its_connection() {
    let s = start("header = \"2s\"\nkeep_alive = \"10s\"\npark = \"0s\"");
    // 127.0.0.3's class holds one connection: a second is refused while the first lives.
    let mut c = connect_from("127.0.0.3", s.addr);
    c.write_all(GET).unwrap();
    file_ok(&mut c);
    std::thread::sleep(Duration::from_millis(200));
    let mut other = connect_from("127.0.0.3", s.addr);
    other.write_all(GET).unwrap();
    assert_eq!(read_one(&mut other).unwrap().0, 503);
    // The client half-closes while parked: the server sees the end and closes too, at once.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let waited = closed_by_server(&mut c);
    assert!(waited < Duration::from_secs(2), "closed after {waited:?}");
    // The class's slot came back: the next connection is served.
    let served = eventually(Duration::from_secs(2), || {
        let mut n = connect_from("127.0.0.3", s.addr);
        n.write_all(GET).unwrap();
        matches!(read_one(&mut n), Ok((200, _)))
    });
    assert!(served, "the parked connection's slot was not given back");
    // The same for a client that closes without a word, and for one that never spoke.
    let silent = connect_from("127.0.0.3", s.addr);
    std::thread::sleep(Duration::from_millis(100));
    drop(silent);
    let served = eventually(Duration::from_secs(2), || {
        let mut n = connect_from("127.0.0.3", s.addr);
        n.write_all(GET).unwrap();
        matches!(read_one(&mut n), Ok((200, _)))
    });
    assert!(served, "the silent connection's slot was not given back");
}

#[test]
fn parked_connections_keep_their_timeouts() {
    let s = start("header = \"1s\"\nkeep_alive = \"2s\"\npark = \"0s\"");
    // Quiet after a response: closed once keep_alive has passed since the response, not
    // before, though the connection parked at once.
    let mut c = connect_from("127.0.0.1", s.addr);
    c.write_all(GET).unwrap();
    file_ok(&mut c);
    // A wake-up with a request in the middle does not stretch the wait beyond keep_alive
    // after the last response.
    std::thread::sleep(Duration::from_millis(1200));
    c.write_all(GET).unwrap();
    file_ok(&mut c);
    let waited = closed_by_server(&mut c);
    assert!(
        waited >= Duration::from_millis(1700) && waited < Duration::from_secs(4),
        "closed after {waited:?} of quiet"
    );
    // A silent connection: closed by the header timeout from its start.
    let mut c = connect_from("127.0.0.1", s.addr);
    let waited = closed_by_server(&mut c);
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    // A head begun after a park and left incomplete: cut by the header timeout from its
    // first byte (an error, so no clean close is asked for).
    let mut c = connect_from("127.0.0.1", s.addr);
    c.write_all(GET).unwrap();
    file_ok(&mut c);
    std::thread::sleep(Duration::from_millis(300));
    c.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    let t = Instant::now();
    let _ = c.read_to_end(&mut Vec::new());
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_millis(1900),
        "cut after {waited:?}"
    );
}

#[test]
fn a_connection_parks_after_a_short_quiet_by_default() {
    // timeouts.park is 100 ms unless set: a quiet connection parks by itself, and serves on.
    let s = start("header = \"2s\"\nkeep_alive = \"10s\"");
    let mut c = connect_from("127.0.0.1", s.addr);
    for _ in 0..3 {
        c.write_all(GET).unwrap();
        file_ok(&mut c);
        assert!(
            eventually(Duration::from_secs(3), || conn_containers(&s).is_empty()),
            "still busy: {:?}",
            conn_containers(&s)
        );
    }
    // Set longer, the quiet keeps it busy meanwhile: its container stays.
    let s = start("header = \"2s\"\nkeep_alive = \"10s\"\npark = \"30s\"");
    let mut c = connect_from("127.0.0.1", s.addr);
    c.write_all(GET).unwrap();
    file_ok(&mut c);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(conn_containers(&s).len(), 1, "{:?}", conn_containers(&s));
    c.write_all(GET).unwrap();
    file_ok(&mut c);
}

#[test]
fn a_graceful_stop_closes_parked_connections_at_once() {
    let s = start("header = \"30s\"\nkeep_alive = \"30s\"\npark = \"0s\"");
    let mut kept = connect_from("127.0.0.1", s.addr);
    kept.write_all(GET).unwrap();
    file_ok(&mut kept);
    let mut silent = connect_from("127.0.0.1", s.addr);
    std::thread::sleep(Duration::from_millis(200));
    Command::new("kill")
        .args(["-QUIT", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(closed_by_server(&mut kept) < Duration::from_secs(5));
    assert!(closed_by_server(&mut silent) < Duration::from_secs(5));
}
