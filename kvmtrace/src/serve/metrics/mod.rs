//! The exporter's metrics and how drained intervals feed them. Every counter is the exact
//! cumulative count of what the kernel counted since `serve` started (each interval adds its
//! delta), so `increase()` and `rate()` work on them. Per-VM series are bounded: each VM's
//! series are known (to remove them all when it has been gone for the grace period) and counted
//! against `--max-series`; an update that would create a series beyond it is counted in
//! `kvmtrace_series_dropped_total` instead. Pure (no BPF, no /proc): tested with plain values.
//!
//! A VM's identity is its name ([`identity`]): the `vm` label, never the pid, so a VM restarted
//! under its name keeps its series and its counters go on from where they were.
//!
//! - [`families`]: the families and the series the exporter owns;
//! - [`identity`]: which identity a process counts under, VMs that ended, the grace period;
//! - [`traffic`]: exits, VMM round trips and detail keys of each interval;
//! - [`cpu`]: vCPU thread time by category;
//! - [`storms`]: storms going on, over a bounded window of recent intervals;
//! - [`tracer`]: the tracer's own counters, maps and cost.

mod cpu;
mod families;
mod identity;
mod storms;
mod tracer;
mod traffic;

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Instant,
};

use kvmtrace_common::{Counter, DetailKind, LatencyKey, VCPU_UNKNOWN};
use prometheus_client::registry::Registry;

use self::families::{Families, Owned};
use super::{
    labels::{Detail, StormLabels, VmLabels},
    topk::TopK,
};
use crate::{
    model::identity::{Vm, vcpu_index_of_comm},
    model::{Interval, series::Window},
};

pub struct Settings {
    pub per_vcpu: bool,
    pub max_series: u64,
    pub top_keys: usize,
    pub storms: crate::analyze::storms::Config,
}

/// One thread's cumulative times as already exported (ns).
#[derive(Clone, Copy, Debug, Default)]
struct CpuSeen {
    in_run: u64,
    vmm: u64,
    blocked: u64,
    waiting: u64,
}

/// What the exporter keeps per VM identity: all of it goes when its series are removed.
struct VmState {
    /// The process that has the identity now.
    pid: u32,
    uuid: String,
    owned: HashSet<Owned>,
    /// Detail keys with series, per (vCPU label, kind).
    topk: BTreeMap<(Option<String>, DetailKind), TopK<Detail>>,
    /// Per thread (pid, tid).
    cpu: HashMap<(u32, u32), CpuSeen>,
    /// vCPU labels per thread (pid, tid), fixed at a thread's first sight so its series never
    /// change name.
    vcpus: HashMap<(u32, u32), String>,
    /// Since when its process is gone.
    gone_since: Option<Instant>,
}

/// A VM process: the identity its events count under, and since when it is gone.
struct Proc {
    vm: String,
    gone_since: Option<Instant>,
}

/// Where a VM's UUID comes from (`/proc`, libvirt's files): asked once per process.
type UuidSource = Box<dyn Fn(u32) -> Option<String> + Send>;

pub struct Exporter {
    f: Families,
    settings: Settings,
    /// By identity (the `vm` label).
    vms: BTreeMap<String, VmState>,
    /// Every process with events or a name, by pid.
    procs: HashMap<u32, Proc>,
    uuid_of: UuidSource,
    /// Per-VM series exported now.
    series: u64,
    /// The kernel's counters as of the last interval.
    counters: [u64; Counter::COUNT as usize],
    /// The last intervals, for storms.
    window: Window,
    /// Storms in the window.
    storm_watch: crate::analyze::storm_watch::StormWatch,
    /// The storm series exported now.
    storms: HashSet<StormLabels>,
}

