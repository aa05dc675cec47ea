//! Tracepoints: `format` file parsing, the field offsets the eBPF programs need (read at run time,
//! since kernels differ; task_struct's pid from the BTF), the exit-reason name tables, and the
//! layouts of kvm_exit's exit information (`info1`/`info2`).

pub mod btf;
pub mod class;
pub mod exit_info;
pub mod format;
pub mod offsets;
pub mod reasons;
mod reasons_generated;
pub mod tracefs;
