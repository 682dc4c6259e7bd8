//! The servers the experiments compare, started and stopped the same way: each is a process
//! of its own, pinned to the server CPU (but rescon-httpd with its default worker count, which
//! runs on every CPU), on a loopback port, with the same files.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Kind {
    /// rescon-httpd with its containers (classes, vhosts, CGI in cgroups).
    Rescon,
    /// The same, with the server's default worker count (one per core) and not pinned: the
    /// server as a user starts it, where shares and classes must hold across workers.
    ResconDefault,
    /// The same binary with `--no-containers`: one container for everything, no classes, no
    /// cgroups.
    ResconOff,
    /// rescon-httpd with containers but `enforcement = "user"`: no cgroups, the CGI class's
    /// CPU cap held by the user-mode limiter (SIGSTOP/SIGCONT).
    ResconUser,
    /// nginx from the distribution, when installed.
    Nginx,
    /// hyper 1 on a tokio current-thread runtime, the 1 KB body from memory with a file
    /// server's headers.
    HyperTokio,
}

impl Kind {
    /// The column name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Rescon => "rescon-httpd",
            Kind::ResconDefault => "rescon-httpd, default workers",
            Kind::ResconOff => "rescon-httpd, containers off",
            Kind::ResconUser => "rescon-httpd, cgroups off (user-mode cap)",
            Kind::Nginx => "nginx",
            Kind::HyperTokio => "hyper on tokio",
        }
    }

    /// A short key for JSON.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Rescon => "rescon",
            Kind::ResconDefault => "rescon_default_workers",
            Kind::ResconOff => "rescon_off",
            Kind::ResconUser => "rescon_user",
            Kind::Nginx => "nginx",
            Kind::HyperTokio => "hyper_tokio",
        }
    }
}

/// The files every server serves, and rescon-httpd's configuration for them.
pub struct Site {
    /// The run's scratch directory (removed by the caller).
    pub dir: PathBuf,
    /// The CPU-burning CGI script's CPU time per request, milliseconds.
    pub cgi_ms: u64,
    /// This program, copied into `dir`: what the run executes again (as the servers, the CGI
    /// script, the primitives and the SYN-flood experiment). The copy, not the built file, so
    /// a `cargo build` during the run (which replaces the built file) cannot break it.
    pub exe: PathBuf,
    /// Whether `tls.pem` and `tls.key` (RSA-2048, for localhost, made with `openssl req`) are
    /// in `dir`: every server then also serves HTTPS (and HTTP/2) with them.
    pub tls: bool,
    /// How long every server lets a connection wait for a request (its head, or the next one
    /// on a kept-alive connection) before closing it; `None`: each server's own default.
    pub idle_timeout: Option<Duration>,
    /// Connections each server must be able to hold at once.
    pub max_conns: usize,
    /// Debian's php-fpm, if installed: the FastCGI pool rescon-httpd starts (`/php/`).
    pub php_fpm: Option<PathBuf>,
    /// Where rescon-httpd writes a count of its heap on `SIGUSR2` (`RESCON_HEAP_STATS`, see
    /// `rescon_httpd::alloc`); `None`: it does not count.
    pub heap_stats: Option<PathBuf>,
}

/// The FastCGI script burning the CGI script's CPU, in a persistent php-fpm worker.
pub const FCGI_BURN: &str = "/php/burn.php";

