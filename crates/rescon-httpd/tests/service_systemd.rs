//! rescon-httpd as systemd runs it: its listening socket passed the way systemd passes it
//! (descriptor 3 with `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, `SO_REUSEPORT` set as
//! `ReusePort=yes` does), notifications on a test `NOTIFY_SOCKET` (READY, WATCHDOG,
//! RELOADING, STOPPING), the switch to `[server] user` (a CGI script prints its `id -u`), and
//! the open-file limit raised from a soft 1,024.
//!
//! The passing is done by a harness (a shell that exports `LISTEN_PID=$$` and execs the
//! server with the socket as descriptor 3), which is exactly what `systemd-socket-activate`
//! and systemd do; the harness also sets `SO_REUSEPORT`, which `systemd-socket-activate`
//! cannot, so the listener group adopts the socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn require_root(what: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("RESCON_REQUIRE_KERNEL").is_none_or(|v| v != "1"),
        "RESCON_REQUIRE_KERNEL=1 but not root ({what} needs it)"
    );
    eprintln!("skipped: {what} needs root");
    false
}

/// The child, stopped if still running, and the cgroups it could not remove after giving up
/// root (`rescon-PID-*` in every hierarchy) removed, also when the test fails.
struct Guard {
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let pid = self.child.id();
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        remove_cgroups_of(pid);
    }
}

/// Removes, depth first, every cgroup named `rescon-PID-...` under the cgroup mounts.
fn remove_cgroups_of(pid: u32) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("rescon-{pid}-");
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if !f.get(dash + 1).is_some_and(|t| t.starts_with("cgroup")) {
            continue;
        }
        let mut stack = vec![(std::path::PathBuf::from(f[4]), 0)];
        while let Some((d, depth)) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if !p.is_dir() {
                    continue;
                }
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    rmdir_tree(&p);
                } else if depth < 3 {
                    stack.push((p, depth + 1));
                }
            }
        }
    }
}

fn rmdir_tree(d: &Path) {
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            rmdir_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(d);
}

fn get(addr: SocketAddr, path: &str) -> String {
    get_host(addr, "localhost", path)
}

fn get_host(addr: SocketAddr, host: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Notifications received until one contains `want` (or the time is up).
fn wait_for(rx: &UnixDatagram, want: &str, seen: &mut Vec<String>, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        if let Ok(n) = rx.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = m.contains(want);
            seen.push(m);
            if done {
                return;
            }
        }
    }
    panic!(
        "no {want:?} within 15 s; received {seen:?}; the server said:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn proc_field(pid: u32, file: &str, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/{file}"))
        .to_string()
}

