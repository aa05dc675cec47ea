//! The human report: like `perf kvm stat report`, per VM, plus userspace round trips, top
//! ports / MMIO / MSRs / CPUID, and the loss counters that perf does not show.

use std::io;

use super::table::{Table, ns};
use crate::{
    analyze::storms::StormVcpu,
    model::identity::VcpuLabel,
    names::{msr_name, port_name},
    report::rate,
    report::{Counters, Latency, Report, VmReport},
};

/// Rows shown in each "top" table (JSON has them all).
pub const TOP: usize = 10;

pub fn render(report: &Report, out: &mut impl io::Write) -> io::Result<()> {
    writeln!(
        out,
        "kvmtrace: {:.2} s{}, {} VM{}",
        report.duration_secs,
        report
            .kvm_module
            .as_deref()
            .map(|m| format!(" on {m}"))
            .unwrap_or_default(),
        report.vms.len(),
        if report.vms.len() == 1 { "" } else { "s" }
    )?;
    for note in &report.notes {
        writeln!(out, "note: {note}")?;
    }
    render_storms(report, out)?;
    if report.vms.is_empty() {
        writeln!(out, "\nNo KVM events from the traced VMs.")?;
    }
    for vm in &report.vms {
        render_vm(vm, report, out)?;
    }
    if let Some(hs) = &report.host_stacks {
        super::host_paths::render(hs, out)?;
    }
    if let Some(gc) = &report.guest_code {
        super::guest_code::render(gc, out)?;
    }
    if let Some(slow) = &report.slow_exits {
        super::slow_exits::render(slow, out)?;
    }
    super::slow_exits::render_storm_starts(&report.storm_starts, out)?;
    writeln!(out)?;
    render_counters(&report.counters, report.tracer_cost.as_ref(), out)?;
    if let Some(cost) = &report.tracer_cost {
        render_cost(cost, out)?;
    }
    if let Some(steal) = report.host_steal_pct.filter(|&s| s >= 0.5) {
        writeln!(
            out,
            "Host steal: this host lost {steal:.1} % of its CPUs' time to its own hypervisor while recording; the on-CPU times above include what was stolen from a running vCPU thread, procfs's do not."
        )?;
    }
    Ok(())
}

/// The price of the numbers above: BPF run time (kernel statistics) and the collector's CPU.
fn render_cost(c: &crate::model::cost::TracerCost, out: &mut impl io::Write) -> io::Result<()> {
    let bpf = match (&c.unavailable, c.ns_per_run()) {
        (Some(why), _) => format!("BPF run time unknown ({why})"),
        (None, None) => "no BPF program ran".to_string(),
        (None, Some(ns)) => format!(
            "{} BPF program runs{} ({:.0}/s), {ns:.0} ns each, {:.2} % of one CPU",
            c.runs(),
            if c.sampled() {
                format!(" in {:.1} s of sampled statistics", c.measured_secs())
            } else {
                String::new()
            },
            c.runs_per_sec(),
            c.bpf_cpu_pct()
        ),
    };
    writeln!(
        out,
        "Tracer cost over {:.1} s: {bpf}; collector {:.2} % of one CPU.",
        c.secs,
        c.collector_cpu_pct()
    )
}

