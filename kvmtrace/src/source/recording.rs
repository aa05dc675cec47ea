//! Reports from a recording: the file's intervals are applied to an [`Aggregate`] exactly as the
//! live recorder applies drained ones, so `report -i` shows what the live report showed.

use std::{collections::BTreeMap, path::Path, time::Duration};

use kvmtrace_common::{Counter, LatencyKey};

use crate::{
    analyze::storms::Config as StormConfig,
    error::Error,
    model::identity::Vm,
    model::{Aggregate, InFlight},
    record::{self, End, Header, Recording},
    report::{self, Context, Report},
};

pub struct Loaded {
    pub header: Header,
    pub agg: Aggregate,
    pub vms: BTreeMap<u32, Vm>,
    pub in_flight: InFlight,
    pub cut_short: bool,
    /// End of the last complete interval, from the start of the recording.
    pub last_interval_at: Duration,
    /// What the recording cost, from its end record.
    pub tracer_cost: Option<crate::model::cost::TracerCost>,
    pub host_steal_pct: Option<f64>,
}

/// A time window over the recording, from its start.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub from: Option<Duration>,
    pub to: Option<Duration>,
}

pub fn load(path: &Path, window: Window) -> Result<Loaded, Error> {
    let rec = record::read_file(path)?;
    Ok(from_recording(rec, window))
}

pub fn from_recording(rec: Recording, window: Window) -> Loaded {
    let from = window.from.unwrap_or_default();
    let to = window.to.unwrap_or(Duration::MAX);
    let mut agg = Aggregate::default();
    // Counters are cumulative: a window's values are the last ones minus those before it.
    let mut before = [0u64; Counter::COUNT as usize];
    let mut window_start = Duration::ZERO;
    let mut last_at = Duration::ZERO;
    let mut threads_before: BTreeMap<(u32, u32), crate::model::ThreadCpu> = BTreeMap::new();
    for iv in &rec.intervals {
        last_at = iv.at;
        // Stacks are numbered from the start of the recording: those of intervals outside the
        // window are still declared, or later samples would name the wrong stack.
        if iv.at <= from || iv.at > to {
            agg.stacks.declare(&iv.stacks);
        }
        if iv.at <= from {
            before = iv.counters;
            window_start = iv.at;
            for t in &iv.threads {
                threads_before
                    .entry((t.tgid, t.tid))
                    .or_default()
                    .advance_to(t);
            }
            continue;
        }
        if iv.at > to {
            continue;
        }
        if agg.intervals == 0 {
            agg.series.origin = window_start;
        }
        agg.apply(iv);
    }
    for (c, b) in agg.counters.iter_mut().zip(before) {
        *c = c.saturating_sub(b);
    }
    agg.elapsed = agg.elapsed.saturating_sub(window_start);
    agg.slow.threshold_ns = rec.header.slow_threshold_ns;
    agg.rips.enabled = rec.header.guest_rips;
    for (thread, t) in agg.threads.iter_mut() {
        if let Some(b) = threads_before.get(thread) {
            *t = t.since(b);
        }
    }
    let reaches_end = window.to.is_none_or(|t| t >= last_at);
    let in_flight = match (&rec.end, reaches_end) {
        (Some(end), true) => in_flight_of(end),
        _ => InFlight::default(),
    };
    let mut vms = BTreeMap::new();
    for vm in rec.vms {
        vms.insert(vm.pid, vm); // later records update earlier ones
    }
    Loaded {
        tracer_cost: rec.end.as_ref().and_then(|e| e.tracer_cost.clone()),
        host_steal_pct: rec.end.as_ref().and_then(|e| e.host_steal_pct),
        header: rec.header,
        agg,
        vms,
        in_flight,
        cut_short: rec.end.is_none(),
        last_interval_at: last_at,
    }
}

pub fn in_flight_of(end: &End) -> InFlight {
    InFlight {
        exits: end
            .exits_in_flight
            .iter()
            .map(|(f, n)| (LatencyKey::from_fields(*f), *n))
            .collect(),
        round_trips: end.round_trips_in_flight,
        ended_with_thread: end
            .exits_ended_with_thread
            .iter()
            .map(|(f, n)| (LatencyKey::from_fields(*f), *n))
            .collect(),
        map_entries: end.map_entries_at_stop,
    }
}

pub fn end_of(in_flight: &InFlight) -> End {
    End {
        exits_in_flight: in_flight
            .exits
            .iter()
            .map(|(k, n)| (k.to_fields(), *n))
            .collect(),
        round_trips_in_flight: in_flight.round_trips,
        exits_ended_with_thread: in_flight
            .ended_with_thread
            .iter()
            .map(|(k, n)| (k.to_fields(), *n))
            .collect(),
        map_entries_at_stop: in_flight.map_entries,
        tracer_cost: None,
        host_steal_pct: None,
    }
}

