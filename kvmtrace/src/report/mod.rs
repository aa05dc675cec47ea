//! What a report shows, as plain types: per VM, exit reasons with latency percentiles, userspace
//! exits with their VMM round trip, top ports / MMIO addresses / MSRs / CPUID functions, where the
//! vCPUs' time went, storms, and every loss counter. [`build()`] makes one from an [`Aggregate`];
//! renderers only format it; [`filter`] narrows and orders it.

mod build;
mod details;
pub mod diff;
mod exits;
pub mod filter;
pub mod guest_code;
pub mod slow;
pub mod stacks;

use std::collections::BTreeMap;

use kvmtrace_common::{Detail, DetailKind, UserspaceExit};
use serde::Serialize;

pub use crate::analyze::cpu::{CpuRow, CpuSummary, Handling};
pub(crate) use crate::model::{pct, rate};
pub use build::build;

use crate::{
    analyze::storms::{Config as StormConfig, Storm},
    model::{
        InFlight, LatencyAgg, MapEntries,
        cost::TracerCost,
        identity::{Vcpu, VcpuLabel, Vm},
    },
    tp::class::ExitClass,
};

/// Everything the report shows, in the order it shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub duration_secs: f64,
    /// The host's KVM module (kvm_intel, kvm_amd, kvm_pvm), when known.
    pub kvm_module: Option<String>,
    pub tracepoints_attached: Vec<String>,
    pub tracepoints_missing: Vec<String>,
    /// Plain sentences about what the data can and cannot say.
    pub notes: Vec<String>,
    pub per_vcpu: bool,
    /// Exit storms, biggest first (per vCPU), each with its diagnosis.
    pub storms: Vec<Storm>,
    pub vms: Vec<VmReport>,
    pub counters: Counters,
    /// What tracing cost (BPF run time, collector CPU), when known: set by the recorder, and
    /// read back from recordings that have it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracer_cost: Option<TracerCost>,
    /// CPU time this host (itself a VM) lost to its hypervisor while recording, % of all its
    /// CPUs' time: kvmtrace's on-CPU times include what was stolen from a running thread,
    /// procfs's do not. Set by the recorder, and read back from recordings that have it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_steal_pct: Option<f64>,
    /// Host stack samples by state and exit reason (recordings made with `--stacks`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_stacks: Option<stacks::HostStacks>,
    /// Slow exits one by one (recordings made with `--than`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_exits: Option<slow::SlowExits>,
    /// Storm starts with the exits that led into them (recordings made with `--flight`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub storm_starts: Vec<slow::StormStartRow>,
    /// Guest RIPs per exit reason (recordings made with `--guest-rips`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_code: Option<guest_code::GuestCode>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    pub exits_seen: u64,
    pub entries_seen: u64,
    pub detail_events: u64,
    pub unpaired_exits: u64,
    pub unpaired_entries: u64,
    /// First kvm_entry of each vCPU after attach: nothing to pair with, expected.
    pub first_entries: u64,
    pub unpaired_userspace_exits: u64,
    pub exits_in_flight_at_stop: u64,
    /// Exits whose vCPU thread ended before their kvm_entry: counted, not timed.
    pub exits_ended_with_thread: u64,
    pub round_trips_in_flight_at_stop: u64,
    pub latency_map_full: u64,
    pub detail_map_full: u64,
    pub thread_map_full: u64,
    /// Entries left in the kernel maps after the last drain.
    pub map_entries_at_stop: Option<MapEntries>,
}

