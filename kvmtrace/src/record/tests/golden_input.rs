//! The synthetic recordings behind the golden files, value by value: what each version's writer
//! was given. Version 1's file was written by the writer of bc949b8 from the same values (see
//! `kvmtrace/tests/data/recordings/README.md`); keep them as they are, the files depend on them.

use std::time::Duration;

use kvmtrace_common::{DetailKey, DetailKind, LatencyKey};

use crate::{
    model::{
        Interval, LatencyDelta, MapEntries, ThreadCpu,
        cost::{ProgramCost, TracerCost},
        identity::{Thread, Vm},
    },
    record::{End, Header},
};

/// A recording as its writer was given it: VM 1, interval 1, VM 2, intervals 2 and 3, END.
pub struct Input {
    pub header: Header,
    pub vms: [Vm; 2],
    pub intervals: Vec<Interval>,
    pub end: End,
}

pub fn det(tgid: u32, tid: u32, kind: u32, a: u32, b: u64) -> DetailKey {
    DetailKey {
        tgid,
        tid,
        kind,
        a,
        b,
    }
}

fn delta(
    count: u64,
    total_ns: u64,
    min_ns: u64,
    max_ns: u64,
    buckets: &[(u16, u32)],
) -> LatencyDelta {
    LatencyDelta {
        count,
        total_ns,
        min_ns,
        max_ns,
        buckets: buckets.to_vec(),
    }
}

/// VM 4242's vCPU 0 exits for I/O (VMX reason 30) and its VMM handles KVM_EXIT_IO.
pub const KEY_A: LatencyKey = LatencyKey {
    tgid: 4242,
    tid: 4243,
    vcpu_id: 0,
    isa: 1,
    reason: 30,
    kind: 0,
};
/// vCPU 1's EPT violations (VMX reason 48).
pub const KEY_B: LatencyKey = LatencyKey {
    tgid: 4242,
    tid: 4244,
    vcpu_id: 1,
    isa: 1,
    reason: 48,
    kind: 0,
};
/// vCPU 0's VMM round trips of KVM_EXIT_IO (2).
pub const KEY_C: LatencyKey = LatencyKey {
    tgid: 4242,
    tid: 4243,
    vcpu_id: 0,
    isa: 0,
    reason: 2,
    kind: 1,
};
/// The VMM's part of vCPU 0's I/O exits (LatencyKind::ExitVmm; since 5beba80).
pub const KEY_D: LatencyKey = LatencyKey { kind: 2, ..KEY_A };

/// Port 0x70 written by vCPU 0, one byte at a time.
pub const PORT_70_OUT: DetailKey = DetailKey {
    tgid: 4242,
    tid: 4243,
    kind: 1,
    a: 0x70,
    b: 1 | 1 << 8,
};

pub fn header() -> Header {
    Header {
        kvmtrace_version: "0.1.0".into(),
        host: "golden-host".into(),
        kernel_release: "6.1.0-27-amd64".into(),
        kvm_module: Some("kvm_intel".into()),
        formats: [
            (
                "kvm_exit".to_string(),
                "name: kvm_exit\nID: 1\n".to_string(),
            ),
            ("kvm_pio".to_string(), "name: kvm_pio\nID: 2\n".to_string()),
        ]
        .into(),
        tracepoints_attached: vec!["kvm_exit".into(), "kvm_entry".into(), "kvm_pio".into()],
        tracepoints_missing: vec!["kvm_fpu".into()],
        interval_ms: 1000,
        start_unix_secs: 1_764_115_200.25,
        command_line: vec![
            "kvmtrace".into(),
            "record".into(),
            "-o".into(),
            "golden.kvmtrace".into(),
        ],
        slow_threshold_ns: None,
        guest_rips: false,
    }
}

pub fn vms() -> [Vm; 2] {
    let thread = |tid, comm: &str| Thread {
        tid,
        comm: comm.into(),
    };
    [
        Vm {
            pid: 4242,
            name: "golden".into(),
            aliases: ["golden".to_string(), "instance-0001".to_string()].into(),
            threads: vec![
                thread(4243, "CPU 0/KVM"),
                thread(4244, "CPU 1/KVM"),
                thread(4250, "IO mon_iothread"),
            ],
        },
        Vm {
            pid: 5000,
            name: "second".into(),
            aliases: ["second".to_string()].into(),
            threads: vec![thread(5001, "CPU 0/KVM")],
        },
    ]
}

