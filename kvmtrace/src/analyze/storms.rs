//! Exit storms: a (VM, vCPU, exit reason or detail key) whose rate exceeds an absolute threshold,
//! or jumps by a factor over its trailing baseline, for at least `sustain` intervals; or whose
//! handling costs at least `cost_pct` % of a CPU. Storms on related keys of one vCPU at the same
//! time (exit reason io, userspace IO, port 0x70) are one storm, named by its most specific key.

use kvmtrace_common::{Detail, UserspaceExit};

use serde::Serialize;

use super::diagnose::{Diagnosis, Facts, diagnose};
use crate::{
    model::{
        identity::VcpuLabel,
        series::{Key, Point, Points, Series, What},
    },
    names::detail_phrase,
    tp::{
        class::{ExitClass, exit_class, userspace_class},
        reasons::{exit_reason_name, userspace_exit_name},
    },
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Exits/s of one key on one vCPU that is a storm by itself.
    pub rate: f64,
    /// A rate this many times its trailing baseline is a storm...
    pub jump: f64,
    /// ...if it is also at least this many exits/s.
    pub jump_min_rate: f64,
    /// Intervals a condition must hold.
    pub sustain: usize,
    /// Handling time, in % of one CPU, that is a storm by itself.
    pub cost_pct: f64,
}

/// Points in the trailing baseline.
pub const BASELINE_POINTS: usize = 5;

impl Config {
    /// The defaults: 10 000/s, 10x baseline (above 1 000/s), 2 intervals, 50 % of a CPU.
    pub const DEFAULT: Config = Config {
        rate: 10_000.0,
        jump: 10.0,
        jump_min_rate: 1000.0,
        sustain: 2,
        cost_pct: 50.0,
    };
}

impl Default for Config {
    fn default() -> Self {
        Config::DEFAULT
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Storm {
    pub pid: u32,
    pub tid: u32,
    pub vcpu: StormVcpu,
    /// The storm's key, e.g. "port 0x0070 (RTC index) out", "HLT".
    pub what: String,
    /// Every reason and key that stormed with it.
    pub related: Vec<String>,
    pub start_secs: f64,
    pub end_secs: f64,
    /// Still going when the recording stopped.
    pub ongoing: bool,
    pub peak_rate: f64,
    pub mean_rate: f64,
    pub count: u64,
    /// Handling time during the storm (exit->entry, or VMM round trips, which are wall time),
    /// in % of the storm's duration: 100 % = one CPU's worth.
    pub cost_pct: Option<f64>,
    pub diagnosis: Option<Diagnosis>,
    #[serde(skip)]
    pub key: Option<Key>,
}

/// The vCPU a storm is on, or all of the VM's together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StormVcpu {
    One(VcpuLabel),
    All,
}

impl std::fmt::Display for StormVcpu {
    /// The vCPU's label ("0", "tid 1234"), or "all".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StormVcpu::One(label) => label.fmt(f),
            StormVcpu::All => f.write_str("all"),
        }
    }
}

impl Serialize for StormVcpu {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Index ranges [start, end) of the storms in one series. `costs_cpu`: the series' time is CPU
/// time (exit handling), so the cost criterion applies; wall-clock waits (HLT, VMM round trips,
/// which include the VMM sleeping) are not CPU burn and only rates count for them.
pub fn runs(series: &Series, p: &Points, cfg: &Config, costs_cpu: bool) -> Vec<(usize, usize)> {
    let n = series.ends.len().min(p.len());
    let mut tracker = RunTracker::default();
    let mut out = Vec::new();
    for (i, point) in p.iter().enumerate().take(n) {
        if let Some(RunChange::Ended { len }) =
            tracker.step(cfg, *point, series.width(i), costs_cpu)
        {
            out.push((i - len, i));
        }
    }
    if tracker.sustained(cfg) {
        out.push((n - tracker.run_len(), n));
    }
    out
}

/// Storm detection along one series, a point at a time: [`runs`] over a whole series, and
/// [`crate::analyze::storm_watch`] one interval at a time (the same rules, so the live lines
/// and the report agree).
#[derive(Clone, Debug, Default)]
pub struct RunTracker {
    /// Rates of the last [`BASELINE_POINTS`] points that were not hot: a ring, kept inline (the
    /// live lines step every series at each interval).
    baseline: [f64; BASELINE_POINTS],
    /// Rates in `baseline` so far (at most BASELINE_POINTS), and where the next one goes.
    filled: u8,
    next: u8,
    /// Points in the run going on (0: none).
    run_len: u32,
}

/// A point's rate (per second) and its handling time in % of one CPU (0 unless `costs_cpu`).
fn rate_and_cost(point: Point, width: std::time::Duration, costs_cpu: bool) -> (f64, f64) {
    let w = width.as_secs_f64();
    if w <= 0.0 {
        return (0.0, 0.0);
    }
    let cost = if costs_cpu {
        100.0 * point.ns as f64 / 1e9 / w
    } else {
        0.0
    };
    (point.count as f64 / w, cost)
}

/// What a point changed, by [`RunTracker::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunChange {
    /// The run going on has lasted `sustain` points: a storm from now on.
    Sustained,
    /// A storm of `len` points ended before this point.
    Ended { len: usize },
}

