//! Slow exits (`record --than`): every exit whose exit->entry span, and every VMM round trip
//! whose span, reaches [`crate::Config::slow_ns`] is streamed to the collector through the
//! SLOW_EXITS ring buffer as one [`SlowExit`], with where its time went and what the guest was
//! doing. A record that finds the ring buffer full is counted in SLOW_LOST.
//!
//! With `--flight N` each thread also keeps its last [`FLIGHT_MAX`] exits and round trips
//! ([`FlightRing`]), and a slow one is followed in the ring buffer by its thread's ring: the
//! exits that led to it, it included. The ring is also sent when the thread's exits start coming
//! at the storm rate ([`STORM_START_EXITS`] of them at that rate or faster, after a time below
//! it): the exits that led into the storm and its first ones.

use crate::ExitDetail;

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
    pub detail: ExitDetail,
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
    pub detail: ExitDetail,
}

/// Exits at the storm rate that make a storm start (half a ring: the history sent then holds
/// as many exits from before). A power of two: the kernel indexes its times with a mask.
pub const STORM_START_EXITS: usize = FLIGHT_MAX / 2;
const _: () = assert!(STORM_START_EXITS.is_power_of_two());
/// A storm is over once its exits have not come at the storm rate for this long: a vCPU thread
/// preempted for a few ms in the middle of one does not start it again.
pub const STORM_END_NS: u64 = 100_000_000;

/// [`FlightRing::why`] of a ring sent after a slow exit.
pub const FLIGHT_SLOW: u32 = 1;
/// ... of a ring sent as a storm starts.
pub const FLIGHT_STORM: u32 = 2;

/// A thread's last [`FLIGHT_MAX`] exits and round trips: entry `head % FLIGHT_MAX` is the next
/// to be written, so the newest is just before it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlightRing {
    pub tgid: u32,
    pub tid: u32,
    /// Why it was sent ([`FLIGHT_SLOW`], [`FLIGHT_STORM`]).
    pub why: u32,
    /// 1 while the thread's exits come at the storm rate.
    pub in_storm: u32,
    /// Start times (ktime) of the thread's last [`STORM_START_EXITS`] exits, the next to write
    /// at `counted % STORM_START_EXITS`: the guest's exit rate over the last ones, at each exit.
    pub recent_ns: [u64; STORM_START_EXITS],
    /// Exits counted toward the rate so far.
    pub counted: u64,
    /// The last time (ktime) the exits came at the storm rate.
    pub last_at_rate_ns: u64,
    /// The start time of the first exit of the storm that started last (sent with
    /// [`FLIGHT_STORM`]).
    pub storm_first_ns: u64,
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
