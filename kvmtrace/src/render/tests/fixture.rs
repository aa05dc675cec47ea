//! Reports of realistic recordings, built the way kvmtrace builds them: drained [`Interval`]s ->
//! [`Aggregate::apply`] -> [`report::build`]. No test hand-writes a `Report`: what the renderers
//! get is what the builder, the storm detector and the CPU attribution make of these inputs.
//!
//! `web01` (pid 100, kvm_amd, 4 intervals of 1 s), with every number chosen so the tests can work
//! the output out by hand (no rate or percentage lands on a rounding tie):
//!
//! vCPU 0 (tid 101), an RTC storm:
//! - io exits 2 000 / 21 000 / 21 000 / 2 000: 45 000 take 1 us, 1 000 (in the quiet seconds)
//!   6 us: 51 ms in all; each goes to the VMM for 10 us (ExitVmm and VmmRoundTrip keys).
//! - port 0x70 out 1 000 / 20 000 / 20 000 / 1 000, port 0x71 in 1 000 a second: the io exits.
//! - userspace exits: IO as many as io exits, and 4 restarts (EINTR) without a round trip.
//! - msr exits 500/s at 2 us: MSR 0x6e0 (TSC deadline) writes.
//!
//! vCPU 1 (tid 102), a mostly idle vCPU with many small keys:
//! - cpuid 300/s at 500 ns (functions 0x1 150/s, 0x40000000 100/s, 0xd 50/s);
//! - hlt 251, 250, 250, 250 at 1 ms, and one more still open when recording stopped;
//! - npf 100/s at 3 us, half of them MMIO to user space (15 us round trips): MMIO 0xfebf1000
//!   write 30/s, 0xfebf1004 read 20/s (and its unsatisfied-read twin 20/s);
//! - io 111/s at 1.5 us (8 us in the VMM) over 11 ports (20, 18, ... 2, 1 a second), plus 6
//!   events the kernel counted without a key (an "other keys" row);
//! - msr 19, 16, 16, 19 at 2 us: MSR 0x1b reads 15/s, a faulting read of 0x3a 1/s, and 3 + 3
//!   MSR events without a key.
//!
//! Detail tables keep 11 rows (`max_rows`): of the 13 ports the two smallest fold into "other
//! ports", and the text report shows 10 of the 11 left. Counters include losses (3 unpaired exits,
//! 2 latency samples dropped on a full map), and the tracer's cost is set as the recorder sets it.

use std::collections::BTreeMap;

use kvmtrace_common::{
    Counter, Detail, DetailKey, DetailKind, MmioAccess, MsrDir, PortDir, UserspaceExit,
};

use super::recording::{
    CPUID, HLT, IO, KVM_EXIT_IO, KVM_EXIT_MMIO, MSR, NPF, Recording, Setup, cpu, exit, exit_vmm,
    mmio, msr, port, round_trip, uexit, vm,
};
use crate::{
    model::{
        InFlight, MapEntries,
        cost::{ProgramCost, TracerCost},
    },
    report::Report,
};

const WEB01: u32 = 100;

/// The 11 small ports of web01's vCPU 1: (port, direction, size, events per second).
const SMALL_PORTS: [(u16, PortDir, u8, u64); 11] = [
    (0xcfc, PortDir::In, 4, 20),
    (0xcf8, PortDir::Out, 4, 18),
    (0x608, PortDir::In, 4, 16),
    (0x3f8, PortDir::Out, 1, 14),
    (0x3fd, PortDir::In, 1, 12),
    (0x510, PortDir::Out, 2, 10),
    (0x511, PortDir::In, 1, 8),
    (0x40, PortDir::In, 1, 6),
    (0x61, PortDir::In, 1, 4),
    (0x80, PortDir::Out, 1, 2),
    (0x1234, PortDir::In, 2, 1),
];

