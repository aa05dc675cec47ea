//! `record --stacks`: a cpu-clock sample on a traced vCPU thread is counted under the thread,
//! what it was doing (its [`ThreadState`]: in the guest, in the kernel handling exit reason R,
//! in the VMM handling userspace exit U) and its kernel and user stacks. The program only reads
//! the thread's state; it never creates one (a thread gets its state from its own events or the
//! collector's seeding), so samples of other threads cost a TID_MARKS load.

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    macros::{map, perf_event},
    maps::{HashMap, PerCpuArray, StackTrace},
    programs::{PerfEventContext, tracing::StackIdContext as _},
};
use kvmtrace_common::{
    THREAD_SEEN_ENTRY, ThreadState,
    stacks::{NO_REASON, SampleState, StackKey},
};

use crate::state::{BPF_NOEXIST, THREADS, current, maybe_traced_tid, open_epoch, traced};

/// Sized by the collector: 1 entry when stacks are off. One per epoch parity, as the counts.
#[map]
pub static STACK_TRACES_EVEN: StackTrace = StackTrace::with_max_entries(1, 0);
#[map]
pub static STACK_TRACES_ODD: StackTrace = StackTrace::with_max_entries(1, 0);
#[map]
pub static STACK_COUNTS_EVEN: HashMap<StackKey, u64> = HashMap::with_max_entries(1, 0);
#[map]
pub static STACK_COUNTS_ODD: HashMap<StackKey, u64> = HashMap::with_max_entries(1, 0);
#[map]
pub static STACK_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[perf_event]
pub fn kvmtrace_stack_sample(ctx: PerfEventContext) -> u32 {
    try_sample(&ctx);
    0
}

#[inline(always)]
fn try_sample(ctx: &PerfEventContext) {
    let (tgid, tid) = current();
    if !maybe_traced_tid(tid) || !traced(tgid) {
        return;
    }
    let Some(seq) = open_epoch() else {
        return;
    };
    let Some(state) = THREADS.get_ptr(tid) else {
        return;
    };
    // SAFETY: a THREADS value; its own thread may be updating it (this sample may interrupt one
    // of its raw tracepoint programs), so a field may be a moment old: a sample is a sample.
    let state = unsafe { &*state };
    if state.tgid != tgid {
        return;
    }
    let mut key = classify(state);
    key.tgid = tgid;
    key.tid = tid;
    key.vcpu_id = state.vcpu_id;
    let user = BPF_F_USER_STACK as u64;
    let map = if seq & 1 == 0 {
        key.kernel_stack = stack_id(ctx, &STACK_TRACES_EVEN, 0);
        key.user_stack = stack_id(ctx, &STACK_TRACES_EVEN, user);
        &STACK_COUNTS_EVEN
    } else {
        key.kernel_stack = stack_id(ctx, &STACK_TRACES_ODD, 0);
        key.user_stack = stack_id(ctx, &STACK_TRACES_ODD, user);
        &STACK_COUNTS_ODD
    };
    if let Some(n) = map.get_ptr_mut(key) {
        // SAFETY: the key holds the tid, and a thread is sampled on one CPU at a time; samples on
        // one CPU do not nest.
        unsafe { *n += 1 };
        return;
    }
    if map.insert(key, 1u64, BPF_NOEXIST).is_err() {
        if let Some(lost) = STACK_LOST.get_ptr_mut(0) {
            // SAFETY: this CPU's slot.
            unsafe { *lost += 1 };
        }
    }
}

/// The state part of the key, from what the thread's events last said.
#[inline(always)]
fn classify(state: &ThreadState) -> StackKey {
    let mut key = StackKey {
        isa: NO_REASON,
        reason: NO_REASON,
        uexit_reason: NO_REASON,
        ..StackKey::default()
    };
    if state.exit_ts != 0 {
        key.isa = state.exit_isa;
        key.reason = state.exit_reason;
    }
    key.state = if state.run_ts == 0 {
        if state.uexit_ts != 0 {
            key.uexit_reason = state.uexit_reason;
        }
        SampleState::Vmm as u32
    } else if state.flags & THREAD_SEEN_ENTRY == 0 {
        SampleState::InRun as u32
    } else if state.exit_ts != 0 {
        SampleState::Exit as u32
    } else {
        SampleState::Guest as u32
    };
    key
}

/// The stack's id in `traces`, or the kernel's error (below 0).
#[inline(always)]
fn stack_id(ctx: &PerfEventContext, traces: &StackTrace, flags: u64) -> i32 {
    match ctx.get_stackid(traces, flags) {
        Ok(id) => id as i32,
        Err(e) => e,
    }
}
