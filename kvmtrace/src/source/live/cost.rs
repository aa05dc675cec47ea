//! Measuring what tracing costs: the BPF programs' run time from the kernel's own statistics,
//! and the collector process's CPU time. Both go in every report ([`crate::model::cost`]).
//!
//! The statistics are host-wide: while anyone has them on, every BPF program run on the host
//! (kvmtrace's and any other tool's) pays two clock reads. Here that slowed an in-kernel exit
//! loop by 6 % (kvmtrace's programs themselves: 1 %), so kvmtrace only samples them by default:
//! on for a [`WINDOW`] in every [`PERIOD`], the first one at attach. The figures are the
//! windows' (ns per run is the same; runs/s and % of a CPU are over the time the windows
//! lasted).

use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    time::{Duration, Instant},
};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};

use crate::model::cost::{ProgramCost, SkippedRuns};

/// How long each sampling window keeps the statistics on (one drain interval if longer: the
/// windows open and close at drains).
pub const WINDOW: Duration = Duration::from_secs(1);
/// How often a sampling window opens.
pub const PERIOD: Duration = Duration::from_secs(60);

/// When kvmtrace turns the kernel's BPF run-time statistics on (`--bpf-stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StatsMode {
    /// On for a second in every minute: ns per run and % of a CPU, sampled, at 1/60 of the
    /// statistics' own cost.
    #[default]
    Sampled,
    /// On the whole time: every run counted, at the statistics' full cost to every BPF program
    /// on the host.
    Always,
    /// Never: no BPF run-time figures.
    Off,
}

/// Keeps the statistics on during sampling windows and adds up what kvmtrace's programs ran
/// in them.
pub struct StatsSampler {
    mode: StatsMode,
    /// Holds the statistics on while it lives (the kernel counts every holder).
    on: Option<OwnedFd>,
    windows: Windows,
    /// Why there are no figures (`--bpf-stats off`, a kernel before 5.8, or refused).
    pub unavailable: Option<String>,
}

impl StatsSampler {
    /// Opens the first window at once (before the programs attach, so their first runs
    /// count), unless `mode` is off.
    pub fn start(mode: StatsMode, now: Instant, programs: Vec<ProgramCost>) -> StatsSampler {
        let mut sampler = StatsSampler {
            mode,
            on: None,
            windows: Windows::default(),
            unavailable: (mode == StatsMode::Off).then(|| "--bpf-stats off".to_string()),
        };
        sampler.tick(now, || programs);
        sampler
    }

    /// Opens or closes a window if one is due; `programs` reads the programs' counters.
    pub fn tick(&mut self, now: Instant, programs: impl FnOnce() -> Vec<ProgramCost>) {
        if self.unavailable.is_some() {
            return;
        }
        match self.windows.due(now, self.mode) {
            Some(Due::Open) => match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => {
                    self.on = Some(fd);
                    self.windows.open(now, programs());
                }
                Err(e) => self.unavailable = Some(format!("BPF_ENABLE_STATS failed: {e}")),
            },
            Some(Due::Close) => {
                self.windows.close(now, &programs());
                self.on = None;
            }
            None => {}
        }
    }

    /// Runs and run time per program and the seconds the windows lasted, up to `now`.
    pub fn measured(
        &self,
        now: Instant,
        programs: impl FnOnce() -> Vec<ProgramCost>,
    ) -> (Vec<ProgramCost>, f64) {
        let open = self.windows.open.is_some().then(programs);
        self.windows.totals(now, open.as_deref())
    }
}

/// What [`Windows::due`] says to do.
#[derive(Debug, PartialEq)]
enum Due {
    Open,
    Close,
}

/// The sampling windows' bookkeeping (no statistics switched here): the programs' cumulative
/// counters when the open window opened, and the sums over the closed ones. Sums of
/// differences, so a window counts only its own runs even where another tool keeps the
/// statistics on in between.
#[derive(Debug, Default)]
struct Windows {
    open: Option<(Instant, Vec<ProgramCost>)>,
    last_opened: Option<Instant>,
    closed: Vec<ProgramCost>,
    closed_secs: f64,
}

impl Windows {
    fn due(&self, now: Instant, mode: StatsMode) -> Option<Due> {
        match (&self.open, mode) {
            (_, StatsMode::Off) => None,
            (Some(_), StatsMode::Always) => None,
            (Some((at, _)), StatsMode::Sampled) => (now - *at >= WINDOW).then_some(Due::Close),
            (None, _) => self
                .last_opened
                .is_none_or(|at| now - at >= PERIOD)
                .then_some(Due::Open),
        }
    }

    fn open(&mut self, now: Instant, programs: Vec<ProgramCost>) {
        self.open = Some((now, programs));
        self.last_opened = Some(now);
    }

    fn close(&mut self, now: Instant, programs: &[ProgramCost]) {
        let (closed, secs) = self.totals(now, Some(programs));
        (self.closed, self.closed_secs) = (closed, secs);
        self.open = None;
    }