/// web01 on kvm_amd (see the module's doc), per vCPU or VM-wide.
pub fn web01(per_vcpu: bool) -> Report {
    let (pid, v0, v1) = (WEB01, 101, 102);
    let mut r = Recording::new(4);
    // vCPU 0: the RTC storm.
    let io0 = [2000, 21_000, 21_000, 2000];
    let quiet: &[(u64, u64)] = &[(1000, 1500), (6000, 500)];
    let busy: &[(u64, u64)] = &[(1000, 21_000)];
    r.latency(exit(pid, v0, 0, IO), &[quiet, busy, busy, quiet]);
    r.timed(exit_vmm(pid, v0, 0, IO), 10_000, &io0);
    r.timed(round_trip(pid, v0, KVM_EXIT_IO), 10_000, &io0);
    r.detail(pid, v0, uexit(KVM_EXIT_IO), &io0);
    r.detail(
        pid,
        v0,
        port(0x70, PortDir::Out, 1),
        &[1000, 20_000, 20_000, 1000],
    );
    r.detail(pid, v0, port(0x71, PortDir::In, 1), &[1000; 4]);
    let restart = Detail::UserspaceExit(UserspaceExit::Restart {
        reason: KVM_EXIT_IO,
    });
    r.detail(pid, v0, restart, &[0, 2, 0, 2]);
    r.timed(exit(pid, v0, 0, MSR), 2000, &[500; 4]);
    r.detail(pid, v0, msr(0x6e0, MsrDir::Write, false), &[500; 4]);
    // vCPU 1: mostly idle, many small keys.
    r.timed(exit(pid, v1, 1, CPUID), 500, &[300; 4]);
    for (function, n) in [(0x1, 150), (0x4000_0000, 100), (0xd, 50)] {
        r.detail(pid, v1, Detail::Cpuid { function }, &[n; 4]);
    }
    r.timed(exit(pid, v1, 1, HLT), 1_000_000, &[251, 250, 250, 250]);
    r.timed(exit(pid, v1, 1, NPF), 3000, &[100; 4]);
    r.timed(exit_vmm(pid, v1, 1, NPF), 15_000, &[50; 4]);
    r.timed(round_trip(pid, v1, KVM_EXIT_MMIO), 15_000, &[50; 4]);
    r.detail(pid, v1, uexit(KVM_EXIT_MMIO), &[50; 4]);
    r.detail(pid, v1, mmio(0xfebf_1000, MmioAccess::Write, 4), &[30; 4]);
    r.detail(pid, v1, mmio(0xfebf_1004, MmioAccess::Read, 4), &[20; 4]);
    let unsatisfied = mmio(0xfebf_1004, MmioAccess::UnsatisfiedRead, 4);
    r.detail(pid, v1, unsatisfied, &[20; 4]);
    for (p, dir, size, n) in SMALL_PORTS {
        r.detail(pid, v1, port(p, dir, size), &[n; 4]);
    }
    r.unkeyed(pid, v1, DetailKind::Pio, &[0, 0, 6, 0]);
    let io1 = [111, 111, 117, 111];
    r.timed(exit(pid, v1, 1, IO), 1500, &io1);
    r.timed(exit_vmm(pid, v1, 1, IO), 8000, &io1);
    r.timed(round_trip(pid, v1, KVM_EXIT_IO), 8000, &io1);
    r.detail(pid, v1, uexit(KVM_EXIT_IO), &io1);
    r.timed(exit(pid, v1, 1, MSR), 2000, &[19, 16, 16, 19]);
    r.detail(pid, v1, msr(0x1b, MsrDir::Read, false), &[15; 4]);
    r.detail(pid, v1, msr(0x3a, MsrDir::Read, true), &[1; 4]);
    r.unkeyed(pid, v1, DetailKind::Msr, &[3, 0, 0, 3]);
    let mut agg = r.aggregate(
        &[
            (Counter::ExitsSeen, 51_127),
            (Counter::EntriesSeen, 51_125),
            (Counter::DetailsSeen, 96_654),
            (Counter::UnpairedExits, 3),
            (Counter::FirstEntries, 2),
            (Counter::LatencyMapFull, 2),
            (Counter::UnpairedUserspaceExits, 1),
        ],
        &[
            // 4 s tracked: 3.6 s in KVM_RUN (0.4 s blocked, 0.2 s runnable there), 0.4 s out
            // (0.2 s blocked, 0.1 s runnable); procfs says 3 s of CPU.
            cpu(pid, v0, [4000, 3600, 400, 200, 200, 100], Some(3000)),
            // 3.8 s in KVM_RUN, 2.8 s of it halted; procfs unreadable.
            cpu(pid, v1, [4000, 3800, 2800, 100, 40, 60], None),
        ],
    );
    agg.stacks.apply(&host_stacks(pid, v1));
    agg.slow.threshold_ns = Some(500_000);
    agg.slow.apply(&slow_exits(pid, v1));
    agg.rips.enabled = true;
    agg.rips.apply(&guest_rips(pid, v0, v1));
    let mut report = Setup {
        agg,
        vms: [vm(pid, "web01", "qemu-system-x86")].into(),
        per_vcpu,
        kvm_module: "kvm_amd",
        missing: &[],
        in_flight: InFlight {
            exits: [(exit(pid, v1, 1, HLT), 1)].into(),
            round_trips: 1,
            ended_with_thread: BTreeMap::new(),
            map_entries: Some(MapEntries {
                threads: 2,
                latency: 0,
                details: 0,
                stacks: 0,
            }),
        },
        max_rows: Some(11),
    }
    .build();
    // As `record` sets it: 100 000 BPF program runs, 8 ms of BPF and 20 ms of collector
    // CPU over 4 s.
    // As `record` measures it: a host that is itself a VM lost 2.5 % of its CPU time.
    report.host_steal_pct = Some(2.5);
    // As `--guest-symbols web01=System.map` names it.
    if let Some(gc) = &mut report.guest_code {
        let rows = gc
            .groups
            .iter_mut()
            .flat_map(|g| &mut g.top)
            .chain(gc.by_vcpu.iter_mut().flat_map(|g| &mut g.top));
        for row in rows.filter(|r| r.address == 0xffff_ffff_8103_3f1d) {
            row.symbol = Some("rtc_cmos_read+0x1d".into());
        }
    }
    report.tracer_cost = Some(TracerCost {
        secs: 4.0,
        programs: vec![
            ProgramCost {
                program: "kvmtrace_exit".into(),
                runs: 60_000,
                run_ns: 6_000_000,
            },
            ProgramCost {
                program: "kvmtrace_pio".into(),
                runs: 40_000,
                run_ns: 2_000_000,
            },
        ],
        collector_cpu_ns: 20_000_000,
        unavailable: None,
        skipped: Vec::new(),
        stats_secs: None,
    });
    report
}

