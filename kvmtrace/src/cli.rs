//! The command line (clap derive). Turning it into work happens in [`mod@crate::run`].

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::source::live::cost::StatsMode;

pub use crate::{
    render::{Format, Weight},
    report::filter::SortKey,
};

#[derive(Debug, Parser)]
#[command(
    name = "kvmtrace",
    version,
    // `--version`: also the commit and the aya version (both from build.rs), for bug reports.
    long_version = concat!(
        env!("CARGO_PKG_VERSION"),
        "\ncommit ",
        env!("KVMTRACE_GIT_COMMIT"),
        "\naya ",
        env!("KVMTRACE_AYA_VERSION")
    ),
    about = "Trace KVM VM exits with eBPF: which VM, vCPU, exit reason, port/MMIO/MSR, and how long",
    after_help = "EXAMPLES:\n    kvmtrace list                          # the VMs on this host\n    kvmtrace record -d vm01                # trace VM vm01 until Ctrl-C, then report\n    kvmtrace record -d vm01 --duration 10s --per-vcpu\n    kvmtrace record -d vm01 -o vm01.kvmtrace   # also save a recording\n    kvmtrace report -i vm01.kvmtrace --format flamegraph -o vm01.svg\n    kvmtrace diff before.kvmtrace after.kvmtrace\n    kvmtrace record -p 4242 --json > exits.json\n    kvmtrace record                        # every VM on the host\n    kvmtrace serve                         # Prometheus metrics of every VM at 127.0.0.1:9669/metrics"
)]
pub struct Cli {
    /// More log output (-v info, -vv debug); kernel-side warnings are always shown.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record VM exits, then print a report (on Ctrl-C, SIGTERM or after --duration).
    Record(RecordArgs),
    /// List the VMs on this host: pid, name, vCPU threads.
    List(ListArgs),
    /// Report on a recording made with `record -o FILE`.
    Report(ReportArgs),
    /// Compare two recordings: per-reason and per-key deltas, sorted by impact.
    Diff(DiffArgs),
    /// Export metrics of every VM (or those named) to Prometheus, until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Live view of the VMs on this host: exits, VMM round trips, CPU, storms; drill down with
    /// Enter (VM -> vCPU -> reason -> ports / MMIO addresses / MSRs). `--batch` for plain text.
    Top(TopArgs),
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Trace the VM with this name (libvirt domain, QEMU -name, systemd machine). Repeatable.
    #[arg(short = 'd', long = "domain", value_name = "NAME")]
    pub names: Vec<String>,
    /// Trace the VM process with this pid. Repeatable.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Stop after this long (e.g. 10s, 2m); default: until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// How often the kernel maps are drained.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Break every table down by vCPU.
    #[arg(long)]
    pub per_vcpu: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// No live progress line, even on a terminal.
    #[arg(long)]
    pub quiet: bool,
    /// Print a line when a storm starts and when it ends (default: when stdout is a terminal).
    #[arg(long, overrides_with = "no_watch")]
    pub watch: bool,
    /// No live storm lines.
    #[arg(long)]
    pub no_watch: bool,
    #[command(flatten)]
    pub storms: StormArgs,
    /// tracefs mount point (default: /sys/kernel/tracing, mounted if absent).
    #[arg(long, value_name = "DIR")]
    pub tracefs: Option<PathBuf>,
    /// When the kernel's BPF run-time statistics are on, for kvmtrace's own cost (the report's
    /// "Tracer cost" line, kvmtrace_bpf_* metrics). They are host-wide: while on, every BPF
    /// program on the host pays two clock reads per run (an in-kernel exit loop ran 6 % slower
    /// here), so by default they are sampled: on for one second in every minute.
    #[arg(long, value_enum, default_value_t = StatsMode::Sampled, value_name = "WHEN")]
    pub bpf_stats: StatsMode,
    /// Also write the recording to FILE (streamed: a killed recorder leaves a readable file).
    /// An existing FILE is left untouched until tracing starts, then replaced atomically; a
    /// symbolic link, directory or device is refused. On a write error (a full disk) the file
    /// is cut short with a warning, and the live report is still printed.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Latency keys per interval (VMs x vCPUs x exit reasons); the kernel's pool holds twice
    /// as many, 4.2 KiB each.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub max_keys: u32,
    /// Detail keys per interval (ports, MMIO addresses, MSRs, CPUID functions per vCPU); the
    /// kernel's pool holds twice as many. When full, events are still counted, in "other keys" rows.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(16..=4_194_304))]
    pub max_detail_keys: u32,
    /// New ports / MMIO addresses / MSRs / CPUID functions one vCPU may add per interval (a key
    /// it keeps using keeps its place); the rest of its events are counted in its "other keys" rows, so one guest touching
    /// thousands of addresses cannot crowd out the others.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub max_keys_per_vcpu: u32,
    /// Every port / MMIO / MSR / CPUID row in the report (default: the top 50 of each, the rest
    /// summed in an "other keys" row).
    #[arg(long)]
    pub all_keys: bool,
    /// Sample host stacks of the traced vCPU threads, HZ times a second per CPU (default 999):
    /// the report's "Hottest host paths" per exit reason and state, and `report --weight
    /// samples` flamegraphs. Off by default.
    #[arg(long, value_name = "HZ", num_args = 0..=1, require_equals = true,
          default_missing_value = "999", value_parser = clap::value_parser!(u64).range(1..=20_000))]
    pub stacks: Option<u64>,
    /// Capture every exit (kvm_exit -> kvm_entry) and VMM round trip that takes at least this
    /// long (e.g. 500us, 2ms), one by one: when, which vCPU, its reason and port / address, the
    /// guest RIP, the decoded exit information and where its time went (in the kernel, off
    /// CPU, in the VMM). The report's "Slowest exits". Off by default.
    #[arg(long, value_name = "DURATION", value_parser = parse_than)]
    pub than: Option<Duration>,
    /// Keep each vCPU's last N exits and VMM round trips (at most 32) in the kernel, and save
    /// them with each slow one (--than) and when a vCPU's exits start coming at --storm-rate:
    /// what led to it, as a timeline in the report.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=kvmtrace_common::slow::FLIGHT_MAX as i64))]
    pub flight: Option<u32>,
    /// Count exits per guest RIP (kvm_exit's `guest_rip`), exit reason and port / MMIO address /
    /// MSR: which guest code makes them. The report's "Guest code per exit reason", and frames
    /// below the reason in the flamegraph. Off by default.
    #[arg(long)]
    pub guest_rips: bool,
    /// Names for VM NAME's guest RIPs: the guest kernel's System.map or /proc/kallsyms (copied
    /// out of the guest), or an ELF with symbols. Implies --guest-rips. Repeatable.
    #[arg(long = "guest-symbols", value_name = "NAME=FILE", value_parser = crate::guest_symbols::parse)]
    pub guest_symbols: Vec<crate::guest_symbols::GuestSymbols>,
}

