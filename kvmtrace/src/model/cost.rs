//! What tracing cost: each BPF program's runs and run time, and the collector's CPU time, over
//! a recording. Measured by [`crate::source::live::cost`], kept in recordings, shown in reports.

use serde::{Deserialize, Serialize};

/// One program's runs and run time, cumulative since it was loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramCost {
    pub program: String,
    pub runs: u64,
    pub run_ns: u64,
}

/// The tracer's cost over a recording.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TracerCost {
    /// Wall time the programs were attached.
    pub secs: f64,
    /// Per program; empty with `unavailable` set when the kernel kept no statistics.
    pub programs: Vec<ProgramCost>,
    /// CPU time of the kvmtrace process (collector, report, file).
    pub collector_cpu_ns: u64,
    #[serde(default)]
    pub unavailable: Option<String>,
}

impl TracerCost {
    pub fn runs(&self) -> u64 {
        self.programs.iter().map(|p| p.runs).sum()
    }

    pub fn run_ns(&self) -> u64 {
        self.programs.iter().map(|p| p.run_ns).sum()
    }

    /// Mean BPF run time per program run (per traced event).
    pub fn ns_per_run(&self) -> Option<f64> {
        let runs = self.runs();
        (runs > 0).then(|| self.run_ns() as f64 / runs as f64)
    }

    pub fn runs_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.runs() as f64 / self.secs
        } else {
            0.0
        }
    }

    /// BPF run time in % of one CPU.
    pub fn bpf_cpu_pct(&self) -> f64 {
        pct_of_cpu(self.run_ns(), self.secs)
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
        };
        assert_eq!(c.runs(), 2_000_000);
        assert_eq!(c.ns_per_run(), Some(150.0));
        assert_eq!(c.runs_per_sec(), 200_000.0);
        // 0.3 s of BPF in 10 s: 3 % of one CPU; 0.05 s of collector: 0.5 %.
        assert!((c.bpf_cpu_pct() - 3.0).abs() < 1e-9);
        assert!((c.collector_cpu_pct() - 0.5).abs() < 1e-9);
        assert_eq!(TracerCost::default().ns_per_run(), None);
    }
}
