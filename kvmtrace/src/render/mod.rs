//! Renderers: each takes a [`crate::report::Report`] and any `io::Write`.

pub mod csv;
pub mod diff;
pub mod flamegraph;
pub mod folded;
mod guest_code;
pub mod host_paths;
pub mod json;
pub mod list;
pub mod live;
mod slow_exits;
pub mod table;
pub mod text;

use std::io;

use crate::report::Report;

/// A report's output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Csv,
    /// Folded stacks (`VM;vCPU N;REASON;detail weight`) for flamegraph tools.
    Folded,
    /// An SVG flamegraph (inferno).
    Flamegraph,
}

/// What flamegraph and folded frames are weighted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Weight {
    /// Host time spent handling the exits.
    Time,
    /// Number of exits.
    Count,
    /// Host stack samples (recordings made with `record --stacks`): frames `VM;vCPU N;reason;
    /// state;` then the VMM's and the kernel's frames.
    Samples,
}

/// `report` in `format`; `title` is the flamegraph's.
pub fn render(
    report: &Report,
    format: Format,
    weight: Weight,
    title: &str,
    out: &mut dyn io::Write,
) -> io::Result<()> {
    let mut out = out;
    match format {
        Format::Text => self::text::render(report, &mut out),
        Format::Json => json::render(report, &mut out),
        Format::Csv => csv::render(report, &mut out),
        Format::Folded => folded::lines(report, weight)
            .iter()
            .try_for_each(|l| writeln!(out, "{l}")),
        Format::Flamegraph => {
            flamegraph::render(&folded::lines(report, weight), title, weight, &mut out)
        }
    }?;
    out.flush()
}

#[cfg(test)]
mod tests;