fn render_vm(vm: &VmReport, report: &Report, out: &mut impl io::Write) -> io::Result<()> {
    let vcpus: Vec<String> = vm.vcpus.iter().map(|v| v.label.to_string()).collect();
    writeln!(
        out,
        "\nVM {} (pid {}): {} exits ({:.1}/s), {} to the VMM ({:.1}/s), {} detail events; vCPUs: {}",
        vm.name,
        vm.pid,
        vm.total_exits,
        rate(vm.total_exits, report.duration_secs),
        vm.total_userspace_exits,
        rate(vm.total_userspace_exits, report.duration_secs),
        vm.detail_events,
        if vcpus.is_empty() {
            "-".into()
        } else {
            vcpus.join(", ")
        }
    )?;
    let v = |c: &Option<VcpuLabel>| c.map(|c| c.to_string()).unwrap_or_default();
    let per_vcpu = report.per_vcpu;
    render_cpu(vm, out)?;

    if !vm.exits.is_empty() {
        let isa = vm.exits[0].isa;
        let mut t = Table::new(
            per_vcpu,
            1,
            &[
                &format!("Exit reason ({isa})"),
                "Count",
                "Count%",
                "Time%",
                "Min",
                "p50",
                "p99",
                "Max",
                "Exits/s",
                "VMM p50",
                "VMM p99",
            ],
        );
        for e in &vm.exits {
            let vmm = |f: fn(&Latency) -> u64| e.vmm.as_ref().map_or("-".into(), |l| ns(f(l)));
            t.row(
                v(&e.vcpu),
                vec![
                    e.reason.clone(),
                    e.count.to_string(),
                    format!("{:.2}%", e.count_pct),
                    format!("{:.2}%", e.time_pct),
                    ns(e.latency.min_ns),
                    ns(e.latency.p50_ns),
                    ns(e.latency.p99_ns),
                    ns(e.latency.max_ns),
                    format!("{:.1}", e.per_sec),
                    vmm(|l| l.p50_ns),
                    vmm(|l| l.p99_ns),
                ],
            );
        }
        t.write(
            "Exits (in kernel: kvm_exit -> kvm_entry minus VMM round trips; VMM: the round trips of the exits that went to user space)",
            out,
        )?;
    }
    if !vm.userspace_exits.is_empty() {
        let mut t = Table::new(
            per_vcpu,
            1,
            &[
                "Reason",
                "Count",
                "Count%",
                "Exits/s",
                "VMM p50",
                "VMM p99",
                "VMM max",
                "VMM total",
            ],
        );
        for u in &vm.userspace_exits {
            let rt =
                |f: fn(&Latency) -> u64| u.round_trip.as_ref().map_or("-".into(), |l| ns(f(l)));
            t.row(
                v(&u.vcpu),
                vec![
                    u.reason.clone(),
                    u.count.to_string(),
                    format!("{:.2}%", u.count_pct),
                    format!("{:.1}", u.per_sec),
                    rt(|l| l.p50_ns),
                    rt(|l| l.p99_ns),
                    rt(|l| l.max_ns),
                    rt(|l| l.total_ns),
                ],
            );
        }
        t.write("Userspace exits (KVM_RUN returned to the VMM; VMM = time until the vCPU re-entered KVM_RUN)", out)?;
    }
    if !vm.ports.is_empty() {
        let mut t = Table::new(per_vcpu, 3, &["Port", "Name", "Dir", "Size", "Count", "/s"]);
        for p in vm.ports.iter().take(TOP) {
            t.row(
                v(&p.vcpu),
                vec![
                    format!("{:#06x}", p.port),
                    port_name(p.port).unwrap_or("-").into(),
                    p.direction.into(),
                    p.size.to_string(),
                    p.count.to_string(),
                    format!("{:.1}", p.per_sec),
                ],
            );
        }
        t.write(&top_title("I/O ports (kvm_pio)", vm.ports.len()), out)?;
    }
    if !vm.mmio.is_empty() {
        let mut t = Table::new(per_vcpu, 2, &["GPA", "Access", "Len", "Count", "/s"]);
        for m in vm.mmio.iter().take(TOP) {
            t.row(
                v(&m.vcpu),
                vec![
                    format!("{:#x}", m.gpa),
                    m.access.into(),
                    m.len.to_string(),
                    m.count.to_string(),
                    format!("{:.1}", m.per_sec),
                ],
            );
        }
        t.write(&top_title("MMIO (kvm_mmio)", vm.mmio.len()), out)?;
    }
    if !vm.msrs.is_empty() {
        let mut t = Table::new(per_vcpu, 3, &["MSR", "Name", "Access", "Count", "/s"]);
        for m in vm.msrs.iter().take(TOP) {
            t.row(
                v(&m.vcpu),
                vec![
                    format!("{:#x}", m.msr),
                    msr_name(m.msr).unwrap_or("-").into(),
                    format!("{}{}", m.access, if m.faulted { " (#GP)" } else { "" }),
                    m.count.to_string(),
                    format!("{:.1}", m.per_sec),
                ],
            );
        }
        t.write(&top_title("MSRs (kvm_msr)", vm.msrs.len()), out)?;
    }
    if !vm.cpuid.is_empty() {
        let mut t = Table::new(per_vcpu, 1, &["Function", "Count", "/s"]);
        for c in vm.cpuid.iter().take(TOP) {
            t.row(
                v(&c.vcpu),
                vec![
                    format!("{:#x}", c.function),
                    c.count.to_string(),
                    format!("{:.1}", c.per_sec),
                ],
            );
        }
        t.write(&top_title("CPUID (kvm_cpuid)", vm.cpuid.len()), out)?;
    }
    if !vm.other_keys.is_empty() {
        let mut t = Table::new(
            per_vcpu,
            1,
            &["Of", "Count", "/s", "Rows not shown", "Without a key"],
        );
        for o in &vm.other_keys {
            t.row(
                v(&o.vcpu),
                vec![
                    o.kind.into(),
                    o.count.to_string(),
                    format!("{:.1}", o.per_sec),
                    format!("{} ({} events)", o.folded_keys, o.folded_events),
                    o.unkeyed_events.to_string(),
                ],
            );
        }
        t.write(
            "Other keys (beyond the rows shown, --all-keys shows them; or beyond a vCPU's --max-keys-per-vcpu per interval / a full map: counted without their key)",
            out,
        )?;
    }
    Ok(())
}

