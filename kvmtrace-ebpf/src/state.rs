//! Maps, the load-time configuration and the helpers every probe uses: the VM filter (checked
//! first, so untraced processes cost one map lookup), the epoch gate, counters, and map-entry
//! creation.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf, Stack},
    programs::TracePointContext,
};
use kvmtrace_common::{
    CachedIndex, Config, Counter, DetailKey, DetailKind, ExitDetail, FIELD_ABSENT, HOME_SLOTS,
    INLINE_TGIDS, LatencyKey, LatencyStats, NewThread, PendingDetail, Pool, THREAD_SLOTS_LEN,
    THREAD_UNRESOLVED, ThreadState, home_number,
};

/// Set by the collector with `override_global` before load.
#[unsafe(no_mangle)]
pub(crate) static CONFIG: Config = Config::UNSET;

#[map]
pub static TRACED_TGIDS: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);
/// Per-thread state lives in THREAD_SLOTS, an array, so the hot path is array loads the
/// verifier inlines instead of a hash lookup (about half of a detail event's cost): one, the
/// thread's home slot (`Config::home_slots`), or two for a thread whose home another holds
/// (TID_SLOTS[tid], then its shared slot). THREADS (tid -> slot) is the registry: a thread's
/// first event, or the collector's seed, claims a slot by inserting it there (BPF_NOEXIST:
/// whichever comes second takes the first's slot), and the collector lists the traced threads
/// from it. Free shared slots wait in FREE_SLOTS, a stack, so the ones in use stay together.
#[map]
pub static THREADS: HashMap<u32, u32> = HashMap::with_max_entries(THREAD_SLOTS_LEN + HOME_SLOTS, 0);
/// THREAD_SLOTS_LEN shared slots, then HOME_SLOTS home slots (sized by the collector). Slot 0
/// is never handed out: TID_SLOTS holds 0 for "no slot". Memory-mappable, so the collector
/// reads and seeds the states without a syscall per thread.
#[map]
pub static THREAD_SLOTS: Array<ThreadState> =
    Array::with_max_entries(THREAD_SLOTS_LEN, BPF_F_MMAPABLE);
/// Each thread as it claims a slot ([`NewThread`]), so the collector reads the VM's and the
/// thread's names from /proc at once, while they still exist (a VM that lived less than an
/// interval was named only "pid N", its vCPUs "tid N"). Written on the slow path only.
#[map]
pub static NEW_THREADS: RingBuf = RingBuf::with_byte_size(16 * 1024, 0);
#[map]
pub static FREE_SLOTS: Stack<u32> = Stack::with_max_entries(THREAD_SLOTS_LEN, 0);
/// Home slot number -> the tid holding it (see `Config::home_slots`). Sized by the collector.
#[map]
pub static HOME_OWNERS: HashMap<u32, u32> = HashMap::with_max_entries(1, 0);
/// tid -> its slot, for tids below [`TID_SLOTS_LEN`] (above, every event asks THREADS). Only the
/// thread itself writes its entry, so no atomics are needed; a stale entry (the tid reused, the
/// slot retired) fails the slot's own tid/tgid check and the event takes the THREADS path.
#[map]
pub static TID_SLOTS: Array<u16> = Array::with_max_entries(TID_SLOTS_LEN, 0);
pub const TID_SLOTS_LEN: u32 = 1 << 20;
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The epoch (kvmtrace_common::maps::CONTROL), a global in a section of its own, which the
/// loader makes a one-element array map the collector writes. Not an array map of its own: a
/// global's address is in the instruction, so reading it is one load, where an array lookup
/// stores the key on the stack, reloads it, checks the bounds and the pointer.
#[unsafe(link_section = ".data.control")]
#[unsafe(no_mangle)]
static mut EPOCH: u32 = 0;
/// The latency and detail pools (kvmtrace_common::Pool): INDEX gives a key its index, the
/// value arrays come in two, the even and the odd epochs'. Each event's code picks one by the
/// open epoch's parity on its own branch, so every lookup call site sees a single map and the
/// verifier inlines the array lookups.
#[map]
pub static LATENCY_INDEX: HashMap<LatencyKey, u32> = HashMap::with_max_entries(4096, 0);
#[map]
pub static LATENCY_KEYS: Array<LatencyKey> = Array::with_max_entries(4096, BPF_F_MMAPABLE);
#[map]
pub static LATENCY_EVEN: Array<LatencyStats> = Array::with_max_entries(4096, BPF_F_MMAPABLE);
#[map]
pub static LATENCY_ODD: Array<LatencyStats> = Array::with_max_entries(4096, BPF_F_MMAPABLE);
#[map]
pub static LATENCY_FREE: Stack<u32> = Stack::with_max_entries(4096, 0);
#[map]
pub static DETAIL_INDEX: HashMap<DetailKey, u32> = HashMap::with_max_entries(8192, 0);
#[map]
pub static DETAIL_KEYS: Array<DetailKey> = Array::with_max_entries(8192, BPF_F_MMAPABLE);
#[map]
pub static DETAILS_EVEN: Array<u64> = Array::with_max_entries(8192, BPF_F_MMAPABLE);
#[map]
pub static DETAILS_ODD: Array<u64> = Array::with_max_entries(8192, BPF_F_MMAPABLE);
#[map]
pub static DETAIL_FREE: Stack<u32> = Stack::with_max_entries(8192, 0);
#[map]
pub static POOL_HIGH: PerCpuArray<u32> = PerCpuArray::with_max_entries(2, 0);
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

