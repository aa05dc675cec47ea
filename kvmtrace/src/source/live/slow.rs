//! `record --than`: the kernel streams each slow exit through the SLOW_EXITS ring buffer; each
//! drain reads what is there (the buffer holds an interval's worth: past that, the kernel counts
//! them in SLOW_LOST).

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};
use kvmtrace_common::{LatencyKind, maps, slow::SlowExit as RawSlowExit};

use super::map_ref;
use crate::{
    error::Error,
    model::slow::{SlowBatch, SlowExit, SlowKind},
};

/// SLOW_EXITS' size with `--than` (bytes, a power of two): ~9 000 records per interval.
pub const SLOW_EXITS_BYTES: u32 = 1 << 20;

pub struct SlowReader {
    pub threshold_ns: u64,
    ring: RingBuf<MapData>,
    lost_so_far: u64,
}

impl SlowReader {
    pub fn open(ebpf: &mut Ebpf, threshold_ns: u64) -> Result<SlowReader, Error> {
        let map = ebpf.take_map(maps::SLOW_EXITS).ok_or_else(|| {
            Error::bpf(maps::SLOW_EXITS, std::io::Error::other("map not in object"))
        })?;
        let ring = RingBuf::try_from(map)
            .map_err(|e| Error::bpf(format!("opening {}", maps::SLOW_EXITS), e))?;
        Ok(SlowReader {
            threshold_ns,
            ring,
            lost_so_far: 0,
        })
    }

    /// Everything the kernel has sent since the last call; `ktime_at_start` is CLOCK_MONOTONIC
    /// when the recording started.
    pub fn take(&mut self, ebpf: &Ebpf, ktime_at_start: u64) -> Result<SlowBatch, Error> {
        let mut batch = SlowBatch::default();
        while let Some(item) = self.ring.next() {
            if item.len() < size_of::<RawSlowExit>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole SlowExit (checked length), a plain-data type;
            // read_unaligned makes no assumption about the record's alignment.
            let raw: RawSlowExit = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            batch.exits.push(convert(&raw, ktime_at_start));
        }
        let lost: PerCpuArray<&MapData, u64> = map_ref(ebpf, maps::SLOW_LOST)?;
        let lost: u64 = lost
            .get(&0, 0)
            .map_err(|e| Error::bpf("reading SLOW_LOST", e))?
            .iter()
            .sum();
        batch.lost = lost - self.lost_so_far;
        self.lost_so_far = lost;
        Ok(batch)
    }
}

fn convert(r: &RawSlowExit, ktime_at_start: u64) -> SlowExit {
    let kind = if r.kind == LatencyKind::VmmRoundTrip as u32 {
        SlowKind::VmmRoundTrip
    } else {
        SlowKind::Exit
    };
    SlowExit {
        at: std::time::Duration::from_nanos(r.start_ns.saturating_sub(ktime_at_start)),
        tgid: r.tgid,
        tid: r.tid,
        vcpu_id: r.vcpu_id,
        kind,
        isa: r.isa,
        reason: r.reason,
        detail: (r.detail.kind != 0).then_some((r.detail.kind, r.detail.a, r.detail.b)),
        total_ns: r.total_ns,
        vmm_ns: r.vmm_ns,
        off_cpu_ns: r.off_cpu_ns,
        guest_rip: r.guest_rip,
        info1: r.info1,
        info2: r.info2,
    }
}
