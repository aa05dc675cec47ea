//! Guest code attribution (`record --guest-rips`): exits counted per (thread, exit reason,
//! detail event, guest RIP), the RIP as kvm_exit reported it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Exits of one thread and reason, with one detail, at one guest RIP, in one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RipCount {
    pub tgid: u32,
    pub tid: u32,
    pub isa: u32,
    pub reason: u32,
    pub rip: u64,
    pub exits: u64,
    /// The exits' detail event: (kind, a, b) as in a [`kvmtrace_common::DetailKey`]; None when they had none
    /// (and in recordings made before kvmtrace kept it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<(u32, u32, u64)>,
}

/// One interval's counts, and the exits whose RIP found the kernel's map full.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RipBatch {
    pub counts: Vec<RipCount>,
    pub lost: u64,
}

impl RipBatch {
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.lost == 0
    }
}

/// Exits of one thread, reason and detail: (VM, thread, isa, reason, detail).
pub type RipGroup = (u32, u32, u32, u32, Option<(u32, u32, u64)>);

/// A recording's guest RIPs per thread, reason and detail, bounded: past
/// [`GuestRips::MAX_KEYS`] distinct keys, a new key's exits count in `unkeyed` under its group.
#[derive(Clone, Debug, Default)]
pub struct GuestRips {
    /// Whether the recording counted them (`--guest-rips`).
    pub enabled: bool,
    pub counts: BTreeMap<(RipGroup, u64), u64>,
    pub unkeyed: BTreeMap<RipGroup, u64>,
    /// Exits the kernel could not key (its map was full).
    pub lost: u64,
}

impl GuestRips {
    pub const MAX_KEYS: usize = 200_000;

    pub fn apply(&mut self, batch: &RipBatch) {
        self.lost += batch.lost;
        for c in &batch.counts {
            let group = (c.tgid, c.tid, c.isa, c.reason, c.detail);
            if let Some(n) = self.counts.get_mut(&(group, c.rip)) {
                *n += c.exits;
            } else if self.counts.len() < Self::MAX_KEYS {
                self.counts.insert((group, c.rip), c.exits);
            } else {
                *self.unkeyed.entry(group).or_default() += c.exits;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_thread_reason_detail_and_rip_across_intervals() {
        let port = Some((1, 0x70, 0));
        let c = |tid, rip, exits| RipCount {
            tgid: 1,
            tid,
            isa: 2,
            reason: 0x7b,
            rip,
            exits,
            detail: port,
        };
        let mut g = GuestRips::default();
        g.apply(&RipBatch {
            counts: vec![c(10, 0x1000, 5), c(11, 0x1000, 7), c(10, 0x2000, 1)],
            lost: 2,
        });
        g.apply(&RipBatch {
            counts: vec![c(10, 0x1000, 3)],
            lost: 0,
        });
        assert_eq!(g.counts[&((1, 10, 2, 0x7b, port), 0x1000)], 8);
        assert_eq!(g.counts[&((1, 11, 2, 0x7b, port), 0x1000)], 7);
        assert_eq!(g.counts[&((1, 10, 2, 0x7b, port), 0x2000)], 1);
        assert_eq!(g.lost, 2);
    }

    /// A count with its detail survives the recording's JSON, and one from a recording made
    /// before the detail was kept reads as having none.
    #[test]
    fn detail_is_optional_in_the_recording() {
        let c = RipCount {
            tgid: 1,
            tid: 2,
            isa: 2,
            reason: 0x7b,
            rip: 0x1000,
            exits: 3,
            detail: Some((1, 0x70, 0x101)),
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<RipCount>(&json).unwrap(), c);
        let old = r#"{"tgid":1,"tid":2,"isa":2,"reason":123,"rip":4096,"exits":3}"#;
        let read: RipCount = serde_json::from_str(old).unwrap();
        assert_eq!(read.detail, None);
        assert_eq!(read.exits, 3);
    }
}