/// `record --guest-rips`: vCPU 0's port-0x70 writes from two places (the RTC driver, mostly),
/// its port-0x71 reads from a third; vCPU 1's 80 reads of port 0xcfc from the first place, its
/// halts from the idle loop; 4 exits without their RIP.
fn guest_rips(pid: u32, v0: u32, v1: u32) -> crate::model::rips::RipBatch {
    use crate::model::rips::{RipBatch, RipCount};
    let c = |tid, reason, detail: Option<Detail>, rip, exits| RipCount {
        tgid: pid,
        tid,
        isa: 2,
        reason,
        rip,
        exits,
        detail: detail.map(|d| {
            let k = DetailKey::encode(pid, tid, &d);
            (k.kind, k.a, k.b)
        }),
    };
    let out70 = Some(port(0x70, PortDir::Out, 1));
    RipBatch {
        counts: vec![
            c(v0, IO, out70, 0xffff_ffff_8103_3f1d, 41_000),
            c(v0, IO, out70, 0xffff_ffff_8103_3f40, 1_000),
            c(
                v0,
                IO,
                Some(port(0x71, PortDir::In, 1)),
                0xffff_ffff_8103_3f2a,
                4_000,
            ),
            c(
                v1,
                IO,
                Some(port(0xcfc, PortDir::In, 4)),
                0xffff_ffff_8103_3f1d,
                80,
            ),
            c(v1, HLT, None, 0xffff_ffff_81a0_11c2, 1_002),
        ],
        lost: 4,
    }
}

