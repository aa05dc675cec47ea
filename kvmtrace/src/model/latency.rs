//! Latency statistics of a key summed over intervals, in the kernel's own buckets.

use std::collections::BTreeMap;

use kvmtrace_common::{bucket_low, bucket_width};

use super::LatencyDelta;

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

#[cfg(test)]
mod tests {
    use kvmtrace_common::{HIST_BUCKETS, bucket_index};

    use super::*;
    use crate::model::LatencyDelta;

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
}
