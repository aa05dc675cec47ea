//! Every metric family of the exporter, registered once, in the order of the exposition; and
//! [`Owned`], a per-VM series the exporter created, so that it can be counted and removed.

use std::sync::atomic::AtomicU64;

use kvmtrace_common::Counter;
use prometheus_client::{
    metrics::{counter::Counter as PromCounter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use super::super::{
    hist::{KernelHistogram, SERIES_PER_HISTOGRAM},
    labels::{
        CpuLabels, DetailLabels, ExitLabels, InfoLabels, ReasonLabels, StormLabels, VmLabels,
    },
};

/// Seconds as a float counter.
pub(super) type Seconds = PromCounter<f64, AtomicU64>;
/// The label of a host-wide series (`event`, `loss`, `map`).
pub(super) type One = [(&'static str, &'static str); 1];
/// The label of a BPF program's series.
pub(super) type Program = [(&'static str, String); 1];

#[derive(Default)]
pub(super) struct Families {
    pub exits: Family<ExitLabels, PromCounter>,
    pub exit_latency: Family<ExitLabels, KernelHistogram>,
    pub userspace_exits: Family<ReasonLabels, PromCounter>,
    pub round_trip: Family<ReasonLabels, KernelHistogram>,
    pub details: Family<DetailLabels, PromCounter>,
    pub vcpu_seconds: Family<CpuLabels, Seconds>,
    pub vm_running: Family<VmLabels, Gauge>,
    pub vm_info: Family<InfoLabels, Gauge>,
    pub storm_active: Family<StormLabels, Gauge>,
    pub tracer_events: Family<One, PromCounter>,
    pub tracer_losses: Family<One, PromCounter>,
    pub map_entries: Family<One, Gauge>,
    pub map_capacity: Family<One, Gauge>,
    pub bpf_runs: Family<Program, PromCounter>,
    pub bpf_skipped_runs: Family<Program, PromCounter>,
    pub bpf_run_seconds: Family<Program, Seconds>,
    pub bpf_stats_seconds: Seconds,
    pub collector_cpu: Seconds,
    pub vms: Gauge,
    pub series: Gauge,
    pub series_limit: Gauge,
    pub series_dropped: PromCounter,
    pub drains: PromCounter,
    pub drain_seconds: Seconds,
}

impl Families {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "exits",
            "VM exits (kvm_exit, paired with their kvm_entry or ended with their thread)",
            self.exits.clone(),
        );
        r.register_with_unit(
            "exit_latency",
            "In-kernel handling time of VM exits (kvm_exit to kvm_entry, minus VMM round trips)",
            Unit::Seconds,
            self.exit_latency.clone(),
        );
        r.register(
            "userspace_exits",
            "Returns of KVM_RUN to the VMM (kvm_userspace_exit), each a VMM round trip",
            self.userspace_exits.clone(),
        );
        r.register_with_unit(
            "vmm_round_trip",
            "VMM handling time of userspace exits (KVM_RUN returning until the vCPU is back in it)",
            Unit::Seconds,
            self.round_trip.clone(),
        );
        r.register(
            "detail_events",
            "Port I/O, MMIO, MSR and CPUID events by key: the busiest keys per VM and kind, the rest in key=\"other\"",
            self.details.clone(),
        );
        r.register_with_unit(
            "vcpu",
            "Time of the vCPU threads by category: guest, exit_handling (in-kernel), kvm_run (both, where the host has no kvm_exit), vmm, blocked, runnable_wait",
            Unit::Seconds,
            self.vcpu_seconds.clone(),
        );
        r.register(
            "vm_running",
            "1 while the VM process runs, 0 after it ended (until its series are removed)",
            self.vm_running.clone(),
        );
        r.register(
            "vm_info",
            "1 for each VM: the pid of its process now and its UUID (QEMU -uuid or libvirt; empty when unknown)",
            self.vm_info.clone(),
        );
        r.register(
            "storm_active",
            "1 while an exit storm goes on (in the last 30 intervals), with the storm's key and diagnosis rule; removed when it ends",
            self.storm_active.clone(),
        );
        r.register(
            "tracer_events",
            "Events of the traced VMs the kernel side handled",
            self.tracer_events.clone(),
        );
        r.register(
            "tracer_losses",
            "Events or latencies the kernel side could not account (see the README's loss counters)",
            self.tracer_losses.clone(),
        );
        r.register(
            "tracer_map_entries",
            "Entries in the kernel maps: vCPU threads, and the latency and detail keys of the last interval",
            self.map_entries.clone(),
        );
        r.register(
            "tracer_map_capacity",
            "Capacity of the kernel maps (latency and detail maps hold two intervals)",
            self.map_capacity.clone(),
        );
        r.register(
            "bpf_runs",
            "Runs of each of kvmtrace's BPF programs while the kernel's run-time statistics were on (kvmtrace_bpf_stats_seconds_total)",
            self.bpf_runs.clone(),
        );
        r.register(
            "bpf_skipped_runs",
            "Runs of each of kvmtrace's BPF programs the kernel skipped (another BPF program, or a bpf() call, held that CPU's guard): events missing from the counts",
            self.bpf_skipped_runs.clone(),
        );
        r.register_with_unit(
            "bpf_run",
            "Run time of each of kvmtrace's BPF programs while the kernel's run-time statistics were on (kvmtrace_bpf_stats_seconds_total)",
            Unit::Seconds,
            self.bpf_run_seconds.clone(),
        );
        r.register_with_unit(
            "bpf_stats",
            "Time the kernel's BPF run-time statistics were on for kvmtrace (sampled by default, --bpf-stats): the time kvmtrace_bpf_runs_total and kvmtrace_bpf_run_seconds_total were counted in",
            Unit::Seconds,
            self.bpf_stats_seconds.clone(),
        );
        r.register_with_unit(
            "collector_cpu",
            "CPU time (user + system) of the exporter process",
            Unit::Seconds,
            self.collector_cpu.clone(),
        );
        r.register("vms", "VMs followed and running", self.vms.clone());
        r.register("series", "Per-VM series exported now", self.series.clone());
        r.register(
            "series_limit",
            "Most per-VM series (--max-series)",
            self.series_limit.clone(),
        );
        r.register(
            "series_dropped",
            "Updates not exported because they would have created a series beyond --max-series",
            self.series_dropped.clone(),
        );
        r.register(
            "tracer_drains",
            "Intervals drained from the kernel",
            self.drains.clone(),
        );
        r.register_with_unit(
            "tracer_drain",
            "Time spent draining the kernel maps and updating the metrics",
            Unit::Seconds,
            self.drain_seconds.clone(),
        );
    }
}

/// A per-VM series the exporter created, so that it can be removed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Owned {
    Exits(ExitLabels),
    ExitLatency(ExitLabels),
    UserspaceExits(ReasonLabels),
    RoundTrip(ReasonLabels),
    Detail(DetailLabels),
    Cpu(CpuLabels),
    Running(VmLabels),
    Info(InfoLabels),
    Storm(StormLabels),
}

impl Owned {
    /// The series it exposes (a histogram: its buckets, `_sum` and `_count`).
    pub fn cost(&self) -> u64 {
        match self {
            Owned::ExitLatency(_) | Owned::RoundTrip(_) => SERIES_PER_HISTOGRAM,
            _ => 1,
        }
    }

    pub fn remove_from(&self, f: &Families) {
        match self {
            Owned::Exits(l) => f.exits.remove(l),
            Owned::ExitLatency(l) => f.exit_latency.remove(l),
            Owned::UserspaceExits(l) => f.userspace_exits.remove(l),
            Owned::RoundTrip(l) => f.round_trip.remove(l),
            Owned::Detail(l) => f.details.remove(l),
            Owned::Cpu(l) => f.vcpu_seconds.remove(l),
            Owned::Running(l) => f.vm_running.remove(l),
            Owned::Info(l) => f.vm_info.remove(l),
            Owned::Storm(l) => f.storm_active.remove(l),
        };
    }
}

/// The series label of a kernel counter: (loss?, name). Exhaustive: a new counter must be named.
pub(super) const fn counter_label(c: Counter) -> (bool, &'static str) {
    match c {
        Counter::ExitsSeen => (false, "kvm_exit"),
        Counter::EntriesSeen => (false, "kvm_entry"),
        Counter::DetailsSeen => (false, "detail"),
        Counter::FirstEntries => (false, "first_entry"),
        Counter::UnpairedExits => (true, "unpaired_exits"),
        Counter::UnpairedEntries => (true, "unpaired_entries"),
        Counter::UnpairedUserspaceExits => (true, "unpaired_userspace_exits"),
        Counter::LatencyMapFull => (true, "latency_map_full"),
        Counter::DetailMapFull => (true, "detail_map_full"),
        Counter::ThreadMapFull => (true, "thread_map_full"),
    }
}
