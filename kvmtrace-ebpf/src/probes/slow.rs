//! `record --than`: an exit (kvm_exit -> kvm_entry) or VMM round trip whose span reaches
//! `Config::slow_ns` goes to the collector as one [`SlowExit`] through a ring buffer, with the
//! split of its time and what the guest was doing. Everything here runs only with the option
//! on: CONFIG is read-only, so the verifier drops the branches that lead here otherwise.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use kvmtrace_common::{
    ExitDetail, LatencyKind, ThreadState,
    slow::{
        FLIGHT_MAX, FLIGHT_SLOW, FLIGHT_STORM, FlightRing, STORM_END_NS, STORM_START_EXITS,
        SlowExit,
    },
};

use crate::state::{BPF_NOEXIST, conf};

/// Sized by the collector (bytes, a power of two): one page when slow exits are off.
#[map]
pub static SLOW_EXITS: RingBuf = RingBuf::with_byte_size(4096, 0);
#[map]
pub static SLOW_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Sized by the collector with `--flight` (FLIGHT_THREADS), else 1 entry.
#[map]
pub static FLIGHT: LruHashMap<u32, FlightRing> = LruHashMap::with_max_entries(1, 0);
/// An all-zero ring, never written: the value a thread's first FLIGHT entry is created from (a
/// ring does not fit the 512-byte BPF stack).
#[map]
pub static FLIGHT_EMPTY: PerCpuArray<FlightRing> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SLOW_SCRATCH: PerCpuArray<SlowExit> = PerCpuArray::with_max_entries(1, 0);

/// Whether slow exits are captured (`--than`) or exits remembered (`--flight`).
#[inline(always)]
pub fn enabled() -> bool {
    conf!(slow_ns) != 0 || conf!(flight) != 0
}

/// Ends the exit that `state` holds open, now, after `span` ns of which `vmm` in the VMM:
/// remembered for `--flight`, streamed if slow.
#[inline(always)]
pub fn exit_ended(tgid: u32, tid: u32, state: &ThreadState, span: u64, vmm: u64) {
    let Some(rec) = scratch() else {
        return;
    };
    rec.tgid = tgid;
    rec.tid = tid;
    rec.vcpu_id = state.vcpu_id;
    rec.kind = LatencyKind::Exit as u32;
    rec.isa = state.exit_isa;
    rec.reason = state.exit_reason;
    rec.detail.kind = state.last_detail.kind;
    rec.detail.a = state.last_detail.a;
    rec.detail.b = state.last_detail.b;
    rec.start_ns = state.exit_ts;
    rec.total_ns = span;
    rec.vmm_ns = vmm;
    rec.off_cpu_ns = state.off_run_ns().saturating_sub(state.exit_off_ns);
    rec.guest_rip = state.exit_rip;
    rec.info1 = state.exit_info1;
    rec.info2 = state.exit_info2;
    finish(rec, true);
}

/// Ends the VMM round trip that `state` holds open, now, after `span` ns: remembered for
/// `--flight`, streamed if slow. `detail`: the exit's that left for the VMM (the caller matches
/// the thread's last detail event to the userspace exit: KVM_EXIT_IO a port, KVM_EXIT_MMIO an
/// address).
#[inline(always)]
pub fn round_trip_ended(tgid: u32, tid: u32, state: &ThreadState, span: u64, detail: ExitDetail) {
    let Some(rec) = scratch() else {
        return;
    };
    rec.tgid = tgid;
    rec.tid = tid;
    rec.vcpu_id = state.vcpu_id;
    rec.kind = LatencyKind::VmmRoundTrip as u32;
    rec.isa = 0;
    rec.reason = state.uexit_reason;
    rec.detail.kind = detail.kind;
    rec.detail.a = detail.a;
    rec.detail.b = detail.b;
    rec.start_ns = state.uexit_ts;
    rec.total_ns = span;
    rec.vmm_ns = span;
    rec.off_cpu_ns = state.off_user_ns().saturating_sub(state.uexit_off_ns);
    rec.guest_rip = 0;
    rec.info1 = 0;
    rec.info2 = 0;
    // A round trip inside an exit (VMX/SVM) is part of that exit: only one where exits are not
    // traced (kvm_pvm) counts toward the storm rate.
    finish(rec, state.exit_ts == 0);
}

/// This CPU's record being built: on the BPF stack, a record and its callers' locals passed the
/// 512-byte limit of 5.10's and 6.1's verifiers (kvm_entry's programs).
#[inline(always)]
fn scratch() -> Option<&'static mut SlowExit> {
    let rec = SLOW_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; tracepoint programs on one CPU do not nest.
    Some(unsafe { &mut *rec })
}

