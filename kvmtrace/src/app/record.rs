//! `kvmtrace record`: select VMs, start the tracer, drain at each interval until the duration
//! ends or a signal arrives, then report (and finish the recording file).

use std::{
    collections::BTreeMap,
    io::{self, IsTerminal as _},
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};

use super::{
    config,
    output::{self, finish_output},
};
use crate::{
    cli::RecordArgs,
    host::{
        Host, identities::running_vcpu_threads, kernel::kvm_module, procfs_cpu::ProcfsCpu,
        steal::StealClock,
    },
    model::{Aggregate, identity::Vm},
    record::Writer,
    render::{
        self, Format, Weight,
        live::{LiveLines, starting_line},
    },
    report::{self, Context},
    source::{
        live::{Tracer, check_root},
        recording::end_of,
    },
};

pub async fn record(args: RecordArgs) -> anyhow::Result<()> {
    // Signals first: a Ctrl-C during set-up still ends in an orderly teardown.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    check_root()?;
    // Fail on an unwritable output before any tracing starts.
    let file = args.output.as_deref().map(Writer::create).transpose()?;
    crate::guest_symbols::check_readable(&args.guest_symbols)?;
    let host = Host::default();
    let selected = host.select(&args.names, &args.pids)?;
    let filtered = !(args.names.is_empty() && args.pids.is_empty());
    let mut directory: BTreeMap<u32, Vm> = selected.into_iter().map(|vm| (vm.pid, vm)).collect();
    let pids = filtered.then(|| directory.keys().copied().collect());
    let mut tracer = Tracer::start(&config::trace_options(&args, pids))?;
    let mut procfs = ProcfsCpu::at_start(&host, &directory);
    // Everything is attached: establish the state of the vCPU threads already running, then
    // start counting.
    tracer.open(|| running_vcpu_threads(&host, &directory))?;
    let steal = StealClock::start(&host.proc_root);
    let kvm = kvm_module();
    let mut writer = match (file, &args.output) {
        (Some(file), Some(path)) => {
            let header = tracer.recording_header(args.interval, kvm.clone());
            let mut w = Writer::start(file, path, &header)?;
            for vm in directory.values() {
                w.vm(vm)?;
            }
            Some(w)
        }
        _ => None,
    };
    eprintln!(
        "kvmtrace: {}",
        starting_line(&directory, filtered, args.output.as_deref(), args.duration)
    );
    let storm_cfg = args.storms.config();
    let watch = !args.no_watch && (args.watch || io::stdout().is_terminal());
    let mut live = LiveLines::new(args.quiet, watch.then_some(storm_cfg));

    let mut new_threads = tracer.new_threads()?;
    let mut agg = Aggregate::default();
    agg.slow.threshold_ns = tracer.slow_threshold_ns();
    agg.rips.enabled = tracer.counts_guest_rips();
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let mut iv = tracer.drain()?;
                procfs.fill(&host, &mut iv, false);
                output::step(&host, &mut directory, &mut agg, &mut writer, &iv)?;
                live.update(&agg, &iv, &directory);
            }
            tids = new_threads.next() => {
                output::learn_new_threads(&host, &mut directory, &mut writer, &tids?)?;
            }
            _ = &mut deadline => break,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Closed first: the last interval and what is in flight describe the same instant.
    tracer.close()?;
    let mut iv = tracer.drain()?;
    procfs.fill(&host, &mut iv, true);
    output::step(&host, &mut directory, &mut agg, &mut writer, &iv)?;
    live.finish(&agg, &iv, &directory);
    let in_flight = tracer.in_flight()?;
    let cost = tracer.cost();
    let ctx = Context {
        storm: &storm_cfg,
        vms: &directory,
        per_vcpu: args.per_vcpu,
        kvm_module: kvm,
        attached: tracer.attached.iter().map(|s| s.to_string()).collect(),
        missing: tracer.missing.iter().map(|s| s.to_string()).collect(),
        in_flight: &in_flight,
        max_rows: (!args.all_keys).then_some(report::DEFAULT_MAX_ROWS),
    };
    let mut report = report::build(&agg, &ctx);
    report.tracer_cost = Some(cost.clone());
    report.host_steal_pct = steal.pct(&host.proc_root);
    drop(new_threads); // its map goes with the tracer's
    drop(tracer); // detach before printing: nothing of ours stays attached
    if let (Some(w), Some(path)) = (writer, &args.output) {
        let end = crate::record::End {
            tracer_cost: Some(cost),
            host_steal_pct: report.host_steal_pct,
            ..end_of(&in_flight)
        };
        output::finish_recording(w, &end, path)?;
    }
    // After the file is complete: a VM name that matches nothing loses no recording.
    crate::guest_symbols::name_rips(&mut report, &args.guest_symbols, "this recording")?;
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    finish_output(render::render(
        &report,
        format,
        Weight::Time,
        "",
        &mut io::stdout().lock(),
    ))
}
