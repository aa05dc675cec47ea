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
///
/// One read per thread costs ~2 us of the recorder's CPU (a pread of schedstat): a fifth of its
/// CPU with 1 000 vCPU threads. Beyond [`READS_PER_INTERVAL`] threads each is read every few
/// intervals, in turn (a thread's first interval and the last one read every thread): procfs's
/// figure is then the one of its last read, set against the wall time at that read, so the
/// cross-check stays exact over the span it covers and its cost per interval stays flat.
#[derive(Default)]
pub struct ProcfsCpu {
    /// Value at the start (or first sight) of each (VM pid, tid).
    base: BTreeMap<(u32, u32), u64>,
    /// Each thread's schedstat file, kept open (see [`OpenSchedstats`]).
    open: OpenSchedstats,
    /// Intervals filled so far: whose turn it is.
    fills: u64,
}

/// How many threads' procfs figures an interval reads, at most (beyond, every thread is read
/// every `threads / READS_PER_INTERVAL` intervals, rounded up).
pub const READS_PER_INTERVAL: usize = 256;

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
                    procfs.base.insert((vm.pid, t.tid), ns);
                }
            }
        }
        procfs
    }

    /// Sets `procfs_ns` (its run time since it was first seen) and `procfs_tracked_ns` of the
    /// threads of `iv` whose turn it is, or of all of them with `every_thread` (the last
    /// interval); the others' stay None (the aggregate keeps their last reading).
    pub fn fill(&mut self, host: &Host, iv: &mut Interval, every_thread: bool) {
        let turns = if every_thread {
            1
        } else {
            iv.threads.len().div_ceil(READS_PER_INTERVAL).max(1) as u64
        };
        for t in &mut iv.threads {
            let id = (t.tgid, t.tid);
            let first = !self.base.contains_key(&id);
            if !first && !(self.fills + u64::from(t.tid)).is_multiple_of(turns) {
                continue;
            }
            let now = self
                .open
                .run_ns(host, t.tgid, t.tid)
                .or_else(|| host.thread_cpu_ns(t.tgid, t.tid));
            if let Some(now) = now {
                let base = *self.base.entry(id).or_insert(now);
                t.procfs_ns = Some(now.saturating_sub(base));
                t.procfs_tracked_ns = t.tracked_ns;
            }
        }
        self.fills += 1;
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
        procfs.fill(&host, &mut iv, false);
        assert_eq!(iv.threads[0].procfs_ns, Some(0));
        assert_eq!(procfs.open.files.len(), 2);

        write_schedstat(dir.path(), 100, 101, 5_300);
        write_schedstat(dir.path(), 100, 102, 7_900);
        let mut iv = interval_of(&[(100, 101), (100, 102)]);
        procfs.fill(&host, &mut iv, false);
        assert_eq!(iv.threads[0].procfs_ns, Some(300));
        assert_eq!(iv.threads[1].procfs_ns, Some(900));

        let mut iv = interval_of(&[(100, 102)]);
        procfs.fill(&host, &mut iv, false);
        assert_eq!(procfs.open.files.keys().collect::<Vec<_>>(), [&102]);
    }

    /// Beyond READS_PER_INTERVAL threads, an interval reads each thread's figure in turn (every
    /// thread at its first interval and at the last), at most READS_PER_INTERVAL (rounded up per
    /// turn), and each figure is procfs's at that read, with the wall time it covers.
    #[test]
    fn many_threads_are_read_in_turn_and_all_at_the_end() {
        let (dir, host) = fake_proc();
        let n = 2 * READS_PER_INTERVAL as u32 + 10; // three turns
        let tids: Vec<(u32, u32)> = (0..n).map(|i| (100, 1_000 + i)).collect();
        let write_all = |ns: u64| {
            for &(tgid, tid) in &tids {
                write_schedstat(dir.path(), tgid, tid, ns + u64::from(tid));
            }
        };
        write_all(0);
        let mut procfs = ProcfsCpu::at_start(&host, &BTreeMap::new());
        let fill = |procfs: &mut ProcfsCpu, tracked_s: u64, every: bool| {
            let mut iv = interval_of(&tids);
            for t in &mut iv.threads {
                t.tracked_ns = tracked_s * 1_000_000_000;
            }
            procfs.fill(&host, &mut iv, every);
            iv
        };
        assert!(
            fill(&mut procfs, 1, false)
                .threads
                .iter()
                .all(|t| t.procfs_ns == Some(0))
        );
        let mut read_at = vec![0u64; tids.len()];
        for second in 2..=7 {
            write_all(second * 1_000);
            let iv = fill(&mut procfs, second, false);
            let read: Vec<&ThreadCpu> = iv
                .threads
                .iter()
                .filter(|t| t.procfs_ns.is_some())
                .collect();
            assert!(read.len() <= READS_PER_INTERVAL + 1, "{} read", read.len());
            for t in read {
                assert_eq!(t.procfs_ns, Some(second * 1_000));
                assert_eq!(t.procfs_tracked_ns, second * 1_000_000_000);
                read_at[(t.tid - 1_000) as usize] = second;
            }
        }
        // Each thread was read in each run of three intervals, once.
        assert!(read_at.iter().all(|&s| s >= 5), "{read_at:?}");
        write_all(9_000);
        let last = fill(&mut procfs, 8, true);
        assert!(
            last.threads
                .iter()
                .all(|t| t.procfs_ns == Some(9_000) && t.procfs_tracked_ns == 8_000_000_000)
        );
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
        procfs.fill(&host, &mut interval_of(&tids), false);
        for tid in [101, 102, 103] {
            write_schedstat(dir.path(), 100, tid, 1_000 + u64::from(tid));
        }
        let mut iv = interval_of(&tids);
        procfs.fill(&host, &mut iv, false);
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
