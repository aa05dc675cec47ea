//! The detail tracepoints every KVM host has, counted per (VM, thread, key): kvm_pio (port,
//! direction, size), kvm_mmio (type, length, gpa), kvm_msr (index, direction, fault), kvm_cpuid
//! (function). kvm_userspace_exit is counted in `userspace.rs`, which also times the round trip.
//! Every event is counted in its thread's per-kind total; distinct keys beyond the thread's budget
//! are counted there only (the "other keys" row), so totals never depend on how many keys a
//! guest touches.
//!
//! ```text
//! name: kvm_pio
//!     field:unsigned int rw;    offset:8;  size:4; signed:0;
//!     field:unsigned int port;  offset:12; size:4; signed:0;
//!     field:unsigned int size;  offset:16; size:4; signed:0;
//!     field:unsigned int count; offset:20; size:4; signed:0;
//!     field:unsigned int val;   offset:24; size:4; signed:0;
//! name: kvm_mmio
//!     field:u32 type;           offset:8;  size:4; signed:0;
//!     field:u32 len;            offset:12; size:4; signed:0;
//!     field:u64 gpa;            offset:16; size:8; signed:0;
//!     field:u64 val;            offset:24; size:8; signed:0;
//! name: kvm_msr
//!     field:unsigned write;     offset:8;  size:4; signed:0;
//!     field:u32 ecx;            offset:12; size:4; signed:0;
//!     field:u64 data;           offset:16; size:8; signed:0;
//!     field:u8 exception;       offset:24; size:1; signed:0;
//! name: kvm_cpuid
//!     field:unsigned int function; offset:8; size:4; signed:0;
//!     field:unsigned int index;    offset:12; size:4; signed:0;
//! ```
//!
//! Each also has a raw tracepoint program (`*_raw`), which the collector attaches instead where
//! the kernel allows: it gets the TP_PROTO arguments as they are, so the kernel builds no trace
//! record for it (the classic mechanism's own cost, ~6 % of an in-kernel exit loop here, against
//! ~0.5 % raw). TP_PROTO, the same on every kernel since 5.10:
//! ```text
//! kvm_pio(unsigned int rw, unsigned int port, unsigned int size, unsigned int count, const void *data)
//! kvm_mmio(int type, int len, u64 gpa, void *val)
//! kvm_msr(unsigned write, u32 ecx, u64 data, bool exception)
//! kvm_cpuid(unsigned int function, unsigned int index, unsigned long rax, ...)
//! ```
//! (The kernel refuses to attach a raw program that reads more arguments than the tracepoint
//! has; the collector then attaches the classic one.)

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use kvmtrace_common::USUAL_OFFSETS;
use kvmtrace_common::{
    DetailKey, DetailKind,
    detail::{pack_cpuid, pack_mmio, pack_msr, pack_pio},
};

use crate::state::{conf, count_detail, current, field, open_epoch, traced_state};

#[tracepoint]
pub fn kvmtrace_pio(ctx: TracePointContext) -> u32 {
    count(DetailKind::Pio, || {
        pack_pio(
            field::<u32>(&ctx, conf!(pio_port), USUAL_OFFSETS.pio_port),
            field::<u32>(&ctx, conf!(pio_rw), USUAL_OFFSETS.pio_rw),
            field::<u32>(&ctx, conf!(pio_size), USUAL_OFFSETS.pio_size),
        )
    });
    0
}

#[tracepoint]
pub fn kvmtrace_mmio(ctx: TracePointContext) -> u32 {
    count(DetailKind::Mmio, || {
        pack_mmio(
            field::<u32>(&ctx, conf!(mmio_type), USUAL_OFFSETS.mmio_type),
            field::<u32>(&ctx, conf!(mmio_len), USUAL_OFFSETS.mmio_len),
            field::<u64>(&ctx, conf!(mmio_gpa), USUAL_OFFSETS.mmio_gpa),
        )
    });
    0
}

#[tracepoint]
pub fn kvmtrace_msr(ctx: TracePointContext) -> u32 {
    count(DetailKind::Msr, || {
        pack_msr(
            field::<u32>(&ctx, conf!(msr_ecx), USUAL_OFFSETS.msr_ecx),
            field::<u32>(&ctx, conf!(msr_write), USUAL_OFFSETS.msr_write),
            field::<u8>(&ctx, conf!(msr_exception), USUAL_OFFSETS.msr_exception) != 0,
        )
    });
    0
}

#[tracepoint]
pub fn kvmtrace_cpuid(ctx: TracePointContext) -> u32 {
    count(DetailKind::Cpuid, || {
        pack_cpuid(field::<u32>(
            &ctx,
            conf!(cpuid_function),
            USUAL_OFFSETS.cpuid_function,
        ))
    });
    0
}

#[raw_tracepoint]
pub fn kvmtrace_pio_raw(ctx: RawTracePointContext) -> i32 {
    count(DetailKind::Pio, || {
        pack_pio(ctx.arg::<u32>(1), ctx.arg::<u32>(0), ctx.arg::<u32>(2))
    });
    0
}

#[raw_tracepoint]
pub fn kvmtrace_mmio_raw(ctx: RawTracePointContext) -> i32 {
    count(DetailKind::Mmio, || {
        pack_mmio(ctx.arg::<u32>(0), ctx.arg::<u32>(1), ctx.arg::<u64>(2))
    });
    0
}

#[raw_tracepoint]
pub fn kvmtrace_msr_raw(ctx: RawTracePointContext) -> i32 {
    count(DetailKind::Msr, || {
        pack_msr(ctx.arg::<u32>(1), ctx.arg::<u32>(0), ctx.arg::<u8>(3) != 0)
    });
    0
}

#[raw_tracepoint]
pub fn kvmtrace_cpuid_raw(ctx: RawTracePointContext) -> i32 {
    count(DetailKind::Cpuid, || pack_cpuid(ctx.arg::<u32>(0)));
    0
}

/// Filters, then counts one event under the (a, b) key that `key_of` reads from the record or
/// the arguments.
#[inline(always)]
fn count(kind: DetailKind, key_of: impl FnOnce() -> (u32, u64)) {
    let (tgid, tid) = current();
    let Some(seq) = open_epoch() else {
        return;
    };
    let Some(Some(state)) = traced_state(tgid, tid) else {
        return;
    };
    // SAFETY: `state` points at this thread's slot; only this thread's events write it.
    let state = unsafe { &mut *state };
    let (a, b) = key_of();
    let key = DetailKey {
        tgid,
        tid,
        kind: kind as u32,
        a,
        b,
    };
    count_detail(seq, state, &key, kind);
}