#[test]
fn socket_activated_notifying_server_drops_to_its_user() {
    if !require_root("switching users and making cgroups") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // nobody must reach the site and the scripts.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(d.join("htdocs")).unwrap();
    std::fs::write(d.join("htdocs/index.html"), "hello\n").unwrap();
    std::fs::create_dir_all(d.join("cgi-bin")).unwrap();
    let script = d.join("cgi-bin/id.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"uid=$(id -u) gid=$(id -g)\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["htdocs", "cgi-bin"] {
        std::fs::set_permissions(d.join(sub), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let config = d.join("httpd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
user = "nobody"
access_log = {log:?}
[admin]
socket = {sock:?}
[containers.clients.local]
max_connections = 3000
[containers.clients.premium]
max_connections = 10
[containers.cgi]
enforcement = "kernel"
[[listener]]
name = "web"
address = "127.0.0.1"
port = 1
[[listener.class]]
name = "premium"
container = "clients/premium"
prefixes = ["127.0.0.2/32"]
[[listener.class]]
name = "local"
container = "clients/local"
except = []
[[vhost]]
name = "site"
root = "htdocs"
container = "clients"
[[vhost.cgi]]
prefix = "/cgi-bin/"
dir = "cgi-bin"
container = "cgi"
"#,
            log = d.join("access.log").display().to_string(),
            sock = d.join("admin.sock").display().to_string(),
        ),
    )
    .unwrap();

    // The socket as systemd makes it with ReusePort=yes: bound, listening, SO_REUSEPORT.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(128).unwrap();
    let listener: TcpListener = s.into();
    let addr = listener.local_addr().unwrap();
    let notify_path = d.join("notify");
    let rx = UnixDatagram::bind(&notify_path).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_rescon-httpd"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "300000")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(d.join("stderr.log")).unwrap(),
        ));
    // SAFETY: between fork and exec only async-signal-safe calls: dup2 (which clears
    // close-on-exec on descriptor 3; fcntl clears it when the socket is descriptor 3 already) and setrlimit (a soft limit of 1,024 under a hard one of
    // 20,000, as systemd's default LimitNOFILE=1024:524288 is).
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let lim = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 20_000,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut guard = Guard {
        child: cmd.spawn().unwrap(),
    };
    drop(listener);
    let pid = guard.child.id();
    let mut seen = Vec::new();
    wait_for(&rx, "READY=1", &mut seen, &d.join("stderr.log"));
    let stderr = || std::fs::read_to_string(d.join("stderr.log")).unwrap_or_default();

    // Served on the passed socket, by the listener group that adopted it.
    let r = get(addr, "/index.html");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("hello\n"),
        "{r}"
    );
    assert!(
        !stderr().contains("no per-class sockets"),
        "the group adopted the socket: {}",
        stderr()
    );
    // The process and its CGI scripts run as nobody.
    let nobody = "65534";
    assert!(
        proc_field(pid, "status", "Uid:").contains(&format!("\t{nobody}\t{nobody}\t{nobody}")),
        "{}",
        proc_field(pid, "status", "Uid:")
    );
    let r = get(addr, "/cgi-bin/id.sh");
    assert!(r.contains(&format!("uid={nobody} ")), "{r}\n{}", stderr());
    // The open-file limit was raised from 1,024 to the hard limit (the configuration needs
    // 3,000 + 10 connections and more, below 20,000).
    let limits = proc_field(pid, "limits", "Max open files");
    let v: Vec<&str> = limits.split_whitespace().collect();
    assert_eq!((v[3], v[4]), ("20000", "20000"), "{limits}");

    wait_for(&rx, "WATCHDOG=1", &mut seen, &d.join("stderr.log"));
    Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    wait_for(&rx, "RELOADING=1", &mut seen, &d.join("stderr.log"));
    let reloading = seen.last().unwrap().clone();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    wait_for(&rx, "READY=1", &mut seen, &d.join("stderr.log"));
    assert!(seen.last().unwrap().contains("STATUS=reloaded"), "{seen:?}");
    Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status()
        .unwrap();
    wait_for(&rx, "STOPPING=1", &mut seen, &d.join("stderr.log"));
    let t = Instant::now();
    let status = loop {
        if let Some(s) = guard.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no exit after SIGQUIT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}\n{}", stderr());
    assert!(stderr().contains("running as nobody"), "{}", stderr());
}

#[test]
fn an_unknown_user_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("httpd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nuser = \"no-such-user-rescon\"\n[admin]\nsocket = {:?}\n",
            dir.path().join("admin.sock").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rescon-httpd"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-user-rescon") && err.contains("no such user"),
        "{err}"
    );
}

