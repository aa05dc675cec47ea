//! `record --stacks`: a cpu-clock sample on a traced vCPU thread is counted under the thread,
//! what it was doing (its [`ThreadState`]: in the guest, in the kernel handling exit reason R,
//! in the VMM handling userspace exit U) and its kernel and user stacks. The program only reads
//! the thread's state; it never creates one (a thread gets its state from its own events or the
//! collector's seeding), so samples of other threads cost a TID_SLOTS load.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_F_USER_STACK,
    helpers::generated::bpf_get_stack,
    macros::{map, perf_event},
    maps::{HashMap, PerCpuArray},
    programs::PerfEventContext,
};
use kvmtrace_common::{
    THREAD_SEEN_ENTRY, ThreadState,
    stacks::{
        LOST_STACK, MAX_STACK_DEPTH, NO_REASON, NO_STACK, SampleState, StackFrames, StackKey,
    },
};

use crate::state::{BPF_NOEXIST, current, open_epoch, slot_of, traced};

/// Sized by the collector: 1 entry when stacks are off. One per epoch parity, as the counts.
#[map]
pub static STACK_FRAMES_EVEN: HashMap<u64, StackFrames> = HashMap::with_max_entries(1, 0);
#[map]
pub static STACK_FRAMES_ODD: HashMap<u64, StackFrames> = HashMap::with_max_entries(1, 0);
#[map]
pub static STACK_SCRATCH: PerCpuArray<StackFrames> = PerCpuArray::with_max_entries(1, 0);
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
    let Some(state) = slot_of(tid) else {
        return;
    };
    if !traced(tgid) {
        return;
    }
    let Some(seq) = open_epoch() else {
        return;
    };
    // SAFETY: a thread's slot; its own thread may be updating it (this sample may interrupt one
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
        key.kernel_stack = keep_stack(ctx, &STACK_FRAMES_EVEN, 0);
        key.user_stack = keep_stack(ctx, &STACK_FRAMES_EVEN, user);
        &STACK_COUNTS_EVEN
    } else {
        key.kernel_stack = keep_stack(ctx, &STACK_FRAMES_ODD, 0);
        key.user_stack = keep_stack(ctx, &STACK_FRAMES_ODD, user);
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

/// Walks the current kernel (or, with BPF_F_USER_STACK, user) stack, keeps its frames in
/// `frames` under their hash unless a sample of the interval already did, and returns the hash
/// (or [`NO_STACK`] / [`LOST_STACK`]).
#[inline(always)]
fn keep_stack(ctx: &PerfEventContext, frames: &HashMap<u64, StackFrames>, flags: u64) -> u64 {
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else {
        return LOST_STACK;
    };
    const BYTES: u32 = (MAX_STACK_DEPTH * 8) as u32;
    // SAFETY: this CPU's scratch; samples on one CPU do not nest.
    let scratch = unsafe { &mut *scratch };
    // SAFETY: the helper writes at most BYTES into `ips`, which holds BYTES.
    let written =
        unsafe { bpf_get_stack(ctx.as_ptr(), scratch.ips.as_mut_ptr().cast(), BYTES, flags) };
    if written == 0 || written == -EFAULT {
        // No such stack: a sample in user space has no kernel stack, a guest sample neither.
        return NO_STACK;
    }
    if written < 0 {
        return LOST_STACK;
    }
    scratch.len = written as u64 / 8;
    let hash = scratch.hash();
    if frames.get_ptr(hash).is_some() {
        return hash;
    }
    // By reference: a copy would not fit the 512-byte BPF stack.
    let kept: &StackFrames = scratch;
    match frames.insert(hash, kept, BPF_NOEXIST) {
        // -EEXIST: another CPU kept the same stack just now.
        Ok(()) => hash,
        Err(e) if e == -(EEXIST as i32) => hash,
        Err(_) => LOST_STACK,
    }
}

const EFAULT: i64 = 14;
const EEXIST: i64 = 17;
