//! CPU time this host lost to its own hypervisor while recording (the `steal` of /proc/stat): a
//! host that is itself a VM. kvmtrace's on-CPU times are wall clock between context switches, so
//! they include time stolen from a running vCPU thread; procfs's run time (the scheduler's task
//! clock) excludes it. The report states it so that the two can be compared.

use std::{path::Path, time::Instant};

pub struct StealClock {
    start_ticks: Option<u64>,
    started: Instant,
    cpus: u64,
}

impl StealClock {
    pub fn start(proc_root: &Path) -> StealClock {
        let (ticks, cpus) = read(proc_root).unzip();
        StealClock {
            start_ticks: ticks,
            started: Instant::now(),
            cpus: cpus.unwrap_or(1),
        }
    }

    /// Steal since [`StealClock::start`], in % of all CPUs' time; None where /proc/stat has no
    /// steal column.
    pub fn pct(&self, proc_root: &Path) -> Option<f64> {
        let (now, _) = read(proc_root)?;
        let stolen = now.saturating_sub(self.start_ticks?);
        // SAFETY: sysconf has no preconditions.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let wall = self.started.elapsed().as_secs_f64();
        (wall > 0.0).then(|| 100.0 * stolen as f64 / per_sec / (wall * self.cpus as f64))
    }
}

/// (steal ticks of all CPUs, number of CPUs) from /proc/stat.
fn read(proc_root: &Path) -> Option<(u64, u64)> {
    parse(&std::fs::read_to_string(proc_root.join("stat")).ok()?)
}

fn parse(stat: &str) -> Option<(u64, u64)> {
    let mut lines = stat.lines();
    // cpu  user nice system idle iowait irq softirq steal ...
    let steal = lines.next()?.split_whitespace().nth(8)?.parse().ok()?;
    let cpus = lines
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u64;
    Some((steal, cpus.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_number_of_the_cpu_line() {
        let stat = "cpu  5081769 120065 480904 6162771 21192 0 9947 21435 335398 0\n\
                    cpu0 2540884 60032 240452 3081385 10596 0 4973 10717 167699 0\n\
                    cpu1 2540885 60033 240452 3081386 10596 0 4974 10718 167699 0\n\
                    intr 1\n";
        assert_eq!(parse(stat), Some((21435, 2)));
        assert_eq!(parse("cpu  1 2 3\n"), None);
    }
}
