//! `kvmtrace record`: select VMs, start the tracer, drain at each interval until the duration
//! ends or a signal arrives, then report (and finish the recording file).

use std::{collections::BTreeMap, io, time::Duration};

use tokio::signal::unix::{SignalKind, signal};

use super::output::finish_output;
use crate::{
    cli::RecordArgs,
    error::Error,
    host::{
        Host,
        identities::{learn_identities, running_vcpu_threads},
        kernel::kvm_module,
        procfs_cpu::ProcfsCpu,
    },
    model::{Aggregate, Interval, identity::Vm},
    record::Writer,
    render::{
        self, Format, Weight,
        live::{Progress, watch_storms},
    },
    report::{self, Context},
    source::{
        live::{TraceOptions, Tracer, check_root},
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
    let host = Host::default();
    let selected = host.select(&args.names, &args.pids)?;
    let filtered = !(args.names.is_empty() && args.pids.is_empty());
    let mut directory: BTreeMap<u32, Vm> = selected.into_iter().map(|vm| (vm.pid, vm)).collect();
    let opts = TraceOptions {
        pids: filtered.then(|| directory.keys().copied().collect()),
        tracefs: args.tracefs.clone(),
        max_latency_keys: args.max_keys,
        max_detail_keys: args.max_detail_keys,
        detail_keys_per_thread: args.max_keys_per_vcpu,
        follow: false,
    };
    let mut tracer = Tracer::start(&opts)?;
    let mut procfs = ProcfsCpu::at_start(&host, &directory);
    // Everything is attached: establish the state of the vCPU threads already running, then
    // start counting.
    tracer.open(|| running_vcpu_threads(&host, &directory))?;
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
    eprintln!("kvmtrace: {}", starting_line(&directory, filtered, &args));
    let progress = Progress::new(args.quiet);
    let storm_cfg = args.storms.config();
    let watch = {
        use std::io::IsTerminal as _;
        !args.no_watch && (args.watch || io::stdout().is_terminal())
    };
    let mut announced = Vec::new();

    let mut agg = Aggregate::default();
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let mut iv = tracer.drain()?;
                procfs.fill(&host, &mut iv);
                step(&host, &mut directory, &mut agg, &mut writer, &iv)?;
                progress.update(&agg, &iv);
                if watch {
                    announced = watch_storms(&agg, &directory, &storm_cfg, &announced, &progress);
                }
            }
            _ = &mut deadline => break,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Closed first: the last interval and what is in flight describe the same instant.
    tracer.close()?;
    let mut iv = tracer.drain()?;
    procfs.fill(&host, &mut iv);
    step(&host, &mut directory, &mut agg, &mut writer, &iv)?;
    if watch {
        watch_storms(&agg, &directory, &storm_cfg, &announced, &progress);
    }
    let in_flight = tracer.in_flight()?;
    let cost = tracer.cost();
    progress.finish();
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
    drop(tracer); // detach before printing: nothing of ours stays attached
    if let Some(w) = writer {
        let raw = w.raw_bytes;
        let end = crate::record::End {
            tracer_cost: Some(cost),
            ..end_of(&in_flight)
        };
        w.finish(&end)?;
        if let Some(path) = &args.output {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "kvmtrace: wrote {} ({} bytes, {} before compression)",
                path.display(),
                size,
                raw
            );
        }
    }
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

/// "recording vm01 (pid 42) to FILE; for 10s, Ctrl-C to stop early".
fn starting_line(directory: &BTreeMap<u32, Vm>, filtered: bool, args: &RecordArgs) -> String {
    let what = if filtered {
        directory
            .values()
            .map(|vm| format!("{} (pid {})", vm.name, vm.pid))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        format!("all VMs on this host ({} running now)", directory.len())
    };
    format!(
        "recording {what}{}; {}",
        args.output
            .as_ref()
            .map(|p| format!(" to {}", p.display()))
            .unwrap_or_default(),
        match args.duration {
            Some(d) => format!(
                "for {}, Ctrl-C to stop early",
                humantime::format_duration(d)
            ),
            None => "Ctrl-C to stop".into(),
        }
    )
}

/// One drained interval: learn new VMs and threads, add to the aggregate, append to the file.
fn step(
    host: &Host,
    directory: &mut BTreeMap<u32, Vm>,
    agg: &mut Aggregate,
    writer: &mut Option<Writer>,
    iv: &Interval,
) -> Result<(), Error> {
    let changed = learn_identities(host, directory, iv);
    agg.apply(iv);
    if let Some(w) = writer {
        for pid in changed {
            if let Some(vm) = directory.get(&pid) {
                w.vm(vm)?;
            }
        }
        w.interval(iv)?;
    }
    Ok(())
}
