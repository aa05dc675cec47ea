//! Storms as they start and end, for `record`'s live lines, at a cost that does not grow with
//! the recording. Re-detecting every storm of the whole recording at each interval walked every
//! point of every series: with 10 000 keys, 2.8 % of a CPU after one minute, growing with each
//! interval (the series keep up to [`crate::model::series::MAX_POINTS`] points).
//!
//! Each series (and each VM-wide sum) instead takes its newest point in a [`RunTracker`], the
//! rules [`storms::detect`] applies, and only a VM one of whose series began or ended a storm
//! in this interval is detected again, by [`storms::detect_vm`]: the lines printed are the
//! report's storms, looked for only where one can have changed.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    analyze::storms::{self, ALL_VCPUS, BASELINE_POINTS, Config, RunTracker, Storm},
    model::{
        identity::VcpuLabel,
        series::{Key, Point, Series, What},
    },
};

/// What [`StormWatch::update`] found in one interval.
#[derive(Debug, Default)]
pub struct StormChanges {
    pub started: Vec<Storm>,
    pub ended: Vec<Storm>,
}

pub struct StormWatch {
    cfg: Config,
    /// The series that are warm: a tracker only for those with a point that could be hot in
    /// the last [`BASELINE_POINTS`], or a storm going on (a few among thousands: a small map,
    /// looked up from the cache). A cold series' tracker would hold only its last points' rates,
    /// which are in the series, and is made again from them when it warms up.
    trackers: foldhash::HashMap<Key, Warm>,
    /// One per VM and key, summed over the VM's vCPUs (tid [`ALL_VCPUS`]).
    vm_trackers: foldhash::HashMap<Key, RunTracker>,
    /// Every storm of each VM, as last detected.
    known: BTreeMap<u32, Vec<Storm>>,
    /// Intervals taken, for the sweep of series that are gone.
    intervals: u64,
}

/// A warm series' tracker, and how many cold points it has taken in a row.
struct Warm {
    tracker: RunTracker,
    cold: usize,
}

/// Intervals between two sweeps of the trackers and storms of series no longer there (a
/// window's series drop keys without events; VMs come and go).
const SWEEP_EVERY: u64 = 64;

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

    /// Called once after each interval was added to `series` (a whole recording's, or a
    /// [`crate::model::series::Window`]'s): the storms that started and ended in it. `label`
    /// names the vCPU of a (pid, tid).
    pub fn update(
        &mut self,
        series: &Series,
        label: &dyn Fn(u32, u32) -> VcpuLabel,
    ) -> StormChanges {
        let Some(newest) = series.ends.len().checked_sub(1) else {
            return StormChanges::default();
        };
        let mut changed: BTreeSet<u32> = BTreeSet::new();
        self.step(series, newest, &mut changed);
        self.intervals += 1;
        if self.intervals.is_multiple_of(SWEEP_EVERY) {
            self.sweep(series);
        }
        let mut out = StormChanges::default();
        for pid in changed {
            let now = storms::detect_vm(series, &self.cfg, label, pid);
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

    /// Forgets the series no longer in `series`, and the VMs with none left.
    fn sweep(&mut self, series: &Series) {
        self.trackers.retain(|k, _| series.by_key.contains_key(k));
        let sums: foldhash::HashSet<(u32, What)> =
            series.by_key.keys().map(|k| (k.pid, k.what)).collect();
        self.vm_trackers
            .retain(|k, _| sums.contains(&(k.pid, k.what)));
        let vms: BTreeSet<u32> = sums.iter().map(|(pid, _)| *pid).collect();
        self.known.retain(|pid, _| vms.contains(pid));
    }

    /// Takes point `i` of every series and of the VM-wide sums; adds to `changed` the VMs where
    /// a storm began or ended there.
    fn step(&mut self, series: &Series, i: usize, changed: &mut BTreeSet<u32>) {
        let cfg = &self.cfg;
        let width = series.width(i);
        let mut sums: foldhash::HashMap<Key, Point> = Default::default();
        let mut cooled: Vec<Key> = Vec::new();
        for (key, points) in &series.by_key {
            // A series idle since its last point has no point here: zero (see Points).
            let at = |j: usize| points.get(j).copied().unwrap_or_default();
            let point = at(i);
            if point != Point::default() {
                let vm_key = Key {
                    tid: ALL_VCPUS,
                    ..*key
                };
                *sums.entry(vm_key).or_default() += point;
            }
            let costs_cpu = storms::time_is_cpu(&key.what);
            let cold = RunTracker::cold(cfg, point, width, costs_cpu);
            let warm = match self.trackers.get_mut(key) {
                Some(warm) => warm,
                None if cold => continue,
                None => {
                    // Its last points were all cold, so not hot: they are its baseline (zeros
                    // before a series began, as detect sees them).
                    let mut tracker = RunTracker::default();
                    for j in i.saturating_sub(BASELINE_POINTS)..i {
                        tracker.step(cfg, at(j), series.width(j), costs_cpu);
                    }
                    self.trackers
                        .entry(*key)
                        .or_insert(Warm { tracker, cold: 0 })
                }
            };
            if warm.tracker.step(cfg, point, width, costs_cpu).is_some() {
                changed.insert(key.pid);
            }
            warm.cold = if cold { warm.cold + 1 } else { 0 };
            if warm.cold >= BASELINE_POINTS && warm.tracker.run_len() == 0 {
                cooled.push(*key);
            }
        }
        for key in cooled {
            self.trackers.remove(&key);
        }
        // Every sum, also of keys seen on one vCPU only (detect sums keys of two or more: a
        // storm found here that detect does not report changes nothing), and the sums with no
        // events in this point, whose trackers take a zero. A sum new here was empty before:
        // zeros, as detect sees them.
        for key in self.vm_trackers.keys() {
            sums.entry(*key).or_default();
        }
        for (key, point) in sums {
            let costs_cpu = storms::time_is_cpu(&key.what);
            if self
                .vm_trackers
                .entry(key)
                .or_insert_with(|| RunTracker::after_zeros(i))
                .step(cfg, point, width, costs_cpu)
                .is_some()
            {
                changed.insert(key.pid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kvmtrace_common::{Detail, DetailKey, PortDir};

    use super::*;
    use crate::model::{Interval, series::MAX_POINTS};

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
            series.push(&interval(i, &rates(i), quiet));
            let c = w.update(&series, &by_tid);
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
    fn series_gone_from_a_window_are_forgotten() {
        // 20 other VMs with one write each, then only VM 1's 2 000/s (a rate that could be hot,
        // so it keeps a tracker): in a window of 5, the others' series go, and their sums'
        // trackers at the next sweep; their series' trackers are gone once cold.
        let mut window = crate::model::series::Window::default();
        let mut w = StormWatch::new(Config::default());
        for i in 1..=2 * SWEEP_EVERY as usize {
            let quiet = if i <= 3 { 20 } else { 0 };
            window.push(&interval(i, &[2_000], quiet), 5);
            w.update(&window.series, &by_tid);
        }
        assert_eq!(window.series.by_key.len(), 1);
        assert_eq!((w.trackers.len(), w.vm_trackers.len()), (1, 1));
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
}