/// The socket passed by systemd's own tool, `systemd-socket-activate`, in the mode systemd
/// uses for a service socket (`Accept=no`, the tool's default): the tool binds and listens,
/// waits for the first connection, then execs the server with the listening socket as
/// descriptor 3 (`LISTEN_PID` its own pid, `LISTEN_FDS=1`, `LISTEN_FDNAMES` from
/// `--fdname`). The first connection, made before the server exists, is served from the
/// socket's queue, and the server never binds the configured port (1) itself. The tool cannot
/// set `SO_REUSEPORT`, so the listener serves the socket as one socket, classes chosen after
/// accept.
#[test]
fn served_on_the_socket_systemd_socket_activate_passes() {
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("RESCON_REQUIRE_KERNEL").is_none_or(|v| v != "1"),
            "RESCON_REQUIRE_KERNEL=1 but systemd-socket-activate is missing (apt-get install systemd)"
        );
        eprintln!("skipped: no systemd-socket-activate");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("htdocs")).unwrap();
    std::fs::write(d.join("htdocs/index.html"), "activated\n").unwrap();
    let config = d.join("httpd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
enforcement = "user"
access_log = "off"
[admin]
socket = {sock:?}
[containers.site]
[[listener]]
name = "web"
address = "127.0.0.1"
port = 1
[[vhost]]
name = "site"
root = {root:?}
container = "site"
"#,
            sock = d.join("admin.sock").display().to_string(),
            root = d.join("htdocs").display().to_string(),
        ),
    )
    .unwrap();
    let err = d.join("stderr.log");
    let log = || std::fs::read_to_string(&err).unwrap_or_default();
    // A free port, let go for the tool to bind; if another process takes it in between, the
    // tool fails to bind and the whole start is tried again on another port.
    let mut attempt = 0;
    let (mut guard, addr, mut first) = loop {
        attempt += 1;
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new("systemd-socket-activate")
            .arg(format!("--listen={addr}"))
            .arg("--fdname=web")
            .arg(env!("CARGO_BIN_EXE_rescon-httpd"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
            .spawn()
            .unwrap();
        let mut guard = Guard { child };
        // The tool listens before it execs anything: the first connection completes in
        // the kernel and waits in the queue.
        let t = Instant::now();
        let first = loop {
            if let Ok(s) = TcpStream::connect(addr) {
                break Some(s);
            }
            if guard.child.try_wait().unwrap().is_some() || t.elapsed() > Duration::from_secs(15) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match first {
            Some(s) => break (guard, addr, s),
            None => assert!(attempt < 3, "the tool never listened: {}", log()),
        }
    };
    assert!(
        !log().contains("listening on"),
        "the server starts only on the first connection: {}",
        log()
    );
    // That connection is the server's first request.
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        first,
        "GET /index.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    first.read_to_string(&mut r).unwrap();
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("activated\n"),
        "{r}\n{}",
        log()
    );
    // The tool exec'd the server in its own process.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", guard.child.id())).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("rescon-httpd"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    let said = log();
    assert!(
        said.contains("sockets passed by the service manager")
            && said.contains(&format!("listening on {addr}")),
        "the passed socket, not port 1: {said}"
    );
    assert!(!said.contains("binding 127.0.0.1:1"), "{said}");
    // And the following connections.
    let r = get(addr, "/index.html");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // A graceful stop.
    Command::new("kill")
        .args(["-QUIT", &guard.child.id().to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = guard.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no exit after SIGQUIT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}\n{}", log());
}

/// Every cgroup hierarchy's mount point, the unified (v2) one marked `true`.
fn cgroup_mounts() -> Vec<(std::path::PathBuf, bool)> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        match f.get(dash + 1) {
            Some(&"cgroup2") => out.push((std::path::PathBuf::from(f[4]), true)),
            Some(&"cgroup") => out.push((std::path::PathBuf::from(f[4]), false)),
            _ => {}
        }
    }
    out
}

/// A unit's cgroup as systemd makes it for a service with `Delegate=yes`: a directory of the
/// same name in every hierarchy, removed (with what is below it) when dropped, also when the
/// test fails. `threaded` adds `NAME/threaded`, a threaded child (which makes `NAME` a
/// threaded domain), in the v2 hierarchy and a plain one in the others.
struct UnitCgroup {
    name: String,
    dirs: Vec<std::path::PathBuf>,
    v2: std::path::PathBuf,
}

impl UnitCgroup {
    fn make(tag: &str, threaded: bool) -> Option<UnitCgroup> {
        let name = format!("rescon-svc-{tag}-{}", std::process::id());
        let mounts = cgroup_mounts();
        let v2 = mounts.iter().find(|(_, v2)| *v2)?.0.join(&name);
        let mut unit = UnitCgroup {
            name,
            dirs: Vec::new(),
            v2,
        };
        for (m, is_v2) in mounts {
            let d = m.join(&unit.name);
            std::fs::create_dir(&d).unwrap();
            unit.dirs.push(d.clone());
            if threaded {
                std::fs::create_dir(d.join("threaded")).unwrap();
                unit.dirs.push(d.join("threaded"));
                if is_v2 {
                    std::fs::write(d.join("threaded/cgroup.type"), "threaded").unwrap();
                }
            }
        }
        Some(unit)
    }
}

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            rmdir_tree(d);
        }
    }
}

/// The `0::` line of `/proc/PID/cgroup`: the process's cgroup in the unified hierarchy.
fn v2_cgroup_of(pid: u32) -> String {
    proc_field(pid, "cgroup", "0::")
        .trim_start_matches("0::")
        .to_string()
}

