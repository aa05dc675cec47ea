//! The kernel side, from user space: load the embedded eBPF object with this kernel's field
//! offsets and the VM filter, attach one program per kvm tracepoint, establish the state of the
//! vCPU threads already running, then open counting; at each interval switch the epoch and drain
//! the closed one into an [`Interval`]. Dropping the [`Tracer`] detaches and frees everything (no
//! pinning, so the kernel also frees it all if the process is killed).
//!
//! Epochs: the latency and detail pools keep one value array per epoch parity (a key keeps its
//! index for as long as it is in use). The collector switches CONTROL to the next epoch, waits
//! until every program that may still be writing the old one has returned (an RCU grace period:
//! tracepoint programs run inside RCU read-side sections), then reads and zeroes the old epoch's
//! arrays in place through memory mappings. So an interval is internally consistent (count = sum
//! of buckets), min/max are per interval, and a key idle for a whole epoch gives its index back
//! (a VM that came and went leaves nothing behind). THREADS entries of exited threads are read one
//! last time and deleted.

mod batch;
pub mod cost;
mod drain;
mod floor;
mod header;
mod kernel;
pub mod new_threads;
mod pool;
mod queries;
mod rips;
mod slow;
mod stacks;
mod threads;

pub use floor::attach_floor;
use kernel::*;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData},
    programs::trace_point::TracePointLinkId,
};
use kvmtrace_common::{
    CONFIG_GLOBAL, Config, Counter, DETAIL_KINDS, DetailKey, DetailKind, FIELD_ABSENT,
    INLINE_TGIDS, LatencyKey, LatencyKind, LatencyStats, ThreadState, maps, programs,
};

use crate::{
    error::Error,
    host::thread_probe::AtStart,
    tp::{btf, offsets, tracefs},
};

/// The eBPF object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kvmtrace"));

