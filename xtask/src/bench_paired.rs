//! Per-event cost of kvmtrace's programs against empty programs on the very same events: the
//! empty classic programs, the empty raw ones and `kvmtrace record` are attached at once, so
//! every event runs all three and the ratios do not carry most of the run-to-run noise of
//! measuring one configuration after another (±20 % on this host). Each tracepoint has its own
//! empty programs (`kvmtrace_floor_<stem>[_raw]` beside `kvmtrace_<stem>[_raw]`), so a program
//! on a rare event, which runs with cold caches, is set against an empty program on that event,
//! not against the hot CPUID loop's. Medians over rounds; the median still moves between runs
//! (kvm_cpuid 1.39x-1.45x with the same code, five runs).

use std::{collections::BTreeMap, sync::mpsc::Receiver, time::Duration};

use kvmtrace_common::programs::{self, FLOOR_PREFIX};

use crate::bench::{
    Config, bpf_stats_on, bpf_stats_restore, loop_guest, prog_stats, runs_by_name, start, stop,
    wait_for,
};

/// Each kvmtrace program's per-event cost must stay within this factor of the empty classic
/// program's on the same tracepoint.
const BAR: f64 = 1.3;

/// The empty programs on the tracepoint of kvmtrace program `name` (`kvmtrace_<stem>` or
/// `kvmtrace_<stem>_raw`): (classic, raw).
fn floors_of(name: &str) -> Option<(String, String)> {
    if !name.starts_with("kvmtrace_") || name.starts_with(FLOOR_PREFIX) {
        return None;
    }
    let stem = programs::stem(name);
    Some((
        format!("{FLOOR_PREFIX}{stem}"),
        format!("{FLOOR_PREFIX}{stem}_raw"),
    ))
}

/// Per program and round: ns per run, runs.
type Rounds = BTreeMap<String, Vec<(f64, u64)>>;

/// A guest loop that makes every other probe's events hot: port writes and MMIO writes that
/// the VMM handles (kvm_pio or kvm_mmio, kvm_userspace_exit and two kvm_fpu per exit) and MSR
/// reads the kernel handles (kvm_msr), 300 ms each in turn.
const MIXED_LOOP: &str = "pio_out,port=0x70,ms=300;mmio_w,ms=300;rdmsr,ms=300";

/// Per-event cost of each kvmtrace program beside the empty programs on its tracepoint, in three
/// runs of `rounds` rounds of `secs` seconds: the bench's CPUID loop (`guest_pid`), then a
/// guest of its own making the other events, then two host threads switching back and forth
/// (the CPUID guest is stopped meanwhile, so no program runs for its events). Each program is
/// judged where its events are hot.
pub fn paired_cost(
    guest_pid: u32,
    rates: &Receiver<String>,
    rounds: usize,
    secs: usize,
) -> anyhow::Result<()> {
    let cpuid = paired_rounds(guest_pid, Some(rates), rounds, secs)?;
    let (mut mixed_guest, mixed_lines) = loop_guest("kvmtrace-bench-mixed", MIXED_LOOP, 600)?;
    // With the CPUID guest (still traced) stopped: the mixed guest's events, then sched_switch
    // for the host's other threads (most of its runs on a busy host), hot: two threads hand a
    // token back and forth.
    let measured = crate::bench_loops::with_stopped(guest_pid, || {
        let mixed = wait_for(&mixed_lines, "the mixed guest", |l| l.starts_with("result"))
            .and_then(|()| paired_rounds(mixed_guest.id(), None, rounds, secs));
        let _ = mixed_guest.kill();
        let _ = mixed_guest.wait();
        let mixed = mixed?;
        let switches = with_ping_pong(|| paired_rounds(guest_pid, None, rounds, secs))?;
        Ok((mixed, switches))
    });
    // (Again, for when the CPUID guest could not be stopped.)
    let _ = mixed_guest.kill();
    let _ = mixed_guest.wait();
    let (mixed, switches) = measured?;
    println!(
        "\nProgram cost per event, all attached at once (the same events; medians of {rounds} rounds of {secs} s; each against the empty programs on its own tracepoint):"
    );
    let mut over = Vec::new();
    print_table("the CPUID loop", &cpuid, |p| p.contains("cpuid"), &mut over);
    print_table(
        &format!("port, MMIO and MSR loop ({MIXED_LOOP})"),
        &mixed,
        |p| !p.contains("cpuid") && !p.contains("switch"),
        &mut over,
    );
    print_table(
        "two host threads handing a token back and forth",
        &switches,
        |p| p.contains("switch"),
        &mut over,
    );
    if over.is_empty() {
        println!(
            "  every program within {BAR}x of the empty classic program on its tracepoint, where its events are hot"
        );
    } else {
        println!("  over the bar of {BAR}x: {}", over.join(", "));
    }
    Ok(())
}

