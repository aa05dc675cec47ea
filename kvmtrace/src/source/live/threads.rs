//! The kernel's per-thread states as the collector sees them: THREADS (tid -> slot) says which
//! threads are traced, THREAD_SLOTS (memory-mapped here) holds their states, FREE_SLOTS the
//! slots nobody holds. The programs claim a slot on a thread's first event; the collector seeds
//! the threads that were already running and retires the threads that are gone.

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, Stack},
};
use kvmtrace_common::{THREAD_SLOTS_LEN, ThreadState, maps};

use super::{
    batch,
    kernel::{BPF_NOEXIST, map_mut, read_map},
    pool::Mapped,
};
use crate::error::Error;

/// How many slots THREAD_SLOTS gets (slot 0 is never handed out): [`THREAD_SLOTS_LEN`], or
/// what `KVMTRACE_THREAD_SLOTS` says (a test knob: a few slots show that the slots of threads
/// that are gone are handed out again).
pub(super) fn slots_wanted() -> Result<u32, Error> {
    match std::env::var("KVMTRACE_THREAD_SLOTS") {
        Err(_) => Ok(THREAD_SLOTS_LEN),
        Ok(v) => match v.parse::<u32>() {
            Ok(n) if (2..=THREAD_SLOTS_LEN).contains(&n) => Ok(n),
            _ => Err(Error::Usage(format!(
                "KVMTRACE_THREAD_SLOTS={v:?} is not a slot count from 2 to {THREAD_SLOTS_LEN}"
            ))),
        },
    }
}

/// THREAD_SLOTS mapped into this process: reading every traced thread's state costs no syscall.
pub(super) struct ThreadSlots {
    states: Mapped<ThreadState>,
    /// Slots retired at the last drain, back on FREE_SLOTS at the next one: after that drain's
    /// epoch switch has waited out every program that could have found them before they were
    /// retired, so no late write lands in a slot another thread has claimed since.
    retired: Vec<u32>,
}

impl ThreadSlots {
    /// Maps THREAD_SLOTS and puts every slot but 0 on FREE_SLOTS, slot 1 on top (the stack
    /// hands out low slots first, so the slots in use stay together).
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<Self, Error> {
        let states = Mapped::open(ebpf, maps::THREAD_SLOTS)?;
        let mut free: Stack<&mut MapData, u32> = map_mut(ebpf, maps::FREE_SLOTS)?;
        for slot in (1..states.len()).rev() {
            free.push(slot, 0)
                .map_err(|e| Error::bpf("filling FREE_SLOTS", e))?;
        }
        Ok(ThreadSlots {
            states,
            retired: Vec::new(),
        })
    }

    /// A copy of slot `slot`'s state (the thread may be changing it: each field is as current
    /// as a map lookup's copy would be).
    pub(super) fn get(&self, slot: u32) -> Option<ThreadState> {
        self.states.get(slot)
    }

    fn set(&self, slot: u32, state: &ThreadState) {
        // Only slots no thread holds yet (or any more) are written here.
        self.states.set(slot, state)
    }

    /// Every traced thread's (tid, slot, state), from THREADS and the mapped slots.
    pub(super) fn entries(
        &self,
        ebpf: &Ebpf,
        buffers: &mut batch::BatchBuffers<u32, u32>,
    ) -> Result<Vec<(u32, ThreadState)>, Error> {
        Ok(read_map(ebpf, maps::THREADS, buffers)?
            .into_iter()
            .filter_map(|(tid, slot)| Some((tid, self.get(slot)?)))
            .filter(|(tid, st)| st.tid == *tid)
            .collect())
    }

    /// Gives thread `tid` the state `state` unless its own event gave it one first (then that
    /// one stays: it is newer). False when every slot is taken.
    pub(super) fn seed(
        &self,
        ebpf: &mut Ebpf,
        tid: u32,
        state: &ThreadState,
    ) -> Result<bool, Error> {
        let mut free: Stack<&mut MapData, u32> = map_mut(ebpf, maps::FREE_SLOTS)?;
        let Ok(slot) = free.pop(0) else {
            return Ok(false);
        };
        self.set(slot, &ThreadState { tid, ..*state });
        let mut threads: BpfHashMap<&mut MapData, u32, u32> = map_mut(ebpf, maps::THREADS)?;
        if threads.insert(tid, slot, BPF_NOEXIST).is_err() {
            // The thread's own event claimed a slot first.
            self.set(slot, &ThreadState::default());
            let mut free: Stack<&mut MapData, u32> = map_mut(ebpf, maps::FREE_SLOTS)?;
            free.push(slot, 0)
                .map_err(|e| Error::bpf("returning a slot to FREE_SLOTS", e))?;
            return Ok(true);
        }
        // For sched_switch, which finds threads only through TID_SLOTS: a thread silent since
        // before the attach has no event of its own to set it. Should the thread's first event
        // race this, it writes the same slot (the one THREADS gives it).
        let mut tid_slots: Array<&mut MapData, u16> = map_mut(ebpf, maps::TID_SLOTS)?;
        if tid < tid_slots.len() {
            tid_slots
                .set(tid, slot as u16, 0)
                .map_err(|e| Error::bpf("setting TID_SLOTS", e))?;
        }
        Ok(true)
    }

    /// Retires the slots of the threads `gone` (tgid, tid): out of THREADS and cleared now,
    /// back on FREE_SLOTS at the next call (see `retired`), which every drain makes. A tid that
    /// another process's thread holds by now is left to it.
    pub(super) fn retire(&mut self, ebpf: &mut Ebpf, gone: &[(u32, u32)]) -> Result<(), Error> {
        let mut free: Stack<&mut MapData, u32> = map_mut(ebpf, maps::FREE_SLOTS)?;
        for slot in self.retired.drain(..) {
            free.push(slot, 0)
                .map_err(|e| Error::bpf("returning a slot to FREE_SLOTS", e))?;
        }
        let mut threads: BpfHashMap<&mut MapData, u32, u32> = map_mut(ebpf, maps::THREADS)?;
        for &(tgid, tid) in gone {
            let Ok(slot) = threads.get(&tid, 0) else {
                continue;
            };
            let held = self
                .get(slot)
                .is_some_and(|st| st.tgid == tgid && st.tid == tid);
            // A slot still registered must not be handed out again.
            if held && threads.remove(&tid).is_ok() {
                self.set(slot, &ThreadState::default());
                self.retired.push(slot);
            }
        }
        Ok(())
    }
}