/// Remembers the exit or round trip that ended (`--flight`), and sends it if it is slow, with
/// its thread's flight recorder after it. `counts_for_rate`: it counts toward the storm rate.
#[inline(always)]
fn finish(rec: &SlowExit, counts_for_rate: bool) {
    let ring = if conf!(flight) != 0 {
        remember(rec, counts_for_rate)
    } else {
        None
    };
    if conf!(slow_ns) == 0 || rec.total_ns < conf!(slow_ns) {
        return;
    }
    if SLOW_EXITS.output::<SlowExit>(rec, 0).is_err() {
        lost();
        return;
    }
    if let Some(ring) = ring {
        send_ring(ring, FLIGHT_SLOW);
    }
}

#[inline(always)]
fn send_ring(ring: *mut FlightRing, why: u32) {
    // SAFETY: a FLIGHT value; only this thread's events write it.
    let ring = unsafe { &mut *ring };
    ring.why = why;
    let ring: &FlightRing = ring;
    if SLOW_EXITS.output::<FlightRing>(ring, 0).is_err() {
        lost();
    }
}

#[inline(always)]
fn lost() {
    if let Some(lost) = SLOW_LOST.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *lost += 1 };
    }
}

/// Appends `rec` to its thread's ring; the ring, or None when FLIGHT has no room for it.
#[inline(always)]
fn remember(rec: &SlowExit, counts_for_rate: bool) -> Option<*mut FlightRing> {
    let ring = match FLIGHT.get_ptr_mut(rec.tid) {
        Some(r) => r,
        None => {
            let empty = FLIGHT_EMPTY.get_ptr(0)?;
            // SAFETY: the per-CPU all-zero template, read only.
            let empty: &FlightRing = unsafe { &*empty };
            let _ = FLIGHT.insert(rec.tid, empty, BPF_NOEXIST);
            FLIGHT.get_ptr_mut(rec.tid)?
        }
    };
    // SAFETY: a FLIGHT value; the key is the tid, and a thread's events are serialized.
    let r = unsafe { &mut *ring };
    r.tgid = rec.tgid;
    r.tid = rec.tid;
    let slot = (r.head as usize) & (FLIGHT_MAX - 1);
    if let Some(e) = r.entries.get_mut(slot) {
        // Field by field: a whole FlightEntry would be built on the stack first.
        e.start_ns = rec.start_ns;
        e.total_ns = rec.total_ns;
        e.kind = rec.kind;
        e.isa = rec.isa;
        e.reason = rec.reason;
        e.detail.kind = rec.detail.kind;
        e.detail.a = rec.detail.a;
        e.detail.b = rec.detail.b;
    }
    r.head += 1;
    if counts_for_rate && storm_starts(r, rec.start_ns) {
        send_ring(ring, FLIGHT_STORM);
    }
    Some(ring)
}

/// Counts an exit that started at `now` (it just ended: exits end in the order they start):
/// true when it makes a storm start, that is when the last
/// [`STORM_START_EXITS`] intervals between exits (this one the newest) came at the storm rate or
/// faster and no storm is under way; the storm's first exit is the oldest of them. A storm is
/// over once they have not come at the rate for [`STORM_END_NS`].
#[inline(always)]
fn storm_starts(r: &mut FlightRing, now: u64) -> bool {
    const N: u64 = STORM_START_EXITS as u64;
    let slot = (r.counted as usize) & (STORM_START_EXITS - 1);
    // The oldest of the last N, which this one replaces (N exits span from it to now).
    let oldest = r.recent_ns.get(slot).copied().unwrap_or(0);
    if let Some(t) = r.recent_ns.get_mut(slot) {
        *t = now;
    }
    r.counted += 1;
    if r.counted <= N {
        return false;
    }
    // N exits in `span` ns: at the rate when N * 1e9 >= rate * span.
    let span = now.saturating_sub(oldest);
    let at_rate = N * 1_000_000_000 >= conf!(storm_rate) as u64 * span;
    if at_rate {
        r.last_at_rate_ns = now;
    }
    if r.in_storm != 0 {
        if now.saturating_sub(r.last_at_rate_ns) > STORM_END_NS {
            r.in_storm = 0;
        }
        return false;
    }
    if at_rate {
        r.in_storm = 1;
        r.storm_first_ns = oldest;
        return true;
    }
    false
}
