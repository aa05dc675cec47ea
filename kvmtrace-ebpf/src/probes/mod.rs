//! One file per tracepoint family.
mod detail;
mod exit;
mod floor;
mod sched;
mod stacks;
mod userspace;
