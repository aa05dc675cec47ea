//! What tracing costs: the BPF programs' run time from the kernel's own statistics (turned on
//! with BPF_ENABLE_STATS while kvmtrace traces, off again when its fd closes), and the collector
//! process's CPU time. Both go in every report, so the price of the numbers is next to them.

use std::{os::fd::OwnedFd, time::Duration};

use serde::{Deserialize, Serialize};

/// Keeps the kernel's BPF run-time statistics on while it lives. Statistics cost each program
/// run two clock reads (tens of ns), which the per-event figures include.
pub struct RunTimeStats {
    _fd: Option<OwnedFd>,
    /// Why statistics are off (a kernel before 5.8, or refused), when they are.
    pub unavailable: Option<String>,
}

impl RunTimeStats {
    pub fn enable() -> RunTimeStats {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => RunTimeStats {
                _fd: Some(fd),
                unavailable: None,
            },
            Err(e) => RunTimeStats {
                _fd: None,
                unavailable: Some(format!("BPF_ENABLE_STATS failed: {e}")),
            },
        }
    }
}

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

/// User + system CPU time of this process so far.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage writes only into the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
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

    #[test]
    fn this_process_has_used_some_cpu() {
        let before = process_cpu();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu() > before);
    }
}
