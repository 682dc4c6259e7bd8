//! Pure parsers of the kernel's cgroup text: `/proc/self/mountinfo`, `/proc/self/cgroup`,
//! `cpu.stat`, `cpuacct.usage`, `cpuacct.stat`, `memory.current` / `memory.usage_in_bytes`,
//! `pids.current`, `pids.max`, `cgroup.procs`, `cgroup.events`, `cgroup.controllers` and the
//! start time in `/proc/<pid>/stat`.
//!
//! Each function takes the text as the kernel wrote it and does no I/O, so every one is tested
//! on literal fixtures (cgroup v1, v2 and the hybrid layout of these machines).
//!
//! ```
//! use rescon_linux::cgroup::parse;
//! let stat = parse::cpu_stat("usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n").unwrap();
//! assert_eq!(stat.usage_usec, Some(2500));
//! assert_eq!(parse::cpuacct_usage("123456789\n").unwrap(), 123_456_789);
//! ```

use std::fmt;

/// Text that did not have the expected shape. Names what was being parsed and quotes the
/// offending text (cut to a readable length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    what: &'static str,
    text: String,
}

impl ParseError {
    fn new(what: &'static str, text: &str) -> Self {
        const MAX: usize = 120;
        let mut text = text.to_string();
        if text.len() > MAX {
            let mut cut = MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        ParseError { what, text }
    }

    /// What was being parsed (`cpu.stat`, `mountinfo line`, ...).
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The text refused.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot parse {}: {:?}", self.what, self.text)
    }
}

impl std::error::Error for ParseError {}

/// One line of `/proc/<pid>/mountinfo` (see proc(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    /// Mount id.
    pub mount_id: u32,
    /// Parent mount id.
    pub parent_id: u32,
    /// `major:minor` of the filesystem.
    pub dev: String,
    /// The directory of the filesystem that forms the root of this mount (for cgroupfs: the
    /// cgroup that is visible at the mount point, `/` unless bind-mounted from inside).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: String,
    /// Per-mount options.
    pub mount_options: Vec<String>,
    /// Filesystem type (`cgroup`, `cgroup2`, ...).
    pub fstype: String,
    /// Mount source.
    pub source: String,
    /// Per-superblock options: for cgroup v1 these name the controllers (`cpu`, `cpuacct`,
    /// `name=systemd`, ...).
    pub super_options: Vec<String>,
}

/// Undoes the octal escapes (`\040` for a space) the kernel uses in mountinfo paths.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one mountinfo line.
pub fn mountinfo_line(line: &str) -> Result<MountInfo, ParseError> {
    let bad = || ParseError::new("mountinfo line", line);
    let (left, right) = line.split_once(" - ").ok_or_else(bad)?;
    let mut l = left.split_ascii_whitespace();
    let mount_id = l.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let parent_id = l.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let dev = l.next().ok_or_else(bad)?.to_string();
    let root = unescape_octal(l.next().ok_or_else(bad)?);
    let mount_point = unescape_octal(l.next().ok_or_else(bad)?);
    let mount_options = l
        .next()
        .ok_or_else(bad)?
        .split(',')
        .map(str::to_string)
        .collect();
    // Optional fields (shared:N, master:N ...) follow until the separator; they are ignored.
    let mut r = right.split_ascii_whitespace();
    let fstype = r.next().ok_or_else(bad)?.to_string();
    let source = unescape_octal(r.next().ok_or_else(bad)?);
    let super_options = r
        .next()
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    Ok(MountInfo {
        mount_id,
        parent_id,
        dev,
        root,
        mount_point,
        mount_options,
        fstype,
        source,
        super_options,
    })
}

/// Parses a whole mountinfo file, keeping only the cgroup (v1) and cgroup2 mounts.
pub fn cgroup_mounts(mountinfo: &str) -> Result<Vec<MountInfo>, ParseError> {
    let mut out = Vec::new();
    for line in mountinfo.lines().filter(|l| !l.trim().is_empty()) {
        let m = mountinfo_line(line)?;
        if m.fstype == "cgroup" || m.fstype == "cgroup2" {
            out.push(m);
        }
    }
    Ok(out)
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcCgroup {
    /// Hierarchy id; 0 for cgroup v2.
    pub hierarchy_id: u32,
    /// Controllers bound to the hierarchy (`cpu`, `name=systemd`); empty for cgroup v2.
    pub controllers: Vec<String>,
    /// The process's cgroup, relative to the hierarchy's root (as seen from its cgroup
    /// namespace).
    pub path: String,
}

/// Parses `/proc/<pid>/cgroup`.
pub fn proc_cgroup(text: &str) -> Result<Vec<ProcCgroup>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let bad = || ParseError::new("/proc/self/cgroup line", line);
        let mut it = line.splitn(3, ':');
        let hierarchy_id = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let controllers = it
            .next()
            .ok_or_else(bad)?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let path = it.next().ok_or_else(bad)?.to_string();
        if !path.starts_with('/') {
            return Err(bad());
        }
        out.push(ProcCgroup {
            hierarchy_id,
            controllers,
            path,
        });
    }
    Ok(out)
}

