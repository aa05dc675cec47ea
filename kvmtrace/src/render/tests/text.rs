//! The text report, whole: every section of web01 per vCPU and VM-wide, kvm_pvm's notes, and a
//! quiet recording. The numbers are worked out from the fixture's inputs in the comments.

use super::{fixture, output};
use crate::{analyze::diagnose::rules, render::text};

fn text(report: &crate::report::Report) -> String {
    output(|out| text::render(report, out))
}

/// The knowledge base's "rtc" rule in place of RTC_TITLE, RTC_CAUSE, RTC_FIX and RTC_REFERENCE:
/// these tests check where the renderer puts a diagnosis, analyze/diagnose.rs checks its words.
fn with_rtc_rule(expected: &str) -> String {
    let rtc = rules().iter().find(|r| r.id == "rtc").unwrap();
    expected
        .replace("RTC_TITLE", &rtc.title)
        .replace("RTC_CAUSE", &rtc.cause)
        .replace("RTC_FIX", &rtc.fix)
        .replace("RTC_REFERENCE", &rtc.reference)
}

// What the sections share, per vCPU or not:
// - Storm: port 0x70 on vCPU 0 at 20 000/s in seconds 1-3 (>= 10 000/s for 2 intervals), 40 000
//   writes; io and KVM_EXIT_IO stormed with it. Its cost is the biggest handling time of the
//   storm's keys: the IO round trips, 2 x 21 000 x 10 us = 420 ms in 2 s = 21.0 %.
// - 51 122 exits: 46 000 + 2 000 (vCPU 0) + 1 200 + 1 002 (one hlt open at stop) + 450 + 400 + 70
//   (vCPU 1), 12 780.5/s; 46 654 userspace exits (46 000 + 450 IO, 200 MMIO, 4 restarts).
// - CPU: vCPU 0 on-CPU 3.0 s in KVM_RUN (3.6 - 0.4 - 0.2) + 0.1 s VMM (0.4 - 0.3) = 77.5 % of 4 s;
//   its exits take 51 + 4 ms = 1.4 %, so guest = 3.0 s - 55 ms = 73.6 %. vCPU 1: 0.9 s in
//   KVM_RUN (3.8 - 2.9) + 0.1 s VMM = 25.0 %, blocked 2.84 s = 71.0 %; exits (halts aside)
//   2.615 ms = 0.1 %. The VM: 4.1 s on-CPU = 102.5 % of one CPU; the VMM's 0.2 s split by round
//   trip time, IO 463.6 of 466.6 ms: 198.7 ms = 4.8 % of 4.1 s; io handling 51.675 ms = 1.3 %,
//   msr 4.14 ms = 0.1 %.
// - Time%: of all paired exit time, 1 058.615 ms (hlt 1 001 ms of it): io on vCPU 0 51 ms = 4.82 %.
// - Percentiles: vCPU 0's io has 45 000 samples at 1 us and 1 000 at 6 us: p50 is the 1 us
//   bucket's midpoint, 1 008 ns; p99 (rank 45 540) falls in the 6 us bucket, clamped to the max.
// - Ports: 13 keys, 11 rows kept (0x80 and 0x1234, 8 + 4 events, fold into "other ports" with
//   6 unkeyed), 10 shown.

const WEB01_HEAD: &str = "\
kvmtrace: 4.00 s on kvm_amd, 1 VM

Storms (1):
  1. web01 vCPU 0: port 0x0070 (RTC index) out from 1.0 s to 3.0 s (2.0 s), mean 20000/s, peak 20000/s, 40000 exits, handling time 21.0% of the storm's wall time
     with: KVM_EXIT_IO, io
     diagnosis: RTC_TITLE. RTC_CAUSE
     fix: RTC_FIX
     see: RTC_REFERENCE

VM web01 (pid 100): 51122 exits (12780.5/s), 46654 to the VMM (11663.5/s), 96654 detail events; vCPUs: 0, 1

  Of this VM's 102.5% CPU (vCPU threads, % of one CPU), 4.8% is VMM handling of KVM_EXIT_IO (top port 0x0070 RTC index), 1.3% is exit handling of io, 0.1% is exit handling of msr.

  CPU of the vCPU threads, % of wall time (KVM_RUN = on-CPU inside KVM_RUN: guest + exit handling; VMM = on-CPU in user space; waiting = runnable, no CPU)
  vCPU  CPU%  procfs%  KVM_RUN%  guest%  exits%  VMM%  blocked%  waiting%  wall
  0     77.5     75.0      75.0    73.6     1.4   2.5      15.0       7.5  4.0s
  1     25.0        -      22.5    22.4     0.1   2.5      71.0       4.0  4.0s
