//! rctl against a tiny admin server on a Unix socket (and one on loopback TCP), answering with
//! the real admin API model of rescon-httpd over the default configuration's tree.

use clap::Parser;
use http::Method;
use rctl::cli::{Args, exit_code, run};
use rescon_httpd::admin::{Admin, FilterTable, check_bearer};
use rescon_httpd::config::{Config, ContainerPath, LiveTree};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::thread;

struct Server {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    tcp: std::net::SocketAddr,
    live: Arc<LiveTree>,
    filters: Arc<FilterTable>,
    seen: Arc<Mutex<Vec<String>>>,
    _registry: rescon::Registry,
}

const TOKEN: &str = "0123456789abcdef0123";

/// Reads one request, answers it with `admin`, and closes. Odd requests get a chunked answer.
fn serve_one<S: Read + Write>(
    stream: S,
    admin: &Admin,
    seen: &Mutex<Vec<String>>,
    need_token: bool,
    n: usize,
) {
    let mut r = BufReader::new(stream);
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).unwrap() == 0 {
            return;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut hs);
    req.parse(&head).unwrap();
    let method = Method::from_bytes(req.method.unwrap().as_bytes()).unwrap();
    let path = req.path.unwrap().to_string();
    let mut headers = http::HeaderMap::new();
    let mut len = 0;
    for h in req.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).unwrap();
        if name == http::header::CONTENT_LENGTH {
            len = std::str::from_utf8(h.value).unwrap().parse().unwrap();
        }
        headers.insert(name, http::HeaderValue::from_bytes(h.value).unwrap());
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    seen.lock().unwrap().push(format!(
        "{method} {path} {}",
        String::from_utf8_lossy(&body)
    ));
    let resp = match (need_token, check_bearer(&headers, TOKEN)) {
        (true, Err(denied)) => denied,
        _ => admin.handle(&method, &path, &body),
    };
    let s = r.get_mut();
    let mut out = format!(
        "HTTP/1.1 {} X\r\nContent-Type: {}\r\nConnection: close\r\n",
        resp.status.as_u16(),
        resp.content_type
    );
    if n % 2 == 1 {
        out.push_str("Transfer-Encoding: chunked\r\n\r\n");
        let mut bytes = out.into_bytes();
        for chunk in resp.body.chunks(7) {
            bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            bytes.extend_from_slice(chunk);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        s.write_all(&bytes).unwrap();
    } else {
        out.push_str(&format!("Content-Length: {}\r\n\r\n", resp.body.len()));
        s.write_all(out.as_bytes()).unwrap();
        s.write_all(&resp.body).unwrap();
    }
}

fn server() -> Server {
    let config = Config::default_config();
    let registry = rescon::Registry::new();
    let live = Arc::new(LiveTree::build(&registry, &config.tree).unwrap());
    let filters = Arc::new(FilterTable::from_config(&config.listeners, |p| {
        live.get(p).map(|c| c.id())
    }));
    let admin = Arc::new(Admin::new(registry.root(), filters.clone()));
    admin.set_declared(&live);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let unix = UnixListener::bind(&socket).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let (admin, seen) = (admin.clone(), seen.clone());
        thread::spawn(move || {
            for (n, s) in unix.incoming().enumerate() {
                serve_one(s.unwrap(), &admin, &seen, false, n);
            }
        });
    }
    {
        let (admin, seen) = (admin.clone(), seen.clone());
        thread::spawn(move || {
            for (n, s) in tcp.incoming().enumerate() {
                serve_one(s.unwrap(), &admin, &seen, true, n);
            }
        });
    }
    Server {
        _dir: dir,
        socket,
        tcp: tcp_addr,
        live,
        filters,
        seen,
        _registry: registry,
    }
}

