//! The kernel's network work charged to the classes (issue 24): the `rescon-httpd` binary,
//! as root, loads the accounting programs, and a class that sends requests is charged kernel
//! network CPU, shown in the admin API's usage and in the metrics; a class that sent nothing
//! is charged nothing. Needs root (CAP_BPF); skips without it unless
//! `RESCON_REQUIRE_KERNEL=1`. The server is stopped (SIGTERM) when the test ends, also when it
//! fails, and its programs go with it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    stderr: Arc<Mutex<String>>,
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

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("www")).unwrap();
    std::fs::write(d.join("www/index.html"), "<h1>hello</h1>\n").unwrap();
    let conf = format!(
        r#"
[admin]
socket = "{d}/admin.sock"

[containers.clients.heavy]
[containers.clients.idle]
[containers.site]

[[listener]]
name = "web"
address = "127.0.0.1"
port = 0

[[listener.class]]
name = "heavy"
container = "clients/heavy"
prefixes = ["127.0.0.1/32"]

[[listener.class]]
name = "idle"
container = "clients/idle"
except = []

[[vhost]]
name = "site"
hosts = ["localhost"]
root = "{d}/www"
container = "site"
default = true
"#,
        d = d.display()
    );
    let path = d.join("httpd.toml");
    std::fs::write(&path, conf).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rescon-httpd"))
        .arg("--config")
        .arg(&path)
        .arg("--workers")
        .arg("1")
        .env_remove("RESCON_KERNEL_NET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let stderr = Arc::new(Mutex::new(String::new()));
    let addr = loop {
        let line = lines.next().expect("the server said its address").unwrap();
        eprintln!("{line}");
        stderr.lock().unwrap().push_str(&line);
        stderr.lock().unwrap().push('\n');
        if let Some(i) = line.find("listening on ") {
            let rest = &line[i + "listening on ".len()..];
            let a = rest.split(|c: char| c.is_whitespace() || c == '"').next();
            break a.unwrap().parse().unwrap();
        }
    };
    let log = stderr.clone();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            eprintln!("{l}");
            log.lock().unwrap().push_str(&l);
            log.lock().unwrap().push('\n');
        }
    });
    Server {
        child,
        addr,
        dir,
        stderr,
    }
}

fn admin(s: &Server, path: &str) -> String {
    let mut c = std::os::unix::net::UnixStream::connect(s.dir.path().join("admin.sock")).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    body.to_string()
}

fn kernel_net_ns(s: &Server, container: &str) -> u64 {
    let body = admin(s, &format!("/containers/{container}?depth=0"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["usage_subtree"]["kernel_net_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("no kernel_net_ns in {body}"))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

#[test]
fn a_class_s_packets_are_charged_to_it_and_shown() {
    let required = std::env::var_os("RESCON_REQUIRE_KERNEL").is_some_and(|v| v == "1");
    if !is_root() {
        assert!(!required, "RESCON_REQUIRE_KERNEL=1 but not root");
        eprintln!("skipped: kernel network accounting needs root");
        return;
    }
    let s = start();
    // 400 requests on one connection from 127.0.0.1 (the heavy class): each a packet
    // received in NET_RX softirq (loopback's backlog) by a socket of the class.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(c.try_clone().unwrap());
    for _ in 0..400 {
        c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut len = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
    }
    let t = Instant::now();
    let heavy = loop {
        let n = kernel_net_ns(&s, "clients/heavy");
        if n > 0 {
            break n;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no kernel network CPU charged to the heavy class; server said:\n{}",
            s.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        kernel_net_ns(&s, "clients/idle"),
        0,
        "a class that sent nothing is charged nothing"
    );
    // In the metrics, at least what the admin API showed a moment ago.
    let metrics = admin(&s, "/metrics");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("rescon_kernel_network_cpu_seconds_total{") && l.contains("clients/heavy")
        })
        .unwrap_or_else(|| panic!("no kernel network metric for the class:\n{metrics}"));
    let secs: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(secs * 1e9 >= heavy as f64 * 0.999, "{line} < {heavy} ns");
    assert!(
        !s.stderr
            .lock()
            .unwrap()
            .contains("running without kernel network accounting"),
        "as root the accounting runs"
    );
}