";

const WEB01_TAIL: &str = "
Hottest host paths per exit reason (1000 samples, 3 more not counted: the kernel's sample map was full, 5 without their frames: the kernel's stack map was full; all of them: report --format flamegraph --weight samples)
  web01 guest -: 760 samples, 76.0 %
    100.0 %  (no frames)
  web01 vmm IO: 120 samples, 12.0 %
    100.0 %  serial_write <- handle_io <- vcpu_thread <- main
  web01 in-kernel io: 80 samples, 8.0 %
     75.0 %  emulator_pio_in_out <- kvm_fast_pio <- kvm_arch_vcpu_ioctl_run <- kvm_vcpu_ioctl <- entry_SYSCALL_64 <- ioctl <- ...
     18.8 %  svm_handle_exit <- kvm_arch_vcpu_ioctl_run <- kvm_vcpu_ioctl <- entry_SYSCALL_64 <- ioctl <- vcpu_thread <- ...
      6.2 %  [stack lost] <- [stack lost]
  web01 halted hlt: 40 samples, 4.0 %
    100.0 %  kvm_vcpu_check_block <- kvm_vcpu_halt <- kvm_arch_vcpu_ioctl_run <- kvm_vcpu_ioctl <- entry_SYSCALL_64 <- ioctl <- ...

Guest code per exit reason (kvm_exit's guest RIP, 47082 exits, 4 more without their RIP: the kernel's RIP map was full; names: report --guest-symbols VM=System.map)
  web01 io, port 0x0070 (RTC index) out: 42000 exits
     97.6 %  0xffffffff81033f1d  rtc_cmos_read+0x1d
      2.4 %  0xffffffff81033f40
  web01 io, port 0x0071 (RTC data) in: 4000 exits
    100.0 %  0xffffffff81033f2a
  web01 hlt: 1002 exits
    100.0 %  0xffffffff81a011c2
  web01 io, port 0x0cfc (PCI config data) in: 80 exits
    100.0 %  0xffffffff81033f1d  rtc_cmos_read+0x1d

