//! A bounded raw-socket SYN flooder, for the test bed only.
//!
//! # Safety check, before the first packet
//!
//! [`check_isolation`] refuses unless the calling thread runs in a network namespace other
//! than the initial one (`/proc/thread-self/ns/net` differs from `/proc/1/ns/net`, and from
//! the initial namespace's fixed inode [`PROC_NET_INIT_INO`]), whose
//! only interfaces are `lo` and the harness's own veth, and which has no default route (IPv4
//! or IPv6). [`FloodConfig::check`] refuses targets and sources outside the test ranges
//! ([`TEST_RANGES`]), rates above [`MAX_RATE`] and durations above [`MAX_DURATION`]. Both run
//! before the raw socket is opened and again before the first send.
//!
//! # Packets
//!
//! IPv4 SYNs with an MSS option, from random addresses and ports of the source range, sent
//! in batches with `sendmmsg` on an `IP_HDRINCL` raw socket, paced to the rate.

use ipnet::Ipv4Net;
use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Highest rate accepted, SYN/s.
pub const MAX_RATE: u64 = 2_000_000;
/// Longest flood accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(60);
/// Targets and sources must be inside these ranges: the benchmarking range and the
/// project's test range, which exist only inside the test bed's namespaces.
pub const TEST_RANGES: [Ipv4Net; 2] = [
    match Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 15) {
        Ok(n) => n,
        Err(_) => panic!("valid prefix"),
    },
    match Ipv4Net::new(Ipv4Addr::new(10, 77, 0, 0), 16) {
        Ok(n) => n,
        Err(_) => panic!("valid prefix"),
    },
];
/// The inode of the initial network namespace (`PROC_NET_INIT_INO`, `0xEFFFFFF9`).
pub const PROC_NET_INIT_INO: u64 = 0xEFFF_FFF9;
/// SYNs per `sendmmsg`.
const BATCH: usize = 64;
/// Length of one SYN: IPv4 header and TCP header with an MSS option.
pub const SYN_LEN: usize = 44;

/// Why the flooder refused or stopped.
#[derive(Debug, thiserror::Error)]
pub enum FloodError {
    /// The safety check failed: nothing was sent.
    #[error("refusing to flood: {0}")]
    Refused(String),
    /// The configuration is out of bounds: nothing was sent.
    #[error("invalid flood setting: {0}")]
    Config(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What to flood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloodConfig {
    /// The listener attacked.
    pub target: SocketAddrV4,
    /// Spoofed sources are drawn from this range.
    pub sources: Ipv4Net,
    /// SYNs per second (at most [`MAX_RATE`]).
    pub rate: u64,
    /// How long (at most [`MAX_DURATION`]).
    pub duration: Duration,
    /// The harness's veth: the only interface besides `lo` allowed in the namespace.
    pub iface: String,
}

impl FloodConfig {
    /// Checks the bounds: rate and duration caps, test ranges.
    pub fn check(&self) -> Result<(), FloodError> {
        if self.rate == 0 || self.rate > MAX_RATE {
            return Err(FloodError::Config(format!(
                "rate {} SYN/s: allowed 1..={MAX_RATE}",
                self.rate
            )));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return Err(FloodError::Config(format!(
                "duration {:?}: allowed up to {MAX_DURATION:?}",
                self.duration
            )));
        }
        let inside = |a: Ipv4Addr| TEST_RANGES.iter().any(|r| r.contains(&a));
        if !inside(*self.target.ip()) {
            return Err(FloodError::Config(format!(
                "target {} is outside the test ranges {TEST_RANGES:?}",
                self.target
            )));
        }
        if !TEST_RANGES.iter().any(|r| r.contains(&self.sources)) {
            return Err(FloodError::Config(format!(
                "sources {} are outside the test ranges {TEST_RANGES:?}",
                self.sources
            )));
        }
        Ok(())
    }
}

/// Interface names of `/proc/net/dev` text.
pub fn parse_net_dev(text: &str) -> Vec<String> {
    text.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .collect()
}

/// Whether `/proc/net/route` text has a default route (destination and mask 0).
pub fn has_default_v4(text: &str) -> bool {
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 7 && f[1] == "00000000" && f[7] == "00000000"
    })
}

/// Whether `/proc/net/ipv6_route` text has a default route (`::/0`, not unreachable).
pub fn has_default_v6(text: &str) -> bool {
    text.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // dest, dest_len, src, src_len, next hop, metric, refcnt, use, flags, device
        f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo"
    })
}

fn read(path: &str) -> Result<String, FloodError> {
    std::fs::read_to_string(path).map_err(|e| {
        FloodError::Refused(format!(
            "cannot read {path} ({e}), so cannot tell where we are"
        ))
    })
}

