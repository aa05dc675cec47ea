//! [`build`]: an [`Aggregate`] plus VM identities -> a [`Report`]. Pure.

use kvmtrace_common::Counter;

use super::{Context, Counters, Report, VmReport, details, exits, rate};
use crate::{
    analyze::{cpu, storms},
    model::{
        Aggregate, VmKeys,
        identity::{VcpuLabel, vcpus_of},
    },
};

pub fn build(agg: &Aggregate, ctx: &Context) -> Report {
    let secs = agg.elapsed.as_secs_f64();
    let counters = counters(agg, ctx);
    let notes = notes(&counters, ctx);
    let by_vm = agg.keys_by_vm();
    let mut pids: Vec<u32> = by_vm.keys().chain(ctx.vms.keys()).copied().collect();
    pids.sort_unstable();
    pids.dedup();
    let no_keys = VmKeys::default();
    let vms: Vec<VmReport> = pids
        .into_iter()
        .map(|pid| vm_report(agg, by_vm.get(&pid).unwrap_or(&no_keys), ctx, pid, secs))
        .collect();
    let label =
        |pid: u32, tid: u32| super::vcpu_label(&vms, pid, tid).unwrap_or(VcpuLabel::Tid(tid));
    let storms = storms::detect(&agg.series, ctx.storm, &label);
    let vm_name = |pid: u32| {
        vms.iter()
            .find(|v| v.pid == pid)
            .map_or_else(|| format!("pid {pid}"), |v| v.name.clone())
    };
    let host_stacks = super::stacks::build(agg, &vm_name, &label);
    let slow_exits = super::slow::build(agg, &vm_name, &label);
    let guest_code = super::guest_code::build(agg, &vm_name, &label);
    let storm_starts = super::slow::storm_starts(agg, &vm_name, &label);
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
        host_steal_pct: None,
        host_stacks,
        slow_exits,
        storm_starts,
        guest_code,
    }
}

fn counters(agg: &Aggregate, ctx: &Context) -> Counters {
    let c = |k| agg.counter(k);
    Counters {
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
    }
}

/// Plain sentences about what the data can and cannot say.
fn notes(counters: &Counters, ctx: &Context) -> Vec<String> {
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
    notes
}

/// VM `pid`'s report; `vm_keys` are its keys of `agg`.
fn vm_report(agg: &Aggregate, vm_keys: &VmKeys, ctx: &Context, pid: u32, secs: f64) -> VmReport {
    let vm = ctx.vms.get(&pid);
    let vcpus = vcpus_of(vm_keys, vm);
    let label = |tid: u32| {
        ctx.per_vcpu.then(|| {
            vcpus
                .iter()
                .find(|v| v.tid == tid)
                .map_or(VcpuLabel::Tid(tid), |v| v.label)
        })
    };
    let exits = exits::exit_rows(vm_keys, ctx.in_flight, pid, secs, &label);
    let keys = details::DetailTables::build(vm_keys, secs, &label, ctx.max_rows);
    let userspace_exits = exits::userspace_rows(vm_keys, &keys.userspace, secs, &label);
    let vmm: Vec<cpu::VmmTime> = userspace_exits
        .iter()
        .map(|u| cpu::VmmTime {
            exit: u.exit,
            reason: u.reason.clone(),
            class: u.class,
            round_trip_ns: u.round_trip.as_ref().map_or(0, |l| l.total_ns),
        })
        .collect();
    let top_port = keys.ports.iter().max_by_key(|p| p.count).map(|p| p.port);
    let (cpu, cpu_summary) = cpu::attribution(agg, vm_keys, pid, &vcpus, &vmm, top_port);
    VmReport {
        cpu,
        cpu_summary,
        pid,
        name: vm.map_or_else(|| format!("pid {pid}"), |v| v.name.clone()),
        vcpus,
        total_exits: exits.iter().map(|r| r.count).sum(),
        total_userspace_exits: keys.userspace.iter().map(|r| r.count).sum(),
        detail_events: keys.events,
        exits,
        userspace_exits,
        ports: keys.ports,
        mmio: keys.mmio,
        msrs: keys.msrs,
        cpuid: keys.cpuid,
        other_keys: keys.other,
    }
    .with_rates(secs)
}

impl VmReport {
    /// Rates of the "other keys" rows, which are summed while the tables are built.
    fn with_rates(mut self, secs: f64) -> VmReport {
        for o in &mut self.other_keys {
            o.per_sec = rate(o.count, secs);
        }
        self
    }
}
