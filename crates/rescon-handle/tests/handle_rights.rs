//! What a handle may and may not do, checked by its owner; release on the last close with the
//! usage kept; malformed traffic refused. The holder is in this process here (the owner's
//! checks are the same whoever sends the bytes): see `handle_processes.rs` for other processes.

mod common;

use common::{owner, wait_until};
use rescon::{Attributes, Registry};
use rescon_handle::owner::{Config, Enforcer, Owner};
use rescon_handle::{Charge, ErrorKind, Handle, wire};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

fn attrs(pairs: &[(&str, &str)]) -> Attributes {
    let mut a = Attributes::default();
    for (k, v) in pairs {
        a.set(k, v).unwrap();
    }
    a
}

#[test]
fn a_handle_cannot_raise_its_own_limits() {
    let (owner, _server) = owner();
    let registry = Registry::new();
    let cgi = registry
        .root()
        .create_child(
            "cgi",
            attrs(&[("cpu_limit", "30%"), ("max_processes", "4")]),
        )
        .unwrap();
    let h = Handle::from_fd(owner.issue(&cgi).unwrap()).unwrap();

    for raise in [
        ("cpu_limit", "50%"),
        ("cpu_limit", "none"),
        ("max_processes", "5"),
        ("priority", "101"),
        ("class", "high"),
        ("share", "weight:200"),
    ] {
        let e = h.set(&[raise]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{raise:?}: {e}");
    }
    assert_eq!(
        cgi.attrs().cpu_limit.unwrap().fraction(),
        0.3,
        "nothing changed"
    );
    // Lowering is the holder's right.
    h.set(&[("cpu_limit", "20%"), ("max_processes", "2")])
        .unwrap();
    assert_eq!(cgi.attrs().cpu_limit.unwrap().fraction(), 0.2);
    assert_eq!(cgi.attrs().limits.max_processes, Some(2));
    assert_eq!(h.attrs().unwrap(), cgi.attrs());
    // An invalid value is refused as such, not as a permission.
    assert_eq!(
        h.set(&[("cpu_limit", "lots")]).unwrap_err().kind(),
        ErrorKind::InvalidAttr
    );
    // Enforcement is the server's to set, not a holder's, even downwards.
    let e = h.set(&[("enforcement", "kernel")]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
}

#[test]
fn a_handle_cannot_reach_a_sibling_or_its_parent() {
    let (owner, _server) = owner();
    let registry = Registry::new();
    let cgi = registry
        .root()
        .create_child("cgi", Attributes::default())
        .unwrap();
    let mine = cgi.create_child("mine", Attributes::default()).unwrap();
    let sibling = cgi.create_child("sibling", Attributes::default()).unwrap();
    let h = Handle::from_fd(owner.issue(&mine).unwrap()).unwrap();

    for id in [sibling.id(), cgi.id(), registry.root().id()] {
        let e = h.info_of(id).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "info of {id}: {e}");
        let e = h.set_of(id, &[("priority", "0")]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "set on {id}: {e}");
    }
    assert_eq!(
        sibling.attrs().priority.get(),
        100,
        "the sibling is untouched"
    );
    let gone = rescon::ContainerId::from_raw(u64::MAX).unwrap();
    assert_eq!(h.info_of(gone).unwrap_err().kind(), ErrorKind::NotFound);

    // Its own children are its to change, raising included.
    let kid = h
        .create_child("kid", &[("cpu_limit", "5%"), ("priority", "10")])
        .unwrap();
    let kid_id = kid.id().unwrap();
    h.set_of(kid_id, &[("cpu_limit", "25%"), ("priority", "200")])
        .unwrap();
    let info = h.info_of(kid_id).unwrap();
    assert_eq!(info.attrs.priority.get(), 200);
    assert_eq!(info.parent, Some(mine.id()));
    // ... but the child's own handle may not raise itself back.
    assert_eq!(
        kid.set(&[("priority", "300")]).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    // A child marked for kernel enforcement by a holder is refused.
    let e = h
        .create_child("k", &[("enforcement", "kernel")])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    // A child's fixed share is checked against its siblings' as anywhere in the model.
    let _a = h.create_child("a", &[("share", "60%")]).unwrap();
    assert_eq!(
        h.create_child("b", &[("share", "60%")]).unwrap_err().kind(),
        ErrorKind::Limit
    );
}

#[test]
fn release_on_last_close_keeps_usage() {
    let (owner, _server) = owner();
    let registry = Registry::new();
    let cgi = registry
        .root()
        .create_child("cgi", Attributes::default())
        .unwrap();
    let h = Handle::from_fd(owner.issue(&cgi).unwrap()).unwrap();
    // A child whose only reference is its handle, in two copies.
    let kid = h.create_child("request", &[]).unwrap();
    let copy = kid.try_clone().unwrap();
    let live = registry.len();
    kid.charge(Charge {
        requests: 1,
        cpu_ns: 500,
        ..Default::default()
    })
    .unwrap();
    copy.meter().unwrap().add_bytes_out(1234);
    drop(kid);
    // One copy left: the container lives, and is served.
    assert_eq!(copy.usage().unwrap().requests, 1);
    assert_eq!(registry.len(), live);
    // Charges sent just before the last close count, the page's too.
    copy.charge(Charge {
        requests: 1,
        ..Default::default()
    })
    .unwrap();
    copy.meter().unwrap().add_requests(10);
    drop(copy);
    wait_until("the child's release", || registry.len() == live - 1);
    let u = cgi.usage_subtree();
    assert_eq!((u.requests, u.cpu_ns, u.bytes_out), (12, 500, 1234));
    assert_eq!(h.usage().unwrap().requests, 0, "the parent's own usage");
    assert_eq!(h.info().unwrap().usage_subtree.requests, 12);
    assert_eq!(owner.stats().handles, 1);
}

#[test]
fn a_released_owner_is_reported_as_such() {
    let registry = Registry::new();
    let c = registry
        .root()
        .create_child("c", Attributes::default())
        .unwrap();
    let (owner, server) = owner();
    let h = Handle::from_fd(owner.issue(&c).unwrap()).unwrap();
    assert_eq!(h.info().unwrap().name, "c");
    // The owner goes away: its ends close, and the holder is told.
    drop(server);
    drop(owner);
    let e = h.info().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Released, "{e}");
    let e = h
        .charge(Charge {
            requests: 1,
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Released, "{e}");
}

#[test]
fn malformed_messages_are_refused_and_serving_goes_on() {
    let (owner, _server) = owner();
    let registry = Registry::new();
    let c = registry
        .root()
        .create_child("c", Attributes::default())
        .unwrap();
    let fd = owner.issue(&c).unwrap();
    // Garbage on the handle itself, and a session that is not a socket pair.
    rustix::net::send(&fd, b"\x01\x63garbage", rustix::net::SendFlags::empty()).unwrap();
    rustix::net::send(&fd, &[0xffu8; 5000], rustix::net::SendFlags::empty()).unwrap();
    let h = Handle::from_fd(fd).unwrap();
    assert_eq!(h.info().unwrap().name, "c");
    assert!(owner.stats().malformed >= 2, "{:?}", owner.stats());
    // A call with an unknown kind on a session gets a protocol error back.
    h.charge(Charge {
        requests: 2,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(h.usage().unwrap().requests, 2);
}

#[test]
fn issuing_is_bounded() {
    let registry = Registry::new();
    let c = registry
        .root()
        .create_child("c", Attributes::default())
        .unwrap();
    let owner = Owner::new(Config {
        max_handles: 2,
        ..Config::default()
    })
    .unwrap();
    let _server = owner.spawn("bounded").unwrap();
    let h = Handle::from_fd(owner.issue(&c).unwrap()).unwrap();
    let _k = h.create_child("one", &[]).unwrap();
    assert_eq!(
        h.create_child("two", &[]).unwrap_err().kind(),
        ErrorKind::Limit
    );
    assert_eq!(owner.issue(&c).unwrap_err().kind(), ErrorKind::Limit);
}

/// Records binds instead of moving threads between cgroups.
#[derive(Debug, Default)]
struct Recorder {
    binds: Mutex<Vec<(i32, Option<i32>, rescon::ContainerId)>>,
}

impl Enforcer for Recorder {
    fn describe(&self, _: &rescon::Container) -> String {
        "recorded".into()
    }
    fn bind_thread(&self, pid: i32, tid: i32, c: &rescon::Container) -> rescon_handle::Result<()> {
        self.binds.lock().unwrap().push((pid, Some(tid), c.id()));
        Ok(())
    }
    fn bind_process(&self, pid: i32, c: &rescon::Container) -> rescon_handle::Result<()> {
        self.binds.lock().unwrap().push((pid, None, c.id()));
        Ok(())
    }
}

#[test]
fn binding_goes_through_the_enforcer_for_the_caller_only() {
    let registry = Registry::new();
    let c = registry
        .root()
        .create_child("c", Attributes::default())
        .unwrap();
    // Without an enforcer: refused as not enforced.
    let (plain, _s) = owner();
    let h = Handle::from_fd(plain.issue(&c).unwrap()).unwrap();
    assert_eq!(
        h.bind_current_thread().unwrap_err().kind(),
        ErrorKind::NotEnforced
    );
    assert!(h.info().unwrap().enforcement.contains("user-level"));

    let rec = Arc::new(Recorder::default());
    let owner = Owner::with_enforcer(Config::default(), rec.clone()).unwrap();
    let _server = owner.spawn("enforced").unwrap();
    let h = Handle::from_fd(owner.issue(&c).unwrap()).unwrap();
    h.bind_current_thread().unwrap();
    h.bind_process().unwrap();
    let me = std::process::id() as i32;
    let tid = rustix::thread::gettid().as_raw_nonzero().get();
    assert_eq!(
        *rec.binds.lock().unwrap(),
        vec![(me, Some(tid), c.id()), (me, None, c.id())]
    );
    assert_eq!(h.info().unwrap().enforcement, "recorded");

    // A thread of another process (pid 1's) is refused before the enforcer sees it: a call
    // made by hand on a session of our own, since the client only ever sends its own tid.
    let peer = rustix::net::getpeername(h.as_fd()).unwrap().unwrap();
    let peer = rustix::net::SocketAddrUnix::try_from(peer).unwrap();
    let listener = wire::listener_of(peer.abstract_name().unwrap()).unwrap();
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        None,
    )
    .unwrap();
    rustix::net::connect(
        &sock,
        &rustix::net::SocketAddrUnix::new_abstract_name(listener).unwrap(),
    )
    .unwrap();
    send_with_fd(
        &sock,
        &wire::encode_request(0, &wire::Request::OpenSession),
        h.as_fd(),
    );
    let call = wire::encode_request(9, &wire::Request::BindThread { tid: 1 });
    rustix::net::send(&sock, &call, rustix::net::SendFlags::empty()).unwrap();
    let mut buf = [0u8; 4096];
    let n = rustix::net::recv(&sock, &mut buf, rustix::net::RecvFlags::empty())
        .unwrap()
        .0;
    let (tag, reply) = wire::decode_reply(&buf[..n]).unwrap();
    assert_eq!(tag, 9);
    assert!(
        matches!(reply, wire::Reply::Error(ErrorKind::PermissionDenied, _)),
        "{reply:?}"
    );
    assert_eq!(rec.binds.lock().unwrap().len(), 2);
}

#[test]
fn a_session_needs_a_handle_of_the_owner() {
    let (owner, _server) = owner();
    let registry = Registry::new();
    let c = registry
        .root()
        .create_child("c", Attributes::default())
        .unwrap();
    let h = Handle::from_fd(owner.issue(&c).unwrap()).unwrap();
    let peer = rustix::net::getpeername(h.as_fd()).unwrap().unwrap();
    let peer = rustix::net::SocketAddrUnix::try_from(peer).unwrap();
    let listener = wire::listener_of(peer.abstract_name().unwrap())
        .unwrap()
        .to_vec();
    let call = |first: &dyn Fn(&std::os::fd::OwnedFd)| {
        let sock = rustix::net::socket(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            None,
        )
        .unwrap();
        rustix::net::connect(
            &sock,
            &rustix::net::SocketAddrUnix::new_abstract_name(&listener).unwrap(),
        )
        .unwrap();
        first(&sock);
        let info = wire::encode_request(1, &wire::Request::Info { target: None });
        let _ = rustix::net::send(&sock, &info, rustix::net::SendFlags::NOSIGNAL);
        let mut buf = [0u8; 4096];
        rustix::net::recv(&sock, &mut buf, rustix::net::RecvFlags::empty())
            .map(|(n, _)| n)
            .unwrap_or(0)
    };
    // A call with no handle shown first: the connection is closed, nothing answered.
    assert_eq!(call(&|_| {}), 0);
    // A descriptor that is not one of the owner's handles (another socket pair's end).
    let (stranger, _other) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let open = wire::encode_request(0, &wire::Request::OpenSession);
    assert_eq!(call(&|s| send_with_fd(s, &open, stranger.as_fd())), 0);
    assert!(owner.stats().malformed >= 2);
    assert_eq!(owner.stats().sessions, 0);
    // With the handle itself: answered.
    assert!(call(&|s| send_with_fd(s, &open, h.as_fd())) > 0);
}

fn send_with_fd(sock: &std::os::fd::OwnedFd, msg: &[u8], fd: std::os::fd::BorrowedFd<'_>) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(
        sock,
        &[std::io::IoSlice::new(msg)],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
}

#[test]
fn charges_reach_the_container_without_a_call() {
    let (owner, _server) = owner();
    let registry = Registry::new();
    let c = registry
        .root()
        .create_child("c", Attributes::default())
        .unwrap();
    // The owner's thread has had nothing to do: it waits with no tick, and a new handle wakes
    // it so that its charges are harvested.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let h = Handle::from_fd(owner.issue(&c).unwrap()).unwrap();
    h.charge(Charge {
        bytes_in: 10,
        ..Default::default()
    })
    .unwrap();
    h.meter().unwrap().add_bytes_out(20);
    wait_until("the harvest", || {
        let u = c.usage();
        u.bytes_in == 10 && u.bytes_out == 20
    });
    // The holder is still there: nothing was released.
    assert_eq!(owner.stats().handles, 1);
}

#[test]
fn silent_connections_cannot_keep_holders_out() {
    let registry = Registry::new();
    let c = registry
        .root()
        .create_child("c", Attributes::default())
        .unwrap();
    let owner = Owner::new(Config {
        max_unproven: 2,
        ..Config::default()
    })
    .unwrap();
    let _server = owner.spawn("unproven").unwrap();
    let h = Handle::from_fd(owner.issue(&c).unwrap()).unwrap();
    let peer = rustix::net::getpeername(h.as_fd()).unwrap().unwrap();
    let peer = rustix::net::SocketAddrUnix::try_from(peer).unwrap();
    let listener = wire::listener_of(peer.abstract_name().unwrap())
        .unwrap()
        .to_vec();
    // Ten connections that never show a handle, held open.
    let silent: Vec<_> = (0..10)
        .map(|_| {
            let s = rustix::net::socket(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::SEQPACKET,
                None,
            )
            .unwrap();
            rustix::net::connect(
                &s,
                &rustix::net::SocketAddrUnix::new_abstract_name(&listener).unwrap(),
            )
            .unwrap();
            s
        })
        .collect();
    // A holder still gets its session and its answer.
    assert_eq!(h.info().unwrap().name, "c");
    assert_eq!(owner.stats().sessions, 1);
    assert!(owner.stats().malformed >= 8, "{:?}", owner.stats());
    drop(silent);
}