/// Runs `f` while two threads hand a token back and forth through channels: each hand-off
/// blocks one thread and wakes the other, a context switch or two each time.
fn with_ping_pong<T>(f: impl FnOnce() -> T) -> T {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::channel,
    };
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (to_b, from_a) = channel::<()>();
    let (to_a, from_b) = channel::<()>();
    let b = std::thread::spawn(move || {
        while from_a.recv().is_ok() {
            if to_a.send(()).is_err() {
                break;
            }
        }
    });
    let a = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if to_b.send(()).is_err() || from_b.recv().is_err() {
                    break;
                }
            }
        })
    };
    let result = f();
    stop.store(true, Ordering::Relaxed);
    let _ = a.join();
    let _ = b.join();
    result
}

/// `rounds` rounds of `secs` seconds with the empty classic programs, the empty raw ones and
/// `kvmtrace record -p guest_pid` attached at once: per program, its (ns per run, runs) in each
/// round, and each kvmtrace program's per-round ratio to the empty classic program on its
/// tracepoint.
fn paired_rounds(
    guest_pid: u32,
    rates: Option<&Receiver<String>>,
    rounds: usize,
    secs: usize,
) -> anyhow::Result<(Rounds, BTreeMap<String, Vec<f64>>)> {
    let previous = bpf_stats_on()?;
    let mut runs: Rounds = BTreeMap::new();
    let mut ratios: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let result = (|| -> anyhow::Result<()> {
        for _ in 0..rounds {
            let before: std::collections::HashSet<u64> = prog_stats()?.into_keys().collect();
            // (On an error, dropping `tracers` stops those started.)
            let mut tracers = Vec::new();
            for config in [Config::EmptyProgram, Config::EmptyRaw, Config::Kvmtrace] {
                tracers.push(start(config, Some(guest_pid))?);
            }
            if let Some(rates) = rates {
                while rates.try_recv().is_ok() {}
            }
            let a = prog_stats()?;
            std::thread::sleep(Duration::from_secs(secs as u64));
            let b = prog_stats()?;
            tracers.into_iter().for_each(stop);
            let round = runs_by_name(&before, &a, &b);
            let per_run = |name: &str| {
                round
                    .get(name)
                    .filter(|(_, n)| *n > 0)
                    .map(|(t, n)| (*t as f64 / *n as f64, *n))
            };
            for name in round.keys() {
                let Some(x) = per_run(name) else { continue };
                runs.entry(name.clone()).or_default().push(x);
                if let Some((classic, _)) = floors_of(name)
                    && let Some((floor, _)) = per_run(&classic)
                {
                    ratios.entry(name.clone()).or_default().push(x.0 / floor);
                }
            }
        }
        Ok(())
    })();
    bpf_stats_restore(&previous)?;
    result?;
    Ok((runs, ratios))
}

/// Prints the programs `shown` of one paired run, beside their empty programs, and adds those
/// over the bar to `over`.
fn print_table(
    workload: &str,
    (runs, ratios): &(Rounds, BTreeMap<String, Vec<f64>>),
    shown: impl Fn(&str) -> bool,
    over: &mut Vec<String>,
) {
    let median_of = |name: &str, f: fn(&(f64, u64)) -> f64| -> Option<f64> {
        let mut v: Vec<f64> = runs.get(name)?.iter().map(f).collect();
        Some(crate::bench::median(&mut v))
    };
    let show = |ns: Option<f64>| ns.map_or_else(|| "-".to_string(), |ns| format!("{ns:.1}"));
    println!("  {workload}:");
    println!(
        "    {:<20} {:>8} {:>14} {:>10} {:>7} {:>10}",
        "program", "ns/run", "empty classic", "empty raw", "ratio", "runs/round"
    );
    for (name, r) in ratios.iter().filter(|(name, _)| shown(name)) {
        let (classic, raw) = floors_of(name).expect("a kvmtrace program");
        let ratio = crate::bench::median(&mut r.clone());
        println!(
            "    {name:<20} {:>8} {:>14} {:>10} {:>6.2}x {:>10.0}",
            show(median_of(name, |r| r.0)),
            show(median_of(&classic, |r| r.0)),
            show(median_of(&raw, |r| r.0)),
            ratio,
            median_of(name, |r| r.1 as f64).unwrap_or(0.0)
        );
        if ratio > BAR {
            over.push(format!("{name} {ratio:.2}x"));
        }
    }
}
