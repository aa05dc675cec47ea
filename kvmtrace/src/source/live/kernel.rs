//! Kernel-side helpers: reading and deleting an epoch's map entries, map handles, the latency
//! template, thread states, clocks and limits.

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::trace_point::{TracePoint, TracePointLink, TracePointLinkId},
};
use kvmtrace_common::{
    DetailKey, LatencyKey, LatencyKind, LatencyStats, THREAD_MAYBE_WAITING, THREAD_OFF_IN_RUN,
    THREAD_UNRESOLVED, ThreadState,
};

use crate::{
    error::Error,
    host::thread_probe::AtStart,
    model::{LatencyDelta, ThreadCpu},
};

use super::*;

/// Calls `each` with every entry of hash map `name` and deletes it: the map of an epoch that is
/// closed (no program writes it any more). One pass where the kernel has batch operations...
pub(super) fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    buffers: &mut batch::BatchBuffers<K, V>,
    mut each: impl FnMut(&K, &V),
) -> Result<(), Error> {
    if let Some(aya::maps::Map::HashMap(data)) = ebpf.map(name) {
        use std::os::fd::AsFd as _;
        match buffers.for_each(data.fd().as_fd(), true, &mut each) {
            Ok(()) => return Ok(()),
            Err(e) if batch::unsupported(&e) => {}
            Err(e) => return Err(Error::bpf(format!("reading and deleting {name}"), e)),
        }
    }
    // ...else three syscalls per key. Keys are listed first: deleting while walking a BPF hash
    // map can restart the walk.
    let mut map: BpfHashMap<&mut MapData, K, V> = map_mut(ebpf, name)?;
    let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for k in keys {
        let v = map
            .get(&k, 0)
            .map_err(|e| Error::bpf(format!("reading {name}"), e))?;
        map.remove(&k)
            .map_err(|e| Error::bpf(format!("deleting from {name}"), e))?;
        each(&k, &v);
    }
    Ok(())
}

/// Every entry of hash map `name`, read in batches where the kernel can.
pub(super) fn read_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &Ebpf,
    name: &str,
    buffers: &mut batch::BatchBuffers<K, V>,
) -> Result<Vec<(K, V)>, Error> {
    let mut out = Vec::new();
    if let Some(aya::maps::Map::HashMap(data)) = ebpf.map(name) {
        use std::os::fd::AsFd as _;
        match buffers.for_each(data.fd().as_fd(), false, |k, v| out.push((*k, *v))) {
            Ok(()) => return Ok(out),
            Err(e) if batch::unsupported(&e) => out.clear(),
            Err(e) => return Err(Error::bpf(format!("reading {name}"), e)),
        }
    }
    let map: BpfHashMap<&MapData, K, V> = map_ref(ebpf, name)?;
    map.iter()
        .collect::<Result<Vec<(K, V)>, _>>()
        .map_err(|e| Error::bpf(format!("reading {name}"), e))
}

/// Adds the keys the threads still hold as pending in epoch `closed` (their events not yet in
/// DETAILS) to that epoch's `details`, merged with the DETAILS entries of the same key.
pub(super) fn add_pending(
    threads: &[(u32, ThreadState)],
    closed: u32,
    details: &mut Vec<(DetailKey, u64)>,
) {
    let mut pending: foldhash::HashMap<DetailKey, u64> = Default::default();
    for (tid, st) in threads {
        for p in st.pending(closed) {
            if p.seq == closed && p.count > 0 {
                let key = DetailKey {
                    tgid: st.tgid,
                    tid: *tid,
                    kind: p.kind,
                    a: p.a,
                    b: p.b,
                };
                *pending.entry(key).or_default() += p.count;
            }
        }
    }
    if pending.is_empty() {
        return;
    }
    for (k, n) in details.iter_mut() {
        if let Some(more) = pending.remove(k) {
            *n += more;
        }
    }
    details.extend(pending);
}

