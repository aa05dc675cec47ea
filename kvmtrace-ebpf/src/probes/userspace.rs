//! kvm:kvm_userspace_exit and kvm:kvm_fpu: the VMM round trip of a vCPU thread, from KVM_RUN
//! returning to user space until the thread is back in KVM_RUN (its next kvm_fpu load, or kvm_entry
//! where kvm_fpu is absent), keyed by the userspace exit reason. This is the exit handling that shows
//! up as qemu-kvm user CPU. Syscall tracepoints would also give it, but attaching any of them slows
//! every syscall on the host; these two fire only on vCPU threads.
//!
//! ```text
//! name: kvm_userspace_exit
//!     field:__u32 reason;  offset:8;  size:4; signed:0;
//!     field:int errno;     offset:12; size:4; signed:1;
//! name: kvm_fpu
//!     field:u32 load;      offset:8;  size:4; signed:0;
//! ```
//! Raw tracepoint variants (`*_raw`, see detail.rs) take TP_PROTO `kvm_userspace_exit(__u32
//! reason, int errno)` and `kvm_fpu(int load)`.

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use kvmtrace_common::USUAL_OFFSETS;
use kvmtrace_common::{
    Counter, DetailKey, DetailKind, ExitDetail, LatencyKey, LatencyKind, THREAD_UNRESOLVED,
    ThreadState, detail::pack_userspace_exit,
};

use super::slow;
use crate::state::{
    bump, conf, count_detail, current, field, now_ns, open_epoch, record_latency_cached,
    traced_state,
};

/// The userspace exit reasons whose detail event is the exit's (uapi linux/kvm.h).
const KVM_EXIT_IO: u32 = 2;
const KVM_EXIT_MMIO: u32 = 6;

#[tracepoint]
pub fn kvmtrace_uexit(ctx: TracePointContext) -> u32 {
    try_userspace_exit(|| {
        (
            field::<u32>(&ctx, conf!(uexit_reason), USUAL_OFFSETS.uexit_reason),
            field::<i32>(&ctx, conf!(uexit_errno), USUAL_OFFSETS.uexit_errno),
        )
    });
    0
}

#[raw_tracepoint]
pub fn kvmtrace_uexit_raw(ctx: RawTracePointContext) -> i32 {
    try_userspace_exit(|| (ctx.arg::<u32>(0), ctx.arg::<i32>(1)));
    0
}

#[tracepoint]
pub fn kvmtrace_fpu(ctx: TracePointContext) -> u32 {
    try_fpu(|| field::<u32>(&ctx, conf!(fpu_load), USUAL_OFFSETS.fpu_load) != 0);
    0
}

#[raw_tracepoint]
pub fn kvmtrace_fpu_raw(ctx: RawTracePointContext) -> i32 {
    try_fpu(|| ctx.arg::<i32>(0) != 0);
    0
}

#[inline(always)]
fn try_userspace_exit(args: impl FnOnce() -> (u32, i32)) {
    let (tgid, tid) = current();
    let Some(seq) = open_epoch() else {
        return;
    };
    let Some(Some(state)) = traced_state(tgid, tid) else {
        return;
    };
    let ts = now_ns();
    let (reason, errno) = args();
    let (a, b) = pack_userspace_exit(reason, errno);
    // SAFETY: `state` points at this thread's slot; only this thread's events write it.
    let state = unsafe { &mut *state };
    let key = DetailKey {
        tgid,
        tid,
        kind: DetailKind::UserspaceExit as u32,
        a,
        b,
    };
    count_detail(seq, state, &key, DetailKind::UserspaceExit);
    if state.uexit_ts != 0 {
        // Back in user space with no re-entry marker since the last one: that trip is not
        // timed, but its time inside an open exit is still the VMM's, not the kernel's.
        bump(Counter::UnpairedUserspaceExits);
        add_vmm_part(state, ts);
    }
    // KVM_RUN has just returned: it ends here (kvm_fpu's unload, a few hundred ns earlier, is
    // not used; see try_fpu). (Setting run_ts here, as a "repair", once counted the VMM's whole
    // time as KVM_RUN.)
    state.flags &= !THREAD_UNRESOLVED;
    if state.run_ts != 0 {
        state.run_ns += ts.saturating_sub(state.run_ts);
        state.run_ts = 0;
    }
    state.uexit_ts = ts;
    state.uexit_reason = a;
    if slow::enabled() {
        state.uexit_off_ns = state.off_user_ns();
    }
}

