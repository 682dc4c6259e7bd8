//! End to end over TLS and HTTP/2: the `rescon-httpd` binary on loopback with certificates the
//! test makes, asked by real clients (curl, h2load, rustls) and by hand-made bad input (a
//! ClientHello that never finishes, garbage, HTTP/2 frame floods, oversized headers). Each
//! test starts its own server on free ports and stops it when it ends, also when it fails.

use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    /// The TLS listener, then the cleartext HTTP/2 one.
    tls: SocketAddr,
    h2c: SocketAddr,
    dir: tempfile::TempDir,
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

/// A certificate for `names`, written as `name.pem` and `name.key` in `dir`; its DER.
fn make_cert(dir: &Path, name: &str, names: &[&str]) -> CertificateDer<'static> {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), ck.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    ck.cert.der().clone()
}

/// The configuration: vhost a (a.test, default) and b (b.test), each with its certificate; a
/// TLS listener and a cleartext HTTP/2 listener; `extra` appended.
fn config(d: &Path, extra: &str) -> String {
    for v in ["a", "b"] {
        std::fs::create_dir_all(d.join(v)).unwrap();
        std::fs::write(d.join(v).join("index.html"), format!("<h1>site {v}</h1>\n")).unwrap();
    }
    let d = d.display();
    format!(
        r#"
[server]
access_log = "off"
[timeouts]
handshake = "1s"
header = "3s"
[limits]
max_header_bytes = "8KiB"
[http2]
max_resets = 50
max_control_frames = 100
[admin]
socket = "{d}/admin.sock"
[containers.clients.tls]
[containers.clients.h2c]
[containers.site-a]
[containers.site-b]

[[listener]]
name = "tls"
address = "127.0.0.1"
port = 0
tls = true
[[listener.class]]
name = "all"
container = "clients/tls"
except = []

[[listener]]
name = "h2c"
address = "127.0.0.1"
port = 0
protocols = ["h2"]
[[listener.class]]
name = "all"
container = "clients/h2c"
except = []

[[vhost]]
name = "a"
hosts = ["a.test", "localhost"]
root = "{d}/a"
container = "site-a"
default = true
[vhost.tls]
cert = "{d}/a.pem"
key = "{d}/a.key"

[[vhost]]
name = "b"
hosts = ["b.test"]
root = "{d}/b"
container = "site-b"
[vhost.tls]
cert = "{d}/b.pem"
key = "{d}/b.key"
{extra}
"#
    )
}

fn spawn(conf: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rescon-httpd"))
        .arg("--config")
        .arg(conf)
        .args(["--workers", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn start(extra: &str) -> (Server, CertificateDer<'static>, CertificateDer<'static>) {
    start_edited(extra, |c| c)
}

/// [`start`] with the configuration passed through `edit` first.
fn start_edited(
    extra: &str,
    edit: impl FnOnce(String) -> String,
) -> (Server, CertificateDer<'static>, CertificateDer<'static>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = make_cert(d, "a", &["a.test", "localhost"]);
    let b = make_cert(d, "b", &["b.test"]);
    let conf = d.join("httpd.toml");
    std::fs::write(&conf, edit(config(d, extra))).unwrap();
    let mut child = spawn(&conf);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut tls, mut h2c) = (None, None);
    while tls.is_none() || h2c.is_none() {
        let line = lines
            .next()
            .expect("the server said its addresses")
            .unwrap();
        eprintln!("{line}");
        if let Some(i) = line.find("listening on ") {
            let addr: SocketAddr = line[i + 13..]
                .split(|c: char| c.is_whitespace())
                .next()
                .unwrap()
                .parse()
                .unwrap();
            if line.contains("listener=tls") {
                tls = Some(addr);
            } else {
                h2c = Some(addr);
            }
        }
    }
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            eprintln!("{l}");
        }
    });
    let s = Server {
        child,
        tls: tls.unwrap(),
        h2c: h2c.unwrap(),
        dir,
    };
    (s, a, b)
}

