//! Handles held by other processes: inherited across exec, passed to an unrelated process over
//! a Unix socket, and held by a process that dies. The other process is this test binary run
//! again as the ignored test `child`, in the role its environment names.

mod common;

use common::{ROLE, owner, reported, run_as, value, wait_until};
use rescon::{Attributes, Registry};
use rescon_handle::{Charge, ErrorKind, Handle, pass};
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};

/// The other process. Does nothing unless run by a test with `HANDLE_TEST_ROLE` set.
#[test]
#[ignore = "run as a child process by the other tests of this file"]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "inherited" => inherited(),
        "unrelated" => unrelated(),
        "dies" => dies(),
        "none" => {
            assert!(Handle::from_env().unwrap().is_none());
            println!("report none=ok");
        }
        r => panic!("unknown role {r}"),
    }
}

fn inherited() {
    let h = Handle::from_env()
        .unwrap()
        .expect("a handle in RESCON_HANDLE");
    // Close-on-exec again once taken: a program this one starts does not get it unless passed.
    let flags = rustix::io::fcntl_getfd(h.as_fd()).unwrap();
    assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    let fd = h.as_fd().as_raw_fd();
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", &format!("readlink /proc/$$/fd/{fd} || true")])
        .output()
        .unwrap();
    println!(
        "report grandchild_sees_socket={}",
        String::from_utf8_lossy(&out.stdout).contains("socket:")
    );
    // A second take is refused: the descriptor has one owner.
    assert_eq!(Handle::from_env().unwrap_err().kind(), ErrorKind::Protocol);

    h.charge(Charge {
        requests: 3,
        bytes_out: 100,
        ..Default::default()
    })
    .unwrap();
    h.meter().unwrap().add_cpu_ns(1_000);
    let info = h.info().unwrap();
    println!("report id={}", info.id);
    println!("report name={}", info.name);
    println!("report requests_seen={}", info.usage.requests);
    // A child for a part of the work, charged, then closed: released into this container.
    let part = h.create_child("part", &[("cpu_limit", "10%")]).unwrap();
    part.charge(Charge {
        requests: 1,
        ..Default::default()
    })
    .unwrap();
    println!(
        "report part_parent={}",
        part.info().unwrap().parent.unwrap()
    );
}

fn unrelated() {
    let path = std::env::var("HANDLE_TEST_SOCKET").unwrap();
    let sock = UnixStream::connect(path).unwrap();
    let h = Handle::recv_from(&sock).unwrap();
    h.charge(Charge {
        requests: 5,
        ..Default::default()
    })
    .unwrap();
    let info = h.info().unwrap();
    println!("report name={}", info.name);
    println!("report requests_seen={}", info.usage.requests);
}

