//! Parsers for `/proc/net/netstat` and `/proc/net/snmp`, and the SYN-queue pressure they
//! show.
//!
//! Both files are pairs of lines: a header line `Section: Name1 Name2 ...` and a value line
//! `Section: v1 v2 ...`. The counters are per network namespace: read them from
//! `/proc/thread-self/net/` so that a thread that entered another namespace reads that one.
//!
//! ```
//! use rescon_linux::listen::stats::{ListenStats, ProcNet};
//! let netstat = ProcNet::parse(
//!     "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPReqQFullDrop\n\
//!      TcpExt: 5 0 12 7\n",
//! )
//! .unwrap();
//! assert_eq!(netstat.get("TcpExt", "ListenDrops"), Some(12));
//! let s = ListenStats::from_proc(&netstat, &ProcNet::default());
//! assert_eq!(s.req_q_full_drop, 7);
//! ```

use super::error::Error;

/// The counters of one `/proc/net/{netstat,snmp}` file, by section and name, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcNet {
    sections: Vec<(String, Vec<(String, i64)>)>,
}

impl ProcNet {
    /// Parses the text of `/proc/net/netstat` or `/proc/net/snmp`. Refuses a value line
    /// without its header, counts that differ, and values that are not integers (some
    /// snmp values are negative, e.g. `MaxConn -1`).
    pub fn parse(text: &str) -> Result<ProcNet, Error> {
        let bad = |n: usize, why: String| Error::Parse {
            what: "/proc/net/netstat or /proc/net/snmp",
            detail: format!("line {n}: {why}"),
        };
        let mut sections = Vec::new();
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        while let Some((n, header)) = lines.next() {
            let (name, names) = header
                .split_once(':')
                .ok_or_else(|| bad(n + 1, format!("no `Section:` in {header:?}")))?;
            let (vn, values) = lines
                .next()
                .ok_or_else(|| bad(n + 1, format!("header of {name} without values")))?;
            let (vname, values) = values
                .split_once(':')
                .ok_or_else(|| bad(vn + 1, format!("no `Section:` in {values:?}")))?;
            if vname != name {
                return Err(bad(
                    vn + 1,
                    format!("values of {vname} after the header of {name}"),
                ));
            }
            let names: Vec<&str> = names.split_whitespace().collect();
            let values: Vec<i64> = values
                .split_whitespace()
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| bad(vn + 1, format!("{name}: value {v:?} is not an integer")))
                })
                .collect::<Result<_, _>>()?;
            if names.len() != values.len() {
                return Err(bad(
                    vn + 1,
                    format!("{name}: {} names but {} values", names.len(), values.len()),
                ));
            }
            let pairs = names.into_iter().map(String::from).zip(values).collect();
            sections.push((name.to_string(), pairs));
        }
        Ok(ProcNet { sections })
    }

    /// Reads and parses a file.
    pub fn read(path: &str) -> Result<ProcNet, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_string(),
            source,
        })?;
        ProcNet::parse(&text)
    }

    /// A counter, if present (kernels add counters over time; absent ones are `None`).
    pub fn get(&self, section: &str, name: &str) -> Option<i64> {
        self.sections
            .iter()
            .find(|(s, _)| s == section)
            .and_then(|(_, pairs)| pairs.iter().find(|(n, _)| n == name))
            .map(|(_, v)| *v)
    }
}

/// The counters that show SYN-queue pressure in one network namespace (cumulative since
/// the namespace was made; missing counters read 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenStats {
    /// `TcpExt ListenOverflows`: handshakes completed into a full accept queue.
    pub listen_overflows: u64,
    /// `TcpExt ListenDrops`: SYNs and handshakes a listener dropped for any reason.
    pub listen_drops: u64,
    /// `TcpExt TCPReqQFullDrop`: SYNs dropped because the SYN queue was full and cookies off.
    pub req_q_full_drop: u64,
    /// `TcpExt TCPReqQFullDoCookies`: SYNs answered with a cookie because the queue was full.
    pub req_q_full_do_cookies: u64,
    /// `TcpExt SyncookiesSent`.
    pub syncookies_sent: u64,
    /// `TcpExt SyncookiesRecv`: valid cookies received.
    pub syncookies_recv: u64,
    /// `TcpExt SyncookiesFailed`: invalid cookies received.
    pub syncookies_failed: u64,
    /// `Tcp PassiveOpens` (from snmp): connections that reached SYN_RECV.
    pub passive_opens: u64,
    /// `Tcp AttemptFails` (from snmp).
    pub attempt_fails: u64,
}

