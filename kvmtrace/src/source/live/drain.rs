//! Each interval: switch the epoch, wait out the programs still writing the old one, read and
//! delete it, and settle the threads that ended.

use std::collections::HashSet;

use aya::maps::{Array, MapData, PerCpuArray};
use kvmtrace_common::{Counter, DetailKey, DetailKind, LatencyKey, detail_slot, maps};

use crate::{
    error::Error,
    model::{Interval, LatencyDelta},
};

use super::*;

impl Tracer {
    /// Sets CONTROL to `seq` and waits until no program can still be using the previous value.
    pub(super) fn switch_epoch(&mut self, seq: u32) -> Result<u32, Error> {
        let mut control: Array<&mut MapData, u32> = map_mut(&mut self.ebpf, maps::CONTROL)?;
        control
            .set(0, seq, 0)
            .map_err(|e| Error::bpf("setting CONTROL", e))?;
        wait_for_programs();
        Ok(std::mem::replace(&mut self.seq, seq))
    }

    /// Closes the current epoch (opening the next one unless counting was closed) and returns
    /// what happened in it.
    pub fn drain(&mut self) -> Result<Interval, Error> {
        let at = self.started.elapsed();
        let next = match self.seq {
            0 => 0,
            // Wrap to 2, not 1: the parity must alternate.
            u32::MAX => 2,
            s => s + 1,
        };
        // After close, the last epoch is still to be read: its parity is the closed seq's.
        let closed = if self.seq == 0 {
            self.closed_seq
        } else {
            self.switch_epoch(next)?
        };
        let parity = closed & 1;
        let mut iv = Interval {
            at,
            ..Default::default()
        };
        iv.latency = self.take_latency(parity)?;
        iv.details = self.take_details(parity)?;
        if let Some(sampler) = &mut self.stacks {
            iv.stacks = sampler.take(&mut self.ebpf, parity)?;
        }
        if let Some(rips) = &mut self.rips {
            iv.guest_rips = rips.take(&mut self.ebpf, parity)?;
        }
        if let Some(slow) = &mut self.slow {
            iv.slow = slow.take(&self.ebpf, self.started_ktime)?;
        }
        let counters: PerCpuArray<&MapData, u64> = map_ref(&self.ebpf, maps::COUNTERS)?;
        for c in Counter::ALL {
            let per_cpu = counters
                .get(&(c as u32), 0)
                .map_err(|e| Error::bpf("reading COUNTERS", e))?;
            iv.counters[c as usize] = per_cpu.iter().sum();
        }
        self.warn_losses(&iv.counters);
        self.read_threads(closed, &mut iv)?;
        // The keys of threads found gone go now, not after an idle epoch.
        let open_parity = self.seq & 1;
        self.latency_pool
            .retire(&mut self.ebpf, &self.exited, open_parity)?;
        self.detail_pool
            .retire(&mut self.ebpf, &self.exited, open_parity)?;
        // Detail events are counted per thread only (no per-event counter in the kernel).
        iv.counters[Counter::DetailsSeen as usize] = self.details_seen;
        let ebpf = &self.ebpf;
        self.stats
            .tick(std::time::Instant::now(), || cost::program_counters(ebpf));
        Ok(iv)
    }

    /// Reads and zeroes the latency pool's values of epoch `parity`.
    pub(super) fn take_latency(
        &mut self,
        parity: u32,
    ) -> Result<Vec<(LatencyKey, LatencyDelta)>, Error> {
        let mut out = Vec::new();
        let retire_all = self.seq == 0;
        self.latency_pool
            .take(&mut self.ebpf, parity, retire_all, |k, stats| {
                if let Some(delta) = latency_delta(stats) {
                    out.push((k, delta));
                }
            })?;
        Ok(out)
    }

    /// Reads and zeroes the detail pool's counts of epoch `parity`.
    pub(super) fn take_details(&mut self, parity: u32) -> Result<Vec<(DetailKey, u64)>, Error> {
        let mut out = Vec::new();
        let retire_all = self.seq == 0;
        self.detail_pool
            .take(&mut self.ebpf, parity, retire_all, |k, &n| out.push((k, n)))?;
        Ok(out)
    }