fn admin_json(s: &Server, path: &str) -> serde_json::Value {
    let mut c = std::os::unix::net::UnixStream::connect(s.dir.path().join("admin.sock")).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let (_, body) = out.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A container's subtree usage counter.
fn usage(s: &Server, container: &str, key: &str) -> u64 {
    let v = admin_json(s, &format!("/containers/{container}?depth=0"));
    v["usage_subtree"][key].as_u64().unwrap_or(0)
}

/// A counter over the whole tree of the test's configuration: a connection's container moves
/// from its class to its vhost on its first request, and its usage with it.
fn total(s: &Server, key: &str) -> u64 {
    ["clients/tls", "clients/h2c", "site-a", "site-b"]
        .iter()
        .map(|c| usage(s, c, key))
        .sum()
}

/// curl over HTTPS: (HTTP version, status, body).
fn curl(s: &Server, args: &[&str], host: &str, path: &str) -> (String, String, String) {
    let url = format!("https://{host}:{}{path}", s.tls.port());
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "--resolve"])
        .arg(format!("{host}:{}:127.0.0.1", s.tls.port()))
        .args(args)
        .args(["-w", "\n%{http_version} %{http_code}", &url])
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (v, code) = tail.split_once(' ').unwrap_or((tail, ""));
    (v.to_string(), code.to_string(), body.to_string())
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

/// A client configuration that accepts any certificate (the test checks which one came).
fn client(
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&str],
) -> Arc<rustls::ClientConfig> {
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert))
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(c)
}

/// A finished handshake with `sni`: the session, over its socket.
fn connect(
    s: &Server,
    config: &Arc<rustls::ClientConfig>,
    sni: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(s.tls).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = rustls::ClientConnection::new(
        config.clone(),
        ServerName::try_from(sni.to_string()).unwrap(),
    )
    .unwrap();
    let mut t = rustls::StreamOwned::new(conn, tcp);
    while t.conn.is_handshaking() {
        t.conn.complete_io(&mut t.sock).unwrap();
    }
    t
}