/// Storm detection thresholds (see the report's "Storms" section).
#[derive(Clone, Debug, Args)]
pub struct StormArgs {
    /// Exits/s of one reason or key on one vCPU that make a storm.
    #[arg(long, default_value_t = 10_000.0, value_name = "PER_SEC")]
    pub storm_rate: f64,
    /// A rate this many times its trailing baseline is a storm (if also >= --storm-rate / 10).
    #[arg(long, default_value_t = 10.0, value_name = "FACTOR")]
    pub storm_jump: f64,
    /// Intervals a storm condition must last.
    #[arg(long, default_value_t = 2, value_name = "INTERVALS", value_parser = clap::value_parser!(u32).range(1..))]
    pub storm_sustain: u32,
    /// Handling time (% of one CPU) that makes a storm.
    #[arg(long, default_value_t = 50.0, value_name = "PERCENT")]
    pub storm_cost: f64,
}

impl StormArgs {
    pub fn config(&self) -> crate::analyze::storms::Config {
        crate::analyze::storms::Config {
            rate: self.storm_rate,
            jump: self.storm_jump,
            jump_min_rate: self.storm_rate / 10.0,
            sustain: self.storm_sustain as usize,
            cost_pct: self.storm_cost,
        }
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The recording to read.
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    pub input: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Order of the rows in every table.
    #[arg(long, value_enum, default_value_t = SortKey::Count)]
    pub sort: SortKey,
    /// Only these VMs (name or pid). Repeatable.
    #[arg(long = "vm", value_name = "NAME|PID")]
    pub vms: Vec<String>,
    /// Only these vCPUs (as labelled in the report: 0, 1, ... or "tid N"). Implies --per-vcpu.
    #[arg(long = "vcpu", value_name = "N")]
    pub vcpus: Vec<crate::model::identity::VcpuLabel>,
    /// Only these exit reasons (names as in the report, e.g. io, EPT_VIOLATION, IO). Repeatable.
    #[arg(long = "reason", value_name = "NAME")]
    pub reasons: Vec<String>,
    /// Start of the time window, from the start of the recording (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub from: Option<Duration>,
    /// End of the time window, from the start of the recording.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub to: Option<Duration>,
    /// Break every table down by vCPU.
    #[arg(long)]
    pub per_vcpu: bool,
    /// What flamegraph/folded frames are weighted by.
    #[arg(long, value_enum, default_value_t = Weight::Time)]
    pub weight: Weight,
    /// Write to FILE instead of stdout (replaced once complete; not through a symbolic link).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub storms: StormArgs,
    /// Every port / MMIO / MSR / CPUID row (default for text and JSON: the top 50 of each, the
    /// rest summed in an "other keys" row; CSV, folded and flamegraph always have every row).
    #[arg(long)]
    pub all_keys: bool,
    /// Names for VM NAME's guest RIPs (recordings made with --guest-rips): the guest kernel's
    /// System.map or /proc/kallsyms, or an ELF with symbols. Repeatable.
    #[arg(long = "guest-symbols", value_name = "NAME=FILE", value_parser = crate::guest_symbols::parse)]
    pub guest_symbols: Vec<crate::guest_symbols::GuestSymbols>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    Text,
    Json,
    /// A differential flamegraph (red grew, blue shrank).
    Flamegraph,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    pub before: PathBuf,
    pub after: PathBuf,
    #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
    pub format: DiffFormat,
    /// What the differential flamegraph is weighted by.
    #[arg(long, value_enum, default_value_t = Weight::Time)]
    pub weight: Weight,
    /// Write to FILE instead of stdout (replaced once complete; not through a symbolic link).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "EXAMPLES:\n    kvmtrace serve                                 # every VM, at http://127.0.0.1:9669/metrics\n    kvmtrace serve -d vm01 -d vm02 --per-vcpu      # two VMs, by vCPU, across their restarts\n    kvmtrace serve --listen 0.0.0.0:9669 --grace 10m\n\nENDPOINTS:\n    /metrics   OpenMetrics or Prometheus text (by the Accept header)\n    /healthz   200 \"ok\""
)]
pub struct ServeArgs {
    /// Address to serve /metrics and /healthz on (loopback by default: there is no
    /// authentication).
    #[arg(long, default_value = "127.0.0.1:9669", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Follow the VMs with this name (libvirt domain, QEMU -name, systemd machine), also when
    /// they restart under a new pid. Repeatable. A name with no VM now is waited for.
    #[arg(short = 'd', long = "domain", value_name = "NAME")]
    pub names: Vec<String>,
    /// Follow the VM process with this pid. Repeatable.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// How often the kernel maps are drained into the metrics.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// A vcpu label on every per-VM series (more series: one set per vCPU).
    #[arg(long)]
    pub per_vcpu: bool,
    /// How long the series of a VM that is gone stay (so the last scrapes see its final counts);
    /// a VM restarted under its name within it keeps its series, and its counts go on.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Most per-VM series at once (a histogram counts as its buckets + 2); updates that would
    /// create more are counted in kvmtrace_series_dropped_total instead.
    #[arg(long, default_value_t = 20_000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_series: u64,
    /// Ports / MMIO addresses / MSRs / CPUID functions with a series of their own, per VM (per
    /// vCPU with --per-vcpu) and kind, by rate; the rest count in a key="other" series.
    #[arg(long, default_value_t = 10, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub top_keys: u32,
    /// tracefs mount point (default: /sys/kernel/tracing, mounted if absent).
    #[arg(long, value_name = "DIR")]
    pub tracefs: Option<PathBuf>,
    /// When the kernel's BPF run-time statistics are on, for kvmtrace's own cost (the report's
    /// "Tracer cost" line, kvmtrace_bpf_* metrics). They are host-wide: while on, every BPF
    /// program on the host pays two clock reads per run (an in-kernel exit loop ran 6 % slower
    /// here), so by default they are sampled: on for one second in every minute.
    #[arg(long, value_enum, default_value_t = StatsMode::Sampled, value_name = "WHEN")]
    pub bpf_stats: StatsMode,
    /// Latency keys per interval (VMs x vCPUs x exit reasons); the kernel's pool holds twice
    /// as many, 4.2 KiB each.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub max_keys: u32,
    /// Detail keys per interval (ports, MMIO addresses, MSRs, CPUID functions per vCPU); the
    /// kernel's pool holds twice as many.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(16..=4_194_304))]
    pub max_detail_keys: u32,
    /// New ports / MMIO addresses / MSRs / CPUID functions one vCPU may add per interval.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub max_keys_per_vcpu: u32,
    // Storms (kvmtrace_storm_active) are looked for in the last 30 intervals.
    #[command(flatten)]
    pub storms: StormArgs,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Show only the VM with this name (libvirt domain, QEMU -name, systemd machine). Repeatable.
    #[arg(short = 'd', long = "domain", value_name = "NAME")]
    pub names: Vec<String>,
    /// Show only the VM process with this pid. Repeatable.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Time between screens (the keys + and - change it while running).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Plain text frames on stdout instead of the terminal UI (for scripts, like `top -b`).
    #[arg(short = 'b', long)]
    pub batch: bool,
    /// Stop after this many frames (default: until q, Ctrl-C or SIGTERM).
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
    /// Rows per table in --batch frames.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub rows: usize,
    #[command(flatten)]
    pub storms: StormArgs,
    /// tracefs mount point (default: /sys/kernel/tracing, mounted if absent).
    #[arg(long, value_name = "DIR")]
    pub tracefs: Option<PathBuf>,
}

fn parse_than(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_micros(1) {
        return Err(format!(
            "{s} is below 1us: every exit would be \"slow\"; give a threshold such as 500us"
        ));
    }
    Ok(d)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err(format!(
            "{s} is too short; the interval must be at least 100ms"
        ));
    }
    Ok(d)
}
