//! `cargo xtask bench`: what tracing costs, measured as ratios in one run.
//!
//! 1. The guest's fastest in-kernel exit loop (CPUID: one kvm_cpuid event per exit, no return to
//!    user space) runs continuously and reports its rate every second. Around it, in rotating
//!    order: nothing attached; kvmtrace's empty program on the same 8 tracepoints, as a classic
//!    tracepoint program (the floor: the tracepoint machinery itself) and as a raw tracepoint
//!    program (no trace record built); `kvmtrace record`; and a bpftrace one-liner counting the
//!    same tracepoints keyed by thread and key. The median of each configuration's rates is
//!    compared, and each one's per-event program cost from the kernel's BPF statistics.
//! 2. The collector's own CPU, side by side: `kvmtrace record` and `kvmtrace serve` (scraped
//!    every second, as by Prometheus) tracing the same loop; serve must stay under 1 % of one CPU.
//! 3. An unrelated process's tight getpid loop, with and without kvmtrace recording every VM:
//!    kvmtrace must cost the rest of the host nothing.
//! 4. `--stacks` beside `kvmtrace record` in back-to-back pairs (also alone: `--stacks-only`):
//!    the time timer interrupts take from the vCPU, where the sampler runs
//!    ([`crate::bench_stacks`]).

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench_scale::Collector,
    setup,
    sh::{cargo, cmd, output, run, target_bin},
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Config {
    Nothing,
    EmptyProgram,
    EmptyRaw,
    Kvmtrace,
    KvmtraceStacks,
    Bpftrace,
}

impl Config {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Config::Nothing => "nothing attached",
            Config::EmptyProgram => "empty classic program (floor)",
            Config::EmptyRaw => "empty raw tracepoint program",
            Config::Kvmtrace => "kvmtrace record",
            Config::KvmtraceStacks => "kvmtrace record --stacks",
            Config::Bpftrace => "bpftrace keyed count",
        }
    }
}

fn bpftrace_script() -> String {
    [
        "tracepoint:kvm:kvm_exit { @exit[tid, args->isa, args->exit_reason] = count(); }",
        "tracepoint:kvm:kvm_entry { @entry[tid] = count(); }",
        "tracepoint:kvm:kvm_userspace_exit { @uexit[tid, args->reason] = count(); }",
        "tracepoint:kvm:kvm_fpu { @fpu[tid, args->load] = count(); }",
        "tracepoint:kvm:kvm_pio { @pio[tid, args->port, args->rw, args->size] = count(); }",
        "tracepoint:kvm:kvm_mmio { @mmio[tid, args->gpa, args->type] = count(); }",
        "tracepoint:kvm:kvm_msr { @msr[tid, args->ecx, args->write] = count(); }",
        "tracepoint:kvm:kvm_cpuid { @cpuid[tid, args->function] = count(); }",
        "tracepoint:sched:sched_switch { @switch[args->prev_pid, args->prev_state] = count(); }",
    ]
    .join(" ")
}

pub(crate) fn lines(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts a bench guest, `kvmtrace-testvm -name guest=NAME --loop --run RUN` (ended by
/// `--timeout` after `timeout_secs` at the latest), and returns it with the lines of its stdout:
/// a `result ... rate=N` line each time round its loop.
pub(crate) fn loop_guest(
    name: &str,
    run: &str,
    timeout_secs: u32,
) -> anyhow::Result<(Child, Receiver<String>)> {
    let mut guest = cmd(target_bin("release", "kvmtrace-testvm")
        .to_str()
        .context("path")?)
    .args(["-name", &format!("guest={name}"), "--loop", "--timeout"])
    .arg(timeout_secs.to_string())
    .args(["--run", run])
    .stdout(Stdio::piped())
    .spawn()
    .with_context(|| format!("starting the bench guest {name}"))?;
    let lines = lines(guest.stdout.take().context("stdout")?);
    Ok((guest, lines))
}

pub(crate) fn wait_for(
    rx: &Receiver<String>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_secs(1))
            && pred(&l)
        {
            return Ok(());
        }
    }
    bail!("timed out waiting for {what}")
}

