//! Per-key time series of counts (and handling time) at every drain interval, kept for the whole
//! recording in bounded memory: when a series' share of [`MAX_TOTAL_POINTS`] (at most
//! [`MAX_POINTS`]) is reached, the oldest half of the points is merged pairwise, so old data gets
//! coarser while recent data keeps the drain resolution.

use std::{collections::VecDeque, time::Duration};

use kvmtrace_common::{Detail, LatencyKind, UserspaceExit};

use crate::model::Interval;

/// Points per series at most.
pub const MAX_POINTS: usize = 2048;
/// Points of all series together at most (16 bytes each: 64 MiB; up to twice that while
/// buffers grow before their first merge), as long as each series keeps [`MIN_POINTS`]: 2 048
/// points for up to 2 048 series, fewer beyond. With 2 048 points each, the 10 000 series of
/// 200 busy vCPUs took 340 MB after ~34 minutes.
pub const MAX_TOTAL_POINTS: usize = 1 << 22;
/// Points per series at least, however many series there are.
pub const MIN_POINTS: usize = 64;

/// What a series counts, for one thread (vCPU) of one VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum What {
    /// kvm_exit reason (isa, code); ns = exit->entry time.
    Exit { isa: u32, reason: u32 },
    /// A detail key; for userspace exits ns = VMM time.
    Detail(Detail),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub pid: u32,
    pub tid: u32,
    pub what: What,
}

/// One interval's count (and handling time) of one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Point {
    pub count: u64,
    pub ns: u64,
}

/// Points add field by field: two intervals merged, or one key's series summed over threads.
impl std::ops::AddAssign for Point {
    fn add_assign(&mut self, other: Point) {
        self.count += other.count;
        self.ns += other.ns;
    }
}

/// A key's points, aligned with [`Series::ends`]. A key idle since its last point has no
/// points for the intervals after it (they are zeros): each interval touches only the keys that
/// were active in it, not every key ever seen (with 10 000 keys, zero-filling every key at every
/// interval was a measurable part of `record`). Readers take missing points as zeros. Count and
/// time side by side: one buffer to grow and touch per key and interval, not two (cache misses
/// are most of the cost of a push with thousands of keys).
pub type Points = Vec<Point>;

/// How many series ahead [`Series::push`] asks for the next point's cache line.
const PREFETCH_AHEAD: usize = 16;

/// Asks the CPU to bring `p`'s cache line in (nothing elsewhere than on x86-64).
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it does not fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
}

/// Every series, aligned on one timeline of interval ends.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Start of the first point (the start of the recording, or of a report's time window).
    pub origin: Duration,
    /// End of each point's interval, from the start of the recording.
    pub ends: Vec<Duration>,
    /// In the order keys came (a [`KeyMap`](super::KeyMap): at every interval each active key
    /// is looked up, and with thousands of keys an ordered map was a third of the collector's
    /// CPU).
    pub by_key: super::KeyMap<Key, Points>,
}

/// Calls `f` with every (key, point) interval `iv` adds to the series. A key can come twice (a
/// userspace exit's count, then its VMM time).
pub fn each_point(iv: &Interval, mut f: impl FnMut(Key, Point)) {
    for (k, d) in &iv.latency {
        let key = |what| Key {
            pid: k.tgid,
            tid: k.tid,
            what,
        };
        match k.kind() {
            Some(LatencyKind::Exit) => f(
                key(What::Exit {
                    isa: k.isa,
                    reason: k.reason,
                }),
                Point {
                    count: d.count,
                    ns: d.total_ns,
                },
            ),
            // The VMM's time joins its userspace exit reason's counts (restarts and errors have
            // no time series of their own).
            Some(LatencyKind::VmmRoundTrip) => {
                if let Some(exit) = UserspaceExit::of_round_trip_code(k.reason) {
                    let point = Point {
                        count: 0,
                        ns: d.total_ns,
                    };
                    f(key(What::Detail(Detail::UserspaceExit(exit))), point);
                }
            }
            _ => {}
        }
    }
    for (k, count) in &iv.details {
        if let Some(detail) = k.decode() {
            let key = Key {
                pid: k.tgid,
                tid: k.tid,
                what: What::Detail(detail),
            };
            let point = Point {
                count: *count,
                ns: 0,
            };
            f(key, point);
        }
    }
}

/// One interval's point of every key with events in it, each key once: what storm detection
/// takes an interval at a time.
pub type Column = Vec<(Key, Point)>;

/// Interval `iv`'s points as a [`Column`].
pub fn column(iv: &Interval) -> Column {
    let mut merged: super::KeyMap<Key, Point> = super::KeyMap::with_capacity_and_hasher(
        iv.latency.len() + iv.details.len(),
        Default::default(),
    );
    each_point(iv, |key, point| *merged.entry(key).or_default() += point);
    merged.into_iter().collect()
}

