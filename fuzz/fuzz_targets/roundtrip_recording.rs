//! Write -> read is the identity: a recording built from the fuzzer's bytes (header, VMs and
//! intervals in any order, with or without END), written by the real [`Writer`] and read back by
//! the real reader, holds exactly what was written.
//!
//! The inputs stay within what the format holds, and the comparison allows for what the reader
//! does on purpose. Both are the only differences between what goes in and what comes out:
//! - an interval's `at` is at most u64::MAX ns (584 years): the format stores nanoseconds in a u64;
//! - a histogram's buckets are in ascending order, each below HIST_BUCKETS (the model's invariant,
//!   as the collector makes them);
//! - the header's start time and the tracer cost's seconds are finite (JSON has no NaN or
//!   infinity; they come from clocks);
//! - a thread's procfs time of u64::MAX reads as u64::MAX - 1 (the format stores value + 1,
//!   saturating);
//! - the reader escapes the text a report may show: header strings (not the tracepoint formats)
//!   and VM names, compared here with the same escaping applied to what was written.
#![no_main]

use arbitrary::{Result, Unstructured};
use kvmtrace::{
    model::{
        Interval, LatencyDelta, MapEntries, ThreadCpu,
        cost::{ProgramCost, SkippedRuns, TracerCost},
        identity::{Thread, Vm},
    },
    record::{End, Header, Writer, read_bytes},
};
use kvmtrace_common::{DetailKey, HIST_BUCKETS, LatencyKey};
use libfuzzer_sys::fuzz_target;

/// What is written, in order.
enum Step {
    Vm(Vm),
    Interval(Interval),
}

/// Keys seen so far: intervals mostly reuse them, as a real recording does (the dictionary).
#[derive(Default)]
struct Keys {
    latency: Vec<LatencyKey>,
    detail: Vec<DetailKey>,
}

fn finite(u: &mut Unstructured) -> Result<f64> {
    let v: f64 = u.arbitrary()?;
    Ok(if v.is_finite() { v } else { 0.0 })
}

fn header(u: &mut Unstructured) -> Result<Header> {
    Ok(Header {
        kvmtrace_version: u.arbitrary()?,
        host: u.arbitrary()?,
        kernel_release: u.arbitrary()?,
        kvm_module: u.arbitrary()?,
        formats: u.arbitrary()?,
        tracepoints_attached: u.arbitrary()?,
        tracepoints_missing: u.arbitrary()?,
        interval_ms: u.arbitrary()?,
        start_unix_secs: finite(u)?,
        command_line: u.arbitrary()?,
        slow_threshold_ns: u.arbitrary()?,
        guest_rips: u.arbitrary()?,
    })
}

fn vm(u: &mut Unstructured) -> Result<Vm> {
    let threads = u
        .arbitrary_iter::<(u32, String)>()?
        .map(|t| t.map(|(tid, comm)| Thread { tid, comm }))
        .collect::<Result<_>>()?;
    Ok(Vm {
        pid: u.arbitrary()?,
        name: u.arbitrary()?,
        aliases: u.arbitrary()?,
        threads,
    })
}

/// A key already seen, or a new one.
fn key<T: Copy>(
    u: &mut Unstructured,
    seen: &mut Vec<T>,
    new: impl FnOnce(&mut Unstructured) -> Result<T>,
) -> Result<T> {
    if !seen.is_empty() && u.ratio(3, 4)? {
        return u.choose(seen).copied();
    }
    let k = new(u)?;
    seen.push(k);
    Ok(k)
}

fn delta(u: &mut Unstructured) -> Result<LatencyDelta> {
    let mut buckets = Vec::new();
    let mut idx = 0usize;
    for step in u.arbitrary_iter::<(u8, u32)>()? {
        let (gap, n) = step?;
        idx += usize::from(gap);
        if idx >= HIST_BUCKETS {
            break;
        }
        buckets.push((idx as u16, n));
    }
    Ok(LatencyDelta {
        count: u.arbitrary()?,
        total_ns: u.arbitrary()?,
        min_ns: u.arbitrary()?,
        max_ns: u.arbitrary()?,
        buckets,
    })
}

fn thread_cpu(u: &mut Unstructured) -> Result<ThreadCpu> {
    let tracked_ns = u.arbitrary()?;
    let procfs_ns: Option<u64> = u.arbitrary()?;
    Ok(ThreadCpu {
        tgid: u.arbitrary()?,
        tid: u.arbitrary()?,
        tracked_ns,
        run_ns: u.arbitrary()?,
        off_run_blocked_ns: u.arbitrary()?,
        off_run_runnable_ns: u.arbitrary()?,
        off_user_blocked_ns: u.arbitrary()?,
        off_user_runnable_ns: u.arbitrary()?,
        procfs_ns,
        // As a live interval has it (not stored: the reader derives it).
        procfs_tracked_ns: procfs_ns.map_or(0, |_| tracked_ns),
    })
}

