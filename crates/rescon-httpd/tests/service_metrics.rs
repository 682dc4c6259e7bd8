//! `/metrics` as a Prometheus server scrapes it: from the `[metrics] listen` endpoint, parsed
//! by the reference parser of the Python client (`prometheus_client.parser`, Debian's
//! `python3-prometheus-client`, installed by `.ci/run`), after a known set of requests. The
//! figures must add up (every container's subtree is its own usage plus its declared
//! children's subtrees; the root's subtree is the sum of every container's own) and match
//! the requests made (per container, per vhost and class, per status), and the admin API's
//! own figure for the whole tree.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python with Debian's packages (not a pyenv shim that may lack them).
const PYTHON: &str = "/usr/bin/python3";

/// Turns the text on standard input into JSON: `{"types": {family: type}, "samples":
/// [[name, {labels}, value], ...]}`, with the reference parser (which raises on bad text).
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
types, samples = {}, []
for f in text_string_to_metric_families(sys.stdin.read()):
    types[f.name] = f.type
    for s in f.samples:
        samples.append([s.name, s.labels, s.value])
json.dump({"types": types, "samples": samples}, sys.stdout)
"#;

fn parser_available() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import prometheus_client.parser"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("RESCON_REQUIRE_KERNEL").is_none_or(|v| v != "1"),
            "RESCON_REQUIRE_KERNEL=1 but {PYTHON} cannot import prometheus_client \
             (apt-get install python3-prometheus-client)"
        );
        eprintln!("skipped: {PYTHON} has no prometheus_client (python3-prometheus-client)");
    }
    ok
}

struct Server {
    child: Child,
    web: SocketAddr,
    metrics: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM: the server removes its cgroups, then exits.
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
    for v in ["a", "b"] {
        std::fs::create_dir_all(d.join(v)).unwrap();
        std::fs::write(d.join(v).join("index.html"), format!("site {v}\n")).unwrap();
    }
    std::fs::create_dir_all(d.join("cgi")).unwrap();
    let spin = d.join("cgi/spin.sh");
    std::fs::write(
        &spin,
        "#!/bin/sh\ni=0\nwhile [ $i -lt 20000 ]; do i=$((i+1)); done\nprintf 'spinning\\n' >&2\nprintf 'Content-Type: text/plain\\n\\nspun\\n'\n",
    )
    .unwrap();
    std::fs::set_permissions(&spin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = format!(
        r#"
[server]
access_log = "off"
[admin]
socket = "{d}/admin.sock"
[metrics]
listen = "127.0.0.1:0"

[containers.clients.premium]
[containers.clients.rest]
[containers.site-a]
[containers.site-b]
[containers.cgi]

[[listener]]
name = "web"
address = "127.0.0.1"
port = 0
black_hole = ["127.0.0.66/32"]

[[listener.class]]
name = "premium"
container = "clients/premium"
prefixes = ["127.0.0.2/32"]

[[listener.class]]
name = "rest"
container = "clients/rest"
except = []

[[vhost]]
name = "a"
hosts = ["a.test"]
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
"#,
        d = d.display()
    );
    let path = d.join("httpd.toml");
    std::fs::write(&path, conf).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rescon-httpd"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut web, mut metrics) = (None, None);
    while web.is_none() || metrics.is_none() {
        let line = lines
            .next()
            .expect("the server said its addresses")
            .unwrap();
        eprintln!("{line}");
        if let Some(a) = after(&line, "listening on ") {
            web = Some(a.parse().unwrap());
        }
        if let Some(a) = after(&line, "metrics on http://") {
            metrics = Some(a.trim_end_matches("/metrics").parse().unwrap());
        }
    }
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            eprintln!("{l}");
        }
    });
    Server {
        child,
        web: web.unwrap(),
        metrics: metrics.unwrap(),
        dir,
    }
}

fn after<'a>(line: &'a str, what: &str) -> Option<&'a str> {
    let rest = &line[line.find(what)? + what.len()..];
    rest.split(|c: char| c.is_whitespace() || c == '"').next()
}