/// A tracer [`start`] started: stopped (SIGINT, then waited for) when dropped, so an error
/// between start and stop leaves nothing attached to the next measurement (a tracer left
/// running would run on every event of the ones after it).
pub(crate) struct Tracer(Option<Child>);

impl Tracer {
    /// The tracer's process, from now on the caller's to stop.
    pub(crate) fn into_child(mut self) -> Option<Child> {
        self.0.take()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        stop_child(self.0.take());
    }
}

/// Starts a tracer for `config` and returns once it is attached.
pub(crate) fn start(config: Config, guest_pid: Option<u32>) -> anyhow::Result<Tracer> {
    let (child, ready_on_stderr) = match config {
        Config::Nothing => return Ok(Tracer(None)),
        // kvmtrace's own empty programs (bpftrace 0.17 cannot attach raw tracepoints).
        Config::EmptyProgram | Config::EmptyRaw => {
            let mode = if config == Config::EmptyRaw {
                "raw"
            } else {
                "classic"
            };
            let child = cmd(target_bin("release", "kvmtrace-floor")
                .to_str()
                .context("path")?)
            .arg(mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting kvmtrace-floor")?;
            (child, false)
        }
        Config::Bpftrace => {
            let child = cmd("bpftrace")
                .args(["-e", &bpftrace_script()])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting bpftrace")?;
            (child, false)
        }
        Config::Kvmtrace | Config::KvmtraceStacks => {
            let mut c = cmd(target_bin("release", "kvmtrace").to_str().context("path")?);
            c.args(["record", "--duration", "1h"]);
            if config == Config::KvmtraceStacks {
                c.arg("--stacks");
            }
            if let Some(pid) = guest_pid {
                c.args(["-p", &pid.to_string()]);
            }
            (
                c.stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("starting kvmtrace")?,
                true,
            )
        }
    };
    let mut tracer = Tracer(Some(child));
    let child = tracer.0.as_mut().expect("just started");
    let rx = if ready_on_stderr {
        lines(child.stderr.take().context("stderr")?)
    } else {
        lines(child.stdout.take().context("stdout")?)
    };
    wait_for(&rx, config.label(), |l| {
        l.starts_with("Attaching")
            || l.starts_with("kvmtrace: recording")
            || l.starts_with("kvmtrace-floor: attached")
    })?;
    // kvmtrace's sampled BPF statistics are on from attach to its first drain (1 s): their cost
    // (two clock reads per program run, host-wide) is not the steady state's, where they are
    // on one second in sixty.
    let settle = if matches!(config, Config::Kvmtrace | Config::KvmtraceStacks) {
        1300
    } else {
        300
    };
    std::thread::sleep(Duration::from_millis(settle));
    Ok(tracer)
}

pub(crate) fn stop(tracer: Tracer) {
    drop(tracer);
}

fn stop_child(child: Option<Child>) {
    if let Some(mut c) = child {
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let _ = c.wait();
    }
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Fails while kvmtrace's programs are loaded already (another `kvmtrace record`, `serve` or
/// `kvmtrace-floor`): the statistics are summed per program name, so their runs would be
/// counted as the bench's own (it happened: a forgotten `record -p` of a guest that was gone).
fn refuse_beside_other_tracers() -> anyhow::Result<()> {
    let mut others: Vec<String> = prog_stats()?
        .into_iter()
        .filter(|(_, (name, _, _))| name.starts_with("kvmtrace_"))
        .map(|(id, (name, _, _))| format!("{name} (id {id})"))
        .collect();
    if !others.is_empty() {
        others.sort();
        bail!(
            "kvmtrace programs are loaded already, so their runs would count as the bench's: {}; stop the kvmtrace (or kvmtrace-floor) that loaded them first",
            others.join(", ")
        );
    }
    Ok(())
}

/// (name, run_time_ns, run_cnt) of every loaded BPF program, by id (bpftool gives the full
/// function name from BTF, not the kernel's 15 bytes).
pub(crate) fn prog_stats() -> anyhow::Result<std::collections::HashMap<u64, (String, u64, u64)>> {
    let text =
        output(cmd("bpftool").args(["prog", "show", "--json"])).context("bpftool prog show")?;
    let progs: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    Ok(progs
        .iter()
        .filter_map(|p| {
            let id = p["id"].as_u64()?;
            Some((
                id,
                (
                    p["name"].as_str().unwrap_or("?").to_string(),
                    p["run_time_ns"].as_u64().unwrap_or(0),
                    p["run_cnt"].as_u64().unwrap_or(0),
                ),
            ))
        })
        .collect())
}

/// The run time and runs, in total and per program name, of the programs `config` loads while
/// the guest runs for `secs`.
pub(crate) struct ProgramCost {
    ns_per_event: f64,
    events: u64,
    /// Program runs per guest exit: runs per second over the guest's mean exit rate meanwhile
    /// (from its per-second rate lines).
    events_per_exit: f64,
    /// (program name, ns per run, runs) of the programs that ran.
    pub(crate) by_program: Vec<(String, f64, u64)>,
}

/// The kernel's BPF run-time statistics switch (kernel.bpf_stats_enabled).
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns the kernel's BPF run-time statistics on; returns the setting to restore.
pub(crate) fn bpf_stats_on() -> anyhow::Result<String> {
    let previous = std::fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(BPF_STATS, "1").context("enabling BPF run-time statistics")?;
    Ok(previous)
}

/// Puts kernel.bpf_stats_enabled back to what [`bpf_stats_on`] found.
pub(crate) fn bpf_stats_restore(previous: &str) -> anyhow::Result<()> {
    std::fs::write(BPF_STATS, previous.trim()).context("restoring kernel.bpf_stats_enabled")
}

/// Run time and runs per program name between the snapshots `a` and `b` of [`prog_stats`], for
/// the programs loaded after the ids `before` were.
pub(crate) fn runs_by_name(
    before: &std::collections::HashSet<u64>,
    a: &std::collections::HashMap<u64, (String, u64, u64)>,
    b: &std::collections::HashMap<u64, (String, u64, u64)>,
) -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut by_name: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for (id, (name, t, n)) in b {
        if before.contains(id) {
            continue;
        }
        let (t0, n0) = a.get(id).map_or((0, 0), |(_, t, n)| (*t, *n));
        let e = by_name.entry(name.clone()).or_default();
        e.0 += t - t0;
        e.1 += n - n0;
    }
    by_name
}

pub(crate) fn program_cost(
    config: Config,
    guest_pid: u32,
    rates: &Receiver<String>,
    secs: usize,
) -> anyhow::Result<ProgramCost> {
    let before_ids: std::collections::HashSet<u64> = prog_stats()?.into_keys().collect();
    let previous = bpf_stats_on()?;
    let tracer = start(config, Some(guest_pid))?;
    while rates.try_recv().is_ok() {}
    let a = prog_stats()?;
    std::thread::sleep(Duration::from_secs(secs as u64));
    let b = prog_stats()?;
    // The guest prints its rate once a second: the lines of these seconds.
    let exit_rates: Vec<f64> = std::iter::from_fn(|| rates.try_recv().ok())
        .filter_map(|l| l.rsplit("rate=").next()?.parse::<f64>().ok())
        .collect();
    let exits_per_sec = exit_rates.iter().sum::<f64>() / exit_rates.len().max(1) as f64;
    stop(tracer);
    bpf_stats_restore(&previous)?;
    let by_name = runs_by_name(&before_ids, &a, &b);
    let (time, events) = by_name
        .values()
        .fold((0, 0), |(t, n), (dt, dn)| (t + dt, n + dn));
    if events == 0 {
        bail!(
            "{} ran no program while the guest made exits",
            config.label()
        );
    }
    Ok(ProgramCost {
        ns_per_event: time as f64 / events as f64,
        events,
        events_per_exit: events as f64 / secs as f64 / exits_per_sec.max(1.0),
        by_program: by_name
            .into_iter()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(name, (t, n))| (name, t as f64 / n as f64, n))
            .collect(),
    })
}