/// php-fpm, as Debian installs it.
pub fn php_fpm_path() -> Option<PathBuf> {
    let d = std::fs::read_dir("/usr/sbin").ok()?;
    let mut found: Vec<PathBuf> = d
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("php-fpm"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The 1 KB file's path on every server.
pub const FILE_1K: &str = "/1k.html";
/// The CPU-bound CGI script's path.
pub const CGI_BURN: &str = "/cgi-bin/burn.sh";

impl Site {
    /// Writes the document roots (the main one and vhosts a, b, c), each with the 1 KB file
    /// and a CGI script that burns `cgi_ms` of CPU (by calling this binary's `cgi-burn`).
    pub fn create(dir: &Path, cgi_ms: u64) -> Result<Site> {
        let built = std::env::current_exe().context("locating rescon-bench")?;
        let exe = dir.join("rescon-bench");
        std::fs::copy(&built, &exe).with_context(|| {
            format!(
                "copying {} to {} for the run",
                built.display(),
                exe.display()
            )
        })?;
        let body: String = "rescon paper experiment, a 1 KB file.\n"
            .chars()
            .cycle()
            .take(1023)
            .chain(std::iter::once('\n'))
            .collect();
        for root in ["htdocs", "a", "b", "c"] {
            let d = dir.join(root);
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join("1k.html"), &body)?;
            std::fs::write(d.join("index.html"), "<h1>rescon paper</h1>\n")?;
        }
        std::fs::create_dir_all(dir.join("cgi-bin"))?;
        let script = dir.join("cgi-bin/burn.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nexec '{}' cgi-burn {cgi_ms}\n", exe.display()),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        // RSA-2048, the usual web certificate, whose signature is most of a full handshake's
        // cost on the server (and little on a client that does not verify it).
        let tls = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
            ])
            .arg("-keyout")
            .arg(dir.join("tls.key"))
            .arg("-out")
            .arg(dir.join("tls.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !tls {
            eprintln!(
                "openssl could not make a certificate: no TLS experiments (apt-get install openssl)"
            );
        }
        // The FastCGI twin of burn.sh: the same CPU per request, in a php-fpm worker that
        // serves one request after another; workers forked on demand (16 at most, one per
        // client), so servers of the other experiments start none.
        let php_fpm = php_fpm_path();
        std::fs::create_dir_all(dir.join("php"))?;
        std::fs::write(
            dir.join("php/burn.php"),
            format!(
                "<?php\nfunction cpu_ms() {{ $r = getrusage(); return ($r['ru_utime.tv_sec'] + $r['ru_stime.tv_sec']) * 1000 + ($r['ru_utime.tv_usec'] + $r['ru_stime.tv_usec']) / 1000; }}\n\
                 $s = cpu_ms(); $x = 0;\nwhile (cpu_ms() - $s < {cgi_ms}) {{ for ($i = 0; $i < 10000; $i++) {{ $x += $i; }} }}\n\
                 header('Content-Type: text/plain');\necho \"burned {cgi_ms} ms\\n\";\n"
            ),
        )?;
        let root = rustix::process::geteuid().is_root();
        std::fs::write(
            dir.join("fpm.conf"),
            format!(
                "[global]\npid = {d}/fpm.pid\nerror_log = {d}/fpm.log\ndaemonize = no\n\n[www]\n{user}\
                 listen = {d}/php.sock\npm = ondemand\npm.max_children = 16\n\
                 pm.process_idle_timeout = 30s\nclear_env = no\n",
                d = dir.display(),
                user = if root {
                    "user = root\ngroup = root\n"
                } else {
                    ""
                },
            ),
        )?;
        Ok(Site {
            dir: dir.to_path_buf(),
            cgi_ms,
            exe,
            tls,
            idle_timeout: None,
            max_conns: 8192,
            php_fpm,
            heap_stats: None,
        })
    }

    /// rescon-httpd's configuration: classes by source address (127.0.0.2 is the
    /// high-priority class), the main vhost with a CGI class capped at 30% of a CPU, and vhosts
    /// a.test, b.test, c.test with fixed shares 50/30/20 of what the sites get, CGI included.
    pub fn rescon_config(&self, kind: Kind) -> String {
        let d = self.dir.display();
        let tls = if self.tls {
            TLS_LISTENER.replace("{d}", &d.to_string())
        } else {
            String::new()
        };
        let vhost_tls = if self.tls {
            format!("[vhost.tls]\ncert = \"{d}/tls.pem\"\nkey = \"{d}/tls.key\"\n")
        } else {
            String::new()
        };
        let idle = match self.idle_timeout {
            Some(t) => format!("header = \"{0}s\"\nkeep_alive = \"{0}s\"\n", t.as_secs()),
            None => String::new(),
        };
        let enforcement = if kind == Kind::ResconUser {
            "user"
        } else {
            "auto"
        };
        let fastcgi = match &self.php_fpm {
            Some(fpm) => format!(
                "\n# The FastCGI pool: php-fpm started by rescon-httpd in the CGI class's container.\n\
                 [[fastcgi]]\nprefix = \"/php/\"\naddress = \"unix:{d}/php.sock\"\nroot = \"{d}/php\"\n\
                 container = \"cgi\"\ncommand = [\"{}\", \"--nodaemonize\", \"--fpm-config\", \"{d}/fpm.conf\"{}]\n",
                fpm.display(),
                if rustix::process::geteuid().is_root() {
                    ", \"--allow-to-run-as-root\""
                } else {
                    ""
                }
            ),
            None => String::new(),
        };
        let mut conf = format!(
            r#"# Written by rescon-bench paper.
[server]
enforcement = "{enforcement}"
access_log = "off"

[timeouts]
cgi = "120s"
{idle}
[admin]
socket = "{d}/admin.sock"

[containers.clients.high]
class = "high"
[containers.clients.low]

# The main site's work: connections move here (under their class) on their first request.
[containers.web.high]
class = "high"
[containers.web.low]

# CGI of the main site: at most 30% of one CPU, enforced by the kernel.
[containers.cgi]
cpu_limit = "30%"
enforcement = "kernel"

# Three guest servers with fixed shares of what the sites get, their CGI included.
[containers.sites]
enforcement = "kernel"
[containers.sites.a]
share = "50%"
enforcement = "kernel"
[containers.sites.a.cgi]
enforcement = "kernel"
[containers.sites.b]
share = "30%"
enforcement = "kernel"
[containers.sites.b.cgi]
enforcement = "kernel"
[containers.sites.c]
share = "20%"
enforcement = "kernel"
[containers.sites.c.cgi]
enforcement = "kernel"

[[listener]]
name = "web"
address = "127.0.0.1"
port = 0

[[listener.class]]
name = "high"
container = "clients/high"
prefixes = ["127.0.0.2/32"]

[[listener.class]]
name = "low"
container = "clients/low"
except = []

{tls}
[[vhost]]
name = "main"
hosts = ["localhost"]
root = "{d}/htdocs"
container = "web"
default = true
{vhost_tls}

[[vhost.cgi]]
prefix = "/cgi-bin/"
dir = "{d}/cgi-bin"
container = "cgi"

[[vhost]]
name = "a"
hosts = ["a.test"]
root = "{d}/a"
container = "sites/a"

[[vhost.cgi]]
prefix = "/cgi-bin/"
dir = "{d}/cgi-bin"
container = "sites/a/cgi"

[[vhost]]
name = "b"
hosts = ["b.test"]
root = "{d}/b"
container = "sites/b"

[[vhost.cgi]]
prefix = "/cgi-bin/"
dir = "{d}/cgi-bin"
container = "sites/b/cgi"

[[vhost]]
name = "c"
hosts = ["c.test"]
root = "{d}/c"
container = "sites/c"

[[vhost.cgi]]
prefix = "/cgi-bin/"
dir = "{d}/cgi-bin"
container = "sites/c/cgi"
"#
        );
        conf.push_str(&fastcgi);
        conf
    }

    fn nginx_config(&self, port: u16, tls_port: u16) -> String {
        let d = self.dir.display();
        // `ssl_protocols` named: nginx before 1.23.4 (Debian 12 has 1.22) speaks TLS 1.0 to
        // 1.2 by default, so it answered the load's client with TLS 1.2 while the rustls
        // servers answered with 1.3, and experiments 7, 8 and 10 set two different handshakes
        // side by side (shown by experiment 10's probe of each server's handshake).
        let tls = if self.tls {
            format!(
                "    server {{\n        listen 127.0.0.1:{tls_port} ssl http2 backlog=4096;\n        root {d}/htdocs;\n        ssl_certificate {d}/tls.pem;\n        ssl_certificate_key {d}/tls.key;\n        ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_session_cache shared:SSL:10m;\n        ssl_session_tickets on;\n        http2_max_concurrent_streams 128;\n    }}\n"
            )
        } else {
            String::new()
        };
        // nginx closes idle kept-alive connections once fewer than a sixteenth of its
        // connections are free ("worker_connections are not enough, reusing connections"):
        // room for an eighth more than the run holds.
        let conns = (self.max_conns + self.max_conns / 8 + 512).max(8192);
        let files = conns + 256;
        let (keepalive, header) = match self.idle_timeout {
            Some(t) => (t.as_secs(), t.as_secs()),
            None => (60, 60),
        };
        format!(
            r#"# Written by rescon-bench paper: one worker, access log off, sendfile and an open-file
# cache (nginx at its best on a 1 KB file).
worker_processes 1;
worker_rlimit_nofile {files};
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections {conns}; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=1000;
    keepalive_requests 1000000;
    keepalive_timeout {keepalive}s;
    client_header_timeout {header}s;
    client_body_temp_path {d}/nginx-body;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {d}/htdocs;
    }}
{tls}}}
"#
        )
    }
}