/// An HTTP/1.1 request over a session: the response as text.
fn get_over(
    t: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    host: &str,
) -> String {
    write!(
        t,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = t.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn curl_speaks_http1_and_http2_over_tls_and_h2load_runs_many_streams() {
    let (s, _, _) = start("");
    let (v, code, body) = curl(&s, &["--http1.1"], "a.test", "/");
    assert_eq!((v.as_str(), code.as_str()), ("1.1", "200"));
    assert!(body.contains("site a"), "{body}");
    let (v, code, body) = curl(&s, &["--http2"], "b.test", "/");
    assert_eq!((v.as_str(), code.as_str()), ("2", "200"), "ALPN chose h2");
    assert!(body.contains("site b"), "{body}");
    let (_, code, _) = curl(&s, &["--http2"], "a.test", "/missing");
    assert_eq!(code, "404");
    let out = Command::new("h2load")
        .args(["-n", "400", "-c", "4", "-m", "10"])
        .arg(format!("https://127.0.0.1:{}/", s.tls.port()))
        .output()
        .expect("h2load is installed (nghttp2-client; .ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("400 succeeded") && text.contains("Application protocol: h2"),
        "{text}"
    );
    // Charged to the class the connections were accepted in: 7 handshakes (3 curl, 4
    // h2load), 402 streams (2 curl, 400 h2load).
    assert_eq!(total(&s, "tls_handshakes"), 7);
    assert_eq!(
        total(&s, "h2_streams"),
        402,
        "streams counted on their connections' containers"
    );
    // Cleartext HTTP/2 by prior knowledge.
    let out = Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{}/", s.h2c.port()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
}

#[test]
fn sni_chooses_the_certificate_alpn_the_protocol_and_sessions_resume() {
    let (s, a, b) = start("");
    let tls13 = client(&[&rustls::version::TLS13], &["h2", "http/1.1"]);
    let peer = |t: &rustls::StreamOwned<rustls::ClientConnection, TcpStream>| {
        t.conn.peer_certificates().unwrap()[0].clone()
    };
    let t = connect(&s, &tls13, "b.test");
    assert_eq!(peer(&t), b, "SNI b.test gets b's certificate");
    assert_eq!(t.conn.alpn_protocol(), Some(&b"h2"[..]));
    let t = connect(&s, &tls13, "localhost");
    assert_eq!(peer(&t), a);
    let t = connect(&s, &tls13, "unknown.example");
    assert_eq!(
        peer(&t),
        a,
        "an unknown name gets the default vhost's certificate"
    );
    let h1 = client(&[&rustls::version::TLS13], &["http/1.1"]);
    let mut t = connect(&s, &h1, "b.test");
    assert_eq!(t.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let resp = get_over(&mut t, "b.test");
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.contains("site b"),
        "{resp}"
    );
    // Resumption: TLS 1.3 tickets, and TLS 1.2 session ids, with a fresh client config each
    // (its own session store).
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let c = client(&[v], &["http/1.1"]);
        let mut first = connect(&s, &c, "a.test");
        assert_eq!(
            first.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        // The TLS 1.3 tickets come after the handshake: a request takes them in.
        get_over(&mut first, "a.test");
        let mut second = connect(&s, &c, "a.test");
        assert_eq!(
            second.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{v:?}"
        );
        assert!(get_over(&mut second, "a.test").contains("site a"));
    }
}

#[test]
fn sighup_reloads_the_certificates_and_a_bad_one_keeps_the_running_ones() {
    let (s, a, _) = start("");
    let c = client(&[&rustls::version::TLS13], &["http/1.1"]);
    assert_eq!(
        connect(&s, &c, "a.test").conn.peer_certificates().unwrap()[0],
        a
    );
    let d = s.dir.path();
    let a2 = make_cert(d, "a", &["a.test", "localhost"]);
    assert_ne!(a, a2);
    let hup = || {
        Command::new("kill")
            .args(["-HUP", &s.child.id().to_string()])
            .status()
            .unwrap()
    };
    hup();
    let t = Instant::now();
    while connect(&s, &c, "a.test").conn.peer_certificates().unwrap()[0] != a2 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the new certificate is served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A key that does not match its certificate: the reload fails, the new one stays.
    std::fs::copy(d.join("b.key"), d.join("a.key")).unwrap();
    hup();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        connect(&s, &c, "a.test").conn.peer_certificates().unwrap()[0],
        a2
    );
}

#[test]
fn a_bad_certificate_file_is_refused_naming_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_cert(d, "a", &["a.test"]);
    make_cert(d, "b", &["b.test"]);
    let conf = d.join("httpd.toml");
    let run = |what: &str| -> String {
        std::fs::write(&conf, config(d, "")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_rescon-httpd"))
            .arg("--config")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{what}: the server refused to start");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    std::fs::write(d.join("b.pem"), "not a certificate\n").unwrap();
    let err = run("no PEM certificate");
    let path = d.join("b.pem").display().to_string();
    assert!(err.contains(&path) && err.contains("vhost b"), "{err}");
    make_cert(d, "b", &["b.test"]);
    std::fs::remove_file(d.join("a.key")).unwrap();
    let err = run("a missing key");
    assert!(
        err.contains(&d.join("a.key").display().to_string()),
        "{err}"
    );
    std::fs::copy(d.join("b.key"), d.join("a.key")).unwrap();
    let err = run("a key of another certificate");
    assert!(err.contains("does not match"), "{err}");
}

/// Whether the server closed `c` (end of stream or reset) within `within`.
fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    c.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
        if t.elapsed() > within {
            return false;
        }
    }
}