/// The last few intervals (storms going on now, for `serve` and `top`), as the [`Column`] of
/// each, so memory and the work per interval stay flat however long they run and dropping the
/// oldest interval is dropping one vector (kept as per-key series, every key's points moved).
#[derive(Default)]
pub struct Window {
    /// Oldest first, with each interval's end (from the start of tracing).
    columns: VecDeque<(Duration, Column)>,
    /// The first column's start.
    start: Duration,
}

impl Window {
    /// Adds `iv`, keeping the last `intervals` intervals.
    pub fn push(&mut self, iv: &Interval, intervals: usize) {
        self.columns.push_back((iv.at, column(iv)));
        while self.columns.len() > intervals.max(1) {
            if let Some((end, _)) = self.columns.pop_front() {
                self.start = end;
            }
        }
    }

    /// Intervals in the window.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The newest interval's points and width.
    pub fn newest(&self) -> Option<(&Column, Duration)> {
        let i = self.columns.len().checked_sub(1)?;
        Some((&self.columns[i].1, self.width(i)))
    }

    /// Width of interval `i` of the window.
    pub fn width(&self, i: usize) -> Duration {
        let start = match i {
            0 => self.start,
            _ => self.columns[i - 1].0,
        };
        self.columns[i].0.saturating_sub(start)
    }

    /// Interval `i`'s points.
    pub fn column(&self, i: usize) -> &Column {
        &self.columns[i].1
    }

    /// The window's intervals as series, of the keys `keep` keeps (times from the window's
    /// start, so each point's width is its interval's).
    pub fn series(&self, keep: impl Fn(&Key) -> bool) -> Series {
        let mut series = Series::default();
        for (n, (end, column)) in self.columns.iter().enumerate() {
            series.ends.push(end.saturating_sub(self.start));
            for (key, point) in column.iter().filter(|(k, _)| keep(k)) {
                let p = series.by_key.entry(*key).or_default();
                p.resize(n + 1, Point::default());
                p[n] += *point;
            }
        }
        series
    }
}

impl Series {
    /// Adds one drained interval as one point of every series.
    pub fn push(&mut self, iv: &Interval) {
        let limit = self.max_points();
        while self.ends.len() >= limit {
            self.downsample(limit);
        }
        let n = self.ends.len();
        self.ends.push(iv.at);
        // Each point's series first, then the points: every series' newest point is in a
        // buffer of its own, a cache miss each, which a loop of a few instructions per point,
        // asking for the lines ahead, overlaps (with 10 000 series, 2.5 -> 0.7 ms per interval).
        let mut adds = Vec::with_capacity(iv.latency.len() + iv.details.len());
        each_point(iv, |key, point| {
            let entry = self.by_key.entry(key);
            adds.push((entry.index(), point));
            entry.or_default();
        });
        for (j, &(i, point)) in adds.iter().enumerate() {
            if let Some(&(ahead, _)) = adds.get(j + PREFETCH_AHEAD) {
                prefetch(self.by_key[ahead].as_ptr().wrapping_add(n));
            }
            let p = &mut self.by_key[i];
            p.resize(n + 1, Point::default());
            p[n] += point;
        }
    }

    /// Points each series keeps at most: its share of [`MAX_TOTAL_POINTS`], between
    /// [`MIN_POINTS`] and [`MAX_POINTS`].
    pub fn max_points(&self) -> usize {
        (MAX_TOTAL_POINTS / self.by_key.len().max(1)).clamp(MIN_POINTS, MAX_POINTS)
    }

    /// Merges the oldest half of the points pairwise (sums, keeping the later end); room is
    /// kept for `limit` points, so pushes up to it do not grow a series' buffer past it.
    fn downsample(&mut self, limit: usize) {
        let len = self.ends.len();
        let half = len / 2;
        let merge = |v: &mut Points| {
            let mut out: Points = v[..half]
                .chunks(2)
                .map(|c| {
                    let mut sum = Point::default();
                    for &q in c {
                        sum += q;
                    }
                    sum
                })
                .collect();
            out.reserve_exact(limit.saturating_sub(out.len()));
            out.extend_from_slice(&v[half..]);
            *v = out;
        };
        let mut ends: Vec<Duration> = self.ends[..half]
            .chunks(2)
            .map(|c| *c.last().unwrap_or(&Duration::ZERO))
            .collect();
        ends.extend_from_slice(&self.ends[half..]);
        self.ends = ends;
        for p in self.by_key.values_mut() {
            // Idle keys' missing points are zeros (see Points); the merge needs the whole timeline.
            p.resize(len, Point::default());
            merge(p);
        }
    }