/// utime + stime of process `pid` so far, in ns (fields 14 and 15 of /proc/PID/stat, counted
/// after the command name's closing parenthesis).
pub(crate) fn process_cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat line")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

/// Run time of every thread of process `pid` so far, in ns: the scheduler's exact figure (the
/// first field of each /proc/PID/task/TID/schedstat), finer than utime + stime's 10 ms ticks.
pub(crate) fn process_run_ns(pid: u32) -> anyhow::Result<u64> {
    let mut ns = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(ns)
}

/// GET /metrics from a `kvmtrace serve` at `addr` (HTTP/1.0: the server closes after it).
pub fn scrape(addr: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).context("connecting to kvmtrace serve")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    if !body.starts_with("HTTP/1.0 200") && !body.starts_with("HTTP/1.1 200") {
        bail!("GET /metrics: {}", body.lines().next().unwrap_or_default());
    }
    Ok(body)
}

/// The sum of the samples of `metric` (every label set) in an exposition.
fn metric_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A tracer's CPU over a measured window: % of one CPU (utime + stime, and schedstat), guest
/// exits/s, BPF program runs/s when the tracer tells them.
struct CollectorCpu {
    pct: f64,
    sched_pct: f64,
    exits_per_sec: f64,
    events_per_sec: Option<f64>,
}

