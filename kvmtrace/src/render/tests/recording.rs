//! Synthetic recordings: what the kernel maps would hold at each drain, turned into
//! [`Interval`]s, applied to an [`Aggregate`] and built into a [`Report`] by [`report::build`],
//! as `record` and `report` do.

use std::{collections::BTreeMap, time::Duration};

use kvmtrace_common::{
    Counter, Detail, DetailKey, DetailKind, LatencyKey, MmioAccess, MsrDir, PortDir, UserspaceExit,
    VCPU_UNKNOWN, bucket_index,
};

use crate::{
    analyze::storms::Config as StormConfig,
    model::{
        Aggregate, InFlight, Interval, LatencyDelta, ThreadCpu,
        identity::{Thread, Vm},
    },
    report::{self, Context, Report},
};

/// SVM exit codes (kvm_exit's isa 2).
pub(super) const IO: u32 = 0x7b;
pub(super) const CPUID: u32 = 0x72;
pub(super) const HLT: u32 = 0x78;
pub(super) const MSR: u32 = 0x7c;
pub(super) const NPF: u32 = 0x400;
const ISA_SVM: u32 = 2;
/// KVM_EXIT_* codes.
pub(super) const KVM_EXIT_IO: u32 = 2;
pub(super) const KVM_EXIT_MMIO: u32 = 6;

/// The kvm tracepoints a full kernel has, as the recorder lists them.
const ALL_TRACEPOINTS: [&str; 9] = [
    "kvm_exit",
    "kvm_entry",
    "kvm_userspace_exit",
    "kvm_fpu",
    "kvm_pio",
    "kvm_mmio",
    "kvm_msr",
    "kvm_cpuid",
    "sched_switch",
];

pub(super) fn exit(tgid: u32, tid: u32, vcpu_id: u32, reason: u32) -> LatencyKey {
    LatencyKey {
        tgid,
        tid,
        vcpu_id,
        isa: ISA_SVM,
        reason,
        kind: 0,
    }
}

pub(super) fn exit_vmm(tgid: u32, tid: u32, vcpu_id: u32, reason: u32) -> LatencyKey {
    LatencyKey {
        kind: 2,
        ..exit(tgid, tid, vcpu_id, reason)
    }
}

pub(super) fn round_trip(tgid: u32, tid: u32, code: u32) -> LatencyKey {
    LatencyKey {
        tgid,
        tid,
        vcpu_id: VCPU_UNKNOWN,
        isa: 0,
        reason: code,
        kind: 1,
    }
}

pub(super) fn port(port: u16, dir: PortDir, size: u8) -> Detail {
    Detail::Port { port, dir, size }
}

pub(super) fn mmio(gpa: u64, access: MmioAccess, len: u32) -> Detail {
    Detail::Mmio { gpa, access, len }
}

pub(super) fn msr(index: u32, dir: MsrDir, faulted: bool) -> Detail {
    Detail::Msr {
        index,
        dir,
        faulted,
    }
}

pub(super) fn uexit(code: u32) -> Detail {
    Detail::UserspaceExit(UserspaceExit::Reason(code))
}

/// What the kernel maps hold at one drain: (ns, samples) per latency key, events per detail key.
#[derive(Default)]
struct Drain {
    latency: BTreeMap<LatencyKey, Vec<(u64, u64)>>,
    details: BTreeMap<DetailKey, u64>,
}

/// A recording of `drains.len()` drains, one second apart.
pub(super) struct Recording {
    drains: Vec<Drain>,
}

impl Recording {
    pub(super) fn new(secs: usize) -> Recording {
        Recording {
            drains: (0..secs).map(|_| Drain::default()).collect(),
        }
    }

    /// `per[i]`: the (ns, samples) of drain i.
    pub(super) fn latency(&mut self, key: LatencyKey, per: &[&[(u64, u64)]]) {
        assert_eq!(per.len(), self.drains.len());
        for (d, samples) in self.drains.iter_mut().zip(per) {
            d.latency.entry(key).or_default().extend_from_slice(samples);
        }
    }

    /// `per[i]` samples of `ns` each in drain i.
    pub(super) fn timed(&mut self, key: LatencyKey, ns: u64, per: &[u64]) {
        let samples: Vec<[(u64, u64); 1]> = per.iter().map(|&n| [(ns, n)]).collect();
        let per: Vec<&[(u64, u64)]> = samples.iter().map(|s| &s[..]).collect();
        self.latency(key, &per);
    }

    pub(super) fn detail(&mut self, tgid: u32, tid: u32, detail: Detail, per: &[u64]) {
        assert_eq!(per.len(), self.drains.len());
        let key = DetailKey::encode(tgid, tid, &detail);
        for (d, &n) in self.drains.iter_mut().zip(per) {
            if n > 0 {
                *d.details.entry(key).or_default() += n;
            }
        }
    }

    /// Events the kernel counted without a key ("other keys").
    pub(super) fn unkeyed(&mut self, tgid: u32, tid: u32, kind: DetailKind, per: &[u64]) {
        self.detail(tgid, tid, Detail::Other(kind), per);
    }

