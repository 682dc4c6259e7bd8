//! Socket activation (`sd_listen_fds(3)`): listening sockets passed by the service manager
//! as descriptors 3, 4, ... with `$LISTEN_PID`, `$LISTEN_FDS` and `$LISTEN_FDNAMES`.
//!
//! A passed socket serves the `[[listener]]` whose `name` is the descriptor's name
//! (`FileDescriptorName=` in the socket unit), else the one whose address and port it is bound
//! to. Sockets that match no listener are closed, with a warning naming them.
//!
//! Parsing is a pure function ([`parse`]); taking the descriptors ([`Activation::from_env`])
//! marks them close-on-exec, so CGI scripts never inherit them.
//!
//! # References
//! - `sd_listen_fds(3)`, `systemd.socket(5)`

// The one unsafe operation of the crate: taking ownership of descriptors the service manager
// passed by number (there is no safe way to name an inherited descriptor).
#![allow(unsafe_code)]

use crate::config::ListenerConfig;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// What the environment says was passed: each descriptor with its name, if any.
///
/// `LISTEN_PID` must be this process (the variables are meant for the process the manager
/// started, not for its children); otherwise nothing was passed to us.
///
/// ```
/// use rescon_httpd::service::activation::parse;
/// let got = parse(42, Some("42"), Some("2"), Some("web:admin")).unwrap();
/// assert_eq!(got, vec![(3, Some("web".to_string())), (4, Some("admin".to_string()))]);
/// assert!(parse(42, Some("41"), Some("2"), None).unwrap().is_empty());
/// assert!(parse(42, Some("42"), Some("x"), None).is_err());
/// ```
pub fn parse(
    own_pid: u32,
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
) -> Result<Vec<(RawFd, Option<String>)>, String> {
    let Some(pid) = listen_pid else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(own_pid) {
        return Ok(Vec::new());
    }
    let Some(n) = listen_fds else {
        return Ok(Vec::new());
    };
    let n: RawFd = n
        .trim()
        .parse()
        .ok()
        .filter(|n| (0..=4096).contains(n))
        .ok_or_else(|| format!("LISTEN_FDS={n:?} is not a descriptor count"))?;
    let names: Vec<&str> = names.map(|s| s.split(':').collect()).unwrap_or_default();
    Ok((0..n)
        .map(|i| {
            let name = names
                .get(i as usize)
                .filter(|s| !s.is_empty() && **s != "unknown")
                .map(|s| s.to_string());
            (LISTEN_FDS_START + i, name)
        })
        .collect())
}

/// A listening socket the manager passed.
#[derive(Debug)]
pub struct Passed {
    /// Its name (`FileDescriptorName=`), if it has one.
    pub name: Option<String>,
    /// The address it is bound to.
    pub addr: SocketAddr,
    socket: TcpListener,
}

/// The sockets passed to this process, until each is taken by its listener.
#[derive(Debug, Default)]
pub struct Activation {
    passed: Vec<Passed>,
}

impl Activation {
    /// Takes the descriptors the environment names (none when it names none, or names them
    /// for another process). A descriptor that is not a listening TCP socket is an error
    /// naming it.
    pub fn from_env() -> Result<Activation, String> {
        let env = |k| std::env::var(k).ok();
        let fds = parse(
            std::process::id(),
            env("LISTEN_PID").as_deref(),
            env("LISTEN_FDS").as_deref(),
            env("LISTEN_FDNAMES").as_deref(),
        )?;
        let mut passed = Vec::new();
        for (fd, name) in fds {
            // SAFETY: `LISTEN_PID` names this process, so descriptors 3..3+LISTEN_FDS were
            // passed to it by the service manager to own; nothing else in the process knows
            // their numbers (this runs once, at start-up, before any other descriptor is
            // opened by number), so taking ownership here is the only ownership there is.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let label = name.clone().unwrap_or_else(|| format!("descriptor {fd}"));
            rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
                .map_err(|e| format!("passed socket {label}: setting close-on-exec: {e}"))?;
            let s = socket2::Socket::from(owned);
            let listening = s.is_listener().unwrap_or(false);
            let stream = s
                .r#type()
                .map(|t| t == socket2::Type::STREAM)
                .unwrap_or(false);
            let addr = s.local_addr().ok().and_then(|a| a.as_socket());
            let (true, true, Some(addr)) = (listening, stream, addr) else {
                return Err(format!(
                    "passed socket {label} is not a listening TCP socket: pass ListenStream= sockets only (see deploy/rescon-httpd.socket)"
                ));
            };
            passed.push(Passed {
                name,
                addr,
                socket: TcpListener::from(s),
            });
        }
        Ok(Activation { passed })
    }