/// One epoch's statistics of a key as an interval's delta; None when it has no samples.
pub fn latency_delta(stats: &LatencyStats) -> Option<LatencyDelta> {
    if stats.count == 0 {
        return None;
    }
    // Most of the 528 buckets are empty: only the rows the kernel marked are read (the drain
    // reads thousands of keys per interval).
    let mut buckets = Vec::new();
    for rows in super::pool::used_rows(stats.rows) {
        for b in rows {
            if stats.buckets[b] != 0 {
                buckets.push((b as u16, stats.buckets[b]));
            }
        }
    }
    Some(LatencyDelta {
        count: stats.count,
        total_ns: stats.total_ns,
        min_ns: stats.min_ns,
        max_ns: stats.max_ns,
        buckets,
    })
}

/// When a thread that is gone ended: its last switch away from a CPU (it is switched out one
/// last time as it dies), else `now`.
pub(super) fn ended_at(st: &ThreadState, now: u64) -> u64 {
    if st.off_ts != 0 { st.off_ts } else { now }
}

/// The latency key of a thread's open exit.
pub(super) fn open_exit_key(tid: u32, st: &ThreadState) -> LatencyKey {
    LatencyKey {
        tgid: st.tgid,
        tid,
        vcpu_id: st.vcpu_id,
        isa: st.exit_isa,
        reason: st.exit_reason,
        kind: LatencyKind::Exit as u32,
    }
}

/// A thread's CPU accounting as of `now`, counting the open KVM_RUN and the open off-CPU period.
pub(super) fn thread_cpu(tid: u32, st: &ThreadState, now: u64) -> ThreadCpu {
    let mut st = *st;
    if st.run_ts != 0 {
        st.run_ns += now.saturating_sub(st.run_ts);
    }
    if st.off_ts != 0 {
        st.add_off_cpu(now.saturating_sub(st.off_ts));
    }
    ThreadCpu {
        tgid: st.tgid,
        tid,
        tracked_ns: now.saturating_sub(st.first_ts),
        run_ns: st.run_ns,
        off_run_blocked_ns: st.off_run_blocked_ns,
        off_run_runnable_ns: st.off_run_runnable_ns,
        off_user_blocked_ns: st.off_user_blocked_ns,
        off_user_runnable_ns: st.off_user_runnable_ns,
        procfs_ns: None,
        procfs_tracked_ns: 0,
    }
}

/// The state of a thread that was already running when counting opened, as of `now`.
pub(super) fn seed_state(tgid: u32, now: u64, at: AtStart) -> ThreadState {
    let mut st = ThreadState {
        tgid,
        vcpu_id: kvmtrace_common::VCPU_UNKNOWN,
        first_ts: now,
        ..ThreadState::default()
    };
    match at {
        AtStart::BlockedInRun => {
            st.run_ts = now;
            st.off_ts = now;
            st.flags = THREAD_OFF_IN_RUN;
        }
        AtStart::BlockedOutside => st.off_ts = now,
        // As the kernel treats a thread's first event: inside KVM_RUN until a kvm_fpu event.
        // Or waiting for a CPU: the first switch says which (see THREAD_MAYBE_WAITING).
        AtStart::Running => {
            st.run_ts = now;
            st.flags = THREAD_UNRESOLVED | THREAD_MAYBE_WAITING;
        }
    }
    st
}

/// Is thread `tid` of process `tgid` still alive? tgkill with signal 0: it checks that the thread
/// exists in that process and sends nothing (EPERM also means it exists). One syscall of well
/// under a microsecond per thread, where a /proc/PID/task listing per process took ~1 us per
/// entry (a tenth of `record`'s CPU with 1 000 vCPU threads).
pub(super) fn thread_alive(tgid: u32, tid: u32) -> bool {
    // SAFETY: tgkill takes (tgid, tid, sig) and no memory; signal 0 is only a check.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, tgid as libc::c_int, tid as libc::c_int, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Returns once every BPF program that started before the call has returned: tracepoint
/// programs run inside RCU read-side critical sections, and membarrier(MEMBARRIER_CMD_GLOBAL)
/// waits for an RCU grace period. Where it is refused (nohz_full hosts), a sleep far longer than
/// any program runs.
pub(super) fn wait_for_programs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes (cmd, flags, cpu_id) and has no memory arguments.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub(super) fn map_ref<'a, T>(ebpf: &'a Ebpf, name: &str) -> Result<T, Error>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map(name)
        .ok_or_else(|| Error::bpf(name, std::io::Error::other("map not in object")))?;
    T::try_from(map).map_err(|e| Error::bpf(format!("map {name}"), e))
}

