//! The flood test bed: network namespaces joined by veth pairs, made with `ip` and removed
//! by guards, also on failure (unwinding) or Ctrl-C (the caller polls a stop flag).
//!
//! ```text
//!  attacker ns                  server ns                        client ns
//!  att0 198.18.1.2/24 ──veth── satt 198.18.1.1/24
//!                               scli 198.18.2.1/24 ──veth── cli0 198.18.2.2/24
//!                               sink0 (peer sink1 down): route 198.19.0.0/16
//! ```
//!
//! Every address is in 198.18.0.0/15, the benchmarking range, and exists only inside these
//! namespaces. The attacker spoofs sources from [`SPOOFED`]; the server routes that range
//! into `sink0`, whose peer is down, so the SYN-ACKs are sent and vanish as a real flood's
//! do (a route to nowhere would make the kernel drop the SYN before queueing it, which is not
//! what a flood costs). Sysctls (`tcp_syncookies`, `rp_filter`, backlogs) are set inside the
//! namespaces only. Namespaces are named `rescon-<pid>-<n>-<role>`; [`cleanup_stale`] removes
//! those of processes that died without cleaning up.

use ipnet::Ipv4Net;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

/// The server's address on the attacker's link.
pub const SERVER_ATT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The attacker's own address.
pub const ATTACKER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The server's address on the clients' link.
pub const SERVER_CLI: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// The legitimate client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// The range the attacker spoofs; routed into the sink in the server namespace.
pub const SPOOFED: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(198, 19, 0, 0), 16) {
    Ok(n) => n,
    Err(_) => panic!("valid prefix"),
};
/// The attacker's veth: the only interface besides `lo` in its namespace.
pub const ATTACKER_IFACE: &str = "att0";
/// The server's end of the attacker's veth, where the flood comes in.
pub const SERVER_ATT_IFACE: &str = "satt";

/// What went wrong building the test bed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {stderr}; is iproute2 installed and are we root?")]
    Ip {
        /// Its arguments.
        args: String,
        /// What it printed.
        stderr: String,
    },
    /// Another system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Runs `ip` with `args`.
pub fn ip(args: &[&str]) -> Result<(), Error> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(io_err("running ip"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// A named network namespace (`ip netns add`), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// Creates the namespace `name`.
    pub fn create(name: &str) -> Result<Netns, Error> {
        ip(&["netns", "add", name])?;
        let file = File::open(format!("/run/netns/{name}"));
        match file {
            Ok(file) => Ok(Netns {
                name: name.to_string(),
                file,
            }),
            Err(e) => {
                let _ = ip(&["netns", "del", name]);
                Err(io_err(format!("opening /run/netns/{name}"))(e))
            }
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves the calling thread into the namespace (for good: use a thread of its own).
    pub fn enter(&self) -> Result<(), Error> {
        rustix::thread::move_into_link_name_space(
            self.file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| io_err(format!("setns into {}", self.name))(e.into()))
    }

    /// Runs `f` on a new thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<T>, Error> {
        let file = self.file.try_clone().map_err(io_err("dup netns fd"))?;
        let ns = self.name.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
                f()
            })
            .map_err(io_err("spawn thread"))
    }

    /// Writes a sysctl under `/proc/sys/` inside the namespace (`net.ipv4.tcp_syncookies`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        let what = format!("sysctl {key}={value} in {}", self.name);
        self.spawn("sysctl", move || std::fs::write(&path, value))?
            .join()
            .map_err(|_| Error::Io {
                what: what.clone(),
                source: io::Error::other("thread panicked"),
            })?
            .map_err(io_err(what))
    }

    /// Sets the receive packet steering mask of `dev`'s first receive queue, so that packets
    /// arriving there are processed by those CPUs (`rps_cpus`, a hex mask). sysfs shows the
    /// namespace it was mounted in, so this goes through `ip netns exec`, which mounts the
    /// namespace's own.
    pub fn rps(&self, dev: &str, mask: u64) -> Result<(), Error> {
        let script = format!("echo {mask:x} > /sys/class/net/{dev}/queues/rx-0/rps_cpus");
        let what = format!("rps_cpus of {dev} in {}", self.name);
        let st = std::process::Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", &script])
            .status()
            .map_err(io_err(what.clone()))?;
        if !st.success() {
            return Err(Error::Io {
                what,
                source: io::Error::other(format!("`sh -c '{script}'` failed: {st}")),
            });
        }
        Ok(())
    }

    /// Runs `ip -n <name> args`.
    pub fn ip(&self, args: &[&str]) -> Result<(), Error> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "warning: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Deletes the namespaces `rescon-<pid>-*` of processes that no longer exist. Returns how
