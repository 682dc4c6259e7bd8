//! Parked TLS connections, end to end: a TLS session that has nothing to read parks as a
//! cleartext connection does (no hyper, no container of its own; its session kept), and wakes
//! by reading its next records through the session: pipelined requests, a request split across
//! the wake-up, a client that closes while parked, the timeouts while parked.
//!
//! Each test starts the `rescon-httpd` binary with a TLS listener on a free port and a
//! certificate it makes, speaks HTTP/1.1 over rustls to it, looks at its containers through
//! the admin socket, and stops it (SIGTERM) when it ends, also when it fails.

use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
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

/// A server with one vhost over TLS (a file), clients from 127.0.0.3 in a class of one
/// connection, everyone else in another; `timeouts` is the `[timeouts]` table's body.
fn start(timeouts: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("a")).unwrap();
    std::fs::write(d.join("a/file.txt"), "0123456789abcdef").unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(d.join("a.pem"), ck.cert.pem()).unwrap();
    std::fs::write(d.join("a.key"), ck.signing_key.serialize_pem()).unwrap();
    let conf = format!(
        r#"
[server]
access_log = "off"
enforcement = "user"

[timeouts]
handshake = "5s"
{timeouts}

[admin]
socket = "{d}/admin.sock"

[containers.clients.one]
max_connections = 1
[containers.clients.rest]
[containers.site]

[[listener]]
name = "tls"
address = "127.0.0.1"
port = 0
tls = true

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
[vhost.tls]
cert = "{d}/a.pem"
key = "{d}/a.key"
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

#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A finished TLS handshake (HTTP/1.1 by ALPN) from `src` (a 127.0.0.x address).
fn connect_from(src: &str, to: SocketAddr) -> Tls {
    try_connect_from(src, to).unwrap()
}

/// [`connect_from`], or why the handshake failed (a connection refused by its class's limit
/// is answered in cleartext, which no handshake survives).
fn try_connect_from(src: &str, to: SocketAddr) -> std::io::Result<Tls> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into())?;
    s.connect(&to.into())?;
    let tcp: TcpStream = s.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert))
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("localhost".to_string()).unwrap(),
    )
    .unwrap();
    let mut t = rustls::StreamOwned::new(conn, tcp);
    while t.conn.is_handshaking() {
        t.conn.complete_io(&mut t.sock)?;
    }
    Ok(t)
}

const GET: &[u8] = b"GET /file.txt HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Sends `bytes` as one TLS record (one write), flushed to the socket.
fn send(t: &mut Tls, bytes: &[u8]) {
    t.write_all(bytes).unwrap();
    t.flush().unwrap();
}

/// Reads one line (up to and with its CRLF).
fn read_line(c: &mut impl Read) -> std::io::Result<String> {
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

/// Reads one response with a Content-Length: its status and body.
fn read_one(c: &mut impl Read) -> std::io::Result<(u16, String)> {
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        head += &read_line(c)?;
    }
    let head = head.to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    c.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The file, as a kept-alive response.
fn file_ok(c: &mut impl Read) {
    assert_eq!(read_one(c).unwrap(), (200, "0123456789abcdef".to_string()));
}

/// The per-connection containers (`conn-N`) that exist now, from the admin socket.
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
    let mut c = std::os::unix::net::UnixStream::connect(s.dir.path().join("admin.sock")).unwrap();
    c.write_all(b"GET /containers HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let (_, body) = out.split_once("\r\n\r\n").unwrap();
    let tree: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let mut names = Vec::new();
    walk(&tree, &mut names);
    names
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

/// Waits for the server to close the TCP connection under `t` (what comes before the end, a
/// closing alert, is read and dropped); how long it took. Fails if it is still open after 20 s.
fn closed_by_server(t: &mut Tls) -> Duration {
    let start = Instant::now();
    t.sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    match t.sock.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "still open after {:?}",
            start.elapsed()
        ),
    }
    start.elapsed()
}

