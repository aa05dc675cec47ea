//! Wires the stages for each command: select VMs, start the tracer, drain at each interval until
//! the duration ends or a signal arrives, then build and render the report; or the same from a
//! recording file.

use std::{
    collections::BTreeMap,
    io::{self, Write as _},
    path::Path,
    time::{Duration, SystemTime},
};

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    analyze::storms::{self, Config as StormConfig, Storm},
    cli::{
        Cli, Command, DiffArgs, DiffFormat, Format, ListArgs, RecordArgs, ReportArgs, SortKey,
        Weight,
    },
    source::live::{TraceOptions, Tracer, check_root},
    analyze::diff,
    error::Error,
    model::{Aggregate, Interval},
    source::recording::{self as offline, Window},
    outfile::OutFile,
    record::{Header, Writer},
    render,
    report::{self, Context, Report},
    report::filter as view, untrusted,
    host::Host, model::identity::Vm,
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
        Command::Report(args) => report_file(&args),
        Command::Diff(args) => diff_files(&args),
        Command::Serve(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(crate::serve::serve(args))?)
        }
        Command::Top(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(crate::top::top(args))
        }
    }
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let vms = Host::default().vms();
    let mut out = io::stdout().lock();
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
pub(crate) fn kvm_module() -> Option<String> {
    ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists())
        .map(str::to_string)
}

/// Where `report` and `diff` write: stdout, or the file given with -o, which takes the place of
/// FILE only once everything is written ([`OutFile`]: no symbolic links followed, an existing
/// file kept if anything fails).
enum Output {
    Stdout(io::BufWriter<io::StdoutLock<'static>>),
    File(io::BufWriter<OutFile>),
}

impl io::Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Stdout(w) => w.write(buf),
            Output::File(w) => w.write(buf).map_err(|e| file_error(w.get_ref(), e)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout(w) => w.flush(),
            Output::File(w) => w.flush().map_err(|e| file_error(w.get_ref(), e)),
        }
    }
}

/// A write error that names the file.
fn file_error(f: &OutFile, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("writing {}: {e}", f.label()))
}

impl Output {
    /// Flushes, and puts the file in place.
    fn finish(self) -> anyhow::Result<()> {
        match self {
            Output::Stdout(mut w) => finish_output(w.flush()),
            Output::File(w) => {
                let f = w.into_inner().map_err(|e| {
                    let (e, w) = e.into_parts();
                    file_error(w.get_ref(), e)
                })?;
                f.commit()?;
                Ok(())
            }
        }
    }
}

/// Stdout, or the file given with -o.
fn output(path: Option<&Path>) -> anyhow::Result<Output> {
    Ok(match path {
        Some(p) => Output::File(io::BufWriter::new(OutFile::create(p, "")?)),
        None => Output::Stdout(io::BufWriter::new(io::stdout().lock())),
    })
}

