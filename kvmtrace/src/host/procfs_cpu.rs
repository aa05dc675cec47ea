//! The cross-check of the kernel's CPU accounting: each traced thread's run time from procfs.

use std::collections::BTreeMap;

use super::Host;
use crate::model::{Interval, identity::Vm};

/// procfs CPU time of each traced thread since recording started (or since it was first seen),
/// the cross-check of the kernel's accounting.
#[derive(Default)]
pub struct ProcfsCpu {
    /// Value at the start (or first sight) of each thread.
    base: BTreeMap<u32, u64>,
    /// Last value read: a thread that exited keeps it.
    last: BTreeMap<u32, u64>,
}

impl ProcfsCpu {
    /// procfs CPU time of every known thread as counting starts: the cross-check's baseline.
    pub fn at_start(host: &Host, vms: &BTreeMap<u32, Vm>) -> ProcfsCpu {
        let mut procfs = ProcfsCpu::default();
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
            if let Some(now) = host.thread_cpu_ns(t.tgid, t.tid) {
                self.base.entry(t.tid).or_insert(now);
                self.last.insert(t.tid, now);
            }
            if let (Some(b), Some(l)) = (self.base.get(&t.tid), self.last.get(&t.tid)) {
                t.procfs_ns = Some(l.saturating_sub(*b));
            }
        }
    }
}
