//! What a recording knows: the per-interval deltas drained from the kernel ([`Interval`]) and
//! their running sum ([`Aggregate`]) with the kernel's latency buckets per key. Pure data: no BPF,
//! no /proc, so analyses and renderers are tested with plain values.

use std::{collections::BTreeMap, time::Duration};

use kvmtrace_common::{Counter, DetailKey, LatencyKey, bucket_low, bucket_width};

/// What changed for one latency key during an interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyDelta {
    pub count: u64,
    pub total_ns: u64,
    /// Minimum and maximum of this interval (recordings of version 1 hold them since attach;
    /// both merge the same way into a whole recording's).
    pub min_ns: u64,
    pub max_ns: u64,
    /// (bucket index, samples) for the buckets that changed.
    pub buckets: Vec<(u16, u32)>,
}

/// One drain of the kernel maps.
#[derive(Clone, Debug, Default)]
pub struct Interval {
    /// Time since recording started, at the end of this interval.
    pub at: Duration,
    pub latency: Vec<(LatencyKey, LatencyDelta)>,
    pub details: Vec<(DetailKey, u64)>,
    /// Cumulative values of every [`Counter`], indexed by its discriminant.
    pub counters: [u64; Counter::COUNT as usize],
    /// Cumulative CPU accounting of every traced thread, as of the end of this interval.
    pub threads: Vec<ThreadCpu>,
}

/// Where a vCPU thread's time went since it was first seen (cumulative ns). The kernel's view
/// (KVM_RUN from kvm_fpu, off-CPU from sched_switch) and, to cross-check it, procfs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCpu {
    pub tgid: u32,
    pub tid: u32,
    /// Wall time since the thread's first event.
    pub tracked_ns: u64,
    /// Wall time inside KVM_RUN.
    pub run_ns: u64,
    pub off_run_blocked_ns: u64,
    pub off_run_runnable_ns: u64,
    pub off_user_blocked_ns: u64,
    pub off_user_runnable_ns: u64,
    /// Run time from /proc (schedstat, else utime + stime) since recording started, when readable.
    pub procfs_ns: Option<u64>,
}

impl ThreadCpu {
    /// On-CPU time inside KVM_RUN (the guest and in-kernel exit handling).
    pub fn in_run_on_cpu(&self) -> u64 {
        self.run_ns
            .saturating_sub(self.off_run_blocked_ns + self.off_run_runnable_ns)
    }

    /// On-CPU time outside KVM_RUN: the VMM's user space (and its syscalls).
    pub fn vmm_on_cpu(&self) -> u64 {
        self.tracked_ns
            .saturating_sub(self.run_ns)
            .saturating_sub(self.off_user_blocked_ns + self.off_user_runnable_ns)
    }

    pub fn on_cpu(&self) -> u64 {
        self.in_run_on_cpu() + self.vmm_on_cpu()
    }

    /// `self - earlier`, field by field (for time windows).
    pub fn since(&self, earlier: &ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            tgid: self.tgid,
            tid: self.tid,
            tracked_ns: self.tracked_ns.saturating_sub(earlier.tracked_ns),
            run_ns: self.run_ns.saturating_sub(earlier.run_ns),
            off_run_blocked_ns: self
                .off_run_blocked_ns
                .saturating_sub(earlier.off_run_blocked_ns),
            off_run_runnable_ns: self
                .off_run_runnable_ns
                .saturating_sub(earlier.off_run_runnable_ns),
            off_user_blocked_ns: self
                .off_user_blocked_ns
                .saturating_sub(earlier.off_user_blocked_ns),
            off_user_runnable_ns: self
                .off_user_runnable_ns
                .saturating_sub(earlier.off_user_runnable_ns),
            procfs_ns: match (self.procfs_ns, earlier.procfs_ns) {
                (Some(a), Some(b)) => Some(a.saturating_sub(b)),
                (a, _) => a,
            },
        }
    }
}

/// Latency statistics of one key over the whole recording.
///
/// The distribution is the kernel's own log-linear buckets, summed sparsely: those buckets are
/// the resolution of the data anyway (a sample's value is known to within its bucket), and a key
/// costs a few hundred bytes. An auto-resizing hdrhistogram at the same precision took up to
/// ~200 KB per key: 4 096 keys of a busy host (or of a hostile file) took 866 MiB.
#[derive(Clone, Debug)]
pub struct LatencyAgg {
    pub count: u64,
    pub total_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
    /// Samples per kernel bucket index, for the buckets that have any.
    pub buckets: BTreeMap<u16, u64>,
}

