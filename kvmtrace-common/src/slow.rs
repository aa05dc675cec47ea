//! Slow exits (`record --than`): every exit whose exit->entry span, and every VMM round trip
//! whose span, reaches [`crate::Config::slow_ns`] is streamed to the collector through the
//! SLOW_EXITS ring buffer as one [`SlowExit`], with where its time went and what the guest was
//! doing. A record that finds the ring buffer full is counted in SLOW_LOST.
//!
//! With `--flight N` each thread also keeps its last [`FLIGHT_MAX`] exits and round trips
//! ([`FlightRing`]), and a slow one is followed in the ring buffer by its thread's ring: the
//! exits that led to it, it included.

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

/// Exits and round trips a thread's flight recorder keeps (`--flight` takes at most this).
pub const FLIGHT_MAX: usize = 32;
// The sampler indexes the ring with a mask.
const _: () = assert!(FLIGHT_MAX.is_power_of_two());

/// One exit or round trip in a flight recorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlightEntry {
    /// ktime of its start (the exit, or KVM_RUN returning to user space).
    pub start_ns: u64,
    pub total_ns: u64,
    /// As in [`SlowExit`].
    pub kind: u32,
    pub isa: u32,
    pub reason: u32,
    pub pad: u32,
    pub detail: SlowDetail,
}

/// A thread's last [`FLIGHT_MAX`] exits and round trips: entry `head % FLIGHT_MAX` is the next
/// to be written, so the newest is just before it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlightRing {
    pub tid: u32,
    pub pad: u32,
    /// Entries written so far.
    pub head: u64,
    pub entries: [FlightEntry; FLIGHT_MAX],
}

impl FlightRing {
    /// The entries, oldest first.
    pub fn in_order(&self) -> impl Iterator<Item = &FlightEntry> {
        let n = (self.head as usize).min(FLIGHT_MAX);
        let start = self.head as usize - n;
        (start..self.head as usize).map(move |i| &self.entries[i % FLIGHT_MAX])
    }
}
