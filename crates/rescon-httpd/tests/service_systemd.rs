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
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
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