fn require_v2(what: &str) -> Option<UnitCgroup> {
    if !require_root(what) {
        return None;
    }
    let unit = UnitCgroup::make(what.split(' ').next().unwrap_or("t"), false);
    if unit.is_none() {
        assert!(
            std::env::var_os("RESCON_REQUIRE_KERNEL").is_none_or(|v| v != "1"),
            "RESCON_REQUIRE_KERNEL=1 but no cgroup2 hierarchy is mounted"
        );
        eprintln!("skipped: no cgroup2 hierarchy");
    }
    unit
}

/// Starts the server as systemd starts a unit's main process: inside the unit's v2 cgroup
/// (its pid written to `cgroup.procs` between fork and exec).
fn start_in_unit(unit: &std::path::Path, config: &std::path::Path, err: &std::path::Path) -> Guard {
    let procs = std::ffi::CString::new(
        unit.join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rescon-httpd"));
    cmd.arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(err).unwrap()));
    // SAFETY: between fork and exec only async-signal-safe calls (open, write, close) on
    // memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Guard {
        child: cmd.spawn().unwrap(),
    }
}

/// The server's configuration for the cgroup tests: `[server] user = "nobody"`, CGI in a
/// kernel-enforced container, `server_extra` added to `[server]`.
fn cgroup_test_config(d: &std::path::Path, server_extra: &str) -> std::path::PathBuf {
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["htdocs", "cgi-bin"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
        std::fs::set_permissions(d.join(sub), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = d.join("cgi-bin/where.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"uid=$(id -u)\"\ngrep '^0::' /proc/self/cgroup\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = d.join("httpd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
user = "nobody"
access_log = "off"
{server_extra}
[admin]
socket = {sock:?}
[containers.cgi]
enforcement = "kernel"
[containers.site]
[[listener]]
name = "web"
address = "127.0.0.1"
port = 0
[[vhost]]
name = "site"
root = "htdocs"
container = "site"
[[vhost.cgi]]
prefix = "/cgi-bin/"
dir = "cgi-bin"
container = "cgi"
"#,
            sock = d.join("admin.sock").display().to_string(),
        ),
    )
    .unwrap();
    config
}

/// Delegation on the cgroup v2 hierarchy, for real: started inside a unit's cgroup (as
/// systemd does with `Delegate=yes`), the server makes its subtree there, moves itself into
/// the subtree's leaf (`.../rescon-PID-.../self`), so that the unit's cgroup holds no process
/// and controllers could be enabled for its children, hands the subtree to `[server] user`,
/// and runs CGI scripts as that user in the CGI container's own cgroup beside the leaf.
///
/// (This machine's v2 hierarchy has no controllers, all being bound to v1, so enabling
/// them is not exercised here: see the manager's emulated tests.)
#[test]
fn in_a_delegated_v2_cgroup_the_server_moves_into_a_leaf_and_hands_the_subtree_over() {
    let Some(unit) = require_v2("delegate the unit's cgroup") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = cgroup_test_config(d, "");
    let err = d.join("stderr.log");
    let mut guard = start_in_unit(&unit.v2, &config, &err);
    let log = || std::fs::read_to_string(&err).unwrap_or_default();
    let t = Instant::now();
    let addr: SocketAddr = loop {
        let l = log();
        if let Some(i) = l.find("listening on ") {
            let rest = &l[i + "listening on ".len()..];
            break rest
                .split(|c: char| c.is_whitespace() || c == '"')
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
        assert!(guard.child.try_wait().unwrap().is_none(), "exited: {}", l);
        assert!(t.elapsed() < Duration::from_secs(20), "not listening: {l}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let pid = guard.child.id();
    // The server sits in its subtree's leaf, below the unit's cgroup.
    let own = v2_cgroup_of(pid);
    let prefix = format!("/{}/rescon-{pid}-", unit.name);
    assert!(
        own.starts_with(&prefix) && own.ends_with("/self"),
        "{own}\n{}",
        log()
    );
    // The unit's cgroup holds no process: the kernel would let it enable domain controllers.
    let procs = std::fs::read_to_string(unit.v2.join("cgroup.procs")).unwrap();
    assert!(
        procs.trim().is_empty(),
        "left in the unit's cgroup: {procs}"
    );
    // The subtree is the user's.
    let subtree = unit.v2.join(
        own.trim_start_matches(&format!("/{}/", unit.name))
            .trim_end_matches("/self"),
    );
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&subtree).unwrap());
    assert_eq!(uid, 65534, "{}", subtree.display());
    // A CGI script runs as the user, in the CGI container's cgroup of the subtree.
    let r = get(addr, "/cgi-bin/where.sh");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}\n{}", log());
    assert!(r.contains("uid=65534"), "{r}");
    let script_cgroup = r
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("{r}"));
    let subtree_rel = own.trim_end_matches("/self");
    // (`<subtree>/c5-cgi/c12-cgi-0/self`: the run's container below the CGI class's.)
    assert!(
        script_cgroup.starts_with(&format!("{subtree_rel}/"))
            && script_cgroup != own
            && script_cgroup.contains("-cgi/"),
        "the script's cgroup {script_cgroup} is not the CGI container's in {subtree_rel}"
    );
    // Stops gracefully, as the user.
    Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = guard.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no exit after SIGQUIT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}\n{}", log());
    drop(guard);
    drop(unit);
}

