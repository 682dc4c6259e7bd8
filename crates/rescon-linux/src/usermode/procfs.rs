//! Which processes a target is, and how much CPU they used: from `/proc/<pid>/stat`.
//!
//! A target's CPU is the sum of its live members' `utime + stime` (every thread's, in clock
//! ticks), plus what members that went away had used when last seen: it only grows. The CPU of
//! children a member reaped (`cutime`) is not added: it was counted while they were members.
//! What a member uses between the last look and its exit is lost (at most one tick's worth).

use super::Target;
use crate::cgroup::parse::{self, ProcStat};
use std::collections::HashMap;
use std::path::Path;

/// Every process under `proc_root` (`/proc`), as its stat line says. Processes that go away
/// during the scan are skipped.
pub(crate) fn scan(proc_root: &Path) -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let name = e.file_name();
        let pid: i32 = name.to_str()?.parse().ok()?;
        read(proc_root, pid)
    })
    .collect()
}

/// One process's stat, if it is there.
pub(crate) fn read(proc_root: &Path, pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse::proc_stat(&text).ok()
}

/// The members of `target` among `all`: the process group's processes, or the tree's root and
/// its descendants (by parent pid), as `(pid, start time)`.
pub(crate) fn members_of(target: &Target, all: &[ProcStat]) -> Vec<(i32, u64)> {
    match *target {
        Target::ProcessGroup(pgid) => all
            .iter()
            .filter(|p| p.pgrp == pgid)
            .map(|p| (p.pid, p.start_time))
            .collect(),
        Target::Tree(root) => {
            let mut children: HashMap<i32, Vec<&ProcStat>> = HashMap::new();
            for p in all {
                children.entry(p.ppid).or_default().push(p);
            }
            let mut out = Vec::new();
            let mut stack: Vec<&ProcStat> = all.iter().filter(|p| p.pid == root).collect();
            while let Some(p) = stack.pop() {
                out.push((p.pid, p.start_time));
                if let Some(kids) = children.get(&p.pid) {
                    // A parent listed as its own child (pid 0's children, a corrupt
                    // snapshot) must not loop.
                    stack.extend(kids.iter().filter(|k| k.pid != p.pid));
                }
            }
            out.sort_unstable();
            out.dedup();
            out
        }
    }
}

/// A target's members and the CPU they used.
#[derive(Debug, Default)]
pub(crate) struct Members {
    /// By (pid, start time): CPU ticks when last seen.
    live: HashMap<(i32, u64), u64>,
    /// CPU ticks of members that went away.
    departed: u64,
}

impl Members {
    /// Takes a new membership from a scan; members no longer in it go to `departed`.
    pub(crate) fn update(&mut self, now: &[(i32, u64)]) {
        let mut live = HashMap::with_capacity(now.len());
        for key in now {
            live.insert(*key, self.live.remove(key).unwrap_or(0));
        }
        self.departed += self.live.values().sum::<u64>();
        self.live = live;
    }

    /// Whether no member is known.
    pub(crate) fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The members' pids.
    pub(crate) fn pids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.live.keys().map(|(p, _)| *p).collect();
        v.sort_unstable();
        v
    }

    /// Records one member's stat (ignored if it is not a member, or is another process by the
    /// same pid).
    pub(crate) fn record(&mut self, p: &ProcStat) {
        if let Some(t) = self.live.get_mut(&(p.pid, p.start_time)) {
            *t = (*t).max(p.utime + p.stime);
        }
    }

    /// Reads every member's stat; a member gone since the scan keeps its last value.
    pub(crate) fn sample(&mut self, proc_root: &Path) {
        for pid in self.pids() {
            if let Some(p) = read(proc_root, pid) {
                self.record(&p);
            }
        }
    }

    /// The CPU used so far, clock ticks.
    pub(crate) fn cpu_ticks(&self) -> u64 {
        self.departed + self.live.values().sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, pgrp: i32, cpu: u64) -> ProcStat {
        ProcStat {
            pid,
            state: 'R',
            ppid,
            pgrp,
            utime: cpu,
            stime: 0,
            cutime: 0,
            cstime: 0,
            threads: 1,
            start_time: 1000 + pid as u64,
        }
    }

    fn pids(m: Vec<(i32, u64)>) -> Vec<i32> {
        m.into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn group_and_tree_membership() {
        // 10 (group 10) forks 11 and 12; 12 forks 13, which left for a group of its own;
        // 20 is unrelated; 1 is init.
        let all = [
            p(1, 0, 1, 0),
            p(10, 1, 10, 0),
            p(11, 10, 10, 0),
            p(12, 10, 10, 0),
            p(13, 12, 13, 0),
            p(20, 1, 20, 0),
        ];
        assert_eq!(
            pids(members_of(&Target::ProcessGroup(10), &all)),
            [10, 11, 12]
        );
        assert_eq!(pids(members_of(&Target::Tree(10), &all)), [10, 11, 12, 13]);
        assert_eq!(pids(members_of(&Target::Tree(13), &all)), [13]);
        assert!(members_of(&Target::Tree(99), &all).is_empty());
        // A self-parented entry does not loop.
        assert_eq!(pids(members_of(&Target::Tree(5), &[p(5, 5, 5, 0)])), [5]);
    }

    #[test]
    fn cpu_only_grows_as_members_come_and_go() {
        let mut m = Members::default();
        let a = p(10, 1, 10, 5);
        let b = p(11, 10, 10, 3);
        m.update(&[(10, a.start_time), (11, b.start_time)]);
        m.record(&a);
        m.record(&b);
        assert_eq!(m.cpu_ticks(), 8);
        // 11 exits (its CPU stays counted), 12 arrives.
        let c = p(12, 10, 10, 1);
        m.update(&[(10, a.start_time), (12, c.start_time)]);
        m.record(&c);
        m.record(&p(10, 1, 10, 9));
        assert_eq!(m.cpu_ticks(), 3 + 9 + 1);
        // Another process by a member's pid (pid reuse) is not that member.
        let mut impostor = p(12, 1, 10, 500);
        impostor.start_time += 1;
        m.record(&impostor);
        assert_eq!(m.cpu_ticks(), 13);
        assert_eq!(m.pids(), [10, 12]);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        let all = scan(Path::new("/proc"));
        let mine = all
            .iter()
            .find(|p| p.pid == me)
            .expect("this process in /proc");
        assert_eq!(
            read(Path::new("/proc"), me).unwrap().start_time,
            mine.start_time
        );
        assert!(pids(members_of(&Target::Tree(me), &all)).contains(&me));
    }
}
