//! What `record --stacks` costs a vCPU, for `cargo xtask bench`: `kvmtrace record` with and
//! without `--stacks`, side by side, in pairs run back to back (the order alternating, so the
//! host's drift does not favour either); each figure is the mean of the pairs' differences with
//! its 95 % confidence interval.
//!
//! Two figures: the time the local timer interrupt takes from the vCPU thread (where the
//! sampler runs: [`timer_irq_cost`], the one the 1 % bar is judged on), and the exit loop's rate
//! per second of the guest's CPU and per wall second ([`stacks_cost`]). That rate moves by
//! 10-20 % between seconds on a small shared host, which buries a 1 % effect; it is printed for
//! what it shows.

use std::{
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::bench::{Config, process_run_ns, start, stop, wait_for};

/// The slowdown `--stacks` adds to `kvmtrace record`, in % of the loop's rate per CPU second.
pub struct StacksCost {
    pub pairs: usize,
    pub mean_pct: f64,
    /// Half width of the 95 % confidence interval of the mean.
    pub ci95_pct: f64,
    /// The same per wall second.
    pub wall_mean_pct: f64,
    pub wall_ci95_pct: f64,
}

/// Measures `pairs` pairs, each `kvmtrace record` without and with `--stacks` back to back (the
/// order alternating), with `measure` while the tracer runs; `each` gets the pair's index and its
/// (without, with) results as they come.
fn in_pairs<T: Copy + Default>(
    guest_pid: u32,
    pairs: usize,
    mut measure: impl FnMut() -> anyhow::Result<T>,
    mut each: impl FnMut(usize, [T; 2]),
) -> anyhow::Result<()> {
    for pair in 0..pairs {
        let order = if pair % 2 == 0 {
            [Config::Kvmtrace, Config::KvmtraceStacks]
        } else {
            [Config::KvmtraceStacks, Config::Kvmtrace]
        };
        let mut got = [T::default(); 2];
        for config in order {
            let tracer = start(config, Some(guest_pid))?;
            let result = measure();
            stop(tracer);
            got[usize::from(config == Config::KvmtraceStacks)] = result?;
        }
        each(pair, got);
    }
    Ok(())
}

/// Runs `pairs` pairs of `samples` one-second steps each.
pub fn stacks_cost(
    guest_pid: u32,
    rates: &Receiver<String>,
    pairs: usize,
    samples: usize,
) -> anyhow::Result<StacksCost> {
    let (mut per_cpu, mut per_wall) = (Vec::new(), Vec::new());
    let measure = || rate_over(rates, samples, guest_pid);
    in_pairs(guest_pid, pairs, measure, |pair, rate| {
        let slowdown = |with: f64, without: f64| 100.0 * (1.0 - with / without);
        let cpu = slowdown(rate[1].per_cpu_sec, rate[0].per_cpu_sec);
        let wall = slowdown(rate[1].per_wall_sec, rate[0].per_wall_sec);
        println!(
            "    pair {:>2}: {:>9.0} vs {:>9.0} exits per CPU second with --stacks: {cpu:+.2} % (per wall second {:>7.0} vs {:>7.0}: {wall:+.2} %)",
            pair + 1,
            rate[0].per_cpu_sec,
            rate[1].per_cpu_sec,
            rate[0].per_wall_sec,
            rate[1].per_wall_sec,
        );
        per_cpu.push(cpu);
        per_wall.push(wall);
    })?;
    let (mean, ci95) = mean_ci95(&per_cpu);
    let (wall_mean, wall_ci95) = mean_ci95(&per_wall);
    Ok(StacksCost {
        pairs,
        mean_pct: mean,
        ci95_pct: ci95,
        wall_mean_pct: wall_mean,
        wall_ci95_pct: wall_ci95,
    })
}

#[derive(Clone, Copy, Default)]
struct Rate {
    per_cpu_sec: f64,
    per_wall_sec: f64,
}

/// The guest's exits over its next `samples` one-second steps, per second of its own CPU time
/// and per wall second.
fn rate_over(rates: &Receiver<String>, samples: usize, guest_pid: u32) -> anyhow::Result<Rate> {
    while rates.try_recv().is_ok() {} // lines from before the tracer attached
    wait_for(rates, "a partial second", |l| l.starts_with("result"))?;
    let (run0, wall0) = (process_run_ns(guest_pid)?, Instant::now());
    let mut exits = 0u64;
    for _ in 0..samples {
        let line = rates
            .recv_timeout(Duration::from_secs(10))
            .context("guest rate")?;
        exits += field(&line, "exits=")?;
    }
    let run = process_run_ns(guest_pid)?.saturating_sub(run0).max(1);
    Ok(Rate {
        per_cpu_sec: exits as f64 / (run as f64 / 1e9),
        per_wall_sec: exits as f64 / wall0.elapsed().as_secs_f64(),
    })
}

/// The number after `key` in a guest's result line.
fn field(line: &str, key: &str) -> anyhow::Result<u64> {
    let at = line.find(key).context("no such field")? + key.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Ok(digits.parse()?)
}

/// The time the local timer interrupt took from process `pid`'s threads (those that were running
/// when it came: irq_vectors:local_timer_entry -> exit) over `secs`, in ns per second, counted by
/// bpftrace. `--stacks` samples from an hrtimer: its handler, the BPF program it runs, and the
/// interrupt's own handling and re-arming are all in there (the interrupt's entry and exit,
/// before and after the tracepoints, are not).
fn timer_irq_ns_per_sec(pid: u32, secs: u64) -> anyhow::Result<f64> {
    let script = format!(
        "tracepoint:irq_vectors:local_timer_entry /pid == {pid}/ {{ @t[cpu] = nsecs; }} \
         tracepoint:irq_vectors:local_timer_exit /@t[cpu]/ {{ @ns = sum(nsecs - @t[cpu]); delete(@t[cpu]); }} \
         interval:s:{secs} {{ print(@ns); clear(@t); exit(); }}"
    );
    let out = crate::sh::output(crate::sh::cmd("bpftrace").args(["-e", &script]))
        .context("running bpftrace")?;
    let ns: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("@ns: "))
        .context("no @ns from bpftrace")?
        .trim()
        .parse()?;
    Ok(ns / secs as f64)
}

