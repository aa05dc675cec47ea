//! Measuring what tracing costs: the BPF programs' run time from the kernel's own statistics
//! (turned on with BPF_ENABLE_STATS while kvmtrace traces, off again when its fd closes), and the
//! collector process's CPU time. Both go in every report ([`crate::model::cost`]).

use std::{os::fd::OwnedFd, time::Duration};

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