/// kvm_fpu load opens a KVM_RUN (and closes the VMM round trip): the wall time inside KVM_RUN
/// for CPU attribution. The first load of a thread whose state was not known also settles where
/// it has been since it was first seen.
///
/// An unload returns at once: KVM_RUN ends at the kvm_userspace_exit that every return from
/// KVM_RUN fires a few hundred ns later (after vcpu_put), which closes the KVM_RUN there. Half
/// of this tracepoint's events then cost no more than an empty program, and a VMM round trip
/// reads the clock twice, not three times. (INIT's unload/load pair inside KVM_RUN needs
/// nothing either: the load finds the KVM_RUN open and keeps it.)
#[inline(always)]
fn try_fpu(load: impl FnOnce() -> bool) {
    if !load() {
        return;
    }
    let (tgid, tid) = current();
    let Some(seq) = open_epoch() else {
        return;
    };
    let Some(Some(state)) = traced_state(tgid, tid) else {
        return;
    };
    let ts = now_ns();
    // SAFETY: as above.
    let state = unsafe { &mut *state };
    if state.flags & THREAD_UNRESOLVED != 0 {
        // It was outside KVM_RUN all along: its time so far was the VMM's.
        state.flags &= !THREAD_UNRESOLVED;
        state.run_ts = 0;
        state.off_user_blocked_ns += state.off_run_blocked_ns;
        state.off_user_runnable_ns += state.off_run_runnable_ns;
        state.off_run_blocked_ns = 0;
        state.off_run_runnable_ns = 0;
    }
    close_round_trip(tgid, tid, state, ts, seq);
    if state.run_ts == 0 {
        state.run_ts = ts;
    }
}

/// Closes the thread's open VMM round trip, if any, at `ts`; inside an open exit, its time is
/// also that exit's VMM part.
#[inline(always)]
pub fn close_round_trip(tgid: u32, tid: u32, state: &mut ThreadState, ts: u64, seq: u32) {
    if state.uexit_ts == 0 {
        return;
    }
    let key = LatencyKey {
        tgid,
        tid,
        vcpu_id: state.vcpu_id,
        isa: 0,
        reason: state.uexit_reason,
        kind: LatencyKind::VmmRoundTrip as u32,
    };
    let span = ts.saturating_sub(state.uexit_ts);
    record_latency_cached(&mut state.round_trip_index, &key, span, seq);
    if slow::enabled() {
        let detail = state.last_detail;
        let matches = matches!(
            (state.uexit_reason, DetailKind::from_u32(detail.kind)),
            (KVM_EXIT_IO, Some(DetailKind::Pio)) | (KVM_EXIT_MMIO, Some(DetailKind::Mmio))
        );
        let detail = if matches {
            detail
        } else {
            ExitDetail::default()
        };
        // Not cleared: an exit that left for the VMM still ends later, at kvm_entry, with it.
        slow::round_trip_ended(tgid, tid, state, span, detail);
    }
    add_vmm_part(state, ts);
    state.uexit_ts = 0;
}

/// Adds the open round trip's time up to `ts` to the open exit's VMM part (only the time since
/// that exit: a trip that began before it, because an end marker was missed, is not its own).
#[inline(always)]
fn add_vmm_part(state: &mut ThreadState, ts: u64) {
    if state.exit_ts != 0 {
        state.exit_vmm_ns += ts.saturating_sub(state.uexit_ts.max(state.exit_ts));
    }
}