#[test]
fn a_stalled_client_hello_and_garbage_end_their_connections_only() {
    let (s, _, _) = start("");
    // A record header announcing 512 bytes of handshake, then nothing: timeouts.handshake.
    let mut stalled = TcpStream::connect(s.tls).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    // Plain HTTP sent to the TLS port.
    let mut garbage = TcpStream::connect(s.tls).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    assert!(
        closed_within(&mut garbage, Duration::from_secs(5)),
        "garbage is refused at once"
    );
    let (_, code, _) = curl(&s, &["--http2"], "a.test", "/");
    assert_eq!(code, "200", "others are served meanwhile");
    let t = Instant::now();
    assert!(closed_within(&mut stalled, Duration::from_secs(5)));
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "not before its time"
    );
    // Counted as the connection's task ends, just after its socket closes.
    let t = Instant::now();
    while usage(&s, "clients/tls", "tls_failed") < 2 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(usage(&s, "clients/tls", "tls_failed"), 2);
    assert_eq!(total(&s, "tls_handshakes"), 1);
}

/// Waits up to 5 s for a container's usage counter to reach `want`; its value then.
fn usage_reaching(s: &Server, container: &str, key: &str, want: u64) -> u64 {
    let t = Instant::now();
    loop {
        let n = usage(s, container, key);
        if n >= want || t.elapsed() > Duration::from_secs(5) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn handshakes_are_charged_to_the_connections_class() {
    let (s, _, _) = start("");
    // Full handshakes (no resumption) and nothing else: the connections never reach a vhost,
    // so all they cost stays under their class's container.
    let mut c = (*client(&[&rustls::version::TLS13], &["http/1.1"])).clone();
    c.resumption = rustls::client::Resumption::disabled();
    let c = Arc::new(c);
    for _ in 0..20 {
        let mut t = connect(&s, &c, "a.test");
        t.conn.send_close_notify();
        let _ = t.conn.complete_io(&mut t.sock);
    }
    assert_eq!(usage_reaching(&s, "clients/tls", "tls_handshakes", 20), 20);
    assert_eq!(usage(&s, "clients/tls", "tls_failed"), 0);
    assert!(
        usage_reaching(&s, "clients/tls", "cpu_ns", 1) > 0,
        "the handshakes' CPU is charged under the class"
    );
    for v in ["site-a", "site-b"] {
        assert_eq!(usage(&s, v, "tls_handshakes"), 0, "{v}");
        assert_eq!(usage(&s, v, "cpu_ns"), 0, "{v} did no work");
    }
}

/// The scheduling policy (field 41 of `/proc/PID/task/TID/stat`) of each of the server's
/// threads of the handshake pool (started at its first job).
fn handshake_threads(s: &Server) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{}/task", s.child.id()))
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            let stat = std::fs::read_to_string(t.join("stat")).ok()?;
            let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
            // `fields` starts at field 3.
            let policy = fields.get(41 - 3)?.parse().ok()?;
            comm.starts_with("rescon-handshak").then_some(policy)
        })
        .collect()
}

#[test]
fn handshakes_run_on_the_worker_until_another_class_has_connections_open() {
    let (s, _, _) = start("");
    let mut c = (*client(&[&rustls::version::TLS13], &["http/1.1"])).clone();
    c.resumption = rustls::client::Resumption::disabled();
    let c = Arc::new(c);
    let full_handshake = || {
        let mut t = connect(&s, &c, "a.test");
        assert!(get_over(&mut t, "a.test").starts_with("HTTP/1.1 200"));
    };
    // The class alone: answered on the worker, in the class's container (no pool thread).
    for _ in 0..5 {
        full_handshake();
    }
    assert_eq!(usage_reaching(&s, "clients/tls", "tls_handshakes", 5), 5);
    assert_eq!(
        handshake_threads(&s),
        Vec::<u32>::new(),
        "no handshake went to the pool"
    );
    // A connection of another class of the same scheduling class is open (the cleartext
    // HTTP/2 listener's): its requests could wait behind a signature, so the next
    // handshake goes to the pool, still charged to its class.
    let rival = h2c(&s);
    assert_eq!(usage_reaching(&s, "clients/h2c", "open_conns", 1), 1);
    full_handshake();
    assert_eq!(usage_reaching(&s, "clients/tls", "tls_handshakes", 6), 6);
    let pool = handshake_threads(&s);
    assert!(!pool.is_empty(), "the handshake went to the pool");
    // SCHED_IDLE (5): the kernel preempts the pool for the workers at once.
    assert!(pool.iter().all(|&p| p == 5), "policies {pool:?}");
    drop(rival);
}