/// The report of a loaded recording, with a note when the file was cut short.
/// `max_rows`: rows per detail table (the rest fold into "other keys"); None for every row.
pub fn build_report(
    loaded: &Loaded,
    per_vcpu: bool,
    storm: &StormConfig,
    max_rows: Option<usize>,
) -> Report {
    let ctx = Context {
        max_rows,
        storm,
        vms: &loaded.vms,
        per_vcpu,
        kvm_module: loaded.header.kvm_module.clone(),
        attached: loaded.header.tracepoints_attached.clone(),
        missing: loaded.header.tracepoints_missing.clone(),
        in_flight: &loaded.in_flight,
    };
    let mut report = report::build(&loaded.agg, &ctx);
    // The cost covers the whole recording: shown only for a report on all of it.
    if loaded.agg.elapsed >= loaded.last_interval_at {
        report.tracer_cost = loaded.tracer_cost.clone();
        report.host_steal_pct = loaded.host_steal_pct;
    }
    if loaded.cut_short {
        report.notes.push(format!(
            "the recording was cut short (the recorder was killed, or could not write, before it finished the file); this covers it up to its last complete interval, at {:.1} s.",
            loaded.last_interval_at.as_secs_f64()
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Interval,
        stacks::{HostStack, SampleKey, StackBatch},
    };

    /// A window that starts after the interval that declared a stack still names it right.
    #[test]
    fn a_window_keeps_the_stack_numbering_of_the_whole_recording() {
        let stack = |leaf: &str| HostStack {
            kernel: vec![leaf.into()],
            user: vec![],
        };
        let samples = |stack, n| {
            vec![(
                SampleKey {
                    stack,
                    ..SampleKey::default()
                },
                n,
            )]
        };
        let at = |s| Interval {
            at: Duration::from_secs(s),
            ..Interval::default()
        };
        let mut first = at(1);
        first.stacks = StackBatch {
            new_stacks: vec![stack("a"), stack("b")],
            samples: samples(0, 5),
            lost: 0,
        };
        let mut second = at(2);
        second.stacks.samples = samples(1, 3);
        let rec = Recording {
            intervals: vec![first, second],
            ..Recording::default()
        };
        let window = Window {
            from: Some(Duration::from_secs(1)),
            to: None,
        };
        let loaded = from_recording(rec, window);
        let profile = &loaded.agg.stacks;
        assert_eq!(profile.total(), 3);
        let (key, _) = profile.samples.iter().next().unwrap();
        assert_eq!(profile.stacks[key.stack as usize].kernel, ["b"]);
    }

    /// An interval that did not read a thread's procfs figure (many threads are read in turn)
    /// leaves the last reading in force, set against the wall time at that reading: in the
    /// whole recording and in a window.
    #[test]
    fn procfs_readings_carry_over_the_intervals_that_skip_them() {
        let thread = |tracked_s: u64, procfs_ms: Option<u64>| crate::model::ThreadCpu {
            tgid: 100,
            tid: 101,
            tracked_ns: tracked_s * 1_000_000_000,
            procfs_ns: procfs_ms.map(|ms| ms * 1_000_000),
            procfs_tracked_ns: procfs_ms.map_or(0, |_| tracked_s * 1_000_000_000),
            ..Default::default()
        };
        // procfs read at 1 s (100 ms), skipped at 2 s, read at 3 s (400 ms), skipped at 4 s.
        let readings = [Some(100), None, Some(400), None];
        let rec = || Recording {
            intervals: (1..=4u64)
                .zip(readings)
                .map(|(s, ms)| Interval {
                    at: Duration::from_secs(s),
                    threads: vec![thread(s, ms)],
                    ..Interval::default()
                })
                .collect(),
            ..Recording::default()
        };
        let whole = from_recording(rec(), Window::default()).agg.threads[&(100, 101)];
        assert_eq!(whole.tracked_ns, 4_000_000_000);
        assert_eq!(whole.procfs_share(), Some((400_000_000, 3_000_000_000)));
        // From 2 s: the readings at 1 s (in force at 2 s) and at 3 s.
        let window = Window {
            from: Some(Duration::from_secs(2)),
            to: None,
        };
        let part = from_recording(rec(), window).agg.threads[&(100, 101)];
        assert_eq!(part.tracked_ns, 2_000_000_000);
        assert_eq!(part.procfs_share(), Some((300_000_000, 2_000_000_000)));
        // To 2 s: nothing read since the reading at 1 s.
        let window = Window {
            from: Some(Duration::from_secs(1)),
            to: Some(Duration::from_secs(2)),
        };
        let none = from_recording(rec(), window).agg.threads[&(100, 101)];
        assert_eq!(none.procfs_share(), None);
    }
}