impl RunTracker {
    /// Takes the next point, of an interval `width` long.
    pub fn step(
        &mut self,
        cfg: &Config,
        point: Point,
        width: std::time::Duration,
        costs_cpu: bool,
    ) -> Option<RunChange> {
        let (rate, cost) = rate_and_cost(point, width, costs_cpu);
        let base = if self.filled == 0 {
            0.0
        } else {
            self.baseline.iter().take(self.filled.into()).sum::<f64>() / f64::from(self.filled)
        };
        let hot = rate >= cfg.rate
            || (base > 0.0 && rate >= cfg.jump_min_rate && rate >= cfg.jump * base)
            || cost >= cfg.cost_pct;
        if hot {
            self.run_len += 1;
            return (self.run_len() == cfg.sustain.max(1)).then_some(RunChange::Sustained);
        }
        self.baseline[usize::from(self.next)] = rate;
        self.next = (self.next + 1) % BASELINE_POINTS as u8;
        self.filled = (self.filled + 1).min(BASELINE_POINTS as u8);
        let len = self.run_len();
        self.run_len = 0;
        (len > 0 && len >= cfg.sustain).then_some(RunChange::Ended { len })
    }

    /// Whether `point` is not hot whatever the baseline: under the rate that is a storm by
    /// itself and under the least rate a jump needs, and not costly.
    pub fn cold(cfg: &Config, point: Point, width: std::time::Duration, costs_cpu: bool) -> bool {
        let (rate, cost) = rate_and_cost(point, width, costs_cpu);
        rate < cfg.rate && rate < cfg.jump_min_rate && cost < cfg.cost_pct
    }

    /// Points in the run going on (0: none).
    pub fn run_len(&self) -> usize {
        self.run_len as usize
    }

    /// Whether the run going on is a storm.
    pub fn sustained(&self, cfg: &Config) -> bool {
        self.run_len > 0 && self.run_len() >= cfg.sustain
    }
}

/// Whether a key's handling time is CPU time: exit handling in the kernel, except halts, which
/// block until an interrupt. VMM round trips are wall time (the VMM may sleep or wait).
pub fn time_is_cpu(what: &What) -> bool {
    match *what {
        What::Exit { isa, reason } => exit_class(isa, reason).is_cpu_time(),
        What::Detail(_) => false,
    }
}

/// A key's human name.
pub fn describe(what: &What) -> String {
    match what {
        What::Exit { isa, reason } => exit_reason_name(*isa, *reason),
        What::Detail(d) => detail_phrase(d),
    }
}

/// How specific a key is: detail keys name the culprit, exit reasons only the kind.
fn specificity(what: &What) -> u8 {
    match what {
        What::Detail(Detail::UserspaceExit(_)) => 1,
        What::Detail(_) => 2,
        What::Exit { .. } => 0,
    }
}

/// The family a key belongs to, so related storms merge: io / IO / port; npf, EPT, MMIO / gpa;
/// msr / MSR; cpuid / CPUID. None for keys that stand alone (HLT, interrupts...).
fn family(what: &What) -> Option<ExitClass> {
    let class = match *what {
        What::Exit { isa, reason } => exit_class(isa, reason),
        What::Detail(Detail::UserspaceExit(exit)) => userspace_class(exit),
        What::Detail(Detail::Port { .. }) => ExitClass::Io,
        What::Detail(Detail::Mmio { .. }) => ExitClass::Mmio,
        What::Detail(Detail::Msr { .. }) => ExitClass::Msr,
        What::Detail(Detail::Cpuid { .. }) => ExitClass::Cpuid,
        What::Detail(Detail::Other(_)) => ExitClass::Other,
    };
    matches!(
        class,
        ExitClass::Io | ExitClass::Mmio | ExitClass::Msr | ExitClass::Cpuid
    )
    .then_some(class)
}