/// Broken pipes (`| head`) end output quietly.
fn finish_output(r: io::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn render_report(
    report: &Report,
    format: Format,
    weight: Weight,
    title: &str,
    out: &mut dyn io::Write,
) -> io::Result<()> {
    let mut out = out;
    match format {
        Format::Text => render::text::render(report, &mut out),
        Format::Json => render::json::render(report, &mut out),
        Format::Csv => render::csv::render(report, &mut out),
        Format::Folded => render::folded::lines(report, weight)
            .iter()
            .try_for_each(|l| writeln!(out, "{l}")),
        Format::Flamegraph => render::flamegraph::render(
            &render::folded::lines(report, weight),
            title,
            weight,
            &mut out,
        ),
    }?;
    out.flush()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

async fn record(args: RecordArgs) -> anyhow::Result<()> {
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
    // procfs CPU time of every known thread as counting starts: the cross-check's baseline.
    let mut procfs = ProcfsCpu::default();
    for vm in directory.values() {
        for t in &vm.threads {
            if let Some(ns) = host.thread_cpu_ns(vm.pid, t.tid) {
                procfs.base.insert(t.tid, ns);
            }
        }
    }
    // Everything is attached: establish the state of the vCPU threads already running, then
    // start counting.
    tracer.open(|| running_vcpu_threads(&host, &directory))?;
    let kvm = kvm_module();
    let mut writer = match (file, &args.output) {
        (Some(file), Some(path)) => {
            let header = recording_header(&tracer, &args, kvm.clone());
            let mut w = Writer::start(file, path, &header)?;
            for vm in directory.values() {
                w.vm(vm)?;
            }
            Some(w)
        }
        _ => None,
    };
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
        "kvmtrace: recording {what}{}; {}",
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
    );
    let progress = Progress::new(args.quiet);
    let storm_cfg = args.storms.config();
    let watch = {
        use std::io::IsTerminal as _;
        !args.no_watch && (args.watch || io::stdout().is_terminal())
    };
    let mut announced: Vec<Storm> = Vec::new();

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
            ..offline::end_of(&in_flight)
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
    finish_output(render_report(
        &report,
        format,
        Weight::Time,
        "",
        &mut io::stdout().lock(),
    ))
}

/// The vCPU threads of the selected VMs as they are now: those inside KVM_RUN, and those named
/// as vCPUs (`CPU N/KVM`) wherever they are. Other threads of a VM get state at their first event.
pub(crate) fn running_vcpu_threads(
    host: &Host,
    vms: &BTreeMap<u32, Vm>,
) -> Vec<(u32, u32, crate::host::thread_probe::AtStart)> {
    use crate::host::thread_probe::{AtStart, probe};
    let mut out = Vec::new();
    for vm in vms.values() {
        for t in &vm.threads {
            let Some(at) = probe(&host.proc_root, vm.pid, t.tid) else {
                continue;
            };
            if at == AtStart::BlockedInRun || crate::model::identity::vcpu_index_of_comm(&t.comm).is_some() {
                out.push((vm.pid, t.tid, at));
            }
        }
    }
    out
}

/// What a recording file says about itself.
fn recording_header(tracer: &Tracer, args: &RecordArgs, kvm_module: Option<String>) -> Header {
    Header {
        kvmtrace_version: env!("CARGO_PKG_VERSION").into(),
        host: host_name(),
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .into(),
        kvm_module,
        formats: tracer.formats.clone(),
        tracepoints_attached: tracer.attached.iter().map(|s| s.to_string()).collect(),
        tracepoints_missing: tracer.missing.iter().map(|s| s.to_string()).collect(),
        interval_ms: args.interval.as_millis() as u64,
        start_unix_secs: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        command_line: std::env::args_os()
            .map(|a| crate::untrusted::escape(&a.to_string_lossy()))
            .collect(),
    }
}

/// Prints a line for each storm that started or ended since the last call; returns the storms
/// known now.
fn watch_storms(
    agg: &Aggregate,
    vms: &BTreeMap<u32, Vm>,
    cfg: &crate::analyze::storms::Config,
    before: &[Storm],
    progress: &Progress,
) -> Vec<Storm> {
    let label = |pid, tid| crate::model::identity::label_of_thread(vms.get(&pid), tid);
    let now = storms::detect(&agg.series, cfg, &label);
    let (started, ended) = storms::changes(before, &now);
    let name = |s: &Storm| {
        let vm = vms
            .get(&s.pid)
            .map_or_else(|| format!("pid {}", s.pid), |v| v.name.clone());
        let vcpu = match s.vcpu {
            storms::StormVcpu::One(label) => label.named(),
            storms::StormVcpu::All => "all vCPUs".into(),
        };
        format!("{vm} {vcpu}: {}", s.what)
    };
    for s in started {
        progress.println(format!(
            "storm started at {:.1} s: {} at {:.0}/s{}",
            s.start_secs,
            name(s),
            s.peak_rate,
            s.diagnosis
                .as_ref()
                .map(|d| format!(" ({})", d.title))
                .unwrap_or_default()
        ));
    }
    for s in ended {
        progress.println(format!(
            "storm ended at {:.1} s: {} after {:.1} s, mean {:.0}/s, {} exits",
            s.end_secs,
            name(s),
            s.end_secs - s.start_secs,
            s.mean_rate,
            s.count
        ));
    }
    now
}

/// procfs CPU time of each traced thread since recording started (or since it was first seen),
/// the cross-check of the kernel's accounting.
#[derive(Default)]
struct ProcfsCpu {
    /// Value at the start (or first sight) of each thread.
    base: BTreeMap<u32, u64>,
    /// Last value read: a thread that exited keeps it.
    last: BTreeMap<u32, u64>,
}

impl ProcfsCpu {
    fn fill(&mut self, host: &Host, iv: &mut Interval) {
        for t in &mut iv.threads {
            if let Some(now) = host.thread_cpu_ns(t.tgid, t.tid) {
                self.base.entry(t.tid).or_insert(now);
                self.last.insert(t.tid, now);
            }
            if let (Some(b), Some(l)) = (self.base.get(&t.tid), self.last.get(&t.tid)) {
                t.procfs_ns = Some(l.saturating_sub(*b));
            }
        }
    }
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

/// Names for VMs and threads first seen in this interval (while they are still alive); returns
/// the pids whose identity changed.
pub(crate) fn learn_identities(
    host: &Host,
    directory: &mut BTreeMap<u32, Vm>,
    iv: &Interval,
) -> Vec<u32> {
    let mut changed = Vec::new();
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
                // Remember that this tid was looked for, so we do not scan /proc again for it.
                if !vm.threads.iter().any(|t| t.tid == tid) {
                    vm.threads.push(crate::model::identity::Thread {
                        tid,
                        comm: String::new(),
                    });
                }
                changed.push(tgid);
            }
            None => {
                if let Some(vm) = host.vm(tgid) {
                    directory.insert(tgid, vm);
                    changed.push(tgid);
                }
            }
        }
    }
    changed.sort_unstable();
    changed.dedup();
    changed
}

