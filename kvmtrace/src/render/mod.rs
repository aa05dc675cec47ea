//! Renderers: each takes a [`crate::report::Report`] and any `io::Write`.

pub mod csv;
pub mod flamegraph;
pub mod folded;
pub mod json;
pub mod text;

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
}
