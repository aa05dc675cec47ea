//! Renderers: each takes a [`crate::report::Report`] and any `io::Write`.

pub mod csv;
pub mod flamegraph;
pub mod folded;
pub mod json;
pub mod text;