impl Default for LatencyAgg {
    fn default() -> Self {
        LatencyAgg {
            count: 0,
            total_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
            buckets: BTreeMap::new(),
        }
    }
}

/// The value a sample in kernel bucket `i` stands for: its midpoint, within 3.2 % of the true
/// value.
pub fn bucket_midpoint(i: usize) -> u64 {
    bucket_low(i) + bucket_width(i) / 2
}

impl LatencyAgg {
    pub fn add(&mut self, d: &LatencyDelta) {
        self.count += d.count;
        self.total_ns += d.total_ns;
        if d.count > 0 {
            self.min_ns = self.min_ns.min(d.min_ns);
            self.max_ns = self.max_ns.max(d.max_ns);
        }
        for &(bucket, n) in &d.buckets {
            *self.buckets.entry(bucket).or_default() += n as u64;
        }
    }

    /// Merges another key's statistics (for views that sum vCPUs).
    pub fn merge(&mut self, other: &LatencyAgg) {
        self.count += other.count;
        self.total_ns += other.total_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        for (&bucket, &n) in &other.buckets {
            *self.buckets.entry(bucket).or_default() += n;
        }
    }

    /// The q-quantile (0..=1): the midpoint of the bucket holding the sample of that rank,
    /// clamped into [min, max], which are exact.
    pub fn quantile(&self, q: f64) -> u64 {
        let samples: u64 = self.buckets.values().sum();
        if self.count == 0 || samples == 0 {
            return 0;
        }
        let rank = ((q * samples as f64).ceil() as u64).clamp(1, samples);
        let mut seen = 0;
        let bucket = self
            .buckets
            .iter()
            .find(|&(_, &n)| {
                seen += n;
                seen >= rank
            })
            .map_or(0, |(&b, _)| b);
        bucket_midpoint(bucket as usize).clamp(self.min_ns, self.max_ns.max(self.min_ns))
    }
}

/// What was still open when recording stopped: exits with no entry yet (by key, without a
/// latency sample) and VMM round trips with no re-entry yet, of threads still alive; and exits
/// whose thread ended before their entry (counted, never timed, not "in flight").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    pub exits: BTreeMap<LatencyKey, u64>,
    pub round_trips: u64,
    pub ended_with_thread: BTreeMap<LatencyKey, u64>,
    /// Entries left in the kernel maps after the last drain (None in older recordings).
    pub map_entries: Option<MapEntries>,
}

/// Entries in the kernel maps: after the last drain, THREADS holds the live traced threads and
/// LATENCY/DETAILS nothing, however many VMs came and went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MapEntries {
    pub threads: u64,
    pub latency: u64,
    pub details: u64,
}

impl InFlight {
    pub fn exit_total(&self) -> u64 {
        self.exits.values().sum()
    }

    pub fn ended_total(&self) -> u64 {
        self.ended_with_thread.values().sum()
    }
}

/// The running sum of every interval so far.
#[derive(Clone, Debug, Default)]
pub struct Aggregate {
    pub elapsed: Duration,
    pub intervals: u64,
    pub latency: BTreeMap<LatencyKey, LatencyAgg>,
    pub details: BTreeMap<DetailKey, u64>,
    pub counters: [u64; Counter::COUNT as usize],
    /// Every key's counts per interval, for storms and rates over time.
    pub series: crate::series::Series,
    /// The latest CPU accounting of every thread.
    pub threads: BTreeMap<u32, ThreadCpu>,
}

impl Aggregate {
    pub fn apply(&mut self, iv: &Interval) {
        self.series.push(iv);
        self.elapsed = iv.at;
        self.intervals += 1;
        for (key, delta) in &iv.latency {
            self.latency.entry(*key).or_default().add(delta);
        }
        for (key, n) in &iv.details {
            *self.details.entry(*key).or_default() += n;
        }
        self.counters = iv.counters;
        for t in &iv.threads {
            self.threads.insert(t.tid, *t);
        }
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }
}

