//! `kvmtrace diff BEFORE AFTER`: what changed between two recordings, per exit reason and per
//! key, sorted by impact (host time per second for exits, VMM time per second for userspace
//! exits, rate for detail keys). VMs are matched by name, so a restarted VM still compares.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    names::{msr_label, port_label},
    report::Report,
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

fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Every row of a report as (table, vm, key) -> side.
fn sides(r: &Report) -> BTreeMap<(&'static str, String, String), Side> {
    let secs = r.duration_secs;
    let mut m: BTreeMap<(&'static str, String, String), Side> = BTreeMap::new();
    let mut add = |table, vm: &str, key: String, side: Side| {
        let e = m.entry((table, vm.to_string(), key)).or_default();
        e.count += side.count;
        e.per_sec += side.per_sec;
        e.ns_per_sec += side.ns_per_sec;
        e.time_pct += side.time_pct;
        e.p99_ns = e.p99_ns.max(side.p99_ns);
    };
    for vm in &r.vms {
        for e in &vm.exits {
            add(
                "exit",
                &vm.name,
                format!("{} ({})", e.reason, e.isa),
                Side {
                    count: e.count,
                    per_sec: e.per_sec,
                    ns_per_sec: per_sec(e.latency.total_ns, secs),
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
            add(
                "userspace_exit",
                &vm.name,
                u.reason.clone(),
                Side {
                    count: u.count,
                    per_sec: u.per_sec,
                    ns_per_sec: per_sec(ns, secs),
                    time_pct: 0.0,
                    p99_ns: p99,
                },
            );
        }
        let count_only = |n: u64, rate: f64| Side {
            count: n,
            per_sec: rate,
            ..Default::default()
        };
        for p in &vm.ports {
            add(
                "port",
                &vm.name,
                format!("{} {}", port_label(p.port), p.direction),
                count_only(p.count, p.per_sec),
            );
        }
        for x in &vm.mmio {
            add(
                "mmio",
                &vm.name,
                format!("{:#x} {}", x.gpa, x.access),
                count_only(x.count, x.per_sec),
            );
        }
        for x in &vm.msrs {
            add(
                "msr",
                &vm.name,
                format!("{} {}", msr_label(x.msr), x.access),
                count_only(x.count, x.per_sec),
            );
        }
        for c in &vm.cpuid {
            add(
                "cpuid",
                &vm.name,
                format!("{:#x}", c.function),
                count_only(c.count, c.per_sec),
            );
        }
    }
    m
}

pub fn diff(before: &Report, after: &Report) -> Diff {
    let b = sides(before);
    let a = sides(after);
    let mut keys: Vec<&(&'static str, String, String)> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut rows: Vec<Row> = keys
        .into_iter()
        .map(|k| {
            let before = b.get(k).cloned().unwrap_or_default();
            let after = a.get(k).cloned().unwrap_or_default();
            let timed = matches!(k.0, "exit" | "userspace_exit")
                && (before.ns_per_sec > 0.0 || after.ns_per_sec > 0.0);
            let impact = if timed {
                after.ns_per_sec - before.ns_per_sec
            } else {
                after.per_sec - before.per_sec
            };
            Row {
                table: k.0,
                vm: k.1.clone(),
                key: k.2.clone(),
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