/// The safety check: see the [module docs](self).
pub fn check_isolation(iface: &str) -> Result<(), FloodError> {
    let own = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| {
            FloodError::Refused(format!(
                "cannot stat /proc/thread-self/ns/net ({e}), so cannot tell which network namespace this is"
            ))
        })?;
    // pid 1's namespace may be unreadable (ptrace rules); the initial namespace also has a
    // fixed inode on current kernels.
    let initial = match std::fs::metadata("/proc/1/ns/net") {
        Ok(m) => (m.dev(), m.ino()) == own || own.1 == PROC_NET_INIT_INO,
        Err(_) => own.1 == PROC_NET_INIT_INO,
    };
    if initial {
        return Err(FloodError::Refused(
            "this thread runs in the initial network namespace; run it inside the test bed's attacker namespace".into(),
        ));
    }
    let mut names = parse_net_dev(&read("/proc/thread-self/net/dev")?);
    names.sort();
    let mut want = vec!["lo".to_string(), iface.to_string()];
    want.sort();
    if names != want {
        return Err(FloodError::Refused(format!(
            "the namespace has interfaces {names:?}; only lo and the harness's veth {iface} are allowed"
        )));
    }
    if has_default_v4(&read("/proc/thread-self/net/route")?) {
        return Err(FloodError::Refused(
            "the namespace has an IPv4 default route".into(),
        ));
    }
    if has_default_v6(&read("/proc/thread-self/net/ipv6_route").unwrap_or_default()) {
        return Err(FloodError::Refused(
            "the namespace has an IPv6 default route".into(),
        ));
    }
    Ok(())
}

