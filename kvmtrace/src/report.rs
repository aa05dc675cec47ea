//! Turns an [`Aggregate`] plus VM identities into a [`Report`]: per VM, exit reasons with latency
//! percentiles, userspace exits with their VMM round trip, top ports / MMIO addresses / MSRs /
//! CPUID functions, and every loss counter. Pure: renderers (text, JSON) only format this.

use std::collections::BTreeMap;

use kvmtrace_common::{
    Counter, DetailKey, DetailKind, LatencyKey, LatencyKind, UEXIT_ERRNO_FLAG, VCPU_UNKNOWN,
};
use serde::Serialize;

use crate::{
    analyze::storms::{self, Config as StormConfig, Storm},
    model::{Aggregate, InFlight, LatencyAgg},
    tp::reasons::{exit_reason_name, isa_name, userspace_exit_name},
    vm::{Vm, vcpu_index_of_comm},
};

/// Everything the report shows, in the order it shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub duration_secs: f64,
    /// The host's KVM module (kvm_intel, kvm_amd, kvm_pvm), when known.
    pub kvm_module: Option<String>,
    pub tracepoints_attached: Vec<String>,
    pub tracepoints_missing: Vec<String>,
    /// Plain sentences about what the data can and cannot say.
    pub notes: Vec<String>,
    pub per_vcpu: bool,
    /// Exit storms, biggest first (per vCPU), each with its diagnosis.
    pub storms: Vec<Storm>,
    pub vms: Vec<VmReport>,
    pub counters: Counters,
    /// What tracing cost (BPF run time, collector CPU), when known: set by the recorder, and
    /// read back from recordings that have it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracer_cost: Option<crate::cost::TracerCost>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    pub exits_seen: u64,
    pub entries_seen: u64,
    pub detail_events: u64,
    pub unpaired_exits: u64,
    pub unpaired_entries: u64,
    /// First kvm_entry of each vCPU after attach: nothing to pair with, expected.
    pub first_entries: u64,
    pub unpaired_userspace_exits: u64,
    pub exits_in_flight_at_stop: u64,
    /// Exits whose vCPU thread ended before their kvm_entry: counted, not timed.
    pub exits_ended_with_thread: u64,
    pub round_trips_in_flight_at_stop: u64,
    pub latency_map_full: u64,
    pub detail_map_full: u64,
    pub thread_map_full: u64,
    /// Entries left in the kernel maps after the last drain.
    pub map_entries_at_stop: Option<crate::model::MapEntries>,
}