/// The counters of `cpu.stat`, v1 (cpu controller: throttling only) or v2 (usage and
/// throttling). Absent keys are `None`; unknown keys are ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// v2: CPU time used by the cgroup and its descendants, microseconds.
    pub usage_usec: Option<u64>,
    /// v2: user time, microseconds.
    pub user_usec: Option<u64>,
    /// v2: system time, microseconds.
    pub system_usec: Option<u64>,
    /// Enforcement periods that elapsed with the cgroup runnable.
    pub nr_periods: Option<u64>,
    /// Periods in which the cgroup was throttled.
    pub nr_throttled: Option<u64>,
    /// Total time throttled, nanoseconds (v1 `throttled_time`, v2 `throttled_usec` * 1000).
    pub throttled_ns: Option<u64>,
}

/// Parses a flat keyed file (`key value` per line) into pairs.
pub fn flat_keyed<'t>(
    text: &'t str,
    what: &'static str,
) -> Result<Vec<(&'t str, u64)>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_ascii_whitespace();
        match (it.next(), it.next().map(str::parse::<u64>), it.next()) {
            (Some(k), Some(Ok(v)), None) => out.push((k, v)),
            _ => return Err(ParseError::new(what, line)),
        }
    }
    Ok(out)
}

/// Parses `cpu.stat` (v1 or v2).
pub fn cpu_stat(text: &str) -> Result<CpuStat, ParseError> {
    let mut s = CpuStat::default();
    for (k, v) in flat_keyed(text, "cpu.stat")? {
        match k {
            "usage_usec" => s.usage_usec = Some(v),
            "user_usec" => s.user_usec = Some(v),
            "system_usec" => s.system_usec = Some(v),
            "nr_periods" => s.nr_periods = Some(v),
            "nr_throttled" => s.nr_throttled = Some(v),
            "throttled_time" => s.throttled_ns = Some(v),
            "throttled_usec" => s.throttled_ns = Some(v.saturating_mul(1000)),
            _ => {}
        }
    }
    Ok(s)
}

/// Parses a file holding one unsigned integer (`cpuacct.usage` in nanoseconds,
/// `memory.current`, `memory.usage_in_bytes`, `pids.current`).
pub fn single_u64(text: &str, what: &'static str) -> Result<u64, ParseError> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| ParseError::new(what, text))
}

/// Parses `cpuacct.usage`: nanoseconds of CPU used by the cgroup and its descendants.
pub fn cpuacct_usage(text: &str) -> Result<u64, ParseError> {
    single_u64(text, "cpuacct.usage")
}

/// `cpuacct.stat`: user and system time in `USER_HZ` ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuacctStat {
    /// User time, ticks.
    pub user_ticks: u64,
    /// System time, ticks.
    pub system_ticks: u64,
}

/// Parses `cpuacct.stat`.
pub fn cpuacct_stat(text: &str) -> Result<CpuacctStat, ParseError> {
    let mut s = CpuacctStat::default();
    let (mut user, mut system) = (false, false);
    for (k, v) in flat_keyed(text, "cpuacct.stat")? {
        match k {
            "user" => (s.user_ticks, user) = (v, true),
            "system" => (s.system_ticks, system) = (v, true),
            _ => {}
        }
    }
    if user && system {
        Ok(s)
    } else {
        Err(ParseError::new(
            "cpuacct.stat (needs user and system)",
            text,
        ))
    }
}

/// Parses `memory.current` (v2) or `memory.usage_in_bytes` (v1).
pub fn memory_usage(text: &str) -> Result<u64, ParseError> {
    single_u64(text, "memory usage")
}

/// Parses a limit file that holds a number or `max` (`pids.max`, `memory.max`); `max` is
/// `None`. Also accepts v1's "unlimited" spelling of a memory limit (a value at or above
/// `i64::MAX` rounded down to pages).
pub fn limit(text: &str, what: &'static str) -> Result<Option<u64>, ParseError> {
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    let v = single_u64(t, what)?;
    // v1 reports "no limit" as PAGE_COUNTER_MAX * PAGE_SIZE, close to i64::MAX.
    Ok(if v >= (i64::MAX as u64) & !0xffff {
        None
    } else {
        Some(v)
    })
}