fn csum_add(mut sum: u32, b: &[u8]) -> u32 {
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds a SYN from `src` to `dst`: IPv4 header (DF, TTL 64) and a TCP header with an MSS
/// of 1460, both checksums filled.
pub fn syn_packet(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, id: u16) -> [u8; SYN_LEN] {
    let mut p = [0u8; SYN_LEN];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(SYN_LEN as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = csum_fold(csum_add(0, &p[..20]));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&src.port().to_be_bytes());
    t[2..4].copy_from_slice(&dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 6 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
    let tcp_sum = csum_fold(csum_add(csum_add(0, &pseudo), t));
    t[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// Where packets go: the raw socket, or a recorder in tests.
pub trait PacketSink {
    /// Sends what it can of `pkts`; returns how many were sent.
    fn send(&mut self, pkts: &[[u8; SYN_LEN]]) -> io::Result<usize>;
}

/// An `IP_HDRINCL` raw socket connected to the target.
#[derive(Debug)]
pub struct RawSink {
    fd: OwnedFd,
}

impl RawSink {
    /// Runs the checks, then opens the socket.
    pub fn open(cfg: &FloodConfig) -> Result<RawSink, FloodError> {
        cfg.check()?;
        check_isolation(&cfg.iface)?;
        let io = |what| {
            move |e: rustix::io::Errno| FloodError::Io {
                what,
                source: e.into(),
            }
        };
        let fd = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::RAW,
            Some(rustix::net::ipproto::RAW),
        )
        .map_err(io("raw socket (needs CAP_NET_RAW)"))?;
        // IPPROTO_RAW implies IP_HDRINCL.
        let dst = std::net::SocketAddrV4::new(*cfg.target.ip(), 0);
        rustix::net::connect(&fd, &dst).map_err(io("connect raw socket"))?;
        Ok(RawSink { fd })
    }
}

impl PacketSink for RawSink {
    fn send(&mut self, pkts: &[[u8; SYN_LEN]]) -> io::Result<usize> {
        let iovs: Vec<[IoSlice<'_>; 1]> = pkts.iter().map(|p| [IoSlice::new(p)]).collect();
        let mut controls: Vec<rustix::net::SendAncillaryBuffer<'_, '_, '_>> =
            (0..pkts.len()).map(|_| Default::default()).collect();
        let mut msgs: Vec<rustix::net::MMsgHdr<'_>> = iovs
            .iter()
            .zip(controls.iter_mut())
            .map(|(iov, c)| rustix::net::MMsgHdr::new(iov, c))
            .collect();
        match rustix::net::sendmmsg(&self.fd, &mut msgs, rustix::net::SendFlags::empty()) {
            Ok(n) => Ok(n),
            // A full device queue: the batch is lost, as on a real link.
            Err(rustix::io::Errno::NOBUFS) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

/// What a flood did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FloodReport {
    /// SYNs handed to the kernel.
    pub sent: u64,
    /// How long it ran.
    pub elapsed: Duration,
    /// CPU time of the flooding thread over that time. The kernel charges a thread the
    /// softirq work done in its context (this kernel has no IRQ time accounting), so over a
    /// veth this includes the receive work the SYNs cause on the far side.
    pub cpu: Duration,
}

impl FloodReport {
    /// SYNs per second achieved.
    pub fn rate(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.sent as f64 / self.elapsed.as_secs_f64()
        }
    }
}

/// Floods through `sink`, paced to `cfg.rate`, until `cfg.duration` has passed or `stop` is
/// set. Checks the bounds and the isolation first; on refusal nothing reaches the sink.
pub fn flood_with(
    cfg: &FloodConfig,
    sink: &mut dyn PacketSink,
    stop: &AtomicBool,
) -> Result<FloodReport, FloodError> {
    cfg.check()?;
    check_isolation(&cfg.iface)?;
    let mut rng = fastrand::Rng::new();
    let hosts = 1u64 << (32 - cfg.sources.prefix_len());
    let base = u32::from(cfg.sources.network());
    let mut batch = [[0u8; SYN_LEN]; BATCH];
    let cpu0 = thread_cpu();
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let due = (cfg.rate as f64 * (now - start).as_secs_f64()) as u64;
        if sent >= due {
            let wait =
                Duration::from_secs_f64((sent + BATCH as u64 - due) as f64 / cfg.rate as f64);
            std::thread::sleep(wait.min(Duration::from_millis(5)).min(deadline - now));
            continue;
        }
        let n = ((due - sent) as usize).min(BATCH);
        for p in batch.iter_mut().take(n) {
            let host = Ipv4Addr::from(base.wrapping_add(rng.u64(0..hosts) as u32));
            let src = SocketAddrV4::new(host, rng.u16(1024..=65535));
            *p = syn_packet(src, cfg.target, rng.u32(..), rng.u16(..));
        }
        let k = sink.send(&batch[..n]).map_err(|source| FloodError::Io {
            what: "sendmmsg",
            source,
        })?;
        // What the device could not take is lost, not retried: count what went out.
        sent += k as u64;
        if k < n {
            std::thread::yield_now();
        }
    }
    Ok(FloodReport {
        sent,
        elapsed: start.elapsed(),
        cpu: thread_cpu().saturating_sub(cpu0),
    })
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Opens the raw socket (after the checks) and floods.
pub fn flood(cfg: &FloodConfig, stop: &AtomicBool) -> Result<FloodReport, FloodError> {
    let mut sink = RawSink::open(cfg)?;
    flood_with(cfg, &mut sink, stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_checksums_verify() {
        let p = syn_packet(
            "198.19.3.4:40000".parse().unwrap(),
            "198.18.1.1:8080".parse().unwrap(),
            0x01020304,
            7,
        );
        assert_eq!(csum_fold(csum_add(0, &p[..20])), 0, "IPv4 header checksum");
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&p[12..16]);
        pseudo[4..8].copy_from_slice(&p[16..20]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(
            csum_fold(csum_add(csum_add(0, &pseudo), &p[20..])),
            0,
            "TCP checksum"
        );
        assert_eq!(p[33], 0x02, "SYN only");
        assert_eq!(&p[22..24], &8080u16.to_be_bytes());
    }

    #[test]
    fn parses_interfaces_and_routes() {
        let dev = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  att0:    1234      10    0    0    0     0          0         0     5678      20    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev(dev), vec!["lo", "att0"]);
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\natt0\t0001A8C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert!(!has_default_v4(route));
        let with_default =
            format!("{route}eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert!(has_default_v4(&with_default));
        let v6 = "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     att0\n00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert!(
            !has_default_v6(v6),
            "the unreachable default on lo does not count"
        );
        let v6d = format!(
            "{v6}00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     att0\n"
        );
        assert!(has_default_v6(&v6d));
    }

    #[test]
    fn bounds_are_enforced() {
        let ok = FloodConfig {
            target: "198.18.1.1:8080".parse().unwrap(),
            sources: "198.19.0.0/16".parse().unwrap(),
            rate: 1000,
            duration: Duration::from_secs(1),
            iface: "att0".into(),
        };
        ok.check().unwrap();
        for bad in [
            FloodConfig {
                rate: MAX_RATE + 1,
                ..ok.clone()
            },
            FloodConfig {
                rate: 0,
                ..ok.clone()
            },
            FloodConfig {
                duration: MAX_DURATION + Duration::from_secs(1),
                ..ok.clone()
            },
            FloodConfig {
                target: "8.8.8.8:80".parse().unwrap(),
                ..ok.clone()
            },
            FloodConfig {
                sources: "10.0.0.0/8".parse().unwrap(),
                ..ok.clone()
            },
            FloodConfig {
                sources: "198.0.0.0/8".parse().unwrap(),
                ..ok.clone()
            },
        ] {
            assert!(matches!(bad.check(), Err(FloodError::Config(_))), "{bad:?}");
        }
    }
}
