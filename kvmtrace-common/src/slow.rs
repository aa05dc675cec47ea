//! Slow exits (`record --than`): every exit whose exit->entry span, and every VMM round trip
//! whose span, reaches [`crate::Config::slow_ns`] is streamed to the collector through the
//! SLOW_EXITS ring buffer as one [`SlowExit`], with where its time went and what the guest was
//! doing. A record that finds the ring buffer full is counted in SLOW_LOST.

/// A detail event's key: [`crate::DetailKind`] (0: none) and its two values, as in
/// [`crate::DetailKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlowDetail {
    pub kind: u32,
    pub a: u32,
    pub b: u64,
}

/// One slow exit or VMM round trip.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlowExit {
    pub tgid: u32,
    pub tid: u32,
    pub vcpu_id: u32,
    /// [`crate::LatencyKind::Exit`] (kvm_exit -> kvm_entry) or
    /// [`crate::LatencyKind::VmmRoundTrip`] (kvm_userspace_exit -> back in KVM_RUN).
    pub kind: u32,
    /// The exit's isa and reason; for a round trip, isa 0 and the userspace exit reason.
    pub isa: u32,
    pub reason: u32,
    /// The detail event of this exit (for a round trip, of the exit that left for the VMM).
    pub detail: SlowDetail,
    /// ktime (CLOCK_MONOTONIC ns) of the exit.
    pub start_ns: u64,
    pub total_ns: u64,
    /// Of `total_ns`: in the VMM (round trips inside the exit; all of a round trip's).
    pub vmm_ns: u64,
    /// Of `total_ns`: the thread off CPU (halted, waiting or preempted); for an exit, outside
    /// its VMM part (in-kernel on CPU = total - vmm - off_cpu); for a round trip, in the VMM.
    pub off_cpu_ns: u64,
    /// kvm_exit's fields (0 for a round trip, and where kvm_exit does not fire).
    pub guest_rip: u64,
    pub info1: u64,
    pub info2: u64,
}
