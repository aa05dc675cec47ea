//! Exit loops timed under each tracer configuration in turn: the whole cost of tracing an event
//! (the attach mechanism, the program, and the cache and TLB misses it takes after the guest or
//! the VMM ran) as the loop's lost throughput. The kernel's BPF statistics time only the
//! program, and miss latencies they can hide: their closing clock read does not wait for the
//! program's outstanding loads, while a program that reads the clock (an lfence) does.

use std::{sync::mpsc::Receiver, time::Duration};

use anyhow::Context as _;

use crate::bench::{Config, loop_guest, median, start, stop, wait_for};

/// The configurations the CPUID loop is timed under, in the order printed (the first five, in
/// this order, are what [`print_rates`] compares).
pub const CONFIGS: [Config; 6] = [
    Config::Nothing,
    Config::EmptyProgram,
    Config::EmptyRaw,
    Config::Kvmtrace,
    Config::Bpftrace,
    Config::KvmtraceStacks,
];

/// The rates (exits/s, the guest's `rate=` lines) of each of `configs`: `rounds` rounds, each
/// timing every configuration for `samples` one-second lines, starting one later each round.
pub fn rates_by_config(
    configs: &[Config],
    guest_pid: u32,
    rates: &Receiver<String>,
    rounds: usize,
    samples: usize,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut by_config: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        for i in 0..configs.len() {
            let idx = (i + round) % configs.len();
            let tracer = start(configs[idx], Some(guest_pid))?;
            while rates.try_recv().is_ok() {} // drop lines from before the tracer attached
            wait_for(rates, "a partial second", |l| l.starts_with("result"))?;
            for _ in 0..samples {
                let line = rates
                    .recv_timeout(Duration::from_secs(10))
                    .context("guest rate")?;
                let rate: f64 = line.rsplit("rate=").next().unwrap_or("0").parse()?;
                by_config[idx].push(rate);
            }
            stop(tracer);
        }
    }
    Ok(by_config)
}

/// Prints one loop's medians (of `configs`, whose first five are those of [`CONFIGS`]): each
/// configuration's rate, its slowdown, and the time it adds to an exit, also per traced event
/// (`events_per_exit` of them) for the tracers; with the noise of a difference of two medians,
/// from the spread of the seconds with nothing attached. Returns the medians.
pub fn print_rates(
    title: &str,
    configs: &[Config],
    by_config: &[Vec<f64>],
    events_per_exit: f64,
) -> Vec<f64> {
    let medians: Vec<f64> = by_config.iter().map(|v| median(&mut v.clone())).collect();
    let base = medians[0];
    println!("\n{title}:");
    println!(
        "  {:<30} {:>10} {:>10} {:>13} {:>13}",
        "configuration", "exits/s", "vs nothing", "ns/exit added", "ns/event"
    );
    for (c, m) in configs.iter().zip(&medians) {
        let added = 1e9 / m - 1e9 / base;
        let per_event = if *c == Config::Nothing {
            String::new()
        } else {
            format!("{:.1}", added / events_per_exit)
        };
        println!(
            "  {:<30} {:>10.0} {:>+9.1}% {:>13.1} {:>13}",
            c.label(),
            m,
            100.0 * (m / base - 1.0),
            added,
            per_event
        );
    }
    let added = |i: usize| 1e9 / medians[i] - 1e9 / base;
    let noise = difference_noise_ns(&by_config[0]);
    println!(
        "  kvmtrace adds {:.2}x the empty classic programs' time per exit ({:.2}x the empty raw ones', bpftrace {:.2}x); noise of each ns/exit figure: ±{noise:.0} ns",
        added(3) / added(1),
        added(3) / added(2),
        added(4) / added(1)
    );
    medians
}

/// The standard error, in ns per exit, of the difference of two configurations' medians, from
/// the spread of `rates` (one configuration's seconds): a median's is ~1.25 σ/√n, a
/// difference's √2 times that.
fn difference_noise_ns(rates: &[f64]) -> f64 {
    let n = rates.len() as f64;
    let mean = rates.iter().sum::<f64>() / n;
    let sd = (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    // d(1e9 / rate) = 1e9 / rate² · d(rate)
    let sd_ns = 1e9 * sd / (mean * mean);
    std::f64::consts::SQRT_2 * 1.25 * sd_ns / n.sqrt()
}

/// A loop of one kind of exit in a guest of its own, timed like the CPUID loop while the CPUID
/// guest is stopped.
pub struct SideLoop {
    /// The guest's `--run` step, one second long.
    pub run: &'static str,
    /// What the table's title says the loop is.
    pub title: &'static str,
    /// Traced events per exit.
    pub events_per_exit: f64,
    /// Rounds per configuration, as a multiple of the bench's.
    pub rounds_factor: usize,
}

/// The MSR loop: RDMSR of a register the kernel emulates, one kvm_msr event per exit (the
/// second probe, after kvm_cpuid, whose events come back to back, hot).
pub const MSR_LOOP: SideLoop = SideLoop {
    run: "rdmsr,ms=1000",
    title: "In-kernel MSR loop (guest RDMSR, one kvm_msr event per exit)",
    events_per_exit: 1.0,
    rounds_factor: 1,
};

/// The VMM round-trip loop: port writes each handled in the VMM's user space (kvm_pio,
/// kvm_userspace_exit and two kvm_fpu per exit: the events of a qemu-kvm emulating a device).
/// An exit takes ~25 µs here and the tracers add ~1 µs, within the rate's second-to-second
/// noise (1-2 %): twice the rounds.
pub const VMM_LOOP: SideLoop = SideLoop {
    run: "pio_out,port=0x70,ms=1000",
    title: "VMM round-trip loop (guest port writes handled in user space: kvm_pio, kvm_userspace_exit, 2 kvm_fpu per exit)",
    events_per_exit: 4.0,
    rounds_factor: 2,
};

/// Times `side` under every configuration but `--stacks` (the sampler's cost is measured on its
/// own) while the CPUID guest (`cpuid_guest`) is stopped.
pub fn side_loop(
    side: &SideLoop,
    cpuid_guest: u32,
    rounds: usize,
    samples: usize,
) -> anyhow::Result<()> {
    let configs = &CONFIGS[..5];
    let rounds = rounds * side.rounds_factor;
    let (mut guest, rates) = loop_guest("kvmtrace-bench-side", side.run, 1800)?;
    let result = with_stopped(cpuid_guest, || {
        // Its first seconds run a few percent slower (warming up): not a configuration's.
        for _ in 0..3 {
            wait_for(&rates, "the side loop's guest", |l| l.starts_with("result"))?;
        }
        rates_by_config(configs, guest.id(), &rates, rounds, samples)
    });
    let _ = guest.kill();
    let _ = guest.wait();
    print_rates(
        &format!("{}, median of {rounds} x {samples} s", side.title),
        configs,
        &result?,
        side.events_per_exit,
    );
    Ok(())
}

/// Runs `f` with process `pid` stopped (SIGSTOP, then SIGCONT however `f` ends).
pub fn with_stopped<T>(pid: u32, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    signal(pid, libc::SIGSTOP)?;
    let result = f();
    signal(pid, libc::SIGCONT)?;
    result
}

fn signal(pid: u32, sig: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("signalling {pid}"));
    }
    Ok(())
}
