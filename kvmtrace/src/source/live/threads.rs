//! The kernel's per-thread states as the collector sees them: THREADS (tid -> slot) says which
//! threads are traced, THREAD_SLOTS (memory-mapped here) holds their states, FREE_SLOTS the
//! slots nobody holds. The programs claim a slot on a thread's first event; the collector seeds
//! the threads that were already running and retires the threads that are gone.

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, Stack},
};
use kvmtrace_common::{HOME_SLOTS, THREAD_SLOTS_LEN, ThreadState, home_number, maps};

use super::{
    batch,
    kernel::{BPF_NOEXIST, map_mut, read_map},
    pool::Mapped,
};
use crate::error::Error;

/// How THREAD_SLOTS is used (see `Config::home_slots`): its layout is fixed ([`THREAD_SLOTS_LEN`]
/// shared slots, then [`HOME_SLOTS`] home slots), the test knobs use fewer.
#[derive(Clone, Copy, Debug)]
pub(super) struct SlotCounts {
    /// Shared slots handed out, slot 0 included (never handed out): [`THREAD_SLOTS_LEN`], or
    /// what `KVMTRACE_THREAD_SLOTS` says.
    pub shared: u32,
    /// Home slots: [`HOME_SLOTS`], or what `KVMTRACE_HOME_SLOTS` says (0 or a power of two).
    pub home: u32,
}

/// THREAD_SLOTS' entries (and THREADS' capacity).
pub(super) const SLOTS_TOTAL: u32 = THREAD_SLOTS_LEN + HOME_SLOTS;

/// The slot counts, from the test knobs `KVMTRACE_THREAD_SLOTS` (a few shared slots show that
/// the slots of threads that are gone are handed out again) and `KVMTRACE_HOME_SLOTS` (a few
/// home slots make threads share homes).
pub(super) fn slots_wanted() -> Result<SlotCounts, Error> {
    let knob = |name: &str, default: u32, ok: &dyn Fn(u32) -> bool, what: &str| match std::env::var(
        name,
    ) {
        Err(_) => Ok(default),
        Ok(v) => match v.parse::<u32>() {
            Ok(n) if ok(n) => Ok(n),
            _ => Err(Error::Usage(format!("{name}={v:?} is not {what}"))),
        },
    };
    Ok(SlotCounts {
        shared: knob(
            "KVMTRACE_THREAD_SLOTS",
            THREAD_SLOTS_LEN,
            &|n| (2..=THREAD_SLOTS_LEN).contains(&n),
            &format!("a slot count from 2 to {THREAD_SLOTS_LEN}"),
        )?,
        home: knob(
            "KVMTRACE_HOME_SLOTS",
            HOME_SLOTS,
            &|n| n == 0 || (n.is_power_of_two() && n <= HOME_SLOTS),
            &format!("0 or a power of two up to {HOME_SLOTS}"),
        )?,
    })
}

/// THREAD_SLOTS mapped into this process: reading every traced thread's state costs no syscall.
pub(super) struct ThreadSlots {
    states: Mapped<ThreadState>,
    counts: SlotCounts,
    /// Slots retired at the last drain, free again at the next one (a shared slot back on
    /// FREE_SLOTS, a home slot out of HOME_OWNERS): after that drain's epoch switch has waited
    /// out every program that could have found them before they were retired, so no late write
    /// lands in a slot another thread has claimed since.
    retired: Vec<u32>,
}