impl Exporter {
    /// The exporter's metrics, registered in `registry` (whose prefix names them).
    pub fn new(registry: &mut Registry, settings: Settings) -> Exporter {
        let f = Families::default();
        f.register(registry);
        f.series_limit.set(settings.max_series as i64);
        let e = Exporter {
            f,
            storm_watch: crate::analyze::storm_watch::StormWatch::new(settings.storms),
            settings,
            vms: BTreeMap::new(),
            procs: HashMap::new(),
            uuid_of: Box::new(|_| None),
            series: 0,
            counters: [0; Counter::COUNT as usize],
            window: Window::default(),
            storms: HashSet::new(),
        };
        e.zero_kernel_counters();
        e
    }

    /// Where VM UUIDs come from (none by default).
    pub fn with_uuids(mut self, uuid_of: impl Fn(u32) -> Option<String> + Send + 'static) -> Self {
        self.uuid_of = Box::new(uuid_of);
        self
    }

    /// Adds one drained interval: `ended` are the exits whose thread ended before their
    /// kvm_entry since the last interval, `directory` the VMs known by name.
    pub fn apply(
        &mut self,
        iv: &Interval,
        ended: &BTreeMap<LatencyKey, u64>,
        directory: &BTreeMap<u32, Vm>,
    ) {
        for &pid in directory.keys() {
            self.bind(pid, directory);
        }
        self.identity_gauges();
        self.kernel_counters(iv);
        let handling = self.latency(iv, directory);
        self.ended_exits(ended, directory);
        self.details(iv, directory);
        let split = iv.counters[Counter::ExitsSeen as usize] > 0;
        self.cpu(iv, &handling, split, directory);
        self.map_entries(iv);
        self.storms(iv, directory);
        self.gauges();
    }

    fn gauges(&self) {
        self.f.series.set(self.series as i64);
        let running = self.vms.values().filter(|v| v.gone_since.is_none());
        self.f.vms.set(running.count() as i64);
    }

    fn vm_labels(vm: &str, vcpu: Option<String>) -> VmLabels {
        VmLabels {
            vm: vm.to_string(),
            vcpu,
        }
    }

    /// The vcpu label of a key's thread with `--per-vcpu` (else None).
    fn vcpu_label(
        &mut self,
        vm: &str,
        pid: u32,
        tid: u32,
        vcpu_id: u32,
        directory: &BTreeMap<u32, Vm>,
    ) -> Option<String> {
        self.settings
            .per_vcpu
            .then(|| self.vcpu_name(vm, pid, tid, vcpu_id, directory))
    }

    /// A thread's vCPU: N of its `CPU N/KVM` name, else the vcpu_id kvm_exit gave, else
    /// `tid N`; fixed at the thread's first sight.
    fn vcpu_name(
        &mut self,
        vm: &str,
        pid: u32,
        tid: u32,
        vcpu_id: u32,
        directory: &BTreeMap<u32, Vm>,
    ) -> String {
        let comm_index = directory
            .get(&pid)
            .and_then(|v| v.threads.iter().find(|t| t.tid == tid))
            .and_then(|t| vcpu_index_of_comm(&t.comm));
        let Some(state) = self.vms.get_mut(vm) else {
            return format!("tid {tid}");
        };
        state
            .vcpus
            .entry((pid, tid))
            .or_insert_with(|| {
                comm_index
                    .or((vcpu_id != VCPU_UNKNOWN).then_some(vcpu_id))
                    .map_or_else(|| format!("tid {tid}"), |i| i.to_string())
            })
            .clone()
    }

    /// Whether series `o` of VM `vm` exists or may be created within `--max-series`; counts
    /// the refusal otherwise.
    fn ensure(&mut self, vm: &str, o: Owned) -> bool {
        let Some(state) = self.vms.get_mut(vm) else {
            return false;
        };
        if state.owned.contains(&o) {
            return true;
        }
        if self.series + o.cost() > self.settings.max_series {
            self.f.series_dropped.inc();
            return false;
        }
        self.series += o.cost();
        state.owned.insert(o);
        true
    }

    fn disown(&mut self, vm: &str, o: &Owned) {
        if let Some(state) = self.vms.get_mut(vm)
            && state.owned.remove(o)
        {
            o.remove_from(&self.f);
            self.series -= o.cost();
        }
    }
}