pub(crate) const BPF_NOEXIST: u64 = 1;

/// One field of the load-time configuration. Each field is its own volatile load: a volatile
/// read of the whole struct copied all 32 fields to the stack in every program (42 of the ~135
/// instructions of kvm_cpuid's hot path).
macro_rules! conf {
    ($field:ident) => {
        // SAFETY: CONFIG is a plain global in .rodata; the volatile read keeps the compiler from
        // folding in the compiled-in default instead of the value set at load time.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::state::CONFIG.$field)) }
    };
}
pub(crate) use conf;

/// The current task as (tgid, tid).
#[inline(always)]
pub fn current() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Is `tgid` a process we trace? The first thing every probe asks.
#[inline(always)]
pub fn traced(tgid: u32) -> bool {
    if tgid == conf!(self_tgid) {
        return false;
    }
    if conf!(filter_tgids) == 0 {
        return true;
    }
    let n = conf!(n_tgids) as usize;
    if n == 0 {
        return TRACED_TGIDS.get_ptr(tgid).is_some();
    }
    // The verifier knows CONFIG's values (a frozen .rodata map), so this loop is short.
    (0..INLINE_TGIDS.min(n)).any(|i| {
        // SAFETY: as in conf!; i < INLINE_TGIDS.
        tgid == unsafe { core::ptr::read_volatile(core::ptr::addr_of!(CONFIG.tgids[i])) }
    })
}

#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot; programs on one CPU do not preempt each other.
        unsafe { *slot += 1 };
    }
}

/// The state of traced thread `tid` if it has one, for the programs that only read or update
/// states (sched_switch, the stack sampler): the host's other threads cost one array load.
#[inline(always)]
pub fn slot_of(tid: u32) -> Option<*mut ThreadState> {
    let slot = if tid < TID_SLOTS_LEN {
        u32::from(*TID_SLOTS.get(tid)?)
    } else {
        // SAFETY: a THREADS value is a plain u32.
        unsafe { *THREADS.get_ptr(tid)? }
    };
    // Slot 0 is "none": tested before the state's lookup, which the compiler does not move
    // past the test (written as one condition after it, every host switch paid two lookups).
    if slot == 0 {
        return None;
    }
    let state = THREAD_SLOTS.get_ptr_mut(slot)?;
    // SAFETY: a THREAD_SLOTS element; only its tid field is read here.
    (unsafe { (*state).tid } == tid).then_some(state)
}

