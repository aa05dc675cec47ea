//! What one drain of the kernel maps yields: per-key deltas of one interval and the threads' CPU
//! accounting as of its end.

use std::time::Duration;

use kvmtrace_common::{Counter, DetailKey, LatencyKey};

/// What changed for one latency key during an interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyDelta {
    pub count: u64,
    pub total_ns: u64,
    /// Minimum and maximum of this interval (recordings of version 1 hold them since attach;
    /// both merge the same way into a whole recording's).
    pub min_ns: u64,
    pub max_ns: u64,
    /// (bucket index, samples) for the buckets that changed.
    pub buckets: Vec<(u16, u32)>,
}

/// One drain of the kernel maps.
#[derive(Clone, Debug, Default)]
pub struct Interval {
    /// Time since recording started, at the end of this interval.
    pub at: Duration,
    /// Each key once, in no particular order (a live drain leaves them in the kernel's hash
    /// order: sorting tens of thousands of keys per interval would cost more than reading them).
    pub latency: Vec<(LatencyKey, LatencyDelta)>,
    /// Each key once, in no particular order, as `latency`.
    pub details: Vec<(DetailKey, u64)>,
    /// Cumulative values of every [`Counter`], indexed by its discriminant.
    pub counters: [u64; Counter::COUNT as usize],
    /// Cumulative CPU accounting of every traced thread, as of the end of this interval.
    pub threads: Vec<ThreadCpu>,
    /// Host stack samples (`--stacks`; empty otherwise).
    pub stacks: super::stacks::StackBatch,
    /// Slow exits (`--than`; empty otherwise).
    pub slow: super::slow::SlowBatch,
    /// Guest RIPs per exit reason (`--guest-rips`; empty otherwise).
    pub guest_rips: super::rips::RipBatch,
}

/// Where a vCPU thread's time went since it was first seen (cumulative ns). The kernel's view
/// (KVM_RUN from kvm_fpu, off-CPU from sched_switch) and, to cross-check it, procfs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCpu {
    pub tgid: u32,
    pub tid: u32,
    /// Wall time since the thread's first event.
    pub tracked_ns: u64,
    /// Wall time inside KVM_RUN.
    pub run_ns: u64,
    pub off_run_blocked_ns: u64,
    pub off_run_runnable_ns: u64,
    pub off_user_blocked_ns: u64,
    pub off_user_runnable_ns: u64,
    /// Run time from /proc (schedstat, else utime + stime) since recording started, when read
    /// in this interval: with many threads each is read only every few intervals (see
    /// `host::procfs_cpu`).
    pub procfs_ns: Option<u64>,
    /// `tracked_ns` as `procfs_ns` was read: the wall time the cross-check covers. Not stored in
    /// recordings: an interval that read procfs has both.
    pub procfs_tracked_ns: u64,
}

impl ThreadCpu {
    /// On-CPU time inside KVM_RUN (the guest and in-kernel exit handling).
    pub fn in_run_on_cpu(&self) -> u64 {
        self.run_ns
            .saturating_sub(self.off_run_blocked_ns + self.off_run_runnable_ns)
    }

    /// On-CPU time outside KVM_RUN: the VMM's user space (and its syscalls).
    pub fn vmm_on_cpu(&self) -> u64 {
        self.tracked_ns
            .saturating_sub(self.run_ns)
            .saturating_sub(self.off_user_blocked_ns + self.off_user_runnable_ns)
    }

    pub fn on_cpu(&self) -> u64 {
        self.in_run_on_cpu() + self.vmm_on_cpu()
    }

    /// Becomes `newer`, the thread's record of a later interval, keeping this record's procfs
    /// reading where `newer` has none (its interval did not read procfs for this thread, or
    /// could not).
    pub fn advance_to(&mut self, newer: &ThreadCpu) {
        let (procfs_ns, procfs_tracked_ns) = (self.procfs_ns, self.procfs_tracked_ns);
        *self = *newer;
        if self.procfs_ns.is_none() {
            self.procfs_ns = procfs_ns;
            self.procfs_tracked_ns = procfs_tracked_ns;
        }
    }

    /// procfs's run time and the wall time it covers, when procfs was read in that span.
    pub fn procfs_share(&self) -> Option<(u64, u64)> {
        self.procfs_ns
            .filter(|_| self.procfs_tracked_ns > 0)
            .map(|p| (p, self.procfs_tracked_ns))
    }

    /// `self - earlier`, field by field (for time windows).
    pub fn since(&self, earlier: &ThreadCpu) -> ThreadCpu {
        let (procfs_ns, procfs_tracked_ns) = match (self.procfs_ns, earlier.procfs_ns) {
            (Some(a), Some(b)) => (
                Some(a.saturating_sub(b)),
                self.procfs_tracked_ns
                    .saturating_sub(earlier.procfs_tracked_ns),
            ),
            (a, _) => (a, self.procfs_tracked_ns),
        };
        ThreadCpu {
            tgid: self.tgid,
            tid: self.tid,
            tracked_ns: self.tracked_ns.saturating_sub(earlier.tracked_ns),
            run_ns: self.run_ns.saturating_sub(earlier.run_ns),
            off_run_blocked_ns: self
                .off_run_blocked_ns
                .saturating_sub(earlier.off_run_blocked_ns),
            off_run_runnable_ns: self
                .off_run_runnable_ns
                .saturating_sub(earlier.off_run_runnable_ns),
            off_user_blocked_ns: self
                .off_user_blocked_ns
                .saturating_sub(earlier.off_user_blocked_ns),
            off_user_runnable_ns: self
                .off_user_runnable_ns
                .saturating_sub(earlier.off_user_runnable_ns),
            procfs_ns,
            procfs_tracked_ns,
        }
    }
}