/// `record --than 500us` on one vCPU thread (SVM): an io exit to port 0x70 whose VMM part took
/// 900 us, the VMM round trip inside it, a halt of 25 ms, 2 not captured.
fn slow_exits(pid: u32, tid: u32) -> crate::model::slow::SlowBatch {
    use crate::model::slow::{FlightExit, SlowBatch, SlowExit, SlowKind, StormStart};
    use std::time::Duration;
    let base = SlowExit {
        at: Duration::from_millis(1500),
        tgid: pid,
        tid,
        vcpu_id: 1,
        kind: SlowKind::Exit,
        isa: 2,
        reason: IO,
        detail: Some((1, 0x70, 1 | 1 << 8)),
        total_ns: 1_000_000,
        vmm_ns: 900_000,
        off_cpu_ns: 0,
        guest_rip: 0xffff_ffff_8103_3f1d,
        info1: 0x0070_0010,
        info2: 0xffff_ffff_8103_3f1f,
        history: Vec::new(),
    };
    SlowBatch {
        exits: vec![
            base.clone(),
            SlowExit {
                kind: SlowKind::VmmRoundTrip,
                isa: 0,
                reason: 2,
                total_ns: 900_000,
                vmm_ns: 900_000,
                off_cpu_ns: 100_000,
                guest_rip: 0,
                info1: 0,
                info2: 0,
                ..base.clone()
            },
            SlowExit {
                at: Duration::from_millis(2750),
                reason: HLT,
                // `--flight 3`: an MSR write and an io exit, then the halt itself.
                history: vec![
                    FlightExit {
                        at: Duration::from_micros(2_749_950),
                        kind: SlowKind::Exit,
                        isa: 2,
                        reason: MSR,
                        detail: Some((3, 0x6e0, 1)),
                        total_ns: 2_000,
                    },
                    FlightExit {
                        at: Duration::from_micros(2_749_990),
                        kind: SlowKind::Exit,
                        isa: 2,
                        reason: IO,
                        detail: Some((1, 0x70, 1 | 1 << 8)),
                        total_ns: 1_500,
                    },
                    FlightExit {
                        at: Duration::from_millis(2750),
                        kind: SlowKind::Exit,
                        isa: 2,
                        reason: HLT,
                        detail: None,
                        total_ns: 25_000_000,
                    },
                ],
                detail: None,
                total_ns: 25_000_000,
                vmm_ns: 0,
                off_cpu_ns: 24_990_000,
                guest_rip: 0xffff_ffff_81a0_11c2,
                info1: 0,
                info2: 0,
                ..base
            },
        ],
        lost: 2,
        // `--flight`: vCPU 1's port-0x70 writes turning into a storm after two quiet exits.
        storm_starts: vec![StormStart {
            at: Duration::from_millis(1000),
            tgid: pid,
            tid,
            history: [(-3000i64, MSR, Some((3, 0x6e0, 1))), (-1000, HLT, None)]
                .into_iter()
                .chain((0..3).map(|i| (i * 10, IO, Some((1, 0x70, 1 | 1 << 8)))))
                .map(|(offset_us, reason, detail)| FlightExit {
                    at: Duration::from_micros((1_000_000 + offset_us) as u64),
                    kind: SlowKind::Exit,
                    isa: 2,
                    reason,
                    detail,
                    total_ns: 1_500,
                })
                .collect(),
        }],
    }
}