    /// Sockets handed over for tests.
    pub fn from_sockets(sockets: Vec<(Option<String>, TcpListener)>) -> Activation {
        Activation {
            passed: sockets
                .into_iter()
                .filter_map(|(name, socket)| {
                    let addr = socket.local_addr().ok()?;
                    Some(Passed { name, addr, socket })
                })
                .collect(),
        }
    }

    /// How many passed sockets are left.
    pub fn len(&self) -> usize {
        self.passed.len()
    }

    /// Whether no passed socket is left.
    pub fn is_empty(&self) -> bool {
        self.passed.is_empty()
    }

    /// The passed socket of listener `l`: the one named like it, else the one bound to its
    /// address.
    pub fn take(&mut self, l: &ListenerConfig) -> Option<TcpListener> {
        let i = self
            .passed
            .iter()
            .position(|p| p.name.as_deref() == Some(l.name.as_str()))
            .or_else(|| {
                self.passed
                    .iter()
                    .position(|p| p.name.is_none() && same_addr(p.addr, l.addr))
            })
            .or_else(|| self.passed.iter().position(|p| same_addr(p.addr, l.addr)))?;
        Some(self.passed.remove(i).socket)
    }

    /// Closes what no listener took, saying which.
    pub fn finish(self) {
        for p in self.passed {
            tracing::warn!(
                name = p.name.as_deref().unwrap_or("-"),
                address = %p.addr,
                "a passed socket matches no [[listener]] (by name or address): closed"
            );
        }
    }
}

/// Whether a passed socket's address is a listener's: equal, or `::`/`0.0.0.0` for each other.
fn same_addr(passed: SocketAddr, configured: SocketAddr) -> bool {
    passed == configured
        || (passed.port() == configured.port()
            && passed.ip().is_unspecified()
            && configured.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str, addr: &str) -> ListenerConfig {
        let cfg = crate::config::Config::default_config();
        let mut l = cfg.listeners[0].clone();
        l.name = name.into();
        l.addr = addr.parse().unwrap();
        l
    }

    #[test]
    fn matched_by_name_then_by_address() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut act = Activation::from_sockets(vec![(Some("web".into()), a), (None, b)]);
        assert_eq!(act.len(), 2);
        // By name, whatever the configured address.
        let got = act.take(&listener("web", "127.0.0.1:1")).unwrap();
        assert_eq!(got.local_addr().unwrap(), aa);
        // By address.
        assert!(act.take(&listener("other", "127.0.0.1:2")).is_none());
        let got = act.take(&listener("other", &ba.to_string())).unwrap();
        assert_eq!(got.local_addr().unwrap(), ba);
        assert!(act.is_empty());
        act.finish();
    }

    #[test]
    fn parse_ignores_other_processes_and_unknown_names() {
        assert!(parse(1, None, Some("1"), None).unwrap().is_empty());
        assert_eq!(
            parse(1, Some("1"), Some("2"), Some("unknown")).unwrap(),
            vec![(3, None), (4, None)]
        );
        assert!(parse(1, Some("1"), Some("-1"), None).is_err());
        assert!(parse(1, Some("1"), None, None).unwrap().is_empty());
    }
}