/// Where the vCPU threads' time went, and what the VM's CPU is spent handling.
fn render_cpu(vm: &VmReport, out: &mut impl io::Write) -> io::Result<()> {
    if let Some(sum) = &vm.cpu_summary {
        let parts: Vec<String> = sum
            .handling
            .iter()
            .map(|h| format!("{:.1}% is {}", h.pct_of_vm_cpu, h.what))
            .collect();
        writeln!(
            out,
            "\n  Of this VM's {:.1}% CPU (vCPU threads, % of one CPU){}",
            sum.cpu_pct,
            if parts.is_empty() {
                ".".to_string()
            } else {
                format!(", {}.", parts.join(", "))
            }
        )?;
    }
    if vm.cpu.is_empty() {
        return Ok(());
    }
    let opt = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    let mut t = Table::new(
        false,
        1,
        &[
            "vCPU", "CPU%", "procfs%", "KVM_RUN%", "guest%", "exits%", "VMM%", "blocked%",
            "waiting%", "wall",
        ],
    );
    for r in &vm.cpu {
        t.row(
            String::new(),
            vec![
                r.vcpu.to_string(),
                format!("{:.1}", r.cpu_pct),
                opt(r.procfs_cpu_pct),
                format!("{:.1}", r.in_kvm_run_pct),
                opt(r.guest_pct),
                opt(r.exit_handling_pct),
                format!("{:.1}", r.vmm_pct),
                format!("{:.1}", r.blocked_pct),
                format!("{:.1}", r.runnable_wait_pct),
                format!("{:.1}s", r.wall_secs),
            ],
        );
    }
    t.write("CPU of the vCPU threads, % of wall time (KVM_RUN = on-CPU inside KVM_RUN: guest + exit handling; VMM = on-CPU in user space; waiting = runnable, no CPU)", out)
}

