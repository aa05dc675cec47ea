//! Narrowing and ordering a [`Report`]: `--vm`, `--vcpu`, `--reason` filters and `--sort`.
//! Pure functions over the report, shared by live and offline reports.

use crate::{
    model::identity::VcpuLabel,
    report::{ExitRow, Report},
};

/// The order of the rows in every table (largest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Count,
    Time,
    P99,
    Max,
}

#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// VM names or pids.
    pub vms: Vec<String>,
    pub vcpus: Vec<VcpuLabel>,
    /// Exit reason names (kvm_exit or KVM_EXIT_*), matched case-insensitively.
    pub reasons: Vec<String>,
}

fn keep_vcpu(f: &Filter, vcpu: &Option<VcpuLabel>) -> bool {
    f.vcpus.is_empty() || vcpu.is_some_and(|v| f.vcpus.contains(&v))
}

fn keep_reason(f: &Filter, reason: &str) -> bool {
    f.reasons.is_empty() || f.reasons.iter().any(|r| r.eq_ignore_ascii_case(reason))
}

fn keep_vm(f: &Filter, name: &str, pid: u32) -> bool {
    f.vms.is_empty() || f.vms.iter().any(|s| s == name || *s == pid.to_string())
}

/// Removes what the filter excludes. Detail tables (ports, MMIO, MSRs, CPUID) follow the vCPU
/// filter; the reason filter applies to exit and userspace-exit rows, and to host stacks (whose
/// per-group top paths cover every vCPU; the flamegraph's rows follow the vCPU filter too).
pub fn filter(report: &mut Report, f: &Filter) {
    report.vms.retain(|vm| keep_vm(f, &vm.name, vm.pid));
    if let Some(hs) = &mut report.host_stacks {
        hs.groups
            .retain(|g| keep_vm(f, &g.vm, g.pid) && keep_reason(f, &g.reason));
        hs.all.retain(|r| {
            keep_vm(f, &r.vm, r.pid) && keep_vcpu(f, &Some(r.vcpu)) && keep_reason(f, &r.reason)
        });
    }
    report
        .storm_starts
        .retain(|s| keep_vm(f, &s.vm, s.pid) && keep_vcpu(f, &Some(s.vcpu)));
    if let Some(gc) = &mut report.guest_code {
        gc.groups
            .retain(|g| keep_vm(f, &g.vm, g.pid) && keep_reason(f, &g.reason));
        // The VMs kept above.
        let kept: Vec<u32> = report.vms.iter().map(|v| v.pid).collect();
        gc.by_vcpu.retain(|g| {
            kept.contains(&g.pid) && keep_vcpu(f, &Some(g.vcpu)) && keep_reason(f, &g.reason)
        });
    }
    if let Some(slow) = &mut report.slow_exits {
        slow.by_reason
            .retain(|r| keep_vm(f, &r.vm, r.pid) && keep_reason(f, &r.reason));
        slow.slowest.retain(|r| {
            keep_vm(f, &r.vm, r.pid) && keep_vcpu(f, &Some(r.vcpu)) && keep_reason(f, &r.reason)
        });
    }
    for vm in &mut report.vms {
        vm.exits
            .retain(|r| keep_vcpu(f, &r.vcpu) && keep_reason(f, &r.reason));
        vm.userspace_exits
            .retain(|r| keep_vcpu(f, &r.vcpu) && keep_reason(f, &r.reason));
        vm.ports.retain(|r| keep_vcpu(f, &r.vcpu));
        vm.mmio.retain(|r| keep_vcpu(f, &r.vcpu));
        vm.msrs.retain(|r| keep_vcpu(f, &r.vcpu));
        vm.cpuid.retain(|r| keep_vcpu(f, &r.vcpu));
        if !f.vcpus.is_empty() {
            vm.vcpus.retain(|v| f.vcpus.contains(&v.label));
        }
        vm.total_exits = vm.exits.iter().map(|r| r.count).sum();
    }
}

/// Orders the exit rows by `key` (largest first); detail rows keep their count order, the only
/// measure they have. Userspace exits sort by round-trip time or p99 where asked.
pub fn sort(report: &mut Report, key: SortKey) {
    let exit_key = |r: &ExitRow| match key {
        SortKey::Count => r.count,
        SortKey::Time => r.latency.total_ns,
        SortKey::P99 => r.latency.p99_ns,
        SortKey::Max => r.latency.max_ns,
    };
    for vm in &mut report.vms {
        vm.exits
            .sort_by(|a, b| exit_key(b).cmp(&exit_key(a)).then(a.reason.cmp(&b.reason)));
        vm.userspace_exits.sort_by_key(|r| {
            std::cmp::Reverse(match (key, &r.round_trip) {
                (SortKey::Count, _) | (_, None) => r.count,
                (SortKey::Time, Some(l)) => l.total_ns,
                (SortKey::P99, Some(l)) => l.p99_ns,
                (SortKey::Max, Some(l)) => l.max_ns,
            })
        });
    }
}
