//! Storms as they start and end, at a cost that does not grow with the recording: `record`'s
//! live lines, and the storms going on for `serve` and `top`. Re-detecting every storm of the
//! whole recording at each interval walked every point of every series: with 10 000 keys, 2.8 %
//! of a CPU after one minute, growing with each interval (the series keep up to
//! [`crate::model::series::MAX_POINTS`] points).
//!
//! Each series (and each VM-wide sum) instead takes its newest point in a [`RunTracker`], the
//! rules [`storms::detect`] applies, and only a VM one of whose series began or ended a storm
//! in this interval is detected again ([`History::storms_of`]): the lines printed are the
//! report's storms, looked for only where one can have changed.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use crate::{
    analyze::storms::{self, ALL_VCPUS, BASELINE_POINTS, Config, RunTracker, Storm},
    model::{
        identity::VcpuLabel,
        series::{Column, Key, Point, Series, Window},
    },
};

/// What [`StormWatch::update`] found in one interval.
#[derive(Debug, Default)]
pub struct StormChanges {
    pub started: Vec<Storm>,
    pub ended: Vec<Storm>,
}

/// Where the intervals before the newest are: the whole recording's series, or a [`Window`].
pub trait History {
    /// The points of `key` (a VM-wide sum for tid [`ALL_VCPUS`]) in the `n` intervals before
    /// the newest, oldest first (fewer where there are not as many), each with its interval's
    /// width; zero where it had no events.
    fn before_newest(&self, key: &Key, n: usize) -> Vec<(Point, Duration)>;

    /// Every storm of the VM of process `pid`, as [`storms::detect`] finds them.
    fn storms_of(
        &self,
        cfg: &Config,
        label: &dyn Fn(u32, u32) -> VcpuLabel,
        pid: u32,
    ) -> Vec<Storm>;
}

/// Whether `key` (or, for tid [`ALL_VCPUS`], the VM-wide sum `sum`) is one of `k`'s.
fn counts_in(sum: &Key, k: &Key) -> bool {
    if sum.tid == ALL_VCPUS {
        k.pid == sum.pid && k.what == sum.what
    } else {
        k == sum
    }
}

impl History for Series {
    fn before_newest(&self, key: &Key, n: usize) -> Vec<(Point, Duration)> {
        let newest = self.ends.len().saturating_sub(1);
        let point = |j: usize| {
            let at = |p: &Vec<Point>| p.get(j).copied().unwrap_or_default();
            if key.tid != ALL_VCPUS {
                return self.by_key.get(key).map(at).unwrap_or_default();
            }
            let mut sum = Point::default();
            for (_, p) in self.by_key.iter().filter(|(k, _)| counts_in(key, k)) {
                sum += at(p);
            }
            sum
        };
        (newest.saturating_sub(n)..newest)
            .map(|j| (point(j), self.width(j)))
            .collect()
    }

    fn storms_of(
        &self,
        cfg: &Config,
        label: &dyn Fn(u32, u32) -> VcpuLabel,
        pid: u32,
    ) -> Vec<Storm> {
        storms::detect_vm(self, cfg, label, pid)
    }
}

impl History for Window {
    fn before_newest(&self, key: &Key, n: usize) -> Vec<(Point, Duration)> {
        let newest = self.len().saturating_sub(1);
        (newest.saturating_sub(n)..newest)
            .map(|j| {
                let mut sum = Point::default();
                for (_, p) in self.column(j).iter().filter(|(k, _)| counts_in(key, k)) {
                    sum += *p;
                }
                (sum, self.width(j))
            })
            .collect()
    }

    fn storms_of(
        &self,
        cfg: &Config,
        label: &dyn Fn(u32, u32) -> VcpuLabel,
        pid: u32,
    ) -> Vec<Storm> {
        storms::detect(&self.series(|k| k.pid == pid), cfg, label)
    }
}

pub struct StormWatch {
    cfg: Config,
    /// The series that are warm: a tracker only for those with a point that could be hot in
    /// the last [`BASELINE_POINTS`], or a storm going on (a few among thousands: small maps,
    /// looked up from the cache). A cold series' tracker would hold only its last points'
    /// rates, which the [`History`] has, and is made again from them when it warms up.
    trackers: foldhash::HashMap<Key, Warm>,
    /// The same for the VM-wide sums (tid [`ALL_VCPUS`]).
    vm_trackers: foldhash::HashMap<Key, Warm>,
    /// Every storm of each VM, as last detected (kept: the VMs of a recording have all their
    /// storms in its series, and an old one is not announced again).
    known: BTreeMap<u32, Vec<Storm>>,
    /// Intervals taken.
    intervals: u64,
}

