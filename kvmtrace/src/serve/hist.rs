//! A histogram fed with the kernel's own buckets. prometheus-client's `Histogram` only observes
//! one value at a time: it would need every sample again (the kernel has already bucketed them)
//! and would sum bucket midpoints instead of the exact total the kernel measured. This one adds
//! each interval's bucket counts and exact total, and prometheus-client encodes it.
//!
//! Its bounds are kernel bucket boundaries (every second power of two of ns, 256 ns .. 17.2 s),
//! so every kernel bucket falls whole into one of them and the counts are exact: `le` means
//! "below the bound" (a sample of exactly the bound's ns is in the next bucket, as in the kernel).

use std::sync::{Arc, Mutex, PoisonError};

use kvmtrace_common::bucket_low;
use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

/// Upper bounds in ns: 4^4 = 256 ns, 1 µs, 4 µs, ... 4^17 = 17.2 s; then +Inf.
pub const BOUNDS_NS: [u64; 14] = {
    let mut b = [0; 14];
    let mut i = 0;
    while i < b.len() {
        b[i] = 1 << (8 + 2 * i);
        i += 1;
    }
    b
};

/// What one histogram series costs in series: its buckets (+Inf too), `_sum` and `_count`.
pub const SERIES_PER_HISTOGRAM: u64 = BOUNDS_NS.len() as u64 + 3;

/// The bucket (index into the bounds, `BOUNDS_NS.len()` for +Inf) of kernel bucket `i`: the
/// first bound above everything in it.
pub fn slot_of_kernel_bucket(i: usize) -> usize {
    BOUNDS_NS.partition_point(|&b| b <= bucket_low(i))
}

#[derive(Clone, Debug, Default)]
pub struct KernelHistogram(Arc<Mutex<Counts>>);

#[derive(Debug, Default)]
struct Counts {
    /// Samples per bound (not cumulative), the last one +Inf.
    buckets: [u64; BOUNDS_NS.len() + 1],
    sum_ns: u64,
}

impl KernelHistogram {
    /// Adds one interval of a key: (kernel bucket index, samples) and the exact total in ns.
    pub fn add(&self, buckets: &[(u16, u32)], total_ns: u64) {
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for &(i, n) in buckets {
            c.buckets[slot_of_kernel_bucket(i as usize)] += n as u64;
        }
        c.sum_ns = c.sum_ns.saturating_add(total_ns);
    }
}

impl TypedMetric for KernelHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for KernelHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let bounds = BOUNDS_NS
            .iter()
            .map(|&ns| ns as f64 / 1e9)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(c.buckets.iter().copied()).collect();
        let count = c.buckets.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(c.sum_ns as f64 / 1e9, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use kvmtrace_common::{HIST_BUCKETS, bucket_index, bucket_width};

    use super::*;

    #[test]
    fn bounds_are_kernel_bucket_boundaries() {
        for b in BOUNDS_NS {
            assert_eq!(bucket_low(bucket_index(b)), b, "{b} ns");
        }
        assert_eq!((BOUNDS_NS[0], BOUNDS_NS[13]), (256, 1 << 34));
    }

    #[test]
    fn every_kernel_bucket_falls_whole_into_one() {
        for i in 0..HIST_BUCKETS {
            let (lo, hi) = (bucket_low(i), bucket_low(i) + bucket_width(i) - 1);
            let slot = slot_of_kernel_bucket(i);
            let below = |ns: u64| BOUNDS_NS.get(slot).is_none_or(|&b| ns < b);
            let above = |ns: u64| slot == 0 || ns >= BOUNDS_NS[slot - 1];
            assert!(
                below(hi) && above(lo),
                "kernel bucket {i} [{lo}, {hi}] in {slot}"
            );
        }
        assert_eq!(slot_of_kernel_bucket(HIST_BUCKETS - 1), BOUNDS_NS.len());
    }

    #[test]
    fn adds_buckets_and_exact_sums() {
        let h = KernelHistogram::default();
        // 3 samples of 300 ns, 1 of 5 000 ns, 1 of 20 s: sums as the kernel measured them.
        h.add(&[(bucket_index(300) as u16, 3)], 900);
        h.add(
            &[
                (bucket_index(5_000) as u16, 1),
                (bucket_index(20_000_000_000) as u16, 1),
            ],
            20_000_005_000,
        );
        let c = h.0.lock().unwrap();
        let mut want = [0u64; 15];
        want[1] = 3; // 256 ns <= 300 ns < 1024 ns
        want[3] = 1; // 4096 ns <= 5 µs < 16384 ns
        want[14] = 1; // above 2^34 ns
        assert_eq!((c.buckets, c.sum_ns), (want, 20_000_005_900));
    }
}