/// CPU time (ns) the server's handshake-pool threads have run, from their `schedstat`.
fn handshake_threads_cpu_ns(s: &Server) -> u64 {
    std::fs::read_dir(format!("/proc/{}/task", s.child.id()))
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            if !comm.starts_with("rescon-handshak") {
                return None;
            }
            let sched = std::fs::read_to_string(t.join("schedstat")).ok()?;
            sched.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

#[test]
fn handshakes_on_the_pool_are_charged_to_the_connections_class() {
    let (s, _, _) = start("");
    let mut c = (*client(&[&rustls::version::TLS13], &["http/1.1"])).clone();
    c.resumption = rustls::client::Resumption::disabled();
    let c = Arc::new(c);
    // Another class's connection is open, so handshakes go to the pool.
    let rival = h2c(&s);
    assert_eq!(usage_reaching(&s, "clients/h2c", "open_conns", 1), 1);
    let before = usage(&s, "clients/tls", "cpu_ns");
    for _ in 0..10 {
        let mut t = connect(&s, &c, "a.test");
        t.conn.send_close_notify();
        let _ = t.conn.complete_io(&mut t.sock);
    }
    assert_eq!(usage_reaching(&s, "clients/tls", "tls_handshakes", 10), 10);
    // The pool's threads were started by these jobs: what they ran is the handshakes' work
    // (their start-up aside), and all of it must be charged to the class.
    let pool_ns = handshake_threads_cpu_ns(&s);
    assert!(pool_ns > 0, "the handshakes ran on the pool");
    let want = before + pool_ns * 9 / 10;
    let charged = usage_reaching(&s, "clients/tls", "cpu_ns", want);
    assert!(
        charged >= want,
        "the class was charged {} ns for handshakes whose pool threads ran {pool_ns} ns",
        charged - before
    );
    drop(rival);
}

#[test]
fn a_class_at_its_max_handshakes_has_new_connections_closed() {
    let (s, _, _) = start_edited("", |c| {
        c.replacen(
            "container = \"clients/tls\"\n",
            "container = \"clients/tls\"\nmax_handshakes = 2\n",
            1,
        )
    });
    // Two ClientHellos that never finish hold the class's two slots (for timeouts.handshake,
    // 1 s); a third connection is closed before any work is done for it.
    let mut stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut c = TcpStream::connect(s.tls).unwrap();
            c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
            c
        })
        .collect();
    // The two are taken once the server has read from them: wait for the worker to see them.
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(s.tls).unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut third, Duration::from_secs(5)));
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "closed at once, not at the handshake timeout ({:?})",
        t.elapsed()
    );
    assert!(usage_reaching(&s, "clients/tls", "conns_refused", 1) >= 1);
    for c in &mut stalled {
        assert!(closed_within(c, Duration::from_secs(5)));
    }
    // The slots are free again: a client is served.
    let (_, code, _) = curl(&s, &["--http2"], "a.test", "/");
    assert_eq!(code, "200");
}

// ---- HTTP/2 frames by hand, over the cleartext listener (the same guard as with TLS) ----

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.extend_from_slice(&[kind, flags]);
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// GET / as a header block: `:method GET`, `:scheme http`, `:path /` from HPACK's static
/// table, and `:authority a.test` as a literal.
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 6];
    b.extend_from_slice(b"a.test");
    b
}

/// Connects to the h2c listener and sends the preface and an empty SETTINGS.
fn h2c(s: &Server) -> TcpStream {
    let mut c = TcpStream::connect(s.h2c).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    c.write_all(&hello).unwrap();
    c
}