fn facts(keys: &[What]) -> Facts {
    let mut f = Facts::default();
    for what in keys {
        match *what {
            What::Exit { isa, reason } => f.exit_reasons.push(exit_reason_name(isa, reason)),
            What::Detail(Detail::Port { port, .. }) => f.port = Some(port),
            What::Detail(Detail::Mmio { .. }) => f.mmio = true,
            What::Detail(Detail::Msr { index, .. }) => f.msr = Some(index),
            What::Detail(Detail::Cpuid { .. }) => f.cpuid = true,
            What::Detail(Detail::UserspaceExit(UserspaceExit::Reason(code))) => {
                f.userspace.push(userspace_exit_name(code))
            }
            What::Detail(_) => {}
        }
    }
    f
}

/// The tid of VM-wide series and storms: the sum over all vCPU threads.
pub const ALL_VCPUS: u32 = u32::MAX;

/// For keys seen on two or more threads of a VM, their VM-wide sum (a storm spread over vCPUs,
/// each below the threshold, is still a storm of the VM). Only the sums: the per-thread series
/// are not copied.
fn vm_wide(series: &Series, pid: Option<u32>) -> foldhash::HashMap<Key, Points> {
    let mut wide: foldhash::HashMap<Key, Points> = Default::default();
    let mut threads: foldhash::HashMap<(u32, What), u32> = Default::default();
    let keys = || {
        series
            .by_key
            .iter()
            .filter(|(k, _)| pid.is_none_or(|p| k.pid == p))
    };
    for (k, _) in keys() {
        *threads.entry((k.pid, k.what)).or_default() += 1;
    }
    for (k, p) in keys() {
        if threads[&(k.pid, k.what)] < 2 {
            continue;
        }
        let sum = wide
            .entry(Key {
                pid: k.pid,
                tid: ALL_VCPUS,
                what: k.what,
            })
            .or_default();
        add_points(sum, p);
    }
    wide
}

/// Adds `points` into `sum` point by point; either may be the shorter (a key idle at the end
/// has no trailing points: see [`Points`]).
fn add_points(sum: &mut Points, points: &Points) {
    if sum.len() < points.len() {
        sum.resize(points.len(), Point::default());
    }
    for (a, &b) in sum.iter_mut().zip(points) {
        *a += b;
    }
}

/// Every storm in the recording, merged and diagnosed, biggest first. `label` names the vCPU
/// of a (pid, tid).
pub fn detect(series: &Series, cfg: &Config, label: &dyn Fn(u32, u32) -> VcpuLabel) -> Vec<Storm> {
    detect_in(series, cfg, label, None)
}

/// [`detect`] for the VM of process `pid` only (storms never span VMs): what the live lines
/// re-detect when one of its series changed.
pub fn detect_vm(
    series: &Series,
    cfg: &Config,
    label: &dyn Fn(u32, u32) -> VcpuLabel,
    pid: u32,
) -> Vec<Storm> {
    detect_in(series, cfg, label, Some(pid))
}

