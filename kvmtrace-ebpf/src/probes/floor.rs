//! Empty programs, never attached by the collector: `cargo xtask bench` attaches them (through
//! the `kvmtrace-floor` binary) to measure the attach mechanisms' own cost on the same
//! tracepoints as kvmtrace's programs, classic (the kernel builds the trace record first) and
//! raw (the program gets the tracepoint's arguments as they are). One pair per tracepoint, named
//! after kvmtrace's program there (`kvmtrace_floor_<stem>` and `..._raw`), so the kernel's run-time
//! statistics give each kvmtrace program the floor of its own events: a rare event runs with
//! cold caches, and only an empty program on the same events says what that costs by itself.

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

macro_rules! floors {
    ($($classic:ident, $raw:ident;)*) => {$(
        #[tracepoint]
        pub fn $classic(_ctx: TracePointContext) -> u32 {
            0
        }

        #[raw_tracepoint]
        pub fn $raw(_ctx: RawTracePointContext) -> i32 {
            0
        }
    )*};
}

floors! {
    kvmtrace_floor_exit, kvmtrace_floor_exit_raw;
    kvmtrace_floor_entry, kvmtrace_floor_entry_raw;
    kvmtrace_floor_uexit, kvmtrace_floor_uexit_raw;
    kvmtrace_floor_fpu, kvmtrace_floor_fpu_raw;
    kvmtrace_floor_pio, kvmtrace_floor_pio_raw;
    kvmtrace_floor_mmio, kvmtrace_floor_mmio_raw;
    kvmtrace_floor_msr, kvmtrace_floor_msr_raw;
    kvmtrace_floor_cpuid, kvmtrace_floor_cpuid_raw;
    kvmtrace_floor_switch, kvmtrace_floor_switch_raw;
}
