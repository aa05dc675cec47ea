//! One file per tracepoint family.
mod detail;
mod exit;
mod sched;
mod userspace;
