//! One screen of `kvmtrace top`: the last interval's report regrouped as the drill-down tree
//! (VM -> vCPU -> exit reason or event kind -> ports / MMIO addresses / MSRs / CPUID functions)
//! with rates per second and each row's recent history for its sparkline. Pure: built from a
//! [`Report`], so it is tested with plain values.

use std::collections::{BTreeMap, VecDeque};

use kvmtrace_common::Detail;

use crate::{
    model::identity::VcpuLabel,
    names::detail_phrase,
    report::{Latency, Report, VmReport},
    tp::class::ExitClass,
};

/// Where a vCPU's (or a VM's) time went in the interval, in % of one CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cpu {
    pub total: f64,
    /// Guest and in-kernel exit handling: known only where kvm_exit/kvm_entry fire.
    pub guest: Option<f64>,
    pub exits: Option<f64>,
    pub vmm: f64,
    pub blocked: f64,
}

impl Cpu {
    fn add(&mut self, o: &Cpu) {
        self.total += o.total;
        self.guest = sum_opt(self.guest, o.guest);
        self.exits = sum_opt(self.exits, o.exits);
        self.vmm += o.vmm;
        self.blocked += o.blocked;
    }
}

fn sum_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (None, None) => None,
        _ => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
    }
}

/// A row at any level of the tree.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Node {
    /// Stable among its siblings across frames: pid, tid, reason or key name.
    pub id: String,
    pub name: String,
    /// Exits/s (VM, vCPU) or events/s (reason, key).
    pub per_sec: f64,
    /// The exits or events behind `per_sec`: exact, in this interval.
    pub count: u64,
    /// VMM round trips/s (VM, vCPU).
    pub vmm_per_sec: Option<f64>,
    pub cpu: Option<Cpu>,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    /// Handling time of a reason, % of one CPU.
    pub time_pct: Option<f64>,
    /// Active storms (VM rows).
    pub storms: Vec<String>,
    /// Recent per-second rates (exits + VMM exits for VMs and vCPUs), oldest first.
    pub history: Vec<u64>,
    pub children: Vec<Node>,
}

/// Everything one screen shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frame {
    pub at_secs: f64,
    pub interval_secs: f64,
    pub vms: Vec<Node>,
    pub notes: Vec<String>,
    /// Events lost in the interval (unpaired, full maps).
    pub lost: u64,
}

/// Points kept per row for sparklines.
pub const HISTORY_POINTS: usize = 60;

/// Each row's recent rates, by its path in the tree. Rows unseen for [`HISTORY_POINTS`] frames
/// are forgotten, so a host where VMs come and go does not grow it.
#[derive(Debug, Default)]
pub struct History {
    frame: u64,
    rows: BTreeMap<String, (u64, VecDeque<u64>)>,
}

impl History {
    fn record(&mut self, path: &str, per_sec: f64) -> Vec<u64> {
        let (seen, points) = self.rows.entry(path.to_string()).or_default();
        // A row that was absent for some frames had no events then.
        let gap = self.frame.saturating_sub(*seen).saturating_sub(1) as usize;
        if !points.is_empty() {
            points.extend(std::iter::repeat_n(0, gap.min(HISTORY_POINTS)));
        }
        points.push_back(per_sec.round() as u64);
        while points.len() > HISTORY_POINTS {
            points.pop_front();
        }
        *seen = self.frame;
        points.iter().copied().collect()
    }

    fn end_frame(&mut self) {
        let frame = self.frame;
        self.rows
            .retain(|_, (seen, _)| frame.saturating_sub(*seen) < HISTORY_POINTS as u64);
        self.frame += 1;
    }
}

/// The tree of `report` (built per vCPU from one interval), with history.
pub fn build(report: &Report, history: &mut History, at_secs: f64) -> Frame {
    let secs = report.duration_secs.max(1e-9);
    let mut vms: Vec<Node> = report
        .vms
        .iter()
        .map(|vm| vm_node(report, vm, secs))
        .collect();
    for vm in &mut vms {
        fill_history(vm, "", history);
    }
    history.end_frame();
    Frame {
        at_secs,
        interval_secs: report.duration_secs,
        vms,
        notes: report.notes.clone(),
        lost: report.counters.losses(),
    }
}

fn fill_history(node: &mut Node, parent: &str, history: &mut History) {
    let path = format!("{parent}/{}", node.id);
    // VMs and vCPUs: exits and VMM exits together (where kvm_exit does not fire, the VMM exits
    // are all there is).
    node.history = history.record(&path, node.per_sec + node.vmm_per_sec.unwrap_or(0.0));
    for c in &mut node.children {
        fill_history(c, &path, history);
    }
}

fn vm_node(report: &Report, vm: &VmReport, secs: f64) -> Node {
    let vcpus: Vec<Node> = vm
        .vcpus
        .iter()
        .map(|v| vcpu_node(vm, v.label, v.tid, secs))
        .collect();
    let mut cpu = Cpu::default();
    for v in &vcpus {
        if let Some(c) = &v.cpu {
            cpu.add(c);
        }
    }
    let storms = report
        .storms
        .iter()
        .filter(|s| s.pid == vm.pid && s.ongoing)
        .map(|s| {
            let vcpu = format!("vCPU {}: ", s.vcpu);
            format!("{vcpu}{} {:.0}/s", s.what, s.peak_rate)
        })
        .collect();
    Node {
        id: vm.pid.to_string(),
        name: vm.name.clone(),
        per_sec: total(vcpus.iter().map(|v| v.per_sec)),
        count: vcpus.iter().map(|v| v.count).sum(),
        vmm_per_sec: Some(total(vcpus.iter().filter_map(|v| v.vmm_per_sec))),
        cpu: Some(cpu),
        storms,
        children: vcpus,
        ..Node::default()
    }
}