#[test]
fn a_woken_tls_connection_serves_pipelined_and_split_requests() {
    let s = start("header = \"2s\"\nkeep_alive = \"10s\"\npark = \"0s\"");
    let mut c = connect_from("127.0.0.1", s.addr);
    send(&mut c, GET);
    file_ok(&mut c);
    // Parked (nothing to read after the response): no container of its own.
    assert!(
        eventually(Duration::from_secs(2), || conn_containers(&s).is_empty()),
        "a parked TLS connection keeps {:?}",
        conn_containers(&s)
    );
    // Two requests in one record wake it: both are answered, in order.
    send(&mut c, &[GET, GET].concat());
    file_ok(&mut c);
    file_ok(&mut c);
    // Three in one record, the third cut in the middle of its head: the first two are
    // answered, the rest of the third comes after the connection has had time to park
    // again, and it is answered too.
    let third = b"GET /file.txt HTTP/1.1\r\nHo";
    send(&mut c, &[GET, GET, &third[..]].concat());
    file_ok(&mut c);
    file_ok(&mut c);
    std::thread::sleep(Duration::from_millis(300));
    send(&mut c, b"st: localhost\r\n\r\n");
    file_ok(&mut c);
    // A request head split across a wake-up, in two records.
    std::thread::sleep(Duration::from_millis(300));
    send(&mut c, b"GET /file");
    std::thread::sleep(Duration::from_millis(300));
    send(&mut c, b".txt HTTP/1.1\r\nHost: localhost\r\n\r\n");
    file_ok(&mut c);
    // A record larger than the wake-up's first read (1 KiB): a request with long headers.
    std::thread::sleep(Duration::from_millis(300));
    let long = format!(
        "GET /file.txt HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(3000)
    );
    send(&mut c, long.as_bytes());
    file_ok(&mut c);
    std::thread::sleep(Duration::from_millis(300));
    send(&mut c, GET);
    file_ok(&mut c);
}

#[test]
fn a_tls_client_closing_while_parked_ends_its_connection() {
    let s = start("header = \"2s\"\nkeep_alive = \"10s\"\npark = \"0s\"");
    // 127.0.0.3's class holds one connection.
    let mut c = connect_from("127.0.0.3", s.addr);
    send(&mut c, GET);
    file_ok(&mut c);
    assert!(eventually(Duration::from_secs(2), || conn_containers(&s).is_empty()));
    // Parked, it holds its class's slot: a second connection is refused (in cleartext, so
    // its handshake fails).
    assert!(try_connect_from("127.0.0.3", s.addr).is_err());
    // The client closes the session (close_notify, then its side of TCP) while parked: the
    // server ends the connection at once.
    c.conn.send_close_notify();
    c.flush().unwrap();
    c.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let waited = closed_by_server(&mut c);
    assert!(waited < Duration::from_secs(2), "closed after {waited:?}");
    // The class's slot came back: the next connection is served.
    let served = eventually(Duration::from_secs(2), || {
        let Ok(mut n) = try_connect_from("127.0.0.3", s.addr) else {
            return false;
        };
        n.write_all(GET).is_ok() && n.flush().is_ok() && matches!(read_one(&mut n), Ok((200, _)))
    });
    assert!(served, "the parked connection's slot was not given back");
}

#[test]
fn parked_tls_connections_keep_their_timeouts() {
    let s = start("header = \"1s\"\nkeep_alive = \"2s\"\npark = \"0s\"");
    // Quiet after a response: closed once keep_alive has passed since the response, not
    // before, though the connection parked at once.
    let mut c = connect_from("127.0.0.1", s.addr);
    send(&mut c, GET);
    file_ok(&mut c);
    std::thread::sleep(Duration::from_millis(1200));
    send(&mut c, GET);
    file_ok(&mut c);
    let waited = closed_by_server(&mut c);
    assert!(
        waited >= Duration::from_millis(1700) && waited < Duration::from_secs(4),
        "closed after {waited:?} of quiet"
    );
    // A session that sends no request after its handshake: closed by the header timeout.
    let mut c = connect_from("127.0.0.1", s.addr);
    let waited = closed_by_server(&mut c);
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
}
