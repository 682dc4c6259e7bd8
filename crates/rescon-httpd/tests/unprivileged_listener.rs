//! The server started without privileges keeps its per-class listening sockets: the kernel
//! steers each client class to its own socket, and a black-holed source gets no handshake at
//! all (not an accepted connection closed at once, which is what the one-socket fallback
//! does). Root runs the server as the user nobody with `setpriv`, from a copy of the binary
//! nobody may execute; another user runs it as itself. Under `RESCON_REQUIRE_KERNEL=1` not
//! being able to drop privileges fails the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
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

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn required() -> bool {
    std::env::var_os("RESCON_REQUIRE_KERNEL").is_some_and(|v| v == "1")
}

/// Starts the server (as nobody when root), or `None` when that cannot be done here.
fn start() -> Option<Server> {
    let dir = tempfile::Builder::new()
        .prefix("rescon-unprivileged-httpd-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(d.join("www")).unwrap();
    std::fs::write(d.join("www/index.html"), "served\n").unwrap();
    let exe = d.join("rescon-httpd");
    std::fs::copy(env!("CARGO_BIN_EXE_rescon-httpd"), &exe).unwrap();
    for (p, mode) in [(&exe, 0o755), (&d.join("www"), 0o755)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let conf = format!(
        r#"
[server]
access_log = "off"
enforcement = "user"

[admin]
socket = "off"

[containers.premium]
class = "high"
[containers.rest]

[[listener]]
name = "web"
address = "127.0.0.1"
port = 0
black_hole = ["127.0.0.66/32"]

[[listener.class]]
name = "premium"
container = "premium"
prefixes = ["127.0.0.2/32"]

[[listener.class]]
name = "rest"
container = "rest"
except = []

[[vhost]]
name = "t"
hosts = ["localhost"]
root = "{d}/www"
container = "rest"
"#,
        d = d.display()
    );
    let conf_path = d.join("httpd.toml");
    std::fs::write(&conf_path, conf).unwrap();
    std::fs::set_permissions(&conf_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let child = cmd
        .arg("--config")
        .arg(&conf_path)
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                !required(),
                "RESCON_REQUIRE_KERNEL=1 but cannot run setpriv: {e}"
            );
            eprintln!("skipped: cannot run setpriv: {e}");
            return None;
        }
    };
    // The server says where it listens on standard error, as a log event; everything it says
    // there is kept for the assertions and for failure messages.
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                let mut s = stderr.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
                if let Some(a) = listening_on(&line) {
                    break a.parse().unwrap();
                }
            }
            _ => {
                let _ = child.wait();
                panic!(
                    "the server stopped before listening:\n{}",
                    stderr.lock().unwrap()
                );
            }
        }
    };
    let sink = stderr.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    Some(Server {
        child,
        addr,
        stderr,
        _dir: dir,
    })
}

fn connect_from(src: &str, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into())?;
    s.connect_timeout(&to.into(), timeout)?;
    Ok(s.into())
}

fn get_from(src: &str, to: SocketAddr) -> String {
    let mut c = connect_from(src, to, Duration::from_secs(2)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

#[test]
fn an_unprivileged_server_keeps_per_class_sockets_and_drops_black_holed_syns() {
    let Some(s) = start() else {
        return;
    };
    for src in ["127.0.0.1", "127.0.0.2"] {
        let r = get_from(src, s.addr);
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("served\n"),
            "from {src}: {r:?}"
        );
    }
    let hole = connect_from("127.0.0.66", s.addr, Duration::from_millis(400));
    assert!(
        matches!(&hole, Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)),
        "the black-holed source completed a handshake ({hole:?}): the server fell back to one socket?\n{}",
        s.stderr.lock().unwrap()
    );
    let log = s.stderr.lock().unwrap().clone();
    assert!(
        !log.contains("no per-class sockets"),
        "the server fell back to one socket:\n{log}"
    );
}

/// The address of a `listening on ADDR` log line.
fn listening_on(line: &str) -> Option<&str> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    rest.split(|c: char| c.is_whitespace() || c == '"').next()
}