/// rescon-httpd's TLS listener: the same classes as the cleartext one.
const TLS_LISTENER: &str = r#"
[[listener]]
name = "tls"
address = "127.0.0.1"
port = 0
tls = true

[[listener.class]]
name = "high"
container = "clients/high"
prefixes = ["127.0.0.2/32"]

[[listener.class]]
name = "low"
container = "clients/low"
except = []
"#;

/// Where nginx is, if installed.
pub fn nginx_path() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A running server; dropping it stops it (SIGTERM, then SIGKILL after 5 s).
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it listens for HTTPS (HTTP/2 and HTTP/1.1 by ALPN), when the site has TLS.
    pub tls: Option<SocketAddr>,
    /// Its process id.
    pub pid: u32,
    /// rescon-httpd's admin socket.
    pub admin: Option<PathBuf>,
    child: Child,
}

impl Drop for Running {
    /// Stops the server and whatever it started: a CGI script still burning its 200 ms when
    /// the server goes (with containers off nothing kills it) would otherwise run into the
    /// next point's window, and the next server would be measured beside it. (This is what
    /// made a K=0 baseline of experiment 4 run at half speed once.)
    fn drop(&mut self) {
        let left = descendants(self.pid);
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.pid as i32).expect("a child's pid"),
            rustix::process::Signal::TERM,
        );
        let t = Instant::now();
        let mut exited = false;
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The server's processes that outlived it (by pid and start time, so a reused pid is
        // left alone), killed, and waited for until gone (they are no children of ours).
        let alive = |&(pid, start): &(u32, u64)| proc_start(pid) == Some(start);
        for (pid, _) in left.iter().filter(|p| alive(p)) {
            if let Some(p) = rustix::process::Pid::from_raw(*pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        let t = Instant::now();
        while left.iter().any(alive) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A process's start time (field 22 of `/proc/<pid>/stat`), `None` once it is gone or a
/// zombie.
fn proc_start(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.first() == Some(&"Z") {
        return None;
    }
    f.get(19)?.parse().ok()
}

/// The descendants of `root` (pid and start time), from the parent links in `/proc`.
fn descendants(root: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let all: Vec<(u32, u32)> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, proc_stat(p).ok()?.ppid)))
        .collect();
    let mut out: Vec<u32> = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    out.into_iter()
        .skip(1)
        .filter_map(|p| Some((p, proc_start(p)?)))
        .collect()
}

