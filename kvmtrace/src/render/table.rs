//! Plain text tables and durations, for the text report.

use std::io;

/// 850ns, 1.23us, 45.6ms, 1.20s
pub fn ns(v: u64) -> String {
    match v {
        0..1_000 => format!("{v}ns"),
        1_000..1_000_000 => format!("{:.2}us", v as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}ms", v as f64 / 1e6),
        _ => format!("{:.2}s", v as f64 / 1e9),
    }
}

/// A plain text table: the first `left` columns (labels) left-aligned, numbers right-aligned,
/// and a leading vCPU column in per-vCPU reports.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    per_vcpu: bool,
    left: usize,
}

impl Table {
    pub fn new(per_vcpu: bool, left: usize, header: &[&str]) -> Table {
        let mut h: Vec<String> = header.iter().map(|s| s.to_string()).collect();
        if per_vcpu {
            h.insert(0, "vCPU".into());
        }
        let left = left + per_vcpu as usize;
        Table {
            header: h,
            rows: Vec::new(),
            per_vcpu,
            left,
        }
    }

    pub fn row(&mut self, vcpu: String, mut cells: Vec<String>) {
        if self.per_vcpu {
            cells.insert(0, vcpu);
        }
        self.rows.push(cells);
    }

    pub fn write(&self, title: &str, out: &mut impl io::Write) -> io::Result<()> {
        let cols = self.header.len();
        let left = self.left;
        let width: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .chain([&self.header])
                    .map(|r| r[c].len())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        writeln!(out, "\n  {title}")?;
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::from("  ");
            for (c, cell) in r.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                if c < left {
                    line.push_str(&format!("{cell:<w$}", w = width[c]));
                } else {
                    line.push_str(&format!("{cell:>w$}", w = width[c]));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}