/// When the server cannot take its place in the v2 hierarchy, the start stops with an error
/// naming the file written, the value, and what the operator can do. Produced for real: a
/// `cgroup_parent` inside a threaded subtree, where the kernel refuses a process in a cgroup
/// of the default (domain) mode (EOPNOTSUPP). Then the remedy it names, for real:
/// `cgroup_v2_mode = "threaded"` under the same parent starts, and serves CGI.
///
/// (The other refusal the message covers, EBUSY when enabling controllers in a cgroup that
/// holds processes, needs v2 controllers, which this machine binds to v1: it is checked on
/// the manager's emulated cgroupfs only.)
#[test]
fn a_cgroup_the_server_cannot_enter_stops_the_start_with_file_value_and_remedy() {
    if !require_root("threaded cgroups") {
        return;
    }
    let Some(unit) = UnitCgroup::make("threaded", true) else {
        assert!(
            std::env::var_os("RESCON_REQUIRE_KERNEL").is_none_or(|v| v != "1"),
            "RESCON_REQUIRE_KERNEL=1 but no cgroup2 hierarchy is mounted"
        );
        eprintln!("skipped: no cgroup2 hierarchy");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = cgroup_test_config(
        d,
        &format!(
            "enforcement = \"kernel\"\ncgroup_parent = \"/{}/threaded\"",
            unit.name
        ),
    );
    let err = d.join("stderr.log");
    let mut guard = start_in_unit(&unit.v2, &config, &err);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = guard.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the server did not stop: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(!status.success(), "{said}");
    eprintln!("the server said: {said}");
    let file = format!(
        "{}/threaded/rescon-{}-",
        unit.v2.display(),
        guard.child.id()
    );
    assert!(
        said.contains(&file) && said.contains("/self/cgroup.procs"),
        "the file: {said}"
    );
    assert!(
        said.contains(&format!("(value \"{}\")", guard.child.id())),
        "the value: {said}"
    );
    assert!(
        said.contains("cgroup_v2_mode = \"threaded\"") && said.contains("cgroup_parent"),
        "the remedy: {said}"
    );
    // Nothing is left behind below the parent (looked at before the guard cleans up).
    for parent in &unit.dirs {
        let left: Vec<_> = std::fs::read_dir(parent)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir() && e.file_name() != "threaded")
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    drop(guard);

    // The remedy works: the same parent with the subtree typed threaded.
    let config = cgroup_test_config(
        d,
        &format!(
            "enforcement = \"kernel\"\ncgroup_parent = \"/{}/threaded\"\ncgroup_v2_mode = \"threaded\"",
            unit.name
        ),
    );
    let mut guard = start_in_unit(&unit.v2, &config, &err);
    let addr = listening_addr(&mut guard, &err);
    let own = v2_cgroup_of(guard.child.id());
    assert!(
        own.starts_with(&format!(
            "/{}/threaded/rescon-{}-",
            unit.name,
            guard.child.id()
        )) && own.ends_with("/self"),
        "{own}"
    );
    let r = get(addr, "/cgi-bin/where.sh");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("uid=65534"),
        "{r}"
    );
    drop(guard);
    drop(unit);
}

