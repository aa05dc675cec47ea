//! Guest code attribution (`record --guest-rips`): exits counted per (thread, exit reason, guest
//! RIP) as kvm_exit reported them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Exits of one thread and reason at one guest RIP, in one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RipCount {
    pub tgid: u32,
    pub tid: u32,
    pub isa: u32,
    pub reason: u32,
    pub rip: u64,
    pub exits: u64,
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

/// (VM, isa, reason, RIP).
pub type RipAt = (u32, u32, u32, u64);

/// A recording's guest RIPs per VM (all its vCPUs together), bounded: past [`GuestRips::MAX_KEYS`]
/// distinct RIPs, a new RIP's exits count in `unkeyed` under its (VM, isa, reason).
#[derive(Clone, Debug, Default)]
pub struct GuestRips {
    /// Whether the recording counted them (`--guest-rips`).
    pub enabled: bool,
    pub counts: BTreeMap<RipAt, u64>,
    pub unkeyed: BTreeMap<(u32, u32, u32), u64>,
    /// Exits the kernel could not key (its map was full).
    pub lost: u64,
}

impl GuestRips {
    pub const MAX_KEYS: usize = 200_000;

    pub fn apply(&mut self, batch: &RipBatch) {
        self.lost += batch.lost;
        for c in &batch.counts {
            let at = (c.tgid, c.isa, c.reason, c.rip);
            if let Some(n) = self.counts.get_mut(&at) {
                *n += c.exits;
            } else if self.counts.len() < Self::MAX_KEYS {
                self.counts.insert(at, c.exits);
            } else {
                *self.unkeyed.entry((c.tgid, c.isa, c.reason)).or_default() += c.exits;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_vm_reason_and_rip_across_threads() {
        let c = |tid, rip, exits| RipCount {
            tgid: 1,
            tid,
            isa: 2,
            reason: 0x7b,
            rip,
            exits,
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
        assert_eq!(g.counts[&(1, 2, 0x7b, 0x1000)], 15);
        assert_eq!(g.counts[&(1, 2, 0x7b, 0x2000)], 1);
        assert_eq!(g.lost, 2);
    }
}
