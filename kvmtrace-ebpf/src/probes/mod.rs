//! One file per tracepoint family.
mod detail;
mod exit;
mod floor;
pub mod rips;
mod sched;
pub mod slow;
mod stacks;
mod userspace;
