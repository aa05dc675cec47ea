//! The cross-check of the kernel's CPU accounting: each traced thread's run time from procfs.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    os::unix::fs::FileExt as _,
};

use super::{
    Host,
    vm::{run_ns_of_schedstat, thread_dir},
};
use crate::model::{Interval, identity::Vm};

/// procfs CPU time of each traced thread since recording started (or since it was first seen),
/// the cross-check of the kernel's accounting.
#[derive(Default)]
pub struct ProcfsCpu {
    /// Value at the start (or first sight) of each thread.
    base: BTreeMap<u32, u64>,
    /// Last value read: a thread that exited keeps it.
    last: BTreeMap<u32, u64>,
    /// Each thread's schedstat file, kept open (see [`OpenSchedstats`]).
    open: OpenSchedstats,
}

impl ProcfsCpu {
    /// procfs CPU time of every known thread as counting starts: the cross-check's baseline.
    pub fn at_start(host: &Host, vms: &BTreeMap<u32, Vm>) -> ProcfsCpu {
        let mut procfs = ProcfsCpu {
            open: OpenSchedstats::new(),
            ..ProcfsCpu::default()
        };
        for vm in vms.values() {
            for t in &vm.threads {
                if let Some(ns) = host.thread_cpu_ns(vm.pid, t.tid) {
                    procfs.base.insert(t.tid, ns);
                }
            }
        }
        procfs
    }

    /// Sets each thread's `procfs_ns` in `iv`: its run time since it was first seen.
    pub fn fill(&mut self, host: &Host, iv: &mut Interval) {
        for t in &mut iv.threads {
            let now = self
                .open
                .run_ns(host, t.tgid, t.tid)
                .or_else(|| host.thread_cpu_ns(t.tgid, t.tid));
            if let Some(now) = now {
                self.base.entry(t.tid).or_insert(now);
                self.last.insert(t.tid, now);
            }
            if let (Some(b), Some(l)) = (self.base.get(&t.tid), self.last.get(&t.tid)) {
                t.procfs_ns = Some(l.saturating_sub(*b));
            }
        }
        self.open.keep_only(iv.threads.iter().map(|t| t.tid));
    }
}

/// Each traced thread's `/proc/PID/task/TID/schedstat`, opened once and read again at offset 0
/// every interval: one pread instead of a path walk, an open, a read and a close (the opens
/// were a tenth of the recorder's CPU with 200 vCPU threads). A file stays bound to the thread
/// it was opened for: once that thread is gone its reads fail, so a reused tid is never read
/// through an old file.
#[derive(Default)]
struct OpenSchedstats {
    files: HashMap<u32, File>,
    /// How many files may stay open: half the open-file limit (raised to its hard limit), so the
    /// tracer's own descriptors and the fallback's opens always have room.
    max_open: usize,
}

impl OpenSchedstats {
    fn new() -> OpenSchedstats {
        OpenSchedstats {
            max_open: raise_open_file_limit() as usize / 2,
            ..OpenSchedstats::default()
        }
    }

    /// Thread `tid`'s run time, from its open file (opened now if need be). None when the file
    /// cannot be opened or read, or holds no run time (a kernel without schedstats): the caller
    /// falls back to [`Host::thread_cpu_ns`].
    fn run_ns(&mut self, host: &Host, tgid: u32, tid: u32) -> Option<u64> {
        if !self.files.contains_key(&tid) {
            if self.files.len() >= self.max_open {
                return None;
            }
            let path = thread_dir(&host.proc_root, tgid, tid).join("schedstat");
            self.files.insert(tid, File::open(path).ok()?);
        }
        let mut buf = [0u8; 128];
        let Ok(n) = self.files.get(&tid)?.read_at(&mut buf, 0) else {
            // The thread is gone.
            self.files.remove(&tid);
            return None;
        };
        run_ns_of_schedstat(std::str::from_utf8(&buf[..n]).ok()?)
    }

    /// Closes the files of threads not in `tids` (gone, or no longer traced).
    fn keep_only(&mut self, tids: impl Iterator<Item = u32>) {
        if self.files.is_empty() {
            return;
        }
        let keep: std::collections::HashSet<u32> = tids.collect();
        self.files.retain(|tid, _| keep.contains(tid));
    }
}