    /// The closed windows' sums, plus the open window's share up to `now` (its programs'
    /// counters now in `programs`).
    fn totals(&self, now: Instant, programs: Option<&[ProgramCost]>) -> (Vec<ProgramCost>, f64) {
        let mut sums = self.closed.clone();
        let mut secs = self.closed_secs;
        if let (Some((at, before)), Some(programs)) = (&self.open, programs) {
            secs += (now - *at).as_secs_f64();
            for p in programs {
                let base = before.iter().find(|b| b.program == p.program);
                let runs = p.runs.saturating_sub(base.map_or(0, |b| b.runs));
                let run_ns = p.run_ns.saturating_sub(base.map_or(0, |b| b.run_ns));
                match sums.iter_mut().find(|s| s.program == p.program) {
                    Some(s) => {
                        s.runs += runs;
                        s.run_ns += run_ns;
                    }
                    None => sums.push(ProgramCost {
                        program: p.program.clone(),
                        runs,
                        run_ns,
                    }),
                }
            }
        }
        (sums, secs)
    }
}

/// The cumulative runs and run time the kernel keeps for each of `ebpf`'s programs.
pub fn program_counters(ebpf: &aya::Ebpf) -> Vec<ProgramCost> {
    ebpf.programs()
        .filter_map(|(name, p)| {
            let info = p.info().ok()?;
            Some(ProgramCost {
                program: name.to_string(),
                runs: info.run_count(),
                run_ns: info.run_time().as_nanos() as u64,
            })
        })
        .collect()
}

/// The runs the kernel skipped of each of `ebpf`'s loaded programs that it skipped any of.
pub fn skipped_runs(ebpf: &aya::Ebpf) -> Vec<SkippedRuns> {
    ebpf.programs()
        .filter_map(|(name, p)| {
            let runs = recursion_misses(p.fd().ok()?.as_fd())?;
            (runs > 0).then(|| SkippedRuns {
                program: name.to_string(),
                runs,
            })
        })
        .collect()
}

/// A program's `recursion_misses` (Linux 5.12+; None before, or when unreadable): the runs
/// the kernel skipped, counted whether or not the run-time statistics are on. aya's
/// `ProgramInfo` does not expose it, so this asks BPF_OBJ_GET_INFO_BY_FD itself.
fn recursion_misses(prog: BorrowedFd<'_>) -> Option<u64> {
    /// The `info` member of `union bpf_attr`.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is integers and arrays of them: all zeros is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: attr points at a valid info of info_len bytes, which the kernel fills (up to
    // the size it knows) and whose written length it stores back in attr.info_len.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_int,
            &raw mut attr,
            size_of::<InfoByFd>(),
        )
    };
    let known = std::mem::offset_of!(bpf_prog_info, recursion_misses) + size_of::<u64>();
    (r == 0 && attr.info_len as usize >= known).then_some(info.recursion_misses)
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

    fn counters(runs: u64, run_ns: u64) -> Vec<ProgramCost> {
        vec![ProgramCost {
            program: "kvmtrace_pio".into(),
            runs,
            run_ns,
        }]
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

    #[test]
    fn sampled_windows_open_every_period_and_close_after_a_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = Windows::default();
        assert_eq!(w.due(t0, StatsMode::Sampled), Some(Due::Open));
        w.open(t0, counters(0, 0));
        assert_eq!(w.due(at(999), StatsMode::Sampled), None);
        assert_eq!(w.due(at(1000), StatsMode::Sampled), Some(Due::Close));
        w.close(at(1000), &counters(1000, 50_000));
        assert_eq!(w.due(at(59_999), StatsMode::Sampled), None);
        assert_eq!(w.due(at(60_000), StatsMode::Sampled), Some(Due::Open));
        // Always: one window from the start, never closed; off: none.
        let mut always = Windows::default();
        always.open(t0, counters(0, 0));
        assert_eq!(always.due(at(3_600_000), StatsMode::Always), None);
        assert_eq!(Windows::default().due(t0, StatsMode::Off), None);
    }

    #[test]
    fn only_the_runs_inside_windows_count() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = Windows::default();
        w.open(t0, counters(0, 0));
        w.close(at(1000), &counters(1000, 50_000));
        // Another tool had the statistics on in between: 5000 runs that are not the windows'.
        w.open(at(60_000), counters(6000, 300_000));
        w.close(at(61_500), &counters(7500, 390_000));
        let (sums, secs) = w.totals(at(61_500), None);
        assert_eq!(sums, counters(2500, 140_000));
        assert!((secs - 2.5).abs() < 1e-9);
        // A window still open counts up to now.
        w.open(at(120_000), counters(7500, 390_000));
        let (sums, secs) = w.totals(at(120_500), Some(&counters(8000, 400_000)));
        assert_eq!(sums, counters(3000, 150_000));
        assert!((secs - 3.0).abs() < 1e-9);
    }

    #[test]
    fn a_program_new_since_the_window_opened_counts_from_zero() {
        let t0 = Instant::now();
        let mut w = Windows::default();
        w.open(t0, Vec::new());
        w.close(t0 + WINDOW, &counters(10, 700));
        assert_eq!(w.totals(t0 + WINDOW, None).0, counters(10, 700));
    }
}