/// A warm series' tracker, how many cold points it has taken in a row, and the last interval
/// it took a point in.
struct Warm {
    tracker: RunTracker,
    cold: usize,
    stepped: u64,
}

impl StormWatch {
    pub fn new(cfg: Config) -> StormWatch {
        StormWatch {
            cfg,
            trackers: Default::default(),
            vm_trackers: Default::default(),
            known: BTreeMap::new(),
            intervals: 0,
        }
    }

    /// Called once for each interval, after it was added to `history`: its points `column`,
    /// its `width`. Returns the storms that started and ended in it; `label` names the vCPU of
    /// a (pid, tid).
    pub fn update(
        &mut self,
        column: &Column,
        width: Duration,
        history: &dyn History,
        label: &dyn Fn(u32, u32) -> VcpuLabel,
    ) -> StormChanges {
        self.intervals += 1;
        let mut changed: BTreeSet<u32> = BTreeSet::new();
        let mut step = Step {
            cfg: &self.cfg,
            width,
            history,
            now: self.intervals,
            changed: &mut changed,
        };
        let mut sums: foldhash::HashMap<Key, Point> = Default::default();
        for &(key, point) in column {
            if point != Point::default() {
                let vm_key = Key {
                    tid: ALL_VCPUS,
                    ..key
                };
                *sums.entry(vm_key).or_default() += point;
            }
            step.take(&mut self.trackers, key, point);
        }
        // Every sum, also of keys seen on one vCPU only (detect sums keys of two or more: a
        // storm found here that detect does not report changes nothing).
        for (key, point) in sums {
            step.take(&mut self.vm_trackers, key, point);
        }
        // The warm ones without events in this interval take a zero.
        step.idle(&mut self.trackers);
        step.idle(&mut self.vm_trackers);
        let mut out = StormChanges::default();
        for pid in changed {
            let now = history.storms_of(&self.cfg, label, pid);
            let before = self.known.get(&pid).map_or(&[][..], Vec::as_slice);
            let (started, ended) = storms::changes(before, &now);
            out.started.extend(started.into_iter().cloned());
            out.ended.extend(ended.into_iter().cloned());
            self.known.insert(pid, now);
        }
        out
    }

    /// The storms going on, as of the last [`StormWatch::update`].
    pub fn ongoing(&self) -> impl Iterator<Item = &Storm> {
        self.known.values().flatten().filter(|s| s.ongoing)
    }

    /// Forgets the storms of a VM that is gone (serve and top: VMs come and go).
    pub fn forget(&mut self, pid: u32) {
        self.known.remove(&pid);
    }
}

/// One interval's points going into the trackers.
struct Step<'a> {
    cfg: &'a Config,
    width: Duration,
    history: &'a dyn History,
    now: u64,
    changed: &'a mut BTreeSet<u32>,
}