/// Raises the soft limit on open files to the hard one (often 1024 against 524288) and returns
/// the soft limit now in force.
fn raise_open_file_limit() -> u64 {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit struct for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) } != 0 {
        return 1024;
    }
    if rlim.rlim_cur < rlim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: rlim.rlim_max,
            rlim_max: rlim.rlim_max,
        };
        // SAFETY: a valid rlimit struct; on failure the old limit stays.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    rlim.rlim_cur
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use super::*;
    use crate::model::ThreadCpu;

    fn interval_of(tids: &[(u32, u32)]) -> Interval {
        Interval {
            threads: tids
                .iter()
                .map(|&(tgid, tid)| ThreadCpu {
                    tgid,
                    tid,
                    ..ThreadCpu::default()
                })
                .collect(),
            ..Interval::default()
        }
    }

    /// An empty fake /proc (and /run) and the host over it.
    fn fake_proc() -> (tempfile::TempDir, Host) {
        let dir = tempfile::tempdir().unwrap();
        let host = Host {
            proc_root: dir.path().into(),
            run_root: dir.path().into(),
        };
        (dir, host)
    }

    fn write_schedstat(root: &Path, tgid: u32, tid: u32, run_ns: u64) {
        let dir = thread_dir(root, tgid, tid);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("schedstat"), format!("{run_ns} 0 0\n")).unwrap();
    }

    /// The open file is read again from the start each interval (what it holds now, not what it
    /// held when opened), and closed once its thread is no longer in the intervals.
    #[test]
    fn open_files_are_reread_and_closed_with_their_threads() {
        let (dir, host) = fake_proc();
        write_schedstat(dir.path(), 100, 101, 5_000);
        write_schedstat(dir.path(), 100, 102, 7_000);
        let mut procfs = ProcfsCpu::at_start(&host, &BTreeMap::new());
        let mut iv = interval_of(&[(100, 101), (100, 102)]);
        procfs.fill(&host, &mut iv);
        assert_eq!(iv.threads[0].procfs_ns, Some(0));
        assert_eq!(procfs.open.files.len(), 2);

        write_schedstat(dir.path(), 100, 101, 5_300);
        write_schedstat(dir.path(), 100, 102, 7_900);
        let mut iv = interval_of(&[(100, 101), (100, 102)]);
        procfs.fill(&host, &mut iv);
        assert_eq!(iv.threads[0].procfs_ns, Some(300));
        assert_eq!(iv.threads[1].procfs_ns, Some(900));

        let mut iv = interval_of(&[(100, 102)]);
        procfs.fill(&host, &mut iv);
        assert_eq!(procfs.open.files.keys().collect::<Vec<_>>(), [&102]);
    }

    /// Past its limit of open files, a thread is read the old way (open, read, close): every
    /// thread still has its procfs figure.
    #[test]
    fn threads_past_the_open_file_limit_are_read_all_the_same() {
        let (dir, host) = fake_proc();
        for tid in [101, 102, 103] {
            write_schedstat(dir.path(), 100, tid, 1_000);
        }
        let mut procfs = ProcfsCpu::at_start(&host, &BTreeMap::new());
        procfs.open.max_open = 1;
        let tids = [(100, 101), (100, 102), (100, 103)];
        procfs.fill(&host, &mut interval_of(&tids));
        for tid in [101, 102, 103] {
            write_schedstat(dir.path(), 100, tid, 1_000 + u64::from(tid));
        }
        let mut iv = interval_of(&tids);
        procfs.fill(&host, &mut iv);
        let got: Vec<Option<u64>> = iv.threads.iter().map(|t| t.procfs_ns).collect();
        assert_eq!(got, [Some(101), Some(102), Some(103)]);
        assert_eq!(procfs.open.files.len(), 1);
    }

    /// On this kernel: a thread's schedstat read again at offset 0 through the same file gives
    /// its run time now (procfs files rewind on a read at 0).
    #[test]
    fn a_real_schedstat_file_rereads_at_offset_zero() {
        let host = Host::default();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let spin = || {
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_millis(20) {
                std::hint::black_box(0);
            }
        };
        // A thread's run time is brought up to date at the scheduler's tick: a thread that has
        // not run a tick yet reads 0 ("no run time").
        spin();
        let mut open = OpenSchedstats::new();
        let before = open.run_ns(&host, std::process::id(), tid).unwrap();
        spin();
        let after = open.run_ns(&host, std::process::id(), tid).unwrap();
        assert_eq!(open.files.len(), 1);
        assert!(
            after >= before + 10_000_000,
            "20 ms of spinning: {before} -> {after}"
        );
    }
}
