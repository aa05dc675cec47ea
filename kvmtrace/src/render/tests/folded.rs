//! Folded stacks, whole: web01 by time and by count, per vCPU and VM-wide, and kvm_pvm (no
//! kvm_exit: userspace exits by VMM time, MSR and CPUID events by count only).
//!
//! web01's npf exits are 400, of which kvm_mmio explains 200 (the rest are plain nested page
//! faults): their lines are checked by [`npf_frames_weigh_only_what_mmio_explains`] and left out
//! of the other tests. The detail tests read web01 as recorded without `--guest-rips`; the
//! guest code frames below the details have tests of their own.

use super::fixture;
use crate::render::{Weight, folded};

fn folded(report: &crate::report::Report, weight: Weight) -> String {
    folded::lines(report, weight)
        .iter()
        .filter(|l| !l.contains(";npf"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// web01 as recorded without `--guest-rips`.
fn web01_no_rips(per_vcpu: bool) -> crate::report::Report {
    let mut r = fixture::web01(per_vcpu);
    r.guest_code = None;
    r
}

/// The lines of the frames with guest RIPs, and of their parents.
fn with_guest_code(report: &crate::report::Report, weight: Weight) -> String {
    let lines = folded::lines(report, weight);
    let parents: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_once(";guest ").map(|(p, _)| p))
        .collect();
    lines
        .iter()
        .filter(|l| {
            let stack = l.rsplit_once(' ').map_or(l.as_str(), |(s, _)| s);
            l.contains(";guest ") || parents.contains(&stack)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `--guest-rips`: below each (vCPU, reason, port) the guest code its exits came from, split
/// by those exits. By count, exactly the RIP counts: port 0x70's 42 000 writes came 41 000 from
/// rtc_cmos_read+0x1d (named by `--guest-symbols`) and 1 000 from an unnamed RIP, none left on
/// the port itself; hlt's 1 002 from the idle loop.
#[test]
fn guest_code_below_the_details_by_count() {
    let expected = "\
web01;vCPU 0;io;port 0x0070 RTC index out;guest 0xffffffff81033f40 1000
web01;vCPU 0;io;port 0x0070 RTC index out;guest rtc_cmos_read+0x1d 41000
web01;vCPU 0;io;port 0x0071 RTC data in;guest 0xffffffff81033f2a 4000
web01;vCPU 1;hlt;guest 0xffffffff81a011c2 1002
web01;vCPU 1;io;port 0x0cfc PCI config data in;guest rtc_cmos_read+0x1d 80
";
    assert_eq!(
        with_guest_code(&fixture::web01(true), Weight::Count),
        expected
    );
}

/// By time, each port's time is split by its exits' RIPs: 46 565 217 ns x 41 000 / 42 000 =
/// 45 456 521.4 and x 1 000 / 42 000 = 1 108 695.6; the 1 ns the floors leave stays on the port.
/// VM-wide the same split of the VM's port time (46 724 434 ns: 45 611 947.5 and 1 112 486.5).
#[test]
fn guest_code_below_the_details_by_time() {
    let expected = "\
web01;vCPU 0;io;port 0x0070 RTC index out 1
web01;vCPU 0;io;port 0x0070 RTC index out;guest 0xffffffff81033f40 1108695
web01;vCPU 0;io;port 0x0070 RTC index out;guest rtc_cmos_read+0x1d 45456521
web01;vCPU 0;io;port 0x0071 RTC data in;guest 0xffffffff81033f2a 4434782
web01;vCPU 1;hlt;guest 0xffffffff81a011c2 1001000000
web01;vCPU 1;io;port 0x0cfc PCI config data in;guest rtc_cmos_read+0x1d 120000
";
    assert_eq!(
        with_guest_code(&fixture::web01(true), Weight::Time),
        expected
    );
    let vm_wide = with_guest_code(&fixture::web01(false), Weight::Time);
    assert!(
        vm_wide.contains(
            "web01;all vCPUs;io;port 0x0070 RTC index out 1\n\
             web01;all vCPUs;io;port 0x0070 RTC index out;guest 0xffffffff81033f40 1112486\n\
             web01;all vCPUs;io;port 0x0070 RTC index out;guest rtc_cmos_read+0x1d 45611947\n"
        ),
        "{vm_wide}"
    );
}

/// Each exit reason weighs its paired exits' time, split over its keys by their counts, the
/// rounding remainder on the reason itself. vCPU 0's io: 51 ms over 42 000 + 4 000 port events:
/// 51e6 x 42 000 / 46 000 = 46 565 217.4 and 4 434 782.6, floored, leave 1 ns on io. vCPU 1's
/// io: 675 000 ns over 450 events, 1 500 ns each (0x0cfc: 80 x 1 500 = 120 000), "other ports"
/// 18 of them. msr on vCPU 1: 140 000 ns over 60 + 4 + 6 events. hlt has no keys: 1 001 ms.
#[test]
fn web01_per_vcpu_by_time() {
    let expected = "\
web01;vCPU 0;io 1
web01;vCPU 0;io;port 0x0070 RTC index out 46565217
web01;vCPU 0;io;port 0x0071 RTC data in 4434782
web01;vCPU 0;msr;msr 0x6e0 IA32_TSC_DEADLINE write 4000000
web01;vCPU 1;cpuid;cpuid 0x1 300000
web01;vCPU 1;cpuid;cpuid 0x40000000 200000
web01;vCPU 1;cpuid;cpuid 0xd 100000
web01;vCPU 1;hlt 1001000000
web01;vCPU 1;io;port 0x0cfc PCI config data in 120000
web01;vCPU 1;io;port 0x0cf8 PCI config address out 108000
web01;vCPU 1;io;port 0x0608 ACPI PM timer in 96000
web01;vCPU 1;io;port 0x03f8 COM1 serial out 84000
web01;vCPU 1;io;port 0x03fd COM1 serial in 72000
web01;vCPU 1;io;port 0x0510 QEMU fw_cfg out 60000
web01;vCPU 1;io;port 0x0511 QEMU fw_cfg in 48000
web01;vCPU 1;io;port 0x0040 PIT (i8254) in 36000
web01;vCPU 1;io;port 0x0061 PC speaker / NMI status in 24000
web01;vCPU 1;io;other ports 27000
web01;vCPU 1;msr;msr 0x1b IA32_APIC_BASE read 120000
web01;vCPU 1;msr;msr 0x3a IA32_FEATURE_CONTROL read 8000
web01;vCPU 1;msr;other MSRs 12000
";
    assert_eq!(folded(&web01_no_rips(true), Weight::Time), expected);
}

/// By count, each key weighs its events and hlt its 1 002 exits (the one open at stop included).
#[test]
fn web01_per_vcpu_by_count() {
    let expected = "\
web01;vCPU 0;io;port 0x0070 RTC index out 42000
web01;vCPU 0;io;port 0x0071 RTC data in 4000
web01;vCPU 0;msr;msr 0x6e0 IA32_TSC_DEADLINE write 2000
web01;vCPU 1;cpuid;cpuid 0x1 600
web01;vCPU 1;cpuid;cpuid 0x40000000 400
web01;vCPU 1;cpuid;cpuid 0xd 200
web01;vCPU 1;hlt 1002
web01;vCPU 1;io;port 0x0cfc PCI config data in 80
web01;vCPU 1;io;port 0x0cf8 PCI config address out 72
web01;vCPU 1;io;port 0x0608 ACPI PM timer in 64
web01;vCPU 1;io;port 0x03f8 COM1 serial out 56
web01;vCPU 1;io;port 0x03fd COM1 serial in 48
web01;vCPU 1;io;port 0x0510 QEMU fw_cfg out 40
web01;vCPU 1;io;port 0x0511 QEMU fw_cfg in 32
web01;vCPU 1;io;port 0x0040 PIT (i8254) in 24
web01;vCPU 1;io;port 0x0061 PC speaker / NMI status in 16
web01;vCPU 1;io;other ports 18
web01;vCPU 1;msr;msr 0x1b IA32_APIC_BASE read 60
web01;vCPU 1;msr;msr 0x3a IA32_FEATURE_CONTROL read 4
web01;vCPU 1;msr;other MSRs 6
";
    assert_eq!(folded(&web01_no_rips(true), Weight::Count), expected);
}

/// VM-wide, io's 51.675 ms is split over all 46 450 port events: 51 675 000 x 42 000 / 46 450 =
/// 46 724 434.9; the 12 floors leave 6 ns on io. msr: 4.14 ms over 2 000 + 60 + 4 + 6 events,
/// 2 000 ns each.
#[test]
fn web01_vm_wide_by_time() {
    let expected = "\
web01;all vCPUs;io 6
web01;all vCPUs;io;port 0x0070 RTC index out 46724434
web01;all vCPUs;io;port 0x0071 RTC data in 4449946
web01;all vCPUs;io;port 0x0cfc PCI config data in 88998
web01;all vCPUs;io;port 0x0cf8 PCI config address out 80099
web01;all vCPUs;io;port 0x0608 ACPI PM timer in 71199
web01;all vCPUs;io;port 0x03f8 COM1 serial out 62299
web01;all vCPUs;io;port 0x03fd COM1 serial in 53399
web01;all vCPUs;io;port 0x0510 QEMU fw_cfg out 44499
web01;all vCPUs;io;port 0x0511 QEMU fw_cfg in 35599
web01;all vCPUs;io;port 0x0040 PIT (i8254) in 26699
web01;all vCPUs;io;port 0x0061 PC speaker / NMI status in 17799
web01;all vCPUs;io;other ports 20024
web01;all vCPUs;msr;msr 0x6e0 IA32_TSC_DEADLINE write 4000000
web01;all vCPUs;msr;msr 0x1b IA32_APIC_BASE read 120000
web01;all vCPUs;msr;msr 0x3a IA32_FEATURE_CONTROL read 8000
web01;all vCPUs;msr;other MSRs 12000
web01;all vCPUs;cpuid;cpuid 0x1 300000
web01;all vCPUs;cpuid;cpuid 0x40000000 200000
web01;all vCPUs;cpuid;cpuid 0xd 100000
web01;all vCPUs;hlt 1001000000
";
    assert_eq!(folded(&web01_no_rips(false), Weight::Time), expected);
}

#[test]
fn web01_vm_wide_by_count() {
    let expected = "\
web01;all vCPUs;io;port 0x0070 RTC index out 42000
web01;all vCPUs;io;port 0x0071 RTC data in 4000
web01;all vCPUs;io;port 0x0cfc PCI config data in 80
web01;all vCPUs;io;port 0x0cf8 PCI config address out 72
web01;all vCPUs;io;port 0x0608 ACPI PM timer in 64
web01;all vCPUs;io;port 0x03f8 COM1 serial out 56
web01;all vCPUs;io;port 0x03fd COM1 serial in 48
web01;all vCPUs;io;port 0x0510 QEMU fw_cfg out 40
web01;all vCPUs;io;port 0x0511 QEMU fw_cfg in 32
web01;all vCPUs;io;port 0x0040 PIT (i8254) in 24
web01;all vCPUs;io;port 0x0061 PC speaker / NMI status in 16
web01;all vCPUs;io;other ports 18
web01;all vCPUs;msr;msr 0x6e0 IA32_TSC_DEADLINE write 2000
web01;all vCPUs;msr;msr 0x1b IA32_APIC_BASE read 60
web01;all vCPUs;msr;msr 0x3a IA32_FEATURE_CONTROL read 4
web01;all vCPUs;msr;other MSRs 6
web01;all vCPUs;cpuid;cpuid 0x1 600
web01;all vCPUs;cpuid;cpuid 0x40000000 400
web01;all vCPUs;cpuid;cpuid 0xd 200
web01;all vCPUs;hlt 1002
";
    assert_eq!(folded(&web01_no_rips(false), Weight::Count), expected);
}

/// Without kvm_exit, userspace exits weigh their VMM round trips (IO: 1 500 x 12 us = 18 ms,
/// MMIO: 90 x 20 us = 1.8 ms) split over their keys; MSR and CPUID events have no measured time
/// and are left out by time, shown by count.
#[test]
fn kvm_pvm_by_time_and_by_count() {
    let by_time = "\
guest7;vCPU 0;VMM IO;port 0x03f8 COM1 serial out 18000000
guest7;vCPU 1;VMM MMIO;gpa 0xfe000000 write 1800000
";
    let by_count = "\
guest7;vCPU 0;VMM IO;port 0x03f8 COM1 serial out 1500
guest7;vCPU 1;VMM MMIO;gpa 0xfe000000 write 90
guest7;vCPU 0;msr;msr 0x10 IA32_TIME_STAMP_COUNTER read 12000
guest7;vCPU 1;msr;msr 0x10 IA32_TIME_STAMP_COUNTER read 12000
guest7;vCPU 1;cpuid;cpuid 0x1 60
";
    let vm_wide_by_count = "\
guest7;all vCPUs;VMM IO;port 0x03f8 COM1 serial out 1500
guest7;all vCPUs;VMM MMIO;gpa 0xfe000000 write 90
guest7;all vCPUs;msr;msr 0x10 IA32_TIME_STAMP_COUNTER read 24000
guest7;all vCPUs;cpuid;cpuid 0x1 60
";
    let (per_vcpu, vm_wide) = (fixture::guest7_pvm(true), fixture::guest7_pvm(false));
    assert_eq!(folded(&per_vcpu, Weight::Time), by_time);
    assert_eq!(folded(&per_vcpu, Weight::Count), by_count);
    assert_eq!(folded(&vm_wide, Weight::Count), vm_wide_by_count);
}

/// What the module promises: "the part of [a reason's weight] that detail tracepoints explain is
/// split over its keys". vCPU 1 has 400 npf exits (1.2 ms) and 120 + 80 MMIO accesses (the
/// unsatisfied reads are the same accesses, counted once): half of npf is explained, so by
/// count "gpa 0xfebf1000 write" weighs its 120 events (it weighed 240 before the fix).
#[test]
fn npf_frames_weigh_only_what_mmio_explains() {
    let npf = |weight| -> Vec<String> {
        folded::lines(&fixture::web01(true), weight)
            .into_iter()
            .filter(|l| l.starts_with("web01;vCPU 1;npf"))
            .collect()
    };
    assert_eq!(
        npf(Weight::Count),
        [
            "web01;vCPU 1;npf 200",
            "web01;vCPU 1;npf;gpa 0xfebf1000 write 120",
            "web01;vCPU 1;npf;gpa 0xfebf1004 read 80",
        ]
    );
    assert_eq!(
        npf(Weight::Time),
        [
            "web01;vCPU 1;npf 600000",
            "web01;vCPU 1;npf;gpa 0xfebf1000 write 360000",
            "web01;vCPU 1;npf;gpa 0xfebf1004 read 240000",
        ]
    );
}