impl Counters {
    /// Anything that means lost events or lost exit latencies. Unpaired userspace exits are left
    /// out: their exits are still counted, only that VMM round trip has no end marker; so is a
    /// full detail map: its events are still counted, in "other keys" rows.
    pub fn losses(&self) -> u64 {
        self.unpaired_exits + self.unpaired_entries + self.latency_map_full + self.thread_map_full
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct VmReport {
    pub pid: u32,
    pub name: String,
    pub vcpus: Vec<Vcpu>,
    /// Exits of all reasons (paired ones plus those open at stop).
    pub total_exits: u64,
    /// Returns of KVM_RUN to the VMM (kvm_userspace_exit).
    pub total_userspace_exits: u64,
    /// Events of the detail tracepoints (pio, mmio, msr, cpuid, userspace_exit).
    pub detail_events: u64,
    pub exits: Vec<ExitRow>,
    pub userspace_exits: Vec<UserspaceRow>,
    pub ports: Vec<PortRow>,
    pub mmio: Vec<MmioRow>,
    pub msrs: Vec<MsrRow>,
    pub cpuid: Vec<CpuidRow>,
    /// Detail events without a row of their own: beyond the rows shown (`--all-keys` shows every
    /// row), beyond a vCPU's key budget per interval, or when the kernel's map was full. With
    /// them, every table's counts add up to the exact total of its kind.
    pub other_keys: Vec<OtherKeysRow>,
    /// Where each vCPU thread's time went.
    pub cpu: Vec<CpuRow>,
    /// "Of this VM's X % CPU, Y % is handling <reason/key>."
    pub cpu_summary: Option<CpuSummary>,
}

/// One keyed row of any detail table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyCount {
    pub vcpu: Option<VcpuLabel>,
    pub detail: Detail,
    pub count: u64,
    pub per_sec: f64,
}

/// The label of thread `tid` of VM `pid` among `vms`' vCPUs, if it is one of them.
pub fn vcpu_label(vms: &[VmReport], pid: u32, tid: u32) -> Option<VcpuLabel> {
    let vm = vms.iter().find(|v| v.pid == pid)?;
    vm.vcpus.iter().find(|c| c.tid == tid).map(|c| c.label)
}

impl VmReport {
    /// Every keyed row of the detail tables (ports, MMIO, MSRs, CPUID), in table order: for
    /// views that treat the tables alike (flamegraph frames, `top`'s keys, diff).
    pub fn key_rows(&self) -> impl Iterator<Item = KeyCount> + '_ {
        let row = |vcpu, detail, count, per_sec| KeyCount {
            vcpu,
            detail,
            count,
            per_sec,
        };
        let ports = self
            .ports
            .iter()
            .map(move |r| row(r.vcpu, r.detail, r.count, r.per_sec));
        let mmio = self
            .mmio
            .iter()
            .map(move |r| row(r.vcpu, r.detail, r.count, r.per_sec));
        let msrs = self
            .msrs
            .iter()
            .map(move |r| row(r.vcpu, r.detail, r.count, r.per_sec));
        let cpuid = self
            .cpuid
            .iter()
            .map(move |r| row(r.vcpu, r.detail, r.count, r.per_sec));
        ports.chain(mmio).chain(msrs).chain(cpuid)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub total_ns: u64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl Latency {
    pub fn of(agg: &LatencyAgg) -> Latency {
        Latency {
            count: agg.count,
            total_ns: agg.total_ns,
            min_ns: if agg.count == 0 { 0 } else { agg.min_ns },
            p50_ns: agg.quantile(0.50),
            p99_ns: agg.quantile(0.99),
            max_ns: agg.max_ns,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ExitRow {
    pub vcpu: Option<VcpuLabel>,
    pub isa: &'static str,
    pub reason_code: u32,
    pub reason: String,
    /// kvm_exit's isa value ([`Self::isa`] is its name).
    #[serde(skip)]
    pub isa_code: u32,
    #[serde(skip)]
    pub class: ExitClass,
    /// Exits of this reason: latency samples plus those still open at stop.
    pub count: u64,
    /// Exits with no kvm_entry yet when recording stopped (no latency sample).
    pub in_flight: u64,
    /// Exits whose vCPU thread ended before their kvm_entry (no latency sample).
    pub ended_with_thread: u64,
    pub count_pct: f64,
    /// Share of the VM's in-kernel exit handling time.
    pub time_pct: f64,
    pub per_sec: f64,
    /// In-kernel handling: kvm_exit -> kvm_entry minus the VMM round trips inside it.
    pub latency: Latency,
    /// The VMM's part of the exits of this reason that went to user space (their round trips),
    /// when any did.
    pub vmm: Option<Latency>,
}

#[derive(Clone, Debug, Serialize)]
pub struct UserspaceRow {
    pub vcpu: Option<VcpuLabel>,
    pub reason_code: u32,
    /// KVM_EXIT_* name without the prefix, or `error(errno)` / `restart`.
    pub reason: String,
    #[serde(skip)]
    pub exit: UserspaceExit,
    #[serde(skip)]
    pub class: ExitClass,
    pub count: u64,
    pub count_pct: f64,
    pub per_sec: f64,
    /// Time in the VMM, from KVM_RUN returning until the vCPU is back in KVM_RUN.
    pub round_trip: Option<Latency>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PortRow {
    pub vcpu: Option<VcpuLabel>,
    /// The decoded key the row counts.
    #[serde(skip)]
    pub detail: Detail,
    pub port: u16,
    pub direction: &'static str,
    pub size: u32,
    pub count: u64,
    pub per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MmioRow {
    pub vcpu: Option<VcpuLabel>,
    /// The decoded key the row counts.
    #[serde(skip)]
    pub detail: Detail,
    pub gpa: u64,
    pub access: &'static str,
    pub len: u32,
    pub count: u64,
    pub per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MsrRow {
    pub vcpu: Option<VcpuLabel>,
    /// The decoded key the row counts.
    #[serde(skip)]
    pub detail: Detail,
    pub msr: u32,
    pub access: &'static str,
    pub faulted: bool,
    pub count: u64,
    pub per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuidRow {
    pub vcpu: Option<VcpuLabel>,
    /// The decoded key the row counts.
    #[serde(skip)]
    pub detail: Detail,
    pub function: u32,
    pub count: u64,
    pub per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OtherKeysRow {
    pub vcpu: Option<VcpuLabel>,
    /// "ports", "MMIO addresses", "MSRs", "CPUID functions", "userspace exit reasons".
    pub kind: &'static str,
    #[serde(skip)]
    pub detail_kind: DetailKind,
    /// All events of this row: folded_events + unkeyed_events.
    pub count: u64,
    pub per_sec: f64,
    /// Keys that had rows, beyond the rows shown, and their events.
    pub folded_keys: u64,
    pub folded_events: u64,
    /// Events the kernel counted without a key (key budget or map full): their keys are unknown.
    pub unkeyed_events: u64,
}

/// Rows per detail table (ports, MMIO, MSRs, CPUID) unless every row is asked for.
pub const DEFAULT_MAX_ROWS: usize = 50;

/// Inputs besides the aggregate.
pub struct Context<'a> {
    /// Storm detection thresholds.
    pub storm: &'a StormConfig,
    pub vms: &'a BTreeMap<u32, Vm>,
    pub per_vcpu: bool,
    pub kvm_module: Option<String>,
    pub attached: Vec<String>,
    pub missing: Vec<String>,
    /// Exits and round trips still open when recording stopped.
    pub in_flight: &'a InFlight,
    /// Rows per detail table; the rest fold into "other keys". None: every row.
    pub max_rows: Option<usize>,
}

#[cfg(test)]
mod tests;
