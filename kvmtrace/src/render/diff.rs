//! `kvmtrace diff` as text: the rows of a [`Diff`], biggest impact first.

use crate::report::diff::Diff;

pub fn render_text(d: &Diff, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "kvmtrace diff: before {:.2} s, after {:.2} s (rates per second of each recording)",
        d.before_secs, d.after_secs
    )?;
    let mut table = "";
    for r in &d.rows {
        if r.table != table {
            table = r.table;
            let measure = match table {
                "exit" => "host time/s",
                "userspace_exit" => "VMM time/s",
                _ => "",
            };
            writeln!(
                out,
                "\n  {table}\n  {:<14} {:<36} {:>12} {:>12} {:>10} {:>14} {:>12}",
                "VM", "Key", "before/s", "after/s", "change", measure, "p99 b->a"
            )?;
        }
        let change = if r.before.per_sec > 0.0 {
            format!(
                "{:+.1}%",
                100.0 * (r.after.per_sec / r.before.per_sec - 1.0)
            )
        } else {
            "new".into()
        };
        let time = if matches!(r.table, "exit" | "userspace_exit") {
            format!("{:+.2}ms/s", r.impact / 1e6)
        } else {
            String::new()
        };
        let p99 = if r.before.p99_ns + r.after.p99_ns > 0 {
            format!(
                "{}->{}",
                super::table::ns(r.before.p99_ns),
                super::table::ns(r.after.p99_ns)
            )
        } else {
            String::new()
        };
        writeln!(
            out,
            "  {:<14} {:<36} {:>12.1} {:>12.1} {:>10} {:>14} {:>12}",
            r.vm, r.key, r.before.per_sec, r.after.per_sec, change, time, p99
        )?;
    }
    Ok(())
}