/// Starts `kvmtrace serve -p PID...` of the guests `pids` on a free loopback port; returns it
/// and its address.
pub fn start_serve(pids: &[u32]) -> anyhow::Result<(Child, String)> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let mut serve = cmd(target_bin("release", "kvmtrace").to_str().context("path")?);
    serve.args(["serve", "--listen", &addr]);
    for pid in pids {
        serve.args(["-p", &pid.to_string()]);
    }
    let mut child = serve
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kvmtrace serve")?;
    let rx = lines(child.stderr.take().context("stderr")?);
    if let Err(e) = wait_for(&rx, "kvmtrace serve", |l| {
        l.starts_with("kvmtrace: serving")
    }) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok((child, addr))
}

/// The CPU of `kvmtrace record` or (`serve`) `kvmtrace serve`, tracing the guest's loop for
/// `secs` after a second to settle (start-up, attaching and the first drain excluded); serve
/// is scraped every second meanwhile, as Prometheus would.
fn collector_cpu(
    serve: bool,
    guest_pid: u32,
    rates: &Receiver<String>,
    secs: u64,
) -> anyhow::Result<CollectorCpu> {
    let (child, addr) = if serve {
        let (child, addr) = start_serve(&[guest_pid])?;
        (child, Some(addr))
    } else {
        (
            start(Config::Kvmtrace, Some(guest_pid))?
                .into_child()
                .context("kvmtrace record")?,
            None,
        )
    };
    let pid = child.id();
    let result = (|| -> anyhow::Result<CollectorCpu> {
        std::thread::sleep(Duration::from_secs(1));
        let runs = |text: &str| metric_sum(text, "kvmtrace_bpf_runs_total");
        let (t0, cpu0, run0) = (Instant::now(), process_cpu_ns(pid)?, process_run_ns(pid)?);
        while rates.try_recv().is_ok() {}
        let mut exits = Vec::new();
        let mut last = None;
        for _ in 0..secs {
            let line = rates
                .recv_timeout(Duration::from_secs(10))
                .context("guest rate")?;
            exits.push(line.rsplit("rate=").next().unwrap_or("0").parse::<f64>()?);
            if let Some(addr) = &addr {
                last = Some(scrape(addr)?);
            }
        }
        let (cpu1, run1) = (process_cpu_ns(pid)?, process_run_ns(pid)?);
        let elapsed = t0.elapsed().as_secs_f64();
        // The statistics are sampled (one window at attach, then one a minute): runs per second
        // of the time they were on.
        let events_per_sec = last.as_deref().and_then(|b| {
            let on = metric_sum(b, "kvmtrace_bpf_stats_seconds_total");
            (on > 0.0).then(|| runs(b) / on)
        });
        Ok(CollectorCpu {
            pct: 100.0 * (cpu1 - cpu0) as f64 / 1e9 / elapsed,
            sched_pct: 100.0 * (run1 - run0) as f64 / 1e9 / elapsed,
            exits_per_sec: median(&mut exits),
            events_per_sec,
        })
    })();
    stop_child(Some(child));
    result
}

