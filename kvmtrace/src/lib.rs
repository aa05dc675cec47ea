//! kvmtrace: an eBPF tracing profiler for KVM VM exits.
//!
//! Data path: kvm tracepoints -> kvmtrace-ebpf (filter by VM, pair exit->entry, aggregate in maps
//! per epoch) -> [`collect`] (attach, seed running threads from [`thread_probe`], open the gate,
//! drain and delete each closed epoch) -> [`model`] (latency buckets) -> [`report`] (per-VM
//! tables) -> [`render`] (text, JSON, ...). [`vm`] finds VMs and names ([`untrusted`] escapes what
//! other processes wrote); [`tp`] parses tracepoint formats and names exit reasons; [`record`]
//! and [`outfile`] write files; [`mod@serve`] exports metrics to Prometheus; [`cli`] and
//! [`mod@run`] wire it together.

pub mod analyze;
pub mod batch;
pub mod cli;
pub mod collect;
pub mod cost;
pub mod diff;
pub mod error;
pub mod model;
pub mod names;
pub mod offline;
pub mod outfile;
pub mod record;
pub mod render;
pub mod report;
pub mod run;
pub mod series;
pub mod serve;
pub mod thread_probe;
pub mod top;
pub mod tp;
pub mod untrusted;
pub mod view;
pub mod vm;

pub use error::Error;
pub use run::run;