/// many it removed.
pub fn cleanup_stale() -> usize {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return 0;
    };
    let mut n = 0;
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("rescon-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && ip(&["netns", "del", &name]).is_ok()
        {
            n += 1;
        }
    }
    n
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Server, attacker and client namespaces wired as in the [module docs](self). Dropping it
/// deletes the namespaces (and with them the veths).
#[derive(Debug)]
pub struct Testbed {
    /// The server's namespace.
    pub server: Netns,
    /// The attacker's namespace.
    pub attacker: Netns,
    /// The legitimate clients' namespace.
    pub client: Netns,
}

impl Testbed {
    /// Builds the test bed (needs root).
    pub fn up() -> Result<Testbed, Error> {
        let tag = format!(
            "rescon-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        // Each guard removes its namespace if a later step fails.
        let server = Netns::create(&format!("{tag}-srv"))?;
        let attacker = Netns::create(&format!("{tag}-att"))?;
        let client = Netns::create(&format!("{tag}-cli"))?;
        let (s, a, c) = (server.name(), attacker.name(), client.name());
        ip(&[
            "link",
            "add",
            ATTACKER_IFACE,
            "netns",
            a,
            "type",
            "veth",
            "peer",
            "name",
            "satt",
            "netns",
            s,
        ])?;
        ip(&[
            "link", "add", "cli0", "netns", c, "type", "veth", "peer", "name", "scli", "netns", s,
        ])?;
        ip(&[
            "link", "add", "sink0", "netns", s, "type", "veth", "peer", "name", "sink1", "netns", s,
        ])?;
        server.ip(&["addr", "add", "198.18.1.1/24", "dev", "satt"])?;
        server.ip(&["addr", "add", "198.18.2.1/24", "dev", "scli"])?;
        attacker.ip(&["addr", "add", "198.18.1.2/24", "dev", ATTACKER_IFACE])?;
        client.ip(&["addr", "add", "198.18.2.2/24", "dev", "cli0"])?;
        for (ns, dev) in [
            (&server, "satt"),
            (&server, "scli"),
            (&attacker, ATTACKER_IFACE),
            (&client, "cli0"),
        ] {
            ns.ip(&["link", "set", dev, "up"])?;
        }
        for ns in [&server, &attacker, &client] {
            ns.ip(&["link", "set", "lo", "up"])?;
        }
        server.ip(&["link", "set", "sink0", "arp", "off", "up"])?;
        server.ip(&["route", "add", &SPOOFED.to_string(), "dev", "sink0"])?;
        // Spoofed sources arrive on satt but route to sink0: no reverse-path filtering here.
        for dev in ["all", "default", "satt"] {
            server.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0")?;
        }
        server.sysctl("net.core.somaxconn", "4096")?;
        server.sysctl("net.ipv4.tcp_max_syn_backlog", "4096")?;
        client.sysctl("net.ipv4.ip_local_port_range", "10000 65000")?;
        Ok(Testbed {
            server,
            attacker,
            client,
        })
    }

    /// Sets `net.ipv4.tcp_syncookies` in the server namespace (0 off, 1 when the queue
    /// overflows, the Linux default).
    pub fn set_syncookies(&self, on: bool) -> Result<(), Error> {
        self.server
            .sysctl("net.ipv4.tcp_syncookies", if on { "1" } else { "0" })
    }
}
