//! Shared by the handle tests: an owner with its thread, waiting for releases, and a child
//! process (this test binary run again, as the role named in `HANDLE_TEST_ROLE`).

#![allow(dead_code)]

use rescon_handle::owner::{Owner, Server};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that tells a re-executed test binary which role to play.
pub const ROLE: &str = "HANDLE_TEST_ROLE";

pub fn owner() -> (Owner, Server) {
    let owner = Owner::new(Default::default()).expect("owner");
    let server = owner.spawn("test-handles").expect("owner thread");
    (owner, server)
}

/// Waits (up to 10 s, a bound for a hung test, not a timing assertion) until `cond` holds.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// This test binary, to run the ignored test `child` of the same file as `role`.
pub fn run_as(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--exact",
        "child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE, role)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    cmd
}

/// The `report key=value` lines a child printed (the test harness prints its own text too,
/// on the same line as the first).
pub fn reported(out: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| l.find("report ").map(|i| &l[i + "report ".len()..]))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn value<'a>(r: &'a [(String, String)], key: &str) -> &'a str {
    r.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("the child did not report {key}: {r:?}"))
}
