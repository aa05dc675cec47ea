//! What the tracer can say besides intervals: its cost, its maps' occupancy, what is open at
//! stop; and following VMs that start later.

use aya::maps::{HashMap as BpfHashMap, MapData};
use kvmtrace_common::{
    LatencyKey, maps,
    stacks::{StackFrames, StackKey},
};

use crate::{
    error::Error,
    model::{InFlight, MapEntries},
};

use super::*;

impl Tracer {
    /// Whether exits are counted per guest RIP (`--guest-rips`).
    pub fn counts_guest_rips(&self) -> bool {
        self.rips.is_some()
    }

    /// `--than`'s threshold, when slow exits are captured.
    pub fn slow_threshold_ns(&self) -> Option<u64> {
        self.slow.as_ref().and_then(|s| s.threshold_ns)
    }

    /// The programs' runs and run time in the statistics' windows so far, with this process's
    /// CPU time.
    pub fn cost(&self) -> crate::model::cost::TracerCost {
        let secs = self.started.elapsed().as_secs_f64();
        let (programs, stats_secs) = match &self.stats.unavailable {
            Some(_) => (Vec::new(), None),
            None => {
                let (programs, stats_secs) = self
                    .stats
                    .measured(Instant::now(), || cost::program_counters(&self.ebpf));
                (programs, Some(stats_secs.min(secs)))
            }
        };
        crate::model::cost::TracerCost {
            secs,
            programs,
            stats_secs,
            collector_cpu_ns: crate::source::live::cost::process_cpu().as_nanos() as u64,
            unavailable: self.stats.unavailable.clone(),
            skipped: cost::skipped_runs(&self.ebpf),
        }
    }

    /// Adds VM `pid` to the kernel's VM filter (a tracer started with [`TraceOptions::follow`]).
    pub fn trace_pid(&mut self, pid: u32) -> Result<(), Error> {
        let mut traced: BpfHashMap<&mut MapData, u32, u32> =
            map_mut(&mut self.ebpf, maps::TRACED_TGIDS)?;
        traced
            .insert(pid, 1, 0)
            .map_err(|e| Error::bpf(format!("adding pid {pid} to the VM filter"), e))
    }

    /// Removes VM `pid` from the kernel's VM filter (it is gone), so the filter stays bounded.
    pub fn untrace_pid(&mut self, pid: u32) {
        if let Ok(mut traced) =
            map_mut::<BpfHashMap<&mut MapData, u32, u32>>(&mut self.ebpf, maps::TRACED_TGIDS)
        {
            let _ = traced.remove(&pid);
        }
    }

    /// The exits whose thread ended before their kvm_entry since the last call (counted, never
    /// timed): for a long-running consumer, which must not keep them all.
    pub fn take_ended_exits(&mut self) -> std::collections::BTreeMap<LatencyKey, u64> {
        std::mem::take(&mut self.ended_exits)
    }

    /// The capacity of THREADS and of the latency and detail pools (keys) as the kernel loaded
    /// them.
    pub fn capacity(&self) -> MapEntries {
        let max = |name: &str| match self.ebpf.map(name) {
            Some(aya::maps::Map::HashMap(m)) => m.info().map_or(0, |i| i.max_entries() as u64),
            _ => 0,
        };
        MapEntries {
            // Slot 0 is never handed out.
            threads: max(maps::THREADS).saturating_sub(1),
            latency: max(maps::LATENCY_INDEX),
            details: max(maps::DETAIL_INDEX),
            // Its one reader, `serve`, does not sample stacks.
            stacks: 0,
        }
    }

    /// Entries in THREADS and keys in the latency and detail pools now: the live traced threads
    /// and the keys in use (after the last drain, 0 and 0: nothing of a VM that came and went
    /// stays behind).
    pub fn occupancy(&self) -> Result<MapEntries, Error> {
        let threads: BpfHashMap<&MapData, u32, u32> = map_ref(&self.ebpf, maps::THREADS)?;
        let latency = self.latency_pool.keys_held(&self.ebpf)?;
        let details = self.detail_pool.keys_held(&self.ebpf)?;
        let mut stacks = 0;
        for parity in 0..2 {
            if self.stacks.is_some() {
                let c: BpfHashMap<&MapData, StackKey, u64> =
                    map_ref(&self.ebpf, maps::STACK_COUNTS[parity])?;
                let f: BpfHashMap<&MapData, u64, StackFrames> =
                    map_ref(&self.ebpf, maps::STACK_FRAMES[parity])?;
                stacks += (c.keys().count() + f.keys().count()) as u64;
            }
        }
        Ok(MapEntries {
            threads: threads.keys().count() as u64,
            latency,
            details,
            stacks,
        })
    }

    /// Exits and userspace round trips still open (no entry yet) right now, over the traced
    /// threads that are still alive (a thread that died inside KVM_RUN has nothing in flight).
    pub fn in_flight(&self) -> Result<InFlight, Error> {
        let mut open = InFlight {
            ended_with_thread: self.ended_exits.clone(),
            map_entries: Some(self.occupancy()?),
            ..Default::default()
        };
        let mut buffers = Default::default();
        for (tid, st) in self.slots.entries(&self.ebpf, &mut buffers)? {
            if st.exit_ts == 0 && st.uexit_ts == 0 {
                continue;
            }
            let alive = !self.exited.contains(&(st.tgid, tid)) && thread_alive(st.tgid, tid);
            if st.exit_ts != 0 {
                let exits = if alive {
                    &mut open.exits
                } else {
                    &mut open.ended_with_thread
                };
                *exits.entry(open_exit_key(tid, &st)).or_default() += 1;
            }
            open.round_trips += (alive && st.uexit_ts != 0) as u64;
        }
        Ok(open)
    }
}
