//! `record --than`: an exit (kvm_exit -> kvm_entry) or VMM round trip whose span reaches
//! `Config::slow_ns` goes to the collector as one [`SlowExit`] through a ring buffer, with the
//! split of its time and what the guest was doing. Everything here runs only with the option
//! on: CONFIG is read-only, so the verifier drops the branches that lead here otherwise.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use kvmtrace_common::{
    LatencyKind, ThreadState,
    slow::{FLIGHT_MAX, FlightEntry, FlightRing, SlowDetail, SlowExit},
};

use crate::state::{BPF_NOEXIST, conf};

/// Sized by the collector (bytes, a power of two): one page when slow exits are off.
#[map]
pub static SLOW_EXITS: RingBuf = RingBuf::with_byte_size(4096, 0);
#[map]
pub static SLOW_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Sized by the collector (as THREADS) with `--flight`, else 1 entry.
#[map]
pub static FLIGHT: LruHashMap<u32, FlightRing> = LruHashMap::with_max_entries(1, 0);
/// An all-zero ring, never written: the value a thread's first FLIGHT entry is created from (a
/// ring does not fit the 512-byte BPF stack).
#[map]
pub static FLIGHT_EMPTY: PerCpuArray<FlightRing> = PerCpuArray::with_max_entries(1, 0);

/// Whether slow exits are captured (`--than`).
#[inline(always)]
pub fn enabled() -> bool {
    conf!(slow_ns) != 0
}

/// Streams the exit that `state` holds open, ending now after `span` ns of which `vmm` in the
/// VMM, if it is slow.
#[inline(always)]
pub fn exit_ended(tgid: u32, tid: u32, state: &ThreadState, span: u64, vmm: u64) {
    finish(&SlowExit {
        tgid,
        tid,
        vcpu_id: state.vcpu_id,
        kind: LatencyKind::Exit as u32,
        isa: state.exit_isa,
        reason: state.exit_reason,
        detail: state.last_detail,
        start_ns: state.exit_ts,
        total_ns: span,
        vmm_ns: vmm,
        off_cpu_ns: state.off_run_ns().saturating_sub(state.exit_off_ns),
        guest_rip: state.exit_rip,
        info1: state.exit_info1,
        info2: state.exit_info2,
    });
}

/// Streams the VMM round trip that `state` holds open, ending now after `span` ns, if it is
/// slow. The thread's last detail event is the exit's that left for the VMM when its kind
/// matches the userspace exit (KVM_EXIT_IO: a port, KVM_EXIT_MMIO: an address).
#[inline(always)]
pub fn round_trip_ended(tgid: u32, tid: u32, state: &ThreadState, span: u64, detail: SlowDetail) {
    finish(&SlowExit {
        tgid,
        tid,
        vcpu_id: state.vcpu_id,
        kind: LatencyKind::VmmRoundTrip as u32,
        isa: 0,
        reason: state.uexit_reason,
        detail,
        start_ns: state.uexit_ts,
        total_ns: span,
        vmm_ns: span,
        off_cpu_ns: state.off_user_ns().saturating_sub(state.uexit_off_ns),
        guest_rip: 0,
        info1: 0,
        info2: 0,
    });
}

/// Remembers the exit or round trip that ended (`--flight`), and sends it if it is slow, with
/// its thread's flight recorder after it.
#[inline(always)]
fn finish(rec: &SlowExit) {
    let ring = if conf!(flight) != 0 {
        remember(rec)
    } else {
        None
    };
    if rec.total_ns < conf!(slow_ns) {
        return;
    }
    if SLOW_EXITS.output::<SlowExit>(rec, 0).is_err() {
        lost();
        return;
    }
    if let Some(ring) = ring {
        // SAFETY: a FLIGHT value; only this thread's events write it.
        let ring: &FlightRing = unsafe { &*ring };
        if SLOW_EXITS.output::<FlightRing>(ring, 0).is_err() {
            lost();
        }
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
fn remember(rec: &SlowExit) -> Option<*mut FlightRing> {
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
    r.tid = rec.tid;
    let slot = (r.head as usize) & (FLIGHT_MAX - 1);
    if let Some(e) = r.entries.get_mut(slot) {
        *e = FlightEntry {
            start_ns: rec.start_ns,
            total_ns: rec.total_ns,
            kind: rec.kind,
            isa: rec.isa,
            reason: rec.reason,
            pad: 0,
            detail: rec.detail,
        };
    }
    r.head += 1;
    Some(ring)
}
