//! `record --guest-rips`: at each drain the closed epoch's GUEST_RIPS map is read and emptied.

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use kvmtrace_common::{RipKey, maps};

use super::{batch::BatchBuffers, map_ref, take_map};
use crate::{
    error::Error,
    model::rips::{RipBatch, RipCount},
};

/// Distinct (thread, reason, RIP) keys per interval: a guest kernel exits from a few hundred
/// places; past this, exits count in RIPS_LOST.
pub const GUEST_RIPS_ENTRIES: u32 = 16384;

#[derive(Default)]
pub struct RipCounter {
    buffers: BatchBuffers<RipKey, u64>,
    lost_so_far: u64,
}

impl RipCounter {
    pub fn take(&mut self, ebpf: &mut Ebpf, parity: u32) -> Result<RipBatch, Error> {
        let mut batch = RipBatch::default();
        take_map(
            ebpf,
            maps::GUEST_RIPS[parity as usize],
            &mut self.buffers,
            |k: &RipKey, &exits: &u64| {
                batch.counts.push(RipCount {
                    tgid: k.tgid,
                    tid: k.tid,
                    isa: k.isa,
                    reason: k.reason,
                    rip: k.rip,
                    exits,
                })
            },
        )?;
        let lost: PerCpuArray<&MapData, u64> = map_ref(ebpf, maps::RIPS_LOST)?;
        let lost: u64 = lost
            .get(&0, 0)
            .map_err(|e| Error::bpf("reading RIPS_LOST", e))?
            .iter()
            .sum();
        batch.lost = lost - self.lost_so_far;
        self.lost_so_far = lost;
        Ok(batch)
    }
}