/// Reads a tracepoint field of type T at `offset`, or 0 when this kernel lacks the field.
///
/// `usual` is the field's offset on the kernels kvmtrace is tested on ([`USUAL_OFFSETS`], a
/// compile-time constant): where `offset` equals it, the field is a direct load from the record,
/// whose offset is in the instruction as the verifier requires of context loads. Elsewhere it goes
/// through bpf_probe_read_kernel (the verifier rejects context loads at computed offsets: the
/// offsets are known only at load time). The verifier knows CONFIG's values, so each program
/// keeps only one of the two paths.
#[inline(always)]
pub fn field<T: Default + Copy>(ctx: &TracePointContext, offset: u32, usual: u32) -> T {
    if offset == usual && usual != FIELD_ABSENT {
        // SAFETY: `usual` is the field's offset in this kernel's record (checked just above
        // against the format file's), a constant, and T is the field's size (checked in user
        // space); tracepoint records are 8-byte aligned and the fields naturally aligned.
        return unsafe {
            core::ptr::read((ctx.as_ptr() as *const u8).add(usual as usize) as *const T)
        };
    }
    if offset == FIELD_ABSENT {
        return T::default();
    }
    // SAFETY: the offset comes from this kernel's format file for this tracepoint, and the read
    // goes through bpf_probe_read_kernel, which fails cleanly instead of faulting.
    unsafe { ctx.read_at::<T>(offset as usize) }.unwrap_or_default()
}

/// The current thread's state if its VM is traced: `Some(Some(state))`, created on its first
/// event after attach (threads already running when tracing started were seeded by the
/// collector; a tid reused by another process starts fresh), `Some(None)` when every slot is
/// taken, None when the VM is not traced. A thread holding a slot is traced by construction (a
/// slot is claimed only after the VM filter said yes, or seeded for a traced VM), so the hot path
/// is the home slot's load and its own tid/tgid check (else TID_SLOTS' and the shared slot's);
/// the filter is asked only when a thread has no slot (about 15 instructions fewer per event
/// with `-p`).
#[inline(always)]
pub fn traced_state(tgid: u32, tid: u32) -> Option<Option<*mut ThreadState>> {
    if let Some(p) = home_slot(tid).and_then(|home| held(home, tgid, tid)) {
        return Some(Some(p));
    }
    if tid < TID_SLOTS_LEN
        && let Some(&slot) = TID_SLOTS.get(tid)
        && slot != 0
        && let Some(p) = held(u32::from(slot), tgid, tid)
    {
        return Some(Some(p));
    }
    if !traced(tgid) {
        return None;
    }
    Some(claim_state(tgid, tid))
}

/// Slot `slot`'s state if thread (tgid, tid) holds it.
#[inline(always)]
fn held(slot: u32, tgid: u32, tid: u32) -> Option<*mut ThreadState> {
    let p = THREAD_SLOTS.get_ptr_mut(slot)?;
    // SAFETY: a THREAD_SLOTS element; only its own thread's events write a claimed slot.
    unsafe { &*p }.is(tgid, tid).then_some(p)
}

/// Thread `tid`'s home slot, if home slots are in use (see `Config::home_slots`).
///
/// With the usual count, the slot is computed from constants only (CONFIG's count is only
/// tested, a branch the CPU predicts; the verifier drops the tests that cannot pass), so the
/// state's load does not wait for CONFIG's (another cold page after a trip through the VMM's
/// user space).
#[inline(always)]
fn home_slot(tid: u32) -> Option<u32> {
    let count: u32 = conf!(home_slots);
    if count == HOME_SLOTS {
        return Some(THREAD_SLOTS_LEN + home_number(tid, HOME_SLOTS));
    }
    // Tests only (KVMTRACE_HOME_SLOTS).
    (count != 0).then(|| THREAD_SLOTS_LEN + home_number(tid, count))
}

