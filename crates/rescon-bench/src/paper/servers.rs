//! The servers the experiments compare, started and stopped the same way: each is a process
//! of its own, pinned to the server CPU, on a loopback port, with the same files.

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
    /// The same binary with `--no-containers`: one container for everything, no classes, no
    /// cgroups.
    ResconOff,
    /// nginx from the distribution, when installed.
    Nginx,
    /// hyper 1 on a tokio current-thread runtime, the 1 KB body from memory.
    HyperTokio,
}

impl Kind {
    /// The column name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Rescon => "rescon-httpd",
            Kind::ResconOff => "rescon-httpd, containers off",
            Kind::Nginx => "nginx",
            Kind::HyperTokio => "hyper on tokio",
        }
    }

    /// A short key for JSON.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Rescon => "rescon",
            Kind::ResconOff => "rescon_off",
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
        Ok(Site {
            dir: dir.to_path_buf(),
            cgi_ms,
            exe,
            tls,
        })
    }

    /// rescon-httpd's configuration: classes by source address (127.0.0.2 is the
    /// high-priority class), the main vhost with a CGI class capped at 30% of a CPU, and vhosts
    /// a.test, b.test, c.test with fixed shares 50/30/20 of what the sites get, CGI included.
    pub fn rescon_config(&self) -> String {
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
        format!(
            r#"# Written by rescon-bench paper.
[server]
enforcement = "auto"
access_log = "off"

[timeouts]
cgi = "120s"

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
        )
    }

    fn nginx_config(&self, port: u16, tls_port: u16) -> String {
        let d = self.dir.display();
        let tls = if self.tls {
            format!(
                "    server {{\n        listen 127.0.0.1:{tls_port} ssl http2 backlog=4096;\n        root {d}/htdocs;\n        ssl_certificate {d}/tls.pem;\n        ssl_certificate_key {d}/tls.key;\n        ssl_session_cache shared:SSL:10m;\n        ssl_session_tickets on;\n        http2_max_concurrent_streams 128;\n    }}\n"
            )
        } else {
            String::new()
        };
        format!(
            r#"# Written by rescon-bench paper: one worker, access log off, sendfile and an open-file
# cache (nginx at its best on a 1 KB file).
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=1000;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
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
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.pid as i32).expect("a child's pid"),
            rustix::process::Signal::TERM,
        );
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
        Kind::Rescon | Kind::ResconOff => {
            let conf = site.dir.join("rescon-httpd.toml");
            std::fs::write(&conf, site.rescon_config())?;
            let _ = std::fs::remove_file(site.dir.join("admin.sock"));
            let mut cmd = Command::new(exe);
            cmd.arg("httpd")
                .arg("--config")
                .arg(&conf)
                .args(["--workers", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if kind == Kind::ResconOff {
                cmd.arg("--no-containers");
            }
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
            cmd.arg("hyper-baseline")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            if site.tls {
                cmd.arg("--cert")
                    .arg(site.dir.join("tls.pem"))
                    .arg("--key")
                    .arg(site.dir.join("tls.key"));
            }
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

    /// A container's subtree CPU (runtime-charged plus kernel-reported), nanoseconds.
    pub fn subtree_cpu_ns(&self, path: &str) -> Result<u64> {
        let v = self.container(path)?;
        let u = &v["usage_subtree"];
        Ok(u["cpu_ns"].as_u64().unwrap_or(0) + u["kernel_cpu_ns"].as_u64().unwrap_or(0))
    }

    /// CPU time of the server's child processes so far, nanoseconds: the reaped ones from
    /// the server's `cutime + cstime` (one sum, rounded once to a tick) and the live ones from
    /// their `schedstat` (exact). Per-process `utime + stime` would not do: each is rounded
    /// to a 10 ms tick, which over 16 processes is 8% of a 2 s window.
    pub fn children_cpu_ns(&self) -> Result<u64> {
        let tick_ns = 1e9 / clock_ticks() as f64;
        let me = proc_stat(self.pid)?;
        let mut ns = ((me.cutime + me.cstime) as f64 * tick_ns) as u64;
        for e in std::fs::read_dir("/proc")? {
            let Ok(e) = e else { continue };
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(st) = proc_stat(pid)
                && st.ppid == self.pid
                && let Some((run_ns, _)) = crate::schedstat(&format!("/proc/{pid}/schedstat"))
            {
                ns += run_ns + ((st.cutime + st.cstime) as f64 * tick_ns) as u64;
            }
        }
        Ok(ns)
    }
}

struct ProcStat {
    ppid: u32,
    cutime: u64,
    cstime: u64,
}

fn proc_stat(pid: u32) -> Result<ProcStat> {
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
/// or HTTP/1.1 by ALPN.
pub fn hyper_baseline(tls: Option<(PathBuf, PathBuf)>) -> Result<()> {
    use hyper::body::Bytes;
    static BODY: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let body = BODY.get_or_init(|| Bytes::from(vec![b'x'; 1024])).clone();
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
            let body = body.clone();
            hyper::service::service_fn(move |_req| {
                let body = body.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(body),
                    ))
                }
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
                            let _ = hyper::server::conn::http1::Builder::new()
                                .timer(hyper_util::rt::TokioTimer::new())
                                .serve_connection(io, svc)
                                .await;
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
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
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
