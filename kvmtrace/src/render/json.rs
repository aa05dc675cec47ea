//! `--json`: the report's data, exactly, for scripts and tests.

use std::io;

use crate::report::Report;

pub fn render(report: &Report, out: &mut impl io::Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    writeln!(out)
}