#[cfg(test)]
mod tests {
    use kvmtrace_common::{HIST_BUCKETS, bucket_index};

    use super::*;

    /// Feeds `samples` through the kernel's bucketing and returns the aggregate.
    fn through_buckets(samples: &[u64]) -> LatencyAgg {
        let mut counts = vec![0u32; HIST_BUCKETS];
        for &s in samples {
            counts[bucket_index(s)] += 1;
        }
        let delta = LatencyDelta {
            count: samples.len() as u64,
            total_ns: samples.iter().sum(),
            min_ns: *samples.iter().min().unwrap(),
            max_ns: *samples.iter().max().unwrap(),
            buckets: counts
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (i as u16, *n))
                .collect(),
        };
        let mut agg = LatencyAgg::default();
        agg.add(&delta);
        agg
    }

    fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    #[test]
    fn p50_and_p99_within_5_percent_of_exact() {
        // Deterministic spread over 5 decades: 200 ns .. 20 ms, log-uniform-ish.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut samples: Vec<u64> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let exp = 200f64 * 10f64.powf((x % 100_000) as f64 / 20_000.0);
                exp as u64
            })
            .collect();
        let agg = through_buckets(&samples);
        samples.sort_unstable();
        for q in [0.5, 0.9, 0.99, 0.999] {
            let exact = exact_quantile(&samples, q) as f64;
            let est = agg.quantile(q) as f64;
            let err = (est - exact).abs() / exact;
            assert!(err <= 0.05, "q{q}: exact {exact} est {est} err {err:.4}");
        }
        assert_eq!(agg.count, 100_000);
        assert_eq!(agg.min_ns, samples[0]);
        assert_eq!(agg.max_ns, *samples.last().unwrap());
    }

    #[test]
    fn buckets_cover_the_range_and_are_contiguous() {
        for i in 0..HIST_BUCKETS - 1 {
            assert_eq!(
                bucket_low(i) + bucket_width(i),
                bucket_low(i + 1),
                "bucket {i}"
            );
            assert_eq!(bucket_index(bucket_low(i)), i);
            assert_eq!(bucket_index(bucket_low(i + 1) - 1), i);
        }
        assert_eq!(bucket_index(u64::MAX), HIST_BUCKETS - 1);
        assert_eq!(bucket_index(0), 0);
        // Each bucket is at most 1/16 of its lower bound wide (above the exact range).
        for i in 16..HIST_BUCKETS {
            assert!(bucket_width(i) * 16 <= bucket_low(i), "bucket {i}");
        }
    }

    #[test]
    fn single_value_quantiles_are_exact_via_min_max_clamp() {
        let agg = through_buckets(&[1234; 10]);
        assert_eq!(agg.quantile(0.5), 1234);
        assert_eq!(agg.quantile(0.99), 1234);
    }

    #[test]
    fn aggregate_sums_intervals() {
        let key = LatencyKey {
            tgid: 1,
            tid: 2,
            vcpu_id: 0,
            isa: 2,
            reason: 0x7b,
            kind: 0,
        };
        let dkey = DetailKey {
            tgid: 1,
            tid: 2,
            kind: 1,
            a: 0x70,
            b: 1 | 1 << 8,
        };
        let mut agg = Aggregate::default();
        for i in 1..=3u64 {
            let mut counters = [0; Counter::COUNT as usize];
            counters[Counter::DetailsSeen as usize] = 10 * i;
            agg.apply(&Interval {
                at: Duration::from_secs(i),
                latency: vec![(
                    key,
                    LatencyDelta {
                        count: 2,
                        total_ns: 300,
                        min_ns: 100,
                        max_ns: 200,
                        buckets: vec![(bucket_index(100) as u16, 1), (bucket_index(200) as u16, 1)],
                    },
                )],
                details: vec![(dkey, 10)],
                counters,
                threads: vec![],
            });
        }
        assert_eq!(agg.elapsed, Duration::from_secs(3));
        assert_eq!(agg.latency[&key].count, 6);
        assert_eq!(agg.latency[&key].buckets.values().sum::<u64>(), 6);
        assert_eq!(agg.details[&dkey], 30);
        assert_eq!(agg.counter(Counter::DetailsSeen), 30);
    }
}
