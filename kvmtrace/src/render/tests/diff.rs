//! `kvmtrace diff` as text, whole, both ways between web01 before its fix (2 s) and after it
//! (4 s, restarted with another pid: VMs match by name). Rates are per second of each recording.
//!
//! Detail rows end in blanks (their empty time and p99 columns are padded), written out here.

use super::{fixture, output};
use crate::{render::diff::render_text, report::diff::diff};

fn diff_text(before: &crate::report::Report, after: &crate::report::Report) -> Vec<String> {
    let out = output(|out| render_text(&diff(before, after), out));
    out.lines().map(str::to_string).collect()
}

/// Exits by host time per second: hlt 100/s x 1 ms = 100 ms/s -> 300 ms/s (+200.00 ms/s); io
/// 20 000/s x 1 us = 20 ms/s -> 1 000/s x 1.2 us = 1.2 ms/s (-18.80 ms/s, -95.0 %); cpuid new,
/// 50/s x 800 ns = 0.04 ms/s; msr unchanged. IO round trips: 20 000/s x 10 us = 200 ms/s ->
/// 1 000/s x 9 us = 9 ms/s (-191.00 ms/s). Detail rows by rate.
#[test]
fn before_and_after_a_fix() {
    let expected = [
        "kvmtrace diff: before 2.00 s, after 4.00 s (rates per second of each recording)",
        "",
        "  exit",
        "  VM             Key                                      before/s      after/s     change    host time/s     p99 b->a",
        "  web01          hlt (SVM)                                   100.0        300.0    +200.0%    +200.00ms/s 1.00ms->1.00ms",
        "  web01          io (SVM)                                  20000.0       1000.0     -95.0%     -18.80ms/s 1.00us->1.20us",
        "  web01          cpuid (SVM)                                   0.0         50.0        new      +0.04ms/s   0ns->800ns",
        "  web01          msr (SVM)                                   500.0        500.0      +0.0%      +0.00ms/s 2.00us->2.00us",
        "",
        "  userspace_exit",
        "  VM             Key                                      before/s      after/s     change     VMM time/s     p99 b->a",
        "  web01          IO                                        20000.0       1000.0     -95.0%    -191.00ms/s 10.00us->9.00us",
        "",
        "  port",
        "  VM             Key                                      before/s      after/s     change                    p99 b->a",
        "  web01          0x0070 RTC index out                      20000.0       1000.0     -95.0%                            ",
        "",
        "  msr",
        "  VM             Key                                      before/s      after/s     change                    p99 b->a",
        "  web01          0x6e0 IA32_TSC_DEADLINE write               500.0        500.0      +0.0%                            ",
        "",
        "  cpuid",
        "  VM             Key                                      before/s      after/s     change                    p99 b->a",
        "  web01          0x1                                           0.0         50.0        new                            ",
    ];
    assert_eq!(
        diff_text(&fixture::before(false), &fixture::after(false)),
        expected
    );
}

/// The other way: what was gone is -100.0 % (cpuid, 0.04 ms/s less), growth over 100 % reads
/// +1900.0 % (1 000/s -> 20 000/s), hlt 300/s -> 100/s is -66.7 %.
#[test]
fn after_and_before_a_fix() {
    let expected = [
        "kvmtrace diff: before 4.00 s, after 2.00 s (rates per second of each recording)",
        "",
        "  exit",
        "  VM             Key                                      before/s      after/s     change    host time/s     p99 b->a",
        "  web01          hlt (SVM)                                   300.0        100.0     -66.7%    -200.00ms/s 1.00ms->1.00ms",
        "  web01          io (SVM)                                   1000.0      20000.0   +1900.0%     +18.80ms/s 1.20us->1.00us",
        "  web01          cpuid (SVM)                                  50.0          0.0    -100.0%      -0.04ms/s   800ns->0ns",
        "  web01          msr (SVM)                                   500.0        500.0      +0.0%      +0.00ms/s 2.00us->2.00us",
        "",
        "  userspace_exit",
        "  VM             Key                                      before/s      after/s     change     VMM time/s     p99 b->a",
        "  web01          IO                                         1000.0      20000.0   +1900.0%    +191.00ms/s 9.00us->10.00us",
        "",
        "  port",
        "  VM             Key                                      before/s      after/s     change                    p99 b->a",
        "  web01          0x0070 RTC index out                       1000.0      20000.0   +1900.0%                            ",
        "",
        "  msr",
        "  VM             Key                                      before/s      after/s     change                    p99 b->a",
        "  web01          0x6e0 IA32_TSC_DEADLINE write               500.0        500.0      +0.0%                            ",
        "",
        "  cpuid",
        "  VM             Key                                      before/s      after/s     change                    p99 b->a",
        "  web01          0x1                                          50.0          0.0    -100.0%                            ",
    ];
    assert_eq!(
        diff_text(&fixture::after(false), &fixture::before(false)),
        expected
    );
}
