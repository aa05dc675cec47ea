//! `record --than` and `--flight`: the kernel streams each slow exit, and (`--flight`) a
//! thread's flight recorder after a slow exit or as a storm starts, through the SLOW_EXITS ring
//! buffer; each drain reads what is there (the buffer holds an interval's worth: past that, the
//! kernel counts them in SLOW_LOST).

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use kvmtrace_common::{
    ExitDetail, LatencyKind, maps,
    slow::{FLIGHT_STORM, FlightRing, SlowExit as RawSlowExit},
};

use super::per_cpu_growth;
use crate::{
    error::Error,
    model::slow::{FlightExit, SlowBatch, SlowExit, SlowKind, StormStart},
};

/// SLOW_EXITS' size with `--than` or `--flight` (bytes, a power of two): ~9 000 slow exits, or
/// ~600 with their flight recorders, per interval.
pub const SLOW_EXITS_BYTES: u32 = 1 << 20;
/// FLIGHT's entries with `--flight` (~1.5 KiB each): as many as THREAD_SLOTS has shared slots
/// (an LRU map: with more vCPU threads traced than that, the least recently used ring goes).
pub const FLIGHT_THREADS: u32 = 8192;

pub struct SlowReader {
    /// `--than`, when given.
    pub threshold_ns: Option<u64>,
    /// `--flight N`: history entries kept per slow exit (0: none).
    pub flight: usize,
    ring: RingBuf<MapData>,
    lost_so_far: u64,
}

impl SlowReader {
    pub fn open(
        ebpf: &mut Ebpf,
        threshold_ns: Option<u64>,
        flight: u32,
    ) -> Result<SlowReader, Error> {
        let map = ebpf.take_map(maps::SLOW_EXITS).ok_or_else(|| {
            Error::bpf(maps::SLOW_EXITS, std::io::Error::other("map not in object"))
        })?;
        let ring = RingBuf::try_from(map)
            .map_err(|e| Error::bpf(format!("opening {}", maps::SLOW_EXITS), e))?;
        Ok(SlowReader {
            threshold_ns,
            flight: flight as usize,
            ring,
            lost_so_far: 0,
        })
    }

    /// Everything the kernel has sent since the last call; `ktime_at_start` is CLOCK_MONOTONIC
    /// when the recording started.
    pub fn take(&mut self, ebpf: &Ebpf, ktime_at_start: u64) -> Result<SlowBatch, Error> {
        let mut batch = SlowBatch::default();
        while let Some(item) = self.ring.next() {
            // Two kinds of record, told apart by their size: a slow exit, and (`--flight`) a
            // flight recorder, sent just after its thread's slow exit or as a storm starts.
            if item.len() == size_of::<FlightRing>() {
                // SAFETY: the kernel wrote a whole FlightRing (checked length), plain data;
                // read_unaligned makes no assumption about the record's alignment.
                let ring: FlightRing = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                if ring.why == FLIGHT_STORM {
                    batch
                        .storm_starts
                        .push(storm_start(&ring, self.flight, ktime_at_start));
                    continue;
                }
                let exit = batch
                    .exits
                    .iter_mut()
                    .rev()
                    .find(|e| e.tid == ring.tid && e.history.is_empty());
                if let Some(exit) = exit {
                    exit.history = history(&ring, self.flight, ktime_at_start);
                }
            } else if item.len() == size_of::<RawSlowExit>() {
                // SAFETY: as above, a whole SlowExit.
                let raw: RawSlowExit = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                batch.exits.push(convert(&raw, ktime_at_start));
            }
        }
        batch.lost = per_cpu_growth(ebpf, maps::SLOW_LOST, &mut self.lost_so_far)?;
        Ok(batch)
    }
}

/// A storm start from the ring sent then: its first exit is the one that started at
/// `storm_first_ns`.
fn storm_start(ring: &FlightRing, keep: usize, ktime_at_start: u64) -> StormStart {
    let first = ring
        .in_order()
        .find(|e| e.start_ns >= ring.storm_first_ns)
        .map_or(ring.storm_first_ns, |e| e.start_ns);
    StormStart {
        at: std::time::Duration::from_nanos(first.saturating_sub(ktime_at_start)),
        tgid: ring.tgid,
        tid: ring.tid,
        history: history(ring, keep, ktime_at_start),
    }
}

/// The last `keep` entries of a thread's ring, oldest first.
fn history(ring: &FlightRing, keep: usize, ktime_at_start: u64) -> Vec<FlightExit> {
    let all: Vec<_> = ring.in_order().collect();
    all[all.len().saturating_sub(keep)..]
        .iter()
        .map(|e| FlightExit {
            at: std::time::Duration::from_nanos(e.start_ns.saturating_sub(ktime_at_start)),
            kind: kind(e.kind),
            isa: e.isa,
            reason: e.reason,
            detail: detail(&e.detail),
            total_ns: e.total_ns,
        })
        .collect()
}

fn kind(k: u32) -> SlowKind {
    if k == LatencyKind::VmmRoundTrip as u32 {
        SlowKind::VmmRoundTrip
    } else {
        SlowKind::Exit
    }
}

fn detail(d: &ExitDetail) -> Option<(u32, u32, u64)> {
    (d.kind != 0).then_some((d.kind, d.a, d.b))
}

fn convert(r: &RawSlowExit, ktime_at_start: u64) -> SlowExit {
    SlowExit {
        at: std::time::Duration::from_nanos(r.start_ns.saturating_sub(ktime_at_start)),
        tgid: r.tgid,
        tid: r.tid,
        vcpu_id: r.vcpu_id,
        kind: kind(r.kind),
        isa: r.isa,
        reason: r.reason,
        detail: detail(&r.detail),
        total_ns: r.total_ns,
        vmm_ns: r.vmm_ns,
        off_cpu_ns: r.off_cpu_ns,
        guest_rip: r.guest_rip,
        info1: r.info1,
        info2: r.info2,
        history: Vec::new(),
    }
}
