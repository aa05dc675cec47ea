//! `record --than`: an exit (kvm_exit -> kvm_entry) or VMM round trip whose span reaches
//! `Config::slow_ns` goes to the collector as one [`SlowExit`] through a ring buffer, with the
//! split of its time and what the guest was doing. Everything here runs only with the option
//! on: CONFIG is read-only, so the verifier drops the branches that lead here otherwise.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use kvmtrace_common::{
    LatencyKind, ThreadState,
    slow::{SlowDetail, SlowExit},
};

use crate::state::conf;

/// Sized by the collector (bytes, a power of two): one page when slow exits are off.
#[map]
pub static SLOW_EXITS: RingBuf = RingBuf::with_byte_size(4096, 0);
#[map]
pub static SLOW_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Whether slow exits are captured (`--than`).
#[inline(always)]
pub fn enabled() -> bool {
    conf!(slow_ns) != 0
}

/// Streams the exit that `state` holds open, ending now after `span` ns of which `vmm` in the
/// VMM, if it is slow.
#[inline(always)]
pub fn exit_ended(tgid: u32, tid: u32, state: &ThreadState, span: u64, vmm: u64) {
    if span < conf!(slow_ns) {
        return;
    }
    send(&SlowExit {
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
    if span < conf!(slow_ns) {
        return;
    }
    send(&SlowExit {
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

#[inline(always)]
fn send(rec: &SlowExit) {
    if SLOW_EXITS.output::<SlowExit>(rec, 0).is_ok() {
        return;
    }
    if let Some(lost) = SLOW_LOST.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *lost += 1 };
    }
}
