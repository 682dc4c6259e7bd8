//! FastCGI with an application of our own, in this test process: a rescon-aware application
//! that receives each request's container handle on the first record and uses it through the
//! `rescon-handle` client (reads the container, charges it: the charge shows in the request's
//! log line); the same application over TCP (127.0.0.1, an ephemeral port); and the timeouts:
//! silent for `timeouts.cgi_idle` or running past `timeouts.cgi_total` gives 504, or a cut
//! body once the head went out.
//!
//! The application is a few dozen lines of FastCGI (one request per connection, as the
//! server sends), served from threads of the test, so nothing outlives a failed test but the
//! server, which its guard stops.

use rescon_handle::{Charge, Handle};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the application charges a request's container for `/app/handle`.
const CHARGED_NS: u64 = 500_000_000;

/// One record: type and body.
fn read_record(r: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 8];
    r.read_exact(&mut h)?;
    let len = u16::from_be_bytes([h[4], h[5]]) as usize;
    let mut body = vec![0u8; len + h[6] as usize];
    r.read_exact(&mut body)?;
    body.truncate(len);
    Ok((h[1], body))
}

fn record(typ: u8, body: &[u8]) -> Vec<u8> {
    let len = (body.len() as u16).to_be_bytes();
    let mut r = vec![1, typ, 0, 1, len[0], len[1], 0, 0];
    r.extend_from_slice(body);
    r
}

const STDOUT: u8 = 6;
const STDERR: u8 = 7;
const END: u8 = 3;

fn params(data: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut d = data;
    let len = |d: &mut &[u8]| -> usize {
        if d[0] < 128 {
            let n = d[0] as usize;
            *d = &d[1..];
            n
        } else {
            let n = u32::from_be_bytes([d[0] & 0x7f, d[1], d[2], d[3]]) as usize;
            *d = &d[4..];
            n
        }
    };
    while !d.is_empty() {
        let (k, v) = (len(&mut d), len(&mut d));
        out.insert(
            String::from_utf8_lossy(&d[..k]).into_owned(),
            String::from_utf8_lossy(&d[k..k + v]).into_owned(),
        );
        d = &d[k + v..];
    }
    out
}

