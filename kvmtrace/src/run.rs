//! Wires the stages for each command: select VMs, start the tracer, drain at each interval until
//! the duration ends or a signal arrives, then build and render the report.

use std::{collections::BTreeMap, io::Write as _, time::Duration};

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{Cli, Command, ListArgs, RecordArgs},
    collect::{TraceOptions, Tracer, check_root},
    error::Error,
    model::{Aggregate, Interval},
    render,
    report::{self, Context},
    vm::{Host, Vm},
};

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Record(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(record(args))
        }
        Command::List(args) => list(&args),
    }
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let vms = Host::default().vms();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &vms)?;
        writeln!(out)?;
        return Ok(());
    }
    if vms.is_empty() {
        writeln!(
            out,
            "No VMs (processes with a KVM VM file descriptor) on this host."
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>8}  {:<24}  {:>5}  vCPU threads",
        "PID", "NAME", "vCPUs"
    )?;
    for vm in &vms {
        let vcpus: Vec<String> = vm
            .vcpu_threads()
            .map(|t| format!("{} ({})", t.tid, t.comm))
            .collect();
        writeln!(
            out,
            "{:>8}  {:<24}  {:>5}  {}",
            vm.pid,
            vm.name,
            vcpus.len(),
            vcpus.join(", ")
        )?;
    }
    Ok(())
}

/// The host's KVM module, for the report header.
fn kvm_module() -> Option<String> {
    ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .into_iter()
        .find(|m| std::path::Path::new("/sys/module").join(m).exists())
        .map(str::to_string)
}

async fn record(args: RecordArgs) -> anyhow::Result<()> {
    // Signals first: a Ctrl-C during set-up still ends in an orderly teardown.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    check_root()?;
    let host = Host::default();
    let selected = host.select(&args.names, &args.pids)?;
    let filtered = !(args.names.is_empty() && args.pids.is_empty());
    let mut directory: BTreeMap<u32, Vm> = selected.into_iter().map(|vm| (vm.pid, vm)).collect();
    let opts = TraceOptions {
        pids: filtered.then(|| directory.keys().copied().collect()),
        tracefs: args.tracefs.clone(),
        max_latency_keys: args.max_keys,
        ..Default::default()
    };
    let mut tracer = Tracer::start(&opts)?;
    let what = if filtered {
        directory
            .values()
            .map(|vm| format!("{} (pid {})", vm.name, vm.pid))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        format!("all VMs on this host ({} running now)", directory.len())
    };
    eprintln!(
        "kvmtrace: recording {what}; {}",
        match args.duration {
            Some(d) => format!(
                "for {}, Ctrl-C to stop early",
                humantime::format_duration(d)
            ),
            None => "Ctrl-C to stop".into(),
        }
    );

    let mut agg = Aggregate::default();
    let mut ticker = tokio::time::interval(args.interval);
    ticker.tick().await; // the first tick is immediate
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let iv = tracer.drain()?;
                learn_identities(&host, &mut directory, &iv);
                agg.apply(&iv);
            }
            _ = &mut deadline => break,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    let iv = tracer.drain()?;
    learn_identities(&host, &mut directory, &iv);
    agg.apply(&iv);
    let in_flight = tracer.in_flight()?;
    let ctx = Context {
        vms: &directory,
        per_vcpu: args.per_vcpu,
        kvm_module: kvm_module(),
        attached: tracer.attached.iter().map(|s| s.to_string()).collect(),
        missing: tracer.missing.iter().map(|s| s.to_string()).collect(),
        in_flight: &in_flight,
    };
    let report = report::build(&agg, &ctx);
    drop(tracer); // detach before printing: nothing of ours stays attached
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        render::json::render(&report, &mut out)
    } else {
        render::text::render(&report, &mut out)
    };
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Names for VMs and threads first seen in this interval (while they are still alive).
fn learn_identities(host: &Host, directory: &mut BTreeMap<u32, Vm>, iv: &Interval) {
    let tids = iv
        .latency
        .iter()
        .map(|(k, _)| (k.tgid, k.tid))
        .chain(iv.details.iter().map(|(k, _)| (k.tgid, k.tid)));
    for (tgid, tid) in tids {
        match directory.get_mut(&tgid) {
            Some(vm) if vm.threads.iter().any(|t| t.tid == tid) => {}
            Some(vm) => {
                for t in host.threads(tgid) {
                    if !vm.threads.iter().any(|k| k.tid == t.tid) {
                        vm.threads.push(t);
                    }
                }
            }
            None => {
                if let Some(vm) = host.vm(tgid) {
                    directory.insert(tgid, vm);
                }
            }
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::other(e.to_string())
    }
}