/// Waits for `listening on ADDR` in the server's standard error (a file).
fn listening_addr(guard: &mut Guard, err: &std::path::Path) -> SocketAddr {
    let t = Instant::now();
    loop {
        let l = std::fs::read_to_string(err).unwrap_or_default();
        if let Some(i) = l.find("listening on ") {
            return l[i + "listening on ".len()..]
                .split(|c: char| c.is_whitespace() || c == '"')
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
        assert!(guard.child.try_wait().unwrap().is_none(), "exited: {l}");
        assert!(t.elapsed() < Duration::from_secs(20), "not listening: {l}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two vhosts over one CGI directory, `a.test` with `user` (and `server_extra` in
/// `[server]`), `b.test` without.
fn vhost_user_config(d: &std::path::Path, server_extra: &str, a_user: &str) -> std::path::PathBuf {
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["htdocs", "cgi-bin"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
        std::fs::set_permissions(d.join(sub), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = d.join("cgi-bin/id.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"ids=$(id -u):$(id -g):$(id -G)\"\ngrep '^0::' /proc/self/cgroup\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = d.join("httpd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
access_log = "off"
{server_extra}
[admin]
socket = {sock:?}
[containers.cgi]
enforcement = "kernel"
[containers.site]
[[listener]]
name = "web"
address = "127.0.0.1"
port = 0
[[vhost]]
name = "a"
hosts = ["a.test"]
root = "htdocs"
container = "site"
user = "{a_user}"
[[vhost.cgi]]
prefix = "/cgi-bin/"
dir = "cgi-bin"
container = "cgi"
[[vhost]]
name = "b"
hosts = ["b.test"]
root = "htdocs"
container = "site"
default = true
[[vhost.cgi]]
prefix = "/cgi-bin/"
dir = "cgi-bin"
container = "cgi"
"#,
            sock = d.join("admin.sock").display().to_string(),
        ),
    )
    .unwrap();
    config
}

/// `[[vhost]] user`: that vhost's CGI scripts run as its user (their `id -u`, `id -g` and
/// `id -G`: no supplementary group of the server's), the other vhost's as the server (root,
/// which it stays for this). Both ways a script is started: cloned into its cgroup (kernel
/// enforcement) and plainly (user-level containers).
#[test]
fn a_vhosts_cgi_scripts_run_as_its_user() {
    if !require_root("switching users") {
        return;
    }
    for enforcement in ["kernel", "user"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let config = vhost_user_config(d, &format!("enforcement = \"{enforcement}\""), "nobody");
        let err = d.join("stderr.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rescon-httpd"));
        cmd.arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&err).unwrap()));
        let mut guard = Guard {
            child: cmd.spawn().unwrap(),
        };
        let addr = listening_addr(&mut guard, &err);
        let said = || std::fs::read_to_string(&err).unwrap_or_default();
        let a = get_host(addr, "a.test", "/cgi-bin/id.sh");
        assert!(
            a.starts_with("HTTP/1.1 200") && a.contains("ids=65534:65534:65534\n"),
            "{enforcement}: {a}\n{}",
            said()
        );
        let b = get_host(addr, "b.test", "/cgi-bin/id.sh");
        assert!(
            b.starts_with("HTTP/1.1 200") && b.contains("ids=0:0:"),
            "{enforcement}: {b}"
        );
        if enforcement == "kernel" {
            // Cloned into its cgroup, then switched.
            let pid = guard.child.id();
            assert!(a.contains(&format!("/rescon-{pid}-")), "{a}");
        }
        assert_eq!(
            proc_field(guard.child.id(), "status", "Uid:")
                .split_whitespace()
                .nth(1),
            Some("0"),
            "the server keeps root"
        );
    }
}

/// With `[server] user`, the server gives up root, so a vhost with another user is refused at
/// start, naming both and what to change; an unknown vhost user is named too.
#[test]
fn a_vhost_user_the_server_cannot_switch_to_stops_the_start() {
    if !require_root("switching users") {
        return;
    }
    for (server_extra, user, want) in [
        (
            "enforcement = \"user\"\nuser = \"nobody\"",
            "daemon",
            [
                "vhost \"a\": user = \"daemon\"",
                "[server] user = \"nobody\"",
                "Remove [server] user",
            ],
        ),
        (
            "enforcement = \"user\"",
            "no-such-user-rescon",
            [
                "vhost \"a\": user = \"no-such-user-rescon\"",
                "no such user",
                "useradd",
            ],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = vhost_user_config(dir.path(), server_extra, user);
        let out = Command::new(env!("CARGO_BIN_EXE_rescon-httpd"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{said}");
        for w in want {
            assert!(said.contains(w), "{w:?} not in: {said}");
        }
    }
}