/// ns per round trip of two threads ping-ponging a byte over a socket pair: two context switches
/// (or wake-ups) per round trip, each of which runs the sched_switch program while kvmtrace
/// records.
fn ping_pong_ns(n: u32) -> f64 {
    use std::io::{Read as _, Write as _};
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8];
        for _ in 0..n {
            if b.read_exact(&mut byte).is_err() || b.write_all(&byte).is_err() {
                return;
            }
        }
    });
    let t = Instant::now();
    let mut byte = [1u8];
    for _ in 0..n {
        if a.write_all(&byte).is_err() || a.read_exact(&mut byte).is_err() {
            break;
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    let _ = echo.join();
    ns
}

/// ns per getpid syscall over `n` calls.
fn getpid_ns(n: u32) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: getpid has no preconditions; the raw syscall avoids any libc caching.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// `--stacks` beside `kvmtrace record`, in pairs: the exit loop's slowdown, and the extra time
/// in timer interrupts (where the sampler runs). The bar (1 % of the vCPU) is judged on the
/// second: the exit loop's rate on this host moves too much between seconds to resolve 1 %, and
/// is printed for what it shows.
fn stacks_side_by_side(
    guest_pid: u32,
    rates: &Receiver<String>,
    pairs: usize,
    samples: usize,
) -> anyhow::Result<()> {
    // A guest that has not made its VM yet is no VM to `record -p` (with --stacks-only this
    // runs right after the guest is started).
    wait_for(rates, "the guest's first second", |l| {
        l.starts_with("result")
    })?;
    println!(
        "\n--stacks (999 Hz) beside kvmtrace record, {pairs} pairs of {samples} s back to back (exit loop):"
    );
    let c = crate::bench_stacks::stacks_cost(guest_pid, rates, pairs, samples)?;
    println!(
        "  exit loop: {:.2} % ± {:.2} slower per CPU second of the guest, {:.2} % ± {:.2} per wall second (95 %, {} pairs)",
        c.mean_pct, c.ci95_pct, c.wall_mean_pct, c.wall_ci95_pct, c.pairs
    );
    println!(
        "\n--stacks's sampling interrupts, side by side: the time the local timer interrupt takes from the vCPU (bpftrace), {pairs} pairs of {samples} s:"
    );
    let (irq, irq_ci) = crate::bench_stacks::timer_irq_cost(guest_pid, pairs, samples as u64)?;
    let upper = irq + irq_ci;
    println!(
        "  --stacks costs the vCPU {irq:.3} % ± {irq_ci:.3} of its CPU (95 %; the sampler program runs inside): {} the bar of 1 %",
        if upper < 1.0 { "under" } else { "NOT under" }
    );
    Ok(())
}

/// Which part alone `cargo xtask bench` runs, if any.
pub struct Only {
    pub stacks: bool,
    pub scale: bool,
    pub cost: bool,
}

pub fn run_bench(rounds: usize, samples: usize, only: Only) -> anyhow::Result<()> {
    let Only {
        stacks: stacks_only,
        scale: scale_only,
        cost: cost_only,
    } = only;
    setup::run_setup()?;
    run(cargo().args(["build", "--release", "--bins"]))?;
    refuse_beside_other_tracers()?;
    if !stacks_only && !cost_only {
        if !scale_only {
            // Recordings: size per VM-hour and offline report time (synthetic one-hour
            // recording).
            run(cargo().args(["bench", "-p", "kvmtrace", "--bench", "recording"]))?;
        }
        // record's live storm lines with 10 000 series, after a minute and when full.
        run(cargo().args(["bench", "-p", "kvmtrace", "--bench", "watch"]))?;
        // record's work per interval with 10 000 keys (aggregate, series, recording).
        run(cargo().args(["bench", "-p", "kvmtrace", "--bench", "collect"]))?;
        // The collector at scale: one drain of 50 000 keys (needs root: it loads the programs).
        run(cargo().args(["bench", "-p", "kvmtrace", "--bench", "drain"]))?;
    }
    if scale_only {
        return scale_report();
    }
    let kernel = output(cmd("uname").arg("-r")).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    println!(
        "kernel {}, CPU {cpu}, {} CPUs",
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let (mut guest, rates) = loop_guest("kvmtrace-bench", "cpuid,ms=1000", 1800)?;
    let guest_pid = guest.id();
    let result = (|| -> anyhow::Result<()> {
        if stacks_only {
            return stacks_side_by_side(guest_pid, &rates, rounds * 3, samples);
        }
        if cost_only {
            for side in [&crate::bench_loops::MSR_LOOP, &crate::bench_loops::VMM_LOOP] {
                crate::bench_loops::side_loop(side, guest_pid, rounds, samples)?;
            }
            return crate::bench_paired::paired_cost(guest_pid, &rates, rounds, samples);
        }
        let configs = crate::bench_loops::CONFIGS;
        let by_config =
            crate::bench_loops::rates_by_config(&configs, guest_pid, &rates, rounds, samples)?;
        let medians = crate::bench_loops::print_rates(
            &format!(
                "In-kernel exit loop (guest CPUID, one kvm_cpuid event per exit), median of {rounds} x {samples} s"
            ),
            &configs,
            &by_config,
            1.0,
        );
        let slow = |m: f64| 100.0 * (1.0 - m / medians[0]);
        let (floor, raw, ours, bpft) = (
            slow(medians[1]),
            slow(medians[2]),
            slow(medians[3]),
            slow(medians[4]),
        );
        println!(
            "  kvmtrace slowdown {ours:.1}% = classic floor {floor:.1}% + {:.1} pp (raw floor {raw:.1}%); bpftrace keyed count {bpft:.1}%",
            ours - floor
        );
        for side in [&crate::bench_loops::MSR_LOOP, &crate::bench_loops::VMM_LOOP] {
            crate::bench_loops::side_loop(side, guest_pid, rounds, samples)?;
        }
        stacks_side_by_side(guest_pid, &rates, rounds * 3, samples)?;

        // Per-event cost of each tracer's programs, from the kernel's own BPF run-time statistics
        // (immune to the run-to-run noise above; the statistics add the same ~100 ns to both).
        println!("\nProgram cost per event (kernel.bpf_stats_enabled, mean over {samples} s):");
        let mut floor = None;
        for config in [
            Config::EmptyProgram,
            Config::EmptyRaw,
            Config::Kvmtrace,
            Config::Bpftrace,
            Config::KvmtraceStacks,
        ] {
            let cost = program_cost(config, guest_pid, &rates, samples)?;
            let ratio = floor.map_or_else(String::new, |f: f64| {
                format!(" ({:.2}x the empty classic program)", cost.ns_per_event / f)
            });
            println!(
                "  {:<30} {:>8.1} ns/event over {} events, {:.2} events/exit{ratio}",
                config.label(),
                cost.ns_per_event,
                cost.events,
                cost.events_per_exit
            );
            if config == Config::EmptyProgram {
                floor = Some(cost.ns_per_event);
            }
            // Per probe: each of kvmtrace's programs against the empty program's mean.
            if config == Config::KvmtraceStacks {
                // The sampler runs on every busy CPU, and most runs (other threads) return at
                // once: its whole run time per second, charged to the vCPU's CPU alone, is an
                // upper bound of what it takes from the vCPU.
                for (name, ns, runs) in cost.by_program.iter().filter(|p| p.0.contains("stack")) {
                    let busy = ns * *runs as f64 / samples as f64 / 1e9;
                    println!(
                        "    {name:<26} {ns:>8.1} ns/run over {runs} runs in {samples} s: {:.3} % of one CPU in all (bar: under 1 % of the vCPU)",
                        100.0 * busy
                    );
                }
                continue;
            }
            if config == Config::Kvmtrace
                && let Some(f) = floor
            {
                for (name, ns, runs) in &cost.by_program {
                    println!(
                        "    {name:<26} {ns:>8.1} ns/event over {runs} events ({:.2}x)",
                        ns / f
                    );
                }
            }
        }
        crate::bench_paired::paired_cost(guest_pid, &rates, rounds, samples)?;

        // The collector's CPU: record and serve side by side on the same exit loop.
        const CPU_SECS: u64 = 10;
        let record = collector_cpu(false, guest_pid, &rates, CPU_SECS)?;
        let serve = collector_cpu(true, guest_pid, &rates, CPU_SECS)?;
        println!(
            "\nCollector CPU over {CPU_SECS} s, the guest's exit loop traced (% of one CPU: utime + stime from /proc/PID/stat, 10 ms ticks; schedstat, exact):"
        );
        for (label, c) in [
            ("kvmtrace record", &record),
            ("kvmtrace serve, scraped 1/s", &serve),
        ] {
            println!(
                "  {label:<28} {:>5.2}% (stat) {:>6.3}% (schedstat) at {:>7.0} exits/s{}",
                c.pct,
                c.sched_pct,
                c.exits_per_sec,
                c.events_per_sec
                    .map(|e| format!(
                        " ({e:.0} BPF program runs/s while the sampled statistics were on)"
                    ))
                    .unwrap_or_default()
            );
        }
        // At scale: 200 vCPU threads of real guests (the guest above keeps running; it is not
        // traced here).
        scale_report()?;
        if serve.pct.max(serve.sched_pct) > 1.0 {
            bail!(
                "kvmtrace serve used {:.2}% of one CPU ({:.3}% by schedstat) at {:.0} exits/s: over the 1 % budget",
                serve.pct,
                serve.sched_pct,
                serve.exits_per_sec
            );
        }

        // An unrelated process: this one, making getpid syscalls. kvmtrace attaches nothing to
        // syscalls, so any difference is noise; best-of-N is robust to interference from the
        // guest and the tracer on this small machine, and the baseline's own spread is the noise.
        let mut without = Vec::new();
        let mut with = Vec::new();
        for _ in 0..rounds * 2 {
            without.push(getpid_ns(1_000_000));
            let tracer = start(Config::Kvmtrace, None)?;
            with.push(getpid_ns(1_000_000));
            stop(tracer);
        }
        let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (a, b) = (best(&without), best(&with));
        let noise = 100.0 * (median(&mut without.clone()) / a - 1.0);
        println!(
            "\nUnrelated process, getpid syscall loop (best of {}):",
            rounds * 2
        );
        println!(
            "  without kvmtrace {a:.1} ns/call, with kvmtrace recording all VMs {b:.1} ns/call ({:+.1}%; baseline median-vs-best spread {noise:.1}%)",
            100.0 * (b / a - 1.0)
        );

        // Context switches of an unrelated process: each one runs the sched_switch programs of
        // kvmtrace (two TID_SLOTS loads for threads that are not vCPUs), of the empty
        // floor and of bpftrace.
        let mut pp: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
        for round in 0..rounds {
            for i in 0..configs.len() {
                let idx = (i + round) % configs.len();
                let tracer = start(configs[idx], None)?;
                pp[idx].push(ping_pong_ns(100_000));
                stop(tracer);
            }
        }
        let pp: Vec<f64> = pp.iter().map(|v| best(v)).collect();
        println!(
            "\nUnrelated process, thread ping-pong over a socket pair (context switches; best of {rounds}):"
        );
        for (c, ns) in configs.iter().zip(&pp) {
            println!(
                "  {:<28} {:>8.0} ns/round trip {:>+7.1}%",
                c.label(),
                ns,
                100.0 * (ns / pp[0] - 1.0)
            );
        }
        Ok(())
    })();
    let _ = guest.kill();
    let _ = guest.wait();
    result
}

/// `kvmtrace record`, then `kvmtrace serve` (scraped every second), of 200 vCPU threads of
/// real guests for a minute each: their CPU.
fn scale_report() -> anyhow::Result<()> {
    const SCALE_SECS: u64 = 60;
    for (name, collector) in [
        ("kvmtrace record at scale", Collector::Record),
        ("kvmtrace serve at scale", Collector::Serve),
    ] {
        let scale = crate::bench_scale::collector_at_scale(collector, 10, 20, SCALE_SECS)?;
        println!(
            "  {name:<28} {:>5.2}% (stat) {:>6.3}% (schedstat): {} vCPU threads (10 guests x 20 vCPUs, each 50 port writes over 50 ports and 50 timer halts per second) over {:.0} s",
            scale.pct, scale.sched_pct, scale.threads, scale.secs
        );
        if scale.pct.max(scale.sched_pct) >= 1.0 {
            // Reported, not failed: the issue's bar, not yet met (see the README's numbers).
            println!("  {name}: over the bar of 1 % of one CPU");
        }
    }
    Ok(())
}
