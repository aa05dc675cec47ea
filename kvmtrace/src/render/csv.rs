//! `--format csv`: one row per table row, in one flat table, for spreadsheets.

use std::io;

use crate::{model::identity::VcpuLabel, report::Report};

const HEADER: [&str; 14] = [
    "table", "vm", "pid", "vcpu", "key", "detail", "count", "per_sec", "time_pct", "total_ns",
    "min_ns", "p50_ns", "p99_ns", "max_ns",
];

pub fn render(report: &Report, out: &mut impl io::Write) -> io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(HEADER)?;
    let s = |v: &Option<VcpuLabel>| v.map(|v| v.to_string()).unwrap_or_default();
    for vm in &report.vms {
        let (name, pid) = (vm.name.as_str(), vm.pid.to_string());
        for e in &vm.exits {
            let l = &e.latency;
            w.write_record([
                "exit",
                name,
                &pid,
                &s(&e.vcpu),
                &e.reason,
                e.isa,
                &e.count.to_string(),
                &format!("{:.3}", e.per_sec),
                &format!("{:.3}", e.time_pct),
                &l.total_ns.to_string(),
                &l.min_ns.to_string(),
                &l.p50_ns.to_string(),
                &l.p99_ns.to_string(),
                &l.max_ns.to_string(),
            ])?;
        }
        for u in &vm.userspace_exits {
            let l = u.round_trip.as_ref();
            let n = |f: fn(&crate::report::Latency) -> u64| {
                l.map(|l| f(l).to_string()).unwrap_or_default()
            };
            w.write_record([
                "userspace_exit",
                name,
                &pid,
                &s(&u.vcpu),
                &u.reason,
                "",
                &u.count.to_string(),
                &format!("{:.3}", u.per_sec),
                "",
                &n(|l| l.total_ns),
                &n(|l| l.min_ns),
                &n(|l| l.p50_ns),
                &n(|l| l.p99_ns),
                &n(|l| l.max_ns),
            ])?;
        }
        let mut detail = |table: &str,
                          vcpu: &Option<VcpuLabel>,
                          key: String,
                          detail: String,
                          count: u64,
                          per_sec: f64| {
            w.write_record([
                table,
                name,
                &pid,
                &s(vcpu),
                &key,
                &detail,
                &count.to_string(),
                &format!("{per_sec:.3}"),
                "",
                "",
                "",
                "",
                "",
                "",
            ])
        };
        for p in &vm.ports {
            detail(
                "port",
                &p.vcpu,
                format!("{:#x}", p.port),
                format!("{} size {}", p.direction, p.size),
                p.count,
                p.per_sec,
            )?;
        }
        for m in &vm.mmio {
            detail(
                "mmio",
                &m.vcpu,
                format!("{:#x}", m.gpa),
                format!("{} len {}", m.access, m.len),
                m.count,
                m.per_sec,
            )?;
        }
        for m in &vm.msrs {
            detail(
                "msr",
                &m.vcpu,
                format!("{:#x}", m.msr),
                format!("{}{}", m.access, if m.faulted { " #GP" } else { "" }),
                m.count,
                m.per_sec,
            )?;
        }
        for c in &vm.cpuid {
            detail(
                "cpuid",
                &c.vcpu,
                format!("{:#x}", c.function),
                String::new(),
                c.count,
                c.per_sec,
            )?;
        }
        // Events without a row of their own, so every kind adds up to its total.
        for o in &vm.other_keys {
            detail(
                "other_keys",
                &o.vcpu,
                o.kind.to_string(),
                format!(
                    "{} keys not shown ({} events); {} events without a key",
                    o.folded_keys, o.folded_events, o.unkeyed_events
                ),
                o.count,
                o.per_sec,
            )?;
        }
    }
    w.flush()
}