/// Serves one request on `conn`; `handle` is the descriptor that came with the first record.
fn serve(mut conn: impl Read + Write, handle: Option<OwnedFd>) -> std::io::Result<()> {
    let mut env = Vec::new();
    loop {
        match read_record(&mut conn)? {
            (4, b) if b.is_empty() => {}
            (4, b) => {
                env.extend(b);
                continue;
            }
            (5, b) if b.is_empty() => break,
            _ => continue,
        }
    }
    let env = params(&env);
    let uri = env.get("REQUEST_URI").cloned().unwrap_or_default();
    let head = b"Content-Type: text/plain\r\n\r\n";
    let end = |c: &mut dyn Write| c.write_all(&record(END, &[0; 8]));
    match uri.as_str() {
        "/app/handle" => {
            let body = match handle.map(Handle::from_fd) {
                Some(Ok(h)) => {
                    let info = h.info().map_err(std::io::Error::other)?;
                    h.charge(Charge {
                        cpu_ns: CHARGED_NS,
                        requests: 1,
                        ..Default::default()
                    })
                    .map_err(std::io::Error::other)?;
                    // A call: the owner reads the charges queued before it answers.
                    let after = h.usage().map_err(std::io::Error::other)?;
                    format!(
                        "id={} env={} name={} before={} after={}\n",
                        info.id,
                        env.get("RESCON_CONTAINER").cloned().unwrap_or_default(),
                        info.name,
                        info.usage.cpu_ns,
                        after.cpu_ns
                    )
                }
                Some(Err(e)) => format!("bad handle: {e}\n"),
                None => "no handle\n".into(),
            };
            conn.write_all(&record(STDOUT, &[&head[..], body.as_bytes()].concat()))?;
            end(&mut conn)
        }
        u if u.ends_with("/hello") => {
            conn.write_all(&record(STDOUT, &[&head[..], b"hello\n"].concat()))?;
            end(&mut conn)
        }
        // Part of the response, then nothing: idle.
        "/app/stall" => {
            conn.write_all(&record(STDOUT, &[&head[..], b"partial\n"].concat()))?;
            // Until the server shuts the connection.
            let _ = conn.read(&mut [0u8; 1]);
            Ok(())
        }
        // Nothing at all: idle before the head.
        "/app/silent" => {
            let _ = conn.read(&mut [0u8; 1]);
            Ok(())
        }
        // Never idle, never done: a line of stderr (before any head) or of the body every
        // 100 ms, until the server shuts the connection at the total.
        "/app/chatty" | "/app/trickle" => {
            if uri == "/app/trickle" {
                conn.write_all(&record(STDOUT, head))?;
            }
            let typ = if uri == "/app/trickle" {
                STDOUT
            } else {
                STDERR
            };
            for _ in 0..300 {
                conn.write_all(&record(typ, b"tick\n"))?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        }
        _ => {
            conn.write_all(&record(
                STDOUT,
                b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno such path\n",
            ))?;
            end(&mut conn)
        }
    }
}

fn serve_unix(l: UnixListener) {
    for c in l.incoming() {
        let Ok(mut c) = c else { return };
        std::thread::spawn(move || {
            // The handle rides on FCGI_BEGIN_REQUEST (16 bytes), the first record.
            let mut first = [0u8; 16];
            let (n, fd) = match rescon_handle::pass::recv_with(c.as_fd(), &mut first) {
                Ok(Some((n, fd))) => (n, fd),
                _ => return,
            };
            if n < 16 && c.read_exact(&mut first[n..]).is_err() {
                return;
            }
            let _ = serve(c, fd);
        });
    }
}

fn serve_tcp(l: TcpListener) {
    for c in l.incoming() {
        let Ok(mut c) = c else { return };
        std::thread::spawn(move || {
            let mut first = [0u8; 16];
            if c.read_exact(&mut first).is_ok() {
                let _ = serve(c, None);
            }
        });
    }
}

struct Server {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("www")).unwrap();
    let unix = UnixListener::bind(d.join("app.sock")).unwrap();
    std::thread::spawn(move || serve_unix(unix));
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    std::thread::spawn(move || serve_tcp(tcp));
    let conf = format!(
        r#"
[server]
access_log = "{d}/access.log"

[timeouts]
cgi_idle = "1s"
cgi_total = "3s"

[admin]
socket = "{d}/admin.sock"

[containers.clients]
[containers.site]
[containers.cgi]

[[listener]]
name = "web"
address = "127.0.0.1"
port = 0

[[listener.class]]
name = "all"
container = "clients"
except = []

[[vhost]]
name = "a"
hosts = ["localhost"]
root = "{d}/www"
container = "site"

[[fastcgi]]
prefix = "/app/"
address = "unix:{d}/app.sock"
root = "{d}/www"
container = "cgi"
pass_handle = true

[[fastcgi]]
prefix = "/tcp/"
address = "{tcp_addr}"
root = "{d}/www"
container = "cgi"
"#,
        d = d.display(),
    );
    let path = d.join("httpd.toml");
    std::fs::write(&path, conf).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rescon-httpd"))
        .arg("--config")
        .arg(&path)
        .arg("--workers")
        .arg("1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("the server exited before it said its address");
        };
        eprintln!("{line}");
        if let Some(rest) = line.split("listening on ").nth(1) {
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

/// GET `path`: the status and the raw bytes after the head (chunked as sent), and whether
/// the response ended properly (a last chunk, or the length given).
fn get(s: &Server, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The access log's line for `path`.
fn log_line(s: &Server, path: &str) -> String {
    let t = Instant::now();
    loop {
        let log = std::fs::read_to_string(s.dir.path().join("access.log")).unwrap_or_default();
        if let Some(l) = log.lines().find(|l| l.contains(path)) {
            return l.to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no log line for {path}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn field(text: &str, key: &str) -> u64 {
    text.split(&format!("{key}="))
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[test]
fn a_rescon_aware_application_uses_the_requests_container_handle() {
    let s = start();
    let (st, text) = get(&s, "/app/handle");
    assert_eq!(st, 200, "{text}");
    assert!(
        !text.contains("no handle") && !text.contains("bad handle"),
        "{text}"
    );
    // The handle is the request's container: the one named to the application in
    // RESCON_CONTAINER, a request container (fcgi-N) under the class.
    assert_eq!(field(&text, "id"), field(&text, "env"), "{text}");
    assert!(text.contains("name=fcgi-"), "{text}");
    // What the application charged through it is in the container's usage...
    assert!(
        field(&text, "after") >= field(&text, "before") + CHARGED_NS,
        "{text}"
    );
    // ...and in the request's log line (its container's CPU).
    let line = log_line(&s, "/app/handle");
    assert!(field(&line, "cpu_us") >= CHARGED_NS / 1000, "{line}");
}

#[test]
fn an_application_over_tcp_is_served() {
    let s = start();
    let (st, text) = get(&s, "/tcp/hello");
    assert_eq!(st, 200, "{text}");
    assert!(
        text.ends_with("hello\n") || text.contains("hello\n"),
        "{text}"
    );
    // A path the application does not know: its own status comes through.
    assert_eq!(get(&s, "/tcp/other").0, 404);
}

#[test]
fn silence_between_records_and_the_total_deadline_give_504_or_a_cut_body() {
    let s = start();
    // Silent from the start, for cgi_idle (1 s; the total is 3 s): 504, saying which.
    let (st, text) = get(&s, "/app/silent");
    assert_eq!(st, 504, "{text}");
    assert!(text.contains("cgi_idle"), "{text}");
    // Stderr every 100 ms and never a head: never idle, cut at cgi_total.
    let (st, text) = get(&s, "/app/chatty");
    assert_eq!(st, 504, "{text}");
    assert!(text.contains("cgi_total"), "{text}");
    // The head and part of the body, then silence: the head went out, so the body is cut
    // (no last chunk), not completed.
    let (st, text) = get(&s, "/app/stall");
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("partial\n"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the body was completed: {text:?}"
    );
    // Body lines every 100 ms: cut at cgi_total, after some of them.
    let (st, text) = get(&s, "/app/trickle");
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("tick\n"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the body was completed: {text:?}"
    );
    // The server serves on.
    assert_eq!(get(&s, "/app/hello").0, 200);
}

/// `POST /reload` on the admin socket: the status and the body.
fn reload(s: &Server) -> (u16, String) {
    let mut c = std::os::unix::net::UnixStream::connect(s.dir.path().join("admin.sock")).unwrap();
    c.write_all(
        b"POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[test]
fn a_reload_applies_fastcgi_changes_and_says_which() {
    let s = start();
    let path = s.dir.path().join("httpd.toml");
    let conf = std::fs::read_to_string(&path).unwrap();
    // Unchanged: nothing said about FastCGI.
    let (st, body) = reload(&s);
    assert_eq!(st, 200, "{body}");
    assert!(!body.contains("fastcgi"), "{body}");
    // The TCP application moved to another prefix, and a third one added.
    let changed = conf.replace(r#"prefix = "/tcp/""#, r#"prefix = "/tcp2/""#)
        + "\n[[fastcgi]]\nprefix = \"/more/\"\naddress = \"unix:/nonexistent.sock\"\nroot = \"/\"\ncontainer = \"cgi\"\n";
    std::fs::write(&path, changed).unwrap();
    let (st, body) = reload(&s);
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("[[fastcgi]] applied"), "{body}");
    assert!(body.contains("fastcgi[1] (/tcp2/) added"), "{body}");
    assert!(
        body.contains("fastcgi[1] (/tcp/) removed: no new requests"),
        "{body}"
    );
    assert!(body.contains("fastcgi[2] (/more/) added"), "{body}");
    assert!(!body.contains("fastcgi[0]"), "{body}");
    // What the reload says is what is in force: the new route serves, the old one is gone.
    let (st, text) = get(&s, "/tcp2/hello");
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("hello\n"), "{text}");
    assert_eq!(get(&s, "/tcp/hello").0, 404);
    let (st, text) = get(&s, "/more/x");
    assert_eq!(st, 502, "{text}");
    assert!(text.contains("not reachable"), "{text}");
    // The unchanged application is the same one, and serves on.
    assert_eq!(get(&s, "/app/hello").0, 200);
    // A field changed in place (pass_handle): the application is replaced, saying which field.
    let (st, text) = get(&s, "/app/handle");
    assert_eq!(st, 200, "{text}");
    assert!(!text.contains("no handle"), "{text}");
    let no_handle = conf.replace("pass_handle = true\n", "");
    std::fs::write(&path, &no_handle).unwrap();
    let (st, body) = reload(&s);
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("fastcgi[0] (/app/) changed (pass_handle)"),
        "{body}"
    );
    assert!(
        body.contains("the old fastcgi[0] (/app/) retired"),
        "{body}"
    );
    assert!(body.contains("fastcgi[2] (/more/) removed"), "{body}");
    let (st, text) = get(&s, "/app/handle");
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("no handle"), "now served without: {text}");
}