fn rctl(s: &Server, args: &[&str]) -> Result<String, anyhow::Error> {
    let mut argv = vec!["rctl", "--socket", s.socket.to_str().unwrap()];
    argv.extend_from_slice(args);
    let parsed = Args::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    run(&parsed, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

fn container(s: &Server, path: &str) -> rescon::Container {
    s.live
        .get(&ContainerPath::parse(path).unwrap())
        .unwrap()
        .clone()
}

#[test]
fn tree_and_show() {
    let s = server();
    container(&s, "cgi").account().add_cpu_ns(1_250_000_000);
    let out = rctl(&s, &["tree"]).unwrap();
    let cgi_line = out.lines().find(|l| l.contains("└─ cgi")).expect(&out);
    assert!(
        cgi_line.contains("1.250s") && cgi_line.contains("cpu_limit=0.3"),
        "{out}"
    );
    assert!(
        out.contains("├─ clients") && out.contains("│  ├─ premium"),
        "{out}"
    );
    let out = rctl(&s, &["tree", "--depth", "1"]).unwrap();
    assert!(out.contains("(… 2 children)"), "{out}");
    let out = rctl(&s, &["show", "clients/premium"]).unwrap();
    assert!(out.contains("(premium), parent "), "{out}");
    assert!(out.contains("  class                 high\n"), "{out}");
    let id = container(&s, "cgi").id().to_string();
    let out = rctl(&s, &["show", &id]).unwrap();
    assert!(out.contains("  cpu_limit             0.3\n"), "{out}");
    let seen = s.seen.lock().unwrap();
    assert!(
        seen.iter()
            .any(|r| r.starts_with("GET /containers/clients/premium ")),
        "{seen:?}"
    );
}

#[test]
fn set_changes_attributes_all_or_nothing() {
    let s = server();
    let out = rctl(&s, &["set", "cgi", "cpu_limit=20%", "priority=50"]).unwrap();
    let cgi = container(&s, "cgi");
    assert_eq!(
        out,
        format!("container {} (cgi): cpu_limit=0.2 priority=50\n", cgi.id())
    );
    assert_eq!(cgi.attrs().cpu_limit.unwrap().fraction(), 0.2);

    let e = rctl(&s, &["set", "cgi", "priority=7", "class=urgent"]).unwrap_err();
    assert_eq!(exit_code(&e), 1);
    let msg = format!("{e:#}");
    assert!(
        msg.starts_with("error 422:") && msg.contains("field: class"),
        "{msg}"
    );
    assert!(
        msg.contains("allowed: 0..=3 or idle, normal, high, critical"),
        "{msg}"
    );
    assert_eq!(cgi.attrs().priority.get(), 50, "nothing changed");

    let before = s.seen.lock().unwrap().len();
    let e = rctl(&s, &["set", "cgi", "priority"]).unwrap_err();
    assert_eq!(exit_code(&e), 2);
    assert!(e.to_string().contains("expected key=value"));
    assert_eq!(
        s.seen.lock().unwrap().len(),
        before,
        "refused before sending"
    );

    let e = rctl(&s, &["show", "nosuch"]).unwrap_err();
    assert!(format!("{e:#}").contains("error 404"), "{e:#}");
}

#[test]
fn filters_and_block() {
    let s = server();
    let out = rctl(&s, &["filters"]).unwrap();
    assert!(out.starts_with("listener web on 127.0.0.1:8080\n"), "{out}");
    assert!(
        out.contains("  black-hole     container -      127.0.0.66/32\n"),
        "{out}"
    );
    assert!(
        out.contains("  local ") && out.contains("everything else"),
        "{out}"
    );
    // The embedded default has two listeners (web, and web-tls for the HTTPS demo).
    let out = rctl(&s, &["block", "10.9.0.0/16", "--listener", "web"]).unwrap();
    assert_eq!(out, "web: 10.9.0.0/16 -> black-hole\n");
    assert_eq!(
        s.filters
            .classify("web", "10.9.1.1".parse().unwrap())
            .as_deref(),
        Some("black-hole")
    );
    let out = rctl(&s, &["filters"]).unwrap();
    assert!(
        out.contains("recent moves:") && out.contains("web: 10.9.0.0/16 -> black-hole (operator)"),
        "{out}"
    );
    let e = rctl(&s, &["block", "10.9.0.0/99"]).unwrap_err();
    assert!(format!("{e:#}").contains("field: prefix"), "{e:#}");
    let e = rctl(&s, &["block", "10.9.0.0/16", "--listener", "ssh"]).unwrap_err();
    assert!(format!("{e:#}").contains("error 404"), "{e:#}");
}

#[test]
fn json_output_is_the_api_document() {
    let s = server();
    let out = rctl(&s, &["--json", "show", "cgi"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "cgi");
    assert_eq!(v["attrs"]["cpu_limit"], "0.3");
}

#[test]
fn tcp_with_a_bearer_token() {
    let s = server();
    let url = format!("http://{}", s.tcp);
    let parsed = Args::try_parse_from(["rctl", "--url", &url, "--token", TOKEN, "tree"]).unwrap();
    let mut out = Vec::new();
    run(&parsed, &mut out).unwrap();
    assert!(String::from_utf8(out).unwrap().contains("└─ cgi"));
    let parsed =
        Args::try_parse_from(["rctl", "--url", &url, "--token", "wrong-token", "tree"]).unwrap();
    let e = run(&parsed, &mut Vec::new()).unwrap_err();
    assert!(
        format!("{e:#}").starts_with("error 401: missing or wrong bearer token"),
        "{e:#}"
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("token");
    std::fs::write(&f, format!("{TOKEN}\n")).unwrap();
    let parsed = Args::try_parse_from([
        "rctl",
        "--url",
        &url,
        "--token-file",
        f.to_str().unwrap(),
        "filters",
    ])
    .unwrap();
    run(&parsed, &mut Vec::new()).unwrap();
}

#[test]
fn argument_handling() {
    for bad in [
        vec!["rctl"],
        vec!["rctl", "set", "cgi"],
        vec![
            "rctl",
            "--socket",
            "/x",
            "--url",
            "http://127.0.0.1:1",
            "tree",
        ],
        vec!["rctl", "--token", "t", "tree"],
        vec!["rctl", "show"],
        vec!["rctl", "frobnicate"],
        vec!["rctl", "top", "--interval", "soon"],
    ] {
        assert!(Args::try_parse_from(&bad).is_err(), "{bad:?}");
    }
    let a = Args::try_parse_from(["rctl", "tree"]).unwrap();
    assert_eq!(
        a.endpoint().unwrap(),
        rctl::client::Endpoint::Unix(rescon_httpd::config::default_admin_socket()),
        "the default configuration's socket"
    );
    let a = Args::try_parse_from(["rctl", "--url", "http://192.0.2.1:9090", "tree"]).unwrap();
    assert!(a.endpoint().unwrap_err().to_string().contains("loopback"));
    let a = Args::try_parse_from([
        "rctl",
        "--socket",
        "/nonexistent.sock",
        "top",
        "--interval",
        "0",
    ])
    .unwrap();
    assert!(
        run(&a, &mut Vec::new())
            .unwrap_err()
            .to_string()
            .contains("--interval")
    );
    let a = Args::try_parse_from(["rctl", "--socket", "/nonexistent.sock", "top"]).unwrap();
    let e = run(&a, &mut Vec::new()).unwrap_err();
    assert_eq!(exit_code(&e), 2);
    assert!(
        format!("{e:#}").contains("is rescon-httpd running"),
        "{e:#}"
    );
}
