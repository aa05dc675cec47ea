//! What was still open when tracing stopped, and the kernel maps' occupancy then.

use std::collections::BTreeMap;

use kvmtrace_common::LatencyKey;

/// What was still open when recording stopped: exits with no entry yet (by key, without a
/// latency sample) and VMM round trips with no re-entry yet, of threads still alive; and exits
/// whose thread ended before their entry (counted, never timed, not "in flight").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    pub exits: BTreeMap<LatencyKey, u64>,
    pub round_trips: u64,
    pub ended_with_thread: BTreeMap<LatencyKey, u64>,
    /// Entries left in the kernel maps after the last drain (None in older recordings).
    pub map_entries: Option<MapEntries>,
}

/// Entries in the kernel maps: after the last drain, THREADS holds the live traced threads and
/// LATENCY/DETAILS nothing, however many VMs came and went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MapEntries {
    pub threads: u64,
    pub latency: u64,
    pub details: u64,
    /// Stack samples and stacks (`--stacks`): emptied at each drain like LATENCY and DETAILS
    /// (absent, 0, in recordings made before it existed).
    #[serde(default)]
    pub stacks: u64,
}

impl InFlight {
    pub fn exit_total(&self) -> u64 {
        self.exits.values().sum()
    }

    pub fn ended_total(&self) -> u64 {
        self.ended_with_thread.values().sum()
    }
}
