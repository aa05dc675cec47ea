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

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use kvmtrace_common::USUAL_OFFSETS;
use kvmtrace_common::{
    DetailKey, DetailKind,
    detail::{pack_cpuid, pack_mmio, pack_msr, pack_pio},
};

use crate::state::{conf, count_detail, current, field, open_epoch, thread_state, traced};

#[tracepoint]
pub fn kvmtrace_pio(ctx: TracePointContext) -> u32 {
    count(&ctx, DetailKind::Pio, |ctx| {
        pack_pio(
            field::<u32>(ctx, conf!(pio_port), USUAL_OFFSETS.pio_port),
            field::<u32>(ctx, conf!(pio_rw), USUAL_OFFSETS.pio_rw),
            field::<u32>(ctx, conf!(pio_size), USUAL_OFFSETS.pio_size),
        )
    });
    0
}

#[tracepoint]
pub fn kvmtrace_mmio(ctx: TracePointContext) -> u32 {
    count(&ctx, DetailKind::Mmio, |ctx| {
        pack_mmio(
            field::<u32>(ctx, conf!(mmio_type), USUAL_OFFSETS.mmio_type),
            field::<u32>(ctx, conf!(mmio_len), USUAL_OFFSETS.mmio_len),
            field::<u64>(ctx, conf!(mmio_gpa), USUAL_OFFSETS.mmio_gpa),
        )
    });
    0
}

#[tracepoint]
pub fn kvmtrace_msr(ctx: TracePointContext) -> u32 {
    count(&ctx, DetailKind::Msr, |ctx| {
        pack_msr(
            field::<u32>(ctx, conf!(msr_ecx), USUAL_OFFSETS.msr_ecx),
            field::<u32>(ctx, conf!(msr_write), USUAL_OFFSETS.msr_write),
            field::<u8>(ctx, conf!(msr_exception), USUAL_OFFSETS.msr_exception) != 0,
        )
    });
    0
}

#[tracepoint]
pub fn kvmtrace_cpuid(ctx: TracePointContext) -> u32 {
    count(&ctx, DetailKind::Cpuid, |ctx| {
        pack_cpuid(field::<u32>(
            ctx,
            conf!(cpuid_function),
            USUAL_OFFSETS.cpuid_function,
        ))
    });
    0
}

/// Filters, then counts one event under the (a, b) key that `key_of` reads from the record.
#[inline(always)]
fn count(
    ctx: &TracePointContext,
    kind: DetailKind,
    key_of: impl FnOnce(&TracePointContext) -> (u32, u64),
) {
    let (tgid, tid) = current();
    if !traced(tgid) {
        return;
    }
    let Some(seq) = open_epoch() else {
        return;
    };
    let Some(state) = thread_state(tgid, tid) else {
        return;
    };
    // SAFETY: `state` points at this thread's THREADS value; only this thread's events write it.
    let state = unsafe { &mut *state };
    let (a, b) = key_of(ctx);
    let key = DetailKey {
        tgid,
        tid,
        kind: kind as u32,
        a,
        b,
    };
    count_detail(seq, state, &key, kind);
}