/// The slow path of [`traced_state`]: the thread's first event, a seeded thread's first event
/// (its slot is in THREADS, not yet in TID_SLOTS), or a tid reused since its slot was set.
#[inline(always)]
fn claim_state(tgid: u32, tid: u32) -> Option<*mut ThreadState> {
    // SAFETY (both THREADS reads below): a THREADS value is a plain u32.
    let slot = match THREADS.get_ptr(tid) {
        Some(slot) => unsafe { *slot },
        None => {
            let Some(free) = claim_home(tid).or_else(|| match FREE_SLOTS.pop() {
                Ok(Some(free)) => Some(free),
                _ => None,
            }) else {
                bump(Counter::ThreadMapFull);
                return None;
            };
            let p = THREAD_SLOTS.get_ptr_mut(free)?;
            // SAFETY: a free slot: nobody else holds it until THREADS says whose it is.
            unsafe { reset_state(p, tgid, tid) };
            if THREADS.insert(tid, free, BPF_NOEXIST).is_err() {
                // The collector seeded this thread a moment ago: its slot wins.
                release(free, tid);
                unsafe { *THREADS.get_ptr(tid)? }
            } else {
                // Dropped when the ring is full (a burst of new threads): those are named at
                // the next drain.
                let new = NewThread {
                    tgid,
                    tid,
                    comm: bpf_get_current_comm().unwrap_or_default(),
                };
                let _ = NEW_THREADS.output::<NewThread>(new, 0);
                free
            }
        }
    };
    let p = THREAD_SLOTS.get_ptr_mut(slot)?;
    // SAFETY: the slot THREADS gives this tid; only this thread's events write it.
    let state = unsafe { &mut *p };
    if !state.is(tgid, tid) {
        // SAFETY: as above.
        unsafe { reset_state(p, tgid, tid) };
    }
    if let Some(entry) = TID_SLOTS.get_ptr_mut(tid) {
        // SAFETY: an element of a map value array; only this thread writes its own entry.
        unsafe { *entry = slot as u16 };
    }
    Some(p)
}

/// Thread `tid`'s home slot if it is free (now held by `tid` in HOME_OWNERS).
#[inline(always)]
fn claim_home(tid: u32) -> Option<u32> {
    let home = home_slot(tid)?;
    let number = home - THREAD_SLOTS_LEN;
    HOME_OWNERS
        .insert(number, tid, BPF_NOEXIST)
        .is_ok()
        .then_some(home)
}

/// Gives back slot `slot`, which `tid` claimed but did not get registered with: a home slot
/// leaves HOME_OWNERS (its state forgets the tid first, so no event finds it), a shared one
/// goes back on FREE_SLOTS.
#[inline(always)]
fn release(slot: u32, tid: u32) {
    if let Some(p) = THREAD_SLOTS.get_ptr_mut(slot) {
        // SAFETY: the slot is this thread's until released.
        unsafe { (*p).tid = 0 };
    }
    if slot >= THREAD_SLOTS_LEN {
        let number = slot - THREAD_SLOTS_LEN;
        if HOME_OWNERS
            .get_ptr(number)
            .is_some_and(|owner| unsafe { *owner } == tid)
        {
            let _ = HOME_OWNERS.remove(number);
        }
    } else {
        let _ = FREE_SLOTS.push(slot, 0);
    }
}

