//! What tracing cost: each BPF program's runs and run time, and the collector's CPU time, over
//! a recording. Measured by [`crate::source::live::cost`], kept in recordings, shown in reports.

use serde::{Deserialize, Serialize};

/// One program's runs and run time while the statistics were on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramCost {
    pub program: String,
    pub runs: u64,
    pub run_ns: u64,
}

/// Runs of one program the kernel skipped instead of running it (`recursion_misses`): it does
/// not run a tracing program on a CPU where another BPF program is running or, for a classic
/// tracepoint's, where a bpf() call holds that CPU's guard (it can be preempted holding it).
/// Each is an event kvmtrace did not count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRuns {
    pub program: String,
    pub runs: u64,
}

/// The tracer's cost over a recording.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TracerCost {
    /// Wall time the programs were attached.
    pub secs: f64,
    /// Per program; empty with `unavailable` set when the kernel kept no statistics.
    pub programs: Vec<ProgramCost>,
    /// How long the statistics were on for kvmtrace (sampled: see
    /// [`crate::source::live::cost::StatsMode`]); the runs and run time are from that time.
    /// Absent in recordings made before sampling, when they were on all `secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_secs: Option<f64>,
    /// CPU time of the kvmtrace process (collector, report, file).
    pub collector_cpu_ns: u64,
    #[serde(default)]
    pub unavailable: Option<String>,
    /// Programs the kernel skipped runs of, over the whole time they were attached (counted
    /// whether or not the statistics were on); absent when none was skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedRuns>,
}

impl TracerCost {
    pub fn runs(&self) -> u64 {
        self.programs.iter().map(|p| p.runs).sum()
    }

    /// Program runs the kernel skipped: events missing from the counts.
    pub fn skipped_runs(&self) -> u64 {
        self.skipped.iter().map(|s| s.runs).sum()
    }

    pub fn run_ns(&self) -> u64 {
        self.programs.iter().map(|p| p.run_ns).sum()
    }

    /// Mean BPF run time per program run (per traced event).
    pub fn ns_per_run(&self) -> Option<f64> {
        let runs = self.runs();
        (runs > 0).then(|| self.run_ns() as f64 / runs as f64)
    }

    /// The seconds the runs and run time were counted in.
    pub fn measured_secs(&self) -> f64 {
        self.stats_secs.unwrap_or(self.secs)
    }

    /// Program runs per second while the statistics were on.
    pub fn runs_per_sec(&self) -> f64 {
        let secs = self.measured_secs();
        if secs > 0.0 {
            self.runs() as f64 / secs
        } else {
            0.0
        }
    }

    /// BPF run time in % of one CPU while the statistics were on.
    pub fn bpf_cpu_pct(&self) -> f64 {
        pct_of_cpu(self.run_ns(), self.measured_secs())
    }

    /// The statistics were on for only part of the time (sampled).
    pub fn sampled(&self) -> bool {
        self.measured_secs() < self.secs * 0.99
    }

    /// The collector's CPU time in % of one CPU.
    pub fn collector_cpu_pct(&self) -> f64 {
        pct_of_cpu(self.collector_cpu_ns, self.secs)
    }
}

fn pct_of_cpu(ns: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        ns as f64 / 1e9 / secs * 100.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_run_and_shares_of_a_cpu() {
        let c = TracerCost {
            secs: 10.0,
            programs: vec![
                ProgramCost {
                    program: "kvmtrace_pio".into(),
                    runs: 1_000_000,
                    run_ns: 100_000_000,
                },
                ProgramCost {
                    program: "kvmtrace_uexit".into(),
                    runs: 1_000_000,
                    run_ns: 200_000_000,
                },
            ],
            collector_cpu_ns: 50_000_000,
            unavailable: None,
            stats_secs: None,
            skipped: Vec::new(),
        };
        assert_eq!(c.runs(), 2_000_000);
        assert_eq!(c.ns_per_run(), Some(150.0));
        assert_eq!(c.runs_per_sec(), 200_000.0);
        // 0.3 s of BPF in 10 s: 3 % of one CPU; 0.05 s of collector: 0.5 %.
        assert!((c.bpf_cpu_pct() - 3.0).abs() < 1e-9);
        assert!((c.collector_cpu_pct() - 0.5).abs() < 1e-9);
        assert!(!c.sampled());
        assert_eq!(TracerCost::default().ns_per_run(), None);
        // Sampled: the same runs counted in 2 s of statistics out of the 10 s.
        let sampled = TracerCost {
            stats_secs: Some(2.0),
            ..c
        };
        assert!(sampled.sampled());
        assert_eq!(sampled.ns_per_run(), Some(150.0));
        assert_eq!(sampled.runs_per_sec(), 1_000_000.0);
        assert!((sampled.bpf_cpu_pct() - 15.0).abs() < 1e-9);
        assert!((sampled.collector_cpu_pct() - 0.5).abs() < 1e-9);
    }
}