/// Interval 1's detail entries: every kind of detail key.
fn details_1() -> Vec<(DetailKey, u64)> {
    vec![
        (PORT_70_OUT, 1234),
        (det(4242, 4243, 1, 0x71, 1 << 8), 1233),
        (det(4242, 4244, 2, 2 | 4 << 8, 0xfee0_0300), 77),
        (det(4242, 4244, 2, 8 << 8, 0xfed0_00f0), 5),
        (det(4242, 4243, 3, 0x6e0, 1), 300),
        (det(4242, 4244, 3, 0x3a, 1 << 1), 2),
        (det(4242, 4244, 4, 0x4000_0001, 0), 12),
        (det(4242, 4243, 5, 2, 0), 1234),
        (det(4242, 4244, 5, 2 | 1 << 31, 4), 3),
        (det(4242, 4244, 5, 17 | 1 << 31, 14), 1),
    ]
}

fn details_2() -> Vec<(DetailKey, u64)> {
    vec![
        (PORT_70_OUT, 1000),
        (det(4242, 4243, 4, 0x1, 0), 7),
        (det(4242, 4244, 1, 0xcf8, 1 | 4 << 8), 40),
        (det(5000, 5001, 1, 0x3f8, 1 | 1 << 8), 99),
    ]
}

fn details_3() -> Vec<(DetailKey, u64)> {
    vec![(det(4242, 4243, 3, 0x6e0, 1), 10)]
}

/// What the writer of bc949b8 was given: no per-thread records, and each key's min and max
/// since attach (interval 2's min and max of KEY_A are interval 1's).
pub fn v1() -> Input {
    let intervals = vec![
        Interval {
            at: Duration::new(1, 123),
            latency: vec![
                (
                    KEY_A,
                    delta(
                        1500,
                        1_714_900,
                        900,
                        16_500,
                        &[(108, 1000), (120, 499), (176, 1)],
                    ),
                ),
                (
                    KEY_B,
                    delta(20, 200_000, 5_000, 15_000, &[(147, 10), (173, 10)]),
                ),
                (
                    KEY_C,
                    delta(400, 4_000_000, 9_000, 11_000, &[(161, 300), (165, 100)]),
                ),
            ],
            details: details_1(),
            counters: [1520, 1519, 4101, 1, 0, 2, 0, 0, 0, 1],
            threads: vec![],
            stacks: Default::default(),
            slow: Default::default(),
            guest_rips: Default::default(),
        },
        Interval {
            at: Duration::new(2, 250_000),
            latency: vec![(
                KEY_A,
                delta(600, 851_000, 900, 16_500, &[(108, 100), (120, 500)]),
            )],
            details: details_2(),
            counters: [2120, 2119, 5247, 1, 0, 3, 0, 0, 0, 1],
            threads: vec![],
            stacks: Default::default(),
            slow: Default::default(),
            guest_rips: Default::default(),
        },
        Interval {
            at: Duration::from_millis(3500),
            latency: vec![(KEY_A, delta(2, 100_000, 900, 50_000, &[(200, 2)]))],
            details: details_3(),
            counters: [2122, 2122, 5257, 1, 0, 3, 0, 0, 0, 1],
            threads: vec![],
            stacks: Default::default(),
            slow: Default::default(),
            guest_rips: Default::default(),
        },
    ];
    Input {
        header: header(),
        vms: vms(),
        intervals,
        end: End {
            exits_in_flight: vec![([4242, 4244, 1, 1, 48, 0], 1)],
            round_trips_in_flight: 0,
            ..Default::default()
        },
    }
}

/// A thread's CPU record; `ns`: tracked, run, off-CPU in KVM_RUN blocked and runnable, off-CPU
/// outside it blocked and runnable.
fn cpu(tgid: u32, tid: u32, ns: [u64; 6], procfs_ns: Option<u64>) -> ThreadCpu {
    let [
        tracked_ns,
        run_ns,
        run_blocked,
        run_runnable,
        user_blocked,
        user_runnable,
    ] = ns;
    ThreadCpu {
        tgid,
        tid,
        tracked_ns,
        run_ns,
        off_run_blocked_ns: run_blocked,
        off_run_runnable_ns: run_runnable,
        off_user_blocked_ns: user_blocked,
        off_user_runnable_ns: user_runnable,
        procfs_ns,
        procfs_tracked_ns: procfs_ns.map_or(0, |_| tracked_ns),
    }
}