impl ThreadSlots {
    /// Maps THREAD_SLOTS and puts every shared slot but 0 on FREE_SLOTS, slot 1 on top (the
    /// stack hands out low slots first, so the slots in use stay together).
    pub(super) fn open(ebpf: &mut Ebpf, counts: SlotCounts) -> Result<Self, Error> {
        let states = Mapped::open(ebpf, maps::THREAD_SLOTS)?;
        let mut free: Stack<&mut MapData, u32> = map_mut(ebpf, maps::FREE_SLOTS)?;
        for slot in (1..counts.shared).rev() {
            free.push(slot, 0)
                .map_err(|e| Error::bpf("filling FREE_SLOTS", e))?;
        }
        Ok(ThreadSlots {
            states,
            counts,
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

    /// Slot `slot`'s number among the home slots, if it is one.
    fn home_number(&self, slot: u32) -> Option<u32> {
        slot.checked_sub(THREAD_SLOTS_LEN)
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

    /// Takes a slot for thread `tid`: its home slot if nobody holds it, else a shared one.
    fn take(&self, ebpf: &mut Ebpf, tid: u32) -> Result<Option<u32>, Error> {
        if self.counts.home != 0 {
            let number = home_number(tid, self.counts.home);
            let mut owners: BpfHashMap<&mut MapData, u32, u32> = map_mut(ebpf, maps::HOME_OWNERS)?;
            if owners.insert(number, tid, BPF_NOEXIST).is_ok() {
                return Ok(Some(THREAD_SLOTS_LEN + number));
            }
        }
        let mut free: Stack<&mut MapData, u32> = map_mut(ebpf, maps::FREE_SLOTS)?;
        Ok(free.pop(0).ok())
    }

    /// Frees slot `slot` (no thread holds it, and no program can still find it held).
    fn free(&self, ebpf: &mut Ebpf, slot: u32) -> Result<(), Error> {
        match self.home_number(slot) {
            Some(number) => {
                let mut owners: BpfHashMap<&mut MapData, u32, u32> =
                    map_mut(ebpf, maps::HOME_OWNERS)?;
                // Absent only if never inserted; nothing to free then.
                let _ = owners.remove(&number);
            }
            None => {
                let mut free: Stack<&mut MapData, u32> = map_mut(ebpf, maps::FREE_SLOTS)?;
                free.push(slot, 0)
                    .map_err(|e| Error::bpf("returning a slot to FREE_SLOTS", e))?;
            }
        }
        Ok(())
    }

    /// Gives thread `tid` the state `state_now()` unless its own event gave it one first (then
    /// that one stays: it is newer). False when every slot is taken.
    ///
    /// The state is read from `state_now` just before it is written, and TID_SLOTS points at the
    /// slot before that (the slot's old state, tid 0, is nobody's): the state becomes visible to
    /// sched_switch and to the thread's own events at once. Until then the thread's switches go
    /// unseen, so its state must not claim an earlier instant (on a busy host the collector
    /// waits for a CPU between any two of these steps; a thread waiting for a CPU as of an
    /// earlier timestamp, switched in meanwhile, read as on a CPU all along).
    pub(super) fn seed(
        &self,
        ebpf: &mut Ebpf,
        tid: u32,
        state_now: impl FnOnce() -> ThreadState,
    ) -> Result<bool, Error> {
        let Some(slot) = self.take(ebpf, tid)? else {
            return Ok(false);
        };
        let threads: BpfHashMap<&mut MapData, u32, u32> = map_mut(ebpf, maps::THREADS)?;
        if threads.get(&tid, 0).is_ok() {
            self.free(ebpf, slot)?;
            return Ok(true);
        }
        let mut tid_slots: Array<&mut MapData, u16> = map_mut(ebpf, maps::TID_SLOTS)?;
        let indexed = tid < tid_slots.len();
        if indexed {
            tid_slots
                .set(tid, slot as u16, 0)
                .map_err(|e| Error::bpf("setting TID_SLOTS", e))?;
        }
        self.set(slot, &ThreadState { tid, ..state_now() });
        let mut threads: BpfHashMap<&mut MapData, u32, u32> = map_mut(ebpf, maps::THREADS)?;
        if threads.insert(tid, slot, BPF_NOEXIST).is_err() {
            // The thread's own event claimed a slot first: TID_SLOTS gets that one back.
            let own = threads.get(&tid, 0).ok();
            self.set(slot, &ThreadState::default());
            if let (true, Some(own)) = (indexed, own) {
                let mut tid_slots: Array<&mut MapData, u16> = map_mut(ebpf, maps::TID_SLOTS)?;
                tid_slots
                    .set(tid, own as u16, 0)
                    .map_err(|e| Error::bpf("setting TID_SLOTS", e))?;
            }
            self.free(ebpf, slot)?;
        }
        Ok(true)
    }

    /// Retires the slots of the threads `gone` (tgid, tid): out of THREADS and cleared now,
    /// free again at the next call (see `retired`), which every drain makes. A tid that another
    /// process's thread holds by now is left to it.
    pub(super) fn retire(&mut self, ebpf: &mut Ebpf, gone: &[(u32, u32)]) -> Result<(), Error> {
        for slot in std::mem::take(&mut self.retired) {
            self.free(ebpf, slot)?;
        }
        let mut threads: BpfHashMap<&mut MapData, u32, u32> = map_mut(ebpf, maps::THREADS)?;
        for &(tgid, tid) in gone {
            let Ok(slot) = threads.get(&tid, 0) else {
                continue;
            };
            let held = self.get(slot).is_some_and(|st| st.is(tgid, tid));
            // A slot still registered must not be handed out again.
            if held && threads.remove(&tid).is_ok() {
                self.set(slot, &ThreadState::default());
                self.retired.push(slot);
            }
        }
        Ok(())
    }
}
