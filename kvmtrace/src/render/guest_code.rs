//! The text report's "Guest code per exit reason" section (recordings made with
//! `--guest-rips`).

use std::io;

use crate::report::guest_code::{GuestCode, TEXT_GROUPS};

pub fn render(gc: &GuestCode, out: &mut impl io::Write) -> io::Result<()> {
    let lost = if gc.lost == 0 {
        String::new()
    } else {
        format!(
            ", {} more without their RIP: the kernel's RIP map was full",
            gc.lost
        )
    };
    writeln!(
        out,
        "\nGuest code per exit reason (kvm_exit's guest RIP, {} exits{lost}; names: report --guest-symbols VM=System.map)",
        gc.exits
    )?;
    if let Some(why) = &gc.unavailable {
        writeln!(out, "  {why}")?;
        return Ok(());
    }
    for g in gc.groups.iter().take(TEXT_GROUPS) {
        match &g.detail {
            Some(d) => writeln!(out, "  {} {}, {d}: {} exits", g.vm, g.reason, g.exits)?,
            None => writeln!(out, "  {} {}: {} exits", g.vm, g.reason, g.exits)?,
        }
        for r in &g.top {
            let name = match (&r.symbol, r.address) {
                (Some(s), _) => s.as_str(),
                (None, 0) => "(hidden: the guest's state is encrypted, SEV-ES/SNP/TDX)",
                (None, _) => "",
            };
            let line = format!("    {:5.1} %  {:>18}  {name}", r.share_pct, r.rip);
            writeln!(out, "{}", line.trim_end())?;
        }
        if g.other != 0 {
            writeln!(
                out,
                "    {:5.1} %  other RIPs",
                crate::model::pct(g.other, g.exits)
            )?;
        }
    }
    let hidden = &gc.groups[gc.groups.len().min(TEXT_GROUPS)..];
    let (more, more_exits) = (
        hidden.len() as u64 + gc.more_groups,
        hidden.iter().map(|g| g.exits).sum::<u64>() + gc.more_groups_exits,
    );
    if more != 0 {
        writeln!(
            out,
            "  {more} more (reason, detail) groups with {more_exits} exits (JSON has the first {})",
            gc.groups.len()
        )?;
    }
    Ok(())
}