impl ListenStats {
    /// Picks the counters out of parsed netstat and snmp files.
    pub fn from_proc(netstat: &ProcNet, snmp: &ProcNet) -> ListenStats {
        let ext = |n| netstat.get("TcpExt", n).unwrap_or(0).max(0) as u64;
        let tcp = |n| snmp.get("Tcp", n).unwrap_or(0).max(0) as u64;
        ListenStats {
            listen_overflows: ext("ListenOverflows"),
            listen_drops: ext("ListenDrops"),
            req_q_full_drop: ext("TCPReqQFullDrop"),
            req_q_full_do_cookies: ext("TCPReqQFullDoCookies"),
            syncookies_sent: ext("SyncookiesSent"),
            syncookies_recv: ext("SyncookiesRecv"),
            syncookies_failed: ext("SyncookiesFailed"),
            passive_opens: tcp("PassiveOpens"),
            attempt_fails: tcp("AttemptFails"),
        }
    }

    /// Reads the calling thread's network namespace
    /// (`/proc/thread-self/net/{netstat,snmp}`).
    pub fn read() -> Result<ListenStats, Error> {
        Self::read_from("/proc/thread-self/net")
    }

    /// Reads `dir/netstat` and `dir/snmp`.
    pub fn read_from(dir: &str) -> Result<ListenStats, Error> {
        let netstat = ProcNet::read(&format!("{dir}/netstat"))?;
        let snmp = ProcNet::read(&format!("{dir}/snmp"))?;
        Ok(ListenStats::from_proc(&netstat, &snmp))
    }

    /// SYNs refused or degraded by a full queue: drops, overflows and cookie fallbacks.
    pub fn pressure(&self) -> u64 {
        self.listen_drops
            .saturating_add(self.listen_overflows)
            .saturating_add(self.req_q_full_drop)
            .saturating_add(self.req_q_full_do_cookies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From a 6.18 kernel, abridged to the first counters of each section.
    const NETSTAT: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts PruneCalled ListenOverflows ListenDrops TCPReqQFullDoCookies TCPReqQFullDrop
TcpExt: 1764 3 0 0 0 26 773 1764 866
IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InOctets OutOctets
IpExt: 0 0 0 0 52914128 231386
";

    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives InHdrErrors
Ip: 1 64 3667 0
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 108 79 2 27 0 3557 2960 0 0 33 0
";

    #[test]
    fn parses_netstat_and_snmp() {
        let n = ProcNet::parse(NETSTAT).unwrap();
        let s = ProcNet::parse(SNMP).unwrap();
        assert_eq!(n.get("IpExt", "InOctets"), Some(52914128));
        assert_eq!(s.get("Tcp", "MaxConn"), Some(-1));
        assert_eq!(n.get("TcpExt", "NoSuchCounter"), None);
        let st = ListenStats::from_proc(&n, &s);
        assert_eq!(
            st,
            ListenStats {
                listen_overflows: 26,
                listen_drops: 773,
                req_q_full_drop: 866,
                req_q_full_do_cookies: 1764,
                syncookies_sent: 1764,
                syncookies_recv: 3,
                syncookies_failed: 0,
                passive_opens: 79,
                attempt_fails: 2,
            }
        );
        assert_eq!(st.pressure(), 773 + 26 + 866 + 1764);
    }

    #[test]
    fn refuses_malformed_text() {
        for (text, why) in [
            ("TcpExt: A B\nTcpExt: 1\n", "2 names but 1 values"),
            ("TcpExt: A B\n", "without values"),
            (
                "TcpExt: A\nIpExt: 1\n",
                "values of IpExt after the header of TcpExt",
            ),
            ("TcpExt: A\nTcpExt: x\n", "is not an integer"),
            ("garbage\n", "no `Section:`"),
        ] {
            let err = ProcNet::parse(text).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        assert_eq!(ProcNet::parse("").unwrap(), ProcNet::default());
    }

    #[test]
    fn reads_this_kernel() {
        // /proc/net is always there on Linux; the counters must parse.
        let st = ListenStats::read().unwrap();
        let again = ListenStats::read().unwrap();
        assert!(again.passive_opens >= st.passive_opens);
    }
}
