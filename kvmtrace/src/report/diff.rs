//! `kvmtrace diff BEFORE AFTER`: what changed between two recordings, per exit reason and per
//! key, sorted by impact (host time per second for exits, VMM time per second for userspace
//! exits, rate for detail keys). VMs are matched by name, so a restarted VM still compares.

use std::collections::BTreeMap;

use serde::Serialize;

use kvmtrace_common::{Detail, UserspaceExit};

use crate::{
    names::{msr_label, port_label},
    report::{Report, rate},
    tp::reasons::{exit_reason_name, isa_name, userspace_exit_label},
};

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Side {
    pub count: u64,
    pub per_sec: f64,
    /// Host (or VMM) time per second of recording, ns/s; 0 where not measured.
    pub ns_per_sec: f64,
    pub time_pct: f64,
    pub p99_ns: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    /// exit, userspace_exit, port, mmio, msr, cpuid
    pub table: &'static str,
    pub vm: String,
    pub key: String,
    pub before: Side,
    pub after: Side,
    /// after - before of the measure this table is sorted by (ns/s or exits/s).
    pub impact: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    pub before_secs: f64,
    pub after_secs: f64,
    pub rows: Vec<Row>,
}

/// What a diff row compares, decoded: a kvm_exit reason, a userspace exit, or a detail key
/// without the parts the diff merges (port size, MMIO length, MSR fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DiffKey {
    Exit { isa: u32, reason: u32 },
    Userspace(UserspaceExit),
    Detail(Detail),
}

impl DiffKey {
    fn of_detail(d: Detail) -> DiffKey {
        DiffKey::Detail(match d {
            Detail::Port { port, dir, .. } => Detail::Port { port, dir, size: 0 },
            Detail::Mmio { gpa, access, .. } => Detail::Mmio {
                gpa,
                access,
                len: 0,
            },
            Detail::Msr { index, dir, .. } => Detail::Msr {
                index,
                dir,
                faulted: false,
            },
            other => other,
        })
    }

    /// The table the row belongs to: exit, userspace_exit, port, mmio, msr, cpuid.
    fn table(&self) -> &'static str {
        match self {
            DiffKey::Exit { .. } => "exit",
            DiffKey::Userspace(_) => "userspace_exit",
            DiffKey::Detail(Detail::Port { .. }) => "port",
            DiffKey::Detail(Detail::Mmio { .. }) => "mmio",
            DiffKey::Detail(Detail::Msr { .. }) => "msr",
            DiffKey::Detail(Detail::Cpuid { .. }) => "cpuid",
            DiffKey::Detail(_) => "other",
        }
    }

    /// The row's key in its table: "io (SVM)", "IO", "0x0070 RTC index out", "0xd0000000
    /// write", "0x6e0 IA32_TSC_DEADLINE write", "0x0".
    fn label(&self) -> String {
        match *self {
            DiffKey::Exit { isa, reason } => {
                format!("{} ({})", exit_reason_name(isa, reason), isa_name(isa))
            }
            DiffKey::Userspace(exit) => userspace_exit_label(exit),
            DiffKey::Detail(Detail::Port { port, dir, .. }) => {
                format!("{} {}", port_label(port), dir.as_str())
            }
            DiffKey::Detail(Detail::Mmio { gpa, access, .. }) => {
                format!("{gpa:#x} {}", access.as_str())
            }
            DiffKey::Detail(Detail::Msr { index, dir, .. }) => {
                format!("{} {}", msr_label(index), dir.as_str())
            }
            DiffKey::Detail(Detail::Cpuid { function }) => format!("{function:#x}"),
            DiffKey::Detail(d) => crate::names::detail_frame(&d),
        }
    }
}

/// Every row of a report as (VM name, key) -> side, vCPUs summed.
fn sides(r: &Report) -> BTreeMap<(String, DiffKey), Side> {
    let secs = r.duration_secs;
    let mut m: BTreeMap<(String, DiffKey), Side> = BTreeMap::new();
    let mut add = |vm: &str, key: DiffKey, side: Side| {
        let e = m.entry((vm.to_string(), key)).or_default();
        e.count += side.count;
        e.per_sec += side.per_sec;
        e.ns_per_sec += side.ns_per_sec;
        e.time_pct += side.time_pct;
        e.p99_ns = e.p99_ns.max(side.p99_ns);
    };
    for vm in &r.vms {
        for e in &vm.exits {
            let key = DiffKey::Exit {
                isa: e.isa_code,
                reason: e.reason_code,
            };
            add(
                &vm.name,
                key,
                Side {
                    count: e.count,
                    per_sec: e.per_sec,
                    ns_per_sec: rate(e.latency.total_ns, secs),
                    time_pct: e.time_pct,
                    p99_ns: e.latency.p99_ns,
                },
            );
        }
        for u in &vm.userspace_exits {
            let (ns, p99) = u
                .round_trip
                .as_ref()
                .map_or((0, 0), |l| (l.total_ns, l.p99_ns));
            let side = Side {
                count: u.count,
                per_sec: u.per_sec,
                ns_per_sec: rate(ns, secs),
                time_pct: 0.0,
                p99_ns: p99,
            };
            // A restart or error row stands for all of them, whatever stale reason they carry.
            let exit = match u.exit {
                UserspaceExit::Restart { .. } => UserspaceExit::Restart { reason: 0 },
                UserspaceExit::Error { errno, .. } => UserspaceExit::Error { reason: 0, errno },
                reason => reason,
            };
            add(&vm.name, DiffKey::Userspace(exit), side);
        }
        for k in vm.key_rows() {
            let side = Side {
                count: k.count,
                per_sec: k.per_sec,
                ..Default::default()
            };
            add(&vm.name, DiffKey::of_detail(k.detail), side);
        }
    }
    m
}

pub fn diff(before: &Report, after: &Report) -> Diff {
    let b = sides(before);
    let a = sides(after);
    let mut keys: Vec<&(String, DiffKey)> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut rows: Vec<Row> = keys
        .into_iter()
        .map(|k| {
            let before = b.get(k).cloned().unwrap_or_default();
            let after = a.get(k).cloned().unwrap_or_default();
            let timed = matches!(k.1, DiffKey::Exit { .. } | DiffKey::Userspace(_))
                && (before.ns_per_sec > 0.0 || after.ns_per_sec > 0.0);
            let impact = if timed {
                after.ns_per_sec - before.ns_per_sec
            } else {
                after.per_sec - before.per_sec
            };
            Row {
                table: k.1.table(),
                vm: k.0.clone(),
                key: k.1.label(),
                before,
                after,
                impact,
            }
        })
        .collect();
    let order = |t: &str| {
        ["exit", "userspace_exit", "port", "mmio", "msr", "cpuid"]
            .iter()
            .position(|x| *x == t)
            .unwrap_or(9)
    };
    rows.sort_by(|x, y| {
        order(x.table)
            .cmp(&order(y.table))
            .then(y.impact.abs().total_cmp(&x.impact.abs()))
            .then(x.key.cmp(&y.key))
    });
    Diff {
        before_secs: before.duration_secs,
        after_secs: after.duration_secs,
        rows,
    }
}