    /// Length of point i's interval.
    pub fn width(&self, i: usize) -> Duration {
        let start = if i == 0 {
            Duration::ZERO
        } else {
            self.ends[i - 1]
        };
        self.ends[i].saturating_sub(start)
    }

    /// Start of point i's interval.
    pub fn start(&self, i: usize) -> Duration {
        if i == 0 {
            Duration::ZERO
        } else {
            self.ends[i - 1]
        }
    }
}

#[cfg(test)]
mod tests {
    use kvmtrace_common::DetailKey;

    use super::*;

    fn counts(p: &Points) -> Vec<u64> {
        p.iter().map(|q| q.count).collect()
    }

    fn iv(sec: u64, n: u64) -> Interval {
        Interval {
            at: Duration::from_secs(sec),
            details: vec![(
                DetailKey {
                    tgid: 1,
                    tid: 2,
                    kind: 1,
                    a: 0x70,
                    b: 1,
                },
                n,
            )],
            ..Default::default()
        }
    }

    #[test]
    fn aligned_and_bounded() {
        let mut s = Series::default();
        for sec in 1..=(3 * MAX_POINTS as u64) {
            s.push(&iv(sec, sec % 7));
        }
        assert!(s.ends.len() <= MAX_POINTS);
        let p = s.by_key.values().next().unwrap();
        assert_eq!(p.len(), s.ends.len());
        // Nothing is lost by downsampling.
        let total: u64 = (1..=(3 * MAX_POINTS as u64)).map(|s| s % 7).sum();
        assert_eq!(counts(p).iter().sum::<u64>(), total);
        // The newest points keep the 1 s resolution; the oldest are coarser.
        assert_eq!(s.width(s.ends.len() - 1), Duration::from_secs(1));
        assert!(s.width(0) > Duration::from_secs(1));
        assert_eq!(
            *s.ends.last().unwrap(),
            Duration::from_secs(3 * MAX_POINTS as u64)
        );
    }

    /// Many series share the budget: each keeps fewer points, every count stays.
    #[test]
    fn many_series_share_the_points_budget() {
        let keys = 4 * MAX_TOTAL_POINTS / MAX_POINTS;
        let mut s = Series::default();
        let mut total = 0u64;
        for sec in 1..=1100u64 {
            let mut interval = Interval {
                at: Duration::from_secs(sec),
                ..Default::default()
            };
            for k in 0..keys as u32 {
                let key = kvmtrace_common::DetailKey {
                    tgid: 1,
                    tid: k,
                    kind: kvmtrace_common::DetailKind::Pio as u32,
                    a: 0x70,
                    b: 1,
                };
                interval.details.push((key, 1 + u64::from(k % 3)));
                total += 1 + u64::from(k % 3);
            }
            s.push(&interval);
        }
        assert_eq!(s.max_points(), MAX_POINTS / 4);
        assert!(s.ends.len() <= MAX_POINTS / 4, "{}", s.ends.len());
        let points: usize = s.by_key.values().map(Vec::capacity).sum();
        assert!(points <= MAX_TOTAL_POINTS, "{points} points kept");
        let counted: u64 = s.by_key.values().flat_map(counts).sum();
        assert_eq!(counted, total);
        assert_eq!(s.width(s.ends.len() - 1), Duration::from_secs(1));
    }

    #[test]
    fn late_keys_are_zero_filled() {
        let mut s = Series::default();
        s.push(&Interval {
            at: Duration::from_secs(1),
            ..Default::default()
        });
        s.push(&iv(2, 5));
        let p = s.by_key.values().next().unwrap();
        assert_eq!(counts(p), vec![0, 5]);
    }

    /// An idle key is not touched (its missing points are zeros), and downsampling lines it up
    /// with the timeline again without losing or moving its counts.
    #[test]
    fn idle_keys_stay_short_until_downsampled() {
        let mut s = Series::default();
        s.push(&iv(1, 3));
        for sec in 2..=(MAX_POINTS as u64) {
            s.push(&Interval {
                at: Duration::from_secs(sec),
                ..Default::default()
            });
        }
        assert_eq!(counts(s.by_key.values().next().unwrap()), vec![3]);
        s.push(&iv(MAX_POINTS as u64 + 1, 4));
        let p = s.by_key.values().next().unwrap();
        assert_eq!(p.len(), s.ends.len());
        assert_eq!(p[0].count, 3);
        assert_eq!(p.last().unwrap().count, 4);
        assert_eq!(counts(p).iter().sum::<u64>(), 7);
    }
}