/// The answer first: which storms, on which vCPU, since when, what they cost, what to do.
fn render_storms(report: &Report, out: &mut impl io::Write) -> io::Result<()> {
    if report.storms.is_empty() {
        if !report.vms.is_empty() {
            writeln!(out, "\nStorms: none.")?;
        }
        return Ok(());
    }
    writeln!(out, "\nStorms ({}):", report.storms.len())?;
    for (i, s) in report.storms.iter().enumerate() {
        let vm = report
            .vms
            .iter()
            .find(|v| v.pid == s.pid)
            .map_or_else(|| format!("pid {}", s.pid), |v| v.name.clone());
        let vcpu = match s.vcpu {
            StormVcpu::One(label) => label.named(),
            StormVcpu::All => "vCPU all".into(),
        };
        writeln!(
            out,
            "  {}. {vm} {vcpu}: {} from {:.1} s to {:.1} s{} ({:.1} s), mean {:.0}/s, peak {:.0}/s, {} exits{}",
            i + 1,
            s.what,
            s.start_secs,
            s.end_secs,
            if s.ongoing { " (still going)" } else { "" },
            s.end_secs - s.start_secs,
            s.mean_rate,
            s.peak_rate,
            s.count,
            s.cost_pct
                .map(|c| format!(", handling time {c:.1}% of the storm's wall time"))
                .unwrap_or_default()
        )?;
        if !s.related.is_empty() {
            writeln!(out, "     with: {}", s.related.join(", "))?;
        }
        match &s.diagnosis {
            Some(d) => {
                writeln!(out, "     diagnosis: {}. {}", d.title, d.cause)?;
                writeln!(out, "     fix: {}", d.fix)?;
                writeln!(out, "     see: {}", d.reference)?;
            }
            None => writeln!(
                out,
                "     diagnosis: no rule in the knowledge base matches this pattern."
            )?,
        }
    }
    Ok(())
}

/// The loss counters, with the program runs the kernel skipped (from `cost`, when known).
fn render_counters(
    c: &Counters,
    cost: Option<&crate::model::cost::TracerCost>,
    out: &mut impl io::Write,
) -> io::Result<()> {
    let skipped_runs = cost.map_or(0, |cost| cost.skipped_runs());
    writeln!(
        out,
        "Lost/unpaired: {}. unpaired exits {}, unpaired entries {}, VMM round trips without a re-entry marker {}, map full (latency/detail/thread) {}/{}/{}; in flight at stop: {} exits, {} VMM round trips; exits whose thread ended first {}; events: {} kvm_exit, {} kvm_entry, {} detail",
        if c.losses() == 0 && skipped_runs == 0 {
            "none"
        } else {
            "SOME DATA WAS LOST"
        },
        c.unpaired_exits,
        c.unpaired_entries,
        c.unpaired_userspace_exits,
        c.latency_map_full,
        c.detail_map_full,
        c.thread_map_full,
        c.exits_in_flight_at_stop,
        c.round_trips_in_flight_at_stop,
        c.exits_ended_with_thread,
        c.exits_seen,
        c.entries_seen,
        c.detail_events,
    )?;
    if let Some(cost) = cost.filter(|_| skipped_runs > 0) {
        let each: Vec<String> = cost
            .skipped
            .iter()
            .map(|s| format!("{} {}", s.program, s.runs))
            .collect();
        writeln!(
            out,
            "Skipped by the kernel: {skipped_runs} runs of kvmtrace's programs ({}): it does not run a tracing program on a CPU where another BPF program runs or (classic tracepoints) a bpf() call holds that CPU's guard; their events are missing from the counts above.",
            each.join(", ")
        )?;
    }
    if let Some(m) = &c.map_entries_at_stop {
        writeln!(
            out,
            "Kernel maps after the last drain: {} threads, {} latency and {} detail entries.",
            m.threads, m.latency, m.details
        )?;
    }
    Ok(())
}