/// Makes `*state` that of a thread seen for the first time: inside KVM_RUN until its first
/// kvm_fpu event says otherwise (every event but a kvm_fpu load happens inside KVM_RUN).
///
/// Zeroed a word at a time with volatile stores, not by assigning a new state: the compiler
/// turns a large struct assignment into a call to memset (a BPF-to-BPF call), and around such
/// calls it has kept a value in R1-R5, which every call clobbers; the verifier then rejects the
/// program ("R3 !read_ok"), depending on the code around it.
///
/// # Safety
/// `state` points at a THREAD_SLOTS element no other thread writes.
#[inline(always)]
unsafe fn reset_state(state: *mut ThreadState, tgid: u32, tid: u32) {
    let words = state as *mut u64;
    for i in 0..core::mem::size_of::<ThreadState>() / 8 {
        // SAFETY: within the element (its size is a multiple of 8, asserted in
        // kvmtrace-common), which is 8-byte aligned.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    let now = now_ns();
    // SAFETY: as above.
    let state = unsafe { &mut *state };
    state.vcpu_id = kvmtrace_common::VCPU_UNKNOWN;
    state.tgid = tgid;
    state.tid = tid;
    state.first_ts = now;
    state.run_ts = now;
    state.flags = THREAD_UNRESOLVED;
}

/// The open epoch's sequence number, or None while counting is closed (before start, after stop).
#[inline(always)]
pub fn open_epoch() -> Option<u32> {
    // SAFETY: a u32 global; volatile, so each run reads the collector's latest value.
    let seq = unsafe { core::ptr::read_volatile(&raw const EPOCH) };
    (seq != 0).then_some(seq)
}

/// Adds one latency sample to `key`'s statistics in the epoch of `seq`.
#[inline(always)]
pub fn record_latency(key: &LatencyKey, ns: u64, seq: u32) {
    if let Some(index) = latency_index(key) {
        add_latency(index, ns, seq);
    }
}

/// Like [`record_latency`] for a key of the thread whose cache `cache` is: the index comes from
/// the cache while it is good (see [`CachedIndex`]), else from LATENCY_INDEX, and is cached.
#[inline(always)]
pub fn record_latency_cached(cache: &mut CachedIndex, key: &LatencyKey, ns: u64, seq: u32) {
    let Some(index) = cache.get(key, seq).or_else(|| latency_index(key)) else {
        return;
    };
    add_latency(index, ns, seq);
    cache.set(key, index, seq);
}

/// `key`'s index in the latency pool: from LATENCY_INDEX, or a new one; None when the pool is
/// full (counted).
#[inline(always)]
fn latency_index(key: &LatencyKey) -> Option<u32> {
    // SAFETY: an INDEX value is a plain u32.
    if let Some(i) = LATENCY_INDEX.get_ptr(key) {
        return Some(unsafe { *i });
    }
    let claimed = claim_index(
        key,
        &LATENCY_INDEX,
        &LATENCY_KEYS,
        &LATENCY_FREE,
        Pool::Latency,
    );
    if claimed.is_none() {
        bump(Counter::LatencyMapFull);
    }
    claimed
}

/// Adds one latency sample to the statistics at pool index `index` in the epoch of `seq`.
#[inline(always)]
fn add_latency(index: u32, ns: u64, seq: u32) {
    let stats = if seq & 1 == 0 {
        LATENCY_EVEN.get_ptr_mut(index)
    } else {
        LATENCY_ODD.get_ptr_mut(index)
    };
    let Some(stats) = stats else {
        return;
    };
    // The compiler proves bucket_index < HIST_BUCKETS and drops the bounds check in `add`, but
    // the verifier cannot follow the leading_zeros arithmetic; the volatile read makes the
    // compiler forget the range so the check (which the verifier needs) stays.
    let bucket = kvmtrace_common::bucket_index(ns);
    // SAFETY: reading a local through a valid pointer.
    let bucket = unsafe { core::ptr::read_volatile(&bucket) };
    // SAFETY: `stats` points into a LATENCY array at the key's index. Every key contains the
    // tid and only that thread's own events write it; a thread's events run one after another,
    // never concurrently, so plain read-modify-writes are exact without atomics. The collector
    // reads an epoch's entries only after every program that could still write them has
    // finished, and hands an index out again only after a further epoch.
    unsafe { (*stats).add(ns, bucket) };
}

/// Takes a free index of pool `pool` for `key`, which INDEX lacks: writes the key to KEYS at the
/// index (before INDEX says the index is taken), then registers it in INDEX. None when the pool
/// is full.
#[inline(always)]
fn claim_index<K>(
    key: &K,
    index: &HashMap<K, u32>,
    keys: &Array<K>,
    free: &Stack<u32>,
    pool: Pool,
) -> Option<u32> {
    let Ok(Some(i)) = free.pop() else {
        return None;
    };
    let Some(slot) = keys.get_ptr_mut(i) else {
        let _ = free.push(i, 0);
        return None;
    };
    // SAFETY: a free index: nobody else writes it until INDEX says whose it is, and the collector
    // reads KEYS only at indexes it has seen in use.
    unsafe { core::ptr::copy_nonoverlapping(key, slot, 1) };
    // Keys contain the tid and only the thread's own events insert them: NOEXIST cannot fail for
    // an existing key, only for a full map.
    if index.insert(key, i, BPF_NOEXIST).is_err() {
        let _ = free.push(i, 0);
        return None;
    }
    if let Some(high) = POOL_HIGH.get_ptr_mut(pool as u32) {
        // SAFETY: a per-CPU element; programs on one CPU do not preempt each other.
        unsafe {
            if *high <= i {
                *high = i + 1;
            }
        }
    }
    Some(i)
}

/// Counts one detail event under its key in the thread's pending keys (no map lookup when the
/// guest repeats itself). A key pushed out of them takes its events to the per-kind total and
/// to DETAILS; the collector adds what is still pending when the epoch closes. The totals are
/// not touched per event: one cache line fewer per event (and no per-event counter: the
/// collector sums the totals for the events-seen counter).
#[inline(always)]
pub fn count_detail(seq: u32, state: &mut ThreadState, key: &DetailKey, kind: DetailKind) {
    if kind != DetailKind::UserspaceExit && conf!(keep_last_detail) != 0 {
        state.last_detail = ExitDetail {
            kind: key.kind,
            a: key.a,
            b: key.b,
        };
    }
    let slots = state.pending_mut(seq);
    let same =
        |p: &PendingDetail| p.seq == seq && p.kind == key.kind && p.a == key.a && p.b == key.b;
    if same(&slots[0]) {
        slots[0].count += 1;
        return;
    }
    if same(&slots[1]) {
        slots[1].count += 1;
        slots.swap(0, 1);
        return;
    }
    // A third key: the least recent one's events go to the total and DETAILS (if its epoch is
    // this one, still open; one of an earlier epoch was read when that epoch closed), and the
    // new key takes the front.
    let evicted = slots[1];
    slots[1] = slots[0];
    slots[0] = PendingDetail {
        seq,
        kind: key.kind,
        a: key.a,
        pad: 0,
        b: key.b,
        count: 1,
    };
    if evicted.seq == seq && evicted.count != 0 {
        if let Some(total) = state
            .detail_events_mut(seq)
            .get_mut((evicted.kind as usize).wrapping_sub(1))
        {
            *total += evicted.count;
        }
        let old = DetailKey {
            kind: evicted.kind,
            a: evicted.a,
            b: evicted.b,
            ..*key
        };
        add_detail(seq, state, &old, evicted.count);
    }
}

/// Adds `n` events to `key` in DETAILS (epoch `seq`). A key new to the pool takes an index
/// while the thread has key budget left in this epoch and the pool has room; otherwise its events
/// stay only in the per-kind total ("other keys").
#[inline(always)]
fn add_detail(seq: u32, state: &mut ThreadState, key: &DetailKey, n: u64) {
    // SAFETY: an INDEX value is a plain u32.
    let index = match DETAIL_INDEX.get_ptr(key) {
        Some(i) => unsafe { *i },
        None => {
            if state.keys_seq != seq {
                state.keys_seq = seq;
                state.keys_used = 0;
            }
            if state.keys_used >= conf!(detail_keys_per_thread) {
                return;
            }
            let Some(i) = claim_index(
                key,
                &DETAIL_INDEX,
                &DETAIL_KEYS,
                &DETAIL_FREE,
                Pool::Details,
            ) else {
                bump(Counter::DetailMapFull);
                return;
            };
            state.keys_used += 1;
            i
        }
    };
    let count = if seq & 1 == 0 {
        DETAILS_EVEN.get_ptr_mut(index)
    } else {
        DETAILS_ODD.get_ptr_mut(index)
    };
    if let Some(count) = count {
        // SAFETY: the key's count in the epoch's DETAILS array; the key contains the tid, so (as
        // in record_latency) only this thread's serialized events write it.
        unsafe { *count += n };
    }
}
