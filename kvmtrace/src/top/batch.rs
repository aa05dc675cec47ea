//! `kvmtrace top --batch`: each frame as plain text on stdout, the whole tree at once (every VM,
//! its vCPUs, their reasons and keys, the busiest first), for scripts and non-terminals. Each
//! rate is followed by the exact number of exits or events behind it, in parentheses.

use std::io::{self, Write};

use super::{
    draw::ns,
    frame::{Frame, Node},
};

/// Writes `frame` with at most `rows` rows per level.
pub fn write(out: &mut dyn Write, frame: &Frame, rows: usize) -> io::Result<()> {
    writeln!(
        out,
        "kvmtrace top - {:.1} s, interval {:.3} s, {} VM(s){}",
        frame.at_secs,
        frame.interval_secs,
        frame.vms.len(),
        if frame.lost > 0 {
            format!(", {} events lost", frame.lost)
        } else {
            String::new()
        }
    )?;
    for note in &frame.notes {
        writeln!(out, "note: {note}")?;
    }
    for vm in busiest(&frame.vms, rows) {
        writeln!(
            out,
            "VM {} (pid {}): {:.0} exits/s ({}), {:.0} VMM exits/s, {}",
            vm.name,
            vm.id,
            vm.per_sec,
            vm.count,
            vm.vmm_per_sec.unwrap_or(0.0),
            cpu(vm)
        )?;
        for storm in &vm.storms {
            writeln!(out, "  storm: {storm}")?;
        }
        for vcpu in busiest(&vm.children, rows) {
            writeln!(
                out,
                "  {}: {:.0} exits/s ({}), {:.0} VMM exits/s, {}",
                vcpu.name,
                vcpu.per_sec,
                vcpu.count,
                vcpu.vmm_per_sec.unwrap_or(0.0),
                cpu(vcpu)
            )?;
            for group in busiest(&vcpu.children, rows) {
                writeln!(
                    out,
                    "    {:<44}{}{}",
                    group.name,
                    rate(group),
                    latency(group)
                )?;
                for key in busiest(&group.children, rows) {
                    writeln!(out, "      {:<42}{}{}", key.name, rate(key), latency(key))?;
                }
            }
        }
    }
    writeln!(out)?;
    out.flush()
}

fn busiest(nodes: &[Node], rows: usize) -> Vec<&Node> {
    let mut v: Vec<&Node> = nodes.iter().collect();
    v.sort_by(|a, b| {
        (b.per_sec + b.vmm_per_sec.unwrap_or(0.0))
            .total_cmp(&(a.per_sec + a.vmm_per_sec.unwrap_or(0.0)))
            .then_with(|| a.name.cmp(&b.name))
    });
    v.truncate(rows);
    v
}

fn cpu(n: &Node) -> String {
    let Some(c) = n.cpu else {
        return "CPU -".into();
    };
    let opt = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
    format!(
        "CPU {:.1} % (guest {}, exits {}, VMM {:.1}, blocked {:.1})",
        c.total,
        opt(c.guest),
        opt(c.exits),
        c.vmm,
        c.blocked
    )
}

fn rate(n: &Node) -> String {
    format!(" {:>10.0}/s {:>12}", n.per_sec, format!("({})", n.count))
}

fn latency(n: &Node) -> String {
    match (n.p50_ns, n.p99_ns) {
        (None, None) => String::new(),
        (p50, p99) => format!("  p50 {} p99 {}", ns(p50), ns(p99)),
    }
}