pub struct TraceOptions {
    /// Only these tgids (None: every VM on the host).
    pub pids: Option<Vec<u32>>,
    /// tracefs location; None finds or mounts it.
    pub tracefs: Option<PathBuf>,
    /// Latency keys per interval (VMs x vCPUs x reasons). The pool holds twice as many: the
    /// keys of one interval stay in it while the next one's arrive (a key idle for a whole
    /// interval gives its place back at the drain after, a gone thread's at once).
    pub max_latency_keys: u32,
    /// Detail keys per interval; the detail pool holds twice as many, as the latency one.
    pub max_detail_keys: u32,
    /// Distinct detail keys one vCPU thread may add per interval (the rest: "other keys").
    pub detail_keys_per_thread: u32,
    /// Attach raw tracepoint programs where there are some and the kernel takes them (the
    /// default; `KVMTRACE_ATTACH=classic` in the environment turns it off): the kernel then
    /// builds no trace record per event.
    pub raw_tracepoints: bool,
    /// The selection may grow while tracing (`serve -d NAME` follows a VM across restarts): the
    /// kernel looks every pid up in TRACED_TGIDS, which [`Tracer::trace_pid`] adds to.
    pub follow: bool,
    /// Sample host stacks at this rate per CPU (`--stacks`); None: no sampling.
    pub stacks_hz: Option<u64>,
    /// Stream every exit and VMM round trip at least this long (`--than`); None: off.
    pub slow_ns: Option<u64>,
    /// Keep each thread's last N exits and send them with each slow one (`--flight N`); 0: off.
    pub flight: u32,
    /// Exits/s of one vCPU that make a storm (`--storm-rate`), for the flight recorder.
    pub storm_rate: u32,
    /// Count exits per guest RIP (`--guest-rips`).
    pub guest_rips: bool,
    /// When the kernel's BPF run-time statistics are on (`--bpf-stats`).
    pub bpf_stats: cost::StatsMode,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            pids: None,
            tracefs: None,
            max_latency_keys: 4096,
            max_detail_keys: 16384,
            detail_keys_per_thread: Config::UNSET.detail_keys_per_thread,
            raw_tracepoints: std::env::var("KVMTRACE_ATTACH").as_deref() != Ok("classic"),
            follow: false,
            stacks_hz: None,
            slow_ns: None,
            flight: 0,
            storm_rate: Config::UNSET.storm_rate,
            guest_rips: false,
            bpf_stats: cost::StatsMode::default(),
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
    prev_totals: foldhash::HashMap<(u32, u32), [u64; 2 * DETAIL_KINDS]>,
    /// Threads found gone at the previous drain: read once more (events of the epoch they died
    /// in), then deleted. Their CPU accounting was frozen when they were found gone.
    exited: HashSet<(u32, u32)>,
    /// Loss counters already warned about, so a full map is reported once, not per event.
    warned: HashSet<Counter>,
    /// The last epoch before [`Tracer::close`]: the final drain reads it.
    closed_seq: u32,
    /// CLOCK_MONOTONIC as counting closed (0 while open): the final drain's "now". No event is
    /// seen after it, so a thread switched away since then would read as still on a CPU.
    closed_ktime: u64,
    /// Exits whose thread ended before their kvm_entry (counted, never timed).
    ended_exits: std::collections::BTreeMap<LatencyKey, u64>,
    /// The kernel's BPF run-time statistics, on in sampling windows: the tracer's own cost.
    stats: cost::StatsSampler,
    /// Detail events counted so far (the sum of the threads' per-kind totals).
    details_seen: u64,
    /// The latency and detail pools, mapped.
    latency_pool: pool::KeyPool<LatencyKey, LatencyStats>,
    detail_pool: pool::KeyPool<DetailKey, u64>,
    thread_buffers: batch::BatchBuffers<u32, u32>,
    /// The per-thread states (THREAD_SLOTS), mapped.
    slots: threads::ThreadSlots,
    /// Host stack sampling, when asked for.
    stacks: Option<stacks::StackSampler>,
    /// Slow exits, when asked for.
    slow: Option<slow::SlowReader>,
    /// CLOCK_MONOTONIC at `started`: the kernel's timestamps are on that clock.
    started_ktime: u64,
    /// Guest RIPs, when asked for.
    rips: Option<rips::RipCounter>,
    /// The classic tracepoint programs' links, detached together on drop.
    classic_links: Vec<(&'static str, TracePointLinkId)>,
}

impl Drop for Tracer {
    fn drop(&mut self) {
        detach_classic(&mut self.ebpf, std::mem::take(&mut self.classic_links));
    }
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
            slow_ns: opts.slow_ns.unwrap_or(0),
            flight: opts.flight,
            storm_rate: opts.storm_rate,
            guest_rips: opts.guest_rips as u32,
            ..Config::UNSET
        };
        // What the kernel's slow-exit, flight-recorder and guest-RIP code test, in one flag.
        cfg.keep_last_detail = (cfg.slow_ns != 0 || cfg.flight != 0 || cfg.guest_rips != 0) as u32;
        if let Some(pids) = opts
            .pids
            .as_ref()
            .filter(|p| p.len() <= INLINE_TGIDS && !opts.follow)
        {
            cfg.tgids[..pids.len()].copy_from_slice(pids);
            cfg.n_tgids = pids.len() as u32;
        }
        let slot_counts = threads::slots_wanted()?;
        cfg.home_slots = slot_counts.home;
        offsets::fill(&mut cfg, &formats)?;
        if opts.raw_tracepoints {
            // Without it the raw sched_switch program cannot read the next task's pid, and the
            // classic one is attached.
            cfg.task_pid =
                btf::task_pid_offset(Path::new(btf::VMLINUX_BTF)).unwrap_or(FIELD_ABSENT);
        }
        bump_memlock_rlimit();