/// `record --stacks` samples of one vCPU thread (SVM, isa 2): its io exits in the kernel on two
/// paths, one sample without frames (the kernel's stack map was full), its halts polling, its
/// VMM handling KVM_EXIT_IO, the guest itself (no host frame), 3 samples not counted.
fn host_stacks(pid: u32, tid: u32) -> crate::model::stacks::StackBatch {
    use crate::model::stacks::{HostStack, LOST_FRAME, SampleKey, StackBatch};
    use kvmtrace_common::stacks::{NO_REASON, SampleState};
    let names = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let run = [
        "entry_SYSCALL_64",
        "kvm_vcpu_ioctl",
        "kvm_arch_vcpu_ioctl_run",
    ];
    let kernel = |leaf: &[&str]| HostStack {
        kernel: names(&[&run[..], leaf].concat()),
        user: names(&["main", "vcpu_thread", "ioctl"]),
    };
    let key = |state: SampleState, reason: u32, uexit: u32, stack: u32| SampleKey {
        tgid: pid,
        tid,
        vcpu_id: 1,
        state: state as u32,
        isa: if reason == NO_REASON { NO_REASON } else { 2 },
        reason,
        uexit_reason: uexit,
        stack,
    };
    StackBatch {
        new_stacks: vec![
            kernel(&["kvm_fast_pio", "emulator_pio_in_out"]),
            kernel(&["svm_handle_exit"]),
            HostStack {
                kernel: names(&[LOST_FRAME]),
                user: names(&[LOST_FRAME]),
            },
            kernel(&["kvm_vcpu_halt", "kvm_vcpu_check_block"]),
            HostStack {
                kernel: vec![],
                user: names(&["main", "vcpu_thread", "handle_io", "serial_write"]),
            },
            HostStack::default(),
        ],
        samples: vec![
            (key(SampleState::Exit, IO, NO_REASON, 0), 60),
            (key(SampleState::Exit, IO, NO_REASON, 1), 15),
            (key(SampleState::Exit, IO, NO_REASON, 2), 5),
            (key(SampleState::Exit, HLT, NO_REASON, 3), 40),
            (key(SampleState::Vmm, IO, KVM_EXIT_IO, 4), 120),
            (key(SampleState::Guest, NO_REASON, NO_REASON, 5), 760),
        ],
        lost: 3,
    }
}

const GUEST7: u32 = 200;

/// guest7 on kvm_pvm (3 intervals of 1 s): kvm_exit is attached but never fires, kvm_fpu is
/// missing, and only the detail tracepoints report. vCPU 0: 500 port 0x3f8 writes a second, each
/// a userspace IO exit of 12 us; vCPU 1: 30 MMIO writes a second to 0xfe000000 (userspace MMIO,
/// 20 us), 20 CPUID 0x1 a second. Both read MSR 0x10 6 000 times a second in the last two
/// seconds: below the storm rate on each vCPU, a storm of the VM (12 000/s).
pub fn guest7_pvm(per_vcpu: bool) -> Report {
    let (pid, v0, v1) = (GUEST7, 201, 202);
    let mut r = Recording::new(3);
    r.timed(round_trip(pid, v0, KVM_EXIT_IO), 12_000, &[500; 3]);
    r.detail(pid, v0, uexit(KVM_EXIT_IO), &[500; 3]);
    r.detail(pid, v0, port(0x3f8, PortDir::Out, 1), &[500; 3]);
    r.timed(round_trip(pid, v1, KVM_EXIT_MMIO), 20_000, &[30; 3]);
    r.detail(pid, v1, uexit(KVM_EXIT_MMIO), &[30; 3]);
    r.detail(pid, v1, mmio(0xfe00_0000, MmioAccess::Write, 4), &[30; 3]);
    r.detail(pid, v1, Detail::Cpuid { function: 0x1 }, &[20; 3]);
    for tid in [v0, v1] {
        r.detail(pid, tid, msr(0x10, MsrDir::Read, false), &[0, 6000, 6000]);
    }
    let mut agg = r.aggregate(&[(Counter::DetailsSeen, 27_240)], &[]);
    // `--guest-rips` where kvm_exit never fires.
    agg.rips.enabled = true;
    Setup {
        agg,
        vms: [vm(pid, "guest7", "qemu-system-x86")].into(),
        per_vcpu,
        kvm_module: "kvm_pvm",
        missing: &["kvm_fpu"],
        in_flight: InFlight::default(),
        max_rows: None,
    }
    .build()
}

