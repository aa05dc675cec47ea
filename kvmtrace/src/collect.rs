//! The kernel side, from user space: load the embedded eBPF object with this kernel's field
//! offsets and the VM filter, attach one program per kvm tracepoint, and drain the maps into
//! [`Interval`] deltas. Dropping the [`Tracer`] detaches and frees everything (no pinning, so the
//! kernel also frees it all if the process is killed).

use std::{collections::HashMap, path::PathBuf, time::Instant};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues},
    programs::TracePoint,
};
use kvmtrace_common::{
    CONFIG_GLOBAL, Config, Counter, DetailKey, HIST_BUCKETS, INLINE_TGIDS, LatencyKey, LatencyKind,
    LatencyStats, THREAD_OFF_IN_RUN, THREAD_OFF_RUNNABLE, ThreadState, maps, programs,
};

use crate::{
    error::Error,
    model::{InFlight, Interval, LatencyDelta, ThreadCpu},
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
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            pids: None,
            tracefs: None,
            max_latency_keys: 4096,
            max_detail_keys: 16384,
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
    prev_latency: HashMap<LatencyKey, LatencyStats>,
    prev_details: HashMap<DetailKey, u64>,
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
            ..Config::UNSET
        };
        if let Some(pids) = opts.pids.as_ref().filter(|p| p.len() <= INLINE_TGIDS) {
            cfg.tgids[..pids.len()].copy_from_slice(pids);
            cfg.n_tgids = pids.len() as u32;
        }
        offsets::fill(&mut cfg, &formats)?;
        bump_memlock_rlimit();

        let mut ebpf = EbpfLoader::new()
            .override_global(CONFIG_GLOBAL, &cfg, true)
            .map_max_entries(maps::LATENCY, opts.max_latency_keys)
            .map_max_entries(maps::DETAILS, opts.max_detail_keys)
            .load(EBPF_OBJECT)
            .map_err(|e| Error::bpf("loading the eBPF object", e))?;
        // Kernel-side warnings (map full) go to our log; a missing log map only loses those.
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => spawn_log_drain(logger),
            Err(e) => log::debug!("no eBPF logger: {e}"),
        }
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
            prev_latency: HashMap::new(),
            prev_details: HashMap::new(),
        })
    }

    /// Reads every map and returns what changed since the previous drain.
    pub fn drain(&mut self) -> Result<Interval, Error> {
        let at = self.started.elapsed();
        let mut iv = Interval {
            at,
            ..Default::default()
        };
        let latency: BpfHashMap<&MapData, LatencyKey, LatencyStats> =
            map_ref(&self.ebpf, maps::LATENCY)?;
        for item in latency.iter() {
            let (key, now) = item.map_err(|e| Error::bpf("reading LATENCY", e))?;
            let prev = self.prev_latency.get(&key);
            if let Some(delta) = latency_delta(prev, &now) {
                iv.latency.push((key, delta));
                self.prev_latency.insert(key, now);
            }
        }
        let details: BpfHashMap<&MapData, DetailKey, u64> = map_ref(&self.ebpf, maps::DETAILS)?;
        for item in details.iter() {
            let (key, now) = item.map_err(|e| Error::bpf("reading DETAILS", e))?;
            let prev = self.prev_details.insert(key, now).unwrap_or(0);
            if now > prev {
                iv.details.push((key, now - prev));
            }
        }
        let counters: PerCpuArray<&MapData, u64> = map_ref(&self.ebpf, maps::COUNTERS)?;
        for c in Counter::ALL {
            let per_cpu = counters
                .get(&(c as u32), 0)
                .map_err(|e| Error::bpf("reading COUNTERS", e))?;
            iv.counters[c as usize] = per_cpu.iter().sum();
        }
        iv.latency.sort_by_key(|(k, _)| *k);
        iv.details.sort_by_key(|(k, _)| *k);
        iv.threads = self.thread_cpu()?;
        Ok(iv)
    }

    /// Every traced thread's CPU accounting as of now, counting the open KVM_RUN and the open
    /// off-CPU period up to now.
    fn thread_cpu(&self) -> Result<Vec<ThreadCpu>, Error> {
        let threads: BpfHashMap<&MapData, u32, ThreadState> = map_ref(&self.ebpf, maps::THREADS)?;
        let now = ktime_ns();
        let mut out = Vec::new();
        for item in threads.iter() {
            let (tid, st) = item.map_err(|e| Error::bpf("reading THREADS", e))?;
            let mut t = ThreadCpu {
                tgid: st.tgid,
                tid,
                tracked_ns: now.saturating_sub(st.first_ts),
                run_ns: st.run_ns,
                off_run_blocked_ns: st.off_run_blocked_ns,
                off_run_runnable_ns: st.off_run_runnable_ns,
                off_user_blocked_ns: st.off_user_blocked_ns,
                off_user_runnable_ns: st.off_user_runnable_ns,
                procfs_ns: None,
            };
            if st.run_ts != 0 {
                t.run_ns += now.saturating_sub(st.run_ts);
            }
            if st.off_ts != 0 {
                let open = now.saturating_sub(st.off_ts);
                match (
                    st.flags & THREAD_OFF_IN_RUN != 0,
                    st.flags & THREAD_OFF_RUNNABLE != 0,
                ) {
                    (true, true) => t.off_run_runnable_ns += open,
                    (true, false) => t.off_run_blocked_ns += open,
                    (false, true) => t.off_user_runnable_ns += open,
                    (false, false) => t.off_user_blocked_ns += open,
                }
            }
            out.push(t);
        }
        out.sort_by_key(|t| t.tid);
        Ok(out)
    }

    /// Exits and userspace round trips still open (no entry yet) right now, over traced threads.
    pub fn in_flight(&self) -> Result<InFlight, Error> {
        let threads: BpfHashMap<&MapData, u32, ThreadState> = map_ref(&self.ebpf, maps::THREADS)?;
        let mut open = InFlight::default();
        for item in threads.iter() {
            let (tid, st) = item.map_err(|e| Error::bpf("reading THREADS", e))?;
            if st.exit_ts != 0 {
                let key = LatencyKey {
                    tgid: st.tgid,
                    tid,
                    vcpu_id: st.vcpu_id,
                    isa: st.exit_isa,
                    reason: st.exit_reason,
                    kind: LatencyKind::Exit as u32,
                };
                *open.exits.entry(key).or_default() += 1;
            }
            open.round_trips += (st.uexit_ts != 0) as u64;
        }
        Ok(open)
    }
}