impl Counters {
    /// Anything that means lost events or lost exit latencies. Unpaired userspace exits are left
    /// out: their exits are still counted, only that VMM round trip has no end marker; so is a
    /// full detail map: its events are still counted, in "other keys" rows.
    pub fn losses(&self) -> u64 {
        self.unpaired_exits + self.unpaired_entries + self.latency_map_full + self.thread_map_full
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct VmReport {
    pub pid: u32,
    pub name: String,
    pub vcpus: Vec<VcpuInfo>,
    /// Exits of all reasons (paired ones plus those open at stop).
    pub total_exits: u64,
    /// Returns of KVM_RUN to the VMM (kvm_userspace_exit).
    pub total_userspace_exits: u64,
    /// Events of the detail tracepoints (pio, mmio, msr, cpuid, userspace_exit).
    pub detail_events: u64,
    pub exits: Vec<ExitRow>,
    pub userspace_exits: Vec<UserspaceRow>,
    pub ports: Vec<PortRow>,
    pub mmio: Vec<MmioRow>,
    pub msrs: Vec<MsrRow>,
    pub cpuid: Vec<CpuidRow>,
    /// Detail events without a row of their own: beyond the rows shown (`--all-keys` shows every
    /// row), beyond a vCPU's key budget per interval, or when the kernel's map was full. With
    /// them, every table's counts add up to the exact total of its kind.
    pub other_keys: Vec<OtherKeysRow>,
    /// Where each vCPU thread's time went.
    pub cpu: Vec<CpuRow>,
    /// "Of this VM's X % CPU, Y % is handling <reason/key>."
    pub cpu_summary: Option<CpuSummary>,
}

/// One vCPU thread's time, in % of its wall time since it was first seen.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CpuRow {
    pub vcpu: String,
    pub tid: u32,
    pub wall_secs: f64,
    /// On-CPU, from the kernel's events (KVM_RUN on-CPU + VMM on-CPU).
    pub cpu_pct: f64,
    /// The thread's run time from procfs (schedstat, else utime + stime) over the recording,
    /// for comparison.
    pub procfs_cpu_pct: Option<f64>,
    /// On-CPU inside KVM_RUN: guest plus in-kernel exit handling.
    pub in_kvm_run_pct: f64,
    /// Split of in_kvm_run where kvm_exit/kvm_entry fire: exit handling (non-HLT exit->entry
    /// time) and the rest, guest time.
    pub exit_handling_pct: Option<f64>,
    pub guest_pct: Option<f64>,
    /// On-CPU in the VMM's user space (handling userspace exits, its own work).
    pub vmm_pct: f64,
    /// Off-CPU, blocked (inside KVM_RUN: a halted vCPU; outside: the VMM waiting).
    pub blocked_pct: f64,
    /// The part of `blocked_pct` inside KVM_RUN (a halted vCPU).
    pub blocked_in_kvm_run_pct: f64,
    /// Off-CPU, runnable but waiting for a CPU (host contention).
    pub runnable_wait_pct: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CpuSummary {
    /// Sum over vCPU threads, % of one CPU.
    pub cpu_pct: f64,
    /// Biggest consumers, each in % of the VM's CPU time.
    pub handling: Vec<Handling>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Handling {
    pub what: String,
    /// % of the VM's CPU time.
    pub pct_of_vm_cpu: f64,
    /// % of one CPU.
    pub cpu_pct: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VcpuInfo {
    /// "0", "1", ... (vcpu_id or `CPU N/KVM`), else "tid 1234".
    pub label: String,
    pub tid: u32,
    pub thread_name: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub total_ns: u64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl Latency {
    fn of(agg: &LatencyAgg) -> Latency {
        Latency {
            count: agg.count,
            total_ns: agg.total_ns,
            min_ns: if agg.count == 0 { 0 } else { agg.min_ns },
            p50_ns: agg.quantile(0.50),
            p99_ns: agg.quantile(0.99),
            max_ns: agg.max_ns,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ExitRow {
    pub vcpu: Option<String>,
    pub isa: &'static str,
    pub reason_code: u32,
    pub reason: String,
    /// Exits of this reason: latency samples plus those still open at stop.
    pub count: u64,
    /// Exits with no kvm_entry yet when recording stopped (no latency sample).
    pub in_flight: u64,
    /// Exits whose vCPU thread ended before their kvm_entry (no latency sample).
    pub ended_with_thread: u64,
    pub count_pct: f64,
    /// Share of the VM's in-kernel exit handling time.
    pub time_pct: f64,
    pub per_sec: f64,
    /// In-kernel handling: kvm_exit -> kvm_entry minus the VMM round trips inside it.
    pub latency: Latency,
    /// The VMM's part of the exits of this reason that went to user space (their round trips),
    /// when any did.
    pub vmm: Option<Latency>,
}

#[derive(Clone, Debug, Serialize)]
pub struct UserspaceRow {
    pub vcpu: Option<String>,
    pub reason_code: u32,
    /// KVM_EXIT_* name without the prefix, or `error(errno)` / `restart`.
    pub reason: String,
    pub count: u64,
    pub count_pct: f64,
    pub per_sec: f64,
    /// Time in the VMM, from KVM_RUN returning until the vCPU is back in KVM_RUN.
    pub round_trip: Option<Latency>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PortRow {
    pub vcpu: Option<String>,
    pub port: u16,
    pub direction: &'static str,
    pub size: u32,
    pub count: u64,
    pub per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MmioRow {
    pub vcpu: Option<String>,
    pub gpa: u64,
    pub access: &'static str,
    pub len: u32,
    pub count: u64,
    pub per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MsrRow {
    pub vcpu: Option<String>,
    pub msr: u32,
    pub access: &'static str,
    pub faulted: bool,
    pub count: u64,
    pub per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuidRow {
    pub vcpu: Option<String>,
    pub function: u32,
    pub count: u64,
    pub per_sec: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct OtherKeysRow {
    pub vcpu: Option<String>,
    /// "ports", "MMIO addresses", "MSRs", "CPUID functions", "userspace exit reasons".
    pub kind: &'static str,
    /// All events of this row: folded_events + unkeyed_events.
    pub count: u64,
    pub per_sec: f64,
    /// Keys that had rows, beyond the rows shown, and their events.
    pub folded_keys: u64,
    pub folded_events: u64,
    /// Events the kernel counted without a key (key budget or map full): their keys are unknown.
    pub unkeyed_events: u64,
}

/// Rows per detail table (ports, MMIO, MSRs, CPUID) unless every row is asked for.
pub const DEFAULT_MAX_ROWS: usize = 50;

/// Inputs besides the aggregate.
pub struct Context<'a> {
    /// Storm detection thresholds.
    pub storm: &'a StormConfig,
    pub vms: &'a BTreeMap<u32, Vm>,
    pub per_vcpu: bool,
    pub kvm_module: Option<String>,
    pub attached: Vec<String>,
    pub missing: Vec<String>,
    /// Exits and round trips still open when recording stopped.
    pub in_flight: &'a InFlight,
    /// Rows per detail table; the rest fold into "other keys". None: every row.
    pub max_rows: Option<usize>,
}

pub fn build(agg: &Aggregate, ctx: &Context) -> Report {
    let secs = agg.elapsed.as_secs_f64();
    let c = |k| agg.counter(k);
    let counters = Counters {
        exits_seen: c(Counter::ExitsSeen),
        entries_seen: c(Counter::EntriesSeen),
        detail_events: c(Counter::DetailsSeen),
        unpaired_exits: c(Counter::UnpairedExits),
        unpaired_entries: c(Counter::UnpairedEntries),
        first_entries: c(Counter::FirstEntries),
        unpaired_userspace_exits: c(Counter::UnpairedUserspaceExits),
        exits_in_flight_at_stop: ctx.in_flight.exit_total(),
        exits_ended_with_thread: ctx.in_flight.ended_total(),
        round_trips_in_flight_at_stop: ctx.in_flight.round_trips,
        latency_map_full: c(Counter::LatencyMapFull),
        detail_map_full: c(Counter::DetailMapFull),
        thread_map_full: c(Counter::ThreadMapFull),
        map_entries_at_stop: ctx.in_flight.map_entries,
    };
    let mut notes = Vec::new();
    let exit_attached = ctx.attached.iter().any(|t| t == "kvm_exit");
    if exit_attached && counters.exits_seen == 0 && counters.detail_events > 0 {
        notes.push(format!(
            "kvm_exit and kvm_entry are attached but fired 0 times while {} detail events arrived{}, so there are no per-exit-reason latencies; the tables below come from the detail tracepoints.",
            counters.detail_events,
            match ctx.kvm_module.as_deref() {
                Some("kvm_pvm") => " (this host's KVM, kvm_pvm, does not emit them)",
                _ => "",
            }
        ));
    }
    if !ctx.missing.is_empty() {
        notes.push(format!(
            "this kernel has no kvm:{} tracepoint(s); their data is absent.",
            ctx.missing.join(", kvm:")
        ));
    }

    let mut pids: Vec<u32> = agg.latency.keys().map(|k| k.tgid).collect();
    pids.extend(agg.details.keys().map(|k| k.tgid));
    pids.extend(ctx.vms.keys());
    pids.sort_unstable();
    pids.dedup();
    let vms: Vec<VmReport> = pids
        .into_iter()
        .map(|pid| vm_report(agg, ctx, pid, secs))
        .collect();
    let mut storms = storms::detect(&agg.series, ctx.storm);
    for st in &mut storms {
        st.vcpu = if st.tid == storms::ALL_VCPUS {
            Some("all".into())
        } else {
            vms.iter()
                .find(|v| v.pid == st.pid)
                .and_then(|v| v.vcpus.iter().find(|c| c.tid == st.tid))
                .map(|c| c.label.clone())
        };
    }
    Report {
        duration_secs: secs,
        kvm_module: ctx.kvm_module.clone(),
        tracepoints_attached: ctx.attached.clone(),
        tracepoints_missing: ctx.missing.clone(),
        notes,
        per_vcpu: ctx.per_vcpu,
        storms,
        vms,
        counters,
        tracer_cost: None,
    }
}

fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn vm_report(agg: &Aggregate, ctx: &Context, pid: u32, secs: f64) -> VmReport {
    let vm = ctx.vms.get(&pid);
    let vcpus = vcpu_labels(agg, vm, pid);
    let label = |tid: u32| -> Option<String> {
        ctx.per_vcpu.then(|| {
            vcpus
                .iter()
                .find(|v| v.tid == tid)
                .map_or_else(|| format!("tid {tid}"), |v| v.label.clone())
        })
    };

    // Exit reasons: (vcpu, isa, reason) -> merged latency, and exits still open at stop.
    let mut exits: BTreeMap<(Option<String>, u32, u32), LatencyAgg> = BTreeMap::new();
    let mut open: BTreeMap<(Option<String>, u32, u32), u64> = BTreeMap::new();
    for (k, n) in ctx.in_flight.exits.iter().filter(|(k, _)| k.tgid == pid) {
        let key = (label(k.tid), k.isa, k.reason);
        exits.entry(key.clone()).or_default();
        *open.entry(key).or_default() += n;
    }
    let mut ended: BTreeMap<(Option<String>, u32, u32), u64> = BTreeMap::new();
    for (k, n) in ctx
        .in_flight
        .ended_with_thread
        .iter()
        .filter(|(k, _)| k.tgid == pid)
    {
        let key = (label(k.tid), k.isa, k.reason);
        exits.entry(key.clone()).or_default();
        *ended.entry(key).or_default() += n;
    }
    let mut round_trips: BTreeMap<(Option<String>, u32), LatencyAgg> = BTreeMap::new();
    let mut exit_vmm: BTreeMap<(Option<String>, u32, u32), LatencyAgg> = BTreeMap::new();
    for (k, v) in agg.latency.iter().filter(|(k, _)| k.tgid == pid) {
        if k.kind == LatencyKind::Exit as u32 {
            exits
                .entry((label(k.tid), k.isa, k.reason))
                .or_default()
                .merge(v);
        } else if k.kind == LatencyKind::ExitVmm as u32 {
            exit_vmm
                .entry((label(k.tid), k.isa, k.reason))
                .or_default()
                .merge(v);
        } else if k.kind == LatencyKind::VmmRoundTrip as u32 {
            round_trips
                .entry((label(k.tid), k.reason))
                .or_default()
                .merge(v);
        }
    }
    let total_exits: u64 = exits.values().map(|a| a.count).sum::<u64>()
        + open.values().sum::<u64>()
        + ended.values().sum::<u64>();
    let total_ns: u64 = exits.values().map(|a| a.total_ns).sum();
    let mut exit_rows: Vec<ExitRow> = exits
        .into_iter()
        .map(|(key, a)| {
            let in_flight = open.get(&key).copied().unwrap_or(0);
            let ended_with_thread = ended.get(&key).copied().unwrap_or(0);
            let vmm = exit_vmm.get(&key).map(Latency::of);
            let (vcpu, isa, reason) = key;
            let count = a.count + in_flight + ended_with_thread;
            ExitRow {
                vcpu,
                isa: isa_name(isa),
                reason_code: reason,
                reason: exit_reason_name(isa, reason),
                count,
                in_flight,
                ended_with_thread,
                count_pct: pct(count, total_exits),
                time_pct: pct(a.total_ns, total_ns),
                per_sec: rate(count, secs),
                latency: Latency::of(&a),
                vmm,
            }
        })
        .collect();
    exit_rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.vcpu.cmp(&b.vcpu))
            .then(a.reason_code.cmp(&b.reason_code))
    });

    let mut counts: BTreeMap<(u32, Option<String>, u32, u64), u64> = BTreeMap::new();
    for (k, n) in agg.details.iter().filter(|(k, _)| k.tgid == pid) {
        *counts.entry((k.kind, label(k.tid), k.a, k.b)).or_default() += n;
    }
    let mut other: BTreeMap<(Option<String>, u32), OtherKeysRow> = BTreeMap::new();
    for ((kind, vcpu, a, b), n) in &counts {
        if DetailKey::is_other_key(*a, *b) {
            other_row(&mut other, vcpu, *kind).unkeyed_events += n;
        }
    }
    let of_kind = |kind: DetailKind| {
        counts
            .iter()
            .filter(move |((k, _, a, b), _)| *k == kind as u32 && !DetailKey::is_other_key(*a, *b))
            .map(|((_, vcpu, a, b), n)| (vcpu.clone(), *a, *b, *n))
    };

    let uexit_total: u64 = of_kind(DetailKind::UserspaceExit).map(|(.., n)| n).sum();
    let mut userspace_exits: Vec<UserspaceRow> = of_kind(DetailKind::UserspaceExit)
        .map(|(vcpu, a, b, n)| UserspaceRow {
            round_trip: round_trips.get(&(vcpu.clone(), a)).map(Latency::of),
            vcpu,
            reason_code: a,
            reason: userspace_reason(a, b),
            count: n,
            count_pct: pct(n, uexit_total),
            per_sec: rate(n, secs),
        })
        .collect();
    userspace_exits.sort_by(|a, b| b.count.cmp(&a.count).then(a.vcpu.cmp(&b.vcpu)));

    let mut ports: Vec<PortRow> = of_kind(DetailKind::Pio)
        .map(|(vcpu, a, b, n)| PortRow {
            vcpu,
            port: a as u16,
            direction: if b & 1 == 1 { "out" } else { "in" },
            size: (b >> 8) as u32,
            count: n,
            per_sec: rate(n, secs),
        })
        .collect();
    ports.sort_by(|a, b| b.count.cmp(&a.count).then(a.port.cmp(&b.port)));

    let mut mmio: Vec<MmioRow> = of_kind(DetailKind::Mmio)
        .map(|(vcpu, a, b, n)| MmioRow {
            vcpu,
            gpa: b,
            access: match a & 0xff {
                0 => "unsatisfied-read",
                1 => "read",
                2 => "write",
                _ => "?",
            },
            len: a >> 8,
            count: n,
            per_sec: rate(n, secs),
        })
        .collect();
    mmio.sort_by(|a, b| b.count.cmp(&a.count).then(a.gpa.cmp(&b.gpa)));

    let mut msrs: Vec<MsrRow> = of_kind(DetailKind::Msr)
        .map(|(vcpu, a, b, n)| MsrRow {
            vcpu,
            msr: a,
            access: if b & 1 == 1 { "write" } else { "read" },
            faulted: b & 2 != 0,
            count: n,
            per_sec: rate(n, secs),
        })
        .collect();
    msrs.sort_by(|a, b| b.count.cmp(&a.count).then(a.msr.cmp(&b.msr)));

    let mut cpuid: Vec<CpuidRow> = of_kind(DetailKind::Cpuid)
        .map(|(vcpu, a, _, n)| CpuidRow {
            vcpu,
            function: a,
            count: n,
            per_sec: rate(n, secs),
        })
        .collect();
    cpuid.sort_by(|a, b| b.count.cmp(&a.count).then(a.function.cmp(&b.function)));
    if let Some(limit) = ctx.max_rows {
        fold_beyond(&mut ports, limit, DetailKind::Pio, &mut other, |r| {
            (r.vcpu.clone(), r.count)
        });
        fold_beyond(&mut mmio, limit, DetailKind::Mmio, &mut other, |r| {
            (r.vcpu.clone(), r.count)
        });
        fold_beyond(&mut msrs, limit, DetailKind::Msr, &mut other, |r| {
            (r.vcpu.clone(), r.count)
        });
        fold_beyond(&mut cpuid, limit, DetailKind::Cpuid, &mut other, |r| {
            (r.vcpu.clone(), r.count)
        });
    }
    let mut other_keys: Vec<OtherKeysRow> = other
        .into_values()
        .map(|mut o| {
            o.count = o.folded_events + o.unkeyed_events;
            o.per_sec = rate(o.count, secs);
            o
        })
        .collect();
    other_keys.sort_by(|a, b| b.count.cmp(&a.count).then(a.vcpu.cmp(&b.vcpu)));

    let (cpu, cpu_summary) = cpu_rows(agg, pid, &vcpus, &userspace_exits, &ports);
    VmReport {
        cpu,
        cpu_summary,
        pid,
        name: vm.map_or_else(|| format!("pid {pid}"), |v| v.name.clone()),
        vcpus,
        total_exits,
        total_userspace_exits: uexit_total,
        detail_events: counts.values().sum(),
        exits: exit_rows,
        userspace_exits,
        ports,
        mmio,
        msrs,
        cpuid,
        other_keys,
    }
}

/// The "other keys" row of (vCPU, kind), created empty.
fn other_row<'a>(
    other: &'a mut BTreeMap<(Option<String>, u32), OtherKeysRow>,
    vcpu: &Option<String>,
    kind: u32,
) -> &'a mut OtherKeysRow {
    other
        .entry((vcpu.clone(), kind))
        .or_insert_with(|| OtherKeysRow {
            vcpu: vcpu.clone(),
            kind: DetailKind::from_u32(kind).map_or("?", detail_kind_name),
            count: 0,
            per_sec: 0.0,
            folded_keys: 0,
            folded_events: 0,
            unkeyed_events: 0,
        })
}

/// Keeps the first `limit` rows (sorted, biggest first) and folds the rest into "other keys".
fn fold_beyond<T>(
    rows: &mut Vec<T>,
    limit: usize,
    kind: DetailKind,
    other: &mut BTreeMap<(Option<String>, u32), OtherKeysRow>,
    vcpu_and_count: impl Fn(&T) -> (Option<String>, u64),
) {
    for row in rows.drain(limit.min(rows.len())..) {
        let (vcpu, n) = vcpu_and_count(&row);
        let o = other_row(other, &vcpu, kind as u32);
        o.folded_keys += 1;
        o.folded_events += n;
    }
}

/// What the keys of a detail kind are, for the "other keys" rows.
pub fn detail_kind_name(kind: DetailKind) -> &'static str {
    match kind {
        DetailKind::Pio => "ports",
        DetailKind::Mmio => "MMIO addresses",
        DetailKind::Msr => "MSRs",
        DetailKind::Cpuid => "CPUID functions",
        DetailKind::UserspaceExit => "userspace exit reasons",
    }
}

/// The CPU table of one VM, and what its CPU goes to: in-kernel exit handling per reason (from
/// exit->entry times, halts excluded as they block) and VMM handling per userspace exit reason
/// (the VMM's on-CPU time, split by each reason's share of VMM round-trip time).
fn cpu_rows(
    agg: &Aggregate,
    pid: u32,
    vcpus: &[VcpuInfo],
    uexits: &[UserspaceRow],
    ports: &[PortRow],
) -> (Vec<CpuRow>, Option<CpuSummary>) {
    let pct = |ns: u64, wall: u64| {
        if wall == 0 {
            0.0
        } else {
            100.0 * ns as f64 / wall as f64
        }
    };
    let is_halt = |isa: u32, reason: u32| {
        matches!(
            exit_reason_name(isa, reason).as_str(),
            "HLT" | "hlt" | "idle-halt"
        )
    };
    let mut rows = Vec::new();
    let (mut vm_cpu, mut vm_vmm) = (0u64, 0u64);
    let mut max_wall = 0u64;
    for t in agg
        .threads
        .values()
        .filter(|t| t.tgid == pid && t.tracked_ns > 0)
    {
        let exits: Vec<(&LatencyKey, &LatencyAgg)> = agg
            .latency
            .iter()
            .filter(|(k, _)| k.tid == t.tid && k.kind == LatencyKind::Exit as u32)
            .collect();
        let handling: u64 = exits
            .iter()
            .filter(|(k, _)| !is_halt(k.isa, k.reason))
            .map(|(_, a)| a.total_ns)
            .sum();
        let in_run = t.in_run_on_cpu();
        let has_exits = !exits.is_empty();
        let wall = t.tracked_ns;
        max_wall = max_wall.max(wall);
        vm_cpu += t.on_cpu();
        vm_vmm += t.vmm_on_cpu();
        rows.push(CpuRow {
            vcpu: vcpus
                .iter()
                .find(|v| v.tid == t.tid)
                .map_or_else(|| format!("tid {}", t.tid), |v| v.label.clone()),
            tid: t.tid,
            wall_secs: wall as f64 / 1e9,
            cpu_pct: pct(t.on_cpu(), wall),
            procfs_cpu_pct: t.procfs_ns.map(|p| pct(p, wall)),
            in_kvm_run_pct: pct(in_run, wall),
            exit_handling_pct: has_exits.then(|| pct(handling.min(in_run), wall)),
            guest_pct: has_exits.then(|| pct(in_run.saturating_sub(handling), wall)),
            vmm_pct: pct(t.vmm_on_cpu(), wall),
            blocked_pct: pct(t.off_run_blocked_ns + t.off_user_blocked_ns, wall),
            blocked_in_kvm_run_pct: pct(t.off_run_blocked_ns, wall),
            runnable_wait_pct: pct(t.off_run_runnable_ns + t.off_user_runnable_ns, wall),
        });
    }
    if rows.is_empty() || vm_cpu == 0 {
        return (rows, None);
    }
    rows.sort_by_key(|r| (r.vcpu.parse::<u32>().unwrap_or(u32::MAX), r.tid));
    let mut handling: Vec<(String, u64)> = Vec::new();
    let mut by_reason: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    for (k, a) in agg.latency.iter().filter(|(k, _)| {
        k.tgid == pid && k.kind == LatencyKind::Exit as u32 && !is_halt(k.isa, k.reason)
    }) {
        *by_reason.entry((k.isa, k.reason)).or_default() += a.total_ns;
    }
    for ((isa, reason), ns) in by_reason {
        handling.push((
            format!("exit handling of {}", exit_reason_name(isa, reason)),
            ns,
        ));
    }
    let vmm_wall: u64 = uexits
        .iter()
        .filter_map(|u| u.round_trip.as_ref())
        .map(|l| l.total_ns)
        .sum();
    if vmm_wall > 0 {
        let mut by_uexit: BTreeMap<&str, u64> = BTreeMap::new();
        for u in uexits {
            *by_uexit.entry(u.reason.as_str()).or_default() +=
                u.round_trip.as_ref().map_or(0, |l| l.total_ns);
        }
        for (reason, wall) in by_uexit {
            let share = (vm_vmm as u128 * wall as u128 / vmm_wall as u128) as u64;
            let top_port = if reason == "IO" {
                ports.iter().max_by_key(|p| p.count)
            } else {
                None
            };
            let detail = top_port
                .map(|p| format!(" (top port {})", crate::names::port_label(p.port)))
                .unwrap_or_default();
            handling.push((format!("VMM handling of KVM_EXIT_{reason}{detail}"), share));
        }
    }
    handling.sort_by_key(|h| std::cmp::Reverse(h.1));
    let wall = max_wall.max(1);
    let summary = CpuSummary {
        cpu_pct: pct(vm_cpu, wall),
        handling: handling
            .into_iter()
            .filter(|(_, ns)| *ns > 0)
            .take(3)
            .map(|(what, ns)| Handling {
                what,
                pct_of_vm_cpu: pct(ns, vm_cpu),
                cpu_pct: pct(ns, wall),
            })
            .collect(),
    };
    (rows, Some(summary))
}

/// The name of a userspace exit's reason: KVM_EXIT_* without the prefix, `restart` (a signal
/// interrupted KVM_RUN) or `error(errno N)`.
pub fn userspace_reason(a: u32, errno: u64) -> String {
    if a & UEXIT_ERRNO_FLAG == 0 {
        return userspace_exit_name(a);
    }
    if errno == libc::EINTR as u64 {
        "restart".into()
    } else {
        format!("error(errno {errno})")
    }
}

/// The vCPUs of a VM: every thread with events, plus named `CPU N/KVM` threads. A label is the
/// vcpu_id from kvm_exit/kvm_entry where known, else N from the thread name, else the tid.
fn vcpu_labels(agg: &Aggregate, vm: Option<&Vm>, pid: u32) -> Vec<VcpuInfo> {
    let mut by_tid: BTreeMap<u32, Option<u32>> = BTreeMap::new();
    for k in agg.latency.keys().filter(|k| k.tgid == pid) {
        let id = (k.vcpu_id != VCPU_UNKNOWN).then_some(k.vcpu_id);
        let slot = by_tid.entry(k.tid).or_default();
        *slot = slot.or(id);
    }
    for k in agg.details.keys().filter(|k| k.tgid == pid) {
        by_tid.entry(k.tid).or_default();
    }
    let threads = vm.map(|v| v.threads.as_slice()).unwrap_or_default();
    for t in threads
        .iter()
        .filter(|t| vcpu_index_of_comm(&t.comm).is_some())
    {
        by_tid.entry(t.tid).or_default();
    }
    let mut out: Vec<VcpuInfo> = by_tid
        .into_iter()
        .map(|(tid, id)| {
            let thread_name = threads
                .iter()
                .find(|t| t.tid == tid)
                .map(|t| t.comm.clone());
            let index = id.or_else(|| thread_name.as_deref().and_then(vcpu_index_of_comm));
            VcpuInfo {
                label: index.map_or_else(|| format!("tid {tid}"), |i| i.to_string()),
                tid,
                thread_name,
            }
        })
        .collect();
    out.sort_by_key(|v| (v.label.parse::<u32>().unwrap_or(u32::MAX), v.tid));
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kvmtrace_common::{DetailKey, LatencyKey, bucket_index};

    use super::*;
    use crate::{
        model::{Interval, LatencyDelta},
        vm::Thread,
    };

    fn vm() -> BTreeMap<u32, Vm> {
        let mut m = BTreeMap::new();
        m.insert(
            100,
            Vm {
                pid: 100,
                name: "web01".into(),
                aliases: Default::default(),
                threads: vec![
                    Thread {
                        tid: 100,
                        comm: "qemu-kvm".into(),
                    },
                    Thread {
                        tid: 101,
                        comm: "CPU 0/KVM".into(),
                    },
                    Thread {
                        tid: 102,
                        comm: "CPU 1/KVM".into(),
                    },
                ],
            },
        );
        m
    }

    fn delta(count: u64, ns: u64) -> LatencyDelta {
        LatencyDelta {
            count,
            total_ns: count * ns,
            min_ns: ns,
            max_ns: ns,
            buckets: vec![(bucket_index(ns) as u16, count as u32)],
        }
    }

    fn sample() -> Aggregate {
        let exit = |tid, vcpu_id, reason| LatencyKey {
            tgid: 100,
            tid,
            vcpu_id,
            isa: 2,
            reason,
            kind: 0,
        };
        let rt = |tid, reason| LatencyKey {
            tgid: 100,
            tid,
            vcpu_id: VCPU_UNKNOWN,
            isa: 0,
            reason,
            kind: 1,
        };
        let d = |tid, kind: DetailKind, a, b| DetailKey {
            tgid: 100,
            tid,
            kind: kind as u32,
            a,
            b,
        };
        let mut counters = [0; Counter::COUNT as usize];
        counters[Counter::ExitsSeen as usize] = 400;
        counters[Counter::DetailsSeen as usize] = 500;
        let mut agg = Aggregate::default();
        agg.apply(&Interval {
            at: Duration::from_secs(2),
            latency: vec![
                (exit(101, 0, 0x7b), delta(300, 1000)),
                (exit(102, 1, 0x72), delta(100, 500)),
                (rt(101, 2), delta(300, 20_000)),
            ],
            details: vec![
                (d(101, DetailKind::Pio, 0x70, 1 | 1 << 8), 300),
                (d(101, DetailKind::UserspaceExit, 2, 0), 300),
                (d(102, DetailKind::Cpuid, 0x4000_0000, 0), 100),
                (d(102, DetailKind::Msr, 0x6e0, 1), 7),
                (d(102, DetailKind::Mmio, 2 | 4 << 8, 0xfebf_1000), 5),
            ],
            counters,
            threads: vec![],
        });
        agg
    }

    fn open_io_exit() -> &'static InFlight {
        static OPEN: std::sync::OnceLock<InFlight> = std::sync::OnceLock::new();
        OPEN.get_or_init(|| InFlight {
            exits: [(
                LatencyKey {
                    tgid: 100,
                    tid: 101,
                    vcpu_id: 0,
                    isa: 2,
                    reason: 0x7b,
                    kind: 0,
                },
                1,
            )]
            .into(),
            round_trips: 0,
            ended_with_thread: BTreeMap::new(),
            map_entries: None,
        })
    }

    fn ctx(vms: &BTreeMap<u32, Vm>, per_vcpu: bool) -> Context<'_> {
        Context {
            storm: &StormConfig::DEFAULT,
            vms,
            per_vcpu,
            kvm_module: Some("kvm_amd".into()),
            attached: vec!["kvm_exit".into(), "kvm_entry".into()],
            missing: vec![],
            in_flight: open_io_exit(),
            max_rows: None,
        }
    }

    #[test]
    fn builds_a_vm_report() {
        let vms = vm();
        let r = build(&sample(), &ctx(&vms, false));
        assert!(r.notes.is_empty());
        assert_eq!(r.vms.len(), 1);
        let v = &r.vms[0];
        assert_eq!(v.name, "web01");
        assert_eq!(
            v.vcpus.iter().map(|v| v.label.as_str()).collect::<Vec<_>>(),
            ["0", "1"]
        );
        assert_eq!(
            v.total_exits, 401,
            "300 io + 100 cpuid samples, 1 io exit open at stop"
        );
        assert_eq!(v.total_userspace_exits, 300);
        assert_eq!(v.detail_events, 300 + 300 + 100 + 7 + 5);
        assert_eq!(v.exits[0].reason, "io");
        assert_eq!(
            (
                v.exits[0].count,
                v.exits[0].in_flight,
                v.exits[0].latency.count
            ),
            (301, 1, 300)
        );
        assert!((v.exits[0].count_pct - 301.0 / 401.0 * 100.0).abs() < 1e-9);
        assert!((v.exits[0].time_pct - 300.0 * 1000.0 / 350_000.0 * 100.0).abs() < 1e-9);
        assert_eq!(v.exits[0].per_sec, 150.5);
        assert_eq!(v.exits[0].latency.p50_ns, 1000);
        assert_eq!(v.exits[1].reason, "cpuid");
        assert_eq!(v.userspace_exits[0].reason, "IO");
        assert_eq!(
            v.userspace_exits[0].round_trip.as_ref().unwrap().p99_ns,
            20_000
        );
        assert_eq!(
            (
                v.ports[0].port,
                v.ports[0].direction,
                v.ports[0].size,
                v.ports[0].count
            ),
            (0x70, "out", 1, 300)
        );
        assert_eq!(
            (v.msrs[0].msr, v.msrs[0].access, v.msrs[0].faulted),
            (0x6e0, "write", false)
        );
        assert_eq!(
            (v.mmio[0].gpa, v.mmio[0].access, v.mmio[0].len),
            (0xfebf_1000, "write", 4)
        );
        assert_eq!(v.cpuid[0].function, 0x4000_0000);
        assert_eq!(r.counters.exits_in_flight_at_stop, 1);
    }

    #[test]
    fn per_vcpu_attribution() {
        let vms = vm();
        let r = build(&sample(), &ctx(&vms, true));
        let v = &r.vms[0];
        let rows: Vec<_> = v
            .exits
            .iter()
            .map(|e| (e.vcpu.clone().unwrap(), e.reason.clone(), e.count))
            .collect();
        assert_eq!(
            rows,
            [
                ("0".into(), "io".into(), 301),
                ("1".into(), "cpuid".into(), 100)
            ]
        );
        assert_eq!(v.ports[0].vcpu.as_deref(), Some("0"));
        assert_eq!(v.msrs[0].vcpu.as_deref(), Some("1"));
    }

    #[test]
    fn silent_exit_tracepoints_are_explained() {
        let vms = vm();
        let mut agg = sample();
        agg.latency.retain(|k, _| k.kind == 1);
        agg.counters[Counter::ExitsSeen as usize] = 0;
        let nothing_open = InFlight::default();
        let mut c = ctx(&vms, false);
        c.kvm_module = Some("kvm_pvm".into());
        c.in_flight = &nothing_open;
        let r = build(&agg, &c);
        assert_eq!(r.notes.len(), 1);
        assert!(r.notes[0].starts_with("kvm_exit and kvm_entry are attached but fired 0 times while 500 detail events arrived (this host's KVM, kvm_pvm, does not emit them)"), "{}", r.notes[0]);
        assert_eq!(r.vms[0].total_exits, 0);
    }

    #[test]
    fn empty_aggregate_builds_an_empty_report() {
        let vms = BTreeMap::new();
        let r = build(&Aggregate::default(), &ctx(&vms, false));
        assert!(r.vms.is_empty());
        assert_eq!(r.counters.losses(), 0);
    }
}
