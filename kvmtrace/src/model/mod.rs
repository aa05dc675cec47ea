//! The data between the kernel and the reports: per-interval deltas drained from the kernel
//! ([`Interval`]), their running sum ([`Aggregate`]) with the kernel's latency buckets per key,
//! per-key time series, what was open at stop, vCPU identities, and what tracing cost. Pure data:
//! no BPF, no /proc, so analyses and renderers are tested with plain values.

pub mod cost;
pub mod identity;
mod in_flight;
mod interval;
mod latency;
pub mod rips;
pub mod series;
pub mod slow;
pub mod stacks;

use std::{collections::BTreeMap, time::Duration};

use kvmtrace_common::{Counter, DetailKey, LatencyKey};

pub use in_flight::{InFlight, MapEntries};
pub use interval::{Interval, LatencyDelta, ThreadCpu};
pub use latency::{LatencyAgg, bucket_midpoint};

/// `count` per second over `secs` (0 for an empty span).
pub fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// A detail key's (kind, a, b), as kept with slow exits and guest RIPs, decoded; None for none
/// or a kind this build does not know.
pub fn decode_detail(
    tgid: u32,
    tid: u32,
    detail: Option<(u32, u32, u64)>,
) -> Option<kvmtrace_common::detail::Detail> {
    let (kind, a, b) = detail?;
    DetailKey {
        tgid,
        tid,
        kind,
        a,
        b,
    }
    .decode()
}

/// `part` in % of `whole` (0 when `whole` is 0).
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// A hash map for keys looked up at every interval. Its entries lie in one vector in the order
/// their keys first came, which is the order the next interval's keys come in (a live drain
/// reads them by pool index, a recording by id): the lookups walk the entries from one end to
/// the other, where a std hash map's entries lie where their keys hash to, a cache miss per key
/// (with 10 000 keys, the aggregate's maps 0.40 -> 0.19 ms per interval, `--bench collect`).
pub type KeyMap<K, V> = indexmap::IndexMap<K, V, foldhash::fast::RandomState>;

/// The running sum of every interval so far.
#[derive(Clone, Debug, Default)]
pub struct Aggregate {
    pub elapsed: Duration,
    pub intervals: u64,
    /// In the order keys came (see [`KeyMap`]): every reader re-sorts what it takes from them,
    /// and at each interval thousands of keys are looked up (as ordered maps, a tenth of the
    /// collector's CPU at scale).
    pub latency: KeyMap<LatencyKey, LatencyAgg>,
    pub details: KeyMap<DetailKey, u64>,
    pub counters: [u64; Counter::COUNT as usize],
    /// Every key's counts per interval, for storms and rates over time.
    pub series: series::Series,
    /// Not kept (`top`'s aggregate of one interval: its storms come from its window, and a
    /// series of 10 000 one-point buffers per frame, with the storm detection over it, was a
    /// fifth of its CPU).
    pub without_series: bool,
    /// The latest CPU accounting of every thread, by (pid, tid): a tid the kernel hands out
    /// again to another VM's thread is another thread.
    pub threads: BTreeMap<(u32, u32), ThreadCpu>,
    /// Host stack samples (`--stacks`).
    pub stacks: stacks::StackProfile,
    /// Slow exits (`--than`).
    pub slow: slow::SlowProfile,
    /// Guest RIPs per exit reason (`--guest-rips`).
    pub rips: rips::GuestRips,
}

/// One VM's keys of an [`Aggregate`], what its report reads: taken for every VM in one walk of
/// the aggregate's maps ([`Aggregate::keys_by_vm`]), where each VM's tables walking every key
/// of every VM cost O(VMs x keys) per report and `top` frame (300 VMs of 80 keys: 29.6 ms ->
/// 3.9 ms per report).
#[derive(Default)]
pub struct VmKeys<'a> {
    pub latency: Vec<(&'a LatencyKey, &'a LatencyAgg)>,
    pub details: Vec<(&'a DetailKey, u64)>,
}

impl Aggregate {
    /// Each VM's keys, by pid.
    pub fn keys_by_vm(&self) -> foldhash::HashMap<u32, VmKeys<'_>> {
        let mut out: foldhash::HashMap<u32, VmKeys> = Default::default();
        for (k, v) in &self.latency {
            out.entry(k.tgid).or_default().latency.push((k, v));
        }
        for (k, n) in &self.details {
            out.entry(k.tgid).or_default().details.push((k, *n));
        }
        out
    }

    pub fn apply(&mut self, iv: &Interval) {
        if !self.without_series {
            self.series.push(iv);
        }
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
            self.threads
                .entry((t.tgid, t.tid))
                .or_default()
                .advance_to(t);
        }
        self.stacks.apply(&iv.stacks);
        self.slow.apply(&iv.slow);
        self.rips.apply(&iv.guest_rips);
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }
}

#[cfg(test)]
mod tests {
    use kvmtrace_common::bucket_index;

    use super::*;

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
                stacks: Default::default(),
                slow: Default::default(),
                guest_rips: Default::default(),
            });
        }
        assert_eq!(agg.elapsed, Duration::from_secs(3));
        assert_eq!(agg.latency[&key].count, 6);
        assert_eq!(agg.latency[&key].buckets.values().sum::<u64>(), 6);
        assert_eq!(agg.details[&dkey], 30);
        assert_eq!(agg.counter(Counter::DetailsSeen), 30);
    }
}