/// Difference between two cumulative snapshots of one key; None when nothing changed.
pub fn latency_delta(prev: Option<&LatencyStats>, now: &LatencyStats) -> Option<LatencyDelta> {
    let prev = prev.unwrap_or(&LatencyStats::EMPTY);
    if now.count == prev.count {
        return None;
    }
    let buckets = (0..HIST_BUCKETS)
        .filter_map(|i| {
            let n = now.buckets[i].wrapping_sub(prev.buckets[i]);
            (n != 0).then_some((i as u16, n))
        })
        .collect();
    Some(LatencyDelta {
        count: now.count - prev.count,
        total_ns: now.total_ns - prev.total_ns,
        min_ns: now.min_ns,
        max_ns: now.max_ns,
        buckets,
    })
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

fn spawn_log_drain(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: the logger owns its ring buffer's fd and keeps it open, unchanged, for as long as it
    // lives, which is as long as the AsyncFd that owns it.
    let Ok(mut fd) = (unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) })
    else {
        return;
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_use_wrapping_bucket_counts() {
        let mut prev = LatencyStats::EMPTY;
        prev.count = 10;
        prev.total_ns = 1000;
        prev.buckets[20] = u32::MAX - 1; // about to wrap
        let mut now = prev;
        now.count = 15;
        now.total_ns = 1600;
        now.min_ns = 50;
        now.max_ns = 400;
        now.buckets[20] = 2; // wrapped: +4
        now.buckets[30] += 1;
        let d = latency_delta(Some(&prev), &now).unwrap();
        assert_eq!(d.count, 5);
        assert_eq!(d.total_ns, 600);
        assert_eq!(d.buckets, vec![(20, 4), (30, 1)]);
        assert_eq!((d.min_ns, d.max_ns), (50, 400));
        assert!(latency_delta(Some(&now), &now).is_none());
    }
}
