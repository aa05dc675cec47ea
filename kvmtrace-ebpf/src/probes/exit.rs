//! kvm:kvm_exit and kvm:kvm_entry: pair each exit with the same thread's next entry and add the
//! exit->entry time to a log-linear histogram per (VM, thread, vCPU, isa, exit reason): the
//! in-kernel part (the span minus the VMM round trips inside it) and, apart, the VMM part.
//!
//! Field offsets come from CONFIG (the format files at run time); the 6.18 layouts are:
//! ```text
//! name: kvm_exit
//!     field:unsigned int exit_reason;  offset:8;  size:4; signed:0;
//!     field:unsigned long guest_rip;   offset:16; size:8; signed:0;
//!     field:u32 isa;                   offset:24; size:4; signed:0;
//!     field:u64 info1;                 offset:32; size:8; signed:0;
//!     field:u64 info2;                 offset:40; size:8; signed:0;
//!     field:u32 intr_info;             offset:48; size:4; signed:0;
//!     field:u32 error_code;            offset:52; size:4; signed:0;
//!     field:unsigned int vcpu_id;      offset:56; size:4; signed:0;
//!     field:u64 requests;              offset:64; size:8; signed:0;
//! name: kvm_entry
//!     field:unsigned int vcpu_id;      offset:8;  size:4; signed:0;
//!     field:unsigned long rip;         offset:16; size:8; signed:0;
//!     field:bool immediate_exit;       offset:24; size:1; signed:0;
//!     field:u32 intr_info;             offset:28; size:4; signed:0;
//!     field:u32 error_code;            offset:32; size:4; signed:0;
//! ```

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use kvmtrace_common::USUAL_OFFSETS;
use kvmtrace_common::{Counter, LatencyKey, LatencyKind, THREAD_SEEN_ENTRY};

use super::{rips, slow, userspace::close_round_trip};
use crate::state::{
    bump, conf, current, field, now_ns, open_epoch, record_latency, record_latency_cached,
    traced_state,
};

#[tracepoint]
pub fn kvmtrace_exit(ctx: TracePointContext) -> u32 {
    try_exit(&ctx);
    0
}

#[tracepoint]
pub fn kvmtrace_entry(ctx: TracePointContext) -> u32 {
    try_entry(&ctx);
    0
}

#[inline(always)]
fn try_exit(ctx: &TracePointContext) {
    let (tgid, tid) = current();
    if open_epoch().is_none() {
        return;
    }
    let Some(state) = traced_state(tgid, tid) else {
        return;
    };
    let ts = now_ns();
    bump(Counter::ExitsSeen);
    let Some(state) = state else {
        return;
    };
    // SAFETY: `state` points at this thread's slot; only this thread's events write it.
    let state = unsafe { &mut *state };
    if state.exit_ts != 0 {
        bump(Counter::UnpairedExits);
    }
    state.exit_ts = ts;
    state.exit_vmm_ns = 0;
    // Exits happen only inside KVM_RUN: a missed kvm_fpu load is repaired here.
    if state.run_ts == 0 {
        state.run_ts = ts;
    }
    state.exit_reason = field::<u32>(ctx, conf!(exit_reason), USUAL_OFFSETS.exit_reason);
    state.exit_isa = field::<u32>(ctx, conf!(exit_isa), USUAL_OFFSETS.exit_isa);
    if conf!(exit_vcpu_id) != kvmtrace_common::FIELD_ABSENT {
        state.vcpu_id = field::<u32>(ctx, conf!(exit_vcpu_id), USUAL_OFFSETS.exit_vcpu_id);
    }
    if rips::enabled() || slow::enabled() {
        state.exit_rip = field::<u64>(ctx, conf!(exit_rip), USUAL_OFFSETS.exit_rip);
    }
    if rips::enabled() || slow::enabled() {
        state.last_detail.kind = 0;
    }
    if slow::enabled() {
        state.exit_info1 = field::<u64>(ctx, conf!(exit_info1), USUAL_OFFSETS.exit_info1);
        state.exit_info2 = field::<u64>(ctx, conf!(exit_info2), USUAL_OFFSETS.exit_info2);
        state.exit_off_ns = state.off_run_ns();
    }
}

#[inline(always)]
fn try_entry(ctx: &TracePointContext) {
    let (tgid, tid) = current();
    let Some(seq) = open_epoch() else {
        return;
    };
    let Some(state) = traced_state(tgid, tid) else {
        return;
    };
    let ts = now_ns();
    bump(Counter::EntriesSeen);
    let Some(state) = state else {
        return;
    };
    // SAFETY: as in try_exit.
    let state = unsafe { &mut *state };
    if state.run_ts == 0 {
        state.run_ts = ts;
    }
    if conf!(entry_vcpu_id) != kvmtrace_common::FIELD_ABSENT {
        state.vcpu_id = field::<u32>(ctx, conf!(entry_vcpu_id), USUAL_OFFSETS.entry_vcpu_id);
    }
    close_round_trip(tgid, tid, state, ts, seq);
    let first_entry = state.flags & THREAD_SEEN_ENTRY == 0;
    state.flags |= THREAD_SEEN_ENTRY;
    if state.exit_ts == 0 {
        // The first entry of every vCPU after attach has no exit to pair with; a later one means
        // a kvm_exit went missing.
        bump(if first_entry {
            Counter::FirstEntries
        } else {
            Counter::UnpairedEntries
        });
        return;
    }
    // The exit's span minus the VMM round trips inside it is the in-kernel handling; the round
    // trips are recorded under the exit's reason too, apart.
    let span = ts.saturating_sub(state.exit_ts);
    let vmm = state.exit_vmm_ns.min(span);
    let mut key = LatencyKey {
        tgid,
        tid,
        vcpu_id: state.vcpu_id,
        isa: state.exit_isa,
        reason: state.exit_reason,
        kind: LatencyKind::Exit as u32,
    };
    record_latency_cached(&mut state.exit_index, &key, span - vmm, seq);
    if vmm != 0 {
        key.kind = LatencyKind::ExitVmm as u32;
        record_latency(&key, vmm, seq);
    }
    if rips::enabled() {
        rips::count_exit(seq, tgid, tid, state);
    }
    if slow::enabled() {
        slow::exit_ended(tgid, tid, state, span, vmm);
    }
    state.exit_ts = 0;
    state.exit_vmm_ns = 0;
}