fn detect_in(
    series: &Series,
    cfg: &Config,
    label: &dyn Fn(u32, u32) -> VcpuLabel,
    pid: Option<u32>,
) -> Vec<Storm> {
    let wide = vm_wide(series, pid);
    let points = |k: &Key| series.by_key.get(k).or_else(|| wide.get(k));
    // (key, start index, end index) of every run.
    let mut found: Vec<(Key, usize, usize)> = Vec::new();
    let own = series
        .by_key
        .iter()
        .filter(|(k, _)| pid.is_none_or(|p| k.pid == p));
    for (key, p) in own.chain(&wide) {
        if matches!(
            key.what,
            What::Detail(Detail::UserspaceExit(
                UserspaceExit::Restart { .. } | UserspaceExit::Error { .. }
            ))
        ) {
            continue;
        }
        for (s, e) in runs(series, p, cfg, time_is_cpu(&key.what)) {
            found.push((*key, s, e));
        }
    }
    // Most specific first: a port storm absorbs the io / IO storms of its vCPU that overlap it.
    // The key last: the series come in no particular order, and the result must not depend on it.
    found.sort_by_key(|(k, s, _)| {
        (
            std::cmp::Reverse(specificity(&k.what)),
            k.pid,
            k.tid,
            *s,
            k.what,
        )
    });
    let mut groups: Vec<(Key, usize, usize, Vec<Key>)> = Vec::new();
    for (key, s, e) in found {
        let fam = family(&key.what);
        let absorbed = groups.iter_mut().find(|(g, gs, ge, _)| {
            g.pid == key.pid
                && g.tid == key.tid
                && s < *ge
                && *gs < e
                && fam.is_some()
                && family(&g.what) == fam
                && specificity(&g.what) > specificity(&key.what)
        });
        match absorbed {
            Some(group) => group.3.push(key),
            None => groups.push((key, s, e, Vec::new())),
        }
    }
    // A VM-wide storm only stands where no single vCPU's storm of the same kind explains it.
    let per_vcpu: Vec<(Key, usize, usize)> = groups
        .iter()
        .filter(|g| g.0.tid != ALL_VCPUS)
        .map(|g| (g.0, g.1, g.2))
        .collect();
    groups.retain(|(k, s, e, _)| {
        k.tid != ALL_VCPUS
            || !per_vcpu.iter().any(|(v, vs, ve)| {
                v.pid == k.pid
                    && *s < *ve
                    && *vs < *e
                    && (v.what == k.what
                        || (family(&v.what).is_some() && family(&v.what) == family(&k.what)))
            })
    });
    let mut storms: Vec<Storm> = groups
        .into_iter()
        .filter_map(|(key, s, e, related)| {
            let p = points(&key)?;
            let secs = |i: usize| series.width(i).as_secs_f64();
            let count: u64 = p[s..e].iter().map(|q| q.count).sum();
            let duration: f64 = (s..e).map(secs).sum();
            let peak = (s..e)
                .map(|i| {
                    if secs(i) > 0.0 {
                        p[i].count as f64 / secs(i)
                    } else {
                        0.0
                    }
                })
                .fold(0.0, f64::max);
            // Handling time: the key's own, or that of the related reason that has it.
            let ns: u64 = std::iter::once(&key)
                .chain(&related)
                .filter_map(&points)
                // A related key idle before `e` has fewer points (see Points).
                .map(|p| p.iter().take(e).skip(s).map(|q| q.ns).sum::<u64>())
                .max()
                .unwrap_or(0);
            let mut whats = vec![key.what];
            whats.extend(related.iter().map(|k| k.what));
            Some(Storm {
                pid: key.pid,
                tid: key.tid,
                vcpu: if key.tid == ALL_VCPUS {
                    StormVcpu::All
                } else {
                    StormVcpu::One(label(key.pid, key.tid))
                },
                what: describe(&key.what),
                related: related.iter().map(|k| describe(&k.what)).collect(),
                start_secs: series.start(s).as_secs_f64(),
                end_secs: series.ends[e - 1].as_secs_f64(),
                ongoing: e == series.ends.len(),
                peak_rate: peak,
                mean_rate: if duration > 0.0 {
                    count as f64 / duration
                } else {
                    0.0
                },
                count,
                cost_pct: (ns > 0 && duration > 0.0).then(|| 100.0 * ns as f64 / 1e9 / duration),
                diagnosis: diagnose(&facts(&whats)),
                key: Some(key),
            })
        })
        .collect();
    storms.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.start_secs.total_cmp(&b.start_secs))
    });
    storms
}

