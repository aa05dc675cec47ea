//! `record --guest-rips`: each exit counted per (thread, exit reason, guest RIP, detail event)
//! when it ends (kvm_entry, where exits are counted), in one map per epoch parity like LATENCY.
//! The RIP is kvm_exit's, the detail the last detail event before kvm_entry (its port, MMIO
//! address, MSR): so "io exits to port 0x70" are attributed to guest code exactly. A guest
//! spinning on one instruction hits one key; a key that finds the map full is counted in
//! RIPS_LOST (the report shows it as "other").

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use kvmtrace_common::{RipKey, ThreadState};

use crate::state::{BPF_NOEXIST, conf};

/// Sized by the collector: 1 entry when guest RIPs are off.
#[map]
pub static GUEST_RIPS_EVEN: HashMap<RipKey, u64> = HashMap::with_max_entries(1, 0);
#[map]
pub static GUEST_RIPS_ODD: HashMap<RipKey, u64> = HashMap::with_max_entries(1, 0);
#[map]
pub static RIPS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// The key is built here, not on the stack: kvm_entry's frame is near the 512-byte limit of
/// older kernels' verifiers (5.10, 6.1 add the frames of called subprograms).
#[map]
static RIP_KEY: PerCpuArray<RipKey> = PerCpuArray::with_max_entries(1, 0);

/// Whether guest RIPs are counted (CONFIG is read-only: the verifier drops the branch when not).
#[inline(always)]
pub fn enabled() -> bool {
    conf!(guest_rips) != 0
}

/// Counts the exit that `state` holds, at its kvm_entry.
#[inline(always)]
pub fn count_exit(seq: u32, tgid: u32, tid: u32, state: &ThreadState) {
    let Some(key) = RIP_KEY.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; only kvm_entry uses it, and kvm_entry does not nest on a CPU.
    let key = unsafe { &mut *key };
    key.tgid = tgid;
    key.tid = tid;
    key.isa = state.exit_isa;
    key.reason = state.exit_reason;
    key.rip = state.exit_rip;
    key.detail = state.last_detail;
    count(seq, key);
}

#[inline(always)]
fn count(seq: u32, key: &RipKey) {
    let map = if seq & 1 == 0 {
        &GUEST_RIPS_EVEN
    } else {
        &GUEST_RIPS_ODD
    };
    if let Some(n) = map.get_ptr_mut(key) {
        // SAFETY: the key holds the tid: only this thread's (serialized) exits write it.
        unsafe { *n += 1 };
        return;
    }
    if map.insert(key, 1u64, BPF_NOEXIST).is_err()
        && let Some(lost) = RIPS_LOST.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot.
        unsafe { *lost += 1 };
    }
}
