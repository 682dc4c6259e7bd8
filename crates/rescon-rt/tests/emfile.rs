//! Running out of file descriptors on accept pauses the listener instead of spinning, and it
//! resumes when descriptors free up. Alone in its test binary: it lowers the process's
//! RLIMIT_NOFILE.

use rescon::{Attributes, Registry};
use rescon_rt::{Builder, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

fn set_nofile(soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the rlimit structs passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0);
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &new), 0);
    }
    old
}

#[test]
fn emfile_on_accept_pauses_then_resumes() {
    let registry = Registry::new();
    let rt = Builder::new(&registry).workers(1).build().unwrap();
    let web = registry
        .root()
        .create_child("web", Attributes::default())
        .unwrap();
    let listener = Arc::new(
        rt.block_on(async { TcpListener::bind_in("127.0.0.1:0".parse().unwrap(), &web) })
            .unwrap(),
    );
    let addr = listener.local_addr().unwrap();
    // Ten connections wait in the kernel's accept queue.
    let clients: Vec<_> = (0..10)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let held = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(AtomicUsize::new(0));
    let old = set_nofile(open_fds() + 3);
    {
        let (l, held, accepted) = (listener.clone(), held.clone(), accepted.clone());
        rt.spawn_in(&web, async move {
            while let Ok((s, _)) = l.accept().await {
                held.lock().unwrap().push(s);
                accepted.fetch_add(1, SeqCst);
            }
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let got = accepted.load(SeqCst);
    let pauses = listener.accept_pauses();
    rt.flush_usage();
    let polls = web.usage().polls;
    // Back to the old limit, and free what was accepted: the rest come in.
    restore_nofile(old);
    held.lock().unwrap().clear();
    let t = Instant::now();
    while accepted.load(SeqCst) < 10 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("accepted {got} before the limit bit, {pauses} pauses, {polls} polls");
    assert!(got < 10, "the limit stopped accepting");
    assert!(pauses >= 1, "the listener paused");
    assert!(
        polls < 200,
        "no spinning while out of descriptors: {polls} polls in 300 ms"
    );
    assert_eq!(
        accepted.load(SeqCst),
        10,
        "accepting resumed once descriptors were free"
    );
    drop(clients);
}

fn restore_nofile(old: libc::rlimit) {
    // SAFETY: setrlimit only reads the struct passed.
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &old), 0);
    }
}
