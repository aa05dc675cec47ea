//! Slow exits (`record --than`): each exit or VMM round trip that reached the threshold, as the
//! kernel streamed it, with its time since the recording started.

use std::{collections::BTreeMap, time::Duration};

use kvmtrace_common::{LatencyKind, detail::Detail};
use serde::{Deserialize, Serialize};

/// What was slow: an exit (kvm_exit -> kvm_entry) or a VMM round trip (KVM_RUN returned to
/// user space -> back in KVM_RUN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowKind {
    Exit,
    VmmRoundTrip,
}

/// One slow exit or round trip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowExit {
    /// Since the recording started.
    pub at: Duration,
    pub tgid: u32,
    pub tid: u32,
    pub vcpu_id: u32,
    pub kind: SlowKind,
    /// The exit's isa and reason; a round trip's userspace exit reason (isa 0).
    pub isa: u32,
    pub reason: u32,
    /// Its detail event: (kind, a, b) as in a [`kvmtrace_common::DetailKey`]; None when it had none.
    pub detail: Option<(u32, u32, u64)>,
    pub total_ns: u64,
    /// Of `total_ns`: the VMM's part.
    pub vmm_ns: u64,
    /// Of `total_ns`: off CPU (an exit: outside its VMM part; a round trip: in the VMM).
    pub off_cpu_ns: u64,
    /// kvm_exit's fields (exits only, where kvm_exit fires).
    pub guest_rip: u64,
    pub info1: u64,
    pub info2: u64,
    /// `--flight N`: the thread's last N exits and round trips, oldest first, this one last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<FlightExit>,
}

/// An exit or round trip of a slow one's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlightExit {
    /// Since the recording started.
    pub at: Duration,
    pub kind: SlowKind,
    pub isa: u32,
    pub reason: u32,
    pub detail: Option<(u32, u32, u64)>,
    pub total_ns: u64,
}

impl SlowExit {
    /// The detail event, decoded.
    pub fn detail(&self) -> Option<Detail> {
        super::decode_detail(self.tgid, self.tid, self.detail)
    }

    /// The time on CPU outside the VMM: the in-kernel handling of an exit (0 for a round trip).
    pub fn in_kernel_on_cpu_ns(&self) -> u64 {
        match self.kind {
            SlowKind::Exit => self
                .total_ns
                .saturating_sub(self.vmm_ns)
                .saturating_sub(self.off_cpu_ns),
            SlowKind::VmmRoundTrip => 0,
        }
    }

    pub fn latency_kind(&self) -> LatencyKind {
        match self.kind {
            SlowKind::Exit => LatencyKind::Exit,
            SlowKind::VmmRoundTrip => LatencyKind::VmmRoundTrip,
        }
    }
}

/// A vCPU's exits starting to come at the storm rate (`--flight`): the exits that led into it
/// and its first ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StormStart {
    /// The storm's first exit, since the recording started.
    pub at: Duration,
    pub tgid: u32,
    pub tid: u32,
    /// Oldest first; the storm's exits are those at or after `at`.
    pub history: Vec<FlightExit>,
}

/// The slow exits of one interval, and how many the kernel could not send (its ring buffer was
/// full).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowBatch {
    pub exits: Vec<SlowExit>,
    pub lost: u64,
    /// `--flight`: storms that started in the interval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storm_starts: Vec<StormStart>,
}

impl SlowBatch {
    pub fn is_empty(&self) -> bool {
        self.exits.is_empty() && self.lost == 0 && self.storm_starts.is_empty()
    }
}

/// The slow exits kept for the report: every one counted per (VM, kind, isa, reason); the
/// slowest [`SlowProfile::KEEP`] kept whole (a recording of hours may capture millions).
#[derive(Clone, Debug, Default)]
pub struct SlowProfile {
    /// The threshold (`record --than`); None: slow exits were not captured.
    pub threshold_ns: Option<u64>,
    /// Captured, per (tgid, kind, isa, reason).
    pub counts: BTreeMap<(u32, SlowKind, u32, u32), u64>,
    /// The slowest ones, slowest first.
    pub slowest: Vec<SlowExit>,
    pub lost: u64,
    /// `--flight`: the first [`SlowProfile::KEEP_STORMS`] storm starts, in time order.
    pub storm_starts: Vec<StormStart>,
}

impl SlowProfile {
    pub const KEEP: usize = 1000;
    pub const KEEP_STORMS: usize = 100;

    pub fn apply(&mut self, batch: &SlowBatch) {
        self.lost += batch.lost;
        let room = Self::KEEP_STORMS.saturating_sub(self.storm_starts.len());
        self.storm_starts
            .extend(batch.storm_starts.iter().take(room).cloned());
        if batch.exits.is_empty() {
            return;
        }
        for e in &batch.exits {
            *self
                .counts
                .entry((e.tgid, e.kind, e.isa, e.reason))
                .or_default() += 1;
        }
        self.slowest.extend(batch.exits.iter().cloned());
        // Longest first; ties in time order, so that the list reads the same every time.
        self.slowest
            .sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.at.cmp(&b.at)));
        self.slowest.truncate(Self::KEEP);
    }

    pub fn captured(&self) -> u64 {
        self.counts.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(total_ns: u64, at_ms: u64) -> SlowExit {
        SlowExit {
            at: Duration::from_millis(at_ms),
            tgid: 1,
            tid: 2,
            vcpu_id: 0,
            kind: SlowKind::Exit,
            isa: 2,
            reason: 0x78,
            detail: None,
            total_ns,
            vmm_ns: 0,
            off_cpu_ns: total_ns / 2,
            guest_rip: 0x1000,
            info1: 0,
            info2: 0,
            history: Vec::new(),
        }
    }

    #[test]
    fn profile_counts_every_exit_and_keeps_the_slowest() {
        let mut p = SlowProfile::default();
        let many: Vec<SlowExit> = (0..1500).map(|i| exit(1000 + i, i)).collect();
        p.apply(&SlowBatch {
            exits: many,
            lost: 3,
            storm_starts: Vec::new(),
        });
        p.apply(&SlowBatch {
            exits: vec![exit(5000, 2000)],
            lost: 1,
            storm_starts: Vec::new(),
        });
        assert_eq!(p.captured(), 1501);
        assert_eq!(p.lost, 4);
        assert_eq!(p.slowest.len(), SlowProfile::KEEP);
        assert_eq!(p.slowest[0].total_ns, 5000);
        assert_eq!(p.slowest[1].total_ns, 2499);
        assert_eq!(p.slowest[1].in_kernel_on_cpu_ns(), 2499 - 2499 / 2);
    }
}
