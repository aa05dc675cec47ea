//! Per-event cost of kvmtrace's programs against both empty programs on the very same events:
//! the empty classic program, the empty raw one and `kvmtrace record` are attached at once, so
//! every guest exit runs all three and the ratios do not carry most of the run-to-run noise of
//! measuring one configuration after another (±20 % on this host). Medians over rounds; the
//! median still moves between runs (kvm_cpuid 1.39x-1.45x with the same code, five runs).

use std::{collections::BTreeMap, sync::mpsc::Receiver, time::Duration};

use anyhow::Context as _;

use crate::bench::{
    Config, bpf_stats_on, bpf_stats_restore, prog_stats, runs_by_name, start, stop,
};

/// kvm_cpuid's per-event cost must stay within this factor of the empty classic program's.
const BAR: f64 = 1.3;

/// Runs `rounds` rounds of `secs` seconds each and prints, per program, the median ns per run
/// and its median ratio to the empty classic program of the same round.
pub fn paired_cost(
    guest_pid: u32,
    rates: &Receiver<String>,
    rounds: usize,
    secs: usize,
) -> anyhow::Result<()> {
    const FLOOR: &str = "kvmtrace_floor_tp";
    let previous = bpf_stats_on()?;
    let mut ns: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut ratios: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let result = (|| -> anyhow::Result<()> {
        for _ in 0..rounds {
            let before: std::collections::HashSet<u64> = prog_stats()?.into_keys().collect();
            let mut tracers = Vec::new();
            for config in [Config::EmptyProgram, Config::EmptyRaw, Config::Kvmtrace] {
                tracers.push(start(config, Some(guest_pid))?);
            }
            while rates.try_recv().is_ok() {}
            let a = prog_stats()?;
            std::thread::sleep(Duration::from_secs(secs as u64));
            let b = prog_stats()?;
            tracers.into_iter().for_each(stop);
            let round = runs_by_name(&before, &a, &b);
            let per_run = |name: &str| {
                round
                    .get(name)
                    .filter(|(_, n)| *n > 0)
                    .map(|(t, n)| *t as f64 / *n as f64)
            };
            let floor = per_run(FLOOR).context("the empty classic program did not run")?;
            for name in round.keys() {
                if let Some(x) = per_run(name) {
                    ns.entry(name.clone()).or_default().push(x);
                    ratios.entry(name.clone()).or_default().push(x / floor);
                }
            }
        }
        Ok(())
    })();
    bpf_stats_restore(&previous)?;
    result?;
    println!(
        "\nProgram cost per event, all attached at once (the same events; medians of {rounds} rounds of {secs} s):"
    );
    for (name, v) in &mut ns {
        let r = ratios.get_mut(name).expect("a ratio per program");
        println!(
            "  {name:<20} {:>8.1} ns/run  {:>5.2}x the empty classic program",
            crate::bench::median(v),
            crate::bench::median(r)
        );
    }
    if let Some(r) = ratios.get_mut("kvmtrace_cpuid_raw") {
        let r = crate::bench::median(r);
        if r > BAR {
            println!("  kvm_cpuid: {r:.2}x, over the bar of {BAR}x");
        }
    }
    Ok(())
}