    /// Every thread's CPU accounting as of now, the keys still pending in its state and the
    /// "other keys" rows of epoch `closed`; threads that are gone are read one more time, then
    /// deleted.
    pub(super) fn read_threads(&mut self, closed: u32, iv: &mut Interval) -> Result<(), Error> {
        let parity = closed & 1;
        let entries = self.slots.entries(&self.ebpf, &mut self.thread_buffers)?;
        add_pending(&entries, closed, &mut iv.details);
        let now = match self.closed_ktime {
            0 => ktime_ns(),
            closed => closed,
        };
        let mut keyed: foldhash::HashMap<(u32, u32, u32), u64> = Default::default();
        for (k, n) in &iv.details {
            *keyed.entry((k.tgid, k.tid, k.kind)).or_default() += n;
        }
        let mut live = HashSet::new();
        let mut gone = Vec::new();
        for (tid, st) in entries {
            let id = (st.tgid, tid);
            live.insert(id);
            let prev = self.prev_totals.entry(id).or_default();
            for kind in DetailKind::ALL {
                let slot = detail_slot(parity, kind);
                // The kernel adds a key's events to the total when they leave the pending keys;
                // those still pending in the closed epoch are counted here.
                let now_total = st.detail_events(parity)[kind as usize - 1];
                let total = now_total.saturating_sub(prev[slot]) + st.pending_events(closed, kind);
                prev[slot] = now_total;
                self.details_seen += total;
                let with_key = keyed.get(&(st.tgid, tid, kind as u32)).copied();
                let other = total.saturating_sub(with_key.unwrap_or(0));
                if other > 0 {
                    iv.details
                        .push((DetailKey::other(st.tgid, tid, kind), other));
                }
            }
            if self.exited.contains(&id) {
                // Read once more above (the events of the epoch it died in), now deleted.
                gone.push(id);
                continue;
            }
            if !thread_alive(st.tgid, tid) {
                // Frozen at its death: its last CPU accounting. An exit it left open ended with
                // it. Once counting is closed no event can follow, so it goes at once.
                if st.exit_ts != 0 {
                    *self.ended_exits.entry(open_exit_key(tid, &st)).or_default() += 1;
                }
                iv.threads.push(thread_cpu(tid, &st, ended_at(&st, now)));
                if self.seq == 0 {
                    gone.push(id);
                } else {
                    self.exited.insert(id);
                }
                continue;
            }
            iv.threads.push(thread_cpu(tid, &st, now));
        }
        iv.threads.sort_by_key(|t| t.tid);
        self.prev_totals.retain(|id, _| live.contains(id));
        self.exited.retain(|id| live.contains(id));
        self.forget(&gone)
    }

    /// Retires the slots of threads that are gone (and frees those retired at the last drain).
    pub(super) fn forget(&mut self, gone: &[(u32, u32)]) -> Result<(), Error> {
        self.slots.retire(&mut self.ebpf, gone)?;
        for id in gone {
            self.exited.remove(id);
            self.prev_totals.remove(id);
        }
        Ok(())
    }

    /// Reports each kind of loss once, when it first happens (never per event).
    pub(super) fn warn_losses(&mut self, counters: &[u64; Counter::COUNT as usize]) {
        for (c, what) in [
            (
                Counter::DetailMapFull,
                "the detail map is full: further keys are counted in \"other keys\" rows (raise --max-detail-keys)",
            ),
            (
                Counter::LatencyMapFull,
                "the latency map is full: some exit latencies are lost (raise --max-keys)",
            ),
            (
                Counter::ThreadMapFull,
                "the thread map is full: some vCPU threads are not traced",
            ),
        ] {
            if counters[c as usize] > 0 && self.warned.insert(c) {
                log::warn!("{what}; the report's loss line has the counts");
            }
        }
    }
}
