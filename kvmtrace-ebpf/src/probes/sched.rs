//! sched:sched_switch, for vCPU threads only: off-CPU time, split into blocked and
//! runnable-but-waiting, inside and outside KVM_RUN. The filter is TID_SLOTS (a slot per tid):
//! every other switch on the host costs two array loads.
//!
//! Two programs, one logic: the raw tracepoint's (no trace record built for any of the host's
//! switches; it reads the next task's pid at the BTF offset the collector found), and the
//! classic one's where the kernel has no BTF or an older sched_switch (before 5.18 it had no
//! prev_state argument).
//!
//! ```text
//! name: sched_switch
//!     field:char prev_comm[16];  offset:8;  size:16; signed:0;
//!     field:pid_t prev_pid;      offset:24; size:4;  signed:1;
//!     field:int prev_prio;       offset:28; size:4;  signed:1;
//!     field:long prev_state;     offset:32; size:8;  signed:1;
//!     field:char next_comm[16];  offset:40; size:16; signed:0;
//!     field:pid_t next_pid;      offset:56; size:4;  signed:1;
//!     field:int next_prio;       offset:60; size:4;  signed:1;
//! TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
//!          unsigned int prev_state)
//! ```
//! prev_state: the low byte is the task state (0 = running: preempted), 0x100 marks preemption.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use kvmtrace_common::USUAL_OFFSETS;
use kvmtrace_common::{THREAD_MAYBE_WAITING, THREAD_OFF_IN_RUN, THREAD_OFF_RUNNABLE};

use crate::state::{conf, current, field, now_ns, open_epoch, slot_of};

/// The task states sched_switch reports (TASK_REPORT: interruptible, uninterruptible, stopped,
/// traced, dead, zombie, parked); none set means the task was still runnable.
const TASK_REPORT: u64 = 0x7f;

#[tracepoint]
pub fn kvmtrace_switch(ctx: TracePointContext) -> u32 {
    let prev = field::<u32>(&ctx, conf!(sched_prev_pid), USUAL_OFFSETS.sched_prev_pid);
    let next = field::<u32>(&ctx, conf!(sched_next_pid), USUAL_OFFSETS.sched_next_pid);
    switched(prev, next, || {
        field::<u64>(
            &ctx,
            conf!(sched_prev_state),
            USUAL_OFFSETS.sched_prev_state,
        ) & 0xff
            == 0
    });
    0
}

#[raw_tracepoint]
pub fn kvmtrace_switch_raw(ctx: RawTracePointContext) -> i32 {
    // The tracepoint runs on the task being switched away from.
    let (_, prev) = current();
    let next_task: *const u8 = ctx.arg(2);
    // task_struct's pid in this kernel's BTF (the collector attaches this program only when it
    // has it).
    let next_pid = next_task.wrapping_add(conf!(task_pid) as usize) as *const u32;
    // SAFETY: bpf_probe_read_kernel fails cleanly on a bad address.
    let next = unsafe { bpf_probe_read_kernel(next_pid) }.unwrap_or(0);
    switched(prev, next, || {
        ctx.arg::<u64>(0) & 1 != 0 || ctx.arg::<u64>(3) & TASK_REPORT == 0
    });
    0
}

/// A switch from thread `prev` to thread `next`; `runnable` says whether prev was still
/// runnable (preempted or yielding: waiting for a CPU) rather than blocked.
#[inline(always)]
fn switched(prev: u32, next: u32, runnable: impl FnOnce() -> bool) {
    // Each side is looked up and handled on its own: combining the two lookups' results lets the
    // compiler OR the pointers together, which the verifier rejects. The host's other threads
    // have no slot; the gate is checked only for vCPU threads.
    if let Some(p) = slot_of(prev)
        && open_epoch().is_some()
    {
        let ts = now_ns();
        // SAFETY: a thread's slot is only written by its own thread's events, and this is the
        // switch away from that thread.
        let p = unsafe { &mut *p };
        if p.off_ts != 0 {
            // Switched away again with no switch to it reported since the last time: a switch
            // can come without its event (on the machine kvmtrace is developed on, ftrace
            // shows none of the switches away from the sandbox's own init process's threads,
            // so a vCPU thread switched to from one of them is never seen coming in). The time
            // since is counted as the period that began then (waiting, or blocked): the run it
            // hides is at most one slice, where counting all of it on a CPU counted the whole
            // wait or halt before it.
            p.add_off_cpu(ts.saturating_sub(p.off_ts));
        }
        p.off_ts = ts;
        p.flags &= !(THREAD_OFF_IN_RUN | THREAD_OFF_RUNNABLE | THREAD_MAYBE_WAITING);
        if p.run_ts != 0 {
            p.flags |= THREAD_OFF_IN_RUN;
        }
        if runnable() {
            p.flags |= THREAD_OFF_RUNNABLE;
        }
    }
    if let Some(n) = slot_of(next)
        && open_epoch().is_some()
    {
        let ts = now_ns();
        // SAFETY: as above; this is the switch to that thread.
        let n = unsafe { &mut *n };
        if n.off_ts != 0 {
            n.add_off_cpu(ts.saturating_sub(n.off_ts));
            n.off_ts = 0;
        } else if n.flags & THREAD_MAYBE_WAITING != 0 {
            // Seeded as running, and switched to before any switch away: it was waiting for a
            // CPU since the seed (on an overcommitted host, up to seconds), not running.
            let waited = ts.saturating_sub(n.first_ts);
            if n.run_ts != 0 {
                n.off_run_runnable_ns += waited;
            } else {
                n.off_user_runnable_ns += waited;
            }
        }
        n.flags &= !THREAD_MAYBE_WAITING;
    }
}