/// Spawns `cmd` pinned to `cpu` (the affinity is inherited; the calling thread's own is put
/// back).
fn spawn_pinned(cmd: &mut Command, cpu: Option<usize>) -> Result<Child> {
    let saved = rustix::thread::sched_getaffinity(None).context("reading the CPU affinity")?;
    if let Some(cpu) = cpu {
        rescon_bench::httpload::pin_to(cpu)?;
    }
    let child = cmd.spawn();
    rustix::thread::sched_setaffinity(None, &saved).context("restoring the CPU affinity")?;
    Ok(child?)
}

/// Reads the child's output up to `listening on ADDR` (rescon-httpd says it among its
/// diagnostics on standard error, which are passed on; the hyper baseline prints it on
/// standard output), then drains the rest in a thread.
fn read_address(child: &mut Child, what: &str, count: usize) -> Result<Vec<SocketAddr>> {
    let (out, pass_on): (Box<dyn std::io::Read + Send>, bool) = match child.stderr.take() {
        Some(err) => (Box::new(err), true),
        None => (Box::new(child.stdout.take().context("no stdout")?), false),
    };
    let mut lines = BufReader::new(out).lines();
    let mut addrs = Vec::new();
    while addrs.len() < count {
        match lines.next() {
            Some(Ok(line)) => {
                if pass_on {
                    eprintln!("{line}");
                }
                if let Some(i) = line.find("listening on ") {
                    let a = line[i + "listening on ".len()..]
                        .split(|c: char| c.is_whitespace() || c == '"')
                        .next()
                        .unwrap_or("");
                    addrs.push(
                        a.parse()
                            .with_context(|| format!("{what} printed a bad address: {line}"))?,
                    );
                }
            }
            _ => bail!("{what} exited before listening (its errors are above)"),
        }
    }
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if pass_on {
                eprintln!("{l}");
            }
        }
    });
    Ok(addrs)
}

