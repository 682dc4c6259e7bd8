//! The service manager's notification protocol (`sd_notify(3)`): one datagram of
//! `KEY=VALUE` lines to the Unix socket named by `$NOTIFY_SOCKET`.
//!
//! Written here rather than taken from a crate: the protocol is one `sendto` of a few bytes on
//! a datagram socket, which std does (abstract addresses included), and the parsing of
//! `$WATCHDOG_USEC` is two lines.
//!
//! The socket is read once, at the first use. CGI scripts never see `NOTIFY_SOCKET`: their
//! environment is built from scratch (RFC 3875's variables only), so a script cannot tell
//! systemd that the server is ready or stopping.
//!
//! # References
//! - `sd_notify(3)`, `systemd.service(5)` (`Type=notify`, `WatchdogSec=`)

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::time::Duration;

/// Where notifications go, taken from the environment once.
#[derive(Debug)]
pub struct Notifier {
    target: Option<SocketAddr>,
    /// Connected at the first use, while the process still runs as the user it started
    /// as: after the switch to `[server] user` it may not be allowed to connect anew.
    connected: Option<UnixDatagram>,
    watchdog: Option<Duration>,
}

static NOTIFIER: OnceLock<Notifier> = OnceLock::new();

/// The process's notifier (reads and clears the environment on the first call).
pub fn notifier() -> &'static Notifier {
    NOTIFIER.get_or_init(Notifier::from_env)
}

/// Parses `$NOTIFY_SOCKET`: a path, or `@name` for an abstract socket. `None` when unset or
/// empty.
pub fn parse_socket(value: &str) -> io::Result<Option<SocketAddr>> {
    if value.is_empty() {
        return Ok(None);
    }
    if let Some(name) = value.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes()).map(Some);
    }
    if !value.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={value:?} is neither an absolute path nor @abstract"),
        ));
    }
    SocketAddr::from_pathname(value).map(Some)
}

/// Parses `$WATCHDOG_USEC` (with `$WATCHDOG_PID`, which must be ours if set): the interval
/// systemd expects pings within.
///
/// ```
/// use rescon_httpd::service::notify::parse_watchdog;
/// use std::time::Duration;
/// assert_eq!(parse_watchdog(Some("2000000"), None, 7), Some(Duration::from_secs(2)));
/// assert_eq!(parse_watchdog(Some("2000000"), Some("8"), 7), None);
/// assert_eq!(parse_watchdog(Some("0"), None, 7), None);
/// ```
pub fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    let us: u64 = usec?.trim().parse().ok()?;
    (us > 0).then(|| Duration::from_micros(us))
}

impl Notifier {
    fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").unwrap_or_default();
        let watchdog = parse_watchdog(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        let target = match parse_socket(&socket) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring NOTIFY_SOCKET");
                None
            }
        };
        Notifier::to(target, watchdog)
    }

    /// A notifier sending to `target`.
    pub fn to(target: Option<SocketAddr>, watchdog: Option<Duration>) -> Notifier {
        let connected = target.as_ref().and_then(|a| {
            let s = UnixDatagram::unbound().ok()?;
            s.connect_addr(a).ok()?;
            Some(s)
        });
        Notifier {
            target,
            connected,
            watchdog,
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog interval systemd expects, if it watches us.
    pub fn watchdog(&self) -> Option<Duration> {
        self.target.as_ref().and(self.watchdog)
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines). Without a manager, does nothing.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let Some(addr) = &self.target else {
            return Ok(());
        };
        let n = match &self.connected {
            Some(s) => s.send(state.as_bytes())?,
            None => UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), addr)?,
        };
        if n != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to NOTIFY_SOCKET",
            ));
        }
        Ok(())
    }

    /// Sends `state`, logging a failure (a notification is never worth stopping for).
    pub fn tell(&self, state: &str) {
        if let Err(e) = self.send(state) {
            tracing::warn!(error = %e, state, "sd_notify failed");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.tell(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ));
    }

    /// `RELOADING=1` with `MONOTONIC_USEC` (which `Type=notify-reload` requires).
    pub fn reloading(&self) {
        self.tell(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
            monotonic_usec()
        ));
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.tell(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// `STATUS=...`.
    pub fn status(&self, status: &str) {
        self.tell(&format!("STATUS={status}"));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog_ping(&self) {
        self.tell("WATCHDOG=1");
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd reads it.
fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to(
            parse_socket(path.to_str().unwrap()).unwrap(),
            Some(Duration::from_secs(1)),
        );
        assert!(n.enabled());
        n.ready("serving");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(
            msg.starts_with("READY=1\nSTATUS=serving\nMAINPID="),
            "{msg}"
        );
        n.reloading();
        let len = rx.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg}");

        let name = format!("rescon-notify-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let rx2 = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let n2 = Notifier::to(parse_socket(&format!("@{name}")).unwrap(), None);
        n2.stopping("bye");
        let len = rx2.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=bye");
        assert_eq!(n2.watchdog(), None);
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        let n = Notifier::to(None, Some(Duration::from_secs(1)));
        assert!(!n.enabled());
        assert_eq!(n.watchdog(), None, "no manager, no watchdog");
        n.send("READY=1").unwrap();
        assert!(parse_socket("").unwrap().is_none());
        assert!(parse_socket("relative/path").is_err());
    }
}