    /// Applies every drain: counters and thread accounting are cumulative, so drain i of n
    /// carries i/n of their final values.
    pub(super) fn aggregate(self, counters: &[(Counter, u64)], threads: &[ThreadCpu]) -> Aggregate {
        let n = self.drains.len() as u64;
        let mut agg = Aggregate::default();
        for (i, d) in self.drains.into_iter().enumerate() {
            let done = i as u64 + 1;
            let part = |v: u64| v * done / n;
            let mut cumulative = [0; Counter::COUNT as usize];
            for &(c, v) in counters {
                cumulative[c as usize] = part(v);
            }
            agg.apply(&Interval {
                at: Duration::from_secs(done),
                latency: d
                    .latency
                    .into_iter()
                    .filter_map(|(k, s)| delta(&s).map(|d| (k, d)))
                    .collect(),
                details: d.details.into_iter().collect(),
                counters: cumulative,
                threads: threads
                    .iter()
                    .map(|t| ThreadCpu {
                        tracked_ns: part(t.tracked_ns),
                        run_ns: part(t.run_ns),
                        off_run_blocked_ns: part(t.off_run_blocked_ns),
                        off_run_runnable_ns: part(t.off_run_runnable_ns),
                        off_user_blocked_ns: part(t.off_user_blocked_ns),
                        off_user_runnable_ns: part(t.off_user_runnable_ns),
                        procfs_ns: t.procfs_ns.map(part),
                        ..*t
                    })
                    .collect(),
                stacks: Default::default(),
                slow: Default::default(),
                guest_rips: Default::default(),
            });
        }
        agg
    }
}

/// The kernel's statistics of (ns, samples) pairs: None when there are no samples (the kernel
/// creates a key on its first sample).
fn delta(samples: &[(u64, u64)]) -> Option<LatencyDelta> {
    let taken: Vec<(u64, u64)> = samples.iter().copied().filter(|s| s.1 > 0).collect();
    if taken.is_empty() {
        return None;
    }
    let mut buckets: BTreeMap<u16, u32> = BTreeMap::new();
    for &(ns, n) in &taken {
        *buckets.entry(bucket_index(ns) as u16).or_default() += n as u32;
    }
    Some(LatencyDelta {
        count: taken.iter().map(|s| s.1).sum(),
        total_ns: taken.iter().map(|s| s.0 * s.1).sum(),
        min_ns: taken.iter().map(|s| s.0).min()?,
        max_ns: taken.iter().map(|s| s.0).max()?,
        buckets: buckets.into_iter().collect(),
    })
}

pub(super) fn vm(pid: u32, name: &str, vmm: &str) -> (u32, Vm) {
    let thread = |tid: u32, comm: &str| Thread {
        tid,
        comm: comm.into(),
    };
    (
        pid,
        Vm {
            pid,
            name: name.into(),
            aliases: [name.to_string()].into(),
            threads: vec![
                thread(pid, vmm),
                thread(pid + 1, "CPU 0/KVM"),
                thread(pid + 2, "CPU 1/KVM"),
            ],
        },
    )
}

/// A thread's CPU accounting, in ms: tracked, in KVM_RUN, off-CPU in KVM_RUN (blocked,
/// runnable), off-CPU outside (blocked, runnable); procfs run time.
pub(super) fn cpu(tgid: u32, tid: u32, ms: [u64; 6], procfs_ms: Option<u64>) -> ThreadCpu {
    let [
        tracked,
        run,
        run_blocked,
        run_runnable,
        user_blocked,
        user_runnable,
    ] = ms.map(|m| m * 1_000_000);
    ThreadCpu {
        tgid,
        tid,
        tracked_ns: tracked,
        run_ns: run,
        off_run_blocked_ns: run_blocked,
        off_run_runnable_ns: run_runnable,
        off_user_blocked_ns: user_blocked,
        off_user_runnable_ns: user_runnable,
        procfs_ns: procfs_ms.map(|m| m * 1_000_000),
        procfs_tracked_ns: procfs_ms.map_or(0, |_| tracked),
    }
}

pub(super) struct Setup<'a> {
    pub(super) agg: Aggregate,
    pub(super) vms: BTreeMap<u32, Vm>,
    pub(super) per_vcpu: bool,
    pub(super) kvm_module: &'a str,
    pub(super) missing: &'a [&'a str],
    pub(super) in_flight: InFlight,
    pub(super) max_rows: Option<usize>,
}

impl Setup<'_> {
    pub(super) fn build(&self) -> Report {
        let missing: Vec<String> = self.missing.iter().map(|s| s.to_string()).collect();
        let attached = ALL_TRACEPOINTS
            .iter()
            .map(|s| s.to_string())
            .filter(|t| !missing.contains(t))
            .collect();
        report::build(
            &self.agg,
            &Context {
                storm: &StormConfig::DEFAULT,
                vms: &self.vms,
                per_vcpu: self.per_vcpu,
                kvm_module: Some(self.kvm_module.into()),
                attached,
                missing,
                in_flight: &self.in_flight,
                max_rows: self.max_rows,
            },
        )
    }
}