/// What the writers since 5beba80 are given: per-thread CPU records, min and max of the
/// interval, an "other keys" row, a VMM-in-exit key, and the END fields added since version 1.
/// Version 2's golden, and the version 1 file of the last writer before version 2
/// (`v1-threads.kvmtrace`), hold it.
pub fn v2() -> Input {
    let mut input = v1();
    let [i1, i2, i3] = &mut input.intervals[..] else {
        unreachable!()
    };
    i1.latency.push((
        KEY_D,
        delta(400, 4_100_000, 9_000, 11_000, &[(161, 300), (165, 100)]),
    ));
    i1.details
        .push((DetailKey::other(4242, 4243, DetailKind::Pio), 17));
    i1.counters[2] += 17;
    i1.threads = vec![
        cpu(
            4242,
            4243,
            [
                1_000_000_123,
                950_000_000,
                600_000_000,
                2_000_000,
                10_000_000,
                500_000,
            ],
            Some(360_000_000),
        ),
        cpu(
            4242,
            4244,
            [1_000_000_000, 990_000_000, 900_000_000, 1_000_000, 0, 0],
            None,
        ),
    ];
    // Min and max of the interval alone.
    i2.latency[0].1.min_ns = 910;
    i2.latency[0].1.max_ns = 1_580;
    i2.counters[2] += 17;
    i2.threads = vec![
        cpu(
            4242,
            4243,
            [
                2_000_250_123,
                1_900_000_000,
                1_200_000_000,
                3_000_000,
                20_000_000,
                700_000,
            ],
            Some(720_000_000),
        ),
        cpu(
            4242,
            4244,
            [2_000_250_000, 1_990_000_000, 1_900_000_000, 1_000_000, 0, 0],
            None,
        ),
        cpu(5000, 5001, [250_000_000, 200_000_000, 0, 0, 0, 0], Some(0)),
    ];
    i3.latency[0].1.min_ns = 49_500;
    i3.counters[2] += 17;
    // The largest procfs time the format holds (it stores value + 1).
    i3.threads = vec![cpu(
        4242,
        4243,
        [
            3_500_000_123,
            3_300_000_000,
            2_000_000_000,
            4_000_000,
            30_000_000,
            900_000,
        ],
        Some(u64::MAX - 1),
    )];
    input.end = End {
        exits_in_flight: vec![([4242, 4244, 1, 1, 48, 0], 1)],
        round_trips_in_flight: 1,
        exits_ended_with_thread: vec![([5000, 5001, 0, 1, 30, 0], 2)],
        map_entries_at_stop: Some(MapEntries {
            threads: 3,
            latency: 4,
            details: 12,
            stacks: 0,
        }),
        tracer_cost: Some(TracerCost {
            secs: 3.5,
            programs: vec![
                ProgramCost {
                    program: "kvmtrace_exit".into(),
                    runs: 2122,
                    run_ns: 212_200,
                },
                ProgramCost {
                    program: "kvmtrace_pio".into(),
                    runs: 3000,
                    run_ns: 450_000,
                },
            ],
            collector_cpu_ns: 12_345_678,
            unavailable: None,
            skipped: Vec::new(),
            stats_secs: None,
        }),
        host_steal_pct: None,
    };
    input
}

/// Version 3: version 2's, with host stack samples in intervals 1 and 3 (interval 2 has none:
/// no STACKS record); interval 3 reuses stack 0 and adds one.
pub fn v3() -> Input {
    use crate::model::stacks::{HostStack, SampleKey, StackBatch};
    use kvmtrace_common::stacks::{NO_REASON, SampleState};
    let mut input = v2();
    let stack = |kernel: &[&str], user: &[&str]| HostStack {
        kernel: kernel.iter().map(|s| s.to_string()).collect(),
        user: user.iter().map(|s| s.to_string()).collect(),
    };
    let sample = |tid, state: SampleState, uexit_reason, stack| SampleKey {
        tgid: 4242,
        tid,
        vcpu_id: tid - 4243,
        state: state as u32,
        isa: NO_REASON,
        reason: NO_REASON,
        uexit_reason,
        stack,
    };
    input.intervals[0].stacks = StackBatch {
        new_stacks: vec![
            stack(
                &[
                    "entry_SYSCALL_64",
                    "kvm_vcpu_ioctl",
                    "kvm_arch_vcpu_ioctl_run",
                ],
                &["main", "vcpu_loop", "ioctl"],
            ),
            stack(&[], &["main", "vcpu_loop", "emulate_port_io"]),
        ],
        samples: vec![
            (sample(4243, SampleState::InRun, NO_REASON, 0), 812),
            (sample(4243, SampleState::Vmm, 2, 1), 97),
        ],
        lost: 0,
    };
    input.intervals[2].stacks = StackBatch {
        new_stacks: vec![stack(&["[stack lost]"], &["[unknown]"])],
        samples: vec![
            (sample(4244, SampleState::InRun, NO_REASON, 0), 5),
            (sample(4244, SampleState::Vmm, NO_REASON, 2), 1),
        ],
        lost: 3,
    };
    input
}