/// Parses `cgroup.procs`, `tasks` or `cgroup.threads`: one id per line.
pub fn pid_list(text: &str) -> Result<Vec<i32>, ParseError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse::<i32>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ParseError::new("pid list", l))
        })
        .collect()
}

/// `cgroup.events` (v2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// Whether the cgroup or a descendant has a live process.
    pub populated: bool,
    /// Whether the cgroup is frozen.
    pub frozen: bool,
}

/// Parses `cgroup.events`.
pub fn events(text: &str) -> Result<Events, ParseError> {
    let mut e = Events::default();
    let mut seen = false;
    for (k, v) in flat_keyed(text, "cgroup.events")? {
        match k {
            "populated" => (e.populated, seen) = (v != 0, true),
            "frozen" => e.frozen = v != 0,
            _ => {}
        }
    }
    if seen {
        Ok(e)
    } else {
        Err(ParseError::new("cgroup.events (needs populated)", text))
    }
}

/// Parses `cgroup.controllers` or `cgroup.subtree_control`: space-separated names.
pub fn controllers(text: &str) -> Vec<String> {
    text.split_ascii_whitespace().map(str::to_string).collect()
}

/// The fields of `/proc/<pid>/stat` rescon uses (see proc(5)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// The process id (field 1).
    pub pid: i32,
    /// Its state (field 3): `R`, `S`, `D`, `T` (stopped), `Z` (zombie) ...
    pub state: char,
    /// The parent's pid (field 4).
    pub ppid: i32,
    /// The process group (field 5).
    pub pgrp: i32,
    /// User CPU time of every thread, clock ticks (field 14).
    pub utime: u64,
    /// System CPU time of every thread, clock ticks (field 15).
    pub stime: u64,
    /// User CPU time of the children it waited for, clock ticks (field 16).
    pub cutime: u64,
    /// System CPU time of the children it waited for, clock ticks (field 17).
    pub cstime: u64,
    /// Threads (field 20).
    pub threads: u64,
    /// Start time, clock ticks since boot (field 22). Together with the pid it names one
    /// process for the life of the system: a pid is reused only by a process that started
    /// later.
    pub start_time: u64,
}

/// Parses one `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// hold spaces and parentheses: the fields after it start after the last `)`.
///
/// ```
/// let s = "77 (a (b) c) S 1 77 77 0 -1 4194560 0 0 0 0 12 3 4 5 20 0 1 0 9000 0 0";
/// let p = rescon_linux::cgroup::parse::proc_stat(s).unwrap();
/// assert_eq!((p.pid, p.ppid, p.pgrp, p.utime, p.stime, p.start_time), (77, 1, 77, 12, 3, 9000));
/// ```
pub fn proc_stat(stat: &str) -> Result<ProcStat, ParseError> {
    let bad = || ParseError::new("/proc/<pid>/stat", stat);
    let close = stat.rfind(')').ok_or_else(bad)?;
    let pid = stat
        .split_ascii_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(bad)?;
    // `rest` starts with field 3: the n-th field is rest[n - 3].
    let rest: Vec<&str> = stat[close + 1..]
        .split_ascii_whitespace()
        .take(20)
        .collect();
    if rest.len() < 20 {
        return Err(bad());
    }
    let num = |n: usize| rest[n - 3].parse::<u64>().map_err(|_| bad());
    let int = |n: usize| rest[n - 3].parse::<i32>().map_err(|_| bad());
    let mut state = rest[0].chars();
    Ok(ProcStat {
        pid,
        state: match (state.next(), state.next()) {
            (Some(c), None) => c,
            _ => return Err(bad()),
        },
        ppid: int(4)?,
        pgrp: int(5)?,
        utime: num(14)?,
        stime: num(15)?,
        cutime: num(16)?,
        cstime: num(17)?,
        threads: num(20)?,
        start_time: num(22)?,
    })
}

/// The start time of a process (field 22 of `/proc/<pid>/stat`, clock ticks since boot).
/// Together with the pid it names one process for the life of the system: a pid is reused
/// only by a process that started later.
pub fn proc_start_time(stat: &str) -> Result<u64, ParseError> {
    proc_stat(stat).map(|p| p.start_time)
}

/// `freezer.state` (v1): `THAWED`, `FREEZING` or `FROZEN`.
pub fn freezer_state(text: &str) -> Result<FreezerState, ParseError> {
    match text.trim() {
        "THAWED" => Ok(FreezerState::Thawed),
        "FREEZING" => Ok(FreezerState::Freezing),
        "FROZEN" => Ok(FreezerState::Frozen),
        _ => Err(ParseError::new("freezer.state", text)),
    }
}