/// Starts `kind` on the server CPU.
pub fn start(kind: Kind, site: &Site, cpu: Option<usize>) -> Result<Running> {
    let exe = &site.exe;
    match kind {
        Kind::Rescon | Kind::ResconOff | Kind::ResconDefault | Kind::ResconUser => {
            let conf = site.dir.join("rescon-httpd.toml");
            std::fs::write(&conf, site.rescon_config(kind))?;
            let _ = std::fs::remove_file(site.dir.join("admin.sock"));
            let mut cmd = Command::new(exe);
            cmd.arg("httpd")
                .arg("--config")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if kind != Kind::ResconDefault {
                cmd.args(["--workers", "1"]);
            }
            if kind == Kind::ResconOff {
                cmd.arg("--no-containers");
            }
            if let Some(f) = &site.heap_stats {
                cmd.env(rescon_httpd::alloc::HEAP_STATS_ENV, f);
            }
            let cpu = if kind == Kind::ResconDefault {
                None
            } else {
                cpu
            };
            let mut child = spawn_pinned(&mut cmd, cpu)?;
            let pid = child.id();
            let addrs = read_address(&mut child, "rescon-httpd", 1 + site.tls as usize)?;
            Ok(Running {
                addr: addrs[0],
                tls: addrs.get(1).copied(),
                pid,
                admin: Some(site.dir.join("admin.sock")),
                child,
            })
        }
        Kind::HyperTokio => {
            let mut cmd = Command::new(exe);
            cmd.arg("hyper-baseline");
            if let Some(t) = site.idle_timeout {
                cmd.arg("--header-timeout").arg(t.as_secs().to_string());
            }
            if site.tls {
                cmd.arg("--cert")
                    .arg(site.dir.join("tls.pem"))
                    .arg("--key")
                    .arg(site.dir.join("tls.key"));
            }
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
            let mut child = spawn_pinned(&mut cmd, cpu)?;
            let pid = child.id();
            let addrs = read_address(&mut child, "the hyper baseline", 1 + site.tls as usize)?;
            Ok(Running {
                addr: addrs[0],
                tls: addrs.get(1).copied(),
                pid,
                admin: None,
                child,
            })
        }
        Kind::Nginx => {
            let nginx = nginx_path().context("nginx is not installed")?;
            let free = || -> Result<u16> {
                Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port())
            };
            let (port, tls_port) = (free()?, free()?);
            let conf = site.dir.join("nginx.conf");
            std::fs::write(&conf, site.nginx_config(port, tls_port))?;
            std::fs::create_dir_all(site.dir.join("nginx-body"))?;
            let mut cmd = Command::new(nginx);
            cmd.arg("-p")
                .arg(&site.dir)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            let mut child = spawn_pinned(&mut cmd, cpu)?;
            let pid = child.id();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let t = Instant::now();
            while std::net::TcpStream::connect(addr).is_err() {
                if let Ok(Some(st)) = child.try_wait() {
                    bail!(
                        "nginx exited ({st}); see {}",
                        site.dir.join("nginx-error.log").display()
                    );
                }
                if t.elapsed() > Duration::from_secs(10) {
                    bail!("nginx did not listen on {addr} within 10 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(Running {
                addr,
                tls: site
                    .tls
                    .then_some(SocketAddr::from(([127, 0, 0, 1], tls_port))),
                pid,
                admin: None,
                child,
            })
        }
    }
}