/// One request with `Connection: close`: the status.
fn request(from: &str, to: SocketAddr, method: &str, host: &str, path: &str) -> u16 {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&format!("{from}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.connect(&to.into()).unwrap();
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split(' ').nth(1).unwrap().parse().unwrap()
}

fn scrape_text(s: &Server) -> String {
    let mut c = TcpStream::connect(s.metrics).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// A sample's labels and value.
type Sample = (BTreeMap<String, String>, f64);

/// A scrape, parsed: family types and samples by name, then by their labels.
struct Scrape {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, Vec<Sample>>,
}

impl Scrape {
    fn of(text: &str) -> Scrape {
        let mut py = Command::new(PYTHON)
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = py.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the Prometheus parser refused the text: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let types = v["types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, t)| (k.clone(), t.as_str().unwrap().to_string()))
            .collect();
        let mut samples: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for s in v["samples"].as_array().unwrap() {
            let labels = s[1]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            samples
                .entry(s[0].as_str().unwrap().to_string())
                .or_default()
                .push((labels, s[2].as_f64().unwrap()));
        }
        Scrape { types, samples }
    }

    /// The value of `name` with exactly these labels (0 when there is no such series).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .get(name)
            .into_iter()
            .flatten()
            .find(|(l, _)| {
                l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map_or(0.0, |(_, v)| *v)
    }

    /// The sum of `name` over the series whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .get(name)
            .into_iter()
            .flatten()
            .filter(|(l, _)| {
                labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn container(&self, name: &str, c: &str) -> f64 {
        self.get(name, &[("container", c)])
    }
}

/// Bytes the two CGI runs of the test write to standard error (`spinning\n` each).
const CGI_STDERR: f64 = 2.0 * 9.0;

/// The declared containers of the configuration, as `/metrics` labels them.
const CONTAINERS: &[&str] = &[
    "/",
    "cgi",
    "clients",
    "clients/premium",
    "clients/rest",
    "site-a",
    "site-b",
];

/// The declared containers directly below `p`.
fn children(p: &str) -> Vec<&'static str> {
    CONTAINERS
        .iter()
        .copied()
        .filter(|c| *c != "/" && *c != p)
        .filter(|c| match p {
            "/" => !c.contains('/'),
            _ => c
                .strip_prefix(p)
                .and_then(|r| r.strip_prefix('/'))
                .is_some_and(|r| !r.contains('/')),
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    // Values are nanoseconds printed as seconds: sums may differ in the last bits only.
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Every own/subtree pair adds up: subtree(P) = own(P) + the subtrees of P's declared
/// children, and the root's subtree is the sum of every container's own.
fn assert_adds_up(s: &Scrape) {
    let own: Vec<&String> = s
        .types
        .keys()
        .filter(|f| f.starts_with("rescon_") && !f.starts_with("rescon_subtree_"))
        .filter(|f| {
            s.types
                .contains_key(&format!("rescon_subtree_{}", &f["rescon_".len()..]))
        })
        .collect();
    assert!(own.len() >= 10, "own families: {own:?}");
    // Every usage counter of the model is a family pair, the newer ones too.
    for f in [
        "rescon_cpu_seconds",
        "rescon_kernel_cpu_seconds",
        "rescon_kernel_network_cpu_seconds",
        "rescon_receive_bytes",
        "rescon_transmit_bytes",
        "rescon_requests",
        "rescon_connections_accepted",
        "rescon_connections_refused",
        "rescon_queue_wait_seconds",
        "rescon_throttled_seconds",
        "rescon_processes_spawned",
        "rescon_stderr_bytes",
        "rescon_open_connections",
        "rescon_processes",
        "rescon_memory_bytes",
        "rescon_kernel_memory_bytes",
    ] {
        assert!(
            own.contains(&&f.to_string()),
            "no own/subtree pair for {f}: {own:?}"
        );
    }
    for fam in own {
        let ty = &s.types[fam];
        // The parser names a counter family without `_total`; its samples keep it.
        let sample = |f: &str| {
            if ty == "counter" {
                format!("{f}_total")
            } else {
                f.to_string()
            }
        };
        let own_name = sample(fam);
        let sub_name = sample(&format!("rescon_subtree_{}", &fam["rescon_".len()..]));
        for p in CONTAINERS {
            let kids: f64 = children(p).iter().map(|c| s.container(&sub_name, c)).sum();
            let (mine, sub) = (s.container(&own_name, p), s.container(&sub_name, p));
            assert!(
                close(sub, mine + kids),
                "{sub_name}{{container={p:?}}} = {sub}, but own {mine} + children {kids}"
            );
        }
        let all: f64 = CONTAINERS.iter().map(|c| s.container(&own_name, c)).sum();
        assert!(
            close(s.container(&sub_name, "/"), all),
            "{sub_name} of the root is not the sum of {own_name}"
        );
        assert_eq!(
            s.samples.get(&own_name).map_or(0, Vec::len),
            CONTAINERS.len(),
            "one {own_name} series per declared container, none per connection"
        );
    }
}

#[test]
fn metrics_parse_add_up_and_match_the_requests_made() {
    if !parser_available() {
        return;
    }
    let s = start();
    // premium (127.0.0.2): 3 pages and a miss on vhost a. rest (127.0.0.1): 2 pages on b,
    // 2 CGI runs on a.
    let mut made = 0;
    for _ in 0..3 {
        assert_eq!(
            request("127.0.0.2", s.web, "GET", "a.test", "/index.html"),
            200
        );
        made += 1;
    }
    assert_eq!(
        request("127.0.0.2", s.web, "GET", "a.test", "/missing"),
        404
    );
    made += 1;
    for _ in 0..2 {
        assert_eq!(
            request("127.0.0.1", s.web, "GET", "b.test", "/index.html"),
            200
        );
        assert_eq!(
            request("127.0.0.1", s.web, "GET", "a.test", "/cgi-bin/spin.sh"),
            200
        );
        made += 2;
    }
    // A response is recorded when its body is dropped, just after the client has it all.
    let h = "rescon_http_request_duration_seconds";
    let t = Instant::now();
    let first = loop {
        let sc = Scrape::of(&scrape_text(&s));
        let settled = sc.sum(&format!("{h}_count"), &[]) as u32 == made
            && sc.container("rescon_subtree_stderr_bytes_total", "/") >= CGI_STDERR;
        if settled || t.elapsed() > Duration::from_secs(5) {
            break sc;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let sc = &first;
    assert_eq!(sc.types.get(h).map(String::as_str), Some("histogram"));
    assert_eq!(sc.types["rescon_cpu_seconds"], "counter");
    assert_eq!(sc.types["rescon_open_connections"], "gauge");
    assert_adds_up(sc);

    // Requests: counted where their work was charged, once each.
    let req = "rescon_requests_total";
    assert_eq!(sc.sum(req, &[]), made as f64, "every request once");
    assert_eq!(
        sc.container("rescon_subtree_requests_total", "/"),
        made as f64
    );
    assert_eq!(sc.container(req, "site-a"), 4.0, "3 pages and a miss on a");
    assert_eq!(sc.container(req, "site-b"), 2.0);
    assert_eq!(
        sc.container(req, "cgi"),
        2.0,
        "CGI runs in their own containers"
    );
    // The CGI runs' CPU is the cgi container's own (their containers are released).
    let cgi_cpu = sc.container("rescon_cpu_seconds_total", "cgi")
        + sc.container("rescon_kernel_cpu_seconds_total", "cgi");
    assert!(cgi_cpu > 0.0, "CGI CPU charged to cgi");
    // What the runs wrote to standard error, charged to cgi and nowhere else.
    let stderr = "rescon_stderr_bytes_total";
    assert_eq!(sc.container(stderr, "cgi"), CGI_STDERR);
    assert_eq!(sc.sum(stderr, &[]), CGI_STDERR);
    assert_eq!(
        sc.container("rescon_subtree_stderr_bytes_total", "/"),
        CGI_STDERR
    );
    // Every connection was accepted under a class and counted once.
    assert!(sc.container("rescon_subtree_connections_accepted_total", "/") >= made as f64);
    assert_eq!(sc.container("rescon_open_connections", "site-a"), 0.0);

    // Durations and statuses by vhost and class.
    for (vhost, class, n) in [
        ("a", "premium", 4.0),
        ("b", "rest", 2.0),
        ("a", "rest", 2.0),
    ] {
        let l = [("vhost", vhost), ("class", class)];
        assert_eq!(sc.get(&format!("{h}_count"), &l), n, "{vhost}/{class}");
        assert_eq!(
            sc.get(&format!("{h}_bucket"), &[l[0], l[1], ("le", "+Inf")]),
            n
        );
        assert!(sc.get(&format!("{h}_sum"), &l) > 0.0);
        // Buckets are cumulative.
        let mut buckets: Vec<(f64, f64)> = sc.samples[&format!("{h}_bucket")]
            .iter()
            .filter(|(x, _)| x["vhost"] == vhost && x["class"] == class)
            .map(|(x, v)| (x["le"].parse::<f64>().unwrap(), *v))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    }
    let codes = "rescon_http_responses_total";
    assert_eq!(
        sc.get(
            codes,
            &[("vhost", "a"), ("class", "premium"), ("code", "404")]
        ),
        1.0
    );
    assert_eq!(
        sc.get(
            codes,
            &[("vhost", "a"), ("class", "premium"), ("code", "200")]
        ),
        3.0
    );
    assert_eq!(sc.sum(codes, &[("code", "200")]), (made - 1) as f64);

    // The kernel's drop counters and the build.
    assert_eq!(sc.types["rescon_listener_dropped_syns"], "counter");
    assert_eq!(
        sc.get(
            "rescon_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                (
                    "target",
                    &format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
                )
            ]
        ),
        1.0
    );

    // The model agrees: the admin API's tree has the same requests.
    let mut c = std::os::unix::net::UnixStream::connect(s.dir.path().join("admin.sock")).unwrap();
    c.write_all(b"GET /containers HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let tree: serde_json::Value =
        serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(
        tree["usage_subtree"]["requests"].as_u64(),
        Some(made as u64)
    );
    assert_eq!(
        tree["usage_subtree"]["stderr_bytes"].as_u64(),
        Some(CGI_STDERR as u64)
    );

    // More traffic: every counter only grows, and the sums still hold.
    for _ in 0..3 {
        assert_eq!(
            request("127.0.0.2", s.web, "GET", "b.test", "/index.html"),
            200
        );
    }
    let t = Instant::now();
    let second = loop {
        let sc = Scrape::of(&scrape_text(&s));
        if sc.sum(&format!("{h}_count"), &[]) as u32 == made + 3
            || t.elapsed() > Duration::from_secs(5)
        {
            break sc;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_adds_up(&second);
    assert_eq!(second.container(req, "site-b"), 5.0);
    for (name, ty) in &first.types {
        if ty != "counter" {
            continue;
        }
        for (labels, v) in &first.samples[&format!("{name}_total")] {
            let l: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let now = second.get(&format!("{name}_total"), &l);
            assert!(
                now >= *v,
                "{name}_total{labels:?} went down: {v} then {now}"
            );
        }
    }

    // The metrics listener serves /metrics alone.
    let ask = |req: &str| {
        let mut c = TcpStream::connect(s.metrics).unwrap();
        c.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    };
    assert!(
        ask("GET /containers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .starts_with("HTTP/1.1 404")
    );
    assert!(
        ask("POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .starts_with("HTTP/1.1 405")
    );
}

/// The admin API's operator actions that `rctl` uses: reload and unblock.
#[test]
fn reload_and_unblock_through_the_admin_api() {
    let s = start();
    let admin = |method: &str, path: &str, body: &str| {
        let mut c =
            std::os::unix::net::UnixStream::connect(s.dir.path().join("admin.sock")).unwrap();
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    };
    let (st, body) = admin("POST", "/reload", "");
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("summary"), "{body}");
    // A file that does not load changes nothing and says why.
    let conf = s.dir.path().join("httpd.toml");
    let good = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        format!("{good}\n[containers.bad]\nshare = \"lots\"\n"),
    )
    .unwrap();
    let (st, body) = admin("POST", "/reload", "");
    assert_eq!(st, 422, "{body}");
    assert!(body.contains("share"), "{body}");
    std::fs::write(&conf, good).unwrap();
    assert_eq!(
        request("127.0.0.1", s.web, "GET", "a.test", "/index.html"),
        200
    );

    // The black hole's prefix, unblocked, is served again (by the `except` class).
    let (st, body) = admin("GET", "/filters", "");
    assert_eq!(st, 200);
    assert!(body.contains("127.0.0.66/32"), "{body}");
    let (st, body) = admin("POST", "/filters/unblock", r#"{"prefix": "127.0.0.66"}"#);
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("black-hole"),
        "moved from the black hole: {body}"
    );
    let (_, body) = admin("GET", "/filters", "");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hole = v["listeners"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "black-hole")
        .unwrap();
    assert_eq!(hole["prefixes"], serde_json::json!([]), "{body}");
    assert_eq!(
        request("127.0.0.66", s.web, "GET", "a.test", "/index.html"),
        200
    );
    let (st, body) = admin("POST", "/filters/unblock", r#"{"prefix": "no"}"#);
    assert_eq!(st, 422, "{body}");
}
