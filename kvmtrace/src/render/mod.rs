//! Renderers: each takes a [`crate::report::Report`] and any `io::Write`.

pub mod json;
pub mod text;
