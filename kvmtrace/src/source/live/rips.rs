//! `record --guest-rips`: at each drain the closed epoch's GUEST_RIPS map is read and emptied.

use aya::Ebpf;
use kvmtrace_common::{RipKey, maps};

use super::{batch::BatchBuffers, per_cpu_growth, take_map};
use crate::{
    error::Error,
    model::rips::{RipBatch, RipCount},
};

/// Distinct (thread, reason, detail, RIP) keys per interval: a guest kernel exits from a few hundred
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
                    detail: (k.detail.kind != 0).then_some((k.detail.kind, k.detail.a, k.detail.b)),
                })
            },
        )?;
        batch.lost = per_cpu_growth(ebpf, maps::RIPS_LOST, &mut self.lost_so_far)?;
        Ok(batch)
    }
}