fn top_title(what: &str, n: usize) -> String {
    if n > TOP {
        format!("{what}, top {TOP} of {n}")
    } else {
        what.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmtrace_common::{Detail, DetailKind, PortDir, UserspaceExit};

    use crate::{
        model::identity::Vcpu,
        report::{ExitRow, OtherKeysRow, PortRow, UserspaceRow},
        tp::class::ExitClass,
    };

    fn report() -> Report {
        let lat = |n, v| Latency {
            count: n,
            total_ns: n * v,
            min_ns: v,
            p50_ns: v,
            p99_ns: v,
            max_ns: v,
        };
        Report {
            host_stacks: None,
            slow_exits: None,
            guest_code: None,
            storm_starts: Vec::new(),
            host_steal_pct: None,
            tracer_cost: Some(crate::model::cost::TracerCost {
                secs: 2.0,
                programs: vec![crate::model::cost::ProgramCost {
                    program: "kvmtrace_pio".into(),
                    runs: 300,
                    run_ns: 30_000,
                }],
                collector_cpu_ns: 4_000_000,
                unavailable: None,
                stats_secs: None,
                skipped: Vec::new(),
            }),
            duration_secs: 2.0,
            kvm_module: Some("kvm_amd".into()),
            tracepoints_attached: vec![],
            tracepoints_missing: vec![],
            notes: vec![],
            per_vcpu: false,
            storms: vec![],
            vms: vec![VmReport {
                cpu: vec![],
                cpu_summary: None,
                pid: 100,
                name: "web01".into(),
                vcpus: vec![Vcpu {
                    label: VcpuLabel::Index(0),
                    tid: 101,
                    thread_name: Some("CPU 0/KVM".into()),
                }],
                total_exits: 300,
                total_userspace_exits: 300,
                detail_events: 600,
                exits: vec![ExitRow {
                    vcpu: None,
                    isa: "SVM",
                    reason_code: 0x7b,
                    reason: "io".into(),
                    isa_code: 2,
                    class: ExitClass::Io,
                    count: 300,
                    in_flight: 0,
                    ended_with_thread: 0,
                    count_pct: 100.0,
                    time_pct: 100.0,
                    per_sec: 150.0,
                    latency: lat(300, 1500),
                    vmm: Some(lat(300, 20_000)),
                }],
                userspace_exits: vec![UserspaceRow {
                    vcpu: None,
                    reason_code: 2,
                    reason: "IO".into(),
                    exit: UserspaceExit::Reason(2),
                    class: ExitClass::Io,
                    count: 300,
                    count_pct: 100.0,
                    per_sec: 150.0,
                    round_trip: Some(lat(300, 20_000)),
                }],
                ports: vec![PortRow {
                    vcpu: None,
                    detail: Detail::Port {
                        port: 0x70,
                        dir: PortDir::Out,
                        size: 1,
                    },
                    port: 0x70,
                    direction: "out",
                    size: 1,
                    count: 300,
                    per_sec: 150.0,
                }],
                mmio: vec![],
                msrs: vec![],
                cpuid: vec![],
                other_keys: vec![OtherKeysRow {
                    vcpu: None,
                    kind: "ports",
                    detail_kind: DetailKind::Pio,
                    count: 70,
                    per_sec: 35.0,
                    folded_keys: 2,
                    folded_events: 30,
                    unkeyed_events: 40,
                }],
            }],
            counters: Counters::default(),
        }
    }

    #[test]
    fn renders_exactly() {
        let mut out = Vec::new();
        render(&report(), &mut out).unwrap();
        let expected = "\
kvmtrace: 2.00 s on kvm_amd, 1 VM

Storms: none.

VM web01 (pid 100): 300 exits (150.0/s), 300 to the VMM (150.0/s), 600 detail events; vCPUs: 0

  Exits (in kernel: kvm_exit -> kvm_entry minus VMM round trips; VMM: the round trips of the exits that went to user space)
  Exit reason (SVM)  Count   Count%    Time%     Min     p50     p99     Max  Exits/s  VMM p50  VMM p99
  io                   300  100.00%  100.00%  1.50us  1.50us  1.50us  1.50us    150.0  20.00us  20.00us

  Userspace exits (KVM_RUN returned to the VMM; VMM = time until the vCPU re-entered KVM_RUN)
  Reason  Count   Count%  Exits/s  VMM p50  VMM p99  VMM max  VMM total
  IO        300  100.00%    150.0  20.00us  20.00us  20.00us     6.00ms

  I/O ports (kvm_pio)
  Port    Name       Dir  Size  Count     /s
  0x0070  RTC index  out     1    300  150.0

  Other keys (beyond the rows shown, --all-keys shows them; or beyond a vCPU's --max-keys-per-vcpu per interval / a full map: counted without their key)
  Of     Count    /s  Rows not shown  Without a key
  ports     70  35.0   2 (30 events)             40

Lost/unpaired: none. unpaired exits 0, unpaired entries 0, VMM round trips without a re-entry marker 0, map full (latency/detail/thread) 0/0/0; in flight at stop: 0 exits, 0 VMM round trips; exits whose thread ended first 0; events: 0 kvm_exit, 0 kvm_entry, 0 detail
Tracer cost over 2.0 s: 300 BPF program runs (150/s), 100 ns each, 0.00 % of one CPU; collector 0.20 % of one CPU.
";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    /// The text report of [`report`] with `cost` as the tracer's cost.
    fn rendered_with_cost(cost: crate::model::cost::TracerCost) -> String {
        let mut r = report();
        r.tracer_cost = Some(cost);
        let mut out = Vec::new();
        render(&r, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_cost_line_says_why_bpf_time_is_unknown() {
        let text = rendered_with_cost(crate::model::cost::TracerCost {
            secs: 1.0,
            unavailable: Some("BPF_ENABLE_STATS failed: EINVAL".into()),
            ..Default::default()
        });
        assert!(
            text.ends_with(
                "Tracer cost over 1.0 s: BPF run time unknown (BPF_ENABLE_STATS failed: EINVAL); \
                 collector 0.00 % of one CPU.\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_sampled_cost_line_says_how_long_it_was_measured() {
        let text = rendered_with_cost(crate::model::cost::TracerCost {
            secs: 120.0,
            stats_secs: Some(2.0),
            programs: vec![crate::model::cost::ProgramCost {
                program: "kvmtrace_pio_raw".into(),
                runs: 100_000,
                run_ns: 8_000_000,
            }],
            ..Default::default()
        });
        assert!(
            text.ends_with(
                "Tracer cost over 120.0 s: 100000 BPF program runs in 2.0 s of sampled statistics \
                 (50000/s), 80 ns each, 0.40 % of one CPU; collector 0.00 % of one CPU.\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn runs_the_kernel_skipped_are_lost_data() {
        let skipped = |program: &str, runs| crate::model::cost::SkippedRuns {
            program: program.into(),
            runs,
        };
        let text = rendered_with_cost(crate::model::cost::TracerCost {
            secs: 1.0,
            skipped: vec![skipped("kvmtrace_exit", 12), skipped("kvmtrace_entry", 3)],
            ..Default::default()
        });
        assert!(
            text.contains("Lost/unpaired: SOME DATA WAS LOST. "),
            "{text}"
        );
        assert!(
            text.contains(
                "\nSkipped by the kernel: 15 runs of kvmtrace's programs (kvmtrace_exit 12, \
                 kvmtrace_entry 3): "
            ),
            "{text}"
        );
        // None skipped: no line, nothing lost.
        let text = rendered_with_cost(crate::model::cost::TracerCost::default());
        assert!(text.contains("Lost/unpaired: none. "), "{text}");
        assert!(!text.contains("Skipped by the kernel"), "{text}");
    }

    #[test]
    fn empty_report_does_not_panic() {
        let mut r = report();
        r.vms.clear();
        let mut out = Vec::new();
        render(&r, &mut out).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("No KVM events from the traced VMs.")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(ns(850), "850ns");
        assert_eq!(ns(1234), "1.23us");
        assert_eq!(ns(45_600_000), "45.60ms");
        assert_eq!(ns(1_200_000_000), "1.20s");
    }
}
