//! The kernel side, from user space: load the embedded eBPF object with this kernel's field
//! offsets and the VM filter, attach one program per kvm tracepoint, establish the state of the
//! vCPU threads already running, then open counting; at each interval switch the epoch and drain
//! the closed one into an [`Interval`]. Dropping the [`Tracer`] detaches and frees everything (no
//! pinning, so the kernel also frees it all if the process is killed).
//!
//! Epochs: every LATENCY and DETAILS key carries the parity of the epoch it was written in. The
//! collector switches CONTROL to the next epoch, waits until every program that may still be
//! writing the old one has returned (an RCU grace period: tracepoint programs run inside RCU
//! read-side sections), then reads and deletes the old epoch's entries. So an interval is
//! internally consistent (count = sum of buckets), min/max are per interval, and entries of
//! threads that are gone vanish with their last epoch. THREADS entries of exited threads are
//! read one last time and deleted.

mod batch;
pub mod cost;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues},
    programs::TracePoint,
};
use kvmtrace_common::{
    CONFIG_GLOBAL, Config, Counter, DETAIL_KINDS, DetailKey, DetailKind, DetailMapKey,
    HIST_BUCKETS, INLINE_TGIDS, LatencyKey, LatencyKind, LatencyMapKey, LatencyStats,
    THREAD_OFF_IN_RUN, THREAD_UNRESOLVED, ThreadState, detail_slot, maps, programs,
};

use crate::{
    error::Error,
    model::{InFlight, Interval, LatencyDelta, MapEntries, ThreadCpu},
    host::thread_probe::AtStart,
    tp::{offsets, tracefs},
};

/// The eBPF object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kvmtrace"));

pub struct TraceOptions {
    /// Only these tgids (None: every VM on the host).
    pub pids: Option<Vec<u32>>,
    /// tracefs location; None finds or mounts it.
    pub tracefs: Option<PathBuf>,
    /// Capacity of the latency map (keys = VMs x vCPUs x reasons).
    pub max_latency_keys: u32,
    /// Capacity of the detail map.
    pub max_detail_keys: u32,
    /// Distinct detail keys one vCPU thread may add per interval (the rest: "other keys").
    pub detail_keys_per_thread: u32,
    /// The selection may grow while tracing (`serve -d NAME` follows a VM across restarts): the
    /// kernel looks every pid up in TRACED_TGIDS, which [`Tracer::trace_pid`] adds to.
    pub follow: bool,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            pids: None,
            tracefs: None,
            max_latency_keys: 4096,
            max_detail_keys: 16384,
            detail_keys_per_thread: Config::UNSET.detail_keys_per_thread,
            follow: false,
        }
    }
}

pub struct Tracer {
    ebpf: Ebpf,
    /// tracepoints attached / absent on this kernel
    pub attached: Vec<&'static str>,
    pub missing: Vec<&'static str>,
    /// The format files of the attached tracepoints, by event name (for recordings).
    pub formats: std::collections::BTreeMap<String, String>,
    pub tracefs: PathBuf,
    started: Instant,
    /// The open epoch's sequence number; 0 before [`Tracer::open`] and after [`Tracer::close`].
    seq: u32,
    /// Each live thread's per-(parity, kind) detail totals as last read.
    prev_totals: HashMap<(u32, u32), [u64; 2 * DETAIL_KINDS]>,
    /// Threads found gone at the previous drain: read once more (events of the epoch they died
    /// in), then deleted. Their CPU accounting was frozen when they were found gone.
    exited: HashSet<(u32, u32)>,
    /// Where /proc is (threads that are gone are deleted from THREADS).
    proc_root: PathBuf,
    /// Loss counters already warned about, so a full map is reported once, not per event.
    warned: HashSet<Counter>,
    /// The last epoch before [`Tracer::close`]: the final drain reads it.
    closed_seq: u32,
    /// Exits whose thread ended before their kvm_entry (counted, never timed).
    ended_exits: std::collections::BTreeMap<LatencyKey, u64>,
    /// The kernel's BPF run-time statistics, on while tracing: the tracer's own cost.
    stats: crate::source::live::cost::RunTimeStats,
    /// Detail events counted so far (the sum of the threads' per-kind totals).
    details_seen: u64,
}