/// The state of a v1 freezer cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreezerState {
    /// Running.
    Thawed,
    /// Being frozen: some tasks may still run.
    Freezing,
    /// Every task is frozen.
    Frozen,
}

#[cfg(test)]
pub(crate) mod fixtures {
    /// This machine's hybrid layout (v1 per controller, cgroup2 with membership only).
    pub const HYBRID_MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A classic v1 distribution: cpu and cpuacct co-mounted, optional fields present.
    pub const V1_MOUNTINFO: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,xattr,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,pids
";

    /// A modern v2-only distribution.
    pub const V2_MOUNTINFO: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn mountinfo_hybrid() {
        let m = cgroup_mounts(HYBRID_MOUNTINFO).unwrap();
        assert_eq!(m.len(), 8);
        assert_eq!(m[0].mount_point, "/sys/fs/cgroup/cpu");
        assert_eq!(m[0].super_options, vec!["rw", "cpu"]);
        assert_eq!(m[0].root, "/");
        assert_eq!(m[6].super_options, vec!["rw", "name=systemd"]);
        assert_eq!(m[7].fstype, "cgroup2");
        assert_eq!(m[7].mount_point, "/sys/fs/cgroup/unified");
        assert_eq!(m[7].dev, "0:38");
    }

    #[test]
    fn mountinfo_v1_optional_fields() {
        let m = cgroup_mounts(V1_MOUNTINFO).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].mount_point, "/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(m[1].super_options, vec!["rw", "cpu", "cpuacct"]);
        assert_eq!(m[1].mount_options[0], "rw");
        assert_eq!(m[0].super_options, vec!["rw", "xattr", "name=systemd"]);
    }

    #[test]
    fn mountinfo_v2_and_escapes() {
        let m = cgroup_mounts(V2_MOUNTINFO).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].fstype, "cgroup2");
        assert_eq!(
            m[0].super_options,
            vec!["rw", "nsdelegate", "memory_recursiveprot"]
        );
        let l = mountinfo_line("50 31 0:40 /my\\040dir /mnt/cg\\040two rw - cgroup2 cgroup2 rw")
            .unwrap();
        assert_eq!(l.root, "/my dir");
        assert_eq!(l.mount_point, "/mnt/cg two");
    }

    #[test]
    fn mountinfo_rejects_garbage() {
        let e = mountinfo_line("12 not a mountinfo line").unwrap_err();
        assert_eq!(e.what(), "mountinfo line");
        assert!(cgroup_mounts("x y\n").is_err());
    }

    #[test]
    fn proc_cgroup_hybrid_and_v2() {
        let h =
            proc_cgroup("9:name=systemd:/\n4:memory:/process_api/8f3b\n1:cpu:/\n0::/\n").unwrap();
        assert_eq!(h.len(), 4);
        assert_eq!(h[0].controllers, vec!["name=systemd"]);
        assert_eq!(h[1].path, "/process_api/8f3b");
        assert_eq!(h[3].hierarchy_id, 0);
        assert!(h[3].controllers.is_empty());
        let v1 = proc_cgroup("4:cpu,cpuacct:/system.slice/a.service\n").unwrap();
        assert_eq!(v1[0].controllers, vec!["cpu", "cpuacct"]);
        // A path may contain ':'.
        let c = proc_cgroup("0::/odd:name\n").unwrap();
        assert_eq!(c[0].path, "/odd:name");
        assert!(proc_cgroup("0::relative\n").is_err());
        assert!(proc_cgroup("x::/\n").is_err());
    }

    #[test]
    fn cpu_stat_v2() {
        let s = cpu_stat(
            "usage_usec 10234\nuser_usec 8000\nsystem_usec 2234\nnr_periods 12\nnr_throttled 3\nthrottled_usec 4500\nnr_bursts 0\nburst_usec 0\n",
        )
        .unwrap();
        assert_eq!(s.usage_usec, Some(10234));
        assert_eq!(s.user_usec, Some(8000));
        assert_eq!(s.system_usec, Some(2234));
        assert_eq!(s.nr_periods, Some(12));
        assert_eq!(s.nr_throttled, Some(3));
        assert_eq!(s.throttled_ns, Some(4_500_000));
        // The membership-only cgroup2 of a hybrid: core stats only.
        let m = cpu_stat("usage_usec 5\nuser_usec 3\nsystem_usec 2\n").unwrap();
        assert_eq!((m.usage_usec, m.nr_periods), (Some(5), None));
    }

    #[test]
    fn cpu_stat_v1() {
        let s = cpu_stat(
            "nr_periods 20\nnr_throttled 14\nthrottled_time 1234567890\nnr_bursts 0\nburst_time 0\n",
        )
        .unwrap();
        assert_eq!(s.usage_usec, None);
        assert_eq!(s.nr_throttled, Some(14));
        assert_eq!(s.throttled_ns, Some(1_234_567_890));
        assert!(cpu_stat("usage_usec lots\n").is_err());
        assert!(cpu_stat("usage_usec 1 2\n").is_err());
    }

    #[test]
    fn cpuacct_files() {
        assert_eq!(cpuacct_usage("9876543210\n").unwrap(), 9_876_543_210);
        assert!(cpuacct_usage("-1\n").is_err());
        assert!(cpuacct_usage("").is_err());
        let s = cpuacct_stat("user 136457\nsystem 10502\n").unwrap();
        assert_eq!((s.user_ticks, s.system_ticks), (136_457, 10_502));
        assert!(cpuacct_stat("user 1\n").is_err());
    }

    #[test]
    fn memory_pids_limits() {
        assert_eq!(memory_usage("1048576\n").unwrap(), 1 << 20);
        assert_eq!(single_u64("3\n", "pids.current").unwrap(), 3);
        assert_eq!(limit("max\n", "pids.max").unwrap(), None);
        assert_eq!(limit("64\n", "pids.max").unwrap(), Some(64));
        // v1 memory.limit_in_bytes when unlimited.
        assert_eq!(
            limit("9223372036854771712\n", "memory.limit_in_bytes").unwrap(),
            None
        );
        assert_eq!(
            limit("67108864\n", "memory.limit_in_bytes").unwrap(),
            Some(64 << 20)
        );
        assert!(limit("lots", "memory.max").is_err());
    }

    #[test]
    fn pid_lists_and_events() {
        assert_eq!(pid_list("12\n345\n").unwrap(), vec![12, 345]);
        assert_eq!(pid_list("").unwrap(), Vec::<i32>::new());
        assert!(pid_list("12\nabc\n").is_err());
        assert!(pid_list("0\n").is_err());
        let e = events("populated 1\nfrozen 0\n").unwrap();
        assert!(e.populated && !e.frozen);
        assert!(events("frozen 1\n").is_err());
        assert_eq!(
            controllers("cpu io memory pids\n"),
            vec!["cpu", "io", "memory", "pids"]
        );
        assert!(controllers("\n").is_empty());
    }

    #[test]
    fn proc_stat_fields() {
        // A real line (bash) and one whose name holds spaces and parentheses.
        let bash = "1234 (bash) S 1200 1234 1234 34816 5678 4194304 2561 19410 0 3 41 17 212 80 20 0 1 0 1290543 8982528 1271 18446744073709551615 1 1 0 0 0 0 65536 3686404 1266761467 0 0 0 17 1 0 0 0 0 0";
        let p = proc_stat(bash).unwrap();
        assert_eq!(
            p,
            ProcStat {
                pid: 1234,
                state: 'S',
                ppid: 1200,
                pgrp: 1234,
                utime: 41,
                stime: 17,
                cutime: 212,
                cstime: 80,
                threads: 1,
                start_time: 1_290_543,
            }
        );
        let odd = "9 (x) T) R 2 3 4 0 -1 0 0 0 0 0 7 8 0 0 20 0 4 0 55 0 0";
        let p = proc_stat(odd).unwrap();
        assert_eq!(
            (p.state, p.ppid, p.pgrp, p.utime, p.threads, p.start_time),
            ('R', 2, 3, 7, 4, 55)
        );
        for bad in [
            "",
            "9 (x",
            "9 (x) R 2 3",
            "x (y) R 2 3 4 0 -1 0 0 0 0 0 7 8 0 0 20 0 4 0 55",
            "9 (x) RR 2 3 4 0 -1 0 0 0 0 0 7 8 0 0 20 0 4 0 55",
        ] {
            assert!(proc_stat(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn start_time() {
        let stat = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(proc_start_time(stat).unwrap(), 987_654);
        assert!(proc_start_time("4242 (x) S 1").is_err());
        assert!(proc_start_time("no parens").is_err());
    }

    #[test]
    fn freezer() {
        assert_eq!(freezer_state("FROZEN\n").unwrap(), FreezerState::Frozen);
        assert_eq!(freezer_state("THAWED\n").unwrap(), FreezerState::Thawed);
        assert!(freezer_state("SLUSHY").is_err());
    }
}