Slowest exits (at least 500.00us: 3 captured, 2 more not captured: the kernel's ring buffer was full)
  per VM and reason: web01 KVM_EXIT_IO 1, web01 hlt 1, web01 io 1
      at  VM     vCPU  exit            total  in kernel   off CPU       VMM  detail
  2.750s  web01  1     hlt           25.00ms    10.00us   24.99ms       0ns  rip 0xffffffff81a011c2
  1.500s  web01  1     io             1.00ms   100.00us       0ns  900.00us  port 0x0070 (RTC index) out, rip 0xffffffff81033f1d
  1.500s  web01  1     KVM_EXIT_IO  900.00us        0ns  100.00us  900.00us  port 0x0070 (RTC index) out

  What led to them (--flight: the vCPU's last exits, oldest first, start relative to the slow one's)
  2.750s web01 vCPU 1 hlt 25.00ms:
         -50.0us  msr     2.00us  MSR 0x6e0 (IA32_TSC_DEADLINE) write
         -10.0us  io      1.50us  port 0x0070 (RTC index) out
          +0.0us  hlt    25.00ms

Storm starts (--flight: 1 seen; the exits that led into each, oldest first, start relative to the storm's first exit)
  1.000s web01 vCPU 1:
       -3000.0us  msr     1.50us  MSR 0x6e0 (IA32_TSC_DEADLINE) write
       -1000.0us  hlt     1.50us
          +0.0us  io      1.50us  port 0x0070 (RTC index) out
         +10.0us  io      1.50us  port 0x0070 (RTC index) out
         +20.0us  io      1.50us  port 0x0070 (RTC index) out

Lost/unpaired: SOME DATA WAS LOST. unpaired exits 3, unpaired entries 0, VMM round trips without a re-entry marker 1, map full (latency/detail/thread) 2/0/0; in flight at stop: 1 exits, 1 VMM round trips; exits whose thread ended first 0; events: 51127 kvm_exit, 51125 kvm_entry, 96654 detail
Kernel maps after the last drain: 2 threads, 0 latency and 0 detail entries.
Tracer cost over 4.0 s: 100000 BPF program runs (25000/s), 80 ns each, 0.20 % of one CPU; collector 0.50 % of one CPU.
Host steal: this host lost 2.5 % of its CPUs' time to its own hypervisor while recording; the on-CPU times above include what was stolen from a running vCPU thread, procfs's do not.
";

#[test]
fn web01_per_vcpu_every_section() {
    let tables = "
  Exits (in kernel: kvm_exit -> kvm_entry minus VMM round trips; VMM: the round trips of the exits that went to user space)
  vCPU  Exit reason (SVM)  Count  Count%   Time%     Min     p50     p99     Max  Exits/s  VMM p50  VMM p99
  0     io                 46000  89.98%   4.82%  1.00us  1.01us  6.00us  6.00us  11500.0  10.00us  10.00us
  0     msr                 2000   3.91%   0.38%  2.00us  2.00us  2.00us  2.00us    500.0        -        -
  1     cpuid               1200   2.35%   0.06%   500ns   500ns   500ns   500ns    300.0        -        -
  1     hlt                 1002   1.96%  94.56%  1.00ms  1.00ms  1.00ms  1.00ms    250.5        -        -
  1     io                   450   0.88%   0.06%  1.50us  1.50us  1.50us  1.50us    112.5   8.00us   8.00us
  1     npf                  400   0.78%   0.11%  3.00us  3.00us  3.00us  3.00us    100.0  15.00us  15.00us
  1     msr                   70   0.14%   0.01%  2.00us  2.00us  2.00us  2.00us     17.5        -        -

  Userspace exits (KVM_RUN returned to the VMM; VMM = time until the vCPU re-entered KVM_RUN)
  vCPU  Reason   Count  Count%  Exits/s  VMM p50  VMM p99  VMM max  VMM total
  0     IO       46000  98.60%  11500.0  10.00us  10.00us  10.00us   460.00ms
  1     IO         450   0.96%    112.5   8.00us   8.00us   8.00us     3.60ms
  1     MMIO       200   0.43%     50.0  15.00us  15.00us  15.00us     3.00ms
  0     restart      4   0.01%      1.0        -        -        -          -

  I/O ports (kvm_pio), top 10 of 11
  vCPU  Port    Name                Dir  Size  Count       /s
  0     0x0070  RTC index           out     1  42000  10500.0
  0     0x0071  RTC data            in      1   4000   1000.0
  1     0x0cfc  PCI config data     in      4     80     20.0
  1     0x0cf8  PCI config address  out     4     72     18.0
  1     0x0608  ACPI PM timer       in      4     64     16.0
  1     0x03f8  COM1 serial         out     1     56     14.0
  1     0x03fd  COM1 serial         in      1     48     12.0
  1     0x0510  QEMU fw_cfg         out     2     40     10.0
  1     0x0511  QEMU fw_cfg         in      1     32      8.0
  1     0x0040  PIT (i8254)         in      1     24      6.0

  MMIO (kvm_mmio)
  vCPU  GPA         Access            Len  Count    /s
  1     0xfebf1000  write               4    120  30.0
  1     0xfebf1004  unsatisfied-read    4     80  20.0
  1     0xfebf1004  read                4     80  20.0

  MSRs (kvm_msr)
  vCPU  MSR    Name                  Access      Count     /s
  0     0x6e0  IA32_TSC_DEADLINE     write        2000  500.0
  1     0x1b   IA32_APIC_BASE        read           60   15.0
  1     0x3a   IA32_FEATURE_CONTROL  read (#GP)      4    1.0

  CPUID (kvm_cpuid)
  vCPU  Function    Count     /s
  1     0x1           600  150.0
  1     0x40000000    400  100.0
  1     0xd           200   50.0

  Other keys (beyond the rows shown, --all-keys shows them; or beyond a vCPU's --max-keys-per-vcpu per interval / a full map: counted without their key)
  vCPU  Of     Count   /s  Rows not shown  Without a key
  1     ports     18  4.5   2 (12 events)              6
  1     MSRs       6  1.5    0 (0 events)              6
";
    assert_eq!(
        text(&fixture::web01(true)),
        with_rtc_rule(&[WEB01_HEAD, tables, WEB01_TAIL].concat())
    );
}

/// VM-wide, the vCPUs' rows of a key merge: io 46 450 (11 612.5/s), its VMM time 46 000 x 10 us
/// and 450 x 8 us, whose p50 is the 10 us bucket's midpoint, 9 984 ns; msr 2 000 + 70. The
/// storm, CPU table and detail rows (each key on one vCPU only) are the same.
#[test]
fn web01_vm_wide_every_section() {
    let tables = "
  Exits (in kernel: kvm_exit -> kvm_entry minus VMM round trips; VMM: the round trips of the exits that went to user space)
  Exit reason (SVM)  Count  Count%   Time%     Min     p50     p99     Max  Exits/s  VMM p50  VMM p99
  io                 46450  90.86%   4.88%  1.00us  1.01us  6.00us  6.00us  11612.5   9.98us   9.98us
  msr                 2070   4.05%   0.39%  2.00us  2.00us  2.00us  2.00us    517.5        -        -
  cpuid               1200   2.35%   0.06%   500ns   500ns   500ns   500ns    300.0        -        -
  hlt                 1002   1.96%  94.56%  1.00ms  1.00ms  1.00ms  1.00ms    250.5        -        -
  npf                  400   0.78%   0.11%  3.00us  3.00us  3.00us  3.00us    100.0  15.00us  15.00us

  Userspace exits (KVM_RUN returned to the VMM; VMM = time until the vCPU re-entered KVM_RUN)
  Reason   Count  Count%  Exits/s  VMM p50  VMM p99  VMM max  VMM total
  IO       46450  99.56%  11612.5   9.98us   9.98us  10.00us   463.60ms
  MMIO       200   0.43%     50.0  15.00us  15.00us  15.00us     3.00ms
  restart      4   0.01%      1.0        -        -        -          -

  I/O ports (kvm_pio), top 10 of 11
  Port    Name                Dir  Size  Count       /s
  0x0070  RTC index           out     1  42000  10500.0
  0x0071  RTC data            in      1   4000   1000.0
  0x0cfc  PCI config data     in      4     80     20.0
  0x0cf8  PCI config address  out     4     72     18.0
  0x0608  ACPI PM timer       in      4     64     16.0
  0x03f8  COM1 serial         out     1     56     14.0
  0x03fd  COM1 serial         in      1     48     12.0
  0x0510  QEMU fw_cfg         out     2     40     10.0
  0x0511  QEMU fw_cfg         in      1     32      8.0
  0x0040  PIT (i8254)         in      1     24      6.0

  MMIO (kvm_mmio)
  GPA         Access            Len  Count    /s
  0xfebf1000  write               4    120  30.0
  0xfebf1004  unsatisfied-read    4     80  20.0
  0xfebf1004  read                4     80  20.0

  MSRs (kvm_msr)
  MSR    Name                  Access      Count     /s
  0x6e0  IA32_TSC_DEADLINE     write        2000  500.0
  0x1b   IA32_APIC_BASE        read           60   15.0
  0x3a   IA32_FEATURE_CONTROL  read (#GP)      4    1.0

  CPUID (kvm_cpuid)
  Function    Count     /s
  0x1           600  150.0
  0x40000000    400  100.0
  0xd           200   50.0

  Other keys (beyond the rows shown, --all-keys shows them; or beyond a vCPU's --max-keys-per-vcpu per interval / a full map: counted without their key)
  Of     Count   /s  Rows not shown  Without a key
  ports     18  4.5   2 (12 events)              6
  MSRs       6  1.5    0 (0 events)              6
";
    assert_eq!(
        text(&fixture::web01(false)),
        with_rtc_rule(&[WEB01_HEAD, tables, WEB01_TAIL].concat())
    );
}

/// kvm_pvm: both notes, no exit table and no CPU table (no kvm_exit, no thread accounting), the
/// detail tables, and a storm of the VM that no vCPU has on its own: MSR 0x10 at 6 000/s on each
/// vCPU in seconds 1-3, 12 000/s together, still going at the end; no rule for it. 1 590
/// userspace exits in 3 s = 530.0/s; IO 1 500 of them = 94.34 %, 1 500 x 12 us = 18 ms.
#[test]
fn kvm_pvm_notes_storm_and_detail_tables() {
    let expected = "\
kvmtrace: 3.00 s on kvm_pvm, 1 VM
note: kvm_exit and kvm_entry are attached but fired 0 times while 27240 detail events arrived (this host's KVM, kvm_pvm, does not emit them), so there are no per-exit-reason latencies; the tables below come from the detail tracepoints.
note: this kernel has no kvm:kvm_fpu tracepoint(s); their data is absent.

Storms (1):
  1. guest7 vCPU all: MSR 0x10 (IA32_TIME_STAMP_COUNTER) read from 1.0 s to 3.0 s (still going) (2.0 s), mean 12000/s, peak 12000/s, 24000 exits
     diagnosis: no rule in the knowledge base matches this pattern.

VM guest7 (pid 200): 0 exits (0.0/s), 1590 to the VMM (530.0/s), 27240 detail events; vCPUs: 0, 1

  Userspace exits (KVM_RUN returned to the VMM; VMM = time until the vCPU re-entered KVM_RUN)
  Reason  Count  Count%  Exits/s  VMM p50  VMM p99  VMM max  VMM total
  IO       1500  94.34%    500.0  12.00us  12.00us  12.00us    18.00ms
  MMIO       90   5.66%     30.0  20.00us  20.00us  20.00us     1.80ms

  I/O ports (kvm_pio)
  Port    Name         Dir  Size  Count     /s
  0x03f8  COM1 serial  out     1   1500  500.0

  MMIO (kvm_mmio)
  GPA         Access  Len  Count    /s
  0xfe000000  write     4     90  30.0

  MSRs (kvm_msr)
  MSR   Name                     Access  Count      /s
  0x10  IA32_TIME_STAMP_COUNTER  read    24000  8000.0

  CPUID (kvm_cpuid)
  Function  Count    /s
  0x1          60  20.0

Guest code per exit reason (kvm_exit's guest RIP, 0 exits; names: report --guest-symbols VM=System.map)
  no kvm_exit event fired: this host's KVM does not emit it (kvm_pvm), so there are no guest RIPs to show

Lost/unpaired: none. unpaired exits 0, unpaired entries 0, VMM round trips without a re-entry marker 0, map full (latency/detail/thread) 0/0/0; in flight at stop: 0 exits, 0 VMM round trips; exits whose thread ended first 0; events: 0 kvm_exit, 0 kvm_entry, 27240 detail
";
    assert_eq!(text(&fixture::guest7_pvm(false)), expected);
}

/// After the fix: no storm, no losses (one first kvm_entry is expected), no CPU table; 4 000 +
/// 2 000 + 1 200 + 200 exits in 4 s. Time%: hlt 1.2 s of 1.20896 s = 99.26 %.
/// Its VM has a second vCPU thread (CPU 1/KVM) without events: it is listed all the same.
#[test]
fn a_quiet_recording_says_none() {
    let expected = "\
kvmtrace: 4.00 s on kvm_amd, 1 VM

Storms: none.

VM web01 (pid 300): 7400 exits (1850.0/s), 4000 to the VMM (1000.0/s), 10200 detail events; vCPUs: 0, 1

  Exits (in kernel: kvm_exit -> kvm_entry minus VMM round trips; VMM: the round trips of the exits that went to user space)
  Exit reason (SVM)  Count  Count%   Time%     Min     p50     p99     Max  Exits/s  VMM p50  VMM p99
  io                  4000  54.05%   0.40%  1.20us  1.20us  1.20us  1.20us   1000.0        -        -
  msr                 2000  27.03%   0.33%  2.00us  2.00us  2.00us  2.00us    500.0        -        -
  hlt                 1200  16.22%  99.26%  1.00ms  1.00ms  1.00ms  1.00ms    300.0        -        -
  cpuid                200   2.70%   0.01%   800ns   800ns   800ns   800ns     50.0        -        -

  Userspace exits (KVM_RUN returned to the VMM; VMM = time until the vCPU re-entered KVM_RUN)
  Reason  Count   Count%  Exits/s  VMM p50  VMM p99  VMM max  VMM total
  IO       4000  100.00%   1000.0   9.00us   9.00us   9.00us    36.00ms

  I/O ports (kvm_pio)
  Port    Name       Dir  Size  Count      /s
  0x0070  RTC index  out     1   4000  1000.0

  MSRs (kvm_msr)
  MSR    Name               Access  Count     /s
  0x6e0  IA32_TSC_DEADLINE  write    2000  500.0

  CPUID (kvm_cpuid)
  Function  Count    /s
  0x1         200  50.0

Lost/unpaired: none. unpaired exits 0, unpaired entries 0, VMM round trips without a re-entry marker 0, map full (latency/detail/thread) 0/0/0; in flight at stop: 0 exits, 0 VMM round trips; exits whose thread ended first 0; events: 7400 kvm_exit, 7401 kvm_entry, 10200 detail
";
    assert_eq!(text(&fixture::after(false)), expected);
}