impl Running {
    /// Asks rescon-httpd's admin API for a container and returns its JSON.
    pub fn container(&self, path: &str) -> Result<serde_json::Value> {
        let sock = self.admin.as_ref().context("not rescon-httpd")?;
        let mut s = std::os::unix::net::UnixStream::connect(sock)
            .with_context(|| format!("connecting to {}", sock.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /containers/{path}?depth=0 HTTP/1.0\r\nHost: admin\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (head, body) = text.split_once("\r\n\r\n").context("no response head")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!("admin API: GET /containers/{path}: {head}: {body}");
        }
        Ok(serde_json::from_str(body)?)
    }

    /// The kernel's view of the server's worker threads (named `rescon-worker-N`), by name:
    /// time on a CPU and time runnable but waiting for one (`schedstat`, ns), and voluntary
    /// context switches (sleeps). Empty where /proc lacks them.
    pub fn worker_sched(&self) -> Vec<(String, [u64; 3])> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return out;
        };
        for t in dir.flatten() {
            let p = t.path();
            let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            let name = name.trim();
            if !name.starts_with("rescon-worker") {
                continue;
            }
            let sched = std::fs::read_to_string(p.join("schedstat")).unwrap_or_default();
            let mut f = sched
                .split_whitespace()
                .map(|x| x.parse::<u64>().unwrap_or(0));
            let (run, wait) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
            let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
            let vol = status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            out.push((name.to_string(), [run, wait, vol]));
        }
        out.sort();
        out
    }

    /// CPU time the server's live handshake-pool threads (named `rescon-handshake`, cut to
    /// `rescon-handshak` by the kernel) have run so far, from their `schedstat`, nanoseconds.
    pub fn handshake_pool_cpu_ns(&self) -> u64 {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return 0;
        };
        dir.flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.starts_with("rescon-handshak"))
            })
            .filter_map(|t| {
                crate::schedstat(&t.path().join("schedstat").to_string_lossy()).map(|s| s.0)
            })
            .sum()
    }

    /// A container's subtree CPU, nanoseconds: what the runtime charged (its workers' polls)
    /// and what the kernel reported (CGI processes in cgroups), apart.
    pub fn subtree_cpu_split_ns(&self, path: &str) -> Result<(u64, u64)> {
        let v = self.container(path)?;
        let u = &v["usage_subtree"];
        Ok((
            u["cpu_ns"].as_u64().unwrap_or(0),
            u["kernel_cpu_ns"].as_u64().unwrap_or(0),
        ))
    }

    /// CPU time of the server's descendant processes so far, nanoseconds: the reaped ones
    /// from the server's `cutime + cstime` (one sum, rounded once to a tick) and the live
    /// ones (CGI scripts; a FastCGI pool and its workers, the server's grandchildren) from
    /// their `schedstat` (exact) and their own reaped children's. Per-process `utime +
    /// stime` would not do: each is rounded to a 10 ms tick, which over 16 processes is 8%
    /// of a 2 s window.
    pub fn children_cpu_ns(&self) -> Result<u64> {
        let tick_ns = 1e9 / clock_ticks() as f64;
        let me = proc_stat(self.pid)?;
        let mut ns = ((me.cutime + me.cstime) as f64 * tick_ns) as u64;
        let mut all = Vec::new();
        for e in std::fs::read_dir("/proc")? {
            let Ok(e) = e else { continue };
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(st) = proc_stat(pid) {
                all.push((pid, st));
            }
        }
        let parent: std::collections::HashMap<u32, u32> =
            all.iter().map(|(p, st)| (*p, st.ppid)).collect();
        let descends = |mut p: u32| {
            for _ in 0..8 {
                match parent.get(&p) {
                    Some(&pp) if pp == self.pid => return true,
                    Some(&pp) if pp > 1 => p = pp,
                    _ => return false,
                }
            }
            false
        };
        for (pid, st) in &all {
            if descends(*pid)
                && let Some((run_ns, _)) = crate::schedstat(&format!("/proc/{pid}/schedstat"))
            {
                ns += run_ns + ((st.cutime + st.cstime) as f64 * tick_ns) as u64;
            }
        }
        Ok(ns)
    }
}

pub(crate) struct ProcStat {
    pub(crate) ppid: u32,
    cutime: u64,
    cstime: u64,
}

pub(crate) fn proc_stat(pid: u32) -> Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces: the fields start after the last ')'.
    let rest = &text[text.rfind(')').context("bad /proc stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| -> Result<u64> {
        f.get(i)
            .context("short /proc stat")?
            .parse::<u64>()
            .context("bad /proc stat field")
    };
    // Fields after the name, 0-based: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    Ok(ProcStat {
        ppid: n(1)? as u32,
        cutime: n(13)?,
        cstime: n(14)?,
    })
}

