//! Tracepoints: `format` file parsing, the field offsets the eBPF programs need (read at run time,
//! since kernels differ), and the exit-reason name tables.

pub mod class;
pub mod format;
pub mod offsets;
pub mod reasons;
mod reasons_generated;
pub mod tracefs;
