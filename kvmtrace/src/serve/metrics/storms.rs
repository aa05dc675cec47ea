//! Storms going on now, as `kvmtrace_storm_active` gauges: storm detection (the report's rules)
//! over the last [`WINDOW`] intervals only, so memory stays flat however long `serve` runs,
//! and only for the VMs where a storm began or ended
//! ([`crate::analyze::storm_watch::StormWatch`]: detecting every storm of
//! the window at each interval was 40 % of serve's CPU with 10 000 keys). A storm's series is
//! 1 while it goes on and is removed when it ends.

use std::collections::{BTreeMap, HashSet};

use kvmtrace_common::VCPU_UNKNOWN;

use super::{Exporter, Owned};
use crate::{
    analyze::storms::{ALL_VCPUS, Storm},
    model::Interval,
    model::identity::VcpuLabel,
    model::identity::Vm,
    serve::labels::StormLabels,
};

/// Intervals storms are looked for in (as `kvmtrace top`).
pub const WINDOW: usize = 30;

impl Exporter {
    /// Adds the interval to the window, and sets the storm gauges to the storms going on.
    pub(super) fn storms(&mut self, iv: &Interval, directory: &BTreeMap<u32, Vm>) {
        self.window.push(iv, WINDOW);
        // Storm vCPUs are named below, by the exporter's own labels.
        let by_tid = |_pid, tid| VcpuLabel::Tid(tid);
        if let Some((column, width)) = self.window.newest() {
            self.storm_watch
                .update(column, width, &self.window, &by_tid);
        }
        let ongoing: Vec<Storm> = self.storm_watch.ongoing().cloned().collect();
        let mut now: HashSet<StormLabels> = HashSet::new();
        for s in ongoing {
            let Some(vm) = self.procs.get(&s.pid).map(|p| p.vm.clone()) else {
                continue;
            };
            let vcpu = if s.tid == ALL_VCPUS {
                "all".to_string()
            } else {
                self.vcpu_name(&vm, s.pid, s.tid, VCPU_UNKNOWN, directory)
            };
            let l = StormLabels {
                vm,
                vcpu,
                what: s.what,
                diagnosis: s.diagnosis.map(|d| d.rule).unwrap_or_default(),
            };
            if self.ensure(&l.vm, Owned::Storm(l.clone())) {
                self.f.storm_active.get_or_create(&l).set(1);
                now.insert(l);
            }
        }
        let ended: Vec<StormLabels> = self.storms.difference(&now).cloned().collect();
        for l in ended {
            self.disown(&l.vm.clone(), &Owned::Storm(l));
        }
        self.storms = now;
    }
}