fn clock_ticks() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// The hidden `hyper-baseline` subcommand: hyper 1 on a tokio current-thread runtime serving
/// the 1 KB body from memory on a free loopback port, until killed; with a certificate and
/// key, also over TLS (tokio-rustls on aws-lc-rs, as rescon-httpd) on a second port, HTTP/2
/// or HTTP/1.1 by ALPN. `header_timeout` replaces hyper's own (30 s) wait for a request head,
/// on a new connection and between requests (HTTP/1.1).
///
/// It sends the response a static file server sends for that file (rescon-httpd and nginx
/// both do): the validators, the type and `Accept-Ranges` beside the length and date hyper
/// adds, made once at start. Without them the peer would answer a different, smaller response
/// (two headers instead of six) and the keep-alive ratio would compare two operations.
pub fn hyper_baseline(
    tls: Option<(PathBuf, PathBuf)>,
    header_timeout: Option<Duration>,
) -> Result<()> {
    use hyper::body::Bytes;
    use hyper::header::{self, HeaderValue};
    let body = Bytes::from(vec![b'x'; 1024]);
    let headers = [
        (
            header::ETAG,
            HeaderValue::from_static("\"1d2f3c-400-18eeeb29636f67ae\""),
        ),
        (
            header::LAST_MODIFIED,
            HeaderValue::from_static("Mon, 07 Dec 2026 08:24:24 GMT"),
        ),
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ),
        (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
    ];
    let acceptor = match &tls {
        Some((cert, key)) => {
            let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
                .context("reading the certificate")?
                .collect::<Result<Vec<_>, _>>()?;
            let key =
                rustls::pki_types::PrivateKeyDer::from_pem_file(key).context("reading the key")?;
            let mut c = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
            c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(c)))
        }
        None => None,
    };
    use rustls::pki_types::pem::PemObject;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on {}", l.local_addr()?);
        let svc = move || {
            let (body, headers) = (body.clone(), headers.clone());
            hyper::service::service_fn(move |_req| {
                let mut res = hyper::Response::new(http_body_util::Full::new(body.clone()));
                let h = res.headers_mut();
                for (name, value) in &headers {
                    h.insert(name.clone(), value.clone());
                }
                async move { Ok::<_, std::convert::Infallible>(res) }
            })
        };
        if let Some(acceptor) = acceptor {
            let lt = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("listening on {}", lt.local_addr()?);
            let svc = svc.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((conn, _)) = lt.accept().await else {
                        continue;
                    };
                    let _ = conn.set_nodelay(true);
                    let (acceptor, svc) = (acceptor.clone(), svc());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(conn).await else {
                            return;
                        };
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        let io = hyper_util::rt::TokioIo::new(tls);
                        if h2 {
                            let _ = hyper::server::conn::http2::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .timer(hyper_util::rt::TokioTimer::new())
                            .max_concurrent_streams(128)
                            .serve_connection(io, svc)
                            .await;
                        } else {
                            let mut b = hyper::server::conn::http1::Builder::new();
                            b.timer(hyper_util::rt::TokioTimer::new());
                            if let Some(t) = header_timeout {
                                b.header_read_timeout(t);
                            }
                            let _ = b.serve_connection(io, svc).await;
                        }
                    });
                }
            });
        }
        loop {
            let (conn, _) = l.accept().await?;
            let _ = conn.set_nodelay(true);
            let svc = svc();
            tokio::spawn(async move {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(hyper_util::rt::TokioTimer::new());
                if let Some(t) = header_timeout {
                    b.header_read_timeout(t);
                }
                let _ = b
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                    .await;
            });
        }
    })
}

/// The hidden `cgi-burn MS` subcommand: a CGI program that burns `ms` of its own CPU time
/// (process CPU clock, so a capped or preempted run still burns the same amount) and answers.
pub fn cgi_burn(ms: u64) -> Result<()> {
    let want = Duration::from_millis(ms);
    let cpu = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let mut x = 0u64;
    while cpu() < want {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
    let body = format!("burned {ms} ms of CPU\n");
    let mut out = std::io::stdout().lock();
    // The server may have gone (the run ended): nothing to tell anyone then.
    let _ = write!(
        out,
        "Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .and_then(|()| out.flush());
    Ok(())
}
