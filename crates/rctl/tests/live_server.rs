//! rctl against a running rescon-httpd (in this process, user-level containers only, so it
//! needs no privileges and leaves nothing behind): the commands' output reflects the live
//! server, and changes made through rctl take effect in it.

use clap::Parser;
use std::path::Path;
use std::time::{Duration, Instant};

fn rctl(socket: &Path, args: &[&str]) -> Result<String, String> {
    let mut argv = vec!["rctl", "--socket", socket.to_str().unwrap()];
    argv.extend_from_slice(args);
    let args = rctl::cli::Args::try_parse_from(argv).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    rctl::cli::run(&args, &mut out).map_err(|e| format!("{e:#}"))?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn rctl_reads_and_changes_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("htdocs")).unwrap();
    std::fs::write(d.join("htdocs/index.html"), "hi\n").unwrap();
    let socket = d.join("admin.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = "rctl-live-token-0123456789";
    let conf = format!(
        r#"
[server]
enforcement = "user"
access_log = "off"
[admin]
socket = "{sock}"
tcp = "127.0.0.1:{port}"
token = "{token}"
[containers.clients.premium]
class = "high"
[containers.clients.rest]
[containers.cgi]
cpu_limit = "30%"
[containers.site]
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
name = "main"
hosts = ["localhost"]
root = "{root}"
container = "site"
default = true
"#,
        sock = socket.display(),
        root = d.join("htdocs").display()
    );
    let path = d.join("httpd.toml");
    std::fs::write(&path, conf).unwrap();
    let config = rescon_httpd::config::Config::load(&path).unwrap();
    // The server runs until the test process ends.
    std::thread::spawn(move || {
        let r = rescon_httpd::server::run(
            config,
            rescon_httpd::server::Options {
                workers: Some(1),
                no_containers: false,
                config_path: None,
            },
        );
        panic!("the server stopped: {r:?}");
    });
    let t = Instant::now();
    while !socket.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no admin socket");
        std::thread::sleep(Duration::from_millis(10));
    }

    let tree = rctl(&socket, &["tree"]).unwrap();
    for name in ["root", "premium", "rest", "cgi", "listener-web"] {
        assert!(tree.contains(name), "{name} missing from:\n{tree}");
    }
    assert!(tree.contains("cpu_limit=0.3"), "{tree}");
    assert!(tree.contains("class=high"), "{tree}");

    let set = rctl(&socket, &["set", "cgi", "cpu_limit=20%", "priority=50"]).unwrap();
    assert!(set.contains("cpu_limit=0.2"), "{set}");
    let show = rctl(&socket, &["show", "cgi"]).unwrap();
    let attr = |show: &str, key: &str| {
        show.lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(key)).then(|| w.next().unwrap_or("").to_string())
            })
            .unwrap_or_else(|| panic!("no {key} in:\n{show}"))
    };
    assert_eq!(attr(&show, "cpu_limit"), "0.2");
    assert_eq!(attr(&show, "priority"), "50");
    // All or nothing: one bad pair changes nothing.
    let err = rctl(&socket, &["set", "cgi", "cpu_limit=10%", "priority=5000"]).unwrap_err();
    assert!(err.contains("priority"), "{err}");
    let show = rctl(&socket, &["show", "cgi"]).unwrap();
    assert_eq!(attr(&show, "cpu_limit"), "0.2");
    assert_eq!(attr(&show, "priority"), "50");

    let filters = rctl(&socket, &["filters"]).unwrap();
    assert!(
        filters.contains("127.0.0.2/32") && filters.contains("127.0.0.66/32"),
        "{filters}"
    );
    rctl(&socket, &["block", "127.0.0.77/32"]).unwrap();
    let filters = rctl(&socket, &["filters"]).unwrap();
    let hole = filters
        .lines()
        .find(|l| l.contains("black-hole"))
        .unwrap_or_else(|| panic!("no black-hole line:\n{filters}"));
    assert!(hole.contains("127.0.0.77/32"), "{filters}");
    // unblock takes it off again; move puts a prefix in a class.
    rctl(&socket, &["unblock", "127.0.0.77"]).unwrap();
    rctl(&socket, &["move", "127.0.0.9/32", "premium"]).unwrap();
    let filters = rctl(&socket, &["filters"]).unwrap();
    let line = |name: &str| {
        filters
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no {name} line:\n{filters}"))
            .to_string()
    };
    assert!(!line("black-hole").contains("127.0.0.77/32"), "{filters}");
    assert!(line("premium").contains("127.0.0.9/32"), "{filters}");
    // metrics: the Prometheus text; reload: refused, as this server has no file.
    let metrics = rctl(&socket, &["metrics"]).unwrap();
    assert!(
        metrics.contains("rescon_subtree_requests_total{container=\"/\"}"),
        "{metrics}"
    );
    let err = rctl(&socket, &["reload"]).unwrap_err();
    assert!(err.contains("no file to reload"), "{err}");

    // top in batch mode: two text frames, each a title, a header and the tree's containers.
    let frames = rctl(&socket, &["top", "-b", "-n", "2", "-d", "0.1"]).unwrap();
    let frames: Vec<&str> = frames.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert_eq!(frames.len(), 2, "{frames:?}");
    for (i, f) in frames.iter().enumerate() {
        let lines: Vec<&str> = f.lines().collect();
        assert!(
            lines[0].starts_with("rctl top | ") && lines[0].contains(&format!("sample {}", i + 1)),
            "{f}"
        );
        assert!(lines[1].split_whitespace().eq([
            "ID",
            "NAME",
            "PARENT",
            "CPU%",
            "SELF%",
            "KCPU%",
            "REQ/s",
            "CONNS",
            "CPU_TIME",
            "ATTRIBUTES"
        ]));
        let names: Vec<&str> = lines[2..]
            .iter()
            .map(|l| l.split_whitespace().nth(1).unwrap())
            .collect();
        for name in ["root", "premium", "rest", "cgi"] {
            assert!(names.contains(&name), "{name} missing from:\n{f}");
        }
    }
    // --iterations without --batch is refused by the parser.
    assert!(rctl(&socket, &["top", "-n", "2"]).is_err());

    // The same API over loopback TCP, with the bearer token and without.
    let url = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no admin TCP listener"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let over_tcp = |args: &[&str]| {
        let mut argv = vec!["rctl", "--url", url.as_str()];
        argv.extend_from_slice(args);
        let args = rctl::cli::Args::try_parse_from(argv).unwrap();
        let mut out = Vec::new();
        rctl::cli::run(&args, &mut out)
            .map(|()| String::from_utf8(out).unwrap())
            .map_err(|e| format!("{e:#}"))
    };
    let tree = over_tcp(&["--token", token, "tree"]).unwrap();
    assert!(tree.contains("cpu_limit=0.2"), "{tree}");
    let err = over_tcp(&["--token", "wrong-token-000000000000", "tree"]).unwrap_err();
    assert!(err.contains("401") || err.contains("token"), "{err}");

    let err = rctl(&socket, &["show", "no/such/container"]).unwrap_err();
    assert!(
        err.contains("no/such/container") || err.contains("not found"),
        "{err}"
    );
}