/// Storms that started (`new`) or ended since `before`, for live lines. A storm is the same
/// one if its key is and the two overlap in time: when a long recording's oldest points are
/// merged (see [`Series`]), an old storm's start can move to an earlier interval end, and
/// matching on the exact start announced it again.
pub fn changes<'a>(before: &[Storm], now: &'a [Storm]) -> (Vec<&'a Storm>, Vec<&'a Storm>) {
    let same = |a: &Storm, b: &Storm| {
        a.key == b.key && a.start_secs < b.end_secs + 1e-9 && b.start_secs < a.end_secs + 1e-9
    };
    let started = now
        .iter()
        .filter(|s| !before.iter().any(|b| same(b, s)))
        .collect();
    let ended = now
        .iter()
        .filter(|s| !s.ongoing && before.iter().any(|b| same(b, s) && b.ongoing))
        .collect();
    (started, ended)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kvmtrace_common::DetailKey;

    use super::*;
    use crate::model::Interval;

    const PORT70: What = What::Detail(Detail::Port {
        port: 0x70,
        dir: kvmtrace_common::PortDir::Out,
        size: 1,
    });

    /// A series of one key on one thread from per-second counts.
    fn series_of(what: What, counts: &[u64]) -> Series {
        let mut s = Series::default();
        for (i, &n) in counts.iter().enumerate() {
            let mut iv = Interval {
                at: Duration::from_secs(i as u64 + 1),
                ..Default::default()
            };
            if let What::Detail(d) = what {
                iv.details.push((DetailKey::encode(1, 2, &d), n));
            }
            s.push(&iv);
        }
        s
    }

    fn by_tid(_pid: u32, tid: u32) -> VcpuLabel {
        VcpuLabel::Tid(tid)
    }

    fn spans(s: &Series) -> Vec<(f64, f64)> {
        detect(s, &Config::default(), &by_tid)
            .iter()
            .map(|s| (s.start_secs, s.end_secs))
            .collect()
    }

    #[test]
    fn step_is_one_storm_with_exact_bounds() {
        let s = series_of(PORT70, &[0, 0, 20_000, 20_000, 20_000, 0, 0]);
        let storms = detect(&s, &Config::default(), &by_tid);
        assert_eq!(storms.len(), 1);
        let st = &storms[0];
        assert_eq!((st.start_secs, st.end_secs), (2.0, 5.0));
        assert_eq!(st.mean_rate, 20_000.0);
        assert_eq!(st.what, "port 0x0070 (RTC index) out");
        assert_eq!(st.diagnosis.as_ref().unwrap().rule, "rtc");
        assert!(!st.ongoing);
    }

    /// Keys absent from the later intervals (idle, so they have fewer points): a storm spread
    /// over two vCPUs, one of which goes quiet a second before the other, is still summed point
    /// by point and ends where the sum drops.
    #[test]
    fn keys_that_go_idle_early_are_summed_point_by_point() {
        let What::Detail(port) = PORT70 else {
            unreachable!()
        };
        let mut s = Series::default();
        // tid 2: 6 000/s for 4 s; tid 3: 6 000/s for 3 s; then nothing from either for 3 s.
        for sec in 1..=7u64 {
            let mut iv = Interval {
                at: Duration::from_secs(sec),
                ..Default::default()
            };
            if sec <= 4 {
                iv.details.push((DetailKey::encode(1, 2, &port), 6_000));
            }
            if sec <= 3 {
                iv.details.push((DetailKey::encode(1, 3, &port), 6_000));
            }
            s.push(&iv);
        }
        let storms = detect(&s, &Config::default(), &by_tid);
        assert_eq!(storms.len(), 1, "{storms:#?}");
        assert_eq!((storms[0].start_secs, storms[0].end_secs), (0.0, 3.0));
        assert_eq!(storms[0].count, 36_000);
    }

    #[test]
    fn a_one_interval_spike_is_not_sustained() {
        assert!(spans(&series_of(PORT70, &[0, 50_000, 0, 0])).is_empty());
    }

    #[test]
    fn ramp_starts_where_it_crosses_the_threshold() {
        let s = series_of(PORT70, &[1000, 4000, 8000, 12_000, 16_000, 20_000]);
        assert_eq!(spans(&s), vec![(3.0, 6.0)]);
        assert!(detect(&s, &Config::default(), &by_tid)[0].ongoing);
    }

    #[test]
    fn noise_below_thresholds_is_quiet() {
        let noise = [800, 950, 700, 990, 850, 900, 760, 999, 820, 870];
        assert!(spans(&series_of(PORT70, &noise)).is_empty());
    }

    #[test]
    fn a_jump_over_the_baseline_is_a_storm_below_the_absolute_rate() {
        let s = series_of(PORT70, &[200, 210, 190, 200, 5000, 5200, 200]);
        assert_eq!(spans(&s), vec![(4.0, 6.0)]);
        // Without a baseline (from silence), only the absolute rate counts.
        assert!(spans(&series_of(PORT70, &[0, 0, 5000, 5000, 0])).is_empty());
    }

    #[test]
    fn related_keys_merge_into_the_most_specific() {
        let uexit_io = What::Detail(Detail::UserspaceExit(UserspaceExit::Reason(2)));
        let mut s = Series::default();
        for (i, n) in [0u64, 15_000, 15_000, 0].into_iter().enumerate() {
            let iv = Interval {
                at: Duration::from_secs(i as u64 + 1),
                details: vec![
                    (
                        DetailKey {
                            tgid: 1,
                            tid: 2,
                            kind: 1,
                            a: 0x70,
                            b: 1 | 1 << 8,
                        },
                        n,
                    ),
                    (
                        DetailKey {
                            tgid: 1,
                            tid: 2,
                            kind: 5,
                            a: 2,
                            b: 0,
                        },
                        n,
                    ),
                ],
                ..Default::default()
            };
            s.push(&iv);
        }
        let storms = detect(&s, &Config::default(), &by_tid);
        assert_eq!(storms.len(), 1, "{storms:#?}");
        assert_eq!(storms[0].what, "port 0x0070 (RTC index) out");
        assert_eq!(storms[0].related, vec![describe(&uexit_io)]);
    }

    #[test]
    fn cpu_cost_makes_a_storm_but_wall_time_waits_do_not() {
        let mut s = Series::default();
        for (i, ns) in [0u64, 700_000_000, 800_000_000, 0].into_iter().enumerate() {
            let mut iv = Interval {
                at: Duration::from_secs(i as u64 + 1),
                ..Default::default()
            };
            for (kind, reason) in [(0, 0x7c), (1, 2)] {
                iv.latency.push((
                    kvmtrace_common::LatencyKey {
                        tgid: 1,
                        tid: 2,
                        vcpu_id: 0,
                        isa: if kind == 0 { 2 } else { 0 },
                        reason,
                        kind,
                    },
                    crate::model::LatencyDelta {
                        count: 100,
                        total_ns: ns,
                        min_ns: 1,
                        max_ns: 1,
                        buckets: vec![],
                    },
                ));
            }
            s.push(&iv);
        }
        let storms = detect(&s, &Config::default(), &by_tid);
        assert_eq!(storms.len(), 1, "{storms:#?}");
        assert_eq!(
            storms[0].what, "msr",
            "a 100/s MSR storm costing 70-80 % of a CPU"
        );
        assert!((storms[0].cost_pct.unwrap() - 75.0).abs() < 1e-9);
    }

    /// Two vCPUs at 6 000/s each on the same port: neither is a storm, the VM is.
    #[test]
    fn a_storm_spread_over_vcpus_is_a_vm_wide_storm() {
        let mut s = Series::default();
        for (i, n) in [0u64, 6000, 6000, 6000, 0].into_iter().enumerate() {
            let details = (2..4)
                .map(|tid| {
                    (
                        DetailKey {
                            tgid: 1,
                            tid,
                            kind: 1,
                            a: 0x70,
                            b: 1 | 1 << 8,
                        },
                        n,
                    )
                })
                .collect();
            s.push(&Interval {
                at: Duration::from_secs(i as u64 + 1),
                details,
                ..Default::default()
            });
        }
        let storms = detect(&s, &Config::default(), &by_tid);
        assert_eq!(storms.len(), 1, "{storms:#?}");
        assert_eq!(
            (storms[0].tid, storms[0].mean_rate, storms[0].count),
            (ALL_VCPUS, 12_000.0, 36_000)
        );

        // One vCPU over the threshold on its own: its storm explains the VM's, which is dropped.
        let mut s = Series::default();
        for (i, n) in [0u64, 15_000, 15_000, 0].into_iter().enumerate() {
            let details = vec![
                (
                    DetailKey {
                        tgid: 1,
                        tid: 2,
                        kind: 1,
                        a: 0x70,
                        b: 1 | 1 << 8,
                    },
                    n,
                ),
                (
                    DetailKey {
                        tgid: 1,
                        tid: 3,
                        kind: 1,
                        a: 0x70,
                        b: 1 | 1 << 8,
                    },
                    10,
                ),
            ];
            s.push(&Interval {
                at: Duration::from_secs(i as u64 + 1),
                details,
                ..Default::default()
            });
        }
        let storms = detect(&s, &Config::default(), &by_tid);
        assert_eq!(storms.iter().map(|s| s.tid).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn live_changes() {
        let a = detect(
            &series_of(PORT70, &[0, 20_000, 20_000]),
            &Config::default(),
            &by_tid,
        );
        let b = detect(
            &series_of(PORT70, &[0, 20_000, 20_000, 0]),
            &Config::default(),
            &by_tid,
        );
        let (started, ended) = changes(&[], &a);
        assert_eq!((started.len(), ended.len()), (1, 0));
        let (started, ended) = changes(&a, &b);
        assert_eq!((started.len(), ended.len()), (0, 1));
    }
}