fn vcpu_node(vm: &VmReport, label: VcpuLabel, tid: u32, secs: f64) -> Node {
    let mine = |v: &Option<VcpuLabel>| *v == Some(label);
    let cpu = vm.cpu.iter().find(|c| c.tid == tid).map(|c| Cpu {
        total: c.cpu_pct,
        guest: c.guest_pct,
        exits: c.exit_handling_pct,
        vmm: c.vmm_pct,
        blocked: c.blocked_pct,
    });
    let mut groups: Vec<Node> = Vec::new();
    let mut claimed: Vec<ExitClass> = Vec::new();
    for row in vm.exits.iter().filter(|r| mine(&r.vcpu)) {
        let class = row.class;
        claimed.push(class);
        let name = format!("{} {}", row.isa, row.reason);
        groups.push(Node {
            id: name.clone(),
            name,
            per_sec: row.per_sec,
            count: row.count,
            time_pct: Some(row.latency.total_ns as f64 / 1e9 / secs * 100.0),
            children: keys_of(vm, label, class),
            ..latency_cells(&row.latency)
        });
    }
    // Where kvm_exit does not fire (kvm_pvm) or missed a class, the detail events still say what
    // the guest did: one row per kind.
    for (class, name) in [
        (ExitClass::Io, "port I/O (kvm_pio)"),
        (ExitClass::Mmio, "MMIO (kvm_mmio)"),
        (ExitClass::Msr, "MSR (kvm_msr)"),
        (ExitClass::Cpuid, "CPUID (kvm_cpuid)"),
    ] {
        let keys = keys_of(vm, label, class);
        if !claimed.contains(&class) && !keys.is_empty() {
            groups.push(Node {
                id: name.into(),
                name: name.into(),
                per_sec: total(keys.iter().map(|k| k.per_sec)),
                count: keys.iter().map(|k| k.count).sum(),
                children: keys,
                ..Node::default()
            });
        }
    }
    let vmm: Vec<Node> = vm
        .userspace_exits
        .iter()
        .filter(|r| mine(&r.vcpu))
        .map(|r| Node {
            id: r.reason.clone(),
            name: r.reason.clone(),
            per_sec: r.per_sec,
            count: r.count,
            ..r.round_trip.as_ref().map(latency_cells).unwrap_or_default()
        })
        .collect();
    let vmm_per_sec = total(vmm.iter().map(|n| n.per_sec));
    if !vmm.is_empty() {
        let name = "VMM exits (kvm_userspace_exit)";
        groups.push(Node {
            id: name.into(),
            name: name.into(),
            per_sec: vmm_per_sec,
            count: vmm.iter().map(|n| n.count).sum(),
            children: vmm,
            ..Node::default()
        });
    }
    let exits: Vec<&Node> = groups.iter().filter(|g| g.time_pct.is_some()).collect();
    Node {
        id: tid.to_string(),
        name: match label {
            VcpuLabel::Index(i) => format!("vCPU {i} (tid {tid})"),
            VcpuLabel::Tid(_) => format!("thread {tid}"),
        },
        per_sec: total(exits.iter().map(|g| g.per_sec)),
        count: exits.iter().map(|g| g.count).sum(),
        vmm_per_sec: Some(vmm_per_sec),
        cpu,
        children: groups,
        ..Node::default()
    }
}

/// A sum that is 0.0, not -0.0 (f64's `Sum` of nothing), when there is nothing to add.
fn total(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, |a, b| a + b)
}

fn latency_cells(l: &Latency) -> Node {
    Node {
        p50_ns: (l.count > 0).then_some(l.p50_ns),
        p99_ns: (l.count > 0).then_some(l.p99_ns),
        ..Node::default()
    }
}

/// The detail rows of `class` on vCPU `label`, with the "other keys" row of that kind.
fn keys_of(vm: &VmReport, label: VcpuLabel, class: ExitClass) -> Vec<Node> {
    let Some(kind) = class.detail_kind() else {
        return Vec::new();
    };
    let key = |name: String, per_sec: f64, count: u64| Node {
        id: name.clone(),
        name,
        per_sec,
        count,
        ..Node::default()
    };
    let mut keys: Vec<Node> = vm
        .key_rows()
        .filter(|r| r.vcpu == Some(label) && r.detail.kind() == kind)
        .map(|r| {
            let size = match r.detail {
                Detail::Port { size, .. } => format!(" {size}B"),
                Detail::Mmio { len, .. } => format!(" {len}B"),
                Detail::Msr { faulted: true, .. } => " faulted".into(),
                _ => String::new(),
            };
            key(
                format!("{}{size}", detail_phrase(&r.detail)),
                r.per_sec,
                r.count,
            )
        })
        .collect();
    for o in vm
        .other_keys
        .iter()
        .filter(|o| o.vcpu == Some(label) && o.detail_kind == kind)
    {
        keys.push(key(format!("other {}", o.kind), o.per_sec, o.count));
    }
    keys
}
