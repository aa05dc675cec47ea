//! sched:sched_switch, for vCPU threads only: off-CPU time, split into blocked and
//! runnable-but-waiting, inside and outside KVM_RUN. The filter is TID_SLOTS (a slot per tid):
//! every other switch on the host costs two array loads.
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
//! ```
//! prev_state: the low byte is the task state (0 = running: preempted), 0x100 marks preemption.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use kvmtrace_common::USUAL_OFFSETS;
use kvmtrace_common::{THREAD_MAYBE_WAITING, THREAD_OFF_IN_RUN, THREAD_OFF_RUNNABLE};

use crate::state::{conf, field, now_ns, open_epoch, slot_of};

#[tracepoint]
pub fn kvmtrace_switch(ctx: TracePointContext) -> u32 {
    try_switch(&ctx);
    0
}

#[inline(always)]
fn try_switch(ctx: &TracePointContext) {
    let prev = field::<u32>(ctx, conf!(sched_prev_pid), USUAL_OFFSETS.sched_prev_pid);
    let next = field::<u32>(ctx, conf!(sched_next_pid), USUAL_OFFSETS.sched_next_pid);
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
        let state = field::<u64>(ctx, conf!(sched_prev_state), USUAL_OFFSETS.sched_prev_state);
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
        if state & 0xff == 0 {
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
