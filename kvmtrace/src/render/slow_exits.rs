//! The text report's "Slowest exits" section (recordings made with `--than`).

use std::io;

use super::table::ns;
use crate::report::slow::{HistoryRow, SlowExits, StormStartRow, TEXT_ROWS};

pub fn render(slow: &SlowExits, out: &mut impl io::Write) -> io::Result<()> {
    let lost = if slow.lost == 0 {
        String::new()
    } else {
        format!(
            ", {} more not captured: the kernel's ring buffer was full",
            slow.lost
        )
    };
    writeln!(
        out,
        "\nSlowest exits (at least {}: {} captured{lost})",
        ns(slow.threshold_ns),
        slow.captured
    )?;
    if slow.captured == 0 {
        return Ok(());
    }
    let counts: Vec<String> = slow
        .by_reason
        .iter()
        .map(|c| format!("{} {} {}", c.vm, c.reason, c.count))
        .collect();
    writeln!(out, "  per VM and reason: {}", counts.join(", "))?;
    // Numbers right-aligned, the detail (free text, last) left-aligned.
    let rows: Vec<[String; 9]> = slow
        .slowest
        .iter()
        .take(TEXT_ROWS)
        .map(|r| {
            let mut what = Vec::new();
            if let Some(d) = r.detail.as_ref().or(r.exit_info.as_ref()) {
                what.push(d.clone());
            }
            if let Some(rip) = &r.guest_rip {
                what.push(format!("rip {rip}"));
            }
            [
                format!("{:.3}s", r.at_secs),
                r.vm.clone(),
                r.vcpu.to_string(),
                r.reason.clone(),
                ns(r.total_ns),
                ns(r.in_kernel_ns),
                ns(r.off_cpu_ns),
                ns(r.vmm_ns),
                what.join(", "),
            ]
        })
        .collect();
    let header = [
        "at",
        "VM",
        "vCPU",
        "exit",
        "total",
        "in kernel",
        "off CPU",
        "VMM",
        "detail",
    ]
    .map(String::from);
    let width: Vec<usize> = (0..9)
        .map(|c| {
            rows.iter()
                .chain([&header])
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let w = width[c];
            if (4..8).contains(&c) || c == 0 {
                line.push_str(&format!("  {cell:>w$}"));
            } else {
                line.push_str(&format!("  {cell:<w$}"));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    render_histories(slow, out)?;
    if slow.slowest.len() > TEXT_ROWS {
        writeln!(
            out,
            "  ({} more in report --json, the slowest first)",
            slow.slowest.len() - TEXT_ROWS
        )?;
    }
    Ok(())
}

/// Slow exits whose history (`--flight`) the text shows, the slowest first.
const HISTORIES_SHOWN: usize = 3;

/// What led to the slowest exits: each one's vCPU timeline up to it.
fn render_histories(slow: &SlowExits, out: &mut impl io::Write) -> io::Result<()> {
    let with: Vec<_> = slow
        .slowest
        .iter()
        .filter(|r| !r.history.is_empty())
        .take(HISTORIES_SHOWN)
        .collect();
    if with.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\n  What led to them (--flight: the vCPU's last exits, oldest first, start relative to the slow one's)"
    )?;
    for r in with {
        writeln!(
            out,
            "  {:.3}s {} vCPU {} {} {}:",
            r.at_secs,
            r.vm,
            r.vcpu,
            r.reason,
            ns(r.total_ns)
        )?;
        timeline(&r.history, out)?;
    }
    Ok(())
}

/// One line per exit of a flight recorder's history.
fn timeline(history: &[HistoryRow], out: &mut impl io::Write) -> io::Result<()> {
    let width = history.iter().map(|h| h.reason.len()).max().unwrap_or(0);
    for h in history {
        let line = format!(
            "    {:>12}  {:<width$}  {:>9}  {}",
            format!("{:+.1}us", h.offset_us),
            h.reason,
            ns(h.total_ns),
            h.detail.as_deref().unwrap_or("")
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Storm starts shown with their history in the text (all of them in JSON).
const STORM_STARTS_SHOWN: usize = 3;

/// `--flight`: each storm's start, with the exits that led into it.
pub fn render_storm_starts(starts: &[StormStartRow], out: &mut impl io::Write) -> io::Result<()> {
    if starts.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\nStorm starts (--flight: {} seen; the exits that led into each, oldest first, start relative to the storm's first exit)",
        starts.len()
    )?;
    for s in starts.iter().take(STORM_STARTS_SHOWN) {
        writeln!(out, "  {:.3}s {} vCPU {}:", s.at_secs, s.vm, s.vcpu)?;
        timeline(&s.history, out)?;
    }
    if starts.len() > STORM_STARTS_SHOWN {
        writeln!(
            out,
            "  ({} more in report --json)",
            starts.len() - STORM_STARTS_SHOWN
        )?;
    }
    Ok(())
}