        let mut loader = EbpfLoader::new();
        loader.override_global(CONFIG_GLOBAL, &cfg, true);
        for (pool, len) in [
            (&pool::LATENCY, opts.max_latency_keys.saturating_mul(2)),
            (&pool::DETAILS, opts.max_detail_keys.saturating_mul(2)),
        ] {
            for name in [
                pool.index,
                pool.keys,
                pool.free,
                pool.values[0],
                pool.values[1],
            ] {
                loader.map_max_entries(name, len);
            }
        }
        for parity in 0..2 {
            if opts.stacks_hz.is_some() {
                loader
                    .map_max_entries(maps::STACK_COUNTS[parity], stacks::STACK_COUNTS_ENTRIES)
                    .map_max_entries(maps::STACK_FRAMES[parity], stacks::STACK_FRAMES_ENTRIES);
            }
        }
        if opts.slow_ns.is_some() || opts.flight != 0 {
            loader.map_max_entries(maps::SLOW_EXITS, slow::SLOW_EXITS_BYTES);
        }
        loader
            .map_max_entries(maps::THREADS, threads::SLOTS_TOTAL)
            .map_max_entries(maps::THREAD_SLOTS, threads::SLOTS_TOTAL)
            .map_max_entries(maps::HOME_OWNERS, slot_counts.home.max(1));
        if opts.flight != 0 {
            // One ring per vCPU thread (see FLIGHT_THREADS).
            loader.map_max_entries(maps::FLIGHT, slow::FLIGHT_THREADS);
        }
        if opts.guest_rips {
            for name in maps::GUEST_RIPS {
                loader.map_max_entries(name, rips::GUEST_RIPS_ENTRIES);
            }
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| Error::bpf("loading the eBPF object", e))?;
        let slots = threads::ThreadSlots::open(&mut ebpf, slot_counts)?;
        let latency_pool = pool::KeyPool::open(&mut ebpf, &pool::LATENCY)?;
        let detail_pool = pool::KeyPool::open(&mut ebpf, &pool::DETAILS)?;
        if let Some(pids) = &opts.pids {
            let mut traced: BpfHashMap<&mut MapData, u32, u32> =
                map_mut(&mut ebpf, maps::TRACED_TGIDS)?;
            for &pid in pids {
                traced
                    .insert(pid, 1, 0)
                    .map_err(|e| Error::bpf(format!("adding pid {pid} to the VM filter"), e))?;
            }
        }
        // The first window opens before the first program runs, so its first runs count.
        let stats = cost::StatsSampler::start(
            opts.bpf_stats,
            Instant::now(),
            cost::program_counters(&ebpf),
        );
        let mut attached = Vec::new();
        let mut classic_links = Vec::new();
        for (prog, category, event) in programs::ALL {
            if missing.contains(&event) {
                continue;
            }
            let raw = programs::RAW
                .iter()
                .find(|(classic, _)| *classic == prog)
                .filter(|_| opts.raw_tracepoints)
                .filter(|(_, raw)| {
                    *raw != programs::SCHED_SWITCH_RAW || cfg.task_pid != FIELD_ABSENT
                });
            if let Some(&(_, raw)) = raw {
                match attach_raw(&mut ebpf, raw, event) {
                    Ok(()) => {
                        attached.push(event);
                        continue;
                    }
                    Err(e) => log::info!("{e}; attaching the classic tracepoint program"),
                }
            }
            classic_links.push((prog, attach_classic(&mut ebpf, prog, category, event)?));
            attached.push(event);
        }
        let stacks = opts
            .stacks_hz
            .map(|hz| stacks::StackSampler::attach(&mut ebpf, hz))
            .transpose()?;
        let slow = (opts.slow_ns.is_some() || opts.flight != 0)
            .then(|| slow::SlowReader::open(&mut ebpf, opts.slow_ns, opts.flight))
            .transpose()?;
        log::info!("attached to {}", attached.join(", "));
        Ok(Tracer {
            ebpf,
            attached,
            missing,
            formats: format_texts,
            tracefs,
            started: Instant::now(),
            seq: 0,
            prev_totals: Default::default(),
            exited: HashSet::new(),
            warned: HashSet::new(),
            closed_seq: 0,
            closed_ktime: 0,
            ended_exits: Default::default(),
            stats,
            details_seen: 0,
            latency_pool,
            detail_pool,
            thread_buffers: Default::default(),
            slots,
            stacks,
            slow,
            started_ktime: kernel::ktime_ns(),
            rips: opts.guest_rips.then(rips::RipCounter::default),
            classic_links,
        })
    }

    /// The stream of threads as they are first seen (see [`new_threads`]); once per tracer,
    /// inside the tokio runtime. Left untaken, it fills and the kernel drops what follows.
    pub fn new_threads(&mut self) -> Result<new_threads::NewThreads, Error> {
        new_threads::NewThreads::open(&mut self.ebpf)
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
        self.started_ktime = kernel::ktime_ns();
        let running = running();
        let mut unseeded = 0;
        for (tgid, tid, at) in running {
            // Each as of its own seed (see ThreadSlots::seed). Where the thread's own event gave
            // it a state already, that one stays.
            if !self
                .slots
                .seed(&mut self.ebpf, tid, || seed_state(tgid, ktime_ns(), at))?
            {
                unseeded += 1;
            }
        }
        // Once, not once per thread: a host with more vCPU threads than slots has thousands.
        if unseeded > 0 {
            log::warn!(
                "no thread slot left for {unseeded} running vCPU threads: their exits are not paired"
            );
        }
        Ok(())
    }

    /// Fills the open epoch as the threads `tids` of process `tgid` with `latency_keys` exit
    /// reasons and `detail_keys` ports each would (for the drain benchmark: the collector at
    /// scale without a thousand real vCPUs; the threads are real, so they stay alive).
    #[doc(hidden)]
    pub fn fill_for_bench(
        &mut self,
        tgid: u32,
        tids: &[u32],
        latency_keys: u32,
        detail_keys: u32,
    ) -> Result<(), Error> {
        let parity = self.seq & 1;
        for (v, &tid) in (0..).zip(tids) {
            let st = ThreadState {
                tgid,
                vcpu_id: v,
                ..Default::default()
            };
            if !self.slots.seed(&mut self.ebpf, tid, || st)? {
                return Err(Error::bpf(
                    "filling THREADS",
                    std::io::Error::other("no thread slot left"),
                ));
            }
        }
        let mut stats = LatencyStats::EMPTY;
        stats.add(1_000, kvmtrace_common::bucket_index(1_000));
        for (v, &tid) in (0..).zip(tids) {
            for r in 0..latency_keys {
                let key = LatencyKey {
                    tgid,
                    tid,
                    vcpu_id: v,
                    isa: 2,
                    reason: r,
                    kind: LatencyKind::Exit as u32,
                };
                self.latency_pool.put(&mut self.ebpf, parity, key, stats)?;
            }
        }
        for &tid in tids {
            for port in 0..detail_keys {
                let key = DetailKey {
                    tgid,
                    tid,
                    kind: DetailKind::Pio as u32,
                    a: port,
                    b: 1,
                };
                self.detail_pool.put(&mut self.ebpf, parity, key, 7)?;
            }
        }
        Ok(())
    }

    /// Stops counting: nothing more is written after this returns, so the last drain and
    /// [`Tracer::in_flight`] describe the same instant.
    pub fn close(&mut self) -> Result<(), Error> {
        if self.seq != 0 {
            self.closed_ktime = ktime_ns();
            self.closed_seq = self.switch_epoch(0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_is_its_own_delta() {
        let mut stats = LatencyStats::EMPTY;
        assert!(latency_delta(&stats).is_none());
        for ns in [50, 50, 50, 50, 400] {
            stats.add(ns, kvmtrace_common::bucket_index(ns));
        }
        let (b50, b400) = (
            kvmtrace_common::bucket_index(50) as u16,
            kvmtrace_common::bucket_index(400) as u16,
        );
        let d = latency_delta(&stats).unwrap();
        assert_eq!((d.count, d.total_ns, d.min_ns, d.max_ns), (5, 600, 50, 400));
        assert_eq!(d.buckets, vec![(b50, 4), (b400, 1)]);
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
        // Running or waiting for a CPU: its first switch tells (in sched_switch).
        assert_ne!(running.flags & kvmtrace_common::THREAD_MAYBE_WAITING, 0);
        assert_eq!(
            blocked_in_run.flags & kvmtrace_common::THREAD_MAYBE_WAITING,
            0
        );
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
        st.pending_odd = [pending(5, 0x70, 7), pending(5, 0x71, 3)];
        st.pending_even = [pending(4, 0x72, 9), PendingDetail::default()];
        let mut stale = st;
        stale.pending_odd = [pending(3, 0x70, 11), PendingDetail::default()];
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
