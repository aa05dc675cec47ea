//! What `record --stacks` costs a vCPU, for `cargo xtask bench`: the exit loop's rate under
//! `kvmtrace record` with and without `--stacks`, side by side.
//!
//! The loop's rate moves by a few percent between seconds on a small shared host, and drifts
//! over minutes: a rotation of medians cannot resolve 1 %. So the two run in pairs back to back
//! (the order alternating, so drift does not favour either), and the answer is the mean of the
//! pairs' slowdowns with its 95 % confidence interval: the bar holds if the interval's upper end
//! is under it.

use std::{sync::mpsc::Receiver, time::Duration};

use anyhow::Context as _;

use crate::bench::{Config, start, stop, wait_for};

/// The slowdown `--stacks` adds to `kvmtrace record`, in % of the loop's rate.
pub struct StacksCost {
    pub pairs: usize,
    pub mean_pct: f64,
    /// Half width of the 95 % confidence interval of the mean.
    pub ci95_pct: f64,
}

impl StacksCost {
    pub fn upper_pct(&self) -> f64 {
        self.mean_pct + self.ci95_pct
    }
}

/// Runs `pairs` pairs of `samples` one-second rates each.
pub fn stacks_cost(
    guest_pid: u32,
    rates: &Receiver<String>,
    pairs: usize,
    samples: usize,
) -> anyhow::Result<StacksCost> {
    let mut slowdowns = Vec::with_capacity(pairs);
    for pair in 0..pairs {
        let order = if pair % 2 == 0 {
            [Config::Kvmtrace, Config::KvmtraceStacks]
        } else {
            [Config::KvmtraceStacks, Config::Kvmtrace]
        };
        let mut mean_rate = [0.0; 2];
        for config in order {
            let tracer = start(config, Some(guest_pid))?;
            let rate = mean_rate_over(rates, samples);
            stop(tracer);
            mean_rate[usize::from(config == Config::KvmtraceStacks)] = rate?;
        }
        let slowdown = 100.0 * (1.0 - mean_rate[1] / mean_rate[0]);
        println!(
            "    pair {:>2}: {:>9.0} vs {:>9.0} exits/s with --stacks: {slowdown:+.2} %",
            pair + 1,
            mean_rate[0],
            mean_rate[1]
        );
        slowdowns.push(slowdown);
    }
    let (mean, ci95) = mean_ci95(&slowdowns);
    Ok(StacksCost {
        pairs,
        mean_pct: mean,
        ci95_pct: ci95,
    })
}

/// The mean of the guest's next `samples` whole-second rates.
fn mean_rate_over(rates: &Receiver<String>, samples: usize) -> anyhow::Result<f64> {
    while rates.try_recv().is_ok() {} // lines from before the tracer attached
    wait_for(rates, "a partial second", |l| l.starts_with("result"))?;
    let mut sum = 0.0;
    for _ in 0..samples {
        let line = rates
            .recv_timeout(Duration::from_secs(10))
            .context("guest rate")?;
        sum += line.rsplit("rate=").next().unwrap_or("0").parse::<f64>()?;
    }
    Ok(sum / samples as f64)
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
    fn t_rounds_to_the_wider_row() {
        assert_eq!(t975(7), 2.447);
        assert_eq!(t975(100), 2.000);
    }
}