/// `diff`'s two sides: web01 before a fix (2 s, pid 100) and after it, restarted (4 s, pid 300).
/// Before: 20 000 port 0x70 writes a second (io exits of 1 us, 10 us in the VMM), hlt 100/s at
/// 1 ms, msr 500/s at 2 us (MSR 0x6e0 writes). After: port 0x70 1 000/s (io 1.2 us, VMM 9 us),
/// hlt 300/s, the same msr rate, and a new cpuid 50/s at 800 ns (function 0x1).
pub fn before(per_vcpu: bool) -> Report {
    let (pid, v0) = (WEB01, 101);
    let mut r = Recording::new(2);
    r.timed(exit(pid, v0, 0, IO), 1000, &[20_000; 2]);
    r.timed(round_trip(pid, v0, KVM_EXIT_IO), 10_000, &[20_000; 2]);
    r.detail(pid, v0, uexit(KVM_EXIT_IO), &[20_000; 2]);
    r.detail(pid, v0, port(0x70, PortDir::Out, 1), &[20_000; 2]);
    r.timed(exit(pid, v0, 0, HLT), 1_000_000, &[100; 2]);
    r.timed(exit(pid, v0, 0, MSR), 2000, &[500; 2]);
    r.detail(pid, v0, msr(0x6e0, MsrDir::Write, false), &[500; 2]);
    // 40 000 + 200 + 1 000 exits, each with its entry, plus the first entry; 81 000 details.
    side(r, pid, per_vcpu, [41_200, 41_201, 81_000])
}

pub fn after(per_vcpu: bool) -> Report {
    let (pid, v0) = (300, 301);
    let mut r = Recording::new(4);
    r.timed(exit(pid, v0, 0, IO), 1200, &[1000; 4]);
    r.timed(round_trip(pid, v0, KVM_EXIT_IO), 9000, &[1000; 4]);
    r.detail(pid, v0, uexit(KVM_EXIT_IO), &[1000; 4]);
    r.detail(pid, v0, port(0x70, PortDir::Out, 1), &[1000; 4]);
    r.timed(exit(pid, v0, 0, HLT), 1_000_000, &[300; 4]);
    r.timed(exit(pid, v0, 0, MSR), 2000, &[500; 4]);
    r.detail(pid, v0, msr(0x6e0, MsrDir::Write, false), &[500; 4]);
    r.timed(exit(pid, v0, 0, CPUID), 800, &[50; 4]);
    r.detail(pid, v0, Detail::Cpuid { function: 0x1 }, &[50; 4]);
    // 4 000 + 1 200 + 2 000 + 200 exits, plus the first entry; 10 200 details.
    side(r, pid, per_vcpu, [7400, 7401, 10_200])
}

/// A side of the diff: `seen` = events (kvm_exit, kvm_entry, detail) seen.
fn side(r: Recording, pid: u32, per_vcpu: bool, seen: [u64; 3]) -> Report {
    let counters = [
        (Counter::ExitsSeen, seen[0]),
        (Counter::EntriesSeen, seen[1]),
        (Counter::DetailsSeen, seen[2]),
        (Counter::FirstEntries, 1),
    ];
    Setup {
        agg: r.aggregate(&counters, &[]),
        vms: [vm(pid, "web01", "qemu-system-x86")].into(),
        per_vcpu,
        kvm_module: "kvm_amd",
        missing: &[],
        in_flight: InFlight::default(),
        max_rows: None,
    }
    .build()
}