/// The live progress line on a terminal (elapsed, exits/s, lost events); nothing when piped.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(quiet: bool) -> Progress {
        use std::io::IsTerminal as _;
        if quiet || !io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        Progress(Some(bar))
    }

    fn update(&self, agg: &Aggregate, iv: &Interval) {
        let Some(bar) = &self.0 else { return };
        let secs = agg.elapsed.as_secs_f64().max(1e-9);
        let exits: u64 = agg.latency.values().map(|l| l.count).sum();
        let details: u64 = agg.details.values().sum();
        let c = |k: kvmtrace_common::Counter| iv.counters[k as usize];
        let lost = c(kvmtrace_common::Counter::LatencyMapFull)
            + c(kvmtrace_common::Counter::DetailMapFull)
            + c(kvmtrace_common::Counter::UnpairedExits)
            + c(kvmtrace_common::Counter::UnpairedEntries);
        bar.set_message(format!(
            "{:.0} exits/s, {:.0} detail events/s, {lost} lost",
            exits as f64 / secs,
            details as f64 / secs
        ));
        bar.tick();
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }

    /// A line on stderr that does not fight with the progress line.
    fn println(&self, line: String) {
        match &self.0 {
            Some(bar) => bar.println(line),
            None => eprintln!("kvmtrace: {line}"),
        }
    }
}

fn report_file(args: &ReportArgs) -> anyhow::Result<()> {
    let loaded = offline::load(
        &args.input,
        Window {
            from: args.from,
            to: args.to,
        },
    )?;
    // Flamegraph frames are VM;vCPU N;REASON;detail, so those formats are always per vCPU.
    let per_vcpu = args.per_vcpu
        || !args.vcpus.is_empty()
        || matches!(args.format, Format::Folded | Format::Flamegraph);
    // Tables for scripts and stacks get every key; text and JSON the top ones and "other keys".
    let max_rows = (!args.all_keys && matches!(args.format, Format::Text | Format::Json))
        .then_some(report::DEFAULT_MAX_ROWS);
    let mut report = offline::build_report(&loaded, per_vcpu, &args.storms.config(), max_rows);
    view::filter(
        &mut report,
        &view::Filter {
            vms: args.vms.clone(),
            vcpus: args.vcpus.clone(),
            reasons: args.reasons.clone(),
        },
    );
    if args.sort != SortKey::Count {
        view::sort(&mut report, args.sort);
    }
    let title = format!("kvmtrace: {}", untrusted::escape(&file_name(&args.input)));
    let mut out = output(args.output.as_deref())?;
    finish_output(render_report(
        &report,
        args.format,
        args.weight,
        &title,
        &mut out,
    ))?;
    out.finish()
}

/// A recording's file name, for flamegraph titles.
fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn diff_files(args: &DiffArgs) -> anyhow::Result<()> {
    let per_vcpu = args.format == DiffFormat::Flamegraph;
    let storm = StormConfig::default();
    let before = offline::build_report(
        &offline::load(&args.before, Window::default())?,
        per_vcpu,
        &storm,
        None,
    );
    let after = offline::build_report(
        &offline::load(&args.after, Window::default())?,
        per_vcpu,
        &storm,
        None,
    );
    let mut out = output(args.output.as_deref())?;
    let r = match args.format {
        DiffFormat::Text => diff::render_text(&diff::diff(&before, &after), &mut out),
        DiffFormat::Json => serde_json::to_writer_pretty(&mut out, &diff::diff(&before, &after))
            .map_err(io::Error::other)
            .and_then(|()| writeln!(out)),
        DiffFormat::Flamegraph => {
            let title = untrusted::escape(&format!(
                "kvmtrace diff {} -> {}",
                args.before.display(),
                args.after.display()
            ));
            render::flamegraph::render_differential(
                &render::folded::lines(&before, args.weight),
                &render::folded::lines(&after, args.weight),
                &title,
                args.weight,
                &mut out,
            )
        }
    };
    finish_output(r)?;
    out.finish()
}