/// Reads frames until the connection ends; returns them (kind, flags, stream, payload).
fn frames_until_closed(c: &mut TcpStream) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut all = Vec::new();
    let _ = c.read_to_end(&mut all);
    let mut out = Vec::new();
    let mut b = &all[..];
    while b.len() >= 9 {
        let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
        if b.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
        out.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
        b = &b[9 + len..];
    }
    out
}

/// The error code of the GOAWAY among `frames`.
fn goaway(frames: &[(u8, u8, u32, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.0 == 0x7)
        .map(|f| u32::from_be_bytes(f.3[4..8].try_into().unwrap()))
}

const ENHANCE_YOUR_CALM: u32 = 0xb;

#[test]
fn http2_floods_of_pings_settings_and_resets_get_goaway_and_only_they_close() {
    let (s, _, _) = start("");
    // PING flood: 100 allowed in 10 s; 300 sent at once.
    let mut c = h2c(&s);
    let mut flood = Vec::new();
    for i in 0..300u64 {
        flood.extend(frame(0x6, 0, 0, &i.to_be_bytes()));
    }
    let _ = c.write_all(&flood);
    let f = frames_until_closed(&mut c);
    assert_eq!(goaway(&f), Some(ENHANCE_YOUR_CALM), "PING flood");
    // SETTINGS flood.
    let mut c = h2c(&s);
    let flood: Vec<u8> = (0..300)
        .flat_map(|_| frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]))
        .collect();
    let _ = c.write_all(&flood);
    assert_eq!(
        goaway(&frames_until_closed(&mut c)),
        Some(ENHANCE_YOUR_CALM),
        "SETTINGS flood"
    );
    // Rapid reset: streams opened and reset at once; 50 resets allowed in 10 s.
    let mut c = h2c(&s);
    let mut flood = Vec::new();
    for i in 0..200u32 {
        let id = 2 * i + 1;
        flood.extend(frame(0x1, 0x5, id, &get_block()));
        flood.extend(frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    let _ = c.write_all(&flood);
    let f = frames_until_closed(&mut c);
    assert_eq!(goaway(&f), Some(ENHANCE_YOUR_CALM), "rapid reset");
    assert!(total(&s, "h2_resets") >= 51);
    // A well-behaved client on the same listener meanwhile, and after.
    let mut c = h2c(&s);
    c.write_all(&frame(0x1, 0x5, 1, &get_block())).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(5).any(|w| w == b"site ") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "the server answered");
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn oversized_headers_get_431_or_a_frame_size_error_and_nothing_else_is_disturbed() {
    let (s, _, _) = start("");
    // A header list over limits.max_header_bytes (8 KiB) in one frame under 16 KiB: 431.
    let mut c = h2c(&s);
    let mut block = get_block();
    block.extend_from_slice(&[0x40, 5]);
    block.extend_from_slice(b"x-big");
    // A 12,000-byte value: HPACK's integer with a 7-bit prefix.
    let len = 12_000u32;
    block.push(0x7f);
    let mut rest = len - 127;
    while rest >= 128 {
        block.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    block.push(rest as u8);
    block.extend(std::iter::repeat_n(b'v', len as usize));
    c.write_all(&frame(0x1, 0x5, 1, &block)).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let f = frames_until_closed(&mut c);
    // `:status 431`: HPACK's literal of name 8 with the value "431" Huffman-coded.
    let status_431 = [0x48, 0x83, 0x69, 0x90, 0xff];
    let answered = f
        .iter()
        .any(|fr| fr.0 == 0x1 && fr.2 == 1 && fr.3.windows(5).any(|w| w == status_431));
    assert!(answered, "431 on stream 1: {f:?}");
    // A HEADERS frame larger than the frame size (16 KiB): a connection error.
    let mut c = h2c(&s);
    let _ = c.write_all(&frame(0x1, 0x5, 1, &vec![0u8; 20_000]));
    let f = frames_until_closed(&mut c);
    assert_eq!(goaway(&f), Some(0x6), "FRAME_SIZE_ERROR: {f:?}");
    let (_, code, _) = curl(&s, &["--http2"], "a.test", "/");
    assert_eq!(code, "200");
}

/// Every container named `stream-*` in the tree: (its parent's name, its view).
fn stream_containers(s: &Server) -> Vec<(String, serde_json::Value)> {
    fn walk(v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
        for c in v["children"].as_array().into_iter().flatten() {
            if c["name"].as_str().is_some_and(|n| n.starts_with("stream-")) {
                out.push((v["name"].as_str().unwrap_or("").to_owned(), c.clone()));
            }
            walk(c, out);
        }
    }
    let mut out = Vec::new();
    walk(&admin_json(s, "/containers?depth=16"), &mut out);
    out
}

/// Waits up to 5 s for `f` to hold; whether it did.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn with_stream_containers_each_http2_stream_is_charged_to_a_child_released_at_its_end() {
    let (s, _, _) = start_edited("", |c| {
        c.replace("[http2]\n", "[http2]\nstream_containers = true\n")
    });
    // A client whose streams' windows are 0 (SETTINGS_INITIAL_WINDOW_SIZE): each response's
    // headers go out, its body waits, so its stream stays open until the client opens the
    // window.
    let mut c = TcpStream::connect(s.h2c).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &[0, 4, 0, 0, 0, 0]));
    hello.extend(frame(0x1, 0x5, 1, &get_block()));
    hello.extend(frame(0x1, 0x5, 3, &get_block()));
    c.write_all(&hello).unwrap();
    let mut live = Vec::new();
    assert!(
        eventually(|| {
            live = stream_containers(&s);
            live.len() == 2
        }),
        "two stream containers while the two streams are open: {live:?}"
    );
    for (parent, v) in &live {
        assert!(
            parent.starts_with("conn-"),
            "under its connection's: {parent}"
        );
        assert_eq!(v["usage"]["requests"], 1, "its request charged to it: {v}");
        assert!(v["usage"]["cpu_ns"].as_u64().unwrap() > 0, "its work: {v}");
    }
    assert_eq!(live[0].0, live[1].0, "both under the one connection's");
    let mut names: Vec<&str> = live
        .iter()
        .map(|(_, v)| v["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["stream-1", "stream-2"]);
    // The windows open: both bodies go out, both streams end, their containers go, and their
    // usage is their connection's (still open) and its class's.
    let mut more = Vec::new();
    for id in [1u32, 3] {
        more.extend(frame(0x8, 0, id, &100_000u32.to_be_bytes()));
    }
    c.write_all(&more).unwrap();
    let (mut got, mut buf, mut ended) = (Vec::new(), [0u8; 4096], 0);
    while ended < 2 {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "the server answered both streams");
        got.extend_from_slice(&buf[..n]);
        let mut b = &got[..];
        ended = 0;
        while b.len() >= 9 {
            let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
            if b.len() < 9 + len {
                break;
            }
            // DATA with END_STREAM.
            ended += usize::from(b[3] == 0x0 && b[4] & 0x1 != 0);
            b = &b[9 + len..];
        }
    }
    assert!(
        eventually(|| stream_containers(&s).is_empty()),
        "the streams' containers released at their end"
    );
    let tree = admin_json(&s, "/containers?depth=16");
    let conn = {
        fn find(v: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
            if v["name"] == name {
                return Some(v.clone());
            }
            v["children"].as_array()?.iter().find_map(|c| find(c, name))
        }
        find(&tree, &live[0].0).expect("the connection's container, still open")
    };
    assert_eq!(conn["child_count"], 0);
    assert_eq!(conn["usage_subtree"]["requests"], 2, "{conn}");
    assert_eq!(
        conn["usage"]["requests"], 0,
        "nothing charged to the connection's own"
    );
    assert_eq!(total(&s, "requests"), 2, "each request counted once");
    drop(c);
}