fn interval(u: &mut Unstructured, keys: &mut Keys) -> Result<Interval> {
    let mut iv = Interval {
        at: std::time::Duration::from_nanos(u.arbitrary()?),
        counters: u.arbitrary()?,
        ..Default::default()
    };
    for _ in 0..u.int_in_range(0..=8)? {
        let k = key(u, &mut keys.latency, |u| {
            Ok(LatencyKey::from_fields(u.arbitrary()?))
        })?;
        iv.latency.push((k, delta(u)?));
    }
    for _ in 0..u.int_in_range(0..=12)? {
        let k = key(u, &mut keys.detail, |u| {
            Ok(DetailKey {
                tgid: u.arbitrary()?,
                tid: u.arbitrary()?,
                kind: u.arbitrary()?,
                a: u.arbitrary()?,
                b: u.arbitrary()?,
            })
        })?;
        iv.details.push((k, u.arbitrary()?));
    }
    for _ in 0..u.int_in_range(0..=4)? {
        iv.threads.push(thread_cpu(u)?);
    }
    Ok(iv)
}

fn end(u: &mut Unstructured) -> Result<End> {
    let tracer_cost = if u.arbitrary()? {
        let programs = u
            .arbitrary_iter::<(String, u64, u64)>()?
            .map(|p| {
                p.map(|(program, runs, run_ns)| ProgramCost {
                    program,
                    runs,
                    run_ns,
                })
            })
            .collect::<Result<_>>()?;
        let skipped = u
            .arbitrary_iter::<(String, u64)>()?
            .map(|s| s.map(|(program, runs)| SkippedRuns { program, runs }))
            .collect::<Result<_>>()?;
        Some(TracerCost {
            secs: finite(u)?,
            programs,
            collector_cpu_ns: u.arbitrary()?,
            unavailable: u.arbitrary()?,
            skipped,
            stats_secs: if u.arbitrary()? {
                Some(finite(u)?)
            } else {
                None
            },
        })
    } else {
        None
    };
    let map_entries_at_stop = if u.arbitrary()? {
        Some(MapEntries {
            threads: u.arbitrary()?,
            latency: u.arbitrary()?,
            details: u.arbitrary()?,
            stacks: u.arbitrary()?,
        })
    } else {
        None
    };
    Ok(End {
        exits_in_flight: u.arbitrary()?,
        round_trips_in_flight: u.arbitrary()?,
        exits_ended_with_thread: u.arbitrary()?,
        map_entries_at_stop,
        tracer_cost,
        host_steal_pct: u.arbitrary::<Option<u16>>()?.map(|v| f64::from(v) / 100.0),
    })
}

/// The recording to write: a header, up to 16 VMs and intervals, and END or not (cut short).
fn recording(u: &mut Unstructured) -> Result<(Header, Vec<Step>, Option<End>)> {
    let header = header(u)?;
    let mut keys = Keys::default();
    let mut steps = Vec::new();
    while steps.len() < 16 && !u.is_empty() && u.arbitrary()? {
        steps.push(if u.ratio(1, 4)? {
            Step::Vm(vm(u)?)
        } else {
            Step::Interval(interval(u, &mut keys)?)
        });
    }
    let end = if u.arbitrary()? { Some(end(u)?) } else { None };
    Ok((header, steps, end))
}

fn assert_same_interval(got: &Interval, want: &Interval, i: usize) {
    assert_eq!(got.at, want.at, "interval {i}");
    assert_eq!(got.latency, want.latency, "interval {i}");
    assert_eq!(got.details, want.details, "interval {i}");
    assert_eq!(got.counters, want.counters, "interval {i}");
    let threads: Vec<ThreadCpu> = want
        .threads
        .iter()
        .map(|t| ThreadCpu {
            procfs_ns: t.procfs_ns.map(|v| v.min(u64::MAX - 1)),
            ..*t
        })
        .collect();
    assert_eq!(got.threads, threads, "interval {i}");
}

fuzz_target!(|data: &[u8]| {
    let Ok((header, steps, end)) = recording(&mut Unstructured::new(data)) else {
        return;
    };
    let mut w = Writer::new(Vec::new(), "a buffer", &header).expect("writing to memory");
    for step in &steps {
        match step {
            Step::Vm(vm) => w.vm(vm).expect("a VM record"),
            Step::Interval(iv) => w.interval(iv).expect("an interval record"),
        }
    }
    let bytes = match &end {
        Some(end) => w
            .finish_stream(end)
            .expect("the END record")
            .expect("a complete stream"),
        None => w.output().clone(),
    };

    let rec =
        read_bytes(&bytes).unwrap_or_else(|e| panic!("the written recording does not read: {e}"));
    assert_eq!(rec.version, kvmtrace::record::VERSION);
    let mut want_header = header;
    want_header.escape_text();
    assert_eq!(rec.header, want_header);
    let want_vms: Vec<Vm> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Vm(vm) => {
                let mut vm = vm.clone();
                vm.escape_text();
                Some(vm)
            }
            Step::Interval(_) => None,
        })
        .collect();
    assert_eq!(rec.vms, want_vms);
    let want_intervals: Vec<&Interval> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Interval(iv) => Some(iv),
            Step::Vm(_) => None,
        })
        .collect();
    assert_eq!(rec.intervals.len(), want_intervals.len());
    for (i, (got, want)) in rec.intervals.iter().zip(want_intervals).enumerate() {
        assert_same_interval(got, want, i);
    }
    assert_eq!(rec.end, end);
});