fn dies() {
    let h = Handle::from_env().unwrap().unwrap();
    h.charge(Charge {
        requests: 7,
        ..Default::default()
    })
    .unwrap();
    h.meter().unwrap().add_bytes_in(4096);
    println!("report ready=1");
    // Killed here by the test.
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn inherited_across_exec() {
    let (owner, _server) = owner();
    let registry = Registry::new();
    let cgi = registry
        .root()
        .create_child("cgi", Attributes::default())
        .unwrap();
    let request = cgi
        .create_child("request-1", Attributes::default())
        .unwrap();
    let fd = owner.issue(&request).unwrap();

    let mut cmd = run_as("inherited");
    pass::inherit(&mut cmd, fd.as_fd());
    let out = cmd.output().unwrap();
    drop(fd);
    assert!(out.status.success(), "child failed: {out:?}");
    let r = reported(&out.stdout);
    assert_eq!(value(&r, "id"), request.id().to_string());
    assert_eq!(value(&r, "name"), "request-1");
    // The holder reads its own charge back: charges are counted before a call is answered.
    assert_eq!(value(&r, "requests_seen"), "3");
    assert_eq!(value(&r, "part_parent"), request.id().to_string());
    assert_eq!(value(&r, "grandchild_sees_socket"), "false");

    // The child exited: every copy of the handle is closed, and the owner lets go.
    wait_until("the release", || owner.stats().handles == 0);
    let u = request.usage();
    assert_eq!((u.requests, u.bytes_out, u.cpu_ns), (3, 100, 1_000));
    // The part was released into the request, its charge kept.
    assert_eq!(request.usage_subtree().requests, 4);
    wait_until("the part's release", || request.children().is_empty());
    assert_eq!(request.usage_subtree().requests, 4);
}

#[test]
fn a_program_started_without_it_has_no_handle() {
    let (owner, _server) = owner();
    let registry = Registry::new();
    let c = registry
        .root()
        .create_child("c", Attributes::default())
        .unwrap();
    let fd = owner.issue(&c).unwrap();
    // The descriptor is close-on-exec: a program spawned without `inherit` does not get it.
    let out = run_as("none").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(value(&reported(&out.stdout), "none"), "ok");
    drop(fd);
}

#[test]
fn passed_to_an_unrelated_process() {
    let (owner, _server) = owner();
    let registry = Registry::new();
    let vhost = registry
        .root()
        .create_child("vhost", Attributes::default())
        .unwrap();
    let fd = owner.issue(&vhost).unwrap();

    // The other process inherits nothing: it connects to a socket by path.
    let dir = std::env::temp_dir().join(format!("rescon-handle-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pass.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let proc = run_as("unrelated")
        .env("HANDLE_TEST_SOCKET", &path)
        .spawn()
        .unwrap();
    let (conn, _) = listener.accept().unwrap();
    pass::send_fd(conn.as_fd(), fd.as_fd()).unwrap();
    drop(fd);
    let out = proc.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{out:?}");
    let r = reported(&out.stdout);
    assert_eq!(value(&r, "name"), "vhost");
    assert_eq!(value(&r, "requests_seen"), "5");
    wait_until("the release", || owner.stats().handles == 0);
    assert_eq!(vhost.usage().requests, 5);
}

#[test]
fn a_process_that_dies_holding_a_handle() {
    let (owner, _server) = owner();
    let registry = Registry::new();
    let cgi = registry
        .root()
        .create_child("cgi", Attributes::default())
        .unwrap();
    // The handle is the only reference to the request's container.
    let fd = {
        let request = cgi.create_child("doomed", Attributes::default()).unwrap();
        owner.issue(&request).unwrap()
    };
    let mut cmd = run_as("dies");
    pass::inherit(&mut cmd, fd.as_fd());
    let mut proc = cmd.spawn().unwrap();
    drop(fd);
    // Its output is read until it says it holds its charges (the harness prints first).
    let mut out = BufReader::new(proc.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("ready=1") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child ended early"
        );
    }
    proc.kill().unwrap();
    proc.wait().unwrap();

    wait_until("the release", || owner.stats().handles == 0);
    // The container is gone; what it was charged (message and page) is in its parent.
    wait_until("the container's release", || cgi.children().is_empty());
    let u = cgi.usage_subtree();
    assert_eq!((u.requests, u.bytes_in), (7, 4096));
    assert_eq!(owner.stats().released, 1);
}

#[test]
fn a_handle_rides_on_another_protocol_and_an_unaware_peer_releases_it() {
    let (owner, _server) = owner();
    let registry = Registry::new();
    let pool = registry
        .root()
        .create_child("fastcgi", Attributes::default())
        .unwrap();
    let record = b"\x01\x01\x00\x01\x00\x08\x00\x00begin-request";
    // A rescon-aware peer reads the record and the handle that came with it.
    let (server_end, app_end) = UnixStream::pair().unwrap();
    {
        let request = pool
            .create_child("request-1", Attributes::default())
            .unwrap();
        let fd = owner.issue(&request).unwrap();
        pass::send_with(server_end.as_fd(), record, fd.as_fd()).unwrap();
    }
    let mut buf = [0u8; 64];
    let (n, fd) = pass::recv_with(app_end.as_fd(), &mut buf).unwrap().unwrap();
    assert_eq!(&buf[..n], record);
    let h = Handle::from_fd(fd.expect("the handle came with the record")).unwrap();
    h.charge(Charge {
        requests: 1,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(h.info().unwrap().name, "request-1");
    drop(h);
    // An unaware peer reads the bytes with read(2): the kernel closes the descriptor.
    {
        let request = pool
            .create_child("request-2", Attributes::default())
            .unwrap();
        let fd = owner.issue(&request).unwrap();
        pass::send_with(server_end.as_fd(), record, fd.as_fd()).unwrap();
    }
    let mut plain = [0u8; 64];
    let n = std::io::Read::read(&mut &app_end, &mut plain).unwrap();
    assert_eq!(&plain[..n], record);
    wait_until("both releases", || owner.stats().handles == 0);
    wait_until("both containers' releases", || pool.children().is_empty());
    assert_eq!(pool.usage_subtree().requests, 1);
}
