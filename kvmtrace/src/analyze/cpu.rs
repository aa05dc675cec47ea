//! CPU attribution of one VM: where each vCPU thread's time went (guest, in-kernel exit
//! handling, VMM, blocked, waiting for a CPU), and what the VM's CPU goes to: in-kernel exit
//! handling per reason (exit->entry times; halts block, they do not burn a CPU) and VMM handling
//! per userspace exit reason (the VMM's on-CPU time, split by each reason's share of VMM
//! round-trip time).

use std::collections::BTreeMap;

use kvmtrace_common::{LatencyKind, UserspaceExit};

use serde::Serialize;

use crate::{
    model::{Aggregate, VmKeys, identity::Vcpu, identity::VcpuLabel, pct},
    names::port_label,
    tp::{
        class::{ExitClass, exit_class},
        reasons::exit_reason_name,
    },
};

/// One vCPU thread's time, in % of its wall time since it was first seen.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CpuRow {
    pub vcpu: VcpuLabel,
    pub tid: u32,
    pub wall_secs: f64,
    /// On-CPU, from the kernel's events (KVM_RUN on-CPU + VMM on-CPU).
    pub cpu_pct: f64,
    /// The thread's run time from procfs (schedstat, else utime + stime) over the recording,
    /// for comparison.
    pub procfs_cpu_pct: Option<f64>,
    /// On-CPU inside KVM_RUN: guest plus in-kernel exit handling.
    pub in_kvm_run_pct: f64,
    /// Split of in_kvm_run where kvm_exit/kvm_entry fire: exit handling (non-HLT exit->entry
    /// time) and the rest, guest time.
    pub exit_handling_pct: Option<f64>,
    pub guest_pct: Option<f64>,
    /// On-CPU in the VMM's user space (handling userspace exits, its own work).
    pub vmm_pct: f64,
    /// Off-CPU, blocked (inside KVM_RUN: a halted vCPU; outside: the VMM waiting).
    pub blocked_pct: f64,
    /// The part of `blocked_pct` inside KVM_RUN (a halted vCPU).
    pub blocked_in_kvm_run_pct: f64,
    /// Off-CPU, runnable but waiting for a CPU (host contention).
    pub runnable_wait_pct: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CpuSummary {
    /// Sum over vCPU threads, % of one CPU.
    pub cpu_pct: f64,
    /// Biggest consumers, each in % of the VM's CPU time.
    pub handling: Vec<Handling>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Handling {
    pub what: String,
    /// % of the VM's CPU time.
    pub pct_of_vm_cpu: f64,
    /// % of one CPU.
    pub cpu_pct: f64,
}

/// A userspace exit reason's VMM round trips, what the VMM's CPU time is split by.
pub struct VmmTime {
    pub exit: UserspaceExit,
    /// Its name in reports (`IO`, `restart`, ...).
    pub reason: String,
    pub class: ExitClass,
    pub round_trip_ns: u64,
}

/// The CPU table of VM `pid` (its keys of `agg`: `keys`), and its summary (None when it used no
/// CPU).
pub fn attribution(
    agg: &Aggregate,
    keys: &VmKeys,
    pid: u32,
    vcpus: &[Vcpu],
    vmm: &[VmmTime],
    top_port: Option<u16>,
) -> (Vec<CpuRow>, Option<CpuSummary>) {
    let handles = |isa: u32, reason: u32| exit_class(isa, reason).is_cpu_time();
    let mut rows = Vec::new();
    let (mut vm_cpu, mut vm_vmm, mut max_wall) = (0u64, 0u64, 0u64);
    for t in agg
        .threads
        .values()
        .filter(|t| t.tgid == pid && t.tracked_ns > 0)
    {
        let mut has_exits = false;
        let mut handling = 0;
        for &(k, a) in keys
            .latency
            .iter()
            .filter(|(k, _)| k.tid == t.tid && k.kind() == Some(LatencyKind::Exit))
        {
            has_exits = true;
            if handles(k.isa, k.reason) {
                handling += a.total_ns;
            }
        }
        let in_run = t.in_run_on_cpu();
        let wall = t.tracked_ns;
        max_wall = max_wall.max(wall);
        vm_cpu += t.on_cpu();
        vm_vmm += t.vmm_on_cpu();
        rows.push(CpuRow {
            vcpu: vcpus
                .iter()
                .find(|v| v.tid == t.tid)
                .map_or(VcpuLabel::Tid(t.tid), |v| v.label),
            tid: t.tid,
            wall_secs: wall as f64 / 1e9,
            cpu_pct: pct(t.on_cpu(), wall),
            procfs_cpu_pct: t.procfs_share().map(|(p, covered)| pct(p, covered)),
            in_kvm_run_pct: pct(in_run, wall),
            exit_handling_pct: has_exits.then(|| pct(handling.min(in_run), wall)),
            guest_pct: has_exits.then(|| pct(in_run.saturating_sub(handling), wall)),
            vmm_pct: pct(t.vmm_on_cpu(), wall),
            blocked_pct: pct(t.off_run_blocked_ns + t.off_user_blocked_ns, wall),
            blocked_in_kvm_run_pct: pct(t.off_run_blocked_ns, wall),
            runnable_wait_pct: pct(t.off_run_runnable_ns + t.off_user_runnable_ns, wall),
        });
    }
    if rows.is_empty() || vm_cpu == 0 {
        return (rows, None);
    }
    rows.sort_by_key(|r| (r.vcpu, r.tid));
    let mut handling: Vec<(String, u64)> = Vec::new();
    let mut by_reason: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    for &(k, a) in keys
        .latency
        .iter()
        .filter(|(k, _)| k.kind() == Some(LatencyKind::Exit) && handles(k.isa, k.reason))
    {
        *by_reason.entry((k.isa, k.reason)).or_default() += a.total_ns;
    }
    for ((isa, reason), ns) in by_reason {
        handling.push((
            format!("exit handling of {}", exit_reason_name(isa, reason)),
            ns,
        ));
    }
    handling.extend(vmm_handling(vmm, top_port, vm_vmm));
    handling.sort_by_key(|h| std::cmp::Reverse(h.1));
    let wall = max_wall.max(1);
    let summary = CpuSummary {
        cpu_pct: pct(vm_cpu, wall),
        handling: handling
            .into_iter()
            .filter(|(_, ns)| *ns > 0)
            .take(3)
            .map(|(what, ns)| Handling {
                what,
                pct_of_vm_cpu: pct(ns, vm_cpu),
                cpu_pct: pct(ns, wall),
            })
            .collect(),
    };
    (rows, Some(summary))
}

/// The VMM's on-CPU time `vm_vmm` split over userspace exit reasons by their round-trip time;
/// I/O names the busiest port.
fn vmm_handling(vmm: &[VmmTime], top_port: Option<u16>, vm_vmm: u64) -> Vec<(String, u64)> {
    let vmm_wall: u64 = vmm.iter().map(|v| v.round_trip_ns).sum();
    if vmm_wall == 0 {
        return Vec::new();
    }
    let mut by_exit: BTreeMap<UserspaceExit, (&str, ExitClass, u64)> = BTreeMap::new();
    for v in vmm {
        by_exit.entry(v.exit).or_insert((&v.reason, v.class, 0)).2 += v.round_trip_ns;
    }
    by_exit
        .into_values()
        .map(|(reason, class, wall)| {
            let share = (vm_vmm as u128 * wall as u128 / vmm_wall as u128) as u64;
            let detail = match top_port {
                Some(port) if class == ExitClass::Io => format!(" (top port {})", port_label(port)),
                _ => String::new(),
            };
            (format!("VMM handling of KVM_EXIT_{reason}{detail}"), share)
        })
        .collect()
}
