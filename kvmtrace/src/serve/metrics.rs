//! The exporter's metrics and how drained intervals feed them. Every counter is the exact
//! cumulative count of what the kernel counted since `serve` started (each interval adds its
//! delta), so `increase()` and `rate()` work on them. Per-VM series are bounded: each VM's
//! series are known (to remove them all when it has been gone for the grace period) and counted
//! against `--max-series`; an update that would create a series beyond it is counted in
//! `kvmtrace_series_dropped_total` instead. Pure (no BPF, no /proc): tested with plain values.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::atomic::AtomicU64,
    time::{Duration, Instant},
};

use kvmtrace_common::{Counter, DetailKind, LatencyKey, LatencyKind, VCPU_UNKNOWN};
use prometheus_client::{
    metrics::{counter::Counter as PromCounter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use super::{
    hist::{KernelHistogram, SERIES_PER_HISTOGRAM},
    labels::{CpuLabels, Detail, DetailLabels, ExitLabels, ReasonLabels, VmLabels},
    topk::TopK,
};
use crate::{
    model::{Interval, MapEntries, ThreadCpu},
    report::userspace_reason,
    tp::{
        class::{ExitClass, exit_class},
        reasons::{exit_reason_name, isa_name, userspace_exit_name},
    },
    vm::{Vm, vcpu_index_of_comm},
};

/// Seconds as a float counter.
type Seconds = PromCounter<f64, AtomicU64>;
/// The label of a host-wide series (`event`, `loss`, `map`).
type One = [(&'static str, &'static str); 1];

pub struct Settings {
    pub per_vcpu: bool,
    pub max_series: u64,
    pub top_keys: usize,
}

/// Every metric family, registered once.
#[derive(Default)]
struct Families {
    exits: Family<ExitLabels, PromCounter>,
    exit_latency: Family<ExitLabels, KernelHistogram>,
    userspace_exits: Family<ReasonLabels, PromCounter>,
    round_trip: Family<ReasonLabels, KernelHistogram>,
    details: Family<DetailLabels, PromCounter>,
    vcpu_seconds: Family<CpuLabels, Seconds>,
    vm_running: Family<VmLabels, Gauge>,
    tracer_events: Family<One, PromCounter>,
    tracer_losses: Family<One, PromCounter>,
    map_entries: Family<One, Gauge>,
    map_capacity: Family<One, Gauge>,
    vms: Gauge,
    series: Gauge,
    series_limit: Gauge,
    series_dropped: PromCounter,
    drains: PromCounter,
    drain_seconds: Seconds,
}

impl Families {
    fn register(&self, r: &mut Registry) {
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

/// A series the exporter created, so that it can be removed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Owned {
    Exits(ExitLabels),
    ExitLatency(ExitLabels),
    UserspaceExits(ReasonLabels),
    RoundTrip(ReasonLabels),
    Detail(DetailLabels),
    Cpu(CpuLabels),
    Running(VmLabels),
}

impl Owned {
    fn cost(&self) -> u64 {
        match self {
            Owned::ExitLatency(_) | Owned::RoundTrip(_) => SERIES_PER_HISTOGRAM,
            _ => 1,
        }
    }

    fn remove_from(&self, f: &Families) {
        match self {
            Owned::Exits(l) => f.exits.remove(l),
            Owned::ExitLatency(l) => f.exit_latency.remove(l),
            Owned::UserspaceExits(l) => f.userspace_exits.remove(l),
            Owned::RoundTrip(l) => f.round_trip.remove(l),
            Owned::Detail(l) => f.details.remove(l),
            Owned::Cpu(l) => f.vcpu_seconds.remove(l),
            Owned::Running(l) => f.vm_running.remove(l),
        };
    }
}

/// One thread's cumulative times as already exported (ns).
#[derive(Clone, Copy, Debug, Default)]
struct CpuSeen {
    in_run: u64,
    vmm: u64,
    blocked: u64,
    waiting: u64,
}

/// What the exporter keeps per VM: all of it goes when the VM's series are removed.
struct VmState {
    name: String,
    owned: HashSet<Owned>,
    /// Detail keys with series, per (vCPU label, kind).
    topk: BTreeMap<(Option<String>, DetailKind), TopK<Detail>>,
    cpu: HashMap<u32, CpuSeen>,
    /// vCPU labels, fixed at a thread's first sight so its series never change name.
    vcpus: HashMap<u32, String>,
    gone_since: Option<Instant>,
}

impl VmState {
    fn new(pid: u32, vm: Option<&Vm>) -> VmState {
        VmState {
            name: vm.map_or_else(|| format!("pid {pid}"), |v| v.name.clone()),
            owned: HashSet::new(),
            topk: BTreeMap::new(),
            cpu: HashMap::new(),
            vcpus: HashMap::new(),
            gone_since: None,
        }
    }
}

pub struct Exporter {
    f: Families,
    settings: Settings,
    vms: BTreeMap<u32, VmState>,
    /// Per-VM series exported now.
    series: u64,
    /// The kernel's counters as of the last interval.
    counters: [u64; Counter::COUNT as usize],
}

/// The series label of a kernel counter: (loss?, name). Exhaustive: a new counter must be named.
const fn counter_label(c: Counter) -> (bool, &'static str) {
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

impl Exporter {
    /// The exporter's metrics, registered in `registry` (whose prefix names them).
    pub fn new(registry: &mut Registry, settings: Settings) -> Exporter {
        let f = Families::default();
        f.register(registry);
        f.series_limit.set(settings.max_series as i64);
        for c in Counter::ALL {
            let (loss, name) = counter_label(c);
            let family = if loss {
                &f.tracer_losses
            } else {
                &f.tracer_events
            };
            family
                .get_or_create(&[(if loss { "loss" } else { "event" }, name)])
                .inc_by(0);
        }
        Exporter {
            f,
            settings,
            vms: BTreeMap::new(),
            series: 0,
            counters: [0; Counter::COUNT as usize],
        }
    }

    /// The kernel maps' capacities, once.
    pub fn set_capacity(&self, cap: MapEntries) {
        for (map, n) in [
            ("threads", cap.threads),
            ("latency", cap.latency),
            ("details", cap.details),
        ] {
            self.f
                .map_capacity
                .get_or_create(&[("map", map)])
                .set(n as i64);
        }
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
            let running = self.vm_mut(pid, directory).gone_since.is_none();
            let labels = self.vm_labels(pid, None);
            if self.ensure(pid, Owned::Running(labels.clone())) {
                self.f.vm_running.get_or_create(&labels).set(running as i64);
            }
        }
        self.kernel_counters(iv);
        let mut handling: HashMap<(u32, u32), u64> = HashMap::new();
        for (k, d) in &iv.latency {
            self.vm_mut(k.tgid, directory);
            // A halt's exit->entry time is a blocked vCPU, not handling (as the CPU table).
            if k.kind == LatencyKind::Exit as u32 && exit_class(k.isa, k.reason) != ExitClass::Halt
            {
                *handling.entry((k.tgid, k.tid)).or_default() += d.total_ns;
            }
            let vcpu = self.vcpu_label(k.tgid, k.tid, k.vcpu_id, directory);
            let vm = self.vm_labels(k.tgid, vcpu);
            if k.kind == LatencyKind::Exit as u32 {
                let l = ExitLabels {
                    vm,
                    isa: isa_name(k.isa),
                    reason: exit_reason_name(k.isa, k.reason),
                };
                if self.ensure(k.tgid, Owned::Exits(l.clone())) {
                    self.f.exits.get_or_create(&l).inc_by(d.count);
                }
                if self.ensure(k.tgid, Owned::ExitLatency(l.clone())) {
                    self.f
                        .exit_latency
                        .get_or_create(&l)
                        .add(&d.buckets, d.total_ns);
                }
            } else if k.kind == LatencyKind::VmmRoundTrip as u32 {
                let l = ReasonLabels {
                    vm,
                    reason: userspace_exit_name(k.reason),
                };
                if self.ensure(k.tgid, Owned::RoundTrip(l.clone())) {
                    self.f
                        .round_trip
                        .get_or_create(&l)
                        .add(&d.buckets, d.total_ns);
                }
            }
        }
        for (k, &n) in ended {
            self.vm_mut(k.tgid, directory);
            let vcpu = self.vcpu_label(k.tgid, k.tid, k.vcpu_id, directory);
            let l = ExitLabels {
                vm: self.vm_labels(k.tgid, vcpu),
                isa: isa_name(k.isa),
                reason: exit_reason_name(k.isa, k.reason),
            };
            if self.ensure(k.tgid, Owned::Exits(l.clone())) {
                self.f.exits.get_or_create(&l).inc_by(n);
            }
        }
        self.details(iv, directory);
        let split = iv.counters[Counter::ExitsSeen as usize] > 0;
        self.cpu(iv, &handling, split, directory);
        self.f
            .map_entries
            .get_or_create(&[("map", "threads")])
            .set(iv.threads.len() as i64);
        self.f
            .map_entries
            .get_or_create(&[("map", "latency")])
            .set(iv.latency.len() as i64);
        let detail_keys = iv.details.iter().filter(|(k, _)| !k.is_other()).count();
        self.f
            .map_entries
            .get_or_create(&[("map", "details")])
            .set(detail_keys as i64);
        self.gauges();
    }

    /// The drain's own cost.
    pub fn drained(&self, took: Duration) {
        self.f.drains.inc();
        self.f.drain_seconds.inc_by(took.as_secs_f64());
    }

    /// The VMs the exporter has series or state for.
    pub fn pids(&self) -> Vec<u32> {
        self.vms.keys().copied().collect()
    }

    /// Notes whether VM `pid` still runs; a VM that ended starts its grace period.
    pub fn set_running(&mut self, pid: u32, running: bool, now: Instant) {
        let Some(vm) = self.vms.get_mut(&pid) else {
            return;
        };
        match (running, vm.gone_since) {
            (false, None) => vm.gone_since = Some(now),
            (true, Some(_)) => vm.gone_since = None,
            _ => return,
        }
        let labels = self.vm_labels(pid, None);
        if let Some(g) = self.f.vm_running.get(&labels) {
            g.set(running as i64);
        }
        self.gauges();
    }

    /// Removes every series of the VMs gone for at least `grace`; returns their pids.
    pub fn expire(&mut self, now: Instant, grace: Duration) -> Vec<u32> {
        let gone: Vec<u32> = self
            .vms
            .iter()
            .filter(|(_, v)| v.gone_since.is_some_and(|t| now.duration_since(t) >= grace))
            .map(|(&pid, _)| pid)
            .collect();
        for &pid in &gone {
            self.forget(pid);
        }
        gone
    }

    /// Removes every series of VM `pid` now.
    pub fn forget(&mut self, pid: u32) {
        if let Some(vm) = self.vms.remove(&pid) {
            for o in &vm.owned {
                o.remove_from(&self.f);
                self.series -= o.cost();
            }
        }
        self.gauges();
    }

    fn gauges(&self) {
        self.f.series.set(self.series as i64);
        let running = self.vms.values().filter(|v| v.gone_since.is_none());
        self.f.vms.set(running.count() as i64);
    }

    fn kernel_counters(&mut self, iv: &Interval) {
        for c in Counter::ALL {
            let now = iv.counters[c as usize];
            let delta = now.saturating_sub(self.counters[c as usize]);
            self.counters[c as usize] = now;
            let (loss, name) = counter_label(c);
            let family = if loss {
                &self.f.tracer_losses
            } else {
                &self.f.tracer_events
            };
            family
                .get_or_create(&[(if loss { "loss" } else { "event" }, name)])
                .inc_by(delta);
        }
    }

    /// Userspace exits per reason, and detail keys through each VM's top K.
    fn details(&mut self, iv: &Interval, directory: &BTreeMap<u32, Vm>) {
        type Group = (u32, Option<String>, DetailKind);
        let mut keyed: BTreeMap<Group, BTreeMap<Detail, u64>> = BTreeMap::new();
        let mut unkeyed: BTreeMap<Group, u64> = BTreeMap::new();
        for &(k, n) in &iv.details {
            let Some(kind) = DetailKind::from_u32(k.kind) else {
                continue;
            };
            self.vm_mut(k.tgid, directory);
            let vcpu = self.vcpu_label(k.tgid, k.tid, VCPU_UNKNOWN, directory);
            if kind == DetailKind::UserspaceExit {
                let reason = if k.is_other() {
                    "other".into()
                } else {
                    userspace_reason(k.a, k.b)
                };
                let l = ReasonLabels {
                    vm: self.vm_labels(k.tgid, vcpu),
                    reason,
                };
                if self.ensure(k.tgid, Owned::UserspaceExits(l.clone())) {
                    self.f.userspace_exits.get_or_create(&l).inc_by(n);
                }
                continue;
            }
            let group = (k.tgid, vcpu, kind);
            match Detail::of(&k) {
                Some(d) => *keyed.entry(group).or_default().entry(d).or_default() += n,
                None => *unkeyed.entry(group).or_default() += n,
            }
        }
        // Every top K every interval (also without events: rates decay).
        let mut groups: Vec<Group> = self
            .vms
            .iter()
            .flat_map(|(&pid, v)| v.topk.keys().map(move |(c, k)| (pid, c.clone(), *k)))
            .collect();
        groups.extend(keyed.keys().cloned());
        groups.sort();
        groups.dedup();
        let empty = BTreeMap::new();
        for group in groups {
            let (pid, vcpu, kind) = group.clone();
            let top_keys = self.settings.top_keys;
            let Some(vm) = self.vms.get_mut(&pid) else {
                continue;
            };
            let topk = vm
                .topk
                .entry((vcpu.clone(), kind))
                .or_insert_with(|| TopK::new(top_keys));
            let a = topk.assign(keyed.get(&group).unwrap_or(&empty));
            let vm_labels = self.vm_labels(pid, vcpu);
            for d in a.evicted {
                let o = Owned::Detail(DetailLabels {
                    vm: vm_labels.clone(),
                    detail: d,
                });
                self.disown(pid, &o);
            }
            for (d, n) in a.keyed {
                self.count_detail(pid, &vm_labels, d, n);
            }
            let other = a.other + unkeyed.remove(&group).unwrap_or(0);
            if other > 0 {
                self.count_detail(pid, &vm_labels, Detail::other(kind), other);
            }
        }
        // Events without a key of kinds that had no keyed events at all.
        for ((pid, vcpu, kind), n) in unkeyed {
            let vm_labels = self.vm_labels(pid, vcpu);
            self.count_detail(pid, &vm_labels, Detail::other(kind), n);
        }
    }

    fn count_detail(&mut self, pid: u32, vm: &VmLabels, detail: Detail, n: u64) {
        let l = DetailLabels {
            vm: vm.clone(),
            detail,
        };
        if self.ensure(pid, Owned::Detail(l.clone())) {
            self.f.details.get_or_create(&l).inc_by(n);
        }
    }

    /// vCPU thread time: each thread's growth since the last interval, by category.
    fn cpu(
        &mut self,
        iv: &Interval,
        handling: &HashMap<(u32, u32), u64>,
        split: bool,
        directory: &BTreeMap<u32, Vm>,
    ) {
        let mut live: HashSet<(u32, u32)> = HashSet::new();
        for t in &iv.threads {
            live.insert((t.tgid, t.tid));
            let (d_in_run, d_vmm, d_blocked, d_waiting) = self.cpu_growth(t, directory);
            let d_handling = handling
                .get(&(t.tgid, t.tid))
                .copied()
                .unwrap_or(0)
                .min(d_in_run);
            let vcpu = self.vcpu_label(t.tgid, t.tid, VCPU_UNKNOWN, directory);
            let vm = self.vm_labels(t.tgid, vcpu);
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
                if self.ensure(t.tgid, Owned::Cpu(l.clone())) {
                    self.f
                        .vcpu_seconds
                        .get_or_create(&l)
                        .inc_by(ns as f64 / 1e9);
                }
            }
        }
        for (pid, vm) in &mut self.vms {
            vm.cpu.retain(|tid, _| live.contains(&(*pid, *tid)));
        }
    }

    /// How much a thread's in-KVM_RUN on-CPU, VMM on-CPU, blocked and waiting times grew since
    /// the last interval. Each never goes back (a thread first taken to be inside KVM_RUN can
    /// turn out to have been outside: its time moves, and was already counted once).
    fn cpu_growth(&mut self, t: &ThreadCpu, directory: &BTreeMap<u32, Vm>) -> (u64, u64, u64, u64) {
        let vm = self.vm_mut(t.tgid, directory);
        let seen = vm.cpu.entry(t.tid).or_default();
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

    /// The state of VM `pid`, created at its first sight.
    fn vm_mut(&mut self, pid: u32, directory: &BTreeMap<u32, Vm>) -> &mut VmState {
        self.vms
            .entry(pid)
            .or_insert_with(|| VmState::new(pid, directory.get(&pid)))
    }

    fn vm_labels(&self, pid: u32, vcpu: Option<String>) -> VmLabels {
        VmLabels {
            vm: self
                .vms
                .get(&pid)
                .map_or_else(|| format!("pid {pid}"), |v| v.name.clone()),
            pid,
            vcpu,
        }
    }

    /// The vcpu label of a key's thread with `--per-vcpu` (else None): N of its `CPU N/KVM`
    /// name, else the vcpu_id kvm_exit gave, else `tid N`; fixed at the thread's first sight.
    fn vcpu_label(
        &mut self,
        pid: u32,
        tid: u32,
        vcpu_id: u32,
        directory: &BTreeMap<u32, Vm>,
    ) -> Option<String> {
        if !self.settings.per_vcpu {
            return None;
        }
        let comm_index = directory
            .get(&pid)
            .and_then(|v| v.threads.iter().find(|t| t.tid == tid))
            .and_then(|t| vcpu_index_of_comm(&t.comm));
        let vm = self.vm_mut(pid, directory);
        let label = vm.vcpus.entry(tid).or_insert_with(|| {
            comm_index
                .or((vcpu_id != VCPU_UNKNOWN).then_some(vcpu_id))
                .map_or_else(|| format!("tid {tid}"), |i| i.to_string())
        });
        Some(label.clone())
    }

    /// Whether series `o` of VM `pid` exists or may be created within `--max-series`; counts
    /// the refusal otherwise.
    fn ensure(&mut self, pid: u32, o: Owned) -> bool {
        let Some(vm) = self.vms.get_mut(&pid) else {
            return false;
        };
        if vm.owned.contains(&o) {
            return true;
        }
        if self.series + o.cost() > self.settings.max_series {
            self.f.series_dropped.inc();
            return false;
        }
        self.series += o.cost();
        vm.owned.insert(o);
        true
    }

    fn disown(&mut self, pid: u32, o: &Owned) {
        if let Some(vm) = self.vms.get_mut(&pid)
            && vm.owned.remove(o)
        {
            o.remove_from(&self.f);
            self.series -= o.cost();
        }
    }
}

#[cfg(test)]
mod tests {
    use kvmtrace_common::{DetailKey, bucket_index};

    use super::*;
    use crate::{model::LatencyDelta, vm::Thread};

    fn exporter(per_vcpu: bool, max_series: u64, top_keys: usize) -> (Registry, Exporter) {
        let mut r = Registry::with_prefix("kvmtrace");
        let e = Exporter::new(
            &mut r,
            Settings {
                per_vcpu,
                max_series,
                top_keys,
            },
        );
        (r, e)
    }

    /// The exposition's sample lines of metric `name` (with any suffix), sorted.
    fn samples(r: &Registry, name: &str) -> Vec<String> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, r).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(name))
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    fn directory() -> BTreeMap<u32, Vm> {
        let vm = Vm {
            pid: 100,
            name: "vm1".into(),
            aliases: Default::default(),
            threads: vec![
                Thread {
                    tid: 101,
                    comm: "CPU 0/KVM".into(),
                },
                Thread {
                    tid: 102,
                    comm: "CPU 1/KVM".into(),
                },
            ],
        };
        [(100, vm)].into()
    }

    fn port(tid: u32, port: u32, n: u64) -> (DetailKey, u64) {
        let k = DetailKey {
            tgid: 100,
            tid,
            kind: DetailKind::Pio as u32,
            a: port,
            b: 1 | 1 << 8,
        };
        (k, n)
    }

    fn exit(tid: u32, reason: u32, samples: &[u64]) -> (LatencyKey, LatencyDelta) {
        let key = LatencyKey {
            tgid: 100,
            tid,
            vcpu_id: tid - 101,
            isa: 1,
            reason,
            kind: LatencyKind::Exit as u32,
        };
        let mut buckets: BTreeMap<u16, u32> = BTreeMap::new();
        for &s in samples {
            *buckets.entry(bucket_index(s) as u16).or_default() += 1;
        }
        let delta = LatencyDelta {
            count: samples.len() as u64,
            total_ns: samples.iter().sum(),
            min_ns: *samples.iter().min().unwrap(),
            max_ns: *samples.iter().max().unwrap(),
            buckets: buckets.into_iter().collect(),
        };
        (key, delta)
    }

    #[test]
    fn counters_are_cumulative_and_exact() {
        let (r, mut e) = exporter(false, 1000, 10);
        let dir = directory();
        let mut counters = [0; Counter::COUNT as usize];
        counters[Counter::DetailsSeen as usize] = 7;
        let iv = Interval {
            details: vec![port(101, 0x70, 3), port(102, 0x70, 4)],
            latency: vec![exit(101, 30, &[300, 300, 5000])],
            counters,
            ..Default::default()
        };
        e.apply(&iv, &BTreeMap::new(), &dir);
        counters[Counter::DetailsSeen as usize] = 12;
        let ended: BTreeMap<LatencyKey, u64> = [(exit(101, 30, &[1]).0, 1)].into();
        let iv = Interval {
            details: vec![port(101, 0x70, 5)],
            counters,
            ..Default::default()
        };
        e.apply(&iv, &ended, &dir);
        assert_eq!(
            samples(&r, "kvmtrace_detail_events_total"),
            [
                "kvmtrace_detail_events_total{vm=\"vm1\",pid=\"100\",kind=\"port\",key=\"0x0070\",access=\"out\"} 12"
            ]
        );
        assert_eq!(
            samples(&r, "kvmtrace_exits_total"),
            [
                "kvmtrace_exits_total{vm=\"vm1\",pid=\"100\",isa=\"VMX\",reason=\"IO_INSTRUCTION\"} 4"
            ]
        );
        assert_eq!(
            samples(&r, "kvmtrace_tracer_events_total{event=\"detail\"}"),
            ["kvmtrace_tracer_events_total{event=\"detail\"} 12"]
        );
    }

    #[test]
    fn histograms_count_per_kernel_aligned_bucket_with_exact_sums() {
        let (r, mut e) = exporter(false, 1000, 10);
        let iv = Interval {
            latency: vec![exit(101, 30, &[300, 300, 5000])],
            ..Default::default()
        };
        e.apply(&iv, &BTreeMap::new(), &directory());
        let labels = r#"vm="vm1",pid="100",isa="VMX",reason="IO_INSTRUCTION""#;
        let line = |suffix: &str, le: Option<&str>, n: &str| {
            let le = le.map(|le| format!(",le=\"{le}\"")).unwrap_or_default();
            format!("kvmtrace_exit_latency_seconds{suffix}{{{labels}{le}}} {n}")
        };
        // Cumulative: nothing below 256 ns, both 300 ns samples below 1.024 µs, the 5 µs one
        // below 16.384 µs; the sum is the kernel's exact total.
        let mut want = vec![
            line("_sum", None, "0.0000056"),
            line("_count", None, "3"),
            line("_bucket", Some("2.56e-07"), "0"),
            line("_bucket", Some("1.024e-06"), "2"),
            line("_bucket", Some("4.096e-06"), "2"),
            line("_bucket", Some("1.6384e-05"), "3"),
            line("_bucket", Some("+Inf"), "3"),
        ];
        for le in [
            "6.5536e-05",
            "0.000262144",
            "0.001048576",
            "0.004194304",
            "0.016777216",
            "0.067108864",
            "0.268435456",
            "1.073741824",
            "4.294967296",
            "17.179869184",
        ] {
            want.push(line("_bucket", Some(le), "3"));
        }
        want.sort();
        assert_eq!(samples(&r, "kvmtrace_exit_latency_seconds"), want);
    }

    #[test]
    fn per_vcpu_labels_and_top_k_with_other() {
        let (r, mut e) = exporter(true, 1000, 1);
        let iv = Interval {
            details: vec![
                port(101, 0x70, 10),
                port(101, 0x71, 3),
                (DetailKey::other(100, 101, DetailKind::Pio), 2),
                port(102, 0x80, 1),
            ],
            ..Default::default()
        };
        e.apply(&iv, &BTreeMap::new(), &directory());
        assert_eq!(
            samples(&r, "kvmtrace_detail_events_total"),
            [
                "kvmtrace_detail_events_total{vm=\"vm1\",pid=\"100\",vcpu=\"0\",kind=\"port\",key=\"0x0070\",access=\"out\"} 10",
                "kvmtrace_detail_events_total{vm=\"vm1\",pid=\"100\",vcpu=\"0\",kind=\"port\",key=\"other\"} 5",
                "kvmtrace_detail_events_total{vm=\"vm1\",pid=\"100\",vcpu=\"1\",kind=\"port\",key=\"0x0080\",access=\"out\"} 1",
            ]
        );
    }

    #[test]
    fn the_series_cap_counts_what_it_refuses() {
        // vm_running (1) + one port series (1): the second port has no room.
        let (r, mut e) = exporter(false, 2, 10);
        let iv = Interval {
            details: vec![port(101, 0x70, 10), port(101, 0x71, 3)],
            ..Default::default()
        };
        e.apply(&iv, &BTreeMap::new(), &directory());
        assert_eq!(samples(&r, "kvmtrace_detail_events_total").len(), 1);
        assert_eq!(
            samples(&r, "kvmtrace_series"),
            [
                "kvmtrace_series 2",
                "kvmtrace_series_dropped_total 1",
                "kvmtrace_series_limit 2"
            ]
        );
    }

    #[test]
    fn a_gone_vm_keeps_its_series_for_the_grace_period_then_loses_them_all() {
        let (r, mut e) = exporter(true, 1000, 10);
        let t0 = Instant::now();
        let iv = Interval {
            details: vec![port(101, 0x70, 10)],
            latency: vec![exit(101, 30, &[300])],
            threads: vec![ThreadCpu {
                tgid: 100,
                tid: 101,
                tracked_ns: 1_000_000_000,
                run_ns: 600_000_000,
                off_run_blocked_ns: 100_000_000,
                ..Default::default()
            }],
            ..Default::default()
        };
        e.apply(&iv, &BTreeMap::new(), &directory());
        assert!(samples(&r, "kvmtrace_series ")[0] != "kvmtrace_series 0");
        e.set_running(100, false, t0);
        // Later intervals (its last events, or none) leave it marked gone.
        e.apply(&Interval::default(), &BTreeMap::new(), &directory());
        assert_eq!(
            samples(&r, "kvmtrace_vm_running"),
            ["kvmtrace_vm_running{vm=\"vm1\",pid=\"100\"} 0"]
        );
        assert_eq!(
            e.expire(t0 + Duration::from_secs(1), Duration::from_secs(2)),
            [0u32; 0]
        );
        assert_eq!(
            e.expire(t0 + Duration::from_secs(2), Duration::from_secs(2)),
            [100]
        );
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &r).unwrap();
        assert!(!text.contains("vm1"), "{text}");
        assert_eq!(samples(&r, "kvmtrace_series "), ["kvmtrace_series 0"]);
    }

    #[test]
    fn vcpu_time_by_category() {
        let (r, mut e) = exporter(false, 1000, 10);
        let t = |run_ns, off_run_blocked_ns| ThreadCpu {
            tgid: 100,
            tid: 101,
            tracked_ns: 2_000_000_000,
            run_ns,
            off_run_blocked_ns,
            off_user_runnable_ns: 100_000_000,
            ..Default::default()
        };
        let mut counters = [0; Counter::COUNT as usize];
        counters[Counter::ExitsSeen as usize] = 1;
        let iv = Interval {
            latency: vec![exit(101, 30, &[200_000_000])],
            threads: vec![t(1_500_000_000, 500_000_000)],
            counters,
            ..Default::default()
        };
        e.apply(&iv, &BTreeMap::new(), &directory());
        assert_eq!(
            samples(&r, "kvmtrace_vcpu_seconds_total"),
            [
                "kvmtrace_vcpu_seconds_total{vm=\"vm1\",pid=\"100\",category=\"blocked\"} 0.5",
                "kvmtrace_vcpu_seconds_total{vm=\"vm1\",pid=\"100\",category=\"exit_handling\"} 0.2",
                "kvmtrace_vcpu_seconds_total{vm=\"vm1\",pid=\"100\",category=\"guest\"} 0.8",
                "kvmtrace_vcpu_seconds_total{vm=\"vm1\",pid=\"100\",category=\"runnable_wait\"} 0.1",
                "kvmtrace_vcpu_seconds_total{vm=\"vm1\",pid=\"100\",category=\"vmm\"} 0.4",
            ]
        );
    }
}
