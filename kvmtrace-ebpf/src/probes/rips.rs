//! `record --guest-rips`: each kvm_exit's guest RIP counted per (thread, exit reason, RIP), in
//! one map per epoch parity like LATENCY. A guest spinning on one instruction hits one key; a
//! key that finds the map full is counted in RIPS_LOST (the report shows it as "other").

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use kvmtrace_common::RipKey;

use crate::state::{BPF_NOEXIST, conf};

/// Sized by the collector: 1 entry when guest RIPs are off.
#[map]
pub static GUEST_RIPS_EVEN: HashMap<RipKey, u64> = HashMap::with_max_entries(1, 0);
#[map]
pub static GUEST_RIPS_ODD: HashMap<RipKey, u64> = HashMap::with_max_entries(1, 0);
#[map]
pub static RIPS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Whether guest RIPs are counted (CONFIG is read-only: the verifier drops the branch when not).
#[inline(always)]
pub fn enabled() -> bool {
    conf!(guest_rips) != 0
}

#[inline(always)]
pub fn count(seq: u32, key: &RipKey) {
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