impl Step<'_> {
    /// Steps `key`'s tracker with `point` if it is warm or `point` could be hot (a new tracker
    /// is made from the key's last points, all cold: its baseline, zeros before a series
    /// began, as detect sees them); drops it once cold for as long as its baseline.
    fn take(&mut self, trackers: &mut foldhash::HashMap<Key, Warm>, key: Key, point: Point) {
        let costs_cpu = storms::time_is_cpu(&key.what);
        let cold = RunTracker::cold(self.cfg, point, self.width, costs_cpu);
        let warm = match trackers.get_mut(&key) {
            Some(warm) => warm,
            None if cold => return,
            None => {
                let mut tracker = RunTracker::default();
                for (p, width) in self.history.before_newest(&key, BASELINE_POINTS) {
                    tracker.step(self.cfg, p, width, costs_cpu);
                }
                let warm = Warm {
                    tracker,
                    cold: 0,
                    stepped: 0,
                };
                trackers.entry(key).or_insert(warm)
            }
        };
        warm.stepped = self.now;
        if warm
            .tracker
            .step(self.cfg, point, self.width, costs_cpu)
            .is_some()
        {
            self.changed.insert(key.pid);
        }
        warm.cold = if cold { warm.cold + 1 } else { 0 };
        if warm.cold >= BASELINE_POINTS && warm.tracker.run_len() == 0 {
            trackers.remove(&key);
        }
    }

    /// A zero point for every tracker that took none in this interval.
    fn idle(&mut self, trackers: &mut foldhash::HashMap<Key, Warm>) {
        let idle: Vec<Key> = trackers
            .iter()
            .filter(|(_, w)| w.stepped != self.now)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            self.take(trackers, key, Point::default());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kvmtrace_common::{Detail, DetailKey, PortDir};

    use super::*;
    use crate::model::{
        Interval,
        series::{MAX_POINTS, column},
    };

    const PORT70: Detail = Detail::Port {
        port: 0x70,
        dir: PortDir::Out,
        size: 1,
    };

    fn by_tid(_pid: u32, tid: u32) -> VcpuLabel {
        VcpuLabel::Tid(tid)
    }

    /// Interval `i` (1 s long) with `counts[j]` writes to port 0x70 on thread `10 + j` of VM 1
    /// (none: no key), and one write on each of `quiet` other VMs.
    fn interval(i: usize, counts: &[u64], quiet: u32) -> Interval {
        let mut iv = Interval {
            at: Duration::from_secs(i as u64),
            ..Default::default()
        };
        for (j, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            iv.details
                .push((DetailKey::encode(1, 10 + j as u32, &PORT70), n));
        }
        for vm in 0..quiet {
            iv.details
                .push((DetailKey::encode(100 + vm, 1, &PORT70), 1));
        }
        iv
    }

    /// Storm lines of one interval: (interval, started (tid, start), ended (tid, start, end,
    /// count)).
    type Lines = (usize, Vec<(u32, f64)>, Vec<(u32, f64, f64, u64)>);

    /// Feeds `rates(i)` for intervals 1..=n; returns the series and the lines.
    fn watch(n: usize, quiet: u32, rates: impl Fn(usize) -> Vec<u64>) -> (Series, Vec<Lines>) {
        let mut series = Series::default();
        let mut w = StormWatch::new(Config::default());
        let mut lines = Vec::new();
        for i in 1..=n {
            let iv = interval(i, &rates(i), quiet);
            series.push(&iv);
            let width = series.width(series.ends.len() - 1);
            let c = w.update(&column(&iv), width, &series, &by_tid);
            if !c.started.is_empty() || !c.ended.is_empty() {
                lines.push((
                    i,
                    c.started.iter().map(|s| (s.tid, s.start_secs)).collect(),
                    c.ended
                        .iter()
                        .map(|s| (s.tid, s.start_secs, s.end_secs, s.count))
                        .collect(),
                ));
            }
        }
        (series, lines)
    }

    #[test]
    fn a_storm_is_announced_when_sustained_and_when_it_ends() {
        // 20 000/s on vCPU 10 in seconds 11-15 (intervals ending at 11..=15 s), 100/s otherwise.
        let (series, lines) = watch(30, 3, |i| {
            vec![if (11..=15).contains(&i) { 20_000 } else { 100 }]
        });
        assert_eq!(
            lines,
            vec![
                (12, vec![(10, 10.0)], vec![]),
                (16, vec![], vec![(10, 10.0, 15.0, 100_000)]),
            ]
        );
        // The same storm as the report's.
        let report = storms::detect(&series, &Config::default(), &by_tid);
        assert_eq!(report.len(), 1);
        assert_eq!(
            (report[0].start_secs, report[0].end_secs, report[0].count),
            (10.0, 15.0, 100_000)
        );
    }

    #[test]
    fn a_storm_spread_over_vcpus_is_the_vms() {
        // Four vCPUs at 4 000/s each after 1 000/s: none a storm (under 10 000/s, 4x), the VM's
        // 16 000/s is.
        let (_, lines) = watch(20, 0, |i| {
            let n = if (6..=9).contains(&i) { 4_000 } else { 1_000 };
            vec![n; 4]
        });
        assert_eq!(
            lines,
            vec![
                (7, vec![(ALL_VCPUS, 5.0)], vec![]),
                (10, vec![], vec![(ALL_VCPUS, 5.0, 9.0, 64_000)]),
            ]
        );
    }

    #[test]
    fn a_jump_storm_ends_when_the_rate_falls_back() {
        // 2 000/s after 200/s: 10x the baseline, under the absolute 10 000/s; 40 intervals long.
        let (_, lines) = watch(80, 0, |i| {
            vec![if (21..=60).contains(&i) { 2_000 } else { 200 }]
        });
        assert_eq!(
            lines,
            vec![
                (22, vec![(10, 20.0)], vec![]),
                (61, vec![], vec![(10, 20.0, 60.0, 80_000)]),
            ]
        );
    }

    #[test]
    fn merging_old_points_announces_nothing_again() {
        // A storm early, then past the series' point limit (old points merged: the storm's first
        // point merged with the quiet one before it starts a second earlier), then another.
        let n = MAX_POINTS + 200;
        let late = MAX_POINTS + 100;
        let (series, lines) = watch(n, 2, |i| {
            let hot = (12..=16).contains(&i) || (late..late + 5).contains(&i);
            vec![if hot { 20_000 } else { 100 }]
        });
        let start = (late - 1) as f64;
        assert_eq!(
            lines,
            vec![
                (13, vec![(10, 11.0)], vec![]),
                (17, vec![], vec![(10, 11.0, 16.0, 100_000)]),
                (late + 1, vec![(10, start)], vec![]),
                (late + 5, vec![], vec![(10, start, start + 5.0, 100_000)]),
            ]
        );
        assert_eq!(
            storms::detect(&series, &Config::default(), &by_tid).len(),
            2
        );
    }

    #[test]
    fn trackers_of_series_that_went_quiet_are_dropped() {
        // VM 1's 2 000/s all along (a rate that could be hot: it keeps its trackers), 20 other
        // VMs' 2 000/s for 3 s, then nothing: their trackers go once cold for 5 intervals.
        let mut window = Window::default();
        let mut w = StormWatch::new(Config::default());
        for i in 1..=20 {
            let mut iv = interval(i, &[2_000], 0);
            if i <= 3 {
                for vm in 0..20 {
                    iv.details
                        .push((DetailKey::encode(100 + vm, 1, &PORT70), 2_000));
                }
            }
            window.push(&iv, 5);
            let (column, width) = window.newest().unwrap();
            w.update(column, width, &window, &by_tid);
            let expected = if i < 3 + BASELINE_POINTS { 21 } else { 1 };
            assert_eq!(w.trackers.len(), expected, "at {i}");
            assert_eq!(w.vm_trackers.len(), expected, "at {i}");
        }
        assert_eq!(window.len(), 5);
    }

    #[test]
    fn a_series_new_in_the_recording_has_its_empty_start_in_its_baseline() {
        // Port 0x70 only from second 21: 500/s, then 4 000/s. As detect sees it, the baseline
        // before the jump is (0 + 0 + 0 + 0 + 500) / 5 = 100/s, so 4 000/s is a 40x jump: a
        // storm (without the empty start, 8x of 500/s: none).
        let (series, lines) = watch(40, 2, |i| match i {
            ..=20 => vec![0],
            21 => vec![500],
            22..=30 => vec![4_000],
            _ => vec![0],
        });
        let report = storms::detect(&series, &Config::default(), &by_tid);
        assert_eq!(report.len(), 1, "{report:#?}");
        assert_eq!(
            lines,
            vec![
                (23, vec![(10, 21.0)], vec![]),
                (31, vec![], vec![(10, 21.0, 30.0, 36_000)]),
            ]
        );
    }

    #[test]
    fn a_forgotten_vm_has_no_storm_going_on() {
        // A storm going on in VM 1 (20 000/s for 3 s), then its process is gone: a new process
        // with its pid must not inherit the storm.
        let mut window = Window::default();
        let mut w = StormWatch::new(Config::default());
        for i in 1..=3 {
            window.push(&interval(i, &[20_000], 0), 30);
            let (column, width) = window.newest().unwrap();
            w.update(column, width, &window, &by_tid);
        }
        assert_eq!(w.ongoing().map(|s| s.pid).collect::<Vec<_>>(), vec![1]);
        w.forget(1);
        assert_eq!(w.ongoing().count(), 0);
    }
}
