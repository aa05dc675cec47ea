//! kvmtrace: an eBPF tracing profiler for KVM VM exits.

pub mod analyze;
pub mod app;
pub mod cli;
pub mod error;
pub mod host;
pub mod model;
pub mod names;
pub mod outfile;
pub mod record;
pub mod render;
pub mod report;
pub mod serve;
pub mod source;
pub mod top;
pub mod tp;
pub mod untrusted;

pub use app::run;
pub use error::Error;
