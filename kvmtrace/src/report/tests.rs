//! The report builder on a synthetic aggregate: exact rows, per-vCPU attribution, notes.

use std::{collections::BTreeMap, time::Duration};

use kvmtrace_common::{Counter, DetailKey, DetailKind, LatencyKey, VCPU_UNKNOWN, bucket_index};

use super::*;
use crate::model::{
    Aggregate, Interval, LatencyDelta,
    identity::{Thread, Vm},
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
        stacks: Default::default(),
        slow: Default::default(),
        guest_rips: Default::default(),
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
        v.vcpus
            .iter()
            .map(|v| v.label.to_string())
            .collect::<Vec<_>>(),
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
        .map(|e| (e.vcpu.unwrap().to_string(), e.reason.clone(), e.count))
        .collect();
    assert_eq!(
        rows,
        [
            ("0".into(), "io".into(), 301),
            ("1".into(), "cpuid".into(), 100)
        ]
    );
    assert_eq!(v.ports[0].vcpu, Some(VcpuLabel::Index(0)));
    assert_eq!(v.msrs[0].vcpu, Some(VcpuLabel::Index(1)));
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

/// A tid the kernel handed out again to another VM's vCPU (a long recording on a host where VMs
/// come and go): each VM keeps its own thread's CPU row, with the exit handling of its own keys.
#[test]
fn a_reused_tid_counts_only_its_own_vms_exit_handling() {
    let vms = vm();
    let mut agg = sample();
    let thread = |tgid| crate::model::ThreadCpu {
        tgid,
        tid: 101,
        tracked_ns: 1_000_000_000,
        run_ns: 1_000_000_000,
        ..Default::default()
    };
    agg.apply(&Interval {
        at: Duration::from_secs(3),
        threads: vec![thread(100)],
        ..Default::default()
    });
    let later = LatencyKey {
        tgid: 200,
        tid: 101,
        vcpu_id: 0,
        isa: 2,
        reason: 0x7b,
        kind: 0,
    };
    agg.apply(&Interval {
        at: Duration::from_secs(4),
        latency: vec![(later, delta(10, 1000))],
        threads: vec![thread(200)],
        ..Default::default()
    });
    let r = build(&agg, &ctx(&vms, false));
    let handling = |pid: u32| {
        let v = r.vms.iter().find(|v| v.pid == pid).unwrap();
        assert_eq!(v.cpu.len(), 1, "{pid}");
        v.cpu[0].exit_handling_pct.unwrap()
    };
    // Each thread: 1 s of wall time; web01's made 300 exits of 1 µs, the later VM's 10.
    assert!((handling(100) - 0.03).abs() < 1e-12, "{}", handling(100));
    assert!((handling(200) - 0.001).abs() < 1e-12, "{}", handling(200));
}