/// The CPU that `--stacks`'s sampling interrupts take from the vCPU, side by side: the time the
/// local timer interrupt takes from the guest's threads (its vCPU runs the exit loop all the
/// time) under `kvmtrace record` and under `record --stacks`, in `pairs` alternating pairs of
/// `secs` each. Returns the extra % of one CPU as (mean, 95 % half width).
pub fn timer_irq_cost(guest_pid: u32, pairs: usize, secs: u64) -> anyhow::Result<(f64, f64)> {
    let mut extra = Vec::new();
    let measure = || timer_irq_ns_per_sec(guest_pid, secs).map(|ns| ns / 1e7);
    in_pairs(guest_pid, pairs, measure, |pair, pct| {
        println!(
            "    pair {:>2}: timer interrupts took {:.3} % of the vCPU, with --stacks {:.3} %",
            pair + 1,
            pct[0],
            pct[1]
        );
        extra.push(pct[1] - pct[0]);
    })?;
    Ok(mean_ci95(&extra))
}

/// Mean and the half width of its 95 % confidence interval (Student's t).
fn mean_ci95(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, f64::INFINITY);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, t975(v.len() - 1) * (var / n).sqrt())
}

/// Student's t, two-sided 95 %, for `df` degrees of freedom (the table's row at or below `df`,
/// which only widens the interval).
fn t975(df: usize) -> f64 {
    const TABLE: [(usize, f64); 12] = [
        (1, 12.706),
        (2, 4.303),
        (3, 3.182),
        (4, 2.776),
        (5, 2.571),
        (6, 2.447),
        (8, 2.306),
        (10, 2.228),
        (15, 2.131),
        (20, 2.086),
        (30, 2.042),
        (60, 2.000),
    ];
    let row = TABLE.iter().rev().find(|(d, _)| *d <= df);
    row.map_or(TABLE[0].1, |r| r.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_of_known_samples() {
        // mean 2, sample sd 1.5811, n 5: 2.776 * 1.5811 / sqrt(5) = 1.963.
        let (mean, ci) = mean_ci95(&[0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(mean, 2.0);
        assert!((ci - 1.963).abs() < 0.001, "{ci}");
    }

    #[test]
    fn fields_of_a_result_line() {
        let line =
            r#"result vcpu=0 tid=77 step="cpuid" exits=131853 batches=1 secs=1.000 rate=131853"#;
        assert_eq!(field(line, "exits=").unwrap(), 131_853);
        assert!(field(line, "missing=").is_err());
    }

    #[test]
    fn t_rounds_to_the_wider_row() {
        assert_eq!(t975(7), 2.447);
        assert_eq!(t975(100), 2.000);
    }
}