pub fn check_root() -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Err(Error::NotRoot { uid });
    }
    Ok(())
}

impl Tracer {
    pub fn start(opts: &TraceOptions) -> Result<Tracer, Error> {
        check_root()?;
        if EBPF_OBJECT.is_empty() {
            return Err(Error::NoBpfObject);
        }
        let tracefs = tracefs::locate(opts.tracefs.as_deref())?;
        if !tracefs.join("events/kvm").is_dir() {
            return Err(Error::NoKvmEvents { tracefs });
        }
        let mut formats = Vec::new();
        let mut format_texts = std::collections::BTreeMap::new();
        let mut missing = Vec::new();
        for (_, category, event) in programs::ALL {
            match tracefs::event_format(&tracefs, category, event)? {
                Some((f, text)) => {
                    formats.push(f);
                    format_texts.insert(event.to_string(), text);
                }
                None => missing.push(event),
            }
        }
        let mut cfg = Config {
            self_tgid: std::process::id(),
            filter_tgids: opts.pids.is_some() as u32,
            detail_keys_per_thread: opts.detail_keys_per_thread,
            ..Config::UNSET
        };
        if let Some(pids) = opts
            .pids
            .as_ref()
            .filter(|p| p.len() <= INLINE_TGIDS && !opts.follow)
        {
            cfg.tgids[..pids.len()].copy_from_slice(pids);
            cfg.n_tgids = pids.len() as u32;
        }
        offsets::fill(&mut cfg, &formats)?;
        bump_memlock_rlimit();

        let mut ebpf = EbpfLoader::new()
            .override_global(CONFIG_GLOBAL, &cfg, true)
            // Twice the keys asked for: right after an epoch switch the new epoch fills while the
            // old one is still being read.
            .map_max_entries(maps::LATENCY, opts.max_latency_keys.saturating_mul(2))
            .map_max_entries(maps::DETAILS, opts.max_detail_keys.saturating_mul(2))
            .load(EBPF_OBJECT)
            .map_err(|e| Error::bpf("loading the eBPF object", e))?;
        init_template(&mut ebpf)?;
        if let Some(pids) = &opts.pids {
            let mut traced: BpfHashMap<&mut MapData, u32, u32> =
                map_mut(&mut ebpf, maps::TRACED_TGIDS)?;
            for &pid in pids {
                traced
                    .insert(pid, 1, 0)
                    .map_err(|e| Error::bpf(format!("adding pid {pid} to the VM filter"), e))?;
            }
        }
        // On before the first program runs, so every run is counted.
        let stats = crate::source::live::cost::RunTimeStats::enable();
        let mut attached = Vec::new();
        for (prog, category, event) in programs::ALL {
            if missing.contains(&event) {
                continue;
            }
            let p: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| Error::bpf(prog, std::io::Error::other("program not in object")))?
                .try_into()
                .map_err(|e| Error::bpf(format!("program {prog}"), e))?;
            p.load()
                .map_err(|e| Error::bpf(format!("loading {prog} ({category}:{event})"), e))?;
            p.attach(category, event)
                .map_err(|e| Error::bpf(format!("attaching {prog} to {category}:{event}"), e))?;
            attached.push(event);
        }
        log::info!("attached to {}", attached.join(", "));
        Ok(Tracer {
            ebpf,
            attached,
            missing,
            formats: format_texts,
            tracefs,
            started: Instant::now(),
            seq: 0,
            prev_totals: HashMap::new(),
            exited: HashSet::new(),
            proc_root: PathBuf::from("/proc"),
            warned: HashSet::new(),
            closed_seq: 0,
            ended_exits: Default::default(),
            stats,
            details_seen: 0,
        })
    }

    /// Starts counting, every program attached: the threads in `running` (VM pid, tid, what it
    /// was doing just now) get their state as of now, so a VM that was already running is
    /// accounted from this instant, not from its threads' first events. The threads are looked
    /// at after counting opened: a thread that changes state from then on has an event of its own,
    /// which creates its entry first, and the seed (BPF_NOEXIST) leaves that entry alone.
    pub fn open(
        &mut self,
        running: impl FnOnce() -> Vec<(u32, u32, AtStart)>,
    ) -> Result<(), Error> {
        self.switch_epoch(1)?;
        self.started = Instant::now();
        let running = running();
        let now = ktime_ns();
        // Marks first: a seeded thread's context switches count from its first one.
        let mut marks: Array<&mut MapData, u8> = map_mut(&mut self.ebpf, maps::TID_MARKS)?;
        for &(_, tid, _) in &running {
            // Tids beyond the array are "maybe traced" anyway.
            let _ = marks.set(tid, 1, 0);
        }
        let mut threads: BpfHashMap<&mut MapData, u32, ThreadState> =
            map_mut(&mut self.ebpf, maps::THREADS)?;
        for (tgid, tid, at) in running {
            // EEXIST: the thread's own event created its entry already, from what it did.
            let _ = threads.insert(tid, seed_state(tgid, now, at), BPF_NOEXIST);
        }
        Ok(())
    }

    /// Fills the open epoch as `vcpus` vCPU threads with `latency_keys` exit reasons and
    /// `detail_keys` ports each would (for the drain benchmark: the collector at scale without a
    /// thousand real vCPUs). The threads are made up, so the next drains retire them as gone.
    #[doc(hidden)]
    pub fn fill_for_bench(
        &mut self,
        vcpus: u32,
        latency_keys: u32,
        detail_keys: u32,
    ) -> Result<(), Error> {
        let epoch = self.seq & 1;
        let (tgid, first_tid) = (4_000_000, 4_000_001);
        let mut threads: BpfHashMap<&mut MapData, u32, ThreadState> =
            map_mut(&mut self.ebpf, maps::THREADS)?;
        for v in 0..vcpus {
            let st = ThreadState {
                tgid,
                vcpu_id: v,
                ..Default::default()
            };
            threads
                .insert(first_tid + v, st, 0)
                .map_err(|e| Error::bpf("filling THREADS", e))?;
        }
        let mut stats = LatencyStats::EMPTY;
        stats.count = 10;
        stats.total_ns = 10_000;
        stats.min_ns = 1_000;
        stats.max_ns = 1_000;
        stats.buckets[kvmtrace_common::bucket_index(1_000)] = 10;
        let mut latency: BpfHashMap<&mut MapData, LatencyMapKey, LatencyStats> =
            map_mut(&mut self.ebpf, maps::LATENCY)?;
        for v in 0..vcpus {
            for r in 0..latency_keys {
                let key = LatencyKey {
                    tgid,
                    tid: first_tid + v,
                    vcpu_id: v,
                    isa: 2,
                    reason: r,
                    kind: LatencyKind::Exit as u32,
                };
                latency
                    .insert(LatencyMapKey { key, epoch }, stats, 0)
                    .map_err(|e| Error::bpf("filling LATENCY", e))?;
            }
        }
        let mut details: BpfHashMap<&mut MapData, DetailMapKey, u64> =
            map_mut(&mut self.ebpf, maps::DETAILS)?;
        for v in 0..vcpus {
            for port in 0..detail_keys {
                let key = DetailKey {
                    tgid,
                    tid: first_tid + v,
                    kind: DetailKind::Pio as u32,
                    a: port,
                    b: 1,
                };
                details
                    .insert(DetailMapKey { key, epoch, pad: 0 }, 7, 0)
                    .map_err(|e| Error::bpf("filling DETAILS", e))?;
            }
        }
        Ok(())
    }

    /// Stops counting: nothing more is written after this returns, so the last drain and
    /// [`Tracer::in_flight`] describe the same instant.
    pub fn close(&mut self) -> Result<(), Error> {
        if self.seq != 0 {
            self.closed_seq = self.switch_epoch(0)?;
        }
        Ok(())
    }

    /// Sets CONTROL to `seq` and waits until no program can still be using the previous value.
    fn switch_epoch(&mut self, seq: u32) -> Result<u32, Error> {
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
        let counters: PerCpuArray<&MapData, u64> = map_ref(&self.ebpf, maps::COUNTERS)?;
        for c in Counter::ALL {
            let per_cpu = counters
                .get(&(c as u32), 0)
                .map_err(|e| Error::bpf("reading COUNTERS", e))?;
            iv.counters[c as usize] = per_cpu.iter().sum();
        }
        self.warn_losses(&iv.counters);
        self.read_threads(closed, &mut iv)?;
        // Detail events are counted per thread only (no per-event counter in the kernel).
        iv.counters[Counter::DetailsSeen as usize] = self.details_seen;
        iv.latency.sort_by_key(|(k, _)| *k);
        iv.details.sort_by_key(|(k, _)| *k);
        Ok(iv)
    }

    /// Reads and deletes the LATENCY entries of epoch `parity`.
    fn take_latency(&mut self, parity: u32) -> Result<Vec<(LatencyKey, LatencyDelta)>, Error> {
        let entries = take_epoch(&mut self.ebpf, maps::LATENCY, |k: &LatencyMapKey| {
            k.epoch == parity
        })?;
        Ok(entries
            .into_iter()
            .filter_map(|(k, stats)| Some((k.key, latency_delta(&stats)?)))
            .collect())
    }

    /// Reads and deletes the DETAILS entries of epoch `parity`.
    fn take_details(&mut self, parity: u32) -> Result<Vec<(DetailKey, u64)>, Error> {
        let entries = take_epoch(&mut self.ebpf, maps::DETAILS, |k: &DetailMapKey| {
            k.epoch == parity
        })?;
        Ok(entries
            .into_iter()
            .filter(|&(_, n)| n > 0)
            .map(|(k, n)| (k.key, n))
            .collect())
    }

    /// Every thread's CPU accounting as of now, the keys still pending in its state and the
    /// "other keys" rows of epoch `closed`; threads that are gone are read one more time, then
    /// deleted.
    fn read_threads(&mut self, closed: u32, iv: &mut Interval) -> Result<(), Error> {
        let parity = closed & 1;
        let threads: BpfHashMap<&MapData, u32, ThreadState> = map_ref(&self.ebpf, maps::THREADS)?;
        let entries = threads
            .iter()
            .collect::<Result<Vec<(u32, ThreadState)>, _>>()
            .map_err(|e| Error::bpf("reading THREADS", e))?;
        add_pending(&entries, closed, &mut iv.details);
        let now = ktime_ns();
        let mut keyed: HashMap<(u32, u32, u32), u64> = HashMap::new();
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
                let total = st.detail_events[slot].saturating_sub(prev[slot]);
                prev[slot] = st.detail_events[slot];
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
            if !self.thread_alive(st.tgid, tid) {
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

    /// Deletes the THREADS entries (and TID_MARKS bytes) of threads that are gone.
    fn forget(&mut self, gone: &[(u32, u32)]) -> Result<(), Error> {
        if gone.is_empty() {
            return Ok(());
        }
        let mut removed = Vec::new();
        let mut threads: BpfHashMap<&mut MapData, u32, ThreadState> =
            map_mut(&mut self.ebpf, maps::THREADS)?;
        for &(tgid, tid) in gone {
            // A tid reused by another process since is that process's entry now: keep it (and
            // its mark).
            if threads.get(&tid, 0).is_ok_and(|st| st.tgid == tgid) {
                let _ = threads.remove(&tid);
                removed.push(tid);
            }
            self.exited.remove(&(tgid, tid));
            self.prev_totals.remove(&(tgid, tid));
        }
        let mut marks: Array<&mut MapData, u8> = map_mut(&mut self.ebpf, maps::TID_MARKS)?;
        for tid in removed {
            let _ = marks.set(tid, 0, 0);
        }
        Ok(())
    }

    fn thread_alive(&self, tgid: u32, tid: u32) -> bool {
        thread_alive(&self.proc_root, tgid, tid)
    }

    /// Reports each kind of loss once, when it first happens (never per event).
    fn warn_losses(&mut self, counters: &[u64; Counter::COUNT as usize]) {
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

    /// The programs' runs and run time so far (cumulative), with this process's CPU time.
    pub fn cost(&self) -> crate::model::cost::TracerCost {
        let programs = if self.stats.unavailable.is_some() {
            Vec::new()
        } else {
            self.ebpf
                .programs()
                .filter_map(|(name, p)| {
                    let info = p.info().ok()?;
                    Some(crate::model::cost::ProgramCost {
                        program: name.to_string(),
                        runs: info.run_count(),
                        run_ns: info.run_time().as_nanos() as u64,
                    })
                })
                .collect()
        };
        crate::model::cost::TracerCost {
            secs: self.started.elapsed().as_secs_f64(),
            programs,
            collector_cpu_ns: crate::source::live::cost::process_cpu().as_nanos() as u64,
            unavailable: self.stats.unavailable.clone(),
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

    /// The capacity (max_entries) of THREADS, LATENCY and DETAILS as the kernel loaded them.
    pub fn capacity(&self) -> MapEntries {
        let max = |name: &str| match self.ebpf.map(name) {
            Some(aya::maps::Map::HashMap(m)) => m.info().map_or(0, |i| i.max_entries() as u64),
            _ => 0,
        };
        MapEntries {
            threads: max(maps::THREADS),
            latency: max(maps::LATENCY),
            details: max(maps::DETAILS),
        }
    }

    /// Entries in THREADS, LATENCY and DETAILS now: after the last drain, the live traced
    /// threads, 0 and 0 (nothing of a VM that came and went stays behind).
    pub fn occupancy(&self) -> Result<MapEntries, Error> {
        let threads: BpfHashMap<&MapData, u32, ThreadState> = map_ref(&self.ebpf, maps::THREADS)?;
        let latency: BpfHashMap<&MapData, LatencyMapKey, LatencyStats> =
            map_ref(&self.ebpf, maps::LATENCY)?;
        let details: BpfHashMap<&MapData, DetailMapKey, u64> = map_ref(&self.ebpf, maps::DETAILS)?;
        Ok(MapEntries {
            threads: threads.keys().count() as u64,
            latency: latency.keys().count() as u64,
            details: details.keys().count() as u64,
        })
    }

    /// Exits and userspace round trips still open (no entry yet) right now, over the traced
    /// threads that are still alive (a thread that died inside KVM_RUN has nothing in flight).
    pub fn in_flight(&self) -> Result<InFlight, Error> {
        let threads: BpfHashMap<&MapData, u32, ThreadState> = map_ref(&self.ebpf, maps::THREADS)?;
        let mut open = InFlight {
            ended_with_thread: self.ended_exits.clone(),
            map_entries: Some(self.occupancy()?),
            ..Default::default()
        };
        for item in threads.iter() {
            let (tid, st) = item.map_err(|e| Error::bpf("reading THREADS", e))?;
            if st.exit_ts == 0 && st.uexit_ts == 0 {
                continue;
            }
            let alive = !self.exited.contains(&(st.tgid, tid)) && self.thread_alive(st.tgid, tid);
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

/// Reads and deletes the entries of map `name` whose key `in_epoch` selects. Keys are listed
/// first: deleting while walking a BPF hash map can restart the walk.
fn take_epoch<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    in_epoch: impl Fn(&K) -> bool,
) -> Result<Vec<(K, V)>, Error> {
    // A few syscalls for the whole map where the kernel has batch operations (5.6)...
    if let Some(aya::maps::Map::HashMap(data)) = ebpf.map(name) {
        use std::os::fd::AsFd as _;
        let fd = data.fd().as_fd();
        if let Ok(all) = batch::lookup_all::<K, V>(fd) {
            let out: Vec<(K, V)> = all.into_iter().filter(|(k, _)| in_epoch(k)).collect();
            let keys: Vec<K> = out.iter().map(|(k, _)| *k).collect();
            batch::delete(fd, &keys)
                .map_err(|e| Error::bpf(format!("deleting from {name}"), e))?;
            return Ok(out);
        }
    }
    // ...else three per key.
    let mut map: BpfHashMap<&mut MapData, K, V> = map_mut(ebpf, name)?;
    let keys: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| in_epoch(k))
        .collect();
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let v = map
            .get(&k, 0)
            .map_err(|e| Error::bpf(format!("reading {name}"), e))?;
        map.remove(&k)
            .map_err(|e| Error::bpf(format!("deleting from {name}"), e))?;
        out.push((k, v));
    }
    Ok(out)
}

/// Adds the keys the threads still hold as pending in epoch `closed` (their events not yet in
/// DETAILS) to that epoch's `details`, merged with the DETAILS entries of the same key.
fn add_pending(threads: &[(u32, ThreadState)], closed: u32, details: &mut Vec<(DetailKey, u64)>) {
    let mut pending: HashMap<DetailKey, u64> = HashMap::new();
    for (tid, st) in threads {
        for p in &st.pending[(closed & 1) as usize] {
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
    let buckets = (0..HIST_BUCKETS)
        .filter_map(|i| {
            let n = stats.buckets[i];
            (n != 0).then_some((i as u16, n))
        })
        .collect();
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
fn ended_at(st: &ThreadState, now: u64) -> u64 {
    if st.off_ts != 0 { st.off_ts } else { now }
}

/// The latency key of a thread's open exit.
fn open_exit_key(tid: u32, st: &ThreadState) -> LatencyKey {
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
fn thread_cpu(tid: u32, st: &ThreadState, now: u64) -> ThreadCpu {
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
    }
}

/// The state of a thread that was already running when counting opened, as of `now`.
fn seed_state(tgid: u32, now: u64, at: AtStart) -> ThreadState {
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
        AtStart::Running => {
            st.run_ts = now;
            st.flags = THREAD_UNRESOLVED;
        }
    }
    st
}

fn thread_alive(proc_root: &Path, tgid: u32, tid: u32) -> bool {
    proc_root
        .join(tgid.to_string())
        .join("task")
        .join(tid.to_string())
        .exists()
}

/// Returns once every BPF program that started before the call has returned: tracepoint
/// programs run inside RCU read-side critical sections, and membarrier(MEMBARRIER_CMD_GLOBAL)
/// waits for an RCU grace period. Where it is refused (nohz_full hosts), a sleep far longer than
/// any program runs.
fn wait_for_programs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes (cmd, flags, cpu_id) and has no memory arguments.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn map_ref<'a, T>(ebpf: &'a Ebpf, name: &str) -> Result<T, Error>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map(name)
        .ok_or_else(|| Error::bpf(name, std::io::Error::other("map not in object")))?;
    T::try_from(map).map_err(|e| Error::bpf(format!("map {name}"), e))
}

fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<T, Error>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| Error::bpf(name, std::io::Error::other("map not in object")))?;
    T::try_from(map).map_err(|e| Error::bpf(format!("map {name}"), e))
}

/// New LATENCY entries are copied from this per-CPU template (min_ns = u64::MAX).
fn init_template(ebpf: &mut Ebpf) -> Result<(), Error> {
    let mut template: PerCpuArray<&mut MapData, LatencyStats> =
        map_mut(ebpf, maps::LATENCY_TEMPLATE)?;
    let ncpus = aya::util::nr_cpus().map_err(|(what, e)| Error::Io {
        what: what.into(),
        source: e,
    })?;
    let values =
        PerCpuValues::try_from(vec![LatencyStats::EMPTY; ncpus]).map_err(|e| Error::Io {
            what: "per-CPU template".into(),
            source: e,
        })?;
    template
        .set(0, values, 0)
        .map_err(|e| Error::bpf("setting LATENCY_TEMPLATE", e))
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
const BPF_NOEXIST: u64 = 1;

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it (harmless on newer ones).
fn bump_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct; failure only means old kernels may refuse large maps.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_is_its_own_delta() {
        let mut stats = LatencyStats::EMPTY;
        assert!(latency_delta(&stats).is_none());
        stats.count = 5;
        stats.total_ns = 600;
        stats.min_ns = 50;
        stats.max_ns = 400;
        stats.buckets[20] = 4;
        stats.buckets[30] = 1;
        let d = latency_delta(&stats).unwrap();
        assert_eq!((d.count, d.total_ns, d.min_ns, d.max_ns), (5, 600, 50, 400));
        assert_eq!(d.buckets, vec![(20, 4), (30, 1)]);
    }

    #[test]
    fn seeded_threads_start_where_they_are() {
        let blocked_in_run = seed_state(7, 1000, AtStart::BlockedInRun);
        assert_eq!((blocked_in_run.run_ts, blocked_in_run.off_ts), (1000, 1000));
        let cpu = thread_cpu(8, &blocked_in_run, 3000);
        assert_eq!(
            (cpu.tracked_ns, cpu.run_ns, cpu.off_run_blocked_ns),
            (2000, 2000, 2000)
        );
        let running = seed_state(7, 1000, AtStart::Running);
        let cpu = thread_cpu(8, &running, 3000);
        assert_eq!((cpu.run_ns, cpu.in_run_on_cpu()), (2000, 2000));
        let outside = seed_state(7, 1000, AtStart::BlockedOutside);
        let cpu = thread_cpu(8, &outside, 3000);
        assert_eq!(
            (cpu.run_ns, cpu.off_user_blocked_ns, cpu.on_cpu()),
            (0, 2000, 0)
        );
    }

    #[test]
    fn pending_keys_of_the_closed_epoch_join_their_details() {
        use kvmtrace_common::PendingDetail;
        let pending = |seq, a, count| PendingDetail {
            seq,
            kind: DetailKind::Pio as u32,
            a,
            pad: 0,
            b: 1,
            count,
        };
        let mut st = ThreadState {
            tgid: 100,
            ..Default::default()
        };
        // Epoch 5 (parity 1): port 0x70 has 40 in DETAILS already and 7 pending; 0x71 only
        // pending. The parity-1 slot of epoch 3 is stale, parity 0 is another epoch.
        st.pending[1] = [pending(5, 0x70, 7), pending(5, 0x71, 3)];
        st.pending[0] = [pending(4, 0x72, 9), PendingDetail::default()];
        let mut stale = st;
        stale.pending[1] = [pending(3, 0x70, 11), PendingDetail::default()];
        let key = |a| DetailKey {
            tgid: 100,
            tid: 101,
            kind: DetailKind::Pio as u32,
            a,
            b: 1,
        };
        let mut details = vec![(key(0x70), 40)];
        add_pending(&[(101, st), (102, stale)], 5, &mut details);
        details.sort();
        assert_eq!(details, vec![(key(0x70), 47), (key(0x71), 3)]);
    }
}