/// Version 4: version 3's input, slow exits (`--than 1ms`) in intervals 1 and 3, guest RIPs
/// (`--guest-rips`) in interval 2.
pub fn v4() -> Input {
    use crate::model::{
        rips::{RipBatch, RipCount},
        slow::{FlightExit, SlowBatch, SlowExit, SlowKind, StormStart},
    };
    let mut input = v3();
    input.end.host_steal_pct = Some(0.4);
    input.header.slow_threshold_ns = Some(1_000_000);
    input.header.guest_rips = true;
    let rip = |tid, reason, rip, exits| RipCount {
        tgid: 4242,
        tid,
        isa: 2,
        reason,
        rip,
        exits,
        // v4 files written before the exits' detail was kept have none.
        detail: None,
    };
    input.intervals[1].guest_rips = RipBatch {
        counts: vec![
            rip(4243, 0x7b, 0xffff_ffff_8103_3f1d, 9000),
            rip(4243, 0x78, 0xffff_ffff_81a0_11c2, 12),
            rip(4244, 0x7b, 0xffff_ffff_8103_3f1d, 40),
        ],
        lost: 5,
    };
    let slow = |at_ms, kind, reason, detail, total_ns, vmm_ns, off_cpu_ns, rip| SlowExit {
        at: Duration::from_millis(at_ms),
        tgid: 4242,
        tid: 4243,
        vcpu_id: 0,
        kind,
        isa: if kind == SlowKind::Exit { 2 } else { 0 },
        reason,
        detail,
        total_ns,
        vmm_ns,
        off_cpu_ns,
        guest_rip: rip,
        info1: if reason == 0x7b { 0x0070_0210 } else { 0 },
        info2: if reason == 0x7b {
            0xffff_ffff_8100_0abc
        } else {
            0
        },
        history: Vec::new(),
    };
    input.intervals[0].slow = SlowBatch {
        exits: vec![
            slow(
                250,
                SlowKind::Exit,
                0x7b,
                Some((1, 0x70, 1 | 1 << 8)),
                1_200_000,
                1_100_000,
                0,
                0xffff_ffff_8100_0abc,
            ),
            slow(
                251,
                SlowKind::VmmRoundTrip,
                2,
                Some((1, 0x70, 1 | 1 << 8)),
                1_100_000,
                1_100_000,
                40_000,
                0,
            ),
        ],
        lost: 0,
        storm_starts: Vec::new(),
    };
    input.intervals[2].slow = SlowBatch {
        exits: vec![slow(
            2_900,
            SlowKind::Exit,
            0x78,
            None,
            25_000_000,
            0,
            24_990_000,
            0xffff_ffff_8100_1234,
        )],
        lost: 7,
        // `--flight 2`: a storm of port writes starting after a halt.
        storm_starts: vec![StormStart {
            at: Duration::from_millis(2_500),
            tgid: 4242,
            tid: 4244,
            history: vec![
                FlightExit {
                    at: Duration::from_micros(2_499_000),
                    kind: SlowKind::Exit,
                    isa: 2,
                    reason: 0x78,
                    detail: None,
                    total_ns: 900_000,
                },
                FlightExit {
                    at: Duration::from_millis(2_500),
                    kind: SlowKind::Exit,
                    isa: 2,
                    reason: 0x7b,
                    detail: Some((1, 0x70, 1 | 1 << 8)),
                    total_ns: 2_000,
                },
            ],
        }],
    };
    // `--flight 2`: the round trip before the halt, and the halt.
    input.intervals[2].slow.exits[0].history = vec![
        FlightExit {
            at: Duration::from_micros(2_899_990),
            kind: SlowKind::VmmRoundTrip,
            isa: 0,
            reason: 2,
            detail: Some((1, 0x70, 1 | 1 << 8)),
            total_ns: 9_000,
        },
        FlightExit {
            at: Duration::from_millis(2_900),
            kind: SlowKind::Exit,
            isa: 2,
            reason: 0x78,
            detail: None,
            total_ns: 25_000_000,
        },
    ];
    input
}
