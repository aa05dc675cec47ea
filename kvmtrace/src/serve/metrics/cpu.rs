//! vCPU thread time by category: each thread's growth since the last interval.

use std::collections::{BTreeMap, HashMap, HashSet};

use kvmtrace_common::VCPU_UNKNOWN;

use super::{CpuSeen, Exporter, Owned};
use crate::{
    model::identity::Vm,
    model::{Interval, ThreadCpu},
    serve::labels::CpuLabels,
};

impl Exporter {
    /// `handling`: each thread's in-kernel exit handling of the interval; `split`: whether the
    /// host fires kvm_exit (guest and exit handling apart), else in-KVM_RUN time is `kvm_run`.
    pub(super) fn cpu(
        &mut self,
        iv: &Interval,
        handling: &HashMap<(u32, u32), u64>,
        split: bool,
        directory: &BTreeMap<u32, Vm>,
    ) {
        let mut live: HashSet<(u32, u32)> = HashSet::new();
        for t in &iv.threads {
            live.insert((t.tgid, t.tid));
            let id = self.bind(t.tgid, directory);
            let (d_in_run, d_vmm, d_blocked, d_waiting) = self.cpu_growth(&id, t);
            let d_handling = handling
                .get(&(t.tgid, t.tid))
                .copied()
                .unwrap_or(0)
                .min(d_in_run);
            let vcpu = self.vcpu_label(&id, t.tgid, t.tid, VCPU_UNKNOWN, directory);
            let vm = Self::vm_labels(&id, vcpu);
            let in_run: &[(&'static str, u64)] = if split {
                &[
                    ("guest", d_in_run - d_handling),
                    ("exit_handling", d_handling),
                ]
            } else {
                &[("kvm_run", d_in_run)]
            };
            let rest = [
                ("vmm", d_vmm),
                ("blocked", d_blocked),
                ("runnable_wait", d_waiting),
            ];
            for &(category, ns) in in_run.iter().chain(&rest) {
                let l = CpuLabels {
                    vm: vm.clone(),
                    category,
                };
                if self.ensure(&id, Owned::Cpu(l.clone())) {
                    self.f
                        .vcpu_seconds
                        .get_or_create(&l)
                        .inc_by(ns as f64 / 1e9);
                }
            }
        }
        for vm in self.vms.values_mut() {
            vm.cpu.retain(|thread, _| live.contains(thread));
        }
    }

    /// How much a thread's in-KVM_RUN on-CPU, VMM on-CPU, blocked and waiting times grew since
    /// the last interval. Each never goes back (a thread first taken to be inside KVM_RUN can
    /// turn out to have been outside: its time moves, and was already counted once).
    fn cpu_growth(&mut self, vm: &str, t: &ThreadCpu) -> (u64, u64, u64, u64) {
        let Some(state) = self.vms.get_mut(vm) else {
            return (0, 0, 0, 0);
        };
        let seen = state.cpu.entry((t.tgid, t.tid)).or_default();
        let now = CpuSeen {
            in_run: t.in_run_on_cpu(),
            vmm: t.vmm_on_cpu(),
            blocked: t.off_run_blocked_ns + t.off_user_blocked_ns,
            waiting: t.off_run_runnable_ns + t.off_user_runnable_ns,
        };
        let grow = |seen: &mut u64, now: u64| {
            let d = now.saturating_sub(*seen);
            *seen = (*seen).max(now);
            d
        };
        (
            grow(&mut seen.in_run, now.in_run),
            grow(&mut seen.vmm, now.vmm),
            grow(&mut seen.blocked, now.blocked),
            grow(&mut seen.waiting, now.waiting),
        )
    }
}