pub(super) fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<T, Error>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| Error::bpf(name, std::io::Error::other("map not in object")))?;
    T::try_from(map).map_err(|e| Error::bpf(format!("map {name}"), e))
}

/// How much the per-CPU u64 counter `name` (index 0, summed over CPUs) grew since `so_far`,
/// which it then holds: a loss counter read at each drain.
pub(super) fn per_cpu_growth(ebpf: &Ebpf, name: &str, so_far: &mut u64) -> Result<u64, Error> {
    let counter: PerCpuArray<&MapData, u64> = map_ref(ebpf, name)?;
    let now: u64 = counter
        .get(&0, 0)
        .map_err(|e| Error::bpf(format!("reading {name}"), e))?
        .iter()
        .sum();
    let grown = now - *so_far;
    *so_far = now;
    Ok(grown)
}

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns reads.
pub fn ktime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// BPF_NOEXIST: insert only if the key is absent.
pub(super) const BPF_NOEXIST: u64 = 1;

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it (harmless on newer ones).
pub(super) fn bump_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct; failure only means old kernels may refuse large maps.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK");
    }
}

/// Program `prog` of the object as its type P (a classic or a raw tracepoint program).
pub(super) fn program<'a, P>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut P, Error>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(prog)
        .ok_or_else(|| Error::bpf(prog, std::io::Error::other("program not in object")))?
        .try_into()
        .map_err(|e| Error::bpf(format!("program {prog}"), e))
}

/// Loads program `prog` and attaches it to the classic tracepoint `category:event`; the link's
/// id is for [`detach_classic`].
pub(super) fn attach_classic(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &str,
    event: &str,
) -> Result<TracePointLinkId, Error> {
    let p: &mut TracePoint = program(ebpf, prog)?;
    p.load()
        .map_err(|e| Error::bpf(format!("loading {prog} ({category}:{event})"), e))?;
    p.attach(category, event)
        .map_err(|e| Error::bpf(format!("attaching {prog} to {category}:{event}"), e))
}

/// Detaches classic tracepoint programs all at once, a thread each. Closing the last perf event
/// on a tracepoint waits ~70 ms here: RCU grace periods, partly under the kernel's event_mutex
/// (perf_trace_destroy), so concurrent closes still finish ~40 ms apart but overlap the rest.
/// `record --duration 1s` with nine classic programs: 1.81 s -> 1.50 s; with the two classic
/// ones of the raw path (kvm_exit, kvm_entry): 1.26 s -> 1.22 s.
pub(super) fn detach_classic(ebpf: &mut Ebpf, links: Vec<(&'static str, TracePointLinkId)>) {
    let links: Vec<TracePointLink> = links
        .into_iter()
        .filter_map(|(prog, id)| program::<TracePoint>(ebpf, prog).ok()?.take_link(id).ok())
        .collect();
    std::thread::scope(|scope| {
        for link in links {
            // A thread that cannot be started (at the process's limit) drops its link here.
            if let Err(e) = std::thread::Builder::new().spawn_scoped(scope, move || drop(link)) {
                log::debug!("detaching in this thread: {e}");
            }
        }
    });
}

/// Loads program `prog` and attaches it to the raw tracepoint `event`; on failure (a kernel
/// without raw tracepoints for modules, or whose tracepoint has fewer arguments than the program
/// reads) the program is unloaded again, so the caller can attach the classic one.
pub(super) fn attach_raw(ebpf: &mut Ebpf, prog: &str, event: &str) -> Result<(), Error> {
    let p: &mut aya::programs::RawTracePoint = program(ebpf, prog)?;
    p.load()
        .map_err(|e| Error::bpf(format!("loading {prog} (raw {event})"), e))?;
    if let Err(e) = p.attach(event) {
        let _ = p.unload();
        return Err(Error::bpf(format!("attaching {prog} to raw {event}"), e));
    }
    Ok(())
}
