//! Empty programs, never attached by the collector: `cargo xtask bench` attaches them (through
//! the `kvmtrace-floor` binary) to measure the attach mechanisms' own cost on the same
//! tracepoints as kvmtrace's programs, classic (the kernel builds the trace record first) and
//! raw (the program gets the tracepoint's arguments as they are).

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

#[tracepoint]
pub fn kvmtrace_floor_tp(_ctx: TracePointContext) -> u32 {
    0
}

#[raw_tracepoint]
pub fn kvmtrace_floor_raw(_ctx: RawTracePointContext) -> i32 {
    0
}
