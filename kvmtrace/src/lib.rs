//! kvmtrace: an eBPF tracing profiler for KVM VM exits.
//!
//! The data path: [`source`] (the live tracer, recording files) -> [`model`] (intervals,
//! aggregates, series, identities) -> [`analyze`] (storms, CPU attribution) -> [`report`] (view
//! types, build, filters, diff of two reports) -> [`render`] (text, JSON, CSV,
//! folded, flamegraphs, live lines); [`host`] finds VMs in /proc; [`app`] runs one subcommand per
//! file and is the only one to see [`cli`]. [`mod@serve`] and [`mod@top`] are outputs of their own.
//!
//! One field's walk, kvm_pio's `port`: its offset comes from the tracepoint's format file
//! ([`tp::offsets`]); kvmtrace-ebpf's `kvmtrace_pio` packs it into a `DetailKey` with
//! `kvmtrace_common::detail::pack_pio`; the collector drains the key ([`source::live`]) into an
//! [`model::Interval`]; [`model::Aggregate`] sums it; `DetailKey::decode` turns it into
//! `Detail::Port { port, dir, size }` where keys become rows ([`report`]'s detail-table builder;
//! [`model::series`] for storms; serve's labels); [`report::PortRow`] carries it;
//! [`render::text`] prints the column. Nothing else reads the packed key.

pub mod analyze;
pub mod app;
pub mod cli;
pub mod error;
pub mod guest_symbols;
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
